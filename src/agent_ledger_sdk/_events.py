"""Building and checking the events sent to ``POST /v1/events``.

The API expects camelCase keys (see the published README's event schema).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ._constants import MAX_EVENT_BYTES
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
}

_camel_cache: dict[str, str] = {}


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


def encode_event(event: Mapping[str, Any], limit: int = MAX_EVENT_BYTES) -> str:
    """The JSON of one event: JSON-safe, and at most ``limit`` bytes (its largest strings cut)."""
    text = encode(event)
    if len(text) * 4 <= limit or len(text.encode("utf-8")) <= limit:  # UTF-8 takes at most 4 bytes a char
        return text
    safe = json_safe(event)
    return dumps(fit_event(safe if isinstance(safe, dict) else {"value": safe}, limit))


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
