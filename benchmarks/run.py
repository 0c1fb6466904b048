"""Measure the SDK's overhead and throughput; prints a Markdown table.

    python benchmarks/run.py            # the full run (about a minute)
    python benchmarks/run.py --quick    # fewer iterations

Needs the server extra (the local ledger runs in a separate process, as a real
one would). Targets come from the performance issue; see docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).with_name("agent-ledger"))


class Ledger:
    """`agent-ledger serve` in its own process, with a fresh database and key."""

    def __init__(self) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="agent-ledger-bench-")
        db = str(Path(self.dir.name) / "bench.db")
        out = subprocess.run(
            [CLI, "keys", "create", "--name", "bench", "--db", db], capture_output=True, text=True, check=True
        )
        self.key = out.stdout.strip().splitlines()[-1]
        self.process = subprocess.Popen(
            [CLI, "serve", "--port", "0", "--db", db], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert self.process.stdout is not None
        while True:
            match = re.search(r"listening on (http://\S+)", self.process.stdout.readline())
            if match:
                self.url = match.group(1)
                break
        # Keep reading the server's log so that a full pipe never blocks it.
        import threading

        threading.Thread(target=lambda: [None for _ in self.process.stdout], daemon=True).start()
        import httpx

        for _ in range(200):
            try:
                httpx.get(self.url + "/health")
                break
            except httpx.HTTPError:
                time.sleep(0.02)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.dir.cleanup()


def per_call_us(
    function: Callable[[], Any], calls: int, repeats: int, between: Callable[[], Any] = lambda: None
) -> float:
    """Median over ``repeats`` runs of the mean µs per call, ``between`` running untimed after each run."""
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            function()
        samples.append((time.perf_counter() - started) / calls * 1e6)
        between()
    return statistics.median(samples)


BURST = 500  # calls an agent makes between two idle moments (an LLM round trip is 100s of ms)


def overhead(ledger: Ledger, mode: str, calls: int, repeats: int) -> dict[str, float]:
    """Caller-side µs per call over the plain function.

    Calls are timed in bursts of BURST with the sender draining, untimed, in
    between, as it does while a real agent waits for its LLM. ``saturated``
    times calls back to back with the sender busy on the other core.
    """
    from agent_ledger_sdk import AgentLedgerClient

    options: dict[str, Any] = {
        "batching": True,
        "enabled": mode != "disabled",
        "max_queue_size": 4 * calls * repeats + 10,
    }
    client = AgentLedgerClient(api_key=ledger.key, base_url=ledger.url, **options)

    def plain(query: str, limit: int = 3) -> int:
        return limit

    tool = client.tool(plain)

    def block() -> None:
        with client.llm_call(provider="openai", model="gpt-4o-mini", prompt="q") as call:
            call.record(response="a", tokens_in=10, tokens_out=2)

    def drain() -> None:
        client.flush(60)

    bursts = max(1, calls // BURST) * repeats
    results: dict[str, float] = {}
    with client.session("bench"):
        base = per_call_us(lambda: plain("q"), BURST, bursts)
        results["tool"] = per_call_us(lambda: tool("q"), BURST, bursts, drain) - base
        results["llm_call"] = per_call_us(block, BURST, bursts, drain) - base
        if mode == "background":
            results["tool_saturated"] = per_call_us(lambda: tool("q"), calls, repeats) - base
            drain()
    client.close()
    return results


INLINE_SCRIPT = """
import sys, time
from agent_ledger_sdk import AgentLedgerClient
key, url, calls, ours = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "ours"
ledger = AgentLedgerClient(api_key=key, base_url=url, **({"batching": False} if ours else {}))
sid = ledger.start_session("inline")
event = lambda i: {"stepIndex": i, "toolName": "t", "toolInput": {"q": "x"}}
for i in range(50):
    ledger.log_tool_call(sid, event(i))
started = time.perf_counter()
for i in range(calls):
    ledger.log_tool_call(sid, event(i))
per_event = (time.perf_counter() - started) / calls * 1e6
tool_per_event = llm_per_call = float("nan")
if ours:
    @ledger.tool
    def t(q):
        return q
    with ledger.session("inline-tool"):
        started = time.perf_counter()
        for i in range(calls // 2):
            t("x")
        tool_per_event = (time.perf_counter() - started) / calls * 1e6  # two events per call
        started = time.perf_counter()
        for i in range(calls):
            with ledger.llm_call(provider="openai", model="gpt-4o-mini", prompt="q") as call:
                call.record(response="a", tokens_in=10, tokens_out=2)
        llm_per_call = (time.perf_counter() - started) / calls * 1e6
print(per_event, tool_per_event, llm_per_call)
"""


def inline_per_event(ledger: Ledger, calls: int, rounds: int) -> dict[str, float]:
    """µs per event sent inline: this SDK's log_tool_call and @tool, and the published 0.0.6 client's.

    Each runs in its own process against the same ledger, alternating, so that
    the ledger's own cost is shared and drift evens out.
    """
    target = Path(tempfile.mkdtemp(prefix="published-"))
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--target",
            str(target),
            "agent-ledger-sdk==0.0.6",
            "httpx<0.28",
        ],
        capture_output=True,
    ).returncode == 0 and sys.version_info >= (3, 10)
    samples: dict[str, list[float]] = {"ours": [], "ours_tool": [], "ours_llm": [], "published": []}
    for _ in range(rounds):
        for who in ("ours", "published") if installed else ("ours",):
            env = {**os.environ, "PYTHONPATH": str(target)} if who == "published" else dict(os.environ)
            out = subprocess.run(
                [sys.executable, "-c", INLINE_SCRIPT, ledger.key, ledger.url, str(calls), who],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            ).stdout.split()
            samples[who].append(float(out[0]))
            if who == "ours":
                samples["ours_tool"].append(float(out[1]))
                samples["ours_llm"].append(float(out[2]))
    return {k: statistics.median(v) for k, v in samples.items() if v}


def end_to_end(ledger: Ledger, tool_calls: int) -> float:
    """Events per second from helpers in one process until the ledger has them all."""
    from agent_ledger_sdk import AgentLedgerClient

    # A queue that holds the whole burst: this measures delivery, not the overflow policy.
    client = AgentLedgerClient(api_key=ledger.key, base_url=ledger.url, max_queue_size=2 * tool_calls + 10)

    @client.tool
    def work(i: int) -> int:
        return i

    started = time.perf_counter()
    with client.session("throughput"):
        for i in range(tool_calls):
            work(i)
    left = client.flush(300)
    elapsed = time.perf_counter() - started
    stats = client.stats
    client.close()
    if left or stats.failed or stats.dropped:
        raise RuntimeError(f"the end-to-end run lost events: {stats}")
    return stats.sent / elapsed


def ledger_ingest(ledger: Ledger, batches: int, batch_size: int) -> float:
    """Events per second the ledger accepts over HTTP, batches of ``batch_size`` from one connection."""
    import httpx

    from agent_ledger_sdk._http import NO_DELAY

    headers = {"x-api-key": ledger.key}
    transport = httpx.HTTPTransport(socket_options=NO_DELAY)
    with httpx.Client(base_url=ledger.url, headers=headers, transport=transport) as http:
        session_id = http.post("/v1/sessions", json={"agentName": "ingest"}).json()["id"]
        events = [
            {"type": "tool_call", "stepIndex": i, "toolName": "t", "toolInput": {"q": i}} for i in range(batch_size)
        ]
        body = json.dumps({"sessionId": session_id, "events": events}).encode()
        started = time.perf_counter()
        for _ in range(batches):
            http.post("/v1/events", content=body, headers={"content-type": "application/json"}).raise_for_status()
        return batches * batch_size / (time.perf_counter() - started)


def peak_rss_ledger_down(events: int) -> dict[str, float]:
    """Peak RSS (VmHWM) of a process offering ``events`` events while the ledger is down."""
    script = textwrap.dedent(f"""
        import time
        from agent_ledger_sdk import AgentLedgerClient

        def peak_mb():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024

        client = AgentLedgerClient(api_key="k", base_url="http://127.0.0.1:9", max_retries=0, timeout=0.5)

        @client.tool
        def work(i):
            return i

        before = peak_mb()
        with client.session("down"):
            for i in range({events // 2}):
                work(i)
        print(before, peak_mb(), client.stats.dropped, client.stats.failed)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    before, after, dropped, failed = out.stdout.split()
    return {"before_mb": float(before), "after_mb": float(after), "dropped": int(dropped), "failed": int(failed)}


def import_ms(repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                "import time; t = time.perf_counter(); import agent_ledger_sdk; print((time.perf_counter() - t) * 1000)",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        samples.append(float(out.stdout))
    return statistics.median(samples)


def _us(value: float) -> str:
    return f"{0.0 if abs(value) < 0.005 else value:.2f} µs"  # never print "-0.00"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    args = parser.parse_args()
    calls, repeats = (2_000, 5) if args.quick else (20_000, 7)

    rows: list[tuple[str, str, str]] = []
    ledger = Ledger()
    try:
        for mode in ("background", "disabled"):
            measured = overhead(ledger, mode, calls, repeats)
            target = {"background": "<= 5 µs", "disabled": "<= 0.3 µs"}[mode]
            rows.append((f"`@tool` call over the plain call, {mode}", _us(measured["tool"]), target))
            rows.append((f"`llm_call` block over the plain call, {mode}", _us(measured["llm_call"]), target))
            if "tool_saturated" in measured:
                rows.append(
                    (
                        "`@tool` call, back to back with the sender saturated",
                        _us(measured["tool_saturated"]),
                        "-",
                    )
                )
        inline = inline_per_event(ledger, 300 if args.quick else 1000, 3 if args.quick else 5)
        published = inline.get("published")
        rows.append(
            (
                "inline, µs per event: `log_tool_call`",
                f"{inline['ours']:.0f} µs",
                f"<= published ({published:.0f} µs)" if published else "published client unavailable",
            )
        )
        rows.append(
            (
                "inline, µs per event: `@tool` (two events a call)",
                f"{inline['ours_tool']:.0f} µs",
                f"<= published ({published:.0f} µs)" if published else "-",
            )
        )
        rows.append(
            ("`@tool` call over the plain call, inline (two round trips)", f"{2 * inline['ours_tool']:.0f} µs", "-")
        )
        rows.append(
            ("`llm_call` block over the plain call, inline (one round trip)", f"{inline['ours_llm']:.0f} µs", "-")
        )
        rows.append(
            (
                "end to end, helpers to ledger, one process",
                f"{end_to_end(ledger, 20_000 if args.quick else 100_000):,.0f} events/s",
                ">= 20,000 events/s",
            )
        )
        rows.append(
            (
                "ledger ingest over HTTP, batches of 100",
                f"{ledger_ingest(ledger, 50 if args.quick else 300, 100):,.0f} events/s",
                "-",
            )
        )
    finally:
        ledger.close()
    down = peak_rss_ledger_down(100_000 if args.quick else 1_000_000)
    rows.append(
        (
            f"peak RSS offering {100_000 if args.quick else 1_000_000:,} events, ledger down",
            f"{down['after_mb']:.1f} MB (from {down['before_mb']:.1f} MB; {down['dropped']:,} dropped, {down['failed']:,} failed)",
            "bounded by the queue",
        )
    )
    rows.append(("`import agent_ledger_sdk`", f"{import_ms(10):.0f} ms", "<= 130 ms"))

    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} cores, medians\n")
    print("| measure | result | target |")
    print("| --- | --- | --- |")
    for row in rows:
        print(f"| {row[0]} | {row[1]} | {row[2]} |")


if __name__ == "__main__":
    main()
