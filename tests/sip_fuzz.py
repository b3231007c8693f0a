"""The daemon's whole SIP input path without sockets, fed generated cases (tests/sip_mutations).

`InputPath` does with bytes what the endpoint and the call manager do, with the same
functions: the datagram parser or the TCP stream framer, Via stamping and the response
target, transaction matching and the server transactions with their timers, request checks,
`parse_invite` and a `Dialog` per call (ring, answer, everything it is fed, its timers, our
BYE with its next hop and client transaction), responses to our requests. Whatever they send
is serialised. Any exception that the daemon does not catch and answer itself is a failure,
and so is a response aimed anywhere but the address the request came from.

Used by `scripts/fuzz-sip` (a million messages) and by tests/unit/test_sip_fuzz.py (a few
thousand).
"""

from __future__ import annotations

import time
import traceback
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from tests.sip_mutations import CALL_ID, TO_TAG, Case
from voicedashd.sip.dialog import (
    Confirmed,
    Dialog,
    DialogKey,
    Ended,
    InvalidInvite,
    InviteKey,
    MediaChanged,
    Respond,
    SendRequest,
    dialog_key,
    invite_key,
    parse_invite,
    unknown_dialog,
)
from voicedashd.sip.fields import InvalidHeader, new_branch, new_tag, tag_of
from voicedashd.sip.message import Message, Request, Response
from voicedashd.sip.parser import SipParseError, StreamFramer, make_response, parse_message
from voicedashd.sip.parser import serialize as serialize_message
from voicedashd.sip.resolve import uri_target
from voicedashd.sip.transaction import (
    Action,
    InvalidTransactionHeaders,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    PassToCore,
    Send,
    ServerTransaction,
    Terminated,
    TransactionKey,
    client_key,
    invite_ack_key,
    server_key,
)
from voicedashd.sip.transport import Peer
from voicedashd.sip.validate import KNOWN_METHODS, allow_header, check_request
from voicedashd.sip.via import response_destination, stamp_via

CONTACT = "<sip:127.0.0.1:5070>"
DRAIN_EVERY = 64  # cases between letting every timer run out (keeps the state bounded)


class BadDestination(AssertionError):
    """A response was aimed at an address other than the request's source."""


@dataclass
class Failure:
    """One uncaught exception: the case, the message being handled, the traceback."""

    case: Case
    message: bytes
    error: str


@dataclass
class _Server:
    tx: ServerTransaction
    destination: Peer


@dataclass
class _Call:
    dialog: Dialog
    invite_key: TransactionKey


@dataclass
class Report:
    """What a fuzz run did: messages fed, outcomes counted, failures kept (the first few)."""

    cases: int = 0
    messages: int = 0
    seconds: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    failure_count: int = 0


class InputPath:
    """What the endpoint and the call manager do with SIP bytes, minus sockets and clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self._server: dict[TransactionKey, _Server] = {}
        self._invites_by_ack: dict[TransactionKey, TransactionKey] = {}
        self._dialogs: dict[DialogKey, _Call] = {}
        self._invites: dict[InviteKey, _Call] = {}
        self._clients: dict[TransactionKey, NonInviteClientTransaction] = {}
        self._calls: list[_Call] = []
        self._statuses: list[int] = []
        self.local_tags: dict[str, str] = {}
        self.answers: list[bytes] = []  # the peer's answers to our BYEs, to feed back

    # -- the endpoint ---------------------------------------------------------------------------

    def handle(self, data: bytes, peer: Peer) -> str:
        """Take one message as the endpoint does; return what happened to it."""
        self._statuses = []
        try:
            message = parse_message(data, datagram=not peer.reliable)
        except SipParseError as exc:
            if exc.request is not None and exc.request.method != "ACK":
                self._reply_statelessly(exc.request, peer, exc.status, exc.reason)
            return f"malformed {exc.status}"
        if isinstance(message, Response):
            return self._response(message)
        self._request(message, peer)
        method = message.method if message.method in KNOWN_METHODS else "other"
        return f"{method} {self._statuses[-1] if self._statuses else '-'}"

    def _reply_statelessly(self, request: Request, peer: Peer, status: int, reason: str) -> None:
        try:
            via = stamp_via(request.headers, peer)
            response = make_response(request, status, reason, to_tag=new_tag())
        except (InvalidHeader, ValueError):
            return
        self._send(response, response_destination(via, peer), peer)

    def _request(self, request: Request, peer: Peer) -> None:
        try:
            via = stamp_via(request.headers, peer)
            key = server_key(request)
        except (InvalidHeader, InvalidTransactionHeaders) as exc:
            self._reply_statelessly(request, peer, 400, f"Bad Request - {exc}")
            return
        server = self._server.get(key)
        if server is None and request.method == "ACK":
            invite = self._invites_by_ack.get(invite_ack_key(request))
            server = self._server.get(invite) if invite else None
            if server is None or invite is None:
                self._ack(request)
                return
            key = invite
        if server is not None:
            self._perform(key, server.tx.receive(request, self.now))
            return
        if request.method == "INVITE":
            tx: ServerTransaction = InviteServerTransaction(request, self.now,
                                                            reliable=peer.reliable)
            self._invites_by_ack[invite_ack_key(request)] = key
        else:
            tx = NonInviteServerTransaction(request, self.now, reliable=peer.reliable)
        self._server[key] = _Server(tx, response_destination(via, peer))
        problem = check_request(request)
        if problem is not None:
            self._respond(key, problem)
        else:
            self._core(request, peer, key)

    def _response(self, response: Response) -> str:
        try:
            key = client_key(response)
        except (InvalidHeader, InvalidTransactionHeaders):
            return "response unmatchable"
        client = self._clients.get(key)
        if client is None:
            return "response stray"
        client.receive(response, self.now)
        return "response matched"

    def _respond(self, key: TransactionKey, response: Response) -> None:
        server = self._server.get(key)
        if server is not None and not server.tx.terminated:
            self._perform(key, server.tx.respond(response, self.now))

    def _perform(self, key: TransactionKey, actions: list[Action]) -> None:
        server = self._server[key]
        for action in actions:
            if isinstance(action, Send):
                self._send(action.message, server.destination, None)
            elif isinstance(action, Terminated):
                self._server.pop(key, None)
                if server.tx.request.method == "INVITE":
                    self._invites_by_ack.pop(invite_ack_key(server.tx.request), None)
            elif isinstance(action, PassToCore) and server.tx.request.method == "INVITE":
                self._ack(action.request)

    def _send(self, message: Message, destination: Peer, source: Peer | None) -> None:
        if source is not None and destination.host != source.host:
            raise BadDestination(f"response to {source} aimed at {destination}")
        if isinstance(message, Response):
            self._statuses.append(message.status)
        serialize(message)

    # -- the call manager -------------------------------------------------------------------------

    def _core(self, request: Request, peer: Peer, key: TransactionKey) -> None:
        method = request.method
        if method == "INVITE" and tag_of(request.headers.get("To")) is None:
            self._invite(request, peer, key)
        elif method in ("INVITE", "BYE"):
            self._in_dialog(self._dialogs.get(dialog_key(request)), request, key)
        elif method == "CANCEL":
            self._in_dialog(self._invites.get(invite_key(request)), request, key)
        elif method == "OPTIONS":
            self._respond(key, make_response(request, 200, "OK", to_tag=new_tag(),
                                             headers=[allow_header()]))
        else:
            self._respond(key, make_response(request, 405, "Method Not Allowed",
                                             to_tag=new_tag(), headers=[allow_header()]))

    def _invite(self, request: Request, peer: Peer, key: TransactionKey) -> None:
        self._respond(key, make_response(request, 100, "Trying"))
        if invite_key(request) in self._invites:
            self._respond(key, make_response(request, 482, "Loop Detected", to_tag=new_tag()))
            return
        try:
            invite = parse_invite(request, transport=peer.transport)
        except InvalidInvite as exc:
            self._respond(key, make_response(request, exc.status, exc.reason, to_tag=new_tag(),
                                             headers=exc.headers))
            return
        dialog = Dialog(invite, contact=CONTACT, user_agent="fuzz", retransmit_2xx=False)
        call = _Call(dialog, key)
        ringing = dialog.ring(self.now)
        if dialog.terminated:
            for action in ringing:
                if isinstance(action, Respond):
                    self._respond(key, action.response)
            return
        self._dialogs[dialog.key] = call
        self._invites[invite.key] = call
        self._calls.append(call)
        self.local_tags[invite.call_id] = dialog.local_tag
        self._dialog_actions(call, ringing, key)
        self._dialog_actions(call, dialog.answer("127.0.0.1", 20000, self.now), key)

    def _in_dialog(self, call: _Call | None, request: Request, key: TransactionKey) -> None:
        if call is None:
            if request.method == "INVITE":
                self._respond(key, make_response(request, 100, "Trying"))
            self._respond(key, unknown_dialog(request))
            return
        self._dialog_actions(call, call.dialog.receive(request, self.now), key)

    def _ack(self, ack: Request) -> None:
        call = self._dialogs.get(dialog_key(ack))
        if call is not None:
            self._dialog_actions(call, call.dialog.receive(ack, self.now), None)

    def _dialog_actions(self, call: _Call, actions: Iterable[object],
                        key: TransactionKey | None) -> None:
        for action in actions:
            if isinstance(action, Respond):
                target = call.invite_key if action.request is call.dialog.invite.request else key
                assert target is not None, "a response to a request the dialog was not fed"
                self._respond(target, action.response)
            elif isinstance(action, SendRequest):
                self._send_bye(action)
            elif isinstance(action, Ended):
                self._invites.pop(call.dialog.invite.key, None)
                self._dialogs.pop(call.dialog.key, None)
            else:
                assert isinstance(action, Confirmed | MediaChanged), action

    def _send_bye(self, bye: SendRequest) -> None:
        """Our BYE as the SIP client sends it: next hop, Via, client transaction."""
        uri_target(bye.next_hop)
        request = bye.request
        request.headers.items.insert(0, ("Via", f"SIP/2.0/UDP 127.0.0.1:5070;branch="
                                                f"{new_branch()};rport"))
        client = NonInviteClientTransaction(request)
        self._clients[client_key(request)] = client
        for action in client.start(self.now):
            if isinstance(action, Send):
                serialize(action.message)
        # The peer's answer comes back through the same input path.
        self.answers.append(serialize(make_response(request, 200, "OK")))

    # -- time -------------------------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Let time pass and fire every timer that is due."""
        self.now += seconds
        for key, server in list(self._server.items()):
            deadline = server.tx.next_deadline
            if key in self._server and deadline is not None and deadline <= self.now:
                self._perform(key, server.tx.timer_fired(self.now))
        for call in list(self._calls):
            deadline = call.dialog.next_deadline
            if deadline is not None and deadline <= self.now:
                self._dialog_actions(call, call.dialog.timer_fired(self.now), None)
        for key, client in list(self._clients.items()):
            deadline = client.next_deadline
            if deadline is not None and deadline <= self.now:
                for action in client.timer_fired(self.now):
                    if isinstance(action, Send):
                        serialize(action.message)
            if client.terminated:
                del self._clients[key]

    def hang_up(self, call_id: str) -> None:
        """End this Call-ID's calls from our side, as a media timeout or the bot would."""
        for call in self._calls:
            if call.dialog.invite.call_id == call_id:
                self._dialog_actions(call, call.dialog.hang_up("bot_hangup", self.now), None)

    def drain(self) -> None:
        """Hang up every call and let every timer run out; forget what has ended."""
        for call in self._calls:
            self._dialog_actions(call, call.dialog.hang_up("shutdown", self.now), None)
        for _ in range(3):
            self.advance(70.0)
        self._calls = [c for c in self._calls if not c.dialog.terminated]
        self.local_tags.clear()


def serialize(message: Message) -> bytes:
    """Serialise as the transport would; a message that cannot be is a failure here."""
    return serialize_message(message)


PEERS = {"UDP": Peer("UDP", "127.0.0.1", 5060), "TCP": Peer("TCP", "127.0.0.1", 41000)}


def run_case(path: InputPath, index: int, case: Case, report: Report, *,
             keep_failures: int = 5) -> None:
    """Feed one case through the path, counting outcomes and failures into report."""
    call_id = f"fuzz{index}".encode()
    peer = PEERS[case.transport]
    messages = [m.replace(CALL_ID, call_id) for m in case.messages]
    report.cases += 1
    report.messages += len(messages)
    current = b""

    def fill_tag(message: bytes) -> bytes:
        return message.replace(TO_TAG, path.local_tags.get(call_id.decode(), "none").encode())

    try:
        if case.transport == "UDP":
            for message in messages:
                current = fill_tag(message)
                if current.strip(b"\r\n"):  # the transport drops keep-alives
                    report.outcomes[path.handle(current, peer)] += 1
        else:
            stream = b"\r\n".join(messages)
            current = stream
            framer = StreamFramer()
            position = 0
            try:
                for size in (*case.chunks, len(stream)):
                    chunk = stream[position:position + size]
                    position += size
                    for framed in framer.feed(chunk):
                        current = fill_tag(framed)
                        report.outcomes[path.handle(current, peer)] += 1
            except SipParseError:
                report.outcomes["stream unframeable"] += 1
        if index % 3 == 0:
            current = b"(hang-up)"
            path.hang_up(call_id.decode())
        while path.answers:
            current = path.answers.pop()
            report.outcomes[path.handle(current, PEERS["UDP"])] += 1
        current = b"(timers)"
        path.advance(0.7)
        if index % DRAIN_EVERY == DRAIN_EVERY - 1:
            path.drain()
    except Exception:
        report.failure_count += 1
        report.outcomes["uncaught exception"] += 1
        if len(report.failures) < keep_failures:
            report.failures.append(Failure(case, current, traceback.format_exc()))


def fuzz(cases: Iterable[Case], messages: int) -> Report:
    """Feed cases until `messages` messages have been fed; report what happened."""
    report = Report()
    path = InputPath()
    started = time.perf_counter()
    for index, case in enumerate(cases):
        if report.messages >= messages:
            break
        run_case(path, index, case, report)
    report.seconds = time.perf_counter() - started
    return report
