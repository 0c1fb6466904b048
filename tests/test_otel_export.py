"""``otel=True``: sessions, tools and LLM calls as OpenTelemetry GenAI spans, with the ledger's exact cost.

The real OpenTelemetry SDK records the spans (a ``TracerProvider`` instance with
an in-memory exporter, passed as ``otel=``: the global provider can be set only
once per process, so the tests that need it run in a subprocess). The ledger is
the real local one, so the cost attributes are its exact prices.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import httpx
import pytest

pytest.importorskip("opentelemetry.sdk", reason="the OpenTelemetry SDK is not installed")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from agent_ledger_sdk import AgentLedgerClient, AsyncAgentLedgerClient, BudgetGuardrailError, _otel
from agent_ledger_sdk.testing import capture

if TYPE_CHECKING:
    from agent_ledger_sdk.local import LocalLedger

MODEL = "m1"  # priced below: $0.01 a token in, $0.02 out
EXPORTER = InMemorySpanExporter()
PROVIDER = TracerProvider()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
USER_TRACER = PROVIDER.get_tracer("the-users-code")


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLedger]:
    pytest.importorskip("starlette", reason="the local ledger needs the server extra")
    from agent_ledger_sdk.local import run

    with run(db=tmp_path_factory.mktemp("otel") / "ledger.db") as running:
        running.set_price(f"acme/{MODEL}", 10_000, 20_000)
        yield running


@pytest.fixture(autouse=True)
def _no_spans_yet() -> None:
    EXPORTER.clear()


@pytest.fixture(params=["inline", "background"])
def client(request: pytest.FixtureRequest, ledger: LocalLedger) -> Iterator[AgentLedgerClient]:
    made = ledger.client(otel=PROVIDER, batching=request.param == "background")
    yield made
    made.close()


def spans() -> dict[str, ReadableSpan]:
    """The finished spans by name (each name once)."""
    finished = EXPORTER.get_finished_spans()
    by_name = {span.name: span for span in finished}
    assert len(by_name) == len(finished), [span.name for span in finished]
    return by_name


def parent_of(span: ReadableSpan) -> Optional[int]:
    return span.parent.span_id if span.parent is not None else None


def ledger_events(ledger: LocalLedger, session_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = ledger.session(session_id)["events"]
    return events


def one_llm_call(ledger_client: AgentLedgerClient, prompt: Any = "What is 2 + 2?", **outcome: Any) -> None:
    with ledger_client.llm_call(provider="acme", model=MODEL, prompt=prompt, temperature=0.2) as call:
        call.record(response="4", tokens_in=12, tokens_out=3, cache_read_tokens=4, reasoning_tokens=1, **outcome)


# -- what the spans are, nested as the calls were ------------------------------------------------------


def test_a_session_its_tool_and_its_llm_call_are_nested_genai_spans_priced_by_the_ledger(
    client: AgentLedgerClient, ledger: LocalLedger
) -> None:
    @client.tool
    def search(query: str) -> list[str]:
        with USER_TRACER.start_as_current_span("index lookup"):  # the user's own span, inside the tool
            return [query.upper()]

    with USER_TRACER.start_as_current_span("POST /ask") as request:
        with client.session("support-bot", user_id="u-7") as session:
            assert search("refunds") == ["REFUNDS"]
            one_llm_call(client)
    assert client.flush(10) == 0
    found = spans()
    agent, tool, chat = found["invoke_agent support-bot"], found["execute_tool search"], found[f"chat {MODEL}"]

    # Nested as the calls were, inside the user's enclosing trace.
    trace_id = request.get_span_context().trace_id
    assert {span.context.trace_id for span in found.values()} == {trace_id}
    assert parent_of(agent) == request.get_span_context().span_id
    assert parent_of(tool) == parent_of(chat) == agent.context.span_id
    assert parent_of(found["index lookup"]) == tool.context.span_id
    assert (agent.kind, tool.kind, chat.kind) == (SpanKind.INTERNAL, SpanKind.INTERNAL, SpanKind.CLIENT)

    assert session.id is not None
    assert dict(agent.attributes or {}) == {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": "support-bot",
        "gen_ai.conversation.id": session.id,
        "agent_ledger.session_id": session.id,
        "user.id": "u-7",
    }
    assert dict(tool.attributes or {}) == {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "search",
        "gen_ai.tool.type": "function",
        "gen_ai.agent.name": "support-bot",
        "gen_ai.tool.call.arguments": '{"query":"refunds"}',
        "gen_ai.tool.call.result": '["REFUNDS"]',
        "gen_ai.conversation.id": session.id,
        "agent_ledger.session_id": session.id,
        "agent_ledger.step_index": 0,
    }
    tool_event, _, llm_event = ledger_events(ledger, session.id)
    assert tool_event["spanId"] == f"{tool.context.span_id:016x}"  # one id in the ledger and in the trace
    assert llm_event["spanId"] == f"{chat.context.span_id:016x}"
    cost = Decimal(str(llm_event["costUsd"]))
    assert cost > 0
    assert dict(chat.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "acme",
        "gen_ai.request.model": MODEL,
        "gen_ai.response.model": MODEL,
        "gen_ai.request.temperature": 0.2,
        "gen_ai.agent.name": "support-bot",
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 3,
        "gen_ai.usage.cache_read.input_tokens": 4,
        "gen_ai.usage.reasoning.output_tokens": 1,
        "gen_ai.input.messages": "What is 2 + 2?",
        "gen_ai.output.messages": '[{"role":"assistant","content":"4"}]',
        "gen_ai.conversation.id": session.id,
        "agent_ledger.session_id": session.id,
        "agent_ledger.step_index": 1,
        "agent_ledger.cost_usd": float(cost),  # exactly what the ledger recorded
        "agent_ledger.cost_status": llm_event["costStatus"],
        "agent_ledger.over_budget": False,
    }
    assert chat.status.status_code is StatusCode.UNSET


def test_a_span_ends_when_its_call_ended_not_when_the_ledger_answered(
    client: AgentLedgerClient, ledger: LocalLedger
) -> None:
    with client.session("timing-bot"):
        with client.llm_call(provider="acme", model=MODEL, prompt="hi") as call:
            call.record(response="yo", tokens_in=1, tokens_out=1)
        ended = __import__("time").time_ns()
    client.flush(10)
    chat = spans()[f"chat {MODEL}"]
    assert chat.end_time is not None and chat.start_time is not None
    assert chat.start_time <= chat.end_time <= ended


def test_async_sessions_tools_and_llm_calls_nest_across_awaits(ledger: LocalLedger) -> None:
    async def main() -> None:
        client = ledger.async_client(otel=PROVIDER)

        @client.tool
        async def fetch(url: str) -> str:
            await asyncio.sleep(0)
            with USER_TRACER.start_as_current_span("http get"):
                return f"<page {url}>"

        @client.session("async-bot")
        async def agent() -> None:
            await asyncio.gather(fetch("a"), fetch("b"))
            async with client.llm_call(provider="acme", model=MODEL, prompt="sum up") as call:
                await asyncio.sleep(0)
                call.record(response="done", tokens_in=5, tokens_out=1)

        await agent()
        assert await client.aflush(10) == 0
        await client.aclose()

    asyncio.run(main())
    finished = EXPORTER.get_finished_spans()
    (agent,) = [s for s in finished if s.name == "invoke_agent async-bot"]
    tools = [s for s in finished if s.name == "execute_tool fetch"]
    gets = [s for s in finished if s.name == "http get"]
    (chat,) = [s for s in finished if s.name == f"chat {MODEL}"]
    assert len(tools) == len(gets) == 2
    assert {parent_of(t) for t in tools} == {parent_of(chat)} == {agent.context.span_id}
    assert {parent_of(g) for g in gets} == {t.context.span_id for t in tools}  # each under its own task's tool
    assert chat.attributes is not None and chat.attributes["agent_ledger.cost_status"] == "priced"
    assert chat.attributes["gen_ai.conversation.id"] == agent.attributes["gen_ai.conversation.id"]  # type: ignore[index]


def test_generator_tools_are_current_only_while_they_run(client: AgentLedgerClient) -> None:
    @client.tool
    def numbers(n: int) -> Iterator[int]:
        for i in range(n):
            with USER_TRACER.start_as_current_span(f"item {i}"):
                pass
            yield i

    with client.session("gen-bot"):
        for item in numbers(2):
            with USER_TRACER.start_as_current_span(f"consume {item}"):  # the consumer's code: not in the tool
                pass
    client.flush(10)
    found = spans()
    tool, agent = found["execute_tool numbers"], found["invoke_agent gen-bot"]
    assert parent_of(found["item 0"]) == parent_of(found["item 1"]) == tool.context.span_id
    assert parent_of(found["consume 0"]) == parent_of(found["consume 1"]) == agent.context.span_id
    assert tool.attributes is not None
    assert tool.attributes["gen_ai.tool.call.result"] == '{"items":[0,1],"count":2}'


def test_async_generator_sessions_and_tools_keep_the_context_balanced(ledger: LocalLedger) -> None:
    client = ledger.client(otel=PROVIDER)

    @client.tool
    async def pages(n: int) -> Any:
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    @client.session("stream-bot")
    async def agent() -> Any:
        async for page in pages(2):
            yield page

    async def main() -> list[int]:
        return [page async for page in agent()]

    from opentelemetry import trace

    assert asyncio.run(main()) == [0, 1]
    assert trace.get_current_span() is trace.INVALID_SPAN  # nothing of ours left current
    client.flush(10)
    client.close()
    found = spans()
    assert parent_of(found["execute_tool pages"]) == found["invoke_agent stream-bot"].context.span_id


# -- errors ---------------------------------------------------------------------------------------


def test_a_failing_tool_and_session_carry_error_type_and_status_and_the_error_passes_unchanged(
    client: AgentLedgerClient,
) -> None:
    failure = LookupError("no such order")

    @client.tool
    def lookup(order: str) -> str:
        raise failure

    with pytest.raises(LookupError) as raised:
        with client.session("failing-bot"):
            lookup("A-1")
    assert raised.value is failure
    client.flush(10)
    found = spans()
    for span in (found["execute_tool lookup"], found["invoke_agent failing-bot"]):
        assert span.attributes is not None and span.attributes["error.type"] == "LookupError"
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "LookupError: no such order"
        assert [event.name for event in span.events] == ["exception"]
    assert "gen_ai.tool.call.result" not in (found["execute_tool lookup"].attributes or {})


def test_a_failed_llm_call_is_an_error_span(client: AgentLedgerClient) -> None:
    with client.session("llm-error-bot"), pytest.raises(TimeoutError):
        with client.llm_call(provider="acme", model=MODEL, prompt="hi"):
            raise TimeoutError("provider timed out")
    client.flush(10)
    chat = spans()[f"chat {MODEL}"]
    assert chat.attributes is not None and chat.attributes["error.type"] == "TimeoutError"
    assert chat.status.status_code is StatusCode.ERROR


def test_a_budget_refusal_before_the_call_is_on_its_span(ledger: LocalLedger) -> None:
    ledger.set_budget("frugal-bot", 0.001)
    client = ledger.client(otel=PROVIDER)
    ran = []
    with client.session("frugal-bot"), pytest.raises(BudgetGuardrailError):
        with client.llm_call(provider="acme", model=MODEL, prompt="x", max_cost_usd=1.0):
            ran.append(1)
    client.close()
    assert ran == []
    chat = spans()[f"chat {MODEL}"]
    attributes = dict(chat.attributes or {})
    assert attributes["error.type"] == "BudgetGuardrailError"
    assert attributes["agent_ledger.budget_refused"] is True
    assert attributes["agent_ledger.budget.limit_usd"] == 0.001
    assert chat.status.status_code is StatusCode.ERROR


def test_a_reserved_call_carries_its_reservation(ledger: LocalLedger) -> None:
    ledger.set_budget("reserving-bot", 10)
    client = ledger.client(otel=PROVIDER, batching=False)
    with client.session("reserving-bot"):
        with client.llm_call(provider="acme", model=MODEL, prompt="hi", max_cost_usd=1.0) as call:
            call.record(response="yo", tokens_in=2, tokens_out=1)
    client.close()
    attributes = dict(spans()[f"chat {MODEL}"].attributes or {})
    assert attributes["agent_ledger.reservation_id"]
    assert attributes["agent_ledger.cost_status"] == "priced"


# -- content: only what the ledger would get ----------------------------------------------------------


def test_without_content_capture_spans_carry_no_content_but_usage_and_cost(ledger: LocalLedger) -> None:
    client = ledger.client(otel=PROVIDER, capture_content=False)

    @client.tool
    def secret_tool(password: str) -> str:
        return "token-123"

    with client.session("private-bot"):
        secret_tool("hunter2")
        one_llm_call(client, prompt="my password is hunter2")
    client.close()
    found = spans()
    everything = json.dumps([dict(s.attributes or {}) for s in found.values()])
    assert "hunter2" not in everything and "token-123" not in everything
    chat = dict(found[f"chat {MODEL}"].attributes or {})
    assert "gen_ai.input.messages" not in chat and "gen_ai.output.messages" not in chat
    assert chat["gen_ai.usage.input_tokens"] == 12 and chat["agent_ledger.cost_status"] == "priced"


def test_a_tools_capture_switches_hide_its_arguments_and_result(client: AgentLedgerClient) -> None:
    @client.tool(capture_input=False, capture_output=False)
    def quiet(x: int) -> int:
        return x

    with client.session("quiet-bot"):
        quiet(1)
    client.flush(10)
    attributes = dict(spans()["execute_tool quiet"].attributes or {})
    assert "gen_ai.tool.call.arguments" not in attributes and "gen_ai.tool.call.result" not in attributes


def test_redaction_applies_to_span_content(ledger: LocalLedger) -> None:
    def redact(event: dict[str, Any]) -> dict[str, Any]:
        return json.loads(json.dumps(event).replace("sk-live-42", "[key]"))

    client = ledger.client(otel=PROVIDER, redact=redact)

    @client.tool
    def call_api(key: str) -> str:
        return f"used {key}"

    with client.session("redacting-bot"):
        call_api("sk-live-42")
        one_llm_call(client, prompt=[{"role": "user", "content": "key sk-live-42"}])
    client.close()
    found = spans()
    assert "sk-live-42" not in json.dumps([dict(s.attributes or {}) for s in found.values()])
    assert found["execute_tool call_api"].attributes["gen_ai.tool.call.arguments"] == '{"key":"[key]"}'  # type: ignore[index]
    assert found[f"chat {MODEL}"].attributes["gen_ai.input.messages"] == (  # type: ignore[index]
        '[{"role":"user","content":"key [key]"}]'
    )


# -- when the price does not come --------------------------------------------------------------------


def hosted_ledger(api: Any, answer: dict[str, Any], status: int = 202) -> None:
    api.post("/v1/sessions").respond(201, json={"id": "sess-1"})
    api.post("/v1/sessions/sess-1/end").respond(200, json={})
    api.post("/v1/events").respond(status, json=answer)


def test_a_ledger_that_returns_no_prices_gives_spans_without_cost(api: Any) -> None:
    hosted_ledger(api, {"accepted": 1})
    client = AgentLedgerClient(api_key="sk-test", base_url="https://ledger.test", otel=PROVIDER, journal=False)
    with client.session("hosted-bot"):
        one_llm_call(client)
    assert client.flush(10) == 0
    attributes = dict(spans()[f"chat {MODEL}"].attributes or {})
    client.close()
    assert attributes["gen_ai.usage.output_tokens"] == 3
    assert attributes["gen_ai.conversation.id"] == "sess-1"
    assert not [name for name in attributes if name.startswith("agent_ledger.cost")]


def test_a_tool_span_closes_when_its_result_is_encoded_not_when_the_ledger_answers(api: Any) -> None:
    """A tool has no price to wait for: once its session's id is known, its span ends with its result."""
    import threading
    import time

    release = threading.Event()

    def slow_ledger(request: httpx.Request) -> httpx.Response:
        release.wait(10)
        return httpx.Response(202, json={"accepted": 2})

    api.post("/v1/sessions").respond(201, json={"id": "sess-1"})
    api.post("/v1/sessions/sess-1/end").respond(200, json={})
    api.post("/v1/events").mock(side_effect=slow_ledger)
    client = AgentLedgerClient(api_key="sk-test", base_url="https://ledger.test", otel=PROVIDER, journal=False)

    @client.tool
    def lookup(query: str) -> str:
        return query.upper()

    try:
        with client.session("quick-bot"):
            client.flush(10)  # the session's id is known
            lookup("abc")
            deadline = time.monotonic() + 10
            while "execute_tool lookup" not in {s.name for s in EXPORTER.get_finished_spans()}:
                assert time.monotonic() < deadline, "the tool's span waited for the ledger's answer"
                time.sleep(0.01)
            assert not release.is_set()
            attributes = dict(spans()["execute_tool lookup"].attributes or {})
            assert attributes["gen_ai.conversation.id"] == "sess-1"
            assert attributes["gen_ai.tool.call.arguments"] == '{"query":"abc"}'
            assert attributes["gen_ai.tool.call.result"] == "ABC"
    finally:
        release.set()
        client.close()


def test_a_failed_delivery_closes_the_span_with_the_cost_pending(api: Any) -> None:
    hosted_ledger(api, {"error": "session ended"}, status=409)
    client = AgentLedgerClient(
        api_key="sk-test", base_url="https://ledger.test", otel=PROVIDER, journal=False, batching=False
    )
    with client.session("unlucky-bot"):
        one_llm_call(client)
    attributes = dict(spans()[f"chat {MODEL}"].attributes or {})  # closed at once, not at flush
    client.close()
    assert attributes["agent_ledger.cost_status"] == "pending"
    assert attributes["gen_ai.usage.input_tokens"] == 12


def test_a_span_whose_event_never_arrives_closes_at_flush_with_the_cost_pending(ledger: LocalLedger) -> None:
    client = ledger.client(otel=PROVIDER, redact=lambda e: None if e["type"] == "llm_call" else e)
    with client.session("dropping-bot"):
        one_llm_call(client)
    client.flush(10)
    attributes = dict(spans()[f"chat {MODEL}"].attributes or {})
    client.close()
    assert attributes["agent_ledger.cost_status"] == "pending"
    assert "gen_ai.usage.input_tokens" not in attributes  # nothing the ledger did not get


def test_a_span_waits_for_its_price_a_bounded_time(ledger: LocalLedger, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_otel, "WAIT_SECONDS", 0.0)
    monkeypatch.setattr(_otel, "SWEEP_INTERVAL", 0.0)
    client = ledger.client(otel=PROVIDER, redact=lambda e: None if e["type"] == "llm_call" else e)
    with client.session("waiting-bot"):
        one_llm_call(client)
        with client.llm_call(provider="acme", model="other", prompt="x") as call:
            call.record(tokens_in=1, tokens_out=1)  # the next span's end sweeps the late one
    assert f"chat {MODEL}" in {span.name for span in EXPORTER.get_finished_spans()}
    client.close()


def test_under_a_test_capture_spans_close_without_a_price() -> None:
    client = AgentLedgerClient(api_key="sk-test", base_url="https://ledger.test", otel=PROVIDER)
    with capture(), client.session("captured-bot"):
        one_llm_call(client)
    attributes = dict(spans()[f"chat {MODEL}"].attributes or {})
    client.close()
    assert attributes["gen_ai.usage.input_tokens"] == 12 and "agent_ledger.cost_usd" not in attributes


# -- the OpenAI integration --------------------------------------------------------------------------


def test_an_instrumented_openai_chat_completion_is_a_chat_span_with_usage_and_cost(ledger: LocalLedger) -> None:
    openai = pytest.importorskip("openai")
    base_client = __import__("openai._base_client", fromlist=["_"])
    http = getattr(base_client, "httpx2", None) or httpx
    usage = {
        "prompt_tokens": 1234,
        "completion_tokens": 56,
        "total_tokens": 1290,
        "prompt_tokens_details": {"cached_tokens": 1024},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }

    def answer(request: Any) -> Any:
        return http.Response(
            200,
            json={
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1764000000,
                "model": "gpt-4o-mini-2024-07-18",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "5 days."}, "finish_reason": "stop"}
                ],
                "usage": usage,
            },
        )

    client = ledger.client(otel=PROVIDER, agent_name="openai-bot")
    llm = openai.OpenAI(api_key="sk-proj-test", http_client=http.Client(transport=http.MockTransport(answer)))
    client.instrument_openai(llm)
    try:
        with client.session("openai-bot") as session:
            llm.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "Refunds?"}], max_tokens=100
            )
        assert client.flush(10) == 0
    finally:
        client.uninstrument_openai(llm)
        client.close()
    chat = spans()["chat gpt-4o-mini"]
    attributes = dict(chat.attributes or {})
    assert session.id is not None
    (event,) = ledger_events(ledger, session.id)
    assert chat.kind is SpanKind.CLIENT
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert attributes["gen_ai.response.model"] == "gpt-4o-mini-2024-07-18"
    assert attributes["gen_ai.request.max_tokens"] == 100
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert (attributes["gen_ai.usage.input_tokens"], attributes["gen_ai.usage.output_tokens"]) == (1234, 56)
    assert attributes["gen_ai.usage.cache_read.input_tokens"] == 1024
    assert attributes["agent_ledger.cost_status"] == event["costStatus"] == "priced"
    assert attributes["agent_ledger.cost_usd"] == float(Decimal(str(event["costUsd"]))) > 0


# -- off, and how it is switched on ---------------------------------------------------------------------


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    environment = {name: value for name, value in os.environ.items() if name != "AGENT_LEDGER_OTEL"}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=environment, timeout=120
    )


def test_without_otel_nothing_imports_opentelemetry(tmp_path: Path) -> None:
    result = run_python(
        """
        import sys
        from agent_ledger_sdk import AgentLedgerClient
        from agent_ledger_sdk.testing import capture
        client = AgentLedgerClient(api_key="sk-test", base_url="https://ledger.test")
        tool = client.tool(lambda: 1)
        with capture() as captured, client.session("bot"):
            tool()
            with client.llm_call(provider="acme", model="m", prompt="p") as call:
                call.record(tokens_in=1, tokens_out=1)
        assert len(captured.events) == 3
        print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
        """,
        AGENT_LEDGER_HOME=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_environment_switches_it_on_with_the_global_provider_set_later(tmp_path: Path) -> None:
    result = run_python(
        """
        import agent_ledger_sdk
        from agent_ledger_sdk.testing import capture
        ledger = agent_ledger_sdk.configure(api_key="sk-test", base_url="https://ledger.test")

        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)  # after configure(): the spans still go there

        with capture(), agent_ledger_sdk.session("env-bot"):
            agent_ledger_sdk.tool(lambda: 1)()
        print(sorted(span.name for span in exporter.get_finished_spans()))
        """,
        AGENT_LEDGER_HOME=str(tmp_path),
        AGENT_LEDGER_OTEL="1",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['execute_tool <lambda>', 'invoke_agent env-bot']"


MISSING_OPENTELEMETRY = """
    import sys
    sys.modules["opentelemetry"] = None  # as if opentelemetry-api were not installed
    from agent_ledger_sdk import AgentLedgerClient
"""


def test_otel_true_without_the_api_installed_says_what_to_install(tmp_path: Path) -> None:
    result = run_python(
        MISSING_OPENTELEMETRY
        + """
    try:
        AgentLedgerClient(api_key="sk-test", otel=True)
    except ImportError as exc:
        print(exc)
    """,
        AGENT_LEDGER_HOME=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'agent-ledger-sdk[otel]'" in result.stdout


def test_the_environment_without_the_api_installed_warns_once_and_carries_on(tmp_path: Path) -> None:
    result = run_python(
        MISSING_OPENTELEMETRY
        + """
    import logging
    logging.basicConfig()
    client = AgentLedgerClient(api_key="sk-test")
    print(client.enabled)
    """,
        AGENT_LEDGER_HOME=str(tmp_path),
        AGENT_LEDGER_OTEL="1",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
    assert result.stderr.count("pip install 'agent-ledger-sdk[otel]'") == 1


def test_otel_takes_true_false_or_a_tracer_provider() -> None:
    with pytest.raises(TypeError, match="TracerProvider"):
        AgentLedgerClient(api_key="sk-test", otel="yes")
    assert AgentLedgerClient(api_key="sk-test", otel=False)._instrumentation.otel is None


def test_an_async_client_takes_otel_too() -> None:
    assert AsyncAgentLedgerClient(api_key="sk-test", otel=PROVIDER)._instrumentation.otel is not None


# -- telemetry faults -------------------------------------------------------------------------------


def test_a_broken_tracer_never_reaches_the_users_code(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent_ledger_sdk import _stats

    class BrokenTracer:
        def start_span(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("exporter bug")

    class BrokenProvider:
        def get_tracer(self, *args: Any, **kwargs: Any) -> BrokenTracer:
            return BrokenTracer()

    collected: list[str] = []
    monkeypatch.setattr(_stats, "internal_errors", collected)
    client = AgentLedgerClient(api_key="sk-test", base_url="https://ledger.test", otel=BrokenProvider())

    @client.tool
    def double(x: int) -> int:
        return 2 * x

    with capture() as captured, client.session("robust-bot"):
        assert double(21) == 42
        one_llm_call(client)
    client.close()
    assert [e["type"] for e in captured.events] == ["tool_call", "tool_result", "llm_call"]  # recorded all the same
    assert collected and all(error.startswith("otel span start: RuntimeError") for error in collected)
