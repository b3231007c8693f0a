"""The delivery queue in the store: enqueued with each stored event, read and marked by the
sender. Functions taking a connection run in the store's worker thread."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from ..callstore import summary_from_row
from ..config import WebhookConfig
from ..events import CallEvent
from ..metrics import Metrics
from .schedule import Due

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event for one webhook: the exact body every try sends, and how it went so far."""

    delivery_id: str
    url: str
    event: str
    body: bytes
    created_at: float
    attempts: int


def delivery_body(delivery_id: str, event: CallEvent, call: sqlite3.Row | None) -> bytes:
    """The JSON a webhook receives: the delivery id, the call as REST shows it, the event."""
    summary = summary_from_row(call) if call is not None else None
    return json.dumps({
        "delivery_id": delivery_id,
        "tenant": summary.info.tenant if summary else None,
        "call": summary.wire() if summary else None,
        "event": event.to_wire(),
    }).encode()


def _new_id() -> str:
    return str(uuid.uuid4())


class WebhookOutbox:
    """Enqueues each stored event's deliveries in the event's own transaction, and tells the
    sender when the queue changed."""

    def __init__(self, webhooks: Callable[[], Sequence[WebhookConfig]], metrics: Metrics, *,
                 clock: Callable[[], float] = time.time,
                 new_id: Callable[[], str] = _new_id) -> None:
        self._webhooks = webhooks
        self._metrics = metrics
        self._clock = clock
        self._new_id = new_id
        self._changed = trio.Event()

    def enqueue(self, conn: sqlite3.Connection, event: CallEvent) -> int:
        """Insert a pending delivery per webhook that wants this event for its call's tenant."""
        hooks = [hook for hook in self._webhooks() if event.name in hook.events]
        if not hooks:
            return 0
        call = conn.execute("SELECT * FROM calls WHERE call_id = ?", (event.call_id,)
                            ).fetchone()
        tenant = call["tenant"] if call is not None else None
        now, count = self._clock(), 0
        for hook in hooks:
            if hook.tenant is not None and hook.tenant != tenant:
                continue
            delivery_id = self._new_id()
            conn.execute(
                "INSERT INTO webhook_deliveries (delivery_id, url, event, call_id, body,"
                " created_at, state, attempts, next_attempt_at) VALUES (?,?,?,?,?,?,?,0,?)",
                (delivery_id, hook.url, event.name, event.call_id,
                 delivery_body(delivery_id, event, call), now, PENDING, now))
            count += 1
        return count

    def committed(self, count: int) -> None:
        """Count what the store committed, and wake the sender."""
        self._metrics.webhook_enqueued.inc(count)
        self.notify()

    def notify(self) -> None:
        """Wake whoever waits on `changed`: the queue has new or finished work."""
        self._changed.set()
        self._changed = trio.Event()

    @property
    def changed(self) -> trio.Event:
        """The event the next change sets: take it before reading the queue, then wait on it."""
        return self._changed


def pending(conn: sqlite3.Connection, limit: int) -> list[Due]:
    """The pending deliveries soonest due first, at most limit."""
    rows = conn.execute(
        "SELECT delivery_id, url, next_attempt_at FROM webhook_deliveries"
        " WHERE state = 'pending' ORDER BY next_attempt_at LIMIT ?", (limit,)).fetchall()
    return [Due(r["delivery_id"], r["url"], r["next_attempt_at"]) for r in rows]


def pending_count(conn: sqlite3.Connection) -> int:
    """How many deliveries are pending."""
    return conn.execute("SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'pending'"
                        ).fetchone()[0]


def load(conn: sqlite3.Connection, delivery_ids: Sequence[str]) -> list[Delivery]:
    """The pending deliveries with these ids."""
    marks = ",".join("?" * len(delivery_ids))
    rows = conn.execute(
        "SELECT delivery_id, url, event, body, created_at, attempts FROM webhook_deliveries"
        f" WHERE state = 'pending' AND delivery_id IN ({marks})", tuple(delivery_ids)).fetchall()
    return [Delivery(r["delivery_id"], r["url"], r["event"], bytes(r["body"]), r["created_at"],
                     r["attempts"]) for r in rows]


def mark_delivered(conn: sqlite3.Connection, delivery_id: str, attempts: int,
                   now: float) -> None:
    """Record a delivery a receiver accepted (2xx): never sent again."""
    conn.execute("UPDATE webhook_deliveries SET state = ?, attempts = ?, finished_at = ?,"
                 " last_error = NULL WHERE delivery_id = ?",
                 (DELIVERED, attempts, now, delivery_id))


def mark_retry(conn: sqlite3.Connection, delivery_id: str, attempts: int, at: float,
               error: str) -> None:
    """Record a failed try and when the next one is due."""
    conn.execute("UPDATE webhook_deliveries SET attempts = ?, next_attempt_at = ?,"
                 " last_error = ? WHERE delivery_id = ?", (attempts, at, error, delivery_id))


def mark_failed(conn: sqlite3.Connection, delivery_id: str, attempts: int, now: float,
                error: str) -> None:
    """Record a delivery given up on: never sent again."""
    conn.execute("UPDATE webhook_deliveries SET state = ?, attempts = ?, finished_at = ?,"
                 " last_error = ? WHERE delivery_id = ?",
                 (FAILED, attempts, now, error, delivery_id))


def prune(conn: sqlite3.Connection, finished_before: float) -> int:
    """Delete delivered and failed deliveries finished before a time; return how many."""
    return conn.execute("DELETE FROM webhook_deliveries WHERE state != 'pending'"
                        " AND finished_at < ?", (finished_before,)).rowcount
