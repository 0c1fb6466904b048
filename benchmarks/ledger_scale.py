"""The ledger server at scale: ingest, reservations and reads, on SQLite and PostgreSQL, with 1 and 4 replicas.

    python benchmarks/ledger_scale.py                 # the full run: up to 1e6 stored events (several minutes)
    python benchmarks/ledger_scale.py --quick         # a smoke run: shorter windows, up to 1e5 events
    python benchmarks/ledger_scale.py --json out.json # the figures as JSON too

Not part of ``benchmarks/run.py`` (which measures the SDK, and takes minutes already). Every server is a
real ``agent-ledger serve`` process (a replica: its own port, its own home), on a real database: a SQLite
file the replicas share, or a database on a throwaway PostgreSQL server (``tests/postgres_server.py``: the
``initdb``/``pg_ctl`` on PATH or in /usr/lib/postgresql/*/bin, or ``AGENT_LEDGER_TEST_POSTGRES``). The clients
are threads of this process, each with its own connection, spread over the replicas round robin.

Measures (see docs/performance.md, "The ledger server at scale"):

- ingest: events/s that ``POST /v1/events`` acknowledges, batches of 100 priced ``llm_call`` events, from
  ``--clients`` clients at once, for 1 and 4 replicas (and 4 replicas with the clients in 4 workspaces: a
  PostgreSQL replica serialises the writes of a workspace, not of the database);
- reservations: latency of ``POST /v1/reservations`` (p50, p99) under 16 clients, each releasing its
  reservation (untimed) before the next;
- scale: on databases of 1e4, 1e5 and 1e6 events (and as many reservations of the last day), filled in big
  batches (SQLite: the store's own SQL; PostgreSQL: COPY), then measured over HTTP one request at a time:
  ``GET /v1/sessions?limit=50``, ``GET /v1/sessions/{id}`` of a random 100-event session, ``POST /v1/events``
  of a batch of 100 and ``POST /v1/reservations``; and how each grows with size.

The throughput windows of each measure alternate with the others', and the scale measures visit every size
in turn, so that the load of other jobs on the machine falls on all alike; the table shows that load.
A 500 in any replica's log fails the run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import os
import platform
import random
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Optional, Union

import httpx

if TYPE_CHECKING:
    from agent_ledger_sdk.local.store.sql import EventRow

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.postgres_server: the throwaway PostgreSQL of the tests

BATCH = 100  # events a request
EVENTS_PER_SESSION = 100  # sessions the fill makes, and the one a read fetches
RESERVE_CLIENTS = 16
START_TIMEOUT = 60.0
AGENT = "bench-agent"
RESERVING_AGENT = "bench-reserver"


def llm_event(step: int) -> dict[str, Any]:
    """An llm_call as an instrumented agent sends it (about 280 bytes of JSON): priced at $1 per million tokens."""
    return {
        "type": "llm_call",
        "stepIndex": step,
        "provider": "test",
        "model": "flat",
        "tokensIn": 1200,
        "tokensOut": 300,
        "latencyMs": 812.5,
        "startedAt": "2026-01-01T00:00:00.000Z",
        "spanId": f"{step:016x}",
        "prompt": "Summarise the ticket in one line.",
        "response": "The customer cannot log in since the update.",
    }


_STEP_MARK = -987_654_321  # stand-ins in a batch's template, replaced by each batch's own values
_SPAN_MARK = "span-mark-123456"


class StepBatches:
    """A session's batches of llm_calls as an instrumented agent sends them: each batch's ``stepIndex``es follow
    the last batch's (a session's steps only grow; so does the position the ledger indexes a session's events
    by), and every ``spanId`` is new. The same batch sent again and again would write its hundred steps into
    a hundred places of that index, a page each, which no agent does. Each body is made from a template in
    microseconds, so that the clients leave the cores to the server."""

    def __init__(self, session: str, size: int, event: Callable[[int], dict[str, Any]] = llm_event) -> None:
        marked = [{**event(k), "stepIndex": _STEP_MARK, "spanId": _SPAN_MARK} for k in range(size)]
        text = json.dumps({"sessionId": session, "events": marked}).replace("%", "%%")
        self._template = text.replace(str(_STEP_MARK), "%d").replace(json.dumps(_SPAN_MARK), '"%016x"').encode()
        self._size = size
        self._next = 0

    def body(self) -> bytes:
        """The next batch: steps ``n`` to ``n + size - 1``, each its step's ``spanId`` (as ``llm_event`` makes it)."""
        first = self._next
        self._next += self._size
        return self._template % tuple(value for step in range(first, first + self._size) for value in (step, step))


def percentile(samples: Sequence[float], share: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


# -- processes and CPU --------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process and its reaped children (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (/proc/stat), to see who used the cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return (total - idle) / os.sysconf("SC_CLK_TCK"), total / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of ``root`` (its reaped children included) and of its live children: a PostgreSQL server."""
    total = cpu_seconds(root)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == root:
            total += cpu_seconds(int(stat.parent.name))
    return total


@dataclass
class CpuWindow:
    """Who used the CPU during a measure, in cores on average: this process (the clients), the replicas, the
    PostgreSQL server (when it is one this benchmark started) and the whole machine (others included)."""

    server_pids: list[int]
    postmaster: Optional[int] = None
    started: float = 0.0
    marks: dict[str, float] = field(default_factory=dict)
    result: dict[str, Optional[float]] = field(default_factory=dict)

    def _now(self) -> dict[str, float]:
        found = {
            "clients": time.process_time(),
            "servers": sum(cpu_seconds(pid) for pid in self.server_pids),
            "machine": machine_busy()[0],
        }
        if self.postmaster is not None:
            found["database"] = tree_cpu_seconds(self.postmaster)
        return found

    def __enter__(self) -> CpuWindow:
        self.started = time.perf_counter()
        self.marks = self._now()
        return self

    def __exit__(self, *exc_info: object) -> None:
        wall = time.perf_counter() - self.started
        now = self._now()
        self.result = {k: round((now[k] - self.marks[k]) / wall, 2) for k in now}
        self.result.setdefault("database", None)  # SQLite: inside the replicas
        ours = sum(v for k, v in self.result.items() if k != "machine" and v is not None)
        self.result["others"] = round(max(0.0, (self.result["machine"] or 0.0) - ours), 2)  # what else ran
        self.result["cores"] = os.cpu_count() or 1


class Replicas:
    """``count`` ``agent-ledger serve`` processes on one database, each on a port and a home of its own."""

    def __init__(
        self, db: Union[str, Path], count: int, scratch: Path, postmaster: Optional[int] = None, workers: int = 1
    ) -> None:
        self.db, self.count, self.scratch, self.workers = db, count, scratch, workers
        self.postmaster = postmaster  # the PostgreSQL server's process, to count its CPU
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[IO[bytes]] = []
        self.urls: list[str] = []

    def __enter__(self) -> Replicas:
        try:
            for number in range(self.count):
                home = Path(tempfile.mkdtemp(prefix=f"replica-{number}-", dir=self.scratch))
                sink: IO[bytes] = (home / "serve.log").open("wb")
                self.logs.append(sink)
                self.processes.append(
                    subprocess.Popen(
                        [
                            *(sys.executable, "-m", "agent_ledger_sdk.cli", "serve", "--db", str(self.db)),
                            *("--port", "0", "--workers", str(self.workers)),
                        ],
                        stdin=subprocess.DEVNULL,
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                        env={**os.environ, "AGENT_LEDGER_HOME": str(home), "PYTHONUNBUFFERED": "1"},
                    )
                )
            deadline = time.monotonic() + START_TIMEOUT
            for process, sink in zip(self.processes, self.logs):
                self.urls.append(self._wait(process, Path(sink.name), deadline))
        except BaseException:
            self.__exit__()
            raise
        return self

    @staticmethod
    def _wait(process: subprocess.Popen[bytes], log: Path, deadline: float) -> str:
        url = ""
        while not url:
            found = re.search(r"listening on (http://\S+)", log.read_text(errors="replace"))
            if found:
                url = found.group(1)
            elif process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"agent-ledger serve did not start ({process.returncode}):\n{log.read_text()[-3000:]}"
                )
            else:
                time.sleep(0.05)
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} never answered /health:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)

    def server_errors(self) -> list[str]:
        found = []
        for sink in self.logs:
            text = Path(sink.name).read_text(errors="replace")
            found += [line for line in text.splitlines() if '" 500' in line or "Traceback" in line]
        return found

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def __exit__(self, *exc_info: object) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        for sink in self.logs:
            sink.close()


# -- databases ----------------------------------------------------------------------------------------


class Backends:
    """Fresh databases: SQLite files in a scratch directory, PostgreSQL databases on one throwaway server."""

    def __init__(self, scratch: Path, stack: ExitStack, wanted: Sequence[str]) -> None:
        self.scratch = scratch
        self.postgres: Any = None
        self.versions = {"sqlite": sqlite3.sqlite_version}
        if "postgresql" in wanted:
            from tests.postgres_server import ENV_URL, PostgresServer, start_postgres

            url = os.environ.get(ENV_URL)
            self.postgres = PostgresServer(url=url) if url else stack.enter_context(start_postgres())
            import psycopg

            with psycopg.connect(self.postgres.url) as connection:
                row = connection.execute("SHOW server_version").fetchone()
                self.versions["postgresql"] = row[0] if row else "?"
        self._made: list[str] = []
        stack.callback(self._drop_all)

    def postmaster(self, backend: str) -> Optional[int]:
        """The PostgreSQL server's main process, when this benchmark started it (its CPU is then counted)."""
        directory = getattr(self.postgres, "directory", None) if backend == "postgresql" else None
        if directory is None:
            return None
        return int((directory / "data" / "postmaster.pid").read_text().split()[0])

    def fresh(self, backend: str) -> Union[str, Path]:
        if backend == "sqlite":
            return Path(tempfile.mkdtemp(prefix="sqlite-", dir=self.scratch)) / "ledger.db"
        url: str = self.postgres.create_database()
        self._made.append(url)
        return url

    def _drop_all(self) -> None:
        for url in self._made:
            self.postgres.drop_database(url)


def prepare(db: Union[str, Path], workspaces: int) -> list[str]:
    """Keys for ``workspaces`` workspaces, each with the test price and a budget for the reserving agent."""
    from agent_ledger_sdk.local.pricing import Rates
    from agent_ledger_sdk.local.service import LedgerService
    from agent_ledger_sdk.local.store import open_store

    keys = []
    with LedgerService(open_store(db)) as service:
        for number in range(workspaces):
            workspace = f"bench-{number}"
            keys.append(service.create_key("bench", workspace).secret)
            service.set_price(workspace, "test/flat", Rates(Decimal(1), Decimal(1), None, None))
            service.set_budget(workspace, RESERVING_AGENT, Decimal(1_000_000))
    return keys


def start_session(url: str, key: str, agent: str = AGENT) -> str:
    response = httpx.post(f"{url}/v1/sessions", json={"agentName": agent}, headers={"x-api-key": key}, timeout=60)
    response.raise_for_status()
    return str(response.json()["id"])


def run_clients(count: int, work: Callable[[int], None]) -> None:
    failures: list[BaseException] = []

    def run(number: int) -> None:
        try:
            work(number)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} clients failed; the first: {failures[0]!r}") from failures[0]


# -- measures ---------------------------------------------------------------------------------------


def timed_window(
    replicas: Replicas,
    clients: int,
    work: Callable[[int], None],
    seconds: float,
    barrier: threading.Barrier,
    go: threading.Event,
    stop: list[float],
) -> tuple[float, Any]:
    """Run ``work`` in ``clients`` threads for one window of ``seconds`` once they are all ready (``barrier``);
    return the window's length and the CPU each party used in it."""
    runner = threading.Thread(target=run_clients, args=(clients, work), daemon=True)
    runner.start()
    barrier.wait()
    with CpuWindow(replicas.pids, replicas.postmaster) as cpu:
        began = time.perf_counter()
        stop[0] = began + seconds
        go.set()
        runner.join()
        elapsed = time.perf_counter() - began
    return elapsed, cpu.result


def ingest(replicas: Replicas, keys: Sequence[str], clients: int, seconds: float) -> dict[str, Any]:
    """Events/s acknowledged (202) by the replicas, ``clients`` clients posting batches of BATCH at once."""
    bodies = []
    for number in range(clients):
        url, key = replicas.urls[number % len(replicas.urls)], keys[number % len(keys)]
        bodies.append((url, key, StepBatches(start_session(url, key), BATCH)))
    barrier = threading.Barrier(clients + 1)
    go = threading.Event()  # set once the window's end is known
    stop = [0.0]
    accepted = [0] * clients
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []

    def work(number: int) -> None:
        url, key, batches = bodies[number]
        headers = {"x-api-key": key, "content-type": "application/json"}
        with httpx.Client(base_url=url, headers=headers, timeout=120) as http:
            for _ in range(2):  # warm: a connection, the server's caches
                http.post("/v1/events", content=batches.body()).raise_for_status()
            barrier.wait()
            go.wait()
            while time.perf_counter() < stop[0]:
                body = batches.body()
                began = time.perf_counter()
                response = http.post("/v1/events", content=body)
                latencies[number].append(time.perf_counter() - began)
                if response.status_code == 202:
                    accepted[number] += BATCH
                else:
                    errors.append(f"{response.status_code} {response.text[:200]}")

    elapsed, cpu_result = timed_window(replicas, clients, work, seconds, barrier, go, stop)
    if errors:
        raise RuntimeError(f"ingest: {len(errors)} requests not acknowledged; the first: {errors[0]}")
    every = [x for per in latencies for x in per]
    return {"events_per_s": sum(accepted) / elapsed, "latencies": every, "cpu": cpu_result}


def reservations(replicas: Replicas, key: str, clients: int, seconds: float) -> dict[str, Any]:
    """Latency of POST /v1/reservations under ``clients`` clients at once (each releases before it reserves again)."""
    sessions = [start_session(replicas.urls[n % len(replicas.urls)], key, RESERVING_AGENT) for n in range(clients)]
    barrier = threading.Barrier(clients + 1)
    go = threading.Event()  # set once the window's end is known
    stop = [0.0]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []

    def work(number: int) -> None:
        url = replicas.urls[number % len(replicas.urls)]
        body = {"sessionId": sessions[number], "provider": "test", "model": "flat", "maxCostUsd": 0.001}
        with httpx.Client(base_url=url, headers={"x-api-key": key}, timeout=120) as http:

            def once() -> Optional[float]:
                began = time.perf_counter()
                response = http.post("/v1/reservations", json=body)
                took = time.perf_counter() - began
                if response.status_code != 201:
                    errors.append(f"{response.status_code} {response.text[:200]}")
                    return None
                released = http.delete(f"/v1/reservations/{response.json()['id']}")
                if released.status_code != 204:
                    errors.append(f"release: {released.status_code} {released.text[:200]}")
                return took

            for _ in range(3):
                once()
            barrier.wait()
            go.wait()
            while time.perf_counter() < stop[0]:
                took = once()
                if took is not None:
                    latencies[number].append(took)

    elapsed, cpu_result = timed_window(replicas, clients, work, seconds, barrier, go, stop)
    if errors:
        raise RuntimeError(f"reservations: {len(errors)} failed; the first: {errors[0]}")
    every = [x for per in latencies for x in per]
    return {"reservations_per_s": len(every) / elapsed, "latencies": every, "cpu": cpu_result}


def filled_sessions(workspace: str, count: int, first: int) -> Iterator[tuple[dict[str, Any], list[EventRow]]]:
    """``count`` ended sessions of EVENTS_PER_SESSION priced llm_call events, as the ledger stores them."""
    from agent_ledger_sdk.local.store.sql import EventRow

    payloads = [json.dumps(llm_event(step), separators=(",", ":")) for step in range(EVENTS_PER_SESSION)]
    cost = Decimal("0.0015")  # 1,500 tokens at $1 per million
    epoch = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    for n in range(first, first + count):
        moment = (epoch + datetime.timedelta(seconds=n)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        session = {
            "id": str(uuid.uuid4()),
            "workspace": workspace,
            "agent_name": f"filled-{n % 20}",
            "status": "success",
            "started_at": moment,
            "ended_at": moment,
            "tags": "[]",
            "metadata": "{}",
            "event_count": EVENTS_PER_SESSION,
            "tokens_in": 1200 * EVENTS_PER_SESSION,
            "tokens_out": 300 * EVENTS_PER_SESSION,
            "cost": str(cost * EVENTS_PER_SESSION),
        }
        events = [
            EventRow(step, "llm_call", payloads[step], cost, "priced", False, None)
            for step in range(EVENTS_PER_SESSION)
        ]
        yield session, events


def fill(db: Union[str, Path], workspace: str, sessions: int, first: int) -> tuple[list[str], float]:
    """Store ``sessions`` more sessions of EVENTS_PER_SESSION events, 100 sessions a transaction: on SQLite through
    the store's own SQL (``Tx.insert_session``, ``Tx.insert_events``: executemany), on PostgreSQL with COPY (its
    executemany inserts about 13,000 rows/s here: 1e6 events would take 80 s). Their ids, and the seconds."""
    ids: list[str] = []
    began = time.perf_counter()
    if isinstance(db, Path):
        from agent_ledger_sdk.local.store import open_store

        with open_store(db) as store:
            made = filled_sessions(workspace, sessions, first)
            for _ in range(0, sessions, 100):
                with store.write(workspace) as tx:
                    for session, events in itertools.islice(made, 100):
                        tx.insert_session(session)
                        tx.insert_events(session["id"], session["started_at"], events)
                        ids.append(session["id"])
        return ids, time.perf_counter() - began
    import psycopg

    columns = list(next(filled_sessions(workspace, 1, 0))[0])
    with psycopg.connect(str(db)) as connection:
        made = filled_sessions(workspace, sessions, first)
        for _ in range(0, sessions, 100):
            chunk = list(itertools.islice(made, 100))
            with connection.transaction(), connection.cursor() as cursor:
                with cursor.copy(f"COPY sessions ({', '.join(columns)}) FROM STDIN") as copy:
                    for session, _events in chunk:
                        copy.write_row([session[c] for c in columns])
                with cursor.copy(
                    "COPY events (session_id, step_index, position, type, payload, cost, cost_status, over_budget,"
                    " pricing_note, received_at) FROM STDIN"
                ) as copy:
                    for session, events in chunk:
                        for e in events:
                            copy.write_row(
                                (
                                    session["id"],
                                    e.step_index,
                                    e.step_index,
                                    e.type,
                                    e.payload,
                                    e.cost,
                                    e.cost_status,
                                    int(e.over_budget),
                                    e.pricing_note,
                                    session["started_at"],
                                )
                            )
            ids += [session["id"] for session, _ in chunk]
        connection.execute("ANALYZE")  # the statistics autovacuum would have gathered by now
        connection.commit()
    return ids, time.perf_counter() - began


def remember_reservations(db: Union[str, Path], workspace: str, count: int, sessions: Sequence[str]) -> None:
    """``count`` reservations of the last day, settled or released: what a workspace whose calls reserve keeps
    (a reservation is remembered for a day after it expires, so that a late DELETE still answers 204)."""
    now = datetime.datetime.now(datetime.timezone.utc)

    def rows() -> Iterator[tuple[Any, ...]]:
        for n in range(count):
            created = now - datetime.timedelta(hours=23) + datetime.timedelta(seconds=n * 82_800 / max(count, 1))
            yield (
                f"res_{n:024x}",
                workspace,
                sessions[n % len(sessions)],
                f"filled-{n % 20}",
                "test",
                "flat",
                "0.0015",
                "settled" if n % 4 else "released",
                created.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                (created + datetime.timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            )

    statement = (
        "INSERT INTO reservations (id, workspace, session_id, agent_name, provider, model, amount, state, created_at,"
        " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    if isinstance(db, Path):
        with contextlib.closing(sqlite3.connect(str(db))) as lite, lite:  # (the second: one transaction)
            lite.executemany(statement, rows())
        return
    import psycopg

    with psycopg.connect(str(db)) as connection, connection.cursor() as cursor:
        with cursor.copy(
            "COPY reservations (id, workspace, session_id, agent_name, provider, model, amount, state, created_at,"
            " expires_at) FROM STDIN"
        ) as copy:
            for row in rows():
                copy.write_row(row)
        cursor.execute("ANALYZE reservations")


def timed(
    count: int, request: Callable[[], httpx.Response], after: Callable[[httpx.Response], None] = lambda _: None
) -> list[float]:
    """Seconds each of ``count`` requests took, one after another (``after`` each, untimed); a failure stops all."""
    took = []
    for _ in range(count):
        began = time.perf_counter()
        response = request()
        took.append(time.perf_counter() - began)
        if response.status_code >= 300:
            raise RuntimeError(
                f"{response.request.method} {response.request.url}: {response.status_code} {response.text[:300]}"
            )
        after(response)
    return took


@dataclass
class Site:
    """One database filled to a size, its replica, and the latencies measured on it."""

    size: int
    replicas: Replicas
    http: httpx.Client
    stored: list[str]
    fill_s: float
    ingest: Optional[StepBatches] = None
    reserving_session: str = ""
    picks: random.Random = field(default_factory=random.Random)
    samples: dict[str, list[float]] = field(default_factory=dict)

    def measure(self, reads: int, writes: int) -> None:
        http = self.http
        reservation = {"sessionId": self.reserving_session, "provider": "test", "model": "flat", "maxCostUsd": 0.001}
        for name, count, request, after in (
            ("list_sessions_50", reads, lambda: http.get("/v1/sessions?limit=50"), None),
            ("get_session_100_events", reads, lambda: http.get(f"/v1/sessions/{self.picks.choice(self.stored)}"), None),
            ("ingest_batch_100", writes, lambda: http.post("/v1/events", content=self.next_batch()), None),
            ("reserve", writes, lambda: http.post("/v1/reservations", json=reservation), self.release),
        ):
            self.samples.setdefault(name, []).extend(timed(count, request, after or (lambda _: None)))

    def next_batch(self) -> bytes:
        assert self.ingest is not None
        return self.ingest.body()  # (made in about 40 µs, inside the timed request: a bias against the ledger)

    def release(self, granted: httpx.Response) -> None:
        """Release a reservation (untimed, as the throughput measure does), so that few are held at once."""
        self.http.delete(f"/v1/reservations/{granted.json()['id']}").raise_for_status()


def at_scale(
    backends: Backends, backend: str, sizes: Sequence[int], rounds: int, reads: int, writes: int, scratch: Path
) -> list[dict[str, Any]]:
    """Latencies (one client, one request at a time) on databases of ``sizes`` events (and as many remembered
    reservations), each with its replica; measured in ``rounds`` that visit every database in turn, so that
    a change in the machine's load falls on every size alike."""
    sites: list[Site] = []
    with ExitStack() as stack:
        for size in sizes:
            db = backends.fresh(backend)
            replicas = stack.enter_context(Replicas(db, 1, scratch, backends.postmaster(backend)))
            (key,) = prepare(db, 1)
            stored, fill_s = fill(db, "bench-0", size // EVENTS_PER_SESSION, 0)
            remember_reservations(db, "bench-0", size, stored)
            url = replicas.urls[0]
            http = stack.enter_context(httpx.Client(base_url=url, headers={"x-api-key": key}, timeout=120))
            site = Site(
                size,
                replicas,
                http,
                stored,
                fill_s,
                ingest=StepBatches(start_session(url, key), BATCH),
                reserving_session=start_session(url, key, RESERVING_AGENT),
                picks=random.Random(size),
            )
            http.headers["content-type"] = "application/json"
            page = http.get(f"/v1/sessions/{stored[0]}").json()
            assert len(page["events"]) == EVENTS_PER_SESSION, len(page["events"])
            site.measure(5, 5)  # warm
            site.samples.clear()
            sites.append(site)
            print(
                f"  {backend}: {size:,} events in {len(stored):,} sessions filled in {fill_s:.1f} s "
                f"({size / fill_s:,.0f} events/s), and {size:,} reservations of the last day",
                flush=True,
            )
        for _ in range(rounds):
            for site in sites:
                site.measure(reads, writes)
        rows = []
        for site in sites:
            errors = site.replicas.server_errors()
            if errors:
                raise RuntimeError("server errors:\n" + "\n".join(errors[:10]))
            row: dict[str, Any] = {
                "backend": backend,
                "events_stored": site.size,
                "reservations_remembered": site.size,
                "events_ingested_while_measuring": len(site.samples["ingest_batch_100"]) * BATCH,
                "fill_s": site.fill_s,
                "fill_events_per_s": site.size / site.fill_s,
            }
            for name, samples in site.samples.items():
                row[name] = {
                    "requests": len(samples),
                    "p50_ms": percentile(samples, 0.5) * 1e3,
                    "p99_ms": percentile(samples, 0.99) * 1e3,
                }
            rows.append(row)
            print(
                f"  {backend} at {site.size:,} events: "
                + ", ".join(f"{name} p50 {row[name]['p50_ms']:.2f} ms" for name in site.samples),
                flush=True,
            )
    return rows


THROUGHPUT_PLAN = (
    (1, "ingest", 1),
    (4, "ingest", 1),
    (4, "ingest", 4),
    (1, "reservations", 1),
    (4, "reservations", 1),
)


def throughput(
    backends: Backends, backend: str, clients: int, seconds: float, rounds: int, scratch: Path
) -> list[dict[str, Any]]:
    """Ingest and reservations with 1 replica and with 4, each on a database of its own; the windows of every
    measure alternate over ``rounds`` rounds, so that a change in the machine's load falls on each alike."""
    windows: dict[tuple[int, str, int], list[dict[str, Any]]] = {plan: [] for plan in THROUGHPUT_PLAN}
    with ExitStack() as stack:
        clusters = {}
        for count in (1, 4):
            db = backends.fresh(backend)
            replicas = stack.enter_context(Replicas(db, count, scratch, backends.postmaster(backend)))
            clusters[count] = (replicas, prepare(db, 4))
        for _ in range(rounds):
            for plan in THROUGHPUT_PLAN:
                count, measure, workspaces = plan
                replicas, keys = clusters[count]
                if measure == "ingest":
                    windows[plan].append(ingest(replicas, keys[:workspaces], clients, seconds))
                else:
                    windows[plan].append(reservations(replicas, keys[0], RESERVE_CLIENTS, seconds))
        for replicas, _ in clusters.values():
            errors = replicas.server_errors()
            if errors:
                raise RuntimeError("server errors:\n" + "\n".join(errors[:10]))
    rows = []
    for (count, measure, workspaces), measured in windows.items():
        rate = "events_per_s" if measure == "ingest" else "reservations_per_s"
        latencies = [x for window in measured for x in window.pop("latencies")]
        cpu = {
            k: None if measured[0]["cpu"][k] is None else round(statistics.mean(w["cpu"][k] for w in measured), 2)
            for k in measured[0]["cpu"]
        }
        row = {
            "backend": backend,
            "replicas": count,
            "measure": measure
            if measure == "reservations"
            else f"ingest, {workspaces} workspace{'s' * (workspaces > 1)}",
            "clients": clients if measure == "ingest" else RESERVE_CLIENTS,
            rate: statistics.median(w[rate] for w in measured),
            f"{rate}_windows": [round(w[rate], 1) for w in measured],
            "requests": len(latencies),
            "p50_ms": percentile(latencies, 0.5) * 1e3,
            "p99_ms": percentile(latencies, 0.99) * 1e3,
            "cpu": cpu,
        }
        rows.append(row)
        print(
            f"  {backend}, {count} replica(s), {row['measure']}: {row[rate]:,.0f}/s {row[f'{rate}_windows']}",
            flush=True,
        )
    return rows


# -- report -------------------------------------------------------------------------------------------


def versions(backends: Backends) -> dict[str, str]:
    from importlib.metadata import version

    found = {"python": platform.python_version(), **{f"db:{k}": v for k, v in backends.versions.items()}}
    for package in ("agent-ledger-sdk", "starlette", "uvicorn", "httpx", "psycopg", "psycopg-pool"):
        try:
            found[package] = version(package)
        except Exception:
            found[package] = "-"
    return found


def table(throughputs: list[dict[str, Any]], scale: list[dict[str, Any]]) -> str:
    lines = [
        "| backend | replicas | measure | result (median of the windows) | a request, p50 / p99 | "
        "cores busy: clients / replicas / PostgreSQL / other processes |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in throughputs:
        cpu = row["cpu"]
        if "events_per_s" in row:
            result = f"{row['events_per_s']:,.0f} events/s"
        else:
            result = f"{row['reservations_per_s']:,.0f} reservations/s"
        database = "-" if cpu["database"] is None else cpu["database"]
        lines.append(
            f"| {row['backend']} | {row['replicas']} | {row['measure']} ({row['clients']} clients) | {result} | "
            f"{row['p50_ms']:.1f} / {row['p99_ms']:.1f} ms | {cpu['clients']} / {cpu['servers']} / {database} / "
            f"{cpu['others']} |"
        )
    names = (
        ("list_sessions_50", "list 50 sessions"),
        ("get_session_100_events", "one 100-event session"),
        ("ingest_batch_100", "ingest a batch of 100"),
        ("reserve", "reserve"),
    )
    lines += [
        "",
        "| backend | events (and reservations) stored | filled at | "
        + " | ".join(f"{title} p50 / p99" for _, title in names)
        + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for row in scale:
        cells = [f"{row[k]['p50_ms']:.2f} / {row[k]['p99_ms']:.2f} ms" for k, _ in names]
        lines.append(
            f"| {row['backend']} | {row['events_stored']:,} | {row['fill_events_per_s']:,.0f} events/s | "
            + " | ".join(cells)
            + " |"
        )
    for backend in dict.fromkeys(row["backend"] for row in scale):
        mine = [row for row in scale if row["backend"] == backend]
        if len(mine) > 1:
            first, last = mine[0], mine[-1]
            ratios = ", ".join(f"{title} {last[k]['p50_ms'] / first[k]['p50_ms']:.2f}x" for k, title in names)
            lines.append(
                f"\n{backend}, p50 at {last['events_stored']:,} over p50 at {first['events_stored']:,}: {ratios}"
            )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short windows and up to 1e5 stored events (a smoke run)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file, as JSON")
    parser.add_argument("--clients", type=int, default=16, help="concurrent ingest clients (default: 16)")
    parser.add_argument(
        "--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql (default: both)"
    )
    args = parser.parse_args(argv)
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    seconds = 2.0 if args.quick else 6.0  # a window of a throughput measure
    rounds = 2 if args.quick else 3  # windows of each throughput measure, alternating with the others
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    scale_rounds = 4 if args.quick else 10  # rounds over the databases of every size
    reads, writes = (20, 5) if args.quick else (40, 10)  # requests of each kind, per round and database
    load = os.getloadavg()[0]
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="agent-ledger-scale-")))
        os.environ["AGENT_LEDGER_HOME"] = str(scratch / "home")  # never this machine's own key file
        backends = Backends(scratch, stack, wanted)
        found = versions(backends)
        header = f"{platform.platform()}, {os.cpu_count()} cores, load average {load:.1f} at the start; " + ", ".join(
            f"{k} {v}" for k, v in found.items()
        )
        print(header, flush=True)
        began = time.perf_counter()
        throughputs: list[dict[str, Any]] = []
        scale: list[dict[str, Any]] = []
        for backend in wanted:
            throughputs += throughput(backends, backend, args.clients, seconds, rounds, scratch)
        for backend in wanted:
            scale += at_scale(backends, backend, sizes, scale_rounds, reads, writes, scratch)
        took = time.perf_counter() - began
    print(f"\n{header}; load average {os.getloadavg()[0]:.1f} at the end; {took:.0f} s\n")
    print(table(throughputs, scale))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": {"platform": platform.platform(), "cores": os.cpu_count(), "load_at_start": load},
                    "versions": found,
                    "quick": args.quick,
                    "seconds_per_window": seconds,
                    "windows_per_measure": rounds,
                    "scale_rounds": scale_rounds,
                    "requests_per_round": {"reads": reads, "writes": writes},
                    "throughput": throughputs,
                    "scale": scale,
                    "took_s": took,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
