"""``/openapi.json`` describes the server exactly: every route, and what each answers.

Plain tests (any Python) hold the document and ``create_app``'s routes to each other, methods
and path parameters included, and check what Schemathesis does not: that a method a path lacks
answers 405 with ``Allow`` listing the path's methods, and that an ``eventsCursor`` is taken
exactly when the document's pattern takes it.

Schemathesis (Python 3.11+, in ``.[dev]``) then drives the real server over HTTP, once on SQLite
and once on PostgreSQL, with every check it has: no 5xx; statuses, content types, headers and
bodies as documented; requests the document allows accepted and those it forbids refused; 401
without a key or with a wrong one. Each operation alone (explicit examples, the values at and
beyond every bound, then random data, valid and invalid), with the ids of live sessions and
reservations where a case sends a valid id; the answers the fuzzing rarely meets (a budget's
429, an unpriced model's 422, a replay), made to happen; then chains of calls along the
document's links (a session started, then used).

A failure is the document being wrong (fix ``local/openapi.py``) or the server being wrong (fix
the server): never loosen a check here to make one pass. Runs are seeded, hence reproducible.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import httpx
import pytest

pytest.importorskip("starlette", reason="the local ledger needs the server extra")

from hypothesis import HealthCheck, settings
from starlette.routing import BaseRoute, Mount, Route

from agent_ledger_sdk.local import LocalLedger, run
from agent_ledger_sdk.local.app import create_app
from agent_ledger_sdk.local.openapi import OPENAPI

from .ledger_fixtures import BACKENDS, database, sqlite_service

try:  # Python 3.11+ only: pyproject's dev extra installs it there
    import schemathesis
except ImportError:  # pragma: no cover - the 3.9 and 3.10 suites
    schemathesis = None  # type: ignore[assignment]

NEEDS_SCHEMATHESIS = "schemathesis needs Python 3.11 or later"
SEED = 20260521
MAX_EXAMPLES = 60  # per operation, backend and generation mode (valid, invalid) in the fuzzing phase
STATEFUL_SCENARIOS = 60  # per backend, each a chain of up to STATEFUL_STEPS calls
STATEFUL_STEPS = 8
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
DASHBOARD = "agent_ledger_sdk.local.dashboard"
IMPLICIT = "HEAD"  # Starlette answers HEAD wherever it answers GET; OpenAPI leaves it implicit


# -- the document and the routes ------------------------------------------------------------------------------


def _shape(path: str) -> str:
    """A path with its parameters unnamed: the server's ``{session_id}`` is the document's ``{sessionId}``."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def _is_dashboard(route: BaseRoute) -> bool:
    """The dashboard's pages and files: HTML for people, beside the API that the document describes."""
    if isinstance(route, Mount):  # /static
        return True
    return str(getattr(getattr(route, "endpoint", None), "__module__", "")).startswith(DASHBOARD)


def _api_routes(tmp_path: Path) -> list[Route]:
    with sqlite_service(tmp_path / "routes.db") as service:  # (closed: Python 3.13 warns of an open database)
        routes = [route for route in create_app(service).routes if not _is_dashboard(route)]
    for route in routes:
        assert isinstance(route, Route), route
    return routes  # type: ignore[return-value]


def _routes(tmp_path: Path) -> dict[str, set[str]]:
    routes: dict[str, set[str]] = {}
    for route in _api_routes(tmp_path):
        routes.setdefault(_shape(route.path_format), set()).update(route.methods or ())
    return routes


def _documented() -> dict[str, set[str]]:
    return {
        _shape(path): {method.upper() for method in operations if method in HTTP_METHODS}
        for path, operations in OPENAPI["paths"].items()
    }


def test_every_route_of_the_server_is_documented_and_nothing_else(tmp_path: Path) -> None:
    routes = _routes(tmp_path)
    for path, methods in routes.items():
        assert IMPLICIT not in methods or "GET" in methods, (path, methods)
    served = {path: methods - {IMPLICIT} for path, methods in routes.items()}
    assert served == _documented()


def test_the_documented_path_parameters_are_those_of_the_routes(tmp_path: Path) -> None:
    by_shape = {_shape(route.path_format): route for route in _api_routes(tmp_path)}
    for path, operations in OPENAPI["paths"].items():
        route = by_shape[_shape(path)]
        names = re.findall(r"\{([^}]*)\}", path)
        served = [name.split(":")[0] for name in re.findall(r"\{([^}]*)\}", route.path)]
        assert [re.sub(r"_(.)", lambda m: m.group(1).upper(), name) for name in served] == names, path
        for method, operation in operations.items():
            declared = [p["name"] for p in operation.get("parameters", ()) if p["in"] == "path"]
            assert declared == names, (method, path)


def test_every_operation_says_what_each_status_carries() -> None:
    ids = [operation["operationId"] for operations in OPENAPI["paths"].values() for operation in operations.values()]
    assert len(set(ids)) == len(ids)
    for path, operations in OPENAPI["paths"].items():
        for method, operation in operations.items():
            assert operation["operationId"] and operation["responses"], (method, path)
            for status, response in operation["responses"].items():
                assert response["headers"]["x-request-id"]["required"] is True, (method, path, status)
                assert ("content" in response) == (status != "204"), (method, path, status)
            public = path in ("/health", "/ready", "/metrics", "/openapi.json")
            assert (operation.get("security") == []) == public, (method, path)
            assert ("401" in operation["responses"]) != public, (method, path)
            if "requestBody" in operation:
                assert operation["requestBody"]["required"] is True
                assert {"400", "413"} <= set(operation["responses"]), (method, path)


def test_every_link_leads_to_an_operation_and_its_parameters() -> None:
    operations = {
        operation["operationId"]: operation
        for operations in OPENAPI["paths"].values()
        for operation in operations.values()
    }
    linked = set()
    for operation in operations.values():
        for response in operation["responses"].values():
            for name, link in response.get("links", {}).items():
                target = operations[link["operationId"]]
                declared = {parameter["name"] for parameter in target.get("parameters", ())}
                assert set(link.get("parameters", {})) <= declared, name
                body = target.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
                assert set(link.get("requestBody", {})) <= set(body.get("properties", {})), name
                linked.add(link["operationId"])
    assert {"getSession", "logEvents", "reserve", "releaseReservation", "endSession", "deleteSession"} <= linked


def _filled(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "x", path)


def test_a_method_that_a_path_has_not_answers_405_with_the_methods_it_has(tmp_path: Path) -> None:
    """RFC 9110: a 405 lists in Allow the methods the resource has (Schemathesis checks only that there is one)."""
    with run(db=tmp_path / "ledger.db") as ledger, httpx.Client(base_url=ledger.url) as http:
        for path, methods in _documented().items():
            allowed = methods | ({IMPLICIT} if "GET" in methods else set())
            for method in sorted({"GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "TRACE"} - methods):
                response = http.request(method, _filled(path), headers={"x-api-key": ledger.api_key})
                assert response.status_code == 405, (method, path, response.text)
                assert set(response.json()) == {"error"}, (method, path)
                assert response.headers.get("x-request-id"), (method, path)
                advertised = {m.strip() for m in response.headers.get("allow", "").split(",") if m.strip()}
                assert advertised == allowed, (method, path, response.headers.get("allow"))


def test_a_path_that_no_operation_has_answers_404_in_json(tmp_path: Path) -> None:
    with run(db=tmp_path / "ledger.db") as ledger:
        for path in ("/v1", "/v2/sessions", "/v1/sessions/x/y", "/v1/nothing"):
            response = httpx.get(f"{ledger.url}{path}", headers={"x-api-key": ledger.api_key})
            assert response.status_code == 404, path
            assert set(response.json()) == {"error"}, path
            assert response.headers["x-request-id"], path


def test_an_events_cursor_is_taken_when_the_documented_pattern_takes_it(tmp_path: Path) -> None:
    """eventsCursor is opaque, but what the server takes is what the document's pattern says (digits only)."""
    get = OPENAPI["paths"]["/v1/sessions/{sessionId}"]["get"]
    (cursor,) = [p["schema"]["pattern"] for p in get["parameters"] if p["name"] == "eventsCursor"]
    largest = str(2**63 - 1)
    values = ["", "0.0", "12.345", f"{largest}.{largest}", "007.1", f"{2**63}.0", "1", "1.", ".1", "1.2.3", "a.b"]
    values += [" 1.2", "1.2 ", "+1.2", "-0.0", "1_0.2", "\u0661.2", "1.\uff12"]  # what int() alone would take
    with run(db=tmp_path / "ledger.db") as ledger, httpx.Client(base_url=ledger.url) as http:
        http.headers["x-api-key"] = ledger.api_key
        session = http.post("/v1/sessions", json={"agentName": "cursor"}).json()["id"]
        taken = {
            value: http.get(f"/v1/sessions/{session}", params={"eventsCursor": value}).status_code for value in values
        }
    assert set(taken.values()) <= {200, 400}
    documented = {value: 200 if re.search(cursor, value) else 400 for value in values}
    assert taken == documented


def test_the_server_serves_this_document(tmp_path: Path) -> None:
    with run(db=tmp_path / "ledger.db") as ledger:
        response = httpx.get(f"{ledger.url}/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == json.loads(json.dumps(OPENAPI))


# -- Schemathesis, against the real server ---------------------------------------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def served(request: pytest.FixtureRequest) -> Iterator[LocalLedger]:
    """A real ledger over HTTP, once per storage backend, on a new database."""
    if schemathesis is None:
        pytest.importorskip("schemathesis", reason=NEEDS_SCHEMATHESIS)
    with database(request, request.param) as db, run(db=db) as ledger:
        yield ledger


def _config(ledger: Optional[LocalLedger] = None) -> Any:
    """Every check on; seeded. With ``ledger``: its URL."""
    assert schemathesis is not None
    server = {} if ledger is None else {"base-url": ledger.url}
    return schemathesis.Config.from_dict(
        {
            **server,
            "seed": SEED,
            "suppress-health-check": ["all"],
            "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "database": "none"},
            "checks": {
                # A valid request may still meet state it cannot know of: a session that ended (409), a
                # spent budget (429), an agent with a budget and a model without a price, or an
                # Idempotency-Key that an earlier request used (both 422).
                "positive_data_acceptance": {"expected-statuses": ["2xx", 404, 409, 422, 429]},
                # An invalid request is refused with a 4xx: too many events are 413 (Content Too Large).
                "negative_data_rejection": {"expected-statuses": ["4xx"]},
                # These two send methods that a path has not: test_a_method_that_a_path_has_not_answers_405...
                # checks that on every path, and more (that Allow lists exactly the methods of the path).
                "unsupported_method": {"enabled": False},
                "allow_header_conformance": {"enabled": False},
            },
        }
    )


def fit_cached_tokens(case: Any) -> None:
    """A rule of the document that JSON Schema cannot state, kept in valid requests (the generator reaches it).

    An llm_call's cached tokens are part of its tokensIn (``cacheReadTokens + cacheWriteTokens <=
    tokensIn``, in the Event schema's words). Counts that are valid alone are lowered to fit; anything
    else is left as generated, for the server to refuse. (The document's other such rules, on sizes and
    on distinct tags, are beyond what the generator makes.)
    """

    def count(value: Any) -> Optional[int]:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None

    events = case.body.get("events") if case.path == "/v1/events" and isinstance(case.body, dict) else None
    for event in events if isinstance(events, list) else ():
        if not isinstance(event, dict) or event.get("type") != "llm_call":
            continue
        tokens_in, read, write = (
            count(event.get(name)) for name in ("tokensIn", "cacheReadTokens", "cacheWriteTokens")
        )
        if tokens_in is None:
            continue
        if read is not None and read > tokens_in:
            event["cacheReadTokens"] = read = tokens_in
        if write is not None and (read or 0) + write > tokens_in:
            event["cacheWriteTokens"] = tokens_in - (read or 0)


class ApiKey:
    """The document's apiKey scheme for Schemathesis: a stand-in key, left out where a case means to leave it out.

    Cases are made before the server they go to is known (the examples when the tests are collected),
    so each test sends its ledger's key in the stand-in's place (:func:`key_headers`).
    """

    STAND_IN = "the-key-of-the-ledger-under-test"

    def get(self, case: Any, context: Any) -> str:
        return self.STAND_IN

    def set(self, case: Any, key: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "x-api-key": key}


def key_headers(case: Any, key: str) -> Optional[dict[str, str]]:
    """The headers that send ``key`` in the stand-in's place; None when the case has no key (on purpose)."""
    return {"x-api-key": key} if (case.headers or {}).get("x-api-key") == ApiKey.STAND_IN else None


class Live:
    """Sessions and reservations that exist, for the ids that cases send: so that the fuzzing reaches the ledger's
    rules (events stored and priced, budgets, ends, deletes) and not only its 404s.

    A case's id is swapped for a live one only where the case's own id is a valid one: a case meant to be
    invalid stays invalid. Each swap makes a new session (with three events, for the events' pages) or a
    new reservation, since a case may end or delete what it is given.
    """

    AGENT = "live-sessions"
    BUDGETED = "live-sessions-budgeted"  # an agent with a (large) daily budget: its calls reserve, and are checked

    def __init__(self, ledger: LocalLedger) -> None:
        self.http = httpx.Client(base_url=ledger.url, headers={"x-api-key": ledger.api_key}, timeout=30)
        self.made = 0

    def session(self, agent: Optional[str] = None) -> str:
        """A new running session with three events, of each agent in turn."""
        self.made += 1
        if agent is None:
            agent = self.BUDGETED if self.made % 2 else self.AGENT
        if agent == self.BUDGETED:  # (again: the fuzzing may change it)
            self.http.put(f"/v1/budgets/{agent}", json={"dailyLimitUsd": 10**12, "monthlyLimitUsd": None})
        session_id: str = self.http.post("/v1/sessions", json={"agentName": agent}).json()["id"]
        events = [{"type": "tool_call", "stepIndex": step} for step in range(3)]
        self.http.post("/v1/events", json={"sessionId": session_id, "events": events})
        return session_id

    def reservation(self) -> Optional[str]:
        """A reservation held now, or None when the budgets the fuzzing set leave no room for one."""
        self.http.put("/v1/prices/live/model", json={"inputPerMtok": 1, "outputPerMtok": 1})
        session_id = self.session(self.BUDGETED)
        reserved = self.http.post(
            "/v1/reservations", json={"sessionId": session_id, "provider": "live", "model": "model", "maxCostUsd": 0.01}
        )
        return str(reserved.json()["id"]) if reserved.status_code == 201 else None

    @staticmethod
    def _valid(value: Any, *, path: bool) -> bool:
        return isinstance(value, str) and value != "" and "\x00" not in value and not (path and "/" in value)

    def swap_ids(self, case: Any) -> None:
        parameters = case.path_parameters or {}
        if self._valid(parameters.get("sessionId"), path=True):
            parameters["sessionId"] = self.session()
        if self._valid(parameters.get("reservationId"), path=True):
            parameters["reservationId"] = self.reservation() or parameters["reservationId"]
        body = case.body if case.path in ("/v1/events", "/v1/reservations") else None
        if isinstance(body, dict) and self._valid(body.get("sessionId"), path=False):
            body["sessionId"] = self.session()


@pytest.fixture(scope="module")
def live(served: LocalLedger) -> Iterator[Live]:
    found = Live(served)
    yield found
    found.http.close()


NOT_PROTOBUF = b"\xff\xff"  # field 31 of wire type 7, which protobuf does not have: no message starts so


def otlp_protobuf(value: Any) -> bytes:
    """A body Schemathesis made for POST /v1/traces as protobuf, whose schema in the document is the structure of the
    ExportTraceServiceRequest: that structure encoded (each span an empty one, which the ledger rejects alone), or,
    for a body the structure does not allow, bytes that are no protobuf (which the ledger refuses whole)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    def objects(parent: Any, name: str) -> Optional[list[dict[str, Any]]]:
        items = parent.get(name)
        if items is None:
            return []
        return items if isinstance(items, list) and all(isinstance(item, dict) for item in items) else None

    request: Any = ExportTraceServiceRequest()
    resource_spans = objects(value, "resourceSpans") if isinstance(value, dict) else None
    if resource_spans is None:
        return NOT_PROTOBUF
    for resource_span in resource_spans:
        if not isinstance(resource_span.get("resource", {}), (dict, type(None))):
            return NOT_PROTOBUF
        added = request.resource_spans.add()
        scope_spans = objects(resource_span, "scopeSpans")
        if scope_spans is None:
            return NOT_PROTOBUF
        for scope_span in scope_spans:
            spans = objects(scope_span, "spans")
            if spans is None:
                return NOT_PROTOBUF
            scope = added.scope_spans.add()
            for span in spans:
                scope.spans.add(name=span["name"] if isinstance(span.get("name"), str) else "")
    return bytes(request.SerializeToString())


if schemathesis is not None:

    @schemathesis.serializer("application/x-protobuf")
    def _protobuf_serializer(context: Any, value: Any) -> bytes:
        return otlp_protobuf(value)

    # The document itself (the server serves the same: test_the_server_serves_this_document), with
    # the server from the ``served`` fixture. (A schema from a fixture, ``schemathesis.pytest.from_fixture``,
    # needs ``Node._nodeid``, which pytest 9.2 no longer has.)
    SCHEMA = schemathesis.openapi.from_dict(OPENAPI, config=_config())
    SCHEMA.auth(refresh_interval=None)(ApiKey)

    @SCHEMA.parametrize()
    @settings(deadline=None)
    def test_each_operation_answers_as_documented(case: Any, served: LocalLedger, live: Live) -> None:
        """Every operation alone: examples, every bound and its neighbours, then random valid and invalid data."""
        fit_cached_tokens(case)
        live.swap_ids(case)
        # (The case may be an example that the other backend's run sends too: its key is left as it is.)
        case.call_and_validate(base_url=served.url, headers=key_headers(case, served.api_key))

else:  # pragma: no cover - the 3.9 and 3.10 suites

    def test_each_operation_answers_as_documented() -> None:
        pytest.importorskip("schemathesis", reason=NEEDS_SCHEMATHESIS)


class Conformance:
    """Calls one operation of the document with chosen data, and holds the answer to the document (every check)."""

    def __init__(self, ledger: LocalLedger) -> None:
        assert schemathesis is not None
        self.schema = schemathesis.openapi.from_dict(OPENAPI, config=_config(ledger))
        # A workspace of its own: the other tests fuzz the budgets and settings of the ledger's.
        self.key = ledger.service.create_key("conformance", f"conformance-{uuid.uuid4().hex}").secret

    def __call__(self, method: str, path: str, status: int, *, key: bool = True, **data: Any) -> Any:
        headers = {**data.pop("headers", {}), **({"x-api-key": self.key} if key else {})}
        case = self.schema[path][method].Case(headers=headers, **data)
        response = case.call()
        assert response.status_code == status, (method, path, response.text)
        case.validate_response(response)
        return response


def test_what_the_fuzzing_rarely_reaches_answers_as_documented(served: LocalLedger) -> None:
    """Each documented answer of the budget and idempotency rules, made to happen, and held to the document."""
    call = Conformance(served)
    call(
        "PUT",
        "/v1/prices/{model}",
        200,
        path_parameters={"model": "acme/priced"},
        body={"inputPerMtok": 1, "outputPerMtok": 1},
    )
    agent = f"capped-{uuid.uuid4().hex[:8]}"
    call("PUT", "/v1/budgets/{agentName}", 200, path_parameters={"agentName": agent}, body={"dailyLimitUsd": 0.00001})
    session = call("POST", "/v1/sessions", 201, body={"agentName": agent, "tags": ["a", "a"]}).json()
    assert session["budgeted"] is True
    reserve = {
        "sessionId": session["id"],
        "provider": "acme",
        "model": "priced",
        "estimate": {"tokensIn": 5, "tokensOut": 5},
    }
    reservation = call("POST", "/v1/reservations", 201, body=reserve).json()
    call("POST", "/v1/reservations", 429, body=reserve)  # the budget is all reserved
    call("POST", "/v1/reservations", 422, body={**reserve, "model": "unpriced"})  # no price, and a budget
    settled = {"type": "llm_call", "provider": "acme", "model": "priced", "tokensIn": 5, "tokensOut": 5}
    events = [{**settled, "reservationId": reservation["id"], "stepIndex": 0}]
    call("POST", "/v1/events", 202, body={"sessionId": session["id"], "events": events})
    call("DELETE", "/v1/reservations/{reservationId}", 204, path_parameters={"reservationId": reservation["id"]})
    over = {"sessionId": session["id"], "events": [{**settled, "stepIndex": 1}]}
    assert call("POST", "/v1/events", 429, body=over).json()["overBudgetEvents"] == [0]  # stored all the same
    call("POST", "/v1/events", 422, body={"sessionId": session["id"], "events": [{**settled, "model": "unpriced"}]})
    call("POST", "/v1/events", 400, body={"sessionId": session["id"], "events": [{"type": "t", "stepIndex": -1}]})
    large = {"type": "tool_result", "output": "x" * 70_000}
    call("POST", "/v1/events", 413, body={"sessionId": session["id"], "events": [large]})
    page = call(
        "GET", "/v1/sessions/{sessionId}", 200, path_parameters={"sessionId": session["id"]}, query={"eventsLimit": 1}
    )
    following = page.json()["nextEventsCursor"]
    assert following is not None
    query = {"eventsLimit": 1, "eventsCursor": following}
    call("GET", "/v1/sessions/{sessionId}", 200, path_parameters={"sessionId": session["id"]}, query=query)
    assert call("GET", "/v1/budgets", 200).json()["budgets"]
    call("GET", "/v1/sessions", 200, query={"agent": agent, "limit": 1})
    ended = {"sessionId": session["id"]}
    call(
        "POST",
        "/v1/sessions/{sessionId}/end",
        200,
        path_parameters=ended,
        body={"status": "error", "errorMessage": "x"},
    )
    call("POST", "/v1/sessions/{sessionId}/end", 409, path_parameters=ended, body={"status": "success"})
    call("POST", "/v1/events", 409, body={"sessionId": session["id"], "events": [{"type": "t"}]})
    call("POST", "/v1/reservations", 409, body=reserve)
    call("DELETE", "/v1/sessions/{sessionId}", 204, path_parameters=ended)
    call("GET", "/v1/sessions/{sessionId}", 404, path_parameters=ended)
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = call("POST", "/v1/sessions", 201, headers=key, body={"agentName": agent})
    again = call("POST", "/v1/sessions", 201, headers=key, body={"agentName": agent})
    assert again.headers.get("idempotent-replayed") == ["true"] and again.json() == first.json()
    call("POST", "/v1/sessions", 422, headers=key, body={"agentName": "another"})
    call("GET", "/v1/settings", 401, key=False)
    call("GET", "/ready", 200, key=False)
    call("GET", "/metrics", 200, key=False)


def test_chained_calls_answer_as_documented(served: LocalLedger) -> None:
    """Sessions started, then used along the document's links: events, reservations, reads, ends, deletes.

    Each chain runs in a workspace of its own (a new key), so that it meets the same state whenever it
    runs: Hypothesis needs that to replay it.
    """
    assert schemathesis is not None
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json", config=_config(served))
    schema.auth(refresh_interval=None)(ApiKey)

    class Chains(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            super().setup()
            self.key = served.service.create_key("chains", f"chains-{uuid.uuid4().hex}").secret

        def before_call(self, case: Any) -> None:
            fit_cached_tokens(case)

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": key_headers(case, self.key)}

    Chains.run(
        settings=settings(
            max_examples=STATEFUL_SCENARIOS,
            stateful_step_count=STATEFUL_STEPS,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )
