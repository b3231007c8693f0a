"""CallManager's wiring without sockets: fake transactions, port pool, bus and SIP client."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio
import trio.testing

from tests.harness import make_config
from voicedashd.calls import CallManager, CallState, end_reason
from voicedashd.config import Config, load_config
from voicedashd.events import CallEnded, CallInfo, EndReason
from voicedashd.livecfg import LiveConfig
from voicedashd.media.ports import PortsExhausted, SocketsUnavailable
from voicedashd.metrics import Metrics
from voicedashd.sip.fields import tag_of
from voicedashd.sip.message import Request, Response
from voicedashd.sip.parser import parse_message
from voicedashd.sip.resolve import NextHopUnresolved
from voicedashd.sip.transport import Peer

SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
PBX = Peer("UDP", "127.0.0.1", 5070)


def request(method: str, *, cseq: int = 1, to_tag: str | None = None, body: str = "",
            branch: str = "z9hG4bK1") -> Request:
    to = "<sip:1001@acme.example>" + (f";tag={to_tag}" if to_tag else "")
    text = (f"{method} sip:1001@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch={branch}\r\n"
            "From: <sip:alice@acme.example>;tag=a1\r\n"
            f"To: {to}\r\nCall-ID: w1\r\nCSeq: {cseq} {method}\r\n"
            "Contact: <sip:alice@127.0.0.1:5070>\r\n"
            + ("Content-Type: application/sdp\r\n" if body else "")
            + f"Content-Length: {len(body)}\r\n\r\n{body}")
    parsed = parse_message(text.encode())
    assert isinstance(parsed, Request)
    return parsed


@dataclass
class FakeTx:
    """A server transaction that records what the TU answered."""

    request: Request
    sent: list[Response] = field(default_factory=list)
    final_status: int | None = None

    def respond(self, response: Response) -> None:
        if response.status >= 200 and self.final_status is None:
            self.final_status = response.status
        self.sent.append(response)

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.sent]


@dataclass
class FakeSockets:
    address: str = "127.0.0.1"
    port: int = 20000


@dataclass
class FakePorts:
    address: str = "127.0.0.1"
    free: int = 1
    in_use: list[FakeSockets] = field(default_factory=list)
    out_of_descriptors: bool = False

    def allocate(self) -> FakeSockets:
        if self.out_of_descriptors:
            raise SocketsUnavailable("cannot open an RTP socket: Too many open files")
        if self.free == 0:
            raise PortsExhausted("none left")
        self.free -= 1
        self.in_use.append(FakeSockets())
        return self.in_use[-1]

    def release(self, sockets: FakeSockets) -> None:
        self.in_use.remove(sockets)
        self.free += 1


@dataclass
class FakeBus:
    registered: list[CallInfo] = field(default_factory=list)
    events: list[tuple[type, str, dict[str, Any]]] = field(default_factory=list)

    def register(self, info: CallInfo) -> None:
        self.registered.append(info)

    def emit(self, kind: type, call_id: str, **fields: Any) -> None:
        self.events.append((kind, call_id, fields))

    def ended(self) -> list[EndReason]:
        return [f["reason"] for kind, _, f in self.events if kind is CallEnded]


@dataclass
class FakeSip:
    """Records our BYEs and answers them 200 (at once, or once `hold` is set)."""

    byes: list[tuple[Request, Peer]] = field(default_factory=list)
    hold: trio.Event | None = None
    unresolvable: bool = False  # the next hop's name times out
    host: str = "127.0.0.2"  # what SipClient.local_host would give

    def local_host(self, peer_host: str) -> str:
        return self.host

    async def resolve(self, uri: str, dialog_peer: Peer) -> Peer:
        if self.unresolvable:
            raise NextHopUnresolved("'pbx.example' not resolved within 2s")
        return dialog_peer

    async def send_request(self, request: Request, destination: Peer, *,
                           nursery: trio.Nursery) -> Response | None:
        self.byes.append((request, destination))
        if self.hold is not None:
            await self.hold.wait()
        return Response(200, "OK")


@dataclass
class World:
    manager: CallManager
    ports: FakePorts
    bus: FakeBus
    sip: FakeSip

    def invite(self, *, body: str = SDP, peer: Peer = PBX) -> FakeTx:
        tx = FakeTx(request("INVITE", body=body))
        self.manager.handle_request(tx.request, peer, tx)  # type: ignore[arg-type]
        return tx

    def send(self, method: str, **kwargs: Any) -> FakeTx:
        tx = FakeTx(request(method, **kwargs))
        self.manager.handle_request(tx.request, PBX, tx)  # type: ignore[arg-type]
        return tx


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(make_config(tmp_path).write())


@pytest.fixture
async def world(config: Config) -> AsyncIterator[World]:
    ports, bus, sip = FakePorts(), FakeBus(), FakeSip()
    async with trio.open_nursery() as nursery:
        manager = CallManager(LiveConfig(config), bus, Metrics(), ports,  # type: ignore[arg-type]
                              sip, nursery)
        yield World(manager, ports, bus, sip)
        nursery.cancel_scope.cancel()


def with_answer_delay(world: World, delay: float) -> None:
    live = world.manager.live
    live.replace(dataclasses.replace(
        live.current, sip=live.current.sip.model_copy(update={"answer_delay": delay})))


async def test_an_invite_rings_and_is_answered_with_our_port(world: World) -> None:
    tx = world.invite()
    assert tx.statuses == [100, 180, 200]
    ok = tx.sent[-1]
    assert b"m=audio 20000 RTP/AVP 0" in ok.body
    assert ok.headers.get("Contact", "").startswith("<sip:")
    [call] = world.manager.active_calls()
    assert call.state is CallState.ANSWERED
    assert world.bus.registered == [call.info]
    assert (call.info.caller, call.info.callee_extension, call.info.tenant) == (
        "alice", "1001", "acme")


async def test_cancel_while_ringing_ends_the_call_and_frees_its_ports(world: World) -> None:
    with_answer_delay(world, 30.0)
    invite = world.invite()
    cancel = world.send("CANCEL")
    assert cancel.statuses == [200]
    assert invite.statuses == [100, 180, 487]
    assert world.bus.ended() == [EndReason.CANCELLED]
    assert world.ports.in_use == [] and world.manager.active_calls() == []
    assert world.send("CANCEL").statuses == [481]  # the INVITE is gone


async def test_ack_timeout_sends_bye_and_ends_the_call(world: World,
                                                      autojump_clock: trio.testing.MockClock
                                                      ) -> None:
    world.invite()
    await trio.sleep(31.0)
    assert world.bus.ended() == []
    await trio.sleep(2.0)
    assert world.bus.ended() == [EndReason.ACK_TIMEOUT]
    [(bye, destination)] = world.sip.byes
    assert bye.method == "BYE" and destination == PBX
    assert tag_of(bye.headers.get("To")) == "a1"
    assert world.ports.in_use == []


async def test_a_bye_crossing_ours_gets_200_while_ours_is_in_flight(
        world: World, autojump_clock: trio.testing.MockClock) -> None:
    world.sip.hold = trio.Event()
    local_tag = tag_of(world.invite().sent[-1].headers.get("To"))
    await trio.sleep(33.0)  # no ACK: our BYE goes out and waits for its answer
    assert len(world.sip.byes) == 1
    assert world.send("BYE", to_tag=local_tag, cseq=2).statuses == [200]
    world.sip.hold.set()
    await trio.sleep(1.0)
    assert world.send("BYE", to_tag=local_tag, cseq=3).statuses == [481]
    assert world.bus.ended() == [EndReason.ACK_TIMEOUT]


async def test_a_bye_whose_next_hop_does_not_resolve_is_abandoned_and_the_call_ends(
        world: World, autojump_clock: trio.testing.MockClock) -> None:
    world.sip.unresolvable = True
    with structlog.testing.capture_logs() as logs:
        world.invite()
        await trio.sleep(33.0)  # no ACK: the BYE is due, its next hop never resolves
        with trio.fail_after(1):
            await world.manager.stop()  # nothing is left in flight
    assert world.bus.ended() == [EndReason.ACK_TIMEOUT]
    assert world.sip.byes == [] and world.ports.in_use == []
    [abandoned] = [line for line in logs if line["event"] == "sip_bye_abandoned"]
    assert abandoned["reason"] == "'pbx.example' not resolved within 2s"


async def test_unknown_dialogs_get_481(world: World) -> None:
    assert world.send("BYE", to_tag="nope", cseq=2).statuses == [481]
    assert world.send("INVITE", to_tag="nope", cseq=2, body=SDP).statuses == [100, 481]


async def test_refusals_before_ringing_never_reach_the_bus(world: World, config: Config) -> None:
    no_codec = world.invite(body=SDP.replace("RTP/AVP 0", "RTP/AVP 3").replace(
        "a=rtpmap:0 PCMU/8000\r\n", ""))
    assert no_codec.statuses == [100, 488]
    untrusted = world.invite(peer=Peer("UDP", "198.51.100.7", 5060))
    assert untrusted.statuses == [100, 403]
    assert world.bus.registered == [] and world.bus.events == []


@pytest.mark.parametrize("shortage", ["rtp_ports", "descriptors"])
async def test_no_media_resources_is_503_and_no_call(world: World, shortage: str) -> None:
    if shortage == "rtp_ports":
        world.ports.free = 0
    else:
        world.ports.out_of_descriptors = True
    tx = world.invite()
    assert tx.statuses == [100, 503]
    assert tx.sent[-1].headers.get("Retry-After") == "5"
    # The call never existed: nobody was told of it, nothing is active, no port is held.
    assert world.bus.registered == [] and world.bus.events == []
    assert world.manager.active_calls() == []
    assert world.ports.in_use == []
    assert world.manager.metrics.calls_refused.labels(shortage)._value.get() == 1
    world.ports.free, world.ports.out_of_descriptors = 1, False
    assert world.invite().statuses[:2] == [100, 180]  # the next call goes ahead


async def test_a_failure_after_the_call_is_published_answers_500_and_ends_it(
        world: World) -> None:
    class RingingFails(FakeTx):
        def respond(self, response: Response) -> None:
            if response.status == 180:
                raise OSError("the 180 could not be sent")
            super().respond(response)

    tx = RingingFails(request("INVITE", body=SDP))
    world.manager.handle_request(tx.request, PBX, tx)  # type: ignore[arg-type]
    assert tx.statuses == [100, 500]
    assert len(world.bus.registered) == 1 and world.bus.ended() == [EndReason.ERROR]
    assert world.manager.active_calls() == [] and world.ports.in_use == []


async def test_stop_while_ringing_answers_503_and_refuses_new_calls(world: World) -> None:
    with_answer_delay(world, 30.0)
    ringing = world.invite()
    with trio.fail_after(1):
        await world.manager.stop()
    assert ringing.statuses == [100, 180, 503]
    assert world.bus.ended() == [EndReason.SHUTDOWN]
    assert world.sip.byes == []  # nothing to BYE before the answer
    late = world.invite()
    assert late.statuses == [100, 503]
    assert late.sent[-1].headers.get("Retry-After") == "30"


def test_end_reason_maps_dialog_reasons_and_treats_unknown_as_error() -> None:
    assert end_reason("caller_hangup") is EndReason.CALLER_HANGUP
    assert end_reason("rejected") is EndReason.ERROR


def with_media(world: World, **update: Any) -> None:
    live = world.manager.live
    live.replace(dataclasses.replace(
        live.current, media=live.current.media.model_copy(update=update)))


@pytest.mark.parametrize(("media", "sdp_address"), [
    ({}, "127.0.0.1"),                                      # media.address as bound
    ({"public_address": "127.0.0.5"}, "127.0.0.5"),         # media.public_address wins
    ({"address": "0.0.0.0"}, "127.0.0.2"),                  # bound to all: Contact's address
    ({"address": "0.0.0.0", "public_address": "127.0.0.5"}, "127.0.0.5"),
])
async def test_contact_names_the_sip_host_and_the_sdp_the_media_address(
        world: World, media: dict[str, str], sdp_address: str) -> None:
    with_media(world, **media)
    tx = world.invite()
    ringing, ok = tx.sent[-2], tx.sent[-1]
    port = world.manager.live.current.sip.listen.port
    assert ringing.headers.get("Contact") == f"<sip:127.0.0.2:{port}>"
    assert ok.headers.get("Contact") == f"<sip:127.0.0.2:{port}>"
    lines = ok.body.decode().split("\r\n")
    [origin] = [line for line in lines if line.startswith("o=")]
    assert origin.endswith(f" IN IP4 {sdp_address}")
    assert f"c=IN IP4 {sdp_address}" in lines


async def test_an_ipv6_contact_host_is_bracketed(world: World) -> None:
    world.sip.host = "::1"
    tx = world.invite()
    port = world.manager.live.current.sip.listen.port
    assert tx.sent[-1].headers.get("Contact") == f"<sip:[::1]:{port}>"
