"""The ledger's SQL, once for both databases: :class:`Tx`, a transaction's operations.

The statements are written in the SQL that SQLite and PostgreSQL share
(``ON CONFLICT``, ``?`` placeholders that :class:`Dialect` turns into ``%s`` for
psycopg); the few differences are in the dialect. Every value crosses as
text, integer or Decimal, so both return the same rows.
"""

from __future__ import annotations

import decimal
import json
import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar, Optional

from .. import money
from ..records import NotFound, PricedEvent

# Sums of amounts in Python: far more digits than any sum of prices has, and rounding would raise.
_EXACT_SUMS = decimal.Context(prec=120, traps=[decimal.Inexact, decimal.InvalidOperation, decimal.Overflow])

# What event_totals reads of each payload, in this order (SQLite: one json_extract of them all).
_TOTALS_PATHS = ("latencyMs", "cacheReadTokens", "cacheWriteTokens", "reasoningTokens", "error", "toolOutput.errorType")
# SQLite 3.35 on computes a CTE marked so once (older ones take the CTE as a subquery: slower, as right).
_MATERIALIZED = "MATERIALIZED " if sqlite3.sqlite_version_info >= (3, 35, 0) else ""

# A session list filtered by a range alone reads the range through its index when it holds fewer sessions.
RANGE_PROBE = 1000

# Events without a step index sort after those with one: their position is this.
UNNUMBERED = 2**62

# The columns of the rows that writes read whole, named rather than *: a statement prepared on PostgreSQL
# (``Tx(prepare=True)``) keeps the shape of its result when a newer replica's migration adds a column, where a
# prepared ``SELECT *`` fails with "cached plan must not change result type". tests/test_store_conformance.py
# checks them against both schemas.
SESSION_COLUMNS = (
    "seq, id, workspace, agent_name, status, error_message, started_at, ended_at, tokens_in, tokens_out, "
    "event_count, unpriced_count, user_id, tags, metadata, parent_session_id, cost, estimated_count, "
    "over_budget_count, max_cost, warn_at_percent"
)
RESERVATION_COLUMNS = "id, workspace, session_id, agent_name, provider, model, amount, state, created_at, expires_at"
KEY_COLUMNS = "id, name, workspace, key_hash, created_at, revoked_at"
# A statement that selects * (or t.*) is never prepared, whatever its table: see above.
_SELECTS_STAR = re.compile(r"(?:\bSELECT|,)\s*(?:\w+\.)?\*")
_PREPARABLE: dict[str, bool] = {}  # by statement, whether it may be prepared
# PostgreSQL: a batch's events in one statement (see Tx.insert_event_rows).
_INSERT_EVENTS_UNNEST = (
    "INSERT INTO events (session_id, step_index, position, type, payload, cost, cost_status, over_budget, pricing_note,"
    " received_at) SELECT %s, s, p, t, d, c, cs, o, n, %s FROM unnest(%b::bigint[], %b::bigint[], %b::text[],"
    " %b::text[], %b::numeric[], %b::text[], %b::integer[], %b::text[]) WITH ORDINALITY AS r (s, p, t, d, c, cs, o, n, i)"
    " ORDER BY i"
)
_KEY_OF_REQUEST = (
    f"SELECT {', '.join('k.' + c for c in KEY_COLUMNS.split(', '))}, COALESCE(v.version, 0) AS prices_version"
    " FROM api_keys k LEFT JOIN price_versions v ON v.workspace = k.workspace WHERE k.id = ?"
)

# Tx.reserve_at_once: a reservation in the plain case, by the function that schema version 9 made (see postgres.py).
RESERVE_AT_ONCE_PARAMETERS = (
    "workspace",
    "key_id",
    "key_hash",
    "prices_version",
    "session_id",
    "reservation_id",
    "provider",
    "model",
    "amount",
    "created_at",
    "expires_at",
    "idempotency_key",
    "fingerprint",
    "body",
    "day",
    "month",
)
RESERVE_AT_ONCE = (
    "SELECT agent_ledger_reserve("
    + ", ".join(f"p_{name} => %({name})s" for name in RESERVE_AT_ONCE_PARAMETERS)
    + ") AS granted"
)
# The same, as libpq takes it (PostgresStore.reserve_on_loop): its values in the order of the parameters.
RESERVE_AT_ONCE_NUMBERED = (
    "SELECT agent_ledger_reserve("
    + ", ".join(f"p_{name} => ${number}" for number, name in enumerate(RESERVE_AT_ONCE_PARAMETERS, 1))
    + ") AS granted"
)


def reserve_at_once_values(
    *,
    key_id: str,
    key_hash: str,
    workspace: str,
    prices_version: int,
    reservation: dict[str, Any],
    idempotency: Optional[tuple[str, str, str]],
    day: str,
    month: str,
) -> dict[str, Any]:
    """The values of :data:`RESERVE_AT_ONCE` (see :meth:`Tx.reserve_at_once`)."""
    return {
        "workspace": workspace,
        "key_id": key_id,
        "key_hash": key_hash,
        "prices_version": prices_version,
        "session_id": reservation["session_id"],
        "reservation_id": reservation["id"],
        "provider": reservation["provider"],
        "model": reservation["model"],
        "amount": reservation["amount"],
        "created_at": reservation["created_at"],
        "expires_at": reservation["expires_at"],
        "idempotency_key": idempotency[0] if idempotency is not None else None,
        "fingerprint": idempotency[1] if idempotency is not None else None,
        "body": idempotency[2] if idempotency is not None else None,
        "day": day,
        "month": month,
    }


__all__ = [
    "RESERVE_AT_ONCE",
    "RESERVE_AT_ONCE_NUMBERED",
    "RESERVE_AT_ONCE_PARAMETERS",
    "KEY_COLUMNS",
    "RESERVATION_COLUMNS",
    "SESSION_COLUMNS",
    "UNNUMBERED",
    "Dialect",
    "EventRow",
    "RollupRow",
    "SessionFilter",
    "SessionSearch",
    "StoredEvent",
    "Tx",
    "like_pattern",
    "reserve_at_once_values",
    "stored_event",
    "stored_rows",
]


@dataclass(frozen=True)
class Dialect:
    """What differs between the databases, in the statements of :class:`Tx`."""

    name: str
    placeholder: str  # "?" or "%s"
    # Case-insensitive LIKE (SQLite's LIKE is, for ASCII; PostgreSQL's is not).
    like: str = "LIKE"
    _cache: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def sql(self, statement: str) -> str:
        if self.placeholder == "?":
            return statement
        found = self._cache.get(statement)
        if found is None:
            found = self._cache[statement] = statement.replace("%", "%%").replace("?", self.placeholder)
        return found


SQLITE = Dialect("sqlite", "?")
POSTGRES = Dialect("postgresql", "%s", like="ILIKE")


@dataclass
class EventRow:
    """An event as stored: its JSON payload text and what the ledger worked out about it."""

    step_index: Optional[int]
    type: str
    payload: str
    cost: Decimal
    cost_status: Optional[str]
    over_budget: bool
    pricing_note: Optional[str]


#: An event row as :meth:`Tx.insert_event_rows` takes it: session id, step index, position, type, payload (JSON
#: text), cost (canonical text), cost status, over budget (0 or 1), pricing note, received at.
StoredEvent = tuple[str, Optional[int], int, str, str, str, Optional[str], int, Optional[str], str]


def stored_event(
    session_id: str,
    received_at: str,
    step_index: Optional[int],
    type: str,
    payload: str,
    cost: Decimal,
    cost_status: Optional[str],
    over_budget: bool,
    pricing_note: Optional[str],
) -> StoredEvent:
    """One event's row for :meth:`Tx.insert_event_rows`."""
    position = UNNUMBERED if step_index is None else step_index
    return (
        session_id,
        step_index,
        position,
        type,
        payload,
        money.text(cost),
        cost_status,
        int(over_budget),
        pricing_note,
        received_at,
    )


def stored_rows(session_id: str, received_at: str, events: Iterable[PricedEvent]) -> list[StoredEvent]:
    """The rows of checked and priced events: :func:`stored_event` of each, in one pass (a batch's hundred
    rows in half the time of a call each)."""
    text, dumps = money.text, money.dumps
    return [
        (
            session_id,
            e.step_index,
            UNNUMBERED if e.step_index is None else e.step_index,
            e.type,
            e.encoded or dumps(e.payload),
            text(e.cost_usd),
            e.cost_status,
            1 if e.over_budget else 0,
            e.pricing_note,
            received_at,
        )
        for e in events
    ]


@dataclass
class SessionFilter:
    workspace: Optional[str] = None
    agent_name: Optional[str] = None
    status: Optional[str] = None
    user_id: Optional[str] = None
    tags: tuple[str, ...] = ()
    started_after: Optional[str] = None
    started_before: Optional[str] = None
    before_seq: Optional[int] = None


@dataclass
class SessionSearch(SessionFilter):
    """A :class:`SessionFilter` for the dashboard: paging either way, and a minimum cost.

    ``min_cost`` is applied exactly on PostgreSQL (NUMERIC); on SQLite, where amounts are text, the SQL
    keeps every session that may reach it (a REAL comparison with a margin) and the caller checks the
    exact amount of what comes back.
    """

    after_seq: Optional[int] = None
    min_cost: Optional[Decimal] = None


@dataclass
class RollupRow:
    """What a day's LLM calls of one agent, model or user came to (a row of ``cost_rollup``)."""

    llm_calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    unpriced_calls: int = 0
    estimated_calls: int = 0
    cost: Decimal = field(default_factory=lambda: money.ZERO)

    COUNTS: ClassVar[tuple[str, ...]] = (
        "llm_calls",
        "tokens_in",
        "tokens_out",
        "cache_read_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        "unpriced_calls",
        "estimated_calls",
    )

    def add(self, other: RollupRow) -> None:
        for name in self.COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.cost = money.add(self.cost, other.cost)


def like_pattern(text: str) -> str:
    """A LIKE pattern (``ESCAPE '\\'``) for text containing ``text``: its wildcards matched as themselves."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def amount(value: Any) -> Decimal:
    """An amount as either database returns it (text or NUMERIC); NULL reads as 0."""
    if value is None:
        return money.ZERO
    return value if isinstance(value, Decimal) else Decimal(value)


def optional_amount(value: Any) -> Optional[Decimal]:
    return None if value is None else amount(value)


def stored(value: Optional[Decimal]) -> Optional[str]:
    return None if value is None else money.text(value)


_IDENT = re.compile(r"[a-z_]+\Z")
_INSERTS: dict[tuple[str, tuple[str, ...]], str] = {}  # the statement of Tx._insert, by table and columns


class Tx:
    """The operations of one transaction. Made by a :class:`~.base.Store`; rows are plain dicts."""

    def __init__(self, connection: Any, dialect: Dialect, *, prepare: bool = False) -> None:
        """``prepare``: run every statement as a prepared one (psycopg's ``execute(prepare=True)``): PostgreSQL
        parses and plans a statement once per connection, not at every call (for writes and the key's read,
        which run the same few statements all day; reads keep plans made for their own values)."""
        self._db = connection
        self._dialect = dialect
        self._prepare = prepare
        # SQLite: the spend amounts this transaction read (budget_state) or wrote, by (workspace, scope, subject, period);
        # a write holds the whole file, so they stay current until the commit and add_spent need not read them.
        self._spend: dict[tuple[str, str, str, str], Decimal] = {}
        # Set by a change of what key_of_request reads (a key, a workspace's price version): a store that keeps
        # those rows (SQLiteStore.key_of_request) forgets them when this transaction ends.
        self.keys_changed = False
        #: Whether reads can be sent ahead (:meth:`ahead`): set by a store whose transaction is pipelined.
        self.sends_ahead = False
        self._sending_ahead = False
        self._ahead: dict[tuple[str, tuple[Any, ...]], Any] = {}  # cursors of reads sent ahead, by statement and values

    # -- plumbing --------------------------------------------------------------------

    def _run(self, statement: str, params: Sequence[Any] = ()) -> Any:
        if self._prepare:
            preparable = _PREPARABLE.get(statement)
            if preparable is None:
                if len(_PREPARABLE) >= 4096:  # statements with IN lists of every length: kept bounded
                    _PREPARABLE.clear()
                preparable = _PREPARABLE[statement] = _SELECTS_STAR.search(statement) is None
            if preparable:
                return self._db.execute(self._dialect.sql(statement), tuple(params), prepare=True)
        return self._db.execute(self._dialect.sql(statement), tuple(params))

    @contextmanager
    def ahead(self) -> Iterator[None]:
        """Within the block, the reads called are sent and not waited for (they return None or no rows);
        the same read, with the same values, later in the transaction takes its result from then. On a
        store that sends them ahead (``sends_ahead``: PostgreSQL's pipeline mode) several reads that do not
        depend on one another cost one round trip, and they run in the order sent, as they would have."""
        if not self.sends_ahead:
            raise RuntimeError("this transaction cannot send reads ahead (Tx.sends_ahead is False)")
        self._sending_ahead = True
        try:
            yield
        finally:
            self._sending_ahead = False

    def _cursor(self, statement: str, params: Sequence[Any]) -> Any:
        """The cursor of a read: the one sent ahead for it, or a new one (None: sent ahead now)."""
        if self._ahead or self._sending_ahead:
            key = (statement, tuple(params))
            cursor = self._ahead.pop(key, None)
            if cursor is not None:
                return cursor
            if self._sending_ahead:
                self._ahead[key] = self._run(statement, params)
                return None
        return self._run(statement, params)

    def _one(self, statement: str, params: Sequence[Any] = ()) -> Optional[dict[str, Any]]:
        cursor = self._cursor(statement, params)
        row = None if cursor is None else cursor.fetchone()
        return None if row is None else dict(row)

    def _all(self, statement: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cursor = self._cursor(statement, params)
        return [] if cursor is None else [dict(row) for row in cursor.fetchall()]

    def _insert(self, table: str, values: dict[str, Any]) -> None:
        columns = tuple(values)
        statement = _INSERTS.get((table, columns))
        if statement is None:  # made once for each table and set of columns (the code's, a handful)
            assert _IDENT.match(table)
            assert all(_IDENT.match(c) for c in columns)
            statement = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
            _INSERTS[(table, columns)] = statement
        self._run(statement, [values[c] for c in columns])

    def _many(self, statement: str, rows: Iterable[Sequence[Any]]) -> None:
        batch = [tuple(row) for row in rows]
        if batch:
            self._db.cursor().executemany(self._dialect.sql(statement), batch)

    # -- keys ----------------------------------------------------------------------------

    def insert_key(self, key_id: str, name: str, workspace: str, key_hash: str, created_at: str) -> None:
        self.keys_changed = True
        self._run(
            "INSERT INTO api_keys (id, name, workspace, key_hash, created_at) VALUES (?, ?, ?, ?, ?)",
            (key_id, name, workspace, key_hash, created_at),
        )

    def keys(self) -> list[dict[str, Any]]:
        return self._all("SELECT * FROM api_keys ORDER BY created_at, id")

    def key(self, key_id: str) -> Optional[dict[str, Any]]:
        return self._one(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,))

    def key_of_request(self, key_id: str) -> Optional[dict[str, Any]]:
        """A key, with ``prices_version``: its workspace's price version (:meth:`prices_version`), in one statement.
        Every row read (not fetchone): on a SQLite connection outside a transaction, a statement left unfinished
        would keep its snapshot."""
        rows = self._all(_KEY_OF_REQUEST, (key_id,))
        return rows[0] if rows else None

    def revoke_key(self, key_id: str, revoked_at: str) -> None:
        self.keys_changed = True
        self._run("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (revoked_at, key_id))

    # -- idempotency -------------------------------------------------------------------------

    def idempotency(self, workspace: str, key: str) -> Optional[dict[str, Any]]:
        return self._one(
            "SELECT fingerprint, status, body, created_at FROM idempotency WHERE workspace = ? AND key = ?",
            (workspace, key),
        )

    def remember(self, workspace: str, key: str, fingerprint: str, status: int, body: str, created_at: str) -> None:
        # A record past its lifetime may still be there (they are forgotten in batches): this one replaces it.
        self._run(
            "INSERT INTO idempotency (workspace, key, fingerprint, status, body, created_at) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (workspace, key) DO UPDATE SET fingerprint = excluded.fingerprint,"
            " status = excluded.status, body = excluded.body, created_at = excluded.created_at",
            (workspace, key, fingerprint, status, body, created_at),
        )

    def forget_idempotency(self, before: str) -> int:
        return int(self._run("DELETE FROM idempotency WHERE created_at < ?", (before,)).rowcount)

    # -- sessions -----------------------------------------------------------------------------

    def insert_session(self, values: dict[str, Any]) -> None:
        self._insert("sessions", values)
        tags = json.loads(values.get("tags") or "[]")
        if tags:  # the index of the tag filter (a JSON array cannot be indexed)
            self._many(
                "INSERT INTO session_tags (workspace, tag, session_seq) SELECT workspace, ?, seq FROM sessions"
                " WHERE id = ? ON CONFLICT DO NOTHING",
                [(tag, values["id"]) for tag in dict.fromkeys(tags) if isinstance(tag, str)],
            )

    def rebuild_session_tags(self) -> None:
        """Fill ``session_tags`` from every session's tags (sessions written straight into the table: benchmarks)."""
        self._run("DELETE FROM session_tags")
        if self._dialect.name == "sqlite":
            self._run(
                "INSERT OR IGNORE INTO session_tags (workspace, tag, session_seq) SELECT s.workspace, t.value, s.seq"
                " FROM sessions s, json_each(s.tags) t WHERE t.type = 'text'"
            )
        else:
            self._run(
                "INSERT INTO session_tags (workspace, tag, session_seq) SELECT DISTINCT s.workspace, t.value, s.seq"
                " FROM sessions s, jsonb_array_elements_text(s.tags::jsonb) t(value) ON CONFLICT DO NOTHING"
            )

    def session(
        self, workspace: Optional[str], session_id: str, *, for_update: bool = False
    ) -> Optional[dict[str, Any]]:
        # By its id alone: with the workspace in the WHERE clause too, PostgreSQL's planner could take an index
        # that begins with the workspace and read all its sessions (it did, while its statistics were young).
        lock = " FOR UPDATE" if for_update and self._dialect.name == "postgresql" else ""
        row = self._one(f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?{lock}", (session_id,))
        return row if workspace is None or row is None or row["workspace"] == workspace else None

    def end_session(self, session_id: str, status: str, error_message: Optional[str], ended_at: str) -> None:
        self._run(
            "UPDATE sessions SET status = ?, error_message = ?, ended_at = ? WHERE id = ?",
            (status, error_message, ended_at, session_id),
        )

    def add_to_session(
        self,
        session_id: str,
        *,
        cost: Decimal,
        tokens_in: int,
        tokens_out: int,
        events: int,
        unpriced: int,
        estimated: int,
        over_budget: int,
    ) -> None:
        """Add a batch's totals; ``cost`` is the session's new total (exact, worked out by the caller)."""
        self._run(
            "UPDATE sessions SET cost = ?, tokens_in = tokens_in + ?, tokens_out = tokens_out + ?,"
            " event_count = event_count + ?, unpriced_count = unpriced_count + ?,"
            " estimated_count = estimated_count + ?, over_budget_count = over_budget_count + ? WHERE id = ?",
            (money.text(cost), tokens_in, tokens_out, events, unpriced, estimated, over_budget, session_id),
        )

    def child_session_ids(self, workspace: str, session_id: str) -> list[str]:
        rows = self._all(
            "SELECT id FROM sessions WHERE workspace = ? AND parent_session_id = ? ORDER BY seq",
            (workspace, session_id),
        )
        return [row["id"] for row in rows]

    def _session_conditions(self, where: SessionFilter) -> tuple[list[str], list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        for clause, value in (
            ("sessions.workspace = ?", where.workspace),
            ("agent_name = ?", where.agent_name),
            ("status = ?", where.status),
            ("started_at >= ?", where.started_after),
            ("started_at < ?", where.started_before),
            ("user_id = ?", where.user_id),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        return clauses, params

    def session_list_query(
        self, where: SessionFilter, limit: int, *, oldest_first: bool = False, by_range: Optional[str] = None
    ) -> tuple[str, tuple[Any, ...]]:
        """The statement of :meth:`sessions` and :meth:`find_sessions` (tests read its plan), and its parameters.

        Sessions come newest first by ``seq`` (oldest first after ``after_seq``). Each filter has an index that
        gives them in that order (schema version 7), so a page reads about as many rows as it returns: by
        workspace; agent, user or status (and agent or user with a status); tags through ``session_tags``
        (the first tag drives: its rows are in seq order); start time and minimum cost through their own
        indexes (a range cannot also give the seq order: the database picks that index or a walk down the
        seq order, whichever its statistics say reads less).

        A list with a time window (``started_after``/``started_before``) and no tag comes newest first by
        start time instead (then seq): the window's index, alone or after the agent, user or status, gives
        that order, so a window in the middle of a large ledger is read from where it starts. Its cursors
        stay seqs: the cursor's session gives the start time to continue from.
        """
        clauses, params = self._session_conditions(where)
        tags = list(dict.fromkeys(where.tags))
        source = "sessions"
        seq = "sessions.seq"
        first: list[Any] = []
        if tags and where.workspace is not None:
            # The first tag's rows, in seq order, drive the read; the session is found by its key.
            source = "session_tags t JOIN sessions ON sessions.seq = t.session_seq"
            seq = "t.session_seq"
            clauses.insert(0, "t.workspace = ? AND t.tag = ?")
            first = [where.workspace, tags.pop(0)]
        for tag in tags:
            clauses.append(
                "EXISTS (SELECT 1 FROM session_tags x WHERE x.workspace = sessions.workspace AND x.tag = ?"
                " AND x.session_seq = sessions.seq)"
            )
            params.append(tag)
        by_start = by_range is None and self.by_start_time(where)
        if by_start:
            order_by = "sessions.started_at {0}, sessions.seq {0}"
            if where.before_seq is not None:
                self._start_keyset(clauses, params, where.before_seq, "<", where.started_before)
            if isinstance(where, SessionSearch) and where.after_seq is not None:
                self._start_keyset(clauses, params, where.after_seq, ">", where.started_after)
        else:
            order_by = f"{seq} {{0}}"
            if where.before_seq is not None:
                clauses.append(f"{seq} < ?")
                params.append(where.before_seq)
            if isinstance(where, SessionSearch) and where.after_seq is not None:
                clauses.append(f"{seq} > ?")
                params.append(where.after_seq)
        if isinstance(where, SessionSearch) and where.min_cost is not None and where.min_cost > 0:
            if self._dialect.name == "sqlite":  # text amounts: keep whatever may reach it; the caller checks
                clauses.append("CAST(cost AS REAL) >= ?")
                params.append(float(where.min_cost) * (1 - 1e-9))
            else:
                clauses.append("cost >= ?")
                params.append(where.min_cost)
        condition = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        order = "ASC" if oldest_first else "DESC"
        if by_range is not None:  # read the few sessions in the range through its index, then order them
            if self._dialect.name == "sqlite":
                source = f"sessions INDEXED BY {by_range}"
            else:  # OFFSET 0: planned on its own, where the range's index is the cheapest way in
                source = f"(SELECT * FROM sessions{condition} OFFSET 0) sessions"
                condition = ""
        return (
            f"SELECT sessions.* FROM {source}{condition} ORDER BY {order_by.format(order)} LIMIT ?",
            (*first, *params, limit),
        )

    def _start_keyset(
        self, clauses: list[str], params: list[Any], cursor: int, direction: str, window_edge: Optional[str]
    ) -> None:
        """Continue a start-time list past the session ``cursor`` (a seq): keyset on (started_at, seq).

        The cursor's start time also bounds the index's range (SQLite's planner uses one bound per side: the
        tighter of it and the window's edge is kept). A cursor whose session was deleted since has lost its
        place in that order: a clear error says to list again.
        """
        older = direction == "<"
        row = self._one("SELECT started_at FROM sessions WHERE seq = ?", (cursor,))
        if row is None:
            raise NotFound(
                f"No session at cursor {cursor}: it was deleted since that page was read (or the cursor was not a"
                " nextCursor), so a list ordered by start time (a since/until filter) cannot continue from it:"
                " list again without a cursor."
            )
        start, seq = row["started_at"], cursor
        edge_clause = "started_at < ?" if older else "started_at >= ?"
        window_is_tighter = window_edge is not None and (window_edge <= start if older else window_edge > start)
        if not window_is_tighter:
            if window_edge is not None:
                at = clauses.index(edge_clause)
                del clauses[at], params[at]
            clauses.append(f"sessions.started_at {direction}= ?")
            params.append(start)
        clauses.append(f"(sessions.started_at, sessions.seq) {direction} (?, ?)")
        params.extend((start, seq))

    @staticmethod
    def by_start_time(where: SessionFilter) -> bool:
        """Whether the list comes in start-time order (a time window, no tag): see :meth:`session_list_query`."""
        return (where.started_after is not None or where.started_before is not None) and not where.tags

    def _range_index(self, where: SessionFilter) -> Optional[str]:
        """For a list filtered by a range alone (start time, minimum cost), the range's index when fewer than
        RANGE_PROBE sessions are in it (read them and sort: cheaper than walking down the seq order to them);
        else None: the walk down the seq order, which meets a page of a wide range soon."""
        if where.workspace is None or where.agent_name or where.status or where.user_id or where.tags:
            return None
        if self.by_start_time(where):
            return None  # the window's index gives the page in order
        probes: list[tuple[str, str, list[Any]]] = []
        if isinstance(where, SessionSearch) and where.min_cost is not None and where.min_cost > 0:
            if self._dialect.name == "sqlite":
                probes.append(
                    (
                        "sessions_by_cost",
                        "workspace = ? AND CAST(cost AS REAL) >= ?",
                        [where.workspace, float(where.min_cost) * (1 - 1e-9)],
                    )
                )
            else:
                probes.append(("sessions_by_cost", "workspace = ? AND cost >= ?", [where.workspace, where.min_cost]))
        best: Optional[tuple[int, str]] = None
        for index, condition, params in probes:
            hint = f" INDEXED BY {index}" if self._dialect.name == "sqlite" else ""
            row = self._one(
                f"SELECT COUNT(*) AS n FROM (SELECT 1 FROM sessions{hint} WHERE {condition} LIMIT ?) probe",
                (*params, RANGE_PROBE),
            )
            found = int(row["n"]) if row is not None else 0
            if found < RANGE_PROBE and (best is None or found < best[0]):
                best = (found, index)
        return best[1] if best is not None else None

    def sessions(self, where: SessionFilter, limit: int) -> list[dict[str, Any]]:
        """Sessions matching ``where``, newest first."""
        return self._all(*self.session_list_query(where, limit, by_range=self._range_index(where)))

    # -- the dashboard's reads ------------------------------------------------------------------

    def find_sessions(self, where: SessionSearch, limit: int, *, oldest_first: bool = False) -> list[dict[str, Any]]:
        """Sessions matching ``where`` (keyset paging on ``seq``): newest first, or oldest first after a seq."""
        by_range = self._range_index(where)
        return self._all(*self.session_list_query(where, limit, oldest_first=oldest_first, by_range=by_range))

    def latest_session_seq(self, workspace: str) -> int:
        row = self._one("SELECT MAX(seq) AS seq FROM sessions WHERE workspace = ?", (workspace,))
        return int(row["seq"]) if row is not None and row["seq"] is not None else 0

    def sessions_by_ids(self, workspace: str, ids: Sequence[str]) -> list[dict[str, Any]]:
        if not ids:
            return []
        return self._all(
            f"SELECT * FROM sessions WHERE workspace = ? AND id IN ({','.join('?' * len(ids))}) ORDER BY seq",
            (workspace, *ids),
        )

    def sessions_with_text(self, session_ids: Sequence[str], pattern: str) -> set[str]:
        """Which of ``session_ids`` have an event whose payload matches the LIKE ``pattern`` (any case)."""
        if not session_ids:
            return set()
        rows = self._all(
            f"SELECT DISTINCT session_id FROM events WHERE session_id IN ({','.join('?' * len(session_ids))})"
            f" AND payload {self._dialect.like} ? ESCAPE '\\'",
            (*session_ids, pattern),
        )
        return {row["session_id"] for row in rows}

    def llm_call_counts(self, session_ids: Sequence[str]) -> dict[str, int]:
        if not session_ids:
            return {}
        rows = self._all(
            "SELECT session_id, COUNT(*) AS calls FROM events"
            f" WHERE session_id IN ({','.join('?' * len(session_ids))}) AND type = 'llm_call' GROUP BY session_id",
            tuple(session_ids),
        )
        return {row["session_id"]: int(row["calls"]) for row in rows}

    def previous_session(self, workspace: str, agent_name: str, before_seq: int) -> Optional[dict[str, Any]]:
        """The agent's session started just before the one numbered ``before_seq`` in the workspace."""
        return self._one(
            "SELECT id, seq, started_at FROM sessions WHERE workspace = ? AND agent_name = ? AND seq < ?"
            " ORDER BY seq DESC LIMIT 1",
            (workspace, agent_name, before_seq),
        )

    def sessions_with_prefix(self, workspace: Optional[str], prefix: str, limit: int) -> list[dict[str, Any]]:
        """Sessions whose id starts with ``prefix`` (exactly, any collation), oldest first."""
        scope, params = ("", ()) if workspace is None else (" AND workspace = ?", (workspace,))
        return self._all(
            f"SELECT id, workspace, agent_name, status, started_at FROM sessions WHERE substr(id, 1, ?) = ?{scope}"
            " ORDER BY seq LIMIT ?",
            (len(prefix), prefix, *params, limit),
        )

    def event_totals(self, session_id: str) -> dict[str, Any]:
        """A session's events counted by type, with their latency, cache and reasoning tokens and errors summed.

        Each payload is parsed once: SQLite extracts every field in one ``json_extract`` (a small array,
        materialised), PostgreSQL in one ``json_to_record`` (json, not jsonb: free text may hold
        ``\\u0000``, which jsonb refuses).
        """
        if self._dialect.name == "sqlite":
            fields = ", ".join(f"'$.{path}'" for path in _TOTALS_PATHS)
            rows = self._all(
                f"WITH x AS {_MATERIALIZED}(SELECT type, json_extract(payload, {fields}) AS v FROM events"
                " WHERE session_id = ?) SELECT type, COUNT(*) AS events,"
                " SUM(json_extract(v, '$[0]')) AS latency_ms, SUM(json_extract(v, '$[1]')) AS cache_read_tokens,"
                " SUM(json_extract(v, '$[2]')) AS cache_write_tokens, SUM(json_extract(v, '$[3]')) AS reasoning_tokens,"
                " SUM(CASE WHEN json_extract(v, '$[4]') IS NOT NULL OR type = 'tool_result'"
                " AND json_extract(v, '$[5]') IS NOT NULL THEN 1 ELSE 0 END) AS errors FROM x GROUP BY type",
                (session_id,),
            )
        else:
            rows = self._all(
                'SELECT e.type, COUNT(*) AS events, SUM(r."latencyMs") AS latency_ms,'
                ' SUM(r."cacheReadTokens") AS cache_read_tokens, SUM(r."cacheWriteTokens") AS cache_write_tokens,'
                " SUM(r.\"reasoningTokens\") AS reasoning_tokens, SUM(CASE WHEN COALESCE(json_typeof(r.error), 'null')"
                " <> 'null' OR e.type = 'tool_result' AND COALESCE(json_typeof(r.\"toolOutput\" -> 'errorType'), 'null')"
                " <> 'null' THEN 1 ELSE 0 END) AS errors FROM events e CROSS JOIN LATERAL json_to_record(e.payload::json)"
                ' AS r("latencyMs" numeric, "cacheReadTokens" numeric, "cacheWriteTokens" numeric,'
                ' "reasoningTokens" numeric, error json, "toolOutput" json) WHERE e.session_id = ? GROUP BY e.type',
                (session_id,),
            )
        return {row.pop("type"): row for row in rows}

    def insert_refusal(self, values: dict[str, Any]) -> None:
        """Record a call the guardrail refused before it ran."""
        self._insert("refusals", values)

    def refusals(self, workspace: str, limit: int) -> list[dict[str, Any]]:
        """The workspace's most recent refused calls (newest first), with the session's user."""
        return self._all(
            "SELECT r.*, s.user_id FROM refusals r LEFT JOIN sessions s ON s.id = r.session_id"
            " WHERE r.workspace = ? ORDER BY r.seq DESC LIMIT ?",
            (workspace, limit),
        )

    def forget_refusals(self, before: str) -> int:
        return int(self._run("DELETE FROM refusals WHERE created_at < ?", (before,)).rowcount)

    def over_budget_events(self, workspace: str, limit: int) -> list[dict[str, Any]]:
        """The workspace's most recent events that went over a budget (newest first)."""
        return self._all(
            "SELECT e.seq, e.session_id, e.step_index, e.type, e.payload, e.cost, e.cost_status, e.received_at,"
            " s.agent_name, s.user_id FROM events e JOIN sessions s ON s.id = e.session_id"
            " WHERE e.over_budget = 1 AND s.workspace = ? ORDER BY e.seq DESC LIMIT ?",
            (workspace, limit),
        )

    # -- the cost rollup: spend per UTC day and agent, model or user ------------------------------

    def rollup_progress(self, workspace: str) -> int:
        """The seq of the last event the workspace's rollup counted (0: none yet)."""
        row = self._one("SELECT event_seq FROM cost_rollup_progress WHERE workspace = ?", (workspace,))
        return int(row["event_seq"]) if row is not None else 0

    def set_rollup_progress(self, workspace: str, event_seq: int) -> None:
        self._run(
            "INSERT INTO cost_rollup_progress (workspace, event_seq) VALUES (?, ?)"
            " ON CONFLICT (workspace) DO UPDATE SET event_seq = excluded.event_seq",
            (workspace, event_seq),
        )

    def last_event_seq(self) -> int:
        row = self._one("SELECT MAX(seq) AS seq FROM events")
        return int(row["seq"]) if row is not None and row["seq"] is not None else 0

    def llm_calls_after(self, workspace: str, after_seq: int, limit: int) -> list[dict[str, Any]]:
        """The workspace's LLM calls stored after event ``after_seq``, in order, with their session's agent and user."""
        return self._all(
            "SELECT e.seq, e.payload, e.cost, e.cost_status, e.received_at, s.agent_name, s.user_id"
            " FROM events e JOIN sessions s ON s.id = e.session_id"
            " WHERE e.seq > ? AND e.type = 'llm_call' AND s.workspace = ? ORDER BY e.seq LIMIT ?",
            (after_seq, workspace, limit),
        )

    def rollup_sums(
        self, workspace: str, since_day: str, until_day: str
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The workspace's spend from ``since_day`` to ``until_day`` (both included): summed per dimension and
        name, and per day (each call is in one row of each dimension: a day's is its agents' rows).

        Every ``cost`` is exact: PostgreSQL sums NUMERIC; SQLite, whose amounts are text it would sum as
        floats, has them added here as Decimals.
        """
        counts = ", ".join(f"SUM({name}) AS {name}" for name in RollupRow.COUNTS)
        where = "workspace = ? AND day >= ? AND day <= ?"
        params = (workspace, since_day, until_day)
        exact = self._dialect.name != "sqlite"
        cost = ", SUM(cost) AS cost" if exact else ""
        groups = self._all(
            f"SELECT dimension, name, {counts}{cost} FROM cost_rollup WHERE {where} GROUP BY dimension, name", params
        )
        days = self._all(
            f"SELECT day, {counts}{cost} FROM cost_rollup WHERE {where} AND dimension = 'agent' GROUP BY day", params
        )
        if not exact:
            by_name: dict[tuple[str, str], Decimal] = {}
            by_day: dict[str, Decimal] = {}
            rows = self._run(f"SELECT dimension, name, day, cost FROM cost_rollup WHERE {where}", params).fetchall()
            with decimal.localcontext(_EXACT_SUMS):  # any rounding would raise (Inexact): never a wrong total
                for dimension, name, day, amount_text in rows:
                    value = Decimal(amount_text)
                    by_name[(dimension, name)] = by_name.get((dimension, name), money.ZERO) + value
                    if dimension == "agent":
                        by_day[day] = by_day.get(day, money.ZERO) + value
            for row in groups:
                row["cost"] = by_name.get((row["dimension"], row["name"]), money.ZERO)
            for row in days:
                row["cost"] = by_day.get(row["day"], money.ZERO)
        return groups, days

    def add_to_rollup(self, workspace: str, day: str, dimension: str, name: str, added: RollupRow) -> None:
        """Add ``added`` to a row of the rollup (exactly: the amount is read, added as a Decimal and written)."""
        key = (workspace, day, dimension, name)
        found = self._one(
            f"SELECT {', '.join(RollupRow.COUNTS)}, cost FROM cost_rollup"
            " WHERE workspace = ? AND day = ? AND dimension = ? AND name = ?",
            key,
        )
        total = RollupRow()
        if found is not None:
            total = RollupRow(**{name: int(found[name]) for name in RollupRow.COUNTS}, cost=amount(found["cost"]))
        total.add(added)
        counts = [getattr(total, name) for name in RollupRow.COUNTS]
        self._run(
            f"INSERT INTO cost_rollup (workspace, day, dimension, name, {', '.join(RollupRow.COUNTS)}, cost)"
            f" VALUES (?, ?, ?, ?, {', '.join('?' * len(counts))}, ?) ON CONFLICT (workspace, day, dimension, name)"
            f" DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in (*RollupRow.COUNTS, 'cost'))}",
            (*key, *counts, money.text(total.cost)),
        )

    def delete_session(self, session_id: str) -> None:
        self._run("DELETE FROM otel_spans WHERE session_id = ?", (session_id,))
        self._run("DELETE FROM otel_sessions WHERE session_id = ?", (session_id,))
        self._run("DELETE FROM events WHERE session_id = ?", (session_id,))
        self._run("DELETE FROM refusals WHERE session_id = ?", (session_id,))
        self._run("DELETE FROM reservations WHERE session_id = ?", (session_id,))
        row = self._one("SELECT workspace, seq, tags FROM sessions WHERE id = ?", (session_id,))
        if row is not None:
            self._many(
                "DELETE FROM session_tags WHERE workspace = ? AND tag = ? AND session_seq = ?",
                [(row["workspace"], tag, row["seq"]) for tag in json.loads(row["tags"]) if isinstance(tag, str)],
            )
        self._run("DELETE FROM sessions WHERE id = ?", (session_id,))

    def sessions_ended_before(self, cutoff: str, limit: int) -> list[str]:
        """Ids of ended sessions that ended before ``cutoff`` (oldest first, at most ``limit``)."""
        rows = self._all(
            "SELECT id FROM sessions WHERE status <> 'running' AND ended_at < ? ORDER BY ended_at LIMIT ?",
            (cutoff, limit),
        )
        return [row["id"] for row in rows]

    # -- events ---------------------------------------------------------------------------------

    def insert_events(self, session_id: str, received_at: str, events: Iterable[EventRow]) -> None:
        self.insert_event_rows(
            [
                stored_event(
                    session_id,
                    received_at,
                    e.step_index,
                    e.type,
                    e.payload,
                    e.cost,
                    e.cost_status,
                    e.over_budget,
                    e.pricing_note,
                )
                for e in events
            ]
        )

    def insert_event_rows(self, rows: Sequence[StoredEvent]) -> None:
        """Insert events as :func:`stored_event` makes them (a caller may make them before its transaction)."""
        if not rows:
            return
        if self._dialect.name == "sqlite":  # the rows are what executemany takes
            self._db.cursor().executemany(
                "INSERT INTO events (session_id, step_index, position, type, payload, cost, cost_status, over_budget,"
                " pricing_note, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            return
        if self._dialect.name == "postgresql" and len(rows) > 1:
            # One statement and one round trip for the batch (executemany: one INSERT per row): each
            # column goes as an array, and unnest turns the arrays back into rows, in their order.
            columns = [list(c) for c in zip(*rows)]
            # The arrays go in PostgreSQL's binary format (%b): as text, psycopg quotes each payload's every
            # quote and backslash with a regular expression, about two thirds of a batch's CPU in the server.
            # (Run here, not by _run: Dialect.sql would escape the %b placeholders.)
            self._db.execute(
                _INSERT_EVENTS_UNNEST, (rows[0][0], rows[0][9], *columns[1:9]), prepare=self._prepare or None
            )
            return
        self._many(
            "INSERT INTO events (session_id, step_index, position, type, payload, cost, cost_status, over_budget,"
            " pricing_note, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    def events(self, session_id: str, after: Optional[tuple[int, int]], limit: int) -> list[dict[str, Any]]:
        """A session's events in step order (unnumbered last, then as received), after ``(position, seq)``."""
        columns = "seq, position, payload, cost, cost_status, over_budget, pricing_note, received_at"
        if after is None:
            return self._all(
                f"SELECT {columns} FROM events WHERE session_id = ? ORDER BY position, seq LIMIT ?", (session_id, limit)
            )
        position, seq = after
        return self._all(
            f"SELECT {columns} FROM events WHERE session_id = ? AND (position > ? OR (position = ? AND seq > ?))"
            " ORDER BY position, seq LIMIT ?",
            (session_id, position, position, seq, limit),
        )

    def last_step_index(self, session_id: str) -> Optional[int]:
        row = self._one("SELECT MAX(step_index) AS step FROM events WHERE session_id = ?", (session_id,))
        return None if row is None or row["step"] is None else int(row["step"])

    # -- OpenTelemetry ingest ------------------------------------------------------------------

    def otel_sessions(self, workspace: str, keys: Sequence[str]) -> dict[str, str]:
        """The sessions that ``keys`` (``trace:<id>``, ``conversation:<id>``) went to, by key."""
        if not keys:
            return {}
        rows = self._all(
            f"SELECT key, session_id FROM otel_sessions WHERE workspace = ? AND key IN ({','.join('?' * len(keys))})",
            (workspace, *keys),
        )
        return {row["key"]: row["session_id"] for row in rows}

    def put_otel_session(self, workspace: str, key: str, session_id: str) -> None:
        self._run(
            "INSERT INTO otel_sessions (workspace, key, session_id) VALUES (?, ?, ?)"
            " ON CONFLICT (workspace, key) DO UPDATE SET session_id = excluded.session_id",
            (workspace, key, session_id),
        )

    def otel_spans_seen(self, workspace: str, trace_id: str, span_ids: Sequence[str]) -> set[str]:
        """Which of a trace's ``span_ids`` were recorded already."""
        if not span_ids:
            return set()
        rows = self._all(
            "SELECT span_id FROM otel_spans WHERE workspace = ? AND trace_id = ?"
            f" AND span_id IN ({','.join('?' * len(span_ids))})",
            (workspace, trace_id, *span_ids),
        )
        return {row["span_id"] for row in rows}

    def insert_otel_spans(self, workspace: str, received_at: str, spans: Iterable[tuple[str, str, str]]) -> None:
        """Record spans as (trace id, span id, session id)."""
        self._many(
            "INSERT INTO otel_spans (workspace, trace_id, span_id, session_id, received_at) VALUES (?, ?, ?, ?, ?)",
            ((workspace, trace_id, span_id, session_id, received_at) for trace_id, span_id, session_id in spans),
        )

    def move_session(self, from_id: str, into_id: str) -> None:
        """Move a session's events and OpenTelemetry keys into another one (their totals: the caller's)."""
        for table in ("events", "otel_spans", "otel_sessions"):
            self._run(f"UPDATE {table} SET session_id = ? WHERE session_id = ?", (into_id, from_id))

    def update_session(self, session_id: str, changes: dict[str, Any]) -> None:
        """Set some columns of a session (``agent_name``, ``metadata``, ``started_at``)."""
        for column in changes:
            assert column in ("agent_name", "metadata", "started_at")
        assignments = ", ".join(f"{column} = ?" for column in changes)
        self._run(f"UPDATE sessions SET {assignments} WHERE id = ?", (*changes.values(), session_id))

    # -- reservations ------------------------------------------------------------------------

    def insert_reservation(self, values: dict[str, Any]) -> None:
        self._insert("reservations", values)

    def reservation(self, reservation_id: str) -> Optional[dict[str, Any]]:
        return self._one(f"SELECT {RESERVATION_COLUMNS} FROM reservations WHERE id = ?", (reservation_id,))

    def set_reservation_state(self, reservation_id: str, state: str) -> None:
        self._run("UPDATE reservations SET state = ? WHERE id = ?", (state, reservation_id))

    def release_session_reservations(self, workspace: str, session_id: str) -> None:
        self._run(
            "UPDATE reservations SET state = 'released' WHERE workspace = ? AND session_id = ? AND state = 'held'",
            (workspace, session_id),
        )

    def reserve_at_once(self, values: Mapping[str, Any]) -> bool:
        """PostgreSQL: grant a reservation (``values``, made by :func:`reserve_at_once_values`) in one call, only
        in the plain case, and write nothing otherwise. The call is a transaction of its own (the function takes
        the workspace's lock first): run it outside one, in :meth:`Store.autocommit`, and it is one round trip.

        Granted when the key (``key_id``, ``key_hash``) is valid and of ``workspace``; the workspace's price
        version is still ``prices_version`` (its amount was priced with those prices); its idempotency key
        (key, fingerprint, reply body) was never used; the session is the workspace's and running; at least
        one budget applies; and each that applies fits the amount with what was spent in its period and what is
        held now: the rules of ``LedgerService._reserve`` and ``Budget.fits``. Anything else (a refusal, a
        replay, an error, no budget) is left to that general path, which words it: this only ever grants what
        it would grant."""
        if self._dialect.name != "postgresql":
            raise RuntimeError("reserve_at_once is PostgreSQL's")
        row = self._db.execute(RESERVE_AT_ONCE, values, prepare=self._prepare).fetchone()
        return bool(row["granted"])

    def forget_reservations(self, workspace: str, expired_before: str) -> None:
        self._run("DELETE FROM reservations WHERE workspace = ? AND expires_at <= ?", (workspace, expired_before))

    def held_reservations(self, workspace: Optional[str], now: str) -> list[dict[str, Any]]:
        """Reservations still held (granted, not settled or released, not expired)."""
        if workspace is None:
            return self._all(
                "SELECT id, workspace, session_id, agent_name, amount FROM reservations"
                " WHERE state = 'held' AND expires_at > ?",
                (now,),
            )
        return self._all(
            "SELECT id, workspace, session_id, agent_name, amount FROM reservations"
            " WHERE workspace = ? AND state = 'held' AND expires_at > ?",
            (workspace, now),
        )

    def held_for(self, workspace: str, session_id: str, ids: Sequence[str], now: str) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        rows = self._all(
            f"SELECT id, amount FROM reservations WHERE id IN ({','.join('?' * len(ids))})"
            " AND workspace = ? AND session_id = ? AND state = 'held' AND expires_at > ?",
            (*ids, workspace, session_id, now),
        )
        return {row["id"]: row for row in rows}

    def budget_state(
        self,
        workspace: str,
        agent_name: str,
        periods: Sequence[tuple[str, str, str]],
        now: str,
        session_id: Optional[str] = None,
    ) -> list[dict[str, Any]]:
        """In one statement (one round trip): the agent's budget, the workspace's settings, the spend of
        ``periods`` ((scope, subject, period) each) and the reservations held now. Rows of ``kind`` 'agent'
        (a: daily limit, b: monthly limit, c: warn at), 'settings' (a: daily limit, b: warn at, c: allow
        unpriced), 'spend' (a: amount, b: scope, c: subject) and 'held' (a: amount, b: 'agent' if they are
        ``agent_name``'s, c: 'session' if they are ``session_id``'s, d: how many reservations hold that amount);
        every value but d as text (or NULL).

        The held reservations come summed by amount (exact: the caller multiplies), not one row each: an agent
        whose calls are reserved faster than their events settle them holds hundreds at a time, and reading
        each made every reservation cost more than the last (0.39 ms with none held, 0.81 with 150, 2.3 with 600).
        ``session_id`` None: none are read."""
        spend = " OR ".join("(scope = ? AND subject = ? AND period = ?)" for _ in periods) or "1 = 0"
        held = (
            " UNION ALL SELECT 'held', CAST(amount AS TEXT),"
            " CASE WHEN agent_name = ? THEN 'agent' ELSE '' END, CASE WHEN session_id = ? THEN 'session' ELSE '' END,"
            " COUNT(*) FROM reservations WHERE workspace = ? AND state = 'held' AND expires_at > ? GROUP BY 2, 3, 4"
            if session_id is not None
            else ""
        )
        rows = self._all(
            "SELECT 'agent' AS kind, CAST(daily_limit AS TEXT) AS a, CAST(monthly_limit AS TEXT) AS b,"
            " CAST(warn_at_percent AS TEXT) AS c, CAST(NULL AS INTEGER) AS d FROM agent_budgets"
            " WHERE workspace = ? AND agent_name = ?"
            " UNION ALL SELECT 'settings', CAST(daily_limit AS TEXT), CAST(warn_at_percent AS TEXT),"
            " CAST(allow_unpriced AS TEXT), NULL FROM workspace_settings WHERE workspace = ?"
            " UNION ALL SELECT 'spend', CAST(amount AS TEXT), scope, subject, NULL FROM spend"
            f" WHERE workspace = ? AND ({spend}){held}",
            (
                workspace,
                agent_name,
                workspace,
                workspace,
                *(value for period in periods for value in period),
                *((agent_name, session_id, workspace, now) if session_id is not None else ()),
            ),
        )
        if periods and self._dialect.name == "sqlite":
            read = {(r["b"], r["c"]): r["a"] for r in rows if r["kind"] == "spend"}
            self._remember_spend(workspace, periods, read)
        return rows

    # -- spend --------------------------------------------------------------------------------

    def _remember_spend(
        self, workspace: str, periods: Sequence[tuple[str, str, str]], read: dict[tuple[str, str], Any]
    ) -> None:
        """Keep what the spend of ``periods`` was read to be (no row: 0). A scope and subject have one period each in
        a read, so the rows are told apart by those two."""
        for scope, subject, period in periods:
            self._spend[(workspace, scope, subject, period)] = amount(read.get((scope, subject)))

    def spent(self, workspace: str, scope: str, subject: str, period: str) -> Decimal:
        row = self._one(
            "SELECT amount FROM spend WHERE workspace = ? AND scope = ? AND subject = ? AND period = ?",
            (workspace, scope, subject, period),
        )
        return amount(row["amount"] if row is not None else None)

    def set_spent(self, workspace: str, scope: str, subject: str, period: str, total: Decimal) -> None:
        self._run(
            "INSERT INTO spend (workspace, scope, subject, period, amount) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (workspace, scope, subject, period) DO UPDATE SET amount = excluded.amount",
            (workspace, scope, subject, period, money.text(total)),
        )
        self._spend.pop((workspace, scope, subject, period), None)

    def add_spent(self, workspace: str, scope: str, subject: str, period: str, cost: Decimal) -> None:
        """Add ``cost`` to a spend total (see :meth:`add_spends`)."""
        self.add_spends(workspace, [(scope, subject, period)], cost)

    def add_spends(self, workspace: str, periods: Sequence[tuple[str, str, str]], cost: Decimal) -> None:
        """Add ``cost`` to the spend totals of ``periods`` ((scope, subject, period) each, all different), in one
        statement that writes them in that order.

        PostgreSQL adds in the statement (NUMERIC: exact), so that writes that hold no workspace lock never lose
        one another's. SQLite (amounts as exact text, no exact arithmetic in SQL) adds in Python, within its one
        write at a time: the totals this transaction read already (``budget_state``) are not read again, the others
        in one statement."""
        if not periods:
            return
        values = ", ".join("(?, ?, ?, ?, ?)" for _ in periods)
        if self._dialect.name == "postgresql":
            self._run(
                f"INSERT INTO spend (workspace, scope, subject, period, amount) VALUES {values}"
                " ON CONFLICT (workspace, scope, subject, period) DO UPDATE SET amount = spend.amount + excluded.amount",
                [value for key in periods for value in (workspace, *key, money.text(cost))],
            )
            return
        keys = [(workspace, scope, subject, period) for scope, subject, period in periods]
        unread = [key for key in keys if key not in self._spend]
        if unread:
            where = " OR ".join("(scope = ? AND subject = ? AND period = ?)" for _ in unread)
            rows = self._all(
                f"SELECT workspace, scope, subject, period, amount FROM spend WHERE workspace = ? AND ({where})",
                (workspace, *(value for key in unread for value in key[1:])),
            )
            found = {(r["workspace"], r["scope"], r["subject"], r["period"]): r["amount"] for r in rows}
            for key in unread:
                self._spend[key] = amount(found.get(key))
        totals = [money.add(self._spend[key], cost) for key in keys]
        self._run(
            f"INSERT INTO spend (workspace, scope, subject, period, amount) VALUES {values}"
            " ON CONFLICT (workspace, scope, subject, period) DO UPDATE SET amount = excluded.amount",
            [value for key, total in zip(keys, totals) for value in (*key, money.text(total))],
        )
        for key, total in zip(keys, totals):
            self._spend[key] = total

    @property
    def locks_workspaces(self) -> bool:
        """Whether :meth:`lock_workspace` locks anything (PostgreSQL); a SQLite write holds the whole file."""
        return self._dialect.name == "postgresql"

    def lock_workspace(self, workspace: str) -> None:
        """Wait for, then hold until the end of the transaction, the workspace's lock (PostgreSQL; a SQLite
        write holds the whole database already). Take it before any row lock: every write of the workspace
        takes them in that order (or deadlocks)."""
        if self._dialect.name == "postgresql":
            self._run("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (workspace,))

    def spend_by_subject(self, workspace: Optional[str], scope: str, period: str) -> dict[tuple[str, str], Decimal]:
        if workspace is None:
            rows = self._all(
                "SELECT workspace, subject, amount FROM spend WHERE scope = ? AND period = ?", (scope, period)
            )
        else:
            rows = self._all(
                "SELECT workspace, subject, amount FROM spend WHERE workspace = ? AND scope = ? AND period = ?",
                (workspace, scope, period),
            )
        return {(r["workspace"], r["subject"]): amount(r["amount"]) for r in rows}

    # -- budgets and settings --------------------------------------------------------------------

    def agent_budget(self, workspace: str, agent_name: str) -> Optional[dict[str, Any]]:
        return self._one("SELECT * FROM agent_budgets WHERE workspace = ? AND agent_name = ?", (workspace, agent_name))

    def agent_budgets(self, workspace: Optional[str]) -> list[dict[str, Any]]:
        if workspace is None:
            return self._all("SELECT * FROM agent_budgets")
        return self._all("SELECT * FROM agent_budgets WHERE workspace = ?", (workspace,))

    def put_agent_budget(
        self,
        workspace: str,
        agent_name: str,
        daily_limit: Optional[Decimal],
        monthly_limit: Optional[Decimal],
        warn_at_percent: Optional[Decimal],
    ) -> None:
        if daily_limit is None and monthly_limit is None:
            self._run("DELETE FROM agent_budgets WHERE workspace = ? AND agent_name = ?", (workspace, agent_name))
            return
        self._run(
            "INSERT INTO agent_budgets (workspace, agent_name, daily_limit, monthly_limit, warn_at_percent)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (workspace, agent_name) DO UPDATE SET"
            " daily_limit = excluded.daily_limit, monthly_limit = excluded.monthly_limit,"
            " warn_at_percent = excluded.warn_at_percent",
            (workspace, agent_name, stored(daily_limit), stored(monthly_limit), stored(warn_at_percent)),
        )

    def workspace_settings(self, workspace: Optional[str]) -> list[dict[str, Any]]:
        if workspace is None:
            return self._all("SELECT * FROM workspace_settings")
        return self._all("SELECT * FROM workspace_settings WHERE workspace = ?", (workspace,))

    def put_workspace_settings(self, workspace: str, changes: dict[str, Any]) -> None:
        """Set some of a workspace's settings (``daily_limit``, ``warn_at_percent``, ``allow_unpriced``)."""
        self._run(
            "INSERT INTO workspace_settings (workspace) VALUES (?) ON CONFLICT (workspace) DO NOTHING", (workspace,)
        )
        for column, value in changes.items():
            assert column in ("daily_limit", "warn_at_percent", "allow_unpriced")
            value = stored(value) if isinstance(value, Decimal) else value
            self._run(f"UPDATE workspace_settings SET {column} = ? WHERE workspace = ?", (value, workspace))

    # -- prices ---------------------------------------------------------------------------------

    def prices(self, workspace: str) -> list[dict[str, Any]]:
        return self._all("SELECT * FROM prices WHERE workspace = ? ORDER BY name", (workspace,))

    def prices_version(self, workspace: str) -> int:
        """The version of the workspace's prices: one more at every change of them (0: never changed)."""
        row = self._one("SELECT version FROM price_versions WHERE workspace = ?", (workspace,))
        return 0 if row is None else int(row["version"])

    def _prices_changed(self, workspace: str) -> None:
        self.keys_changed = True  # key_of_request reads the version
        self._run(
            "INSERT INTO price_versions (workspace, version) VALUES (?, 1)"
            " ON CONFLICT (workspace) DO UPDATE SET version = price_versions.version + 1",
            (workspace,),
        )

    def put_price(self, workspace: str, name: str, rates: Sequence[Optional[Decimal]], updated_at: str) -> None:
        self._run(
            "INSERT INTO prices (workspace, name, input_per_mtok, output_per_mtok, cache_read_per_mtok,"
            " cache_write_per_mtok, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (workspace, name) DO UPDATE SET input_per_mtok = excluded.input_per_mtok,"
            " output_per_mtok = excluded.output_per_mtok, cache_read_per_mtok = excluded.cache_read_per_mtok,"
            " cache_write_per_mtok = excluded.cache_write_per_mtok, updated_at = excluded.updated_at",
            (workspace, name, *(stored(rate) for rate in rates), updated_at),
        )
        self._prices_changed(workspace)

    def remove_price(self, workspace: str, name: str) -> bool:
        removed = bool(self._run("DELETE FROM prices WHERE workspace = ? AND name = ?", (workspace, name)).rowcount)
        if removed:
            self._prices_changed(workspace)
        return removed
