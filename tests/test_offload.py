"""The ledger's own threads (``local/offload.py``): the pool for blocking calls, and the one writer thread of a
store that makes one write at a time (SQLite), which runs the calls handed to it one by one, in order."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from typing import Any

import pytest

from agent_ledger_sdk.local import offload
from agent_ledger_sdk.local.offload import WriterThread, run_off_loop


def test_the_writer_runs_calls_one_at_a_time_on_one_thread_in_the_order_given() -> None:
    writer = WriterThread()
    running = 0
    most = 0
    seen: list[tuple[int, str]] = []
    guard = threading.Lock()

    def call(number: int) -> int:
        nonlocal running, most
        with guard:
            running += 1
            most = max(most, running)
        time.sleep(0.001)  # long enough for another thread, if there were one, to start the next call
        seen.append((number, threading.current_thread().name))
        with guard:
            running -= 1
        return number * 2

    async def main() -> list[int]:
        return list(await asyncio.gather(*(writer.run(call, n) for n in range(40))))

    assert asyncio.run(main()) == [n * 2 for n in range(40)]
    assert most == 1
    assert [number for number, _ in seen] == list(range(40))
    assert len({name for _, name in seen}) == 1 and seen[0][1].startswith("agent-ledger-writer-")


def test_an_urgent_call_goes_before_the_calls_waiting_not_before_the_one_under_way() -> None:
    writer = WriterThread()
    started, go = threading.Event(), threading.Event()
    ran: list[str] = []

    def first() -> None:
        started.set()
        go.wait(10)
        ran.append("first")

    async def main() -> None:
        under_way = asyncio.ensure_future(writer.run(first))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        waiting = [asyncio.ensure_future(writer.run(ran.append, f"normal-{n}")) for n in range(3)]
        urgent = [asyncio.ensure_future(writer.run(ran.append, f"urgent-{n}", urgent=True)) for n in range(2)]
        await asyncio.sleep(0.05)  # every call handed over before the first ends
        go.set()
        await asyncio.gather(under_way, *waiting, *urgent)

    asyncio.run(main())
    assert ran == ["first", "urgent-0", "urgent-1", "normal-0", "normal-1", "normal-2"]


def test_an_error_reaches_its_caller_and_the_writer_goes_on() -> None:
    writer = WriterThread()

    def fails() -> None:
        raise ValueError("the write failed")

    async def main() -> Any:
        with pytest.raises(ValueError, match="the write failed"):
            await writer.run(fails)
        return await writer.run(lambda: "next")

    assert asyncio.run(main()) == "next"


def test_an_idle_writer_thread_ends_and_the_next_call_starts_another(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offload, "WRITER_IDLE_SECONDS", 0.05)
    writer = WriterThread()

    async def on_thread() -> threading.Thread:
        return await writer.run(threading.current_thread)

    first = asyncio.run(on_thread())
    first.join(5)
    assert not first.is_alive(), "the writer's thread did not end once idle"
    second = asyncio.run(on_thread())
    assert second is not first and second.is_alive()


def test_calls_handed_over_as_the_idle_thread_ends_all_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call handed to the writer just as its idle thread gives up is run (by it, or by a new thread)."""
    monkeypatch.setattr(offload, "WRITER_IDLE_SECONDS", 0.002)
    writer = WriterThread()

    async def main() -> list[int]:
        done = []
        for number in range(200):
            done.append(await asyncio.wait_for(writer.run(lambda n=number: n), 5))
            await asyncio.sleep(0.002 * (number % 3))  # around the idle timeout, before and after
        return done

    assert asyncio.run(main()) == list(range(200))


def test_the_pool_and_a_writer_work_in_a_child_forked_after_they_ran() -> None:
    """A forked child inherits the pools' counts of threads but not the threads: it must start its own."""
    if not hasattr(os, "fork"):  # pragma: no cover - POSIX only
        pytest.skip("no fork on this platform")
    writer = WriterThread()

    async def both(a: int, b: int) -> int:
        return await run_off_loop(lambda: a) + await writer.run(lambda: b)

    assert asyncio.run(both(1, 2)) == 3  # each has a thread in the parent now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            answer = asyncio.run(asyncio.wait_for(both(40, 2), 5))
            os.write(write, str(answer).encode())
        except BaseException as exc:
            os.write(write, repr(exc).encode())
        finally:
            sys.stdout.flush()
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as answer:
        assert answer.read() == b"42"
    assert status == 0
