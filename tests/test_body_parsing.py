"""Request bodies read by orjson where json would read them the same, and by json everywhere else.

orjson reads a batch of events about 3 times as fast as json and encodes each event about 8 times as fast, but
it reads an integer past 64 bits as a float and writes NaN as null: these tests hold the two to the same
answer, value and type, on any JSON."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("orjson", reason="orjson comes with the server extra")

from agent_ledger_sdk.local import body as body_module
from agent_ledger_sdk.local.body import parse_json_body, parse_json_object
from agent_ledger_sdk.local.records import BadInput
from agent_ledger_sdk.local.store.sql import stored_rows
from agent_ledger_sdk.local.validation import Rejection, check_event

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def same(left: Any, right: Any) -> bool:
    """Equal, and of the same types all the way down (1 and 1.0 are not the same here)."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return list(left) == list(right) and all(same(left[k], right[k]) for k in left)
    if isinstance(left, list):
        return len(left) == len(right) and all(same(a, b) for a, b in zip(left, right))
    if isinstance(left, float):
        if math.isnan(left):
            return math.isnan(right)
        return left == right and math.copysign(1, left) == math.copysign(1, right)
    return bool(left == right)


@settings(max_examples=400, deadline=None)
@given(body=st.dictionaries(st.text(max_size=8), JSON, max_size=5), spaced=st.booleans())
def test_any_object_reads_as_json_reads_it(body: dict[str, Any], spaced: bool) -> None:
    raw = json.dumps(body, ensure_ascii=spaced, separators=(", ", ": ") if spaced else (",", ":")).encode()
    parsed, _ = parse_json_body(raw)
    assert same(parsed, json.loads(raw))


@pytest.mark.parametrize(
    ("raw", "by_orjson"),
    [
        (b'{"n": 922337203685477580, "m": -922337203685477580, "f": 0.1}', True),
        (b'{"n": 9223372036854775807}', False),  # 19 digits: json, to be sure
        (b'{"n": 123456789012345678901234567890}', False),  # orjson would make it a float
        (b'{"n": 1e400}', False),  # Infinity: the events' checks refuse it with their own message
        (b'{"n": NaN}', False),
        ('\ufeff{"n": 1}'.encode(), False),  # a byte order mark, which json's reading skips
    ],
)
def test_what_orjson_would_read_otherwise_goes_to_json(raw: bytes, by_orjson: bool) -> None:
    parsed, orjson_read = parse_json_body(raw)
    assert orjson_read is by_orjson
    assert same(parsed, json.loads(raw.decode("utf-8-sig")))


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b'{"a": "\\ud800"}', "lone UTF-16 surrogate"),
        (b'{"a": 1,}', "not valid JSON"),
        (b"\xff{}", "not valid UTF-8"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"a": ' + b"[" * 70 + b"]" * 70 + b"}", "nested too deeply"),
    ],
)
def test_bad_bodies_get_the_same_messages(raw: bytes, says: str) -> None:
    with pytest.raises(BadInput, match=says):
        parse_json_object(raw)


@settings(max_examples=300, deadline=None)
@given(extra=st.dictionaries(st.sampled_from(["metadata", "input", "output", "note"]), JSON, max_size=3))
def test_an_event_is_stored_as_the_same_json_whoever_read_it(extra: dict[str, Any]) -> None:
    event = {"type": "tool_call", "toolName": "search", "stepIndex": 3, **extra}
    raw = json.dumps({"sessionId": "s", "events": [event]}).encode()
    body, orjson_read = parse_json_body(raw)
    fast = check_event(0, body["events"][0], parsed_by_orjson=orjson_read)
    slow = check_event(0, json.loads(raw)["events"][0])
    # The payload text each is stored as (the row's fifth column, as the store writes it).
    stored_fast, stored_slow = (stored_rows("s", "now", [e])[0][4] for e in (fast, slow))
    assert same(json.loads(stored_fast), json.loads(stored_slow))
    assert same(json.loads(stored_fast), event)


def test_an_event_too_large_is_refused_either_way() -> None:
    event = {"type": "tool_call", "input": "x" * 2_000_000}
    for orjson_read in (True, False):
        with pytest.raises(Rejection, match="bytes; the limit is"):
            check_event(0, event, parsed_by_orjson=orjson_read)


def test_a_timestamp_is_checked_whatever_was_checked_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """The last valid timestamp is remembered (a call's two events share one): only that very text passes unread."""
    from agent_ledger_sdk.local import validation

    monkeypatch.setattr(validation, "_valid_timestamp", None)  # as a new process starts
    with pytest.raises(Rejection, match="RFC 3339"):
        check_event(0, {"type": "tool_call", "startedAt": ""})
    valid = "2026-11-26T06:14:28.309Z"
    for _ in range(2):
        assert check_event(0, {"type": "tool_call", "startedAt": valid}).payload["startedAt"] == valid
    for wrong in ("", "2026-02-30T06:14:28.309Z", valid[:-1], valid + " ", valid.replace("T", " "), 1764137668):
        with pytest.raises(Rejection, match="RFC 3339"):
            check_event(0, {"type": "tool_call", "startedAt": wrong})
        check_event(0, {"type": "tool_call", "startedAt": valid})  # and the valid one still passes after it


def depth(value: Any) -> int:
    """How many arrays and objects nest in one another in ``value`` (itself counted)."""
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def chain(levels: int, leaf: Any, objects: bool) -> Any:
    for _ in range(levels):
        leaf = {"k": leaf} if objects else [leaf]
    return leaf


MEMBERS = SCALARS | st.builds(chain, st.integers(0, 70), SCALARS, st.booleans())


@settings(max_examples=500, deadline=None)
@given(
    events=st.lists(MEMBERS, max_size=120),
    others=st.dictionaries(st.sampled_from(["a", "b", "metadata"]), MEMBERS, max_size=3),
    brackets_in_text=st.integers(0, 3),
)
def test_a_body_is_refused_for_its_depth_exactly_when_it_nests_past_the_limit(
    events: list[Any], others: dict[str, Any], brackets_in_text: int
) -> None:
    """Many containers side by side (a batch of events) are bounded from the text's brackets without walking
    them: the bound must never be under the true depth, whatever sits beside them, brackets within strings
    included (they make the count larger, never smaller)."""
    body = {"sessionId": "[{" * brackets_in_text, "events": events, **others}
    raw = json.dumps(body).encode()
    openers = raw.count(b"[") + raw.count(b"{")
    assert body_module._depth_bound(json.loads(raw), openers) >= depth(body)
    if depth(body) > body_module.MAX_JSON_DEPTH:
        with pytest.raises(BadInput, match="nested too deeply"):
            parse_json_body(raw)
    else:
        parsed, _ = parse_json_body(raw)
        assert same(parsed, body)


def test_a_batch_of_flat_events_is_bounded_without_a_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound counts one bracket for each member of the widest container: flat events (the benchmark's
    llm_calls) are bounded; events with objects within them are walked, as before."""
    walked: list[Any] = []
    monkeypatch.setattr(body_module, "_deeper_than", lambda value, limit: walked.append(value) or False)
    flat = [{"type": "llm_call", "stepIndex": n, "tokensIn": n} for n in range(100)]
    parse_json_body(json.dumps({"sessionId": "s", "events": flat, "metadata": {"a": [1]}}).encode())
    assert walked == []  # 104 brackets: at most 2 + 104 - 2 - 100 = 4 levels
    nested = [{"type": "tool_call", "stepIndex": n, "input": {"q": [n]}} for n in range(100)]
    parse_json_body(json.dumps({"sessionId": "s", "events": nested}).encode())
    assert len(walked) == 1  # 302 brackets: the bound (203) says nothing, so it walks (and finds 5)
