"""The ledger's rules, between the HTTP API (or the CLI) and storage.

:class:`LedgerService` checks what clients send (``validation.py``), prices LLM
calls (``pricing.py``), applies budgets and reservations (``budgets.py``) and
idempotency, and keeps the records in a :class:`~.store.Store`. It raises the
domain errors of ``records.py`` and knows nothing of HTTP: statuses are the API
layer's business. Every method is synchronous and thread-safe; the API layer
runs them off its event loop.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Callable, Optional

from .._constants import MAX_EVENT_BYTES
from .._local_key import LOCAL_KEY_PREFIX
from . import money
from .budgets import (
    AGENT_DAILY,
    AGENT_MONTHLY,
    SESSION,
    WORKSPACE_DAILY,
    Budget,
    day_of,
    iso,
    month_of,
    next_utc_midnight,
    next_utc_month,
)
from .pricing import ESTIMATED, UNPRICED, BatchPrices, PriceBook, Rates, TokenUsage, normalise_name, rates_from
from .records import (
    BUDGET_CACHE_SECONDS,
    DEFAULT_WORKSPACE,
    INVALID_KEY,
    RESERVATION_TTL_SECONDS,
    UNSET,
    Amount,
    ApiKey,
    BadInput,
    BudgetExceeded,
    Conflict,
    Idempotency,
    IdempotencyMismatch,
    LedgerError,
    NewApiKey,
    NotFound,
    Outcome,
    PricedEvent,
    Reply,
    ReservationRequest,
    SessionContext,
    SessionQuery,
    TooLarge,
    Unauthorized,
    UnpricedModel,
    utc_now,
)
from .store.base import Store
from .store.sql import (
    RollupRow,
    SessionFilter,
    SessionSearch,
    StoredEvent,
    Tx,
    amount,
    like_pattern,
    optional_amount,
    reserve_at_once_values,
    stored_rows,
)
from .validation import (
    MAX_SAFE_INTEGER,
    MAX_TOKENS,
    MAX_USER_ID,
    EventsRejected,
    Rejection,
    check_event,
    check_session_context,
    shown,
    usd_amount,
    warn_percent,
)

if TYPE_CHECKING:
    from . import otlp

logger = logging.getLogger("agent_ledger_sdk.local")

Clock = Callable[[], datetime.datetime]
KEY_PREFIX = LOCAL_KEY_PREFIX  # new keys: al_local_<id>_<secret>
LEGACY_KEY_PREFIX = "al_"  # keys of earlier versions, al_<id>_<secret>, still authenticate
# Settled, released and expired reservations are remembered this long (DELETE answers 204, not 404).
RESERVATION_MEMORY = datetime.timedelta(days=1)
# An Idempotency-Key is honoured this long; after it, the key may be used for a new request.
IDEMPOTENCY_LIFETIME = datetime.timedelta(hours=24)
FORGET_RESERVATIONS = datetime.timedelta(minutes=1)  # between two sweeps of a workspace's long-expired reservations
_FORGET_EVERY = 1000  # writes between two sweeps of expired idempotency records

MAX_EVENTS_PER_REQUEST = 10_000
MAX_AGENT_NAME = 200
MAX_ERROR_MESSAGE = 10_000
DEFAULT_EVENTS_PAGE = 500
MAX_EVENTS_PAGE = 2000
# The dashboard's reads.
SEARCH_SECONDS = 0.25  # a text search reads events for at most this long a page, then says how far it got
SEARCH_BATCH = 200  # sessions whose events a text search reads at once
MAX_LINKED_SESSIONS = 200  # sub-agent sessions listed on a session's page
MAX_PREFIX_CANDIDATES = 10  # sessions listed when an id prefix matches several
ROLLUP_BATCH = 5000  # LLM calls the cost rollup counts per write transaction
CATCH_UP_SECONDS = 2.0  # how long a read of the costs may spend bringing the rollup up to date
TOTALS_CACHE_FROM = 1000  # sessions of this many events have their totals remembered (per process)
TOTALS_CACHE_SIZE = 64  # sessions whose totals are remembered
PRICE_FIELDS = ("inputPerMtok", "outputPerMtok", "cacheReadPerMtok", "cacheWritePerMtok")
# OpenTelemetry ingest.
_OTEL_NAMESPACE = uuid.UUID("6f9d3c2e-5b8a-4e1f-9c47-0a1b2c3d4e5f")  # sessions' ids: uuid5 of workspace and key
_AGENT_SPAN = "gen_ai.agent.name"  # (metadata.agentNameFrom) named by an agent span
_SPAN_LOOKUP = 500  # span ids looked up at once
MAX_CONVERSATION_KEY = 256  # a longer conversation id is keyed by its hash
_CONTENT = ("prompt", "response", "systemInstructions", "toolInput", "toolOutput")

__all__ = ["IDEMPOTENCY_LIFETIME", "LedgerService", "PlannedReservation", "key_id_of"]


def stamp(moment: datetime.datetime) -> str:
    """A fixed-width UTC time: such stamps compare as text in the order of time (``%Y-%m-%dT%H:%M:%S.%fZ``,
    written without strftime: a third of the time, and twice on the path of each request)."""
    m = moment.astimezone(datetime.timezone.utc)
    return f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}.{m.microsecond:06d}Z"


def key_id_of(secret: str) -> Optional[str]:
    """The id inside a key of either form (``al_local_<id>_<secret>`` or ``al_<id>_<secret>``), or None."""
    for prefix in (KEY_PREFIX, LEGACY_KEY_PREFIX):
        if secret.startswith(prefix):
            key_id, separator, rest = secret[len(prefix) :].partition("_")
            return key_id if key_id and separator and rest else None
    return None


def _hash_secret(secret: str) -> str:
    # Keys are 256-bit random tokens: a fast hash is the right tool (as for GitHub tokens).
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _optional_amount(value: Amount, name: str) -> Optional[Decimal]:
    if value is None:
        return None
    exact = money.exact(value)
    if not exact.is_finite() or exact < 0:
        raise BadInput(f"{name} must be a non-negative number")
    return exact


def _storable(name: str, value: str) -> str:
    """``value`` unless it holds U+0000, which no text column can store (PostgreSQL refuses it)."""
    if "\x00" in value:
        raise BadInput(f'"{name}" contains U+0000 (a NUL character), which the ledger cannot store; remove it.')
    return value


@dataclass
class _Limits:
    """The budgets that apply to one session's calls right now, and the workspace's setting for unpriced models."""

    budgets: list[Budget] = field(default_factory=list)
    allow_unpriced: bool = False


_CURSOR = re.compile(r"([0-9]+)\.([0-9]+)", re.ASCII)  # position.seq, as nextEventsCursor spells it


def _events_cursor(text: Optional[str]) -> Optional[tuple[int, int]]:
    if not text:
        return None
    match = _CURSOR.fullmatch(text) if len(text) <= 4000 else None  # (int() refuses 4,300 digits)
    found = (int(match[1]), int(match[2])) if match is not None else (-1, -1)
    if not all(0 <= part < 2**63 for part in found):
        raise BadInput(f"eventsCursor {shown(text)} is not one this ledger gave; use the nextEventsCursor it returned.")
    return found


class Workspace(str):
    """A workspace's name as :meth:`LedgerService.authenticate` found it, with the version of its prices then: a
    request's prices are those of that version or a later one, never older (kept by the service until the
    version changes, so a request seldom reads them)."""

    prices_version: Optional[int] = None


# The workspaces whose prices one service keeps at most (a ledger has a handful; beyond, it starts over).
_PRICES_KEPT = 1024


_KEPT = 4096  # the keys' workspaces and the sessions' agents one service keeps at most (beyond, it starts over)


def _keep(kept: dict[str, str], key: str, value: str) -> None:
    if len(kept) >= _KEPT:
        kept.clear()
    kept[key] = value


def _periods(agent: str, now: datetime.datetime) -> list[tuple[str, str, str]]:
    """The spend periods a budget check of ``agent`` reads at ``now``: (scope, subject, period) each."""
    day = day_of(now)
    return [(AGENT_DAILY, agent, day), (AGENT_MONTHLY, agent, month_of(now)), (WORKSPACE_DAILY, "", day)]


class LedgerService:
    """The ledger's rules over one :class:`~.store.Store` and one price book."""

    def __init__(
        self,
        store: Store,
        prices: Optional[PriceBook] = None,
        *,
        clock: Clock = utc_now,
        reservation_ttl_seconds: float = RESERVATION_TTL_SECONDS,
        metrics: Any = None,
    ) -> None:
        self.store = store
        self.price_book = prices if prices is not None else PriceBook()
        self._clock = clock
        self.reservation_ttl = datetime.timedelta(seconds=reservation_ttl_seconds)
        self.metrics = metrics
        self._writes = 0
        self._writes_lock = threading.Lock()
        # A large session's totals over every event, by id, with the event count they were read at.
        self._totals: OrderedDict[str, tuple[int, dict[str, Any]]] = OrderedDict()
        self._totals_lock = threading.Lock()
        # When (the ledger's clock) this process last forgot each workspace's long-expired reservations.
        self._reservations_forgotten: dict[str, datetime.datetime] = {}
        # Each workspace's own prices as last read, with their version (Tx.prices_version).
        self._prices: dict[str, tuple[int, dict[str, Rates]]] = {}
        # What never changes and lets a reservation send its reads ahead (Store.sends_ahead): the workspace of
        # each key this process authenticated, and the agent of each session it reserved for.
        self._key_workspaces: dict[str, str] = {}
        self._session_agents: dict[str, str] = {}

    def _now(self) -> datetime.datetime:
        return self._clock()

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> LedgerService:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- keys --------------------------------------------------------------------------

    def create_key(self, name: str, workspace: str = DEFAULT_WORKSPACE) -> NewApiKey:
        key_id = secrets.token_hex(6)
        secret = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        created = iso(self._now())
        assert created is not None
        with self.store.write(None) as tx:
            tx.insert_key(key_id, name, workspace, _hash_secret(secret), created)
        return NewApiKey(ApiKey(key_id, name, workspace, created, None), secret)

    def list_keys(self) -> list[ApiKey]:
        with self.store.read() as tx:
            rows = tx.keys()
        return [ApiKey(r["id"], r["name"], r["workspace"], r["created_at"], r["revoked_at"]) for r in rows]

    def revoke_key(self, key_id: str) -> ApiKey:
        with self.store.write(None) as tx:
            row = tx.key(key_id)
            if row is None:
                raise NotFound(f"No API key with id {key_id!r}.")
            revoked: str = row["revoked_at"] or iso(self._now()) or ""
            tx.revoke_key(key_id, revoked)
        return ApiKey(row["id"], row["name"], row["workspace"], row["created_at"], revoked)

    def authenticate(self, secret: str) -> Optional[Workspace]:
        """The workspace of a valid, unrevoked key; None otherwise (in constant time for a known id).

        The same statement reads the version of the workspace's prices: :meth:`prices` of the workspace returned
        reads them only when they changed since this service last did."""
        key_id = key_id_of(secret)
        if key_id is None:
            return None
        return self._checked_key(key_id, secret, self.store.key_of_request(key_id))

    def _checked_key(self, key_id: str, secret: str, row: Optional[Mapping[str, Any]]) -> Optional[Workspace]:
        """The workspace of ``secret`` if ``row`` (``Tx.key_of_request``) is its valid, unrevoked key."""
        expected = row["key_hash"] if row is not None else _hash_secret("no such key")
        matches = hmac.compare_digest(expected, _hash_secret(secret))
        if row is None or not matches or row["revoked_at"] is not None:
            self._key_workspaces.pop(key_id, None)
            return None
        workspace = Workspace(row["workspace"])
        workspace.prices_version = int(row["prices_version"])
        if key_id not in self._key_workspaces:
            _keep(self._key_workspaces, key_id, workspace)
        return workspace

    # -- idempotency -------------------------------------------------------------------------

    def _replay(
        self, tx: Tx, workspace: str, idempotency: Optional[Idempotency], now: datetime.datetime
    ) -> Optional[Reply]:
        if idempotency is None:
            return None
        row = tx.idempotency(workspace, idempotency.key)
        if row is None or row["created_at"] < stamp(now - IDEMPOTENCY_LIFETIME):
            return None
        if row["fingerprint"] != idempotency.fingerprint:
            raise IdempotencyMismatch(
                f"Idempotency-Key {idempotency.key!r} was already used for a different request; "
                "use a new key for each new request (and the same key only to retry it)."
            )
        return Reply(row["status"], json.loads(row["body"]), replayed=True, raw=row["body"])

    def _remember(
        self, tx: Tx, workspace: str, idempotency: Optional[Idempotency], reply: Reply, now: datetime.datetime
    ) -> Reply:
        if idempotency is not None:
            tx.remember(
                workspace,
                idempotency.key,
                idempotency.fingerprint,
                int(reply.status),
                money.dumps(reply.body),
                stamp(now),
            )
            self._remembered(tx, now)
        return reply

    def _remembered(self, tx: Tx, now: datetime.datetime) -> None:
        """Count a reply remembered under an idempotency key; every _FORGET_EVERY, forget those past their lifetime."""
        if self._idempotency_sweep_due():
            tx.forget_idempotency(stamp(now - IDEMPOTENCY_LIFETIME))

    def _idempotency_sweep_due(self) -> bool:
        with self._writes_lock:
            self._writes += 1
            return self._writes % _FORGET_EVERY == 0

    # -- sessions --------------------------------------------------------------------------

    def start_session_request(
        self, workspace: str, body: Mapping[str, Any], idempotency: Optional[Idempotency]
    ) -> Reply:
        """``POST /v1/sessions``: check the body, then start the session."""
        agent_name = body.get("agentName")
        if not isinstance(agent_name, str) or not agent_name.strip():
            raise BadInput(
                '"agentName" is required: a non-empty string naming the agent, e.g. {"agentName": "support-bot"}.'
            )
        if len(agent_name) > MAX_AGENT_NAME:
            raise BadInput(f'"agentName" is {len(agent_name)} characters; the limit is {MAX_AGENT_NAME}.')
        context = check_session_context(dict(body))
        return self.start_session(workspace, _storable("agentName", agent_name), idempotency, context)

    def start_session(
        self,
        workspace: str,
        agent_name: str,
        idempotency: Optional[Idempotency] = None,
        context: Optional[SessionContext] = None,
    ) -> Reply:
        context = context or SessionContext()
        metadata = context.metadata or {}
        now = self._now()
        with self.store.write(workspace) as tx:
            replay = self._replay(tx, workspace, idempotency, now)
            if replay is not None:
                return replay
            session_id = str(uuid.uuid4())
            started = iso(now)
            values = {
                "id": session_id,
                "workspace": workspace,
                "agent_name": agent_name,
                "status": "running",
                "started_at": started,
                "user_id": context.user_id,
                "tags": _compact(list(context.tags)),
                "metadata": _compact(metadata),
                "parent_session_id": context.parent_session_id,
                "max_cost": None if context.max_cost_usd is None else money.text(context.max_cost_usd),
                "warn_at_percent": None if context.warn_at_percent is None else money.text(context.warn_at_percent),
            }
            tx.insert_session(values)
            row = self._session_row(tx, workspace, session_id)
            body = {
                "id": session_id,
                "agentName": agent_name,
                "status": "running",
                "startedAt": started,
                "userId": context.user_id,
                "tags": list(context.tags),
                "metadata": metadata,
                "parentSessionId": context.parent_session_id,
                "maxCostUsd": context.max_cost_usd,
                "budgeted": bool(self._limits(tx, workspace, row, now, spending=False).budgets),
            }
            reply = self._remember(tx, workspace, idempotency, Reply(Outcome.CREATED, body), now)
        if self.metrics is not None:
            self.metrics.session_started()
        return reply

    @staticmethod
    def _session_row(tx: Tx, workspace: Optional[str], session_id: str, *, for_update: bool = False) -> dict[str, Any]:
        row = tx.session(workspace, session_id, for_update=for_update)
        if row is None:
            raise NotFound(
                f"Session {session_id!r} not found. Use the id that POST /v1/sessions returned, "
                "with an API key of the same workspace."
            )
        return row

    @staticmethod
    def _running(row: Mapping[str, Any], what: str) -> None:
        if row["status"] != "running":
            raise Conflict(
                f"Session {row['id']!r} already ended with status {row['status']!r}; {what} only "
                "a running session. Start a new session for new work."
            )

    def end_session_request(
        self, workspace: str, session_id: str, body: Mapping[str, Any], idempotency: Optional[Idempotency]
    ) -> Reply:
        """``POST /v1/sessions/{id}/end``."""
        status = body.get("status")
        if status not in ("success", "error"):
            raise BadInput(f'"status" must be "success" or "error", got {shown(status)}.')
        message = body.get("errorMessage")
        if message is not None and not isinstance(message, str):
            raise BadInput(f'"errorMessage" must be a string or null, got {type(message).__name__}.')
        if message is not None and len(message) > MAX_ERROR_MESSAGE:
            message = message[:MAX_ERROR_MESSAGE] + f"...[truncated {len(message) - MAX_ERROR_MESSAGE} chars]"
        if message is not None:
            message = message.replace("\x00", "\\u0000")  # free text: kept, with the NUL spelled out
        return self.end_session(workspace, session_id, str(status), message, idempotency)

    def end_session(
        self,
        workspace: str,
        session_id: str,
        status: str,
        error_message: Optional[str],
        idempotency: Optional[Idempotency] = None,
    ) -> Reply:
        now = self._now()
        with self.store.write(workspace) as tx:
            replay = self._replay(tx, workspace, idempotency, now)
            if replay is not None:
                return replay
            row = self._session_row(tx, workspace, session_id, for_update=True)
            if row["status"] != "running":
                raise Conflict(
                    f"Session {session_id!r} already ended with status {row['status']!r}; "
                    "a session ends once. Start a new session for new work."
                )
            ended = iso(now)
            assert ended is not None
            tx.end_session(session_id, status, error_message, ended)
            # An ended session takes no more events: what it still holds can never be settled.
            tx.release_session_reservations(workspace, session_id)
            body = {"id": session_id, "status": status, "errorMessage": error_message, "endedAt": ended}
            return self._remember(tx, workspace, idempotency, Reply(Outcome.OK, body), now)

    def delete_session(self, workspace: Optional[str], session_id: str) -> None:
        """Forget a session and its events (retention). What it spent stays spent: budgets are not refunded."""
        with self.store.write(workspace) as tx:
            row = self._session_row(tx, workspace, session_id, for_update=True)
            tx.delete_session(row["id"])

    def prune(self, older_than: datetime.timedelta, *, batch: int = 500) -> dict[str, int]:
        """Forget sessions that ended more than ``older_than`` ago, and expired idempotency records."""
        now = self._now()
        cutoff = iso(now - older_than)
        assert cutoff is not None
        removed = 0
        while True:
            with self.store.write(None) as tx:
                ids = tx.sessions_ended_before(cutoff, batch)
                for session_id in ids:
                    tx.delete_session(session_id)
            removed += len(ids)
            if len(ids) < batch:
                break
        with self.store.write(None) as tx:
            forgotten = tx.forget_idempotency(stamp(now - IDEMPOTENCY_LIFETIME))
            tx.forget_refusals(stamp(now - older_than))
        return {"sessions": removed, "idempotencyRecords": forgotten}

    # -- budgets: what applies, what is spent and held ---------------------------------------

    def _forget_expired_reservations(self, tx: Tx, workspace: str, now: datetime.datetime) -> None:
        """Forget the workspace's reservations that expired over RESERVATION_MEMORY ago: at most once a
        FORGET_RESERVATIONS per workspace and process (they are never read as held: this is only
        housekeeping, amortised off the path of each budgeted call)."""
        if self._reservations_sweep_due(workspace, now):
            tx.forget_reservations(workspace, stamp(now - RESERVATION_MEMORY))

    def _reservations_sweep_due(self, workspace: str, now: datetime.datetime) -> bool:
        with self._writes_lock:
            last = self._reservations_forgotten.get(workspace)
            if last is not None and datetime.timedelta(0) <= now - last < FORGET_RESERVATIONS:
                return False
            self._reservations_forgotten[workspace] = now
            return True

    def _limits(
        self, tx: Tx, workspace: str, session: Mapping[str, Any], now: datetime.datetime, *, spending: bool
    ) -> _Limits:
        """The budgets of ``session``'s calls, with their spend and reservations (only if ``spending``).

        One statement reads them all (``Tx.budget_state``): the agent's and the workspace's limits, the
        spend of today and this month, and the reservations held now."""
        agent = session["agent_name"]
        state = tx.budget_state(
            workspace, agent, _periods(agent, now) if spending else (), stamp(now), session["id"] if spending else None
        )
        agent_row = next((r for r in state if r["kind"] == "agent"), None)
        settings = next((r for r in state if r["kind"] == "settings"), None)
        found = _Limits(allow_unpriced=bool(int(settings["c"])) if settings is not None else False)
        wanted: list[tuple[str, Any, Any]] = []
        if agent_row is not None:
            wanted.append((AGENT_DAILY, agent_row["a"], agent_row["c"]))
            wanted.append((AGENT_MONTHLY, agent_row["b"], agent_row["c"]))
        if settings is not None:
            wanted.append((WORKSPACE_DAILY, settings["a"], settings["b"]))
        wanted.append((SESSION, session["max_cost"], session["warn_at_percent"]))
        wanted = [entry for entry in wanted if entry[1] is not None]
        if not wanted or not spending:
            found.budgets = [
                Budget(kind, amount(limit), money.ZERO, money.ZERO, None, None, agent, "") for kind, limit, _ in wanted
            ]
            return found
        self._forget_expired_reservations(tx, workspace, now)  # housekeeping where budgets are used (not read here)
        spent = {(r["b"], r["c"]): amount(r["a"]) for r in state if r["kind"] == "spend"}
        held = held_by_agent = held_by_session = money.ZERO  # the workspace's, the agent's, the session's
        for r in state:
            if r["kind"] == "held":
                reserved = money.multiply(amount(r["a"]), Decimal(int(r["d"])))
                held = money.add(held, reserved)
                if r["b"]:
                    held_by_agent = money.add(held_by_agent, reserved)
                if r["c"]:
                    held_by_session = money.add(held_by_session, reserved)
        for kind, limit, warn in wanted:
            resets: Optional[datetime.datetime]
            if kind == AGENT_DAILY:
                used = spent.get((AGENT_DAILY, agent), money.ZERO)
                reserved = held_by_agent
                resets, subject = next_utc_midnight(now), agent
            elif kind == AGENT_MONTHLY:
                used = spent.get((AGENT_MONTHLY, agent), money.ZERO)
                reserved = held_by_agent
                resets, subject = next_utc_month(now), agent
            elif kind == WORKSPACE_DAILY:
                used = spent.get((WORKSPACE_DAILY, ""), money.ZERO)
                reserved = held
                resets, subject = next_utc_midnight(now), workspace
            else:
                used = amount(session["cost"])
                reserved = held_by_session
                resets, subject = None, session["id"]
            found.budgets.append(
                Budget(
                    kind=kind,
                    limit=amount(limit),
                    spent=used,
                    reserved=reserved,
                    warn_at_percent=optional_amount(warn),
                    resets_at=resets,
                    agent_name=agent,
                    subject=subject,
                )
            )
        return found

    # -- events ------------------------------------------------------------------------------

    def log_events_request(
        self,
        workspace: str,
        body: Mapping[str, Any],
        idempotency: Optional[Idempotency],
        *,
        parsed_by_orjson: bool = False,
        priced: bool = False,
    ) -> Reply:
        """``POST /v1/events``: check every event (reporting every bad one), price the LLM calls, record.

        ``parsed_by_orjson``: ``body.parse_json_body`` read the body with orjson (see ``check_event``).
        ``priced``: the reply lists each LLM call's cost by span id (``priced``: what the SDK's
        OpenTelemetry spans carry), as the ``Agent-Ledger-Priced: true`` request header asks."""
        session_id = body.get("sessionId")
        if not isinstance(session_id, str) or not session_id:
            raise BadInput('"sessionId" is required: the id that POST /v1/sessions returned.')
        _storable("sessionId", session_id)
        events = body.get("events")
        if not isinstance(events, list) or not events:
            raise BadInput('"events" must be a non-empty list of event objects.')
        if len(events) > MAX_EVENTS_PER_REQUEST:
            raise TooLarge(f"{len(events)} events in one request; the limit is {MAX_EVENTS_PER_REQUEST}.")
        checked: list[PricedEvent] = []
        rejections: list[tuple[int, Rejection]] = []
        for position, event in enumerate(events):
            try:
                checked.append(check_event(position, event, parsed_by_orjson=parsed_by_orjson))
            except Rejection as rejection:
                rejections.append((position, rejection))
        if rejections:
            raise EventsRejected(rejections)
        calls = [event for event in checked if event.type == "llm_call"]
        if calls:
            self._price_calls(calls, self.price_book.batch(self.prices(workspace)))
        return self.append_events(workspace, session_id, checked, idempotency, priced=priced)

    @classmethod
    def _price_calls(cls, calls: Sequence[PricedEvent], prices: BatchPrices) -> None:
        """Price checked llm_calls. The common case inline: a model with the workspace's own flat rates (its
        ``Rates`` looked up once a batch), a call with its usage; no Price made, nothing kept for the batch
        (check_event left the counts ints, the status PRICED and no note). Any other call: :meth:`_price`."""
        flat: dict[tuple[str, str], Optional[Rates]] = {}
        for event in calls:
            model = (event.provider, event.model)
            rates = flat[model] if model in flat else flat.setdefault(model, prices.flat_rates(*model))
            if rates is None or event.usage_missing:
                cls._price(event, prices)
                continue
            payload = event.payload
            event.cost_usd = rates.cost_of(
                event.tokens_in,
                event.tokens_out,
                payload.get("cacheReadTokens") or 0,
                payload.get("cacheWriteTokens") or 0,
            )

    @staticmethod
    def _price(checked: PricedEvent, prices: BatchPrices) -> None:
        """Price an llm_call from its provider, model and full usage (an estimate when its usage is missing)."""
        if checked.usage_missing:
            price = prices.estimate(checked.provider, checked.model, checked.tokens_in, checked.tokens_out)
        else:
            payload = checked.payload  # its counts are ints: check_event made them so
            price = prices.price(
                checked.provider,
                checked.model,
                checked.tokens_in,
                checked.tokens_out,
                int(payload.get("cacheReadTokens") or 0),
                int(payload.get("cacheWriteTokens") or 0),
            )
        checked.cost_usd, checked.cost_status, checked.pricing_note = price.cost_usd, price.status, price.note

    def append_events(
        self,
        workspace: str,
        session_id: str,
        events: Sequence[PricedEvent],
        idempotency: Optional[Idempotency] = None,
        *,
        priced: bool = False,
    ) -> Reply:
        """Store a batch whole; an OVER_BUDGET reply (stored too) when an unreserved LLM call went over a budget.

        ``priced``: the reply lists the cost of each LLM call that has a span id (see log_events_request)."""
        now = self._now()
        received = iso(now)
        assert received is not None
        batch = _Batch.of(session_id, received, events)  # before the write: its lock is held for less
        # The workspace's lock (PostgreSQL) only when money or a retry is at stake: an idempotency key, a
        # reservation to settle or a budget to check. Otherwise the session's row lock orders the writes
        # of a session, and spend is added in place, so that replicas ingest side by side. The lock is
        # always taken before the session's row, as every other write of the workspace takes them.
        with self.store.pipelined_write(workspace if idempotency is not None else None) as tx:
            replay = self._replay(tx, workspace, idempotency, now)
            if replay is not None:
                return replay
            if idempotency is None and tx.locks_workspaces and self._money_at_stake(tx, workspace, session_id, events):
                tx.lock_workspace(workspace)
            row = self._session_row(tx, workspace, session_id, for_update=True)
            self._running(row, "events can only be added to")
            refusal, stored, cost = self._store_events(tx, workspace, row, events, received, now, batch=batch)
            body: dict[str, Any] = {"accepted": len(events), "costUsd": cost}
            costs = _priced(events) if priced else None
            if costs:
                body["priced"] = costs
            if refusal is None:
                reply = self._remember(tx, workspace, idempotency, Reply(Outcome.ACCEPTED, body), now)
            else:
                # The calls ran (no reservation stopped them): they are recorded and counted, and the
                # published client is told to stop with its 429.
                over = [position for position, e in enumerate(events) if e.over_budget]
                reply = self._remember(
                    tx,
                    workspace,
                    idempotency,
                    Reply(Outcome.OVER_BUDGET, {**refusal, **body, "overBudgetEvents": over}),
                    now,
                )
        self._count_ingested(stored)
        if self.metrics is not None and refusal is not None:
            self.metrics.guardrail_refusal("budget_exceeded")
        return reply

    def _count_ingested(self, stored: Sequence[PricedEvent]) -> None:
        if self.metrics is not None and stored:
            by_type: dict[str, int] = {}
            for e in stored:
                by_type[e.type] = by_type.get(e.type, 0) + 1
            self.metrics.events_ingested(len(stored), by_type)

    def _store_events(
        self,
        tx: Tx,
        workspace: str,
        row: Mapping[str, Any],
        events: Sequence[PricedEvent],
        received: str,
        now: datetime.datetime,
        *,
        refuse_unpriced: bool = True,
        batch: Optional[_Batch] = None,
    ) -> tuple[Optional[dict[str, Any]], list[PricedEvent], Decimal]:
        """Charge a batch's LLM calls, store its events (with any budget warnings) and add to the session's totals.

        ``batch``: the events' rows and totals, made before the transaction; made again here if charging
        changed an event. Returns the guardrail body of a call over a budget (None: none was), what was stored,
        and the batch's cost.
        """
        session_id = row["id"]
        refusal: Optional[dict[str, Any]] = None
        warnings: dict[int, list[PricedEvent]] = {}
        changed = False
        if any(e.type == "llm_call" for e in events):
            refusal, warnings, changed = self._charge(tx, workspace, row, events, now, refuse_unpriced=refuse_unpriced)
        stored: list[PricedEvent] = list(events)
        if warnings:
            stored = []
            for position, event in enumerate(events):
                stored.append(event)
                stored.extend(warnings.get(position, ()))
        if batch is None or changed or warnings or batch.session_id != session_id:
            batch = _Batch.of(session_id, received, events, stored)
        tx.insert_event_rows(batch.rows)
        tx.add_to_session(
            session_id,
            cost=money.add(amount(row["cost"]), batch.cost),
            tokens_in=batch.tokens_in,
            tokens_out=batch.tokens_out,
            events=len(batch.rows),
            unpriced=batch.unpriced,
            estimated=batch.estimated,
            over_budget=sum(1 for e in events if e.over_budget),
        )
        self._count_spend(tx, workspace, row["agent_name"], batch.cost, now)  # last: see _count_spend
        return refusal, stored, batch.cost

    def _money_at_stake(self, tx: Tx, workspace: str, session_id: str, events: Sequence[PricedEvent]) -> bool:
        """Whether a batch settles a reservation or has a budget to check (then it takes the workspace's lock)."""
        calls = [e for e in events if e.type == "llm_call"]
        if not calls:
            return False
        if any(e.reservation_id for e in calls):
            return True
        session = tx.session(workspace, session_id)  # not locked yet: the lock comes first
        return session is not None and bool(self._limits(tx, workspace, session, self._now(), spending=False).budgets)

    def _charge(
        self,
        tx: Tx,
        workspace: str,
        session: Mapping[str, Any],
        events: Sequence[PricedEvent],
        now: datetime.datetime,
        *,
        refuse_unpriced: bool = True,
    ) -> tuple[Optional[dict[str, Any]], dict[int, list[PricedEvent]], bool]:
        """Settle reservations, check budgets and count the spend of a batch's LLM calls, in order.

        Returns the guardrail body of the first unreserved call that went over a budget (None if
        none did), the ``budget_warning`` events to store after each call that crossed a
        soft threshold, and whether it changed an event (its cost, or over a budget).
        ``refuse_unpriced`` False: calls that ran already (OpenTelemetry spans) are
        recorded unpriced, never refused, under a budget.
        """
        limits = self._limits(tx, workspace, session, now, spending=True)
        calls = [(position, e) for position, e in enumerate(events) if e.type == "llm_call"]
        wanted = sorted({e.reservation_id for _, e in calls if e.reservation_id})
        held = tx.held_for(workspace, session["id"], wanted, stamp(now))
        if limits.budgets and not limits.allow_unpriced and refuse_unpriced:
            unpriced = [(p, e) for p, e in calls if e.cost_status == UNPRICED and e.reservation_id not in held]
            if unpriced:
                if self.metrics is not None:
                    self.metrics.guardrail_refusal("unpriced_model")
                raise self._unpriced(session["agent_name"], unpriced)
        refusal: Optional[dict[str, Any]] = None
        warnings: dict[int, list[PricedEvent]] = {}
        changed = False
        if not limits.budgets and not held:
            return refusal, warnings, changed  # nothing to settle, check or warn about
        for position, event in calls:
            reservation = held.pop(event.reservation_id, None) if event.reservation_id else None
            if reservation is not None:
                reserved = amount(reservation["amount"])
                for budget in limits.budgets:  # it was counted in every budget of this session
                    budget.reserved = money.subtract(budget.reserved, reserved)
                if (event.usage_missing or event.cost_status == UNPRICED) and reserved > 0:
                    why = "usage missing" if event.usage_missing else "no price for the model"
                    event.cost_usd, event.cost_status = reserved, ESTIMATED
                    event.pricing_note = f"{why}: charged the ${money.text(reserved)} it reserved"
                    changed = True
                tx.set_reservation_state(reservation["id"], "settled")
            over = [budget for budget in limits.budgets if not budget.fits(event.cost_usd)]
            if over:
                event.over_budget = changed = True
                if reservation is None and refusal is None:
                    refusal = over[0].refusal(event.cost_usd)
            for budget in limits.budgets:
                before, budget.spent = budget.spent, money.add(budget.spent, event.cost_usd)
                if budget.crossed_warning(before, budget.spent):
                    warning = budget.warning_event(event.step_index)
                    logger.warning("%s", warning["message"])
                    warnings.setdefault(position, []).append(
                        PricedEvent(warning, "budget_warning", event.step_index, encoded=money.dumps(warning))
                    )
        return refusal, warnings, changed

    def _count_spend(self, tx: Tx, workspace: str, agent: str, cost: Decimal, now: datetime.datetime) -> None:
        """Add a batch's cost to its agent's and workspace's spend. The last writes of the batch: on PostgreSQL
        they lock rows every write of the workspace shares, until the commit."""
        if cost:
            # One statement, the rows in this order (as budget_state reads them: on SQLite, not read again).
            tx.add_spends(workspace, _periods(agent, now), cost)

    @staticmethod
    def _unpriced(agent: str, calls: Sequence[tuple[int, PricedEvent]]) -> UnpricedModel:
        first = calls[0][1]
        message = (
            f"{first.pricing_note or 'No price for the model.'} Agent {agent!r} has a budget, so a call the "
            "ledger cannot price is refused: it could not be counted against the budget."
        )
        return UnpricedModel(
            message,
            code="unpriced_model",
            provider=first.provider,
            model=first.model,
            rejected=[
                {
                    "index": p,
                    "field": "model",
                    "error": f"events[{p}]: no price for model {e.model!r} (provider {e.provider!r})",
                }
                for p, e in calls
            ],
        )

    # -- OpenTelemetry traces ----------------------------------------------------------------------

    def ingest_traces(self, workspace: str, decoded: otlp.Decoded) -> list[str]:
        """``POST /v1/traces``: record a request's GenAI spans; return why each span not recorded was rejected.

        A trace goes to one session: its conversation's (``gen_ai.conversation.id``) if a span of it has one,
        else its own. A span recorded already (an exporter's retry) is skipped, and its cost never counted
        twice. LLM calls are priced and charged to the budgets after the fact: a call over a budget is recorded
        with ``overBudget``, and a call the ledger cannot price is recorded unpriced; neither is refused.
        """
        from . import otlp  # (it reads JSON as the server does: the server's extra)

        planned, rejected = otlp.plan(decoded.spans)
        rejected = decoded.rejected + rejected
        checked: dict[tuple[str, str], list[PricedEvent]] = {}
        recorded: list[otlp.LedgerSpan] = []
        for span in planned:
            try:
                checked[(span.trace_id, span.span_id)] = [_checked_span_event(event) for event in span.events]
            except Rejection as rejection:
                rejected.append(f"span {span.span_id} of trace {span.trace_id}: {rejection.message}")
                continue
            recorded.append(span)
        calls = [e for events in checked.values() for e in events if e.type == "llm_call"]
        if calls:
            prices = self.price_book.batch(self.prices(workspace))
            for event in calls:
                self._price(event, prices)
        traces: dict[str, list[otlp.LedgerSpan]] = {}
        for span in recorded:
            traces.setdefault(span.trace_id, []).append(span)
        if not traces:
            return rejected
        now = self._now()
        received = iso(now)
        assert received is not None
        stored: list[PricedEvent] = []
        with self.store.write(workspace) as tx:
            sessions: dict[str, list[otlp.LedgerSpan]] = {}
            for trace_id, spans in traces.items():
                seen: set[str] = set()
                ids = [span.span_id for span in spans]
                for start in range(0, len(ids), _SPAN_LOOKUP):
                    seen |= tx.otel_spans_seen(workspace, trace_id, ids[start : start + _SPAN_LOOKUP])
                fresh = [span for span in spans if span.span_id not in seen]
                session_id = self._otel_session(tx, workspace, trace_id, fresh) if fresh else None
                if session_id is not None:
                    sessions.setdefault(session_id, []).extend(fresh)
            for session_id, spans in sessions.items():
                stored.extend(self._record_spans(tx, workspace, session_id, spans, checked, received, now))
        self._count_ingested(stored)
        return rejected

    def _otel_session(self, tx: Tx, workspace: str, trace_id: str, spans: list[otlp.LedgerSpan]) -> Optional[str]:
        """The session of a trace's spans: found by the trace's or its conversation's key, or made; None when the
        spans are none of the ledger's business (a root span of something else, in a trace it never saw)."""
        keyed = sorted((span for span in spans if span.conversation_id), key=lambda span: span.depth)
        conversation = keyed[0].conversation_id if keyed else None
        keys = [f"trace:{trace_id}"]
        if conversation is not None:
            keys.append(_conversation_key(conversation))
        found = tx.otel_sessions(workspace, keys)
        by_trace, by_conversation = found.get(keys[0]), found.get(keys[-1]) if conversation is not None else None
        session_id = by_conversation or by_trace
        if by_conversation is not None and by_trace is not None and by_trace != by_conversation:
            # The trace's first spans came without their conversation's id: its session joins the conversation's.
            self._merge_sessions(tx, workspace, by_trace, by_conversation)
        agent = next((span.agent_name for span in sorted(spans, key=lambda s: s.depth) if span.agent_name), None)
        if session_id is None:
            if not any(span.genai for span in spans):
                return None
            session_id = str(uuid.uuid5(_OTEL_NAMESPACE, f"{workspace}\n{keys[-1]}"))
            self._new_otel_session(tx, workspace, session_id, trace_id, conversation, spans, agent)
        elif agent is not None:
            self._name_otel_session(tx, workspace, session_id, agent)
        for key in keys:
            if found.get(key) != session_id:
                tx.put_otel_session(workspace, key, session_id)
        return session_id

    def _new_otel_session(
        self,
        tx: Tx,
        workspace: str,
        session_id: str,
        trace_id: str,
        conversation: Optional[str],
        spans: list[otlp.LedgerSpan],
        agent: Optional[str],
    ) -> None:
        service_name = next((span.service_name for span in spans if span.service_name), None)
        from .otlp import DEFAULT_AGENT

        agent_name, named_by = (
            (agent, _AGENT_SPAN)
            if agent
            else (service_name, "service.name")
            if service_name
            else (DEFAULT_AGENT, "default")
        )
        user = next((span.user_id for span in spans if span.user_id), None)
        metadata: dict[str, Any] = {"source": "opentelemetry", "agentNameFrom": named_by}
        if conversation is not None and len(conversation) <= MAX_CONVERSATION_KEY:
            metadata["conversationId"] = conversation
        else:
            metadata["traceId"] = trace_id
        started = min(span.start_ns for span in spans)
        tx.insert_session(
            {
                "id": session_id,
                "workspace": workspace,
                "agent_name": agent_name,
                "status": "running",
                "started_at": _iso_ns(started),
                "user_id": user[:MAX_USER_ID].replace("\x00", "") if user else None,
                "tags": "[]",
                "metadata": _compact(metadata),
                "parent_session_id": None,
                "max_cost": None,
                "warn_at_percent": None,
            }
        )
        if self.metrics is not None:
            self.metrics.session_started()

    def _name_otel_session(self, tx: Tx, workspace: str, session_id: str, agent: str) -> None:
        """An agent span names a session that its earlier spans named after their service (or the default)."""
        row = self._session_row(tx, workspace, session_id, for_update=True)
        metadata = json.loads(row["metadata"])
        if metadata.get("agentNameFrom") in (_AGENT_SPAN, None) or row["agent_name"] == agent:
            return
        metadata["agentNameFrom"] = _AGENT_SPAN
        tx.update_session(session_id, {"agent_name": agent, "metadata": _compact(metadata)})

    def _merge_sessions(self, tx: Tx, workspace: str, from_id: str, into_id: str) -> None:
        moved = self._session_row(tx, workspace, from_id, for_update=True)
        into = self._session_row(tx, workspace, into_id, for_update=True)
        tx.move_session(from_id, into_id)
        tx.add_to_session(
            into_id,
            cost=money.add(amount(into["cost"]), amount(moved["cost"])),
            tokens_in=int(moved["tokens_in"]),
            tokens_out=int(moved["tokens_out"]),
            events=int(moved["event_count"]),
            unpriced=int(moved["unpriced_count"]),
            estimated=int(moved["estimated_count"]),
            over_budget=int(moved["over_budget_count"]),
        )
        if _instant(moved["started_at"]) < _instant(into["started_at"]):
            tx.update_session(into_id, {"started_at": moved["started_at"]})
        tx.delete_session(from_id)

    def _record_spans(
        self,
        tx: Tx,
        workspace: str,
        session_id: str,
        spans: list[otlp.LedgerSpan],
        checked: Mapping[tuple[str, str], list[PricedEvent]],
        received: str,
        now: datetime.datetime,
    ) -> list[PricedEvent]:
        """Store new spans' events in their session, numbered in the order the spans started, after its last step;
        a root or agent span's end ends the session (the latest such end decides its status)."""
        row = self._session_row(tx, workspace, session_id, for_update=True)
        spans = sorted(spans, key=lambda span: (span.start_ns, span.span_id))
        step = tx.last_step_index(session_id)
        events: list[PricedEvent] = []
        for span in spans:
            found = checked[(span.trace_id, span.span_id)]
            if not found:
                continue
            step = 0 if step is None else min(step + 1, MAX_SAFE_INTEGER)
            for event in found:
                event.step_index = step
                event.payload = {**event.payload, "stepIndex": step}
                event.encoded = ""
                events.append(event)
        stored: list[PricedEvent] = []
        if events:
            _, stored, _ = self._store_events(tx, workspace, row, events, received, now, refuse_unpriced=False)
        started = min(span.start_ns for span in spans)
        if _instant(_iso_ns(started)) < _instant(row["started_at"]):
            tx.update_session(session_id, {"started_at": _iso_ns(started)})
        ends = [span.end for span in spans if span.end is not None]
        if ends:
            end = max(ends, key=lambda found: found.end_ns)
            ended_at = _iso_ns(end.end_ns)
            if row["status"] == "running" or _instant(ended_at) >= _instant(row["ended_at"]):
                message = end.error_message[:MAX_ERROR_MESSAGE] if end.error_message else None
                tx.end_session(session_id, end.status, message, ended_at)
        tx.insert_otel_spans(workspace, received, ((span.trace_id, span.span_id, session_id) for span in spans))
        return stored

    # -- reservations ------------------------------------------------------------------------

    def reserve_with_key(
        self, secret: str, read: Callable[[], tuple[Mapping[str, Any], Optional[Idempotency]]]
    ) -> Reply:
        """``POST /v1/reservations`` with its key and ``read()``, which gives its body and idempotency: what
        :meth:`authenticate` then :meth:`reserve_request` do, with the errors in that order (a bad key first).

        On a store that sends reads ahead (PostgreSQL), the key of a workspace this process saw before is read
        in the reservation's own transaction, with its first reads, not in a round trip before it; a key no
        longer valid then is refused before anything is written, as it would have been before."""
        key_id = key_id_of(secret)
        known = self._key_workspaces.get(key_id) if key_id is not None and self.store.sends_ahead else None
        if known is None:
            workspace = self.authenticate(secret)
            if workspace is None:
                raise Unauthorized(INVALID_KEY)
            body, idempotency = read()
            return self.reserve_request(workspace, body, idempotency)
        try:
            body, idempotency = read()
            unpriced, pricing = self._reservation_request(body)
        except LedgerError:
            if self.authenticate(secret) is None:  # the key's error first, as when it is read before
                raise Unauthorized(INVALID_KEY) from None
            raise
        assert key_id is not None
        return self.reserve_planned(self._planned(known, unpriced, idempotency, pricing, key_id, secret))

    def plan_reservation(
        self, secret: str, read: Callable[[], tuple[Mapping[str, Any], Optional[Idempotency]]]
    ) -> Optional[PlannedReservation]:
        """:meth:`reserve_with_key` up to its database, for an event loop (no I/O here): the reservation checked
        and priced, with the call that grants it in the plain case (``PlannedReservation.call``, for
        :meth:`Store.reserve_on_loop`). None when this process does not know the key's workspace yet. Raises
        what ``read`` or the body's check raise; the caller then takes :meth:`reserve_with_key`, which words
        the errors in their order (a bad key first)."""
        key_id = key_id_of(secret)
        known = self._key_workspaces.get(key_id) if key_id is not None and self.store.sends_ahead else None
        if known is None:
            return None
        assert key_id is not None
        body, idempotency = read()
        unpriced, pricing = self._reservation_request(body)
        return self._planned(known, unpriced, idempotency, pricing, key_id, secret)

    def reserve_planned(self, plan: PlannedReservation, granted: Optional[bool] = None) -> Reply:
        """Make ``plan``'s reservation: its call (the plain case, one round trip), then, when that did not grant
        it, the general path (:meth:`reserve`), which decides and words a refusal, a replay or an error.
        ``granted``: what the call said, when it was made elsewhere (:meth:`Store.reserve_on_loop`, its
        housekeeping by :meth:`sweep`); None: make it here."""
        if granted is None and plan.call is not None:
            granted = self._call_at_once(plan)
        if granted:
            return plan.granted()
        return self.reserve(plan.workspace, plan.request, plan.idempotency, pricing=plan.pricing, key=plan.key)

    def sweep(self, plan: PlannedReservation) -> None:
        """The housekeeping a write does now and then (forgetting reservations long expired and idempotency
        records past their lifetime), when ``plan`` found it due: in a transaction of its own."""
        if plan.forget_reservations or plan.forget_idempotency:
            with self.store.pipelined_write(plan.workspace) as tx:
                if plan.forget_reservations:
                    tx.forget_reservations(plan.workspace, stamp(plan.now - RESERVATION_MEMORY))
                if plan.forget_idempotency:
                    tx.forget_idempotency(stamp(plan.now - IDEMPOTENCY_LIFETIME))

    def _call_at_once(self, plan: PlannedReservation) -> bool:
        assert plan.call is not None
        with self.store.autocommit() as tx:
            granted = tx.reserve_at_once(plan.call)
        self.sweep(plan)
        return granted

    def _planned(
        self,
        workspace: str,
        request: ReservationRequest,
        idempotency: Optional[Idempotency],
        pricing: Callable[[Mapping[str, Rates]], ReservationRequest],
        key_id: str,
        secret: str,
    ) -> PlannedReservation:
        """The reservation, with the call that grants it in one round trip (a transaction of its own, priced
        with the workspace's prices as this process keeps them) when it can: this process keeps the
        workspace's prices and they price the model. Granted there only in the plain case: a key still valid,
        prices unchanged, a new idempotency key, a running session, budgets that apply and fit."""
        plan = PlannedReservation(workspace, request, idempotency, pricing, (key_id, secret))
        kept = self._prices.get(workspace)
        if kept is None:
            return plan
        version, rates = kept
        priced = pricing(rates)
        if priced.amount is None:
            return plan
        now = plan.now = self._now()
        reservation_id, expires, plan.body = self._granted(now, priced.amount)
        plan.call = reserve_at_once_values(
            key_id=key_id,
            key_hash=_hash_secret(secret),
            workspace=workspace,
            prices_version=version,
            reservation={
                "id": reservation_id,
                "session_id": priced.session_id,
                "provider": priced.provider,
                "model": priced.model,
                "amount": money.text(priced.amount),
                "created_at": stamp(now),
                "expires_at": expires,
            },
            idempotency=None
            if idempotency is None
            else (idempotency.key, idempotency.fingerprint, money.dumps(plan.body)),
            day=day_of(now),
            month=month_of(now),
        )
        # Counted whether the call grants or not (the general path counts its own): only the sweeps' pace.
        plan.forget_reservations = self._reservations_sweep_due(workspace, now)
        plan.forget_idempotency = idempotency is not None and self._idempotency_sweep_due()
        return plan

    def reserve_request(self, workspace: str, body: Mapping[str, Any], idempotency: Optional[Idempotency]) -> Reply:
        """``POST /v1/reservations``: check and price the request, then reserve."""
        unpriced, pricing = self._reservation_request(body)
        return self.reserve(workspace, unpriced, idempotency, pricing=pricing)

    def _reservation_request(
        self, body: Mapping[str, Any]
    ) -> tuple[ReservationRequest, Callable[[Mapping[str, Rates]], ReservationRequest]]:
        """The body of ``POST /v1/reservations`` checked: the request not yet priced, and how to price it."""
        session_id = body.get("sessionId")
        if not isinstance(session_id, str) or not session_id:
            raise BadInput('"sessionId" is required: the id that POST /v1/sessions returned.')
        _storable("sessionId", session_id)
        names = {}
        for name in ("provider", "model"):
            value = body.get(name)
            if not isinstance(value, str) or not value.strip():
                raise BadInput(f'"{name}" is required: a non-empty string, as the llm_call event will carry it.')
            names[name] = _storable(name, value)
        step = body.get("stepIndex")
        if isinstance(step, float) and step.is_integer():
            step = int(step)  # 5.0 is the integer 5, as in an event's stepIndex
        if step is not None and (
            isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_SAFE_INTEGER
        ):
            raise BadInput(
                f'"stepIndex" must be a non-negative integer of at most {MAX_SAFE_INTEGER}; got {shown(step)}.'
            )
        max_cost = usd_amount(dict(body), "maxCostUsd", "the most this call may cost", nullable=False)
        estimate = body.get("estimate")
        if (estimate is None) == (max_cost is None):
            raise BadInput(
                'Send either "estimate": {"tokensIn": int, "tokensOut": int} (the most the call may use) or '
                '"maxCostUsd": number (the most it may cost), not both and not neither.'
            )
        provider, model = names["provider"], names["model"]
        usage = _estimate(estimate) if estimate is not None else TokenUsage(0, 0)

        def priced(custom: Mapping[str, Rates]) -> ReservationRequest:
            price = self.price_book.price(provider, model, usage, custom)
            return ReservationRequest(
                session_id=session_id,
                provider=provider,
                model=model,
                amount=(max_cost if max_cost is not None else price.cost_usd) if price.priced else None,
                max_cost_usd=max_cost,
                step_index=step,
                note=price.note,
            )

        # Priced once, in the reservation's transaction, with the workspace's prices (kept, or read there): a
        # model priced by genai-prices costs ~0.2 ms of CPU a pricing. Until then the request is not priced.
        return ReservationRequest(session_id, provider, model, None, max_cost, step), priced

    def reserve(
        self,
        workspace: str,
        request: ReservationRequest,
        idempotency: Optional[Idempotency] = None,
        *,
        pricing: Optional[Callable[[Mapping[str, Rates]], ReservationRequest]] = None,
        key: Optional[tuple[str, str]] = None,
    ) -> Reply:
        """Reserve ``request``'s amount; ``pricing``: the request priced with the workspace's own prices
        (read in the reservation's transaction), which replaces ``request``. ``key``: (id, secret) of the
        request's key, to check in the transaction (see :meth:`reserve_with_key`; ``workspace`` is then the
        one that key had)."""
        try:
            return self._reserve(workspace, request, idempotency, pricing, key)
        except (BudgetExceeded, UnpricedModel) as refused:
            reason = "budget_exceeded" if isinstance(refused, BudgetExceeded) else "unpriced_model"
            if self.metrics is not None:
                self.metrics.guardrail_refusal(reason)
            self._record_refusal(workspace, request, reason, refused)
            raise

    def _record_refusal(self, workspace: str, request: ReservationRequest, reason: str, refused: LedgerError) -> None:
        """Keep a call refused before it ran (its reservation's transaction wrote nothing): the budgets page
        lists it. A failure to record it never hides the refusal itself."""
        details = refused.details if isinstance(refused, BudgetExceeded) else {}
        try:
            with self.store.write(workspace) as tx:
                session = tx.session(workspace, request.session_id)
                if session is None:
                    return
                tx.insert_refusal(
                    {
                        "workspace": workspace,
                        "session_id": session["id"],
                        "agent_name": session["agent_name"],
                        "provider": request.provider,
                        "model": request.model,
                        "reason": reason,
                        "budget": details.get("budget"),
                        "amount": None
                        if details.get("attemptedCostUsd") is None
                        else money.text(details["attemptedCostUsd"]),
                        "message": refused.message,
                        "created_at": stamp(self._now()),
                    }
                )
        except Exception:  # the refusal stands; only its record is lost
            logger.exception("could not record a refused call of session %s", request.session_id)

    def _reserve(
        self,
        workspace: str,
        request: ReservationRequest,
        idempotency: Optional[Idempotency],
        pricing: Optional[Callable[[Mapping[str, Rates]], ReservationRequest]] = None,
        key: Optional[tuple[str, str]] = None,
    ) -> Reply:
        now = self._now()
        with self.store.pipelined_write(workspace) as tx:
            if tx.sends_ahead:
                self._send_reservation_reads_ahead(tx, workspace, request, idempotency, now, key)
            if key is not None:
                key_id, secret = key
                checked = self._checked_key(key_id, secret, tx.key_of_request(key_id))
                if checked is None or checked != workspace:  # (a key's workspace never changes)
                    raise Unauthorized(INVALID_KEY)
                workspace = checked
            replay = self._replay(tx, workspace, idempotency, now)
            if replay is not None:
                return replay
            if pricing is not None:
                request = pricing(self._prices_in(tx, workspace))
            session = self._session_row(tx, workspace, request.session_id, for_update=True)
            self._running(session, "reservations are made for")
            if request.session_id not in self._session_agents:
                _keep(self._session_agents, request.session_id, session["agent_name"])
            limits = self._limits(tx, workspace, session, now, spending=True)
            if not limits.budgets:
                body: dict[str, Any] = {"budgeted": False, "ttlSeconds": BUDGET_CACHE_SECONDS}
                return self._remember(tx, workspace, idempotency, Reply(Outcome.OK, body), now)
            cost = request.amount
            if cost is None:
                if not limits.allow_unpriced:
                    raise UnpricedModel(
                        f"{request.note or 'No price for the model.'} Agent {session['agent_name']!r} has a budget, "
                        "so a call the ledger cannot price is refused before it runs.",
                        code="unpriced_model",
                        provider=request.provider,
                        model=request.model,
                    )
                cost = request.max_cost_usd if request.max_cost_usd is not None else money.ZERO
            for budget in limits.budgets:
                if not budget.fits(cost):
                    raise BudgetExceeded(budget.refusal(cost))
            reservation_id, expires, body = self._granted(now, cost)
            tx.insert_reservation(
                {
                    "id": reservation_id,
                    "workspace": workspace,
                    "session_id": session["id"],
                    "agent_name": session["agent_name"],
                    "provider": request.provider,
                    "model": request.model,
                    "amount": money.text(cost),
                    "state": "held",
                    "created_at": stamp(now),
                    "expires_at": expires,
                }
            )
            return self._remember(tx, workspace, idempotency, Reply(Outcome.CREATED, body), now)

    def _granted(self, now: datetime.datetime, cost: Decimal) -> tuple[str, str, dict[str, Any]]:
        """A new reservation's id, its expiry, and the reply that grants it ``cost``."""
        reservation_id = f"res_{secrets.token_hex(12)}"
        expires = stamp(now + self.reservation_ttl)
        body = {
            "budgeted": True,
            "id": reservation_id,
            "reservedUsd": cost,
            "expiresAt": expires,
            "ttlSeconds": BUDGET_CACHE_SECONDS,
        }
        return reservation_id, expires, body

    def _send_reservation_reads_ahead(
        self,
        tx: Tx,
        workspace: str,
        request: ReservationRequest,
        idempotency: Optional[Idempotency],
        now: datetime.datetime,
        key: Optional[tuple[str, str]],
    ) -> None:
        """Send what :meth:`_reserve` reads first, so that it costs one round trip: the key, the idempotency
        record, the session's row (locked) and, when this process knows the session's agent, its budgets."""
        with tx.ahead():
            if key is not None:
                tx.key_of_request(key[0])
            if idempotency is not None:
                tx.idempotency(workspace, idempotency.key)
            tx.session(workspace, request.session_id, for_update=True)
            agent = self._session_agents.get(request.session_id)
            if agent is not None:
                tx.budget_state(workspace, agent, _periods(agent, now), stamp(now), request.session_id)

    def release(self, workspace: str, reservation_id: str, idempotency: Optional[Idempotency] = None) -> Reply:
        now = self._now()
        with self.store.pipelined_write(workspace) as tx:
            replay = self._replay(tx, workspace, idempotency, now)
            if replay is not None:
                return replay
            row = tx.reservation(reservation_id)
            if row is None or row["workspace"] != workspace:
                raise NotFound(
                    f"Reservation {reservation_id!r} not found. Use the id that POST /v1/reservations returned, "
                    "with an API key of the same workspace (ids are remembered for a day after they expire)."
                )
            if row["state"] == "held":
                tx.set_reservation_state(reservation_id, "released")
            return self._remember(tx, workspace, idempotency, Reply(Outcome.DONE, {}), now)

    # -- reads ---------------------------------------------------------------------------------

    @staticmethod
    def _session_summary(row: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "id": row["id"],
            "workspace": row["workspace"],
            "agentName": row["agent_name"],
            "status": row["status"],
            "errorMessage": row["error_message"],
            "startedAt": row["started_at"],
            "endedAt": row["ended_at"],
            "costUsd": amount(row["cost"]),
            "tokensIn": row["tokens_in"],
            "tokensOut": row["tokens_out"],
            "eventCount": row["event_count"],
            "unpricedEvents": row["unpriced_count"],
            "estimatedEvents": row["estimated_count"],
            "overBudgetEvents": row["over_budget_count"],
            "maxCostUsd": optional_amount(row["max_cost"]),
            "userId": row["user_id"],
            "tags": json.loads(row["tags"]),
            "metadata": json.loads(row["metadata"]),
            "parentSessionId": row["parent_session_id"],
        }

    @staticmethod
    def _event(row: Mapping[str, Any]) -> dict[str, Any]:
        return {
            **json.loads(row["payload"]),
            "costUsd": amount(row["cost"]),
            "costStatus": row["cost_status"],
            "overBudget": bool(row["over_budget"]),
            "priced": row["cost_status"] != UNPRICED,
            "pricingNote": row["pricing_note"],
            "receivedAt": row["received_at"],
        }

    def _events_page(
        self, tx: Tx, session_id: str, cursor: Optional[tuple[int, int]], limit: int
    ) -> tuple[list[dict[str, Any]], Optional[str]]:
        rows = tx.events(session_id, cursor, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        following = f"{rows[-1]['position']}.{rows[-1]['seq']}" if more and rows else None
        return [self._event(row) for row in rows], following

    @staticmethod
    def _page_size(limit: Optional[int]) -> int:
        if limit is None:
            return DEFAULT_EVENTS_PAGE
        if not 1 <= limit <= MAX_EVENTS_PAGE:
            raise BadInput(f"The events page size must be between 1 and {MAX_EVENTS_PAGE}; got {shown(limit)}.")
        return limit

    def get_session(
        self,
        session_id: str,
        workspace: Optional[str] = None,
        *,
        events_limit: Optional[int] = None,
        events_cursor: Optional[str] = None,
    ) -> dict[str, Any]:
        """A session with one page of its events (``nextEventsCursor`` continues; None: that was the last)."""
        limit = self._page_size(events_limit)
        cursor = _events_cursor(events_cursor)
        with self.store.read() as tx:
            row = self._session_row(tx, workspace, session_id)
            children = tx.child_session_ids(row["workspace"], session_id)
            events, following = self._events_page(tx, session_id, cursor, limit)
        summary = self._session_summary(row)
        summary["childSessionIds"] = children
        summary["events"] = events
        summary["nextEventsCursor"] = following
        return summary

    def session_with_all_events(self, session_id: str, workspace: Optional[str] = None) -> dict[str, Any]:
        """A session with every event, read a page at a time (for the CLI and tests, not the server)."""
        session = self.get_session(session_id, workspace, events_limit=MAX_EVENTS_PAGE)
        following = session.pop("nextEventsCursor")
        while following is not None:
            page = self.get_session(session_id, workspace, events_limit=MAX_EVENTS_PAGE, events_cursor=following)
            session["events"].extend(page["events"])
            following = page["nextEventsCursor"]
        return session

    def iter_events(self, session_id: str, workspace: Optional[str] = None) -> Iterator[dict[str, Any]]:
        """Every event of a session, a page at a time, in step order."""
        following: Optional[str] = None
        while True:
            page = self.get_session(session_id, workspace, events_limit=MAX_EVENTS_PAGE, events_cursor=following)
            yield from page["events"]
            following = page["nextEventsCursor"]
            if following is None:
                return

    def list_sessions(self, query: SessionQuery) -> dict[str, Any]:
        where = SessionFilter(
            workspace=query.workspace,
            agent_name=query.agent_name,
            status=query.status,
            user_id=query.user_id,
            tags=query.tags,
            started_after=query.started_after,
            started_before=query.started_before,
            before_seq=query.cursor,
        )
        with self.store.read() as tx:
            rows = tx.sessions(where, query.limit + 1)
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        return {
            "sessions": [self._session_summary(r) for r in rows],
            "nextCursor": str(rows[-1]["seq"]) if more and rows else None,
        }

    def iter_sessions(self, query: SessionQuery) -> Iterator[dict[str, Any]]:
        """Every session ``query`` matches (ignoring its cursor), newest first, a page at a time."""
        cursor: Optional[int] = None
        while True:
            page = self.list_sessions(dataclasses.replace(query, cursor=cursor, limit=500))
            yield from page["sessions"]
            if page["nextCursor"] is None:
                return
            cursor = int(page["nextCursor"])

    # -- the dashboard's reads ----------------------------------------------------------------------

    def find_sessions(
        self,
        where: SessionSearch,
        limit: int,
        *,
        text: Optional[str] = None,
        search_seconds: float = SEARCH_SECONDS,
    ) -> dict[str, Any]:
        """A page of sessions (keyset on ``seq``), newest first, for the dashboard; each with its LLM calls counted.

        ``where.before_seq`` pages to older sessions, ``where.after_seq`` to newer ones (the page is still
        shown newest first). ``where.min_cost`` is applied exactly. ``text``: only sessions with an event
        whose recorded content holds it (any case); that search reads the events of the sessions in the
        order of the page, and stops after a page of matches or ``search_seconds``: then ``searched``
        says how far it got and ``nextCursor`` continues from there.
        """
        newer = where.after_seq is not None
        pattern = like_pattern(json.dumps(text, ensure_ascii=False)[1:-1]) if text else None
        deadline = time.monotonic() + search_seconds
        found: list[dict[str, Any]] = []
        scanned = 0
        last_scanned: Optional[dict[str, Any]] = None
        exhausted = False
        started = time.monotonic()
        with self.store.read() as tx:
            window = dataclasses.replace(where)
            while True:
                wanted = SEARCH_BATCH if pattern is not None else limit + 1 - len(found)
                rows = tx.find_sessions(window, wanted, oldest_first=newer)
                scanned += len(rows)
                if rows:
                    last_scanned = rows[-1]
                    if newer:
                        window.after_seq = rows[-1]["seq"]
                    else:
                        window.before_seq = rows[-1]["seq"]
                if len(rows) < wanted:
                    exhausted = True
                if where.min_cost is not None:
                    rows = [r for r in rows if amount(r["cost"]) >= where.min_cost]
                if pattern is not None and rows:
                    hits = tx.sessions_with_text([r["id"] for r in rows], pattern)
                    rows = [r for r in rows if r["id"] in hits]
                found.extend(rows)
                if exhausted or len(found) > limit or (pattern is not None and time.monotonic() > deadline):
                    break
            more = len(found) > limit
            page = found[:limit]
            counts = tx.llm_call_counts([r["id"] for r in page])
            latest = tx.latest_session_seq(where.workspace) if where.workspace is not None else 0
        stopped_early = not more and not exhausted
        if stopped_early and last_scanned is not None:
            resume: Optional[int] = int(last_scanned["seq"])  # the search continues past what it read
        elif more and page:
            resume = int(page[-1]["seq"])
        else:
            resume = None
        if newer:
            page.reverse()
        sessions = []
        for row in page:
            summary = self._session_summary(row)
            summary["seq"] = int(row["seq"])
            summary["llmCalls"] = counts.get(row["id"], 0)
            sessions.append(summary)
        return {
            "sessions": sessions,
            # Older sessions (newest-first paging) or newer ones (paging back), from this seq on.
            "nextCursor": None if newer else resume,
            "newerCursor": resume if newer else None,
            "latestSeq": latest,
            "searched": {
                "sessions": scanned,
                "complete": not stopped_early,
                "reachedStartedAt": last_scanned["started_at"] if last_scanned is not None else None,
                "seconds": round(time.monotonic() - started, 3),
            }
            if pattern is not None
            else None,
        }

    def session_overview(
        self,
        session_id: str,
        workspace: str,
        *,
        events_limit: Optional[int] = None,
        events_cursor: Optional[str] = None,
    ) -> dict[str, Any]:
        """A session as the dashboard shows it: a page of its events, its totals over every event, its parent,
        its sub-agent sessions and the previous session of its agent, all from one snapshot."""
        limit = self._page_size(events_limit)
        cursor = _events_cursor(events_cursor)
        with self.store.read() as tx:
            row = self._session_row(tx, workspace, session_id)
            children_ids = tx.child_session_ids(workspace, session_id)
            children = tx.sessions_by_ids(workspace, children_ids[:MAX_LINKED_SESSIONS])
            parent = tx.session(workspace, row["parent_session_id"]) if row["parent_session_id"] else None
            previous = tx.previous_session(workspace, row["agent_name"], row["seq"])
            events, following = self._events_page(tx, session_id, cursor, limit)
            totals = self._event_totals(tx, session_id, int(row["event_count"]))
        summary = self._session_summary(row)
        summary["seq"] = int(row["seq"])
        summary["childSessionIds"] = children_ids
        summary["childSessions"] = [self._session_summary(r) for r in children]
        summary["parentSession"] = self._session_summary(parent) if parent is not None else None
        summary["previousSessionId"] = previous["id"] if previous is not None else None
        summary["events"] = events
        summary["nextEventsCursor"] = following
        summary["eventTotals"] = {
            kind: {
                "events": int(found["events"]),
                "latencyMs": float(found["latency_ms"] or 0),
                "cacheReadTokens": int(found["cache_read_tokens"] or 0),
                "cacheWriteTokens": int(found["cache_write_tokens"] or 0),
                "reasoningTokens": int(found["reasoning_tokens"] or 0),
                "errors": int(found["errors"] or 0),
            }
            for kind, found in totals.items()
        }
        return summary

    def _event_totals(self, tx: Tx, session_id: str, event_count: int) -> dict[str, Any]:
        """``tx.event_totals``, remembered for large sessions until their event count changes (a session's
        events are only ever added to: the same count means the same events)."""
        if event_count < TOTALS_CACHE_FROM:
            return tx.event_totals(session_id)
        with self._totals_lock:
            found = self._totals.get(session_id)
            if found is not None and found[0] == event_count:
                self._totals.move_to_end(session_id)
                return found[1]
        totals = tx.event_totals(session_id)
        with self._totals_lock:
            self._totals[session_id] = (event_count, totals)
            while len(self._totals) > TOTALS_CACHE_SIZE:
                self._totals.popitem(last=False)
        return totals

    def resolve_session_id(self, text: str, workspace: Optional[str] = None) -> str:
        """The id of the session ``text`` names: its id, or a prefix of exactly one session's id.

        Raises NotFound when none matches and BadInput (listing them) when several do.
        """
        with self.store.read() as tx:
            if text and tx.session(workspace, text) is not None:
                return text
            rows = tx.sessions_with_prefix(workspace, text, MAX_PREFIX_CANDIDATES + 1) if text else []
        if not rows:
            raise NotFound(f"Session {text!r} not found.")
        if len(rows) == 1:
            return str(rows[0]["id"])
        listed = "; ".join(
            f"{r['id']} ({r['agent_name']}, started {r['started_at']})" for r in rows[:MAX_PREFIX_CANDIDATES]
        )
        more = " and more" if len(rows) > MAX_PREFIX_CANDIDATES else ""
        raise BadInput(
            f"Session id prefix {text!r} matches several sessions: {listed}{more}. Give more of the id.",
            candidates=[r["id"] for r in rows[:MAX_PREFIX_CANDIDATES]],
        )

    def recent_refusals(self, workspace: str, limit: int = 20) -> list[dict[str, Any]]:
        """The workspace's latest refusals, newest first: calls refused before they ran (``refusedBeforeRun``),
        and LLM calls that ran unreserved and went over a budget (recorded with ``overBudget``)."""
        with self.store.read() as tx:
            rows = tx.over_budget_events(workspace, limit)
            refused = tx.refusals(workspace, limit)
        found: list[dict[str, Any]] = [
            {
                "sessionId": r["session_id"],
                "agentName": r["agent_name"],
                "userId": r["user_id"],
                "stepIndex": None,
                "type": "llm_call",
                "provider": r["provider"],
                "model": r["model"],
                "costUsd": optional_amount(r["amount"]),
                "costStatus": None,
                "receivedAt": r["created_at"],
                "refusedBeforeRun": True,
                "reason": r["reason"],
                "budget": r["budget"],
                "message": r["message"],
            }
            for r in refused
        ]
        for row in rows:
            payload = json.loads(row["payload"])
            found.append(
                {
                    "sessionId": row["session_id"],
                    "agentName": row["agent_name"],
                    "userId": row["user_id"],
                    "stepIndex": row["step_index"],
                    "type": row["type"],
                    "provider": payload.get("provider"),
                    "model": payload.get("model"),
                    "costUsd": amount(row["cost"]),
                    "costStatus": row["cost_status"],
                    "receivedAt": row["received_at"],
                    "refusedBeforeRun": False,
                    "reason": "over_budget",
                    "budget": None,
                    "message": None,
                }
            )
        # Both are UTC RFC 3339, with or without a fraction: to the second, then as text.
        found.sort(key=lambda refusal: (str(refusal["receivedAt"])[:19], str(refusal["receivedAt"])), reverse=True)
        return found[:limit]

    def reservations_in_flight(self, workspace: str) -> list[dict[str, Any]]:
        """The workspace's reservations held now (granted, not settled, released or expired)."""
        now = self._now()
        with self.store.read() as tx:
            rows = tx.held_reservations(workspace, stamp(now))
        return [
            {
                "id": r["id"],
                "sessionId": r["session_id"],
                "agentName": r["agent_name"],
                "reservedUsd": amount(r["amount"]),
            }
            for r in rows
        ]

    def session_signing_key(self, key_id: str) -> Optional[tuple[str, bytes]]:
        """For a live (unrevoked) API key: its workspace and a key to sign the dashboard's login sessions with.

        The signing key is derived from the key's stored hash: a login lasts no longer than the key
        (revoking it ends every login made with it) and every replica derives the same one.
        """
        with self.store.read() as tx:
            row = tx.key(key_id)
        if row is None or row["revoked_at"] is not None:
            return None
        signing = hmac.new(row["key_hash"].encode("ascii"), b"agent-ledger dashboard login", hashlib.sha256)
        return str(row["workspace"]), signing.digest()

    # -- the cost rollup: spend per UTC day by agent, model and user, for the dashboard ------------------

    def catch_up_costs(self, workspace: str, seconds: Optional[float] = None) -> bool:
        """Count the LLM calls stored since the workspace's rollup last did; True when it is up to date.

        The rollup is brought up to date as it is read, a batch of calls per write transaction of the
        workspace: no other write of the workspace runs meanwhile, so no call stored later can have a
        smaller seq than one counted (on PostgreSQL too, where seqs are handed out before commits).
        Stops after ``seconds`` (default :data:`CATCH_UP_SECONDS`; what is left is counted by the next read).
        """
        deadline = time.monotonic() + (CATCH_UP_SECONDS if seconds is None else seconds)
        with self.store.read() as tx:
            if tx.rollup_progress(workspace) >= tx.last_event_seq():
                return True
        while True:
            with self.store.write(workspace) as tx:
                after = tx.rollup_progress(workspace)
                rows = tx.llm_calls_after(workspace, after, ROLLUP_BATCH)
                self._roll_up(tx, workspace, rows)
                last = int(rows[-1]["seq"]) if rows else after
                done = len(rows) < ROLLUP_BATCH
                if done:  # nothing of this workspace after what was read: skip what other workspaces stored
                    last = max(last, tx.last_event_seq())
                if last != after:
                    tx.set_rollup_progress(workspace, last)
            if done:
                return True
            if time.monotonic() > deadline:
                return False

    @staticmethod
    def _roll_up(tx: Tx, workspace: str, rows: Sequence[Mapping[str, Any]]) -> None:
        added: dict[tuple[str, str, str], RollupRow] = {}
        for row in rows:
            payload = json.loads(row["payload"])

            def count(name: str, event: Mapping[str, Any] = payload) -> int:
                value = event.get(name)
                return value if isinstance(value, int) and not isinstance(value, bool) else 0

            call = RollupRow(
                llm_calls=1,
                tokens_in=count("tokensIn"),
                tokens_out=count("tokensOut"),
                cache_read_tokens=count("cacheReadTokens"),
                cache_write_tokens=count("cacheWriteTokens"),
                reasoning_tokens=count("reasoningTokens"),
                unpriced_calls=int(row["cost_status"] == UNPRICED),
                estimated_calls=int(row["cost_status"] == ESTIMATED),
                cost=amount(row["cost"]),
            )
            day = str(row["received_at"])[:10]
            model = f"{payload.get('provider', '')}/{payload.get('model', '')}"
            for dimension, name in (("agent", row["agent_name"]), ("model", model), ("user", row["user_id"] or "")):
                added.setdefault((day, dimension, name), RollupRow()).add(call)
        for (day, dimension, name), total in sorted(added.items()):
            tx.add_to_rollup(workspace, day, dimension, name, total)

    def cost_summary(
        self, workspace: str, since_day: str, until_day: str, *, catch_up_seconds: Optional[float] = None
    ) -> dict[str, Any]:
        """Spend from ``since_day`` to ``until_day`` (UTC days the ledger received the calls, both included):
        per day, and per agent, model and user over the range; amounts exact, tokens with cached ones apart.

        ``upToDate`` is False when the rollup could not count every call stored within ``catch_up_seconds``.
        """
        up_to_date = self.catch_up_costs(workspace, catch_up_seconds)
        with self.store.read() as tx:
            groups, per_day = tx.rollup_sums(workspace, since_day, until_day)

        def summed(row: Mapping[str, Any]) -> RollupRow:
            return RollupRow(**{name: int(row[name] or 0) for name in RollupRow.COUNTS}, cost=amount(row["cost"]))

        by: dict[str, dict[str, RollupRow]] = {"agent": {}, "model": {}, "user": {}}
        for row in groups:
            if row["dimension"] in by:
                by[row["dimension"]][row["name"]] = summed(row)
        days = {row["day"]: summed(row) for row in per_day}
        total = RollupRow()
        for day in days.values():
            total.add(day)
        return {
            "workspace": workspace,
            "since": since_day,
            "until": until_day,
            "days": days,
            "byAgent": by["agent"],
            "byModel": by["model"],
            "byUser": by["user"],
            "total": total,
            "upToDate": up_to_date,
        }

    # -- budgets and settings --------------------------------------------------------------------

    def set_budget_request(self, workspace: str, agent_name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """``PUT /v1/budgets/{agentName}``: every field checked before anything is written."""
        _only(body, ("dailyLimitUsd", "monthlyLimitUsd", "warnAtPercent"))
        changes = {
            "daily_limit_usd": _limit(body, "dailyLimitUsd", "the agent's limit per UTC day"),
            "monthly_limit_usd": _limit(body, "monthlyLimitUsd", "the agent's limit per UTC month"),
            "warn_at_percent": warn_percent(dict(body), nullable=True) if "warnAtPercent" in body else UNSET,
        }
        return self.set_budget(workspace, agent_name, **changes)

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
        changes = {
            column: _optional_amount(value, name)
            for column, name, value in (
                ("daily_limit", "the daily limit", daily_limit_usd),
                ("monthly_limit", "the monthly limit", monthly_limit_usd),
                ("warn_at_percent", "the warning threshold", warn_at_percent),
            )
            if value is not UNSET
        }
        with self.store.write(workspace) as tx:
            row = tx.agent_budget(workspace, agent_name)
            current = {
                k: (optional_amount(row[k]) if row is not None else None)
                for k in ("daily_limit", "monthly_limit", "warn_at_percent")
            }
            current.update(changes)
            tx.put_agent_budget(
                workspace, agent_name, current["daily_limit"], current["monthly_limit"], current["warn_at_percent"]
            )
        for budget in self.budgets(workspace):
            if budget["agentName"] == agent_name:
                return budget
        return self._agent_budget(workspace, agent_name, None, {}, {}, {}, self._now())

    @staticmethod
    def _agent_budget(
        workspace: str,
        agent: str,
        row: Optional[Mapping[str, Any]],
        today: Mapping[tuple[str, str], Decimal],
        month: Mapping[tuple[str, str], Decimal],
        reserved: Mapping[tuple[str, str], Decimal],
        now: datetime.datetime,
    ) -> dict[str, Any]:
        daily = optional_amount(row["daily_limit"]) if row is not None else None
        monthly = optional_amount(row["monthly_limit"]) if row is not None else None
        spent_today = today.get((workspace, agent), money.ZERO)
        spent_month = month.get((workspace, agent), money.ZERO)
        held = reserved.get((workspace, agent), money.ZERO)

        def remaining(limit: Optional[Decimal], spent: Decimal) -> Optional[Decimal]:
            if limit is None:
                return None
            return max(money.subtract(limit, money.add(spent, held)), money.ZERO)

        return {
            "workspace": workspace,
            "agentName": agent,
            "dailyLimitUsd": daily,
            "spentTodayUsd": spent_today,
            "remainingBudgetUsd": remaining(daily, spent_today),
            "resetsAt": iso(next_utc_midnight(now)),
            "monthlyLimitUsd": monthly,
            "spentThisMonthUsd": spent_month,
            "remainingMonthlyUsd": remaining(monthly, spent_month),
            "monthResetsAt": iso(next_utc_month(now)),
            "reservedUsd": held,
            "warnAtPercent": optional_amount(row["warn_at_percent"]) if row is not None else None,
        }

    @staticmethod
    def _held_by(
        tx: Tx, workspace: Optional[str], now: datetime.datetime, by_agent: bool
    ) -> dict[tuple[str, str], Decimal]:
        held: dict[tuple[str, str], Decimal] = {}
        for row in tx.held_reservations(workspace, stamp(now)):
            key = (row["workspace"], row["agent_name"] if by_agent else "")
            held[key] = money.add(held.get(key, money.ZERO), amount(row["amount"]))
        return held

    def budgets(self, workspace: Optional[str] = None) -> list[dict[str, Any]]:
        """Each agent with a limit or spend this month: its limits, spend, reserved amount and what remains."""
        now = self._now()
        with self.store.read() as tx:
            limits = {(r["workspace"], r["agent_name"]): r for r in tx.agent_budgets(workspace)}
            today = tx.spend_by_subject(workspace, AGENT_DAILY, day_of(now))
            month = tx.spend_by_subject(workspace, AGENT_MONTHLY, month_of(now))
            reserved = self._held_by(tx, workspace, now, by_agent=True)
        agents = sorted(set(limits) | set(today) | set(month) | set(reserved))
        return [
            self._agent_budget(ws, agent, limits.get((ws, agent)), today, month, reserved, now) for ws, agent in agents
        ]

    def set_workspace_budget_request(self, workspace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """``PUT /v1/workspace-budget``."""
        _only(body, ("dailyLimitUsd", "warnAtPercent"))
        return self.set_workspace_budget(
            workspace,
            _limit(body, "dailyLimitUsd", "the workspace's limit per UTC day, all agents together"),
            warn_at_percent=warn_percent(dict(body), nullable=True) if "warnAtPercent" in body else UNSET,
        )

    def set_workspace_budget(
        self, workspace: str, daily_limit_usd: Amount = UNSET, *, warn_at_percent: Amount = UNSET
    ) -> dict[str, Any]:
        changes = {
            column: _optional_amount(value, name)
            for column, name, value in (
                ("daily_limit", "the daily limit", daily_limit_usd),
                ("warn_at_percent", "the warning threshold", warn_at_percent),
            )
            if value is not UNSET
        }
        with self.store.write(workspace) as tx:
            tx.put_workspace_settings(workspace, changes)
        return self.workspace_budgets(workspace)[0]

    @staticmethod
    def _workspace_budget(
        workspace: str,
        row: Optional[Mapping[str, Any]],
        today: Mapping[tuple[str, str], Decimal],
        reserved: Mapping[tuple[str, str], Decimal],
        now: datetime.datetime,
    ) -> dict[str, Any]:
        limit = optional_amount(row["daily_limit"]) if row is not None else None
        spent = today.get((workspace, ""), money.ZERO)
        held = reserved.get((workspace, ""), money.ZERO)
        return {
            "workspace": workspace,
            "dailyLimitUsd": limit,
            "spentTodayUsd": spent,
            "reservedUsd": held,
            "remainingBudgetUsd": None
            if limit is None
            else max(money.subtract(limit, money.add(spent, held)), money.ZERO),
            "warnAtPercent": optional_amount(row["warn_at_percent"]) if row is not None else None,
            "resetsAt": iso(next_utc_midnight(now)),
        }

    def workspace_budgets(self, workspace: Optional[str] = None) -> list[dict[str, Any]]:
        now = self._now()
        with self.store.read() as tx:
            rows = {r["workspace"]: r for r in tx.workspace_settings(workspace)}
            today = tx.spend_by_subject(workspace, WORKSPACE_DAILY, day_of(now))
            reserved = self._held_by(tx, workspace, now, by_agent=False)
        names = sorted(set(rows) | {ws for ws, _ in today} | {ws for ws, _ in reserved})
        if workspace is not None and workspace not in names:
            names = [workspace]
        return [self._workspace_budget(ws, rows.get(ws), today, reserved, now) for ws in names]

    def budgets_overview(self, workspace: str) -> dict[str, Any]:
        """``GET /v1/budgets``: the agents' budgets, the workspace's and its settings."""
        (workspace_budget,) = self.workspace_budgets(workspace)
        return {
            "budgets": self.budgets(workspace),
            "workspaceBudget": workspace_budget,
            "settings": self.settings(workspace),
        }

    def settings(self, workspace: str) -> dict[str, Any]:
        with self.store.read() as tx:
            rows = tx.workspace_settings(workspace)
        return {"workspace": workspace, "allowUnpricedModels": bool(rows[0]["allow_unpriced"]) if rows else False}

    def set_settings_request(self, workspace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        _only(body, ("allowUnpricedModels",))
        allow = body.get("allowUnpricedModels")
        if "allowUnpricedModels" in body and not isinstance(allow, bool):
            raise BadInput(f'"allowUnpricedModels" must be true or false; got {shown(allow)}.')
        return self.set_settings(workspace, allow_unpriced_models=allow)

    def set_settings(self, workspace: str, *, allow_unpriced_models: Optional[bool] = None) -> dict[str, Any]:
        changes = {} if allow_unpriced_models is None else {"allow_unpriced": int(allow_unpriced_models)}
        with self.store.write(workspace) as tx:
            tx.put_workspace_settings(workspace, changes)
        return self.settings(workspace)

    # -- prices ------------------------------------------------------------------------------------

    def prices(self, workspace: str) -> Mapping[str, Rates]:
        """The workspace's own prices, by key (``provider/model`` or ``model``, normalised). A :class:`Workspace`
        (an authenticated request's) gets those kept since its version was read, or later ones; any other name
        reads them. Not to be changed: they may be shared."""
        kept = self._kept_prices(workspace)
        if kept is not None:
            return kept
        with self.store.read() as tx:
            return self._read_prices(tx, workspace)

    def _prices_in(self, tx: Tx, workspace: str) -> Mapping[str, Rates]:
        """:meth:`prices`, read in the transaction ``tx`` when they must be read."""
        kept = self._kept_prices(workspace)
        return kept if kept is not None else self._read_prices(tx, workspace)

    def _kept_prices(self, workspace: str) -> Optional[dict[str, Rates]]:
        version = getattr(workspace, "prices_version", None)
        kept = self._prices.get(workspace)
        # Versions only grow: prices kept at the version the request read, or at a later one, are current for it.
        if version is None or kept is None or kept[0] < version:
            return None
        return kept[1]

    def _read_prices(self, tx: Tx, workspace: str) -> dict[str, Rates]:
        # The version first: a PostgreSQL write transaction's statements may each see a later commit, and
        # prices newer than their version are only read again, never older ones taken for current.
        version = tx.prices_version(workspace)
        prices = self._rates(tx, workspace)
        with self._writes_lock:
            kept = self._prices.get(workspace)
            if kept is None or kept[0] < version:
                if len(self._prices) >= _PRICES_KEPT:
                    self._prices.clear()
                self._prices[str(workspace)] = (version, prices)
        return prices

    @staticmethod
    def _rates(tx: Tx, workspace: str) -> dict[str, Rates]:
        rows = tx.prices(workspace)
        return {
            row["name"]: Rates(
                amount(row["input_per_mtok"]),
                amount(row["output_per_mtok"]),
                optional_amount(row["cache_read_per_mtok"]),
                optional_amount(row["cache_write_per_mtok"]),
            )
            for row in rows
        }

    def set_price_request(self, workspace: str, model: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """``PUT /v1/prices/{model}``."""
        _only(body, PRICE_FIELDS)
        name = normalise_name(model)
        try:
            rates = rates_from(dict(body), PRICE_FIELDS, f"the price of {name!r}")
        except ValueError as exc:
            raise BadInput(
                f'{exc}: send {{"inputPerMtok": 3, "outputPerMtok": 12}} and optionally cacheReadPerMtok and '
                "cacheWritePerMtok (USD per million tokens)."
            ) from None
        self.set_price(workspace, name, rates)
        return {"model": name, **rates.as_json()}

    def set_price(self, workspace: str, name: str, rates: Rates) -> None:
        updated = iso(self._now())
        assert updated is not None
        rate_values = (
            rates.input_per_mtok,
            rates.output_per_mtok,
            rates.cache_read_per_mtok,
            rates.cache_write_per_mtok,
        )
        with self.store.write(workspace) as tx:
            tx.put_price(workspace, name, rate_values, updated)

    def remove_price(self, workspace: str, name: str) -> bool:
        with self.store.write(workspace) as tx:
            return tx.remove_price(workspace, name)

    def remove_price_request(self, workspace: str, model: str) -> None:
        name = normalise_name(model)
        if not self.remove_price(workspace, name):
            raise NotFound(f"No price for {name!r} in this workspace; GET /v1/prices lists them.")


def _checked_span_event(event: dict[str, Any]) -> PricedEvent:
    """A span's event checked as POST /v1/events checks one; content too large for an event is left out."""
    try:
        return check_event(0, event)
    except Rejection as rejection:
        if not rejection.too_large:
            raise
    note = f"[left out: the event was over the ledger's {MAX_EVENT_BYTES} bytes]"
    return check_event(0, {**event, **{name: note for name in _CONTENT if name in event}})


def _conversation_key(conversation: str) -> str:
    """A conversation's key: its id, or the id's hash when it is long or holds what a text column cannot."""
    if len(conversation) <= MAX_CONVERSATION_KEY and "\x00" not in conversation:
        return f"conversation:{conversation}"
    return "conversation-sha256:" + hashlib.sha256(conversation.encode("utf-8", "surrogatepass")).hexdigest()


def _iso_ns(ns: int) -> str:
    moment = datetime.datetime.fromtimestamp(ns // 10**9, datetime.timezone.utc)
    return iso(moment.replace(microsecond=ns // 1000 % 10**6)) or ""


def _instant(text: Optional[str]) -> datetime.datetime:
    """A time the ledger stored (ISO 8601, Z), to compare: its text does not sort (the fraction may be absent)."""
    if not text:
        return datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


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


@dataclass
class PlannedReservation:
    """A reservation checked and priced (:meth:`LedgerService.plan_reservation`), not yet made."""

    workspace: str
    request: ReservationRequest
    idempotency: Optional[Idempotency]
    pricing: Callable[[Mapping[str, Rates]], ReservationRequest]
    key: tuple[str, str]  # its key's id and secret
    # The values of the plain case's call (Tx.reserve_at_once, Store.reserve_on_loop); None when it cannot be
    # made (prices not kept here, or none for the model), and the general path decides.
    call: Optional[dict[str, Any]] = None
    body: dict[str, Any] = field(default_factory=dict)  # the reply if the call grants it
    now: datetime.datetime = datetime.datetime.min
    forget_reservations: bool = False
    forget_idempotency: bool = False

    def granted(self) -> Reply:
        return Reply(Outcome.CREATED, self.body)


@dataclass
class _Batch:
    """A batch's event rows and totals, as ``_store_events`` writes them."""

    session_id: str
    rows: list[StoredEvent]
    cost: Decimal
    tokens_in: int
    tokens_out: int
    unpriced: int
    estimated: int

    @classmethod
    def of(
        cls,
        session_id: str,
        received: str,
        events: Sequence[PricedEvent],
        stored: Optional[Sequence[PricedEvent]] = None,
    ) -> _Batch:
        """``events``' totals and the rows of ``stored`` (``events`` and their budget warnings; default: ``events``)."""
        rows = stored_rows(session_id, received, events if stored is None else stored)
        return cls(
            session_id,
            rows,
            money.add(*(e.cost_usd for e in events)),
            sum(e.tokens_in for e in events),
            sum(e.tokens_out for e in events),
            sum(1 for e in events if e.cost_status == UNPRICED),
            sum(1 for e in events if e.cost_status == ESTIMATED),
        )


def _priced(events: Sequence[PricedEvent]) -> list[dict[str, Any]]:
    """What each LLM call with a ``spanId`` cost, for the SDK's OpenTelemetry spans (see docs/otel.md)."""
    return [
        {"spanId": e.payload["spanId"], "costUsd": e.cost_usd, "costStatus": e.cost_status, "overBudget": e.over_budget}
        for e in events
        if e.type == "llm_call" and isinstance(e.payload.get("spanId"), str)
    ]
