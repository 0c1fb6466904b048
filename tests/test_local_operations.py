"""The ledger server as a team operates it: database work off the event loop, retention over HTTP,
paginated session reads, and the health, readiness and metrics endpoints."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest

pytest.importorskip("starlette", reason="the local ledger needs the server extra")

from agent_ledger_sdk.local import LocalLedger, run

from .ledger_fixtures import backend_ledger

pytestmark = pytest.mark.integration

ledger = backend_ledger()


@pytest.fixture
def http(ledger: LocalLedger) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ledger.url, headers={"x-api-key": ledger.api_key}, timeout=30) as client:
        yield client


def start(http: httpx.Client, agent: str = "ops-agent") -> str:
    response = http.post("/v1/sessions", json={"agentName": agent})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_a_held_write_lock_holds_up_writes_only_never_health_or_reads(tmp_path: Path) -> None:
    """The CLI (or any process) holding SQLite's write lock: /health and reads answer at once, and the
    waiting write completes when the lock is let go."""
    path = tmp_path / "locked.db"
    with (
        run(db=path) as running,
        httpx.Client(base_url=running.url, headers={"x-api-key": running.api_key}, timeout=30) as http,
    ):
        session = start(http)
        with closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")  # what a long CLI write does
            written: list[httpx.Response] = []
            writer = threading.Thread(target=lambda: written.append(http.post("/v1/sessions", json={"agentName": "w"})))
            writer.start()
            time.sleep(0.2)  # the write is now waiting for the lock, in a worker thread
            with httpx.Client(base_url=running.url, headers={"x-api-key": running.api_key}, timeout=5) as second:
                began = time.perf_counter()
                assert second.get("/health").status_code == 200
                assert second.get(f"/v1/sessions/{session}").status_code == 200
                assert second.get("/v1/sessions").status_code == 200
                waited = time.perf_counter() - began
            assert waited < 2.0, f"health and reads waited {waited:.2f} s behind a write lock"
            assert writer.is_alive() and not written
            other.execute("COMMIT")
        writer.join(10)
        assert written and written[0].status_code == 201, written


def test_a_large_session_reads_a_page_of_events_at_a_time(http: httpx.Client) -> None:
    session = start(http)
    events = [{"type": "log", "stepIndex": i, "message": "x" * 100} for i in range(1200)]
    assert http.post("/v1/events", json={"sessionId": session, "events": events}).status_code == 202
    first = http.get(f"/v1/sessions/{session}").json()
    assert len(first["events"]) == 500 and first["eventCount"] == 1200  # the default page
    seen, cursor = [], None
    while True:
        params = {"eventsLimit": 700, **({"eventsCursor": cursor} if cursor else {})}
        page = http.get(f"/v1/sessions/{session}", params=params).json()
        seen.extend(e["stepIndex"] for e in page["events"])
        cursor = page["nextEventsCursor"]
        if cursor is None:
            break
    assert seen == list(range(1200))
    for bad in ({"eventsLimit": 0}, {"eventsLimit": 10**30}, {"eventsCursor": "9" * 40}, {"eventsCursor": "x.y"}):
        answer = http.get(f"/v1/sessions/{session}", params=bad)
        assert answer.status_code == 400 and "error" in answer.json(), (bad, answer.text)


def test_delete_forgets_a_session_in_its_own_workspace_only(ledger: LocalLedger, http: httpx.Client) -> None:
    session = start(http)
    other_key = ledger.service.create_key("neighbour", "neighbours").secret
    assert http.delete(f"/v1/sessions/{session}", headers={"x-api-key": other_key}).status_code == 404
    assert http.delete(f"/v1/sessions/{session}").status_code == 204
    gone = http.get(f"/v1/sessions/{session}")
    assert gone.status_code == 404 and "not found" in gone.json()["error"]
    assert http.delete(f"/v1/sessions/{session}").status_code == 404
    late = http.post("/v1/events", json={"sessionId": session, "events": [{"type": "log"}]})
    assert late.status_code == 404


def _metric(text: str, name: str, **labels: str) -> float:
    """A sample's value in Prometheus text (0 when the series is not there yet)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    line = f"{name}{{{wanted}}} " if labels else f"{name} "
    found = [row for row in text.splitlines() if row.startswith(line)]
    assert len(found) <= 1, found
    return float(found[0].rsplit(" ", 1)[1]) if found else 0.0


def test_health_readiness_and_metrics_need_no_key_and_count_what_happened(ledger: LocalLedger) -> None:
    with httpx.Client(base_url=ledger.url) as anonymous:
        assert anonymous.get("/health").json() == {"status": "ok"}
        assert anonymous.get("/ready").json() == {"status": "ready"}
        before = anonymous.get("/metrics").text
    with httpx.Client(base_url=ledger.url, headers={"x-api-key": ledger.api_key}) as http:
        session = start(http, "metered")
        events = [{"type": "log"}, {"type": "log"}, {"type": "tool_call", "name": "t"}]
        assert http.post("/v1/events", json={"sessionId": session, "events": events}).status_code == 202
        assert http.get(f"/v1/sessions/{session}").status_code == 200
        assert http.put("/v1/budgets/metered", json={"dailyLimitUsd": 0}).status_code == 200
        refused = http.post(
            "/v1/reservations",
            json={"sessionId": session, "provider": "openai", "model": "gpt-4o-mini", "maxCostUsd": 1},
        )
        assert refused.status_code == 429
        assert refused.headers["x-request-id"]
    with httpx.Client(base_url=ledger.url) as anonymous:
        response = anonymous.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    after = response.text

    def grew(name: str, **labels: str) -> float:
        return _metric(after, name, **labels) - _metric(before, name, **labels)

    assert grew("agent_ledger_events_ingested_total", type="log") == 2
    assert grew("agent_ledger_events_ingested_total", type="tool_call") == 1
    assert grew("agent_ledger_sessions_started_total") == 1
    assert grew("agent_ledger_guardrail_refusals_total", reason="budget_exceeded") == 1
    route = "/v1/sessions/{session_id}"
    assert grew("agent_ledger_http_requests_total", method="GET", route=route, status="200") == 1
    assert f'route="/v1/sessions/{session}"' not in after  # the route template, never the raw path


def test_a_bug_answers_a_json_500_and_the_next_request_on_the_connection_works(
    ledger: LocalLedger, http: httpx.Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(workspace: str) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(ledger.service, "settings", broken)
    for _ in range(20):
        failed = http.get("/v1/settings")
        assert failed.status_code == 500
        assert "Internal error of the ledger (RuntimeError)" in failed.json()["error"]
        assert failed.headers["connection"] == "close"  # never a kept-alive socket the server then closes
        assert http.get("/v1/prices").status_code == 200
    assert "a bug" in caplog.text  # the traceback is in the server's log, not in the answer
    assert "a bug" not in failed.text


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/sessions", {"agentName": "a\x00b"}),
        ("GET", "/v1/sessions?agent=a%00b", None),
        ("GET", "/v1/sessions/a%00b", None),
        ("PUT", "/v1/budgets/a%00b", {"dailyLimitUsd": 1}),
        ("POST", "/v1/events", {"sessionId": "a\x00b", "events": [{"type": "log"}]}),
    ],
)
def test_a_nul_character_is_refused_alike_on_both_databases(
    http: httpx.Client, method: str, path: str, body: object
) -> None:
    answer = http.request(method, path, json=body)
    assert answer.status_code == 400, answer.text
    assert "U+0000" in answer.json()["error"]


def test_a_nul_in_an_error_message_is_kept_spelled_out(http: httpx.Client) -> None:
    session = start(http)
    ended = http.post(f"/v1/sessions/{session}/end", json={"status": "error", "errorMessage": "bad\x00byte"})
    assert ended.status_code == 200, ended.text
    assert http.get(f"/v1/sessions/{session}").json()["errorMessage"] == "bad\\u0000byte"
