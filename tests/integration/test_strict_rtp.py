"""Strict RTP against the running daemon: real UDP on loopback, strangers on other 127/8 hosts.

Every packet goes to 127.0.0.0/8. Addresses a test names in SDP but must never receive
anything (an unreachable NAT'd address) are sockets of their own, listened to throughout.
"""

from __future__ import annotations

import itertools
import re
import secrets
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio

from tests.harness import DaemonConfig, User, make_config, run_daemon
from tests.integration.test_calls_api import bearer, token_for
from tests.sipp import RawSipPeer, to_tag
from tests.voice_caller import SILENT_RMS, packet_levels, speak
from voicedashd.media.g711 import PCMU
from voicedashd.media.rtp import RtpPacket, parse_rtp
from voicedashd.media.strict import PROBATION

PTIME = 0.02
SAMPLES = 160
SILENCE = PCMU.silence_frame(SAMPLES)
FROM_TAG = "caller1"
STRANGER_WORDS = "What are your opening hours on Saturday?"
CALLER_WORDS = "thank you goodbye"


# -- RTP endpoints on loopback -----------------------------------------------------------


@dataclass
class Endpoint:
    """A UDP socket on a loopback address that sends RTP and keeps all it receives."""

    sock: trio.socket.SocketType
    address: tuple[str, int]
    received: list[tuple[float, RtpPacket]] = field(default_factory=list)
    sent: int = 0
    ssrc: int = field(default_factory=lambda: secrets.randbits(32))
    sequence: int = field(default_factory=lambda: secrets.randbelow(1 << 16))
    arrived: trio.Event = field(default_factory=trio.Event)

    async def listen(self) -> None:
        """Keep every datagram that arrives (parsed as RTP), with its arrival time."""
        while True:
            data = await self.sock.recv(2048)
            self.received.append((trio.current_time(), parse_rtp(data)))
            self.arrived.set()

    async def send(self, destination: tuple[str, int], payloads: list[bytes]) -> None:
        """Send one packet per payload, 20 ms apart from absolute deadlines."""
        start = trio.current_time()
        for index, payload in enumerate(payloads):
            await trio.sleep_until(start + index * PTIME)
            packet = RtpPacket(payload_type=0, sequence=self.sequence,
                               timestamp=self.sequence * SAMPLES % 2**32, ssrc=self.ssrc,
                               payload=payload)
            await self.sock.sendto(packet.to_bytes(), destination)
            self.sequence = (self.sequence + 1) & 0xFFFF
            self.sent += 1

    async def send_until(self, destination: tuple[str, int], stop: trio.Event) -> None:
        """Send silence every 20 ms until stop is set."""
        while not stop.is_set():
            await self.send(destination, [SILENCE] * 5)

    def loud_packets(self) -> int:
        """How many received packets carry speech, not comfort silence."""
        return sum(level > SILENT_RMS
                   for level in packet_levels([p.payload for _, p in self.received]))


@asynccontextmanager
async def endpoints(*hosts: str) -> AsyncIterator[list[Endpoint]]:
    """One listening Endpoint per host, closed on exit."""
    made = []
    try:
        async with trio.open_nursery() as nursery:
            for host in hosts:
                sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
                await sock.bind((host, 0))
                host, port = sock.getsockname()
                made.append(Endpoint(sock, (host, port)))
                nursery.start_soon(made[-1].listen)
            yield made
            nursery.cancel_scope.cancel()
    finally:
        for endpoint in made:
            endpoint.sock.close()


def assert_one_unbroken_stream(received: list[tuple[float, RtpPacket]]) -> None:
    """What the daemon sent: one SSRC, the sequence +1 from packet to packet, no gap."""
    packets = [p for _, p in received]
    assert packets, "nothing arrived"
    assert {p.ssrc for p in packets} == {packets[0].ssrc}
    gaps = [(a.sequence, b.sequence) for a, b in itertools.pairwise(packets)
            if b.sequence != (a.sequence + 1) & 0xFFFF]
    assert gaps == [], gaps


# -- SIP -----------------------------------------------------------------------------------


def _sdp(address: str, port: int, version: int = 1) -> str:
    return (f"v=0\r\no=- 1 {version} IN IP4 {address}\r\ns=-\r\nc=IN IP4 {address}\r\n"
            f"t=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


def _with_body(message: str, sdp: str, contact_port: int) -> str:
    """The message's headers (with a Contact) and sdp as its body."""
    lines = [line for line in message.split("\r\n\r\n", 1)[0].split("\r\n")
             if not line.startswith(("Content-Length:", "Content-Type:"))]
    if not any(line.startswith("Contact:") for line in lines):
        lines.append(f"Contact: <sip:5550000@127.0.0.1:{contact_port}>")
    lines += ["Content-Type: application/sdp", f"Content-Length: {len(sdp)}"]
    return "\r\n".join(lines) + "\r\n\r\n" + sdp


@dataclass
class SipCall:
    """A call placed from 127.0.0.1 whose SDP names (address, port) for its media."""

    peer: RawSipPeer
    call_id: str
    to_tag: str
    daemon_rtp: tuple[str, int]
    cseq: int = 1

    async def reinvite(self, address: str, port: int) -> None:
        """Move the call's media to a new SDP address (re-INVITE, 200, ACK)."""
        self.cseq += 1
        text = self.peer.in_dialog("INVITE", call_id=self.call_id, from_tag=FROM_TAG,
                                   to_tag=self.to_tag, cseq=self.cseq)
        await self.peer.send(_with_body(text, _sdp(address, port, self.cseq), self.peer.port))
        await self.peer.receive_status(200)
        await self.peer.send(self.peer.in_dialog("ACK", call_id=self.call_id,
                                                 from_tag=FROM_TAG, to_tag=self.to_tag,
                                                 cseq=self.cseq))


@asynccontextmanager
async def sip_call(config: DaemonConfig, address: str, port: int) -> AsyncIterator[SipCall]:
    """Place a call whose SDP names address:port; BYE on exit."""
    async with RawSipPeer(config.sip_port) as peer:
        call_id = f"{secrets.token_hex(6)}@strict"
        invite = peer.invite(branch=f"z9hG4bK{secrets.token_hex(6)}", call_id=call_id,
                             from_tag=FROM_TAG)
        await peer.send(_with_body(invite, _sdp(address, port), peer.port))
        ok = await peer.receive_status(200, timeout=15)
        media = re.search(r"^m=audio (\d+) ", ok, re.MULTILINE)
        host = re.search(r"^c=IN IP4 (\S+)", ok, re.MULTILINE)
        assert media and host, ok
        call = SipCall(peer, call_id, to_tag(ok), (host.group(1), int(media.group(1))))
        await peer.send(peer.in_dialog("ACK", call_id=call_id, from_tag=FROM_TAG,
                                       to_tag=call.to_tag, cseq=1))
        yield call
        call.cseq += 1
        await peer.send(peer.in_dialog("BYE", call_id=call_id, from_tag=FROM_TAG,
                                       to_tag=call.to_tag, cseq=call.cseq))


def _config(tmp_path: Path, *, trusted: tuple[str, ...] = ("127.0.0.0/8",),
            media: str = "", greeting: str = "Hello, how can I help?",
            users: list[User] | None = None) -> DaemonConfig:
    config = make_config(tmp_path, users=users)
    config.trusted = trusted
    config.extra = f'[voicebot]\ngreeting = "{greeting}"\n'
    config.write()
    if media:
        text = config.path.read_text().replace("[media]\n", f"[media]\n{media}\n", 1)
        config.path.write_text(text)
    return config


async def _metric(config: DaemonConfig, reason: str) -> float:
    async with httpx.AsyncClient(base_url=config.api_url) as http:
        text = (await http.get("/metrics")).text
    pattern = rf'^voicedashd_rtp_dropped_packets_total\{{reason="{reason}"\}} (\S+)$'
    match = re.search(pattern, text, re.MULTILINE)
    assert match, text
    return float(match.group(1))


def _ulaw(path: Path) -> list[bytes]:
    data = path.read_bytes()
    return [data[i:i + SAMPLES].ljust(SAMPLES, b"\xff") for i in range(0, len(data), SAMPLES)]


# -- the tests -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def words(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[bytes]]:
    """The stranger's question and the caller's goodbye, as 20 ms PCMU payloads."""
    directory = tmp_path_factory.mktemp("strict")
    return {
        "stranger": _ulaw(speak(STRANGER_WORDS, directory / "stranger.ul", tail=0.5)),
        "caller": _ulaw(speak(CALLER_WORDS, directory / "caller.ul", tail=0.5)),
    }


async def test_a_stranger_is_neither_heard_nor_answered(
        tmp_path: Path, words: dict[str, list[bytes]]) -> None:
    """A stranger on 127.0.0.2 speaks into a live call while the caller is silent: it gets
    nothing, the caller's stream from the daemon goes on unbroken, the transcript has none of
    its words, and its packets are counted as dropped. Then the caller's own words are heard
    (the pipeline was listening all along)."""
    alice = User("1001")
    config = _config(tmp_path, users=[alice])
    with trio.fail_after(120):
        async with run_daemon(config.path) as daemon, \
                endpoints("127.0.0.1", "127.0.0.2") as (caller, stranger), \
                sip_call(config, *caller.address) as call, trio.open_nursery() as nursery:
            stop = trio.Event()
            nursery.start_soon(caller.send_until, call.daemon_rtp, stop)
            learnt = await daemon.wait_for_log("rtp_source_learnt", port=caller.address[1])
            call_id = learnt["call_id"]
            await daemon.wait_for_log("tts_completed", timeout=30)  # the greeting is over
            before = len(caller.received)
            window = trio.current_time()
            await stranger.send(call.daemon_rtp, words["stranger"])
            window = trio.current_time() - window
            during = len(caller.received) - before
            await daemon.wait_for_log("rtp_foreign_source_dropped", call_id=call_id)
            stop.set()
            await caller.send(call.daemon_rtp, words["caller"])  # "goodbye": the bot hangs up
            await daemon.wait_for_log("call_ended", timeout=60, call_id=call_id)
            async with httpx.AsyncClient(base_url=config.api_url) as http:
                token = await token_for(http, alice)
                answer = await http.get(f"/api/calls/{call_id}/transcript",
                                        headers=bearer(token))
            foreign = await _metric(config, "foreign_source")
    assert stranger.received == []
    assert_one_unbroken_stream(caller.received)
    assert during >= 0.8 * window / PTIME, (during, window)
    entries = answer.json()["entries"]
    heard = " ".join(e["text"].lower() for e in entries if e["speaker"] == "caller")
    assert "goodbye" in heard, entries
    assert not {"opening", "hours", "saturday"} & set(re.findall(r"\w+", heard)), entries
    assert foreign == stranger.sent == len(words["stranger"])
    ended = daemon.events("media_session_ended")[0]
    assert ended["rtp_foreign"] == stranger.sent, ended
    lines = daemon.events("rtp_foreign_source_dropped")
    assert [(line["dropped"], line["address"]) for line in lines] == [(1, "127.0.0.2")], lines


async def test_a_natted_phone_is_learnt_from_its_packets(tmp_path: Path) -> None:
    """The SDP names 127.0.0.9, outside sip.trusted and media.allowed_peers: nothing is sent
    there, nor anywhere, until the phone's packets (from 127.0.0.1) arrive; then the bot's
    audio, greeting included, goes to where they come from."""
    config = _config(tmp_path, trusted=("127.0.0.1/32",))
    with trio.fail_after(90):
        async with run_daemon(config.path) as daemon:
            async with endpoints("127.0.0.9", "127.0.0.1") as (advertised, phone), \
                    sip_call(config, *advertised.address) as call, \
                    trio.open_nursery() as nursery:
                started = await daemon.wait_for_log("media_session_started")
                assert started["sending"] is False, started
                # A session that sends goes on at once (comfort silence, 50 packets a second).
                with trio.move_on_after(1.0):
                    await phone.arrived.wait()
                assert phone.received == [] and advertised.received == []
                first_sent = trio.current_time()
                stop = trio.Event()
                nursery.start_soon(phone.send_until, call.daemon_rtp, stop)
                learnt = await daemon.wait_for_log("rtp_source_learnt", timeout=10)
                with trio.fail_after(30):
                    while phone.loud_packets() < 25:  # half a second of the greeting, or more
                        await phone.arrived.wait()
                        phone.arrived = trio.Event()
                stop.set()
            ended = await daemon.wait_for_log("media_session_ended")
    assert (learnt["address"], learnt["port"]) == phone.address
    assert (learnt["sdp_address"], learnt["sdp_port"]) == advertised.address
    assert advertised.received == []
    assert_one_unbroken_stream(phone.received)
    assert phone.received[0][0] > first_sent
    assert phone.received[0][1].marker  # the stream starts here, with its first packet
    # Probation drops the first packets (more if a stall delivered them in one burst); the
    # last ones may still have been on their way when the BYE ended the session.
    assert ended["rtp_probation"] >= PROBATION - 1, ended
    assert phone.sent - 3 <= ended["rtp_in"] + ended["rtp_probation"] <= phone.sent, (
        ended, phone.sent)


@pytest.mark.parametrize("allowed", ["allowed_peers", "trusted"])
async def test_an_allowed_sdp_address_gets_our_rtp_before_sending_anything(
        tmp_path: Path, allowed: str) -> None:
    """With the SDP address in media.allowed_peers (or sip.trusted) our RTP goes there from
    the start, before the caller has sent a packet; once it does (the voice bot starts with
    the caller's first audio), the greeting follows in the same stream."""
    if allowed == "trusted":
        config = _config(tmp_path, trusted=("127.0.0.1/32", "127.0.0.9/32"))
    else:
        config = _config(tmp_path, trusted=("127.0.0.1/32",),
                         media='allowed_peers = ["127.0.0.8/31"]')
    with trio.fail_after(90):
        async with run_daemon(config.path) as daemon, \
                endpoints("127.0.0.9") as (advertised,), \
                sip_call(config, *advertised.address) as call, trio.open_nursery() as nursery:
            started = await daemon.wait_for_log("media_session_started")
            assert started["sending"] is True, started
            with trio.fail_after(10):
                while len(advertised.received) < 25:  # half a second of our stream
                    await advertised.arrived.wait()
                    advertised.arrived = trio.Event()
            assert advertised.sent == 0
            assert daemon.events("rtp_source_learnt") == []
            stop = trio.Event()
            nursery.start_soon(advertised.send_until, call.daemon_rtp, stop)
            await daemon.wait_for_log("rtp_source_learnt", port=advertised.address[1])
            with trio.fail_after(30):
                while advertised.loud_packets() < 25:  # the greeting
                    await advertised.arrived.wait()
                    advertised.arrived = trio.Event()
            stop.set()
    assert_one_unbroken_stream(advertised.received)


async def test_a_reinvite_to_a_new_address_is_learnt_afresh(tmp_path: Path) -> None:
    """The call moves (re-INVITE) to an SDP address outside the allowed peers: the old
    source gets nothing more, the new SDP address nothing ever, and the new source that
    sends is learnt without waiting for media.relearn_after."""
    config = _config(tmp_path, trusted=("127.0.0.1/32",), media='relearn_after = "1h"')
    with trio.fail_after(90):
        async with run_daemon(config.path) as daemon, \
                endpoints("127.0.0.1", "127.0.0.9", "127.0.0.3") as (old, moved_sdp, new), \
                sip_call(config, *old.address) as call, trio.open_nursery() as nursery:
            await old.send(call.daemon_rtp, [SILENCE] * 10)
            await daemon.wait_for_log("rtp_source_learnt", port=old.address[1])
            await call.reinvite(*moved_sdp.address)
            # Packets sent before the re-INVITE took effect are in the socket already.
            _drain(old)
            count_after_move = len(old.received)
            stop = trio.Event()
            nursery.start_soon(new.send_until, call.daemon_rtp, stop)
            learnt = await daemon.wait_for_log("rtp_source_learnt", port=new.address[1])
            with trio.fail_after(10):
                await new.arrived.wait()
            await old.send(call.daemon_rtp, [SILENCE] * 10)  # the old source is now foreign
            await daemon.wait_for_log("rtp_foreign_source_dropped", port=old.address[1])
            stop.set()
    assert learnt["address"] == "127.0.0.3"
    assert len(old.received) == count_after_move
    assert moved_sdp.received == []
    assert_one_unbroken_stream(old.received + new.received)


async def test_a_silent_source_can_be_replaced_after_relearn_after(tmp_path: Path) -> None:
    """Another source (127.0.0.3) is dropped while the learnt one sends; once that one has
    been silent for media.relearn_after, the newcomer is learnt and gets our RTP."""
    config = _config(tmp_path, media='relearn_after = "400ms"')
    with trio.fail_after(90):
        async with run_daemon(config.path) as daemon, \
                endpoints("127.0.0.1", "127.0.0.3") as (first, second), \
                sip_call(config, *first.address) as call, trio.open_nursery() as nursery:
            stop_first = trio.Event()
            nursery.start_soon(first.send_until, call.daemon_rtp, stop_first)
            learnt_first = await daemon.wait_for_log("rtp_source_learnt", port=first.address[1])
            await second.send(call.daemon_rtp, [SILENCE] * 10)
            await daemon.wait_for_log("rtp_foreign_source_dropped", port=second.address[1])
            assert second.received == []
            stop_first.set()
            silent_since = trio.current_time()
            stop_second = trio.Event()
            nursery.start_soon(second.send_until, call.daemon_rtp, stop_second)
            learnt = await daemon.wait_for_log("rtp_source_learnt", port=second.address[1])
            learnt_at = trio.current_time()
            with trio.fail_after(10):
                await second.arrived.wait()
            stop_second.set()
    assert learnt_first["address"] == "127.0.0.1" and learnt["address"] == "127.0.0.3"
    assert learnt_at - silent_since >= 0.4
    assert_one_unbroken_stream(first.received + second.received)


def _drain(endpoint: Endpoint) -> None:
    """Take what already waits on the endpoint's socket (its listener may not have run yet)."""
    with socket.socket(fileno=endpoint.sock.dup().detach()) as handle:
        while True:
            try:
                data = handle.recv(2048, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            endpoint.received.append((trio.current_time(), parse_rtp(data)))



async def test_allowed_peers_reloads_for_the_next_call(tmp_path: Path) -> None:
    """media.allowed_peers is read per call: after a reload that adds 127.0.0.9, a call whose
    SDP names it gets our RTP from the start, where the call before got nothing."""
    config = _config(tmp_path, trusted=("127.0.0.1/32",))
    with trio.fail_after(60):
        async with run_daemon(config.path) as daemon:
            async with endpoints("127.0.0.9") as (refused,), \
                    sip_call(config, *refused.address):
                before = await daemon.wait_for_log("media_session_started")
                with trio.move_on_after(0.5):  # 25 packets' time
                    await refused.arrived.wait()
            config.path.write_text(config.path.read_text().replace(
                "[media]\n", '[media]\nallowed_peers = ["127.0.0.9/32"]\n', 1))
            daemon.send_signal(signal.SIGHUP)
            reloaded = await daemon.wait_for_log("config_reloaded")
            mark = len(daemon.logs)
            async with endpoints("127.0.0.9") as (advertised,), \
                    sip_call(config, *advertised.address):
                after = await daemon.wait_for_log("media_session_started", start=mark)
                with trio.fail_after(10):
                    await advertised.arrived.wait()
    assert before["sending"] is False and after["sending"] is True
    assert refused.received == []
    assert "media.allowed_peers" in reloaded["applied"], reloaded
