"""CallManager: dialog state (INVITE → ringing → answered → confirmed → ended), callee, tenant."""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass, field
from datetime import datetime

import structlog
import trio

from .bus import EventBus
from .config import Config
from .events import CallEnded, CallInfo, CallStarted, Dtmf, EndReason, utc_now
from .livecfg import LiveConfig
from .media.dtmf import DtmfDigit
from .media.ports import PortsExhausted, RtpPortPool, RtpSockets
from .media.sender import MediaClock
from .media.session import discard_inbound, open_media_session, session_settings
from .metrics import Metrics
from .sip.callee import callee_extension, request_domain
from .sip.endpoint import ServerTx, SipEndpoint
from .sip.fields import (
    InvalidHeader,
    NameAddr,
    cseq_of,
    new_tag,
    parse_name_addr,
    split_header_values,
    tag_of,
)
from .sip.message import Headers, Request, Response
from .sip.parser import make_response
from .sip.sdp import (
    Answer,
    NoCommonCodec,
    SdpError,
    SessionDescription,
    build_answer,
    parse_sdp,
)
from .sip.transaction import Action, PassToCore, Timeout
from .sip.transport import Peer
from .sip.uri import InvalidUri, SipUri, TelUri, UnsupportedUriScheme, parse_uri
from .sip.validate import allow_header
from .voicebot import CallBot

log = structlog.get_logger(__name__)

BYE_WAIT = 2.0
RETRY_AFTER_STOPPING = "30"


class CallState(enum.StrEnum):
    """Where a call's dialog is."""

    RINGING = "ringing"
    ANSWERED = "answered"
    CONFIRMED = "confirmed"
    ENDED = "ended"


DialogKey = tuple[str, str, str]
InviteId = tuple[str, str, int]  # Call-ID, From tag, CSeq number


@dataclass(eq=False)
class Call:
    """One call: its dialog, who it is for, its media, and the scope of its task."""

    info: CallInfo
    sip_call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str
    remote_uri: str
    remote_target: str
    route_set: list[str]
    peer: Peer
    invite: ServerTx
    remote_cseq: int
    local_cseq: int = field(default_factory=lambda: secrets.randbelow(2**16) + 1)
    state: CallState = CallState.RINGING
    answer: Answer | None = None
    session_id: int = field(default_factory=lambda: secrets.randbelow(2**31))
    session_version: int = 1
    media: RtpSockets | None = None
    confirmed_at: float | None = None
    started_at: datetime | None = None
    end_reason: EndReason | None = None
    hang_up_with_bye: bool = False
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    ended: trio.Event = field(default_factory=trio.Event)

    @property
    def id(self) -> str:
        """The call's public id (what the API and hub call it)."""
        return self.info.call_id

    @property
    def dialog_key(self) -> DialogKey:
        """Call-ID plus both tags: how in-dialog requests find the call."""
        return (self.sip_call_id, self.local_tag, self.remote_tag)

    @property
    def invite_id(self) -> InviteId:
        """What `_invite_id` gives for the call's INVITE, without parsing it again."""
        return (self.sip_call_id, self.remote_tag, self.remote_cseq)


@dataclass
class CallManager:
    """The SIP transaction user: answers calls and keeps their dialogs until they end."""

    live: LiveConfig
    bus: EventBus
    metrics: Metrics
    ports: RtpPortPool
    calls_nursery: trio.Nursery
    endpoint: SipEndpoint | None = None
    voicebot: CallBot | None = None
    media_clock: MediaClock = field(default_factory=MediaClock)
    stopping: bool = False
    _byes_in_flight: int = 0
    _dialogs: dict[DialogKey, Call] = field(default_factory=dict)
    _calls: dict[str, Call] = field(default_factory=dict)
    _invites: dict[InviteId, Call] = field(default_factory=dict)
    _idle: trio.Event = field(default_factory=trio.Event)

    # -- queries -------------------------------------------------------------------------

    def active_calls(self) -> list[Call]:
        """Calls not yet ended, oldest first."""
        return [c for c in self._calls.values() if c.state is not CallState.ENDED]

    def get(self, call_id: str) -> Call | None:
        """Return a live call by public id."""
        return self._calls.get(call_id)

    @property
    def endpoint_nursery(self) -> trio.Nursery:
        """The SIP nursery, where transactions (and our BYEs) run."""
        assert self.endpoint is not None, "the endpoint is attached before SIP is served"
        return self.endpoint.nursery

    # -- the endpoint's Core protocol ----------------------------------------------------

    def handle_request(self, request: Request, peer: Peer, tx: ServerTx) -> None:
        """Answer a new request that opened a server transaction."""
        method = request.method
        if method == "INVITE":
            if tag_of(request.headers.get("To")):
                self._reinvite(request, tx)
            else:
                self._invite(request, peer, tx)
        elif method == "BYE":
            self._bye(request, tx)
        elif method == "CANCEL":
            self._cancel(request, tx)
        elif method == "OPTIONS":
            tx.respond(make_response(
                request, 200, "OK", to_tag=new_tag(),
                headers=[allow_header(), ("Accept", "application/sdp"), self._server_header()]))
        else:
            tx.respond(make_response(request, 405, "Method Not Allowed",
                                     to_tag=new_tag(), headers=[allow_header()]))

    def handle_ack(self, ack: Request, peer: Peer) -> None:
        """An ACK for our 2xx confirms the dialog; stray ACKs are dropped (never answered)."""
        call = self._dialogs.get(_dialog_key(ack))
        if call is not None and call.state is CallState.ANSWERED:
            self._confirm(call)

    def transaction_action(self, request: Request, action: Action) -> None:
        """React to the INVITE transaction: the ACK arrived, or it never did."""
        if request.method != "INVITE":
            return
        if isinstance(action, PassToCore):
            call = self._dialogs.get(_dialog_key(action.request))
            if call is not None and call.state is CallState.ANSWERED:
                self._confirm(call)
        elif isinstance(action, Timeout) and action.kind == "ack":
            call = next((c for c in self._calls.values() if c.invite.request is request), None)
            if call is not None and call.state is CallState.ANSWERED:
                log.warning("sip_ack_timeout", call_id=call.id)
                self._finish(call, EndReason.ACK_TIMEOUT, send_bye=True)

    # -- INVITE --------------------------------------------------------------------------

    def _server_header(self) -> tuple[str, str]:
        return ("Server", self.live.current.sip.user_agent)

    def _contact(self, peer: Peer) -> str:
        config = self.live.current
        suffix = ";transport=tcp" if peer.reliable else ""
        return f"<sip:{advertised_host(config)}:{config.sip.listen.port}{suffix}>"

    def _invite(self, request: Request, peer: Peer, tx: ServerTx) -> None:
        tx.respond(make_response(request, 100, "Trying"))
        config = self.live.current
        if not config.sip.is_trusted(peer.host):
            log.warning("sip_invite_untrusted", peer=peer.host)
            tx.respond(make_response(request, 403, "Forbidden - source not trusted",
                                     to_tag=new_tag()))
            return
        if self.stopping:
            tx.respond(make_response(request, 503, "Service Unavailable - shutting down",
                                     to_tag=new_tag(),
                                     headers=[("Retry-After", RETRY_AFTER_STOPPING)]))
            return
        if _invite_id(request) in self._invites:
            # RFC 3261 §8.2.2.2: the same INVITE by another path (new branch) is a merged request.
            tx.respond(make_response(request, 482, "Loop Detected", to_tag=new_tag()))
            return
        try:
            offer = parse_sdp(request.body)
        except SdpError as exc:
            tx.respond(make_response(request, 488, f"Not Acceptable Here - {exc}",
                                     to_tag=new_tag()))
            return
        call = self._new_call(request, peer, tx)
        if call is None:
            tx.respond(make_response(request, 400, "Bad Request - unusable From/To/Contact",
                                     to_tag=new_tag()))
            return
        # The answer is built before anything is allocated: no common codec costs nothing.
        try:
            build_answer(offer, address=self.ports.address, port=9,
                         session_id=call.session_id, session_version=call.session_version)
        except NoCommonCodec:
            tx.respond(make_response(request, 488, "Not Acceptable Here - no common codec",
                                     to_tag=call.local_tag,
                                     headers=[("Warning", '304 voicedashd "PCMU or PCMA"')]))
            return
        except SdpError as exc:
            tx.respond(make_response(request, 488, f"Not Acceptable Here - {exc}",
                                     to_tag=call.local_tag))
            return
        self._register(call)
        tx.respond(make_response(request, 180, "Ringing", to_tag=call.local_tag,
                                 headers=[("Contact", self._contact(peer))]))
        try:
            call.media = self.ports.allocate()
        except PortsExhausted:
            log.error("rtp_ports_exhausted", call_id=call.id)
            tx.respond(make_response(request, 503, "Service Unavailable - no RTP ports",
                                     to_tag=call.local_tag))
            self._finish(call, EndReason.ERROR, send_bye=False)
            return
        if config.sip.answer_delay:
            self.endpoint_nursery.start_soon(self._answer_later, call, offer,
                                             config.sip.answer_delay)
        else:
            self._answer(call, offer)

    async def _answer_later(self, call: Call, offer: SessionDescription, delay: float) -> None:
        """Let the call ring for `delay` (sip.answer_delay) unless it ends first, then answer."""
        with trio.move_on_after(delay):
            await call.ended.wait()
        if call.state is CallState.RINGING:
            self._answer(call, offer)

    def _answer(self, call: Call, offer: SessionDescription) -> None:
        """Send the 200 with our SDP answer; the ACK will confirm the call."""
        assert call.media is not None
        call.answer = build_answer(offer, address=call.media.address, port=call.media.port,
                                   session_id=call.session_id,
                                   session_version=call.session_version)
        call.state = CallState.ANSWERED
        call.invite.respond(self._ok_with_answer(call.invite.request, call, call.peer))

    def _ok_with_answer(self, request: Request, call: Call, peer: Peer) -> Response:
        assert call.answer is not None
        return make_response(
            request, 200, "OK", to_tag=call.local_tag, body=call.answer.body,
            content_type="application/sdp",
            headers=[("Contact", self._contact(peer)), allow_header(), self._server_header()])

    def _new_call(self, request: Request, peer: Peer, tx: ServerTx) -> Call | None:
        headers = request.headers
        try:
            remote = parse_name_addr(headers.get("From") or "")
            local = parse_name_addr(headers.get("To") or "")
            contact = _first_contact(headers)
            cseq, _ = cseq_of(headers)
        except (InvalidHeader, ValueError):
            return None
        remote_tag = remote.tag or ""
        config = self.live.current
        tenant = config.tenant_for_domain(request_domain(request))
        extension = callee_extension(request) or ""
        info = CallInfo(
            call_id=secrets.token_hex(12),
            tenant=tenant.name,
            caller=_user_or_uri(remote.uri),
            caller_name=remote.display_name or None,
            callee=_user_or_uri(local.uri),
            callee_extension=extension,
            is_ai_handled=True,
            created_at=utc_now(),
        )
        route_set = [v for line in headers.get_all("Record-Route")
                     for v in split_header_values(line)]
        return Call(info=info, sip_call_id=headers.get("Call-ID") or "", local_tag=new_tag(),
                    remote_tag=remote_tag, local_uri=headers.get("To") or "",
                    remote_uri=headers.get("From") or "",
                    remote_target=contact.uri if contact else remote.uri,
                    route_set=route_set, peer=peer, invite=tx, remote_cseq=cseq)

    def _register(self, call: Call) -> None:
        self._calls[call.id] = call
        self._dialogs[call.dialog_key] = call
        self._invites[call.invite_id] = call
        if self._idle.is_set():
            self._idle = trio.Event()
        self.bus.register(call.info)
        log.info("call_ringing", call_id=call.id, tenant=call.info.tenant,
                 caller=call.info.caller, callee_extension=call.info.callee_extension,
                 progress="realtime")

    def _confirm(self, call: Call) -> None:
        call.state = CallState.CONFIRMED
        call.confirmed_at = trio.current_time()
        call.started_at = utc_now()
        self.metrics.active_calls.inc()
        info = call.info
        self.bus.emit(CallStarted, call.id, tenant=info.tenant, caller=info.caller,
                      caller_name=info.caller_name, callee=info.callee,
                      callee_extension=info.callee_extension, is_ai_handled=info.is_ai_handled,
                      started_at=call.started_at)
        self.calls_nursery.start_soon(self._run_call, call)

    def _reinvite(self, request: Request, tx: ServerTx) -> None:
        tx.respond(make_response(request, 100, "Trying"))
        call = self._dialogs.get(_dialog_key(request))
        if call is None or call.state is not CallState.CONFIRMED or call.media is None:
            tx.respond(make_response(request, 481, "Call/Transaction Does Not Exist"))
            return
        if request.body:
            try:
                offer = parse_sdp(request.body)
                answer = build_answer(offer, address=call.media.address, port=call.media.port,
                                      session_id=call.session_id,
                                      session_version=call.session_version)
                if call.answer is None or answer.body != call.answer.body:
                    call.session_version += 1
                    answer = build_answer(offer, address=call.media.address,
                                          port=call.media.port, session_id=call.session_id,
                                          session_version=call.session_version)
            except SdpError as exc:
                tx.respond(make_response(request, 488, f"Not Acceptable Here - {exc}"))
                return
            call.answer = answer
            log.info("call_media_updated", call_id=call.id, on_hold=answer.on_hold,
                     progress="realtime")
        tx.respond(self._ok_with_answer(request, call, call.peer))

    # -- ending --------------------------------------------------------------------------

    def _bye(self, request: Request, tx: ServerTx) -> None:
        call = self._dialogs.get(_dialog_key(request))
        if call is None or call.state is CallState.ENDED:
            tx.respond(make_response(request, 481, "Call/Transaction Does Not Exist"))
            return
        tx.respond(make_response(request, 200, "OK"))
        self.hang_up(call, EndReason.CALLER_HANGUP, send_bye=False)

    def _cancel(self, request: Request, tx: ServerTx) -> None:
        call = self._invites.get(_invite_id(request))
        if call is None:
            tx.respond(make_response(request, 481, "Call/Transaction Does Not Exist"))
            return
        # RFC 3261 §9.2: a CANCEL for an INVITE already answered gets 200 and has no effect.
        tx.respond(make_response(request, 200, "OK", to_tag=call.local_tag))
        if call.state is CallState.RINGING:
            call.invite.respond(make_response(call.invite.request, 487,
                                              "Request Terminated", to_tag=call.local_tag))
            self._finish(call, EndReason.CANCELLED, send_bye=False)

    def hang_up(self, call: Call, reason: EndReason, *, send_bye: bool) -> None:
        """End a call for a reason; a running call task is cancelled and finishes it."""
        if call.state is CallState.CONFIRMED:
            if call.end_reason is None:
                call.end_reason = reason
                call.hang_up_with_bye = send_bye
            call.scope.cancel()
        else:
            self._finish(call, reason, send_bye=send_bye)

    def _finish(self, call: Call, reason: EndReason, *, send_bye: bool) -> None:
        """The one place a call ends: release media, publish CallEnded, send BYE if asked."""
        if call.state is CallState.ENDED:
            return
        was_confirmed = call.state is CallState.CONFIRMED
        call.state = CallState.ENDED
        if call.media is not None:
            self.ports.release(call.media)
            call.media = None
        if call.invite.final_status is None:
            call.invite.respond(make_response(call.invite.request, 503, "Service Unavailable",
                                              to_tag=call.local_tag))
        self._invites.pop(call.invite_id, None)
        self._dialogs.pop(call.dialog_key, None)
        call.ended.set()
        self._calls.pop(call.id, None)
        duration = trio.current_time() - call.confirmed_at if call.confirmed_at else 0.0
        if was_confirmed:
            self.metrics.active_calls.dec()
        self.bus.emit(CallEnded, call.id, reason=reason, duration=round(duration, 3))
        if send_bye:
            self._byes_in_flight += 1
            self.endpoint_nursery.start_soon(self._send_bye, call)
        self._check_idle()

    def _check_idle(self) -> None:
        if not self._calls and not self._byes_in_flight:
            self._idle.set()

    async def _run_call(self, call: Call) -> None:
        """Run one confirmed call to its end; whatever happens inside ends this call only."""
        reason = EndReason.ERROR
        send_bye = True
        try:
            with call.scope:
                await self._media_loop(call)
            reason = call.end_reason or EndReason.SHUTDOWN
            send_bye = call.hang_up_with_bye if call.end_reason else True
        except Exception:
            log.exception("call_failed", call_id=call.id)
        finally:
            self._finish(call, reason, send_bye=send_bye)

    async def _media_loop(self, call: Call) -> None:
        """Run the call's RTP session; end the call after media.timeout without inbound RTP."""
        assert call.media is not None
        config = self.live.current.media
        bus, call_id = self.bus, call.id

        def on_dtmf(key: DtmfDigit) -> None:
            bus.emit(Dtmf, call_id, digit=key.digit, duration=key.duration)

        async with open_media_session(call.media, lambda: call.answer,
                                      session_settings(config, call.id), call_id=call.id,
                                      clock=self.media_clock, clock_nursery=self.calls_nursery,
                                      on_dtmf=on_dtmf) as session:
            if self.voicebot is None:
                await discard_inbound(session)
            else:  # returns only if the bot hung up; raises if it failed
                await self.voicebot.run(call.info, session, self.bus)
                call.end_reason = call.end_reason or EndReason.BOT_HANGUP
                call.hang_up_with_bye = True
        if session.timed_out:
            call.end_reason = EndReason.MEDIA_TIMEOUT
            call.hang_up_with_bye = True
            log.warning("call_media_timeout", call_id=call.id, timeout=config.timeout)

    async def _send_bye(self, call: Call) -> None:
        """Send BYE in the dialog and wait briefly for its answer."""
        assert self.endpoint is not None
        call.local_cseq += 1
        request_uri, routes, destination_uri = _route(call)
        headers = Headers.of([
            ("Via", self.endpoint.new_via(call.peer.transport)),
            ("Max-Forwards", "70"),
            ("From", call.local_uri if tag_of(call.local_uri) else
             f"{call.local_uri};tag={call.local_tag}"),
            ("To", call.remote_uri),
            ("Call-ID", call.sip_call_id),
            ("CSeq", f"{call.local_cseq} BYE"),
            *(("Route", r) for r in routes),
            ("User-Agent", self.live.current.sip.user_agent),
            ("Content-Length", "0"),
        ])
        bye = Request("BYE", request_uri, headers)
        try:
            destination = await _resolve(destination_uri, call.peer)
            with trio.move_on_after(BYE_WAIT):
                response = await self.endpoint.send_request(bye, destination)
                log.info("sip_bye_sent", call_id=call.id,
                         status=response.status if response else None)
        finally:
            self._byes_in_flight -= 1
            self._check_idle()

    async def stop(self) -> None:
        """Refuse new calls, hang up every call, and wait until all have ended and said BYE."""
        self.stopping = True
        for call in list(self._calls.values()):
            self.hang_up(call, EndReason.SHUTDOWN, send_bye=True)
        self._check_idle()
        await self._idle.wait()


def advertised_host(config: Config) -> str:
    """The address we put in Via and Contact: public_address, else a concrete listen host."""
    sip = config.sip
    if sip.public_address:
        return sip.public_address
    if sip.listen.host in ("0.0.0.0", "::"):
        return config.media.address
    return sip.listen.host


def _dialog_key(request: Request) -> DialogKey:
    return (request.headers.get("Call-ID") or "", tag_of(request.headers.get("To")) or "",
            tag_of(request.headers.get("From")) or "")


def _invite_id(request: Request) -> InviteId:
    """What ties a CANCEL to its INVITE besides the branch: Call-ID, From tag, CSeq number."""
    try:
        number, _ = cseq_of(request.headers)
    except (InvalidHeader, ValueError):
        number = -1
    return (request.headers.get("Call-ID") or "", tag_of(request.headers.get("From")) or "",
            number)


def _first_contact(headers: Headers) -> NameAddr | None:
    value = headers.get("Contact")
    if not value:
        return None
    return parse_name_addr(split_header_values(value)[0])


def _user_or_uri(uri: str) -> str:
    try:
        parsed = parse_uri(uri)
    except (InvalidUri, UnsupportedUriScheme):
        return uri
    if isinstance(parsed, TelUri):
        return parsed.number
    return parsed.user or parsed.host


def _route(call: Call) -> tuple[str, list[str], str]:
    """Request-URI, Route headers and next hop for an in-dialog request (RFC 3261 §12.2.1.1)."""
    if not call.route_set:
        return call.remote_target, [], call.remote_target
    first = parse_name_addr(call.route_set[0]).uri
    try:
        loose = isinstance(parsed := parse_uri(first), SipUri) and parsed.lr
    except (InvalidUri, UnsupportedUriScheme):
        loose = True
    if loose:
        return call.remote_target, list(call.route_set), first
    return first, [*call.route_set[1:], f"<{call.remote_target}>"], first


async def _resolve(uri: str, dialog_peer: Peer) -> Peer:
    """Where to send an in-dialog request: the dialog's TCP connection, or the URI's address."""
    if dialog_peer.reliable:
        return dialog_peer
    try:
        parsed = parse_uri(uri)
    except (InvalidUri, UnsupportedUriScheme):
        return dialog_peer
    if not isinstance(parsed, SipUri):
        return dialog_peer
    port = parsed.port or (5061 if parsed.scheme == "sips" else 5060)
    host = parsed.host.strip("[]")
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_DGRAM)
    except OSError:
        return dialog_peer
    return Peer("UDP", infos[0][4][0], port)
