"""Budgets on the SDK's side: what stops an LLM call *before* it runs.

Two mechanisms, one per kind of ledger:

- **Reserve, then settle** (a ledger with ``POST /v1/reservations``, such as the
  local one): for an agent with a budget, ``ledger.llm_call(...)`` reserves the
  call's maximum cost before its body runs; the ledger grants it atomically or
  answers 429, and then :class:`BudgetGuardrailError` is raised before the body
  runs. The ``llm_call`` event carries ``reservationId`` and settles the actual
  cost. Agents without a budget pay no request: the ledger says so when their
  session starts (or in its answer to a reservation), and that is remembered
  for ``ttlSeconds``.
- **The latch** (a ledger without reservations, such as the hosted API today,
  detected once and logged): the first refused ``llm_call`` event trips it, and
  the agent's next LLM call is stopped before it runs, until the UTC day changes.

If the ledger cannot be reached, the call runs (telemetry never blocks the
agent for its own faults) and a warning says the budget was not checked.
"""

from __future__ import annotations

import datetime
import json
import time
from typing import TYPE_CHECKING, Any, Optional

from ._exceptions import APIStatusError, BudgetGuardrailError, UnpricedModelError, describe_error
from ._session import PENDING
from ._stats import RateLimitedWarnings, logger

if TYPE_CHECKING:
    from ._http import LedgerIO, LoopBridge
    from ._session import SessionHandle

# How long a budgeted LLM call waits for its session's start (sent by the sender thread) before it
# runs unchecked; not at all while the ledger is failing.
START_WAIT = 30.0
# How long "this agent has no budget" is believed without asking again (seconds).
NO_BUDGET_TTL = 60.0
# The output tokens a reservation assumes when the call says nothing (no max_tokens=, no max_cost_usd=).
DEFAULT_MAX_OUTPUT_TOKENS = 4096
# Input tokens are estimated from the prompt's JSON: at most one token per byte is an upper bound
# for the byte-level tokenizers of current models; one per two bytes is what we reserve.
PROMPT_BYTES_PER_TOKEN = 2


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


class Budgets:
    """The reservation round trip, the cache of agents without budgets, and the latch."""

    def __init__(self, warnings: RateLimitedWarnings) -> None:
        self.latch = GuardrailLatch()
        self.warnings = warnings
        self.start_wait = START_WAIT
        self.supported: Optional[bool] = None  # does the ledger have /v1/reservations? None: not known yet
        self._unbudgeted: dict[str, float] = {}  # agent -> until when (monotonic) it is known to have no budget

    def no_budget(self, agent_name: str, ttl: float = NO_BUDGET_TTL) -> None:
        """Remember that ``agent_name`` has no budget, for ``ttl`` seconds."""
        self._unbudgeted[agent_name] = time.monotonic() + max(0.0, min(ttl, 3600.0))

    def needs_reservation(self, handle: SessionHandle) -> bool:
        if self.supported is False:
            return False
        if handle.budgeted is not None:  # what this session's start said wins
            return handle.budgeted
        until = self._unbudgeted.get(handle.agent_name)  # else what the last answers for this agent said
        return until is None or until <= time.monotonic()

    def body(
        self, handle: SessionHandle, session_id: str, provider: str, model: str, prompt: Any, limits: dict[str, Any]
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"sessionId": session_id, "provider": provider, "model": model}
        max_cost = limits.get("maxCostUsd")
        if max_cost is not None:
            body["maxCostUsd"] = max_cost
            return body
        try:
            prompt_bytes = (
                len(json.dumps(prompt, ensure_ascii=False, default=str).encode("utf-8")) if prompt is not None else 0
            )
        except (TypeError, ValueError):
            prompt_bytes = len(str(prompt).encode("utf-8", "replace"))
        tokens_out = limits.get("maxTokens") or limits.get("maxOutputTokens") or DEFAULT_MAX_OUTPUT_TOKENS
        body["estimate"] = {"tokensIn": -(-prompt_bytes // PROMPT_BYTES_PER_TOKEN), "tokensOut": int(tokens_out)}
        return body

    def reserve(self, io: LedgerIO, handle: SessionHandle, body_of: Any) -> Optional[str]:
        """Reserve before the call runs: the reservation's id, None if none is needed; raises if refused."""
        if handle._state == PENDING:  # the sender is starting it: a budget check needs its id
            handle._delivery.wait_started(handle, self.start_wait)
        session_id = handle._id
        if session_id is None:
            return self._unchecked(handle, "its session is not started (is the ledger reachable?)")
        if handle.budgeted is False:
            return None  # its start said there is no budget: no request
        try:
            answer = io.reserve(body_of(session_id), _key())
        except Exception as exc:
            return self._failed(handle, exc)
        return self._granted(handle, answer)

    async def areserve(self, aio: LoopBridge, handle: SessionHandle, body_of: Any) -> Optional[str]:
        session_id = handle._id
        if session_id is None:
            return self._unchecked(handle, "its session is not started (is the ledger reachable?)")
        if handle.budgeted is False:
            return None
        try:
            answer = await aio.areserve(body_of(session_id), _key())
        except Exception as exc:
            return self._failed(handle, exc)
        return self._granted(handle, answer)

    def _granted(self, handle: SessionHandle, answer: Any) -> Optional[str]:
        self.supported = True
        if not isinstance(answer, dict):
            return None
        if answer.get("budgeted") is False:
            ttl = answer.get("ttlSeconds")
            self.no_budget(
                handle.agent_name,
                float(ttl) if isinstance(ttl, (int, float)) and not isinstance(ttl, bool) else NO_BUDGET_TTL,
            )
            return None
        reservation = answer.get("id")
        return reservation if isinstance(reservation, str) else None

    def _failed(self, handle: SessionHandle, exc: Exception) -> Optional[str]:
        if isinstance(exc, BudgetGuardrailError):
            raise exc
        if isinstance(exc, APIStatusError):
            body = exc.body if isinstance(exc.body, dict) else {}
            if exc.status_code == 422 and (body.get("code") == "unpriced_model" or "no price" in str(exc).lower()):
                raise UnpricedModelError(str(exc), response=exc.response) from None
            if exc.status_code in (404, 405) and "session" not in str(exc).lower():
                self.supported = False
                logger.info(
                    "agent-ledger: this ledger has no budget reservations (POST /v1/reservations answered %d); "
                    "budgets stop an agent after its first refused LLM call instead of before it",
                    exc.status_code,
                )
                return None
        return self._unchecked(handle, describe_error(exc))

    def _unchecked(self, handle: SessionHandle, why: str) -> Optional[str]:
        self.warnings.warn(
            "reserve",
            "agent-ledger: the budget of agent %r was not checked before an LLM call (%s); the call ran",
            handle.agent_name,
            why,
        )
        return None


def _key() -> str:
    from ._base_client import idempotency_key

    return idempotency_key()
