"""SIP transaction state machines (RFC 3261 §17, RFC 6026); sans-IO, time is passed in.

Each transaction is a plain object fed inputs (`receive`, `respond`, `timer_fired`, each with
the current time) that returns a list of actions for its runner to perform. It never touches a
socket or a clock: the runner sleeps until `next_deadline` and then calls `timer_fired`.

Server transactions emit nothing on creation: the TU (or the transport on its behalf) sends
``100 Trying`` itself through `respond()` as soon as it has created the transaction.

Matching (§17.1.3, §17.2.3) is done by the caller with `server_key`, `client_key`,
`cancel_target_key` and `invite_ack_key`; the ACK for a 2xx carries a new branch, so it is
paired with its INVITE by `invite_ack_key` rather than `server_key`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal, TypeAlias

from voicedashd.sip.fields import MAGIC_COOKIE, InvalidHeader, cseq_of, tag_of, top_via
from voicedashd.sip.message import Headers, Request, Response


@dataclass(frozen=True, slots=True)
class Timers:
    """RFC 3261 §17.1.1.1 timer base values, in seconds."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0

    @property
    def transaction_timeout(self) -> float:
        """Timers B, F, H, J and L: 64*T1."""
        return 64 * self.t1


DEFAULT_TIMERS = Timers()


class State(enum.Enum):
    """Transaction states of RFC 3261 §17 plus RFC 6026's Accepted."""

    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    ACCEPTED = "accepted"
    TERMINATED = "terminated"


# --- actions -------------------------------------------------------------------------------

TimeoutKind = Literal["ack", "no_response"]


@dataclass(frozen=True, slots=True)
class Send:
    """Hand this message to the transport."""

    message: Request | Response


@dataclass(frozen=True, slots=True)
class PassToCore:
    """Deliver this request (the ACK for a 2xx) to the TU / dialog layer."""

    request: Request


@dataclass(frozen=True, slots=True)
class Deliver:
    """Deliver this response (provisional or final) to the TU that started the client side."""

    response: Response


@dataclass(frozen=True, slots=True)
class Timeout:
    """A transaction timer expired: "ack" (timer H/L, no ACK) or "no_response" (timer F)."""

    kind: TimeoutKind


@dataclass(frozen=True, slots=True)
class Terminated:
    """The transaction has ended; forget its key."""


Action: TypeAlias = Send | PassToCore | Deliver | Timeout | Terminated


# --- timers --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Backoff:
    """A retransmission timer whose interval doubles up to a cap (timers E and G)."""

    at: float
    interval: float
    cap: float

    def fired(self, now: float, *, interval: float | None = None) -> None:
        """Re-arm after firing: double the interval (or use the one given), capped."""
        self.interval = min(self.interval * 2 if interval is None else interval, self.cap)
        self.at = now + self.interval


def _due(deadline: float | None, now: float) -> bool:
    return deadline is not None and now >= deadline


def _earliest(*deadlines: float | None) -> float | None:
    present = [d for d in deadlines if d is not None]
    return min(present) if present else None


# --- server transactions -------------------------------------------------------------------


class _Machine:
    """What every transaction shares: its state and up to three running timers."""

    _state: State
    _retransmit: _Backoff | None = None
    _give_up_at: float | None = None
    _end_at: float | None = None

    @property
    def state(self) -> State:
        """The current state."""
        return self._state

    @property
    def terminated(self) -> bool:
        """Whether the transaction has ended."""
        return self._state is State.TERMINATED

    @property
    def next_deadline(self) -> float | None:
        """When `timer_fired` should next be called, or None if no timer is running."""
        return _earliest(
            self._retransmit.at if self._retransmit else None, self._give_up_at, self._end_at
        )


class InviteServerTransaction(_Machine):
    """RFC 3261 §17.2.1 state machine (with RFC 6026's Accepted state); no sockets, no sleeping.

    In Accepted it also does the UAS core's job of §13.3.1.4: it retransmits the 2xx (timer G
    schedule, unreliable transports only) until the ACK arrives, passes the first ACK to the
    core, and reports ``Timeout("ack")`` if none came within 64*T1 so the TU sends BYE.
    A retransmitted INVITE re-sends the last response, in Accepted too until the ACK arrived.
    """

    def __init__(
        self,
        request: Request,
        now: float,
        timers: Timers = DEFAULT_TIMERS,
        *,
        reliable: bool = False,
    ) -> None:
        self.request = request
        self.timers = timers
        self.reliable = reliable
        self.created_at = now
        self._state = State.PROCEEDING
        self._last_response: Response | None = None
        self._retransmit: _Backoff | None = None  # timer G (and the 2xx retransmission)
        self._give_up_at: float | None = None  # timer H (Completed) / timer L (Accepted)
        self._end_at: float | None = None  # timer I (Confirmed)
        self._acked = False

    @property
    def last_response(self) -> Response | None:
        """The most recent response the TU sent through this transaction."""
        return self._last_response

    def receive(self, request: Request, now: float) -> list[Action]:
        """Feed a request matched to this transaction: a retransmitted INVITE or an ACK."""
        if request.method == "ACK":
            return self._receive_ack(request, now)
        if self._last_response is None:
            return []
        if self._state is State.ACCEPTED and self._acked:
            return []
        if self._state in (State.PROCEEDING, State.COMPLETED, State.ACCEPTED):
            return [Send(self._last_response)]
        return []

    def _receive_ack(self, ack: Request, now: float) -> list[Action]:
        if self._state is State.ACCEPTED and not self._acked:
            self._acked = True
            self._retransmit = None
            return [PassToCore(ack)]
        if self._state is State.COMPLETED:
            self._state = State.CONFIRMED
            self._retransmit = None
            self._give_up_at = None
            if self.reliable:
                return self._terminate()
            self._end_at = now + self.timers.t4
        return []

    def respond(self, response: Response, now: float) -> list[Action]:
        """Send a response from the TU; responses the state no longer allows are discarded."""
        status = response.status
        if self._state is State.PROCEEDING:
            self._last_response = response
            if status < 200:
                return [Send(response)]
            self._give_up_at = now + self.timers.transaction_timeout
            self._state = State.ACCEPTED if status < 300 else State.COMPLETED
            if not self.reliable:
                t1 = self.timers.t1
                self._retransmit = _Backoff(at=now + t1, interval=t1, cap=self.timers.t2)
            return [Send(response)]
        if self._state is State.ACCEPTED and 200 <= status < 300:
            self._last_response = response
            return [Send(response)]
        return []

    def timer_fired(self, now: float) -> list[Action]:
        """Run whichever timers are due at `now`."""
        if _due(self._give_up_at, now):
            if self._state is State.ACCEPTED and self._acked:
                return self._terminate()
            return [Timeout("ack"), *self._terminate()]
        if _due(self._end_at, now):
            return self._terminate()
        if self._retransmit is not None and _due(self._retransmit.at, now):
            self._retransmit.fired(now)
            return [Send(self._last_response)] if self._last_response is not None else []
        return []

    def _terminate(self) -> list[Action]:
        self._state = State.TERMINATED
        self._retransmit = None
        self._give_up_at = None
        self._end_at = None
        return [Terminated()]


class NonInviteServerTransaction(_Machine):
    """RFC 3261 §17.2.2 state machine; no sockets, no sleeping."""

    def __init__(
        self,
        request: Request,
        now: float,
        timers: Timers = DEFAULT_TIMERS,
        *,
        reliable: bool = False,
    ) -> None:
        self.request = request
        self.timers = timers
        self.reliable = reliable
        self.created_at = now
        self._state = State.TRYING
        self._last_response: Response | None = None
        self._end_at: float | None = None  # timer J

    @property
    def last_response(self) -> Response | None:
        """The most recent response the TU sent through this transaction."""
        return self._last_response

    def receive(self, request: Request, now: float) -> list[Action]:
        """Feed a retransmission of the request: re-send the last response, if any."""
        if request.method == "ACK" or self._last_response is None:
            return []
        if self._state in (State.PROCEEDING, State.COMPLETED):
            return [Send(self._last_response)]
        return []

    def respond(self, response: Response, now: float) -> list[Action]:
        """Send a response from the TU; anything after the final response is discarded."""
        if self._state not in (State.TRYING, State.PROCEEDING):
            return []
        self._last_response = response
        if response.status < 200:
            self._state = State.PROCEEDING
            return [Send(response)]
        self._state = State.COMPLETED
        if self.reliable:
            return [Send(response), *self._terminate()]
        self._end_at = now + self.timers.transaction_timeout
        return [Send(response)]

    def timer_fired(self, now: float) -> list[Action]:
        """Run timer J if it is due at `now`."""
        if _due(self._end_at, now):
            return self._terminate()
        return []

    def _terminate(self) -> list[Action]:
        self._state = State.TERMINATED
        self._end_at = None
        return [Terminated()]


ServerTransaction: TypeAlias = InviteServerTransaction | NonInviteServerTransaction


# --- client transactions -------------------------------------------------------------------


class NonInviteClientTransaction(_Machine):
    """RFC 3261 §17.1.2 state machine for our own BYE/OPTIONS; no sockets, no sleeping.

    `start()` returns the first ``Send(request)``; every response is handed to the TU as
    ``Deliver`` (the final one exactly once), and timer F ends it with
    ``Timeout("no_response")``.
    """

    def __init__(
        self,
        request: Request,
        timers: Timers = DEFAULT_TIMERS,
        *,
        reliable: bool = False,
    ) -> None:
        self.request = request
        self.timers = timers
        self.reliable = reliable
        self._started = False
        self._state = State.TRYING
        self._retransmit: _Backoff | None = None  # timer E
        self._give_up_at: float | None = None  # timer F
        self._end_at: float | None = None  # timer K
        self._final: Response | None = None

    @property
    def final_response(self) -> Response | None:
        """The final response, once one has arrived."""
        return self._final

    def start(self, now: float) -> list[Action]:
        """Send the request and start timers E and F."""
        if self._started:
            raise RuntimeError("client transaction already started; call start() once")
        self._started = True
        self._give_up_at = now + self.timers.transaction_timeout
        if not self.reliable:
            t1 = self.timers.t1
            self._retransmit = _Backoff(at=now + t1, interval=t1, cap=self.timers.t2)
        return [Send(self.request)]

    def receive(self, response: Response, now: float) -> list[Action]:
        """Feed a response matched to this transaction."""
        if self._state not in (State.TRYING, State.PROCEEDING):
            return []
        if response.status < 200:
            self._state = State.PROCEEDING
            return [Deliver(response)]
        self._final = response
        self._state = State.COMPLETED
        self._retransmit = None
        self._give_up_at = None
        if self.reliable:
            return [Deliver(response), *self._terminate()]
        self._end_at = now + self.timers.t4
        return [Deliver(response)]

    def timer_fired(self, now: float) -> list[Action]:
        """Run whichever timers are due at `now`."""
        if _due(self._give_up_at, now):
            return [Timeout("no_response"), *self._terminate()]
        if _due(self._end_at, now):
            return self._terminate()
        if self._retransmit is not None and _due(self._retransmit.at, now):
            if self._state is State.PROCEEDING:
                self._retransmit.fired(now, interval=self.timers.t2)
            else:
                self._retransmit.fired(now)
            return [Send(self.request)]
        return []

    def _terminate(self) -> list[Action]:
        self._state = State.TERMINATED
        self._retransmit = None
        self._give_up_at = None
        self._end_at = None
        return [Terminated()]


# --- matching (§17.1.3, §17.2.3) -----------------------------------------------------------

TransactionKey: TypeAlias = tuple[str, ...]


class InvalidTransactionHeaders(ValueError):
    """The message lacks the Via/CSeq needed to match it to a transaction (answer 400)."""


def _top_via_branch_and_sent_by(headers: Headers) -> tuple[str | None, str]:
    """Return (branch or None, lower-cased sent-by) of the top Via."""
    try:
        via = top_via(headers)
    except InvalidHeader as exc:
        raise InvalidTransactionHeaders(f"top Via unusable, cannot match: {exc}") from exc
    return via.branch, via.sent_by.lower()


def _cseq(headers: Headers) -> tuple[str, str]:
    """Return the CSeq (number, METHOD) of a message."""
    try:
        number, method = cseq_of(headers)
    except InvalidHeader as exc:
        raise InvalidTransactionHeaders(str(exc)) from exc
    return str(number), method.upper()


def _from_tag(headers: Headers) -> str:
    return tag_of(headers.get("From")) or ""


def _server_key(request: Request, method: str) -> TransactionKey:
    branch, sent_by = _top_via_branch_and_sent_by(request.headers)
    if branch is not None and branch.startswith(MAGIC_COOKIE):
        return ("rfc3261", branch, sent_by, method)
    # RFC 2543 peers (no magic cookie): §17.2.3's fallback, minus the To tag, which an ACK
    # carries and its INVITE does not.
    number, _ = _cseq(request.headers)
    call_id = (request.headers.get("Call-ID") or "").strip()
    return (
        "rfc2543",
        request.uri,
        call_id,
        number,
        _from_tag(request.headers),
        sent_by,
        branch or "",
        method,
    )


def server_key(request: Request) -> TransactionKey:
    """Key of the server transaction a request belongs to (an ACK maps to its INVITE)."""
    method = request.method.upper()
    return _server_key(request, "INVITE" if method == "ACK" else method)


def cancel_target_key(cancel: Request) -> TransactionKey:
    """Key of the INVITE server transaction that a CANCEL cancels (§9.2)."""
    return _server_key(cancel, "INVITE")


def invite_ack_key(request: Request) -> TransactionKey:
    """Key pairing an INVITE with the ACK for its 2xx, which has a new branch (§13.3.1.4)."""
    number, _ = _cseq(request.headers)
    call_id = (request.headers.get("Call-ID") or "").strip()
    return ("ack", call_id, number, _from_tag(request.headers))


def client_key(message: Request | Response) -> TransactionKey:
    """Key of the client transaction: top Via branch and method (CSeq method for responses)."""
    branch, _ = _top_via_branch_and_sent_by(message.headers)
    if branch is None:
        raise InvalidTransactionHeaders("top Via has no branch; it cannot match our request")
    method = message.method.upper() if isinstance(message, Request) else _cseq(message.headers)[1]
    return ("client", branch, method)
