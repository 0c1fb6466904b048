"""@ledger.tool: tool_call before, tool_result after, with the same stepIndex."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from agent_ledger_sdk import AgentLedgerClient
from agent_ledger_sdk.testing import Capture

from .conftest import without_span

ledger = AgentLedgerClient(api_key="sk-test", base_url="http://127.0.0.1:9")


@ledger.tool
def search_docs(query: str, limit: int = 3, *, exact: bool = False) -> list[str]:
    return [f"{query}-{i}" for i in range(limit)]


def test_a_tool_emits_call_then_result_with_one_step(ledger_capture: Capture) -> None:
    with ledger.session("bot"):
        assert search_docs("refund", 2) == ["refund-0", "refund-1"]
    call, result = ledger_capture.events
    assert result["spanId"] == call["spanId"]  # one span: the call and its result
    assert result["startedAt"] == call["startedAt"]
    assert without_span(call) == {
        "type": "tool_call",
        "stepIndex": 0,
        "toolName": "search_docs",
        "toolInput": {"query": "refund", "limit": 2, "exact": False},
    }
    assert result["type"] == "tool_result"
    assert result["stepIndex"] == 0
    assert result["toolName"] == "search_docs"
    assert result["toolOutput"] == ["refund-0", "refund-1"]
    assert isinstance(result["latencyMs"], int)


def test_tool_input_applies_defaults_and_keyword_arguments(ledger_capture: Capture) -> None:
    with ledger.session("bot"):
        search_docs(query="q", exact=True)
    assert ledger_capture.events[0]["toolInput"] == {"query": "q", "limit": 3, "exact": True}


def test_latency_covers_the_tool_call(ledger_capture: Capture) -> None:
    @ledger.tool
    def slow() -> None:
        time.sleep(0.03)

    with ledger.session("bot"):
        slow()
    assert ledger_capture.events[1]["latencyMs"] >= 30


def test_a_failing_tool_records_the_error_and_raises_it_unchanged(ledger_capture: Capture) -> None:
    error = ConnectionResetError("upstream went away")

    @ledger.tool
    def fetch(url: str) -> str:
        raise error

    with pytest.raises(ConnectionResetError) as raised, ledger.session("bot"):
        fetch("https://x")
    assert raised.value is error
    result = ledger_capture.events[1]
    assert result["toolOutput"] == {"error": "upstream went away", "errorType": "ConnectionResetError"}
    assert result["stepIndex"] == 0
    assert isinstance(result["latencyMs"], int)


def test_a_tool_outside_a_session_runs_untouched_and_logs_one_debug_line(
    ledger_capture: Capture, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent_ledger_sdk")
    assert search_docs("x", 1) == ["x-0"]
    assert ledger_capture.events == []
    lines = [r.getMessage() for r in caplog.records if r.name == "agent_ledger_sdk"]
    assert lines == ["agent-ledger: tool 'search_docs' ran outside any session; nothing recorded"]


def test_named_tools_and_capture_switches(ledger_capture: Capture) -> None:
    @ledger.tool("web_search")
    def search(q: str) -> str:
        return "secret result"

    @ledger.tool(name="vault", capture_input=False, capture_output=False)
    def read_secret(key: str) -> str:
        return "hunter2"

    with ledger.session("bot"):
        search("a")
        read_secret("db-password")
    assert [e["toolName"] for e in ledger_capture.events] == ["web_search"] * 2 + ["vault"] * 2
    assert ledger_capture.events[2]["toolInput"] == "[not captured]"
    assert ledger_capture.events[3]["toolOutput"] == "[not captured]"
    assert "hunter2" not in repr(ledger_capture.events)


def test_self_and_cls_are_left_out_of_tool_input(ledger_capture: Capture) -> None:
    class Tools:
        @ledger.tool
        def lookup(self, key: str) -> str:
            return key

        @classmethod
        @ledger.tool
        def build(cls, size: int) -> int:
            return size

        @staticmethod
        @ledger.tool
        def pure(x: int) -> int:
            return x

    with ledger.session("bot"):
        Tools().lookup("k")
        Tools.build(3)
        Tools.pure(4)
    inputs = [e["toolInput"] for e in ledger_capture.events_of("tool_call")]
    assert inputs == [{"key": "k"}, {"size": 3}, {"x": 4}]


def test_unserialisable_inputs_and_outputs_never_break_the_tool(ledger_capture: Capture) -> None:
    class Weird:
        def __repr__(self) -> str:
            raise RuntimeError("nope")

    @ledger.tool
    def odd(thing: Any) -> Any:
        return {"thing": thing, "set": {1}}

    with ledger.session("bot"):
        out = odd(Weird())
    assert isinstance(out["thing"], Weird)
    assert ledger_capture.events[0]["toolInput"] == {"thing": "<unrepresentable Weird>"}
    assert ledger_capture.events[1]["toolOutput"] == {"thing": "<unrepresentable Weird>", "set": [1]}


def test_an_async_tool(ledger_capture: Capture) -> None:
    @ledger.tool
    async def fetch(url: str) -> str:
        await asyncio.sleep(0.01)
        return url.upper()

    async def main() -> str:
        async with ledger.session("bot"):
            return await fetch("abc")

    assert asyncio.run(main()) == "ABC"
    call, result = ledger_capture.events
    assert call["toolInput"] == {"url": "abc"}
    assert result["toolOutput"] == "ABC"
    assert result["latencyMs"] >= 10


def test_an_async_tool_that_raises(ledger_capture: Capture) -> None:
    @ledger.tool
    async def fetch() -> None:
        raise PermissionError("denied")

    async def main() -> None:
        async with ledger.session("bot"):
            await fetch()

    with pytest.raises(PermissionError, match="denied"):
        asyncio.run(main())
    assert ledger_capture.events[1]["toolOutput"] == {"error": "denied", "errorType": "PermissionError"}


def test_a_generator_tool_outputs_its_first_items_and_count(ledger_capture: Capture) -> None:
    @ledger.tool
    def rows(n: int) -> Iterator[int]:
        yield from range(n)

    with ledger.session("bot"):
        assert sum(rows(50)) == sum(range(50))
        step_after = ledger.current_session().next_step()  # type: ignore[union-attr]
    call, result = ledger_capture.events
    assert call["stepIndex"] == result["stepIndex"] == 0
    assert result["toolOutput"] == {"items": list(range(20)), "count": 50}
    assert step_after == 1


def test_a_generator_tool_closed_early_and_one_that_raises(ledger_capture: Capture) -> None:
    @ledger.tool
    def rows() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("row 3 is corrupt")

    with ledger.session("bot"):
        gen = rows()
        next(gen)
        gen.close()
        with pytest.raises(ValueError, match="corrupt"):
            list(rows())
    results = ledger_capture.events_of("tool_result")
    assert results[0]["toolOutput"] == {"items": [1], "count": 1}
    assert results[1]["toolOutput"] == {"error": "row 3 is corrupt", "errorType": "ValueError"}


def test_an_async_generator_tool(ledger_capture: Capture) -> None:
    @ledger.tool("stream")
    async def tokens(text: str) -> AsyncIterator[str]:
        for word in text.split():
            await asyncio.sleep(0)
            yield word

    async def main() -> list[str]:
        async with ledger.session("bot"):
            return [t async for t in tokens("a b c")]

    assert asyncio.run(main()) == ["a", "b", "c"]
    assert ledger_capture.events[1]["toolOutput"] == {"items": ["a", "b", "c"], "count": 3}


def test_a_tool_name_must_be_a_non_empty_string() -> None:
    with pytest.raises(ValueError, match="tool name"):
        ledger.tool(name="")
    with pytest.raises(TypeError, match="not both"):
        ledger.tool("a", name="b")


def test_the_binder_fast_paths_give_what_signature_bind_gives() -> None:
    import inspect

    from agent_ledger_sdk._instrument_tool import _input_binder

    def plain(query: Any, limit: Any = 3, *, mode: Any = "a", extra: Any = None) -> None: ...

    def method(self: Any, x: Any, y: Any = (1, 2)) -> None: ...

    def bare() -> None: ...

    calls: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = [
        (plain, ("q",), {}),
        (plain, ("q", 5), {}),
        (plain, ("q",), {"mode": "b"}),
        (plain, (), {"query": "q", "extra": [1]}),
        (method, (object(), 1), {}),
        (method, (object(), 1, 2), {}),
        (method, (object(),), {"y": 3, "x": 0}),
        (bare, (), {}),
    ]
    for func, args, kwargs in calls:
        bound = inspect.signature(func).bind(*args, **kwargs)
        bound.apply_defaults()
        expected = dict(bound.arguments)
        expected.pop("self", None)
        got = _input_binder(func)(args, kwargs)
        assert got == expected, (func.__name__, args, kwargs)
        if not kwargs:  # positional calls: the parameters' order (keywords come in the order they were passed)
            assert list(got) == list(expected), (func.__name__, args)
