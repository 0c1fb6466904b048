"""The records and errors of the ledger's service layer, apart from HTTP and any database.

The API layer (``app.py``) and the CLI talk to ``service.LedgerService``, which
raises the errors below and returns these records; storage is behind
``store.Store``. Amounts are exact :class:`~decimal.Decimal` US dollars (see
``money.py``).
"""

from __future__ import annotations

import datetime
import enum
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Optional, Union

from . import money
from .pricing import PRICED, UNPRICED

DEFAULT_WORKSPACE = "default"
# A reservation not settled or released within this time is released by the ledger.
RESERVATION_TTL_SECONDS = 600
# How long a client may remember what the ledger said about an agent's budget (the "ttlSeconds" it answers).
BUDGET_CACHE_SECONDS = 60


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()  # a setting left as it is


# What the ledger adds to each event it returns (GET /v1/sessions/{id}), beside what the client sent.
LEDGER_EVENT_FIELDS = ("costUsd", "costStatus", "overBudget", "priced", "pricingNote", "receivedAt")


# -- what the service raises ------------------------------------------------
# Domain errors: what went wrong, in words a user can act on. Which HTTP status each
# becomes is the API layer's business (app.py), not theirs.


class LedgerError(Exception):
    """A request the ledger refused; ``message`` says what was wrong and how to fix it."""

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra  # more fields of the error's JSON body


StoreError = LedgerError  # the name earlier versions used


class BadInput(LedgerError):
    """A request that is malformed or breaks a rule of the protocol."""


class TooLarge(BadInput):
    """A request, or a part of it, over a size limit."""


class NotFound(LedgerError):
    pass


class Conflict(LedgerError):
    pass


class Unauthorized(LedgerError):
    """A missing, unknown or revoked API key."""


KEY_HINT = "Create a key with `agent-ledger keys create --name NAME` and send it in the x-api-key header."
INVALID_KEY = f"Invalid or revoked API key. {KEY_HINT}"


class IdempotencyMismatch(LedgerError):
    pass


class UnpricedModel(LedgerError):
    """A call the ledger cannot price, for an agent with a budget: refused unless the workspace allows it."""


class BudgetExceeded(LedgerError):
    """An amount that does not fit a budget; ``body`` is the published guardrail body."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(str(body["error"]))
        self.body = body
        self.details: dict[str, Any] = body["details"]


class Outcome(enum.IntEnum):
    """How a write went. The values are the protocol's HTTP statuses, stored with idempotency records so
    that a replay answers exactly as the first time."""

    OK = 200
    CREATED = 201
    ACCEPTED = 202
    DONE = 204  # nothing to say
    OVER_BUDGET = 429  # recorded, and the client is told to stop


# -- records -----------------------------------------------------------------


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    workspace: str
    created_at: str
    revoked_at: Optional[str]


@dataclass(frozen=True)
class NewApiKey:
    key: ApiKey
    secret: str  # shown once, never stored


class PricedEvent:
    """An event checked and priced by the API layer; the store settles its reservation and checks budgets.

    A plain class with ``__slots__`` rather than a dataclass: one is made for every event ingested, and
    this one is made in half the time (a dataclass's keyword ``__init__`` and ``__post_init__``)."""

    __slots__ = (  # noqa: RUF023 - in the order of the arguments
        "payload",
        "type",
        "step_index",
        "cost_usd",
        "cost_status",
        "pricing_note",
        "tokens_in",
        "tokens_out",
        "provider",
        "model",
        "reservation_id",
        "usage_missing",
        "over_budget",
        "encoded",
    )

    def __init__(
        self,
        payload: dict[str, Any],
        type: str,
        step_index: Optional[int],
        cost_usd: Union[Decimal, float, int, str] = money.ZERO,
        cost_status: Optional[str] = None,  # priced | unpriced | estimated; None for events that cost nothing
        pricing_note: Optional[str] = None,
        tokens_in: int = 0,
        tokens_out: int = 0,
        provider: str = "",
        model: str = "",
        reservation_id: Optional[str] = None,
        usage_missing: bool = False,
        over_budget: bool = False,
        encoded: str = "",  # the payload's compact JSON, when the API layer already made it
    ) -> None:
        self.payload = payload
        self.type = type
        self.step_index = step_index
        self.cost_usd: Decimal = cost_usd if cost_usd.__class__ is Decimal else money.exact(cost_usd)
        self.cost_status = PRICED if cost_status is None and type == "llm_call" else cost_status
        self.pricing_note = pricing_note
        self.tokens_in = tokens_in
        self.tokens_out = tokens_out
        self.provider = provider
        self.model = model
        self.reservation_id = reservation_id
        self.usage_missing = usage_missing
        self.over_budget = over_budget
        self.encoded = encoded

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"PricedEvent({fields})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not PricedEvent:
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.__slots__)

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass was

    @property
    def priced(self) -> bool:
        return self.cost_status != UNPRICED


@dataclass(frozen=True)
class ReservationRequest:
    """``POST /v1/reservations``, checked and priced: ``amount`` None means the model has no price."""

    session_id: str
    provider: str
    model: str
    amount: Optional[Decimal]
    max_cost_usd: Optional[Decimal] = None
    step_index: Optional[int] = None
    note: Optional[str] = None


@dataclass(frozen=True)
class Idempotency:
    key: str
    fingerprint: str  # method, path and body: the same key with another request is refused


@dataclass
class Reply:
    status: int  # an Outcome
    body: dict[str, Any]
    replayed: bool = False
    raw: Optional[str] = None  # the JSON first sent, when this is a replay


@dataclass(frozen=True)
class SessionContext:
    """Who and what a session is for, as ``POST /v1/sessions`` received it (already checked)."""

    user_id: Optional[str] = None
    tags: tuple[str, ...] = ()
    metadata: Optional[dict[str, Any]] = None
    parent_session_id: Optional[str] = None
    max_cost_usd: Optional[Decimal] = None
    warn_at_percent: Optional[Decimal] = None


@dataclass
class SessionQuery:
    agent_name: Optional[str] = None
    status: Optional[str] = None
    user_id: Optional[str] = None
    tags: tuple[str, ...] = ()  # a session must carry every one of them
    started_after: Optional[str] = None
    started_before: Optional[str] = None
    limit: int = 50
    cursor: Optional[int] = None
    workspace: Optional[str] = None  # None: every workspace (the CLI)


Amount = Union[Decimal, float, int, None]
