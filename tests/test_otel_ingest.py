"""POST /v1/traces: OpenTelemetry GenAI spans, sent as OTLP/HTTP, become priced sessions in the local ledger.

The real OTLP HTTP exporter and TracerProvider (an instance of the test's, never the global one), the real
OpenAI instrumentation of opentelemetry-python-contrib around the real ``openai`` client (its provider a
stand-in on 127.0.0.1), and OTLP JSON posted with httpx, against the real server on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime
import gzip
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, Optional

import httpx
import pytest

pytest.importorskip("starlette", reason="the local ledger needs the server extra")
pytest.importorskip("opentelemetry.sdk", reason="the real OpenTelemetry SDK is in the test extra")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from agent_ledger_sdk.local import LocalLedger
from agent_ledger_sdk.local.records import SessionQuery

from . import fake_providers
from .ledger_fixtures import FLAT_PRICES, backend_ledger

ledger = backend_ledger(FLAT_PRICES)

JSON = "application/json"
PROTOBUF = "application/x-protobuf"


# -- helpers -------------------------------------------------------------------------------------------------


class Workspace:
    """A workspace of its own on the module's ledger (budgets and sessions apart from other tests')."""

    def __init__(self, ledger: LocalLedger) -> None:
        self.ledger = ledger
        self.name = f"otel-{uuid.uuid4().hex[:12]}"
        self.key = ledger.service.create_key("otel", self.name).secret
        self.http = httpx.Client(base_url=ledger.url, headers={"x-api-key": self.key}, timeout=30)

    def sessions(self) -> list[dict[str, Any]]:
        found = self.ledger.service.list_sessions(SessionQuery(workspace=self.name, limit=500))["sessions"]
        return [self.session(s["id"]) for s in reversed(found)]  # oldest first

    def session(self, session_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/sessions/{session_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def post(self, body: Any, *, content_type: str = JSON, **headers: str) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.http.post("/v1/traces", content=content, headers={"content-type": content_type, **headers})

    def price_of(self, provider: str, model: str, **usage: int) -> Decimal:
        """What POST /v1/events charges for an llm_call of this usage (in a session of its own)."""
        session = self.http.post("/v1/sessions", json={"agentName": "price-check"}).json()["id"]
        event = {"type": "llm_call", "provider": provider, "model": model, **usage}
        answer = self.http.post("/v1/events", json={"sessionId": session, "events": [event]})
        assert answer.status_code == 202, answer.text
        self.http.delete(f"/v1/sessions/{session}")
        return Decimal(str(answer.json()["costUsd"]))

    @contextmanager
    def tracer_provider(self, service_name: str = "support-service") -> Iterator[TracerProvider]:
        """A TracerProvider of the test's own, exporting each span as it ends (so children go before parents)."""
        exporter = OTLPSpanExporter(endpoint=f"{self.ledger.url}/v1/traces", headers={"x-api-key": self.key})
        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        try:
            yield provider
        finally:
            provider.shutdown()

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def workspace(ledger: LocalLedger) -> Iterator[Workspace]:
    found = Workspace(ledger)
    yield found
    found.close()


def instant(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def llm_events(session: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in session["events"] if e["type"] == "llm_call"]


def value(v: Any) -> dict[str, Any]:
    """An OTLP JSON AnyValue."""
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}  # int64 as a string, as the mapping spells it
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, list):
        return {"arrayValue": {"values": [value(x) for x in v]}}
    return {"stringValue": v}


def json_span(
    trace: str, span: str, name: str, attributes: dict[str, Any], *, parent: str = "", start: int = 0, **more: Any
) -> dict[str, Any]:
    begin = 1_764_000_000_000_000_000 + start * 1_000_000_000
    return {
        "traceId": trace,
        "spanId": span,
        "parentSpanId": parent,
        "name": name,
        "kind": 1,
        "startTimeUnixNano": str(begin),
        "endTimeUnixNano": str(begin + 250_000_000),
        "attributes": [{"key": k, "value": value(v)} for k, v in attributes.items()],
        **more,
    }


def request(*spans: dict[str, Any], service: str = "json-service") -> dict[str, Any]:
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
                "scopeSpans": [{"scope": {"name": "test"}, "spans": list(spans)}],
            }
        ]
    }


def new_trace() -> str:
    return uuid.uuid4().hex


def new_span() -> str:
    return uuid.uuid4().hex[:16]


def chat(
    trace: str, span: str, *, parent: str = "", start: int = 0, tokens: Sequence[int] = (1000, 200), **attributes: Any
) -> dict[str, Any]:
    """A chat span of the test/flat model ($1 per million tokens): 1000 in and 200 out cost $0.0012."""
    usage = {"gen_ai.usage.input_tokens": tokens[0], "gen_ai.usage.output_tokens": tokens[1]}
    model = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "test", "gen_ai.request.model": "flat"}
    return json_span(trace, span, "chat flat", {**model, **usage, **attributes}, parent=parent, start=start)


def agent(trace: str, span: str, name: str = "support-bot", **attributes: Any) -> Any:
    return json_span(
        trace,
        span,
        f"invoke_agent {name}",
        {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": name, **attributes},
        start=-1,
    )


# -- (a) the real OTLP exporter ------------------------------------------------------------------------------


def test_the_real_otlp_exporter_makes_a_priced_session_with_nesting_and_exact_costs(workspace: Workspace) -> None:
    with workspace.tracer_provider() as provider:
        tracer = provider.get_tracer("agent")
        root_attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "refund-bot"}
        with tracer.start_as_current_span("invoke_agent refund-bot", attributes=root_attributes) as root:
            llm_attributes = {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
                "gen_ai.usage.input_tokens": 1200,
                "gen_ai.usage.output_tokens": 300,
                "gen_ai.usage.cache_read.input_tokens": 200,
                "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [{"type": "text", "content": "hi"}]}]),
                "gen_ai.output.messages": json.dumps(
                    [{"role": "assistant", "parts": [{"type": "text", "content": "ok"}]}]
                ),
            }
            with tracer.start_as_current_span("chat gpt-4o-mini", attributes=llm_attributes) as llm:
                pass
            tool_attributes = {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "lookup_order",
                "gen_ai.tool.call.arguments": '{"order": 42}',
                "gen_ai.tool.call.result": '{"status": "shipped"}',
            }
            with tracer.start_as_current_span("execute_tool lookup_order", attributes=tool_attributes):
                pass
            with tracer.start_as_current_span(
                "chat flat",
                attributes={
                    **llm_attributes,
                    "gen_ai.provider.name": "test",
                    "gen_ai.request.model": "flat",
                    "gen_ai.response.model": "flat",
                },
            ):
                pass
    (session,) = workspace.sessions()
    assert session["agentName"] == "refund-bot"
    assert session["status"] == "success"
    assert session["metadata"]["source"] == "opentelemetry"
    first, tool_call, tool_result, second = session["events"]
    assert [e["type"] for e in session["events"]] == ["llm_call", "tool_call", "tool_result", "llm_call"]
    assert [e["stepIndex"] for e in session["events"]] == [0, 1, 1, 2]
    root_id = format(root.get_span_context().span_id, "016x")
    assert first["spanId"] == format(llm.get_span_context().span_id, "016x")
    assert {e["parentSpanId"] for e in session["events"]} == {root_id}
    assert first["provider"] == "openai" and first["model"] == "gpt-4o-mini-2024-07-18"
    assert (first["tokensIn"], first["tokensOut"], first["cacheReadTokens"]) == (1200, 300, 200)
    assert first["prompt"] == [{"role": "user", "parts": [{"type": "text", "content": "hi"}]}]
    assert first["response"][0]["parts"][0]["content"] == "ok"
    assert first["latencyMs"] >= 0 and first["startedAt"].endswith("Z")
    expected = workspace.price_of("openai", "gpt-4o-mini-2024-07-18", tokensIn=1200, tokensOut=300, cacheReadTokens=200)
    assert expected > 0
    assert Decimal(str(first["costUsd"])) == expected
    assert Decimal(str(second["costUsd"])) == Decimal("0.0015")  # (1200 + 300) tokens at $1 per million
    assert Decimal(str(session["costUsd"])) == expected + Decimal("0.0015")
    assert tool_call["toolName"] == "lookup_order" and tool_call["toolInput"] == {"order": 42}
    assert tool_result["toolOutput"] == {"status": "shipped"} and tool_result["spanId"] == tool_call["spanId"]


# -- (b) OTLP JSON -------------------------------------------------------------------------------------------


def test_otlp_json_is_read_as_the_mapping_spells_it(workspace: Workspace) -> None:
    trace, root, call, tool, oi = new_trace(), new_span(), new_span(), new_span(), new_span()
    body = request(
        agent(trace, root, "json-bot", **{"gen_ai.conversation.id": "conv-json"}),
        chat(trace, call, parent=root, **{"gen_ai.usage.cache_creation.input_tokens": 100}),
        json_span(
            trace,
            tool,
            "execute_tool search",
            {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search", "gen_ai.tool.call.arguments": "q"},
            parent=root,
            start=1,
        ),
        json_span(  # OpenInference's attributes
            trace,
            oi,
            "ChatCompletion",
            {
                "openinference.span.kind": "LLM",
                "llm.provider": "test",
                "llm.model_name": "flat",
                "llm.token_count.prompt": 10,
                "llm.token_count.completion": 5,
                "llm.input_messages.0.message.role": "user",
                "llm.input_messages.0.message.content": "hello",
                "output.value": "world",
            },
            parent=root,
            start=2,
        ),
    )
    response = workspace.post(body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == JSON
    assert response.json() == {}
    (session,) = workspace.sessions()
    assert session["agentName"] == "json-bot"
    assert [e["type"] for e in session["events"]] == ["llm_call", "tool_call", "tool_result", "llm_call"]
    first, openinference = llm_events(session)
    assert first["cacheWriteTokens"] == 100 and first["parentSpanId"] == root
    assert openinference["prompt"] == [{"role": "user", "content": "hello"}] and openinference["response"] == "world"
    assert Decimal(str(openinference["costUsd"])) == Decimal("0.000015")
    assert Decimal(str(session["costUsd"])) == Decimal("0.001215")


def test_a_span_that_cannot_be_read_is_rejected_alone_with_partial_success(workspace: Workspace) -> None:
    trace = new_trace()
    body = request(chat(trace, new_span()), {**chat(trace, new_span()), "spanId": "xyz"}, chat(trace, "0" * 16))
    response = workspace.post(body)
    assert response.status_code == 200
    partial = response.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "2"
    assert "spanId must be 16 hex digits" in partial["errorMessage"]
    (session,) = workspace.sessions()
    assert len(llm_events(session)) == 1
    as_protobuf = ExportTraceServiceRequest()
    as_protobuf.resource_spans.add().scope_spans.add().spans.add(name="no ids")
    answer = workspace.post(as_protobuf.SerializeToString(), content_type=PROTOBUF)
    assert answer.status_code == 200 and answer.headers["content-type"] == PROTOBUF
    decoded = ExportTraceServiceResponse.FromString(answer.content)
    assert decoded.partial_success.rejected_spans == 1
    assert "traceId must be 32 hex digits" in decoded.partial_success.error_message


def test_a_gzipped_body_is_read(workspace: Workspace) -> None:
    response = workspace.post(
        gzip.compress(json.dumps(request(chat(new_trace(), new_span()))).encode()), **{"content-encoding": "gzip"}
    )
    assert response.status_code == 200, response.text
    assert len(workspace.sessions()) == 1


# -- (c) a real GenAI instrumentation -----------------------------------------------------------------------------


@contextmanager
def environment(**values: str) -> Iterator[None]:
    kept = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, old in kept.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def test_the_openai_instrumentation_of_opentelemetry_contrib_gives_a_priced_session_with_prompt_and_response(
    workspace: Workspace,
) -> None:
    openai = pytest.importorskip("openai")
    try:
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
    except ImportError as exc:  # opentelemetry-util-genai 1.x renamed the module that openai-v2 2.4b0 imports
        pytest.skip(
            f"opentelemetry-instrumentation-openai-v2 does not import with this opentelemetry-util-genai: {exc}"
        )

    # Message content goes on the spans (gen_ai.input.messages / gen_ai.output.messages) with the latest GenAI
    # conventions; "true" on the older ones sends it as log records, which a trace exporter does not carry.
    settings_ = {
        "OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental",
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "span_only",
    }
    with fake_providers.serve() as url, environment(**settings_), workspace.tracer_provider("openai-app") as provider:
        instrumentor = OpenAIInstrumentor()
        try:
            instrumentor.instrument(tracer_provider=provider)
        except TypeError as exc:  # openai-v2 2.3b0, the last for Python 3.9, calls wrapt 1's keyword names
            if "wrap_function_wrapper" not in str(exc):
                raise
            import wrapt

            pytest.skip(
                f"this opentelemetry-instrumentation-openai-v2 does not run with wrapt {wrapt.__version__}: {exc}"
            )
        try:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-fake")
            answer = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "How long do refunds take?"}]
            )
            client.close()
        finally:
            instrumentor.uninstrument()
    (session,) = workspace.sessions()
    assert session["agentName"] == "openai-app"  # the resource's service.name: no agent span named one
    assert session["status"] == "success"  # the chat span was the trace's root
    (call,) = llm_events(session)
    assert call["provider"] == "openai" and call["model"] == "gpt-4o-mini-2024-07-18"
    usage = answer.usage
    assert usage is not None
    assert (call["tokensIn"], call["tokensOut"]) == (usage.prompt_tokens, usage.completion_tokens)
    assert "How long do refunds take?" in json.dumps(call["prompt"])
    assert fake_providers.ANSWER in json.dumps(call["response"])
    expected = workspace.price_of(
        "openai", call["model"], tokensIn=usage.prompt_tokens, tokensOut=usage.completion_tokens
    )
    assert expected > 0 and Decimal(str(call["costUsd"])) == expected
    assert Decimal(str(session["costUsd"])) == expected


# -- (d) retries, order, errors, budgets, refusals ------------------------------------------------------------------


def test_a_retried_export_records_each_span_once_and_counts_its_cost_once(workspace: Workspace) -> None:
    body = request(chat(new_trace(), new_span()))
    for _ in range(3):
        assert workspace.post(body).status_code == 200
    also_protobuf = ExportTraceServiceRequest()
    (session,) = workspace.sessions()
    assert len(session["events"]) == 1
    assert Decimal(str(session["costUsd"])) == Decimal("0.0012")
    assert workspace.post(also_protobuf.SerializeToString(), content_type=PROTOBUF).status_code == 200


def test_children_before_parents_and_a_conversation_over_many_traces_make_one_session(workspace: Workspace) -> None:
    conversation = {"gen_ai.conversation.id": f"conv-{uuid.uuid4().hex}"}
    first, second = new_trace(), new_trace()
    root1, root2 = new_span(), new_span()
    # Turn 1: its LLM call arrives before its agent span, which alone carries the conversation id.
    assert workspace.post(request(chat(first, new_span(), parent=root1, start=1))).status_code == 200
    assert workspace.post(request(agent(first, root1, **conversation))).status_code == 200
    # Turn 2, another trace: the same, in two batches, the child (later started) first.
    assert workspace.post(request(chat(second, new_span(), parent=root2, start=30))).status_code == 200
    assert workspace.post(request(agent(second, root2, **conversation))).status_code == 200
    # A late span of turn 1, which started earlier than all: still the same session.
    assert workspace.post(request(chat(first, new_span(), parent=root1, start=-5))).status_code == 200
    (session,) = workspace.sessions()
    assert session["agentName"] == "support-bot"
    assert session["metadata"]["agentNameFrom"] == "gen_ai.agent.name"
    assert len(llm_events(session)) == 3 and session["tokensIn"] == 3000
    assert Decimal(str(session["costUsd"])) == Decimal("0.0036")
    assert session["status"] == "success"
    assert sorted(e["stepIndex"] for e in session["events"]) == [0, 0, 1]  # merged sessions keep their numbers
    assert instant(session["startedAt"]) == min(instant(e["startedAt"]) for e in session["events"])


def test_a_trace_without_a_conversation_is_its_own_session_named_after_its_service(workspace: Workspace) -> None:
    for _ in range(2):
        assert workspace.post(request(chat(new_trace(), new_span()), service="billing")).status_code == 200
    sessions = workspace.sessions()
    assert [s["agentName"] for s in sessions] == ["billing", "billing"]
    assert len({s["metadata"]["traceId"] for s in sessions}) == 2


def test_failed_spans_record_their_errors_and_a_failed_root_ends_the_session_in_error(workspace: Workspace) -> None:
    trace, root = new_trace(), new_span()
    failed = {"status": {"code": 2, "message": "rate limited"}}
    body = request(
        chat(trace, new_span(), parent=root, **{"error.type": "RateLimitError"}) | failed,
        json_span(
            trace,
            new_span(),
            "execute_tool refund",
            {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "refund", "error.type": "ValueError"},
            parent=root,
            status={"code": 2, "message": "amount too large"},
        ),
        agent(trace, root) | {"status": {"code": 2, "message": "the agent gave up"}},
    )
    assert workspace.post(body).status_code == 200
    (session,) = workspace.sessions()
    assert session["status"] == "error" and session["errorMessage"] == "the agent gave up"
    call = llm_events(session)[0]
    assert call["error"] == "RateLimitError: rate limited"
    (result,) = [e for e in session["events"] if e["type"] == "tool_result"]
    assert result["toolOutput"] == {"error": "amount too large", "errorType": "ValueError"}


def test_a_failed_roots_error_holding_a_nul_ends_the_session_without_it(workspace: Workspace) -> None:
    """The session's error message is a column of its own, where PostgreSQL refuses U+0000 (the fuzzer found it):
    the span is recorded, its NULs left out of that column."""
    trace, root = new_trace(), new_span()
    body = request(agent(trace, root, **{"error.type": "\x00Boom"}) | {"status": {"code": 2, "message": "gave\x00 up"}})
    assert workspace.post(body).status_code == 200
    (session,) = workspace.sessions()
    assert session["status"] == "error" and session["errorMessage"] == "Boom: gave up"


def test_calls_over_a_budget_are_recorded_with_over_budget_never_refused(workspace: Workspace) -> None:
    assert workspace.http.put("/v1/budgets/json-service", json={"dailyLimitUsd": 0.001}).status_code == 200
    trace = new_trace()
    response = workspace.post(request(chat(trace, new_span()), chat(trace, new_span(), start=1)))
    assert response.status_code == 200, response.text
    (session,) = workspace.sessions()
    assert [e["overBudget"] for e in llm_events(session)] == [True, True]  # $0.0012 each, over $0.001
    assert session["overBudgetEvents"] == 2
    assert Decimal(str(session["costUsd"])) == Decimal("0.0024")
    (budget,) = workspace.http.get("/v1/budgets").json()["budgets"]
    assert Decimal(str(budget["spentTodayUsd"])) == Decimal("0.0024")


def test_an_unpriced_model_under_a_budget_is_recorded_unpriced_not_lost(workspace: Workspace) -> None:
    assert workspace.http.put("/v1/budgets/json-service", json={"dailyLimitUsd": 5}).status_code == 200
    span = chat(new_trace(), new_span(), **{"gen_ai.request.model": "no-such-model-anywhere"})
    assert workspace.post(request(span)).status_code == 200
    (session,) = workspace.sessions()
    (call,) = llm_events(session)
    assert call["costStatus"] == "unpriced" and call["tokensIn"] == 1000 and session["unpricedEvents"] == 1


@pytest.mark.parametrize(
    ("body", "content_type", "says"),
    [
        (b"[]", JSON, "must be a JSON object"),
        (b"{not json", JSON, "not valid JSON"),
        (b'{"resourceSpans": {}}', JSON, "resourceSpans must be an array"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [1]}]}]}', JSON, "spans[0] must be an object"),
        (b"\xff\xff not protobuf", PROTOBUF, "not an OTLP ExportTraceServiceRequest in protobuf"),
        (b'{"resourceSpans": []}', PROTOBUF, "not an OTLP ExportTraceServiceRequest in protobuf"),
    ],
)
def test_a_body_that_is_not_otlp_is_refused_with_400_saying_what_was_expected(
    workspace: Workspace, body: bytes, content_type: str, says: str
) -> None:
    response = workspace.post(body, content_type=content_type)
    assert response.status_code == 400
    assert response.headers["content-type"] == content_type
    if content_type == JSON:
        assert says in response.json()["error"] and response.json()["code"] == 3
    else:
        assert says.encode() in response.content and response.content.startswith(b"\x08\x03\x12")
    assert workspace.sessions() == []


def test_another_content_type_is_refused_with_415_naming_the_accepted_ones(workspace: Workspace) -> None:
    response = workspace.post(request(chat(new_trace(), new_span())), content_type="text/plain")
    assert response.status_code == 415
    assert "application/x-protobuf" in response.json()["error"] and "application/json" in response.json()["error"]
    assert workspace.sessions() == []


@pytest.mark.parametrize("key", [None, "al_local_wrong_key"])
def test_a_missing_or_wrong_key_is_refused_with_401(ledger: LocalLedger, key: Optional[str]) -> None:
    headers = {"content-type": PROTOBUF, **({"x-api-key": key} if key else {})}
    response = httpx.post(f"{ledger.url}/v1/traces", content=b"", headers=headers)
    assert response.status_code == 401
    assert b"x-api-key" in response.content and response.content.startswith(b"\x08\x10")  # UNAUTHENTICATED
    response = httpx.post(f"{ledger.url}/v1/traces", json={}, headers={"x-api-key": key} if key else {})
    assert response.status_code == 401 and "x-api-key" in response.json()["error"]


# -- fuzzing --------------------------------------------------------------------------------------------------

HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
any_value = st.recursive(
    st.one_of(
        st.builds(lambda s: {"stringValue": s}, st.text(max_size=20)),
        st.builds(lambda i: {"intValue": str(i)}, st.integers(-(2**63), 2**63 - 1)),
        st.builds(lambda f: {"doubleValue": f}, st.floats(allow_nan=False, allow_infinity=False)),
        st.builds(lambda b: {"boolValue": b}, st.booleans()),
        st.just({}),
    ),
    lambda inner: st.builds(lambda vs: {"arrayValue": {"values": vs}}, st.lists(inner, max_size=3)),
    max_leaves=8,
)
keys = st.sampled_from(
    [
        "gen_ai.operation.name",
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.conversation.id",
        "gen_ai.tool.name",
        "gen_ai.agent.name",
        "gen_ai.input.messages",
        "openinference.span.kind",
        "error.type",
        "other",
    ]
)
operations = st.sampled_from(["chat", "execute_tool", "invoke_agent", "embeddings", "other"])
hex_id = lambda n: st.text("0123456789abcdef", min_size=n, max_size=n)  # noqa: E731
spans = st.builds(
    lambda trace, span, parent, operation, attributes, start, length, code: {
        "traceId": trace,
        "spanId": span,
        "parentSpanId": parent,
        "name": "fuzz",
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(start + length),
        "attributes": [{"key": "gen_ai.operation.name", "value": {"stringValue": operation}}]
        + [{"key": k, "value": v} for k, v in attributes],
        "status": {"code": code},
    },
    st.sampled_from(["1" * 32, "2" * 32]) | hex_id(32),
    hex_id(16),
    st.sampled_from(["", "a" * 16]),
    operations,
    st.lists(st.tuples(keys, any_value), max_size=6),
    st.integers(0, 2**64 - 1 - 10**12),
    st.integers(0, 10**12),
    st.integers(0, 2),
)


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=HEALTH)
@given(body=st.lists(spans, max_size=6))
def test_fuzzed_otlp_json_is_recorded_or_rejected_never_a_500_and_sessions_stay_readable(
    workspace: Workspace, body: list[dict[str, Any]]
) -> None:
    response = workspace.post(request(*body))
    assert response.status_code == 200, response.text
    for session in workspace.sessions():
        assert session["eventCount"] == len(session["events"])


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=HEALTH)
@given(raw=st.binary(max_size=300), content_type=st.sampled_from([JSON, PROTOBUF]))
def test_garbage_bodies_are_refused_or_read_never_a_500(workspace: Workspace, raw: bytes, content_type: str) -> None:
    response = workspace.post(raw, content_type=content_type)
    assert response.status_code in (200, 400), response.text
    for session in workspace.sessions():
        assert session["eventCount"] == len(session["events"])


@settings(max_examples=20, deadline=None, database=None, suppress_health_check=HEALTH)
@given(body=st.lists(spans, max_size=4))
def test_fuzzed_protobuf_is_read_as_its_json_would_be(workspace: Workspace, body: list[dict[str, Any]]) -> None:
    """Each fuzzed request in protobuf too (converted by protobuf's own JSON reader): 200, never a 500."""
    from google.protobuf import json_format

    converted = []
    for span in body:  # protobuf's JSON mapping spells ids as base64; OTLP's as hex
        try:
            ids = {k: _b64(span[k]) for k in ("traceId", "spanId", "parentSpanId")}
        except ValueError:
            continue
        converted.append({**span, **ids})
    message = json_format.ParseDict(request(*converted), ExportTraceServiceRequest(), ignore_unknown_fields=True)
    response = workspace.post(message.SerializeToString(), content_type=PROTOBUF)
    assert response.status_code == 200, response.content
    for session in workspace.sessions():
        assert session["eventCount"] == len(session["events"])


def _b64(hex_text: str) -> str:
    import base64

    return base64.b64encode(bytes.fromhex(hex_text)).decode()
