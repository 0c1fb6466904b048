"""The dashboard at scale: server time of each page on a ledger of 1e6 events, SQLite and PostgreSQL.

    python benchmarks/dashboard_bench.py                      # 1e6 events, both backends (minutes)
    python benchmarks/dashboard_bench.py --events 100000      # a quicker run
    python benchmarks/dashboard_bench.py --backend sqlite --json out.json

The ledger is filled straight through the store's SQL (SQLite: ``Tx.insert_session``/``Tx.insert_events``,
executemany; PostgreSQL: COPY) with sessions of 10 events (LLM calls and tools, prompts of varied words,
20 agents, 500 users, tags, a few calls over budget or unpriced, spread over the last 30 days) and one
session of 10,000 events. Then the cost rollup is brought up to date once (timed: what the first
``/costs`` after an upgrade does), and each page is requested over loopback from a real server in this
process: the server time (the app's own, from request to the last byte of the response) is reported,
the median and the slowest of ``--repeat`` requests after one warm-up.

The PostgreSQL server is a throwaway one (``tests/postgres_server.py``: initdb and pg_ctl on PATH or in
/usr/lib/postgresql/*/bin), or ``AGENT_LEDGER_TEST_POSTGRES``'s.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Optional, Union

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.postgres_server: the throwaway PostgreSQL of the tests

WORKSPACE = "default"
EVENTS_PER_SESSION = 10
BIG_SESSION_EVENTS = 10_000
AGENTS = [f"agent-{n:02d}" for n in range(20)]
USERS = [f"user-{n:03d}" for n in range(500)]
TAGS = ["prod", "staging", "eu", "us", "beta", "refunds", "billing"]
DAYS = 30
MICRO = Decimal("0.000001")  # the fill prices every call at $1 per million tokens, in and out
RARE = "zebra-quartz-never-said"  # a search that matches nothing: it reads until its time is up


def words(rng: random.Random, count: int) -> str:
    return " ".join(f"w{rng.randrange(2000)}" for _ in range(count))


@dataclass
class Filled:
    big: str  # the session of 10,000 events
    regular: str  # a session of 10 events, in the middle
    pair: tuple[str, str]  # two runs of one agent
    min_cost: Decimal  # a minimum that about 1% of sessions reach
    middle_seq: int  # a cursor halfway down the list
    common_word: str  # in many prompts
    sessions: int
    events: int
    seconds: float


def _event_rows(
    rng: random.Random, start: datetime.datetime, events: int
) -> Iterator[tuple[int, str, str, Decimal, Optional[str], int]]:
    """(step, type, payload, cost, cost status, over budget) of a session's events."""
    for step in range(events):
        kind = (
            "llm_call",
            "tool_call",
            "tool_result",
            "llm_call",
            "tool_call",
            "tool_result",
            "llm_call",
            "tool_call",
            "tool_result",
            "llm_call",
        )[step % 10]
        moment = (start + datetime.timedelta(milliseconds=400 * step)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        if kind == "llm_call":
            unpriced = rng.random() < 0.01
            tokens_in, tokens_out = rng.randrange(100, 5000), rng.randrange(10, 1000)
            payload = {
                "type": kind,
                "stepIndex": step,
                "provider": "acme" if unpriced else "test",
                "model": "private-7b" if unpriced else "flat",
                "prompt": f"Answer the customer about {words(rng, 40)}",
                "response": f"Here is what I found: {words(rng, 25)}",
                "tokensIn": tokens_in,
                "tokensOut": tokens_out,
                "cacheReadTokens": tokens_in // 3,
                "latencyMs": rng.randrange(100, 3000),
                "startedAt": moment,
                "spanId": f"{step:016x}",
            }
            cost = Decimal(0) if unpriced else (tokens_in + tokens_out) * MICRO
            yield step, kind, json.dumps(payload), cost, "unpriced" if unpriced else "priced", int(rng.random() < 0.001)
        else:
            span = f"{step - (1 if kind == 'tool_result' else 0):016x}"
            payload = {
                "type": kind,
                "stepIndex": step,
                "toolName": f"tool-{step % 4}",
                "startedAt": moment,
                "spanId": span,
            }
            if kind == "tool_call":
                payload["toolInput"] = {"query": words(rng, 6)}
            else:
                payload["toolOutput"] = {"results": [words(rng, 8)]}
                payload["latencyMs"] = rng.randrange(5, 400)
            yield step, kind, json.dumps(payload), Decimal(0), None, 0


def _sessions(
    total_events: int, seed: int = 7
) -> Iterator[tuple[dict[str, Any], list[tuple[int, str, str, Decimal, Optional[str], int]], str]]:
    """Each session's row, its events, and the time they were received."""
    rng = random.Random(seed)
    regular = (total_events - BIG_SESSION_EVENTS) // EVENTS_PER_SESSION
    now = datetime.datetime.now(datetime.timezone.utc)
    first = now - datetime.timedelta(days=DAYS - 1)
    step = (now - first) / (regular + 1)
    for n in range(regular + 1):
        big = n == regular // 2
        started = first + step * n
        events = list(_event_rows(rng, started, BIG_SESSION_EVENTS if big else EVENTS_PER_SESSION))
        llm = [e for e in events if e[1] == "llm_call"]
        status = "running" if rng.random() < 0.02 else "error" if rng.random() < 0.08 else "success"
        stamp = started.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        row = {
            "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "workspace": WORKSPACE,
            "agent_name": "big-agent" if big else rng.choice(AGENTS),
            "status": status,
            "started_at": stamp,
            "ended_at": None
            if status == "running"
            else (started + datetime.timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "user_id": rng.choice(USERS) if rng.random() < 0.8 else None,
            "tags": json.dumps(rng.sample(TAGS, rng.randrange(0, 3))),
            "metadata": "{}",
            "event_count": len(events),
            "tokens_in": sum(json.loads(e[2])["tokensIn"] for e in llm),
            "tokens_out": sum(json.loads(e[2])["tokensOut"] for e in llm),
            "cost": str(sum((e[3] for e in events), Decimal(0))),
            "unpriced_count": sum(1 for e in llm if e[4] == "unpriced"),
            "over_budget_count": sum(e[5] for e in events),
        }
        yield row, events, stamp


def fill(db: Union[str, Path], total_events: int) -> Filled:
    from agent_ledger_sdk.local.store import open_store
    from agent_ledger_sdk.local.store.sql import EventRow

    began = time.perf_counter()
    ids: list[tuple[str, str, Decimal]] = []  # (id, agent, cost)
    big = ""
    sessions = events = 0
    made = _sessions(total_events)
    with open_store(db) as store:  # migrates a new database
        pass
    if isinstance(db, Path):
        with open_store(db) as store:
            while True:
                chunk = list(itertools.islice(made, 500))
                if not chunk:
                    break
                with store.write(WORKSPACE) as tx:
                    for row, rows, received in chunk:
                        tx.insert_session(row)
                        tx.insert_events(
                            row["id"], received, (EventRow(s, k, p, c, st, bool(o), None) for s, k, p, c, st, o in rows)
                        )
                        ids.append((row["id"], row["agent_name"], Decimal(row["cost"])))
                        sessions += 1
                        events += len(rows)
                        if len(rows) == BIG_SESSION_EVENTS:
                            big = row["id"]
            with store.write(None) as tx:
                tx._run("ANALYZE")
    else:
        import psycopg

        columns = None
        with psycopg.connect(str(db)) as connection:
            while True:
                chunk = list(itertools.islice(made, 2000))
                if not chunk:
                    break
                columns = columns or list(chunk[0][0])
                with connection.transaction(), connection.cursor() as cursor:
                    with cursor.copy(f"COPY sessions ({', '.join(columns)}) FROM STDIN") as copy:
                        for row, _, _ in chunk:
                            copy.write_row([row[c] for c in columns])
                    with cursor.copy(
                        "COPY events (session_id, step_index, position, type, payload, cost, cost_status, over_budget,"
                        " received_at) FROM STDIN"
                    ) as copy:
                        for row, rows, received in chunk:
                            for s, k, p, c, st, o in rows:
                                copy.write_row((row["id"], s, s, k, p, c, st, o, received))
                for row, rows, _ in chunk:
                    ids.append((row["id"], row["agent_name"], Decimal(row["cost"])))
                    sessions += 1
                    events += len(rows)
                    if len(rows) == BIG_SESSION_EVENTS:
                        big = row["id"]
            connection.execute("ANALYZE")
    costs = sorted(cost for _, _, cost in ids)
    runs = [session_id for session_id, name, _ in ids if name == AGENTS[3]] or [ids[0][0]]
    with open_store(db) as store, store.read() as tx:
        top = tx.latest_session_seq(WORKSPACE)
    return Filled(
        big=big,
        regular=ids[len(ids) // 3][0],
        pair=(runs[-2] if len(runs) > 1 else runs[-1], runs[-1]),
        min_cost=costs[int(len(costs) * 0.99)],
        middle_seq=top // 2,
        common_word="w42",
        sessions=sessions,
        events=events,
        seconds=time.perf_counter() - began,
    )


class ServerTiming:
    """ASGI middleware: each response says how long the app took, from the request to its last byte."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.took: list[float] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        began = time.perf_counter()

        async def timed_send(message: Any) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.took.append(time.perf_counter() - began)
            await send(message)

        await self.app(scope, receive, timed_send if scope["type"] == "http" else send)


def measure(backend: str, db: Union[str, Path], total_events: int, repeat: int) -> dict[str, Any]:
    from agent_ledger_sdk.local.app import create_app
    from agent_ledger_sdk.local.server import BackgroundServer
    from agent_ledger_sdk.local.service import LedgerService
    from agent_ledger_sdk.local.store import open_store

    print(f"[{backend}] filling {total_events:,} events ...", flush=True)
    filled = fill(db, total_events)
    print(f"[{backend}] {filled.sessions:,} sessions, {filled.events:,} events in {filled.seconds:.0f} s", flush=True)
    result: dict[str, Any] = {"backend": backend, "sessions": filled.sessions, "events": filled.events, "pages": {}}
    with LedgerService(open_store(db)) as service:
        service.set_budget(WORKSPACE, AGENTS[0], Decimal(5), monthly_limit_usd=Decimal(100))
        began = time.perf_counter()
        assert service.catch_up_costs(WORKSPACE, seconds=24 * 3600)
        result["rollup_backfill_seconds"] = round(time.perf_counter() - began, 2)
        print(f"[{backend}] cost rollup of every call, once: {result['rollup_backfill_seconds']} s", flush=True)
        timing = ServerTiming(create_app(service))
        server = BackgroundServer(timing).start()
        big_cursor = service.get_session(filled.big, WORKSPACE, events_limit=2000)
        for _ in range(2):  # the 5,000th step: a page deep in the big session
            big_cursor = service.get_session(
                filled.big, WORKSPACE, events_limit=2000, events_cursor=big_cursor["nextEventsCursor"]
            )
        with service.store.read() as tx:
            latest = tx.latest_session_seq(WORKSPACE)
        pages = {
            "/ (newest sessions)": "/",
            "/?agent=": f"/?agent={AGENTS[5]}",
            "/?status=error": "/?status=error",
            "/?user=": f"/?user={USERS[17]}",
            "/?tag=": "/?tag=refunds",
            "/?tag= (no session has it: reads them all)": "/?tag=never-used",
            "/?min_cost= (top 1%)": f"/?min_cost={filled.min_cost}",
            "/?min_cost= (above every session: reads them all)": "/?min_cost=1000",
            "/?since=&until= (a day)": f"/?since={(datetime.date.today() - datetime.timedelta(days=10)).isoformat()}&until={(datetime.date.today() - datetime.timedelta(days=10)).isoformat()}",
            "/?cursor= (halfway down)": f"/?cursor={filled.middle_seq}",
            "/?q= (a common word)": f"/?q={filled.common_word}",
            "/?q= (no match: stops at its time)": f"/?q={RARE}",
            "/?agent=&q= (no match)": f"/?agent={AGENTS[5]}&q={RARE}",
            "/live/sessions (nothing new)": f"/live/sessions?after={latest}",
            "/sessions/{id} (10 events)": f"/sessions/{filled.regular}",
            "/sessions/{id} (10,000 events)": f"/sessions/{filled.big}",
            "/sessions/{id} (10,000 events, page 25)": f"/sessions/{filled.big}?events={big_cursor['nextEventsCursor']}&from=5000",
            "/compare (two 10-event runs)": f"/compare?a={filled.pair[0]}&b={filled.pair[1]}",
            "/compare (10,000-event run vs a 10-event one)": f"/compare?a={filled.pair[1]}&b={filled.big}",
            "/costs (last 30 days)": "/costs",
            "/costs (a week)": f"/costs?since={(datetime.date.today() - datetime.timedelta(days=6)).isoformat()}",
            "/budgets": "/budgets",
        }
        try:
            with httpx.Client(base_url=server.url, timeout=120) as client:
                for name, path in pages.items():
                    took = []
                    for _ in range(repeat + 1):
                        timing.took.clear()
                        response = client.get(path)
                        if response.status_code != 200:
                            raise RuntimeError(f"{path}: {response.status_code} {response.text[:300]}")
                        took.append(timing.took[-1])
                    first, took = took[0], took[1:]  # the first warms the caches (and fills the server's)
                    figures = {
                        "first_ms": round(first * 1000, 1),
                        "median_ms": round(statistics.median(took) * 1000, 1),
                        "max_ms": round(max(took) * 1000, 1),
                        "bytes": len(response.content),
                    }
                    result["pages"][name] = figures
                    print(
                        f"[{backend}] {name:52} {figures['median_ms']:7.1f} ms  (max {figures['max_ms']:.1f}, "
                        f"first {figures['first_ms']:.1f})  {figures['bytes']:,} B",
                        flush=True,
                    )
        finally:
            server.stop()
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events to store (default 1e6)")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--repeat", type=int, default=7, help="timed requests per page (after one warm-up)")
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON too")
    args = parser.parse_args(argv)
    if args.events < BIG_SESSION_EVENTS + EVENTS_PER_SESSION:
        parser.error(f"--events must be at least {BIG_SESSION_EVENTS + EVENTS_PER_SESSION}")
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    results = []
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="dashboard-bench-") as scratch:
        for backend in backends:
            if backend == "sqlite":
                db: Union[str, Path] = Path(scratch) / "ledger.db"
            else:
                from tests.postgres_server import ENV_URL, PostgresServer, start_postgres

                url = os.environ.get(ENV_URL)
                server = PostgresServer(url=url) if url else stack.enter_context(start_postgres())
                db = server.create_database()
            results.append(measure(backend, db, args.events, args.repeat))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
