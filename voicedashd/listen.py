"""Listen addresses: a configured host turned into the IP address a socket binds."""

from __future__ import annotations

import socket

import trio

from .config import HostPort
from .errors import ListenerError


async def numeric_host(listen: HostPort, key: str) -> str:
    """listen's host as an IP address: a name is resolved once, off the event loop (the first
    address wins); ListenerError names the setting if it does not resolve."""
    try:
        infos = await trio.socket.getaddrinfo(listen.host, listen.port, type=socket.SOCK_DGRAM,
                                              flags=socket.AI_PASSIVE)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ListenerError(f"{key}: cannot resolve {listen.host!r}: {reason}") from None
    return str(infos[0][4][0])
