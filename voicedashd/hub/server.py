"""trio-websocket server for live call events on [hub] listen: handshake checks, sessions."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

import structlog
import trio
from trio_websocket import ConnectionClosed, Endpoint, WebSocketRequest, WebSocketServer

from ..auth import Authenticator
from ..bus import EventBus
from ..errors import ListenerError
from ..forwarded import Network, client_address, parse_address
from ..livecfg import LiveConfig
from ..metrics import Metrics
from ..store import Store
from .connection import HubDeps, Session, WireCache
from .protocol import (
    CLOSE_TOO_BIG,
    allowed_origins,
    bearer_token,
    check_handshake,
    header_values,
)
from .router import Router

log = structlog.get_logger(__name__)

HANDSHAKE_TIMEOUT = 10.0
DISCONNECT_TIMEOUT = 5.0


class Hub:
    """Accepts WebSocket handshakes and runs one Session per connection."""

    def __init__(self, deps: HubDeps) -> None:
        self._deps = deps
        self.router = Router()
        self._wire = WireCache()

    async def handle(self, request: WebSocketRequest) -> None:
        """Check a handshake (path, token-free URL, Origin); serve the connection if it passes."""
        live = self._deps.live.current
        headers = request.headers
        where = _where(request.remote, headers, live.api.trusted_proxies)
        remote = where["remote"]
        rejection = check_handshake(request.path, headers, allowed_origins(live))
        if rejection is not None:
            log.info("ws_rejected", status=rejection.status, reason=rejection.reason,
                     path=urlsplit(request.path).path[:100], **where)
            with contextlib.suppress(ConnectionClosed):     # the peer may be gone already
                await request.reject(rejection.status, body=(rejection.detail + "\n").encode())
            return
        try:
            ws = await request.accept()
        except ConnectionClosed:
            return
        metrics = self._deps.metrics
        metrics.hub_connections.inc()
        log.info("ws_connected", **where)
        started = trio.current_time()
        session = Session(ws, self._deps, self.router, self._wire, bearer_token(headers),
                          remote)
        try:
            await session.run()
        finally:
            close = session.closed_with
            metrics.hub_connections.dec()
            peer = ws.closed
            user = session.user
            by_server = close is not None or (peer is not None and peer.code == CLOSE_TOO_BIG)
            log.info("ws_closed", **where, by="server" if by_server else "client",
                     code=close.code if close is not None else (peer.code if peer else None),
                     reason=close.reason if close is not None else (peer.reason if peer else None),
                     seconds=round(trio.current_time() - started, 3),
                     **({"extension": user.extension, "tenant": user.tenant} if user else {}))


def _where(endpoint: Endpoint | str, headers: list[tuple[bytes, bytes]],
           trusted: Sequence[Network]) -> dict[str, str]:
    """Log fields for a connection: the client (behind api.trusted_proxies) and its proxy."""
    if not isinstance(endpoint, Endpoint):
        return {"remote": endpoint}
    peer = str(endpoint.address)
    shown = f"[{peer}]:{endpoint.port}" if ":" in peer else f"{peer}:{endpoint.port}"
    client = client_address(peer, header_values(headers, "x-forwarded-for"), trusted)
    if client == str(parse_address(peer) or peer):
        return {"remote": shown}
    return {"remote": client, "proxy": shown}


async def serve_hub(live: LiveConfig, bus: EventBus, authenticator: Authenticator,
                    store: Store, metrics: Metrics, *,
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve WebSocket connections on [hub] listen until cancelled; report the bound port."""
    config = live.current.hub
    try:
        listeners = await trio.open_tcp_listeners(config.listen.port, host=config.listen.host)
    except OSError as exc:
        raise ListenerError(
            f"hub.listen: cannot listen on {config.listen}: {exc.strerror}") from None
    if config.send_buffer:
        for listener in listeners:      # accepted sockets inherit it
            listener.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, config.send_buffer)
    hub = Hub(HubDeps(live=live, bus=bus, auth=authenticator, store=store, metrics=metrics))
    server = WebSocketServer(hub.handle, listeners, max_message_size=config.max_message_size,
                             connect_timeout=HANDSHAKE_TIMEOUT,
                             disconnect_timeout=DISCONNECT_TIMEOUT)
    unsubscribe = bus.subscribe(hub.router.publish)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            log.info("hub_listening", listen=str(config.listen))
            task_status.started(listeners[0].socket.getsockname()[1])
    finally:
        unsubscribe()
