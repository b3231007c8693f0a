"""The UAS dialog of one call (RFC 3261 §12-15, RFC 3264); sans-IO, time is passed in.

`parse_invite` reads an initial INVITE once into an `Invite`. A `Dialog` is then fed what
happens to the call — requests in the dialog (`receive`), our decisions (`ring`, `answer`,
`reject`, `hang_up`) and its timers (`timer_fired`) — and returns the actions its runner must
perform: send a response (through the server transaction of the request it answers), send a
request (our BYE), start or change media, report the call confirmed or ended. It never touches
a socket or a clock.

The INVITE server transaction (transaction.py, RFC 6026 Accepted state) already absorbs
retransmitted INVITEs and retransmits the 2xx on unreliable transports; a dialog that runs
behind one is built with ``retransmit_2xx=False`` so the 2xx is not sent twice as often.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from voicedashd.sip.callee import find_callee
from voicedashd.sip.fields import (
    InvalidHeader,
    cseq_of,
    header_values,
    new_tag,
    parse_name_addr,
    quote,
    tag_of,
)
from voicedashd.sip.message import Headers, Request, Response
from voicedashd.sip.parser import make_response
from voicedashd.sip.sdp import (
    DEFAULT_CODECS,
    Answer,
    NoCommonCodec,
    SdpError,
    SessionDescription,
    build_answer,
    parse_sdp,
)
from voicedashd.sip.transaction import DEFAULT_TIMERS, Timers
from voicedashd.sip.uri import InvalidUri, SipUri, TelUri, UnsupportedUriScheme, parse_uri
from voicedashd.sip.validate import allow_header

# End reasons a dialog reports by itself; the call layer maps them to its own EndReason.
CALLER_HANGUP = "caller_hangup"
CANCELLED = "cancelled"
ACK_TIMEOUT = "ack_timeout"
TRANSFERRED = "transferred"

DialogKey: TypeAlias = tuple[str, str, str]  # Call-ID, local tag, remote tag
InviteKey: TypeAlias = tuple[str, str, int]  # Call-ID, From tag, CSeq number

_NO_COMMON_CODEC_WARNING = ("Warning", '304 voicedashd "PCMU or PCMA"')


class InvalidInvite(ValueError):
    """An initial INVITE that cannot open a dialog; status and reason are the answer."""

    def __init__(self, status: int, reason: str,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = headers


@dataclass(frozen=True, slots=True)
class Invite:
    """An initial INVITE, parsed once: who calls whom, the dialog's addresses, the offer."""

    request: Request
    call_id: str
    cseq: int
    remote_tag: str
    local_uri: str  # the To value as sent (no tag yet)
    remote_uri: str  # the From value as sent, with its tag
    caller: str
    caller_name: str | None
    callee: str
    callee_extension: str
    domain: str | None  # of the same URI as callee_extension (sip/callee.py)
    remote_target: str
    route_set: tuple[str, ...]
    offer: SessionDescription
    transport: str

    @property
    def reliable(self) -> bool:
        """Whether the INVITE came over a transport that retransmits for us."""
        return self.transport != "UDP"

    @property
    def key(self) -> InviteKey:
        """What ties a CANCEL or a merged copy to this INVITE besides the branch."""
        return (self.call_id, self.remote_tag, self.cseq)


def sdp_warning(error: SdpError) -> tuple[str, str]:
    """A Warning header (399, RFC 3261 §20.43) saying what in an offer we cannot accept."""
    return ("Warning", f"399 voicedashd {quote(str(error))}")


def invite_key(request: Request) -> InviteKey:
    """The `Invite.key` a request (a CANCEL, a copy of the INVITE) points at."""
    try:
        number, _ = cseq_of(request.headers)
    except InvalidHeader:
        number = -1
    return (request.headers.get("Call-ID") or "", tag_of(request.headers.get("From")) or "",
            number)


def dialog_key(request: Request) -> DialogKey:
    """The `Dialog.key` of the dialog an in-dialog request belongs to (we are the UAS)."""
    headers = request.headers
    return (headers.get("Call-ID") or "", tag_of(headers.get("To")) or "",
            tag_of(headers.get("From")) or "")


def parse_invite(request: Request, *, transport: str) -> Invite:
    """Read an initial INVITE into an `Invite`; raises InvalidInvite with the answer to give."""
    try:
        offer = parse_sdp(request.body)
    except SdpError as exc:
        raise InvalidInvite(488, f"Not Acceptable Here - {exc}", (sdp_warning(exc),)) from exc
    headers = request.headers
    try:
        remote = parse_name_addr(headers.get("From") or "")
        local = parse_name_addr(headers.get("To") or "")
        contacts = header_values(headers, "Contact")
        contact = parse_name_addr(contacts[0]) if contacts else None
        cseq, _ = cseq_of(headers)
    except InvalidHeader as exc:
        raise InvalidInvite(400, "Bad Request - unusable From/To/Contact") from exc
    route_set = tuple(header_values(headers, "Record-Route"))
    try:
        for route in route_set:  # read now: our BYE follows them, long after the INVITE
            parse_name_addr(route)
    except InvalidHeader as exc:
        raise InvalidInvite(400, f"Bad Request - unusable Record-Route: {exc}") from exc
    callee = find_callee(request)
    return Invite(
        request=request,
        call_id=headers.get("Call-ID") or "",
        cseq=cseq,
        remote_tag=remote.tag or "",
        local_uri=headers.get("To") or "",
        remote_uri=headers.get("From") or "",
        caller=_user_or_uri(remote.uri),
        caller_name=remote.display_name or None,
        callee=_user_or_uri(local.uri),
        callee_extension=callee.extension if callee else "",
        domain=callee.domain if callee else None,
        remote_target=contact.uri if contact else remote.uri,
        route_set=route_set,
        offer=offer,
        transport=transport,
    )


def _user_or_uri(uri: str) -> str:
    """The user (or number) of a URI for display, else its host, else the text as sent."""
    try:
        parsed = parse_uri(uri)
    except (InvalidUri, UnsupportedUriScheme):
        return uri
    if isinstance(parsed, TelUri):
        return parsed.number
    return parsed.user or parsed.host


# --- actions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Respond:
    """Send this response through the server transaction of `request`."""

    request: Request
    response: Response


@dataclass(frozen=True, slots=True)
class SendRequest:
    """Send this request (our BYE) towards `next_hop`; the transport adds its Via."""

    request: Request
    next_hop: str


@dataclass(frozen=True, slots=True)
class Confirmed:
    """The ACK for our 2xx arrived: the call is up, media may start."""


@dataclass(frozen=True, slots=True)
class MediaChanged:
    """A re-INVITE changed the session (hold, unhold, new address): this is the new answer."""

    answer: Answer


@dataclass(frozen=True, slots=True)
class Ended:
    """The dialog is over for this reason (reported once)."""

    reason: str


@dataclass(frozen=True, slots=True)
class TransferProgress:
    """Our REFER moves on: the PBX accepted it (2xx) or reports a provisional status (1xx)."""

    status: int
    reason: str  # the status line's phrase, as the PBX wrote it


@dataclass(frozen=True, slots=True)
class TransferDone:
    """Our REFER's outcome (reported once): the transfer succeeded, or failed and why."""

    succeeded: bool
    reason: str
    status: int | None = None


Action: TypeAlias = (Respond | SendRequest | Confirmed | MediaChanged | Ended | TransferProgress
                     | TransferDone)


class DialogState(enum.Enum):
    """Where a UAS dialog is."""

    EARLY = "early"  # ringing, no final response yet
    ANSWERED = "answered"  # our 2xx sent, waiting for the ACK
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class Dialog:
    """The UAS side of one INVITE dialog; no sockets, no sleeping."""

    def __init__(self, invite: Invite, *, contact: str, user_agent: str,
                 timers: Timers = DEFAULT_TIMERS, retransmit_2xx: bool = True,
                 codecs: Sequence[str] = DEFAULT_CODECS) -> None:
        self.invite = invite
        self.codecs = tuple(codecs)
        self.local_tag = new_tag()
        self.timers = timers
        self._contact = contact
        self._user_agent = user_agent
        self._retransmit_2xx = retransmit_2xx and not invite.reliable
        self._state = DialogState.EARLY
        self._remote_cseq = invite.cseq
        self._local_cseq = secrets.randbelow(2**16) + 1
        self._session_id = secrets.randbelow(2**31)
        self._session_version = 1
        self._media: tuple[str, int] | None = None
        self._answer: Answer | None = None
        self._invite_response: Response | None = None
        self._ack_deadline: float | None = None
        self._resend_at: float | None = None
        self._resend_interval = timers.t1
        self._sent_bye = False
        self._end_reason: str | None = None
        self._refer_cseq: int | None = None  # our REFER in progress (RFC 3515), by its CSeq
        self._transfer_deadline: float | None = None

    # -- what the runner asks ----------------------------------------------------------------

    @property
    def state(self) -> DialogState:
        """The current state."""
        return self._state

    @property
    def terminated(self) -> bool:
        """Whether the dialog has ended."""
        return self._state is DialogState.TERMINATED

    @property
    def key(self) -> DialogKey:
        """Call-ID plus both tags: how in-dialog requests find this dialog."""
        return (self.invite.call_id, self.local_tag, self.invite.remote_tag)

    @property
    def answer_sdp(self) -> Answer | None:
        """The session as last answered (None before the answer)."""
        return self._answer

    @property
    def end_reason(self) -> str | None:
        """Why the dialog ended, once it has."""
        return self._end_reason

    @property
    def next_deadline(self) -> float | None:
        """When `timer_fired` should next be called, or None if no timer is running."""
        present = [d for d in (self._resend_at, self._ack_deadline, self._transfer_deadline)
                   if d is not None]
        return min(present) if present else None

    @property
    def transferring(self) -> bool:
        """Whether our REFER is in progress (sent, its outcome not known yet)."""
        return self._refer_cseq is not None

    # -- our decisions -----------------------------------------------------------------------

    def ring(self, now: float) -> list[Action]:
        """Check that the offer can be answered, then send 180 Ringing (else 488 and end)."""
        try:
            # A dry run: whether there is a common codec does not depend on our address.
            build_answer(self.invite.offer, address="0.0.0.0", port=9,
                         session_id=self._session_id, session_version=self._session_version,
                         codecs=self.codecs)
        except NoCommonCodec:
            return self.reject(488, "Not Acceptable Here - no common codec",
                               reason="rejected", headers=[_NO_COMMON_CODEC_WARNING])
        except SdpError as exc:
            return self.reject(488, f"Not Acceptable Here - {exc}", reason="rejected",
                               headers=[sdp_warning(exc)])
        return [self._respond_invite(180, "Ringing", headers=[("Contact", self._contact)])]

    def answer(self, address: str, port: int, now: float) -> list[Action]:
        """Answer with our media at address:port: send the 2xx, wait for the ACK."""
        if self._state is not DialogState.EARLY:
            return []
        self._media = (address, port)
        self._answer = self._build_answer(self.invite.offer)
        self._state = DialogState.ANSWERED
        self._ack_deadline = now + self.timers.transaction_timeout
        if self._retransmit_2xx:
            self._resend_interval = self.timers.t1
            self._resend_at = now + self._resend_interval
        self._invite_response = self._ok(self.invite.request)
        return [Respond(self.invite.request, self._invite_response)]

    def reject(self, status: int, phrase: str, *, reason: str = "error",
               headers: Iterable[tuple[str, str]] = ()) -> list[Action]:
        """Refuse the call with a final error response (before the answer only)."""
        if self._state is not DialogState.EARLY:
            return []
        return [self._respond_invite(status, phrase, headers=headers), *self._end(reason)]

    def hang_up(self, reason: str, now: float) -> list[Action]:
        """End the call for reason: BYE once answered, a final 503 while still ringing."""
        if self._state is DialogState.TERMINATED:
            return []
        if self._state is DialogState.EARLY:
            return [self._respond_invite(503, "Service Unavailable"), *self._end(reason)]
        self._sent_bye = True
        return [self._bye(), *self._end(reason)]

    def refer(self, refer_to: str, now: float, *, timeout: float,
              referred_by: str | None = None) -> list[Action]:
        """Ask the peer to transfer the call to refer_to (RFC 3515); failed after timeout."""
        if self._state is not DialogState.CONFIRMED or self._refer_cseq is not None:
            return []
        extra = [("Refer-To", f"<{refer_to}>"), ("Contact", self._contact)]
        if referred_by is not None:
            extra.append(("Referred-By", f"<{referred_by}>"))
        request = self._request("REFER", extra)
        self._refer_cseq = self._local_cseq
        self._transfer_deadline = now + timeout
        return [request]

    def refer_answered(self, response: Response | None, now: float) -> list[Action]:
        """Feed the final response to our REFER (None: it timed out)."""
        if self._refer_cseq is None or self._state is DialogState.TERMINATED:
            return []
        if response is not None and _cseq_number(response.headers) != self._refer_cseq:
            return []  # the late answer to an earlier REFER
        if response is None:
            return self._transfer_failed("no answer to REFER")
        if response.status < 300:
            return [TransferProgress(response.status, response.reason)]
        return self._transfer_failed(f"REFER refused: {response.status} {response.reason}",
                                     response.status)

    # -- what the peer sends -----------------------------------------------------------------

    def receive(self, request: Request, now: float) -> list[Action]:
        """Feed a request of this dialog (or the CANCEL of its INVITE)."""
        method = request.method
        if method == "ACK":
            return self._receive_ack(request)
        if method == "CANCEL":
            return self._receive_cancel(request)
        if method == "INVITE":
            if tag_of(request.headers.get("To")) is None:
                return self._retransmitted_invite(request)
            return self._reinvite(request)
        if method == "BYE":
            return self._receive_bye(request)
        if method == "NOTIFY":
            return self._receive_notify(request, now)
        return [Respond(request, make_response(request, 405, "Method Not Allowed",
                                               headers=[allow_header()]))]

    def timer_fired(self, now: float) -> list[Action]:
        """Run whichever timers are due at `now`: the 2xx resend, the ACK and REFER timeouts."""
        if self._transfer_deadline is not None and now >= self._transfer_deadline:
            return self._transfer_failed("no final NOTIFY in time")
        if self._ack_deadline is not None and now >= self._ack_deadline:
            return self.hang_up(ACK_TIMEOUT, now)
        if self._resend_at is not None and now >= self._resend_at:
            self._resend_interval = min(self._resend_interval * 2, self.timers.t2)
            self._resend_at = now + self._resend_interval
            if self._invite_response is not None:
                return [Respond(self.invite.request, self._invite_response)]
        return []

    # -- inputs, one by one --------------------------------------------------------------------

    def _retransmitted_invite(self, request: Request) -> list[Action]:
        # Once the ACK came the peer has its answer; a late copy gets nothing (RFC 6026).
        if self._invite_response is None or self._state is DialogState.CONFIRMED:
            return []
        return [Respond(request, self._invite_response)]

    def _receive_ack(self, ack: Request) -> list[Action]:
        # An ACK for a non-2xx belongs to the INVITE transaction; it changes nothing here.
        if self._state is not DialogState.ANSWERED:
            return []
        self._state = DialogState.CONFIRMED
        self._ack_deadline = None
        self._resend_at = None
        return [Confirmed()]

    def _receive_cancel(self, cancel: Request) -> list[Action]:
        if self._state is DialogState.TERMINATED:
            return [Respond(cancel, unknown_dialog(cancel))]
        ok = Respond(cancel, make_response(cancel, 200, "OK", to_tag=self.local_tag))
        if self._state is not DialogState.EARLY:
            return [ok]  # RFC 3261 §9.2: too late, the INVITE was answered; no effect
        return [ok, self._respond_invite(487, "Request Terminated"), *self._end(CANCELLED)]

    def _receive_bye(self, bye: Request) -> list[Action]:
        if self._state is DialogState.TERMINATED:
            if self._sent_bye:  # our BYE crossed theirs: both sides agree it is over
                return [Respond(bye, make_response(bye, 200, "OK"))]
            return [Respond(bye, unknown_dialog(bye))]
        actions: list[Action] = [Respond(bye, make_response(bye, 200, "OK"))]
        if self._state is DialogState.EARLY:
            actions.append(self._respond_invite(503, "Service Unavailable"))
        return [*actions, *self._end(CALLER_HANGUP)]

    def _reinvite(self, request: Request) -> list[Action]:
        trying = Respond(request, make_response(request, 100, "Trying"))
        if self._state is not DialogState.CONFIRMED or self._media is None:
            return [trying, Respond(request, unknown_dialog(request))]
        try:
            cseq, _ = cseq_of(request.headers)
        except InvalidHeader:
            cseq = self._remote_cseq + 1
        if cseq <= self._remote_cseq:  # RFC 3261 §12.2.2: out of order
            return [trying, Respond(request, make_response(
                request, 500, "Server Internal Error - CSeq out of order"))]
        self._remote_cseq = cseq
        if not request.body:
            return [trying, Respond(request, self._ok(request))]
        try:
            answer = self._build_answer(parse_sdp(request.body))
            if self._answer is None or answer.body != self._answer.body:
                self._session_version += 1  # RFC 3264 §8: a changed answer gets a new version
                answer = self._build_answer(parse_sdp(request.body))
        except SdpError as exc:  # RFC 3261 §14.2: the session stays as it was
            return [trying, Respond(request, make_response(
                request, 488, f"Not Acceptable Here - {exc}", headers=[sdp_warning(exc)]))]
        self._answer = answer
        return [trying, Respond(request, self._ok(request)), MediaChanged(answer)]

    def _receive_notify(self, notify: Request, now: float) -> list[Action]:
        """A NOTIFY of our REFER's implicit subscription (RFC 3515 §2.4.4, RFC 6665)."""
        if self._state is not DialogState.CONFIRMED or self._refer_cseq is None:
            return [Respond(notify, unknown_dialog(notify))]
        package, params = _event_of(notify.headers.get("Event") or "")
        if package != "refer":
            return [Respond(notify, make_response(notify, 489, "Bad Event",
                                                  headers=[("Allow-Events", "refer")]))]
        if params.get("id", str(self._refer_cseq)) != str(self._refer_cseq):
            return [Respond(notify, unknown_dialog(notify))]  # an older REFER's subscription
        try:
            cseq, _ = cseq_of(notify.headers)
        except InvalidHeader:
            cseq = self._remote_cseq + 1
        if cseq <= self._remote_cseq:
            return [Respond(notify, make_response(
                notify, 500, "Server Internal Error - CSeq out of order"))]
        self._remote_cseq = cseq
        ok = Respond(notify, make_response(notify, 200, "OK"))
        state = (notify.headers.get("Subscription-State") or "").split(";", 1)[0]
        terminated = state.strip(" \t").lower() == "terminated"
        frag = sipfrag_status(notify.body)
        if frag is not None and 200 <= frag[0] < 300:
            self._clear_transfer()
            return [ok, TransferDone(True, f"{frag[0]} {frag[1]}", frag[0]),
                    *self.hang_up(TRANSFERRED, now)]  # RFC 5589 §6: the transferor leaves
        if frag is not None and frag[0] >= 300:
            return [ok, *self._transfer_failed(f"{frag[0]} {frag[1]}", frag[0])]
        if terminated:
            return [ok, *self._transfer_failed("subscription ended without a final status")]
        return [ok, TransferProgress(*frag)] if frag is not None else [ok]

    def _transfer_failed(self, reason: str, status: int | None = None) -> list[Action]:
        self._clear_transfer()
        return [TransferDone(False, reason, status)]

    def _clear_transfer(self) -> None:
        self._refer_cseq = None
        self._transfer_deadline = None

    # -- building messages ---------------------------------------------------------------------

    def _build_answer(self, offer: SessionDescription) -> Answer:
        assert self._media is not None
        address, port = self._media
        # A re-INVITE keeps the codec in use while it is still offered (RFC 3264 §8.3.2).
        codecs = self.codecs if self._answer is None else (self._answer.codec, *self.codecs)
        return build_answer(offer, address=address, port=port, session_id=self._session_id,
                            session_version=self._session_version, codecs=codecs)

    def _ok(self, request: Request) -> Response:
        assert self._answer is not None
        return make_response(
            request, 200, "OK", to_tag=self.local_tag, body=self._answer.body,
            content_type="application/sdp",
            headers=[("Contact", self._contact), allow_header(),
                     ("Server", self._user_agent)])

    def _respond_invite(self, status: int, reason: str,
                        headers: Iterable[tuple[str, str]] = ()) -> Respond:
        response = make_response(self.invite.request, status, reason, to_tag=self.local_tag,
                                 headers=headers)
        if status >= 200:
            self._invite_response = response
        return Respond(self.invite.request, response)

    def _end(self, reason: str) -> list[Action]:
        self._state = DialogState.TERMINATED
        self._ack_deadline = None
        self._resend_at = None
        self._clear_transfer()
        self._end_reason = reason
        return [Ended(reason)]

    def _bye(self) -> SendRequest:
        """Our BYE in this dialog."""
        return self._request("BYE")

    def _request(self, method: str,
                 extra: Iterable[tuple[str, str]] = ()) -> SendRequest:
        """Our request in this dialog, routed by the route set (RFC 3261 §12.2.1.1)."""
        invite = self.invite
        self._local_cseq += 1
        request_uri, routes, next_hop = _route(invite.route_set, invite.remote_target)
        local = invite.local_uri
        headers = Headers.of([
            ("Max-Forwards", "70"),
            ("From", local if tag_of(local) else f"{local};tag={self.local_tag}"),
            ("To", invite.remote_uri),
            ("Call-ID", invite.call_id),
            ("CSeq", f"{self._local_cseq} {method}"),
            *(("Route", r) for r in routes),
            *extra,
            ("User-Agent", self._user_agent),
            ("Content-Length", "0"),
        ])
        return SendRequest(Request(method, request_uri, headers), next_hop)


def unknown_dialog(request: Request) -> Response:
    """The answer to a request for a dialog (or INVITE) we do not have: 481."""
    return make_response(request, 481, "Call/Transaction Does Not Exist")


def _cseq_number(headers: Headers) -> int | None:
    try:
        return cseq_of(headers)[0]
    except InvalidHeader:
        return None


def sipfrag_status(body: bytes) -> tuple[int, str] | None:
    """The status code and phrase of a message/sipfrag body's status line (RFC 3420)."""
    line = body.split(b"\n", 1)[0].strip().decode("utf-8", "replace")
    version, _, rest = line.partition(" ")
    code, _, phrase = rest.partition(" ")
    if version.upper() != "SIP/2.0" or len(code) != 3 or not code.isdigit():
        return None
    status = int(code)
    return (status, phrase.strip()[:100]) if 100 <= status <= 699 else None


def _event_of(value: str) -> tuple[str, dict[str, str]]:
    """The package of an Event header (lower case) and its parameters (RFC 6665 §8.2.1)."""
    package, *params = value.split(";")
    found: dict[str, str] = {}
    for param in params:
        name, _, val = param.partition("=")
        found[name.strip(" \t").lower()] = val.strip(" \t")
    return package.strip(" \t").lower(), found


def _route(route_set: tuple[str, ...], remote_target: str) -> tuple[str, list[str], str]:
    """Request-URI, Route headers and next hop of an in-dialog request (RFC 3261 §12.2.1.1)."""
    if not route_set:
        return remote_target, [], remote_target
    first = parse_name_addr(route_set[0]).uri
    try:
        loose = isinstance(parsed := parse_uri(first), SipUri) and parsed.lr
    except (InvalidUri, UnsupportedUriScheme):
        loose = True
    if loose:
        return remote_target, list(route_set), first
    return first, [*route_set[1:], f"<{remote_target}>"], first
