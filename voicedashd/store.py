"""SQLite persistence (WAL): schema migrations, a lossless batched event writer, queries."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog
import trio

from .events import (
    CallEnded,
    CallEvent,
    CallInfo,
    CallRecorded,
    CallStarted,
    CallSummarized,
    EndReason,
)
from .metrics import Metrics

log = structlog.get_logger(__name__)
T = TypeVar("T")

# Each entry moves the schema one version forward; never edit a released entry, append.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE calls (
        call_id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        caller TEXT NOT NULL,
        caller_name TEXT,
        callee TEXT NOT NULL,
        callee_extension TEXT NOT NULL,
        is_ai_handled INTEGER NOT NULL,
        started_at TEXT NOT NULL,
        answered_at TEXT,
        ended_at TEXT,
        end_reason TEXT,
        duration REAL
    );
    CREATE INDEX calls_by_callee ON calls (tenant, callee_extension, started_at);
    CREATE TABLE events (
        call_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        name TEXT NOT NULL,
        ts TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (call_id, seq)
    ) WITHOUT ROWID;
    """,
    """
    CREATE TABLE refresh_tokens (
        token_hash TEXT PRIMARY KEY,
        family TEXT NOT NULL,
        tenant TEXT NOT NULL,
        extension TEXT NOT NULL,
        credential TEXT NOT NULL,
        issued_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        rotated_at REAL,
        revoked_at REAL
    ) WITHOUT ROWID;
    CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family);
    CREATE INDEX refresh_tokens_by_expiry ON refresh_tokens (expires_at);
    """,
    # Webhook deliveries (webhooks/queue.py): enqueued in the transaction that stores their
    # event; state is pending until delivered (2xx) or failed (gave up, or webhook removed).
    """
    CREATE TABLE webhook_deliveries (
        delivery_id TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        event TEXT NOT NULL,
        call_id TEXT NOT NULL,
        body BLOB NOT NULL,
        created_at REAL NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_error TEXT,
        finished_at REAL
    );
    CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
        WHERE state = 'pending';
    CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (finished_at)
        WHERE state != 'pending';
    """,
    # 4: an ended AI-handled call's message card (MessageCard.wire() as JSON), for the lists.
    """
    ALTER TABLE calls ADD COLUMN summary TEXT;
    """,
    # Unread and handled (inbox.py): one user's marks of one call; no row means new. Keyed by
    # the user (tenant, extension) as admins keep their own marks of their tenant's calls.
    """
    CREATE TABLE call_marks (
        call_id TEXT NOT NULL,
        tenant TEXT NOT NULL,
        extension TEXT NOT NULL,
        opened_at TEXT NOT NULL,
        handled_at TEXT,
        PRIMARY KEY (tenant, extension, call_id)
    ) WITHOUT ROWID;
    """,
    # A recording tenant's call recording (CallRecorded): its file relative to [recordings]
    # dir, length and size; the retention sweep finds the oldest ended recorded calls first.
    """
    ALTER TABLE calls ADD COLUMN recording TEXT;
    ALTER TABLE calls ADD COLUMN recording_duration REAL;
    ALTER TABLE calls ADD COLUMN recording_bytes INTEGER;
    CREATE INDEX calls_recorded ON calls (ended_at) WHERE recording IS NOT NULL;
    """,
)


# The seq of the call_ended stored for a call a killed process left open, after its last
# stored event. The process may have delivered a few more events to hub clients before dying
# without storing them; numbering call_ended past any of those means a client that resumes
# from the last seq it saw still gets it (a call publishes a few events a second).
SEQ_GAP_AFTER_CRASH = 1000


class StoreError(Exception):
    """The database cannot be opened or used."""


class Outbox(Protocol):
    """Work written in the same transaction as each stored event (webhook deliveries)."""

    def enqueue(self, conn: sqlite3.Connection, event: CallEvent) -> int:
        """Write the work for a newly stored event (worker thread); return how many rows."""
        ...

    def committed(self, count: int) -> None:
        """Learn that count rows enqueued by enqueue are committed (Trio thread)."""
        ...


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    _migrate(conn)
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > len(MIGRATIONS):
        raise StoreError(
            f"database schema version {current} is newer than this voicedashd knows "
            f"({len(MIGRATIONS)}); upgrade voicedashd"
        )
    for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
        conn.executescript(f"BEGIN; {script}; PRAGMA user_version = {version}; COMMIT;")
        log.info("store_migrated", version=version)


class Store:
    """One SQLite connection used from worker threads, one statement batch at a time."""

    def __init__(self, conn: sqlite3.Connection, metrics: Metrics,
                 outbox: Outbox | None = None) -> None:
        self._conn = conn
        self._lock = trio.Lock()
        self._metrics = metrics
        self._outbox = outbox
        self._pending: list[CallInfo | CallEvent] = []
        self._wakeup = trio.Event()
        self._flushed = trio.Condition()
        self._written = 0
        self._submitted = 0

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn(connection) in a worker thread, serialised with every other use."""
        async with self._lock:
            return await trio.to_thread.run_sync(fn, self._conn)

    async def check(self) -> bool:
        """Return whether the database answers a trivial query."""
        try:
            with trio.move_on_after(2):
                await self.run(lambda c: c.execute("SELECT 1").fetchone())
                return True
        except sqlite3.Error:
            return False
        return False

    # -- the lossless writer -------------------------------------------------------------

    def submit_call(self, info: CallInfo) -> None:
        """Queue a new call's row; written before any of its events."""
        self._pending.append(info)
        self._submitted += 1
        self._wakeup.set()

    def submit(self, event: CallEvent) -> None:
        """Queue an event for persistence; never blocks, never drops."""
        self._pending.append(event)
        self._submitted += 1
        self._wakeup.set()

    async def run_writer(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                         ) -> None:
        """Write queued events in batches until cancelled, then write what is left."""
        task_status.started()
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                await self._write_pending()
        finally:
            with trio.CancelScope(shield=True):
                await self._write_pending()

    async def flush(self) -> None:
        """Wait until every event submitted so far is written."""
        target = self._submitted
        async with self._flushed:
            while self._written < target:
                await self._flushed.wait()

    async def _write_pending(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        started = time.perf_counter()
        enqueued = await self.run(lambda conn: _write_events(conn, batch, self._outbox))
        self._metrics.store_write_seconds.observe(time.perf_counter() - started)
        self._committed(enqueued)
        async with self._flushed:
            self._written += len(batch)
            self._flushed.notify_all()

    def _committed(self, enqueued: int) -> None:
        if enqueued and self._outbox is not None:
            self._outbox.committed(enqueued)

    # -- queries -------------------------------------------------------------------------

    async def call_rows(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        """Run a read query and return its rows as dicts."""
        rows = await self.run(lambda c: c.execute(sql, params).fetchall())
        return [dict(r) for r in rows]

    async def mark_unfinished_calls(self, reason: str) -> int:
        """Close calls a killed process left open: each ends at its last stored event's time
        with a stored call_ended (reason; seq past any the process could have published)."""
        end_reason = EndReason(reason)

        def _close(conn: sqlite3.Connection) -> tuple[int, int]:
            rows = conn.execute(
                "SELECT c.call_id, c.started_at, c.answered_at, e.seq, e.ts FROM calls c"
                " LEFT JOIN events e ON e.call_id = c.call_id AND e.seq ="
                " (SELECT MAX(seq) FROM events WHERE call_id = c.call_id)"
                " WHERE c.ended_at IS NULL").fetchall()
            enqueued = _write_events(conn, [_interrupted(row, end_reason) for row in rows],
                                     self._outbox)
            return len(rows), enqueued
        closed, enqueued = await self.run(_close)
        self._committed(enqueued)
        return closed


def _interrupted(row: sqlite3.Row, reason: EndReason) -> CallEnded:
    """The call_ended of an unfinished call: after its last stored event, at that event's time."""
    # Nothing after the last stored event is known: ending the call then keeps history,
    # transcript and a resumed hub stream in agreement.
    ended_at = datetime.fromisoformat(row["ts"] or row["started_at"])
    answered = row["answered_at"]
    duration = max(0.0, (ended_at - datetime.fromisoformat(answered)).total_seconds()
                   ) if answered else 0.0
    return CallEnded(call_id=row["call_id"], seq=(row["seq"] or 0) + SEQ_GAP_AFTER_CRASH,
                     ts=ended_at, reason=reason, duration=round(duration, 3))


def _write_events(conn: sqlite3.Connection, batch: list[CallInfo | CallEvent],
                  outbox: Outbox | None = None) -> int:
    """Write a batch in one transaction, with the outbox's work for each new event; return
    how many outbox rows were written."""
    enqueued = 0
    with conn:
        conn.execute("BEGIN")
        for event in batch:
            if isinstance(event, CallInfo):
                conn.execute(
                    "INSERT OR IGNORE INTO calls (call_id, tenant, caller, caller_name, callee,"
                    " callee_extension, is_ai_handled, started_at) VALUES (?,?,?,?,?,?,?,?)",
                    (event.call_id, event.tenant, event.caller, event.caller_name, event.callee,
                     event.callee_extension, int(event.is_ai_handled),
                     event.created_at.isoformat()))
                continue
            if isinstance(event, CallStarted):
                conn.execute("UPDATE calls SET answered_at = ? WHERE call_id = ?",
                             (event.started_at.isoformat(), event.call_id))
            elif isinstance(event, CallEnded):
                conn.execute(
                    "UPDATE calls SET ended_at = ?, end_reason = ?, duration = ? WHERE call_id = ?",
                    (event.ts.isoformat(), event.reason.value, event.duration, event.call_id))
            elif isinstance(event, CallSummarized):
                conn.execute("UPDATE calls SET summary = ? WHERE call_id = ?",
                             (json.dumps(event.card().wire()), event.call_id))
            elif isinstance(event, CallRecorded):
                conn.execute("UPDATE calls SET recording = ?, recording_duration = ?,"
                             " recording_bytes = ? WHERE call_id = ?",
                             (event.file, event.duration, event.bytes, event.call_id))
            inserted = conn.execute(
                "INSERT OR IGNORE INTO events (call_id, seq, name, ts, data) VALUES (?,?,?,?,?)",
                (event.call_id, event.seq, event.name, event.ts.isoformat(),
                 json.dumps(event.data()))).rowcount
            if inserted and outbox is not None:
                enqueued += outbox.enqueue(conn, event)
    return enqueued


@asynccontextmanager
async def open_store(path: Path, metrics: Metrics,
                     outbox: Outbox | None = None) -> AsyncIterator[Store]:
    """Open (creating and migrating) the database; close it on exit."""
    try:
        conn = await trio.to_thread.run_sync(_connect, path)
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"store.path: cannot open {path}: {exc}") from None
    try:
        yield Store(conn, metrics, outbox)
    finally:
        conn.close()
