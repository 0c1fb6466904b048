"""Turning arbitrary Python values into JSON that always encodes, and fits.

Nothing here raises: a value that cannot be represented becomes a string that
says so. This runs off the caller's hot path (on the background worker) for the
instrumentation helpers.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import math
import uuid
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any, Callable

from ._constants import MAX_EVENT_BYTES, MAX_VALUE_DEPTH

CYCLE_MARKER = "[cycle]"
DEPTH_MARKER = "[max depth exceeded]"

_PRIMITIVES = (str, int, bool, type(None))
# Keys that say what an event is; never truncated.
_IDENTITY_KEYS = ("type", "stepIndex", "toolName", "model", "provider")


def json_safe(value: Any, *, max_depth: int = MAX_VALUE_DEPTH) -> Any:
    """Return a structure of dict/list/str/int/float/bool/None equal in spirit to ``value``."""
    return _convert(value, max_depth, set())


def _convert(value: Any, depth: int, active: set[int]) -> Any:
    if isinstance(value, _PRIMITIVES):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if depth <= 0:
        return DEPTH_MARKER
    marker = id(value)
    if marker in active:
        return CYCLE_MARKER
    active.add(marker)
    try:
        return _convert_container(value, depth - 1, active)
    except Exception:  # a hostile __iter__, __repr__, model_dump...
        return _safe_repr(value)
    finally:
        active.discard(marker)


def _convert_container(value: Any, depth: int, active: set[int]) -> Any:
    if isinstance(value, Mapping):
        return {_key(k): _convert(v, depth, active) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_convert(v, depth, active) for v in value]
    replacement = _replacement(value)
    return replacement if isinstance(replacement, str) else _convert(replacement, depth, active)


def _replacement(value: Any) -> Any:
    """What a value JSON cannot encode stands for; the C encoder's ``default`` too."""
    if isinstance(value, (set, frozenset)):
        try:
            return sorted(value)
        except TypeError:
            return list(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else str(value)
    if isinstance(value, (uuid.UUID, PurePath)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="backslashreplace")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    dump = getattr(value, "model_dump", None)  # pydantic v2
    if callable(dump) and not isinstance(value, type):
        return dump(mode="json", by_alias=True)  # the names the JSON uses (OpenAI's "async", not "async_")
    legacy = getattr(value, "dict", None)  # pydantic v1
    if callable(legacy) and hasattr(value, "__fields__") and not isinstance(value, type):
        return legacy()
    return _safe_repr(value)


def _key(key: Any) -> str:
    return key if isinstance(key, str) else _safe_str(key)


def _safe_str(value: Any) -> str:
    try:
        return str(value)
    except Exception:
        return _safe_repr(value)


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:
        return f"<unrepresentable {type(value).__name__}>"


def dumps(value: Any) -> str:
    """Compact JSON of an already JSON-safe value."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode(value: Any) -> str:
    """Compact JSON of any value, never raising.

    The C encoder does the common case in one pass, calling back only for the
    types it does not know; cycles, NaN, odd keys or a failing object fall back
    to :func:`json_safe`, which handles everything.
    """
    try:
        return "".join(_encode_c(value, 0))
    except Exception:  # RecursionError for a cycle: no markers are kept (see _make_encoder)
        return dumps(json_safe(value))


def encoded_size(value: Any) -> int:
    return len(dumps(value).encode("utf-8"))


def fit_event(event: dict[str, Any], limit: int = MAX_EVENT_BYTES) -> dict[str, Any]:
    """Shrink the largest strings of a JSON-safe event until its JSON fits in ``limit`` bytes.

    Each cut string ends with ``...[truncated N chars]`` so that the cut is visible.
    """
    if encoded_size(event) <= limit:
        return event
    longest = max((len(s) for s in _strings(event)), default=0)
    low, high = 0, longest  # find the largest per-string cap that fits
    best: dict[str, Any] | None = None
    while low <= high:
        cap = (low + high) // 2
        candidate = {k: v if k in _IDENTITY_KEYS else _cap_strings(v, cap) for k, v in event.items()}
        if encoded_size(candidate) <= limit:
            best, low = candidate, cap + 1
        else:
            high = cap - 1
    if best is not None:
        return best
    # Even empty strings do not fit: too many values. Keep the event's identity.
    kept = {k: event[k] for k in _IDENTITY_KEYS if k in event}
    kept["truncated"] = f"event dropped: its JSON was over {limit} bytes even with every string cut"
    return kept


def _strings(value: Any) -> Any:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _cap_strings(value: Any, cap: int) -> Any:
    if isinstance(value, str):
        if len(value) <= cap:
            return value
        return f"{value[:cap]}...[truncated {len(value) - cap} chars]"
    if isinstance(value, dict):
        return {k: _cap_strings(v, cap) for k, v in value.items()}
    if isinstance(value, list):
        return [_cap_strings(v, cap) for v in value]
    return value


def make_encoder(default: Callable[[Any], Any]) -> Callable[[Any, int], Any]:
    """Compact JSON (``ensure_ascii=False``, no NaN) by the C encoder itself, made once; ``default`` as
    ``json.dumps``'s. Used by the sender (below) and by the local ledger's checks of each event."""
    make = getattr(json.encoder, "c_make_encoder", None)
    string = getattr(json.encoder, "c_encode_basestring", None)
    if make is not None and string is not None:
        encoder: Callable[[Any, int], Any] = make(None, default, string, None, ":", ",", False, False, False)
        return encoder
    slow = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=default)
    return lambda value, _level: (slow.encode(value),)


def _make_encoder() -> Callable[[Any, int], Any]:
    """The C encoder itself, made once: ``JSONEncoder.encode`` makes one per call, which costs as much as
    encoding a small event (about 2 µs a call on the project's machine, measured in docs/performance.md).

    It keeps no markers: a shared markers dict would be touched by every thread that encodes (the
    sender, inline callers), and left dirty by a failed call. A cycle then recurses until Python's
    recursion limit stops it (RecursionError), and :func:`encode` falls back to :func:`json_safe`,
    which marks it. Without the C accelerator (another interpreter), the pure-Python encoder.
    """
    return make_encoder(_replacement)


# Returns the JSON as a sequence of strings to join (a list or a tuple: it changed in Python 3.13).
_encode_c = _make_encoder()
