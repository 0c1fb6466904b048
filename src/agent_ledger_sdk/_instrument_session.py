"""``ledger.session``: a session around a function, a generator or a ``with`` block."""

from __future__ import annotations

import functools
from types import TracebackType
from typing import Any, Callable, Optional

from . import _recorder
from ._context import current_session_var
from ._instrument_wrapping import (
    PASS_THROUGH,
    F,
    Run,
    async_generator_wrapper,
    error_text,
    function_kind,
    generator_wrapper,
    rewrap_descriptor,
)
from ._recorder import Recorder, Sink
from ._session import SessionHandle
from ._stats import logger

Resolver = Callable[[], Recorder]


class _NullSink:
    """Where the events of a disabled client's ``with ledger.session(...)`` go: nowhere."""

    def start(self, handle: SessionHandle) -> None:
        handle._fail()

    async def astart(self, handle: SessionHandle) -> None:
        handle._fail()

    def emit(self, handle: SessionHandle, event: dict[str, Any]) -> None:
        pass

    async def aemit(self, handle: SessionHandle, event: dict[str, Any]) -> None:
        pass

    def end(self, handle: SessionHandle, status: str, message: Optional[str]) -> None:
        pass

    async def aend(self, handle: SessionHandle, status: str, message: Optional[str]) -> None:
        pass

    def wait_started(self, handle: SessionHandle, timeout: float) -> None:
        pass


_NULL_SINK = _NullSink()


def _session_sink(recorder: Recorder) -> Optional[Sink]:
    override = _recorder.capture_override
    if override is not None:
        return override
    return recorder.default_sink if recorder.enabled else None


def _new_handle(recorder: Recorder, sink: Sink, agent_name: str) -> SessionHandle:
    handle = SessionHandle(agent_name, sink, recorder)
    if sink is not _NULL_SINK:
        recorder.open_sessions.add(handle)
    return handle


def _end_status(exc: Optional[BaseException]) -> tuple[str, Optional[str]]:
    # A generator closed early and sys.exit(0) are normal ends, not failures.
    if exc is None or isinstance(exc, GeneratorExit):
        return "success", None
    if isinstance(exc, SystemExit) and exc.code in (0, None):
        return "success", None
    return "error", error_text(exc)


def _finish(handle: SessionHandle, exc: Optional[BaseException]) -> None:
    if handle.ended:
        return
    handle.ended = True
    status, message = _end_status(exc)
    try:
        handle._sink.end(handle, status, message)
    except Exception:  # pragma: no cover - sinks do not raise; the user's outcome wins regardless
        logger.debug("agent-ledger: ending a session failed", exc_info=True)


async def _afinish(handle: SessionHandle, exc: Optional[BaseException]) -> None:
    if handle.ended:
        return
    handle.ended = True
    status, message = _end_status(exc)
    try:
        await handle._sink.aend(handle, status, message)
    except Exception:  # pragma: no cover
        logger.debug("agent-ledger: ending a session failed", exc_info=True)


# -- session ----------------------------------------------------------------


class _SessionRun(Run):
    """A session around a generator: current while the generator runs, ended when it finishes."""

    def __init__(self, handle: SessionHandle) -> None:
        self.handle = handle

    def enter(self) -> Any:
        return current_session_var.set(self.handle)

    def exit(self, token: Any) -> None:
        current_session_var.reset(token)

    def finish(self, exc: Optional[BaseException]) -> None:
        _finish(self.handle, exc)

    async def afinish(self, exc: Optional[BaseException]) -> None:
        await _afinish(self.handle, exc)


def _wrap_session(func: Callable[..., Any], agent_name: str, resolve: Resolver) -> Callable[..., Any]:
    kind = function_kind(func)

    if kind == "coroutine":

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            recorder = resolve()
            sink = _session_sink(recorder)
            if sink is None:
                return await func(*args, **kwargs)
            handle = _new_handle(recorder, sink, agent_name)
            await sink.astart(handle)
            token = current_session_var.set(handle)
            try:
                try:
                    result = await func(*args, **kwargs)
                finally:
                    current_session_var.reset(token)
            except BaseException as exc:
                await _afinish(handle, exc)
                raise
            await _afinish(handle, None)
            return result

        return async_wrapper

    if kind in ("generator", "async_generator"):

        def begin(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Run:
            recorder = resolve()
            sink = _session_sink(recorder)
            if sink is None:
                return PASS_THROUGH
            handle = _new_handle(recorder, sink, agent_name)
            sink.start(handle)
            return _SessionRun(handle)

        if kind == "generator":
            return generator_wrapper(func, begin)

        async def abegin(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Run:
            recorder = resolve()
            sink = _session_sink(recorder)
            if sink is None:
                return PASS_THROUGH
            handle = _new_handle(recorder, sink, agent_name)
            await sink.astart(handle)
            return _SessionRun(handle)

        return async_generator_wrapper(func, abegin)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        recorder = resolve()
        sink = _session_sink(recorder)
        if sink is None:
            return func(*args, **kwargs)
        handle = _new_handle(recorder, sink, agent_name)
        sink.start(handle)
        token = current_session_var.set(handle)
        try:
            try:
                result = func(*args, **kwargs)
            finally:
                current_session_var.reset(token)
        except BaseException as exc:
            _finish(handle, exc)
            raise
        _finish(handle, None)
        return result

    return wrapper


class SessionScope:
    """What ``ledger.session("name")`` returns: a decorator, and a ``with`` / ``async with`` block.

    One scope object serves one ``with`` block at a time; each
    ``ledger.session(...)`` call makes a new one.
    """

    def __init__(self, resolve: Resolver, agent_name: Optional[str], enabled: bool = True) -> None:
        if agent_name is not None and (not isinstance(agent_name, str) or not agent_name.strip()):
            raise ValueError(f"agent_name must be a non-empty string, got {agent_name!r}")
        self._resolve = resolve
        self._enabled = enabled
        self.agent_name = agent_name
        self._handle: Optional[SessionHandle] = None
        self._token: Any = None

    def __call__(self, func: F) -> F:
        if not self._enabled:
            return func  # the kill switch: the function itself, no wrapper
        target = getattr(func, "__func__", func)  # classmethod / staticmethod objects
        name = self.agent_name or str(getattr(target, "__name__", "agent"))
        resolve = self._resolve
        wrapped: F = rewrap_descriptor(func, lambda f: _wrap_session(f, name, resolve))
        return wrapped

    def _open(self) -> tuple[SessionHandle, Optional[Sink]]:
        if self.agent_name is None:
            raise TypeError(
                'ledger.session() used as a with-block needs an agent name: with ledger.session("my-agent") as s:'
            )
        if self._handle is not None:
            raise RuntimeError("this ledger.session(...) block is already open; call ledger.session() again")
        recorder = self._resolve()
        sink = _session_sink(recorder) if self._enabled else None
        handle = _new_handle(recorder, sink or _NULL_SINK, self.agent_name)
        self._handle = handle
        return handle, sink

    def __enter__(self) -> SessionHandle:
        handle, sink = self._open()
        if sink is not None:
            sink.start(handle)
            self._token = current_session_var.set(handle)
        return handle

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        handle, self._handle = self._handle, None
        if self._token is not None:
            current_session_var.reset(self._token)
            self._token = None
        if handle is not None:
            _finish(handle, exc)

    async def __aenter__(self) -> SessionHandle:
        handle, sink = self._open()
        if sink is not None:
            await sink.astart(handle)
            self._token = current_session_var.set(handle)
        return handle

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        handle, self._handle = self._handle, None
        if self._token is not None:
            current_session_var.reset(self._token)
            self._token = None
        if handle is not None:
            await _afinish(handle, exc)


def make_session(resolve: Resolver, func_or_name: Any, agent_name: Optional[str], enabled: bool = True) -> Any:
    if func_or_name is not None and not isinstance(func_or_name, str):
        if agent_name is not None:
            raise TypeError("pass the agent name either positionally or as agent_name=, not both")
        return SessionScope(resolve, None)(func_or_name)
    if func_or_name is not None and agent_name is not None:
        raise TypeError("pass the agent name either positionally or as agent_name=, not both")
    return SessionScope(resolve, func_or_name if func_or_name is not None else agent_name, enabled)
