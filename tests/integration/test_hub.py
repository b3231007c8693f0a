"""The hub against the real daemon: handshake, auth, isolation, limits, resume, backpressure."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from structlog.testing import capture_logs
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    open_websocket_url,
    wrap_client_stream,
)

from tests.forge import forge, unverified_claims
from tests.harness import DaemonConfig, RunningDaemon, User, make_config, run_daemon
from tests.sipp import SippResult, run_sipp
from voicedashd.auth import Authenticator, encode_access_token
from voicedashd.bus import EventBus
from voicedashd.config import load_config
from voicedashd.events import CallEnded, CallInfo, CallStarted, EndReason, SttTranscript
from voicedashd.hub.client import HubClient, HubClosed, RequestFailed, open_hub
from voicedashd.hub.server import serve_hub
from voicedashd.livecfg import LiveConfig
from voicedashd.metrics import Metrics
from voicedashd.store import open_store

TIMEOUT = 60
LOBBY = {"call_started", "call_ended", "call_summary"}


def write_config(config: DaemonConfig, *, hub: str = "", auth: str = "") -> DaemonConfig:
    """Write the config with extra keys in its [hub] and [auth] sections."""
    text = config.render()
    text = text.replace("[hub]\n", f"[hub]\n{hub}\n", 1).replace("[auth]\n", f"[auth]\n{auth}\n", 1)
    config.write()
    config.path.write_text(text)
    return config


def hub_url(config: DaemonConfig, path: str = "/ws") -> str:
    return f"ws://127.0.0.1:{config.hub_port}{path}"


async def login(config: DaemonConfig, user: User) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=config.api_url) as http:
        answer = await http.post("/api/auth/login", json={
            "extension": user.extension, "password": user.password, "tenant": user.tenant})
    assert answer.status_code == 200, answer.text
    return answer.json()


async def token_of(config: DaemonConfig, user: User) -> str:
    return str((await login(config, user))["access_token"])


@asynccontextmanager
async def connect(config: DaemonConfig, token: str, **kwargs: Any) -> AsyncIterator[HubClient]:
    async with open_hub(hub_url(config), token, origin=config.api_url, **kwargs) as client:
        yield client


async def refused(url: str, headers: list[tuple[bytes, bytes]],
                  first: dict[str, Any] | None = None) -> tuple[int | None, str | None]:
    """Open a raw connection, optionally send one message, and return how the server closed it."""
    async with open_websocket_url(url, extra_headers=headers) as ws:
        if first is not None:
            await ws.send_message(json.dumps(first))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await ws.get_message()
    reason = closed.value.reason
    return (reason.code, reason.reason) if reason else (None, None)


async def next_event(client: HubClient, name: str | None = None,
                     timeout: float = 20) -> dict[str, Any]:
    with trio.fail_after(timeout):
        async for event in client:
            if name is None or event["event"] == name:
                return event
    raise AssertionError(f"connection closed ({client.close_code} {client.close_reason}) "
                         f"before {name}")


async def until_ended(client: HubClient, call_id: str,
                      timeout: float = 30) -> list[dict[str, Any]]:
    """The frames of one call up to and including its call_ended (others are skipped)."""
    frames = []
    with trio.fail_after(timeout):
        while not frames or frames[-1]["event"] != "call_ended":
            event = await next_event(client, timeout=timeout)
            if event["call_id"] == call_id:
                frames.append(event)
    return frames


def assert_stream(events: list[dict[str, Any]], since_seq: int) -> None:
    """A subscription's stream: every seq after since_seq once, in order, up to call_ended
    (and the call's call_summary after it, if that came already)."""
    assert [e["seq"] for e in events] == list(range(since_seq + 1, since_seq + 1 + len(events)))
    last = events[-2] if events[-1]["event"] == "call_summary" else events[-1]
    assert last["event"] == "call_ended"


async def assert_nothing_queued(client: HubClient) -> None:
    """After a ping round trip, no event is waiting (events are queued before later replies)."""
    await client.ping()
    assert client.received() == []


async def calls(config: DaemonConfig, directory: Path, *, scenario: str = "hub_call",
                service: str = "1001", count: int = 1, hold_ms: int = 2000,
                rate: float = 10) -> SippResult:
    result = await run_sipp(config.sip_port, directory, scenario=scenario, service=service,
                            calls=count, rate=rate, extra=("-d", str(hold_ms)))
    assert result.ok, result.errors
    return result


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in metrics")


async def hub_connections(config: DaemonConfig) -> float:
    async with httpx.AsyncClient(base_url=config.api_url) as http:
        return metric((await http.get("/metrics")).text, "voicedashd_hub_connections")


def assert_no_secrets(daemon: RunningDaemon, *secrets: str) -> None:
    logs = "\n".join(daemon.raw_stderr)
    for secret in secrets:
        assert secret not in logs


# -- handshake and authentication --------------------------------------------------------


async def test_handshake_and_authentication_are_enforced(tmp_path: Path) -> None:
    alice = User("1001")
    config = write_config(make_config(tmp_path, users=[alice]))
    origin = [(b"Origin", config.api_url.encode())]
    with trio.fail_after(TIMEOUT):
        async with run_daemon(config.path) as daemon:
            token = await token_of(config, alice)
            secret = (config.dir / "jwt-secret").read_bytes().strip()

            # Rejected in the handshake: wrong path, a foreign Origin (even with a valid token),
            # a token in the URL.
            bearer = (b"Authorization", f"Bearer {token}".encode())
            cases = [(hub_url(config, "/other"), origin, 404),
                     (hub_url(config, "/other"), [], 404),
                     (hub_url(config), [(b"Origin", b"http://evil.example")], 403),
                     (hub_url(config), [(b"Origin", b"http://evil.example"), bearer], 403),
                     (hub_url(config), [(b"Origin", b"null")], 403),
                     (hub_url(config, f"/ws?token={token}"), origin, 400),
                     (hub_url(config, f"/ws?token={token}"), [], 400)]
            for url, headers, status in cases:
                with pytest.raises(ConnectionRejected) as rejected:
                    async with open_websocket_url(url, extra_headers=headers):
                        pass
                assert rejected.value.status_code == status, url
            await daemon.wait_for_log("ws_rejected", reason="origin")
            await daemon.wait_for_log("ws_rejected", reason="token_in_url")

            # Accepted, then closed with 4401 and a reason.
            now = int(time.time())
            expired = forge(unverified_claims(token) | {"iat": now - 7200, "exp": now - 3600},
                            key=secret)
            bad = [({"type": "auth"}, "auth needs a non-empty string 'token'"),
                   ({"type": "ping", "id": 1}, "first message must be"),
                   ({"type": "auth", "token": "not-a-jwt"}, "signature or format"),
                   ({"type": "auth", "token": expired}, "expired")]
            # Without an Origin (a script) the handshake passes, and authentication is the same.
            for first, why in bad:
                for headers in (origin, []):
                    code, reason = await refused(hub_url(config), headers, first)
                    assert code == 4401, (first, headers, code, reason)
                    assert reason is not None and why in reason, reason
            for headers in (origin, []):
                code, reason = await refused(
                    hub_url(config), [*headers, (b"Authorization", b"Bearer not-a-jwt")])
                assert (code, reason) == (4401, "token signature or format is invalid")
            with pytest.raises(HubClosed) as closed:
                async with connect(config, expired, header_auth=True):
                    pass
            assert closed.value.code == 4401
            assert not daemon.events("ws_connection_failed")

            # Silence, with or without an Origin: closed once the 5 s to authenticate are up.
            started = trio.current_time()
            silent: list[tuple[int | None, str | None]] = []

            async def stay_silent(headers: list[tuple[bytes, bytes]]) -> None:
                silent.append(await refused(hub_url(config), headers))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(stay_silent, origin)
                nursery.start_soon(stay_silent, [])
            for code, reason in silent:
                assert code == 4401 and reason is not None and "within 5s" in reason
            assert 4.5 <= trio.current_time() - started < 10

            # A good token, in the first message or the header, with or without an Origin.
            for header_auth in (False, True):
                for sent_origin in (config.api_url, None):
                    async with open_hub(hub_url(config), token, origin=sent_origin,
                                        header_auth=header_auth) as hub:
                        welcome = hub.welcome
                        assert (welcome["type"], welcome["extension"], welcome["role"],
                                welcome["tenant"]) == ("connection_established", "1001", "user",
                                                       "acme")
                        assert welcome["expires_at"] == unverified_claims(token)["exp"]
                        assert await hub_connections(config) == 1
                        await hub.ping()
            await daemon.wait_for_log("ws_authenticated", via="header")
            await daemon.wait_for_log("ws_closed", extension="1001")
            assert await hub_connections(config) == 0
            failed = await daemon.wait_for_log("ws_auth_failed")
            assert "token" not in failed
            assert_no_secrets(daemon, token, expired)


async def test_expired_token_closes_a_live_connection(tmp_path: Path) -> None:
    alice = User("1001")
    config = write_config(make_config(tmp_path, users=[alice]), auth='access_token_ttl = "3s"')
    with trio.fail_after(TIMEOUT):
        async with run_daemon(config.path):
            token = await token_of(config, alice)
            exp = unverified_claims(token)["exp"]
            async with connect(config, token) as hub:
                with trio.fail_after(10):
                    async for _ in hub:
                        pass
                assert hub.close_code == 4401
                assert hub.close_reason is not None and "expired" in hub.close_reason
                assert time.time() >= exp - 0.5


async def test_logout_and_removal_close_live_connections(tmp_path: Path) -> None:
    alice, bob = User("1001"), User("1002")
    config = write_config(make_config(tmp_path, users=[alice, bob]),
                          hub='ping_interval = "1s"\nping_timeout = "2s"')
    with trio.fail_after(TIMEOUT):
        async with run_daemon(config.path) as daemon:
            alices, bobs = await login(config, alice), await login(config, bob)
            async with connect(config, alices["access_token"]) as a_hub, \
                    connect(config, bobs["access_token"]) as b_hub:
                async with httpx.AsyncClient(base_url=config.api_url) as http:
                    answer = await http.post("/api/auth/logout", headers={
                        "Authorization": f"Bearer {alices['access_token']}"})
                    assert answer.status_code == 204
                with trio.fail_after(10):
                    async for _ in a_hub:
                        pass
                assert (a_hub.close_code, a_hub.close_reason) == (
                    4401, "session was revoked; log in again")
                await b_hub.ping()                              # Bob is unaffected

                config.users.remove(bob)
                write_config(config, hub='ping_interval = "1s"\nping_timeout = "2s"')
                mark = len(daemon.logs)
                daemon.send_signal(signal.SIGHUP)
                await daemon.wait_for_log("config_reloaded", start=mark)
                with trio.fail_after(10):
                    async for _ in b_hub:
                        pass
                assert (b_hub.close_code, b_hub.close_reason) == (4401, "user no longer exists")
            await daemon.wait_for_log("ws_token_rejected", extension="1002")


# -- isolation, authorization, limits ------------------------------------------------------


async def test_each_user_sees_only_their_calls(tmp_path: Path) -> None:
    alice, bob, boss = User("1001"), User("1002"), User("1009", role="admin")
    globex = User("1001", tenant="globex")
    config = write_config(make_config(
        tmp_path, users=[alice, bob, boss, globex],
        tenants={"acme": ["acme.example"], "globex": ["globex.example"]}))
    with trio.fail_after(TIMEOUT):
        async with run_daemon(config.path) as daemon:
            tokens = [await token_of(config, u) for u in (alice, bob, boss, globex)]
            async with connect(config, tokens[0]) as a_hub, \
                    connect(config, tokens[1]) as b_hub, \
                    connect(config, tokens[2]) as admin_hub, \
                    connect(config, tokens[3]) as g_hub, \
                    trio.open_nursery() as nursery:
                nursery.start_soon(calls, config, tmp_path)
                started = await next_event(a_hub, "call_started")
                call_id = started["call_id"]
                assert started["seq"] == 1 and started["data"]["callee_extension"] == "1001"
                assert (await next_event(admin_hub, "call_started"))["call_id"] == call_id

                # Bob (same tenant) and 1001 of globex (same extension) may not follow it.
                for other in (b_hub, g_hub):
                    with pytest.raises(RequestFailed) as failed:
                        await other.subscribe(call_id)
                    assert failed.value.error == "forbidden"
                    with pytest.raises(RequestFailed) as failed:
                        await other.subscribe("0" * 24)
                    assert failed.value.error == "not_found"
                logged = await daemon.wait_for_log("subscribe_call_forbidden", extension="1002")
                assert (logged["call_id"], logged["progress"]) == (call_id, "realtime")

                subscribed = await a_hub.subscribe(call_id, since_seq=1)
                assert subscribed.call["call_id"] == call_id
                assert subscribed.call["callee_extension"] == "1001"
                # The live call as the bus knows it: answered when call_started said so.
                assert (subscribed.call["state"], subscribed.call["answered_at"]) == (
                    "confirmed", started["data"]["started_at"])
                assert_stream(subscribed.events + await until_ended(a_hub, call_id), 1)
                logged = await daemon.wait_for_log("ws_call_subscribed", call_id=call_id)
                assert (logged["extension"], logged["since_seq"], logged["progress"]) == (
                    "1001", 1, "realtime")
                # The admin follows nothing: only the lobby's notices reach it.
                assert {e["event"] for e in await until_ended(admin_hub, call_id)} <= LOBBY
                for other in (b_hub, g_hub):
                    await assert_nothing_queued(other)

            # A globex call to 1001: only globex's 1001 sees it.
            async with connect(config, tokens[0]) as a_hub, \
                    connect(config, tokens[3]) as g_hub:
                await calls(config, tmp_path, scenario="hub_call_globex", hold_ms=200)
                started = await next_event(g_hub, "call_started")
                assert started["data"]["tenant"] == "globex"
                assert [e["event"] for e in await until_ended(g_hub, started["call_id"])] == [
                    "call_ended"]
                await assert_nothing_queued(a_hub)
            assert_no_secrets(daemon, *tokens)


async def test_subscription_limit_is_checked_before_joining(tmp_path: Path) -> None:
    alice = User("1001")
    config = write_config(make_config(tmp_path, users=[alice]), hub="max_subscriptions = 2")
    with trio.fail_after(TIMEOUT):
        async with run_daemon(config.path) as daemon, \
                connect(config, await token_of(config, alice)) as hub, \
                trio.open_nursery() as nursery:
            assert hub.welcome["max_subscriptions"] == 2
            nursery.start_soon(lambda: calls(config, tmp_path, count=3, hold_ms=6000,
                                             rate=20))
            ids = [(await next_event(hub, "call_started"))["call_id"] for _ in range(3)]
            await hub.subscribe(ids[0], since_seq=1)
            await hub.subscribe(ids[1], since_seq=1)
            await hub.subscribe(ids[1], since_seq=1)    # already followed: not counted
            with pytest.raises(RequestFailed) as failed:
                await hub.subscribe(ids[2], since_seq=1)
            assert failed.value.error == "too_many_subscriptions"
            refused_log = await daemon.wait_for_log("subscribe_call_refused")
            assert refused_log["call_id"] == ids[2]
            assert not [line for line in daemon.logs if line.get("event") ==
                        "ws_call_subscribed" and line.get("call_id") == ids[2]]

            # Nothing but the lobby's notices arrives for the refused call.
            await hub.unsubscribe(ids[0])
            frames: dict[str, list[dict[str, Any]]] = {call_id: [] for call_id in ids}
            with trio.fail_after(30):
                while sum(any(e["event"] == "call_ended" for e in f)
                          for f in frames.values()) < 2:
                    event = await next_event(hub)
                    frames[event["call_id"]].append(event)
            assert not frames[ids[2]] or {e["event"] for e in frames[ids[2]]} <= LOBBY
            assert_stream(frames[ids[1]], 1)


async def test_bad_requests_are_answered_and_abuse_is_closed(tmp_path: Path) -> None:
    alice = User("1001")
    config = write_config(make_config(tmp_path, users=[alice]),
                          hub="rate_limit = 5\nrate_burst = 10\nmax_message_size = 2048")
    origin = [(b"Origin", config.api_url.encode())]
    with trio.fail_after(TIMEOUT):
        async with run_daemon(config.path) as daemon:
            token = await token_of(config, alice)
            async with open_websocket_url(hub_url(config), extra_headers=origin) as ws:
                await ws.send_message(json.dumps({"type": "auth", "token": token}))
                assert json.loads(await ws.get_message())["type"] == "connection_established"
                answers = []
                for frame in ('{"type": "dance", "id": 7}', "{not json", '["a"]',
                              '{"type": "subscribe_call", "id": 8}',
                              '{"type": "subscribe_call", "call_id": "x"}',
                              '{"type": "subscribe_call", "id": 9, "call_id": "x", '
                              '"since_seq": -1}',
                              '{"type": "auth", "token": "again"}',
                              '{"type": "ping", "id": "p"}'):
                    await ws.send_message(frame)
                    answers.append(json.loads(await ws.get_message()))
                assert [(a.get("id"), a.get("error")) for a in answers] == [
                    (7, "unknown_type"), (None, "bad_request"), (None, "bad_request"),
                    (8, "bad_request"), (None, "bad_request"), (9, "bad_request"),
                    (None, "bad_request"), ("p", None)]
                assert answers[-1] == {"type": "pong", "id": "p"}
                assert all(a["success"] is False and a["detail"] for a in answers[:-1])

            # Too big a message: 1009.
            async with open_websocket_url(hub_url(config), extra_headers=origin) as ws:
                await ws.send_message(json.dumps({"type": "auth", "token": token}))
                await ws.get_message()
                await ws.send_message(json.dumps({"type": "ping", "id": "x" * 4000}))
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
                assert closed.value.reason.code == 1009

            # More requests than the rate limit allows: 1008, after the burst was answered.
            async with connect(config, token) as hub:
                with contextlib.suppress(ConnectionClosed):
                    for _ in range(40):
                        await hub.ws.send_message(json.dumps({"type": "ping", "id": "flood"}))
                with trio.fail_after(10):
                    async for _ in hub:
                        pass
                assert hub.close_code == 1008
                assert hub.close_reason == "too many requests: at most 5/s, bursts of 10"
            await daemon.wait_for_log("ws_rate_limited")


async def test_out_of_range_integers_are_answered_and_the_connection_stays(
        tmp_path: Path) -> None:
    """since_seq must be an integer 0 <= n < 2**53 (SQLite's 2**63 used to close with 1011)."""
    alice = User("1001")
    config = write_config(make_config(tmp_path, users=[alice]))
    with trio.fail_after(TIMEOUT):
        async with run_daemon(config.path) as daemon:
            token = await token_of(config, alice)
            await calls(config, tmp_path, hold_ms=200)
            call_id = (await daemon.wait_for_log("call_ended"))["call_id"]
            # A script: no Origin header, the token in the first message.
            async with open_websocket_url(hub_url(config)) as ws:
                await ws.send_message(json.dumps({"type": "auth", "token": token}))
                assert json.loads(await ws.get_message())["type"] == "connection_established"

                async def ask(request: dict[str, Any]) -> dict[str, Any]:
                    await ws.send_message(json.dumps(request))
                    return dict(json.loads(await ws.get_message()))

                for n, since in enumerate((2**63, -1, 2**53, 1.5, "7", True, 2**64 + 1, 1e300)):
                    reply = await ask({"type": "subscribe_call", "id": n, "call_id": call_id,
                                       "since_seq": since})
                    assert (reply["type"], reply["id"], reply["success"], reply["error"]) == (
                        "reply", n, False, "bad_request"), (since, reply)
                    assert reply["detail"] == "'since_seq' must be an integer from 0 to " \
                        "9007199254740991", reply
                for request_id in (2**63, -1, 2**53, 1.5, False):
                    reply = await ask({"type": "ping", "id": request_id})
                    assert (reply["id"], reply["error"]) == (None, "bad_request"), reply
                    assert "'id' must be" in reply["detail"]
                # The same connection still serves: the largest since_seq, then the whole call.
                top = await ask({"type": "subscribe_call", "id": 2**53 - 1, "call_id": call_id,
                                 "since_seq": 2**53 - 1})
                assert (top["id"], top["success"], top["events"]) == (2**53 - 1, True, [])
                whole = await ask({"type": "subscribe_call", "id": "all", "call_id": call_id,
                                   "since_seq": 0})
                assert whole["success"] is True, whole
                assert_stream(whole["events"], 0)
                assert whole["call"]["call_id"] == call_id
                assert await ask({"type": "ping", "id": 0}) == {"type": "pong", "id": 0}
                assert ws.closed is None
            assert not daemon.events("ws_connection_failed")
            closed = await daemon.wait_for_log("ws_closed", extension="1001")
            assert (closed["by"], closed["code"]) == ("client", 1000)


# -- resume -------------------------------------------------------------------------------


async def test_resume_delivers_missed_events_exactly_once(tmp_path: Path) -> None:
    alice = User("1001")
    config = write_config(make_config(tmp_path, users=[alice]))
    with trio.fail_after(TIMEOUT):
        async with run_daemon(config.path) as daemon:
            token = await token_of(config, alice)
            async with trio.open_nursery() as nursery:
                async with connect(config, token) as hub:
                    nursery.start_soon(lambda: calls(config, tmp_path, hold_ms=2500))
                    started = await next_event(hub, "call_started")
                    call_id = started["call_id"]
                    seen = [started, *(await hub.subscribe(call_id, since_seq=1)).events]
                    assert [e["seq"] for e in seen] == list(range(1, len(seen) + 1))
                # Disconnected; the call ends meanwhile, and its message card is made.
                await daemon.wait_for_log("call_summary", call_id=call_id)
            async with connect(config, token) as hub:
                missed = (await hub.subscribe(call_id, since_seq=seen[-1]["seq"])).events
                assert_stream(missed, seen[-1]["seq"])
                assert missed[-1]["event"] == "call_summary"
                assert missed[-2]["data"]["reason"] == "caller_hangup"
                await assert_nothing_queued(hub)
                everything = (await hub.subscribe(call_id, since_seq=0)).events
                assert everything == seen + missed
                await assert_nothing_queued(hub)
        # After a restart the bus remembers nothing: the store answers, in the same form.
        async with run_daemon(config.path), connect(config, token) as hub:
            again = await hub.subscribe(call_id, since_seq=0)
            assert again.events == everything
            assert again.call["call_id"] == call_id
            assert (again.call["state"], again.call["end_reason"]) == ("ended", "caller_hangup")
            assert (await hub.subscribe(call_id, since_seq=1)).events == everything[1:]


# -- backpressure -------------------------------------------------------------------------


@asynccontextmanager
async def stalled_client(nursery: trio.Nursery, config: DaemonConfig,
                         token: str) -> AsyncIterator[WebSocketConnection]:
    """A raw client with a tiny receive buffer that reads only when told to."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", config.hub_port))
    ws = await wrap_client_stream(nursery, trio.SocketStream(sock), "127.0.0.1", "/ws",
                                  extra_headers=[(b"Origin", config.api_url.encode())])
    await ws.send_message(json.dumps({"type": "auth", "token": token}))
    assert json.loads(await ws.get_message())["type"] == "connection_established"
    yield ws


@pytest.mark.slow
async def test_a_slow_consumer_is_closed_and_others_keep_receiving(tmp_path: Path) -> None:
    boss = User("1009", role="admin")
    config = write_config(make_config(tmp_path, users=[boss]),
                          hub="queue_size = 32\nsend_buffer = 4096")
    count = 60
    with trio.fail_after(TIMEOUT + 30):
        async with run_daemon(config.path) as daemon, trio.open_nursery() as nursery:
            token = await token_of(config, boss)
            async with connect(config, token) as fast, \
                    stalled_client(nursery, config, token) as slow:
                # The slow client follows one long call, then stops reading.
                nursery.start_soon(lambda: run_sipp(config.sip_port, tmp_path,
                                                    scenario="hub_call", extra=("-d", "20000")))
                long_call = (await next_event(fast, "call_started"))["call_id"]
                await slow.send_message(json.dumps({"type": "subscribe_call", "id": "s",
                                                    "call_id": long_call, "since_seq": 0}))
                while (reply := json.loads(await slow.get_message()))["type"] != "reply":
                    pass
                followed = [e["seq"] for e in reply["events"]]
                assert followed == list(range(1, len(followed) + 1))
                mark = len(daemon.logs)
                sipp = trio.Event()

                async def place_calls() -> None:
                    await run_sipp(config.sip_port, tmp_path, scenario="hub_burst", calls=count,
                                   rate=20, timeout=60)
                    sipp.set()

                nursery.start_soon(place_calls)
                too_slow = await daemon.wait_for_log("ws_too_slow", start=mark, timeout=60)
                assert too_slow["progress"] == "realtime"

                # The slow client reads again: what was delivered, a closing message, 1013.
                last_seen: dict[str, int] = {}
                closing: dict[str, Any] | None = None
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        message = json.loads(await slow.get_message())
                        if message["type"] == "event":
                            assert message["seq"] > last_seen.get(message["call_id"], 0)
                            last_seen[message["call_id"]] = message["seq"]
                        elif message["type"] == "closing":
                            closing = message
                assert closed.value.reason.code == 1013
                assert closed.value.reason.reason.startswith("too slow; last delivered: ")
                assert closing is not None and closing["code"] == 1013
                last_seen[long_call] = last_seen.get(long_call, followed[-1])
                assert closing["last_delivered"][long_call] == last_seen[long_call]
                for call_id, seq in closing["last_delivered"].items():
                    assert last_seen[call_id] == seq

                # The other connection got every notice the daemon published, and stays open.
                await sipp.wait()
                published = set()
                received: set[tuple[str, str]] = set()
                with trio.fail_after(60):
                    while not published or received != published:
                        published = {(line["call_id"], line["event"]) for line in daemon.logs
                                     if line.get("event") in LOBBY
                                     and line["call_id"] != long_call}
                        received |= {(e["call_id"], e["event"]) for e in fast.received()
                                     if e["call_id"] != long_call}
                        await fast.ping()
                assert sum(event == "call_started" for _, event in received) >= count // 2
                assert await hub_connections(config) == 1
            closed_log = await daemon.wait_for_log("ws_closed", code=1013)
            assert closed_log["by"] == "server"
            nursery.cancel_scope.cancel()               # the long call


# -- shutdown ---------------------------------------------------------------------------------


async def test_daemon_stop_closes_connections_with_1001(tmp_path: Path) -> None:
    alice = User("1001")
    config = write_config(make_config(tmp_path, users=[alice]))
    with trio.fail_after(TIMEOUT):
        async with run_daemon(config.path) as daemon:
            async with connect(config, await token_of(config, alice)) as hub:
                daemon.send_signal(signal.SIGTERM)
                with trio.fail_after(15):
                    async for _ in hub:
                        pass
                assert hub.close_code == 1001
                assert hub.close_reason == "server is shutting down"
            assert await daemon.process.wait() == 0


# -- resume while events stream (the real hub in-process, fed by a synthetic publisher) ------


async def test_resuming_while_events_stream_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """The hub server, bus, store and authenticator of the daemon, in this process: a publisher
    emits events while a client reconnects again and again and resubscribes from its last seq;
    the bus remembers only 20 events, so most backlogs come from the store."""
    alice = User("1001")
    written = write_config(make_config(tmp_path, users=[alice]))
    config = load_config(written.path)
    live, metrics = LiveConfig(config), Metrics()
    total = 600
    with trio.fail_after(TIMEOUT):
        async with open_store(config.store.path, metrics) as store, \
                trio.open_nursery() as nursery:
            await nursery.start(store.run_writer)
            bus = EventBus(store, metrics, history_limit=20)
            await nursery.start(serve_hub, live, bus, Authenticator(live, store), store, metrics)
            user = config.find_user("acme", "1001")
            assert user is not None
            token = encode_access_token(config, user, "family", time.time(), "jti")
            info = CallInfo(call_id="c" * 24, tenant="acme", caller="555", caller_name=None,
                            callee="1001", callee_extension="1001", is_ai_handled=True,
                            created_at=datetime.now(UTC))
            bus.register(info)
            bus.emit(CallStarted, info.call_id, tenant="acme", caller="555", caller_name=None,
                     callee="1001", callee_extension="1001", is_ai_handled=True,
                     started_at=datetime.now(UTC))

            published, progressed = [1], [trio.Event()]

            async def publish() -> None:
                for n in range(total - 1):
                    if n < total - 2:
                        bus.emit(SttTranscript, info.call_id, text=f"word {n}", is_final=False)
                    else:
                        bus.emit(CallEnded, info.call_id, reason=EndReason.CALLER_HANGUP,
                                 duration=1.0)
                    published[0] += 1
                    progressed[0].set()
                    progressed[0] = trio.Event()
                    await trio.sleep(0.0005)

            seen: list[int] = []
            with capture_logs() as logs:
                nursery.start_soon(publish)
                while not seen or seen[-1] < total:
                    async with connect(written, token) as hub:
                        answer = await hub.subscribe(info.call_id, seen[-1] if seen else 0)
                        seen += [e["seq"] for e in answer.events]
                        for _ in range(25):         # a few live events, then drop the connection
                            if seen[-1] == total:
                                break
                            seen.append((await next_event(hub))["seq"])
                    # Fall behind the bus's memory of 20 events, so the store has to answer.
                    while published[0] < min(seen[-1] + 30, total):
                        await progressed[0].wait()
            assert seen == list(range(1, total + 1))
            from_store = [e for e in logs if e["event"] == "events_read_from_store"]
            assert from_store and all(e["events"] > 0 for e in from_store)
            nursery.cancel_scope.cancel()
