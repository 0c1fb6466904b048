"""Where the helpers' events go: inline, to the background sender, or to a test capture.

A :class:`Recorder` belongs to one client. It holds the helpers' settings,
the counters, the guardrail latch, and the sinks. Every telemetry fault is
caught here, logged (rate-limited) on the ``agent_ledger_sdk`` logger and
counted; only :class:`BudgetGuardrailError` is let through, and only from the
inline sink, whose caller can still act on it.
"""

from __future__ import annotations

import atexit
import contextvars
import datetime
import json
import os
import sys
import threading
import weakref
from collections.abc import Awaitable
from typing import Any, Callable, Optional, Protocol

from ._constants import CAPTURE_CONTENT_ENV, ENABLED_ENV, REDACTED
from ._events import encode_event
from ._exceptions import AgentLedgerError, BudgetGuardrailError
from ._session import SessionHandle
from ._stats import Counters, LedgerStats, RateLimitedWarnings, logger
from ._worker import DEFAULT_MAX_QUEUE_SIZE, END, START, BackgroundWorker

Redactor = Callable[[dict[str, Any]], dict[str, Any]]

# Seconds the exit hook waits, in all, for queued events to go out.
EXIT_FLUSH_TIMEOUT = 5.0
# Seconds ``close()`` waits for queued events to go out.
CLOSE_FLUSH_TIMEOUT = 5.0

_CONTENT_KEYS = ("prompt", "response", "toolInput", "toolOutput")


class SyncIO(Protocol):
    def start_session(self, agent_name: str) -> str: ...
    def _send_events(self, session_id: str, encoded_events: list[str]) -> None: ...
    def end_session(self, session_id: str, status: Any, *, error_message: Optional[str] = None) -> None: ...


class AsyncIO(Protocol):
    def start_session(self, agent_name: str) -> Awaitable[str]: ...
    def _send_events(self, session_id: str, encoded_events: list[str]) -> Awaitable[None]: ...
    def end_session(self, session_id: str, status: Any, *, error_message: Optional[str] = None) -> Awaitable[None]: ...


class Lazy:
    """A value computed when the event is sent, off the caller's hot path."""

    __slots__ = ("args", "function")

    def __init__(self, function: Callable[..., Any], *args: Any) -> None:
        self.function = function
        self.args = args

    def resolve(self) -> Any:
        return self.function(*self.args)


def env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


def utc_today() -> datetime.date:
    return datetime.datetime.now(datetime.timezone.utc).date()


class GuardrailLatch:
    """Agents whose budget guardrail tripped today (UTC): their next LLM call is stopped before it runs."""

    def __init__(self) -> None:
        self._tripped: dict[str, tuple[datetime.date, BudgetGuardrailError]] = {}

    def trip(self, agent_name: str, error: BudgetGuardrailError) -> None:
        self._tripped[agent_name] = (utc_today(), error)

    def clear(self, agent_name: Optional[str] = None) -> None:
        if agent_name is None:
            self._tripped.clear()
        else:
            self._tripped.pop(agent_name, None)

    def check(self, agent_name: str) -> None:
        """Raise :class:`BudgetGuardrailError` if ``agent_name`` is stopped for today."""
        if not self._tripped:
            return
        entry = self._tripped.get(agent_name)
        if entry is None:
            return
        day, error = entry
        if day != utc_today():
            self._tripped.pop(agent_name, None)
            return
        raise BudgetGuardrailError(
            f"Budget guardrail for agent {agent_name!r} tripped earlier today (UTC), so this LLM "
            f"call was stopped before it ran: {error.message.rstrip('.')}. It lifts at the next UTC midnight, "
            "or raise the limit and call ledger.reset_guardrail().",
            error.details,
        )


class Sink(Protocol):
    def start(self, handle: SessionHandle) -> None: ...
    async def astart(self, handle: SessionHandle) -> None: ...
    def emit(self, handle: SessionHandle, event: dict[str, Any]) -> None: ...
    async def aemit(self, handle: SessionHandle, event: dict[str, Any]) -> None: ...
    def end(self, handle: SessionHandle, status: str, message: Optional[str]) -> None: ...
    async def aend(self, handle: SessionHandle, status: str, message: Optional[str]) -> None: ...
    def wait_started(self, handle: SessionHandle, timeout: float) -> None: ...


def _event_loop_running() -> bool:
    # No asyncio imported means no event loop; this also keeps asyncio out of import time.
    module = sys.modules.get("asyncio")
    return module is not None and module._get_running_loop() is not None


class Recorder:
    """The helpers' state for one client."""

    def __init__(
        self,
        *,
        sync_io: Callable[[], SyncIO],
        async_io: Optional[AsyncIO],
        batching: bool,
        enabled: Optional[bool],
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
        capture_content: Optional[bool],
        redact: Optional[Redactor],
    ) -> None:
        self.enabled = env_flag(ENABLED_ENV, True) if enabled is None else enabled
        self.capture_content = env_flag(CAPTURE_CONTENT_ENV, True) if capture_content is None else capture_content
        self.redact = redact
        self.max_queue_size = max_queue_size
        self.counters = Counters()
        self.warnings = RateLimitedWarnings()
        self.latch = GuardrailLatch()
        self._sync_io = sync_io
        self._async_io = async_io
        self._worker: Optional[BackgroundWorker] = None
        self._worker_lock = threading.Lock()
        self.open_sessions: weakref.WeakSet[SessionHandle] = weakref.WeakSet()
        self.background = BackgroundSink(self)
        self.inline = InlineSink(self)
        self.default_sink: Sink = self.background if batching else self.inline
        self.on_fork: Optional[Callable[[], None]] = None
        _live_recorders.add(self)

    # -- background sender ----------------------------------------------

    @property
    def worker(self) -> BackgroundWorker:
        worker = self._worker
        if worker is None:
            with self._worker_lock:
                worker = self._worker
                if worker is None:
                    worker = self._worker = BackgroundWorker(_WorkerDelivery(self), max_queue_size=self.max_queue_size)
        return worker

    def stats(self) -> LedgerStats:
        c = self.counters
        queued = self._worker.queued if self._worker is not None else 0
        return LedgerStats(sent=c.sent, failed=c.failed, dropped=c.dropped, queued=queued)

    def flush(self, timeout: Optional[float]) -> int:
        return self._worker.flush(timeout) if self._worker is not None else 0

    def close(self, timeout: Optional[float] = CLOSE_FLUSH_TIMEOUT) -> int:
        left = self._worker.close(timeout) if self._worker is not None else 0
        if left:
            self.warnings.warn("close", "agent-ledger: %d queued events were not sent before close()", left)
        return left

    def after_fork(self) -> None:
        if self._worker is not None:
            self._worker.after_fork()
        self._worker_lock = threading.Lock()
        self.open_sessions = weakref.WeakSet()
        self.counters = Counters()  # the child's stats describe the child
        self.warnings = RateLimitedWarnings()
        if self.on_fork is not None:
            self.on_fork()

    # -- preparing events -------------------------------------------------

    def prepare(self, event: dict[str, Any]) -> Optional[str]:
        """The wire form (JSON) of a helper event, or None if redaction failed (never sent)."""
        for key, value in event.items():
            if isinstance(value, Lazy):
                event[key] = _resolve_lazy(value)
        if not self.capture_content:
            for key in _CONTENT_KEYS:
                if key in event:
                    event[key] = REDACTED
        if self.redact is not None:
            try:
                redacted = self.redact(event)
            except Exception as exc:
                self.warnings.warn("redact", "agent-ledger: redact= raised %r; the event was dropped, not sent", exc)
                return None
            if not isinstance(redacted, dict):
                self.warnings.warn(
                    "redact",
                    "agent-ledger: redact= returned %s, not a dict; the event was dropped",
                    type(redacted).__name__,
                )
                return None
            event = redacted
        return encode_event(event)

    def _prepare_batch(self, handle: SessionHandle, events: list[dict[str, Any]]) -> list[str]:
        if handle._id is None:
            self.counters.add(dropped=len(events))
            self.warnings.warn(
                "no-session",
                "agent-ledger: %d events of agent %r dropped: its session could not be started",
                len(events),
                handle.agent_name,
            )
            return []
        prepared = [p for p in map(self.prepare, events) if p is not None]
        if len(prepared) < len(events):
            self.counters.add(dropped=len(events) - len(prepared))
        return prepared

    # -- outcomes shared by the sync and async paths ---------------------

    def _started(self, handle: SessionHandle, session_id: Optional[str], exc: Optional[BaseException]) -> None:
        if exc is None and session_id is not None:
            handle._resolve(session_id)
            return
        handle._fail()
        self.warnings.warn(
            "start",
            "agent-ledger: could not start a session for agent %r (%s); its events will be dropped",
            handle.agent_name,
            _describe(exc),
        )

    def _sent(self, handle: SessionHandle, events: list[str]) -> None:
        self.counters.add(sent=len(events))
        if self.latch._tripped and any(json.loads(e).get("type") == "llm_call" for e in events):  # rare path
            self.latch.clear(handle.agent_name)  # the ledger accepts this agent's spend again

    def _send_failed(self, handle: SessionHandle, events: list[str], exc: BaseException) -> None:
        if isinstance(exc, BudgetGuardrailError):
            self.latch.trip(handle.agent_name, exc)
        self.counters.add(failed=len(events))
        self.warnings.warn(
            f"send-{type(exc).__name__}",
            "agent-ledger: %d events of agent %r were not recorded: %s",
            len(events),
            handle.agent_name,
            _describe(exc),
        )

    def _end_failed(self, handle: SessionHandle, exc: BaseException) -> None:
        self.warnings.warn(
            "end",
            "agent-ledger: could not end the session of agent %r: %s",
            handle.agent_name,
            _describe(exc),
        )

    # -- sync I/O ---------------------------------------------------------

    def start_now(self, handle: SessionHandle) -> None:
        try:
            session_id = self._sync_io().start_session(handle.agent_name)
        except Exception as exc:
            self._started(handle, None, exc)
        else:
            self._started(handle, session_id, None)

    def send_now(self, handle: SessionHandle, events: list[dict[str, Any]], *, raise_guardrail: bool) -> None:
        prepared = self._prepare_batch(handle, events)
        if not prepared:
            return
        assert handle._id is not None
        try:
            self._sync_io()._send_events(handle._id, prepared)
        except BudgetGuardrailError as exc:
            if len(prepared) > 1:
                # The ledger takes a batch whole or not at all: send one by one so that
                # only the refused calls are lost, and the latch holds the exact refusal.
                for event in prepared:
                    self._send_one(handle, event)
                return
            self._send_failed(handle, prepared, exc)
            if raise_guardrail:
                raise
        except Exception as exc:
            self._send_failed(handle, prepared, exc)
        else:
            self._sent(handle, prepared)

    def _send_one(self, handle: SessionHandle, event: str) -> None:
        assert handle._id is not None
        try:
            self._sync_io()._send_events(handle._id, [event])
        except Exception as exc:
            self._send_failed(handle, [event], exc)
        else:
            self._sent(handle, [event])

    def end_now(self, handle: SessionHandle, status: str, message: Optional[str]) -> None:
        if handle._id is None:
            return
        try:
            self._sync_io().end_session(handle._id, status, error_message=message)
        except Exception as exc:
            self._end_failed(handle, exc)

    # -- async I/O --------------------------------------------------------

    async def astart_now(self, handle: SessionHandle) -> None:
        if self._async_io is None:
            await _in_thread(self.start_now, handle)
            return
        try:
            session_id = await self._async_io.start_session(handle.agent_name)
        except Exception as exc:
            self._started(handle, None, exc)
        else:
            self._started(handle, session_id, None)

    async def asend_now(self, handle: SessionHandle, events: list[dict[str, Any]]) -> None:
        if self._async_io is None:
            await _in_thread(lambda: self.send_now(handle, events, raise_guardrail=True))
            return
        prepared = self._prepare_batch(handle, events)
        if not prepared:
            return
        assert handle._id is not None
        try:
            await self._async_io._send_events(handle._id, prepared)
        except Exception as exc:
            self._send_failed(handle, prepared, exc)
            if isinstance(exc, BudgetGuardrailError):
                raise
        else:
            self._sent(handle, prepared)

    async def aend_now(self, handle: SessionHandle, status: str, message: Optional[str]) -> None:
        if self._async_io is None:
            await _in_thread(self.end_now, handle, status, message)
            return
        if handle._id is None:
            return
        try:
            await self._async_io.end_session(handle._id, status, error_message=message)
        except Exception as exc:
            self._end_failed(handle, exc)


class _WorkerDelivery:
    """What the background worker calls: the recorder's sync I/O, guardrails latched, never raised."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    def start(self, handle: SessionHandle) -> None:
        self._recorder.start_now(handle)

    def send(self, handle: SessionHandle, events: list[dict[str, Any]]) -> None:
        self._recorder.send_now(handle, events, raise_guardrail=False)

    def end(self, handle: SessionHandle, status: str, message: Optional[str]) -> None:
        self._recorder.end_now(handle, status, message)

    def overflowed(self) -> None:
        recorder = self._recorder
        recorder.counters.add(dropped=1)
        recorder.warnings.warn(
            "overflow",
            "agent-ledger: the background queue is full (%d events); new events are being dropped. "
            "Is the ledger reachable?",
            recorder.worker.max_queue_size,
        )


class BackgroundSink:
    """Queue everything for the sender thread: the caller never waits for the network."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    def start(self, handle: SessionHandle) -> None:
        self._recorder.worker.submit_control(START, handle)

    async def astart(self, handle: SessionHandle) -> None:
        self.start(handle)

    def emit(self, handle: SessionHandle, event: dict[str, Any]) -> None:
        self._recorder.worker.submit_event(handle, event)

    async def aemit(self, handle: SessionHandle, event: dict[str, Any]) -> None:
        self._recorder.worker.submit_event(handle, event)

    def end(self, handle: SessionHandle, status: str, message: Optional[str]) -> None:
        self._recorder.worker.submit_control(END, handle, (status, message))

    async def aend(self, handle: SessionHandle, status: str, message: Optional[str]) -> None:
        self.end(handle, status, message)

    def wait_started(self, handle: SessionHandle, timeout: float) -> None:
        self._recorder.worker.flush(0)  # wake the sender now rather than at its next interval
        handle._ready.wait(timeout)


class InlineSink:
    """Send on the caller's thread (``batching=False``), except on a running event loop,
    which is never blocked: there the event goes to the background sender, and so do
    the rest of that session's events and its end, to keep them in order."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    def _to_background(self, handle: SessionHandle) -> bool:
        if handle._background or _event_loop_running():
            handle._background = True
            return True
        return False

    def start(self, handle: SessionHandle) -> None:
        if self._to_background(handle):
            self._recorder.background.start(handle)
        else:
            self._recorder.start_now(handle)

    async def astart(self, handle: SessionHandle) -> None:
        await self._recorder.astart_now(handle)

    def emit(self, handle: SessionHandle, event: dict[str, Any]) -> None:
        if self._to_background(handle):
            self._recorder.background.emit(handle, event)
        else:
            self._recorder.send_now(handle, [event], raise_guardrail=True)

    async def aemit(self, handle: SessionHandle, event: dict[str, Any]) -> None:
        if handle._background:
            self._recorder.background.emit(handle, event)
        else:
            await self._recorder.asend_now(handle, [event])

    def end(self, handle: SessionHandle, status: str, message: Optional[str]) -> None:
        if self._to_background(handle):
            self._recorder.background.end(handle, status, message)
        else:
            self._recorder.end_now(handle, status, message)

    async def aend(self, handle: SessionHandle, status: str, message: Optional[str]) -> None:
        if handle._background:
            self._recorder.background.end(handle, status, message)
        else:
            await self._recorder.aend_now(handle, status, message)

    def wait_started(self, handle: SessionHandle, timeout: float) -> None:
        handle._ready.wait(timeout)


async def _in_thread(function: Callable[..., Any], *args: Any) -> Any:
    import asyncio

    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(None, context.run, function, *args)


def _resolve_lazy(value: Lazy) -> Any:
    try:
        return value.resolve()
    except Exception as exc:
        return f"<could not capture: {type(exc).__name__}: {exc}>"


def _describe(exc: Optional[BaseException]) -> str:
    if exc is None:
        return "no session id in the response"
    if isinstance(exc, AgentLedgerError):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {exc!r}"


# -- process lifecycle: exit and fork ------------------------------------

_live_recorders: weakref.WeakSet[Recorder] = weakref.WeakSet()
# Set by agent_ledger_sdk.testing: while a capture is active, new sessions record into it.
capture_override: Optional[Sink] = None


def _at_exit() -> None:
    """End the sessions still open and send what is queued, within EXIT_FLUSH_TIMEOUT in all."""
    import time

    deadline = time.monotonic() + EXIT_FLUSH_TIMEOUT
    for recorder in list(_live_recorders):
        for handle in list(recorder.open_sessions):
            if not handle.ended:
                handle.ended = True
                recorder.background.end(handle, "error", "Session still open at interpreter exit")
        left = recorder.flush(max(0.0, deadline - time.monotonic()))
        if left:
            logger.warning("agent-ledger: %d events were not sent before the interpreter exited", left)


def _after_fork_in_child() -> None:
    for recorder in list(_live_recorders):
        recorder.after_fork()


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
