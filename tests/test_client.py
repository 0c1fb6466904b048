"""The HTTP client: wire format, configuration, errors, retries and idempotency (sync and async)."""

from __future__ import annotations

import json
import logging
import platform
from typing import Any

import httpx
import pytest
import respx

import agent_ledger_sdk
from agent_ledger_sdk import (
    AgentLedgerClient,
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AsyncAgentLedgerClient,
    AuthenticationError,
    BadRequestError,
    BudgetGuardrailDetails,
    BudgetGuardrailError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    UnprocessableEntityError,
)

from .conftest import API_KEY, BASE_URL

GUARDRAIL_BODY = {
    "error": "Daily budget exceeded for agent support-bot",
    "details": {
        "agentName": "support-bot",
        "dailyLimitUsd": 20.0,
        "spentTodayUsd": 18.4,
        "attemptedCostUsd": 0.9,
        "projectedCostUsd": 19.3,
        "remainingBudgetUsd": 0.7,
    },
}
LLM_EVENT = {
    "stepIndex": 0,
    "provider": "openai",
    "model": "gpt-4o-mini",
    "prompt": "hi",
    "response": "hello",
    "tokensIn": 3,
    "tokensOut": 5,
    "latencyMs": 12,
}


def body(call: Any) -> Any:
    return json.loads(call.request.content)


# -- wire format ------------------------------------------------------------


def test_start_session_posts_agent_name_and_returns_the_id(api: respx.MockRouter, ledger_api: Any) -> None:
    route = api.post("/v1/sessions").respond(201, json={"id": "sess-1", "agentName": "bot"})
    assert ledger_api.start_session("bot") == "sess-1"
    assert body(route.calls.last) == {"agentName": "bot"}


def test_every_request_carries_key_user_agent_json_and_idempotency_key(api: respx.MockRouter, ledger_api: Any) -> None:
    route = api.post("/v1/sessions").respond(200, json={"id": "s"})
    ledger_api.start_session("bot")
    headers = route.calls.last.request.headers
    assert headers["x-api-key"] == API_KEY
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == (
        f"agent-ledger-sdk/{agent_ledger_sdk.__version__} python/{platform.python_version()} httpx/{httpx.__version__}"
    )
    assert headers["idempotency-key"].startswith("agent-ledger-")


def test_each_request_gets_headers_and_a_url_of_its_own_that_follow_the_client() -> None:
    """Headers and URLs are made once and copied: a request never shares them with another, and a header or
    base URL changed on the client is in the next request."""
    client = AgentLedgerClient(api_key=API_KEY, base_url=BASE_URL, default_headers={"X-Team": "a"})
    first = client._build_request("POST", "/v1/sessions", {"agentName": "bot"}, None, "k1")
    first.headers["X-Team"] = "changed"
    second = client._build_request("POST", "/v1/sessions", {"agentName": "bot"}, None, "k2")
    assert second.headers["x-team"] == "a" and second.headers["idempotency-key"] == "k2"
    assert [name for name, _ in second.headers.raw] == [
        b"Host",
        b"User-Agent",
        b"Accept",
        b"X-Team",
        b"x-api-key",
        b"Idempotency-Key",
        b"Content-Type",
        b"Content-Length",
    ]
    client._headers["Agent-Ledger-Priced"] = "true"
    assert client._build_request("GET", "/v1/sessions")
    assert client._build_request("GET", "/v1/sessions").headers["agent-ledger-priced"] == "true"
    client.base_url = "http://127.0.0.1:9"
    moved = client._build_request("GET", "/v1/sessions")
    assert str(moved.url) == "http://127.0.0.1:9/v1/sessions" and moved.headers["host"] == "127.0.0.1:9"
    for number in range(40):  # a session's end is one path each: kept only up to a bound
        assert str(client._build_request("POST", f"/v1/sessions/s{number}/end", {}).url).endswith(f"s{number}/end")
    assert len(client._urls) <= 16
    client.close()


def test_end_session_posts_status_and_error_message(api: respx.MockRouter, ledger_api: Any) -> None:
    route = api.post("/v1/sessions/s-9/end").respond(200)
    ledger_api.end_session("s-9", "success")
    ledger_api.end_session("s-9", "error", error_message="boom")
    assert [body(c) for c in route.calls] == [
        {"status": "success", "errorMessage": None},
        {"status": "error", "errorMessage": "boom"},
    ]


@pytest.mark.parametrize("status", ["ok", "failed", None, ""])
def test_end_session_rejects_an_unknown_status_before_sending(
    api: respx.MockRouter, ledger_api: Any, status: Any
) -> None:
    route = api.post("/v1/sessions/s/end").respond(200)
    with pytest.raises(ValueError, match='"success" or "error"'):
        ledger_api.end_session("s", status)
    assert not route.called


def test_log_events_wraps_the_events_with_the_session_id(api: respx.MockRouter, ledger_api: Any) -> None:
    route = api.post("/v1/events").respond(202)
    ledger_api.log_events("s-1", ({"type": "custom", "stepIndex": i} for i in range(2)))
    assert body(route.calls.last) == {
        "sessionId": "s-1",
        "events": [{"type": "custom", "stepIndex": 0}, {"type": "custom", "stepIndex": 1}],
    }


def test_log_events_accepts_events_of_any_type_or_none(api: respx.MockRouter, ledger_api: Any) -> None:
    route = api.post("/v1/events").respond(200)
    ledger_api.log_events("s", [{"stepIndex": 1, "note": "no type"}])
    assert body(route.calls.last)["events"] == [{"stepIndex": 1, "note": "no type"}]


@pytest.mark.parametrize("events", [{"type": "x"}, [1], ["event"]])
def test_log_events_explains_events_that_are_not_dicts(api: respx.MockRouter, ledger_api: Any, events: Any) -> None:
    with pytest.raises(TypeError, match="log_events"):
        ledger_api.log_events("s", events)


@pytest.mark.parametrize(
    ("method", "kind", "event"),
    [
        ("log_llm_call", "llm_call", LLM_EVENT),
        ("log_tool_call", "tool_call", {"stepIndex": 1, "toolName": "search", "toolInput": {"q": "x"}}),
        (
            "log_tool_result",
            "tool_result",
            {"stepIndex": 1, "toolName": "search", "toolOutput": ["a"], "latencyMs": 4},
        ),
    ],
)
def test_typed_helpers_add_their_type(
    api: respx.MockRouter, ledger_api: Any, method: str, kind: str, event: dict[str, Any]
) -> None:
    route = api.post("/v1/events").respond(200)
    getattr(ledger_api, method)("s", event)
    assert body(route.calls.last)["events"] == [{**event, "type": kind}]


def test_typed_helpers_keep_an_explicit_type(api: respx.MockRouter, ledger_api: Any) -> None:
    route = api.post("/v1/events").respond(200)
    ledger_api.log_llm_call("s", {**LLM_EVENT, "type": "llm_call_v2"})
    assert body(route.calls.last)["events"][0]["type"] == "llm_call_v2"


def test_a_missing_required_key_is_named_with_the_helper(api: respx.MockRouter, ledger_api: Any) -> None:
    route = api.post("/v1/events").respond(200)
    event = {k: v for k, v in LLM_EVENT.items() if k not in ("tokensOut", "latencyMs")}
    with pytest.raises(ValueError, match=r"log_llm_call\(\) event is missing required key\(s\) tokensOut, latencyMs"):
        ledger_api.log_llm_call("s", event)
    with pytest.raises(ValueError, match=r"log_tool_result\(\).*toolOutput"):
        ledger_api.log_tool_result("s", {"stepIndex": 0, "toolName": "t", "latencyMs": 1})
    assert not route.called


def test_snake_case_keys_become_camel_case(api: respx.MockRouter, ledger_api: Any) -> None:
    route = api.post("/v1/events").respond(200)
    ledger_api.log_tool_result("s", {"step_index": 2, "tool_name": "search", "tool_output": "x", "latency_ms": 3})
    ledger_api.log_llm_call(
        "s",
        {
            "step_index": 3,
            "provider": "openai",
            "model": "m",
            "prompt": "p",
            "response": "r",
            "tokens_in": 1,
            "tokens_out": 2,
            "latency_ms": 5,
        },
    )
    ledger_api.log_tool_call("s", {"step_index": 4, "tool_name": "t", "tool_input": {}})
    sent = [body(c)["events"][0] for c in route.calls]
    assert sent[0] == {"type": "tool_result", "stepIndex": 2, "toolName": "search", "toolOutput": "x", "latencyMs": 3}
    assert sent[1]["tokensIn"] == 1 and sent[1]["tokensOut"] == 2 and sent[1]["latencyMs"] == 5
    assert sent[2] == {"type": "tool_call", "stepIndex": 4, "toolName": "t", "toolInput": {}}
    assert not any("_" in key for event in sent for key in event)


# -- configuration ------------------------------------------------------------


def test_the_api_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_LEDGER_API_KEY", "sk-env")
    assert AgentLedgerClient().api_key == "sk-env"
    assert AsyncAgentLedgerClient().api_key == "sk-env"


@pytest.mark.parametrize("client_class", [AgentLedgerClient, AsyncAgentLedgerClient])
@pytest.mark.parametrize("key", ["", "   "])
def test_an_empty_api_key_is_a_value_error_that_says_where_to_set_it(client_class: Any, key: Any) -> None:
    with pytest.raises(ValueError, match="AGENT_LEDGER_API_KEY"):
        client_class(api_key=key)


def test_no_api_key_anywhere_builds_a_client_that_records_nothing_and_says_what_to_do(
    api: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = AgentLedgerClient(base_url=BASE_URL)  # no key argument, no environment, no local key file
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "AGENT_LEDGER_API_KEY" in warning and "agent-ledger serve" in warning
    assert not ledger.enabled

    @ledger.session("bot")
    def run() -> int:
        return 7

    assert run() == 7
    with pytest.raises(ValueError, match="AGENT_LEDGER_API_KEY"):
        ledger.start_session("bot")
    assert not api.calls


def test_base_url_keyword_then_environment_then_hosted(monkeypatch: pytest.MonkeyPatch) -> None:
    assert AgentLedgerClient(api_key="k").base_url == "https://agent-ledger-api.azurewebsites.net"
    monkeypatch.setenv("AGENT_LEDGER_BASE_URL", "http://127.0.0.1:9000///")
    assert AgentLedgerClient(api_key="k").base_url == "http://127.0.0.1:9000"
    assert AgentLedgerClient(api_key="k", base_url="https://x.test/").base_url == "https://x.test"


def test_a_base_url_without_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        AgentLedgerClient(api_key="k", base_url="ledger.local:8000")


def test_default_headers_are_merged_but_cannot_replace_the_key(api: respx.MockRouter, make_api: Any) -> None:
    ledger_api = make_api(default_headers={"X-Team": "search", "x-api-key": "other"})
    route = api.post("/v1/sessions").respond(200, json={"id": "s"})
    ledger_api.start_session("bot")
    headers = route.calls.last.request.headers
    assert headers["x-team"] == "search"
    assert headers["x-api-key"] == API_KEY


def test_a_custom_transport_is_used() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "from-transport"})

    with AgentLedgerClient(api_key="k", base_url=BASE_URL, transport=httpx.MockTransport(handler)) as ledger:
        assert ledger.start_session("bot") == "from-transport"
    assert seen[0].url == f"{BASE_URL}/v1/sessions"


def test_negative_max_retries_is_refused() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        AgentLedgerClient(api_key="k", max_retries=-1)


# -- errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, ConflictError),
        (422, UnprocessableEntityError),
        (418, APIStatusError),
    ],
)
def test_each_status_raises_its_error_class_without_retrying(
    api: respx.MockRouter, ledger_api: Any, status: int, error_class: type[APIStatusError]
) -> None:
    route = api.post("/v1/sessions").respond(status, json={"error": "nope"})
    with pytest.raises(error_class) as raised:
        ledger_api.start_session("bot")
    assert type(raised.value) is error_class
    assert raised.value.status_code == status
    assert raised.value.body == {"error": "nope"}
    assert raised.value.response.status_code == status
    assert str(raised.value).startswith("nope")
    assert route.call_count == 1


@pytest.mark.parametrize("status", [401, 403])
def test_key_errors_say_the_key_is_missing_or_revoked_and_where_to_set_it(
    api: respx.MockRouter, ledger_api: Any, status: int
) -> None:
    api.post("/v1/sessions").respond(status, json={"error": "Invalid API key"})
    with pytest.raises(AgentLedgerError := agent_ledger_sdk.AgentLedgerError) as raised:
        ledger_api.start_session("bot")
    message = str(raised.value)
    assert message.startswith("Invalid API key")
    assert "missing, wrong or revoked" in message
    assert "AGENT_LEDGER_API_KEY" in message
    assert isinstance(raised.value, AgentLedgerError)


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(400, json={"error": "bad agentName"}), "bad agentName"),
        (httpx.Response(400, text="plain words"), "plain words"),
        (httpx.Response(400), "Request failed with status 400"),
        (httpx.Response(400, json={"error": {"field": "x"}}), "{'field': 'x'}"),
        (
            httpx.Response(400, content=b'{"message":"no error key"}', headers={"content-type": "application/json"}),
            '{"message":"no error key"}',
        ),
    ],
)
def test_error_messages_follow_the_published_rules(
    api: respx.MockRouter, ledger_api: Any, response: httpx.Response, message: str
) -> None:
    api.post("/v1/sessions").mock(return_value=response)
    with pytest.raises(BadRequestError) as raised:
        ledger_api.start_session("bot")
    assert str(raised.value) == message
    assert raised.value.message == message


def test_a_guardrail_429_raises_budget_guardrail_error_and_is_not_retried(
    api: respx.MockRouter, ledger_api: Any
) -> None:
    route = api.post("/v1/events").respond(429, json=GUARDRAIL_BODY)
    with pytest.raises(BudgetGuardrailError) as raised:
        ledger_api.log_llm_call("s", LLM_EVENT)
    assert str(raised.value) == GUARDRAIL_BODY["error"]
    assert raised.value.details == BudgetGuardrailDetails(
        agent_name="support-bot",
        daily_limit_usd=20.0,
        spent_today_usd=18.4,
        attempted_cost_usd=0.9,
        projected_cost_usd=19.3,
        remaining_budget_usd=0.7,
    )
    assert isinstance(raised.value, agent_ledger_sdk.AgentLedgerError)
    assert route.call_count == 1


def test_partial_guardrail_details_still_mean_a_guardrail_as_published(api: respx.MockRouter, ledger_api: Any) -> None:
    api.post("/v1/events").respond(429, json={"details": {"agentName": "bot", "dailyLimitUsd": 5}})
    with pytest.raises(BudgetGuardrailError) as raised:
        ledger_api.log_events("s", [{"type": "x"}])
    assert str(raised.value) == "Budget limit exceeded"
    assert raised.value.details == BudgetGuardrailDetails("bot", 5.0, 0.0, 0.0, 0.0, 0.0)


def test_errors_are_runtime_errors_as_published() -> None:
    assert issubclass(agent_ledger_sdk.AgentLedgerError, RuntimeError)


def test_guardrail_details_are_frozen() -> None:
    details = BudgetGuardrailDetails("a", 1, 2, 3, 4, 5)
    with pytest.raises(AttributeError):
        details.agent_name = "b"  # type: ignore[misc]


@pytest.mark.parametrize(
    "payload",
    [{"error": "slow down"}, {"error": "slow down", "details": {"dailyLimitUsd": "lots"}}, "slow down"],
)
def test_a_429_without_guardrail_details_is_a_retried_rate_limit_error(
    api: respx.MockRouter, ledger_api: Any, payload: Any, retry_sleeps: list[float]
) -> None:
    response = httpx.Response(429, json=payload) if isinstance(payload, dict) else httpx.Response(429, text=payload)
    route = api.post("/v1/events").mock(return_value=response)
    with pytest.raises(RateLimitError) as raised:
        ledger_api.log_events("s", [{"type": "x"}])
    assert "slow down" in str(raised.value)
    assert route.call_count == 3
    assert len(retry_sleeps) == 2


def test_a_success_without_a_session_id_is_a_response_validation_error(api: respx.MockRouter, ledger_api: Any) -> None:
    api.post("/v1/sessions").respond(200, text="<html>proxy login</html>")
    with pytest.raises(APIResponseValidationError, match="without a session id"):
        ledger_api.start_session("bot")


# -- retries and idempotency ---------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 408])
def test_retryable_statuses_are_retried_with_one_idempotency_key(
    api: respx.MockRouter, ledger_api: Any, status: int, retry_sleeps: list[float]
) -> None:
    route = api.post("/v1/sessions").mock(
        side_effect=[httpx.Response(status), httpx.Response(status), httpx.Response(201, json={"id": "s"})]
    )
    assert ledger_api.start_session("bot") == "s"
    keys = {call.request.headers["idempotency-key"] for call in route.calls}
    assert route.call_count == 3
    assert len(keys) == 1
    assert 0.375 <= retry_sleeps[0] <= 0.5
    assert 0.75 <= retry_sleeps[1] <= 1.0


def test_retries_stop_after_max_retries(api: respx.MockRouter, make_api: Any, retry_sleeps: list[float]) -> None:
    ledger_api = make_api(max_retries=4)
    route = api.post("/v1/events").respond(503, json={"error": "down"})
    with pytest.raises(InternalServerError, match="down"):
        ledger_api.log_events("s", [{"type": "x"}])
    assert route.call_count == 5
    assert retry_sleeps[-1] <= 8.0


def test_max_retries_zero_sends_once(api: respx.MockRouter, make_api: Any) -> None:
    route = api.post("/v1/events").respond(500)
    with pytest.raises(InternalServerError):
        make_api(max_retries=0).log_events("s", [{"type": "x"}])
    assert route.call_count == 1


def test_separate_requests_have_separate_idempotency_keys(api: respx.MockRouter, ledger_api: Any) -> None:
    route = api.post("/v1/events").respond(200)
    ledger_api.log_events("s", [{"type": "a"}])
    ledger_api.log_events("s", [{"type": "a"}])
    assert route.calls[0].request.headers["idempotency-key"] != route.calls[1].request.headers["idempotency-key"]


def test_retry_after_is_honoured(api: respx.MockRouter, ledger_api: Any, retry_sleeps: list[float]) -> None:
    api.post("/v1/events").mock(
        side_effect=[httpx.Response(429, headers={"Retry-After": "3"}, json={"error": "slow"}), httpx.Response(200)]
    )
    ledger_api.log_events("s", [{"type": "x"}])
    assert retry_sleeps == [3.0]


def test_an_absurd_retry_after_falls_back_to_backoff(
    api: respx.MockRouter, ledger_api: Any, retry_sleeps: list[float]
) -> None:
    api.post("/v1/events").mock(
        side_effect=[httpx.Response(503, headers={"Retry-After": "86400"}), httpx.Response(200)]
    )
    ledger_api.log_events("s", [{"type": "x"}])
    assert retry_sleeps[0] <= 0.5


def test_connection_errors_are_retried_then_raised(
    api: respx.MockRouter, ledger_api: Any, retry_sleeps: list[float]
) -> None:
    route = api.post("/v1/sessions").mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(APIConnectionError, match="Could not reach the ledger at https://ledger.test") as raised:
        ledger_api.start_session("bot")
    assert not isinstance(raised.value, APITimeoutError)
    assert route.call_count == 3


def test_timeouts_raise_api_timeout_error(api: respx.MockRouter, ledger_api: Any) -> None:
    route = api.post("/v1/sessions").mock(
        side_effect=[httpx.ReadTimeout("slow"), httpx.ConnectTimeout("slow"), httpx.ReadTimeout("slow")]
    )
    with pytest.raises(APITimeoutError, match="timed out"):
        ledger_api.start_session("bot")
    assert route.call_count == 3


def test_a_timeout_then_success_recovers(api: respx.MockRouter, ledger_api: Any) -> None:
    api.post("/v1/sessions").mock(side_effect=[httpx.ReadTimeout("slow"), httpx.Response(200, json={"id": "s"})])
    assert ledger_api.start_session("bot") == "s"


def test_each_retry_logs_one_debug_line(
    api: respx.MockRouter, ledger_api: Any, ledger_logs: pytest.LogCaptureFixture
) -> None:
    api.post("/v1/events").mock(side_effect=[httpx.Response(500), httpx.Response(502), httpx.Response(200)])
    ledger_api.log_events("s", [{"type": "x"}])
    retries = [r for r in ledger_logs.records if r.getMessage().startswith("Retrying POST /v1/events")]
    assert len(retries) == 2
    assert all(r.levelname == "DEBUG" and r.name == "agent_ledger_sdk" for r in retries)
    assert "retry 1 of 2" in retries[0].getMessage()


# -- lifecycle ------------------------------------------------------------------


def test_the_sync_client_is_a_context_manager_that_closes() -> None:
    with AgentLedgerClient(api_key="k") as ledger:
        http = ledger._http.client()
    assert http.is_closed
    assert ledger._http._http is None


async def _async_context() -> httpx.AsyncClient:
    async with AsyncAgentLedgerClient(api_key="k") as ledger:
        http = ledger._http.client()
    return http


def test_the_async_client_is_an_async_context_manager_that_closes() -> None:
    import asyncio

    assert asyncio.run(_async_context()).is_closed


def test_repr_shows_the_url_but_never_the_key() -> None:
    text = repr(AgentLedgerClient(api_key="sk-secret", base_url="https://x.test"))
    assert "https://x.test" in text
    assert "sk-secret" not in text
