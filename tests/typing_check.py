"""Type-checked in CI (mypy --strict): the public API used the way users write it.

Decorated functions must keep their exact signatures for type checkers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from typing_extensions import assert_type

import agent_ledger_sdk
from agent_ledger_sdk import (
    AgentLedgerClient,
    AsyncAgentLedgerClient,
    BudgetGuardrailDetails,
    BudgetGuardrailError,
    LedgerStats,
    SessionHandle,
)

ledger = AgentLedgerClient(api_key="sk-test", batching=False, enabled=False)
async_ledger = AsyncAgentLedgerClient(api_key="sk-test")


@ledger.tool
def search_docs(query: str, limit: int = 3) -> list[str]:
    return [query] * limit


@ledger.tool("web_search")
async def web_search(query: str) -> dict[str, int]:
    return {query: 1}


@ledger.tool(name="rows", capture_output=False)
def rows(n: int) -> Iterator[int]:
    yield from range(n)


@ledger.session
def bare(ticket: str) -> str:
    return ticket


@ledger.session("support-bot")
def handle(ticket: str, *, urgent: bool = False) -> str:
    hits: list[str] = search_docs(ticket)
    with ledger.llm_call(provider="openai", model="gpt-4o-mini", prompt=ticket) as call:
        call.record(response="ok", tokens_in=1, tokens_out=2, model="gpt-4o-mini")
        call.set(temperature=0.2)
    session = ledger.current_session()
    if session is not None:
        session.log("retrieval", doc_count=len(hits))
        step: int = session.next_step()
        assert step >= 0
    return hits[0]


@async_ledger.session(agent_name="async-bot")
async def async_handle(ticket: str) -> int:
    found = await web_search(ticket)
    async with async_ledger.llm_call(provider="anthropic", model="claude", prompt=[{"role": "user"}]) as call:
        call.record(response="r")
    return len(found)


@agent_ledger_sdk.session("streamer")
async def stream(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


class Agent:
    @ledger.session("method")
    def run(self, x: int) -> int:
        return x

    @classmethod
    @ledger.tool
    def build(cls, size: int) -> int:
        return size


assert_type(search_docs("q"), list[str])
assert_type(handle("t", urgent=True), str)
assert_type(bare("t"), str)
assert_type(rows(3), Iterator[int])
assert_type(Agent().run(1), int)
assert_type(ledger.stats, LedgerStats)
assert_type(ledger.flush(timeout=1.0), int)
assert_type(ledger.current_session(), SessionHandle | None)


def published_api() -> None:
    with AgentLedgerClient(api_key="sk-...", timeout=5) as client:
        session_id: str = client.start_session("batch-writer")
        client.log_llm_call(
            session_id,
            {
                "stepIndex": 0,
                "model": "m",
                "provider": "p",
                "prompt": "",
                "response": "",
                "tokensIn": 0,
                "tokensOut": 0,
                "latencyMs": 0,
            },
        )
        try:
            client.end_session(session_id, "success")
        except BudgetGuardrailError as exc:
            details: BudgetGuardrailDetails = exc.details
            print(details.remaining_budget_usd)


async def async_published_api() -> None:
    async with AsyncAgentLedgerClient(api_key="sk-...") as client:
        session_id = await client.start_session("batch-writer")
        assert_type(session_id, str)
        await client.end_session(session_id, "error", error_message="boom")
