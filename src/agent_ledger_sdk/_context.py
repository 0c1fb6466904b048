"""The current session, carried by a ``ContextVar``, and helpers to carry it into threads.

asyncio tasks inherit the context of the code that creates them, so tasks
started inside a session belong to it. Threads do not: a thread starts with an
empty context. Use :class:`ContextThreadPoolExecutor` or :func:`bind_context`
so that work handed to threads keeps its session and its step counter.
"""

from __future__ import annotations

import contextvars
import functools
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

from typing_extensions import ParamSpec

if TYPE_CHECKING:
    from ._session import SessionHandle

P = ParamSpec("P")
T = TypeVar("T")

current_session_var: contextvars.ContextVar[Optional[SessionHandle]] = contextvars.ContextVar(
    "agent_ledger_current_session", default=None
)


def bind_context(func: Callable[P, T]) -> Callable[P, T]:
    """Wrap ``func`` so that it runs in a copy of the caller's context, in any thread.

    ```python
    import threading
    from agent_ledger_sdk import bind_context

    thread = threading.Thread(target=bind_context(print), args=("in the session",))
    thread.start()
    thread.join()
    ```
    """
    context = contextvars.copy_context()

    @functools.wraps(func)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        # A Context can be entered by one thread at a time: each call gets its own copy.
        return context.copy().run(func, *args, **kwargs)

    return run


class ContextThreadPoolExecutor(ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` whose tasks run in the context of the code that submitted them.

    Tool calls made by the workers then belong to the submitter's session and
    take their step numbers from its counter.
    """

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        context = contextvars.copy_context()
        return super().submit(context.run, fn, *args, **kwargs)
