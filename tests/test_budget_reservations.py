"""Budgets stop an LLM call before it runs: the SDK's side of reserve-then-settle, against a faked ledger."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest
import respx

from agent_ledger_sdk import AgentLedgerClient, AsyncAgentLedgerClient, BudgetGuardrailError, UnpricedModelError

from .conftest import BASE_URL

GUARDRAIL = {
    "error": "Daily budget of $0.05 for agent 'bot' would be exceeded",
    "details": {
        "agentName": "bot",
        "dailyLimitUsd": 0.05,
        "spentTodayUsd": 0.049,
        "attemptedCostUsd": 0.004,
        "projectedCostUsd": 0.053,
        "remainingBudgetUsd": 0.001,
    },
    "budget": "agent-daily",
    "resetsAt": "2026-11-26T00:00:00Z",
}


def ledger_routes(api: respx.MockRouter, *, budgeted: Any, reserve: httpx.Response) -> dict[str, respx.Route]:
    start = {"id": "s1", "budgeted": budgeted} if budgeted is not None else {"id": "s1"}
    return {
        "start": api.post("/v1/sessions").respond(201, json=start),
        "events": api.post("/v1/events").respond(202),
        "end": api.post("/v1/sessions/s1/end").respond(200),
        "reserve": api.post("/v1/reservations").mock(return_value=reserve),
    }


def run_calls(ledger: AgentLedgerClient, n: int, **call: Any) -> list[int]:
    """Run ``n`` LLM calls in a session; return the indices whose body ran."""
    ran: list[int] = []
    with ledger.session("bot"):
        for i in range(n):
            try:
                with ledger.llm_call(provider="openai", model="gpt-4o-mini", prompt="hello " * 10, **call) as c:
                    ran.append(i)
                    c.record(response="r", tokens_in=10, tokens_out=5)
            except BudgetGuardrailError:
                pass
    return ran


def test_a_refused_reservation_stops_the_call_before_its_body_runs(api: respx.MockRouter) -> None:
    routes = ledger_routes(api, budgeted=True, reserve=httpx.Response(429, json=GUARDRAIL))
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL)
    body_ran = False
    with ledger.session("bot"), pytest.raises(BudgetGuardrailError) as raised:
        with ledger.llm_call(provider="openai", model="gpt-4o-mini", prompt="hi", max_tokens=100):
            body_ran = True
    assert not body_ran
    assert raised.value.details.remaining_budget_usd == 0.001
    sent = json.loads(routes["reserve"].calls.last.request.content)
    assert sent == {
        "sessionId": "s1",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "estimate": {"tokensIn": 2, "tokensOut": 100},  # the prompt's JSON "hi" (4 bytes) at 2 bytes a token
    }
    assert routes["reserve"].calls.last.request.headers["idempotency-key"]
    ledger.close()


def test_a_granted_reservation_is_settled_by_the_calls_event(api: respx.MockRouter) -> None:
    granted = httpx.Response(201, json={"budgeted": True, "id": "res_1", "reservedUsd": 0.01, "ttlSeconds": 60})
    routes = ledger_routes(api, budgeted=True, reserve=granted)
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL)
    assert run_calls(ledger, 2, max_cost_usd=0.02) == [0, 1]
    assert ledger.flush(5) == 0
    assert routes["reserve"].call_count == 2  # one round trip per budgeted call
    assert json.loads(routes["reserve"].calls[0].request.content)["maxCostUsd"] == 0.02
    events = [e for c in routes["events"].calls for e in json.loads(c.request.content)["events"]]
    assert [e["reservationId"] for e in events] == ["res_1", "res_1"]
    ledger.close()


def test_an_agent_without_a_budget_pays_no_request(api: respx.MockRouter) -> None:
    routes = ledger_routes(api, budgeted=False, reserve=httpx.Response(500))
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL, batching=False)
    assert run_calls(ledger, 5) == [0, 1, 2, 3, 4]
    assert routes["reserve"].call_count == 0  # the session's start said there is no budget
    ledger.close()


def test_a_no_budget_answer_is_remembered_for_its_ttl(api: respx.MockRouter) -> None:
    routes = ledger_routes(api, budgeted=None, reserve=httpx.Response(200, json={"budgeted": False, "ttlSeconds": 60}))
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL, batching=False)
    assert run_calls(ledger, 5) == [0, 1, 2, 3, 4]
    assert routes["reserve"].call_count == 1
    ledger.close()


def test_a_ledger_without_reservations_is_detected_once_and_keeps_the_latch(
    api: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent_ledger_sdk")
    routes = ledger_routes(
        api, budgeted=None, reserve=httpx.Response(404, json={"error": "Cannot POST /v1/reservations"})
    )
    routes["events"].mock(return_value=httpx.Response(429, json=GUARDRAIL))  # the hosted API refuses the event instead
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL, batching=False)
    assert run_calls(ledger, 3) == [0]  # the first call ran and was refused; the latch stops the rest before they run
    assert routes["reserve"].call_count == 1
    assert any("no budget reservations" in r.getMessage() for r in caplog.records)
    ledger.close()


def test_an_unpriced_model_under_a_budget_is_refused_with_the_ledgers_advice(api: respx.MockRouter) -> None:
    message = "No price for model 'my-finetune': add one with `agent-ledger prices set`"
    ledger_routes(api, budgeted=True, reserve=httpx.Response(422, json={"error": message}))
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL)
    with ledger.session("bot"), pytest.raises(UnpricedModelError, match="agent-ledger prices set"):
        with ledger.llm_call(provider="openai", model="my-finetune", prompt="hi"):
            pytest.fail("the body must not run")
    ledger.close()


def test_a_ledger_that_cannot_answer_never_blocks_the_call_and_says_so(
    api: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    ledger_routes(api, budgeted=True, reserve=httpx.Response(503, json={"error": "down"}))
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL, max_retries=0)
    assert run_calls(ledger, 2) == [0, 1]
    assert any("was not checked" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    ledger.close()


def test_a_session_cap_is_sent_with_the_session(api: respx.MockRouter) -> None:
    routes = ledger_routes(api, budgeted=None, reserve=httpx.Response(201, json={"budgeted": True, "id": "r"}))
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL, batching=False)
    with ledger.session("bot", max_cost_usd=0.25):
        pass
    assert json.loads(routes["start"].calls.last.request.content) == {"agentName": "bot", "maxCostUsd": 0.25}
    with pytest.raises(ValueError, match="max_cost_usd must be a number"):
        ledger.session("bot", max_cost_usd=-1)
    ledger.close()


def test_async_calls_reserve_on_the_loop_and_stop_before_the_body(api: respx.MockRouter) -> None:
    routes = ledger_routes(api, budgeted=True, reserve=httpx.Response(429, json=GUARDRAIL))
    ledger = AsyncAgentLedgerClient(api_key="k", base_url=BASE_URL)

    async def main() -> bool:
        ran = False
        async with ledger.session("bot"):
            try:
                async with ledger.llm_call(provider="openai", model="gpt-4o-mini", prompt="hi"):
                    ran = True
            except BudgetGuardrailError:
                pass
        await ledger.aclose()
        return ran

    assert asyncio.run(main()) is False
    assert routes["reserve"].call_count == 1
