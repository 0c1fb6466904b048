"""Building and checking the events sent to ``POST /v1/events``.

The API expects camelCase keys (see the published README's event schema).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Optional

from ._constants import MAX_EVENT_BYTES, MAX_VALUE_DEPTH
from ._serialization import dumps, encode, fit_event, json_safe

LLM_CALL = "llm_call"
TOOL_CALL = "tool_call"
TOOL_RESULT = "tool_result"

REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    LLM_CALL: ("stepIndex", "model", "provider", "prompt", "response", "tokensIn", "tokensOut", "latencyMs"),
    TOOL_CALL: ("stepIndex", "toolName", "toolInput"),
    TOOL_RESULT: ("stepIndex", "toolName", "toolOutput", "latencyMs"),
}

# snake_case spellings people write by habit (the published README once did).
KNOWN_SNAKE_KEYS = {
    "step_index": "stepIndex",
    "tokens_in": "tokensIn",
    "tokens_out": "tokensOut",
    "latency_ms": "latencyMs",
    "tool_name": "toolName",
    "tool_input": "toolInput",
    "tool_output": "toolOutput",
    "session_id": "sessionId",
    "error_message": "errorMessage",
    "cache_read_tokens": "cacheReadTokens",
    "cache_write_tokens": "cacheWriteTokens",
    "reasoning_tokens": "reasoningTokens",
    "started_at": "startedAt",
    "span_id": "spanId",
    "parent_span_id": "parentSpanId",
}

# Whole-number fields: a lossless float (12.0) or digit string ("12") is coerced, anything else rejected.
COUNT_FIELDS = ("stepIndex", "tokensIn", "tokensOut", "cacheReadTokens", "cacheWriteTokens", "reasoningTokens")
_TOKEN_FIELDS = frozenset(COUNT_FIELDS[1:])  # a tool event has none: only its step is checked
_STEP_FIELD = COUNT_FIELDS[:1]
_COUNT_HINTS = {
    "stepIndex": "leave it out and the helpers number steps for you",
    "tokensIn": "pass the usage the provider returned, e.g. tokens_in=response.usage.prompt_tokens",
    "tokensOut": "pass the usage the provider returned, e.g. tokens_out=response.usage.completion_tokens",
}

_camel_cache: dict[str, str] = {}
_ABSENT = object()


def camel_case(name: str) -> str:
    """``tokens_in`` -> ``tokensIn``; names without underscores are kept as they are."""
    cached = _camel_cache.get(name)
    if cached is not None:
        return cached
    head, *rest = name.split("_")
    result = head + "".join(part[:1].upper() + part[1:] for part in rest) if rest else name
    if len(_camel_cache) < 4096:
        _camel_cache[name] = result
    return result


def camel_keys(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {camel_case(k): v for k, v in attributes.items()}


def normalise_keys(event: Mapping[str, Any]) -> dict[str, Any]:
    """Copy ``event`` with known snake_case keys renamed; an explicit camelCase key wins."""
    result = dict(event)
    for snake, camel in KNOWN_SNAKE_KEYS.items():
        if snake in result:
            value = result.pop(snake)
            result.setdefault(camel, value)
    return result


def typed_event(kind: str, event: Mapping[str, Any], helper: str) -> dict[str, Any]:
    """Check and complete the event of a typed helper (``log_llm_call`` and friends)."""
    if not isinstance(event, Mapping):
        raise TypeError(f"{helper}() takes the event as a dict, got {type(event).__name__}")
    result = normalise_keys(event)
    result.setdefault("type", kind)
    missing = [key for key in REQUIRED_KEYS[kind] if key not in result]
    if missing:
        raise ValueError(
            f"{helper}() event is missing required key(s) {', '.join(missing)}; "
            f"a {kind} event needs {', '.join(REQUIRED_KEYS[kind])} (camelCase)"
        )
    return result


def _whole_number(value: Any) -> Any:
    """``value`` as a non-negative int if that loses nothing, else None."""
    kind = type(value)
    if kind is int:
        return value if value >= 0 else None
    if kind is float:
        return int(value) if value.is_integer() and value >= 0 else None
    if kind is str and value.strip().isdigit():
        return int(value.strip())
    return None


def _is_duration(value: Any) -> bool:
    """A finite number of milliseconds >= 0 (NaN is not)."""
    return type(value) is not bool and isinstance(value, (int, float)) and value >= 0 and value != float("inf")


def check_event(event: dict[str, Any]) -> Optional[str]:
    """Coerce what can be coerced without loss, in place; return what is wrong with the event, or None.

    The message names the field, what it held and how to fix it.
    """
    kind = event.get("type")
    if not isinstance(kind, str) or not kind:
        return f"type must be a non-empty string such as 'llm_call', got {kind!r}"
    for name in COUNT_FIELDS if not _TOKEN_FIELDS.isdisjoint(event) else _STEP_FIELD:
        value = event.get(name, _ABSENT)
        if value is _ABSENT or (type(value) is int and value >= 0):
            continue  # absent, or already what the ledger takes (the usual case: nothing to coerce)
        if value is None and name != "stepIndex":
            continue
        number = _whole_number(value)
        if number is None:
            hint = _COUNT_HINTS.get(name, "pass a whole number of tokens")
            return f"{name} must be a whole number >= 0, got {value!r}; {hint}"
        event[name] = number
    latency = event.get("latencyMs")
    if latency is not None and not (type(latency) is int and latency >= 0) and not _is_duration(latency):
        return f"latencyMs must be a finite number of milliseconds >= 0, got {latency!r}"
    if kind == LLM_CALL:
        for name in ("provider", "model"):
            value = event.get(name)
            if not isinstance(value, str) or not value.strip():
                return f"{name} must be a non-empty string for an llm_call, got {value!r}"
    return None


def describe_event(event: Mapping[str, Any]) -> str:
    """``llm_call (step 3)``: how log lines name an event."""
    step = event.get("stepIndex")
    return f"{event.get('type')} (step {step})" if step is not None else str(event.get("type"))


def encode_event(event: Mapping[str, Any], limit: int = MAX_EVENT_BYTES) -> str:
    """The JSON of one event: JSON-safe, and at most ``limit`` bytes (its largest strings cut)."""
    return encode_event_exact(event, limit)[0]


def encode_event_exact(event: Mapping[str, Any], limit: int = MAX_EVENT_BYTES) -> tuple[str, bool]:
    """:func:`encode_event`, and whether the JSON is that of ``event`` as it is (False: it was cut to fit)."""
    text = encode(event)
    # Only an event with that many brackets can nest deeper than a ledger reads (64 levels): json_safe cuts
    # values at MAX_VALUE_DEPTH; a wide but shallow event merely takes this slower path.
    shallow = text.count("{") + text.count("[") <= 2 * MAX_VALUE_DEPTH
    if shallow and (len(text) * 4 <= limit or len(text.encode("utf-8")) <= limit):  # UTF-8: 4 bytes a char at most
        return text, True
    safe = json_safe(event)
    return dumps(fit_event(safe if isinstance(safe, dict) else {"value": safe}, limit)), False


def encode_events(events: Iterable[Mapping[str, Any]], helper: str = "log_events") -> list[str]:
    if isinstance(events, Mapping):
        raise TypeError(f"{helper}() takes a list of events; wrap a single event in a list")
    result = []
    for position, event in enumerate(events):
        if not isinstance(event, Mapping):
            raise TypeError(f"{helper}() event #{position} is a {type(event).__name__}; each event must be a dict")
        result.append(encode_event(event))
    return result


def events_body(session_id: str, encoded_events: list[str]) -> bytes:
    """The body of ``POST /v1/events`` from events already encoded: each is serialised once."""
    return f'{{"sessionId":{dumps(session_id)},"events":[{",".join(encoded_events)}]}}'.encode()
