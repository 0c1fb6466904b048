"""Reserve, then settle: the reservations API of the local ledger over real HTTP, and its atomicity."""

from __future__ import annotations

import datetime
import json
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest

pytest.importorskip("starlette", reason="the local ledger needs the server extra")

from genai_prices import Usage, calc_price

from agent_ledger_sdk.local import LocalLedger
from agent_ledger_sdk.local.app import create_app
from agent_ledger_sdk.local.pricing import PriceBook
from agent_ledger_sdk.local.records import BudgetExceeded, ReservationRequest
from agent_ledger_sdk.local.server import BackgroundServer
from agent_ledger_sdk.local.service import LedgerService
from agent_ledger_sdk.local.store import open_store

from .ledger_fixtures import backend_ledger, sqlite_service

pytestmark = pytest.mark.integration

PRICES = {"test/flat": {"input_per_mtok": 1.0, "output_per_mtok": 1.0}}  # N tokens cost N micro-dollars


@pytest.fixture(scope="module")
def prices_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prices") / "prices.json"
    path.write_text(json.dumps(PRICES))
    return path


ledger = backend_ledger(PRICES)


def exact(response: httpx.Response) -> Any:
    return json.loads(response.text, parse_float=Decimal)


def start(http: httpx.Client, agent: str, **context: Any) -> str:
    return str(http.post("/v1/sessions", json={"agentName": agent, **context}).json()["id"])


def reserve(
    http: httpx.Client, session_id: str, *, key: str | None = None, model: str = "flat", **body: Any
) -> httpx.Response:
    if "estimate" not in body and "maxCostUsd" not in body:
        body["estimate"] = {"tokensIn": 1000, "tokensOut": 0}
    headers = {"Idempotency-Key": key} if key else None
    return http.post(
        "/v1/reservations",
        json={"sessionId": session_id, "provider": "test", "model": model, **body},
        headers=headers,
    )


def settle(
    http: httpx.Client, session_id: str, tokens: int, reservation_id: str | None, **extra: Any
) -> httpx.Response:
    event = {"type": "llm_call", "provider": "test", "model": "flat", "tokensIn": tokens, "tokensOut": 0, **extra}
    if reservation_id is not None:
        event["reservationId"] = reservation_id
    return http.post("/v1/events", json={"sessionId": session_id, "events": [event]})


def reserved_of(http: httpx.Client, agent: str) -> Decimal:
    (entry,) = [b for b in exact(http.get("/v1/budgets"))["budgets"] if b["agentName"] == agent]
    amount: Decimal = entry["reservedUsd"]
    return Decimal(amount)


# -- the contract ------------------------------------------------------------------------------------


def test_an_agent_without_a_budget_reserves_nothing(http: httpx.Client, ledger: LocalLedger) -> None:
    session_id = start(http, "unbudgeted")
    response = reserve(http, session_id)
    assert response.status_code == 200
    assert response.json() == {"budgeted": False, "ttlSeconds": 60}
    assert reserve(http, session_id, model="no-such-model").status_code == 200  # not even priced
    assert "unbudgeted" not in {b["agentName"] for b in http.get("/v1/budgets").json()["budgets"]}


def test_a_reservation_that_fits_is_granted_and_held(http: httpx.Client, ledger: LocalLedger) -> None:
    ledger.set_budget("reserver", 0.01)
    session_id = start(http, "reserver")
    before = datetime.datetime.now(datetime.timezone.utc)
    response = http.post(
        "/v1/reservations",
        json={
            "sessionId": session_id,
            "provider": "openai",
            "model": "gpt-4o-mini",
            "estimate": {"tokensIn": 3000, "tokensOut": 1000},
            "stepIndex": 4,
        },
    )
    assert response.status_code == 201, response.text
    body = exact(response)
    assert set(body) == {"budgeted", "id", "reservedUsd", "expiresAt", "ttlSeconds"}
    assert (body["budgeted"], body["ttlSeconds"]) == (True, 60)
    assert body["id"].startswith("res_")
    expected = calc_price(Usage(input_tokens=3000, output_tokens=1000), model_ref="gpt-4o-mini", provider_id="openai")
    assert body["reservedUsd"] == expected.total_price
    expires = datetime.datetime.fromisoformat(body["expiresAt"].replace("Z", "+00:00"))
    assert datetime.timedelta(seconds=599) < expires - before < datetime.timedelta(seconds=601)
    assert reserved_of(http, "reserver") == expected.total_price
    (entry,) = [b for b in exact(http.get("/v1/budgets"))["budgets"] if b["agentName"] == "reserver"]
    assert entry["remainingBudgetUsd"] == Decimal("0.01") - expected.total_price
    by_cost = reserve(http, session_id, maxCostUsd=0.002)
    assert by_cost.status_code == 201
    assert exact(by_cost)["reservedUsd"] == Decimal("0.002")


def test_a_reservation_that_does_not_fit_gets_the_published_429(http: httpx.Client, ledger: LocalLedger) -> None:
    ledger.set_budget("tight", 0.0025)
    session_id = start(http, "tight")
    held = reserve(http, session_id, maxCostUsd=0.001).json()["id"]
    assert settle(http, session_id, 1000, held).status_code == 202
    assert reserve(http, session_id, maxCostUsd=0.001).status_code == 201  # in flight
    refused = reserve(http, session_id, estimate={"tokensIn": 800, "tokensOut": 0})
    assert refused.status_code == 429
    body = exact(refused)
    assert body["details"] == {
        "agentName": "tight",
        "dailyLimitUsd": Decimal("0.0025"),
        "spentTodayUsd": Decimal("0.002"),  # spent, and held by the call in flight
        "attemptedCostUsd": Decimal("0.0008"),
        "projectedCostUsd": Decimal("0.0028"),
        "remainingBudgetUsd": Decimal("0.0005"),
        "reservedUsd": Decimal("0.001"),
        "budget": "agent-daily",
        "resetsAt": body["resetsAt"],
    }
    assert body["budget"] == "agent-daily"
    assert body["resetsAt"].endswith("T00:00:00Z")
    assert "$0.001 spent today (UTC) and $0.001 reserved by calls in flight" in body["error"]
    assert reserve(http, session_id, estimate={"tokensIn": 500, "tokensOut": 0}).status_code == 201  # an exact fit


def test_an_unpriced_model_under_a_budget_is_refused_before_it_runs(http: httpx.Client, ledger: LocalLedger) -> None:
    ledger.set_budget("unpriced-reserver", 1)
    session_id = start(http, "unpriced-reserver")
    for body in ({"estimate": {"tokensIn": 10, "tokensOut": 10}}, {"maxCostUsd": 0.5}):
        refused = reserve(http, session_id, model="secret-model", **body)
        assert refused.status_code == 422
        error = refused.json()
        assert error["error"].startswith("No price for model 'secret-model' (provider 'test')")
        assert "agent-ledger prices set test/secret-model" in error["error"]
        assert "PUT /v1/prices/test/secret-model" in error["error"]
        assert "allowUnpricedModels" in error["error"]
        assert (error["code"], error["model"], error["provider"]) == ("unpriced_model", "secret-model", "test")


def test_with_unpriced_models_allowed_a_reservation_holds_the_callers_bound(ledger: LocalLedger) -> None:
    key = ledger.service.create_key("allowing", "allowing-team").secret
    with httpx.Client(base_url=ledger.url, headers={"x-api-key": key}) as http:
        http.put("/v1/settings", json={"allowUnpricedModels": True})
        http.put("/v1/budgets/bound", json={"dailyLimitUsd": 1})
        session_id = start(http, "bound")
        granted = reserve(http, session_id, model="secret-model", maxCostUsd=0.25)
        assert exact(granted)["reservedUsd"] == Decimal("0.25")
        event = {"type": "llm_call", "provider": "test", "model": "secret-model", "tokensIn": 5, "tokensOut": 5}
        sent = http.post(
            "/v1/events", json={"sessionId": session_id, "events": [{**event, "reservationId": granted.json()["id"]}]}
        )
        assert sent.status_code == 202
        (recorded,) = exact(http.get(f"/v1/sessions/{session_id}"))["events"]
        assert (recorded["costStatus"], recorded["costUsd"]) == ("estimated", Decimal("0.25"))
        assert "no price for the model: charged the $0.25 it reserved" in recorded["pricingNote"]
        assert exact(reserve(http, session_id, model="secret-model"))["reservedUsd"] == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"provider": "test", "model": "flat"}, 'Send either "estimate"'),
        (
            {"provider": "test", "model": "flat", "maxCostUsd": 1, "estimate": {"tokensIn": 1, "tokensOut": 1}},
            "not both",
        ),
        ({"provider": "test", "model": "flat", "estimate": {"tokensIn": -1, "tokensOut": 1}}, '"estimate.tokensIn"'),
        ({"provider": "test", "model": "flat", "estimate": [1, 2]}, '"estimate" must be an object'),
        ({"provider": "test", "model": "flat", "maxCostUsd": -0.5}, '"maxCostUsd" must be a non-negative number'),
        ({"provider": "test", "estimate": {"tokensIn": 1, "tokensOut": 1}}, '"model" is required'),
        (
            {"provider": "test", "model": "flat", "maxCostUsd": 1, "stepIndex": "3"},
            '"stepIndex" must be a non-negative integer',
        ),
    ],
)
def test_a_bad_reservation_is_a_400_that_says_how_to_fix_it(
    http: httpx.Client, ledger: LocalLedger, body: dict[str, Any], message: str
) -> None:
    ledger.set_budget("bad-reserver", 1)
    session_id = start(http, "bad-reserver")
    response = http.post("/v1/reservations", json={"sessionId": session_id, **body})
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_an_unknown_or_ended_session_cannot_reserve(http: httpx.Client, ledger: LocalLedger) -> None:
    assert reserve(http, "no-such-session").status_code == 404
    ledger.set_budget("ended-reserver", 1)
    session_id = start(http, "ended-reserver")
    http.post(f"/v1/sessions/{session_id}/end", json={"status": "success"})
    ended = reserve(http, session_id)
    assert ended.status_code == 409
    assert "already ended" in ended.json()["error"]


@pytest.mark.parametrize("second", ["valid body", "bad body"])
def test_a_key_revoked_elsewhere_after_it_reserved_is_refused_before_anything_is_written(
    ledger: LocalLedger, second: str
) -> None:
    # On PostgreSQL the server reads a key it has seen in the reservation's own transaction (one round trip
    # less): a key revoked by another process (a replica, the CLI) since must still be refused, first of all.
    new_key = ledger.service.create_key("short-lived", ledger.workspace)
    agent = f"revoked-reserver-{second}"
    ledger.set_budget(agent, 1)
    with httpx.Client(base_url=ledger.url, headers={"x-api-key": new_key.secret}) as http:
        session_id = start(http, agent)
        assert reserve(http, session_id, maxCostUsd=0.25).status_code == 201
        with LedgerService(open_store(ledger.db_path)) as elsewhere:
            elsewhere.revoke_key(new_key.key.id)
        body: dict[str, Any] = {"maxCostUsd": 0.25} if second == "valid body" else {"maxCostUsd": "lots"}
        refused = reserve(http, session_id, key=f"after-revocation-{second}", **body)
    assert refused.status_code == 401, refused.text
    assert "Invalid or revoked API key" in refused.json()["error"]
    with httpx.Client(base_url=ledger.url, headers={"x-api-key": ledger.api_key}) as http:
        assert reserved_of(http, agent) == Decimal("0.25")  # the first one only
        retried = reserve(http, session_id, key=f"after-revocation-{second}", maxCostUsd=0.25)
        assert retried.status_code == 201, retried.text  # nothing was remembered under that key either
        assert reserved_of(http, agent) == Decimal("0.5")


@pytest.fixture
def loop_ledger(
    postgres_url: str, prices_file: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Any, list[str]]]:
    """A PostgreSQL ledger whose every hop from the event loop to a thread is counted (by what it runs)."""
    import agent_ledger_sdk.local.app as app_module
    from agent_ledger_sdk.local import run

    hops: list[str] = []
    real = app_module.run_off_loop

    async def counted(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(function, "__name__", repr(function)))
        return await real(function, *args, **kwargs)

    monkeypatch.setattr(app_module, "run_off_loop", counted)
    with run(db=postgres_url, prices=prices_file) as opened:
        opened.set_budget("on-loop", 0.01)  # 10 reservations of 1000 tokens
        yield opened, hops


def test_a_postgresql_reservation_in_the_plain_case_makes_no_hop_to_a_thread(
    loop_ledger: tuple[Any, list[str]],
) -> None:
    """A key this process knows, prices it keeps: the reservation is checked, priced and made on the server's
    event loop (PostgresStore.reserve_on_loop), and what it holds is held. A refusal is worded in a thread."""
    ledger, hops = loop_ledger
    with httpx.Client(base_url=ledger.url, headers={"x-api-key": ledger.api_key}) as http:
        session_id = start(http, "on-loop")
        assert reserve(http, session_id, key="first").status_code == 201  # the key is read: in a thread
        hops.clear()
        for n in range(8):
            granted = reserve(http, session_id, key=f"on-loop-{n}")
            assert granted.status_code == 201, granted.text
        assert hops == []
        assert reserved_of(http, "on-loop") == Decimal("0.009")
        hops.clear()
        large = reserve(http, session_id, key="large", note="x" * 5000)  # checked in a thread, as large bodies are
        assert large.status_code == 201, large.text
        assert hops == ["reserve"]
        assert reserved_of(http, "on-loop") == Decimal("0.01")
        hops.clear()
        refused = reserve(http, session_id, key="one-too-many")
        assert refused.status_code == 429, refused.text
        assert hops == ["reserve_planned"]
        replayed = reserve(http, session_id, key="on-loop-3")  # a retry: the reply first sent, nothing more held
        assert replayed.status_code == 201 and replayed.headers.get("idempotent-replayed") == "true", replayed.headers
        assert reserved_of(http, "on-loop") == Decimal("0.01")


def test_the_event_loops_connection_killed_costs_one_request_then_is_made_anew(
    loop_ledger: tuple[Any, list[str]], postgres_url: str
) -> None:
    """Its backend terminated (a restart, an administrator): the reservation that meets it fails as a pool's
    connection would (a 500: the SDK retries with the same Idempotency-Key), nothing is held twice, and the next
    is made on the loop again with a new connection."""
    from .ledger_fixtures import raw_rows

    ledger, hops = loop_ledger
    store = ledger.service.store
    with httpx.Client(base_url=ledger.url, headers={"x-api-key": ledger.api_key}) as http:
        session_id = start(http, "on-loop")
        assert reserve(http, session_id, key="first").status_code == 201
        assert reserve(http, session_id, key="second").status_code == 201
        old = store._loop_connection.info.backend_pid
        assert raw_rows(postgres_url, "SELECT pg_terminate_backend(?)", (old,)) == [(True,)]
        failed = reserve(http, session_id, key="third")
        assert failed.status_code == 500, failed.text
        hops.clear()
        retried = reserve(http, session_id, key="third")
        assert retried.status_code == 201, retried.text
        assert hops == []
        assert store._loop_connection.info.backend_pid != old
        assert reserved_of(http, "on-loop") == Decimal("0.003")


def test_when_the_event_loops_connection_cannot_be_made_reservations_take_the_pool(
    loop_ledger: tuple[Any, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    """Its connect fails (here: a URL that nothing answers): the reservation is made in a thread of the pool, as
    before, the failure is logged once, and the loop does not try again for a while (no log per request)."""
    ledger, hops = loop_ledger
    store = ledger.service.store
    store._url = "postgresql://127.0.0.1:1/nothing"  # the pool keeps its own, good, connections
    with httpx.Client(base_url=ledger.url, headers={"x-api-key": ledger.api_key}) as http:
        session_id = start(http, "on-loop")
        assert reserve(http, session_id, key="first").status_code == 201  # the key is read: in a thread
        hops.clear()
        with caplog.at_level("WARNING", logger="agent_ledger_sdk"):
            for n in range(3):
                assert reserve(http, session_id, key=f"pooled-{n}").status_code == 201
        assert hops == ["reserve_planned"] * 3
        said = [r.getMessage() for r in caplog.records if "connection on the event loop" in r.getMessage()]
        assert len(said) == 1, said
        assert reserved_of(http, "on-loop") == Decimal("0.004")


def test_a_postgresql_ledger_closed_closes_its_event_loops_connection(postgres_url: str, prices_file: Path) -> None:
    from agent_ledger_sdk.local import run

    from .ledger_fixtures import raw_rows

    def connected(pid: int) -> bool:
        return raw_rows(postgres_url, "SELECT COUNT(*) FROM pg_stat_activity WHERE pid = ?", (pid,)) == [(1,)]

    with run(db=postgres_url, prices=prices_file) as ledger:
        ledger.set_budget("closer", 1)
        with httpx.Client(base_url=ledger.url, headers={"x-api-key": ledger.api_key}) as http:
            session_id = start(http, "closer")
            for key in ("first", "second"):
                assert reserve(http, session_id, key=key).status_code == 201
        pid = ledger.service.store._loop_connection.info.backend_pid  # type: ignore[attr-defined]
        assert connected(pid)
    deadline = time.monotonic() + 10  # the backend exits once it reads the client's goodbye
    while connected(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not connected(pid)


# -- settling ------------------------------------------------------------------------------------------


def test_the_llm_call_settles_its_reservation_with_the_actual_cost(http: httpx.Client, ledger: LocalLedger) -> None:
    ledger.set_budget("settler", 0.0025)
    session_id = start(http, "settler")
    held = reserve(http, session_id, maxCostUsd=0.002).json()["id"]
    assert reserved_of(http, "settler") == Decimal("0.002")
    assert settle(http, session_id, 700, held).status_code == 202
    assert reserved_of(http, "settler") == 0
    (event,) = exact(http.get(f"/v1/sessions/{session_id}"))["events"]
    assert (event["reservationId"], event["costUsd"], event["costStatus"], event["overBudget"]) == (
        held,
        Decimal("0.0007"),
        "priced",
        False,
    )
    # A call that cost more than it reserved is counted in full, flagged when over, and never refused: it ran.
    second = reserve(http, session_id, maxCostUsd=0.001).json()["id"]
    sent = settle(http, session_id, 2500, second)
    assert sent.status_code == 202
    events = exact(http.get(f"/v1/sessions/{session_id}"))["events"]
    assert (events[1]["costUsd"], events[1]["overBudget"]) == (Decimal("0.0025"), True)
    (budget,) = [b for b in ledger.service.budgets(ledger.workspace) if b["agentName"] == "settler"]
    assert (budget["spentTodayUsd"], budget["reservedUsd"]) == (Decimal("0.0032"), 0)
    # Settled: the same id settles nothing more, and is an unreserved call (refused with the published 429).
    assert settle(http, session_id, 1, second).status_code == 429


def test_a_call_without_usage_is_charged_what_it_reserved(http: httpx.Client, ledger: LocalLedger) -> None:
    ledger.set_budget("streamer", 1)
    session_id = start(http, "streamer")
    held = reserve(http, session_id, estimate={"tokensIn": 1234, "tokensOut": 4096}).json()["id"]
    assert settle(http, session_id, 0, held, usageMissing=True).status_code == 202
    (event,) = exact(http.get(f"/v1/sessions/{session_id}"))["events"]
    assert (event["costStatus"], event["costUsd"]) == ("estimated", Decimal("0.00533"))
    assert event["pricingNote"] == "usage missing: charged the $0.00533 it reserved"


def test_an_unknown_reservation_id_is_an_unreserved_call(http: httpx.Client, ledger: LocalLedger) -> None:
    ledger.set_budget("stranger", 0.0005)
    session_id = start(http, "stranger")
    other = start(http, "stranger")
    others = reserve(http, other, maxCostUsd=0.0001).json()["id"]
    refused = settle(http, session_id, 1000, others)  # another session's reservation settles nothing here
    assert refused.status_code == 429
    assert reserved_of(http, "stranger") == Decimal("0.0001")
    assert settle(http, session_id, 1, "res_never_issued").status_code == 429


def test_releasing_is_idempotent_and_private_to_the_workspace(http: httpx.Client, ledger: LocalLedger) -> None:
    ledger.set_budget("releaser", 1)
    session_id = start(http, "releaser")
    held = reserve(http, session_id, maxCostUsd=0.3).json()["id"]
    assert reserved_of(http, "releaser") == Decimal("0.3")
    other = ledger.service.create_key("nosy", "nosy-team").secret
    assert httpx.delete(f"{ledger.url}/v1/reservations/{held}", headers={"x-api-key": other}).status_code == 404
    first = http.delete(f"/v1/reservations/{held}")
    assert (first.status_code, first.content) == (204, b"")
    assert reserved_of(http, "releaser") == 0
    assert http.delete(f"/v1/reservations/{held}").status_code == 204
    assert http.delete(f"/v1/reservations/{held}", headers={"Idempotency-Key": "release-1"}).status_code == 204
    assert http.delete(f"/v1/reservations/{held}", headers={"Idempotency-Key": "release-1"}).status_code == 204
    settled = reserve(http, session_id, maxCostUsd=0.1).json()["id"]
    settle(http, session_id, 10, settled)
    assert http.delete(f"/v1/reservations/{settled}").status_code == 204
    assert http.delete("/v1/reservations/res_never_issued").status_code == 404
    assert settle(http, session_id, 10, held).status_code == 202  # released: an unreserved call, within budget


def test_ending_a_session_releases_what_it_still_holds(http: httpx.Client, ledger: LocalLedger) -> None:
    ledger.set_budget("ender", 1)
    session_id = start(http, "ender")
    assert reserve(http, session_id, maxCostUsd=0.4).status_code == 201
    assert reserved_of(http, "ender") == Decimal("0.4")
    assert http.post(f"/v1/sessions/{session_id}/end", json={"status": "error"}).status_code == 200
    assert reserved_of(http, "ender") == 0


def test_a_repeated_reservation_request_is_granted_once(http: httpx.Client, ledger: LocalLedger) -> None:
    ledger.set_budget("retrier", 1)
    session_id = start(http, "retrier")
    first = reserve(http, session_id, key="reserve-once", maxCostUsd=0.2)
    again = reserve(http, session_id, key="reserve-once", maxCostUsd=0.2)
    assert (first.status_code, again.status_code) == (201, 201)
    assert first.content == again.content
    assert again.headers["idempotent-replayed"] == "true"
    assert reserved_of(http, "retrier") == Decimal("0.2")
    assert reserve(http, session_id, key="reserve-once", maxCostUsd=0.3).status_code == 422


def test_a_reservation_counts_against_every_budget_that_applies(ledger: LocalLedger) -> None:
    key = ledger.service.create_key("every", "every-budget").secret
    with httpx.Client(base_url=ledger.url, headers={"x-api-key": key}) as http:
        http.put("/v1/workspace-budget", json={"dailyLimitUsd": 1})
        first = start(http, "first-agent")
        second = start(http, "second-agent", maxCostUsd=0.5)
        held = reserve(http, first, maxCostUsd=0.7)
        assert held.status_code == 201
        refused = reserve(http, second, maxCostUsd=0.4)
        assert refused.status_code == 429
        assert refused.json()["budget"] == "workspace-daily"
        assert reserve(http, second, maxCostUsd=0.3).status_code == 201
        assert exact(http.get("/v1/budgets"))["workspaceBudget"]["reservedUsd"] == Decimal("1.0")
        assert http.delete(f"/v1/reservations/{held.json()['id']}").status_code == 204
        capped = reserve(http, second, maxCostUsd=0.25)
        assert capped.status_code == 429
        assert capped.json()["budget"] == "session"
        assert exact(http.get("/v1/budgets"))["workspaceBudget"]["reservedUsd"] == Decimal("0.3")


# -- atomicity and expiry --------------------------------------------------------------------------------


def test_32_threads_reserving_against_one_budget_are_granted_exactly_what_fits(ledger: LocalLedger) -> None:
    agent = "reserving-racer"
    ledger.set_budget(agent, Decimal("0.0105"))  # ten calls of $0.001 fit, the eleventh does not
    with httpx.Client(base_url=ledger.url, headers={"x-api-key": ledger.api_key}) as setup:
        session_id = start(setup, agent)
    granted: list[str] = []
    refused: list[dict[str, Any]] = []
    barrier = threading.Barrier(32)

    def work() -> None:
        with httpx.Client(base_url=ledger.url, headers={"x-api-key": ledger.api_key}) as http:
            barrier.wait()
            for _ in range(3):
                response = reserve(http, session_id, maxCostUsd=0.001)
                if response.status_code == 201:
                    granted.append(response.json()["id"])
                    assert settle(http, session_id, 1000, response.json()["id"]).status_code == 202
                else:
                    assert response.status_code == 429, response.text
                    refused.append(exact(response)["details"])

    threads = [threading.Thread(target=work) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (len(granted), len(refused)) == (10, 86)
    recorded = ledger.session(session_id)
    assert recorded["costUsd"] == Decimal("0.010")
    assert not any(e["overBudget"] for e in recorded["events"])
    for details in refused:
        assert details["projectedCostUsd"] == details["spentTodayUsd"] + Decimal("0.001")
        assert details["projectedCostUsd"] > Decimal("0.0105")


def test_two_connections_on_one_file_never_over_grant(tmp_path: Path) -> None:
    """The check and the hold are one transaction, also across processes sharing the file."""
    path = tmp_path / "shared.db"
    stores = [sqlite_service(path), sqlite_service(path)]
    stores[0].set_budget("ws", "agent", Decimal("0.0105"))
    session = stores[0].start_session("ws", "agent", None).body["id"]
    granted: list[int] = []
    refused: list[BudgetExceeded] = []
    barrier = threading.Barrier(32)
    request = ReservationRequest(session, "test", "flat", Decimal("0.001"))

    def work(thread: int) -> None:
        store = stores[thread % 2]
        barrier.wait()
        for _ in range(3):
            try:
                store.reserve("ws", request, None)
                granted.append(thread)
            except BudgetExceeded as exc:
                refused.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (len(granted), len(refused)) == (10, 86)
    assert all(exc.details["spentTodayUsd"] == Decimal("0.010") for exc in refused)
    assert stores[1].budgets("ws")[0]["reservedUsd"] == Decimal("0.010")
    for store in stores:
        store.close()


@pytest.fixture
def clocked(prices_file: Path, tmp_path: Path) -> Iterator[tuple[httpx.Client, Callable[[float], None]]]:
    """A ledger whose clock the test moves: an HTTP client for it, and a function that advances it by N seconds."""
    now = [datetime.datetime(2026, 6, 1, 12, tzinfo=datetime.timezone.utc)]

    def advance(seconds: float) -> None:
        now[0] += datetime.timedelta(seconds=seconds)

    with sqlite_service(tmp_path / "clocked.db", clock=lambda: now[0], prices=PriceBook(prices_file)) as service:
        key = service.create_key("clocked").secret
        with BackgroundServer(create_app(service)) as server:
            with httpx.Client(base_url=server.url, headers={"x-api-key": key}) as http:
                yield http, advance


def test_a_reservation_not_settled_in_ten_minutes_is_released(
    clocked: tuple[httpx.Client, Callable[[float], None]],
) -> None:
    http, advance = clocked
    assert http.put("/v1/budgets/slow", json={"dailyLimitUsd": 0.001}).status_code == 200
    session_id = start(http, "slow")
    held = reserve(http, session_id, maxCostUsd=0.001)
    assert held.json()["expiresAt"] == "2026-06-01T12:10:00.000000Z"
    assert reserve(http, session_id, maxCostUsd=0.001).status_code == 429
    advance(599)
    assert reserve(http, session_id, maxCostUsd=0.001).status_code == 429
    advance(1)
    assert reserved_of(http, "slow") == 0
    fresh = reserve(http, session_id, maxCostUsd=0.001)
    assert fresh.status_code == 201  # the expired one stopped counting
    # The late event of the expired reservation is an unreserved call: over the budget, refused and recorded.
    late = settle(http, session_id, 1000, held.json()["id"])
    assert late.status_code == 429
    assert reserved_of(http, "slow") == Decimal("0.001")  # the fresh reservation still holds
    assert http.delete(f"/v1/reservations/{held.json()['id']}").status_code == 204
    advance(24 * 3600 + 600)
    reserve(http, session_id, maxCostUsd=0.0)  # a budget check forgets reservations gone for a day
    assert http.delete(f"/v1/reservations/{held.json()['id']}").status_code == 404


def test_every_held_reservation_counts_exactly_however_many_share_an_amount(ledger: LocalLedger) -> None:
    """Held reservations are read summed by amount: each budget (agent, workspace, session) still sees exactly the
    reservations that are its own, many of one amount and some of others, other agents' and sessions' too."""
    key = ledger.service.create_key("held-sums", workspace="held-sums").secret
    service, workspace = ledger.service, "held-sums"
    service.set_budget(workspace, "a", Decimal("1"))
    service.set_budget(workspace, "b", Decimal("1"))
    service.set_workspace_budget(workspace, Decimal("2"))
    with httpx.Client(base_url=ledger.url, headers={"x-api-key": key}) as http:
        a1 = start(http, "a", maxCostUsd=0.5)
        a2, b1 = start(http, "a"), start(http, "b")
        amounts = {a1: ["0.01"] * 30 + ["0.003", "0.0007"], a2: ["0.01"] * 20 + ["0.02"], b1: ["0.05"] * 10}
        for session_id, held in amounts.items():
            for value in held:
                assert reserve(http, session_id, maxCostUsd=float(value)).status_code == 201
        released = reserve(http, a2, maxCostUsd=0.1)  # released: it no longer counts
        assert http.delete(f"/v1/reservations/{released.json()['id']}").status_code == 204
        total = {s: sum((Decimal(v) for v in held), Decimal(0)) for s, held in amounts.items()}
        # Each refusal's details say what its budget counts as reserved: asked for more than any budget has left.
        # Held: a1 0.3037 (its cap 0.5), agent a 0.5237 (limit 1), the workspace 1.0237 (limit 2).
        by_session = exact(reserve(http, a1, maxCostUsd=0.2))["details"]
        assert (by_session["budget"], by_session["reservedUsd"]) == ("session", total[a1])
        by_agent = exact(reserve(http, a2, maxCostUsd=0.5))["details"]
        assert (by_agent["budget"], by_agent["reservedUsd"]) == ("agent-daily", total[a1] + total[a2])
        service.set_budget(workspace, "b", Decimal("10"))
        by_workspace = exact(reserve(http, b1, maxCostUsd=1.0))["details"]
        assert (by_workspace["budget"], by_workspace["reservedUsd"]) == ("workspace-daily", sum(total.values()))
        assert reserve(http, b1, maxCostUsd=0.9763).status_code == 201  # exactly what the workspace has left
