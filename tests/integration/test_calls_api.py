"""The calls REST API against the real daemon: sipp places calls, httpx asks who sees what."""

from __future__ import annotations

import os
import signal
import ssl
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.harness import DaemonConfig, RunningDaemon, User, make_config, run_daemon
from tests.sipp import SippResult, run_sipp

TIMEOUT = 60
TENANTS = {"acme": ["acme.example"], "globex": ["globex.example"]}
ALLOWED_ORIGIN = "https://dash.acme.example"
STRICT_CSP = "default-src 'none'; frame-ancestors 'none'"


def write_config(config: DaemonConfig, **api: str | list[str]) -> None:
    """Write the config with extra [api] settings (the harness renders [api] itself)."""
    config.write()
    settings = "".join(f"{key} = {_toml(value)}\n" for key, value in api.items())
    config.path.write_text(config.render().replace("[api]\n", f"[api]\n{settings}", 1))


def _toml(value: str | list[str]) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    return "[" + ", ".join(f'"{v}"' for v in value) + "]"


async def token_for(http: httpx.AsyncClient, user: User) -> str:
    """Log in as user and return the access token."""
    answer = await http.post("/api/auth/login", json={
        "extension": user.extension, "password": user.password, "tenant": user.tenant})
    assert answer.status_code == 200, answer.text
    return answer.json()["access_token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Session:
    """One logged-in user's view of the API."""

    def __init__(self, http: httpx.AsyncClient, token: str) -> None:
        self.http = http
        self.headers = bearer(token)

    async def get(self, path: str, **params: Any) -> httpx.Response:
        return await self.http.get(path, headers=self.headers, params=params)

    async def active_ids(self) -> set[str]:
        answer = await self.get("/api/calls/active")
        assert answer.status_code == 200, answer.text
        return {call["call_id"] for call in answer.json()}

    async def history(self, **params: Any) -> dict[str, Any]:
        answer = await self.get("/api/calls", **params)
        assert answer.status_code == 200, answer.text
        return answer.json()

    async def transcript(self, call_id: str) -> httpx.Response:
        return await self.get(f"/api/calls/{call_id}/transcript")


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def test_each_user_sees_exactly_their_own_calls(tmp_path: Path) -> None:
    alice, bob = User("1001"), User("1002")
    gus = User("1001", tenant="globex")
    admin = User("1900", role="admin")
    config = make_config(tmp_path, users=[alice, bob, gus, admin], tenants=TENANTS)
    write_config(config)
    results: dict[str, SippResult] = {}

    async def call(key: str, scenario: str, extension: str) -> None:
        results[key] = await run_sipp(config.sip_port, tmp_path, scenario=scenario,
                                      service=extension, timeout=30)

    with trio.fail_after(TIMEOUT):
        async with run_daemon(config.path) as daemon, httpx.AsyncClient(
                base_url=config.api_url) as http:
            users = {"alice": alice, "bob": bob, "gus": gus, "admin": admin}
            s = {name: Session(http, await token_for(http, user)) for name, user in users.items()}
            for session in s.values():
                assert await session.active_ids() == set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, "alice", "long_call", "1001")
                nursery.start_soon(call, "bob", "long_call", "1002")
                nursery.start_soon(call, "gus", "long_call_globex", "1001")
                started = {
                    "alice": await daemon.wait_for_log("call_started", tenant="acme",
                                                       callee_extension="1001"),
                    "bob": await daemon.wait_for_log("call_started", tenant="acme",
                                                     callee_extension="1002"),
                    "gus": await daemon.wait_for_log("call_started", tenant="globex",
                                                     callee_extension="1001"),
                }
                ids = {name: line["call_id"] for name, line in started.items()}
                await _check_live(daemon, s, ids, started)
            assert all(r.ok for r in results.values()), {k: r.errors for k, r in results.items()}
            for call_id in ids.values():
                await daemon.wait_for_log("call_ended", call_id=call_id)

            for session in s.values():
                assert await session.active_ids() == set()
            for name in ("alice", "bob", "gus"):
                page = await s[name].history()
                assert page["next_before"] is None
                assert [c["call_id"] for c in page["calls"]] == [ids[name]], page
                past = page["calls"][0]
                assert past["answered"] is True
                assert past["state"] == "ended"
                assert past["end_reason"] == "caller_hangup"
                assert past["duration"] >= 4
                assert _time(past["started_at"]) <= _time(past["answered_at"]) <= _time(
                    past["ended_at"])
                assert _time(past["answered_at"]) == _time(started[name]["started_at"])
                ended = await s[name].transcript(ids[name])
                assert ended.json() == {"call_id": ids[name], "ended": True, "entries": []}
            admin_calls = (await s["admin"].history())["calls"]
            assert {c["call_id"] for c in admin_calls} == {ids["alice"], ids["bob"]}
            keys = [(c["started_at"], c["call_id"]) for c in admin_calls]
            assert keys == sorted(keys, reverse=True)
            await _check_not_found(s, ids)


async def _check_live(daemon: RunningDaemon, s: dict[str, Session], ids: dict[str, str],
                      started: dict[str, dict[str, Any]]) -> None:
    """While the three calls are up: each user sees their own call, the admin acme's two."""
    answer = await s["alice"].get("/api/calls/active")
    assert answer.status_code == 200
    [live] = answer.json()
    assert live == {
        "call_id": ids["alice"],
        "tenant": "acme",
        "caller": {"number": "5551234", "name": "Alice Caller"},
        "caller_name": "Alice Caller",
        "callee": "1001",
        "callee_extension": "1001",
        "is_ai_handled": True,
        "started_at": live["started_at"],
        "created_at": live["started_at"],
        "state": "confirmed",
        "answered": True,
        "answered_at": live["answered_at"],
        "ended_at": None,
        "end_reason": None,
        "duration": None,
        "summary": None,
        "inbox": "new",
        "recording": None,
    }
    assert live["started_at"].endswith("Z") and live["answered_at"].endswith("Z")
    assert _time(live["answered_at"]) == _time(started["alice"]["started_at"])
    assert _time(live["started_at"]) <= _time(live["answered_at"])
    assert await s["bob"].active_ids() == {ids["bob"]}
    [globex] = (await s["gus"].get("/api/calls/active")).json()
    assert (globex["call_id"], globex["caller"]) == (
        ids["gus"], {"number": "5559876", "name": "Gus Globex"})
    assert await s["admin"].active_ids() == {ids["alice"], ids["bob"]}
    retrieved = await daemon.wait_for_log("active_calls_retrieved", extension="1001",
                                          tenant="acme", count=1)
    assert retrieved["progress"] == "realtime"

    for name in ("alice", "bob", "gus"):
        answer = await s[name].transcript(ids[name])
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"call_id": ids[name], "ended": False, "entries": []}
    for name in ("alice", "bob"):
        assert (await s["admin"].transcript(ids[name])).status_code == 200
    await _check_not_found(s, ids)
    # All of this happened while the calls were up (sipp hangs up after 5 s).
    assert not [line for line in daemon.logs if line.get("event") == "call_ended"], (
        "the live checks took longer than the calls last")
    # Live calls are in the history too, not yet ended.
    [current] = (await s["alice"].history())["calls"]
    assert (current["call_id"], current["ended_at"], current["answered"], current["state"]) == (
        ids["alice"], None, True, "confirmed")
    # One call shape: the history's entry of a live call is the active list's, field by field.
    assert current == live


async def _check_not_found(s: dict[str, Session], ids: dict[str, str]) -> None:
    """Other people's calls are 404, answered exactly as a call that does not exist."""
    missing = await s["alice"].transcript("0123456789abcdef01234567")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    forbidden = {"alice": ["bob", "gus"], "bob": ["alice", "gus"], "gus": ["alice", "bob"],
                 "admin": ["gus"]}
    for viewer, others in forbidden.items():
        for other in others:
            answer = await s[viewer].transcript(ids[other])
            assert answer.status_code == 404, (viewer, other, answer.text)
            assert answer.content == missing.content
    for viewer in ("alice", "bob", "gus"):
        assert {c["call_id"] for c in (await s[viewer].history())["calls"]} == {ids[viewer]}


async def test_history_pages_and_bad_requests(tmp_path: Path) -> None:
    alice = User("1001")
    config = make_config(tmp_path, users=[alice])
    write_config(config)
    with trio.fail_after(TIMEOUT):
        async with run_daemon(config.path) as daemon, httpx.AsyncClient(
                base_url=config.api_url) as http:
            result = await run_sipp(config.sip_port, tmp_path, calls=5, rate=20,
                                    service="1001")
            assert result.ok, result.errors
            for _ in range(5):
                await daemon.wait_for_log("call_ended")
            me = Session(http, await token_for(http, alice))

            everything = (await me.history(limit=100))["calls"]
            assert len(everything) == 5
            keys = [(c["started_at"], c["call_id"]) for c in everything]
            assert keys == sorted(keys, reverse=True)
            pages, before = [], None
            while True:
                page = await me.history(limit=2, **({"before": before} if before else {}))
                pages.append([c["call_id"] for c in page["calls"]])
                before = page["next_before"]
                if before is None:
                    break
            assert [len(p) for p in pages] == [2, 2, 1]
            assert [i for p in pages for i in p] == [c["call_id"] for c in everything]
            oldest = everything[-1]["started_at"]
            assert (await me.history(before=oldest))["calls"] == []
            assert [c["call_id"] for c in (await me.history(before="2999-01-01T00:00:00"))[
                "calls"]] == [c["call_id"] for c in everything[:20]]

            bad = [{"limit": "0"}, {"limit": "101"}, {"limit": "ten"}, {"before": "yesterday"},
                   {"before": "2025-02-30T00:00:00Z"}, {"color": "blue"}]
            for params in bad:
                answer = await me.get("/api/calls", **params)
                assert answer.status_code == 400, (params, answer.text)
                assert answer.json()["error"] == "bad_request"
                assert next(iter(params)) in answer.json()["detail"], answer.text
            two = await http.get("/api/calls?limit=1&limit=2", headers=me.headers)
            assert two.status_code == 400, two.text

            newest = everything[0]["call_id"]
            for path in ("/api/calls", "/api/calls/active", f"/api/calls/{newest}/transcript",
                         "/api/calls?limit=0"):
                answer = await http.get(path)
                assert answer.status_code == 401, (path, answer.text)
                assert answer.json()["error"] == "invalid_token"
                assert answer.headers["WWW-Authenticate"].startswith("Bearer ")
                forged = await http.get(path, headers=bearer("not.a.jwt"))
                assert forged.status_code == 401, (path, forged.text)


async def test_cors_security_headers_and_openapi(tmp_path: Path) -> None:
    alice = User("1001")
    config = make_config(tmp_path, users=[alice])
    write_config(config, cors_origins=[ALLOWED_ORIGIN])
    with trio.fail_after(TIMEOUT):
        async with run_daemon(config.path) as daemon, httpx.AsyncClient(
                base_url=config.api_url) as http:
            token = await token_for(http, alice)
            allowed = await http.get("/api/calls/active",
                                     headers=bearer(token) | {"Origin": ALLOWED_ORIGIN})
            assert allowed.status_code == 200
            assert allowed.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
            assert "Origin" in allowed.headers["Vary"]
            assert "Access-Control-Allow-Credentials" not in allowed.headers
            denied = await http.get("/api/calls/active",
                                    headers=bearer(token) | {"Origin": "https://evil.example"})
            assert denied.status_code == 200   # a browser refuses to let the page read it
            assert "Access-Control-Allow-Origin" not in denied.headers

            preflight = {"Access-Control-Request-Method": "GET",
                         "Access-Control-Request-Headers": "authorization"}
            ok = await http.options("/api/calls/active",
                                    headers=preflight | {"Origin": ALLOWED_ORIGIN})
            assert ok.status_code == 204, ok.text
            assert ok.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
            assert "Authorization" in ok.headers["Access-Control-Allow-Headers"]
            assert "GET" in ok.headers["Access-Control-Allow-Methods"]
            refused = await http.options("/api/auth/login",
                                         headers=preflight | {"Origin": "https://evil.example"})
            assert refused.status_code == 403
            assert "Access-Control-Allow-Origin" not in refused.headers

            for answer in (allowed, denied, ok, refused, await http.get("/api/calls"),
                           await http.get("/api/nope"), await http.get("/healthz"),
                           await http.get("/openapi.json")):
                assert answer.headers["X-Content-Type-Options"] == "nosniff"
                assert answer.headers["Referrer-Policy"] == "no-referrer"
                assert answer.headers["X-Frame-Options"] == "DENY"
                assert answer.headers["Content-Security-Policy"] == STRICT_CSP
                if answer.request.url.path.startswith("/api/"):
                    assert answer.headers["Cache-Control"] == "no-store"
            unknown = await http.get("/api/nope")
            assert (unknown.status_code, unknown.json()["error"]) == (404, "not_found")
            wrong_method = await http.delete("/api/calls/active")
            assert wrong_method.status_code == 405
            assert "GET" in wrong_method.headers["Allow"]
            docs = await http.get("/docs")
            assert docs.status_code == 200
            assert "frame-ancestors 'none'" in docs.headers["Content-Security-Policy"]
            assert "'sha256-" in docs.headers["Content-Security-Policy"]

            # cors_origins is live: a reload swaps the allowed origin without a restart.
            other = "https://wall.acme.example"
            write_config(config, cors_origins=[other])
            mark = len(daemon.logs)
            daemon.send_signal(signal.SIGHUP)
            await daemon.wait_for_log("config_reloaded", start=mark)
            before = await http.get("/healthz", headers={"Origin": ALLOWED_ORIGIN})
            assert "Access-Control-Allow-Origin" not in before.headers
            after = await http.get("/healthz", headers={"Origin": other})
            assert after.headers["Access-Control-Allow-Origin"] == other

            schema = (await http.get("/openapi.json")).json()
            paths = schema["paths"]
            assert {"/api/calls", "/api/calls/active",
                    "/api/calls/{call_id}/transcript"} <= set(paths)
            history = paths["/api/calls"]["get"]
            assert {p["name"] for p in history["parameters"]} == {"before", "limit", "state"}
            assert history["security"] == [{"bearer": []}]
            for path in ("/api/calls/active", "/api/calls/{call_id}/transcript"):
                assert paths[path]["get"]["security"] == [{"bearer": []}]
                assert "200" in paths[path]["get"]["responses"]
            assert "404" in paths["/api/calls/{call_id}/transcript"]["get"]["responses"]


async def test_a_body_sent_after_the_headers_keeps_the_connection_usable(
        tmp_path: Path) -> None:
    config = make_config(tmp_path)
    write_config(config)
    body = b'{"refresh_token": null}'
    with trio.fail_after(TIMEOUT):
        async with run_daemon(config.path):
            stream = await trio.open_tcp_stream("127.0.0.1", config.api_port)
            async with stream:
                for method, path in (("TRACE", "/api/auth/logout"), ("POST", "/api/auth/logout"),
                                     ("GET", "/healthz"), ("GET", "/healthz")):
                    await stream.send_all(
                        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                        "\r\n".encode())
                    # A slow client (urllib3 sends headers and body apart): an answer sent
                    # before the body arrived used to leave the connection stuck.
                    await trio.sleep(0.2)
                    await stream.send_all(body)
                    with trio.fail_after(5):
                        status = await _read_status(stream)
                    assert status in (200, 401, 405), (method, path, status)
            async with httpx.AsyncClient(base_url=config.api_url) as http:
                big = await http.post("/api/auth/login", content=b"{" * (64 * 1024 + 1),
                                      headers={"Content-Type": "application/json"})
                assert (big.status_code, big.json()["error"]) == (413, "body_too_large")
                assert big.headers["Connection"] == "close"
                assert (await http.get("/healthz")).status_code == 200


async def _read_status(stream: trio.SocketStream) -> int:
    """Read one HTTP/1.1 response with Content-Length; return its status."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some()
        assert chunk, "the server closed the connection"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines
                  if line.lower().startswith("content-length:"))
    while len(rest) < length:
        rest += await stream.receive_some()
    return int(lines[0].split()[1])


async def test_https_with_a_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    await trio.run_process(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        capture_stdout=True, capture_stderr=True)
    alice = User("1001")
    config = make_config(tmp_path, users=[alice])
    write_config(config, tls_cert=str(cert), tls_key=str(key))
    url = f"https://127.0.0.1:{config.api_port}"
    trust = ssl.create_default_context(cafile=str(cert))
    with trio.fail_after(TIMEOUT):
        async with run_daemon(config.path), httpx.AsyncClient(base_url=url,
                                                              verify=trust) as http:
            assert (await http.get("/healthz")).status_code == 200
            token = await token_for(http, alice)
            answer = await http.get("/api/calls/active", headers=bearer(token))
            assert (answer.status_code, answer.json()) == (200, [])
            async with httpx.AsyncClient(base_url=url) as untrusting:
                with pytest.raises(httpx.ConnectError) as refused:
                    await untrusting.get("/healthz")
            assert _caused_by(refused.value, ssl.SSLCertVerificationError)


def _caused_by(error: BaseException | None, kind: type[BaseException]) -> bool:
    while error is not None:
        if isinstance(error, kind):
            return True
        error = error.__cause__ or error.__context__
    return False


async def test_schemathesis_finds_no_server_error(tmp_path: Path) -> None:
    alice = User("1001")
    config = make_config(tmp_path, users=[alice])
    write_config(config)
    st = Path(sys.executable).with_name("st")
    with trio.fail_after(TIMEOUT * 2):
        async with run_daemon(config.path), httpx.AsyncClient(base_url=config.api_url) as http:
            result = await run_sipp(config.sip_port, tmp_path, service="1001")
            assert result.ok, result.errors
            tokens = [await token_for(http, alice) for _ in range(2)]
            common = ["--checks", "not_a_server_error", "--max-examples", "25", "--seed", "1",
                      "--workers", "2", "--request-timeout", "10", "--no-color"]
            # Logout ends the session of the token it is sent with: fuzz it with its own token.
            runs = [["--exclude-path", "/api/auth/logout", "-H",
                     f"Authorization: Bearer {tokens[0]}"],
                    ["--include-path", "/api/auth/logout", "-H",
                     f"Authorization: Bearer {tokens[1]}"]]
            for run in runs:
                done = await trio.run_process(
                    [str(st), "run", f"{config.api_url}/openapi.json", *common, *run],
                    capture_stdout=True, capture_stderr=True, check=False, cwd=tmp_path,
                    env=os.environ | {"SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"})
                output = done.stdout.decode(errors="replace") + done.stderr.decode(
                    errors="replace")
                assert done.returncode == 0, output[-6000:]
