"""Take this call: the real daemon, sipp playing the PBX that receives our REFER, the hub."""

from __future__ import annotations

import shutil
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.harness import DaemonConfig, RunningDaemon, User, make_config, run_daemon
from tests.integration.test_hub import connect, next_event, token_of
from tests.sipp import SippResult, run_sipp
from tests.voice_caller import speak
from voicedashd.hub.client import HubClient

TRANSFER_LINE = "Putting you through now."
FAILED_LINE = "Sorry, that did not work, but I can take a message."  # one sentence: one tts_started


@pytest.fixture(scope="module")
def caller_audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The caller says hello, then stays on the line (silence) long enough for every test."""
    return speak("hello", tmp_path_factory.mktemp("voice") / "caller.ul", lead=1.0, tail=40.0)


def transfer_config(tmp_path: Path, users: list[User], caller_audio: Path) -> DaemonConfig:
    """A daemon with light offline speech engines and the transfer lines set."""
    config = make_config(tmp_path, users=users)
    shutil.copy(caller_audio, tmp_path / "caller.ul")
    config.extra = (f'[voicebot]\ngreeting = "Hello."\ntransfer_line = "{TRANSFER_LINE}"\n'
                    f'transfer_failed_line = "{FAILED_LINE}"\n'
                    '[voicebot.stt]\nengine = "pocketsphinx"\n'
                    '[voicebot.tts]\nengine = "espeak"\nvoice = "en-us"\n')
    config.write()
    return config


async def place_call(config: DaemonConfig, directory: Path, scenario: str, out: list[SippResult],
                     *, hold_ms: int = 0) -> None:
    extra = ("-d", str(hold_ms)) if hold_ms else ()
    out.append(await run_sipp(config.sip_port, directory, scenario=scenario, extra=extra,
                              timeout=90))


def api(config: DaemonConfig, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=config.api_url,
                             headers={"Authorization": f"Bearer {token}"})


async def follow(hub: HubClient, call_id: str) -> list[dict[str, Any]]:
    """Subscribe to the call: the events so far (call_started and after)."""
    subscribed = await hub.subscribe(call_id, since_seq=0)
    return list(subscribed.events)


async def until(hub: HubClient, events: list[dict[str, Any]], call_id: str, name: str,
                text: str | None = None, timeout: float = 60) -> dict[str, Any]:
    """Read the call's events into `events` until one named name (with text) has come."""
    def matches(event: dict[str, Any]) -> bool:
        return event["event"] == name and (text is None or event["data"].get("text") == text)

    with trio.move_on_after(timeout):
        while not any(matches(e) for e in events):
            event = await next_event(hub, timeout=timeout)
            if event["call_id"] == call_id:
                events.append(event)
        return next(e for e in events if matches(e))
    seen = [(e["event"], e["data"].get("text") or e["data"].get("reason")) for e in events]
    raise AssertionError(f"no {name} {text or ''} within {timeout}s; got {seen}")


def logged(daemon: RunningDaemon, name: str, **fields: Any) -> list[dict[str, Any]]:
    return [line for line in daemon.logs if line.get("event") == name
            and all(line.get(k) == v for k, v in fields.items())]


async def test_the_owner_takes_the_call_the_pbx_accepts_and_it_ends_transferred(
        tmp_path: Path, caller_audio: Path) -> None:
    """202 to the REFER, NOTIFY 100 then 200 (sipfrag): call_ended(transferred), BYE sent."""
    alice = User("1001")
    config = transfer_config(tmp_path, [alice], caller_audio)
    sipp: list[SippResult] = []
    with trio.fail_after(150):
        async with run_daemon(config.path) as daemon:
            token = await token_of(config, alice)
            async with connect(config, token) as hub, trio.open_nursery() as nursery:
                nursery.start_soon(place_call, config, tmp_path, "transfer_accept", sipp)
                call_id = (await next_event(hub, "call_started"))["call_id"]
                events = await follow(hub, call_id)
                await until(hub, events, call_id, "tts_started", "Hello.")  # the bot is up
                async with api(config, token) as http:
                    first = await http.post(f"/api/calls/{call_id}/transfer")
                    second = await http.post(f"/api/calls/{call_id}/transfer")
                await until(hub, events, call_id, "call_ended")
                async with api(config, token) as http:
                    metrics = (await http.get("/metrics")).text
    assert first.status_code == 202, first.text
    assert first.json() == {"call_id": call_id, "target": "sip:1001@127.0.0.1"}
    assert second.status_code == 409 and second.json()["error"] == "in_progress", second.text
    names = [e["event"] for e in events]
    started = events[names.index("transfer_started")]["data"]
    assert started == {"target": "sip:1001@127.0.0.1", "requested_by": "1001"}
    said = [e["data"]["text"] for e in events if e["event"] == "tts_started"]
    assert TRANSFER_LINE in said and FAILED_LINE not in said, said
    assert "transfer_failed" not in names
    assert events[-1]["event"] == "call_ended"
    assert events[-1]["data"]["reason"] == "transferred"
    # The PBX's reports reach the hub: the REFER accepted and the NOTIFY's 100, in whichever
    # order the two arrive (sipp sends the NOTIFY right after the 202).
    progress = [(e["data"]["status"], e["data"]["reason"]) for e in events
                if e["event"] == "transfer_progress"]
    assert sorted(progress) == [(100, "Trying"), (202, "Accepted")], progress
    assert names.index("transfer_started") < names.index("transfer_progress")
    assert 'voicedashd_calls_ended_total{reason="transferred"} 1.0' in metrics
    assert 'voicedashd_events_published_total{event="transfer_started"} 1.0' in metrics
    # sipp saw our REFER, had both NOTIFYs answered 200 and got our BYE.
    assert sipp and sipp[0].ok, sipp[0].errors if sipp else "sipp did not finish"
    [refer] = logged(daemon, "sip_refer_sent", call_id=call_id)
    line = next(e for e in events if e["event"] == "tts_started"
                and e["data"]["text"] == TRANSFER_LINE)
    # The bot's line went out first; the REFER followed it once it had been played.
    assert datetime.fromisoformat(refer["timestamp"]) > datetime.fromisoformat(line["ts"])
    assert logged(daemon, "call_transferred", call_id=call_id, status=200)
    bye = logged(daemon, "sip_bye_sent", call_id=call_id)
    assert bye and bye[0]["status"] == 200, bye


async def test_a_refused_transfer_is_told_and_the_bot_carries_on(
        tmp_path: Path, caller_audio: Path) -> None:
    """603 to the REFER: transfer_failed with the reason, the bot says so, the call goes on."""
    alice, admin = User("1001"), User("9000", role="admin")
    config = transfer_config(tmp_path, [alice, admin], caller_audio)
    sipp: list[SippResult] = []
    with trio.fail_after(150):
        async with run_daemon(config.path) as daemon:
            token = await token_of(config, admin)  # a tenant admin may take anyone's call
            async with connect(config, token) as hub, trio.open_nursery() as nursery:
                nursery.start_soon(partial(place_call, config, tmp_path, "transfer_reject", sipp,
                                           hold_ms=15000))
                call_id = (await next_event(hub, "call_started"))["call_id"]
                events = await follow(hub, call_id)
                await until(hub, events, call_id, "tts_started", "Hello.")
                async with api(config, token) as http:
                    answer = await http.post(f"/api/calls/{call_id}/transfer")
                    assert answer.status_code == 202, answer.text
                    failed = await until(hub, events, call_id, "transfer_failed")
                    await until(hub, events, call_id, "tts_started", FAILED_LINE)
                    assert "call_ended" not in [e["event"] for e in events]
                    # Another transfer may be asked for now that this one is over (the PBX
                    # declines that one too).
                    again = await http.post(f"/api/calls/{call_id}/transfer")
                    assert again.status_code == 202, again.text
                    while len([e for e in events if e["event"] == "transfer_failed"]) < 2:
                        events.append(await next_event(hub, timeout=60))
                await until(hub, events, call_id, "call_ended")
    assert failed["data"] == {"reason": "REFER refused: 603 Decline", "status": 603}
    names = [e["event"] for e in events]
    assert names.index("transfer_failed") < names.index("call_ended")
    assert "transfer_progress" not in names  # refused at once: nothing in between
    assert events[-1]["data"]["reason"] == "caller_hangup"  # sipp hung up; the bot never did
    started = [e["data"] for e in events if e["event"] == "transfer_started"]
    assert started[0] == {"target": "sip:1001@127.0.0.1", "requested_by": "9000"}
    assert sipp and sipp[0].ok, sipp[0].errors if sipp else "sipp did not finish"
    assert len(logged(daemon, "call_transfer_failed", call_id=call_id, status=603)) == 2
    assert len(logged(daemon, "sip_refer_sent", call_id=call_id)) == 2


async def test_someone_elses_transfer_is_404_and_sends_nothing(
        tmp_path: Path, caller_audio: Path) -> None:
    """Another user of the tenant gets the same 404 as for an unknown call; no REFER goes out."""
    alice, bob = User("1001"), User("1002")
    config = transfer_config(tmp_path, [alice, bob], caller_audio)
    sipp: list[SippResult] = []
    with trio.fail_after(150):
        async with run_daemon(config.path) as daemon:
            owner, stranger = await token_of(config, alice), await token_of(config, bob)
            async with connect(config, owner) as hub, trio.open_nursery() as nursery:
                # Any REFER during this call is an unexpected message to sipp: the call fails.
                nursery.start_soon(partial(place_call, config, tmp_path, "transfer_none", sipp,
                                           hold_ms=10000))
                call_id = (await next_event(hub, "call_started"))["call_id"]
                events = await follow(hub, call_id)
                async with api(config, stranger) as http:
                    refused = await http.post(f"/api/calls/{call_id}/transfer")
                    unknown = await http.post("/api/calls/0123456789abcdef01234567/transfer")
                async with httpx.AsyncClient(base_url=config.api_url) as nobody:
                    anonymous = await nobody.post(f"/api/calls/{call_id}/transfer")
                await until(hub, events, call_id, "call_ended")
    assert refused.status_code == unknown.status_code == 404
    assert refused.json() == unknown.json() == {"error": "not_found",
                                                "detail": "no call with this id"}
    assert anonymous.status_code == 401
    assert sipp and sipp[0].ok, sipp[0].errors if sipp else "sipp did not finish"
    assert "transfer_started" not in [e["event"] for e in events]
    assert events[-1]["data"]["reason"] == "caller_hangup"
    assert not logged(daemon, "sip_refer_sent") and not logged(daemon, "call_transfer_started")
    assert logged(daemon, "call_transfer_forbidden", call_id=call_id, extension="1002")


async def test_the_page_takes_a_call_and_says_how_it_went(
        tmp_path: Path, caller_audio: Path) -> None:
    """Headless Chromium: Take this call on a call the PBX refuses, then on one it accepts."""
    from tests.browser import open_browser
    from tests.integration.test_page import assert_clean_console, log_in, open_call

    alice = User("1001")
    config = transfer_config(tmp_path, [alice], caller_audio)
    sipp: list[SippResult] = []
    take_ready = "const b = document.getElementById('call-take'); return !b.hidden && !b.disabled"
    with trio.fail_after(240):
        async with run_daemon(config.path), open_browser(tmp_path, "transfer") as browser:
            await log_in(browser, config, alice)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(place_call, config, tmp_path, "transfer_reject", sipp,
                                           hold_ms=12000))
                call_id = await _active_call(browser)
                await open_call(browser, call_id)
                await browser.until(take_ready, what="the Take this call button")
                await browser.click("#call-take")
                refused = await browser.until(
                    "const s = document.getElementById('take-status');"
                    "return s.classList.contains('failed') && s.textContent",
                    timeout=60, what="the transfer's failure")
                await browser.until(take_ready, what="the button back after the failure")
                await browser.screenshot("transfer-failed")
                await browser.click("#call-take")  # the PBX declines the second try too
                await browser.until(
                    "return [...document.querySelectorAll('#transcript li.line.system .text')]"
                    ".filter((e) => e.textContent.startsWith('The transfer failed')).length === 2",
                    timeout=60, what="the second try's failure in the conversation")
            assert sipp[0].ok, sipp[0].errors
            await browser.click("#call-close")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(place_call, config, tmp_path, "transfer_accept", sipp)
                second = await _active_call(browser, other_than=call_id)
                await open_call(browser, second)
                await browser.until(take_ready, what="the Take this call button")
                # Every text the status shows, however briefly (NOTIFY 100 and 200 come at once).
                await browser.js(
                    "window.takeTexts = [];"
                    "const s = document.getElementById('take-status');"
                    "new MutationObserver(() => window.takeTexts.push(s.textContent))"
                    ".observe(s, {childList: true, characterData: true, subtree: true});")
                await browser.click("#call-take")
                ended = await browser.until(
                    "const s = document.getElementById('call-status').textContent;"
                    "return s.startsWith('Call ended') && s;", timeout=60, what="call ended")
                put_through = await browser.text("#take-status")
                shown = await browser.js("return window.takeTexts")
                await browser.screenshot("transfer-done")
            assert sipp[1].ok, sipp[1].errors
            await assert_clean_console(browser)
    assert refused == "The transfer failed (REFER refused: 603 Decline). The bot carries on."
    assert ended.endswith(": it was put through to the extension."), ended
    assert put_through == "The call was put through."
    # The PBX's reports on the way: the REFER accepted (202) and NOTIFY 100 Trying.
    asking, started, *middle, last = dict.fromkeys(shown)
    assert (asking, started, last) == ("Asking the phone system to put the call through…",
                                       "Putting the call through to 1001…",
                                       "The call was put through."), shown
    assert sorted(middle) == ["The phone system accepted the transfer to 1001…",
                              "The phone system is putting the call through to 1001…"], shown


async def _active_call(browser: Any, other_than: str | None = None) -> str:
    """The id of a call in the active list (not other_than)."""
    return str(await browser.until(
        "return [...document.querySelectorAll('#active-list li[data-call-id]')]"
        ".map((li) => li.dataset.callId).find((id) => id !== arguments[0])",
        other_than, timeout=30, what="a call in the active list"))
