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


def emit_by_reference(session: Any, items: list[str]) -> None:
    """Emit an event that holds ``items`` itself, not a copy: what a buggy helper would do."""
    event, size = session._custom_event("kept_by_reference", {})
    event["items"] = items
    session._delivery.emit(session, event, size)


def test_the_capture_encodes_an_event_when_it_is_read_as_a_sender_would_not_as_the_call_returns() -> None:
    # A client's sender thread encodes an event some time after the call. A helper that
    # keeps a reference to the user's value instead of a copy is wrong in production; the
    # capture must show that too, so it encodes as late as the sender could. The event is
    # emitted by hand with such a reference, as a buggy helper would.
    ledger = agent_ledger_sdk.AgentLedgerClient(api_key="k")
    shared = ["as sent"]
    with capture() as captured:
        with ledger.session("late") as session:
            emit_by_reference(session, shared)  # not copied: the bug this capture must be able to show
            shared.append("changed after the call")
        assert captured.events[0]["items"] == ["as sent", "changed after the call"]
        shared.append("changed after it was read")  # once encoded, it stays as it was then
        assert captured.session("late").events[0]["items"] == ["as sent", "changed after the call"]


def test_the_capture_keeps_record_order_across_sessions() -> None:
    ledger = agent_ledger_sdk.AgentLedgerClient(api_key="k")
    with capture() as captured:
        with ledger.session("first") as first, ledger.session("second") as second:
            for n in range(3):
                first.log("note", text=f"first {n}")
                second.log("note", text=f"second {n}")
        held = captured.session("first")  # read before the events below are encoded
        with ledger.session("third") as third:
            third.log("note", text="later")
            first.log("note", text="after its end")
    assert [e["text"] for e in captured.events] == [
        "first 0",
        "second 0",
        "first 1",
        "second 1",
        "first 2",
        "second 2",
        "later",
        "after its end",
    ]
    assert [e["text"] for e in held.events] == ["first 0", "first 1", "first 2", "after its end"]
    assert [s.agent_name for s in captured.sessions] == ["first", "second", "third"]
    assert [e["stepIndex"] for e in captured.session("third").events] == [0]


def test_what_is_not_read_in_the_block_is_encoded_as_it_ends_as_a_clients_flush_at_exit() -> None:
    ledger = agent_ledger_sdk.AgentLedgerClient(api_key="k")
    shared = ["in the block"]
    with capture() as captured:
        with ledger.session("unread") as session:
            emit_by_reference(session, shared)
    shared.append("after the block")
    assert captured.events[0]["items"] == ["in the block"]


@pytest.mark.integration
@pytest.mark.skipif(importlib.util.find_spec("starlette") is None, reason="needs the server extra")
def test_the_local_ledger_fixture_gives_a_real_ledger(local_ledger: Any) -> None:
    client = local_ledger.client(batching=False)
    session_id = client.start_session("fixture")
    client.end_session(session_id, "success")
    assert local_ledger.session(session_id)["status"] == "success"
    assert local_ledger.url.startswith("http://127.0.0.1:")
    client.close()
