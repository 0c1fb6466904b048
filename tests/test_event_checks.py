"""``validation.check_event`` against a plain statement of its rules.

The checks of a valid event are inlined for speed (they run for every event ingested); these tests hold them to
the rules as the API reference states them, field by field, on events whose every field is drawn valid or not:
an event is accepted exactly when every field is valid, the first bad field (in the order the checks run) is the
one named, and an accepted event keeps what was meant (a count sent as 12.0 is stored as 12)."""

from __future__ import annotations

import datetime
import decimal
import json
import math
import re
from decimal import Decimal
from typing import Any, Callable, Optional

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent_ledger_sdk.local import money
from agent_ledger_sdk.local.records import PricedEvent
from agent_ledger_sdk.local.validation import (
    MAX_LATENCY_MS,
    MAX_RESERVATION_ID,
    MAX_SAFE_INTEGER,
    MAX_SPAN_ID,
    MAX_TOKENS,
    Rejection,
    check_event,
)

ABSENT = object()  # the field is left out of the event

# -- the rules, stated plainly ---------------------------------------------------------------------


def a_count(limit: int) -> Callable[[Any], bool]:
    def valid(value: Any) -> bool:
        if isinstance(value, bool):
            return False
        if isinstance(value, float):
            return math.isfinite(value) and value.is_integer() and 0 <= value <= limit
        return isinstance(value, int) and 0 <= value <= limit

    return valid


def a_duration(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return (not isinstance(value, float) or math.isfinite(value)) and 0 <= value <= MAX_LATENCY_MS


def a_timestamp(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    found = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|\+00:00)", value)
    if found is None:
        return False
    try:
        datetime.datetime(*map(int, found.groups()[:6]))
    except ValueError:
        return False
    return True


def a_name(limit: Optional[int]) -> Callable[[Any], bool]:
    def valid(value: Any) -> bool:
        return isinstance(value, str) and 1 <= len(value) <= (limit or 10**9) and "\x00" not in value

    return valid


def a_flag(value: Any) -> bool:
    return isinstance(value, bool)


# The fields in the order check_event checks them: (name, rule, required for every event, for an llm_call).
COMMON = [("type", a_name(None), True), ("stepIndex", a_count(MAX_SAFE_INTEGER), False)]
COMMON += [("latencyMs", a_duration, False), ("startedAt", a_timestamp, False)]
COMMON += [("spanId", a_name(MAX_SPAN_ID), False), ("parentSpanId", a_name(MAX_SPAN_ID), False)]
LLM = [("provider", a_name(None), True), ("model", a_name(None), True)]
LLM += [("tokensIn", a_count(MAX_TOKENS), True), ("tokensOut", a_count(MAX_TOKENS), True)]
LLM += [(name, a_count(MAX_TOKENS), False) for name in ("cacheReadTokens", "cacheWriteTokens", "reasoningTokens")]
COUNTS = ("stepIndex", "tokensIn", "tokensOut", "cacheReadTokens", "cacheWriteTokens", "reasoningTokens")
LAST = [("reservationId", a_name(MAX_RESERVATION_ID), False), ("usageMissing", a_flag, False)]


def first_problem(event: dict[str, Any]) -> Optional[str]:
    """The field the rules find wrong first ("" for the cached-token sum), or None when the event is valid."""
    fields = COMMON + (LLM if event.get("type") == "llm_call" else [])
    for name, valid, required in fields:
        value = event.get(name, ABSENT)
        if value is ABSENT or value is None:
            if required:
                return name
            continue
        if not valid(value):
            return name
    if event.get("type") != "llm_call":
        return non_finite(event)
    cached = sum(int(event.get(name) or 0) for name in ("cacheReadTokens", "cacheWriteTokens"))
    if cached > int(event["tokensIn"]):
        return ""
    for name, valid, _ in LAST:
        value = event.get(name)
        if value is not None and not valid(value):
            return name
    return non_finite(event)


def non_finite(event: dict[str, Any]) -> Optional[str]:
    """The first field holding NaN or an infinity, which JSON cannot carry (None: none does)."""
    return next((k for k, v in event.items() if isinstance(v, float) and not math.isfinite(v)), None)


def outcome(position: int, event: dict[str, Any]) -> tuple[Optional[PricedEvent], Optional[Rejection]]:
    try:
        return check_event(position, event), None
    except Rejection as rejection:
        return None, rejection


# -- values, valid or not ------------------------------------------------------------------------------

WRONG = st.sampled_from([True, False, "12", [], {}, -1, 1.5, math.nan, math.inf, -math.inf, "", "a\x00b", 2**70])


def counts(limit: int) -> st.SearchStrategy[Any]:
    return st.integers(0, limit) | st.integers(0, 10**6).map(float) | st.integers(limit + 1, limit + 10) | WRONG


def names(limit: int) -> st.SearchStrategy[Any]:
    return st.text(min_size=1, max_size=limit + 2) | WRONG


VALUES: dict[str, st.SearchStrategy[Any]] = {
    "stepIndex": counts(MAX_SAFE_INTEGER),
    "latencyMs": st.floats(0, 10**6) | st.integers(0, MAX_LATENCY_MS + 1) | WRONG,
    "startedAt": st.sampled_from(
        ["2026-11-25T15:27:17.123Z", "2026-11-25T15:27:17Z", "2026-11-25t15:27:17+00:00", "2026-02-30T00:00:00Z"]
    )
    | st.sampled_from(["2026-11-25 15:27:17Z", "2026-11-25T15:27:17+01:00", "yesterday"])
    | WRONG,
    "spanId": names(MAX_SPAN_ID),
    "parentSpanId": names(MAX_SPAN_ID),
    "provider": names(20),
    "model": names(20),
    "tokensIn": counts(MAX_TOKENS),
    "tokensOut": counts(MAX_TOKENS),
    "cacheReadTokens": st.integers(0, 2000) | WRONG,
    "cacheWriteTokens": st.integers(0, 2000) | WRONG,
    "reasoningTokens": counts(MAX_TOKENS),
    "reservationId": names(MAX_RESERVATION_ID),
    "usageMissing": st.booleans() | WRONG,
}


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["llm_call", "tool_call", "custom"]) | WRONG)
    event: dict[str, Any] = {} if kind is ABSENT else {"type": kind}
    for name, values in VALUES.items():
        # Mostly valid values, so that the later checks are reached too.
        choice = draw(st.sampled_from(["absent", "null", "valid", "valid", "valid", "any"]))
        if choice == "null":
            event[name] = None
        elif choice == "valid":
            value = draw(values)
            event[name] = value
        elif choice == "any":
            event[name] = draw(values)
    plausible = draw(st.sampled_from(["no", "names", "all"]))  # an llm_call whose later checks are reached
    if plausible != "no":
        event.update(type="llm_call", provider="openai", model="gpt-4o-mini")
    if plausible == "all":
        event.update(tokensIn=10**6, tokensOut=5)
    return event


@settings(max_examples=1500, deadline=None)
@given(event=events(), position=st.integers(0, 99))
def test_an_event_is_accepted_exactly_when_every_field_keeps_the_rules(event: dict[str, Any], position: int) -> None:
    expected = first_problem(event)
    checked, rejection = outcome(position, event)
    if rejection is not None:
        assert expected is not None, f"refused a valid event: {rejection.message}"
        if expected == "":
            assert rejection.field in ("cacheReadTokens", "cacheWriteTokens")
            assert "exceed tokensIn" in rejection.message
        else:
            assert rejection.field == expected, rejection.message
            assert f"events[{position}]" in rejection.message
        return
    assert expected is None, f"accepted an event whose {expected!r} breaks the rules"
    assert checked is not None
    # What was meant is kept: integral floats become ints, everything else as sent.
    converted = COUNTS if event["type"] == "llm_call" else ("stepIndex",)
    meant = {k: int(v) if isinstance(v, float) and k in converted else v for k, v in event.items()}
    assert checked.payload == meant
    assert json.loads(checked.encoded) == json.loads(json.dumps(meant))
    assert checked.type == event["type"]
    assert checked.step_index == meant.get("stepIndex")
    if event["type"] == "llm_call":
        assert (checked.tokens_in, checked.tokens_out) == (meant["tokensIn"], meant["tokensOut"])
        assert type(checked.tokens_in) is int and type(checked.tokens_out) is int
        assert (checked.provider, checked.model) == (event["provider"], event["model"])
        assert checked.reservation_id == event.get("reservationId")
        assert checked.usage_missing is (event.get("usageMissing") is True)
        assert checked.cost_status == "priced"
    else:
        assert checked.cost_status is None


@pytest.mark.parametrize(
    "event",
    [
        {"type": "llm_call", "provider": "p", "model": "m", "tokensIn": 5, "tokensOut": 1, "cacheReadTokens": 6},
        {"type": "llm_call", "provider": "p", "model": "m", "tokensIn": 5.0, "tokensOut": 1, "cacheWriteTokens": 6.0},
        {
            "type": "llm_call",
            "provider": "p",
            "model": "m",
            "tokensIn": 5,
            "tokensOut": 1,
            "cacheReadTokens": 0,
            "cacheWriteTokens": 6,
        },
    ],
)
def test_cached_tokens_beyond_the_input_name_the_cache_field_that_holds_some(event: dict[str, Any]) -> None:
    with pytest.raises(Rejection) as raised:
        check_event(0, event)
    holds = "cacheReadTokens" if event.get("cacheReadTokens") else "cacheWriteTokens"
    assert raised.value.field == holds


@settings(max_examples=600, deadline=None)
@given(amount=st.decimals(allow_nan=False, allow_infinity=False))
# More significant digits than money's context holds (60): the text must not round them. Found by CI.
@example(amount=Decimal("2.787404036630590723068034415435772806670451508667625628972573E-16"))
@example(amount=Decimal("4373.05912708204587015489839163062155467349571141152451797651"))
@example(amount=Decimal("1.2300E+5"))
@example(amount=Decimal("-0.000"))
def test_an_amounts_text_is_its_exact_digits_without_an_exponent_or_trailing_zeros(amount: Decimal) -> None:
    text = money.text(amount)
    assert Decimal(text) == amount
    assert "E" not in text and "e" not in text
    if "." in text:
        assert not text.endswith("0") and not text.endswith(".")
    # The reference: normalized with exactly as many digits as the amount has, so nothing rounds.
    digits = decimal.Context(prec=max(1, len(amount.as_tuple().digits)))
    assert text == ("0" if amount.is_zero() else format(amount.normalize(digits), "f"))
