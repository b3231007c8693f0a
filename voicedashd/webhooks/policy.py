"""When a failed delivery is tried again: capped exponential back-off with jitter, for 24 h."""

from __future__ import annotations

from dataclasses import dataclass

RETRY_CAP = 3600.0          # no wait between two tries is longer than an hour
RETRY_FOR = 24 * 3600.0     # no try starts later than this after the event was stored
_MAX_DOUBLINGS = 32         # far past any cap; keeps 2**n a small float


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Back-off after the nth failed try: base·2^(n-1), capped, spread by jitter over its upper
    half so receivers that fail together are not retried together."""

    base: float
    cap: float = RETRY_CAP
    retry_for: float = RETRY_FOR

    def delay(self, failures: int, jitter: float) -> float:
        """Seconds to wait after the failures-th failed try; jitter is a draw from [0, 1)."""
        ceiling = min(self.cap, self.base * 2.0 ** min(max(failures - 1, 0), _MAX_DOUBLINGS))
        return ceiling * (0.5 + 0.5 * jitter)

    def next_attempt(self, created_at: float, failures: int, now: float,
                     jitter: float) -> float | None:
        """When to try again after the failures-th failed try at now; None: give up."""
        at = now + self.delay(failures, jitter)
        return at if at <= created_at + self.retry_for else None
