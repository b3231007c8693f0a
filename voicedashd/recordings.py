"""Kept call recordings: where a stored name lies on disk, and the retention sweep."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import structlog
import trio

from .config import Config
from .events import utc_now
from .store import Store

log = structlog.get_logger(__name__)

SWEEP_INTERVAL = 3600.0  # seconds between passes; a pass that hit its limit comes back sooner
BUSY_INTERVAL = 60.0
MAX_PER_PASS = 200  # recordings deleted per pass: one pass never holds the store for long
ORPHANED_TENANT_DAYS = 30  # a tenant removed from the config: its recordings are kept this long
# A partial file (a process killed mid-call) this old belongs to no call still running.
STALE_PARTIAL = timedelta(days=1)
PARTIAL_GLOB = "*/*.wav.part"


class RecordingMissing(Exception):
    """A stored recording name that does not name a file inside [recordings] dir."""


def recording_path(base: Path, name: str) -> Path:
    """The file a stored recording name stands for, never outside base."""
    root = base.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root) or path == root:
        raise RecordingMissing(f"{name!r} is not a file under {base}")
    return path


@dataclass(frozen=True, slots=True)
class StoredRecording:
    """A call's recording as the store lists it."""

    call_id: str
    tenant: str
    file: str
    ended_at: datetime


def retention_cutoffs(retention_days: Mapping[str, int], now: datetime) -> dict[str, datetime]:
    """Per tenant, the end time before which its calls' recordings are due for deletion."""
    return {tenant: now - timedelta(days=days) for tenant, days in retention_days.items()}


def expired(recordings: Sequence[StoredRecording], retention_days: Mapping[str, int],
            now: datetime, *, limit: int = MAX_PER_PASS) -> list[StoredRecording]:
    """The recordings past their tenant's retention (else ORPHANED_TENANT_DAYS), oldest
    first, at most limit."""
    cutoffs = retention_cutoffs(retention_days, now)
    orphaned = now - timedelta(days=ORPHANED_TENANT_DAYS)
    due = [r for r in recordings if r.ended_at < cutoffs.get(r.tenant, orphaned)]
    return sorted(due, key=lambda r: r.ended_at)[:limit]


def _retention(config: Config) -> dict[str, int]:
    return {tenant.name: tenant.retention_days for tenant in config.tenants}


def _candidates(conn: sqlite3.Connection, retention_days: Mapping[str, int], now: datetime,
                limit: int) -> list[StoredRecording]:
    """Per tenant (and for tenants no longer configured) its oldest recordings past retention:
    a long-kept tenant's many recordings never hold up another's."""
    cutoffs = retention_cutoffs(retention_days, now)
    orphaned = now - timedelta(days=ORPHANED_TENANT_DAYS)
    select = ("SELECT call_id, tenant, recording, ended_at FROM calls WHERE recording IS NOT"
              " NULL AND ended_at IS NOT NULL AND ended_at < ? {} ORDER BY ended_at LIMIT ?")
    rows = []
    for tenant, cutoff in cutoffs.items():
        rows += conn.execute(select.format("AND tenant = ?"),
                             (cutoff.isoformat(), tenant, limit)).fetchall()
    others = ",".join("?" * len(cutoffs))
    rows += conn.execute(select.format(f"AND tenant NOT IN ({others})"),
                         (orphaned.isoformat(), *cutoffs, limit)).fetchall()
    return [StoredRecording(r["call_id"], r["tenant"], r["recording"],
                            datetime.fromisoformat(r["ended_at"])) for r in rows]


def _forget(conn: sqlite3.Connection, call_id: str, name: str) -> None:
    with conn:
        conn.execute("UPDATE calls SET recording = NULL, recording_duration = NULL,"
                     " recording_bytes = NULL WHERE call_id = ? AND recording = ?",
                     (call_id, name))


def _delete(base: Path, name: str) -> None:
    """Remove a recording's file; one already gone (or never inside base) is no error."""
    with contextlib.suppress(RecordingMissing, FileNotFoundError):
        recording_path(base, name).unlink()


def remove_stale_partials(base: Path, now: datetime, *, limit: int = MAX_PER_PASS) -> int:
    """Remove partial recordings (a killed process's) older than STALE_PARTIAL; how many."""
    removed = 0
    cutoff = (now - STALE_PARTIAL).timestamp()
    for path in base.glob(PARTIAL_GLOB) if base.is_dir() else ():
        if removed >= limit:
            break
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
    return removed


async def sweep(store: Store, config: Config, now: datetime, *,
                limit: int = MAX_PER_PASS) -> int:
    """Delete the recordings past their tenant's retention_days and clear their rows, and
    stale partial files; how many recordings."""
    retention = _retention(config)
    candidates = await store.run(lambda conn: _candidates(conn, retention, now, limit))
    base = config.recordings_dir
    removed = 0
    for recording in expired(candidates, retention, now, limit=limit):
        try:
            await trio.to_thread.run_sync(_delete, base, recording.file)
        except OSError as exc:  # kept in the store: the next pass tries again
            log.warning("call_recording_delete_failed", call_id=recording.call_id,
                        error=str(exc))
            continue
        await store.run(lambda conn, r=recording: _forget(conn, r.call_id, r.file))
        removed += 1
        log.info("call_recording_expired", call_id=recording.call_id, tenant=recording.tenant,
                 ended_at=recording.ended_at.isoformat())
    try:
        partials = await trio.to_thread.run_sync(remove_stale_partials, base, now)
    except OSError as exc:
        log.warning("call_recording_partials_failed", error=str(exc))
    else:
        if partials:
            log.warning("call_recording_partials_removed", count=partials)
    return removed


async def serve_retention(store: Store, config: Callable[[], Config], *,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                          ) -> None:
    """Sweep expired recordings at start and then every SWEEP_INTERVAL until cancelled."""
    task_status.started()
    while True:
        started = trio.current_time()
        limit = MAX_PER_PASS
        try:
            removed = await sweep(store, config(), utc_now(), limit=limit)
        except sqlite3.Error as exc:  # the store's trouble shows in /readyz; try next pass
            log.warning("call_recordings_sweep_failed", error=str(exc))
            removed = 0
        if removed:
            log.info("call_recordings_swept", removed=removed)
        await trio.sleep_until(started + (BUSY_INTERVAL if removed >= limit else SWEEP_INTERVAL))
