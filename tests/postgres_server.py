"""A real, throwaway PostgreSQL server for the tests and the benchmarks (never a mock).

In a test module::

    pytest_plugins = ["tests.postgres_server"]  # the fixtures postgres_server and postgres_url

    def test_something(postgres_url: str) -> None:  # a fresh, empty database, dropped afterwards
        ...

``postgres_server`` (session scope) is one server for the whole pytest session: the one that
``AGENT_LEDGER_TEST_POSTGRES=postgresql://...`` names, else one this module starts from the
``initdb``/``pg_ctl`` on PATH or in /usr/lib/postgresql/*/bin, on 127.0.0.1, in a temporary
directory removed at the end. Tests skip only when there is neither (or psycopg is not installed);
a server that fails to start fails them, with its log.

Outside pytest (benchmarks)::

    with running_postgres() as url:  # postgresql://ledger@127.0.0.1:PORT/ledger
        ...

``python tests/postgres_server.py`` starts one and prints its URL until Enter or Ctrl-C.

PYTEST_DONT_REWRITE: a test module may both import from this module and name it in ``pytest_plugins``
(pytest would otherwise warn that it was imported before it could rewrite its asserts; it has none).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import pwd
import re
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

import pytest

ENV_URL = "AGENT_LEDGER_TEST_POSTGRES"
NO_POSTGRES = f"no PostgreSQL: install it (apt-get install postgresql) or set {ENV_URL}=postgresql://..."
PSYCOPG_MISSING = 'psycopg is not installed: python -m pip install -e ".[postgres]"'

# The superuser role and the database that a started server's URL names.
USER = "ledger"
DATABASE = "ledger"
# initdb and the server refuse to run as root: as root they run as this user.
OS_USER = "postgres"

# Speed over durability (the data is thrown away), and room for 4 server replicas' pools plus 64 writers.
SETTINGS: dict[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
}
START_TIMEOUT = 60  # seconds pg_ctl waits for the server to accept connections
PORT_ATTEMPTS = 5  # another process may take the free port between choosing it and binding it


class PostgresNotFound(RuntimeError):
    """No PostgreSQL binaries on this machine."""


class PostgresStartError(RuntimeError):
    """initdb or the server failed; the message has their output and the server's log."""


@dataclass(frozen=True)
class Binaries:
    initdb: Path
    pg_ctl: Path

    def version(self) -> str:
        """``pg_ctl (PostgreSQL) 15.18 (Debian ...)``."""
        return subprocess.run(
            [str(self.pg_ctl), "--version"], capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL
        ).stdout.strip()


def find_binaries() -> Optional[Binaries]:
    """``pg_ctl`` and ``initdb`` from PATH, else from the newest /usr/lib/postgresql/*/bin; None if neither."""
    pg_ctl, initdb = shutil.which("pg_ctl"), shutil.which("initdb")
    if pg_ctl and initdb:
        return Binaries(initdb=Path(initdb), pg_ctl=Path(pg_ctl))

    def major(bindir: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name)) or (0,)

    bindirs = [path.parent for path in Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")]
    for bindir in sorted(bindirs, key=major, reverse=True):
        if (bindir / "initdb").exists():
            return Binaries(initdb=bindir / "initdb", pg_ctl=bindir / "pg_ctl")
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def with_database(url: str, database: str) -> str:
    """``url`` with its database (the path) replaced; credentials, host and query stay."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def _quote_setting(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _as_server_user(command: list[str]) -> list[str]:
    """``command`` as it must run: directly, or as the postgres user when this process is root."""
    if os.geteuid() != 0:
        return command
    if shutil.which("runuser"):
        return ["runuser", "-u", OS_USER, "--", *command]
    if shutil.which("setpriv"):
        user = pwd.getpwnam(OS_USER)
        return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", *command]
    raise PostgresStartError(
        "running as root, PostgreSQL must run as another user, and neither runuser nor setpriv is here"
    )


def _temp_parent() -> Optional[str]:
    """Where the server's directory goes: the usual temp dir, unless as root it is shut to the postgres user."""
    if os.geteuid() != 0:
        return None
    path = Path(tempfile.gettempdir()).resolve()
    reachable = all(path.stat().st_mode & stat.S_IXOTH for path in (path, *path.parents))
    return None if reachable else "/tmp"


def _run(command: list[str], cwd: Path, what: str, timeout: float = 120) -> str:
    """Run ``command`` (as the server's user), its output to a file (pg_ctl's server keeps pipes open)."""
    out = cwd / f"{what}.out"
    with out.open("wb") as sink:
        try:
            done = subprocess.run(
                _as_server_user(command),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
            failed: Optional[str] = None if done.returncode == 0 else f"exited with {done.returncode}"
        except subprocess.TimeoutExpired:
            failed = f"did not finish in {timeout} s"
    output = out.read_text(errors="replace")
    if failed:
        raise PostgresStartError(f"{what} {failed}: {' '.join(command)}\n--- its output ---\n{output}")
    return output


@dataclass
class PostgresServer:
    """A PostgreSQL server: ``url`` is its superuser's URL to its main database.

    ``directory`` is None for a server this module did not start (``AGENT_LEDGER_TEST_POSTGRES``).
    """

    url: str
    directory: Optional[Path] = None
    binaries: Optional[Binaries] = None
    _names: Iterator[int] = field(default_factory=itertools.count, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def log_path(self) -> Optional[Path]:
        return None if self.directory is None else self.directory / "postgres.log"

    def log(self) -> str:
        """The server's log so far (empty for a server this module did not start)."""
        path = self.log_path
        return path.read_text(errors="replace") if path is not None and path.exists() else ""

    def create_database(self) -> str:
        """A new, empty database (from template0); its URL. ``drop_database`` removes it."""
        import psycopg

        with self._lock:
            number = next(self._names)
        # pid and a random part: two pytest processes may share one server (AGENT_LEDGER_TEST_POSTGRES).
        name = f"test_{os.getpid()}_{secrets.token_hex(3)}_{number}"
        with psycopg.connect(self.url, autocommit=True) as admin:
            # FILE_COPY (15+) copies template0's files instead of writing them through the WAL: 17 ms, not 25.
            strategy = " STRATEGY FILE_COPY" if admin.info.server_version >= 150000 else ""
            admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0{strategy}')
        return with_database(self.url, name)

    def drop_database(self, url_or_name: str) -> None:
        """Drop a database that ``create_database`` made, closing whatever is still connected to it."""
        import psycopg

        name = urlsplit(url_or_name).path.lstrip("/") if "://" in url_or_name else url_or_name
        with psycopg.connect(self.url, autocommit=True) as admin:
            if admin.info.server_version >= 130000:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            else:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name])
                admin.execute(f'DROP DATABASE IF EXISTS "{name}"')

    @contextlib.contextmanager
    def fresh_database(self) -> Iterator[str]:
        """The URL of a new, empty database, dropped on leaving."""
        url = self.create_database()
        try:
            yield url
        finally:
            self.drop_database(url)

    def stop(self) -> None:
        """Stop the server at once (its data is thrown away) and remove its directory. Idempotent."""
        directory, self.directory = self.directory, None
        if directory is None or self.binaries is None:
            return
        atexit.unregister(self.stop)
        try:
            if (directory / "data" / "postmaster.pid").exists():
                with contextlib.suppress(PostgresStartError):
                    _run(
                        [str(self.binaries.pg_ctl), "-D", str(directory / "data"), "-m", "immediate", "-w", "stop"],
                        directory,
                        "pg_ctl-stop",
                    )
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_postgres(settings: Optional[Mapping[str, str]] = None, binaries: Optional[Binaries] = None) -> PostgresServer:
    """Start a throwaway server on 127.0.0.1 (and a unix socket in its directory).

    ``settings`` are added to (and override) ``SETTINGS``. Raises ``PostgresNotFound`` without
    binaries and ``PostgresStartError``, with the server's log, when it does not start.
    """
    import psycopg

    binaries = binaries or find_binaries()
    if binaries is None:
        raise PostgresNotFound(NO_POSTGRES)
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam(OS_USER)
        except KeyError:
            raise PostgresStartError(
                f"running as root, PostgreSQL must run as the '{OS_USER}' user, and there is none: "
                f"apt-get install postgresql creates it (or: useradd --system {OS_USER})"
            ) from None
    directory = Path(tempfile.mkdtemp(prefix="agent-ledger-pg-", dir=_temp_parent()))
    server = PostgresServer(url="", directory=directory, binaries=binaries)
    atexit.register(server.stop)  # a session that dies without its teardown still leaves nothing running
    try:
        if os.geteuid() == 0:
            os.chown(directory, owner.pw_uid, owner.pw_gid)
        data = directory / "data"
        # -N: no fsync of the new cluster; trust: a throwaway on loopback, with no password to know.
        _run(
            [str(binaries.initdb), "-D", str(data), "-U", USER, "-A", "trust", "-E", "UTF8", "--locale=C", "-N"],
            directory,
            "initdb",
        )
        conf = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(directory),
            **SETTINGS,
            **(settings or {}),
        }
        with (data / "postgresql.conf").open("a") as config:
            config.write("\n# agent-ledger tests\n")
            config.writelines(f"{name} = {_quote_setting(value)}\n" for name, value in conf.items())
        for attempt in range(PORT_ATTEMPTS):
            port = free_port()
            log = directory / "postgres.log"
            with contextlib.suppress(FileNotFoundError):
                log.unlink()
            try:
                _run(
                    [
                        str(binaries.pg_ctl),
                        "-D",
                        str(data),
                        "-l",
                        str(log),
                        "-o",
                        f"-p {port}",
                        "-w",
                        "-t",
                        str(START_TIMEOUT),
                        "start",
                    ],
                    directory,
                    "pg_ctl-start",
                    timeout=START_TIMEOUT + 30,
                )
                break
            except PostgresStartError as error:
                logged = server.log()
                if "could not bind" in logged and attempt + 1 < PORT_ATTEMPTS:
                    continue  # the port was taken meanwhile: another one
                raise PostgresStartError(
                    f"PostgreSQL did not start ({binaries.version()}): {error}\n--- server log {log} ---\n{logged}"
                ) from None
        base = f"postgresql://{USER}@127.0.0.1:{port}"
        with psycopg.connect(f"{base}/postgres", autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{DATABASE}"')
        server.url = f"{base}/{DATABASE}"
        return server
    except BaseException:
        server.stop()
        raise


@contextlib.contextmanager
def running_postgres(settings: Optional[Mapping[str, str]] = None) -> Iterator[str]:
    """A throwaway server's URL (``postgresql://ledger@127.0.0.1:PORT/ledger``), stopped and removed on leaving."""
    with start_postgres(settings) as server:
        yield server.url


# ---- pytest ----

_session: Optional[PostgresServer] = None
_session_lock = threading.Lock()


def _session_server() -> PostgresServer:
    """One server per process, however many test modules import the fixture."""
    global _session
    with _session_lock:
        if _session is None:
            url = os.environ.get(ENV_URL)
            if url:
                _session = PostgresServer(url=url)
            else:
                binaries = find_binaries()
                if binaries is None:
                    pytest.skip(NO_POSTGRES)
                _session = start_postgres(binaries=binaries)
        return _session


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server (``AGENT_LEDGER_TEST_POSTGRES``'s, or one started for it)."""
    global _session
    pytest.importorskip("psycopg", reason=PSYCOPG_MISSING)
    server = _session_server()
    try:
        yield server
    finally:
        with _session_lock:
            _session = None
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's server, as a ``postgresql://`` URL; dropped after the test."""
    with postgres_server.fresh_database() as url:
        yield url


if __name__ == "__main__":
    with running_postgres() as url:
        print(url, flush=True)
        with contextlib.suppress(KeyboardInterrupt, EOFError):
            input("running; Enter or Ctrl-C stops it\n")
