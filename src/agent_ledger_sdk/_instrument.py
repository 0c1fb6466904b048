"""The instrumentation helpers: ``session``, ``tool`` and ``llm_call``.

Each decorator inspects the function once, at decoration time, and picks a
wrapper for its kind (plain, coroutine, generator, async generator). The
wrappers keep the caller's work to a context-variable read, a step number and
one small dict per event; serialising and sending happen in the sink.
"""

from __future__ import annotations

import functools
import inspect
import time
from types import TracebackType
from typing import Any, Callable, Optional, TypeVar, overload

from . import _recorder
from ._context import current_session_var
from ._events import LLM_CALL, TOOL_CALL, TOOL_RESULT, camel_keys
from ._recorder import Lazy, Recorder, Redactor, Sink
from ._session import SessionHandle
from ._stats import LedgerStats, logger

F = TypeVar("F", bound=Callable[..., Any])
Resolver = Callable[[], Recorder]

NOT_CAPTURED = "[not captured]"
# A generator tool's toolOutput: the first items it yielded, and how many in all.
GENERATOR_OUTPUT_ITEMS = 20

_perf_counter = time.perf_counter


def _ms(started: float) -> int:
    return round((_perf_counter() - started) * 1000)


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


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
    if exc is None or isinstance(exc, GeneratorExit):
        return "success", None
    return "error", _error_text(exc)


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


def _emit_quietly(handle: SessionHandle, event: dict[str, Any]) -> None:
    """Emit while the user's exception is on its way out: nothing may replace it."""
    try:
        handle._sink.emit(handle, event)
    except Exception:
        logger.debug("agent-ledger: recording an event failed", exc_info=True)


async def _aemit_quietly(handle: SessionHandle, event: dict[str, Any]) -> None:
    try:
        await handle._sink.aemit(handle, event)
    except Exception:
        logger.debug("agent-ledger: recording an event failed", exc_info=True)


def _function_kind(func: Callable[..., Any]) -> str:
    if inspect.isasyncgenfunction(func):
        return "async_generator"
    if inspect.isgeneratorfunction(func):
        return "generator"
    if inspect.iscoroutinefunction(func):
        return "coroutine"
    return "function"


def _rewrap_descriptor(func: Any, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Any:
    """Decorate the function inside a classmethod or staticmethod object, keeping the descriptor."""
    if isinstance(func, classmethod):
        return classmethod(wrap(func.__func__))
    if isinstance(func, staticmethod):
        return staticmethod(wrap(func.__func__))
    if not callable(func):
        raise TypeError(f"agent-ledger decorators take a function, got {type(func).__name__}")
    return wrap(func)


# -- generators: one relay loop, with hooks for sessions and tools ----------


class _Run:
    """What a generator wrapper does around the user's generator; the base does nothing."""

    def enter(self) -> Any:
        return None

    def exit(self, token: Any) -> None:
        pass

    def item(self, item: Any) -> None:
        pass

    def finish(self, exc: Optional[BaseException]) -> None:
        pass

    async def afinish(self, exc: Optional[BaseException]) -> None:
        pass


_PASS_THROUGH = _Run()


def _generator_wrapper(
    func: Callable[..., Any], begin: Callable[[tuple[Any, ...], dict[str, Any]], _Run]
) -> Callable[..., Any]:
    """Wrap a generator function: ``yield from`` with hooks around every step of the user's generator."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        run = begin(args, kwargs)
        gen = func(*args, **kwargs)
        to_send: Any = None
        to_throw: Optional[BaseException] = None
        try:
            while True:
                token = run.enter()
                try:
                    if to_throw is not None:
                        exc, to_throw = to_throw, None
                        item = gen.throw(exc)
                    else:
                        item = gen.send(to_send)
                except StopIteration as stop:
                    result = stop.value
                    break
                finally:
                    run.exit(token)
                run.item(item)
                try:
                    to_send = yield item
                except GeneratorExit:
                    token = run.enter()
                    try:
                        gen.close()
                    finally:
                        run.exit(token)
                    raise
                except BaseException as exc:
                    to_throw = exc
        except BaseException as exc:
            run.finish(exc)
            raise
        run.finish(None)
        return result

    return wrapper


def _async_generator_wrapper(
    func: Callable[..., Any], abegin: Callable[[tuple[Any, ...], dict[str, Any]], Any]
) -> Callable[..., Any]:
    """The async-generator twin of :func:`_generator_wrapper`."""

    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        run: _Run = await abegin(args, kwargs)
        gen = func(*args, **kwargs)
        to_send: Any = None
        to_throw: Optional[BaseException] = None
        try:
            while True:
                token = run.enter()
                try:
                    if to_throw is not None:
                        exc, to_throw = to_throw, None
                        item = await gen.athrow(exc)
                    else:
                        item = await gen.asend(to_send)
                except StopAsyncIteration:
                    break
                finally:
                    run.exit(token)
                run.item(item)
                try:
                    to_send = yield item
                except GeneratorExit:
                    token = run.enter()
                    try:
                        await gen.aclose()
                    finally:
                        run.exit(token)
                    raise
                except BaseException as exc:
                    to_throw = exc
        except BaseException as exc:
            await run.afinish(exc)
            raise
        await run.afinish(None)

    return wrapper


# -- session ----------------------------------------------------------------


class _SessionRun(_Run):
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
    kind = _function_kind(func)

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

        def begin(args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Run:
            recorder = resolve()
            sink = _session_sink(recorder)
            if sink is None:
                return _PASS_THROUGH
            handle = _new_handle(recorder, sink, agent_name)
            sink.start(handle)
            return _SessionRun(handle)

        if kind == "generator":
            return _generator_wrapper(func, begin)

        async def abegin(args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Run:
            recorder = resolve()
            sink = _session_sink(recorder)
            if sink is None:
                return _PASS_THROUGH
            handle = _new_handle(recorder, sink, agent_name)
            await sink.astart(handle)
            return _SessionRun(handle)

        return _async_generator_wrapper(func, abegin)

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
        wrapped: F = _rewrap_descriptor(func, lambda f: _wrap_session(f, name, resolve))
        return wrapped

    def _open(self) -> tuple[SessionHandle, Optional[Sink]]:
        if self.agent_name is None:
            raise TypeError(
                'ledger.session() used as a with-block needs an agent name: with ledger.session("my-agent") as s:'
            )
        if self._handle is not None:
            raise RuntimeError("this ledger.session(...) block is already open; call ledger.session() again")
        recorder = self._resolve()
        sink = _session_sink(recorder)
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


# -- tool -------------------------------------------------------------------


class _ToolRun(_Run):
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
        self.started = _perf_counter()

    def item(self, item: Any) -> None:
        self.count += 1
        if len(self.items) < GENERATOR_OUTPUT_ITEMS:
            self.items.append(item)

    def _event(self, exc: Optional[BaseException]) -> dict[str, Any]:
        if exc is None or isinstance(exc, GeneratorExit):
            return self.result_event(self.step, {"items": self.items, "count": self.count}, self.started)
        return self.error_event(self.step, exc, self.started)

    def finish(self, exc: Optional[BaseException]) -> None:
        _emit_quietly(self.handle, self._event(exc))

    async def afinish(self, exc: Optional[BaseException]) -> None:
        await _aemit_quietly(self.handle, self._event(exc))


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
    kind = _function_kind(func)
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
            "latencyMs": _ms(started),
        }

    def error_event(step: int, exc: BaseException, started: float) -> dict[str, Any]:
        return {
            "type": TOOL_RESULT,
            "stepIndex": step,
            "toolName": name,
            "toolOutput": {"error": str(exc), "errorType": type(exc).__name__},
            "latencyMs": _ms(started),
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
            started = _perf_counter()
            try:
                result = await func(*args, **kwargs)
            except BaseException as exc:
                await _aemit_quietly(handle, error_event(step, exc, started))
                raise
            await sink.aemit(handle, result_event(step, result, started))
            return result

        return async_wrapper

    if kind in ("generator", "async_generator"):

        def begin(args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Run:
            handle = current_session_var.get()
            if handle is None:
                outside_session()
                return _PASS_THROUGH
            step, event = call_event(handle, args, kwargs)
            handle._sink.emit(handle, event)
            return _ToolRun(handle, step, result_event, error_event)

        if kind == "generator":
            return _generator_wrapper(func, begin)

        async def abegin(args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Run:
            handle = current_session_var.get()
            if handle is None:
                outside_session()
                return _PASS_THROUGH
            step, event = call_event(handle, args, kwargs)
            await handle._sink.aemit(handle, event)
            return _ToolRun(handle, step, result_event, error_event)

        return _async_generator_wrapper(func, abegin)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        handle = current_session_var.get()
        if handle is None:
            outside_session()
            return func(*args, **kwargs)
        step, event = call_event(handle, args, kwargs)
        sink = handle._sink
        sink.emit(handle, event)
        started = _perf_counter()
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            _emit_quietly(handle, error_event(step, exc, started))
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

        wrapped: F = _rewrap_descriptor(func, wrap)
        return wrapped


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
        self._started = _perf_counter()

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
            "latencyMs": _ms(self._started),
        }
        if self.tokens_in is None and self.tokens_out is None:
            event["usageMissing"] = True  # the ledger flags it instead of pricing it at $0 silently
        if exc is not None:
            event["error"] = _error_text(exc)
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
            _emit_quietly(handle, self._event(exc))
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
            await _aemit_quietly(handle, self._event(exc))
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

    def __exit__(self, *exc_info: object) -> None:
        pass

    async def __aenter__(self) -> LLMCall:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        pass


NULL_LLM_CALL: LLMCall = _NullLLMCall("disabled", "disabled", None, {})


def _identity(func: F) -> F:
    return func


_IDENTITY_DECORATOR = _identity


# -- the public face, shared by clients and the module-level default -------


def make_session(resolve: Resolver, func_or_name: Any, agent_name: Optional[str], enabled: bool = True) -> Any:
    if func_or_name is not None and not isinstance(func_or_name, str):
        if agent_name is not None:
            raise TypeError("pass the agent name either positionally or as agent_name=, not both")
        return SessionScope(resolve, None)(func_or_name)
    if func_or_name is not None and agent_name is not None:
        raise TypeError("pass the agent name either positionally or as agent_name=, not both")
    return SessionScope(resolve, func_or_name if func_or_name is not None else agent_name, enabled)


def make_tool(func_or_name: Any, name: Optional[str], capture_input: bool, capture_output: bool) -> Any:
    if func_or_name is not None and not isinstance(func_or_name, str):
        return ToolDecorator(name, capture_input, capture_output)(func_or_name)
    if func_or_name is not None and name is not None:
        raise TypeError("pass the tool name either positionally or as name=, not both")
    return ToolDecorator(func_or_name if func_or_name is not None else name, capture_input, capture_output)


def make_llm_call(provider: str, model: str, prompt: Any, attributes: dict[str, Any]) -> LLMCall:
    if not isinstance(provider, str) or not provider:
        raise ValueError(f"llm_call() needs provider= as a non-empty string, got {provider!r}")
    if not isinstance(model, str) or not model:
        raise ValueError(f"llm_call() needs model= as a non-empty string, got {model!r}")
    return LLMCall(provider, model, prompt, attributes)


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
            return func_or_name if callable(func_or_name) else _IDENTITY_DECORATOR
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

    def reset_guardrail(self, agent_name: Optional[str] = None) -> None:
        """Lift the pre-flight stop of one agent (or all) after raising its budget."""
        self._recorder.latch.clear(agent_name)
