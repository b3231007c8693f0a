"""Which pending deliveries to start now, and when to look again (no I/O, time passed in)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Due:
    """A pending delivery as the scheduler sees it: id, receiver, and when it may be tried."""

    delivery_id: str
    url: str
    due_at: float


@dataclass(frozen=True, slots=True)
class Selection:
    """Deliveries to start now, and the earliest due time of one not started (None: none is
    waiting for a time; only a change in the queue can make work)."""

    start: tuple[str, ...]
    wake_at: float | None


def select_due(pending: Sequence[Due], now: float, in_flight: Mapping[str, str], *,
               limit: int, per_url: int) -> Selection:
    """Pick due deliveries, oldest due first, keeping at most limit in flight in all and at
    most per_url to one receiver; pending is ordered by due_at."""
    busy = Counter(in_flight.values())
    room = limit - len(in_flight)
    start: list[str] = []
    wake_at: float | None = None
    for due in pending:
        if due.delivery_id in in_flight:
            continue
        if due.due_at > now:
            wake_at = due.due_at if wake_at is None else min(wake_at, due.due_at)
            continue
        if room > 0 and busy[due.url] < per_url:
            start.append(due.delivery_id)
            busy[due.url] += 1
            room -= 1
    return Selection(tuple(start), wake_at)
