"""The local ledger's HTTP API: the hosted Agent Ledger API, plus a read API, on Starlette.

Write endpoints (the published protocol)::

    POST /v1/sessions               {"agentName": str, ...context}      -> 201 {"id", ...}
    POST /v1/sessions/{id}/end      {"status", "errorMessage"}          -> 200
    POST /v1/events                 {"sessionId", "events": [...]}      -> 202 {"accepted", "costUsd"}

A session may carry ``userId``, ``tags``, ``metadata`` and ``parentSessionId``.
A batch of events is all or nothing: when some events are bad, the answer is a
400 (413 when one is over 64 KB) whose ``rejected`` lists every bad event by
index, so that a client can drop those and resend the rest.

Read and budget endpoints: ``GET /v1/sessions``, ``GET /v1/sessions/{id}``,
``GET /v1/budgets``, ``PUT /v1/budgets/{agentName}``; ``GET /openapi.json``
describes them all. Every ``/v1`` request needs ``x-api-key``.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Optional

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .pricing import PriceBook
from .storage import (
    BudgetExceeded,
    Idempotency,
    LedgerStore,
    PricedEvent,
    Reply,
    SessionQuery,
    StoreError,
)
from .validation import (
    BadInput,
    EventsRejected,
    Rejection,
    TooLarge,
    check_event,
    check_session_context,
    is_number,
)

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_EVENTS_PER_REQUEST = 10_000
MAX_AGENT_NAME = 200
MAX_ERROR_MESSAGE = 10_000
KEY_HINT = "Create a key with `agent-ledger keys create --name NAME` and send it in the x-api-key header."

__all__ = ["BadInput", "LedgerAPI", "TooLarge", "create_app"]


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _reply(reply: Reply) -> JSONResponse:
    headers = {"Idempotent-Replayed": "true"} if reply.replayed else None
    return JSONResponse(reply.body, status_code=reply.status, headers=headers)


class LedgerAPI:
    """The request handlers, bound to one store and one price book."""

    def __init__(self, store: LedgerStore, prices: PriceBook) -> None:
        self.store = store
        self.prices = prices

    # -- plumbing ------------------------------------------------------------

    def _workspace(self, request: Request) -> str:
        key = request.headers.get("x-api-key")
        if not key:
            raise _Unauthorized(f"Missing x-api-key header. {KEY_HINT}")
        workspace = self.store.authenticate(key)
        if workspace is None:
            raise _Unauthorized(f"Invalid or revoked API key. {KEY_HINT}")
        return workspace

    async def _json_object(self, request: Request) -> tuple[dict[str, Any], bytes]:
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise TooLarge(
                f"Request body is {len(raw)} bytes; the limit is {MAX_BODY_BYTES}. Send fewer events per request."
            )
        try:
            body = json.loads(raw) if raw else None
        except ValueError as exc:
            raise BadInput(
                f"Request body is not valid JSON ({exc}). Send a JSON object with Content-Type: application/json."
            ) from None
        except RecursionError:
            raise BadInput("Request body is nested too deeply to read; flatten it.") from None
        if not isinstance(body, dict):
            raise BadInput(
                f"Request body must be a JSON object, got {type(body).__name__ if body is not None else 'nothing'}."
            )
        return body, raw

    @staticmethod
    def _idempotency(request: Request, raw: bytes) -> Optional[Idempotency]:
        key = request.headers.get("idempotency-key")
        if not key:
            return None
        if len(key) > 255:
            raise BadInput("Idempotency-Key must be at most 255 characters.")
        fingerprint = hashlib.sha256(f"{request.method} {request.url.path}\n".encode() + raw).hexdigest()
        return Idempotency(key, fingerprint)

    # -- the published protocol ---------------------------------------------------

    async def start_session(self, request: Request) -> Response:
        workspace = self._workspace(request)
        body, raw = await self._json_object(request)
        agent_name = body.get("agentName")
        if not isinstance(agent_name, str) or not agent_name.strip():
            raise BadInput(
                '"agentName" is required: a non-empty string naming the agent, e.g. {"agentName": "support-bot"}.'
            )
        if len(agent_name) > MAX_AGENT_NAME:
            raise BadInput(f'"agentName" is {len(agent_name)} characters; the limit is {MAX_AGENT_NAME}.')
        context = check_session_context(body)
        return _reply(self.store.start_session(workspace, agent_name, self._idempotency(request, raw), context))

    async def end_session(self, request: Request) -> Response:
        workspace = self._workspace(request)
        body, raw = await self._json_object(request)
        status = body.get("status")
        if status not in ("success", "error"):
            raise BadInput(f'"status" must be "success" or "error", got {status!r}.')
        message = body.get("errorMessage")
        if message is not None and not isinstance(message, str):
            raise BadInput(f'"errorMessage" must be a string or null, got {type(message).__name__}.')
        if message is not None and len(message) > MAX_ERROR_MESSAGE:
            message = message[:MAX_ERROR_MESSAGE] + f"...[truncated {len(message) - MAX_ERROR_MESSAGE} chars]"
        session_id = request.path_params["session_id"]
        return _reply(self.store.end_session(workspace, session_id, status, message, self._idempotency(request, raw)))

    async def log_events(self, request: Request) -> Response:
        workspace = self._workspace(request)
        body, raw = await self._json_object(request)
        session_id = body.get("sessionId")
        if not isinstance(session_id, str) or not session_id:
            raise BadInput('"sessionId" is required: the id that POST /v1/sessions returned.')
        events = body.get("events")
        if not isinstance(events, list) or not events:
            raise BadInput('"events" must be a non-empty list of event objects.')
        if len(events) > MAX_EVENTS_PER_REQUEST:
            raise TooLarge(f"{len(events)} events in one request; the limit is {MAX_EVENTS_PER_REQUEST}.")
        checked: list[PricedEvent] = []
        rejections: list[tuple[int, Rejection]] = []
        for position, event in enumerate(events):
            try:
                checked.append(check_event(position, event))
            except Rejection as rejection:
                rejections.append((position, rejection))
        if rejections:
            raise EventsRejected(rejections)
        priced = [self._price(event) for event in checked]
        return _reply(self.store.append_events(workspace, session_id, priced, self._idempotency(request, raw)))

    def _price(self, checked: PricedEvent) -> PricedEvent:
        """An llm_call priced from its provider, model and tokens; other events cost nothing."""
        event = checked.payload
        if checked.type != "llm_call":
            return checked
        if event.get("usageMissing"):
            checked.priced, checked.pricing_note = False, "usage missing: the call was not priced"
            return checked
        price = self.prices.price(event["provider"], event["model"], checked.tokens_in, checked.tokens_out)
        checked.cost_usd, checked.priced, checked.pricing_note = price.cost_usd, price.priced, price.note
        return checked

    # -- reads and budgets -----------------------------------------------------------

    async def list_sessions(self, request: Request) -> Response:
        workspace = self._workspace(request)
        params = request.query_params
        try:
            limit = int(params.get("limit", "50"))
            cursor = int(params["cursor"]) if params.get("cursor") else None
        except ValueError:
            raise BadInput("limit and cursor must be integers.") from None
        if not 1 <= limit <= 500:
            raise BadInput("limit must be between 1 and 500.")
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
        return JSONResponse(self.store.list_sessions(query))

    async def get_session(self, request: Request) -> Response:
        workspace = self._workspace(request)
        return JSONResponse(self.store.get_session(request.path_params["session_id"], workspace))

    async def budgets(self, request: Request) -> Response:
        workspace = self._workspace(request)
        return JSONResponse({"budgets": self.store.budgets(workspace)})

    async def set_budget(self, request: Request) -> Response:
        workspace = self._workspace(request)
        body, _ = await self._json_object(request)
        limit = body.get("dailyLimitUsd")
        if limit is not None and (not is_number(limit) or not math.isfinite(limit) or limit < 0):
            raise BadInput('"dailyLimitUsd" must be a non-negative number of US dollars, or null to remove the budget.')
        agent = request.path_params["agent_name"]
        return JSONResponse(self.store.set_budget(workspace, agent, None if limit is None else float(limit)))

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def openapi(self, request: Request) -> Response:
        from .openapi import OPENAPI

        return JSONResponse(OPENAPI)


class _Unauthorized(StoreError):
    status = 401


async def _store_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StoreError)
    if isinstance(exc, BudgetExceeded):
        return _error(429, exc.message, details=exc.details)
    if isinstance(exc, EventsRejected):
        return _error(exc.status, exc.message, rejected=exc.rejected)
    return _error(exc.status, exc.message)


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error(404, f"No route {request.method} {request.url.path}. See GET /openapi.json for the API.")


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    return _error(405, f"{request.method} is not allowed on {request.url.path}. See GET /openapi.json.")


def create_app(store: LedgerStore, prices: Optional[PriceBook] = None) -> Starlette:
    """The ASGI application of a local ledger over ``store``."""
    api = LedgerAPI(store, prices or PriceBook())
    routes = [
        Route("/health", api.health, methods=["GET"]),
        Route("/openapi.json", api.openapi, methods=["GET"]),
        Route("/v1/sessions", api.start_session, methods=["POST"]),
        Route("/v1/sessions", api.list_sessions, methods=["GET"]),
        Route("/v1/sessions/{session_id}", api.get_session, methods=["GET"]),
        Route("/v1/sessions/{session_id}/end", api.end_session, methods=["POST"]),
        Route("/v1/events", api.log_events, methods=["POST"]),
        Route("/v1/budgets", api.budgets, methods=["GET"]),
        Route("/v1/budgets/{agent_name}", api.set_budget, methods=["PUT"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={StoreError: _store_error, 404: _not_found, 405: _method_not_allowed},
    )
    app.state.store = store
    app.state.api = api
    return app
