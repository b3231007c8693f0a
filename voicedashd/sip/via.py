"""Where a request came from and where its responses go (RFC 3261 §18.2.1-2, RFC 3581); no I/O.

A Via is written by the sender and proves nothing: its host, `received`, `rport` and `maddr`
could name anyone. So the top Via is stamped with what we saw (the packet's source address,
and its source port when `rport` asks for it, whatever values the sender put there), and
responses go back to the observed source address only: never to an address or a host name
taken from the message, which also means no name is ever looked up to answer.
"""

from __future__ import annotations

import ipaddress

from voicedashd.sip.fields import InvalidHeader, Via, format_via, parse_via, split_header_values
from voicedashd.sip.message import Headers
from voicedashd.sip.transport import Peer

DEFAULT_PORT = 5060


def _same_address(host: str, observed: str) -> bool:
    """Whether a Via host is the observed IP address (a host name never is)."""
    try:
        return ipaddress.ip_address(host) == ipaddress.ip_address(observed)
    except ValueError:
        return False


def stamp_via(headers: Headers, peer: Peer) -> Via:
    """Set received/rport of the top Via to what we saw of peer; return the stamped Via."""
    items = headers.items
    index = next((i for i, (name, _) in enumerate(items) if name == "Via"), None)
    if index is None:
        raise InvalidHeader("no Via header")
    values = split_header_values(items[index][1])
    if not values:
        raise InvalidHeader("empty Via header")
    via = parse_via(values[0])
    # A received the sender wrote itself is replaced, not trusted (RFC 3261 §18.2.1 says
    # received is what the server saw); it is added whenever the sent-by is not that address.
    if "received" in via.params or via.rport_requested or not _same_address(via.host, peer.host):
        via.params["received"] = peer.host
    if via.rport_requested:  # RFC 3581 §4: a bare rport (or any value in it) gets our port
        via.params["rport"] = str(peer.port)
    values[0] = format_via(via)
    items[index] = ("Via", ", ".join(values))
    return via


def response_destination(via: Via | None, peer: Peer) -> Peer:
    """Where responses to a request from peer go: its connection, or its source address.

    Over UDP the port is the source port when rport was asked for, else the sent-by port,
    else 5060; the host is always the observed source (RFC 3261 §18.2.2 with received always
    present), never a host, received or maddr written in the message.
    """
    if peer.reliable or via is None:
        return peer
    port = peer.port if via.rport_requested else (via.port or DEFAULT_PORT)
    return Peer(peer.transport, peer.host, port)
