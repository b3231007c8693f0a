"""A small reorder buffer by RTP sequence number (16-bit, wrapping); sans-IO, time passed in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

SEQ_MOD = 1 << 16
# RFC 3550 appendix A.1: a jump this far ahead, or this far behind, is a restarted sender
# (accepted once a second packet confirms it), not loss or reordering.
MAX_DROPOUT = 3000
MAX_MISORDER = 100
MAX_HELD = 64


def seq_delta(seq: int, reference: int) -> int:
    """Signed distance from reference to seq on the 16-bit sequence circle."""
    return ((seq - reference + SEQ_MOD // 2) % SEQ_MOD) - SEQ_MOD // 2


@dataclass(slots=True)
class JitterStats:
    """What the buffer did: released, skipped as lost, dropped as duplicate or late."""

    released: int = 0
    lost: int = 0
    duplicates: int = 0
    late: int = 0
    reordered: int = 0
    restarts: int = 0


@dataclass
class JitterBuffer(Generic[T]):
    """Releases items in sequence order, each once.

    An in-order packet is released at once (no added latency). When one is missing, later
    ones are held until the gap is filled or the oldest held one has waited `delay` seconds;
    then the missing packets count as lost and playout continues after them.
    """

    delay: float = 0.06
    stats: JitterStats = field(default_factory=JitterStats)
    _next: int | None = None  # extended sequence number released next
    _held: dict[int, tuple[T, float]] = field(default_factory=dict)
    _probation: tuple[int, T, float] | None = None  # a far jump awaiting confirmation

    def push(self, sequence: int, item: T, now: float) -> list[T]:
        """Take a packet; return the items now releasable, in order."""
        if self._next is None:
            self._next = sequence
        if not self._held and self._probation is None and sequence == self._next % SEQ_MOD:
            self._next += 1  # the usual case: the packet expected next, nothing held
            self.stats.released += 1
            return [item]
        delta = seq_delta(sequence, self._next % SEQ_MOD)
        if delta > MAX_DROPOUT or delta < -MAX_MISORDER:
            return self._jumped(sequence, item, now)
        if self._probation is not None:
            self._probation = None
            self.stats.late += 1
        if delta < 0:
            self.stats.late += 1  # already released, or given up on as lost
            return []
        ext = self._next + delta
        if ext in self._held:
            self.stats.duplicates += 1
            return []
        if delta == 0 and self._held:
            self.stats.reordered += 1
        self._held[ext] = (item, now)
        out = self._release_in_order()
        if len(self._held) > MAX_HELD:
            out += self._skip_gap()
        return out

    def _jumped(self, sequence: int, item: T, now: float) -> list[T]:
        """A far jump: kept aside, and followed only when the next packet continues from it."""
        held = self._probation
        if held is not None and sequence == (held[0] + 1) % SEQ_MOD:
            out = self.flush()
            self.stats.restarts += 1
            self._next = held[0]
            self._probation = None
            self._held[held[0]] = (held[1], held[2])
            self._held[held[0] + 1] = (item, now)
            return out + self._release_in_order()
        if held is not None:
            self.stats.late += 1
        self._probation = (sequence, item, now)
        return []

    def _release_in_order(self) -> list[T]:
        out: list[T] = []
        assert self._next is not None
        while self._next in self._held:
            out.append(self._held.pop(self._next)[0])
            self._next += 1
        self.stats.released += len(out)
        return out

    def _skip_gap(self) -> list[T]:
        """Give up on the missing packets before the oldest held one."""
        assert self._next is not None
        first = min(self._held)
        self.stats.lost += first - self._next
        self._next = first
        return self._release_in_order()

    def pop_due(self, now: float) -> list[T]:
        """Release held items whose gap has waited `delay` seconds."""
        out: list[T] = []
        while (deadline := self.next_deadline) is not None and deadline <= now:
            out += self._skip_gap()
        return out

    @property
    def idle(self) -> bool:
        """Nothing held: no timer needed."""
        return not self._held

    @property
    def next_deadline(self) -> float | None:
        """When the oldest held item stops waiting for the gap before it, or None."""
        if not self._held:
            return None
        return min(arrived for _, arrived in self._held.values()) + self.delay

    def flush(self) -> list[T]:
        """Release everything held, in order, skipping gaps."""
        out: list[T] = []
        while self._held:
            out += self._skip_gap()
        return out

    def reset(self) -> None:
        """Start over for a new stream (the next packet sets the sequence)."""
        self._next = None
        self._held.clear()
        self._probation = None
