"""Ledger ingest against its floors, in one run: raw SQLite, a raw loopback HTTP exchange, the ledger over HTTP.

    python benchmarks/ingest_floor.py                  # about 4 minutes on 2 cores
    python benchmarks/ingest_floor.py --quick          # about 1.5 minutes: shorter windows, fewer rounds
    python benchmarks/ingest_floor.py --json out.json  # the figures as JSON too
    python benchmarks/ingest_floor.py --backends sqlite   # skip PostgreSQL

What it measures (docs/performance.md, "Ledger ingest against its floors"):

- **raw SQLite, the floor**: one thread of this process, on a file made by the ledger's own migrations (same
  schema, same indexes, same pragmas: WAL, synchronous=NORMAL, foreign keys on), doing what a batch of 100
  ``llm_call`` events is at least: ``BEGIN IMMEDIATE``, read the session, one ``executemany`` of the 100 event
  rows (their payload text made beforehand), update the session's counters, ``COMMIT``. Events/s. Each
  batch's steps follow the last one's, as an agent's do (the clients below send the same).
- **ledger, batches of 100**: one ``agent-ledger serve`` process on a SQLite file, ``--clients`` clients at
  once posting batches of 100 ``llm_call``s (each to a session of its own, its steps growing batch after
  batch: ``ledger_scale.StepBatches``); events/s acknowledged (202) and the ratio to the floor. The clients
  are raw keep-alive sockets sending requests made from a template (about 40 µs of CPU a request), so that
  the 2 cores go to the server; the same load is also sent by the SDK's HTTP library
  (httpx, one ``Client`` a thread, as ``ledger_scale.py`` does): the "published client" column.
- **batch 1**: one client, one event a request, one request at a time. Its p50 round trip, and the server
  time: the mean time inside the ASGI app, from the request reaching the app to its last body byte sent (the
  ledger's own ``agent_ledger_http_request_duration_seconds`` histogram, sum / count, read from ``/metrics``),
  and the server process's CPU per request (``/proc``). The floor: the same request bytes to a raw ASGI app
  on the same uvicorn (a 202 with a 30-byte JSON body, no routing, no work), p50 round trip and CPU.
- **PostgreSQL, 1 / 2 / 4 replicas**: batches of 100 from ``--clients`` clients in one workspace spread over
  the replicas, on a throwaway server (``tests/postgres_server.py``); events/s for each count: the curve.

The windows of the SQLite measures alternate (floor, ledger, published client, batch 1, raw HTTP) over the
rounds, and each figure is the median of its windows: the load of other jobs falls on all alike. The load
average and the CPU each party used are printed with the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Optional

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ledger_scale import (
    BATCH,
    Backends,
    Replicas,
    StepBatches,
    cpu_seconds,
    llm_event,
    percentile,
    prepare,
    start_session,
    tree_cpu_seconds,
)

WORKERS = 2  # the ledger's processes in the second measure of batches of 100: one a core here

# -- a client that costs next to nothing ---------------------------------------------------------


class RawClient:
    """HTTP/1.1 keep-alive over one socket: sends prebuilt request bytes, reads the status and the body."""

    def __init__(self, url: str) -> None:
        host, port = url.split("//", 1)[1].rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    @staticmethod
    def request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
        lines = [f"POST {path} HTTP/1.1", "host: 127.0.0.1", f"content-length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def exchange(self, request: bytes) -> int:
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        status = int(head[9:12])
        found = re.search(rb"(?i)\r\ncontent-length: *([0-9]+)", head)
        length = int(found.group(1)) if found else 0
        while len(rest) < length:
            self.buffer = rest
            self._read()
            rest = self.buffer
        self.buffer = rest[length:]
        return status

    def _read(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def run_window(clients: int, work: Callable[[int, Callable[[], bool]], int], seconds: float) -> tuple[float, int]:
    """``work(number, going)`` in ``clients`` threads; returns the window and the sum of their counts. A client's
    first call of ``going()`` waits for every client to be ready (warmed up), and it is True for ``seconds``."""
    counts = [0] * clients
    failures: list[BaseException] = []
    ready = threading.Barrier(clients + 1)
    stop = [float("inf")]

    def run(number: int) -> None:
        waited = [False]

        def going() -> bool:
            if not waited[0]:
                waited[0] = True
                ready.wait()
            return time.perf_counter() < stop[0]

        try:
            counts[number] = work(number, going)
        except BaseException as exc:
            failures.append(exc)
            with contextlib.suppress(threading.BrokenBarrierError):
                ready.abort()

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    began = 0.0
    try:
        ready.wait()
        began = time.perf_counter()
        stop[0] = began + seconds
    except threading.BrokenBarrierError:
        pass
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} clients failed; the first: {failures[0]!r}") from failures[0]
    return time.perf_counter() - began, sum(counts)


# -- the floors ----------------------------------------------------------------------------------


def raw_sqlite(path: Path, seconds: float, background_checkpoints: bool = False) -> dict[str, Any]:
    """The floor: the statements of a batch of 100, with nothing else, on the ledger's schema.

    ``background_checkpoints``: the WAL is checkpointed by a thread of its own (PASSIVE, every
    ``CHECKPOINT_INTERVAL``), not in the COMMIT that takes it past 1000 pages: as the ledger does since it was
    measured against the first floor.
    """
    from agent_ledger_sdk.local.store import open_store
    from agent_ledger_sdk.local.store.sqlite import CHECKPOINT_INTERVAL

    open_store(path).close()  # the ledger's migrations make the schema
    db = sqlite3.connect(str(path), isolation_level=None, timeout=30.0)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    stop = threading.Event()
    checkpointer = None
    if background_checkpoints:
        db.execute("PRAGMA wal_autocheckpoint=0")

        def checkpoint() -> None:
            other = sqlite3.connect(str(path), isolation_level=None, timeout=30.0)
            while not stop.wait(CHECKPOINT_INTERVAL):
                other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            other.close()

        checkpointer = threading.Thread(target=checkpoint, daemon=True)
        checkpointer.start()
    session = f"raw-{time.monotonic_ns()}"
    db.execute(
        "INSERT INTO sessions (id, workspace, agent_name, status, started_at, cost) VALUES (?, ?, ?, ?, ?, ?)",
        (session, "raw", "bench-agent", "running", "2026-01-01T00:00:00.000000Z", "0"),
    )
    payloads = [json.dumps(event(step), separators=(",", ":")) for step in range(BATCH)]
    insert = (
        "INSERT INTO events (session_id, step_index, position, type, payload, cost, cost_status, over_budget,"
        " pricing_note, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    update = (
        "UPDATE sessions SET cost = ?, tokens_in = tokens_in + ?, tokens_out = tokens_out + ?,"
        " event_count = event_count + ? WHERE id = ?"
    )
    batches = 0
    cpu = time.process_time()
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        db.execute("BEGIN IMMEDIATE")
        db.execute("SELECT * FROM sessions WHERE id = ? AND workspace = ?", (session, "raw")).fetchone()
        first = batches * BATCH  # a session's steps only grow (see ledger_scale.StepBatches)
        rows = [
            (session, first + s, first + s, "llm_call", p, "0.0015", "priced", 0, None, "2026-01-01T00:00:00.000000Z")
            for s, p in enumerate(payloads)
        ]
        db.executemany(insert, rows)
        db.execute(update, ("0.15", 120000, 30000, BATCH, session))
        db.execute("COMMIT")
        batches += 1
    elapsed = time.perf_counter() - began
    used = time.process_time() - cpu
    stop.set()
    if checkpointer is not None:
        checkpointer.join()
    db.close()
    return {"events_per_s": batches * BATCH / elapsed, "cpu_per_batch_ms": used / batches * 1e3}


RAW_APP = textwrap.dedent(
    """
    import socket, sys, uvicorn
    BODY = b'{"accepted":1,"costUsd":0.0015}'
    HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]

    async def app(scope, receive, send):
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 202, "headers": HEADERS})
        await send({"type": "http.response.body", "body": BODY})

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY, as the ledger's
    sock.bind(("127.0.0.1", 0))
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)).run(sockets=[sock])
    """
)


@contextlib.contextmanager
def raw_http_server(scratch: Path) -> Any:
    """The loopback floor: a raw ASGI app on the same uvicorn the ledger runs on."""
    log = scratch / "raw-http.log"
    with log.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-c", RAW_APP], stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            found = re.search(r"listening on (http://\S+)", log.read_text())
            if found:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the raw HTTP server did not start:\n{log.read_text()}")
            time.sleep(0.05)
        url = found.group(1)
        for _ in range(200):
            with contextlib.suppress(OSError):
                socket.create_connection(url.split("//")[1].rsplit(":", 1)).close()  # type: ignore[arg-type]
                break
            time.sleep(0.05)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(10)


# -- the ledger ----------------------------------------------------------------------------------


def event(step: int) -> dict[str, Any]:
    """ledger_scale's llm_call, each of a batch with its own usage (no two priced alike)."""
    return {**llm_event(step), "tokensIn": 1200 + step}


def batch_body(session: str, size: int) -> bytes:
    return json.dumps({"sessionId": session, "events": [event(step) for step in range(size)]}).encode()


def raw_batches(urls: Sequence[str], key: str, clients: int, seconds: float, pids: Sequence[int]) -> dict[str, Any]:
    """Events/s acknowledged, ``clients`` raw clients each posting batches of 100 to a session of its own."""
    headers = {"x-api-key": key, "content-type": "application/json"}
    sessions = []
    for number in range(clients):
        url = urls[number % len(urls)]
        sessions.append((url, StepBatches(start_session(url, key), BATCH, event)))

    def work(number: int, going: Callable[[], bool]) -> int:
        url, batches = sessions[number]
        client = RawClient(url)
        try:
            for _ in range(2):
                client.exchange(RawClient.request("/v1/events", batches.body(), headers))
            done = 0
            while going():
                status = client.exchange(RawClient.request("/v1/events", batches.body(), headers))
                if status != 202:
                    raise RuntimeError(f"POST /v1/events answered {status}")
                done += BATCH
            return done
        finally:
            client.close()

    cpu = sum(tree_cpu_seconds(pid) for pid in pids)  # a server's worker processes included
    elapsed, events = run_window(clients, work, seconds)
    used = sum(tree_cpu_seconds(pid) for pid in pids) - cpu
    return {"events_per_s": events / elapsed, "server_cpu_per_batch_ms": used / max(1, events / BATCH) * 1e3}


def httpx_batches(url: str, key: str, clients: int, seconds: float) -> dict[str, Any]:
    """The same load from httpx clients (the SDK's HTTP library): what a real client sees."""
    sessions = [StepBatches(start_session(url, key), BATCH, event) for _ in range(clients)]

    def work(number: int, going: Callable[[], bool]) -> int:
        headers = {"x-api-key": key, "content-type": "application/json"}
        with httpx.Client(base_url=url, headers=headers, timeout=120) as http:
            for _ in range(2):
                http.post("/v1/events", content=sessions[number].body()).raise_for_status()
            done = 0
            while going():
                if http.post("/v1/events", content=sessions[number].body()).status_code != 202:
                    raise RuntimeError("POST /v1/events not acknowledged")
                done += BATCH
            return done

    elapsed, events = run_window(clients, work, seconds)
    return {"events_per_s": events / elapsed}


def request_durations(url: str) -> tuple[float, int]:
    """(sum of seconds, count) of the ledger's POST /v1/events requests so far, from its /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    total = count = 0.0
    for line in text.splitlines():
        if 'route="/v1/events"' in line and 'method="POST"' in line:
            if line.startswith("agent_ledger_http_request_duration_seconds_sum"):
                total = float(line.rsplit(" ", 1)[1])
            elif line.startswith("agent_ledger_http_request_duration_seconds_count"):
                count = float(line.rsplit(" ", 1)[1])
    return total, int(count)


def one_at_a_time(url: str, request: bytes, pid: int, seconds: float) -> dict[str, Any]:
    """p50 round trip and server CPU of one request at a time, for ``seconds``."""
    client = RawClient(url)
    try:
        for _ in range(50):
            client.exchange(request)
        latencies = []
        cpu = cpu_seconds(pid)
        began = time.perf_counter()
        while time.perf_counter() - began < seconds:
            sent = time.perf_counter()
            status = client.exchange(request)
            latencies.append(time.perf_counter() - sent)
            if status != 202:
                raise RuntimeError(f"answered {status}")
        used = cpu_seconds(pid) - cpu
    finally:
        client.close()
    return {
        "p50_ms": percentile(latencies, 0.5) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "requests_per_s": len(latencies) / seconds,
        "server_cpu_ms": used / len(latencies) * 1e3,
    }


def batch_one(url: str, key: str, pid: int, seconds: float) -> dict[str, Any]:
    body = batch_body(start_session(url, key), 1)
    request = RawClient.request("/v1/events", body, {"x-api-key": key, "content-type": "application/json"})
    before = request_durations(url)
    found = one_at_a_time(url, request, pid, seconds)
    after = request_durations(url)
    found["server_time_ms"] = (after[0] - before[0]) / max(1, after[1] - before[1]) * 1e3
    return found


# -- the run -----------------------------------------------------------------------------------------


def median_of(windows: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: statistics.median(w[k] for w in windows) for k in windows[0]} | {
        "windows": [round(w[next(iter(w))], 3) for w in windows]
    }


def sqlite_measures(scratch: Path, clients: int, seconds: float, rounds: int) -> dict[str, list[dict[str, Any]]]:
    names = ("floor", "floor_background", "ledger", "ledger_workers", "httpx", "batch1", "raw_http")
    measures: dict[str, list[dict[str, Any]]] = {k: [] for k in names}
    db = Path(tempfile.mkdtemp(prefix="ledger-", dir=scratch)) / "ledger.db"
    keys = prepare(db, 1)
    with ExitStack() as stack:
        replicas = stack.enter_context(Replicas(db, 1, scratch))
        # The same file served by `serve --workers 2` too: one port, two processes, one core each.
        workers = stack.enter_context(Replicas(db, 1, scratch, workers=WORKERS))
        raw_url, raw_pid = stack.enter_context(raw_http_server(scratch))
        raw_request = RawClient.request(
            "/v1/events", batch_body("s", 1), {"x-api-key": keys[0], "content-type": "application/json"}
        )
        url, pid = replicas.urls[0], replicas.pids[0]
        for number in range(rounds):
            floor_db = Path(tempfile.mkdtemp(prefix="floor-", dir=scratch)) / "floor.db"
            measures["floor"].append(raw_sqlite(floor_db, seconds))
            floor_db = Path(tempfile.mkdtemp(prefix="floor-", dir=scratch)) / "floor.db"
            measures["floor_background"].append(raw_sqlite(floor_db, seconds, background_checkpoints=True))
            measures["ledger"].append(raw_batches([url], keys[0], clients, seconds, [pid]))
            measures["ledger_workers"].append(raw_batches(workers.urls, keys[0], clients, seconds, workers.pids))
            measures["httpx"].append(httpx_batches(url, keys[0], clients, seconds))
            measures["batch1"].append(batch_one(url, keys[0], pid, seconds))
            measures["raw_http"].append(one_at_a_time(raw_url, raw_request, raw_pid, seconds))
            print(
                f"  round {number + 1}: floor {measures['floor'][-1]['events_per_s']:,.0f} ev/s "
                f"({measures['floor_background'][-1]['events_per_s']:,.0f} with background checkpoints), ledger "
                f"{measures['ledger'][-1]['events_per_s']:,.0f}, {WORKERS} workers "
                f"{measures['ledger_workers'][-1]['events_per_s']:,.0f}, httpx {measures['httpx'][-1]['events_per_s']:,.0f}, "
                f"batch 1 p50 {measures['batch1'][-1]['p50_ms']:.3f} ms "
                f"(server {measures['batch1'][-1]['server_time_ms']:.3f} ms), "
                f"raw HTTP p50 {measures['raw_http'][-1]['p50_ms']:.3f} ms",
                flush=True,
            )
        errors = replicas.server_errors() + workers.server_errors()
        if errors:
            raise RuntimeError("server errors:\n" + "\n".join(errors[:10]))
    return measures


def postgres_curve(
    backends: Backends, scratch: Path, clients: int, seconds: float, rounds: int
) -> list[dict[str, Any]]:
    rows = []
    with ExitStack() as stack:
        clusters = {}
        for count in (1, 2, 4):
            db = backends.fresh("postgresql")
            replicas = stack.enter_context(Replicas(db, count, scratch, backends.postmaster("postgresql")))
            clusters[count] = (replicas, prepare(db, 1)[0])
        windows: dict[int, list[dict[str, Any]]] = {count: [] for count in clusters}
        for _ in range(rounds):
            for count, (replicas, key) in clusters.items():
                windows[count].append(raw_batches(replicas.urls, key, clients, seconds, replicas.pids))
        for count, (replicas, _) in clusters.items():
            errors = replicas.server_errors()
            if errors:
                raise RuntimeError("server errors:\n" + "\n".join(errors[:10]))
            rate = statistics.median(w["events_per_s"] for w in windows[count])
            rows.append(
                {"replicas": count, "events_per_s": rate, "windows": [round(w["events_per_s"]) for w in windows[count]]}
            )
            print(f"  postgresql, {count} replica(s): {rate:,.0f} events/s {rows[-1]['windows']}", flush=True)
    return rows


def machine() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "platform": platform.platform(),
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }


def table(sqlite: dict[str, Any], postgres: list[dict[str, Any]], clients: int) -> str:
    floor, ledger, client = sqlite["floor"], sqlite["ledger"], sqlite["httpx"]
    workers, background = sqlite["ledger_workers"], sqlite["floor_background"]
    one, raw = sqlite["batch1"], sqlite["raw_http"]
    lines = [
        "| measure | result (median of the windows) | ratio |",
        "| --- | --- | --- |",
        f"| raw SQLite, the ledger's schema, batches of 100 (the floor) | {floor['events_per_s']:,.0f} events/s "
        f"({floor['cpu_per_batch_ms']:.2f} ms CPU a batch) | 1 |",
        f"| raw SQLite, the same, its WAL checkpointed by a thread of its own (as the ledger's) | "
        f"{background['events_per_s']:,.0f} events/s ({background['cpu_per_batch_ms']:.2f} ms CPU a batch) | "
        f"{background['events_per_s'] / floor['events_per_s']:.2f}x the floor |",
        f"| ledger over HTTP, batches of 100, {clients} raw clients | {ledger['events_per_s']:,.0f} events/s "
        f"({ledger['server_cpu_per_batch_ms']:.2f} ms server CPU a batch) "
        f"| {ledger['events_per_s'] / floor['events_per_s']:.2f} of the floor, "
        f"{ledger['events_per_s'] / background['events_per_s']:.2f} of the second |",
        f"| ledger over HTTP, `serve --workers {WORKERS}`, batches of 100, {clients} raw clients | "
        f"{workers['events_per_s']:,.0f} events/s ({workers['server_cpu_per_batch_ms']:.2f} ms server CPU a batch) "
        f"| {workers['events_per_s'] / floor['events_per_s']:.2f} of the floor, "
        f"{workers['events_per_s'] / background['events_per_s']:.2f} of the second |",
        f"| ledger over HTTP, batches of 100, {clients} httpx clients | {client['events_per_s']:,.0f} events/s "
        f"| {client['events_per_s'] / floor['events_per_s']:.2f} of the floor, "
        f"{client['events_per_s'] / background['events_per_s']:.2f} of the second |",
        f"| raw loopback HTTP exchange (uvicorn, raw ASGI app), 1 client | p50 {raw['p50_ms']:.3f} ms, "
        f"{raw['server_cpu_ms']:.3f} ms server CPU a request | 1 |",
        f"| ledger, batch of 1, 1 client | p50 {one['p50_ms']:.3f} ms; server time {one['server_time_ms']:.3f} ms; "
        f"{one['server_cpu_ms']:.3f} ms server CPU a request | p50 {one['p50_ms'] / raw['p50_ms']:.2f}x the raw "
        "exchange |",
    ]
    for row in postgres:
        base = postgres[0]["events_per_s"]
        lines.append(
            f"| PostgreSQL, {row['replicas']} replica(s), batches of 100, {clients} raw clients | "
            f"{row['events_per_s']:,.0f} events/s | {row['events_per_s'] / base:.2f}x one replica |"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter windows and fewer rounds (a smoke run)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file, as JSON")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients of batches of 100 (default: 4)")
    parser.add_argument("--backends", default="sqlite,postgresql", help="sqlite, postgresql or both (default)")
    args = parser.parse_args(argv)
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    seconds = 1.5 if args.quick else 3.0
    rounds = 3 if args.quick else 5
    load = os.getloadavg()
    found = machine()
    print(f"{found}; load average {load[0]:.2f} at the start", flush=True)
    result: dict[str, Any] = {"machine": found, "load_at_start": load, "quick": args.quick, "clients": args.clients}
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="agent-ledger-ingest-")))
        os.environ["AGENT_LEDGER_HOME"] = str(scratch / "home")  # never this machine's own key file
        backends = Backends(scratch, stack, wanted)
        result["versions"] = backends.versions
        sqlite: dict[str, Any] = {}
        if "sqlite" in wanted:
            windows = sqlite_measures(scratch, args.clients, seconds, rounds)
            sqlite = {name: median_of(found_windows) for name, found_windows in windows.items()}
        postgres: list[dict[str, Any]] = []
        if "postgresql" in wanted:
            postgres = postgres_curve(backends, scratch, args.clients, seconds, max(2, rounds - 2))
    result.update(sqlite=sqlite, postgresql=postgres, load_at_end=os.getloadavg())
    print(f"\nload average {load[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end\n")
    if sqlite:
        print(table(sqlite, postgres, args.clients))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
