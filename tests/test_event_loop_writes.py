"""Small writes on the server's event loop (``app.INLINE_BYTES``, ``Store.write_now``): a batch of a few events
or a reservation runs on the loop when the SQLite store can write at once, saving the hand-off to another
thread; anything larger, or any write that would wait, goes to the store's writer thread (SQLite: one write at
a time, ``offload.WriterThread``) or, for a store that writes side by side (PostgreSQL), to the pool, so that
the loop never waits."""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest

pytest.importorskip("starlette", reason="the local ledger needs the server extra")

from agent_ledger_sdk.local.app import INLINE_BYTES, create_app
from agent_ledger_sdk.local.server import BackgroundServer
from agent_ledger_sdk.local.service import LedgerService

from .ledger_fixtures import database, sqlite_service
from .test_sqlite_writes import write_of_another_thread


def tool_event(step: int, size: int = 10) -> dict[str, Any]:
    return {"type": "tool_call", "stepIndex": step, "toolName": "search", "toolInput": {"q": "x" * size}}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[LedgerService, httpx.Client]]:
    with sqlite_service(tmp_path / "ledger.db") as service:
        key = service.create_key("loop").secret
        with BackgroundServer(create_app(service)) as server:
            with httpx.Client(base_url=server.url, headers={"x-api-key": key}, timeout=30) as http:
                yield service, http


def threads_of(service: LedgerService, name: str) -> list[str]:
    """Record the thread each call of the service's ``name`` runs on (the call itself runs as it would)."""
    seen: list[str] = []
    original: Callable[..., Any] = getattr(service, name)

    def spied(*args: Any, **kwargs: Any) -> Any:
        seen.append(threading.current_thread().name)
        return original(*args, **kwargs)

    setattr(service, name, spied)
    return seen


def events_in(http: httpx.Client, session_id: str) -> list[dict[str, Any]]:
    return list(http.get(f"/v1/sessions/{session_id}").json()["events"])


def test_a_small_batch_and_a_reservation_run_on_the_loop_and_a_large_batch_on_the_writer_thread(
    served: tuple[LedgerService, httpx.Client],
) -> None:
    service, http = served
    batches = threads_of(service, "log_events_request")
    reservations = threads_of(service, "reserve_request")
    session_id = http.post("/v1/sessions", json={"agentName": "loop"}).json()["id"]
    small = {"sessionId": session_id, "events": [tool_event(0)]}
    assert len(json.dumps(small)) <= INLINE_BYTES
    assert http.post("/v1/events", json=small).status_code == 202
    large = {"sessionId": session_id, "events": [tool_event(1, size=INLINE_BYTES)]}
    assert http.post("/v1/events", json=large).status_code == 202
    answer = http.post(
        "/v1/reservations", json={"sessionId": session_id, "provider": "openai", "model": "gpt-4o", "maxCostUsd": 1}
    )
    assert answer.status_code == 200 and answer.json()["budgeted"] is False  # no budget: nothing held
    assert batches[0] == "agent-ledger-server"  # BackgroundServer's loop thread
    assert batches[1].startswith("agent-ledger-writer-")
    assert reservations == ["agent-ledger-server"]
    assert [e["stepIndex"] for e in events_in(http, session_id)] == [0, 1]


def test_errors_on_the_loop_are_the_same_answers(served: tuple[LedgerService, httpx.Client]) -> None:
    _service, http = served
    session_id = http.post("/v1/sessions", json={"agentName": "loop"}).json()["id"]
    bad_key = http.post("/v1/events", json={"sessionId": session_id, "events": []}, headers={"x-api-key": "al_nope"})
    assert bad_key.status_code == 401 and "Invalid or revoked API key" in bad_key.json()["error"]
    not_json = http.post("/v1/events", content=b"{", headers={"content-type": "application/json"})
    assert not_json.status_code == 400
    bad_event = http.post(
        "/v1/events", json={"sessionId": session_id, "events": [{"type": "tool_call", "stepIndex": -1}]}
    )
    assert bad_event.status_code == 400 and bad_event.json()["rejected"][0]["index"] == 0
    assert http.put("/v1/budgets/loop", json={"dailyLimitUsd": 0.001}).status_code == 200
    over = {"sessionId": session_id, "provider": "openai", "model": "gpt-4o", "maxCostUsd": 0.002}
    refused = http.post("/v1/reservations", json=over)
    assert refused.status_code == 429
    assert events_in(http, session_id) == []
    # The refusals left the store free: the next small write runs (on the loop) and is recorded.
    assert http.post("/v1/events", json={"sessionId": session_id, "events": [tool_event(0)]}).status_code == 202
    assert len(events_in(http, session_id)) == 1


def test_a_small_write_while_another_writes_goes_to_the_writer_thread_and_the_loop_keeps_answering(
    served: tuple[LedgerService, httpx.Client],
) -> None:
    service, http = served
    batches = threads_of(service, "log_events_request")
    session_id = http.post("/v1/sessions", json={"agentName": "loop"}).json()["id"]
    with write_of_another_thread(service.store) as release, concurrent.futures.ThreadPoolExecutor(1) as pool:
        posted = pool.submit(http.post, "/v1/events", json={"sessionId": session_id, "events": [tool_event(0)]})
        with httpx.Client(base_url=str(http.base_url), timeout=5) as other:
            for _ in range(5):  # the loop answers while the batch waits for the store
                assert other.get("/health").status_code == 200
        assert not posted.done(), "the batch was answered while another write held the store"
        release.set()
        assert posted.result(30).status_code == 202
    assert batches and batches[0].startswith("agent-ledger-writer-")
    assert len(events_in(http, session_id)) == 1


def test_large_batches_from_many_clients_are_written_one_after_another_on_one_thread(
    served: tuple[LedgerService, httpx.Client],
) -> None:
    """SQLite makes one write at a time: the app hands every large batch to the same one thread, never to
    several that would wait for each other at the store's lock, and every batch is recorded whole."""
    service, http = served
    batches = threads_of(service, "log_events_request")
    sessions = [http.post("/v1/sessions", json={"agentName": f"many-{n}"}).json()["id"] for n in range(4)]

    def post(session_id: str, first: int) -> int:
        events = [tool_event(step, size=INLINE_BYTES // 8) for step in range(first, first + 10)]
        return http.post("/v1/events", json={"sessionId": session_id, "events": events}).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = [pool.submit(post, s, 10 * n) for s in sessions for n in range(5)]
        assert [a.result(60) for a in answers] == [202] * 20
    assert len(batches) == 20 and len(set(batches)) == 1 and batches[0].startswith("agent-ledger-writer-")
    for session_id in sessions:
        assert sorted(e["stepIndex"] for e in events_in(http, session_id)) == list(range(50))


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_a_reservation_goes_before_the_batches_waiting_for_the_writer(tmp_path: Path) -> None:
    """An LLM call waits for its reservation, a batch of events for nobody: on the writer thread, a reservation
    goes before the batches already waiting (not before the write under way)."""
    with sqlite_service(tmp_path / "ledger.db") as service:
        key = service.create_key("urgent").secret
        app = create_app(service)
        waiting = app.state.api._writer._pool  # the writer thread's queues
        order: list[str] = []
        for name, label in (("log_events_request", "batch"), ("reserve_request", "reservation")):
            original = getattr(service, name)

            def spied(*args: Any, _original: Any = original, _label: str = label, **kwargs: Any) -> Any:
                order.append(_label)
                return _original(*args, **kwargs)

            setattr(service, name, spied)
        with (
            BackgroundServer(app) as server,
            httpx.Client(base_url=server.url, headers={"x-api-key": key}, timeout=30) as http,
        ):
            session_id = http.post("/v1/sessions", json={"agentName": "urgent"}).json()["id"]
            batch = {"sessionId": session_id, "events": [tool_event(0, size=INLINE_BYTES)]}
            reservation = {"sessionId": session_id, "provider": "openai", "model": "gpt-4o", "maxCostUsd": 1}
            with write_of_another_thread(service.store) as release, concurrent.futures.ThreadPoolExecutor(4) as pool:
                batches = [pool.submit(http.post, "/v1/events", json=batch)]
                wait_for(lambda: order == ["batch"], "the first batch to hold the writer thread")
                batches += [pool.submit(http.post, "/v1/events", json=batch) for _ in range(2)]
                wait_for(lambda: waiting._jobs.qsize() == 2, "two batches waiting for the writer thread")
                reserved = pool.submit(http.post, "/v1/reservations", json=reservation)
                wait_for(lambda: waiting._urgent.qsize() == 1, "the reservation waiting for the writer thread")
                release.set()
                assert reserved.result(30).status_code == 200
                assert [b.result(30).status_code for b in batches] == [202] * 3
        assert order == ["batch", "reservation", "batch", "batch"]


def test_a_store_that_writes_side_by_side_gets_its_writes_in_the_pool(request: pytest.FixtureRequest) -> None:
    """PostgreSQL's writes wait on a server, and run side by side: they go to the pool, not to one thread."""
    from agent_ledger_sdk.local.store import open_store

    with database(request, "postgresql") as url:
        store = open_store(url)
        assert store.one_writer is False
        service = LedgerService(store)
        try:
            key = service.create_key("pool").secret
            batches = threads_of(service, "log_events_request")
            with (
                BackgroundServer(create_app(service)) as server,
                httpx.Client(base_url=server.url, headers={"x-api-key": key}, timeout=30) as http,
            ):
                session_id = http.post("/v1/sessions", json={"agentName": "pool"}).json()["id"]
                for step in range(2):  # small and large: no write on the loop either
                    event = tool_event(step, size=INLINE_BYTES * step)
                    assert http.post("/v1/events", json={"sessionId": session_id, "events": [event]}).status_code == 202
                assert [e["stepIndex"] for e in events_in(http, session_id)] == [0, 1]
        finally:
            store.close()
    assert len(batches) == 2 and all(name.startswith("agent-ledger-worker-") for name in batches)


# -- the key of a request, kept within write_now while the file has not changed ----------------------------


def authenticate_now(service: LedgerService, secret: str) -> Any:
    """What a request on the event loop sees: the key checked within write_now."""
    with service.store.write_now() as now:
        assert now
        return service.authenticate(secret)


def test_a_key_revoked_by_this_process_is_refused_by_the_next_request(tmp_path: Path) -> None:
    with sqlite_service(tmp_path / "ledger.db") as service:
        key = service.create_key("a")
        assert authenticate_now(service, key.secret) == "default"
        assert authenticate_now(service, key.secret) == "default"  # kept: the file did not change
        service.revoke_key(key.key.id)
        assert authenticate_now(service, key.secret) is None


def test_a_key_revoked_or_made_by_another_process_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with sqlite_service(path) as service, sqlite_service(path) as cli:  # two connections: as two processes
        key = service.create_key("a")
        assert authenticate_now(service, key.secret) == "default"
        later = cli.create_key("b", workspace="other")
        assert authenticate_now(service, later.secret) == "other"
        assert authenticate_now(service, later.secret) == "other"
        cli.revoke_key(key.key.id)
        assert authenticate_now(service, key.secret) is None
        unknown = key.secret.replace(key.key.id, "k" * len(key.key.id))
        assert authenticate_now(service, unknown) is None


def test_a_price_set_by_either_process_is_what_the_next_request_pays(tmp_path: Path) -> None:
    from decimal import Decimal

    from agent_ledger_sdk.local.pricing import Rates

    path = tmp_path / "ledger.db"
    with sqlite_service(path) as service, sqlite_service(path) as cli:
        key = service.create_key("a")
        versions = []
        for who in (service, cli, service):
            who.set_price("default", "m", Rates(Decimal(len(versions) + 1), Decimal(1)))
            workspace = authenticate_now(service, key.secret)
            versions.append(workspace.prices_version)
            assert service.prices(workspace)["m"].input_per_mtok == Decimal(len(versions))
        assert versions == [1, 2, 3]
