"""One provider call recorded as one ``llm_call`` event: what every integration records through.

An integration calls :meth:`ProviderCall.begin` (or ``abegin``) right before
the provider's request goes out, and :meth:`ProviderCall.finish` (or
``afinish``) once, when the response (or the stream) is complete, failed or
abandoned::

    call = ProviderCall.begin(resolve, "openai", "gpt-4o-mini", messages, max_tokens=200)
    if call is None:                       # nothing records: just call through
        return send()
    try:
        response = send()
    except Exception as exc:
        call.finish(exc)                   # a failed call: no cost, the error recorded
        raise
    call.record(tokens_in=..., tokens_out=..., response=...)
    call.finish()

``begin`` takes the step, the span and the prompt's snapshot, and for an agent
with a budget reserves the call's maximum cost: a refusal raises
:class:`~agent_ledger_sdk.BudgetGuardrailError` *before* the request is sent.
The call belongs to the current session, or when there is none to the
client's implicit session (see :meth:`Instrumentation.implicit_session`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from .._context import current_session_var
from .._instrument_llm import LLMCall
from .._instrument_wrapping import aemit_quietly, aemit_safely, emit_quietly, emit_safely, ms_since
from .._stats import internal_error

if TYPE_CHECKING:
    from .._instrumentation import Instrumentation
    from .._session import SessionHandle

Resolver = Callable[[], "Instrumentation"]

# Packages instrumented for every client (instrument_openai() with no client): a framework
# integration leaves their LLM calls to them rather than record each call twice.
globally_instrumented: set[str] = set()


def session_for(resolve: Resolver) -> Optional[SessionHandle]:
    """The session a provider call records in: the current one, else the resolver's implicit one."""
    handle = current_session_var.get()
    if handle is not None:
        return handle
    try:
        return resolve().implicit_session()
    except Exception as exc:  # telemetry never breaks the user's call
        internal_error("implicit session", exc)
        return None


class ProviderCall:
    """An ``llm_call`` begun before a provider request and finished once, however the request ends."""

    __slots__ = ("_finished", "_first_token_ms", "call", "handle", "retries")

    def __init__(self, call: LLMCall, handle: SessionHandle) -> None:
        self.call = call
        self.handle = handle
        self.retries = 0  # the provider client's own retries, counted by the integration
        self._first_token_ms: Optional[int] = None
        self._finished = False

    @classmethod
    def begin(
        cls, resolve: Resolver, provider: str, model: str, prompt: Any, **attributes: Any
    ) -> Optional[ProviderCall]:
        """Begin a call, or return None when nothing records. May raise BudgetGuardrailError (nothing was sent)."""
        handle = session_for(resolve)
        if handle is None:
            return None
        call = LLMCall(provider, model, prompt, {k: v for k, v in attributes.items() if v is not None})
        if call._needs_reservation(handle):
            call._reserve(handle)
        call._begin(handle, current=False)
        return cls(call, handle)

    @classmethod
    async def abegin(
        cls, resolve: Resolver, provider: str, model: str, prompt: Any, **attributes: Any
    ) -> Optional[ProviderCall]:
        """:meth:`begin` for async code: the reservation round trip never blocks the event loop."""
        handle = session_for(resolve)
        if handle is None:
            return None
        call = LLMCall(provider, model, prompt, {k: v for k, v in attributes.items() if v is not None})
        if call._needs_reservation(handle):
            await call._areserve(handle)
        call._begin(handle, current=False)
        return cls(call, handle)

    @property
    def finished(self) -> bool:
        return self._finished

    def record(self, **outcome: Any) -> None:
        """The call's outcome so far: ``response=``, ``model=``, the token counts (see :meth:`LLMCall.record`)."""
        self.call.record(**outcome)

    def set(self, **attributes: Any) -> None:
        """Event attributes: ``finish_reason=`` becomes ``finishReason``."""
        self.call.set(**attributes)

    def first_token(self) -> None:
        """Note the time to the first token (streams); only the first call counts."""
        if self._first_token_ms is None:
            self._first_token_ms = ms_since(self.call._perf_started)

    def _event(self, error: Optional[BaseException], billed: bool) -> Optional[tuple[dict[str, Any], int]]:
        if self._finished:
            return None
        self._finished = True
        call = self.call
        if error is not None and not billed and call.tokens_in is None and call.tokens_out is None:
            # The provider refused or never answered: nothing was generated, nothing is owed.
            call.tokens_in = call.tokens_out = 0
        extra: dict[str, Any] = {"retries": self.retries}
        if self._first_token_ms is not None:
            extra["time_to_first_token_ms"] = self._first_token_ms
        call.set(**extra)
        return call._end(error)

    def finish(self, error: Optional[BaseException] = None, *, billed: bool = False) -> None:
        """Record the call once. ``error``: it failed; ``billed``: output had begun, so usage may be owed.

        After a success a budget refusal (a ledger without reservations, inline
        delivery) raises :class:`BudgetGuardrailError`; after a failure nothing
        replaces the user's exception.
        """
        built = self._event(error, billed)
        if built is None:
            return
        if error is None:
            emit_safely(self.handle, *built)
        else:
            emit_quietly(self.handle, *built)

    def finish_quietly(self, error: Optional[BaseException] = None, *, billed: bool = False) -> None:
        """:meth:`finish` where nothing may be raised: a stream closed or collected."""
        built = self._event(error, billed)
        if built is not None:
            emit_quietly(self.handle, *built)

    async def afinish(self, error: Optional[BaseException] = None, *, billed: bool = False) -> None:
        """:meth:`finish` for async code."""
        built = self._event(error, billed)
        if built is None:
            return
        if error is None:
            await aemit_safely(self.handle, *built)
        else:
            await aemit_quietly(self.handle, *built)
