"""``instrument_anthropic()`` against the real ``anthropic`` package, its HTTP faked at ``http_client=``.

The Anthropic API is a ``MockTransport`` that answers with the bodies the API
sends (a ``Message`` with text and ``tool_use`` blocks and prompt-cache usage;
server-sent events with a ``ping``, text and ``input_json`` deltas and the
closing ``message_delta``). Every behaviour is checked with the sync and the
async client; what the user gets is compared with what an uninstrumented
client gives for the same bytes.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import inspect
import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, Callable, Optional

import pytest

import agent_ledger_sdk
from agent_ledger_sdk import AgentLedgerClient, BudgetGuardrailError
from agent_ledger_sdk.integrations import _stainless as stainless
from agent_ledger_sdk.testing import Capture, capture

from .conftest import RFC3339_MS, SPAN_ID

pytest.importorskip("anthropic")

import anthropic

_base = importlib.import_module("anthropic._base_client")
# anthropic 2.x sends with httpx2 (and refuses an httpx client); the 0.x and 1.x versions send with httpx.
HTTP: Any = getattr(_base, "httpx2", None) or _base.httpx


def patchable() -> list[type]:
    """The classes of the anthropic package that instrumenting may patch: the clients, the streams' metaclasses
    (anthropic 0.x) and the .stream() helpers' streams."""
    classes: list[type] = [_base.SyncAPIClient, _base.AsyncAPIClient, _base.BaseClient]
    for module_name, names in (
        ("anthropic._streaming", ("_SyncStreamMeta", "_AsyncStreamMeta")),
        ("anthropic.lib.streaming._messages", ("MessageStream", "AsyncMessageStream")),
        ("anthropic.lib.streaming._beta_messages", ("BetaMessageStream", "BetaAsyncMessageStream")),
    ):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        classes += [getattr(module, name) for name in names if hasattr(module, name)]
    return classes


ORIGINALS = {cls: dict(vars(cls)) for cls in patchable()}


def still_patched() -> list[str]:
    """What is not as it was in those classes (by identity: a wrapper compares equal to what it wraps)."""
    changed = []
    for cls, attributes in ORIGINALS.items():
        now = vars(cls)
        changed += [
            f"{cls.__name__}.{name}" for name in set(now) | set(attributes) if now.get(name) is not attributes.get(name)
        ]
    return sorted(changed)


MODEL = "claude-haiku-4-5"  # what the user asks for; the API answers with the snapshot it ran
SNAPSHOT = "claude-haiku-4-5-20251001"
SYSTEM = "You are a terse weather assistant. Use the tools you are given."
MESSAGES = [{"role": "user", "content": "What's the weather in Paris right now?"}]
TOOLS = [
    {
        "name": "get_weather",
        "description": "The current weather at a location.",
        "input_schema": {
            "type": "object",
            "properties": {
                "location": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
        },
    }
]
# anthropic 2.x's messages.create takes no temperature (nor top_p, top_k); the versions before it do.
TEMPERATURE = 0.2 if "temperature" in inspect.signature(anthropic.resources.Messages.create).parameters else None
REQUEST: dict[str, Any] = {"model": MODEL, "max_tokens": 1024, "system": SYSTEM, "messages": MESSAGES, "tools": TOOLS}
if TEMPERATURE is not None:
    REQUEST["temperature"] = TEMPERATURE

TEXT = "I'll look up the current weather in Paris."
TOOL_ID = "toolu_01A09q90qw90lq917835lq9"
TOOL_INPUT = {"location": "Paris, France", "unit": "celsius"}
INPUT, CACHE_READ, CACHE_WRITE, OUTPUT = 412, 2048, 1536, 87
USAGE = {
    "input_tokens": INPUT,
    "cache_creation_input_tokens": CACHE_WRITE,
    "cache_read_input_tokens": CACHE_READ,
    "cache_creation": {"ephemeral_5m_input_tokens": CACHE_WRITE, "ephemeral_1h_input_tokens": 0},
    "output_tokens": OUTPUT,
    "service_tier": "standard",
}
MESSAGE = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": SNAPSHOT,
    "content": [
        {"type": "text", "text": TEXT},
        {"type": "tool_use", "id": TOOL_ID, "name": "get_weather", "input": TOOL_INPUT},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": USAGE,
}


def stream_events() -> list[tuple[str, dict[str, Any]]]:
    """The server-sent events of MESSAGE, as the API streams them."""
    start = {**MESSAGE, "content": [], "stop_reason": None, "usage": {**USAGE, "output_tokens": 1}}
    return [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        ("ping", {"type": "ping"}),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "I'll look up"}},
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": " the current weather in Paris."},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "tool_use", "id": TOOL_ID, "name": "get_weather", "input": {}},
            },
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}},
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": '{"location": "Paris, France"'},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": ', "unit": "celsius"}'},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                # As the current API sends it: the input and cache counts again, and the output so far.
                "usage": {
                    "input_tokens": INPUT,
                    "cache_creation_input_tokens": CACHE_WRITE,
                    "cache_read_input_tokens": CACHE_READ,
                    "output_tokens": OUTPUT,
                },
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


STREAMED_TOOL_INPUT = '{"location": "Paris, France", "unit": "celsius"}'
ERROR_BODIES = {
    400: {"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"}},
    500: {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}},
    529: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
}


# -- the fake API ------------------------------------------------------------------


class Body(HTTP.SyncByteStream, HTTP.AsyncByteStream):  # type: ignore[misc]
    """A response body sent in chunks, sync or async, that may fail after them (a connection lost mid-stream)."""

    def __init__(self, chunks: list[bytes], error: Optional[BaseException] = None) -> None:
        self.chunks = chunks
        self.error = error

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.error is not None:
            raise self.error

    async def __aiter__(self) -> Any:
        for chunk in self.chunks:
            yield chunk
        if self.error is not None:
            raise self.error


Reply = Callable[[Any], Any]


def message_reply() -> Reply:
    """MESSAGE as the API sends it: a body that arrives over the connection, unread until the client reads it."""
    headers = {"content-type": "application/json", "request-id": "req_011CSHoEeqs5C35K2UUqR7Fy"}
    return lambda request: HTTP.Response(200, headers=headers, stream=Body([json.dumps(MESSAGE).encode()]))


def sse_reply(
    events: Optional[list[tuple[str, dict[str, Any]]]] = None, error: Optional[BaseException] = None
) -> Reply:
    chunks = [
        f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
        for name, data in (stream_events() if events is None else events)
    ]
    headers = {"content-type": "text/event-stream; charset=utf-8", "request-id": "req_011CSHoEeqs5C35K2UUqR7Fy"}
    return lambda request: HTTP.Response(200, headers=headers, stream=Body(chunks, error))


def error_reply(status: int) -> Reply:
    # retry-after-ms: the client's back-off is 1 ms instead of half a second and more.
    headers = {"request-id": "req_011CSHoEeqs5C35K2UUqR7Fy", "retry-after-ms": "1"}
    return lambda request: HTTP.Response(status, json=ERROR_BODIES[status], headers=headers)


class FakeAPI:
    """The Anthropic API: each request answered by the next reply (the last one repeats); the requests kept."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.requests: list[Any] = []

    def __call__(self, request: Any) -> Any:
        self.requests.append(request)
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        return reply(request)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(request.content) for request in self.requests]


def dump(value: Any) -> Any:
    """What the user got, as plain data to compare."""
    if isinstance(value, list):
        return [dump(item) for item in value]
    if isinstance(value, str):
        return value
    return value.model_dump() if hasattr(value, "model_dump") else value.dict()


# -- sync and async -----------------------------------------------------------------


class Driver:
    """Makes the sync or the async anthropic client, and runs what it returns to completion."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.is_async = mode == "async"
        self.loop = asyncio.new_event_loop() if self.is_async else None

    def client(self, api: FakeAPI, **options: Any) -> Any:
        options.setdefault("max_retries", 0)
        transport = HTTP.MockTransport(api)
        if self.is_async:
            return anthropic.AsyncAnthropic(
                api_key="sk-ant-test", http_client=HTTP.AsyncClient(transport=transport), **options
            )
        return anthropic.Anthropic(api_key="sk-ant-test", http_client=HTTP.Client(transport=transport), **options)

    def run(self, value: Any) -> Any:
        if inspect.isawaitable(value):
            assert self.loop is not None
            return self.loop.run_until_complete(value)
        return value

    def collect(self, stream: Any) -> list[Any]:
        if not self.is_async:
            return list(stream)

        async def collect() -> list[Any]:
            return [item async for item in stream]

        return self.run(collect())  # type: ignore[no-any-return]

    def helper(self, resource: Any, read: str, **request: Any) -> tuple[list[Any], Any]:
        """``resource.stream(**request)`` read as the user asks: its ``events``, its ``text`` or only the final message."""
        if self.is_async:
            return self.run(self._ahelper(resource, read, request))  # type: ignore[no-any-return]
        with resource.stream(**request) as stream:
            seen = [dump(e) for e in stream] if read == "events" else list(stream.text_stream) if read == "text" else []
            return seen, dump(stream.get_final_message())

    async def _ahelper(self, resource: Any, read: str, request: dict[str, Any]) -> tuple[list[Any], Any]:
        async with resource.stream(**request) as stream:
            if read == "events":
                seen = [dump(e) async for e in stream]
            elif read == "text":
                seen = [text async for text in stream.text_stream]
            else:
                seen = []
            return seen, dump(await stream.get_final_message())

    def close(self) -> None:
        if self.loop is not None:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()


@pytest.fixture(params=["sync", "async"])
def driver(request: pytest.FixtureRequest) -> Iterator[Driver]:
    made = Driver(request.param)
    yield made
    made.close()


@pytest.fixture(autouse=True)
def _uninstrumented_after() -> Iterator[None]:
    """Every test starts and ends with the anthropic package as it was: its methods the originals."""
    assert still_patched() == []
    yield
    agent_ledger_sdk.uninstrument_anthropic()
    assert still_patched() == []


@pytest.fixture
def ledger() -> Iterator[AgentLedgerClient]:
    client = AgentLedgerClient(api_key="test", agent_name="weather-bot")
    yield client
    client.close()


def timed(event: dict[str, Any], streamed: bool) -> dict[str, Any]:
    """The event less what varies from run to run, after checking its form."""
    rest = dict(event)
    assert RFC3339_MS.match(rest.pop("startedAt"))
    assert SPAN_ID.match(rest.pop("spanId"))
    latency = rest.pop("latencyMs")
    assert isinstance(latency, int) and latency >= 0
    if streamed:
        first = rest.pop("timeToFirstTokenMs")
        assert isinstance(first, int) and 0 <= first <= latency
    return rest


def expected(streamed: bool = False, **changes: Any) -> dict[str, Any]:
    """The llm_call event of REQUEST answered by MESSAGE (or its stream)."""
    event: dict[str, Any] = {
        "type": "llm_call",
        "stepIndex": 0,
        "provider": "anthropic",
        "model": SNAPSHOT,
        "prompt": {"system": SYSTEM, "messages": MESSAGES},
        "response": TEXT,
        "tokensIn": INPUT + CACHE_READ + CACHE_WRITE,
        "tokensOut": OUTPUT,
        "cacheReadTokens": CACHE_READ,
        "cacheWriteTokens": CACHE_WRITE,
        "maxTokens": 1024,
        "temperature": TEMPERATURE,
        "toolCalls": [{"id": TOOL_ID, "name": "get_weather", "input": STREAMED_TOOL_INPUT if streamed else TOOL_INPUT}],
        "finishReason": "tool_use",
        "retries": 0,
    }
    if streamed:
        event["stream"] = True
    event.update(changes)
    return {key: value for key, value in event.items() if value is not None}


def unanswered(**changes: Any) -> dict[str, Any]:
    """The event of a call whose answer the integration did not read: sent, so its cost unknown (not $0)."""
    return expected(
        model=MODEL,  # the model asked for
        response="",
        tokensIn=0,
        tokensOut=0,
        cacheReadTokens=None,
        cacheWriteTokens=None,
        toolCalls=None,
        finishReason=None,
        usageMissing=True,
        **changes,
    )


def the_call(captured: Capture, streamed: bool) -> dict[str, Any]:
    (event,) = captured.events
    return timed(event, streamed)


def has_beta(client: Any) -> bool:
    return hasattr(getattr(client, "beta", None), "messages")


# Before anthropic 0.43 a .stream() helper read a Stream it made itself from the HTTP response, not the one the
# request returned: what it reads is not recorded (the call is recorded as incomplete when the request's is dropped).
HELPERS_READ_THE_REQUESTS_STREAM = (
    "raw_stream" in inspect.signature(importlib.import_module("anthropic.lib.streaming").MessageStream).parameters
)
needs_helpers = pytest.mark.skipif(
    not HELPERS_READ_THE_REQUESTS_STREAM,
    reason=f"anthropic {anthropic.__version__} < 0.43: messages.stream() does not read the stream its request returns",
)
HELPER_APIS = {"stream-events", "stream-text", "stream-final", "beta-stream-events"}


def read_stream(driver: Driver, client: Any, how: str) -> list[Any]:
    """A streamed call read to its end: ``create(stream=True)``'s events, or the ``.stream()`` helper's."""
    if how == "create-stream":
        return dump(driver.collect(driver.run(client.messages.create(stream=True, **REQUEST))))  # type: ignore[no-any-return]
    return driver.helper(client.messages, "events", **REQUEST)[0]


# -- what the user gets, what is recorded -------------------------------------------

# name: (the reply, streamed, what the user does and sees)
APIS: dict[str, tuple[Callable[[], Reply], bool, Callable[[Driver, Any], Any]]] = {
    "create": (message_reply, False, lambda d, c: dump(d.run(c.messages.create(**REQUEST)))),
    "create-stream": (sse_reply, True, lambda d, c: dump(d.collect(d.run(c.messages.create(stream=True, **REQUEST))))),
    "stream-events": (sse_reply, True, lambda d, c: d.helper(c.messages, "events", **REQUEST)),
    "stream-text": (sse_reply, True, lambda d, c: d.helper(c.messages, "text", **REQUEST)),
    "stream-final": (sse_reply, True, lambda d, c: d.helper(c.messages, "final", **REQUEST)),
    "beta-create": (message_reply, False, lambda d, c: dump(d.run(c.beta.messages.create(**REQUEST)))),
    "beta-create-stream": (
        sse_reply,
        True,
        lambda d, c: dump(d.collect(d.run(c.beta.messages.create(stream=True, **REQUEST)))),
    ),
    "beta-stream-events": (sse_reply, True, lambda d, c: d.helper(c.beta.messages, "events", **REQUEST)),
}


@pytest.mark.parametrize("read", ["events", "items"])
@pytest.mark.parametrize("api_name", list(APIS))
def test_a_call_is_recorded_exactly_and_the_user_gets_what_they_would_have(
    driver: Driver, ledger: AgentLedgerClient, api_name: str, read: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``read``: a stream's events read from their text, as the client's decoder hands it over (``events``),
    or from the event objects the client made, for a stream whose decoder could not be wrapped (``items``)."""
    if read == "items":
        monkeypatch.setattr(stainless, "_read_events", lambda stream, reader: None)
    reply, streamed, use = APIS[api_name]
    plain_api = FakeAPI(reply())
    plain = driver.client(plain_api)
    if api_name.startswith("beta") and not has_beta(plain):
        pytest.skip(f"anthropic {anthropic.__version__} has no client.beta.messages")
    if api_name in HELPER_APIS and not HELPERS_READ_THE_REQUESTS_STREAM:
        pytest.skip(
            f"anthropic {anthropic.__version__} < 0.43: messages.stream() does not read the stream its request returns"
        )
    with capture() as captured:
        wanted = use(driver, plain)  # uninstrumented
    assert captured.events == []

    ledger.instrument_anthropic()
    api = FakeAPI(reply())
    client = driver.client(api)
    with capture() as captured, ledger.session("weather"):
        got = use(driver, client)

    assert got == wanted
    assert api.bodies() == plain_api.bodies()  # the request went out as it was
    assert the_call(captured, streamed) == expected(streamed)
    assert captured.session("weather").events == captured.events


def test_a_call_without_system_records_the_messages_as_its_prompt(driver: Driver, ledger: AgentLedgerClient) -> None:
    ledger.instrument_anthropic()
    client = driver.client(FakeAPI(message_reply()))
    with capture() as captured, ledger.session("weather"):
        driver.run(client.messages.create(model=MODEL, max_tokens=256, messages=MESSAGES))
    assert the_call(captured, False) == expected(prompt=MESSAGES, maxTokens=256, temperature=None)


def test_a_raw_response_is_recorded_exactly_and_left_to_the_user(driver: Driver, ledger: AgentLedgerClient) -> None:
    ledger.instrument_anthropic()
    client = driver.client(FakeAPI(message_reply()))
    with capture() as captured, ledger.session("weather"):
        raw = driver.run(client.messages.with_raw_response.create(**REQUEST))
        assert raw.headers["request-id"] == "req_011CSHoEeqs5C35K2UUqR7Fy"
        assert dump(driver.run(raw.parse())) == dump(anthropic.types.Message(**MESSAGE))
    assert the_call(captured, False) == expected()


def test_a_streaming_response_is_the_users_to_read_and_its_usage_missing(
    driver: Driver, ledger: AgentLedgerClient
) -> None:
    ledger.instrument_anthropic()
    client = driver.client(FakeAPI(message_reply()))

    async def aread() -> Any:
        async with client.messages.with_streaming_response.create(**REQUEST) as response:
            return await response.parse()

    with capture() as captured, ledger.session("weather"):
        if driver.is_async:
            message = driver.run(aread())
        else:
            with client.messages.with_streaming_response.create(**REQUEST) as response:
                message = response.parse()
    assert message.model == SNAPSHOT  # the body was left unread for the user
    assert the_call(captured, False) == unanswered()


def test_counting_tokens_is_not_an_llm_call(driver: Driver, ledger: AgentLedgerClient) -> None:
    ledger.instrument_anthropic()
    api = FakeAPI(lambda request: HTTP.Response(200, json={"input_tokens": 2095}))
    client = driver.client(api)
    messages = client.messages if hasattr(client.messages, "count_tokens") else client.beta.messages
    if not hasattr(messages, "count_tokens"):
        pytest.skip(f"anthropic {anthropic.__version__} has no messages.count_tokens")
    with capture() as captured, ledger.session("weather"):
        counted = driver.run(messages.count_tokens(model=MODEL, system=SYSTEM, messages=MESSAGES))
    assert counted.input_tokens == 2095
    assert api.requests[0].url.path == "/v1/messages/count_tokens"
    assert captured.events == []


def test_step_indexes_follow_the_calls_in_order(driver: Driver, ledger: AgentLedgerClient) -> None:
    ledger.instrument_anthropic()
    client = driver.client(FakeAPI(message_reply(), sse_reply(), message_reply()))
    with capture() as captured, ledger.session("weather") as session:
        driver.run(client.messages.create(**REQUEST))
        session.log("between")
        driver.collect(driver.run(client.messages.create(stream=True, **REQUEST)))
        driver.run(client.messages.create(**REQUEST))
    assert [(e["type"], e["stepIndex"]) for e in captured.events] == [
        ("llm_call", 0),
        ("between", 1),
        ("llm_call", 2),
        ("llm_call", 3),
    ]


def test_a_stream_whose_closing_delta_counts_only_the_output_is_recorded_the_same(
    driver: Driver, ledger: AgentLedgerClient
) -> None:
    events = stream_events()
    name, closing = events[-2]
    assert name == "message_delta"
    events[-2] = (
        name,
        {**closing, "usage": {"output_tokens": OUTPUT}},
    )  # message_delta as the API sent it before it repeated the input counts
    ledger.instrument_anthropic()
    client = driver.client(FakeAPI(sse_reply(events)))
    with capture() as captured, ledger.session("weather"):
        driver.collect(driver.run(client.messages.create(stream=True, **REQUEST)))
    assert the_call(captured, True) == expected(True)


# -- streams abandoned or failing ---------------------------------------------------


def test_a_recorded_stream_is_still_an_anthropic_stream(driver: Driver, ledger: AgentLedgerClient) -> None:
    ledger.instrument_anthropic()
    client = driver.client(FakeAPI(sse_reply()))
    mine, other = (
        (anthropic.AsyncStream, anthropic.Stream) if driver.is_async else (anthropic.Stream, anthropic.AsyncStream)
    )
    with capture() as captured, ledger.session("weather"):
        stream = driver.run(client.messages.create(stream=True, **REQUEST))
        assert isinstance(stream, mine) and not isinstance(stream, other)
        assert stream.__class__ is mine
        assert stream.response.headers["request-id"] == "req_011CSHoEeqs5C35K2UUqR7Fy"
        driver.collect(stream)
    assert not isinstance(object(), mine)  # the check of anything else unchanged
    assert the_call(captured, True) == expected(True)


def partial(**changes: Any) -> dict[str, Any]:
    """The event of a stream that ended after its first text delta: what arrived by then."""
    return expected(
        True,
        response="I'll look up",
        tokensOut=1,
        toolCalls=None,
        finishReason=None,
        **changes,
    )


@pytest.mark.parametrize("how", ["break-then-drop", "close", "drop"])
def test_an_abandoned_stream_is_recorded_once_as_incomplete_with_what_arrived(
    driver: Driver, ledger: AgentLedgerClient, how: str
) -> None:
    ledger.instrument_anthropic()
    client = driver.client(FakeAPI(sse_reply()))
    with capture() as captured, ledger.session("weather"):
        stream = driver.run(client.messages.create(stream=True, **REQUEST))
        assert isinstance(stream, anthropic.AsyncStream if driver.is_async else anthropic.Stream)
        seen: list[Any] = []
        if how == "break-then-drop":

            async def abreak(source: Any) -> None:
                async for event in source:
                    seen.append(event)
                    if event.type == "content_block_delta":
                        break

            if driver.is_async:
                driver.run(abreak(stream))
            else:
                for event in stream:
                    seen.append(event)
                    if event.type == "content_block_delta":
                        break
            assert captured.events == []  # the user may read on
        elif how == "close":
            iterator = stream.__aiter__() if driver.is_async else iter(stream)
            for _ in range(3):
                seen.append(driver.run(iterator.__anext__()) if driver.is_async else next(iterator))
            driver.run(stream.close())
            del iterator
        else:
            iterator = stream.__aiter__() if driver.is_async else iter(stream)
            for _ in range(3):
                seen.append(driver.run(iterator.__anext__()) if driver.is_async else next(iterator))
            del iterator
        del stream
        gc.collect()
        if driver.is_async:
            driver.run(asyncio.sleep(0))  # the loop finalizes the dropped async generator
        assert [e.type for e in seen] == ["message_start", "content_block_start", "content_block_delta"]
    assert the_call(captured, True) == partial(incomplete=True)


def test_a_stream_dropped_unread_is_recorded_once_as_incomplete_with_its_usage_missing(
    driver: Driver, ledger: AgentLedgerClient
) -> None:
    ledger.instrument_anthropic()
    client = driver.client(FakeAPI(sse_reply()))
    with capture() as captured, ledger.session("weather"):
        stream = driver.run(client.messages.create(stream=True, **REQUEST))
        del stream
        gc.collect()
    assert the_call(captured, False) == unanswered(stream=True, incomplete=True)


@needs_helpers
def test_a_stream_helper_exited_early_is_recorded_once_as_incomplete(driver: Driver, ledger: AgentLedgerClient) -> None:
    ledger.instrument_anthropic()
    client = driver.client(FakeAPI(sse_reply()))

    async def aread() -> list[str]:
        async with client.messages.stream(**REQUEST) as stream:
            async for text in stream.text_stream:
                return [text]
        return []

    with capture() as captured, ledger.session("weather"):
        if driver.is_async:
            texts = driver.run(aread())
        else:
            with client.messages.stream(**REQUEST) as stream:
                texts = [next(iter(stream.text_stream))]
        gc.collect()
    assert texts == ["I'll look up"]
    assert the_call(captured, True) == partial(incomplete=True)


def test_a_stream_read_to_the_end_then_closed_is_recorded_once_and_complete(
    driver: Driver, ledger: AgentLedgerClient
) -> None:
    ledger.instrument_anthropic()
    client = driver.client(FakeAPI(sse_reply()))
    with capture() as captured, ledger.session("weather"):
        stream = driver.run(client.messages.create(stream=True, **REQUEST))
        driver.collect(stream)
        driver.run(stream.close())
        del stream
        gc.collect()
    assert the_call(captured, True) == expected(True)


STREAMS = ["create-stream", pytest.param("stream-helper", marks=needs_helpers)]


@pytest.mark.parametrize("how", STREAMS)
def test_a_stream_failing_midway_is_recorded_with_its_error_and_the_error_reraised(
    driver: Driver, ledger: AgentLedgerClient, how: str
) -> None:
    lost = HTTP.RemoteProtocolError("peer closed connection without sending complete message body")
    events = stream_events()[:4]  # the message's start, a text block, a ping, one delta: then the connection drops
    ledger.instrument_anthropic()
    client = driver.client(FakeAPI(sse_reply(events, error=lost)))
    with capture() as captured, ledger.session("weather"):
        with pytest.raises(type(lost)) as raised:
            read_stream(driver, client, how)
    assert raised.value is lost
    assert the_call(captured, True) == partial(error=f"RemoteProtocolError: {lost}")


@pytest.mark.parametrize("how", STREAMS)
def test_an_error_event_midway_is_recorded_and_the_sdks_exception_reraised(
    driver: Driver, ledger: AgentLedgerClient, how: str
) -> None:
    events = [
        *stream_events()[:4],
        ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    ]
    with capture():
        with pytest.raises(anthropic.APIError) as uninstrumented:
            read_stream(driver, driver.client(FakeAPI(sse_reply(events))), how)
    ledger.instrument_anthropic()
    client = driver.client(FakeAPI(sse_reply(events)))
    with capture() as captured, ledger.session("weather"):
        with pytest.raises(anthropic.APIError) as raised:
            read_stream(driver, client, how)
    assert type(raised.value) is type(uninstrumented.value)
    assert str(raised.value) == str(uninstrumented.value)
    assert the_call(captured, True) == partial(error=f"{type(raised.value).__name__}: {raised.value}")


# -- provider errors ------------------------------------------------------------------


def failed(error: BaseException, retries: int = 0) -> dict[str, Any]:
    """A call the provider refused or never answered: nothing owed, nothing answered, the error said."""
    return {
        "type": "llm_call",
        "stepIndex": 0,
        "provider": "anthropic",
        "model": MODEL,
        "prompt": {"system": SYSTEM, "messages": MESSAGES},
        "response": "",
        "tokensIn": 0,
        "tokensOut": 0,
        "maxTokens": 1024,
        "retries": retries,
        "error": f"{type(error).__name__}: {error}",
        **({"temperature": TEMPERATURE} if TEMPERATURE is not None else {}),
    }


STATUS_ERRORS = {400: "BadRequestError", 500: "InternalServerError", 529: "OverloadedError"}


@pytest.mark.parametrize(("status", "max_retries", "attempts"), [(400, 2, 1), (500, 2, 3), (529, 2, 3)])
@pytest.mark.parametrize("streamed", [False, True], ids=["create", "stream"])
def test_a_provider_error_is_one_failed_call_and_the_sdks_exception_reraised(
    driver: Driver, ledger: AgentLedgerClient, status: int, max_retries: int, attempts: int, streamed: bool
) -> None:
    def call(client: Any) -> Any:
        if streamed:
            return driver.helper(client.messages, "events", **REQUEST)
        return driver.run(client.messages.create(**REQUEST))

    plain_api = FakeAPI(error_reply(status))
    with pytest.raises(anthropic.APIStatusError) as uninstrumented:
        call(driver.client(plain_api, max_retries=max_retries))
    ledger.instrument_anthropic()
    api = FakeAPI(error_reply(status))
    with capture() as captured, ledger.session("weather"):
        with pytest.raises(anthropic.APIStatusError) as raised:
            call(driver.client(api, max_retries=max_retries))

    error = raised.value
    expected_type = getattr(anthropic, STATUS_ERRORS[status], anthropic.InternalServerError)  # 529: its own since 0.4x
    assert type(error) is expected_type is type(uninstrumented.value)
    assert error.status_code == status and str(error) == str(uninstrumented.value)
    assert len(api.requests) == len(plain_api.requests) == attempts
    (event,) = captured.events
    rest = timed(event, streamed=False)
    assert rest == {**failed(error, retries=attempts - 1), **({"stream": True} if streamed else {})}
    assert "usageMissing" not in rest


def test_a_retried_call_that_succeeds_counts_its_retries(driver: Driver, ledger: AgentLedgerClient) -> None:
    ledger.instrument_anthropic()
    api = FakeAPI(error_reply(529), error_reply(500), message_reply())
    with capture() as captured, ledger.session("weather"):
        driver.run(driver.client(api, max_retries=2).messages.create(**REQUEST))
    assert len(api.requests) == 3
    assert the_call(captured, False) == expected(retries=2)


def test_a_timeout_is_one_failed_call_and_the_sdks_timeout_reraised(driver: Driver, ledger: AgentLedgerClient) -> None:
    def timeout(request: Any) -> Any:
        raise HTTP.ReadTimeout("timed out", request=request)

    ledger.instrument_anthropic()
    api = FakeAPI(timeout)
    with capture() as captured, ledger.session("weather"):
        with pytest.raises(anthropic.APITimeoutError) as raised:
            driver.run(driver.client(api, max_retries=1).messages.create(**REQUEST))
    assert type(raised.value) is anthropic.APITimeoutError
    assert len(api.requests) == 2
    rest = timed(captured.events[0], streamed=False)
    assert len(captured.events) == 1
    assert rest == failed(raised.value, retries=1)
    assert "usageMissing" not in rest


# -- budgets, spans, sessions ----------------------------------------------------------


@pytest.mark.integration
def test_a_reservation_over_budget_raises_before_anything_is_sent(driver: Driver, local_ledger: Any) -> None:
    local_ledger.set_budget("capped", 0.001)  # 1024 output tokens of claude-haiku-4-5 may cost $0.00512
    api = FakeAPI(message_reply())
    client = driver.client(api)
    if driver.is_async:
        ledger = local_ledger.async_client()
        ledger.instrument_anthropic()

        async def run() -> None:
            async with ledger.session("capped"):
                with pytest.raises(BudgetGuardrailError):
                    await client.messages.create(**REQUEST)
                with pytest.raises(BudgetGuardrailError):
                    await client.messages.create(stream=True, **REQUEST)
                with pytest.raises(BudgetGuardrailError):
                    async with client.messages.stream(**REQUEST) as stream:
                        await stream.get_final_message()
            await ledger.aclose()

        driver.run(run())
    else:
        ledger = local_ledger.client()
        ledger.instrument_anthropic()
        with ledger.session("capped"):
            with pytest.raises(BudgetGuardrailError):
                client.messages.create(**REQUEST)
            with pytest.raises(BudgetGuardrailError):
                client.messages.create(stream=True, **REQUEST)
            with pytest.raises(BudgetGuardrailError):
                with client.messages.stream(**REQUEST) as stream:
                    stream.get_final_message()
        ledger.close()
    assert api.requests == []  # nothing was sent, nothing spent
    assert local_ledger.flush() == 0
    (session,) = local_ledger.sessions("capped")
    assert [e["type"] for e in local_ledger.session(session["id"])["events"]] == []


@pytest.mark.integration
def test_a_call_within_budget_reserves_then_is_priced_exactly(driver: Driver, local_ledger: Any) -> None:
    from genai_prices import Usage, calc_price

    local_ledger.set_budget("priced", 5)
    api = FakeAPI(message_reply(), sse_reply())
    client = driver.client(api)
    if driver.is_async:
        ledger = local_ledger.async_client()
        ledger.instrument_anthropic()

        async def run() -> None:
            async with ledger.session("priced"):
                await client.messages.create(**REQUEST)
                async for _ in await client.messages.create(stream=True, **REQUEST):
                    pass
            await ledger.aclose()

        driver.run(run())
    else:
        ledger = local_ledger.client()
        ledger.instrument_anthropic()
        with ledger.session("priced"):
            client.messages.create(**REQUEST)
            for _ in client.messages.create(stream=True, **REQUEST):
                pass
        ledger.close()
    assert local_ledger.flush() == 0
    (session,) = local_ledger.sessions("priced")
    events = local_ledger.session(session["id"])["events"]
    assert [e["type"] for e in events] == ["llm_call", "llm_call"]
    price = calc_price(
        Usage(
            input_tokens=INPUT + CACHE_READ + CACHE_WRITE,
            cache_read_tokens=CACHE_READ,
            cache_write_tokens=CACHE_WRITE,
            output_tokens=OUTPUT,
        ),
        model_ref=SNAPSHOT,
        provider_id="anthropic",
    ).total_price
    for event in events:
        assert event["model"] == SNAPSHOT
        assert (event["tokensIn"], event["tokensOut"]) == (INPUT + CACHE_READ + CACHE_WRITE, OUTPUT)
        assert (event["cacheReadTokens"], event["cacheWriteTokens"]) == (CACHE_READ, CACHE_WRITE)
        assert event["costStatus"] == "priced"
        assert Decimal(str(event["costUsd"])) == price
        assert event["reservationId"]


def test_a_call_inside_a_tool_nests_under_it(driver: Driver, ledger: AgentLedgerClient) -> None:
    ledger.instrument_anthropic()
    client = driver.client(FakeAPI(message_reply()))

    if driver.is_async:

        @ledger.tool
        async def forecast(city: str) -> str:
            message = await client.messages.create(**REQUEST)
            return str(message.content[0].text)

    else:

        @ledger.tool
        def forecast(city: str) -> str:
            return str(client.messages.create(**REQUEST).content[0].text)

    with capture() as captured, ledger.session("weather"):
        assert driver.run(forecast("Paris")) == TEXT
    tool_call, llm_call, tool_result = captured.events
    assert (tool_call["type"], llm_call["type"], tool_result["type"]) == ("tool_call", "llm_call", "tool_result")
    assert llm_call["parentSpanId"] == tool_call["spanId"]
    assert (tool_call["stepIndex"], llm_call["stepIndex"], tool_result["stepIndex"]) == (0, 1, 0)  # a tool: one step


def test_a_call_outside_any_session_goes_to_the_implicit_session(driver: Driver) -> None:
    ledger = AgentLedgerClient(api_key="test", agent_name="weather-bot")
    ledger.instrument_anthropic()
    client = driver.client(FakeAPI(message_reply(), sse_reply()))
    with capture() as captured:
        driver.run(client.messages.create(**REQUEST))
        driver.collect(driver.run(client.messages.create(stream=True, **REQUEST)))
        (session,) = captured.sessions
        assert session.agent_name == "weather-bot"
        assert not session.ended
        assert [timed(e, "stream" in e)["stepIndex"] for e in session.events] == [0, 1]
        ledger.close()
        assert session.status == "success"
    assert timed(session.events[0], False) == expected()


def test_the_module_level_instrument_anthropic_records_in_the_default_clients_implicit_session(
    driver: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_LEDGER_AGENT_NAME", "module-agent")
    agent_ledger_sdk.instrument_anthropic()
    client = driver.client(FakeAPI(message_reply()))
    with capture() as captured:
        driver.run(client.messages.create(**REQUEST))
    (session,) = captured.sessions
    assert session.agent_name == "module-agent"
    assert timed(session.events[0], False) == expected()
    agent_ledger_sdk.uninstrument_anthropic()
    assert still_patched() == []


# -- what is instrumented ------------------------------------------------------------------


def recorded_by(driver: Driver, ledger: AgentLedgerClient, *clients: Any) -> list[bool]:
    """For each client, whether one call of it is recorded."""
    out = []
    for client in clients:
        with capture() as captured, ledger.session("scope"):
            driver.run(client.messages.create(**REQUEST))
        assert len(captured.events) <= 1
        out.append(len(captured.events) == 1)
    return out


def test_no_argument_covers_every_client_made_before_and_after(driver: Driver, ledger: AgentLedgerClient) -> None:
    before = driver.client(FakeAPI(message_reply()))
    ledger.instrument_anthropic()
    after = driver.client(FakeAPI(message_reply()))
    other_mode = Driver("sync" if driver.is_async else "async")
    try:
        other = other_mode.client(FakeAPI(message_reply()))
        assert recorded_by(driver, ledger, before, after, before.with_options(max_retries=3)) == [True, True, True]
        assert recorded_by(other_mode, ledger, other) == [True]
    finally:
        other_mode.close()


def test_one_client_only_covers_it_and_its_with_options_copies(driver: Driver, ledger: AgentLedgerClient) -> None:
    mine = driver.client(FakeAPI(message_reply()))
    theirs = driver.client(FakeAPI(message_reply()))
    ledger.instrument_anthropic(mine)
    assert recorded_by(driver, ledger, mine, mine.with_options(timeout=30), theirs) == [True, True, False]
    ledger.uninstrument_anthropic(mine)
    assert recorded_by(driver, ledger, mine, theirs) == [False, False]
    assert still_patched() == []  # nothing instrumented any more: the originals are back


def test_every_client_but_one_uninstrumented_alone(driver: Driver, ledger: AgentLedgerClient) -> None:
    mine = driver.client(FakeAPI(message_reply()))
    theirs = driver.client(FakeAPI(message_reply()))
    ledger.instrument_anthropic()
    ledger.uninstrument_anthropic(theirs)
    assert recorded_by(driver, ledger, mine, theirs) == [True, False]


def test_instrumenting_twice_records_each_call_once(driver: Driver, ledger: AgentLedgerClient) -> None:
    client = driver.client(FakeAPI(message_reply()))
    ledger.instrument_anthropic()
    assert still_patched() != []
    patched = {cls: dict(vars(cls)) for cls in ORIGINALS}
    ledger.instrument_anthropic()
    ledger.instrument_anthropic(client)
    for cls, attributes in patched.items():  # nothing wrapped twice
        assert all(vars(cls).get(name) is value for name, value in attributes.items())
    assert vars(_base.SyncAPIClient)["request"].__wrapped__ is ORIGINALS[_base.SyncAPIClient]["request"]
    assert recorded_by(driver, ledger, client) == [True]
    ledger.uninstrument_anthropic()
    assert still_patched() == []
    assert recorded_by(driver, ledger, client) == [False]
    ledger.uninstrument_anthropic()  # twice is fine too


def an_openai_client() -> Any:
    openai = pytest.importorskip("openai", reason="an OpenAI client for the wrong argument")
    return openai.OpenAI(api_key="sk-test")


WRONG = {
    "object": object,
    "str": lambda: "client",
    "the-class": lambda: anthropic.Anthropic,
    "its-messages": lambda: anthropic.Anthropic(api_key="sk-ant-test").messages,
    "an-openai-client": an_openai_client,
}


@pytest.mark.parametrize("wrong", list(WRONG))
def test_a_wrong_argument_is_a_type_error_and_instruments_nothing(ledger: AgentLedgerClient, wrong: str) -> None:
    argument = WRONG[wrong]()
    says = r"instrument_anthropic\(client\) takes an? anthropic client .*call it with no argument to instrument every client"
    with pytest.raises(TypeError, match=says):
        ledger.instrument_anthropic(argument)
    with pytest.raises(TypeError, match=says):
        agent_ledger_sdk.instrument_anthropic(argument)
    assert still_patched() == []
