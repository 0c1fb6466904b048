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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Optional

from typing_extensions import Self

if TYPE_CHECKING:
    from .sql import Tx

__all__ = ["MigrationError", "Store"]


class MigrationError(Exception):
    """The database's schema is not the one this code needs, and the message says what to do."""


class Store(abc.ABC):
    """A ledger database: transactions over it, its schema version, and a health check."""

    #: What the store is, for logs and ``--db`` echoes (a path, or a URL without its password).
    description: str

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
