"""``ledger.llm_call``: one ``llm_call`` event per ``with`` block, timed over the block."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any, Optional

from ._context import current_session_var
from ._events import LLM_CALL, camel_keys
from ._instrument_wrapping import (
    aemit_quietly,
    aemit_safely,
    emit_quietly,
    emit_safely,
    error_text,
    ms_since,
    perf_counter,
)
from ._session import PENDING, SessionHandle
from ._snapshot import snapshot_sized
from ._spans import current_span_var, new_span_id, wall_clock

if TYPE_CHECKING:
    from ._otel import SpanRecord

# -- llm_call ---------------------------------------------------------------

_USAGE = (
    ("tokens_in", "tokensIn"),
    ("tokens_out", "tokensOut"),
    ("cache_read_tokens", "cacheReadTokens"),
    ("cache_write_tokens", "cacheWriteTokens"),
    ("reasoning_tokens", "reasoningTokens"),
)


def needs_reservation(handle: SessionHandle) -> bool:
    """The pre-flight checks of an LLM call that need no I/O: the latch (raises), and whether to reserve."""
    budgets = handle._instrumentation.budgets
    budgets.latch.check(handle.agent_name)  # a ledger without reservations: raises before the call
    return getattr(handle._delivery, "owner", None) is not None and budgets.needs_reservation(handle)


class LLMCall:
    """One LLM call, timed over a ``with`` block and recorded when the block ends.

    ```python
    with ledger.llm_call(provider="openai", model="gpt-4o-mini", prompt=question) as call:
        answer = my_llm(question)
        call.record(response=answer.text, tokens_in=answer.tokens_in, tokens_out=answer.tokens_out)
    ```

    The prompt is recorded as it was when the block started, the response as
    it was when the block ended: changing them afterwards changes nothing recorded.
    """

    __slots__ = (
        "_attributes",
        "_handle",
        "_max_cost_usd",
        "_otel_span",
        "_otel_token",
        "_parent_span",
        "_perf_started",
        "_prompt_size",
        "_reservation",
        "_span",
        "_started_at",
        "_token",
        "cache_read_tokens",
        "cache_write_tokens",
        "model",
        "prompt",
        "provider",
        "reasoning_tokens",
        "response",
        "step_index",
        "tokens_in",
        "tokens_out",
    )

    def __init__(
        self, provider: str, model: str, prompt: Any, attributes: dict[str, Any], max_cost_usd: Optional[float] = None
    ) -> None:
        self.provider = provider
        self.model = model
        self.prompt = prompt
        self.response: Any = None
        self.tokens_in: Optional[int] = None
        self.tokens_out: Optional[int] = None
        self.cache_read_tokens: Optional[int] = None
        self.cache_write_tokens: Optional[int] = None
        self.reasoning_tokens: Optional[int] = None
        self.step_index: Optional[int] = None
        self._attributes = camel_keys(attributes) if attributes else None
        self._handle: Optional[SessionHandle] = None
        self._perf_started = 0.0
        self._started_at = 0.0
        self._prompt_size = 0
        self._span = 0
        self._parent_span: Optional[int] = None
        self._token: Any = None
        self._max_cost_usd = max_cost_usd
        self._reservation: Optional[str] = None
        self._otel_span: Optional[SpanRecord] = None
        self._otel_token: Any = None

    def record(
        self,
        *,
        response: Any = None,
        tokens_in: Optional[int] = None,
        tokens_out: Optional[int] = None,
        model: Optional[str] = None,
        cache_read_tokens: Optional[int] = None,
        cache_write_tokens: Optional[int] = None,
        reasoning_tokens: Optional[int] = None,
    ) -> None:
        """Record the call's outcome: its response, token usage and the model that answered.

        ``tokens_in`` counts every input token, cached ones included;
        ``cache_read_tokens`` and ``cache_write_tokens`` say how many of them
        were read from or written to the provider's prompt cache, and
        ``reasoning_tokens`` how many of ``tokens_out`` were reasoning.
        """
        if response is not None:
            self.response = response
        if tokens_in is not None:
            self.tokens_in = tokens_in
        if tokens_out is not None:
            self.tokens_out = tokens_out
        if cache_read_tokens is not None:
            self.cache_read_tokens = cache_read_tokens
        if cache_write_tokens is not None:
            self.cache_write_tokens = cache_write_tokens
        if reasoning_tokens is not None:
            self.reasoning_tokens = reasoning_tokens
        if model is not None:
            self.model = model

    def set(self, **attributes: Any) -> None:
        """Add attributes to the event; ``finish_reason=`` becomes ``finishReason``."""
        if self._attributes is None:
            self._attributes = {}
        self._attributes.update(camel_keys(attributes))

    def _needs_reservation(self, handle: Optional[SessionHandle]) -> bool:
        return handle is not None and needs_reservation(handle)

    def _reservation_body(self, handle: SessionHandle) -> Any:
        limits = {"maxCostUsd": self._max_cost_usd}
        if self._attributes:
            limits["maxTokens"] = self._attributes.get("maxTokens") or self._attributes.get("maxOutputTokens")
        return lambda session_id: handle._instrumentation.budgets.body(
            handle, session_id, self.provider, self.model, self.prompt, limits
        )

    def _reserve(self, handle: SessionHandle) -> None:
        instrumentation = handle._instrumentation
        self._reservation = instrumentation.budgets.reserve(instrumentation.io, handle, self._reservation_body(handle))

    async def _areserve(self, handle: SessionHandle) -> None:
        import asyncio

        instrumentation = handle._instrumentation
        aio = instrumentation._aio
        if aio is None:  # a sync client in async code: its blocking round trip runs in a thread
            await asyncio.get_running_loop().run_in_executor(None, self._reserve, handle)
            return
        if handle._state == PENDING:  # started by the sender: wait for its id off the loop
            await asyncio.get_running_loop().run_in_executor(
                None, handle._delivery.wait_started, handle, instrumentation.budgets.start_wait
            )
        self._reservation = await instrumentation.budgets.areserve(aio, handle, self._reservation_body(handle))

    def _begin(self, handle: Optional[SessionHandle], current: bool = True) -> None:
        """Take the step, the span and the prompt's snapshot; ``current``: the span encloses what runs next."""
        if handle is not None:
            self.step_index = handle.next_step()
            self.prompt, self._prompt_size = snapshot_sized(self.prompt)  # as sent
            otel_span = self._otel_span
            self._span = new_span_id() if otel_span is None else otel_span.span_id
            self._parent_span = current_span_var.get()
            if current:
                self._token = current_span_var.set(self._span)
                if otel_span is not None and handle._otel is not None:
                    self._otel_token = handle._otel.attach(otel_span)
            self._started_at = wall_clock()
        self._handle = handle
        self._perf_started = perf_counter()

    def _end(self, exc: Optional[BaseException], latency_ms: Optional[int] = None) -> tuple[dict[str, Any], int]:
        if self._otel_token is not None:
            handle = self._handle
            otel = handle._otel if handle is not None else None
            if otel is not None:
                otel.detach(self._otel_token)
            self._otel_token = None
        if self._token is not None:
            current_span_var.reset(self._token)
            self._token = None
        response, size = snapshot_sized(self.response if self.response is not None else "")
        event: dict[str, Any] = {
            "type": LLM_CALL,
            "stepIndex": self.step_index,
            "provider": self.provider,
            "model": self.model,
            "prompt": self.prompt,
            "response": response,
            "tokensIn": self.tokens_in if self.tokens_in is not None else 0,
            "tokensOut": self.tokens_out if self.tokens_out is not None else 0,
            "latencyMs": ms_since(self._perf_started) if latency_ms is None else latency_ms,
            "startedAt": self._started_at,
            "spanId": self._span,
        }
        for attribute, key in _USAGE[2:]:
            value = getattr(self, attribute)
            if value is not None:
                event[key] = value
        if self._parent_span is not None:
            event["parentSpanId"] = self._parent_span
        if self._reservation is not None:
            event["reservationId"] = self._reservation
        if self.tokens_in is None and self.tokens_out is None:
            event["usageMissing"] = True  # the ledger flags it instead of pricing it at $0 silently
        if exc is not None:
            event["error"] = error_text(exc)
        if self._attributes:
            attributes, attributes_size = snapshot_sized(self._attributes)
            event.update(attributes)
            size += attributes_size
        return event, size + self._prompt_size

    def _start_span(self, handle: Optional[SessionHandle]) -> None:
        if handle is not None and handle._otel is not None:
            self._otel_span = handle._otel.start_llm(handle, self.provider, self.model)

    def _refused(self, handle: Optional[SessionHandle], exc: BaseException) -> None:
        """The call did not run (a budget refusal, before it): its span says why, and closes."""
        if handle is not None and handle._otel is not None and self._otel_span is not None:
            handle._otel.ended(self._otel_span, exc, delivered=False)
            self._otel_span = None

    def _span_ended(self, handle: SessionHandle, exc: Optional[BaseException]) -> None:
        if self._otel_span is not None and handle._otel is not None:
            handle._otel.ended(self._otel_span, exc)

    def __enter__(self) -> LLMCall:
        handle = current_session_var.get()
        self._start_span(handle)
        try:
            if self._needs_reservation(handle):
                assert handle is not None
                self._reserve(handle)  # raises BudgetGuardrailError before the body runs
        except BaseException as exc:
            self._refused(handle, exc)
            raise
        self._begin(handle)
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        handle = self._handle
        if handle is None:
            return
        event, size = self._end(exc)
        self._handle = None
        self._span_ended(handle, exc)
        if exc is not None:
            emit_quietly(handle, event, size)
        else:
            emit_safely(handle, event, size)  # may raise BudgetGuardrailError

    async def __aenter__(self) -> LLMCall:
        handle = current_session_var.get()
        self._start_span(handle)
        try:
            if self._needs_reservation(handle):
                assert handle is not None
                await self._areserve(handle)
        except BaseException as exc:
            self._refused(handle, exc)
            raise
        self._begin(handle)
        return self

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        handle = self._handle
        if handle is None:
            return
        event, size = self._end(exc)
        self._handle = None
        self._span_ended(handle, exc)
        if exc is not None:
            await aemit_quietly(handle, event, size)
        else:
            await aemit_safely(handle, event, size)


class _NullLLMCall(LLMCall):
    """What a disabled client's ``llm_call`` returns: one shared object that records nothing."""

    __slots__ = ()

    def record(
        self,
        *,
        response: Any = None,
        tokens_in: Optional[int] = None,
        tokens_out: Optional[int] = None,
        model: Optional[str] = None,
        cache_read_tokens: Optional[int] = None,
        cache_write_tokens: Optional[int] = None,
        reasoning_tokens: Optional[int] = None,
    ) -> None:
        pass

    def set(self, **attributes: Any) -> None:
        pass

    def __enter__(self) -> LLMCall:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        pass

    async def __aenter__(self) -> LLMCall:
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        pass


NULL_LLM_CALL: LLMCall = _NullLLMCall("disabled", "disabled", None, {})


def make_llm_call(
    provider: str, model: str, prompt: Any, attributes: dict[str, Any], max_cost_usd: Optional[float] = None
) -> LLMCall:
    if not isinstance(provider, str) or not provider:
        raise ValueError(f"llm_call() needs provider= as a non-empty string, got {provider!r}")
    if not isinstance(model, str) or not model:
        raise ValueError(f"llm_call() needs model= as a non-empty string, got {model!r}")
    if max_cost_usd is not None and (
        isinstance(max_cost_usd, bool)
        or not isinstance(max_cost_usd, (int, float))
        or not 0 <= max_cost_usd < float("inf")
    ):
        raise ValueError(f"max_cost_usd must be a number of US dollars >= 0, got {max_cost_usd!r}")
    return LLMCall(provider, model, prompt, attributes, max_cost_usd)
