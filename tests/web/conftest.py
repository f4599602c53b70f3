"""A real server (tests/conftest.py's `server`: uvicorn on 127.0.0.1, the tiny model) and
Debian's Chromium driven by Playwright, headless. Never a browser download: without
/usr/bin/chromium the tests skip, except in CI (env CI set), where they fail."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).parents[2]


def artifacts() -> Path:
    """Where screenshots go: $MCDROPOUT_ARTIFACTS/web, by default test-artifacts/web."""
    folder = Path(os.environ.get("MCDROPOUT_ARTIFACTS", ROOT / "test-artifacts")) / "web"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# Module scope: sync Playwright keeps an asyncio loop running in this thread while it is open,
# and tests after these ones (asyncio.run) must not find it.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: apt-get install chromium (never `playwright install`)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {reason}")
        pytest.skip(reason)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page; any uncaught script error fails the test."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    def console(message: ConsoleMessage) -> None:
        if message.type == "error" and "Failed to load resource" not in message.text:
            errors.append(message.text)

    page.on("console", console)
    page.set_default_timeout(10_000)
    yield page
    context.close()
    assert errors == []
