"""Measure the SDK's overhead and throughput; prints a Markdown table.

    python benchmarks/run.py            # the full run (a few minutes)
    python benchmarks/run.py --quick    # fewer iterations and smaller loads: a smoke run

Needs the server extra (the local ledger runs in a separate process, as a real
one would). Targets come from the performance issue; see docs/performance.md.
The SDK's state (local key, journals) goes to a temporary AGENT_LEDGER_HOME,
never to this machine's own.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
STEP_TIMEOUT = 300  # seconds a measuring process may take: a hang fails the run instead of stalling it
CLI = str(Path(sys.executable).with_name("agent-ledger"))


class Ledger:
    """`agent-ledger serve` in its own process, with a fresh database and key."""

    def __init__(self) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="agent-ledger-bench-")
        db = str(Path(self.dir.name) / "bench.db")
        out = subprocess.run(
            [CLI, "keys", "create", "--name", "bench", "--db", db], capture_output=True, text=True, check=True
        )
        self.key = out.stdout.strip().splitlines()[-1]
        self.process = subprocess.Popen(
            [CLI, "serve", "--port", "0", "--db", db], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert self.process.stdout is not None
        while True:
            line = self.process.stdout.readline()
            if not line:  # the server exited before listening: say why instead of waiting forever
                self.process.wait(10)
                raise RuntimeError(f"agent-ledger serve exited with status {self.process.returncode}")
            match = re.search(r"listening on (http://\S+)", line)
            if match:
                self.url = match.group(1)
                break
        # Keep reading the server's log so that a full pipe never blocks it.
        import threading

        threading.Thread(target=lambda: [None for _ in self.process.stdout], daemon=True).start()
        import httpx

        for _ in range(200):
            try:
                httpx.get(self.url + "/health")
                break
            except httpx.HTTPError:
                time.sleep(0.02)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.dir.cleanup()


def per_call_us(
    function: Callable[[], Any], calls: int, repeats: int, between: Callable[[], Any] = lambda: None
) -> float:
    """Median over ``repeats`` runs of the mean µs per call, ``between`` running untimed after each run."""
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            function()
        samples.append((time.perf_counter() - started) / calls * 1e6)
        between()
    return statistics.median(samples)


def bare_genai_tool_span(tracer: Any) -> tuple[Callable[..., int], Callable[[], int]]:
    """A plain tool function, and the GenAI span an instrumentation of its own would make around one call of it:
    the same span as ``otel=`` makes, its attributes, arguments and result (the baseline of the otel rows)."""

    def plain(query: str, limit: int = 3) -> int:
        return limit

    attributes = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "plain",
        "gen_ai.tool.type": "function",
        "gen_ai.agent.name": "bench-otel",
    }

    def bare_span() -> int:
        with tracer.start_as_current_span("execute_tool plain", attributes=attributes) as span:
            result = plain("q")
            span.set_attributes({"gen_ai.tool.call.arguments": '{"query":"q"}', "gen_ai.tool.call.result": "3"})
            return result

    return plain, bare_span


def otel_overhead(ledger: Ledger, calls: int, repeats: int) -> dict[str, float]:
    """Caller-side µs per call over the plain function with ``otel=`` on, next to a bare OpenTelemetry span.

    The tracer provider is the real SDK's with no exporter: what is timed is making the
    spans, not sending them anywhere.
    """
    from opentelemetry.sdk.trace import TracerProvider

    from agent_ledger_sdk import AgentLedgerClient

    provider = TracerProvider()
    tracer = provider.get_tracer("bench")
    client = AgentLedgerClient(api_key=ledger.key, base_url=ledger.url, max_queue_bytes=256 * MIB, otel=provider)

    plain, bare_span = bare_genai_tool_span(tracer)

    tool = client.tool(plain)

    def block() -> None:
        with client.llm_call(provider="openai", model="gpt-4o-mini", prompt="q") as call:
            call.record(response="a", tokens_in=10, tokens_out=2)

    def drain() -> None:
        client.flush(60)

    bursts = max(1, calls // BURST) * repeats
    results: dict[str, float] = {}
    with client.session("bench-otel"):
        base = per_call_us(lambda: plain("q"), BURST, bursts)
        results["span"] = per_call_us(bare_span, BURST, bursts) - base
        results["tool"] = per_call_us(lambda: tool("q"), BURST, bursts, drain) - base
        results["llm_call"] = per_call_us(block, BURST, bursts, drain) - base
    client.close()
    provider.shutdown()
    return results


BURST = 500  # calls an agent makes between two idle moments (an LLM round trip is 100s of ms)
BIG_BURST = 100  # the same with 50 KB prompts: 5 MB for the sender to deliver between bursts
PROMPT_BYTES = 50_000
CHAT_MESSAGES = 100  # of PROMPT_BYTES // CHAT_MESSAGES = 500 characters each


def big_prompts() -> tuple[str, list[dict[str, str]]]:
    """A 50 KB prompt as one string, and as a chat history of 100 messages of 500 characters."""
    text = ("The quick brown fox jumps over the lazy dog. " * (PROMPT_BYTES // 40 + 1))[:PROMPT_BYTES]
    size = PROMPT_BYTES // CHAT_MESSAGES
    chat = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": text[i * size : (i + 1) * size]}
        for i in range(CHAT_MESSAGES)
    ]
    return text, chat


def overhead(ledger: Ledger, mode: str, calls: int, repeats: int, big_bursts: int) -> dict[str, float]:
    """Caller-side µs per call over the plain function.

    Calls are timed in bursts of BURST with the sender draining, untimed, in
    between, as it does while a real agent waits for its LLM. ``saturated``
    times calls back to back with the sender busy on the other core. The
    50 KB prompts are timed in ``big_bursts`` bursts of BIG_BURST.
    """
    from agent_ledger_sdk import AgentLedgerClient

    # A queue that holds the whole saturated run: this measures the caller's cost, not the overflow.
    client = AgentLedgerClient(
        api_key=ledger.key, base_url=ledger.url, enabled=mode != "disabled", max_queue_bytes=256 * MIB
    )

    def plain(query: str, limit: int = 3) -> int:
        return limit

    tool = client.tool(plain)

    def block() -> None:
        with client.llm_call(provider="openai", model="gpt-4o-mini", prompt="q") as call:
            call.record(response="a", tokens_in=10, tokens_out=2)

    text, chat = big_prompts()

    def block_text() -> None:
        with client.llm_call(provider="openai", model="gpt-4o-mini", prompt=text) as call:
            call.record(response="a", tokens_in=12_500, tokens_out=2)

    def block_chat() -> None:
        with client.llm_call(provider="openai", model="gpt-4o-mini", prompt=chat) as call:
            call.record(response="a", tokens_in=12_500, tokens_out=2)

    def drain() -> None:
        client.flush(60)

    bursts = max(1, calls // BURST) * repeats
    results: dict[str, float] = {}
    with client.session("bench"):
        base = per_call_us(lambda: plain("q"), BURST, bursts)
        results["tool"] = per_call_us(lambda: tool("q"), BURST, bursts, drain) - base
        results["llm_call"] = per_call_us(block, BURST, bursts, drain) - base
        if mode == "background":
            results["tool_saturated"] = per_call_us(lambda: tool("q"), calls, repeats) - base
            drain()
            results["llm_call_text"] = per_call_us(block_text, BIG_BURST, big_bursts, drain) - base
            results["llm_call_chat"] = per_call_us(block_chat, BIG_BURST, big_bursts, drain) - base
    stats = client.stats
    client.close()
    if mode == "background" and (stats.dropped or stats.failed or stats.rejected):
        raise RuntimeError(f"the overhead run lost events: {stats}")
    return results


CHAT_BODY = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1764000000,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Refunds take 5 days."}, "finish_reason": "stop"}
    ],
    "usage": {
        "prompt_tokens": 120,
        "completion_tokens": 8,
        "total_tokens": 128,
        "prompt_tokens_details": {"cached_tokens": 64},
        "completion_tokens_details": {"reasoning_tokens": 0},
    },
}


LONG_STREAM = 100  # chunks of text in the long stream of provider_overhead


def _chat_stream_body(usage: bool = True, words: int = 5) -> bytes:
    """A streamed chat completion as OpenAI sends it, ``words`` chunks of text: with ``usage``
    (``stream_options={"include_usage": true}`` asked for it), every chunk carries ``"usage": null`` and a
    last, usage-only chunk follows."""
    chunk: dict[str, Any] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1764000000,
        "model": "gpt-4o-mini",
    }
    events = [
        {**chunk, "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]}
        for word in (["Refunds", "take", "five", "business", "days."] * (words // 5 + 1))[:words]
    ]
    events.append({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if usage:
        events = [{**event, "usage": None} for event in events]
        events.append({**chunk, "choices": [], "usage": CHAT_BODY["usage"]})
    # Compact JSON, as the API writes it.
    return ("".join(f"data: {json.dumps(e, separators=(',', ':'))}\n\n" for e in events) + "data: [DONE]\n\n").encode()


def _anthropic_stream() -> Callable[[], None]:
    """A streamed Anthropic message of LONG_STREAM text deltas read to the end, its HTTP answered in memory."""
    import anthropic
    import anthropic._base_client
    import httpx

    http: Any = getattr(anthropic._base_client, "httpx2", None) or httpx  # the HTTP package it is built on

    def event(data: dict[str, Any]) -> str:
        return f"event: {data['type']}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"

    message = {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 120, "output_tokens": 1},
    }
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "word "}}
    body = "".join(
        [
            event({"type": "message_start", "message": message}),
            event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            *(event(delta) for _ in range(LONG_STREAM)),
            event({"type": "content_block_stop", "index": 0}),
            event(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": LONG_STREAM},
                }
            ),
            event({"type": "message_stop"}),
        ]
    ).encode()
    headers = {"content-type": "text/event-stream"}
    transport = http.MockTransport(lambda request: http.Response(200, content=body, headers=headers))
    client = anthropic.Anthropic(api_key="sk-ant-bench", http_client=http.Client(transport=transport))
    messages = [{"role": "user", "content": "How long do refunds take?"}]

    def stream() -> None:
        for _ in client.messages.create(model="claude-haiku-4-5", max_tokens=1000, messages=messages, stream=True):
            pass

    return stream


def provider_overhead(ledger: Ledger, bursts: int) -> dict[str, float]:
    """Caller-side µs an instrumented OpenAI call adds over the same call uninstrumented (mocked transport).

    The real ``openai`` client, its HTTP answered in memory by an ``httpx.MockTransport``, in
    a session of a client sending in the background to the served ledger. A call costs the
    client itself about a millisecond, so a difference of microseconds is measured as the
    median over ``bursts`` pairs of bursts, instrumented and not, each timed in the caller
    thread's CPU time (``time.thread_time``: the sender thread's work is its own). ``wrapper``
    times the integration's request wrapper alone around a ready response: what it adds, exactly.
    """
    import httpx
    import openai
    from openai.types.chat import ChatCompletion

    from agent_ledger_sdk import AgentLedgerClient
    from agent_ledger_sdk.integrations import _stainless as stainless
    from agent_ledger_sdk.integrations import openai as integration

    plain = json.dumps(CHAT_BODY).encode()
    bodies = {
        (words, usage): _chat_stream_body(usage=usage, words=words) for words in (5, LONG_STREAM) for usage in (0, 1)
    }

    def answer(request: httpx.Request) -> httpx.Response:
        if b'"stream":true' in request.content:
            # As the API does: the usage chunk only when the request asks for it (the instrumented call does).
            words = LONG_STREAM if b'"max_tokens":1000' in request.content else 5
            content = bodies[(words, int(b'"include_usage":true' in request.content))]
            return httpx.Response(200, content=content, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, content=plain, headers={"content-type": "application/json"})

    client = openai.OpenAI(api_key="sk-bench", http_client=httpx.Client(transport=httpx.MockTransport(answer)))
    messages = [{"role": "user", "content": "How long do refunds take?"}]

    def create() -> None:
        client.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=100)

    def stream() -> None:
        for _ in client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True):
            pass

    def long_stream() -> None:
        for _ in client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True, max_tokens=1000):
            pass

    def burst(function: Callable[[], Any], calls: int = 10) -> float:
        started = time.thread_time()
        for _ in range(calls):
            function()
        return (time.thread_time() - started) / calls * 1e6

    ledger_client = AgentLedgerClient(api_key=ledger.key, base_url=ledger.url, max_queue_bytes=256 * MIB)
    results: dict[str, float] = {}
    try:
        with ledger_client.session("bench-openai"):
            openai_on = (ledger_client.instrument_openai, ledger_client.uninstrument_openai)
            anthropic_on = (ledger_client.instrument_anthropic, ledger_client.uninstrument_anthropic)
            for name, function, pairs, calls, (instrument, uninstrument) in (
                ("create", create, bursts, 10, openai_on),
                ("stream", stream, bursts, 10, openai_on),
                ("stream_long", long_stream, bursts // 5 + 3, 3, openai_on),
                ("anthropic_stream_long", _anthropic_stream(), bursts // 5 + 3, 3, anthropic_on),
            ):
                bare, differences = [], []
                for _ in range(pairs):
                    # Bare, instrumented, instrumented, bare: what drifts (caches after a flush) cancels out.
                    first = burst(function, calls)
                    instrument()
                    instrumented = burst(function, calls) + burst(function, calls)
                    uninstrument()
                    last = burst(function, calls)
                    differences.append((instrumented - first - last) / 2)
                    bare.append((first + last) / 2)
                    ledger_client.flush(60)
                results[name] = statistics.median(differences)
                results[f"{name}_bare"] = statistics.median(bare)
            ledger_client.instrument_openai()
            try:
                options = openai._models.FinalRequestOptions.construct(
                    method="post",
                    url="/chat/completions",
                    json_data={"model": "gpt-4o-mini", "messages": messages, "max_tokens": 100},
                )
                response = ChatCompletion.model_validate(CHAT_BODY)
                request = httpx.Request("POST", "https://api.openai.com/v1/chat/completions", content=b"{}")
                http_response = httpx.Response(200, content=plain, request=request)
                wrapper = integration.INTEGRATION._sync_request
                active = stainless._active

                def answer_ready(*args: Any, **kwargs: Any) -> Any:
                    active.get().raw = http_response  # as the client's _process_response hands it over
                    return response

                def wrapped_alone() -> None:
                    wrapper(answer_ready, client, (ChatCompletion, options), {"stream": False})

                results["wrapper"] = per_call_us(
                    wrapped_alone, BURST, bursts // 10 + 3, lambda: ledger_client.flush(60)
                )
            finally:
                ledger_client.uninstrument_openai()
    finally:
        stats = ledger_client.stats
        ledger_client.close()
        client.close()
    if stats.dropped or stats.failed or stats.rejected:
        raise RuntimeError(f"the provider run lost events: {stats}")
    return results


INLINE_SCRIPT = """
import sys, time
from agent_ledger_sdk import AgentLedgerClient
key, url, calls, ours = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "ours"
ledger = AgentLedgerClient(api_key=key, base_url=url, **({"batching": False} if ours else {}))
sid = ledger.start_session("inline")
event = lambda i: {"stepIndex": i, "toolName": "t", "toolInput": {"q": "x"}}
for i in range(50):
    ledger.log_tool_call(sid, event(i))
started = time.perf_counter()
for i in range(calls):
    ledger.log_tool_call(sid, event(i))
per_event = (time.perf_counter() - started) / calls * 1e6
tool_per_event = llm_per_call = float("nan")
if ours:
    @ledger.tool
    def t(q):
        return q
    with ledger.session("inline-tool"):
        started = time.perf_counter()
        for i in range(calls // 2):
            t("x")
        tool_per_event = (time.perf_counter() - started) / calls * 1e6  # two events per call
        started = time.perf_counter()
        for i in range(calls):
            with ledger.llm_call(provider="openai", model="gpt-4o-mini", prompt="q") as call:
                call.record(response="a", tokens_in=10, tokens_out=2)
        llm_per_call = (time.perf_counter() - started) / calls * 1e6
print(per_event, tool_per_event, llm_per_call)
"""


def inline_per_event(ledger: Ledger, calls: int, rounds: int) -> dict[str, float]:
    """µs per event sent inline: this SDK's log_tool_call and @tool, and the published 0.0.6 client's.

    Each runs in its own process against the same ledger, alternating, so that
    the ledger's own cost is shared and drift evens out.
    """
    target = Path(tempfile.mkdtemp(prefix="published-"))
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--target",
            str(target),
            "agent-ledger-sdk==0.0.6",
            "httpx<0.28",
        ],
        capture_output=True,
    ).returncode == 0 and sys.version_info >= (3, 10)
    samples: dict[str, list[float]] = {"ours": [], "ours_tool": [], "ours_llm": [], "published": []}
    try:
        for _ in range(rounds):
            for who in ("ours", "published") if installed else ("ours",):
                env = {**os.environ, "PYTHONPATH": str(target)} if who == "published" else dict(os.environ)
                out = subprocess.run(
                    [sys.executable, "-c", INLINE_SCRIPT, ledger.key, ledger.url, str(calls), who],
                    capture_output=True,
                    text=True,
                    env=env,
                    check=True,
                    timeout=STEP_TIMEOUT,
                ).stdout.split()
                samples[who].append(float(out[0]))
                if who == "ours":
                    samples["ours_tool"].append(float(out[1]))
                    samples["ours_llm"].append(float(out[2]))
    finally:
        shutil.rmtree(target, ignore_errors=True)  # the published client's install
    return {k: statistics.median(v) for k, v in samples.items() if v}


def end_to_end(ledger: Ledger, tool_calls: int) -> float:
    """Events per second from helpers in one process until the ledger has them all."""
    from agent_ledger_sdk import AgentLedgerClient

    # A queue that holds the whole burst: this measures delivery, not the overflow policy.
    client = AgentLedgerClient(api_key=ledger.key, base_url=ledger.url, max_queue_bytes=1024 * MIB)

    @client.tool
    def work(i: int) -> int:
        return i

    started = time.perf_counter()
    with client.session("throughput"):
        for i in range(tool_calls):
            work(i)
    left = client.flush(300)
    elapsed = time.perf_counter() - started
    stats = client.stats
    client.close()
    if left or stats.failed or stats.dropped:
        raise RuntimeError(f"the end-to-end run lost events: {stats}")
    return stats.sent / elapsed


def ledger_ingest(ledger: Ledger, batches: int, batch_size: int) -> float:
    """Events per second the ledger accepts over HTTP, batches of ``batch_size`` from one connection."""
    import httpx

    from agent_ledger_sdk._http import NO_DELAY

    headers = {"x-api-key": ledger.key}
    transport = httpx.HTTPTransport(socket_options=NO_DELAY)
    with httpx.Client(base_url=ledger.url, headers=headers, transport=transport) as http:
        session_id = http.post("/v1/sessions", json={"agentName": "ingest"}).json()["id"]
        # Each batch's steps follow the last one's, as an agent's do (see ledger_scale.StepBatches); made beforehand.
        bodies = [
            json.dumps(
                {
                    "sessionId": session_id,
                    "events": [
                        {"type": "tool_call", "stepIndex": i, "toolName": "t", "toolInput": {"q": i}}
                        for i in range(first, first + batch_size)
                    ],
                }
            ).encode()
            for first in range(0, batches * batch_size, batch_size)
        ]
        started = time.perf_counter()
        for body in bodies:
            http.post("/v1/events", content=body, headers={"content-type": "application/json"}).raise_for_status()
        return batches * batch_size / (time.perf_counter() - started)


BURST_SCRIPT = """
import json, sqlite3, sys, time
from agent_ledger_sdk import local

tool_calls = int(sys.argv[1])
with local.run() as ledger:
    client = ledger.client()  # the default settings

    @client.tool
    def work(i):
        return i

    started = time.perf_counter()
    with client.session("burst") as session:
        for i in range(tool_calls):
            work(i)
    recorded = time.perf_counter() - started
    left = client.flush(300)
    delivered = time.perf_counter() - started
    stats = client.stats
    session_id = session.id
    client.close()
    db = sqlite3.connect(str(ledger.db_path))
    (count,) = db.execute("SELECT count(*) FROM events WHERE session_id = ?", (session_id,)).fetchone()
    db.close()
print(json.dumps({"recorded_s": recorded, "delivered_s": delivered, "left": left, "count": count,
                  "sent": stats.sent, "dropped": stats.dropped, "failed": stats.failed}))
"""


def local_burst(tool_calls: int) -> dict[str, Any]:
    """A burst of ``tool_calls`` calls (two events each) against ``local.run()``, default client settings.

    Runs in a fresh process, where the ledger (``local.run()`` serves from a
    thread) shares the interpreter with the agent and its sender.
    """
    out = subprocess.run(
        [sys.executable, "-c", BURST_SCRIPT, str(tool_calls)],
        capture_output=True,
        text=True,
        check=True,
        timeout=STEP_TIMEOUT,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if result["count"] != 2 * tool_calls or result["left"]:
        raise RuntimeError(f"the ledger recorded {result['count']:,} events of {2 * tool_calls:,}: {result}")
    return result


DOWN_SCRIPT = """
import json, os, sys, time
from pathlib import Path
from agent_ledger_sdk import AgentLedgerClient

def status(field):  # bytes
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

workload, count, url, max_queue_bytes, journal, max_journal_bytes = sys.argv[1:]
count = int(count)
client = AgentLedgerClient(
    api_key="k", base_url=url, max_retries=0, timeout=0.5,
    max_queue_bytes=int(max_queue_bytes), max_journal_bytes=int(max_journal_bytes),
    journal=False if journal == "off" else journal,
)

if workload == "sessions":
    @client.tool
    def lookup(i):
        return i

    @client.session("short")
    def agent(i):
        return lookup(i)

    def loop():
        for i in range(count):
            agent(i)
else:
    @client.tool
    def fetch(i):
        return os.urandom(50_000).hex()  # a new 100 KB string each call

    def loop():
        with client.session("payloads"):
            for i in range(count):
                fetch(i)

def on_disk():
    return 0 if journal == "off" else sum(p.stat().st_size for p in Path(journal).iterdir())

before = status("VmRSS")
started = time.perf_counter()
loop()
seconds = time.perf_counter() - started
peak = status("VmHWM")
stats = client.stats
disk = on_disk()
client.close(0)  # the ledger is down: journal what is in memory, if there is a journal
closed = client.stats
print(json.dumps({
    "before": before, "peak": peak, "seconds": seconds, "stats": vars(stats), "disk": disk,
    "closed_peak": status("VmHWM"), "closed_stats": vars(closed), "closed_disk": on_disk(),
}))
sys.stdout.flush()
os._exit(0)  # not the exit handler: it would wait for the ledger
"""


FIRST_CALL_SCRIPT = """
import json, os, sys, time
from agent_ledger_sdk import AgentLedgerClient

key, url, sessions = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = AgentLedgerClient(api_key=key, base_url=url, max_retries=0, timeout=0.5, journal=False)

def block():
    with client.llm_call(provider="openai", model="gpt-4o-mini", prompt="q") as call:
        call.record(response="a", tokens_in=10, tokens_out=2)

with client.session("warm-up"):  # the sender thread, its imports and its connection
    block()
samples = []
for i in range(sessions):
    with client.session(f"agent-{i}"):  # an agent the client has not seen yet
        started = time.perf_counter()
        block()
        samples.append((time.perf_counter() - started) * 1e6)
print(json.dumps(samples))
sys.stdout.flush()
os._exit(0)  # not the exit handler: with the ledger down it would wait for it
"""


def first_llm_call_us(key: str, url: str, sessions: int) -> float:
    """Median µs of the first ``llm_call`` block of a session (a new agent each), in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", FIRST_CALL_SCRIPT, key, url, str(sessions)],
        capture_output=True,
        text=True,
        check=True,
        timeout=STEP_TIMEOUT,
    )
    return statistics.median(json.loads(out.stdout.strip().splitlines()[-1]))


def budgeted_calls(ledger: Ledger, calls: int) -> dict[str, float]:
    """µs of a budgeted ``llm_call`` block (reserve before, settle after) against the served ledger: p50 and p99.

    The agent has a daily budget large enough never to stop it; each block makes one
    reservation round trip before its body runs. The same blocks for an agent
    without a budget make none.
    """
    import httpx

    from agent_ledger_sdk import AgentLedgerClient

    httpx.put(
        f"{ledger.url}/v1/budgets/bench-budgeted",
        json={"dailyLimitUsd": 1_000_000},
        headers={"x-api-key": ledger.key},
        timeout=10,
    ).raise_for_status()
    client = AgentLedgerClient(api_key=ledger.key, base_url=ledger.url)
    result: dict[str, float] = {}
    for agent in ("bench-budgeted", "bench-unbudgeted"):
        samples: list[float] = []
        with client.session(agent):
            for _ in range(calls):
                started = time.perf_counter()
                with client.llm_call(provider="openai", model="gpt-4o-mini", prompt="hi", max_cost_usd=0.001) as call:
                    call.record(response="ok", tokens_in=1, tokens_out=1)
                samples.append((time.perf_counter() - started) * 1e6)
        samples.sort()
        result[f"{agent}-p50"] = samples[len(samples) // 2]
        result[f"{agent}-p99"] = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    client.flush(30)
    client.close()
    return result


def free_port() -> int:
    """A port with nothing listening on it (taken from the OS, then let go)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def ledger_down(workload: str, count: int, max_queue_bytes: int, max_journal_bytes: Optional[int]) -> dict[str, Any]:
    """Peak RSS (VmHWM) growth of a fresh process recording ``workload`` while the ledger is down.

    ``max_journal_bytes=None`` turns the journal off: memory is the only store.
    """
    with tempfile.TemporaryDirectory(prefix="agent-ledger-journal-") as scratch:
        journal = "off" if max_journal_bytes is None else str(Path(scratch) / "journal")
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                DOWN_SCRIPT,
                workload,
                str(count),
                f"http://127.0.0.1:{free_port()}",
                str(max_queue_bytes),
                journal,
                str(max_journal_bytes or 0),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=STEP_TIMEOUT,
        )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["growth"] = result["peak"] - result["before"]
    result["closed_growth"] = result["closed_peak"] - result["before"]
    return result


def compile_package() -> None:
    """Compile the package's bytecode, as pip does when it installs it.

    An editable install under ``PYTHONDONTWRITEBYTECODE=1`` (as on this machine)
    never does, and then every process compiles the source again, which changes
    what its imports cost and the memory it starts from. Every measure runs as
    an installed package would.
    """
    import agent_ledger_sdk

    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(Path(agent_ledger_sdk.__file__).parent)],
        capture_output=True,
        check=True,
    )


def import_ms(repeats: int) -> float:
    """Median ms of ``import agent_ledger_sdk`` in a fresh interpreter, its bytecode compiled (see compile_package)."""
    samples = []
    for _ in range(repeats):
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                "import time; t = time.perf_counter(); import agent_ledger_sdk; print((time.perf_counter() - t) * 1000)",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        samples.append(float(out.stdout))
    return statistics.median(samples)


def _us(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f} µs"
    return f"{0.0 if abs(value) < 0.005 else value:.2f} µs"  # never print "-0.00"


def _mib(value: float) -> str:
    return f"{value / MIB:.1f} MiB"


def down_rows(workload: str, what: str, count: int, queue_bytes: int, journal_bytes: int) -> list[tuple[str, str, str]]:
    """The ledger-down rows of one workload: memory only, then with a journal (and its ``close()``)."""
    limit = queue_bytes + 32 * MIB  # the bound, plus the interpreter's own overheads
    where = f"ledger down, {count:,} {what}"
    memory = ledger_down(workload, count, queue_bytes, None)
    journaled = ledger_down(workload, count, queue_bytes, journal_bytes)
    s, j, c = memory["stats"], journaled["stats"], journaled["closed_stats"]
    return [
        (
            f"{where}, {_mib(queue_bytes)} queue, no journal: peak RSS growth",
            f"{_mib(memory['growth'])} (from {_mib(memory['before'])}); "
            f"{s['queued']:,} events queued, {s['dropped']:,} dropped; {memory['seconds']:.1f} s",
            f"<= {_mib(limit)}",
        ),
        (
            f"{where}, {_mib(queue_bytes)} queue, {_mib(journal_bytes)} journal: peak RSS growth",
            f"{_mib(journaled['growth'])}; journal {_mib(journaled['disk'])} on disk; "
            f"{j['queued']:,} events queued, {j['dropped']:,} dropped, {j['failed']:,} failed; "
            f"{journaled['seconds']:.1f} s",
            f"<= {_mib(limit)}, 0 dropped",
        ),
        (
            f"{where}, {_mib(queue_bytes)} queue, {_mib(journal_bytes)} journal: then `close()`",
            f"{_mib(journaled['closed_growth'])} peak RSS growth; journal {_mib(journaled['closed_disk'])} on disk; "
            f"{c['queued']:,} events queued, {c['dropped']:,} dropped",
            f"<= {_mib(limit)}, 0 dropped",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer iterations and smaller loads")
    args = parser.parse_args()
    quick = args.quick
    calls, repeats, big_bursts = (2_000, 5, 3) if quick else (20_000, 7, 20)
    # Never this machine's own local key or journals, nor a journal left by an earlier run.
    compile_package()
    home = tempfile.TemporaryDirectory(prefix="agent-ledger-home-")
    os.environ["AGENT_LEDGER_HOME"] = home.name
    load = os.getloadavg()[0]

    rows: list[tuple[str, str, str]] = []
    ledger = Ledger()
    try:
        for mode in ("background", "disabled"):
            measured = overhead(ledger, mode, calls, repeats, big_bursts)
            target = {"background": "<= 5 µs", "disabled": "<= 0.3 µs"}[mode]
            rows.append((f"`@tool` call over the plain call, {mode}", _us(measured["tool"]), target))
            rows.append((f"`llm_call` block over the plain call, {mode}", _us(measured["llm_call"]), target))
            if mode == "background":
                rows.append(
                    (
                        "`@tool` call, back to back with the sender saturated",
                        _us(measured["tool_saturated"]),
                        "-",
                    )
                )
                rows.append(
                    (
                        "`llm_call` block, 50 KB prompt as one string, background",
                        _us(measured["llm_call_text"]),
                        "-",
                    )
                )
                rows.append(
                    (
                        "`llm_call` block, 50 KB prompt as 100 chat messages of 500 chars, background",
                        _us(measured["llm_call_chat"]),
                        "-",
                    )
                )
        traced = otel_overhead(ledger, calls, repeats)
        rows.append(
            ("the same GenAI span made directly with the OTel SDK, over the plain call", _us(traced["span"]), "-")
        )
        rows.append(
            ("`@tool` call over the plain call, background, `otel=` on", _us(traced["tool"]), "~ span + background")
        )
        rows.append(("`llm_call` block over the plain call, background, `otel=` on", _us(traced["llm_call"]), "-"))
        provider = provider_overhead(ledger, 30 if quick else 200)
        for what, key, target in (
            ("OpenAI `chat.completions.create`, instrumented over uninstrumented (mocked transport, ", "create", 20),
            ("OpenAI streamed chat completion read to the end, instrumented over uninstrumented (", "stream", 20),
            (
                f"OpenAI streamed chat completion of {LONG_STREAM} chunks read to the end, instrumented over "
                "uninstrumented (",
                "stream_long",
                None,
            ),
            (
                f"Anthropic streamed message of {LONG_STREAM} text deltas read to the end, instrumented over "
                "uninstrumented (",
                "anthropic_stream_long",
                None,
            ),
        ):
            label = f"{what}{provider[f'{key}_bare']:.0f} µs bare)"
            rows.append((label, _us(provider[key]), f"<= {target} µs" if target else "-"))
        rows.append(
            ("OpenAI integration's request wrapper alone, around a ready response", _us(provider["wrapper"]), "-")
        )
        first_sessions = 3 if quick else 10
        rows.append(
            (
                "`llm_call` block, first of a session (a new agent), ledger up",
                _us(first_llm_call_us(ledger.key, ledger.url, first_sessions)),
                "<= 5 µs",
            )
        )
        rows.append(
            (
                "`llm_call` block, first of a session (a new agent), ledger down",
                _us(first_llm_call_us("k", f"http://127.0.0.1:{free_port()}", first_sessions)),
                "<= 5 µs",
            )
        )
        budgeted = budgeted_calls(ledger, 200 if quick else 2000)
        rows.append(
            (
                "`llm_call` block, agent with a budget (one reservation round trip), p50 / p99",
                f"{budgeted['bench-budgeted-p50']:.0f} / {budgeted['bench-budgeted-p99']:.0f} µs",
                "one loopback round trip",
            )
        )
        rows.append(
            (
                "`llm_call` block, agent without a budget, p50 / p99",
                f"{budgeted['bench-unbudgeted-p50']:.1f} / {budgeted['bench-unbudgeted-p99']:.1f} µs",
                "no request",
            )
        )
        inline = inline_per_event(ledger, 300 if quick else 1000, 3 if quick else 5)
        published = inline.get("published")
        rows.append(
            (
                "inline, µs per event: `log_tool_call`",
                f"{inline['ours']:.0f} µs",
                f"<= published ({published:.0f} µs)" if published else "published client unavailable",
            )
        )
        rows.append(
            (
                "inline, µs per event: `@tool` (two events a call)",
                f"{inline['ours_tool']:.0f} µs",
                f"<= published ({published:.0f} µs)" if published else "-",
            )
        )
        rows.append(
            ("`@tool` call over the plain call, inline (two round trips)", f"{2 * inline['ours_tool']:.0f} µs", "-")
        )
        rows.append(
            ("`llm_call` block over the plain call, inline (one round trip)", f"{inline['ours_llm']:.0f} µs", "-")
        )
        rows.append(
            (
                "end to end, helpers to ledger, one process",
                f"{end_to_end(ledger, 20_000 if quick else 100_000):,.0f} events/s",
                ">= 20,000 events/s",
            )
        )
        rows.append(
            (
                "ledger ingest over HTTP, batches of 100",
                f"{ledger_ingest(ledger, 50 if quick else 300, 100):,.0f} events/s",
                "-",
            )
        )
    finally:
        ledger.close()

    tool_calls = 5_000 if quick else 50_000
    burst = local_burst(tool_calls)
    events = 2 * tool_calls
    what = f"burst of {events:,} tool events, `local.run()`, default settings"
    rows.append(
        (
            f"{what}: recorded (caller side)",
            f"{burst['recorded_s']:.2f} s ({burst['recorded_s'] / tool_calls * 1e6:.1f} µs a call)",
            "-",
        )
    )
    rows.append(
        (
            f"{what}: delivered (`flush()` returned)",
            f"{burst['delivered_s']:.2f} s ({events / burst['delivered_s']:,.0f} events/s)",
            "-",
        )
    )
    rows.append((f"{what}: events the ledger recorded", f"{burst['count']:,} events", f"{events:,} events"))

    if quick:
        rows += down_rows("sessions", "short sessions", 40_000, 4 * MIB, 32 * MIB)
        rows += down_rows("payloads", "tool calls returning 100 KB", 200, 4 * MIB, 32 * MIB)
    else:
        rows += down_rows("sessions", "short sessions", 400_000, 32 * MIB, 256 * MIB)
        rows += down_rows("payloads", "tool calls returning 100 KB", 2_000, 32 * MIB, 256 * MIB)
    rows.append(("`import agent_ledger_sdk`", f"{import_ms(10):.0f} ms", "<= 130 ms"))
    home.cleanup()

    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} cores, load average {load:.1f} at the start, medians\n")
    print("| measure | result | target |")
    print("| --- | --- | --- |")
    for row in rows:
        print(f"| {row[0]} | {row[1]} | {row[2]} |")


if __name__ == "__main__":
    main()
