"""From an event the helpers built to the JSON the ledger receives: processors, checks, encoding.

The helpers build each event on the caller's thread with its values already
snapshotted (``_snapshot``); everything here runs where the event is
delivered: on the sender thread in the background, at once inline or under a
test capture. In order:

1. ``startedAt`` is written as RFC 3339 (the helpers keep the cheap float);
2. the capture switch replaces content (prompt, response, tool input and
   output) with a marker when content capture is off;
3. the user's ``redact`` hook shapes the event (it may drop it by returning None);
4. the event is checked: lossless coercions (``12.0`` tokens -> 12) are
   applied, and an event still wrong is rejected alone, logged with the field
   and the fix;
5. it is encoded once: JSON-safe, and at most 64 KB.

A processor that raises never reaches the user's code: the event is dropped
(never sent unredacted), counted and logged.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Optional

from ._constants import REDACTED
from ._events import check_event, describe_event, encode_event_exact
from ._spans import rfc3339, span_hex
from ._stats import Counters, RateLimitedWarnings

if TYPE_CHECKING:
    from ._otel import OtelBridge

Redactor = Callable[[dict[str, Any]], Optional[dict[str, Any]]]

CONTENT_KEYS = ("prompt", "response", "toolInput", "toolOutput", "toolCalls")  # toolCalls: the model's arguments
# An event queued before it was complete: this key holds a Lazy that fills the event in, here
# (off the agent's thread), from what the caller handed over. See integrations/_calls.py.
COMPLETE_KEY = "\x00complete"


class Pipeline:
    """The processors and the encoder of one client's events."""

    def __init__(
        self,
        *,
        capture_content: bool,
        redact: Optional[Redactor],
        counters: Counters,
        warnings: RateLimitedWarnings,
    ) -> None:
        self.capture_content = capture_content
        self.redact = redact
        self.counters = counters
        self.warnings = warnings
        self._last: tuple[float, str, int, str] = (math.nan, "", -1, "")  # the last start and span written (NaN: none)
        # The client's OpenTelemetry spans, if it makes them: each encoded event is shown to them as the
        # ledger will receive it (capture switch and redaction applied), so that they need not parse it.
        self.spans: Optional[OtelBridge] = None

    def encode(self, event: dict[str, Any]) -> Optional[str]:
        """The wire form of ``event``, or None if a processor dropped it or it is invalid (counted and logged)."""
        if COMPLETE_KEY in event:
            event.pop(COMPLETE_KEY).resolve()
        # A call's two events (tool_call, tool_result) share their start and span, and are
        # usually encoded one after the other: the last ones written are kept (one tuple, swapped whole).
        started = event.get("startedAt")
        span = event.get("spanId")
        last = self._last
        if type(started) is float:
            if started == last[0]:
                event["startedAt"] = last[1]
            else:
                text = rfc3339(started)
                event["startedAt"] = text
                last = self._last = (started, text, last[2], last[3])
        if type(span) is int:
            if span == last[2]:
                event["spanId"] = last[3]
            else:
                text = span_hex(span)
                event["spanId"] = text
                self._last = (last[0], last[1], span, text)
        parent = event.get("parentSpanId")
        if type(parent) is int:
            event["parentSpanId"] = span_hex(parent)
        if not self.capture_content:
            for key in CONTENT_KEYS:
                if key in event:
                    event[key] = REDACTED
        if self.redact is not None:
            redacted = self._redact(event)
            if redacted is None:
                return None
            event = redacted
        problem = check_event(event)
        if problem is not None:
            self.reject(describe_event(event), problem)
            return None
        text, exact = encode_event_exact(event)
        if self.spans is not None and type(span) is int:
            self.spans.encoded(span, event if exact else None, text)
        return text

    def reject(self, what: str, problem: str) -> None:
        self.counters.add(rejected=1)
        self.warnings.warn(
            f"rejected-{problem.split(' ', 1)[0]}",
            "agent-ledger: the %s event was not recorded: %s",
            what,
            problem,
        )

    def _redact(self, event: dict[str, Any]) -> Optional[dict[str, Any]]:
        assert self.redact is not None
        try:
            redacted = self.redact(event)
        except Exception as exc:
            self.counters.add(dropped=1)
            self.warnings.warn("redact", "agent-ledger: redact= raised %r; the event was dropped, not sent", exc)
            return None
        if redacted is None:
            self.counters.add(dropped=1)  # the hook chose to drop it
            return None
        if not isinstance(redacted, dict):
            self.counters.add(dropped=1)
            self.warnings.warn(
                "redact",
                "agent-ledger: redact= returned %s, not a dict; the event was dropped",
                type(redacted).__name__,
            )
            return None
        return redacted
