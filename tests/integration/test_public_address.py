"""The addresses the daemon writes for a PBX on another host, against the running daemon.

The daemon listens on a second loopback address (127.0.0.2), or on 0.0.0.0 with public
addresses; the PBX is a raw SIP and RTP client on 127.0.0.1. Every header and SDP line the
daemon writes about itself (Contact of 180 and 200, SDP o= and c=, the Via of its BYE) must
name the address the PBX can reach, and the RTP it sends comes from it. Every packet goes to
127.0.0.0/8.
"""

from __future__ import annotations

import re
import secrets
import signal
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from tests.harness import make_config, run_daemon
from tests.sipp import header, run_sipp
from voicedashd.sip.fields import top_via
from voicedashd.sip.message import Headers

PBX = "127.0.0.1"
FROM_TAG = "pbx1"


@dataclass(frozen=True)
class Case:
    """Where the daemon binds, what it is told to publish, and what it must then write."""

    listen: str
    media_address: str
    public: str | None
    expected: str
    rtp_from_expected: bool  # bound to the expected address itself: RTP leaves from it


CASES = {
    "second-loopback": Case("127.0.0.2", "127.0.0.2", None, "127.0.0.2", True),
    "wildcard-public": Case("0.0.0.0", "0.0.0.0", "127.0.0.2", "127.0.0.2", False),
    # No public address: this host's address facing the PBX.
    "wildcard-facing-pbx": Case("0.0.0.0", "0.0.0.0", None, PBX, True),
}


def _invite(daemon: tuple[str, int], sip_port: int, rtp_port: int, call_id: str) -> bytes:
    sdp = (f"v=0\r\no=- 1 1 IN IP4 {PBX}\r\ns=-\r\nc=IN IP4 {PBX}\r\nt=0 0\r\n"
           f"m=audio {rtp_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
    text = (f"INVITE sip:1001@{daemon[0]}:{daemon[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {PBX}:{sip_port};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
            f"From: <sip:5550000@{PBX}>;tag={FROM_TAG}\r\nTo: <sip:1001@acme.example>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:5550000@{PBX}:{sip_port}>\r\nMax-Forwards: 70\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}")
    return text.encode()


def _ack(daemon: tuple[str, int], sip_port: int, call_id: str, tag: str) -> bytes:
    return (f"ACK sip:1001@{daemon[0]}:{daemon[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {PBX}:{sip_port};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
            f"From: <sip:5550000@{PBX}>;tag={FROM_TAG}\r\n"
            f"To: <sip:1001@acme.example>;tag={tag}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\n"
            "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


def _ok_to(request: str) -> bytes:
    copied = [f"{name}: {header(request, name)}" for name in ("Via", "From", "To", "Call-ID",
                                                              "CSeq")]
    return ("SIP/2.0 200 OK\r\n" + "\r\n".join(copied) + "\r\nContent-Length: 0\r\n\r\n").encode()


def _rtp(sequence: int, ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, sequence, sequence * 160, ssrc) + b"\xff" * 160


def _config_text(text: str, case: Case, sip_port: int) -> str:
    text = text.replace(f'listen = "127.0.0.1:{sip_port}"',
                        f'listen = "{case.listen}:{sip_port}"', 1)
    text = text.replace('address = "127.0.0.1"', f'address = "{case.media_address}"', 1)
    if case.public:
        for section in ("sip", "media"):
            text = text.replace(f"[{section}]\n",
                                f'[{section}]\npublic_address = "{case.public}"\n', 1)
    return text


async def _receive(sock: trio.socket.SocketType, status_or_method: str) -> str:
    """The next SIP message starting with this status ("180") or method ("BYE")."""
    while True:
        text = (await sock.recv(65535)).decode(errors="replace")
        if text.startswith((f"SIP/2.0 {status_or_method} ", f"{status_or_method} ")):
            return text


@pytest.mark.parametrize("name", list(CASES))
async def test_every_address_the_daemon_writes_is_the_one_the_pbx_can_reach(
        tmp_path: Path, name: str) -> None:
    case = CASES[name]
    config = make_config(tmp_path)
    config.write()
    config.path.write_text(_config_text(config.path.read_text(), case, config.sip_port))
    expected = case.expected
    target = (expected, config.sip_port)  # the PBX sends where the daemon said it is
    sip = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    rtp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sip, rtp:
        await sip.bind((PBX, 0))
        await rtp.bind((PBX, 0))
        sip_port, rtp_port = sip.getsockname()[1], rtp.getsockname()[1]
        async with run_daemon(config.path) as daemon:
            with trio.fail_after(30):
                call_id = f"{secrets.token_hex(6)}@public"
                await sip.sendto(_invite(target, sip_port, rtp_port, call_id), target)
                ringing = await _receive(sip, "180")
                ok = await _receive(sip, "200")
                for response in (ringing, ok):
                    assert header(response, "Contact") == f"<sip:{expected}:{config.sip_port}>"
                sdp = ok.split("\r\n\r\n", 1)[1].split("\r\n")
                [origin] = [line for line in sdp if line.startswith("o=")]
                assert origin.endswith(f" IN IP4 {expected}"), ok
                assert f"c=IN IP4 {expected}" in sdp, ok
                media = re.search(r"^m=audio (\d+) ", ok, re.MULTILINE)
                assert media, ok
                daemon_rtp = (expected, int(media.group(1)))
                await sip.sendto(_ack(target, sip_port, call_id, _to_tag(ok)), target)

                # Our RTP to the SDP address reaches the call; the daemon's comes back.
                ssrc = secrets.randbits(32)
                for sequence in range(5):
                    await rtp.sendto(_rtp(sequence, ssrc), daemon_rtp)
                learnt = await daemon.wait_for_log("rtp_source_learnt", port=rtp_port)
                assert learnt["address"] == PBX
                _, source = await rtp.recvfrom(2048)
                if case.rtp_from_expected:
                    assert source == daemon_rtp

                # Stopping the daemon hangs up: its BYE's Via names the same address.
                daemon.send_signal(signal.SIGTERM)
                bye = await _receive(sip, "BYE")
                via = top_via(Headers([("Via", header(bye, "Via") or "")]))
                assert (via.host, via.port) == (expected, config.sip_port), bye
                assert header(bye, "Contact") in (None, f"<sip:{expected}:{config.sip_port}>")
                await sip.sendto(_ok_to(bye), (via.host, via.port))
                await daemon.wait_for_log("sip_bye_sent", status=200)


async def test_a_sipp_call_sees_only_the_public_address_of_a_wildcard_daemon(
        tmp_path: Path) -> None:
    """sipp (the PBX, on 127.0.0.1) calls a daemon on 0.0.0.0 told its public address is
    127.0.0.2; the daemon hangs up after media.timeout. sipp's message log shows what it got."""
    case = CASES["wildcard-public"]
    config = make_config(tmp_path)
    config.write()
    text = _config_text(config.path.read_text(), case, config.sip_port)
    config.path.write_text(text.replace("[media]\n", '[media]\ntimeout = "1s"\n', 1))
    log = tmp_path / "sipp-messages.log"
    async with run_daemon(config.path) as daemon:
        result = await run_sipp(config.sip_port, tmp_path, scenario="server_bye",
                                target_host="127.0.0.2",
                                extra=("-trace_msg", "-message_file", str(log)))
        assert result.ok, result.errors
        await daemon.wait_for_log("sip_bye_sent", status=200)
    received = [block.split("\n\n", 1)[1].strip().replace("\n", "\r\n")
                for block in log.read_text().split("-" * 47) if "message received" in block]
    by_start = {message.split(" ", 2)[1] if message.startswith("SIP/") else
                message.split(" ", 1)[0]: message for message in received}
    for status in ("180", "200"):
        assert header(by_start[status], "Contact") == f"<sip:127.0.0.2:{config.sip_port}>"
    sdp = by_start["200"].split("\r\n\r\n", 1)[1].split("\r\n")
    assert next(line for line in sdp if line.startswith("o=")).endswith(" IN IP4 127.0.0.2")
    assert "c=IN IP4 127.0.0.2" in sdp
    via = top_via(Headers([("Via", header(by_start["BYE"], "Via") or "")]))
    assert (via.host, via.port) == ("127.0.0.2", config.sip_port)


def _to_tag(message: str) -> str:
    match = re.search(r";tag=([^;>\s]+)", header(message, "To") or "")
    assert match, message
    return match.group(1)



async def test_listen_host_names_are_resolved_at_start_and_contact_names_the_address(
        tmp_path: Path) -> None:
    """`localhost` in every listen key: resolved from /etc/hosts (nothing leaves the host),
    bound, and never written as a name."""
    config = make_config(tmp_path)
    config.write()
    text = config.path.read_text()
    for port in (config.sip_port, config.api_port, config.hub_port):
        text = text.replace(f'listen = "127.0.0.1:{port}"', f'listen = "localhost:{port}"', 1)
    config.path.write_text(text)
    async with run_daemon(config.path) as daemon:
        listening = await daemon.wait_for_log("sip_listening")
        host = listening["listen"].rsplit(":", 1)[0].strip("[]")
        assert host in ("127.0.0.1", "::1"), listening
        family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
        sip = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
        with sip, trio.fail_after(15):
            await sip.bind((host, 0))
            call_id = f"{secrets.token_hex(6)}@names"
            invite = _invite((host, config.sip_port), sip.getsockname()[1], 40000, call_id)
            await sip.sendto(invite, (host, config.sip_port))  # answers go to our source
            ringing = await _receive(sip, "180")
            contact_host = "[::1]" if host == "::1" else host
            assert header(ringing, "Contact") == f"<sip:{contact_host}:{config.sip_port}>"
