"""The real daemon as a subprocess: readiness, health, metrics, graceful stop, crash."""

from __future__ import annotations

import contextlib
import secrets
import signal
import socket
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import make_config, run_daemon
from tests.sipp import RawSipPeer, to_tag


async def test_ready_health_and_metrics(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config.write()
    async with run_daemon(config.path) as daemon, httpx.AsyncClient(
            base_url=config.api_url) as http:
        assert "READY=1" in daemon.notifications[0]
        assert (await http.get("/healthz")).status_code == 200
        ready = await http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"sip": "pass", "api": "pass", "hub": "pass",
                                          "store": "pass"}
        metrics = await http.get("/metrics")
        assert metrics.status_code == 200
        names = {f.name for f in text_string_to_metric_families(metrics.text)}
        assert {"voicedashd_active_calls", "voicedashd_sip_requests",
                "voicedashd_hub_connections", "voicedashd_events_published",
                "voicedashd_store_write_seconds"} <= names
    # Every listener was really bound while ready: SIP on UDP and TCP, the hub on TCP.
    assert (tmp_path / "store.sqlite3").exists()


async def test_listeners_are_really_bound(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config.write()
    async with run_daemon(config.path):
        for port in (config.sip_port, config.api_port, config.hub_port):
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            # Binding the SIP UDP port must fail: the daemon holds it.
            try:
                udp.bind(("127.0.0.1", config.sip_port))
            except OSError:
                pass
            else:
                raise AssertionError("SIP UDP port is not bound by the daemon")
        finally:
            udp.close()


@pytest.mark.parametrize("setting", ["sip.listen", "api.listen", "hub.listen"])
async def test_port_in_use_is_fatal_with_the_setting_named(tmp_path: Path, setting: str) -> None:
    config = make_config(tmp_path)
    config.write()
    port = {"sip.listen": config.sip_port, "api.listen": config.api_port,
            "hub.listen": config.hub_port}[setting]
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", port))
    blocker.listen()
    try:
        async with run_daemon(config.path, wait_ready=False) as daemon:
            with trio.fail_after(30):
                await daemon.process.wait()
            assert daemon.process.returncode == 1
            line = await daemon.wait_for_log_text("voicedashd: error:")
            assert line == (f"voicedashd: error: {setting}: cannot listen on 127.0.0.1:{port}: "
                            "Address already in use"), daemon.dump()
            assert not any("READY=1" in n for n in daemon.notifications)
    finally:
        blocker.close()


async def test_sigterm_stops_cleanly_within_grace(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config.shutdown_grace = "3s"
    config.write()
    async with run_daemon(config.path) as daemon:
        mark = len(daemon.notifications)
        daemon.send_signal(signal.SIGTERM)
        with trio.fail_after(3 + 5):
            await daemon.process.wait()
        assert daemon.process.returncode == 0, daemon.dump()
        await daemon.wait_for_notification("STOPPING=1", start=mark)
        await daemon.wait_for_log("daemon_stopped")


async def test_watchdog_pings_at_half_the_interval(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config.write()
    async with run_daemon(config.path, env={"WATCHDOG_USEC": "400000"}) as daemon:
        first = await daemon.wait_for_notification("WATCHDOG=1")
        start = daemon.notifications.index(first)
        await daemon.wait_for_notification("WATCHDOG=1", start=start + 1)
        pings = [n for n in daemon.notifications if n == "WATCHDOG=1"]
        assert len(pings) >= 2


async def test_a_call_cut_by_kill_9_is_closed_in_history_at_the_next_start(
        tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config.write()
    database = tmp_path / "store.sqlite3"
    async with run_daemon(config.path) as daemon, RawSipPeer(config.sip_port) as peer:
        call_id = f"{secrets.token_hex(6)}@test"
        await peer.send(peer.invite(branch=f"z9hG4bK{secrets.token_hex(6)}", call_id=call_id))
        tag = to_tag(await peer.receive_status(200))
        await peer.send(peer.in_dialog("ACK", call_id=call_id, from_tag="caller1", to_tag=tag,
                                       cseq=1))
        started = await daemon.wait_for_log("call_started")
        with trio.fail_after(10):
            while _call_row(database, started["call_id"]) is None:
                await trio.sleep(0.05)      # the store writer has no event a test can await
        daemon.process.kill()
        await daemon.process.wait()
    assert _call_row(database, started["call_id"])["ended_at"] is None
    async with run_daemon(config.path) as daemon:
        closed = await daemon.wait_for_log("store_unfinished_calls_closed")
        assert closed["count"] == 1
        row = _call_row(database, started["call_id"])
        assert row["end_reason"] == "interrupted"
        assert row["ended_at"] is not None


def _call_row(database: Path, call_id: str) -> dict[str, Any] | None:
    with contextlib.closing(sqlite3.connect(database)) as conn:
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT * FROM calls WHERE call_id = ?", (call_id,)).fetchone()
    return None if row is None else dict(row)


async def test_readiness_fails_while_the_daemon_stops(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config.write()
    async with run_daemon(config.path) as daemon, RawSipPeer(config.sip_port) as peer, \
            httpx.AsyncClient(base_url=config.api_url) as http:
        call_id = f"{secrets.token_hex(6)}@test"
        await peer.send(peer.invite(branch=f"z9hG4bK{secrets.token_hex(6)}", call_id=call_id))
        tag = to_tag(await peer.receive_status(200))
        await peer.send(peer.in_dialog("ACK", call_id=call_id, from_tag="caller1", to_tag=tag,
                                       cseq=1))
        await daemon.wait_for_log("call_started")
        assert (await http.get("/readyz")).status_code == 200
        daemon.send_signal(signal.SIGTERM)
        # The daemon hangs up and waits for our answer to its BYE: it is stopping, not ready.
        while not (await peer.receive()).startswith("BYE "):
            pass
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        assert set(ready.json()["checks"].values()) == {"fail"}
        with trio.fail_after(15):
            await daemon.process.wait()
        assert daemon.process.returncode == 0
