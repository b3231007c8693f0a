"""Kamailio as the PBX-side proxy: it forwards an unanswered or busy call to the daemon with
Diversion, record-routes, and every in-dialog request (ACK, both BYEs) goes through it.

Addresses: the caller 127.0.0.2, extension 1001's phone 127.0.0.3, Kamailio 127.0.0.4, the
daemon 127.0.0.1 — which trusts only 127.0.0.4, so a call reaches it through the proxy or not at
all. The proxy runs tests/kamailio/kamailio.cfg, the file the README points admins at.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from tests.harness import DaemonConfig, User, free_port, make_config, run_daemon
from tests.integration.test_calls_api import Session, token_for
from tests.kamailio.proxy import ProxySetup, RunningProxy, run_kamailio
from tests.sipp import SCENARIOS, SippResult, sipp_binary
from voicedashd.hub.client import HubClient, open_hub

CALLER, PHONE, PROXY = "127.0.0.2", "127.0.0.3", "127.0.0.4"
RING_MS = 1500  # how long 1001's phone rings before the proxy forwards the call
SIPP_TIMEOUT = 30
OWNER, OTHER = User("1001"), User("1002")


@dataclass(frozen=True)
class Scene:
    """The daemon's config and the proxy in front of it."""

    config: DaemonConfig
    proxy: ProxySetup


def _scene(tmp_path: Path, media: str = "") -> Scene:
    config = make_config(tmp_path, users=[OWNER, OTHER])
    config.trusted = (f"{PROXY}/32",)
    config.write()
    config.path.write_text(config.render().replace("[media]\n", f"[media]\n{media}\n", 1))
    proxy = ProxySetup(host=PROXY, port=free_port(), phone=(PHONE, free_port()),
                       voicedashd=("127.0.0.1", config.sip_port), ring_timeout_ms=RING_MS)
    return Scene(config, proxy)


async def _sipp(directory: Path, scenario: str, args: list[str]) -> SippResult:
    """Run one sipp call of a scenario; its errors (and messages, if traced) land in directory."""
    error_file = directory / f"sipp-{scenario}-{secrets.token_hex(3)}.err"
    command = [sipp_binary(), *args, "-sf", str(SCENARIOS / f"{scenario}.xml"), "-m", "1",
               "-t", "u1", "-mp", str(free_port()), "-timeout", f"{SIPP_TIMEOUT}s",
               "-timeout_error", "-trace_err", "-error_file", str(error_file), "-nostdin"]
    with trio.fail_after(SIPP_TIMEOUT + 10):
        done = await trio.run_process(command, capture_stdout=True, capture_stderr=True,
                                      check=False, cwd=directory)
    errors = error_file.read_text(errors="replace") if error_file.exists() else ""
    return SippResult(done.returncode, errors + done.stderr.decode(errors="replace"),
                      done.stdout.decode(errors="replace"))


async def _phone(directory: Path, proxy: ProxySetup, scenario: str,
                 results: dict[str, SippResult]) -> None:
    """Extension 1001's phone: a sipp UAS where the proxy looks for it."""
    host, port = proxy.phone
    results["phone"] = await _sipp(directory, scenario, ["-i", host, "-p", str(port)])


async def _caller(directory: Path, proxy: ProxySetup, scenario: str, *extra: str) -> SippResult:
    """A caller dialling 1001 through the proxy, every message traced to caller.log."""
    return await _sipp(directory, scenario, [
        f"{proxy.host}:{proxy.port}", "-i", CALLER, "-p", str(free_port()), "-s", "1001",
        "-trace_msg", "-message_file", str(directory / "caller.log"), *extra])


def _received(log: Path, method: str) -> str:
    """The first request of this method that sipp logged as received."""
    blocks = re.split(r"^-{20,}.*$", log.read_text(errors="replace"), flags=re.MULTILINE)
    for block in blocks:
        head, _, message = block.strip().partition("\n")
        if "message received" in head and message.strip().startswith(f"{method} "):
            return message.strip()
    raise AssertionError(f"no {method} received in {log}:\n{log.read_text()[-3000:]}")


def _vias(message: str) -> list[str]:
    return re.findall(r"^(?:Via|v):\s*(.*?)\s*$", message, re.IGNORECASE | re.MULTILINE)


async def _hub(url: str, token: str, origin: str, *,
               task_status: trio.TaskStatus[HubClient] = trio.TASK_STATUS_IGNORED) -> None:
    async with open_hub(url, token, origin=origin) as hub:
        task_status.started(hub)
        await trio.sleep_forever()


def _forwarded(proxy: RunningProxy, status: int, call_id: str, scene: Scene) -> str:
    """The proxy's line saying it forwarded the call to the daemon after `status`."""
    port = scene.config.sip_port
    lines = proxy.matching(f"forward {status} to sip:bot@127.0.0.1:{port}", call_id)
    assert lines, proxy.dump()
    return lines[0]


async def test_unanswered_call_is_forwarded_and_our_bye_returns_through_the_proxy(
        tmp_path: Path) -> None:
    """1001's phone rings out; the proxy forwards to the daemon with Diversion naming 1001 and
    To naming the daemon's number. The call is 1001's (hub lobby, history), not 1002's. The ACK
    and the daemon's BYE (media timeout: the caller sends no RTP) cross the proxy."""
    scene = _scene(tmp_path, media='timeout = "1s"')
    config, results = scene.config, {}
    with trio.fail_after(60):
        async with run_daemon(config.path) as daemon, \
                run_kamailio(tmp_path, scene.proxy) as proxy, \
                httpx.AsyncClient(base_url=config.api_url) as http:
            owner = Session(http, owner_token := await token_for(http, OWNER))
            other = Session(http, other_token := await token_for(http, OTHER))
            hub_url = f"ws://127.0.0.1:{config.hub_port}/ws"
            async with trio.open_nursery() as nursery:
                owner_hub = await nursery.start(_hub, hub_url, owner_token, config.api_url)
                other_hub = await nursery.start(_hub, hub_url, other_token, config.api_url)
                nursery.start_soon(_phone, tmp_path, scene.proxy, "proxy_phone_no_answer",
                                   results)
                caller = await _caller(tmp_path, scene.proxy, "proxy_caller_waits_bye")
                assert caller.ok, caller.errors + proxy.dump()
                started = await daemon.wait_for_log("call_started")
                ended = await daemon.wait_for_log("call_ended", call_id=started["call_id"])
                await owner_hub.ping()
                await other_hub.ping()
                lobby = {name: [(e["event"], e["call_id"]) for e in hub.received()]
                         for name, hub in (("owner", owner_hub), ("other", other_hub))}
                nursery.cancel_scope.cancel()
            history = {c["call_id"] for c in (await owner.history())["calls"]}
            other_history = {c["call_id"] for c in (await other.history())["calls"]}
            other_transcript = await other.transcript(started["call_id"])
            bye = await daemon.wait_for_log("sip_bye_sent")
    assert results["phone"].ok, results["phone"].errors

    # The daemon saw its own number in To, and took the extension from Diversion.
    assert (started["callee"], started["callee_extension"], started["tenant"]) == (
        "bot", "1001", "acme"), started
    assert ended["reason"] == "media_timeout"
    sip_call_id = _sip_call_id(proxy)
    _forwarded(proxy, 408, sip_call_id, scene)
    # Only the owner's lobby and history hold the call.
    assert ("call_started", started["call_id"]) in lobby["owner"], lobby
    assert lobby["other"] == [], lobby
    assert started["call_id"] in history
    assert started["call_id"] not in other_history
    assert other_transcript.status_code == 404

    # The caller's ACK was relayed by the proxy (loose routing) ...
    assert proxy.matching("relay in-dialog ACK", f"from {CALLER}:", sip_call_id), proxy.dump()
    # ... and the daemon's BYE went to the proxy, which relayed it to the caller.
    assert bye["status"] == 200, bye
    assert proxy.matching("relay in-dialog BYE", f"from 127.0.0.1:{config.sip_port}",
                          sip_call_id), proxy.dump()
    received = _received(tmp_path / "caller.log", "BYE")
    vias = _vias(received)
    assert len(vias) == 2, received
    assert vias[0].startswith(f"SIP/2.0/UDP {PROXY}:{scene.proxy.port};"), received
    assert vias[1].startswith(f"SIP/2.0/UDP 127.0.0.1:{config.sip_port};"), received
    # Our From was the To the daemon got (its own number); the proxy put back the caller's
    # To from the parameter it keeps in its Record-Route: our Route carried it unaltered.
    assert re.search(r"^From: <sip:1001@acme\.example>;tag=", received, re.MULTILINE), received


async def test_busy_extension_is_forwarded_and_the_callers_bye_reaches_us_through_the_proxy(
        tmp_path: Path) -> None:
    """1001's phone answers 486; the proxy forwards at once. While the call is up it is in 1001's
    active calls and not in 1002's; the caller's BYE follows the Record-Route to the daemon."""
    scene = _scene(tmp_path)
    config, results = scene.config, {}
    with trio.fail_after(60):
        async with run_daemon(config.path) as daemon, \
                run_kamailio(tmp_path, scene.proxy) as proxy, \
                httpx.AsyncClient(base_url=config.api_url) as http:
            owner = Session(http, await token_for(http, OWNER))
            other = Session(http, await token_for(http, OTHER))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_phone, tmp_path, scene.proxy, "proxy_phone_busy", results)

                async def call() -> None:
                    results["caller"] = await _caller(
                        tmp_path, scene.proxy, "proxy_caller_hangs_up", "-d", "6000")

                nursery.start_soon(call)
                started = await daemon.wait_for_log("call_started", timeout=20)
                owner_active = await owner.active_ids()
                other_active = await other.active_ids()
            ended = await daemon.wait_for_log("call_ended", call_id=started["call_id"])
    assert results["phone"].ok, results["phone"].errors
    assert results["caller"].ok, results["caller"].errors + proxy.dump()
    assert (started["callee"], started["callee_extension"]) == ("bot", "1001"), started
    assert owner_active == {started["call_id"]}
    assert other_active == set()
    assert ended["reason"] == "caller_hangup"
    sip_call_id = _sip_call_id(proxy)
    _forwarded(proxy, 486, sip_call_id, scene)
    assert proxy.matching("relay in-dialog ACK", f"from {CALLER}:", sip_call_id), proxy.dump()
    assert proxy.matching("relay in-dialog BYE", f"from {CALLER}:", sip_call_id), proxy.dump()
    assert proxy.matching("reply 200 OK to BYE", f"from 127.0.0.1:{config.sip_port}",
                          sip_call_id), proxy.dump()


def _sip_call_id(proxy: RunningProxy) -> str:
    """The Call-ID of the one call the proxy rang 1001 for."""
    lines = proxy.matching("ring 1001 at")
    assert len(lines) == 1, proxy.dump()
    return lines[0].rsplit("call-id ", 1)[1].strip()
