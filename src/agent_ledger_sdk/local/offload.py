"""Running a blocking call off the event loop, for the cost of two thread hand-offs and nothing else.

:func:`run_off_loop` is what the handlers of ``app.py`` use instead of Starlette's ``run_in_threadpool``
(anyio's ``to_thread.run_sync``): measured on the 2-core machine of docs/performance.md, a round trip
through anyio's pool costs about 100 µs of CPU, through ``loop.run_in_executor`` about 80 µs, and through
these threads about 40 µs; a batch-1 ``POST /v1/events`` pays it on every request.

Each call is a job on one :class:`queue.SimpleQueue` (C, no lock of Python's own) that a thread of this
pool takes, runs in a copy of the caller's context (as anyio does) and answers with
``loop.call_soon_threadsafe``. Threads are started when a job finds none idle, up to
:data:`MAX_THREADS` (anyio's default limit too), so that a slow query holds up only its own request; they
are daemon threads, idle on the queue while there is nothing to do.

If the awaiting task is cancelled, the call still runs to its end in its thread (as with anyio, a call
that started is never abandoned midway); only its result is dropped.

:class:`WriterThread` is the same hand-off to a pool of ONE thread, for the writes of a store that makes
one write at a time (SQLite): many threads would only wait for each other at its lock, and while one of them
held it the others' Python (a batch's JSON, checks and prices) took the GIL from it between its statements.
Measured on the 2-core machine, batches of 100 from 4 clients: the write lock was held 2.7 to 3.0 ms of wall
time for 1.6 to 1.9 ms of its thread's CPU; on one thread, 2.0 ms for 1.9, and ``serve --workers 2`` took
37,400 events/s instead of 31,000 (one process: 28,100 instead of 26,400).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import os
import queue
import threading
import weakref
from typing import Any, Callable, Optional, TypeVar

__all__ = ["MAX_THREADS", "WRITER_IDLE_SECONDS", "WriterThread", "run_off_loop"]

MAX_THREADS = 40
WRITER_IDLE_SECONDS = 60.0
_T = TypeVar("_T")
_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any], contextvars.Context]


def _settle(future: asyncio.Future[Any], result: Any, error: Optional[BaseException]) -> None:
    if future.done():  # the awaiting task was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class _Pool:
    """Threads started on demand up to ``max_threads``; one idle for ``idle_seconds`` ends (None: never)."""

    def __init__(
        self, max_threads: int = MAX_THREADS, name: str = "agent-ledger-worker", idle_seconds: Optional[float] = None
    ) -> None:
        self._jobs: queue.SimpleQueue[Optional[_Job]] = queue.SimpleQueue()  # None: wake up, take an urgent job
        self._urgent: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._threads = 0
        self._max = max_threads
        self._name = name
        self._idle_seconds = idle_seconds
        _POOLS.add(self)

    def submit(
        self, loop: asyncio.AbstractEventLoop, function: Callable[[], Any], urgent: bool = False
    ) -> asyncio.Future[Any]:
        """Run ``function`` in a thread of the pool; ``urgent``: before the jobs waiting that are not."""
        future = loop.create_future()
        with self._lock:
            if self._idle:
                self._idle -= 1  # this job is that thread's: the next one must not count on it
            elif self._threads < self._max:
                self._threads += 1
                threading.Thread(target=self._work, name=f"{self._name}-{self._threads}", daemon=True).start()
            # else: every thread is busy; the job waits on the queue for the first that is free
        job = (loop, future, function, contextvars.copy_context())
        if urgent:
            self._urgent.put(job)
            self._jobs.put(None)  # wakes a thread, which takes the urgent jobs first
        else:
            self._jobs.put(job)
        return future

    def _work(self) -> None:
        jobs, urgent = self._jobs, self._urgent
        while True:
            if urgent.empty():
                try:
                    job = jobs.get(timeout=self._idle_seconds)
                except queue.Empty:
                    with self._lock:
                        if self._idle:  # no job counts on this thread (submit takes its count under the lock)
                            self._idle -= 1
                            self._threads -= 1
                            return
                    continue  # a job was handed to it just now: it is on the queue
                if job is None:
                    continue  # an urgent job's wake-up: it is taken first (unless another thread took it)
            else:
                try:
                    job = urgent.get_nowait()
                except queue.Empty:  # another thread took it
                    continue
            loop, future, function, context = job
            result: Any = None
            error: Optional[BaseException] = None
            try:
                result = context.run(function)
            except BaseException as exc:  # handed to the awaiting task, which raises it
                error = exc
            with self._lock:
                self._idle += 1
            with contextlib.suppress(RuntimeError):  # a loop closed while the call ran: nobody waits for it
                loop.call_soon_threadsafe(_settle, future, result, error)
            del job, loop, future, function, context, result, error

    def forget_threads(self) -> None:
        """In a forked child: the parent's threads are not there; jobs get threads of the child's own."""
        self.__init__(self._max, self._name, self._idle_seconds)  # type: ignore[misc]


def _forget_threads() -> None:
    for pool in list(_POOLS):
        pool.forget_threads()


_POOLS: weakref.WeakSet[_Pool] = weakref.WeakSet()
_POOL = _Pool()
if hasattr(os, "register_at_fork"):  # a worker forked by a supervisor that had served requests
    os.register_at_fork(after_in_child=_forget_threads)


async def run_off_loop(function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """``function(*args, **kwargs)`` in a thread of the pool; its result, or its exception raised here."""
    call = functools.partial(function, *args, **kwargs) if args or kwargs else function
    result: _T = await _POOL.submit(asyncio.get_running_loop(), call)
    return result


class WriterThread:
    """One thread for the writes of one store that makes one write at a time (see the module's docstring).

    Calls run in the order they were handed over, the urgent ones first. The thread starts with the first call
    and ends after WRITER_IDLE_SECONDS without one (the next call starts another)."""

    def __init__(self) -> None:
        self._pool = _Pool(1, "agent-ledger-writer", WRITER_IDLE_SECONDS)

    async def run(self, function: Callable[..., _T], *args: Any, urgent: bool = False) -> _T:
        """``function(*args)`` on the writer's thread; its result, or its exception raised here. ``urgent``: before
        the calls waiting that are not (a reservation, which an LLM call waits for, before a batch of events)."""
        call = functools.partial(function, *args) if args else function
        result: _T = await self._pool.submit(asyncio.get_running_loop(), call, urgent)
        return result
