"""Refresh tokens in SQLite: stored as SHA-256 digests, grouped in families, rotated once.

The rows are also the record of revoked families: a family's revocation lasts as long as its
latest `expires_at`, the bound the access tokens issued in it never outlive.
"""

from __future__ import annotations

import enum
import hashlib
import sqlite3
from dataclasses import dataclass

from .store import Store

PRUNE_INTERVAL = 300.0


def token_digest(token: str) -> str:
    """Return the hex SHA-256 of a refresh token: the only form of it that is stored."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class RefreshRecord:
    """One stored refresh token (without the token itself)."""

    family: str
    tenant: str
    extension: str
    credential: str
    issued_at: float
    expires_at: float
    rotated_at: float | None
    revoked_at: float | None


@dataclass(frozen=True, slots=True)
class NewRefreshToken:
    """A refresh token about to be stored: its digest, owner and lifetime."""

    digest: str
    family: str
    tenant: str
    extension: str
    credential: str
    issued_at: float
    expires_at: float


class RotateOutcome(enum.Enum):
    """What presenting a refresh token led to."""

    ROTATED = "rotated"        # valid: marked rotated, its successor stored
    UNKNOWN = "unknown"        # no such token (never issued, or pruned)
    EXPIRED = "expired"
    REVOKED = "revoked"        # its family was revoked (logout, reuse, user change)
    REUSED = "reused"          # already rotated: the whole family is now revoked


@dataclass(frozen=True, slots=True)
class RotateResult:
    """The outcome of a rotation and the presented token's record, when there was one.

    For REUSED, family_expires_at is when the now revoked family's last token expires.
    """

    outcome: RotateOutcome
    record: RefreshRecord | None = None
    family_expires_at: float | None = None


def _record(row: sqlite3.Row) -> RefreshRecord:
    return RefreshRecord(family=row["family"], tenant=row["tenant"], extension=row["extension"],
                         credential=row["credential"], issued_at=row["issued_at"],
                         expires_at=row["expires_at"], rotated_at=row["rotated_at"],
                         revoked_at=row["revoked_at"])


def _insert(conn: sqlite3.Connection, new: NewRefreshToken) -> None:
    conn.execute(
        "INSERT INTO refresh_tokens (token_hash, family, tenant, extension, credential,"
        " issued_at, expires_at) VALUES (?,?,?,?,?,?,?)",
        (new.digest, new.family, new.tenant, new.extension, new.credential, new.issued_at,
         new.expires_at))


def _revoke(conn: sqlite3.Connection, family: str, now: float) -> float | None:
    """Revoke a family; return its latest expiry (None when none of its rows is left)."""
    conn.execute(
        "UPDATE refresh_tokens SET revoked_at = ? WHERE family = ? AND revoked_at IS NULL",
        (now, family))
    return conn.execute("SELECT MAX(expires_at) FROM refresh_tokens WHERE family = ?",
                        (family,)).fetchone()[0]


class RefreshTokenStore:
    """Refresh-token queries on the daemon's Store; each call is one transaction."""

    def __init__(self, store: Store, *, prune_interval: float = PRUNE_INTERVAL) -> None:
        self._store = store
        self._prune_interval = prune_interval
        self._next_prune = float("-inf")

    async def add(self, new: NewRefreshToken, *, prune_before: float | None = None) -> None:
        """Store a new token (first of a family); drop long-expired rows now and then."""
        prune = self._prune_due(new.issued_at, prune_before)

        def _add(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute("BEGIN")
                if prune is not None:
                    conn.execute("DELETE FROM refresh_tokens WHERE expires_at < ?", (prune,))
                _insert(conn, new)

        await self._store.run(_add)

    async def rotate(self, digest: str, successor_digest: str, now: float,
                     expires_at: float) -> RotateResult:
        """Exchange a token for its successor; a token presented twice revokes its family."""
        def _rotate(conn: sqlite3.Connection) -> RotateResult:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                row = conn.execute("SELECT * FROM refresh_tokens WHERE token_hash = ?",
                                   (digest,)).fetchone()
                if row is None:
                    return RotateResult(RotateOutcome.UNKNOWN)
                record = _record(row)
                if record.revoked_at is not None:
                    return RotateResult(RotateOutcome.REVOKED, record)
                if record.rotated_at is not None:
                    until = _revoke(conn, record.family, now)
                    return RotateResult(RotateOutcome.REUSED, record, until)
                if record.expires_at <= now:
                    return RotateResult(RotateOutcome.EXPIRED, record)
                conn.execute("UPDATE refresh_tokens SET rotated_at = ? WHERE token_hash = ?",
                             (now, digest))
                _insert(conn, NewRefreshToken(
                    digest=successor_digest, family=record.family, tenant=record.tenant,
                    extension=record.extension, credential=record.credential, issued_at=now,
                    expires_at=expires_at))
                return RotateResult(RotateOutcome.ROTATED, record)

        return await self._store.run(_rotate)

    async def lookup(self, digest: str) -> RefreshRecord | None:
        """Return the record of a token digest, if stored."""
        def _lookup(conn: sqlite3.Connection) -> RefreshRecord | None:
            row = conn.execute("SELECT * FROM refresh_tokens WHERE token_hash = ?",
                               (digest,)).fetchone()
            return None if row is None else _record(row)

        return await self._store.run(_lookup)

    async def revoke_family(self, family: str, now: float) -> float | None:
        """Revoke every token of a family; return when its last one expires (None: no rows)."""
        def _revoke_family(conn: sqlite3.Connection) -> float | None:
            with conn:
                conn.execute("BEGIN")
                return _revoke(conn, family, now)

        return await self._store.run(_revoke_family)

    async def revoked_families(self, expiring_after: float) -> dict[str, float]:
        """Return each revoked family whose last token expires at or after a time, and when."""
        def _families(conn: sqlite3.Connection) -> dict[str, float]:
            rows = conn.execute(
                "SELECT family, MAX(expires_at) AS until FROM refresh_tokens"
                " WHERE revoked_at IS NOT NULL GROUP BY family HAVING until >= ?",
                (expiring_after,)).fetchall()
            return {row["family"]: row["until"] for row in rows}

        return await self._store.run(_families)

    def _prune_due(self, now: float, prune_before: float | None) -> float | None:
        if prune_before is None or now < self._next_prune:
            return None
        self._next_prune = now + self._prune_interval
        return prune_before
