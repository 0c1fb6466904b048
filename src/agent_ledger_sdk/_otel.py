"""Sessions, tools and LLM calls as OpenTelemetry GenAI spans, with their cost (``otel=True``).

Imported only when a client enables it: ``import agent_ledger_sdk`` never imports
``opentelemetry``. One :class:`OtelBridge` per client; the helpers call it only
when the session they record in has one (``handle._otel``), so a client without
it pays a single ``is None`` check.

A span's life:

1. **started** on the caller's thread when the session, tool or LLM call starts,
   as a child of the current OpenTelemetry context (an enclosing span of the
   user's joins it), and made current while the call's code runs, so that the
   user's own spans and their HTTP instrumentation nest under it;
2. **ended** there when the call ends: the end time and the error are kept;
3. **filled in** where its events are encoded (the sender thread in the background):
   the pipeline shows each event to :meth:`OtelBridge.encoded` as the ledger will
   receive it (capture switches and ``redact=`` applied), so nothing is parsed back
   from JSON; what it says (content, usage, model) is kept on the record and set on
   the span in one call when it closes;
4. **closed** (``span.end(end_time=...)``): a tool's span as soon as its
   ``tool_result`` is encoded, if its session's id (``gen_ai.conversation.id``) is
   known by then (a tool has no price to wait for); an LLM call's span, and a tool's
   whose session id was not known yet, when its closing event is delivered, with
   its cost from the ledger's answer (``priced``). A span whose event is not
   delivered within :data:`WAIT_SECONDS`, fails, or is still waiting at ``flush()``
   or ``close()`` is closed with what is known and ``agent_ledger.cost_status``
   ``"pending"``.

Nothing here raises into the user's code: every fault is logged (rate limited)
and counted as an internal error.
"""

from __future__ import annotations

import json
import math
import threading
import time
from typing import TYPE_CHECKING, Any, Optional

from ._serialization import encode
from ._session import PENDING
from ._spans import new_span_id, span_hex
from ._stats import internal_error
from ._version import __version__

if TYPE_CHECKING:
    from ._session import SessionHandle

INSTALL_HINT = "pip install 'agent-ledger-sdk[otel]'"
# How long an ended span waits for its event's delivery (and the ledger's price) before it is closed without.
WAIT_SECONDS = 30.0
SWEEP_INTERVAL = 1.0

SESSION, TOOL, LLM = 0, 1, 2
_CLOSING_EVENT = {TOOL: "tool_result", LLM: "llm_call"}
PENDING_COST = "pending"

# Our provider names that the GenAI conventions spell differently (gen_ai.provider.name).
PROVIDER_NAMES = {
    "azure": "azure.ai.openai",
    "azure_openai": "azure.ai.openai",
    "azure-openai": "azure.ai.openai",
    "bedrock": "aws.bedrock",
    "aws": "aws.bedrock",
    "gemini": "gcp.gemini",
    "google": "gcp.gen_ai",
    "vertex": "gcp.vertex_ai",
    "vertex_ai": "gcp.vertex_ai",
    "mistral": "mistral_ai",
    "xai": "x_ai",
}

# Request parameters of an llm_call event, as GenAI attributes.
_REQUEST_PARAMETERS = (
    ("temperature", "gen_ai.request.temperature"),
    ("topP", "gen_ai.request.top_p"),
    ("topK", "gen_ai.request.top_k"),
    ("seed", "gen_ai.request.seed"),
    ("maxTokens", "gen_ai.request.max_tokens"),
    ("maxCompletionTokens", "gen_ai.request.max_tokens"),
    ("maxOutputTokens", "gen_ai.request.max_tokens"),
    ("frequencyPenalty", "gen_ai.request.frequency_penalty"),
    ("presencePenalty", "gen_ai.request.presence_penalty"),
)
_USAGE = (
    ("tokensIn", "gen_ai.usage.input_tokens"),
    ("tokensOut", "gen_ai.usage.output_tokens"),
    ("cacheReadTokens", "gen_ai.usage.cache_read.input_tokens"),
    ("cacheWriteTokens", "gen_ai.usage.cache_creation.input_tokens"),
    ("reasoningTokens", "gen_ai.usage.reasoning.output_tokens"),
)


def provider_name(provider: str) -> str:
    return PROVIDER_NAMES.get(provider.lower(), provider)


# A string as JSON, as the event's encoder writes it (non-ASCII kept).
_quote = getattr(json.encoder, "c_encode_basestring", None) or json.encoder.py_encode_basestring


def _text(value: Any) -> str:
    """A content attribute: a string as it is, anything else as compact JSON, as the event's encoding writes it."""
    if isinstance(value, str):
        return value
    return encode(value)


class SpanRecord:
    """One of our spans, from its start until it is closed."""

    __slots__ = (
        "attributes",
        "closed",
        "closed_by_event",
        "closing",
        "conversation",
        "deadline",
        "end_ns",
        "handle",
        "kind",
        "model",
        "priced",
        "span",
        "span_id",
    )

    def __init__(self, kind: int, span: Any, span_id: int, handle: SessionHandle) -> None:
        self.kind = kind
        self.span = span
        self.span_id = span_id
        self.handle = handle
        self.end_ns: Optional[int] = None  # set when the call ended
        self.deadline = 0.0
        self.closed_by_event = False  # its closing event was delivered before the call was marked ended
        self.priced = False
        self.closed = False
        self.model = ""  # an LLM call's requested model
        self.conversation = False  # gen_ai.conversation.id is set
        self.attributes: Optional[dict[str, Any]] = None  # from its events, set when it closes (one call)
        self.closing: Optional[str] = None  # its closing event as encoded, until it is delivered


class OtelBridge:
    """The spans of one client, on the tracer of ``tracer_provider`` (None: the global provider, at use time)."""

    def __init__(self, tracer_provider: Any = None) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self._context = context
        self._set_span_in_context = trace.set_span_in_context
        self._internal = SpanKind.INTERNAL
        self._client = SpanKind.CLIENT
        self._status = Status
        self._error = StatusCode.ERROR
        # With no provider yet, the API hands out a proxy that follows the global provider once it is set.
        self._tracer = trace.get_tracer("agent_ledger_sdk", __version__, tracer_provider=tracer_provider)
        self._open: dict[int, SpanRecord] = {}  # tool and LLM spans not closed yet, by span id
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    def after_fork(self) -> None:
        """In a forked child: the parent's spans are the parent's to end."""
        self._lock = threading.Lock()
        self._open = {}

    # -- starting, and the context -------------------------------------------

    def _start(self, kind: int, name: str, span_kind: Any, attributes: dict[str, Any], handle: SessionHandle) -> Any:
        try:
            session_id = handle._id
            if session_id is not None:
                attributes["gen_ai.conversation.id"] = attributes["agent_ledger.session_id"] = session_id
            span = self._tracer.start_span(name, kind=span_kind, attributes=attributes)
            span_id = span.get_span_context().span_id or new_span_id()  # the ledger's spanId is the OTel span's
            record = SpanRecord(kind, span, span_id, handle)
            record.conversation = session_id is not None
            if kind != SESSION and span.is_recording():
                self._open[span_id] = record  # one dict store (atomic); closing claims it under the lock
            return record
        except Exception as exc:
            internal_error("otel span start", exc)
            return None

    def start_session(self, handle: SessionHandle) -> Optional[SpanRecord]:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": handle.agent_name,
        }
        if handle.user_id is not None:
            attributes["user.id"] = handle.user_id
        if handle.tags:
            attributes["agent_ledger.tags"] = handle.tags
        if handle.max_cost_usd is not None:
            attributes["agent_ledger.max_cost_usd"] = handle.max_cost_usd
        record: Optional[SpanRecord] = self._start(
            SESSION, f"invoke_agent {handle.agent_name}", self._internal, attributes, handle
        )
        handle._otel_span = record
        return record

    def start_tool(self, handle: SessionHandle, name: str) -> Optional[SpanRecord]:
        attributes = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name,
            "gen_ai.tool.type": "function",
            "gen_ai.agent.name": handle.agent_name,
        }
        record: Optional[SpanRecord] = self._start(TOOL, f"execute_tool {name}", self._internal, attributes, handle)
        return record

    def start_llm(self, handle: SessionHandle, provider: str, model: str) -> Optional[SpanRecord]:
        attributes = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": provider_name(provider),
            "gen_ai.request.model": model,
            "gen_ai.agent.name": handle.agent_name,
        }
        record: Optional[SpanRecord] = self._start(LLM, f"chat {model}", self._client, attributes, handle)
        if record is not None:
            record.model = model
        return record

    def attach(self, record: Optional[SpanRecord]) -> Any:
        """Make the span current in the OpenTelemetry context; returns the token for :meth:`detach`."""
        if record is None:
            return None
        try:
            return self._context.attach(self._set_span_in_context(record.span))
        except Exception as exc:
            internal_error("otel attach", exc)
            return None

    def detach(self, token: Any) -> None:
        if token is None:
            return
        try:
            self._context.detach(token)
        except Exception as exc:
            internal_error("otel detach", exc)

    # -- ending ---------------------------------------------------------------

    def ended(self, record: Optional[SpanRecord], exc: Optional[BaseException], delivered: bool = True) -> None:
        """The call ended (``exc``: how it failed): close the span now, or when its event is delivered.

        ``delivered=False``: no event will tell more (a call refused before it ran).
        """
        if record is None:
            return
        try:
            record.end_ns = time.time_ns()
            if exc is not None and _is_failure(exc):
                self._record_error(record, exc)
            if record.kind == SESSION:
                if record.handle._state != PENDING:  # its id is known (or will never be): close now
                    self._close(record, pending=False)
                else:
                    record.deadline = time.monotonic() + WAIT_SECONDS  # closed by the session's start, or swept
                    with self._lock:
                        self._open[record.span_id] = record
            elif record.closed_by_event or not delivered or not record.span.is_recording():
                self._close(record, pending=False)
            else:
                record.deadline = time.monotonic() + WAIT_SECONDS
            self._sweep_if_due()
        except Exception as error:
            internal_error("otel span end", error)

    def _record_error(self, record: SpanRecord, exc: BaseException) -> None:
        span = record.span
        name = type(exc).__qualname__
        span.set_attribute("error.type", name)
        span.set_status(self._status(self._error, f"{name}: {exc}"))
        span.record_exception(exc)
        details = getattr(exc, "details", None)
        if name == "BudgetGuardrailError" and details is not None:
            span.set_attribute("agent_ledger.budget_refused", True)
            for key, attribute in (
                ("daily_limit_usd", "agent_ledger.budget.limit_usd"),
                ("spent_today_usd", "agent_ledger.budget.spent_usd"),
                ("remaining_budget_usd", "agent_ledger.budget.remaining_usd"),
                ("attempted_cost_usd", "agent_ledger.budget.attempted_usd"),
            ):
                value = getattr(details, key, None)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    span.set_attribute(attribute, float(value))

    def session_resolved(self, handle: SessionHandle) -> None:
        """The session's start was answered (or failed): its id goes on its span, which may now close."""
        record = handle._otel_span
        if record is None:
            return
        try:
            session_id = handle._id
            if session_id is not None and not record.conversation:
                record.span.set_attributes(
                    {"gen_ai.conversation.id": session_id, "agent_ledger.session_id": session_id}
                )
                record.conversation = True
            if record.end_ns is not None:
                self._close(record, pending=False)
            if session_id is None:  # never started: its calls' events will not be delivered
                self.abandon(handle)
        except Exception as exc:
            internal_error("otel session", exc)

    # -- delivery ---------------------------------------------------------------

    def encoded(self, span_id: int, event: Optional[dict[str, Any]], text: str) -> None:
        """An event was encoded (``event``: what ``text`` says, None if it was cut to fit): what it says goes on
        its span, which a tool's result closes at once when its conversation id is known (a tool has no price).

        Called where events are encoded (the sender thread in the background), with the event as the ledger
        receives it: capture switches and ``redact=`` applied.
        """
        record = self._open.get(span_id)
        if record is None:
            return
        try:
            if event is None:
                event = json.loads(text)
                assert event is not None
            kind = event.get("type")
            attributes = _attributes_of(record, event)
            if attributes:
                self._add(record, attributes)
            if kind == "llm_call" and "embeddings" in event:
                record.span.update_name(f"embeddings {record.model or event.get('model')}")
            if kind != _CLOSING_EVENT.get(record.kind):
                return
            if record.kind == TOOL and record.end_ns is not None and record.handle._id is not None:
                self._close(record, pending=False)
            else:
                record.closing = text  # closed when it is delivered (an LLM call's price comes with that)
        except Exception as exc:
            internal_error("otel encode", exc)

    def delivered(self, handle: Any, encoded: list[str], answer: Any) -> None:
        """Events of ``handle`` were accepted; ``answer``: the ledger's reply (``priced``: the cost of each LLM call)."""
        if not self._open:
            return
        try:
            prices: Optional[dict[Any, Any]] = None
            if isinstance(answer, dict) and isinstance(answer.get("priced"), list):
                prices = {p.get("spanId"): p for p in answer["priced"] if isinstance(p, dict)}
            for text in encoded:
                record = self._closed_by(text)
                if record is None:
                    continue
                if record.kind == LLM and prices is not None:
                    price = prices.get(span_hex(record.span_id))
                    if price is not None:
                        self._price(record, price)
                self._closing_event(record)
            self._sweep_if_due()
        except Exception as exc:
            internal_error("otel delivery", exc)

    def failed(self, handle: Any, encoded: list[str], exc: BaseException) -> None:
        """Events of ``handle`` were not recorded: close their spans with what is known."""
        if not self._open:
            return
        try:
            refused = type(exc).__name__ == "BudgetGuardrailError"
            for text in encoded:
                record = self._closed_by(text)
                if record is None:
                    continue
                if refused and record.kind == LLM:
                    self._add(record, {"agent_ledger.over_budget": True})
                self._closing_event(record, pending=True)
        except Exception as error:
            internal_error("otel delivery", error)

    def abandon(self, handle: Any) -> None:
        """``handle``'s events will not be delivered: close its ended spans now."""
        records = [r for r in list(self._open.values()) if r.handle is handle and r.end_ns is not None]
        for record in records:
            self._close(record, pending=True)

    def close_waiting(self) -> None:
        """``flush()`` / ``close()``: every span that ended closes now, priced or not."""
        try:
            records = [r for r in list(self._open.values()) if r.end_ns is not None]
            for record in records:
                self._close(record, pending=True)
        except Exception as exc:
            internal_error("otel flush", exc)

    # -- inside ---------------------------------------------------------------

    def _closed_by(self, text: str) -> Optional[SpanRecord]:
        """The open span whose closing event ``text`` is (as it was encoded); None if it is no such event."""
        position = text.find('"spanId":"')
        if position < 0:
            return None
        try:
            span_id = int(text[position + 10 : position + 26], 16)
        except ValueError:
            span_id = -1
        record = self._open.get(span_id)
        if record is not None and record.closing == text:
            return record
        # The first "spanId" may be inside the content (a tool's input); the event's own says.
        if text.count('"spanId":"') < 2:
            return None
        own = json.loads(text).get("spanId")
        record = self._open.get(int(own, 16)) if isinstance(own, str) and len(own) == 16 else None
        return record if record is not None and record.closing == text else None

    @staticmethod
    def _add(record: SpanRecord, attributes: dict[str, Any]) -> None:
        if record.attributes is None:
            record.attributes = attributes
        else:
            record.attributes.update(attributes)

    def _price(self, record: SpanRecord, price: dict[str, Any]) -> None:
        attributes: dict[str, Any] = {}
        cost = price.get("costUsd")
        if isinstance(cost, (int, float)) and not isinstance(cost, bool):
            attributes["agent_ledger.cost_usd"] = float(cost)
        status = price.get("costStatus")
        if isinstance(status, str):
            attributes["agent_ledger.cost_status"] = status
        over = price.get("overBudget")
        if isinstance(over, bool):
            attributes["agent_ledger.over_budget"] = over
        self._add(record, attributes)
        record.priced = True

    def _closing_event(self, record: SpanRecord, pending: bool = False) -> None:
        if record.end_ns is None:  # delivered before the caller marked the end: that closes it
            record.closed_by_event = True
            return
        self._close(record, pending=pending)

    def _close(self, record: SpanRecord, pending: bool) -> None:
        with self._lock:
            if record.closed:
                return
            record.closed = True
            self._open.pop(record.span_id, None)
            if record.handle._otel_span is record:
                record.handle._otel_span = None
        span = record.span
        attributes = record.attributes
        if attributes is None:
            attributes = {}
        session_id = record.handle._id
        if session_id is not None and not record.conversation:
            attributes["gen_ai.conversation.id"] = attributes["agent_ledger.session_id"] = session_id
        if pending and record.kind == LLM and not record.priced:
            attributes["agent_ledger.cost_status"] = PENDING_COST
        record.closing = None
        if attributes:
            span.set_attributes(attributes)
        span.end(end_time=record.end_ns)

    def _sweep_if_due(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_INTERVAL
        late = [r for r in list(self._open.values()) if r.end_ns is not None and r.deadline <= now]
        for record in late:
            self._close(record, pending=True)


def _is_failure(exc: BaseException) -> bool:
    # A generator closed early and sys.exit(0) are normal ends, as for the session's status.
    if isinstance(exc, GeneratorExit):
        return False
    return not (isinstance(exc, SystemExit) and exc.code in (0, None))


_HIDDEN = ("[not captured]", "[redacted]")


def _attributes_of(record: SpanRecord, event: dict[str, Any]) -> dict[str, Any]:
    """The span attributes an event gives: content only where the event (as sent) has it."""
    attributes: dict[str, Any] = {}
    kind = event.get("type")
    step = event.get("stepIndex")
    if isinstance(step, int) and not isinstance(step, bool) and kind != "tool_result":
        attributes["agent_ledger.step_index"] = step
    if kind == "tool_call":
        tool_input = event.get("toolInput", "[not captured]")
        if tool_input not in _HIDDEN:
            attributes["gen_ai.tool.call.arguments"] = _text(tool_input)
        return attributes
    if kind == "tool_result":
        output = event.get("toolOutput", "[not captured]")
        if isinstance(output, dict) and set(output) == {"error", "errorType"}:
            return attributes  # the error is on the span already
        if output not in _HIDDEN:
            attributes["gen_ai.tool.call.result"] = _text(output)
        return attributes
    if kind != "llm_call":
        return attributes
    model = event.get("model")
    if isinstance(model, str):
        attributes["gen_ai.response.model"] = model
    if "embeddings" in event:
        attributes["gen_ai.operation.name"] = "embeddings"
    get = event.get
    if not get("usageMissing"):
        for key, attribute in _USAGE:
            value = get(key)
            if value is not None and isinstance(value, int) and not isinstance(value, bool):
                attributes[attribute] = value
    for key, attribute in _REQUEST_PARAMETERS:
        value = get(key)
        if (
            value is not None
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
        ):
            attributes[attribute] = value
    reasons = event.get("finishReason")
    if isinstance(reasons, str):
        attributes["gen_ai.response.finish_reasons"] = [reasons]
    elif isinstance(reasons, list) and reasons and all(isinstance(r, str) for r in reasons):
        attributes["gen_ai.response.finish_reasons"] = reasons
    response_id = event.get("responseId")
    if isinstance(response_id, str):
        attributes["gen_ai.response.id"] = response_id
    reservation = event.get("reservationId")
    if isinstance(reservation, str):
        attributes["agent_ledger.reservation_id"] = reservation
    prompt = event.get("prompt")
    if prompt is not None and prompt != "" and prompt not in _HIDDEN:
        attributes["gen_ai.input.messages"] = _text(prompt)
    response = event.get("response")
    tool_calls = event.get("toolCalls")
    has_response = response is not None and response != "" and response not in _HIDDEN
    has_calls = bool(tool_calls) and tool_calls not in _HIDDEN
    if has_response or has_calls:
        if not has_calls and type(response) is str:  # the usual case, written as encode() would write it
            attributes["gen_ai.output.messages"] = f'[{{"role":"assistant","content":{_quote(response)}}}]'
        else:
            message: dict[str, Any] = {"role": "assistant", "content": response if has_response else None}
            if has_calls:
                message["toolCalls"] = tool_calls
            attributes["gen_ai.output.messages"] = _text([message])
    return attributes
