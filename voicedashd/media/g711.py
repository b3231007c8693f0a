"""G.711 PCMU (µ-law) and PCMA (A-law) to and from 16-bit PCM with numpy lookup tables."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

Pcm = npt.NDArray[np.int16]

_SIGN = 0x80
_QUANT = 0x0F
_SEG_SHIFT = 4
_ULAW_BIAS = 0x84
_ULAW_CLIP = 8159  # in the 14-bit domain the encoder works in
_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])
_ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int64)


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def _ulaw_decode_table() -> Pcm:
    """The 256 µ-law code words as 16-bit samples (G.711 §3, 14-bit values shifted by 2)."""
    u = ~np.arange(256, dtype=np.int64) & 0xFF
    t = (((u & _QUANT) << 3) + _ULAW_BIAS) << ((u & 0x70) >> _SEG_SHIFT)
    return np.where(u & _SIGN, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(np.int16)


def _alaw_decode_table() -> Pcm:
    """The 256 A-law code words as 16-bit samples (G.711 §2, 13-bit values shifted by 3)."""
    a = np.arange(256, dtype=np.int64) ^ 0x55
    seg = (a & 0x70) >> _SEG_SHIFT
    t = (a & _QUANT) << 4
    t = np.where(seg == 0, t + 8, np.where(seg == 1, t + 0x108,
                                           (t + 0x108) << np.maximum(seg - 1, 0)))
    return np.where(a & _SIGN, t, -t).astype(np.int16)


def _ulaw_encode_table() -> npt.NDArray[np.uint8]:
    """µ-law code word of every 16-bit sample, indexed by the sample's uint16 bit pattern."""
    pcm = _ALL_SAMPLES >> 2
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(pcm), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = np.searchsorted(_ULAW_SEG_END, magnitude)
    code = np.where(seg >= 8, 0x7F, (seg << _SEG_SHIFT) | ((magnitude >> (seg + 1)) & _QUANT))
    return _by_bit_pattern((code ^ mask).astype(np.uint8))


def _alaw_encode_table() -> npt.NDArray[np.uint8]:
    """A-law code word of every 16-bit sample, indexed by the sample's uint16 bit pattern."""
    pcm = _ALL_SAMPLES >> 3
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    magnitude = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = np.searchsorted(_ALAW_SEG_END, magnitude)
    shift = np.where(seg < 2, 1, seg)
    code = np.where(seg >= 8, 0x7F, (seg << _SEG_SHIFT) | ((magnitude >> shift) & _QUANT))
    return _by_bit_pattern((code ^ mask).astype(np.uint8))


def _by_bit_pattern(codes: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Reorder a table built for samples -32768..32767 so index = sample viewed as uint16."""
    return np.roll(codes, -32768)


@dataclass(frozen=True, slots=True, eq=False)
class G711:
    """One G.711 law: its RTP name, static payload type, silence byte and lookup tables."""

    sample_rate: ClassVar[int] = 8000  # the audio's rate, here the RTP clock's too

    name: str
    payload_type: int
    silence: int
    _encode: npt.NDArray[np.uint8]
    _decode: Pcm

    def encode(self, pcm: Pcm) -> bytes:
        """Encode 16-bit samples (8 kHz) to one code byte per sample."""
        return self._encode[np.ascontiguousarray(pcm, dtype=np.int16).view(np.uint16)].tobytes()

    def decode(self, payload: bytes) -> Pcm:
        """Decode code bytes to 16-bit samples (8 kHz)."""
        return self._decode.take(np.frombuffer(payload, dtype=np.uint8))

    def restart_decoder(self) -> None:
        """A new inbound stream: nothing to forget (G.711 has no state)."""

    def silence_frame(self, samples: int) -> bytes:
        """Encoded digital silence of this many samples (comfort silence)."""
        return bytes([self.silence]) * samples


PCMU = G711("PCMU", 0, 0xFF, _frozen(_ulaw_encode_table()), _frozen(_ulaw_decode_table()))
PCMA = G711("PCMA", 8, 0xD5, _frozen(_alaw_encode_table()), _frozen(_alaw_decode_table()))
CODECS = {codec.name: codec for codec in (PCMU, PCMA)}

