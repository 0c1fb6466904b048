"""The OpenAPI 3.1 description the local ledger serves at ``GET /openapi.json``."""

from __future__ import annotations

from typing import Any

from .._version import __version__

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    texts = {
        400: "Malformed JSON, a missing or wrongly typed field",
        401: "Missing, invalid or revoked x-api-key",
        404: "No such session in this key's workspace",
        409: "The session has already ended",
        413: "An event over 64 KB, or a body over 16 MB",
        422: "Idempotency-Key reused for a different request",
    }
    return {str(s): _json(_ERROR, texts[s]) for s in statuses}


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
                "properties": {
                    "type": {"type": "string", "examples": ["llm_call", "tool_call", "tool_result"]},
                    "stepIndex": {"type": "integer", "minimum": 0},
                    "provider": {"type": "string", "description": "llm_call: required"},
                    "model": {"type": "string", "description": "llm_call: required"},
                    "tokensIn": {"type": "integer", "minimum": 0, "description": "llm_call: required"},
                    "tokensOut": {"type": "integer", "minimum": 0, "description": "llm_call: required"},
                    "latencyMs": {"type": "number", "minimum": 0},
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
                },
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
                    {"type": "object", "required": ["agentName"], "properties": {"agentName": {"type": "string"}}},
                    "The agent",
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
                "summary": "A session with its totals and its events in stepIndex order, each with its cost",
                "parameters": [{"name": "sessionId", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json({"type": "object"}, "The session"), **_errors(401, 404)},
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
                    **_errors(400, 401, 404, 409, 413, 422),
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
