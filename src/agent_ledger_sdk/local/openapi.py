"""The OpenAPI 3.1 description the local ledger serves at ``GET /openapi.json``."""

from __future__ import annotations

from typing import Any

from .._constants import MAX_EVENT_BYTES
from .._version import __version__
from .validation import (
    MAX_METADATA_BYTES,
    MAX_PARENT_SESSION_ID,
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


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    texts = {
        400: "Malformed JSON, a missing or wrongly typed field",
        401: "Missing, invalid or revoked x-api-key",
        404: "No such session in this key's workspace",
        409: "The session has already ended",
        413: "A body over 16 MB or more than 10,000 events",
        422: "Idempotency-Key reused for a different request",
    }
    return {str(s): _json(_ERROR, texts[s]) for s in statuses}


_TOKENS = {"type": "integer", "minimum": 0, "maximum": MAX_TOKENS}
_SESSION_CONTEXT = {
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
                "required": ["error", "details"],
                "properties": {
                    "error": {"type": "string"},
                    "details": {
                        "type": "object",
                        "properties": {
                            "agentName": {"type": "string"},
                            "dailyLimitUsd": {"type": "number"},
                            "spentTodayUsd": {"type": "number"},
                            "attemptedCostUsd": {"type": "number"},
                            "projectedCostUsd": {"type": "number"},
                            "remainingBudgetUsd": {"type": "number"},
                            "resetsAt": {"type": "string", "format": "date-time"},
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
                    "tokensIn": {**_TOKENS, "description": "llm_call: required"},
                    "tokensOut": {**_TOKENS, "description": "llm_call: required"},
                    "cacheReadTokens": {**_TOKENS, "description": "llm_call: optional, stored, not priced"},
                    "cacheWriteTokens": {**_TOKENS, "description": "llm_call: optional, stored, not priced"},
                    "reasoningTokens": {**_TOKENS, "description": "llm_call: optional, stored, not priced"},
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
                    "costUsd": {"type": "number"},
                    "tokensIn": {"type": "integer"},
                    "tokensOut": {"type": "integer"},
                    "eventCount": {"type": "integer"},
                    "unpricedEvents": {"type": "integer"},
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
                                                "costUsd": {"type": "number"},
                                                "priced": {"type": "boolean"},
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
                "properties": {
                    "agentName": {"type": "string"},
                    "dailyLimitUsd": {"type": ["number", "null"]},
                    "spentTodayUsd": {"type": "number"},
                    "remainingBudgetUsd": {"type": ["number", "null"]},
                    "resetsAt": {"type": "string", "format": "date-time"},
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
                    "201": _json({"$ref": "#/components/schemas/SessionSummary"}, "The new session, with its id"),
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
                        {"$ref": "#/components/schemas/Guardrail"}, "The agent's daily budget would be exceeded"
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
        "/v1/budgets": {
            "get": {
                "summary": "Each agent's spend today (UTC) against its daily limit",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "budgets": {"type": "array", "items": {"$ref": "#/components/schemas/Budget"}}
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
                "summary": "Set (or, with null, remove) an agent's daily limit in USD",
                "parameters": [{"name": "agentName", "in": "path", "required": True, "schema": {"type": "string"}}],
                "requestBody": _json(
                    {"type": "object", "properties": {"dailyLimitUsd": {"type": ["number", "null"], "minimum": 0}}},
                    "The limit",
                ),
                "responses": {"200": _json({"$ref": "#/components/schemas/Budget"}, "The budget"), **_errors(400, 401)},
            }
        },
    },
}
