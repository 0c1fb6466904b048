"""The storage interface of the ledger: what the service needs from a database, and nothing of HTTP or rules.

A :class:`Store` hands out transactions: :meth:`Store.write` one that changes
things, serialised per workspace (a budget is checked and spent inside one),
and :meth:`Store.read` a consistent snapshot for reads. Both yield a
:class:`~.sql.Tx`, whose methods are the only SQL of the ledger. Rows come back
as plain dicts: amounts are :class:`~decimal.Decimal`, times RFC 3339 text,
``tags``/``metadata``/``payload`` JSON text as stored.

Two implementations: ``sqlite.SQLiteStore`` (one file, the embedded default)
and ``postgres.PostgresStore`` (a team's shared database, any number of
server processes). Both pass the one conformance suite in ``tests/``.
"""

from __future__ import annotations

import abc
import datetime
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

from typing_extensions import Self

if TYPE_CHECKING:
    from .sql import Tx

_Step = TypeVar("_Step")  # what a migration is: a function of a connection (SQLite), a script (PostgreSQL)

__all__ = ["MIGRATIONS_TABLE", "MigrationError", "Store", "apply_migrations"]

# Which versions of the schema a database has had applied, and when.
MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
    " applied_at TEXT NOT NULL)"
)


class MigrationError(Exception):
    """The database's schema is not the one this code needs, and the message says what to do."""


def apply_migrations(
    description: str,
    before: int,
    migrations: Sequence[tuple[int, str, _Step]],
    apply: Callable[[_Step], None],
    record: Callable[[int, str, str], object],
) -> tuple[int, int]:
    """Apply the ``migrations`` above version ``before`` in order (the caller's transaction), recording each.

    Refuses a database newer than the code: an older release must not write to a schema it does not know.
    """
    latest = migrations[-1][0]
    if before > latest:
        raise MigrationError(
            f"{description} has schema version {before}, newer than this code knows ({latest}). "
            "Upgrade agent-ledger-sdk (on every replica) to use it."
        )
    for version, name, step in migrations:
        if version > before:
            apply(step)
            record(version, name, datetime.datetime.now(datetime.timezone.utc).isoformat())
    return before, latest


class Store(abc.ABC):
    """A ledger database: transactions over it, its schema version, and a health check."""

    #: What the store is, for logs and ``--db`` echoes (a path, or a URL without its password).
    description: str

    #: Whether the store makes one write at a time (SQLite: one writer for the file), so that a server hands
    #: its writes to one thread rather than to many that would wait for each other (``offload.run_in_writer``).
    one_writer: bool = False

    #: Whether :meth:`pipelined_write` gives transactions that send reads ahead (``Tx.ahead``): several reads in
    #: one round trip to a database over a network. A caller that knows what it will read may then send it
    #: first, and a key a request carries may be read in the transaction rather than before it.
    sends_ahead: bool = False

    @abc.abstractmethod
    @contextmanager
    def write(self, workspace: Optional[str]) -> Iterator[Tx]:
        """One transaction that changes data, exclusive for ``workspace`` (None: no workspace's budgets)."""
        yield  # type: ignore[misc]

    @abc.abstractmethod
    @contextmanager
    def read(self) -> Iterator[Tx]:
        """A transaction that only reads, over a consistent snapshot."""
        yield  # type: ignore[misc]

    @contextmanager
    def pipelined_write(self, workspace: Optional[str]) -> Iterator[Tx]:
        """:meth:`write`, for the hot paths: a store over a network may send a statement whose result is not read
        with the next one instead of waiting for it (PostgreSQL's pipeline mode). A database error then raises
        at a later statement of the transaction, or at its end; and a statement's ``rowcount`` is not known
        until then: only for transactions that read none."""
        with self.write(workspace) as tx:
            yield tx

    def key_of_request(self, key_id: str) -> Optional[dict[str, Any]]:
        """:meth:`Tx.key_of_request` in a read of its own: the key of a request, with its workspace's price
        version (a store may answer from what it read before, when it knows that nothing changed since)."""
        with self.query() as tx:
            return tx.key_of_request(key_id)

    @contextmanager
    def write_now(self) -> Iterator[bool]:
        """Whether this thread may write at once, without waiting for any other: True while it holds what every
        write takes (its writes within then run at once); False when a write would wait, or the store has no
        such moment to give (a store over a network: its writes wait for a server).

        For a caller that has a thread it must not block (an event loop) and a small write to make: on True
        it writes on that thread and saves the hand-off to another; on False it hands the write off."""
        yield False

    @contextmanager
    def query(self) -> Iterator[Tx]:
        """A read of ONE statement: no transaction around it (a statement reads one snapshot by itself), so it
        costs the statement alone. Stores whose transactions cost nothing more may leave it to :meth:`read`."""
        with self.read() as tx:
            yield tx

    @contextmanager
    def autocommit(self) -> Iterator[Tx]:
        """Statements each a transaction of its own, writes too: for a statement that takes its own locks (on
        PostgreSQL, ``agent_ledger_reserve``). Only a store that :attr:`sends_ahead` has it."""
        raise NotImplementedError(f"{type(self).__name__} runs writes in write() and pipelined_write()")
        yield  # pragma: no cover - a generator, for contextmanager

    async def reserve_on_loop(self, call: Mapping[str, Any]) -> Optional[bool]:
        """``Tx.reserve_at_once(call)`` made on the running event loop, with no hop to a thread: whether it
        granted; None when this store does not make it there now (the caller makes it in a thread of the
        pool: ``LedgerService.reserve_planned``)."""
        return None

    @abc.abstractmethod
    def schema_version(self) -> int:
        """The version of the schema the database has (0: empty)."""

    @abc.abstractmethod
    def migrate(self) -> tuple[int, int]:
        """Bring the schema up to this code's version; return (version before, version after)."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise if the database cannot answer a query now (readiness)."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
