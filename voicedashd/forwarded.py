"""The client's address behind trusted reverse proxies, from `X-Forwarded-For` (sans-IO)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def client_address(peer: str, forwarded_for: Iterable[str],
                   trusted: Sequence[Network]) -> str:
    """Return the client's address: the TCP peer, or the rightmost untrusted forwarded address.

    `forwarded_for` holds the values of every `X-Forwarded-For` header in order. Each proxy
    appends the address it got the request from, so only the entries written by trusted
    proxies can be believed: read from the right, skipping trusted proxies, the first other
    address is the client; whatever is left of it the client wrote itself. From a peer that
    is not a trusted proxy the header is ignored. A malformed entry ends the walk at the
    nearest trusted hop; if every entry is a trusted proxy, the leftmost one is the client.
    """
    hop = parse_address(peer)
    if hop is None or not _within(hop, trusted):
        return peer if hop is None else str(hop)
    entries = [entry for value in forwarded_for for entry in value.split(",") if entry.strip()]
    for entry in reversed(entries):
        address = parse_address(entry)
        if address is None:
            break
        hop = address
        if not _within(hop, trusted):
            break
    return str(hop)


def parse_address(text: str) -> Address | None:
    """Parse `1.2.3.4`, `::1`, `[::1]`, `[::1]:443` or `1.2.3.4:443`; None if it is none."""
    text = text.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        text = host
    elif text.count(":") == 1:                  # IPv4 with a port
        host, _, port = text.partition(":")
        if not port.isdigit():
            return None
        text = host
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped      # a dual-stack socket's view of an IPv4 peer
    return address


def _within(address: Address, networks: Sequence[Network]) -> bool:
    return any(address in net for net in networks)
