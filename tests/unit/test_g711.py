"""G.711 against a reference written out from the ITU-T definition (the classic Sun g711.c)."""

from __future__ import annotations

import numpy as np
import pytest

from voicedashd.media.codecs import open_codec
from voicedashd.media.g711 import G711, PCMA, PCMU

# -- reference: Sun Microsystems' public-domain g711.c, transcribed scalar by scalar ------------

SIGN_BIT, QUANT_MASK, SEG_SHIFT, SEG_MASK = 0x80, 0x0F, 4, 0x70
SEG_AEND = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF]
SEG_UEND = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF]
BIAS, CLIP = 0x84, 8159


def search(value: int, table: list[int]) -> int:
    for i, end in enumerate(table):
        if value <= end:
            return i
    return len(table)


def ref_linear2alaw(pcm_val: int) -> int:
    pcm_val >>= 3
    if pcm_val >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        pcm_val = -pcm_val - 1
    seg = search(pcm_val, SEG_AEND)
    if seg >= 8:
        return 0x7F ^ mask
    aval = seg << SEG_SHIFT
    aval |= (pcm_val >> 1) & QUANT_MASK if seg < 2 else (pcm_val >> seg) & QUANT_MASK
    return aval ^ mask


def ref_alaw2linear(a_val: int) -> int:
    a_val ^= 0x55
    t = (a_val & QUANT_MASK) << 4
    seg = (a_val & SEG_MASK) >> SEG_SHIFT
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t += 0x108
        t <<= seg - 1
    return t if a_val & SIGN_BIT else -t


def ref_linear2ulaw(pcm_val: int) -> int:
    pcm_val >>= 2
    if pcm_val < 0:
        pcm_val = -pcm_val
        mask = 0x7F
    else:
        mask = 0xFF
    pcm_val = min(pcm_val, CLIP) + (BIAS >> 2)
    seg = search(pcm_val, SEG_UEND)
    if seg >= 8:
        return 0x7F ^ mask
    uval = (seg << 4) | ((pcm_val >> (seg + 1)) & 0xF)
    return uval ^ mask


def ref_ulaw2linear(u_val: int) -> int:
    u_val = ~u_val & 0xFF
    t = ((u_val & QUANT_MASK) << 3) + BIAS
    t <<= (u_val & SEG_MASK) >> SEG_SHIFT
    return BIAS - t if u_val & SIGN_BIT else t - BIAS


REFERENCE = {
    "PCMU": (ref_linear2ulaw, ref_ulaw2linear),
    "PCMA": (ref_linear2alaw, ref_alaw2linear),
}
LAWS = [PCMU, PCMA]
ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)


@pytest.mark.parametrize("codec", LAWS, ids=lambda c: c.name)
def test_decoding_matches_the_reference_for_all_256_codes(codec: G711) -> None:
    _, decode = REFERENCE[codec.name]
    decoded = codec.decode(bytes(range(256)))
    assert decoded.dtype == np.int16
    assert decoded.tolist() == [decode(code) for code in range(256)]


@pytest.mark.parametrize("codec", LAWS, ids=lambda c: c.name)
def test_encoding_matches_the_reference_for_every_16_bit_sample(codec: G711) -> None:
    encode, _ = REFERENCE[codec.name]
    encoded = codec.encode(ALL_SAMPLES)
    expected = bytes(encode(int(sample)) for sample in ALL_SAMPLES)
    assert encoded == expected


@pytest.mark.parametrize("codec", LAWS, ids=lambda c: c.name)
def test_every_code_survives_a_round_trip(codec: G711) -> None:
    _, decode = REFERENCE[codec.name]
    codes = bytes(range(256))
    again = codec.encode(codec.decode(codes))
    for code, back in zip(codes, again, strict=True):
        if codec is PCMU and code == 0x7F:  # µ-law has two zeros; "negative zero" encodes as +0
            assert back == 0xFF
        else:
            assert back == code, f"code {code:#04x} -> {decode(code)} -> {back:#04x}"


@pytest.mark.parametrize("codec", LAWS, ids=lambda c: c.name)
def test_round_trip_error_is_within_half_a_quantisation_step(codec: G711) -> None:
    _, decode = REFERENCE[codec.name]
    levels = np.unique([decode(code) for code in range(256)])
    decoded = codec.decode(codec.encode(ALL_SAMPLES)).astype(np.int64)
    error = np.abs(decoded - ALL_SAMPLES.astype(np.int64))
    # Each sample lands on a reconstruction level; the bound is half the gap to the next
    # level around it (plus the encoder's input truncation to 13/14 bits), except beyond the
    # outermost levels where the law clips.
    index = np.clip(np.searchsorted(levels, decoded), 1, len(levels) - 2)
    gap = np.maximum(levels[index + 1] - levels[index], levels[index] - levels[index - 1])
    truncation = 8 if codec is PCMA else 4
    samples = ALL_SAMPLES
    inside = (samples > levels[0]) & (samples < levels[-1])
    assert np.all(error[inside] <= gap[inside] // 2 + truncation)
    assert np.all(decoded[samples >= levels[-1]] == levels[-1])
    assert np.all(decoded[samples <= levels[0]] == levels[0])
    # and the relative error of a logarithmic law stays small for speech-level samples
    loud = np.abs(ALL_SAMPLES.astype(np.int64)) > 1000
    assert np.max(error[loud] / np.abs(ALL_SAMPLES[loud].astype(np.int64))) < 0.07


@pytest.mark.parametrize("codec", LAWS, ids=lambda c: c.name)
def test_silence_frames_decode_to_near_zero(codec: G711) -> None:
    frame = codec.silence_frame(160)
    assert len(frame) == 160
    assert np.max(np.abs(codec.decode(frame))) <= 8


def test_codecs_are_found_by_sdp_name() -> None:
    assert open_codec("pcmu") is PCMU
    assert open_codec("PCMA") is PCMA
    assert (PCMU.payload_type, PCMA.payload_type) == (0, 8)
    with pytest.raises(ValueError, match="G722, PCMU, PCMA"):
        open_codec("G729")
