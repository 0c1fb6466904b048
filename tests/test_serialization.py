"""Values become JSON without ever raising; oversized events are trimmed visibly."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import uuid
from pathlib import PurePosixPath
from typing import Any

import pydantic
import pytest

from agent_ledger_sdk._events import encode_event
from agent_ledger_sdk._serialization import CYCLE_MARKER, DEPTH_MARKER, encode, encoded_size, fit_event, json_safe


def wire_event(event: dict[str, Any]) -> Any:
    return json.loads(encode_event(event))


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    when: datetime.date


class Model(pydantic.BaseModel):
    name: str
    at: datetime.datetime


class Hostile:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque thing>"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (datetime.datetime(2026, 1, 2, 3, 4, 5), "2026-01-02T03:04:05"),
        (datetime.date(2026, 1, 2), "2026-01-02"),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        (decimal.Decimal("1.25"), 1.25),
        (decimal.Decimal("NaN"), "NaN"),
        (Colour.RED, "red"),
        ({3, 1, 2}, [1, 2, 3]),
        ((1, "a"), [1, "a"]),
        (b"bytes", "bytes"),
        (b"\xff", "\\xff"),
        (float("inf"), "inf"),
        (Point(1, datetime.date(2026, 1, 1)), {"x": 1, "when": "2026-01-01"}),
        (Model(name="m", at=datetime.datetime(2026, 1, 1)), {"name": "m", "at": "2026-01-01T00:00:00"}),
        (PurePosixPath("/tmp/x"), "/tmp/x"),
        (Opaque(), "<Opaque thing>"),
        (Hostile(), "<unrepresentable Hostile>"),
        ({1: "int key", 2.5: "float key"}, {"1": "int key", "2.5": "float key"}),
        (datetime.timedelta(seconds=90), 90.0),
    ],
)
def test_values_become_json(value: Any, expected: Any) -> None:
    safe = json_safe(value)
    assert safe == expected
    json.dumps(safe, allow_nan=False)
    assert json.loads(encode({"v": value})) == {"v": expected}  # the fast path agrees


def test_cycles_are_cut_with_a_marker() -> None:
    loop: dict[str, Any] = {"name": "loop"}
    loop["self"] = loop
    items: list[Any] = [1]
    items.append(items)
    assert json_safe(loop) == {"name": "loop", "self": CYCLE_MARKER}
    assert json_safe(items) == [1, CYCLE_MARKER]
    assert json.loads(encode(loop)) == {"name": "loop", "self": CYCLE_MARKER}


def test_odd_keys_and_hostile_objects_take_the_safe_path() -> None:
    assert json.loads(encode({(1, 2): "tuple key", "nan": float("nan")})) == {"(1, 2)": "tuple key", "nan": "nan"}


def test_a_shared_value_that_is_not_a_cycle_is_kept_twice() -> None:
    shared = {"a": 1}
    assert json_safe([shared, shared]) == [{"a": 1}, {"a": 1}]


def test_deep_nesting_is_cut_with_a_marker() -> None:
    value: Any = "bottom"
    for _ in range(100):
        value = [value]
    safe = json_safe(value, max_depth=5)
    assert safe == [[[[[DEPTH_MARKER]]]]]
    json.dumps(json_safe(value))  # the default depth also encodes


def test_an_event_nested_deeper_than_a_ledger_reads_is_cut_not_refused() -> None:
    value: Any = "bottom"
    for _ in range(70):
        value = {"next": value}
    encoded = encode_event({"type": "tool_call", "name": "t", "toolInput": value})
    depth = deepest = 0
    for char in encoded:  # no string here holds a bracket
        depth += char in "[{"
        depth -= char in "]}"
        deepest = max(deepest, depth)
    assert deepest <= 64  # the ledger refuses bodies over 64 levels, the request's own two included
    assert DEPTH_MARKER in encoded
    wide = {"type": "tool_call", "name": "t", "toolInput": [{"k": [i]} for i in range(100)]}
    assert json.loads(encode_event(wide)) == wide  # many brackets, shallow: kept as it is


@pytest.mark.integration
def test_a_deep_value_logged_through_the_sdk_reaches_the_ledger_cut(tmp_path: Any) -> None:
    pytest.importorskip("starlette", reason="the local ledger needs the server extra")
    from agent_ledger_sdk.local import run

    value: Any = "bottom"
    for _ in range(70):
        value = [value]
    with run(db=tmp_path / "ledger.db") as ledger:
        client = ledger.client()
        try:
            session_id = client.start_session("deep-bot")
            client.log_tool_call(session_id, {"stepIndex": 0, "toolName": "t", "toolInput": value})
            client.end_session(session_id, "success")
        finally:
            client.close()
        (event,) = ledger.session(session_id)["events"]
    assert DEPTH_MARKER in json.dumps(event["toolInput"])


def test_a_dict_whose_items_explode_becomes_its_repr() -> None:
    class Exploding(dict):  # type: ignore[type-arg]
        def items(self) -> Any:
            raise RuntimeError("boom")

        def __repr__(self) -> str:
            return "Exploding()"

    assert json_safe({"x": Exploding()}) == {"x": "Exploding()"}


def test_an_event_under_64kb_is_untouched() -> None:
    event = {"type": "llm_call", "prompt": "x" * 1000}
    assert fit_event(event) is event


def test_an_oversized_event_has_its_largest_strings_truncated_visibly() -> None:
    event = {"type": "llm_call", "stepIndex": 3, "prompt": "p" * 100_000, "response": "r" * 50_000, "model": "m"}
    fitted = wire_event(event)
    assert encoded_size(fitted) <= 64 * 1024
    assert fitted["prompt"].startswith("ppp")
    assert "...[truncated " in fitted["prompt"]
    assert fitted["prompt"].endswith(" chars]")
    cut = int(fitted["prompt"].split("...[truncated ")[1].split(" ")[0])
    assert len(fitted["prompt"].split("...[truncated ")[0]) + cut == 100_000
    assert fitted["stepIndex"] == 3 and fitted["type"] == "llm_call" and fitted["model"] == "m"


def test_small_strings_survive_when_a_big_one_is_cut() -> None:
    event = {"type": "tool_result", "toolName": "t", "toolOutput": {"big": "b" * 200_000, "small": "keep me"}}
    fitted = wire_event(event)
    assert fitted["toolOutput"]["small"] == "keep me"
    assert encoded_size(fitted) <= 64 * 1024


def test_multibyte_text_is_measured_in_bytes() -> None:
    event = {"type": "x", "prompt": "é" * 40_000}  # 80 KB of UTF-8
    fitted = wire_event(event)
    assert encoded_size(fitted) <= 64 * 1024
    assert "truncated" in fitted["prompt"]


def test_an_event_of_too_many_small_values_is_replaced_by_a_note() -> None:
    event = {"type": "x", "stepIndex": 1, "values": list(range(30_000))}
    fitted = wire_event(event)
    assert fitted["type"] == "x" and fitted["stepIndex"] == 1
    assert "dropped" in fitted["truncated"]


def test_start_times_are_written_as_they_always_were() -> None:
    import time

    from agent_ledger_sdk._spans import rfc3339

    for moment in (0.0, 0.0005, 1764170837.123456, 1764170837.9999, 1764170838.0, 1764170837.001, -1.5):
        seconds = int(moment)
        expected = f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{int((moment - seconds) * 1000):03d}Z"
        assert rfc3339(moment) == expected


def test_token_counts_are_checked_and_coerced_whatever_else_the_event_holds() -> None:
    from agent_ledger_sdk._events import check_event

    tool = {"type": "tool_result", "stepIndex": 2.0, "toolName": "t", "toolOutput": 1, "latencyMs": 3}
    assert check_event(tool) is None and type(tool["stepIndex"]) is int
    assert "stepIndex" in (check_event({"type": "tool_call", "stepIndex": -1}) or "")
    llm = {"type": "llm_call", "stepIndex": 0, "provider": "p", "model": "m", "tokensIn": "12", "reasoningTokens": 3.0}
    assert check_event(llm) is None and llm["tokensIn"] == 12 and type(llm["reasoningTokens"]) is int
    assert "tokensOut" in (check_event({"type": "tool_call", "stepIndex": 0, "tokensOut": 1.5}) or "")
    assert "latencyMs" in (check_event({"type": "tool_call", "stepIndex": 0, "latencyMs": -1}) or "")
    assert "latencyMs" in (check_event({"type": "tool_call", "stepIndex": 0, "latencyMs": True}) or "")
