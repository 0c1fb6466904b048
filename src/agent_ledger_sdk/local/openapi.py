"""The OpenAPI 3.1 description the local ledger serves at ``GET /openapi.json``.

It describes what the server does, no more and no less: every route of ``app.create_app`` (each
method), every parameter with the bounds the service enforces, every status an operation can
answer and the exact shape of each body. ``tests/test_openapi_conformance.py`` holds the server
to it with Schemathesis, on SQLite and on PostgreSQL, and checks that routes and paths match.

What JSON Schema cannot say is in the descriptions: the size of a body (16 MB), an event (64 KB)
or ``metadata`` (16 KB), how deep a body nests, that an llm_call's cached tokens fit in its
``tokensIn``, and that a session's tags are counted once each (at most 50 distinct).
"""

from __future__ import annotations

from typing import Any

from .._constants import MAX_EVENT_BYTES
from .._version import __version__
from .app import MAX_LIST_LIMIT
from .body import MAX_BODY_BYTES, MAX_JSON_DEPTH
from .budgets import KINDS
from .observability import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .observability import MAX_REQUEST_ID
from .pricing import COST_STATUSES, ESTIMATE_TOKENS_IN, ESTIMATE_TOKENS_OUT
from .records import BUDGET_CACHE_SECONDS, LEDGER_EVENT_FIELDS, RESERVATION_TTL_SECONDS
from .service import DEFAULT_EVENTS_PAGE, MAX_AGENT_NAME, MAX_ERROR_MESSAGE, MAX_EVENTS_PAGE, MAX_EVENTS_PER_REQUEST
from .validation import (
    MAX_AMOUNT_DECIMALS,
    MAX_LATENCY_MS,
    MAX_METADATA_BYTES,
    MAX_PARENT_SESSION_ID,
    MAX_RESERVATION_ID,
    MAX_SAFE_INTEGER,
    MAX_SPAN_ID,
    MAX_TAG,
    MAX_TAGS,
    MAX_TOKENS,
    MAX_USD,
    MAX_USER_ID,
    TIMESTAMP_EXAMPLE,
)

MAX_CURSOR = 2**63 - 1  # a 64-bit integer, as SQLite and PostgreSQL store them
MAX_IDEMPOTENCY_KEY = 255


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` or null (which the ledger reads as the field left out)."""
    kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    return {**schema, "type": [*kinds, "null"]}


# -- values ----------------------------------------------------------------------------------

# Python's str.isspace(): a string of only these is "empty" where the ledger strips names.
_SPACE = r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# Names and ids never hold U+0000 (PostgreSQL refuses it in a column); free text may.
_NO_NUL = r"^[^\x00]*$"
_NAME_PATTERN = rf"^[^\x00]*[^\x00{_SPACE}][^\x00]*$"  # no NUL, and not empty once stripped of whitespace


def _unsigned_below(limit: int) -> str:
    """A regular expression of the decimal numbers from 0 to ``limit`` (leading zeros allowed)."""
    digits = str(limit)
    alternatives = [f"[0-9]{{1,{len(digits) - 1}}}"]
    for position, digit in enumerate(digits):
        if digit != "0":
            rest = len(digits) - position - 1
            low = "0" if position else "1"
            if int(digit) > int(low):
                tail = f"[0-9]{{{rest}}}" if rest else ""
                alternatives.append(f"{digits[:position]}[{low}-{int(digit) - 1}]{tail}")
    alternatives.append(digits)
    return f"0*(?:{'|'.join(alternatives)})"


# RFC 3339 in UTC as validation.py reads it: a real date (year 0001 to 9999, leap years counted),
# hours 00-23, no leap second, up to nine decimals, Z or +00:00.
_YEAR = "(?:[0-9]{3}[1-9]|[0-9]{2}[1-9]0|[0-9][1-9]00|[1-9]000)"
_LEAP_YEAR = "(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_MONTH_DAY = (
    "(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    "|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
    "|02-(?:0[1-9]|1[0-9]|2[0-8]))"
)
_DATE = f"(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29)"
UTC_TIMESTAMP_PATTERN = f"^{_DATE}[Tt](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]{{1,9}})?(?:[Zz]|\\+00:00)$"
EVENTS_CURSOR_PATTERN = f"^(?:{_unsigned_below(MAX_CURSOR)}\\.{_unsigned_below(MAX_CURSOR)})?$"

_STRING = {"type": "string"}
_TEXT = {"type": "string", "pattern": _NO_NUL}
_NAME = {"type": "string", "pattern": _NAME_PATTERN}
_ID = {"type": "string", "minLength": 1, "pattern": _NO_NUL}
_TIMESTAMP = {"type": "string", "format": "date-time"}
_INTEGER = {"type": "integer", "minimum": 0}
_COUNT = {"type": "integer", "minimum": 0, "maximum": MAX_TOKENS}
# Amounts the ledger reads are exact: at most MAX_USD dollars, at most MAX_AMOUNT_DECIMALS decimals.
_AMOUNT_IN = {
    "type": "number",
    "minimum": 0,
    "maximum": MAX_USD,
    "multipleOf": 10**-MAX_AMOUNT_DECIMALS,
    "description": f"US dollars, from 0 to {MAX_USD}, with at most {MAX_AMOUNT_DECIMALS} digits after the point",
}
_PERCENT_IN = {
    "type": ["number", "null"],
    "exclusiveMinimum": 0,
    "maximum": 100,
    "multipleOf": 10**-MAX_AMOUNT_DECIMALS,
    "description": "Record a budget_warning event (and log a warning) when the spend crosses this share of a limit; "
    "null: no warning",
}
# Amounts the ledger answers: numbers with exactly the digits of its decimal amounts.
_USD = {"type": "number", "minimum": 0, "description": "US dollars, exact"}
_OPTIONAL_USD = {"type": ["number", "null"], "minimum": 0, "description": "US dollars, exact; null: none"}
_PERCENT = {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 100}
_RATE_IN = {"type": "number", "minimum": 0, "description": "USD per million tokens"}

# What each LLM call of a POST /v1/events batch cost, by its spanId: the SDK puts it on its OpenTelemetry spans.
_PRICED = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "spanId": _ID,
            "costUsd": _USD,
            "costStatus": {"enum": list(COST_STATUSES)},
            "overBudget": {"type": "boolean"},
        },
        "required": ["spanId", "costUsd", "costStatus", "overBudget"],
        "additionalProperties": False,
    },
    "description": "Each llm_call of the batch that has a spanId, in order: its cost as priced. "
    "Present only when the request says Agent-Ledger-Priced: true and the batch has such a call.",
}

_PRICED_HEADER = {
    "name": "Agent-Ledger-Priced",
    "in": "header",
    "required": False,
    "description": "true (in any case): the reply lists each llm_call's cost by spanId (priced), as the SDK asks "
    "when it exports OpenTelemetry spans. Any other value, or none: the list is left out (it costs time for every "
    "call of a batch).",
    "schema": {"type": "string"},
}


def _object(properties: dict[str, Any], required: Any = (), **more: Any) -> dict[str, Any]:
    """A closed object: exactly ``properties``, the ``required`` ones always there."""
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required == "all":
        required = list(properties)
    if required:
        schema["required"] = list(required)
    return {**schema, **more}


# -- responses ---------------------------------------------------------------------------------

_NUL_IN_URL = "A U+0000 (NUL) in the path or the query, which the ledger cannot store"
_ERROR_TEXTS = {
    400: "Malformed JSON, a body that is not a JSON object, a missing, unknown or wrongly typed field, a value "
    "out of bounds, a U+0000 (NUL) in a name or an id, in the path or in the query, or an Idempotency-Key over "
    "255 characters",
    401: "Missing, invalid or revoked x-api-key",
    404: "No such session (or reservation, or price) in this key's workspace",
    409: "The session has already ended",
    413: f"A body over {MAX_BODY_BYTES} bytes (16 MB)",
    422: "Idempotency-Key already used for a different request",
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int, **texts: str) -> dict[str, Any]:
    """Error responses; ``texts`` (``e404="..."``) say what a status means for this operation."""
    return {str(s): _json(_ref("Error"), texts.get(f"e{s}", _ERROR_TEXTS[s])) for s in statuses}


_BINARY = {"type": "string", "format": "binary"}


def _otlp(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """An answer of POST /v1/traces: JSON to a JSON request, protobuf to a protobuf one."""
    return {
        "description": f"{description}. In the request's encoding (protobuf: an ExportTraceServiceResponse, or a "
        "google.rpc.Status for an error).",
        "content": {"application/json": {"schema": schema}, "application/x-protobuf": {"schema": _BINARY}},
    }


def _nullable_array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": ["array", "null"], "items": items}


# The shape the ledger reads of OTLP JSON; a span it cannot read is rejected alone (partialSuccess), not the request.
_OTLP_REQUEST = {
    "type": "object",
    "properties": {
        "resourceSpans": _nullable_array(
            {
                "type": "object",
                "properties": {
                    "resource": {"type": ["object", "null"]},
                    "scopeSpans": _nullable_array(
                        {"type": "object", "properties": {"spans": _nullable_array({"type": "object"})}}
                    ),
                },
            }
        )
    },
}


def _no_content(description: str) -> dict[str, Any]:
    return {"description": description}


_IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "A request repeated with the same key (within 24 hours) is applied once and answered as the "
    "first time, with Idempotent-Replayed: true; the same key with another request (another method, path or body) "
    "is refused with 422. Empty: no key.",
    "schema": {"type": "string", "maxLength": MAX_IDEMPOTENCY_KEY},
}


def _path(name: str, description: str, *, slash: bool = False) -> dict[str, Any]:
    # A / in it would be another path, but for {model}, which takes the rest of the path (up to a line feed).
    schema = {"type": "string", "minLength": 1, "pattern": r"^[^\n\x00]*$" if slash else r"^[^/\x00]*$"}
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


def _query(name: str, schema: dict[str, Any], description: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema, **more}


def _query_int(minimum: int, maximum: int, default: Any = None) -> dict[str, Any]:
    """An integer query parameter; empty (``?limit=``) is as good as left out."""
    schema = {"type": ["integer", "string"], "minimum": minimum, "maximum": maximum, "maxLength": 0}
    return schema if default is None else {**schema, "default": default}


def _body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "required": True,
        "description": f"{description}. A JSON object in UTF-8 of at most {MAX_BODY_BYTES} bytes, nested at most "
        f"{MAX_JSON_DEPTH} deep (the body itself counted), without lone UTF-16 surrogates.",
        "content": {"application/json": {"schema": schema}},
    }


# -- the document -------------------------------------------------------------------------------------

_SESSION_CONTEXT = {
    "userId": {**_nullable(_ID), "maxLength": MAX_USER_ID},
    "tags": {
        "type": ["array", "null"],
        "items": {**_NAME, "maxLength": MAX_TAG},
        "description": f"At most {MAX_TAGS} distinct tags; a repeated tag is kept once (and not counted again)",
    },
    "metadata": {
        "type": ["object", "null"],
        "additionalProperties": True,
        "description": f"Any JSON object of at most {MAX_METADATA_BYTES} bytes as compact JSON",
    },
    "parentSessionId": {
        **_nullable(_ID),
        "maxLength": MAX_PARENT_SESSION_ID,
        "description": "The session that started this one; stored as given",
    },
    "maxCostUsd": {
        **_nullable(_AMOUNT_IN),
        "description": "A cap on what this session may spend in all (the session budget); calls past it are "
        f"refused like any budget's. US dollars, from 0 to {MAX_USD}, with at most {MAX_AMOUNT_DECIMALS} digits "
        "after the point",
    },
    "warnAtPercent": _PERCENT_IN,
}

# The fields an llm_call is checked for (the same fields of other events are stored as given).
_LLM_CALL_FIELDS: dict[str, tuple[dict[str, Any], str]] = {
    "provider": (_ID, "Required"),
    "model": (_ID, "Required"),
    "tokensIn": (
        _COUNT,
        "Required. Every input token, cached ones included (OpenAI's prompt_tokens; Anthropic's input_tokens + "
        "cache_read_input_tokens + cache_creation_input_tokens)",
    ),
    "tokensOut": (_COUNT, "Required"),
    "cacheReadTokens": (_nullable(_COUNT), "How many of tokensIn were read from the prompt cache"),
    "cacheWriteTokens": (
        _nullable(_COUNT),
        "How many of tokensIn were written to the prompt cache; cacheReadTokens + cacheWriteTokens must not "
        "exceed tokensIn",
    ),
    "reasoningTokens": (_nullable(_COUNT), "How many of tokensOut were reasoning (not priced apart)"),
    "reservationId": (
        {**_nullable(_ID), "maxLength": MAX_RESERVATION_ID},
        "The reservation this call settles (POST /v1/reservations). An unknown, expired, released or already "
        "settled one: the call is unreserved",
    ),
    "usageMissing": (
        {"type": ["boolean", "null"]},
        "The provider reported no usage; the call is charged what it reserved, else an estimate of "
        f"{ESTIMATE_TOKENS_IN} tokens in and {ESTIMATE_TOKENS_OUT} out (or tokensIn / tokensOut when larger)",
    ),
}

_EVENT = {
    "type": "object",
    "required": ["type"],
    "additionalProperties": True,
    "description": f"At most {MAX_EVENT_BYTES} bytes as compact JSON (else 413). Any other field is stored as "
    "given. Counts given as integral floats (12.0) are stored as integers. An llm_call must also carry "
    "provider, model, tokensIn and tokensOut, and its other fields are checked; the fields of other events "
    "are not.",
    "properties": {
        "type": {**_ID, "examples": ["llm_call", "tool_call", "tool_result"]},
        "stepIndex": {**_nullable({"type": "integer"}), "minimum": 0, "maximum": MAX_SAFE_INTEGER},
        "latencyMs": {**_nullable({"type": "number"}), "minimum": 0, "maximum": MAX_LATENCY_MS},
        "startedAt": {
            **_nullable({"type": "string"}),
            "pattern": UTC_TIMESTAMP_PATTERN,
            "description": f"RFC 3339 in UTC (Z or +00:00), e.g. {TIMESTAMP_EXAMPLE}",
        },
        "spanId": {**_nullable(_ID), "maxLength": MAX_SPAN_ID},
        "parentSpanId": {
            **_nullable(_ID),
            "maxLength": MAX_SPAN_ID,
            "description": "The spanId of the enclosing span",
        },
        **{name: {"description": f"llm_call: {text}"} for name, (_, text) in _LLM_CALL_FIELDS.items()},
    },
    "if": {"required": ["type"], "properties": {"type": {"const": "llm_call"}}},
    "then": {
        "required": ["provider", "model", "tokensIn", "tokensOut"],
        "properties": {name: schema for name, (schema, _) in _LLM_CALL_FIELDS.items()},
    },
}

_SESSION_FIELDS = {
    "id": _STRING,
    "workspace": _STRING,
    "agentName": _STRING,
    "status": {"enum": ["running", "success", "error"]},
    "errorMessage": {"type": ["string", "null"]},
    "startedAt": _TIMESTAMP,
    "endedAt": {"type": ["string", "null"], "format": "date-time"},
    "costUsd": _USD,
    "tokensIn": _INTEGER,
    "tokensOut": _INTEGER,
    "eventCount": _INTEGER,
    "unpricedEvents": _INTEGER,
    "estimatedEvents": _INTEGER,
    "overBudgetEvents": _INTEGER,
    "maxCostUsd": _OPTIONAL_USD,
    "userId": {"type": ["string", "null"]},
    "tags": {"type": "array", "items": _STRING},
    "metadata": {"type": "object", "additionalProperties": True},
    "parentSessionId": {"type": ["string", "null"]},
}

_GUARDRAIL_FIELDS = {
    "error": _STRING,
    "details": _object(
        {
            "agentName": _STRING,
            "dailyLimitUsd": {**_USD, "description": "The limit of the budget that refused"},
            "spentTodayUsd": {**_USD, "description": "Spent in its window, reserved in flight included"},
            "attemptedCostUsd": _USD,
            "projectedCostUsd": _USD,
            "remainingBudgetUsd": _USD,
            "reservedUsd": _USD,
            "budget": {"enum": list(KINDS)},
            "resetsAt": {"type": ["string", "null"], "format": "date-time"},
        },
        "all",
    ),
    "budget": {"enum": list(KINDS), "description": "Which budget refused"},
    "resetsAt": {
        "type": ["string", "null"],
        "format": "date-time",
        "description": "When the budget's window starts again (UTC); null for a session cap",
    },
}

_REJECTION = _object(
    {
        "index": {"type": "integer", "minimum": 0, "description": "Its position in events"},
        "field": {"type": ["string", "null"], "description": "The offending key of the event; null for the event"},
        "error": {"type": "string", "description": "What was wrong and how to fix it"},
    },
    ["index", "field", "error"],
)

_UNPRICED_FIELDS = {
    "error": {"type": "string", "description": "Names the model and how to price it"},
    "code": {"const": "unpriced_model"},
    "provider": _STRING,
    "model": _STRING,
}

_RESPONSE_HEADERS = {
    "x-request-id": {
        "description": "The request's id, also in the access log: the caller's x-request-id when it is 1 to "
        f"{MAX_REQUEST_ID} visible ASCII characters, else a new one",
        "required": True,
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_REQUEST_ID, "pattern": "^[!-~]+$"},
    }
}
_REPLAYED_HEADER = {
    "Idempotent-Replayed": {
        "description": "true: this is the answer first given to a request with the same Idempotency-Key",
        "required": False,
        "schema": {"const": "true"},
    }
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Agent Ledger (local)",
        "version": __version__,
        "description": "The hosted Agent Ledger API, served by the local ledger from SQLite or PostgreSQL. Every "
        "/v1 operation needs an x-api-key. Errors are JSON objects with an error message; a path that no "
        "operation has answers 404, and a method that its path has not answers 405, both as "
        '{"error": "..."}. Every response carries an x-request-id header.',
    },
    "components": {
        "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}},
        "schemas": {
            "Error": _object({"error": {"type": "string", "description": "What was wrong and how to fix it"}}, "all"),
            "OtlpError": _object(
                {
                    "error": {"type": "string", "description": "What was wrong and how to fix it"},
                    "code": {"type": "integer", "description": "The google.rpc.Code (3: invalid argument)"},
                    "message": {"type": "string", "description": "The same as error (a google.rpc.Status)"},
                },
                "all",
                description="An error of POST /v1/traces in JSON: the ledger's error, and a google.rpc.Status",
            ),
            "EventsRejected": _object(
                {
                    "error": {"type": "string", "description": "The message of the first bad event"},
                    "rejected": {
                        "type": "array",
                        "minItems": 1,
                        "description": "Every bad event, in index order, with its first problem",
                        "items": _REJECTION,
                    },
                },
                ["error", "rejected"],
                description="Some events of the batch were bad; none of the batch was stored. Drop the listed "
                "events and resend the rest.",
            ),
            "Guardrail": _object(
                _GUARDRAIL_FIELDS,
                "all",
                description="HTTP 429: a budget would be exceeded. The published client reads error and details. "
                "For a budget other than the agent's daily one, the published fields carry that budget's numbers "
                "(dailyLimitUsd is its limit). spentTodayUsd counts what calls in flight reserve (also given alone "
                "as reservedUsd), so that projectedCostUsd = spentTodayUsd + attemptedCostUsd and "
                "remainingBudgetUsd = max(dailyLimitUsd - spentTodayUsd, 0).",
            ),
            "EventsGuardrail": _object(
                {
                    **_GUARDRAIL_FIELDS,
                    "accepted": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "The batch was stored whole all the same (its calls ran)",
                    },
                    "costUsd": {**_USD, "description": "What the batch cost, counted"},
                    "overBudgetEvents": {
                        "type": "array",
                        "items": {"type": "integer", "minimum": 0},
                        "description": "The indexes of the events stored with overBudget: true",
                    },
                    "priced": _PRICED,
                },
                [*_GUARDRAIL_FIELDS, "accepted", "costUsd", "overBudgetEvents"],
                description="HTTP 429 of POST /v1/events: the guardrail of the first unreserved call over a budget, "
                "and what was stored.",
            ),
            "UnpricedModel": _object(
                _UNPRICED_FIELDS,
                "all",
                description="HTTP 422: the agent has a budget and the ledger has no price for the model. Add one "
                "(PUT /v1/prices/{model}) or allow unpriced models (PUT /v1/settings).",
            ),
            "EventsUnpriced": _object(
                {
                    **_UNPRICED_FIELDS,
                    "rejected": {
                        "type": "array",
                        "minItems": 1,
                        "description": "Each unpriced call, by index; none of the batch was stored",
                        "items": _object(
                            {"index": {"type": "integer", "minimum": 0}, "field": {"const": "model"}, "error": _STRING},
                            "all",
                        ),
                    },
                },
                "all",
                description="HTTP 422 of POST /v1/events: as UnpricedModel, with every unpriced call listed.",
            ),
            "Event": _EVENT,
            "SessionSummary": {
                "type": "object",
                "required": list(_SESSION_FIELDS),
                "properties": _SESSION_FIELDS,
            },
            "Session": {
                "allOf": [
                    _ref("SessionSummary"),
                    {
                        "type": "object",
                        "required": ["childSessionIds", "events", "nextEventsCursor"],
                        "properties": {
                            "childSessionIds": {
                                "type": "array",
                                "items": _STRING,
                                "description": "Sessions of this workspace whose parentSessionId is this session",
                            },
                            "events": {
                                "type": "array",
                                "description": "A page of events in stepIndex order (events without one last), then "
                                "in arrival order; each as sent, with what the ledger made of it",
                                "items": {
                                    "allOf": [
                                        _ref("Event"),
                                        {
                                            "type": "object",
                                            "required": list(LEDGER_EVENT_FIELDS),
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
                                                "receivedAt": _TIMESTAMP,
                                            },
                                        },
                                    ]
                                },
                            },
                            "nextEventsCursor": {
                                "type": ["string", "null"],
                                "pattern": EVENTS_CURSOR_PATTERN,
                                "description": "Send it as eventsCursor for the next page; null: this was the last",
                            },
                        },
                    },
                ],
                "unevaluatedProperties": False,
            },
            "StartedSession": _object(
                {
                    "id": _STRING,
                    "agentName": _STRING,
                    "status": {"const": "running"},
                    "startedAt": _TIMESTAMP,
                    "userId": {"type": ["string", "null"]},
                    "tags": {"type": "array", "items": _STRING},
                    "metadata": {"type": "object", "additionalProperties": True},
                    "parentSessionId": {"type": ["string", "null"]},
                    "maxCostUsd": _OPTIONAL_USD,
                    "budgeted": {
                        "type": "boolean",
                        "description": "Whether a budget applies to this session's calls now (the agent's, the "
                        "workspace's or its own cap): if not, a client need not reserve",
                    },
                },
                "all",
            ),
            "Budget": _object(
                {
                    "workspace": _STRING,
                    "agentName": _STRING,
                    "dailyLimitUsd": _OPTIONAL_USD,
                    "spentTodayUsd": _USD,
                    "remainingBudgetUsd": {**_OPTIONAL_USD, "description": "limit - spent - reserved, at least 0"},
                    "resetsAt": _TIMESTAMP,
                    "monthlyLimitUsd": _OPTIONAL_USD,
                    "spentThisMonthUsd": _USD,
                    "remainingMonthlyUsd": _OPTIONAL_USD,
                    "monthResetsAt": _TIMESTAMP,
                    "reservedUsd": {**_USD, "description": "Held by the agent's reservations in flight"},
                    "warnAtPercent": _PERCENT,
                },
                "all",
                description="An agent's limits, and what its windows spent and hold in flight",
            ),
            "WorkspaceBudget": _object(
                {
                    "workspace": _STRING,
                    "dailyLimitUsd": _OPTIONAL_USD,
                    "spentTodayUsd": _USD,
                    "reservedUsd": _USD,
                    "remainingBudgetUsd": _OPTIONAL_USD,
                    "warnAtPercent": _PERCENT,
                    "resetsAt": _TIMESTAMP,
                },
                "all",
            ),
            "Settings": _object(
                {
                    "workspace": _STRING,
                    "allowUnpricedModels": {
                        "type": "boolean",
                        "description": "Let agents with a budget make calls the ledger cannot price (counted as $0, "
                        "flagged unpriced); false by default",
                    },
                },
                "all",
            ),
            "Price": _object(
                {
                    "model": {"type": "string", "description": "provider/model or model, trimmed and lower case"},
                    "inputPerMtok": _USD,
                    "outputPerMtok": _USD,
                    "cacheReadPerMtok": _OPTIONAL_USD,
                    "cacheWritePerMtok": _OPTIONAL_USD,
                },
                "all",
                description="USD per million tokens. Without a cache price, those tokens cost the input price.",
            ),
        },
    },
    "security": [{"apiKey": []}],
    "paths": {
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Liveness: the process answers (it touches no database)",
                "security": [],
                "responses": {"200": _json(_object({"status": {"const": "ok"}}, "all"), "Alive")},
            }
        },
        "/ready": {
            "get": {
                "operationId": "ready",
                "summary": "Readiness: the database answers within 2 seconds",
                "security": [],
                "responses": {
                    "200": _json(_object({"status": {"const": "ready"}}, "all"), "Ready"),
                    "503": _json(
                        _object({"status": {"const": "unavailable"}, "error": _STRING}, "all"),
                        "The database failed or did not answer in time; error says how",
                    ),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "This process's metrics, in the Prometheus text format 0.0.4",
                "security": [],
                "responses": {
                    "200": {
                        "description": f"Content-Type: {METRICS_CONTENT_TYPE}",
                        "content": {"text/plain": {"schema": _STRING}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {"200": _json({"type": "object"}, "The OpenAPI 3.1 description of the API")},
            }
        },
        "/v1/sessions": {
            "post": {
                "operationId": "startSession",
                "summary": "Start a session",
                "parameters": [_IDEMPOTENCY],
                "requestBody": _body(
                    {
                        "type": "object",
                        "required": ["agentName"],
                        "additionalProperties": True,
                        "properties": {
                            "agentName": {**_NAME, "maxLength": MAX_AGENT_NAME},
                            **_SESSION_CONTEXT,
                        },
                    },
                    "The agent, and optionally who and what the session is for (other fields are ignored)",
                ),
                "responses": {
                    "201": _json(_ref("StartedSession"), "The new session, with its id"),
                    **_errors(400, 401, 413, 422),
                },
            },
            "get": {
                "operationId": "listSessions",
                "summary": "List sessions, newest first",
                "parameters": [
                    _query("agent", _TEXT, "Only this agent's sessions"),
                    _query("user", _ID, "Only sessions of this userId"),
                    _query(
                        "tag",
                        {"type": "array", "items": _ID},
                        "Only sessions carrying this tag; repeat for sessions carrying every one",
                        style="form",
                        explode=True,
                    ),
                    _query("status", {"enum": ["running", "success", "error"]}, "Only sessions in this state"),
                    _query(
                        "since",
                        _TEXT,
                        "Only sessions started at or after this time, compared as text with their RFC 3339 UTC "
                        f"startedAt (e.g. {TIMESTAMP_EXAMPLE[:10]} or {TIMESTAMP_EXAMPLE})",
                    ),
                    _query("until", _TEXT, "Only sessions started before this time, compared as since is"),
                    _query(
                        "limit",
                        _query_int(1, MAX_LIST_LIMIT, 50),
                        "How many sessions, at most",
                    ),
                    _query(
                        "cursor",
                        _query_int(0, MAX_CURSOR),
                        "The nextCursor of the page before",
                    ),
                ],
                "responses": {
                    "200": _json(
                        _object(
                            {
                                "sessions": {
                                    "type": "array",
                                    "items": {
                                        "$ref": "#/components/schemas/SessionSummary",
                                        "unevaluatedProperties": False,
                                    },
                                },
                                "nextCursor": {
                                    "type": ["string", "null"],
                                    "pattern": "^[0-9]+$",
                                    "description": "Send it as cursor for the next page; null: this was the last",
                                },
                            },
                            "all",
                        ),
                        "A page of sessions: newest first by seq, or by start time (then seq) with since or until",
                    ),
                    **_errors(
                        400,
                        401,
                        404,
                        e404="A list with since or until continued from a cursor whose session is gone (deleted "
                        "since): list again without a cursor",
                    ),
                },
            },
        },
        "/v1/sessions/{sessionId}": {
            "get": {
                "operationId": "getSession",
                "summary": "A session with its totals, its child sessions and a page of its events in stepIndex "
                "order, each with its cost",
                "parameters": [
                    _path("sessionId", "The id POST /v1/sessions returned"),
                    _query(
                        "eventsLimit",
                        _query_int(1, MAX_EVENTS_PAGE, DEFAULT_EVENTS_PAGE),
                        "How many events, at most",
                    ),
                    _query(
                        "eventsCursor",
                        {"type": "string", "pattern": EVENTS_CURSOR_PATTERN},
                        "The nextEventsCursor of the page before (opaque); empty: the first page",
                    ),
                ],
                "responses": {
                    "200": _json(_ref("Session"), "The session"),
                    **_errors(400, 401, 404),
                },
            },
            "delete": {
                "operationId": "deleteSession",
                "summary": "Forget a session and its events (what it spent stays spent: budgets are not refunded)",
                "parameters": [_path("sessionId", "The id POST /v1/sessions returned")],
                "responses": {"204": _no_content("Deleted"), **_errors(400, 401, 404, e400=_NUL_IN_URL)},
            },
        },
        "/v1/sessions/{sessionId}/end": {
            "post": {
                "operationId": "endSession",
                "summary": "End a session (once); the reservations it still holds are released",
                "parameters": [_path("sessionId", "The id POST /v1/sessions returned"), _IDEMPOTENCY],
                "requestBody": _body(
                    {
                        "type": "object",
                        "required": ["status"],
                        "additionalProperties": True,
                        "properties": {
                            "status": {"enum": ["success", "error"]},
                            "errorMessage": {
                                "type": ["string", "null"],
                                "description": f"Kept up to {MAX_ERROR_MESSAGE} characters; the rest is cut",
                            },
                        },
                    },
                    "How the session ended (other fields are ignored)",
                ),
                "responses": {
                    "200": _json(
                        _object(
                            {
                                "id": _STRING,
                                "status": {"enum": ["success", "error"]},
                                "errorMessage": {"type": ["string", "null"]},
                                "endedAt": _TIMESTAMP,
                            },
                            "all",
                        ),
                        "Ended",
                    ),
                    **_errors(400, 401, 404, 409, 413, 422),
                },
            }
        },
        "/v1/events": {
            "post": {
                "operationId": "logEvents",
                "summary": "Append events to a running session (all or nothing); llm_call events are priced",
                "parameters": [_IDEMPOTENCY, _PRICED_HEADER],
                "requestBody": _body(
                    {
                        "type": "object",
                        "required": ["sessionId", "events"],
                        "additionalProperties": True,
                        "properties": {
                            "sessionId": _ID,
                            "events": {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": MAX_EVENTS_PER_REQUEST,
                                "items": _ref("Event"),
                            },
                        },
                    },
                    "The events (other fields are ignored)",
                ),
                "responses": {
                    "202": _json(
                        _object(
                            {"accepted": {"type": "integer", "minimum": 1}, "costUsd": _USD, "priced": _PRICED},
                            ["accepted", "costUsd"],
                        ),
                        "Recorded",
                    ),
                    "400": _json(
                        {"oneOf": [_ref("EventsRejected"), _ref("Error")]},
                        "Bad events (the body lists each in rejected), or a malformed request",
                    ),
                    **_errors(401, 404, 409),
                    "413": _json(
                        {"oneOf": [_ref("EventsRejected"), _ref("Error")]},
                        f"An event over {MAX_EVENT_BYTES} bytes (listed in rejected with the other bad events), "
                        f"a body over {MAX_BODY_BYTES} bytes, or more than {MAX_EVENTS_PER_REQUEST} events",
                    ),
                    "422": _json(
                        {"oneOf": [_ref("EventsUnpriced"), _ref("Error")]},
                        "An llm_call the ledger cannot price for an agent with a budget (code unpriced_model; none "
                        "of the batch was stored), or an Idempotency-Key used for a different request",
                    ),
                    "429": _json(
                        _ref("EventsGuardrail"),
                        "An unreserved LLM call went over a budget: the batch is stored all the same (the call ran), "
                        "the calls over it with overBudget: true, and the body is the guardrail of the first one",
                    ),
                },
            }
        },
        "/v1/traces": {
            "post": {
                "operationId": "ingestTraces",
                "summary": "OpenTelemetry traces (OTLP/HTTP): GenAI spans become sessions and priced events",
                "description": "An ExportTraceServiceRequest, in protobuf or in OTLP JSON. A trace goes to the "
                "session of its conversation (gen_ai.conversation.id, or OpenInference's session.id) or else its "
                "own; chat and completion spans become llm_call events priced as POST /v1/events prices them, "
                "tool spans tool_call and tool_result events. A span recorded already (an exporter's retry) is "
                "not recorded again. LLM calls count against budgets after the fact: a call over a budget is "
                "recorded with overBudget true, never refused. Spans that cannot be read are rejected alone "
                "(partialSuccess). Errors are in the request's encoding: JSON, or a google.rpc.Status in protobuf.",
                "requestBody": {
                    "required": True,
                    "description": f"At most {MAX_BODY_BYTES} bytes (after gzip, with Content-Encoding: gzip). "
                    "JSON: the OTLP JSON mapping (lowerCamelCase keys, hex trace and span ids, enums as integers, "
                    f"64-bit integers as strings or numbers), nested at most {MAX_JSON_DEPTH} deep.",
                    "content": {
                        "application/json": {"schema": _OTLP_REQUEST},
                        # The message's structure; on the wire, its protobuf encoding.
                        "application/x-protobuf": {"schema": _OTLP_REQUEST},
                    },
                },
                "responses": {
                    "200": _otlp(
                        _object(
                            {
                                "partialSuccess": _object(
                                    {
                                        "rejectedSpans": {
                                            "type": "string",
                                            "pattern": "^[0-9]+$",
                                            "description": "How many spans were rejected (int64, as a string)",
                                        },
                                        "errorMessage": {"type": "string", "description": "Why, span by span"},
                                    },
                                    "all",
                                )
                            }
                        ),
                        "An ExportTraceServiceResponse: the spans were recorded (or were already), but those "
                        "that partialSuccess counts",
                    ),
                    "400": _otlp(
                        _ref("OtlpError"),
                        "The body is not an ExportTraceServiceRequest in the encoding its Content-Type names, or "
                        "is gzip-encoded wrongly",
                    ),
                    "401": _otlp(_ref("OtlpError"), _ERROR_TEXTS[401]),
                    "413": _otlp(_ref("OtlpError"), f"A body over {MAX_BODY_BYTES} bytes (16 MB), unzipped"),
                    "415": _json(
                        _ref("OtlpError"), "Another Content-Type than application/json or application/x-protobuf"
                    ),
                },
            }
        },
        "/v1/reservations": {
            "post": {
                "operationId": "reserve",
                "summary": "Reserve the most an LLM call may cost, before it runs",
                "description": "Granted atomically when spent + reserved in flight + this fits every budget that "
                f"applies; released by the ledger after {RESERVATION_TTL_SECONDS} seconds unless the llm_call "
                "event settles it (reservationId) or DELETE releases it. Send estimate or maxCostUsd, not both.",
                "parameters": [_IDEMPOTENCY],
                "requestBody": _body(
                    {
                        "type": "object",
                        "required": ["sessionId", "provider", "model"],
                        "additionalProperties": True,
                        "properties": {
                            "sessionId": _ID,
                            "provider": _NAME,
                            "model": _NAME,
                            "estimate": {
                                "type": ["object", "null"],
                                "required": ["tokensIn", "tokensOut"],
                                "properties": {"tokensIn": _COUNT, "tokensOut": _COUNT},
                                "description": "The most the call may use: priced like the call",
                            },
                            "maxCostUsd": {
                                **_nullable(_AMOUNT_IN),
                                "description": "Instead of estimate: the most the call may cost. US dollars, from 0 "
                                f"to {MAX_USD}, with at most {MAX_AMOUNT_DECIMALS} digits after the point",
                            },
                            "stepIndex": {**_nullable({"type": "integer"}), "minimum": 0, "maximum": MAX_SAFE_INTEGER},
                        },
                        "oneOf": [
                            {"required": ["estimate"], "properties": {"estimate": {"type": "object"}}},
                            {"required": ["maxCostUsd"], "properties": {"maxCostUsd": {"type": "number"}}},
                        ],
                    },
                    "The call to reserve for (other fields are ignored)",
                ),
                "responses": {
                    "200": _json(
                        _object({"budgeted": {"const": False}, "ttlSeconds": {"const": BUDGET_CACHE_SECONDS}}, "all"),
                        "No budget applies: nothing is reserved (remember that for ttlSeconds)",
                    ),
                    "201": {
                        **_json(
                            _object(
                                {
                                    "budgeted": {"const": True},
                                    "id": {"type": "string", "description": "res_..., for reservationId"},
                                    "reservedUsd": _USD,
                                    "expiresAt": _TIMESTAMP,
                                    "ttlSeconds": {"const": BUDGET_CACHE_SECONDS},
                                },
                                "all",
                            ),
                            "Granted",
                        ),
                    },
                    **_errors(400, 401, 404, 409, 413),
                    "422": _json(
                        {"oneOf": [_ref("UnpricedModel"), _ref("Error")]},
                        "A model with no price for an agent with a budget (code unpriced_model), or an "
                        "Idempotency-Key used for a different request",
                    ),
                    "429": _json(_ref("Guardrail"), "It does not fit a budget: the call must not run"),
                },
            }
        },
        "/v1/reservations/{reservationId}": {
            "delete": {
                "operationId": "releaseReservation",
                "summary": "Release a reservation (the call did not run)",
                "parameters": [_path("reservationId", "The id POST /v1/reservations returned"), _IDEMPOTENCY],
                "responses": {
                    "204": _no_content("Released; also when already settled, released or expired"),
                    **_errors(400, 401, 404, 413, 422),
                },
            }
        },
        "/v1/budgets": {
            "get": {
                "operationId": "getBudgets",
                "summary": "Every budget of the workspace: spent, reserved in flight and remaining, with the settings",
                "responses": {
                    "200": _json(
                        _object(
                            {
                                "budgets": {"type": "array", "items": _ref("Budget")},
                                "workspaceBudget": _ref("WorkspaceBudget"),
                                "settings": _ref("Settings"),
                            },
                            "all",
                        ),
                        "Budgets",
                    ),
                    **_errors(400, 401, e400=_NUL_IN_URL),
                },
            }
        },
        "/v1/budgets/{agentName}": {
            "put": {
                "operationId": "setBudget",
                "summary": "Set an agent's daily (UTC day) and monthly (UTC month) limits in USD",
                "description": "A field left out is left as it is; null removes a limit.",
                "parameters": [_path("agentName", "The agent, as sessions name it")],
                "requestBody": _body(
                    _object(
                        {
                            "dailyLimitUsd": _nullable(_AMOUNT_IN),
                            "monthlyLimitUsd": _nullable(_AMOUNT_IN),
                            "warnAtPercent": _PERCENT_IN,
                        }
                    ),
                    "The limits",
                ),
                "responses": {
                    "200": _json(_ref("Budget"), "The budget"),
                    **_errors(400, 401, 404, 413, e404="No route: an agentName with a / in it is another path"),
                },
            }
        },
        "/v1/workspace-budget": {
            "put": {
                "operationId": "setWorkspaceBudget",
                "summary": "Set the workspace's daily limit in USD, all agents together",
                "description": "A field left out is left as it is; null removes the limit.",
                "requestBody": _body(
                    _object({"dailyLimitUsd": _nullable(_AMOUNT_IN), "warnAtPercent": _PERCENT_IN}), "The limit"
                ),
                "responses": {"200": _json(_ref("WorkspaceBudget"), "The workspace budget"), **_errors(400, 401, 413)},
            }
        },
        "/v1/settings": {
            "get": {
                "operationId": "getSettings",
                "summary": "The workspace's settings",
                "responses": {"200": _json(_ref("Settings"), "Settings"), **_errors(400, 401, e400=_NUL_IN_URL)},
            },
            "put": {
                "operationId": "setSettings",
                "summary": "Change the workspace's settings",
                "requestBody": _body(_object({"allowUnpricedModels": {"type": "boolean"}}), "The settings to change"),
                "responses": {"200": _json(_ref("Settings"), "Settings"), **_errors(400, 401, 413)},
            },
        },
        "/v1/prices": {
            "get": {
                "operationId": "listPrices",
                "summary": "The prices added to this workspace (they come before the overrides file and genai-prices)",
                "responses": {
                    "200": _json(_object({"prices": {"type": "array", "items": _ref("Price")}}, "all"), "Prices"),
                    **_errors(400, 401, e400=_NUL_IN_URL),
                },
            }
        },
        "/v1/prices/{model}": {
            "put": {
                "operationId": "setPrice",
                "summary": "Price a model in this workspace, in USD per million tokens",
                "parameters": [
                    _path("model", "provider/model (slash included), or model for any provider", slash=True)
                ],
                "requestBody": _body(
                    _object(
                        {
                            "inputPerMtok": _RATE_IN,
                            "outputPerMtok": _RATE_IN,
                            "cacheReadPerMtok": _nullable(_RATE_IN),
                            "cacheWritePerMtok": _nullable(_RATE_IN),
                        },
                        ["inputPerMtok", "outputPerMtok"],
                    ),
                    "The prices; without a cache price, those tokens cost the input price",
                ),
                "responses": {
                    "200": {
                        **_json(_ref("Price"), "The price"),
                    },
                    **_errors(400, 401, 404, 413, e404="No route: a model with a line feed in it is no path"),
                },
            },
            "delete": {
                "operationId": "removePrice",
                "summary": "Remove a model's price from this workspace",
                "parameters": [_path("model", "As PUT /v1/prices/{model} took it", slash=True)],
                "responses": {"204": _no_content("Removed"), **_errors(400, 401, 404, e400=_NUL_IN_URL)},
            },
        },
    },
}


def _link(operation_id: str, description: str, parameters: Any = None, body: Any = None) -> dict[str, Any]:
    link: dict[str, Any] = {"operationId": operation_id, "description": description}
    if parameters is not None:
        link["parameters"] = parameters
    if body is not None:
        link["requestBody"] = body  # the fields to send (expressions evaluated), besides any others
    return link


_STARTED = "$response.body#/id"
_SENT_SESSION = "$request.body#/sessionId"
# How an answer feeds the next request (OpenAPI links): a session's id to the calls that use it, and so on.
_LINKS: dict[tuple[str, str], dict[str, Any]] = {
    ("startSession", "201"): {
        "GetSession": _link("getSession", "Read the session", {"sessionId": _STARTED}),
        "LogEvents": _link("logEvents", "Record events of the session", body={"sessionId": _STARTED}),
        "Reserve": _link("reserve", "Reserve for an LLM call of the session", body={"sessionId": _STARTED}),
        "EndSession": _link("endSession", "End the session", {"sessionId": _STARTED}),
        "DeleteSession": _link("deleteSession", "Forget the session", {"sessionId": _STARTED}),
        "ListSessions": _link("listSessions", "The agent's sessions", {"agent": "$response.body#/agentName"}),
        "SetBudget": _link("setBudget", "Limit the agent's spend", {"agentName": "$response.body#/agentName"}),
        "SetWorkspaceBudget": _link("setWorkspaceBudget", "Limit the spend of the session's workspace"),
        "SetSettings": _link("setSettings", "Change the settings of the session's workspace"),
    },
    ("setBudget", "200"): {
        "StartSession": _link(
            "startSession",
            "Start a session of the agent, under its budget",
            body={"agentName": "$response.body#/agentName"},
        ),
    },
    ("reserve", "201"): {
        "Settle": _link(
            "logEvents",
            "Record the call, which settles the reservation",
            body={
                "sessionId": _SENT_SESSION,
                "events": [
                    {
                        "type": "llm_call",
                        "provider": "$request.body#/provider",
                        "model": "$request.body#/model",
                        "tokensIn": 1,
                        "tokensOut": 1,
                        "reservationId": "$response.body#/id",
                    }
                ],
            },
        ),
        "Release": _link(
            "releaseReservation", "Release it: the call did not run", {"reservationId": "$response.body#/id"}
        ),
    },
    ("logEvents", "202"): {
        "GetSession": _link("getSession", "Read the session with its events", {"sessionId": _SENT_SESSION}),
        "LogEvents": _link("logEvents", "Record more events of the session", body={"sessionId": _SENT_SESSION}),
        "EndSession": _link("endSession", "End the session", {"sessionId": _SENT_SESSION}),
    },
    ("endSession", "200"): {
        "GetSession": _link("getSession", "Read the ended session", {"sessionId": "$response.body#/id"}),
    },
    ("setPrice", "200"): {
        "RemovePrice": _link("removePrice", "Remove the price", {"model": "$response.body#/model"}),
    },
}


def _finish(document: dict[str, Any]) -> None:
    """Every response carries x-request-id; the answers of idempotent writes may be replays; links."""
    for operations in document["paths"].values():
        for operation in operations.values():
            idempotent = _IDEMPOTENCY in operation.get("parameters", ())
            for status, response in operation["responses"].items():
                headers = dict(_RESPONSE_HEADERS)
                # What a key replays: a success, or the 429 of a batch that was stored all the same.
                if idempotent and (
                    status.startswith("2") or (operation["operationId"] == "logEvents" and status == "429")
                ):
                    headers.update(_REPLAYED_HEADER)
                response["headers"] = headers
                links = _LINKS.get((operation["operationId"], status))
                if links is not None:
                    response["links"] = links


_finish(OPENAPI)
