"""Unread and handled in the dashboard page (headless Chromium): a call over sipp is new in
the title, the counts and the lists; opening it drops the count; Mark handled moves it to the
Handled filter; Reopen brings it back; another browser of the same user learns on focus."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from tests.browser import Browser, open_browser
from tests.harness import User, run_daemon
from tests.integration.test_calls_api import token_for
from tests.integration.test_page import (
    TIMEOUT,
    assert_clean_console,
    first_call,
    log_in,
    page_config,
)
from tests.sipp import run_sipp

COUNTS = """return [document.getElementById('inbox-new').textContent,
                    document.getElementById('inbox-open').textContent, document.title];"""
ITEM = "return document.querySelector(`${arguments[0]} button[data-call-id='${arguments[1]}']`)"
HISTORY = "return [...document.querySelectorAll('#history-list li')].map((li) => li.dataset.callId)"


async def _counts(page: Browser, new: int, open_: int, what: str) -> None:
    title = f"({new}) Calls — voicedashd" if new else "Calls — voicedashd"
    wanted = [str(new), str(open_), title]
    await page.until(f"return {COUNTS[len('return '):-1]}.join('|') === arguments[0]",
                     "|".join(wanted), what=f"{what}: counts {wanted}")


async def _item(page: Browser, where: str, call_id: str) -> dict[str, str]:
    """A call's entry in a list: its inbox state and its text."""
    found = await page.until(f"const b = (() => {{ {ITEM} }})();"
                             "return b && {state: b.dataset.inbox, text: b.textContent};",
                             where, call_id, what=f"the call in {where}")
    return dict(found)


async def _filter(page: Browser, name: str, calls: list[str]) -> None:
    await page.click(f'#inbox-filter button[data-filter="{name}"]')
    pressed = await page.js("return [...document.querySelectorAll('#inbox-filter button')]"
                            ".filter((b) => b.getAttribute('aria-pressed') === 'true')"
                            ".map((b) => b.textContent)")
    assert pressed == [name.capitalize() if name else "All"], pressed
    await page.until(f"return {HISTORY[len('return '):]}.join() === arguments[0]"
                     " && !document.getElementById('history-empty').hidden === !arguments[0]",
                     ",".join(calls), what=f"the {name or 'all'} filter to show {calls}")


async def _rest_state(http: httpx.AsyncClient, token: str, call_id: str) -> str:
    answer = await http.get(f"/api/calls/{call_id}", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["inbox"])


async def test_unread_counts_opening_and_mark_handled(tmp_path: Path) -> None:
    alice = User("1001")
    config = page_config(tmp_path, [alice])
    with trio.fail_after(TIMEOUT):
        async with run_daemon(config.path) as daemon, \
                open_browser(tmp_path, "alice") as page, \
                open_browser(tmp_path, "alice-other") as other, \
                httpx.AsyncClient(base_url=config.api_url) as http:
            await log_in(page, config, alice)
            await log_in(other, config, alice)
            await _counts(page, 0, 0, "after logging in")
            result: list[bool] = []

            async def call() -> None:
                done = await run_sipp(config.sip_port, tmp_path, scenario="long_call",
                                      service="1001")
                result.append(done.ok)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call)
                call_id = await first_call(page)
                await _counts(page, 1, 0, "a call came in")
                live = await _item(page, "#active-list", call_id)
                assert live["state"] == "new" and "New" in live["text"], live
                await _counts(other, 1, 0, "the other browser, a call came in")
            assert result == [True]
            await daemon.wait_for_log("call_ended", call_id=call_id)
            past = await _item(page, "#history-list", call_id)
            assert past["state"] == "new" and "New" in past["text"], past
            await page.screenshot("page-inbox-new")

            # Opening the call marks it opened: the count drops, the badge goes.
            await page.press(f'#history-list button[data-call-id="{call_id}"]')
            await _counts(page, 0, 1, "the call was opened")
            assert (await _item(page, "#history-list", call_id))["state"] == "open"
            token = await token_for(http, alice)
            assert await _rest_state(http, token, call_id) == "open"
            assert await page.js("return document.getElementById('call-reopen').hidden")

            await page.click("#call-handled")
            await page.until("return document.getElementById('inbox-status').textContent"
                             " === 'Marked handled.'", what="the handled status")
            await _counts(page, 0, 0, "the call was handled")
            assert await page.js("return document.getElementById('call-handled').hidden"
                                 " && !document.getElementById('call-reopen').hidden")
            assert await page.js("return document.activeElement.id") == "call-reopen"
            handled = await _item(page, "#history-list", call_id)
            assert handled["state"] == "handled" and "Handled" in handled["text"], handled
            assert await _rest_state(http, token, call_id) == "handled"
            await page.screenshot("page-inbox-handled")

            # Another browser of the same user learns of it when it gets the focus.
            await other.js("window.dispatchEvent(new Event('focus'))")
            await _counts(other, 0, 0, "the other browser, after the focus")
            await other.until(f"const b = (() => {{ {ITEM} }})(); return b?.dataset.inbox"
                              " === 'handled'", "#history-list", call_id,
                              what="the other browser's history entry to be handled")

            await page.click("#call-close")
            await _filter(page, "handled", [call_id])
            await _filter(page, "new", [])
            assert await page.text("#history-empty") == "No new calls."
            await _filter(page, "open", [])

            # Reopen: open again, and the Open filter has it.
            await _filter(page, "", [call_id])
            await page.click(f'#history-list button[data-call-id="{call_id}"]')
            await page.click("#call-reopen")
            await page.until("return document.getElementById('inbox-status').textContent"
                             " === 'Reopened.'", what="the reopened status")
            await _counts(page, 0, 1, "the call was reopened")
            assert await _rest_state(http, token, call_id) == "open"
            await page.click("#call-close")
            await _filter(page, "open", [call_id])
            await assert_clean_console(page)
            await assert_clean_console(other)
