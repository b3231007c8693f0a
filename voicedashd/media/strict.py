"""Strict RTP, as Asterisk's `strictrtp`: which source a call's RTP is taken from and where ours
goes. Sans-IO: fed each packet's source, SSRC, sequence number and the time."""

from __future__ import annotations

import enum
from dataclasses import dataclass

Source = tuple[str, int]

# Sequential packets of one SSRC from one source before it is learnt (Asterisk's
# learning_min_sequential default).
PROBATION = 4
# The probation packets must take at least this long per step: a flood of sequential packets
# (faster than any real stream of 20 ms packets) is not learnt (Asterisk's learning_min_duration).
MIN_STEP = 0.009
DROP_LOG_INTERVAL = 10.0


class Verdict(enum.Enum):
    """What to do with one inbound packet; the value of a drop names its reason."""

    ACCEPT = "accept"
    PROBATION = "probation"  # from a source being learnt: not passed on
    FOREIGN = "foreign_source"  # from a source other than the locked one


@dataclass(slots=True)
class _Candidate:
    source: Source
    ssrc: int
    sequence: int
    count: int
    since: float


class StrictRtp:
    """Learns the peer's RTP source from its first packets, then takes packets from it only.

    Before anything is learnt we send to the SDP address only if it is allowed (`sdp_allowed`:
    sip.trusted or media.allowed_peers), else nowhere. A source is learnt from `probation`
    packets of one SSRC with consecutive sequence numbers, or, while nothing is learnt, at once
    if it is the SDP address itself (as Asterisk prefers the negotiated target). Once learnt,
    the source is locked: we send there, and packets from anywhere else are dropped. A changed
    SDP address (re-INVITE) starts learning afresh; a locked source silent for `relearn_after`
    may be replaced by a new one passing probation.
    """

    def __init__(self, sdp: Source, *, sdp_allowed: bool, relearn_after: float,
                 probation: int = PROBATION) -> None:
        if probation < 1:
            raise ValueError("probation is at least one packet")
        self.sdp = sdp
        self.sdp_allowed = sdp_allowed
        self.relearn_after = relearn_after
        self.probation = probation
        self.learnt: Source | None = None
        self._heard = 0.0
        self._candidate: _Candidate | None = None

    @property
    def target(self) -> Source | None:
        """Where our RTP goes now: the learnt source, else the SDP address if allowed."""
        if self.learnt is not None:
            return self.learnt
        return self.sdp if self.sdp_allowed else None

    def sdp_changed(self, sdp: Source, *, sdp_allowed: bool) -> None:
        """A new SDP answer (re-INVITE): a changed address or port is learnt afresh."""
        self.sdp_allowed = sdp_allowed
        if sdp != self.sdp:
            self.sdp = sdp
            self.learnt = None
            self._candidate = None

    def receive(self, source: Source, ssrc: int, sequence: int, now: float) -> Verdict:
        """Judge one well-formed RTP packet; ACCEPT passes it on (and may have learnt source)."""
        if source == self.learnt:
            self._heard = now
            return Verdict.ACCEPT
        if self.learnt is not None and now - self._heard < self.relearn_after:
            return Verdict.FOREIGN
        if source == self.sdp and self.learnt is None:
            return self._lock(source, now)
        candidate = self._candidate
        if candidate is None or (candidate.source, candidate.ssrc) != (source, ssrc):
            # A new contender (or the current one's new SSRC) starts its probation; competing
            # streams keep resetting each other, so none wins while both send.
            self._candidate = candidate = _Candidate(source, ssrc, sequence, 1, now)
        elif sequence == (candidate.sequence + 1) & 0xFFFF:
            candidate.count += 1
            candidate.sequence = sequence
            if candidate.count >= self.probation and (
                    now - candidate.since < (candidate.count - 1) * MIN_STEP):
                candidate.count, candidate.since = 1, now  # too fast for a real stream
        else:
            candidate.count, candidate.sequence, candidate.since = 1, sequence, now
        if candidate.count >= self.probation:
            return self._lock(source, now)
        return Verdict.PROBATION

    def _lock(self, source: Source, now: float) -> Verdict:
        self.learnt = source
        self._heard = now
        self._candidate = None
        return Verdict.ACCEPT


@dataclass(slots=True)
class DropLog:
    """When to log dropped packets: the first at once, then at most one line per interval with
    the count since the last (a flood never becomes a line per packet)."""

    interval: float = DROP_LOG_INTERVAL
    pending: int = 0
    _next: float = float("-inf")

    def dropped(self, now: float) -> int:
        """Count one drop; return how many to report now (0: not yet)."""
        self.pending += 1
        if now < self._next:
            return 0
        count, self.pending, self._next = self.pending, 0, now + self.interval
        return count
