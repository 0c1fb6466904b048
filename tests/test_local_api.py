"""The local ledger's API over real HTTP on 127.0.0.1, driven by this project's own clients."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("starlette", reason="the local ledger needs the server extra")

from agent_ledger_sdk import (
    AgentLedgerClient,
    APIStatusError,
    AsyncAgentLedgerClient,
    AuthenticationError,
    BadRequestError,
    BudgetGuardrailError,
    ConflictError,
    NotFoundError,
)
from agent_ledger_sdk.local import LocalLedger

from .conftest import Api
from .ledger_fixtures import priced_ledger

pytestmark = pytest.mark.integration

# $1 per million tokens in and out: a call of N tokens costs N micro-dollars.
PRICES = {"test/flat": {"input_per_mtok": 1.0, "output_per_mtok": 1.0}}


ledger = priced_ledger(PRICES)


def llm_event(
    step: int, tokens_in: int, tokens_out: int = 0, model: str = "flat", provider: str = "test"
) -> dict[str, Any]:
    return {
        "type": "llm_call",
        "stepIndex": step,
        "provider": provider,
        "model": model,
        "prompt": "p",
        "response": "r",
        "tokensIn": tokens_in,
        "tokensOut": tokens_out,
        "latencyMs": 5,
    }


@pytest.fixture(params=["sync", "async"])
def api(request: pytest.FixtureRequest, ledger: LocalLedger) -> Iterator[Api]:
    """This project's sync or async client, called the same way."""
    if request.param == "sync":
        wrapper = Api(ledger.client(batching=False), None)
    else:
        wrapper = Api(ledger.async_client(batching=False), asyncio.new_event_loop())
    yield wrapper
    wrapper.close()


# -- the published protocol -----------------------------------------------------


def test_a_session_is_recorded_with_its_events_in_step_order_and_priced(api: Api, ledger: LocalLedger) -> None:
    session_id = api.start_session("recorder")
    api.log_tool_call(session_id, {"stepIndex": 1, "toolName": "search", "toolInput": {"q": "x"}})
    api.log_llm_call(session_id, llm_event(0, 1000, 500))
    api.log_tool_result(session_id, {"stepIndex": 1, "toolName": "search", "toolOutput": ["a"], "latencyMs": 3})
    api.end_session(session_id, "error", error_message="ValueError: bad")
    recorded = ledger.session(session_id)
    assert recorded["agentName"] == "recorder"
    assert recorded["status"] == "error"
    assert recorded["errorMessage"] == "ValueError: bad"
    assert recorded["endedAt"] >= recorded["startedAt"]
    assert [(e["stepIndex"], e["type"]) for e in recorded["events"]] == [
        (0, "llm_call"),
        (1, "tool_call"),
        (1, "tool_result"),
    ]
    assert recorded["events"][0]["costUsd"] == Decimal("0.0015")
    assert recorded["events"][0]["costStatus"] == "priced"
    assert recorded["events"][1]["costUsd"] == 0
    assert recorded["events"][1]["costStatus"] is None  # a tool call costs nothing
    assert recorded["costUsd"] == Decimal("0.0015")
    assert (recorded["tokensIn"], recorded["tokensOut"], recorded["eventCount"]) == (1000, 500, 3)


def test_known_models_are_priced_from_genai_prices(api: Api, ledger: LocalLedger) -> None:
    from genai_prices import Usage, calc_price

    expected = calc_price(
        Usage(input_tokens=1000, output_tokens=100), model_ref="gpt-4o-mini", provider_id="openai"
    ).total_price
    session_id = api.start_session("priced")
    api.log_llm_call(session_id, llm_event(0, 1000, 100, model="gpt-4o-mini", provider="openai"))
    event = ledger.session(session_id)["events"][0]
    assert event["costStatus"] == "priced"
    assert event["costUsd"] == expected
    assert expected > 0


def test_an_unknown_model_is_flagged_unpriced_never_priced_at_zero(api: Api, ledger: LocalLedger) -> None:
    session_id = api.start_session("mystery")
    api.log_llm_call(session_id, llm_event(0, 1000, 100, model="my-private-model", provider="acme"))
    recorded = ledger.session(session_id)
    event = recorded["events"][0]
    assert event["costStatus"] == "unpriced"
    assert event["priced"] is False
    assert "No price for model 'my-private-model' (provider 'acme')" in event["pricingNote"]
    assert "agent-ledger prices set acme/my-private-model" in event["pricingNote"]
    assert recorded["unpricedEvents"] == 1


def test_a_call_whose_usage_is_missing_is_charged_an_estimate(api: Api, ledger: LocalLedger) -> None:
    from agent_ledger_sdk.local.pricing import ESTIMATE_TOKENS_IN, ESTIMATE_TOKENS_OUT

    session_id = api.start_session("no-usage")
    api.log_llm_call(session_id, {**llm_event(0, 0, 0), "usageMissing": True})
    recorded = ledger.session(session_id)
    event = recorded["events"][0]
    assert event["costStatus"] == "estimated"
    assert event["costUsd"] == Decimal(ESTIMATE_TOKENS_IN + ESTIMATE_TOKENS_OUT) / 1_000_000  # test/flat: $1/MTok
    assert "usage missing" in event["pricingNote"]
    assert (recorded["estimatedEvents"], recorded["costUsd"]) == (1, event["costUsd"])


# -- idempotency --------------------------------------------------------------------


def test_a_repeated_request_is_applied_once_and_answered_the_same(http: httpx.Client, ledger: LocalLedger) -> None:
    headers = {"Idempotency-Key": "start-once"}
    first = http.post("/v1/sessions", json={"agentName": "idem"}, headers=headers)
    again = http.post("/v1/sessions", json={"agentName": "idem"}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert again.headers["idempotent-replayed"] == "true"
    session_id = first.json()["id"]
    batch = {"sessionId": session_id, "events": [llm_event(0, 10), llm_event(1, 10)]}
    for _ in range(3):
        assert http.post("/v1/events", json=batch, headers={"Idempotency-Key": "batch-1"}).status_code == 202
    assert len(ledger.session(session_id)["events"]) == 2
    end = {"status": "success", "errorMessage": None}
    assert (
        http.post(f"/v1/sessions/{session_id}/end", json=end, headers={"Idempotency-Key": "end-1"}).status_code == 200
    )
    assert (
        http.post(f"/v1/sessions/{session_id}/end", json=end, headers={"Idempotency-Key": "end-1"}).status_code == 200
    )
    assert [s["id"] for s in ledger.sessions("idem")] == [session_id]


def test_a_reused_key_with_another_request_is_refused(http: httpx.Client) -> None:
    http.post("/v1/sessions", json={"agentName": "a"}, headers={"Idempotency-Key": "reused"})
    response = http.post("/v1/sessions", json={"agentName": "b"}, headers={"Idempotency-Key": "reused"})
    assert response.status_code == 422
    assert "different request" in response.json()["error"]


def test_the_sdk_retries_are_applied_once_end_to_end(ledger: LocalLedger) -> None:
    """A 503 on the first attempt: the SDK retries with the same key, the ledger records once."""
    real = httpx.HTTPTransport()
    attempts: list[str] = []

    class FlakyAfterApply(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = real.handle_request(request)  # the ledger applies the request...
            attempts.append(request.headers["idempotency-key"])
            if len(attempts) == 1:
                response.read()
                return httpx.Response(503, json={"error": "lost the answer"})  # ...but the answer is lost
            return response

    client = AgentLedgerClient(api_key=ledger.api_key, base_url=ledger.url, transport=FlakyAfterApply(), batching=False)
    try:
        session_id = client.start_session("retried")
    finally:
        client.close()
        real.close()
    assert attempts[0] == attempts[1]
    assert [s["id"] for s in ledger.sessions("retried")] == [session_id]


# -- isolation between workspaces ------------------------------------------------------


def test_one_workspace_cannot_read_append_to_or_end_anothers_sessions(ledger: LocalLedger, http: httpx.Client) -> None:
    mine = http.post("/v1/sessions", json={"agentName": "private"}).json()["id"]
    other_key = ledger.service.create_key("intruder", "other-team").secret
    intruder = AgentLedgerClient(api_key=other_key, base_url=ledger.url, batching=False)
    missing = "00000000-0000-0000-0000-000000000000"
    errors = []
    for target in (mine, missing):
        with pytest.raises(NotFoundError) as appending:
            intruder.log_events(target, [{"type": "x"}])
        with pytest.raises(NotFoundError) as ending:
            intruder.end_session(target, "success")
        reading = httpx.get(f"{ledger.url}/v1/sessions/{target}", headers={"x-api-key": other_key})
        assert reading.status_code == 404
        errors.append(
            (
                str(appending.value).replace(target, "ID"),
                str(ending.value).replace(target, "ID"),
                reading.json()["error"].replace(target, "ID"),
            )
        )
    assert errors[0] == errors[1]  # indistinguishable from a session that does not exist
    listed = httpx.get(f"{ledger.url}/v1/sessions", headers={"x-api-key": other_key}).json()["sessions"]
    assert mine not in [s["id"] for s in listed]
    assert http.get(f"/v1/sessions/{mine}").json()["status"] == "running"
    intruder.close()


def test_keys_are_required_valid_and_unrevoked(ledger: LocalLedger) -> None:
    for headers in ({}, {"x-api-key": "al_nope_nope"}, {"x-api-key": "garbage"}):
        response = httpx.post(f"{ledger.url}/v1/sessions", json={"agentName": "a"}, headers=headers)
        assert response.status_code == 401
        assert "agent-ledger keys create" in response.json()["error"]
    new = ledger.service.create_key("temporary")
    client = AgentLedgerClient(api_key=new.secret, base_url=ledger.url, batching=False)
    client.start_session("ok")
    ledger.service.revoke_key(new.key.id)
    with pytest.raises(AuthenticationError, match="revoked"):
        client.start_session("too late")
    client.close()


def test_keys_are_stored_hashed(ledger: LocalLedger) -> None:
    new = ledger.service.create_key("hashed")
    if isinstance(ledger.db_path, Path):
        raw = ledger.db_path.read_bytes() + Path(str(ledger.db_path) + "-wal").read_bytes()
    else:  # PostgreSQL: every column of the keys table, as text
        import psycopg

        with psycopg.connect(ledger.db_path) as db:
            raw = repr(db.execute("SELECT * FROM api_keys").fetchall()).encode()
        assert new.key.id.encode() in raw
    assert new.secret.encode() not in raw


# -- bad input -------------------------------------------------------------------------


@pytest.fixture
def session_id(http: httpx.Client) -> str:
    return str(http.post("/v1/sessions", json={"agentName": "validator"}).json()["id"])


BAD_EVENTS = [
    ("not-a-list", {"events": "nope"}, 400, '"events" must be a non-empty list'),
    ("empty", {"events": []}, 400, "non-empty list"),
    ("not-an-object", {"events": [1]}, 400, "events[0] must be a JSON object"),
    ("no-type", {"events": [{"stepIndex": 0}]}, 400, "events[0].type is required"),
    (
        "string-tokens",
        {"events": [{**llm_event(0, 1), "tokensIn": "12"}]},
        400,
        "events[0].tokensIn must be a non-negative integer",
    ),
    ("negative-tokens", {"events": [{**llm_event(0, 1), "tokensOut": -3}]}, 400, "tokensOut must be a non-negative"),
    ("bool-tokens", {"events": [{**llm_event(0, 1), "tokensIn": True}]}, 400, "tokensIn"),
    (
        "no-model",
        {"events": [{k: v for k, v in llm_event(0, 1).items() if k != "model"}]},
        400,
        "events[0].model is required",
    ),
    ("string-step", {"events": [{"type": "x", "stepIndex": "3"}]}, 400, "stepIndex must be a non-negative integer"),
    (
        "string-latency",
        {"events": [{"type": "x", "latencyMs": "fast"}]},
        400,
        "latencyMs must be a non-negative number",
    ),
    ("oversized", {"events": [{"type": "x", "blob": "x" * 70_000}]}, 413, "the limit is 65536 per event"),
    ("second-bad", {"events": [llm_event(0, 1), {"type": 5}]}, 400, "events[1].type"),
]


@pytest.mark.parametrize(("case", "body", "status", "message"), BAD_EVENTS, ids=[c[0] for c in BAD_EVENTS])
def test_bad_events_get_a_clear_4xx_and_nothing_is_written(
    http: httpx.Client, ledger: LocalLedger, session_id: str, case: str, body: dict[str, Any], status: int, message: str
) -> None:
    response = http.post("/v1/events", json={"sessionId": session_id, **body})
    assert response.status_code == status
    assert message in response.json()["error"]
    assert ledger.session(session_id)["events"] == []


@pytest.mark.parametrize(
    ("path", "content", "message"),
    [
        ("/v1/sessions", b"{not json", "not valid JSON"),
        ("/v1/sessions", b"[1, 2]", "must be a JSON object"),
        ("/v1/sessions", b"", "must be a JSON object"),
        ("/v1/sessions", b'{"agentName": ""}', '"agentName" is required'),
        ("/v1/sessions", b'{"agentName": 7}', '"agentName" is required'),
        ("/v1/events", b'{"events": [{"type": "x"}]}', '"sessionId" is required'),
    ],
)
def test_malformed_requests_get_a_400_that_says_how_to_fix_them(
    http: httpx.Client, path: str, content: bytes, message: str
) -> None:
    response = http.post(path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_ending_with_a_bad_status_is_a_400(http: httpx.Client, session_id: str) -> None:
    response = http.post(f"/v1/sessions/{session_id}/end", json={"status": "done"})
    assert response.status_code == 400
    assert '"success" or "error"' in response.json()["error"]


def test_an_unknown_session_is_a_404(api: Api) -> None:
    with pytest.raises(NotFoundError, match="not found"):
        api.log_events("no-such-session", [{"type": "x"}])
    with pytest.raises(NotFoundError):
        api.end_session("no-such-session", "success")


def test_an_ended_session_takes_no_more_events_and_ends_once(api: Api) -> None:
    session_id = api.start_session("finished")
    api.end_session(session_id, "success")
    with pytest.raises(ConflictError, match="already ended"):
        api.log_events(session_id, [{"type": "x"}])
    with pytest.raises(ConflictError, match="already ended"):
        api.end_session(session_id, "error", error_message="again")


def test_unknown_routes_and_methods_answer_in_json(http: httpx.Client) -> None:
    assert http.get("/v2/nothing").json()["error"].startswith("No route GET /v2/nothing")
    response = http.delete("/v1/events")
    assert response.status_code == 405
    assert "not allowed" in response.json()["error"]


def test_an_api_status_error_carries_the_server_message(api: Api) -> None:
    with pytest.raises(BadRequestError) as raised:
        api.log_llm_call("whatever", {**llm_event(0, 1), "tokensIn": -1})
    assert isinstance(raised.value, APIStatusError)
    assert "tokensIn must be a non-negative integer" in str(raised.value)


# -- the read API ------------------------------------------------------------------------


def test_sessions_are_listed_filtered_and_paginated(ledger: LocalLedger) -> None:
    key = ledger.service.create_key("reader", "reader-team").secret
    client = AgentLedgerClient(api_key=key, base_url=ledger.url, batching=False)
    ids = [client.start_session("pager") for _ in range(5)]
    client.end_session(ids[0], "error", error_message="x")
    headers = {"x-api-key": key}
    page = httpx.get(f"{ledger.url}/v1/sessions", params={"limit": 2}, headers=headers).json()
    assert [s["id"] for s in page["sessions"]] == ids[::-1][:2]
    rest = httpx.get(
        f"{ledger.url}/v1/sessions", params={"limit": 10, "cursor": page["nextCursor"]}, headers=headers
    ).json()
    assert [s["id"] for s in rest["sessions"]] == ids[::-1][2:]
    assert rest["nextCursor"] is None
    errors = httpx.get(f"{ledger.url}/v1/sessions", params={"status": "error"}, headers=headers).json()
    assert [s["id"] for s in errors["sessions"]] == [ids[0]]
    future = httpx.get(f"{ledger.url}/v1/sessions", params={"since": "2999-01-01"}, headers=headers).json()
    assert future["sessions"] == []
    assert httpx.get(f"{ledger.url}/v1/sessions", params={"limit": 0}, headers=headers).status_code == 400
    client.close()


def test_the_server_publishes_its_openapi_schema(ledger: LocalLedger) -> None:
    schema = httpx.get(f"{ledger.url}/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    assert {"/v1/sessions", "/v1/sessions/{sessionId}/end", "/v1/events", "/v1/budgets"} <= set(schema["paths"])


def test_helpers_in_the_background_record_a_whole_agent(ledger: LocalLedger) -> None:
    client = ledger.client()

    @client.tool
    def lookup(x: int) -> int:
        return x + 1

    @client.session("background-agent")
    def agent() -> int:
        total = 0
        for i in range(50):
            total += lookup(i)
            with client.llm_call(provider="test", model="flat", prompt=str(i)) as call:
                call.record(response="ok", tokens_in=10, tokens_out=0)
        return total

    assert agent() == sum(range(1, 51))
    assert client.flush(10) == 0
    (summary,) = ledger.sessions("background-agent")
    recorded = ledger.session(summary["id"])
    assert recorded["status"] == "success"
    assert [e["stepIndex"] for e in recorded["events"]] == sorted(e["stepIndex"] for e in recorded["events"])
    assert len(recorded["events"]) == 150
    assert recorded["costUsd"] == Decimal("0.0005")  # 50 calls of 10 tokens at $1/MTok, exactly
    assert client.stats.sent == 150
    client.close()


def test_the_async_client_in_the_background(ledger: LocalLedger) -> None:
    client = ledger.async_client()

    @client.tool
    async def fetch(i: int) -> int:
        await asyncio.sleep(0)
        return i

    @client.session("async-background")
    async def agent() -> list[int]:
        return await asyncio.gather(*(fetch(i) for i in range(100)))

    async def main() -> None:
        assert await agent() == list(range(100))
        await client.aclose()

    asyncio.run(main())
    (summary,) = ledger.sessions("async-background")
    recorded = ledger.session(summary["id"])
    assert sorted({e["stepIndex"] for e in recorded["events"]}) == list(range(100))
    assert recorded["status"] == "success"


def test_an_async_client_guardrail_stops_the_call_that_would_go_over_before_it_runs(ledger: LocalLedger) -> None:
    ledger.set_budget("async-capped", 0.0015)
    client: AsyncAgentLedgerClient = ledger.async_client(batching=False)
    ran: list[int] = []

    @client.session("async-capped")
    async def agent() -> None:
        for i in range(5):
            async with client.llm_call(provider="test", model="flat", max_cost_usd=0.001) as call:
                ran.append(i)
                call.record(response="r", tokens_in=1000, tokens_out=0)

    async def main() -> None:
        with pytest.raises(BudgetGuardrailError):
            await agent()
        await client.aclose()

    asyncio.run(main())
    assert ran == [0]  # the second call's reservation was refused: it never ran
    (summary,) = ledger.sessions("async-capped")
    assert summary["costUsd"] == Decimal("0.001")  # what ran, and only that


@settings(max_examples=400, deadline=None)
@given(
    path=st.one_of(
        st.text(alphabet=st.sampled_from("abcXYZ019._~!$&'()*+,;=:@%/-?#\\\t\n é"), max_size=24),
        st.text(st.characters(codec="utf-8"), max_size=12),
    ).map(lambda text: "/" + text),
    root_path=st.sampled_from(["", "/ledger"]),
)
def test_a_requests_path_is_what_its_url_gives(path: str, root_path: str) -> None:
    """``request_path`` reads the scope's path where starlette's URL would give it back unchanged, and asks the
    URL otherwise: an idempotency key's fingerprint must not change with how the path is read."""
    from starlette.requests import Request

    from agent_ledger_sdk.local.app import request_path

    scope = {
        "type": "http",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "root_path": root_path,
        "query_string": b"",
        "headers": [(b"host", b"ledger.test:8000")],
        "server": ("127.0.0.1", 8000),
    }
    assert request_path(Request(scope)) == Request(scope).url.path
