"""The SQLite schema of the local ledger, and how a database of an earlier version is brought up to date.

A database is upgraded when it is opened: tables and columns added since it
was made are created, and what earlier versions stored as REAL (costs,
budgets, daily spend) is moved to exact text once.
"""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from typing import Any

from . import money
from .budgets import AGENT_DAILY, AGENT_MONTHLY, WORKSPACE_DAILY
from .pricing import PRICED, UNPRICED

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
    tokens_in INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    event_count INTEGER NOT NULL DEFAULT 0,
    unpriced_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS sessions_by_workspace ON sessions (workspace, seq);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL REFERENCES sessions (id),
    step_index INTEGER,
    type TEXT NOT NULL,
    payload TEXT NOT NULL,
    pricing_note TEXT,
    received_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_session ON events (session_id, step_index, seq);
CREATE TABLE IF NOT EXISTS agent_budgets (
    workspace TEXT NOT NULL,
    agent_name TEXT NOT NULL,
    daily_limit TEXT,
    monthly_limit TEXT,
    warn_at_percent TEXT,
    PRIMARY KEY (workspace, agent_name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS workspace_settings (
    workspace TEXT PRIMARY KEY,
    daily_limit TEXT,
    warn_at_percent TEXT,
    allow_unpriced INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS spend (
    workspace TEXT NOT NULL,
    scope TEXT NOT NULL,
    subject TEXT NOT NULL,
    period TEXT NOT NULL,
    amount TEXT NOT NULL,
    PRIMARY KEY (workspace, scope, subject, period)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reservations (
    id TEXT PRIMARY KEY,
    workspace TEXT NOT NULL,
    session_id TEXT NOT NULL,
    agent_name TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    amount TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS reservations_by_expiry ON reservations (workspace, state, expires_at);
CREATE TABLE IF NOT EXISTS prices (
    workspace TEXT NOT NULL,
    name TEXT NOT NULL,
    input_per_mtok TEXT NOT NULL,
    output_per_mtok TEXT NOT NULL,
    cache_read_per_mtok TEXT,
    cache_write_per_mtok TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (workspace, name)
) WITHOUT ROWID;
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
_ADDED_COLUMNS = {
    "sessions": {
        "user_id": "TEXT",
        "tags": "TEXT NOT NULL DEFAULT '[]'",
        "metadata": "TEXT NOT NULL DEFAULT '{}'",
        "parent_session_id": "TEXT",
        # Exact amounts, as text (earlier versions kept a REAL cost_usd: see _migrate_amounts).
        "cost": "TEXT NOT NULL DEFAULT '0'",
        "estimated_count": "INTEGER NOT NULL DEFAULT 0",
        "over_budget_count": "INTEGER NOT NULL DEFAULT 0",
        "max_cost": "TEXT",
        "warn_at_percent": "TEXT",
    },
    "events": {
        "cost": "TEXT NOT NULL DEFAULT '0'",
        "cost_status": "TEXT",
        "over_budget": "INTEGER NOT NULL DEFAULT 0",
    },
}

# Indexes on those columns, created once the columns exist.
_INDEXES = """
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions (workspace, user_id, seq);
CREATE INDEX IF NOT EXISTS sessions_by_parent ON sessions (workspace, parent_session_id);
"""


def create_or_upgrade(db: sqlite3.Connection) -> None:
    """Create the tables, or bring those of an earlier version up to date (in the caller's transaction)."""
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    added: set[tuple[str, str]] = set()
    for table, columns in _ADDED_COLUMNS.items():
        present = {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}
        for column, definition in columns.items():
            if column not in present:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
                added.add((table, column))
    for statement in _INDEXES.split(";"):
        if statement.strip():
            db.execute(statement)
    _migrate_amounts(db, added)


def _migrate_amounts(db: sqlite3.Connection, added: set[tuple[str, str]]) -> None:
    """Move what earlier versions stored as REAL (costs, budgets, daily spend) to exact text."""
    tables = {row["name"] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if ("events", "cost") in added:
        events = [r["name"] for r in db.execute("PRAGMA table_info(events)")]
        if "cost_usd" in events:
            rows = db.execute("SELECT seq, cost_usd, priced, type FROM events WHERE type = 'llm_call'").fetchall()
            db.executemany(
                "UPDATE events SET cost = ?, cost_status = ? WHERE seq = ?",
                [
                    (money.text(_legacy_amount(r["cost_usd"])), PRICED if r["priced"] else UNPRICED, r["seq"])
                    for r in rows
                ],
            )
    if ("sessions", "cost") in added:
        sessions = [r["name"] for r in db.execute("PRAGMA table_info(sessions)")]
        if "cost_usd" in sessions:
            rows = db.execute("SELECT seq, cost_usd FROM sessions WHERE cost_usd != 0").fetchall()
            db.executemany(
                "UPDATE sessions SET cost = ? WHERE seq = ?",
                [(money.text(_legacy_amount(r["cost_usd"])), r["seq"]) for r in rows],
            )
    if "budgets" in tables:
        for row in db.execute("SELECT workspace, agent_name, daily_limit_usd FROM budgets").fetchall():
            db.execute(
                "INSERT OR IGNORE INTO agent_budgets (workspace, agent_name, daily_limit) VALUES (?, ?, ?)",
                (row["workspace"], row["agent_name"], money.text(_legacy_amount(row["daily_limit_usd"]))),
            )
        db.execute("DROP TABLE budgets")
    if "daily_spend" in tables:
        totals: dict[tuple[str, str, str, str], Decimal] = {}
        for row in db.execute("SELECT workspace, agent_name, day, spent_usd FROM daily_spend").fetchall():
            amount = _legacy_amount(row["spent_usd"])
            for key in (
                (row["workspace"], AGENT_DAILY, row["agent_name"], row["day"]),
                (row["workspace"], AGENT_MONTHLY, row["agent_name"], row["day"][:7]),
                (row["workspace"], WORKSPACE_DAILY, "", row["day"]),
            ):
                totals[key] = money.add(totals.get(key, money.ZERO), amount)
        db.executemany(
            "INSERT OR IGNORE INTO spend (workspace, scope, subject, period, amount) VALUES (?, ?, ?, ?, ?)",
            [(*key, money.text(amount)) for key, amount in totals.items()],
        )
        db.execute("DROP TABLE daily_spend")


def _legacy_amount(value: Any) -> Decimal:
    """An amount an earlier version stored as a REAL: the shortest decimal that reads back as it."""
    return money.exact(float(value or 0.0))
