"""The handle of a running session: its id, its agent and its step counter."""

from __future__ import annotations

import itertools
import threading
from typing import TYPE_CHECKING, Any, Optional

from ._events import camel_keys

if TYPE_CHECKING:
    from ._recorder import Recorder, Sink

# How long ``SessionHandle.id`` waits for the background sender to learn the id.
ID_WAIT_TIMEOUT = 30.0


class SessionHandle:
    """A session started by ``ledger.session``; what ``ledger.current_session()`` returns.

    Steps are numbered from 0 in the order they begin, across the session's
    whole call tree, its asyncio tasks and the threads it hands work to
    through :class:`~agent_ledger_sdk.ContextThreadPoolExecutor`.
    """

    __slots__ = (
        "__weakref__",
        "_background",
        "_id",
        "_ready",
        "_recorder",
        "_sink",
        "_steps",
        "agent_name",
        "ended",
    )

    def __init__(self, agent_name: str, sink: Sink, recorder: Recorder) -> None:
        self.agent_name = agent_name
        self._recorder = recorder
        self.ended = False
        self._sink = sink
        self._id: Optional[str] = None
        self._background = False  # once any event went to the sender, all the rest follow it, in order
        self._ready = threading.Event()
        self._steps = itertools.count()  # next() on it is atomic: no lock on the hot path

    def __repr__(self) -> str:
        return f"SessionHandle(agent_name={self.agent_name!r}, id={self._id!r})"

    @property
    def id(self) -> Optional[str]:
        """The id the ledger gave the session; None if it could not be started.

        With background sending the session is started by the sender thread, so
        the first read may wait for it (at most 30 s).
        """
        if not self._ready.is_set():
            self._sink.wait_started(self, ID_WAIT_TIMEOUT)
        return self._id

    @property
    def started(self) -> bool:
        """True once the ledger has acknowledged the session."""
        return self._id is not None

    def next_step(self) -> int:
        """Take the next ``stepIndex`` of this session (0, 1, 2, ...)."""
        return next(self._steps)

    def log(self, type: str, **attributes: Any) -> None:
        """Record a custom event with the next ``stepIndex``.

        ``s.log("retrieval", doc_count=3)`` sends ``{"type": "retrieval", "docCount": 3, "stepIndex": n}``.
        """
        self._sink.emit(self, self._custom_event(type, attributes))

    async def alog(self, type: str, **attributes: Any) -> None:
        """:meth:`log` for async code: never blocks the event loop."""
        await self._sink.aemit(self, self._custom_event(type, attributes))

    def _custom_event(self, type: str, attributes: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(type, str) or not type:
            raise ValueError(f"log() needs the event type as a non-empty string, got {type!r}")
        event = camel_keys(attributes)
        event["type"] = type
        if "stepIndex" not in event:
            event["stepIndex"] = self.next_step()
        return event

    # -- set by the sender ----------------------------------------------

    def _resolve(self, session_id: str) -> None:
        self._id = session_id
        self._ready.set()

    def _fail(self) -> None:
        self._ready.set()  # ready without an id: the session could not be started
