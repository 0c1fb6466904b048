"""@ledger.session on every kind of function, and as a with-block (sync and async)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from agent_ledger_sdk import AgentLedgerClient, SessionHandle
from agent_ledger_sdk.testing import Capture

from .conftest import without_span

ledger = AgentLedgerClient(api_key="sk-test", base_url="http://127.0.0.1:9")


@ledger.tool
def step(label: str) -> str:
    return label


def test_the_bare_decorator_names_the_session_after_the_function(ledger_capture: Capture) -> None:
    @ledger.session
    def triage(ticket: str) -> str:
        return ticket.upper()

    assert triage("x") == "X"
    (session,) = ledger_capture.sessions
    assert session.agent_name == "triage"
    assert session.status == "success"
    assert session.error_message is None


@pytest.mark.parametrize("decorate", [ledger.session("support-bot"), ledger.session(agent_name="support-bot")])
def test_the_agent_name_can_be_given_positionally_or_by_keyword(ledger_capture: Capture, decorate: Any) -> None:
    @decorate
    def run() -> int:
        return 1

    run()
    assert ledger_capture.sessions[0].agent_name == "support-bot"


def test_an_exception_ends_the_session_with_its_type_and_message_and_is_reraised(ledger_capture: Capture) -> None:
    error = LookupError("no such customer")

    @ledger.session("bot")
    def run() -> None:
        raise error

    with pytest.raises(LookupError) as raised:
        run()
    assert raised.value is error
    session = ledger_capture.sessions[0]
    assert session.status == "error"
    assert session.error_message == "LookupError: no such customer"


@pytest.mark.parametrize(("code", "status"), [(0, "success"), (None, "success"), (2, "error")])
def test_sys_exit_ends_the_session_by_its_code(ledger_capture: Capture, code: object, status: str) -> None:
    @ledger.session("cli-tool")
    def main() -> None:
        raise SystemExit(code)

    with pytest.raises(SystemExit):
        main()
    assert ledger_capture.sessions[0].status == status


def test_a_coroutine_session(ledger_capture: Capture) -> None:
    @ledger.session("async-bot")
    async def run(x: int) -> int:
        step("inside")
        await asyncio.sleep(0)
        return x * 2

    assert asyncio.run(run(21)) == 42
    session = ledger_capture.sessions[0]
    assert session.status == "success"
    assert [e["toolName"] for e in session.events] == ["step", "step"]


def test_a_coroutine_session_that_raises(ledger_capture: Capture) -> None:
    @ledger.session("async-bot")
    async def run() -> None:
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        asyncio.run(run())
    assert ledger_capture.sessions[0].error_message == "ValueError: bad"


def test_a_generator_session_spans_the_whole_iteration(ledger_capture: Capture) -> None:
    @ledger.session("streamer")
    def stream(n: int) -> Iterator[str]:
        for i in range(n):
            yield step(f"chunk-{i}")

    gen = stream(3)
    assert ledger_capture.sessions == []  # nothing starts before the first next()
    assert next(gen) == "chunk-0"
    session = ledger_capture.sessions[0]
    assert session.status is None
    assert list(gen) == ["chunk-1", "chunk-2"]
    assert session.status == "success"
    assert [e["stepIndex"] for e in session.events] == [0, 0, 1, 1, 2, 2]


def test_a_generator_session_does_not_leak_into_the_caller_between_yields(ledger_capture: Capture) -> None:
    @ledger.session("streamer")
    def stream() -> Iterator[Any]:
        yield ledger.current_session()
        yield ledger.current_session()

    gen = stream()
    inside = next(gen)
    assert isinstance(inside, SessionHandle)
    assert ledger.current_session() is None
    assert next(gen) is inside


def test_a_generator_session_closed_early_ends_with_success(ledger_capture: Capture) -> None:
    cleaned: list[bool] = []

    @ledger.session("streamer")
    def stream() -> Iterator[int]:
        try:
            yield 1
            yield 2
        finally:
            cleaned.append(ledger.current_session() is not None)

    gen = stream()
    next(gen)
    gen.close()
    assert ledger_capture.sessions[0].status == "success"
    assert cleaned == [True]  # the generator's own cleanup still runs inside its session


def test_a_generator_session_that_raises_ends_with_error(ledger_capture: Capture) -> None:
    @ledger.session("streamer")
    def stream() -> Iterator[int]:
        yield 1
        raise RuntimeError("mid-stream")

    with pytest.raises(RuntimeError, match="mid-stream"):
        list(stream())
    assert ledger_capture.sessions[0].error_message == "RuntimeError: mid-stream"


def test_a_generator_session_forwards_send_and_throw_and_returns(ledger_capture: Capture) -> None:
    @ledger.session("echo")
    def echo() -> Iterator[Any]:
        received = yield "ready"
        try:
            yield f"got {received}"
        except KeyError:
            yield "caught"
        return "done"

    gen = echo()
    assert next(gen) == "ready"
    assert gen.send("ping") == "got ping"
    assert gen.throw(KeyError("k")) == "caught"
    with pytest.raises(StopIteration) as stop:
        next(gen)
    assert stop.value.value == "done"
    assert ledger_capture.sessions[0].status == "success"


def test_an_async_generator_session(ledger_capture: Capture) -> None:
    @ledger.session("async-streamer")
    async def stream(n: int) -> AsyncIterator[str]:
        for i in range(n):
            await asyncio.sleep(0)
            yield step(f"c{i}")

    async def consume() -> list[str]:
        return [item async for item in stream(3)]

    assert asyncio.run(consume()) == ["c0", "c1", "c2"]
    session = ledger_capture.sessions[0]
    assert session.status == "success"
    assert len(session.events) == 6


def test_an_async_generator_session_closed_early_and_one_that_raises(ledger_capture: Capture) -> None:
    @ledger.session("a")
    async def forever() -> AsyncIterator[int]:
        while True:
            yield 1

    @ledger.session("b")
    async def broken() -> AsyncIterator[int]:
        yield 1
        raise OSError("disk")

    async def main() -> None:
        gen = forever()
        assert await gen.__anext__() == 1
        await gen.aclose()
        with pytest.raises(OSError, match="disk"):
            async for _ in broken():
                pass

    asyncio.run(main())
    assert ledger_capture.session("a").status == "success"
    assert ledger_capture.session("b").error_message == "OSError: disk"


def test_an_async_generator_session_forwards_asend_and_athrow(ledger_capture: Capture) -> None:
    @ledger.session("echo")
    async def echo() -> AsyncIterator[Any]:
        received = yield "ready"
        try:
            yield f"got {received}"
        except KeyError:
            yield "caught"

    async def main() -> list[Any]:
        gen = echo()
        return [await gen.asend(None), await gen.asend("ping"), await gen.athrow(KeyError("k"))]

    assert asyncio.run(main()) == ["ready", "got ping", "caught"]


class Agent:
    """An agent with every kind of method."""

    prefix = "cls"

    def __init__(self) -> None:
        self.prefix = "self"

    @ledger.session("method-agent")
    def run(self, x: int) -> str:
        return f"{self.prefix}-{x}"

    @classmethod
    @ledger.session("classmethod-agent")
    def create(cls, x: int) -> str:
        return f"{cls.prefix}-{x}"

    @ledger.session("classmethod-outer")
    @classmethod
    def create_outer(cls, x: int) -> str:
        return f"{cls.prefix}-{x}"

    @staticmethod
    @ledger.session("static-agent")
    def helper(x: int) -> int:
        return x + 1

    @ledger.session("static-outer")
    @staticmethod
    def helper_outer(x: int) -> int:
        return x + 2


def test_methods_classmethods_and_staticmethods(ledger_capture: Capture) -> None:
    agent = Agent()
    assert agent.run(1) == "self-1"
    assert Agent.create(2) == "cls-2"
    assert Agent.create_outer(3) == "cls-3"
    assert Agent.helper(4) == 5
    assert agent.helper_outer(5) == 7
    assert [s.agent_name for s in ledger_capture.sessions] == [
        "method-agent",
        "classmethod-agent",
        "classmethod-outer",
        "static-agent",
        "static-outer",
    ]
    assert all(s.status == "success" for s in ledger_capture.sessions)


def test_name_docstring_signature_and_kind_are_preserved() -> None:
    async def coro(a: int, *, b: str = "x") -> str:
        """Coroutine doc."""
        return b

    def gen(a: int) -> Iterator[int]:
        """Generator doc."""
        yield a

    async def agen(a: int) -> AsyncIterator[int]:
        yield a

    for original, check in [
        (coro, inspect.iscoroutinefunction),
        (gen, inspect.isgeneratorfunction),
        (agen, inspect.isasyncgenfunction),
    ]:
        for decorated in (ledger.session(original), ledger.tool(original)):
            assert decorated.__name__ == original.__name__
            assert decorated.__doc__ == original.__doc__
            assert inspect.signature(decorated) == inspect.signature(original)
            assert check(decorated)
            assert decorated.__wrapped__ is original  # type: ignore[attr-defined]


def test_the_with_block_gives_a_handle(ledger_capture: Capture) -> None:
    with ledger.session("support-bot") as s:
        assert ledger.current_session() is s
        assert s.agent_name == "support-bot"
        assert s.id == "captured-1"
        assert s.next_step() == 0
        s.log("retrieval", doc_count=3, top_score=0.9)
        s.log("checkpoint", step_index=42)
        step("after")
    assert ledger.current_session() is None
    session = ledger_capture.sessions[0]
    assert without_span(session.events[0]) == {"docCount": 3, "topScore": 0.9, "type": "retrieval", "stepIndex": 1}
    assert without_span(session.events[1]) == {"stepIndex": 42, "type": "checkpoint"}
    assert session.events[2]["stepIndex"] == 2
    assert session.status == "success"


def test_the_with_block_records_an_error_and_lets_it_through(ledger_capture: Capture) -> None:
    with pytest.raises(ZeroDivisionError), ledger.session("bot"):
        _ = 1 / 0
    assert ledger_capture.sessions[0].error_message == "ZeroDivisionError: division by zero"


def test_the_async_with_block(ledger_capture: Capture) -> None:
    async def main() -> None:
        async with ledger.session("async-bot") as s:
            await s.alog("note", text="hi")
            assert ledger.current_session() is s
        assert ledger.current_session() is None

    asyncio.run(main())
    assert [without_span(e) for e in ledger_capture.sessions[0].events] == [
        {"text": "hi", "type": "note", "stepIndex": 0}
    ]


def test_the_with_block_needs_an_agent_name() -> None:
    with pytest.raises(TypeError, match="needs an agent name"), ledger.session():
        pass


@pytest.mark.parametrize("bad", ["", "   ", 3])
def test_an_empty_agent_name_is_refused(bad: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        ledger.session(agent_name=bad)


def test_a_nested_session_has_its_own_steps_and_the_outer_one_comes_back(ledger_capture: Capture) -> None:
    @ledger.session("inner")
    def inner() -> None:
        step("i0")
        step("i1")

    @ledger.session("outer")
    def outer() -> None:
        step("o0")
        before = ledger.current_session()
        inner()
        assert ledger.current_session() is before
        step("o1")

    outer()
    assert [e["stepIndex"] for e in ledger_capture.session("outer").events] == [0, 0, 1, 1]
    assert [e["stepIndex"] for e in ledger_capture.session("inner").events] == [0, 0, 1, 1]
    assert [e["toolInput"]["label"] for e in ledger_capture.session("outer").events[::2]] == ["o0", "o1"]


def test_log_needs_a_type(ledger_capture: Capture) -> None:
    with ledger.session("bot") as s, pytest.raises(ValueError, match="event type"):
        s.log("")
