"""Call-time snapshots: the values an event records, frozen when the call starts or returns.

Agents mutate what they pass around (``messages.append(reply)`` after every
turn). An event that kept a reference would be recorded with the later
contents, so the event builder copies each recorded value here, on the
caller's thread, before the caller can change it. Immutable values (str, int,
float, bool, None) are kept as they are; dicts, lists and tuples are copied;
any other object is turned into its JSON-safe form now (a pydantic model's
``model_dump()``, a dataclass's fields...), which is itself a copy.

The result is also sized: :func:`snapshot_sized` returns an estimate of the
bytes the value holds, which the background queue uses for its memory bound.
"""

from __future__ import annotations

from typing import Any

from ._constants import MAX_VALUE_DEPTH
from ._serialization import DEPTH_MARKER, json_safe

_IMMUTABLE = frozenset({str, int, float, bool, type(None)})
# A rough per-container and per-scalar cost in bytes, so that many small values are not counted as free.
CONTAINER_BYTES = 64
SCALAR_BYTES = 16


def snapshot(value: Any) -> Any:
    """A copy of ``value`` that later mutation of the original cannot change."""
    if type(value) in _IMMUTABLE:
        return value
    return _copy(value, MAX_VALUE_DEPTH)[0]


def snapshot_sized(value: Any) -> tuple[Any, int]:
    """:func:`snapshot`, and the approximate number of bytes the copy holds."""
    kind = type(value)
    if kind is str:
        return value, len(value) + SCALAR_BYTES
    if kind in _IMMUTABLE:
        return value, SCALAR_BYTES
    return _copy(value, MAX_VALUE_DEPTH)


def _copy(value: Any, depth: int) -> tuple[Any, int]:
    kind = type(value)
    if kind is str:
        return value, len(value) + SCALAR_BYTES
    if kind in _IMMUTABLE:
        return value, SCALAR_BYTES
    if depth <= 0:
        return DEPTH_MARKER, SCALAR_BYTES
    size = CONTAINER_BYTES
    if kind is dict:
        copied: dict[Any, Any] = {}
        for key, item in value.items():
            if type(item) in _IMMUTABLE:
                copied[key] = item
                size += len(item) + SCALAR_BYTES if type(item) is str else SCALAR_BYTES
            else:
                copied[key], item_size = _copy(item, depth - 1)
                size += item_size
        return copied, size
    if kind is list or kind is tuple:
        items = []
        for item in value:
            if type(item) in _IMMUTABLE:
                items.append(item)
                size += len(item) + SCALAR_BYTES if type(item) is str else SCALAR_BYTES
            else:
                copied_item, item_size = _copy(item, depth - 1)
                items.append(copied_item)
                size += item_size
        return items, size
    # Anything else (models, dataclasses, sets, dates, custom objects): its JSON-safe form is a copy.
    return _copy_safe(json_safe(value, max_depth=depth))


def _copy_safe(value: Any) -> tuple[Any, int]:
    # json_safe already built fresh containers: only the size is left to count.
    return value, _size(value)


def _size(value: Any) -> int:
    kind = type(value)
    if kind is str:
        return len(value) + SCALAR_BYTES
    if kind is dict:
        return CONTAINER_BYTES + sum(_size(item) for item in value.values())
    if kind is list:
        return CONTAINER_BYTES + sum(_size(item) for item in value)
    return SCALAR_BYTES


def snapshot_values(mapping: dict[str, Any]) -> int:
    """Snapshot the values of a dict the caller just built (bound arguments), in place; return its size."""
    size = CONTAINER_BYTES
    for key, item in mapping.items():
        kind = type(item)
        if kind is str:
            size += len(item) + SCALAR_BYTES
        elif kind in _IMMUTABLE:
            size += SCALAR_BYTES
        else:
            mapping[key], item_size = _copy(item, MAX_VALUE_DEPTH - 1)
            size += item_size
    return size


class Lazy:
    """A value computed where the event is encoded (off the agent's thread), from inputs snapshotted now."""

    __slots__ = ("args", "function")

    def __init__(self, function: Any, *args: Any) -> None:
        self.function = function
        self.args = args

    def resolve(self) -> Any:
        try:
            return self.function(*self.args)
        except Exception as exc:  # a binder cannot fail the event
            return f"<could not capture: {type(exc).__name__}: {exc}>"
