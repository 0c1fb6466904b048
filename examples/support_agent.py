"""A support agent instrumented with agent-ledger-sdk: copy this file to start your own.

Run it as it is: with no AGENT_LEDGER_BASE_URL it starts a local ledger for
itself (pip install "agent-ledger-sdk[server]"); point the environment at a
ledger (``agent-ledger serve`` or the hosted API) to record there instead.

    python examples/support_agent.py
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import agent_ledger_sdk

KNOWLEDGE_BASE = {
    "refund-policy": "Refunds are issued to the original payment method within 5 business days.",
    "shipping-times": "Standard shipping takes 3 to 5 business days; express takes 1 to 2.",
    "damaged-items": "Send a photo of the damaged item and we replace it free of charge.",
}
ORDERS = {
    "A-1001": {"item": "Kettle", "total": 39.0},
    "A-1002": {"item": "Espresso machine", "total": 649.0},
}


@dataclass
class Completion:
    text: str
    model: str
    input_tokens: int
    output_tokens: int


class FakeLLM:
    """Stands in for a real chat model: deterministic answers, token counts and latency."""

    model = "gpt-4o-mini"

    def complete(self, messages: list[dict[str, str]]) -> Completion:
        time.sleep(0.02)
        context = " ".join(m["content"] for m in messages[:-1])
        text = f"Thanks for reaching out. {context.split('.')[0]}."
        tokens_in = sum(len(m["content"].split()) for m in messages) * 4 // 3 + 8
        return Completion(text, "gpt-4o-mini-2024-07-18", tokens_in, len(text.split()) * 4 // 3)


class RefundNeedsApproval(RuntimeError):
    pass


llm = FakeLLM()


@agent_ledger_sdk.tool
def search_kb(query: str, limit: int = 2) -> list[str]:
    words = set(query.lower().split())
    ranked = sorted(KNOWLEDGE_BASE, key=lambda slug: -len(words & set(slug.split("-"))))
    return [KNOWLEDGE_BASE[slug] for slug in ranked[:limit]]


@agent_ledger_sdk.tool
def lookup_order(order_id: str) -> dict[str, Any]:
    return ORDERS[order_id]


@agent_ledger_sdk.tool
def issue_refund(order_id: str, amount: float) -> str:
    if amount > 100:
        raise RefundNeedsApproval(f"refunds over $100 need a human (asked ${amount:.2f})")
    return f"refunded ${amount:.2f} on {order_id}"


@agent_ledger_sdk.session("support-bot")
def handle_ticket(text: str, order_id: str) -> str:
    articles = search_kb(text)
    order = lookup_order(order_id)
    messages = [{"role": "system", "content": a} for a in articles] + [{"role": "user", "content": text}]
    with agent_ledger_sdk.llm_call(provider="openai", model=llm.model, prompt=messages) as call:
        reply = llm.complete(messages)
        call.record(
            response=reply.text, tokens_in=reply.input_tokens, tokens_out=reply.output_tokens, model=reply.model
        )
    try:
        return f"{reply.text} {issue_refund(order_id, order['total'])}"
    except RefundNeedsApproval:
        return f"{reply.text} A colleague will approve your refund shortly."


def main() -> None:
    print(handle_ticket("How long do refunds take for my kettle?", "A-1001"))
    print(handle_ticket("My espresso machine is damaged, refund please", "A-1002"))
    left = agent_ledger_sdk.flush(timeout=10)
    print(f"recorded {agent_ledger_sdk.get_client().stats.sent} events, {left} left unsent")


if __name__ == "__main__":
    if os.environ.get("AGENT_LEDGER_BASE_URL"):
        main()  # the helpers configure themselves from AGENT_LEDGER_API_KEY / AGENT_LEDGER_BASE_URL
    else:
        from agent_ledger_sdk import local

        with local.run() as running:
            agent_ledger_sdk.configure(api_key=running.api_key, base_url=running.url)
            main()
