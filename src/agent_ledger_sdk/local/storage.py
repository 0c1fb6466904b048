"""The local ledger's storage: :class:`SQLiteStore`, the implementation of :class:`~.records.LedgerStore`.

Every write that checks something and then changes something (budgets and
reservations, ending a session, idempotency) runs in one transaction
(``BEGIN IMMEDIATE``): concurrent requests, from threads or processes sharing
the file, never over-grant a budget or apply a request twice. The rules of
budgets are in ``budgets.py``, the tables in ``schema.py``; amounts are exact
Decimals stored as text (``money.py``).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import logging
import os
import secrets
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Optional, Union

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
from .pricing import ESTIMATED, UNPRICED, Rates
from .records import (
    BUDGET_CACHE_SECONDS,
    DEFAULT_WORKSPACE,
    RESERVATION_TTL_SECONDS,
    UNSET,
    Amount,
    ApiKey,
    BudgetExceeded,
    Conflict,
    Idempotency,
    IdempotencyMismatch,
    LedgerStore,
    NewApiKey,
    NotFound,
    PricedEvent,
    Reply,
    ReservationRequest,
    SessionContext,
    SessionQuery,
    StoreError,
    UnpricedModel,
    utc_now,
)
from .schema import create_or_upgrade

logger = logging.getLogger("agent_ledger_sdk.local")

Clock = Callable[[], datetime.datetime]
KEY_PREFIX = LOCAL_KEY_PREFIX  # new keys: al_local_<id>_<secret>
LEGACY_KEY_PREFIX = "al_"  # keys of earlier versions, al_<id>_<secret>, still authenticate
# Settled, released and expired reservations are remembered this long (DELETE answers 204, not 404).
RESERVATION_MEMORY = datetime.timedelta(days=1)

# The records and errors are imported from here by the API layer, the CLI and tests.
__all__ = [
    "BUDGET_CACHE_SECONDS",
    "DEFAULT_WORKSPACE",
    "RESERVATION_TTL_SECONDS",
    "UNSET",
    "Amount",
    "ApiKey",
    "BudgetExceeded",
    "Conflict",
    "Idempotency",
    "IdempotencyMismatch",
    "LedgerStore",
    "NewApiKey",
    "NotFound",
    "PricedEvent",
    "Reply",
    "ReservationRequest",
    "SQLiteStore",
    "SessionContext",
    "SessionQuery",
    "StoreError",
    "UnpricedModel",
    "iso",
    "next_utc_midnight",
    "utc_now",
]


def _stamp(moment: datetime.datetime) -> str:
    """A fixed-width UTC time: such stamps compare as text in the order of time."""
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def key_id_of(secret: str) -> Optional[str]:
    """The id inside a key of either form (``al_local_<id>_<secret>`` or ``al_<id>_<secret>``), or None."""
    for prefix in (KEY_PREFIX, LEGACY_KEY_PREFIX):
        if secret.startswith(prefix):
            key_id, separator, rest = secret[len(prefix) :].partition("_")
            return key_id if key_id and separator and rest else None
    return None


def _hash_secret(secret: str) -> str:
    # Keys are 256-bit random tokens: a fast hash is the right tool (as for GitHub tokens).
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _optional_amount(value: Amount, name: str) -> Optional[Decimal]:
    if value is None:
        return None
    amount = money.exact(value)
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{name} must be a non-negative number")
    return amount


def _stored(amount: Optional[Decimal]) -> Optional[str]:
    return None if amount is None else money.text(amount)


def _read_amount(stored: Optional[str]) -> Optional[Decimal]:
    return None if stored is None else Decimal(stored)


def _create_private_file(path: Path) -> bool:
    """Create ``path`` empty with mode 0600 unless it exists; True when this call created it."""
    try:
        fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    os.chmod(path, 0o600)
    return True


@dataclass
class _Limits:
    """The budgets that apply to one session's calls right now, and the workspace's setting for unpriced models."""

    budgets: list[Budget] = field(default_factory=list)
    allow_unpriced: bool = False


class SQLiteStore(LedgerStore):
    """The embedded default: one SQLite file in WAL mode, shared safely by a server and the CLI."""

    def __init__(
        self,
        path: Union[str, Path],
        *,
        clock: Clock = utc_now,
        reservation_ttl_seconds: float = RESERVATION_TTL_SECONDS,
    ) -> None:
        self.path = Path(path)
        created = False
        if str(path) not in (":memory:", ""):
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # The database holds prompts, outputs and key hashes: readable by this user only. SQLite
            # gives its -wal and -shm files the mode of the database file.
            created = _create_private_file(self.path)
        self._clock = clock
        self.reservation_ttl = datetime.timedelta(seconds=reservation_ttl_seconds)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30.0)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._write() as db:
            create_or_upgrade(db)
        if created:
            for suffix in ("-wal", "-shm"):
                companion = Path(f"{self.path}{suffix}")
                if companion.exists():
                    os.chmod(companion, 0o600)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, exclusive across threads and processes from its first statement."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._db

    def _now(self) -> datetime.datetime:
        return self._clock()

    # -- keys ----------------------------------------------------------------

    def create_key(self, name: str, workspace: str = DEFAULT_WORKSPACE) -> NewApiKey:
        key_id = secrets.token_hex(6)
        secret = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        created = iso(self._now())
        assert created is not None
        with self._write() as db:
            db.execute(
                "INSERT INTO api_keys (id, name, workspace, key_hash, created_at) VALUES (?, ?, ?, ?, ?)",
                (key_id, name, workspace, _hash_secret(secret), created),
            )
        return NewApiKey(ApiKey(key_id, name, workspace, created, None), secret)

    def list_keys(self) -> list[ApiKey]:
        with self._read() as db:
            rows = db.execute("SELECT * FROM api_keys ORDER BY created_at, id").fetchall()
        return [ApiKey(r["id"], r["name"], r["workspace"], r["created_at"], r["revoked_at"]) for r in rows]

    def revoke_key(self, key_id: str) -> ApiKey:
        with self._write() as db:
            row = db.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
            if row is None:
                raise NotFound(f"No API key with id {key_id!r}; `agent-ledger keys list` shows the ids.")
            revoked = row["revoked_at"] or iso(self._now())
            db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (revoked, key_id))
        return ApiKey(row["id"], row["name"], row["workspace"], row["created_at"], revoked)

    def authenticate(self, secret: str) -> Optional[str]:
        key_id = key_id_of(secret)
        if key_id is None:
            return None
        with self._read() as db:
            row = db.execute("SELECT workspace, key_hash, revoked_at FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        expected = row["key_hash"] if row is not None else _hash_secret("no such key")
        matches = hmac.compare_digest(expected, _hash_secret(secret))
        if row is None or not matches or row["revoked_at"] is not None:
            return None
        return str(row["workspace"])

    # -- idempotency -----------------------------------------------------------

    def _replay(self, db: sqlite3.Connection, workspace: str, idempotency: Optional[Idempotency]) -> Optional[Reply]:
        if idempotency is None:
            return None
        row = db.execute(
            "SELECT fingerprint, status, body FROM idempotency WHERE workspace = ? AND key = ?",
            (workspace, idempotency.key),
        ).fetchone()
        if row is None:
            return None
        if row["fingerprint"] != idempotency.fingerprint:
            raise IdempotencyMismatch(
                f"Idempotency-Key {idempotency.key!r} was already used for a different request; "
                "use a new key for each new request (and the same key only to retry it)."
            )
        return Reply(row["status"], json.loads(row["body"]), replayed=True, raw=row["body"])

    def _remember(
        self, db: sqlite3.Connection, workspace: str, idempotency: Optional[Idempotency], reply: Reply
    ) -> Reply:
        if idempotency is not None:
            db.execute(
                "INSERT INTO idempotency (workspace, key, fingerprint, status, body, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    workspace,
                    idempotency.key,
                    idempotency.fingerprint,
                    reply.status,
                    money.dumps(reply.body),
                    iso(self._now()),
                ),
            )
        return reply

    # -- sessions and events ----------------------------------------------------

    def start_session(
        self,
        workspace: str,
        agent_name: str,
        idempotency: Optional[Idempotency],
        context: Optional[SessionContext] = None,
    ) -> Reply:
        context = context or SessionContext()
        metadata = context.metadata or {}
        now = self._now()
        with self._write() as db:
            replay = self._replay(db, workspace, idempotency)
            if replay is not None:
                return replay
            session_id = str(uuid.uuid4())
            started = iso(now)
            db.execute(
                "INSERT INTO sessions (id, workspace, agent_name, status, started_at, user_id, tags, metadata,"
                " parent_session_id, max_cost, warn_at_percent) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?)",
                (
                    session_id,
                    workspace,
                    agent_name,
                    started,
                    context.user_id,
                    _compact(list(context.tags)),
                    _compact(metadata),
                    context.parent_session_id,
                    _stored(context.max_cost_usd),
                    _stored(context.warn_at_percent),
                ),
            )
            row = self._session_row(db, workspace, session_id)
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
                "budgeted": bool(self._limits(db, workspace, row, now, spending=False).budgets),
            }
            return self._remember(db, workspace, idempotency, Reply(201, body))

    def _session_row(self, db: sqlite3.Connection, workspace: Optional[str], session_id: str) -> sqlite3.Row:
        if workspace is None:
            row = db.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone()
        else:
            row = db.execute(
                "SELECT * FROM sessions WHERE id = ? AND workspace = ?", (session_id, workspace)
            ).fetchone()
        if row is None:
            raise NotFound(
                f"Session {session_id!r} not found. Use the id that POST /v1/sessions returned, "
                "with an API key of the same workspace."
            )
        found: sqlite3.Row = row
        return found

    @staticmethod
    def _running(row: sqlite3.Row, what: str) -> None:
        if row["status"] != "running":
            raise Conflict(
                f"Session {row['id']!r} already ended with status {row['status']!r}; {what} only "
                "a running session. Start a new session for new work."
            )

    def end_session(
        self,
        workspace: str,
        session_id: str,
        status: str,
        error_message: Optional[str],
        idempotency: Optional[Idempotency],
    ) -> Reply:
        with self._write() as db:
            replay = self._replay(db, workspace, idempotency)
            if replay is not None:
                return replay
            row = self._session_row(db, workspace, session_id)
            if row["status"] != "running":
                raise Conflict(
                    f"Session {session_id!r} already ended with status {row['status']!r}; "
                    "a session ends once. Start a new session for new work."
                )
            ended = iso(self._now())
            db.execute(
                "UPDATE sessions SET status = ?, error_message = ?, ended_at = ? WHERE id = ?",
                (status, error_message, ended, session_id),
            )
            # An ended session takes no more events: what it still holds can never be settled.
            db.execute(
                "UPDATE reservations SET state = 'released' WHERE workspace = ? AND session_id = ? AND state = 'held'",
                (workspace, session_id),
            )
            body = {"id": session_id, "status": status, "errorMessage": error_message, "endedAt": ended}
            return self._remember(db, workspace, idempotency, Reply(200, body))

    # -- budgets: what applies, what is spent and held ------------------------------

    @staticmethod
    def _spent(db: sqlite3.Connection, workspace: str, scope: str, subject: str, period: str) -> Decimal:
        row = db.execute(
            "SELECT amount FROM spend WHERE workspace = ? AND scope = ? AND subject = ? AND period = ?",
            (workspace, scope, subject, period),
        ).fetchone()
        return money.parse(row["amount"] if row is not None else None)

    @classmethod
    def _add_spend(
        cls, db: sqlite3.Connection, workspace: str, scope: str, subject: str, period: str, amount: Decimal
    ) -> None:
        total = money.add(cls._spent(db, workspace, scope, subject, period), amount)
        db.execute(
            "INSERT INTO spend (workspace, scope, subject, period, amount) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (workspace, scope, subject, period) DO UPDATE SET amount = excluded.amount",
            (workspace, scope, subject, period, money.text(total)),
        )

    def _live_reservations(self, db: sqlite3.Connection, workspace: str, now: datetime.datetime) -> list[sqlite3.Row]:
        """The workspace's reservations still held; those long gone are forgotten on the way (lazily)."""
        db.execute(
            "DELETE FROM reservations WHERE workspace = ? AND expires_at <= ?",
            (workspace, _stamp(now - RESERVATION_MEMORY)),
        )
        rows: list[sqlite3.Row] = db.execute(
            "SELECT id, session_id, agent_name, amount FROM reservations"
            " WHERE workspace = ? AND state = 'held' AND expires_at > ?",
            (workspace, _stamp(now)),
        ).fetchall()
        return rows

    def _limits(
        self, db: sqlite3.Connection, workspace: str, session: sqlite3.Row, now: datetime.datetime, *, spending: bool
    ) -> _Limits:
        """The budgets of ``session``'s calls, with their spend and reservations (only if ``spending``)."""
        agent = session["agent_name"]
        agent_row = db.execute(
            "SELECT daily_limit, monthly_limit, warn_at_percent FROM agent_budgets WHERE workspace = ? AND agent_name = ?",
            (workspace, agent),
        ).fetchone()
        settings = db.execute(
            "SELECT daily_limit, warn_at_percent, allow_unpriced FROM workspace_settings WHERE workspace = ?",
            (workspace,),
        ).fetchone()
        found = _Limits(allow_unpriced=bool(settings["allow_unpriced"]) if settings is not None else False)
        wanted: list[tuple[str, Optional[str], Optional[str]]] = []
        if agent_row is not None:
            wanted.append((AGENT_DAILY, agent_row["daily_limit"], agent_row["warn_at_percent"]))
            wanted.append((AGENT_MONTHLY, agent_row["monthly_limit"], agent_row["warn_at_percent"]))
        if settings is not None:
            wanted.append((WORKSPACE_DAILY, settings["daily_limit"], settings["warn_at_percent"]))
        wanted.append((SESSION, session["max_cost"], session["warn_at_percent"]))
        wanted = [entry for entry in wanted if entry[1] is not None]
        if not wanted or not spending:
            found.budgets = [
                Budget(kind, Decimal(limit or "0"), money.ZERO, money.ZERO, None, None, agent, "")
                for kind, limit, _ in wanted
            ]
            return found
        held = self._live_reservations(db, workspace, now)
        day, month = day_of(now), month_of(now)
        for kind, limit, warn in wanted:
            if kind == AGENT_DAILY:
                spent = self._spent(db, workspace, AGENT_DAILY, agent, day)
                reserved = [r for r in held if r["agent_name"] == agent]
                resets: Optional[datetime.datetime] = next_utc_midnight(now)
                subject = agent
            elif kind == AGENT_MONTHLY:
                spent = self._spent(db, workspace, AGENT_MONTHLY, agent, month)
                reserved = [r for r in held if r["agent_name"] == agent]
                resets, subject = next_utc_month(now), agent
            elif kind == WORKSPACE_DAILY:
                spent = self._spent(db, workspace, WORKSPACE_DAILY, "", day)
                reserved = held
                resets, subject = next_utc_midnight(now), workspace
            else:
                spent = money.parse(session["cost"])
                reserved = [r for r in held if r["session_id"] == session["id"]]
                resets, subject = None, session["id"]
            found.budgets.append(
                Budget(
                    kind=kind,
                    limit=Decimal(str(limit)),
                    spent=spent,
                    reserved=money.add(*(Decimal(r["amount"]) for r in reserved)),
                    warn_at_percent=_read_amount(warn),
                    resets_at=resets,
                    agent_name=agent,
                    subject=subject,
                )
            )
        return found

    # -- events ---------------------------------------------------------------------------

    def append_events(
        self, workspace: str, session_id: str, events: Sequence[PricedEvent], idempotency: Optional[Idempotency]
    ) -> Reply:
        now = self._now()
        received = iso(now)
        with self._write() as db:
            replay = self._replay(db, workspace, idempotency)
            if replay is not None:
                return replay
            row = self._session_row(db, workspace, session_id)
            self._running(row, "events can only be added to")
            refusal: Optional[dict[str, Any]] = None
            warnings: dict[int, list[PricedEvent]] = {}
            if any(e.type == "llm_call" for e in events):
                refusal, warnings = self._charge(db, workspace, row, events, now)
            stored: list[PricedEvent] = []
            for position, event in enumerate(events):
                stored.append(event)
                stored.extend(warnings.get(position, ()))
            db.executemany(
                "INSERT INTO events (session_id, step_index, type, payload, cost, cost_status, over_budget,"
                " pricing_note, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        session_id,
                        e.step_index,
                        e.type,
                        e.payload_json(),
                        money.text(e.cost_usd),
                        e.cost_status,
                        int(e.over_budget),
                        e.pricing_note,
                        received,
                    )
                    for e in stored
                ],
            )
            cost = money.add(*(e.cost_usd for e in events))
            db.execute(
                "UPDATE sessions SET cost = ?, tokens_in = tokens_in + ?, tokens_out = tokens_out + ?,"
                " event_count = event_count + ?, unpriced_count = unpriced_count + ?,"
                " estimated_count = estimated_count + ?, over_budget_count = over_budget_count + ? WHERE id = ?",
                (
                    money.text(money.add(money.parse(row["cost"]), cost)),
                    sum(e.tokens_in for e in events),
                    sum(e.tokens_out for e in events),
                    len(stored),
                    sum(1 for e in events if e.cost_status == UNPRICED),
                    sum(1 for e in events if e.cost_status == ESTIMATED),
                    sum(1 for e in events if e.over_budget),
                    session_id,
                ),
            )
            body: dict[str, Any] = {"accepted": len(events), "costUsd": cost}
            if refusal is None:
                return self._remember(db, workspace, idempotency, Reply(202, body))
            # The calls ran (no reservation stopped them): they are recorded and counted, and the
            # published client is told to stop with its 429.
            over = [position for position, e in enumerate(events) if e.over_budget]
            return self._remember(db, workspace, idempotency, Reply(429, {**refusal, **body, "overBudgetEvents": over}))

    def _charge(
        self,
        db: sqlite3.Connection,
        workspace: str,
        session: sqlite3.Row,
        events: Sequence[PricedEvent],
        now: datetime.datetime,
    ) -> tuple[Optional[dict[str, Any]], dict[int, list[PricedEvent]]]:
        """Settle reservations, check budgets and count the spend of a batch's LLM calls, in order.

        Returns the guardrail body of the first unreserved call that went over a budget (None if
        none did), and the ``budget_warning`` events to store after each call that crossed a
        soft threshold.
        """
        limits = self._limits(db, workspace, session, now, spending=True)
        calls = [(position, e) for position, e in enumerate(events) if e.type == "llm_call"]
        held = self._held_for(db, workspace, session["id"], [e.reservation_id for _, e in calls], now)
        if limits.budgets and not limits.allow_unpriced:
            unpriced = [(p, e) for p, e in calls if e.cost_status == UNPRICED and e.reservation_id not in held]
            if unpriced:
                raise self._unpriced(session["agent_name"], unpriced)
        refusal: Optional[dict[str, Any]] = None
        warnings: dict[int, list[PricedEvent]] = {}
        for position, event in calls:
            reservation = held.pop(event.reservation_id, None) if event.reservation_id else None
            if reservation is not None:
                reserved = Decimal(reservation["amount"])
                for budget in limits.budgets:  # it was counted in every budget of this session
                    budget.reserved = money.subtract(budget.reserved, reserved)
                if (event.usage_missing or event.cost_status == UNPRICED) and reserved > 0:
                    why = "usage missing" if event.usage_missing else "no price for the model"
                    event.cost_usd, event.cost_status = reserved, ESTIMATED
                    event.pricing_note = f"{why}: charged the ${money.text(reserved)} it reserved"
                db.execute("UPDATE reservations SET state = 'settled' WHERE id = ?", (reservation["id"],))
            over = [budget for budget in limits.budgets if not budget.fits(event.cost_usd)]
            if over:
                event.over_budget = True
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
        cost = money.add(*(e.cost_usd for _, e in calls))
        if cost:
            agent, day = session["agent_name"], day_of(now)
            self._add_spend(db, workspace, AGENT_DAILY, agent, day, cost)
            self._add_spend(db, workspace, AGENT_MONTHLY, agent, month_of(now), cost)
            self._add_spend(db, workspace, WORKSPACE_DAILY, "", day, cost)
        return refusal, warnings

    @staticmethod
    def _held_for(
        db: sqlite3.Connection,
        workspace: str,
        session_id: str,
        ids: Sequence[Optional[str]],
        now: datetime.datetime,
    ) -> dict[str, sqlite3.Row]:
        """The reservations named by ``ids`` that this session still holds (an unknown or expired one: none)."""
        wanted = sorted({i for i in ids if i})
        if not wanted:
            return {}
        rows = db.execute(
            f"SELECT id, amount FROM reservations WHERE id IN ({','.join('?' * len(wanted))})"
            " AND workspace = ? AND session_id = ? AND state = 'held' AND expires_at > ?",
            (*wanted, workspace, session_id, _stamp(now)),
        ).fetchall()
        return {row["id"]: row for row in rows}

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

    # -- reservations ---------------------------------------------------------------------

    def reserve(self, workspace: str, request: ReservationRequest, idempotency: Optional[Idempotency]) -> Reply:
        now = self._now()
        with self._write() as db:
            replay = self._replay(db, workspace, idempotency)
            if replay is not None:
                return replay
            session = self._session_row(db, workspace, request.session_id)
            self._running(session, "reservations are made for")
            limits = self._limits(db, workspace, session, now, spending=True)
            if not limits.budgets:
                body: dict[str, Any] = {"budgeted": False, "ttlSeconds": BUDGET_CACHE_SECONDS}
                return self._remember(db, workspace, idempotency, Reply(200, body))
            amount = request.amount
            if amount is None:
                if not limits.allow_unpriced:
                    raise UnpricedModel(
                        f"{request.note or 'No price for the model.'} Agent {session['agent_name']!r} has a budget, "
                        "so a call the ledger cannot price is refused before it runs.",
                        code="unpriced_model",
                        provider=request.provider,
                        model=request.model,
                    )
                amount = request.max_cost_usd if request.max_cost_usd is not None else money.ZERO
            for budget in limits.budgets:
                if not budget.fits(amount):
                    raise BudgetExceeded(budget.refusal(amount))
            reservation_id = f"res_{secrets.token_hex(12)}"
            expires = _stamp(now + self.reservation_ttl)
            db.execute(
                "INSERT INTO reservations (id, workspace, session_id, agent_name, provider, model, amount, state,"
                " created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'held', ?, ?)",
                (
                    reservation_id,
                    workspace,
                    session["id"],
                    session["agent_name"],
                    request.provider,
                    request.model,
                    money.text(amount),
                    _stamp(now),
                    expires,
                ),
            )
            body = {
                "budgeted": True,
                "id": reservation_id,
                "reservedUsd": amount,
                "expiresAt": expires,
                "ttlSeconds": BUDGET_CACHE_SECONDS,
            }
            return self._remember(db, workspace, idempotency, Reply(201, body))

    def release(self, workspace: str, reservation_id: str, idempotency: Optional[Idempotency]) -> Reply:
        with self._write() as db:
            replay = self._replay(db, workspace, idempotency)
            if replay is not None:
                return replay
            row = db.execute("SELECT workspace, state FROM reservations WHERE id = ?", (reservation_id,)).fetchone()
            if row is None or row["workspace"] != workspace:
                raise NotFound(
                    f"Reservation {reservation_id!r} not found. Use the id that POST /v1/reservations returned, "
                    "with an API key of the same workspace (ids are remembered for a day after they expire)."
                )
            if row["state"] == "held":
                db.execute("UPDATE reservations SET state = 'released' WHERE id = ?", (reservation_id,))
            return self._remember(db, workspace, idempotency, Reply(204, {}))

    # -- reads --------------------------------------------------------------------

    @staticmethod
    def _session_summary(row: sqlite3.Row) -> dict[str, Any]:
        return {
            "id": row["id"],
            "workspace": row["workspace"],
            "agentName": row["agent_name"],
            "status": row["status"],
            "errorMessage": row["error_message"],
            "startedAt": row["started_at"],
            "endedAt": row["ended_at"],
            "costUsd": money.parse(row["cost"]),
            "tokensIn": row["tokens_in"],
            "tokensOut": row["tokens_out"],
            "eventCount": row["event_count"],
            "unpricedEvents": row["unpriced_count"],
            "estimatedEvents": row["estimated_count"],
            "overBudgetEvents": row["over_budget_count"],
            "maxCostUsd": _read_amount(row["max_cost"]),
            "userId": row["user_id"],
            "tags": json.loads(row["tags"]),
            "metadata": json.loads(row["metadata"]),
            "parentSessionId": row["parent_session_id"],
        }

    def get_session(self, session_id: str, workspace: Optional[str] = None) -> dict[str, Any]:
        with self._read() as db:
            row = self._session_row(db, workspace, session_id)
            events = db.execute(
                "SELECT payload, cost, cost_status, over_budget, pricing_note, received_at FROM events"
                " WHERE session_id = ? ORDER BY step_index IS NULL, step_index, seq",
                (session_id,),
            ).fetchall()
            children = db.execute(
                "SELECT id FROM sessions WHERE workspace = ? AND parent_session_id = ? ORDER BY seq",
                (row["workspace"], session_id),
            ).fetchall()
        summary = self._session_summary(row)
        summary["childSessionIds"] = [child["id"] for child in children]
        summary["events"] = [
            {
                **json.loads(e["payload"]),
                "costUsd": money.parse(e["cost"]),
                "costStatus": e["cost_status"],
                "overBudget": bool(e["over_budget"]),
                "priced": e["cost_status"] != UNPRICED,
                "pricingNote": e["pricing_note"],
                "receivedAt": e["received_at"],
            }
            for e in events
        ]
        return summary

    def list_sessions(self, query: SessionQuery) -> dict[str, Any]:
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("workspace = ?", query.workspace),
            ("agent_name = ?", query.agent_name),
            ("status = ?", query.status),
            ("started_at >= ?", query.started_after),
            ("started_at < ?", query.started_before),
            ("seq < ?", query.cursor),
            ("user_id = ?", query.user_id),
        ):
            if value is not None:
                clauses.append(column)
                params.append(value)
        for tag in dict.fromkeys(query.tags):
            clauses.append("EXISTS (SELECT 1 FROM json_each(sessions.tags) WHERE json_each.value = ?)")
            params.append(tag)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._read() as db:
            rows = db.execute(
                f"SELECT * FROM sessions {where} ORDER BY seq DESC LIMIT ?", (*params, query.limit + 1)
            ).fetchall()
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        return {
            "sessions": [self._session_summary(r) for r in rows],
            "nextCursor": str(rows[-1]["seq"]) if more and rows else None,
        }

    # -- budgets and settings ------------------------------------------------------------

    def set_budget(
        self,
        workspace: str,
        agent_name: str,
        daily_limit_usd: Amount = UNSET,
        *,
        monthly_limit_usd: Amount = UNSET,
        warn_at_percent: Amount = UNSET,
    ) -> dict[str, Any]:
        changes = {
            column: _optional_amount(value, name)
            for column, name, value in (
                ("daily_limit", "the daily limit", daily_limit_usd),
                ("monthly_limit", "the monthly limit", monthly_limit_usd),
                ("warn_at_percent", "the warning threshold", warn_at_percent),
            )
            if value is not UNSET
        }
        with self._write() as db:
            row = db.execute(
                "SELECT daily_limit, monthly_limit, warn_at_percent FROM agent_budgets"
                " WHERE workspace = ? AND agent_name = ?",
                (workspace, agent_name),
            ).fetchone()
            current = {
                k: (row[k] if row is not None else None) for k in ("daily_limit", "monthly_limit", "warn_at_percent")
            }
            current.update({k: _stored(v) for k, v in changes.items()})
            if current["daily_limit"] is None and current["monthly_limit"] is None:
                db.execute("DELETE FROM agent_budgets WHERE workspace = ? AND agent_name = ?", (workspace, agent_name))
            else:
                db.execute(
                    "INSERT INTO agent_budgets (workspace, agent_name, daily_limit, monthly_limit, warn_at_percent)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (workspace, agent_name) DO UPDATE SET"
                    " daily_limit = excluded.daily_limit, monthly_limit = excluded.monthly_limit,"
                    " warn_at_percent = excluded.warn_at_percent",
                    (
                        workspace,
                        agent_name,
                        current["daily_limit"],
                        current["monthly_limit"],
                        current["warn_at_percent"],
                    ),
                )
        for budget in self.budgets(workspace):
            if budget["agentName"] == agent_name:
                return budget
        return self._agent_budget(workspace, agent_name, None, {}, {}, {}, self._now())

    @staticmethod
    def _agent_budget(
        workspace: str,
        agent: str,
        row: Optional[sqlite3.Row],
        today: dict[tuple[str, str], Decimal],
        month: dict[tuple[str, str], Decimal],
        reserved: dict[tuple[str, str], Decimal],
        now: datetime.datetime,
    ) -> dict[str, Any]:
        daily = _read_amount(row["daily_limit"]) if row is not None else None
        monthly = _read_amount(row["monthly_limit"]) if row is not None else None
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
            "warnAtPercent": _read_amount(row["warn_at_percent"]) if row is not None else None,
        }

    def _held_by(
        self, db: sqlite3.Connection, workspace: Optional[str], now: datetime.datetime, group: str
    ) -> dict[tuple[str, str], Decimal]:
        rows = db.execute(
            f"SELECT workspace, {group} AS subject, amount FROM reservations"
            " WHERE (? IS NULL OR workspace = ?) AND state = 'held' AND expires_at > ?",
            (workspace, workspace, _stamp(now)),
        ).fetchall()
        held: dict[tuple[str, str], Decimal] = {}
        for row in rows:
            key = (row["workspace"], row["subject"])
            held[key] = money.add(held.get(key, money.ZERO), Decimal(row["amount"]))
        return held

    @staticmethod
    def _spend_by(
        db: sqlite3.Connection, workspace: Optional[str], scope: str, period: str
    ) -> dict[tuple[str, str], Decimal]:
        rows = db.execute(
            "SELECT workspace, subject, amount FROM spend WHERE (? IS NULL OR workspace = ?) AND scope = ?"
            " AND period = ?",
            (workspace, workspace, scope, period),
        ).fetchall()
        return {(r["workspace"], r["subject"]): Decimal(r["amount"]) for r in rows}

    def budgets(self, workspace: Optional[str] = None) -> list[dict[str, Any]]:
        now = self._now()
        with self._read() as db:
            limits = {
                (r["workspace"], r["agent_name"]): r
                for r in db.execute(
                    "SELECT * FROM agent_budgets WHERE (? IS NULL OR workspace = ?)", (workspace, workspace)
                ).fetchall()
            }
            today = self._spend_by(db, workspace, AGENT_DAILY, day_of(now))
            month = self._spend_by(db, workspace, AGENT_MONTHLY, month_of(now))
            reserved = self._held_by(db, workspace, now, "agent_name")
        agents = sorted(set(limits) | set(today) | set(month) | set(reserved))
        return [
            self._agent_budget(ws, agent, limits.get((ws, agent)), today, month, reserved, now) for ws, agent in agents
        ]

    def set_workspace_budget(
        self, workspace: str, daily_limit_usd: Amount = UNSET, *, warn_at_percent: Amount = UNSET
    ) -> dict[str, Any]:
        changes = {
            column: _stored(_optional_amount(value, name))
            for column, name, value in (
                ("daily_limit", "the daily limit", daily_limit_usd),
                ("warn_at_percent", "the warning threshold", warn_at_percent),
            )
            if value is not UNSET
        }
        with self._write() as db:
            self._settings_row(db, workspace)
            for column, value in changes.items():
                db.execute(f"UPDATE workspace_settings SET {column} = ? WHERE workspace = ?", (value, workspace))
        (found,) = self.workspace_budgets(workspace) or [self._workspace_budget(workspace, None, {}, {}, self._now())]
        return found

    @staticmethod
    def _settings_row(db: sqlite3.Connection, workspace: str) -> None:
        db.execute("INSERT OR IGNORE INTO workspace_settings (workspace) VALUES (?)", (workspace,))

    @staticmethod
    def _workspace_budget(
        workspace: str,
        row: Optional[sqlite3.Row],
        today: dict[tuple[str, str], Decimal],
        reserved: dict[tuple[str, str], Decimal],
        now: datetime.datetime,
    ) -> dict[str, Any]:
        limit = _read_amount(row["daily_limit"]) if row is not None else None
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
            "warnAtPercent": _read_amount(row["warn_at_percent"]) if row is not None else None,
            "resetsAt": iso(next_utc_midnight(now)),
        }

    def workspace_budgets(self, workspace: Optional[str] = None) -> list[dict[str, Any]]:
        now = self._now()
        with self._read() as db:
            rows = {
                r["workspace"]: r
                for r in db.execute(
                    "SELECT * FROM workspace_settings WHERE (? IS NULL OR workspace = ?)", (workspace, workspace)
                ).fetchall()
            }
            today = self._spend_by(db, workspace, WORKSPACE_DAILY, day_of(now))
            reserved = self._held_by(db, workspace, now, "''")
        names = sorted(set(rows) | {ws for ws, _ in today} | {ws for ws, _ in reserved})
        if workspace is not None and workspace not in names:
            names = [workspace]
        return [self._workspace_budget(ws, rows.get(ws), today, reserved, now) for ws in names]

    def settings(self, workspace: str) -> dict[str, Any]:
        with self._read() as db:
            row = db.execute(
                "SELECT allow_unpriced FROM workspace_settings WHERE workspace = ?", (workspace,)
            ).fetchone()
        return {
            "workspace": workspace,
            "allowUnpricedModels": bool(row["allow_unpriced"]) if row is not None else False,
        }

    def set_settings(self, workspace: str, *, allow_unpriced_models: Optional[bool] = None) -> dict[str, Any]:
        with self._write() as db:
            self._settings_row(db, workspace)
            if allow_unpriced_models is not None:
                db.execute(
                    "UPDATE workspace_settings SET allow_unpriced = ? WHERE workspace = ?",
                    (int(allow_unpriced_models), workspace),
                )
        return self.settings(workspace)

    # -- prices ---------------------------------------------------------------------------

    def prices(self, workspace: str) -> dict[str, Rates]:
        with self._read() as db:
            rows = db.execute("SELECT * FROM prices WHERE workspace = ? ORDER BY name", (workspace,)).fetchall()
        return {
            row["name"]: Rates(
                Decimal(row["input_per_mtok"]),
                Decimal(row["output_per_mtok"]),
                _read_amount(row["cache_read_per_mtok"]),
                _read_amount(row["cache_write_per_mtok"]),
            )
            for row in rows
        }

    def set_price(self, workspace: str, name: str, rates: Rates) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO prices (workspace, name, input_per_mtok, output_per_mtok, cache_read_per_mtok,"
                " cache_write_per_mtok, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (workspace, name) DO UPDATE SET input_per_mtok = excluded.input_per_mtok,"
                " output_per_mtok = excluded.output_per_mtok, cache_read_per_mtok = excluded.cache_read_per_mtok,"
                " cache_write_per_mtok = excluded.cache_write_per_mtok, updated_at = excluded.updated_at",
                (
                    workspace,
                    name,
                    money.text(rates.input_per_mtok),
                    money.text(rates.output_per_mtok),
                    _stored(rates.cache_read_per_mtok),
                    _stored(rates.cache_write_per_mtok),
                    iso(self._now()),
                ),
            )

    def remove_price(self, workspace: str, name: str) -> bool:
        with self._write() as db:
            removed = db.execute("DELETE FROM prices WHERE workspace = ? AND name = ?", (workspace, name)).rowcount
        return bool(removed)
