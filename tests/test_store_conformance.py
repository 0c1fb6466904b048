"""One conformance suite for the ledger's storage: every test runs on SQLite and on a real PostgreSQL.

The HTTP tests of the ledger (``test_local_*.py``) run on both backends too; these test
what only the service over a store can show: schema versions and migrations, exact
budgets under concurrency, paginated reads, retention and idempotency lifetimes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import closing
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Optional, Union

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("starlette", reason="the local ledger needs the server extra")

from agent_ledger_sdk.local.budgets import iso
from agent_ledger_sdk.local.pricing import Rates
from agent_ledger_sdk.local.records import (
    BadInput,
    BudgetExceeded,
    Conflict,
    Idempotency,
    IdempotencyMismatch,
    NotFound,
    Outcome,
    PricedEvent,
    ReservationRequest,
    SessionContext,
    SessionQuery,
)
from agent_ledger_sdk.local.schema import create_or_upgrade
from agent_ledger_sdk.local.service import MAX_EVENTS_PAGE, LedgerService
from agent_ledger_sdk.local.store import MigrationError, SQLiteStore, Store, open_store
from agent_ledger_sdk.local.store.sql import (
    KEY_COLUMNS,
    RESERVATION_COLUMNS,
    SESSION_COLUMNS,
    UNNUMBERED,
    stored_event,
)

from .ledger_fixtures import BACKENDS, database, raw_rows

pytestmark = pytest.mark.integration

Clock = Callable[[], datetime.datetime]


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest) -> Iterator[Union[Path, str]]:
    """A new, empty database of each backend."""
    with database(request, request.param) as found:
        yield found


@pytest.fixture
def now() -> list[datetime.datetime]:
    return [datetime.datetime(2026, 6, 1, 12, tzinfo=datetime.timezone.utc)]


@pytest.fixture
def service(db: Union[Path, str], now: list[datetime.datetime]) -> Iterator[LedgerService]:
    with LedgerService(open_store(db), clock=lambda: now[0]) as opened:
        yield opened


def call(cost: str, step: int = 0, reservation: str | None = None) -> PricedEvent:
    event = PricedEvent({"type": "llm_call", "stepIndex": step}, "llm_call", step, cost_usd=Decimal(cost))
    event.reservation_id = reservation
    return event


# -- schema ------------------------------------------------------------------------------------


def test_a_new_database_is_at_the_latest_version_and_migrating_again_changes_nothing(db: Union[Path, str]) -> None:
    with open_store(db) as store:
        before, after = store.migrate()
        assert before == after == store.schema_version() >= 2
    with open_store(db, migrate=False) as store:  # opening an up-to-date database needs no migration
        assert store.schema_version() == after


def test_a_database_newer_than_the_code_is_refused_with_what_to_do(db: Union[Path, str]) -> None:
    with open_store(db) as store:
        version = store.schema_version()
        with store.write(None) as tx:
            tx._run("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, 'future', 'x')", (99,))
    with pytest.raises(MigrationError, match="newer than this code knows.*Upgrade agent-ledger-sdk"):
        open_store(db)
    assert version < 99


def test_without_migrating_a_postgresql_schema_behind_the_code_is_refused(postgres_url: str) -> None:
    with pytest.raises(MigrationError, match="schema version 0; this code needs .*agent-ledger migrate"):
        open_store(postgres_url, migrate=False)
    with open_store(postgres_url) as store:  # serve and migrate do migrate
        assert store.schema_version() >= 2


def test_replicas_starting_together_migrate_once(postgres_url: str) -> None:
    errors: list[BaseException] = []
    versions: list[tuple[int, int]] = []

    def start() -> None:
        try:
            with open_store(postgres_url) as store:
                versions.append(store.migrate())
        except BaseException as exc:  # pragma: no cover - the assertion below shows it
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len({after for _, after in versions}) == 1
    rows = raw_rows(postgres_url, "SELECT version FROM schema_migrations ORDER BY version")
    from agent_ledger_sdk.local.store.postgres import MIGRATIONS

    # Each migration applied once (a version may be missing from the list: it is another branch's, not yet merged).
    assert [r[0] for r in rows] == [version for version, _, _ in MIGRATIONS]
    assert versions[0][1] == MIGRATIONS[-1][0]


def test_a_sqlite_ledger_made_before_versioned_migrations_upgrades_in_place_losing_no_row(tmp_path: Path) -> None:
    """A file as the previous release left it (its tables, no schema_migrations) keeps every row."""
    path = tmp_path / "previous.db"
    with closing(sqlite3.connect(path)) as db:
        db.row_factory = sqlite3.Row
        db.execute("BEGIN")
        create_or_upgrade(db)
        db.execute(
            "INSERT INTO sessions (id, workspace, agent_name, status, started_at, cost) VALUES"
            " ('s', 'default', 'bot', 'running', '2026-01-01T00:00:00Z', '0.3')"
        )
        rows = [(step, json.dumps({"type": "tool_call", "stepIndex": step})) for step in (2, None, 0, 1)] * 300
        db.executemany(
            "INSERT INTO events (session_id, step_index, type, payload, received_at) VALUES ('s', ?, 'tool_call', ?, 'x')",
            rows,
        )
        db.execute("COMMIT")
    with LedgerService(SQLiteStore(path)) as service:
        assert service.store.schema_version() >= 2
        session = service.session_with_all_events("s")
    assert session["costUsd"] == Decimal("0.3")
    steps = [e.get("stepIndex") for e in session["events"]]
    assert len(steps) == 1200
    assert steps == [0] * 300 + [1] * 300 + [2] * 300 + [None] * 300  # step order, unnumbered last
    positions = raw_rows(path, "SELECT DISTINCT position FROM events ORDER BY position")
    assert [p[0] for p in positions] == [0, 1, 2, UNNUMBERED]


# -- budgets are exact under concurrency ------------------------------------------------------------


def test_32_threads_on_one_budget_never_over_grant(service: LedgerService) -> None:
    service.set_budget("ws", "agent", Decimal("0.0105"))
    session = service.start_session("ws", "agent").body["id"]
    granted: list[str] = []
    refused: list[BudgetExceeded] = []
    barrier = threading.Barrier(32)
    request = ReservationRequest(session, "test", "flat", Decimal("0.001"))

    def work() -> None:
        barrier.wait()
        for _ in range(3):
            try:
                granted.append(service.reserve("ws", request).body["id"])
            except BudgetExceeded as exc:
                refused.append(exc)

    threads = [threading.Thread(target=work) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (len(granted), len(refused)) == (10, 86)
    assert service.budgets("ws")[0]["reservedUsd"] == Decimal("0.010")
    # Settle every grant at its reserved cost: the spend is the limit's worth, never more.
    for step, reservation in enumerate(granted):
        service.append_events("ws", session, [call("0.001", step, reservation)])
    (budget,) = service.budgets("ws")
    assert (budget["spentTodayUsd"], budget["reservedUsd"]) == (Decimal("0.010"), Decimal("0"))


def test_spend_adds_up_exactly_across_threads_and_store_instances(
    db: Union[Path, str], now: list[datetime.datetime]
) -> None:
    """Each batch adds its cost to three spend totals in one statement: from two stores (two processes, as far as
    the database knows) and many threads at once, with and without a budget to check, no addition is lost and
    none is rounded (SQLite adds exact text in Python, PostgreSQL NUMERIC in the statement)."""
    with (
        LedgerService(open_store(db), clock=lambda: now[0]) as first,
        LedgerService(open_store(db), clock=lambda: now[0]) as second,
    ):
        first.set_budget("ws", "budgeted", Decimal("1000"))
        first.set_workspace_budget("ws", Decimal("1000"))
        sessions = {agent: first.start_session("ws", agent).body["id"] for agent in ("budgeted", "free")}
        barrier = threading.Barrier(8)
        errors: list[BaseException] = []

        def work(number: int) -> None:
            service = (first, second)[number % 2]
            agent = ("budgeted", "free")[number // 4]
            barrier.wait()
            try:
                for step in range(10):
                    service.append_events(
                        "ws", sessions[agent], [call("0.000000000000000001", step), call("0.1", step)]
                    )
            except BaseException as exc:  # pragma: no cover - the assertion below shows it
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        each = Decimal("0.100000000000000001") * 40  # 4 threads of an agent, 10 batches each
        budgets = {b["agentName"]: b for b in second.budgets("ws")}
        assert budgets["budgeted"]["spentTodayUsd"] == budgets["budgeted"]["spentThisMonthUsd"] == each
        assert budgets["free"]["spentTodayUsd"] == each
        (workspace,) = second.workspace_budgets("ws")
        assert workspace["spentTodayUsd"] == 2 * each
        # A new day starts new daily totals; the month's goes on.
        now[0] += datetime.timedelta(days=1)
        first.append_events("ws", sessions["budgeted"], [call("0.25")])
        budgets = {b["agentName"]: b for b in first.budgets("ws")}
        assert budgets["budgeted"]["spentTodayUsd"] == Decimal("0.25")
        assert budgets["budgeted"]["spentThisMonthUsd"] == each + Decimal("0.25")


def test_spend_added_without_reading_it_first_adds_to_what_is_stored(db: Union[Path, str]) -> None:
    with open_store(db) as store:
        periods = [("agent-daily", "a", "2026-06-01"), ("agent-monthly", "a", "2026-06"), ("workspace-daily", "", "d")]
        for cost in ("0.1", "0.000000000000000002"):
            with store.write("ws") as tx:
                tx.add_spends("ws", periods, Decimal(cost))
                tx.add_spends("ws", periods[:1], Decimal(cost))  # twice in one transaction
        with store.read() as tx:
            daily = tx.spend_by_subject("ws", "agent-daily", "2026-06-01")
            monthly = tx.spend_by_subject("ws", "agent-monthly", "2026-06")
        assert daily == {("ws", "a"): Decimal("0.200000000000000004")}
        assert monthly == {("ws", "a"): Decimal("0.100000000000000002")}


def test_a_priced_call_on_sqlite_writes_its_spend_in_one_statement_reading_it_once(tmp_path: Path) -> None:
    """The spend totals that the budget check read are the ones added to (a SQLite write holds the file):
    a batch reads them once and writes all three in one statement, whether or not they exist yet."""
    with LedgerService(SQLiteStore(tmp_path / "ledger.db")) as service:
        service.set_budget("ws", "agent", Decimal("10"))
        session = service.start_session("ws", "agent").body["id"]
        assert isinstance(service.store, SQLiteStore)
        for cost in ("0.1", "0.000000000000000001"):
            statements: list[str] = []
            service.store._writer.set_trace_callback(statements.append)
            try:
                service.append_events("ws", session, [call(cost)])
            finally:
                service.store._writer.set_trace_callback(None)
            assert sum("FROM spend" in s for s in statements) == 1  # budget_state's read
            assert sum("INTO spend" in s for s in statements) == 1
        (budget,) = service.budgets("ws")
        assert budget["spentTodayUsd"] == budget["spentThisMonthUsd"] == Decimal("0.100000000000000001")


def test_one_idempotency_key_from_many_threads_is_applied_once(service: LedgerService) -> None:
    session = service.start_session("ws", "agent").body["id"]
    key = Idempotency("retry-1", "fingerprint")
    barrier = threading.Barrier(16)
    replies: list[Any] = []

    def send() -> None:
        barrier.wait()
        replies.append(service.append_events("ws", session, [call("0.5")], key))

    threads = [threading.Thread(target=send) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(not reply.replayed for reply in replies) == 1
    stored = service.get_session(session, "ws")
    assert (stored["eventCount"], stored["costUsd"]) == (1, Decimal("0.5"))
    with pytest.raises(IdempotencyMismatch):
        service.append_events("ws", session, [call("0.5")], Idempotency("retry-1", "another request"))


def test_an_idempotency_key_is_honoured_for_24_hours_then_forgotten(
    service: LedgerService, now: list[datetime.datetime]
) -> None:
    first = service.start_session("ws", "agent", Idempotency("k", "f"))
    now[0] += datetime.timedelta(hours=23, minutes=59)
    assert service.start_session("ws", "agent", Idempotency("k", "f")).body["id"] == first.body["id"]
    now[0] += datetime.timedelta(minutes=2)
    again = service.start_session("ws", "agent", Idempotency("k", "f"))
    assert not again.replayed and again.body["id"] != first.body["id"]  # a new request, not a replay
    now[0] += datetime.timedelta(hours=25)
    assert service.prune(datetime.timedelta(days=30))["idempotencyRecords"] == 1


# -- prices are kept, never stale ------------------------------------------------------------------


def _llm_call(step: int) -> dict[str, Any]:
    return {
        "type": "llm_call",
        "stepIndex": step,
        "provider": "test",
        "model": "flat",
        "tokensIn": 1000000,
        "tokensOut": 0,
    }


def test_a_price_changed_by_another_store_applies_to_the_very_next_request(
    db: Union[Path, str], now: list[datetime.datetime]
) -> None:
    """A server keeps a workspace's prices between requests, and each request's API key read says whether they
    changed: a price set, changed or removed elsewhere (the CLI, another replica) prices the next request."""
    with (
        LedgerService(open_store(db), clock=lambda: now[0]) as server,
        LedgerService(open_store(db), clock=lambda: now[0]) as cli,
    ):
        secret = cli.create_key("k", "ws").secret
        cli.set_budget("ws", "agent", Decimal("1000"))
        session = server.start_session("ws", "agent").body["id"]

        def log(step: int) -> Decimal:
            workspace = server.authenticate(secret)
            assert workspace == "ws"
            reply = server.log_events_request(workspace, {"sessionId": session, "events": [_llm_call(step)]}, None)
            return Decimal(reply.body["costUsd"])

        def reserve() -> Decimal:
            workspace = server.authenticate(secret)
            assert workspace is not None
            body = {
                "sessionId": session,
                "provider": "test",
                "model": "flat",
                "estimate": {"tokensIn": 1000000, "tokensOut": 0},
            }
            reply = server.reserve_request(workspace, body, None)
            server.release(workspace, reply.body["id"])
            return Decimal(reply.body["reservedUsd"])

        cli.set_price("ws", "test/flat", Rates(Decimal(2), Decimal(0), None, None))
        assert (log(0), log(1), reserve()) == (Decimal(2), Decimal(2), Decimal(2))
        for step, rate in enumerate(("3", "0.000001", "3")):  # even back to an earlier price: a new version
            cli.set_price("ws", "test/flat", Rates(Decimal(rate), Decimal(0), None, None))
            assert log(10 + step) == Decimal(rate)
            assert reserve() == Decimal(rate)
        cli.set_price("ws", "other/model", Rates(Decimal(5), Decimal(5), None, None))
        assert log(20) == Decimal(3)
        assert cli.remove_price("ws", "test/flat")
        assert server.prices(server.authenticate(secret) or "") == {
            "other/model": Rates(Decimal(5), Decimal(5), None, None)
        }
        body = {"sessionId": session, "events": [_llm_call(30)]}
        with pytest.raises(Exception, match="price"):  # unpriced now, under a budget: refused
            server.log_events_request(server.authenticate(secret) or "", body, None)
        # A name that is not an authenticated request's reads the prices every time.
        cli.set_price("ws", "test/flat", Rates(Decimal(7), Decimal(0), None, None))
        assert server.prices("ws")["test/flat"].input_per_mtok == Decimal(7)


def test_kept_prices_are_not_read_again_until_they_change(tmp_path: Path) -> None:
    with LedgerService(SQLiteStore(tmp_path / "ledger.db")) as service:
        secret = service.create_key("k", "ws").secret
        service.set_price("ws", "test/flat", Rates(Decimal(2), Decimal(0), None, None))
        session = service.start_session("ws", "agent").body["id"]
        assert isinstance(service.store, SQLiteStore)
        reads: list[int] = []
        for step in range(4):
            if step == 2:
                service.set_price("ws", "test/flat", Rates(Decimal(4), Decimal(0), None, None))
            statements: list[str] = []
            for connection in (service.store._writer, service.store._reader()):
                connection.set_trace_callback(statements.append)
            try:
                workspace = service.authenticate(secret)
                assert workspace is not None
                service.log_events_request(workspace, {"sessionId": session, "events": [_llm_call(step)]}, None)
            finally:
                for connection in (service.store._writer, service.store._reader()):
                    connection.set_trace_callback(None)
            reads.append(sum("FROM prices" in s for s in statements))
        assert reads == [1, 0, 1, 0]
        assert service.get_session(session, "ws")["costUsd"] == Decimal(12)


# -- reads ----------------------------------------------------------------------------------------


def test_a_session_reads_a_page_at_a_time_in_step_order(service: LedgerService) -> None:
    session = service.start_session("ws", "agent").body["id"]
    steps: list[int | None] = [*range(2 * MAX_EVENTS_PAGE + 5, -1, -1), None, None]
    for start in range(0, len(steps), 1000):
        batch = [
            PricedEvent({"type": "log", **({} if step is None else {"stepIndex": step})}, "log", step)
            for step in steps[start : start + 1000]
        ]
        service.append_events("ws", session, batch)
    first = service.get_session(session, "ws", events_limit=100)
    assert len(first["events"]) == 100 and first["nextEventsCursor"] is not None
    assert first["eventCount"] == len(steps)
    seen = list(service.iter_events(session, "ws"))
    assert [e.get("stepIndex") for e in seen] == [*sorted(s for s in steps if s is not None), None, None]
    with pytest.raises(Exception, match="eventsCursor"):
        service.get_session(session, "ws", events_cursor="not-a-cursor")


def test_sessions_list_newest_first_and_filter(service: LedgerService) -> None:
    ids = [service.start_session("ws", f"agent-{i % 2}").body["id"] for i in range(7)]
    page = service.list_sessions(SessionQuery(workspace="ws", limit=3))
    assert [s["id"] for s in page["sessions"]] == ids[::-1][:3]
    rest = list(service.iter_sessions(SessionQuery(workspace="ws", agent_name="agent-0")))
    assert [s["id"] for s in rest] == ids[::-2]


# -- retention --------------------------------------------------------------------------------------


def test_deleting_a_session_forgets_its_events_but_not_what_it_spent(service: LedgerService) -> None:
    service.set_budget("ws", "agent", Decimal("1"))
    session = service.start_session("ws", "agent").body["id"]
    service.append_events("ws", session, [call("0.25")])
    service.delete_session("ws", session)
    with pytest.raises(NotFound):
        service.get_session(session, "ws")
    with pytest.raises(NotFound):
        service.append_events("ws", session, [call("0.25")])
    assert service.budgets("ws")[0]["spentTodayUsd"] == Decimal("0.25")  # spent is spent
    with pytest.raises(NotFound):
        service.delete_session("other-workspace", service.start_session("ws", "agent").body["id"])


def test_prune_forgets_sessions_that_ended_long_ago_and_keeps_running_ones(
    service: LedgerService, now: list[datetime.datetime]
) -> None:
    old = [service.start_session("ws", "agent").body["id"] for _ in range(3)]
    for session in old[:2]:
        service.append_events("ws", session, [PricedEvent({"type": "log"}, "log", 0)])
        service.end_session("ws", session, "success", None)
    now[0] += datetime.timedelta(days=31)
    recent = service.start_session("ws", "agent").body["id"]
    service.end_session("ws", recent, "success", None)
    assert service.prune(datetime.timedelta(days=30), batch=1)["sessions"] == 2
    kept = {s["id"] for s in service.iter_sessions(SessionQuery(workspace="ws"))}
    assert kept == {old[2], recent}  # the running one and the recent one
    with pytest.raises(Conflict):
        service.end_session("ws", recent, "success", None)


def test_the_store_answers_readiness_and_closes(db: Union[Path, str]) -> None:
    store: Store = open_store(db)
    store.ping()
    store.close()
    store.close()  # twice is harmless


def test_forgetting_expired_reservations_reads_only_the_expired_ones(db: Union[Path, str]) -> None:
    """Run inside every budgeted write: it must not read the workspace's whole day of reservations."""
    open_store(db).close()
    statement = "DELETE FROM reservations WHERE workspace = ? AND expires_at <= ?"
    if isinstance(db, Path):
        plan = raw_rows(db, f"EXPLAIN QUERY PLAN {statement}", ("ws", "2026"))
    else:
        plan = raw_rows(db, f"EXPLAIN {statement}", ("ws", "2026"), setup="SET enable_seqscan = off")
    assert any("reservations_by_workspace_expiry" in str(row) for row in plan), plan


def test_a_call_refused_before_it_ran_is_kept_for_the_budgets_page(service: LedgerService) -> None:
    service.set_budget("ws", "agent", Decimal("0.001"))
    session = service.start_session("ws", "agent").body["id"]
    with pytest.raises(BudgetExceeded):
        service.reserve("ws", ReservationRequest(session, "openai", "gpt-4o", Decimal("0.5")))
    service.append_events("ws", session, [call("0.002")])  # ran unreserved, over the budget: recorded
    found = service.recent_refusals("ws")
    (refused,) = [r for r in found if r["refusedBeforeRun"]]
    (over,) = [r for r in found if not r["refusedBeforeRun"]]
    assert over["reason"] == "over_budget"
    assert over["costUsd"] == Decimal("0.002")
    assert refused["refusedBeforeRun"] is True
    assert (refused["reason"], refused["budget"], refused["costUsd"]) == (
        "budget_exceeded",
        "agent-daily",
        Decimal("0.5"),
    )
    assert (refused["agentName"], refused["model"], refused["sessionId"]) == ("agent", "gpt-4o", session)
    assert "would be exceeded" in refused["message"]
    assert service.recent_refusals("other-workspace") == []
    service.delete_session("ws", session)
    assert service.recent_refusals("ws") == []


# -- the session list: every filter reads an index -------------------------------------------------

_LISTS: list[tuple[str, dict[str, Any], str]] = [
    # (what, filter, the index that must give the page in order: no sort, no scan of the workspace)
    ("no filter", {}, "sessions_by_workspace"),
    ("agent", {"agent_name": "a"}, "sessions_by_agent"),
    ("status", {"status": "error"}, "sessions_by_status"),
    ("user", {"user_id": "u"}, "sessions_by_user"),
    ("agent and status", {"agent_name": "a", "status": "error"}, "sessions_by_agent_status"),
    ("user and status", {"user_id": "u", "status": "running"}, "sessions_by_user_status"),
    ("a tag", {"tags": ("t",)}, "session_tags"),
    ("two tags", {"tags": ("t", "u")}, "session_tags"),
    ("a tag and status", {"tags": ("t",), "status": "error"}, "session_tags"),
    ("the next page (cursor)", {"before_seq": 10}, "sessions_by_workspace"),
    ("agent, the next page", {"agent_name": "a", "before_seq": 10}, "sessions_by_agent"),
    ("newer than a cursor (dashboard)", {"after_seq": 10}, "sessions_by_workspace"),
    # A time window: newest first by start time, which the window's index gives (after an agent, user or status).
    ("since", {"started_after": "2026-01-01"}, "sessions_by_start"),
    ("a time window", {"started_after": "2026-01-01", "started_before": "2026-01-02"}, "sessions_by_start"),
    ("until", {"started_before": "2026-01-02"}, "sessions_by_start"),
    (
        "agent and a time window",
        {"agent_name": "a", "started_after": "2026-01-01", "started_before": "2026-01-02"},
        "sessions_by_agent_start",
    ),
    ("user since", {"user_id": "u", "started_after": "2026-01-01"}, "sessions_by_user_start"),
    ("status until", {"status": "error", "started_before": "2026-01-02"}, "sessions_by_status_start"),
]
# Ranges: an index reads them (which one, the database's statistics decide), never a scan of the table.
_RANGES: list[tuple[str, dict[str, Any]]] = [
    ("minimum cost (dashboard)", {"min_cost": Decimal("10")}),
    ("status and minimum cost", {"status": "error", "min_cost": Decimal("1")}),
    ("a time window and minimum cost", {"started_after": "2026-01-01", "min_cost": Decimal("1")}),
]


def _list_plan(db: Union[Path, str], where: dict[str, Any]) -> str:
    from agent_ledger_sdk.local.store.sql import POSTGRES, SessionSearch

    with open_store(db) as store, store.read() as tx:
        statement, params = tx.session_list_query(
            SessionSearch(workspace="ws", **where), 51, oldest_first="after_seq" in where
        )
        if isinstance(db, Path):
            rows = tx._db.execute(f"EXPLAIN QUERY PLAN {statement}", params).fetchall()
            return "\n".join(row["detail"] for row in rows)
        # An empty table: tell PostgreSQL what 1e6 rows would (a scan or a sort costs more than an index).
        tx._db.execute("SET LOCAL enable_seqscan = off")
        tx._db.execute("SET LOCAL enable_sort = off")
        rows = tx._db.execute(f"EXPLAIN {POSTGRES.sql(statement)}", params).fetchall()
        return "\n".join(row["QUERY PLAN"] for row in rows)


@pytest.mark.parametrize(("what", "where", "index"), _LISTS, ids=[case[0] for case in _LISTS])
def test_each_filter_of_the_session_list_reads_an_index_in_the_order_of_the_page(
    db: Union[Path, str], what: str, where: dict[str, Any], index: str
) -> None:
    plan = _list_plan(db, where)
    if isinstance(db, Path):
        assert f"USING INDEX {index} " in plan or (index == "session_tags" and "SEARCH t USING PRIMARY KEY" in plan), (
            plan
        )
        assert "TEMP B-TREE" not in plan, plan  # no sort: the index gives the page in order
        assert "SCAN sessions" not in plan, plan
    else:
        assert f"using {index}" in plan or (index == "session_tags" and "using session_tags_pkey" in plan), plan
        assert "Sort" not in plan and "Seq Scan" not in plan, plan


@pytest.mark.parametrize(("what", "where"), _RANGES, ids=[case[0] for case in _RANGES])
def test_ranges_of_the_session_list_read_an_index(db: Union[Path, str], what: str, where: dict[str, Any]) -> None:
    plan = _list_plan(db, where)
    if isinstance(db, Path):
        assert "SEARCH sessions USING" in plan and "SCAN sessions" not in plan, plan
    else:
        assert "Index" in plan and "Seq Scan" not in plan, plan


def test_a_time_window_pages_newest_first_by_start_time_each_session_once(
    service: LedgerService, now: list[datetime.datetime]
) -> None:
    """Start times out of seq order (a session ingested late with its own start, a clock set back): the window's
    pages still come newest first by start time, each session exactly once, across a deleted cursor too."""
    base = now[0]
    offsets = [5, 1, 9, 3, 3, 7, 0, 12, 8, 2, 11, 6, 4, 10, 3]  # minutes after base, in the order they start
    made: list[tuple[datetime.datetime, str]] = []
    for position, minutes in enumerate(offsets):
        now[0] = base + datetime.timedelta(minutes=minutes)
        agent = "rare" if position % 5 == 0 else "common"
        made.append((now[0], service.start_session("ws", agent).body["id"]))
    since, until = str(iso(base + datetime.timedelta(minutes=2))), str(iso(base + datetime.timedelta(minutes=11)))
    expected = [sid for at, sid in sorted(made, key=lambda m: m[0], reverse=True) if since <= str(iso(at)) < until]

    def pages(limit: int, **where: Any) -> list[str]:
        seen: list[str] = []
        cursor = None
        while True:
            query = SessionQuery(workspace="ws", started_after=since, started_before=until, limit=limit, **where)
            page = service.list_sessions(dataclasses.replace(query, cursor=cursor))
            seen.extend(s["id"] for s in page["sessions"])
            if page["nextCursor"] is None:
                return seen
            cursor = int(page["nextCursor"])

    for limit in (1, 2, 4, 50):
        listed = pages(limit)
        assert len(listed) == len(set(listed))
        # Equal start times may come in either order; the start times must not rise.
        assert sorted(listed) == sorted(expected) and list(_starts(made, listed)) == sorted(
            _starts(made, listed), reverse=True
        )
    rare = [sid for sid in expected if sid in {m[1] for i, m in enumerate(made) if i % 5 == 0}]
    assert sorted(pages(1, agent_name="rare")) == sorted(rare)
    # The first page's last session is deleted: its cursor has lost its place, which is said, not guessed.
    query = SessionQuery(workspace="ws", started_after=since, started_before=until, limit=3)
    first = service.list_sessions(query)
    service.delete_session("ws", first["sessions"][-1]["id"])
    with pytest.raises(NotFound, match="was deleted since .* list again without a cursor"):
        service.list_sessions(dataclasses.replace(query, cursor=int(first["nextCursor"])))


def _starts(made: list[tuple[datetime.datetime, str]], ids: list[str]) -> list[datetime.datetime]:
    at = {sid: started for started, sid in made}
    return [at[sid] for sid in ids]


def test_the_tag_filter_finds_exactly_the_sessions_with_every_tag_and_forgets_deleted_ones(
    service: LedgerService,
) -> None:
    from agent_ledger_sdk.local.records import SessionContext

    made = {
        tags: service.start_session("ws", "agent", context=SessionContext(tags=tags)).body["id"]
        for tags in [("a",), ("a", "b"), ("b",), ()]
    }
    service.start_session("other", "agent", context=SessionContext(tags=("a", "b")))

    def listed(*tags: str) -> list[str]:
        return [s["id"] for s in service.list_sessions(SessionQuery(workspace="ws", tags=tags))["sessions"]]

    assert listed("a") == [made[("a", "b")], made[("a",)]]
    assert listed("a", "b") == listed("b", "a") == [made[("a", "b")]]
    assert listed("c") == []
    service.delete_session("ws", made[("a", "b")])
    assert listed("a") == [made[("a",)]]
    assert listed("b") == [made[("b",)]]


def test_a_reservation_request_is_priced_once_and_a_refusal_still_names_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model of genai-prices costs ~0.2 ms of CPU a pricing: a reservation prices its call once, in its
    transaction, with the workspace's prices."""
    with LedgerService(SQLiteStore(tmp_path / "ledger.db")) as service:
        service.set_price("ws", "test/flat", Rates(Decimal(1), Decimal(1), None, None))
        service.set_budget("ws", "agent", Decimal("0.5"))
        session = service.start_session("ws", "agent").body["id"]
        calls: list[tuple[str, str]] = []
        price = service.price_book.price

        def counted(provider: str, model: str, *args: Any, **kwargs: Any) -> Any:
            calls.append((provider, model))
            return price(provider, model, *args, **kwargs)

        monkeypatch.setattr(service.price_book, "price", counted)
        body = {
            "sessionId": session,
            "provider": "test",
            "model": "flat",
            "estimate": {"tokensIn": 100000, "tokensOut": 0},
        }
        assert service.reserve_request("ws", body, None).body["reservedUsd"] == Decimal("0.1")
        assert calls == [("test", "flat")]
        with pytest.raises(BudgetExceeded):
            service.reserve_request("ws", {**body, "estimate": {"tokensIn": 1000000, "tokensOut": 0}}, None)
        (refusal,) = service.recent_refusals("ws")
        assert (refusal["provider"], refusal["model"], refusal["costUsd"]) == ("test", "flat", Decimal(1))


def test_a_hot_path_write_that_fails_leaves_nothing_and_the_store_usable(db: Union[Path, str]) -> None:
    """Store.pipelined_write (PostgreSQL: pipeline mode, its own BEGIN and COMMIT): an error in the block, or a
    value the database refuses, rolls the whole transaction back, and the next write goes through."""
    rates = (Decimal(1), Decimal(1), None, None)
    with open_store(db) as store:
        with pytest.raises(RuntimeError), store.pipelined_write("ws") as tx:
            tx.put_price("ws", "a", rates, "t")
            raise RuntimeError("refused in Python")
        if not isinstance(store, SQLiteStore):  # SQLite stores a NUL
            with pytest.raises(BadInput, match="cannot store a value"), store.pipelined_write("ws") as tx:
                tx.put_price("ws", "b", rates, "t")
                tx.put_price("ws", "c\x00", rates, "t")
                tx.put_price("ws", "d", rates, "t")
        for _ in range(3):  # a pool's connections are each reused
            with store.pipelined_write("ws") as tx:
                tx.put_price("ws", "e", rates, "t")
            with store.pipelined_write(None) as tx:
                assert [row["name"] for row in tx.prices("ws")] == ["e"]
        with store.read() as tx:
            assert [row["name"] for row in tx.prices("ws")] == ["e"]
            assert tx.prices_version("ws") == 3


def test_reads_sent_ahead_are_read_later_as_they_were_when_they_ran(db: Union[Path, str]) -> None:
    """Tx.ahead (PostgreSQL's pipeline mode): reads sent in one go and taken later, by the same read with the same
    values, give what they would have given then; a read sent ahead and never taken is harmless; a store that
    cannot send reads ahead says so."""
    rates = (Decimal(1), Decimal(1), None, None)
    with open_store(db) as store:
        with store.pipelined_write("ws") as tx:
            tx.put_price("ws", "a", rates, "t")
        with store.pipelined_write("ws") as tx:
            if not store.sends_ahead:
                assert not tx.sends_ahead
                with pytest.raises(RuntimeError, match="cannot send reads ahead"), tx.ahead():
                    pass
                return
            with tx.ahead():
                assert tx.prices("ws") == []  # sent, not waited for
                assert tx.prices_version("ws") == 0
                tx.prices("another workspace")  # never taken
            tx.put_price("ws", "b", rates, "t")
            assert [row["name"] for row in tx.prices("ws")] == ["a"]  # as it was when it ran, before "b"
            assert [row["name"] for row in tx.prices("ws")] == ["a", "b"]  # read again: now
            assert tx.prices_version("ws") == 1
            assert tx.prices_version("ws") == 2
        with store.read() as tx:
            assert [row["name"] for row in tx.prices("ws")] == ["a", "b"]


def _reserving(service: LedgerService) -> Callable[[str], Any]:
    """A workspace "ws" with a key, a price and a budget for "agent", and a session of it: what reserves a
    thousandth of a dollar there under an idempotency key, as ``POST /v1/reservations`` does."""
    secret = service.create_key("k", "ws").secret
    service.set_price("ws", "test/flat", Rates(Decimal(1), Decimal(1), None, None))
    service.set_budget("ws", "agent", Decimal(1))
    session = service.start_session("ws", "agent").body["id"]
    body = {"sessionId": session, "provider": "test", "model": "flat", "maxCostUsd": 0.001}

    def reserve(key: str) -> Any:
        return service.reserve_with_key(secret, lambda: (body, Idempotency(key, "fingerprint")))

    return reserve


@pytest.mark.parametrize("path", ["at once", "general"])
def test_a_postgresql_reservation_waits_on_one_round_trip_two_on_the_general_path(
    postgres_url: str, tmp_path: Path, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At once (Tx.reserve_at_once): one call of agent_ledger_reserve, a transaction of its own. On the general path
    (a refusal, a replay, an error: here forced) its key, idempotency record, session and budgets go in the
    first (sent ahead), its writes and COMMIT in the second. Counted in libpq's trace of the connection: each
    change from what the client sends to what the server answers is one wait."""
    pytest.importorskip("psycopg", reason="needs the postgres extra")
    from agent_ledger_sdk.local.store.postgres import PostgresStore

    with LedgerService(PostgresStore(postgres_url, pool_size=1)) as service:
        reserve = _reserving(service)
        assert reserve("first").status == Outcome.CREATED  # the key and the session's agent are known from now on
        # The call is prepared on the connection (psycopg waits on its Parse, outside a pipeline, the first time).
        assert reserve("prepared").status == Outcome.CREATED
        if path == "general":
            monkeypatch.setattr(service, "_call_at_once", lambda plan: False)
        trace = tmp_path / "trace.txt"
        pool = service.store._pool  # type: ignore[attr-defined]
        with trace.open("w") as out:
            with pool.connection() as connection:
                connection.pgconn.trace(out.fileno())
            try:
                assert reserve("second").status == Outcome.CREATED
            finally:
                with pool.connection() as connection:
                    connection.pgconn.untrace()
        sides = [line.split("\t")[1] for line in trace.read_text().splitlines() if "\t" in line]
        waits = sum(1 for before, after in zip(sides, sides[1:]) if (before, after) == ("F", "B"))
        assert waits == (1 if path == "at once" else 2), trace.read_text()


def test_a_reservation_reads_the_reservations_held_not_those_released_since(
    db: Union[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A budget check sums the reservations held now. Those settled or released stay in the table until they
    expire (ten minutes); a reservation that read them too cost more with every call of the last ten minutes
    (on PostgreSQL, whose generic plan chose the index of all of them: 0.64 to 1.24 ms in-process over 6,000
    reserve-and-release cycles). Here 40 cycles, then the plans the reservation ran with, as they ran: on
    PostgreSQL auto_explain's (with what each node read), on SQLite the query plans of the statements it ran."""
    sqlite_statements: list[str] = []
    if isinstance(db, Path):
        connect = SQLiteStore._connect

        def traced(self: SQLiteStore) -> sqlite3.Connection:
            connection = connect(self)
            connection.set_trace_callback(sqlite_statements.append)
            return connection

        monkeypatch.setattr(SQLiteStore, "_connect", traced)
        store: Store = SQLiteStore(db)
    else:
        from agent_ledger_sdk.local.store.postgres import PostgresStore

        store = PostgresStore(db, pool_size=1)
    with LedgerService(store) as service:
        reserving = _reserving(service)

        def reserve(key: str) -> str:
            reply = reserving(key)
            assert reply.status == Outcome.CREATED
            return str(reply.body["id"])

        for cycle in range(40):
            service.release("ws", reserve(f"k{cycle}"))
            service.start_session("ws", "another")  # the session is read by its id, not among the workspace's
        if isinstance(db, Path):
            sqlite_statements.clear()
            reserve("last")  # SQLite has the general path only
            reads = [s for s in sqlite_statements if "FROM reservations" in s]
            assert reads, sqlite_statements
            with closing(sqlite3.connect(db)) as connection:
                for statement in reads:
                    plan = " / ".join(row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {statement}"))
                    assert "reservations USING INDEX reservations_held" in plan, (statement, plan)
            return
        plans: list[dict[str, Any]] = []

        def explained(notice: Any) -> None:  # "duration: 0.123 ms  plan:\n{...}"
            if (notice.message_primary or "").startswith("duration:"):
                plans.append(json.loads(notice.message_primary.split("\n", 1)[1]))

        pool = service.store._pool  # type: ignore[attr-defined]
        with pool.connection() as connection:
            connection.execute("LOAD 'auto_explain'")
            for setting in ("log_min_duration = 0", "log_analyze = on", "log_format = json"):
                connection.execute(f"SET auto_explain.{setting}")
            connection.execute("SET client_min_messages = log")
            connection.add_notice_handler(explained)
        reserve("last")  # at once
        monkeypatch.setattr(service, "_call_at_once", lambda plan: False)
        reserve("on the general path")
        scans = [
            node
            for plan in plans
            for node in _plan_nodes(plan["Plan"])
            if node.get("Relation Name") in ("reservations", "sessions") and "Scan" in node["Node Type"]
        ]
        assert scans, plans
        for node in scans:
            assert node.get("Rows Removed by Filter", 0) == 0, (
                node.get("Index Name"),
                node.get("Rows Removed by Filter"),
            )
            if node["Relation Name"] == "reservations":
                assert node.get("Index Name") == "reservations_held", node


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from _plan_nodes(child)


SLACKS = st.one_of(st.none(), st.integers(-2, 2))  # a budget not set, or its limit this close to what it needs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    slacks=st.tuples(*[SLACKS] * 4),
    spent=st.tuples(*[st.integers(0, 6)] * 4),
    held=st.tuples(*[st.integers(0, 4)] * 3),
    cost=st.integers(0, 8),
    version_changed=st.booleans(),
    idempotency_key=st.sampled_from(["none", "new", "used"]),
    on_loop=st.booleans(),
)
def test_the_one_statement_reservation_grants_exactly_when_the_general_path_would(
    postgres_url: str,
    slacks: tuple[Optional[int], Optional[int], Optional[int], Optional[int]],
    spent: tuple[int, int, int, int],
    held: tuple[int, int, int],
    cost: int,
    version_changed: bool,
    idempotency_key: str,
    on_loop: bool,
) -> None:
    """Budgets of every kind, set or not, with what was spent in their periods and what is held (by this session,
    by another of the agent, by another agent), each limit at most two thousandths of a dollar from what the call
    needs (so that a sum lands on a limit often): Tx.reserve_at_once grants if and only if LedgerService's
    general path grants (it leaves everything else to that path, which then refuses with its words). The call
    is made both ways: in a thread (psycopg) and on an event loop (PostgresStore.reserve_on_loop, libpq itself)."""
    pytest.importorskip("psycopg", reason="needs the postgres extra")
    from agent_ledger_sdk.local.service import key_id_of

    milli = Decimal("0.001")
    needed = (  # what each budget needs for the call to fit: agent daily, agent monthly, workspace daily, session
        spent[0] + held[0] + held[1] + cost,
        spent[1] + held[0] + held[1] + cost,
        spent[2] + sum(held) + cost,
        spent[3] + held[0] + cost,
    )
    agent_daily, agent_monthly, workspace_daily, session_cap = (
        None if slack is None else max(0, need + slack) for need, slack in zip(needed, slacks)
    )
    moment = datetime.datetime(2026, 6, 1, 12, tzinfo=datetime.timezone.utc)
    with LedgerService(open_store(postgres_url), clock=lambda: moment) as service:
        workspace = f"ws-{uuid.uuid4().hex[:12]}"
        secret = service.create_key("k", workspace).secret
        service.set_price(workspace, "test/flat", Rates(Decimal(1), Decimal(1), None, None))
        prices_version = 1
        if agent_daily is not None or agent_monthly is not None:
            service.set_budget(
                workspace,
                "agent",
                None if agent_daily is None else agent_daily * milli,
                monthly_limit_usd=None if agent_monthly is None else agent_monthly * milli,
            )
        if workspace_daily is not None:
            service.set_workspace_budget(workspace, workspace_daily * milli)
        cap = None if session_cap is None else session_cap * milli
        session = service.start_session(workspace, "agent", context=SessionContext(max_cost_usd=cap)).body["id"]
        other = service.start_session(workspace, "agent").body["id"]
        stranger = service.start_session(workspace, "another agent").body["id"]
        with service.store.write(workspace) as tx:
            for scope, subject, period, amount in zip(
                ("agent-daily", "agent-monthly", "workspace-daily"),
                ("agent", "agent", ""),
                ("2026-06-01", "2026-06", "2026-06-01"),
                spent,
            ):
                tx._run(
                    "INSERT INTO spend (workspace, scope, subject, period, amount) VALUES (?, ?, ?, ?, ?)",
                    (workspace, scope, subject, period, str(amount * milli)),
                )
            tx._run("UPDATE sessions SET cost = ? WHERE id = ?", (str(spent[3] * milli), session))
            for number, (owner, agent, amount) in enumerate(
                zip((session, other, stranger), ("agent", "agent", "another agent"), held)
            ):
                tx.insert_reservation(
                    {
                        "id": f"held-{workspace}-{number}",
                        "workspace": workspace,
                        "session_id": owner,
                        "agent_name": agent,
                        "provider": "test",
                        "model": "flat",
                        "amount": str(amount * milli),
                        "state": "held",
                        "created_at": "2026-06-01T11:59:00.000000Z",
                        "expires_at": "2026-06-01T12:09:00.000000Z",
                    }
                )
        if version_changed:  # the prices changed since this process read them: decided by the general path
            service.set_price(workspace, "test/other", Rates(Decimal(2), Decimal(2), None, None))
        service._prices[workspace] = (prices_version, {})  # as kept: the pricing below reads no rates
        unpriced = ReservationRequest(session, "test", "flat", None, cost * milli, None)

        def pricing(rates: Any) -> ReservationRequest:
            return dataclasses.replace(unpriced, amount=cost * milli)

        idempotency = None if idempotency_key == "none" else Idempotency(f"key-{workspace}", "fingerprint")
        if idempotency_key == "used":  # a retry: the general path replays what was answered
            with service.store.write(workspace) as tx:
                tx.remember(workspace, f"key-{workspace}", "fingerprint", 201, "{}", "2026-06-01T11:59:00.000000Z")
        key_id = key_id_of(secret)
        assert key_id is not None
        plan = service._planned(workspace, unpriced, idempotency, pricing, key_id, secret)
        if plan.call is not None and on_loop:
            made = asyncio.run(service.store.reserve_on_loop(plan.call))
            assert made is not None  # made on the loop, not left to a thread
            at_once = plan.granted() if made else None
        else:
            at_once = plan.granted() if plan.call is not None and service._call_at_once(plan) else None
        if at_once is not None:
            with service.store.write(workspace) as tx:
                tx._run("DELETE FROM reservations WHERE id = ?", (at_once.body["id"],))
                (remembered,) = tx._all("SELECT body FROM idempotency WHERE workspace = ?", (workspace,)) or [None]
                assert (remembered is not None) == (idempotency is not None)
                if remembered is not None:
                    assert json.loads(remembered["body"])["id"] == at_once.body["id"]
                tx._run("DELETE FROM idempotency WHERE workspace = ?", (workspace,))
        try:
            general = service.reserve(workspace, unpriced, idempotency, pricing=pricing)
        except BudgetExceeded:
            granted = False
        else:
            granted = general.status == Outcome.CREATED and not general.replayed
        assert (at_once is not None) == (granted and not version_changed)


@pytest.mark.parametrize("prepared", ["on", "off"])
def test_the_event_loops_call_prepares_once_and_words_what_postgresql_refuses(postgres_url: str, prepared: str) -> None:
    """PostgresStore.reserve_on_loop sends the call through libpq itself. It prepares the statement once on its
    connection (never with ``prepared_statements=off``, for a pooler). A value PostgreSQL refuses (an amount that
    is no number) or that libpq cannot send whole (a NUL would end the text; a lone surrogate is no UTF-8) is
    the caller's BadInput, and the connection stays. Any other error (here a reservation id already taken) goes
    up and drops the connection; the next call connects anew."""
    pytest.importorskip("psycopg", reason="needs the postgres extra")
    from agent_ledger_sdk.local.store.postgres import PostgresStore

    joiner = "&" if "?" in postgres_url else "?"
    store = PostgresStore(postgres_url + (f"{joiner}prepared_statements=off" if prepared == "off" else ""), pool_size=1)
    with LedgerService(store) as service:
        secret = service.create_key("k", "ws").secret
        service.set_price("ws", "test/flat", Rates(Decimal(1), Decimal(1), None, None))
        service.set_budget("ws", "agent", Decimal(1))
        session = service.start_session("ws", "agent").body["id"]
        body = {"sessionId": session, "provider": "test", "model": "flat", "maxCostUsd": 0.001}

        def call(key: str) -> dict[str, Any]:
            plan = service.plan_reservation(secret, lambda: (body, Idempotency(key, "fingerprint")))
            assert plan is not None and plan.call is not None
            return dict(plan.call)

        assert service.reserve_with_key(secret, lambda: (body, Idempotency("first", "fp"))).status == Outcome.CREATED

        def prepared_on_the_loops_connection() -> list[str]:
            pgconn = store._loop_connection.pgconn
            pgconn.nonblocking = 0
            try:
                result = pgconn.exec_(b"SELECT name FROM pg_prepared_statements")
                return [result.get_value(row, 0).decode() for row in range(result.ntuples)]
            finally:
                pgconn.nonblocking = 1

        async def calls() -> None:
            granted = [await store.reserve_on_loop(call(f"k{n}")) for n in range(3)]
            assert granted == [True, True, True]
            expected = ["agent_ledger_reserve"] if prepared == "on" else []
            assert prepared_on_the_loops_connection() == expected
            backend = store._loop_connection.info.backend_pid
            for wrong, words in (
                ({"amount": "lots"}, "invalid input syntax for type numeric"),
                ({"model": "fl\x00at"}, "NUL"),
                ({"model": "fl\udcffat"}, "surrogate"),
            ):
                with pytest.raises(BadInput, match=words):
                    await store.reserve_on_loop({**call("refused"), **wrong})
            assert store._loop_connection.info.backend_pid == backend
            taken = call("k-taken")
            assert await store.reserve_on_loop(taken) is True
            import psycopg

            with pytest.raises(psycopg.IntegrityError, match="duplicate key"):
                await store.reserve_on_loop({**taken, "idempotency_key": "k-taken-again"})
            assert store._loop_connection is None
            assert await store.reserve_on_loop(call("k-after")) is True
            assert store._loop_connection.info.backend_pid != backend
            assert prepared_on_the_loops_connection() == expected

        asyncio.run(calls())
        rows = raw_rows(
            postgres_url, "SELECT COUNT(*) FROM reservations WHERE state = 'held' AND session_id = ?", (session,)
        )
        assert rows == [(6,)]  # "first", three, "k-taken", "k-after": none of the refused


def test_a_stamp_is_strftimes_text() -> None:
    """``stamp`` writes the time by hand (strftime took three times as long, twice a request): the same text."""
    import datetime
    import random

    from agent_ledger_sdk.local.service import stamp

    chance = random.Random(15)
    for _ in range(20_000):
        zone = datetime.timezone(datetime.timedelta(minutes=chance.randint(-900, 900)))
        moment = datetime.datetime.fromtimestamp(chance.uniform(-3e10, 2.5e11), zone)
        assert stamp(moment) == moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- prepared statements (PostgreSQL) and the columns writes read -------------------------------


@pytest.mark.parametrize(
    ("table", "columns"),
    [("sessions", SESSION_COLUMNS), ("reservations", RESERVATION_COLUMNS), ("api_keys", KEY_COLUMNS)],
)
def test_the_columns_writes_read_by_name_are_the_tables_columns(db: Union[Path, str], table: str, columns: str) -> None:
    """Writes read these rows with their columns named (a prepared ``SELECT *`` breaks when a column is added):
    the names must be every column of the table, in both schemas, or a migration forgot them."""
    with open_store(db):
        pass
    if isinstance(db, Path):
        found = [row[1] for row in raw_rows(db, f"PRAGMA table_info({table})")]
    else:
        found = [
            row[0]
            for row in raw_rows(
                db,
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
                (table,),
            )
        ]
    assert columns.split(", ") == found


def _hot_path_ready(service: LedgerService) -> str:
    """A key of workspace "ws", whose agent "bot" has a budget and whose model "test/flat" a price."""
    secret = service.create_key("k", "ws").secret
    service.set_price("ws", "test/flat", Rates(Decimal(1), Decimal(1), None, None))
    service.set_budget("ws", "bot", Decimal(100))
    return secret


def _hot_path_work(service: LedgerService, secret: str) -> None:
    """A request's key, a reservation, a batch that settles it, a release, an ended session."""
    workspace = service.authenticate(secret)
    assert workspace is not None
    session_id = service.start_session_request(workspace, {"agentName": "bot"}, None).body["id"]
    reserved = service.reserve_request(
        workspace, {"sessionId": session_id, "provider": "test", "model": "flat", "maxCostUsd": 0.5}, None
    ).body["id"]
    events = [
        {
            "type": "llm_call",
            "stepIndex": 1,
            "provider": "test",
            "model": "flat",
            "tokensIn": 2,
            "tokensOut": 1,
            "reservationId": reserved,
        },
        {"type": "tool_call", "stepIndex": 2, "toolName": "t", "input": {"q": 1}, "output": "ok"},
    ]
    assert (
        service.log_events_request(workspace, {"sessionId": session_id, "events": events}, None).body["accepted"] == 2
    )
    other = service.reserve_request(
        workspace, {"sessionId": session_id, "provider": "test", "model": "flat", "maxCostUsd": 0.5}, None
    ).body["id"]
    service.release(workspace, other)
    service.end_session_request(workspace, session_id, {"status": "success"}, None)


def _prepared(store: Any) -> list[str]:
    with store._pool.connection() as connection:  # the pool's one connection (pool_size=1)
        return [row["statement"] for row in connection.execute("SELECT statement FROM pg_prepared_statements")]


def test_postgresql_writes_run_prepared_and_survive_a_newer_replicas_added_columns(postgres_url: str) -> None:
    """The hot path's statements are prepared once per connection (none of them ``SELECT *``), and a column
    that a later version's migration adds while this replica runs breaks none of them."""
    from agent_ledger_sdk.local.store.postgres import PostgresStore

    store = PostgresStore(postgres_url, pool_size=1)
    with LedgerService(store) as service:
        secret = _hot_path_ready(service)
        _hot_path_work(service, secret)
        prepared = _prepared(store)
        assert any("FROM api_keys k" in s for s in prepared), prepared
        assert any(s.startswith("SELECT pg_advisory_xact_lock") for s in prepared), prepared
        assert any("FROM sessions WHERE id = $1 FOR UPDATE" in s for s in prepared), prepared
        assert any(s.startswith("INSERT INTO reservations") for s in prepared), prepared
        assert any("unnest" in s for s in prepared), prepared
        assert not [s for s in prepared if "SELECT *" in s or ".*" in s]
        for table in ("sessions", "reservations", "api_keys", "events"):
            raw_rows(postgres_url, f"SELECT 1 FROM {table} LIMIT 0", setup=f"ALTER TABLE {table} ADD COLUMN later TEXT")
        _hot_path_work(service, secret)  # the same prepared statements, on the same connection
    assert raw_rows(postgres_url, "SELECT status, event_count FROM sessions") == [("success", 2), ("success", 2)]
    assert raw_rows(postgres_url, "SELECT state FROM reservations ORDER BY state") == [
        ("released",),
        ("released",),
        ("settled",),
        ("settled",),
    ]


def test_a_restart_of_postgresql_costs_one_request_not_one_for_each_pooled_connection(postgres_url: str) -> None:
    """Every backend of the pool terminated (as a restart does): the first request that meets a broken
    connection fails (a client retries it), and the pool then tests its idle connections at once, so the
    requests after it succeed; without that test each broken connection failed a request of its own."""
    import psycopg

    from agent_ledger_sdk.local.store.postgres import PostgresStore

    store = PostgresStore(postgres_url, pool_size=4)
    with LedgerService(store) as service:
        secret = service.create_key("k", "ws").secret
        together = threading.Barrier(4)

        def hold_one() -> None:
            with store.read():
                together.wait(10)

        holders = [threading.Thread(target=hold_one) for _ in range(4)]
        for holder in holders:
            holder.start()
        for holder in holders:
            holder.join(10)
        terminated = raw_rows(
            postgres_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        assert terminated == [(True,)] * 4
        failed = 0
        for _ in range(6):
            try:
                assert service.authenticate(secret) == "ws"
            except psycopg.OperationalError:
                failed += 1
        assert failed == 1


def test_prepared_statements_off_in_the_url_prepares_none_and_a_bad_value_says_what_to_write(postgres_url: str) -> None:
    """For a pooler that cannot keep prepared statements: ``?prepared_statements=off`` (libpq never sees it)."""
    from agent_ledger_sdk.local.store.postgres import PostgresStore

    joiner = "&" if "?" in postgres_url else "?"
    store = PostgresStore(f"{postgres_url}{joiner}prepared_statements=off", pool_size=1)
    with LedgerService(store) as service:
        secret = _hot_path_ready(service)
        _hot_path_work(service, secret)
        assert _prepared(store) == []
    with pytest.raises(ValueError, match=r"prepared_statements='maybe'.*prepared_statements=off"):
        PostgresStore(f"{postgres_url}{joiner}prepared_statements=maybe")


PAYLOADS = [
    '{"q":"a \\"quoted\\" word, a back\\\\slash, {braces}, NULL, (1,2)"}',
    "",
    "NULL",
    '"ünïcödé ✓ 🚀 \\u0001"',
    "{}",
    "x" * 70_000,
]


def test_a_batchs_rows_are_stored_byte_for_byte_whatever_they_hold(db: Union[Path, str]) -> None:
    """PostgreSQL takes a batch as binary arrays (no quoting): quotes, backslashes, braces, commas, the text
    NULL, empty and long text, NULLs, large positions and amounts come back as they went in, in order."""
    with open_store(db) as store:
        with store.write(None) as tx:
            tx.insert_session(
                {"id": "s1", "workspace": "ws", "agent_name": "a", "status": "running", "started_at": "t"}
            )
        rows = [
            stored_event("s1", "r", step, kind, payload, cost, status, over, note)
            for step, kind, payload, cost, status, over, note in [
                (5, "llm_call", PAYLOADS[0], Decimal("0.000000000000000001"), "priced", 0, None),
                (None, "custom", PAYLOADS[1], Decimal(0), None, 1, 'no "price", sorry'),
                (2**53 - 1, "tool_call", PAYLOADS[2], Decimal("123456789012.123456789"), "estimated", 0, ""),
                (0, "llm_call", PAYLOADS[3], Decimal("1E-30"), None, 0, None),
                (1, "custom", PAYLOADS[4], Decimal(0), None, 0, None),
                (None, "custom", PAYLOADS[5], Decimal(0), None, 0, None),
            ]
        ]
        with store.write(None) as tx:
            tx.insert_event_rows(rows)
        with store.read() as tx:
            stored = tx.events("s1", None, 100)
    by_payload = {row["payload"]: row for row in stored}
    assert sorted(by_payload) == sorted(PAYLOADS)
    for row in rows:
        found = by_payload[row[4]]
        assert Decimal(found["cost"]) == Decimal(row[5])
        assert (found["cost_status"], found["over_budget"], found["pricing_note"]) == (row[6], row[7], row[8])
        assert found["position"] == row[2]
    unnumbered = [row["payload"] for row in stored if row["position"] == UNNUMBERED]
    assert unnumbered == [PAYLOADS[1], PAYLOADS[5]]  # as received


def test_a_column_type_a_newer_release_changed_costs_one_failed_request_per_connection(postgres_url: str) -> None:
    """A prepared statement whose result type changed fails at every run on its connection until the statement
    is dropped: a write's ROLLBACK drops them all (psycopg does), and the key's read (no transaction) closes
    its connection, so the pool replaces it. The request that met it fails (a client retries it); the next
    one prepares anew."""
    import psycopg

    from agent_ledger_sdk.local.store.postgres import PostgresStore

    stale = pytest.raises(psycopg.errors.FeatureNotSupported, match="cached plan must not change result type")
    store = PostgresStore(postgres_url, pool_size=1)
    with LedgerService(store) as service:
        secret = _hot_path_ready(service)
        _hot_path_work(service, secret)
        raw_rows(postgres_url, "SELECT 1", setup="ALTER TABLE sessions ALTER COLUMN error_message TYPE varchar(5000)")
        with stale:
            _hot_path_work(service, secret)  # a write: its transaction rolls back
        _hot_path_work(service, secret)
        raw_rows(postgres_url, "SELECT 1", setup="ALTER TABLE api_keys ALTER COLUMN name TYPE varchar(500)")
        with stale:
            service.authenticate(secret)  # the key's read, outside a transaction
        assert service.authenticate(secret) is not None
        _hot_path_work(service, secret)
    # The failed write was the start of a session, which reads its row back: its transaction rolled back.
    assert raw_rows(postgres_url, "SELECT status, COUNT(*) FROM sessions GROUP BY status") == [("success", 3)]


def test_the_prepared_statements_parameter_leaves_the_rest_of_the_url_as_libpq_reads_it(postgres_url: str) -> None:
    """Taking ``prepared_statements`` out keeps the other parameters as written: a space stays %20 and a "+"
    stays a plus (libpq reads it as itself), so ``options=-c search_path=...`` still sets the search path."""
    import psycopg

    from agent_ledger_sdk.local.store.postgres import libpq_url

    joiner = "&" if "?" in postgres_url else "?"
    url = f"{postgres_url}{joiner}options=-c%20search_path%3Dledger_schema&prepared_statements=off&application_name=a+b"
    kept = libpq_url(url)
    assert "prepared_statements" not in kept
    with psycopg.connect(kept) as connection:
        row = connection.execute(
            "SELECT current_setting('search_path'), current_setting('application_name')"
        ).fetchone()
    assert row == ("ledger_schema", "a+b")
    assert libpq_url(postgres_url) == postgres_url  # without the parameter: untouched
