"""The dashboard's browser tests: the system's Chromium (Debian's package), driven by Playwright.

Playwright's own browser download is never used: the tests launch ``/usr/bin/chromium``, which
CI installs (``.ci/run``); without it they fail, saying so, rather than skip.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, ViewportSize, expect, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
#: The screenshots' size (the README's).
VIEWPORT = ViewportSize(width=1280, height=800)

# A 2-core CI machine runs servers, producers and the browser at once: waits are generous
# (a wait is a bound on a failure's cost, never a timing assertion).
expect.set_options(timeout=20_000)

Shot = Callable[[Page, str], Path]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium package "
            "(apt-get install chromium; CI's .ci/run does) to run the dashboard's tests"
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (no cookies) at 1280x800; an uncaught page error fails the test."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(20_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    context.close()
    if errors:
        pytest.fail("the page threw: " + "; ".join(errors))


@pytest.fixture
def shot(tmp_path: Path) -> Shot:
    """Saves a screenshot: to ``$TM_SCREENSHOTS`` (``make screenshots``), else to tmp_path."""
    folder = Path(os.environ.get("TM_SCREENSHOTS") or tmp_path).resolve()
    folder.mkdir(parents=True, exist_ok=True)

    def take(tab: Page, name: str) -> Path:
        path = folder / f"{name}.png"
        tab.screenshot(path=str(path))
        return path

    return take
