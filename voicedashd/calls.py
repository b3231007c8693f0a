"""One call's wiring: each SIP dialog to its RTP ports, media session, voice bot and bus."""

from __future__ import annotations

import contextlib
import math
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import structlog
import trio

from .bus import EventBus
from .events import (
    CallEnded,
    CallInfo,
    CallPhase,
    CallRecorded,
    CallStarted,
    Dtmf,
    EndReason,
    TransferFailed,
    TransferProgressed,
    TransferStarted,
    call_started_fields,
    utc_now,
)
from .livecfg import LiveConfig
from .media.callrecord import recording_name
from .media.dtmf import DtmfDigit
from .media.ports import PortsExhausted, RtpPortPool, RtpSockets, SocketsUnavailable
from .media.sender import MediaClock
from .media.session import discard_inbound, open_media_session, session_settings
from .metrics import Metrics
from .sip.advertise import media_host, uri_host
from .sip.dialog import (
    ACK_TIMEOUT,
    Action,
    Confirmed,
    Dialog,
    DialogKey,
    DialogState,
    Ended,
    InvalidInvite,
    Invite,
    InviteKey,
    MediaChanged,
    Respond,
    SendRequest,
    TransferDone,
    TransferProgress,
    dialog_key,
    invite_key,
    parse_invite,
    unknown_dialog,
)
from .sip.endpoint import ServerTx
from .sip.fields import new_tag, tag_of
from .sip.message import Request, Response
from .sip.parser import make_response
from .sip.refer_to import InvalidTransferTarget, render_refer_to
from .sip.resolve import NextHopUnresolved
from .sip.transaction import Action as TransactionAction
from .sip.transaction import PassToCore
from .sip.transport import Peer
from .sip.validate import allow_header
from .voicebot import CallBot, Line, Prompt

log = structlog.get_logger(__name__)

BYE_WAIT = 2.0
RETRY_AFTER_STOPPING = "30"
RETRY_AFTER_RESOURCES = "5"
LINE_WAIT = 15.0  # longest wait for the transfer line to be said before the REFER goes anyway
PROMPT_QUEUE = 4
_CHANNEL_GONE = (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError)


CallState = CallPhase  # where a call is, as the API and the hub show it


_STATE_OF_DIALOG = {
    DialogState.EARLY: CallState.RINGING,
    DialogState.ANSWERED: CallState.ANSWERED,
    DialogState.CONFIRMED: CallState.CONFIRMED,
    DialogState.TERMINATED: CallState.ENDED,
}


class Requests(Protocol):
    """What the calls need to send their own requests (our BYE): a `SipClient`."""

    def local_host(self, peer_host: str) -> str:
        """The address our Contact names for a peer (sip.public_address, else ours)."""
        ...

    async def resolve(self, uri: str, dialog_peer: Peer) -> Peer:
        """Where a request to uri goes; NextHopUnresolved if its name is not resolved in time."""
        ...

    async def send_request(self, request: Request, destination: Peer, *,
                           nursery: trio.Nursery) -> Response | None:
        """Send request as a client transaction; its final response, or None."""
        ...


class TransferNotPossible(Exception):
    """A transfer cannot start now; code says why (not_live, in_progress, bad_target)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


@dataclass(eq=False)
class Transfer:
    """A transfer in progress: where to, its task's scope, and when it is over."""

    target: str
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)


@dataclass(eq=False)
class Call:
    """One call: its dialog, who it is for, its media, and the scope of its task."""

    info: CallInfo
    dialog: Dialog
    peer: Peer
    invite: ServerTx
    media: RtpSockets | None = None
    confirmed_at: float | None = None
    started_at: datetime | None = None
    end_reason: EndReason | None = None
    running: bool = False  # the call task owns the media and does the cleanup
    bye_in_flight: bool = False  # keeps the dialog findable for a BYE crossing ours
    finished: bool = False
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    settled: trio.Event = field(default_factory=trio.Event)  # no longer waiting for the ACK
    ended: trio.Event = field(default_factory=trio.Event)
    transfer: Transfer | None = None
    prompts: trio.MemorySendChannel[Prompt] = field(init=False)
    prompts_out: trio.MemoryReceiveChannel[Prompt] = field(init=False)

    def __post_init__(self) -> None:
        self.prompts, self.prompts_out = trio.open_memory_channel[Prompt](PROMPT_QUEUE)

    @property
    def id(self) -> str:
        """The call's public id (what the API and hub call it)."""
        return self.info.call_id

    @property
    def state(self) -> CallState:
        """Where the call is: its dialog's state, until the call has been cleaned up."""
        return CallState.ENDED if self.finished else _STATE_OF_DIALOG[self.dialog.state]


def call_info(invite: Invite, tenant: str) -> CallInfo:
    """A new call's public data, with a fresh public id."""
    return CallInfo(call_id=secrets.token_hex(12), tenant=tenant, caller=invite.caller,
                    caller_name=invite.caller_name, callee=invite.callee,
                    callee_extension=invite.callee_extension, is_ai_handled=True,
                    created_at=utc_now())


def end_reason(reason: str) -> EndReason:
    """The EndReason of a dialog's end reason (anything unknown is an error)."""
    try:
        return EndReason(reason)
    except ValueError:
        return EndReason.ERROR


class CallManager:
    """The SIP transaction user: runs each call's dialog and wires it to media and the bot."""

    def __init__(self, live: LiveConfig, bus: EventBus, metrics: Metrics, ports: RtpPortPool,
                 sip: Requests, nursery: trio.Nursery, *, voicebot: CallBot | None = None,
                 media_clock: MediaClock | None = None) -> None:
        self.live = live
        self.bus = bus
        self.metrics = metrics
        self.ports = ports
        self.voicebot = voicebot
        self.media_clock = media_clock or MediaClock()
        self.stopping = False
        self._sip = sip
        self._nursery = nursery
        self._byes_in_flight = 0
        self._dialogs: dict[DialogKey, Call] = {}
        self._calls: dict[str, Call] = {}
        self._invites: dict[InviteKey, Call] = {}
        self._idle = trio.Event()

    # -- queries -------------------------------------------------------------------------

    def active_calls(self) -> list[Call]:
        """Calls not yet ended, oldest first."""
        return [c for c in self._calls.values() if c.state is not CallState.ENDED]

    def get(self, call_id: str) -> Call | None:
        """Return a live call by public id."""
        return self._calls.get(call_id)

    # -- the endpoint's Core protocol ----------------------------------------------------

    def handle_request(self, request: Request, peer: Peer, tx: ServerTx) -> None:
        """Answer a new request that opened a server transaction."""
        method = request.method
        if method == "INVITE" and tag_of(request.headers.get("To")) is None:
            self._invite(request, peer, tx)
        elif method in ("INVITE", "BYE", "NOTIFY"):
            self._in_dialog(self._dialogs.get(dialog_key(request)), request, tx)
        elif method == "CANCEL":
            self._in_dialog(self._invites.get(invite_key(request)), request, tx)
        elif method == "OPTIONS":
            tx.respond(make_response(
                request, 200, "OK", to_tag=new_tag(),
                headers=[allow_header(), ("Accept", "application/sdp"), self._server_header()]))
        else:
            tx.respond(make_response(request, 405, "Method Not Allowed",
                                     to_tag=new_tag(), headers=[allow_header()]))

    def handle_ack(self, ack: Request, peer: Peer) -> None:
        """An ACK for our 2xx goes to its dialog; stray ACKs are dropped (never answered)."""
        self._ack(ack)

    def transaction_action(self, request: Request, action: TransactionAction) -> None:
        """Take the ACK for our 2xx that the INVITE transaction passed up."""
        # Its Timeout("ack") is not needed: the dialog keeps its own ACK timer.
        if request.method == "INVITE" and isinstance(action, PassToCore):
            self._ack(action.request)

    def _ack(self, ack: Request) -> None:
        call = self._dialogs.get(dialog_key(ack))
        if call is not None:
            self._perform(call, call.dialog.receive(ack, trio.current_time()))

    # -- requests into dialogs -----------------------------------------------------------

    def _server_header(self) -> tuple[str, str]:
        return ("Server", self.live.current.sip.user_agent)

    def _contact(self, peer: Peer) -> str:
        suffix = ";transport=tcp" if peer.reliable else ""
        host = uri_host(self._sip.local_host(peer.host))
        return f"<sip:{host}:{self.live.current.sip.listen.port}{suffix}>"

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
        if invite_key(request) in self._invites:
            # RFC 3261 §8.2.2.2: the same INVITE by another path (new branch) is a merged request.
            tx.respond(make_response(request, 482, "Loop Detected", to_tag=new_tag()))
            return
        try:
            invite = parse_invite(request, transport=peer.transport)
        except InvalidInvite as exc:
            tx.respond(make_response(request, exc.status, exc.reason, to_tag=new_tag(),
                                     headers=exc.headers))
            return
        # The INVITE transaction (RFC 6026) already resends the 2xx and absorbs copies.
        dialog = Dialog(invite, contact=self._contact(peer), user_agent=config.sip.user_agent,
                        retransmit_2xx=False, codecs=config.media.codecs)
        tenant = config.tenant_for_call(peer.host, invite.domain)
        info = call_info(invite, tenant.name)
        call = Call(info=info, dialog=dialog, peer=peer, invite=tx)
        ringing = dialog.ring(trio.current_time())
        if not dialog.terminated:
            # A call exists only once its resources are held: refused here, nobody hears of it.
            call.media = self._allocate_media(call)
            if call.media is None:
                ringing = dialog.reject(503, "Service Unavailable - no media resources",
                                        headers=[("Retry-After", RETRY_AFTER_RESOURCES)])
        if dialog.terminated:  # refused before it rang: nobody was told of this call
            for action in ringing:
                if isinstance(action, Respond):
                    tx.respond(action.response)
            return
        self._register(call)
        try:
            self._perform(call, ringing)
            if config.sip.answer_delay:
                self._nursery.start_soon(self._answer_later, call, config.sip.answer_delay)
            else:
                self._answer(call)
        except Exception:  # the call's setup boundary: a published call always ends
            log.exception("call_setup_failed", call_id=call.id)
            self._perform(call, dialog.reject(500, "Server Internal Error")
                          or dialog.hang_up(EndReason.ERROR, trio.current_time()))
            self._finish(call, EndReason.ERROR)

    def _allocate_media(self, call: Call) -> RtpSockets | None:
        """Take an RTP port pair for call, or None (logged, counted) when none can be had."""
        try:
            return self.ports.allocate()
        except PortsExhausted:
            log.error("rtp_ports_exhausted", call_id=call.id)
            self.metrics.calls_refused.labels("rtp_ports").inc()
        except SocketsUnavailable as exc:
            log.error("call_resources_unavailable", call_id=call.id, error=str(exc))
            self.metrics.calls_refused.labels("descriptors").inc()
        return None

    def _in_dialog(self, call: Call | None, request: Request, tx: ServerTx) -> None:
        if call is None:
            if request.method == "INVITE":
                tx.respond(make_response(request, 100, "Trying"))
            tx.respond(unknown_dialog(request))
            return
        self._perform(call, call.dialog.receive(request, trio.current_time()), tx)

    async def _answer_later(self, call: Call, delay: float) -> None:
        """Let the call ring for `delay` (sip.answer_delay) unless it ends first, then answer."""
        with trio.move_on_after(delay):
            await call.ended.wait()
        self._answer(call)

    def _answer(self, call: Call) -> None:
        """Send the 2xx with our media; the dialog's timers run until the ACK."""
        if call.media is None or call.dialog.state is not DialogState.EARLY:
            return
        address = media_host(self.live.current.media, self._sip.local_host(call.peer.host))
        self._perform(call, call.dialog.answer(address, call.media.port, trio.current_time()))
        self._nursery.start_soon(self._keep_timers, call)

    async def _keep_timers(self, call: Call) -> None:
        """Fire the dialog's timers (the ACK timeout) until it has none left."""
        while (deadline := call.dialog.next_deadline) is not None:
            with trio.move_on_at(deadline):
                await call.settled.wait()
            actions = call.dialog.timer_fired(trio.current_time())
            if Ended(ACK_TIMEOUT) in actions:
                log.warning("sip_ack_timeout", call_id=call.id)
            self._perform(call, actions)

    # -- the one place dialog actions become I/O -----------------------------------------

    def _perform(self, call: Call, actions: list[Action], tx: ServerTx | None = None) -> None:
        for action in actions:
            if isinstance(action, Respond):
                target = call.invite if action.request is call.dialog.invite.request else tx
                assert target is not None, "a response to a request the dialog was not fed"
                target.respond(action.response)
            elif isinstance(action, SendRequest) and action.request.method == "REFER":
                self._nursery.start_soon(self._send_refer, call, action)
            elif isinstance(action, SendRequest):
                self._byes_in_flight += 1
                call.bye_in_flight = True
                self._nursery.start_soon(self._send_bye, call, action)
            elif isinstance(action, Confirmed):
                self._confirm(call)
            elif isinstance(action, MediaChanged):
                log.info("call_media_updated", call_id=call.id, on_hold=action.answer.on_hold,
                         progress="realtime")
            elif isinstance(action, TransferProgress):
                log.info("call_transfer_progress", call_id=call.id, status=action.status,
                         progress="realtime")
                self.bus.emit(TransferProgressed, call.id, status=action.status,
                              reason=action.reason)
            elif isinstance(action, TransferDone):
                self._transfer_done(call, action)
            elif isinstance(action, Ended):
                self._end(call, end_reason(action.reason))

    def _register(self, call: Call) -> None:
        self._calls[call.id] = call
        self._dialogs[call.dialog.key] = call
        self._invites[call.dialog.invite.key] = call
        if self._idle.is_set():
            self._idle = trio.Event()
        self.bus.register(call.info)
        log.info("call_ringing", call_id=call.id, tenant=call.info.tenant,
                 caller=call.info.caller, callee_extension=call.info.callee_extension,
                 progress="realtime")

    def _confirm(self, call: Call) -> None:
        call.settled.set()
        call.confirmed_at = trio.current_time()
        call.started_at = utc_now()
        self.metrics.active_calls.inc()
        info = call.info
        self.bus.emit(CallStarted, call.id, **call_started_fields(info, call.started_at))
        call.running = True
        self._nursery.start_soon(self._run_call, call)

    # -- ending --------------------------------------------------------------------------

    def _end(self, call: Call, reason: EndReason) -> None:
        """The dialog ended: a running call task is cancelled and cleans up, else clean up now."""
        call.settled.set()
        if call.running:
            call.end_reason = call.end_reason or reason
            call.scope.cancel()
        else:
            self._finish(call, reason)

    def _finish(self, call: Call, reason: EndReason) -> None:
        """The one place a call is cleaned up: release media, publish CallEnded."""
        if call.finished:
            return
        call.finished = True
        if call.media is not None:
            self.ports.release(call.media)
            call.media = None
        self._invites.pop(call.dialog.invite.key, None)
        if not call.bye_in_flight:
            self._dialogs.pop(call.dialog.key, None)
        call.ended.set()
        if call.transfer is not None:
            call.transfer.scope.cancel()
        self._calls.pop(call.id, None)
        duration = trio.current_time() - call.confirmed_at if call.confirmed_at else 0.0
        if call.confirmed_at is not None:
            self.metrics.active_calls.dec()
        self.bus.emit(CallEnded, call.id, reason=reason, duration=round(duration, 3))
        self._check_idle()

    def _check_idle(self) -> None:
        if not self._calls and not self._byes_in_flight:
            self._idle.set()

    async def _run_call(self, call: Call) -> None:
        """Run one confirmed call to its end; whatever happens inside ends this call only."""
        reason = EndReason.ERROR
        try:
            with call.scope:
                await self._media_loop(call)
            reason = call.end_reason or EndReason.SHUTDOWN
        except Exception:  # a voice bot failure (VoicebotFailed) or a media error
            log.exception("call_failed", call_id=call.id)
        finally:
            call.running = False
            self._perform(call, call.dialog.hang_up(reason, trio.current_time()))
            self._finish(call, call.end_reason or reason)

    async def _media_loop(self, call: Call) -> None:
        """Run the call's RTP session; end the call after media.timeout without inbound RTP."""
        assert call.media is not None
        config = self.live.current.media
        bus, call_id, dialog = self.bus, call.id, call.dialog

        def on_dtmf(key: DtmfDigit) -> None:
            bus.emit(Dtmf, call_id, digit=key.digit, duration=key.duration)

        record_as = self._recording_name(call)
        record_to = None if record_as is None else self.live.current.recordings_dir / record_as
        session = open_media_session(
            call.media, lambda: dialog.answer_sdp,
            session_settings(config, call.id, call_record_to=record_to), call_id=call.id,
            clock=self.media_clock, clock_nursery=self._nursery, on_dtmf=on_dtmf,
            may_send_to=self._may_send_media_to, metrics=self.metrics)
        try:
            async with session:
                if self.voicebot is None:
                    await discard_inbound(session)
                else:  # returns only if the bot hung up; raises if it failed
                    await self.voicebot.run(call.info, session, self.bus, call.prompts_out)
                    call.end_reason = call.end_reason or EndReason.BOT_HANGUP
        finally:  # the session has completed the file, however the call ended
            saved = session.call_recording
            if record_as is not None and saved is not None:
                self.bus.emit(CallRecorded, call.id, file=record_as, duration=saved.seconds,
                              bytes=saved.bytes)
        if session.timed_out:
            call.end_reason = EndReason.MEDIA_TIMEOUT
            log.warning("call_media_timeout", call_id=call.id, timeout=config.timeout)

    def _recording_name(self, call: Call) -> str | None:
        """Where the call's recording goes under [recordings] dir, if its tenant records."""
        tenant = self.live.current.tenant_named(call.info.tenant)
        if tenant is None or not tenant.record:
            return None
        return recording_name(call.id, call.started_at or utc_now())

    def _may_send_media_to(self, host: str) -> bool:
        """Whether RTP may go to host before its packets arrive (strict RTP): the live
        sip.trusted or media.allowed_peers."""
        config = self.live.current
        return config.sip.is_trusted(host) or config.media.is_allowed_peer(host)

    async def _send_bye(self, call: Call, bye: SendRequest) -> None:
        """Send our BYE and wait briefly for its answer; a crossing BYE finds the dialog."""
        try:
            try:
                destination = await self._sip.resolve(bye.next_hop, call.peer)
            except NextHopUnresolved as exc:
                log.warning("sip_bye_abandoned", call_id=call.id, reason=str(exc))
                return
            with trio.move_on_after(BYE_WAIT):
                response = await self._sip.send_request(bye.request, destination,
                                                         nursery=self._nursery)
                log.info("sip_bye_sent", call_id=call.id,
                         status=response.status if response else None)
        finally:
            self._byes_in_flight -= 1
            call.bye_in_flight = False
            if call.finished:
                self._dialogs.pop(call.dialog.key, None)
            self._check_idle()

    # -- transfers (Take this call) ------------------------------------------------------

    def transfer(self, call: Call, requested_by: str) -> str:
        """Start handing the call to its callee through the PBX; the Refer-To URI."""
        if call.finished or call.dialog.state is not DialogState.CONFIRMED or not call.running:
            raise TransferNotPossible("not_live", "the call is not in progress")
        if call.transfer is not None:
            raise TransferNotPossible("in_progress", "a transfer of this call is in progress")
        config = self.live.current
        tenant = config.tenant_named(call.info.tenant) or config.default_tenant
        try:
            target = render_refer_to(tenant.transfer_target,
                                     extension=call.info.callee_extension or call.info.callee,
                                     pbx_host=call.peer.host, tenant=call.info.tenant)
        except InvalidTransferTarget as exc:
            raise TransferNotPossible("bad_target", f"tenants.transfer_target: {exc}") from None
        call.transfer = Transfer(target)
        log.info("call_transfer_started", call_id=call.id, target=target,
                 requested_by=requested_by, progress="realtime")
        self.bus.emit(TransferStarted, call.id, target=target, requested_by=requested_by)
        self._nursery.start_soon(self._transfer, call, call.transfer)
        return target

    async def _transfer(self, call: Call, transfer: Transfer) -> None:
        """Say the transfer line, send the REFER, and fire its timer until it is decided."""
        with transfer.scope:  # cancelled when the call ends
            if self.voicebot is not None:
                await self._say_and_wait(call, Line.TRANSFER)
            timeout = self.live.current.sip.transfer_timeout
            self._perform(call, call.dialog.refer(transfer.target, trio.current_time(),
                                                  timeout=timeout))
            if not call.dialog.transferring:  # the call ended meanwhile
                return
            while call.transfer is transfer:
                deadline = call.dialog.next_deadline
                with trio.move_on_at(math.inf if deadline is None else deadline):
                    await transfer.done.wait()
                if call.transfer is transfer:
                    self._perform(call, call.dialog.timer_fired(trio.current_time()))

    async def _say_and_wait(self, call: Call, line: Line) -> None:
        """Have the bot say line and wait until it has been played (at most LINE_WAIT)."""
        said = trio.Event()
        played_at = [0.0]

        def played(queued: float) -> None:
            played_at[0] = trio.current_time() + queued
            said.set()

        self._prompt(call, Prompt(line, played))
        with trio.move_on_after(LINE_WAIT):
            await said.wait()
            await trio.sleep_until(played_at[0])

    def _prompt(self, call: Call, prompt: Prompt) -> None:
        with contextlib.suppress(*_CHANNEL_GONE):
            call.prompts.send_nowait(prompt)

    async def _send_refer(self, call: Call, refer: SendRequest) -> None:
        """Send our REFER; its final answer (None: none, or no next hop) goes to the dialog."""
        response: Response | None = None
        try:
            destination = await self._sip.resolve(refer.next_hop, call.peer)
        except NextHopUnresolved as exc:
            log.warning("sip_refer_abandoned", call_id=call.id, reason=str(exc))
        else:
            log.info("sip_refer_sent", call_id=call.id, progress="realtime")
            response = await self._sip.send_request(refer.request, destination,
                                                     nursery=self._nursery)
        if not call.finished:
            self._perform(call, call.dialog.refer_answered(response, trio.current_time()))

    def _transfer_done(self, call: Call, done: TransferDone) -> None:
        transfer, call.transfer = call.transfer, None
        if transfer is not None:
            transfer.done.set()
        if done.succeeded:
            log.info("call_transferred", call_id=call.id, status=done.status,
                     progress="realtime")
            return
        log.warning("call_transfer_failed", call_id=call.id, reason=done.reason,
                    status=done.status, progress="realtime")
        self.bus.emit(TransferFailed, call.id, reason=done.reason, status=done.status)
        if not call.finished:
            self._prompt(call, Prompt(Line.TRANSFER_FAILED))

    async def stop(self) -> None:
        """Refuse new calls, hang up every call, and wait until all have ended and said BYE."""
        self.stopping = True
        for call in list(self._calls.values()):
            self._perform(call, call.dialog.hang_up(EndReason.SHUTDOWN, trio.current_time()))
        self._check_idle()
        await self._idle.wait()


async def serve_calls(live: LiveConfig, bus: EventBus, metrics: Metrics, sip: Requests,
                      voicebot: CallBot | None = None, *,
                      task_status: trio.TaskStatus[CallManager] = trio.TASK_STATUS_IGNORED
                      ) -> None:
    """Run the calls nursery (one task per call) until cancelled; reports the CallManager."""
    media = live.current.media
    low, high = media.rtp_ports
    ports = RtpPortPool(media.address, low, high)
    metrics.rtp_ports_free.set_function(lambda: ports.free)
    async with trio.open_nursery() as nursery:
        task_status.started(CallManager(live, bus, metrics, ports, sip, nursery,
                                        voicebot=voicebot))
        await trio.sleep_forever()  # the nursery stays open for calls yet to come

