"""``instrument_openai()``: every call of the ``openai`` package's clients recorded as an ``llm_call``.

Covered, sync and async: ``chat.completions.create`` (plain and ``stream=True``),
``chat.completions.parse``, the ``.stream()`` helpers, ``responses.create``
(plain and streamed), ``responses.parse`` and ``embeddings.create``; for
Azure OpenAI as for OpenAI.

A streamed chat completion sends its usage only when asked
(``stream_options={"include_usage": True}``): the integration asks for it
when you did not, and hides the extra usage-only chunk, so your loop sees
exactly the chunks it would have seen uninstrumented.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Optional

from .._snapshot import snapshot
from ._calls import ProviderCall, Resolver, field
from ._stainless import Endpoint, Plan, StainlessIntegration, StreamReader, given, with_body

PROVIDER = "openai"


def _record(
    call: ProviderCall,
    model: Any,
    usage: Any,
    input_name: str,
    output_name: str,
    texts: list[Any],
    tool_calls: Optional[list[dict[str, Any]]] = None,
    finish_reasons: Optional[list[Any]] = None,
) -> None:
    """Record an answer. OpenAI counts cached input in the input tokens and reasoning in the output, as the
    ledger does; with several choices the response and finish reason are lists."""
    tokens_in = tokens_out = cache_read = reasoning = None
    if usage is not None:
        tokens_in = field(usage, input_name) or 0
        tokens_out = field(usage, output_name) or 0
        cache_read = field(field(usage, f"{input_name}_details"), "cached_tokens")
        reasoning = field(field(usage, f"{output_name}_details"), "reasoning_tokens")
    reasons = [reason for reason in finish_reasons or () if reason is not None]
    call.outcome(
        model,
        (texts[0] if len(texts) == 1 else texts) if texts else "",
        tokens_in,
        tokens_out,
        cache_read_tokens=cache_read,
        reasoning_tokens=reasoning,
        tool_calls=tool_calls,
        finish_reason=(reasons[0] if len(reasons) == 1 else reasons) if reasons else None,
    )


def _request_attributes(body: dict[str, Any], *names: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for name in names:
        value = body.get(name)
        if given(value):
            attributes[name] = value
    return attributes


def _forget_field(item: Any, name: str) -> None:
    """Unmark a field the API sent only because we asked: ``to_dict()`` / ``to_json()`` show it unsent again."""
    fields_set = getattr(item, "__pydantic_fields_set__", None)  # pydantic 2
    if fields_set is None:
        fields_set = getattr(item, "__fields_set__", None)  # pydantic 1
    if isinstance(fields_set, set):
        fields_set.discard(name)


# -- chat completions ------------------------------------------------------------


class ChatCompletions(Endpoint):
    def plan(self, options: Any, body: dict[str, Any], stream: bool) -> Optional[Plan]:
        attributes = _request_attributes(body, "temperature", "top_p", "seed")
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if given(max_tokens):
            attributes["max_tokens"] = max_tokens
        plan = Plan(str(body.get("model") or "unknown"), body.get("messages"), attributes)
        if stream:
            attributes["stream"] = True
            stream_options = body.get("stream_options")
            stream_options = stream_options if isinstance(stream_options, dict) else {}
            if not stream_options.get("include_usage"):
                # Ask for the usage chunk, and hide it: the user's loop sees what it would have seen.
                asked = {**body, "stream_options": {**stream_options, "include_usage": True}}
                plan.options = with_body(options, asked)
        return plan

    def read(self, call: ProviderCall, result: Any) -> None:
        texts: list[Any] = []
        tool_calls: list[dict[str, Any]] = []
        finish_reasons: list[Any] = []
        for choice in field(result, "choices") or ():
            message = field(choice, "message")
            texts.append(field(message, "content") or field(message, "refusal") or "")
            for tool_call in field(message, "tool_calls") or ():
                function = field(tool_call, "function")
                tool_calls.append(
                    {
                        "id": field(tool_call, "id"),
                        "name": field(function, "name"),
                        "arguments": field(function, "arguments"),
                    }
                )
            finish_reasons.append(field(choice, "finish_reason"))
        _record(
            call,
            field(result, "model"),
            field(result, "usage"),
            "prompt_tokens",
            "completion_tokens",
            texts,
            tool_calls,
            finish_reasons,
        )

    def reader(self, call: ProviderCall, plan: Plan) -> StreamReader:
        return _ChatStream(call, hide_usage=plan.options is not None)


class _ChatStream(StreamReader):
    """Chunks of a streamed chat completion: text and tool-call deltas, the finish, the usage chunk."""

    reads_raw = True  # the chunks' text is read in end(), off the agent's thread (see _read_events)

    def __init__(self, call: ProviderCall, hide_usage: bool) -> None:
        super().__init__(call)
        self.hide_usage = hide_usage
        self.hides = '"choices":[]' if hide_usage else None
        self.texts: dict[int, list[str]] = {}
        self.tool_calls: dict[tuple[int, int], dict[str, Any]] = {}
        self.finish_reasons: dict[int, Any] = {}
        self.model: Optional[str] = None
        self.usage: Any = None
        self.first = True  # no content yet: the next one is the first token

    def item(self, item: Any) -> bool:
        # Every chunk of every stream passes here. With the chunks' text kept (raw), only the first token's
        # time is taken here, and the usage chunk asked for hidden if the decoder let it through.
        if self.raw is not None:
            if self.hide_usage:
                try:
                    usage, choices, fields_set = item.usage, item.choices, item.__pydantic_fields_set__
                except AttributeError:  # another version's shape (pydantic 1, a dict)
                    usage, choices, fields_set = field(item, "usage"), field(item, "choices"), None
                if usage is not None and not choices:
                    return False  # its text is kept: end() reads its usage
                if fields_set is not None:
                    fields_set.discard("usage")  # see _forget_field
                else:
                    _forget_field(item, "usage")
            if self.first:
                self._first_of_raw(item)
            return True
        # Without it, the SDK's chunk objects are read attribute by attribute, the usual chunk (one choice,
        # some text) in a few steps; anything else (a dict, another version's shape) takes the general path.
        try:
            choices = item.choices
            usage = item.usage
            if usage is not None or not choices or len(choices) != 1:
                return self._any_item(item)
            choice = choices[0]
            delta = choice.delta
            content = delta.content
            if content and not delta.tool_calls and choice.index == 0:
                if self.first:
                    self._first(item)
                self.texts[0].append(content)
                if choice.finish_reason is not None:
                    self.finish_reasons[0] = choice.finish_reason
                if self.hide_usage:
                    item.__pydantic_fields_set__.discard("usage")  # see _forget_field
                return True
        except AttributeError:
            pass
        return self._any_item(item)

    def hidden_event(self, event: Any) -> bool:
        # The usage-only chunk we asked for (choices empty, usage set; the API writes its JSON compact), read
        # here from its text: the client never parses it. Any other event is parsed, and item() hides a usage
        # chunk that this let through.
        try:
            chunk = json.loads(event.data)
        except ValueError:
            return False
        if type(chunk) is not dict or chunk.get("choices") != [] or type(chunk.get("usage")) is not dict:
            return False
        self.usage = chunk["usage"]
        if self.model is None:
            self.model = chunk.get("model")
        return True

    def _first_of_raw(self, item: Any) -> None:
        for choice in field(item, "choices") or ():
            delta = field(choice, "delta")
            if field(delta, "content") or field(delta, "refusal") or field(delta, "tool_calls"):
                self.first = False
                self.call.first_token()
                return

    def _first(self, item: Any) -> None:
        self.first = False
        self.call.first_token()
        if self.model is None:
            self.model = field(item, "model")
        self.texts.setdefault(0, [])

    def _any_item(self, item: Any) -> bool:
        choices = field(item, "choices")
        usage = field(item, "usage")
        if self.model is None:
            self.model = field(item, "model")
        if usage is not None:
            self.usage = snapshot(usage)  # read later, off the agent's thread: a copy
            if not choices and self.hide_usage:
                return False  # the chunk we asked for: not the user's
        elif self.hide_usage:
            _forget_field(item, "usage")  # the API adds "usage": null to every chunk once asked
        if not choices:
            return True
        for choice in choices:
            index = field(choice, "index") or 0
            delta = field(choice, "delta")
            content = field(delta, "content") or field(delta, "refusal")
            if content:
                if self.first:
                    self._first(item)
                self.texts.setdefault(index, []).append(content)
            tool_calls = field(delta, "tool_calls")
            if tool_calls:
                if self.first:
                    self._first(item)
                for tool_call in tool_calls:
                    slot = self.tool_calls.setdefault(
                        (index, field(tool_call, "index") or 0), {"id": None, "name": None, "arguments": ""}
                    )
                    function = field(tool_call, "function")
                    slot["id"] = field(tool_call, "id") or slot["id"]
                    slot["name"] = field(function, "name") or slot["name"]
                    slot["arguments"] += field(function, "arguments") or ""
            reason = field(choice, "finish_reason")
            if reason is not None:
                self.finish_reasons[index] = reason
        return True

    def end(self) -> None:
        if self.raw is not None:
            self.first = False  # its time was taken as it arrived
            for chunk in self.raw_events():
                self._any_item(chunk)
        indexes = sorted(set(self.texts) | set(self.finish_reasons)) or [0]
        texts = ["".join(self.texts.get(index, ())) for index in indexes]
        tool_calls = [self.tool_calls[key] for key in sorted(self.tool_calls)]
        reasons = [self.finish_reasons.get(index) for index in indexes]
        _record(self.call, self.model, self.usage, "prompt_tokens", "completion_tokens", texts, tool_calls, reasons)


# -- responses -----------------------------------------------------------------


class Responses(Endpoint):
    def plan(self, options: Any, body: dict[str, Any], stream: bool) -> Optional[Plan]:
        attributes = _request_attributes(body, "temperature", "top_p")
        max_tokens = body.get("max_output_tokens")
        if given(max_tokens):
            attributes["max_tokens"] = max_tokens
        if stream:
            attributes["stream"] = True
        instructions = body.get("instructions")
        prompt: Any = body.get("input")
        if given(instructions):
            prompt = {"instructions": instructions, "input": prompt}
        return Plan(str(body.get("model") or "unknown"), prompt, attributes)

    def read(self, call: ProviderCall, result: Any) -> None:
        texts: list[str] = []
        tool_calls: list[dict[str, Any]] = []
        for item in field(result, "output") or ():
            kind = field(item, "type")
            if kind == "message":
                for part in field(item, "content") or ():
                    if field(part, "type") == "output_text":
                        texts.append(field(part, "text") or "")
                    elif field(part, "type") == "refusal":
                        texts.append(field(part, "refusal") or "")
            elif kind == "function_call":
                tool_calls.append(
                    {"id": field(item, "call_id"), "name": field(item, "name"), "arguments": field(item, "arguments")}
                )
        reason = field(field(result, "incomplete_details"), "reason") or field(result, "status")
        _record(
            call,
            field(result, "model"),
            field(result, "usage"),
            "input_tokens",
            "output_tokens",
            ["".join(texts)],
            tool_calls,
            [reason],
        )

    def reader(self, call: ProviderCall, plan: Plan) -> StreamReader:
        return _ResponsesStream(call, self)


class _ResponsesStream(StreamReader):
    """Events of a streamed response: the text deltas, then the final response with its usage."""

    _FINAL = ("response.completed", "response.incomplete", "response.failed")
    _OUTPUT = ("response.output_text.delta", "response.function_call_arguments.delta")
    reads_raw = True  # the events' text is read in end(), off the agent's thread (see _read_events)

    def __init__(self, call: ProviderCall, endpoint: Responses) -> None:
        super().__init__(call)
        self.endpoint = endpoint
        self.text: list[str] = []
        self.final: Any = None
        self.model: Optional[str] = None
        self.first = True  # no output yet

    def item(self, item: Any) -> bool:
        if self.raw is None:  # the client's decoder could not be wrapped: read the event objects
            self._read(item)
        elif self.first and field(item, "type") in self._OUTPUT:
            self.first = False
            self.call.first_token()
        return True

    def _read(self, item: Any) -> None:
        kind = field(item, "type")
        if kind in self._OUTPUT:
            if self.first:
                self.first = False
                self.call.first_token()
            if kind == "response.output_text.delta":
                self.text.append(field(item, "delta") or "")
        elif kind in self._FINAL:
            self.final = snapshot(field(item, "response"))  # likewise
        elif kind == "response.created":
            self.model = field(field(item, "response"), "model")

    def end(self) -> None:
        if self.raw is not None:
            # The final response as the API sent it: not the user's object, which they may have changed since.
            self.first = False  # its time was taken as it arrived
            for event in self.raw_events():
                self._read(event)
        if self.final is not None:
            self.endpoint.read(self.call, self.final)
            return
        _record(self.call, self.model, None, "input_tokens", "output_tokens", ["".join(self.text)])


# -- embeddings ------------------------------------------------------------------


class Embeddings(Endpoint):
    def plan(self, options: Any, body: dict[str, Any], stream: bool) -> Optional[Plan]:
        attributes = _request_attributes(body, "dimensions")
        return Plan(str(body.get("model") or "unknown"), body.get("input"), attributes)

    def read(self, call: ProviderCall, result: Any) -> None:
        usage = field(result, "usage")
        data = field(result, "data") or []
        # The vectors are not the interesting part of the record: their count and size are.
        first = field(data[0], "embedding") if data else None
        call.outcome(
            field(result, "model"),
            {"embeddings": len(data), "dimensions": _dimensions(first)},
            None if usage is None else field(usage, "prompt_tokens") or 0,
            None if usage is None else 0,
        )


def _dimensions(embedding: Any) -> Optional[int]:
    """A vector's size: a list of floats, or (what the SDK asks for by default) base64 of float32s."""
    if isinstance(embedding, list):
        return len(embedding)
    if isinstance(embedding, str):
        return len(base64.b64decode(embedding)) // 4
    return None


_ENDPOINTS: dict[str, Endpoint] = {
    "/chat/completions": ChatCompletions(),
    "/responses": Responses(),
    "/embeddings": Embeddings(),
}


def route(method: str, path: str) -> Optional[Endpoint]:
    if method != "post":
        return None
    return _ENDPOINTS.get(path if path.startswith("/") else "/" + path)


INTEGRATION = StainlessIntegration(
    "openai",
    PROVIDER,
    route,
    helper_streams=(
        ("openai.lib.streaming.chat._completions", "ChatCompletionStream", False),
        ("openai.lib.streaming.chat._completions", "AsyncChatCompletionStream", True),
        ("openai.lib.streaming.responses._responses", "ResponseStream", False),
        ("openai.lib.streaming.responses._responses", "AsyncResponseStream", True),
    ),
)


def instrument(resolve: Resolver, client: Any = None) -> None:
    """Record the calls of every ``openai`` client, or of ``client`` only."""
    INTEGRATION.instrument(resolve, client)


def uninstrument(client: Any = None) -> None:
    """Stop recording every ``openai`` client, or ``client`` only."""
    INTEGRATION.uninstrument(client)
