"""The benchmark runs and reports every measure (its numbers are checked in docs/performance.md, not here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the benchmark runs a local ledger")

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.integration
def test_the_quick_benchmark_prints_the_whole_table() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    measures = [row.split(" | ")[0].lstrip("| ") for row in rows]
    for expected in (
        "`@tool` call over the plain call, background",
        "`llm_call` block over the plain call, background",
        "`llm_call` block, 50 KB prompt as one string, background",
        "`llm_call` block, 50 KB prompt as 100 chat messages of 500 chars, background",
        "`@tool` call over the plain call, disabled",
        "`llm_call` block, first of a session (a new agent), ledger up",
        "`llm_call` block, first of a session (a new agent), ledger down",
        "`llm_call` block, agent with a budget (one reservation round trip), p50 / p99",
        "`llm_call` block, agent without a budget, p50 / p99",
        "inline, µs per event: `log_tool_call`",
        "end to end, helpers to ledger, one process",
        "`import agent_ledger_sdk`",
    ):
        assert expected in measures
    for prefix in (
        "OpenAI `chat.completions.create`, instrumented over uninstrumented",
        "OpenAI streamed chat completion read to the end, instrumented over uninstrumented",
        "OpenAI streamed chat completion of 100 chunks read to the end, instrumented over uninstrumented",
        "Anthropic streamed message of 100 text deltas read to the end, instrumented over uninstrumented",
    ):
        assert any(m.startswith(prefix) for m in measures), prefix
    burst = {m.split(": ")[-1]: row for m, row in zip(measures, rows) if m.startswith("burst of 10,000 tool events")}
    assert set(burst) == {"recorded (caller side)", "delivered (`flush()` returned)", "events the ledger recorded"}
    assert "| 10,000 events | 10,000 events |" in burst["events the ledger recorded"]
    # Ledger down: for each workload, memory only, with a journal, and that journal's close().
    for workload in ("40,000 short sessions", "200 tool calls returning 100 KB"):
        down = [m for m in measures if m.startswith(f"ledger down, {workload}, ")]
        assert len(down) == 3, down
        assert down[0].endswith("no journal: peak RSS growth")
        assert down[1].endswith("journal: peak RSS growth")
        assert down[2].endswith("journal: then `close()`")
    units = (" µs", "events/s", " events", "MiB", " ms")
    assert all(any(unit in row.split(" | ")[1] for unit in units) for row in rows), rows


def test_the_ingest_benchmarks_batches_are_an_agents_steps_in_order() -> None:
    # The ingest benchmarks' clients send what an instrumented agent sends: each batch's steps follow the last
    # one's, every span id new. The same batch again and again writes its steps into a hundred places of the
    # ledger's index of a session's events (a page each), as no agent does, and the floor with it.
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from ingest_floor import event
    from ledger_scale import StepBatches

    batches = StepBatches("session-1", 3, event)
    for first in (0, 3, 6):
        sent = json.loads(batches.body())
        expected = [{**event(k), "stepIndex": first + k, "spanId": f"{first + k:016x}"} for k in range(3)]
        assert sent == {"sessionId": "session-1", "events": expected}
