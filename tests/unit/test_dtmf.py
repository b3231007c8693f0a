"""RFC 4733 telephone-events: one digit per event, whatever the repetitions and losses."""

from __future__ import annotations

import pytest

from voicedashd.media.dtmf import (
    EVENT_TIMEOUT,
    DtmfDecoder,
    DtmfDigit,
    MalformedEvent,
    TelephoneEvent,
)
from voicedashd.media.rtp import RtpPacket


def packet(key: int, ts: int, duration: int, *, end: bool = False, ssrc: int = 1,
           seq: int = 0, flags: int = 10) -> RtpPacket:
    payload = bytes([key, (0x80 if end else 0) | flags]) + duration.to_bytes(2, "big")
    return RtpPacket(payload_type=101, sequence=seq, timestamp=ts, ssrc=ssrc, payload=payload)


def press(key: int, ts: int, seq: int, *, steps: int = 5, repeats: int = 3) -> list[RtpPacket]:
    """What a phone sends for one key: updates every 20 ms, then the end packet thrice."""
    updates = [packet(key, ts, 160 * (i + 1), seq=seq + i) for i in range(steps)]
    ends = [packet(key, ts, 160 * steps, end=True, seq=seq + steps + i) for i in range(repeats)]
    return updates + ends


def run(decoder: DtmfDecoder, packets: list[RtpPacket], now: float = 0.0) -> list[DtmfDigit]:
    out: list[DtmfDigit] = []
    for i, p in enumerate(packets):
        out += decoder.push(p, now + i * 0.02)
    return out


def test_payload_round_trip_and_flags() -> None:
    event = TelephoneEvent.parse(bytes([11, 0xCA, 0x06, 0x40]))
    assert event == TelephoneEvent(event=11, end=True, volume=10, duration=1600)
    assert TelephoneEvent.parse(event.to_bytes()) == event.__class__(11, True, 10, 1600)
    with pytest.raises(MalformedEvent):
        TelephoneEvent.parse(b"\x01\x02\x03")


def test_each_key_is_reported_once_at_its_end() -> None:
    decoder = DtmfDecoder()
    digits = run(decoder, press(1, 1000, 0) + press(2, 3000, 10) + press(3, 5000, 20))
    assert digits == [DtmfDigit("1", 0.1), DtmfDigit("2", 0.1), DtmfDigit("3", 0.1)]


def test_all_sixteen_keys() -> None:
    decoder = DtmfDecoder()
    packets = [p for key in range(16) for p in press(key, 1000 * (key + 1), 10 * key)]
    assert "".join(d.digit for d in run(decoder, packets)) == "0123456789*#ABCD"


def test_the_reserved_bit_is_ignored_and_other_events_are_not_digits() -> None:
    decoder = DtmfDecoder()
    assert run(decoder, [packet(4, 10, 800, end=True, flags=0x4A)]) == [DtmfDigit("4", 0.1)]
    assert run(decoder, [packet(16, 20, 800, end=True)]) == []  # flash-hook


def test_the_same_key_twice_is_two_events() -> None:
    decoder = DtmfDecoder()
    assert [d.digit for d in run(decoder, press(7, 100, 0) + press(7, 2000, 10))] == ["7", "7"]


def test_lost_end_packets_end_the_event_when_the_next_one_starts() -> None:
    decoder = DtmfDecoder()
    first = press(5, 100, 0, repeats=0)
    second = press(6, 900, 10)
    assert run(decoder, first + second) == [DtmfDigit("5", 0.1), DtmfDigit("6", 0.1)]


def test_lost_end_packets_end_the_event_after_a_timeout() -> None:
    decoder = DtmfDecoder()
    assert run(decoder, press(9, 100, 0, repeats=0)) == []
    last_seen = 4 * 0.02
    assert decoder.next_deadline == pytest.approx(last_seen + EVENT_TIMEOUT)
    assert decoder.expire(last_seen + EVENT_TIMEOUT - 0.001) == []
    assert decoder.expire(last_seen + EVENT_TIMEOUT) == [DtmfDigit("9", 0.1)]
    assert decoder.next_deadline is None
    # its late end packets then change nothing
    assert run(decoder, [packet(9, 100, 800, end=True)], now=1.0) == []


def test_reordered_packets_of_a_finished_event_are_ignored() -> None:
    decoder = DtmfDecoder()
    packets = press(1, 100, 0)
    digits = run(decoder, [*packets, packets[2], *press(2, 900, 10), packets[-1]])
    assert [d.digit for d in digits] == ["1", "2"]


def test_events_of_different_sources_do_not_merge() -> None:
    decoder = DtmfDecoder()
    a = packet(1, 100, 800, end=True, ssrc=1)
    b = packet(2, 100, 800, end=True, ssrc=2)
    assert [d.digit for d in run(decoder, [a, b, a, b])] == ["1", "2"]
