"""The dashboard as a person uses it: a real headless Chromium (Playwright) on a real local ledger.

Each test starts a ledger of its own, records into it through the SDK as an agent would, and
drives the pages with clicks, forms and the keyboard. Every page must log no console error,
fail no request and fetch nothing from outside 127.0.0.1 (tests/browser.py fails the test
otherwise, and keeps a screenshot of a failure).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

pytest.importorskip("starlette", reason="the dashboard is served by the local ledger")

from agent_ledger_sdk import local
from agent_ledger_sdk.local import LocalLedger

pytest.register_assert_rewrite("tests.browser")  # imported here before pytest_plugins (below) loads it
from .browser import BrowserGuard, is_loopback, require_browser  # noqa: E402

require_browser()  # no Chromium or no playwright: skipped, in one line that says what to install

pytest_plugins = ["tests.browser"]  # the fixtures: chromium, browser_guard, browser_page

pytestmark = pytest.mark.integration


@pytest.fixture
def ledger() -> Iterator[LocalLedger]:
    with local.run() as running:
        yield running


# -- the harness itself ----------------------------------------------------------------------------


def test_chromium_renders_a_page(browser_page: object) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(browser_page, Page)
    browser_page.goto("data:text/html,<title>Agent Ledger smoke</title><main><h1 id=x>rendered</h1></main>")
    expect(browser_page.locator("h1#x")).to_have_text("rendered")
    assert browser_page.title() == "Agent Ledger smoke"
    assert browser_page.viewport_size == {"width": 1280, "height": 800}
    assert browser_page.evaluate("navigator.userAgent").find("Chrome/") > 0


def test_chromium_reads_the_ledger_over_loopback(browser_guard: BrowserGuard, ledger: LocalLedger) -> None:
    page = browser_guard.page
    response = page.goto(f"{ledger.url}/openapi.json")
    assert response is not None and response.status == 200
    document = json.loads(page.evaluate("document.body.innerText"))
    assert document["openapi"].startswith("3.1")
    assert browser_guard.requests and all(is_loopback(line.split(" ", 1)[1]) for line in browser_guard.requests)


def test_requests_that_would_leave_the_machine_are_aborted_and_reported(
    browser_guard: BrowserGuard, ledger: LocalLedger
) -> None:
    page = browser_guard.page
    page.goto(f"{ledger.url}/health")
    # 0.0.0.0 is this machine too, so nothing could leave even if the guard let it through.
    outcome = page.evaluate("fetch('http://0.0.0.0:9/cdn.js').then(() => 'loaded', e => 'refused: ' + e.message)")
    assert outcome.startswith("refused")
    assert browser_guard.outside_requests == ["http://0.0.0.0:9/cdn.js"]
    assert any("0.0.0.0" in problem for problem in browser_guard.problems())
    browser_guard.outside_requests.clear()  # seen: the guard works; the test itself must still end clean
    browser_guard.console_errors.clear()  # Chromium logs the aborted fetch


def test_loopback_is_what_stays_on_the_machine() -> None:
    assert is_loopback("http://127.0.0.1:8787/costs")
    assert is_loopback("http://localhost/")
    assert is_loopback("http://[::1]:80/")
    assert is_loopback("data:text/html,x")
    assert not is_loopback("https://cdn.jsdelivr.net/npm/chart.js")
    assert not is_loopback("http://10.0.0.1/")
    assert not is_loopback("http://127.0.0.1.example.com/")
