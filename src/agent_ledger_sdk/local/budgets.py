"""Budget rules, apart from storage: which limits apply, whether an amount fits, what a refusal says.

Four kinds of budget, each a limit in USD over a window:

==================  ==================================  ============================
kind                window                              set with
==================  ==================================  ============================
``agent-daily``     the agent's spend this UTC day      ``budget set AGENT USD``
``agent-monthly``   the agent's spend this UTC month    ``budget set AGENT USD --monthly``
``workspace-daily`` every agent of the workspace today  ``budget set-workspace USD``
``session``         one session, for its whole life     ``maxCostUsd`` when it starts
==================  ==================================  ============================

An amount fits a budget when ``spent + reserved + amount <= limit``, where
``reserved`` is what calls in flight hold (granted reservations not yet settled,
released or expired). A soft threshold (``warnAtPercent``) makes the ledger
record a ``budget_warning`` event when the spend crosses it.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Optional

from . import money

AGENT_DAILY = "agent-daily"
AGENT_MONTHLY = "agent-monthly"
WORKSPACE_DAILY = "workspace-daily"
SESSION = "session"
KINDS = (AGENT_DAILY, AGENT_MONTHLY, WORKSPACE_DAILY, SESSION)


def iso(moment: Optional[datetime.datetime]) -> Optional[str]:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


def day_of(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).date().isoformat()


def month_of(moment: datetime.datetime) -> str:
    return day_of(moment)[:7]


def next_utc_midnight(moment: datetime.datetime) -> datetime.datetime:
    day = moment.astimezone(datetime.timezone.utc).date() + datetime.timedelta(days=1)
    return datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.timezone.utc)


def next_utc_month(moment: datetime.datetime) -> datetime.datetime:
    day = moment.astimezone(datetime.timezone.utc).date()
    year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
    return datetime.datetime(year, month, 1, tzinfo=datetime.timezone.utc)


@dataclass
class Budget:
    """One limit that applies to a call, with what its window has spent and holds in flight."""

    kind: str
    limit: Decimal
    spent: Decimal
    reserved: Decimal
    warn_at_percent: Optional[Decimal]
    resets_at: Optional[datetime.datetime]
    agent_name: str
    subject: str  # the agent, the workspace or the session it limits

    def projected(self, amount: Decimal) -> Decimal:
        return money.add(self.spent, self.reserved, amount)

    def fits(self, amount: Decimal) -> bool:
        return self.projected(amount) <= self.limit

    def warning_threshold(self) -> Optional[Decimal]:
        if self.warn_at_percent is None:
            return None
        return money.percent_of(self.limit, self.warn_at_percent)

    def crossed_warning(self, before: Decimal, after: Decimal) -> bool:
        """True when a spend going from ``before`` to ``after`` crosses the soft threshold."""
        threshold = self.warning_threshold()
        return threshold is not None and before < threshold <= after

    def remaining(self) -> Decimal:
        return max(money.subtract(self.limit, money.add(self.spent, self.reserved)), money.ZERO)

    # -- what the ledger says --------------------------------------------------------------

    def _what(self) -> str:
        if self.kind == AGENT_DAILY:
            return f"Daily budget of ${money.text(self.limit)} for agent {self.agent_name!r}"
        if self.kind == AGENT_MONTHLY:
            return f"Monthly budget of ${money.text(self.limit)} for agent {self.agent_name!r}"
        if self.kind == WORKSPACE_DAILY:
            return f"Daily budget of ${money.text(self.limit)} for workspace {self.subject!r}"
        return f"Cost cap of ${money.text(self.limit)} for session {self.subject!r}"

    def _window(self) -> str:
        return {
            AGENT_DAILY: "today (UTC)",
            AGENT_MONTHLY: "this month (UTC)",
            WORKSPACE_DAILY: "today (UTC) by the workspace",
            SESSION: "in this session",
        }[self.kind]

    def _remedy(self) -> str:
        if self.kind == AGENT_DAILY:
            how = f"raise it with `agent-ledger budget set {self.agent_name} USD`"
        elif self.kind == AGENT_MONTHLY:
            how = f"raise it with `agent-ledger budget set {self.agent_name} USD --monthly`"
        elif self.kind == WORKSPACE_DAILY:
            how = "raise it with `agent-ledger budget set-workspace USD`"
        else:
            return "A session's cap does not reset: start a new session (with a higher maxCostUsd) for more work."
        return f"The budget resets at {iso(self.resets_at)}; {how}."

    def refusal(self, amount: Decimal) -> dict[str, Any]:
        """The 429 body of the published protocol for ``amount`` not fitting, with the kind and the reset time."""
        held = money.add(self.spent, self.reserved)
        in_flight = f" and ${money.text(self.reserved)} reserved by calls in flight" if self.reserved else ""
        message = (
            f"{self._what()} would be exceeded: ${money.text(self.spent)} spent {self._window()}{in_flight}, "
            f"this call costs ${money.text(amount)}. {self._remedy()}"
        )
        resets = iso(self.resets_at)
        return {
            "error": message,
            "details": {
                "agentName": self.agent_name,
                "dailyLimitUsd": self.limit,
                "spentTodayUsd": held,
                "attemptedCostUsd": amount,
                "projectedCostUsd": money.add(held, amount),
                "remainingBudgetUsd": self.remaining(),
                "reservedUsd": self.reserved,
                "budget": self.kind,
                "resetsAt": resets,
            },
            "budget": self.kind,
            "resetsAt": resets,
        }

    def warning_event(self, step_index: Optional[int]) -> dict[str, Any]:
        """The ``budget_warning`` event recorded when the spend crosses the soft threshold."""
        threshold = self.warning_threshold()
        event: dict[str, Any] = {
            "type": "budget_warning",
            "budget": self.kind,
            "agentName": self.agent_name,
            "limitUsd": self.limit,
            "spentUsd": self.spent,
            "warnAtPercent": self.warn_at_percent,
            "thresholdUsd": threshold,
            "resetsAt": iso(self.resets_at),
            "message": f"{self._what()}: ${money.text(self.spent)} spent {self._window()}, past the warning "
            f"threshold of {money.text(self.warn_at_percent or money.ZERO)}%.",
        }
        if step_index is not None:
            event["stepIndex"] = step_index
        return event
