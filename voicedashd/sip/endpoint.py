"""The SIP endpoint: parses what the transport delivers, matches transactions, runs them."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog
import trio

from ..config import SipConfig
from ..metrics import Metrics
from .advertise import sip_host, uri_host
from .fields import InvalidHeader, Via, new_branch, new_tag
from .message import Message, Request, Response
from .parser import SipParseError, make_response, parse_message, serialize
from .resolve import NextHopUnresolved, Resolver, is_ip_literal, system_resolver, uri_target
from .transaction import (
    Action,
    InvalidTransactionHeaders,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    Terminated,
    TransactionKey,
    client_key,
    invite_ack_key,
    server_key,
)
from .transaction_runner import (
    ServerTransactionRunner,
    run_client_transaction,
)
from .transport import Peer, Transport
from .validate import KNOWN_METHODS, check_request
from .via import response_destination, stamp_via

log = structlog.get_logger(__name__)

INBOX_SIZE = 16
RESOLVE_TIMEOUT = 2.0  # how long our BYE waits for its next hop's name to resolve
_CHANNEL_GONE = (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError)


class TransactionWatch(Protocol):
    """Told when a server transaction opens (with its source host) and when it ends."""

    def opened(self, key: TransactionKey, host: str) -> None:
        """A request from host opened the transaction key."""

    def closed(self, key: TransactionKey) -> None:
        """The transaction key ended."""


class Core(Protocol):
    """The transaction user: what the endpoint hands requests and transaction outcomes to.

    Each is called in the transport's task and must not block: work that waits (a delayed
    answer) goes to a task of the core's own, answering later through tx.
    """

    def handle_request(self, request: Request, peer: Peer, tx: ServerTx) -> None:
        """Answer a new request (INVITE, BYE, CANCEL, OPTIONS) through tx."""

    def handle_ack(self, ack: Request, peer: Peer) -> None:
        """Take an ACK for a 2xx (it has no server transaction of its own)."""

    def transaction_action(self, request: Request, action: Action) -> None:
        """Take an INVITE transaction's outcome (the ACK passed up, a timeout)."""


@dataclass
class ServerTx:
    """The TU's handle on one server transaction: respond, and count final responses."""

    runner: ServerTransactionRunner
    metrics: Metrics
    final_status: int | None = None

    @property
    def request(self) -> Request:
        """The request that opened the transaction."""
        return self.runner.tx.request

    def respond(self, response: Response) -> None:
        """Send a response through the transaction (at once; a no-op once it has ended)."""
        if response.status >= 200 and self.final_status is None:
            self.final_status = response.status
            self.metrics.sip_requests.labels(method_label(self.request.method),
                                             str(response.status)).inc()
        self.runner.respond(response)


@dataclass
class SipEndpoint:
    """Turns datagrams and stream messages into transactions for the core."""

    transport: Transport
    core: Core
    nursery: trio.Nursery
    metrics: Metrics
    client: SipClient
    watch: TransactionWatch | None = None
    _server: dict[TransactionKey, ServerTransactionRunner] = field(default_factory=dict)
    _invites_by_ack: dict[TransactionKey, TransactionKey] = field(default_factory=dict)

    # -- inbound -------------------------------------------------------------------------

    def handle(self, data: bytes, peer: Peer) -> None:
        """Take one message from the transport (never raises)."""
        try:
            message = parse_message(data, datagram=not peer.reliable)
        except SipParseError as exc:
            self.metrics.sip_malformed.inc()
            log.info("sip_malformed", peer=f"{peer.host}:{peer.port}", reason=exc.reason,
                     status=exc.status)
            if exc.request is not None and exc.request.method != "ACK":
                self._reply_statelessly(exc.request, peer, exc.status, exc.reason)
            return
        if isinstance(message, Response):
            self._handle_response(message)
        else:
            self._handle_request(message, peer)

    def refuse(self, data: bytes, peer: Peer, status: int, reason: str) -> None:
        """Answer a request with status without a transaction; anything else is dropped."""
        try:
            message = parse_message(data, datagram=not peer.reliable)
        except SipParseError as exc:
            message = exc.request
        if isinstance(message, Request) and message.method != "ACK":
            self._reply_statelessly(message, peer, status, reason)

    def _reply_statelessly(self, request: Request, peer: Peer, status: int, reason: str) -> None:
        self.metrics.sip_requests.labels(method_label(request.method), str(status)).inc()
        try:
            via = stamp_via(request.headers, peer)
            response = make_response(request, status, reason, to_tag=new_tag())
        except (InvalidHeader, ValueError):
            return  # without a usable Via the answer could not be matched to the request
        self._send(response, response_destination(via, peer))

    def _handle_request(self, request: Request, peer: Peer) -> None:
        try:
            via = stamp_via(request.headers, peer)
            key = server_key(request)
        except (InvalidHeader, InvalidTransactionHeaders) as exc:
            self._reply_statelessly(request, peer, 400, f"Bad Request - {exc}")
            return
        runner = self._server.get(key)
        if runner is None and request.method == "ACK":
            invite_key = self._invites_by_ack.get(invite_ack_key(request))
            runner = self._server.get(invite_key) if invite_key else None
            if runner is None:
                self.core.handle_ack(request, peer)
                return
        if runner is not None:
            runner.receive(request)
            return
        self._start_server_transaction(request, peer, key, via)

    def _start_server_transaction(self, request: Request, peer: Peer,
                                  key: TransactionKey, via: Via) -> None:
        now = trio.current_time()
        tx: InviteServerTransaction | NonInviteServerTransaction
        if request.method == "INVITE":
            tx = InviteServerTransaction(request, now, reliable=peer.reliable)
        else:
            tx = NonInviteServerTransaction(request, now, reliable=peer.reliable)
        # Every response of a transaction (timer G's resends too) goes to the same place.
        runner = ServerTransactionRunner(tx, self, key=key,
                                         destination=response_destination(via, peer))
        self._server[key] = runner
        if request.method == "INVITE":
            self._invites_by_ack[invite_ack_key(request)] = key
        if self.watch is not None:
            self.watch.opened(key, peer.host)
        self.nursery.start_soon(runner.run)
        handle = ServerTx(runner, self.metrics)
        problem = check_request(request)
        if problem is not None:
            handle.respond(problem)
        else:
            self._handle_request_safely(request, peer, handle)

    # -- the runners' TransactionUser ----------------------------------------------------

    def send_response(self, runner: ServerTransactionRunner, message: Message) -> None:
        """Send a server transaction's message where its responses go."""
        self._send(message, runner.destination)

    def transaction_action(self, runner: ServerTransactionRunner, action: Action) -> None:
        """Forget an ended transaction; pass anything else to the core."""
        request = runner.tx.request
        if isinstance(action, Terminated):
            self._server.pop(runner.key, None)
            if self.watch is not None:
                self.watch.closed(runner.key)
            if request.method == "INVITE":
                self._invites_by_ack.pop(invite_ack_key(request), None)
            return
        try:
            self.core.transaction_action(request, action)
        except Exception:
            log.exception("sip_transaction_action_failed", method=request.method,
                          call_id=request.headers.get("Call-ID"))

    def _handle_request_safely(self, request: Request, peer: Peer, tx: ServerTx) -> None:
        """Let the core answer one request; a bug there fails this request only (500)."""
        try:
            self.core.handle_request(request, peer, tx)
        except Exception:
            log.exception("sip_request_failed", method=request.method,
                          call_id=request.headers.get("Call-ID"))
            if tx.final_status is None:
                tx.respond(make_response(request, 500, "Server Internal Error",
                                         to_tag=new_tag()))

    def _handle_response(self, response: Response) -> None:
        self.client.deliver(response)

    # -- outbound ------------------------------------------------------------------------

    def _send(self, message: Message, destination: Peer) -> None:
        """Serialise and send; sends happen in the transport's task, so nothing may escape."""
        try:
            data = serialize(message)
        except ValueError as exc:  # a CR/LF smuggled into a header we copied or built
            log.error("sip_response_unserializable", error=str(exc),
                      call_id=message.headers.get("Call-ID"))
            return
        self.transport.send_nowait(data, destination)


class SipClient:
    """Sends our own requests (BYE) as client transactions; the endpoint hands it responses."""

    def __init__(self, transport: Transport, settings: Callable[[], SipConfig], *,
                 resolver: Resolver = system_resolver,
                 resolve_timeout: float = RESOLVE_TIMEOUT) -> None:
        self.transport = transport
        self._settings = settings
        self._resolver = resolver
        self._resolve_timeout = resolve_timeout
        self._inboxes: dict[TransactionKey, trio.MemorySendChannel[Response]] = {}

    def local_host(self, peer_host: str) -> str:
        """The address our Contact and Via name for a peer (sip.public_address, else ours)."""
        return sip_host(self._settings(), self.transport.local.host, peer_host)

    def new_via(self, destination: Peer) -> str:
        """Return a Via value for a request we send to destination, with a fresh branch."""
        host = uri_host(self.local_host(destination.host))
        return (f"SIP/2.0/{destination.transport} {host}:{self.transport.local.port}"
                f";branch={new_branch()};rport")

    def deliver(self, response: Response) -> None:
        """Pass a response to the client transaction it answers; others are dropped."""
        try:
            key = client_key(response)
        except (InvalidHeader, InvalidTransactionHeaders):
            return
        inbox = self._inboxes.get(key)
        if inbox is not None:
            with contextlib.suppress(*_CHANNEL_GONE):
                inbox.send_nowait(response)

    async def resolve(self, uri: str, dialog_peer: Peer) -> Peer:
        """Where an in-dialog request goes: the dialog's TCP connection, or the URI's address.

        A host name (a PBX's, from a Record-Route or Contact) is resolved by the resolver off
        the event loop; NextHopUnresolved if that takes longer than the resolve timeout. A URI
        without a usable host, or a name that does not resolve, falls back to dialog_peer.
        """
        if dialog_peer.reliable:
            return dialog_peer
        target = uri_target(uri)
        if target is None:
            return dialog_peer
        host, port = target
        if is_ip_literal(host):
            return Peer("UDP", host, port)
        with trio.move_on_after(self._resolve_timeout):
            try:
                address = await self._resolver(host, port)
            except OSError:
                return dialog_peer
            return Peer("UDP", address, port) if is_ip_literal(address) else dialog_peer
        raise NextHopUnresolved(
            f"{host[:80]!r} not resolved within {self._resolve_timeout:g}s")

    async def send_request(self, request: Request, destination: Peer, *,
                           nursery: trio.Nursery) -> Response | None:
        """Send a non-INVITE request (our Via added on top); its final response, or None.

        The transaction lingers in nursery after the answer, to absorb retransmitted responses.
        """
        request.headers.items.insert(0, ("Via", self.new_via(destination)))
        key = client_key(request)
        send, receive = trio.open_memory_channel[Response](INBOX_SIZE)
        self._inboxes[key] = send
        tx = NonInviteClientTransaction(request, reliable=destination.reliable)

        async def transmit(message: Request | Response) -> None:
            await self.transport.send(serialize(message), destination)

        async def run(task_status: trio.TaskStatus[Response | None]) -> None:
            try:
                await run_client_transaction(tx, receive, transmit, task_status=task_status)
            finally:
                self._inboxes.pop(key, None)

        return await nursery.start(run)


def method_label(method: str) -> str:
    """A metrics label for a method: known methods by name, anything else as "other"."""
    return method if method in KNOWN_METHODS else "other"

