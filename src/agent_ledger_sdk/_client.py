"""The clients: :class:`AgentLedgerClient` and :class:`AsyncAgentLedgerClient`.

Each is the published API (sessions and events over HTTP) on
:class:`~agent_ledger_sdk._base_client.BaseClient`, with its I/O in
``_http``, and it *holds* an :class:`~agent_ledger_sdk._instrumentation.Instrumentation`
built over that I/O for the helpers (``session``, ``tool``, ``llm_call``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Literal, Optional, Union, overload

import httpx

from ._base_client import BaseClient
from ._constants import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, PRICED_HEADER
from ._context import current_session_var
from ._events import LLM_CALL, TOOL_CALL, TOOL_RESULT, encode_events, typed_event
from ._http import AsyncHTTP, LedgerIO, LoopBridge, SyncHTTP, SyncLedgerIO
from ._instrument_llm import NULL_LLM_CALL, LLMCall, make_llm_call
from ._instrument_session import SessionScope, make_session
from ._instrument_tool import IDENTITY_DECORATOR, ToolDecorator, make_tool
from ._instrument_wrapping import F
from ._instrumentation import Instrumentation
from ._journal import DEFAULT_MAX_JOURNAL_BYTES
from ._sender import DEFAULT_MAX_QUEUE_BYTES, DEFAULT_RETRY_WINDOW
from ._session import SessionHandle
from ._stats import LedgerStats

SessionStatus = Literal["success", "error"]
Redact = Callable[[dict[str, Any]], Optional[dict[str, Any]]]


class _Helpers:
    """The instrumentation helpers both clients offer, delegated to their :class:`Instrumentation`."""

    _instrumentation: Instrumentation

    def _resolve_instrumentation(self) -> Instrumentation:
        return self._instrumentation

    @property
    def enabled(self) -> bool:
        """False when the helpers record nothing: switched off (``enabled=False`` or
        ``AGENT_LEDGER_ENABLED=false``), or no API key."""
        return self._instrumentation.enabled and self._instrumentation.configured

    @property
    def stats(self) -> LedgerStats:
        """Events sent, failed, rejected and dropped by the helpers so far; still queued; bytes in the journal."""
        return self._instrumentation.stats()

    @overload
    def session(self, func: F, /) -> F: ...

    @overload
    def session(
        self,
        func_or_name: Optional[str] = None,
        /,
        *,
        agent_name: Optional[str] = None,
        user_id: Optional[str] = None,
        tags: Optional[Iterable[str]] = None,
        metadata: Optional[dict[str, Any]] = None,
        max_cost_usd: Optional[float] = None,
    ) -> SessionScope: ...

    def session(
        self,
        func_or_name: Any = None,
        /,
        *,
        agent_name: Optional[str] = None,
        user_id: Optional[str] = None,
        tags: Optional[Iterable[str]] = None,
        metadata: Optional[dict[str, Any]] = None,
        max_cost_usd: Optional[float] = None,
    ) -> Any:
        """Record a session: ``@ledger.session``, ``@ledger.session("name")``, ``with ledger.session("name")``.

        ```python
        @ledger.session("support-bot", user_id="u-42", tags=["beta"])
        def handle(ticket: str) -> str:
            return answer(ticket)
        ```

        The session starts when the function is called (or the block entered)
        and ends with ``success``, or with ``error`` and ``"<Type>: <message>"``
        if it raised; the exception is re-raised unchanged. A session started
        inside another records it as its parent.

        Args:
            agent_name: the agent; defaults to the function's name when decorating.
            user_id: who the agent works for; the ledger filters sessions by it.
            tags: labels to filter sessions by.
            metadata: any JSON-able details (a dict), recorded with the session.
            max_cost_usd: a cap on what this session may spend; the ledger refuses LLM
                calls (before they run) that would take it over.
        """
        instrumentation = self._instrumentation
        if not instrumentation.enabled and func_or_name is not None and not isinstance(func_or_name, str):
            return func_or_name  # the kill switch: the function itself, no wrapper
        return make_session(
            self._resolve_instrumentation,
            func_or_name,
            agent_name,
            instrumentation.enabled,
            user_id=user_id,
            tags=tags,
            metadata=metadata,
            max_cost_usd=max_cost_usd,
        )

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

        The input is recorded as it was when the call started, the output as it
        was when the call returned.
        """
        if not self._instrumentation.enabled:
            return func_or_name if callable(func_or_name) else IDENTITY_DECORATOR
        return make_tool(func_or_name, name, capture_input, capture_output)

    def llm_call(
        self,
        *,
        provider: str,
        model: str,
        prompt: Any = None,
        max_cost_usd: Optional[float] = None,
        **attributes: Any,
    ) -> LLMCall:
        """Time an LLM call over a ``with`` / ``async with`` block and record it as an ``llm_call`` event.

        For an agent with a budget, the call's maximum cost is reserved before the
        block runs (``max_cost_usd=``, else estimated from the prompt and
        ``max_tokens=``); a refusal raises :class:`BudgetGuardrailError` before it runs.
        """
        if not self._instrumentation.enabled:
            return NULL_LLM_CALL
        return make_llm_call(provider, model, prompt, attributes, max_cost_usd)

    def current_session(self) -> Optional[SessionHandle]:
        """The session the calling code runs in, or None."""
        return current_session_var.get()

    def flush(self, timeout: Optional[float] = 5.0) -> int:
        """Wait until queued events are sent (at most ``timeout`` seconds); return how many are left."""
        return self._instrumentation.flush(timeout)

    async def aflush(self, timeout: Optional[float] = 5.0) -> int:
        """:meth:`flush` for async code: waits in a worker thread, never on the event loop."""
        import asyncio

        self._instrumentation.note_loop()
        return await asyncio.get_running_loop().run_in_executor(None, self._instrumentation.flush, timeout)

    def reset_guardrail(self, agent_name: Optional[str] = None) -> None:
        """Lift the pre-flight stop of one agent (or all) after raising its budget."""
        self._instrumentation.latch.clear(agent_name)

    # -- auto-instrumentation (docs/integrations.md) --------------------------

    def instrument_openai(self, client: Any = None) -> None:
        """Record every call of the ``openai`` package's clients, sync and async, made before or after; or
        only ``client``'s. Idempotent; undone by :meth:`uninstrument_openai`. Needs ``agent-ledger-sdk[openai]``.

        Calls outside any session are recorded in this client's implicit session.
        """
        from .integrations import openai as integration

        integration.instrument(self._resolve_instrumentation, client)

    def uninstrument_openai(self, client: Any = None) -> None:
        """Stop recording the ``openai`` clients (every one, or only ``client``)."""
        from .integrations import openai as integration

        integration.uninstrument(client)

    def instrument_anthropic(self, client: Any = None) -> None:
        """:meth:`instrument_openai` for the ``anthropic`` package. Needs ``agent-ledger-sdk[anthropic]``."""
        from .integrations import anthropic as integration

        integration.instrument(self._resolve_instrumentation, client)

    def uninstrument_anthropic(self, client: Any = None) -> None:
        """Stop recording the ``anthropic`` clients (every one, or only ``client``)."""
        from .integrations import anthropic as integration

        integration.uninstrument(client)

    def instrument_openai_agents(self) -> Any:
        """Record the OpenAI Agents SDK's runs: a run is a session, its function tools are tool events,
        its handoffs events, its model calls LLM calls (unless ``instrument_openai()`` records them,
        budget first). Returns the tracing processor. Needs ``agent-ledger-sdk[openai-agents]``."""
        from .integrations import openai_agents as integration

        return integration.instrument(self._resolve_instrumentation)

    def uninstrument_openai_agents(self) -> None:
        """Remove the tracing processor :meth:`instrument_openai_agents` added."""
        from .integrations import openai_agents as integration

        integration.uninstrument()


_CLIENT_ARGS_DOC = """
    Args:
        api_key: workspace API key; defaults to ``AGENT_LEDGER_API_KEY``, else the key
            ``agent-ledger serve`` left on this machine. With none, nothing is recorded
            and one warning says what to do.
        base_url: API root; defaults to ``AGENT_LEDGER_BASE_URL``, else the local ledger
            (``http://127.0.0.1:8787``) for a local key, else the hosted API.
        timeout: seconds (or an ``httpx.Timeout``) for each HTTP attempt.
        transport: an httpx transport for proxies, meshes or tests.
        http_client: an httpx client to send everything with (its transport, proxies and
            limits); ``timeout`` and ``transport`` are then the client's own.
        default_headers: extra headers sent with every request.
        max_retries: retries after a connection error, timeout, 408, 429 or 5xx.
        batching: the helpers send in the background (default) or inline.
        max_queue_bytes: memory the background queue may hold; past it, events go to the journal.
        max_queue_size: an optional bound on queued events too (the bytes bound always applies).
        journal: the directory where events wait when memory is full or the ledger is
            down too long (default: one per ledger and key under the local state
            directory); ``False`` turns it off.
        max_journal_bytes: the journal's bound on disk.
        retry_window: seconds the sender retries a failing ledger before it moves the queue to the journal.
        enabled: ``False`` (or ``AGENT_LEDGER_ENABLED=false``) turns the helpers off.
        capture_content: ``False`` (or ``AGENT_LEDGER_CAPTURE_CONTENT=false``)
            replaces prompts, responses, the model's tool calls and tool inputs and outputs with a marker.
        redact: called with each helper event; returns the event to send, or None to drop it.
        sample_rate: the share of sessions whose tool events are recorded (LLM calls, which
            carry cost, always are).
        handle_sigterm: deliver queued events when the process gets SIGTERM (if it has no handler of its own).
        agent_name: the agent of LLM calls made outside any session (auto-instrumented ones);
            defaults to ``AGENT_LEDGER_AGENT_NAME``, else the script's name.
        otel: ``True`` (or ``AGENT_LEDGER_OTEL=1``) also makes sessions, tools and LLM calls
            OpenTelemetry GenAI spans, with their cost, on the global tracer provider; or pass
            a ``TracerProvider``. Needs ``pip install 'agent-ledger-sdk[otel]'``; see docs/otel.md.
"""


class AgentLedgerClient(_Helpers, BaseClient):
    """Client of the Agent Ledger API, and the home of the instrumentation helpers.

    ```python
    from agent_ledger_sdk import AgentLedgerClient

    with AgentLedgerClient(api_key="sk-...") as ledger:
        session_id = ledger.start_session("batch-writer")
        ledger.end_session(session_id, "success")
    ```
    """

    __doc__ = (__doc__ or "") + _CLIENT_ARGS_DOC

    def __init__(
        self,
        api_key: Optional[str] = None,
        *,
        base_url: Optional[str] = None,
        timeout: Union[float, httpx.Timeout, None] = DEFAULT_TIMEOUT,
        transport: Optional[httpx.BaseTransport] = None,
        http_client: Optional[httpx.Client] = None,
        default_headers: Optional[Mapping[str, str]] = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        batching: bool = True,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        max_queue_size: Optional[int] = None,
        journal: Union[str, Path, bool, None] = None,
        max_journal_bytes: int = DEFAULT_MAX_JOURNAL_BYTES,
        retry_window: float = DEFAULT_RETRY_WINDOW,
        enabled: Optional[bool] = None,
        capture_content: Optional[bool] = None,
        redact: Optional[Redact] = None,
        sample_rate: float = 1.0,
        handle_sigterm: bool = True,
        agent_name: Optional[str] = None,
        otel: Any = None,
    ) -> None:
        BaseClient.__init__(
            self,
            api_key,
            base_url=base_url,
            timeout=timeout,
            default_headers=default_headers,
            max_retries=max_retries,
        )
        if max_queue_size is not None and max_queue_size < 1:
            raise ValueError(f"max_queue_size must be at least 1, got {max_queue_size}")
        self._http = SyncHTTP(self, transport=transport, http_client=http_client)
        self._instrumentation = Instrumentation(
            io=SyncLedgerIO(self._http, max_retries),
            sender_io=SyncLedgerIO(self._http, 0),  # the sender retries on its own terms
            aio=None,
            connections=[self._http],
            identity=(self.base_url, self.api_key),
            batching=batching,
            enabled=enabled,
            configured=bool(self.api_key),
            capture_content=capture_content,
            redact=redact,
            max_queue_bytes=max_queue_bytes,
            max_queue_events=max_queue_size,
            journal=journal,
            max_journal_bytes=max_journal_bytes,
            retry_window=retry_window,
            sample_rate=sample_rate,
            handle_sigterm=handle_sigterm,
            agent_name=agent_name,
            otel=otel,
        )
        if self._instrumentation.otel is not None:  # its spans carry each call's cost: the ledger says it
            self._headers[PRICED_HEADER] = "true"

    # -- the published API ------------------------------------------------

    def start_session(self, agent_name: str) -> str:
        """Start a session for ``agent_name`` and return its id."""
        self._check_agent_name(agent_name)
        response = self._http.post("/v1/sessions", {"agentName": agent_name})
        return self._session_id_from(response)

    def end_session(self, session_id: str, status: SessionStatus, *, error_message: Optional[str] = None) -> None:
        """Mark a session finished, with ``"success"`` or ``"error"`` and a message."""
        body = self._end_body(session_id, status, error_message)
        self._http.post(f"/v1/sessions/{session_id}/end", body)

    def log_events(self, session_id: str, events: Iterable[Mapping[str, Any]]) -> None:
        """Send events of any ``type`` to a session, made JSON-safe and capped at 64 KB each."""
        self._check_session_id(session_id)
        from ._events import events_body

        self._http.post("/v1/events", content=events_body(session_id, encode_events(events)))

    def log_llm_call(self, session_id: str, event: Mapping[str, Any]) -> None:
        """Send one ``llm_call`` event; the ledger prices it from provider, model and tokens."""
        self.log_events(session_id, [typed_event(LLM_CALL, event, "log_llm_call")])

    def log_tool_call(self, session_id: str, event: Mapping[str, Any]) -> None:
        """Send one ``tool_call`` event, right before the tool runs."""
        self.log_events(session_id, [typed_event(TOOL_CALL, event, "log_tool_call")])

    def log_tool_result(self, session_id: str, event: Mapping[str, Any]) -> None:
        """Send one ``tool_result`` event, after the tool returned or raised."""
        self.log_events(session_id, [typed_event(TOOL_RESULT, event, "log_tool_result")])

    def close(self, timeout: Optional[float] = 5.0) -> int:
        """Send what the helpers have queued (at most ``timeout`` seconds), close connections.

        Returns how many events were left unsent; they wait in the journal for the next client.
        """
        left = self._instrumentation.close(timeout)
        self._http.close()
        return left

    def __enter__(self) -> AgentLedgerClient:
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()


class AsyncAgentLedgerClient(_Helpers, BaseClient):
    """The asyncio twin of :class:`AgentLedgerClient`: same arguments, methods are coroutines.

    ```python
    from agent_ledger_sdk import AsyncAgentLedgerClient

    async def main() -> None:
        async with AsyncAgentLedgerClient(api_key="sk-...") as ledger:
            session_id = await ledger.start_session("batch-writer")
            await ledger.end_session(session_id, "success")
    ```

    Everything it sends, the helpers' background sending included, goes through
    its ``transport`` or ``http_client``, on the event loop it is used on.
    """

    __doc__ = (__doc__ or "") + _CLIENT_ARGS_DOC

    def __init__(
        self,
        api_key: Optional[str] = None,
        *,
        base_url: Optional[str] = None,
        timeout: Union[float, httpx.Timeout, None] = DEFAULT_TIMEOUT,
        transport: Optional[httpx.AsyncBaseTransport] = None,
        http_client: Optional[httpx.AsyncClient] = None,
        default_headers: Optional[Mapping[str, str]] = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        batching: bool = True,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        max_queue_size: Optional[int] = None,
        journal: Union[str, Path, bool, None] = None,
        max_journal_bytes: int = DEFAULT_MAX_JOURNAL_BYTES,
        retry_window: float = DEFAULT_RETRY_WINDOW,
        enabled: Optional[bool] = None,
        capture_content: Optional[bool] = None,
        redact: Optional[Redact] = None,
        sample_rate: float = 1.0,
        handle_sigterm: bool = True,
        agent_name: Optional[str] = None,
        otel: Any = None,
    ) -> None:
        BaseClient.__init__(
            self,
            api_key,
            base_url=base_url,
            timeout=timeout,
            default_headers=default_headers,
            max_retries=max_retries,
        )
        if max_queue_size is not None and max_queue_size < 1:
            raise ValueError(f"max_queue_size must be at least 1, got {max_queue_size}")
        # The sender thread, and synchronous code in other threads, send outside the user's event loop when
        # the HTTP is ours: with a blocking client of their own (the sync client's), so that delivering the
        # helpers' events takes no CPU from the loop and never waits for it. A transport or client of the
        # user's is bound to their loop: then every call runs there (LoopBridge).
        self._sync_http = SyncHTTP(self) if transport is None and http_client is None else None
        ssl_context = self._sync_http._ssl_context if self._sync_http is not None else None
        self._http = AsyncHTTP(self, transport=transport, http_client=http_client, ssl_context=ssl_context)
        bridge = LoopBridge(self._http, max_retries)
        self._bridge = bridge
        io: LedgerIO
        sender_io: LedgerIO
        connections: list[Any] = [self._http, _BridgeReset(bridge)]
        if self._sync_http is not None:
            io = SyncLedgerIO(self._sync_http, max_retries)
            sender_io = SyncLedgerIO(self._sync_http, 0)  # the sender retries on its own terms
            connections.append(self._sync_http)
        else:
            io = bridge
            sender_io = LoopBridge(self._http, 0, loop_of=bridge)
        self._instrumentation = Instrumentation(
            io=io,
            sender_io=sender_io,
            aio=bridge,
            connections=connections,
            identity=(self.base_url, self.api_key),
            batching=batching,
            enabled=enabled,
            configured=bool(self.api_key),
            capture_content=capture_content,
            redact=redact,
            max_queue_bytes=max_queue_bytes,
            max_queue_events=max_queue_size,
            journal=journal,
            max_journal_bytes=max_journal_bytes,
            retry_window=retry_window,
            sample_rate=sample_rate,
            handle_sigterm=handle_sigterm,
            agent_name=agent_name,
            otel=otel,
        )
        if self._instrumentation.otel is not None:  # its spans carry each call's cost: the ledger says it
            self._headers[PRICED_HEADER] = "true"

    async def start_session(self, agent_name: str) -> str:
        """Start a session for ``agent_name`` and return its id."""
        self._check_agent_name(agent_name)
        self._instrumentation.note_loop()
        response = await self._http.post("/v1/sessions", {"agentName": agent_name})
        return self._session_id_from(response)

    async def end_session(self, session_id: str, status: SessionStatus, *, error_message: Optional[str] = None) -> None:
        """Mark a session finished, with ``"success"`` or ``"error"`` and a message."""
        body = self._end_body(session_id, status, error_message)
        self._instrumentation.note_loop()
        await self._http.post(f"/v1/sessions/{session_id}/end", body)

    async def log_events(self, session_id: str, events: Iterable[Mapping[str, Any]]) -> None:
        """Send events of any ``type`` to a session, made JSON-safe and capped at 64 KB each."""
        self._check_session_id(session_id)
        from ._events import events_body

        self._instrumentation.note_loop()
        await self._http.post("/v1/events", content=events_body(session_id, encode_events(events)))

    async def log_llm_call(self, session_id: str, event: Mapping[str, Any]) -> None:
        """Send one ``llm_call`` event; the ledger prices it from provider, model and tokens."""
        await self.log_events(session_id, [typed_event(LLM_CALL, event, "log_llm_call")])

    async def log_tool_call(self, session_id: str, event: Mapping[str, Any]) -> None:
        """Send one ``tool_call`` event, right before the tool runs."""
        await self.log_events(session_id, [typed_event(TOOL_CALL, event, "log_tool_call")])

    async def log_tool_result(self, session_id: str, event: Mapping[str, Any]) -> None:
        """Send one ``tool_result`` event, after the tool returned or raised."""
        await self.log_events(session_id, [typed_event(TOOL_RESULT, event, "log_tool_result")])

    async def aclose(self, timeout: Optional[float] = 5.0) -> int:
        """Send what the helpers have queued (at most ``timeout`` seconds), close connections; return what was left."""
        import asyncio

        self._instrumentation.note_loop()
        left = await asyncio.get_running_loop().run_in_executor(None, self._instrumentation.close, timeout)
        await self._http.aclose()
        if self._sync_http is not None:
            self._sync_http.close()
        return left

    async def __aenter__(self) -> AsyncAgentLedgerClient:
        self._instrumentation.note_loop()
        return self

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.aclose()


class _BridgeReset:
    """After fork: the parent's event loop is not the child's."""

    def __init__(self, bridge: LoopBridge) -> None:
        self._bridge = bridge

    def forget_connections(self) -> None:
        self._bridge.forget_loop()
