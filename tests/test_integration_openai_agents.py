"""The OpenAI Agents SDK integration: the real ``agents`` package, OpenAI's HTTP faked at the client's transport."""

from __future__ import annotations

import asyncio
import contextvars
import json
from collections.abc import Iterator
from typing import Any, Callable

import httpx
import pytest

pytest.importorskip("agents")

import agents
import openai
from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, OpenAIResponsesModel, RunConfig, Runner

from agent_ledger_sdk import AgentLedgerClient
from agent_ledger_sdk.integrations import _calls
from agent_ledger_sdk.integrations import openai_agents as integration
from agent_ledger_sdk.integrations.openai_agents import AgentLedgerProcessor
from agent_ledger_sdk.testing import Capture

from .conftest import RFC3339_MS, SPAN_ID

ledger = AgentLedgerClient(api_key="sk-test", base_url="http://127.0.0.1:9")

MODEL = "gpt-4o-mini"
ANSWERED_BY = "gpt-4o-mini-2024-07-18"  # the model a response names: the dated snapshot that answered


# -- OpenAI, faked --------------------------------------------------------------


def usage(tokens_in: int, tokens_out: int, cached: int, reasoning: int) -> dict[str, Any]:
    return {
        "input_tokens": tokens_in,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": tokens_out,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": tokens_in + tokens_out,
    }


def message(text: str, number: int = 1) -> dict[str, Any]:
    return {
        "type": "message",
        "id": f"msg_{number}",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def function_call(name: str, arguments: dict[str, Any], number: int = 1) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": f"fc_{number}",
        "call_id": f"call_{number}",
        "name": name,
        "arguments": json.dumps(arguments),
        "status": "completed",
    }


def response(response_id: str, output: list[dict[str, Any]], tokens: dict[str, Any]) -> dict[str, Any]:
    """A Responses API body as api.openai.com returns it."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": 1760000000,
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": ANSWERED_BY,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": tokens,
        "user": None,
        "metadata": {},
    }


class FakeOpenAI:
    """OpenAI's HTTP API answering from a script, one response per request, every request kept."""

    def __init__(self) -> None:
        self.script: list[Callable[[dict[str, Any]], httpx.Response]] = []
        self.requests: list[dict[str, Any]] = []

    def reply(self, body: dict[str, Any], status: int = 200) -> None:
        self.script.append(lambda request: httpx.Response(status, json=body))

    def handler(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        return self.script.pop(0)(body)

    def client(self) -> openai.AsyncOpenAI:
        transport = httpx.MockTransport(self.handler)
        return openai.AsyncOpenAI(api_key="sk-test", max_retries=0, http_client=httpx.AsyncClient(transport=transport))

    def responses_model(self) -> OpenAIResponsesModel:
        return OpenAIResponsesModel(model=MODEL, openai_client=self.client())


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    yield fake
    assert fake.script == [], "the agent made fewer model requests than scripted"


@pytest.fixture
def processor() -> Iterator[AgentLedgerProcessor]:
    """The ledger's processor as the Agents SDK's only one: nothing is exported to OpenAI."""
    before = integration._registered()
    assert before is not None
    made = AgentLedgerProcessor(ledger)
    agents.set_trace_processors([made])
    yield made
    agents.set_trace_processors(before)
    assert made._runs == {} and made._spans == {}, "a run's state was left behind"


class SpanRecorder(agents.TracingProcessor):
    """What the SDK's spans carry, as they end."""

    def __init__(self) -> None:
        self.ended: list[dict[str, Any]] = []

    def on_trace_start(self, trace: Any) -> None:
        pass

    def on_trace_end(self, trace: Any) -> None:
        pass

    def on_span_start(self, span: Any) -> None:
        pass

    def on_span_end(self, span: Any) -> None:
        self.ended.append(span.span_data.export())

    def shutdown(self) -> None:
        pass

    def force_flush(self) -> None:
        pass


@pytest.fixture
def no_trace_processors() -> Iterator[None]:
    before = integration._registered()
    assert before is not None
    agents.set_trace_processors([])
    yield
    integration.uninstrument()
    agents.set_trace_processors(before)


@pytest.fixture
def openai_instrumented() -> Iterator[None]:
    """As after ``instrument_openai()`` with no client: the openai integration records every request."""
    was = "openai" in _calls.globally_instrumented
    _calls.globally_instrumented.add("openai")
    yield
    if not was:
        _calls.globally_instrumented.discard("openai")


@agents.function_tool
def get_weather(city: str, unit: str = "celsius") -> str:
    """The weather in a city."""
    return f"18 degrees {unit} and sunny in {city}"


@agents.function_tool(failure_error_function=None)
def get_forecast(city: str) -> str:
    """Tomorrow's weather in a city."""
    raise ConnectionError(f"the forecast service for {city} is down")


ANSWER = "It is 18 degrees and sunny in Paris."


def script_weather(fake: FakeOpenAI) -> None:
    fake.reply(response("resp_1", [function_call("get_weather", {"city": "Paris"})], usage(120, 30, 64, 12)))
    fake.reply(response("resp_2", [message(ANSWER)], usage(180, 15, 128, 0)))


def weather_agent(fake: FakeOpenAI, **options: Any) -> Agent[Any]:
    options.setdefault("tools", [get_weather])
    return Agent(name="weather", instructions="Answer briefly.", model=fake.responses_model(), **options)


# -- checking events ------------------------------------------------------------


def spans_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events less their span keys, after checking their form; parents as the index of the parent event."""
    owners: dict[str, int] = {}
    for number, event in enumerate(events):
        if "spanId" in event:
            assert SPAN_ID.match(event["spanId"]), event
            owners.setdefault(event["spanId"], number)
    result = []
    for event in events:
        rest = dict(event)
        assert RFC3339_MS.match(rest.pop("startedAt")), event
        rest.pop("spanId", None)
        parent = rest.pop("parentSpanId", None)
        if parent is not None:
            rest["parent"] = owners[parent]
        if "latencyMs" in rest:
            assert isinstance(rest.pop("latencyMs"), int)
        result.append(rest)
    return result


def in_steps(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(events, key=lambda e: (e["stepIndex"], e["type"] == "tool_result"))


WEATHER_PROMPT = [{"content": "Weather in Paris?", "role": "user"}]
WEATHER_CALL = {
    "arguments": '{"city": "Paris"}',
    "call_id": "call_1",
    "name": "get_weather",
    "type": "function_call",
    "id": "fc_1",
    "status": "completed",
}


def llm_call(step: int, parent: int, prompt: Any, output: Any, response_id: str, **tokens: Any) -> dict[str, Any]:
    return {
        "type": "llm_call",
        "stepIndex": step,
        "parent": parent,
        "provider": "openai",
        "model": ANSWERED_BY,
        "prompt": prompt,
        "response": output,
        "responseId": response_id,
        **tokens,
    }


def run_sync(agent: Agent[Any], prompt: str, **options: Any) -> Any:
    """``Runner.run_sync`` on a new default loop: the SDK shuts the async generators of the thread's default
    loop down after each run (0.24), and the next run there warns (an error under this suite's warning filter)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return Runner.run_sync(agent, prompt, **options)
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def subset(actual: Any, expected: Any) -> bool:
    """``expected``'s keys (recursively) hold the same values in ``actual``: responses carry more fields by version."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and subset(actual[k], v) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and len(actual) == len(expected) and all(map(subset, actual, expected))
    return bool(actual == expected)


# -- a run ----------------------------------------------------------------------


def test_a_run_is_a_session_of_its_agent_with_its_llm_calls_and_tool_calls(
    processor: AgentLedgerProcessor, fake_openai: FakeOpenAI, ledger_capture: Capture
) -> None:
    script_weather(fake_openai)

    result = run_sync(weather_agent(fake_openai), "Weather in Paris?")

    assert result.final_output == ANSWER
    (session,) = ledger_capture.sessions
    assert (session.agent_name, session.status, session.error_message) == ("weather", "success", None)
    events = spans_of(session.events)
    assert [(e["type"], e["stepIndex"]) for e in events] == [
        ("agent", 0),
        ("llm_call", 1),
        ("tool_call", 2),
        ("tool_result", 2),
        ("llm_call", 3),
    ]
    agent, first, call, result_event, second = events
    assert agent == {"type": "agent", "stepIndex": 0, "agentName": "weather"}
    assert call == {
        "type": "tool_call",
        "stepIndex": 2,
        "parent": 0,
        "toolName": "get_weather",
        "toolInput": {"city": "Paris"},
    }
    assert result_event == {
        "type": "tool_result",
        "stepIndex": 2,
        "parent": 0,
        "toolName": "get_weather",
        "toolOutput": "18 degrees celsius and sunny in Paris",
    }
    tokens_1 = {"tokensIn": 120, "tokensOut": 30, "cacheReadTokens": 64, "reasoningTokens": 12}
    expected_first = llm_call(1, 0, WEATHER_PROMPT, [WEATHER_CALL], "resp_1", **tokens_1)
    assert subset(first, expected_first), first
    assert set(first) == set(expected_first) | ({"cacheWriteTokens"} & set(first))
    assert first.get("cacheWriteTokens", 0) == 0
    tokens_2 = {"tokensIn": 180, "tokensOut": 15, "cacheReadTokens": 128, "reasoningTokens": 0}
    answer = [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": ANSWER}]}]
    tool_output = {
        "call_id": "call_1",
        "output": "18 degrees celsius and sunny in Paris",
        "type": "function_call_output",
    }
    prompt_2 = [*WEATHER_PROMPT, WEATHER_CALL, tool_output]
    expected_second = llm_call(3, 0, prompt_2, answer, "resp_2", **tokens_2)
    assert subset(second, expected_second), second
    assert set(second) == set(expected_second) | ({"cacheWriteTokens"} & set(second))
    # The prompt and the response are what went over the wire.
    assert fake_openai.requests[0]["input"] == WEATHER_PROMPT
    assert fake_openai.requests[0]["model"] == MODEL


def test_the_latency_is_the_one_the_sdk_measured(
    processor: AgentLedgerProcessor, fake_openai: FakeOpenAI, ledger_capture: Capture
) -> None:
    @agents.function_tool
    async def slow_lookup(city: str) -> str:
        """Slow."""
        await asyncio.sleep(0.05)
        return city

    fake_openai.reply(response("resp_1", [function_call("slow_lookup", {"city": "Oslo"})], usage(10, 5, 0, 0)))
    fake_openai.reply(response("resp_2", [message("Oslo")], usage(20, 2, 0, 0)))
    run_sync(weather_agent(fake_openai, tools=[slow_lookup]), "Weather in Oslo?")

    (result,) = ledger_capture.events_of("tool_result")
    assert 50 <= result["latencyMs"] < 2000
    assert all(0 <= e["latencyMs"] < 2000 for e in ledger_capture.events_of("llm_call"))


def test_a_named_workflow_names_the_session_and_its_trace_is_in_the_metadata(
    processor: AgentLedgerProcessor, fake_openai: FakeOpenAI, ledger_capture: Capture
) -> None:
    fake_openai.reply(response("resp_1", [message("Hello")], usage(10, 2, 0, 0)))

    config = RunConfig(workflow_name="greeter-flow", group_id="thread-7", trace_metadata={"plan": "pro"})
    run_sync(weather_agent(fake_openai), "Hi", run_config=config)

    (session,) = ledger_capture.sessions
    assert (session.agent_name, session.status) == ("greeter-flow", "success")
    assert [e["type"] for e in session.events] == ["agent", "llm_call"]


# -- handoffs, async ------------------------------------------------------------


def test_a_handoff_is_an_event_and_both_agents_record_in_one_session(
    processor: AgentLedgerProcessor, fake_openai: FakeOpenAI, ledger_capture: Capture
) -> None:
    model = fake_openai.responses_model()
    billing = Agent(name="billing", instructions="Handle billing.", model=model, tools=[get_weather])
    triage = Agent(name="triage", instructions="Route the user.", model=model, handoffs=[billing])
    fake_openai.reply(response("resp_1", [function_call("transfer_to_billing", {}, 1)], usage(50, 8, 0, 0)))
    fake_openai.reply(response("resp_2", [function_call("get_weather", {"city": "Rome"}, 2)], usage(70, 9, 32, 0)))
    fake_openai.reply(response("resp_3", [message("Refunded.", 3)], usage(90, 4, 64, 3)))

    async def main() -> Any:
        return await Runner.run(triage, "I want a refund")

    result = asyncio.run(main())

    assert result.final_output == "Refunded."
    assert result.last_agent is billing
    (session,) = ledger_capture.sessions
    assert (session.agent_name, session.status) == ("triage", "success")
    events = spans_of(in_steps(session.events))
    assert [(e["type"], e["stepIndex"], e.get("parent")) for e in events] == [
        ("agent", 0, None),
        ("llm_call", 1, 0),
        ("handoff", 2, 0),
        ("agent", 3, None),
        ("llm_call", 4, 3),
        ("tool_call", 5, 3),
        ("tool_result", 5, 3),
        ("llm_call", 6, 3),
    ]
    assert events[2] == {"type": "handoff", "stepIndex": 2, "parent": 0, "fromAgent": "triage", "toAgent": "billing"}
    assert events[3] == {"type": "agent", "stepIndex": 3, "agentName": "billing"}
    assert events[5]["toolInput"] == {"city": "Rome"}
    assert events[6]["toolOutput"] == "18 degrees celsius and sunny in Rome"
    llm = [e for e in events if e["type"] == "llm_call"]
    assert [(e["tokensIn"], e["tokensOut"], e["cacheReadTokens"], e["reasoningTokens"]) for e in llm] == [
        (50, 8, 0, 0),
        (70, 9, 32, 0),
        (90, 4, 64, 3),
    ]
    assert [e["responseId"] for e in llm] == ["resp_1", "resp_2", "resp_3"]


def test_concurrent_runs_are_separate_sessions(
    processor: AgentLedgerProcessor, fake_openai: FakeOpenAI, ledger_capture: Capture
) -> None:
    fake_openai.reply(response("resp_1", [message("one")], usage(10, 1, 0, 0)))
    fake_openai.reply(response("resp_2", [message("two")], usage(10, 1, 0, 0)))
    model = fake_openai.responses_model()

    async def main() -> list[Any]:
        first = Agent(name="first", model=model)
        second = Agent(name="second", model=model)
        return list(await asyncio.gather(Runner.run(first, "a"), Runner.run(second, "b")))

    asyncio.run(main())

    assert sorted(s.agent_name for s in ledger_capture.sessions) == ["first", "second"]
    for session in ledger_capture.sessions:
        assert session.status == "success"
        assert [(e["type"], e["stepIndex"]) for e in session.events] == [("agent", 0), ("llm_call", 1)]
        assert session.events[0]["agentName"] == session.agent_name


def test_a_streamed_run_records_the_same(
    processor: AgentLedgerProcessor, fake_openai: FakeOpenAI, ledger_capture: Capture
) -> None:
    script_weather_stream(fake_openai)

    async def main() -> str:
        run = Runner.run_streamed(weather_agent(fake_openai), "Weather in Paris?")
        async for _ in run.stream_events():
            pass
        return str(run.final_output)

    assert asyncio.run(main()) == "Sunny."
    (session,) = ledger_capture.sessions
    assert session.status == "success"
    events = in_steps(session.events)
    assert [e["type"] for e in events] == ["agent", "llm_call", "tool_call", "tool_result", "llm_call"]
    assert [(e["tokensIn"], e["cacheReadTokens"], e["reasoningTokens"]) for e in events if "tokensIn" in e] == [
        (120, 64, 12),
        (180, 128, 0),
    ]


def sse(events: list[dict[str, Any]]) -> httpx.Response:
    body = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)
    return httpx.Response(200, content=body.encode(), headers={"content-type": "text/event-stream"})


def script_weather_stream(fake: FakeOpenAI) -> None:
    def streamed(body: dict[str, Any]) -> dict[str, Any]:
        created = {**body, "status": "in_progress", "output": [], "usage": None}
        return {"created": created, "completed": body}

    for body in (
        response("resp_1", [function_call("get_weather", {"city": "Paris"})], usage(120, 30, 64, 12)),
        response("resp_2", [message("Sunny.")], usage(180, 15, 128, 0)),
    ):
        parts = streamed(body)
        items = [
            {"type": "response.output_item.done", "output_index": i, "item": item, "sequence_number": 1 + i}
            for i, item in enumerate(body["output"])
        ]
        frames = [
            {"type": "response.created", "response": parts["created"], "sequence_number": 0},
            *items,
            {"type": "response.completed", "response": parts["completed"], "sequence_number": 1 + len(items)},
        ]
        fake.script.append(lambda request, frames=frames: sse(frames))


# -- inside a ledger session, and with the openai integration -----------------------


def test_a_run_inside_a_ledger_session_records_into_it(
    processor: AgentLedgerProcessor, fake_openai: FakeOpenAI, ledger_capture: Capture
) -> None:
    script_weather(fake_openai)

    with ledger.session("support-bot") as session:
        session.log("retrieval", doc_count=2)
        run_sync(weather_agent(fake_openai), "Weather in Paris?")
        session.log("reply_sent")

    (captured,) = ledger_capture.sessions
    assert (captured.agent_name, captured.status) == ("support-bot", "success")
    assert [(e["type"], e["stepIndex"]) for e in in_steps(captured.events)] == [
        ("retrieval", 0),
        ("agent", 1),
        ("llm_call", 2),
        ("tool_call", 3),
        ("tool_result", 3),
        ("llm_call", 4),
        ("reply_sent", 5),
    ]


def test_the_session_is_current_in_the_run_so_ledger_tools_record_into_it(
    processor: AgentLedgerProcessor, fake_openai: FakeOpenAI, ledger_capture: Capture
) -> None:
    @ledger.tool
    def lookup(city: str) -> str:
        return f"{city}: 18 degrees"

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return lookup(city)

    script_weather(fake_openai)
    run_sync(weather_agent(fake_openai, tools=[get_weather]), "Weather in Paris?")

    (session,) = ledger_capture.sessions
    events = spans_of(in_steps(session.events))
    assert [(e["type"], e.get("toolName"), e.get("parent")) for e in events] == [
        ("agent", None, None),
        ("llm_call", None, 0),
        ("tool_call", "get_weather", 0),
        ("tool_result", "get_weather", 0),
        ("tool_call", "lookup", 2),  # the ledger tool nests under the Agents SDK tool, one step later
        ("tool_result", "lookup", 2),
        ("llm_call", None, 0),
    ]
    assert ledger.current_session() is None  # the run's session was current only during the run


def test_with_openai_instrumented_for_every_client_the_processor_records_no_llm_call(
    processor: AgentLedgerProcessor, openai_instrumented: None, fake_openai: FakeOpenAI, ledger_capture: Capture
) -> None:
    script_weather(fake_openai)

    run_sync(weather_agent(fake_openai), "Weather in Paris?")

    (session,) = ledger_capture.sessions
    assert [(e["type"], e["stepIndex"]) for e in session.events] == [
        ("agent", 0),
        ("tool_call", 1),
        ("tool_result", 1),
    ]


def test_chat_completions_models_record_from_their_generation_spans(
    processor: AgentLedgerProcessor, fake_openai: FakeOpenAI, ledger_capture: Capture
) -> None:
    fake_openai.reply(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1760000000,
            "model": ANSWERED_BY,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Bonjour", "refusal": None},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": 40,
                "completion_tokens": 6,
                "total_tokens": 46,
                "prompt_tokens_details": {"cached_tokens": 16, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 2, "audio_tokens": 0},
            },
        }
    )
    model = OpenAIChatCompletionsModel(model=MODEL, openai_client=fake_openai.client())
    spans = SpanRecorder()
    agents.set_trace_processors([processor, spans])

    run_sync(Agent(name="greeter", instructions="Be kind.", model=model), "Hello")

    (call,) = ledger_capture.events_of("llm_call")
    assert (call["provider"], call["model"]) == ("openai", MODEL)  # the span names the model asked for
    assert (call["tokensIn"], call["tokensOut"]) == (40, 6)
    (generation,) = [span for span in spans.ended if span["type"] == "generation"]
    if "input_tokens_details" in generation["usage"]:  # the SDK's spans carry the details since 0.3 or so
        assert (call["cacheReadTokens"], call["reasoningTokens"]) == (16, 2)
    else:
        assert "cacheReadTokens" not in call and "reasoningTokens" not in call
    assert call["prompt"] == [{"content": "Be kind.", "role": "system"}, {"role": "user", "content": "Hello"}]
    assert subset(call["response"], [{"content": "Bonjour", "role": "assistant"}]), call["response"]


def test_litellm_models_are_recorded_by_their_provider_also_with_openai_instrumented(
    processor: AgentLedgerProcessor, openai_instrumented: None, ledger_capture: Capture
) -> None:
    # What LitellmModel traces for "litellm/anthropic/claude-3-5-haiku-latest": it does not go through openai.
    with agents.trace("claims-flow"):
        with agents.tracing.agent_span(name="claims"):
            with agents.tracing.generation_span(
                input=[{"role": "user", "content": "Is claim 12 covered?"}],
                model="anthropic/claude-3-5-haiku-latest",
                model_config={"base_url": "", "model_impl": "litellm"},
            ) as generation:
                generation.span_data.output = [{"role": "assistant", "content": "Yes."}]
                generation.span_data.usage = {"input_tokens": 30, "output_tokens": 4}

    (session,) = ledger_capture.sessions
    assert (session.agent_name, session.status) == ("claims-flow", "success")
    events = spans_of(session.events)
    assert events == [
        {"type": "agent", "stepIndex": 0, "agentName": "claims"},
        {
            "type": "llm_call",
            "stepIndex": 1,
            "parent": 0,
            "provider": "anthropic",
            "model": "claude-3-5-haiku-latest",
            "prompt": [{"role": "user", "content": "Is claim 12 covered?"}],
            "response": [{"role": "assistant", "content": "Yes."}],
            "tokensIn": 30,
            "tokensOut": 4,
        },
    ]


def test_a_trace_of_your_own_is_one_session_for_the_runs_inside_it(
    processor: AgentLedgerProcessor, fake_openai: FakeOpenAI, ledger_capture: Capture
) -> None:
    fake_openai.reply(response("resp_1", [message("Draft")], usage(10, 2, 0, 0)))
    fake_openai.reply(response("resp_2", [message("Final")], usage(12, 2, 0, 0)))
    writer = Agent(name="writer", model=fake_openai.responses_model())
    editor = Agent(name="editor", model=fake_openai.responses_model())

    async def main() -> None:
        with agents.trace("newsletter"):
            draft = await Runner.run(writer, "Write")
            await Runner.run(editor, str(draft.final_output))

    asyncio.run(main())

    (session,) = ledger_capture.sessions
    assert (session.agent_name, session.status) == ("newsletter", "success")
    assert [(e["type"], e.get("agentName")) for e in session.events] == [
        ("agent", "writer"),
        ("llm_call", None),
        ("agent", "editor"),
        ("llm_call", None),
    ]


# -- failures ---------------------------------------------------------------------


def test_a_tool_error_the_model_is_told_of_is_recorded_and_the_run_succeeds(
    processor: AgentLedgerProcessor, fake_openai: FakeOpenAI, ledger_capture: Capture
) -> None:
    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        raise TimeoutError("weather service timed out")

    fake_openai.reply(response("resp_1", [function_call("get_weather", {"city": "Paris"})], usage(10, 5, 0, 0)))
    fake_openai.reply(response("resp_2", [message("Sorry, no weather today.")], usage(20, 5, 0, 0)))

    run_sync(weather_agent(fake_openai, tools=[get_weather]), "Weather in Paris?")

    (session,) = ledger_capture.sessions
    assert session.status == "success"
    (call,) = ledger_capture.events_of("tool_call")
    (result,) = ledger_capture.events_of("tool_result")
    assert call["toolInput"] == {"city": "Paris"}
    output = result["toolOutput"]
    assert output["error"].startswith("Error running tool")
    told = fake_openai.requests[1]["input"][-1]["output"]  # what the model was told, recorded as the output
    assert output["output"] == told


def test_a_tool_exception_that_fails_the_run_ends_the_session_in_error(
    processor: AgentLedgerProcessor, fake_openai: FakeOpenAI, ledger_capture: Capture
) -> None:
    fake_openai.reply(response("resp_1", [function_call("get_forecast", {"city": "Lima"})], usage(10, 5, 0, 0)))

    with pytest.raises(agents.exceptions.UserError, match="forecast service for Lima is down"):
        run_sync(weather_agent(fake_openai, tools=[get_forecast]), "Forecast for Lima?")

    (session,) = ledger_capture.sessions
    assert session.status == "error"
    assert "UserError" in str(session.error_message) and "forecast service for Lima is down" in str(
        session.error_message
    )
    events = spans_of(in_steps(session.events))
    assert [e["type"] for e in events] == ["agent", "llm_call", "tool_call", "tool_result"]
    assert events[3]["toolOutput"] == {"error": "Error running tool: the forecast service for Lima is down"}


def test_a_failing_model_call_records_the_error_and_the_session_fails(
    processor: AgentLedgerProcessor, fake_openai: FakeOpenAI, ledger_capture: Capture
) -> None:
    fake_openai.reply({"error": {"message": "The server had an error", "type": "server_error"}}, status=500)

    with pytest.raises(openai.InternalServerError):
        run_sync(weather_agent(fake_openai), "Weather in Paris?")

    (session,) = ledger_capture.sessions
    assert session.status == "error"
    assert str(session.error_message).startswith("InternalServerError")
    (call,) = ledger_capture.events_of("llm_call")
    assert call["error"].startswith("Error getting response")
    assert (call["tokensIn"], call["tokensOut"]) == (0, 0)  # nothing was generated, nothing is owed
    assert call["model"] == "unknown"  # no response named the model


def test_max_turns_exceeded_fails_the_session(
    processor: AgentLedgerProcessor, fake_openai: FakeOpenAI, ledger_capture: Capture
) -> None:
    fake_openai.reply(response("resp_1", [function_call("get_weather", {"city": "Paris"})], usage(10, 5, 0, 0)))

    with pytest.raises(agents.exceptions.MaxTurnsExceeded):
        run_sync(weather_agent(fake_openai), "Weather in Paris?", max_turns=1)

    (session,) = ledger_capture.sessions
    assert session.status == "error"
    assert "MaxTurnsExceeded" in str(session.error_message)


def test_a_run_started_while_handling_an_exception_still_succeeds(
    processor: AgentLedgerProcessor, fake_openai: FakeOpenAI, ledger_capture: Capture
) -> None:
    fake_openai.reply(response("resp_1", [message("Recovered")], usage(10, 2, 0, 0)))

    try:
        raise KeyError("the cache missed")
    except KeyError:  # the agent runs as the fallback: the handled exception is not the run's
        run_sync(weather_agent(fake_openai), "Weather?")

    assert ledger_capture.sessions[0].status == "success"


def test_sensitive_data_left_out_of_the_spans_is_recorded_as_not_captured(
    processor: AgentLedgerProcessor, fake_openai: FakeOpenAI, ledger_capture: Capture
) -> None:
    script_weather(fake_openai)

    config = RunConfig(trace_include_sensitive_data=False)
    run_sync(weather_agent(fake_openai), "Weather in Paris?", run_config=config)

    (call,) = ledger_capture.events_of("tool_call")
    (result,) = ledger_capture.events_of("tool_result")
    assert call["toolInput"] == result["toolOutput"] == "[not captured]"
    for llm in ledger_capture.events_of("llm_call"):
        assert llm["prompt"] == "" and llm["response"] == ""


def test_a_trace_ended_in_another_context_than_it_started_in_still_ends_its_session(
    processor: AgentLedgerProcessor, ledger_capture: Capture
) -> None:
    trace = agents.trace("background-job")
    started_in = contextvars.copy_context()
    started_in.run(trace.start)
    assert started_in.run(ledger.current_session) is not None  # current where the trace started

    trace.finish()  # here, where it was never current: its token cannot be reset here

    assert ledger.current_session() is None
    (session,) = ledger_capture.sessions
    assert (session.agent_name, session.status) == ("background-job", "success")


# -- telemetry never breaks the agent -----------------------------------------------


def test_a_fault_in_the_processor_is_an_internal_error_and_the_run_goes_on(
    processor: AgentLedgerProcessor,
    fake_openai: FakeOpenAI,
    ledger_capture: Capture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agent_ledger_sdk import _stats

    collected: list[str] = []
    monkeypatch.setattr(_stats, "internal_errors", collected)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("bug in the processor")

    monkeypatch.setattr(processor, "_tool_events", broken)
    script_weather(fake_openai)

    result = run_sync(weather_agent(fake_openai), "Weather in Paris?")

    assert result.final_output == ANSWER
    assert collected == ["openai-agents span end: RuntimeError: bug in the processor"]
    assert ledger_capture.sessions[0].status == "success"


def test_nothing_is_recorded_when_the_client_is_disabled(fake_openai: FakeOpenAI, ledger_capture: Capture) -> None:
    before = integration._registered()
    assert before is not None
    agents.set_trace_processors([AgentLedgerProcessor(AgentLedgerClient(api_key="sk-test", enabled=False))])
    try:
        script_weather(fake_openai)
        assert run_sync(weather_agent(fake_openai), "Weather in Paris?").final_output == ANSWER
    finally:
        agents.set_trace_processors(before)
    assert ledger_capture.sessions == []


# -- instrument / uninstrument ----------------------------------------------------


def test_instrument_registers_one_processor_and_uninstrument_removes_only_it(no_trace_processors: None) -> None:
    other = AgentLedgerProcessor(ledger)
    agents.set_trace_processors([other])

    first = integration.instrument(ledger._resolve_instrumentation)
    again = integration.instrument(ledger._resolve_instrumentation)

    assert first is again
    assert integration._registered() == [other, first]
    integration.uninstrument()
    assert integration._registered() == [other]
    integration.uninstrument()  # idempotent too
    assert integration._registered() == [other]


def test_instrument_adds_the_processor_back_after_set_trace_processors(no_trace_processors: None) -> None:
    processor = integration.instrument()
    agents.set_trace_processors([])
    assert integration.instrument() is processor
    assert integration._registered() == [processor]


def test_instrument_records_runs(no_trace_processors: None, fake_openai: FakeOpenAI, ledger_capture: Capture) -> None:
    integration.instrument(ledger._resolve_instrumentation)
    script_weather(fake_openai)

    run_sync(weather_agent(fake_openai), "Weather in Paris?")
    integration.uninstrument()
    fake_openai.reply(response("resp_3", [message("Hi")], usage(5, 1, 0, 0)))
    run_sync(weather_agent(fake_openai), "Hi")

    assert [s.agent_name for s in ledger_capture.sessions] == ["weather"]


def test_uninstrumenting_during_a_run_lets_the_run_finish_its_session(
    no_trace_processors: None, fake_openai: FakeOpenAI, ledger_capture: Capture
) -> None:
    processor = integration.instrument(ledger._resolve_instrumentation)

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        integration.uninstrument()
        return "sunny"

    script_weather(fake_openai)
    run_sync(weather_agent(fake_openai, tools=[get_weather]), "Weather in Paris?")

    (session,) = ledger_capture.sessions
    assert session.status == "success"
    assert [e["type"] for e in session.events][-1] == "llm_call"
    assert all(p is not processor for p in integration._registered() or [])


def test_the_processor_takes_a_client_or_a_resolver_or_nothing() -> None:
    assert AgentLedgerProcessor(ledger)._resolve == ledger._resolve_instrumentation
    resolve = ledger._resolve_instrumentation
    assert AgentLedgerProcessor(resolve)._resolve is resolve
    assert AgentLedgerProcessor()._resolve is integration._default_resolve
    with pytest.raises(TypeError, match="takes an AgentLedgerClient"):
        AgentLedgerProcessor("my-agent")


def test_importing_the_package_does_not_import_agents() -> None:
    import subprocess
    import sys

    code = "import sys, agent_ledger_sdk, agent_ledger_sdk.integrations; print('agents' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


# -- end to end, against a real local ledger ----------------------------------------


@pytest.mark.integration
def test_a_run_is_recorded_and_priced_by_a_real_local_ledger(local_ledger: Any, fake_openai: FakeOpenAI) -> None:
    before = integration._registered()
    assert before is not None
    agents.set_trace_processors([AgentLedgerProcessor(ledger)])  # the fixture records every client's sessions
    try:
        script_weather(fake_openai)
        run_sync(weather_agent(fake_openai, model_settings=ModelSettings(temperature=0)), "Weather in Paris?")
    finally:
        agents.set_trace_processors(before)
    assert local_ledger.flush() == 0

    (summary,) = local_ledger.sessions("weather")
    session = local_ledger.session(summary["id"])
    assert session["status"] == "success"
    events = session["events"]
    assert [e["type"] for e in events] == ["agent", "llm_call", "tool_call", "tool_result", "llm_call"]
    llm = [e for e in events if e["type"] == "llm_call"]
    assert [(e["tokensIn"], e["tokensOut"], e["cacheReadTokens"], e["reasoningTokens"]) for e in llm] == [
        (120, 30, 64, 12),
        (180, 15, 128, 0),
    ]
    assert all(e["costUsd"] > 0 and e["model"] == ANSWERED_BY for e in llm), llm
    assert events[2]["toolInput"] == {"city": "Paris"}
    assert events[3]["toolOutput"] == "18 degrees celsius and sunny in Paris"
    assert events[1]["parentSpanId"] == events[0]["spanId"] == events[2]["parentSpanId"]
