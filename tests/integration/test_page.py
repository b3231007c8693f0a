"""The dashboard page in headless Chromium (Selenium) against the real daemon, sipp and the bot.

The callers are sipp playing a spoken question (festival's voice, not the bot's) as RTP; the
voice bot transcribes it and answers from a small knowledge folder, so the page shows real
transcripts. Screenshots go
to test-artifacts/ (gitignored).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.browser import Browser, open_browser
from tests.harness import (
    DaemonConfig,
    RunningDaemon,
    User,
    free_even_port_range,
    free_port,
    make_config,
    run_daemon,
)
from tests.sipp import run_sipp
from tests.voice_caller import speak

TIMEOUT = 150
QUESTION = "What are your opening hours on Saturday?"
GREETING = "Hello, how can I help?"
KNOWLEDGE = """\
# Bella Hair Salon

## Opening hours

We are open Monday to Friday from 9:00 to 18:00, and on Saturday from 10:00 to 14:00.
We are closed on Sundays and public holidays.

## Prices

A haircut costs 25 pounds. Colouring starts at 60 pounds.
"""
PHONE = (390, 844)

# What a test watches in the page, installed as a MutationObserver: every element added to the
# call lists and the transcript, whether a bot line was ever marked as speaking, whether
# interim text was ever shown, and whether the login form ever came back.
WATCH = """
const seen = window.__watch = {added: [], speaking: 0, interim: 0, login: 0};
const observer = new MutationObserver((records) => {
  for (const record of records) {
    for (const node of record.addedNodes) {
      if (node.nodeType === 1 && node.matches('li')) seen.added.push(node.outerHTML);
    }
  }
  if (document.querySelector('#transcript .line.bot.speaking')) seen.speaking += 1;
  const interim = document.getElementById('interim');
  if (!interim.hidden && interim.textContent.trim()) seen.interim += 1;
  if (!document.getElementById('login-view').hidden) seen.login += 1;
});
observer.observe(document.body, {childList: true, subtree: true, attributes: true,
                                 characterData: true});
"""

# The conversation as shown: (speaker, text, seq) of each caller and bot line.
SHOWN = """
return [...document.querySelectorAll('#transcript li.line.caller, #transcript li.line.bot')]
  .map((li) => [li.dataset.speaker, li.querySelector('.text').textContent, Number(li.dataset.seq)]);
"""


@pytest.fixture(scope="module")
def question(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The caller's question as PCMU: silence while the bot greets, the question, silence."""
    return speak(QUESTION, tmp_path_factory.mktemp("voice") / "question.ul", lead=3.0, tail=2.0)


def page_config(tmp_path: Path, users: list[User], *, auth: str = "",
                hub: str = "") -> DaemonConfig:
    """A daemon whose bot answers from the salon knowledge, with [hub] origins left empty."""
    config = make_config(tmp_path, users=users)
    config.rtp_ports = free_even_port_range(60)
    (tmp_path / "knowledge").mkdir()
    (tmp_path / "knowledge" / "salon.md").write_text(KNOWLEDGE)
    config.extra = f'[voicebot]\nknowledge = "knowledge"\ngreeting = "{GREETING}"\n'
    config.write()
    # No [hub] origins: the daemon admits the API's own origin, which serves the page.
    text = re.sub(r"(?m)^origins = .*\n", "", config.path.read_text())
    text = text.replace("[auth]\n", f"[auth]\n{auth}", 1).replace("[hub]\n", f"[hub]\n{hub}", 1)
    config.path.write_text(text)
    return config


async def place_call(config: DaemonConfig, directory: Path, question: Path, *,
                     extension: str = "1001", hold_ms: int = 16000) -> None:
    """sipp calls an extension, plays the question, stays up hold_ms, hangs up."""
    (directory / "question.ul").write_bytes(question.read_bytes())
    result = await run_sipp(config.sip_port, directory, scenario="voicebot_call",
                            service=extension,
                            extra=("-d", str(hold_ms), "-mp", str(free_even_port_range(4)[0])))
    assert result.ok, result.errors


async def log_in(browser: Browser, config: DaemonConfig, user: User) -> None:
    """Open the page and log in with the keyboard (Enter in the password field)."""
    await browser.get(config.api_url + "/")
    await browser.type("#extension", user.extension)
    await browser.type("#password", user.password)
    await browser.press("#password")
    await browser.until("return !document.getElementById('app-view').hidden",
                        what="the calls view after logging in")
    await browser.until("return document.getElementById('hub-status').dataset.state === 'live'",
                        what="the hub connection")


async def first_call(browser: Browser) -> str:
    """Wait for a call in the active list; return its id."""
    return str(await browser.until(
        "return document.querySelector('#active-list li[data-call-id]')?.dataset.callId",
        timeout=30, what="a call in the active list"))


async def open_call(browser: Browser, call_id: str) -> None:
    """Open a call from the active list with the keyboard."""
    await browser.press(f'#active-list button[data-call-id="{call_id}"]')
    await browser.until("return !document.getElementById('call-view').hidden",
                        what="the call view")


async def wait_for_answer(browser: Browser, *, live: bool = True) -> None:
    """Wait for the caller's final question and the bot's answer from the knowledge, while the
    call is still up (unless live is False)."""
    await browser.until(
        "return [...document.querySelectorAll('#transcript li.line.caller .text')]"
        ".some((e) => e.textContent.includes('opening hours'))",
        timeout=60, what="the caller's final line")
    await browser.until(
        "return [...document.querySelectorAll('#transcript li.line.bot .text')]"
        ".some((e) => e.textContent.includes('Monday to Friday'))",
        timeout=60, what="the bot's answer")
    if live:
        status = await browser.text("#call-status")
        assert status == "Live", f"the answer came only after the call: {status!r}"


async def wait_for_end(browser: Browser) -> str:
    """Wait for the call view to say the call ended; return what it says."""
    return str(await browser.until(
        "const s = document.getElementById('call-status').textContent;"
        "return s.startsWith('Call ended') && s;", timeout=60, what="call ended"))


async def rest_transcript(config: DaemonConfig, user: User, call_id: str) -> list[list[Any]]:
    """The conversation as the REST API has it: final caller lines and bot lines."""
    async with httpx.AsyncClient(base_url=config.api_url) as http:
        login = await http.post("/api/auth/login", json={
            "extension": user.extension, "password": user.password})
        token = login.json()["access_token"]
        answer = await http.get(f"/api/calls/{call_id}/transcript",
                                headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    return [[e["speaker"], e["text"], e["seq"]] for e in answer.json()["entries"] if e["final"]]


async def assert_conversation_complete(browser: Browser, config: DaemonConfig, user: User,
                                       call_id: str) -> list[list[Any]]:
    """The page shows each line once, in order, exactly as the store has them."""
    shown = await browser.js(SHOWN)
    seqs = [seq for _, _, seq in shown]
    assert len(seqs) == len(set(seqs)), f"duplicate lines: {shown}"
    assert seqs == sorted(seqs), f"lines out of order: {shown}"
    assert shown == await rest_transcript(config, user, call_id)
    return shown


def logged(daemon: RunningDaemon, name: str, **fields: Any) -> list[dict[str, Any]]:
    return [line for line in daemon.logs if line.get("event") == name
            and all(line.get(k) == v for k, v in fields.items())]


async def assert_clean_console(browser: Browser) -> None:
    """Nothing was blocked by the CSP and nothing failed in the page's script."""
    problems = [e["message"] for e in await browser.console()
                if e["level"] == "SEVERE" or "Content Security Policy" in e["message"]]
    assert not problems, problems


async def test_the_owner_follows_a_live_call_and_nobody_else_sees_it(
        tmp_path: Path, question: Path) -> None:
    """Log in; a call to 1001 appears live, its transcript and the bot's answer stream in,
    it ends with its reason and moves to the history; 1002, logged in alongside, sees none."""
    alice, bob = User("1001"), User("1002")
    config = page_config(tmp_path, [alice, bob])
    with trio.fail_after(TIMEOUT):
        async with run_daemon(config.path) as daemon, \
                open_browser(tmp_path, "alice") as page, open_browser(tmp_path, "bob") as other:
            await log_in(page, config, alice)
            await log_in(other, config, bob)
            assert await page.text("#who") == "Extension 1001 · acme"
            assert await page.js("return document.activeElement.id") == "active-title"
            await page.js(WATCH)
            await other.js(WATCH)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(place_call, config, tmp_path, question)
                call_id = await first_call(page)
                item = await page.text(f'#active-list li[data-call-id="{call_id}"]')
                assert item is not None
                assert "Bot Caller" in item and "5551234" in item and "AI-handled" in item, item
                assert "To 1001" in item
                assert await page.js("return document.title") == "(1) Calls — voicedashd"
                ticking = "return document.querySelector('#active-list time.elapsed').textContent"
                before = await page.js(ticking)
                await page.until(f"{ticking} !== arguments[0]", before, timeout=5,
                                 what="the call's time to tick")

                await open_call(page, call_id)
                assert await page.js("return document.activeElement.id") == "call-title"
                assert "Bot Caller" in (await page.text("#call-title") or "")
                log = await page.find("#transcript")
                assert (await page.run(log.get_attribute, "role"),
                        await page.run(log.get_attribute, "aria-live")) == ("log", "polite")
                await page.until("return document.getElementById('call-status').textContent"
                                 " === 'Live'", what="the live status")
                await page.until(
                    "return [...document.querySelectorAll('#transcript li.line.bot .text')]"
                    ".some((e) => e.textContent === arguments[0])", GREETING,
                    what="the bot's greeting")
                await wait_for_answer(page)
                await page.screenshot("page-call-view")

                await page.resize(*PHONE)
                await page.until("return window.innerWidth < 500", what="the phone width")
                assert await page.js(
                    "return document.documentElement.scrollWidth <= window.innerWidth"), \
                    "the page scrolls sideways at phone width"
                assert await page.js(
                    "return getComputedStyle(document.getElementById('calls-pane')).display"
                ) == "none"                       # the open call takes the whole phone screen
                await page.screenshot("page-call-view-phone")
                await page.resize(1200, 900)

                ended = await wait_for_end(page)
            assert "the caller hung up" in ended, ended
            await page.until("return !document.querySelector('#active-list li')",
                             what="the ended call to leave the active list")
            assert await page.js("return document.title") == "Calls — voicedashd"
            watched = await page.js("return window.__watch")
            assert watched["speaking"] > 0, "no bot line was ever marked as speaking"
            assert watched["interim"] > 0, "no interim text was ever shown"
            assert not await page.js("return document.querySelector('#transcript .speaking')")
            shown = await assert_conversation_complete(page, config, alice, call_id)
            assert shown[0] == ["bot", GREETING, shown[0][2]]

            history = await page.until(
                "return document.querySelector(`#history-list li[data-call-id='${arguments[0]}']`)"
                "?.textContent", call_id, what="the call in the history")
            assert "ended: the caller hung up" in history and "Bot Caller" in history, history
            await page.click("#call-close")
            await page.until("return document.getElementById('call-view').hidden")
            await page.press(f'#history-list button[data-call-id="{call_id}"]')
            await page.until("return document.querySelectorAll('#transcript li.line').length"
                             " === arguments[0]", len(shown), what="the stored transcript")
            assert await page.js(SHOWN) == shown
            assert "the caller hung up" in (await page.text("#call-status") or "")
            await assert_clean_console(page)

            # The other user was never shown anything, live or after the fact.
            assert (await other.js("return window.__watch"))["added"] == []
            assert await other.js("return !document.querySelector('#active-list li')")
            await other.click("#logout")
            await other.until("return !document.getElementById('login-view').hidden",
                              what="the login form after logging out")
            assert await other.text("#login-message") == "You have logged out."
            await log_in(other, config, bob)
            await other.until("return !document.getElementById('history-empty').hidden",
                              what="bob's empty history")
            assert await other.js("return document.querySelectorAll('li[data-call-id]').length"
                                  ) == 0
            await assert_clean_console(other)
            assert logged(daemon, "ws_call_subscribed", call_id=call_id, extension="1001")
            assert not logged(daemon, "ws_call_subscribed", extension="1002")


async def test_login_errors_are_clear(tmp_path: Path) -> None:
    """Wrong password: a clear error. Throttled: "try again in N s", counting down. The page
    is keyboard-usable, labelled, strict about its sources and fits a phone."""
    alice = User("1001")
    config = make_config(tmp_path, users=[alice])
    config.write()
    with trio.fail_after(TIMEOUT):
        async with run_daemon(config.path), httpx.AsyncClient(base_url=config.api_url) as http, \
                open_browser(tmp_path, "login", width=PHONE[0], height=PHONE[1]) as page:
            index = await http.get("/")
            assert index.status_code == 200
            hub = f"ws://127.0.0.1:{config.hub_port}"
            assert index.headers["content-security-policy"] == (
                "default-src 'self'; script-src 'self'; style-src 'self'; "
                f"connect-src 'self' {hub}; img-src 'self' data:; media-src 'self' blob:; "
                "object-src 'none'; "
                "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
            assert f'<meta name="voicedash-hub" content="{hub}/ws">' in index.text
            assert "<script>" not in index.text and "style=" not in index.text
            assert not re.search(r"(src|href)=\"(https?:)?//", index.text)  # nothing elsewhere
            for asset in ("app.js", "style.css", "icon.svg"):
                answer = await http.get(f"/assets/{asset}")
                assert answer.status_code == 200, asset
                again = await http.get(f"/assets/{asset}",
                                       headers={"If-None-Match": answer.headers["etag"]})
                assert again.status_code == 304
            assert (await http.get("/assets/nope.js")).status_code == 404
            assert "/" not in (await http.get("/openapi.json")).json()["paths"]

            await page.get(config.api_url + "/")
            assert await page.js("return document.activeElement.id") == "extension"
            for field in ("extension", "password", "tenant"):
                label = await page.js(
                    "return document.querySelector(`label[for='${arguments[0]}']`)?.textContent",
                    field)
                assert label, f"{field} has no label"
            assert await page.js(
                "return document.documentElement.scrollWidth <= window.innerWidth")
            await page.screenshot("page-login-phone")

            await page.type("#extension", "1001")
            await page.type("#password", "not the password")
            await page.press("#password")
            error = await page.until(
                "const e = document.getElementById('login-error');"
                "return !e.hidden && e.textContent", what="the wrong-password error")
            assert error.startswith("Wrong extension or password."), error
            assert await page.js("return document.activeElement.id") == "password"
            assert await page.js(
                "return document.getElementById('login-error').getAttribute('role')") == "alert"

            # Fail until the lockout is long enough for the browser to hit it.
            failures = 1
            while failures < 8:
                answer = await http.post("/api/auth/login", json={
                    "extension": "1001", "password": "still wrong"})
                if answer.status_code == 429:
                    await trio.sleep(int(answer.headers["retry-after"]))
                else:
                    assert answer.status_code == 401
                    failures += 1
            await page.type("#password", "wrong again")
            await page.press("#password")
            throttled = await page.until(
                "const t = document.getElementById('login-error').textContent;"
                "return t.startsWith('Too many') && t", what="the throttling error")
            match = re.fullmatch(r"Too many failed attempts\. Try again in (\d+) s\.", throttled)
            assert match, throttled
            seconds = int(match.group(1))
            assert 1 <= seconds <= 8
            if seconds > 1:
                await page.until(
                    "return document.getElementById('login-error').textContent !== arguments[0]",
                    throttled, timeout=3, what="the countdown")
            assert await page.js("return document.getElementById('app-view').hidden")
            await assert_csp_clean(page)


async def assert_csp_clean(browser: Browser) -> None:
    """Nothing was blocked by the CSP (failed logins do log their 401/429 responses)."""
    blocked = [e["message"] for e in await browser.console()
               if "Content Security Policy" in e["message"]]
    assert not blocked, blocked


async def test_expiring_tokens_are_refreshed_unnoticed_and_the_transcript_resumes(
        tmp_path: Path, question: Path) -> None:
    """Access tokens last 4 s: the page refreshes them, the hub closes each connection when
    its token lapses (4401), and the page reconnects and resumes the call from its last seq:
    every line once, none missing, no login form."""
    alice = User("1001")
    config = page_config(tmp_path, [alice], auth='access_token_ttl = "4s"\n')
    with trio.fail_after(TIMEOUT):
        async with run_daemon(config.path) as daemon, \
                open_browser(tmp_path, "alice") as page:
            await log_in(page, config, alice)
            await page.js(WATCH)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(place_call, hold_ms=22000), config, tmp_path,
                                   question)
                call_id = await first_call(page)
                await open_call(page, call_id)
                await wait_for_answer(page)
                await wait_for_end(page)
            assert len(logged(daemon, "login_succeeded", extension="1001")) == 1
            shown = await assert_conversation_complete(page, config, alice, call_id)
            assert len(shown) >= 3

            lapsed = logged(daemon, "ws_closed", by="server", code=4401, extension="1001")
            assert lapsed, "the hub never closed a connection for a lapsed token"
            resumed = [line for line in logged(daemon, "ws_call_subscribed", call_id=call_id)
                       if line["since_seq"] > 0]
            assert resumed, "the call was never resumed with since_seq"
            assert len(logged(daemon, "token_refreshed", extension="1001")) >= 3

            # Long after the first token lapsed, the API still answers the page.
            await page.click("#call-close")
            # The history list is fetched again after call_ended: wait for the ended call in it.
            entry = f'#history-list button[data-call-id="{call_id}"]'
            await page.until("return document.querySelector(arguments[0]) !== null", entry,
                             what="the ended call in the history list")
            await page.press(entry)
            await page.until("return document.querySelectorAll('#transcript li.line.caller,"
                             " #transcript li.line.bot').length === arguments[0]", len(shown),
                             what="the stored transcript")
            watched = await page.js("return window.__watch")
            assert watched["login"] == 0, "the login form came back"
            assert await page.js("return document.getElementById('login-view').hidden")


class HubRelay:
    """A TCP relay in front of the hub that a test can cut like a network failure."""

    def __init__(self) -> None:
        self.hub_port = 0
        self.port = free_port()
        self.up = True
        self.connections = 0
        self._scopes: set[trio.CancelScope] = set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                    ) -> None:
        """Accept and relay connections until cancelled."""
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        task_status.started()
        await trio.serve_listeners(self._relay, listeners)

    def cut(self) -> None:
        """Drop every relayed connection (no close frame) and refuse new ones."""
        self.up = False
        for scope in self._scopes:
            scope.cancel()

    def restore(self) -> None:
        """Relay new connections again."""
        self.up = True

    async def _relay(self, client: trio.SocketStream) -> None:
        async with client:
            if not self.up:
                return
            with trio.CancelScope() as scope:
                self._scopes.add(scope)
                try:
                    upstream = await trio.open_tcp_stream("127.0.0.1", self.hub_port)
                    self.connections += 1
                    async with upstream, trio.open_nursery() as nursery:
                        nursery.start_soon(_pump, client, upstream, nursery.cancel_scope)
                        nursery.start_soon(_pump, upstream, client, nursery.cancel_scope)
                finally:
                    self._scopes.discard(scope)


async def _pump(source: trio.SocketStream, sink: trio.SocketStream,
                both: trio.CancelScope) -> None:
    try:
        async for data in source:
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    both.cancel()


@asynccontextmanager
async def relay_running(relay: HubRelay) -> AsyncIterator[HubRelay]:
    """Run the relay for the duration of the block."""
    async with trio.open_nursery() as nursery:
        await nursery.start(relay.serve)
        yield relay
        nursery.cancel_scope.cancel()


async def test_a_dropped_hub_connection_is_resumed_without_gaps_or_duplicates(
        tmp_path: Path, question: Path) -> None:
    """The network to the hub fails twice: before the call (the call still shows up once the
    page is back) and in the middle of it (the transcript continues, nothing lost or doubled).
    The page reaches the hub through [hub] public_url, which the CSP names."""
    alice = User("1001")
    relay = HubRelay()
    config = page_config(tmp_path, [alice],
                         hub=f'public_url = "ws://127.0.0.1:{relay.port}/ws"\n')
    relay.hub_port = config.hub_port
    async with relay_running(relay):
        with trio.fail_after(TIMEOUT):
            async with run_daemon(config.path) as daemon, \
                    open_browser(tmp_path, "alice") as page:
                async with httpx.AsyncClient(base_url=config.api_url) as http:
                    csp = (await http.get("/")).headers["content-security-policy"]
                assert f"connect-src 'self' ws://127.0.0.1:{relay.port};" in csp
                await log_in(page, config, alice)
                await page.js(WATCH)

                relay.cut()
                await page.until("return document.getElementById('hub-status').textContent"
                                 " === 'Reconnecting…'", what="the reconnecting status")
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(partial(place_call, hold_ms=22000), config, tmp_path,
                                       question)
                    await daemon.wait_for_log("call_started", timeout=30)
                    relay.restore()
                    call_id = await first_call(page)   # missed live, found on reconnecting
                    await open_call(page, call_id)
                    await page.until(
                        "return document.querySelector('#transcript li.line.bot')",
                        what="the greeting")
                    relay.cut()
                    await trio.sleep(3)                # the bot and the caller talk on
                    relay.restore()
                    await page.until("return document.getElementById('hub-status')"
                                     ".dataset.state === 'live'", what="the hub again")
                    await wait_for_answer(page)
                    await wait_for_end(page)
                await assert_conversation_complete(page, config, alice, call_id)
                resumed = [line for line in logged(daemon, "ws_call_subscribed",
                                                   call_id=call_id) if line["since_seq"] > 0]
                assert resumed, "the call was never resumed with since_seq"
                assert any(line["backlog"] > 0 for line in resumed), resumed  # missed events
                assert relay.connections >= 3
                assert (await page.js("return window.__watch"))["login"] == 0

