"""The LangChain / LangGraph callback handler, with the real langchain-core (and langgraph when installed).

The models are scripted chat models (``FakeChat``): they answer from a list of
``AIMessage`` replies carrying usage as LangChain's provider packages report
it (``usage_metadata``, with cache and reasoning details), and say which
provider and model they are as ``ChatOpenAI`` does (``ls_provider``,
``ls_model_name``). Everything else is LangChain's own code.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any, Optional

import pytest

pytest.importorskip("langchain_core")

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake import FakeListLLM
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langchain_core.tools import StructuredTool, ToolException, tool
from pydantic import Field

import agent_ledger_sdk
from agent_ledger_sdk import AgentLedgerClient, BudgetGuardrailError, _stats
from agent_ledger_sdk.integrations import _calls
from agent_ledger_sdk.integrations import langchain as integration
from agent_ledger_sdk.integrations.langchain import AgentLedgerCallbackHandler
from agent_ledger_sdk.testing import Capture

from .conftest import RFC3339_MS, SPAN_ID

ledger = AgentLedgerClient(api_key="sk-test", base_url="http://127.0.0.1:9")

SNAPSHOT = "gpt-4o-mini-2024-07-18"
# langchain-core adds up the token details of a stream's chunks from 0.3.10 (add_usage); before, only the counts.
STREAMED_DETAILS = hasattr(importlib.import_module("langchain_core.messages.ai"), "add_usage")


@pytest.fixture(autouse=True)
def _no_provider_instrumented() -> Iterator[None]:
    """Each test says itself which provider packages are instrumented for every client."""
    saved = set(_calls.globally_instrumented)
    _calls.globally_instrumented.clear()
    yield
    _calls.globally_instrumented.clear()
    _calls.globally_instrumented.update(saved)


# -- a scripted chat model ------------------------------------------------------------


class FakeChat(BaseChatModel):
    """Answers with its ``replies`` in turn, streamed word by word when asked; ``calls`` counts the requests."""

    replies: list[AIMessage] = Field(default_factory=list)
    provider: str = "openai"
    model: str = "gpt-4o-mini"
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    error: Optional[str] = None
    calls: int = 0

    @property
    def _llm_type(self) -> str:
        return "fake-chat"

    def _get_ls_params(self, stop: Optional[list[str]] = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = self.provider
        params["ls_model_name"] = self.model
        return params

    def _next(self) -> AIMessage:
        self.calls += 1
        if self.error is not None:
            raise RuntimeError(self.error)
        return self.replies.pop(0)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: Optional[list[str]] = None,
        run_manager: Optional[CallbackManagerForLLMRun] = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._next())])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: Optional[list[str]] = None,
        run_manager: Optional[CallbackManagerForLLMRun] = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        reply = self._next()
        for position, word in enumerate(str(reply.content).split(" ")):
            text = word if position == 0 else " " + word
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=text))
            if run_manager is not None:
                run_manager.on_llm_new_token(text, chunk=chunk)
            yield chunk
        # The last chunk carries the usage and why the model stopped, as the providers' streams do.
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="", usage_metadata=reply.usage_metadata, response_metadata=reply.response_metadata
            )
        )


def reply(
    text: str = "",
    *,
    tool_calls: tuple[dict[str, Any], ...] = (),
    tokens_in: int = 100,
    tokens_out: int = 20,
    cache_read: int = 0,
    cache_write: int = 0,
    reasoning: int = 0,
    finish: str = "stop",
) -> AIMessage:
    """An answer as ChatOpenAI / ChatAnthropic make it: ``input_tokens`` counts the cache reads and writes."""
    usage: dict[str, Any] = {
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "total_tokens": tokens_in + tokens_out,
    }
    details = {"cache_read": cache_read, "cache_creation": cache_write}
    if cache_read or cache_write:
        usage["input_token_details"] = {name: count for name, count in details.items() if count}
    if reasoning:
        usage["output_token_details"] = {"reasoning": reasoning}
    return AIMessage(
        content=text,
        tool_calls=[{"type": "tool_call", **call} for call in tool_calls],
        usage_metadata=usage,  # type: ignore[arg-type]
        response_metadata={"model_name": SNAPSHOT, "finish_reason": finish},
    )


def weather_call(city: str = "Paris", call_id: str = "call-1") -> dict[str, Any]:
    return {"id": call_id, "name": "get_weather", "args": {"city": city}}


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    if city == "Atlantis":
        raise ValueError("no such city")
    return f"sunny in {city}"


TOOLS = {"get_weather": get_weather}


def weather_model() -> FakeChat:
    return FakeChat(
        replies=[
            reply(tool_calls=(weather_call(),), tokens_in=50, tokens_out=10, finish="tool_calls"),
            reply("It is sunny in Paris.", tokens_in=80, tokens_out=8),
        ]
    )


def agent_loop(model: FakeChat) -> RunnableLambda[str, str]:
    """The usual agent: ask the model, run the tools it calls, until it answers."""

    def agent(question: str) -> str:
        messages: list[BaseMessage] = [HumanMessage(question)]
        while True:
            answer = model.invoke(messages)
            messages.append(answer)
            if not answer.tool_calls:
                return str(answer.content)
            for call in answer.tool_calls:
                messages.append(TOOLS[call["name"]].invoke(call))

    return RunnableLambda(agent, name="weather-agent")


def async_agent_loop(model: FakeChat) -> RunnableLambda[str, str]:
    # The config is passed on explicitly: before Python 3.11 LangChain cannot carry it into async steps.
    async def agent(question: str, config: RunnableConfig) -> str:
        messages: list[BaseMessage] = [HumanMessage(question)]
        while True:
            answer = await model.ainvoke(messages, config)
            messages.append(answer)
            if not answer.tool_calls:
                return str(answer.content)
            for call in answer.tool_calls:
                messages.append(await TOOLS[call["name"]].ainvoke(call, config))

    return RunnableLambda(agent, name="weather-agent")


def shape(event: dict[str, Any]) -> dict[str, Any]:
    """The event less what differs between runs, after checking its form: start, span, timings."""
    rest = dict(event)
    assert RFC3339_MS.match(rest.pop("startedAt"))
    assert SPAN_ID.match(rest.pop("spanId"))
    if "parentSpanId" in rest:
        assert SPAN_ID.match(rest.pop("parentSpanId"))
    if "latencyMs" in rest:
        latency = rest.pop("latencyMs")
        assert isinstance(latency, int) and latency >= 0
    if "timeToFirstTokenMs" in rest:
        first = rest.pop("timeToFirstTokenMs")
        assert isinstance(first, int) and first >= 0
    return rest


def llm_event(step: int, prompt: list[dict[str, Any]], response: str, **fields: Any) -> dict[str, Any]:
    event = {
        "type": "llm_call",
        "stepIndex": step,
        "provider": "openai",
        "model": SNAPSHOT,
        "prompt": prompt,
        "response": response,
        "retries": 0,
    }
    event.update(fields)
    return event


USER = {"role": "user", "content": "Weather in Paris?"}
ASKS_WEATHER = {
    "role": "assistant",
    "content": "",
    "tool_calls": [{"id": "call-1", "name": "get_weather", "args": {"city": "Paris"}}],
}
WEATHER_ANSWER = {"role": "tool", "content": "sunny in Paris", "name": "get_weather", "tool_call_id": "call-1"}

WEATHER_EVENTS = [
    llm_event(
        0,
        [USER],
        "",
        tokensIn=50,
        tokensOut=10,
        toolCalls=[{"id": "call-1", "name": "get_weather", "args": {"city": "Paris"}}],
        finishReason="tool_calls",
    ),
    {"type": "tool_call", "stepIndex": 1, "toolName": "get_weather", "toolInput": {"city": "Paris"}},
    {"type": "tool_result", "stepIndex": 1, "toolName": "get_weather", "toolOutput": "sunny in Paris"},
    llm_event(
        2, [USER, ASKS_WEATHER, WEATHER_ANSWER], "It is sunny in Paris.", tokensIn=80, tokensOut=8, finishReason="stop"
    ),
]


def assert_top_level(events: list[dict[str, Any]]) -> None:
    """Nothing nests: a loop of model and tool calls, each its own span."""
    assert all("parentSpanId" not in event for event in events)
    call, result = events[1], events[2]
    assert call["spanId"] == result["spanId"] and call["startedAt"] == result["startedAt"]
    assert len({events[0]["spanId"], call["spanId"], events[3]["spanId"]}) == 3


# -- sessions, model calls, tools ----------------------------------------------------


def test_a_chain_is_a_session_and_its_model_call_an_llm_call_with_the_usage(ledger_capture: Capture) -> None:
    model = FakeChat(
        replies=[reply("Paris.", tokens_in=1200, tokens_out=40, cache_read=1000, cache_write=150, reasoning=25)],
        max_tokens=256,
        temperature=0.2,
    )
    prompt = ChatPromptTemplate.from_messages([("system", "Answer in one word."), ("human", "{question}")])
    chain = prompt | model
    handler = AgentLedgerCallbackHandler(ledger, agent_name="geo-bot")

    answer = chain.invoke({"question": "Capital of France?"}, config={"callbacks": [handler]})

    assert answer.content == "Paris."
    (session,) = ledger_capture.sessions
    assert (session.agent_name, session.status) == ("geo-bot", "success")
    (event,) = ledger_capture.events
    assert shape(event) == llm_event(
        0,
        [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Capital of France?"}],
        "Paris.",
        tokensIn=1200,  # LangChain's input_tokens count the cache, as the ledger's tokensIn does
        tokensOut=40,
        cacheReadTokens=1000,
        cacheWriteTokens=150,
        reasoningTokens=25,
        maxTokens=256,
        temperature=0.2,
        finishReason="stop",
    )
    assert "parentSpanId" not in event
    assert agent_ledger_sdk.current_session() is None


def test_the_session_is_named_after_the_run_without_agent_name(ledger_capture: Capture) -> None:
    chain = agent_loop(weather_model())
    chain.invoke("Weather in Paris?", config={"callbacks": [AgentLedgerCallbackHandler(ledger)]})
    assert [(s.agent_name, s.status) for s in ledger_capture.sessions] == [("weather-agent", "success")]


def test_a_tool_calling_agent_records_each_call_and_tool_in_step_order(ledger_capture: Capture) -> None:
    model = weather_model()
    handler = AgentLedgerCallbackHandler(ledger, agent_name="weather")

    answer = agent_loop(model).invoke("Weather in Paris?", config={"callbacks": [handler]})

    assert answer == "It is sunny in Paris."
    (session,) = ledger_capture.sessions
    assert (session.agent_name, session.status) == ("weather", "success")
    events = ledger_capture.events
    assert [shape(event) for event in events] == WEATHER_EVENTS
    assert_top_level(events)
    assert session.events == events


def test_a_model_called_by_a_tool_nests_under_the_tool(ledger_capture: Capture) -> None:
    writer = FakeChat(replies=[reply("A short poem.", tokens_in=30, tokens_out=12)])

    @tool
    def write_poem(topic: str) -> str:
        """Write a poem about a topic."""
        return str(writer.invoke([HumanMessage(f"A poem about {topic}")]).content)

    model = FakeChat(
        replies=[
            reply(tool_calls=({"id": "call-9", "name": "write_poem", "args": {"topic": "rain"}},), finish="tool_calls"),
            reply("Here it is.", tokens_in=90, tokens_out=4),
        ]
    )
    TOOLS["write_poem"] = write_poem
    try:
        agent_loop(model).invoke(
            "A poem?", config={"callbacks": [AgentLedgerCallbackHandler(ledger, agent_name="poet")]}
        )
    finally:
        del TOOLS["write_poem"]

    events = ledger_capture.events
    assert [(e["type"], e["stepIndex"]) for e in events] == [
        ("llm_call", 0),
        ("tool_call", 1),
        ("llm_call", 2),  # the tool's own model call, inside it
        ("tool_result", 1),
        ("llm_call", 3),
    ]
    first, call, inner, result, last = events
    assert inner["parentSpanId"] == call["spanId"] == result["spanId"]
    assert shape(inner) == llm_event(
        2,
        [{"role": "user", "content": "A poem about rain"}],
        "A short poem.",
        tokensIn=30,
        tokensOut=12,
        finishReason="stop",
    )
    assert result["toolOutput"] == "A short poem."
    assert all("parentSpanId" not in e for e in (first, call, result, last))


def test_what_records_inside_a_run_joins_its_session_and_nests_under_its_tool(ledger_capture: Capture) -> None:
    seen: list[Any] = []

    @ledger.tool
    def geocode(city: str) -> tuple[float, float]:
        return (48.86, 2.35)

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        seen.append(agent_ledger_sdk.current_session())
        with ledger.llm_call(provider="openai", model="gpt-4o-mini", prompt=city) as call:
            call.record(response="sunny", tokens_in=5, tokens_out=1)
        return f"sunny at {geocode(city)}"

    TOOLS["get_weather"] = get_weather
    try:
        handler = AgentLedgerCallbackHandler(ledger, agent_name="weather")
        agent_loop(weather_model()).invoke("Weather in Paris?", config={"callbacks": [handler]})
    finally:
        TOOLS["get_weather"] = globals()["get_weather"]

    (session,) = ledger_capture.sessions
    assert seen[0] is not None and seen[0].agent_name == "weather"
    assert agent_ledger_sdk.current_session() is None  # nothing stays current after the run
    events = ledger_capture.events
    assert [(e["type"], e["stepIndex"], e.get("toolName")) for e in events] == [
        ("llm_call", 0, None),
        ("tool_call", 1, "get_weather"),
        ("llm_call", 2, None),
        ("tool_call", 3, "geocode"),
        ("tool_result", 3, "geocode"),
        ("tool_result", 1, "get_weather"),
        ("llm_call", 4, None),
    ]
    tool_span = events[1]["spanId"]
    assert events[2]["parentSpanId"] == events[3]["parentSpanId"] == tool_span
    assert session.events == events


def test_runs_inside_a_current_session_record_into_it(ledger_capture: Capture) -> None:
    handler = AgentLedgerCallbackHandler(ledger, agent_name="ignored")
    with ledger.session("outer") as outer:
        agent_loop(weather_model()).invoke("Weather in Paris?", config={"callbacks": [handler]})
        assert agent_ledger_sdk.current_session() is outer
        assert not outer.ended  # the handler did not start it: it does not end it
    (session,) = ledger_capture.sessions
    assert (session.agent_name, session.status) == ("outer", "success")
    assert [shape(event) for event in session.events] == WEATHER_EVENTS


def test_a_streamed_chain_records_the_whole_answer_and_the_time_to_first_token(ledger_capture: Capture) -> None:
    model = FakeChat(replies=[reply("It is sunny in Paris.", tokens_in=70, tokens_out=7, cache_read=64)])
    chain = ChatPromptTemplate.from_messages([("human", "{question}")]) | model
    handler = AgentLedgerCallbackHandler(ledger, agent_name="streamer")

    chunks = [chunk.content for chunk in chain.stream({"question": "Weather?"}, config={"callbacks": [handler]})]

    assert "".join(str(chunk) for chunk in chunks) == "It is sunny in Paris."
    (event,) = ledger_capture.events
    assert isinstance(event["timeToFirstTokenMs"], int)
    assert shape(event) == llm_event(
        0,
        [{"role": "user", "content": "Weather?"}],
        "It is sunny in Paris.",
        tokensIn=70,
        tokensOut=7,
        **({"cacheReadTokens": 64} if STREAMED_DETAILS else {}),
        finishReason="stop",
    )
    assert ledger_capture.sessions[0].status == "success"
    assert agent_ledger_sdk.current_session() is None


def test_a_text_completion_model_is_an_llm_call_too(ledger_capture: Capture) -> None:
    llm = FakeListLLM(responses=["Paris"])
    handler = AgentLedgerCallbackHandler(ledger, agent_name="completer")
    assert llm.invoke("Capital of France:", config={"callbacks": [handler]}) == "Paris"
    (event,) = ledger_capture.events
    rest = shape(event)
    assert rest.pop("provider")  # what LangChain says of its fake: no package of ours
    assert rest == {
        "type": "llm_call",
        "stepIndex": 0,
        "model": "unknown",
        "prompt": "Capital of France:",
        "response": "Paris",
        "tokensIn": 0,
        "tokensOut": 0,
        "usageMissing": True,  # the fake reports no usage: the ledger flags the call instead of pricing it at $0
        "retries": 0,
    }
    assert [(s.agent_name, s.status) for s in ledger_capture.sessions] == [("completer", "success")]


def test_each_input_of_a_batch_is_a_session_current_in_its_own_runs(ledger_capture: Capture) -> None:
    @ledger.tool
    def lookup(city: str) -> str:
        return city.upper()

    def step(city: str) -> str:
        session = agent_ledger_sdk.current_session()
        assert session is not None
        return f"{lookup(city)} in {session.key}"

    handler = AgentLedgerCallbackHandler(ledger, agent_name="batcher")
    chain = RunnableLambda(lambda city: city.strip()) | RunnableLambda(step)

    outputs = chain.batch(["paris", "rome", "oslo"], config={"callbacks": [handler]})

    assert agent_ledger_sdk.current_session() is None
    sessions = ledger_capture.sessions
    assert [(s.agent_name, s.status) for s in sessions] == [("batcher", "success")] * 3
    # Each input's tool call is in its own session, and each step saw that session as the current one.
    inputs = sorted(s.events[0]["toolInput"]["city"] for s in sessions)
    assert inputs == ["oslo", "paris", "rome"]
    assert all([e["stepIndex"] for e in s.events] == [0, 0] for s in sessions)
    assert len({output.split(" in ")[1] for output in outputs}) == 3


# -- errors --------------------------------------------------------------------------


def test_a_failing_tool_is_recorded_and_the_session_ends_in_error(ledger_capture: Capture) -> None:
    model = FakeChat(replies=[reply(tool_calls=(weather_call("Atlantis"),), finish="tool_calls")])
    handler = AgentLedgerCallbackHandler(ledger, agent_name="weather")

    with pytest.raises(ValueError, match="no such city"):
        agent_loop(model).invoke("Weather in Atlantis?", config={"callbacks": [handler]})

    (session,) = ledger_capture.sessions
    assert (session.status, session.error_message) == ("error", "ValueError: no such city")
    call, result = ledger_capture.events[1:]
    assert shape(call) == {
        "type": "tool_call",
        "stepIndex": 1,
        "toolName": "get_weather",
        "toolInput": {"city": "Atlantis"},
    }
    assert shape(result) == {
        "type": "tool_result",
        "stepIndex": 1,
        "toolName": "get_weather",
        "toolOutput": {"error": "no such city", "errorType": "ValueError"},
    }
    assert agent_ledger_sdk.current_session() is None


def test_a_tool_error_the_tool_handles_is_its_output(ledger_capture: Capture) -> None:
    def fails(city: str) -> str:
        """Sometimes fails."""
        raise ToolException("try again later")

    flaky = StructuredTool.from_function(fails, name="flaky", handle_tool_error=True)

    handler = AgentLedgerCallbackHandler(ledger, agent_name="flaky")
    assert flaky.invoke({"city": "Paris"}, config={"callbacks": [handler]}) == "try again later"
    assert [(s.agent_name, s.status) for s in ledger_capture.sessions] == [("flaky", "success")]
    assert [shape(e) for e in ledger_capture.events] == [
        {"type": "tool_call", "stepIndex": 0, "toolName": "flaky", "toolInput": {"city": "Paris"}},
        {"type": "tool_result", "stepIndex": 0, "toolName": "flaky", "toolOutput": "try again later"},
    ]


def test_a_failing_model_call_is_recorded_with_its_error_and_no_cost(ledger_capture: Capture) -> None:
    model = FakeChat(error="provider down")
    handler = AgentLedgerCallbackHandler(ledger, agent_name="fragile")

    with pytest.raises(RuntimeError, match="provider down"):
        agent_loop(model).invoke("Weather in Paris?", config={"callbacks": [handler]})

    (session,) = ledger_capture.sessions
    assert (session.status, session.error_message) == ("error", "RuntimeError: provider down")
    (event,) = ledger_capture.events
    assert shape(event) == {
        "type": "llm_call",
        "stepIndex": 0,
        "provider": "openai",
        "model": "gpt-4o-mini",
        "prompt": [USER],
        "response": "",
        "tokensIn": 0,
        "tokensOut": 0,
        "error": "RuntimeError: provider down",
        "retries": 0,
    }


def test_a_fault_of_the_handler_never_breaks_the_chain(
    ledger_capture: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(call: Any, response: Any) -> None:
        raise RuntimeError("bug in the handler")

    monkeypatch.setattr(integration, "_record_result", broken)
    handler = AgentLedgerCallbackHandler(ledger, agent_name="weather")

    answer = agent_loop(weather_model()).invoke("Weather in Paris?", config={"callbacks": [handler]})

    assert answer == "It is sunny in Paris."
    assert _stats.internal_errors == ["langchain model result: RuntimeError: bug in the handler"] * 2
    _stats.internal_errors.clear()  # seen: the plugin would fail the test on them
    # The calls are still recorded, with what could be read (nothing) flagged rather than priced at $0.
    assert [(e["type"], e.get("usageMissing")) for e in ledger_capture.events] == [
        ("llm_call", True),
        ("tool_call", None),
        ("tool_result", None),
        ("llm_call", True),
    ]
    assert ledger_capture.sessions[0].status == "success"


def test_a_disabled_client_records_nothing_and_changes_nothing(ledger_capture: Capture) -> None:
    off = AgentLedgerClient(api_key="sk-test", base_url="http://127.0.0.1:9", enabled=False)
    handler = AgentLedgerCallbackHandler(off, agent_name="weather")
    assert agent_loop(weather_model()).invoke("Weather in Paris?", config={"callbacks": [handler]}) == (
        "It is sunny in Paris."
    )
    assert ledger_capture.sessions == [] and ledger_capture.events == []
    off.close()


def test_the_agent_name_must_be_a_name() -> None:
    with pytest.raises(ValueError, match="agent_name must be a non-empty string"):
        AgentLedgerCallbackHandler(ledger, agent_name=" ")
    with pytest.raises(TypeError, match="tags must be a list of strings"):
        AgentLedgerCallbackHandler(ledger, tags="beta")  # type: ignore[arg-type]


# -- async ---------------------------------------------------------------------------


def test_ainvoke_records_what_invoke_records(ledger_capture: Capture) -> None:
    handler = AgentLedgerCallbackHandler(ledger, agent_name="weather")

    async def main() -> str:
        answer = await async_agent_loop(weather_model()).ainvoke("Weather in Paris?", config={"callbacks": [handler]})
        assert agent_ledger_sdk.current_session() is None  # the caller's context is left as it was
        return answer

    assert asyncio.run(main()) == "It is sunny in Paris."
    (session,) = ledger_capture.sessions
    assert (session.agent_name, session.status) == ("weather", "success")
    assert [shape(event) for event in ledger_capture.events] == WEATHER_EVENTS
    assert_top_level(ledger_capture.events)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="LangChain carries context into async steps from 3.11")
@pytest.mark.parametrize("kind", ["async tool", "sync tool"])
def test_what_records_inside_an_async_run_joins_its_session(ledger_capture: Capture, kind: str) -> None:
    seen: list[Any] = []

    @ledger.tool
    def geocode(city: str) -> tuple[float, float]:
        seen.append(agent_ledger_sdk.current_session())
        return (48.86, 2.35)

    if kind == "async tool":

        @tool
        async def get_weather(city: str) -> str:
            """The weather in a city."""
            return f"sunny at {geocode(city)}"

    else:  # LangChain runs a sync tool's sync code in a thread, callbacks included

        @tool
        def get_weather(city: str) -> str:
            """The weather in a city."""
            return f"sunny at {geocode(city)}"

    TOOLS["get_weather"] = get_weather
    handler = AgentLedgerCallbackHandler(ledger, agent_name="weather")

    async def main() -> None:
        await async_agent_loop(weather_model()).ainvoke("Weather in Paris?", config={"callbacks": [handler]})
        assert agent_ledger_sdk.current_session() is None

    try:
        asyncio.run(main())
    finally:
        TOOLS["get_weather"] = globals()["get_weather"]

    (session,) = ledger_capture.sessions
    assert seen[0] is not None and seen[0].agent_name == "weather"
    events = session.events
    assert [(e["type"], e["stepIndex"], e.get("toolName")) for e in events] == [
        ("llm_call", 0, None),
        ("tool_call", 1, "get_weather"),
        ("tool_call", 2, "geocode"),
        ("tool_result", 2, "geocode"),
        ("tool_result", 1, "get_weather"),
        ("llm_call", 3, None),
    ]
    assert events[2]["parentSpanId"] == events[1]["spanId"]


def test_astream_records_the_streamed_call(ledger_capture: Capture) -> None:
    model = FakeChat(replies=[reply("It is sunny in Paris.", tokens_in=70, tokens_out=7, reasoning=3)])
    chain = ChatPromptTemplate.from_messages([("human", "{question}")]) | model
    handler = AgentLedgerCallbackHandler(ledger, agent_name="streamer")

    async def main() -> list[Any]:
        stream: AsyncIterator[Any] = chain.astream({"question": "Weather?"}, config={"callbacks": [handler]})
        chunks = [chunk.content async for chunk in stream]
        assert agent_ledger_sdk.current_session() is None
        return chunks

    assert "".join(str(chunk) for chunk in asyncio.run(main())) == "It is sunny in Paris."
    (event,) = ledger_capture.events
    assert isinstance(event["timeToFirstTokenMs"], int)
    assert shape(event) == llm_event(
        0,
        [{"role": "user", "content": "Weather?"}],
        "It is sunny in Paris.",
        tokensIn=70,
        tokensOut=7,
        **({"reasoningTokens": 3} if STREAMED_DETAILS else {}),
        finishReason="stop",
    )
    assert [(s.agent_name, s.status) for s in ledger_capture.sessions] == [("streamer", "success")]


def test_async_errors_end_the_session_in_error(ledger_capture: Capture) -> None:
    model = FakeChat(replies=[reply(tool_calls=(weather_call("Atlantis"),), finish="tool_calls")])
    handler = AgentLedgerCallbackHandler(ledger, agent_name="weather")

    async def main() -> None:
        with pytest.raises(ValueError, match="no such city"):
            await async_agent_loop(model).ainvoke("Weather in Atlantis?", config={"callbacks": [handler]})

    asyncio.run(main())
    (session,) = ledger_capture.sessions
    assert (session.status, session.error_message) == ("error", "ValueError: no such city")
    assert ledger_capture.events[-1]["toolOutput"] == {"error": "no such city", "errorType": "ValueError"}


# -- LangGraph -----------------------------------------------------------------------


def weather_graph(model: FakeChat) -> Any:
    graph_module = pytest.importorskip("langgraph.graph")
    prebuilt = pytest.importorskip("langgraph.prebuilt")

    def call_model(state: dict[str, Any]) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    async def acall_model(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"], config)]}

    graph = graph_module.StateGraph(graph_module.MessagesState)
    graph.add_node("agent", RunnableLambda(call_model, afunc=acall_model))
    graph.add_node("tools", prebuilt.ToolNode([get_weather]))
    graph.add_edge(graph_module.START, "agent")
    graph.add_conditional_edges("agent", prebuilt.tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile()


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
def test_a_langgraph_agent_with_a_tool_node(ledger_capture: Capture, mode: str) -> None:
    pytest.importorskip("langgraph")
    graph = weather_graph(weather_model())
    handler = AgentLedgerCallbackHandler(ledger, agent_name="weather-graph")
    state = {"messages": [HumanMessage("Weather in Paris?")]}

    if mode == "invoke":
        result = graph.invoke(state, config={"callbacks": [handler]})
    else:
        result = asyncio.run(graph.ainvoke(state, config={"callbacks": [handler]}))

    assert result["messages"][-1].content == "It is sunny in Paris."
    assert agent_ledger_sdk.current_session() is None
    (session,) = ledger_capture.sessions
    assert (session.agent_name, session.status) == ("weather-graph", "success")
    events = [shape(event) for event in ledger_capture.events]
    assert events == WEATHER_EVENTS
    assert_top_level(ledger_capture.events)


def test_a_langgraph_run_is_named_langgraph_without_agent_name(ledger_capture: Capture) -> None:
    pytest.importorskip("langgraph")
    graph = weather_graph(weather_model())
    graph.invoke(
        {"messages": [HumanMessage("Weather in Paris?")]}, config={"callbacks": [AgentLedgerCallbackHandler(ledger)]}
    )
    assert [(s.agent_name, s.status) for s in ledger_capture.sessions] == [("LangGraph", "success")]


# -- a provider package that records its own calls -----------------------------------


def openai_chat_model(answer: str) -> tuple[Any, Any, list[Any]]:
    """A ChatOpenAI stand-in: a chat model that calls the real ``openai`` client; its HTTP faked, requests kept."""
    openai = pytest.importorskip("openai")
    base_client = importlib.import_module("openai._base_client")
    http = getattr(base_client, "httpx2", None) or importlib.import_module("httpx")
    requests: list[Any] = []

    def handle(request: Any) -> Any:
        body = json.loads(request.content)
        requests.append(body)
        return http.Response(
            200,
            json={
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1764000000,
                "model": SNAPSHOT,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 42, "completion_tokens": 6, "total_tokens": 48},
            },
        )

    client = openai.OpenAI(api_key="sk-fake", http_client=http.Client(transport=http.MockTransport(handle)))

    class ChatOpenAIStandIn(FakeChat):
        def _generate(
            self,
            messages: list[BaseMessage],
            stop: Optional[list[str]] = None,
            run_manager: Optional[CallbackManagerForLLMRun] = None,
            **kwargs: Any,
        ) -> ChatResult:
            self.calls += 1
            completion = client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": str(m.content)} for m in messages]
            )
            usage = completion.usage
            message = AIMessage(
                content=completion.choices[0].message.content or "",
                usage_metadata={
                    "input_tokens": usage.prompt_tokens,
                    "output_tokens": usage.completion_tokens,
                    "total_tokens": usage.total_tokens,
                },
                response_metadata={"model_name": completion.model, "finish_reason": "stop"},
            )
            return ChatResult(generations=[ChatGeneration(message=message)])

    return ChatOpenAIStandIn(), client, requests


def test_a_model_whose_package_is_instrumented_is_recorded_once_by_its_integration(ledger_capture: Capture) -> None:
    writer, client, requests = openai_chat_model("A short poem.")

    @tool
    def write_poem(topic: str) -> str:
        """Write a poem about a topic."""
        return str(writer.invoke([HumanMessage(f"A poem about {topic}")]).content)

    ledger.instrument_openai()  # every client: ChatOpenAI's calls are recorded by the openai integration
    try:
        assert "openai" in _calls.globally_instrumented
        handler = AgentLedgerCallbackHandler(ledger, agent_name="poet")
        chain = RunnableLambda(lambda topic: write_poem.invoke({"topic": topic}), name="poet-chain")
        assert chain.invoke("rain", config={"callbacks": [handler]}) == "A short poem."
    finally:
        ledger.uninstrument_openai()
        client.close()

    assert len(requests) == 1
    (session,) = ledger_capture.sessions
    assert (session.agent_name, session.status) == ("poet", "success")
    events = ledger_capture.events
    assert [(e["type"], e["stepIndex"]) for e in events] == [("tool_call", 0), ("llm_call", 1), ("tool_result", 0)]
    call, llm, _ = events
    assert llm["parentSpanId"] == call["spanId"]  # in the handler's session, under the LangChain tool
    assert (llm["provider"], llm["model"], llm["tokensIn"], llm["tokensOut"]) == ("openai", SNAPSHOT, 42, 6)
    assert llm["prompt"] == [{"role": "user", "content": "A poem about rain"}]
    assert session.events == events


def test_a_model_call_of_an_instrumented_package_on_its_own_is_left_to_its_integration(
    ledger_capture: Capture,
) -> None:
    model, client, requests = openai_chat_model("Paris.")
    instrumented = AgentLedgerClient(api_key="sk-test", base_url="http://127.0.0.1:9", agent_name="nightly")
    instrumented.instrument_openai()
    try:
        handler = AgentLedgerCallbackHandler(instrumented, agent_name="geo-bot")
        assert model.invoke("Capital of France?", config={"callbacks": [handler]}).content == "Paris."
    finally:
        instrumented.uninstrument_openai()
        client.close()
        instrumented.close()
    # As with no handler: the integration's call, in the client's implicit session.
    assert len(requests) == 1
    (session,) = ledger_capture.sessions
    assert session.agent_name == "nightly"
    assert [e["type"] for e in session.events] == ["llm_call"]


# -- a real local ledger: budgets and prices -----------------------------------------


@pytest.mark.integration
def test_a_budget_refusal_stops_the_run_before_the_model_is_called(local_ledger: Any) -> None:
    local_ledger.set_budget("capped", 0.0001)  # 1024 output tokens of gpt-4o-mini may cost $0.0006
    model = weather_model()
    handler = AgentLedgerCallbackHandler(agent_name="capped")  # the default client: the environment's ledger

    with pytest.raises(BudgetGuardrailError):
        agent_loop(model).invoke("Weather in Paris?", config={"callbacks": [handler]})

    assert model.calls == 0  # refused before the request
    assert agent_ledger_sdk.current_session() is None
    assert local_ledger.flush() == 0
    (session,) = local_ledger.sessions("capped")
    recorded = local_ledger.session(session["id"])
    assert recorded["status"] == "error"
    assert recorded["events"] == []
    agent_ledger_sdk.get_client().close()


@pytest.mark.integration
def test_an_async_budget_refusal_stops_the_run_before_the_model_is_called(local_ledger: Any) -> None:
    local_ledger.set_budget("capped", 0.0001)
    model = weather_model()
    client = local_ledger.async_client()
    handler = AgentLedgerCallbackHandler(client, agent_name="capped")

    async def main() -> None:
        with pytest.raises(BudgetGuardrailError):
            await async_agent_loop(model).ainvoke("Weather in Paris?", config={"callbacks": [handler]})
        await client.aclose()

    asyncio.run(main())
    assert model.calls == 0
    assert local_ledger.flush() == 0
    (session,) = local_ledger.sessions("capped")
    assert local_ledger.session(session["id"])["status"] == "error"


@pytest.mark.integration
def test_the_ledger_prices_the_calls_a_langchain_agent_makes(local_ledger: Any) -> None:
    from genai_prices import Usage, calc_price

    local_ledger.set_budget("priced", 5)  # a budget: each call reserves first, then settles at its price
    model = FakeChat(
        replies=[
            reply(tool_calls=(weather_call(),), tokens_in=1000, tokens_out=100, cache_read=400, finish="tool_calls"),
            reply("It is sunny in Paris.", tokens_in=1200, tokens_out=30, cache_read=1000),
        ]
    )
    client = local_ledger.client()
    handler = AgentLedgerCallbackHandler(client, agent_name="priced", user_id="u-42", tags=["langchain"])

    agent_loop(model).invoke("Weather in Paris?", config={"callbacks": [handler]})

    assert client.flush(10) == 0
    assert local_ledger.flush() == 0
    client.close()
    (summary,) = local_ledger.sessions("priced")
    session = local_ledger.session(summary["id"])
    assert session["status"] == "success"
    assert (session["userId"], session["tags"]) == ("u-42", ["langchain"])
    events = session["events"]
    assert [(e["type"], e["stepIndex"]) for e in events] == [
        ("llm_call", 0),
        ("tool_call", 1),
        ("tool_result", 1),
        ("llm_call", 2),
    ]
    for event, (tokens_in, tokens_out, cache_read) in zip(
        [e for e in events if e["type"] == "llm_call"], [(1000, 100, 400), (1200, 30, 1000)]
    ):
        price = calc_price(
            Usage(input_tokens=tokens_in, cache_read_tokens=cache_read, output_tokens=tokens_out),
            model_ref=SNAPSHOT,
            provider_id="openai",
        ).total_price
        assert event["costStatus"] == "priced"
        assert Decimal(str(event["costUsd"])) == price > 0
        assert event["reservationId"]
    assert Decimal(str(session["costUsd"])) > 0


# -- packaging -------------------------------------------------------------------------


def test_importing_the_sdk_does_not_import_langchain() -> None:
    code = "import sys, agent_ledger_sdk, agent_ledger_sdk.integrations; assert 'langchain_core' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_handler_is_a_langchain_callback_handler() -> None:
    from langchain_core.callbacks import BaseCallbackHandler

    handler = AgentLedgerCallbackHandler(ledger, agent_name="bot")
    assert isinstance(handler, BaseCallbackHandler)
    assert handler.run_inline and handler.raise_error
    assert repr(handler) == "AgentLedgerCallbackHandler(agent_name='bot')"
