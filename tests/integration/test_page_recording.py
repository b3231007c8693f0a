"""A recorded call's playback in the dashboard page (headless Chromium): the owner opens the
ended call, the audio element loads the recording from a Blob (the token never in a URL),
its length is the call's, and it plays."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import httpx
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

HOLD_MS = 9000
NOTICE = "This call is recorded."

LOADED = """
const audio = document.getElementById('recording-audio');
return !document.getElementById('call-recording').hidden && audio.readyState >= 1
  && Number.isFinite(audio.duration) && {src: audio.getAttribute('src'),
                                         duration: audio.duration};
"""


async def test_the_owner_plays_the_recording_of_an_ended_call(tmp_path: Path) -> None:
    alice = User("1001")
    config = page_config(tmp_path, [alice])
    config.path.write_text(config.path.read_text().replace(
        'name = "acme"\n', 'name = "acme"\nrecord = true\n', 1))
    message = speak("Hello, please call me back.", tmp_path / "message.ul", lead=1.0, tail=1.0)
    with trio.fail_after(TIMEOUT):
        async with run_daemon(config.path) as daemon, open_browser(tmp_path, "alice") as page:
            await log_in(page, config, alice)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(place_call, config, tmp_path, message,
                                           hold_ms=HOLD_MS))
                call_id = await first_call(page)
                await open_call(page, call_id)
                assert await page.js("return document.getElementById('call-recording').hidden")
                await wait_for_end(page)
            ended = await daemon.wait_for_log("call_ended", call_id=call_id)
            # The page saw the bot's notice first, then the recording once the call ended.
            first_bot = await page.until(
                "return document.querySelector('#transcript li.line.bot .text')?.textContent",
                what="the bot's first line")
            assert first_bot == NOTICE
            loaded = await page.until(LOADED, timeout=20, what="the recording in the player")
            assert loaded["src"].startswith("blob:"), loaded
            assert abs(loaded["duration"] - ended["duration"]) < 0.5, (loaded, ended)
            await page.js("document.getElementById('recording-audio').play()")
            await page.until("return document.getElementById('recording-audio').currentTime"
                             " > 1.0", timeout=10, what="the recording playing")
            await page.screenshot("page-recording")
            fetched = [e for e in daemon.events("call_recording_fetched")
                       if e["call_id"] == call_id]
            assert [(e["extension"], e["status"]) for e in fetched] == [("1001", 200)]
            await assert_clean_console(page)

            # Closing the call lets the audio go; a call reopened from the history plays again.
            await page.press("#call-close")
            assert await page.js("return document.getElementById('call-recording').hidden"
                                 " && !document.getElementById('recording-audio')"
                                 ".hasAttribute('src')")
            await page.until("return document.querySelector("
                             "`#history-list button[data-call-id='${arguments[0]}']`)",
                             call_id, what="the call in the history")
            await page.press(f'#history-list button[data-call-id="{call_id}"]')
            again = await page.until(LOADED, timeout=20, what="the recording from the history")
            assert again["src"].startswith("blob:") and again["src"] != loaded["src"]
            # Without the token (what an <audio src> would send) the file is refused.
            async with httpx.AsyncClient(base_url=config.api_url) as http:
                assert (await http.get(f"/api/calls/{call_id}/recording")).status_code == 401
