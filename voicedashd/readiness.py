"""Readiness of the daemon's parts, as reported by /readyz and the systemd notifier."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

CHECKS = ("sip", "api", "hub", "store")


@dataclass
class Readiness:
    """Which listeners are bound, plus live checks (the store answers queries)."""

    bound: set[str] = field(default_factory=set)
    probes: dict[str, Callable[[], Awaitable[bool]]] = field(default_factory=dict)

    def mark_up(self, part: str) -> None:
        """Record that a part is serving."""
        self.bound.add(part)

    def mark_down(self, part: str) -> None:
        """Record that a part stopped serving."""
        self.bound.discard(part)

    async def report(self) -> dict[str, str]:
        """Return "pass" or "fail" for every check."""
        result = {}
        for part in CHECKS:
            ok = part in self.bound
            if ok and part in self.probes:
                ok = await self.probes[part]()
            result[part] = "pass" if ok else "fail"
        return result
