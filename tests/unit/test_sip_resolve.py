"""Our BYE's next hop: literals as they are, names resolved off the loop within a timeout."""

from __future__ import annotations

import threading

import pytest
import trio

from tests.unit.test_sip_endpoint import OPTIONS, Core
from voicedashd.config import HostPort, SipConfig
from voicedashd.metrics import Metrics
from voicedashd.sip.endpoint import SipClient, SipEndpoint
from voicedashd.sip.message import Response
from voicedashd.sip.parser import parse_message
from voicedashd.sip.resolve import NextHopUnresolved, uri_target
from voicedashd.sip.transport import Peer, open_transport

DIALOG_PEER = Peer("UDP", "127.0.0.1", 5070)

def loopback_sip() -> SipConfig:
    """[sip] listening on 127.0.0.1, nothing else set."""
    return SipConfig(listen=HostPort("127.0.0.1", 5060))


def test_uri_target_reads_host_and_default_ports() -> None:
    assert uri_target("sip:pbx.example;lr") == ("pbx.example", 5060)
    assert uri_target("sips:[::1]:5071") == ("::1", 5071)
    assert uri_target("tel:+4930123") is None
    assert uri_target("not a uri") is None


async def _never_called(host: str, port: int) -> str:
    raise AssertionError(f"looked up {host!r}")


async def _answers(host: str, port: int) -> str:
    return {"pbx.example": "127.0.0.5", "weird.example": "not-an-address"}[host]


async def _fails(host: str, port: int) -> str:
    raise OSError("no such host")


async def test_literals_need_no_resolver_and_tcp_keeps_its_connection() -> None:
    transport = await open_transport(HostPort("127.0.0.1", 0))
    client = SipClient(transport, loopback_sip, resolver=_never_called)
    assert await client.resolve("sip:bob@127.0.0.9:5080;lr", DIALOG_PEER) == Peer(
        "UDP", "127.0.0.9", 5080)
    assert await client.resolve("<bad", DIALOG_PEER) == DIALOG_PEER
    tcp = Peer("TCP", "127.0.0.1", 41000)
    assert await client.resolve("sip:pbx.example;lr", tcp) == tcp


@pytest.mark.parametrize(("resolver", "uri", "expected"), [
    (_answers, "sip:pbx.example:5062;lr", Peer("UDP", "127.0.0.5", 5062)),
    (_answers, "sip:weird.example", DIALOG_PEER),  # a resolver's non-address is not used
    (_fails, "sip:pbx.example", DIALOG_PEER),
])
async def test_names_go_through_the_resolver(resolver: object, uri: str, expected: Peer) -> None:
    transport = await open_transport(HostPort("127.0.0.1", 0))
    client = SipClient(transport, loopback_sip, resolver=resolver)  # type: ignore[arg-type]
    assert await client.resolve(uri, DIALOG_PEER) == expected


async def test_a_hanging_resolver_never_stops_the_loop_and_the_bye_gives_up() -> None:
    entered, release = threading.Event(), threading.Event()

    def block() -> str:
        entered.set()
        release.wait(30)  # a resolver stuck in the system's DNS
        return "127.0.0.1"

    async def hanging(host: str, port: int) -> str:
        return await trio.to_thread.run_sync(block, abandon_on_cancel=True)

    transport = await open_transport(HostPort("127.0.0.1", 0))
    client = SipClient(transport, loopback_sip, resolver=hanging, resolve_timeout=1.5)
    outcome: list[str] = []
    done = trio.Event()

    async def resolve_next_hop() -> None:
        try:
            await client.resolve("sip:pbx@hang.invalid;lr", DIALOG_PEER)
            outcome.append("resolved")
        except NextHopUnresolved as exc:
            outcome.append(str(exc))
        done.set()

    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                endpoint = SipEndpoint(transport, Core(), nursery, Metrics(), client)
                await nursery.start(transport.serve, endpoint.handle)
                nursery.start_soon(resolve_next_hop)
                await trio.to_thread.run_sync(entered.wait)  # the resolver is now stuck
                started = trio.current_time()
                # Meanwhile a timer fires and other SIP traffic is answered, one by one.
                await trio.sleep(0.1)
                peer = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
                await peer.bind(("127.0.0.1", 0))
                mine = peer.getsockname()[1]
                for index in range(5):
                    await peer.sendto(OPTIONS.format(port=mine, branch=f"x{index}").encode(),
                                      ("127.0.0.1", transport.udp_port))
                    answer = parse_message(await peer.recv(65535))
                    assert isinstance(answer, Response) and answer.status == 200
                    assert not done.is_set(), "the resolver did not hang long enough"
                await done.wait()
                assert trio.current_time() - started >= 1.0
                assert outcome == ["'hang.invalid' not resolved within 1.5s"]
                nursery.cancel_scope.cancel()
    finally:
        release.set()
