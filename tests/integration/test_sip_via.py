"""Forged Via fields against the running daemon: answers reach the real source and no one else.

Every request comes from a socket on 127.0.0.1 (the real source) with a Via that names other
places: a forged received=, a host name, another rport, another loopback address. Sockets
bound on those other places (127.0.0.3, other ports) are the strangers; loopback delivers a
datagram inside sendto, so once the real source has its last answer, anything ever sent to a
stranger is already waiting in its queue.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import trio

from tests.harness import RunningDaemon, make_config, run_daemon
from tests.sipp import RawSipPeer, header, to_tag
from voicedashd.sip.fields import top_via
from voicedashd.sip.message import Headers

STRANGER_HOST = "127.0.0.3"
NAME = "hang.invalid"  # a name whose look-up fails or hangs: it must never be looked up

# (case id, Via template, which strangers to watch); {real} is the real source port,
# {other} a stranger's port. Without rport, the answer goes to the sent-by port, so the
# cases that leave rport out name the real port there.
VIAS = [
    ("forged-received-ip", "SIP/2.0/UDP 127.0.0.1:{real};branch={branch};received=127.0.0.3"),
    ("forged-received-name", f"SIP/2.0/UDP 127.0.0.1:{{real}};branch={{branch}};received={NAME}"),
    ("via-host-name", f"SIP/2.0/UDP {NAME}:{{real}};branch={{branch}}"),
    ("via-host-name-rport", f"SIP/2.0/UDP {NAME}:{{other}};rport;branch={{branch}}"),
    ("rport-other-port", "SIP/2.0/UDP 127.0.0.1:{other};branch={branch};rport={other}"),
    ("bare-rport", "SIP/2.0/UDP 127.0.0.1:{other};branch={branch};rport"),
    ("other-loopback", "SIP/2.0/UDP 127.0.0.3:{real};branch={branch}"),
    ("other-loopback-everything", "SIP/2.0/UDP 127.0.0.3:{other};branch={branch}"
                                  ";received=127.0.0.3;rport={other};maddr=127.0.0.3"),
]


class Strangers:
    """UDP sockets on the addresses a forged Via names; they must never receive anything."""

    def __init__(self, stack: ExitStack, real: int) -> None:
        self.other = _free_udp_port()
        self.sockets = [
            stack.enter_context(_bound(STRANGER_HOST, real)),
            stack.enter_context(_bound(STRANGER_HOST, self.other)),
            stack.enter_context(_bound("127.0.0.1", self.other)),
            stack.enter_context(_bound(STRANGER_HOST, 5060)),
        ]

    def received(self) -> list[tuple[str, bytes]]:
        """Whatever reached any stranger so far."""
        got = []
        for sock in self.sockets:
            while True:
                try:
                    got.append((f"{sock.getsockname()}", sock.recv(65535)))
                except BlockingIOError:
                    break
        return got


def _free_udp_port() -> int:
    """A port free on 127.0.0.1 and 127.0.0.3 right now."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
            try:
                with _bound(STRANGER_HOST, port):
                    return port
            except OSError:
                continue


@contextmanager
def _bound(host: str, port: int) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind((host, port))
        yield sock
    finally:
        sock.close()


def _via(template: str, peer: RawSipPeer, strangers: Strangers) -> str:
    return template.format(real=peer.port, other=strangers.other,
                           branch=f"z9hG4bK{secrets.token_hex(6)}")


def _with_via(message: str, via: str) -> str:
    lines = message.split("\r\n")
    index = next(i for i, line in enumerate(lines) if line.startswith("Via:"))
    lines[index] = f"Via: {via}"
    return "\r\n".join(lines)


def _assert_stamped(response: str, peer: RawSipPeer, template: str) -> None:
    """The answer's top Via says what the daemon saw: our address, our port if asked."""
    via = top_via(Headers([("Via", header(response, "Via") or "")]))
    assert via.received == "127.0.0.1", response
    if "rport" in template:
        assert via.params["rport"] == str(peer.port), response
    assert via.params.get("maddr") in (None, STRANGER_HOST)  # kept as sent, never used


def _options(peer: RawSipPeer, via: str) -> str:
    return (f"OPTIONS sip:127.0.0.1:{peer.daemon[1]} SIP/2.0\r\n"
            f"Via: {via}\r\n"
            f"From: <sip:monitor@127.0.0.1>;tag={secrets.token_hex(4)}\r\n"
            f"To: <sip:127.0.0.1:{peer.daemon[1]}>\r\n"
            f"Call-ID: {secrets.token_hex(8)}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n")


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[tuple[int, RunningDaemon]]:
    """The daemon on a default test config, and its SIP port."""
    config = make_config(tmp_path)
    config.write()
    async with run_daemon(config.path) as running:
        yield config.sip_port, running


async def test_options_with_forged_vias_are_answered_to_the_real_source_only(
        daemon: tuple[int, RunningDaemon]) -> None:
    port, running = daemon
    async with RawSipPeer(port) as peer:
        with ExitStack() as stack:
            strangers = Strangers(stack, peer.port)
            for case, template in VIAS:
                via = _via(template, peer, strangers)
                # Promptly: a name in the Via is never looked up before answering.
                await peer.send(_options(peer, via))
                response = await peer.receive_status(200, timeout=2)
                assert header(response, "CSeq") == "1 OPTIONS", case
                _assert_stamped(response, peer, template)
                assert strangers.received() == [], case
            assert not running.events("sip_send_failed")


async def test_invites_with_forged_vias_ring_answer_and_resend_to_the_real_source_only(
        daemon: tuple[int, RunningDaemon]) -> None:
    port, running = daemon
    async with RawSipPeer(port) as peer:
        with ExitStack() as stack:
            strangers = Strangers(stack, peer.port)
            for case, template in VIAS:
                via = _via(template, peer, strangers)
                call_id = f"{secrets.token_hex(6)}@via"
                invite = _with_via(peer.invite(branch="unused", call_id=call_id), via)
                await peer.send(invite)
                statuses = []
                with trio.fail_after(5):
                    while 200 not in statuses:
                        response = await peer.receive()
                        statuses.append(int(response.split(" ", 2)[1]))
                        _assert_stamped(response, peer, template)
                assert statuses[-2:] == [180, 200], (case, statuses)
                tag = to_tag(response)
                # No ACK yet: timer G resends the 200, to the same place.
                resent = await peer.receive_status(200, timeout=3)
                _assert_stamped(resent, peer, template)
                await peer.send(invite)  # a retransmitted INVITE gets the 200 again
                _assert_stamped(await peer.receive_status(200, timeout=3), peer, template)
                ack = peer.in_dialog("ACK", call_id=call_id, from_tag="caller1", to_tag=tag,
                                     cseq=1)
                await peer.send(_with_via(ack, _via(template, peer, strangers)))
                bye = peer.in_dialog("BYE", call_id=call_id, from_tag="caller1", to_tag=tag,
                                     cseq=2)
                await peer.send(_with_via(bye, _via(template, peer, strangers)))
                ok = await peer.receive_status(200, timeout=3)
                assert header(ok, "CSeq") == "2 BYE", case
                _assert_stamped(ok, peer, template)
                assert strangers.received() == [], case
            await running.wait_for_count("call_ended", len(VIAS))
            reasons = {e["reason"] for e in running.events("call_ended")}
            assert reasons == {"caller_hangup"}
            assert not running.events("sip_send_failed")


def _sdp_with(invite: str, connection: str) -> str:
    """The INVITE with its offer's c= line replaced (and Content-Length to match)."""
    head, _, offer = invite.partition("\r\n\r\n")
    body = offer.replace("c=IN IP4 127.0.0.1", connection)
    head = head.replace(f"Content-Length: {len(offer)}", f"Content-Length: {len(body)}")
    return f"{head}\r\n\r\n{body}"


async def test_sdp_naming_a_host_gets_488_initially_and_in_a_reinvite(
        daemon: tuple[int, RunningDaemon]) -> None:
    port, running = daemon
    problem = f"c= address '{NAME}' is not an IP address"
    async with RawSipPeer(port) as peer:
        # The initial INVITE: refused at once, no call.
        call_id = f"{secrets.token_hex(6)}@sdp"
        named = _sdp_with(peer.invite(branch=f"z9hG4bK{secrets.token_hex(6)}", call_id=call_id),
                          f"c=IN IP4 {NAME}")
        await peer.send(named)
        refused = await peer.receive_status(488, timeout=2)
        assert refused.split("\r\n")[0] == f"SIP/2.0 488 Not Acceptable Here - {problem}"
        assert header(refused, "Warning") == f'399 voicedashd "{problem}"'
        assert running.events("call_ringing") == []
        # A call with a good offer, then a re-INVITE naming a host: 488, the call goes on.
        call_id = f"{secrets.token_hex(6)}@sdp"
        await peer.send(peer.invite(branch=f"z9hG4bK{secrets.token_hex(6)}", call_id=call_id))
        answer = await peer.receive_status(200)
        tag = to_tag(answer)
        await peer.send(peer.in_dialog("ACK", call_id=call_id, from_tag="caller1", to_tag=tag,
                                       cseq=1))
        await running.wait_for_log("call_started")

        def reinvite(cseq: int) -> str:
            return peer.invite(branch=f"z9hG4bK{secrets.token_hex(6)}", call_id=call_id,
                               cseq=cseq).replace("To: <sip:1001@acme.example>",
                                                  f"To: <sip:1001@acme.example>;tag={tag}")

        await peer.send(_sdp_with(reinvite(2), f"c=IN IP4 {NAME}"))
        refused = await peer.receive_status(488, timeout=2)
        assert header(refused, "Warning") == f'399 voicedashd "{problem}"'
        assert header(refused, "CSeq") == "2 INVITE"
        await peer.send(peer.in_dialog("ACK", call_id=call_id, from_tag="caller1", to_tag=tag,
                                       cseq=2))
        # The dialog and its media are as they were: a later re-INVITE is answered as usual.
        await peer.send(reinvite(3))
        again = await peer.receive_status(200)
        assert header(again, "CSeq") == "3 INVITE"
        assert answer.partition("\r\n\r\n")[2].split("\r\n")[3] == (
            again.partition("\r\n\r\n")[2].split("\r\n")[3])  # the same c= line: our media
        await peer.send(peer.in_dialog("BYE", call_id=call_id, from_tag="caller1", to_tag=tag,
                                       cseq=4))
        await peer.receive_status(200)
        ended = await running.wait_for_log("call_ended")
        assert ended["reason"] == "caller_hangup"
        assert len(running.events("call_ringing")) == 1
        assert len(running.events("call_media_updated")) == 1


async def test_over_tcp_the_answer_comes_back_on_the_connection(
        daemon: tuple[int, RunningDaemon]) -> None:
    port, running = daemon
    with socket.socket() as stranger:  # a TCP listener where the forged Via points
        stranger.setblocking(False)
        stranger.bind((STRANGER_HOST, 0))
        stranger.listen(4)
        other = stranger.getsockname()[1]
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            real = stream.socket.getsockname()[1]
            via = (f"SIP/2.0/TCP {STRANGER_HOST}:{other};branch=z9hG4bK{secrets.token_hex(6)}"
                   f";received={STRANGER_HOST};rport={other}")
            options = (f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: {via}\r\n"
                       f"From: <sip:monitor@127.0.0.1>;tag=t1\r\nTo: <sip:127.0.0.1:{port}>\r\n"
                       f"Call-ID: {secrets.token_hex(8)}\r\nCSeq: 1 OPTIONS\r\n"
                       "Content-Length: 0\r\n\r\n")
            await stream.send_all(options.encode())
            received = b""
            with trio.fail_after(2):
                while b"\r\n\r\n" not in received:
                    received += await stream.receive_some(65535)
        response = received.decode()
        assert response.startswith("SIP/2.0 200 OK"), response
        stamped = top_via(Headers([("Via", header(response, "Via") or "")]))
        assert (stamped.received, stamped.params["rport"]) == ("127.0.0.1", str(real))
        with pytest.raises(BlockingIOError):  # nobody ever connected to the stranger
            stranger.accept()
    assert not running.events("sip_send_failed")
