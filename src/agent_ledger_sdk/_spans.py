"""Spans: the id an event's call gets, the span it runs inside, and its start time.

A tool call's ``tool_call`` and ``tool_result`` share one ``spanId``; an LLM
call has its own; an event recorded while a tool runs carries that tool's span
as ``parentSpanId``. The current span travels in a ``ContextVar``, like the
current session, so it follows asyncio tasks and context-copying executors.
"""

from __future__ import annotations

import contextvars
import random
import time
from typing import Optional

# The span is kept as a 64-bit int on the agent's path; it is written as 16 hex digits where the event is encoded.
current_span_var: contextvars.ContextVar[Optional[int]] = contextvars.ContextVar(
    "agent_ledger_current_span", default=None
)

_getrandbits = random.getrandbits  # CPython reseeds the module's generator in a forked child


def new_span_id() -> int:
    """A 64-bit span id (never 0, as in OpenTelemetry); :func:`span_hex` writes it."""
    return _getrandbits(64) or 1


def span_hex(span: int) -> str:
    """16 hex digits, as OpenTelemetry span ids."""
    return f"{span:016x}"


wall_clock = time.time

_second: tuple[int, str] = (-1, "")  # the last second formatted, swapped as one tuple: thread-safe
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))  # the tail of every millisecond: half the cost of formatting it


def rfc3339(moment: float) -> str:
    """``moment`` (seconds since the epoch) as RFC 3339 UTC with milliseconds: ``2026-11-25T15:27:17.123Z``."""
    global _second
    seconds = int(moment)
    cached = _second
    if cached[0] != seconds:
        cached = _second = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    millis = int((moment - seconds) * 1000)
    if 0 <= millis < 1000:
        return cached[1] + _MILLIS[millis]
    return f"{cached[1]}.{millis:03d}Z"  # before 1970: as it always was written
