"""Test your agent's instrumentation without HTTP: capture what the helpers would send.

```python
from agent_ledger_sdk import AgentLedgerClient
from agent_ledger_sdk.testing import capture

ledger = AgentLedgerClient(api_key="test")

@ledger.tool
def add(a: int, b: int) -> int:
    return a + b

@ledger.session("calculator")
def run() -> int:
    return add(2, 3)

with capture() as captured:
    run()

assert captured.sessions[0].status == "success"
assert [e["type"] for e in captured.events] == ["tool_call", "tool_result"]
assert captured.events[0]["toolInput"] == {"a": 2, "b": 3}
```

With pytest, the ``ledger_capture`` fixture does the same, and ``local_ledger``
gives a test a real local ledger that every client records into, including a
module-level ``ledger = AgentLedgerClient()`` made before the test (this
module is a pytest plugin, registered when the package is installed). Under
the plugin, an internal error of the SDK (a bug it caught so that your code
carried on) fails the test that met it.

The capture behaves like production: values are snapshotted when the call
starts or returns, and each event goes through the same processors,
checks and JSON encoding as one sent to a ledger. It is also encoded as
late as a client's sender thread could encode it: when the test reads what
was captured (``events``, ``sessions``, ``session()``, ``events_of()``) or
the block ends, not when the call returns. So a value your code changes after
a call, which the SDK failed to copy, shows up here as it would in a ledger.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Optional

from . import _instrumentation, _stats
from ._session import SessionHandle

__all__ = ["Capture", "CapturedSession", "capture"]


@dataclass
class CapturedSession:
    """A session the helpers started while capturing, and the events they recorded in it."""

    id: str
    agent_name: str
    status: Optional[str] = None
    error_message: Optional[str] = None
    _events: list[dict[str, Any]] = field(default_factory=list, repr=False)
    _capture: Optional[Capture] = field(default=None, repr=False, compare=False)

    @property
    def events(self) -> list[dict[str, Any]]:
        """The session's events, in record order (encoding what is still pending first)."""
        if self._capture is not None:
            self._capture.deliver()
        return self._events

    @property
    def ended(self) -> bool:
        return self.status is not None


class Capture:
    """What :func:`capture` collected: ``sessions`` in start order, ``events`` in record order.

    Events are kept as the helpers built them and encoded, in record order, when
    they are read or the block ends: what a client's sender thread does some
    time after the call, never on the caller's thread as the call returns.
    """

    def __init__(self) -> None:
        self._sessions: list[CapturedSession] = []
        self._events: list[dict[str, Any]] = []
        self._pending: deque[tuple[SessionHandle, Optional[CapturedSession], dict[str, Any]]] = deque()
        self._by_handle: dict[int, CapturedSession] = {}
        self._lock = threading.RLock()  # an encoding can emit (a processor that logs through the SDK)
        self._ids = itertools.count(1)

    @property
    def sessions(self) -> list[CapturedSession]:
        self.deliver()
        return self._sessions

    @property
    def events(self) -> list[dict[str, Any]]:
        self.deliver()
        return self._events

    def events_of(self, type: str) -> list[dict[str, Any]]:
        """The captured events of one ``type``."""
        return [event for event in self.events if event.get("type") == type]

    def session(self, agent_name: str) -> CapturedSession:
        """The first captured session of ``agent_name``."""
        for captured in self.sessions:
            if captured.agent_name == agent_name:
                return captured
        raise LookupError(
            f"no session of agent {agent_name!r} was captured; agents seen: "
            f"{sorted({s.agent_name for s in self._sessions})}"
        )

    def clear(self) -> None:
        with self._lock:
            self._sessions.clear()
            self._events.clear()
            self._pending.clear()
            self._by_handle.clear()

    def deliver(self) -> None:
        """Encode the events still pending, as a client's sender would (reading them does this)."""
        with self._lock:
            pending = self._pending
            while pending:  # one at a time: an encoding that raises leaves the rest pending
                self._encode(*pending.popleft())

    def _encode(self, handle: SessionHandle, captured: Optional[CapturedSession], event: dict[str, Any]) -> None:
        encoded = handle._instrumentation.pipeline.encode(event)
        if encoded is None:
            return
        prepared = json.loads(encoded)
        if captured is not None:
            captured._events.append(prepared)
        self._events.append(prepared)
        otel = handle._otel
        if otel is not None:  # what a ledger's acceptance tells the OpenTelemetry spans, without a price
            otel.delivered(handle, [encoded], None)

    # -- the sink ---------------------------------------------------------

    def start(self, handle: SessionHandle) -> None:
        with self._lock:
            captured = CapturedSession(id=f"captured-{next(self._ids)}", agent_name=handle.agent_name, _capture=self)
            self._sessions.append(captured)
            self._by_handle[id(handle)] = captured
        handle._resolve(captured.id)

    async def astart(self, handle: SessionHandle) -> None:
        self.start(handle)

    def emit(self, handle: SessionHandle, event: dict[str, Any], size: int = 0) -> None:
        with self._lock:
            self._pending.append((handle, self._by_handle.get(id(handle)), event))

    async def aemit(self, handle: SessionHandle, event: dict[str, Any], size: int = 0) -> None:
        self.emit(handle, event, size)

    def end(self, handle: SessionHandle, status: str, message: Optional[str]) -> None:
        with self._lock:
            captured = self._by_handle.get(id(handle))
            if captured is not None:
                captured.status = status
                captured.error_message = message

    async def aend(self, handle: SessionHandle, status: str, message: Optional[str]) -> None:
        self.end(handle, status, message)

    def wait_started(self, handle: SessionHandle, timeout: float) -> None:
        pass


@contextmanager
def capture() -> Iterator[Capture]:
    """Record, in memory, every session the helpers start inside the block, of any client.

    Nothing is sent over HTTP, also by the module-level helpers with no key
    configured. A client made with ``enabled=False`` stays a pass-through and
    records nothing; sessions started before the block are not captured.
    """
    captured = Capture()
    previous = _instrumentation.capture_override
    _instrumentation.capture_override = captured
    try:
        yield captured
    finally:
        _instrumentation.capture_override = previous
        captured.deliver()  # as a client's flush at exit: what was recorded is encoded now


try:
    import pytest
except ImportError:  # pragma: no cover - the fixture is only for pytest users
    pass
else:

    @pytest.fixture
    def ledger_capture() -> Iterator[Capture]:
        """A :class:`Capture` of what the agent_ledger_sdk helpers record during the test."""
        with capture() as captured:
            yield captured

    @pytest.fixture
    def local_ledger(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
        """A real local ledger on 127.0.0.1 for one test (needs the server extra).

        Yields an ``agent_ledger_sdk.local.LocalLedger``: ``.client()``, ``.url``,
        ``.api_key``, ``.flush()``, ``.session(id)``, ``.sessions()``, ``.set_budget(agent, usd)``.
        While the test runs, the sessions of *every* client (also one made at
        import time, before the test) record into it, and the environment
        (``AGENT_LEDGER_API_KEY``, ``AGENT_LEDGER_BASE_URL``) points at it.
        """
        from .local import run

        with run(db=tmp_path / "ledger.db") as ledger:
            for name, value in ledger.env().items():
                monkeypatch.setenv(name, value)
            with ledger.redirect():
                yield ledger

    @pytest.fixture(autouse=True)
    def _agent_ledger_internal_errors() -> Iterator[None]:
        """Fail the test if the SDK met an internal error (a bug it caught so that the user's code carried on)."""
        collected: list[str] = []
        previous, _stats.internal_errors = _stats.internal_errors, collected
        try:
            yield
        finally:
            _stats.internal_errors = previous
        if collected:
            pytest.fail("agent-ledger internal error(s) during the test: " + "; ".join(collected))
