"""``ledger.tool``: ``tool_call`` before a tool runs, ``tool_result`` after, with one step number."""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Optional

from ._context import current_session_var
from ._events import TOOL_CALL, TOOL_RESULT
from ._instrument_wrapping import (
    PASS_THROUGH,
    F,
    Run,
    aemit_quietly,
    async_generator_wrapper,
    emit_quietly,
    function_kind,
    generator_wrapper,
    ms_since,
    perf_counter,
    rewrap_descriptor,
)
from ._recorder import Lazy
from ._session import SessionHandle
from ._stats import logger

NOT_CAPTURED = "[not captured]"
# A generator tool's toolOutput: the first items it yielded, and how many in all.
GENERATOR_OUTPUT_ITEMS = 20


# -- tool -------------------------------------------------------------------


class _ToolRun(Run):
    """A generator tool: its output is the first GENERATOR_OUTPUT_ITEMS items and the count."""

    def __init__(
        self,
        handle: SessionHandle,
        step: int,
        result_event: Callable[[int, Any, float], dict[str, Any]],
        error_event: Callable[[int, BaseException, float], dict[str, Any]],
    ) -> None:
        self.handle = handle
        self.step = step
        self.result_event = result_event
        self.error_event = error_event
        self.items: list[Any] = []
        self.count = 0
        self.started = perf_counter()

    def item(self, item: Any) -> None:
        self.count += 1
        if len(self.items) < GENERATOR_OUTPUT_ITEMS:
            self.items.append(item)

    def _event(self, exc: Optional[BaseException]) -> dict[str, Any]:
        if exc is None or isinstance(exc, GeneratorExit):
            return self.result_event(self.step, {"items": self.items, "count": self.count}, self.started)
        return self.error_event(self.step, exc, self.started)

    def finish(self, exc: Optional[BaseException]) -> None:
        emit_quietly(self.handle, self._event(exc))

    async def afinish(self, exc: Optional[BaseException]) -> None:
        await aemit_quietly(self.handle, self._event(exc))


def _input_binder(func: Callable[..., Any]) -> Callable[[tuple[Any, ...], dict[str, Any]], Any]:
    """Map a call's arguments to parameter names, defaults applied, without ``self``/``cls``.

    Runs when the event is sent, not on the caller's path; plain signatures take
    a fast path, anything else ``inspect.Signature.bind``.
    """
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return lambda args, kwargs: {"args": list(args), "kwargs": kwargs}
    parameters = list(signature.parameters.values())
    skip = parameters[0].name if parameters and parameters[0].name in ("self", "cls") else None
    simple = all(p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in parameters)
    positional = [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
    names = {p.name for p in parameters}
    defaults = [(p.name, p.default) for p in parameters if p.default is not p.empty]

    def bind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if simple and len(args) <= len(positional) and names.issuperset(kwargs):
            arguments = dict(zip(positional, args))
            arguments.update(kwargs)
            for name, default in defaults:
                arguments.setdefault(name, default)
        else:
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError:
                return {"args": list(args), "kwargs": kwargs}
            bound.apply_defaults()
            arguments = dict(bound.arguments)
        if skip is not None:
            arguments.pop(skip, None)
        return arguments

    return bind


def _wrap_tool(func: Callable[..., Any], name: str, capture_input: bool, capture_output: bool) -> Callable[..., Any]:
    kind = function_kind(func)
    bind = _input_binder(func)

    def call_event(handle: SessionHandle, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        step = handle.next_step()
        tool_input: Any = Lazy(bind, args, kwargs) if capture_input else NOT_CAPTURED
        return step, {"type": TOOL_CALL, "stepIndex": step, "toolName": name, "toolInput": tool_input}

    def result_event(step: int, output: Any, started: float) -> dict[str, Any]:
        return {
            "type": TOOL_RESULT,
            "stepIndex": step,
            "toolName": name,
            "toolOutput": output if capture_output else NOT_CAPTURED,
            "latencyMs": ms_since(started),
        }

    def error_event(step: int, exc: BaseException, started: float) -> dict[str, Any]:
        return {
            "type": TOOL_RESULT,
            "stepIndex": step,
            "toolName": name,
            "toolOutput": {"error": str(exc), "errorType": type(exc).__name__},
            "latencyMs": ms_since(started),
        }

    logged: list[bool] = []

    def outside_session() -> None:
        if not logged:  # once per tool: this is on the hot path of code that runs unrecorded
            logged.append(True)
            logger.debug("agent-ledger: tool %r ran outside any session; nothing recorded", name)

    if kind == "coroutine":

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            handle = current_session_var.get()
            if handle is None:
                outside_session()
                return await func(*args, **kwargs)
            step, event = call_event(handle, args, kwargs)
            sink = handle._sink
            await sink.aemit(handle, event)
            started = perf_counter()
            try:
                result = await func(*args, **kwargs)
            except BaseException as exc:
                await aemit_quietly(handle, error_event(step, exc, started))
                raise
            await sink.aemit(handle, result_event(step, result, started))
            return result

        return async_wrapper

    if kind in ("generator", "async_generator"):

        def begin(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Run:
            handle = current_session_var.get()
            if handle is None:
                outside_session()
                return PASS_THROUGH
            step, event = call_event(handle, args, kwargs)
            handle._sink.emit(handle, event)
            return _ToolRun(handle, step, result_event, error_event)

        if kind == "generator":
            return generator_wrapper(func, begin)

        async def abegin(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Run:
            handle = current_session_var.get()
            if handle is None:
                outside_session()
                return PASS_THROUGH
            step, event = call_event(handle, args, kwargs)
            await handle._sink.aemit(handle, event)
            return _ToolRun(handle, step, result_event, error_event)

        return async_generator_wrapper(func, abegin)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        handle = current_session_var.get()
        if handle is None:
            outside_session()
            return func(*args, **kwargs)
        step, event = call_event(handle, args, kwargs)
        sink = handle._sink
        sink.emit(handle, event)
        started = perf_counter()
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            emit_quietly(handle, error_event(step, exc, started))
            raise
        sink.emit(handle, result_event(step, result, started))
        return result

    return wrapper


class ToolDecorator:
    """What ``ledger.tool("name")`` and ``ledger.tool(name=..., capture_input=...)`` return."""

    def __init__(self, name: Optional[str], capture_input: bool, capture_output: bool) -> None:
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ValueError(f"tool name must be a non-empty string, got {name!r}")
        self.name = name
        self.capture_input = capture_input
        self.capture_output = capture_output

    def __call__(self, func: F) -> F:
        def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
            return _wrap_tool(f, self.name or f.__name__, self.capture_input, self.capture_output)

        wrapped: F = rewrap_descriptor(func, wrap)
        return wrapped


def _identity(func: F) -> F:
    return func


IDENTITY_DECORATOR = _identity


def make_tool(func_or_name: Any, name: Optional[str], capture_input: bool, capture_output: bool) -> Any:
    if func_or_name is not None and not isinstance(func_or_name, str):
        return ToolDecorator(name, capture_input, capture_output)(func_or_name)
    if func_or_name is not None and name is not None:
        raise TypeError("pass the tool name either positionally or as name=, not both")
    return ToolDecorator(func_or_name if func_or_name is not None else name, capture_input, capture_output)
