"""Headless Debian chromium driven by Playwright (sync API) for the console's browser tests. A test file does
`from tests.browser import browser, page, screenshot  # noqa: F401` and takes `page` (fixtures: see below)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "tests" / "out" / "screenshots"  # tests/out/ is in .gitignore
TIMEOUT_MS = 10_000  # every action, navigation and expect(): a broken page fails fast instead of hanging
# What this closed machine needs (the launch also makes a fresh empty --user-data-dir): without the
# background-networking flags Chromium dials Google's hosts at start and the refused connections pile up.
# Even with them it still looks up accounts.google.com and update.googleapis.com at start: the resolver rule
# answers every name but loopback's "not found" without asking DNS, so a page that needs anything from off
# this machine (a CDN's script or font) fails here and in CI alike, at once, with ERR_NAME_NOT_RESOLVED.
# --disable-dev-shm-usage: Debian's launcher script decides it from /dev/shm's size, and that check breaks
# where /dev/shm is mounted twice (`findmnt` prints two lines), so it is given here in every case.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.*, EXCLUDE ::1",
]

expect.set_options(timeout=TIMEOUT_MS)


def find_chromium() -> str | None:
    """$CHROMIUM (a path or a command name), else /usr/bin/chromium, else `chromium` on PATH; None if none is."""
    wanted = os.environ.get("CHROMIUM")
    if wanted:
        return shutil.which(wanted)
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return shutil.which("chromium")


def require_chromium() -> str:
    """The chromium to launch. Missing: a skip when $CI is unset, a failure when it is set (CI installs it)."""
    found = find_chromium()
    if found is None:
        what = f"$CHROMIUM={os.environ['CHROMIUM']!r} is not" if os.environ.get("CHROMIUM") else "chromium is not"
        message = f"{what} installed (Debian package chromium): .ci/run installs it"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless chromium per test module, closed (with Playwright's driver) after the module."""
    executable = require_chromium()
    pw: Playwright = sync_playwright().start()
    try:
        launched = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS,
                                      timeout=30_000)
        try:
            yield launched
        finally:
            launched.close()
    finally:
        pw.stop()


@pytest.fixture()
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (no cookies or storage from other tests) and one page in it, 10 s timeouts."""
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def screenshot(page: Page, name: str) -> Path:
    """A full-page PNG of what the page shows now, at tests/out/screenshots/<name>.png; returns its path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
