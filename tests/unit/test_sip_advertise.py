"""The addresses we write for peers: configured public ones, the bound one, the one facing them."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.harness import make_config
from voicedashd.config import ConfigError, HostPort, MediaConfig, SipConfig, load_config
from voicedashd.listen import numeric_host
from voicedashd.sip.advertise import address_towards, media_host, sip_host, uri_host
from voicedashd.sip.endpoint import SipClient
from voicedashd.sip.transport import Peer, open_transport


def sip(**keys: object) -> SipConfig:
    return SipConfig(listen=HostPort("0.0.0.0", 5070), **keys)


def test_the_public_address_wins_then_the_bound_one_then_the_one_facing_the_peer() -> None:
    assert sip_host(sip(public_address="127.0.0.5"), "127.0.0.2", "127.0.0.1") == "127.0.0.5"
    assert sip_host(sip(public_address="127.0.0.5"), "0.0.0.0", "127.0.0.1") == "127.0.0.5"
    assert sip_host(sip(), "127.0.0.2", "127.0.0.1") == "127.0.0.2"
    # Bound to every address, we name the one the kernel sends from towards the peer.
    assert sip_host(sip(), "0.0.0.0", "127.0.0.1") == "127.0.0.1"
    assert sip_host(sip(), "::", "::1") == "::1"
    assert sip_host(sip(), "::", "::ffff:127.0.0.1") == "127.0.0.1"  # dual-stack peer


def test_the_address_facing_a_peer_is_never_looked_up() -> None:
    assert address_towards("::1") == "::1"
    assert address_towards("pbx.example") is None


def test_sdp_names_media_public_address_then_media_address_then_the_sip_host() -> None:
    assert media_host(MediaConfig(public_address="127.0.0.6"), "127.0.0.2") == "127.0.0.6"
    assert media_host(MediaConfig(address="127.0.0.3"), "127.0.0.2") == "127.0.0.3"
    assert media_host(MediaConfig(address="0.0.0.0"), "127.0.0.2") == "127.0.0.2"
    assert media_host(MediaConfig(address="::"), "::1") == "::1"


def test_uri_hosts_bracket_ipv6_only() -> None:
    assert uri_host("127.0.0.2") == "127.0.0.2"
    assert uri_host("2001:db8::1") == "[2001:db8::1]"


@pytest.mark.parametrize(("section", "line", "message"), [
    ("sip", 'public_address = "pbx.example"',
     "sip.public_address: must be an IP address (names are never looked up), got 'pbx.example'"),
    ("sip", 'public_address = "0.0.0.0"',
     "sip.public_address: must be an address peers can reach, not '0.0.0.0'"),
    ("media", 'public_address = "::"',
     "media.public_address: must be an address peers can reach, not '::'"),
    ("media", "public_address = 5",
     "media.public_address: must be an IP address (names are never looked up), got 5"),
])
def test_public_addresses_are_ip_literals_peers_can_reach(
        tmp_path: Path, section: str, line: str, message: str) -> None:
    path = make_config(tmp_path).write()
    path.write_text(path.read_text().replace(f"[{section}]\n", f"[{section}]\n{line}\n", 1))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [message]


def test_a_public_address_is_kept_in_its_canonical_form() -> None:
    assert sip(public_address="2001:DB8::0:1").public_address == "2001:db8::1"


async def test_our_via_names_the_live_public_address_else_the_bound_one() -> None:
    transport = await open_transport(HostPort("127.0.0.1", 0))
    settings = [sip()]
    client = SipClient(transport, lambda: settings[0])
    to_pbx = Peer("UDP", "127.0.0.1", 5060)
    assert client.new_via(to_pbx).startswith("SIP/2.0/UDP 127.0.0.1:0;branch=z9hG4bK")
    settings[0] = sip(public_address="::1")  # a reload: the next request uses it
    assert client.new_via(Peer("TCP", "127.0.0.1", 5060)).startswith("SIP/2.0/TCP [::1]:0;")


async def test_a_listen_host_name_is_resolved_off_the_loop_and_bound_as_an_address() -> None:
    assert await numeric_host(HostPort("127.0.0.2", 5070), "sip.listen") == "127.0.0.2"
    with trio.fail_after(5):
        transport = await open_transport(HostPort("localhost", 0))
    assert transport.local.host in ("127.0.0.1", "::1")
    assert transport.udp_port > 0
