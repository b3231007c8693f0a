"""Drive sipp (Debian sip-tester) against a test daemon, and a raw UDP SIP peer for exact checks."""

from __future__ import annotations

import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import trio

from tests.harness import free_port

SCENARIOS = Path(__file__).parent / "integration" / "scenarios"


@dataclass
class SippResult:
    """How a sipp run ended."""

    returncode: int
    errors: str
    stdout: str

    @property
    def ok(self) -> bool:
        """Every call succeeded (sipp's exit code 0)."""
        return self.returncode == 0


def sipp_binary() -> str:
    """Return the sipp path; scripts/test installs sip-tester, so a missing one is a failure."""
    path = shutil.which("sipp")
    if path is None:
        raise AssertionError("sipp not found: install the Debian package sip-tester "
                             "(scripts/test does)")
    return path


async def run_sipp(target_port: int, directory: Path, *, scenario: str | None = None,
                   builtin: str | None = None, calls: int = 1, rate: float = 10,
                   service: str = "1001", transport: str = "u1", local_ip: str = "127.0.0.1",
                   extra: tuple[str, ...] = (), timeout: float = 60,
                   target_host: str = "127.0.0.1") -> SippResult:
    """Run sipp as a UAC against the daemon until its calls are done (or timeout)."""
    name = secrets.token_hex(3)
    error_file = directory / f"sipp-{name}.err"
    args = [sipp_binary(), f"{target_host}:{target_port}", "-i", local_ip,
            "-p", str(free_port()), "-t", transport, "-m", str(calls), "-r", str(rate),
            "-s", service, "-timeout", f"{int(timeout)}s", "-timeout_error",
            "-trace_err", "-error_file", str(error_file), "-nostdin", *extra]
    if scenario is not None:
        args += ["-sf", str(SCENARIOS / f"{scenario}.xml")]
    else:
        args += ["-sn", builtin or "uac"]
    with trio.fail_after(timeout + 30):
        completed = await trio.run_process(args, capture_stdout=True, capture_stderr=True,
                                           check=False, cwd=directory)
    errors = error_file.read_text(errors="replace") if error_file.exists() else ""
    errors = "\n".join(line for line in errors.splitlines()
                       if "Failed to delete FD from epoll" not in line)
    return SippResult(completed.returncode, errors + completed.stderr.decode(errors="replace"),
                      completed.stdout.decode(errors="replace"))


class RawSipPeer:
    """A UDP SIP peer on 127.0.0.1 that sends exact text and reads exact responses."""

    def __init__(self, daemon_port: int) -> None:
        self.daemon = ("127.0.0.1", daemon_port)
        self.sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        self.port = 0

    async def __aenter__(self) -> RawSipPeer:
        await self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.sock.close()

    async def send(self, text: str | bytes) -> None:
        """Send one datagram (str is CRLF-normalised)."""
        data = text if isinstance(text, bytes) else re.sub(r"\r?\n", "\r\n", text).encode()
        await self.sock.sendto(data, self.daemon)

    async def receive(self, timeout: float = 5) -> str:
        """Receive one datagram as text."""
        with trio.fail_after(timeout):
            data = await self.sock.recv(65535)
        return data.decode(errors="replace")

    async def receive_status(self, status: int, timeout: float = 5) -> str:
        """Receive until a response with this status code arrives; return it."""
        with trio.fail_after(timeout):
            while True:
                text = await self.receive(timeout)
                if text.startswith(f"SIP/2.0 {status} "):
                    return text

    def invite(self, *, branch: str, call_id: str, from_tag: str = "caller1",
               extension: str = "1001", cseq: int = 1, extra: str = "") -> str:
        """An INVITE with a PCMU offer."""
        sdp = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
               "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
        return (f"INVITE sip:{extension}@127.0.0.1:{self.daemon[1]} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch};rport\r\n"
                f"From: \"Raw Peer\" <sip:5550000@127.0.0.1:{self.port}>;tag={from_tag}\r\n"
                f"To: <sip:{extension}@acme.example>\r\n"
                f"Call-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\n"
                f"Contact: <sip:5550000@127.0.0.1:{self.port}>\r\nMax-Forwards: 70\r\n"
                f"{extra}Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}")

    def in_dialog(self, method: str, *, call_id: str, from_tag: str, to_tag: str, cseq: int,
                  extension: str = "1001") -> str:
        """An in-dialog request (ACK, BYE) with a fresh branch."""
        return (f"{method} sip:{extension}@127.0.0.1:{self.daemon[1]} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{secrets.token_hex(6)}"
                f";rport\r\n"
                f"From: \"Raw Peer\" <sip:5550000@127.0.0.1:{self.port}>;tag={from_tag}\r\n"
                f"To: <sip:{extension}@acme.example>;tag={to_tag}\r\n"
                f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n"
                f"Content-Length: 0\r\n\r\n")


def header(message: str, name: str) -> str | None:
    """The first value of a header in a raw message."""
    match = re.search(rf"^{re.escape(name)}:[ \t]*(.*?)\r?$", message, re.IGNORECASE | re.MULTILINE)
    return match.group(1) if match else None


def to_tag(message: str) -> str:
    """The To tag of a raw response."""
    value = header(message, "To") or ""
    match = re.search(r";tag=([^;>\s]+)", value)
    assert match, f"no To tag in {value!r}"
    return match.group(1)
