"""The pytest plugin as a user meets it: a project of their own, run by pytest in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

# The README's agent, as a user would keep it in a module of their project.
AGENT = """
from agent_ledger_sdk import AgentLedgerClient

ledger = AgentLedgerClient()  # key and URL from AGENT_LEDGER_API_KEY / AGENT_LEDGER_BASE_URL


@ledger.tool
def search_docs(query: str, limit: int = 3) -> list:
    return ["Refunds take 5 business days."][:limit]


@ledger.session("support-bot")
def handle(ticket: str) -> str:
    hits = search_docs(ticket)
    with ledger.llm_call(provider="openai", model="gpt-4o-mini", prompt=ticket) as call:
        answer = hits[0]
        call.record(response=answer, tokens_in=120, tokens_out=14, model="gpt-4o-mini")
    return answer
"""


def run_pytest(project: Path, test: str) -> subprocess.CompletedProcess[str]:
    (project / "agent.py").write_text(AGENT)
    (project / "test_agent.py").write_text(textwrap.dedent(test))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENT_LEDGER_", "PYTEST_"))}
    env["AGENT_LEDGER_HOME"] = str(project / "home")  # a fresh machine: no key anywhere
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error", str(project)],
        capture_output=True,
        text=True,
        cwd=project,
        env=env,
        timeout=120,
    )


def test_local_ledger_records_an_agent_written_as_the_readme_shows(tmp_path: Path) -> None:
    pytest.importorskip("starlette")
    result = run_pytest(
        tmp_path,
        """
        import agent


        def test_the_agent_is_recorded(local_ledger):
            assert agent.handle("How long do refunds take?") == "Refunds take 5 business days."
            local_ledger.flush()
            (summary,) = local_ledger.sessions("support-bot")
            assert summary["status"] == "success"
            events = local_ledger.session(summary["id"])["events"]
            assert [e["type"] for e in events] == ["tool_call", "tool_result", "llm_call"]
            assert events[2]["tokensIn"] == 120
        """,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_ledger_capture_records_the_same_agent(tmp_path: Path) -> None:
    result = run_pytest(
        tmp_path,
        """
        import agent


        def test_the_agent_is_captured(ledger_capture):
            agent.handle("How long do refunds take?")
            session = ledger_capture.session("support-bot")
            assert [e["type"] for e in session.events] == ["tool_call", "tool_result", "llm_call"]
            assert session.events[0]["toolInput"] == {"query": "How long do refunds take?", "limit": 3}
        """,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_internal_error_of_the_sdk_fails_the_test_that_met_it(tmp_path: Path) -> None:
    result = run_pytest(
        tmp_path,
        """
        import agent
        from agent_ledger_sdk.testing import Capture


        class BrokenCapture(Capture):
            def emit(self, handle, event, size=0):
                raise RuntimeError("a bug in the SDK")


        def test_meets_a_bug(monkeypatch):
            from agent_ledger_sdk import _instrumentation

            monkeypatch.setattr(_instrumentation, "capture_override", BrokenCapture())
            assert agent.handle("hi") == "Refunds take 5 business days."  # the user's code carried on
        """,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "agent-ledger internal error(s) during the test: emit: RuntimeError: a bug in the SDK" in result.stdout
