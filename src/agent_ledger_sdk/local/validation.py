"""Checks of what clients send to the local ledger, with messages that say what was wrong and how to fix it.

The service (``service.py``) calls :func:`check_session_context` on ``POST /v1/sessions``
and :func:`check_event` on each event of ``POST /v1/events``. An event check raises
:class:`Rejection` (one event's first problem) so that the caller can report every
bad event of a batch at once; values that convert without loss (``12.0`` tokens) are
converted instead of refused.

Every number the ledger reads is bounded, so that none reaches storage or arithmetic it
would break (an integer past SQLite's 64 bits, a float past a double, NaN): step indexes
and latencies at :data:`MAX_SAFE_INTEGER`, token counts at :data:`MAX_TOKENS`, amounts of
US dollars at :data:`MAX_USD` with at most :data:`MAX_AMOUNT_DECIMALS` decimal places, and
integer query parameters (:func:`query_int`) at the range each one has. Numbers the ledger
does not read (``retries``, ``temperature``, ``seed``...) are stored as the JSON text they
came in, and only need to be finite. Names and ids may not hold U+0000.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Callable, Optional, overload

from .._constants import MAX_EVENT_BYTES
from .._serialization import make_encoder
from . import money
from .pricing import PRICED, TokenUsage
from .records import BadInput, PricedEvent, SessionContext, StoreError

try:  # the server extra installs it (see check_event)
    import orjson
except ImportError:  # pragma: no cover
    orjson = None  # type: ignore[assignment]

MAX_SAFE_INTEGER = 2**53 - 1  # the largest integer every JSON reader keeps exact
MAX_TOKENS = 10**12  # per event: far above any model, far below what a sum of 10,000 events can overflow
MAX_LATENCY_MS = MAX_SAFE_INTEGER  # finite and exact in every JSON reader (285,000 years)
MAX_USD = 10**12  # any amount of US dollars (a limit, a cap, a reservation): a trillion
MAX_AMOUNT_DECIMALS = 20  # digits after the point: 1e-20 of a dollar, and every float's shortest form of a cent
MAX_QUERY_INT_DIGITS = 19  # a query parameter's integer: anything longer is out of every range the ledger has
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

_QUERY_INT = re.compile(rf"-?[0-9]{{1,{MAX_QUERY_INT_DIGITS}}}")
_SURROGATE = re.compile("[\ud800-\udfff]")
_SPAN_IDS = (("spanId", "an id you choose for this span"), ("parentSpanId", "the spanId of its parent"))
_RFC3339_UTC = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:[Zz]|\+00:00)\Z")


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


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _compact_encoder() -> Callable[[Any], str]:
    """The C encoder, made once (``_serialization.make_encoder``): ``json.dumps`` with options builds a
    ``JSONEncoder`` at each call, and its ``encode`` a C encoder at each call (about 1.2 µs of a 4.3 µs event,
    measured). No cycle check: what it encodes was parsed from JSON (or built by the ledger), and the body's
    depth is limited."""
    encode = make_encoder(_not_json)
    join = "".join

    def compact(value: Any) -> str:
        return join(encode(value, 0))

    return compact


_COMPACT = _compact_encoder()


def compact_json(value: Any) -> str:
    """The compact JSON the ledger stores; ValueError on NaN or Infinity."""
    return _COMPACT(value)


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


def lone_surrogate_path(value: Any, path: str) -> Optional[str]:
    """Where a string (or a key) holding a lone UTF-16 surrogate sits in a parsed JSON value, or None.

    JSON's ``"\\ud800"`` escape parses to such a string: it is not text, and UTF-8 (SQLite, any reply)
    cannot carry it. An escaped pair (``"\\ud83d\\ude00"``) parses to one character and is not one.
    """
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return where
        elif isinstance(item, dict):
            for key in item:
                if _SURROGATE.search(key):
                    return f"the key {shown(key)} of {where}" if where else f"the key {shown(key)}"
            stack.extend((v, member_path(where, k)) for k, v in reversed(list(item.items())))
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in reversed(list(enumerate(item))))
    return None


def member_path(where: str, key: str) -> str:
    """The path of ``where``'s member ``key`` (``where.key``, or ``key`` at the top), a long key shortened."""
    label = key if len(key) <= 60 else key[:57] + "..."
    return f"{where}.{label}" if where else label


def lone_surrogate_message(path: str) -> str:
    return (
        f"{path} holds a lone UTF-16 surrogate (an escape from \\ud800 to \\udfff without its partner), which is "
        "not text and cannot be stored. Send the text as UTF-8, or escape a character beyond U+FFFF as a whole "
        "pair, e.g. \\ud83d\\ude00 for U+1F600."
    )


def number_within(value: Any, minimum: float, maximum: float) -> bool:
    """``value`` is a JSON number (not a boolean), finite, from ``minimum`` to ``maximum``.

    Never raises: an integer too large for a float (``10**400``) is simply out of range.
    """
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return minimum <= value <= maximum
    return isinstance(value, float) and math.isfinite(value) and minimum <= value <= maximum


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


_valid_timestamp: Optional[str] = None  # the last timestamp found valid: a call's two events often share one


def _timestamp(where: str, name: str, value: Any) -> None:
    global _valid_timestamp
    if type(value) is str and value == _valid_timestamp:
        return
    match = _RFC3339_UTC.match(value) if isinstance(value, str) and len(value) <= 40 else None
    if match is not None:
        try:
            year, month, day, hour, minute, second = map(int, match.groups()[:6])
            datetime.datetime(year, month, day, hour, minute, second)
        except ValueError:
            match = None
    if match is None:
        raise Rejection(
            name,
            f'{where}.{name} must be an RFC 3339 timestamp in UTC, such as "{TIMESTAMP_EXAMPLE}"; got {shown(value)}.',
        )
    _valid_timestamp = value


def _short_string(where: str, name: str, value: Any, limit: int, what: str) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= limit:
        raise Rejection(
            name, f"{where}.{name} must be a string of 1 to {limit} characters ({what}); got {shown(value)}."
        )
    _no_nul(where, name, value)


def nul_message(path: str) -> str:
    return f"{path} holds the character U+0000 (NUL, \\u0000), which names and ids may not hold; remove it."


def _no_nul(where: str, name: str, value: str) -> None:
    """Names and ids go into columns of their own, where PostgreSQL refuses U+0000 (free text goes as JSON)."""
    if "\x00" in value:
        raise Rejection(name, nul_message(f"{where}.{name}"))


# -- events --------------------------------------------------------------------


def check_event(position: int, event: Any, *, parsed_by_orjson: bool = False) -> PricedEvent:
    """``events[position]`` checked and normalised, not yet priced; raises :class:`Rejection`.

    The checks of a valid event are inline (this runs for every event ingested: a call to a helper costs
    about as much as the check in it); each failing one goes to the helper that words its message.
    ``parsed_by_orjson``: the event comes from a body that ``body.parse_json_body`` read with orjson, so
    orjson may encode it (it would write NaN as null, and refuse integers past 64 bits: such a body never
    holds one).
    """
    if type(event) is not dict and not isinstance(event, dict):
        raise Rejection(None, f"events[{position}] must be a JSON object, got {json_type(event)}.")
    get = event.get
    kind: Any = get("type")
    if type(kind) is not str or not kind or "\x00" in kind:
        _check_type(position, kind)
    fixed: dict[str, Any] = {}
    converted = False  # a count sent as 12.0 is stored as 12
    step = get("stepIndex")
    if step is not None:
        if type(step) is int and 0 <= step <= MAX_SAFE_INTEGER:
            fixed["stepIndex"] = step
        else:
            fixed["stepIndex"] = _count(f"events[{position}]", "stepIndex", step, MAX_SAFE_INTEGER)
            converted = True
    latency = get("latencyMs")
    # A float in range is finite (NaN compares false); a bool is neither an int nor a float here.
    if latency is not None and not (
        (type(latency) is float or type(latency) is int) and 0 <= latency <= MAX_LATENCY_MS
    ):
        raise Rejection(
            "latencyMs",
            f"events[{position}].latencyMs must be a non-negative number of milliseconds (finite: not NaN or "
            f"Infinity) of at most {MAX_LATENCY_MS}, e.g. 1520.5; got {shown(latency)}.",
        )
    started = get("startedAt")
    if started is not None and started != _valid_timestamp:  # a call's two events often share one
        _timestamp(f"events[{position}]", "startedAt", started)
    span = get("spanId")
    if span is not None and not (type(span) is str and 1 <= len(span) <= MAX_SPAN_ID and "\x00" not in span):
        _short_string(f"events[{position}]", "spanId", span, MAX_SPAN_ID, _SPAN_IDS[0][1])
    parent = get("parentSpanId")
    if parent is not None and not (type(parent) is str and 1 <= len(parent) <= MAX_SPAN_ID and "\x00" not in parent):
        _short_string(f"events[{position}]", "parentSpanId", parent, MAX_SPAN_ID, _SPAN_IDS[1][1])
    if kind != "llm_call":
        payload = {**event, **fixed} if converted else event
        return PricedEvent(payload, kind, fixed.get("stepIndex"), encoded=_encoded(position, payload, parsed_by_orjson))
    provider: Any = get("provider")
    model: Any = get("model")
    if type(provider) is not str or not provider or "\x00" in provider:
        _check_name(position, "provider", provider)
    if type(model) is not str or not model or "\x00" in model:
        _check_name(position, "model", model)
    tokens_in, tokens_out = get("tokensIn"), get("tokensOut")
    if not (type(tokens_in) is int and 0 <= tokens_in <= MAX_TOKENS):
        tokens_in = fixed["tokensIn"] = _count(f"events[{position}]", "tokensIn", tokens_in, MAX_TOKENS)
        converted = True
    if not (type(tokens_out) is int and 0 <= tokens_out <= MAX_TOKENS):
        tokens_out = fixed["tokensOut"] = _count(f"events[{position}]", "tokensOut", tokens_out, MAX_TOKENS)
        converted = True
    cached = 0
    for name in LLM_OPTIONAL_COUNTS:
        value = get(name)
        if value is not None:
            if not (type(value) is int and 0 <= value <= MAX_TOKENS):
                value = fixed[name] = _count(f"events[{position}]", name, value, MAX_TOKENS)
                converted = True
            if name != "reasoningTokens":
                cached += value
    if cached > tokens_in:
        raise Rejection(
            "cacheReadTokens" if (fixed.get("cacheReadTokens") or get("cacheReadTokens")) else "cacheWriteTokens",
            f"events[{position}]: cacheReadTokens + cacheWriteTokens ({cached}) exceed tokensIn "
            f"({tokens_in}). tokensIn counts every input token, the cached ones included (OpenAI's "
            "prompt_tokens; for Anthropic, input_tokens + cache_read_input_tokens + cache_creation_input_tokens).",
        )
    reservation = get("reservationId")
    if reservation is not None:
        _short_string(
            f"events[{position}]",
            "reservationId",
            reservation,
            MAX_RESERVATION_ID,
            "the id POST /v1/reservations returned",
        )
    usage_missing = get("usageMissing")
    if usage_missing is not None and usage_missing is not True and usage_missing is not False:
        raise Rejection(
            "usageMissing", f"events[{position}].usageMissing must be true or false; got {shown(usage_missing)}."
        )
    # 12.0 tokens were converted to 12: store what was meant.
    payload = {**event, **fixed} if converted else event
    return PricedEvent(
        payload,
        kind,
        fixed.get("stepIndex"),
        money.ZERO,
        PRICED,
        None,
        tokens_in,
        tokens_out,
        provider,
        model,
        reservation,
        usage_missing is True,
        False,
        _encoded(position, payload, parsed_by_orjson),
    )


def _check_type(position: int, kind: Any) -> None:
    if not isinstance(kind, str) or not kind:
        raise Rejection(
            "type", f'events[{position}].type is required: a string such as "llm_call", "tool_call" or "tool_result".'
        )
    if "\x00" in kind:
        raise Rejection("type", nul_message(f"events[{position}].type"))


def _check_name(position: int, name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise Rejection(name, f"events[{position}].{name} is required for an llm_call: a non-empty string.")
    if "\x00" in value:
        raise Rejection(name, nul_message(f"events[{position}].{name}"))


def _encoded(position: int, payload: dict[str, Any], parsed_by_orjson: bool) -> str:
    """The event's compact JSON; a Rejection when it is larger than MAX_EVENT_BYTES."""
    if parsed_by_orjson and orjson is not None:
        data = orjson.dumps(payload)
        encoded, size = data.decode(), len(data)
    else:
        encoded, size = _encoded_event(position, payload)
    if size > MAX_EVENT_BYTES:
        raise Rejection(
            None,
            f"events[{position}] is {size} bytes; the limit is {MAX_EVENT_BYTES} per event. Truncate large prompts "
            "or outputs (the agent-ledger-sdk client does this for you).",
            too_large=True,
        )
    return encoded


def _encoded_event(position: int, payload: dict[str, Any]) -> tuple[str, int]:
    """An event's compact JSON and its size in UTF-8 bytes; a Rejection for NaN, Infinity or a lone surrogate."""
    try:
        encoded = _COMPACT(payload)
    except ValueError:
        for name, value in payload.items():
            path = non_finite_path(value, f"events[{position}].{name}")
            if path is not None:
                raise Rejection(
                    name, f"{path} is NaN or Infinity, which JSON cannot carry; send null or a string instead."
                ) from None
        raise  # pragma: no cover - json.dumps refuses nothing else in a parsed JSON value
    try:
        # ASCII text is as many bytes as characters; others are counted as UTF-8 (a lone surrogate fails here).
        return encoded, len(encoded) if encoded.isascii() else len(encoded.encode("utf-8"))
    except UnicodeEncodeError:  # read_json_object refuses these first; an event from elsewhere may hold one
        for name, value in payload.items():
            path = lone_surrogate_path({name: value}, f"events[{position}]")
            if path is not None:
                raise Rejection(name, lone_surrogate_message(path)) from None
        raise  # pragma: no cover - only a lone surrogate fails to encode as UTF-8


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
    if "\x00" in value:
        raise BadInput(nul_message(f'"{name}"'))
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
        if "\x00" in tag:
            raise BadInput(nul_message(f'"tags[{position}]"'))
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
    except UnicodeEncodeError:  # a lone surrogate; read_json_object refuses these first
        raise BadInput(lone_surrogate_message(lone_surrogate_path(value, "metadata") or "metadata")) from None
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


def _decimals(amount: Decimal) -> int:
    """How many digits ``amount`` has after the decimal point (``Decimal("1E-7")``: 7)."""
    exponent = amount.as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def usd_amount(body: dict[str, Any], name: str, what: str, *, nullable: bool) -> Optional[Decimal]:
    """``body[name]``: a number of US dollars from 0 to :data:`MAX_USD` with at most :data:`MAX_AMOUNT_DECIMALS`
    decimal places (exact), or None when absent or null."""
    value = body.get(name)
    if value is None:
        return None
    also = ", or null" if nullable else ""
    if not number_within(value, 0, math.inf):
        raise BadInput(
            f'"{name}" must be a non-negative number of US dollars ({what}), e.g. {{"{name}": 5}}{also}; '
            f"got {shown(value)}."
        )
    if value > MAX_USD:
        raise BadInput(
            f'"{name}" must be at most {MAX_USD} US dollars ({what}); got {shown(value)}. Send the amount in '
            f'dollars, e.g. {{"{name}": 5}}{also}.'
        )
    amount = money.exact(value)
    if _decimals(amount) > MAX_AMOUNT_DECIMALS:
        raise BadInput(
            f'"{name}" has {_decimals(amount)} digits after the decimal point; the limit is {MAX_AMOUNT_DECIMALS}. '
            f'Round it (to cents, 0.01, or micro-dollars, 0.000001), e.g. {{"{name}": 0.05}}; got {shown(value)}.'
        )
    return amount


def warn_percent(body: dict[str, Any], *, nullable: bool) -> Optional[Decimal]:
    """``body["warnAtPercent"]``: a number above 0 and at most 100, or None when absent or null."""
    value = body.get("warnAtPercent")
    if value is None:
        return None
    amount = money.exact(value) if number_within(value, 0, 100) and value > 0 else None
    if amount is None or _decimals(amount) > MAX_AMOUNT_DECIMALS:
        also = ", or null for no warning" if nullable else ""
        raise BadInput(
            f'"warnAtPercent" must be a number above 0 and at most 100 (the share of the limit at which the '
            f"ledger records a budget_warning) with at most {MAX_AMOUNT_DECIMALS} digits after the decimal point, "
            f'e.g. {{"warnAtPercent": 80}}{also}; got {shown(value)}.'
        )
    return amount


# -- query parameters --------------------------------------------------------------------


@overload
def query_int(params: Mapping[str, str], name: str, default: int, minimum: int, maximum: int) -> int: ...


@overload
def query_int(params: Mapping[str, str], name: str, default: None, minimum: int, maximum: int) -> Optional[int]: ...


def query_int(
    params: Mapping[str, str], name: str, default: Optional[int], minimum: int, maximum: int
) -> Optional[int]:
    """The query parameter ``name`` as an integer from ``minimum`` to ``maximum``; ``default`` when absent or empty.

    Raises :class:`BadInput` for anything but plain decimal digits (an optional ``-``; no ``+``, spaces,
    ``_`` or non-ASCII digits) and for a value out of range, such as a cursor of ``10**30`` that SQLite's
    64-bit integers cannot hold.
    """
    text = params.get(name)
    if text is None or text == "":
        return default
    value = int(text) if _QUERY_INT.fullmatch(text) else None
    if value is None or not minimum <= value <= maximum:
        raise BadInput(
            f"The query parameter {name} must be an integer from {minimum} to {maximum} (digits only), or left "
            f"out; got {shown(text, 40)}."
        )
    return value
