"""``ledger.tool``: ``tool_call`` before a tool runs, ``tool_result`` after, with one step number."""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, Any, Callable, Optional

from ._context import current_session_var
from ._events import TOOL_CALL, TOOL_RESULT
from ._exceptions import BudgetGuardrailError
from ._instrument_wrapping import (
    PASS_THROUGH,
    F,
    Run,
    aemit_quietly,
    aemit_safely,
    async_generator_wrapper,
    emit_quietly,
    emit_safely,
    function_kind,
    generator_wrapper,
    ms_since,
    perf_counter,
    rewrap_descriptor,
)
from ._session import SessionHandle
from ._snapshot import snapshot_sized, snapshot_values
from ._spans import current_span_var, new_span_id, wall_clock
from ._stats import internal_error, logger

if TYPE_CHECKING:
    from ._otel import SpanRecord

NOT_CAPTURED = "[not captured]"
# A generator tool's toolOutput: the first items it yielded, and how many in all.
GENERATOR_OUTPUT_ITEMS = 20


# -- tool -------------------------------------------------------------------


class _ToolCall:
    """One call of a tool: its step, its span and when it started; builds the events of its end."""

    __slots__ = ("handle", "name", "parent_span", "perf_started", "span", "started_at", "step")

    def __init__(self, handle: SessionHandle, name: str, otel_span: Optional[SpanRecord] = None) -> None:
        self.handle = handle
        self.name = name
        self.step = next(handle._steps)
        self.span = new_span_id() if otel_span is None else otel_span.span_id
        self.parent_span = current_span_var.get()
        self.started_at = wall_clock()
        self.perf_started = perf_counter()

    def call_event(self, tool_input: Any) -> dict[str, Any]:
        event = {
            "type": TOOL_CALL,
            "stepIndex": self.step,
            "toolName": self.name,
            "toolInput": tool_input,
            "startedAt": self.started_at,
            "spanId": self.span,
        }
        if self.parent_span is not None:
            event["parentSpanId"] = self.parent_span
        return event

    def result_event(self, output: Any) -> dict[str, Any]:
        event = {
            "type": TOOL_RESULT,
            "stepIndex": self.step,
            "toolName": self.name,
            "toolOutput": output,
            "latencyMs": ms_since(self.perf_started),
            "startedAt": self.started_at,
            "spanId": self.span,
        }
        if self.parent_span is not None:
            event["parentSpanId"] = self.parent_span
        return event

    def error_event(self, exc: BaseException) -> dict[str, Any]:
        return self.result_event({"error": str(exc), "errorType": type(exc).__name__})


class _ToolRun(Run):
    """A generator tool: its output is the first GENERATOR_OUTPUT_ITEMS items and the count."""

    def __init__(self, call: _ToolCall, capture_output: bool, otel_span: Optional[SpanRecord] = None) -> None:
        self.call = call
        self.capture_output = capture_output
        self.items: list[Any] = []
        self.size = 0
        self.count = 0
        self.otel = call.handle._otel if otel_span is not None else None
        self.otel_span = otel_span

    def enter(self) -> Any:
        token = current_span_var.set(self.call.span)
        otel = self.otel
        if otel is None:
            return token
        return token, otel.attach(self.otel_span)

    def exit(self, token: Any) -> None:
        otel = self.otel
        if otel is None:
            current_span_var.reset(token)
            return
        token, span_token = token
        otel.detach(span_token)
        current_span_var.reset(token)

    def item(self, item: Any) -> None:
        self.count += 1
        if self.capture_output and len(self.items) < GENERATOR_OUTPUT_ITEMS:
            copied, size = snapshot_sized(item)  # as yielded: the consumer may change it afterwards
            self.items.append(copied)
            self.size += size

    def _event(self, exc: Optional[BaseException]) -> dict[str, Any]:
        if exc is None or isinstance(exc, GeneratorExit):
            output = {"items": self.items, "count": self.count} if self.capture_output else NOT_CAPTURED
            return self.call.result_event(output)
        return self.call.error_event(exc)

    def finish(self, exc: Optional[BaseException]) -> None:
        if self.otel is not None:
            self.otel.ended(self.otel_span, exc)
        emit_quietly(self.call.handle, self._event(exc), self.size)

    async def afinish(self, exc: Optional[BaseException]) -> None:
        if self.otel is not None:
            self.otel.ended(self.otel_span, exc)
        await aemit_quietly(self.call.handle, self._event(exc), self.size)


Binder = Callable[[tuple[Any, ...], dict[str, Any]], Any]


def _input_binder(func: Callable[..., Any]) -> Binder:
    """Map a call's arguments to parameter names, defaults applied, without ``self``/``cls``: a fresh dict.

    It runs when the call starts, on the caller's thread. Binding on the sender
    instead (a ``Lazy`` in the event) saved the caller 0.2 to 0.4 µs a call but
    cost the process more than it saved: the deferred object, and the event dict
    holding it, were tracked by the garbage collector and walked by its
    collections for as long as they were queued, and the binding was paid there
    anyway. A dict of plain values is never tracked (docs/performance.md).
    A call that passes only positional arguments to a plain signature (the usual
    case) takes a fast path, anything else ``inspect.Signature.bind``.
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
    count = len(positional)
    # For n positional arguments, the defaults of the parameters they leave out, in order.
    missing = [[(name, value) for name, value in defaults if name not in positional[:n]] for n in range(count + 1)]

    def bind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if simple and not kwargs and len(args) <= count:
            arguments = dict(zip(positional, args))
            arguments.update(missing[len(args)])
        elif simple and len(args) <= count and names.issuperset(kwargs):
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


def not_captured(exc: Exception) -> str:
    return f"<could not capture: {type(exc).__name__}: {exc}>"


def _wrap_tool(func: Callable[..., Any], name: str, capture_input: bool, capture_output: bool) -> Callable[..., Any]:
    kind = function_kind(func)
    bind = _input_binder(func)

    def tool_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, int]:
        """The call's input as it is now: its values snapshotted in the fresh dict ``bind`` made."""
        try:
            arguments = bind(args, kwargs)
            return arguments, snapshot_values(arguments)
        except Exception as exc:  # a binder cannot fail the call
            return not_captured(exc), 0

    def begin_call(
        handle: SessionHandle, args: tuple[Any, ...], kwargs: dict[str, Any], otel_span: Optional[SpanRecord] = None
    ) -> _ToolCall:
        call = _ToolCall(handle, name, otel_span)
        if capture_input:
            value, size = tool_input(args, kwargs)
            emit_quietly(handle, call.call_event(value), size)
        else:
            emit_quietly(handle, call.call_event(NOT_CAPTURED), 0)
        return call

    def output_of(result: Any) -> tuple[Any, int]:
        return snapshot_sized(result) if capture_output else (NOT_CAPTURED, 0)

    logged: list[bool] = []

    def outside_session() -> None:
        if not logged:  # once per tool: this is on the hot path of code that runs unrecorded
            logged.append(True)
            logger.debug("agent-ledger: tool %r ran outside any session; nothing recorded", name)

    def traced(handle: SessionHandle, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The sync wrapper of a client that makes OpenTelemetry spans: the tool's span is current while it runs."""
        otel = handle._otel
        assert otel is not None
        otel_span = otel.start_tool(handle, name)
        call = begin_call(handle, args, kwargs, otel_span)
        token = current_span_var.set(call.span)
        otel_token = otel.attach(otel_span)
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            otel.detach(otel_token)
            current_span_var.reset(token)
            otel.ended(otel_span, exc)
            emit_quietly(handle, call.error_event(exc), 0)
            raise
        otel.detach(otel_token)
        current_span_var.reset(token)
        otel.ended(otel_span, None)
        output, size = output_of(result)
        emit_safely(handle, call.result_event(output), size)
        return result

    if kind == "coroutine":

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            handle = current_session_var.get()
            if handle is None or not handle.sampled:
                if handle is None:
                    outside_session()
                return await func(*args, **kwargs)
            otel = handle._otel
            otel_span = None if otel is None else otel.start_tool(handle, name)
            call = _ToolCall(handle, name, otel_span)
            if capture_input:
                value, size = tool_input(args, kwargs)
                await aemit_quietly(handle, call.call_event(value), size)
            else:
                await aemit_quietly(handle, call.call_event(NOT_CAPTURED), 0)
            token = current_span_var.set(call.span)
            otel_token = None if otel is None else otel.attach(otel_span)
            try:
                result = await func(*args, **kwargs)
            except BaseException as exc:
                if otel is not None:
                    otel.detach(otel_token)
                    otel.ended(otel_span, exc)
                current_span_var.reset(token)
                await aemit_quietly(handle, call.error_event(exc), 0)
                raise
            if otel is not None:
                otel.detach(otel_token)
                otel.ended(otel_span, None)
            current_span_var.reset(token)
            output, size = output_of(result)
            await aemit_safely(handle, call.result_event(output), size)
            return result

        return async_wrapper

    if kind in ("generator", "async_generator"):

        def begin(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Run:
            handle = current_session_var.get()
            if handle is None or not handle.sampled:
                if handle is None:
                    outside_session()
                return PASS_THROUGH
            otel = handle._otel
            otel_span = None if otel is None else otel.start_tool(handle, name)
            return _ToolRun(begin_call(handle, args, kwargs, otel_span), capture_output, otel_span)

        if kind == "generator":
            return generator_wrapper(func, begin)

        async def abegin(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Run:
            handle = current_session_var.get()
            if handle is None or not handle.sampled:
                if handle is None:
                    outside_session()
                return PASS_THROUGH
            otel = handle._otel
            otel_span = None if otel is None else otel.start_tool(handle, name)
            call = _ToolCall(handle, name, otel_span)
            if capture_input:
                value, size = tool_input(args, kwargs)
                await aemit_quietly(handle, call.call_event(value), size)
            else:
                await aemit_quietly(handle, call.call_event(NOT_CAPTURED), 0)
            return _ToolRun(call, capture_output, otel_span)

        return async_generator_wrapper(func, abegin)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # The hottest path of the SDK, written out: the same events as _ToolCall builds.
        handle = current_session_var.get()
        if handle is None or not handle.sampled:
            if handle is None:
                outside_session()
            return func(*args, **kwargs)
        if handle._otel is not None:
            return traced(handle, args, kwargs)
        span = new_span_id()
        step = next(handle._steps)
        started_at = wall_clock()
        event = {
            "type": TOOL_CALL,
            "stepIndex": step,
            "toolName": name,
            "toolInput": NOT_CAPTURED,
            "startedAt": started_at,
            "spanId": span,
        }
        # Its twin, built from the same values now; a literal, not a copy of the call event: holding only
        # strings and numbers, it is never tracked by the garbage collector while it waits in the queue.
        result_event = {
            "type": TOOL_RESULT,
            "stepIndex": step,
            "toolName": name,
            "startedAt": started_at,
            "spanId": span,
        }
        parent = current_span_var.get()
        if parent is not None:
            event["parentSpanId"] = result_event["parentSpanId"] = parent
        size = 0
        if capture_input:  # tool_input(), written out
            try:
                arguments = bind(args, kwargs)
                size = snapshot_values(arguments)
            except Exception as exc:
                arguments = not_captured(exc)
            event["toolInput"] = arguments
        try:
            handle._delivery.emit(handle, event, size)
        except Exception as exc:  # as emit_quietly: nothing stops the tool
            if not isinstance(exc, BudgetGuardrailError):
                internal_error("emit", exc)
        token = current_span_var.set(span)
        started = perf_counter()
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            current_span_var.reset(token)
            result_event["toolOutput"] = {"error": str(exc), "errorType": type(exc).__name__}
            result_event["latencyMs"] = ms_since(started)
            emit_quietly(handle, result_event, 0)
            raise
        current_span_var.reset(token)
        result_event["latencyMs"] = round((perf_counter() - started) * 1000)  # ms_since(started)
        if capture_output:
            result_event["toolOutput"], size = snapshot_sized(result)
        else:
            result_event["toolOutput"], size = NOT_CAPTURED, 0
        try:  # as emit_safely: a guardrail refusal is raised, any other fault only reported
            handle._delivery.emit(handle, result_event, size)
        except BudgetGuardrailError:
            raise
        except Exception as exc:
            internal_error("emit", exc)
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
