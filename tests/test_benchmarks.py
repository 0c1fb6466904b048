"""The benchmark runs and reports every measure (its numbers are checked in docs/performance.md, not here)."""

from __future__ import annotations

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
        "`@tool` call over the plain call, disabled",
        "inline, µs per event: `log_tool_call`",
        "end to end, helpers to ledger, one process",
        "`import agent_ledger_sdk`",
    ):
        assert expected in measures
    assert any(m.startswith("peak RSS offering") for m in measures)
    assert all(" µs" in row or "events/s" in row or "MB" in row or " ms" in row for row in rows)
