"""Reading a request's JSON body: size limits, and what JSON the ledger accepts.

Before any route looks at a body, :func:`read_json_object` holds it to these rules,
each broken one a 400 (413 for the size) whose message says what to change:

- At most :data:`MAX_BODY_BYTES` (16 MB). A ``Content-Length`` over it is refused
  before a byte is read; a body sent without one (chunked) is read as a stream and
  refused as soon as what arrived passes the limit, so memory stays within it.
- UTF-8, strictly (RFC 8259): invalid bytes, surrogates encoded as bytes (CESU-8)
  included, are refused; a byte order mark is ignored.
- No lone UTF-16 surrogate: JSON's ``"\\ud800"`` escape without its partner is not
  text, and neither SQLite nor a reply could carry it. An escaped pair
  (``"\\ud83d\\ude00"``, one character) is welcome. Only a body whose text holds
  such an escape is searched for one.
- At most :data:`MAX_JSON_DEPTH` arrays and objects nested in one another, the body
  object itself counted. What the SDK captures (prompts, tool inputs and outputs) is
  cut at 32 levels (``_constants.MAX_VALUE_DEPTH``), so that its events arrive at most
  35 deep (body, ``events``, event, value); 64 leaves room for that, and keeps every
  later step (the C encoder and decoder, a reply, a client's parser such as Rust's
  serde_json, which stops at 128) far from its recursion limit.

NaN, Infinity and numbers beyond a double (``1e400`` reads as Infinity) are not refused
here but by the check of each field that reads one (``validation.py``): a batch of events
lists every bad event by its index, with the name of the field, and a budget's message says
which limit was wrong. Every check refuses them (an event or ``metadata`` holding one
anywhere, every amount and count), so none is ever stored.
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional

from starlette.requests import ClientDisconnect, Request

from .records import BadInput, TooLarge
from .validation import lone_surrogate_message, lone_surrogate_path, member_path

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_JSON_DEPTH = 64

__all__ = ["MAX_BODY_BYTES", "MAX_JSON_DEPTH", "parse_json_body", "parse_json_object", "read_body", "read_json_object"]

try:  # the server extra installs it; the json module reads (and words the errors of) whatever it does not
    import orjson
except ImportError:  # pragma: no cover - without it, json reads every body
    orjson = None  # type: ignore[assignment]

# orjson reads an integer past 64 bits as a float (it loses digits): a body with a run of 19 digits or more
# goes to json, which keeps every digit. Found with translate (every digit to "0", the rest to " "): 28 µs
# for a batch of 100 events, where a regular expression takes 320.
_DIGITS = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_LONG_NUMBER = b"0" * 19

# An escape of a UTF-16 surrogate (\ud800 to \udfff): without one, no string can hold a lone surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# A high surrogate's escape not followed by a low one's, or a low one's not preceded by a high one's.
# Exact when every "\u" of the text starts an escape, that is unless the text holds an escaped
# backslash followed by a "u" (the 3 characters \\u), and never misses one otherwise.
_LONE_SURROGATE_ESCAPE = re.compile(
    r"\\u[dD](?:[89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    r"|[c-fC-F][0-9a-fA-F]{2}(?<!\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}))"
)
_BOM = "\ufeff"


async def read_body(request: Request) -> bytes:
    """The request's body, at most :data:`MAX_BODY_BYTES`; raises :class:`TooLarge` without reading more."""
    declared = _content_length(request)
    if declared is not None and declared > MAX_BODY_BYTES:
        raise TooLarge(_too_large(f"Content-Length says {declared} bytes"))
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise TooLarge(_too_large(f"The body is over {MAX_BODY_BYTES} bytes"))
            chunks.append(chunk)
    except ClientDisconnect:
        raise BadInput("The client disconnected before it sent the whole body; send it again.") from None
    return b"".join(chunks)


async def read_json_object(request: Request) -> tuple[dict[str, Any], bytes]:
    """The request's body as a JSON object, and its raw bytes (for idempotency fingerprints)."""
    raw = await read_body(request)
    return parse_json_object(raw), raw


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """``raw`` as a JSON object that keeps the rules above; raises :class:`BadInput` with what to change."""
    return parse_json_body(raw)[0]


def parse_json_body(raw: bytes) -> tuple[dict[str, Any], bool]:
    """:func:`parse_json_object`, and whether orjson read it: then its numbers are all 64-bit integers and finite
    floats, and its strings text, which orjson's encoder writes back as they are (``validation.check_event``).

    orjson (about 3 times as fast as json) reads a body only if json would read it the same: valid UTF-8
    without a byte order mark, no NaN, Infinity or number beyond a double, no lone surrogate, no integer of 19
    digits or more. Any other body, and every error, goes to json, whose errors the messages word.
    """
    if orjson is not None and _LONG_NUMBER not in raw.translate(_DIGITS):
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
        else:
            if isinstance(body, dict):
                _check_depth(raw, body)
                return body, True
    return _parse_with_json(raw), False


def _parse_with_json(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(
            f"Request body is not valid UTF-8: byte {exc.start} is 0x{raw[exc.start]:02x} ({exc.reason}). "
            "Send JSON encoded as UTF-8, with Content-Type: application/json; a character beyond U+FFFF "
            "goes as its 4 bytes of UTF-8, or escaped as a whole surrogate pair (\\ud83d\\ude00)."
        ) from None
    if text.startswith(_BOM):
        text = text[1:]
    try:
        body = json.loads(text) if text else None
    except RecursionError:
        raise BadInput(_too_deep(None)) from None
    except ValueError as exc:
        if "integer string conversion" in str(exc):  # Python's 4,300-digit limit on int()
            raise BadInput(
                "Request body holds an integer of more than 4300 digits, which the ledger does not read; "
                "send it as a string."
            ) from None
        raise BadInput(
            f"Request body is not valid JSON ({exc}). Send a JSON object with Content-Type: application/json."
        ) from None
    if not isinstance(body, dict):
        raise BadInput(
            f"Request body must be a JSON object, got {type(body).__name__ if body is not None else 'nothing'}."
        )
    # Cheap first: only a body whose text escapes a surrogate can hold a lone one (an escaped pair,
    # an emoji, is the usual reason), and no body with fewer brackets than the limit can nest deeper.
    # Surrogates first: no message may quote one.
    if _SURROGATE_ESCAPE.search(text) is not None and _may_hold_a_lone_surrogate(text) and not _encodes_as_utf8(body):
        where = lone_surrogate_path(body, "")
        raise BadInput(lone_surrogate_message(f"Request body: {where or 'a string'}"))
    _check_depth(raw, body)
    return body


def _check_depth(raw: bytes, body: dict[str, Any]) -> None:
    """No body with fewer brackets than the limit can nest deeper: only the others are walked (or bounded)."""
    openers = raw.count(b"[") + raw.count(b"{")
    if openers > MAX_JSON_DEPTH and _depth_bound(body, openers) > MAX_JSON_DEPTH and _deeper_than(body, MAX_JSON_DEPTH):
        raise BadInput(_too_deep(_deep_path(body, MAX_JSON_DEPTH)))


def _depth_bound(body: dict[str, Any], openers: int) -> int:
    """A bound on how deep ``body`` nests, from the brackets of its text (``openers``, at least one for each of
    its arrays and objects: those within strings count too) and the containers side by side in it: a batch of
    100 events holds 102 brackets and nests 3 deep, and the walk (``_deeper_than``) would cost a batch about
    80 µs.

    With ``k`` arrays and objects among the body's members, ``w`` any one of them (the longest: it usually has the
    most to subtract) and ``kw`` the arrays and objects among ``w``'s members:
    the body's own bracket and one each for its other containers leave at most ``openers - k`` for ``w``, one
    for ``w`` itself and one each for its other containers leave at most ``openers - k - kw`` for any one of
    ``w``'s; any other member of the body has at most ``openers - k - kw`` too (``w`` takes ``1 + kw``). Nothing
    nests deeper than its brackets, so the body nests at most ``2 + openers - k - kw`` deep."""
    members = [value for value in body.values() if type(value) is dict or type(value) is list]
    if not members:
        return 1
    widest = max(members, key=len)
    items = widest.values() if type(widest) is dict else widest
    inner = sum(1 for item in items if type(item) is dict or type(item) is list)
    return max(2, 2 + openers - len(members) - inner)


def _may_hold_a_lone_surrogate(text: str) -> bool:
    return _LONE_SURROGATE_ESCAPE.search(text) is not None or "\\\\u" in text


def _encodes_as_utf8(body: dict[str, Any]) -> bool:
    """Whether every string and key of ``body`` is text (no lone surrogate), in one pass of C."""
    try:
        json.dumps(body, ensure_ascii=False, check_circular=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _content_length(request: Request) -> Optional[int]:
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    try:
        return int(declared)
    except ValueError:  # the server refuses a malformed one before the app sees it
        return None


def _too_large(what: str) -> str:
    return (
        f"{what}; the limit is {MAX_BODY_BYTES} bytes (16 MB) per request. Send fewer events per request "
        "(the agent-ledger-sdk client batches them for you), and keep large blobs out of events."
    )


def _too_deep(path: Optional[str]) -> str:
    if path is not None and len(path) > 120:
        path = path[:117] + "..."
    where = f" ({path} is at level {MAX_JSON_DEPTH + 1})" if path is not None else ""
    return (
        f"Request body is nested too deeply{where}: the limit is {MAX_JSON_DEPTH} levels of arrays and objects, "
        "the body itself counted. Flatten the data, or send a deep value as a JSON string."
    )


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests more than ``limit`` arrays and objects (itself counted), level by level."""
    level = [value]
    depth = 1
    while level:
        if depth > limit:
            return True
        below: list[Any] = []
        for item in level:
            children = item.values() if type(item) is dict else item
            below.extend([child for child in children if type(child) is dict or type(child) is list])
        level = below
        depth += 1
    return False


def _deep_path(value: Any, limit: int) -> Optional[str]:
    """The path of a first array or object at level ``limit + 1`` (``events[0].x[0]``), for the message."""
    stack: list[tuple[Any, str, int]] = [(value, "", 1)]
    while stack:
        item, where, depth = stack.pop()
        if depth > limit:
            return where
        if isinstance(item, dict):
            members = [(v, member_path(where, k)) for k, v in item.items() if isinstance(v, (dict, list))]
        else:
            members = [(v, f"{where}[{i}]") for i, v in enumerate(item) if isinstance(v, (dict, list))]
        stack.extend((v, path, depth + 1) for v, path in reversed(members))
    return None  # pragma: no cover - called only when _deeper_than found one
