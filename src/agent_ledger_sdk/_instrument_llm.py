"""``ledger.llm_call``: one ``llm_call`` event per ``with`` block, timed over the block."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Optional

from ._context import current_session_var
from ._events import LLM_CALL, camel_keys
from ._instrument_wrapping import aemit_quietly, emit_quietly, error_text, ms_since, perf_counter
from ._session import SessionHandle

# -- llm_call ---------------------------------------------------------------


class LLMCall:
    """One LLM call, timed over a ``with`` block and recorded when the block ends.

    ```python
    with ledger.llm_call(provider="openai", model="gpt-4o-mini", prompt=question) as call:
        answer = my_llm(question)
        call.record(response=answer.text, tokens_in=answer.tokens_in, tokens_out=answer.tokens_out)
    ```
    """

    __slots__ = (
        "_attributes",
        "_handle",
        "_started",
        "model",
        "prompt",
        "provider",
        "response",
        "step_index",
        "tokens_in",
        "tokens_out",
    )

    def __init__(self, provider: str, model: str, prompt: Any, attributes: dict[str, Any]) -> None:
        self.provider = provider
        self.model = model
        self.prompt = prompt
        self.response: Any = None
        self.tokens_in: Optional[int] = None
        self.tokens_out: Optional[int] = None
        self.step_index: Optional[int] = None
        self._attributes = camel_keys(attributes) if attributes else None
        self._handle: Optional[SessionHandle] = None
        self._started = 0.0

    def record(
        self,
        *,
        response: Any = None,
        tokens_in: Optional[int] = None,
        tokens_out: Optional[int] = None,
        model: Optional[str] = None,
    ) -> None:
        """Record the call's outcome: its response, token usage and the model that answered."""
        if response is not None:
            self.response = response
        if tokens_in is not None:
            self.tokens_in = tokens_in
        if tokens_out is not None:
            self.tokens_out = tokens_out
        if model is not None:
            self.model = model

    def set(self, **attributes: Any) -> None:
        """Add attributes to the event; ``finish_reason=`` becomes ``finishReason``."""
        if self._attributes is None:
            self._attributes = {}
        self._attributes.update(camel_keys(attributes))

    def _begin(self) -> None:
        handle = current_session_var.get()
        if handle is not None:
            handle._recorder.latch.check(handle.agent_name)  # the pre-flight stop: raises before the call
            self.step_index = handle.next_step()
        self._handle = handle
        self._started = perf_counter()

    def _event(self, exc: Optional[BaseException]) -> dict[str, Any]:
        event: dict[str, Any] = {
            "type": LLM_CALL,
            "stepIndex": self.step_index,
            "provider": self.provider,
            "model": self.model,
            "prompt": self.prompt,
            "response": self.response if self.response is not None else "",
            "tokensIn": self.tokens_in if self.tokens_in is not None else 0,
            "tokensOut": self.tokens_out if self.tokens_out is not None else 0,
            "latencyMs": ms_since(self._started),
        }
        if self.tokens_in is None and self.tokens_out is None:
            event["usageMissing"] = True  # the ledger flags it instead of pricing it at $0 silently
        if exc is not None:
            event["error"] = error_text(exc)
        if self._attributes:
            event.update(self._attributes)
        return event

    def __enter__(self) -> LLMCall:
        self._begin()
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
        self._handle = None
        if exc is not None:
            emit_quietly(handle, self._event(exc))
        else:
            handle._sink.emit(handle, self._event(None))  # may raise BudgetGuardrailError

    async def __aenter__(self) -> LLMCall:
        self._begin()
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
        self._handle = None
        if exc is not None:
            await aemit_quietly(handle, self._event(exc))
        else:
            await handle._sink.aemit(handle, self._event(None))


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


def make_llm_call(provider: str, model: str, prompt: Any, attributes: dict[str, Any]) -> LLMCall:
    if not isinstance(provider, str) or not provider:
        raise ValueError(f"llm_call() needs provider= as a non-empty string, got {provider!r}")
    if not isinstance(model, str) or not model:
        raise ValueError(f"llm_call() needs model= as a non-empty string, got {model!r}")
    return LLMCall(provider, model, prompt, attributes)
