"""A LangChain / LangGraph callback handler: each run recorded as a session, tool calls and LLM calls.

```python
from agent_ledger_sdk.integrations.langchain import AgentLedgerCallbackHandler

handler = AgentLedgerCallbackHandler(agent_name="support-bot")
graph.invoke({"messages": [...]}, config={"callbacks": [handler]})
```

What LangChain reports becomes what the ledger records:

- the top-most run the handler sees (a chain or graph ``invoke``, or a tool or
  model called on its own) is a **session** of ``agent_name=`` (else the run's
  name), unless a ledger session is current already: then the runs record
  into that one. The session ends ``error`` if the run raised;
- a **tool** run is a ``tool_call`` and a ``tool_result``: its input, its output
  or error, its latency;
- a **chat model** or **LLM** run is an ``llm_call``: provider and model, the
  messages, the response text and tool calls, the token usage (cache reads and
  writes, reasoning), the finish reason, the latency. For an agent with a
  budget the call's cost is reserved *before* the model is asked: a refusal
  raises :class:`~agent_ledger_sdk.BudgetGuardrailError` out of the
  ``invoke`` and the model is not called.

Events nest as LangChain's runs do (``parentSpanId``): a model called by a tool
is under that tool. A model whose package is instrumented for every client
(``instrument_openai()`` for ``ChatOpenAI``, ``instrument_anthropic()`` for
``ChatAnthropic``) is recorded by that integration, once, in the same
session: the handler records no second ``llm_call`` for it.

While a run executes its session is the current one, so that what records
inside it (a ``@ledger.tool``, an instrumented client) lands in it. LangChain
ends an async run in a copy of the context, where nothing can be undone, so in
async code the session is made current only in the contexts LangChain makes
for the code of the runs (on Python 3.11 and later: before, LangChain carries
no context into async steps), never in the caller's own.

The handler works with ``invoke``, ``stream``, ``batch`` and their async
twins. Its callbacks run inline, also in async code: the reservation of a
budgeted call is one round trip to the ledger on the calling thread, and events
go out as the client sends them (in the background unless ``batching=False``).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional, Union
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, ChatMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import LLMResult
from langchain_core.runnables.config import var_child_runnable_config

from .._context import current_session_var
from .._exceptions import BudgetGuardrailError
from .._instrument_session import NO_CONTEXT, SessionContext, _finish, _open_session, _start
from .._instrument_tool import _ToolCall
from .._instrument_wrapping import emit_quietly, emit_safely
from .._snapshot import snapshot_sized
from .._spans import current_span_var
from .._stats import internal_error
from ._calls import ProviderCall, Resolver, globally_instrumented

if TYPE_CHECKING:
    from .._client import AgentLedgerClient, AsyncAgentLedgerClient
    from .._session import SessionHandle

__all__ = ["AgentLedgerCallbackHandler"]

# LangChain's ``ls_provider`` -> the package its model classes call through. A model of an
# instrumented package is recorded by that package's integration; the handler leaves it be.
PROVIDER_PACKAGES = {
    "openai": "openai",
    "azure": "openai",  # AzureChatOpenAI
    "xai": "openai",  # ChatXAI and ChatDeepSeek are built on ChatOpenAI: their requests go through openai
    "deepseek": "openai",
    "anthropic": "anthropic",
}


class _Run:
    """One LangChain run the handler follows: its session, the span its children nest under, its call."""

    __slots__ = ("handle", "llm", "owned", "prev_session", "prev_span", "scoped", "span", "streamed", "tool")

    def __init__(self, handle: Optional[SessionHandle], span: Optional[int], owned: bool = False) -> None:
        self.handle = handle
        self.span = span
        self.owned = owned  # the handler started this session: the run's end ends it
        self.tool: Optional[_ToolCall] = None
        self.llm: Optional[ProviderCall] = None
        self.streamed = False  # output had begun: a failure may still be billed
        self.scoped = False
        self.prev_session: Optional[SessionHandle] = None
        self.prev_span: Optional[int] = None


class _Model:
    """What a model run's start says: provider, model, prompt, request attributes."""

    __slots__ = ("attributes", "delegated", "model", "prompt", "provider")

    def __init__(
        self,
        serialized: Optional[Mapping[str, Any]],
        prompt: Any,
        metadata: Optional[Mapping[str, Any]],
        kwargs: Mapping[str, Any],
    ) -> None:
        metadata = metadata or {}
        params = kwargs.get("invocation_params")
        params = params if isinstance(params, Mapping) else {}
        self.provider = _provider(serialized, metadata, params)
        self.model = (
            _text_value(metadata.get("ls_model_name"))
            or _text_value(params.get("model"))
            or _text_value(params.get("model_name"))
            or _text_value(params.get("model_id"))
            or "unknown"
        )
        self.prompt = prompt
        attributes: dict[str, Any] = {}
        max_tokens = next(
            (
                value
                for value in (
                    params.get("max_tokens"),
                    params.get("max_completion_tokens"),
                    params.get("max_output_tokens"),
                    metadata.get("ls_max_tokens"),
                )
                if _is_count(value)
            ),
            None,
        )
        if max_tokens is not None:
            attributes["max_tokens"] = max_tokens
        temperature = params.get("temperature", metadata.get("ls_temperature"))
        if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
            attributes["temperature"] = temperature
        self.attributes = attributes
        package = PROVIDER_PACKAGES.get(self.provider)
        self.delegated = package is not None and package in globally_instrumented


# -- reading what LangChain reports ------------------------------------------------


def _text_value(value: Any) -> Optional[str]:
    return value if isinstance(value, str) and value.strip() else None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _count(mapping: Any, name: str) -> Optional[int]:
    value = mapping.get(name) if isinstance(mapping, Mapping) else None
    return value if _is_count(value) else None


def _provider(serialized: Optional[Mapping[str, Any]], metadata: Mapping[str, Any], params: Mapping[str, Any]) -> str:
    """``ls_provider``, else the model class's package (``langchain_openai`` -> openai), else its ``_type``."""
    provider = _text_value(metadata.get("ls_provider"))
    if provider:
        return provider.lower()
    ident = serialized.get("id") if isinstance(serialized, Mapping) else None
    if isinstance(ident, Sequence) and not isinstance(ident, str):
        parts = [part for part in ident if isinstance(part, str)]
        for part in parts:
            if part.startswith("langchain_") and part not in ("langchain_core", "langchain_community"):
                return part[len("langchain_") :]
        if len(parts) >= 4 and parts[0] == "langchain" and parts[1] in ("chat_models", "llms"):
            return parts[2]  # ["langchain", "chat_models", "openai", "ChatOpenAI"]
    kind = _text_value(params.get("_type"))
    return kind.split("-")[0] if kind else "langchain"


def _run_name(serialized: Optional[Mapping[str, Any]], kwargs: Mapping[str, Any], default: str) -> str:
    """The run's name: ``run_name`` / the runnable's name, else the serialized class name."""
    name = _text_value(kwargs.get("name"))
    if name:
        return name
    if isinstance(serialized, Mapping):
        name = _text_value(serialized.get("name"))
        if name:
            return name
        ident = serialized.get("id")
        if isinstance(ident, Sequence) and ident and isinstance(ident[-1], str) and ident[-1].strip():
            return ident[-1]
    return default


def _role(message: BaseMessage) -> str:
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        return "assistant"
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, ToolMessage):
        return "tool"
    if isinstance(message, ChatMessage):
        return str(message.role)
    return str(message.type)


def _tool_calls(message: AIMessage) -> list[dict[str, Any]]:
    return [{"id": call.get("id"), "name": call.get("name"), "args": call.get("args")} for call in message.tool_calls]


def _message(message: Any) -> Any:
    """A message as a chat API takes it: ``{"role": "user", "content": "..."}``, with tool calls and ids."""
    if not isinstance(message, BaseMessage):
        return message
    converted: dict[str, Any] = {"role": _role(message), "content": message.content}
    if message.name:
        converted["name"] = message.name
    if isinstance(message, AIMessage) and message.tool_calls:
        converted["tool_calls"] = _tool_calls(message)
    if isinstance(message, ToolMessage):
        converted["tool_call_id"] = message.tool_call_id
    return converted


def _text(content: Any) -> Any:
    """A message's text: its string content, or the text blocks of a list of content blocks joined."""
    if isinstance(content, str) or not isinstance(content, list):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, Mapping) and block.get("type") == "text" and isinstance(block.get("text"), str):
            parts.append(block["text"])
    return "".join(parts)


def _record_usage(call: ProviderCall, message: Any, llm_output: Mapping[str, Any]) -> None:
    """LangChain's ``usage_metadata`` (input counts the cache, as the ledger does), else ``llm_output``'s."""
    usage = getattr(message, "usage_metadata", None)
    if isinstance(usage, Mapping) and (
        _count(usage, "input_tokens") is not None or _count(usage, "output_tokens") is not None
    ):
        inputs = usage.get("input_token_details")
        outputs = usage.get("output_token_details")
        call.record(
            tokens_in=_count(usage, "input_tokens"),
            tokens_out=_count(usage, "output_tokens"),
            cache_read_tokens=_count(inputs, "cache_read"),
            cache_write_tokens=_count(inputs, "cache_creation"),
            reasoning_tokens=_count(outputs, "reasoning"),
        )
        return
    usage = llm_output.get("token_usage") or llm_output.get("usage")
    if not isinstance(usage, Mapping):
        return
    if "prompt_tokens" in usage or "completion_tokens" in usage:  # OpenAI's counts: the cache is in prompt_tokens
        call.record(
            tokens_in=_count(usage, "prompt_tokens"),
            tokens_out=_count(usage, "completion_tokens"),
            cache_read_tokens=_count(usage.get("prompt_tokens_details"), "cached_tokens"),
            reasoning_tokens=_count(usage.get("completion_tokens_details"), "reasoning_tokens"),
        )
        return
    cache_read = _count(usage, "cache_read_input_tokens")
    cache_write = _count(usage, "cache_creation_input_tokens")
    tokens_in = _count(usage, "input_tokens")
    if tokens_in is not None and (cache_read or cache_write):  # Anthropic's: the cache counted apart
        tokens_in += (cache_read or 0) + (cache_write or 0)
    call.record(
        tokens_in=tokens_in,
        tokens_out=_count(usage, "output_tokens"),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
    )


def _record_result(call: ProviderCall, response: LLMResult) -> None:
    """The model's answer: texts, tool calls, usage, the model that answered, why it stopped."""
    generations = response.generations[0] if response.generations else []
    llm_output = response.llm_output if isinstance(response.llm_output, Mapping) else {}
    texts: list[Any] = []
    tool_calls: list[dict[str, Any]] = []
    first_message: Any = None
    response_metadata: Mapping[str, Any] = {}
    finish_reason: Any = None
    for generation in generations:
        message = getattr(generation, "message", None)
        if isinstance(message, BaseMessage):
            if first_message is None:
                first_message = message
                response_metadata = message.response_metadata or {}
            texts.append(_text(message.content))
            if isinstance(message, AIMessage):
                tool_calls.extend(_tool_calls(message))
        else:
            texts.append(generation.text)
        if finish_reason is None:
            info = generation.generation_info or {}
            finish_reason = info.get("finish_reason")
    _record_usage(call, first_message, llm_output)
    if texts:
        call.record(response=texts[0] if len(texts) == 1 else texts)
    model = (
        _text_value(response_metadata.get("model_name"))
        or _text_value(response_metadata.get("model"))
        or _text_value(llm_output.get("model_name"))
        or _text_value(llm_output.get("model"))
    )
    if model:
        call.record(model=model)
    if tool_calls:
        call.set(tool_calls=tool_calls)
    finish_reason = response_metadata.get("finish_reason") or response_metadata.get("stop_reason") or finish_reason
    if finish_reason is not None:
        call.set(finish_reason=finish_reason)


def _tool_output(output: Any) -> tuple[Any, int]:
    """A tool's output: a ``ToolMessage``'s content (what the model reads), else the value returned."""
    if isinstance(output, ToolMessage):
        output = output.content
    return snapshot_sized(output)


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


# -- the handler ---------------------------------------------------------------------


class AgentLedgerCallbackHandler(BaseCallbackHandler):
    """Record LangChain and LangGraph runs in the ledger: pass it in ``config={"callbacks": [handler]}``.

    Args:
        ledger: the :class:`~agent_ledger_sdk.AgentLedgerClient` to record with;
            the default client (``AGENT_LEDGER_API_KEY``...) when None.
        agent_name: the agent of the sessions the handler starts; the top-most
            run's name (``LangGraph``, ``RunnableSequence``...) when None.
        user_id, tags, metadata, max_cost_usd: the context of the sessions the
            handler starts, as ``ledger.session()`` takes it.

    One handler serves any number of runs, also concurrent ones and a
    ``batch``: each top-most run is a session of its own.
    """

    # Called in the run's own context and in order, by async runs too (not in a thread of LangChain's).
    run_inline = True
    # Only a budget refusal ever leaves the handler: LangChain lets it through, and it stops the run.
    raise_error = True

    def __init__(
        self,
        ledger: Union[AgentLedgerClient, AsyncAgentLedgerClient, None] = None,
        *,
        agent_name: Optional[str] = None,
        user_id: Optional[str] = None,
        tags: Optional[Sequence[str]] = None,
        metadata: Optional[dict[str, Any]] = None,
        max_cost_usd: Optional[float] = None,
    ) -> None:
        super().__init__()
        if agent_name is not None and (not isinstance(agent_name, str) or not agent_name.strip()):
            raise ValueError(
                f'agent_name must be a non-empty string, e.g. agent_name="support-bot", got {agent_name!r}'
            )
        self._resolve: Resolver
        if ledger is None:
            from .._default import _resolve

            self._resolve = _resolve
        else:
            self._resolve = ledger._resolve_instrumentation
        self.agent_name = agent_name
        no_context = user_id is None and tags is None and metadata is None and max_cost_usd is None
        self._context = NO_CONTEXT if no_context else SessionContext(user_id, tags, metadata, max_cost_usd)
        self._runs: dict[UUID, _Run] = {}
        self._started: weakref.WeakSet[SessionHandle] = weakref.WeakSet()  # the sessions this handler started

    def __repr__(self) -> str:
        return f"AgentLedgerCallbackHandler(agent_name={self.agent_name!r})"

    # -- the runs followed, and their sessions -------------------------------------

    def _follow(
        self, run_id: UUID, parent_run_id: Optional[UUID], name: str, open_session: bool = True
    ) -> Optional[_Run]:
        """Follow a run: in its parent's session, else the current one, else one it starts (``owned``)."""
        parent = self._runs.get(parent_run_id) if parent_run_id is not None else None
        if parent is not None:
            run = _Run(parent.handle, parent.span)
        elif not self._resolve().enabled:
            return None  # the kill switch: the handler records nothing, not even into a current session
        else:
            current = current_session_var.get()
            if current is not None and not current.ended and (current not in self._started or self._inside_our_runs()):
                # A session of the user's, or ours with this run inside it (an invoke without its parent's config).
                run = _Run(current, current_span_var.get())
            elif not open_session:
                return None
            else:  # no session, or ours but of an overlapping run (a batch starts all its runs, then runs them)
                token = current_session_var.set(None) if current is not None else None  # an ended one is no parent
                try:
                    handle = _open_session(self._resolve, self.agent_name or name, self._context)
                finally:
                    if token is not None:
                        current_session_var.reset(token)
                run = _Run(handle, current_span_var.get(), owned=handle is not None)
                if handle is not None:
                    self._started.add(handle)
                    _start(handle)
        self._runs[run_id] = run
        return run

    def _close(self, run: _Run, error: Optional[BaseException]) -> None:
        """The run is over: restore what was current; a session the run started ends (``error`` if it failed)."""
        try:
            self._unscope(run)
        except Exception as exc:
            internal_error("langchain run end", exc)
        if run.owned and run.handle is not None:
            _finish(run.handle, error)  # reports its own faults

    def _ended(self, run_id: UUID, error: Optional[BaseException]) -> None:
        run = self._runs.pop(run_id, None)
        if run is not None:
            self._close(run, error)

    # -- the current session while a run executes ----------------------------------

    def _inside_our_runs(self) -> bool:
        """Is this a context LangChain made for the code of one of our runs (not the caller's own)?"""
        config = var_child_runnable_config.get()
        callbacks = config.get("callbacks") if isinstance(config, Mapping) else None
        parent = getattr(callbacks, "parent_run_id", None)
        return parent is not None and parent in self._runs

    def _scope(self, run: _Run) -> None:
        """Make the run's session and span current for the code the run executes.

        A sync run starts and ends in one context, where its end restores what
        was current. LangChain ends an async run in a copy of the context,
        where nothing can be restored: in async code only the contexts that
        LangChain made for the code of our runs are changed, never the caller's.
        """
        if run.handle is None or (_in_event_loop() and not self._inside_our_runs()):
            return
        run.prev_session = current_session_var.get()
        run.prev_span = current_span_var.get()
        current_session_var.set(run.handle)
        current_span_var.set(run.span)
        run.scoped = True

    def _unscope(self, run: _Run) -> None:
        """Restore what was current before the run, where the run's values are still the current ones."""
        if not run.scoped:
            return
        run.scoped = False
        if current_session_var.get() is run.handle:
            previous = run.prev_session  # a session of an overlapping run (a batch) that ended since: none
            current_session_var.set(None if previous is not None and previous.ended else previous)
        if current_span_var.get() == run.span:
            current_span_var.set(run.prev_span)

    # -- chains and graphs ---------------------------------------------------------

    def on_chain_start(
        self,
        serialized: dict[str, Any],
        inputs: dict[str, Any],
        *,
        run_id: UUID,
        parent_run_id: Optional[UUID] = None,
        tags: Optional[list[str]] = None,
        metadata: Optional[dict[str, Any]] = None,
        **kwargs: Any,
    ) -> None:
        try:
            run = self._follow(run_id, parent_run_id, _run_name(serialized, kwargs, "langchain"))
            if run is not None:
                self._scope(run)
        except Exception as exc:  # telemetry never breaks the user's chain
            internal_error("langchain chain start", exc)

    def on_chain_end(
        self, outputs: dict[str, Any], *, run_id: UUID, parent_run_id: Optional[UUID] = None, **kwargs: Any
    ) -> None:
        try:
            self._ended(run_id, None)
        except Exception as exc:
            internal_error("langchain chain end", exc)

    def on_chain_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: Optional[UUID] = None, **kwargs: Any
    ) -> None:
        try:
            self._ended(run_id, error)
        except Exception as exc:
            internal_error("langchain chain error", exc)

    # -- tools ---------------------------------------------------------------------

    def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: Optional[UUID] = None,
        tags: Optional[list[str]] = None,
        metadata: Optional[dict[str, Any]] = None,
        inputs: Optional[dict[str, Any]] = None,
        **kwargs: Any,
    ) -> None:
        try:
            name = _run_name(serialized, kwargs, "tool")
            run = self._follow(run_id, parent_run_id, name)
            if run is None:
                return
            handle = run.handle
            if handle is not None and handle.sampled:
                call = _ToolCall(handle, name)
                call.parent_span = run.span
                run.span = call.span  # what the tool runs nests under it
                run.tool = call
                value, size = snapshot_sized(dict(inputs) if inputs is not None else input_str)
                emit_quietly(handle, call.call_event(value), size)
            self._scope(run)
        except Exception as exc:
            internal_error("langchain tool start", exc)

    def on_tool_end(self, output: Any, *, run_id: UUID, parent_run_id: Optional[UUID] = None, **kwargs: Any) -> None:
        run = self._runs.pop(run_id, None)
        if run is None:
            return
        refusal: Optional[BaseException] = None
        try:
            self._unscope(run)
            call = run.tool
            if call is not None:
                value, size = _tool_output(output)
                emit_safely(call.handle, call.result_event(value), size)
        except BudgetGuardrailError as exc:  # a ledger without reservations refused: the run stops here
            refusal = exc
            raise
        except Exception as exc:
            internal_error("langchain tool end", exc)
        finally:
            self._close(run, refusal)

    def on_tool_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: Optional[UUID] = None, **kwargs: Any
    ) -> None:
        run = self._runs.pop(run_id, None)
        if run is None:
            return
        try:
            self._unscope(run)
            if run.tool is not None:
                emit_quietly(run.tool.handle, run.tool.error_event(error), 0)
        except Exception as exc:
            internal_error("langchain tool error", exc)
        finally:
            self._close(run, error)

    # -- chat models and LLMs ------------------------------------------------------

    def _model_start(
        self,
        serialized: dict[str, Any],
        prompt: Any,
        run_id: UUID,
        parent_run_id: Optional[UUID],
        metadata: Optional[dict[str, Any]],
        kwargs: dict[str, Any],
    ) -> None:
        try:
            model = _Model(serialized, prompt, metadata, kwargs)
            # A model called on its own whose package records it: left to that integration, as with no handler.
            run = self._follow(
                run_id, parent_run_id, _run_name(serialized, kwargs, model.model), open_session=not model.delegated
            )
            if run is None:
                return
            if run.handle is not None and not model.delegated:
                # Begun in the run's session and span; reserves the call's cost first when a budget
                # applies, and a refusal raises here: the model is not called.
                session_token = current_session_var.set(run.handle)
                span_token = current_span_var.set(run.span)
                try:
                    run.llm = ProviderCall.begin(
                        self._resolve, model.provider, model.model, model.prompt, **model.attributes
                    )
                finally:
                    current_span_var.reset(span_token)
                    current_session_var.reset(session_token)
            self._scope(run)
        except BudgetGuardrailError as exc:
            self._ended(run_id, exc)
            raise
        except Exception as exc:
            internal_error("langchain model start", exc)

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: Optional[UUID] = None,
        tags: Optional[list[str]] = None,
        metadata: Optional[dict[str, Any]] = None,
        **kwargs: Any,
    ) -> None:
        try:
            prompt: Any = [_message(message) for message in messages[0]] if messages else []
        except Exception as exc:
            internal_error("langchain model start", exc)
            prompt = None
        self._model_start(serialized, prompt, run_id, parent_run_id, metadata, kwargs)

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: Optional[UUID] = None,
        tags: Optional[list[str]] = None,
        metadata: Optional[dict[str, Any]] = None,
        **kwargs: Any,
    ) -> None:
        try:
            prompt: Any = prompts[0] if len(prompts) == 1 else list(prompts)
        except Exception as exc:
            internal_error("langchain model start", exc)
            prompt = None
        self._model_start(serialized, prompt, run_id, parent_run_id, metadata, kwargs)

    def on_llm_new_token(
        self, token: Any, *, run_id: UUID, parent_run_id: Optional[UUID] = None, **kwargs: Any
    ) -> None:
        try:
            run = self._runs.get(run_id)
            if run is not None and run.llm is not None:
                run.streamed = True
                run.llm.first_token()
        except Exception as exc:
            internal_error("langchain model token", exc)

    def on_llm_end(
        self, response: LLMResult, *, run_id: UUID, parent_run_id: Optional[UUID] = None, **kwargs: Any
    ) -> None:
        run = self._runs.pop(run_id, None)
        if run is None:
            return
        refusal: Optional[BaseException] = None
        try:
            self._unscope(run)
            call = run.llm
            if call is not None:
                try:
                    _record_result(call, response)
                except Exception as exc:  # what could be read is recorded; the call is finished regardless
                    internal_error("langchain model result", exc)
                call.finish()  # after a success a ledger without reservations may refuse: the run stops
        except BudgetGuardrailError as exc:
            refusal = exc
            raise
        except Exception as exc:
            internal_error("langchain model end", exc)
        finally:
            self._close(run, refusal)

    def on_llm_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: Optional[UUID] = None, **kwargs: Any
    ) -> None:
        run = self._runs.pop(run_id, None)
        if run is None:
            return
        try:
            self._unscope(run)
            if run.llm is not None:
                run.llm.finish(error, billed=run.streamed)
        except Exception as exc:
            internal_error("langchain model error", exc)
        finally:
            self._close(run, error)
