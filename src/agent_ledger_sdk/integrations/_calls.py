"""One provider call recorded as one ``llm_call`` event: what every integration records through.

An integration calls :meth:`ProviderCall.begin` (or ``abegin``) right before
the provider's request goes out, and :meth:`ProviderCall.finish` (or
``finish_quietly``) once, when the response (or the stream) is complete, failed or
abandoned::

    call = ProviderCall.begin(resolve, "openai", "gpt-4o-mini", messages, max_tokens=200)
    if call is None:                       # nothing records: just call through
        return send()
    try:
        response = send()
    except Exception as exc:
        call.finish(exc)                   # a failed call: no cost, the error recorded
        raise
    call.record(tokens_in=..., tokens_out=..., response=...)
    call.finish()

``begin`` takes the step, the span and the prompt's snapshot, and for an agent
with a budget reserves the call's maximum cost: a refusal raises
:class:`~agent_ledger_sdk.BudgetGuardrailError` *before* the request is sent.
The call belongs to the current session, or when there is none to the
client's implicit session (see :meth:`Instrumentation.implicit_session`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, Optional

from .._context import current_session_var
from .._instrument_llm import LLMCall, needs_reservation
from .._instrument_wrapping import emit_quietly, emit_safely, ms_since, perf_counter
from .._pipeline import COMPLETE_KEY
from .._snapshot import Lazy, snapshot_sized
from .._spans import current_span_var, new_span_id, wall_clock
from .._stats import internal_error

if TYPE_CHECKING:
    from .._instrumentation import Instrumentation
    from .._otel import SpanRecord
    from .._session import SessionHandle

Resolver = Callable[[], "Instrumentation"]

# What the queue counts for an event completed later, besides its prompt: a response's text,
# tool calls and usage, typically.
DEFERRED_EVENT_BYTES = 2048

# Packages instrumented for every client (instrument_openai() with no client): a framework
# integration leaves their LLM calls to them rather than record each call twice.
globally_instrumented: set[str] = set()


# Whether each type met by field() is a Mapping: isinstance against the ABC costs about 0.5 µs, a dozen
# times a provider call; the types are few (dict, the SDKs' models).
_MAPPING_TYPES: dict[type, bool] = {dict: True}


def field(value: Any, name: str) -> Any:
    """``value[name]`` or ``value.name``, None when absent: what integrations read holds its data as dicts
    (raw bodies, some span data) or as objects (the SDKs' models), by source and version."""
    if value is None:
        return None
    kind = type(value)
    mapping = _MAPPING_TYPES.get(kind)
    if mapping is None:
        mapping = isinstance(value, Mapping)
        if len(_MAPPING_TYPES) < 1024:  # a program that makes classes on the fly does not grow it forever
            _MAPPING_TYPES[kind] = mapping
    if mapping:
        return value.get(name)
    return getattr(value, name, None)


def session_for(resolve: Resolver) -> Optional[SessionHandle]:
    """The session a provider call records in: the current one, else the resolver's implicit one."""
    handle = current_session_var.get()
    if handle is not None and not handle.ended:
        return handle
    try:
        return resolve().implicit_session()
    except Exception as exc:  # telemetry never breaks the user's call
        internal_error("implicit session", exc)
        return None


class ProviderCall:
    """An ``llm_call`` begun before a provider request and finished once, however the request ends.

    On the caller's thread it takes only what must be taken there: the step, the span, the
    clocks, the prompt's copy (unless the integration's prompt is already a private copy, as a
    Stainless client's request body is) and, for an agent with a budget, the reservation. The
    :class:`LLMCall` that builds the event is made where it is first needed: where the event
    is encoded, for a call finished with ``complete=``.
    """

    __slots__ = (
        "_attributes",
        "_finished",
        "_first_token_ms",
        "_llm",
        "_model",
        "_otel_span",
        "_parent_span",
        "_perf_started",
        "_prompt",
        "_prompt_size",
        "_provider",
        "_span",
        "_started_at",
        "_step",
        "handle",
        "raw",
        "retries",
    )

    def __init__(
        self,
        handle: SessionHandle,
        provider: str,
        model: str,
        prompt: Any,
        attributes: dict[str, Any],
        llm: Optional[LLMCall] = None,
        copy_prompt: bool = True,
        otel_span: Optional[SpanRecord] = None,
    ) -> None:
        self.handle = handle
        self.retries = 0  # the provider client's own retries, counted by the integration
        self.raw: Any = None  # the provider's HTTP response, when the integration keeps it
        self._provider = provider
        self._model = model
        self._attributes = attributes
        self._llm = llm
        self._first_token_ms: Optional[int] = None
        self._finished = False
        self._step = handle.next_step()
        if copy_prompt:
            self._prompt, self._prompt_size = snapshot_sized(prompt)  # as sent
        else:
            self._prompt, self._prompt_size = prompt, 0  # already the integration's own copy
        self._otel_span = otel_span
        self._span = new_span_id() if otel_span is None else otel_span.span_id
        self._parent_span = current_span_var.get()
        self._started_at = wall_clock()
        self._perf_started = perf_counter()

    @classmethod
    def begin(
        cls, resolve: Resolver, provider: str, model: str, prompt: Any, *, copy_prompt: bool = True, **attributes: Any
    ) -> Optional[ProviderCall]:
        """Begin a call, or return None when nothing records. May raise BudgetGuardrailError (nothing was sent).

        ``copy_prompt=False``: ``prompt`` is a private copy nothing will change (a request body).
        """
        handle = session_for(resolve)
        if handle is None:
            return None
        attributes = {k: v for k, v in attributes.items() if v is not None}
        otel = handle._otel
        otel_span = None if otel is None else otel.start_llm(handle, provider, model)
        llm = None
        try:
            if needs_reservation(handle):
                llm = LLMCall(provider, model, prompt, attributes)
                llm._reserve(handle)
        except BaseException as exc:
            if otel is not None:
                otel.ended(otel_span, exc, delivered=False)  # refused before the request went out
            raise
        return cls(handle, provider, model, prompt, attributes, llm, copy_prompt, otel_span)

    @classmethod
    async def abegin(
        cls, resolve: Resolver, provider: str, model: str, prompt: Any, *, copy_prompt: bool = True, **attributes: Any
    ) -> Optional[ProviderCall]:
        """:meth:`begin` for async code: the reservation round trip never blocks the event loop."""
        handle = session_for(resolve)
        if handle is None:
            return None
        attributes = {k: v for k, v in attributes.items() if v is not None}
        otel = handle._otel
        otel_span = None if otel is None else otel.start_llm(handle, provider, model)
        llm = None
        try:
            if needs_reservation(handle):
                llm = LLMCall(provider, model, prompt, attributes)
                await llm._areserve(handle)
        except BaseException as exc:
            if otel is not None:
                otel.ended(otel_span, exc, delivered=False)  # refused before the request went out
            raise
        return cls(handle, provider, model, prompt, attributes, llm, copy_prompt, otel_span)

    @property
    def call(self) -> LLMCall:
        """The :class:`LLMCall` that records this call, made on first use."""
        llm = self._llm
        if llm is None:
            llm = self._llm = LLMCall(self._provider, self._model, None, self._attributes)
        if llm.step_index is None:  # take over what begin() took on the caller's thread
            llm.prompt = self._prompt
            llm.step_index = self._step
            llm._prompt_size = self._prompt_size
            llm._span = self._span
            llm._parent_span = self._parent_span
            llm._started_at = self._started_at
            llm._perf_started = self._perf_started
            llm._handle = self.handle
        return llm

    @property
    def finished(self) -> bool:
        return self._finished

    def record(self, **outcome: Any) -> None:
        """The call's outcome so far: ``response=``, ``model=``, the token counts (see :meth:`LLMCall.record`)."""
        self.call.record(**outcome)

    def set(self, **attributes: Any) -> None:
        """Event attributes: ``finish_reason=`` becomes ``finishReason``."""
        self.call.set(**attributes)

    def outcome(
        self,
        model: Any,
        response: Any,
        tokens_in: Optional[int],
        tokens_out: Optional[int],
        cache_read_tokens: Optional[int] = None,
        cache_write_tokens: Optional[int] = None,
        reasoning_tokens: Optional[int] = None,
        tool_calls: Optional[list[Any]] = None,
        finish_reason: Any = None,
    ) -> None:
        """Everything a provider's answer says, recorded at once (the hot path of every integration)."""
        call = self.call
        if model:
            call.model = model
        call.response = response
        if tokens_in is not None or tokens_out is not None:
            call.tokens_in = tokens_in or 0
            call.tokens_out = tokens_out or 0
        if cache_read_tokens is not None:
            call.cache_read_tokens = cache_read_tokens
        if cache_write_tokens is not None:
            call.cache_write_tokens = cache_write_tokens
        if reasoning_tokens is not None:
            call.reasoning_tokens = reasoning_tokens
        if tool_calls or finish_reason is not None:
            attributes = call._attributes
            if attributes is None:
                attributes = call._attributes = {}
            if tool_calls:
                attributes["toolCalls"] = tool_calls
            if finish_reason is not None:
                attributes["finishReason"] = finish_reason

    def first_token(self) -> None:
        """Note the time to the first token (streams); only the first call counts."""
        if self._first_token_ms is None:
            self._first_token_ms = ms_since(self._perf_started)

    def _event(
        self,
        error: Optional[BaseException],
        billed: bool,
        complete: Optional[Callable[[], Any]] = None,
        held: int = 0,
    ) -> Optional[tuple[dict[str, Any], int]]:
        if self._finished:
            return None
        self._finished = True
        latency_ms = ms_since(self._perf_started)  # now, on the caller's thread: when the call ended
        otel = self.handle._otel
        if otel is not None and self._otel_span is not None:
            otel.ended(self._otel_span, error)
        if complete is None:
            return self._build(error, billed, latency_ms)
        # What the answer says is read where the event is encoded (the sender thread, off the agent's
        # path), from what the caller handed over: the provider's bytes or the stream's own accumulation.
        event: dict[str, Any] = {}
        event[COMPLETE_KEY] = Lazy(self._complete, event, complete, error, billed, latency_ms)
        return event, self._prompt_size + self._size_hint() + held + DEFERRED_EVENT_BYTES

    def _size_hint(self) -> int:
        """The bytes of a prompt not copied (so not sized) on the caller's thread: its request's body."""
        if self._prompt_size:
            return 0
        try:
            return len(self.raw.request.content)
        except Exception:  # no request kept, or a streamed body
            return 0

    def _complete(
        self,
        event: dict[str, Any],
        complete: Callable[[], Any],
        error: Optional[BaseException],
        billed: bool,
        latency_ms: int,
    ) -> None:
        try:
            complete()
        except Exception as exc:  # a response we could not read: the call is still recorded, usage missing
            internal_error("llm call outcome", exc)
        try:
            event.update(self._build(error, billed, latency_ms)[0])
        except Exception as exc:  # said, not swallowed: the empty event is then refused and counted
            internal_error("llm call event", exc)

    def _build(self, error: Optional[BaseException], billed: bool, latency_ms: int) -> tuple[dict[str, Any], int]:
        call = self.call
        if error is not None and not billed and call.tokens_in is None and call.tokens_out is None:
            # The provider refused or never answered: nothing was generated, nothing is owed.
            call.tokens_in = call.tokens_out = 0
        attributes = call._attributes
        if attributes is None:
            attributes = call._attributes = {}
        attributes["retries"] = self.retries
        if self._first_token_ms is not None:
            attributes["timeToFirstTokenMs"] = self._first_token_ms
        return call._end(error, latency_ms)

    def finish(self, error: Optional[BaseException] = None, *, billed: bool = False) -> None:
        """Record the call once. ``error``: it failed; ``billed``: output had begun, so usage may be owed.

        After a success a budget refusal (a ledger without reservations, inline
        delivery) raises :class:`BudgetGuardrailError`; after a failure nothing
        replaces the user's exception.
        """
        built = self._event(error, billed)
        if built is None:
            return
        if error is None:
            emit_safely(self.handle, *built)
        else:
            emit_quietly(self.handle, *built)

    def finish_quietly(
        self,
        error: Optional[BaseException] = None,
        *,
        billed: bool = False,
        complete: Optional[Callable[[], Any]] = None,
        held: int = 0,
    ) -> None:
        """:meth:`finish` where nothing may be raised: a stream closed or collected, a response.

        ``complete``, when given, records the answer (with :meth:`outcome`) where the event
        is encoded, off the caller's thread; it must read only what cannot change any more.
        ``held``: the bytes ``complete`` keeps until then (a stream's chunks), counted in the queue's bound.
        """
        built = self._event(error, billed, complete, held)
        if built is not None:
            emit_quietly(self.handle, *built)
