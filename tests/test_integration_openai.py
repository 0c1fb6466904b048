"""instrument_openai() with the real ``openai`` package, its HTTP faked at ``http_client=``.

The fake answers as the OpenAI API does, deciding from the request body:
chat completions with usage (cached and reasoning tokens), their server-sent
events (the usage-only chunk, and ``"usage": null`` in every other chunk, only
when ``stream_options.include_usage`` asks for them), tool calls when tools are
offered, Responses API objects and their event stream, and embeddings (base64
when the client asks for it, as it does by default). Every behaviour is checked
with a sync and an async client.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import importlib
import inspect
import json
import struct
import subprocess
import sys
import weakref
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, Callable, Optional

import pytest

pytest.importorskip("openai", reason="the openai extra is not installed")

import httpx
import openai
import pydantic

import agent_ledger_sdk
from agent_ledger_sdk import AgentLedgerClient, AsyncAgentLedgerClient, BudgetGuardrailError
from agent_ledger_sdk.integrations import _calls
from agent_ledger_sdk.integrations import _stainless as stainless
from agent_ledger_sdk.integrations import openai as integration
from agent_ledger_sdk.testing import Capture, capture

from .conftest import RFC3339_MS, SPAN_ID

base_client = importlib.import_module("openai._base_client")
ORIGINAL_SYNC_REQUEST = base_client.SyncAPIClient.__dict__["request"]
ORIGINAL_ASYNC_REQUEST = base_client.AsyncAPIClient.__dict__["request"]
ORIGINAL_RETRY_TIMEOUT = base_client.BaseClient.__dict__["_calculate_retry_timeout"]


def patchable_classes() -> list[type]:
    """The classes the integration may patch: the clients' bases and the ``.stream()`` helpers' streams."""
    classes: list[type] = [base_client.BaseClient, base_client.SyncAPIClient, base_client.AsyncAPIClient]
    for module_name, class_name, _ in integration.INTEGRATION.helper_streams:
        try:
            classes.append(getattr(importlib.import_module(module_name), class_name))
        except (ImportError, AttributeError):
            pass  # a version without this helper
    return classes


def class_attributes() -> dict[tuple[type, str], Any]:
    return {(owner, name): value for owner in patchable_classes() for name, value in vars(owner).items()}


ORIGINAL_ATTRIBUTES = class_attributes()


def patched() -> list[str]:
    """What is not its original object now (by identity: a wrapt wrapper compares equal to what it wraps)."""
    now = class_attributes()
    return [
        f"{owner.__name__}.{name}"
        for (owner, name), value in ORIGINAL_ATTRIBUTES.items()
        if now.get((owner, name)) is not value
    ]


def openai_http() -> Any:
    """The HTTP package the installed openai is built on: ``httpx2`` for openai 3.x, ``httpx`` before."""
    module = getattr(base_client, "httpx2", None)
    return module if module is not None else httpx


HX = openai_http()

MODEL = "gpt-4o-mini"
REASONING_MODEL = "o4-mini"
SNAPSHOTS = {MODEL: "gpt-4o-mini-2024-07-18", REASONING_MODEL: "o4-mini-2025-04-16"}
# (prompt tokens, of which cached, completion tokens, of which reasoning)
USAGES = {MODEL: (1234, 1024, 56, 0), REASONING_MODEL: (1234, 1024, 312, 256)}
EMBEDDING_MODEL = "text-embedding-3-small"

MESSAGES = [
    {"role": "system", "content": "You answer questions about refunds."},
    {"role": "user", "content": "How long do refunds take?"},
]
INSTRUCTIONS = "You answer questions about refunds."
QUESTION = "How long do refunds take?"
ANSWER = "Refunds take 5 business days."
PIECES = ["Refunds", " take", " 5", " business", " days."]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "description": "Find an order by its id.",
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string"}},
                "required": ["order_id"],
            },
        },
    }
]
RESPONSE_TOOLS = [{"type": "function", **TOOLS[0]["function"]}]
TOOL_CALL_ID = "call_Qx8mKp2Lr4"
TOOL_ARGUMENTS = '{"order_id":"A-1042"}'
TOOL_CALL = {"id": TOOL_CALL_ID, "name": "lookup_order", "arguments": TOOL_ARGUMENTS}
CREATED = 1764000000


class RefundPolicy(pydantic.BaseModel):
    days: int
    business_days: bool


POLICY_JSON = '{"days":5,"business_days":true}'


# -- the fake OpenAI API ------------------------------------------------------------


def chat_usage(model: str) -> dict[str, Any]:
    prompt, cached, completion, reasoning = USAGES[model]
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def response_usage(model: str) -> dict[str, Any]:
    prompt, cached, completion, reasoning = USAGES[model]
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + completion,
    }


def chat_text(body: dict[str, Any]) -> str:
    response_format = body.get("response_format") or {}
    return POLICY_JSON if response_format.get("type") == "json_schema" else ANSWER


def chat_completion(body: dict[str, Any]) -> dict[str, Any]:
    model = body["model"]
    if body.get("tools"):
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "tool_calls": [
                {
                    "id": TOOL_CALL_ID,
                    "type": "function",
                    "function": {"name": "lookup_order", "arguments": TOOL_ARGUMENTS},
                }
            ],
        }
        finish = "tool_calls"
    else:
        message = {"role": "assistant", "content": chat_text(body), "refusal": None, "annotations": []}
        finish = "stop"
    return {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion",
        "created": CREATED,
        "model": SNAPSHOTS[model],
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": chat_usage(model),
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
    }


def chat_chunks(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The chunks of a streamed chat completion, as the API sends them for this request."""
    model = body["model"]
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    base = {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": SNAPSHOTS[model],
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
    }

    def chunk(delta: dict[str, Any], finish: Optional[str] = None) -> dict[str, Any]:
        made = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            made["usage"] = None  # "All other chunks will also include a usage field, but with a null value."
        return made

    if body.get("tools"):
        chunks = [
            chunk(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": TOOL_CALL_ID,
                            "type": "function",
                            "function": {"name": "lookup_order", "arguments": ""},
                        }
                    ],
                    "refusal": None,
                }
            )
        ]
        for piece in ('{"order', '_id":"', "A-1042", '"}'):
            chunks.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
        chunks.append(chunk({}, "tool_calls"))
    else:
        text = chat_text(body)
        pieces = PIECES if text == ANSWER else [text[:10], text[10:]]
        chunks = [chunk({"role": "assistant", "content": "", "refusal": None})]
        chunks += [chunk({"content": piece}) for piece in pieces]
        chunks.append(chunk({}, "stop"))
    if include_usage:
        chunks.append({**base, "choices": [], "usage": chat_usage(model)})
    return chunks


def response_object(body: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    model = body["model"]
    done = status == "completed"
    if body.get("tools"):
        output: list[dict[str, Any]] = [
            {
                "type": "function_call",
                "id": "fc_67ccf18f64008190a39b619f4c8455ef",
                "call_id": TOOL_CALL_ID,
                "name": "lookup_order",
                "arguments": TOOL_ARGUMENTS,
                "status": "completed",
            }
        ]
    else:
        output = [
            {
                "type": "message",
                "id": "msg_67ccd3acc8d48190a77525dc6de64b4104becb25c45c1d41",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": ANSWER, "annotations": []}],
            }
        ]
    return {
        "id": "resp_67ccd3a9da748190baa7f1570fe91ac604becb25c45c1d41",
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": SNAPSHOTS[model],
        "output": output if done else [],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": True,
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": body.get("tools") or [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": response_usage(model) if done else None,
        "user": None,
        "metadata": {},
    }


def response_events(body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The events of a streamed response, as the API sends them."""
    events: list[tuple[str, dict[str, Any]]] = []

    def add(kind: str, **data: Any) -> None:
        events.append((kind, {"type": kind, "sequence_number": len(events), **data}))

    add("response.created", response=response_object(body, "in_progress"))
    add("response.in_progress", response=response_object(body, "in_progress"))
    final = response_object(body)
    item = final["output"][0]
    if item["type"] == "function_call":
        add("response.output_item.added", output_index=0, item={**item, "arguments": "", "status": "in_progress"})
        for piece in ('{"order', '_id":"', "A-1042", '"}'):
            add("response.function_call_arguments.delta", item_id=item["id"], output_index=0, delta=piece)
        add("response.function_call_arguments.done", item_id=item["id"], output_index=0, arguments=TOOL_ARGUMENTS)
    else:
        add("response.output_item.added", output_index=0, item={**item, "status": "in_progress", "content": []})
        part = {"type": "output_text", "text": "", "annotations": []}
        add("response.content_part.added", item_id=item["id"], output_index=0, content_index=0, part=part)
        for piece in PIECES:
            add(
                "response.output_text.delta",
                item_id=item["id"],
                output_index=0,
                content_index=0,
                delta=piece,
                logprobs=[],
            )
        add(
            "response.output_text.done",
            item_id=item["id"],
            output_index=0,
            content_index=0,
            text=ANSWER,
            logprobs=[],
        )
        done_part = {**part, "text": ANSWER}
        add("response.content_part.done", item_id=item["id"], output_index=0, content_index=0, part=done_part)
    add("response.output_item.done", output_index=0, item=item)
    add("response.completed", response=final)
    return events


def embeddings(body: dict[str, Any]) -> dict[str, Any]:
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    dimensions = body.get("dimensions") or 1536
    data = []
    for index in range(len(inputs)):
        vector = [round((index + 1) * 0.001 * (d + 1), 6) for d in range(dimensions)]
        encoded: Any = vector
        if body.get("encoding_format") == "base64":
            encoded = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    return {
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": 8 * len(inputs), "total_tokens": 8 * len(inputs)},
    }


def chat_sse(body: dict[str, Any], separators: tuple[str, str] = (",", ":")) -> list[bytes]:
    """``data: {...}`` per chunk, then ``data: [DONE]``: the chat completions wire format. The API writes its
    JSON compact; ``separators=(", ", ": ")``: as a proxy that writes it again might."""
    events = [json.dumps(chunk, separators=separators).encode() for chunk in chat_chunks(body)]
    return [b"data: " + event + b"\n\n" for event in events] + [b"data: [DONE]\n\n"]


def response_sse(body: dict[str, Any]) -> list[bytes]:
    """``event: <type>`` and ``data: {...}`` per event: the Responses API wire format (no [DONE])."""
    return [f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode() for kind, data in response_events(body)]


SSE_HEADERS = {"content-type": "text/event-stream; charset=utf-8"}
JSON_HEADERS = {"content-type": "application/json"}


class FakeOpenAI:
    """The OpenAI API behind a MockTransport, and a way to drive a sync or an async client the same way."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.is_async = kind == "async"
        self.loop = asyncio.new_event_loop() if self.is_async else None
        self.http = HX  # the HTTP package of the clients made: responses are built with it
        self.requests: list[dict[str, Any]] = []
        # Answer instead of the API: (request, body) -> response, for errors and broken streams.
        self.respond: Optional[Callable[[Any, dict[str, Any]], Any]] = None
        self._clients: list[Any] = []

    # -- the API ---------------------------------------------------------------

    def handle(self, request: Any) -> Any:
        body = json.loads(request.content) if request.content else {}
        self.requests.append({"method": request.method, "path": request.url.path, "body": body})
        if self.respond is not None:
            return self.respond(request, body)
        path = request.url.path
        if path == "/v1/chat/completions":
            if body.get("stream"):
                return self.stream_response(chat_sse(body))
            return self.http.Response(200, headers=JSON_HEADERS, json=chat_completion(body))
        if path == "/v1/responses":
            if body.get("stream"):
                return self.stream_response(response_sse(body))
            return self.http.Response(200, headers=JSON_HEADERS, json=response_object(body))
        if path == "/v1/embeddings":
            return self.http.Response(200, headers=JSON_HEADERS, json=embeddings(body))
        return self.http.Response(
            404, headers=JSON_HEADERS, json={"error": {"message": "Unknown path", "type": "invalid"}}
        )

    async def ahandle(self, request: Any) -> Any:
        await asyncio.sleep(0)
        return self.handle(request)

    def stream_response(self, pieces: list[bytes], error: Optional[BaseException] = None) -> Any:
        """A streamed body sent piece by piece; ``error``: the connection breaks after the pieces."""

        def body() -> Iterator[bytes]:
            yield from pieces
            if error is not None:
                raise error

        async def abody() -> Any:
            for piece in pieces:
                await asyncio.sleep(0)
                yield piece
            if error is not None:
                raise error

        return self.http.Response(200, headers=SSE_HEADERS, content=abody() if self.is_async else body())

    # -- clients ---------------------------------------------------------------

    def client(self, **options: Any) -> Any:
        """An ``OpenAI`` (or ``AsyncOpenAI``) client whose HTTP goes to this fake."""
        http = self.http
        options.setdefault("api_key", "sk-proj-test")
        if self.is_async:
            made = openai.AsyncOpenAI(
                http_client=http.AsyncClient(transport=http.MockTransport(self.ahandle)), **options
            )
        else:
            made = openai.OpenAI(http_client=http.Client(transport=http.MockTransport(self.handle)), **options)
        self._clients.append(made)
        return made

    # -- driving a sync or an async client alike ---------------------------------

    def __call__(self, value: Any) -> Any:
        """The value, awaited if it is awaitable (what an async client's method returns)."""
        if inspect.isawaitable(value):
            assert self.loop is not None
            return self.loop.run_until_complete(value)
        return value

    def items(self, stream: Any) -> list[Any]:
        """Every item of a stream, as ``for`` / ``async for`` reads them."""
        if not self.is_async:
            return list(stream)

        async def collect() -> list[Any]:
            return [item async for item in stream]

        return self(collect())

    def first(self, stream: Any, until: Callable[[Any], bool]) -> list[Any]:
        """Read a stream until an item satisfies ``until``, then ``break``, as a user's loop does."""
        got: list[Any] = []
        if not self.is_async:
            for item in stream:
                got.append(item)
                if until(item):
                    break
            return got

        async def read() -> None:
            async for item in stream:
                got.append(item)
                if until(item):
                    break

        self(read())
        return got

    def enter(self, manager: Any) -> Any:
        return self(manager.__aenter__()) if self.is_async else manager.__enter__()

    def exit(self, manager: Any) -> None:
        if self.is_async:
            self(manager.__aexit__(None, None, None))
        else:
            manager.__exit__(None, None, None)

    def close(self, stream: Any) -> None:
        self(stream.close())

    def settle(self, collect: bool = False) -> None:
        """Let the event loop run what dropped async generators scheduled (their ``aclose()``);
        ``collect``: collect garbage first (anything left in a reference cycle)."""
        if collect:
            gc.collect()
        if self.loop is not None:

            async def spin() -> None:
                for _ in range(10):
                    await asyncio.sleep(0)

            self(spin())

    def shutdown(self) -> None:
        for made in self._clients:
            self(made.close())
        if self.loop is not None:
            self.settle()
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()


# -- fixtures ----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _uninstrument_after(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No patch leaks out of a test, into the next one or another test file."""
    monkeypatch.delenv("AGENT_LEDGER_AGENT_NAME", raising=False)
    assert base_client.SyncAPIClient.__dict__["request"] is ORIGINAL_SYNC_REQUEST
    yield
    integration.uninstrument()
    assert patched() == []
    assert "openai" not in _calls.globally_instrumented


@pytest.fixture(params=["sync", "async"])
def api(request: pytest.FixtureRequest) -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI(request.param)
    yield fake
    fake.shutdown()


@pytest.fixture
def ledger() -> Iterator[AgentLedgerClient]:
    client = AgentLedgerClient(api_key="sk-ledger-test", base_url="https://ledger.test", agent_name="support-bot")
    yield client
    client.close()


# -- reading what was recorded --------------------------------------------------------


def stable(event: dict[str, Any], streamed: bool = False) -> dict[str, Any]:
    """The event less what varies from run to run (its time, span, latency), after checking their form."""
    rest = dict(event)
    assert RFC3339_MS.match(rest.pop("startedAt"))
    assert SPAN_ID.match(rest.pop("spanId"))
    latency = rest.pop("latencyMs")
    assert isinstance(latency, int) and latency >= 0
    if streamed:
        first = rest.pop("timeToFirstTokenMs")
        assert isinstance(first, int) and 0 <= first <= latency
    else:
        assert "timeToFirstTokenMs" not in rest
    return rest


@pytest.fixture(params=["events", "items"])
def reading(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """How a stream is read: ``events``, its events' text as the client's decoder hands it over (read in
    end()); ``items``, the client's objects one by one, as for a stream whose decoder cannot be wrapped."""
    if request.param == "items":
        monkeypatch.setattr(stainless, "_read_events", lambda stream, reader: None)
    return str(request.param)


def the_call(captured: Capture) -> dict[str, Any]:
    """The one llm_call recorded."""
    calls = captured.events_of("llm_call")
    assert len(calls) == 1, calls
    return calls[0]


def usage_of(model: str) -> dict[str, int]:
    prompt, cached, completion, reasoning = USAGES[model]
    return {"tokensIn": prompt, "tokensOut": completion, "cacheReadTokens": cached, "reasoningTokens": reasoning}


def chat_event(**extra: Any) -> dict[str, Any]:
    """The llm_call of a chat completion of MESSAGES answered with ANSWER, plus ``extra``."""
    return {
        "type": "llm_call",
        "stepIndex": 0,
        "provider": "openai",
        "model": SNAPSHOTS[MODEL],
        "prompt": MESSAGES,
        "response": ANSWER,
        **usage_of(MODEL),
        "finishReason": "stop",
        "retries": 0,
        **extra,
    }


def chat_api(client: Any) -> Any:
    """Where ``parse`` and ``stream`` live: ``client.chat.completions``, or ``client.beta.chat.completions`` before 1.92."""
    completions = client.chat.completions
    return completions if hasattr(completions, "parse") else client.beta.chat.completions


def dumped(items: list[Any]) -> list[tuple[Any, Any]]:
    """Items as a user would inspect them: every field, and the fields the API sent (``to_dict()``)."""
    return [(item.model_dump(), item.to_dict()) for item in items]


def has_text(chunk: Any) -> bool:
    return any(choice.delta.content for choice in chunk.choices)


# -- every API, sync and async: the exact llm_call ---------------------------------------


def test_a_chat_completion(api: FakeOpenAI, ledger: AgentLedgerClient) -> None:
    ledger.instrument_openai()
    client = api.client()
    with capture() as captured:
        completion = api(
            client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0.2, max_tokens=200)
        )
    assert completion.choices[0].message.content == ANSWER
    assert stable(the_call(captured)) == chat_event(temperature=0.2, maxTokens=200)


def test_a_streamed_chat_completion(api: FakeOpenAI, ledger: AgentLedgerClient) -> None:
    ledger.instrument_openai()
    client = api.client()
    with capture() as captured:
        stream = api(
            client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0.2, max_tokens=200, stream=True)
        )
        chunks = api.items(stream)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == ANSWER
    assert stable(the_call(captured), streamed=True) == chat_event(temperature=0.2, maxTokens=200, stream=True)


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "streamed"])
def test_a_chat_completion_that_calls_a_tool(api: FakeOpenAI, ledger: AgentLedgerClient, streamed: bool) -> None:
    ledger.instrument_openai()
    client = api.client()
    with capture() as captured:
        result = api(client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, stream=streamed))
        if streamed:
            api.items(result)
        else:
            assert result.choices[0].message.tool_calls[0].function.arguments == TOOL_ARGUMENTS
    expected = chat_event(response="", toolCalls=[TOOL_CALL], finishReason="tool_calls")
    if streamed:
        expected["stream"] = True
    assert stable(the_call(captured), streamed=streamed) == expected


def test_parse_with_a_pydantic_response_format(api: FakeOpenAI, ledger: AgentLedgerClient) -> None:
    ledger.instrument_openai()
    client = api.client()
    with capture() as captured:
        completion = api(chat_api(client).parse(model=MODEL, messages=MESSAGES, response_format=RefundPolicy))
    assert completion.choices[0].message.parsed == RefundPolicy(days=5, business_days=True)
    assert api.requests[0]["body"]["response_format"]["type"] == "json_schema"
    assert stable(the_call(captured)) == chat_event(response=POLICY_JSON)


def test_the_chat_stream_helper(api: FakeOpenAI, ledger: AgentLedgerClient) -> None:
    client = api.client()

    def final_completion() -> Any:
        manager = chat_api(client).stream(model=MODEL, messages=MESSAGES, max_tokens=200)
        stream = api.enter(manager)
        try:
            return api(stream.get_final_completion())
        finally:
            api.exit(manager)

    uninstrumented = final_completion()
    ledger.instrument_openai()
    with capture() as captured:
        final = final_completion()
    assert final.choices[0].message.content == ANSWER
    assert final.to_dict() == uninstrumented.to_dict()  # the helper saw the chunks it would have seen
    assert stable(the_call(captured), streamed=True) == chat_event(maxTokens=200, stream=True)


def response_event(**extra: Any) -> dict[str, Any]:
    """The llm_call of a response to INSTRUCTIONS and QUESTION answered with ANSWER, plus ``extra``."""
    return {
        "type": "llm_call",
        "stepIndex": 0,
        "provider": "openai",
        "model": SNAPSHOTS[MODEL],
        "prompt": {"instructions": INSTRUCTIONS, "input": QUESTION},
        "response": ANSWER,
        **usage_of(MODEL),
        "finishReason": "completed",
        "retries": 0,
        **extra,
    }


def test_a_response(api: FakeOpenAI, ledger: AgentLedgerClient) -> None:
    ledger.instrument_openai()
    client = api.client()
    with capture() as captured:
        response = api(
            client.responses.create(
                model=MODEL, instructions=INSTRUCTIONS, input=QUESTION, temperature=0.2, max_output_tokens=200
            )
        )
    assert response.output_text == ANSWER
    assert stable(the_call(captured)) == response_event(temperature=0.2, maxTokens=200)


def test_a_streamed_response(api: FakeOpenAI, ledger: AgentLedgerClient, reading: str) -> None:
    ledger.instrument_openai()
    client = api.client()
    with capture() as captured:
        stream = api(
            client.responses.create(
                model=MODEL, instructions=INSTRUCTIONS, input=QUESTION, max_output_tokens=200, stream=True
            )
        )
        events = api.items(stream)
    assert [event.type for event in events][-1] == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == ANSWER
    assert "stream_options" not in api.requests[0]["body"]  # the Responses API always sends its usage
    assert stable(the_call(captured), streamed=True) == response_event(maxTokens=200, stream=True)


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "streamed"])
def test_a_response_that_calls_a_tool(api: FakeOpenAI, ledger: AgentLedgerClient, streamed: bool) -> None:
    ledger.instrument_openai()
    client = api.client()
    messages = [{"role": "user", "content": "Where is order A-1042?"}]
    with capture() as captured:
        result = api(client.responses.create(model=MODEL, input=messages, tools=RESPONSE_TOOLS, stream=streamed))
        if streamed:
            api.items(result)
        else:
            assert result.output[0].arguments == TOOL_ARGUMENTS
    expected = response_event(prompt=messages, response="", toolCalls=[TOOL_CALL])
    if streamed:
        expected["stream"] = True
    assert stable(the_call(captured), streamed=streamed) == expected


def test_the_responses_stream_helper(api: FakeOpenAI, ledger: AgentLedgerClient) -> None:
    ledger.instrument_openai()
    client = api.client()
    if not hasattr(client.responses, "stream"):
        pytest.skip(f"openai {openai.__version__} has no responses.stream()")
    with capture() as captured:
        manager = client.responses.stream(model=MODEL, instructions=INSTRUCTIONS, input=QUESTION)
        stream = api.enter(manager)
        final = api(stream.get_final_response())
        api.exit(manager)
    assert final.output_text == ANSWER
    assert stable(the_call(captured), streamed=True) == response_event(stream=True)


@pytest.mark.parametrize("encoding", [None, "float"], ids=["base64-by-default", "float"])
def test_embeddings(api: FakeOpenAI, ledger: AgentLedgerClient, encoding: Optional[str]) -> None:
    ledger.instrument_openai()
    client = api.client()
    texts = ["refund policy", "shipping times"]
    options = {} if encoding is None else {"encoding_format": encoding}
    with capture() as captured:
        result = api(client.embeddings.create(model=EMBEDDING_MODEL, input=texts, dimensions=8, **options))
    # The SDK asks for base64 unless told otherwise (and decodes it): the wire carries either.
    assert api.requests[0]["body"]["encoding_format"] == (encoding or "base64")
    assert [len(item.embedding) for item in result.data] == [8, 8]
    assert stable(the_call(captured)) == {
        "type": "llm_call",
        "stepIndex": 0,
        "provider": "openai",
        "model": EMBEDDING_MODEL,
        "prompt": texts,
        "response": {"embeddings": 2, "dimensions": 8},
        "tokensIn": 16,
        "tokensOut": 0,
        "dimensions": 8,
        "retries": 0,
    }


@pytest.mark.parametrize("endpoint", ["chat", "responses"])
def test_reasoning_tokens_and_the_output_limit_of_a_reasoning_model(
    api: FakeOpenAI, ledger: AgentLedgerClient, endpoint: str
) -> None:
    ledger.instrument_openai()
    client = api.client()
    with capture() as captured:
        if endpoint == "chat":
            api(
                client.chat.completions.create(
                    model=REASONING_MODEL, messages=MESSAGES, max_completion_tokens=2000, reasoning_effort="low"
                )
            )
        else:
            api(
                client.responses.create(
                    model=REASONING_MODEL,
                    instructions=INSTRUCTIONS,
                    input=QUESTION,
                    max_output_tokens=2000,
                    reasoning={"effort": "low"},
                )
            )
    event = stable(the_call(captured))
    assert event["model"] == SNAPSHOTS[REASONING_MODEL]
    assert {key: event[key] for key in ("tokensIn", "tokensOut", "cacheReadTokens", "reasoningTokens")} == usage_of(
        REASONING_MODEL
    )
    assert event["maxTokens"] == 2000


def test_a_raw_response_is_recorded_once_parsed(api: FakeOpenAI, ledger: AgentLedgerClient) -> None:
    ledger.instrument_openai()
    client = api.client()
    with capture() as captured:
        raw = api(client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES))
        assert raw.parse().choices[0].message.content == ANSWER
    assert stable(the_call(captured)) == chat_event()


def test_calls_in_a_session_take_its_steps_in_order(api: FakeOpenAI, ledger: AgentLedgerClient) -> None:
    ledger.instrument_openai()
    client = api.client()
    with capture() as captured, ledger.session("refund-desk"):
        api(client.chat.completions.create(model=MODEL, messages=MESSAGES))
        api.items(api(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)))
        api(client.responses.create(model=MODEL, instructions=INSTRUCTIONS, input=QUESTION))
        api(client.embeddings.create(model=EMBEDDING_MODEL, input="refund policy"))
    (session,) = captured.sessions
    assert session.agent_name == "refund-desk"
    assert [(e["stepIndex"], e["model"]) for e in session.events] == [
        (0, SNAPSHOTS[MODEL]),
        (1, SNAPSHOTS[MODEL]),
        (2, SNAPSHOTS[MODEL]),
        (3, EMBEDDING_MODEL),
    ]


def test_an_httpx_client_given_to_any_openai_version(api: FakeOpenAI, ledger: AgentLedgerClient) -> None:
    """openai 3.x is built on httpx2 and still takes an ``httpx`` client; before 3.x httpx is its own."""
    ledger.instrument_openai()
    api.http = httpx
    client = api.client()
    with capture() as captured:
        api.items(api(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)))
    assert stable(the_call(captured), streamed=True) == chat_event(stream=True)


# -- stream usage: asked for, and hidden unless the user asked ----------------------------------


def test_stream_usage_is_asked_for_and_its_chunk_hidden_from_the_user(
    api: FakeOpenAI, ledger: AgentLedgerClient, reading: str
) -> None:
    client = api.client()
    plain = dumped(api.items(api(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))))
    ledger.instrument_openai()
    with capture() as captured:
        seen = dumped(api.items(api(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))))
    uninstrumented, instrumented = (request["body"] for request in api.requests)
    assert "stream_options" not in uninstrumented
    assert instrumented == {**uninstrumented, "stream_options": {"include_usage": True}}
    assert seen == plain  # the same chunks, to the fields the API set
    assert stable(the_call(captured), streamed=True) == chat_event(stream=True)


@pytest.mark.parametrize("written", ["compact", "spaced"])
def test_the_usage_chunk_asked_for_is_read_before_the_client_parses_it(
    api: FakeOpenAI, ledger: AgentLedgerClient, written: str
) -> None:
    """The client parses each chunk into a model (about 0.1 ms): the usage chunk the integration asked for
    is read from its text and never reaches the client's parser, so the instrumented stream costs the client
    no more parsing than the plain one. JSON written with spaces (not the API's) is hidden after parsing."""
    separators = (",", ":") if written == "compact" else (", ", ": ")
    api.respond = lambda request, body: api.stream_response(chat_sse(body, separators))
    client = api.client()
    parsed: list[Any] = []
    process = client._process_response_data

    def counting(*args: Any, **kwargs: Any) -> Any:
        parsed.append(kwargs.get("data"))
        return process(*args, **kwargs)

    client._process_response_data = counting

    def read() -> list[Any]:
        parsed.clear()
        return dumped(api.items(api(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))))

    plain, plain_parsed = read(), len(parsed)
    ledger.instrument_openai()
    with capture() as captured:
        seen = read()
    assert seen == plain
    assert "stream_options" in api.requests[-1]["body"]
    if written == "compact":
        assert len(parsed) == plain_parsed  # the usage chunk was not parsed
    else:
        assert len(parsed) == plain_parsed + 1
        assert parsed[-1]["choices"] == [] and parsed[-1]["usage"] is not None
    assert stable(the_call(captured), streamed=True) == chat_event(stream=True)


def test_chunks_changed_by_the_user_as_they_arrive_are_recorded_as_the_api_sent_them(
    api: FakeOpenAI, ledger: AgentLedgerClient
) -> None:
    """What the API sent is recorded, whatever the user's loop does to the chunk objects it gets."""
    ledger.instrument_openai()
    client = api.client()

    def change(chunk: Any) -> bool:  # as each chunk arrives, in the user's loop
        for choice in chunk.choices:
            choice.delta.content = "changed"
            choice.finish_reason = "changed"
        chunk.model = "changed"
        return False  # read on to the end

    with capture() as captured:
        api.first(api(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)), change)
    assert stable(the_call(captured), streamed=True) == chat_event(stream=True)


@pytest.mark.parametrize("instrumented", [False, True])
def test_a_stream_read_to_its_end_is_freed_at_once(ledger: AgentLedgerClient, instrumented: bool) -> None:
    """Without the garbage collector, as it would be uninstrumented: hiding the usage chunk makes no cycle."""
    api = FakeOpenAI("sync")
    client = api.client()
    if instrumented:
        ledger.instrument_openai()
    gc.collect()
    gc.disable()
    try:
        stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        raw = weakref.ref(getattr(stream, "__wrapped__", stream))
        chunks = list(stream)
        del stream
        assert raw() is None
    finally:
        gc.enable()
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == ANSWER
    assert all(chunk.choices for chunk in chunks)  # the usage chunk was the integration's


def test_a_long_stream_counts_the_chunks_it_keeps_in_the_queues_bound(
    ledger: AgentLedgerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chunks' text is kept until the event is made, off the agent's thread: the queue counts it."""
    api = FakeOpenAI("sync")
    words = ["word"] * 2000
    api.respond = lambda request, body: api.stream_response(
        [b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n" for chunk in long_chunks(body, words)]
        + [b"data: [DONE]\n\n"]
    )
    sizes: list[int] = []
    emit = _calls.emit_quietly
    monkeypatch.setattr(
        _calls, "emit_quietly", lambda handle, event, size: (sizes.append(size), emit(handle, event, size))
    )
    ledger.instrument_openai()
    with capture() as captured:
        list(api.client().chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
    sent = sum(len(json.dumps(chunk, separators=(",", ":"))) for chunk in long_chunks({"model": MODEL}, words))
    assert sizes and sizes[0] >= sent
    assert the_call(captured)["response"] == " ".join(words)


def long_chunks(body: dict[str, Any], words: list[str]) -> list[dict[str, Any]]:
    base = {"id": "chatcmpl-long", "object": "chat.completion.chunk", "created": CREATED, "model": SNAPSHOTS[MODEL]}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"content": word if n == 0 else " " + word}, "finish_reason": None}]}
        for n, word in enumerate(words)
    ]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if (body.get("stream_options") or {}).get("include_usage"):
        chunks = [{**chunk, "usage": None} for chunk in chunks]
        chunks.append({**base, "choices": [], "usage": chat_usage(MODEL)})
    return chunks


def test_a_usage_chunk_the_user_asked_for_is_theirs(api: FakeOpenAI, ledger: AgentLedgerClient) -> None:
    client = api.client()

    def read() -> list[Any]:
        stream = api(
            client.chat.completions.create(
                model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
        )
        return api.items(stream)

    plain = read()
    ledger.instrument_openai()
    with capture() as captured:
        seen = read()
    assert api.requests[0]["body"] == api.requests[1]["body"]
    assert dumped(seen) == dumped(plain)
    assert seen[-1].choices == []
    assert seen[-1].usage.prompt_tokens == USAGES[MODEL][0]
    assert stable(the_call(captured), streamed=True) == chat_event(stream=True)


# -- streams abandoned, or broken midway -------------------------------------------------


def abandoned_chat_event() -> dict[str, Any]:
    """A chat stream left after its first words: recorded with what arrived, its usage missing."""
    return {
        "type": "llm_call",
        "stepIndex": 0,
        "provider": "openai",
        "model": SNAPSHOTS[MODEL],
        "prompt": MESSAGES,
        "response": "Refunds",
        "tokensIn": 0,
        "tokensOut": 0,
        "usageMissing": True,
        "incomplete": True,
        "stream": True,
        "retries": 0,
    }


@pytest.mark.parametrize("how", ["dropped-unread", "dropped", "closed", "with-exit", "helper-exit"])
def test_an_abandoned_chat_stream_is_recorded_once_with_what_arrived(
    api: FakeOpenAI, ledger: AgentLedgerClient, how: str
) -> None:
    ledger.instrument_openai()
    client = api.client()
    expected = abandoned_chat_event()
    with capture() as captured:
        if how == "helper-exit":
            manager = chat_api(client).stream(model=MODEL, messages=MESSAGES)
            helper = api.enter(manager)
            api.first(helper, lambda event: event.type == "content.delta" and event.delta)
            api.exit(manager)
            del helper, manager
        else:
            stream = api(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
            if how == "dropped-unread":
                expected.update(model=MODEL, response="")  # nothing arrived: the model asked for
            else:
                if how == "with-exit":
                    stream = api.enter(stream)
                read = api.first(stream, has_text)
                assert [chunk.choices[0].delta.content for chunk in read] == ["", "Refunds"]
                if how == "closed":
                    api.close(stream)
                elif how == "with-exit":
                    api.exit(stream)
            del stream  # no garbage collection needed: nothing holds it in a cycle
        if api.is_async and how == "dropped":
            # What was read went on through an async generator, which its event loop closes: recorded
            # when the loop runs next (at the latest when asyncio.run() ends, shutting generators down).
            assert captured.events_of("llm_call") == []
            api.settle()
        if how == "dropped-unread":
            assert "timeToFirstTokenMs" not in the_call(captured)
            assert stable(the_call(captured)) == expected
        else:
            assert stable(the_call(captured), streamed=True) == expected
        api.settle(collect=True)  # what the proxy held is collected and closed: nothing more is recorded
    api.settle(collect=True)
    assert len(captured.events_of("llm_call")) == 1


def test_a_stream_read_straight_from_create_is_not_abandoned(api: FakeOpenAI, ledger: AgentLedgerClient) -> None:
    """``for chunk in client.chat.completions.create(..., stream=True)`` keeps no reference to the stream."""
    ledger.instrument_openai()
    client = api.client()
    text: list[str] = []
    with capture() as captured:
        if api.is_async:

            async def read() -> None:
                async for chunk in await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
                    text.append(chunk.choices[0].delta.content or "")

            api(read())
        else:
            for chunk in client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
                text.append(chunk.choices[0].delta.content or "")
    assert "".join(text) == ANSWER
    assert stable(the_call(captured), streamed=True) == chat_event(stream=True)


@pytest.mark.parametrize("how", ["dropped", "helper-exit"])
def test_an_abandoned_response_stream_is_recorded_once_with_what_arrived(
    api: FakeOpenAI, ledger: AgentLedgerClient, how: str
) -> None:
    ledger.instrument_openai()
    client = api.client()
    first_text = "response.output_text.delta"
    with capture() as captured:
        if how == "helper-exit":
            if not hasattr(client.responses, "stream"):
                pytest.skip(f"openai {openai.__version__} has no responses.stream()")
            manager = client.responses.stream(model=MODEL, instructions=INSTRUCTIONS, input=QUESTION)
            helper = api.enter(manager)
            api.first(helper, lambda event: event.type == first_text)
            api.exit(manager)
            del helper, manager
        else:
            stream = api(client.responses.create(model=MODEL, instructions=INSTRUCTIONS, input=QUESTION, stream=True))
            api.first(stream, lambda event: event.type == first_text)
            del stream
        api.settle()  # an async generator is closed by its event loop
        assert len(captured.events_of("llm_call")) == 1
    api.settle(collect=True)
    assert len(captured.events_of("llm_call")) == 1
    assert stable(the_call(captured), streamed=True) == {
        "type": "llm_call",
        "stepIndex": 0,
        "provider": "openai",
        "model": SNAPSHOTS[MODEL],
        "prompt": {"instructions": INSTRUCTIONS, "input": QUESTION},
        "response": "Refunds",
        "tokensIn": 0,
        "tokensOut": 0,
        "usageMissing": True,
        "incomplete": True,
        "stream": True,
        "retries": 0,
    }


def broken_stream(api: FakeOpenAI, pieces: Callable[[dict[str, Any]], list[bytes]], keep: int) -> list[Any]:
    """Answer every request with the first ``keep`` pieces of its stream, then a broken connection."""
    errors: list[Any] = []

    def respond(request: Any, body: dict[str, Any]) -> Any:
        error = api.http.ReadError(
            "peer closed connection without sending complete message body (incomplete chunked read)", request=request
        )
        errors.append(error)
        return api.stream_response(pieces(body)[:keep], error)

    api.respond = respond
    return errors


def read_until_it_fails(api: FakeOpenAI, stream: Any) -> tuple[list[Any], BaseException]:
    read: list[Any] = []
    with pytest.raises(Exception) as raised:  # noqa: PT011 - the type is what the uninstrumented client raises
        api.first(stream, lambda item: read.append(item) and False)  # type: ignore[func-returns-value]
    return read, raised.value


@pytest.mark.parametrize("endpoint", ["chat", "responses"])
def test_a_stream_that_breaks_midway_is_recorded_with_its_error_reraised_unchanged(
    api: FakeOpenAI, ledger: AgentLedgerClient, endpoint: str
) -> None:
    client = api.client()
    if endpoint == "chat":
        errors = broken_stream(api, chat_sse, keep=3)  # the role chunk, "Refunds", " take"

        def create() -> Any:
            return api(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))

        prompt: Any = MESSAGES
    else:
        errors = broken_stream(api, response_sse, keep=6)  # 4 events, then the deltas "Refunds" and " take"

        def create() -> Any:
            return api(client.responses.create(model=MODEL, instructions=INSTRUCTIONS, input=QUESTION, stream=True))

        prompt = {"instructions": INSTRUCTIONS, "input": QUESTION}

    plain_read, plain_error = read_until_it_fails(api, create())
    ledger.instrument_openai()
    with capture() as captured:
        read, error = read_until_it_fails(api, create())
    assert dumped(read) == dumped(plain_read)
    assert type(error) is type(plain_error)
    assert str(error) == str(plain_error)
    assert error is errors[1] or error.__cause__ is errors[1]  # the transport's error, or openai's for it
    assert stable(the_call(captured), streamed=True) == {
        "type": "llm_call",
        "stepIndex": 0,
        "provider": "openai",
        "model": SNAPSHOTS[MODEL],
        "prompt": prompt,
        "response": "Refunds take",
        "tokensIn": 0,
        "tokensOut": 0,
        "usageMissing": True,  # output had begun: what it cost is estimated, not $0
        "error": f"{type(error).__name__}: {error}",
        "stream": True,
        "retries": 0,
    }


# -- provider errors ----------------------------------------------------------------------


def error_response(status: int, message: str, kind: str, **headers: str) -> Callable[[Any, dict[str, Any]], Any]:
    def respond(request: Any, body: dict[str, Any]) -> Any:
        return api_http(request).Response(
            status,
            headers={**JSON_HEADERS, "x-request-id": "req_5f0b9c2ad3", **headers},
            json={"error": {"message": message, "type": kind, "param": None, "code": None}},
        )

    return respond


def api_http(request: Any) -> Any:
    return httpx if isinstance(request, httpx.Request) else HX


def timing_out(request: Any, body: dict[str, Any]) -> Any:
    raise api_http(request).ReadTimeout("The read operation timed out", request=request)


ERROR_CASES = {
    "400": (
        error_response(400, "Invalid value for 'temperature': must be at most 2.", "invalid_request_error"),
        {"max_retries": 2},
        "BadRequestError",
        0,
    ),
    "500": (
        error_response(
            500,
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            **{"retry-after-ms": "1"},
        ),
        {"max_retries": 2},
        "InternalServerError",
        2,
    ),
    # No response, so no retry-after: openai's own back-off (about 0.4 s) before its one retry.
    "timeout": (timing_out, {"max_retries": 1}, "APITimeoutError", 1),
}


@pytest.mark.parametrize(
    ("case", "streamed"),
    [("400", False), ("400", True), ("500", False), ("500", True), ("timeout", False)],
    ids=["400", "400-streamed", "500-with-2-retries", "500-streamed", "timeout-with-1-retry"],
)
def test_a_provider_error_is_one_failed_call_and_the_same_exception(
    api: FakeOpenAI, ledger: AgentLedgerClient, case: str, streamed: bool
) -> None:
    respond, options, error_type, retries = ERROR_CASES[case]
    api.respond = respond
    client = api.client(**options)

    def call() -> BaseException:
        with pytest.raises(openai.OpenAIError) as raised:
            api(client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0.2, stream=streamed))
        return raised.value

    plain = call()
    ledger.instrument_openai()
    with capture() as captured:
        error = call()
    assert type(error) is type(plain) is getattr(openai, error_type)
    assert str(error) == str(plain)
    assert len(api.requests) == 2 * (retries + 1)
    expected = {
        "type": "llm_call",
        "stepIndex": 0,
        "provider": "openai",
        "model": MODEL,  # nothing answered: the model asked for
        "prompt": MESSAGES,
        "response": "",
        "tokensIn": 0,
        "tokensOut": 0,
        "error": f"{error_type}: {error}",
        "temperature": 0.2,
        "retries": retries,
    }
    if streamed:
        expected["stream"] = True
    assert stable(the_call(captured)) == expected


# -- on a real local ledger: budgets before the request, exact prices, estimates ----------------------

needs_server = pytest.mark.skipif(
    importlib.util.find_spec("starlette") is None, reason="the local ledger needs the server extra"
)


@pytest.fixture
def local_clients() -> Iterator[Callable[..., AgentLedgerClient]]:
    """AgentLedgerClients of the local ledger (the ``local_ledger`` fixture sets the environment), closed after."""
    made: list[AgentLedgerClient] = []

    def make(**options: Any) -> AgentLedgerClient:
        client = AgentLedgerClient(**options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def ledger_events(local_ledger: Any, agent_name: str) -> list[dict[str, Any]]:
    """The events of the agent's one session, as ``GET /v1/sessions/{id}`` returns them, amounts exact."""
    assert local_ledger.flush() == 0
    (summary,) = local_ledger.sessions(agent_name)
    with httpx.Client(base_url=local_ledger.url, headers={"x-api-key": local_ledger.api_key}) as http:
        response = http.get(f"/v1/sessions/{summary['id']}")
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = json.loads(response.text, parse_float=Decimal)["events"]
    return events


def genai_price(model: str, tokens_in: int, tokens_out: int, cache_read: int = 0) -> Decimal:
    from genai_prices import Usage, calc_price

    usage = Usage(input_tokens=tokens_in, cache_read_tokens=cache_read, output_tokens=tokens_out)
    price: Decimal = calc_price(usage, model_ref=model, provider_id="openai").total_price
    return price


@needs_server
@pytest.mark.integration
def test_a_budget_refuses_the_call_before_any_request_is_sent(
    api: FakeOpenAI, local_ledger: Any, local_clients: Callable[..., AgentLedgerClient]
) -> None:
    # A reservation for gpt-4o-mini: the prompt's bytes / 2 tokens in, and 4096 tokens out at $0.60 a
    # million (no max_tokens): about $0.0025, far over $0.0001.
    local_ledger.set_budget("frugal-bot", 0.0001)
    local_clients(agent_name="frugal-bot").instrument_openai()
    client = api.client()
    with pytest.raises(BudgetGuardrailError):
        api(client.chat.completions.create(model=MODEL, messages=MESSAGES))
    with pytest.raises(BudgetGuardrailError):
        api(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
    assert api.requests == []  # nothing was sent to OpenAI

    local_ledger.set_budget("frugal-bot", 1.0)  # room for it now: the same call goes out
    completion = api(client.chat.completions.create(model=MODEL, messages=MESSAGES))
    assert completion.choices[0].message.content == ANSWER
    assert len(api.requests) == 1
    (event,) = ledger_events(local_ledger, "frugal-bot")
    assert event["reservationId"]
    assert event["costStatus"] == "priced"


@needs_server
@pytest.mark.integration
def test_a_chat_call_with_cached_tokens_is_priced_exactly_end_to_end(
    api: FakeOpenAI, local_ledger: Any, local_clients: Callable[..., AgentLedgerClient]
) -> None:
    local_clients(agent_name="priced-bot").instrument_openai()
    client = api.client()
    api(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=200))
    (event,) = ledger_events(local_ledger, "priced-bot")
    tokens_in, cached, tokens_out, _ = USAGES[MODEL]
    assert (event["model"], event["tokensIn"], event["cacheReadTokens"], event["tokensOut"]) == (
        SNAPSHOTS[MODEL],
        tokens_in,
        cached,
        tokens_out,
    )
    assert event["costStatus"] == "priced"
    assert Decimal(event["costUsd"]) == genai_price(SNAPSHOTS[MODEL], tokens_in, tokens_out, cached)
    assert Decimal(event["costUsd"]) < genai_price(SNAPSHOTS[MODEL], tokens_in, tokens_out)  # the cache counted


@needs_server
@pytest.mark.integration
def test_a_streamed_response_changed_by_the_user_at_its_end_is_recorded_as_the_api_sent_it(
    api: FakeOpenAI, local_ledger: Any, local_clients: Callable[..., AgentLedgerClient], reading: str
) -> None:
    """The event is made on the sender thread, after the stream ended: from the text the API sent, or a copy
    of the final response (read item by item), not from the response object the user holds (and here changes at once)."""
    local_clients(agent_name="changing-bot").instrument_openai()
    client = api.client()
    stream = api(client.responses.create(model=MODEL, instructions=INSTRUCTIONS, input=QUESTION, stream=True))
    final = api.items(stream)[-1].response
    final.usage.input_tokens = final.usage.output_tokens = 999_999
    final.output[0].content[0].text = "changed"
    final.model = "changed"
    (event,) = ledger_events(local_ledger, "changing-bot")
    tokens_in, _, tokens_out, _ = USAGES[MODEL]
    assert (event["model"], event["response"]) == (SNAPSHOTS[MODEL], ANSWER)
    assert (event["tokensIn"], event["tokensOut"]) == (tokens_in, tokens_out)


@needs_server
@pytest.mark.integration
def test_a_usage_chunk_changed_by_the_user_at_its_end_is_recorded_as_the_api_sent_it(
    api: FakeOpenAI, local_ledger: Any, local_clients: Callable[..., AgentLedgerClient], reading: str
) -> None:
    """The usage chunk the user asked for is theirs to change; what the API sent is recorded."""
    local_clients(agent_name="changing-chat-bot").instrument_openai()
    client = api.client()
    stream = api(
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    usage = api.items(stream)[-1].usage
    usage.prompt_tokens = usage.completion_tokens = 999_999
    usage.prompt_tokens_details.cached_tokens = 0
    (event,) = ledger_events(local_ledger, "changing-chat-bot")
    tokens_in, cached, tokens_out, _ = USAGES[MODEL]
    assert (event["tokensIn"], event["cacheReadTokens"], event["tokensOut"]) == (tokens_in, cached, tokens_out)


@needs_server
@pytest.mark.integration
def test_an_abandoned_stream_without_usage_is_estimated_never_free(
    api: FakeOpenAI, local_ledger: Any, local_clients: Callable[..., AgentLedgerClient]
) -> None:
    local_clients(agent_name="abandoning-bot").instrument_openai()
    client = api.client()
    stream = api(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
    api.first(stream, has_text)
    api.close(stream)
    (event,) = ledger_events(local_ledger, "abandoning-bot")
    assert (event["usageMissing"], event["incomplete"], event["response"]) == (True, True, "Refunds")
    assert event["costStatus"] == "estimated"
    # The ledger's estimate when usage is missing: 4096 tokens in and 4096 out.
    assert Decimal(event["costUsd"]) == genai_price(SNAPSHOTS[MODEL], 4096, 4096) > 0


@needs_server
@pytest.mark.integration
def test_under_a_budget_a_stream_without_usage_is_charged_what_it_reserved(
    api: FakeOpenAI, local_ledger: Any, local_clients: Callable[..., AgentLedgerClient]
) -> None:
    local_ledger.set_budget("budgeted-abandoner", 1.0)
    local_clients(agent_name="budgeted-abandoner").instrument_openai()
    client = api.client()
    stream = api(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, max_tokens=50))
    api.first(stream, has_text)
    api.close(stream)
    (event,) = ledger_events(local_ledger, "budgeted-abandoner")
    assert (event["usageMissing"], event["incomplete"], event["costStatus"]) == (True, True, "estimated")
    assert event["reservationId"]
    # The reservation priced the prompt and max_tokens=50: that is the charge, not the 4096/4096 default.
    assert event["pricingNote"] == f"usage missing: charged the ${event['costUsd']} it reserved"
    assert 0 < Decimal(event["costUsd"]) < genai_price(SNAPSHOTS[MODEL], 4096, 4096)


# -- which session: the implicit one, the current one, nested in a tool ---------------------------------


@pytest.mark.parametrize("source", ["agent_name", "environment", "script"])
def test_a_call_outside_any_session_goes_to_the_implicit_session(
    api: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    monkeypatch.setattr(sys, "argv", ["/srv/agents/refund_bot.py", "--once"])
    if source != "script":
        monkeypatch.setenv("AGENT_LEDGER_AGENT_NAME", "env-bot")
    ledger = AgentLedgerClient(
        api_key="sk-ledger-test",
        base_url="https://ledger.test",
        agent_name="named-bot" if source == "agent_name" else None,
    )
    try:
        ledger.instrument_openai()
        client = api.client()
        with capture() as captured:
            api(client.chat.completions.create(model=MODEL, messages=MESSAGES))
            api(client.embeddings.create(model=EMBEDDING_MODEL, input="refund policy"))
    finally:
        ledger.close()
    (session,) = captured.sessions  # one implicit session for both calls
    assert session.agent_name == {"agent_name": "named-bot", "environment": "env-bot", "script": "refund_bot"}[source]
    assert [(e["stepIndex"], e["model"]) for e in session.events] == [(0, SNAPSHOTS[MODEL]), (1, EMBEDDING_MODEL)]
    assert session.status == "success"  # ended when the client closed


def test_calls_inside_a_session_and_inside_a_tool(api: FakeOpenAI, ledger: AgentLedgerClient) -> None:
    ledger.instrument_openai()
    client = api.client()
    question = [{"role": "user", "content": QUESTION}]
    if api.is_async:

        @ledger.tool
        async def answer(messages: list[dict[str, str]]) -> str:
            completion = await client.chat.completions.create(model=MODEL, messages=messages)
            return str(completion.choices[0].message.content)

        @ledger.session("refund-desk")
        async def desk() -> str:
            await client.embeddings.create(model=EMBEDDING_MODEL, input=QUESTION)
            return await answer(question)

    else:

        @ledger.tool
        def answer(messages: list[dict[str, str]]) -> str:
            completion = client.chat.completions.create(model=MODEL, messages=messages)
            return str(completion.choices[0].message.content)

        @ledger.session("refund-desk")
        def desk() -> str:
            client.embeddings.create(model=EMBEDDING_MODEL, input=QUESTION)
            return answer(question)

    with capture() as captured:
        assert api(desk()) == ANSWER
    (session,) = captured.sessions  # no implicit session: every call was inside this one
    assert session.agent_name == "refund-desk"
    embedding, tool_call, chat, tool_result = session.events
    assert [e["type"] for e in session.events] == ["llm_call", "tool_call", "llm_call", "tool_result"]
    assert [e["stepIndex"] for e in session.events] == [0, 1, 2, 1]  # a tool's result shares its call's step
    assert "parentSpanId" not in embedding
    assert chat["parentSpanId"] == tool_call["spanId"]  # the LLM call is nested in the tool
    assert (chat["prompt"], chat["response"]) == (question, ANSWER)
    assert tool_result["spanId"] == tool_call["spanId"]


# -- what is instrumented ------------------------------------------------------------------


@pytest.fixture
def fakes() -> Iterator[dict[str, FakeOpenAI]]:
    """A sync and an async fake, for tests that need clients of both kinds at once."""
    made = {"sync": FakeOpenAI("sync"), "async": FakeOpenAI("async")}
    yield made
    for fake in made.values():
        fake.shutdown()


def ask(fake: FakeOpenAI, client: Any) -> None:
    fake(client.chat.completions.create(model=MODEL, messages=MESSAGES))


def test_with_no_argument_every_client_is_recorded_made_before_or_after(
    fakes: dict[str, FakeOpenAI], ledger: AgentLedgerClient
) -> None:
    before = {kind: fake.client() for kind, fake in fakes.items()}
    ledger.instrument_openai()
    after = {kind: fake.client() for kind, fake in fakes.items()}
    with capture() as captured:
        for kind in ("sync", "async"):
            ask(fakes[kind], before[kind])
            ask(fakes[kind], after[kind])
    assert len(captured.events_of("llm_call")) == 4
    assert [e["stepIndex"] for e in captured.events_of("llm_call")] == [0, 1, 2, 3]


def test_a_client_instrumented_alone_and_its_with_options_copies(api: FakeOpenAI, ledger: AgentLedgerClient) -> None:
    client = api.client()
    other = api.client()
    ledger.instrument_openai(client)
    copy = client.with_options(timeout=30.0, max_retries=5)
    with capture() as captured:
        ask(api, client)
        ask(api, other)
        ask(api, copy)
    assert len(api.requests) == 3
    assert len(captured.events_of("llm_call")) == 2


def test_instrumenting_twice_records_once(api: FakeOpenAI, ledger: AgentLedgerClient) -> None:
    client = api.client()
    ledger.instrument_openai()
    ledger.instrument_openai()
    ledger.instrument_openai(client)
    ledger.instrument_openai(client)
    with capture() as captured:
        ask(api, client)
        ask(api, api.client())
    assert len(captured.events_of("llm_call")) == 2


def test_uninstrument_stops_recording_and_restores_the_request_method(
    api: FakeOpenAI, ledger: AgentLedgerClient
) -> None:
    client = api.client()
    ledger.instrument_openai()
    assert {"SyncAPIClient.request", "AsyncAPIClient.request", "BaseClient._calculate_retry_timeout"} <= set(patched())
    ledger.uninstrument_openai()
    assert base_client.SyncAPIClient.__dict__["request"] is ORIGINAL_SYNC_REQUEST
    assert base_client.AsyncAPIClient.__dict__["request"] is ORIGINAL_ASYNC_REQUEST
    assert base_client.BaseClient.__dict__["_calculate_retry_timeout"] is ORIGINAL_RETRY_TIMEOUT
    assert patched() == []  # nor anything else it patched

    ledger.instrument_openai(client)  # one client alone: undone the same way
    ledger.uninstrument_openai(client)
    assert patched() == []
    with capture() as captured:
        ask(api, client)
        stream = api(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
        assert type(stream) is (openai.AsyncStream if api.is_async else openai.Stream)  # not a proxy
        api.items(stream)
    assert captured.events == []
    assert captured.sessions == []


def test_uninstrumenting_one_client_while_all_are_instrumented_excludes_just_it(
    api: FakeOpenAI, ledger: AgentLedgerClient
) -> None:
    excluded = api.client()
    other = api.client()
    ledger.instrument_openai()
    ledger.uninstrument_openai(excluded)
    with capture() as captured:
        ask(api, excluded)
        ask(api, excluded.with_options(timeout=30.0))
        ask(api, other)
    assert len(api.requests) == 3
    assert len(captured.events_of("llm_call")) == 1


def test_each_ledger_client_records_the_openai_clients_it_instrumented(api: FakeOpenAI) -> None:
    support = AgentLedgerClient(api_key="sk-ledger-test", base_url="https://ledger.test", agent_name="support-bot")
    billing = AgentLedgerClient(api_key="sk-ledger-test", base_url="https://ledger.test", agent_name="billing-bot")
    try:
        support_client, billing_client = api.client(), api.client()
        support.instrument_openai(support_client)
        billing.instrument_openai(billing_client)
        with capture() as captured:
            ask(api, support_client)
            ask(api, billing_client)
    finally:
        support.close()
        billing.close()
    assert [(s.agent_name, len(s.events)) for s in captured.sessions] == [("support-bot", 1), ("billing-bot", 1)]


@pytest.mark.parametrize("argument", ["sk-proj-test", openai, httpx.Client, 42], ids=["str", "module", "class", "int"])
def test_a_non_client_argument_is_a_clear_type_error(ledger: AgentLedgerClient, argument: Any) -> None:
    with pytest.raises(TypeError, match=r"instrument_openai\(client\) takes a openai client .*OpenAI\(\)"):
        ledger.instrument_openai(argument)
    with pytest.raises(TypeError, match="call it with no argument to instrument every client"):
        ledger.uninstrument_openai(argument)
    assert base_client.SyncAPIClient.__dict__["request"] is ORIGINAL_SYNC_REQUEST  # nothing was patched


def test_the_module_level_functions_record_with_the_default_client(
    api: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_LEDGER_AGENT_NAME", "default-bot")
    agent_ledger_sdk.instrument_openai()
    client = api.client()
    with capture() as captured:
        ask(api, client)
    agent_ledger_sdk.uninstrument_openai()
    with capture() as after:
        ask(api, client)
    assert [(s.agent_name, len(s.events)) for s in captured.sessions] == [("default-bot", 1)]
    assert after.events == []
    agent_ledger_sdk.get_client().close()


def test_the_async_ledger_client_instruments_too(api: FakeOpenAI) -> None:
    ledger = AsyncAgentLedgerClient(api_key="sk-ledger-test", base_url="https://ledger.test", agent_name="async-bot")
    ledger.instrument_openai()
    client = api.client()
    with capture() as captured:
        ask(api, client)
    ledger.uninstrument_openai()
    asyncio.run(ledger.aclose())
    assert [(s.agent_name, len(s.events)) for s in captured.sessions] == [("async-bot", 1)]


# -- privacy, the kill switch, and no import cost ----------------------------------------------


def test_capture_content_false_records_the_usage_and_not_the_words(api: FakeOpenAI) -> None:
    ledger = AgentLedgerClient(
        api_key="sk-ledger-test", base_url="https://ledger.test", agent_name="private-bot", capture_content=False
    )
    try:
        ledger.instrument_openai()
        client = api.client()
        with capture() as captured:
            api(client.chat.completions.create(model=MODEL, messages=MESSAGES))
            api.items(api(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)))
            api(client.responses.create(model=MODEL, instructions=INSTRUCTIONS, input=QUESTION))
            api(client.embeddings.create(model=EMBEDDING_MODEL, input=QUESTION))
            api(client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS))
            api.items(api(client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, stream=True)))
    finally:
        ledger.close()
    events = captured.events_of("llm_call")
    assert [(e["prompt"], e["response"]) for e in events] == [("[redacted]", "[redacted]")] * 6
    assert [e["tokensIn"] for e in events] == [USAGES[MODEL][0]] * 3 + [8] + [USAGES[MODEL][0]] * 2  # usage stays
    assert [e.get("toolCalls") for e in events[-2:]] == ["[redacted]"] * 2  # the model's arguments are content
    recorded = json.dumps(captured.events)
    for words in ("refunds", "business days", "Refunds", "A-1042", "order_id"):
        assert words not in recorded


@pytest.mark.parametrize("why", ["disabled", "no-key"])
def test_when_nothing_records_the_calls_go_through_as_the_user_made_them(
    api: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    """A client with ``enabled=False`` (even under a test capture), or with no key, changes nothing."""
    client = api.client()

    def calls() -> tuple[Any, list[Any]]:
        completion = api(client.chat.completions.create(model=MODEL, messages=MESSAGES))
        chunks = api.items(api(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)))
        return completion.to_dict(), dumped(chunks)

    plain = calls()
    if why == "disabled":
        ledger = AgentLedgerClient(api_key="sk-ledger-test", base_url="https://ledger.test", enabled=False)
    else:
        ledger = AgentLedgerClient(base_url="https://ledger.test")  # no key here: nothing is sent
    try:
        ledger.instrument_openai()
        if why == "disabled":
            with capture() as captured:
                seen = calls()
            assert captured.events == []
            assert captured.sessions == []
        else:
            seen = calls()
    finally:
        ledger.close()
    assert seen == plain  # no usage chunk the user did not ask for
    assert api.requests[3]["body"] == api.requests[1]["body"]  # the request went as the user made it
    assert "stream_options" not in api.requests[3]["body"]


def test_importing_the_sdk_does_not_import_openai() -> None:
    code = "import sys, agent_ledger_sdk; print(sorted(m for m in ('openai', 'httpx2') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_field_reads_dicts_other_mappings_and_objects_whichever_it_met_first() -> None:
    """``_calls.field`` remembers per type whether it is a Mapping: a Mapping that is not a dict reads by key,
    an object (a pydantic model) by attribute, a model's own ``get`` never mistaken for a Mapping's."""
    from collections.abc import Mapping

    class Body(Mapping[str, Any]):
        def __init__(self, **values: Any) -> None:
            self._values = values

        def __getitem__(self, key: str) -> Any:
            return self._values[key]

        def __iter__(self) -> Iterator[str]:
            return iter(self._values)

        def __len__(self) -> int:
            return len(self._values)

    class Model(pydantic.BaseModel):
        content: str = "from the attribute"

        def get(self, name: str) -> str:  # not a Mapping: field must not call this
            return "from get"

    for _ in range(2):  # the first read of each type, then the remembered answer
        assert _calls.field({"content": "a dict"}, "content") == "a dict"
        assert _calls.field(Body(content="a mapping"), "content") == "a mapping"
        assert _calls.field(Body(), "content") is None
        assert _calls.field(Model(), "content") == "from the attribute"
        assert _calls.field(Model(), "absent") is None
        assert _calls.field(None, "content") is None


def test_a_chunk_of_another_shape_is_still_hidden_and_timed_when_the_text_is_read() -> None:
    """Chunks as dicts (another version's shape, no pydantic fields): the usage chunk asked for is hidden, the
    first content is timed once, and end() reads the kept text, each chunk once."""

    class Call:
        def __init__(self) -> None:
            self.first_tokens = 0
            self.recorded: list[tuple[Any, ...]] = []

        def first_token(self) -> None:
            self.first_tokens += 1

        def outcome(self, *args: Any, **kwargs: Any) -> None:
            self.recorded.append(args)

    call = Call()
    reader = integration._ChatStream(call, hide_usage=True)  # type: ignore[arg-type]
    reader.raw = []
    chunks = chat_chunks({"model": MODEL, "stream": True, "stream_options": {"include_usage": True}})
    shown = []
    for chunk in chunks:
        reader.raw.append(json.dumps(chunk))
        if reader.item(dict(chunk)):
            shown.append(chunk)
    assert shown == chunks[:-1]  # all but the usage chunk
    assert call.first_tokens == 1
    reader.end()
    [(model, response, tokens_in, tokens_out)] = call.recorded
    assert (model, response) == (SNAPSHOTS[MODEL], ANSWER)
    assert (tokens_in, tokens_out) == (USAGES[MODEL][0], USAGES[MODEL][2])
