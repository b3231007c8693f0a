"""Browser notifications in the dashboard page (headless Chromium) for sipp calls: asked for
only from a click, a notice when a call starts and its message card when it ends, a click on
it opens the call; nothing when turned off, nothing for another user's call, and no card
notice for the call the person is watching.

A spy installed before the page's own script (CDP Page.addScriptToEvaluateOnNewDocument)
records each Notification the page makes while still calling the real constructor, counts
permission requests and the oscillators the chime starts. The permission is granted through
the driver (CDP Browser.grantPermissions), as a person would grant it in the prompt.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.browser import Browser, open_browser
from tests.harness import DaemonConfig, User, run_daemon
from tests.integration.test_page import (
    PHONE,
    TIMEOUT,
    assert_clean_console,
    log_in,
    page_config,
)
from tests.integration.test_page import place_call as place_sipp_call
from tests.voice_caller import speak

MESSAGE = "Hi, this is Maria, please call me back on five five five, one two three four."
MESSAGE_HOLD_MS = 12000     # the message, the bot's fallback, then the caller hangs up
SHORT_HOLD_MS = 1500        # a call that says nothing
CALLER = "Bot Caller"       # the display name in tests/integration/scenarios/voicebot_call.xml
STORAGE_KEY = "voicedashd.notifications"

SPY = """
(() => {
  const spy = window.__notify = {shown: [], objects: [], asked: 0, tones: 0};
  const Real = window.Notification;
  if (typeof Real === 'function') {
    class Spy extends Real {
      constructor(title, options = {}) {
        super(title, options);
        spy.objects.push(this);
        spy.shown.push({title, body: options.body ?? '', tag: options.tag ?? '', closed: false,
                        at: performance.now()});
      }
      close() {
        spy.shown[spy.objects.indexOf(this)].closed = true;
        super.close();
      }
    }
    Spy.requestPermission = (...args) => {
      spy.asked += 1;
      return Real.requestPermission(...args);
    };
    window.Notification = Spy;
  }
  const oscillator = window.AudioContext?.prototype.createOscillator;
  if (oscillator) {
    window.AudioContext.prototype.createOscillator = function (...args) {
      spy.tones += 1;
      return oscillator.apply(this, args);
    };
  }
})();
"""

SHOWN = "return window.__notify.shown;"

PAGE_STATE = f"""
return {{
  permission: Notification.permission,
  asked: window.__notify.asked,
  toggle: document.getElementById('notify-toggle').dataset.state,
  label: document.getElementById('notify-toggle').textContent,
  soundShown: !document.getElementById('notify-sound-box').hidden,
  sound: document.getElementById('notify-sound').checked,
  stored: JSON.parse(localStorage.getItem('{STORAGE_KEY}')),
}};
"""


async def owner_token(http: httpx.AsyncClient, user: User) -> str:
    """An access token for user."""
    login = await http.post("/api/auth/login", json={"extension": user.extension,
                                                     "password": user.password})
    assert login.status_code == 200, login.text
    return str(login.json()["access_token"])


async def summarised_call(config: DaemonConfig, user: User, *, besides: set[str]) -> dict[str, Any]:
    """Wait for a call of user's (not in besides) that has its message card; return it."""
    async with httpx.AsyncClient(base_url=config.api_url) as http:
        headers = {"Authorization": f"Bearer {await owner_token(http, user)}"}
        while True:
            answer = await http.get("/api/calls", headers=headers)
            assert answer.status_code == 200, answer.text
            for call in answer.json()["calls"]:
                if call["call_id"] not in besides and call["summary"]:
                    return dict(call)
            await trio.sleep(0.2)


async def shown_for(page: Browser, call_id: str, title: str) -> dict[str, Any]:
    """Wait for the page's notification titled title about call_id; return it."""
    return dict(await page.until(
        "return window.__notify.shown"
        ".find((n) => n.tag === arguments[0] && n.title === arguments[1])",
        call_id, title, timeout=60, what=f"the notification {title!r} for {call_id}"))


async def test_notifications_for_the_owners_calls(tmp_path: Path) -> None:
    alice, bob = User("1001"), User("1002")
    config = page_config(tmp_path, [alice, bob])
    message = speak(MESSAGE, tmp_path / "message.ul", lead=3.0, tail=2.0)
    silence = tmp_path / "silence.ul"
    silence.write_bytes(b"\xff" * 8000)        # one second of PCMU silence

    async def place_call(name: str, audio: Path, extension: str, hold_ms: int) -> None:
        directory = tmp_path / name
        directory.mkdir()
        await place_sipp_call(config, directory, audio, extension=extension, hold_ms=hold_ms)

    with trio.fail_after(TIMEOUT + 60):
        async with run_daemon(config.path), open_browser(tmp_path, "alice") as page:
            await page.cdp("Page.addScriptToEvaluateOnNewDocument", {"source": SPY})
            await log_in(page, config, alice)

            # Loading the page and logging in asks for nothing.
            state = await page.js(PAGE_STATE)
            assert state == {"permission": "default", "asked": 0, "toggle": "off",
                             "label": "Turn on notifications", "soundShown": False,
                             "sound": False, "stored": None}, state
            assert await page.js("return navigator.permissions.query({name: 'notifications'})"
                                 ".then((status) => status.state)") == "prompt"

            # The person allows them in the browser's prompt (granted through the driver) after
            # clicking the button; the click is what asks.
            await page.cdp("Browser.grantPermissions", {"origin": config.api_url,
                                                        "permissions": ["notifications"]})
            assert await page.js("return window.__notify.asked") == 0
            await page.click("#notify-toggle")
            await page.until("return document.getElementById('notify-toggle').dataset.state"
                             " === 'on'", what="notifications on")
            state = await page.js(PAGE_STATE)
            assert state == {"permission": "granted", "asked": 1, "toggle": "on",
                             "label": "Turn off notifications", "soundShown": True,
                             "sound": False, "stored": {"on": True, "sound": False}}, state
            await page.click("#notify-sound")
            assert (await page.js(PAGE_STATE))["stored"] == {"on": True, "sound": True}

            # The choice is remembered by this browser: on again after a reload, unasked.
            await log_in(page, config, alice)
            state = await page.js(PAGE_STATE)
            assert (state["toggle"], state["asked"], state["sound"]) == ("on", 0, True), state

            # Bob's call, with its card made, is never shown to Alice: were it, its notices
            # would reach her connection before anything about her own later call.
            await place_call("bob", silence, "1002", SHORT_HOLD_MS)
            bobs = await summarised_call(config, bob, besides=set())

            # Alice's call: "Call from …" when it starts, the message card when it ends.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(place_call, "message", message, "1001",
                                           MESSAGE_HOLD_MS))
                call_id = str(await page.until(
                    "return document.querySelector('#active-list li[data-call-id]')"
                    "?.dataset.callId", timeout=30, what="the call in the active list"))
                started = await shown_for(page, call_id, f"Call from {CALLER}")
                assert started["body"] == "to extension 1001", started
            card = (await summarised_call(config, alice, besides={bobs["call_id"]}))["summary"]
            summary = await shown_for(page, call_id, "Message from Maria")
            assert summary["body"] == f"{card['reason']}\nCall back: 5551234", summary
            assert card["reason"] and card["callback_number"] == "5551234", card
            shown = await page.js(SHOWN)
            assert [(n["tag"], n["title"]) for n in shown] == [
                (call_id, f"Call from {CALLER}"), (call_id, "Message from Maria")], shown
            assert await page.js("return window.__notify.tones") > 0, "no chime was played"

            # Clicking the notification opens that call (with its card) and closes it.
            assert await page.js("return document.getElementById('call-view').hidden")
            await page.js("window.__notify.objects[1].dispatchEvent(new Event('click'))")
            await page.until("return !document.getElementById('call-view').hidden"
                             " && !document.getElementById('call-card').hidden",
                             what="the call opened from the notification")
            assert await page.text("#card-reason") == card["reason"]
            assert await page.js(
                "return document.querySelector('#history-list button[aria-current=\"true\"]')"
                "?.dataset.callId") == call_id
            assert (await page.js(SHOWN))[1]["closed"]
            await page.click("#call-close")

            # Turned off: a call notifies nothing (its notices reach the page before the next
            # call's, which come once they are on again).
            await page.click("#notify-toggle")
            state = await page.js(PAGE_STATE)
            assert (state["toggle"], state["label"], state["stored"]) == (
                "off", "Turn on notifications", {"on": False, "sound": True}), state
            assert not state["soundShown"], state
            await place_call("off", silence, "1001", SHORT_HOLD_MS)
            quiet = await summarised_call(config, alice, besides={bobs["call_id"], call_id})
            await page.click("#notify-toggle")
            assert (await page.js(PAGE_STATE))["toggle"] == "on"
            async with trio.open_nursery() as nursery:
                nursery.start_soon(place_call, "on-again", silence, "1001", SHORT_HOLD_MS)
                again = str(await page.until(
                    "return [...document.querySelectorAll('#active-list li[data-call-id]')]"
                    ".map((li) => li.dataset.callId).find((id) => id !== arguments[0])",
                    quiet["call_id"], timeout=30, what="the last call in the active list"))
                await shown_for(page, again, f"Call from {CALLER}")
                await page.screenshot("page-notifications-on")
                # Watching this very call (page in front, focused): its card needs no notice.
                assert await page.js("return document.visibilityState === 'visible'"
                                     " && document.hasFocus()")
                await page.press(f'#active-list button[data-call-id="{again}"]')
                await page.until("return !document.getElementById('call-card').hidden",
                                 timeout=30, what="the card of the call being watched")
            shown = await page.js(SHOWN)
            assert [(n["tag"], n["title"]) for n in shown[2:]] == [
                (again, f"Call from {CALLER}")], shown
            tags = {n["tag"] for n in shown}
            assert quiet["call_id"] not in tags and bobs["call_id"] not in tags, tags

            # Blocked later in the browser's site settings: the page says so, without a reload.
            await page.cdp("Browser.setPermission", {
                "origin": config.api_url, "permission": {"name": "notifications"},
                "setting": "denied"})
            await page.until("return document.getElementById('notify-toggle').dataset.state"
                             " === 'blocked'", what="notifications shown as blocked")
            assert await page.js("return document.getElementById('notify-toggle').disabled")
            assert "blocked by the browser" in str(await page.text("#notify-state"))
            await page.resize(*PHONE)
            await page.screenshot("page-notifications-blocked-phone")
            await assert_clean_console(page)
