"""The pre-flight stop: agents whose budget guardrail tripped today (UTC) are stopped before their next LLM call."""

from __future__ import annotations

import datetime
from typing import Optional

from ._exceptions import BudgetGuardrailError


def utc_today() -> datetime.date:
    return datetime.datetime.now(datetime.timezone.utc).date()


class GuardrailLatch:
    """Agents whose budget guardrail tripped today (UTC): their next LLM call is stopped before it runs."""

    def __init__(self) -> None:
        self._tripped: dict[str, tuple[datetime.date, BudgetGuardrailError]] = {}

    def __bool__(self) -> bool:
        return bool(self._tripped)

    def trip(self, agent_name: str, error: BudgetGuardrailError) -> None:
        self._tripped[agent_name] = (utc_today(), error)

    def clear(self, agent_name: Optional[str] = None) -> None:
        if agent_name is None:
            self._tripped.clear()
        else:
            self._tripped.pop(agent_name, None)

    def check(self, agent_name: str) -> None:
        """Raise :class:`BudgetGuardrailError` if ``agent_name`` is stopped for today."""
        if not self._tripped:
            return
        entry = self._tripped.get(agent_name)
        if entry is None:
            return
        day, error = entry
        if day != utc_today():
            self._tripped.pop(agent_name, None)
            return
        raise BudgetGuardrailError(
            f"Budget guardrail for agent {agent_name!r} tripped earlier today (UTC), so this LLM "
            f"call was stopped before it ran: {error.message.rstrip('.')}. It lifts at the next UTC midnight, "
            "or raise the limit and call ledger.reset_guardrail().",
            error.details,
        )
