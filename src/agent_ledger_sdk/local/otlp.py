"""OpenTelemetry traces (OTLP) as the ledger reads them: decoding, then GenAI spans as sessions and events.

``POST /v1/traces`` takes an OTLP ``ExportTraceServiceRequest``, as protobuf
(:func:`decode_protobuf`; opentelemetry-proto is imported when the first such
request arrives) or in the OTLP JSON mapping (:func:`decode_json`: lowerCamelCase
keys, trace and span ids as hex, enums as integers, 64-bit integers as strings or
numbers). Both give the same neutral :class:`Span` list, which :func:`plan` turns
into :class:`LedgerSpan` records: which session a span belongs to, and the ledger
events it becomes. ``service.LedgerService.ingest_traces`` records them.

What a span becomes, by the GenAI semantic conventions (``gen_ai.*``) or OpenInference's (``llm.*``):

- a chat, text completion, content generation or embeddings span (``gen_ai.operation.name``;
  OpenInference ``openinference.span.kind`` LLM or EMBEDDING): an ``llm_call``, priced from
  its provider, model and usage;
- a tool span (``execute_tool``; OpenInference TOOL): a ``tool_call`` and a ``tool_result``;
- an agent span (``invoke_agent``; OpenInference AGENT) names the session's agent
  (``gen_ai.agent.name``), and its end ends the session, as a root span's end does.

A span that is not GenAI at all (an HTTP request's, say) is accepted and not recorded; only a
root one may end a session that its trace's GenAI spans made. A span that cannot be read (a
malformed id or time) is rejected alone, and the answer's ``partialSuccess`` says why.

A whole request is refused (:class:`~.records.BadInput`) only when it is not OTLP: bytes that
are not an ``ExportTraceServiceRequest``, JSON that is not one's shape.
"""

from __future__ import annotations

import base64
import datetime
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from .body import _deeper_than, parse_json_object
from .records import BadInput

__all__ = [
    "JSON",
    "PROTOBUF",
    "Decoded",
    "LedgerSpan",
    "Span",
    "decode_json",
    "decode_protobuf",
    "encode_response",
    "encode_status",
    "plan",
]

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
DEFAULT_AGENT = "opentelemetry"  # a session's agent when no span names one and the resource has no service.name
MAX_VALUE_DEPTH = 32  # arrays and key-value lists in one another, within an attribute's value
MAX_NAME = 200  # an agent's name (the ledger's limit), a provider's, a model's, a tool's
MAX_MESSAGES_REPORTED = 5  # rejected spans' reasons quoted in partialSuccess.errorMessage

STATUS_ERROR = 2
_HEX = re.compile(r"[0-9a-fA-F]*\Z")
_ZERO = re.compile(r"0*\Z")
_DIGITS = re.compile(r"-?[0-9]{1,20}\Z")
_SPAN_KINDS = {"LLM": "llm", "EMBEDDING": "llm", "TOOL": "tool", "AGENT": "agent"}
_LLM_OPERATIONS = {"chat", "text_completion", "generate_content", "embeddings", "completion", "responses"}
_AGENT_OPERATIONS = {"invoke_agent"}
_STATUS_NAMES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}
# Where each of an llm_call's fields is found, most specific first (GenAI conventions, older ones, OpenInference).
_PROVIDER = ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")
_MODEL = ("gen_ai.response.model", "gen_ai.request.model", "llm.model_name", "llm.response.model", "llm.request.model")
_COUNTS = {
    "tokensIn": ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt"),
    "tokensOut": ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.token_count.completion"),
    "cacheReadTokens": (
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.usage.cache_read_input_tokens",
        "llm.token_count.prompt_details.cache_read",
    ),
    "cacheWriteTokens": (
        "gen_ai.usage.cache_creation.input_tokens",
        "gen_ai.usage.cache_creation_input_tokens",
        "llm.token_count.prompt_details.cache_write",
    ),
    "reasoningTokens": (
        "gen_ai.usage.reasoning.output_tokens",
        "gen_ai.usage.reasoning_tokens",
        "llm.token_count.completion_details.reasoning",
    ),
}
_CONVERSATION = ("gen_ai.conversation.id", "session.id")  # (OpenInference calls a conversation a session)
_USER = ("user.id", "enduser.id")
# Older conventions sent messages as span events.
_MESSAGE_EVENTS = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}


# -- the neutral span ----------------------------------------------------------------------------------------


@dataclass
class SpanEvent:
    name: str
    time_ns: int
    attributes: dict[str, Any]


@dataclass
class Span:
    """One span as OTLP carried it, whichever the encoding: ids in lower-case hex, times in ns since the epoch."""

    trace_id: str
    span_id: str
    parent_span_id: Optional[str]
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    events: list[SpanEvent] = field(default_factory=list)
    status_code: int = 0
    status_message: str = ""


@dataclass
class Decoded:
    """A request's spans, and why each span that could not be read was rejected."""

    spans: list[Span] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)


class _SpanProblem(Exception):
    """One span cannot be read: it is rejected, the rest of the request is not."""


# -- protobuf ----------------------------------------------------------------------------------------------------


def decode_protobuf(raw: bytes) -> Decoded:
    """``raw`` as an ``ExportTraceServiceRequest`` in protobuf; raises :class:`BadInput` when it is not one."""
    try:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    except ImportError:  # pragma: no cover - the server extra installs it
        raise BadInput(
            "This ledger cannot read OTLP protobuf: install opentelemetry-proto (pip install "
            "'agent-ledger-sdk[server]'), or send OTLP JSON with Content-Type: application/json."
        ) from None
    request: Any = ExportTraceServiceRequest()
    try:
        request.ParseFromString(raw)
    except Exception as exc:  # DecodeError, or a message nested past protobuf's recursion limit
        raise BadInput(
            f"The body is not an OTLP ExportTraceServiceRequest in protobuf ({type(exc).__name__}: {exc}). "
            f"Send one with Content-Type: {PROTOBUF} (an OTLP/HTTP exporter does), or OTLP JSON with "
            f"Content-Type: {JSON}."
        ) from None
    decoded = Decoded()
    for r, resource_spans in enumerate(request.resource_spans):
        resource = _pb_attributes(resource_spans.resource.attributes)
        for s, scope_spans in enumerate(resource_spans.scope_spans):
            for n, span in enumerate(scope_spans.spans):
                try:
                    decoded.spans.append(_pb_span(span, resource))
                except _SpanProblem as problem:
                    decoded.rejected.append(f"resourceSpans[{r}].scopeSpans[{s}].spans[{n}]: {problem}")
    return decoded


def _pb_span(span: Any, resource: dict[str, Any]) -> Span:
    trace_id = _id_hex(bytes(span.trace_id).hex(), 32, "traceId")
    span_id = _id_hex(bytes(span.span_id).hex(), 16, "spanId")
    parent = bytes(span.parent_span_id).hex()
    return Span(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=_id_hex(parent, 16, "parentSpanId") if parent else None,
        name=span.name,
        start_ns=int(span.start_time_unix_nano),
        end_ns=int(span.end_time_unix_nano),
        attributes=_pb_attributes(span.attributes),
        resource=resource,
        events=[SpanEvent(e.name, int(e.time_unix_nano), _pb_attributes(e.attributes)) for e in span.events],
        status_code=int(span.status.code),
        status_message=span.status.message,
    )


def _pb_attributes(attributes: Iterable[Any], depth: int = 0) -> dict[str, Any]:
    return {kv.key: _pb_value(kv.value, depth) for kv in attributes}


def _pb_value(value: Any, depth: int) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind in ("array_value", "kvlist_value") and depth >= MAX_VALUE_DEPTH:
        return _TOO_DEEP
    if kind == "array_value":
        return [_pb_value(item, depth + 1) for item in value.array_value.values]
    if kind == "kvlist_value":
        return _pb_attributes(value.kvlist_value.values, depth + 1)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    found = getattr(value, kind)
    return _finite(found) if kind == "double_value" else found


# -- JSON ----------------------------------------------------------------------------------------------------


def decode_json(raw: bytes) -> Decoded:
    """``raw`` as an ``ExportTraceServiceRequest`` in OTLP JSON; raises :class:`BadInput` when it is not one."""
    try:
        body = parse_json_object(raw)
    except BadInput as exc:
        raise type(exc)(f"{exc.message} OTLP JSON is an ExportTraceServiceRequest object: {_SHAPE}.") from None
    decoded = Decoded()
    for r, resource_spans in _objects(body, "resourceSpans", "resource_spans", "resourceSpans"):
        where = f"resourceSpans[{r}]"
        resource_object = _member(resource_spans, "resource", "resource")
        if resource_object is not None and not isinstance(resource_object, dict):
            raise _not_otlp(f"{where}.resource must be an object")
        try:
            resource = _json_attributes((resource_object or {}).get("attributes"), 0)
        except _SpanProblem as problem:  # a resource's attributes cannot be read: none of its spans can
            count = sum(
                len(_member(scope, "spans", "spans") or [])
                for _, scope in _objects(resource_spans, "scopeSpans", "scope_spans", f"{where}.scopeSpans")
            )
            decoded.rejected.extend([f"{where}.resource: {problem}"] * max(count, 1))
            continue
        for s, scope_spans in _objects(resource_spans, "scopeSpans", "scope_spans", f"{where}.scopeSpans"):
            for n, span in _objects(scope_spans, "spans", "spans", f"{where}.scopeSpans[{s}].spans"):
                try:
                    decoded.spans.append(_json_span(span, resource))
                except _SpanProblem as problem:
                    decoded.rejected.append(f"{where}.scopeSpans[{s}].spans[{n}]: {problem}")
    return decoded


_SHAPE = '{"resourceSpans": [{"resource": {...}, "scopeSpans": [{"scope": {...}, "spans": [...]}]}]}'


def _not_otlp(what: str) -> BadInput:
    return BadInput(
        f"The body is not an OTLP ExportTraceServiceRequest in JSON: {what}. Send {_SHAPE} "
        f"(the OTLP JSON mapping) with Content-Type: {JSON}, or protobuf with Content-Type: {PROTOBUF}."
    )


def _member(value: dict[str, Any], camel: str, snake: str) -> Any:
    # OTLP JSON's keys are lowerCamelCase (the spec's MUST): the proto's snake_case names are not read.
    return value.get(camel)


def _objects(value: dict[str, Any], camel: str, snake: str, where: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """The objects of the list ``value[camel]`` (absent or null: none); not a list of objects: not OTLP."""
    items = _member(value, camel, snake)
    if items is None:
        return
    if not isinstance(items, list):
        raise _not_otlp(f"{where} must be an array")
    for position, item in enumerate(items):
        if not isinstance(item, dict):
            raise _not_otlp(f"{where}[{position}] must be an object")
        yield position, item


def _json_span(span: dict[str, Any], resource: dict[str, Any]) -> Span:
    trace_id = _id_hex(_text(_member(span, "traceId", "trace_id"), "traceId"), 32, "traceId")
    span_id = _id_hex(_text(_member(span, "spanId", "span_id"), "spanId"), 16, "spanId")
    parent = _text(_member(span, "parentSpanId", "parent_span_id"), "parentSpanId")
    status = _member(span, "status", "status") or {}
    if not isinstance(status, dict):
        raise _SpanProblem("status must be an object")
    events = _member(span, "events", "events") or []
    if not isinstance(events, list) or not all(isinstance(event, dict) for event in events):
        raise _SpanProblem("events must be an array of objects")
    return Span(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=_id_hex(parent, 16, "parentSpanId") if parent else None,
        name=_text(span.get("name"), "name"),
        start_ns=_uint64(_member(span, "startTimeUnixNano", "start_time_unix_nano"), "startTimeUnixNano"),
        end_ns=_uint64(_member(span, "endTimeUnixNano", "end_time_unix_nano"), "endTimeUnixNano"),
        attributes=_json_attributes(span.get("attributes"), 0),
        resource=resource,
        events=[
            SpanEvent(
                _text(event.get("name"), "events[].name"),
                _uint64(_member(event, "timeUnixNano", "time_unix_nano"), "events[].timeUnixNano"),
                _json_attributes(event.get("attributes"), 0),
            )
            for event in events
        ],
        status_code=_status_code(status.get("code")),
        status_message=_text(status.get("message"), "status.message"),
    )


def _text(value: Any, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _SpanProblem(f"{name} must be a string")
    return value


def _uint64(value: Any, name: str) -> int:
    if value is None:
        return 0
    if isinstance(value, str) and _DIGITS.match(value):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        raise _SpanProblem(f"{name} must be an unsigned 64-bit integer (a number, or its digits as a string)")
    return value


def _status_code(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str) and value in _STATUS_NAMES:
        return _STATUS_NAMES[value]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 2:
        return value
    raise _SpanProblem("status.code must be 0 (unset), 1 (ok) or 2 (error)")


def _json_attributes(attributes: Any, depth: int) -> dict[str, Any]:
    if attributes is None:
        return {}
    if not isinstance(attributes, list):
        raise _SpanProblem("attributes must be an array of {key, value}")
    found: dict[str, Any] = {}
    for attribute in attributes:
        if not isinstance(attribute, dict) or not isinstance(attribute.get("key"), str):
            raise _SpanProblem("attributes must be an array of {key, value}, each key a string")
        found[attribute["key"]] = _json_value(attribute.get("value"), depth, attribute["key"])
    return found


def _json_value(value: Any, depth: int, key: str) -> Any:
    """An OTLP JSON AnyValue: {"stringValue": ...}, {"intValue": "12"}, {"arrayValue": {"values": [...]}} ..."""
    if value is None or value == {}:
        return None
    if not isinstance(value, dict) or len(value) != 1:
        raise _SpanProblem(f'attribute {key!r}: a value must be an object with one member, e.g. {{"stringValue": "x"}}')
    ((kind, inner),) = value.items()
    if kind in ("stringValue", "string_value") and isinstance(inner, str):
        return inner
    if kind in ("boolValue", "bool_value") and isinstance(inner, bool):
        return inner
    if kind in ("intValue", "int_value"):
        number = int(inner) if isinstance(inner, str) and _DIGITS.match(inner) else inner
        if isinstance(number, float) and number.is_integer():
            number = int(number)
        if isinstance(number, int) and not isinstance(number, bool) and -(2**63) <= number < 2**63:
            return number
    if kind in ("doubleValue", "double_value"):
        if isinstance(inner, (int, float)) and not isinstance(inner, bool):
            return _finite(float(inner))
        if inner in ("NaN", "Infinity", "-Infinity"):
            return inner
    if kind in ("bytesValue", "bytes_value") and isinstance(inner, str):
        return inner
    if kind in ("arrayValue", "array_value", "kvlistValue", "kvlist_value") and isinstance(inner, dict):
        if depth >= MAX_VALUE_DEPTH:
            return _TOO_DEEP
        items = inner.get("values") or []
        if not isinstance(items, list):
            raise _SpanProblem(f"attribute {key!r}: {kind}.values must be an array")
        if kind.startswith("array"):
            return [_json_value(item, depth + 1, key) for item in items]
        return _json_attributes(items, depth + 1)
    raise _SpanProblem(
        f"attribute {key!r}: {kind} is not an OTLP AnyValue of the right type (stringValue, intValue, doubleValue, "
        "boolValue, bytesValue, arrayValue or kvlistValue)"
    )


_TOO_DEEP = f"[nested deeper than {MAX_VALUE_DEPTH} levels: not kept]"


def _finite(value: float) -> Any:
    """A double JSON can carry; NaN and the infinities as the words OTLP JSON spells them."""
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _id_hex(text: str, digits: int, name: str) -> str:
    if len(text) != digits or not _HEX.match(text) or _ZERO.match(text):
        raise _SpanProblem(
            f"{name} must be {digits} hex digits ({digits // 2} bytes), not all zero; got {_short(text)}"
        )
    return text.lower()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 50 else text[:47] + "..."


# -- the answer ----------------------------------------------------------------------------------------------------


def encode_response(rejected: list[str], *, protobuf: bool) -> bytes:
    """The ``ExportTraceServiceResponse``: empty, or with ``partialSuccess`` when spans were rejected."""
    message = ""
    if rejected:
        shown = rejected[:MAX_MESSAGES_REPORTED]
        more = len(rejected) - len(shown)
        message = f"{len(rejected)} span(s) rejected: " + "; ".join(shown) + (f"; and {more} more" if more else "")
    if protobuf:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

        response: Any = ExportTraceServiceResponse()
        if rejected:
            response.partial_success.rejected_spans = len(rejected)
            response.partial_success.error_message = message
        return bytes(response.SerializeToString())
    body: dict[str, Any] = {}
    if rejected:  # int64 as a string, as the OTLP JSON mapping spells it
        body["partialSuccess"] = {"rejectedSpans": str(len(rejected)), "errorMessage": message}
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def encode_status(code: int, message: str) -> bytes:
    """A ``google.rpc.Status`` in protobuf (``code`` 1, ``message`` 2): OTLP/HTTP's error body for protobuf."""
    text = message.encode("utf-8")
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        byte, number = number & 0x7F, number >> 7
        out.append(byte | (0x80 if number else 0))
        if not number:
            return bytes(out)


# -- spans as the ledger records them ------------------------------------------------------------------------


@dataclass
class SessionEnd:
    status: str  # success | error
    error_message: Optional[str]
    end_ns: int


@dataclass
class LedgerSpan:
    """What one span means to the ledger: its trace, its session's clues, and the events it becomes."""

    trace_id: str
    span_id: str
    genai: bool  # False: a root span of something else, which can only end its trace's session
    depth: int  # ancestors found in the same request (the shallowest span's conversation id keys the trace)
    start_ns: int
    conversation_id: Optional[str] = None
    agent_name: Optional[str] = None  # gen_ai.agent.name of an agent span
    service_name: Optional[str] = None
    user_id: Optional[str] = None
    end: Optional[SessionEnd] = None
    events: list[dict[str, Any]] = field(default_factory=list)  # without stepIndex: the ledger numbers them


def plan(spans: list[Span]) -> tuple[list[LedgerSpan], list[str]]:
    """The spans to record, and the reasons of those rejected. Linear in the spans; a span sent twice counts once."""
    by_id: dict[tuple[str, str], Span] = {}
    for span in spans:
        by_id.setdefault((span.trace_id, span.span_id), span)
    memo: dict[tuple[str, str], tuple[Optional[str], int]] = {}

    def conversation(span: Span) -> tuple[Optional[str], int]:
        """The conversation id on the span or its nearest ancestor in this request, and the span's depth."""
        chain: list[Span] = []
        visited: set[tuple[str, str]] = set()
        found: tuple[Optional[str], int] = (None, -1)
        current: Optional[Span] = span
        while current is not None:
            key = (current.trace_id, current.span_id)
            if key in memo:
                found = memo[key]
                break
            if key in visited:  # a cycle of parents: its top is taken as a root
                break
            visited.add(key)
            chain.append(current)
            parent = current.parent_span_id
            current = by_id.get((current.trace_id, parent)) if parent else None
        conversation_id, depth = found
        for member in reversed(chain):
            conversation_id = _string(member.attributes, _CONVERSATION) or conversation_id
            depth += 1
            memo[(member.trace_id, member.span_id)] = (conversation_id, depth)
        return memo[(span.trace_id, span.span_id)]

    planned: list[LedgerSpan] = []
    rejected: list[str] = []
    for span in by_id.values():
        genai = _is_genai(span)
        root = span.parent_span_id is None
        if not genai and not root:
            continue
        conversation_id, depth = conversation(span)
        try:
            planned.append(_ledger_span(span, genai, root, conversation_id, depth))
        except _SpanProblem as problem:
            rejected.append(f"span {span.span_id} of trace {span.trace_id}: {problem}")
    return planned, rejected


def _is_genai(span: Span) -> bool:
    return any(
        key.startswith(("gen_ai.", "llm.")) or key == "openinference.span.kind" for key in span.attributes
    ) or any(event.name.startswith("gen_ai.") for event in span.events)


def _role(span: Span) -> str:
    attributes = span.attributes
    operation = attributes.get("gen_ai.operation.name")
    operation = operation if isinstance(operation, str) else None
    kind = _SPAN_KINDS.get(str(attributes.get("openinference.span.kind", "")).upper())
    if operation in _LLM_OPERATIONS or kind == "llm":
        return "llm"
    if operation == "execute_tool" or kind == "tool":
        return "tool"
    if operation in _AGENT_OPERATIONS or kind == "agent":
        return "agent"
    if operation is None and kind is None:
        if any(name in attributes for names in (_COUNTS["tokensIn"], _COUNTS["tokensOut"]) for name in names):
            return "llm"
        if "llm.request.type" in attributes:
            return "llm"
        if "gen_ai.tool.name" in attributes:
            return "tool"
    return "other"


def _ledger_span(span: Span, genai: bool, root: bool, conversation_id: Optional[str], depth: int) -> LedgerSpan:
    if span.start_ns == 0:
        raise _SpanProblem("startTimeUnixNano is required (the span's start, in ns since the Unix epoch)")
    started_at = _timestamp(span.start_ns, "startTimeUnixNano")
    _timestamp(max(span.end_ns, span.start_ns), "endTimeUnixNano")
    role = _role(span) if genai else "other"
    record = LedgerSpan(
        trace_id=span.trace_id,
        span_id=span.span_id,
        genai=genai,
        depth=depth,
        start_ns=span.start_ns,
        conversation_id=conversation_id,
        service_name=_name(span.resource.get("service.name")),
        user_id=_string(span.attributes, _USER) or _string(span.resource, _USER),
    )
    if role == "agent":
        record.agent_name = _name(span.attributes.get("gen_ai.agent.name") or span.attributes.get("agent.name"))
    error = _error(span)
    if root or role == "agent":
        message = _error_text(error)  # the session's own column, where PostgreSQL refuses a NUL: left out
        message = message.replace("\x00", "") if message is not None else None
        record.end = SessionEnd("error" if error else "success", message, max(span.end_ns, span.start_ns))
    common: dict[str, Any] = {"startedAt": started_at, "spanId": span.span_id, "traceId": span.trace_id}
    if span.parent_span_id:
        common["parentSpanId"] = span.parent_span_id
    latency = round(max(span.end_ns - span.start_ns, 0) / 1e6, 3)
    if role == "llm":
        record.events.append(_llm_call(span, common, latency, error))
    elif role == "tool":
        record.events.extend(_tool_events(span, common, latency, error))
    return record


def _timestamp(ns: int, name: str) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(ns // 10**9, datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise _SpanProblem(f"{name} {ns} is not a time the ledger can keep (ns since the Unix epoch)") from None
    if moment.year > 9999 or moment.year < 1970:  # pragma: no cover - fromtimestamp refuses these first
        raise _SpanProblem(f"{name} {ns} is out of range")
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns // 10**6 % 1000:03d}Z"


def _error(span: Span) -> Optional[tuple[Optional[str], Optional[str]]]:
    """(error.type, status message) of a failed span; None when it did not fail."""
    kind = span.attributes.get("error.type")
    if span.status_code != STATUS_ERROR and kind is None:
        return None
    return (str(kind) if kind is not None else None, span.status_message or None)


def _error_text(error: Optional[tuple[Optional[str], Optional[str]]]) -> Optional[str]:
    if error is None:
        return None
    kind, message = error
    if kind and message:
        return message if message.startswith(kind) else f"{kind}: {message}"
    return message or kind or "error (the span's status says so, with no message)"


def _string(attributes: Mapping[str, Any], names: Iterable[str]) -> Optional[str]:
    for name in names:
        value = attributes.get(name)
        if value is not None and value != "":
            return str(value)
    return None


def _name(value: Any) -> Optional[str]:
    """A name the ledger keeps in a column of its own: no NUL, at most MAX_NAME characters; None when empty."""
    if value is None:
        return None
    text = str(value).replace("\x00", "").strip()[:MAX_NAME]
    return text or None


def _count(span: Span, names: tuple[str, ...]) -> Optional[int]:
    for name in names:
        value = span.attributes.get(name)
        if value is None:
            continue
        if isinstance(value, str) and _DIGITS.match(value):
            value = int(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _SpanProblem(f"{name} must be a non-negative integer; got {_short(value)}")
        return value
    return None


def _llm_call(
    span: Span, common: dict[str, Any], latency: float, error: Optional[tuple[Optional[str], Optional[str]]]
) -> dict[str, Any]:
    attributes = span.attributes
    event: dict[str, Any] = {
        "type": "llm_call",
        "provider": _name(_string(attributes, _PROVIDER)) or "unknown",
        "model": _name(_string(attributes, _MODEL)) or "unknown",
        "latencyMs": latency,
        **common,
    }
    counts = {name: _count(span, names) for name, names in _COUNTS.items()}
    if counts["tokensIn"] is None and counts["tokensOut"] is None:
        event["usageMissing"] = True
    cached = (counts["cacheReadTokens"] or 0) + (counts["cacheWriteTokens"] or 0)
    if cached > (counts["tokensIn"] or 0):
        # Input tokens that leave the cached ones out (Anthropic's input_tokens): the ledger counts them all.
        counts["tokensIn"] = (counts["tokensIn"] or 0) + cached
    for name, value in counts.items():
        if value is not None or name in ("tokensIn", "tokensOut"):
            event[name] = value or 0
    prompt, response, system = _messages(span)
    if system is not None:
        event["systemInstructions"] = system
    if prompt is not None:
        event["prompt"] = prompt
    if response is not None:
        event["response"] = response
    if error is not None:
        event["error"] = _error_text(error)
    return event


def _tool_events(
    span: Span, common: dict[str, Any], latency: float, error: Optional[tuple[Optional[str], Optional[str]]]
) -> list[dict[str, Any]]:
    attributes = span.attributes
    name = _name(attributes.get("gen_ai.tool.name") or attributes.get("tool.name") or span.name) or "tool"
    call: dict[str, Any] = {"type": "tool_call", "toolName": name, **common}
    tool_input = attributes.get("gen_ai.tool.call.arguments", attributes.get("input.value"))
    if tool_input is not None:
        call["toolInput"] = _maybe_json(tool_input)
    if attributes.get("gen_ai.tool.call.id") is not None:
        call["toolCallId"] = str(attributes["gen_ai.tool.call.id"])
    result: dict[str, Any] = {"type": "tool_result", "toolName": name, "latencyMs": latency, **common}
    output = attributes.get("gen_ai.tool.call.result", attributes.get("output.value"))
    if error is not None:
        kind, message = error
        result["toolOutput"] = {"error": message or kind or "error", "errorType": kind or "error"}
    elif output is not None:
        result["toolOutput"] = _maybe_json(output)
    return [call, result]


def _maybe_json(value: Any) -> Any:
    """A JSON document sent as a string attribute (messages, tool arguments), parsed; anything else as it is."""
    if not isinstance(value, str) or value[:1] not in ("{", "[") or len(value) > 1_000_000:
        return value
    try:
        parsed = json.loads(value, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return value
    return value if _deeper_than(parsed, MAX_VALUE_DEPTH) else parsed


def _no_constant(name: str) -> Any:
    raise ValueError(name)  # NaN, Infinity: the text is kept as it came


def _messages(span: Span) -> tuple[Any, Any, Any]:
    """(prompt, response, system instructions) of an LLM span, wherever its instrumentation put them."""
    attributes = span.attributes
    system = attributes.get("gen_ai.system_instructions")
    prompt = attributes.get("gen_ai.input.messages")
    response = attributes.get("gen_ai.output.messages")
    if prompt is None or response is None:
        asked: list[Any] = []
        answered: list[Any] = []
        for event in span.events:
            role = _MESSAGE_EVENTS.get(event.name)
            body = {k: _maybe_json(v) for k, v in event.attributes.items() if k not in _PROVIDER}
            if role is not None:
                asked.append({"role": role, **body})
            elif event.name == "gen_ai.choice":
                answered.append(body)
            elif event.name == "gen_ai.content.prompt" and "gen_ai.prompt" in event.attributes:
                asked.append(_maybe_json(event.attributes["gen_ai.prompt"]))
            elif event.name == "gen_ai.content.completion" and "gen_ai.completion" in event.attributes:
                answered.append(_maybe_json(event.attributes["gen_ai.completion"]))
        prompt = prompt if prompt is not None else (asked or None)
        response = response if response is not None else (answered or None)
    if prompt is None:
        prompt = _indexed(attributes, "gen_ai.prompt.") or _indexed(attributes, "llm.input_messages.", "message.")
        prompt = prompt or attributes.get("input.value")
    if response is None:
        response = _indexed(attributes, "gen_ai.completion.") or _indexed(
            attributes, "llm.output_messages.", "message."
        )
        response = response or attributes.get("output.value")
    return (
        None if prompt is None else _maybe_json(prompt),
        None if response is None else _maybe_json(response),
        None if system is None else _maybe_json(system),
    )


def _indexed(attributes: Mapping[str, Any], prefix: str, inner: str = "") -> Optional[list[dict[str, Any]]]:
    """Messages flattened into attributes (``gen_ai.prompt.0.role``, ``llm.input_messages.0.message.content``)."""
    found: dict[int, dict[str, Any]] = {}
    for key, value in attributes.items():
        if not key.startswith(prefix):
            continue
        index, _, rest = key[len(prefix) :].partition(".")
        if not index.isdigit() or not rest:
            continue
        rest = rest[len(inner) :] if inner and rest.startswith(inner) else rest
        found.setdefault(int(index), {})[rest] = _maybe_json(value)
    return [found[index] for index in sorted(found)] or None
