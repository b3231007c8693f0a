"""trio-websocket server for live call events on [hub] listen."""

from __future__ import annotations

import structlog
import trio
from trio_websocket import WebSocketRequest, WebSocketServer

from ..config import HubConfig
from ..errors import ListenerError

log = structlog.get_logger(__name__)

CLOSE_NOT_READY = 1013


async def _handle(request: WebSocketRequest) -> None:
    ws = await request.accept()
    await ws.aclose(CLOSE_NOT_READY, "live events are not served by this version yet")


async def serve_hub(config: HubConfig, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve WebSocket connections on [hub] listen until cancelled."""
    try:
        listeners = await trio.open_tcp_listeners(config.listen.port, host=config.listen.host)
    except OSError as exc:
        raise ListenerError(
            f"hub.listen: cannot listen on {config.listen}: {exc.strerror}") from None
    server = WebSocketServer(_handle, listeners, connect_timeout=10, disconnect_timeout=5)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        log.info("hub_listening", listen=str(config.listen))
        task_status.started()
