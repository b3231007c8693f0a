"""A webhook receiver for tests: raw h11 over trio on 127.0.0.1, recording every POST."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h11
import trio


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it, whether its signature held, and what it answered."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    signature_ok: bool
    status: int
    at: float = 0.0     # trio.current_time() when it arrived

    @property
    def delivery_id(self) -> str:
        """The X-Voicedashd-Delivery header."""
        return self.headers.get("x-voicedashd-delivery", "")

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


def signature_ok(secret: bytes, body: bytes, header: str) -> bool:
    """A receiver's own check of X-Voicedashd-Signature, as README shows it."""
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header)


class WebhookReceiver:
    """An HTTP/1.1 server answering each POST with answer(request) (default 200)."""

    def __init__(self, secret: bytes, answer: Callable[[Received], int] | None = None) -> None:
        self.secret = secret
        self.answer = answer or (lambda _: 200)
        self.received: list[Received] = []
        self.port = 0
        self._changed = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Listen on 127.0.0.1 (a free port) until cancelled."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._connection, listeners)

    @property
    def url(self) -> str:
        """Where to send webhooks."""
        return f"http://127.0.0.1:{self.port}/hook"

    def delivered(self) -> list[Received]:
        """The requests answered 2xx."""
        return [r for r in self.received if 200 <= r.status < 300]

    async def wait_for(self, predicate: Callable[[list[Received]], bool],
                       timeout: float = 10) -> list[Received]:
        """Wait until predicate(received) holds."""
        with trio.fail_after(timeout):
            while not predicate(self.received):
                await self._changed.wait()
        return self.received

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = None, b""
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:       # ConnectionClosed
                        return
                assert request is not None
                await self._respond(stream, conn, request, body)
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await stream.aclose()

    async def _respond(self, stream: trio.SocketStream, conn: h11.Connection,
                       request: h11.Request, body: bytes) -> None:
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        seen = Received(request.method.decode(), request.target.decode(), headers, body,
                        signature_ok(self.secret, body, headers.get("x-voicedashd-signature", "")),
                        0)
        status = self.answer(seen)
        self.received.append(Received(seen.method, seen.path, headers, body, seen.signature_ok,
                                      status, trio.current_time()))
        self._changed.set()
        self._changed = trio.Event()
        await stream.send_all(conn.send(h11.Response(status_code=status,
                                                     headers=[("Content-Length", "0")])))
        await stream.send_all(conn.send(h11.EndOfMessage()))
