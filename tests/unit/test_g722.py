"""G.722 (media/g722.py) against an independent implementation: ffmpeg's encoder and decoder.

The ITU-T test vectors cannot be downloaded here, so ffmpeg (libavcodec's own G.722, written
apart from libg722) is the reference: our encoder's bytes decoded by ffmpeg, and ffmpeg's
bytes decoded by ours, must give the speech back (signal-to-noise after the codec's fixed
delay), and a stream with its sub-bands or bits in the wrong place must not.
"""

from __future__ import annotations

import dataclasses
import struct
import subprocess
from functools import cache

import numpy as np
import pytest
import trio

from tests.g722_ffmpeg import ffmpeg_decode, ffmpeg_encode
from tests.media_peer import ports_and_peer
from tests.speech_corpus import two_cities_wav
from voicedashd.media.codecs import open_codec
from voicedashd.media.g711 import PCMU
from voicedashd.media.g722 import G722
from voicedashd.media.rtp import parse_rtp
from voicedashd.media.sender import MediaClock, RtpSender
from voicedashd.media.session import MediaSession, SessionSettings
from voicedashd.metrics import Metrics

RATE = 16000
# G.722 at 64 kbit/s keeps speech ~20 dB above its coding noise (measured 20.6 dB on this clip);
# a swapped sub-band or a reversed bit order leaves it below 0 dB. 15 dB is well between.
MIN_SNR_DB = 15.0
# The QMF analysis and synthesis filters delay the audio by 22 samples (ITU-T G.722 §1.4.1).
CODEC_DELAY = 22


@cache
def speech() -> np.ndarray:
    """Four seconds of a person reading (the corpus's human recording) at 16 kHz."""
    raw = subprocess.run(["sox", str(two_cities_wav()), "-r", str(RATE), "-c", "1", "-b", "16",
                          "-e", "signed", "-t", "raw", "-", "trim", "0.9", "4"],
                         capture_output=True, check=True, timeout=60).stdout
    pcm = np.frombuffer(raw, dtype="<i2")
    assert len(pcm) == 4 * RATE
    return pcm


def snr_db(reference: np.ndarray, decoded: np.ndarray, lag: int = CODEC_DELAY) -> float:
    """Signal-to-noise ratio of decoded audio against what went in, after the codec's delay."""
    length = min(len(reference), len(decoded) - lag)
    out = decoded[lag:lag + length].astype(np.float64)
    ref = reference[:length].astype(np.float64)
    return float(10 * np.log10(np.sum(ref ** 2) / np.sum((ref - out) ** 2)))


def best_lag(reference: np.ndarray, decoded: np.ndarray) -> int:
    """The delay at which decoded audio lines up best with the reference."""
    return max(range(64), key=lambda lag: snr_db(reference, decoded, lag))


def test_our_encoding_decoded_by_ffmpeg_is_the_speech() -> None:
    pcm = speech()
    ours = G722().encode(pcm)
    assert len(ours) == len(pcm) // 2  # 64 kbit/s: one byte per two samples
    decoded = ffmpeg_decode(ours)
    assert len(decoded) == len(pcm)
    assert best_lag(pcm, decoded) == CODEC_DELAY
    assert snr_db(pcm, decoded) >= MIN_SNR_DB


def test_ffmpegs_encoding_decoded_by_us_is_the_speech() -> None:
    pcm = speech()
    theirs = ffmpeg_encode(pcm)
    decoded = G722().decode(theirs)
    assert len(decoded) == len(pcm)
    assert best_lag(pcm, decoded) == CODEC_DELAY
    assert snr_db(pcm, decoded) >= MIN_SNR_DB


def test_both_implementations_agree_bit_for_bit() -> None:
    """Both follow the ITU-T algorithm exactly: the same bytes, the same samples."""
    pcm = speech()
    ours = G722().encode(pcm)
    assert ours == ffmpeg_encode(pcm)
    assert np.array_equal(G722().decode(ours), ffmpeg_decode(ours))


@pytest.mark.parametrize("scramble", ["swapped sub-bands", "reversed bits"])
def test_a_wrongly_packed_stream_fails_the_bound(scramble: str) -> None:
    """The SNR bound tells a right codec from a wrong one: the same bytes, misread."""
    ours = G722().encode(speech())
    if scramble == "swapped sub-bands":  # high band's 2 bits read as the low band's 6, and back
        wrong = bytes(((b >> 6) | (b << 2)) & 0xFF for b in ours)
    else:
        wrong = bytes(int(f"{b:08b}"[::-1], 2) for b in ours)
    decoded = ffmpeg_decode(wrong)
    assert max(snr_db(speech(), decoded, lag) for lag in range(64)) < 0


def test_the_upper_band_gets_through_unlike_g711() -> None:
    """A 6 kHz tone (beyond G.711's 4 kHz) comes back at its level: the audio is wideband."""
    t = np.arange(RATE) / RATE
    tone = (8000 * np.sin(2 * np.pi * 6000 * t)).astype(np.int16)
    decoded = ffmpeg_decode(G722().encode(tone))[RATE // 4:]
    level = np.sqrt(np.mean(decoded.astype(np.float64) ** 2))
    assert 0.7 * 8000 / np.sqrt(2) <= level <= 1.3 * 8000 / np.sqrt(2)
    spectrum = np.abs(np.fft.rfft(decoded))
    assert abs(np.argmax(spectrum) * RATE / len(decoded) - 6000) < 10


def test_state_is_per_call_and_chunking_changes_nothing() -> None:
    """20 ms packets (and odd-sized chunks) encode as the whole does; calls do not share state."""
    pcm = speech()
    whole = G722().encode(pcm)
    call, other = G722(), open_codec("g722")
    assert isinstance(other, G722) and other is not call
    chunks = []
    for start in range(0, len(pcm), 321):  # odd sizes: a sample waits for its pair
        chunks.append(call.encode(pcm[start:start + 321]))
        other.encode(pcm[::-1][start:start + 321])  # another call's audio in between
    assert b"".join(chunks) == whole[:len(b"".join(chunks))]
    assert len(b"".join(chunks)) == len(pcm) // 2
    decoder = G722()
    packets = [decoder.decode(whole[i:i + 160]) for i in range(0, len(whole), 160)]
    assert all(len(p) == 320 for p in packets)  # 160 bytes: 320 samples, 20 ms at 16 kHz
    assert np.array_equal(np.concatenate(packets), G722().decode(whole))


def test_rtp_timestamps_advance_160_per_20ms_packet_of_320_samples() -> None:
    """RFC 3551: G.722's RTP clock is 8,000 Hz although it carries 16 kHz audio."""
    codec = G722()
    sender = RtpSender(codec, 9, sequence=10, timestamp=1000)
    sender.queue(codec.encode(speech()[:3 * 320 + 100]))  # three packets and a bit
    packets = [parse_rtp(sender.next_packet()) for _ in range(5)]
    assert [p.timestamp for p in packets] == [1000 + 160 * i for i in range(5)]
    assert [p.sequence for p in packets] == [10, 11, 12, 13, 14]
    assert {p.payload_type for p in packets} == {9}
    assert [len(p.payload) for p in packets] == [160] * 5
    assert [p.marker for p in packets] == [True, False, False, False, False]
    assert sender.stats.audio == 4 and sender.stats.silence == 1
    # Comfort silence comes from the call's own encoder, in stream order: the peer's decoder
    # follows our encoder's state, so what it decodes is what we encoded, then quiet.
    wire = b"".join(p.payload for p in packets)
    decoded = ffmpeg_decode(wire)
    assert snr_db(speech()[:3 * 320 + 100], decoded[:3 * 320 + 100 + CODEC_DELAY]) >= MIN_SNR_DB
    assert np.abs(decoded[-320:]).max() < 50


def test_g711_keeps_its_8khz_and_shared_codecs() -> None:
    assert open_codec("pcmu") is PCMU and PCMU.sample_rate == 8000
    assert G722.sample_rate == 16000
    with pytest.raises(ValueError, match="G729"):
        open_codec("G729")


async def test_a_g722_session_gives_and_takes_16khz_audio_without_resampling() -> None:
    """The pipeline's 16 kHz is the codec's: frames are the decoder's samples exactly, and what
    the bot says goes out as G.722 of its very samples (a resampler would have cut 6 kHz)."""
    pcm = speech()[:RATE]  # one second
    t = np.arange(RATE) / RATE
    bot = (6000 * np.sin(2 * np.pi * 6000 * t) + 3000 * np.sin(2 * np.pi * 500 * t)
           ).astype(np.int16)
    caller = G722().encode(pcm)
    with trio.fail_after(20):
        async with ports_and_peer() as (media, peer, pcmu_answer):
            answer = dataclasses.replace(pcmu_answer, codec="G722", payload_type=9)
            async with trio.open_nursery() as clock_nursery, MediaSession(
                    media, lambda: answer, SessionSettings(timeout=60), call_id="g722",
                    clock=MediaClock(), clock_nursery=clock_nursery, on_dtmf=lambda _: None,
                    may_send_to=lambda _: True, metrics=Metrics()) as session:
                assert session.rate == RATE
                await session.send_pcm(bot, last=True)
                for seq in range(50):
                    header = struct.pack("!BBHII", 0x80, 9, seq, 160 * seq, 0x7722)
                    await peer.sendto(header + caller[160 * seq:160 * (seq + 1)],
                                      ("127.0.0.1", media.port))
                frames = [await session.inbound.receive() for _ in range(50)]
                received = []
                while len(received) < 60:
                    received.append(parse_rtp(await peer.recv(2048)))
    assert {f.rate for f in frames} == {RATE} and {len(f.samples) for f in frames} == {320}
    assert np.array_equal(np.concatenate([f.samples for f in frames]), G722().decode(caller))
    assert {p.payload_type for p in received} == {9}
    assert [p.timestamp - received[0].timestamp for p in received] == [
        160 * i for i in range(60)]
    decoded = ffmpeg_decode(b"".join(p.payload for p in received))
    assert snr_db(bot, decoded) >= MIN_SNR_DB  # the 6 kHz tone too, 22 samples late: no filter


async def test_a_new_inbound_ssrc_restarts_the_decoder() -> None:
    """A PBX that restarts its stream (new SSRC) restarts its encoder: the session decodes the
    new stream from a fresh state, sample for sample as a new decoder would."""
    pcm = speech()
    first, second = G722().encode(pcm[:8000]), G722().encode(pcm[8000:16000])
    with trio.fail_after(20):
        async with ports_and_peer() as (media, peer, pcmu_answer):
            answer = dataclasses.replace(pcmu_answer, codec="G722", payload_type=9)
            async with trio.open_nursery() as clock_nursery, MediaSession(
                    media, lambda: answer, SessionSettings(timeout=60), call_id="g722",
                    clock=MediaClock(), clock_nursery=clock_nursery, on_dtmf=lambda _: None,
                    may_send_to=lambda _: True, metrics=Metrics()) as session:
                for ssrc, stream, base in ((1, first, 100), (2, second, 40000)):
                    for seq in range(25):
                        header = struct.pack("!BBHII", 0x80, 9, base + seq, 160 * seq, ssrc)
                        await peer.sendto(header + stream[160 * seq:160 * (seq + 1)],
                                          ("127.0.0.1", media.port))
                frames = [await session.inbound.receive() for _ in range(50)]
    decoded = np.concatenate([f.samples for f in frames])
    assert np.array_equal(decoded[:8000], G722().decode(first))
    assert np.array_equal(decoded[8000:], G722().decode(second))
