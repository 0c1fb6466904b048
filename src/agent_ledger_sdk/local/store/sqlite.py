"""The embedded default store: one SQLite file in WAL mode, shared safely by a server and the CLI.

Writes run one at a time (``BEGIN IMMEDIATE``, exclusive across the threads of
this process and the processes sharing the file), so a budget is never
over-granted. Reads run on a connection per thread and see a snapshot: a large
read does not hold up writes, nor writes reads. The file is created 0600 (it
holds prompts, outputs and key hashes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Optional, Union

from .base import MIGRATIONS_TABLE, MigrationError, Store, apply_migrations
from .sql import SQLITE, UNNUMBERED, Tx

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: SQLite's own busy wait orders the processes
    fcntl = None  # type: ignore[assignment]

__all__ = ["SQLiteStore"]

logger = logging.getLogger("agent_ledger_sdk")

# Seconds between background checkpoints, while writes come. A checkpoint copies each page written since the
# last once, however often it was written. 200 ms rather than 50 ms halved the checkpoint thread's CPU when
# every batch rewrote the same index pages (a benchmark resending one batch); with an agent's growing steps
# the two measure alike (docs/performance.md, the twelfth and thirteenth rounds).
CHECKPOINT_INTERVAL = 0.2
CHECKPOINT_PAGES = 1000  # a WAL this long is brought to its end under the write lock (SQLite's own threshold)
BACKSTOP_PAGES = 16 * CHECKPOINT_PAGES  # 64 MiB of WAL: the write that reaches it checkpoints itself
CATCH_UP_PAGES = 64  # pages few enough to copy under the write lock
BUSY_TIMEOUT = 30.0  # seconds a write waits for another process's before "database is locked"
# Key rows kept by key_of_request: a workspace has a few keys; ids sent at random are not kept long.
MAX_KEPT_KEYS = 1024
_UNLOCKED = contextlib.nullcontext()  # a database in memory: one connection, no other process


def _create_private_file(path: Path) -> bool:
    """Create ``path`` empty with mode 0600 unless it exists; True when this call created it."""
    try:
        fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    os.chmod(path, 0o600)
    return True


def _baseline(db: sqlite3.Connection) -> None:
    """Version 1: the tables as the ledger made them before versioned migrations (or bring an older file there)."""
    from ..schema import create_or_upgrade

    create_or_upgrade(db)


def _event_positions(db: sqlite3.Connection) -> None:
    """Version 2: events get a sort position (paginated reads of one session), and reads and retention indexes."""
    db.execute(f"ALTER TABLE events ADD COLUMN position INTEGER NOT NULL DEFAULT {UNNUMBERED}")
    db.execute("UPDATE events SET position = step_index WHERE step_index IS NOT NULL")
    db.execute("CREATE INDEX events_by_position ON events (session_id, position, seq)")
    db.execute("DROP INDEX IF EXISTS events_by_session")
    db.execute("CREATE INDEX sessions_by_agent ON sessions (workspace, agent_name, seq)")
    db.execute("CREATE INDEX sessions_by_end ON sessions (ended_at)")
    db.execute("CREATE INDEX idempotency_by_age ON idempotency (created_at)")


def _dashboard(db: sqlite3.Connection) -> None:
    """Version 3: what the dashboard reads fast at any size: spend per UTC day by agent, model and user (a rollup
    brought up to date as it is read, amounts as exact text), and the events over a budget (a partial index)."""
    db.execute(
        "CREATE TABLE cost_rollup (workspace TEXT NOT NULL, day TEXT NOT NULL, dimension TEXT NOT NULL,"
        " name TEXT NOT NULL, llm_calls INTEGER NOT NULL DEFAULT 0, tokens_in INTEGER NOT NULL DEFAULT 0,"
        " tokens_out INTEGER NOT NULL DEFAULT 0, cache_read_tokens INTEGER NOT NULL DEFAULT 0,"
        " cache_write_tokens INTEGER NOT NULL DEFAULT 0, reasoning_tokens INTEGER NOT NULL DEFAULT 0,"
        " unpriced_calls INTEGER NOT NULL DEFAULT 0, estimated_calls INTEGER NOT NULL DEFAULT 0,"
        " cost TEXT NOT NULL DEFAULT '0', PRIMARY KEY (workspace, day, dimension, name)) WITHOUT ROWID"
    )
    db.execute(
        "CREATE TABLE cost_rollup_progress (workspace TEXT PRIMARY KEY, event_seq INTEGER NOT NULL) WITHOUT ROWID"
    )
    db.execute("CREATE INDEX events_over_budget ON events (seq) WHERE over_budget = 1")


def _reservation_expiry(db: sqlite3.Connection) -> None:
    """Version 4: every budgeted write forgets long-expired reservations; it now finds them by expiry instead
    of reading the workspace's whole day of them."""
    db.execute("CREATE INDEX reservations_by_workspace_expiry ON reservations (workspace, expires_at)")


def _refusals(db: sqlite3.Connection) -> None:
    """Version 5: calls the guardrail refused before they ran (a refused reservation writes nothing else)."""
    db.execute(
        "CREATE TABLE refusals (seq INTEGER PRIMARY KEY AUTOINCREMENT, workspace TEXT NOT NULL,"
        " session_id TEXT NOT NULL, agent_name TEXT NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL,"
        " reason TEXT NOT NULL, budget TEXT, amount TEXT, message TEXT NOT NULL, created_at TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX refusals_by_workspace ON refusals (workspace, seq)")
    db.execute("CREATE INDEX refusals_by_session ON refusals (session_id)")


def _otel(db: sqlite3.Connection) -> None:
    """Version 6: OpenTelemetry ingest (POST /v1/traces). Which session a trace or a conversation went to (the same
    key always to the same session, over many export batches), and each span recorded (an exporter's retry resends
    spans: recording one twice must never count its cost twice)."""
    db.execute(
        "CREATE TABLE otel_sessions (workspace TEXT NOT NULL, key TEXT NOT NULL, session_id TEXT NOT NULL,"
        " PRIMARY KEY (workspace, key)) WITHOUT ROWID"
    )
    db.execute("CREATE INDEX otel_sessions_by_session ON otel_sessions (session_id)")
    db.execute(
        "CREATE TABLE otel_spans (workspace TEXT NOT NULL, trace_id TEXT NOT NULL, span_id TEXT NOT NULL,"
        " session_id TEXT NOT NULL, received_at TEXT NOT NULL, PRIMARY KEY (workspace, trace_id, span_id)) WITHOUT ROWID"
    )
    db.execute("CREATE INDEX otel_spans_by_session ON otel_spans (session_id)")


def _session_list_indexes(db: sqlite3.Connection) -> None:
    """Version 7: every filter of the session list (API, CLI, dashboard) reads an index that gives the sessions
    newest first, so that a page costs the same at 1e6 sessions as at 1e4: by status, by agent or user with a
    status, by start time and by cost (the REAL of the text amount, as the dashboard's filter compares it);
    and a session's tags in a table of their own (a JSON array cannot be indexed)."""
    for statement in SESSION_LIST_INDEXES:
        db.execute(statement)
    db.execute(
        "CREATE TABLE session_tags (workspace TEXT NOT NULL, tag TEXT NOT NULL, session_seq INTEGER NOT NULL,"
        " PRIMARY KEY (workspace, tag, session_seq)) WITHOUT ROWID"
    )
    db.execute(
        "INSERT OR IGNORE INTO session_tags (workspace, tag, session_seq)"
        " SELECT s.workspace, t.value, s.seq FROM sessions s, json_each(s.tags) t WHERE t.type = 'text'"
    )


def _price_versions(db: sqlite3.Connection) -> None:
    """Version 8: a version of each workspace's prices, one more at every change of them (in the changing
    transaction), read with the API key of each request: a server keeps the prices of a workspace until their
    version changes, and a price set by the CLI or another server applies from the next request on."""
    db.execute("CREATE TABLE price_versions (workspace TEXT PRIMARY KEY, version INTEGER NOT NULL) WITHOUT ROWID")


def _held_reservations(db: sqlite3.Connection) -> None:
    """Version 9: the reservations held now, by a partial index (and on PostgreSQL, a reservation in one call).
    A reservation's budget check reads the workspace's held reservations; an index of every reservation until it
    expires read those settled or released in the last ten minutes too (PostgreSQL's generic plan chose it), a
    cost that grew with the traffic."""
    db.execute("DROP INDEX IF EXISTS reservations_by_expiry")
    db.execute("CREATE INDEX reservations_held ON reservations (workspace, expires_at) WHERE state = 'held'")


SESSION_LIST_INDEXES = (
    "CREATE INDEX sessions_by_status ON sessions (workspace, status, seq)",
    "CREATE INDEX sessions_by_agent_status ON sessions (workspace, agent_name, status, seq)",
    "CREATE INDEX sessions_by_user_status ON sessions (workspace, user_id, status, seq)",
    "CREATE INDEX sessions_by_start ON sessions (workspace, started_at, seq)",
    "CREATE INDEX sessions_by_agent_start ON sessions (workspace, agent_name, started_at, seq)",
    "CREATE INDEX sessions_by_user_start ON sessions (workspace, user_id, started_at, seq)",
    "CREATE INDEX sessions_by_status_start ON sessions (workspace, status, started_at, seq)",
    "CREATE INDEX sessions_by_cost ON sessions (workspace, CAST(cost AS REAL))",
)


MIGRATIONS: list[tuple[int, str, Callable[[sqlite3.Connection], None]]] = [
    (1, "baseline", _baseline),
    (2, "event positions, read and retention indexes", _event_positions),
    (3, "dashboard: cost rollup, over-budget index", _dashboard),
    (4, "reservations by expiry", _reservation_expiry),
    (5, "refused calls", _refusals),
    (6, "OpenTelemetry ingest: sessions by trace and conversation, spans recorded", _otel),
    (7, "session list indexes, session tags", _session_list_indexes),
    (8, "price versions", _price_versions),
    (9, "a reservation in one call (PostgreSQL); held reservations by a partial index", _held_reservations),
]
LATEST = MIGRATIONS[-1][0]


class SQLiteStore(Store):
    """The ledger in one SQLite file (or ``:memory:``)."""

    one_writer = True  # one write at a time for the file

    def __init__(self, path: Union[str, Path], *, migrate: bool = True) -> None:
        self.path = Path(path)
        self.description = str(path)
        self._memory = str(path) in (":memory:", "")
        self._created = False
        if not self._memory:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # SQLite gives its -wal and -shm files the mode of the database file.
            self._created = _create_private_file(self.path)
        self._lock = threading.RLock()  # one write at a time in this process (across processes: _WriteFileLock)
        self._holder: Optional[int] = None  # the thread that holds _lock by write_now
        # Keys read within write_now, by id, with what the file was then: (data_version, _keys_generation).
        self._keys: dict[str, tuple[tuple[int, int], Optional[dict[str, Any]]]] = {}
        self._keys_generation = 0  # one more at every write of this process that changed a key or a price version
        self._readers_lock = threading.Lock()  # never the write lock: a waiting write must not hold up reads
        self._file_lock = None if self._memory else _WriteFileLock(Path(f"{self.path}-lock"))
        try:
            # The first connection may turn a new file to WAL, which needs the file to itself. SQLite answers
            # "database is locked" at once, without its busy wait, to a process that finds another doing the
            # same (each holds the lock the other waits for): processes that open one new file together (a
            # team's replicas, `serve` beside a script) take turns here instead.
            with self._file_lock or _UNLOCKED:
                self._writer = self._connect()
        except BaseException:
            if self._file_lock is not None:
                self._file_lock.close()
            raise
        self._checkpointer: Optional[_Checkpointer] = None
        if not self._memory:
            # Checkpoints run on a thread of their own (_Checkpointer), not in the COMMIT of whichever write
            # takes the WAL past 1000 pages: that COMMIT copied the pages and waited for two fsyncs while it
            # held the write lock (about 1.3 ms a batch of 100 events on average, measured). SQLite's own
            # stays, far out, as a backstop: writes faster than the thread copies (or a thread starved of the
            # GIL) make the write that takes the WAL to BACKSTOP_PAGES checkpoint, as before.
            self._writer.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
            # A WAL that grew past this (a burst of writes) is cut back to it when it starts over, not kept.
            self._writer.execute(f"PRAGMA journal_size_limit={BACKSTOP_PAGES * 4096}")
            self._checkpointer = _Checkpointer(self)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._closed = False
        try:
            if migrate:
                self.migrate()
            elif self.schema_version() != LATEST:
                raise MigrationError(
                    f"{self.description} has schema version {self.schema_version()}; this code needs {LATEST}. "
                    "Run `agent-ledger migrate --db PATH`."
                )
        except BaseException:
            self.close()  # a store that cannot open leaves no connection behind
            raise
        if self._created:
            for suffix in ("-wal", "-shm"):
                companion = Path(f"{self.path}{suffix}")
                if companion.exists():
                    os.chmod(companion, 0o600)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30.0)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA journal_mode=WAL")  # the first read of the file: "not a database" shows here
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
        except BaseException:
            db.close()
            raise
        return db

    # -- transactions ------------------------------------------------------------------

    @contextmanager
    def write(self, workspace: Optional[str] = None) -> Iterator[Tx]:
        checkpointer = self._checkpointer
        if checkpointer is not None and checkpointer.waiting and not self._within_write_now():
            checkpointer.let_in()  # (not within write_now: this thread holds the lock the checkpoint waits for)
        with self._lock, self._file_lock or _UNLOCKED:
            self._writer.execute("BEGIN IMMEDIATE")
            tx = Tx(self._writer, SQLITE)
            try:
                yield tx
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise
            finally:
                if tx.keys_changed:
                    self._keys_generation += 1
            self._writer.execute("COMMIT")
        if checkpointer is not None:
            checkpointer.written()

    @contextmanager
    def write_now(self) -> Iterator[bool]:
        """True holding the write lock of this process and of the file, when both were free; False at once
        when either is held (a write of another thread or process) or a checkpoint waits for them."""
        checkpointer = self._checkpointer
        if (checkpointer is not None and checkpointer.waiting) or not self._lock.acquire(blocking=False):
            yield False
            return
        try:
            file_lock = self._file_lock
            if file_lock is not None and not file_lock.try_enter():
                yield False
                return
            self._holder = threading.get_ident()
            try:
                yield True
            finally:
                self._holder = None
                if file_lock is not None:
                    file_lock.__exit__()
        finally:
            self._lock.release()

    def _within_write_now(self) -> bool:
        """Whether this thread holds the write lock by :meth:`write_now`."""
        return self._holder == threading.get_ident()

    def key_of_request(self, key_id: str) -> Optional[dict[str, Any]]:
        """Within write_now, the row read last for ``key_id`` when the file has not changed since: no other
        connection committed (SQLite's ``data_version`` of the writer, read under the write lock of every
        process) and no write of this one changed a key or a price version. A key revoked or a price set by
        the CLI, another worker or this process is read again by the very next request."""
        if not self._within_write_now() or self._writer.in_transaction:
            return super().key_of_request(key_id)
        version = (self._writer.execute("PRAGMA data_version").fetchone()[0], self._keys_generation)
        kept = self._keys.get(key_id)
        if kept is not None and kept[0] == version:
            return kept[1]
        row = Tx(self._writer, SQLITE).key_of_request(key_id)
        if len(self._keys) >= MAX_KEPT_KEYS:
            self._keys.clear()
        self._keys[key_id] = (version, row)
        return row

    def _reader(self) -> sqlite3.Connection:
        if self._memory:
            return self._writer  # another connection to :memory: would be another database
        db: Optional[sqlite3.Connection] = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect()
            with self._readers_lock:
                self._readers.append(db)
        return db

    @contextmanager
    def read(self) -> Iterator[Tx]:
        if self._memory:
            with self._lock:
                yield Tx(self._writer, SQLITE)
            return
        db = self._reader()
        db.execute("BEGIN")  # one snapshot for every statement of the read
        try:
            yield Tx(db, SQLITE)
        finally:
            db.execute("COMMIT")

    @contextmanager
    def query(self) -> Iterator[Tx]:
        if self._memory:
            with self.read() as tx:
                yield tx
            return
        if self._within_write_now() and not self._writer.in_transaction:
            # Within write_now the writer is this thread's, and its page cache is current, where a reader's is
            # dropped at every write of the file (WAL): a statement costs less there. (Not within a write: it
            # would see what the write has not committed.)
            yield Tx(self._writer, SQLITE)
            return
        yield Tx(self._reader(), SQLITE)  # autocommit: the statement is its own read transaction

    # -- schema ---------------------------------------------------------------------------

    def schema_version(self) -> int:
        with self._lock:
            tables = {r[0] for r in self._writer.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "schema_migrations" not in tables:
                # A file of the ledger from before versioned migrations is at version 0 too: the baseline
                # migration brings it (and any earlier layout) up to version 1 without losing a row.
                return 0
            row = self._writer.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
            return int(row[0] or 0)

    def migrate(self) -> tuple[int, int]:
        with self.write() as tx:
            db = tx._db
            db.execute(MIGRATIONS_TABLE)
            row = db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
            return apply_migrations(
                self.description,
                int(row[0] or 0),
                MIGRATIONS,
                lambda step: step(db),
                lambda *applied: db.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)", applied
                ),
            )

    def ping(self) -> None:
        with self.read() as tx:
            tx._run("SELECT 1").fetchone()

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()  # before the lock: its last step may be waiting for it
        with self._lock, self._readers_lock:
            if self._closed:
                return
            self._closed = True
            if self._file_lock is not None:
                self._file_lock.close()
            for db in self._readers:
                db.close()
            self._writer.close()


class _Checkpointer:
    """Copies the WAL into the database file on a thread of its own, so that no write waits for it.

    While writes come, every CHECKPOINT_INTERVAL: a PASSIVE checkpoint on a connection of its own (it
    never blocks a write or a read: it copies what no reader still needs, and fsyncs the file), then,
    when the WAL had CHECKPOINT_PAGES or more, more passes until few pages are new and one under the
    store's write lock, which finds only those few: with every page copied and no write running, the next write starts
    the WAL over from its beginning (without that moment, steady writes would grow it without end). The
    thread starts with the first write and ends with the store; a checkpoint that fails is logged and
    tried again at the next interval (SQLite's own checkpoint at the last close still runs).
    """

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self._start_lock = threading.Lock()
        self._pid = os.getpid()
        # Set while it waits for the write lock: a write about to take it lets it in first (a lock is not
        # fair: writes back to back would take it again and again, and the WAL would never start over).
        self.waiting = False
        self._in = threading.Event()

    def let_in(self) -> None:
        """A write waits (up to 50 ms) for the checkpoint waiting for the write lock to have it."""
        self._in.wait(0.05)

    def written(self) -> None:
        """A write committed: a checkpoint is due at the next interval."""
        if self._thread is None or self._pid != os.getpid():
            self._start()
        self._wake.set()

    def _start(self) -> None:
        with self._start_lock:
            if self._stopping or (self._thread is not None and self._pid == os.getpid()):
                return
            self._pid = os.getpid()  # a forked child has no thread of its parent's: it starts its own
            self._thread = threading.Thread(target=self._run, name="agent-ledger-checkpoint", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._start_lock:
            self._stopping = True
            thread = self._thread if self._pid == os.getpid() else None
        self._stopped.set()
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)

    def _run(self) -> None:
        try:
            db = self._store._connect()
        except sqlite3.Error as exc:
            logger.warning("agent-ledger: background WAL checkpoints are off (%s); SQLite's own will run", exc)
            with self._store._lock:
                if not self._store._closed:
                    self._store._writer.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_PAGES}")
            return
        try:
            while True:
                self._wake.wait()
                if self._stopped.wait(CHECKPOINT_INTERVAL):  # the writes of the interval, in one checkpoint
                    return
                self._wake.clear()
                try:
                    self.checkpoint(db)
                except sqlite3.Error as exc:  # e.g. another process holds the file: the next interval retries
                    logger.debug("agent-ledger: WAL checkpoint failed: %r", exc)
        finally:
            db.close()

    def checkpoint(self, db: sqlite3.Connection) -> None:
        _, pages, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if pages < CHECKPOINT_PAGES:
            return
        # The pages written while it copied, again without the lock, until few are left (each pass is shorter):
        # the pass under the lock then copies only those few, and the writes wait for little more than its fsync.
        for _ in range(4):
            _, pages, now = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            fresh, copied = now - copied, now
            if fresh < CATCH_UP_PAGES:
                break
        self._in.clear()
        self.waiting = True
        try:
            with self._store._lock:
                self.waiting = False
                self._in.set()
                if not self._store._closed:
                    with self._store._file_lock or _UNLOCKED:  # no write of any process: the WAL can start over
                        db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            self.waiting = False
            self._in.set()


class _WriteFileLock:
    """An exclusive ``flock`` on ``<database>-lock``, taken around every write transaction of the ledger's
    processes on one file (``with lock:``; re-entrant: held from the outermost write of this process, whose
    caller holds the store's own lock).

    SQLite orders writers of different processes by ``BEGIN IMMEDIATE`` and a busy handler that sleeps
    1, 2, 5, 10 ms and more between tries: two ``serve --workers`` processes each writing a batch every few
    milliseconds lose much of their time asleep while the file is free. A process waiting here tries again
    every 50 to 200 µs instead, for at most BUSY_TIMEOUT (then SQLite's own lock and its 30 s wait decide:
    a stopped process never hangs the others). A process of an older version, which does not take this
    lock, is still ordered by SQLite's. Without ``flock`` (Windows), it locks nothing."""

    def __init__(self, path: Path) -> None:
        self._depth = 0
        self._fd: Optional[int] = None
        if fcntl is None:
            return
        try:
            self._fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:  # a read-only directory: SQLite's own busy wait orders the writers
            logger.debug("agent-ledger: no write lock file %s (%s)", path, exc)

    def __enter__(self) -> None:
        self._depth += 1
        if self._depth > 1 or self._fd is None:
            return
        deadline = time.monotonic() + BUSY_TIMEOUT
        pause = 0.00005
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return  # unlocked: BEGIN IMMEDIATE waits its own 30 s, then says "database is locked"
            time.sleep(pause)
            pause = min(pause * 2, 0.0002)

    def try_enter(self) -> bool:
        """``__enter__`` if the file is free (or already this process's); False at once if another has it."""
        if self._depth == 0 and self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
        self._depth += 1
        return True

    def __exit__(self, *exc_info: object) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)  # a no-op when __enter__ gave up waiting

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
