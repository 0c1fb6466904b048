"""The local ledger's metrics, access log, health and readiness, on a small Starlette app of the test's own."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from typing import Any, Dict, FrozenSet, List, Optional, Tuple

import httpx
import pytest

pytest.importorskip("starlette", reason="the local ledger needs the server extra")

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent_ledger_sdk._version import __version__
from agent_ledger_sdk.local.observability import (
    ACCESS_LOGGER,
    CONTENT_TYPE,
    DEFAULT_BUCKETS,
    Metrics,
    ObservabilityMiddleware,
    create_metrics,
    health,
    metrics_endpoint,
    readiness,
)

API_KEY = "sk-secret-key-that-must-never-be-logged"

# -- a tiny exposition-format parser ------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"')
_UNESCAPE = {"n": "\n", "\\": "\\", '"': '"'}

Labels = FrozenSet[Tuple[str, str]]


class Exposition:
    """The families (HELP, TYPE) and the samples of a text exposition, checked as they are read."""

    def __init__(self, text: str) -> None:
        assert text.endswith("\n")
        self.types: Dict[str, str] = {}
        self.helps: Dict[str, str] = {}
        self.samples: Dict[Tuple[str, Labels], float] = {}
        family = ""
        for line in text[:-1].split("\n"):
            if line.startswith("# HELP "):
                name, _, help_text = line[len("# HELP ") :].partition(" ")
                self.helps[name] = help_text
            elif line.startswith("# TYPE "):
                family, _, kind = line[len("# TYPE ") :].partition(" ")
                assert kind in ("counter", "gauge", "histogram"), line
                assert family in self.helps, f"TYPE before HELP: {line}"
                assert family not in self.types, f"family declared twice: {line}"
                self.types[family] = kind
            else:
                match = _SAMPLE.match(line)
                assert match, f"not a sample line: {line!r}"
                name, label_text, value = match.groups()
                suffixes = ("_bucket", "_sum", "_count") if self.types[family] == "histogram" else ("",)
                assert any(name == family + suffix for suffix in suffixes), f"{name} outside its family {family}"
                labels = parse_labels(label_text or "")
                key = (name, labels)
                assert key not in self.samples, f"duplicate sample: {line}"
                self.samples[key] = float(value)

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def series(self, name: str) -> Dict[Labels, float]:
        return {labels: value for (sample, labels), value in self.samples.items() if sample == name}

    def histogram(self, name: str, **labels: str) -> Tuple[List[Tuple[float, float]], float, float]:
        """The (le, cumulative count) buckets in order, the sum and the count of one series."""
        buckets = []
        for sample_labels, count in self.series(f"{name}_bucket").items():
            other = dict(sample_labels)
            le = other.pop("le")
            if other == labels:
                buckets.append((float(le), count))
        return sorted(buckets), self.value(f"{name}_sum", **labels), self.value(f"{name}_count", **labels)


def parse_labels(text: str) -> Labels:
    labels: List[Tuple[str, str]] = []
    position = 0
    while position < len(text):
        match = _LABEL.match(text, position)
        assert match, f"bad label set: {text!r}"
        value = re.sub(r"\\(.)", lambda escape: _UNESCAPE[escape.group(1)], match.group(2))
        labels.append((match.group(1), value))
        position = match.end()
        if position < len(text):
            assert text[position] == ",", f"bad label set: {text!r}"
            position += 1
    return frozenset(labels)


# -- the app under test ----------------------------------------------------------------


async def get_session(request: Request) -> Response:
    return JSONResponse({"id": request.path_params["session_id"], "requestId": request.state.request_id})


async def boom(request: Request) -> Response:
    raise RuntimeError("the handler failed")


async def refuse(request: Request) -> Response:
    return JSONResponse({"error": "Budget exceeded"}, status_code=429)


async def streamed(request: Request) -> Response:
    async def chunks() -> Any:
        for chunk in (b"abc", b"defg", b"hi"):
            yield chunk

    return StreamingResponse(chunks(), media_type="text/plain")


async def set_price(request: Request) -> Response:
    return JSONResponse({"model": request.path_params["model"]})


async def item(request: Request) -> Response:
    return JSONResponse({"item": request.path_params["item_id"]})


class ForgetsTheRoute:
    """Drops ``scope["route"]`` after the app has answered, as Starlette before 1.7 never set it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
        scope.pop("route", None)


def build_app(metrics: Metrics, *extra_routes: Any, without_scope_route: bool = False) -> Starlette:
    middleware = [Middleware(ObservabilityMiddleware, metrics=metrics)]
    if without_scope_route:
        middleware.append(Middleware(ForgetsTheRoute))
    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics_endpoint(metrics), methods=["GET"]),
            Route("/v1/sessions/{session_id}", get_session, methods=["GET"]),
            Route("/v1/prices/{model:path}", set_price, methods=["PUT"]),
            Route("/boom", boom, methods=["GET"]),
            Route("/refuse", refuse, methods=["POST"]),
            Route("/streamed", streamed, methods=["GET"]),
            Mount("/admin/{tenant}", routes=[Route("/items/{item_id}", item, methods=["GET"])]),
            *extra_routes,
        ],
        middleware=middleware,
    )


def call(app: ASGIApp, *requests: Tuple[str, str], headers: Optional[Mapping[str, Any]] = None) -> List[httpx.Response]:
    """Send ``(method, url)`` requests to ``app`` one after the other, as a client at 203.0.113.7:4242."""

    async def main() -> List[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=("203.0.113.7", 4242))
        async with httpx.AsyncClient(transport=transport, base_url="http://ledger.test", headers=headers) as client:
            return [await client.request(method, url) for method, url in requests]

    return asyncio.run(main())


@pytest.fixture
def metrics() -> Metrics:
    return create_metrics()


@pytest.fixture
def access_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    return caplog


def access_records(logs: pytest.LogCaptureFixture) -> List[logging.LogRecord]:
    return [record for record in logs.records if record.name == ACCESS_LOGGER]


# -- metrics ---------------------------------------------------------------------------


def test_the_metrics_endpoint_serves_every_family_in_the_text_format(metrics: Metrics) -> None:
    (response,) = call(build_app(metrics), ("GET", "/metrics"))

    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    exposition = Exposition(response.text)
    assert exposition.types == {
        "agent_ledger_http_requests_total": "counter",
        "agent_ledger_http_request_duration_seconds": "histogram",
        "agent_ledger_http_requests_in_progress": "gauge",
        "agent_ledger_events_ingested_total": "counter",
        "agent_ledger_guardrail_refusals_total": "counter",
        "agent_ledger_sessions_started_total": "counter",
        "process_start_time_seconds": "gauge",
        "agent_ledger_build_info": "gauge",
    }
    assert all(exposition.helps[name] for name in exposition.types)
    assert exposition.value("agent_ledger_http_requests_in_progress") == 1  # the scrape itself
    assert exposition.value("agent_ledger_sessions_started_total") == 0
    assert exposition.value("agent_ledger_guardrail_refusals_total", reason="budget_exceeded") == 0
    assert exposition.value("agent_ledger_guardrail_refusals_total", reason="unpriced_model") == 0
    assert exposition.value("agent_ledger_build_info", version=__version__) == 1
    assert 0 < exposition.value("process_start_time_seconds") <= time.time()


def test_requests_are_counted_by_method_route_template_and_status(metrics: Metrics) -> None:
    call(
        build_app(metrics),
        ("GET", "/v1/sessions/s-1"),
        ("GET", "/v1/sessions/s-2?limit=5"),
        ("PUT", "/v1/prices/openai/gpt-4o"),
        ("POST", "/refuse"),
        ("GET", "/no/such/route"),
        ("GET", "/admin/acme/items/42"),
    )

    text = metrics.render()
    exposition = Exposition(text)
    assert exposition.series("agent_ledger_http_requests_total") == {
        frozenset({("method", "GET"), ("route", "/v1/sessions/{session_id}"), ("status", "200")}): 2,
        frozenset({("method", "PUT"), ("route", "/v1/prices/{model}"), ("status", "200")}): 1,
        frozenset({("method", "POST"), ("route", "/refuse"), ("status", "429")}): 1,
        frozenset({("method", "GET"), ("route", "unmatched"), ("status", "404")}): 1,
        frozenset({("method", "GET"), ("route", "/admin/{tenant}/items/{item_id}"), ("status", "200")}): 1,
    }
    for raw in ("s-1", "s-2", "gpt-4o", "/no/such", "acme", "limit"):
        assert raw not in text
    assert exposition.value("agent_ledger_http_requests_in_progress") == 0


def test_route_templates_are_found_where_starlette_does_not_say_which_route_answered(metrics: Metrics) -> None:
    twin = Route("/v1/sessions/{session_id}/twin", get_session, methods=["GET"])  # the endpoint of another route
    call(
        build_app(metrics, twin, without_scope_route=True),
        ("GET", "/v1/sessions/s-1"),
        ("GET", "/v1/sessions/s-1/twin"),
        ("PUT", "/v1/prices/openai/gpt-4o"),
        ("POST", "/v1/sessions/s-1"),  # a route of another method: 405, as Starlette labels it
        ("GET", "/admin/acme/items/42"),
        ("GET", "/no/such/route"),
    )

    assert Exposition(metrics.render()).series("agent_ledger_http_requests_total") == {
        frozenset({("method", "GET"), ("route", "/v1/sessions/{session_id}"), ("status", "200")}): 1,
        frozenset({("method", "GET"), ("route", "/v1/sessions/{session_id}/twin"), ("status", "200")}): 1,
        frozenset({("method", "PUT"), ("route", "/v1/prices/{model}"), ("status", "200")}): 1,
        frozenset({("method", "POST"), ("route", "/v1/sessions/{session_id}"), ("status", "405")}): 1,
        frozenset({("method", "GET"), ("route", "/admin/{tenant}/items/{item_id}"), ("status", "200")}): 1,
        frozenset({("method", "GET"), ("route", "unmatched"), ("status", "404")}): 1,
    }


def test_methods_outside_the_standard_ones_count_as_other(metrics: Metrics) -> None:
    call(build_app(metrics), ("BREW", "/v1/sessions/s-1"), ("PROPFIND", "/v1/sessions/s-2"))

    series = Exposition(metrics.render()).series("agent_ledger_http_requests_total")
    assert series == {frozenset({("method", "other"), ("route", "/v1/sessions/{session_id}"), ("status", "405")}): 2}


def test_request_durations_fill_cumulative_buckets_whose_last_is_the_count(metrics: Metrics) -> None:
    call(build_app(metrics), *[("GET", f"/v1/sessions/s-{n}") for n in range(7)])
    for seconds in (0.0004, 0.003, 0.003, 0.2, 7.0, 60.0):
        metrics.request_started()
        metrics.request_finished("GET", "/v1/sessions/{session_id}", 200, seconds)

    buckets, total, count = Exposition(metrics.render()).histogram(
        "agent_ledger_http_request_duration_seconds", method="GET", route="/v1/sessions/{session_id}"
    )

    assert [le for le, _ in buckets] == [*DEFAULT_BUCKETS, float("inf")]
    counts = [cumulative for _, cumulative in buckets]
    assert counts == sorted(counts)
    assert counts[-1] == count == 13
    assert total >= 0.0004 + 0.003 + 0.003 + 0.2 + 7.0 + 60.0
    assert dict(buckets)[10.0] == 12  # all but the 60 s one
    assert dict(buckets)[0.005] >= 3


def test_an_observation_on_a_bucket_bound_counts_in_that_bucket() -> None:
    metrics = create_metrics(buckets=(0.1, 1.0))
    metrics.request_started()
    metrics.request_finished("GET", "/x", 200, 0.1)

    buckets, _, _ = Exposition(metrics.render()).histogram(
        "agent_ledger_http_request_duration_seconds", method="GET", route="/x"
    )
    assert buckets == [(0.1, 1), (1.0, 1), (float("inf"), 1)]


def test_service_counters_count_sessions_events_by_type_and_refusals_by_reason(metrics: Metrics) -> None:
    metrics.session_started()
    metrics.session_started()
    metrics.events_ingested(3, {"llm_call": 2, "tool_call": 1})
    metrics.events_ingested(5, {"llm_call": 1})
    metrics.events_ingested(4)
    metrics.guardrail_refusal("budget_exceeded")
    metrics.guardrail_refusal("budget_exceeded")
    metrics.guardrail_refusal("unpriced_model")

    exposition = Exposition(metrics.render())
    assert exposition.value("agent_ledger_sessions_started_total") == 2
    assert exposition.series("agent_ledger_events_ingested_total") == {
        frozenset({("type", "llm_call")}): 3,
        frozenset({("type", "tool_call")}): 1,
        frozenset({("type", "unknown")}): 8,
    }
    assert exposition.value("agent_ledger_guardrail_refusals_total", reason="budget_exceeded") == 2
    assert exposition.value("agent_ledger_guardrail_refusals_total", reason="unpriced_model") == 1


def test_label_values_are_escaped_and_read_back_unchanged(metrics: Metrics) -> None:
    awkward = 'a "quoted" back\\slash\nand a newline'
    metrics.guardrail_refusal(awkward)
    metrics.events_ingested(1, {awkward: 1})

    text = metrics.render()
    assert 'reason="a \\"quoted\\" back\\\\slash\\nand a newline"' in text
    exposition = Exposition(text)
    assert exposition.value("agent_ledger_guardrail_refusals_total", reason=awkward) == 1
    assert exposition.value("agent_ledger_events_ingested_total", type=awkward) == 1


def test_a_family_that_reaches_its_limit_counts_new_label_values_as_other(metrics: Metrics) -> None:
    metrics.events_ingested(200, {f"type-{n}": 1 for n in range(200)})

    series = Exposition(metrics.render()).series("agent_ledger_events_ingested_total")
    assert len(series) == 65
    assert series[frozenset({("type", "other")})] == 200 - 64
    assert sum(series.values()) == 200


def test_counters_stay_exact_when_32_threads_count_at_once(metrics: Metrics) -> None:
    start = threading.Barrier(32)

    def count() -> None:
        start.wait()
        for _ in range(500):
            metrics.session_started()
            metrics.events_ingested(2, {"llm_call": 1})
            metrics.guardrail_refusal("budget_exceeded")
            metrics.request_started()
            metrics.request_finished("POST", "/v1/events", 202, 0.002)

    threads = [threading.Thread(target=count) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    exposition = Exposition(metrics.render())
    assert exposition.value("agent_ledger_sessions_started_total") == 16_000
    assert exposition.value("agent_ledger_events_ingested_total", type="llm_call") == 16_000
    assert exposition.value("agent_ledger_events_ingested_total", type="unknown") == 16_000
    assert exposition.value("agent_ledger_guardrail_refusals_total", reason="budget_exceeded") == 16_000
    assert (
        exposition.value("agent_ledger_http_requests_total", method="POST", route="/v1/events", status="202") == 16_000
    )
    assert exposition.value("agent_ledger_http_requests_in_progress") == 0
    _, _, count_ = exposition.histogram("agent_ledger_http_request_duration_seconds", method="POST", route="/v1/events")
    assert count_ == 16_000


def test_each_app_has_its_own_metrics() -> None:
    first, second = create_metrics(), create_metrics()
    first.session_started()

    assert Exposition(first.render()).value("agent_ledger_sessions_started_total") == 1
    assert Exposition(second.render()).value("agent_ledger_sessions_started_total") == 0


def test_requests_in_progress_counts_the_requests_being_answered(metrics: Metrics) -> None:
    seen: List[float] = []

    async def look(request: Request) -> Response:
        seen.append(Exposition(metrics.render()).value("agent_ledger_http_requests_in_progress"))
        return Response(status_code=204)

    call(build_app(metrics, Route("/look", look)), ("GET", "/look"))

    assert seen == [1]
    assert Exposition(metrics.render()).value("agent_ledger_http_requests_in_progress") == 0


# -- the access log ----------------------------------------------------------------------


def test_every_request_logs_one_info_line_with_its_fields(
    metrics: Metrics, access_logs: pytest.LogCaptureFixture
) -> None:
    (response,) = call(build_app(metrics), ("GET", "/v1/sessions/s-1?secret=hunter2"))

    (record,) = access_records(access_logs)
    assert record.levelno == logging.INFO
    fields = record.__dict__
    assert fields["client_addr"] == "203.0.113.7:4242"
    assert fields["method"] == "GET"
    assert fields["path"] == "/v1/sessions/s-1"
    assert fields["route"] == "/v1/sessions/{session_id}"
    assert fields["status_code"] == 200
    assert fields["response_bytes"] == len(response.content)
    assert isinstance(fields["duration_ms"], float) and fields["duration_ms"] >= 0
    assert fields["request_id"] == response.headers["x-request-id"]
    message = record.getMessage()
    assert message.startswith('203.0.113.7:4242 "GET /v1/sessions/s-1" 200 ')
    assert f"{len(response.content)}B" in message
    assert f"request_id={fields['request_id']}" in message
    assert "hunter2" not in message and "secret" not in message


def test_the_api_key_never_reaches_the_access_log(metrics: Metrics, access_logs: pytest.LogCaptureFixture) -> None:
    call(
        build_app(metrics),
        ("GET", "/v1/sessions/s-1"),
        ("GET", "/boom"),
        ("GET", "/no/such/route"),
        headers={"x-api-key": API_KEY, "authorization": f"Bearer {API_KEY}"},
    )

    records = access_records(access_logs)
    assert len(records) == 3
    for record in records:
        assert API_KEY not in record.getMessage()
        assert API_KEY not in repr(record.__dict__)


def test_a_sane_request_id_is_kept_and_sent_back(metrics: Metrics, access_logs: pytest.LogCaptureFixture) -> None:
    (response,) = call(build_app(metrics), ("GET", "/v1/sessions/s-1"), headers={"x-request-id": "lb-7f3a:42"})

    assert response.headers["x-request-id"] == "lb-7f3a:42"
    assert response.json()["requestId"] == "lb-7f3a:42"  # request.state.request_id, for the handlers
    assert access_records(access_logs)[0].__dict__["request_id"] == "lb-7f3a:42"


@pytest.mark.parametrize(
    "incoming",
    [None, b"", b"x" * 129, b"has space", b"tab\there", "caf\u00e9".encode()],
    ids=["absent", "empty", "too-long", "space", "control", "non-ascii"],
)
def test_a_missing_or_insane_request_id_is_replaced_by_a_new_one(metrics: Metrics, incoming: Optional[bytes]) -> None:
    headers = None if incoming is None else {"x-request-id": incoming}
    first, second = call(build_app(metrics), ("GET", "/v1/sessions/s-1"), ("GET", "/v1/sessions/s-1"), headers=headers)

    assert re.fullmatch(r"[0-9a-f]{32}", first.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert first.headers.get_list("x-request-id") == [first.headers["x-request-id"]]


def test_a_request_id_of_exactly_128_visible_characters_is_kept(metrics: Metrics) -> None:
    incoming = "A-z~!" * 25 + "end"
    (response,) = call(build_app(metrics), ("GET", "/health"), headers={"x-request-id": incoming})

    assert len(incoming) == 128
    assert response.headers["x-request-id"] == incoming


def test_a_streamed_response_logs_all_its_bytes(metrics: Metrics, access_logs: pytest.LogCaptureFixture) -> None:
    (response,) = call(build_app(metrics), ("GET", "/streamed"))

    assert response.content == b"abcdefghi"
    assert access_records(access_logs)[0].__dict__["response_bytes"] == 9


def test_an_app_that_raises_counts_and_logs_a_500(metrics: Metrics, access_logs: pytest.LogCaptureFixture) -> None:
    (response,) = call(build_app(metrics), ("GET", "/boom"))

    assert response.status_code == 500
    (record,) = access_records(access_logs)
    assert record.__dict__["status_code"] == 500
    assert record.__dict__["error"] == "RuntimeError"
    assert record.__dict__["route"] == "/boom"
    exposition = Exposition(metrics.render())
    assert exposition.value("agent_ledger_http_requests_total", method="GET", route="/boom", status="500") == 1
    assert exposition.value("agent_ledger_http_requests_in_progress") == 0


def scope_of(kind: str = "http", **extra: Any) -> Dict[str, Any]:
    scope: Dict[str, Any] = {"type": kind, "asgi": {"version": "3.0"}}
    if kind != "lifespan":
        scope.update(method="GET", path="/direct", raw_path=b"/direct", root_path="", query_string=b"", headers=[])
    scope.update(extra)
    return scope


async def nothing_received() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def test_the_exception_of_the_app_goes_on_up_after_counting(
    metrics: Metrics, access_logs: pytest.LogCaptureFixture
) -> None:
    sent: List[Message] = []

    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        raise KeyError("lost")

    async def send(message: Message) -> None:
        sent.append(message)

    middleware = ObservabilityMiddleware(failing, metrics)
    with pytest.raises(KeyError, match="lost"):
        asyncio.run(middleware(scope_of(client=None), nothing_received, send))

    assert sent == []
    (record,) = access_records(access_logs)
    assert record.__dict__["status_code"] == 500
    assert record.__dict__["client_addr"] == "-"
    assert record.__dict__["route"] == "unmatched"
    exposition = Exposition(metrics.render())
    assert exposition.value("agent_ledger_http_requests_total", method="GET", route="unmatched", status="500") == 1


@pytest.mark.parametrize("kind", ["lifespan", "websocket"])
def test_lifespan_and_websocket_scopes_pass_through_untouched(
    metrics: Metrics, access_logs: pytest.LogCaptureFixture, kind: str
) -> None:
    seen: List[Tuple[Scope, Receive, Send]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope, receive, send))

    async def send(message: Message) -> None:
        raise AssertionError("nothing is sent")

    scope = scope_of(kind)
    before = dict(scope)
    asyncio.run(ObservabilityMiddleware(app, metrics)(scope, nothing_received, send))

    assert seen == [(scope, nothing_received, send)]
    assert scope == before
    assert access_records(access_logs) == []
    assert Exposition(metrics.render()).series("agent_ledger_http_requests_total") == {}


def test_a_path_with_control_characters_is_logged_escaped(
    metrics: Metrics, access_logs: pytest.LogCaptureFixture
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: Message) -> None:
        pass

    scope = scope_of(path="/a\nb", raw_path=b"/a\nforged line?key=" + API_KEY.encode())
    asyncio.run(ObservabilityMiddleware(app, metrics)(scope, nothing_received, send))

    (record,) = access_records(access_logs)
    assert "\n" not in record.getMessage()
    assert record.__dict__["path"] == "/a\\nforged line"


# -- health and readiness -------------------------------------------------------------


def test_health_is_always_ok(metrics: Metrics) -> None:
    (response,) = call(build_app(metrics), ("GET", "/health"))

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readiness_is_ready_when_the_check_passes(metrics: Metrics) -> None:
    threads: List[threading.Thread] = []

    def check() -> None:
        threads.append(threading.current_thread())

    (response,) = call(build_app(metrics, Route("/ready", readiness(check))), ("GET", "/ready"))

    assert response.status_code == 200
    assert response.json() == {"status": "ready"}
    assert threads and threads[0] is not threading.main_thread()  # off the event loop


def test_readiness_is_unavailable_with_the_error_when_the_check_fails(
    metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    def check() -> None:
        raise ConnectionError("database is down")

    (response,) = call(build_app(metrics, Route("/ready", readiness(check))), ("GET", "/ready"))

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "error": "ConnectionError: database is down"}
    assert "database is down" in caplog.text


def test_a_check_that_outlasts_the_timeout_is_unavailable_while_the_loop_keeps_answering(metrics: Metrics) -> None:
    started, release = threading.Event(), threading.Event()
    calls: List[int] = []

    def hung_check() -> None:
        calls.append(1)
        started.set()
        release.wait(10)

    app = build_app(metrics, Route("/ready", readiness(hung_check, timeout=1.0)))

    async def main() -> List[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ledger.test") as client:
            probes = [asyncio.ensure_future(client.get("/ready")) for _ in range(3)]
            while not started.is_set():
                await asyncio.sleep(0.005)
            alive = await client.get("/health")
            assert alive.status_code == 200
            assert not any(probe.done() for probe in probes)  # health answered while the check hangs
            answers = await asyncio.gather(*probes)
            assert not release.is_set()  # they answered before the check ended
            release.set()
            return answers

    answers = asyncio.run(main())

    for response in answers:
        assert response.status_code == 503
        assert response.json() == {"status": "unavailable", "error": "readiness check still running after 1 s"}
    assert calls == [1]  # the three probes waited on one check: one thread held, not three


def test_a_new_probe_runs_a_new_check_once_the_last_one_ended(metrics: Metrics) -> None:
    results = iter([ConnectionError("down"), None])

    def check() -> None:
        error = next(results)
        if error is not None:
            raise error

    down, up = call(build_app(metrics, Route("/ready", readiness(check))), ("GET", "/ready"), ("GET", "/ready"))

    assert (down.status_code, up.status_code) == (503, 200)


def test_the_access_log_writes_the_time_as_logging_does() -> None:
    """The serve command's access log makes its time text once a second: the same text as logging's own."""
    import logging as logging_module

    from agent_ledger_sdk.local.server import _AccessFormatter

    ours, theirs = _AccessFormatter("%(asctime)s %(message)s"), logging_module.Formatter("%(asctime)s %(message)s")
    for moment in (1_700_000_000.123, 1_700_000_000.999, 1_700_000_001.0004, 1_700_000_001.5, 1_700_003_600.25):
        record = logging_module.LogRecord("access", logging_module.INFO, __file__, 1, "GET %s", ("/health",), None)
        record.created, record.msecs = moment, (moment - int(moment)) * 1000
        assert ours.format(record) == theirs.format(record)


# -- one server of several processes ----------------------------------------------------------------


def _count_in_another_process(shared: str, requests: int, left_in_progress: int) -> None:
    """A worker process of the same server: it answers ``requests``, stores events, shares its counts, exits."""
    from agent_ledger_sdk.local.observability import Metrics

    metrics = Metrics(shared=shared)
    for _ in range(requests):
        metrics.request_started()
        metrics.request_finished("POST", "/v1/events", 202, 0.003)
    for _ in range(left_in_progress):
        metrics.request_started()  # under way when it exited: not counted in progress once it is gone
    metrics.events_ingested(7, {"llm_call": 5})
    metrics.session_started()
    metrics.guardrail_refusal("budget_exceeded")
    metrics.share()


def test_the_metrics_of_a_server_of_several_processes_count_them_all(tmp_path: Any) -> None:
    """``serve --workers N``: a scrape reaches one process, and answers for every process of the server."""
    import multiprocessing

    shared = tmp_path / "metrics"
    shared.mkdir()
    child = multiprocessing.get_context("spawn").Process(target=_count_in_another_process, args=(str(shared), 3, 2))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    mine = Metrics(shared=shared)
    mine.request_started()
    mine.request_finished("POST", "/v1/events", 202, 0.2)
    mine.request_started()
    mine.request_finished("GET", "/health", 200, 0.001)
    mine.request_started()  # under way now
    mine.events_ingested(2, {"tool_call": 2})
    scraped = Exposition(mine.render())
    assert scraped.value("agent_ledger_http_requests_total", method="POST", route="/v1/events", status="202") == 4
    assert scraped.value("agent_ledger_http_requests_total", method="GET", route="/health", status="200") == 1
    buckets, total, count = scraped.histogram(
        "agent_ledger_http_request_duration_seconds", method="POST", route="/v1/events"
    )
    assert count == 4 and total == pytest.approx(0.209)
    assert dict(buckets)[0.005] == 3 and dict(buckets)[0.25] == 4
    assert scraped.value("agent_ledger_events_ingested_total", type="llm_call") == 5
    assert scraped.value("agent_ledger_events_ingested_total", type="unknown") == 2
    assert scraped.value("agent_ledger_events_ingested_total", type="tool_call") == 2
    assert scraped.value("agent_ledger_sessions_started_total") == 1
    assert scraped.value("agent_ledger_guardrail_refusals_total", reason="budget_exceeded") == 1
    # In progress: this process's one request; the child's two left with it.
    assert scraped.value("agent_ledger_http_requests_in_progress") == 1
    # What a process is, its own: one start time and one version, not a sum.
    assert len(scraped.series("process_start_time_seconds")) == 1
    assert scraped.value("agent_ledger_build_info", version=__version__) == 1
    # Its own file, for the others: written when its counts changed, complete.
    mine.share()
    own = json.loads((shared / f"{os.getpid()}.json").read_text())
    assert own["pid"] == os.getpid() and "process_start_time_seconds" not in own["families"]


def test_a_process_of_the_server_still_running_counts_its_requests_in_progress(tmp_path: Any) -> None:
    shared = tmp_path / "metrics"
    shared.mkdir()
    other = {
        "pid": os.getppid(),  # a process that runs (this one's parent), as a live worker would
        "families": {
            "agent_ledger_http_requests_in_progress": [[[], 3]],
            "agent_ledger_sessions_started_total": [[[], 2]],
        },
    }
    (shared / "1.json").write_text(json.dumps(other))
    (shared / "2.json").write_text("{not json")  # being replaced, or foreign: skipped, the next scrape reads it
    scraped = Exposition(Metrics(shared=shared).render())
    assert scraped.value("agent_ledger_http_requests_in_progress") == 3
    assert scraped.value("agent_ledger_sessions_started_total") == 2
