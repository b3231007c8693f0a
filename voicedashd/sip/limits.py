"""What untrusted SIP sources may cost: a token bucket per source, a transaction cap (sans-IO).

A source outside `sip.trusted` spends one token per message; the bucket refills at
`rate` per second up to `burst`. A message without a token, or arriving while the untrusted
sources' live transactions are at the cap, is refused: the first such message of a window is
answered 403 (so a misconfigured peer learns why), the rest are dropped unparsed. The table of
sources is bounded: the source seen least recently makes room for a new one.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

MAX_SOURCES = 4096
REFUSAL_WINDOW = 30.0  # at most one 403 per source in this many seconds
# Refusals across all sources: spoofed sources rotated faster than the table forgets them must
# not turn the 403 into a reflector.
REFUSALS_PER_SECOND = 20.0


@dataclass(frozen=True, slots=True)
class SourceLimits:
    """The limits in force (from [sip]): per-source rate and burst, the transaction cap."""

    rate: float
    burst: int
    max_transactions: int
    refusal_window: float = REFUSAL_WINDOW


class Verdict(enum.Enum):
    """What to do with one message from an untrusted source."""

    ADMIT = "admit"
    REFUSE = "refuse"  # answer 403 (statelessly), the first of its window
    DROP = "drop"  # say nothing


class Reason(enum.StrEnum):
    """Why a message was not admitted (a metrics label)."""

    RATE = "rate"
    TRANSACTIONS = "transactions"


@dataclass(frozen=True, slots=True)
class Decision:
    """A verdict, and for a refusal or a drop, why."""

    verdict: Verdict
    reason: Reason | None = None


ADMITTED = Decision(Verdict.ADMIT)


class TokenBucket:
    """Tokens that refill at `rate` per second up to `burst`; time is passed in."""

    __slots__ = ("tokens", "updated")

    def __init__(self, burst: float, now: float) -> None:
        self.tokens = float(burst)
        self.updated = now

    def take(self, rate: float, burst: float, now: float) -> bool:
        """Spend one token if there is one."""
        elapsed = now - self.updated
        if elapsed > 0:
            self.tokens = min(float(burst), self.tokens + elapsed * rate)
            self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class _Source:
    __slots__ = ("bucket", "refused_at")

    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket = bucket
        self.refused_at = -float("inf")


class SourceLimiter:
    """Admits, refuses or drops messages of untrusted sources; counts their transactions."""

    def __init__(self, max_sources: int = MAX_SOURCES) -> None:
        self.max_sources = max_sources
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self._transactions: set[Hashable] = set()
        self._refusals: TokenBucket | None = None

    @property
    def sources(self) -> int:
        """How many sources the table holds."""
        return len(self._sources)

    @property
    def transactions(self) -> int:
        """Live server transactions opened by untrusted sources."""
        return len(self._transactions)

    def check(self, host: str, now: float, limits: SourceLimits) -> Decision:
        """Decide on one message from an untrusted host (call before parsing it)."""
        source = self._source(host, now, limits)
        if not source.bucket.take(limits.rate, limits.burst, now):
            return self._refuse(source, now, limits, Reason.RATE)
        if len(self._transactions) >= limits.max_transactions:
            return self._refuse(source, now, limits, Reason.TRANSACTIONS)
        return ADMITTED

    def opened(self, key: Hashable) -> None:
        """An admitted untrusted message opened a server transaction."""
        self._transactions.add(key)

    def closed(self, key: Hashable) -> None:
        """A server transaction ended (one not counted is ignored)."""
        self._transactions.discard(key)

    def _source(self, host: str, now: float, limits: SourceLimits) -> _Source:
        sources = self._sources
        source = sources.get(host)
        if source is not None:
            sources.move_to_end(host)
            return source
        if len(sources) >= self.max_sources:
            sources.popitem(last=False)
        source = sources[host] = _Source(TokenBucket(limits.burst, now))
        return source

    def _refuse(self, source: _Source, now: float, limits: SourceLimits,
                reason: Reason) -> Decision:
        if now - source.refused_at < limits.refusal_window:
            return Decision(Verdict.DROP, reason)
        if self._refusals is None:
            self._refusals = TokenBucket(REFUSALS_PER_SECOND, now)
        if not self._refusals.take(REFUSALS_PER_SECOND, REFUSALS_PER_SECOND, now):
            return Decision(Verdict.DROP, reason)
        source.refused_at = now
        return Decision(Verdict.REFUSE, reason)
