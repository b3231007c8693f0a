"""Who sent the current request: its client address, behind `api.trusted_proxies`."""

from __future__ import annotations

from quart import request

from ..forwarded import client_address, parse_address
from .deps import deps


def request_client() -> str | None:
    """Return the current request's client address (X-Forwarded-For only from trusted proxies)."""
    peer = request.remote_addr
    if not peer:
        return None
    return client_address(peer, request.headers.getlist("X-Forwarded-For"),
                          deps().live.current.api.trusted_proxies)


def client_fields() -> dict[str, str | None]:
    """Log fields naming the client, and the proxy it came through when there was one."""
    client = request_client()
    peer = request.remote_addr
    if not peer or client == str(parse_address(peer) or peer):
        return {"client": client}
    return {"client": client, "proxy": peer}
