"""The OpenAPI 3.1 description the local ledger serves at ``GET /openapi.json``."""

from __future__ import annotations

from typing import Any

from .._constants import MAX_EVENT_BYTES
from .._version import __version__
from .budgets import KINDS
from .pricing import COST_STATUSES, ESTIMATE_TOKENS_IN, ESTIMATE_TOKENS_OUT
from .records import BUDGET_CACHE_SECONDS, RESERVATION_TTL_SECONDS
from .validation import (
    MAX_METADATA_BYTES,
    MAX_PARENT_SESSION_ID,
    MAX_RESERVATION_ID,
    MAX_SAFE_INTEGER,
    MAX_SPAN_ID,
    MAX_TAG,
    MAX_TAGS,
    MAX_TOKENS,
    MAX_USER_ID,
    TIMESTAMP_EXAMPLE,
)

_ERROR = {"$ref": "#/components/schemas/Error"}
_REJECTED = {"$ref": "#/components/schemas/EventsRejected"}
_GUARDRAIL = {"$ref": "#/components/schemas/Guardrail"}
_UNPRICED = {"$ref": "#/components/schemas/UnpricedModel"}
_BUDGET = {"$ref": "#/components/schemas/Budget"}
_WORKSPACE_BUDGET = {"$ref": "#/components/schemas/WorkspaceBudget"}
_SETTINGS = {"$ref": "#/components/schemas/Settings"}
_PRICE = {"$ref": "#/components/schemas/Price"}
# Amounts are exact: numbers with exactly the digits of the ledger's decimal amount.
_USD = {"type": "number", "minimum": 0, "description": "US dollars, exact"}
_OPTIONAL_USD = {"type": ["number", "null"], "minimum": 0, "description": "US dollars, exact; null: none"}
_PERCENT = {
    "type": ["number", "null"],
    "exclusiveMinimum": 0,
    "maximum": 100,
    "description": "Record a budget_warning event (and log a warning) when the spend crosses this share of a limit",
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    texts = {
        400: "Malformed JSON, a missing, unknown or wrongly typed field",
        401: "Missing, invalid or revoked x-api-key",
        404: "No such session (or reservation, or price) in this key's workspace",
        409: "The session has already ended",
        413: "A body over 16 MB or more than 10,000 events",
        422: "Idempotency-Key reused for a different request",
    }
    if 422 in statuses:
        return {
            **{str(s): _json(_ERROR, texts[s]) for s in statuses if s != 422},
            "422": _json(
                {"oneOf": [_UNPRICED, _ERROR]},
                "A model with no price for an agent with a budget (code unpriced_model), or an Idempotency-Key "
                "reused for a different request",
            ),
        }
    return {str(s): _json(_ERROR, texts[s]) for s in statuses}


_TOKENS = {"type": "integer", "minimum": 0, "maximum": MAX_TOKENS}
_SESSION_CONTEXT = {
    "maxCostUsd": {
        **_OPTIONAL_USD,
        "description": "A cap on what this session may spend in all (the session budget); calls past it are "
        "refused like any budget's",
    },
    "warnAtPercent": _PERCENT,
    "userId": {"type": ["string", "null"], "minLength": 1, "maxLength": MAX_USER_ID},
    "tags": {
        "type": "array",
        "maxItems": MAX_TAGS,
        "items": {"type": "string", "minLength": 1, "maxLength": MAX_TAG},
        "description": "Repeated tags are kept once",
    },
    "metadata": {
        "type": "object",
        "additionalProperties": True,
        "description": f"Any JSON object of at most {MAX_METADATA_BYTES} bytes as compact JSON",
    },
    "parentSessionId": {
        "type": ["string", "null"],
        "minLength": 1,
        "maxLength": MAX_PARENT_SESSION_ID,
        "description": "The session that started this one; stored as given",
    },
}

_IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "A request repeated with the same key is applied once and answered as the first time.",
    "schema": {"type": "string", "maxLength": 255},
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Agent Ledger (local)",
        "version": __version__,
        "description": "The hosted Agent Ledger API, served from an embedded SQLite database.",
    },
    "components": {
        "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}},
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string", "description": "What was wrong and how to fix it"}},
            },
            "EventsRejected": {
                "type": "object",
                "required": ["error", "rejected"],
                "description": "Some events of the batch were bad; none of the batch was stored. Drop the listed "
                "events and resend the rest.",
                "properties": {
                    "error": {"type": "string", "description": "The message of the first bad event"},
                    "rejected": {
                        "type": "array",
                        "description": "Every bad event, in index order, with its first problem",
                        "items": {
                            "type": "object",
                            "required": ["index", "field", "error"],
                            "properties": {
                                "index": {"type": "integer", "description": "Its position in events"},
                                "field": {
                                    "type": ["string", "null"],
                                    "description": "The offending key of the event; null for the event as a whole",
                                },
                                "error": {"type": "string", "description": "What was wrong and how to fix it"},
                            },
                        },
                    },
                },
            },
            "Guardrail": {
                "type": "object",
                "required": ["error", "details", "budget", "resetsAt"],
                "description": "HTTP 429: a budget would be exceeded. The published client reads error and details. "
                "For a budget other than the agent's daily one, the published fields carry that budget's numbers "
                "(dailyLimitUsd is its limit). spentTodayUsd counts what calls in flight reserve (also given alone "
                "as reservedUsd), so that projectedCostUsd = spentTodayUsd + attemptedCostUsd and "
                "remainingBudgetUsd = max(dailyLimitUsd - spentTodayUsd, 0).",
                "properties": {
                    "error": {"type": "string"},
                    "details": {
                        "type": "object",
                        "properties": {
                            "agentName": {"type": "string"},
                            "dailyLimitUsd": _USD,
                            "spentTodayUsd": _USD,
                            "attemptedCostUsd": _USD,
                            "projectedCostUsd": _USD,
                            "remainingBudgetUsd": _USD,
                            "reservedUsd": _USD,
                            "budget": {"enum": list(KINDS)},
                            "resetsAt": {"type": ["string", "null"], "format": "date-time"},
                        },
                    },
                    "budget": {"enum": list(KINDS), "description": "Which budget refused"},
                    "resetsAt": {
                        "type": ["string", "null"],
                        "format": "date-time",
                        "description": "When the budget's window starts again (UTC); null for a session cap",
                    },
                    "accepted": {
                        "type": "integer",
                        "description": "POST /v1/events: the batch was stored whole all the same (its calls ran)",
                    },
                    "costUsd": {**_USD, "description": "POST /v1/events: what the batch cost, counted"},
                    "overBudgetEvents": {
                        "type": "array",
                        "items": {"type": "integer"},
                        "description": "POST /v1/events: the indexes of the events stored with overBudget: true",
                    },
                },
            },
            "UnpricedModel": {
                "type": "object",
                "required": ["error", "code", "provider", "model"],
                "description": "HTTP 422: the agent has a budget and the ledger has no price for the model. Add one "
                "(PUT /v1/prices/{model}) or allow unpriced models (PUT /v1/settings).",
                "properties": {
                    "error": {"type": "string", "description": "Names the model and how to price it"},
                    "code": {"const": "unpriced_model"},
                    "provider": {"type": "string"},
                    "model": {"type": "string"},
                    "rejected": {
                        "type": "array",
                        "description": "POST /v1/events: each unpriced call, by index; none of the batch was stored",
                        "items": {
                            "type": "object",
                            "properties": {
                                "index": {"type": "integer"},
                                "field": {"const": "model"},
                                "error": {"type": "string"},
                            },
                        },
                    },
                },
            },
            "Event": {
                "type": "object",
                "required": ["type"],
                "additionalProperties": True,
                "description": f"At most {MAX_EVENT_BYTES} bytes as JSON. Numbers must be finite (no NaN or "
                "Infinity); counts given as integral floats (12.0) are stored as integers.",
                "properties": {
                    "type": {"type": "string", "examples": ["llm_call", "tool_call", "tool_result"]},
                    "stepIndex": {"type": "integer", "minimum": 0, "maximum": MAX_SAFE_INTEGER},
                    "provider": {"type": "string", "description": "llm_call: required"},
                    "model": {"type": "string", "description": "llm_call: required"},
                    "tokensOut": {**_TOKENS, "description": "llm_call: required"},
                    "tokensIn": {
                        **_TOKENS,
                        "description": "llm_call: required. Every input token, cached ones included (OpenAI's "
                        "prompt_tokens; Anthropic's input_tokens + cache_read_input_tokens + "
                        "cache_creation_input_tokens)",
                    },
                    "cacheReadTokens": {
                        **_TOKENS,
                        "description": "llm_call: optional; how many of tokensIn were read from the prompt cache",
                    },
                    "cacheWriteTokens": {
                        **_TOKENS,
                        "description": "llm_call: optional; how many of tokensIn were written to the prompt cache",
                    },
                    "reasoningTokens": {
                        **_TOKENS,
                        "description": "llm_call: optional; how many of tokensOut were reasoning (not priced apart)",
                    },
                    "reservationId": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": MAX_RESERVATION_ID,
                        "description": "llm_call: the reservation this call settles (POST /v1/reservations). An "
                        "unknown, expired, released or already settled one: the call is unreserved",
                    },
                    "usageMissing": {
                        "type": "boolean",
                        "description": "llm_call: the provider reported no usage; the call is charged what it "
                        f"reserved, else an estimate of {ESTIMATE_TOKENS_IN} tokens in and {ESTIMATE_TOKENS_OUT} out "
                        "(or tokensIn / tokensOut when larger)",
                    },
                    "latencyMs": {"type": "number", "minimum": 0},
                    "startedAt": {
                        "type": "string",
                        "format": "date-time",
                        "description": f"RFC 3339 in UTC (Z or +00:00), e.g. {TIMESTAMP_EXAMPLE}",
                    },
                    "spanId": {"type": "string", "minLength": 1, "maxLength": MAX_SPAN_ID},
                    "parentSpanId": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": MAX_SPAN_ID,
                        "description": "The spanId of the enclosing span",
                    },
                },
            },
            "SessionSummary": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "agentName": {"type": "string"},
                    "status": {"enum": ["running", "success", "error"]},
                    "errorMessage": {"type": ["string", "null"]},
                    "startedAt": {"type": "string", "format": "date-time"},
                    "endedAt": {"type": ["string", "null"], "format": "date-time"},
                    "costUsd": _USD,
                    "tokensIn": {"type": "integer"},
                    "tokensOut": {"type": "integer"},
                    "eventCount": {"type": "integer"},
                    "unpricedEvents": {"type": "integer"},
                    "estimatedEvents": {"type": "integer"},
                    "overBudgetEvents": {"type": "integer"},
                    "maxCostUsd": _OPTIONAL_USD,
                    "userId": {"type": ["string", "null"]},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "metadata": {"type": "object", "additionalProperties": True},
                    "parentSessionId": {"type": ["string", "null"]},
                },
            },
            "Session": {
                "allOf": [
                    {"$ref": "#/components/schemas/SessionSummary"},
                    {
                        "type": "object",
                        "properties": {
                            "childSessionIds": {
                                "type": "array",
                                "items": {"type": "string"},
                                "description": "Sessions of this workspace whose parentSessionId is this session",
                            },
                            "events": {
                                "type": "array",
                                "description": "In stepIndex order (events without one last), then in arrival order",
                                "items": {
                                    "allOf": [
                                        {"$ref": "#/components/schemas/Event"},
                                        {
                                            "type": "object",
                                            "properties": {
                                                "costUsd": _USD,
                                                "costStatus": {
                                                    "enum": [*COST_STATUSES, None],
                                                    "description": "llm_call: priced, unpriced (no price: never "
                                                    "shown as $0) or estimated (usage missing); null for events "
                                                    "that cost nothing",
                                                },
                                                "overBudget": {
                                                    "type": "boolean",
                                                    "description": "The call ran past a budget; it is counted",
                                                },
                                                "priced": {"type": "boolean", "description": "costStatus != unpriced"},
                                                "pricingNote": {"type": ["string", "null"]},
                                                "receivedAt": {"type": "string", "format": "date-time"},
                                            },
                                        },
                                    ]
                                },
                            },
                        },
                    },
                ]
            },
            "Budget": {
                "type": "object",
                "description": "An agent's limits, and what its windows spent and hold in flight",
                "properties": {
                    "workspace": {"type": "string"},
                    "agentName": {"type": "string"},
                    "dailyLimitUsd": _OPTIONAL_USD,
                    "spentTodayUsd": _USD,
                    "remainingBudgetUsd": {**_OPTIONAL_USD, "description": "limit - spent - reserved, at least 0"},
                    "resetsAt": {"type": "string", "format": "date-time"},
                    "monthlyLimitUsd": _OPTIONAL_USD,
                    "spentThisMonthUsd": _USD,
                    "remainingMonthlyUsd": _OPTIONAL_USD,
                    "monthResetsAt": {"type": "string", "format": "date-time"},
                    "reservedUsd": {**_USD, "description": "Held by the agent's reservations in flight"},
                    "warnAtPercent": _PERCENT,
                },
            },
            "WorkspaceBudget": {
                "type": "object",
                "properties": {
                    "workspace": {"type": "string"},
                    "dailyLimitUsd": _OPTIONAL_USD,
                    "spentTodayUsd": _USD,
                    "reservedUsd": _USD,
                    "remainingBudgetUsd": _OPTIONAL_USD,
                    "warnAtPercent": _PERCENT,
                    "resetsAt": {"type": "string", "format": "date-time"},
                },
            },
            "Settings": {
                "type": "object",
                "properties": {
                    "workspace": {"type": "string"},
                    "allowUnpricedModels": {
                        "type": "boolean",
                        "description": "Let agents with a budget make calls the ledger cannot price (counted as $0, "
                        "flagged unpriced); false by default",
                    },
                },
            },
            "Price": {
                "type": "object",
                "required": ["inputPerMtok", "outputPerMtok"],
                "description": "USD per million tokens. Without a cache price, those tokens cost the input price.",
                "properties": {
                    "model": {"type": "string", "description": "provider/model or model, trimmed and lower case"},
                    "inputPerMtok": {"type": "number", "minimum": 0},
                    "outputPerMtok": {"type": "number", "minimum": 0},
                    "cacheReadPerMtok": {"type": ["number", "null"], "minimum": 0},
                    "cacheWritePerMtok": {"type": ["number", "null"], "minimum": 0},
                },
            },
        },
    },
    "security": [{"apiKey": []}],
    "paths": {
        "/v1/sessions": {
            "post": {
                "summary": "Start a session",
                "parameters": [_IDEMPOTENCY],
                "requestBody": _json(
                    {
                        "type": "object",
                        "required": ["agentName"],
                        "properties": {"agentName": {"type": "string", "maxLength": 200}, **_SESSION_CONTEXT},
                    },
                    "The agent, and optionally who and what the session is for",
                ),
                "responses": {
                    "201": _json(
                        {
                            "allOf": [
                                {"$ref": "#/components/schemas/SessionSummary"},
                                {
                                    "type": "object",
                                    "properties": {
                                        "budgeted": {
                                            "type": "boolean",
                                            "description": "Whether a budget applies to this session's calls now "
                                            "(the agent's, the workspace's or its own cap): if not, a client need "
                                            "not reserve",
                                        }
                                    },
                                },
                            ]
                        },
                        "The new session, with its id",
                    ),
                    **_errors(400, 401, 422),
                },
            },
            "get": {
                "summary": "List sessions, newest first",
                "parameters": [
                    {"name": "agent", "in": "query", "schema": {"type": "string"}},
                    {"name": "user", "in": "query", "description": "only this userId", "schema": {"type": "string"}},
                    {
                        "name": "tag",
                        "in": "query",
                        "description": "only sessions carrying this tag; repeat for sessions carrying every one",
                        "schema": {"type": "array", "items": {"type": "string"}},
                        "style": "form",
                        "explode": True,
                    },
                    {"name": "status", "in": "query", "schema": {"enum": ["running", "success", "error"]}},
                    {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                    {"name": "until", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "sessions": {"type": "array", "items": {"$ref": "#/components/schemas/SessionSummary"}},
                                "nextCursor": {"type": ["string", "null"]},
                            },
                        },
                        "A page of sessions",
                    ),
                    **_errors(400, 401),
                },
            },
        },
        "/v1/sessions/{sessionId}": {
            "get": {
                "summary": "A session with its totals, its child sessions and its events in stepIndex order, each "
                "with its cost",
                "parameters": [{"name": "sessionId", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Session"}, "The session"),
                    **_errors(401, 404),
                },
            }
        },
        "/v1/sessions/{sessionId}/end": {
            "post": {
                "summary": "End a session",
                "parameters": [
                    {"name": "sessionId", "in": "path", "required": True, "schema": {"type": "string"}},
                    _IDEMPOTENCY,
                ],
                "requestBody": _json(
                    {
                        "type": "object",
                        "required": ["status"],
                        "properties": {
                            "status": {"enum": ["success", "error"]},
                            "errorMessage": {"type": ["string", "null"]},
                        },
                    },
                    "How the session ended",
                ),
                "responses": {"200": _json({"type": "object"}, "Ended"), **_errors(400, 401, 404, 409, 422)},
            }
        },
        "/v1/events": {
            "post": {
                "summary": "Append events to a running session (all or nothing); llm_call events are priced",
                "parameters": [_IDEMPOTENCY],
                "requestBody": _json(
                    {
                        "type": "object",
                        "required": ["sessionId", "events"],
                        "properties": {
                            "sessionId": {"type": "string"},
                            "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                        },
                    },
                    "The events",
                ),
                "responses": {
                    "202": _json(
                        {
                            "type": "object",
                            "properties": {"accepted": {"type": "integer"}, "costUsd": {"type": "number"}},
                        },
                        "Recorded",
                    ),
                    "429": _json(
                        _GUARDRAIL,
                        "An unreserved LLM call went over a budget: the batch is stored all the same (the call ran), "
                        "the calls over it with overBudget: true, and the body is the guardrail of the first one",
                    ),
                    **_errors(401, 404, 409, 422),
                    "400": _json(
                        {"oneOf": [_REJECTED, _ERROR]},
                        "Bad events (the body lists each in rejected), or a malformed request",
                    ),
                    "413": _json(
                        {"oneOf": [_REJECTED, _ERROR]},
                        f"An event over {MAX_EVENT_BYTES} bytes (listed in rejected with the other bad events), "
                        "a body over 16 MB, or more than 10,000 events",
                    ),
                },
            }
        },
        "/v1/reservations": {
            "post": {
                "summary": "Reserve the most an LLM call may cost, before it runs",
                "description": "Granted atomically when spent + reserved in flight + this fits every budget that "
                f"applies; released by the ledger after {RESERVATION_TTL_SECONDS} seconds unless the llm_call "
                "event settles it (reservationId) or DELETE releases it.",
                "parameters": [_IDEMPOTENCY],
                "requestBody": _json(
                    {
                        "type": "object",
                        "required": ["sessionId", "provider", "model"],
                        "properties": {
                            "sessionId": {"type": "string"},
                            "provider": {"type": "string"},
                            "model": {"type": "string"},
                            "estimate": {
                                "type": "object",
                                "required": ["tokensIn", "tokensOut"],
                                "properties": {"tokensIn": _TOKENS, "tokensOut": _TOKENS},
                                "description": "The most the call may use: priced like the call",
                            },
                            "maxCostUsd": {**_USD, "description": "Instead of estimate: the most the call may cost"},
                            "stepIndex": {"type": "integer", "minimum": 0},
                        },
                        "oneOf": [{"required": ["estimate"]}, {"required": ["maxCostUsd"]}],
                    },
                    "The call to reserve for",
                ),
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "budgeted": {"const": False},
                                "ttlSeconds": {"const": BUDGET_CACHE_SECONDS},
                            },
                        },
                        "No budget applies: nothing is reserved (remember that for ttlSeconds)",
                    ),
                    "201": _json(
                        {
                            "type": "object",
                            "properties": {
                                "budgeted": {"const": True},
                                "id": {"type": "string", "description": "res_..., for reservationId"},
                                "reservedUsd": _USD,
                                "expiresAt": {"type": "string", "format": "date-time"},
                                "ttlSeconds": {"const": BUDGET_CACHE_SECONDS},
                            },
                        },
                        "Granted",
                    ),
                    "429": _json(_GUARDRAIL, "It does not fit a budget: the call must not run"),
                    **_errors(400, 401, 404, 409, 422),
                },
            }
        },
        "/v1/reservations/{reservationId}": {
            "delete": {
                "summary": "Release a reservation (the call did not run)",
                "parameters": [
                    {"name": "reservationId", "in": "path", "required": True, "schema": {"type": "string"}},
                    _IDEMPOTENCY,
                ],
                "responses": {
                    "204": {"description": "Released; also when already settled, released or expired"},
                    **_errors(401, 404),
                },
            }
        },
        "/v1/budgets": {
            "get": {
                "summary": "Every budget of the workspace: spent, reserved in flight and remaining, with the settings",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "budgets": {"type": "array", "items": _BUDGET},
                                "workspaceBudget": _WORKSPACE_BUDGET,
                                "settings": _SETTINGS,
                            },
                        },
                        "Budgets",
                    ),
                    **_errors(401),
                },
            }
        },
        "/v1/budgets/{agentName}": {
            "put": {
                "summary": "Set an agent's daily (UTC day) and monthly (UTC month) limits in USD",
                "description": "A field left out is left as it is; null removes a limit.",
                "parameters": [{"name": "agentName", "in": "path", "required": True, "schema": {"type": "string"}}],
                "requestBody": _json(
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "dailyLimitUsd": _OPTIONAL_USD,
                            "monthlyLimitUsd": _OPTIONAL_USD,
                            "warnAtPercent": _PERCENT,
                        },
                    },
                    "The limits",
                ),
                "responses": {"200": _json(_BUDGET, "The budget"), **_errors(400, 401)},
            }
        },
        "/v1/workspace-budget": {
            "put": {
                "summary": "Set the workspace's daily limit in USD, all agents together",
                "description": "A field left out is left as it is; null removes the limit.",
                "requestBody": _json(
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"dailyLimitUsd": _OPTIONAL_USD, "warnAtPercent": _PERCENT},
                    },
                    "The limit",
                ),
                "responses": {"200": _json(_WORKSPACE_BUDGET, "The workspace budget"), **_errors(400, 401)},
            }
        },
        "/v1/settings": {
            "get": {"summary": "The workspace's settings", "responses": {"200": _json(_SETTINGS, "Settings")}},
            "put": {
                "summary": "Change the workspace's settings",
                "requestBody": _json(
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"allowUnpricedModels": {"type": "boolean"}},
                    },
                    "The settings to change",
                ),
                "responses": {"200": _json(_SETTINGS, "Settings"), **_errors(400, 401)},
            },
        },
        "/v1/prices": {
            "get": {
                "summary": "The prices added to this workspace (they come before the overrides file and genai-prices)",
                "responses": {
                    "200": _json(
                        {"type": "object", "properties": {"prices": {"type": "array", "items": _PRICE}}}, "Prices"
                    ),
                    **_errors(401),
                },
            }
        },
        "/v1/prices/{model}": {
            "put": {
                "summary": "Price a model in this workspace, in USD per million tokens",
                "parameters": [
                    {
                        "name": "model",
                        "in": "path",
                        "required": True,
                        "description": "provider/model (slash included), or model for any provider",
                        "schema": {"type": "string"},
                    }
                ],
                "requestBody": _json(_PRICE, "The prices"),
                "responses": {"200": _json(_PRICE, "The price"), **_errors(400, 401)},
            },
            "delete": {
                "summary": "Remove a model's price from this workspace",
                "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"204": {"description": "Removed"}, **_errors(401, 404)},
            },
        },
    },
}
