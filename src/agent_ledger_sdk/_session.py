"""The handle of a running session: its id, its agent, its context and its step counter."""

from __future__ import annotations

import itertools
import os
import time
from typing import TYPE_CHECKING, Any, Optional

from ._events import camel_keys
from ._snapshot import snapshot_sized
from ._spans import current_span_var, wall_clock

if TYPE_CHECKING:
    from ._delivery import Delivery
    from ._instrumentation import Instrumentation
    from ._otel import OtelBridge, SpanRecord

# The longest ``SessionHandle.id`` waits for the background sender to learn the id.
ID_WAIT_TIMEOUT = 2.0

PENDING, STARTED, FAILED = 0, 1, 2


def session_key() -> str:
    """A unique, time-ordered key per session: the idempotency key of its start, in any process."""
    return f"{time.time_ns():016x}{os.urandom(6).hex()}"


class SessionHandle:
    """A session started by ``ledger.session``; what ``ledger.current_session()`` returns.

    Steps are numbered from 0 in the order they begin, across the session's
    whole call tree, its asyncio tasks and the threads it hands work to
    through :class:`~agent_ledger_sdk.ContextThreadPoolExecutor`.
    """

    __slots__ = (
        "__weakref__",
        "_background",
        "_delivery",
        "_id",
        "_instrumentation",
        "_otel",
        "_otel_span",
        "_state",
        "_steps",
        "_waited",
        "agent_name",
        "budgeted",
        "ended",
        "key",
        "max_cost_usd",
        "metadata",
        "parent",
        "sampled",
        "tags",
        "user_id",
    )

    def __init__(
        self,
        agent_name: str,
        delivery: Delivery,
        instrumentation: Instrumentation,
        *,
        user_id: Optional[str] = None,
        tags: Optional[list[str]] = None,
        metadata: Optional[dict[str, Any]] = None,
        parent: Optional[SessionHandle] = None,
        sampled: bool = True,
        max_cost_usd: Optional[float] = None,
    ) -> None:
        self.agent_name = agent_name
        self.user_id = user_id
        self.tags = tags
        self.metadata = metadata
        self.parent = parent
        self.sampled = sampled
        self.max_cost_usd = max_cost_usd
        self.budgeted: Optional[bool] = None  # does a budget apply? the ledger says when the session starts
        self._instrumentation = instrumentation
        self.ended = False
        self._delivery = delivery
        self._id: Optional[str] = None
        self._state = PENDING
        self._waited = False  # SessionHandle.id waits for the start once, not on every read
        self._background = False  # once any event went to the sender, all the rest follow it, in order
        self._steps = itertools.count()  # next() on it is atomic: no lock on the hot path
        self._otel: Optional[OtelBridge] = None  # the client's OpenTelemetry spans, when it makes them
        self._otel_span: Optional[SpanRecord] = None  # this session's span while it is open
        self.key = session_key()

    def __repr__(self) -> str:
        return f"SessionHandle(agent_name={self.agent_name!r}, id={self._id!r})"

    @property
    def id(self) -> Optional[str]:
        """The id the ledger gave the session; None if it is not known (yet).

        With background sending the session is started by the sender thread, so
        the first read may wait for it, at most ``ID_WAIT_TIMEOUT`` (2 s), once:
        during an outage it returns None rather than block the agent again.
        """
        if self._state == PENDING and not self._waited:
            self._delivery.wait_started(self, ID_WAIT_TIMEOUT)
            self._waited = self._state == PENDING  # timed out: later reads don't wait again
        return self._id

    @property
    def started(self) -> bool:
        """True once the ledger has acknowledged the session."""
        return self._id is not None

    def next_step(self) -> int:
        """Take the next ``stepIndex`` of this session (0, 1, 2, ...)."""
        return next(self._steps)

    def start_body(self) -> dict[str, Any]:
        """The body of ``POST /v1/sessions``: the published ``agentName``, plus context keys only when set."""
        body: dict[str, Any] = {"agentName": self.agent_name}
        if self.user_id is not None:
            body["userId"] = self.user_id
        if self.tags:
            body["tags"] = self.tags
        if self.metadata:
            body["metadata"] = self.metadata
        if self.max_cost_usd is not None:
            body["maxCostUsd"] = self.max_cost_usd
        parent = self.parent
        if parent is not None and parent._id is not None:
            body["parentSessionId"] = parent._id
        return body

    def log(self, type: str, **attributes: Any) -> None:
        """Record a custom event with the next ``stepIndex``.

        ``s.log("retrieval", doc_count=3)`` sends ``{"type": "retrieval", "docCount": 3, "stepIndex": n}``.
        """
        event, size = self._custom_event(type, attributes)
        self._delivery.emit(self, event, size)

    async def alog(self, type: str, **attributes: Any) -> None:
        """:meth:`log` for async code: never blocks the event loop."""
        event, size = self._custom_event(type, attributes)
        await self._delivery.aemit(self, event, size)

    def _custom_event(self, type: str, attributes: dict[str, Any]) -> tuple[dict[str, Any], int]:
        if not isinstance(type, str) or not type:
            raise ValueError(f"log() needs the event type as a non-empty string, got {type!r}")
        event, size = snapshot_sized(camel_keys(attributes))
        event["type"] = type
        if "stepIndex" not in event:
            event["stepIndex"] = self.next_step()
        event.setdefault("startedAt", wall_clock())
        parent_span = current_span_var.get()
        if parent_span is not None:
            event.setdefault("parentSpanId", parent_span)
        return event, size

    # -- set by delivery --------------------------------------------------

    def _resolve(self, session_id: str, budgeted: Optional[bool] = None) -> None:
        self._id = session_id
        if budgeted is not None or self.max_cost_usd is not None:
            self.budgeted = True if self.max_cost_usd is not None else budgeted
        self._state = STARTED
        if self._otel_span is not None:
            self._otel_span_settled()

    def _fail(self) -> None:
        self._state = FAILED  # settled without an id: the session could not be started
        if self._otel_span is not None:
            self._otel_span_settled()

    def _otel_span_settled(self) -> None:
        otel = self._otel
        if otel is not None:
            otel.session_resolved(self)
