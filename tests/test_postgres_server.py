"""The PostgreSQL that the storage tests run against is a real server, and a usable one."""

from __future__ import annotations

import os
import pwd
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("psycopg", reason='the PostgreSQL tests need psycopg: python -m pip install -e ".[postgres]"')
pytest.importorskip(
    "psycopg_pool", reason='the PostgreSQL tests need psycopg-pool: python -m pip install -e ".[postgres]"'
)

import psycopg
from psycopg_pool import ConnectionPool

from . import postgres_server as module
from .postgres_server import (
    ENV_URL,
    NO_POSTGRES,
    PostgresServer,
    PostgresStartError,
    find_binaries,
    running_postgres,
    start_postgres,
    with_database,
)

# The fixtures postgres_server (the session's server) and postgres_url (a fresh database per test).
pytest_plugins = ["tests.postgres_server"]

needs_binaries = pytest.mark.skipif(find_binaries() is None, reason=NO_POSTGRES)


def tables(url: str) -> list[str]:
    with psycopg.connect(url) as connection:
        rows = connection.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1").fetchall()
    return [row[0] for row in rows]


def test_a_fresh_database_takes_queries(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql://")
    with psycopg.connect(postgres_url) as connection:
        database, superuser, answer = (
            connection.execute(
                "SELECT current_database(), (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), 6 * 7"
            ).fetchone()
            or ()
        )
        connection.execute("CREATE TABLE events (id bigserial PRIMARY KEY, body jsonb NOT NULL)")
        connection.execute("INSERT INTO events (body) VALUES (%s::jsonb)", ['{"cost": 3}'])
        assert connection.execute("SELECT body->>'cost' FROM events").fetchone() == ("3",)
    assert postgres_url.endswith("/" + database)
    assert superuser is True
    assert answer == 42


def test_fresh_databases_are_empty_and_isolated(postgres_server: PostgresServer) -> None:
    with postgres_server.fresh_database() as first, postgres_server.fresh_database() as second:
        assert first != second
        with psycopg.connect(first) as connection:
            connection.execute("CREATE TABLE only_in_first (id int)")
        assert tables(first) == ["only_in_first"]
        assert tables(second) == []
        with postgres_server.fresh_database() as third:
            assert tables(third) == []
        open_connection = psycopg.connect(first)  # dropping closes what is still connected
    name = first.rsplit("/", 1)[1]
    with psycopg.connect(postgres_server.url) as admin:
        assert admin.execute("SELECT count(*) FROM pg_database WHERE datname = %s", [name]).fetchone() == (0,)
    with pytest.raises(psycopg.OperationalError):
        open_connection.execute("SELECT 1")
    open_connection.close()


def test_the_started_server_is_tuned_for_throwaway_data(postgres_server: PostgresServer) -> None:
    if postgres_server.directory is None:
        pytest.skip(f"{ENV_URL} names a server this module did not start")
    with psycopg.connect(postgres_server.url) as connection:
        settings: dict[str, str] = dict(
            connection.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('fsync', 'synchronous_commit', 'full_page_writes', 'max_connections', 'listen_addresses')"
            ).fetchall()
        )
    assert settings == {
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": "300",
        "listen_addresses": "127.0.0.1",
    }
    assert "@127.0.0.1:" in postgres_server.url


def test_the_server_takes_100_connections_at_once(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("CREATE TABLE writes (worker int NOT NULL, n int NOT NULL)")
    all_in = threading.Barrier(100, timeout=30)
    with ConnectionPool(postgres_url, min_size=100, max_size=100, open=False) as pool:
        pool.open(wait=True, timeout=30)

        def work(worker: int) -> int:
            with pool.connection() as connection:
                all_in.wait()  # every worker holds its own connection here, at the same time
                for n in range(20):
                    connection.execute("INSERT INTO writes VALUES (%s, %s)", [worker, n])
                connection.commit()
                row = connection.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                ).fetchone()
                return int(row[0]) if row else 0

        with ThreadPoolExecutor(max_workers=100) as threads:
            seen = list(threads.map(work, range(100)))
    assert max(seen) >= 100
    with psycopg.connect(postgres_url) as connection:
        assert connection.execute("SELECT count(*), count(DISTINCT worker) FROM writes").fetchone() == (2000, 100)


@needs_binaries
def test_a_server_that_fails_to_start_says_why_with_its_log() -> None:
    with pytest.raises(PostgresStartError) as failure:
        start_postgres(settings={"shared_buffers": "plenty"})
    message = str(failure.value)
    assert "PostgreSQL did not start" in message
    assert 'invalid value for parameter "shared_buffers": "plenty"' in message  # the server's own log line
    log = Path(message.split("--- server log ", 1)[1].split(" ---", 1)[0])
    assert log.name == "postgres.log"
    assert not log.parent.exists()  # nothing left behind


@needs_binaries
def test_running_postgres_outside_pytest_and_two_at_once(postgres_server: PostgresServer) -> None:
    with running_postgres() as url:
        assert url != postgres_server.url  # another port, another directory
        with psycopg.connect(url) as connection:
            assert connection.execute("SELECT current_database(), current_user").fetchone() == ("ledger", "ledger")
        port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"postgresql://ledger@127.0.0.1:{port}/ledger", connect_timeout=5)


def test_without_postgres_the_tests_skip_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "_session", None)
    monkeypatch.delenv(ENV_URL, raising=False)
    monkeypatch.setattr(module, "find_binaries", lambda: None)
    with pytest.raises(pytest.skip.Exception, match="^no PostgreSQL: install it") as skipped:
        module._session_server()
    assert "\n" not in str(skipped.value)
    assert NO_POSTGRES == (
        "no PostgreSQL: install it (apt-get install postgresql) or set AGENT_LEDGER_TEST_POSTGRES=postgresql://..."
    )


def test_a_url_from_the_environment_is_used_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "_session", None)
    monkeypatch.setenv(ENV_URL, "postgresql://someone:secret@db.example:5433/main?sslmode=disable")
    server = module._session_server()
    assert server.directory is None  # nothing started, nothing to stop
    assert with_database(server.url, "test_1") == "postgresql://someone:secret@db.example:5433/test_1?sslmode=disable"
    server.stop()


def test_the_server_runs_as_its_own_user_when_this_is_root(postgres_server: PostgresServer) -> None:
    if postgres_server.directory is None:
        pytest.skip(f"{ENV_URL} names a server this module did not start")
    with psycopg.connect(postgres_server.url) as connection:
        data_directory = (connection.execute("SHOW data_directory").fetchone() or ("",))[0]
    owner = Path(data_directory).stat().st_uid
    assert owner == (pwd.getpwnam(module.OS_USER).pw_uid if os.geteuid() == 0 else os.geteuid())
