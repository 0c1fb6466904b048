"""The local ledger's HTTP edge under hostile input, over real HTTP: what a fuzzing report found, and a fuzzer.

Lone surrogates, bodies nested 2,000 deep, NaN and Infinity, integers past 64 bits, bodies past
16 MB and absurd budgets each get a 4xx JSON ``{"error": ...}`` that says what to change; nothing of
the request is stored; what was stored still reads; and the same keep-alive connection serves the
next request (an answer the server closes the connection after shows up here as a new local port).
"""

from __future__ import annotations

import json
import math
import tracemalloc
from collections.abc import Iterator
from typing import Any, Optional

import httpx
import pytest

pytest.importorskip("starlette", reason="the local ledger needs the server extra")

from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from agent_ledger_sdk._serialization import json_safe
from agent_ledger_sdk.local import LocalLedger
from agent_ledger_sdk.local.body import MAX_BODY_BYTES, MAX_JSON_DEPTH, parse_json_object
from agent_ledger_sdk.local.records import BadInput
from agent_ledger_sdk.local.validation import MAX_SAFE_INTEGER, query_int

from .ledger_fixtures import FLAT_PRICES, priced_ledger

pytestmark = pytest.mark.integration

ledger = priced_ledger(FLAT_PRICES)

JSON = {"content-type": "application/json"}
# One ledger serves every example; a slow or large example is the point, not a problem.
HEALTH_CHECKS_OFF = [
    HealthCheck.function_scoped_fixture,
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
]
NON_FINITE = ("NaN", "Infinity", "-Infinity", "1e400", "-1e400")


class Wire:
    """One ``httpx.Client`` that must keep one keep-alive connection: after an error the server neither
    resets it (httpx would raise) nor closes it (the next request would leave from a new local port)."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.port: Optional[int] = None

    def send(self, method: str, url: str, **options: Any) -> httpx.Response:
        response = self.http.request(method, url, **options)
        port = response.extensions["network_stream"].get_extra_info("client_addr")[1]
        if self.port is None:
            self.port = port
        assert port == self.port, f"{method} {url} went out on a new connection: the previous answer closed it"
        return response

    def post(self, url: str, content: Any, **options: Any) -> httpx.Response:
        return self.send("POST", url, content=content, headers={**JSON, **options.pop("headers", {})}, **options)

    def put(self, url: str, content: Any) -> httpx.Response:
        return self.send("PUT", url, content=content, headers=JSON)

    def get(self, url: str, **options: Any) -> httpx.Response:
        return self.send("GET", url, **options)

    def session(self, session_id: str) -> dict[str, Any]:
        response = self.get(f"/v1/sessions/{session_id}")
        assert response.status_code == 200, response.text
        session: dict[str, Any] = response.json()
        return session

    def start(self, agent: str) -> str:
        response = self.post("/v1/sessions", json.dumps({"agentName": agent}))
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def sessions_of(self, agent: str) -> list[Any]:
        response = self.get("/v1/sessions", params={"agent": agent})
        assert response.status_code == 200, response.text
        sessions: list[Any] = response.json()["sessions"]
        return sessions


@pytest.fixture
def wire(http: httpx.Client) -> Wire:
    return Wire(http)


@pytest.fixture
def session_id(wire: Wire) -> str:
    return wire.start("fuzz")


def refused(response: httpx.Response, status: int, *phrases: str) -> str:
    """The answer is a ``status`` with a JSON ``{"error": str}`` holding every phrase; its message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    message = response.json()["error"]
    assert isinstance(message, str) and message
    for phrase in phrases:
        assert phrase in message
    return message


def llm_event(**fields: Any) -> dict[str, Any]:
    return {
        "type": "llm_call",
        "stepIndex": 0,
        "provider": "openai",
        "model": "gpt-4o-mini",
        "tokensIn": 1,
        "tokensOut": 1,
        "latencyMs": 5,
        **fields,
    }


def events_body(session_id: str, *events_json: str) -> str:
    return '{"sessionId": ' + json.dumps(session_id) + ', "events": [' + ", ".join(events_json) + "]}"


def event_with(field: str, literal: str) -> str:
    """An llm_call's JSON whose ``field`` is ``literal`` (any JSON text, or what JSON is not)."""
    return json.dumps(llm_event(**{field: "__here__"})).replace('"__here__"', literal)


def nested(levels: int) -> Any:
    """``levels`` arrays, one in another: ``[[0]]`` is 2."""
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


def budget_of(wire: Wire, agent: str) -> tuple[Any, Any, Any]:
    response = wire.get("/v1/budgets")
    assert response.status_code == 200, response.text
    (budget,) = [b for b in response.json()["budgets"] if b["agentName"] == agent]
    return budget["dailyLimitUsd"], budget["monthlyLimitUsd"], budget["warnAtPercent"]


# -- 1. lone surrogates --------------------------------------------------------------------------------

LONE_SURROGATES = [
    ("high", r'"prompt": "a\ud800b"', "events[0].prompt holds a lone UTF-16 surrogate"),
    ("low", r'"response": "\udc00"', "events[0].response holds a lone UTF-16 surrogate"),
    ("reversed-pair", r'"prompt": "\ude00\ud83d"', "events[0].prompt"),
    ("upper-case-hex", r'"prompt": "\uD800"', "events[0].prompt"),
    ("nested", r'"toolInput": {"q": ["ok", "\udbff"]}', "events[0].toolInput.q[1]"),
    ("in-a-key", r'"toolInput": {"\ud800": 1}', "the key '\\ud800' of events[0].toolInput"),
    ("after-an-escaped-backslash", r'"prompt": "\\ud800\udc00"', "events[0].prompt"),  # a backslash, "ud800", U+DC00
]


@pytest.mark.parametrize(("case", "member", "where"), LONE_SURROGATES, ids=[c[0] for c in LONE_SURROGATES])
def test_a_lone_surrogate_is_a_400_that_says_where_and_nothing_is_stored(
    wire: Wire, session_id: str, case: str, member: str, where: str
) -> None:
    event = '{"type": "tool_call", "stepIndex": 0, ' + member + "}"
    message = refused(wire.post("/v1/events", events_body(session_id, event)), 400, where)
    assert "Send the text as UTF-8, or escape a character beyond U+FFFF as a whole pair" in message
    assert wire.session(session_id)["events"] == []
    assert wire.post("/v1/events", json.dumps({"sessionId": session_id, "events": [llm_event()]})).status_code == 202


@pytest.mark.parametrize(
    ("content", "where"),
    [
        (rb'{"agentName": "\udfff"}', "agentName holds a lone UTF-16 surrogate"),
        (rb'{"agentName": "surrogate-meta", "metadata": {"note": "x\ud800"}}', "metadata.note holds a lone"),
        (rb'{"agentName": "surrogate-tags", "tags": ["\ud800"]}', "tags[0] holds a lone"),
    ],
)
def test_a_lone_surrogate_in_a_session_is_a_400_and_no_session_is_started(
    wire: Wire, content: bytes, where: str
) -> None:
    refused(wire.post("/v1/sessions", content), 400, where)
    assert wire.sessions_of("surrogate-meta") == wire.sessions_of("surrogate-tags") == []
    wire.start("after-a-surrogate")


@pytest.mark.parametrize(
    "raw",
    [
        b"\xed\xa0\x80",  # U+D800 encoded as if it were a character (CESU-8), what json.loads(bytes) let through
        b"\xff",
        b"\xc3",  # a UTF-8 sequence cut short
    ],
)
def test_bytes_that_are_not_utf8_are_a_400(wire: Wire, session_id: str, raw: bytes) -> None:
    content = events_body(session_id, '{"type": "tool_call", "prompt": "X"}').encode().replace(b"X", raw)
    refused(
        wire.post("/v1/events", content), 400, "Request body is not valid UTF-8: byte ", "Send JSON encoded as UTF-8"
    )
    assert wire.session(session_id)["events"] == []


# Pieces of a JSON string's text: escapes of surrogates, of a backslash (\\\\ud800 is a backslash and "ud800").
ESCAPES = st.sampled_from(
    ["a", "\\\\", "\\\\ud800", "\\ud83d", "\\uD800", "\\ude00", "\\uDC00", "\\n", '\\"', "\\u0041", "\\u"]
)


@settings(max_examples=300, deadline=None, database=None)
@given(inner=st.lists(ESCAPES, max_size=8).map("".join))
def test_a_lone_surrogate_is_found_however_the_escapes_fall(inner: str) -> None:
    text = '{"k": "' + inner + '"}'
    try:
        value = json.loads(text)
    except ValueError:
        assume(False)
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value["k"]):
        with pytest.raises(BadInput, match="Request body: k holds a lone UTF-16 surrogate"):
            parse_json_object(text.encode())
    else:
        assert parse_json_object(text.encode()) == value


def test_escaped_pairs_utf8_and_an_escaped_backslash_are_text(wire: Wire, session_id: str) -> None:
    events = [
        r'{"type": "tool_call", "stepIndex": 0, "toolInput": "\ud83d\ude00", "\ud83d\ude00": "key"}',
        '{"type": "tool_call", "stepIndex": 1, "toolInput": "\U0001f600"}',
        r'{"type": "tool_call", "stepIndex": 2, "toolInput": "\\ud800"}',  # a backslash, then "ud800"
    ]
    content = events_body(session_id, *events).encode("utf-8")
    assert wire.post("/v1/events", content).status_code == 202
    stored = wire.session(session_id)["events"]
    assert [e["toolInput"] for e in stored] == ["\U0001f600", "\U0001f600", "\\ud800"]
    assert stored[0]["\U0001f600"] == "key"
    bom = "\ufeff" + json.dumps({"agentName": "with-a-bom"})
    assert wire.post("/v1/sessions", bom.encode("utf-8")).status_code == 201


NUL_IN_NAMES = [
    ("/v1/events", {"type": "tool\x00call"}, "events[0].type holds the character U+0000"),
    ("/v1/events", {"type": "llm_call", "provider": "open\x00ai"}, "events[0].provider holds the character U+0000"),
    ("/v1/events", {"type": "llm_call", "model": "\x00"}, "events[0].model holds"),
    ("/v1/events", {"type": "tool_call", "spanId": "s\x00"}, "events[0].spanId holds"),
    ("/v1/sessions", {"userId": "u\x00"}, '"userId" holds the character U+0000'),
    ("/v1/sessions", {"parentSessionId": "\x00"}, '"parentSessionId" holds'),
    ("/v1/sessions", {"tags": ["ok", "t\x00"]}, '"tags[1]" holds'),
]


@pytest.mark.parametrize(("path", "fields", "phrase"), NUL_IN_NAMES)
def test_a_nul_in_a_name_or_an_id_is_a_400_and_free_text_keeps_it(
    wire: Wire, session_id: str, path: str, fields: dict[str, Any], phrase: str
) -> None:
    """A name or an id has a column of its own, where PostgreSQL refuses U+0000; free text is stored as JSON."""
    if path == "/v1/events":
        content = json.dumps({"sessionId": session_id, "events": [{**llm_event(), **fields}]})
    else:
        content = json.dumps({"agentName": "nul", **fields})
    refused(wire.post(path, content), 400, phrase, "which names and ids may not hold; remove it.")
    assert wire.sessions_of("nul") == []
    free = {"prompt": "a\x00b", "toolInput": {"k\x00": ["\x00"]}}
    assert (
        wire.post("/v1/events", json.dumps({"sessionId": session_id, "events": [llm_event(**free)]})).status_code == 202
    )
    (stored,) = wire.session(session_id)["events"]
    assert {name: stored[name] for name in free} == free


# -- 2. nesting ---------------------------------------------------------------------------------------


def test_nesting_up_to_the_limit_is_stored_and_one_level_more_is_a_400_that_says_where(wire: Wire) -> None:
    # The body is level 1, "metadata" 2, "deep" 3 and on.
    at_limit = {"agentName": "deep-ok", "metadata": {"deep": nested(MAX_JSON_DEPTH - 2)}}
    response = wire.post("/v1/sessions", json.dumps(at_limit))
    assert response.status_code == 201, response.text
    assert wire.session(response.json()["id"])["metadata"] == at_limit["metadata"]

    over = {"agentName": "deep-over", "metadata": {"deep": nested(MAX_JSON_DEPTH - 1)}}
    message = refused(wire.post("/v1/sessions", json.dumps(over)), 400, "Request body is nested too deeply (")
    assert "(metadata.deep[0][0][0]" in message  # the path, shortened
    assert f"is at level {MAX_JSON_DEPTH + 1}): the limit is {MAX_JSON_DEPTH} levels of arrays and objects" in message
    assert "Flatten the data, or send a deep value as a JSON string." in message
    assert wire.sessions_of("deep-over") == []


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH, 500, 2_000, 100_000])
def test_an_event_nested_too_deeply_is_a_400_and_the_session_still_reads(
    wire: Wire, session_id: str, levels: int
) -> None:
    event = '{"type": "tool_call", "toolInput": ' + "[" * levels + "]" * levels + "}"
    refused(wire.post("/v1/events", events_body(session_id, event)), 400, "nested too deeply", "the limit is 64")
    assert wire.session(session_id)["events"] == []
    wire.start("after-a-deep-body")


def test_the_sdk_cuts_captured_values_well_above_the_limit(wire: Wire, session_id: str) -> None:
    """What the SDK captures (prompts, tool inputs and outputs) it cuts at 32 levels: such events always fit."""
    deep: Any = {"leaf": 1}
    for _ in range(200):
        deep = {"child": [deep]}
    event = {"type": "tool_call", "stepIndex": 0, "toolInput": json_safe(deep), "toolOutput": json_safe([deep])}
    response = wire.post("/v1/events", json.dumps({"sessionId": session_id, "events": [event]}))
    assert response.status_code == 202, response.text


# -- 3. NaN, Infinity and numbers past a double -----------------------------------------------------------


@pytest.mark.parametrize("literal", NON_FINITE)
def test_non_finite_numbers_are_400s_that_name_the_field_and_nothing_is_written(
    wire: Wire, session_id: str, literal: str
) -> None:
    refused(
        wire.post("/v1/events", events_body(session_id, event_with("latencyMs", literal))),
        400,
        "events[0].latencyMs must be a non-negative number of milliseconds (finite: not NaN or Infinity)",
    )
    refused(
        wire.post("/v1/events", events_body(session_id, event_with("temperature", literal))),
        400,
        "events[0].temperature is NaN or Infinity, which JSON cannot carry",
    )
    assert wire.session(session_id)["events"] == []

    agent = "non-finite-budget"
    assert wire.put(f"/v1/budgets/{agent}", '{"dailyLimitUsd": 1, "warnAtPercent": 80}').status_code == 200
    for name in ("dailyLimitUsd", "monthlyLimitUsd", "warnAtPercent"):
        refused(wire.put(f"/v1/budgets/{agent}", f'{{"{name}": {literal}}}'), 400, f'"{name}" must be ')
    refused(wire.put("/v1/workspace-budget", f'{{"dailyLimitUsd": {literal}}}'), 400, '"dailyLimitUsd" must be ')
    assert budget_of(wire, agent) == (1, None, 80)

    for context, phrase in (
        (f'"maxCostUsd": {literal}', '"maxCostUsd" must be a non-negative number of US dollars'),
        (f'"warnAtPercent": {literal}', '"warnAtPercent" must be a number above 0'),
        (f'"metadata": {{"scores": [{literal}]}}', "metadata.scores[0] is NaN or Infinity"),
    ):
        refused(wire.post("/v1/sessions", '{"agentName": "non-finite", ' + context + "}"), 400, phrase)
    assert wire.sessions_of("non-finite") == []
    reservation = {"sessionId": session_id, "provider": "openai", "model": "gpt-4o-mini", "maxCostUsd": "__here__"}
    content = json.dumps(reservation).replace('"__here__"', literal)
    refused(wire.post("/v1/reservations", content), 400, '"maxCostUsd" must be')
    assert wire.post("/v1/events", json.dumps({"sessionId": session_id, "events": [llm_event()]})).status_code == 202
    assert len(wire.session(session_id)["events"]) == 1


# -- 4. integers past 64 bits, and every number bounded ----------------------------------------------------------

HUGE_COUNTS = [
    ("stepIndex", str(2**63), "events[0].stepIndex must be a non-negative integer"),
    ("stepIndex", str(MAX_SAFE_INTEGER + 1), f"of at most {MAX_SAFE_INTEGER}"),
    ("tokensIn", str(10**30), "events[0].tokensIn must be a non-negative integer"),
    ("tokensOut", str(2**64), "events[0].tokensOut must be a non-negative integer"),
    ("cacheReadTokens", str(10**30), "events[0].cacheReadTokens"),
    ("reasoningTokens", str(-(2**63) - 1), "events[0].reasoningTokens"),
    ("latencyMs", str(10**400), "events[0].latencyMs must be a non-negative number"),  # once an OverflowError
    ("latencyMs", "1e308", f"of at most {MAX_SAFE_INTEGER}"),
]


@pytest.mark.parametrize(("field", "literal", "phrase"), HUGE_COUNTS, ids=[f"{c[0]}-{c[1][:6]}" for c in HUGE_COUNTS])
def test_an_integer_past_its_bound_is_a_400(wire: Wire, session_id: str, field: str, literal: str, phrase: str) -> None:
    response = wire.post("/v1/events", events_body(session_id, event_with(field, literal)))
    refused(response, 400, phrase)
    assert response.json()["rejected"][0]["field"] == field
    assert wire.session(session_id)["events"] == []


def test_numbers_the_ledger_does_not_read_are_stored_exactly(wire: Wire, session_id: str) -> None:
    """Attributes such as retries or seed are stored as the JSON text they came in: no column to overflow."""
    extra = {"retries": 10**30, "seed": 2**64, "temperature": 1e308, "timeToFirstTokenMs": -(2**70), "maxTokens": 0}
    response = wire.post("/v1/events", json.dumps({"sessionId": session_id, "events": [llm_event(**extra)]}))
    assert response.status_code == 202, response.text
    (stored,) = wire.session(session_id)["events"]
    assert {name: stored[name] for name in extra} == extra


BAD_AMOUNTS = [
    ("dailyLimitUsd", str(10**400), "must be at most 1000000000000 US dollars"),  # once an OverflowError
    ("dailyLimitUsd", "1e13", "must be at most 1000000000000 US dollars"),
    ("monthlyLimitUsd", str(10**30), "must be at most 1000000000000 US dollars"),
    ("dailyLimitUsd", "1e-30", "has 30 digits after the decimal point; the limit is 20. Round it"),
    ("dailyLimitUsd", "-0.01", "must be a non-negative number of US dollars"),
    ("dailyLimitUsd", '"5"', "must be a non-negative number of US dollars"),
    ("dailyLimitUsd", "true", "must be a non-negative number of US dollars"),
    ("warnAtPercent", str(10**400), '"warnAtPercent" must be a number above 0 and at most 100'),
    ("warnAtPercent", "1e-300", "with at most 20 digits after the decimal point"),
    ("warnAtPercent", "0", '"warnAtPercent" must be a number above 0'),
]


def test_absurd_budgets_are_400s_and_the_budget_is_unchanged(wire: Wire) -> None:
    agent = "absurd-budget"
    assert wire.put(f"/v1/budgets/{agent}", '{"dailyLimitUsd": 2.5, "monthlyLimitUsd": 1e12}').status_code == 200
    for name, literal, phrase in BAD_AMOUNTS:
        refused(wire.put(f"/v1/budgets/{agent}", f'{{"{name}": {literal}}}'), 400, f'"{name}"', phrase)
        refused(wire.put(f"/v1/budgets/{agent}", f'{{"dailyLimitUsd": 3, "{name}": {literal}}}'), 400, phrase)
    assert budget_of(wire, agent) == (2.5, 1e12, None)
    # The bounds themselves are fine: a trillion dollars, twenty decimal places.
    assert wire.put(f"/v1/budgets/{agent}", '{"dailyLimitUsd": 0.00000000000000000001}').status_code == 200
    assert budget_of(wire, agent)[0] == 1e-20


def test_absurd_caps_estimates_and_steps_are_400s(wire: Wire, session_id: str) -> None:
    refused(wire.post("/v1/sessions", '{"agentName": "capped", "maxCostUsd": 1e300}'), 400, "must be at most")
    refused(wire.post("/v1/sessions", '{"agentName": "capped", "warnAtPercent": 1e-300}'), 400, "warnAtPercent")
    assert wire.sessions_of("capped") == []
    call = '{"sessionId": ' + json.dumps(session_id) + ', "provider": "openai", "model": "gpt-4o-mini", '
    for rest, phrase in (
        (f'"maxCostUsd": {10**400}}}', '"maxCostUsd" must be at most'),
        (f'"estimate": {{"tokensIn": {10**30}, "tokensOut": 1}}}}', '"estimate.tokensIn" must be'),
        (f'"stepIndex": {2**63}, "maxCostUsd": 1}}', '"stepIndex" must be a non-negative integer'),
    ):
        refused(wire.post("/v1/reservations", call + rest), 400, phrase)
    assert wire.session(session_id)["events"] == []


@pytest.mark.parametrize(
    "query",
    [
        {"cursor": str(10**30)},
        {"cursor": "-1"},
        {"cursor": "1e3"},
        {"cursor": "abc"},
        {"limit": str(10**30)},
        {"limit": "0"},
    ],
)
def test_an_out_of_range_query_integer_is_a_400_that_names_it(wire: Wire, query: dict[str, str]) -> None:
    (name,) = query
    refused(wire.get("/v1/sessions", params=query), 400, name, "must be an integer from")
    assert wire.get("/v1/sessions", params={"limit": "1"}).status_code == 200


def test_query_int_reads_plain_digits_within_bounds() -> None:
    params = {"limit": "25", "cursor": "", "big": str(10**30), "plus": "+5", "space": " 5", "under": "1_0"}
    params["arabic"] = "\u0663"  # ARABIC-INDIC DIGIT THREE, which int() reads as 3
    assert query_int(params, "limit", 50, 1, 500) == 25
    assert query_int(params, "missing", 50, 1, 500) == 50
    assert query_int(params, "cursor", None, 0, 2**63 - 1) is None  # empty: as if left out
    for name in ("big", "plus", "space", "under", "arabic"):
        with pytest.raises(BadInput, match=f"The query parameter {name} must be an integer from 0 to 10"):
            query_int(params, name, None, 0, 10)
    with pytest.raises(BadInput, match=r"from 1 to 20 \(digits only\), or left out; got '25'"):
        query_int(params, "limit", 5, 1, 20)


# -- 5. bodies over the limit ---------------------------------------------------------------------------------


def test_a_body_of_exactly_the_limit_is_read_and_one_byte_more_is_a_413(wire: Wire) -> None:
    start = json.dumps({"agentName": "size"}).encode()
    exactly = start + b" " * (MAX_BODY_BYTES - len(start))  # whitespace is JSON
    assert wire.post("/v1/sessions", exactly).status_code == 201
    message = refused(wire.post("/v1/sessions", exactly + b" "), 413, f"the limit is {MAX_BODY_BYTES} bytes")
    assert message.startswith(f"Content-Length says {MAX_BODY_BYTES + 1} bytes")
    assert "Send fewer events per request" in message
    assert len(wire.sessions_of("size")) == 1


def test_a_streamed_body_is_refused_once_past_the_limit_and_memory_stays_bounded(wire: Wire, session_id: str) -> None:
    chunk = b"x" * (1024 * 1024)

    def upload(megabytes: int) -> Iterator[bytes]:  # no Content-Length: chunked
        yield b'{"sessionId": "' + session_id.encode() + b'", "events": [{"type": "x", "blob": "'
        for _ in range(megabytes):
            yield chunk
        yield b'"}]}'

    tracemalloc.start()
    try:
        response = wire.post("/v1/events", upload(128))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    refused(response, 413, f"The body is over {MAX_BODY_BYTES} bytes")
    assert peak < 3 * MAX_BODY_BYTES, f"{peak / 2**20:.0f} MiB held for a 128 MiB body"  # all of it: 128 MiB
    assert wire.session(session_id)["events"] == []


def test_a_refused_request_whose_body_was_not_read_leaves_the_connection_usable(wire: Wire, session_id: str) -> None:
    unread = json.dumps({"agentName": "unread", "padding": "x" * 1_000_000})
    refused(wire.post("/v1/sessions", unread, headers={"x-api-key": "al_wrong"}), 401, "Invalid or revoked API key")
    refused(wire.post("/v1/sessions", unread, headers={"x-api-key": ""}), 401, "Missing x-api-key header")
    assert wire.get("/v1/sessions/no-such-session", headers={"x-api-key": "al_wrong"}).status_code == 401
    refused(wire.send("PATCH", "/v1/sessions", content=unread), 405, "PATCH is not allowed")
    refused(wire.post("/v1/no-such-route", unread), 404, "No route POST /v1/no-such-route")
    over = b'{"agentName": "unread"' + b" " * MAX_BODY_BYTES + b"}"
    refused(wire.post("/v1/sessions", over, headers={"x-api-key": "al_wrong"}), 401)
    refused(wire.post("/v1/sessions", over), 413)
    assert wire.sessions_of("unread") == []
    assert wire.session(session_id)["events"] == []


def test_fifty_errors_in_a_row_on_one_connection(wire: Wire, session_id: str) -> None:
    bad = [
        ("/v1/events", events_body(session_id, r'{"type": "x", "p": "\ud800"}')),
        ("/v1/events", events_body(session_id, event_with("latencyMs", "NaN"))),
        ("/v1/events", events_body(session_id, event_with("stepIndex", str(2**63)))),
        ("/v1/events", events_body(session_id, '{"type": "x", "v": ' + "[" * 2000 + "]" * 2000 + "}")),
        ("/v1/sessions", '{"agentName": "x", "maxCostUsd": Infinity}'),
        ("/v1/sessions", "{not json"),
        ("/v1/events", events_body(session_id, '{"type": "x", "blob": "' + "x" * 70_000 + '"}')),
    ]
    for attempt in range(50):
        path, content = bad[attempt % len(bad)]
        assert 400 <= wire.post(path, content).status_code < 500
        assert (
            wire.post("/v1/events", json.dumps({"sessionId": session_id, "events": [llm_event()]})).status_code == 202
        )
    assert len(wire.session(session_id)["events"]) == 50


# -- the event schema, fuzzed ------------------------------------------------------------------------------------


class Raw:
    """JSON text written as it is: what ``json.dumps`` cannot produce (``1e400``, a lone ``\\ud800``)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        shown = self.text if len(self.text) <= 40 else f"{self.text[:20]}...({len(self.text)} characters)"
        return f"Raw({shown!r})"


def to_json(value: Any, ascii_only: bool) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        members = (f"{json.dumps(k, ensure_ascii=ascii_only)}: {to_json(v, ascii_only)}" for k, v in value.items())
        return "{" + ", ".join(members) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(to_json(v, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)  # NaN and Infinity as their literals


NASTY = st.sampled_from(
    [
        math.nan,
        math.inf,
        -math.inf,
        Raw("1e400"),
        Raw("-1e400"),
        Raw("1" * 400),
        2**53,
        2**63,
        -(2**63) - 1,
        2**64,
        10**30,
        -1,
        -0.0,
        1e308,
        5e-324,
        0.1,
        12.0,
        True,
        False,
        None,
        "",
        " ",
        "\x00",
        "\ud800",
        "\udfff\ud800",
        "\U0001f600",
        Raw(r'"\ud83d\ude00"'),
        Raw(r'"\uDBFF"'),
        Raw("[" * 70 + "]" * 70),
        Raw('"' + "x" * 70_000 + '"'),  # an event over 64 KB
        "2026-11-25T15:27:17.123Z",
        "2026-02-30T00:00:00Z",
        "llm_call",
        [],
        {},
    ]
)
# Text that is not text (lone surrogates), or is but looks otherwise.
NASTY_TEXT = st.sampled_from(["\ud800", "\udc00", "a\udbffz", "\ude00\ud83d", "\x00", "\u2028", "\ufeff", "\U0001f600"])
# Well-formed values: what a good event carries.
PLAIN = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(-1e6, 1e6), st.text(max_size=20)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
# Anything: wrong types, the nasty values above, deep inside arrays and objects too.
WILD = st.recursive(
    st.one_of(NASTY, NASTY_TEXT, st.integers(), st.floats(), st.text(max_size=20), PLAIN),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
TOKENS = st.integers(0, 10**6)
SPAN = st.text("0123456789abcdef", min_size=1, max_size=16)
GOOD_LLM_CALL = st.fixed_dictionaries(
    {
        "type": st.just("llm_call"),
        "stepIndex": st.integers(0, 1000),
        "provider": st.sampled_from(["openai", "anthropic", "test", "acme"]),
        "model": st.sampled_from(["gpt-4o-mini", "claude-3-5-haiku-latest", "flat", "private"]),
        "tokensIn": TOKENS,
        "tokensOut": TOKENS,
    },
    optional={
        "latencyMs": st.floats(0, 1e6),
        "startedAt": st.just("2026-11-25T15:27:17.123Z"),
        "spanId": SPAN,
        "parentSpanId": SPAN,
        "reasoningTokens": TOKENS,
        "usageMissing": st.booleans(),
        "prompt": PLAIN,
        "response": PLAIN,
        "retries": st.integers(0, 5),
        "timeToFirstTokenMs": st.integers(0, 10**5),
        "maxTokens": st.integers(1, 10**5),
        "temperature": st.floats(0, 2),
        "finishReason": st.sampled_from(["stop", "length"]),
    },
)
GOOD_TOOL_EVENT = st.fixed_dictionaries(
    {"type": st.sampled_from(["tool_call", "tool_result", "custom"]), "stepIndex": st.integers(0, 1000)},
    optional={
        "toolName": st.text(max_size=20),
        "toolInput": PLAIN,
        "toolOutput": PLAIN,
        "latencyMs": st.floats(0, 1e6),
    },
)
FIELDS = [
    "type",
    "stepIndex",
    "provider",
    "model",
    "tokensIn",
    "tokensOut",
    "cacheReadTokens",
    "cacheWriteTokens",
    "reasoningTokens",
    "latencyMs",
    "startedAt",
    "spanId",
    "parentSpanId",
    "reservationId",
    "usageMissing",
    "timeToFirstTokenMs",
    "retries",
    "maxTokens",
    "temperature",
    "prompt",
    "response",
    "toolInput",
    "toolOutput",
]
# A change to a good event: a field (known, or a key of any text) set to anything, or left out.
CHANGE = st.tuples(
    st.one_of(st.sampled_from(FIELDS), st.text(max_size=12), NASTY_TEXT),
    st.one_of(NASTY, NASTY_TEXT, WILD, st.just(Raw("leave out"))),
)


def changed(event: dict[str, Any], changes: list[tuple[str, Any]]) -> dict[str, Any]:
    event = dict(event)
    for name, value in changes:
        if isinstance(value, Raw) and value.text == "leave out":
            event.pop(name, None)
        else:
            event[name] = value
    return event


EVENT = st.one_of(
    st.builds(changed, st.one_of(GOOD_LLM_CALL, GOOD_TOOL_EVENT), st.lists(CHANGE, max_size=2)),
    WILD,  # not even an object, most of the time
)
EVENTS = st.one_of(st.lists(EVENT, min_size=1, max_size=3), WILD)


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=HEALTH_CHECKS_OFF,
)
@given(events=EVENTS, ascii_only=st.booleans())
def test_fuzzed_events_never_get_a_5xx_and_the_session_always_reads(
    wire: Wire, session_id: str, events: Any, ascii_only: bool
) -> None:
    before = wire.session(session_id)["eventCount"]
    body = '{"sessionId": ' + json.dumps(session_id) + ', "events": ' + to_json(events, ascii_only) + "}"
    content = body.encode("utf-8", "surrogatepass")  # a lone surrogate as bytes too, when not escaped
    response = wire.post("/v1/events", content)
    event(f"HTTP {response.status_code}")  # --hypothesis-show-statistics: how many got through
    assert response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/json"), response.text
    answer = response.json()
    if response.status_code == 202:
        assert answer["accepted"] == len(events)
        assert wire.session(session_id)["eventCount"] == before + len(events)
    else:
        assert response.status_code in (400, 413), response.text
        assert isinstance(answer["error"], str) and answer["error"]
        assert wire.session(session_id)["eventCount"] == before


# -- every operation of the OpenAPI document, fuzzed ---------------------------------------------------------------


def test_no_operation_of_the_api_answers_a_5xx(ledger: LocalLedger) -> None:
    """Schemathesis drives every operation of ``/openapi.json`` with what its schemas allow, and what they do not."""
    schemathesis = pytest.importorskip("schemathesis", reason="schemathesis needs Python 3.11 or later")
    schema = schemathesis.openapi.from_url(f"{ledger.url}/openapi.json")
    headers = {"x-api-key": ledger.api_key}
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=25, deadline=None, database=None, suppress_health_check=HEALTH_CHECKS_OFF)
        @given(case=st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in modes)))
        def call(case: Any) -> None:
            response = case.call(base_url=ledger.url, headers=headers)
            case.validate_response(response, checks=[schemathesis.checks.not_a_server_error])

        call()
