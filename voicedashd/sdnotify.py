"""The systemd notify protocol (sd_notify(3)) over $NOTIFY_SOCKET, with Trio sockets."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Self

import structlog
import trio

log = structlog.get_logger(__name__)


class Notifier:
    """Sends service state to systemd; does nothing when not started by systemd."""

    def __init__(self, address: str | None, *, send_timeout: float = 5.0) -> None:
        # address is a filesystem path, "\0name" for an abstract socket, or None (disabled).
        self.address = address
        self.send_timeout = send_timeout
        self._sock: trio.socket.SocketType | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Notifier:
        """Build a notifier for $NOTIFY_SOCKET, disabled when it is unset or unusable."""
        value = environ.get("NOTIFY_SOCKET", "")
        if value.startswith("@"):
            return cls("\0" + value[1:])
        if value.startswith("/"):
            return cls(value)
        if value:
            log.warning("sd_notify_socket_unsupported", notify_socket=value)
        return cls(None)

    @property
    def enabled(self) -> bool:
        """Whether messages are sent anywhere."""
        return self.address is not None

    async def open(self) -> None:
        """Connect the datagram socket now rather than on the first message."""
        await trio.lowlevel.checkpoint()
        if self.address is not None and self._sock is None:
            try:
                await self._connect(self.address)
            except OSError as exc:
                log.warning("sd_notify_connect_failed", error=str(exc))

    async def aclose(self) -> None:
        """Close the socket; later messages reconnect."""
        self._close()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def ready(self) -> None:
        """Tell systemd start-up or a reload finished."""
        await self.send(READY=1)

    async def reloading(self) -> None:
        """Tell systemd a configuration reload has begun."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        await self.send(RELOADING=1, MONOTONIC_USEC=usec)

    async def stopping(self) -> None:
        """Tell systemd a graceful stop has begun."""
        await self.send(STOPPING=1)

    async def watchdog(self) -> None:
        """Tell systemd the daemon is alive."""
        await self.send(WATCHDOG=1)

    async def status(self, text: str) -> None:
        """Set the one-line status shown by `systemctl status`."""
        await self.send(STATUS=" ".join(text.splitlines()))

    async def send(self, **fields: str | int) -> None:
        """Send KEY=value assignments as one message."""
        lines = []
        for key, value in fields.items():
            text = str(value)
            if "\n" in text:
                raise ValueError(f"sd_notify value for {key} must be one line, got {text!r}")
            lines.append(f"{key}={text}")
        await self.send_raw("\n".join(lines).encode())

    async def send_raw(self, message: bytes) -> None:
        """Send one datagram; failures are logged, never raised."""
        if self.address is None:
            await trio.lowlevel.checkpoint()
            return
        # A full receive queue would otherwise block forever (libsystemd drops instead).
        with trio.move_on_after(self.send_timeout) as scope:
            try:
                sock = self._sock or await self._connect(self.address)
                await sock.send(message)
            except OSError as exc:
                # Reconnect next time: systemd may have re-created the socket.
                self._close()
                log.warning("sd_notify_failed", error=str(exc), message=_first_line(message))
        if scope.cancelled_caught:
            log.warning("sd_notify_timeout", message=_first_line(message))

    async def _connect(self, address: str) -> trio.socket.SocketType:
        # Connected, so that poll() waits for room in systemd's queue instead of spinning.
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM)
        try:
            await sock.connect(address)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        return sock

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _first_line(message: bytes) -> str:
    return message.split(b"\n", 1)[0].decode(errors="replace")


def watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None if not asked for."""
    try:
        usec = int(environ["WATCHDOG_USEC"])
        pid = int(environ.get("WATCHDOG_PID", os.getpid()))
    except KeyError:
        return None
    except ValueError:
        log.warning(
            "sd_watchdog_env_invalid",
            watchdog_usec=environ.get("WATCHDOG_USEC"),
            watchdog_pid=environ.get("WATCHDOG_PID"),
        )
        return None
    if pid != os.getpid():  # the watchdog is meant for another process, e.g. a wrapper
        return None
    return usec / 2 / 1_000_000 if usec > 0 else None


async def run_watchdog(
    notifier: Notifier,
    interval: float,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Send WATCHDOG=1 now and every `interval` seconds after, until cancelled."""
    if not interval > 0:
        raise ValueError(f"watchdog interval must be positive, got {interval!r}")
    start = trio.current_time()
    task_status.started()
    tick = 0
    while True:
        await notifier.watchdog()
        # Fixed deadlines do not drift; after a stall, skip missed ticks instead of bursting.
        tick = max(tick + 1, math.floor((trio.current_time() - start) / interval) + 1)
        await trio.sleep_until(start + tick * interval)
