"""Background sending: batches in order, flush, overflow, retries, fork and interpreter exit."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from agent_ledger_sdk import AgentLedgerClient, AsyncAgentLedgerClient
from agent_ledger_sdk._sender import MAX_BATCH_SIZE, WAKE_EVENTS, _Stall

from .conftest import BASE_URL
from .subprocesses import free_port, run_script


def routes(api: respx.MockRouter) -> dict[str, respx.Route]:
    return {
        "start": api.post("/v1/sessions").respond(201, json={"id": "sess-1"}),
        "events": api.post("/v1/events").respond(202),
        "end": api.post("/v1/sessions/sess-1/end").respond(200),
        # A ledger without budget reservations (the hosted API today): probed once, then not again.
        "reservations": api.post("/v1/reservations").respond(404, json={"error": "Cannot POST /v1/reservations"}),
    }


def test_events_keep_their_order_across_batches(api: respx.MockRouter) -> None:
    r = routes(api)
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL)

    @ledger.tool
    def work(i: int) -> int:
        return i

    with ledger.session("ordered"):
        for i in range(1000):
            work(i)
    assert ledger.flush(10) == 0
    batches = [json.loads(c.request.content)["events"] for c in r["events"].calls]
    assert len(batches) >= 2000 // MAX_BATCH_SIZE
    assert all(len(b) <= MAX_BATCH_SIZE for b in batches)  # batches grow to MAX_BATCH_SIZE when the queue is deep
    sent = [e for b in batches for e in b]
    assert [(e["stepIndex"], e["type"]) for e in sent] == [
        (i, kind) for i in range(1000) for kind in ("tool_call", "tool_result")
    ]
    assert r["end"].call_count == 1
    assert r["end"].calls.last.request.content  # the end comes after every event
    assert ledger.stats.sent == 2000
    ledger.close()


def test_a_deep_queue_goes_in_few_large_requests_and_a_shallow_one_at_once(api: respx.MockRouter) -> None:
    """Batches are as deep as the queue (up to MAX_BATCH_SIZE): a request costs the sender the same CPU at any size."""
    r = routes(api)
    release = threading.Event()

    def held(request: httpx.Request) -> httpx.Response:  # the queue fills while the session's start waits
        release.wait(10)
        return httpx.Response(201, json={"id": "sess-1"})

    r["start"].mock(side_effect=held)
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL)

    @ledger.tool
    def work(i: int) -> int:
        return i

    with ledger.session("deep"):
        for i in range(3 * MAX_BATCH_SIZE // 2):  # 1.5 x MAX_BATCH_SIZE calls: 3 x MAX_BATCH_SIZE events
            work(i)
    release.set()
    assert ledger.flush(10) == 0
    sizes = [len(json.loads(c.request.content)["events"]) for c in r["events"].calls]
    assert sum(sizes) == 3 * MAX_BATCH_SIZE
    assert max(sizes) == MAX_BATCH_SIZE and len(sizes) <= 4, sizes
    # A few events, well under WAKE_EVENTS: sent within the flush interval, in one request.
    before = r["events"].call_count
    with ledger.session("shallow"):
        for i in range(10):
            work(i)
    deadline = time.monotonic() + 5
    while r["events"].call_count == before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert WAKE_EVENTS > 10
    assert [len(json.loads(c.request.content)["events"]) for c in r["events"].calls[before:]] == [20]
    ledger.close()


def test_a_flood_is_encoded_while_its_requests_are_in_flight_one_at_a_time_in_order(api: respx.MockRouter) -> None:
    """With a deep queue, the sender builds the next request while the ledger works on the one before: the
    requests still go one at a time and in order, a failed one is sent again first (same key), none is lost.

    The test drives the delivery itself, with the sender's drain lock held, from the moment a flood is
    queued and its first request built, as the sender thread does when events keep coming (whether they
    arrive in time for a given request is the thread scheduler's to say)."""
    r = routes(api)
    in_flight, most, keys, threads = [0], [0], [], set()
    lock = threading.Lock()

    def slow(request: httpx.Request) -> httpx.Response:
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        keys.append(request.headers["idempotency-key"])
        threads.add(threading.current_thread().name)
        time.sleep(0.02)  # the ledger's time, during which the next batch is encoded
        with lock:
            in_flight[0] -= 1
        if len(keys) == 2:
            return httpx.Response(503, json={"error": "busy"})  # the second request fails once
        return httpx.Response(202, json={"accepted": len(json.loads(request.content)["events"]), "costUsd": 0})

    r["events"].mock(side_effect=slow)
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL, max_queue_size=100_000)

    @ledger.tool
    def work(i: int) -> int:
        return i

    sender = ledger._instrumentation.sender
    with sender._drain_lock:  # the sender thread waits for it: the flood is delivered from here
        with ledger.session("flood"):
            for i in range(5 * MAX_BATCH_SIZE):
                work(i)
        sender._build_units(MAX_BATCH_SIZE)  # one request built; the rest of the flood still queued
        while sender._units or sender._queue:
            try:
                sender._deliver_units()
            except _Stall:
                pass  # the 503: its unit stays first, and goes again now
            if not sender._units:
                sender._build_units(len(sender._queue))
    assert ledger.flush(30) == 0
    assert most[0] == 1  # never two requests at once
    assert "agent-ledger-request" in threads  # some were made beside the encoding
    assert keys[1] == keys[2]  # the failed one went again first, as it was
    accepted = [json.loads(c.request.content)["events"] for c in r["events"].calls]
    del accepted[1]  # the failed try
    sent = [(e["stepIndex"], e["type"]) for batch in accepted for e in batch]
    assert sent == [(i, kind) for i in range(5 * MAX_BATCH_SIZE) for kind in ("tool_call", "tool_result")]
    assert ledger.stats.sent == 10 * MAX_BATCH_SIZE
    ledger.close()


def test_a_users_http_client_gets_the_whole_client_path_and_ours_the_transport(api: respx.MockRouter) -> None:
    """The user's http_client: its event hooks, auth and headers apply to every request. Our own client goes
    straight to its transport, with the client's timeout on each request."""
    routes(api)
    seen: list[str] = []

    def auth(request: httpx.Request) -> httpx.Request:
        request.headers["x-mesh-auth"] = "token"
        return request

    with httpx.Client(event_hooks={"request": [lambda request: seen.append(request.url.path)]}, auth=auth) as http:
        ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL, http_client=http)
        with ledger.session("hooked") as session:
            session.log("tick")
        assert ledger.flush(10) == 0
        ledger.close()
    assert seen[0] == "/v1/sessions" and "/v1/events" in seen and seen[-1].endswith("/end")
    assert all(call.request.headers["x-mesh-auth"] == "token" for call in api.calls)

    before = len(api.calls)
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL, timeout=7.5)
    with ledger.session("own") as session:
        session.log("tick")
    assert ledger.flush(10) == 0
    ledger.close()
    requests = [call.request for call in api.calls[before:]]
    assert [r.url.path for r in requests][-1].endswith("/end")
    assert all(r.extensions["timeout"] == httpx.Timeout(7.5).as_dict() for r in requests)


def test_flush_drains_everything_and_close_flushes(api: respx.MockRouter) -> None:
    r = routes(api)
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL)
    with ledger.session("flushed") as s:
        for i in range(250):
            s.log("tick", i=i)
        assert ledger.stats.queued > 0 or ledger.stats.sent > 0
    assert ledger.flush(10) == 0
    assert ledger.stats.queued == 0
    assert ledger.stats.sent == 250
    with ledger.session("closed") as s:
        s.log("tick")
    assert ledger.close() == 0  # close() flushes and says what was left
    assert ledger.stats.sent == 251
    with ledger.session("after-close") as s:  # a closed client's helpers keep working
        s.log("tick")
    assert ledger.close() == 0
    assert ledger.stats.sent == 252
    assert r["end"].call_count == 3


def test_the_caller_never_waits_for_the_network(api: respx.MockRouter) -> None:
    release = threading.Event()

    def slow(request: httpx.Request) -> httpx.Response:
        release.wait(10)
        return httpx.Response(201, json={"id": "sess-1"})

    api.post("/v1/sessions").mock(side_effect=slow)
    api.post("/v1/events").respond(202)
    api.post("/v1/sessions/sess-1/end").respond(200)
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL)

    @ledger.tool
    def work() -> int:
        return 1

    started = time.perf_counter()
    with ledger.session("patient"):
        for _ in range(100):
            work()
    assert time.perf_counter() - started < 1.0  # the ledger is still answering the session start
    release.set()
    assert ledger.flush(10) == 0
    assert ledger.stats.sent == 200
    ledger.close()


def _dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # a port with nothing listening


def test_a_dead_ledger_keeps_memory_bounded_and_spills_to_the_journal(tmp_path: Path) -> None:
    ledger = AgentLedgerClient(
        api_key="k", base_url=_dead_url(), max_queue_size=500, max_retries=0, journal=tmp_path / "journal"
    )

    @ledger.tool
    def work(i: int) -> int:
        return i

    with ledger.session("offline"):
        for i in range(5000):
            assert work(i) == i
        assert ledger._instrumentation.sender.queued <= 500 + 2
    ledger.flush(0.2)
    stats = ledger.stats
    assert (stats.sent, stats.dropped, stats.failed) == (0, 0, 0)  # nothing lost: it waits
    assert stats.journaled_bytes > 9000 * 100  # the events past the memory bound are on disk
    assert sorted(p.suffix for p in (tmp_path / "journal").iterdir()) == [".jsonl"]
    ledger.close(timeout=0)


def test_a_dead_ledger_without_a_journal_drops_past_the_bound_counts_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ledger = AgentLedgerClient(api_key="k", base_url=_dead_url(), max_queue_size=500, max_retries=0, journal=False)

    @ledger.tool
    def work(i: int) -> int:
        return i

    with ledger.session("offline"):
        for i in range(5000):
            assert work(i) == i
    ledger.flush(0.2)
    stats = ledger.stats
    assert stats.sent == 0
    assert stats.dropped >= 9000
    assert stats.dropped + stats.queued == 10_000
    lost = [r for r in caplog.records if "events are being dropped" in r.getMessage()]
    assert len(lost) == 1
    assert lost[0].levelno == logging.WARNING
    ledger.close(timeout=0)


def test_the_sync_client_never_blocks_an_event_loop_even_inline(api: respx.MockRouter) -> None:
    loop_threads: list[threading.Thread] = []
    http_threads: list[threading.Thread] = []
    paths: list[str] = []

    def record(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        if request.url.path == "/v1/reservations":
            # The budget check must finish before the LLM call runs: a sync `with` waits for it
            # (once here: this ledger has no reservations). Async code uses `async with` for that.
            return httpx.Response(404, json={"error": "Cannot POST /v1/reservations"})
        http_threads.append(threading.current_thread())
        if request.url.path == "/v1/sessions":
            return httpx.Response(201, json={"id": "sess-1"})
        return httpx.Response(202)

    api.route().mock(side_effect=record)
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL, batching=False)

    @ledger.tool
    def sync_tool() -> int:
        return 1

    @ledger.session("async-agent")
    async def agent() -> int:
        loop_threads.append(threading.current_thread())
        with ledger.llm_call(provider="p", model="m") as call:
            call.record(response="r", tokens_in=1, tokens_out=1)
        return sync_tool()

    assert asyncio.run(agent()) == 1
    assert ledger.flush(10) == 0
    assert paths[0] == "/v1/sessions"
    assert paths[-1] == "/v1/sessions/sess-1/end"  # after every event
    assert set(paths[1:-1]) - {"/v1/reservations"} == {"/v1/events"}  # (a probe for budget reservations)
    assert loop_threads[0] not in http_threads
    ledger.close()


def test_the_async_client_sends_in_the_background_from_its_own_thread(api: respx.MockRouter) -> None:
    r = routes(api)
    ledger = AsyncAgentLedgerClient(api_key="k", base_url=BASE_URL)

    @ledger.tool
    def sync_tool() -> int:
        return 1

    @ledger.session("async-agent")
    async def agent() -> int:
        return sync_tool()

    async def main() -> None:
        assert await agent() == 1
        assert await ledger.aflush(10) == 0
        assert ledger.stats.sent == 2
        await ledger.aclose()

    asyncio.run(main())
    assert len([e for c in r["events"].calls for e in json.loads(c.request.content)["events"]]) == 2
    assert r["end"].called


# -- against a real local ledger ----------------------------------------------------


@pytest.fixture
def ledger_url_and_key(tmp_path: Path) -> Any:
    pytest.importorskip("starlette", reason="needs the server extra")
    from agent_ledger_sdk.local import run

    with run(db=tmp_path / "ledger.db") as running:
        yield running


@pytest.mark.integration
def test_a_retried_batch_is_recorded_once(ledger_url_and_key: Any) -> None:
    ledger = ledger_url_and_key
    real = httpx.HTTPTransport()
    lost: list[str] = []

    class LosesFirstEventsAnswer(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = real.handle_request(request)
            if request.url.path == "/v1/events" and not lost:
                lost.append(request.headers["idempotency-key"])
                response.read()
                return httpx.Response(502, json={"error": "proxy lost the answer"})
            return response

    client = AgentLedgerClient(api_key=ledger.api_key, base_url=ledger.url, transport=LosesFirstEventsAnswer())

    @client.tool
    def work(i: int) -> int:
        return i

    with client.session("retried-batch"):
        for i in range(50):
            work(i)
    assert client.flush(10) == 0
    client.close()
    real.close()
    assert lost  # the first batch really was applied, then retried
    (summary,) = ledger.sessions("retried-batch")
    assert summary["eventCount"] == 100
    assert client.stats.sent == 100


@pytest.mark.integration
def test_a_flood_past_a_small_queue_ends_each_session_after_its_last_event(
    ledger_url_and_key: Any, tmp_path: Path
) -> None:
    """Four threads flood a 4 MiB queue (13,000 events or so), so that events spill to the journal while the sender builds a few
    requests at a time: what stays queued is older than what was journaled, so it goes first. (It once went
    after the journal, where the sessions' ends were: their last events were refused, the session ended.)"""
    ledger = ledger_url_and_key
    client = AgentLedgerClient(
        api_key=ledger.api_key, base_url=ledger.url, max_queue_bytes=4 * 1024 * 1024, journal=tmp_path / "journal"
    )

    @client.tool
    def work(i: int) -> int:
        return i

    def produce(k: int) -> None:
        with client.session(f"spilling-{k}"):
            for i in range(10_000):
                work(i)

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert client.flush(60) == 0
    stats = client.stats
    client.close()
    assert (stats.failed, stats.dropped) == (0, 0)
    for k in range(4):
        (summary,) = ledger.sessions(f"spilling-{k}")
        assert summary["eventCount"] == 20_000 and summary["status"] == "success"


@pytest.mark.integration
def test_nothing_queued_is_lost_at_a_normal_exit(ledger_url_and_key: Any) -> None:
    ledger = ledger_url_and_key
    result = run_script(
        """
        import agent_ledger_sdk

        @agent_ledger_sdk.tool
        def work(i):
            return i

        @agent_ledger_sdk.session("short-lived")
        def job():
            for i in range(300):
                work(i)

        @agent_ledger_sdk.session("abandoned")
        def stream():
            work(-1)
            yield 1
            yield 2

        job()
        gen = stream()
        next(gen)  # left open: the exit hook ends its session
        # no flush, no close: the exit hook sends everything
        """,
        ledger.env(),
    )
    assert result.returncode == 0, result.stderr
    (job,) = ledger.sessions("short-lived")
    assert job["eventCount"] == 600
    assert job["status"] == "success"
    (abandoned,) = ledger.sessions("abandoned")
    assert abandoned["status"] == "error"
    assert abandoned["errorMessage"] == "Session still open at interpreter exit"
    assert abandoned["eventCount"] == 2


def test_the_exit_hook_is_bounded_when_the_ledger_hangs() -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        result = run_script(
            """
            import agent_ledger_sdk

            @agent_ledger_sdk.session("hung")
            def job():
                return 42

            print(job())
            """,
            {"AGENT_LEDGER_BASE_URL": url, "AGENT_LEDGER_API_KEY": "k"},
        )
        elapsed = time.monotonic() - started
    assert result.returncode == 0
    assert result.stdout.strip() == "42"
    assert elapsed < 15
    assert "were not delivered before exit; they wait in the journal" in result.stderr


@pytest.mark.integration
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_sends_its_own_events(ledger_url_and_key: Any) -> None:
    ledger = ledger_url_and_key
    result = run_script(
        """
        import os, sys
        import agent_ledger_sdk

        @agent_ledger_sdk.tool
        def work(i):
            return i

        @agent_ledger_sdk.session("parent")
        def parent_job():
            for i in range(10):
                work(i)

        parent_job()
        agent_ledger_sdk.flush()          # the parent's sender thread is running now
        pid = os.fork()
        if pid == 0:
            @agent_ledger_sdk.session("child")
            def child_job():
                for i in range(20):
                    work(i)
            child_job()
            left = agent_ledger_sdk.flush(10)
            os._exit(0 if left == 0 and agent_ledger_sdk.get_client().stats.sent == 40 else 3)
        _, status = os.waitpid(pid, 0)
        parent_job()
        sys.exit(os.waitstatus_to_exitcode(status))
        """,
        ledger.env(),
    )
    assert result.returncode == 0, result.stderr
    assert [s["eventCount"] for s in ledger.sessions("child")] == [40]
    assert sorted(s["eventCount"] for s in ledger.sessions("parent")) == [20, 20]


def test_a_flood_from_one_session_does_not_hold_back_another() -> None:
    """A sender pass takes what is queued when it starts: a partial batch waits one pass at most."""
    delivered: dict[str, float] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if request.url.path == "/v1/sessions":
            return httpx.Response(201, json={"id": body["agentName"]})
        if request.url.path == "/v1/events":
            delivered.setdefault(body["sessionId"], time.monotonic())
        return httpx.Response(202, json={})

    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL, transport=httpx.MockTransport(handler))
    stop = threading.Event()

    def flood() -> None:
        with ledger.session("noisy") as noisy:
            while not stop.is_set():
                noisy.log("tick")

    thread = threading.Thread(target=flood)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while "noisy" not in delivered and time.monotonic() < deadline:
            time.sleep(0.01)
        with ledger.session("quiet") as quiet:
            quiet.log("hello")
            queued_at = time.monotonic()
        while "quiet" not in delivered and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join()
    assert "quiet" in delivered, "the quiet session's event never went out during the flood"
    assert delivered["quiet"] - queued_at < 3.0  # a pass or two, not the whole flood
    ledger.close(timeout=30)


def test_sessions_waiting_to_start_are_started_together_and_a_stalled_start_goes_again() -> None:
    """Starts queued together are made at once (a thread each): a start is a round trip, and with busy agent
    threads each return of the sender from its socket waits for the GIL. One that fails (503) stays and is
    made again, with its key; the others are not made twice."""
    arrived = threading.Barrier(4, timeout=5)  # four starts at once, or it breaks
    keys: list[tuple[str, str]] = []
    failed_once: set[str] = set()
    lock = threading.Lock()

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if request.url.path == "/v1/sessions":
            name = body["agentName"]
            with lock:
                keys.append((name, request.headers["idempotency-key"]))
                first = name == "agent-2" and name not in failed_once
                failed_once.add(name)
            if len(keys) <= 4:
                arrived.wait()
            if first:
                return httpx.Response(503, json={"error": "busy"})
            return httpx.Response(201, json={"id": name})
        return httpx.Response(202, json={})

    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL, transport=httpx.MockTransport(handler))
    sender = ledger._instrumentation.sender

    def agent(k: int) -> None:  # a thread each: four sessions, none within another
        with ledger.session(f"agent-{k}") as session:
            session.log("tick")

    with sender._drain_lock:  # the four starts are queued before the sender looks
        threads = [threading.Thread(target=agent, args=(k,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert ledger.flush(20) == 0
    assert ledger.stats.sent == 4
    names = [name for name, _ in keys]
    assert sorted(names[:4]) == [f"agent-{k}" for k in range(4)]  # all four at once: the barrier held
    assert names[4:] == ["agent-2"]  # only the failed one went again...
    assert keys[4][1] == next(key for name, key in keys[:4] if name == "agent-2")  # ...with its key
    ledger.close()


def test_a_flood_from_agents_taking_turns_goes_in_full_batches_in_order(api: respx.MockRouter) -> None:
    """Agents that take turns queue their events in runs; a flood built a few thousand items at a time still
    goes in full batches (a session's request built and not sent takes its next events), in each session's
    order. The first request is never extended: a 503 on it sends it again as it was, with its key."""
    r = routes(api)
    r["start"].mock(
        side_effect=lambda request: httpx.Response(201, json={"id": json.loads(request.content)["agentName"]})
    )
    bodies: list[tuple[str, bytes]] = []

    def events(request: httpx.Request) -> httpx.Response:
        bodies.append((request.headers["idempotency-key"], request.content))
        if len(bodies) == 2:
            return httpx.Response(503, json={"error": "busy"})
        return httpx.Response(202, json={})

    r["events"].mock(side_effect=events)
    api.post(url__regex=r"/v1/sessions/.*/end").respond(200)
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL)
    sender = ledger._instrumentation.sender
    runs, run = 4 * MAX_BATCH_SIZE // 250, 250  # each session: 4 full batches, queued in runs of 250 events
    with sender._drain_lock:
        sessions = [ledger.session(f"turns-{k}") for k in range(4)]
        handles = [session.__enter__() for session in sessions]
        for i in range(runs):
            for k, handle in enumerate(handles):
                for j in range(run):
                    handle.log("tick", k=k, i=i * run + j)
        sender._deliver_starts()
        sender._build_units(1000)
        first = sender._units[0]
        frozen = (first.key, list(first.encoded or ()))
        while sender._queue:
            sender._build_units(1000)  # a run of each session at a time: each extends its own request
        assert (first.key, first.encoded) == frozen  # the first request took nothing more
        sizes = [len(unit.encoded or ()) for unit in sender._units]
        # 32 builds of four runs each: without extending, 128 requests of 250 events.
        assert sizes[0] == 250 and max(sizes) == MAX_BATCH_SIZE and len(sizes) <= 24, sizes
        assert sizes.count(MAX_BATCH_SIZE) >= 12, sizes  # the last ones smaller: the limit falls with the queue
        while sender._units:
            try:
                sender._deliver_units()
            except _Stall:
                pass  # the 503: its unit stays first, and goes again now, as it was
    for session in reversed(sessions):  # nested: the last entered ends first
        session.__exit__(None, None, None)
    assert ledger.flush(10) == 0
    assert bodies[1] == bodies[2]  # the failed request went again first: same key, same events
    del bodies[1]
    sent: dict[str, list[int]] = {}
    for _, content in bodies:
        body = json.loads(content)
        assert len(body["events"]) <= MAX_BATCH_SIZE
        sent.setdefault(body["sessionId"], []).extend(e["i"] for e in body["events"])
    assert sent == {f"turns-{k}": list(range(4 * MAX_BATCH_SIZE)) for k in range(4)}
    assert ledger.stats.sent == 16 * MAX_BATCH_SIZE
    ledger.close()


def test_the_first_request_of_a_flood_goes_before_the_flood_is_encoded(api: respx.MockRouter) -> None:
    """A deep queue is built a few thousand items at a time, the rest while the requests are in flight: the
    ledger gets its first batch at once, not after the whole queue is encoded."""
    r = routes(api)
    left_at_first: list[int] = []
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL)
    sender = ledger._instrumentation.sender

    def events(request: httpx.Request) -> httpx.Response:
        if not left_at_first:
            left_at_first.append(len(sender._queue))
        return httpx.Response(202, json={})

    r["events"].mock(side_effect=events)

    @ledger.tool
    def work(i: int) -> int:
        return i

    with sender._drain_lock:
        with ledger.session("flood"):
            for i in range(10 * MAX_BATCH_SIZE):
                work(i)
    assert ledger.flush(30) == 0
    assert ledger.stats.sent == 20 * MAX_BATCH_SIZE
    assert left_at_first and left_at_first[0] >= 10 * MAX_BATCH_SIZE  # most of the flood was still queued
    ledger.close()


def test_a_request_says_when_it_is_written_and_its_answer_awaited() -> None:
    """``on_sent`` is called once the request is on the wire and its answer awaited (the sender then encodes
    the next request without taking the GIL from the request's own writes): before the ledger answers."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from agent_ledger_sdk._base_client import BaseClient
    from agent_ledger_sdk._http import SyncHTTP, SyncLedgerIO

    told = threading.Event()
    seen: list[bool] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(told.wait(5))  # the answer waits until the client said it awaits it
            body = b'{"accepted":1}'
            self.send_response(202)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = BaseClient(api_key="k", base_url=f"http://127.0.0.1:{server.server_address[1]}")
        calls: list[str] = []

        def on_sent() -> None:
            calls.append(threading.current_thread().name)
            told.set()

        ours = SyncHTTP(config)
        try:
            assert SyncLedgerIO(ours, 0).send_events("s", ['{"type":"x"}'], "key-1", on_sent) == {"accepted": 1}
        finally:
            ours.close()
        assert seen == [True] and calls == [threading.current_thread().name]
        told.clear()
        with httpx.Client() as http:  # the user's client: its own path, no trace hook of ours
            user = SyncLedgerIO(SyncHTTP(config, http_client=http), 0)
            quiet: list[int] = []
            threading.Timer(0.2, told.set).start()
            user.send_events("s", ['{"type":"x"}'], "key-2", lambda: quiet.append(1))
            assert quiet == []
    finally:
        server.shutdown()
        server.server_close()


def test_a_session_started_within_another_waits_for_its_parents_start() -> None:
    """Starts made together: a child's start carries its parent's id, so it is made after the parent's."""
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if request.url.path == "/v1/sessions":
            bodies.append(body)
            time.sleep(0.05)  # a child made at the same time would not know the parent's id yet
            return httpx.Response(201, json={"id": f"id-{body['agentName']}"})
        return httpx.Response(202, json={})

    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL, transport=httpx.MockTransport(handler))
    sender = ledger._instrumentation.sender
    with sender._drain_lock:  # all three starts are queued before the sender looks
        with ledger.session("sibling") as sibling, ledger.session("parent") as parent:
            with ledger.session("child") as child:
                child.log("tick")
            parent.log("tick")
        sibling.log("tick")
    assert ledger.flush(10) == 0
    assert {body["agentName"]: body.get("parentSessionId") for body in bodies} == {
        "sibling": None,
        "parent": "id-sibling",
        "child": "id-parent",
    }
    ledger.close()


def test_tasks_taking_turns_in_short_runs_keep_each_sessions_order() -> None:
    """Sixteen sessions in runs of 100 events (asyncio tasks), delivered by the sender thread: whichever
    request goes first, each session's events arrive in order, once."""
    sent: dict[str, list[int]] = {}
    lock = threading.Lock()

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if request.url.path == "/v1/sessions":
            return httpx.Response(201, json={"id": body["agentName"]})
        if request.url.path == "/v1/events":
            time.sleep(0.002)
            with lock:
                sent.setdefault(body["sessionId"], []).extend(e["i"] for e in body["events"])
        return httpx.Response(202, json={})

    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL, transport=httpx.MockTransport(handler))

    async def task(k: int) -> None:
        async with ledger.session(f"task-{k}") as session:
            for i in range(3000):
                session.log("tick", i=i)
                if i % 100 == 99:
                    await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(*(task(k) for k in range(16)))

    asyncio.run(main())
    assert ledger.flush(30) == 0
    assert sent == {f"task-{k}": list(range(3000)) for k in range(16)}
    ledger.close()


def test_one_sessions_flood_is_built_a_request_or_two_ahead_not_more(api: respx.MockRouter) -> None:
    """What is built ahead is encoded while the agent's threads want the GIL: one session needs its next
    request ready, not the lookahead that turn-taking sessions need to fill theirs."""
    from agent_ledger_sdk._sender import BUILD_EVENTS

    r = routes(api)
    ledger = AgentLedgerClient(api_key="k", base_url=BASE_URL, max_queue_size=100_000)
    sender = ledger._instrumentation.sender
    ahead: list[int] = []

    def events(request: httpx.Request) -> httpx.Response:
        ahead.append(sum(len(u.encoded or ()) for u in list(sender._units)[1:]))
        time.sleep(0.01)  # the ledger's time, during which the next requests are built
        return httpx.Response(202, json={})

    r["events"].mock(side_effect=events)

    @ledger.tool
    def work(i: int) -> int:
        return i

    with sender._drain_lock:  # the flood is delivered from here, as the sender thread does
        with ledger.session("flood"):
            for i in range(10 * MAX_BATCH_SIZE):
                work(i)
        sender._build_units()
        while sender._units:
            sender._deliver_units()
            if not sender._units and sender._queue:
                sender._build_units()
    assert ledger.flush(30) == 0
    assert ledger.stats.sent == 20 * MAX_BATCH_SIZE
    assert max(ahead) <= 2 * MAX_BATCH_SIZE + BUILD_EVENTS, ahead
    ledger.close()
