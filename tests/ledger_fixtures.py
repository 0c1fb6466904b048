"""The local ledger's HTTP tests share this ``ledger`` fixture (with test prices); ``http`` is in conftest.

The fixture runs each test module once per storage backend, SQLite and PostgreSQL (a real server:
``tests/postgres_server.py``): the HTTP tests of the ledger are the conformance suite both pass.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Optional, Union

import pytest

from agent_ledger_sdk.local import LocalLedger, run
from agent_ledger_sdk.local.service import LedgerService
from agent_ledger_sdk.local.store import SQLiteStore

# $1 per million tokens in and out: a call of N tokens costs N micro-dollars.
FLAT_PRICES = {"test/flat": {"input_per_mtok": 1.0, "output_per_mtok": 1.0}}


BACKENDS = ("sqlite", "postgresql")


@contextmanager
def database(request: pytest.FixtureRequest, backend: str) -> Iterator[Union[Path, str]]:
    """A new, empty ledger database of ``backend``: a SQLite file, or a fresh PostgreSQL database's URL."""
    if backend == "sqlite":
        yield request.getfixturevalue("tmp_path_factory").mktemp("sqlite") / "ledger.db"
        return
    server = request.getfixturevalue("postgres_server")
    with server.fresh_database() as url:
        yield url


def backend_ledger(prices: Optional[dict[str, Any]] = None) -> Callable[..., Iterator[LocalLedger]]:
    """A module-scoped ``ledger`` fixture, once per backend: a local ledger whose price overrides are ``prices``."""

    @pytest.fixture(scope="module", params=BACKENDS)
    def ledger(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLedger]:
        path = None
        if prices is not None:
            path = tmp_path_factory.mktemp("prices") / "prices.json"
            path.write_text(json.dumps(prices))
        with database(request, request.param) as db, run(db=db, prices=path) as running:
            yield running

    return ledger


priced_ledger = backend_ledger


def sqlite_service(path: Any, **options: Any) -> LedgerService:
    """The ledger's service over a SQLite file, as the server and the CLI make it."""
    return LedgerService(SQLiteStore(path), **options)


def raw_rows(
    db: Union[Path, str], statement: str, params: tuple[Any, ...] = (), *, setup: str = ""
) -> list[tuple[Any, ...]]:
    """Rows of a query run straight on a ledger's database (``?`` placeholders), whichever the backend."""
    if isinstance(db, Path):
        import sqlite3
        from contextlib import closing

        with closing(sqlite3.connect(db)) as connection:  # (a connection's with-block does not close it)
            return [tuple(row) for row in connection.execute(statement, params).fetchall()]
    import psycopg

    with psycopg.connect(db) as connection:
        if setup:
            connection.execute(setup)
        return [tuple(row) for row in connection.execute(statement.replace("?", "%s"), params).fetchall()]
