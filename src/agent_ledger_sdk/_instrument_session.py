"""``ledger.session``: a session around a function, a generator or a ``with`` block."""

from __future__ import annotations

import functools
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Optional

from ._context import current_session_var
from ._delivery import NULL_DELIVERY
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
from ._session import SessionHandle
from ._snapshot import snapshot
from ._stats import internal_error

if TYPE_CHECKING:
    from ._instrumentation import Instrumentation
    from ._otel import SpanRecord

Resolver = Callable[[], "Instrumentation"]


class SessionContext:
    """What a session records besides its agent: user, tags and metadata (checked once, up front)."""

    __slots__ = ("max_cost_usd", "metadata", "tags", "user_id")

    def __init__(self, user_id: Any = None, tags: Any = None, metadata: Any = None, max_cost_usd: Any = None) -> None:
        if user_id is not None and (not isinstance(user_id, str) or not user_id.strip()):
            raise ValueError(f"user_id must be a non-empty string, got {user_id!r}")
        if tags is not None:
            if isinstance(tags, str) or not isinstance(tags, (list, tuple, set, frozenset)):
                raise TypeError(f'tags must be a list of strings, e.g. tags=["beta", "eu"], got {tags!r}')
            bad = [tag for tag in tags if not isinstance(tag, str) or not tag.strip()]
            if bad:
                raise ValueError(f"each tag must be a non-empty string, got {bad[0]!r}")
            tags = sorted(set(tags)) if isinstance(tags, (set, frozenset)) else list(dict.fromkeys(tags))
        if metadata is not None and not isinstance(metadata, dict):
            raise TypeError(f'metadata must be a dict, e.g. metadata={{"plan": "pro"}}, got {type(metadata).__name__}')
        if max_cost_usd is not None and (
            isinstance(max_cost_usd, bool)
            or not isinstance(max_cost_usd, (int, float))
            or not 0 <= max_cost_usd < float("inf")
        ):
            raise ValueError(
                f"max_cost_usd must be a number of US dollars >= 0, e.g. max_cost_usd=0.50, got {max_cost_usd!r}"
            )
        self.max_cost_usd: Optional[float] = None if max_cost_usd is None else float(max_cost_usd)
        self.user_id: Optional[str] = user_id
        self.tags: Optional[list[str]] = tags or None
        self.metadata: Optional[dict[str, Any]] = snapshot(metadata) if metadata else None


NO_CONTEXT = SessionContext()


def _open_session(resolve: Resolver, agent_name: str, context: SessionContext) -> Optional[SessionHandle]:
    """A new handle in the current context's session tree, or None when nothing records."""
    instrumentation = resolve()
    delivery = instrumentation.delivery()
    if delivery is None:
        return None
    return instrumentation.new_session(
        delivery,
        agent_name,
        current_session_var.get(),
        context.user_id,
        context.tags,
        context.metadata,
        context.max_cost_usd,
    )


def _end_status(exc: Optional[BaseException]) -> tuple[str, Optional[str]]:
    # A generator closed early and sys.exit(0) are normal ends, not failures.
    if exc is None or isinstance(exc, GeneratorExit):
        return "success", None
    if isinstance(exc, SystemExit) and exc.code in (0, None):
        return "success", None
    return "error", error_text(exc)


def _start(handle: SessionHandle) -> None:
    try:
        handle._delivery.start(handle)
    except Exception as exc:
        internal_error("session start", exc)


async def _astart(handle: SessionHandle) -> None:
    try:
        await handle._delivery.astart(handle)
    except Exception as exc:
        internal_error("session start", exc)


def _finish(handle: SessionHandle, exc: Optional[BaseException]) -> None:
    if handle.ended:
        return
    handle.ended = True
    status, message = _end_status(exc)
    try:
        handle._delivery.end(handle, status, message)
    except Exception as error:  # the user's outcome wins regardless
        internal_error("session end", error)


async def _afinish(handle: SessionHandle, exc: Optional[BaseException]) -> None:
    if handle.ended:
        return
    handle.ended = True
    status, message = _end_status(exc)
    try:
        await handle._delivery.aend(handle, status, message)
    except Exception as error:
        internal_error("session end", error)


# -- the session's OpenTelemetry span (only when the client makes spans: handle._otel) -------------


def _span_start(handle: SessionHandle) -> Optional[SpanRecord]:
    otel = handle._otel
    return None if otel is None else otel.start_session(handle)


def _span_attach(handle: SessionHandle, span: Optional[SpanRecord]) -> Any:
    otel = handle._otel
    return None if otel is None or span is None else otel.attach(span)


def _span_detach(handle: SessionHandle, token: Any) -> None:
    otel = handle._otel
    if otel is not None and token is not None:
        otel.detach(token)


def _span_end(handle: SessionHandle, span: Optional[SpanRecord], exc: Optional[BaseException]) -> None:
    otel = handle._otel
    if otel is not None and span is not None:
        otel.ended(span, exc)


# -- session ----------------------------------------------------------------


class _SessionRun(Run):
    """A session around a generator: current while the generator runs, ended when it finishes."""

    def __init__(self, handle: SessionHandle, span: Optional[SpanRecord]) -> None:
        self.handle = handle
        self.span = span

    def enter(self) -> Any:
        token = current_session_var.set(self.handle)
        if self.span is None:
            return token
        return token, _span_attach(self.handle, self.span)

    def exit(self, token: Any) -> None:
        if self.span is None:
            current_session_var.reset(token)
            return
        token, span_token = token
        _span_detach(self.handle, span_token)
        current_session_var.reset(token)

    def finish(self, exc: Optional[BaseException]) -> None:
        _span_end(self.handle, self.span, exc)
        _finish(self.handle, exc)

    async def afinish(self, exc: Optional[BaseException]) -> None:
        _span_end(self.handle, self.span, exc)
        await _afinish(self.handle, exc)


def _wrap_session(
    func: Callable[..., Any], agent_name: str, resolve: Resolver, context: SessionContext
) -> Callable[..., Any]:
    kind = function_kind(func)

    if kind == "coroutine":

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            handle = _open_session(resolve, agent_name, context)
            if handle is None:
                return await func(*args, **kwargs)
            span = _span_start(handle)
            await _astart(handle)
            token = current_session_var.set(handle)
            span_token = _span_attach(handle, span)
            try:
                try:
                    result = await func(*args, **kwargs)
                finally:
                    _span_detach(handle, span_token)
                    current_session_var.reset(token)
            except BaseException as exc:
                _span_end(handle, span, exc)
                await _afinish(handle, exc)
                raise
            _span_end(handle, span, None)
            await _afinish(handle, None)
            return result

        return async_wrapper

    if kind in ("generator", "async_generator"):

        def begin(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Run:
            handle = _open_session(resolve, agent_name, context)
            if handle is None:
                return PASS_THROUGH
            span = _span_start(handle)
            _start(handle)
            return _SessionRun(handle, span)

        if kind == "generator":
            return generator_wrapper(func, begin)

        async def abegin(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Run:
            handle = _open_session(resolve, agent_name, context)
            if handle is None:
                return PASS_THROUGH
            span = _span_start(handle)
            await _astart(handle)
            return _SessionRun(handle, span)

        return async_generator_wrapper(func, abegin)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        handle = _open_session(resolve, agent_name, context)
        if handle is None:
            return func(*args, **kwargs)
        span = _span_start(handle)
        _start(handle)
        token = current_session_var.set(handle)
        span_token = _span_attach(handle, span)
        try:
            try:
                result = func(*args, **kwargs)
            finally:
                _span_detach(handle, span_token)
                current_session_var.reset(token)
        except BaseException as exc:
            _span_end(handle, span, exc)
            _finish(handle, exc)
            raise
        _span_end(handle, span, None)
        _finish(handle, None)
        return result

    return wrapper


class SessionScope:
    """What ``ledger.session("name", ...)`` returns: a decorator, and a ``with`` / ``async with`` block.

    One scope object serves one ``with`` block at a time; each
    ``ledger.session(...)`` call makes a new one.
    """

    def __init__(
        self,
        resolve: Resolver,
        agent_name: Optional[str],
        enabled: bool = True,
        context: SessionContext = NO_CONTEXT,
    ) -> None:
        if agent_name is not None and (not isinstance(agent_name, str) or not agent_name.strip()):
            raise ValueError(f"agent_name must be a non-empty string, got {agent_name!r}")
        self._resolve = resolve
        self._enabled = enabled
        self._context = context
        self.agent_name = agent_name
        self._handle: Optional[SessionHandle] = None
        self._token: Any = None
        self._span: Optional[SpanRecord] = None
        self._span_token: Any = None

    def __call__(self, func: F) -> F:
        if not self._enabled:
            return func  # the kill switch: the function itself, no wrapper
        target = getattr(func, "__func__", func)  # classmethod / staticmethod objects
        name = self.agent_name or str(getattr(target, "__name__", "agent"))
        resolve, context = self._resolve, self._context
        wrapped: F = rewrap_descriptor(func, lambda f: _wrap_session(f, name, resolve, context))
        return wrapped

    def _open(self) -> tuple[SessionHandle, bool]:
        if self.agent_name is None:
            raise TypeError(
                'ledger.session() used as a with-block needs an agent name: with ledger.session("my-agent") as s:'
            )
        if self._handle is not None:
            raise RuntimeError("this ledger.session(...) block is already open; call ledger.session() again")
        handle = _open_session(self._resolve, self.agent_name, self._context) if self._enabled else None
        recording = handle is not None
        if handle is None:
            handle = SessionHandle(self.agent_name, NULL_DELIVERY, self._resolve())
            handle._fail()
        self._handle = handle
        return handle, recording

    def __enter__(self) -> SessionHandle:
        handle, recording = self._open()
        if recording:
            self._span = _span_start(handle)
            _start(handle)
            self._token = current_session_var.set(handle)
            self._span_token = _span_attach(handle, self._span)
        return handle

    def _leave(self, handle: Optional[SessionHandle], exc: Optional[BaseException]) -> None:
        """Out of the block: the session is no longer current, and its span ends."""
        span, self._span = self._span, None
        if handle is not None:
            _span_detach(handle, self._span_token)
            self._span_token = None
        if self._token is not None:
            current_session_var.reset(self._token)
            self._token = None
        if handle is not None:
            _span_end(handle, span, exc)

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        handle, self._handle = self._handle, None
        self._leave(handle, exc)
        if handle is not None:
            _finish(handle, exc)

    async def __aenter__(self) -> SessionHandle:
        handle, recording = self._open()
        if recording:
            self._span = _span_start(handle)
            await _astart(handle)
            self._token = current_session_var.set(handle)
            self._span_token = _span_attach(handle, self._span)
        return handle

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        handle, self._handle = self._handle, None
        self._leave(handle, exc)
        if handle is not None:
            await _afinish(handle, exc)


def make_session(
    resolve: Resolver,
    func_or_name: Any,
    agent_name: Optional[str],
    enabled: bool = True,
    *,
    user_id: Optional[str] = None,
    tags: Optional[Any] = None,
    metadata: Optional[dict[str, Any]] = None,
    max_cost_usd: Optional[float] = None,
) -> Any:
    no_context = user_id is None and tags is None and metadata is None and max_cost_usd is None
    context = NO_CONTEXT if no_context else SessionContext(user_id, tags, metadata, max_cost_usd)
    if func_or_name is not None and not isinstance(func_or_name, str):
        if agent_name is not None:
            raise TypeError("pass the agent name either positionally or as agent_name=, not both")
        return SessionScope(resolve, None, context=context)(func_or_name)
    if func_or_name is not None and agent_name is not None:
        raise TypeError("pass the agent name either positionally or as agent_name=, not both")
    return SessionScope(resolve, func_or_name if func_or_name is not None else agent_name, enabled, context)
