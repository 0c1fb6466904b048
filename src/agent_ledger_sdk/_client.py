"""The HTTP clients: :class:`AgentLedgerClient` and :class:`AsyncAgentLedgerClient`.

They are thin I/O twins over :class:`~agent_ledger_sdk._base_client.BaseClient`;
the instrumentation helpers come from :class:`~agent_ledger_sdk._instrument.Instrumentation`.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Callable, Literal, Optional, Union

import httpx

from ._base_client import BaseClient
from ._constants import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT
from ._events import LLM_CALL, TOOL_CALL, TOOL_RESULT, encode_events, events_body, typed_event
from ._exceptions import AgentLedgerError
from ._instrument import Instrumentation
from ._worker import DEFAULT_MAX_QUEUE_SIZE

# The test seam for backoff waits.
_sleep: Callable[[float], None] = time.sleep


async def _async_sleep(delay: float) -> None:
    import asyncio  # imported on first use: asyncio costs ~35 ms of import time

    await asyncio.sleep(delay)


SessionStatus = Literal["success", "error"]

# httpx writes a request's headers and body separately; with Nagle's algorithm on,
# the body then waits for the server's delayed ACK (40 ms on Linux) on every request.
NO_DELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


class AgentLedgerClient(Instrumentation, BaseClient):
    """Client of the Agent Ledger API, and the home of the instrumentation helpers.

    ```python
    from agent_ledger_sdk import AgentLedgerClient

    with AgentLedgerClient(api_key="sk-...") as ledger:
        session_id = ledger.start_session("batch-writer")
        ledger.end_session(session_id, "success")
    ```

    Args:
        api_key: workspace API key; defaults to ``AGENT_LEDGER_API_KEY``.
        base_url: API root; defaults to ``AGENT_LEDGER_BASE_URL``, else the hosted API.
        timeout: seconds (or an ``httpx.Timeout``) for each HTTP attempt.
        transport: an ``httpx.BaseTransport`` for proxies, meshes or tests.
        default_headers: extra headers sent with every request.
        max_retries: retries after a connection error, timeout, 408, 429 or 5xx.
        batching: the helpers send in the background (default) or inline.
        max_queue_size: events the background queue holds before it drops new ones.
        enabled: ``False`` (or ``AGENT_LEDGER_ENABLED=false``) turns the helpers off.
        capture_content: ``False`` (or ``AGENT_LEDGER_CAPTURE_CONTENT=false``)
            replaces prompts, responses and tool inputs and outputs with a marker.
        redact: called with each helper event; returns the event to send.
    """

    def __init__(
        self,
        api_key: Optional[str] = None,
        *,
        base_url: Optional[str] = None,
        timeout: Union[float, httpx.Timeout, None] = DEFAULT_TIMEOUT,
        transport: Optional[httpx.BaseTransport] = None,
        default_headers: Optional[Mapping[str, str]] = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        batching: bool = True,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
        enabled: Optional[bool] = None,
        capture_content: Optional[bool] = None,
        redact: Optional[Callable[[dict[str, Any]], dict[str, Any]]] = None,
    ) -> None:
        BaseClient.__init__(
            self,
            api_key,
            base_url=base_url,
            timeout=timeout,
            default_headers=default_headers,
            max_retries=max_retries,
        )
        self._transport = transport
        self._http: Optional[httpx.Client] = None
        self._http_lock = threading.Lock()
        self._init_instrumentation(
            batching=batching,
            max_queue_size=max_queue_size,
            enabled=enabled,
            capture_content=capture_content,
            redact=redact,
        )

    # -- the published API ------------------------------------------------

    def start_session(self, agent_name: str) -> str:
        """Start a session for ``agent_name`` and return its id."""
        self._check_agent_name(agent_name)
        response = self._post("/v1/sessions", {"agentName": agent_name})
        return self._session_id_from(response)

    def end_session(self, session_id: str, status: SessionStatus, *, error_message: Optional[str] = None) -> None:
        """Mark a session finished, with ``"success"`` or ``"error"`` and a message."""
        body = self._end_body(session_id, status, error_message)
        self._post(f"/v1/sessions/{session_id}/end", body)

    def log_events(self, session_id: str, events: Iterable[Mapping[str, Any]]) -> None:
        """Send events of any ``type`` to a session, made JSON-safe and capped at 64 KB each."""
        self._check_session_id(session_id)
        self._send_events(session_id, encode_events(events))

    def log_llm_call(self, session_id: str, event: Mapping[str, Any]) -> None:
        """Send one ``llm_call`` event; the ledger prices it from provider, model and tokens."""
        self.log_events(session_id, [typed_event(LLM_CALL, event, "log_llm_call")])

    def log_tool_call(self, session_id: str, event: Mapping[str, Any]) -> None:
        """Send one ``tool_call`` event, right before the tool runs."""
        self.log_events(session_id, [typed_event(TOOL_CALL, event, "log_tool_call")])

    def log_tool_result(self, session_id: str, event: Mapping[str, Any]) -> None:
        """Send one ``tool_result`` event, after the tool returned or raised."""
        self.log_events(session_id, [typed_event(TOOL_RESULT, event, "log_tool_result")])

    def close(self) -> int:
        """Send what the helpers have queued (at most 5 s), close connections; return what was left unsent."""
        left = self._close_instrumentation()
        with self._http_lock:
            if self._http is not None:
                self._http.close()
                self._http = None
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

    # -- I/O --------------------------------------------------------------

    def _send_events(self, session_id: str, encoded_events: list[str]) -> None:
        self._post("/v1/events", content=events_body(session_id, encoded_events))

    def _client(self) -> httpx.Client:
        http = self._http
        if http is None:
            with self._http_lock:
                http = self._http
                if http is None:
                    transport = self._transport or httpx.HTTPTransport(socket_options=NO_DELAY)
                    http = self._http = httpx.Client(timeout=self.timeout, transport=transport)
        return http

    def _forget_connections(self) -> None:
        """After fork(): the parent's sockets are not ours to use."""
        self._http = None
        self._http_lock = threading.Lock()

    def _helpers_sync_io(self) -> AgentLedgerClient:
        return self

    def _helpers_async_io(self) -> None:
        return None  # async helpers run this client's calls in a worker thread

    def _post(self, path: str, body: Any = None, *, content: Optional[bytes] = None) -> httpx.Response:
        request = self._build_request("POST", path, body, content)
        attempt = 0
        while True:
            error: AgentLedgerError
            try:
                response = self._client().send(request)
            except httpx.TransportError as exc:
                error = self._error_for_exception(exc, request)
            else:
                if response.is_success:
                    return response
                error = self._error_for_response(response)
            delay = self._retry_delay(error, attempt)
            if delay is None:
                raise error
            self._log_retry(request, error, delay, attempt)
            _sleep(delay)
            attempt += 1


class AsyncAgentLedgerClient(Instrumentation, BaseClient):
    """The asyncio twin of :class:`AgentLedgerClient`: same arguments, methods are coroutines.

    ```python
    from agent_ledger_sdk import AsyncAgentLedgerClient

    async def main() -> None:
        async with AsyncAgentLedgerClient(api_key="sk-...") as ledger:
            session_id = await ledger.start_session("batch-writer")
            await ledger.end_session(session_id, "success")
    ```
    """

    def __init__(
        self,
        api_key: Optional[str] = None,
        *,
        base_url: Optional[str] = None,
        timeout: Union[float, httpx.Timeout, None] = DEFAULT_TIMEOUT,
        transport: Optional[httpx.AsyncBaseTransport] = None,
        default_headers: Optional[Mapping[str, str]] = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        batching: bool = True,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
        enabled: Optional[bool] = None,
        capture_content: Optional[bool] = None,
        redact: Optional[Callable[[dict[str, Any]], dict[str, Any]]] = None,
    ) -> None:
        BaseClient.__init__(
            self,
            api_key,
            base_url=base_url,
            timeout=timeout,
            default_headers=default_headers,
            max_retries=max_retries,
        )
        self._transport = transport
        self._http: Optional[httpx.AsyncClient] = None
        self._sync_twin: Optional[AgentLedgerClient] = None
        self._init_instrumentation(
            batching=batching,
            max_queue_size=max_queue_size,
            enabled=enabled,
            capture_content=capture_content,
            redact=redact,
        )

    async def start_session(self, agent_name: str) -> str:
        """Start a session for ``agent_name`` and return its id."""
        self._check_agent_name(agent_name)
        response = await self._post("/v1/sessions", {"agentName": agent_name})
        return self._session_id_from(response)

    async def end_session(self, session_id: str, status: SessionStatus, *, error_message: Optional[str] = None) -> None:
        """Mark a session finished, with ``"success"`` or ``"error"`` and a message."""
        body = self._end_body(session_id, status, error_message)
        await self._post(f"/v1/sessions/{session_id}/end", body)

    async def log_events(self, session_id: str, events: Iterable[Mapping[str, Any]]) -> None:
        """Send events of any ``type`` to a session, made JSON-safe and capped at 64 KB each."""
        self._check_session_id(session_id)
        await self._send_events(session_id, encode_events(events))

    async def log_llm_call(self, session_id: str, event: Mapping[str, Any]) -> None:
        """Send one ``llm_call`` event; the ledger prices it from provider, model and tokens."""
        await self.log_events(session_id, [typed_event(LLM_CALL, event, "log_llm_call")])

    async def log_tool_call(self, session_id: str, event: Mapping[str, Any]) -> None:
        """Send one ``tool_call`` event, right before the tool runs."""
        await self.log_events(session_id, [typed_event(TOOL_CALL, event, "log_tool_call")])

    async def log_tool_result(self, session_id: str, event: Mapping[str, Any]) -> None:
        """Send one ``tool_result`` event, after the tool returned or raised."""
        await self.log_events(session_id, [typed_event(TOOL_RESULT, event, "log_tool_result")])

    async def aclose(self) -> int:
        """Send what the helpers have queued (at most 5 s), close connections; return what was left unsent."""
        import asyncio

        left = await asyncio.get_running_loop().run_in_executor(None, self._close_instrumentation)
        if self._sync_twin is not None:
            self._sync_twin.close()
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        return left

    async def __aenter__(self) -> AsyncAgentLedgerClient:
        return self

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.aclose()

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            transport = self._transport or httpx.AsyncHTTPTransport(socket_options=NO_DELAY)
            self._http = httpx.AsyncClient(timeout=self.timeout, transport=transport)
        return self._http

    def _forget_connections(self) -> None:
        self._http = None
        self._sync_twin = None

    def _helpers_sync_io(self) -> AgentLedgerClient:
        """A sync client of the same configuration, for the background sender's thread."""
        twin = self._sync_twin
        if twin is None:
            transport = self._transport if isinstance(self._transport, httpx.BaseTransport) else None
            twin = self._sync_twin = AgentLedgerClient(
                self.api_key,
                base_url=self.base_url,
                timeout=self.timeout,
                transport=transport,
                default_headers=self.default_headers,
                max_retries=self.max_retries,
                enabled=False,
            )
        return twin

    def _helpers_async_io(self) -> AsyncAgentLedgerClient:
        return self

    async def _send_events(self, session_id: str, encoded_events: list[str]) -> None:
        await self._post("/v1/events", content=events_body(session_id, encoded_events))

    async def _post(self, path: str, body: Any = None, *, content: Optional[bytes] = None) -> httpx.Response:
        request = self._build_request("POST", path, body, content)
        attempt = 0
        while True:
            error: AgentLedgerError
            try:
                response = await self._client().send(request)
            except httpx.TransportError as exc:
                error = self._error_for_exception(exc, request)
            else:
                if response.is_success:
                    return response
                error = self._error_for_response(response)
            delay = self._retry_delay(error, attempt)
            if delay is None:
                raise error
            self._log_retry(request, error, delay, attempt)
            await _async_sleep(delay)
            attempt += 1
