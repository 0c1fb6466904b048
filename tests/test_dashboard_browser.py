"""The dashboard as a person uses it: a real headless Chromium (Playwright) on a real local ledger.

Each test starts a ledger of its own, records into it through the SDK as an agent does
(sessions, tools, LLM calls of gpt-4o-mini, priced by genai-prices), and drives the pages with
clicks, forms and the keyboard, through the selectors the pages promise (docs/dashboard.md).
Every page must log no console error, fail no request and fetch nothing from outside 127.0.0.1:
tests/browser.py fails the test otherwise, and keeps a screenshot of any failure.
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

pytest.importorskip("starlette", reason="the dashboard is served by the local ledger")

from agent_ledger_sdk import AgentLedgerClient, BudgetGuardrailError, local
from agent_ledger_sdk.local import LocalLedger

pytest.register_assert_rewrite("tests.browser")  # imported here before pytest_plugins (below) loads it
from .browser import BrowserGuard, find_chromium, is_loopback, require_browser  # noqa: E402

require_browser()  # no Chromium or no playwright: skipped, in one line that says what to install

from playwright.sync_api import Browser, Locator, Page, expect  # noqa: E402

pytest_plugins = ["tests.browser"]  # the fixtures: chromium, browser_guard, browser_page

pytestmark = pytest.mark.integration

PROVIDER, MODEL = "openai", "gpt-4o-mini"  # priced by genai-prices: $0.15 / $0.60 per million tokens
LIVE_TIMEOUT_MS = 15_000  # how long a live update may take to show


@pytest.fixture
def ledger() -> Iterator[LocalLedger]:
    with local.run() as running:
        yield running


@pytest.fixture
def client(ledger: LocalLedger) -> Iterator[AgentLedgerClient]:
    """The SDK, as an agent uses it, pointed at the test's ledger."""
    sdk = ledger.client()
    yield sdk
    assert sdk.flush(10) == 0
    sdk.close()


def record(
    client: AgentLedgerClient,
    agent: str,
    *,
    prompt: str = "Answer the customer's question.",
    response: str = "Here is the answer.",
    tokens_in: int = 1_000,
    tokens_out: int = 100,
    user_id: Optional[str] = None,
    tags: Optional[list[str]] = None,
) -> str:
    """One finished session of ``agent`` with one LLM call; its id."""
    with client.session(agent, user_id=user_id, tags=tags) as session:
        with client.llm_call(provider=PROVIDER, model=MODEL, prompt=prompt) as call:
            call.record(response=response, tokens_in=tokens_in, tokens_out=tokens_out, model=MODEL)
    assert client.flush(10) == 0
    assert session.id is not None
    return session.id


def api_sessions(ledger: LocalLedger) -> list[dict[str, Any]]:
    """What the ledger's API says, amounts exact (``GET /v1/sessions``)."""
    response = httpx.get(
        f"{ledger.url}/v1/sessions", params={"limit": 500}, headers={"x-api-key": ledger.api_key}, timeout=10
    )
    response.raise_for_status()
    sessions: list[dict[str, Any]] = response.json(parse_float=Decimal)["sessions"]
    return sessions


def usd(value: Any) -> Decimal:
    return Decimal(str(value))


def shown_usd(text: str) -> Decimal:
    """The amount a cell shows, such as ``$0.0123``."""
    match = re.fullmatch(r"\s*\$\s*([0-9][0-9,]*(?:\.[0-9]+)?)\s*", text)
    assert match, f"not an amount in dollars: {text!r}"
    return Decimal(match.group(1).replace(",", ""))


def shows(text: str, exact: Decimal) -> bool:
    """Whether ``text`` (``$0.0123``) is ``exact`` in dollars, rounded to the digits it shows."""
    shown = shown_usd(text)
    digits = -int(shown.as_tuple().exponent)
    return abs(shown - exact) <= Decimal(1).scaleb(-digits) / 2


def assert_shows(text: str, exact: Decimal) -> None:
    assert shows(text, exact), f"{text!r} does not show ${exact}"


def assert_among(text: str, exact: Decimal) -> None:
    """One of the amounts in ``text`` shows ``exact``."""
    found = re.findall(r"\$\s*[0-9][0-9,]*(?:\.[0-9]+)?", text)
    assert any(shows(amount, exact) for amount in found), f"no ${exact} among {found} in {text!r}"


def rows(page: Page) -> list[str]:
    """The session ids of the rows of ``table#sessions``, top to bottom."""
    ids: list[str] = page.locator("table#sessions tbody tr[data-session-id]").evaluate_all(
        "rows => rows.map(row => row.dataset.sessionId)"
    )
    return ids


def open_step(page: Page, step: Locator) -> None:
    """Open a step of the tree as a person does: click the summaries of the closed steps around it, then its own."""
    target = step.element_handle()
    for _ in range(20):
        outermost = target.evaluate_handle(
            """el => { let found = null;
                for (let up = el.parentElement; up; up = up.parentElement)
                    if (up.matches('details.step') && !up.open) found = up;
                return found; }"""
        ).as_element()
        if outermost is None:
            break
        summary = outermost.query_selector(":scope > summary")
        assert summary is not None, "a step without a <summary>"
        summary.click()
    if not target.evaluate("el => el.open"):
        summary = target.query_selector(":scope > summary")
        assert summary is not None, "a step without a <summary>"
        summary.click()
    expect(step).to_have_attribute("open", "")


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


# -- what a person does ---------------------------------------------------------------------------


def test_a_find_a_session_by_agent_and_cost(browser_page: Page, ledger: LocalLedger, client: AgentLedgerClient) -> None:
    page = browser_page
    cheap = record(client, "billing-bot", tokens_in=1_000, tokens_out=100)  # $0.00021
    costly = record(client, "billing-bot", tokens_in=100_000, tokens_out=20_000)  # $0.027
    other = record(client, "support-bot", tokens_in=100_000, tokens_out=20_000)  # $0.027, another agent
    costs = {s["id"]: usd(s["costUsd"]) for s in api_sessions(ledger)}
    assert costs[costly] == Decimal("0.027") and costs[cheap] == Decimal("0.00021")

    page.goto(f"{ledger.url}/")
    assert set(rows(page)) == {cheap, costly, other}
    form = page.locator("form#filters")
    assert (form.get_attribute("method") or "get").lower() == "get"
    form.locator("[name=agent]").fill("billing-bot")
    form.locator("[name=min_cost]").fill("0.01")
    form.locator("button[type=submit]", has_text="Filter").click()

    page.wait_for_url(re.compile(r"[?&]min_cost=0\.01"))
    query = parse_qs(urlsplit(page.url).query)
    assert query["agent"] == ["billing-bot"] and query["min_cost"] == ["0.01"]
    assert rows(page) == [costly]  # the matching row, and neither the cheap run nor the other agent
    row = page.locator(f'table#sessions tbody tr[data-session-id="{costly}"]')
    expect(row.locator("td.agent")).to_have_text("billing-bot")
    assert_shows(row.locator("td.cost").inner_text(), costs[costly])
    expect(form.locator("[name=agent]")).to_have_value("billing-bot")  # the filter stays filled in

    row.locator("a.session-link").click()
    page.wait_for_url(f"{ledger.url}/sessions/{costly}")
    expect(page.locator("h1")).to_contain_text("billing-bot")


def test_b_open_a_session_and_read_a_long_prompt_in_full(
    browser_page: Page, ledger: LocalLedger, client: AgentLedgerClient
) -> None:
    page = browser_page
    marker = "END-OF-PROMPT-7f3a9c"
    notes = " ".join(f"Note {n}: the customer asked about invoice {1000 + n} and its refund." for n in range(60))
    prompt = f"Summarise these notes for the support team.\n{notes}\n{marker}"
    assert len(prompt) > 2_000

    @client.tool
    def search_notes(query: str) -> list[str]:
        with client.llm_call(provider=PROVIDER, model=MODEL, prompt=prompt) as call:
            call.record(response="Sixty refund questions, all answered.", tokens_in=900, tokens_out=40)
        return [f"notes about {query}"]

    with client.session("research-bot") as session:
        search_notes("refunds")
        with client.llm_call(provider=PROVIDER, model=MODEL, prompt="Write the reply.") as call:
            call.record(response="Your refund is on its way.", tokens_in=200, tokens_out=20)
    assert client.flush(10) == 0
    (recorded,) = [s for s in api_sessions(ledger) if s["id"] == session.id]

    page.goto(f"{ledger.url}/sessions/{session.id}")
    expect(page.locator("h1")).to_contain_text("research-bot")
    steps = page.locator("section#tree details.step[data-step-index][data-type]")
    types = steps.evaluate_all("steps => steps.map(s => s.dataset.type)")
    assert types.count("llm_call") == 2 and "tool_call" in types, types  # the tool, the call in it, the reply
    expect(page.locator("svg#waterfall")).to_be_attached()
    assert_among(page.locator("dl#totals").inner_text(), usd(recorded["costUsd"]))

    tool = page.locator('section#tree details.step[data-type="tool_call"]')
    open_step(page, tool)
    expect(tool.locator("pre.tool-input")).to_contain_text("refunds")
    result = page.locator("section#tree details.step").filter(has=page.locator("pre.tool-output"))
    open_step(page, result)  # the tool's own step, or a step of its result
    expect(result.locator("pre.tool-output")).to_contain_text("notes about refunds")

    summarise = page.locator('section#tree details.step[data-type="llm_call"]').filter(has_text=marker)
    expect(summarise).to_have_count(1)
    open_step(page, summarise)
    shown = summarise.locator("pre.prompt").first
    expect(shown).to_be_visible()
    assert shown.text_content() == prompt  # all of it, not a preview
    expect(summarise.locator("pre.response").first).to_have_text("Sixty refund questions, all answered.")
    # nothing of it is cut off where no one can scroll to it
    overflow = shown.evaluate(
        "el => ({clipped: el.scrollHeight > el.clientHeight + 1 || el.scrollWidth > el.clientWidth + 1,"
        " style: getComputedStyle(el).overflowY + '/' + getComputedStyle(el).overflowX})"
    )
    assert not overflow["clipped"] or "hidden" not in overflow["style"], overflow
    page.get_by_text(marker).last.scroll_into_view_if_needed()
    expect(page.get_by_text(marker).last).to_be_in_viewport()


def test_c_compare_two_runs_and_see_the_word_that_changed(
    browser_page: Page, ledger: LocalLedger, client: AgentLedgerClient
) -> None:
    page = browser_page
    first = record(client, "writer-bot", prompt="Write a short note to Alice about the refund of order 1042.")
    second = record(client, "writer-bot", prompt="Write a short note to Bob about the refund of order 1042.")

    page.goto(f"{ledger.url}/sessions/{second}")
    compare = page.locator("a#compare-previous")
    expect(compare).to_have_attribute("href", f"/compare?a={first}&b={second}")
    compare.click()
    page.wait_for_url(re.compile(r"/compare\?"))
    assert parse_qs(urlsplit(page.url).query) == {"a": [first], "b": [second]}

    expect(page.locator("table#comparison tr.step").first).to_be_visible()
    expect(page.locator("dl#totals")).to_be_visible()
    removed = page.locator(".diff del")
    added = page.locator(".diff ins")
    expect(removed.filter(has_text="Alice").first).to_be_visible()
    expect(added.filter(has_text="Bob").first).to_be_visible()
    # the word is what is highlighted, not the whole prompt
    highlighted = [text.strip() for text in [*removed.all_inner_texts(), *added.all_inner_texts()]]
    assert "Alice" in highlighted and "Bob" in highlighted, highlighted
    assert not any("refund" in text for text in highlighted), highlighted


def test_d_a_days_spend_on_costs_is_the_exact_sum(
    browser_page: Page, ledger: LocalLedger, client: AgentLedgerClient
) -> None:
    page = browser_page
    record(client, "billing-bot", tokens_in=1_234, tokens_out=567)
    record(client, "billing-bot", tokens_in=98_765, tokens_out=4_321)
    record(client, "support-bot", tokens_in=3_333, tokens_out=777, user_id="user-42")
    by_day: dict[str, Decimal] = {}
    for session in api_sessions(ledger):
        day = session["startedAt"][:10]  # UTC
        by_day[day] = by_day.get(day, Decimal(0)) + usd(session["costUsd"])
    assert sum(by_day.values()) > 0

    page.goto(f"{ledger.url}/costs")
    expect(page.locator("form#range [name=since]")).to_be_attached()
    expect(page.locator("form#range [name=until]")).to_be_attached()
    for day, total in by_day.items():
        bar = page.locator(f'svg#daily-chart rect[data-day="{day}"]')
        expect(bar).to_have_count(1)
        assert Decimal(bar.get_attribute("data-cost") or "nan") == total, (day, bar.get_attribute("data-cost"), total)
        assert bar.locator("title").text_content()  # a tooltip says what the bar is
    by_agent = page.locator("table#by-agent")
    expect(by_agent).to_contain_text("billing-bot")
    expect(by_agent).to_contain_text("support-bot")
    expect(page.locator("table#by-model")).to_contain_text(MODEL)
    expect(page.locator("table#by-user")).to_contain_text("user-42")


def test_e_set_a_budget_and_watch_an_over_budget_call_refused(
    browser_page: Page, ledger: LocalLedger, client: AgentLedgerClient
) -> None:
    page = browser_page
    record(client, "spender-bot", tokens_in=1_000, tokens_out=100)  # $0.00021 spent before the budget

    page.goto(f"{ledger.url}/budgets")
    form = page.locator("form#set-budget")
    assert (form.get_attribute("method") or "").lower() == "post"
    assert form.get_attribute("action") == "/budgets"
    assert form.locator('input[type=hidden][name="csrf_token"]').get_attribute("value")
    form.locator("[name=agent]").fill("spender-bot")
    form.locator("[name=daily_limit_usd]").fill("0.001")
    with page.expect_navigation():
        form.locator("button[type=submit]", has_text="Save budget").click()
    assert urlsplit(page.url).path == "/budgets"  # 303 back to the list
    row = page.locator('#budgets tr[data-agent="spender-bot"]')
    assert_shows(row.locator(".limit").inner_text(), Decimal("0.001"))
    assert_shows(row.locator(".spent").inner_text(), Decimal("0.00021"))
    (budget,) = [b for b in ledger.service.budgets(ledger.workspace) if b["agentName"] == "spender-bot"]
    assert usd(budget["dailyLimitUsd"]) == Decimal("0.001")  # the form set the real budget

    ran = []
    with client.session("spender-bot"):
        # It reserves $0.0005, which fits, then uses far more: recorded, and over the budget ($0.0027).
        with client.llm_call(provider=PROVIDER, model=MODEL, prompt="A long question", max_cost_usd=0.0005) as call:
            ran.append("the first call")
            call.record(response="A long answer", tokens_in=10_000, tokens_out=2_000)
        with pytest.raises(BudgetGuardrailError):  # the next one is refused before it runs
            with client.llm_call(provider=PROVIDER, model=MODEL, prompt="One more", max_cost_usd=0.0005):
                ran.append("the second call")
    assert ran == ["the first call"]
    assert client.flush(10) == 0

    page.reload()
    row = page.locator('#budgets tr[data-agent="spender-bot"]')
    assert_shows(row.locator(".spent").inner_text(), Decimal("0.00291"))
    assert_shows(row.locator(".remaining").inner_text(), Decimal(0))
    expect(row).to_have_class(re.compile(r"\bexhausted\b"))
    refusals = page.locator("section#refusals")
    expect(refusals).to_contain_text("spender-bot")
    expect(refusals).to_contain_text(MODEL)


def test_e_lift_a_budget(browser_page: Page, ledger: LocalLedger) -> None:
    page = browser_page
    ledger.set_budget("spender-bot", 0.5, monthly_limit_usd=10)
    page.goto(f"{ledger.url}/budgets")
    row = page.locator('#budgets tr[data-agent="spender-bot"]')
    assert_shows(row.locator(".limit").inner_text(), Decimal("0.5"))
    form = page.locator("form#set-budget")
    form.locator("[name=agent]").fill("spender-bot")
    form.locator('[name="lift"]').check()
    with page.expect_navigation():
        form.locator("button[type=submit]", has_text="Save budget").click()
    assert urlsplit(page.url).path == "/budgets"
    budgets = [b for b in ledger.service.budgets(ledger.workspace) if b["agentName"] == "spender-bot"]
    assert all(b["dailyLimitUsd"] is None and b["monthlyLimitUsd"] is None for b in budgets), budgets
    limit = page.locator('#budgets tr[data-agent="spender-bot"] .limit')
    if limit.count():
        assert "$" not in limit.inner_text(), limit.inner_text()  # no limit shown any more


def test_f_the_keyboard_alone_filters_and_opens_a_session(
    browser_page: Page, ledger: LocalLedger, client: AgentLedgerClient
) -> None:
    page = browser_page
    record(client, "support-bot")
    wanted = record(client, "billing-bot")
    page.goto(f"{ledger.url}/")

    def focused() -> dict[str, Any]:
        info: dict[str, Any] = page.evaluate(
            """() => { const el = document.activeElement; const style = getComputedStyle(el);
                return {tag: el.tagName.toLowerCase(), name: el.getAttribute('name'),
                        inFilters: !!el.closest('form#filters'), sessionLink: el.matches('a.session-link'),
                        step: !!el.closest('section#tree details.step'),
                        href: el.getAttribute('href'),
                        ring: style.outlineStyle !== 'none' && style.outlineWidth !== '0px' || style.boxShadow !== 'none'}; }"""
        )
        return info

    def tab_until(wanted_here: Any, limit: int = 60) -> list[dict[str, Any]]:
        seen = []
        for _ in range(limit):
            page.keyboard.press("Tab")
            seen.append(focused())
            if wanted_here(seen[-1]):
                return seen
        raise AssertionError(f"Tab never got there; it went through {seen}")

    seen = tab_until(lambda el: el["inFilters"] and el["name"] == "agent")
    assert seen[-1]["ring"], "the focused filter shows no focus ring"
    page.keyboard.type("billing-bot")
    page.keyboard.press("Enter")  # submits the filters
    page.wait_for_url(re.compile(r"[?&]agent=billing-bot"))
    assert rows(page) == [wanted]

    seen = tab_until(lambda el: el["sessionLink"])
    assert any(el["inFilters"] for el in seen), "Tab reaches the first session link without passing the filters"
    assert seen[-1]["href"] == f"/sessions/{wanted}", seen[-1]  # the first session's link
    assert seen[-1]["ring"], "the focused session link shows no focus ring"
    page.keyboard.press("Enter")
    page.wait_for_url(f"{ledger.url}/sessions/{wanted}")
    expect(page.locator("h1")).to_contain_text("billing-bot")

    tab_until(lambda el: el["tag"] == "summary" and el["step"])  # a step of the tree
    step = page.locator("section#tree details.step").first
    assert step.get_attribute("open") is None
    page.keyboard.press("Enter")
    expect(step).to_have_attribute("open", "")
    expect(step.locator("pre.prompt")).to_be_visible()


def test_g_new_sessions_appear_without_a_reload(
    browser_page: Page, ledger: LocalLedger, client: AgentLedgerClient
) -> None:
    page = browser_page
    earlier = record(client, "support-bot")
    page.goto(f"{ledger.url}/")
    assert rows(page) == [earlier]
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads

    with client.session("late-arrival") as session:
        with client.llm_call(provider=PROVIDER, model=MODEL, prompt="Just started") as call:
            call.record(response="ok", tokens_in=10, tokens_out=2)
        assert client.flush(10) == 0
        new_row = page.locator(f'table#sessions tbody tr[data-session-id="{session.id}"]')
        expect(new_row).to_be_visible(timeout=LIVE_TIMEOUT_MS)  # while the session still runs
    assert client.flush(10) == 0
    assert rows(page)[0] == session.id  # at the top
    expect(new_row.locator("td.agent")).to_have_text("late-arrival")
    expect(new_row.locator("a.session-link")).to_have_attribute("href", f"/sessions/{session.id}")
    assert page.evaluate("window.__sameDocument") is True, "the page reloaded"


def test_h_every_page_works_offline_with_no_console_error(
    browser_guard: BrowserGuard, ledger: LocalLedger, client: AgentLedgerClient
) -> None:
    page = browser_guard.page
    first = record(client, "writer-bot", prompt="Write to Alice.", user_id="user-1", tags=["prod"])
    second = record(client, "writer-bot", prompt="Write to Bob.")
    ledger.set_budget("writer-bot", 1.0)
    pages = ["/", f"/sessions/{second}", f"/compare?a={first}&b={second}", "/costs", "/budgets"]
    for path in pages:
        response = page.goto(f"{ledger.url}{path}")
        assert response is not None and response.status == 200, (path, response and response.status)
        page.wait_for_load_state("networkidle")
        assert page.title().startswith("Agent Ledger"), (path, page.title())
        expect(page.locator("main")).to_have_count(1)
        nav = page.locator("nav")
        for text, href in (("Sessions", "/"), ("Costs", "/costs"), ("Budgets", "/budgets")):
            expect(nav.get_by_role("link", name=text, exact=True)).to_have_attribute("href", href)
        # everything the page loads is its own: no CDN, no web font, no analytics
        external = page.evaluate(
            """() => [...document.querySelectorAll('[src], link[href]')]
                .map(el => el.src || el.href).filter(url => url && !url.startsWith(location.origin))"""
        )
        assert [url for url in external if not is_loopback(url)] == [], (path, external)
        assert browser_guard.problems() == [], (path, browser_guard.problems())

    page.goto(f"{ledger.url}/")
    for text, path in (("Costs", "/costs"), ("Budgets", "/budgets"), ("Sessions", "/")):
        page.locator("nav").get_by_role("link", name=text, exact=True).click()
        page.wait_for_url(f"{ledger.url}{path}", wait_until="networkidle")
    assert browser_guard.requests, "the pages made no request at all?"
    assert all(is_loopback(line.split(" ", 1)[1]) for line in browser_guard.requests), browser_guard.requests
    assert browser_guard.problems() == []


def test_the_docs_screenshots_are_what_the_script_makes(tmp_path: Path) -> None:
    """scripts/dashboard_screenshots.py, as docs/dashboard.md says to run it, saves five 1280x800 PNGs."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "dashboard_screenshots.py"
    chromium = find_chromium()
    assert chromium is not None
    done = subprocess.run(
        [sys.executable, str(script), "--output", str(tmp_path), "--chromium", chromium],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    names = ["sessions", "session", "compare", "costs", "budgets"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"dashboard-{n}.png" for n in names)
    for name in names:
        header = (tmp_path / f"dashboard-{name}.png").read_bytes()[:24]
        assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR"
        assert struct.unpack(">II", header[16:24]) == (1280, 800), name


def test_login_with_an_api_key_when_the_dashboard_asks_for_one(
    browser_guard: BrowserGuard, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a server reachable beyond this machine does (forced here on loopback): a key, asked once."""
    page = browser_guard.page
    monkeypatch.setenv("AGENT_LEDGER_DASHBOARD_LOGIN", "1")
    with local.run() as ledger:
        sdk = ledger.client()
        session_id = record(sdk, "support-bot")
        sdk.close()

        page.goto(f"{ledger.url}/budgets")
        assert urlsplit(page.url).path == "/login"
        form = page.locator("form#login")
        key = form.locator("input[name=api_key]")
        expect(key).to_have_attribute("type", "password")
        expect(page.locator("nav")).to_be_visible()
        assert "support-bot" not in page.content()  # nothing of the workspace before a login

        key.fill("al_local_000000000000_not-a-key")
        with page.expect_navigation():
            key.press("Enter")
        assert urlsplit(page.url).path == "/login"
        expect(page.get_by_role("alert")).to_be_visible()
        # the wrong key's answer is a 401: what the guard saw is that, and only that
        assert [f for f in browser_guard.failed_requests if "HTTP 401" in f] == browser_guard.failed_requests != []
        browser_guard.failed_requests.clear()
        browser_guard.console_errors[:] = [e for e in browser_guard.console_errors if "401" not in e]

        form.locator("input[name=api_key]").fill(ledger.api_key)
        with page.expect_navigation():
            form.locator("button[type=submit]").click()
        assert urlsplit(page.url).path == "/budgets"  # back where the viewer was going
        expect(page.locator("table#budgets")).to_be_visible()
        page.goto(f"{ledger.url}/sessions/{session_id}")
        expect(page.locator("h1")).to_contain_text("support-bot")
        assert ledger.api_key not in page.content()
        cookies = page.context.cookies()
        assert ledger.api_key not in json.dumps(cookies)  # the browser keeps a signed login, not the key
        assert all(c["httpOnly"] for c in cookies), cookies
        assert page.evaluate("document.cookie") == ""  # no script can read the login

        with page.expect_navigation():
            page.get_by_role("button", name="Log out").click()
        page.goto(f"{ledger.url}/")
        assert urlsplit(page.url).path == "/login"


def test_the_pages_work_without_javascript(chromium: Browser, ledger: LocalLedger, client: AgentLedgerClient) -> None:
    """Filters, a session's steps and the budget form are plain HTML: they work with the script off."""
    costly = record(client, "billing-bot", tokens_in=100_000, tokens_out=20_000)
    record(client, "billing-bot")
    context = chromium.new_context(java_script_enabled=False, viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        page.goto(f"{ledger.url}/")
        page.locator("form#filters [name=min_cost]").fill("0.01")
        page.locator("form#filters button[type=submit]").click()
        page.wait_for_url(re.compile(r"min_cost=0\.01"))
        assert rows(page) == [costly]
        page.locator("a.session-link").first.click()
        page.wait_for_url(f"{ledger.url}/sessions/{costly}")
        step = page.locator("section#tree details.step").first
        step.locator("summary").first.click()
        expect(step).to_have_attribute("open", "")
        expect(step.locator("pre.prompt")).to_be_visible()
        page.goto(f"{ledger.url}/budgets")
        form = page.locator("form#set-budget")
        form.locator("[name=agent]").fill("billing-bot")
        form.locator("[name=daily_limit_usd]").fill("2.5")
        form.locator("button[type=submit]").click()
        page.wait_for_url(f"{ledger.url}/budgets")
        assert_shows(page.locator('#budgets tr[data-agent="billing-bot"] .limit').inner_text(), Decimal("2.5"))
    finally:
        context.close()


def test_older_sessions_are_one_click_away(browser_page: Page, ledger: LocalLedger, client: AgentLedgerClient) -> None:
    page = browser_page
    started = []
    for n in range(53):
        with client.session("bulk-bot", tags=[f"run-{n}"]) as session:
            pass
        started.append(session.id)
    assert client.flush(10) == 0
    newest_first = started[::-1]

    page.goto(f"{ledger.url}/")
    first_page = rows(page)
    assert first_page == newest_first[: len(first_page)] and len(first_page) < 53
    with page.expect_navigation():
        page.locator("a[rel=next]").click()
    second_page = rows(page)
    assert first_page + second_page == newest_first  # every session once, in order
    expect(page.locator("a[rel=next]")).to_have_count(0)  # nothing older
