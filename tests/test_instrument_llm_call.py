"""ledger.llm_call: one llm_call event per block, timed over the block."""

from __future__ import annotations

import asyncio
import time

import pytest

from agent_ledger_sdk import AgentLedgerClient
from agent_ledger_sdk.testing import Capture

from .conftest import without_span

ledger = AgentLedgerClient(api_key="sk-test", base_url="http://127.0.0.1:9")


def test_a_recorded_call_becomes_one_event(ledger_capture: Capture) -> None:
    with ledger.session("bot"), ledger.llm_call(provider="openai", model="gpt-4o-mini", prompt="Hi?") as call:
        time.sleep(0.02)
        call.record(response="Hello!", tokens_in=3, tokens_out=2, model="gpt-4o-mini-2024-07-18")
    (event,) = ledger_capture.events
    latency = event.pop("latencyMs")
    assert latency >= 20
    assert without_span(event) == {
        "type": "llm_call",
        "stepIndex": 0,
        "provider": "openai",
        "model": "gpt-4o-mini-2024-07-18",
        "prompt": "Hi?",
        "response": "Hello!",
        "tokensIn": 3,
        "tokensOut": 2,
    }


def test_a_chat_prompt_and_extra_attributes(ledger_capture: Capture) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    with (
        ledger.session("bot"),
        ledger.llm_call(provider="anthropic", model="claude", prompt=messages, temperature=0.2) as call,
    ):
        call.record(response="Hey", tokens_in=5, tokens_out=1)
        call.set(finish_reason="stop", request_id="req_1")
    event = ledger_capture.events[0]
    assert event["prompt"] == messages
    assert event["temperature"] == 0.2
    assert event["finishReason"] == "stop"
    assert event["requestId"] == "req_1"


def test_a_call_without_usage_is_flagged_not_silently_free(ledger_capture: Capture) -> None:
    with ledger.session("bot"), ledger.llm_call(provider="openai", model="gpt-4o", prompt="x") as call:
        call.record(response="y")
    event = ledger_capture.events[0]
    assert event["tokensIn"] == 0
    assert event["tokensOut"] == 0
    assert event["usageMissing"] is True


def test_a_failing_block_records_the_error_and_what_was_recorded(ledger_capture: Capture) -> None:
    error = TimeoutError("provider timed out")
    with (
        pytest.raises(TimeoutError) as raised,
        ledger.session("bot"),
        ledger.llm_call(provider="openai", model="gpt-4o", prompt="x") as call,
    ):
        call.record(tokens_in=7)
        raise error
    assert raised.value is error
    event = ledger_capture.events[0]
    assert event["error"] == "TimeoutError: provider timed out"
    assert event["tokensIn"] == 7
    assert "usageMissing" not in event


def test_steps_are_shared_with_tools(ledger_capture: Capture) -> None:
    @ledger.tool
    def lookup() -> int:
        return 1

    with ledger.session("bot"):
        lookup()
        with ledger.llm_call(provider="p", model="m") as call:
            call.record(response="r", tokens_in=1, tokens_out=1)
        lookup()
    assert [e["stepIndex"] for e in ledger_capture.events] == [0, 0, 1, 2, 2]


def test_the_async_form(ledger_capture: Capture) -> None:
    async def main() -> None:
        async with ledger.session("bot"), ledger.llm_call(provider="openai", model="m", prompt="p") as call:
            await asyncio.sleep(0.01)
            call.record(response="r", tokens_in=1, tokens_out=2)

    asyncio.run(main())
    event = ledger_capture.events[0]
    assert event["response"] == "r"
    assert event["latencyMs"] >= 10


def test_outside_a_session_nothing_is_recorded(ledger_capture: Capture) -> None:
    with ledger.llm_call(provider="openai", model="m") as call:
        call.record(response="r")
    assert ledger_capture.events == []
    assert call.step_index is None


@pytest.mark.parametrize(("provider", "model"), [("", "m"), ("p", ""), (None, "m")])
def test_provider_and_model_are_required(provider: object, model: object) -> None:
    with pytest.raises(ValueError, match="llm_call"):
        ledger.llm_call(provider=provider, model=model)  # type: ignore[arg-type]


def test_an_explicit_step_index_wins(ledger_capture: Capture) -> None:
    with ledger.session("bot"), ledger.llm_call(provider="p", model="m") as call:
        call.set(step_index=99)
    assert ledger_capture.events[0]["stepIndex"] == 99
