"""The local ledger's HTTP API: the hosted Agent Ledger API, plus reservations and a read API, on Starlette.

Write endpoints (the published protocol)::

    POST /v1/sessions               {"agentName": str, ...context}      -> 201 {"id", "budgeted", ...}
    POST /v1/sessions/{id}/end      {"status", "errorMessage"}          -> 200
    POST /v1/events                 {"sessionId", "events": [...]}      -> 202 {"accepted", "costUsd"}

A session may carry ``userId``, ``tags``, ``metadata``, ``parentSessionId``
and a cost cap ``maxCostUsd``. A batch of events is all or nothing: when some
events are bad, the answer is a 400 (413 when one is over 64 KB) whose
``rejected`` lists every bad event by index, so that a client can drop those
and resend the rest. A batch whose unreserved LLM call went over a budget is
stored whole and answered with the published guardrail 429.

Reserve, then settle::

    POST   /v1/reservations         {"sessionId", "provider", "model", "estimate" | "maxCostUsd"}
                                    -> 200 {"budgeted": false} | 201 {"id", "reservedUsd", ...} | 429 | 422
    DELETE /v1/reservations/{id}    -> 204

Read, budget, price and settings endpoints: ``GET /v1/sessions``,
``GET /v1/sessions/{id}``, ``GET /v1/budgets``, ``PUT /v1/budgets/{agentName}``,
``PUT /v1/workspace-budget``, ``GET|PUT /v1/settings``, ``GET /v1/prices``,
``PUT|DELETE /v1/prices/{model}``; ``GET /openapi.json`` describes them all.
Every ``/v1`` request needs ``x-api-key``. Amounts are exact: JSON numbers
with exactly the digits of the ledger's decimal amounts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Optional

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import money
from .body import read_json_object
from .pricing import PriceBook, Rates, TokenUsage, normalise_name, rates_from
from .records import (
    UNSET,
    BudgetExceeded,
    Idempotency,
    LedgerStore,
    PricedEvent,
    Reply,
    ReservationRequest,
    SessionQuery,
    StoreError,
)
from .validation import (
    MAX_SAFE_INTEGER,
    MAX_TOKENS,
    BadInput,
    EventsRejected,
    Rejection,
    TooLarge,
    check_event,
    check_session_context,
    shown,
    usage_of,
    usd_amount,
    warn_percent,
)

MAX_EVENTS_PER_REQUEST = 10_000
MAX_AGENT_NAME = 200
MAX_ERROR_MESSAGE = 10_000
KEY_HINT = "Create a key with `agent-ledger keys create --name NAME` and send it in the x-api-key header."

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
    if reply.status == 204:
        return Response(status_code=204, headers=headers)
    if reply.raw is not None:  # a replay: the very bytes first sent
        return Response(reply.raw.encode("utf-8"), reply.status, headers, media_type="application/json")
    return ExactJSONResponse(reply.body, status_code=reply.status, headers=headers)


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
        return await read_json_object(request)

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
        if any(event.type == "llm_call" for event in checked):
            custom = self.store.prices(workspace)
            for event in checked:
                if event.type == "llm_call":
                    self._price(event, custom)
        return _reply(self.store.append_events(workspace, session_id, checked, self._idempotency(request, raw)))

    def _price(self, checked: PricedEvent, custom: Mapping[str, Rates]) -> None:
        """Price an llm_call from its provider, model and full usage (an estimate when its usage is missing)."""
        if checked.usage_missing:
            price = self.prices.estimate(checked.provider, checked.model, checked.tokens_in, checked.tokens_out, custom)
        else:
            price = self.prices.price(checked.provider, checked.model, usage_of(checked), custom)
        checked.cost_usd, checked.cost_status, checked.pricing_note = price.cost_usd, price.status, price.note

    # -- reserve, then settle ----------------------------------------------------------

    async def reserve(self, request: Request) -> Response:
        workspace = self._workspace(request)
        body, raw = await self._json_object(request)
        session_id = body.get("sessionId")
        if not isinstance(session_id, str) or not session_id:
            raise BadInput('"sessionId" is required: the id that POST /v1/sessions returned.')
        names = {}
        for name in ("provider", "model"):
            value = body.get(name)
            if not isinstance(value, str) or not value.strip():
                raise BadInput(f'"{name}" is required: a non-empty string, as the llm_call event will carry it.')
            names[name] = value
        step = body.get("stepIndex")
        if step is not None and (
            isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_SAFE_INTEGER
        ):
            raise BadInput(f'"stepIndex" must be a non-negative integer; got {shown(step)}.')
        max_cost = usd_amount(body, "maxCostUsd", "the most this call may cost", nullable=False)
        estimate = body.get("estimate")
        if (estimate is None) == (max_cost is None):
            raise BadInput(
                'Send either "estimate": {"tokensIn": int, "tokensOut": int} (the most the call may use) or '
                '"maxCostUsd": number (the most it may cost), not both and not neither.'
            )
        custom = self.store.prices(workspace)
        provider, model = names["provider"], names["model"]
        if estimate is not None:
            usage = _estimate(estimate)
            price = self.prices.price(provider, model, usage, custom)
        else:
            price = self.prices.price(provider, model, TokenUsage(0, 0), custom)
        reservation = ReservationRequest(
            session_id=session_id,
            provider=provider,
            model=model,
            amount=(max_cost if max_cost is not None else price.cost_usd) if price.priced else None,
            max_cost_usd=max_cost,
            step_index=step,
            note=price.note,
        )
        return _reply(self.store.reserve(workspace, reservation, self._idempotency(request, raw)))

    async def release(self, request: Request) -> Response:
        workspace = self._workspace(request)
        raw = await request.body()
        reservation_id = request.path_params["reservation_id"]
        return _reply(self.store.release(workspace, reservation_id, self._idempotency(request, raw)))

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
        return _json(self.store.list_sessions(query))

    async def get_session(self, request: Request) -> Response:
        workspace = self._workspace(request)
        return _json(self.store.get_session(request.path_params["session_id"], workspace))

    async def budgets(self, request: Request) -> Response:
        workspace = self._workspace(request)
        (workspace_budget,) = self.store.workspace_budgets(workspace)
        return _json(
            {
                "budgets": self.store.budgets(workspace),
                "workspaceBudget": workspace_budget,
                "settings": self.store.settings(workspace),
            }
        )

    async def set_budget(self, request: Request) -> Response:
        workspace = self._workspace(request)
        body, _ = await self._json_object(request)
        _only(body, ("dailyLimitUsd", "monthlyLimitUsd", "warnAtPercent"))
        changes = {
            "daily_limit_usd": _limit(body, "dailyLimitUsd", "the agent's limit per UTC day"),
            "monthly_limit_usd": _limit(body, "monthlyLimitUsd", "the agent's limit per UTC month"),
            "warn_at_percent": warn_percent(body, nullable=True) if "warnAtPercent" in body else UNSET,
        }
        agent = request.path_params["agent_name"]
        return _json(self.store.set_budget(workspace, agent, **changes))

    async def set_workspace_budget(self, request: Request) -> Response:
        workspace = self._workspace(request)
        body, _ = await self._json_object(request)
        _only(body, ("dailyLimitUsd", "warnAtPercent"))
        return _json(
            self.store.set_workspace_budget(
                workspace,
                _limit(body, "dailyLimitUsd", "the workspace's limit per UTC day, all agents together"),
                warn_at_percent=warn_percent(body, nullable=True) if "warnAtPercent" in body else UNSET,
            )
        )

    async def settings(self, request: Request) -> Response:
        return _json(self.store.settings(self._workspace(request)))

    async def set_settings(self, request: Request) -> Response:
        workspace = self._workspace(request)
        body, _ = await self._json_object(request)
        _only(body, ("allowUnpricedModels",))
        allow = body.get("allowUnpricedModels")
        if "allowUnpricedModels" in body and not isinstance(allow, bool):
            raise BadInput(f'"allowUnpricedModels" must be true or false; got {shown(allow)}.')
        return _json(self.store.set_settings(workspace, allow_unpriced_models=allow))

    # -- prices -------------------------------------------------------------------------------

    async def list_prices(self, request: Request) -> Response:
        workspace = self._workspace(request)
        return _json(
            {"prices": [{"model": name, **rates.as_json()} for name, rates in self.store.prices(workspace).items()]}
        )

    async def set_price(self, request: Request) -> Response:
        workspace = self._workspace(request)
        body, _ = await self._json_object(request)
        _only(body, _PRICE_FIELDS)
        name = normalise_name(request.path_params["model"])
        try:
            rates = rates_from(body, _PRICE_FIELDS, f"the price of {name!r}")
        except ValueError as exc:
            raise BadInput(
                f'{exc}: send {{"inputPerMtok": 3, "outputPerMtok": 12}} and optionally cacheReadPerMtok and '
                "cacheWritePerMtok (USD per million tokens)."
            ) from None
        self.store.set_price(workspace, name, rates)
        return _json({"model": name, **rates.as_json()})

    async def remove_price(self, request: Request) -> Response:
        workspace = self._workspace(request)
        name = normalise_name(request.path_params["model"])
        if not self.store.remove_price(workspace, name):
            raise _NotFound(f"No price for {name!r} in this workspace; GET /v1/prices lists them.")
        return Response(status_code=204)

    async def health(self, request: Request) -> Response:
        return _json({"status": "ok"})

    async def openapi(self, request: Request) -> Response:
        from .openapi import OPENAPI

        return _json(OPENAPI)


_PRICE_FIELDS = ("inputPerMtok", "outputPerMtok", "cacheReadPerMtok", "cacheWritePerMtok")


def _only(body: Mapping[str, Any], names: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(names))
    if unknown:
        raise BadInput(f"Unknown field(s) {', '.join(map(repr, unknown))}; this endpoint takes {', '.join(names)}.")


def _limit(body: Mapping[str, Any], name: str, what: str) -> Any:
    """A limit to set (a Decimal), to remove (None, sent as null) or to leave as it is (UNSET, not sent)."""
    if name not in body:
        return UNSET
    return usd_amount(dict(body), name, what, nullable=True)


def _estimate(estimate: Any) -> TokenUsage:
    if not isinstance(estimate, dict):
        raise BadInput('"estimate" must be an object: {"tokensIn": int, "tokensOut": int}.')
    counts = []
    for name in ("tokensIn", "tokensOut"):
        value = estimate.get(name)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS:
            raise BadInput(
                f'"estimate.{name}" must be a non-negative integer of at most {MAX_TOKENS}; got {shown(value)}.'
            )
        counts.append(value)
    return TokenUsage(counts[0], counts[1])


class _Unauthorized(StoreError):
    status = 401


class _NotFound(StoreError):
    status = 404


async def _store_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StoreError)
    if isinstance(exc, BudgetExceeded):
        return _json(exc.body, 429)
    if isinstance(exc, EventsRejected):
        return _error(exc.status, exc.message, rejected=exc.rejected)
    return _error(exc.status, exc.message, **exc.extra)


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
        Route("/v1/reservations", api.reserve, methods=["POST"]),
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
    app = Starlette(
        routes=routes,
        exception_handlers={StoreError: _store_error, 404: _not_found, 405: _method_not_allowed},
    )
    app.state.store = store
    app.state.api = api
    return app
