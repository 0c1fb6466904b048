"""``agent-ledger demo``: a local ledger, a real agent talking to it over HTTP, its costs and a guardrail."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Callable, Optional

from .._exceptions import BudgetGuardrailError
from . import run
from .demo_agent import FakeLLM, build_runaway_agent, build_support_agent
from .report import budgets_table, timeline, usd

RUNAWAY_BUDGET_USD = 0.05


def run_demo(db: Optional[Path] = None, out: Callable[[str], None] = print, *, pause: Optional[bool] = None) -> int:
    """Run the demo; return 0 when every step behaved as it should.

    ``pause``: at the end, keep the ledger (and its dashboard) up until Enter is pressed; by default,
    when the demo runs in a terminal.
    """
    if pause is None:
        pause = sys.stdin.isatty() and sys.stdout.isatty()
    sdk_logger = logging.getLogger("agent_ledger_sdk")
    level = sdk_logger.level
    sdk_logger.setLevel(logging.ERROR)  # the demo narrates the refusals the SDK would warn about
    try:
        return _run(db, out, pause)
    finally:
        sdk_logger.setLevel(level)


def _run(db: Optional[Path], out: Callable[[str], None], pause: bool = False) -> int:
    with run(db=db) as ledger:
        out(f"Started a local ledger at {ledger.url} (database: {ledger.db_path})")
        out(f"Its dashboard: {ledger.url}/ (sessions, costs and budgets; no login on this machine)\n")
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
        runaway_llm = FakeLLM("gpt-4o", output_tokens=800)
        research = build_runaway_agent(client, runaway_llm)
        stopped: Optional[BudgetGuardrailError] = None
        try:
            research("why is the sky blue")
        except BudgetGuardrailError as exc:
            stopped = exc
        left += client.flush(10)
        runaway = ledger.session(ledger.sessions("runaway-agent")[0]["id"])
        recorded = [e for e in runaway["events"] if e["type"] == "llm_call"]
        over = [e for e in recorded if e["overBudget"]]
        (budget,) = [b for b in ledger.service.budgets(ledger.workspace) if b["agentName"] == "runaway-agent"]
        if stopped is None:
            out("   The guardrail never stopped the agent. That is a bug.")
            return 1
        out(
            f"   {runaway_llm.calls} LLM calls ran; the ledger recorded {len(recorded)}, costing {usd(runaway['costUsd'])}."
        )
        if over:
            out("   The last went over the budget: the ledger recorded it (overBudget), counted it and answered")
            out("   429, and the SDK stopped the agent before its next LLM call ran:")
        else:
            out("   Each call reserved its cost before it ran; the ledger refused the reservation of the call that")
            out("   would have gone over the budget, so the SDK stopped the agent before that call ran:")
        out(f"     BudgetGuardrailError: {stopped}")
        out(f"   Spend in the ledger today: {usd(budget['spentTodayUsd'])}, exactly what the calls that ran cost.")
        out(f"   The session ended with status {runaway['status']!r}.\n")
        out(budgets_table(ledger.service.budgets(ledger.workspace)))
        client.close()
        if left:
            out(f"\nWarning: {left} events were not delivered.")
            return 1
        if len(recorded) != runaway_llm.calls or budget["spentTodayUsd"] != runaway["costUsd"]:
            out("\nThe ledger's spend does not match the calls that ran. That is a bug.")
            return 1
        out("\nNext: `agent-ledger serve` runs this ledger for your own agents; see docs/local-ledger.md.")
        if pause:
            out(f"\nThe dashboard at {ledger.url}/ shows the sessions above. Press Enter to stop the ledger.")
            with contextlib.suppress(EOFError, KeyboardInterrupt):
                input()
        elif db is not None:
            out(
                f"Browse these sessions in the dashboard: `agent-ledger serve --db {db}`, then open http://127.0.0.1:8787/"
            )
        else:
            out(
                "This demo's ledger was temporary: `agent-ledger demo --db demo.db` keeps one, and "
                "`agent-ledger serve --db demo.db` shows it in the dashboard at http://127.0.0.1:8787/"
            )
        return 0
