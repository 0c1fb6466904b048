"""The examples run as they are: against a ledger named by the environment, and on their own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the examples record into a local ledger")

from agent_ledger_sdk.local import run

pytestmark = pytest.mark.integration
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_support_agent_records_two_sessions_with_a_failing_tool(tmp_path: Path) -> None:
    with run(db=tmp_path / "l.db") as ledger:
        out = run_example("support_agent.py", ledger.env())
        sessions = [ledger.session(s["id"]) for s in ledger.sessions("support-bot")]
    assert "refunded $39.00 on A-1001" in out
    assert "recorded 14 events, 0 left unsent" in out
    assert [s["status"] for s in sessions] == ["success", "success"]
    refused = [
        e for s in sessions for e in s["events"] if e["type"] == "tool_result" and e["toolName"] == "issue_refund"
    ]
    assert {"errorType": "RefundNeedsApproval", "error": "refunds over $100 need a human (asked $649.00)"} in [
        e["toolOutput"] for e in refused
    ]
    assert all(s["costUsd"] > 0 for s in sessions)


def test_the_async_agent_records_concurrent_tools(tmp_path: Path) -> None:
    with run(db=tmp_path / "l.db") as ledger:
        out = run_example("async_agent.py", ledger.env())
        (summary,) = ledger.sessions("travel-planner")
        session = ledger.session(summary["id"])
    assert "Go to Cairo." in out
    calls = [e for e in session["events"] if e["type"] == "tool_call"]
    assert sorted(e["stepIndex"] for e in calls) == [0, 1, 2, 3, 4]
    assert any(
        e.get("toolOutput", {}).get("errorType") == "WeatherServiceDown"
        for e in session["events"]
        if e["type"] == "tool_result"
    )
    assert session["events"][-1]["type"] == "llm_call"


@pytest.mark.parametrize("name", ["support_agent.py", "async_agent.py"])
def test_the_examples_run_without_any_configuration(name: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_LEDGER_")}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    assert "recorded" in result.stdout
