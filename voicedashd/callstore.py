"""Read calls and their events back: one call, a user's call history, a call's events."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from .access import Viewer, may_see, visible_extension
from .bus import EventBus
from .events import (
    CallEvent,
    CallInfo,
    CallPhase,
    CallSummary,
    MessageCard,
    RecordingInfo,
    Speaker,
    SttTranscript,
    TtsStarted,
    event_from_record,
)
from .inbox import InboxState, history_filter
from .store import Store

log = structlog.get_logger(__name__)

# How often events_since goes back to the store when memory keeps moving away from it.
READ_ROUNDS = 3
CURSOR_SEPARATOR = "~"
MAX_CURSOR_CALL_ID = 128


@dataclass(frozen=True, slots=True)
class HistoryCursor:
    """Where a history page starts: calls strictly older than (started_at, call_id)."""

    started_at: datetime
    call_id: str = ""

    def encode(self) -> str:
        """Return the cursor as the `before` value of the next page's request."""
        stamp = self.started_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return f"{stamp}{CURSOR_SEPARATOR}{self.call_id}"

    @classmethod
    def parse(cls, text: str) -> HistoryCursor:
        """Read an ISO 8601 timestamp (naive: UTC) or an encoded cursor; ValueError if neither."""
        stamp, _, call_id = text.strip().partition(CURSOR_SEPARATOR)
        if len(call_id) > MAX_CURSOR_CALL_ID:
            raise ValueError("not a cursor from next_before")
        try:
            when = datetime.fromisoformat(stamp)
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            when = when.astimezone(UTC)
        except (ValueError, OverflowError):
            raise ValueError("expected an ISO 8601 timestamp such as 2025-01-31T12:00:00Z, "
                             "or the next_before of the previous page") from None
        return cls(when, call_id)

    def key(self) -> tuple[str, str]:
        """The (started_at, call_id) pair as stored, for comparing in SQL."""
        # The writer stores datetime.isoformat() of UTC times, so string order is time order.
        return (self.started_at.isoformat(), self.call_id)


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """One page of history, newest first, and where the next page starts (None: no more)."""

    calls: list[CallSummary]
    next_before: HistoryCursor | None


@dataclass(frozen=True, slots=True)
class TranscriptEntry:
    """One line of a transcript: who said what, whether it is final, and when."""

    speaker: str
    text: str
    final: bool
    seq: int
    timestamp: datetime


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _summary(row: dict[str, Any]) -> CallSummary:
    info = CallInfo(
        call_id=row["call_id"], tenant=row["tenant"], caller=row["caller"],
        caller_name=row["caller_name"], callee=row["callee"],
        callee_extension=row["callee_extension"], is_ai_handled=bool(row["is_ai_handled"]),
        created_at=datetime.fromisoformat(row["started_at"]))
    answered_at, ended_at = _time(row["answered_at"]), _time(row["ended_at"])
    # The store learns of a call's answer from CallStarted, i.e. once it is confirmed.
    phase = (CallPhase.ENDED if ended_at else CallPhase.CONFIRMED if answered_at
             else CallPhase.RINGING)
    return CallSummary(info=info, phase=phase, answered_at=answered_at, ended_at=ended_at,
                       end_reason=row["end_reason"], duration=row["duration"],
                       card=_card(row.get("summary")), recording=_recording(row))


def _recording(row: dict[str, Any]) -> RecordingInfo | None:
    """A stored call's recording (only a completed one is ever stored)."""
    if not row.get("recording"):
        return None
    return RecordingInfo(duration=row["recording_duration"] or 0.0,
                         bytes=row["recording_bytes"] or 0)


def _card(stored: str | None) -> MessageCard | None:
    """A stored message card; one this version cannot read is logged and left out."""
    if not stored:
        return None
    try:
        return MessageCard.from_wire(json.loads(stored))
    except (ValueError, KeyError, TypeError):
        log.warning("call_summary_unreadable")
        return None


async def get_call(store: Store, call_id: str) -> CallSummary | None:
    """Return the stored call with this id, if there is one."""
    rows = await store.call_rows("SELECT * FROM calls WHERE call_id = ?", (call_id,))
    return _summary(rows[0]) if rows else None


async def find_call(store: Store, bus: EventBus, call_id: str) -> CallSummary | None:
    """Return a call's summary: from memory while the bus knows it, else from the store."""
    return bus.summary(call_id) or await get_call(store, call_id)


async def call_history(store: Store, viewer: Viewer, *, before: HistoryCursor | None = None,
                       limit: int = 20, state: InboxState | None = None) -> HistoryPage:
    """Return the calls viewer may see (in state for them, if given), newest first, older than
    before, at most limit."""
    where = ["tenant = ?"]
    params: list[Any] = [viewer.tenant]
    extension = visible_extension(viewer)
    if extension is not None:
        where.append("callee_extension = ?")
        params.append(extension)
    if state is not None:
        condition, values = history_filter(viewer, state)
        where.append(condition)
        params.extend(values)
    if before is not None:
        where.append("(started_at, call_id) < (?, ?)")
        params.extend(before.key())
    rows = await store.call_rows(
        f"SELECT * FROM calls WHERE {' AND '.join(where)} "
        "ORDER BY started_at DESC, call_id DESC LIMIT ?", (*params, limit + 1))
    calls = [_summary(row) for row in rows[:limit]]
    # The query is the SQL form of may_see; the rule itself has the last word.
    visible = [call for call in calls if may_see(viewer, call.info)]
    next_before = None
    if len(rows) > limit:
        last = calls[-1].info
        next_before = HistoryCursor(last.created_at, last.call_id)
    return HistoryPage(visible, next_before)


def _stored_events(conn: sqlite3.Connection, call_id: str, since_seq: int) -> list[CallEvent]:
    rows = conn.execute("SELECT seq, name, ts, data FROM events WHERE call_id = ? AND seq > ?"
                        " ORDER BY seq", (call_id, since_seq)).fetchall()
    return [event_from_record(call_id, r["seq"], r["name"], r["ts"], json.loads(r["data"]))
            for r in rows]


async def events_since(store: Store, bus: EventBus, call_id: str,
                       since_seq: int = 0) -> list[CallEvent]:
    """Every event of a call after since_seq, once, in order: memory, else the store."""
    # A stored event this version cannot rebuild (unknown name) raises ValueError: callers
    # answer "try again later" rather than hand out a stream with a hole in it.
    events: list[CallEvent] = []
    cursor = since_seq
    for _ in range(READ_ROUNDS):
        in_memory = bus.info(call_id) is not None
        recent = bus.history(call_id, cursor)
        if in_memory and (not recent or recent[0].seq == cursor + 1):
            return events + recent
        if in_memory:
            # The bounded history no longer reaches back to cursor, and what it dropped may
            # still wait in the writer's queue: write it before reading.
            await store.flush()
        stored = await store.run(lambda conn, after=cursor: _stored_events(conn, call_id, after))
        log.debug("events_read_from_store", call_id=call_id, after=cursor, events=len(stored))
        events += stored
        cursor = stored[-1].seq if stored else cursor
        if not in_memory:
            return events
    # Events arrive faster than the store is read: give what is known rather than wait on.
    recent = bus.history(call_id, cursor)
    log.warning("events_gap", call_id=call_id, after=cursor,
                resumes_at=recent[0].seq if recent else None)
    return events + recent


def transcript_entry(event: CallEvent) -> TranscriptEntry | None:
    """The transcript line an event stands for, or None if it is not one."""
    if isinstance(event, SttTranscript):
        return TranscriptEntry(speaker=event.speaker.value, text=event.text,
                               final=event.is_final, seq=event.seq, timestamp=event.ts)
    if isinstance(event, TtsStarted):
        return TranscriptEntry(speaker=Speaker.BOT.value, text=event.text, final=True,
                               seq=event.seq, timestamp=event.ts)
    return None


async def read_transcript(store: Store, bus: EventBus, call_id: str) -> list[TranscriptEntry]:
    """Return a live or finished call's transcript in seq order; ValueError as events_since."""
    entries = (transcript_entry(e) for e in await events_since(store, bus, call_id))
    return [entry for entry in entries if entry is not None]


async def calls_without_card(store: Store, ended_since: datetime, limit: int) -> list[str]:
    """AI-handled calls that ended since ended_since with no message card, newest first."""
    rows = await store.call_rows(
        "SELECT call_id FROM calls WHERE is_ai_handled = 1 AND summary IS NULL"
        " AND ended_at IS NOT NULL AND ended_at >= ? ORDER BY ended_at DESC LIMIT ?",
        (ended_since.astimezone(UTC).isoformat(), limit))
    return [row["call_id"] for row in rows]


async def recording_file(store: Store, call_id: str) -> str | None:
    """The file (relative to [recordings] dir) of an ended call's completed recording."""
    rows = await store.call_rows("SELECT recording FROM calls WHERE call_id = ?"
                                 " AND ended_at IS NOT NULL", (call_id,))
    return rows[0]["recording"] if rows else None


def summary_from_row(row: Mapping[str, Any]) -> CallSummary:
    """A stored call's summary from its row of the calls table (a dict or sqlite3.Row)."""
    return _summary(dict(row))
