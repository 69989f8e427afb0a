"""Debian's Chromium driven by Playwright for the web tests: never a downloaded browser."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from app.config import Config
from app.web.app import create_app
from tests.support.webclient import served

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Playwright

CHROMIUM = Path("/usr/bin/chromium")
# Headless, and nothing that reaches out to the network on its own.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def launch_chromium(playwright: Playwright) -> Browser:
    """/usr/bin/chromium launched headless; a test fails (not skips) without it."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (.ci/run does)")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def watched_page(browser: Browser, console: list[str], height: int = 800) -> Page:
    """A new page whose console messages and uncaught errors are appended to `console`: a test
    asserts it stays empty (a CSP violation is a console error)."""
    page = browser.new_page(viewport={"width": 1200, "height": height})
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    return page


def log_in_at(page: Page, url: str, account: str, password: str) -> None:
    """Open `url`, which redirects to the login form, log in there and wait to be back at `url`."""
    page.goto(url)
    page.fill('input[name="account"]', account)
    page.fill('input[name="password"]', password)
    page.click('button[type="submit"]')
    page.wait_for_url(url)


@contextmanager
def logged_in_chromium(
    config: Config, path: str, account: str, password: str, console: list[str] | None = None
) -> Iterator[tuple[Page, str]]:
    """The web app for `config` served, Chromium logged in as `account` at `path`: the page and the
    base URL. Leaving asserts that nothing reached the browser's console (a CSP violation would);
    a test that expects a message there passes its own `console` and takes the message out."""
    from playwright.sync_api import sync_playwright

    console = [] if console is None else console
    with served(create_app(config), config) as base, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = watched_page(browser, console)
            log_in_at(page, f"{base}{path}", account, password)
            yield page, base
        finally:
            browser.close()
    assert console == [], console


def keep_screenshot(shot: Path) -> None:
    """A screenshot a test took: it must hold a picture, and it is copied to $POSTWARDEN_SCREENSHOTS
    when that names a directory (.ci/run sets it, so a CI run's screenshots can be looked at)."""
    assert shot.stat().st_size > 1000, f"{shot} is empty"
    copy_to = os.environ.get("POSTWARDEN_SCREENSHOTS")
    if copy_to:
        Path(copy_to).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(copy_to) / shot.name)
