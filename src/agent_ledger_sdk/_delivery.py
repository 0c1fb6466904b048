"""Where built events go: inline (on the caller), background (the sender thread), or nowhere.

A delivery takes a session's start, its events (already snapshotted, with an
estimate of their size) and its end. The test capture in
``agent_ledger_sdk.testing`` is a delivery too, so tests see exactly what
production would send.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Optional, Protocol

from ._base_client import is_retryable
from ._exceptions import BudgetGuardrailError
from ._http import SESSION_KEY_PREFIX
from ._sender import END, new_key

if TYPE_CHECKING:
    from ._http import LedgerIO, LoopBridge
    from ._instrumentation import Instrumentation
    from ._session import SessionHandle


class Delivery(Protocol):
    def start(self, handle: SessionHandle) -> None: ...
    async def astart(self, handle: SessionHandle) -> None: ...
    def emit(self, handle: SessionHandle, event: dict[str, Any], size: int) -> None: ...
    async def aemit(self, handle: SessionHandle, event: dict[str, Any], size: int) -> None: ...
    def end(self, handle: SessionHandle, status: str, message: Optional[str]) -> None: ...
    async def aend(self, handle: SessionHandle, status: str, message: Optional[str]) -> None: ...
    def wait_started(self, handle: SessionHandle, timeout: float) -> None: ...


def event_loop_running() -> bool:
    # No asyncio imported means no event loop; this also keeps asyncio out of import time.
    module = sys.modules.get("asyncio")
    return module is not None and module._get_running_loop() is not None


class BackgroundDelivery:
    """Queue everything for the sender thread: the caller never waits for the network."""

    def __init__(self, owner: Instrumentation) -> None:
        self.owner = owner

    def emit(self, handle: SessionHandle, event: dict[str, Any], size: int) -> None:
        self.owner.sender.submit_event(handle, event, size)

    def start(self, handle: SessionHandle) -> None:
        self.owner.sender.submit_start(handle)

    async def astart(self, handle: SessionHandle) -> None:
        self.owner.note_loop()
        self.owner.sender.submit_start(handle)

    async def aemit(self, handle: SessionHandle, event: dict[str, Any], size: int) -> None:
        self.owner.sender.submit_event(handle, event, size)

    def end(self, handle: SessionHandle, status: str, message: Optional[str]) -> None:
        self.owner.sender.submit(END, handle, (status, message), 0)

    async def aend(self, handle: SessionHandle, status: str, message: Optional[str]) -> None:
        self.end(handle, status, message)

    def wait_started(self, handle: SessionHandle, timeout: float) -> None:
        self.owner.sender.wait_started(handle, timeout)


class InlineDelivery:
    """Send on the caller's thread (``batching=False``), except on a running event loop,
    which is never blocked: there the event goes to the background sender, and so do
    the rest of that session's events and its end, to keep them in order.

    A budget guardrail refusal is raised to the caller; every other fault is
    logged and counted.
    """

    def __init__(self, owner: Instrumentation, io: LedgerIO, aio: Optional[LoopBridge]) -> None:
        self.owner = owner
        self._io = io
        self._aio = aio  # for async clients: the same calls, awaited on the caller's loop
        self._background = BackgroundDelivery(owner)

    def _to_background(self, handle: SessionHandle) -> bool:
        if handle._background or event_loop_running():
            handle._background = True
            return True
        return False

    # -- sync -------------------------------------------------------------

    def start(self, handle: SessionHandle) -> None:
        if self._to_background(handle):
            self._background.start(handle)
            return
        try:
            session_id, budgeted = self._io.start_session(handle.start_body(), SESSION_KEY_PREFIX + handle.key)
        except Exception as exc:
            self._start_failed(handle, exc)
        else:
            handle._resolve(session_id, budgeted)

    def emit(self, handle: SessionHandle, event: dict[str, Any], size: int) -> None:
        if self._to_background(handle):
            self._background.emit(handle, event, size)
            return
        encoded = self._encoded(handle, event)
        if encoded is None:
            return
        assert handle._id is not None
        try:
            answer = self._io.send_events(handle._id, encoded, new_key())
        except Exception as exc:
            self._send_failed(handle, encoded, exc)
        else:
            self.owner.sent(handle, encoded, answer)

    def end(self, handle: SessionHandle, status: str, message: Optional[str]) -> None:
        if self._to_background(handle):
            self._background.end(handle, status, message)
            return
        if handle._id is None:
            return
        try:
            self._io.end_session(handle._id, {"status": status, "errorMessage": message}, new_key())
        except Exception as exc:
            self.owner.end_failed(handle, exc)

    # -- async ------------------------------------------------------------

    async def astart(self, handle: SessionHandle) -> None:
        aio = self._aio
        if aio is None:
            await _in_thread(self.start, handle)
            return
        aio.note_loop()
        try:
            session_id, budgeted = await aio.astart_session(handle.start_body(), SESSION_KEY_PREFIX + handle.key)
        except Exception as exc:
            self._start_failed(handle, exc)
        else:
            handle._resolve(session_id, budgeted)

    async def aemit(self, handle: SessionHandle, event: dict[str, Any], size: int) -> None:
        aio = self._aio
        if handle._background:
            self._background.emit(handle, event, size)
            return
        if aio is None:
            await _in_thread(self.emit, handle, event, size)
            return
        encoded = self._encoded(handle, event)
        if encoded is None:
            return
        assert handle._id is not None
        try:
            answer = await aio.asend_events(handle._id, encoded, new_key())
        except Exception as exc:
            self._send_failed(handle, encoded, exc)
        else:
            self.owner.sent(handle, encoded, answer)

    async def aend(self, handle: SessionHandle, status: str, message: Optional[str]) -> None:
        aio = self._aio
        if handle._background:
            self._background.end(handle, status, message)
            return
        if aio is None:
            await _in_thread(self.end, handle, status, message)
            return
        if handle._id is None:
            return
        try:
            await aio.aend_session(handle._id, {"status": status, "errorMessage": message}, new_key())
        except Exception as exc:
            self.owner.end_failed(handle, exc)

    def wait_started(self, handle: SessionHandle, timeout: float) -> None:
        if handle._background:
            self._background.wait_started(handle, timeout)

    # -- outcomes ---------------------------------------------------------

    def _encoded(self, handle: SessionHandle, event: dict[str, Any]) -> Optional[list[str]]:
        if handle._id is None:
            self.owner.events_orphaned(handle, 1)
            return None
        encoded = self.owner.pipeline.encode(event)
        return None if encoded is None else [encoded]

    def _start_failed(self, handle: SessionHandle, exc: BaseException) -> None:
        handle._fail()
        self.owner.session_failed(handle, exc)

    def _send_failed(self, handle: SessionHandle, encoded: list[str], exc: BaseException) -> None:
        self.owner.send_failed(handle, encoded, exc)
        if isinstance(exc, BudgetGuardrailError):
            raise exc
        if is_retryable(exc):
            return  # already retried by the client (max_retries); counted as failed


class NullDelivery:
    """Where a disabled client's ``with ledger.session(...)`` goes: nowhere."""

    def start(self, handle: SessionHandle) -> None:
        handle._fail()

    async def astart(self, handle: SessionHandle) -> None:
        handle._fail()

    def emit(self, handle: SessionHandle, event: dict[str, Any], size: int) -> None:
        pass

    async def aemit(self, handle: SessionHandle, event: dict[str, Any], size: int) -> None:
        pass

    def end(self, handle: SessionHandle, status: str, message: Optional[str]) -> None:
        pass

    async def aend(self, handle: SessionHandle, status: str, message: Optional[str]) -> None:
        pass

    def wait_started(self, handle: SessionHandle, timeout: float) -> None:
        pass


NULL_DELIVERY = NullDelivery()


async def _in_thread(function: Any, *args: Any) -> Any:
    import asyncio
    import contextvars

    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(None, context.run, function, *args)
