"""Where the ledger keeps its records: :class:`Store`, with SQLite and PostgreSQL implementations.

``open_store(db)`` takes what ``--db`` and ``AGENT_LEDGER_DB`` take: a SQLite
path, or a ``postgresql://`` URL (needs ``pip install "agent-ledger-sdk[postgres]"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

from .base import MigrationError, Store
from .sqlite import SQLiteStore

__all__ = ["MigrationError", "SQLiteStore", "Store", "is_url", "open_store"]

_SCHEMES = ("postgresql://", "postgres://")


def is_url(db: Union[str, Path]) -> bool:
    return isinstance(db, str) and db.startswith(_SCHEMES)


def open_store(db: Union[str, Path], *, migrate: bool = True) -> Store:
    """The store at ``db``: a PostgreSQL database for a ``postgresql://`` URL, else a SQLite file.

    ``migrate``: bring the schema up to date on opening (SQLite always may: one file, one
    transaction); with False, a PostgreSQL database whose schema is behind is refused with a
    message that says to run ``agent-ledger migrate``.
    """
    if is_url(db):
        from .postgres import PostgresStore

        return PostgresStore(str(db), migrate=migrate)
    return SQLiteStore(db)
