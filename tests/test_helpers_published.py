"""The 0.0.6 helpers keep their published behaviour; the published README's quick start runs unchanged."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import respx

import agent_ledger_sdk
from agent_ledger_sdk import AgentLedgerClient, StepCounter, instrument_tool, run_session

from .conftest import BASE_URL


def bodies(route: respx.Route) -> list[Any]:
    return [json.loads(c.request.content) for c in route.calls]


def test_step_counter_counts_peeks_and_resets() -> None:
    steps = StepCounter()
    assert [steps.next(), steps.next()] == [0, 1]
    assert steps.peek() == 2
    steps.reset(10)
    assert steps.next() == 10
    steps.reset()
    assert steps.peek() == 0


def test_step_counter_keeps_the_published_value_field() -> None:
    steps = StepCounter(5)
    assert steps.value == 5
    steps.value = 7
    assert steps.next() == 7
    assert steps == StepCounter(8)
    assert repr(steps) == "StepCounter(value=8)"


def test_step_counter_never_repeats_across_threads() -> None:
    steps = StepCounter()
    seen: list[int] = []

    def take() -> None:
        for _ in range(1000):
            seen.append(steps.next())

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(seen) == list(range(8000))


def test_run_session_ends_with_success(api: respx.MockRouter) -> None:
    api.post("/v1/sessions").respond(200, json={"id": "s1"})
    end = api.post("/v1/sessions/s1/end").respond(200)
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL)
    with run_session(ledger, "bot") as (session_id, steps):
        assert session_id == "s1"
        assert steps.next() == 0
    assert bodies(end) == [{"status": "success", "errorMessage": None}]


def test_run_session_ends_with_the_exception_text_and_reraises(api: respx.MockRouter) -> None:
    api.post("/v1/sessions").respond(200, json={"id": "s1"})
    end = api.post("/v1/sessions/s1/end").respond(200)
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL)
    error = KeyError("missing")
    with pytest.raises(KeyError) as raised, run_session(ledger, "bot"):
        raise error
    assert raised.value is error
    assert bodies(end) == [{"status": "error", "errorMessage": "'missing'"}]


def test_run_session_uses_the_given_error_message(api: respx.MockRouter) -> None:
    api.post("/v1/sessions").respond(200, json={"id": "s1"})
    end = api.post("/v1/sessions/s1/end").respond(200)
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL)
    with pytest.raises(ValueError, match="x"), run_session(ledger, "bot", error_message="Unhandled failure"):
        raise ValueError("x")
    assert bodies(end)[0]["errorMessage"] == "Unhandled failure"


def test_run_session_keeps_the_users_exception_when_ending_fails(api: respx.MockRouter) -> None:
    api.post("/v1/sessions").respond(200, json={"id": "s1"})
    api.post("/v1/sessions/s1/end").respond(500)
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL)
    error = RuntimeError("the agent's own failure")
    with pytest.raises(RuntimeError) as raised, run_session(ledger, "bot"):
        raise error
    assert raised.value is error


def test_instrument_tool_logs_call_and_result(api: respx.MockRouter) -> None:
    events = api.post("/v1/events").respond(200)
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL)
    result = instrument_tool(
        ledger=ledger, session_id="s", step_index=4, tool_name="search", tool_input={"q": "x"}, run=lambda: ["hit"]
    )
    assert result == ["hit"]
    call, outcome = (b["events"][0] for b in bodies(events))
    assert call == {"type": "tool_call", "stepIndex": 4, "toolName": "search", "toolInput": {"q": "x"}}
    assert outcome["type"] == "tool_result" and outcome["toolOutput"] == ["hit"]
    assert isinstance(outcome["latencyMs"], int)


def test_instrument_tool_logs_the_error_and_reraises(api: respx.MockRouter) -> None:
    events = api.post("/v1/events").respond(200)
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL)
    error = TimeoutError("tool timed out")

    def run() -> None:
        raise error

    with pytest.raises(TimeoutError) as raised:
        instrument_tool(ledger=ledger, session_id="s", step_index=0, tool_name="t", tool_input=None, run=run)
    assert raised.value is error
    assert bodies(events)[1]["events"][0]["toolOutput"] == {"error": "tool timed out"}


def test_instrument_tool_survives_a_ledger_outage(api: respx.MockRouter) -> None:
    api.post("/v1/events").mock(side_effect=httpx.ConnectError("down"))
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL, max_retries=0)
    out = instrument_tool(ledger=ledger, session_id="s", step_index=0, tool_name="t", tool_input=1, run=lambda: 42)
    assert out == 42


# The published README's quick start, verbatim but for the OpenAI client, which is a stub.
QUICK_START = """
import os
import time

from agent_ledger_sdk import AgentLedgerClient, BudgetGuardrailError
from openai import OpenAI

ledger = AgentLedgerClient(api_key=os.environ["AGENT_LEDGER_API_KEY"])
llm = OpenAI(api_key=os.environ["OPENAI_API_KEY"])

session_id = ledger.start_session("support-bot")
try:
    started = time.perf_counter()
    completion = llm.responses.create(
        model="gpt-4o-mini",
        input=[{"role": "user", "content": "Draft a welcome email."}],
        temperature=0.2,
    )
    latency_ms = int((time.perf_counter() - started) * 1000)
    content = completion.output[0].content[0].text

    ledger.log_llm_call(
        session_id,
        {
            "stepIndex": 0,
            "provider": "openai",
            "model": completion.model,
            "prompt": "Draft a welcome email.",
            "response": content,
            "tokensIn": completion.usage.input_tokens,
            "tokensOut": completion.usage.output_tokens,
            "latencyMs": latency_ms,
        },
    )

    ledger.end_session(session_id, "success")
except BudgetGuardrailError as exc:
    ledger.end_session(session_id, "error", error_message="Budget exceeded")
    print("Budget exceeded", exc.details)
    raise
except Exception:
    ledger.end_session(session_id, "error", error_message="Unhandled failure")
    raise
finally:
    ledger.close()
"""


class StubOpenAI:
    def __init__(self, api_key: str) -> None:
        completion = SimpleNamespace(
            model="gpt-4o-mini-2024-07-18",
            output=[SimpleNamespace(content=[SimpleNamespace(text="Welcome aboard!")])],
            usage=SimpleNamespace(input_tokens=12, output_tokens=34),
        )
        self.responses = SimpleNamespace(create=lambda **kwargs: completion)


@pytest.fixture
def quick_start_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setenv("AGENT_LEDGER_API_KEY", "sk-quick")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    monkeypatch.setitem(sys.modules, "openai", SimpleNamespace(OpenAI=StubOpenAI))


HOSTED = "https://agent-ledger-api.azurewebsites.net"


def test_the_published_quick_start_sends_exactly_the_published_requests(quick_start_env: None) -> None:
    with respx.mock(base_url=HOSTED) as router:
        start = router.post("/v1/sessions").respond(201, json={"id": "0b6f-uuid"})
        events = router.post("/v1/events").respond(202, json={"accepted": 1})
        end = router.post("/v1/sessions/0b6f-uuid/end").respond(200, json={"ok": True})
        exec(compile(QUICK_START, "quick_start.py", "exec"), {})
        assert [c.request.headers["x-api-key"] for c in router.calls] == ["sk-quick"] * 3
    assert bodies(start) == [{"agentName": "support-bot"}]
    (sent,) = bodies(events)
    latency = sent["events"][0].pop("latencyMs")
    assert isinstance(latency, int) and latency >= 0
    assert sent == {
        "sessionId": "0b6f-uuid",
        "events": [
            {
                "stepIndex": 0,
                "provider": "openai",
                "model": "gpt-4o-mini-2024-07-18",
                "prompt": "Draft a welcome email.",
                "response": "Welcome aboard!",
                "tokensIn": 12,
                "tokensOut": 34,
                "type": "llm_call",
            }
        ],
    }
    assert bodies(end) == [{"status": "success", "errorMessage": None}]


def test_the_published_quick_start_raises_the_guardrail(quick_start_env: None, capsys: Any) -> None:
    with respx.mock(base_url=HOSTED) as router:
        router.post("/v1/sessions").respond(201, json={"id": "s"})
        router.post("/v1/events").respond(
            429,
            json={
                "error": "Budget exceeded",
                "details": {
                    "agentName": "support-bot",
                    "dailyLimitUsd": 1,
                    "spentTodayUsd": 1,
                    "attemptedCostUsd": 0.1,
                    "projectedCostUsd": 1.1,
                    "remainingBudgetUsd": 0,
                },
            },
        )
        end = router.post("/v1/sessions/s/end").respond(200)
        with pytest.raises(agent_ledger_sdk.BudgetGuardrailError):
            exec(compile(QUICK_START, "quick_start.py", "exec"), {})
    assert bodies(end) == [{"status": "error", "errorMessage": "Budget exceeded"}]
    assert "Budget exceeded BudgetGuardrailDetails(agent_name='support-bot'" in capsys.readouterr().out
