"""The OpenAI Agents SDK: a tracing processor that records each agent run as a ledger session.

```python
import agent_ledger_sdk

agent_ledger_sdk.instrument_openai_agents()   # or ledger.instrument_openai_agents() for a client of your own
```

Registered once with ``agents.add_trace_processor`` (the SDK's own processors,
such as the export to the OpenAI dashboard, keep running), it maps what the
Agents SDK traces to the ledger's events:

- a run's trace -> a session, current while the run lasts: tools decorated with
  ``@ledger.tool`` and instrumented clients record into it. Its agent is the
  trace's ``workflow_name``, or when that is the SDK's default
  (``"Agent workflow"``) the name of the first agent that runs. A run started
  inside a ledger session records into that session instead. It ends
  ``"error"`` when the run raises (or an agent span carries an error), else
  ``"success"``.
- an agent span -> a custom ``{"type": "agent", "agentName": ...}`` event; what
  the agent does nests under it (``parentSpanId``).
- a function tool span -> ``tool_call`` and ``tool_result``, recorded when the
  tool returns (the SDK sets a span's input after the span starts); their
  ``stepIndex`` is taken when the tool starts, so the order is kept.
- a handoff span -> ``{"type": "handoff", "fromAgent": ..., "toAgent": ...}``.
- a response span (Responses API) or a generation span (Chat Completions) ->
  an ``llm_call`` with the model, the tokens, cached and reasoning tokens and
  the latency the SDK measured, provider ``"openai"``. Not when the ``openai``
  package is instrumented for every client (``instrument_openai()``): that
  integration then records each request itself, exactly, with the budget
  checked *before* the request goes out, which a tracing processor, told of a
  call only once it is under way, cannot do. LiteLLM's and any-llm's models
  do not call through ``openai``: their generation spans are always recorded,
  under the provider their model names (``anthropic/claude-...``).

Tracing must be on for the processor to be told anything
(``RunConfig(tracing_disabled=True)`` or ``OPENAI_AGENTS_DISABLE_TRACING=1``
turn it off); to keep traces away from OpenAI, replace the SDK's processors:
``agents.set_trace_processors([AgentLedgerProcessor()])``. With
``RunConfig(trace_include_sensitive_data=False)`` the SDK keeps tool inputs and
outputs, prompts and responses out of its spans, so they are not recorded either.

No callback of the processor ever raises into the agent: a fault is reported
as an internal error of this SDK (``agent_ledger_sdk._stats.internal_error``).
"""

from __future__ import annotations

import contextvars
import json
import sys
import threading
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

from agents.tracing import TracingProcessor

from .._context import current_session_var
from .._events import TOOL_CALL, TOOL_RESULT
from .._instrument_llm import LLMCall
from .._instrument_session import SessionContext, _finish, _open_session, _start
from .._instrument_tool import NOT_CAPTURED
from .._instrument_wrapping import emit_quietly, ms_since, perf_counter
from .._snapshot import snapshot_sized
from .._spans import current_span_var, new_span_id, wall_clock
from .._stats import internal_error
from . import _calls

if TYPE_CHECKING:
    from .._instrumentation import Instrumentation
    from .._session import SessionHandle

__all__ = ["AgentLedgerProcessor", "instrument", "uninstrument"]

Resolver = Callable[[], "Instrumentation"]
T = TypeVar("T")

# The workflow name of a run given none (RunConfig.workflow_name): the agent names the session instead.
DEFAULT_WORKFLOW_NAME = "Agent workflow"
PROVIDER = "openai"
_LLM_SPANS = ("response", "generation")


def _default_resolve() -> Instrumentation:
    from .._default import _resolve

    return _resolve()


def _resolver(ledger: Any) -> Resolver:
    if ledger is None:
        return _default_resolve
    resolve = getattr(ledger, "_resolve_instrumentation", None)  # an AgentLedgerClient / AsyncAgentLedgerClient
    if callable(resolve):
        return resolve  # type: ignore[no-any-return]
    if callable(ledger):
        return ledger  # type: ignore[no-any-return]
    raise TypeError(f"AgentLedgerProcessor() takes an AgentLedgerClient (or nothing), got {type(ledger).__name__}")


def _reset(var: contextvars.ContextVar[Optional[T]], token: contextvars.Token[Optional[T]], value: T) -> None:
    """Undo ``var.set(value)``: by its token where it was set, else only where ``var`` still holds ``value``."""
    try:
        var.reset(token)
    except ValueError:  # ended in another context than the one it started in
        if var.get() is value or var.get() == value:
            old = token.old_value
            var.set(None if old is contextvars.Token.MISSING else old)


def _epoch(stamp: Any) -> Optional[float]:
    """An SDK timestamp (ISO 8601) as seconds since the epoch."""
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _count(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _first(*values: Any) -> Optional[int]:
    for value in values:
        count = _count(value)
        if count is not None:
            return count
    return None


def _usage(usage: Any) -> dict[str, Any]:
    """``LLMCall.record`` arguments from a Responses ``usage`` or a Chat Completions one."""
    if usage is None:
        return {}
    inputs = _calls.field(usage, "input_tokens_details") or _calls.field(usage, "prompt_tokens_details")
    outputs = _calls.field(usage, "output_tokens_details") or _calls.field(usage, "completion_tokens_details")
    counts = {
        "tokens_in": _first(_calls.field(usage, "input_tokens"), _calls.field(usage, "prompt_tokens")),
        "tokens_out": _first(_calls.field(usage, "output_tokens"), _calls.field(usage, "completion_tokens")),
        "cache_read_tokens": _count(_calls.field(inputs, "cached_tokens")),
        "cache_write_tokens": _count(_calls.field(inputs, "cache_write_tokens")),
        "reasoning_tokens": _count(_calls.field(outputs, "reasoning_tokens")),
    }
    return {name: count for name, count in counts.items() if count is not None}


def _through_openai(data: Any) -> bool:
    """Did the ``openai`` package make this model call? Not for LiteLLM's and any-llm's models."""
    config = getattr(data, "model_config", None)
    return not (isinstance(config, Mapping) and config.get("model_impl"))


def _provider_and_model(data: Any) -> tuple[str, str]:
    """Who answers a model span: OpenAI, unless a LiteLLM or any-llm model (``model_impl``) names another."""
    model = str(getattr(data, "model", None) or "unknown")
    if _through_openai(data):
        return PROVIDER, model
    provider = data.model_config.get("provider")
    if isinstance(provider, str) and provider:  # any-llm
        return provider, model[len(provider) + 1 :] if model.startswith(provider + "/") else model
    named, _, name = model.partition("/")  # LiteLLM: "anthropic/claude-3-5-haiku-latest"
    return (named, name) if name else (PROVIDER, model)


def _error_text(error: Any) -> Optional[str]:
    """A span's ``SpanError`` (``{"message": ..., "data": {"error": ...}}``) as one line."""
    if not error:
        return None
    if not isinstance(error, Mapping):
        return str(error)
    message = str(error.get("message") or "error")
    data = error.get("data")
    detail = data.get("error") if isinstance(data, Mapping) else None
    if detail and str(detail) != message:
        return f"{message}: {detail}"
    return message


def _tool_input(raw: Any) -> Any:
    """A function span's input: the JSON arguments the model sent, parsed when they parse."""
    if raw is None:
        return NOT_CAPTURED  # RunConfig(trace_include_sensitive_data=False)
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


class _Run:
    """One trace: the session it records in, and whether this processor opened it (and so ends it)."""

    __slots__ = ("error", "handle", "named", "open_spans", "owned", "raised_before", "token")

    def __init__(self, handle: SessionHandle, owned: bool, named: bool) -> None:
        self.handle = handle
        self.owned = owned
        self.named = named  # False: started (and named) when its first agent starts
        self.token: Optional[contextvars.Token[Optional[SessionHandle]]] = None
        self.raised_before: Optional[BaseException] = None  # an exception already handled when the run began
        self.error: Optional[str] = None  # an agent span's error
        self.open_spans: set[str] = set()


class _Span:
    """A span under way: its step and ledger span, taken when it started, for the events built when it ends."""

    __slots__ = ("call", "kind", "parent", "perf_started", "run", "span", "started_at", "step", "token")

    def __init__(self, run: _Run, kind: str) -> None:
        self.run = run
        self.kind = kind
        self.step = 0
        self.span = 0
        self.parent: Optional[int] = None
        self.started_at = 0.0
        self.perf_started = perf_counter()
        self.token: Optional[contextvars.Token[Optional[int]]] = None
        self.call: Optional[LLMCall] = None


class AgentLedgerProcessor(TracingProcessor):
    """A ``agents.tracing.TracingProcessor`` that records agent runs in the ledger (see the module's doc).

    ``ledger``: the :class:`~agent_ledger_sdk.AgentLedgerClient` whose settings and
    implicit session apply; by default the module-level client (``agent_ledger_sdk.session`` ...).
    """

    def __init__(self, ledger: Any = None) -> None:
        self._resolve = _resolver(ledger)
        self._active = True  # False once uninstrumented: runs under way finish, new ones are not recorded
        self._detach_when_idle = False
        self._runs: dict[str, _Run] = {}
        self._spans: dict[str, _Span] = {}

    # -- traces -----------------------------------------------------------

    def on_trace_start(self, trace: Any) -> None:
        try:
            if self._active:
                self._trace_started(trace)
        except Exception as exc:
            internal_error("openai-agents trace start", exc)

    def on_trace_end(self, trace: Any) -> None:
        try:
            self._trace_ended(trace)
        except Exception as exc:
            internal_error("openai-agents trace end", exc)

    def _trace_started(self, trace: Any) -> None:
        current = current_session_var.get()
        if current is not None:  # a run inside a ledger session records into it
            self._runs[trace.trace_id] = _Run(current, owned=False, named=True)
            return
        if not self._resolve().enabled:  # the kill switch: also under a test capture, as ledger.session
            return
        name = str(getattr(trace, "name", None) or DEFAULT_WORKFLOW_NAME)
        metadata: dict[str, Any] = {"traceId": trace.trace_id}
        group = getattr(trace, "group_id", None)
        if group:
            metadata["groupId"] = group
        extra = getattr(trace, "metadata", None)
        if isinstance(extra, Mapping):
            metadata.update({str(key): value for key, value in extra.items()})
        handle = _open_session(self._resolve, name, SessionContext(metadata=metadata))
        if handle is None:  # recording is off
            return
        run = _Run(handle, owned=True, named=name != DEFAULT_WORKFLOW_NAME)
        run.raised_before = sys.exc_info()[1]
        if run.named:
            _start(handle)
        run.token = current_session_var.set(handle)
        self._runs[trace.trace_id] = run

    def _trace_ended(self, trace: Any) -> None:
        run = self._runs.pop(trace.trace_id, None)
        if run is not None:
            for span_id in list(run.open_spans):  # spans the SDK never ended: their state goes
                self._spans.pop(span_id, None)
            if run.owned:
                raised = sys.exc_info()[1]  # on_trace_end runs as the run's exception propagates
                if raised is run.raised_before:
                    raised = None
                if run.token is not None:
                    _reset(current_session_var, run.token, run.handle)
                self._end(run, raised)
        if self._detach_when_idle and not self._runs:
            with _lock:
                if self._detach_when_idle:
                    _detach(self)

    def _end(self, run: _Run, raised: Optional[BaseException]) -> None:
        handle = self._started(run)
        if raised is not None or run.error is None:
            _finish(handle, raised)
            return
        if handle.ended:
            return
        handle.ended = True
        try:
            handle._delivery.end(handle, "error", run.error)
        except Exception as exc:
            internal_error("session end", exc)

    def _started(self, run: _Run) -> SessionHandle:
        """The run's session, started now if it waited for its first agent's name."""
        if not run.named:
            run.named = True
            _start(run.handle)
        return run.handle

    # -- spans ------------------------------------------------------------

    def on_span_start(self, span: Any) -> None:
        try:
            self._span_started(span)
        except Exception as exc:
            internal_error("openai-agents span start", exc)

    def on_span_end(self, span: Any) -> None:
        try:
            self._span_ended(span)
        except Exception as exc:
            internal_error("openai-agents span end", exc)

    def _span_started(self, span: Any) -> None:
        run = self._runs.get(span.trace_id)
        if run is None:
            return
        data = span.span_data
        kind = data.type
        if kind not in ("agent", "function", "handoff", *_LLM_SPANS):
            return
        if kind in _LLM_SPANS and PROVIDER in _calls.globally_instrumented and _through_openai(data):
            return  # the openai integration records the request itself, budget first
        if kind == "agent" and not run.named:
            run.handle.agent_name = str(data.name)
        handle = self._started(run)
        if not handle.sampled:
            return
        state = _Span(run, kind)
        state.started_at = _epoch(span.started_at) or wall_clock()
        if kind in _LLM_SPANS:
            call = LLMCall(*_provider_and_model(data), None, {})
            call._begin(handle, current=False)  # the step, the span and its parent, taken now
            call._started_at = state.started_at
            state.call = call
        else:
            state.step = handle.next_step()
            state.span = new_span_id()
            state.parent = current_span_var.get()
            if kind == "agent":
                self._emit_custom(state, "agent", {"agent_name": data.name})
            if kind in ("agent", "function"):  # what runs inside nests under it
                state.token = current_span_var.set(state.span)
        run.open_spans.add(span.span_id)
        self._spans[span.span_id] = state

    def _span_ended(self, span: Any) -> None:
        state = self._spans.pop(span.span_id, None)
        if state is None:
            return
        run = state.run
        run.open_spans.discard(span.span_id)
        if state.token is not None:
            _reset(current_span_var, state.token, state.span)
        data = span.span_data
        error = _error_text(getattr(span, "error", None))
        latency = self._latency(span, state)
        if state.kind == "function":
            self._tool_events(state, data, error, latency)
        elif state.kind == "handoff":
            attributes: dict[str, Any] = {"from_agent": data.from_agent, "to_agent": data.to_agent}
            if error is not None:
                attributes["error"] = error
            self._emit_custom(state, "handoff", attributes)
        elif state.kind == "agent":
            if error is not None:
                run.error = f"agent {data.name!r}: {error}"
        elif state.call is not None:
            self._llm_event(state.call, run.handle, data, error, latency)

    @staticmethod
    def _latency(span: Any, state: _Span) -> int:
        started, ended = _epoch(span.started_at), _epoch(span.ended_at)
        if started is not None and ended is not None and ended >= started:
            return round((ended - started) * 1000)
        return ms_since(state.perf_started)

    def _emit_custom(self, state: _Span, kind: str, attributes: dict[str, Any]) -> None:
        attributes["step_index"] = state.step
        attributes["started_at"] = state.started_at
        attributes["span_id"] = state.span
        if state.parent is not None:
            attributes["parent_span_id"] = state.parent
        handle = state.run.handle
        event, size = handle._custom_event(kind, attributes)
        if state.parent is None:
            event.pop("parentSpanId", None)  # not the span current now: the one current when it started
        emit_quietly(handle, event, size)

    def _tool_events(self, state: _Span, data: Any, error: Optional[str], latency: int) -> None:
        handle = state.run.handle
        base: dict[str, Any] = {
            "stepIndex": state.step,
            "toolName": str(data.name),
            "startedAt": state.started_at,
            "spanId": state.span,
        }
        if state.parent is not None:
            base["parentSpanId"] = state.parent
        captured = data.input is not None
        tool_input, input_size = snapshot_sized(_tool_input(data.input))
        emit_quietly(handle, {"type": TOOL_CALL, **base, "toolInput": tool_input}, input_size)
        output: Any = data.output if captured else NOT_CAPTURED
        if error is not None:
            output = {"error": error} if data.output is None else {"error": error, "output": data.output}
        tool_output, output_size = snapshot_sized(output)
        emit_quietly(
            handle, {"type": TOOL_RESULT, **base, "toolOutput": tool_output, "latencyMs": latency}, output_size
        )

    def _llm_event(self, call: LLMCall, handle: SessionHandle, data: Any, error: Optional[str], latency: int) -> None:
        response = getattr(data, "response", None)  # a Responses API span: the whole Response object
        if response is not None:
            call.record(response=_calls.field(response, "output"), model=_calls.field(response, "model"))
            call.record(**_usage(_calls.field(response, "usage") or getattr(data, "usage", None)))
            response_id = _calls.field(response, "id")
            if response_id:
                call.set(response_id=response_id)
            details = _calls.field(response, "incomplete_details")
            reason = _calls.field(details, "reason")
            if reason:
                call.set(finish_reason=reason)
        else:  # a generation span, or a response span without its content
            output = getattr(data, "output", None)
            if output is not None:
                call.record(response=output)
            call.record(**_usage(getattr(data, "usage", None)))
        prompt = getattr(data, "input", None)
        call.prompt, call._prompt_size = snapshot_sized(prompt if prompt is not None else "")
        if error is not None and call.tokens_in is None and call.tokens_out is None:
            call.tokens_in = call.tokens_out = 0  # a call that failed without usage: nothing was generated
        event, size = call._end(None)
        event["latencyMs"] = latency
        if error is not None:
            event["error"] = error
        emit_quietly(handle, event, size)

    # -- the rest of the interface -------------------------------------------

    def shutdown(self, timeout: Optional[float] = None) -> None:
        """Nothing to release: the client sends what is queued when it closes or the process exits."""

    def force_flush(self) -> None:
        """Send what the ledger client has queued (``agents.flush_traces()`` calls this)."""
        try:
            self._resolve().flush(5.0)
        except Exception as exc:
            internal_error("openai-agents flush", exc)


# -- registration -----------------------------------------------------------

_lock = threading.Lock()
_installed: Optional[AgentLedgerProcessor] = None


def _registered() -> Optional[list[Any]]:
    """The Agents SDK's processors, or None where this version does not let them be read."""
    try:
        from agents.tracing.setup import get_trace_provider

        processors = getattr(getattr(get_trace_provider(), "_multi_processor", None), "_processors", None)
        return None if processors is None else list(processors)
    except Exception:
        return None


def _detach(processor: AgentLedgerProcessor) -> None:
    from agents import set_trace_processors

    processor._detach_when_idle = False
    processors = _registered()
    if processors is not None and any(p is processor for p in processors):
        set_trace_processors([p for p in processors if p is not processor])


def instrument(resolve: Optional[Resolver] = None) -> AgentLedgerProcessor:
    """Record every OpenAI Agents SDK run: register the processor with ``agents.add_trace_processor``, once.

    ``resolve`` returns the :class:`Instrumentation` of the client that records
    (the module-level client by default). Calling it again returns the same
    processor, now recording for the latest ``resolve``.
    """
    from agents import add_trace_processor

    global _installed
    with _lock:
        processor = _installed
        if processor is None:
            processor = AgentLedgerProcessor(resolve)
            _installed = processor
            add_trace_processor(processor)
            return processor
        processor._resolve = resolve or _default_resolve
        processor._active = True
        processor._detach_when_idle = False
        processors = _registered()
        if processors is not None and not any(p is processor for p in processors):
            add_trace_processor(processor)  # set_trace_processors() replaced it
        return processor


def uninstrument() -> None:
    """Stop recording runs: the processor leaves the Agents SDK's list (others stay), once runs under way end."""
    global _installed
    with _lock:
        processor, _installed = _installed, None
        if processor is None:
            return
        processor._active = False
        if processor._runs:
            processor._detach_when_idle = True  # so that their sessions end
        else:
            _detach(processor)
