"""The helpers of the published 0.0.6 client: ``StepCounter``, ``run_session``, ``instrument_tool``.

They keep their published behaviour. New code is better served by
``@ledger.session``, ``@ledger.tool`` and ``ledger.llm_call``, which number
steps and time calls by themselves.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

from ._exceptions import AgentLedgerError, BudgetGuardrailError
from ._stats import logger

if TYPE_CHECKING:
    from ._client import AgentLedgerClient

T = TypeVar("T")


class StepCounter:
    """A thread-safe ``stepIndex`` counter: ``next()`` returns 0, 1, 2, ...

    ```python
    steps = StepCounter()
    assert steps.next() == 0 and steps.peek() == 1
    ```
    """

    def __init__(self, value: int = 0) -> None:
        self._lock = threading.Lock()
        self._value = value

    @property
    def value(self) -> int:
        """The value the next ``next()`` returns (the published dataclass field)."""
        return self._value

    @value.setter
    def value(self, value: int) -> None:
        with self._lock:
            self._value = value

    def __repr__(self) -> str:
        return f"StepCounter(value={self._value})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StepCounter) and other._value == self._value

    __hash__ = None  # type: ignore[assignment]  # mutable, like the published dataclass

    def next(self) -> int:
        """Return the current value and advance."""
        with self._lock:
            value = self._value
            self._value += 1
            return value

    def peek(self) -> int:
        """The value the next ``next()`` returns."""
        return self._value

    def reset(self, value: int = 0) -> None:
        """Start counting again from ``value``."""
        with self._lock:
            self._value = value


@contextmanager
def run_session(
    ledger: AgentLedgerClient, agent_name: str, *, error_message: Optional[str] = None
) -> Iterator[tuple[str, StepCounter]]:
    """Start a session, yield ``(session_id, steps)``, and end it however the block ends.

    The session ends with ``success``, or with ``error`` and ``error_message``
    (default: the exception's text) when the block raises; the exception is
    re-raised. A failure to end the session never replaces the block's exception.
    """
    session_id = ledger.start_session(agent_name)
    steps = StepCounter()
    try:
        yield session_id, steps
    except BaseException as exc:
        try:
            ledger.end_session(
                session_id, "error", error_message=error_message if error_message is not None else str(exc)
            )
        except Exception:
            logger.warning("agent-ledger: could not end session %s", session_id, exc_info=True)
        raise
    _quietly(ledger.end_session, session_id, "success")


def _quietly(call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """A telemetry call whose failure is logged, not raised; a budget guardrail still stops the agent."""
    try:
        call(*args, **kwargs)
    except BudgetGuardrailError:
        raise
    except AgentLedgerError as exc:
        logger.warning("agent-ledger: %s failed: %s", getattr(call, "__name__", "call"), exc)


def instrument_tool(
    *,
    ledger: AgentLedgerClient,
    session_id: str,
    step_index: int,
    tool_name: str,
    tool_input: Any,
    run: Callable[[], T],
) -> T:
    """Log ``tool_call``, run ``run()``, log ``tool_result`` with ``latencyMs``; return its result.

    If ``run()`` raises, ``tool_result`` carries ``toolOutput={"error": str(exc)}``
    and the exception is re-raised. Unlike the published helper, a telemetry
    fault is logged instead of raised; a budget guardrail still raises.
    """
    _quietly(
        ledger.log_tool_call, session_id, {"stepIndex": step_index, "toolName": tool_name, "toolInput": tool_input}
    )
    started = time.perf_counter()

    def log_result(output: Any) -> None:
        latency_ms = int((time.perf_counter() - started) * 1000)
        result = {"stepIndex": step_index, "toolName": tool_name, "toolOutput": output, "latencyMs": latency_ms}
        _quietly(ledger.log_tool_result, session_id, result)

    try:
        output = run()
    except Exception as exc:
        log_result({"error": str(exc)})
        raise
    log_result(output)
    return output
