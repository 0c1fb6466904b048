"""The SQLite store's writes: WAL checkpoints off the write path, and the write lock shared by the processes
of one file (``serve --workers N``, the CLI)."""

from __future__ import annotations

import multiprocessing
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest

from agent_ledger_sdk.local.store import sqlite as sqlite_store
from agent_ledger_sdk.local.store.sqlite import CHECKPOINT_PAGES, SQLiteStore

ROW = "x" * 3000  # most of a page: CHECKPOINT_PAGES rows take the WAL past the threshold


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "ledger.db")
    with opened.write() as tx:
        tx._run("CREATE TABLE filler (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    try:
        yield opened
    finally:
        opened.close()


def fill(store: SQLiteStore, rows: int, per_write: int = 50) -> None:
    for _ in range(rows // per_write):
        with store.write() as tx:
            tx._many("INSERT INTO filler (body) VALUES (?)", [(ROW,)] * per_write)


def wal_frames(path: Path) -> int:
    """The frames in the WAL now (a PASSIVE checkpoint reports them; it copies what is left, if anything)."""
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        return int(db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])


def wait_for(condition: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_a_write_never_checkpoints_and_the_background_thread_does(store: SQLiteStore) -> None:
    assert store._writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == sqlite_store.BACKSTOP_PAGES
    size_before = store.path.stat().st_size
    fill(store, 2 * CHECKPOINT_PAGES)
    # Nothing else writes: the rows reach the database file only if the checkpoint thread copies them.
    assert wait_for(lambda: store.path.stat().st_size > size_before + CHECKPOINT_PAGES * 4096), (
        f"the database file stayed at {store.path.stat().st_size} bytes: no checkpoint ran"
    )
    assert any(t.name == "agent-ledger-checkpoint" for t in threading.enumerate())


def test_once_writes_pause_the_wal_starts_over(store: SQLiteStore) -> None:
    """After a long WAL, a pause in the writes lets the background checkpoint copy all of it, and a write after
    that starts the WAL from its beginning. (This is SQLite's own rule once every frame is copied; that writes
    which never pause start it over too is the next test's.) It waits for the copy as long as a disk that
    stalls may need, not a fixed time."""
    fill(store, 3 * CHECKPOINT_PAGES)
    assert wait_for(lambda: store.path.stat().st_size > 3 * CHECKPOINT_PAGES * 3000)

    def started_over() -> bool:
        with store.write() as tx:
            tx._run("INSERT INTO filler (body) VALUES ('one more')")
        return wal_frames(store.path) < 50

    assert wait_for(started_over), "the WAL went on from where it was instead of starting over"


def wal_generation(wal: Path) -> int:
    """The WAL's checkpoint sequence number (its header's bytes 12 to 16): SQLite adds one each time a write
    starts the WAL over from its beginning."""
    with wal.open("rb") as f:
        return int.from_bytes(f.read(16)[12:16], "big")


@pytest.mark.parametrize("how", ["write", "write_now"])
def test_steady_writes_keep_starting_the_wal_over(store: SQLiteStore, how: str) -> None:
    """3,000 writes of 80 KB of pages, a millisecond apart (about 240 MB in 4 to 5 s): the WAL is checkpointed
    under the write lock from time to time and starts over, about 30 times here. Without that moment it starts
    over only when a checkpoint happens to find no write under way, or at SQLite's own backstop (64 MiB): 5 or
    6 times here. Writes made within write_now (the server's event loop) let the checkpoint in too: while it
    waits, write_now says no, and the write goes the usual way, which lets it in first.

    What is counted is the times it started over, not its largest size: a disk whose fsync stalls for a second
    or two (a shared host's load; one CI run saw the WAL reach 63 MB) lets any WAL grow by what comes in
    meanwhile, and it must still start over after. A checkpoint held 1.5 s by hand: 24 times."""
    wal = Path(f"{store.path}-wal")
    generations: set[int] = set()
    for _ in range(3000):
        if how == "write":
            fill(store, 20, per_write=20)
        else:
            with store.write_now() as now:
                if now:
                    fill(store, 20, per_write=20)
            if not now:
                fill(store, 20, per_write=20)
        generations.add(wal_generation(wal))
        time.sleep(0.001)
    written = store.path.stat().st_size
    assert len(generations) >= 15, (
        f"the WAL started over {len(generations) - 1} times in {written} bytes written "
        f"(it reached {wal.stat().st_size} bytes)"
    )


def test_closing_the_store_ends_the_thread_at_once(tmp_path: Path) -> None:
    opened = SQLiteStore(tmp_path / "ledger.db")
    with opened.write() as tx:
        tx._run("CREATE TABLE t (x)")
        tx._many("INSERT INTO t (x) VALUES (?)", [(n,) for n in range(100)])
    assert opened._checkpointer is not None
    thread = opened._checkpointer._thread  # this store's own: others (other tests' ledgers) may be running
    assert thread is not None and thread.name == "agent-ledger-checkpoint" and thread.is_alive()
    began = time.perf_counter()
    opened.close()
    assert time.perf_counter() - began < 1.0
    assert not thread.is_alive()
    # The last connection's close checkpoints what is left: the file holds every row.
    with closing(sqlite3.connect(tmp_path / "ledger.db")) as db:
        assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 100
    assert not Path(f"{tmp_path / 'ledger.db'}-wal").exists()


def test_a_store_in_memory_has_no_thread_and_no_lock_file() -> None:
    before = {t.ident for t in threading.enumerate()}
    opened = SQLiteStore(":memory:")
    try:
        with opened.write() as tx:
            tx._run("CREATE TABLE t (x)")
        assert opened._checkpointer is None and opened._file_lock is None
        assert {t.ident for t in threading.enumerate()} <= before | {threading.get_ident()}
    finally:
        opened.close()


def _hold_the_write_lock(path: str, held: object, release: object) -> None:
    opened = SQLiteStore(path)
    try:
        with opened.write() as tx:
            tx._run("INSERT INTO filler (body) VALUES ('held')")
            held.set()  # type: ignore[attr-defined]
            release.wait(30)  # type: ignore[attr-defined]
    finally:
        opened.close()


@contextmanager
def write_of_another_process(path: Path) -> Iterator[Any]:
    """Another process's write of 'held' to ``filler``, under way for the block (or until the event it gives is
    set); the process must then end cleanly."""
    context = multiprocessing.get_context("spawn")
    held, release = context.Event(), context.Event()
    other = context.Process(target=_hold_the_write_lock, args=(str(path), held, release))
    other.start()
    try:
        assert held.wait(60), "the other process never began its write"
        yield release
    finally:
        release.set()
        other.join(30)
    assert other.exitcode == 0


@contextmanager
def write_of_another_thread(store: Any) -> Iterator[threading.Event]:
    """A write of another thread of this process (the CLI's, a slow batch's), under way for the block (or until
    the event it gives is set)."""
    held, release = threading.Event(), threading.Event()

    def long_write() -> None:
        with store.write(None) as tx:
            tx._run("SELECT 1")
            held.set()
            release.wait(30)

    writer = threading.Thread(target=long_write)
    writer.start()
    try:
        assert held.wait(10)
        yield release
    finally:
        release.set()
        writer.join()


@pytest.mark.skipif(sqlite_store.fcntl is None, reason="the lock file is POSIX flock")
def test_a_write_of_another_process_holds_up_this_one_until_it_commits(store: SQLiteStore) -> None:
    lock_file = Path(f"{store.path}-lock")
    assert stat.S_IMODE(lock_file.stat().st_mode) == 0o600  # beside a file of prompts: nobody else's
    with write_of_another_process(store.path) as release:
        done = threading.Event()

        def write() -> None:
            with store.write() as tx:
                tx._run("INSERT INTO filler (body) VALUES ('mine')")
            done.set()

        writer = threading.Thread(target=write)
        writer.start()
        assert not done.wait(0.5), "a write went on while another process held the write lock"
        release.set()
        assert done.wait(10), "the write did not go on once the other process committed"
        writer.join()
    with store.read() as tx:
        rows = [r["body"] for r in tx._all("SELECT body FROM filler ORDER BY id")]
    assert rows == ["held", "mine"]


def _count_up(path: str, times: int) -> None:
    opened = SQLiteStore(path)
    try:
        for _ in range(times):
            with opened.write() as tx:
                row = tx._one("SELECT body FROM filler WHERE id = 1")
                assert row is not None
                tx._run("UPDATE filler SET body = ? WHERE id = 1", (str(int(row["body"]) + 1),))
    finally:
        opened.close()


def test_processes_that_read_then_write_never_lose_an_update(store: SQLiteStore) -> None:
    """Four processes and this one each add 1, 200 times, by reading then writing the total: every write
    is whole, so the total is exact."""
    with store.write() as tx:
        tx._run("INSERT INTO filler (id, body) VALUES (1, '0')")
    context = multiprocessing.get_context("spawn")
    others = [context.Process(target=_count_up, args=(str(store.path), 200)) for _ in range(4)]
    for process in others:
        process.start()
    _count_up(str(store.path), 200)
    for process in others:
        process.join(120)
        assert process.exitcode == 0
    with store.read() as tx:
        row = tx._one("SELECT body FROM filler WHERE id = 1")
    assert row is not None and int(row["body"]) == 1000


def _open_at_once(path: str, everyone: Any, opened: Any) -> None:
    everyone.wait(60)  # every process imported and ready: they open the new file together
    store = SQLiteStore(path)
    try:
        with store.write() as tx:
            tx._run("SELECT 1")
        opened.put(store.schema_version())
    finally:
        store.close()


@pytest.mark.parametrize("attempt", range(4))
def test_processes_that_open_one_new_file_together_all_open_it(tmp_path: Path, attempt: int) -> None:
    """Replicas started together on a new file (or `serve` beside a script): the first connection of each turns
    the file to WAL, and SQLite refused one of two processes doing that at once ("database is locked", without
    its busy wait: 11 of 90 such processes failed before they took turns)."""
    context = multiprocessing.get_context("spawn")
    count = 8
    everyone, opened = context.Barrier(count), context.Queue()
    path = tmp_path / "new.db"
    processes = [context.Process(target=_open_at_once, args=(str(path), everyone, opened)) for _ in range(count)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
    assert [process.exitcode for process in processes] == [0] * count
    assert sorted(opened.get(timeout=10) for _ in range(count)) == [sqlite_store.LATEST] * count
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# -- write_now: a write on a thread that must not wait (the server's event loop) ---------------------------


def test_write_now_holds_every_write_of_this_process_until_it_ends(store: SQLiteStore) -> None:
    done = threading.Event()

    def other_write() -> None:
        with store.write() as tx:
            tx._run("INSERT INTO filler (body) VALUES ('other')")
        done.set()

    with store.write_now() as now:
        assert now is True
        with store.write() as tx:  # within it, a write of this thread runs at once
            tx._run("INSERT INTO filler (body) VALUES ('mine')")
        other = threading.Thread(target=other_write)
        other.start()
        assert not done.wait(0.3), "another thread wrote while write_now held the lock"
    assert done.wait(10), "the other thread's write did not go on once write_now ended"
    other.join()
    with store.read() as tx:
        assert [r["body"] for r in tx._all("SELECT body FROM filler ORDER BY id")] == ["mine", "other"]


def test_write_now_says_no_at_once_while_another_thread_writes(store: SQLiteStore) -> None:
    with write_of_another_thread(store):
        began = time.monotonic()
        with store.write_now() as now:
            assert now is False
        assert time.monotonic() - began < 0.25, "write_now waited for the other write"
    with store.write_now() as now:  # free again
        assert now is True


@pytest.mark.skipif(sqlite_store.fcntl is None, reason="the lock file is POSIX flock")
def test_write_now_says_no_at_once_while_another_process_writes(store: SQLiteStore) -> None:
    with write_of_another_process(store.path):
        with store.write_now() as now:
            assert now is False
        # Saying no let go of this process's lock too: another thread of it can queue for the file.
        assert store._lock.acquire(timeout=5)
        store._lock.release()
    with store.write_now() as now:
        assert now is True
        with store.write() as tx:
            tx._run("INSERT INTO filler (body) VALUES ('after')")
    with store.read() as tx:
        assert [r["body"] for r in tx._all("SELECT body FROM filler ORDER BY id")] == ["held", "after"]


def test_write_now_lets_a_waiting_checkpoint_go_first_and_never_waits_for_one(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpointer = store._checkpointer
    assert checkpointer is not None
    checkpointer.waiting = True  # a checkpoint wants the write lock: write_now leaves it to the pool's writes
    try:
        with store.write_now() as now:
            assert now is False
    finally:
        checkpointer.waiting = False

    def stall() -> None:
        raise AssertionError("a write within write_now waited for a checkpoint that cannot have the lock")

    monkeypatch.setattr(checkpointer, "let_in", stall)
    with store.write_now() as now:
        assert now is True
        checkpointer.waiting = True  # it began waiting once write_now had the lock
        try:
            with store.write() as tx:
                tx._run("INSERT INTO filler (body) VALUES ('x')")
        finally:
            checkpointer.waiting = False


def test_within_write_now_a_query_reads_the_committed_file_on_the_writer(store: SQLiteStore) -> None:
    with store.write() as tx:
        tx._run("INSERT INTO filler (body) VALUES ('committed')")
    with store.write_now() as now:
        assert now
        with store.query() as tx:
            assert tx._db is store._writer  # its page cache is current; a reader's was dropped by the write
            assert tx._one("SELECT count(*) AS n FROM filler")["n"] == 1  # type: ignore[index]
        with store.write() as tx:
            tx._run("INSERT INTO filler (body) VALUES ('not yet')")
            with store.query() as read:  # within a write: a reader, which sees only what is committed
                assert read._db is not store._writer
                assert read._one("SELECT count(*) AS n FROM filler")["n"] == 1  # type: ignore[index]
    with store.query() as tx:  # outside write_now: a reader, as before
        assert tx._db is not store._writer
        assert tx._one("SELECT count(*) AS n FROM filler")["n"] == 2  # type: ignore[index]


def test_write_now_in_memory() -> None:
    opened = SQLiteStore(":memory:")
    try:
        with opened.write_now() as now:
            assert now is True
            with opened.write() as tx:
                tx._run("CREATE TABLE t (x)")
                tx._run("INSERT INTO t VALUES (1)")
        with opened.read() as tx:
            assert tx._one("SELECT x FROM t")["x"] == 1  # type: ignore[index]
    finally:
        opened.close()
