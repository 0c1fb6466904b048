"""Checks of what clients send to the local ledger, with messages that say what was wrong and how to fix it.

The API layer (``app.py``) calls :func:`check_session_context` on ``POST /v1/sessions``
and :func:`check_event` on each event of ``POST /v1/events``. An event check raises
:class:`Rejection` (one event's first problem) so that the caller can report every
bad event of a batch at once; values that convert without loss (``12.0`` tokens) are
converted instead of refused.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from decimal import Decimal
from typing import Any, Optional

from .._constants import MAX_EVENT_BYTES
from . import money
from .pricing import TokenUsage
from .records import PricedEvent, SessionContext, StoreError

MAX_SAFE_INTEGER = 2**53 - 1  # the largest integer every JSON reader keeps exact
MAX_TOKENS = 10**12  # per event: far above any model, far below what a sum of 10,000 events can overflow
MAX_USER_ID = 256
MAX_PARENT_SESSION_ID = 256
MAX_TAGS = 50
MAX_TAG = 100
MAX_METADATA_BYTES = 16 * 1024
MAX_SPAN_ID = 64
MAX_RESERVATION_ID = 100
TIMESTAMP_EXAMPLE = "2026-11-25T15:27:17.123Z"
LLM_COUNTS = ("tokensIn", "tokensOut")  # required on llm_call
LLM_OPTIONAL_COUNTS = ("cacheReadTokens", "cacheWriteTokens", "reasoningTokens")

_RFC3339_UTC = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:[Zz]|\+00:00)\Z")


class BadInput(StoreError):
    status = 400


class TooLarge(StoreError):
    status = 413


class Rejection(Exception):
    """One event's first problem: ``field`` is the event's offending key (None: the event as a whole)."""

    def __init__(self, field: Optional[str], message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.too_large = too_large


class EventsRejected(StoreError):
    """Some events of a batch were bad: the batch is refused whole, and every bad event is listed."""

    def __init__(self, rejections: list[tuple[int, Rejection]]) -> None:
        oversized = [(i, r) for i, r in rejections if r.too_large]
        self.status = 413 if oversized else 400
        super().__init__((oversized or rejections)[0][1].message)
        self.rejected = [{"index": i, "field": r.field, "error": r.message} for i, r in rejections]


# -- helpers -------------------------------------------------------------------


def compact_json(value: Any) -> str:
    """The compact JSON the ledger stores; ValueError on NaN or Infinity."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def shown(value: Any, width: int = 60) -> str:
    """``value`` for an error message: as JSON would spell it, and short."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, str) and len(value) > width:
        return f"a string of {len(value)} characters"
    text = repr(value)
    return text if len(text) <= width else f"{json_type(value)} ({text[: width - 3]}...)"


def non_finite_path(value: Any, path: str) -> Optional[str]:
    """Where NaN or Infinity sits in a parsed JSON value (``path.key[2]``), or None."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return where
        if isinstance(item, dict):
            stack.extend((v, f"{where}.{k}") for k, v in reversed(list(item.items())))
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in reversed(list(enumerate(item))))
    return None


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _count(where: str, name: str, value: Any, limit: int) -> int:
    """A non-negative integer count; an integral float (12.0) becomes an int."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit:
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise Rejection(
            name, f"{where}.{name} must be a non-negative integer; got {shown(value)}, which JSON cannot carry."
        )
    raise Rejection(
        name,
        f"{where}.{name} must be a non-negative integer (a number, not a string) of at most {limit}, "
        f"e.g. 12; got {shown(value)}.",
    )


def _timestamp(where: str, name: str, value: Any) -> None:
    match = _RFC3339_UTC.match(value) if isinstance(value, str) and len(value) <= 40 else None
    if match is not None:
        year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
        try:
            datetime.datetime(year, month, day, hour, minute, second)
        except ValueError:
            match = None
    if match is None:
        raise Rejection(
            name,
            f'{where}.{name} must be an RFC 3339 timestamp in UTC, such as "{TIMESTAMP_EXAMPLE}"; got {shown(value)}.',
        )


def _short_string(where: str, name: str, value: Any, limit: int, what: str) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= limit:
        raise Rejection(
            name, f"{where}.{name} must be a string of 1 to {limit} characters ({what}); got {shown(value)}."
        )


# -- events --------------------------------------------------------------------


def check_event(position: int, event: Any) -> PricedEvent:
    """``events[position]`` checked and normalised, not yet priced; raises :class:`Rejection`."""
    where = f"events[{position}]"
    if not isinstance(event, dict):
        raise Rejection(None, f"{where} must be a JSON object, got {json_type(event)}.")
    kind = event.get("type")
    if not isinstance(kind, str) or not kind:
        raise Rejection("type", f'{where}.type is required: a string such as "llm_call", "tool_call" or "tool_result".')
    fixed: dict[str, Any] = {}
    if event.get("stepIndex") is not None:
        fixed["stepIndex"] = _count(where, "stepIndex", event["stepIndex"], MAX_SAFE_INTEGER)
    latency = event.get("latencyMs")
    if latency is not None and (not is_number(latency) or not math.isfinite(latency) or latency < 0):
        raise Rejection(
            "latencyMs",
            f"{where}.latencyMs must be a non-negative number of milliseconds (finite: not NaN or Infinity); "
            f"got {shown(latency)}.",
        )
    if event.get("startedAt") is not None:
        _timestamp(where, "startedAt", event["startedAt"])
    for name, what in (("spanId", "an id you choose for this span"), ("parentSpanId", "the spanId of its parent")):
        if event.get(name) is not None:
            _short_string(where, name, event[name], MAX_SPAN_ID, what)
    if kind == "llm_call":
        for name in ("provider", "model"):
            value = event.get(name)
            if not isinstance(value, str) or not value:
                raise Rejection(name, f"{where}.{name} is required for an llm_call: a non-empty string.")
        for name in LLM_COUNTS:
            fixed[name] = _count(where, name, event.get(name), MAX_TOKENS)
        for name in LLM_OPTIONAL_COUNTS:
            if event.get(name) is not None:
                fixed[name] = _count(where, name, event[name], MAX_TOKENS)
        cached = fixed.get("cacheReadTokens", 0) + fixed.get("cacheWriteTokens", 0)
        if cached > fixed["tokensIn"]:
            raise Rejection(
                "cacheReadTokens" if fixed.get("cacheReadTokens") else "cacheWriteTokens",
                f"{where}: cacheReadTokens + cacheWriteTokens ({cached}) exceed tokensIn ({fixed['tokensIn']}). "
                "tokensIn counts every input token, the cached ones included (OpenAI's prompt_tokens; for "
                "Anthropic, input_tokens + cache_read_input_tokens + cache_creation_input_tokens).",
            )
        if event.get("reservationId") is not None:
            _short_string(
                where,
                "reservationId",
                event["reservationId"],
                MAX_RESERVATION_ID,
                "the id POST /v1/reservations returned",
            )
        if event.get("usageMissing") is not None and not isinstance(event["usageMissing"], bool):
            raise Rejection(
                "usageMissing", f"{where}.usageMissing must be true or false; got {shown(event['usageMissing'])}."
            )
    # 12.0 tokens were converted to 12: store what was meant.
    payload = {**event, **fixed} if any(type(event[name]) is not int for name in fixed) else event
    try:
        encoded = compact_json(payload)
    except ValueError:
        for name, value in payload.items():
            path = non_finite_path(value, f"{where}.{name}")
            if path is not None:
                raise Rejection(
                    name, f"{path} is NaN or Infinity, which JSON cannot carry; send null or a string instead."
                ) from None
        raise  # pragma: no cover - json.dumps refuses nothing else in a parsed JSON value
    size = len(encoded.encode("utf-8"))
    if size > MAX_EVENT_BYTES:
        raise Rejection(
            None,
            f"{where} is {size} bytes; the limit is {MAX_EVENT_BYTES} per event. Truncate large prompts or "
            "outputs (the agent-ledger-sdk client does this for you).",
            too_large=True,
        )
    checked = PricedEvent(payload=payload, type=kind, step_index=fixed.get("stepIndex"), encoded=encoded)
    if kind == "llm_call":
        checked.tokens_in, checked.tokens_out = fixed["tokensIn"], fixed["tokensOut"]
        checked.provider, checked.model = event["provider"], event["model"]
        checked.reservation_id = event.get("reservationId")
        checked.usage_missing = event.get("usageMissing") is True
    return checked


def usage_of(checked: PricedEvent) -> TokenUsage:
    """The token usage of a checked llm_call, as the price book wants it."""
    payload = checked.payload
    return TokenUsage(
        tokens_in=checked.tokens_in,
        tokens_out=checked.tokens_out,
        cache_read_tokens=int(payload.get("cacheReadTokens") or 0),
        cache_write_tokens=int(payload.get("cacheWriteTokens") or 0),
    )


# -- sessions ------------------------------------------------------------------


def _optional_id(body: dict[str, Any], name: str, limit: int, example: str) -> Optional[str]:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= limit:
        raise BadInput(
            f'"{name}" must be a string of 1 to {limit} characters, e.g. {{"{name}": "{example}"}}, '
            f"or left out; got {shown(value)}."
        )
    return value


def _tags(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadInput(
            f'"tags" must be a list of strings, e.g. {{"tags": ["prod", "refunds"]}}; got {json_type(value)}.'
        )
    for position, tag in enumerate(value):
        if not isinstance(tag, str) or not tag.strip() or len(tag) > MAX_TAG:
            raise BadInput(
                f'"tags[{position}]" must be a non-empty string of at most {MAX_TAG} characters; got {shown(tag)}.'
            )
    distinct = tuple(dict.fromkeys(value))  # a repeated tag says nothing more: keep the first
    if len(distinct) > MAX_TAGS:
        raise BadInput(f'"tags" holds {len(distinct)} distinct tags; the limit is {MAX_TAGS}. Send fewer tags.')
    return distinct


def _metadata(value: Any) -> Optional[dict[str, Any]]:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadInput(
            f'"metadata" must be a JSON object, e.g. {{"metadata": {{"plan": "pro"}}}}; got {json_type(value)}.'
        )
    try:
        size = len(compact_json(value).encode("utf-8"))
    except ValueError:
        raise BadInput(
            f"{non_finite_path(value, 'metadata')} is NaN or Infinity, which JSON cannot carry; "
            "send null or a string instead."
        ) from None
    if size > MAX_METADATA_BYTES:
        raise BadInput(
            f'"metadata" is {size} bytes as compact JSON; the limit is {MAX_METADATA_BYTES}. '
            "Keep large data in events, and ids or labels here."
        )
    return value


def check_session_context(body: dict[str, Any]) -> SessionContext:
    """The optional ``userId``, ``tags``, ``metadata``, ``parentSessionId``, ``maxCostUsd`` and ``warnAtPercent``."""
    return SessionContext(
        user_id=_optional_id(body, "userId", MAX_USER_ID, "user-42"),
        tags=_tags(body.get("tags")),
        metadata=_metadata(body.get("metadata")),
        parent_session_id=_optional_id(body, "parentSessionId", MAX_PARENT_SESSION_ID, "the id of the parent session"),
        max_cost_usd=usd_amount(body, "maxCostUsd", "a cap on what the session may spend", nullable=True),
        warn_at_percent=warn_percent(body, nullable=True),
    )


# -- amounts -------------------------------------------------------------------


def usd_amount(body: dict[str, Any], name: str, what: str, *, nullable: bool) -> Optional[Decimal]:
    """``body[name]``: a finite, non-negative number of US dollars (exact), or None when absent or null."""
    value = body.get(name)
    if value is None:
        return None
    if not is_number(value) or not math.isfinite(value) or value < 0:
        also = ", or null" if nullable else ""
        raise BadInput(
            f'"{name}" must be a non-negative number of US dollars ({what}), e.g. {{"{name}": 5}}{also}; '
            f"got {shown(value)}."
        )
    return money.exact(value)


def warn_percent(body: dict[str, Any], *, nullable: bool) -> Optional[Decimal]:
    """``body["warnAtPercent"]``: a number above 0 and at most 100, or None when absent or null."""
    value = body.get("warnAtPercent")
    if value is None:
        return None
    if not is_number(value) or not math.isfinite(value) or not 0 < value <= 100:
        also = ", or null for no warning" if nullable else ""
        raise BadInput(
            f'"warnAtPercent" must be a number above 0 and at most 100 (the share of the limit at which the '
            f'ledger records a budget_warning), e.g. {{"warnAtPercent": 80}}{also}; got {shown(value)}.'
        )
    return money.exact(value)
