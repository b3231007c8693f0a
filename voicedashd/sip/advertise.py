"""The addresses we write for peers to reach us: in Contact, in our Via, in SDP o= and c=."""

from __future__ import annotations

import ipaddress
import socket

from ..config import MediaConfig, SipConfig


def is_wildcard(host: str) -> bool:
    """Whether host is 0.0.0.0 or :: (a socket bound there listens on every address)."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def uri_host(host: str) -> str:
    """host as a SIP URI or Via sent-by writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def address_towards(peer_host: str) -> str | None:
    """This host's address the kernel sends from to reach peer_host (an IP), or None.

    A UDP connect only chooses a route and a source address: nothing is sent, nothing is
    looked up. An IPv4 address mapped into IPv6 (a dual-stack socket's peer) comes back as IPv4.
    """
    try:
        peer = ipaddress.ip_address(peer_host)
    except ValueError:
        return None
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    family = socket.AF_INET6 if peer.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((str(peer), 9))
            return str(probe.getsockname()[0])
    except OSError:  # no route to that peer from here
        return None


def sip_host(sip: SipConfig, bound: str, peer_host: str) -> str:
    """The address Contact and our Via name for a peer.

    sip.public_address, else the address SIP is bound to, else (bound to 0.0.0.0 or ::) this
    host's address facing the peer: where a PBX that sent us a request can reach us again.
    """
    if sip.public_address:
        return sip.public_address
    if not is_wildcard(bound):
        return bound
    return address_towards(peer_host) or bound


def media_host(media: MediaConfig, sip_address: str) -> str:
    """The address our SDP (o= and c=) names: media.public_address, else media.address,
    else (RTP bound to 0.0.0.0 or ::) the address our Contact names (sip_address)."""
    if media.public_address:
        return media.public_address
    if not is_wildcard(media.address):
        return media.address
    return sip_address
