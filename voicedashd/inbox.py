"""Unread and handled: each user's own state of the calls they may see, and its SQL."""

from __future__ import annotations

import enum
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .access import Viewer, visible_extension
from .store import Store


class InboxState(enum.StrEnum):
    """Where a call stands for one user: not opened yet, opened, or marked handled."""

    NEW = "new"
    OPEN = "open"
    HANDLED = "handled"


class Mark(enum.StrEnum):
    """What a user does to a call's state."""

    OPENED = "opened"
    HANDLED = "handled"
    UNHANDLED = "unhandled"     # undo handled: back to open


@dataclass(frozen=True, slots=True)
class Marks:
    """A user's stored marks of one call (None: not done)."""

    opened_at: datetime | None = None
    handled_at: datetime | None = None

    @property
    def state(self) -> InboxState:
        """The state these marks stand for."""
        if self.handled_at is not None:
            return InboxState.HANDLED
        return InboxState.OPEN if self.opened_at is not None else InboxState.NEW

    def apply(self, mark: Mark, now: datetime) -> Marks:
        """The marks after mark; doing again what is done keeps the first time."""
        opened = self.opened_at or now
        if mark is Mark.OPENED:
            return Marks(opened, self.handled_at)
        if mark is Mark.HANDLED:
            # Handling a call one never opened (from the list) also counts as opening it.
            return Marks(opened, self.handled_at or now)
        return Marks(opened, None)


@dataclass(frozen=True, slots=True)
class InboxCounts:
    """How many of the calls a user may see are in each state."""

    new: int
    open: int
    handled: int


# A row exists only once a call is opened (opened_at is never NULL): no row means new.
_MARKED = ("EXISTS (SELECT 1 FROM call_marks m WHERE m.call_id = calls.call_id"
           " AND m.tenant = ? AND m.extension = ?{})")
_FILTERS = {
    InboxState.NEW: "NOT " + _MARKED.format(""),
    InboxState.OPEN: _MARKED.format(" AND m.handled_at IS NULL"),
    InboxState.HANDLED: _MARKED.format(" AND m.handled_at IS NOT NULL"),
}


def history_filter(viewer: Viewer, state: InboxState) -> tuple[str, list[Any]]:
    """A WHERE condition on the calls table (and its parameters) keeping calls in state."""
    return _FILTERS[state], [viewer.tenant, viewer.extension]


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _read(conn: sqlite3.Connection, viewer: Viewer, call_id: str) -> Marks:
    row = conn.execute("SELECT opened_at, handled_at FROM call_marks"
                       " WHERE call_id = ? AND tenant = ? AND extension = ?",
                       (call_id, viewer.tenant, viewer.extension)).fetchone()
    return Marks(_time(row["opened_at"]), _time(row["handled_at"])) if row else Marks()


async def mark(store: Store, viewer: Viewer, call_id: str, action: Mark,
               now: datetime) -> InboxState:
    """Record viewer's action on a call they may see (the caller checks); return its state."""
    def _mark(conn: sqlite3.Connection) -> InboxState:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            marks = _read(conn, viewer, call_id).apply(action, now)
            conn.execute(
                "INSERT INTO call_marks (call_id, tenant, extension, opened_at, handled_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant, extension, call_id)"
                " DO UPDATE SET opened_at = excluded.opened_at, handled_at = excluded.handled_at",
                (call_id, viewer.tenant, viewer.extension, _iso(marks.opened_at),
                 _iso(marks.handled_at)))
        return marks.state
    return await store.run(_mark)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


async def states(store: Store, viewer: Viewer, call_ids: Iterable[str]) -> dict[str, InboxState]:
    """Viewer's state of each of these calls (new where nothing is stored)."""
    ids = list(dict.fromkeys(call_ids))
    if not ids:
        return {}

    def _states(conn: sqlite3.Connection) -> dict[str, InboxState]:
        found = {}
        # Batches stay under SQLite's default limit of host parameters (999 before 3.32).
        for start in range(0, len(ids), 500):
            batch = ids[start:start + 500]
            rows = conn.execute(
                "SELECT call_id, opened_at, handled_at FROM call_marks"
                " WHERE tenant = ? AND extension = ?"
                f" AND call_id IN ({','.join('?' * len(batch))})",
                (viewer.tenant, viewer.extension, *batch)).fetchall()
            for row in rows:
                found[row["call_id"]] = Marks(_time(row["opened_at"]),
                                              _time(row["handled_at"])).state
        return {call_id: found.get(call_id, InboxState.NEW) for call_id in ids}
    return await store.run(_states)


async def counts(store: Store, viewer: Viewer) -> InboxCounts:
    """How many stored calls viewer may see are new, open and handled for them."""
    where = ["c.tenant = ?"]
    params: list[Any] = [viewer.tenant, viewer.extension, viewer.tenant]
    extension = visible_extension(viewer)
    if extension is not None:
        where.append("c.callee_extension = ?")
        params.append(extension)
    rows = await store.call_rows(
        "SELECT COUNT(*) - COUNT(m.call_id) AS new,"
        " COUNT(m.call_id) - COUNT(m.handled_at) AS open,"
        " COUNT(m.handled_at) AS handled"
        " FROM calls c LEFT JOIN call_marks m ON m.call_id = c.call_id"
        " AND m.tenant = ? AND m.extension = ?"
        f" WHERE {' AND '.join(where)}", params)
    row = rows[0]
    return InboxCounts(new=row["new"], open=row["open"], handled=row["handled"])
