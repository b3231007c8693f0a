"""SIGHUP on the real daemon: every key of README's table applied or kept as it says."""

from __future__ import annotations

import json
import secrets
import signal
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import trio
from trio_websocket import open_websocket_url

from tests.harness import DaemonConfig, User, make_config, run_daemon
from tests.reload_cases import (
    KEY_ENV,
    changed_values,
    readme_reload_column,
    render,
    start_values,
)
from tests.sipp import RawSipPeer, to_tag


def _write(config: DaemonConfig, values: dict[str, Any]) -> None:
    config.path.write_text(render(values))


async def test_sighup_with_broken_file_keeps_old_config(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config.write()
    async with run_daemon(config.path) as daemon, httpx.AsyncClient(
            base_url=config.api_url) as http:
        good_text = config.path.read_text()
        config.path.write_text(good_text.replace('listen = "127.0.0.1:', 'listn = "127.0.0.1:', 1))
        mark = len(daemon.notifications)
        daemon.send_signal(signal.SIGHUP)
        failure = await daemon.wait_for_log("config_reload_failed")
        assert "sip.listn: unknown key" in failure["error"]
        await daemon.wait_for_notification("RELOADING=1", start=mark)
        await daemon.wait_for_notification("READY=1", start=mark + 1)
        assert (await http.get("/readyz")).status_code == 200
        assert daemon.process.returncode is None


async def test_sighup_applies_a_new_user(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config.write()
    async with run_daemon(config.path) as daemon, httpx.AsyncClient(
            base_url=config.api_url) as http:
        newcomer = User("1002")
        config.users.append(newcomer)
        config.write()
        mark = len(daemon.notifications)
        daemon.send_signal(signal.SIGHUP)
        reloaded = await daemon.wait_for_log("config_reloaded")
        assert reloaded["users"] == 2
        reloading = await daemon.wait_for_notification("RELOADING=1", start=mark)
        assert any(line.startswith("MONOTONIC_USEC=") for line in reloading.split("\n"))
        await daemon.wait_for_notification("READY=1", start=mark + 1)
        login = await http.post("/api/auth/login", json={
            "extension": "1002", "password": newcomer.password, "tenant": "acme"})
        assert login.status_code == 200


async def test_sighup_reports_settings_that_need_a_restart(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config.write()
    async with run_daemon(config.path) as daemon, httpx.AsyncClient(
            base_url=config.api_url) as http:
        old_port = config.api_port
        config.api_port = old_port + 1
        config.write()
        daemon.send_signal(signal.SIGHUP)
        warning = await daemon.wait_for_log("config_reload_needs_restart")
        assert warning["key"] == "api.listen"
        assert warning["running"] == f"127.0.0.1:{old_port}"
        assert warning["file"] == f"127.0.0.1:{old_port + 1}"
        assert (await http.get(f"http://127.0.0.1:{old_port}/healthz")).status_code == 200


async def test_every_key_of_the_readme_table_reloads_as_the_table_says(tmp_path: Path) -> None:
    """One SIGHUP changing every key: each live key applied, each restart key kept and named.

    The daemon derives both lists from the config it put in force, so this checks that config;
    a sample of keys is then checked by what the daemon does.
    """
    readme = readme_reload_column()
    config = make_config(tmp_path)
    config.write()      # the first secret file
    start, changed = start_values(config), changed_values(config)
    _write(config, start)
    # The log must stay JSON for this test to read it; log.format gets its own reload below.
    first = changed | {"log.format": start["log.format"]}
    async with run_daemon(config.path, env=KEY_ENV) as daemon, httpx.AsyncClient(
            base_url=config.api_url) as http:
        _write(config, first)
        daemon.send_signal(signal.SIGHUP)
        reloaded = await daemon.wait_for_log("config_reloaded")
        kept = {line["key"]: line for line in daemon.events("config_reload_needs_restart")}
        for key, when in readme.items():
            if key == "log.format":
                continue
            if when == "live":
                assert key in reloaded["applied"] and key not in kept, key
            else:
                assert key not in reloaded["applied"] and key in kept, key
                assert kept[key]["running"] == _shown(key, start[key], tmp_path), key
                assert kept[key]["file"] == _shown(key, first[key], tmp_path), key
        assert len(reloaded["applied"]) + len(kept) == len(readme) - 1

        # Restart keys: the sockets bound at start still serve, the new addresses are unbound.
        assert (await http.get("/healthz")).status_code == 200
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", config.api_port + 1)
        await (await trio.open_tcp_stream("127.0.0.1", config.hub_port)).aclose()
        # Live keys: users, tenants and token settings; the signing secret is the old one.
        login = await http.post("/api/auth/login", json={
            "extension": "1003", "password": "third password", "tenant": "initech"})
        assert login.status_code == 200, login.text
        token = login.json()["access_token"]
        claims = jwt.decode(token, (tmp_path / "jwt-secret").read_bytes().strip(),
                            algorithms=["HS256"], audience="voicedashd-dashboard-reloaded",
                            issuer="voicedashd-reloaded")
        assert claims["exp"] - claims["iat"] == 600
        # The hub takes that token, and reads (answers, not closes with 1009) a message larger
        # than the file's new 4096-byte limit: the 64 KiB it was started with stays in force.
        origin = [(b"Origin", config.api_url.encode())]
        async with open_websocket_url(f"ws://127.0.0.1:{config.hub_port}/ws",
                                      extra_headers=origin) as ws:
            await ws.send_message(json.dumps({"type": "auth", "token": token}))
            assert json.loads(await ws.get_message())["type"] == "connection_established"
            await ws.send_message(json.dumps({"type": "ping", "id": "x" * 8000}))
            assert json.loads(await ws.get_message())["error"] == "bad_request"
        # CORS origins and the page's hub URL.
        preflight = await http.options("/api/calls", headers={
            "Origin": "https://dash.example.com", "Access-Control-Request-Method": "GET"})
        assert preflight.status_code == 204
        page = await http.get("/")
        assert "wss://dash.example.com/ws" in page.text

        # log.format: the next reload's own line is in the console format, not JSON.
        _write(config, changed)
        daemon.send_signal(signal.SIGHUP)
        line = await daemon.wait_for_log_text(f"generation={reloaded['generation'] + 1}")
        assert "config_reloaded" in line and not line.lstrip().startswith("{")


def _shown(key: str, value: Any, base: Path) -> Any:
    """A restart key's TOML value as the daemon logs it (paths resolved, ranges as pairs)."""
    if key in _PATHS and value is not None:
        return str(base / value)
    if key == "recordings.dir" and value is None:  # beside the database
        return str(base / "recordings")
    if key == "media.rtp_ports":
        return [int(port) for port in value.split("-")]
    return value


_PATHS = ("store.path", "auth.jwt_secret_file", "api.tls_cert", "api.tls_key", "recordings.dir")


async def test_a_new_media_timeout_ends_the_next_silent_call(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config.write()
    async with run_daemon(config.path) as daemon, RawSipPeer(config.sip_port) as peer:
        config.path.write_text(config.render().replace("[media]\n", '[media]\ntimeout = "1s"\n'))
        daemon.send_signal(signal.SIGHUP)
        reloaded = await daemon.wait_for_log("config_reloaded")
        assert reloaded["applied"] == ["media.timeout"]
        call_id = f"{secrets.token_hex(6)}@test"
        await peer.send(peer.invite(branch=f"z9hG4bK{secrets.token_hex(6)}", call_id=call_id))
        tag = to_tag(await peer.receive_status(200))
        await peer.send(peer.in_dialog("ACK", call_id=call_id, from_tag="caller1", to_tag=tag,
                                       cseq=1))
        # No RTP is sent: the call must end after the reloaded 1 s, not the 30 s it started with.
        timed_out = await daemon.wait_for_log("call_media_timeout", timeout=10)
        assert timed_out["timeout"] == 1.0
        ended = await daemon.wait_for_log("call_ended", timeout=10)
        assert ended["reason"] == "media_timeout"


async def test_trusted_networks_apply_to_the_next_invite(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config.trusted = ("10.0.0.0/8",)
    config.write()
    async with run_daemon(config.path) as daemon, RawSipPeer(config.sip_port) as peer:
        await peer.send(peer.invite(branch=f"z9hG4bK{secrets.token_hex(6)}",
                                    call_id=f"{secrets.token_hex(6)}@test"))
        await peer.receive_status(403)
        config.trusted = ("127.0.0.0/8",)
        config.write()
        daemon.send_signal(signal.SIGHUP)
        await daemon.wait_for_log("config_reloaded", applied=["sip.trusted"])
        await peer.send(peer.invite(branch=f"z9hG4bK{secrets.token_hex(6)}",
                                    call_id=f"{secrets.token_hex(6)}@test"))
        await peer.receive_status(200)
