"""The background sender: a queue bounded in bytes, drained by one daemon thread, with a journal behind it.

The caller's side is :meth:`Sender.submit`: one lock, one ``append``, no I/O
and no serialisation (the event's values are already snapshotted). The
sender thread wakes every ``flush_interval`` seconds, or as soon as
``WAKE_EVENTS`` events (or ``WAKE_BYTES``) are queued, or on ``flush``; it
encodes each session's events (``_pipeline``) and sends them in batches, in
the order they were recorded, as large as the queue is deep (up to
``MAX_BATCH_SIZE``): a steady flow costs a request per interval, not one per
100 events.

Nothing that can be kept is lost:

- a healthy ledger slower than the agent: the queue absorbs bursts up to
  ``max_queue_bytes``; past that, events go to the on-disk journal (in order:
  once anything is journaled, new events follow it there until it drains);
- a ledger that fails (connection, timeout, 5xx, 429 without a guardrail):
  the sender retries the same batch, with the same idempotency key, with
  backoff, for ``retry_window`` seconds; then it moves everything to the
  journal and keeps probing the ledger; it delivers the journal in order when
  the ledger answers again;
- past both bounds, events are dropped, counted and logged at WARNING.

Starts are sent ahead of everything else (a session's start has no earlier
event to wait for), so ``SessionHandle.id`` waits for one round trip, not
for the queue.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Optional

from . import _lifecycle
from ._base_client import idempotency_key, is_retryable
from ._events import describe_event
from ._exceptions import APIStatusError, BudgetGuardrailError, describe_error
from ._http import SESSION_KEY_PREFIX
from ._serialization import dumps
from ._session import FAILED, PENDING, SessionHandle
from ._stats import internal_error, logger

if TYPE_CHECKING:
    from ._http import LedgerIO
    from ._instrumentation import Instrumentation
    from ._journal import Journal

EVENT, END = 1, 2

DEFAULT_MAX_QUEUE_BYTES = 64 * 1024 * 1024
DEFAULT_BATCH_SIZE = 100
# The sender wakes before its interval when this many events are queued, or WAKE_BYTES of them: a steady
# flow is sent in batches of what one interval gathers (a request per 100 events cost more CPU than encoding them).
WAKE_EVENTS = 1000
WAKE_BYTES = 4 * 1024 * 1024
# Batches grow with the queue's depth up to this (the ledger takes 10,000 a request): a request costs the
# sender about 0.5 ms of CPU whatever its size, so a deep queue is sent in few requests. Not more: a batch a
# budget guardrail refuses is sent again one event at a time.
MAX_BATCH_SIZE = 2000
MAX_BATCH_BYTES = 4 * 1024 * 1024  # of encoded events (the ledger reads 16 MiB a request)
# The journal is read in windows of at most this many lines and bytes, and each window's event records
# are sent a request per session of at most JOURNAL_GROUP_EVENTS events and JOURNAL_GROUP_BYTES bytes.
# A request's key is made from its records: these bounds decide which, so a journal that a process left
# half delivered is sent again by the next under the same keys only if they stay as they are. Never change them.
JOURNAL_WINDOW_LINES = 16_000
JOURNAL_WINDOW_BYTES = 4 * 1024 * 1024
JOURNAL_GROUP_EVENTS = 2000
JOURNAL_GROUP_BYTES = 4 * 1024 * 1024
DEFAULT_FLUSH_INTERVAL = 0.2  # seconds
DEFAULT_RETRY_WINDOW = 60.0  # seconds of failures before the queue moves to the journal
MAX_BACKOFF = 5.0
SHUTDOWN_DRAIN = 2.0  # seconds a caller spends delivering its own events when no thread can start
FORK_IMPORT_WAIT = 2.0  # seconds fork() waits for the sender thread to finish its first imports
# Events queued behind the last built request that make the sender encode them while that request is in
# flight (a thread of its own makes it): the ledger's time and the encoding overlap in a flood.
OVERLAP_EVENTS = 500
# ... and while fewer than this many events are built behind the request in flight: agents that take turns queue
# their events in runs (a thread's time slice), and a session's request takes its next runs while it waits.
LOOKAHEAD_EVENTS = 8 * MAX_BATCH_SIZE
BUILD_EVENTS = 2 * MAX_BATCH_SIZE  # items a build takes from the queue at most: a flood is built as it is sent
PARALLEL_STARTS = 16  # sessions waiting to start that the sender starts at once, a thread each
SENT_WAIT = 0.005  # seconds the sender waits for a request to be written before it builds the next (see above)
HANDOVER_WAIT = 1.0  # seconds the exit path waits for the sender to finish the request it is making
ITEM_BYTES = 300  # what a queued item costs beyond its values: tuple, deque slot, event dict (measured)
HANDLE_BYTES = 800  # a session handle kept alive by the queue (measured)


class _Unit:
    """One request to make: a batch of encoded events, or a session's end, with its idempotency key."""

    __slots__ = ("body", "encoded", "handle", "key", "kind", "size")

    def __init__(
        self,
        kind: int,
        handle: SessionHandle,
        key: str,
        encoded: Optional[list[str]] = None,
        body: Optional[dict[str, Any]] = None,
        size: int = 0,
    ) -> None:
        self.kind = kind
        self.handle = handle
        self.key = key
        self.encoded = encoded
        self.body = body
        self.size = size


class _Stall(Exception):
    """The ledger failed in a way that may pass: keep the unit and retry it later."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Handover(Exception):
    """The exit path wants what is in memory (``journal_everything``): stop between two requests."""


new_key = idempotency_key


class Sender:
    def __init__(
        self,
        owner: Instrumentation,
        io: Callable[[], LedgerIO],
        journal: Optional[Journal],
        *,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        max_queue_events: Optional[int] = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        retry_window: float = DEFAULT_RETRY_WINDOW,
    ) -> None:
        self._owner = owner
        self._io = io
        self.journal = journal
        self.max_queue_bytes = max_queue_bytes
        self.max_queue_events = max_queue_events or (1 << 62)
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.retry_window = retry_window
        # Bytes queued that wake the sender early: well before the bound, where events would start to spill.
        self._wake_bytes = min(WAKE_BYTES, max_queue_bytes // 4)
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.RLock()  # re-entrant: a signal handler may flush while its thread holds it
        self._queue: deque[tuple[int, SessionHandle, Any, int]] = deque()
        self._starts: deque[SessionHandle] = deque()
        self._units: deque[_Unit] = deque()  # built and encoded, not yet delivered (the sender's own)
        self._bytes = 0  # of _queue and _starts
        self._unit_bytes = 0
        self._spilling = False  # True while the journal holds this process's events: new ones follow them
        self._wake = threading.Event()
        self._started_cond = threading.Condition(threading.Lock())
        self._drain_lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        # Set while no thread of ours imports modules: fork() waits for it (see _warm_up).
        self._imports_done = threading.Event()
        self._imports_done.set()
        self._warmed = False
        # Threads cannot be started (interpreter shutdown), or the exit hook has run and no one
        # would wait for one any more: callers deliver what they queue themselves.
        self._no_thread = _lifecycle.exit_hook_ran
        self._busy = False
        self._closed = False
        self._handover = False  # set by journal_everything: the sender stops between two requests
        self._stall_since: Optional[float] = None
        self._backoff = 0.0
        self._session_ids: dict[str, str] = {}  # session key -> id, for journal records
        # The journal window being delivered, and the keys of its requests the ledger has answered:
        # a window read again after a failure skips them (a new process sends them again, same keys).
        self._journal_done: Optional[tuple[tuple[str, int], set[str]]] = None
        self._journal_heads: dict[str, dict[str, Any]] = {}  # a record's head, as written, parsed (see _parse)
        self._heads: dict[SessionHandle, tuple[Any, str]] = {}  # a session's record head, as written (see _head)
        self._key_base = new_key() + "-"  # spilled records' keys: this, and a count (a child makes its own)
        self._key_count = itertools.count()

    def before_fork(self) -> None:
        """Hold the queue's lock across fork(): the child never inherits the queue mid-update.

        And never fork while the sender thread imports modules: the child would
        inherit them half-initialised (a partially initialised ``httpcore``).
        """
        self._imports_done.wait(FORK_IMPORT_WAIT)
        self._lock.acquire()
        if self.journal is not None:
            self.journal._lock.acquire()

    def after_fork_in_parent(self) -> None:
        if self.journal is not None:
            self.journal._lock.release()
        self._lock.release()

    def after_exit_hook(self) -> None:
        """The exit hook has run: what is recorded later (an ``atexit`` handler that runs after it) is
        delivered by its caller, for no one would flush the thread any more (threads can still start
        there before Python 3.12, and daemon threads die with the interpreter)."""
        self._no_thread = True

    def locks(self) -> list[Any]:
        """The re-entrant locks a caller holds while it queues or journals (the SIGTERM handler's concern)."""
        return [self._lock] if self.journal is None else [self._lock, self.journal._lock]

    def after_fork(self) -> None:
        """In a forked child: a fresh queue and thread; the parent sends what it had queued."""
        self._reset()
        if self.journal is not None:
            self.journal.after_fork()

    def journal_everything(self) -> None:
        """At exit: write what is still in memory to the journal, for the next client to deliver.

        The sender thread holds the drain lock for a whole pass (a deep queue is
        many requests): it is asked to let go after the request it is making. If
        that request does not end (a ledger that hangs, or is very slow), the rest
        is journaled around it: the batch in flight stays the sender's.
        """
        if self.journal is None or not (self._queue or self._units):
            return
        self._handover = True
        try:
            if self._drain_lock.acquire(timeout=HANDOVER_WAIT):
                try:
                    self._move_to_journal()
                finally:
                    self._drain_lock.release()
            else:
                self._move_to_journal(in_flight=True)
        finally:
            self._handover = False

    # -- the caller's side ----------------------------------------------

    @property
    def queued(self) -> int:
        """Events waiting in memory."""
        return sum(1 for item in list(self._queue) if item[0] == EVENT) + sum(
            len(u.encoded or ()) for u in list(self._units)
        )

    def left(self) -> int:
        """What flush() reports: events and session ends not delivered yet (in memory or journaled)."""
        waiting = len(self._queue) + sum(len(u.encoded or ()) or 1 for u in list(self._units))
        if self.journal is not None and self._spilling and self.journal.pending_bytes:
            waiting += 1
        return waiting

    def submit_event(self, handle: SessionHandle, event: dict[str, Any], size: int) -> None:
        """Queue an event: the agent's hot path (the same as ``submit(EVENT, ...)``, one call less)."""
        size += ITEM_BYTES
        queue = self._queue
        queued = len(queue)
        if (
            self._spilling
            or self._bytes + self._unit_bytes + size > self.max_queue_bytes
            or queued >= self.max_queue_events
        ):
            self._spill(EVENT, handle, event)
            return
        # No lock on the agent's path: deque.append is atomic, and the byte count is a bound,
        # not an account (an update lost to a thread switch is corrected when the queue drains).
        self._bytes += size
        queue.append((EVENT, handle, event, size))
        if self._thread is None or self._closed or self._no_thread:
            self._after_first_item()
        elif not (queued + 1) % WAKE_EVENTS or (self._bytes > self._wake_bytes and not self._wake.is_set()):
            self._wake.set()  # a large batch is waiting: don't wait for the interval

    def submit(self, kind: int, handle: SessionHandle, payload: Any, size: int) -> None:
        if kind == EVENT:
            self.submit_event(handle, payload, size)
            return
        size += ITEM_BYTES
        if self._spilling or self._bytes + self._unit_bytes + size > self.max_queue_bytes:
            self._spill(kind, handle, payload)
            return
        self._bytes += size
        self._queue.append((kind, handle, payload, size))
        if self._thread is None or self._closed or self._no_thread:
            self._after_first_item()
        else:
            self._wake.set()

    def _after_first_item(self) -> None:
        self._start()  # first use, or use after close(): the sender comes back
        if self._no_thread:
            self._drain_on_caller(time.monotonic() + SHUTDOWN_DRAIN)

    def submit_start(self, handle: SessionHandle) -> None:
        if self._spilling or self._bytes + self._unit_bytes + HANDLE_BYTES > self.max_queue_bytes:
            return  # the session is started with its first delivered record instead
        self._bytes += HANDLE_BYTES
        self._starts.append(handle)
        if self._thread is None or self._closed or self._no_thread:
            self._start()
            if self._no_thread:
                self._drain_on_caller(time.monotonic() + SHUTDOWN_DRAIN)
        else:
            self._wake.set()

    def wait_started(self, handle: SessionHandle, timeout: float) -> None:
        if self._stall_since is not None or self._spilling:
            return  # the ledger is failing (or far behind): don't make the agent wait for it
        deadline = time.monotonic() + timeout
        self._wake.set()
        with self._started_cond:
            while handle._state == PENDING:
                left = deadline - time.monotonic()
                if left <= 0 or self._stall_since is not None:
                    return  # waited long enough, or the ledger started failing meanwhile
                self._started_cond.wait(min(left, 0.05))

    def flush(self, timeout: Optional[float]) -> int:
        """Wait until everything is delivered or ``timeout`` seconds pass; return how many events are left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._thread_alive():
            if not self._pending():
                return self.left()
            self._start()
            if self._no_thread:
                self._drain_on_caller(deadline)
                return self.left()
        self._wake.set()
        while self._pending() or self._busy:
            if deadline is not None and time.monotonic() >= deadline:
                break
            if self._stall_since is None:  # a failing ledger is retried with backoff, flush or not
                self._wake.set()
            time.sleep(0.002)
        return self.left()

    def close(self, timeout: Optional[float]) -> int:
        """Flush for up to ``timeout`` seconds, journal what is left, and let the thread end."""
        left = self.flush(timeout)
        self._closed = True
        if left:
            self.journal_everything()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(0.5)
        if self.journal is not None and not self._thread_alive():
            self.journal.close()  # its files stay on disk, for the next client to claim
        return left

    def _pending(self) -> bool:
        if self._queue or self._starts or self._units:
            return True
        return self._spilling or (self.journal is not None and not self.journal.is_empty())

    def start(self) -> None:
        """Start the thread now (to deliver a journal an earlier run left), if it is not running."""
        if not self._thread_alive():
            self._start()

    def _thread_alive(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _start(self) -> None:
        with self._lock:
            if self._thread_alive():
                self._closed = False  # closed but still draining: it keeps going
                return
            if self._no_thread:
                return
            thread = threading.Thread(target=self._run, name="agent-ledger-sender", daemon=True)
            self._closed = False
            if not self._warmed:
                self._imports_done.clear()
            try:
                thread.start()
            except RuntimeError:  # "can't create new thread at interpreter shutdown"
                self._imports_done.set()
                self._no_thread = True
                self._thread = None
                return
            self._thread = thread
        self._owner._sender_started()

    # -- spilling (the slow path, on the caller) ----------------------------

    def _spill(self, kind: int, handle: SessionHandle, payload: Any) -> None:
        journal = self.journal
        if journal is None:
            self._lost(1 if kind == EVENT else 0, "the background queue is full (%d bytes) and the journal is off")
            return
        with self._lock:
            if not self._spilling:
                self._spilling = True
                logger.info(
                    "agent-ledger: the background queue is full; events now go to the journal at %s", journal.directory
                )
            if kind == EVENT:
                encoded = self._owner.pipeline.encode(payload)
                if encoded is None:
                    return
                # As _record writes one event, inline: this is every spilled event's path.
                record = (
                    f'{{"i":"{self._key_base}{next(self._key_count)}","n":{len(encoded)},"e":[{encoded}],'
                    f"{self._head(handle, 'e')}"
                )
            else:
                status, message = payload
                record = self._record(handle, "x", new_key(), body={"status": status, "errorMessage": message})
            if not journal.append_line(record):
                self._lost(1 if kind == EVENT else 0, "the queue (%d bytes) and the journal are both full")
            if self._thread is None:
                self._start()

    def _lost(self, events: int, why: str) -> None:
        owner = self._owner
        owner.counters.add(dropped=events)
        owner.warnings.warn("lost", "agent-ledger: events are being dropped: " + why, self.max_queue_bytes)

    def _record(
        self,
        handle: SessionHandle,
        kind: str,
        key: str,
        *,
        encoded: Optional[list[str]] = None,
        body: Optional[dict[str, Any]] = None,
        attempted: bool = False,
    ) -> str:
        if encoded is not None and len(encoded) == 1 and body is None and not attempted:
            # One event (a spill): the event's length up front, so that the reader takes the event as
            # written and parses only the head, the same for all of a session's records (see _parse).
            event = encoded[0]
            return f'{{"i":"{key}","n":{len(event)},"e":[{event}],{self._head(handle, kind)}'
        head: dict[str, Any] = {"t": kind, "k": handle.key, "i": key, "a": handle.agent_name}
        if attempted:
            head["r"] = 1  # sent before, maybe applied: only its own key may send it again (never merged)
        if handle._id is not None:
            head["id"] = handle._id
        elif handle._state != FAILED:
            head["s"] = handle.start_body()
        if body is not None:
            head["b"] = body
        text = dumps(head)
        if encoded is None:
            return text
        return f'{text[:-1]},"e":[{",".join(encoded)}]}}'

    def _head(self, handle: SessionHandle, kind: str) -> str:
        """The rest of an event record after its event: its head's JSON without the opening brace."""
        parent = handle.parent
        state = (kind, handle._id, handle._state, None if parent is None else parent._id)
        heads = self._heads
        cached = heads.get(handle)
        if cached is not None and cached[0] == state:
            return cached[1]
        head: dict[str, Any] = {"t": kind, "k": handle.key, "a": handle.agent_name}
        if handle._id is not None:
            head["id"] = handle._id
        elif handle._state != FAILED:
            head["s"] = handle.start_body()
        text = dumps(head)[1:]
        if len(heads) >= 1000:
            heads.clear()
        heads[handle] = (state, text)
        return text

    # -- the sender thread ----------------------------------------------

    def _warm_up(self) -> None:
        """Import now what the first request would import lazily (httpx >= 0.28 imports httpcore on a
        transport's first use, the socket module the idna codec on its first connect): a fork() in
        another thread then waits for this (``before_fork``), instead of giving the child half-imported
        modules."""
        try:
            import codecs

            import httpcore  # noqa: F401

            from ._http import SyncHTTP

            codecs.lookup("idna")
            http = getattr(self._io(), "http", None)
            if isinstance(http, SyncHTTP):
                http.client()  # the transport: certifi, the TLS context
        except Exception as exc:  # pragma: no cover - the first request will say what is wrong
            internal_error("sender", exc)
        finally:
            self._warmed = True
            self._imports_done.set()

    def _run(self) -> None:
        if not self._warmed:
            self._warm_up()
        while True:
            if self._stall_since is not None:
                self._wake.wait(self._backoff)
            elif (
                len(self._queue) < WAKE_EVENTS
                and self._bytes < self._wake_bytes
                and not self._starts
                and not self._spilling
            ):
                self._wake.wait(self.flush_interval)
            self._wake.clear()
            self._busy = True
            try:
                with self._drain_lock:
                    self._pass()
            except Exception as exc:  # never let the sender die: that would lose everything after
                internal_error("sender", exc)
            finally:
                self._busy = False
            if self._closed and (not self._pending() or self._stall_since is not None):
                with self._lock:  # decide to exit where _start() can see it
                    if self._closed and (not self._pending() or self._stall_since is not None):
                        self._thread = None  # what is left waits in the journal, or for the next use
                        return

    def _drain_on_caller(self, deadline: Optional[float]) -> None:
        """No thread can be started (interpreter shutdown): deliver on the calling thread, within ``deadline``.

        Once the ledger fails, the caller does not try again (each try may cost it a
        request's timeout, at every event): what is queued goes to the journal, and
        what it records next follows it there.
        """
        with self._drain_lock:
            while self._pending():
                if (deadline is not None and time.monotonic() >= deadline) or self._handover:
                    return
                if self._stall_since is None:
                    self._pass()
                if self._stall_since is not None:
                    if self.journal is not None and (self._queue or self._units or self._starts):
                        self._move_to_journal()
                    return

    def _pass(self) -> None:
        """One round: starts, units left from before, the queue, then the journal.

        What is in memory is older than anything this process journaled (once
        spilling starts, new events go to the journal), so it goes first: else a
        session's end, spilled, would reach the ledger before its last queued events.
        """
        try:
            self._deliver_starts()
            self._deliver_units()
            self._build_units()  # a flood's first requests: the rest is built while they are in flight
            self._deliver_units()
            if self._spilling or (self.journal is not None and not self.journal.is_empty()):
                self._deliver_memory_first()
                self._deliver_journal()
        except _Stall as stall:
            self._stalled(stall.cause)
        except _Handover:
            return
        else:
            if self._stall_since is not None:
                logger.info("agent-ledger: the ledger answers again; delivering what waited")
            self._stall_since = None
            self._backoff = 0.0
            if not self._queue and not self._starts:
                self._bytes = 0  # drained: forget any update a thread switch lost on the agent's side

    def _stalled(self, cause: BaseException) -> None:
        now = time.monotonic()
        if self._stall_since is None:
            self._stall_since = now
            self._owner.warnings.warn(
                f"stall-{type(cause).__name__}",
                "agent-ledger: the ledger failed (%s); events wait in memory and are retried for %.0f s, "
                "then in the journal",
                describe_error(cause),
                self.retry_window,
            )
        self._backoff = min(MAX_BACKOFF, max(0.25, self._backoff * 2))
        if now - self._stall_since >= self.retry_window and self.journal is not None and not self._spilling:
            self._move_to_journal()
            logger.warning(
                "agent-ledger: the ledger has failed for %.0f s; queued events moved to the journal at %s",
                self.retry_window,
                self.journal.directory,
            )

    def _move_to_journal(self, in_flight: bool = False) -> None:
        """Write what memory holds to the journal.

        The first unit may have been sent already (a failed try, applied but not
        answered), or, with ``in_flight`` (no drain lock), be in a request right
        now, which the sender finishes: it is journaled with its own key, marked
        never to be merged with the records after it under another key.
        """
        journal = self.journal
        assert journal is not None
        with self._lock:
            self._spilling = True
            records: list[str] = []
            sending = self._units[0] if in_flight and self._units else None
            attempted = True
            while self._units:
                unit = self._units.popleft()
                self._unit_bytes -= unit.size
                if unit.kind == EVENT:
                    records.append(self._record(unit.handle, "e", unit.key, encoded=unit.encoded, attempted=attempted))
                else:
                    records.append(self._record(unit.handle, "x", unit.key, body=unit.body))
                attempted = False
            while self._queue:
                kind, handle, payload, size = self._queue.popleft()
                self._bytes = max(0, self._bytes - size)
                if kind == EVENT:
                    encoded = self._owner.pipeline.encode(payload)
                    if encoded is not None:
                        records.append(self._record(handle, "e", new_key(), encoded=[encoded]))
                else:
                    status, message = payload
                    records.append(
                        self._record(handle, "x", new_key(), body={"status": status, "errorMessage": message})
                    )
            if sending is not None:  # the sender pops it once its request ends
                self._units.appendleft(sending)
                self._unit_bytes += sending.size
            while self._starts and not in_flight:
                self._starts.popleft()
                self._bytes = max(0, self._bytes - HANDLE_BYTES)
            # Memory is older than anything this process journaled already: it goes ahead of it.
            if records and not journal.prepend(records):
                events = sum(1 for r in records if r.startswith('{"t":"e"'))
                self._lost(events, "the ledger is down and the journal is full (memory bound %d bytes)")

    # -- delivering -------------------------------------------------------

    def _deliver_starts(self) -> None:
        """Start the sessions waiting now; those that come meanwhile wait for the next look (between two
        requests), so that agent threads starting one after the other cannot hold back the events queued."""
        left = len(self._starts)
        while self._starts and left > 0:
            if self._handover:
                raise _Handover
            if left > 1 and self._stall_since is None:  # a failing ledger is probed with one request at a time
                tried = self._start_together(min(left, PARALLEL_STARTS))
                if tried:
                    left -= tried
                    continue
            left -= 1
            handle = self._starts[0]
            if handle._state == PENDING:
                self._ensure_started(handle)
            with self._lock:
                self._starts.popleft()
                self._bytes = max(0, self._bytes - HANDLE_BYTES)

    def _start_together(self, most: int) -> int:
        """Start the first ``most`` sessions waiting each on a thread of its own, at once; return how many.

        A start is a round trip, and with busy agent threads each return of the sender from its socket
        waits for the GIL: one after the other, sixteen starts took half a second; together, about one's
        time. Each start is its own request with its own key, so their order does not matter, but for a
        session started within another: it goes after its parent's (its start carries the id). Those that
        ended are taken off the front (a session whose start failed for good is failed); one that stalled
        stays, in its place, and the stall is raised as :meth:`_ensure_started` raises it. 0 if no thread
        could be started (interpreter shutdown): the caller starts them one at a time.
        """
        batch: list[SessionHandle] = []
        for handle in itertools.islice(self._starts, most):
            if handle.parent is not None and any(handle.parent is other for other in batch):
                break  # a child's start carries its parent's id: it waits for the next round
            batch.append(handle)
        if len(batch) < 2:
            return 0
        waiting = [handle for handle in batch if handle._state == PENDING]
        stalls: list[BaseException] = []

        def start(handle: SessionHandle) -> None:
            try:
                self._ensure_started(handle)
            except BaseException as exc:  # handed to the sender thread, which raises it
                stalls.append(exc)

        if len(waiting) > 1:
            threads = []
            for handle in waiting[1:]:
                thread = threading.Thread(target=start, args=(handle,), name="agent-ledger-start", daemon=True)
                try:
                    thread.start()
                except RuntimeError:  # the interpreter is shutting down: no new thread
                    break
                threads.append(thread)
            if not threads:
                return 0
            start(waiting[0])
            for thread in threads:
                thread.join()
        else:
            for handle in waiting:
                start(handle)
        with self._lock:
            kept = []
            for _ in batch:
                handle = self._starts.popleft()
                if handle._state == PENDING:
                    kept.append(handle)  # it stalled, or no thread was left to try it: it stays, in its place
                else:
                    self._bytes = max(0, self._bytes - HANDLE_BYTES)
            self._starts.extendleft(reversed(kept))
        if stalls:
            raise stalls[0]
        if kept:  # pragma: no cover - not tried: a thread could not start midway
            raise _Stall(RuntimeError("no thread to start a session"))
        return len(batch)

    def _ensure_started(self, handle: SessionHandle) -> Optional[str]:
        if handle._state != PENDING:
            return handle._id
        try:
            session_id, budgeted = self._io().start_session(handle.start_body(), SESSION_KEY_PREFIX + handle.key)
        except Exception as exc:
            if is_retryable(exc):
                raise _Stall(exc) from exc
            handle._fail()
            self._notify_started()
            self._owner.session_failed(handle, exc)
            return None
        handle._resolve(session_id, budgeted)
        self._notify_started()
        return session_id

    def _notify_started(self) -> None:
        with self._started_cond:
            self._started_cond.notify_all()

    def _build_units(self, most: int = BUILD_EVENTS) -> None:
        """Turn what is queued now (at most ``most`` items) into requests: per session, in order, batches of at
        most ``limit`` events.

        The limit grows with the queue's depth (``batch_size`` when it is shallow, for latency; up to
        ``MAX_BATCH_SIZE`` when it is deep), so a flood is sent in few requests; and a flood is built a few
        requests at a time, each while the one before is in flight (see :meth:`_deliver_while_building`).
        A session's last request built and not sent yet takes its next events, up to the limit: agents that
        take turns (threads, tasks) queue their events in runs of a thousand or so, and a flood built a few
        thousand items at a time still goes in full batches. The first request is never extended: it may be
        in flight, or have been tried (it goes again as it was, under its key).
        """
        queue = self._queue
        encode = self._owner.pipeline.encode
        limit = min(MAX_BATCH_SIZE, max(self.batch_size, len(queue)))
        depth = min(len(queue), most)
        # A session's batch: [the unit it extends (None: a new one), its new events, events in all, bytes in all,
        # the session].
        pending: dict[SessionHandle, list[Any]] = {}
        with self._lock:
            for unit in itertools.islice(self._units, 1, None):
                if (
                    unit.kind == EVENT
                    and unit.encoded is not None
                    and len(unit.encoded) < limit
                    and unit.size < MAX_BATCH_BYTES
                ):
                    pending[unit.handle] = [unit, [], len(unit.encoded), unit.size, unit.handle]
                else:
                    pending.pop(unit.handle, None)  # its end, or a full batch: the next events go after it
        built: list[Any] = []  # batches closed, and ends (units), in order
        released = 0
        last: Optional[SessionHandle] = None
        entry: list[Any] = []
        batch: list[str] = []
        # One pass takes what is queued now, so that a flood of new events cannot
        # hold back another session's partial batch (or a guardrail's answer).
        for _ in range(depth):
            if self._handover:
                break  # what is built so far becomes units; the rest stays queued, behind them
            try:
                kind, handle, payload, size = queue.popleft()
            except IndexError:  # journal_everything took the rest (a request of ours hung at exit)
                break
            released += size
            if kind == EVENT:
                encoded = encode(payload)
                if encoded is None:
                    continue
                if handle is not last:  # most runs of the queue are one session's: one lookup per run
                    found = pending.get(handle)
                    if found is None:
                        found = pending[handle] = [None, [], 0, 0, handle]
                    entry = found
                    batch = entry[1]
                    last = handle
                batch.append(encoded)
                entry[2] += 1
                entry[3] += len(encoded)
                if entry[2] >= limit or entry[3] >= MAX_BATCH_BYTES:
                    built.append(entry)
                    del pending[handle]
                    last = None
            else:
                found = pending.pop(handle, None)
                if found is not None:
                    built.append(found)
                if handle is last:
                    last = None
                status, message = payload
                built.append(_Unit(END, handle, new_key(), body={"status": status, "errorMessage": message}))
        built.extend(pending.values())
        with self._lock:
            self._bytes = max(0, self._bytes - released)
            units = self._units
            # Normally all still there: only journal_everything, at exit, takes units from under a build.
            growable = {id(unit) for unit in itertools.islice(units, 1, None)}
            for item in built:
                if type(item) is _Unit:
                    units.append(item)
                    continue
                unit, events, _, size, handle = item
                if not events:
                    continue  # a unit that took nothing new
                added = size if unit is None else size - unit.size
                if unit is not None and id(unit) in growable:
                    unit.encoded.extend(events)
                    unit.size = size
                else:
                    units.append(_Unit(EVENT, handle, new_key(), encoded=events, size=added))
                self._unit_bytes += added

    def _deliver_units(self) -> None:
        while self._units:
            if self._handover:
                raise _Handover
            if self._starts:
                self._deliver_starts()  # a session started meanwhile waits for one request, not for a flood
            unit = self._units[0]
            if unit.kind == EVENT and len(self._queue) >= OVERLAP_EVENTS and self._room_ahead():
                self._deliver_while_building(unit)
            else:
                self._deliver(unit)  # raises _Stall: the unit stays first, to be retried as it is
            with self._lock:
                self._units.popleft()
                self._unit_bytes -= unit.size

    def _room_ahead(self) -> bool:
        """True while fewer events are built behind the first unit than are worth building ahead: a request's
        worth for each session with one waiting, and one more (turn-taking sessions' requests fill up while
        they wait), up to ``LOOKAHEAD_EVENTS``. Not more: what is built ahead is encoded while the agent's
        threads want the GIL, and one session's next request is all it needs."""
        events = 0
        sessions = set()
        for unit in itertools.islice(self._units, 1, None):
            events += len(unit.encoded or ())
            sessions.add(unit.handle)
        return events < min(LOOKAHEAD_EVENTS, MAX_BATCH_SIZE * (len(sessions) + 1))

    def _deliver_while_building(self, unit: _Unit) -> None:
        """Deliver ``unit`` from a thread of its own while this one builds the next requests from the queue.

        Requests still go one at a time and in order: the next is sent once this one is answered, and an
        error is raised here as :meth:`_deliver` raises it (the unit stays first, the new ones after it).
        Only the encoding overlaps the ledger's time (a flood: up to 2,000 events a request each way).
        """
        failure: list[BaseException] = []
        sent = threading.Event()

        def deliver() -> None:
            try:
                self._deliver(unit, sent.set)
            except BaseException as exc:  # handed to the sender thread, which raises it
                failure.append(exc)
            finally:
                sent.set()

        request = threading.Thread(target=deliver, name="agent-ledger-request", daemon=True)
        try:
            request.start()
        except RuntimeError:  # the interpreter is shutting down: no new thread
            self._deliver(unit)
            return
        try:
            # Build once the request is written: each return of the request thread from its socket waits for
            # the GIL while this one encodes (up to the switch interval), and writing a request takes several.
            sent.wait(SENT_WAIT)
            self._build_units()
        finally:
            request.join()
        if failure:
            raise failure[0]

    def _deliver(self, unit: _Unit, on_sent: Optional[Callable[[], None]] = None) -> None:
        handle = unit.handle
        session_id = self._ensure_started(handle)
        if session_id is None:
            if unit.kind == EVENT:
                self._owner.events_orphaned(handle, len(unit.encoded or ()))
            return
        if unit.kind == END:
            assert unit.body is not None
            try:
                self._io().end_session(session_id, unit.body, unit.key)
            except Exception as exc:
                if is_retryable(exc):
                    raise _Stall(exc) from exc
                self._owner.end_failed(handle, exc)
            return
        assert unit.encoded is not None
        self._send(handle, session_id, unit.encoded, unit.key, on_sent)

    def _send(
        self,
        handle: SessionHandle,
        session_id: str,
        encoded: list[str],
        key: str,
        on_sent: Optional[Callable[[], None]] = None,
    ) -> None:
        try:
            answer = self._io().send_events(session_id, encoded, key, on_sent)
        except BudgetGuardrailError as exc:
            if len(encoded) > 1:
                # The ledger takes a batch whole or not at all: send one by one so that
                # only the refused calls are lost, and the latch holds the exact refusal.
                for position, event in enumerate(encoded):
                    self._send(handle, session_id, [event], f"{key}-{position}")
                return
            self._owner.send_failed(handle, encoded, exc)
        except APIStatusError as exc:
            if is_retryable(exc):
                raise _Stall(exc) from exc
            if exc.status_code in (400, 422):
                self._reject(handle, session_id, encoded, key, exc)
            else:
                self._owner.send_failed(handle, encoded, exc)
        except Exception as exc:
            if is_retryable(exc):
                raise _Stall(exc) from exc
            self._owner.send_failed(handle, encoded, exc)
        else:
            self._owner.sent(handle, encoded, answer)

    def _reject(
        self, handle: SessionHandle, session_id: str, encoded: list[str], key: str, exc: APIStatusError
    ) -> None:
        """The ledger refused the batch as invalid: drop exactly the bad events, send the rest."""
        rejected = _rejected_positions(exc, len(encoded))
        if rejected is None:
            if len(encoded) == 1:
                rejected = {0: str(exc)}
            else:
                for position, event in enumerate(encoded):
                    self._send(handle, session_id, [event], f"{key}-{position}")
                return
        pipeline = self._owner.pipeline
        for position, message in rejected.items():
            pipeline.reject(_describe_encoded(encoded[position]), f"the ledger refused it: {message}")
        rest = [event for position, event in enumerate(encoded) if position not in rejected]
        if rest:
            self._send(handle, session_id, rest, f"{key}-r")

    def _deliver_memory_first(self) -> None:
        """While spilling, what memory holds (left queued by a build, or behind an overlapped request) is older
        than what the journal took after it: it goes first, or a session's end could overtake its last events."""
        while self._queue and self._spilling:
            if self._handover:
                raise _Handover
            self._build_units(len(self._queue))
            self._deliver_units()
        self._deliver_units()

    def _deliver_journal(self) -> None:
        """Deliver the journal a window at a time, each window's records grouped by session (see _grouped).

        The ledger may have applied a request whose answer was lost, or that was
        made just before a crash: it is made again with the same records under the
        same key, for the window (the journal's) and the grouping (a function of
        the window's records) come out the same whoever reads them again.
        """
        journal = self.journal
        assert journal is not None
        while True:
            window = journal.read_window(JOURNAL_WINDOW_LINES, JOURNAL_WINDOW_BYTES)
            if window is None:
                with self._lock:
                    if journal.is_empty() and self._spilling:
                        self._spilling = False
                        logger.info("agent-ledger: the journal is delivered; events go through memory again")
                return
            # Spilling may have started since the last window (an older process's journal is slow to deliver):
            # this window may hold what this process spilled, newer than what it still has in memory.
            self._deliver_memory_first()
            ident = window.ident
            if self._journal_done is None or self._journal_done[0] != ident:
                self._journal_done = (ident, set())
            done = self._journal_done[1]
            heads = self._journal_heads
            if len(heads) > 10_000:
                heads.clear()
            records = []
            for line in window.lines:
                record = _parse(line, heads)
                if record is not None:
                    records.append(record)
            for head, key, encoded, session_id in _grouped(records):
                if key in done:
                    continue  # delivered before a failure made this window be read again
                if self._handover:
                    raise _Handover
                self._deliver_record(head, key, encoded, session_id)  # raises _Stall: the window is read again
                done.add(key)
            journal.consume_window(window)
            self._journal_done = None

    def _deliver_record(
        self, head: dict[str, Any], key: str, encoded: Optional[list[str]], session_id: Optional[str]
    ) -> None:
        session = str(head.get("k", ""))
        session_id = session_id or self._session_ids.get(session)
        if not session_id:
            start = head.get("s")
            if not isinstance(start, dict):
                self._owner.counters.add(dropped=len(encoded or ()))
                return  # its session could not be started when it was written: nothing to attach it to
            try:
                session_id, _ = self._io().start_session(start, SESSION_KEY_PREFIX + session)
            except Exception as exc:
                if is_retryable(exc):
                    raise _Stall(exc) from exc
                self._owner.counters.add(failed=len(encoded or ()))
                return
            if len(self._session_ids) > 100_000:
                self._session_ids.clear()
            self._session_ids[session] = session_id
        handle = _RecordHandle(str(head.get("a", "?")))
        kind = head.get("t")
        if kind == "x":
            body = head.get("b") or {}
            try:
                self._io().end_session(session_id, body, key)
            except Exception as exc:
                if is_retryable(exc):
                    raise _Stall(exc) from exc
            return
        if kind == "e" and encoded:
            self._send(handle, session_id, encoded, key)  # type: ignore[arg-type]


_ONE_EVENT = re.compile(r'\{"i":"([^"\\]*)","n":([0-9]{1,9}),"e":\[').match
_Parsed = tuple[dict[str, Any], str, Optional[list[str]]]  # a record's head, key, and encoded events


def _parse(line: str, heads: dict[str, dict[str, Any]]) -> Optional[_Parsed]:
    """A journal line as its head, key and encoded events; None if it is not a record.

    An event record is written as ``{"i":KEY,"n":LENGTH,"e":[EVENT],HEAD...}``
    (see Sender._record): the event is taken as written, and a head (the same for
    all of a session's records) parsed once. Anything else is parsed whole, and its
    events encoded again. Either way the same line gives the same result.
    """
    match = _ONE_EVENT(line)
    if match is not None:
        begin = match.end()
        end = begin + int(match.group(2))
        if line.startswith("],", end):
            rest = line[end + 2 :]
            head = heads.get(rest)
            if head is None:
                try:
                    head = json.loads("{" + rest)
                except ValueError:
                    head = None
                if isinstance(head, dict):
                    heads[rest] = head
            if isinstance(head, dict):
                return head, match.group(1), [line[begin:end]]
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    events = record.get("e")
    return record, str(record.get("i")), [dumps(event) for event in events] if isinstance(events, list) else None


def _grouped(records: list[_Parsed]) -> list[tuple[dict[str, Any], str, Optional[list[str]], Optional[str]]]:
    """A window's records as requests: each session's event records, in order, merged into batches.

    A session's batch takes its next event records (whatever other sessions'
    records lie between them) up to ``JOURNAL_GROUP_EVENTS`` events or
    ``JOURNAL_GROUP_BYTES`` bytes; its end, or a record sent before (``"r"``:
    the ledger may hold it under its own key), goes alone and closes the batch
    before it. Requests come in the order of their first records, so each
    session's come in its order. A batch's key is its first record's with
    ``-g<records>``; a record alone keeps its own. Each comes with the session's
    id if one of its records knows it.
    """
    groups: list[list[Any]] = []  # [head, first key, events, records, bytes, session id]
    open_batches: dict[str, list[Any]] = {}
    for head, key, encoded in records:
        session = str(head.get("k", ""))
        if head.get("t") == "e" and "r" not in head and encoded:
            size = sum(map(len, encoded))
            group = open_batches.get(session)
            if (
                group is not None
                and len(group[2]) + len(encoded) <= JOURNAL_GROUP_EVENTS
                and group[4] + size <= JOURNAL_GROUP_BYTES
            ):
                group[2].extend(encoded)
                group[3] += 1
                group[4] += size
                if group[5] is None:
                    group[5] = head.get("id")
                continue
            group = [head, key, list(encoded), 1, size, head.get("id")]
            open_batches[session] = group
        else:
            open_batches.pop(session, None)
            group = [head, key, encoded, 1, 0, head.get("id")]
        groups.append(group)
    return [
        (head, key if count == 1 else f"{key}-g{count}", encoded, session_id)
        for head, key, encoded, count, _, session_id in groups
    ]


class _RecordHandle:
    """What outcome reporting needs of a session known only from a journal record."""

    def __init__(self, agent_name: str) -> None:
        self.agent_name = agent_name


def _rejected_positions(exc: APIStatusError, count: int) -> Optional[dict[int, str]]:
    body = exc.body
    rejected = body.get("rejected") if isinstance(body, dict) else None
    if not isinstance(rejected, list) or not rejected:
        return None
    positions: dict[int, str] = {}
    for entry in rejected:
        if not isinstance(entry, dict):
            return None
        index = entry.get("index")
        if not isinstance(index, int) or not 0 <= index < count:
            return None
        positions[index] = str(entry.get("error") or exc)
    return positions


def _describe_encoded(encoded: str) -> str:
    try:
        event = json.loads(encoded)
    except ValueError:  # pragma: no cover
        return "an"
    return describe_event(event) if isinstance(event, dict) else "an"
