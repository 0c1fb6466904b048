"""0 LLM-call bodies run beyond a budget: the SDK and the real local ledger, under every kind of concurrency.

Each call costs exactly $0.01 (a priced test model, one input token) and says
so with ``max_cost_usd``: the estimate is an upper bound, so exactly 50 calls
fit a $0.50 budget, however many threads, processes or tasks try at once.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from agent_ledger_sdk import AgentLedgerClient, AsyncAgentLedgerClient, BudgetGuardrailError

pytest.importorskip("starlette")

from agent_ledger_sdk.local import LocalLedger, run

pytestmark = pytest.mark.integration

MODEL = "acme-flat-1"
LIMIT = 0.50
FITS = 50


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[LocalLedger]:
    with run(db=tmp_path / "ledger.db") as running:
        running.set_price(f"acme/{MODEL}", 10_000, 10_000)  # $0.01 a token
        yield running


def one_call(client: AgentLedgerClient, ran: list[int]) -> bool:
    """One paid call; False once the budget stops it (before its body runs)."""
    try:
        with client.llm_call(provider="acme", model=MODEL, prompt="x", max_cost_usd=0.01) as call:
            ran.append(1)  # the body: where the money would be spent
            call.record(response="ok", tokens_in=1, tokens_out=0)
    except BudgetGuardrailError:
        return False
    return True


def spent(ledger: LocalLedger, agent: str) -> Decimal:
    (budget,) = [b for b in ledger.service.budgets(ledger.workspace) if b["agentName"] == agent]
    return Decimal(str(budget["spentTodayUsd"]))


def test_a_tight_loop_runs_exactly_what_fits(ledger: LocalLedger) -> None:
    ledger.set_budget("loop", LIMIT)
    client = ledger.client()
    ran: list[int] = []
    with client.session("loop"):
        for _ in range(200):
            one_call(client, ran)
    assert client.flush(30) == 0
    assert len(ran) == FITS
    assert spent(ledger, "loop") == Decimal("0.50")
    client.close()


def test_32_threads_on_one_budget_never_overspend(ledger: LocalLedger) -> None:
    ledger.set_budget("threads", LIMIT)
    client = ledger.client()
    ran: list[int] = []
    start = threading.Barrier(32)

    def worker() -> None:
        with client.session("threads"):
            start.wait()
            while one_call(client, ran):
                pass

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert client.flush(30) == 0
    assert len(ran) == FITS
    assert spent(ledger, "threads") == Decimal("0.50")
    client.close()


def test_asyncio_fan_out_never_overspends(ledger: LocalLedger) -> None:
    ledger.set_budget("tasks", LIMIT)
    client: AsyncAgentLedgerClient = ledger.async_client()
    ran: list[int] = []

    async def call() -> None:
        try:
            async with client.llm_call(provider="acme", model=MODEL, prompt="x", max_cost_usd=0.01) as c:
                ran.append(1)
                await asyncio.sleep(0)
                c.record(response="ok", tokens_in=1, tokens_out=0)
        except BudgetGuardrailError:
            pass

    async def main() -> None:
        async with client.session("tasks"):
            await asyncio.gather(*(call() for _ in range(200)))
        assert await client.aflush(30) == 0
        await client.aclose()

    asyncio.run(main())
    assert len(ran) == FITS
    assert spent(ledger, "tasks") == Decimal("0.50")


def test_32_processes_on_one_budget_never_overspend(ledger: LocalLedger, tmp_path: Path) -> None:
    ledger.set_budget("processes", LIMIT)
    script = textwrap.dedent(
        f"""
        import multiprocessing, sys
        from agent_ledger_sdk import AgentLedgerClient, BudgetGuardrailError

        def worker(_):
            client = AgentLedgerClient()
            ran = 0
            with client.session("processes"):
                while True:
                    try:
                        with client.llm_call(provider="acme", model="{MODEL}", prompt="x", max_cost_usd=0.01) as call:
                            ran += 1
                            call.record(response="ok", tokens_in=1, tokens_out=0)
                    except BudgetGuardrailError:
                        break
            assert client.flush(30) == 0
            return ran

        if __name__ == "__main__":
            with multiprocessing.get_context("spawn").Pool(32) as pool:
                print(sum(pool.map(worker, range(32))))
        """
    )
    path = tmp_path / "processes.py"
    path.write_text(script)
    env = {**os.environ, **ledger.env()}
    result = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) == FITS
    assert spent(ledger, "processes") == Decimal("0.50")


def test_the_published_client_path_is_refused_and_still_counted(ledger: LocalLedger) -> None:
    """No reservation (the published client's path): the 429 comes after, and the ledger shows what was spent."""
    ledger.set_budget("published", 0.05)
    client = ledger.client(batching=False)
    session_id = client.start_session("published")
    refused = 0
    for step in range(10):
        try:
            client.log_llm_call(
                session_id,
                {
                    "stepIndex": step,
                    "provider": "acme",
                    "model": MODEL,
                    "prompt": "x",
                    "response": "ok",
                    "tokensIn": 1,
                    "tokensOut": 0,
                    "latencyMs": 1,
                },
            )
        except BudgetGuardrailError:
            refused += 1
    assert refused == 5
    events: list[dict[str, Any]] = ledger.session(session_id)["events"]
    assert len(events) == 10  # nothing erased
    assert [e["overBudget"] for e in events] == [False] * 5 + [True] * 5
    assert spent(ledger, "published") == Decimal("0.10")  # what was really spent
    client.close()


def test_a_budget_set_between_two_runs_applies_to_the_next_session(ledger: LocalLedger) -> None:
    client = ledger.client()
    ran: list[int] = []
    with client.session("late-budget"):
        assert one_call(client, ran)  # no budget yet: no reservation, the call runs
    ledger.set_budget("late-budget", 0.005)  # less than one call
    with client.session("late-budget"):
        assert not one_call(client, ran)  # the new session's start says there is a budget now
    assert len(ran) == 1
    assert client.flush(10) == 0
    client.close()
