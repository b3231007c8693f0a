"""RFC 4733 telephone-events: DTMF digits, each reported once; sans-IO, time passed in."""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .rtp import RtpPacket

DIGITS = "0123456789*#ABCD"
# With its end packets all lost, an event is over once no packet has refreshed it this long
# (senders repeat an ongoing event every 50 ms or so).
EVENT_TIMEOUT = 0.5
_RECENT_EVENTS = 16
_EVENT = struct.Struct("!BBH")


class MalformedEvent(ValueError):
    """A telephone-event payload shorter than its 4 bytes."""


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One RFC 4733 §2.3 event payload."""

    event: int
    end: bool
    volume: int
    duration: int

    @classmethod
    def parse(cls, payload: bytes) -> TelephoneEvent:
        """Parse the first 4-byte event of a payload (any redundant ones follow it)."""
        if len(payload) < _EVENT.size:
            raise MalformedEvent(f"telephone-event payload of {len(payload)} bytes")
        event, flags, duration = _EVENT.unpack_from(payload)
        return cls(event=event, end=bool(flags & 0x80), volume=flags & 0x3F, duration=duration)

    def to_bytes(self) -> bytes:
        """Serialise the event payload."""
        return _EVENT.pack(self.event, (0x80 if self.end else 0) | self.volume, self.duration)


@dataclass(frozen=True, slots=True)
class DtmfDigit:
    """A key the caller pressed, and for how long (seconds)."""

    digit: str
    duration: float


@dataclass(slots=True)
class _Ongoing:
    key: tuple[int, int]
    digit: str
    duration: int
    last_seen: float


@dataclass
class DtmfDecoder:
    """Turns telephone-event packets into digits, once per event.

    An event is identified by its SSRC and RTP timestamp (RFC 4733 §2.5.1.3: every packet of
    one event carries the event's start timestamp). It is reported on its first end packet
    (the sender repeats that packet three times), or, if none arrives, when another event
    starts or after EVENT_TIMEOUT without news.
    """

    clock_rate: int = 8000
    _ongoing: _Ongoing | None = None
    _finished: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=_RECENT_EVENTS))

    def push(self, packet: RtpPacket, now: float) -> list[DtmfDigit]:
        """Take one telephone-event packet; return the digits it completes."""
        event = TelephoneEvent.parse(packet.payload)
        key = (packet.ssrc, packet.timestamp)
        if key in self._finished or event.event >= len(DIGITS):
            return []
        out: list[DtmfDigit] = []
        ongoing = self._ongoing
        if ongoing is not None and ongoing.key != key:
            out.append(self._finish(ongoing))
            ongoing = None
        if ongoing is None:
            ongoing = self._ongoing = _Ongoing(key, DIGITS[event.event], 0, now)
        ongoing.duration = max(ongoing.duration, event.duration)
        ongoing.last_seen = now
        if event.end:
            out.append(self._finish(ongoing))
        return out

    def _finish(self, ongoing: _Ongoing) -> DtmfDigit:
        self._finished.append(ongoing.key)
        self._ongoing = None
        return DtmfDigit(ongoing.digit, ongoing.duration / self.clock_rate)

    def expire(self, now: float) -> list[DtmfDigit]:
        """Report an event whose end packets never came."""
        deadline = self.next_deadline
        if self._ongoing is not None and deadline is not None and deadline <= now:
            return [self._finish(self._ongoing)]
        return []

    @property
    def idle(self) -> bool:
        """No event in progress: no timer needed."""
        return self._ongoing is None

    @property
    def next_deadline(self) -> float | None:
        """When an unfinished event times out, or None."""
        return None if self._ongoing is None else self._ongoing.last_seen + EVENT_TIMEOUT
