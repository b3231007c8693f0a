"""One call shape: CallSummary from the bus, from the store, and its one wire form."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from voicedashd import callstore
from voicedashd.api.calls_routes import CallSummaryModel
from voicedashd.bus import EventBus
from voicedashd.events import (
    CallEnded,
    CallInfo,
    CallPhase,
    CallRecorded,
    CallStarted,
    CallSummary,
    EndReason,
    RecordingInfo,
    SttTranscript,
    call_started_fields,
)
from voicedashd.metrics import Metrics
from voicedashd.store import Store, open_store

ARRIVED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
ANSWERED = ARRIVED + timedelta(milliseconds=250)
INFO = CallInfo(call_id="c1", tenant="acme", caller="555", caller_name="Ann", callee="1001",
                callee_extension="1001", is_ai_handled=True, created_at=ARRIVED)

# Every field a client reads: the page's callFrom() (REST lists and the hub's `call`), the
# REST tests, and docs/protocol.md's subscribe reply.
WIRE_KEYS = {"call_id", "tenant", "caller", "caller_name", "callee", "callee_extension",
             "is_ai_handled", "started_at", "created_at", "state", "answered", "answered_at",
             "ended_at", "end_reason", "duration", "summary", "recording"}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(tmp_path / "store.sqlite3", Metrics()) as opened:
        yield opened


def test_wire_form_of_a_ringing_call() -> None:
    wire = CallSummary(info=INFO, phase=CallPhase.RINGING).wire()
    assert json.loads(json.dumps(wire)) == {
        "call_id": "c1", "tenant": "acme",
        "caller": {"number": "555", "name": "Ann"}, "caller_name": "Ann",
        "callee": "1001", "callee_extension": "1001", "is_ai_handled": True,
        "started_at": "2025-01-02T03:04:05+00:00", "created_at": "2025-01-02T03:04:05+00:00",
        "state": "ringing", "answered": False, "answered_at": None,
        "ended_at": None, "end_reason": None, "duration": None, "summary": None,
        "recording": None}


def test_wire_form_passes_the_rest_schema_unchanged() -> None:
    ended = CallSummary(info=INFO, phase=CallPhase.ENDED, answered_at=ANSWERED,
                        ended_at=ANSWERED + timedelta(seconds=3), end_reason="caller_hangup",
                        duration=3.0)
    for summary in (CallSummary(info=INFO, phase=CallPhase.ANSWERED), ended):
        # The REST answer is the wire form plus the requesting user's inbox state.
        body = CallSummaryModel.model_validate({**summary.wire(), "inbox": "new"}).model_dump(
            mode="json")
        assert body.pop("inbox") == "new"
        assert set(body) == WIRE_KEYS
        for key in WIRE_KEYS - {"started_at", "created_at", "answered_at", "ended_at"}:
            assert body[key] == summary.wire()[key], key
        for key in ("started_at", "created_at", "answered_at", "ended_at"):
            theirs, ours = body[key], summary.wire()[key]
            assert (theirs is None and ours is None) or (
                datetime.fromisoformat(theirs) == datetime.fromisoformat(ours)), key


def test_call_started_fields_come_from_the_call_info() -> None:
    event = CallStarted(call_id="c1", seq=1, ts=ANSWERED,
                        **call_started_fields(INFO, ANSWERED))
    assert event.data() == {"tenant": "acme", "caller": "555", "caller_name": "Ann",
                            "callee": "1001", "callee_extension": "1001",
                            "is_ai_handled": True, "started_at": ANSWERED.isoformat()}


def test_the_bus_summarises_a_call_as_its_events_go() -> None:
    bus = EventBus(_NoStore(), Metrics(), history_limit=2)    # type: ignore[arg-type]
    assert bus.summary("c1") is None
    bus.register(INFO)
    assert bus.summary("c1") == CallSummary(info=INFO, phase=CallPhase.RINGING)
    bus.emit(CallStarted, "c1", **call_started_fields(INFO, ANSWERED))
    for n in range(3):          # pushes call_started out of the bounded history
        bus.emit(SttTranscript, "c1", text=f"w{n}", is_final=False)
    assert bus.summary("c1") == CallSummary(info=INFO, phase=CallPhase.CONFIRMED,
                                            answered_at=ANSWERED)
    ended = bus.emit(CallEnded, "c1", reason=EndReason.CALLER_HANGUP, duration=4.5)
    assert bus.summary("c1") == CallSummary(
        info=INFO, phase=CallPhase.ENDED, answered_at=ANSWERED, ended_at=ended.ts,
        end_reason="caller_hangup", duration=4.5)


async def test_the_store_summarises_a_call_as_the_bus_did(store: Store) -> None:
    bus = EventBus(store, Metrics())
    missed = CallInfo(call_id="c2", tenant="acme", caller="556", caller_name=None,
                      callee="1001", callee_extension="1001", is_ai_handled=True,
                      created_at=ARRIVED)
    bus.register(INFO)
    bus.register(missed)
    bus.emit(CallStarted, "c1", **call_started_fields(INFO, ANSWERED))
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_writer)
        with trio.fail_after(5):
            await store.flush()
            assert await callstore.get_call(store, "c1") == bus.summary("c1")
            assert await callstore.get_call(store, "c2") == bus.summary("c2")
            bus.emit(CallEnded, "c1", reason=EndReason.BOT_HANGUP, duration=1.0)
            await store.flush()
            stored = await callstore.get_call(store, "c1")
            assert stored == bus.summary("c1")
            assert stored is not None and stored.phase is CallPhase.ENDED
            assert await callstore.get_call(store, "nope") is None
            # find_call: memory first, the store for a call memory does not know.
            fresh = EventBus(store, Metrics())
            assert await callstore.find_call(store, fresh, "c1") == stored
            assert await callstore.find_call(store, bus, "c2") == bus.summary("c2")
            assert await callstore.find_call(store, fresh, "nope") is None
        nursery.cancel_scope.cancel()


async def test_a_recording_is_part_of_the_call_in_memory_and_in_the_store(store: Store) -> None:
    bus = EventBus(store, Metrics())
    bus.register(INFO)
    bus.emit(CallStarted, "c1", **call_started_fields(INFO, ANSWERED))
    bus.emit(CallRecorded, "c1", file="2025-01-02/c1.wav", duration=2.98, bytes=190_444)
    bus.emit(CallEnded, "c1", reason=EndReason.CALLER_HANGUP, duration=3.0)
    in_memory = bus.summary("c1")
    assert in_memory is not None
    assert in_memory.recording == RecordingInfo(duration=2.98, bytes=190_444)
    assert in_memory.wire()["recording"] == {"url": "/api/calls/c1/recording",
                                             "duration": 2.98, "bytes": 190_444}
    body = CallSummaryModel.model_validate({**in_memory.wire(), "inbox": "open"}).model_dump(
        mode="json")
    assert body["recording"] == in_memory.wire()["recording"]
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_writer)
        with trio.fail_after(5):
            await store.flush()
            assert await callstore.get_call(store, "c1") == in_memory
            assert await callstore.recording_file(store, "c1") == "2025-01-02/c1.wav"
        nursery.cancel_scope.cancel()


class _NoStore:
    """A store that takes what the bus submits and keeps nothing."""

    def submit_call(self, info: CallInfo) -> None:
        pass

    def submit(self, event: object) -> None:
        pass
