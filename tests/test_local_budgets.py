"""Budgets of the local ledger over real HTTP: every kind, the published path's 429, nothing erased, warnings."""

from __future__ import annotations

import datetime
import json
import logging
import sqlite3
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("starlette", reason="the local ledger needs the server extra")

from agent_ledger_sdk import AgentLedgerClient, BudgetGuardrailError
from agent_ledger_sdk.local import LocalLedger
from agent_ledger_sdk.local.budgets import next_utc_midnight
from agent_ledger_sdk.local.records import PricedEvent

from .ledger_fixtures import priced_ledger, sqlite_service

pytestmark = pytest.mark.integration

PRICES = {"test/flat": {"input_per_mtok": 1.0, "output_per_mtok": 1.0}}  # N tokens cost N micro-dollars


ledger = priced_ledger(PRICES)


def exact(response: httpx.Response) -> Any:
    return json.loads(response.text, parse_float=Decimal)


def llm(step: int, tokens: int, **extra: Any) -> dict[str, Any]:
    return {
        "type": "llm_call",
        "stepIndex": step,
        "provider": "test",
        "model": "flat",
        "tokensIn": tokens,
        "tokensOut": 0,
        "prompt": "p",
        "response": "r",
        "latencyMs": 1,
        **extra,
    }


def start(http: httpx.Client, agent: str, **context: Any) -> str:
    response = http.post("/v1/sessions", json={"agentName": agent, **context})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def send(http: httpx.Client, session_id: str, *events: dict[str, Any], key: str | None = None) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else None
    return http.post("/v1/events", json={"sessionId": session_id, "events": list(events)}, headers=headers)


def midnight() -> str:
    return next_utc_midnight(datetime.datetime.now(datetime.timezone.utc)).isoformat().replace("+00:00", "Z")


# -- the published path: nothing erased ----------------------------------------------------------


def test_a_call_over_the_budget_gets_the_published_429_and_is_recorded_and_counted(
    http: httpx.Client, ledger: LocalLedger
) -> None:
    ledger.set_budget("capped", 0.0025)  # 2500 tokens of test/flat
    session_id = start(http, "capped")
    assert send(http, session_id, llm(0, 1000)).status_code == 202
    assert send(http, session_id, llm(1, 1000)).status_code == 202
    refused = send(http, session_id, llm(2, 1000))
    assert refused.status_code == 429
    body = exact(refused)
    assert body["details"] == {
        "agentName": "capped",
        "dailyLimitUsd": Decimal("0.0025"),
        "spentTodayUsd": Decimal("0.002"),
        "attemptedCostUsd": Decimal("0.001"),
        "projectedCostUsd": Decimal("0.003"),
        "remainingBudgetUsd": Decimal("0.0005"),
        "reservedUsd": 0,
        "budget": "agent-daily",
        "resetsAt": midnight(),
    }
    assert (body["budget"], body["resetsAt"]) == ("agent-daily", midnight())
    assert body["error"].startswith("Daily budget of $0.0025 for agent 'capped' would be exceeded: $0.002 spent today")
    assert "resets at" in body["error"]
    assert (body["accepted"], body["overBudgetEvents"]) == (1, [0])
    recorded = ledger.session(session_id)
    assert [(e["stepIndex"], e["overBudget"]) for e in recorded["events"]] == [(0, False), (1, False), (2, True)]
    assert (recorded["costUsd"], recorded["overBudgetEvents"]) == (Decimal("0.003"), 1)  # what really ran
    (budget,) = [b for b in ledger.service.budgets(ledger.workspace) if b["agentName"] == "capped"]
    assert (budget["spentTodayUsd"], budget["remainingBudgetUsd"]) == (Decimal("0.003"), 0)
    # The stop holds for the rest of the UTC day, even for a call that would have fitted before...
    again = send(http, session_id, llm(3, 1))
    assert again.status_code == 429
    assert exact(again)["details"]["spentTodayUsd"] == Decimal("0.003")
    # ...until the limit is raised.
    assert http.put("/v1/budgets/capped", json={"dailyLimitUsd": 0.01}).status_code == 200
    assert send(http, session_id, llm(4, 1000)).status_code == 202
    assert ledger.session(session_id)["costUsd"] == Decimal("0.004001")


def test_a_batch_with_a_call_over_the_budget_is_stored_whole_and_its_replay_is_the_same_429(
    http: httpx.Client, ledger: LocalLedger
) -> None:
    ledger.set_budget("batcher", 0.0015)
    session_id = start(http, "batcher")
    batch = [{"type": "tool_call", "stepIndex": 0, "toolName": "t", "toolInput": {}}, llm(1, 1000), llm(2, 1000)]
    batch.append(llm(3, 1000))
    first = send(http, session_id, *batch, key="over-budget-batch")
    assert first.status_code == 429
    body = exact(first)
    assert body["details"]["attemptedCostUsd"] == Decimal("0.001")  # the first call that went over: events[2]
    assert body["details"]["spentTodayUsd"] == Decimal("0.001")
    assert (body["accepted"], body["costUsd"], body["overBudgetEvents"]) == (4, Decimal("0.003"), [2, 3])
    replay = send(http, session_id, *batch, key="over-budget-batch")
    assert replay.status_code == 429
    assert replay.content == first.content
    assert replay.headers["idempotent-replayed"] == "true"
    recorded = ledger.session(session_id)
    assert [e["overBudget"] for e in recorded["events"]] == [False, False, True, True]
    assert recorded["costUsd"] == Decimal("0.003")


def test_the_published_client_path_under_32_threads_counts_every_call_and_flags_the_ones_over(
    ledger: LocalLedger,
) -> None:
    agent = "racer"
    limit = Decimal("0.0105")  # ten calls of 1000 tokens fit, the eleventh does not
    ledger.set_budget(agent, limit)
    client = ledger.client(batching=False)
    session_id = client.start_session(agent)
    accepted: list[int] = []
    refused: list[BudgetGuardrailError] = []
    barrier = threading.Barrier(32)

    def spend(thread: int) -> None:
        barrier.wait()
        for call in range(3):
            try:
                client.log_llm_call(session_id, llm(thread * 10 + call, 1000))
                accepted.append(thread)
            except BudgetGuardrailError as exc:
                refused.append(exc)

    threads = [threading.Thread(target=spend, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()
    assert (len(accepted), len(refused)) == (10, 86)
    recorded = ledger.session(session_id)
    assert len(recorded["events"]) == 96
    assert sum(1 for e in recorded["events"] if not e["overBudget"]) == 10
    assert recorded["costUsd"] == Decimal("0.096")  # the ledger shows what was really spent
    spent_when_refused = sorted(exc.details.spent_today_usd for exc in refused)
    assert spent_when_refused == [float(Decimal("0.010") + Decimal("0.001") * i) for i in range(86)]
    for exc in refused:
        details = exc.details
        assert details.attempted_cost_usd == 0.001
        assert details.projected_cost_usd == float(Decimal(str(details.spent_today_usd)) + Decimal("0.001"))
        assert details.daily_limit_usd == float(limit)
        assert details.remaining_budget_usd == float(max(limit - Decimal(str(details.spent_today_usd)), Decimal(0)))


def test_tool_events_are_never_refused(http: httpx.Client, ledger: LocalLedger) -> None:
    ledger.set_budget("zero-budget", 0)
    session_id = start(http, "zero-budget")
    assert send(http, session_id, {"type": "tool_call", "stepIndex": 0, "toolName": "t"}).status_code == 202
    assert send(http, session_id, llm(1, 1)).status_code == 429


# -- unpriced models --------------------------------------------------------------------------------


def test_an_unpriced_call_of_an_agent_with_a_budget_is_refused_with_how_to_price_it(
    http: httpx.Client, ledger: LocalLedger
) -> None:
    unbudgeted = start(http, "free-spirit")
    mystery = {**llm(0, 1000), "provider": "acme", "model": "mystery-1"}
    assert send(http, unbudgeted, mystery).status_code == 202  # no budget: recorded, flagged unpriced
    assert ledger.session(unbudgeted)["events"][0]["costStatus"] == "unpriced"

    ledger.set_budget("careful", 5)
    session_id = start(http, "careful")
    refused = send(http, session_id, {"type": "tool_call", "stepIndex": 0, "toolName": "t"}, mystery)
    assert refused.status_code == 422
    body = refused.json()
    assert body["error"].startswith("No price for model 'mystery-1' (provider 'acme')")
    assert "agent-ledger prices set acme/mystery-1 --input USD_PER_MTOK --output USD_PER_MTOK" in body["error"]
    assert '{"allowUnpricedModels": true}' in body["error"]
    assert (body["code"], body["provider"], body["model"]) == ("unpriced_model", "acme", "mystery-1")
    assert [(r["index"], r["field"]) for r in body["rejected"]] == [(1, "model")]
    assert ledger.session(session_id)["events"] == []  # the batch is refused whole

    other = ledger.service.create_key("lenient", "lenient-team").secret
    lenient = httpx.Client(base_url=ledger.url, headers={"x-api-key": other})
    assert lenient.put("/v1/budgets/careful", json={"dailyLimitUsd": 5}).status_code == 200
    allowed = lenient.put("/v1/settings", json={"allowUnpricedModels": True})
    assert allowed.json() == {"workspace": "lenient-team", "allowUnpricedModels": True}
    lenient_session = start(lenient, "careful")
    assert send(lenient, lenient_session, mystery).status_code == 202
    (event,) = lenient.get(f"/v1/sessions/{lenient_session}").json()["events"]
    assert (event["costStatus"], event["costUsd"]) == ("unpriced", 0)
    assert http.get("/v1/settings").json()["allowUnpricedModels"] is False  # another workspace's setting
    lenient.close()


def test_a_call_with_missing_usage_is_charged_an_estimate_against_the_budget(
    http: httpx.Client, ledger: LocalLedger
) -> None:
    ledger.set_budget("no-usage-capped", 0.01)
    session_id = start(http, "no-usage-capped")
    response = send(http, session_id, {**llm(0, 0), "usageMissing": True})
    assert response.status_code == 202
    assert exact(response)["costUsd"] == Decimal("0.008192")  # 4096 in and 4096 out at $1/MTok
    assert send(http, session_id, {**llm(1, 0), "usageMissing": True}).status_code == 429


# -- the other kinds of budget --------------------------------------------------------------------------


def test_a_monthly_budget_refuses_with_its_own_numbers(http: httpx.Client, ledger: LocalLedger) -> None:
    set_reply = http.put("/v1/budgets/monthly-bot", json={"monthlyLimitUsd": 0.002})
    assert set_reply.status_code == 200
    assert exact(set_reply)["monthlyLimitUsd"] == Decimal("0.002")
    session_id = start(http, "monthly-bot")
    assert send(http, session_id, llm(0, 1500)).status_code == 202
    refused = send(http, session_id, llm(1, 1000))
    assert refused.status_code == 429
    body = exact(refused)
    now = datetime.datetime.now(datetime.timezone.utc)
    first_of_next = datetime.date(now.year + now.month // 12, now.month % 12 + 1, 1).isoformat() + "T00:00:00Z"
    assert (body["budget"], body["resetsAt"]) == ("agent-monthly", first_of_next)
    assert body["details"]["dailyLimitUsd"] == Decimal("0.002")  # the published field, with this budget's limit
    assert body["details"]["spentTodayUsd"] == Decimal("0.0015")
    assert body["details"]["remainingBudgetUsd"] == Decimal("0.0005")
    assert body["error"].startswith("Monthly budget of $0.002 for agent 'monthly-bot' would be exceeded")
    assert "--monthly" in body["error"]


def test_a_workspace_budget_counts_every_agent(ledger: LocalLedger) -> None:
    key = ledger.service.create_key("shared", "shared-purse").secret
    with httpx.Client(base_url=ledger.url, headers={"x-api-key": key}) as http:
        reply = http.put("/v1/workspace-budget", json={"dailyLimitUsd": 0.0025})
        assert exact(reply)["dailyLimitUsd"] == Decimal("0.0025")
        first, second = start(http, "alpha"), start(http, "beta")
        assert send(http, first, llm(0, 1000)).status_code == 202
        assert send(http, second, llm(0, 1000)).status_code == 202
        refused = send(http, second, llm(1, 1000))
        assert refused.status_code == 429
        body = exact(refused)
        assert body["budget"] == "workspace-daily"
        assert body["details"]["agentName"] == "beta"
        assert body["details"]["dailyLimitUsd"] == Decimal("0.0025")
        assert body["details"]["spentTodayUsd"] == Decimal("0.002")
        assert "Daily budget of $0.0025 for workspace 'shared-purse'" in body["error"]
        assert "agent-ledger budget set-workspace USD" in body["error"]
        overview = exact(http.get("/v1/budgets"))
        assert overview["workspaceBudget"]["spentTodayUsd"] == Decimal("0.003")
        assert overview["workspaceBudget"]["remainingBudgetUsd"] == 0
        assert http.put("/v1/workspace-budget", json={"dailyLimitUsd": None}).json()["dailyLimitUsd"] is None
        assert send(http, first, llm(1, 1000)).status_code == 202


def test_a_session_cap_limits_one_session_only(http: httpx.Client, ledger: LocalLedger) -> None:
    capped = http.post("/v1/sessions", json={"agentName": "session-capped", "maxCostUsd": 0.002}).json()
    assert (capped["maxCostUsd"], capped["budgeted"]) == (0.002, True)
    free = http.post("/v1/sessions", json={"agentName": "session-capped"}).json()
    assert free["budgeted"] is False
    assert send(http, capped["id"], llm(0, 1500)).status_code == 202
    refused = send(http, capped["id"], llm(1, 1000))
    assert refused.status_code == 429
    body = exact(refused)
    assert (body["budget"], body["resetsAt"]) == ("session", None)
    assert body["details"]["dailyLimitUsd"] == Decimal("0.002")
    assert body["error"].startswith(f"Cost cap of $0.002 for session '{capped['id']}' would be exceeded")
    assert send(http, free["id"], llm(0, 5000)).status_code == 202  # another session of the same agent
    assert exact(http.get(f"/v1/sessions/{capped['id']}"))["maxCostUsd"] == Decimal("0.002")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"maxCostUsd": -1}, '"maxCostUsd" must be a non-negative number'),
        ({"maxCostUsd": "5"}, '"maxCostUsd" must be a non-negative number'),
        ({"maxCostUsd": 1, "warnAtPercent": 0}, '"warnAtPercent" must be a number above 0 and at most 100'),
        ({"maxCostUsd": 1, "warnAtPercent": 101}, '"warnAtPercent" must be a number above 0'),
    ],
)
def test_a_bad_session_cap_is_a_400(http: httpx.Client, body: dict[str, Any], message: str) -> None:
    response = http.post("/v1/sessions", json={"agentName": "bad-cap", **body})
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_the_session_start_says_whether_a_budget_applies(http: httpx.Client, ledger: LocalLedger) -> None:
    assert http.post("/v1/sessions", json={"agentName": "flag"}).json()["budgeted"] is False
    ledger.set_budget("flag", monthly_limit_usd=3)
    assert http.post("/v1/sessions", json={"agentName": "flag"}).json()["budgeted"] is True
    ledger.set_budget("flag", monthly_limit_usd=None)
    assert http.post("/v1/sessions", json={"agentName": "flag"}).json()["budgeted"] is False


# -- the soft threshold -------------------------------------------------------------------------------


def test_crossing_the_warning_threshold_records_a_budget_warning_once_and_logs_it(
    http: httpx.Client, ledger: LocalLedger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent_ledger_sdk.local")
    ledger.set_budget("warned", 0.004, warn_at_percent=50)
    session_id = start(http, "warned")
    for step in range(4):
        assert send(http, session_id, llm(step, 1000)).status_code == 202
    recorded = ledger.session(session_id)
    kinds = [(e["stepIndex"], e["type"]) for e in recorded["events"]]
    assert kinds == [(0, "llm_call"), (1, "llm_call"), (1, "budget_warning"), (2, "llm_call"), (3, "llm_call")]
    warning = recorded["events"][2]
    assert warning["budget"] == "agent-daily"
    assert (warning["limitUsd"], warning["spentUsd"], warning["thresholdUsd"]) == (0.004, 0.002, 0.002)
    assert warning["warnAtPercent"] == 50
    assert warning["costStatus"] is None and warning["costUsd"] == 0
    assert [r.getMessage() for r in caplog.records if "warning threshold" in r.getMessage()] == [warning["message"]]
    assert "Daily budget of $0.004 for agent 'warned': $0.002 spent today (UTC)" in warning["message"]


def test_every_kind_of_budget_warns_on_its_own(http: httpx.Client, ledger: LocalLedger) -> None:
    ledger.set_budget("many-warnings", 1, monthly_limit_usd=0.002, warn_at_percent=75)
    session = http.post(
        "/v1/sessions", json={"agentName": "many-warnings", "maxCostUsd": 0.004, "warnAtPercent": 25}
    ).json()
    send(http, session["id"], llm(0, 1000))
    send(http, session["id"], llm(1, 1000))
    warnings = [
        (e["stepIndex"], e["budget"]) for e in ledger.session(session["id"])["events"] if e["type"] != "llm_call"
    ]
    assert warnings == [(0, "session"), (1, "agent-monthly")]


# -- the budget API --------------------------------------------------------------------------------------


def test_budgets_through_the_api(http: httpx.Client) -> None:
    response = http.put("/v1/budgets/api-agent", json={"dailyLimitUsd": 2.5})
    assert response.status_code == 200
    assert response.json()["dailyLimitUsd"] == 2.5
    merged = http.put("/v1/budgets/api-agent", json={"monthlyLimitUsd": 40, "warnAtPercent": 80}).json()
    assert (merged["dailyLimitUsd"], merged["monthlyLimitUsd"], merged["warnAtPercent"]) == (2.5, 40, 80)
    listed = {b["agentName"]: b for b in http.get("/v1/budgets").json()["budgets"]}
    entry = listed["api-agent"]
    assert (entry["spentTodayUsd"], entry["spentThisMonthUsd"], entry["reservedUsd"]) == (0, 0, 0)
    assert (entry["remainingBudgetUsd"], entry["remainingMonthlyUsd"]) == (2.5, 40)
    assert entry["resetsAt"] == midnight()
    for bad in ({"dailyLimitUsd": -1}, {"monthlyLimitUsd": "x"}, {"warnAtPercent": 0}, {"daily": 1}):
        assert http.put("/v1/budgets/api-agent", json=bad).status_code == 400, bad
    removed = http.put("/v1/budgets/api-agent", json={"dailyLimitUsd": None}).json()
    assert (removed["dailyLimitUsd"], removed["monthlyLimitUsd"]) == (None, 40)
    assert http.put("/v1/budgets/api-agent", json={"monthlyLimitUsd": None}).json()["monthlyLimitUsd"] is None
    assert "api-agent" not in {b["agentName"] for b in http.get("/v1/budgets").json()["budgets"]}


def test_the_workspace_budget_and_settings_through_the_api(ledger: LocalLedger) -> None:
    key = ledger.service.create_key("settings", "settings-team").secret
    with httpx.Client(base_url=ledger.url, headers={"x-api-key": key}) as http:
        overview = http.get("/v1/budgets").json()
        assert overview["workspaceBudget"]["dailyLimitUsd"] is None
        assert overview["settings"] == {"workspace": "settings-team", "allowUnpricedModels": False}
        reply = http.put("/v1/workspace-budget", json={"dailyLimitUsd": 12.5, "warnAtPercent": 90}).json()
        assert (reply["dailyLimitUsd"], reply["warnAtPercent"], reply["remainingBudgetUsd"]) == (12.5, 90, 12.5)
        nan = http.put("/v1/workspace-budget", content=b'{"dailyLimitUsd": NaN}')
        assert nan.status_code == 400
        assert '"dailyLimitUsd" must be a non-negative number' in nan.json()["error"]
        assert http.put("/v1/settings", json={"allowUnpricedModels": "yes"}).status_code == 400
        assert http.get("/v1/settings").json()["allowUnpricedModels"] is False


# -- windows and storage -------------------------------------------------------------------------------


def test_spend_counts_per_utc_day_and_per_utc_month(tmp_path: Path) -> None:
    now = [datetime.datetime(2026, 3, 31, 23, 59, tzinfo=datetime.timezone.utc)]
    store = sqlite_service(tmp_path / "days.db", clock=lambda: now[0])
    store.set_budget("ws", "agent", 1, monthly_limit_usd=2)
    session = store.start_session("ws", "agent", None).body["id"]

    def spend() -> int:
        return store.append_events(
            "ws", session, [PricedEvent({"type": "llm_call"}, "llm_call", 0, cost_usd=0.9)], None
        ).status

    assert spend() == 202
    assert spend() == 429  # over the day's limit: recorded and refused
    now[0] = datetime.datetime(2026, 4, 1, 0, 0, 1, tzinfo=datetime.timezone.utc)  # a new UTC day and month
    assert spend() == 202
    (budget,) = store.budgets("ws")
    assert (budget["spentTodayUsd"], budget["spentThisMonthUsd"]) == (Decimal("0.9"), Decimal("0.9"))
    assert (budget["resetsAt"], budget["monthResetsAt"]) == ("2026-04-02T00:00:00Z", "2026-05-01T00:00:00Z")
    now[0] = datetime.datetime(2026, 4, 2, 12, tzinfo=datetime.timezone.utc)
    assert spend() == 202
    now[0] = datetime.datetime(2026, 4, 3, 12, tzinfo=datetime.timezone.utc)
    assert spend() == 429  # the month: 2.7 > 2
    (budget,) = store.budgets("ws")
    assert (budget["spentTodayUsd"], budget["spentThisMonthUsd"]) == (Decimal("0.9"), Decimal("2.7"))
    assert budget["remainingMonthlyUsd"] == 0
    store.close()


# The tables of the version before exact money: REAL costs, a budgets table and a daily_spend table.
PREVIOUS_SCHEMA = """
CREATE TABLE api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, workspace TEXT NOT NULL, key_hash TEXT NOT NULL,
    created_at TEXT NOT NULL, revoked_at TEXT);
CREATE TABLE sessions (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, workspace TEXT NOT NULL,
    agent_name TEXT NOT NULL, status TEXT NOT NULL, error_message TEXT, started_at TEXT NOT NULL, ended_at TEXT,
    cost_usd REAL NOT NULL DEFAULT 0, tokens_in INTEGER NOT NULL DEFAULT 0, tokens_out INTEGER NOT NULL DEFAULT 0,
    event_count INTEGER NOT NULL DEFAULT 0, unpriced_count INTEGER NOT NULL DEFAULT 0, user_id TEXT,
    tags TEXT NOT NULL DEFAULT '[]', metadata TEXT NOT NULL DEFAULT '{}', parent_session_id TEXT);
CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT NOT NULL REFERENCES sessions (id),
    step_index INTEGER, type TEXT NOT NULL, payload TEXT NOT NULL, cost_usd REAL NOT NULL DEFAULT 0,
    priced INTEGER NOT NULL DEFAULT 1, pricing_note TEXT, received_at TEXT NOT NULL);
CREATE TABLE budgets (workspace TEXT NOT NULL, agent_name TEXT NOT NULL, daily_limit_usd REAL NOT NULL,
    PRIMARY KEY (workspace, agent_name));
CREATE TABLE daily_spend (workspace TEXT NOT NULL, agent_name TEXT NOT NULL, day TEXT NOT NULL,
    spent_usd REAL NOT NULL DEFAULT 0, PRIMARY KEY (workspace, agent_name, day));
"""


def test_a_database_of_the_previous_version_keeps_its_amounts(tmp_path: Path) -> None:
    path = tmp_path / "previous.db"
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    with sqlite3.connect(path) as db:
        db.executescript(PREVIOUS_SCHEMA)
        db.execute(
            "INSERT INTO sessions (id, workspace, agent_name, status, started_at, cost_usd)"
            " VALUES ('s', 'default', 'old-bot', 'running', '2026-01-01T00:00:00Z', ?)",
            (0.1 + 0.2,),
        )
        db.execute(
            "INSERT INTO events (session_id, step_index, type, payload, cost_usd, priced, received_at) VALUES"
            " ('s', 0, 'llm_call', '{\"type\":\"llm_call\"}', 0.00015, 1, 'x'),"
            " ('s', 1, 'llm_call', '{\"type\":\"llm_call\"}', 0, 0, 'x'), ('s', 2, 'tool_call', '{}', 0, 1, 'x')"
        )
        db.execute("INSERT INTO budgets VALUES ('default', 'old-bot', 2.5)")
        db.execute("INSERT INTO daily_spend VALUES ('default', 'old-bot', ?, 0.75)", (today,))
    db.close()
    with sqlite_service(path) as store:
        session = store.get_session("s")
        assert session["costUsd"] == Decimal("0.30000000000000004")  # what the float was, kept as it was
        assert [(e["costUsd"], e["costStatus"]) for e in session["events"]] == [
            (Decimal("0.00015"), "priced"),
            (0, "unpriced"),
            (0, None),
        ]
        (budget,) = store.budgets("default")
        assert (budget["dailyLimitUsd"], budget["spentTodayUsd"]) == (Decimal("2.5"), Decimal("0.75"))
        assert budget["spentThisMonthUsd"] == Decimal("0.75")
        assert store.workspace_budgets("default")[0]["spentTodayUsd"] == Decimal("0.75")
    with sqlite_service(path) as store:  # a second open changes nothing
        assert store.budgets("default")[0]["spentTodayUsd"] == Decimal("0.75")


def test_the_published_budget_arithmetic_reaches_the_sdk_exactly(ledger: LocalLedger) -> None:
    ledger.set_budget("exact-sdk", Decimal("0.3"))
    client = AgentLedgerClient(api_key=ledger.api_key, base_url=ledger.url, batching=False)
    session_id = client.start_session("exact-sdk")
    client.log_llm_call(session_id, llm(0, 100_000))
    client.log_llm_call(session_id, llm(1, 200_000))
    with pytest.raises(BudgetGuardrailError) as refused:
        client.log_llm_call(session_id, llm(2, 1))
    client.close()
    details = refused.value.details
    assert (details.spent_today_usd, details.remaining_budget_usd) == (0.3, 0.0)  # 0.1 + 0.2, exactly
    assert details.projected_cost_usd == 0.300001
