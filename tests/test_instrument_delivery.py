"""What the helpers put on the wire, and the failure policy: telemetry faults never reach the agent."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from typing import Any

import httpx
import pytest
import respx

import agent_ledger_sdk
from agent_ledger_sdk import AgentLedgerClient, AsyncAgentLedgerClient, BudgetGuardrailError
from agent_ledger_sdk import _budget as guardrail_module

from .conftest import BASE_URL

GUARDRAIL = {
    "error": "Daily budget of $1.00 exceeded for agent bot",
    "details": {
        "agentName": "bot",
        "dailyLimitUsd": 1.0,
        "spentTodayUsd": 0.95,
        "attemptedCostUsd": 0.1,
        "projectedCostUsd": 1.05,
        "remainingBudgetUsd": 0.05,
    },
}


def sent_events(route: respx.Route) -> list[dict[str, Any]]:
    """What a ledger records: each request once per Idempotency-Key, as the real ledger does."""
    seen: set[str] = set()
    events = []
    for call in route.calls:
        key = call.request.headers["idempotency-key"]
        if key not in seen:
            seen.add(key)
            events.extend(json.loads(call.request.content)["events"])
    return events


@pytest.fixture
def ledger_routes(api: respx.MockRouter) -> dict[str, respx.Route]:
    return {
        "start": api.post("/v1/sessions").respond(201, json={"id": "sess-1"}),
        "events": api.post("/v1/events").respond(202),
        "end": api.post("/v1/sessions/sess-1/end").respond(200),
        # A ledger without budget reservations (the hosted API today): probed once, then not again.
        "reservations": api.post("/v1/reservations").respond(404, json={"error": "Cannot POST /v1/reservations"}),
    }


def agent(ledger: AgentLedgerClient) -> Any:
    @ledger.tool
    def lookup(order_id: str) -> dict[str, str]:
        return {"order": order_id, "status": "shipped"}

    @ledger.session("bot")
    def run(order_id: str) -> str:
        found = lookup(order_id)
        with ledger.llm_call(provider="openai", model="gpt-4o-mini", prompt=f"Where is {order_id}?") as call:
            call.record(response="Shipped.", tokens_in=10, tokens_out=3)
        return found["status"]

    return run


@pytest.mark.parametrize("batching", [True, False])
def test_the_helpers_send_the_published_wire_format(ledger_routes: dict[str, respx.Route], batching: bool) -> None:
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL, batching=batching)
    assert agent(ledger)("A-1") == "shipped"
    assert ledger.flush(5) == 0
    assert json.loads(ledger_routes["start"].calls.last.request.content) == {"agentName": "bot"}
    events = sent_events(ledger_routes["events"])
    assert [(e["type"], e["stepIndex"]) for e in events] == [("tool_call", 0), ("tool_result", 0), ("llm_call", 1)]
    assert events[0]["toolInput"] == {"order_id": "A-1"}
    assert events[2]["tokensIn"] == 10
    # Batched: one request, or two when the one probe for budget reservations (404 here) splits it.
    assert ledger_routes["events"].call_count in ((1, 2) if batching else (3,))
    assert json.loads(ledger_routes["end"].calls.last.request.content) == {"status": "success", "errorMessage": None}
    assert ledger.stats.sent == 3
    assert ledger.stats.failed == 0
    ledger.close()


@pytest.mark.parametrize("batching", [True, False])
def test_the_async_client_sends_the_same(ledger_routes: dict[str, respx.Route], batching: bool) -> None:
    ledger = AsyncAgentLedgerClient(api_key="k", base_url=BASE_URL, batching=batching)

    @ledger.tool
    async def lookup(order_id: str) -> str:
        return "shipped"

    @ledger.session("bot")
    async def run() -> str:
        status = await lookup("A-1")
        async with ledger.llm_call(provider="openai", model="m", prompt="p") as call:
            call.record(response="r", tokens_in=1, tokens_out=1)
        return status

    async def main() -> str:
        result = await run()
        assert ledger.flush(5) == 0
        await ledger.aclose()
        return result

    assert asyncio.run(main()) == "shipped"
    assert [e["type"] for e in sent_events(ledger_routes["events"])] == ["tool_call", "tool_result", "llm_call"]
    assert ledger_routes["end"].called


FAULTS = {
    "down": lambda: httpx.ConnectError("connection refused"),
    "500": lambda: httpx.Response(500, json={"error": "db is on fire"}),
    "timeout": lambda: httpx.ReadTimeout("too slow"),
    "garbage": lambda: httpx.Response(200, text="<html>captive portal</html>"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("batching", [True, False])
@pytest.mark.parametrize("outcome", ["returns", "raises"])
def test_telemetry_faults_never_change_what_the_agent_returns_or_raises(
    api: respx.MockRouter, fault: str, batching: bool, outcome: str, caplog: pytest.LogCaptureFixture
) -> None:
    for path in ("/v1/sessions", "/v1/events", "/v1/sessions/sess-1/end"):
        api.post(path).mock(side_effect=lambda request: _raise_or_return(FAULTS[fault]()))
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL, batching=batching, max_retries=1)
    error = KeyError("the agent's own error")

    @ledger.tool
    def lookup(x: int) -> int:
        return x * 2

    @ledger.session("bot")
    def run() -> int:
        value = lookup(21)
        with ledger.llm_call(provider="openai", model="m", prompt="p") as call:
            call.record(response="r", tokens_in=1, tokens_out=1)
        if outcome == "raises":
            raise error
        return value

    if outcome == "returns":
        assert run() == 42
    else:
        with pytest.raises(KeyError) as raised:
            run()
        assert raised.value is error
    ledger.flush(0.5)
    stats = ledger.stats
    assert stats.sent == 0
    if batching and fault != "garbage":
        assert (stats.queued, stats.failed, stats.dropped) == (3, 0, 0)  # waiting for the ledger, not lost
    else:
        assert stats.failed + stats.dropped == 3
    assert any(r.levelno == logging.WARNING and r.name == "agent_ledger_sdk" for r in caplog.records)
    ledger.close(timeout=0)


def _raise_or_return(value: Any) -> httpx.Response:
    if isinstance(value, Exception):
        raise value
    return value


def test_when_the_session_cannot_start_its_events_are_dropped_and_counted(api: respx.MockRouter) -> None:
    api.post("/v1/sessions").respond(503)
    events = api.post("/v1/events").respond(200)
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL, batching=False, max_retries=0)
    assert agent(ledger)("A-1") == "shipped"
    assert not events.called
    assert ledger.stats.dropped == 3
    assert ledger.stats.failed == 0


def test_warnings_are_rate_limited(api: respx.MockRouter, caplog: pytest.LogCaptureFixture) -> None:
    api.post("/v1/sessions").respond(201, json={"id": "sess-1"})
    api.post("/v1/events").respond(500)
    api.post("/v1/sessions/sess-1/end").respond(200)
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL, batching=False, max_retries=0)

    @ledger.tool
    def noop() -> None:
        pass

    with ledger.session("bot"):
        for _ in range(50):
            noop()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert ledger.stats.failed == 100


# -- the budget guardrail -------------------------------------------------------


def test_inline_the_refused_llm_call_raises_and_the_next_one_stops_before_running(api: respx.MockRouter) -> None:
    api.post("/v1/sessions").respond(201, json={"id": "sess-1"})
    api.post("/v1/events").respond(429, json=GUARDRAIL)
    api.post("/v1/sessions/sess-1/end").respond(200)
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL, batching=False)
    llm_ran: list[int] = []

    with ledger.session("bot"):
        with pytest.raises(BudgetGuardrailError) as first, ledger.llm_call(provider="openai", model="m") as call:
            llm_ran.append(1)
            call.record(response="r", tokens_in=1, tokens_out=1)
        assert first.value.details.agent_name == "bot"
        with pytest.raises(BudgetGuardrailError, match="stopped before it ran") as second:
            with ledger.llm_call(provider="openai", model="m"):
                llm_ran.append(2)
        assert second.value.details == first.value.details
    assert llm_ran == [1]


def test_the_pre_flight_stop_lifts_on_reset_and_at_utc_midnight(
    api: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.post("/v1/sessions").respond(201, json={"id": "sess-1"})
    events = api.post("/v1/events").mock(side_effect=[httpx.Response(429, json=GUARDRAIL), httpx.Response(200)])
    api.post("/v1/sessions/sess-1/end").respond(200)
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL, batching=False)
    with ledger.session("bot"):
        with pytest.raises(BudgetGuardrailError), ledger.llm_call(provider="p", model="m"):
            pass
        with pytest.raises(BudgetGuardrailError), ledger.llm_call(provider="p", model="m"):
            pass
        ledger.reset_guardrail("bot")
        with ledger.llm_call(provider="p", model="m"):
            pass
    assert events.call_count == 2

    # The latch trips again; a new UTC day lifts it.
    details = agent_ledger_sdk.BudgetGuardrailDetails.from_payload(GUARDRAIL["details"])
    assert details is not None
    ledger._instrumentation.latch.trip("bot", BudgetGuardrailError("x", details))
    with pytest.raises(BudgetGuardrailError):
        ledger._instrumentation.latch.check("bot")
    tomorrow = datetime.datetime.now(datetime.timezone.utc).date() + datetime.timedelta(days=1)
    monkeypatch.setattr(guardrail_module, "utc_today", lambda: tomorrow)
    ledger._instrumentation.latch.check("bot")  # does not raise


def test_in_the_background_a_refusal_stops_the_next_llm_call_of_that_agent(api: respx.MockRouter) -> None:
    api.post("/v1/sessions").respond(201, json={"id": "sess-1"})
    events = api.post("/v1/events").mock(
        side_effect=lambda request: (
            httpx.Response(429, json=GUARDRAIL)
            if any(e["type"] == "llm_call" for e in json.loads(request.content)["events"])
            else httpx.Response(202)
        )
    )
    api.post("/v1/sessions/sess-1/end").respond(200)
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL)

    @ledger.tool
    def lookup() -> int:
        return 1

    with ledger.session("bot"):
        lookup()
        with ledger.llm_call(provider="openai", model="m") as call:  # refused in the background
            call.record(response="r", tokens_in=1, tokens_out=1)
        lookup()
        ledger.flush(5)
        with pytest.raises(BudgetGuardrailError), ledger.llm_call(provider="openai", model="m"):
            pytest.fail("the LLM call must not run")
        lookup()  # tools are not stopped
    ledger.flush(5)
    accepted = [
        e["type"]
        for call in events.calls
        if call.response.status_code == 202
        for e in json.loads(call.request.content)["events"]
    ]
    assert accepted.count("tool_call") == 3  # the refused batch was resent one by one
    assert "llm_call" not in accepted
    assert ledger.stats.failed == 1


# -- privacy and the kill switch ---------------------------------------------------


def test_capture_content_false_redacts_prompts_responses_and_tool_data(ledger_routes: dict[str, respx.Route]) -> None:
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL, batching=False, capture_content=False)
    agent(ledger)("SECRET-ORDER")
    events = sent_events(ledger_routes["events"])
    assert "SECRET-ORDER" not in json.dumps(events)
    assert events[0]["toolInput"] == "[redacted]"
    assert events[1]["toolOutput"] == "[redacted]"
    assert events[2]["prompt"] == "[redacted]"
    assert events[2]["response"] == "[redacted]"
    assert events[2]["tokensIn"] == 10  # usage and cost stay


def test_capture_content_can_be_switched_off_from_the_environment(
    ledger_routes: dict[str, respx.Route], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_LEDGER_CAPTURE_CONTENT", "false")
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL, batching=False)
    agent(ledger)("SECRET-ORDER")
    assert "SECRET-ORDER" not in json.dumps(sent_events(ledger_routes["events"]))


def test_redact_receives_each_event_and_returns_the_one_to_send(ledger_routes: dict[str, respx.Route]) -> None:
    seen: list[str] = []

    def redact(event: dict[str, Any]) -> dict[str, Any]:
        seen.append(event["type"])
        return {**event, "prompt": "<scrubbed>"} if "prompt" in event else event

    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL, batching=False, redact=redact)
    agent(ledger)("A-1")
    assert seen == ["tool_call", "tool_result", "llm_call"]
    assert sent_events(ledger_routes["events"])[2]["prompt"] == "<scrubbed>"


def test_a_redactor_that_fails_drops_the_event_rather_than_leak_it(ledger_routes: dict[str, respx.Route]) -> None:
    def redact(event: dict[str, Any]) -> dict[str, Any]:
        if event["type"] == "llm_call":
            raise RuntimeError("regex exploded")
        return event

    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL, batching=False, redact=redact)
    assert agent(ledger)("A-1") == "shipped"
    assert [e["type"] for e in sent_events(ledger_routes["events"])] == ["tool_call", "tool_result"]
    assert ledger.stats.dropped == 1


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_the_kill_switch_makes_every_helper_a_pass_through(
    api: respx.MockRouter, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    if how == "environment":
        monkeypatch.setenv("AGENT_LEDGER_ENABLED", "false")
        ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL)
    else:
        ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL, enabled=False)
    assert ledger.enabled is False
    assert agent(ledger)("A-1") == "shipped"
    with ledger.session("bot") as s:
        s.log("note")
    assert not api.calls
    assert ledger.stats == agent_ledger_sdk.LedgerStats()
    assert ledger._instrumentation._sender is None  # no thread was started


# -- the module-level helpers -------------------------------------------------------


def test_module_helpers_use_the_configured_default_client(ledger_routes: dict[str, respx.Route]) -> None:
    ledger = agent_ledger_sdk.configure(api_key="k", base_url=BASE_URL, batching=False)
    assert agent_ledger_sdk.get_client() is ledger

    @agent_ledger_sdk.tool
    def lookup() -> str:
        return "x"

    @agent_ledger_sdk.session("bot")
    def run() -> str:
        assert agent_ledger_sdk.current_session() is not None
        with agent_ledger_sdk.llm_call(provider="p", model="m") as call:
            call.record(response="r", tokens_in=1, tokens_out=1)
        return lookup()

    assert run() == "x"
    assert agent_ledger_sdk.flush() == 0
    assert [e["type"] for e in sent_events(ledger_routes["events"])] == ["llm_call", "tool_call", "tool_result"]


def test_module_helpers_configure_themselves_from_the_environment(
    ledger_routes: dict[str, respx.Route], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_LEDGER_API_KEY", "sk-env")
    monkeypatch.setenv("AGENT_LEDGER_BASE_URL", BASE_URL)

    @agent_ledger_sdk.session("bot")
    def run() -> int:
        return 7

    assert run() == 7
    assert agent_ledger_sdk.flush(5) == 0
    assert ledger_routes["start"].calls.last.request.headers["x-api-key"] == "sk-env"


def test_module_helpers_without_any_key_pass_through_and_warn_once(
    api: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    @agent_ledger_sdk.session("bot")
    def run() -> int:
        return 7

    assert run() == 7
    assert run() == 7
    assert not api.calls
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "AGENT_LEDGER_API_KEY" in warnings[0] and "agent-ledger serve" in warnings[0]
