"""RTP parsing (strict) and the inbound stream: audio in order, DTMF, SSRC restarts."""

from __future__ import annotations

import struct

import pytest

from voicedashd.media.dtmf import DtmfDigit, TelephoneEvent
from voicedashd.media.rtp import (
    InboundStream,
    MalformedRtp,
    RtpPacket,
    parse_rtp,
)


def header(first: int = 0x80, second: int = 0, seq: int = 1, ts: int = 160,
           ssrc: int = 0xABCD) -> bytes:
    return struct.pack("!BBHII", first, second, seq, ts, ssrc)


def test_a_plain_packet_parses() -> None:
    packet = parse_rtp(header(second=0x80 | 8, seq=65535, ts=2**32 - 1) + b"\xd5" * 160)
    assert packet == RtpPacket(payload_type=8, sequence=65535, timestamp=2**32 - 1,
                               ssrc=0xABCD, payload=b"\xd5" * 160, marker=True)


def test_csrcs_extension_and_padding_are_removed_from_the_payload() -> None:
    packet = RtpPacket(payload_type=0, sequence=9, timestamp=99, ssrc=7, payload=b"abc",
                       csrcs=(1, 2), extension=(0xBEDE, b"\x10\x20\x30\x40"))
    parsed = parse_rtp(packet.to_bytes(padding=5))
    assert parsed == packet


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "shorter than an RTP header"),
    (header()[:11], "shorter than an RTP header"),
    (header(first=0x40) + b"x", "version 1"),
    (header(first=0x00) + b"x", "version 0"),
    (header(first=0xC0) + b"x", "version 3"),
    (header(first=0x83) + b"\0" * 8, "3 CSRCs do not fit"),
    (header(first=0x90), "no extension header"),
    (header(first=0x90) + struct.pack("!HH", 0xBEDE, 2) + b"\0" * 4, "overruns"),
    (header(first=0xA0) + b"ab\x00", "padding count 0"),
    (header(first=0xA0) + b"ab\x04", "padding count 4"),
    (header(second=200) + b"\0" * 8, "RTCP"),  # a sender report on the RTP port
    (header(second=201), "RTCP"),
])
def test_malformed_packets_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedRtp, match=reason):
        parse_rtp(data)


def test_padding_may_take_the_whole_payload() -> None:
    assert parse_rtp(header(first=0xA0) + b"\0\0\x03").payload == b""


def audio(seq: int, ssrc: int = 1, payload: bytes = b"\xff" * 160) -> RtpPacket:
    return RtpPacket(payload_type=0, sequence=seq, timestamp=seq * 160, ssrc=ssrc,
                     payload=payload)


def event(ts: int, key: int, duration: int, end: bool = False, seq: int = 0) -> RtpPacket:
    payload = TelephoneEvent(event=key, end=end, volume=10, duration=duration).to_bytes()
    return RtpPacket(payload_type=101, sequence=seq, timestamp=ts, ssrc=1, payload=payload)


def test_audio_is_released_in_order_and_other_payloads_are_counted() -> None:
    stream = InboundStream(audio_payload_type=0, dtmf_payload_type=101)
    assert stream.push(audio(5), 0.0) == [audio(5)]
    assert stream.push(audio(7), 0.02) == []
    assert [a.sequence for a in stream.push(audio(6), 0.03)] == [6, 7]
    comfort_noise = RtpPacket(payload_type=13, sequence=8, timestamp=0, ssrc=1, payload=b"\x40")
    assert stream.push(comfort_noise, 0.04) == []
    assert stream.stats.other_payload == 1
    assert stream.stats.packets == 4


def test_an_ssrc_change_releases_the_old_stream_and_starts_afresh() -> None:
    stream = InboundStream(audio_payload_type=0, dtmf_payload_type=None)
    stream.push(audio(100, ssrc=1), 0.0)
    stream.push(audio(102, ssrc=1), 0.01)  # 101 missing: 102 is held
    out = stream.push(audio(40000, ssrc=2), 0.02)
    # the held packet of the old stream comes out first, then the new stream at its own seq
    assert [(a.sequence) for a in out] == [102, 40000]
    assert [a.sequence for a in stream.push(audio(40001, ssrc=2), 0.04)] == [40001]
    assert stream.stats.ssrc_changes == 1
    assert stream.jitter.stats.late == 0


def test_dtmf_is_decoded_by_its_payload_type() -> None:
    stream = InboundStream(audio_payload_type=0, dtmf_payload_type=101)
    assert stream.push(event(8000, 5, 160), 0.0) == []
    assert stream.push(event(8000, 5, 800, end=True), 0.1) == [DtmfDigit("5", 0.1)]
    broken = RtpPacket(payload_type=101, sequence=1, timestamp=1, ssrc=1, payload=b"\x01")
    assert stream.push(broken, 0.2) == []
    assert stream.stats.dtmf_malformed == 1


def test_timers_release_a_gap_and_an_unfinished_digit() -> None:
    stream = InboundStream(audio_payload_type=0, dtmf_payload_type=101, jitter_delay=0.05)
    stream.push(audio(1), 0.0)
    stream.push(audio(3), 0.01)
    stream.push(event(500, 11, 400), 0.02)
    assert stream.next_deadline == pytest.approx(0.06)
    assert [a.sequence for a in stream.timer_fired(0.0601) if isinstance(a, RtpPacket)] == [3]
    assert stream.next_deadline == pytest.approx(0.52)
    assert stream.timer_fired(0.5201) == [DtmfDigit("#", 0.05)]
    assert stream.next_deadline is None
