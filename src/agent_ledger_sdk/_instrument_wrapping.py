"""The wrapping machinery the helpers share: function kinds, descriptors, generator relays, timing."""

from __future__ import annotations

import functools
import inspect
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

from ._exceptions import BudgetGuardrailError
from ._stats import internal_error

if TYPE_CHECKING:
    from ._session import SessionHandle

F = TypeVar("F", bound=Callable[..., Any])

perf_counter = time.perf_counter


def ms_since(started: float) -> int:
    return round((perf_counter() - started) * 1000)


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def emit_quietly(handle: SessionHandle, event: dict[str, Any], size: int) -> None:
    """Emit while the user's exception is on its way out: nothing may replace it."""
    try:
        handle._delivery.emit(handle, event, size)
    except BudgetGuardrailError:
        pass  # the user's own exception wins; the refusal is latched and counted
    except Exception as exc:
        internal_error("emit", exc)


async def aemit_quietly(handle: SessionHandle, event: dict[str, Any], size: int) -> None:
    try:
        await handle._delivery.aemit(handle, event, size)
    except BudgetGuardrailError:
        pass
    except Exception as exc:
        internal_error("emit", exc)


def emit_safely(handle: SessionHandle, event: dict[str, Any], size: int) -> None:
    """Emit after the user's code returned: a guardrail refusal is raised, any other fault only reported."""
    try:
        handle._delivery.emit(handle, event, size)
    except BudgetGuardrailError:
        raise
    except Exception as exc:
        internal_error("emit", exc)


async def aemit_safely(handle: SessionHandle, event: dict[str, Any], size: int) -> None:
    try:
        await handle._delivery.aemit(handle, event, size)
    except BudgetGuardrailError:
        raise
    except Exception as exc:
        internal_error("emit", exc)


def function_kind(func: Callable[..., Any]) -> str:
    if inspect.isasyncgenfunction(func):
        return "async_generator"
    if inspect.isgeneratorfunction(func):
        return "generator"
    if inspect.iscoroutinefunction(func):
        return "coroutine"
    return "function"


def rewrap_descriptor(func: Any, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Any:
    """Decorate the function inside a classmethod or staticmethod object, keeping the descriptor."""
    if isinstance(func, classmethod):
        return classmethod(wrap(func.__func__))
    if isinstance(func, staticmethod):
        return staticmethod(wrap(func.__func__))
    if not callable(func):
        raise TypeError(f"agent-ledger decorators take a function, got {type(func).__name__}")
    return wrap(func)


# -- generators: one relay loop, with hooks for sessions and tools ----------


class Run:
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


PASS_THROUGH = Run()


def generator_wrapper(
    func: Callable[..., Any], begin: Callable[[tuple[Any, ...], dict[str, Any]], Run]
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


def async_generator_wrapper(
    func: Callable[..., Any], abegin: Callable[[tuple[Any, ...], dict[str, Any]], Any]
) -> Callable[..., Any]:
    """The async-generator twin of :func:`generator_wrapper`."""

    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        run: Run = await abegin(args, kwargs)
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
