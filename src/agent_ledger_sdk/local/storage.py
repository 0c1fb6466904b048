"""The local ledger's storage: one interface, :class:`LedgerStore`, and its SQLite implementation.

The API layer (``app.py``) talks only to :class:`LedgerStore`, so another
backend (PostgreSQL) can be added without touching it. Every write that
checks something and then changes something (the budget guardrail, ending a
session, idempotency) runs in one transaction: concurrent requests never
overspend a budget or apply a request twice.
"""

from __future__ import annotations

import abc
import datetime
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from typing_extensions import Self

from .._local_key import LOCAL_KEY_PREFIX

Clock = Callable[[], datetime.datetime]
KEY_PREFIX = LOCAL_KEY_PREFIX  # new keys: al_local_<id>_<secret>
LEGACY_KEY_PREFIX = "al_"  # keys of earlier versions, al_<id>_<secret>, still authenticate
DEFAULT_WORKSPACE = "default"
# Costs are compared with this tolerance so that float sums never refuse an exact fit.
COST_EPSILON = 1e-9


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def iso(moment: Optional[datetime.datetime]) -> Optional[str]:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


def next_utc_midnight(moment: datetime.datetime) -> datetime.datetime:
    day = moment.astimezone(datetime.timezone.utc).date() + datetime.timedelta(days=1)
    return datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.timezone.utc)


# -- what the store raises ---------------------------------------------------


class StoreError(Exception):
    """A request the store refused; ``message`` says what was wrong and how to fix it."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(StoreError):
    status = 404


class Conflict(StoreError):
    status = 409


class IdempotencyMismatch(StoreError):
    status = 422


class BudgetExceeded(StoreError):
    status = 429

    def __init__(self, message: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.details = details


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
    """An event checked by the API layer, with its cost (0 and a note when it could not be priced)."""

    payload: dict[str, Any]
    type: str
    step_index: Optional[int]
    cost_usd: float = 0.0
    priced: bool = True
    pricing_note: Optional[str] = None
    tokens_in: int = 0
    tokens_out: int = 0
    encoded: str = ""  # the payload's compact JSON, when the API layer already made it

    def payload_json(self) -> str:
        return self.encoded or json.dumps(self.payload, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Idempotency:
    key: str
    fingerprint: str  # method, path and body: the same key with another request is refused


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    replayed: bool = False


@dataclass(frozen=True)
class SessionContext:
    """Who and what a session is for, as ``POST /v1/sessions`` received it (already checked)."""

    user_id: Optional[str] = None
    tags: tuple[str, ...] = ()
    metadata: Optional[dict[str, Any]] = None
    parent_session_id: Optional[str] = None


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
    ) -> Reply: ...

    @abc.abstractmethod
    def get_session(self, session_id: str, workspace: Optional[str] = None) -> dict[str, Any]: ...

    @abc.abstractmethod
    def list_sessions(self, query: SessionQuery) -> dict[str, Any]: ...

    @abc.abstractmethod
    def set_budget(self, workspace: str, agent_name: str, daily_limit_usd: Optional[float]) -> dict[str, Any]: ...

    @abc.abstractmethod
    def budgets(self, workspace: Optional[str] = None) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


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


_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    workspace TEXT NOT NULL,
    key_hash TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE TABLE IF NOT EXISTS sessions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    workspace TEXT NOT NULL,
    agent_name TEXT NOT NULL,
    status TEXT NOT NULL,
    error_message TEXT,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    cost_usd REAL NOT NULL DEFAULT 0,
    tokens_in INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    event_count INTEGER NOT NULL DEFAULT 0,
    unpriced_count INTEGER NOT NULL DEFAULT 0,
    user_id TEXT,
    tags TEXT NOT NULL DEFAULT '[]',
    metadata TEXT NOT NULL DEFAULT '{}',
    parent_session_id TEXT
);
CREATE INDEX IF NOT EXISTS sessions_by_workspace ON sessions (workspace, seq);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL REFERENCES sessions (id),
    step_index INTEGER,
    type TEXT NOT NULL,
    payload TEXT NOT NULL,
    cost_usd REAL NOT NULL DEFAULT 0,
    priced INTEGER NOT NULL DEFAULT 1,
    pricing_note TEXT,
    received_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_session ON events (session_id, step_index, seq);
CREATE TABLE IF NOT EXISTS budgets (
    workspace TEXT NOT NULL,
    agent_name TEXT NOT NULL,
    daily_limit_usd REAL NOT NULL,
    PRIMARY KEY (workspace, agent_name)
);
CREATE TABLE IF NOT EXISTS daily_spend (
    workspace TEXT NOT NULL,
    agent_name TEXT NOT NULL,
    day TEXT NOT NULL,
    spent_usd REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (workspace, agent_name, day)
);
CREATE TABLE IF NOT EXISTS idempotency (
    workspace TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status INTEGER NOT NULL,
    body TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (workspace, key)
) WITHOUT ROWID;
"""

# Columns added after the first schema: a database created before them gets them on open.
_ADDED_SESSION_COLUMNS = {
    "user_id": "TEXT",
    "tags": "TEXT NOT NULL DEFAULT '[]'",
    "metadata": "TEXT NOT NULL DEFAULT '{}'",
    "parent_session_id": "TEXT",
}

# Indexes on those columns, created once the columns exist.
_INDEXES = """
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions (workspace, user_id, seq);
CREATE INDEX IF NOT EXISTS sessions_by_parent ON sessions (workspace, parent_session_id);
"""


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _create_private_file(path: Path) -> bool:
    """Create ``path`` empty with mode 0600 unless it exists; True when this call created it."""
    try:
        fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    os.chmod(path, 0o600)
    return True


class SQLiteStore(LedgerStore):
    """The embedded default: one SQLite file in WAL mode, shared safely by a server and the CLI."""

    def __init__(self, path: str | Path, *, clock: Clock = utc_now) -> None:
        self.path = Path(path)
        created = False
        if str(path) not in (":memory:", ""):
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # The database holds prompts, outputs and key hashes: readable by this user only. SQLite
            # gives its -wal and -shm files the mode of the database file.
            created = _create_private_file(self.path)
        self._clock = clock
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30.0)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._write() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            present = {row["name"] for row in db.execute("PRAGMA table_info(sessions)")}
            for column, definition in _ADDED_SESSION_COLUMNS.items():
                if column not in present:
                    db.execute(f"ALTER TABLE sessions ADD COLUMN {column} {definition}")
            for statement in _INDEXES.split(";"):
                if statement.strip():
                    db.execute(statement)
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
        return Reply(row["status"], json.loads(row["body"]), replayed=True)

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
                    json.dumps(reply.body),
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
        with self._write() as db:
            replay = self._replay(db, workspace, idempotency)
            if replay is not None:
                return replay
            session_id = str(uuid.uuid4())
            started = iso(self._now())
            db.execute(
                "INSERT INTO sessions (id, workspace, agent_name, status, started_at, user_id, tags, metadata,"
                " parent_session_id) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?)",
                (
                    session_id,
                    workspace,
                    agent_name,
                    started,
                    context.user_id,
                    _compact(list(context.tags)),
                    _compact(metadata),
                    context.parent_session_id,
                ),
            )
            body = {
                "id": session_id,
                "agentName": agent_name,
                "status": "running",
                "startedAt": started,
                "userId": context.user_id,
                "tags": list(context.tags),
                "metadata": metadata,
                "parentSessionId": context.parent_session_id,
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
            body = {"id": session_id, "status": status, "errorMessage": error_message, "endedAt": ended}
            return self._remember(db, workspace, idempotency, Reply(200, body))

    def append_events(
        self, workspace: str, session_id: str, events: Sequence[PricedEvent], idempotency: Optional[Idempotency]
    ) -> Reply:
        now = self._now()
        day = now.date().isoformat()
        received = iso(now)
        with self._write() as db:
            replay = self._replay(db, workspace, idempotency)
            if replay is not None:
                return replay
            row = self._session_row(db, workspace, session_id)
            if row["status"] != "running":
                raise Conflict(
                    f"Session {session_id!r} already ended with status {row['status']!r}; events can only be "
                    "added to a running session. Start a new session for new work."
                )
            agent = row["agent_name"]
            cost = sum(e.cost_usd for e in events)
            if cost > 0:
                self._charge(db, workspace, agent, day, cost, now)
            db.executemany(
                "INSERT INTO events (session_id, step_index, type, payload, cost_usd, priced, pricing_note, received_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        session_id,
                        e.step_index,
                        e.type,
                        e.payload_json(),
                        e.cost_usd,
                        int(e.priced),
                        e.pricing_note,
                        received,
                    )
                    for e in events
                ],
            )
            db.execute(
                "UPDATE sessions SET cost_usd = cost_usd + ?, tokens_in = tokens_in + ?, tokens_out = tokens_out + ?,"
                " event_count = event_count + ?, unpriced_count = unpriced_count + ? WHERE id = ?",
                (
                    cost,
                    sum(e.tokens_in for e in events),
                    sum(e.tokens_out for e in events),
                    len(events),
                    sum(1 for e in events if not e.priced),
                    session_id,
                ),
            )
            body = {"accepted": len(events), "costUsd": cost}
            return self._remember(db, workspace, idempotency, Reply(202, body))

    def _charge(
        self, db: sqlite3.Connection, workspace: str, agent: str, day: str, cost: float, now: datetime.datetime
    ) -> None:
        """Check the agent's daily budget and add the spend, in the caller's transaction."""
        spent_row = db.execute(
            "SELECT spent_usd FROM daily_spend WHERE workspace = ? AND agent_name = ? AND day = ?",
            (workspace, agent, day),
        ).fetchone()
        spent = float(spent_row["spent_usd"]) if spent_row is not None else 0.0
        limit_row = db.execute(
            "SELECT daily_limit_usd FROM budgets WHERE workspace = ? AND agent_name = ?", (workspace, agent)
        ).fetchone()
        if limit_row is not None:
            limit = float(limit_row["daily_limit_usd"])
            projected = spent + cost
            if projected > limit + COST_EPSILON:
                resets = next_utc_midnight(now)
                raise BudgetExceeded(
                    f"Daily budget of ${limit:.4f} for agent {agent!r} would be exceeded: ${spent:.6f} spent "
                    f"today (UTC), this call costs ${cost:.6f}. The budget resets at {iso(resets)}; raise it "
                    f"with `agent-ledger budget set {agent} USD`.",
                    {
                        "agentName": agent,
                        "dailyLimitUsd": limit,
                        "spentTodayUsd": spent,
                        "attemptedCostUsd": cost,
                        "projectedCostUsd": projected,
                        "remainingBudgetUsd": max(limit - spent, 0.0),
                        "resetsAt": iso(resets),
                    },
                )
        db.execute(
            "INSERT INTO daily_spend (workspace, agent_name, day, spent_usd) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (workspace, agent_name, day) DO UPDATE SET spent_usd = spent_usd + excluded.spent_usd",
            (workspace, agent, day, cost),
        )

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
            "costUsd": row["cost_usd"],
            "tokensIn": row["tokens_in"],
            "tokensOut": row["tokens_out"],
            "eventCount": row["event_count"],
            "unpricedEvents": row["unpriced_count"],
            "userId": row["user_id"],
            "tags": json.loads(row["tags"]),
            "metadata": json.loads(row["metadata"]),
            "parentSessionId": row["parent_session_id"],
        }

    def get_session(self, session_id: str, workspace: Optional[str] = None) -> dict[str, Any]:
        with self._read() as db:
            row = self._session_row(db, workspace, session_id)
            events = db.execute(
                "SELECT * FROM events WHERE session_id = ? ORDER BY step_index IS NULL, step_index, seq",
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
                "costUsd": e["cost_usd"],
                "priced": bool(e["priced"]),
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

    def set_budget(self, workspace: str, agent_name: str, daily_limit_usd: Optional[float]) -> dict[str, Any]:
        with self._write() as db:
            if daily_limit_usd is None:
                db.execute("DELETE FROM budgets WHERE workspace = ? AND agent_name = ?", (workspace, agent_name))
            else:
                db.execute(
                    "INSERT INTO budgets (workspace, agent_name, daily_limit_usd) VALUES (?, ?, ?)"
                    " ON CONFLICT (workspace, agent_name) DO UPDATE SET daily_limit_usd = excluded.daily_limit_usd",
                    (workspace, agent_name, daily_limit_usd),
                )
        return self._budget(workspace, agent_name)

    def _budget(self, workspace: str, agent_name: str) -> dict[str, Any]:
        for budget in self.budgets(workspace):
            if budget["agentName"] == agent_name:
                return budget
        now = self._now()
        return {
            "workspace": workspace,
            "agentName": agent_name,
            "dailyLimitUsd": None,
            "spentTodayUsd": 0.0,
            "remainingBudgetUsd": None,
            "resetsAt": iso(next_utc_midnight(now)),
        }

    def budgets(self, workspace: Optional[str] = None) -> list[dict[str, Any]]:
        now = self._now()
        day = now.date().isoformat()
        with self._read() as db:
            rows = db.execute(
                """
                SELECT workspace, agent_name, MAX(daily_limit_usd) AS daily_limit_usd, SUM(spent_usd) AS spent_usd
                FROM (
                    SELECT workspace, agent_name, daily_limit_usd, 0.0 AS spent_usd FROM budgets
                    UNION ALL
                    SELECT workspace, agent_name, NULL, spent_usd FROM daily_spend WHERE day = ?
                )
                WHERE (? IS NULL OR workspace = ?)
                GROUP BY workspace, agent_name
                ORDER BY workspace, agent_name
                """,
                (day, workspace, workspace),
            ).fetchall()
        resets = iso(next_utc_midnight(now))
        result = []
        for row in rows:
            limit = row["daily_limit_usd"]
            spent = float(row["spent_usd"] or 0.0)
            result.append(
                {
                    "workspace": row["workspace"],
                    "agentName": row["agent_name"],
                    "dailyLimitUsd": limit,
                    "spentTodayUsd": spent,
                    "remainingBudgetUsd": max(limit - spent, 0.0) if limit is not None else None,
                    "resetsAt": resets,
                }
            )
        return result
