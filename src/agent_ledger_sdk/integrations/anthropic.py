"""``instrument_anthropic()``: every call of the ``anthropic`` package's clients recorded as an ``llm_call``.

Covered, sync and async: ``messages.create`` (plain and ``stream=True``),
``messages.stream()``, and the beta ``messages`` of ``client.beta``.

Anthropic counts the prompt-cache reads and writes *apart* from
``input_tokens``; the ledger counts every input token in ``tokensIn``, so an
event's ``tokensIn`` is ``input_tokens + cache_read_input_tokens +
cache_creation_input_tokens``, with the two cache counts beside it.
"""

from __future__ import annotations

import importlib
from typing import Any, Optional

import wrapt

from ._calls import ProviderCall, Resolver, field
from ._stainless import AsyncStream, Endpoint, Plan, StainlessIntegration, StreamReader, SyncStream, given

PROVIDER = "anthropic"


class _Usage:
    """Usage as it arrives: whole in a message, in pieces (later ones cumulative) in a stream."""

    __slots__ = ("cache_read", "cache_write", "input", "output")

    def __init__(self) -> None:
        self.input: Optional[int] = None
        self.output: Optional[int] = None
        self.cache_read: Optional[int] = None
        self.cache_write: Optional[int] = None

    def update(self, usage: Any) -> None:
        if usage is None:
            return
        for slot, name in (
            ("input", "input_tokens"),
            ("output", "output_tokens"),
            ("cache_read", "cache_read_input_tokens"),
            ("cache_write", "cache_creation_input_tokens"),
        ):
            value = field(usage, name)
            if isinstance(value, int):
                setattr(self, slot, value)

    def record(self, call: ProviderCall) -> None:
        if self.input is None and self.output is None:
            return
        cache_read = self.cache_read or 0
        cache_write = self.cache_write or 0
        call.record(
            tokens_in=(self.input or 0) + cache_read + cache_write,
            tokens_out=self.output or 0,
            cache_read_tokens=self.cache_read,
            cache_write_tokens=self.cache_write,
        )


class Messages(Endpoint):
    def plan(self, options: Any, body: dict[str, Any], stream: bool) -> Optional[Plan]:
        attributes: dict[str, Any] = {}
        for name in ("max_tokens", "temperature", "top_p", "top_k"):
            if given(body.get(name)):
                attributes[name] = body[name]
        if stream:
            attributes["stream"] = True
        prompt: Any = body.get("messages")
        if given(body.get("system")):
            prompt = {"system": body["system"], "messages": prompt}
        return Plan(str(body.get("model") or "unknown"), prompt, attributes)

    def read(self, call: ProviderCall, result: Any) -> None:
        call.record(model=field(result, "model"))
        usage = _Usage()
        usage.update(field(result, "usage"))
        usage.record(call)
        texts: list[str] = []
        tool_calls: list[dict[str, Any]] = []
        for block in field(result, "content") or []:
            kind = field(block, "type")
            if kind == "text":
                texts.append(field(block, "text") or "")
            elif kind in ("tool_use", "server_tool_use"):
                tool_calls.append(
                    {"id": field(block, "id"), "name": field(block, "name"), "input": field(block, "input")}
                )
        call.record(response="".join(texts))
        if tool_calls:
            call.set(tool_calls=tool_calls)
        if field(result, "stop_reason") is not None:
            call.set(finish_reason=field(result, "stop_reason"))

    def reader(self, call: ProviderCall, plan: Plan) -> StreamReader:
        return _MessageStream(call)


class _MessageStream(StreamReader):
    """Server-sent events of a streamed message: its start, content deltas, the closing delta with usage."""

    reads_raw = True  # the events' text is read in end(), off the agent's thread (see _read_events)

    def __init__(self, call: ProviderCall) -> None:
        super().__init__(call)
        self.usage = _Usage()
        self.model: Optional[str] = None
        self.text: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.stop_reason: Optional[str] = None
        self.first = True  # no content delta yet

    def item(self, item: Any) -> bool:
        if self.raw is None:  # the client's decoder could not be wrapped: read the event objects
            self._read(item)
        elif self.first and field(item, "type") == "content_block_delta":
            self.first = False
            self.call.first_token()
        return True

    def _read(self, item: Any) -> None:
        kind = field(item, "type")
        if kind == "content_block_delta":
            delta = field(item, "delta")
            delta_kind = field(delta, "type")
            if self.first:
                self.first = False
                self.call.first_token()
            if delta_kind == "text_delta":
                self.text.append(field(delta, "text") or "")
            elif delta_kind == "input_json_delta":
                slot = self.tool_calls.get(field(item, "index"))
                if slot is not None:
                    slot["input"] += field(delta, "partial_json") or ""
        elif kind == "content_block_start":
            block = field(item, "content_block")
            if field(block, "type") in ("tool_use", "server_tool_use"):
                self.tool_calls[field(item, "index")] = {
                    "id": field(block, "id"),
                    "name": field(block, "name"),
                    "input": "",
                }
        elif kind == "message_start":
            message = field(item, "message")
            self.model = field(message, "model")
            self.usage.update(field(message, "usage"))
        elif kind == "message_delta":
            self.usage.update(field(item, "usage"))
            reason = field(field(item, "delta"), "stop_reason")
            if reason is not None:
                self.stop_reason = reason

    def end(self) -> None:
        if self.raw is not None:
            self.first = False  # its time was taken as it arrived
            for event in self.raw_events():
                self._read(event)
        call = self.call
        if self.model:
            call.record(model=self.model)
        self.usage.record(call)
        call.record(response="".join(self.text))
        if self.tool_calls:
            call.set(tool_calls=[self.tool_calls[index] for index in sorted(self.tool_calls)])
        if self.stop_reason is not None:
            call.set(finish_reason=self.stop_reason)


_MESSAGES = Messages()


def route(method: str, path: str) -> Optional[Endpoint]:
    if method != "post":
        return None
    return _MESSAGES if path.split("?", 1)[0].rstrip("/") in ("/v1/messages", "v1/messages") else None


def _instancecheck(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``isinstance(stream, anthropic.Stream)`` true for a recorded stream as for the stream it stands for."""
    if len(args) == 1 and isinstance(args[0], (SyncStream, AsyncStream)):
        return isinstance(args[0].__wrapped__, instance)
    return wrapped(*args, **kwargs)


class _Integration(StainlessIntegration):
    def _patch(self, base: Any) -> None:
        super()._patch(base)
        # anthropic 0.x gives Stream and AsyncStream a metaclass whose isinstance() knows only the exact class
        # (and the old MessageStream): the stream handed back, a proxy, would not be an anthropic.Stream.
        streaming = importlib.import_module("anthropic._streaming")
        for name in ("_SyncStreamMeta", "_AsyncStreamMeta"):
            meta: Any = getattr(streaming, name, None)
            original = getattr(meta, "__dict__", {}).get("__instancecheck__")
            if original is not None:
                meta.__instancecheck__ = wrapt.FunctionWrapper(original, _instancecheck)
                self._patches.append((meta, "__instancecheck__", original))


INTEGRATION = _Integration(
    "anthropic",
    PROVIDER,
    route,
    helper_streams=(
        ("anthropic.lib.streaming._messages", "MessageStream", False),
        ("anthropic.lib.streaming._messages", "AsyncMessageStream", True),
        ("anthropic.lib.streaming._beta_messages", "BetaMessageStream", False),
        ("anthropic.lib.streaming._beta_messages", "BetaAsyncMessageStream", True),
    ),
)


def instrument(resolve: Resolver, client: Any = None) -> None:
    """Record the calls of every ``anthropic`` client, or of ``client`` only."""
    INTEGRATION.instrument(resolve, client)


def uninstrument(client: Any = None) -> None:
    """Stop recording every ``anthropic`` client, or ``client`` only."""
    INTEGRATION.uninstrument(client)
