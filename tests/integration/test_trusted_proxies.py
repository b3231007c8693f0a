"""Behind a reverse proxy: X-Forwarded-For keys the login throttle and the logs, only from
api.trusted_proxies. The forwarded addresses are header values only: nothing is sent to them."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

import httpx
import trio
from trio_websocket import open_websocket_url, wrap_client_stream

from tests.harness import DaemonConfig, RunningDaemon, User, make_config, run_daemon

TIMEOUT = 60
PROXY = '["127.0.0.1/32"]'


def write(config: DaemonConfig, trusted_proxies: str | None) -> None:
    """Write the config, with api.trusted_proxies when given."""
    config.write()
    if trusted_proxies is not None:
        config.path.write_text(config.render().replace(
            "[api]\n", f"[api]\ntrusted_proxies = {trusted_proxies}\n", 1))


async def login(http: httpx.AsyncClient, user: User, forwarded_for: str | None,
                password: str | None = None) -> int:
    """Log in (with an X-Forwarded-For header when given) and return the status code."""
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for is not None else {}
    answer = await http.post("/api/auth/login", headers=headers, json={
        "extension": user.extension, "password": password or user.password,
        "tenant": user.tenant})
    return answer.status_code


async def lock_out(http: httpx.AsyncClient, user: User, forwarded_for: str | None) -> None:
    """Five wrong passwords: the (account, client) pair is then locked."""
    for _ in range(5):
        assert await login(http, user, forwarded_for, password="guess-guess") == 401


async def hub_handshake(config: DaemonConfig, forwarded_for: str, local: str = "127.0.0.1"
                        ) -> None:
    """Open and close a hub connection from a local address, with an X-Forwarded-For."""
    headers = [(b"X-Forwarded-For", forwarded_for.encode())]
    if local == "127.0.0.1":
        async with open_websocket_url(f"ws://127.0.0.1:{config.hub_port}/ws",
                                      extra_headers=headers):
            return
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await sock.bind((local, 0))
    await sock.connect(("127.0.0.1", config.hub_port))
    async with trio.open_nursery() as nursery:
        ws = await wrap_client_stream(nursery, trio.SocketStream(sock), "127.0.0.1", "/ws",
                                      extra_headers=headers)
        await ws.aclose()


def failures(daemon: RunningDaemon) -> list[tuple[str, str | None]]:
    """(client, proxy) of every login_failed line so far."""
    return [(line["client"], line.get("proxy")) for line in daemon.events("login_failed")]


async def test_a_trusted_proxy_forwards_the_client_address(tmp_path: Path) -> None:
    alice = User("1001")
    config = make_config(tmp_path, users=[alice])
    write(config, PROXY)
    stranger = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    with trio.fail_after(TIMEOUT):
        async with run_daemon(config.path) as daemon, httpx.AsyncClient(
                base_url=config.api_url) as proxy, httpx.AsyncClient(
                base_url=config.api_url, transport=stranger) as direct:
            # Behind the proxy, one client's bad passwords lock out that client only.
            await lock_out(proxy, alice, "203.0.113.7")
            assert await login(proxy, alice, "203.0.113.7") == 429
            assert await login(proxy, alice, "203.0.113.8") == 200
            assert set(failures(daemon)) == {("203.0.113.7", "127.0.0.1")}
            throttled = await daemon.wait_for_log("login_throttled")
            assert (throttled["client"], throttled["proxy"]) == ("203.0.113.7", "127.0.0.1")
            succeeded = await daemon.wait_for_log("login_succeeded")
            assert (succeeded["client"], succeeded["proxy"]) == ("203.0.113.8", "127.0.0.1")

            # A client writing its own X-Forwarded-For: the proxy appends the address it saw,
            # and only that rightmost untrusted entry counts, whatever is written left of it.
            mark = len(daemon.events("login_failed"))
            for n in range(5):
                assert await login(proxy, alice, f"203.0.113.{20 + n}, 198.51.100.1",
                                   password="guess-guess") == 401
            assert await login(proxy, alice, "203.0.113.9, 198.51.100.1") == 429
            assert set(failures(daemon)[mark:]) == {("198.51.100.1", "127.0.0.1")}
            assert await login(proxy, alice, "198.51.100.1, 203.0.113.9") == 200

            # From an address that is not a trusted proxy, the header is ignored.
            mark = len(daemon.events("login_failed"))
            for n in range(5):
                assert await login(direct, alice, f"203.0.113.{30 + n}",
                                   password="guess-guess") == 401
            assert await login(direct, alice, "203.0.113.40") == 429
            assert set(failures(daemon)[mark:]) == {("127.0.0.2", None)}

            # The hub honours the same list for its connection logs.
            await hub_handshake(config, "203.0.113.50")
            connected = await daemon.wait_for_log("ws_connected", remote="203.0.113.50")
            assert connected["proxy"].startswith("127.0.0.1:")
            await hub_handshake(config, "203.0.113.51", local="127.0.0.2")
            logged = daemon.events("ws_connected")[-1]
            assert logged["remote"].startswith("127.0.0.2:") and "proxy" not in logged
            assert "guess-guess" not in json.dumps(daemon.logs)


async def test_without_trusted_proxies_the_header_is_ignored(tmp_path: Path) -> None:
    alice, bob = User("1001"), User("1002")
    config = make_config(tmp_path, users=[alice, bob])
    write(config, None)
    with trio.fail_after(TIMEOUT):
        async with run_daemon(config.path) as daemon, httpx.AsyncClient(
                base_url=config.api_url) as http:
            # The throttle keys on the TCP peer, 127.0.0.1, whatever the header says.
            await lock_out(http, alice, "203.0.113.7")
            assert await login(http, alice, "203.0.113.8") == 429
            assert set(failures(daemon)) == {("127.0.0.1", None)}
            await hub_handshake(config, "203.0.113.50")
            connected = await daemon.wait_for_log("ws_connected")
            assert connected["remote"].startswith("127.0.0.1:") and "proxy" not in connected

            # The list is live: after a reload the header counts, for the next request.
            write(config, PROXY)
            mark = len(daemon.logs)
            daemon.send_signal(signal.SIGHUP)
            reloaded = await daemon.wait_for_log("config_reloaded", start=mark)
            assert reloaded["applied"] == ["api.trusted_proxies"]
            assert await login(http, bob, "203.0.113.9", password="guess-guess") == 401
            assert failures(daemon)[-1] == ("203.0.113.9", "127.0.0.1")
            assert await login(http, alice, "203.0.113.8") == 200
