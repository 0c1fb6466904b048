"""The dashboard over HTTP, on a real local ledger (SQLite and PostgreSQL): each page, its data, its forms.

The pages are read as a browser gets them (httpx, no API key) and parsed with the standard library's
HTML parser; the selectors are the ones the pages promise (docs/dashboard.md), which the browser tests
(tests/test_dashboard_browser.py) drive in Chromium.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Optional, Union

import httpx
import pytest

pytest.importorskip("jinja2", reason="the dashboard needs the server extra")

from agent_ledger_sdk._local_key import read_local_key
from agent_ledger_sdk.cli import main as cli_main
from agent_ledger_sdk.local import LocalLedger
from agent_ledger_sdk.local import service as service_module
from agent_ledger_sdk.local.app import create_app
from agent_ledger_sdk.local.dashboard.auth import LOGIN_COOKIE, is_loopback
from agent_ledger_sdk.local.dashboard.views import EVENTS_PAGE, SESSIONS_PAGE
from agent_ledger_sdk.local.server import BackgroundServer
from agent_ledger_sdk.local.store.sql import SessionSearch

from .ledger_fixtures import FLAT_PRICES, backend_ledger
from .subprocesses import free_port

pytestmark = pytest.mark.integration

ledger = backend_ledger(FLAT_PRICES)  # test/flat: $1 per million tokens, in and out: N tokens cost N µ$
MICRO = Decimal("0.000001")


# -- reading HTML ------------------------------------------------------------------------------------

_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
_COMPOUND = re.compile(r"""([a-z0-9]+)|#([\w-]+)|\.([\w-]+)|\[([\w-]+)(?:=(?:"([^"]*)"|([^\]]*)))?\]""")


class Node:
    """An element of a parsed page."""

    def __init__(self, tag: str, attrs: dict[str, str], parent: Optional[Node]) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Union[Node, str]] = []

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    @property
    def words(self) -> str:
        return " ".join(self.text.split())

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def pre(self) -> str:
        """The text of a ``<pre>`` as a browser shows it (without the newline right after the tag)."""
        text = self.text
        return text[1:] if text.startswith("\n") else text

    def _all(self) -> Iterator[Node]:
        for child in self.children:
            if isinstance(child, Node):
                yield child
                yield from child._all()

    @staticmethod
    def _matches(node: Node, compound: str) -> bool:
        for tag, ident, css, attr, quoted, bare in _COMPOUND.findall(compound):
            if tag and node.tag != tag:
                return False
            if ident and node.attrs.get("id") != ident:
                return False
            if css and css not in node.classes:
                return False
            if attr:
                value = quoted or bare
                if attr not in node.attrs or (("=" in compound) and value and node.attrs[attr] != value):
                    return False
        return True

    def select(self, selector: str) -> list[Node]:
        """Descendants matching a small CSS selector: ``tag#id.class[attr="value"]``, separated by spaces."""
        parts = re.findall(r'(?:[^\s\["]|\[[^\]]*\])+', selector)
        found = []
        for node in self._all():
            if not self._matches(node, parts[-1]):
                continue
            wanted, up = len(parts) - 2, node.parent
            while wanted >= 0 and up is not None and up is not self.parent:
                if self._matches(up, parts[wanted]):
                    wanted -= 1
                up = up.parent
            if wanted < 0:
                found.append(node)
        return found

    def one(self, selector: str) -> Node:
        found = self.select(selector)
        assert len(found) == 1, f"{len(found)} elements match {selector!r}"
        return found[0]


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = self.current = Node("#document", {}, None)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, Optional[str]]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(node)
        if tag not in _VOID:
            self.current = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, Optional[str]]]) -> None:
        self.current.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.current))

    def handle_endtag(self, tag: str) -> None:
        node: Optional[Node] = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.children.append(data)


def parse(html: str) -> Node:
    parser = _Parser()
    parser.feed(html)
    parser.close()
    return parser.root


def page(web: httpx.Client, path: str, expect: int = 200, **params: Any) -> Node:
    response = web.get(path, params=params or None)
    assert response.status_code == expect, (path, response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("text/html")
    return parse(response.text)


def shown_usd(text: str) -> Decimal:
    match = re.fullmatch(r"\s*\$([0-9][0-9,]*(?:\.[0-9]+)?)\s*", text)
    assert match, f"not an amount: {text!r}"
    return Decimal(match.group(1).replace(",", ""))


# -- recording ----------------------------------------------------------------------------------------


@pytest.fixture
def api(ledger: LocalLedger) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ledger.url, headers={"x-api-key": ledger.api_key}, timeout=60) as client:
        yield client


@pytest.fixture
def web(ledger: LocalLedger) -> Iterator[httpx.Client]:
    """A browser's view: no API key, cookies kept, redirects not followed."""
    with httpx.Client(base_url=ledger.url, timeout=60) as client:
        yield client


def start(api: httpx.Client, agent: str, **context: Any) -> str:
    response = api.post("/v1/sessions", json={"agentName": agent, **context})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def log(api: httpx.Client, session_id: str, *events: dict[str, Any], status: int = 202) -> httpx.Response:
    response = api.post("/v1/events", json={"sessionId": session_id, "events": list(events)})
    assert response.status_code == status, response.text
    return response


def end(api: httpx.Client, session_id: str, status: str = "success", error: Optional[str] = None) -> None:
    response = api.post(f"/v1/sessions/{session_id}/end", json={"status": status, "errorMessage": error})
    assert response.status_code == 200, response.text


def llm(
    step: int, prompt: Any = "Answer.", response: str = "Done.", tokens: tuple[int, int] = (100, 50), **extra: Any
) -> dict[str, Any]:
    """An llm_call of test/flat: it costs (tokens in + out) millionths of a dollar."""
    return {
        "type": "llm_call",
        "stepIndex": step,
        "provider": "test",
        "model": "flat",
        "prompt": prompt,
        "response": response,
        "tokensIn": tokens[0],
        "tokensOut": tokens[1],
        "latencyMs": 250,
        **extra,
    }


def run_of(api: httpx.Client, agent: str, *events: dict[str, Any], status: str = "success", **context: Any) -> str:
    session_id = start(api, agent, **context)
    if events:
        log(api, session_id, *events)
    end(api, session_id, status)
    return session_id


def session_rows(root: Node) -> list[Node]:
    return root.select("table#sessions tbody tr[data-session-id]")


def listed(web: httpx.Client, **params: Any) -> list[str]:
    return [row.attrs["data-session-id"] for row in session_rows(page(web, "/", **params))]


# -- every page ------------------------------------------------------------------------------------------


def test_every_page_has_the_promised_frame_and_headers(api: httpx.Client, web: httpx.Client) -> None:
    first = run_of(api, "frame-bot", llm(0))
    second = run_of(api, "frame-bot", llm(0, prompt="Answer again."))
    for path in ("/", f"/sessions/{second}", f"/compare?a={first}&b={second}", "/costs", "/budgets"):
        response = web.get(path)
        assert response.status_code == 200, (path, response.text[:300])
        root = parse(response.text)
        assert root.one("head title").text.startswith("Agent Ledger")
        assert len(root.select("main")) == 1
        links = {a.words: a.attrs["href"] for a in root.one("nav").select("a")}
        assert links == {"Sessions": "/", "Costs": "/costs", "Budgets": "/budgets"}
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"
        # everything it loads is the server's own
        for element in root.select("script") + root.select("link"):
            source = element.attrs.get("src") or element.attrs.get("href") or ""
            assert source.startswith("/static/"), source


def test_static_assets_ship_with_the_package(web: httpx.Client) -> None:
    for path, kind in (("dashboard.css", "text/css"), ("dashboard.js", "javascript"), ("favicon.svg", "image/svg")):
        response = web.get(f"/static/{path}")
        assert response.status_code == 200 and kind in response.headers["content-type"], path
    assert web.get("/static/nothing.css").status_code == 404
    assert web.get("/static/../templates/base.html").status_code == 404


def test_an_unknown_session_is_a_404_page(web: httpx.Client) -> None:
    root = page(web, "/sessions/no-such-session", expect=404)
    assert "no-such-session" in root.one("main").words


# -- the sessions list ----------------------------------------------------------------------------------


def test_the_list_shows_each_session_newest_first_with_its_figures(api: httpx.Client, web: httpx.Client) -> None:
    older = run_of(api, "figures-bot", llm(0, tokens=(1_000, 200)), userId="user-7", tags=["prod", "eu"])
    newer = start(api, "figures-bot")
    log(api, newer, llm(0), llm(1), {"type": "tool_call", "stepIndex": 2, "toolName": "search", "toolInput": {}})
    assert listed(web, agent="figures-bot") == [newer, older]
    rows = {row.attrs["data-session-id"]: row for row in session_rows(page(web, "/", agent="figures-bot"))}
    row = rows[older]
    assert row.one("td.agent").words == "figures-bot"
    assert row.one("td.status").words == "success"
    assert shown_usd(row.one("td.cost").words) == Decimal("0.0012")
    assert row.one("td.cost").attrs["title"] == "exactly $0.0012"
    assert row.one("td.tokens").words == "1,200"
    assert row.one("td.llm-calls").words == "1"
    assert row.one("td.user").words == "user-7"
    assert [t.words for t in row.select("td.tags .tag")] == ["prod", "eu"]
    assert row.one("a.session-link").attrs["href"] == f"/sessions/{older}"
    assert rows[newer].one("td.status").words == "running"
    assert rows[newer].one("td.llm-calls").words == "2"


def test_the_filters_narrow_the_list(api: httpx.Client, web: httpx.Client) -> None:
    cheap = run_of(api, "filter-bot", llm(0, tokens=(10, 0)), userId="ada", tags=["blue"])
    costly = run_of(api, "filter-bot", llm(0, tokens=(50_000, 0)), userId="bob", tags=["red", "blue"])
    failed = run_of(api, "filter-bot", llm(0, tokens=(20, 0)), status="error", userId="ada")
    running = start(api, "filter-bot", userId="cy")
    other = run_of(api, "filter-other-bot", llm(0, tokens=(90_000, 0)), userId="ada")
    assert listed(web, agent="filter-bot") == [running, failed, costly, cheap]
    assert listed(web, agent="filter-bot", status="error") == [failed]
    assert listed(web, agent="filter-bot", status="running") == [running]
    assert listed(web, user="ada") == [other, failed, cheap]
    assert listed(web, agent="filter-bot", tag="blue") == [costly, cheap]
    assert listed(web, tag="red") == [costly]
    assert listed(web, agent="filter-bot", min_cost="0.01") == [costly]
    assert listed(web, min_cost="0.045", user="ada") == [other]
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert listed(web, agent="filter-bot", since=today) == [running, failed, costly, cheap]
    assert listed(web, agent="filter-bot", until=today) == [running, failed, costly, cheap]  # a date: that whole day
    assert listed(web, agent="filter-bot", until="2000-01-01") == []
    assert listed(web, agent="filter-bot", since="2999-01-01T00:00") == []
    # the form keeps what was asked
    form = page(web, "/", agent="filter-bot", status="error", min_cost="0.5").one("form#filters")
    assert form.attrs["method"] == "get"
    assert form.one('input[name="agent"]').attrs["value"] == "filter-bot"
    assert form.one('input[name="min_cost"]').attrs["value"] == "0.5"
    assert form.one('select[name="status"] option[selected]').attrs["value"] == "error"
    assert [o.attrs["value"] for o in form.select('select[name="status"] option')] == [
        "",
        "running",
        "success",
        "error",
    ]
    assert form.one("button[type=submit]").words == "Filter"
    for name in ("since", "until", "user", "tag", "q"):
        assert form.select(f'input[name="{name}"]'), name


def test_a_filter_that_makes_no_sense_is_said_and_ignored(web: httpx.Client) -> None:
    root = page(web, "/", status="sleeping", min_cost="-1", since="yesterday")
    errors = root.one(".errors").words
    assert "Status must be one of" in errors and "Minimum cost" in errors and "Since must be" in errors


def test_the_minimum_cost_is_compared_exactly(api: httpx.Client, web: httpx.Client) -> None:
    exactly = run_of(api, "exact-cost-bot", llm(0, tokens=(60, 40)))  # $0.0001
    assert listed(web, agent="exact-cost-bot", min_cost="0.0001") == [exactly]
    # More than $0.0001 by less than a float can tell: not at least that much.
    assert listed(web, agent="exact-cost-bot", min_cost="0.00010000000000000000001") == []
    assert listed(web, agent="exact-cost-bot", min_cost="0.00009999999999999999999") == [exactly]


def test_text_search_finds_what_a_prompt_or_an_output_said(api: httpx.Client, web: httpx.Client) -> None:
    said = run_of(api, "search-bot", llm(0, prompt='Where is "parcel ZX-81"?\nPlease help.'))
    answered = run_of(api, "search-bot", llm(0, response="Your Parcel zx-81 left the depot."))
    tooled = run_of(
        api, "search-bot", {"type": "tool_call", "stepIndex": 0, "toolName": "t", "toolInput": {"q": "zx-81 100%"}}
    )
    run_of(api, "search-bot", llm(0, prompt="Nothing here."))
    assert listed(web, q="zx-81") == [tooled, answered, said]  # any case, prompts, outputs, tool inputs
    assert listed(web, q='"parcel ZX-81"?\nPlease') == [said]  # quotes and a newline, as written
    assert listed(web, q="100%") == [tooled]  # LIKE's wildcards are matched as themselves
    assert listed(web, q="zx_81") == []
    root = page(web, "/", q="zx-81", agent="search-bot")
    assert "Searched the events of 4 sessions" in root.one("#search-note").words


def test_a_search_stops_after_its_time_and_goes_on_from_there(
    api: httpx.Client, ledger: LocalLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "SEARCH_BATCH", 1)  # a session's events at a time
    wanted = run_of(api, "slow-search-bot", llm(0, prompt="needle-5521"))
    for _ in range(3):
        run_of(api, "slow-search-bot", llm(0))
    where = SessionSearch(workspace=ledger.workspace, agent_name="slow-search-bot")
    found = ledger.service.find_sessions(where, 10, text="needle-5521", search_seconds=0)
    assert found["sessions"] == [] and found["searched"]["complete"] is False
    seen = 0
    while not found["sessions"]:
        seen += 1
        assert found["nextCursor"] is not None and seen < 10
        where = SessionSearch(workspace=ledger.workspace, agent_name="slow-search-bot", before_seq=found["nextCursor"])
        found = ledger.service.find_sessions(where, 10, text="needle-5521", search_seconds=0)
    assert [s["id"] for s in found["sessions"]] == [wanted]


def test_paging_reaches_every_session_once_each_way(api: httpx.Client, web: httpx.Client) -> None:
    made = [run_of(api, "pager-bot") for _ in range(SESSIONS_PAGE * 2 + 7)]
    seen: list[str] = []
    root = page(web, "/", agent="pager-bot")
    pages = [root]
    while True:
        seen.extend(row.attrs["data-session-id"] for row in session_rows(root))
        following = root.select('a[rel="next"]')
        if not following:
            break
        href = following[0].attrs["href"]
        assert "cursor=" in href and "offset" not in href and "agent=pager-bot" in href
        root = parse(web.get(href).text)
        pages.append(root)
    assert seen == made[::-1]  # every one, once, newest first
    assert len(pages) == 3
    # and back to the newest, a page at a time
    back: list[str] = []
    root = pages[-1]
    while root.select('a[rel="prev"]'):
        root = parse(web.get(root.one('a[rel="prev"]').attrs["href"]).text)
        back = [row.attrs["data-session-id"] for row in session_rows(root)] + back
    assert back == made[::-1][: len(back)] and len(back) == SESSIONS_PAGE * 2


def test_new_sessions_come_from_the_live_endpoint(api: httpx.Client, web: httpx.Client) -> None:
    before = run_of(api, "live-bot")
    table = page(web, "/", agent="live-bot").one("table#sessions")
    live, after = table.attrs["data-live"], table.attrs["data-after"]
    assert live.startswith("/live/sessions?") and "agent=live-bot" in live
    assert web.get(f"{live}&after={after}").json()["count"] == 0
    run_of(api, "someone-else-bot")
    fresh = start(api, "live-bot")
    found = web.get(f"{live}&after={after}").json()
    assert found["count"] == 1
    rows = session_rows(parse(f"<table id='sessions'><tbody>{found['html']}</tbody></table>"))
    assert [row.attrs["data-session-id"] for row in rows] == [fresh]
    assert (
        rows[0].one("td.agent").words == "live-bot"
        and rows[0].one("a.session-link").attrs["href"] == f"/sessions/{fresh}"
    )
    assert web.get(f"{live}&after={found['after']}").json()["count"] == 0
    assert before not in found["html"]


# -- a session ---------------------------------------------------------------------------------------------------


def test_a_session_shows_its_steps_as_a_tree_with_everything_they_said(api: httpx.Client, web: httpx.Client) -> None:
    long_prompt = "Summarise:\n" + "\n".join(f"line {n}: " + "word " * 30 for n in range(200))
    parent = start(api, "tree-bot", userId="user-9", tags=["prod"])
    child = run_of(api, "tree-helper-bot", llm(0), parentSessionId=parent)
    log(
        api,
        parent,
        {
            "type": "tool_call",
            "stepIndex": 0,
            "toolName": "lookup",
            "toolInput": {"order": 1042, "deep": {"a": [1, 2]}},
            "spanId": "t0",
            "startedAt": "2026-03-01T10:00:00.000Z",
        },
        llm(
            1,
            prompt=long_prompt,
            response='{"answer": 42, "why": "because"}',
            tokens=(1_000, 10),
            cacheReadTokens=600,
            cacheWriteTokens=100,
            reasoningTokens=4,
            parentSpanId="t0",
            spanId="l1",
            startedAt="2026-03-01T10:00:00.100Z",
        ),
        {
            "type": "tool_result",
            "stepIndex": 0,
            "toolName": "lookup",
            "toolOutput": {"error": "boom", "errorType": "KeyError"},
            "latencyMs": 420,
            "spanId": "t0",
            "startedAt": "2026-03-01T10:00:00.000Z",
        },
        {
            "type": "llm_call",
            "stepIndex": 2,
            "provider": "acme",
            "model": "unknown-9",
            "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            "response": "Hello",
            "tokensIn": 5,
            "tokensOut": 2,
            "latencyMs": 30,
        },
    )
    end(api, parent, "error", "lookup failed")
    root = page(web, f"/sessions/{parent}")
    assert "tree-bot" in root.one("h1").words
    steps = root.select("section#tree details.step")
    assert [(s.attrs["data-step-index"], s.attrs["data-type"]) for s in steps] == [
        ("0", "tool_call"),
        ("0", "tool_result"),
        ("1", "llm_call"),
        ("2", "llm_call"),
    ]
    tool, result, call, unpriced = steps
    assert "depth-1" in call.classes and "depth-0" in tool.classes  # under the tool's span
    assert '"order": 1042' in tool.one("pre.tool-input").text  # JSON, pretty-printed
    assert '"errorType": "KeyError"' in result.one("pre.tool-output").text and "error" in result.classes
    assert result.one("summary .latency").words == "420 ms"
    assert call.one("pre.prompt").pre() == long_prompt  # all of it
    assert call.one("pre.response").pre() == '{\n  "answer": 42,\n  "why": "because"\n}'
    summary = call.one("summary")
    assert summary.one(".type").words == "llm_call" and summary.one(".name").words == "test/flat"
    assert summary.one(".tokens").words == "1,000 → 10 tokens" and summary.one(".latency").words == "250 ms"
    assert shown_usd(summary.one(".cost").words) == Decimal("0.00101")
    assert "600 read from the cache" in call.one("dl.facts").words and "4 reasoning" in call.one("dl.facts").words
    assert "unpriced" in unpriced.classes and unpriced.one("summary .cost").words == "unpriced"
    assert unpriced.one("pre.prompt").pre() == "[system]\nBe brief.\n\n[user]\nHi"
    # the waterfall: a bar per step that says when it started
    bars = root.select("svg#waterfall rect")
    assert len(bars) == 3 and all(bar.one("title").text for bar in bars)
    # the totals, over every step
    totals = root.one("dl#totals")
    assert shown_usd(totals.one("dd.cost").words) == Decimal("0.00101")
    assert totals.one("dd.llm-calls").words == "2" and totals.one("dd.tool-calls").words == "1"
    assert (
        totals.one("dd.tokens-in").words.startswith("1,005")
        and "600 read from the cache" in totals.one("dd.tokens-in").words
    )
    assert totals.one("dd.latency").words == "700 ms"  # 250 + 420 + 30: this session's, not its child's
    assert totals.one("dd.unpriced-count").words.startswith("1 call")
    assert totals.one("dd.errors-count").words == "1"
    assert "lookup failed" in root.one(".session-error").words
    # its sub-agent, and the child's way back
    assert root.one("section#sub-agents a").attrs["href"] == f"/sessions/{child}"
    assert f"/sessions/{parent}" in {a.attrs["href"] for a in page(web, f"/sessions/{child}").select("ul.links a")}


def test_a_prompt_is_shown_escaped(api: httpx.Client, web: httpx.Client) -> None:
    attack = '<script>alert("owned")</script><img src=x onerror=alert(1)>'
    session_id = run_of(
        api, "escape-bot", llm(0, prompt=attack, response="</pre><b>bold</b>"), userId="<i>u</i>", tags=["<t>"]
    )
    for path in (f"/sessions/{session_id}", "/?agent=escape-bot", f"/compare?a={session_id}&b={session_id}"):
        html = web.get(path).text
        assert "<script>alert" not in html and "<img src=x" not in html and "<b>bold" not in html and "<i>u" not in html
    html = web.get(f"/sessions/{session_id}").text
    assert "&lt;script&gt;alert(&#34;owned&#34;)&lt;/script&gt;" in html
    assert parse(html).one("pre.prompt").pre() == attack


def test_the_budget_guardrail_marks_the_step_over_budget(
    api: httpx.Client, web: httpx.Client, ledger: LocalLedger
) -> None:
    ledger.set_budget("guarded-bot", Decimal("0.0001"))
    try:
        session_id = start(api, "guarded-bot")
        log(api, session_id, llm(0, tokens=(60, 0)), llm(1, tokens=(60, 0)), status=429)
        steps = page(web, f"/sessions/{session_id}").select("section#tree details.step")
        assert ["over-budget" in s.classes for s in steps] == [False, True]
        assert steps[1].one("summary .flag.over-budget").words == "over budget"
        root = page(web, f"/sessions/{session_id}")
        assert root.one("dl#totals dd.over-budget-count").words == "1 call"
        refusals = page(web, "/budgets").one("section#refusals")
        first = refusals.select("tbody tr")[0]
        assert "guarded-bot" in first.words and "test/flat" in first.words
        assert first.one("a").attrs["href"] == f"/sessions/{session_id}"
        assert 'data-session-id="' + session_id in web.get("/?agent=guarded-bot").text
        row = session_rows(page(web, "/", agent="guarded-bot"))[0]
        assert "over-budget" in row.classes and row.one("td.flags").words == "1 over budget"
    finally:
        ledger.set_budget("guarded-bot", None)


def test_a_call_refused_before_it_ran_shows_in_the_recent_refusals(
    api: httpx.Client, web: httpx.Client, ledger: LocalLedger
) -> None:
    ledger.set_budget("reserving-bot", Decimal("0.0001"))
    try:
        session_id = start(api, "reserving-bot")
        refused = api.post(
            "/v1/reservations",
            json={"sessionId": session_id, "provider": "test", "model": "flat", "maxCostUsd": 0.5},
        )
        assert refused.status_code == 429, refused.text
        rows = page(web, "/budgets").one("section#refusals").select("tbody tr")
        (row,) = [r for r in rows if "refused-before-run" in r.classes and session_id[:8] in r.words]
        assert "refused before it ran (agent-daily)" in row.words
        assert "reserving-bot" in row.words and "test/flat" in row.words and "$0.5" in row.words
        assert "would be exceeded" in row.attrs["title"]
        assert row.one("a").attrs["href"] == f"/sessions/{session_id}"
    finally:
        ledger.set_budget("reserving-bot", None)


def test_a_session_of_ten_thousand_steps_is_shown_a_page_at_a_time(api: httpx.Client, web: httpx.Client) -> None:
    session_id = start(api, "huge-bot")
    log(
        api,
        session_id,
        *(llm(n, prompt=f"step {n}", tokens=(1, 1), startedAt="2026-03-01T10:00:00.000Z") for n in range(10_000)),
    )
    began = time.perf_counter()
    response = web.get(f"/sessions/{session_id}")
    took = time.perf_counter() - began
    root = parse(response.text)
    steps = root.select("section#tree details.step")
    assert [s.attrs["data-step-index"] for s in steps] == [str(n) for n in range(EVENTS_PAGE)]
    assert len(root.select("svg#waterfall rect")) == EVENTS_PAGE
    assert root.one("dl#totals dd.events").words == "10,000" and shown_usd(
        root.one("dl#totals dd.cost").words
    ) == Decimal("0.02")
    assert len(response.content) < 1_000_000 and took < 5, (len(response.content), took)
    second = parse(web.get(root.one('a[rel="next"]').attrs["href"]).text)
    assert [s.attrs["data-step-index"] for s in second.select("section#tree details.step")] == [
        str(n) for n in range(EVENTS_PAGE, 2 * EVENTS_PAGE)
    ]
    assert page(web, f"/sessions/{session_id}", events="not-a-cursor", expect=400)


# -- compare ------------------------------------------------------------------------------------------------------


def test_two_runs_compare_step_by_step(api: httpx.Client, web: httpx.Client) -> None:
    first = run_of(
        api,
        "compare-bot",
        llm(0, prompt="Write to Alice about order 1042.", response="Dear Alice,", tokens=(100, 10)),
        {"type": "tool_call", "stepIndex": 1, "toolName": "send", "toolInput": {"to": "alice"}},
    )
    second = run_of(
        api,
        "compare-bot",
        llm(0, prompt="Write to Bob about order 1042.", response="Dear Alice,", tokens=(100, 30)),
        {"type": "tool_call", "stepIndex": 1, "toolName": "lookup", "toolInput": {}},
        {"type": "tool_call", "stepIndex": 2, "toolName": "send", "toolInput": {"to": "bob"}},
    )
    link = page(web, f"/sessions/{second}").one("a#compare-previous")
    assert link.attrs["href"] == f"/compare?a={first}&b={second}"
    assert not page(web, f"/sessions/{first}").select("a#compare-previous")  # the agent's first run
    root = page(web, link.attrs["href"])
    rows = root.select("table#comparison tr.step")
    assert [("only-b" in r.classes, "only-a" in r.classes) for r in rows] == [
        (False, False),
        (True, False),
        (False, False),
    ]
    prompt = rows[0].one("div.diff.prompt")
    assert [d.text for d in prompt.select("del")] == ["Alice"] and [i.text for i in prompt.select("ins")] == ["Bob"]
    assert not rows[0].select("div.diff.response")  # the same response: no diff
    assert rows[0].one("td.delta.tokens").words == "+20" and rows[0].one("td.delta.cost").words == "+$0.000020"
    assert [d.text for d in rows[2].select("div.diff del")] == ["alice"]
    totals = root.one("dl#totals")
    assert "Δ +$0.000020" in totals.one(".cost").words and "Δ +1" in totals.one(".events").words
    assert page(web, "/compare", a=first, expect=400)
    assert page(web, "/compare", a=first, b="nope", expect=404)


# -- costs -------------------------------------------------------------------------------------------------------


def test_costs_are_the_exact_sums_per_day_agent_model_and_user(
    api: httpx.Client, web: httpx.Client, ledger: LocalLedger
) -> None:
    today = time.strftime("%Y-%m-%d", time.gmtime())
    before = page(web, "/costs", since=today, until=today)
    spent_before = (
        Decimal(before.one(f'svg#daily-chart rect[data-day="{today}"]').attrs["data-cost"])
        if before.select(f'svg#daily-chart rect[data-day="{today}"]')
        else Decimal(0)
    )
    run_of(
        api,
        "costs-a-bot",
        llm(0, tokens=(1_234, 567), cacheReadTokens=1_000, cacheWriteTokens=34, reasoningTokens=7),
        userId="costs-user",
    )
    run_of(api, "costs-a-bot", llm(0, tokens=(3, 0)), llm(1, tokens=(0, 1)))
    run_of(
        api,
        "costs-b-bot",
        {
            "type": "llm_call",
            "stepIndex": 0,
            "provider": "acme",
            "model": "unpriced-1",
            "tokensIn": 10,
            "tokensOut": 10,
        },
        userId="costs-user",
    )
    root = page(web, "/costs", since=today, until=today)
    form = root.one("form#range")
    assert form.attrs["method"] == "get"
    assert {i.attrs["name"]: i.attrs["type"] for i in form.select("input")} == {"since": "date", "until": "date"}
    (bar,) = root.select(f'svg#daily-chart rect[data-day="{today}"]')
    assert Decimal(bar.attrs["data-cost"]) - spent_before == Decimal("0.001805")  # 1801 + 3 + 1 µ$, exactly
    assert today in bar.one("title").text
    agents = {r.attrs["data-name"]: r for r in root.select("table#by-agent tbody tr[data-name]")}
    assert Decimal(agents["costs-a-bot"].one("td.cost").attrs["data-cost"]) == Decimal("0.001805")
    assert agents["costs-a-bot"].one("td.llm-calls").words == "3"
    assert agents["costs-a-bot"].one("td.tokens-in").words == "1,237"
    assert (
        agents["costs-a-bot"].one("td.cache-read").words == "1,000"
        and agents["costs-a-bot"].one("td.cache-write").words == "34"
    )
    assert agents["costs-a-bot"].one("td.reasoning").words == "7"
    assert "1 unpriced" in agents["costs-b-bot"].one("td.llm-calls").words
    models = {r.attrs["data-name"]: r for r in root.select("table#by-model tbody tr[data-name]")}
    assert "acme/unpriced-1" in models and Decimal(models["acme/unpriced-1"].one("td.cost").attrs["data-cost"]) == 0
    users = {r.attrs["data-name"]: r for r in root.select("table#by-user tbody tr[data-name]")}
    assert Decimal(users["costs-user"].one("td.cost").attrs["data-cost"]) == Decimal("0.001801")
    # what the page totals is what the sessions cost
    sessions = api.get("/v1/sessions", params={"limit": 500}).json(parse_float=Decimal)["sessions"]
    today_total = sum((Decimal(str(s["costUsd"])) for s in sessions if s["startedAt"][:10] == today), Decimal(0))
    assert Decimal(bar.attrs["data-cost"]) == today_total
    # more calls are counted on the next read
    run_of(api, "costs-a-bot", llm(0, tokens=(5, 5)))
    again = page(web, "/costs", since=today, until=today)
    assert Decimal(again.one(f'svg#daily-chart rect[data-day="{today}"]').attrs["data-cost"]) == today_total + Decimal(
        "0.00001"
    )


def test_a_backlog_of_calls_is_counted_in_the_background(
    api: httpx.Client, web: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ledger upgraded with many calls stored: /costs answers at once, says its figures are partial, and
    the rollup catches up in a thread."""
    today = time.strftime("%Y-%m-%d", time.gmtime())

    def spent() -> tuple[Decimal, bool]:
        root = page(web, "/costs", since=today, until=today)
        bars = root.select(f'svg#daily-chart rect[data-day="{today}"]')
        return (Decimal(bars[0].attrs["data-cost"]) if bars else Decimal(0)), not root.select("#catching-up")

    before, up_to_date = spent()
    assert up_to_date
    monkeypatch.setattr(service_module, "ROLLUP_BATCH", 2)
    monkeypatch.setattr(service_module, "CATCH_UP_SECONDS", 0)
    run_of(api, "backlog-bot", *(llm(n, tokens=(1, 0)) for n in range(9)))  # 9 calls of $0.000001
    partial, up_to_date = spent()
    assert not up_to_date and before < partial < before + 9 * MICRO
    deadline = time.monotonic() + 30
    while not up_to_date:
        assert time.monotonic() < deadline, "the rollup did not catch up"
        time.sleep(0.05)
        after, up_to_date = spent()
    assert after == before + 9 * MICRO


def test_a_costs_range_is_checked(web: httpx.Client) -> None:
    assert page(web, "/costs", since="2026-02-01", until="2026-01-01", expect=400)
    assert page(web, "/costs", since="2020-01-01", until="2026-01-01", expect=400)
    assert page(web, "/costs", since="January", expect=400)
    root = page(web, "/costs", since="2001-01-01", until="2001-01-31")
    assert root.select("svg#daily-chart rect") == [] and "No LLM calls" in root.one("table#by-agent").words


# -- budgets -----------------------------------------------------------------------------------------------------


def form_token(root: Node, form: str = "form#set-budget") -> str:
    return root.one(f'{form} input[name="csrf_token"]').attrs["value"]


def test_a_budget_is_set_changed_and_lifted_with_the_form(
    api: httpx.Client, web: httpx.Client, ledger: LocalLedger
) -> None:
    run_of(api, "budget-form-bot", llm(0, tokens=(150, 60)))  # $0.00021 spent today
    root = page(web, "/budgets")
    form = root.one("form#set-budget")
    assert (form.attrs["method"], form.attrs["action"]) == ("post", "/budgets")
    assert form.one("button[type=submit]").words == "Save budget"
    token = form_token(root)
    fields = {"agent": "budget-form-bot", "daily_limit_usd": "0.5", "monthly_limit_usd": "", "csrf_token": token}
    saved = web.post("/budgets", data=fields)
    assert saved.status_code == 303 and saved.headers["location"] == "/budgets"
    budgets = page(web, "/budgets")
    assert "Saved the budget of budget-form-bot" in budgets.one(".flash").words
    row = budgets.one('table#budgets tr[data-agent="budget-form-bot"]')
    assert shown_usd(row.one("td.limit").words) == Decimal("0.5")
    assert shown_usd(row.one("td.spent").words) == Decimal("0.00021")
    assert Decimal(row.one("td.remaining").attrs["data-usd"]) == Decimal("0.49979")  # exactly; it shows $0.4998
    assert row.one("td.monthly-limit").words == "-"
    assert not page(web, "/budgets").select(".flash")  # said once
    # a monthly limit added; the daily one left as it was (empty)
    assert (
        web.post(
            "/budgets", data={**fields, "daily_limit_usd": "", "monthly_limit_usd": "20", "warn_at_percent": "80"}
        ).status_code
        == 303
    )
    (budget,) = [b for b in ledger.service.budgets(ledger.workspace) if b["agentName"] == "budget-form-bot"]
    assert (budget["dailyLimitUsd"], budget["monthlyLimitUsd"], budget["warnAtPercent"]) == (
        Decimal("0.5"),
        Decimal(20),
        Decimal(80),
    )
    # nonsense changes nothing, and says why
    refused = web.post("/budgets", data={**fields, "daily_limit_usd": "-3"})
    assert refused.status_code == 400 and "must be a number of US dollars" in parse(refused.text).one(".errors").words
    assert parse(refused.text).one('form#set-budget input[name="daily_limit_usd"]').attrs["value"] == "-3"
    # lifted
    assert web.post("/budgets", data={"agent": "budget-form-bot", "lift": "1", "csrf_token": token}).status_code == 303
    (budget,) = [b for b in ledger.service.budgets(ledger.workspace) if b["agentName"] == "budget-form-bot"]
    assert budget["dailyLimitUsd"] is None and budget["monthlyLimitUsd"] is None
    assert page(web, "/budgets").one('tr[data-agent="budget-form-bot"] td.limit').words == "-"


def test_the_workspace_budget_has_its_row_and_form(web: httpx.Client, ledger: LocalLedger) -> None:
    root = page(web, "/budgets")
    token = form_token(root, "form#set-workspace-budget")
    try:
        saved = web.post("/budgets", data={"scope": "workspace", "daily_limit_usd": "12.5", "csrf_token": token})
        assert saved.status_code == 303
        row = page(web, "/budgets").one(f'table#budgets tr[data-workspace="{ledger.workspace}"]')
        assert shown_usd(row.one("td.limit").words) == Decimal("12.5")
        assert web.post("/budgets", data={"scope": "workspace", "lift": "1", "csrf_token": token}).status_code == 303
        assert page(web, "/budgets").one(f'tr[data-workspace="{ledger.workspace}"] td.limit').words == "-"
    finally:
        ledger.set_workspace_budget(None)


def test_a_budget_form_needs_its_token_and_this_site(web: httpx.Client, ledger: LocalLedger) -> None:
    fields = {"agent": "csrf-bot", "daily_limit_usd": "1"}
    fresh = httpx.Client(base_url=web.base_url)  # no cookie yet: no token can match
    assert fresh.post("/budgets", data={**fields, "csrf_token": "x" * 43}).status_code == 403
    fresh.close()
    token = form_token(page(web, "/budgets"))
    assert web.post("/budgets", data=fields).status_code == 403
    assert web.post("/budgets", data={**fields, "csrf_token": token + "x"}).status_code == 403
    evil = web.post("/budgets", data={**fields, "csrf_token": token}, headers={"origin": "http://evil.example"})
    assert evil.status_code == 403 and "another site" in evil.text
    assert (
        web.post(
            "/budgets", data={**fields, "csrf_token": token}, headers={"referer": "http://evil.example/x"}
        ).status_code
        == 403
    )
    assert [b for b in ledger.service.budgets(ledger.workspace) if b["agentName"] == "csrf-bot"] == []
    same_site = web.post(
        "/budgets", data={**fields, "csrf_token": token}, headers={"origin": str(web.base_url).rstrip("/")}
    )
    assert same_site.status_code == 303
    ledger.set_budget("csrf-bot", None)


def test_the_budgets_page_shows_spend_and_reservations_in_flight(
    api: httpx.Client, web: httpx.Client, ledger: LocalLedger
) -> None:
    ledger.set_budget("reserving-bot", 1)
    try:
        session_id = start(api, "reserving-bot")
        held = api.post(
            "/v1/reservations", json={"sessionId": session_id, "provider": "test", "model": "flat", "maxCostUsd": 0.25}
        )
        assert held.status_code == 201, held.text
        root = page(web, "/budgets")
        row = root.one('table#budgets tr[data-agent="reserving-bot"]')
        assert shown_usd(row.one("td.reserved").words) == Decimal("0.25")
        assert shown_usd(row.one("td.remaining").words) == Decimal("0.75")
        assert held.json()["id"] in root.one("section#reservations").words
    finally:
        ledger.set_budget("reserving-bot", None)


# -- secrets and who sees what ------------------------------------------------------------------------------------


def test_no_page_shows_an_api_key(api: httpx.Client, web: httpx.Client, ledger: LocalLedger) -> None:
    session_id = run_of(api, "secretive-bot", llm(0))
    keys = [ledger.api_key, read_local_key()]
    secrets = [key for key in keys if key] + [key.split("_", 3)[3] for key in keys if key]  # and their secret part
    paths = ["/", f"/sessions/{session_id}", f"/compare?a={session_id}&b={session_id}", "/costs", "/budgets", "/login"]
    for path in paths:
        response = web.get(path, follow_redirects=True)
        shown = response.text + " ".join(f"{k}={v}" for k, v in response.headers.items())
        assert not any(secret in shown for secret in secrets), path


def test_without_a_login_the_dashboard_answers_only_on_this_machine(web: httpx.Client) -> None:
    assert web.get("/").status_code == 200
    assert web.get("/login").status_code == 303  # nothing to log in to
    for host in ("evil.example", "evil.example:80", "10.0.0.7"):  # a DNS name made to point here, a LAN address
        response = web.get("/", headers={"host": host})
        assert response.status_code == 303 and response.headers["location"] == "/login", host
    assert web.get("/", headers={"host": "localhost"}).status_code == 200
    assert all(
        map(is_loopback, ("127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost", "app.localhost", "::ffff:127.0.0.1"))
    )
    assert not any(map(is_loopback, ("0.0.0.0", "::", "10.1.2.3", "example.com", "", "127.0.0.1.example.com")))


@pytest.fixture
def login_server(ledger: LocalLedger) -> Iterator[str]:
    """The same ledger served as ``serve --host 0.0.0.0`` serves it: the dashboard asks for a key."""
    server = BackgroundServer(create_app(ledger.service, dashboard_login=True)).start()
    try:
        yield server.url
    finally:
        server.stop()


def test_beyond_loopback_a_key_logs_in_and_sees_only_its_workspace(
    api: httpx.Client, ledger: LocalLedger, login_server: str
) -> None:
    mine = run_of(api, "default-workspace-bot", llm(0))
    other_key = ledger.service.create_key("dashboard-test", "elsewhere")
    with httpx.Client(base_url=ledger.url, headers={"x-api-key": other_key.secret}) as theirs:
        theirs_id = start(theirs, "elsewhere-bot")
    with httpx.Client(base_url=login_server, timeout=30) as browser:
        gone = browser.get(f"/sessions/{theirs_id}")
        assert gone.status_code == 303 and gone.headers["location"] == f"/login?next=%2Fsessions%2F{theirs_id}"
        assert browser.get("/budgets").status_code == 303 and browser.get("/live/sessions").status_code == 401
        login = page(browser, "/login")
        form = login.one("form#login")
        assert form.attrs["method"] == "post" and form.one('input[name="api_key"]').attrs["type"] == "password"
        wrong = browser.post("/login", data={"api_key": other_key.secret + "x"})
        assert wrong.status_code == 401 and LOGIN_COOKIE not in wrong.headers.get("set-cookie", "")
        assert (
            browser.post(
                "/login", data={"api_key": other_key.secret}, headers={"origin": "http://evil.example"}
            ).status_code
            == 403
        )
        done = browser.post("/login", data={"api_key": other_key.secret, "next": f"/sessions/{theirs_id}"})
        assert done.status_code == 303 and done.headers["location"] == f"/sessions/{theirs_id}"
        cookie = done.headers["set-cookie"]
        assert cookie.startswith(f"{LOGIN_COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert other_key.secret not in cookie and other_key.secret.split("_", 3)[3] not in cookie
        assert "elsewhere-bot" in page(browser, f"/sessions/{theirs_id}").one("h1").words
        shown = listed(browser)
        assert theirs_id in shown and mine not in shown  # only the key's workspace
        assert page(browser, f"/sessions/{mine}", expect=404)
        assert "elsewhere" in page(browser, "/budgets").one("nav .workspace").words
        assert browser.post("/login", data={"api_key": "x", "next": "//evil.example/"}).status_code == 401
        again = browser.post("/login", data={"api_key": other_key.secret, "next": "//evil.example/"})
        assert again.headers["location"] == "/"  # never sent to another site
        # log out: a form like the others
        token = page(browser, "/").one('form.logout input[name="csrf_token"]').attrs["value"]
        assert browser.post("/logout", data={}).status_code == 403
        assert browser.post("/logout", data={"csrf_token": token}).status_code == 303
        assert browser.get("/").status_code == 303
        # a revoked key's login ends at once
        browser.post("/login", data={"api_key": other_key.secret})
        assert browser.get("/").status_code == 200
        ledger.service.revoke_key(other_key.key.id)
        assert browser.get("/").status_code == 303
    with httpx.Client(base_url=login_server) as forger:
        forger.cookies.set(LOGIN_COOKIE, "eyJ4Ijoi.bad")
        assert forger.get("/").status_code == 303


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_beyond_loopback_asks_for_a_key(tmp_path: Path, workers: int) -> None:
    """``serve --host 0.0.0.0`` (any address but loopback) asks for a key, even from this machine; so do its
    worker processes."""
    port = free_port()
    command = [str(Path(sys.executable).with_name("agent-ledger")), "serve", "--host", "0.0.0.0", "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--workers", str(workers), "--db", str(tmp_path / "l.db")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "the server did not start"
            time.sleep(0.1)
        for _ in range(3):  # whichever worker answers
            answer = httpx.get(f"http://127.0.0.1:{port}/budgets", timeout=10)
            assert answer.status_code == 303 and answer.headers["location"] == "/login?next=%2Fbudgets"
        assert 'id="login"' in httpx.get(f"http://127.0.0.1:{port}/login", timeout=10).text
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=60)
    assert f"Dashboard: http://0.0.0.0:{port}/ (asks for an API key" in out, out


def test_the_benchmark_runs(tmp_path: Path) -> None:
    """benchmarks/dashboard_bench.py, on a small ledger: every page answers (its figures are for docs)."""
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "dashboard_bench.py"
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(script), "--events", "12000", "--backend", "sqlite", "--repeat", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (figures,) = json.loads(out.read_text())
    assert figures["events"] == 12_000 and len(figures["pages"]) >= 20
    assert all(page["median_ms"] > 0 for page in figures["pages"].values())


# -- the CLI: show, like the session page ------------------------------------------------------------------------


def cli(capsys: pytest.CaptureFixture[str], db: Union[Path, str], *args: str) -> tuple[int, str, str]:
    code = cli_main([*args, "--db", str(db)])
    out, err = capsys.readouterr()
    return code, out, err


def test_show_takes_a_unique_prefix_and_full_prints_everything(
    api: httpx.Client, ledger: LocalLedger, capsys: pytest.CaptureFixture[str]
) -> None:
    long_prompt = "Please summarise the following ticket in full detail. " * 10 + "THE-END"
    session_id = run_of(
        api,
        "cli-show-bot",
        llm(0, prompt=long_prompt, response="A long answer " * 10 + "FIN"),
        {"type": "tool_call", "stepIndex": 1, "toolName": "lookup", "toolInput": {"order": "A-1", "note": "x" * 80}},
    )
    code, out, err = cli(capsys, ledger.db_path, "show", session_id[:13])
    assert code == 0, err
    assert f"Session {session_id}" in out and "THE-END" not in out  # a table, cut to fit
    code, out, err = cli(capsys, ledger.db_path, "show", session_id[:13], "--full")
    assert code == 0, err
    assert long_prompt in out and "A long answer " * 10 + "FIN" in out and '"note": "' + "x" * 80 in out
    code, out, _ = cli(capsys, ledger.db_path, "show", session_id[:13], "--json")
    assert code == 0 and f'"id":"{session_id}"' in out
    code, _, err = cli(capsys, ledger.db_path, "show", "zzzz-not-an-id")
    assert code == 1 and "not found" in err


def test_show_says_which_sessions_an_ambiguous_prefix_matches(
    api: httpx.Client, ledger: LocalLedger, capsys: pytest.CaptureFixture[str]
) -> None:
    made = [run_of(api, "prefix-bot") for _ in range(40)]
    first_chars: dict[str, list[str]] = {}
    for session_id in made:
        first_chars.setdefault(session_id[0], []).append(session_id)
    prefix, sharing = max(first_chars.items(), key=lambda item: len(item[1]))
    assert len(sharing) > 1
    code, _, err = cli(capsys, ledger.db_path, "show", prefix)
    assert code == 1
    assert f"prefix {prefix!r} matches several sessions" in err
    listed_ids = re.findall(r"[0-9a-f-]{36}", err)
    assert len(listed_ids) >= 2 and all(found.startswith(prefix) for found in listed_ids)
