"""Operating a ledger with ``agent-ledger``: migrate, prune, export, --json, sessions delete, serve --workers.

Every test runs the real command (``main([...])`` in this process, or the console script in a
process of its own) on a real SQLite file, or on a fresh database of a real PostgreSQL server
(``postgres_url``, tests/postgres_server.py).
"""

from __future__ import annotations

import csv
import datetime
import http.client
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Optional, Union

import pytest

pytest.importorskip("starlette", reason="the CLI needs the server extra")

from agent_ledger_sdk import cli as cli_module
from agent_ledger_sdk._local_key import local_key_path, local_url_path
from agent_ledger_sdk.local import money
from agent_ledger_sdk.local.export import CSV_COLUMNS
from agent_ledger_sdk.local.pricing import Rates
from agent_ledger_sdk.local.records import Idempotency
from agent_ledger_sdk.local.service import MAX_EVENTS_PAGE, LedgerService
from agent_ledger_sdk.local.store import open_store
from agent_ledger_sdk.local.store.postgres import LATEST as POSTGRES_LATEST
from agent_ledger_sdk.local.store.sqlite import LATEST, MIGRATIONS

from .ledger_fixtures import FLAT_PRICES, raw_rows

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).with_name("agent-ledger"))
UTC = datetime.timezone.utc
EXACT_PRICE = Decimal("0.123456789")  # USD per million input tokens: one token costs 0.000000123456789
ONE_TOKEN = "0.000000123456789"
Db = Union[Path, str]


# -- running the command -------------------------------------------------------------------------------


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out, parse_float=Decimal)


def main(capsys: pytest.CaptureFixture[str], *args: Union[str, Path]) -> Ran:
    """``agent-ledger ARGS`` in this process: exit code, stdout, stderr."""
    capsys.readouterr()
    code = cli_module.main([str(a) for a in args])
    captured = capsys.readouterr()
    return Ran(code, captured.out, captured.err)


def cli(*args: Union[str, Path], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The console script in a process of its own."""
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def one_line_error(ran: Ran, *expected: str) -> None:
    assert ran.code == 1, ran
    assert ran.err.startswith("agent-ledger: error: "), ran.err
    assert ran.err.count("\n") == 1, ran.err  # one line
    for text in expected:
        assert text in ran.err, ran.err


# -- a ledger with history -------------------------------------------------------------------------------


@dataclass
class Clock:
    now: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(UTC))

    def __call__(self) -> datetime.datetime:
        return self.now

    def ago(self, **delta: float) -> datetime.datetime:
        return datetime.datetime.now(UTC) - datetime.timedelta(**delta)


@contextmanager
def service(db: Db) -> Iterator[tuple[LedgerService, Clock]]:
    """The ledger's service over ``db`` (migrated), with a clock the test sets."""
    clock = Clock()
    with LedgerService(open_store(db, migrate=True), clock=clock) as ledger:
        ledger.set_price("default", "test/exact", Rates(EXACT_PRICE, Decimal(2), None, None))
        ledger.set_price("team-b", "test/exact", Rates(EXACT_PRICE, Decimal(2), None, None))
        yield ledger, clock


def start(ledger: LedgerService, agent: str, workspace: str = "default", **context: Any) -> str:
    body = {"agentName": agent, **context}
    return str(ledger.start_session_request(workspace, body, None).body["id"])


def log(ledger: LedgerService, session_id: str, events: list[dict[str, Any]], workspace: str = "default") -> None:
    ledger.log_events_request(workspace, {"sessionId": session_id, "events": events}, None)


def llm(step: int, tokens_in: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "type": "llm_call",
        "stepIndex": step,
        "provider": "test",
        "model": "exact",
        "tokensIn": tokens_in,
        "tokensOut": 0,
        **extra,
    }


def tool(step: int, name: str = "lookup") -> list[dict[str, Any]]:
    return [
        {"type": "tool_call", "stepIndex": step, "toolName": name, "toolInput": {"q": "x"}, "latencyMs": 12.5},
        {"type": "tool_result", "stepIndex": step, "toolName": name, "toolOutput": "found"},
    ]


def count(db: Db, statement: str, *params: Any) -> int:
    return int(raw_rows(db, statement, params)[0][0])


# -- migrate ----------------------------------------------------------------------------------------------


def test_migrate_brings_a_new_or_older_sqlite_file_up_to_date_and_says_from_which_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh = tmp_path / "fresh.db"
    assert main(capsys, "migrate", "--db", fresh) == Ran(0, f"schema version 0 -> {LATEST}\n", "")
    assert main(capsys, "migrate", "--db", fresh) == Ran(0, f"already at version {LATEST}\n", "")

    older = tmp_path / "older.db"  # a file of the previous release: version 1
    with closing(sqlite3.connect(older, isolation_level=None)) as db:
        db.row_factory = sqlite3.Row  # as the store's connections
        version, name, step = MIGRATIONS[0]
        step(db)
        db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT)")
        db.execute("INSERT INTO schema_migrations VALUES (?, ?, 'then')", (version, name))
    assert LATEST > 1
    assert main(capsys, "migrate", "--db", older) == Ran(0, f"schema version 1 -> {LATEST}\n", "")
    assert raw_rows(older, "SELECT MAX(version) FROM schema_migrations") == [(LATEST,)]


def test_migrate_refuses_a_database_newer_than_the_code_and_so_does_every_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "newer.db"
    assert main(capsys, "migrate", "--db", db).code == 0
    with closing(sqlite3.connect(db, isolation_level=None)) as connection:
        connection.execute("INSERT INTO schema_migrations VALUES (99, 'from the future', 'later')")
    one_line_error(main(capsys, "migrate", "--db", db), "schema version 99", "newer than this code knows")
    one_line_error(main(capsys, "sessions", "--db", db), "schema version 99")
    result = cli("migrate", "--db", db)  # the console script: the same line, exit code 1
    assert result.returncode == 1
    assert result.stderr.startswith("agent-ledger: error: ") and "newer than this code knows" in result.stderr


def test_a_file_that_is_not_a_database_is_one_line_of_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("not a database\n" * 100)
    one_line_error(main(capsys, "migrate", "--db", junk), "not a database")
    one_line_error(main(capsys, "sessions", "--db", junk), "not a database")


def test_migrate_on_postgresql_and_only_migrate_and_serve_change_its_schema(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    one_line_error(main(capsys, "sessions", "--db", postgres_url), "schema version 0", "agent-ledger migrate")
    migrated = main(capsys, "migrate", "--db", postgres_url)
    assert migrated.code == 0, migrated
    assert migrated.out == f"schema version 0 -> {POSTGRES_LATEST}\n"
    assert main(capsys, "migrate", "--db", postgres_url).out == f"already at version {POSTGRES_LATEST}\n"
    assert main(capsys, "sessions", "--json", "--db", postgres_url).json() == {"sessions": [], "nextCursor": None}
    unprepared = postgres_url + ("&" if "?" in postgres_url else "?") + "prepared_statements=off"  # libpq never sees it
    assert main(capsys, "migrate", "--db", unprepared).out == f"already at version {POSTGRES_LATEST}\n"
    assert main(capsys, "sessions", "--json", "--db", unprepared).json() == {"sessions": [], "nextCursor": None}
    raw_rows(postgres_url, "INSERT INTO schema_migrations VALUES (?, ?, ?) RETURNING version", (99, "future", "x"))
    one_line_error(main(capsys, "migrate", "--db", postgres_url), "schema version 99", "newer than this code knows")


def test_migrate_without_psycopg_says_what_to_install(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from agent_ledger_sdk.cli import main\n"
        "sys.exit(main(['migrate', '--db', 'postgresql://ledger@127.0.0.1:1/ledger']))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("agent-ledger: error: a postgresql:// database needs psycopg 3")
    assert result.stderr.rstrip().endswith("pip install 'agent-ledger-sdk[postgres]'")
    assert result.stderr.count("\n") == 1


def test_migrate_says_when_it_cannot_reach_postgresql(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("psycopg")
    port = free_port()
    ran = main(capsys, "migrate", "--db", f"postgresql://ledger:s3cret@127.0.0.1:{port}/ledger")
    one_line_error(ran, "cannot connect")
    assert "s3cret" not in ran.err


# -- prune ------------------------------------------------------------------------------------------------


@dataclass
class History:
    old: str  # ended 60 days ago: events, a settled and a released reservation
    old_running: str  # started 60 days ago, still running
    running: set[str]  # every running session: old_running, and two started with an Idempotency-Key
    recent: str  # ended 10 days ago
    old_events: int


def history(db: Db) -> History:
    with service(db) as (ledger, clock):
        clock.now = clock.ago(days=60)
        ledger.set_budget("default", "archived", Decimal(100))
        old = start(ledger, "archived")
        reserved = ledger.reserve_request(
            "default", {"sessionId": old, "provider": "test", "model": "exact", "maxCostUsd": 1}, None
        ).body["id"]
        ledger.reserve_request(
            "default", {"sessionId": old, "provider": "test", "model": "exact", "maxCostUsd": 2}, None
        )
        log(ledger, old, [llm(0, reservationId=reserved), *tool(1)])
        retried = ledger.start_session_request("default", {"agentName": "retried"}, Idempotency("old-key", "fp"))
        ledger.end_session("default", old, "success", None)
        old_running = start(ledger, "forever")
        clock.now = clock.ago(days=10)
        recent = start(ledger, "unbudgeted")  # (a budgeted call would forget the old reservations on the way)
        log(ledger, recent, [llm(0)])
        ledger.end_session("default", recent, "error", "boom")
        clock.now = clock.ago(minutes=1)
        again = ledger.start_session_request("default", {"agentName": "retried"}, Idempotency("key-of-today", "fp"))
    return History(old, old_running, {old_running, retried.body["id"], again.body["id"]}, recent, old_events=3)


def session_ids(db: Db) -> set[str]:
    return {row[0] for row in raw_rows(db, "SELECT id FROM sessions")}


def test_prune_dry_run_counts_and_prune_deletes_old_ended_sessions_with_their_events_and_reservations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "ledger.db"
    past = history(db)
    everything = session_ids(db)
    assert count(db, "SELECT COUNT(*) FROM reservations WHERE session_id = ?", past.old) == 2
    assert count(db, "SELECT COUNT(*) FROM idempotency") == 2

    dry = main(capsys, "prune", "--older-than", "30d", "--dry-run", "--db", db)
    assert dry.code == 0, dry
    assert dry.out.startswith("Would delete 1 sessions that ended before ")
    assert f"({past.old_events} events, with their reservations) and 1 expired idempotency records." in dry.out
    assert "Nothing was deleted (--dry-run)." in dry.out
    assert session_ids(db) == everything  # nothing deleted: not the sessions, nor the idempotency records
    assert count(db, "SELECT COUNT(*) FROM idempotency") == 2

    pruned = main(capsys, "prune", "--older-than", "30d", "--db", db)
    assert pruned.code == 0, pruned
    cutoff = pruned.out.split("ended before ")[1].split(" ")[0]
    expected_cutoff = datetime.datetime.now(UTC) - datetime.timedelta(days=30)
    assert abs(datetime.datetime.fromisoformat(cutoff.replace("Z", "+00:00")) - expected_cutoff).total_seconds() < 60
    assert pruned.out == (
        f"Deleted 1 sessions that ended before {cutoff} (with their events and reservations) "
        "and 1 expired idempotency records.\n"
    )
    assert session_ids(db) == everything - {past.old}  # the running one, however old, is kept
    assert count(db, "SELECT COUNT(*) FROM events WHERE session_id = ?", past.old) == 0
    assert count(db, "SELECT COUNT(*) FROM reservations WHERE session_id = ?", past.old) == 0
    assert count(db, "SELECT COUNT(*) FROM idempotency") == 1  # today's key is still honoured

    assert "Would delete 1 sessions" in main(capsys, "prune", "--older-than", "1w", "--dry-run", "--db", db).out
    assert "Deleted 1 sessions" in main(capsys, "prune", "--older-than", "1w", "--db", db).out
    assert session_ids(db) == past.running
    assert "Deleted 0 sessions" in main(capsys, "prune", "--older-than", "90m", "--db", db).out
    assert "Deleted 0 sessions" in main(capsys, "prune", "--older-than", "12h", "--db", db).out


@pytest.mark.parametrize("duration", ["30", "30x", "d", "-3d", "1.5d", "30 days", "", "\uff13\uff10d"])
def test_prune_refuses_what_is_not_a_duration(
    duration: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one_line_error(
        main(capsys, "prune", f"--older-than={duration}", "--db", tmp_path / "l.db"),
        "--older-than takes a duration such as 30d, 12h or 2w",
    )


def test_prune_refuses_a_duration_longer_than_the_calendar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for duration in ("99999999999999w", "999999d"):
        ran = main(capsys, "prune", "--older-than", duration, "--db", tmp_path / "l.db")
        one_line_error(ran, f"--older-than {duration}")


def test_prune_on_postgresql(postgres_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    past = history(postgres_url)
    dry = main(capsys, "prune", "--older-than", "30d", "--dry-run", "--db", postgres_url)
    assert "Would delete 1 sessions" in dry.out and "and 1 expired idempotency records" in dry.out, dry
    assert past.old in session_ids(postgres_url)
    assert count(postgres_url, "SELECT COUNT(*) FROM idempotency") == 2
    pruned = main(capsys, "prune", "--older-than", "30d", "--db", postgres_url)
    assert "Deleted 1 sessions" in pruned.out and "and 1 expired idempotency records" in pruned.out, pruned
    assert session_ids(postgres_url) == {*past.running, past.recent}
    assert count(postgres_url, "SELECT COUNT(*) FROM events WHERE session_id = ?", past.old) == 0
    assert count(postgres_url, "SELECT COUNT(*) FROM reservations WHERE session_id = ?", past.old) == 0


# -- export -----------------------------------------------------------------------------------------------


@dataclass
class Recorded:
    first: str  # default workspace, agent "support", 2 days ago: an exact LLM call and a tool call
    second: str  # default workspace, agent "billing", 1 day ago: 2500 events (two pages and more)
    other: str  # workspace team-b, agent "support", now
    empty: str  # no events


def recorded(db: Db) -> Recorded:
    with service(db) as (ledger, clock):
        clock.now = clock.ago(days=2)
        first = start(ledger, "support", userId="alice", tags=["prod", "eu"], metadata={"plan": "pro"})
        log(
            ledger,
            first,
            [
                llm(0, cacheReadTokens=0, latencyMs=830, startedAt="2026-01-02T03:04:05.678Z", response="hi"),
                *tool(1),
            ],
        )
        ledger.end_session("default", first, "success", None)
        clock.now = clock.ago(days=1)
        second = start(ledger, "billing")
        events = [llm(0, tokens_in=3)] + [
            {"type": "log", "stepIndex": i, "message": f"line {i}"} for i in range(1, MAX_EVENTS_PAGE + 500)
        ]
        log(ledger, second, events)
        clock.now = clock.ago(seconds=1)
        other = start(ledger, "support", workspace="team-b")
        log(ledger, other, [llm(0, tokens_in=1000, cacheReadTokens=400, cacheWriteTokens=100)], workspace="team-b")
        empty = start(ledger, "idle")
    return Recorded(first, second, other, empty)


def lines_of(text: str) -> list[dict[str, Any]]:
    return [json.loads(line, parse_float=Decimal) for line in text.splitlines()]


def test_export_jsonl_is_each_session_with_every_event_and_exact_amounts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "ledger.db"
    made = recorded(db)
    ran = main(capsys, "export", "--format", "jsonl", "--db", db)
    assert ran.code == 0, ran.err
    assert ran.err == ""
    sessions = lines_of(ran.out)
    assert [s["id"] for s in sessions] == [made.empty, made.other, made.second, made.first]  # newest first
    with service(db) as (ledger, _):
        for exported in sessions:  # what GET /v1/sessions/{id} says, with every event
            expected = json.loads(money.dumps(ledger.session_with_all_events(exported["id"])), parse_float=Decimal)
            assert exported == expected
    by_id = {s["id"]: s for s in sessions}
    assert len(by_id[made.second]["events"]) == by_id[made.second]["eventCount"] == MAX_EVENTS_PAGE + 500
    assert [e["stepIndex"] for e in by_id[made.second]["events"]] == list(range(MAX_EVENTS_PAGE + 500))
    assert by_id[made.empty]["events"] == []
    first = by_id[made.first]
    assert first["userId"] == "alice" and first["tags"] == ["prod", "eu"] and first["metadata"] == {"plan": "pro"}
    assert first["events"][0]["costUsd"] == Decimal(ONE_TOKEN)
    assert f'"costUsd":{ONE_TOKEN},' in ran.out  # a JSON number with exactly its digits, never 1.23456789e-07
    assert by_id[made.second]["costUsd"] == Decimal("0.000000370370367")


def test_export_csv_is_a_row_per_event_with_its_session(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "ledger.db"
    made = recorded(db)
    ran = main(capsys, "export", "--format", "csv", "--db", db)
    assert ran.code == 0, ran.err
    reader = csv.reader(io.StringIO(ran.out))
    header = next(reader)
    assert tuple(header) == CSV_COLUMNS
    assert header[:8] == [
        "sessionId",
        "workspace",
        "agentName",
        "sessionStatus",
        "sessionStartedAt",
        "sessionEndedAt",
        "userId",
        "tags",
    ]
    rows = [dict(zip(header, row)) for row in reader]
    assert len(rows) == 3 + (MAX_EVENTS_PAGE + 500) + 1  # no row for the session without events
    first = [r for r in rows if r["sessionId"] == made.first]
    assert [r["type"] for r in first] == ["llm_call", "tool_call", "tool_result"]
    call, tool_call, tool_result = first
    assert call["agentName"] == "support" and call["workspace"] == "default"
    assert call["sessionStatus"] == "success" and call["sessionEndedAt"] >= call["sessionStartedAt"] != ""
    assert call["userId"] == "alice" and call["tags"] == "prod,eu"
    assert (call["provider"], call["model"], call["tokensIn"], call["tokensOut"]) == ("test", "exact", "1", "0")
    assert call["costUsd"] == ONE_TOKEN and call["costStatus"] == "priced"
    assert call["latencyMs"] == "830" and call["startedAt"] == "2026-01-02T03:04:05.678Z"
    assert call["receivedAt"].endswith("Z") and call["toolName"] == "" and call["cacheReadTokens"] == "0"
    assert tool_call["toolName"] == "lookup" and tool_call["latencyMs"] == "12.5" and tool_call["costUsd"] == "0"
    assert tool_result["toolName"] == "lookup" and tool_result["provider"] == ""
    (other,) = [r for r in rows if r["sessionId"] == made.other]
    assert (other["workspace"], other["tokensIn"], other["cacheReadTokens"], other["cacheWriteTokens"]) == (
        "team-b",
        "1000",
        "400",
        "100",
    )
    assert other["sessionEndedAt"] == "" and other["sessionStatus"] == "running" and other["userId"] == ""
    assert Decimal(other["costUsd"]) > 0 and "E" not in other["costUsd"]
    second = [r for r in rows if r["sessionId"] == made.second]
    assert [int(r["stepIndex"]) for r in second] == list(range(MAX_EVENTS_PAGE + 500))
    assert second[0]["costUsd"] == "0.000000370370367"


def test_export_filters_by_workspace_agent_and_start_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "ledger.db"
    made = recorded(db)

    def exported(*flags: str) -> list[str]:
        ran = main(capsys, "export", *flags, "--db", db)
        assert ran.code == 0, ran.err
        return [s["id"] for s in lines_of(ran.out)]

    assert exported("--workspace", "team-b") == [made.other]
    assert exported("--agent", "support") == [made.other, made.first]
    assert exported("--agent", "support", "--workspace", "default") == [made.first]
    now = datetime.datetime.now(UTC)
    day = datetime.timedelta(days=1)
    assert exported("--since", (now - day - datetime.timedelta(hours=1)).isoformat()) == [
        made.empty,
        made.other,
        made.second,
    ]
    assert exported("--until", (now - day - datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")) == [made.first]
    # An offset is converted to UTC; a date alone is its midnight (UTC).
    in_paris = (now - datetime.timedelta(hours=12)).astimezone(datetime.timezone(datetime.timedelta(hours=2)))
    assert exported("--since", in_paris.isoformat(timespec="seconds")) == [made.empty, made.other]
    tomorrow = (now + day).date().isoformat()
    assert exported("--since", tomorrow) == []
    assert exported("--until", tomorrow, "--format", "jsonl", "--agent", "billing") == [made.second]
    csv_rows = main(capsys, "export", "--format", "csv", "--workspace", "team-b", "--db", db).out.splitlines()
    assert len(csv_rows) == 2 and csv_rows[1].startswith(made.other)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--since", "yesterday"], "--since takes an ISO 8601 date or time"),
        (["--until", "2026-13-01"], "--until takes an ISO 8601 date or time"),
        (["--since", "2026-02-01", "--until", "2026-01-01"], "--since (2026-02-01) must be before --until"),
    ],
)
def test_export_refuses_bad_times(
    flags: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one_line_error(main(capsys, "export", *flags, "--db", tmp_path / "l.db"), expected)


def test_export_to_a_file_is_written_whole_and_private(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "ledger.db"
    made = recorded(db)
    for fmt in ("jsonl", "csv"):
        target = tmp_path / f"export.{fmt}"
        target.write_text("an older export\n")
        ran = main(capsys, "export", "--format", fmt, "--output", target, "--db", db)
        assert ran.code == 0, ran.err
        events = 3 + MAX_EVENTS_PAGE + 500 + 1
        assert ran.out == f"Exported 4 sessions ({events} events) to {target}.\n"
        assert target.read_text() == main(capsys, "export", "--format", fmt, "--db", db).out
        if os.name == "posix":
            assert target.stat().st_mode & 0o777 == 0o600
    assert made.first in (tmp_path / "export.jsonl").read_text()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no partial file left
    one_line_error(
        main(capsys, "export", "--output", tmp_path / "missing" / "x.jsonl", "--db", db), "there is no directory"
    )


def test_export_holds_a_session_at_a_time_not_the_database(tmp_path: Path) -> None:
    """The database is 10 MB of events; exporting it never holds more than a small part of that."""
    db = tmp_path / "big.db"
    payload = "x" * 4000
    with service(db) as (ledger, _):
        for _ in range(60):
            session = start(ledger, "bulk")
            log(ledger, session, [{"type": "log", "stepIndex": i, "message": payload} for i in range(40)])
    assert db.stat().st_size > 9_000_000
    for fmt in ("jsonl", "csv"):
        target = tmp_path / f"big.{fmt}"
        tracemalloc.start()
        try:
            assert cli_module.main(["export", "--format", fmt, "--output", str(target), "--db", str(db)]) == 0
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 3_000_000, f"{fmt}: {peak} bytes at the peak"
    assert len((tmp_path / "big.jsonl").read_text().splitlines()) == 60
    assert (tmp_path / "big.jsonl").stat().st_size > 9_000_000


def test_export_into_a_closed_pipe_stops_quietly(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    recorded(db)
    export = subprocess.Popen(
        [CLI, "export", "--format", "csv", "--db", str(db)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert export.stdout is not None and export.stderr is not None
    assert export.stdout.readline().startswith(b"sessionId,")
    export.stdout.close()  # as `| head -1` does
    assert export.wait(timeout=60) == 1
    assert export.stderr.read() == b""
    export.stderr.close()


def test_export_from_postgresql(postgres_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    made = recorded(postgres_url)
    sessions = lines_of(main(capsys, "export", "--db", postgres_url).out)
    assert [s["id"] for s in sessions] == [made.empty, made.other, made.second, made.first]
    assert sessions[-1]["events"][0]["costUsd"] == Decimal(ONE_TOKEN)
    assert len(sessions[2]["events"]) == MAX_EVENTS_PAGE + 500
    rows = list(csv.DictReader(io.StringIO(main(capsys, "export", "--format", "csv", "--db", postgres_url).out)))
    assert len(rows) == 3 + MAX_EVENTS_PAGE + 500 + 1
    assert next(r["costUsd"] for r in rows if r["sessionId"] == made.first) == ONE_TOKEN


# -- --json -----------------------------------------------------------------------------------------------


def test_read_commands_print_json_with_exact_amounts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "ledger.db"
    made = recorded(db)

    def as_json(*args: str) -> Any:
        ran = main(capsys, *args, "--json", "--db", db)
        assert ran.code == 0, ran.err
        assert ran.out.count("\n") == 1  # one line
        return ran.json()

    listed = as_json("sessions")
    assert [s["id"] for s in listed["sessions"]] == [made.empty, made.other, made.second, made.first]
    assert listed["nextCursor"] is None
    assert listed["sessions"][-1]["costUsd"] == Decimal(ONE_TOKEN) and "events" not in listed["sessions"][0]
    page = as_json("sessions", "--limit", "3")
    assert len(page["sessions"]) == 3 and page["nextCursor"] is not None
    rest = as_json("sessions", "--limit", "3", "--cursor", page["nextCursor"])
    assert [s["id"] for s in rest["sessions"]] == [made.first] and rest["nextCursor"] is None
    assert [s["id"] for s in as_json("sessions", "--agent", "support", "--workspace", "team-b")["sessions"]] == [
        made.other
    ]

    shown = as_json("show", made.second)
    assert shown["id"] == made.second and shown["childSessionIds"] == []
    assert len(shown["events"]) == MAX_EVENTS_PAGE + 500 and "nextEventsCursor" not in shown
    assert as_json("show", made.first)["events"][0]["costUsd"] == Decimal(ONE_TOKEN)

    assert main(capsys, "budget", "set", "support", "0.1", "--warn-at", "80", "--db", db).code == 0
    assert main(capsys, "budget", "set-workspace", "12.345678901234", "--workspace", "team-b", "--db", db).code == 0
    budgets = as_json("budget", "show")
    (support,) = [b for b in budgets["budgets"] if b["agentName"] == "support" and b["workspace"] == "default"]
    assert support["dailyLimitUsd"] == Decimal("0.1") and support["warnAtPercent"] == Decimal(80)
    assert support["monthlyLimitUsd"] is None and support["spentTodayUsd"] == 0
    (team_b,) = budgets["workspaceBudgets"]
    assert team_b["workspace"] == "team-b" and team_b["dailyLimitUsd"] == Decimal("12.345678901234")
    assert '"dailyLimitUsd":12.345678901234' in main(capsys, "budget", "show", "--json", "--db", db).out
    assert {b["workspace"] for b in as_json("budget", "show", "--workspace", "default")["budgets"]} == {"default"}

    created = main(capsys, "keys", "create", "--name", "ci", "--db", db)
    secret = created.out.strip().splitlines()[-1]
    keys = main(capsys, "keys", "list", "--json", "--db", db)
    assert (
        secret not in keys.out and secret[-24:] not in keys.out
    )  # nor its random part (its last "_" piece may be one letter)
    (key,) = keys.json()["keys"]
    assert key["name"] == "ci" and key["workspace"] == "default" and key["state"] == "active"
    assert key["revokedAt"] is None and key["createdAt"].endswith("Z") and key["id"] in secret
    assert main(capsys, "keys", "revoke", key["id"], "--db", db).code == 0
    (revoked,) = as_json("keys", "list")["keys"]
    assert revoked["state"] == "revoked" and revoked["revokedAt"] is not None

    assert as_json("prices", "list") == {
        "workspace": "default",
        "prices": [
            {
                "model": "test/exact",
                "inputPerMtok": EXACT_PRICE,
                "outputPerMtok": Decimal(2),
                "cacheReadPerMtok": None,
                "cacheWritePerMtok": None,
            }
        ],
    }
    assert '"inputPerMtok":0.123456789,' in main(capsys, "prices", "list", "--json", "--db", db).out
    assert as_json("prices", "list", "--workspace", "empty") == {"workspace": "empty", "prices": []}

    assert as_json("settings", "show") == {"workspace": "default", "allowUnpricedModels": False}
    assert main(capsys, "settings", "set", "allow-unpriced-models", "true", "--workspace", "b", "--db", db).code == 0
    assert as_json("settings", "show", "--workspace", "b") == {"workspace": "b", "allowUnpricedModels": True}


@pytest.mark.parametrize(
    "command", [["sessions"], ["show"], ["budget", "show"], ["keys", "list"], ["prices", "list"], ["settings", "show"]]
)
def test_json_is_documented_in_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli_module.main([*command, "--help"])
    assert exited.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "--json print JSON instead of the table" in shown
    assert "exact digits" in shown


def test_main_help_lists_the_operations(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_module.main(["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for command in ("migrate", "prune", "export", "--json", "sessions delete", "serve --workers N"):
        assert command in shown


def test_show_json_of_an_unknown_session_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ran = main(capsys, "show", "nope", "--json", "--db", tmp_path / "l.db")
    one_line_error(ran, "Session 'nope' not found")
    assert ran.out == ""


# -- sessions delete ----------------------------------------------------------------------------------------


def test_sessions_delete_forgets_a_session_and_its_events_and_spend_stays_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "ledger.db"
    made = recorded(db)
    with service(db) as (ledger, _):
        ledger.set_budget("default", "support", Decimal(1))
        spent_before = ledger.budgets("default")[0]["spentThisMonthUsd"]
    assert spent_before > 0

    one_line_error(main(capsys, "sessions", "delete", made.first, "--workspace", "team-b", "--db", db), "not found")
    assert made.first in session_ids(db)
    deleted = main(capsys, "sessions", "delete", made.first, "--db", db)
    assert deleted.code == 0, deleted.err
    assert deleted.out.startswith(f"Deleted session {made.first} (support, success, 3 events)")
    assert made.first not in session_ids(db)
    assert count(db, "SELECT COUNT(*) FROM events WHERE session_id = ?", made.first) == 0
    with service(db) as (ledger, _):
        assert ledger.budgets("default")[0]["spentThisMonthUsd"] == spent_before
    one_line_error(main(capsys, "sessions", "delete", made.first, "--db", db), f"Session {made.first!r} not found")
    one_line_error(main(capsys, "show", made.first, "--db", db), "not found")

    # --db and --workspace before `delete` count as well as after it
    assert main(capsys, "sessions", "--db", db, "--workspace", "team-b", "delete", made.other).code == 0
    assert session_ids(db) == {made.second, made.empty}
    assert main(capsys, "sessions", "--db", db).out.count("\n") == 4  # the listing still works: 2 rows
    result = cli("sessions", "delete", made.second, "--db", db)  # the console script
    assert result.returncode == 0 and result.stdout.startswith(f"Deleted session {made.second}")


def test_sessions_delete_on_postgresql(postgres_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    made = recorded(postgres_url)
    assert main(capsys, "sessions", "delete", made.second, "--db", postgres_url).code == 0
    assert made.second not in session_ids(postgres_url)
    assert count(postgres_url, "SELECT COUNT(*) FROM events WHERE session_id = ?", made.second) == 0
    one_line_error(main(capsys, "sessions", "delete", made.second, "--db", postgres_url), "not found")


# -- serve --workers ---------------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def worker_pids(pid: int) -> set[int]:
    """The server's worker processes (multiprocessing's resource tracker is not one)."""
    return {child for child in children_of(pid) if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()}


def owner_of_connection(server_port: int, client_port: int, pids: set[int]) -> Optional[int]:
    """Which of ``pids`` holds the server's end of the TCP connection from ``client_port`` (from /proc)."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                local, remote = (int(f.rsplit(":", 1)[1], 16) for f in fields[1:3])
                if local == server_port and remote == client_port and fields[9] != "0":
                    inode = fields[9]
    if inode is None:
        return None
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


@dataclass
class Served:
    process: subprocess.Popen[str]
    url: str
    port: int
    lines: list[str]

    def read_until(self, needle: str, timeout: float = 60) -> str:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.lines.append(line.rstrip("\n"))
            if needle in line:
                return line
        raise AssertionError(f"no {needle!r} in {self.lines}")


@contextmanager
def serving(db: Db, *flags: str) -> Iterator[Served]:
    process = subprocess.Popen(
        [CLI, "serve", "--port", "0", "--db", str(db), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal's job is (Ctrl+C signals it all)
    )
    served = Served(process, "", 0, [])
    try:
        line = served.read_until("listening on")
        served.url = line.split("listening on ")[1].split()[0]
        served.port = int(served.url.rsplit(":", 1)[1])
        yield served
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


def post(served: Served, path: str, body: dict[str, Any], key: str) -> tuple[int, dict[str, Any], int]:
    """POST on a new connection: status, JSON body, and the pid of the process that answered."""
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    try:
        connection.request("POST", path, json.dumps(body), {"x-api-key": key, "content-type": "application/json"})
        response = connection.getresponse()
        answer = json.loads(response.read(), parse_float=Decimal)
        assert connection.sock is not None
        workers = worker_pids(served.process.pid)
        owner = owner_of_connection(served.port, connection.sock.getsockname()[1], workers)
        assert owner is not None, "no worker process holds the connection"
        return response.status, answer, owner
    finally:
        connection.close()


def answer_50_requests_from_both_workers(served: Served, key: str) -> set[int]:
    workers = worker_pids(served.process.pid)
    assert len(workers) == 2, workers
    assert served.process.pid not in workers
    answered_by: list[int] = []
    for i in range(50):
        status, body, pid = post(served, "/v1/sessions", {"agentName": f"worker-test-{i}"}, key)
        assert status == 201, body
        answered_by.append(pid)
    # Which process accepts a connection is the kernel's choice; both do, given a few more tries.
    extra = 0
    while len(set(answered_by)) < 2 and extra < 500:
        status, body, pid = post(served, "/v1/sessions", {"agentName": "worker-test-more"}, key)
        assert status == 201, body
        answered_by.append(pid)
        extra += 1
    assert set(answered_by) == workers
    return workers


def stopped_cleanly(served: Served, workers: set[int], how: int, group: bool) -> None:
    (os.killpg if group else os.kill)(served.process.pid, how)
    assert served.process.wait(timeout=60) == 0
    assert served.process.stdout is not None
    rest = served.process.stdout.read()
    for pid in workers:
        assert f"Finished server process [{pid}]" in rest, rest
    deadline = time.monotonic() + 10
    while any(is_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(is_running(pid) for pid in workers)
    assert "Traceback" not in rest, rest


needs_proc = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the process tree in /proc")


@needs_proc
def test_serve_with_two_workers_answers_from_both_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    db = tmp_path / "served.db"
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps(FLAT_PRICES))
    with serving(db, "--workers", "2", "--prices", str(prices)) as served:
        assert f"Database: {db}" in served.lines
        assert any(line.startswith("Wrote a new local key in") for line in served.lines)  # once, by the parent
        assert sum("local key" in line for line in served.lines) == 1
        assert local_url_path().read_text().strip() == served.url
        key = local_key_path().read_text().strip()
        workers = answer_50_requests_from_both_workers(served, key)
        assert all(str(pid) in served.lines[-1] for pid in workers)  # the listening line names them
        # --prices reaches the workers: 1000 tokens at $1 per million is $0.001, exactly
        _, session, _ = post(served, "/v1/sessions", {"agentName": "priced"}, key)
        event = {
            "type": "llm_call",
            "stepIndex": 0,
            "provider": "test",
            "model": "flat",
            "tokensIn": 600,
            "tokensOut": 400,
        }
        status, body, _ = post(served, "/v1/events", {"sessionId": session["id"], "events": [event]}, key)
        assert status == 202 and body["costUsd"] == Decimal("0.001"), body
        stopped_cleanly(served, workers, signal.SIGTERM, group=False)
    listed = cli("sessions", "--json", "--limit", "1000", "--db", db)
    names = [s["agentName"] for s in json.loads(listed.stdout)["sessions"]]
    assert sum(name.startswith("worker-test-") for name in names) >= 50


@needs_proc
def test_serve_workers_replace_a_dead_worker_and_stop_on_ctrl_c(tmp_path: Path) -> None:
    db = tmp_path / "served.db"
    with serving(db, "--workers", "2") as served:
        key = local_key_path().read_text().strip()
        workers = worker_pids(served.process.pid)
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        served.read_until(f"Worker process {victim} exited")
        deadline = time.monotonic() + 60
        while (len(worker_pids(served.process.pid)) < 2 or victim in worker_pids(served.process.pid)) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.05)
        replaced = worker_pids(served.process.pid)
        assert len(replaced) == 2 and victim not in replaced
        answered = answer_50_requests_from_both_workers(served, key)  # the new one serves too
        assert answered == replaced
        stopped_cleanly(served, replaced, signal.SIGINT, group=True)  # Ctrl+C: the whole process group


@needs_proc
def test_serve_with_two_workers_on_postgresql(postgres_url: str) -> None:
    with serving(postgres_url, "--workers", "2") as served:  # a fresh database: serve migrates it, once
        assert any(line.startswith("Database: postgresql://") for line in served.lines)
        key = local_key_path().read_text().strip()
        workers = answer_50_requests_from_both_workers(served, key)
        stopped_cleanly(served, workers, signal.SIGTERM, group=False)
    assert count(postgres_url, "SELECT COUNT(*) FROM sessions WHERE agent_name LIKE ?", "worker-test-%") >= 50


def test_serve_workers_stop_when_a_worker_cannot_start(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A worker that fails before it serves stops them all: the next one would fail the same way."""
    from agent_ledger_sdk.local.server import serve_workers

    said: list[str] = []
    (tmp_path / "a-file").write_text("")
    unopenable = tmp_path / "a-file" / "ledger.db"  # its directory is a file
    began = time.monotonic()
    with pytest.raises(RuntimeError, match=r"exited \(code 3\) before it could serve"):
        serve_workers(unopenable, None, "127.0.0.1", 0, 2, announce=said.append)
    assert time.monotonic() - began < 60
    assert not any("listening" in line for line in said)
    assert "agent-ledger: error: server worker" in capfd.readouterr().err


def test_serve_refuses_a_number_of_workers_below_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one_line_error(main(capsys, "serve", "--workers", "0", "--db", tmp_path / "l.db"), "--workers takes")
    one_line_error(main(capsys, "serve", "--workers", "2", "--db", ":memory:"), "a database its processes share")


@needs_proc
def test_serve_with_one_process_uses_its_prices_file(tmp_path: Path) -> None:
    db = tmp_path / "one.db"
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps(FLAT_PRICES))
    with serving(db, "--prices", str(prices)) as served:
        key = local_key_path().read_text().strip()
        headers = {"x-api-key": key, "content-type": "application/json"}
        for _ in range(200):  # the port is bound before uvicorn accepts: wait for it
            connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
            try:
                connection.request("POST", "/v1/sessions", json.dumps({"agentName": "one"}), headers)
                break
            except ConnectionError:
                connection.close()
                time.sleep(0.05)
        session = json.loads(connection.getresponse().read())["id"]
        event = {"type": "llm_call", "stepIndex": 0, "provider": "test", "model": "flat", "tokensIn": 7, "tokensOut": 3}
        connection.request("POST", "/v1/events", json.dumps({"sessionId": session, "events": [event]}), headers)
        assert json.loads(connection.getresponse().read(), parse_float=Decimal)["costUsd"] == Decimal("0.00001")
        connection.close()


def scrape(served: Served) -> tuple[str, int]:
    """GET /metrics on a new connection: the exposition, and the pid of the worker that answered."""
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        text = response.read().decode()
        assert response.status == 200, text
        assert connection.sock is not None
        owner = owner_of_connection(served.port, connection.sock.getsockname()[1], worker_pids(served.process.pid))
        assert owner is not None, "no worker process holds the connection"
        return text, owner
    finally:
        connection.close()


def sample(text: str, line_start: str) -> float:
    return float(next(line for line in text.splitlines() if line.startswith(line_start)).rsplit(" ", 1)[1])


@needs_proc
def test_metrics_of_a_server_of_two_workers_count_both_whichever_answers_the_scrape(tmp_path: Path) -> None:
    with serving(tmp_path / "served.db", "--workers", "2") as served:
        key = local_key_path().read_text().strip()
        started: dict[int, int] = {}  # sessions started, by the worker that answered
        while len(started) < 2 or sum(started.values()) < 20:
            status, body, pid = post(served, "/v1/sessions", {"agentName": "metrics-test"}, key)
            assert status == 201, body
            started[pid] = started.get(pid, 0) + 1
            assert sum(started.values()) < 500, started
        total = sum(started.values())
        counted = 'agent_ledger_http_requests_total{method="POST",route="/v1/sessions",status="201"}'
        # Each worker shares its counts every half second: within a few seconds, any scrape shows them all.
        answered: dict[int, list[float]] = {}
        deadline = time.monotonic() + 30
        while (len(answered) < 2 or any(values[-1] != total for values in answered.values())) and (
            time.monotonic() < deadline
        ):
            text, pid = scrape(served)
            answered.setdefault(pid, []).append(sample(text, counted))
            assert sample(text, "agent_ledger_sessions_started_total") == sample(text, counted)
            time.sleep(0.05)
        assert set(answered) == set(started), answered
        assert all(values[-1] == total for values in answered.values()), (started, answered)
        assert all(value <= total for values in answered.values() for value in values)
