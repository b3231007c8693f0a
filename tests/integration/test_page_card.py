"""The message card in the dashboard page (headless Chromium) for a spoken message over sipp:
at the top of the call when it ends, its reason under the call in the history, and the same
after a reload (from the REST API)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import trio

from tests.browser import open_browser
from tests.harness import User, run_daemon
from tests.integration.test_page import (
    TIMEOUT,
    assert_clean_console,
    first_call,
    log_in,
    open_call,
    page_config,
    place_call,
    wait_for_end,
)
from tests.voice_caller import speak

HOLD_MS = 12000    # the message, then the bot's fallback; then the caller hangs up
MESSAGE = "Hi, this is Maria, please call me back on five five five, one two three four."

CARD = """
const card = document.getElementById('call-card');
return !card.hidden && {
  name: document.getElementById('card-name').textContent,
  callback: document.getElementById('card-callback').textContent,
  reason: document.getElementById('card-reason').textContent,
  handled: document.getElementById('card-handled').textContent,
  first: card.compareDocumentPosition(document.getElementById('transcript'))
         === Node.DOCUMENT_POSITION_FOLLOWING,
  tel: card.querySelector('a[href^="tel:"]')?.getAttribute('href'),
};
"""


async def test_the_owner_sees_the_message_card(tmp_path: Path) -> None:
    alice = User("1001")
    config = page_config(tmp_path, [alice])
    message = speak(MESSAGE, tmp_path / "message.ul", lead=3.0, tail=2.0)
    with trio.fail_after(TIMEOUT):
        async with run_daemon(config.path), open_browser(tmp_path, "alice") as page:
            await log_in(page, config, alice)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(place_call, config, tmp_path, message,
                                           hold_ms=HOLD_MS))
                call_id = await first_call(page)
                await open_call(page, call_id)
                assert await page.js("return document.getElementById('call-card').hidden")
                await wait_for_end(page)
            card = await page.until(CARD, timeout=20, what="the message card")
            assert card["name"] == "Maria", card
            assert card["callback"] == "Asked to be called back · 5551234", card
            assert card["tel"] == "tel:5551234" and card["first"], card
            assert card["handled"] == "The assistant took a message.", card
            assert card["reason"], card
            await page.screenshot("page-message-card")
            reason = await page.until(
                "return document.querySelector("
                "`#history-list li[data-call-id='${arguments[0]}'] .reason`)?.textContent",
                call_id, what="the reason line in the history")
            assert reason == card["reason"]

            # After a reload the card comes from GET /api/calls: the same.
            await log_in(page, config, alice)
            await page.until("return document.querySelector("
                             "`#history-list li[data-call-id='${arguments[0]}'] .reason`)",
                             call_id, what="the history after the reload")
            await page.press(f'#history-list button[data-call-id="{call_id}"]')
            assert await page.until(CARD, what="the stored card") == card
            await assert_clean_console(page)
