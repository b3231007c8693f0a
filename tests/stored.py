"""Read a test daemon's SQLite store directly, once the daemon has written (or stopped)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any


def stored_events(database: Path, name: str | None = None,
                  call_id: str | None = None) -> list[dict[str, Any]]:
    """Stored events as flat dicts (call_id, seq, event, ts and the data fields), in order."""
    where, params = [], []
    if name is not None:
        where.append("name = ?")
        params.append(name)
    if call_id is not None:
        where.append("call_id = ?")
        params.append(call_id)
    sql = "SELECT call_id, seq, name, ts, data FROM events"
    if where:
        sql += " WHERE " + " AND ".join(where)
    with contextlib.closing(sqlite3.connect(database)) as conn:
        rows = conn.execute(sql + " ORDER BY call_id, seq", params).fetchall()
    return [{"call_id": c, "seq": s, "event": n, "ts": t, **json.loads(d)}
            for c, s, n, t, d in rows]
