"""The local ledger's HTTP API: the hosted Agent Ledger API, plus reservations and a read API, on Starlette.

Write endpoints (the published protocol)::

    POST /v1/sessions               {"agentName": str, ...context}      -> 201 {"id", "budgeted", ...}
    POST /v1/sessions/{id}/end      {"status", "errorMessage"}          -> 200
    POST /v1/events                 {"sessionId", "events": [...]}      -> 202 {"accepted", "costUsd", "priced"?}

A session may carry ``userId``, ``tags``, ``metadata``, ``parentSessionId``
and a cost cap ``maxCostUsd``. A batch of events is all or nothing: when some
events are bad, the answer is a 400 (413 when one is over 64 KB) whose
``rejected`` lists every bad event by index, so that a client can drop those
and resend the rest. A batch whose unreserved LLM call went over a budget is
stored whole and answered with the published guardrail 429.

OpenTelemetry (OTLP/HTTP; ``otlp.py`` says what spans become)::

    POST /v1/traces                 ExportTraceServiceRequest (protobuf or JSON)
                                    -> 200 ExportTraceServiceResponse (partialSuccess: spans rejected)
                                       | 400 (not OTLP) | 415 (another content type)

Reserve, then settle::

    POST   /v1/reservations         {"sessionId", "provider", "model", "estimate" | "maxCostUsd"}
                                    -> 200 {"budgeted": false} | 201 {"id", "reservedUsd", ...} | 429 | 422
    DELETE /v1/reservations/{id}    -> 204

Read, budget, price and settings endpoints: ``GET /v1/sessions``,
``GET /v1/sessions/{id}`` (with a page of its events: ``?eventsLimit=&eventsCursor=``),
``DELETE /v1/sessions/{id}``, ``GET /v1/budgets``, ``PUT /v1/budgets/{agentName}``,
``PUT /v1/workspace-budget``, ``GET|PUT /v1/settings``, ``GET /v1/prices``,
``PUT|DELETE /v1/prices/{model}``; ``GET /openapi.json`` describes them all.
Every ``/v1`` request needs ``x-api-key``; ``/health`` (alive), ``/ready`` (the
database answers) and ``/metrics`` (Prometheus) do not. Amounts are exact: JSON numbers
with exactly the digits of the ledger's decimal amounts.

The handlers parse HTTP and call :class:`~.service.LedgerService` off the event
loop (a thread of ``offload.py``'s pool), so that a slow query never holds up other
requests; this module alone maps the service's errors to HTTP statuses.
"""

from __future__ import annotations

import hashlib
import logging
import re
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar, Union

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .._constants import PRICED_HEADER
from . import money
from .body import MAX_BODY_BYTES, parse_json_body, parse_json_object, read_body, read_json_object
from .offload import WriterThread, run_off_loop
from .pricing import PriceBook
from .records import (
    INVALID_KEY,
    KEY_HINT,
    BadInput,
    BudgetExceeded,
    Conflict,
    Idempotency,
    IdempotencyMismatch,
    LedgerError,
    NotFound,
    Reply,
    SessionQuery,
    TooLarge,
    Unauthorized,
    UnpricedModel,
)
from .service import MAX_EVENTS_PAGE, LedgerService
from .store.base import Store
from .validation import query_int

logger = logging.getLogger("agent_ledger_sdk.local")

MAX_LIST_LIMIT = 500
# A write this small (a batch of a few events, a reservation: about 0.3 ms of work) runs on the event loop when the
# store can write at once (Store.write_now: SQLite, no other write under way), instead of going to a thread of the
# pool: the two hand-offs cost it about 80 µs of its 0.5 ms. Larger ones, and any that would wait, go to the pool.
INLINE_BYTES = 4096
_T = TypeVar("_T")

__all__ = ["BadInput", "LedgerAPI", "TooLarge", "create_app"]


class ExactJSONResponse(JSONResponse):
    """JSON whose amounts (Decimals) are numbers with exactly their digits: 0.00008, never 7.999999999999999e-05."""

    def render(self, content: Any) -> bytes:
        return money.dumps_bytes(content)


def _json(content: Any, status: int = 200) -> Response:
    return ExactJSONResponse(content, status_code=status)


def _error(status: int, message: str, **extra: Any) -> Response:
    return _json({"error": message, **extra}, status)


def _reply(reply: Reply) -> Response:
    headers = {"Idempotent-Replayed": "true"} if reply.replayed else None
    status = int(reply.status)
    if status == 204:
        return Response(status_code=204, headers=headers)
    if reply.raw is not None:  # a replay: the very bytes first sent
        return Response(reply.raw.encode("utf-8"), status, headers, media_type="application/json")
    return ExactJSONResponse(reply.body, status_code=status, headers=headers)


def _no_nul(request: Request) -> None:
    """Refuse U+0000 in the path and the query: no database text column can hold it (PostgreSQL refuses it)."""
    query = request.query_params.multi_items() if request.scope.get("query_string") else []  # none: not parsed
    for name, value in [*request.path_params.items(), *query]:
        if isinstance(value, str) and "\x00" in value:
            raise BadInput(f"{name} contains U+0000 (a NUL character), which the ledger cannot store; remove it.")


# A path that starlette's URL gives back as it is (no character it escapes or urlsplit strips, no "//" that
# would read as a host): ``request.url.path`` is then ``scope["path"]``, when there is no root path.
_PLAIN_PATH = re.compile(r"/(?!/)[A-Za-z0-9._~!$&'()*+,;=:@%/-]*")


def request_path(request: Request) -> str:
    """``request.url.path``, without making the URL where it is the scope's path (tens of µs: an idempotent
    POST's fingerprint reads it on every request)."""
    scope = request.scope
    path: str = scope["path"]
    if not scope.get("root_path") and _PLAIN_PATH.fullmatch(path):
        return path
    return request.url.path


def _idempotency_of(method: str, path: str, key: Optional[str], raw: bytes) -> Optional[Idempotency]:
    if not key:
        return None
    if len(key) > 255:
        raise BadInput("Idempotency-Key must be at most 255 characters.")
    fingerprint = hashlib.sha256(f"{method} {path}\n".encode() + raw).hexdigest()
    return Idempotency(key, fingerprint)


class LedgerAPI:
    """The request handlers, over one :class:`~.service.LedgerService`."""

    def __init__(self, service: LedgerService) -> None:
        self.service = service
        # The writes of a store that makes one at a time go to one thread of their own (offload.WriterThread).
        self._writer = WriterThread() if service.store.one_writer else None

    @staticmethod
    async def _off_loop(function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        return await run_off_loop(function, *args, **kwargs)

    async def _write(self, raw: bytes, function: Callable[..., Reply], *args: Any, urgent: bool = False) -> Reply:
        """``function(*args)`` for a request whose body is ``raw``: here, on the event loop, when the body is
        small and the store can write at once (INLINE_BYTES, ``Store.write_now``); else on the store's writer
        thread (a store that makes one write at a time; ``urgent``: before the batches waiting there), or in a
        thread of the pool."""
        if len(raw) <= INLINE_BYTES:
            with self.service.store.write_now() as now:
                if now:
                    return function(*args)
        if self._writer is not None:
            return await self._writer.run(function, *args, urgent=urgent)
        return await run_off_loop(function, *args)

    async def _workspace(self, request: Request) -> str:
        return await self._off_loop(self._authenticated, self._key(request))

    @staticmethod
    def _key(request: Request) -> str:
        _no_nul(request)
        key = request.headers.get("x-api-key")
        if not key:
            raise Unauthorized(f"Missing x-api-key header. {KEY_HINT}")
        return key

    def _authenticated(self, key: str) -> str:
        """The key's workspace (in a thread of the pool: it reads the database)."""
        workspace = self.service.authenticate(key)
        if workspace is None:
            raise Unauthorized(INVALID_KEY)
        return workspace

    @staticmethod
    def _idempotency(request: Request, raw: bytes) -> Optional[Idempotency]:
        key = request.headers.get("idempotency-key")
        if not key:
            return None  # the request's URL is not made (tens of µs on the path of every call)
        return _idempotency_of(request.method, request_path(request), key, raw)

    # -- the published protocol ---------------------------------------------------

    async def start_session(self, request: Request) -> Response:
        workspace = await self._workspace(request)
        body, raw = await read_json_object(request)
        idempotency = self._idempotency(request, raw)
        return _reply(await self._off_loop(self.service.start_session_request, workspace, body, idempotency))

    async def end_session(self, request: Request) -> Response:
        workspace = await self._workspace(request)
        body, raw = await read_json_object(request)
        session_id = request.path_params["session_id"]
        idempotency = self._idempotency(request, raw)
        return _reply(await self._off_loop(self.service.end_session_request, workspace, session_id, body, idempotency))

    async def log_events(self, request: Request) -> Response:
        # The hot path: one trip to a thread for the key, the JSON and the write (not one for the key and
        # another for the write), and the JSON parsed there, off the event loop. Errors keep their order:
        # a missing or bad key first, then the body's size, then its JSON, then the events.
        _no_nul(request)
        key = request.headers.get("x-api-key")
        if not key:
            raise Unauthorized(f"Missing x-api-key header. {KEY_HINT}")
        try:
            raw = await read_body(request)
        except LedgerError:
            await self._workspace(request)  # a bad key is a 401 first
            raise
        idempotency_key = request.headers.get("idempotency-key")
        path = request_path(request) if idempotency_key else ""  # only an idempotency key's fingerprint reads it
        priced = request.headers.get(PRICED_HEADER, "").lower() == "true"  # the SDK's OpenTelemetry spans ask
        return _reply(await self._write(raw, self._log_events, key, raw, idempotency_key, path, priced))

    def _log_events(self, key: str, raw: bytes, idempotency_key: Optional[str], path: str, priced: bool) -> Reply:
        workspace = self.service.authenticate(key)
        if workspace is None:
            raise Unauthorized(INVALID_KEY)
        body, parsed_by_orjson = parse_json_body(raw)
        idempotency = _idempotency_of("POST", path, idempotency_key, raw)
        return self.service.log_events_request(
            workspace, body, idempotency, parsed_by_orjson=parsed_by_orjson, priced=priced
        )

    # -- OpenTelemetry -------------------------------------------------------------------------

    async def ingest_traces(self, request: Request) -> Response:
        """OTLP/HTTP: the answer, errors included, in the request's encoding (an error in protobuf: a
        google.rpc.Status), so that any OTLP exporter reads it."""
        from . import otlp

        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        protobuf = media == otlp.PROTOBUF
        try:
            workspace = await self._workspace(request)
            if media not in (otlp.PROTOBUF, otlp.JSON):
                message = (
                    f"Content-Type {media or '(none)'} is not OTLP: send an ExportTraceServiceRequest as "
                    f"{otlp.PROTOBUF} (protobuf) or {otlp.JSON} (OTLP JSON)."
                )
                return _json({"error": message, "code": 3, "message": message}, 415)
            raw = _decompressed(request, await read_body(request))
            decode = otlp.decode_protobuf if protobuf else otlp.decode_json
            decoded = await self._off_loop(decode, raw)
            rejected = await self._off_loop(self.service.ingest_traces, workspace, decoded)
        except LedgerError as exc:
            if isinstance(exc, BudgetExceeded):  # pragma: no cover - spans are charged after the fact, never refused
                raise
            status = status_of(exc)
            code = _GRPC_CODES.get(status, 3)
            if protobuf:
                return Response(otlp.encode_status(code, exc.message), status, media_type=media)
            # {"error"} as every answer of the ledger, and {"code", "message"}: a google.rpc.Status in JSON.
            return _json({"error": exc.message, "code": code, "message": exc.message}, status)
        return Response(otlp.encode_response(rejected, protobuf=protobuf), 200, media_type=media)

    # -- reserve, then settle ----------------------------------------------------------

    async def reserve(self, request: Request) -> Response:
        # On the path of every budgeted LLM call. A key this process knows, on a store that makes the call on
        # the event loop (PostgreSQL): the body checked and priced here, the call made here, no thread at all in
        # the plain case. Else one trip to a thread (the key checked there, then the body parsed and the
        # reservation made), or none (SQLite, when it can write at once: Store.write_now).
        key = self._key(request)
        raw = await read_body(request)

        def read() -> tuple[Mapping[str, Any], Optional[Idempotency]]:
            return parse_json_object(raw), self._idempotency(request, raw)

        def reserve() -> Reply:
            return self.service.reserve_with_key(key, read)

        try:  # (a body larger than a reservation's is checked in a thread, as every large body is)
            on_loop = self.service.store.sends_ahead and len(raw) <= INLINE_BYTES
            plan = self.service.plan_reservation(key, read) if on_loop else None
        except LedgerError:
            plan = None  # reserve_with_key says it, after the key's error if the key is bad too
        if plan is None or plan.call is None:
            return _reply(await self._write(raw, reserve, urgent=True))  # the LLM call waits for it: before batches
        granted = await self.service.store.reserve_on_loop(plan.call)
        if granted is None:  # not made here: in a thread
            return _reply(await self._write(raw, self.service.reserve_planned, plan, urgent=True))
        if plan.forget_reservations or plan.forget_idempotency:
            await self._off_loop(self.service.sweep, plan)
        if granted:
            return _reply(plan.granted())
        return _reply(await self._write(raw, self.service.reserve_planned, plan, False, urgent=True))

    async def release(self, request: Request) -> Response:
        workspace = await self._workspace(request)
        raw = await read_body(request)
        reservation_id = request.path_params["reservation_id"]
        idempotency = self._idempotency(request, raw)
        return _reply(await self._off_loop(self.service.release, workspace, reservation_id, idempotency))

    # -- reads and budgets -----------------------------------------------------------

    async def list_sessions(self, request: Request) -> Response:
        workspace = await self._workspace(request)
        params = request.query_params
        limit = query_int(request.query_params, "limit", 50, 1, MAX_LIST_LIMIT)
        cursor = query_int(request.query_params, "cursor", None, 0, 2**63 - 1)
        status = params.get("status")
        if status is not None and status not in ("running", "success", "error"):
            raise BadInput('status must be "running", "success" or "error".')
        user = params.get("user")
        tags = tuple(params.getlist("tag"))
        if user == "" or "" in tags:
            raise BadInput("user and tag must not be empty: ?user=USER_ID&tag=TAG (tag may repeat).")
        query = SessionQuery(
            agent_name=params.get("agent"),
            status=status,
            user_id=user,
            tags=tags,
            started_after=params.get("since"),
            started_before=params.get("until"),
            limit=limit,
            cursor=cursor,
            workspace=workspace,
        )
        return _json(await self._off_loop(self.service.list_sessions, query))

    async def get_session(self, request: Request) -> Response:
        workspace = await self._workspace(request)
        limit = query_int(request.query_params, "eventsLimit", None, 1, MAX_EVENTS_PAGE)
        cursor = request.query_params.get("eventsCursor")
        session_id = request.path_params["session_id"]
        return _json(
            await self._off_loop(
                self.service.get_session, session_id, workspace, events_limit=limit, events_cursor=cursor
            )
        )

    async def delete_session(self, request: Request) -> Response:
        workspace = await self._workspace(request)
        await self._off_loop(self.service.delete_session, workspace, request.path_params["session_id"])
        return Response(status_code=204)

    async def budgets(self, request: Request) -> Response:
        workspace = await self._workspace(request)
        return _json(await self._off_loop(self.service.budgets_overview, workspace))

    async def set_budget(self, request: Request) -> Response:
        workspace = await self._workspace(request)
        body, _ = await read_json_object(request)
        agent = request.path_params["agent_name"]
        return _json(await self._off_loop(self.service.set_budget_request, workspace, agent, body))

    async def set_workspace_budget(self, request: Request) -> Response:
        workspace = await self._workspace(request)
        body, _ = await read_json_object(request)
        return _json(await self._off_loop(self.service.set_workspace_budget_request, workspace, body))

    async def settings(self, request: Request) -> Response:
        workspace = await self._workspace(request)
        return _json(await self._off_loop(self.service.settings, workspace))

    async def set_settings(self, request: Request) -> Response:
        workspace = await self._workspace(request)
        body, _ = await read_json_object(request)
        return _json(await self._off_loop(self.service.set_settings_request, workspace, body))

    # -- prices -------------------------------------------------------------------------------

    async def list_prices(self, request: Request) -> Response:
        workspace = await self._workspace(request)
        prices = await self._off_loop(self.service.prices, workspace)
        return _json({"prices": [{"model": name, **rates.as_json()} for name, rates in prices.items()]})

    async def set_price(self, request: Request) -> Response:
        workspace = await self._workspace(request)
        body, _ = await read_json_object(request)
        model = request.path_params["model"]
        return _json(await self._off_loop(self.service.set_price_request, workspace, model, body))

    async def remove_price(self, request: Request) -> Response:
        workspace = await self._workspace(request)
        await self._off_loop(self.service.remove_price_request, workspace, request.path_params["model"])
        return Response(status_code=204)

    # -- operations -----------------------------------------------------------------------------

    async def openapi(self, request: Request) -> Response:
        from .openapi import OPENAPI

        return _json(OPENAPI)


# Which status each domain error becomes (the most specific class wins).
_STATUSES: dict[type[LedgerError], int] = {
    TooLarge: 413,
    BadInput: 400,
    Unauthorized: 401,
    NotFound: 404,
    Conflict: 409,
    IdempotencyMismatch: 422,
    UnpricedModel: 422,
    BudgetExceeded: 429,
}


def status_of(error: LedgerError) -> int:
    for kind in type(error).__mro__:
        found = _STATUSES.get(kind)
        if found is not None:
            return found
        legacy = kind.__dict__.get("status")  # errors that still carry their own status
        if isinstance(legacy, int):
            return legacy
    return 400


# The google.rpc.Code of an OTLP/HTTP error in protobuf, by HTTP status.
_GRPC_CODES = {400: 3, 401: 16, 404: 5, 413: 8, 415: 3}


def _decompressed(request: Request, raw: bytes) -> bytes:
    """The body an OTLP exporter sent gzipped (``Content-Encoding: gzip``, the Collector's default), unzipped
    within the body limit."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding != "gzip":
        raise BadInput(f"Content-Encoding {encoding} is not supported: send the body as it is, or gzipped.")
    unzip = zlib.decompressobj(wbits=31)
    try:
        body = unzip.decompress(raw, MAX_BODY_BYTES + 1)
    except zlib.error as exc:
        raise BadInput(f"The body is not gzip ({exc}), though Content-Encoding says so.") from None
    if len(body) > MAX_BODY_BYTES or unzip.unconsumed_tail:
        raise TooLarge(f"The body is over {MAX_BODY_BYTES} bytes unzipped; send fewer spans per request.")
    return body


async def _ledger_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LedgerError)
    if isinstance(exc, BudgetExceeded):
        return _json(exc.body, 429)
    rejected = getattr(exc, "rejected", None)
    if rejected is not None:
        status = 413 if getattr(exc, "too_large", False) or getattr(exc, "status", None) == 413 else 400
        return _error(status, exc.message, rejected=rejected)
    return _error(status_of(exc), exc.message, **exc.extra)


async def _internal_error(request: Request, exc: Exception) -> Response:
    """A bug of the ledger: a JSON 500 that closes the connection, so that a client's next request never
    meets a socket the server is about to close (uvicorn closes it after a 500)."""
    logger.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return _json_closing(
        {"error": f"Internal error of the ledger ({type(exc).__name__}); it is logged on the server. Retry later."},
        500,
    )


def _json_closing(content: Any, status: int) -> Response:
    response = _json(content, status)
    response.headers["connection"] = "close"
    return response


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error(404, f"No route {request.method} {request.url.path}. See GET /openapi.json for the API.")


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    response = _error(405, f"{request.method} is not allowed on {request.url.path}. See GET /openapi.json.")
    # Every route of the path, not only the first that matched it (as Starlette's own header would say).
    path = request.scope["path"]
    allowed = {
        method
        for route in request.app.routes
        if isinstance(route, Route) and route.path_regex.match(path)
        for method in route.methods or ()
    }
    response.headers["allow"] = ", ".join(sorted(allowed))
    return response


class _HotRoutes:
    """``POST /v1/events`` and ``POST /v1/reservations`` straight to their handlers, past Starlette's router.

    The two requests an instrumented agent sends on every step: the router's walk over every route and
    its layers of exception handling cost more than the rest of the request's work on the event loop.
    Only the plain case is taken here (an exact path, no query string, no root path); anything else goes
    on to the router, which answers it as before (a 405 with its ``Allow``, a NUL in the query, ...). The
    handler is the router's own, with the same ``Request``, and a domain error is answered by the same
    handler the app registers (``_ledger_error``); any other exception goes on up, as from the router,
    to the 500 of ``_internal_error``. ``scope["route"]`` is set as the router sets it, for the metrics.
    """

    def __init__(self, app: ASGIApp, routes: list[Route]) -> None:
        self.app = app
        self._routes = {route.path: route for route in routes}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = None
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and not scope.get("query_string")
            and not scope.get("root_path")
        ):
            route = self._routes.get(scope["path"])
        if route is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        scope["path_params"] = {}
        request = Request(scope, receive, send)
        try:
            response = await route.endpoint(request)
        except LedgerError as exc:
            response = await _ledger_error(request, exc)
        await response(scope, receive, send)


def create_app(
    ledger: Any,
    prices: Optional[PriceBook] = None,
    *,
    dashboard_login: Optional[bool] = None,
    dashboard_workspace: str = "default",
    shared_metrics: Union[str, Path, None] = None,
) -> Starlette:
    """The ASGI application of a ledger over a :class:`~.service.LedgerService` (or a store, with ``prices``).

    Every request is counted in ``/metrics`` (Prometheus, this process's) and logged in one line
    on the ``agent_ledger_sdk.local.access`` logger, with a request id.

    The dashboard (``dashboard/``: ``/``, ``/sessions/{id}``, ``/compare``, ``/costs``, ``/budgets``) is
    served too. ``dashboard_login``: True asks for an API key (a server reachable beyond this machine:
    ``serve --host`` not loopback, or ``AGENT_LEDGER_DASHBOARD_LOGIN=1``); False or None show
    ``dashboard_workspace`` without a login, and only to requests from and to loopback addresses.

    ``shared_metrics``: a directory the processes of one server share, so that ``/metrics`` answers for them all
    (``serve --workers N``; see ``observability.create_metrics``).
    """
    from .dashboard import dashboard_routes, login_from_environment
    from .observability import ObservabilityMiddleware, create_metrics, health, metrics_endpoint, readiness

    if isinstance(ledger, Store):
        ledger = LedgerService(ledger, prices)
    elif prices is not None:
        raise TypeError("create_app(service, prices): give the prices to LedgerService(store, prices) instead")
    service: LedgerService = ledger
    metrics = create_metrics(shared=shared_metrics)
    service.metrics = metrics
    api = LedgerAPI(service)
    events_route = Route("/v1/events", api.log_events, methods=["POST"])
    reserve_route = Route("/v1/reservations", api.reserve, methods=["POST"])
    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/ready", readiness(service.store.ping), methods=["GET"]),
        Route("/metrics", metrics_endpoint(metrics), methods=["GET"]),
        Route("/openapi.json", api.openapi, methods=["GET"]),
        Route("/v1/sessions", api.start_session, methods=["POST"]),
        Route("/v1/sessions", api.list_sessions, methods=["GET"]),
        Route("/v1/sessions/{session_id}", api.get_session, methods=["GET"]),
        Route("/v1/sessions/{session_id}", api.delete_session, methods=["DELETE"]),
        Route("/v1/sessions/{session_id}/end", api.end_session, methods=["POST"]),
        events_route,
        Route("/v1/traces", api.ingest_traces, methods=["POST"]),
        reserve_route,
        Route("/v1/reservations/{reservation_id}", api.release, methods=["DELETE"]),
        Route("/v1/budgets", api.budgets, methods=["GET"]),
        Route("/v1/budgets/{agent_name}", api.set_budget, methods=["PUT"]),
        Route("/v1/workspace-budget", api.set_workspace_budget, methods=["PUT"]),
        Route("/v1/settings", api.settings, methods=["GET"]),
        Route("/v1/settings", api.set_settings, methods=["PUT"]),
        Route("/v1/prices", api.list_prices, methods=["GET"]),
        Route("/v1/prices/{model:path}", api.set_price, methods=["PUT"]),
        Route("/v1/prices/{model:path}", api.remove_price, methods=["DELETE"]),
    ]
    login = dashboard_login if dashboard_login is not None else login_from_environment()
    dashboard = dashboard_routes(service, login=login, workspace=dashboard_workspace)
    app = Starlette(
        routes=[*routes, *dashboard],
        exception_handlers={
            LedgerError: _ledger_error,
            404: _not_found,
            405: _method_not_allowed,
            Exception: _internal_error,
        },
        middleware=[
            Middleware(ObservabilityMiddleware, metrics=metrics),  # outermost: times the whole request
            Middleware(_HotRoutes, routes=[events_route, reserve_route]),
        ],
    )
    app.state.metrics = metrics
    app.state.service = service
    app.state.api = api
    return app
