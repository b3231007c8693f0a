"""One hub connection: authentication, lobby, subscriptions with resume, backpressure, close."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import structlog
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from ..access import may_see
from ..auth import Authenticator, AuthUser, InvalidToken, decode_access_token
from ..bus import EventBus
from ..callstore import events_since, find_call
from ..config import HubConfig
from ..events import CallEvent, CallInfo
from ..livecfg import LiveConfig
from ..metrics import Metrics
from ..store import Store
from .protocol import (
    AUTH_TIMEOUT,
    BAD_REQUEST,
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_PING_TIMEOUT,
    CLOSE_POLICY,
    CLOSE_TOO_SLOW,
    CLOSE_UNAUTHORIZED,
    FORBIDDEN,
    INTERNAL_ERROR,
    NOT_FOUND,
    TOO_MANY_SUBSCRIPTIONS,
    Auth,
    Ping,
    ProtocolError,
    RequestId,
    SubscribeCall,
    TokenBucket,
    UnsubscribeCall,
    clip_reason,
    closing,
    encode,
    established,
    parse_message,
    pong,
    reply_error,
    reply_ok,
    too_slow_reason,
)
from .router import LOBBY_EVENTS, LOBBY_FINAL, Router

log = structlog.get_logger(__name__)

CLOSE_TIMEOUT = 5.0             # a server-initiated close, including the in-flight send
SHUTDOWN_CLOSE_TIMEOUT = 0.25   # per connection (in parallel) when the daemon stops
WIRE_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class HubDeps:
    """What the hub uses of the daemon."""

    live: LiveConfig
    bus: EventBus
    auth: Authenticator
    store: Store
    metrics: Metrics


@dataclass(frozen=True, slots=True)
class CloseRequest:
    """A server-initiated close: the code and the reason sent in the close frame."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Identity:
    """The authenticated user of a connection, their token (never logged) and its expiry."""

    user: AuthUser
    token: str
    expires_at: int


@dataclass(frozen=True, slots=True)
class _Message:
    """A prepared protocol message (reply, pong)."""

    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Backlog:
    """A successful subscribe reply, with the events the client missed."""

    request_id: RequestId
    call_id: str
    call: dict[str, Any]
    since_seq: int
    events: tuple[CallEvent, ...]


_Outgoing = CallEvent | _Message | _Backlog


@dataclass
class _Subscription:
    """A followed call; while its backlog is read, its live events wait in `held`."""

    held: list[CallEvent] | None = None


class WireCache:
    """Serialised frames of recent events, shared by every connection: one encode per event."""

    def __init__(self, size: int = WIRE_CACHE_SIZE) -> None:
        self._size = size
        self._frames: OrderedDict[tuple[str, int], str] = OrderedDict()

    def frame(self, event: CallEvent) -> str:
        """Return the text frame of an event."""
        key = (event.call_id, event.seq)
        text = self._frames.get(key)
        if text is None:
            text = encode(event.to_wire())
            self._frames[key] = text
            if len(self._frames) > self._size:
                self._frames.popitem(last=False)
        return text


class Session:
    """One accepted WebSocket from authentication to close; run() serves it."""

    def __init__(self, ws: WebSocketConnection, deps: HubDeps, router: Router, wire: WireCache,
                 header_token: str | None, remote: str) -> None:
        self._ws = ws
        self._deps = deps
        self._router = router
        self._wire = wire
        self._header_token = header_token
        self._remote = remote
        self._config: HubConfig = deps.live.current.hub
        self._identity: Identity | None = None
        self.closed_with: CloseRequest | None = None
        send, receive = trio.open_memory_channel[_Outgoing](self._config.queue_size)
        self._outgoing_send = send
        self._outgoing = receive
        self._subs: dict[str, _Subscription] = {}
        self._delivered: dict[str, int] = {}
        self._ending = trio.Event()
        self._close: CloseRequest | None = None
        self._sender_done = trio.Event()
        self._sending = False
        self._bucket = TokenBucket(self._config.rate_limit, self._config.rate_burst,
                                   trio.current_time())

    @property
    def user(self) -> AuthUser | None:
        """The authenticated user, once there is one."""
        return self._identity.user if self._identity else None

    async def run(self) -> CloseRequest | None:
        """Serve the connection until it ends; return the server's close, None if the peer left."""
        outcome: CloseRequest | None = CloseRequest(CLOSE_GOING_AWAY, "server is shutting down")
        timeout = SHUTDOWN_CLOSE_TIMEOUT
        try:
            refusal = await self._authenticate()
            if self._identity is None:
                outcome = refusal
            else:
                await self._serve()
                outcome = self._close
            timeout = CLOSE_TIMEOUT
        except* Exception:      # the connection's failure boundary: it ends this connection only
            log.exception("ws_connection_failed", remote=self._remote, **self._who())
            outcome = CloseRequest(CLOSE_INTERNAL, "internal error; reconnect")
            timeout = CLOSE_TIMEOUT
        finally:
            self.closed_with = outcome
            with trio.CancelScope(shield=True):
                with trio.move_on_after(timeout):
                    self.closed_with = await self._close_ws(outcome)
                if self._ws.closed is None:
                    await abort(self._ws)
        return self.closed_with

    # -- authentication ------------------------------------------------------------------

    async def _authenticate(self) -> CloseRequest | None:
        """Authenticate from the header or the first message; a CloseRequest on failure."""
        token = self._header_token
        via = "header"
        if token is None:
            via = "message"
            with trio.move_on_after(AUTH_TIMEOUT) as waiting:
                try:
                    raw = await self._ws.get_message()
                except ConnectionClosed:
                    return None
            if waiting.cancelled_caught:
                return CloseRequest(CLOSE_UNAUTHORIZED, f"authenticate within {AUTH_TIMEOUT:g}s:"
                                    ' send {"type":"auth","token":ACCESS_TOKEN} first')
            try:
                message = parse_message(raw)
            except ProtocolError as exc:
                return CloseRequest(CLOSE_UNAUTHORIZED, f"first message must be auth: "
                                    f"{exc.detail}")
            if not isinstance(message, Auth):
                return CloseRequest(CLOSE_UNAUTHORIZED, 'first message must be {"type":"auth",'
                                    '"token":ACCESS_TOKEN}')
            token = message.token
        try:
            user = await self._deps.auth.verify_access(token)
            config = self._deps.live.current
            expires_at = int(decode_access_token(token, config.jwt_secret, config.auth)["exp"])
        except InvalidToken as exc:
            log.info("ws_auth_failed", remote=self._remote, via=via, detail=exc.detail)
            return CloseRequest(CLOSE_UNAUTHORIZED, exc.detail)
        if expires_at <= time.time():
            log.info("ws_auth_failed", remote=self._remote, via=via, detail="expired")
            return CloseRequest(CLOSE_UNAUTHORIZED, "token expired; refresh it or log in again")
        self._identity = Identity(user, token, expires_at)
        log.info("ws_authenticated", remote=self._remote, via=via, **self._who())
        await self._send(encode(established(user.extension, user.role, user.tenant, expires_at,
                                            self._config.max_subscriptions)))
        return None

    # -- serving -------------------------------------------------------------------------

    async def _serve(self) -> None:
        assert self._identity is not None
        user = self._identity.user
        self._router.join(self, user.tenant, user.extension, admin=user.is_admin)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sender)
                async with trio.open_nursery() as requests:
                    requests.start_soon(self._receiver)
                    requests.start_soon(self._keepalive)
                    await self._ending.wait()
                    requests.cancel_scope.cancel()
                # Let the sender finish the frame it is writing (a cut frame would garble
                # the close), but not wait for ever on a peer that does not read.
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await self._sender_done.wait()
                nursery.cancel_scope.cancel()
        finally:
            for call_id in self._subs:
                self._router.unfollow(self, call_id)
            self._router.leave(self, user.tenant, user.extension)

    def _end(self, close: CloseRequest | None) -> None:
        """Stop serving: with a close to send, or None when the peer has gone."""
        if self._ending.is_set():
            return
        self._close = close
        self._ending.set()
        self._outgoing_send.close()             # wakes an idle sender; the queue is dropped

    def deliver(self, info: CallInfo, event: CallEvent) -> None:
        """Take an event from the router: never blocks, never raises; a full queue ends us."""
        if self._ending.is_set() or self._identity is None:
            return
        if not may_see(self._identity.user, info):
            return
        sub = self._subs.get(event.call_id)
        if sub is None:
            if isinstance(event, LOBBY_EVENTS):
                self._enqueue(event)
            return
        if sub.held is None:
            self._enqueue(event)
        elif len(sub.held) < self._config.queue_size:
            sub.held.append(event)
        else:
            self._too_slow()

    def _enqueue(self, item: _Outgoing) -> None:
        if self._ending.is_set():
            return
        try:
            self._outgoing_send.send_nowait(item)
        except trio.WouldBlock:
            self._too_slow()

    def _too_slow(self) -> None:
        if self._ending.is_set():
            return
        log.warning("ws_too_slow", remote=self._remote, queue_size=self._config.queue_size,
                    last_delivered=dict(self._delivered), progress="realtime", **self._who())
        self._end(CloseRequest(CLOSE_TOO_SLOW, "too slow"))

    async def _sender(self) -> None:
        """Write queued events and replies in order, skipping what was already delivered."""
        try:
            async for first in self._outgoing:
                item: _Outgoing | None = first
                while item is not None and not self._ending.is_set():
                    await self._deliver(item)
                    item = self._next_queued()
                if self._ending.is_set():
                    break
        except ConnectionClosed:
            self._end(None)
        finally:
            self._sender_done.set()

    def _next_queued(self) -> _Outgoing | None:
        """The next queued item without another trip through the scheduler, if there is one."""
        try:
            return self._outgoing.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            return None

    async def _deliver(self, item: _Outgoing) -> None:
        if isinstance(item, _Message):
            await self._send(encode(item.body))
        elif isinstance(item, _Backlog):
            # The subscription's stream starts here: the backlog, then live events after it.
            await self._send(encode(reply_ok(item.request_id, call=item.call,
                                             events=[e.to_wire() for e in item.events])))
            self._delivered[item.call_id] = max(
                [self._delivered.get(item.call_id, 0), item.since_seq,
                 *(e.seq for e in item.events)])
        else:
            subscribed = item.call_id in self._subs
            if not subscribed and not isinstance(item, LOBBY_EVENTS):
                return                                  # unsubscribed while it was queued
            if item.seq <= self._delivered.get(item.call_id, 0):
                return                                  # already sent in a backlog
            await self._send(self._wire.frame(item))
            if isinstance(item, LOBBY_FINAL) and not subscribed:
                self._delivered.pop(item.call_id, None)
            else:
                self._delivered[item.call_id] = item.seq

    async def _send(self, text: str) -> None:
        self._sending = True
        await self._ws.send_message(text)
        self._sending = False

    async def _receiver(self) -> None:
        """Read requests one at a time, within the rate limit."""
        try:
            while True:
                raw = await self._ws.get_message()
                if not self._bucket.allow(trio.current_time()):
                    log.warning("ws_rate_limited", remote=self._remote, **self._who())
                    self._end(CloseRequest(CLOSE_POLICY, (
                        f"too many requests: at most {self._config.rate_limit:g}/s, bursts of "
                        f"{self._config.rate_burst}")))
                    return
                await self._handle(raw)
        except ConnectionClosed:
            self._end(None)

    async def _keepalive(self) -> None:
        """Ping when due, re-check the token each time, and close when it expires."""
        assert self._identity is not None
        interval, timeout = self._config.ping_interval, self._config.ping_timeout
        expiry = trio.current_time() + (self._identity.expires_at - time.time())
        try:
            while True:
                await trio.sleep_until(min(trio.current_time() + interval, expiry))
                if trio.current_time() >= expiry:
                    self._end(CloseRequest(CLOSE_UNAUTHORIZED, "token expired; get a new one "
                                           "(refresh or log in) and reconnect"))
                    return
                try:
                    await self._deps.auth.verify_access(self._identity.token)
                except InvalidToken as exc:
                    log.info("ws_token_rejected", detail=exc.detail, **self._who())
                    self._end(CloseRequest(CLOSE_UNAUTHORIZED, exc.detail))
                    return
                with trio.move_on_after(timeout) as waiting:
                    await self._ws.ping()
                if waiting.cancelled_caught:
                    self._end(CloseRequest(CLOSE_PING_TIMEOUT, f"no pong within {timeout:g}s"))
                    return
        except ConnectionClosed:
            self._end(None)

    # -- requests ------------------------------------------------------------------------

    async def _handle(self, raw: str | bytes) -> None:
        try:
            message = parse_message(raw)
        except ProtocolError as exc:
            log.debug("ws_bad_request", error=exc.error, detail=exc.detail, **self._who())
            self._reply(reply_error(exc.request_id, exc.error, exc.detail))
            return
        if isinstance(message, Ping):
            self._reply(pong(message.id))
        elif isinstance(message, SubscribeCall):
            await self._subscribe(message)
        elif isinstance(message, UnsubscribeCall):
            self._unsubscribe(message)
        else:
            self._reply(reply_error(None, BAD_REQUEST,
                                    "already authenticated; to use another token, reconnect"))

    def _reply(self, body: dict[str, Any]) -> None:
        self._enqueue(_Message(body))

    async def _subscribe(self, request: SubscribeCall) -> None:
        assert self._identity is not None
        user = self._identity.user
        call_id = request.call_id
        limit = self._config.max_subscriptions
        if call_id not in self._subs and len(self._subs) >= limit:
            log.info("subscribe_call_refused", call_id=call_id, error=TOO_MANY_SUBSCRIPTIONS,
                     limit=limit, **self._who())
            self._reply(reply_error(request.id, TOO_MANY_SUBSCRIPTIONS,
                                    f"at most {limit} calls at once; unsubscribe one first"))
            return
        summary = await find_call(self._deps.store, self._deps.bus, call_id)
        if summary is None:
            self._reply(reply_error(request.id, NOT_FOUND, f"no call {call_id!r}"))
            return
        if not may_see(user, summary.info):
            log.warning("subscribe_call_forbidden", call_id=call_id, progress="realtime",
                        **self._who())
            self._reply(reply_error(request.id, FORBIDDEN, "this call is not yours to see"))
            return
        sub = self._subs.setdefault(call_id, _Subscription())
        sub.held = []                           # live events wait here while the backlog is read
        self._router.follow(self, call_id)
        try:
            backlog = await events_since(self._deps.store, self._deps.bus, call_id,
                                         request.since_seq)
        except ValueError:
            del self._subs[call_id]
            self._router.unfollow(self, call_id)
            log.exception("ws_backlog_failed", call_id=call_id, **self._who())
            self._reply(reply_error(request.id, INTERNAL_ERROR, "the call's history cannot be "
                                    "read; try again later"))
            return
        self._enqueue(_Backlog(request.id, call_id, summary.wire(), request.since_seq,
                               tuple(backlog)))
        held, sub.held = sub.held, None
        for event in held:
            self._enqueue(event)
        log.info("ws_call_subscribed", call_id=call_id, since_seq=request.since_seq,
                 backlog=len(backlog), progress="realtime", **self._who())

    def _unsubscribe(self, request: UnsubscribeCall) -> None:
        if self._subs.pop(request.call_id, None) is not None:
            self._router.unfollow(self, request.call_id)
            self._delivered.pop(request.call_id, None)
            log.info("ws_call_unsubscribed", call_id=request.call_id, progress="realtime",
                     **self._who())
        self._reply(reply_ok(request.id, call_id=request.call_id))

    # -- closing -------------------------------------------------------------------------

    async def _close_ws(self, outcome: CloseRequest | None) -> CloseRequest | None:
        """Send the closing message and close frame; return the close as sent."""
        if outcome is None or self._ws.closed is not None:
            await self._ws.aclose()
            return outcome
        if self._sending:
            # A frame was cut short (the peer stopped reading): nothing more can be framed.
            await abort(self._ws)
            return outcome
        if outcome.code == CLOSE_TOO_SLOW:
            outcome = CloseRequest(CLOSE_TOO_SLOW, too_slow_reason(self._delivered))
        try:
            if self._identity is not None:
                await self._send(encode(closing(outcome.code, outcome.reason, self._delivered)))
            await self._ws.aclose(outcome.code, clip_reason(outcome.reason))
        except ConnectionClosed:
            pass
        return outcome

    def _who(self) -> dict[str, str]:
        user = self.user
        if user is None:
            return {}
        return {"extension": user.extension, "tenant": user.tenant, "role": user.role}


async def abort(ws: WebSocketConnection) -> None:
    """Drop the TCP connection without a close frame (for a peer that does not read)."""
    with trio.CancelScope() as scope:
        scope.cancel()
        await ws.aclose()
