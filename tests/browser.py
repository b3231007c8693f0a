"""Headless Debian Chromium driven by Selenium, usable from Trio tests.

Every WebDriver call blocks, so each runs in a worker thread: the Trio loop keeps reading the
daemon's log pipe meanwhile. No browser is downloaded: scripts/test installs the Debian
packages chromium and chromium-driver.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import trio
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-quic", "--no-first-run", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage",
                 # A test may start a recording's playback from a script, not a click.
                 "--autoplay-policy=no-user-gesture-required")
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
POLL = 0.1

T = TypeVar("T")


class Browser:
    """One Chromium session with its own profile; async wrappers around the WebDriver."""

    def __init__(self, driver: webdriver.Chrome, name: str) -> None:
        self.driver = driver
        self.name = name

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Call a blocking WebDriver function in a worker thread."""
        return await trio.to_thread.run_sync(fn, *args)

    async def get(self, url: str) -> None:
        """Load a URL and wait for it to load."""
        await self.run(self.driver.get, url)

    async def js(self, script: str, *args: Any) -> Any:
        """Run a script in the page (its `return` value comes back)."""
        return await self.run(self.driver.execute_script, script, *args)

    async def find(self, css: str) -> WebElement:
        """The first element matching a CSS selector."""
        return await self.run(self.driver.find_element, By.CSS_SELECTOR, css)

    async def type(self, css: str, text: str, *, clear: bool = True) -> None:
        """Type into a field, as a person would."""
        element = await self.find(css)
        if clear:
            await self.run(element.clear)
        await self.run(element.send_keys, text)

    async def press(self, css: str, key: str = Keys.ENTER) -> None:
        """Press a key with the focus on an element."""
        element = await self.find(css)
        await self.run(element.send_keys, key)

    async def click(self, css: str) -> None:
        """Click an element."""
        element = await self.find(css)
        await self.run(element.click)

    async def text(self, css: str) -> str | None:
        """The text of the first element matching css, or None if there is none."""
        return await self.js("const e = document.querySelector(arguments[0]);"
                             "return e ? e.textContent : null;", css)

    async def until(self, script: str, *args: Any, timeout: float = 20, what: str = "") -> Any:
        """Poll a script until it returns something truthy; return that, or fail with a shot."""
        with trio.move_on_after(timeout):
            while True:
                value = await self.js(script, *args)
                if value:
                    return value
                await trio.sleep(POLL)
        shot = await self.screenshot(f"timeout-{self.name}")
        body = await self.js("return document.body.innerText")
        raise AssertionError(f"{self.name}: timed out after {timeout}s waiting for "
                             f"{what or script}\n(screenshot {shot})\npage text:\n{body}")

    async def screenshot(self, name: str) -> Path:
        """Save a PNG under test-artifacts/ and return its path."""
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        await self.run(self.driver.save_screenshot, str(path))
        return path

    async def console(self) -> list[dict[str, Any]]:
        """The browser console entries since the last call."""
        return await self.run(self.driver.get_log, "browser")

    async def cdp(self, command: str, params: dict[str, Any]) -> Any:
        """Send a Chrome DevTools Protocol command."""
        return await self.run(self.driver.execute_cdp_cmd, command, params)

    async def resize(self, width: int, height: int) -> None:
        """Set the window size."""
        await self.run(self.driver.set_window_size, width, height)


def _start(profile: Path, width: int, height: int) -> webdriver.Chrome:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        raise AssertionError("chromium and chromedriver are needed: install the Debian packages "
                             "chromium and chromium-driver (scripts/test does)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (*CHROMIUM_ARGS, f"--user-data-dir={profile}",
                     f"--window-size={width},{height}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@asynccontextmanager
async def open_browser(directory: Path, name: str, *, width: int = 1200,
                       height: int = 900) -> AsyncIterator[Browser]:
    """Start a fresh Chromium (new profile under directory); quit it on exit."""
    profile = directory / f"chromium-{name}"
    profile.mkdir()
    driver = await trio.to_thread.run_sync(_start, profile, width, height)
    try:
        yield Browser(driver, name)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(driver.quit)
