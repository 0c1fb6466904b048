"""The errors the SDK raises.

Every error derives from :class:`AgentLedgerError`::

    AgentLedgerError
    ├── BudgetGuardrailError          HTTP 429 with guardrail details; never retried
    ├── APIConnectionError            no response: DNS, refused, reset
    │   └── APITimeoutError           no response within the timeout
    ├── APIResponseValidationError    2xx whose body is not what the API promises
    └── APIStatusError                any other non-2xx response
        ├── BadRequestError           400
        ├── AuthenticationError       401
        ├── PermissionDeniedError     403
        ├── NotFoundError             404
        ├── ConflictError             409
        ├── UnprocessableEntityError  422
        ├── RateLimitError            429 without guardrail details
        └── InternalServerError       5xx

``BudgetGuardrailError`` and ``AgentLedgerError`` are the two names the
published 0.0.5 client had; code that catches them keeps working.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

import httpx

__all__ = [
    "APIConnectionError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AgentLedgerError",
    "AuthenticationError",
    "BadRequestError",
    "BudgetGuardrailDetails",
    "BudgetGuardrailError",
    "ConflictError",
    "InternalServerError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "UnprocessableEntityError",
]


class AgentLedgerError(RuntimeError):
    """Base class of every error raised by the SDK (a ``RuntimeError``, as published)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class BudgetGuardrailDetails:
    """What the ledger reported when it refused a call for going over budget."""

    agent_name: str
    daily_limit_usd: float
    spent_today_usd: float
    attempted_cost_usd: float
    projected_cost_usd: float
    remaining_budget_usd: float

    @classmethod
    def from_payload(cls, payload: Any) -> Optional[BudgetGuardrailDetails]:
        """Parse the ``details`` object of a guardrail 429, or None if it is not one.

        As in the published client, any JSON object whose amounts parse as numbers
        counts; a missing amount reads as 0.
        """
        if not isinstance(payload, Mapping):
            return None
        try:
            return cls(
                agent_name=str(payload.get("agentName")),
                daily_limit_usd=float(payload.get("dailyLimitUsd", 0)),
                spent_today_usd=float(payload.get("spentTodayUsd", 0)),
                attempted_cost_usd=float(payload.get("attemptedCostUsd", 0)),
                projected_cost_usd=float(payload.get("projectedCostUsd", 0)),
                remaining_budget_usd=float(payload.get("remainingBudgetUsd", 0)),
            )
        except (TypeError, ValueError):
            return None


class BudgetGuardrailError(AgentLedgerError):
    """The agent's daily budget would be exceeded: stop spending.

    Raised when the ledger answers HTTP 429 with guardrail details, and by the
    instrumentation helpers before an LLM call of an agent whose guardrail has
    already tripped today.
    """

    status_code = 429

    def __init__(
        self,
        message: str,
        details: BudgetGuardrailDetails,
        *,
        response: Optional[httpx.Response] = None,
    ) -> None:
        super().__init__(message)
        self.details = details
        self.response = response


class UnpricedModelError(AgentLedgerError):
    """The ledger has no price for this model, and the agent has a budget: the call was stopped before it ran.

    An unpriced call cannot be counted against a budget, so it is refused by
    default. The message names the model and how to add a price (or allow
    unpriced models in the workspace).
    """

    status_code = 422

    def __init__(self, message: str, *, response: Optional[httpx.Response] = None) -> None:
        super().__init__(message)
        self.response = response


class APIConnectionError(AgentLedgerError):
    """The request got no response (DNS failure, refused or reset connection)."""

    def __init__(self, message: str = "Connection error.", *, request: Optional[httpx.Request] = None) -> None:
        super().__init__(message)
        self.request = request


class APITimeoutError(APIConnectionError):
    """The request got no response within the timeout."""

    def __init__(self, message: str = "Request timed out.", *, request: Optional[httpx.Request] = None) -> None:
        super().__init__(message, request=request)


class APIResponseValidationError(AgentLedgerError):
    """The ledger answered 2xx with a body that is not what the API promises."""

    def __init__(self, message: str, *, response: httpx.Response) -> None:
        super().__init__(message)
        self.response = response
        self.status_code = response.status_code


class APIStatusError(AgentLedgerError):
    """The ledger answered with a non-2xx status."""

    def __init__(self, message: str, *, response: httpx.Response, body: Any) -> None:
        super().__init__(message)
        self.response = response
        self.status_code = response.status_code
        self.body = body


class BadRequestError(APIStatusError):
    """HTTP 400: the request was malformed."""


class AuthenticationError(APIStatusError):
    """HTTP 401: the API key is missing, wrong or revoked."""


class PermissionDeniedError(APIStatusError):
    """HTTP 403: the API key may not do this."""


class NotFoundError(APIStatusError):
    """HTTP 404: no such session (or not in this key's workspace)."""


class ConflictError(APIStatusError):
    """HTTP 409: the request conflicts with the resource's state, e.g. an ended session."""


class UnprocessableEntityError(APIStatusError):
    """HTTP 422: the body was well-formed but its values were rejected."""


class RateLimitError(APIStatusError):
    """HTTP 429 without guardrail details: too many requests, retried with backoff."""


class InternalServerError(APIStatusError):
    """HTTP 5xx: the ledger failed; retried with backoff."""


def describe_error(exc: Optional[BaseException]) -> str:
    """How log lines name a telemetry fault, with the fix when there is an obvious one."""
    if exc is None:
        return "no session id in the response"
    if isinstance(exc, APIConnectionError) and ("127.0.0.1" in str(exc) or "localhost" in str(exc)):
        return f"{exc}. Is the local ledger running? Start it with `agent-ledger serve`"
    if isinstance(exc, AgentLedgerError):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {exc!r}"
