"""The whole process's CPU per call with ``otel=`` on and off, next to a bare OpenTelemetry span.

    python benchmarks/otel_cpu.py               # 11 rounds of 500 calls per row
    REPEATS=21 python benchmarks/otel_cpu.py    # more rounds

Unlike ``run.py``'s caller-side rows, this counts the sender thread's work too
(encoding, delivery, and the spans it fills in and ends): each round times the
process's CPU (``time.process_time``, all threads) over 500 calls and the
``flush()`` that delivers them, against a real local ledger in its own process.
Rows are µs per call over the plain function, medians over the rounds. The
tracer provider is the SDK's with no exporter: making the spans is what is timed.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import MIB, Ledger, bare_genai_tool_span

BURST = 500


def cpu_per_call(function: Callable[[], Any], client: Any, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        if client is not None:
            client.flush(60)
        started = time.process_time()
        for _ in range(BURST):
            function()
        if client is not None:
            client.flush(60)
        samples.append((time.process_time() - started) / BURST * 1e6)
    return statistics.median(samples)


def main() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    from agent_ledger_sdk import AgentLedgerClient

    repeats = int(os.environ.get("REPEATS", "11"))
    os.environ["AGENT_LEDGER_HOME"] = tempfile.mkdtemp(prefix="agent-ledger-home-")
    ledger = Ledger()
    provider = TracerProvider()
    tracer = provider.get_tracer("bench")
    clients = {
        "off": AgentLedgerClient(api_key=ledger.key, base_url=ledger.url, max_queue_bytes=256 * MIB),
        "on": AgentLedgerClient(api_key=ledger.key, base_url=ledger.url, max_queue_bytes=256 * MIB, otel=provider),
    }

    plain, bare_span = bare_genai_tool_span(tracer)

    results: dict[str, float] = {}
    base: Optional[float] = None
    try:
        for name, client in clients.items():
            tool = client.tool(plain)

            def block(client: Any = client) -> None:
                with client.llm_call(provider="openai", model="gpt-4o-mini", prompt="q") as call:
                    call.record(response="a", tokens_in=10, tokens_out=2)

            with client.session(f"bench-otel-{name}"):
                client.flush(60)
                base = cpu_per_call(lambda: plain("q"), None, repeats)
                if name == "on":
                    results["span"] = cpu_per_call(bare_span, None, repeats) - base
                results[f"tool_{name}"] = cpu_per_call(functools.partial(tool, "q"), client, repeats) - base
                results[f"llm_call_{name}"] = cpu_per_call(block, client, repeats) - base
    finally:
        for client in clients.values():
            client.close()
        provider.shutdown()
        ledger.close()
    print(json.dumps({key: round(value, 1) for key, value in results.items()}))


if __name__ == "__main__":
    main()
