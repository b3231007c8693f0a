"""Run Kamailio (Debian kamailio) in the foreground on loopback with tests/kamailio/kamailio.cfg."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

CONFIG = Path(__file__).parent / "kamailio.cfg"
START_TIMEOUT = 10


@dataclass(frozen=True, slots=True)
class ProxySetup:
    """Where the proxy listens, where extension 1001's phone is, and where voicedashd is."""

    host: str
    port: int
    phone: tuple[str, int]
    voicedashd: tuple[str, int]
    route_user: str = "bot"  # the number voicedashd is called on
    ring_timeout_ms: int = 2000

    def defines(self) -> list[str]:
        """The -A defines that fill in the config's placeholders."""
        phone_host, phone_port = self.phone
        bot_host, bot_port = self.voicedashd
        return ["-A", f"LISTEN=udp:{self.host}:{self.port}",
                "-A", f'PHONE_1001="sip:{phone_host}:{phone_port}"',
                "-A", f'VOICEDASHD="sip:{self.route_user}@{bot_host}:{bot_port}"',
                "-A", f"RING_TIMEOUT={self.ring_timeout_ms}"]


def kamailio_binary() -> str:
    """Return the kamailio path; scripts/test installs it, so a missing one is a failure."""
    path = shutil.which("kamailio") or shutil.which("kamailio", path="/usr/sbin:/sbin")
    if path is None:
        raise AssertionError("kamailio not found: install the Debian package kamailio "
                             "(scripts/test does)")
    return path


class RunningProxy:
    """A kamailio process and the lines it logged (its xlog lines included)."""

    def __init__(self, process: trio.Process, setup: ProxySetup) -> None:
        self.process = process
        self.setup = setup
        self.lines: list[str] = []
        self._changed = trio.Event()
        self.closed = trio.Event()  # its stderr ended: it has exited

    async def _read(self) -> None:
        assert self.process.stderr is not None
        buffer = b""
        async for chunk in self.process.stderr:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            self.lines += [line.decode(errors="replace") for line in lines]
            self._changed.set()
            self._changed = trio.Event()
        self.closed.set()

    def matching(self, *parts: str) -> list[str]:
        """The lines so far that contain every one of parts."""
        return [line for line in self.lines if all(part in line for part in parts)]

    async def wait_for_line(self, *parts: str, timeout: float = 10) -> str:
        """Wait for a line containing every one of parts."""
        with trio.fail_after(timeout):
            while not (found := self.matching(*parts)):
                await self._changed.wait()
        return found[0]

    def dump(self) -> str:
        """The last lines, for assertion messages."""
        return "\n".join(self.lines[-60:])


async def _answers(process: trio.Process, host: str, port: int) -> bool:
    """Send OPTIONS until the proxy answers anything (405 here): True, or False if it exited."""
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
        await sock.bind(("127.0.0.1", 0))
        local = sock.getsockname()[1]
        while process.poll() is None:  # exited: a config error, said on stderr
            branch = f"z9hG4bK{secrets.token_hex(6)}"
            probe = (f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
                     f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch={branch}\r\n"
                     f"From: <sip:probe@127.0.0.1>;tag={secrets.token_hex(4)}\r\n"
                     f"To: <sip:{host}:{port}>\r\nCall-ID: {branch}@probe\r\n"
                     f"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
            await sock.sendto(probe.encode(), (host, port))
            with trio.move_on_after(0.2):  # not bound yet: the probe is lost, send another
                await sock.recv(65535)
                return True
    return False


@asynccontextmanager
async def run_kamailio(directory: Path, setup: ProxySetup) -> AsyncIterator[RunningProxy]:
    """Start kamailio in the foreground (files in directory); SIGTERM, then kill, on exit."""
    runtime = directory / f"kamailio-{secrets.token_hex(3)}"
    runtime.mkdir()
    args = [kamailio_binary(), "-DD", "-E", "-f", str(CONFIG), "-Y", str(runtime),
            "-P", str(runtime / "kamailio.pid"), "-w", str(runtime), "-m", "16", "-M", "4",
            *setup.defines()]
    process = await trio.lowlevel.open_process(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "LC_ALL": "C"}, start_new_session=True)
    proxy = RunningProxy(process, setup)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(proxy._read)
            answered = False
            with trio.move_on_after(START_TIMEOUT):
                answered = await _answers(process, setup.host, setup.port)
            if not answered:
                with trio.move_on_after(1):  # its last words (a config error) are on stderr
                    await proxy.closed.wait()
                raise AssertionError(f"kamailio did not answer ({process.returncode=}):\n"
                                     f"{proxy.dump()}")
            yield proxy
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)  # the main process stops its children
                with trio.move_on_after(5):
                    await process.wait()
            with contextlib.suppress(ProcessLookupError):  # its own session: what is left
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
