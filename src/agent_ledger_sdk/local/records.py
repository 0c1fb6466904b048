"""What the local ledger stores and the interface of its storage, apart from any database.

The API layer (``app.py``) and the CLI talk only to :class:`LedgerStore`; its
one implementation today is ``storage.SQLiteStore``, and another database
(PostgreSQL) would be a second one. Amounts are exact
:class:`~decimal.Decimal` US dollars (see ``money.py``).
"""

from __future__ import annotations

import abc
import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Optional, Union

from typing_extensions import Self

from . import money
from .pricing import PRICED, UNPRICED, Rates

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


# -- what the store raises ---------------------------------------------------


class StoreError(Exception):
    """A request the store refused; ``message`` says what was wrong and how to fix it."""

    status = 400

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra  # more fields of the error's JSON body


class NotFound(StoreError):
    status = 404


class Conflict(StoreError):
    status = 409


class IdempotencyMismatch(StoreError):
    status = 422


class UnpricedModel(StoreError):
    """A call the ledger cannot price, for an agent with a budget: refused unless the workspace allows it."""

    status = 422


class BudgetExceeded(StoreError):
    """An amount that does not fit a budget; ``body`` is the published guardrail body."""

    status = 429

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(str(body["error"]))
        self.body = body
        self.details: dict[str, Any] = body["details"]


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


@dataclass
class PricedEvent:
    """An event checked and priced by the API layer; the store settles its reservation and checks budgets."""

    payload: dict[str, Any]
    type: str
    step_index: Optional[int]
    cost_usd: Decimal = money.ZERO
    cost_status: Optional[str] = None  # priced | unpriced | estimated; None for events that cost nothing
    pricing_note: Optional[str] = None
    tokens_in: int = 0
    tokens_out: int = 0
    provider: str = ""
    model: str = ""
    reservation_id: Optional[str] = None
    usage_missing: bool = False
    over_budget: bool = False
    encoded: str = ""  # the payload's compact JSON, when the API layer already made it

    def __post_init__(self) -> None:
        self.cost_usd = money.exact(self.cost_usd)
        if self.type == "llm_call" and self.cost_status is None:
            self.cost_status = PRICED

    @property
    def priced(self) -> bool:
        return self.cost_status != UNPRICED

    def payload_json(self) -> str:
        return self.encoded or money.dumps(self.payload)


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
    status: int
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


class LedgerStore(abc.ABC):
    """What the API layer and the CLI need from storage."""

    @abc.abstractmethod
    def create_key(self, name: str, workspace: str = DEFAULT_WORKSPACE) -> NewApiKey: ...

    @abc.abstractmethod
    def list_keys(self) -> list[ApiKey]: ...

    @abc.abstractmethod
    def revoke_key(self, key_id: str) -> ApiKey: ...

    @abc.abstractmethod
    def authenticate(self, secret: str) -> Optional[str]:
        """The workspace of a valid, unrevoked key; None otherwise."""

    @abc.abstractmethod
    def start_session(
        self,
        workspace: str,
        agent_name: str,
        idempotency: Optional[Idempotency],
        context: Optional[SessionContext] = None,
    ) -> Reply: ...

    @abc.abstractmethod
    def end_session(
        self,
        workspace: str,
        session_id: str,
        status: str,
        error_message: Optional[str],
        idempotency: Optional[Idempotency],
    ) -> Reply: ...

    @abc.abstractmethod
    def append_events(
        self, workspace: str, session_id: str, events: Sequence[PricedEvent], idempotency: Optional[Idempotency]
    ) -> Reply:
        """Store a batch whole; a 429 reply (stored too) when an unreserved LLM call went over a budget."""

    @abc.abstractmethod
    def reserve(self, workspace: str, request: ReservationRequest, idempotency: Optional[Idempotency]) -> Reply: ...

    @abc.abstractmethod
    def release(self, workspace: str, reservation_id: str, idempotency: Optional[Idempotency]) -> Reply: ...

    @abc.abstractmethod
    def get_session(self, session_id: str, workspace: Optional[str] = None) -> dict[str, Any]: ...

    @abc.abstractmethod
    def list_sessions(self, query: SessionQuery) -> dict[str, Any]: ...

    @abc.abstractmethod
    def set_budget(
        self,
        workspace: str,
        agent_name: str,
        daily_limit_usd: Amount = UNSET,
        *,
        monthly_limit_usd: Amount = UNSET,
        warn_at_percent: Amount = UNSET,
    ) -> dict[str, Any]:
        """Set an agent's limits; None removes one, UNSET leaves it as it is."""

    @abc.abstractmethod
    def budgets(self, workspace: Optional[str] = None) -> list[dict[str, Any]]:
        """Each agent with a limit or spend this month: its limits, spend, reserved amount and what remains."""

    @abc.abstractmethod
    def set_workspace_budget(
        self, workspace: str, daily_limit_usd: Amount = UNSET, *, warn_at_percent: Amount = UNSET
    ) -> dict[str, Any]: ...

    @abc.abstractmethod
    def workspace_budgets(self, workspace: Optional[str] = None) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    def settings(self, workspace: str) -> dict[str, Any]: ...

    @abc.abstractmethod
    def set_settings(self, workspace: str, *, allow_unpriced_models: Optional[bool] = None) -> dict[str, Any]: ...

    @abc.abstractmethod
    def prices(self, workspace: str) -> dict[str, Rates]:
        """The workspace's own prices, by key (``provider/model`` or ``model``, normalised)."""

    @abc.abstractmethod
    def set_price(self, workspace: str, name: str, rates: Rates) -> None: ...

    @abc.abstractmethod
    def remove_price(self, workspace: str, name: str) -> bool: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
