"""Tests for the systemd notify protocol against real AF_UNIX datagram sockets."""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
from structlog.testing import capture_logs

from voicedashd.sdnotify import Notifier, run_watchdog, watchdog_interval


def bind_receiver(address: str) -> trio.socket.SocketType:
    """Bind a datagram socket synchronously, so no thread races the autojump clock."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    return trio.socket.from_stdlib_socket(sock)


def socket_names(kind: str, directory: Path) -> tuple[str, str]:
    """Return ($NOTIFY_SOCKET value, address to bind) for a path or abstract socket."""
    if kind == "path":
        path = str(directory / "notify.sock")
        return path, path
    name = f"voicedashd-test-{secrets.token_hex(8)}"
    return "@" + name, "\0" + name


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # tmp_path can exceed the 107-byte limit of an AF_UNIX socket path.
    with tempfile.TemporaryDirectory(prefix="vdd-") as directory:
        yield Path(directory)


@pytest.fixture(params=["path", "abstract"])
async def notify_socket(
    request: pytest.FixtureRequest, short_dir: Path
) -> AsyncIterator[tuple[str, trio.socket.SocketType]]:
    env_value, address = socket_names(request.param, short_dir)
    with bind_receiver(address) as receiver:
        yield env_value, receiver


async def test_state_messages_are_sent_exactly(
    notify_socket: tuple[str, trio.socket.SocketType],
) -> None:
    env_value, receiver = notify_socket
    with trio.fail_after(5):
        async with Notifier.from_environ({"NOTIFY_SOCKET": env_value}) as notifier:
            assert notifier.enabled
            await notifier.ready()
            assert await receiver.recv(4096) == b"READY=1"
            await notifier.stopping()
            assert await receiver.recv(4096) == b"STOPPING=1"
            await notifier.watchdog()
            assert await receiver.recv(4096) == b"WATCHDOG=1"
            await notifier.status("listening on\n5060")
            assert await receiver.recv(4096) == b"STATUS=listening on 5060"
            await notifier.send(READY=1, STATUS="up")
            assert await receiver.recv(4096) == b"READY=1\nSTATUS=up"
            await notifier.send_raw(b"EXTEND_TIMEOUT_USEC=1000000")
            assert await receiver.recv(4096) == b"EXTEND_TIMEOUT_USEC=1000000"


async def test_reloading_carries_clock_monotonic_usec(
    notify_socket: tuple[str, trio.socket.SocketType],
) -> None:
    env_value, receiver = notify_socket
    with trio.fail_after(5):
        async with Notifier.from_environ({"NOTIFY_SOCKET": env_value}) as notifier:
            before = time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6
            await notifier.reloading()
            after = time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6
            message = await receiver.recv(4096)
    first, second = message.decode().split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert before - 1 <= int(value) <= after + 1


@pytest.mark.parametrize("env", [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "relative.sock"}])
async def test_without_usable_notify_socket_is_a_noop(env: dict[str, str]) -> None:
    with trio.fail_after(5):
        async with Notifier.from_environ(env) as notifier:
            assert not notifier.enabled
            await notifier.ready()
            await notifier.reloading()
            await notifier.status("idle")
            await notifier.watchdog()
            await notifier.stopping()


def test_from_environ_maps_abstract_names_to_a_leading_nul() -> None:
    assert Notifier.from_environ({"NOTIFY_SOCKET": "@sd-notify"}).address == "\0sd-notify"
    assert Notifier.from_environ({"NOTIFY_SOCKET": "/run/sd.sock"}).address == "/run/sd.sock"


async def test_send_rejects_a_value_that_would_split_the_message() -> None:
    with pytest.raises(ValueError, match="one line"):
        await Notifier(None).send(STATUS="a\nb")


@pytest.mark.parametrize("kind", ["path", "abstract"])
async def test_vanished_socket_is_logged_not_raised_and_recovers(
    kind: str, short_dir: Path
) -> None:
    env_value, address = socket_names(kind, short_dir)
    receiver = bind_receiver(address)
    with trio.fail_after(5):
        async with Notifier.from_environ({"NOTIFY_SOCKET": env_value}) as notifier:
            await notifier.ready()
            assert await receiver.recv(4096) == b"READY=1"
            receiver.close()
            if kind == "path":
                os.unlink(address)
            with capture_logs() as logs:
                await notifier.watchdog()
                await notifier.stopping()
            assert [entry["event"] for entry in logs] == ["sd_notify_failed"] * 2
            # systemd came back with a fresh socket under the same name.
            receiver = bind_receiver(address)
            await notifier.status("back")
            assert await receiver.recv(4096) == b"STATUS=back"
    receiver.close()


async def test_socket_missing_at_start_is_logged_not_raised(short_dir: Path) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": str(short_dir / "missing.sock")})
    with trio.fail_after(5), capture_logs() as logs:
        async with notifier:
            await notifier.ready()
    assert [entry["event"] for entry in logs] == ["sd_notify_connect_failed", "sd_notify_failed"]


async def test_full_queue_gives_up_after_send_timeout(
    autojump_clock: trio.testing.MockClock, short_dir: Path
) -> None:
    address = str(short_dir / "notify.sock")
    receiver = bind_receiver(address)  # never read: its queue fills up
    notifier = Notifier(address, send_timeout=5.0)
    start = trio.current_time()
    with trio.fail_after(60), capture_logs() as logs:
        async with notifier:
            for _ in range(100_000):
                await notifier.watchdog()
                if trio.current_time() > start:
                    break
    receiver.close()
    assert trio.current_time() - start == pytest.approx(5.0)
    assert logs[-1]["event"] == "sd_notify_timeout"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "thirty"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "me"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env) == expected


async def test_run_watchdog_pings_on_fixed_deadlines(
    autojump_clock: trio.testing.MockClock,
    notify_socket: tuple[str, trio.socket.SocketType],
) -> None:
    env_value, receiver = notify_socket
    pings: list[float] = []

    async def collect() -> None:
        while True:
            assert await receiver.recv(4096) == b"WATCHDOG=1"
            pings.append(trio.current_time() - start)

    start = trio.current_time()
    with trio.fail_after(120):
        async with (
            Notifier.from_environ({"NOTIFY_SOCKET": env_value}) as notifier,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(collect)
            await nursery.start(run_watchdog, notifier, 15.0)
            await trio.sleep_until(start + 50.0)
            nursery.cancel_scope.cancel()
    assert pings == pytest.approx([0.0, 15.0, 30.0, 45.0])


async def test_run_watchdog_skips_missed_ticks_after_a_stall(
    autojump_clock: trio.testing.MockClock, short_dir: Path
) -> None:
    env_value, address = socket_names("path", short_dir)
    receiver = bind_receiver(address)
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": env_value})
    notifier.send_timeout = 2.5
    pings: list[float] = []

    async def drain_later() -> None:
        await trio.sleep_until(start + 2.8)
        while True:
            if await receiver.recv(4096) == b"WATCHDOG=1":
                pings.append(trio.current_time() - start)

    with trio.fail_after(120), capture_logs():
        async with notifier:
            fill_start = trio.current_time()
            for _ in range(100_000):  # fill the receiver's queue until a send stalls
                await notifier.status("fill")
                if trio.current_time() > fill_start:
                    break
            else:
                pytest.fail("the receiver's queue never filled up")
            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain_later)
                # The ping at 0 stalls until 2.5 and is dropped; the queue drains at 2.8: 3, 4, ...
                await nursery.start(run_watchdog, notifier, 1.0)
                await trio.sleep_until(start + 7.5)
                nursery.cancel_scope.cancel()
    receiver.close()
    assert pings == pytest.approx([3.0, 4.0, 5.0, 6.0, 7.0])


async def test_run_watchdog_rejects_a_nonpositive_interval() -> None:
    with pytest.raises(ValueError, match="positive"):
        await run_watchdog(Notifier(None), 0.0)
