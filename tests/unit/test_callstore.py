"""callstore on a real SQLite store: history pages, cursors, written and pending transcripts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
import trio.testing

from voicedashd import callstore
from voicedashd.access import may_see, visible_extension
from voicedashd.bus import EventBus
from voicedashd.callstore import HistoryCursor
from voicedashd.events import (
    CallEnded,
    CallEvent,
    CallInfo,
    CallPhase,
    CallStarted,
    EndReason,
    Speaker,
    SttTranscript,
    TtsCompleted,
    TtsStarted,
)
from voicedashd.metrics import Metrics
from voicedashd.store import SEQ_GAP_AFTER_CRASH, Store, open_store

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Viewer:
    extension: str
    tenant: str
    role: str = "user"


ALICE = Viewer("1001", "acme")
BOB = Viewer("1002", "acme")
GUS = Viewer("1001", "globex")
ADMIN = Viewer("1900", "acme", "admin")


def info(call_id: str, extension: str, when: datetime, tenant: str = "acme") -> CallInfo:
    return CallInfo(call_id=call_id, tenant=tenant, caller="5551234", caller_name="Alice",
                    callee=extension, callee_extension=extension, is_ai_handled=True,
                    created_at=when)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(tmp_path / "store.sqlite3", Metrics()) as opened:
        yield opened


async def test_history_pages_are_newest_first_and_stable_with_equal_timestamps(
        store: Store) -> None:
    bus = EventBus(store, Metrics())
    # Three calls to 1001 share one timestamp; one has a whole-second time (no fraction).
    calls = [info("c-a", "1001", T0), info("c-c", "1001", T0), info("c-b", "1001", T0),
             info("c-d", "1001", T0 + timedelta(microseconds=1)),
             info("c-e", "1001", T0 - timedelta(minutes=1)),
             info("c-f", "1002", T0), info("c-g", "1001", T0, tenant="globex")]
    for call in calls:
        bus.register(call)
    bus.emit(CallStarted, "c-d", tenant="acme", caller="5551234", caller_name="Alice",
             callee="1001", callee_extension="1001", is_ai_handled=True,
             started_at=T0 + timedelta(seconds=1))
    bus.emit(CallEnded, "c-d", reason=EndReason.CALLER_HANGUP, duration=4.5)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_writer)
        with trio.fail_after(5):
            await store.flush()

        seen: list[str] = []
        before = None
        for _ in range(10):
            page = await callstore.call_history(store, ALICE, before=before, limit=2)
            seen += [c.info.call_id for c in page.calls]
            assert len(page.calls) <= 2
            if page.next_before is None:
                break
            before = HistoryCursor.parse(page.next_before.encode())
        assert seen == ["c-d", "c-c", "c-b", "c-a", "c-e"]

        ended = (await callstore.call_history(store, ALICE, limit=1)).calls[0]
        assert ended.info == calls[3]
        assert ended.answered_at == T0 + timedelta(seconds=1)
        assert ended.end_reason == "caller_hangup"
        assert ended.duration == 4.5
        assert ended.ended_at is not None
        unanswered = (await callstore.get_call(store, "c-a"))
        assert unanswered is not None
        assert (unanswered.answered_at, unanswered.ended_at) == (None, None)

        admin = await callstore.call_history(store, ADMIN, limit=100)
        assert [c.info.call_id for c in admin.calls] == ["c-d", "c-f", "c-c", "c-b", "c-a",
                                                         "c-e"]
        assert admin.next_before is None
        bob = await callstore.call_history(store, BOB, limit=100)
        assert [c.info.call_id for c in bob.calls] == ["c-f"]
        gus = await callstore.call_history(store, GUS, limit=100)
        assert [c.info.call_id for c in gus.calls] == ["c-g"]

        # A plain timestamp: calls that arrived strictly before it.
        older = await callstore.call_history(store, ALICE, before=HistoryCursor.parse(
            "2025-03-01T12:00:00Z"), limit=100)
        assert [c.info.call_id for c in older.calls] == ["c-e"]
        same_in_other_zone = HistoryCursor.parse("2025-03-01T14:00:00.000001+02:00")
        newer = await callstore.call_history(store, ALICE, before=same_in_other_zone, limit=100)
        assert [c.info.call_id for c in newer.calls] == ["c-c", "c-b", "c-a", "c-e"]
        nursery.cancel_scope.cancel()


def test_cursor_round_trip_and_parsing() -> None:
    cursor = HistoryCursor(T0 + timedelta(microseconds=5), "abc123")
    assert cursor.encode() == "2025-03-01T12:00:00.000005Z~abc123"
    assert HistoryCursor.parse(cursor.encode()) == cursor
    assert HistoryCursor.parse("2025-03-01T12:00:00") == HistoryCursor(T0, "")
    assert HistoryCursor.parse("2025-03-01") == HistoryCursor(T0 - timedelta(hours=12), "")
    for bad in ("", "yesterday", "2025-13-01", "0001-01-01T00:00:00+01:00", "~abc",
                "2025-03-01T12:00:00Z~" + "x" * 200):
        with pytest.raises(ValueError):
            HistoryCursor.parse(bad)


async def test_transcript_entries_in_order_from_written_and_pending_events(
        store: Store) -> None:
    bus = EventBus(store, Metrics())
    bus.register(info("call-1", "1001", T0))
    bus.emit(CallStarted, "call-1", tenant="acme", caller="5551234", caller_name="Alice",
             callee="1001", callee_extension="1001", is_ai_handled=True, started_at=T0)
    bus.emit(SttTranscript, "call-1", text="hello I", is_final=False)
    bus.emit(SttTranscript, "call-1", text="hello I need help", is_final=True)
    bus.emit(TtsStarted, "call-1", text="How can I help?")
    bus.emit(TtsCompleted, "call-1")
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_writer)
        with trio.fail_after(5):
            await store.flush()
        nursery.cancel_scope.cancel()
    # Written: seq 1-5. Not written (no writer runs now): seq 6-7, known only to the bus.
    bus.emit(SttTranscript, "call-1", text="my order", is_final=True, speaker=Speaker.CALLER)
    bus.emit(TtsStarted, "call-1", text="Let me look.")
    with trio.fail_after(5):
        entries = await callstore.read_transcript(store, bus, "call-1")
    assert [(e.seq, e.speaker, e.text, e.final) for e in entries] == [
        (2, "caller", "hello I", False),
        (3, "caller", "hello I need help", True),
        (4, "bot", "How can I help?", True),
        (6, "caller", "my order", True),
        (7, "bot", "Let me look.", True),
    ]
    assert all(e.timestamp.tzinfo is not None for e in entries)
    assert entries[0].timestamp <= entries[-1].timestamp

    # A fresh bus (as after the call left memory) reads the written part alone.
    assert [e.seq for e in await callstore.read_transcript(store, EventBus(store, Metrics()),
                                                           "call-1")] == [2, 3, 4]
    assert await callstore.read_transcript(store, bus, "no-such-call") == []


async def test_transcript_flushes_when_memory_no_longer_reaches_the_store(store: Store) -> None:
    bus = EventBus(store, Metrics(), history_limit=2)
    bus.register(info("call-2", "1001", T0))
    for n in range(1, 7):
        bus.emit(SttTranscript, "call-2", text=f"line {n}", is_final=True)
    # Memory holds seq 5-6 only; 1-4 wait in the writer's queue. Reading must not skip them.
    result: list[callstore.TranscriptEntry] = []

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            async def read_then_stop() -> None:
                result.extend(await callstore.read_transcript(store, bus, "call-2"))
                nursery.cancel_scope.cancel()

            nursery.start_soon(read_then_stop)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(store.run_writer)
    assert [e.text for e in result] == [f"line {n}" for n in range(1, 7)]


def test_visible_extension_is_may_see_as_a_filter() -> None:
    calls = [info(f"c{n}", ext, T0, tenant) for n, (ext, tenant) in enumerate(
        [("1001", "acme"), ("1002", "acme"), ("1001", "globex"), ("1900", "acme")])]
    for viewer in (ALICE, BOB, GUS, ADMIN, Viewer("1001", "globex", "admin")):
        extension = visible_extension(viewer)
        for call in calls:
            as_filter = call.tenant == viewer.tenant and extension in (None,
                                                                        call.callee_extension)
            assert as_filter == may_see(viewer, call), (viewer, call)


# -- events_since: the one reader of a call's events (REST transcript, hub resume) ---------


async def _write_all(store: Store) -> None:
    """Run the writer until everything submitted so far is in the database."""
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_writer)
        with trio.fail_after(5):
            await store.flush()
        nursery.cancel_scope.cancel()


def _lines(bus: EventBus, call_id: str, count: int) -> None:
    for n in range(count):
        bus.emit(SttTranscript, call_id, text=f"line {n}", is_final=True)


async def test_events_since_answers_from_memory_without_touching_the_store(
        store: Store) -> None:
    bus = EventBus(store, Metrics())
    bus.register(info("call-m", "1001", T0))
    _lines(bus, "call-m", 5)
    # Nothing is written (no writer runs): memory alone must answer, and must not wait on it.
    with trio.fail_after(5):
        events = await callstore.events_since(store, bus, "call-m", 2)
        everything = await callstore.events_since(store, bus, "call-m")
        after_last = await callstore.events_since(store, bus, "call-m", 5)
        beyond = await callstore.events_since(store, bus, "call-m", 99)
    assert [e.seq for e in events] == [3, 4, 5]
    assert all(isinstance(e, SttTranscript) for e in events)
    assert [e.seq for e in everything] == [1, 2, 3, 4, 5]
    assert after_last == [] and beyond == []
    assert await store.run(lambda c: c.execute("SELECT COUNT(*) FROM events").fetchone()[0]) == 0


async def test_events_since_reads_the_store_for_a_call_memory_forgot(store: Store) -> None:
    bus = EventBus(store, Metrics())
    bus.register(info("call-s", "1001", T0))
    bus.emit(CallStarted, "call-s", tenant="acme", caller="5551234", caller_name="Alice",
             callee="1001", callee_extension="1001", is_ai_handled=True, started_at=T0)
    _lines(bus, "call-s", 3)
    bus.emit(CallEnded, "call-s", reason=EndReason.CALLER_HANGUP, duration=2.5)
    await _write_all(store)
    fresh = EventBus(store, Metrics())          # as after a restart: memory knows nothing
    with trio.fail_after(5):
        stored = await callstore.events_since(store, fresh, "call-s", 1)
        everything = await callstore.events_since(store, fresh, "call-s")
        none_after_end = await callstore.events_since(store, fresh, "call-s", 5)
    assert [(e.seq, e.name) for e in stored] == [
        (2, "stt_transcript"), (3, "stt_transcript"), (4, "stt_transcript"), (5, "call_ended")]
    # Read back typed and equal to what was published, not as raw rows.
    assert everything == bus.history("call-s")
    assert none_after_end == []


async def test_events_since_joins_store_and_memory_when_memory_falls_short(
        store: Store) -> None:
    bus = EventBus(store, Metrics(), history_limit=3)
    bus.register(info("call-j", "1001", T0))
    _lines(bus, "call-j", 4)
    await _write_all(store)                     # seq 1-4 written
    _lines(bus, "call-j", 4)                    # seq 5-8 queued; memory holds 6-8
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run_writer)
            from_two = await callstore.events_since(store, bus, "call-j", 2)
            from_five = await callstore.events_since(store, bus, "call-j", 5)
            nursery.cancel_scope.cancel()
    assert [e.seq for e in from_two] == [3, 4, 5, 6, 7, 8]
    assert [e.seq for e in from_five] == [6, 7, 8]


async def test_events_since_an_unknown_call_is_empty(store: Store) -> None:
    with trio.fail_after(5):
        assert await callstore.events_since(store, EventBus(store, Metrics()), "nope") == []


async def test_events_since_refuses_a_stored_event_it_cannot_read(store: Store) -> None:
    await store.run(lambda c: c.execute(
        "INSERT INTO events (call_id, seq, name, ts, data) VALUES (?,?,?,?,?)",
        ("call-x", 1, "from_the_future", T0.isoformat(), "{}")))
    with pytest.raises(ValueError, match="from_the_future"):
        await callstore.events_since(store, EventBus(store, Metrics()), "call-x")


async def _write(store: Store, *items: CallInfo | CallEvent) -> None:
    """Write calls and events as the writer of a running daemon would."""
    for item in items:
        if isinstance(item, CallInfo):
            store.submit_call(item)
        else:
            store.submit(item)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_writer)
        with trio.fail_after(5):
            await store.flush()
        nursery.cancel_scope.cancel()


async def test_calls_a_killed_process_left_open_end_at_their_last_event(tmp_path: Path) -> None:
    """At the next start each unfinished call is closed with `interrupted` at the time of its
    last stored event, and a call_ended (next seq) is stored: history, transcript and resume
    agree; finished calls are left alone, and a second run changes nothing."""
    path = tmp_path / "store.sqlite3"
    answered = T0 + timedelta(seconds=1)
    last = T0 + timedelta(seconds=5.25)
    up, ringing, done = (info("c-up", "1001", T0), info("c-ringing", "1001", T0),
                         info("c-done", "1002", T0))
    started = {"tenant": "acme", "caller": "5551234", "caller_name": "Alice", "callee": "1001",
               "callee_extension": "1001", "is_ai_handled": True, "started_at": answered}
    async with open_store(path, Metrics()) as store:
        await _write(
            store, up, ringing, done,
            CallStarted(call_id="c-up", seq=1, ts=answered, **started),
            TtsStarted(call_id="c-up", seq=2, ts=T0 + timedelta(seconds=2), text="Hello."),
            SttTranscript(call_id="c-up", seq=3, ts=last, text="opening hours", is_final=True),
            CallStarted(call_id="c-done", seq=1, ts=answered, **started),
            CallEnded(call_id="c-done", seq=2, ts=T0 + timedelta(seconds=3),
                      reason=EndReason.CALLER_HANGUP, duration=2.0))
    async with open_store(path, Metrics()) as store:     # the next process
        assert await store.mark_unfinished_calls("interrupted") == 2
        assert await store.mark_unfinished_calls("interrupted") == 0
        bus = EventBus(store, Metrics())

        call = await callstore.get_call(store, "c-up")
        assert call is not None
        assert (call.phase, call.ended_at, call.end_reason, call.duration) == (
            CallPhase.ENDED, last, "interrupted", 4.25)
        events = await callstore.events_since(store, bus, "c-up")
        # call_ended is numbered past whatever the dead process may have sent a hub client.
        assert [(e.seq, e.name) for e in events] == [
            (1, "call_started"), (2, "tts_started"), (3, "stt_transcript"),
            (3 + SEQ_GAP_AFTER_CRASH, "call_ended")]
        assert events[-1] == CallEnded(call_id="c-up", seq=3 + SEQ_GAP_AFTER_CRASH, ts=last,
                                       reason=EndReason.INTERRUPTED, duration=4.25)
        for resumed_from in (3, 4, 2 + SEQ_GAP_AFTER_CRASH):
            assert await callstore.events_since(store, bus, "c-up", resumed_from) == [
                events[-1]]
        assert [e.text for e in await callstore.read_transcript(store, bus, "c-up")] == [
            "Hello.", "opening hours"]

        never_answered = await callstore.get_call(store, "c-ringing")
        assert never_answered is not None
        assert (never_answered.ended_at, never_answered.end_reason, never_answered.duration,
                never_answered.answered_at) == (T0, "interrupted", 0.0, None)
        assert await callstore.events_since(store, bus, "c-ringing") == [CallEnded(
            call_id="c-ringing", seq=SEQ_GAP_AFTER_CRASH, ts=T0, reason=EndReason.INTERRUPTED,
            duration=0.0)]

        finished = await callstore.get_call(store, "c-done")
        assert finished is not None
        assert (finished.end_reason, finished.duration) == ("caller_hangup", 2.0)
        assert [e.seq for e in await callstore.events_since(store, bus, "c-done")] == [1, 2]
