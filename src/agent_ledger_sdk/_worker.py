"""The background sender: a bounded queue drained by one daemon thread, in batches per session.

The caller's side of it is an ``append`` to a deque: no lock, no I/O, no
serialisation. The worker wakes every ``flush_interval`` seconds (or as soon as
a batch is full, or on ``flush``), sends each session's events in batches of
at most ``batch_size`` in the order they were recorded, and hands every
outcome to the :class:`Delivery` it was given.

Overflow policy: when ``max_queue_size`` items are waiting, new events are
dropped (the newest), counted and warned about; session starts and ends are
never dropped, so no session is left open by an overflow.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import TYPE_CHECKING, Any, Optional, Protocol

from ._stats import logger

if TYPE_CHECKING:
    from ._session import SessionHandle

START, EVENT, END = 0, 1, 2

DEFAULT_MAX_QUEUE_SIZE = 10_000
DEFAULT_BATCH_SIZE = 100
DEFAULT_FLUSH_INTERVAL = 0.2  # seconds


class Delivery(Protocol):
    def start(self, handle: SessionHandle) -> None: ...
    def send(self, handle: SessionHandle, events: list[dict[str, Any]]) -> None: ...
    def end(self, handle: SessionHandle, status: str, message: Optional[str]) -> None: ...
    def overflowed(self) -> None: ...


class BackgroundWorker:
    def __init__(
        self,
        delivery: Delivery,
        *,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
    ) -> None:
        self._delivery = delivery
        self.max_queue_size = max_queue_size
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self._reset()

    def _reset(self) -> None:
        self._queue: collections.deque[tuple[int, SessionHandle, Any]] = collections.deque()
        self._wake = threading.Event()
        self._start_lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._busy = False
        self._closed = False

    def after_fork(self) -> None:
        """In a forked child: forget the parent's queue (the parent sends it) and thread."""
        self._reset()

    # -- the caller's side ----------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit_event(self, handle: SessionHandle, event: dict[str, Any]) -> None:
        queue = self._queue
        size = len(queue)
        if size >= self.max_queue_size:
            self._delivery.overflowed()
            return
        queue.append((EVENT, handle, event))
        if self._thread is None or self._closed:
            self._start()  # first use, or use after close(): the sender comes back
        elif not (size + 1) % self.batch_size:
            self._wake.set()  # a full batch is waiting: don't wait for the interval

    def submit_control(self, kind: int, handle: SessionHandle, payload: Any = None) -> None:
        self._queue.append((kind, handle, payload))
        if self._thread is None or self._closed:
            self._start()

    def flush(self, timeout: Optional[float]) -> int:
        """Wait until the queue is sent or ``timeout`` seconds pass; return what is left."""
        if self._thread is None or not self._thread.is_alive():
            if not self._queue:
                return 0
            self._start()
        deadline = None if timeout is None else time.monotonic() + timeout
        self._wake.set()
        while self._queue or self._busy:
            if deadline is not None and time.monotonic() >= deadline:
                break
            self._wake.set()
            time.sleep(0.002)
        return len(self._queue)

    def close(self, timeout: Optional[float]) -> int:
        left = self.flush(timeout)
        self._closed = True
        self._wake.set()
        return left

    # -- the worker's side ----------------------------------------------

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None and self._thread.is_alive():
                self._closed = False  # closed but still draining: it keeps going
                return
            thread = threading.Thread(target=self._run, name="agent-ledger-sender", daemon=True)
            self._closed = False
            thread.start()
            self._thread = thread

    def _run(self) -> None:
        while True:
            if len(self._queue) < self.batch_size:  # no full batch waiting: wait for one, or the interval
                self._wake.wait(self.flush_interval)
            self._wake.clear()
            self._busy = True
            try:
                self._drain()
            except Exception:  # never let the sender die: that would lose everything after
                logger.exception("agent-ledger background sender failed; continuing")
            finally:
                self._busy = False
            if self._closed and not self._queue:
                with self._start_lock:  # decide to exit where _start() can see it
                    if self._closed and not self._queue:
                        self._thread = None
                        return

    def _drain(self) -> None:
        queue = self._queue
        delivery = self._delivery
        pending: dict[SessionHandle, list[dict[str, Any]]] = {}
        # One pass takes what is queued now, so that a flood of new events cannot
        # hold back another session's partial batch (or a guardrail's answer).
        for _ in range(len(queue)):
            kind, handle, payload = queue.popleft()
            if kind == EVENT:
                batch = pending.get(handle)
                if batch is None:
                    batch = pending[handle] = []
                batch.append(payload)
                if len(batch) >= self.batch_size:
                    delivery.send(handle, pending.pop(handle))
            elif kind == START:
                delivery.start(handle)
            else:
                batch = pending.pop(handle, None)
                if batch:
                    delivery.send(handle, batch)
                status, message = payload
                delivery.end(handle, status, message)
        for handle, batch in pending.items():
            delivery.send(handle, batch)
