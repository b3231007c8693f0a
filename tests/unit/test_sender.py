"""The outbound stream: headers, talkspurts, comfort silence, flush, and the 20 ms schedule."""

from __future__ import annotations

import numpy as np
import pytest
import trio
import trio.testing

from voicedashd.media.g711 import PCMA, PCMU
from voicedashd.media.rtp import RtpPacket, parse_rtp
from voicedashd.media.sender import MAX_CATCH_UP, MediaClock, RtpSender

SILENCE = PCMU.silence_frame(160)


def speech(samples: int, level: int = 4000) -> bytes:
    return PCMU.encode(np.full(samples, level, dtype=np.int16))


def packets(sender: RtpSender, count: int) -> list[RtpPacket]:
    return [parse_rtp(sender.next_packet()) for _ in range(count)]


def test_sequence_and_timestamp_step_and_wrap() -> None:
    sender = RtpSender(PCMU, 0, ssrc=0x12345678, sequence=65534, timestamp=2**32 - 320)
    sent = packets(sender, 4)
    assert [p.sequence for p in sent] == [65534, 65535, 0, 1]
    assert [p.timestamp for p in sent] == [2**32 - 320, 2**32 - 160, 0, 160]
    assert {p.ssrc for p in sent} == {0x12345678}
    assert {p.payload_type for p in sent} == {0}


def test_ssrc_and_starting_points_are_random() -> None:
    a, b = RtpSender(PCMU, 0), RtpSender(PCMU, 0)
    assert (a.ssrc, a.sequence, a.timestamp) != (b.ssrc, b.sequence, b.timestamp)


def test_idle_sends_comfort_silence_of_the_codec() -> None:
    assert {p.payload for p in packets(RtpSender(PCMU, 0), 3)} == {SILENCE}
    assert {p.payload for p in packets(RtpSender(PCMA, 8), 3)} == {b"\xd5" * 160}


def test_marker_on_the_first_packet_and_on_each_talkspurt() -> None:
    sender = RtpSender(PCMU, 0)
    first = packets(sender, 2)
    sender.queue(speech(400))  # 2.5 packets: the last one is padded with silence
    spurt = packets(sender, 4)
    sender.queue(speech(160))
    again = packets(sender, 1)
    assert [p.marker for p in first] == [True, False]
    assert [p.marker for p in spurt] == [True, False, False, False]
    assert spurt[2].payload == speech(80) + SILENCE[:80]
    assert spurt[3].payload == SILENCE
    assert again[0].marker
    assert sender.stats.audio == 4 and sender.stats.silence == 3


def test_flush_drops_everything_queued() -> None:
    sender = RtpSender(PCMU, 0)
    sender.queue(speech(1600))
    assert sender.queued == pytest.approx(0.2)
    packets(sender, 1)
    sender.flush()
    assert sender.queued == 0
    assert packets(sender, 1)[0].payload == SILENCE
    assert sender.stats.flushed_bytes == 1440


def test_skip_advances_only_the_clock() -> None:
    sender = RtpSender(PCMU, 0, sequence=10, timestamp=1000)
    sender.skip(3)
    assert (sender.sequence, sender.timestamp) == (10, 1480)


class FakeCall:
    """A clock member that sends its RtpSender's packets into a list."""

    def __init__(self, clock: trio.testing.MockClock | None = None, name: str = "call",
                 log: list[str] | None = None) -> None:
        self.sender = RtpSender(PCMU, 0, sequence=0, timestamp=0)
        self.sent: list[tuple[float, RtpPacket]] = []
        self.errors: list[Exception] = []
        self.name = name
        self.log = log if log is not None else []
        self.stall: dict[int, float] = {}  # after the n-th packet, the CPU is busy this long
        self.mock = clock
        self.explode_at: int | None = None

    def send_tick(self) -> None:
        if self.explode_at is not None and len(self.sent) == self.explode_at:
            raise RuntimeError("codec bug")
        self.sent.append((trio.current_time(), parse_rtp(self.sender.next_packet())))
        self.log.append(f"send {self.name}")
        if self.mock is not None and len(self.sent) in self.stall:
            self.mock.jump(self.stall[len(self.sent)])

    def receive_tick(self, now: float) -> None:
        self.log.append(f"receive {self.name}")

    def skip_ticks(self, ticks: int) -> None:
        self.sender.skip(ticks)
        self.sender.stats.skipped += ticks

    def fail(self, error: Exception) -> None:
        self.errors.append(error)


async def run_clock(members: list[FakeCall], seconds: float) -> MediaClock:
    """Run a clock with these members for `seconds` of (virtual) time."""
    clock = MediaClock()
    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for member in members:
                clock.join(member, nursery)
    return clock


async def test_one_packet_per_20_ms_at_absolute_deadlines(
        autojump_clock: trio.testing.MockClock) -> None:
    call = FakeCall()
    start = trio.current_time()
    await run_clock([call], 10.0 - 1e-9)
    assert len(call.sent) == 500
    assert [t for t, _ in call.sent] == [pytest.approx(start + n * 0.02, abs=1e-9)
                                         for n in range(500)]
    rtp = [p for _, p in call.sent]
    assert [p.sequence for p in rtp] == list(range(500))
    assert [p.timestamp for p in rtp] == [160 * n for n in range(500)]


async def test_slow_ticks_do_not_make_the_schedule_drift(
        autojump_clock: trio.testing.MockClock) -> None:
    """Each tick costs 7 ms: with a relative sleep the period would become 27 ms."""
    call = FakeCall(autojump_clock)
    call.stall = {n: 0.007 for n in range(1, 51)}
    start = trio.current_time()
    await run_clock([call], 1.0 - 1e-9)
    assert [t for t, _ in call.sent] == [pytest.approx(start + n * 0.02, abs=1e-9)
                                         for n in range(50)]


async def test_a_short_stall_is_caught_up_a_long_one_is_skipped(
        autojump_clock: trio.testing.MockClock) -> None:
    call = FakeCall(autojump_clock)
    # The process is not scheduled: time passes while a tick holds the CPU.
    call.stall = {10: 0.05, 30: 1.0}  # 2.5 ticks (caught up), then 50 (beyond MAX_CATCH_UP)
    start = trio.current_time()
    clock = await run_clock([call], 2.0 - 1e-9)
    times = [round((t - start) / 0.02, 6) for t, _ in call.sent]  # in ticks
    rtp = [p for _, p in call.sent]
    # packet 9 went out at tick 9, then 2.5 ticks passed: packets 10 and 11 (overdue) go out
    # back to back at once, and packet 12 is on time again
    assert times[9:13] == [9, 11.5, 11.5, 12]
    # packet 29 at tick 29 (the short stall shifted nothing), then 50 ticks pass: the 49
    # overdue ones are skipped and the packet due now goes out
    assert times[29:31] == [29, 79]
    assert clock.stats.skipped == call.sender.stats.skipped == 49 > MAX_CATCH_UP
    assert rtp[30].sequence == rtp[29].sequence + 1
    assert rtp[30].timestamp == rtp[29].timestamp + 160 * 50
    # apart from the caught-up pair, every packet is on the 20 ms grid of the original start
    assert all(t == int(t) for i, t in enumerate(times) if i not in (10, 11))
    assert times[-1] == 99


async def test_every_call_sends_at_the_tick_and_reads_a_quarter_tick_later(
        autojump_clock: trio.testing.MockClock) -> None:
    log: list[str] = []
    a, b = FakeCall(name="a", log=log), FakeCall(name="b", log=log)
    a.receive_tick = lambda now: log.append(f"receive a at {round(now * 1000) % 20}")  # type: ignore[method-assign]
    await run_clock([a, b], 0.035)
    assert log == ["send a", "send b", "receive a at 5", "receive b"] * 2


async def test_reading_past_its_budget_is_put_off_to_the_next_tick_in_turn(
        autojump_clock: trio.testing.MockClock) -> None:
    """A burst to read (here: call a takes 9 ms) must not push the next sends late."""
    log: list[str] = []
    calls = [FakeCall(name=name, log=log) for name in "abc"]

    def slow_read(now: float) -> None:
        log.append("receive a")
        autojump_clock.jump(0.009)  # past the 8 ms budget

    calls[0].receive_tick = slow_read  # type: ignore[method-assign]
    start = trio.current_time()
    clock = await run_clock(calls, 0.055)
    reads = [entry for entry in log if entry.startswith("receive")]
    # tick 0: a, then out of time; from then on b and c go first (in turn), then a
    assert reads == ["receive a"] + ["receive b", "receive c", "receive a"] * 2
    assert clock.stats.deferred == 2
    # and every send stayed on the 20 ms grid
    assert [round((t - start) * 1000) for t, _ in calls[1].sent] == [0, 20, 40]


async def test_a_failing_call_leaves_the_clock_and_the_others_keep_ticking(
        autojump_clock: trio.testing.MockClock) -> None:
    good, bad = FakeCall(name="good"), FakeCall(name="bad")
    bad.explode_at = 5
    clock = await run_clock([bad, good], 1.0 - 1e-9)
    assert [str(e) for e in bad.errors] == ["codec bug"]
    assert len(bad.sent) == 5 and len(good.sent) == 50
    assert clock.stats.failures == 1 and clock.members == 1


async def test_the_loop_stops_with_its_last_member_and_restarts_on_join(
        autojump_clock: trio.testing.MockClock) -> None:
    clock = MediaClock()
    first, second = FakeCall(), FakeCall()
    async with trio.open_nursery() as nursery:
        clock.join(first, nursery)
        await trio.sleep(0.09)  # ticks at 0, 20, ..., 80 ms
        clock.leave(first)
    # the nursery closed: the loop ended by itself once nobody was left
    async with trio.open_nursery() as nursery:
        clock.join(second, nursery)
        await trio.sleep(0.05)  # a fresh grid: ticks at 0, 20, 40 ms
        clock.leave(second)
    assert len(first.sent) == 5 and len(second.sent) == 3


async def test_writers_wait_while_the_queue_is_full(
        autojump_clock: trio.testing.MockClock) -> None:
    call = FakeCall()
    call.sender.queue(speech(8000))  # 1 s
    clock = MediaClock()
    async with trio.open_nursery() as nursery:
        clock.join(call, nursery)
        start = trio.current_time()
        await call.sender.wait_queued_below(0.5)
        assert trio.current_time() - start == pytest.approx(0.5, abs=0.021)
        call.sender.queue(speech(8000))
        call.sender.flush()  # a flush wakes waiters at once
        await call.sender.wait_queued_below(0.5)
        clock.leave(call)
