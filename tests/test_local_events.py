"""Events of the local ledger over real HTTP: spans, bad events rejected one by one, lossless coercion, NaN."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("starlette", reason="the local ledger needs the server extra")

from agent_ledger_sdk import AgentLedgerClient, BadRequestError
from agent_ledger_sdk.local import LocalLedger, run

from .ledger_fixtures import priced_ledger, raw_rows

pytestmark = pytest.mark.integration

PRICES = {"test/flat": {"input_per_mtok": 1.0, "output_per_mtok": 1.0}}  # N tokens cost N micro-dollars


ledger = priced_ledger(PRICES)


@pytest.fixture
def session_id(http: httpx.Client) -> str:
    return str(http.post("/v1/sessions", json={"agentName": "events"}).json()["id"])


def llm(step: Any, tokens_in: Any = 10, tokens_out: Any = 0, **extra: Any) -> dict[str, Any]:
    return {
        "type": "llm_call",
        "stepIndex": step,
        "provider": "test",
        "model": "flat",
        "tokensIn": tokens_in,
        "tokensOut": tokens_out,
        **extra,
    }


def post_raw(http: httpx.Client, session_id: str, events_json: str) -> httpx.Response:
    content = '{"sessionId": "' + session_id + '", "events": [' + events_json + "]}"
    return http.post("/v1/events", content=content, headers={"content-type": "application/json"})


def recorded(ledger: LocalLedger, session_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = ledger.session(session_id)["events"]
    return events


# -- a bad event is rejected alone and clearly --------------------------------------------


def test_every_bad_event_of_a_batch_is_listed_and_none_of_the_batch_is_stored(
    http: httpx.Client, ledger: LocalLedger, session_id: str
) -> None:
    batch = [
        llm(0),
        llm(1, tokens_in="12"),
        {"type": "tool_call", "stepIndex": 2, "toolName": "t"},
        {"type": 5},
        {"type": "tool_call", "startedAt": "yesterday"},
        7,
        llm(6, cacheReadTokens=-1),
    ]
    response = http.post("/v1/events", json={"sessionId": session_id, "events": batch})
    assert response.status_code == 400
    body = response.json()
    assert body["error"].startswith("events[1].tokensIn must be a non-negative integer")
    assert body["error"] == body["rejected"][0]["error"]
    assert [(r["index"], r["field"]) for r in body["rejected"]] == [
        (1, "tokensIn"),
        (3, "type"),
        (4, "startedAt"),
        (5, None),
        (6, "cacheReadTokens"),
    ]
    messages = [r["error"] for r in body["rejected"]]
    assert "got '12'" in messages[0]
    assert messages[1].startswith('events[3].type is required: a string such as "llm_call"')
    assert 'events[4].startedAt must be an RFC 3339 timestamp in UTC, such as "2026-11-25T15:27:17.123Z"' in messages[2]
    assert messages[3] == "events[5] must be a JSON object, got a number."
    assert messages[4].startswith("events[6].cacheReadTokens must be a non-negative integer")
    assert recorded(ledger, session_id) == []
    assert ledger.session(session_id)["costUsd"] == 0

    rejected = {r["index"] for r in body["rejected"]}
    rest = [event for i, event in enumerate(batch) if i not in rejected]  # what a client resends
    again = http.post("/v1/events", json={"sessionId": session_id, "events": rest})
    assert again.status_code == 202
    assert again.json()["accepted"] == 2
    assert [e["stepIndex"] for e in recorded(ledger, session_id)] == [0, 2]


def test_an_oversized_event_makes_the_answer_a_413_that_still_lists_every_bad_event(
    http: httpx.Client, ledger: LocalLedger, session_id: str
) -> None:
    batch = [{"type": 1}, {"type": "x", "blob": "x" * 70_000}, llm(2)]
    response = http.post("/v1/events", json={"sessionId": session_id, "events": batch})
    assert response.status_code == 413
    body = response.json()
    assert body["error"].startswith("events[1] is 70")
    assert "the limit is 65536 per event" in body["error"]
    assert [(r["index"], r["field"]) for r in body["rejected"]] == [(0, "type"), (1, None)]
    assert recorded(ledger, session_id) == []


def test_the_sdk_sees_the_first_message_as_a_bad_request(ledger: LocalLedger, session_id: str) -> None:
    client = AgentLedgerClient(api_key=ledger.api_key, base_url=ledger.url, batching=False)
    try:
        with pytest.raises(BadRequestError) as raised:
            client.log_events(session_id, [{"type": "x"}, {"type": "x", "stepIndex": -1}])
    finally:
        client.close()
    assert "events[1].stepIndex must be a non-negative integer" in str(raised.value)
    body = raised.value.response.json()  # type: ignore[union-attr]
    assert body["rejected"] == [{"index": 1, "field": "stepIndex", "error": body["error"]}]


def test_a_batch_that_is_all_good_is_unchanged(http: httpx.Client, session_id: str) -> None:
    response = http.post("/v1/events", json={"sessionId": session_id, "events": [llm(0, 1000, 500)]})
    assert response.status_code == 202
    assert response.json() == {"accepted": 1, "costUsd": pytest.approx(1500e-6)}


def test_each_calls_cost_by_span_id_comes_back_only_when_asked(http: httpx.Client, session_id: str) -> None:
    """``priced`` (for the SDK's OpenTelemetry spans) costs time for every call of a batch: only a request with
    ``Agent-Ledger-Priced: true`` gets it."""
    events = [llm(0, 1000, 500, spanId="a1"), llm(1, 10, 0, spanId="b2"), llm(2, 10, 0)]
    plain = http.post("/v1/events", json={"sessionId": session_id, "events": events})
    assert plain.status_code == 202 and "priced" not in plain.json()
    asked = http.post(
        "/v1/events", json={"sessionId": session_id, "events": events}, headers={"Agent-Ledger-Priced": "TRUE"}
    )
    assert asked.status_code == 202
    assert [(p["spanId"], p["costStatus"]) for p in asked.json()["priced"]] == [("a1", "priced"), ("b2", "priced")]
    assert asked.json()["priced"][0]["costUsd"] == pytest.approx(1500e-6)


def test_the_sdk_asks_for_the_costs_only_when_it_exports_spans() -> None:
    pytest.importorskip("opentelemetry.trace")
    from agent_ledger_sdk._constants import PRICED_HEADER

    with AgentLedgerClient("sk-test", base_url="http://127.0.0.1:9") as plain:
        assert PRICED_HEADER not in plain._headers
    with AgentLedgerClient("sk-test", base_url="http://127.0.0.1:9", otel=True) as spans:
        assert spans._headers[PRICED_HEADER] == "true"


# -- lossless coercion ------------------------------------------------------------------------


def test_integral_floats_are_stored_as_integers(http: httpx.Client, ledger: LocalLedger, session_id: str) -> None:
    events = [
        llm(
            0.0,
            12.0,
            3.0,
            latencyMs=1.5,
            cacheReadTokens=4.0,
            cacheWriteTokens=0,
            reasoningTokens=2.0,
        ),
        {"type": "tool_call", "stepIndex": 1.0, "latencyMs": 7, "toolName": "t"},
    ]
    response = http.post("/v1/events", json={"sessionId": session_id, "events": events})
    assert response.status_code == 202, response.text
    assert response.json()["costUsd"] == pytest.approx(15e-6)
    session = ledger.session(session_id)
    call, tool = session["events"]
    for name, value in (("stepIndex", 0), ("tokensIn", 12), ("tokensOut", 3), ("cacheReadTokens", 4)):
        assert call[name] == value and type(call[name]) is int, name
    assert (call["cacheWriteTokens"], call["reasoningTokens"], call["latencyMs"]) == (0, 2, 1.5)
    assert type(call["reasoningTokens"]) is int
    assert tool["stepIndex"] == 1 and type(tool["stepIndex"]) is int
    assert (session["tokensIn"], session["tokensOut"]) == (12, 3)
    stored = raw_rows(ledger.db_path, "SELECT payload FROM events WHERE session_id = ? ORDER BY seq", (session_id,))
    assert '"tokensIn":12,' in stored[0][0]  # stored as the integer it meant


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("tokensIn", 12.5, "events[0].tokensIn must be a non-negative integer (a number, not a string)"),
        ("tokensOut", 10**13, "of at most 1000000000000, e.g. 12; got 10000000000000"),
        ("tokensIn", 1e300, "events[0].tokensIn must be a non-negative integer"),
        ("stepIndex", 2**53, "events[0].stepIndex must be a non-negative integer"),
        ("stepIndex", -1.0, "events[0].stepIndex must be a non-negative integer"),
        ("cacheWriteTokens", "3", "events[0].cacheWriteTokens must be a non-negative integer"),
        ("reasoningTokens", True, "events[0].reasoningTokens must be a non-negative integer"),
        ("latencyMs", -0.5, "events[0].latencyMs must be a non-negative number"),
        ("latencyMs", [1], "events[0].latencyMs must be a non-negative number"),
    ],
)
def test_a_count_that_would_lose_something_is_rejected(
    http: httpx.Client, ledger: LocalLedger, session_id: str, field: str, value: Any, message: str
) -> None:
    response = http.post("/v1/events", json={"sessionId": session_id, "events": [{**llm(0), field: value}]})
    assert response.status_code == 400
    (rejection,) = response.json()["rejected"]
    assert rejection["field"] == field
    assert message in rejection["error"]
    assert recorded(ledger, session_id) == []


def test_token_counts_of_other_events_are_not_checked(http: httpx.Client, ledger: LocalLedger, session_id: str) -> None:
    event = {"type": "tool_call", "stepIndex": 0, "tokensIn": "n/a", "cacheReadTokens": -1}
    assert http.post("/v1/events", json={"sessionId": session_id, "events": [event]}).status_code == 202
    assert recorded(ledger, session_id)[0]["tokensIn"] == "n/a"


# -- NaN and Infinity are never stored ---------------------------------------------------------


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_rejected_wherever_they_are(
    http: httpx.Client, ledger: LocalLedger, session_id: str, literal: str
) -> None:
    good = json.dumps(llm(0))
    events = ",".join(
        [
            good,
            '{"type": "llm_call", "provider": "test", "model": "flat", "tokensIn": 1, "tokensOut": 1, "latencyMs": '
            + literal
            + "}",
            '{"type": "llm_call", "provider": "test", "model": "flat", "tokensIn": ' + literal + ', "tokensOut": 1}',
            '{"type": "tool_result", "toolOutput": {"scores": [0.5, ' + literal + "]}}",
            '{"type": "llm_call", "provider": "test", "model": "flat", "tokensIn": 1, "tokensOut": 1, '
            '"reasoningTokens": ' + literal + "}",
        ]
    )
    response = post_raw(http, session_id, events)
    assert response.status_code == 400
    rejected = response.json()["rejected"]
    assert [(r["index"], r["field"]) for r in rejected] == [
        (1, "latencyMs"),
        (2, "tokensIn"),
        (3, "toolOutput"),
        (4, "reasoningTokens"),
    ]
    assert "finite: not NaN or Infinity" in rejected[0]["error"]
    assert "which JSON cannot carry" in rejected[1]["error"]
    assert rejected[2]["error"].startswith("events[3].toolOutput.scores[1] is NaN or Infinity")
    assert recorded(ledger, session_id) == []
    assert http.get(f"/v1/sessions/{session_id}").status_code == 200


def test_a_nan_budget_is_refused(http: httpx.Client) -> None:
    for literal in ("NaN", "Infinity", "1e999"):
        response = http.put(
            "/v1/budgets/nan-agent",
            content='{"dailyLimitUsd": ' + literal + "}",
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 400, literal
    assert http.get("/v1/budgets").status_code == 200


def test_a_body_nested_too_deeply_is_a_400(http: httpx.Client) -> None:
    content = '{"agentName": "deep", "metadata": ' + "[" * 100_000 + "]" * 100_000 + "}"
    response = http.post("/v1/sessions", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "nested too deeply" in response.json()["error"]


# -- spans ------------------------------------------------------------------------------------


def test_spans_and_start_times_are_stored_and_returned_in_step_order(
    http: httpx.Client, ledger: LocalLedger, session_id: str
) -> None:
    events = [
        {"type": "tool_result", "stepIndex": 1, "spanId": "s1", "parentSpanId": "root", "toolOutput": "ok"},
        {"type": "tool_call", "stepIndex": 1, "spanId": "s1", "parentSpanId": "root", "startedAt": "2026-11-25T15:27:17.123Z"},
        {"type": "llm_call", "stepIndex": 0, "provider": "test", "model": "flat", "tokensIn": 1, "tokensOut": 1,
         "spanId": "root", "startedAt": "2026-11-25T15:27:17Z"},
        {"type": "tool_call", "stepIndex": 2, "spanId": "x" * 64, "startedAt": "2026-11-25T15:27:18.123456789+00:00"},
    ]  # fmt: skip
    assert http.post("/v1/events", json={"sessionId": session_id, "events": events}).status_code == 202
    stored = http.get(f"/v1/sessions/{session_id}").json()["events"]
    assert [(e["stepIndex"], e["type"]) for e in stored] == [
        (0, "llm_call"),
        (1, "tool_result"),
        (1, "tool_call"),
        (2, "tool_call"),
    ]
    assert stored[0]["spanId"] == "root" and "parentSpanId" not in stored[0]
    assert (stored[2]["spanId"], stored[2]["parentSpanId"]) == ("s1", "root")
    assert stored[2]["startedAt"] == "2026-11-25T15:27:17.123Z"
    assert stored[3]["startedAt"] == "2026-11-25T15:27:18.123456789+00:00"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "startedAt",
            "2026-11-25 15:27:17Z",
            'must be an RFC 3339 timestamp in UTC, such as "2026-11-25T15:27:17.123Z"',
        ),
        ("startedAt", "2026-11-25T15:27:17+02:00", "must be an RFC 3339 timestamp in UTC"),
        ("startedAt", "2026-11-25T15:27:17", "must be an RFC 3339 timestamp in UTC"),
        ("startedAt", "2026-13-01T00:00:00Z", "got '2026-13-01T00:00:00Z'"),
        ("startedAt", "2026-02-30T00:00:00Z", "must be an RFC 3339 timestamp in UTC"),
        ("startedAt", 1764084437, "got 1764084437"),
        ("startedAt", "", "must be an RFC 3339 timestamp in UTC"),
        ("spanId", "", "events[0].spanId must be a string of 1 to 64 characters (an id you choose for this span)"),
        ("spanId", "x" * 65, "got a string of 65 characters"),
        ("spanId", 12, "events[0].spanId must be a string of 1 to 64 characters"),
        ("parentSpanId", ["a"], "events[0].parentSpanId must be a string of 1 to 64 characters (the spanId of its"),
    ],
)
def test_a_bad_span_field_is_rejected_with_the_expected_form(
    http: httpx.Client, session_id: str, field: str, value: Any, message: str
) -> None:
    response = http.post(
        "/v1/events", json={"sessionId": session_id, "events": [{"type": "tool_call", "stepIndex": 0, field: value}]}
    )
    assert response.status_code == 400
    (rejection,) = response.json()["rejected"]
    assert (rejection["index"], rejection["field"]) == (0, field)
    assert rejection["error"].startswith(f"events[0].{field}")
    assert message in rejection["error"]


def test_null_span_fields_are_as_good_as_absent(http: httpx.Client, session_id: str) -> None:
    event = {"type": "tool_call", "stepIndex": 0, "startedAt": None, "spanId": None, "parentSpanId": None}
    assert http.post("/v1/events", json={"sessionId": session_id, "events": [event]}).status_code == 202


def test_the_openapi_document_describes_what_was_added(ledger: LocalLedger) -> None:
    schema = httpx.get(f"{ledger.url}/openapi.json").json()
    components = schema["components"]["schemas"]
    event = components["Event"]["properties"]
    assert {"startedAt", "spanId", "parentSpanId", "cacheReadTokens", "cacheWriteTokens", "reasoningTokens"} <= set(
        event
    )
    assert {"userId", "tags", "metadata", "parentSessionId"} <= set(components["SessionSummary"]["properties"])
    assert "childSessionIds" in components["Session"]["allOf"][1]["properties"]
    rejection = components["EventsRejected"]["properties"]["rejected"]["items"]
    assert rejection["required"] == ["index", "field", "error"]
    start = schema["paths"]["/v1/sessions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"agentName", "userId", "tags", "metadata", "parentSessionId", "maxCostUsd", "warnAtPercent"} == set(
        start["properties"]
    )
    assert {"reservationId", "usageMissing"} <= set(event)
    assert {
        "/v1/reservations",
        "/v1/reservations/{reservationId}",
        "/v1/workspace-budget",
        "/v1/settings",
        "/v1/prices",
        "/v1/prices/{model}",
    } <= set(schema["paths"])
    guardrail = components["Guardrail"]["properties"]
    assert {"budget", "resetsAt"} <= set(guardrail)
    assert set(guardrail["details"]["properties"]) >= {
        "agentName",
        "dailyLimitUsd",
        "spentTodayUsd",
        "attemptedCostUsd",
        "projectedCostUsd",
        "remainingBudgetUsd",
    }
    session_event = components["Session"]["allOf"][1]["properties"]["events"]["items"]["allOf"][1]["properties"]
    assert {"costUsd", "costStatus", "overBudget"} <= set(session_event)
    assert {"user", "tag"} <= {p["name"] for p in schema["paths"]["/v1/sessions"]["get"]["parameters"]}
    responses = schema["paths"]["/v1/events"]["post"]["responses"]
    assert {"$ref": "#/components/schemas/EventsRejected"} in responses["400"]["content"]["application/json"]["schema"][
        "oneOf"
    ]

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for ref in refs(schema):
        assert ref.split("/")[-1] in components, ref


def test_a_file_database_keeps_the_events_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "restart.db"
    with run(db=path) as ledger, httpx.Client(base_url=ledger.url, headers={"x-api-key": ledger.api_key}) as http:
        session_id = http.post("/v1/sessions", json={"agentName": "a", "tags": ["t"]}).json()["id"]
        event = {"type": "tool_call", "stepIndex": 0, "spanId": "s", "startedAt": "2026-11-25T15:27:17.123Z"}
        assert http.post("/v1/events", json={"sessionId": session_id, "events": [event]}).status_code == 202
    with run(db=path) as ledger:
        session = ledger.session(session_id)
        assert session["tags"] == ["t"]
        assert session["events"][0]["spanId"] == "s"
