"""The instrumentation helpers every client offers: ``session``, ``tool`` and ``llm_call``.

The helpers themselves live in ``_instrument_session``, ``_instrument_tool`` and
``_instrument_llm``, on the machinery of ``_instrument_wrapping``.

Each decorator inspects the function once, at decoration time, and picks a
wrapper for its kind (plain, coroutine, generator, async generator). The
wrappers keep the caller's work to a context-variable read, a step number and
one small dict per event; serialising and sending happen in the sink.
"""

from __future__ import annotations

from typing import Any, Optional, overload

from ._context import current_session_var
from ._instrument_llm import NULL_LLM_CALL, LLMCall, make_llm_call
from ._instrument_session import SessionScope, make_session
from ._instrument_tool import IDENTITY_DECORATOR, ToolDecorator, make_tool
from ._instrument_wrapping import F
from ._recorder import Recorder, Redactor
from ._session import SessionHandle
from ._stats import LedgerStats


class Instrumentation:
    """The helpers every client offers; see ``docs/instrumentation.md``."""

    _recorder: Recorder

    def _init_instrumentation(
        self,
        *,
        batching: bool,
        max_queue_size: int,
        enabled: Optional[bool],
        capture_content: Optional[bool],
        redact: Optional[Redactor],
    ) -> None:
        if max_queue_size < 1:
            raise ValueError(f"max_queue_size must be at least 1, got {max_queue_size}")
        self._recorder = Recorder(
            sync_io=self._helpers_sync_io,
            async_io=self._helpers_async_io(),
            batching=batching,
            max_queue_size=max_queue_size,
            enabled=enabled,
            capture_content=capture_content,
            redact=redact,
        )
        self._recorder.on_fork = self._forget_connections

    # Provided by the client classes.
    def _helpers_sync_io(self) -> Any:
        raise NotImplementedError

    def _helpers_async_io(self) -> Any:
        raise NotImplementedError

    def _forget_connections(self) -> None:
        raise NotImplementedError

    def _resolve_recorder(self) -> Recorder:
        return self._recorder

    def _close_instrumentation(self) -> int:
        return self._recorder.close()

    @property
    def enabled(self) -> bool:
        """False when the helpers are switched off (``enabled=False`` or ``AGENT_LEDGER_ENABLED=false``)."""
        return self._recorder.enabled

    @property
    def stats(self) -> LedgerStats:
        """Events sent, failed and dropped by the helpers so far, and still queued."""
        return self._recorder.stats()

    @overload
    def session(self, func: F, /) -> F: ...

    @overload
    def session(self, func_or_name: Optional[str] = None, /, *, agent_name: Optional[str] = None) -> SessionScope: ...

    def session(self, func_or_name: Any = None, /, *, agent_name: Optional[str] = None) -> Any:
        """Record a session: ``@ledger.session``, ``@ledger.session("name")``, ``with ledger.session("name")``.

        ```python
        @ledger.session("support-bot")
        def handle(ticket: str) -> str:
            return answer(ticket)
        ```

        The session starts when the function is called (or the block entered)
        and ends with ``success``, or with ``error`` and ``"<Type>: <message>"``
        if it raised; the exception is re-raised unchanged.
        """
        if not self._recorder.enabled and func_or_name is not None and not isinstance(func_or_name, str):
            return func_or_name  # the kill switch: the function itself, no wrapper
        return make_session(self._resolve_recorder, func_or_name, agent_name, self._recorder.enabled)

    @overload
    def tool(self, func: F, /) -> F: ...

    @overload
    def tool(
        self,
        func_or_name: Optional[str] = None,
        /,
        *,
        name: Optional[str] = None,
        capture_input: bool = True,
        capture_output: bool = True,
    ) -> ToolDecorator: ...

    def tool(
        self,
        func_or_name: Any = None,
        /,
        *,
        name: Optional[str] = None,
        capture_input: bool = True,
        capture_output: bool = True,
    ) -> Any:
        """Record each call of a tool function as a ``tool_call`` and a ``tool_result`` event.

        ```python
        @ledger.tool
        def search_docs(query: str, limit: int = 3) -> list[str]:
            return index.search(query)[:limit]
        ```
        """
        if not self._recorder.enabled:
            return func_or_name if callable(func_or_name) else IDENTITY_DECORATOR
        return make_tool(func_or_name, name, capture_input, capture_output)

    def llm_call(self, *, provider: str, model: str, prompt: Any = None, **attributes: Any) -> LLMCall:
        """Time an LLM call over a ``with`` / ``async with`` block and record it as an ``llm_call`` event."""
        if not self._recorder.enabled:
            return NULL_LLM_CALL
        return make_llm_call(provider, model, prompt, attributes)

    def current_session(self) -> Optional[SessionHandle]:
        """The session the calling code runs in, or None."""
        return current_session_var.get()

    def flush(self, timeout: Optional[float] = 5.0) -> int:
        """Wait until queued events are sent (at most ``timeout`` seconds); return how many are left."""
        return self._recorder.flush(timeout)

    async def aflush(self, timeout: Optional[float] = 5.0) -> int:
        """:meth:`flush` for async code: waits in a worker thread, never on the event loop."""
        import asyncio

        return await asyncio.get_running_loop().run_in_executor(None, self._recorder.flush, timeout)

    def reset_guardrail(self, agent_name: Optional[str] = None) -> None:
        """Lift the pre-flight stop of one agent (or all) after raising its budget."""
        self._recorder.latch.clear(agent_name)
