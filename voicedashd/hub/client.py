"""A small Trio client of the hub: connect, authenticate, subscribe, iterate events.

    async with open_hub("ws://127.0.0.1:8481/ws", token, origin="http://127.0.0.1:8480") as hub:
        await hub.subscribe(call_id, since_seq=0)
        async for event in hub:
            ...

Getting the token (POST /api/auth/login) is the caller's business.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

EVENT_QUEUE = 1024
CONNECT_TIMEOUT = 10.0
DISCONNECT_TIMEOUT = 5.0


class HubError(Exception):
    """Base of the client's errors."""


class HubClosed(HubError):
    """The connection closed (or was refused during authentication): code and reason."""

    def __init__(self, code: int | None, reason: str | None) -> None:
        super().__init__(f"hub connection closed: {code} {reason or ''}".strip())
        self.code = code
        self.reason = reason


class RequestFailed(HubError):
    """A request was answered with success: false."""

    def __init__(self, error: str, detail: str) -> None:
        super().__init__(f"{error}: {detail}")
        self.error = error
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Subscribed:
    """A successful subscription: the call and the events missed after since_seq."""

    call: dict[str, Any]
    events: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class _Waiter:
    """A request waiting for its reply."""

    send: trio.MemorySendChannel[dict[str, Any]]
    kind: str
    call_id: str | None
    since_seq: int


class HubClient:
    """An authenticated hub connection; iterate it for event frames (dicts, wire form).

    Frames of a call that arrived before its subscribe reply and are covered by that reply's
    backlog (or by since_seq) are skipped, so reply events + iterated frames are each call's
    events exactly once, in order.
    """

    def __init__(self, ws: WebSocketConnection, welcome: dict[str, Any],
                 event_queue: int = EVENT_QUEUE) -> None:
        self.ws = ws
        self.welcome = welcome
        self.closing: dict[str, Any] | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[Any, _Waiter] = {}
        self._floors: dict[str, int] = {}
        self._events_send, self._events = trio.open_memory_channel[dict[str, Any]](event_queue)

    @property
    def close_code(self) -> int | None:
        """The close code once the connection has closed (the server's, when it closed it)."""
        if self.closing is not None:
            return int(self.closing["code"])
        return self.ws.closed.code if self.ws.closed else None

    @property
    def close_reason(self) -> str | None:
        """The close reason once the connection has closed."""
        if self.closing is not None:
            return str(self.closing["reason"])
        return self.ws.closed.reason if self.ws.closed else None

    async def request(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Send a request with a fresh id and return its reply; RequestFailed on an error."""
        request_id = next(self._ids)
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._waiting[request_id] = _Waiter(send, kind, fields.get("call_id"),
                                            fields.get("since_seq") or 0)
        try:
            await self.ws.send_message(json.dumps({"type": kind, "id": request_id, **fields}))
            try:
                reply = await receive.receive()
            except trio.EndOfChannel:
                raise HubClosed(self.close_code, self.close_reason) from None
        except ConnectionClosed:
            raise HubClosed(self.close_code, self.close_reason) from None
        finally:
            self._waiting.pop(request_id, None)
        if reply.get("type") == "reply" and not reply.get("success"):
            raise RequestFailed(str(reply.get("error")), str(reply.get("detail")))
        return reply

    async def subscribe(self, call_id: str, since_seq: int | None = None) -> Subscribed:
        """Follow a call; the reply carries the events after since_seq (all when omitted)."""
        fields: dict[str, Any] = {"call_id": call_id}
        if since_seq is not None:
            fields["since_seq"] = since_seq
        reply = await self.request("subscribe_call", **fields)
        return Subscribed(call=reply["call"], events=reply["events"])

    async def unsubscribe(self, call_id: str) -> None:
        """Stop following a call."""
        await self.request("unsubscribe_call", call_id=call_id)

    async def ping(self) -> None:
        """An application-level round trip."""
        await self.request("ping")

    def received(self) -> list[dict[str, Any]]:
        """Return the events already received and not yet iterated, without waiting."""
        events = []
        while True:
            try:
                event = self._events.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return events
            if self._fresh(event):
                events.append(event)

    def __aiter__(self) -> HubClient:
        return self

    async def __anext__(self) -> dict[str, Any]:
        while True:
            try:
                event = await self._events.receive()
            except trio.EndOfChannel:
                raise StopAsyncIteration from None
            if self._fresh(event):
                return event

    def _fresh(self, event: dict[str, Any]) -> bool:
        """Skip frames that arrived before a subscribe reply whose backlog covers them."""
        return bool(event["seq"] > self._floors.get(event["call_id"], 0))

    async def _read(self) -> None:
        """Route replies to their requests and events to the iterator, until the close."""
        async with self._events_send:
            try:
                while True:
                    message = json.loads(await self.ws.get_message())
                    kind = message.get("type")
                    if kind == "event":
                        await self._events_send.send(message)
                    elif kind == "closing":
                        self.closing = message
                    elif kind in ("reply", "pong") and message.get("id") in self._waiting:
                        waiter = self._waiting.pop(message["id"])
                        self._settle(waiter, message)
                        waiter.send.send_nowait(message)
            except ConnectionClosed:
                pass
            finally:
                for waiter in self._waiting.values():
                    waiter.send.close()

    def _settle(self, waiter: _Waiter, reply: dict[str, Any]) -> None:
        """Keep, per followed call, the seq its stream is known up to (in reply order)."""
        if waiter.call_id is None or not reply.get("success"):
            return
        if waiter.kind == "unsubscribe_call":
            self._floors.pop(waiter.call_id, None)
        elif waiter.kind == "subscribe_call":
            seqs = [int(e["seq"]) for e in reply.get("events", [])]
            self._floors[waiter.call_id] = max([waiter.since_seq, *seqs])


@asynccontextmanager
async def open_hub(url: str, token: str, *, origin: str | None = None,
                   header_auth: bool = False,
                   event_queue: int = EVENT_QUEUE) -> AsyncIterator[HubClient]:
    """Connect and authenticate (first message, or the Authorization header); HubClosed if refused.

    A refused handshake (bad path or Origin) raises trio_websocket.ConnectionRejected.
    """
    headers: list[tuple[bytes, bytes]] = []
    if origin is not None:
        headers.append((b"Origin", origin.encode()))
    if header_auth:
        headers.append((b"Authorization", f"Bearer {token}".encode()))
    async with open_websocket_url(url, extra_headers=headers, connect_timeout=CONNECT_TIMEOUT,
                                  disconnect_timeout=DISCONNECT_TIMEOUT) as ws:
        welcome = await _authenticate(ws, token, header_auth)
        client = HubClient(ws, welcome, event_queue)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._read)
            try:
                yield client
            finally:
                nursery.cancel_scope.cancel()


async def _authenticate(ws: WebSocketConnection, token: str,
                        header_auth: bool) -> dict[str, Any]:
    closing: dict[str, Any] | None = None
    try:
        if not header_auth:
            await ws.send_message(json.dumps({"type": "auth", "token": token}))
        while True:
            message = json.loads(await ws.get_message())
            if message.get("type") == "connection_established":
                return message
            if message.get("type") == "closing":
                closing = message
    except ConnectionClosed as exc:
        if closing is not None:
            raise HubClosed(closing["code"], closing["reason"]) from None
        reason = exc.reason
        raise HubClosed(reason.code if reason else None,
                        reason.reason if reason else None) from None
