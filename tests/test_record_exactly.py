"""What the ledger records is what happened: call-time snapshots, bad events alone, spans and session context.

Each behaviour is checked in every delivery mode against a real local ledger
(background and inline), and against the test capture, which must record the
same thing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from agent_ledger_sdk import AgentLedgerClient
from agent_ledger_sdk.testing import capture

from .conftest import RFC3339_MS, SPAN_ID

pytest.importorskip("starlette")

from agent_ledger_sdk.local import LocalLedger, run

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLedger]:
    with run(db=tmp_path_factory.mktemp("ledger") / "ledger.db") as running:
        yield running


MODES = ["background", "inline", "capture"]


def recorded(ledger: LocalLedger, mode: str, agent: Any, agent_name: str) -> list[dict[str, Any]]:
    """Run ``agent(client)`` in ``mode`` and return the events the ledger (or the capture) holds, in step order."""
    client = ledger.client(batching=(mode != "inline"))
    try:
        if mode == "capture":
            with capture() as captured:
                agent(client)
            return captured.session(agent_name).events
        agent(client)
        assert client.flush(10) == 0
    finally:
        client.close()
    (summary,) = ledger.sessions(agent_name)
    return list(ledger.session(summary["id"])["events"])


# -- snapshots at call time -----------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_prompts_are_recorded_as_sent_in_the_usual_agent_loop(ledger: LocalLedger, mode: str) -> None:
    agent_name = f"loop-{mode}"

    def agent(client: AgentLedgerClient) -> None:
        messages = [{"role": "user", "content": "hi"}]
        with client.session(agent_name):
            for turn in range(3):
                with client.llm_call(provider="openai", model="gpt-4o-mini", prompt=messages) as call:
                    reply = {"role": "assistant", "content": f"answer {turn}"}
                    call.record(response=reply, tokens_in=10, tokens_out=2)
                messages.append(reply)  # the loop every agent has: the prompt grows after each call
                messages.append({"role": "user", "content": f"more {turn}"})
                reply["content"] = "changed later"  # and the response object is reused

    events = recorded(ledger, mode, agent, agent_name)
    assert [len(e["prompt"]) for e in events] == [1, 3, 5]
    assert [e["response"]["content"] for e in events] == ["answer 0", "answer 1", "answer 2"]


@dataclasses.dataclass
class Query:
    text: str
    filters: list[str]


@pytest.mark.parametrize("mode", MODES)
def test_tool_inputs_and_outputs_are_recorded_as_they_were_then(ledger: LocalLedger, mode: str) -> None:
    agent_name = f"tool-{mode}"

    def agent(client: AgentLedgerClient) -> None:
        state: dict[str, list[str]] = {"seen": []}

        @client.tool
        def search(query: Query, history: list[str]) -> dict[str, list[str]]:
            history.append(query.text)  # the tool itself mutates its input
            state["seen"].append(query.text)
            return state

        with client.session(agent_name):
            query = Query("refunds", ["a"])
            history: list[str] = []
            search(query, history)
            query.filters.append("b")  # the caller mutates what it passed
            query.text = "changed"
            search(Query("returns", []), history)

    call1, result1, call2, result2 = recorded(ledger, mode, agent, agent_name)
    assert call1["toolInput"] == {"query": {"text": "refunds", "filters": ["a"]}, "history": []}
    assert result1["toolOutput"] == {"seen": ["refunds"]}
    assert call2["toolInput"] == {"query": {"text": "returns", "filters": []}, "history": ["refunds"]}
    assert result2["toolOutput"] == {"seen": ["refunds", "returns"]}


@pytest.mark.parametrize("mode", ["background", "capture"])
def test_async_tools_and_generators_snapshot_too(ledger: LocalLedger, mode: str) -> None:
    agent_name = f"async-{mode}"

    def agent(client: AgentLedgerClient) -> None:
        @client.tool
        async def fetch(items: list[int]) -> list[int]:
            await asyncio.sleep(0)
            return items

        @client.tool
        def stream(n: int) -> Iterator[dict[str, int]]:
            item = {"i": 0}
            for i in range(n):
                item["i"] = i  # the same object, changed after each yield
                yield item

        async def main() -> None:
            async with client.session(agent_name):
                items = [1]
                out = await fetch(items)
                out.append(2)
                assert [dict(x) for x in stream(3)] == [{"i": 0}, {"i": 1}, {"i": 2}]

        asyncio.run(main())

    events = recorded(ledger, mode, agent, agent_name)
    assert events[1]["toolOutput"] == [1]
    assert events[3]["toolOutput"] == {"items": [{"i": 0}, {"i": 1}, {"i": 2}], "count": 3}


# -- a bad event is rejected alone ------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_lossless_values_are_coerced_and_a_bad_event_is_rejected_alone(
    ledger: LocalLedger, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    agent_name = f"coerce-{mode}"

    def agent(client: AgentLedgerClient) -> None:
        @client.tool
        def step(i: int) -> int:
            return i

        with client.session(agent_name):
            for i in range(40):
                step(i)
            with client.llm_call(provider="openai", model="gpt-4o-mini", prompt="p") as call:
                call.record(response="r", tokens_in=12.0, tokens_out="3")  # type: ignore[arg-type]
            with client.llm_call(provider="openai", model="gpt-4o-mini", prompt="p") as call:
                call.record(response="r", tokens_in=12.5, tokens_out=1)  # type: ignore[arg-type]
            for i in range(40):
                step(i)

    events = recorded(ledger, mode, agent, agent_name)
    assert len(events) == 40 * 2 + 40 * 2 + 1  # only the fractional-token call is missing
    (llm,) = [e for e in events if e["type"] == "llm_call"]
    assert (llm["tokensIn"], llm["tokensOut"]) == (12, 3)
    (line,) = [r for r in caplog.records if "was not recorded" in r.getMessage()]
    assert line.levelno == logging.WARNING
    assert "tokensIn must be a whole number >= 0, got 12.5" in line.getMessage()
    assert "tokens_in=response.usage" in line.getMessage()  # says how to fix it


def test_an_event_the_ledger_refuses_is_dropped_alone_and_the_rest_recorded(
    ledger: LocalLedger, caplog: pytest.LogCaptureFixture
) -> None:
    client = ledger.client()
    with client.session("refused-one") as session:
        for i in range(30):
            session.log("note", i=i)
        session.log("note", started_at="yesterday")  # the SDK passes it; the ledger checks startedAt
        for i in range(30, 60):
            session.log("note", i=i)
    assert client.flush(10) == 0
    (summary,) = ledger.sessions("refused-one")
    assert summary["eventCount"] == 60
    assert client.stats.rejected == 1 and client.stats.sent == 60
    assert any("startedAt" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    client.close()


# -- spans and session context ----------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_events_carry_start_times_and_spans_nested_as_the_calls_were(ledger: LocalLedger, mode: str) -> None:
    agent_name = f"spans-{mode}"

    def agent(client: AgentLedgerClient) -> None:
        @client.tool
        def research(topic: str) -> str:
            with client.llm_call(provider="openai", model="gpt-4o-mini", prompt=topic) as call:
                call.record(response="notes", tokens_in=5, tokens_out=1)
            client.current_session().log("checkpoint")  # type: ignore[union-attr]
            return "notes"

        with client.session(agent_name):
            research("tides")
            with client.llm_call(provider="openai", model="gpt-4o-mini", prompt="sum up") as call:
                call.record(response="done", tokens_in=5, tokens_out=1)

    events = {(e["type"], e["stepIndex"]): e for e in recorded(ledger, mode, agent, agent_name)}
    tool_call, tool_result = events["tool_call", 0], events["tool_result", 0]
    inner, checkpoint, outer = events["llm_call", 1], events["checkpoint", 2], events["llm_call", 3]
    for event in events.values():
        assert RFC3339_MS.match(event["startedAt"])
    assert SPAN_ID.match(tool_call["spanId"])
    assert tool_result["spanId"] == tool_call["spanId"]  # one span for the call and its result
    assert inner["parentSpanId"] == tool_call["spanId"]
    assert checkpoint["parentSpanId"] == tool_call["spanId"]
    assert inner["spanId"] not in (tool_call["spanId"], outer["spanId"])
    assert "parentSpanId" not in outer and "parentSpanId" not in tool_call
    assert tool_call["startedAt"] <= inner["startedAt"] <= outer["startedAt"]


@pytest.mark.parametrize("batching", [True, False])
def test_sessions_carry_user_tags_metadata_and_their_parent(ledger: LocalLedger, batching: bool) -> None:
    client = ledger.client(batching=batching)
    user = f"u-{batching}"

    @client.session("sub-agent", tags=["child"])
    def sub_agent() -> str:
        return "ok"

    with client.session("orchestrator", user_id=user, tags=["beta", "eu"], metadata={"plan": "pro", "n": 1}) as s:
        sub_agent()
    assert client.flush(10) == 0
    client.close()
    (parent,) = ledger.sessions("orchestrator", user=user)
    detail = ledger.session(parent["id"])
    assert (detail["userId"], detail["tags"], detail["metadata"]) == (user, ["beta", "eu"], {"plan": "pro", "n": 1})
    assert s.id == parent["id"]
    (child_id,) = detail["childSessionIds"]
    child = ledger.session(child_id)
    assert child["parentSessionId"] == parent["id"]
    assert child["agentName"] == "sub-agent" and child["tags"] == ["child"]
    assert [x["id"] for x in ledger.sessions(tags=["beta", "eu"], user=user)] == [parent["id"]]
    assert ledger.sessions(tags=["beta", "missing"], user=user) == []


def test_session_context_is_checked_up_front_with_a_clear_error(ledger: LocalLedger) -> None:
    client = ledger.client()
    with pytest.raises(TypeError, match=r'tags must be a list of strings, e\.g\. tags=\["beta", "eu"\]'):
        client.session("bot", tags="beta")
    with pytest.raises(ValueError, match="user_id must be a non-empty string"):
        client.session("bot", user_id="")
    with pytest.raises(TypeError, match="metadata must be a dict"):
        client.session("bot", metadata=["x"])  # type: ignore[arg-type]
    client.close()


def test_the_published_start_body_is_unchanged_without_context(ledger: LocalLedger) -> None:
    import httpx
    import respx

    with respx.mock(base_url="https://ledger.test", assert_all_called=False) as api:
        start = api.post("/v1/sessions").respond(201, json={"id": "s1"})
        api.post("/v1/events").respond(202)
        api.post("/v1/sessions/s1/end").respond(200)
        client = AgentLedgerClient(api_key="k", base_url="https://ledger.test", batching=False)
        with client.session("plain"):
            pass
        assert start.calls.last.request.content == b'{"agentName":"plain"}'
        assert isinstance(start.calls.last.request, httpx.Request)
        client.close()
