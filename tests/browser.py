"""A real headless Chromium, driven by Playwright, for tests of what a person sees in the dashboard.

Use it from a test module (not conftest.py)::

    from .browser import require_browser

    require_browser()  # no Chromium or no playwright: the module is skipped, in one line that says why

    pytest_plugins = ["tests.browser"]  # its fixtures: chromium, browser_guard, browser_page

``browser_page`` is a fresh Playwright ``Page`` (its own context: no cookies or storage
shared between tests) on Chromium at 1280x800. ``browser_guard`` is what the page did:
console errors, uncaught exceptions, failed requests and requests that left the machine,
each of which fails the test when it ends. Every request to anything but 127.0.0.1 /
localhost / [::1] is aborted before it leaves: the pages must work with no network (no CDN).

Chromium is ``AGENT_LEDGER_CHROMIUM``, else the first of /usr/bin/chromium, chromium,
chromium-browser and google-chrome on PATH (``apt-get install chromium`` on Debian; the
playwright package brings its driver but no browser, and ``playwright install`` needs a
network this project does not assume). With no Chromium, or no playwright package, the
browser tests are skipped with one line that says so; a Chromium that is there but does not
start fails them.

When a test fails, a screenshot of its page is saved under pytest's temporary directory and
its path printed in the failure's report, with what the page logged.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import shutil
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Route, WebSocket

__all__ = [
    "CHROMIUM_FLAGS",
    "NO_CHROMIUM",
    "VIEWPORT",
    "BrowserGuard",
    "browser_guard",
    "browser_page",
    "chromium",
    "find_chromium",
    "is_loopback",
    "require_browser",
    "why_no_browser",
]

NO_CHROMIUM = "no Chromium: apt-get install chromium (or set AGENT_LEDGER_CHROMIUM=/path)"
NO_PLAYWRIGHT = 'no playwright package: python -m pip install -e ".[dev]" (or pip install playwright)'
CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")

# Headless, as root, on a closed network: no sandbox (root), no GPU, and none of Chromium's own
# traffic (updates, sync, field trials, QUIC probes), which would only be refused connections here.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
TIMEOUT_MS = 10_000  # every wait of a page: locators, navigations, expect()
LOCAL_SCHEMES = {"data", "blob", "about"}


def find_chromium() -> Optional[str]:
    """Where Chromium is: ``AGENT_LEDGER_CHROMIUM`` as given, else the first candidate found, else None."""
    configured = os.environ.get("AGENT_LEDGER_CHROMIUM")
    if configured:
        return configured  # as given: a wrong path is a failure to launch, not a skip
    for candidate in CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def is_loopback(url: str) -> bool:
    """Whether a request to ``url`` stays on this machine (loopback, or no network at all: data:, blob:)."""
    parts = urlsplit(url)
    if parts.scheme in LOCAL_SCHEMES:
        return True
    host = (parts.hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it would be looked up, and could be anywhere
        return False


@dataclass
class BrowserGuard:
    """A page, and everything it did that a dashboard must not: each list must stay empty."""

    page: Page
    screenshots: Path
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    outside_requests: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    # Requests the browser cancelled because the page went elsewhere first (a poll for new rows, the icon of
    # a page left at once): the page did nothing wrong. Every other failure is one.
    aborted_requests: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        return [
            *(f"console error: {text}" for text in self.console_errors),
            *(f"uncaught exception: {text}" for text in self.page_errors),
            *(f"failed request: {text}" for text in self.failed_requests),
            *(f"request that left 127.0.0.1 (aborted): {url}" for url in self.outside_requests),
        ]

    def screenshot(self, name: str) -> Optional[Path]:
        """Save what the page shows now (whole page) as NAME.png; None if the page cannot be captured."""
        path = self.screenshots / f"{name}.png"
        try:
            self.page.screenshot(path=str(path), full_page=True, timeout=5_000)
        except Exception:  # a crashed or closed page: the report says so without a picture
            return None
        return path

    # -- listeners --------------------------------------------------------------

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            location = message.location
            where = f" ({location.get('url')}:{location.get('lineNumber')})" if location.get("url") else ""
            self.console_errors.append(f"{message.text}{where}")

    def _on_page_error(self, error: Any) -> None:
        self.page_errors.append(str(error))

    def _on_request(self, request: Request) -> None:
        self.requests.append(f"{request.method} {request.url}")
        if not is_loopback(request.url) and request.url not in self.outside_requests:
            self.outside_requests.append(request.url)  # seen here even where routing does not apply

    def _on_request_failed(self, request: Request) -> None:
        if not is_loopback(request.url):
            return  # aborted by _route, and already listed as leaving the machine
        if request.failure == "net::ERR_ABORTED":  # cancelled: the page went elsewhere before it finished
            self.aborted_requests.append(f"{request.resource_type} {request.method} {request.url}")
            return
        self.failed_requests.append(f"{request.method} {request.url}: {request.failure}")

    def _on_response(self, response: Any) -> None:
        if response.status >= 400:
            self.failed_requests.append(f"{response.request.method} {response.url}: HTTP {response.status}")

    def _on_websocket(self, socket: WebSocket) -> None:
        if not is_loopback(socket.url) and socket.url not in self.outside_requests:
            self.outside_requests.append(socket.url)

    def _route(self, route: Route) -> None:
        url = route.request.url
        if is_loopback(url):
            route.continue_()
        else:
            if url not in self.outside_requests:
                self.outside_requests.append(url)
            route.abort("blockedbyclient")


_REPORTS_PLUGIN = "agent_ledger_browser_failures"
_GUARD = pytest.StashKey["BrowserGuard"]()


class _FailureScreenshots:
    """Adds a screenshot of the page, and what it logged, to the report of a failed browser test."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        guard = item.stash.get(_GUARD, None)
        if guard is not None and report.failed and report.when in ("call", "setup"):
            name = "".join(c if c.isalnum() or c in "-_." else "_" for c in item.name)[:120]
            path = guard.screenshot(name)
            lines = [f"screenshot: {path}" if path else "screenshot: none (the page could not be captured)"]
            lines.append(f"page: {guard.page.url}")
            lines += guard.problems()
            lines += ["requests:", *(f"  {line}" for line in guard.requests[-30:])]
            report.sections.append(("browser", "\n".join(lines)))
        return report


def why_no_browser() -> Optional[str]:
    """Why the browser tests cannot run here (one line: what to install), or None when they can."""
    if importlib.util.find_spec("playwright") is None:
        return NO_PLAYWRIGHT
    if find_chromium() is None:
        return NO_CHROMIUM
    return None


def require_browser() -> None:
    """Skip the calling test module, in one line of the summary, when there is no Chromium or no playwright."""
    reason = why_no_browser()
    if reason is not None:
        pytest.skip(reason, allow_module_level=True)


@pytest.fixture(scope="module")
def chromium(request: pytest.FixtureRequest) -> Iterator[Browser]:
    """A headless Chromium for the module's tests, or a skip saying how to get one."""
    reason = why_no_browser()
    if reason is not None:
        pytest.skip(reason)
    executable = find_chromium()
    assert executable is not None
    plugins = request.config.pluginmanager
    if not plugins.has_plugin(_REPORTS_PLUGIN):
        plugins.register(_FailureScreenshots(), _REPORTS_PLUGIN)

    from playwright.sync_api import Error, sync_playwright

    playwright = sync_playwright().start()
    try:
        launched: Optional[Browser] = None
        try:
            launched = playwright.chromium.launch(
                executable_path=executable, headless=True, args=CHROMIUM_FLAGS, timeout=60_000
            )
        except Error as exc:
            failure = f"Chromium at {executable} did not start under Playwright: {exc}"
        if launched is None:
            pytest.fail(failure, pytrace=False)
        browser = launched
        try:
            yield browser
        finally:
            browser.close()
    finally:
        playwright.stop()


@pytest.fixture
def browser_guard(
    chromium: Browser, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrowserGuard]:
    """A new page in a new context, watched: what it must not do fails the test at its end."""
    context = chromium.new_context(viewport=VIEWPORT, service_workers="block")  # type: ignore[arg-type]
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    guard = BrowserGuard(page, tmp_path_factory.mktemp("browser"))
    context.route("**/*", guard._route)
    page.on("console", guard._on_console)
    page.on("pageerror", guard._on_page_error)
    page.on("request", guard._on_request)
    page.on("requestfailed", guard._on_request_failed)
    page.on("response", guard._on_response)
    page.on("websocket", guard._on_websocket)
    request.node.stash[_GUARD] = guard
    try:
        yield guard
        problems = guard.problems()
        if problems:
            path = guard.screenshot(f"{request.node.name}-problems")
            pytest.fail(
                f"the page did what a dashboard must not (screenshot: {path}):\n" + "\n".join(problems), pytrace=False
            )
    finally:
        del request.node.stash[_GUARD]
        context.close()


@pytest.fixture
def browser_page(browser_guard: BrowserGuard) -> Page:
    """A Playwright page on a real headless Chromium (see :func:`browser_guard` for what it must not do)."""
    return browser_guard.page
