"""A stand-in for the OpenAI and Anthropic APIs (and an OTLP collector) on 127.0.0.1, for the documentation's snippets.

The snippets in README.md and docs/ are what a user writes (``OpenAI()``,
``Anthropic()``, no transport tricks); the docs test points the real clients
here with ``OPENAI_BASE_URL`` and ``ANTHROPIC_BASE_URL``. It answers as the
providers do: JSON bodies with usage (cached tokens included), and server-sent
events for streams, the usage-only chat chunk only when
``stream_options.include_usage`` asks for it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ANSWER = "Refunds take 5 business days."
# The bodies of the OTLP export requests received (docs/otel.md's collector).
exported_trace_requests: list[bytes] = []
_lock = threading.Lock()


def _tokens(body: Any) -> int:
    return max(1, len(json.dumps(body)) // 4)


def chat_completion(body: dict[str, Any]) -> dict[str, Any]:
    prompt = _tokens(body.get("messages"))
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1764000000,
        "model": f"{body['model']}-2024-07-18" if body["model"] == "gpt-4o-mini" else body["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ANSWER, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": 8,
            "total_tokens": prompt + 8,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
    }


def chat_chunks(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    whole = chat_completion(body)
    base = {"id": whole["id"], "object": "chat.completion.chunk", "created": whole["created"], "model": whole["model"]}
    words = ANSWER.split(" ")
    for position, word in enumerate(words):
        text = word if position == 0 else " " + word
        yield {**base, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    if (body.get("stream_options") or {}).get("include_usage"):
        yield {**base, "choices": [], "usage": whole["usage"]}


def response(body: dict[str, Any]) -> dict[str, Any]:
    prompt = _tokens([body.get("instructions"), body.get("input")])
    return {
        "id": "resp_fake",
        "object": "response",
        "created_at": 1764000000,
        "status": "completed",
        "model": body["model"],
        "output": [
            {
                "id": "msg_fake",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": ANSWER, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 8,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + 8,
        },
    }


def message(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": [{"type": "text", "text": ANSWER}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": _tokens([body.get("system"), body.get("messages")]),
            "output_tokens": 8,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
    }


def message_events(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    whole = message(body)
    usage = whole["usage"]
    yield {
        "type": "message_start",
        "message": {**whole, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}},
    }
    yield {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    yield {"type": "ping"}
    for word in ANSWER.split(" "):
        yield {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word + " "}}
    yield {"type": "content_block_stop", "index": 0}
    yield {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 8},
    }
    yield {"type": "message_stop"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        data = self.rfile.read(int(self.headers.get("content-length") or 0))
        path = self.path.split("?", 1)[0]
        if path == "/v1/traces":  # an OpenTelemetry collector's OTLP/HTTP endpoint: spans taken, and counted
            with _lock:
                exported_trace_requests.append(data)
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()
            return
        body = json.loads(data or b"{}")
        if path.endswith("/chat/completions"):
            if body.get("stream"):
                self._events(("", chunk) for chunk in chat_chunks(body))
            else:
                self._json(chat_completion(body))
        elif path.endswith("/responses"):
            self._json(response(body))
        elif path.endswith("/embeddings"):
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(len(inputs))]
            tokens = _tokens(inputs)
            self._json(
                {
                    "object": "list",
                    "data": data,
                    "model": body["model"],
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                }
            )
        elif path.endswith("/messages"):
            if body.get("stream"):
                self._events((event["type"], event) for event in message_events(body))
            else:
                self._json(message(body))
        else:
            self._json({"error": {"message": f"no route {self.path}"}}, 404)

    def _json(self, payload: dict[str, Any], status: int = 200) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _events(self, events: Any) -> None:
        parts = []
        for name, event in events:
            # Compact JSON, as both APIs write it.
            parts.append((f"event: {name}\n" if name else "") + f"data: {json.dumps(event, separators=(',', ':'))}\n\n")
        if self.path.split("?", 1)[0].endswith("/chat/completions"):
            parts.append("data: [DONE]\n\n")  # OpenAI ends a chat stream so; Anthropic with message_stop
        data = "".join(parts).encode()
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def serve() -> Iterator[str]:
    """Serve the fake providers on a free port of 127.0.0.1; yields the root URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="fake-providers", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def environment(url: str) -> dict[str, str]:
    """The variables that point the real clients at the fake providers."""
    return {
        "OPENAI_BASE_URL": f"{url}/v1",
        "OPENAI_API_KEY": "sk-fake",
        "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_API_KEY": "sk-ant-fake",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{url}/v1/traces",
    }
