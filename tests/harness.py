"""Run the real daemon as a subprocess on free loopback ports, with a test NOTIFY_SOCKET."""

from __future__ import annotations

import json
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from voicedashd.passwords import hash_password

START_TIMEOUT = 30


def free_port() -> int:
    """Return a loopback port free on both UDP and TCP right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """Return `count` distinct loopback ports, each free on both UDP and TCP right now.

    The candidates stay bound until all are chosen: the kernel may hand the same ephemeral
    port to two bind(0) calls in a row once the first socket is closed.
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(50 * count):
            if len(ports) == count:
                return ports
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(tcp)
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            ports.append(port)
    finally:
        for sock in held:
            sock.close()
    if len(ports) == count:
        return ports
    raise RuntimeError("no free port")


def free_even_port_range(size: int = 40) -> tuple[int, int]:
    """Return a LOW-HIGH range of UDP ports that are free right now."""
    for _ in range(200):
        low = 20000 + 2 * secrets.randbelow(20000)
        socks = []
        try:
            for port in range(low, low + size):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return low, low + size - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


@dataclass
class User:
    """A dashboard user written into a test config."""

    extension: str
    tenant: str = "acme"
    role: str = "user"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))


@dataclass
class DaemonConfig:
    """Where a test daemon listens and the files it uses."""

    dir: Path
    sip_port: int
    api_port: int
    hub_port: int
    rtp_ports: tuple[int, int]
    users: list[User]
    tenants: dict[str, list[str]]
    extra: str = ""
    shutdown_grace: str = "5s"
    trusted: tuple[str, ...] = ("127.0.0.0/8",)

    @property
    def path(self) -> Path:
        """The config file."""
        return self.dir / "voicedashd.toml"

    @property
    def api_url(self) -> str:
        """Base URL of the HTTP API."""
        return f"http://127.0.0.1:{self.api_port}"

    def render(self) -> str:
        """Return the TOML text of this config."""
        lines = [
            "[sip]",
            f'listen = "127.0.0.1:{self.sip_port}"',
            f"trusted = {json.dumps(list(self.trusted))}",
            "[media]",
            'address = "127.0.0.1"',
            f'rtp_ports = "{self.rtp_ports[0]}-{self.rtp_ports[1]}"',
            "[api]",
            f'listen = "127.0.0.1:{self.api_port}"',
            "[hub]",
            f'listen = "127.0.0.1:{self.hub_port}"',
            f'origins = ["{self.api_url}"]',
            "[store]",
            'path = "store.sqlite3"',
            "[auth]",
            'jwt_secret_file = "jwt-secret"',
            "[daemon]",
            f'shutdown_grace = "{self.shutdown_grace}"',
            "[log]",
            'level = "debug"',
            'format = "json"',
        ]
        for name, domains in self.tenants.items():
            lines += ["[[tenants]]", f'name = "{name}"', f"domains = {json.dumps(domains)}"]
        for user in self.users:
            lines += ["[[users]]", f'extension = "{user.extension}"', f'tenant = "{user.tenant}"',
                      f'role = "{user.role}"', f'password_hash = "{_hash(user.password)}"']
        return "\n".join(lines) + "\n" + self.extra

    def write(self) -> Path:
        """Write the config (and its secret file) and return its path."""
        secret = self.dir / "jwt-secret"
        if not secret.exists():
            secret.write_text(secrets.token_urlsafe(48))
        self.path.write_text(self.render())
        return self.path


_HASHES: dict[str, str] = {}


def _hash(password: str) -> str:
    if password not in _HASHES:
        _HASHES[password] = hash_password(password)
    return _HASHES[password]


def make_config(directory: Path, users: list[User] | None = None,
                tenants: dict[str, list[str]] | None = None) -> DaemonConfig:
    """Return a test config on free ports (not yet written)."""
    sip_port, api_port, hub_port = free_ports(3)
    return DaemonConfig(
        dir=directory,
        sip_port=sip_port,
        api_port=api_port,
        hub_port=hub_port,
        rtp_ports=free_even_port_range(),
        users=users if users is not None else [User("1001")],
        tenants=tenants if tenants is not None else {"acme": ["acme.example"]},
    )


class RunningDaemon:
    """A daemon subprocess, its log lines (parsed JSON) and its systemd notifications."""

    def __init__(self, process: trio.Process, notify: trio.socket.SocketType) -> None:
        self.process = process
        self.notify = notify
        self.logs: list[dict[str, Any]] = []
        self.raw_stderr: list[str] = []
        self.notifications: list[str] = []
        self._changed = trio.Event()

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        buffer = b""
        async for chunk in self.process.stderr:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                text = line.decode(errors="replace")
                self.raw_stderr.append(text)
                try:
                    self.logs.append(json.loads(text))
                except ValueError:
                    continue
            self._wake()

    async def _read_notify(self) -> None:
        while True:
            data = await self.notify.recv(4096)
            self.notifications.append(data.decode())
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for_log(self, event: str, timeout: float = 10, start: int = 0,
                           **fields: Any) -> dict[str, Any]:
        """Wait for a log line with this event name (and field values), from index start."""
        with trio.fail_after(timeout):
            while True:
                for line in self.logs[start:]:
                    if line.get("event") == event and all(
                            line.get(k) == v for k, v in fields.items()):
                        return line
                await self._changed.wait()

    def events(self, name: str) -> list[dict[str, Any]]:
        """Every log line with this event name so far."""
        return [line for line in self.logs if line.get("event") == name]

    async def wait_for_count(self, name: str, count: int, timeout: float = 30) -> None:
        """Wait until count log lines with this event name have been seen."""
        with trio.fail_after(timeout):
            while len(self.events(name)) < count:
                await self._changed.wait()

    async def wait_for_log_text(self, text: str, timeout: float = 10) -> str:
        """Wait for a stderr line (JSON or not) containing text."""
        with trio.fail_after(timeout):
            while True:
                for line in self.raw_stderr:
                    if text in line:
                        return line
                await self._changed.wait()

    async def wait_for_notification(self, text: str, timeout: float = 10, start: int = 0) -> str:
        """Wait for a notify datagram containing text, from index start."""
        with trio.fail_after(timeout):
            while True:
                for message in self.notifications[start:]:
                    if text in message.split("\n"):
                        return message
                await self._changed.wait()

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        return self.process.pid

    def rss_kib(self) -> int:
        """The daemon's resident memory (VmRSS) in KiB."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines()
                        if line.startswith("VmRSS:")))

    def open_files(self) -> set[int]:
        """The descriptor numbers the daemon has open."""
        return {int(fd) for fd in os.listdir(f"/proc/{self.pid}/fd")}

    def limit_open_files(self, spare: int) -> int:
        """Lower the daemon's soft RLIMIT_NOFILE so only `spare` more descriptors can open.

        The kernel hands out the lowest free number and refuses any at or above the soft limit:
        the limit is put where exactly `spare` numbers below it are free. Returns the limit.
        """
        taken = self.open_files()
        limit, free = 0, 0
        while free < spare or limit in taken:
            free += limit not in taken
            limit += 1
        _, hard = resource.prlimit(self.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(self.pid, resource.RLIMIT_NOFILE, (limit, hard))
        return limit

    def send_signal(self, signum: int) -> None:
        """Send a signal to the daemon."""
        self.process.send_signal(signum)

    def dump(self) -> str:
        """Return the daemon's stderr, for assertion messages."""
        return "\n".join(self.raw_stderr[-60:])


@asynccontextmanager
async def run_daemon(config_path: Path, env: dict[str, str] | None = None,
                     wait_ready: bool = True) -> AsyncIterator[RunningDaemon]:
    """Start `voicedashd run` on a config; stop it (SIGTERM) on exit if still running."""
    notify_path = config_path.parent / f"notify-{secrets.token_hex(4)}"
    notify = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await notify.bind(str(notify_path))
    environment = {k: v for k, v in os.environ.items() if k != "VOICEDASHD_JWT_SECRET"}
    environment |= {"NOTIFY_SOCKET": str(notify_path), "PYTHONUNBUFFERED": "1"}
    environment |= env or {}
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "voicedashd", "run", "--config", str(config_path)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=environment)
    daemon = RunningDaemon(process, notify)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(daemon._read_stderr)
            nursery.start_soon(daemon._read_notify)
            if wait_ready:
                try:
                    await daemon.wait_for_notification("READY=1", timeout=START_TIMEOUT)
                except trio.TooSlowError:
                    raise AssertionError(f"daemon not ready:\n{daemon.dump()}") from None
            yield daemon
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                with trio.move_on_after(15):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            notify.close()
