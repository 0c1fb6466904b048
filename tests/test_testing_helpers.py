"""The public testing helpers: ``capture()``, and the ``ledger_capture`` and ``local_ledger`` fixtures."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

import agent_ledger_sdk
from agent_ledger_sdk.testing import Capture, capture


def test_capture_records_the_module_helpers_with_no_key_configured() -> None:
    @agent_ledger_sdk.tool
    def add(a: int, b: int) -> int:
        return a + b

    @agent_ledger_sdk.session("calculator")
    def run() -> int:
        return add(2, 3)

    with capture() as captured:
        assert run() == 5
    session = captured.session("calculator")
    assert session.status == "success"
    assert session.ended
    assert [e["toolInput"] for e in captured.events_of("tool_call")] == [{"a": 2, "b": 3}]
    assert run() == 5  # after the block nothing is captured, and nothing breaks
    assert len(captured.sessions) == 1


def test_capture_applies_the_clients_privacy_settings() -> None:
    ledger = agent_ledger_sdk.AgentLedgerClient(api_key="k", capture_content=False)

    @ledger.session("private")
    def run() -> None:
        with ledger.llm_call(provider="p", model="m", prompt="secret") as call:
            call.record(response="also secret", tokens_in=1, tokens_out=1)

    with capture() as captured:
        run()
    assert captured.events[0]["prompt"] == "[redacted]"
    assert captured.events[0]["response"] == "[redacted]"


def test_an_unknown_agent_is_a_clear_lookup_error(ledger_capture: Capture) -> None:
    with pytest.raises(LookupError, match="no session of agent 'ghost'"):
        ledger_capture.session("ghost")


def test_clear_forgets_what_was_captured(ledger_capture: Capture) -> None:
    with agent_ledger_sdk.configure(api_key="k").session("x") as s:
        s.log("note")
    ledger_capture.clear()
    assert ledger_capture.sessions == []
    assert ledger_capture.events == []


@pytest.mark.integration
@pytest.mark.skipif(importlib.util.find_spec("starlette") is None, reason="needs the server extra")
def test_the_local_ledger_fixture_gives_a_real_ledger(local_ledger: Any) -> None:
    client = local_ledger.client(batching=False)
    session_id = client.start_session("fixture")
    client.end_session(session_id, "success")
    assert local_ledger.session(session_id)["status"] == "success"
    assert local_ledger.url.startswith("http://127.0.0.1:")
    client.close()
