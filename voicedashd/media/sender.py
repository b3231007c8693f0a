"""Outbound RTP: one packet per 20 ms against absolute deadlines, comfort silence when idle."""

from __future__ import annotations

import math
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from .codecs import Codec

PTIME = 0.020
# After a stall (the process was not scheduled), up to this many overdue packets go out back
# to back so the stream keeps its count; a longer stall skips the lost ticks instead (the
# timestamp still advances with the clock, so the receiver's playout stays in step).
MAX_CATCH_UP = 3
# A quarter tick after the sends, members read what arrived, for at most READ_BUDGET before
# the rest wait for the next tick: the time left is for the tasks the reads wake (the voice
# bot taking the audio) to run before the next sends are due.
READ_AT = 0.25
READ_BUDGET = 0.4 * PTIME
_HEADER = struct.Struct("!BBHII")
_V2 = 0x80
_MARKER = 0x80


@dataclass(slots=True)
class SenderStats:
    """What went out: audio and silence packets, ticks skipped, bytes flushed."""

    audio: int = 0
    silence: int = 0
    skipped: int = 0
    flushed_bytes: int = 0


@dataclass(eq=False)
class RtpSender:
    """One call's outbound RTP stream: header state, queued audio, comfort silence (sans-IO).

    Every codec we speak makes one byte per RTP clock tick (G.711: a sample at 8 kHz; G.722:
    two at 16 kHz), so a packet is `samples` bytes and the timestamp advances by as many.
    """

    codec: Codec
    payload_type: int
    ptime: float = PTIME
    clock_rate: int = 8000
    ssrc: int = field(default_factory=lambda: secrets.randbits(32))
    sequence: int = field(default_factory=lambda: secrets.randbelow(1 << 16))
    timestamp: int = field(default_factory=lambda: secrets.randbits(32))
    paused: bool = False
    stats: SenderStats = field(default_factory=SenderStats)
    _queue: bytearray = field(default_factory=bytearray)
    _talking: bool = False
    _started: bool = False
    _drained: trio.Event | None = None
    _drained_below: float = 0.0

    def __post_init__(self) -> None:
        self.samples = round(self.clock_rate * self.ptime)

    def set_codec(self, codec: Codec, payload_type: int) -> None:
        """Switch codec (a re-INVITE changed it); audio queued in the old one is dropped."""
        self.flush()
        self.codec = codec
        self.payload_type = payload_type

    # -- the queue -----------------------------------------------------------------------

    def queue(self, encoded: bytes) -> None:
        """Append encoded audio to what is sent next."""
        self._queue += encoded

    def flush(self) -> None:
        """Drop everything queued at once (barge-in); silence follows from the next tick."""
        self.stats.flushed_bytes += len(self._queue)
        self._queue.clear()
        self._wake_writers()  # the queue is empty: every writer may go on

    @property
    def queued(self) -> float:
        """Seconds of audio waiting to be sent."""
        return len(self._queue) / self.clock_rate

    async def wait_queued_below(self, seconds: float) -> None:
        """Wait until less than this much audio is queued."""
        while self.queued >= seconds:
            if self._drained is None:
                self._drained = trio.Event()
                self._drained_below = seconds
            self._drained_below = min(self._drained_below, seconds)
            await self._drained.wait()

    def _wake_writers(self) -> None:
        """Wake writers once the queue is below what they wait for (not on every packet)."""
        if self._drained is not None and self.queued < self._drained_below:
            self._drained.set()
            self._drained = None

    # -- packets (sans-IO) ---------------------------------------------------------------

    def next_packet(self) -> bytes:
        """The packet for the next tick: queued audio if any, else encoded silence."""
        n = self.samples
        if self._queue:
            payload = bytes(self._queue[:n])
            del self._queue[:n]
            if len(payload) < n:
                payload += self.codec.silence_frame(n - len(payload))
            marker = not self._talking  # first packet of a talkspurt
            self._talking = True
            self.stats.audio += 1
            self._wake_writers()
        else:
            # Asked of the codec each time, in stream order: G.722's encoder has state.
            payload = self.codec.silence_frame(n)
            marker = not self._started
            self._talking = False
            self.stats.silence += 1
        self._started = True
        header = _HEADER.pack(_V2, (_MARKER if marker else 0) | self.payload_type,
                              self.sequence, self.timestamp, self.ssrc)
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.timestamp = (self.timestamp + n) & 0xFFFFFFFF
        return header + payload

    def skip(self, ticks: int) -> None:
        """Let ticks pass without packets (on hold, after a stall): only the clock advances."""
        self.timestamp = (self.timestamp + ticks * self.samples) & 0xFFFFFFFF


class ClockMember(Protocol):
    """What the clock drives: one call's media."""

    def send_tick(self) -> None:
        """Send this tick's packet (must not block)."""

    def receive_tick(self, now: float) -> None:
        """Take what arrived since the last tick; run timers due by now."""

    def skip_ticks(self, ticks: int) -> None:
        """The clock fell this many ticks behind and dropped them."""

    def fail(self, error: Exception) -> None:
        """A tick raised: end this member's call with the error."""


@dataclass(slots=True)
class ClockStats:
    """Ticks run, ticks skipped after stalls, the latest tick start, reads put off to the next
    tick for want of time, members failed."""

    ticks: int = 0
    skipped: int = 0
    most_late: float = 0.0
    deferred: int = 0
    failures: int = 0


class MediaClock:
    """The one 20 ms clock every call's RTP runs on.

    Tick n starts at start + n * ptime (trio.sleep_until: the schedule cannot drift) and
    sends every member's packet: one timer for all calls, so the event loop wakes 50 times
    a second instead of 50 times per call, and the sends keep a stable order and spacing.
    A quarter tick later the members read what arrived, within a time budget: a burst of
    inbound packets (a PBX catching up) is read over the following ticks, in turn, rather
    than pushing the next sends late.

    The loop runs (in the nursery given to the first join) while it has members. A member
    whose tick raises leaves the clock and gets the error; the other calls keep ticking.
    """

    def __init__(self, ptime: float = PTIME, read_budget: float = READ_BUDGET) -> None:
        self.ptime = ptime
        self.read_budget = read_budget
        self.stats = ClockStats()
        self._members: dict[ClockMember, None] = {}  # insertion-ordered set
        self._running = False
        self._first_reader = 0

    @property
    def members(self) -> int:
        """How many calls are on the clock."""
        return len(self._members)

    def join(self, member: ClockMember, nursery: trio.Nursery) -> None:
        """Start driving a member from the next tick; starts the loop in nursery if idle."""
        self._members[member] = None
        if not self._running:
            self._running = True
            nursery.start_soon(self._run)

    def leave(self, member: ClockMember) -> None:
        """Stop driving a member."""
        self._members.pop(member, None)

    async def _run(self) -> None:
        start = trio.current_time()
        tick = 0
        try:
            while self._members:
                deadline = start + tick * self.ptime
                await trio.sleep_until(deadline)
                late = trio.current_time() - deadline
                self.stats.most_late = max(self.stats.most_late, late)
                behind = math.floor(late / self.ptime + 1e-6)
                members = list(self._members)
                if behind > MAX_CATCH_UP:
                    for member in members:
                        self._guarded(member, member.skip_ticks, behind)
                    self.stats.skipped += behind
                    tick += behind
                for member in members:
                    self._guarded(member, member.send_tick)
                await trio.sleep_until(start + (tick + READ_AT) * self.ptime)
                self._read()
                self.stats.ticks += 1
                tick += 1
        finally:
            self._running = False

    def _read(self) -> None:
        """Let members read, in turn from where the last budget ran out, until it runs out."""
        members = list(self._members)
        count = len(members)
        now = trio.current_time()
        budget_end = now + self.read_budget
        first = self._first_reader % count if count else 0
        for done in range(1, count + 1):
            member = members[(first + done - 1) % count]
            self._guarded(member, member.receive_tick, now)
            if done < count and trio.current_time() >= budget_end:
                self.stats.deferred += count - done
                self._first_reader = first + done
                return

    def _guarded(self, member: ClockMember, step: Callable[..., None], *args: float) -> None:
        """A member's failure boundary: its error ends its call, never the clock."""
        try:
            step(*args)
        except Exception as exc:
            self.leave(member)
            self.stats.failures += 1
            member.fail(exc)
