"""A small support agent, instrumented with three decorators, on a deterministic fake LLM.

It ships inside the package so that ``agent-ledger demo`` runs from any
install; ``examples/support_agent.py`` is the same agent as a file to copy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .._client import AgentLedgerClient

KNOWLEDGE_BASE = {
    "refund-policy": "Refunds are issued to the original payment method within 5 business days.",
    "shipping-times": "Standard shipping takes 3 to 5 business days; express takes 1 to 2.",
    "damaged-items": "Send a photo of the damaged item and we replace it free of charge.",
}
ORDERS = {
    "A-1001": {"item": "Kettle", "total": 39.0, "status": "delivered"},
    "A-1002": {"item": "Espresso machine", "total": 649.0, "status": "delivered"},
}


class OrderNotFound(LookupError):
    pass


class RefundNeedsApproval(RuntimeError):
    pass


@dataclass
class Completion:
    text: str
    model: str
    input_tokens: int
    output_tokens: int


class FakeLLM:
    """Answers like a chat model would, deterministically, with token counts and a little latency."""

    def __init__(self, model: str = "gpt-4o-mini", latency: float = 0.02, output_tokens: int = 0) -> None:
        self.model = model
        self.latency = latency
        self.output_tokens = output_tokens
        self.calls = 0  # how many completions ran: what the provider would bill

    def complete(self, messages: list[dict[str, str]]) -> Completion:
        self.calls += 1
        time.sleep(self.latency)
        question = messages[-1]["content"]
        context = " ".join(m["content"] for m in messages[:-1])
        text = f"Thanks for reaching out. {context.split('.')[0]}." if context else f"About '{question}': on it."
        prompt_tokens = sum(len(m["content"].split()) for m in messages) * 4 // 3 + 8
        return Completion(
            text,
            f"{self.model}-2024-07-18" if self.model == "gpt-4o-mini" else self.model,
            prompt_tokens,
            self.output_tokens or len(text.split()) * 4 // 3,
        )


def build_support_agent(ledger: AgentLedgerClient, llm: FakeLLM) -> Any:
    """The agent's tools and entry point, instrumented with ``ledger``."""

    @ledger.tool
    def search_kb(query: str, limit: int = 2) -> list[str]:
        words = set(query.lower().split())
        scored = sorted(KNOWLEDGE_BASE, key=lambda slug: -len(words & set(slug.split("-"))))
        return [KNOWLEDGE_BASE[slug] for slug in scored[:limit]]

    @ledger.tool
    def lookup_order(order_id: str) -> dict[str, Any]:
        if order_id not in ORDERS:
            raise OrderNotFound(f"no order {order_id}")
        return ORDERS[order_id]

    @ledger.tool
    def issue_refund(order_id: str, amount: float) -> str:
        if amount > 100:
            raise RefundNeedsApproval(f"refunds over $100 need a human (asked ${amount:.2f})")
        return f"refunded ${amount:.2f} on {order_id}"

    @ledger.session("support-bot")
    def handle_ticket(text: str, order_id: str, wants_refund: bool = False) -> str:
        articles = search_kb(text)
        order = lookup_order(order_id)
        messages = [{"role": "system", "content": a} for a in articles]
        messages.append({"role": "user", "content": text})
        with ledger.llm_call(provider="openai", model=llm.model, prompt=messages) as call:
            reply = llm.complete(messages)
            call.record(
                response=reply.text, tokens_in=reply.input_tokens, tokens_out=reply.output_tokens, model=reply.model
            )
        if wants_refund:
            try:
                reply.text += " " + issue_refund(order_id, order["total"])
            except RefundNeedsApproval as exc:
                session = ledger.current_session()
                if session is not None:
                    session.log("escalated", reason=str(exc), queue="refunds")
                reply.text += " A colleague will approve your refund shortly."
        return reply.text

    return handle_ticket


def build_runaway_agent(ledger: AgentLedgerClient, llm: FakeLLM) -> Any:
    """An agent stuck in a loop of expensive LLM calls: what a budget guardrail is for."""

    @ledger.session("runaway-agent")
    def research(topic: str, max_calls: int = 500) -> int:
        calls = 0
        notes = topic
        for _ in range(max_calls):
            # max_tokens bounds the answer: with a budget, the SDK reserves the most the call can cost.
            prompt = f"Dig deeper: {notes}"
            with ledger.llm_call(
                provider="openai", model=llm.model, prompt=prompt, max_tokens=llm.output_tokens
            ) as call:
                reply = llm.complete([{"role": "user", "content": f"Dig deeper: {notes}"}])
                call.record(response=reply.text, tokens_in=reply.input_tokens, tokens_out=reply.output_tokens)
            calls += 1
            notes = reply.text[:200]
        return calls

    return research
