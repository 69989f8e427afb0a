"""Helpers for tests of the postmaster's pages: the web config with the admin and a non-admin account,
Chromium logged in as the admin, and screenshots kept (copied to $POSTWARDEN_SCREENSHOTS if set)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from app.config import Config
from tests.support.browser import keep_screenshot, logged_in_chromium
from tests.support.webclient import write_web_config

if TYPE_CHECKING:
    from playwright.sync_api import Page

PASSWORD = "correct horse battery"
BOB_PASSWORD = "bob's own password"
# For @pytest.mark.parametrize("database", BOTH_DATABASES): the `database` fixture of tests/web.
BOTH_DATABASES = ["sqlite", "postgresql"]


def admin_web_config(tmp_path: Path, dns_port: int, database_url: str | None = None) -> Config:
    """The web test config (admin is the postmaster, bob is not), migrated, passwords set."""
    passwords = {"admin": PASSWORD, "bob": BOB_PASSWORD}
    return write_web_config(tmp_path / "config", dns_port, passwords, database_url)


@dataclass
class AdminBrowser:
    page: Page
    base: str
    console: list[str]
    shots: Path

    def screenshot(self, name: str) -> Path:
        """A full-page screenshot under the test's tmp_path, copied to $POSTWARDEN_SCREENSHOTS if set."""
        path = self.shots / name
        self.page.screenshot(path=str(path), full_page=True)
        keep_screenshot(path)
        return path


@contextmanager
def admin_browser(config: Config, tmp_path: Path, start: str) -> Iterator[AdminBrowser]:
    """Chromium logged in as the admin on the page `start` (browser.logged_in_chromium: the console
    must stay free of errors; a test that causes one on purpose takes it out of `console`)."""
    shots = tmp_path / "screenshots"
    shots.mkdir(exist_ok=True)
    console: list[str] = []
    with logged_in_chromium(config, start, "admin", PASSWORD, console) as (page, base):
        yield AdminBrowser(page, base, console, shots)
