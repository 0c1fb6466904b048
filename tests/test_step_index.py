"""stepIndex: unique and ordered per session, across tasks and threads; never shared between sessions."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from agent_ledger_sdk import AgentLedgerClient, ContextThreadPoolExecutor, bind_context
from agent_ledger_sdk.testing import Capture

ledger = AgentLedgerClient(api_key="sk-test", base_url="http://127.0.0.1:9")


@ledger.tool
def work(i: int) -> int:
    return i


@ledger.tool
async def async_work(i: int) -> int:
    await asyncio.sleep(0)
    return i


def call_steps(captured: Capture, agent: str) -> list[int]:
    return [e["stepIndex"] for e in captured.session(agent).events if e["type"] == "tool_call"]


def test_gather_of_100_tool_calls_gives_100_distinct_steps(ledger_capture: Capture) -> None:
    @ledger.session("gatherer")
    async def run() -> list[int]:
        return await asyncio.gather(*(async_work(i) for i in range(100)))

    assert asyncio.run(run()) == list(range(100))
    steps = call_steps(ledger_capture, "gatherer")
    assert sorted(steps) == list(range(100))
    results = [e for e in ledger_capture.events if e["type"] == "tool_result"]
    by_step = {e["stepIndex"]: e["toolInput"]["i"] for e in ledger_capture.events if e["type"] == "tool_call"}
    assert all(by_step[r["stepIndex"]] == r["toolOutput"] for r in results)


def test_steps_follow_the_order_in_which_steps_begin(ledger_capture: Capture) -> None:
    @ledger.session("sequential")
    def run() -> None:
        for i in range(300):
            work(i)

    run()
    calls = [e for e in ledger_capture.events if e["type"] == "tool_call"]
    assert [e["stepIndex"] for e in calls] == list(range(300))
    assert [e["toolInput"]["i"] for e in calls] == list(range(300))


def test_the_context_thread_pool_keeps_the_session_and_its_counter(ledger_capture: Capture) -> None:
    @ledger.session("threaded")
    def run() -> list[int]:
        with ContextThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(work, range(400)))

    assert run() == list(range(400))
    assert sorted(call_steps(ledger_capture, "threaded")) == list(range(400))


def test_a_plain_thread_pool_loses_the_session_as_documented(ledger_capture: Capture) -> None:
    @ledger.session("plain-pool")
    def run() -> list[int]:
        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(work, range(10)))

    assert run() == list(range(10))
    assert ledger_capture.session("plain-pool").events == []


def test_bind_context_carries_the_session_into_a_thread(ledger_capture: Capture) -> None:
    @ledger.session("with-thread")
    def run() -> None:
        work(0)
        threads = [threading.Thread(target=bind_context(work), args=(i,)) for i in range(1, 51)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    run()
    assert sorted(call_steps(ledger_capture, "with-thread")) == list(range(51))


def test_concurrent_sessions_in_threads_never_share_a_counter(ledger_capture: Capture) -> None:
    @ledger.session
    def agent(n: int) -> None:
        for i in range(n):
            work(i)

    barrier = threading.Barrier(8)

    def run() -> None:
        barrier.wait()
        agent(200)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ledger_capture.sessions) == 8
    for session in ledger_capture.sessions:
        assert [e["stepIndex"] for e in session.events if e["type"] == "tool_call"] == list(range(200))


def test_concurrent_sessions_in_tasks_never_share_a_counter(ledger_capture: Capture) -> None:
    @ledger.session
    async def agent(n: int) -> None:
        for i in range(n):
            await async_work(i)

    async def main() -> None:
        await asyncio.gather(*(agent(50) for _ in range(20)))

    asyncio.run(main())
    assert len(ledger_capture.sessions) == 20
    for session in ledger_capture.sessions:
        assert [e["stepIndex"] for e in session.events if e["type"] == "tool_call"] == list(range(50))


def test_tasks_and_threads_mixed_in_one_session(ledger_capture: Capture) -> None:
    @ledger.session("mixed")
    async def run() -> None:
        loop = asyncio.get_running_loop()
        with ContextThreadPoolExecutor(max_workers=4) as pool:
            threaded = [loop.run_in_executor(pool, bind_context(work), i) for i in range(100)]
            tasks = [async_work(i) for i in range(100)]
            await asyncio.gather(*threaded, *tasks)

    asyncio.run(run())
    assert sorted(call_steps(ledger_capture, "mixed")) == list(range(200))


def test_the_current_session_is_restored_after_every_helper(ledger_capture: Capture) -> None:
    assert ledger.current_session() is None
    with ledger.session("a"):
        work(1)
    assert ledger.current_session() is None

    @ledger.session("b")
    def fails() -> None:
        raise RuntimeError

    try:
        fails()
    except RuntimeError:
        pass
    assert ledger.current_session() is None
