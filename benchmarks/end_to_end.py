"""The sender's CPU per event and the end-to-end rate, against their floors, in one run.

    python benchmarks/end_to_end.py            # about 4 minutes on 2 cores
    python benchmarks/end_to_end.py --quick    # smaller loads: a smoke run
    python benchmarks/end_to_end.py --json -   # the results as JSON too (to a file, or - for stdout)

What it measures (docs/performance.md, "The sender and end to end", says how to read it):

- **CPU per recorded event**: a background ``@tool`` call (two events) against a served
  ledger, the process's whole CPU (``getrusage``: the caller, the sender thread, HTTP)
  from before the calls to the end of ``flush()``, back to back (a flood) and at a
  steady 5,000 events/s; against an OpenTelemetry span per call (BatchSpanProcessor,
  an exporter that does nothing) measured the same way.
- **End to end**: events/s from one process (1, 4, 16 threads; 16 asyncio tasks, with either client) into
  ``agent-ledger serve`` (SQLite, 1 and 2 workers), default client settings (64 MiB
  queue, journal on), until ``flush()`` returns; the ledger's database must hold every
  event. The same into a raw ASGI app that only counts events: the client's own ceiling.
- **Floors**: one request's client CPU and round trip for the same body, by
  ``http.client``, ``httpx.Client.post``, and this SDK's request path, to the ledger
  and to the raw app; and the published client 0.0.5's inline ``log_tool_call``
  against this SDK's (``batching=False``), per event.

Every measure runs in a fresh process; the SDK gets a temporary AGENT_LEDGER_HOME.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import CLI, STEP_TIMEOUT, compile_package, free_port  # noqa: E402

PUBLISHED = "agent-ledger-sdk==0.0.5"


class Server:
    """A server process on 127.0.0.1, its log drained; ``cpu()`` reads its CPU seconds (and its workers')."""

    process: subprocess.Popen[str]
    url: str
    key: str

    def _wait(self, pattern: str) -> None:
        assert self.process.stdout is not None
        while True:
            line = self.process.stdout.readline()
            if not line:
                self.process.wait(10)
                raise RuntimeError(f"the server exited with status {self.process.returncode}")
            if re.search(pattern, line):
                break
        stream = self.process.stdout
        threading.Thread(target=lambda: [None for _ in stream], daemon=True).start()
        import httpx

        for _ in range(500):
            try:
                httpx.get(self.url + "/health", timeout=5)
                return
            except httpx.HTTPError:
                time.sleep(0.02)

    def count(self) -> int:
        raise NotImplementedError

    def cpu(self) -> float:
        """CPU seconds of the server and its children (the workers), from /proc."""
        total = 0.0
        tick = os.sysconf("SC_CLK_TCK")
        pids = [self.process.pid]
        try:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
            pids += [int(p) for p in children]
        except OSError:
            pass
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick
        return total

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        if self.process.stdout is not None:
            self.process.stdout.close()


class Ledger(Server):
    """``agent-ledger serve`` with a fresh SQLite database and key."""

    def __init__(self, workers: int = 1) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="agent-ledger-e2e-")
        self.db = str(Path(self.dir.name) / "bench.db")
        out = subprocess.run(
            [CLI, "keys", "create", "--name", "bench", "--db", self.db], capture_output=True, text=True, check=True
        )
        self.key = out.stdout.strip().splitlines()[-1]
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        command = [CLI, "serve", "--port", str(port), "--db", self.db, "--workers", str(workers)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._wait(r"listening on|Uvicorn running|Started server")

    def count(self) -> int:
        """Events in the ledger's database (a session started from the journal has no id in the client: all)."""
        db = sqlite3.connect(self.db)
        try:
            (count,) = db.execute("SELECT count(*) FROM events").fetchone()
        finally:
            db.close()
        return int(count)

    def close(self) -> None:
        super().close()
        self.dir.cleanup()


SINK_APP = r"""
import json, sys, uvicorn
count = 0

async def app(scope, receive, send):
    global count
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path = scope["path"]
    if path == "/v1/events":
        count += body.count(b'{"type":')
        status, answer = 202, b'{"accepted":true}'
    elif path == "/v1/sessions":
        status, answer = 201, b'{"id":"sink-session","budgeted":false}'
    elif path == "/count":
        status, answer = 200, json.dumps({"count": count}).encode()
    else:
        status, answer = 200, b"{}"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="info", access_log=False)
"""


class Sink(Server):
    """A raw ASGI app under uvicorn that answers the ledger's three calls and counts events: no storage, no checks."""

    key = "sink"

    def __init__(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [sys.executable, "-c", SINK_APP, str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._wait(r"Uvicorn running")

    def count(self) -> int:
        import httpx

        return int(httpx.get(self.url + "/count").json()["count"])


def run_json(code: str, *args: Any, env: Optional[dict[str, str]] = None) -> Any:
    out = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        env=env,
    )
    if out.returncode != 0:
        raise RuntimeError(f"a measuring process failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- CPU per recorded event ----------------------------------------------------------------

CPU_SCRIPT = r'''
import json, resource, sys, time

def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

key, url, who, calls, repeats, rate = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])

def paced(call, n):
    """n calls, back to back (rate 0) or at ``rate`` calls a second."""
    if not rate:
        for i in range(n):
            call(i)
        return
    start = time.perf_counter()
    for i in range(n):
        call(i)
        if i % 50 == 49:
            late = start + (i + 1) / rate - time.perf_counter()
            if late > 0:
                time.sleep(late)

samples = []
if who == "ours":
    from agent_ledger_sdk import AgentLedgerClient
    from agent_ledger_sdk import _http
    requests = [0]
    send = _http.SyncLedgerIO.send_events
    def counted(self, *args, **kwargs):
        requests[0] += 1
        return send(self, *args, **kwargs)
    _http.SyncLedgerIO.send_events = counted
    client = AgentLedgerClient(api_key=key, base_url=url)  # the default settings

    @client.tool
    def work(i):
        return i

    with client.session("warm-up"):
        paced(work, 2000)
    client.flush(60)
    for _ in range(repeats):
        requests[0] = 0
        before = cpu()
        with client.session("cpu"):
            paced(work, calls)
        left = client.flush(300)
        samples.append({"cpu_s": cpu() - before, "requests": requests[0], "left": left})
    stats = client.stats
    client.close()
    samples.append({"sent": stats.sent, "dropped": stats.dropped, "failed": stats.failed})
else:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Nothing(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    if who == "otlp":  # delivered, as our events are: OTLP/HTTP protobuf to the same ledger's /v1/traces
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        class Delivered(OTLPSpanExporter):  # counts the batches the ledger did not take: the run must have none
            failed = 0

            def export(self, spans):
                result = super().export(spans)
                if result is not SpanExportResult.SUCCESS:
                    Delivered.failed += 1
                return result

        exporter = Delivered(endpoint=url + "/v1/traces", headers={"x-api-key": key})
    else:
        exporter = Nothing()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("bench")

    def work(i):
        with tracer.start_as_current_span("execute_tool work") as span:
            span.set_attribute("gen_ai.tool.name", "work")
            span.set_attribute("input.i", i)
            span.set_attribute("output", i)
            return i

    paced(work, 2000)
    provider.force_flush()
    for _ in range(repeats):
        before = cpu()
        paced(work, calls)
        provider.force_flush()
        samples.append({"cpu_s": cpu() - before})
    provider.shutdown()
    if who == "otlp" and Delivered.failed:
        sys.exit(f"{Delivered.failed} OTLP exports failed")
print(json.dumps(samples))
'''


def cpu_per_event(ledger: Ledger, calls: int, repeats: int, rate: float) -> dict[str, float]:
    """Median µs of process CPU per event (ours: 2 events a call) and per call, ours and OTel's, alternating."""
    ours: list[dict[str, Any]] = []
    otel: list[float] = []
    otlp: list[float] = []
    totals: dict[str, Any] = {}
    for _ in range(repeats):
        result = run_json(CPU_SCRIPT, ledger.key, ledger.url, "ours", calls, 1, rate)
        totals = result.pop()
        if totals["dropped"] or totals["failed"] or any(s["left"] for s in result):
            raise RuntimeError(f"the CPU run lost events: {totals} {result}")
        ours += result
        otel += [s["cpu_s"] for s in run_json(CPU_SCRIPT, ledger.key, ledger.url, "otel", calls, 1, rate)]
        otlp += [s["cpu_s"] for s in run_json(CPU_SCRIPT, ledger.key, ledger.url, "otlp", calls, 1, rate)]
    per_call = statistics.median(s["cpu_s"] for s in ours) / calls * 1e6
    span = statistics.median(otel) / calls * 1e6
    exported = statistics.median(otlp) / calls * 1e6
    return {
        "ours_us_per_event": per_call / 2,
        "ours_us_per_call": per_call,
        "otel_us_per_span": span,
        "ratio_per_event": span / (per_call / 2),
        "ratio_per_call": span / per_call,
        "otlp_us_per_span": exported,
        "otlp_ratio_per_event": exported / (per_call / 2),
        "otlp_ratio_per_call": exported / per_call,
        "events_per_request": 2 * calls / statistics.median(s["requests"] for s in ours),
    }


# -- end to end ------------------------------------------------------------------------------

THROUGHPUT_SCRIPT = r"""
import asyncio, json, sys, threading, time
from agent_ledger_sdk import AgentLedgerClient, AsyncAgentLedgerClient

key, url, producers, kind, calls = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
queue = int(sys.argv[6])  # 0: the default settings (64 MiB queue); the journal is on either way
# "async client": the tasks of "asyncio" with AsyncAgentLedgerClient (its delivery off the loop, as the sync one's)
Client = AsyncAgentLedgerClient if kind == "async client" else AgentLedgerClient
client = Client(api_key=key, base_url=url, **({"max_queue_bytes": queue} if queue else {}))
per_producer = calls // producers

@client.tool
def work(i):
    return i

@client.tool
async def awork(i):
    return i

with client.session("warm-up"):
    work(0)
client.flush(30)

def produce(k):
    with client.session(f"producer-{k}"):
        for i in range(per_producer):
            work(i)

async def aproduce(k):
    async with client.session(f"task-{k}"):
        for i in range(per_producer):
            await awork(i)
            if i % 100 == 99:
                await asyncio.sleep(0)  # let the other tasks in

async def tasks():
    await asyncio.gather(*(aproduce(k) for k in range(producers)))

started = time.perf_counter()
cpu = time.process_time()
if kind in ("asyncio", "async client"):
    asyncio.run(tasks())
else:
    threads = [threading.Thread(target=produce, args=(k,)) for k in range(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
recorded = time.perf_counter() - started
left = client.flush(600)
seconds = time.perf_counter() - started
cpu = time.process_time() - cpu
stats = client.stats
asyncio.run(client.aclose()) if kind == "async client" else client.close()
print(json.dumps({"events": 2 * per_producer * producers, "recorded_s": recorded, "seconds": seconds, "cpu_s": cpu,
                  "left": left, "sent": stats.sent, "dropped": stats.dropped, "failed": stats.failed,
                  "journaled_bytes": stats.journaled_bytes}))
"""


def throughput(server: Server, producers: int, kind: str, calls: int, queue_bytes: int = 0) -> dict[str, Any]:
    """Events/s from ``producers`` threads or asyncio tasks until flush() returns; every event counted where it went.

    ``queue_bytes``: a queue that small, so that a flood spills to the journal (0: the default, 64 MiB).
    """
    with tempfile.TemporaryDirectory(prefix="agent-ledger-home-") as home:
        env = {**os.environ, "AGENT_LEDGER_HOME": home}
        before, counted = server.cpu(), server.count()
        result: dict[str, Any] = run_json(
            THROUGHPUT_SCRIPT, server.key, server.url, producers, kind, calls, queue_bytes, env=env
        )
        result["server_cpu_s"] = server.cpu() - before
    events = result["events"]
    arrived = server.count() - counted
    if arrived != result["sent"]:  # the warm-up's two events included
        raise RuntimeError(f"{arrived} events arrived, the client sent {result['sent']}: {result}")
    result["arrived"] = arrived - (result["sent"] - events)
    result["events_per_s"] = events / result["seconds"]
    result["client_us_per_event"] = result["cpu_s"] / events * 1e6
    result["server_us_per_event"] = result["server_cpu_s"] / events * 1e6
    if result["left"] or result["dropped"] or result["failed"]:
        raise RuntimeError(f"the end-to-end run lost events: {result}")
    if result["arrived"] != events:
        raise RuntimeError(f"the ledger holds {result['arrived']} events of {events}: {result}")
    return result


# -- floors: one request -------------------------------------------------------------------

REQUEST_SCRIPT = r"""
import http.client, json, socket, statistics, sys, time
from urllib.parse import urlsplit
import httpx
from agent_ledger_sdk._base_client import BaseClient, idempotency_key
from agent_ledger_sdk._http import NO_DELAY, SyncHTTP, SyncLedgerIO

key, url, batch, requests = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
config = BaseClient(api_key=key, base_url=url)
io = SyncLedgerIO(SyncHTTP(config), 0)
session_id = SyncHTTP(config).post("/v1/sessions", {"agentName": "floor"}).json()["id"]
events = [json.dumps({"type": "tool_call", "stepIndex": i, "toolName": "work", "toolInput": {"i": i},
                      "startedAt": "2026-11-25T15:27:17.123Z", "spanId": "2acb602de00227d3"}, separators=(",", ":"))
          for i in range(batch)]
body = ('{"sessionId":%s,"events":[%s]}' % (json.dumps(session_id), ",".join(events))).encode()
headers = {"x-api-key": key, "content-type": "application/json"}
parts = urlsplit(url)


class Connection(http.client.HTTPConnection):
    def connect(self):
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


connection = Connection(parts.hostname, parts.port)
hx = httpx.Client(transport=httpx.HTTPTransport(socket_options=NO_DELAY))  # without it, Nagle: 40 ms a request

def raw():
    connection.request("POST", "/v1/events", body, {**headers, "Idempotency-Key": idempotency_key()})
    response = connection.getresponse()
    response.read()
    assert response.status < 300, response.status

def plain_httpx():
    hx.post(url + "/v1/events", content=body, headers={**headers, "Idempotency-Key": idempotency_key()}).raise_for_status()

def ours():
    io.send_events(session_id, events, idempotency_key())

results = {}
for name, call in (("http.client", raw), ("httpx.Client.post", plain_httpx), ("ours", ours)) * 2:
    connection.close()  # the server closes a connection idle for 5 s: http.client opens a new one
    for _ in range(3):
        call()
    cpu, wall = [], []
    for _ in range(3):
        started, used = time.perf_counter(), time.process_time()
        for _ in range(requests):
            call()
        cpu.append((time.process_time() - used) / requests * 1e6)
        wall.append((time.perf_counter() - started) / requests * 1e6)
    results.setdefault(name, []).append((statistics.median(cpu), statistics.median(wall)))
print(json.dumps({name: [statistics.median(c for c, _ in v), statistics.median(w for _, w in v)] for name, v in results.items()}))
"""


def request_floors(server: Server, batch: int, requests: int) -> dict[str, list[float]]:
    """Client CPU µs and round-trip µs per request of ``batch`` events, by each client, medians."""
    result: dict[str, list[float]] = run_json(REQUEST_SCRIPT, server.key, server.url, batch, requests)
    return result


INLINE_SCRIPT = r"""
import json, sys, time
from agent_ledger_sdk import AgentLedgerClient
key, url, calls, who = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
ledger = AgentLedgerClient(api_key=key, base_url=url, **({"batching": False} if who == "ours" else {}))
sid = ledger.start_session("inline")
event = lambda i: {"stepIndex": i, "toolName": "t", "toolInput": {"q": "x"}}
for i in range(30):
    ledger.log_tool_call(sid, event(i))
started, cpu = time.perf_counter(), time.process_time()
for i in range(calls):
    ledger.log_tool_call(sid, event(i))
print(json.dumps([(time.perf_counter() - started) / calls * 1e6, (time.process_time() - cpu) / calls * 1e6]))
"""


def published_client() -> Optional[Path]:
    """The published client installed apart (``pip --target``, no dependencies: it uses this httpx), or None."""
    target = Path(tempfile.gettempdir()) / "agent-ledger-published-0.0.5"
    if not (target / "agent_ledger_sdk" / "client.py").exists():
        installed = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), PUBLISHED],
            capture_output=True,
        )
        if installed.returncode != 0:
            return None
    if sys.version_info < (3, 10):
        return None  # it uses dataclass(slots=True)
    return target


def inline(server: Server, calls: int, rounds: int) -> dict[str, list[float]]:
    """µs per event (round trip, client CPU) of inline ``log_tool_call``: ours and the published 0.0.5, alternating."""
    target = published_client()
    samples: dict[str, list[list[float]]] = {"ours": [], "published": []}
    for _ in range(rounds):
        for who in ("ours", "published") if target else ("ours",):
            env = dict(os.environ)
            if who == "published":
                env["PYTHONPATH"] = str(target)  # its agent_ledger_sdk first, and only it
            samples[who].append(run_json(INLINE_SCRIPT, server.key, server.url, calls, who, env=env))
    return {
        who: [statistics.median(s[0] for s in v), statistics.median(s[1] for s in v)] for who, v in samples.items() if v
    }


# -- the report ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": os.getloadavg()[0],
    }


class Rows(list[tuple[str, str, str]]):
    """The table's rows; each is also written to stderr as soon as it is measured."""

    def append(self, row: tuple[str, str, str]) -> None:
        print(f"{row[0]}: {row[1]}", file=sys.stderr, flush=True)
        super().append(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller loads: a smoke run")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH (- for stdout)")
    args = parser.parse_args()
    quick = args.quick
    compile_package()
    home = tempfile.TemporaryDirectory(prefix="agent-ledger-home-")
    os.environ["AGENT_LEDGER_HOME"] = home.name
    results: dict[str, Any] = {"machine": machine(), "quick": quick}
    rows = Rows()
    calls = 5_000 if quick else 20_000
    repeats = 2 if quick else 5
    e2e_calls = 10_000 if quick else 50_000

    ledger = Ledger()
    try:
        for label, rate in (("back to back", 0.0), ("steady 5,000 events/s", 2_500.0)):
            cpu = cpu_per_event(ledger, calls if rate == 0 else calls // 4, repeats, rate)
            results[f"cpu {label}"] = cpu
            rows.append(
                (
                    f"process CPU per recorded event, background `@tool`, {label} (caller + sender + HTTP + flush)",
                    f"{cpu['ours_us_per_event']:.2f} µs ({cpu['ours_us_per_call']:.1f} µs a call, "
                    f"{cpu['events_per_request']:,.0f} events a request)",
                    "<= 10 µs",
                )
            )
            rows.append(
                (
                    f"OpenTelemetry span per call (BatchSpanProcessor, no-op exporter), {label}: ratio",
                    f"{cpu['otel_us_per_span']:.1f} µs a span; {cpu['ratio_per_event']:.1f}x an event, "
                    f"{cpu['ratio_per_call']:.1f}x a call",
                    ">= 5x",
                )
            )
            rows.append(
                (
                    f"OpenTelemetry span per call, delivered as ours are (OTLP/HTTP protobuf to the same ledger), "
                    f"{label}: ratio",
                    f"{cpu['otlp_us_per_span']:.1f} µs a span; {cpu['otlp_ratio_per_event']:.1f}x an event, "
                    f"{cpu['otlp_ratio_per_call']:.1f}x a call",
                    ">= 5x",
                )
            )
        for producers, kind in ((1, "threads"), (4, "threads"), (16, "threads"), (16, "asyncio"), (16, "async client")):
            run = throughput(ledger, producers, kind, e2e_calls)
            results[f"end to end {producers} {kind}"] = run
            rows.append(
                (
                    f"end to end into `agent-ledger serve` (SQLite, 1 worker), {producers} {kind}",
                    f"{run['events_per_s']:,.0f} events/s; {run['arrived']:,} of {run['events']:,} arrived; "
                    f"client {run['client_us_per_event']:.1f} µs CPU/event, "
                    f"server {run['server_us_per_event']:.1f} µs CPU/event",
                    ">= 50,000 events/s, 0 lost",
                )
            )
        run = throughput(ledger, 4, "threads", e2e_calls, queue_bytes=4 * 1024 * 1024)
        results["end to end 4 threads 4 MiB queue"] = run
        rows.append(
            (
                "end to end into `agent-ledger serve`, 4 threads, a 4 MiB queue (the flood spills to the journal)",
                f"{run['events_per_s']:,.0f} events/s; {run['arrived']:,} of {run['events']:,} arrived; "
                f"client {run['client_us_per_event']:.1f} µs CPU/event, server {run['server_us_per_event']:.1f} µs",
                "0 lost",
            )
        )
        for batch in (1, 1000):
            floors = request_floors(ledger, batch, (20 if quick else 100) if batch == 1 else (3 if quick else 10))
            results[f"request floors ledger batch {batch}"] = floors
            rows.append(
                (
                    f"one request of {batch} event(s) to the ledger: client CPU / round trip",
                    "; ".join(f"{name} {cpu:.0f} / {wall:.0f} µs" for name, (cpu, wall) in floors.items()),
                    "-",
                )
            )
        published = inline(ledger, 200 if quick else 500, 2 if quick else 4)
        results["inline"] = published
        rows.append(
            (
                "inline `log_tool_call`, µs per event: round trip / client CPU",
                "; ".join(f"{who} {wall:.0f} / {cpu:.0f} µs" for who, (wall, cpu) in published.items()),
                "<= published 0.0.5",
            )
        )
    finally:
        ledger.close()

    two = Ledger(workers=2)
    try:
        run = throughput(two, 4, "threads", e2e_calls)
        results["end to end 4 threads 2 workers"] = run
        rows.append(
            (
                "end to end into `agent-ledger serve --workers 2` (SQLite), 4 threads",
                f"{run['events_per_s']:,.0f} events/s; {run['arrived']:,} of {run['events']:,} arrived; "
                f"server {run['server_us_per_event']:.1f} µs CPU/event",
                ">= 50,000 events/s, 0 lost",
            )
        )
    finally:
        two.close()

    sink = Sink()
    try:
        run = throughput(sink, 1, "threads", e2e_calls)
        results["end to end sink"] = run
        rows.append(
            (
                "end to end into a raw ASGI app that only counts (the client's ceiling), 1 thread",
                f"{run['events_per_s']:,.0f} events/s; {run['arrived']:,} of {run['events']:,} arrived; "
                f"client {run['client_us_per_event']:.1f} µs CPU/event",
                ">= 50,000 events/s",
            )
        )
        floors = request_floors(sink, 1, 20 if quick else 100)
        results["request floors sink batch 1"] = floors
        rows.append(
            (
                "one request of 1 event to the raw ASGI app: client CPU / round trip",
                "; ".join(f"{name} {cpu:.0f} / {wall:.0f} µs" for name, (cpu, wall) in floors.items()),
                "-",
            )
        )
    finally:
        sink.close()
    home.cleanup()

    m = results["machine"]
    print(
        f"{m['cpus']} CPUs ({m['cpu_model']}), Python {m['python']}, load average {m['load_average_at_start']:.1f} "
        "at the start, medians\n"
    )
    print("| measure | result | target |")
    print("| --- | --- | --- |")
    for row in rows:
        print(f"| {row[0]} | {row[1]} | {row[2]} |")
    if args.json:
        text = json.dumps(results, indent=2, default=str)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
