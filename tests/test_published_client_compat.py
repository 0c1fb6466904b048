"""The published agent-ledger-sdk 0.0.6 client, unchanged, works against the local ledger."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the local ledger needs the server extra")

from agent_ledger_sdk.local import LocalLedger, run

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.version_info < (3, 10), reason="the published 0.0.6 uses dataclass(slots=True): 3.10+"),
]

SCRIPT = textwrap.dedent(
    """
    import os, agent_ledger_sdk
    from agent_ledger_sdk import AgentLedgerClient, BudgetGuardrailError, run_session, instrument_tool

    assert "site-packages" not in agent_ledger_sdk.__file__ and "published" in agent_ledger_sdk.__file__, agent_ledger_sdk.__file__
    ledger = AgentLedgerClient(api_key=os.environ["KEY"], base_url=os.environ["URL"])
    with run_session(ledger, "published-bot") as (session_id, steps):
        instrument_tool(ledger=ledger, session_id=session_id, step_index=steps.next(), tool_name="search",
                        tool_input={"q": "x"}, run=lambda: ["hit"])
        ledger.log_llm_call(session_id, {"stepIndex": steps.next(), "provider": "test", "model": "flat",
                            "prompt": "p", "response": "r", "tokensIn": 1000, "tokensOut": 0, "latencyMs": 3})
        try:
            ledger.log_llm_call(session_id, {"stepIndex": steps.next(), "provider": "test", "model": "flat",
                                "prompt": "p", "response": "r", "tokensIn": 1000, "tokensOut": 0, "latencyMs": 3})
        except BudgetGuardrailError as exc:
            print("GUARDRAIL", exc.details.agent_name, exc.details.remaining_budget_usd)
    print("SESSION", session_id)
    """
)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("published")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-compile",
            "--target",
            str(target),
            "agent-ledger-sdk==0.0.6",
            "httpx<0.28",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


def test_the_published_client_runs_a_session_and_meets_the_guardrail(published: Path, tmp_path: Path) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text('{"test/flat": {"input_per_mtok": 1, "output_per_mtok": 1}}')
    with run(prices=prices) as ledger:
        ledger.set_budget("published-bot", 0.0015)
        out = _run_published(published, ledger)
        session_id = out.split("SESSION ")[1].strip()
        recorded = ledger.session(session_id)
    assert "GUARDRAIL published-bot 0.0005" in out  # 0.0015 - 0.001, exactly
    assert recorded["status"] == "success"
    # The refused call had run: it is recorded, flagged and counted, so the ledger shows what was spent.
    assert [(e["type"], e["overBudget"]) for e in recorded["events"]] == [
        ("tool_call", False),
        ("tool_result", False),
        ("llm_call", False),
        ("llm_call", True),
    ]
    assert recorded["costUsd"] == Decimal("0.002")


def _run_published(published: Path, ledger: LocalLedger) -> str:
    env = {**os.environ, "PYTHONPATH": str(published), "KEY": ledger.api_key, "URL": ledger.url}
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout
