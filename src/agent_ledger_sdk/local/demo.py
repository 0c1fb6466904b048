"""``agent-ledger demo``: a local ledger, a real agent talking to it over HTTP, its costs and a guardrail."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

from .._exceptions import BudgetGuardrailError
from . import run
from .demo_agent import FakeLLM, build_runaway_agent, build_support_agent
from .report import budgets_table, timeline, usd

RUNAWAY_BUDGET_USD = 0.05


def run_demo(db: Optional[Path] = None, out: Callable[[str], None] = print) -> int:
    """Run the demo; return 0 when every step behaved as it should."""
    sdk_logger = logging.getLogger("agent_ledger_sdk")
    level = sdk_logger.level
    sdk_logger.setLevel(logging.ERROR)  # the demo narrates the refusals the SDK would warn about
    try:
        return _run(db, out)
    finally:
        sdk_logger.setLevel(level)


def _run(db: Optional[Path], out: Callable[[str], None]) -> int:
    with run(db=db) as ledger:
        out(f"Started a local ledger at {ledger.url} (database: {ledger.db_path})\n")
        client = ledger.client()

        out("1. A support agent answers two tickets; one refund is too large for the refund tool.")
        handle_ticket = build_support_agent(client, FakeLLM("gpt-4o-mini"))
        handle_ticket("My kettle arrived, how long do refunds take?", "A-1001", wants_refund=True)
        handle_ticket("The espresso machine is damaged, I want a refund", "A-1002", wants_refund=True)
        left = client.flush(10)
        for summary in reversed(ledger.sessions("support-bot")):
            out("")
            out(timeline(ledger.session(summary["id"])))

        out(f"\n2. A runaway agent loops on gpt-4o with a daily budget of {usd(RUNAWAY_BUDGET_USD)}.")
        ledger.set_budget("runaway-agent", RUNAWAY_BUDGET_USD)
        research = build_runaway_agent(client, FakeLLM("gpt-4o", output_tokens=800))
        stopped: Optional[BudgetGuardrailError] = None
        try:
            research("why is the sky blue")
        except BudgetGuardrailError as exc:
            stopped = exc
        left += client.flush(10)
        runaway = ledger.session(ledger.sessions("runaway-agent")[0]["id"])
        recorded = [e for e in runaway["events"] if e["type"] == "llm_call"]
        out(f"   The ledger recorded {len(recorded)} calls costing {usd(runaway['costUsd'])}, within the budget,")
        if stopped is None:
            out("   but the guardrail never stopped the agent. That is a bug.")
            return 1
        refused = client.stats.failed
        out(f"   refused the {refused} call{'s' if refused != 1 else ''} that would have gone over it, and the SDK")
        out("   then stopped the agent")
        out("   before its next LLM call ran:")
        out(f"     BudgetGuardrailError: {stopped}")
        out(f"   The session ended with status {runaway['status']!r}.\n")
        out(budgets_table(ledger.store.budgets(ledger.workspace)))
        client.close()
        if left:
            out(f"\nWarning: {left} events were not delivered.")
            return 1
        out("\nNext: `agent-ledger serve` runs this ledger for your own agents; see docs/local-ledger.md.")
        return 0
