"""Where our own in-dialog requests go: a URI's host and port, names resolved off the loop."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import TypeAlias

import trio

from .uri import InvalidUri, SipUri, UnsupportedUriScheme, parse_uri

# host name, port -> one numeric address; may take long, must be cancellable.
Resolver: TypeAlias = Callable[[str, int], Awaitable[str]]


class NextHopUnresolved(Exception):
    """The next hop's host name was not resolved in time: the request is not sent."""


def is_ip_literal(host: str) -> bool:
    """Whether host is an IPv4 or IPv6 address (not a name that would need a look-up)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def uri_target(uri: str) -> tuple[str, int] | None:
    """The host and port a SIP URI points at (5060, 5061 for sips), or None if it has none."""
    try:
        parsed = parse_uri(uri)
    except (InvalidUri, UnsupportedUriScheme):
        return None
    if not isinstance(parsed, SipUri) or not parsed.host:
        return None
    port = parsed.port or (5061 if parsed.scheme == "sips" else 5060)
    return parsed.host.strip("[]"), port


async def system_resolver(host: str, port: int) -> str:
    """The first address getaddrinfo gives for host; trio runs it in a worker thread."""
    infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"no address for {host!r}")
    return str(infos[0][4][0])
