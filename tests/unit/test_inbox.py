"""Unread and handled: the state rules, and the marks, counts and history filter on SQLite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from tests.unit.test_callstore import ADMIN, ALICE, BOB, GUS, Viewer, info
from voicedashd import callstore, inbox
from voicedashd.bus import EventBus
from voicedashd.inbox import InboxCounts, InboxState, Mark, Marks
from voicedashd.metrics import Metrics
from voicedashd.store import Store, open_store

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)
NEW, OPEN, HANDLED = InboxState.NEW, InboxState.OPEN, InboxState.HANDLED


def test_a_call_is_new_until_opened_and_open_until_handled() -> None:
    marks = Marks()
    assert marks.state is NEW
    opened = marks.apply(Mark.OPENED, T0)
    assert (opened.state, opened.opened_at, opened.handled_at) == (OPEN, T0, None)
    handled = opened.apply(Mark.HANDLED, T1)
    assert (handled.state, handled.opened_at, handled.handled_at) == (HANDLED, T0, T1)
    # Opening a handled call again does not reopen it; handling again keeps the first time.
    assert handled.apply(Mark.OPENED, T1 + timedelta(1)) == handled
    assert handled.apply(Mark.HANDLED, T1 + timedelta(1)) == handled
    reopened = handled.apply(Mark.UNHANDLED, T1 + timedelta(1))
    assert (reopened.state, reopened.opened_at, reopened.handled_at) == (OPEN, T0, None)


def test_handling_an_unopened_call_also_opens_it() -> None:
    handled = Marks().apply(Mark.HANDLED, T1)
    assert (handled.state, handled.opened_at, handled.handled_at) == (HANDLED, T1, T1)
    assert Marks().apply(Mark.UNHANDLED, T1).state is OPEN


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(tmp_path / "store.sqlite3", Metrics()) as opened:
        yield opened


async def _store_calls(store: Store) -> None:
    """Five calls to 1001, one to 1002 (acme), one to 1001 of globex; c-0 is the oldest."""
    bus = EventBus(store, Metrics())
    for n in range(5):
        bus.register(info(f"c-{n}", "1001", T0 + timedelta(seconds=n)))
    bus.register(info("b-0", "1002", T0))
    bus.register(info("g-0", "1001", T0, tenant="globex"))
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_writer)
        with trio.fail_after(5):
            await store.flush()
        nursery.cancel_scope.cancel()


async def _history(store: Store, viewer: Viewer, state: InboxState | None,
                   limit: int = 2) -> list[str]:
    """Every page of viewer's history in state, walked with next_before."""
    ids: list[str] = []
    before = None
    while True:
        page = await callstore.call_history(store, viewer, before=before, limit=limit,
                                            state=state)
        ids += [call.info.call_id for call in page.calls]
        if page.next_before is None:
            return ids
        before = page.next_before


async def test_marks_counts_and_the_history_filter_agree(store: Store) -> None:
    await _store_calls(store)
    assert await inbox.counts(store, ALICE) == InboxCounts(new=5, open=0, handled=0)
    assert await inbox.mark(store, ALICE, "c-1", Mark.OPENED, T1) is OPEN
    assert await inbox.mark(store, ALICE, "c-1", Mark.OPENED, T1) is OPEN   # idempotent
    assert await inbox.mark(store, ALICE, "c-3", Mark.HANDLED, T1) is HANDLED
    assert await inbox.mark(store, ALICE, "c-3", Mark.HANDLED, T1) is HANDLED
    assert await inbox.mark(store, ALICE, "c-4", Mark.OPENED, T1) is OPEN

    assert await inbox.counts(store, ALICE) == InboxCounts(new=2, open=2, handled=1)
    assert await _history(store, ALICE, NEW) == ["c-2", "c-0"]
    assert await _history(store, ALICE, OPEN) == ["c-4", "c-1"]
    assert await _history(store, ALICE, HANDLED) == ["c-3"]
    assert await _history(store, ALICE, None) == ["c-4", "c-3", "c-2", "c-1", "c-0"]
    for limit in (1, 3, 10):
        assert await _history(store, ALICE, NEW, limit) == ["c-2", "c-0"]
    assert await inbox.states(store, ALICE, ["c-0", "c-1", "c-3", "nope"]) == {
        "c-0": NEW, "c-1": OPEN, "c-3": HANDLED, "nope": NEW}

    assert await inbox.mark(store, ALICE, "c-3", Mark.UNHANDLED, T1) is OPEN
    assert await inbox.counts(store, ALICE) == InboxCounts(new=2, open=3, handled=0)
    assert await _history(store, ALICE, HANDLED) == []


async def test_marks_are_per_user_and_admins_keep_their_own(store: Store) -> None:
    await _store_calls(store)
    assert await inbox.mark(store, ADMIN, "c-0", Mark.HANDLED, T1) is HANDLED
    assert await inbox.mark(store, ADMIN, "b-0", Mark.OPENED, T1) is OPEN
    # The admin counts every acme call (six), the owner only theirs, untouched by the admin.
    assert await inbox.counts(store, ADMIN) == InboxCounts(new=4, open=1, handled=1)
    assert await inbox.counts(store, ALICE) == InboxCounts(new=5, open=0, handled=0)
    assert await inbox.counts(store, BOB) == InboxCounts(new=1, open=0, handled=0)
    assert await inbox.states(store, ALICE, ["c-0"]) == {"c-0": NEW}
    assert await _history(store, ADMIN, HANDLED) == ["c-0"]
    assert await _history(store, ALICE, HANDLED) == []
    # The same extension in another tenant is another user.
    assert await inbox.mark(store, GUS, "g-0", Mark.HANDLED, T1) is HANDLED
    assert await inbox.counts(store, GUS) == InboxCounts(new=0, open=0, handled=1)
    assert await inbox.counts(store, ALICE) == InboxCounts(new=5, open=0, handled=0)


async def test_marks_survive_reopening_the_store(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    async with open_store(path, Metrics()) as first:
        await _store_calls(first)
        await inbox.mark(first, ALICE, "c-2", Mark.HANDLED, T1)
    async with open_store(path, Metrics()) as again:
        assert await inbox.states(again, ALICE, ["c-2"]) == {"c-2": HANDLED}
        assert await inbox.counts(again, ALICE) == InboxCounts(new=4, open=0, handled=1)


async def test_many_calls_are_read_in_batches(store: Store) -> None:
    ids = [f"x-{n}" for n in range(1200)]
    for call_id in ids[::100]:
        await inbox.mark(store, ALICE, call_id, Mark.OPENED, T1)
    found = await inbox.states(store, ALICE, ids)
    assert [call_id for call_id, state in found.items() if state is OPEN] == ids[::100]
    assert len(found) == len(ids)
