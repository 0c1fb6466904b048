"""The async client sends everything through the transport or http_client it was given, helpers included."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import ssl
import threading
import time
import warnings
from typing import Any

import httpx
import pytest

from agent_ledger_sdk import AsyncAgentLedgerClient


class Recorder(httpx.AsyncBaseTransport):
    """A fake ledger behind an async transport: answers like the real one and keeps every request."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.loops: set[int] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.loops.add(id(asyncio.get_running_loop()))
        self.requests.append(request)
        await request.aread()
        if request.url.path == "/v1/sessions":
            return httpx.Response(201, json={"id": f"s{len(self.requests)}"})
        if request.url.path == "/v1/events" or request.url.path.endswith("/end"):
            return httpx.Response(202, json={})
        return httpx.Response(404, json={"error": f"No route {request.method} {request.url.path}"})

    def paths(self) -> list[str]:
        return [r.url.path for r in self.requests]

    def events(self) -> list[dict[str, Any]]:
        return [e for r in self.requests if r.url.path == "/v1/events" for e in json.loads(r.content)["events"]]


def agent(ledger: AsyncAgentLedgerClient) -> Any:
    @ledger.tool
    def lookup(x: int) -> int:
        return x

    @ledger.tool
    async def fetch(x: int) -> int:
        return x

    @ledger.session("async-agent")
    async def run() -> int:
        value = lookup(1) + await fetch(2)
        async with ledger.llm_call(provider="openai", model="gpt-4o-mini", prompt="p") as call:
            call.record(response="r", tokens_in=1, tokens_out=1)
        return value

    return run


@pytest.mark.parametrize("batching", [True, False])
def test_every_request_goes_through_the_users_async_transport(batching: bool) -> None:
    transport = Recorder()

    async def main() -> int:
        ledger = AsyncAgentLedgerClient(
            api_key="k", base_url="https://ledger.invalid", transport=transport, batching=batching
        )
        result: int = await agent(ledger)()
        assert await ledger.aflush(10) == 0
        await ledger.aclose()
        return result

    assert asyncio.run(main()) == 3
    assert transport.paths()[0] == "/v1/sessions"
    assert transport.paths()[-1].endswith("/end")
    assert [e["type"] for e in transport.events()] == [
        "tool_call",
        "tool_result",
        "tool_call",
        "tool_result",
        "llm_call",
    ]
    assert len(transport.loops) == 1  # all on the user's event loop, where the transport's connections live


def test_every_request_goes_through_the_users_http_client() -> None:
    transport = Recorder()

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport, headers={"x-proxy": "mesh"}) as http:
            ledger = AsyncAgentLedgerClient(api_key="k", base_url="https://ledger.invalid", http_client=http)
            await agent(ledger)()
            assert await ledger.aflush(10) == 0
            await ledger.aclose()

    asyncio.run(main())
    paths = transport.paths()
    assert paths.count("/v1/reservations") == 1  # one probe: this fake ledger has no budgets (404), then never again
    rest = [p for p in paths if p != "/v1/reservations"]
    assert rest[0] == "/v1/sessions" and rest[-1] == "/v1/sessions/s1/end"
    assert set(rest[1:-1]) == {"/v1/events"}
    assert all(r.headers["x-proxy"] == "mesh" for r in transport.requests)


def test_events_queued_after_the_loop_is_gone_still_go_through_the_transport() -> None:
    transport = Recorder()
    ledger = AsyncAgentLedgerClient(api_key="k", base_url="https://ledger.invalid", transport=transport)

    async def main() -> None:
        await agent(ledger)()  # no flush: the loop ends with events queued

    asyncio.run(main())
    assert ledger.flush(10) == 0  # delivered on a loop of the SDK's own, through the same transport
    assert [e["type"] for e in transport.events()][-1] == "llm_call"
    assert transport.paths()[-1].endswith("/end")
    assert ledger.stats.sent == 5


@pytest.mark.integration
def test_without_a_transport_of_the_users_delivery_neither_waits_for_nor_runs_on_the_users_loop(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """The SDK's own HTTP is bound to no loop, so the sender thread delivers with a blocking client of its own:
    events reach the ledger while the user's loop is busy (CPU-bound code, a blocking call in a coroutine), and
    the loop spends none of its time on them. A bridge to the loop would wait for it to come back: its patience
    is set here longer than the busy spell, so that only delivery off the loop passes."""
    pytest.importorskip("starlette")
    from agent_ledger_sdk._http import LoopBridge
    from agent_ledger_sdk.local import run

    monkeypatch.setattr(LoopBridge, "LOOP_START_WAIT", 60.0)
    with run(db=tmp_path / "ledger.db") as ledger:
        client = ledger.async_client()

        @client.tool
        async def lookup(x: int) -> int:
            return x

        def recorded() -> int:
            return sum(int(session["eventCount"]) for session in ledger.sessions("busy"))

        async def main() -> float:
            async with client.session("busy"):
                assert await lookup(1) == 1
                started = time.monotonic()
                while recorded() < 2 and time.monotonic() - started < 20:
                    time.sleep(0.01)  # the loop is held: no other task or callback of it runs meanwhile
                busy_for = time.monotonic() - started
            assert await client.aflush(10) == 0
            await client.aclose()
            return busy_for

        busy_for = asyncio.run(main())
        assert recorded() == 2
        assert busy_for < 20  # delivered while the loop was held, not after
        (session,) = ledger.sessions("busy")
        assert session["status"] == "success"


@pytest.mark.integration
@pytest.mark.parametrize("side_by_side", [False, True], ids=["one-after-another", "threads-at-once"])
def test_one_async_client_serves_many_event_loops(tmp_path: Any, side_by_side: bool) -> None:
    """httpx's connections belong to the loop that opened them. A module-level client used by each test of a
    suite (a loop per test), by a script's several ``asyncio.run``, or by worker threads that each run a loop
    at once: each loop gets connections of its own, closed as it shuts down, and ``aclose()`` closes the
    rest."""
    pytest.importorskip("starlette")
    from agent_ledger_sdk.local import run

    with run(db=tmp_path / "ledger.db") as ledger:
        client = ledger.async_client()

        async def one(number: int) -> str:
            session_id = await client.start_session("many-loops")
            for step in range(5):
                await client.log_tool_call(
                    session_id, {"toolName": "lookup", "stepIndex": step, "toolInput": {"run": number}}
                )
                await asyncio.sleep(0.001)  # the other threads' loops run meanwhile
            await client.end_session(session_id, "success")
            return session_id

        ids: list[str] = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            if side_by_side:
                threads = [threading.Thread(target=lambda n=n: ids.append(asyncio.run(one(n)))) for n in range(4)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(60)
            else:
                ids += [asyncio.run(one(number)) for number in range(3)]
            asyncio.run(client.aclose())
            gc.collect()
        assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []  # none left open
        assert len(set(ids)) == (4 if side_by_side else 3)
        for session_id in ids:
            recorded = ledger.session(session_id)
            assert recorded["status"] == "success"
            assert [event["stepIndex"] for event in recorded["events"]] == [0, 1, 2, 3, 4]


def test_an_async_client_loads_the_tls_certificates_once_for_all_its_loops(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the certificate store takes about 20 ms: the async client and its sender share one TLS context,
    and each new event loop's connections use it rather than loading their own."""
    from agent_ledger_sdk import APIConnectionError

    loads: list[object] = []
    load = ssl.SSLContext.load_verify_locations

    def counted(context: ssl.SSLContext, *args: Any, **kwargs: Any) -> Any:
        loads.append(args or kwargs)
        return load(context, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
    with socket.socket() as closed:  # a port nothing listens on: each request fails at once
        closed.bind(("127.0.0.1", 0))
        url = f"https://127.0.0.1:{closed.getsockname()[1]}"
    client = AsyncAgentLedgerClient(api_key="k", base_url=url, max_retries=0)

    async def one() -> None:
        with pytest.raises(APIConnectionError):
            await client.start_session("tls")

    for _ in range(3):
        asyncio.run(one())
    asyncio.run(client.aclose())
    assert len(loads) == 1
