"""Reads that do not grow with the ledger, and the reservation round trip, on SQLite and PostgreSQL.

    python benchmarks/reads_bench.py                  # 1e6 sessions, an 80,000-event session (several minutes)
    python benchmarks/reads_bench.py --quick          # 1e5 sessions, a 20,000-event session (a smoke run)
    python benchmarks/reads_bench.py --json out.json  # the figures as JSON too
    python benchmarks/reads_bench.py --parts reserve --backends sqlite   # one part, one backend

Three parts (see docs/performance.md, "Reads and reservations at 1e6 sessions"):

- ``lists``: the session list under every filter the API, the CLI and the dashboard offer, on a workspace
  of 1e6 sessions written straight into the database (not over HTTP): ``LedgerService.list_sessions`` and
  ``find_sessions`` in this process, p50/p99 of repeated calls, with the query plan's index named;
- ``stall``: one session of 80,000 events read page by page over HTTP (``GET /v1/sessions/{id}``, 2,000
  events a page) while another client ingests batches of 100 events: ingest latency during the read and
  without it, the time and size of each page, and the server's peak RSS;
- ``reserve``: ``POST /v1/reservations`` from one client alone against ``agent-ledger serve``: raw httpx
  (keep-alive; each reservation released, untimed) and the SDK (``AgentLedgerClient.llm_call`` of an agent
  with a budget: one reservation round trip per call; then ``AsyncAgentLedgerClient``'s), p50/p99.

Timings are medians of repeated calls; the machine is shared, so the load average is printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gc
import itertools
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any, Optional, Union

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from ledger_scale import Backends, Replicas, llm_event, percentile, prepare  # noqa: E402

WORKSPACE = "bench-0"
OTHER_WORKSPACE = "bench-other"  # a tenth of the sessions: the workspace is part of every index
AGENTS = 200  # common agents, in turn
RARE_AGENT = "rare-agent"  # one session in 20,000
USERS = 10_000
TAGS = 20
RARE_TAG = "vip"  # one session in 10,000
EPOCH = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def stamp(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- lists ------------------------------------------------------------------------------------------


def session_rows(count: int) -> Iterator[tuple[Any, ...]]:
    """``count`` sessions, one a second from EPOCH: statuses success (97%), error (2.9%) and running (0.1%)."""
    for n in range(count):
        moment = stamp(EPOCH + datetime.timedelta(seconds=n))
        status = "running" if n % 1000 == 7 else "error" if n % 34 == 3 else "success"
        rare = n % 20_000 == 12
        tags = [f"t{n % TAGS}"] + ([RARE_TAG] if n % 10_000 == 5 else [])
        cost = Decimal("25.5") if n % 10_000 == 9 else Decimal("0.0015") * (n % 100)
        yield (
            str(uuid.UUID(int=random.getrandbits(128))),
            OTHER_WORKSPACE if n % 10 == 1 else WORKSPACE,
            RARE_AGENT if rare else f"agent-{n % AGENTS}",
            status,
            moment,
            None if status == "running" else moment,
            f"user-{n % USERS}",
            json.dumps(tags),
            str(cost),
        )


def fill_sessions(db: Union[str, Path], count: int) -> float:
    """Write ``count`` sessions straight into the database (SQLite executemany, PostgreSQL COPY); the seconds."""
    columns = "id, workspace, agent_name, status, started_at, ended_at, user_id, tags, cost"
    began = time.perf_counter()
    rows = session_rows(count)
    if isinstance(db, Path):
        from agent_ledger_sdk.local.store import open_store

        open_store(db).close()  # the schema, migrated
        with contextlib.closing(sqlite3.connect(str(db))) as lite:
            while True:
                chunk = list(itertools.islice(rows, 50_000))
                if not chunk:
                    break
                with lite:
                    lite.executemany(f"INSERT INTO sessions ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", chunk)
            lite.execute("ANALYZE")
            lite.commit()
    else:
        import psycopg

        from agent_ledger_sdk.local.store import open_store

        open_store(db).close()
        with psycopg.connect(str(db)) as connection:
            with connection.cursor() as cursor, cursor.copy(f"COPY sessions ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            connection.commit()
            connection.autocommit = True
            connection.execute("VACUUM ANALYZE")
    return time.perf_counter() - began


def backfill_tags(db: Union[str, Path]) -> None:
    """Rows written straight into ``sessions`` get their tag index rows as the service would write them."""
    from agent_ledger_sdk.local.store import open_store

    with open_store(db) as store, store.write(None) as tx:
        tx.rebuild_session_tags()


def list_cases(count: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, what it reads, filter) of every measured list: ``list`` (the API and CLI) or ``find`` (dashboard)."""
    middle = EPOCH + datetime.timedelta(seconds=count // 2)
    hour_ago = stamp(EPOCH + datetime.timedelta(seconds=count - 3600))
    return [
        ("newest 50, no filter", "list", {}),
        ("agent, common (1 in 200)", "list", {"agent_name": "agent-7"}),
        ("agent, rare (1 in 20,000)", "list", {"agent_name": RARE_AGENT}),
        ("status running (rare, 0.1%)", "list", {"status": "running"}),
        ("status error (2.9%)", "list", {"status": "error"}),
        ("status success (common)", "list", {"status": "success"}),
        ("user (1 in 10,000)", "list", {"user_id": "user-4242"}),
        ("tag, common (1 in 20)", "list", {"tags": ("t3",)}),
        ("tag, rare (1 in 10,000)", "list", {"tags": (RARE_TAG,)}),
        ("since an hour ago", "list", {"started_after": hour_ago}),
        (
            "one hour, mid-ledger",
            "list",
            {"started_after": stamp(middle), "started_before": stamp(middle + datetime.timedelta(hours=1))},
        ),
        ("until mid-ledger", "list", {"started_before": stamp(middle)}),
        ("agent common + status error", "list", {"agent_name": "agent-7", "status": "error"}),
        ("agent rare + status running", "list", {"agent_name": RARE_AGENT, "status": "running"}),
        ("user + status error", "list", {"user_id": "user-4243", "status": "error"}),
        (
            "agent + one hour, mid-ledger",
            "list",
            {
                "agent_name": "agent-7",
                "started_after": stamp(middle),
                "started_before": stamp(middle + datetime.timedelta(hours=1)),
            },
        ),
        ("page 2000 deep (cursor)", "list", {"before_seq": count // 2}),
        ("dashboard: newest 50", "find", {}),
        ("dashboard: min cost $10 (rare)", "find", {"min_cost": Decimal(10)}),
        ("dashboard: min cost $0.01 (common)", "find", {"min_cost": Decimal("0.01")}),
        ("dashboard: agent + status error", "find", {"agent_name": "agent-7", "status": "error"}),
        ("dashboard: agent rare + min cost", "find", {"agent_name": RARE_AGENT, "min_cost": Decimal("0.01")}),
        ("dashboard: newer than a cursor", "find", {"after_seq": count // 2}),
        ("dashboard: tag rare + status error", "find", {"tags": (RARE_TAG,), "status": "error"}),
        ("dashboard: last hour + min cost $0.1", "find", {"started_after": hour_ago, "min_cost": Decimal("0.1")}),
    ]


def plan_of(store: Any, statement: str, params: Sequence[Any], postgres: bool) -> str:
    """The indexes a statement's plan reads (EXPLAIN QUERY PLAN / EXPLAIN), and whether it sorts."""
    from agent_ledger_sdk.local.store.sql import POSTGRES

    with store.read() as tx:
        if postgres:
            rows = tx._db.execute("EXPLAIN " + POSTGRES.sql(statement), tuple(params)).fetchall()
            return " / ".join(r["QUERY PLAN"].strip() for r in rows)
        rows = tx._db.execute("EXPLAIN QUERY PLAN " + statement, tuple(params)).fetchall()
        return " / ".join(r["detail"] for r in rows)


def lists(backends: Backends, backend: str, count: int, repeats: int) -> list[dict[str, Any]]:
    from agent_ledger_sdk.local.records import SessionQuery
    from agent_ledger_sdk.local.service import LedgerService
    from agent_ledger_sdk.local.store import open_store
    from agent_ledger_sdk.local.store.sql import SessionSearch, Tx

    db = backends.fresh(backend)
    filled = fill_sessions(db, count)
    backfill_tags(db)
    print(f"  {backend}: {count:,} sessions written in {filled:.0f} s", flush=True)
    results = []
    with LedgerService(open_store(db)) as service:
        for name, kind, where in list_cases(count):
            seen: list[tuple[str, tuple[Any, ...]]] = []
            original = Tx._all

            def recording(
                self: Any, statement: str, params: Sequence[Any] = (), seen: list[Any] = seen, original: Any = original
            ) -> Any:
                seen.append((statement, tuple(params)))
                return original(self, statement, params)

            def call(kind: str = kind, where: dict[str, Any] = where) -> int:
                if kind == "list":
                    filters = {k: v for k, v in where.items() if k != "before_seq"}
                    query = SessionQuery(limit=50, workspace=WORKSPACE, cursor=where.get("before_seq"), **filters)
                    return len(service.list_sessions(query)["sessions"])
                search = SessionSearch(workspace=WORKSPACE, **{k: v for k, v in where.items() if v is not None})
                return len(service.find_sessions(search, 50)["sessions"])

            Tx._all = recording  # type: ignore[method-assign]
            try:
                found = call()
            finally:
                Tx._all = original  # type: ignore[method-assign]
            statement, params = [(s, p) for s, p in seen if "SELECT sessions.*" in s][-1]
            plan = plan_of(service.store, statement, params, backend == "postgresql")
            samples = []
            for _ in range(repeats):
                began = time.perf_counter()
                call()
                samples.append((time.perf_counter() - began) * 1000)
            result = {
                "backend": backend,
                "case": name,
                "found": found,
                "p50_ms": statistics.median(samples),
                "p99_ms": percentile(samples, 0.99),
                "plan": plan,
            }
            print(f"    {name}: {result['p50_ms']:.2f} / {result['p99_ms']:.2f} ms ({found} found) {plan}", flush=True)
            results.append(result)
    return results


# -- a large session read while ingesting ------------------------------------------------------------


def fill_big_session(db: Union[str, Path], events: int) -> str:
    """One session of ``events`` llm_call events written straight into the database; its id."""
    from agent_ledger_sdk.local.store import open_store
    from agent_ledger_sdk.local.store.sql import EventRow

    session_id = str(uuid.uuid4())
    payloads = [json.dumps(llm_event(step), separators=(",", ":")) for step in range(events)]
    with open_store(db) as store:
        with store.write(WORKSPACE) as tx:
            tx.insert_session(
                {
                    "id": session_id,
                    "workspace": WORKSPACE,
                    "agent_name": "big",
                    "status": "success",
                    "started_at": stamp(EPOCH),
                    "event_count": events,
                    "cost": str(Decimal("0.0015") * events),
                }
            )
        for first in range(0, events, 10_000):
            with store.write(WORKSPACE) as tx:
                tx.insert_events(
                    session_id,
                    stamp(EPOCH),
                    (
                        EventRow(s, "llm_call", payloads[s], Decimal("0.0015"), "priced", False, None)
                        for s in range(first, min(events, first + 10_000))
                    ),
                )
    return session_id


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def ingest_latencies(url: str, key: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(base_url=url, headers={"x-api-key": key}, timeout=60) as http:
        session = http.post("/v1/sessions", json={"agentName": "ingesting"}).json()["id"]
        step = 0
        while not stop.is_set():
            batch = {"sessionId": session, "events": [llm_event(step + i) for i in range(100)]}
            step += 100
            began = time.perf_counter()
            http.post("/v1/events", json=batch).raise_for_status()
            out.append((time.perf_counter() - began) * 1000)


def stall(backends: Backends, backend: str, events: int, scratch: Path, rounds: int) -> dict[str, Any]:
    db = backends.fresh(backend)
    key = prepare(db, 1)[0]
    session_id = fill_big_session(db, events)
    alone: list[float] = []
    during: list[float] = []
    pages: list[float] = []
    sizes: list[int] = []
    with Replicas(db, 1, scratch) as replicas:
        url = replicas.urls[0]
        before_rss = peak_rss_mib(replicas.pids[0])
        for _ in range(rounds):
            stop = threading.Event()
            samples: list[float] = []
            worker = threading.Thread(target=ingest_latencies, args=(url, key, stop, samples))
            worker.start()
            time.sleep(2.0)
            stop.set()
            worker.join()
            alone += samples[2:]
            stop = threading.Event()
            samples = []
            worker = threading.Thread(target=ingest_latencies, args=(url, key, stop, samples))
            worker.start()
            time.sleep(0.3)
            read_began = time.perf_counter()
            with httpx.Client(base_url=url, headers={"x-api-key": key}, timeout=120) as http:
                cursor: Optional[str] = None
                read = 0
                while True:
                    params: dict[str, Any] = {"eventsLimit": 2000}
                    if cursor:
                        params["eventsCursor"] = cursor
                    began = time.perf_counter()
                    response = http.get(f"/v1/sessions/{session_id}", params=params)
                    pages.append((time.perf_counter() - began) * 1000)
                    response.raise_for_status()
                    sizes.append(len(response.content))
                    page = response.json()
                    read += len(page["events"])
                    cursor = page["nextEventsCursor"]
                    if cursor is None:
                        break
            read_s = time.perf_counter() - read_began
            stop.set()
            worker.join()
            during += samples
            assert read == events, (read, events)
        peak = peak_rss_mib(replicas.pids[0])
        errors = replicas.server_errors()
        if errors:
            raise RuntimeError(f"the server logged errors: {errors[:3]}")
    return {
        "backend": backend,
        "events": events,
        "pages": len(pages) // rounds,
        "page_p50_ms": statistics.median(pages),
        "page_max_ms": max(pages),
        "page_bytes_max": max(sizes),
        "read_s": read_s,
        "ingest_alone_p50_ms": statistics.median(alone),
        "ingest_alone_p99_ms": percentile(alone, 0.99),
        "ingest_during_p50_ms": statistics.median(during),
        "ingest_during_p99_ms": percentile(during, 0.99),
        "ingest_during_max_ms": max(during),
        "server_peak_rss_mib": peak,
        "server_rss_before_mib": before_rss,
    }


# -- the reservation round trip ----------------------------------------------------------------------


def reserve(backends: Backends, backend: str, calls: int, scratch: Path) -> dict[str, Any]:
    from ledger_scale import RESERVING_AGENT

    from agent_ledger_sdk import AgentLedgerClient

    db = backends.fresh(backend)
    key = prepare(db, 1)[0]
    with Replicas(db, 1, scratch) as replicas:
        url = replicas.urls[0]
        raw: list[float] = []
        with httpx.Client(base_url=url, headers={"x-api-key": key}, timeout=60) as http:
            session = http.post("/v1/sessions", json={"agentName": RESERVING_AGENT}).json()["id"]
            body = {"sessionId": session, "provider": "test", "model": "flat", "maxCostUsd": 0.001}
            for n in range(calls + 50):
                began = time.perf_counter()
                response = http.post("/v1/reservations", json=body)
                took = (time.perf_counter() - began) * 1000
                assert response.status_code == 201, response.text
                if n >= 50:  # warm
                    raw.append(took)
                http.delete(f"/v1/reservations/{response.json()['id']}").raise_for_status()
        sdk: list[float] = []
        client = AgentLedgerClient(api_key=key, base_url=url)
        gc.collect()
        with client.session(RESERVING_AGENT):
            for n in range(calls + 50):
                began = time.perf_counter()
                with client.llm_call(provider="test", model="flat", prompt="hi", max_cost_usd=0.001) as call:
                    call.record(response="ok", tokens_in=1, tokens_out=1)
                if n >= 50:
                    sdk.append((time.perf_counter() - began) * 1000)
        client.flush(30)
        client.close()
        sdk_async = asyncio.run(_async_sdk_calls(key, url, calls))
        errors = replicas.server_errors()
        if errors:
            raise RuntimeError(f"the server logged errors: {errors[:3]}")
    return {
        "backend": backend,
        "calls": calls,
        "raw_p50_ms": statistics.median(raw),
        "raw_p99_ms": percentile(raw, 0.99),
        "sdk_p50_ms": statistics.median(sdk),
        "sdk_p99_ms": percentile(sdk, 0.99),
        "async_sdk_p50_ms": statistics.median(sdk_async),
        "async_sdk_p99_ms": percentile(sdk_async, 0.99),
    }


async def _async_sdk_calls(key: str, url: str, calls: int) -> list[float]:
    """The same calls from ``AsyncAgentLedgerClient`` (``async with llm_call``), on one event loop."""
    from ledger_scale import RESERVING_AGENT

    from agent_ledger_sdk import AsyncAgentLedgerClient

    client = AsyncAgentLedgerClient(api_key=key, base_url=url)
    took: list[float] = []
    gc.collect()
    async with client.session(RESERVING_AGENT):
        for n in range(calls + 50):
            began = time.perf_counter()
            async with client.llm_call(provider="test", model="flat", prompt="hi", max_cost_usd=0.001) as call:
                call.record(response="ok", tokens_in=1, tokens_out=1)
            if n >= 50:
                took.append((time.perf_counter() - began) * 1000)
    await client.aflush(30)
    await client.aclose()
    return took


# -- the report -------------------------------------------------------------------------------------------


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    lines = []
    if results.get("lists"):
        backends = sorted({r["backend"] for r in results["lists"]}, reverse=True)
        lines += ["| filter | " + " | ".join(f"{b} p50 / p99" for b in backends) + " |"]
        lines += ["|---|" + "---|" * len(backends)]
        cases = list(dict.fromkeys(r["case"] for r in results["lists"]))
        for case in cases:
            cells = []
            for b in backends:
                r = next((x for x in results["lists"] if x["backend"] == b and x["case"] == case), None)
                cells.append(f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f} ms" if r else "-")
            lines.append(f"| {case} | " + " | ".join(cells) + " |")
        lines.append("")
    if results.get("stall"):
        lines += [
            "| backend | events | pages | page p50 / max | largest page | ingest p50 / p99 alone "
            "| ingest p50 / p99 / max during the read | server peak RSS |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in results["stall"]:
            lines.append(
                f"| {r['backend']} | {r['events']:,} | {r['pages']} | {r['page_p50_ms']:.0f} / {r['page_max_ms']:.0f} ms"
                f" | {r['page_bytes_max'] / 1e6:.2f} MB | {r['ingest_alone_p50_ms']:.1f} / {r['ingest_alone_p99_ms']:.1f} ms"
                f" | {r['ingest_during_p50_ms']:.1f} / {r['ingest_during_p99_ms']:.1f} / "
                f"{r['ingest_during_max_ms']:.0f} ms | {r['server_peak_rss_mib']:.0f} MiB |"
            )
        lines.append("")
    if results.get("reserve"):
        lines += [
            "| backend | reservation, raw httpx, p50 / p99 | SDK `llm_call` block with a budget, p50 / p99 "
            "| the same, async client, p50 / p99 |",
            "|---|---|---|---|",
        ]
        for r in results["reserve"]:
            lines.append(
                f"| {r['backend']} | {r['raw_p50_ms'] * 1000:.0f} / {r['raw_p99_ms'] * 1000:.0f} µs"
                f" | {r['sdk_p50_ms'] * 1000:.0f} / {r['sdk_p99_ms'] * 1000:.0f} µs"
                f" | {r['async_sdk_p50_ms'] * 1000:.0f} / {r['async_sdk_p99_ms'] * 1000:.0f} µs |"
            )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1e5 sessions, a 20,000-event session (a smoke run)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file, as JSON")
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--parts", default="lists,stall,reserve", help="comma-separated: lists, stall, reserve")
    parser.add_argument("--sessions", type=int, help="sessions of the list measures (default 1e6; --quick 1e5)")
    args = parser.parse_args(argv)
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    count = args.sessions or (100_000 if args.quick else 1_000_000)
    events = 20_000 if args.quick else 80_000
    repeats = 20 if args.quick else 50
    calls = 300 if args.quick else 2000
    random.seed(7)
    load = os.getloadavg()
    results: dict[str, list[dict[str, Any]]] = {"lists": [], "stall": [], "reserve": []}
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="agent-ledger-reads-")))
        os.environ["AGENT_LEDGER_HOME"] = str(scratch / "home")
        backends = Backends(scratch, stack, wanted)
        header = (
            f"{platform.platform()}, {os.cpu_count()} cores, {cpu_model()}, Python {platform.python_version()}, "
            f"load average {load[0]:.1f} at the start; " + ", ".join(f"{k} {v}" for k, v in backends.versions.items())
        )
        print(header, flush=True)
        began = time.perf_counter()
        for backend in wanted:
            if "reserve" in parts:
                results["reserve"].append(reserve(backends, backend, calls, scratch))
                print(f"  {results['reserve'][-1]}", flush=True)
            if "stall" in parts:
                results["stall"].append(stall(backends, backend, events, scratch, 1 if args.quick else 3))
                print(f"  {results['stall'][-1]}", flush=True)
            if "lists" in parts:
                results["lists"] += lists(backends, backend, count, repeats)
        took = time.perf_counter() - began
    print(f"\n{header}; load average {os.getloadavg()[0]:.1f} at the end; {took:.0f} s\n")
    print(table(results))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": {"platform": platform.platform(), "cores": os.cpu_count(), "cpu": cpu_model()},
                    "python": platform.python_version(),
                    "load": {"start": load[0], "end": os.getloadavg()[0]},
                    "versions": backends.versions,
                    "sessions": count,
                    "quick": args.quick,
                    "results": results,
                    "took_s": took,
                },
                indent=2,
                default=str,
            )
        )
    return 0


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


if __name__ == "__main__":
    sys.exit(main())
