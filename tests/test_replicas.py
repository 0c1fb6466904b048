"""Four server processes on one database are one ledger: no overspend, no duplicate, nothing lost.

Each replica is a real ``agent-ledger serve`` process with a home of its own (four machines behind
a load balancer), on one fresh PostgreSQL database, and, since SQLite lets several processes share
a file, on one SQLite file. 64 writer threads, each with its own HTTP client, spread their requests
over the replicas, and send every idempotent write a second time, with the same Idempotency-Key,
to a *different* replica: a load balancer's retry. For about a third of the writes the first attempt
is given up 2 ms after it is sent (a timeout): it may or may not have been applied on its replica,
and the retry must settle which, once.

What must hold, checked through the API of every replica and in the database itself:

- no overspend: of 128 reservations racing for a budget that fits 40, exactly 40 are granted;
  after some are settled and the others released, a second race is granted exactly what is left;
  the day's spend ends at exactly the budget's 40 calls, never above it (exact decimals);
- no duplicate: each idempotent request is applied once (one session, one reservation, one
  batch of events for each key), and a retry that follows a success replays it (a refused
  reservation is not remembered: its retry is decided again, and refused again);
- nothing lost: every event acknowledged (202, or the guardrail 429 that stores the batch) is
  stored once and read back through the API.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Callable, Optional, Union

import httpx
import pytest

pytest.importorskip("starlette", reason="the local ledger needs the server extra")

from .ledger_fixtures import raw_rows
from .postgres_server import PostgresServer

pytestmark = pytest.mark.integration

REPLICAS = 4
WRITERS = 64
WORKSPACE = "replicas"
PRICES = {"test/flat": {"input_per_mtok": 1.0, "output_per_mtok": 1.0}}  # N tokens cost N micro-dollars
CALL = Decimal("0.001")  # what each reserved call holds (maxCostUsd) and costs (1000 tokens)
FITS = 40
LIMIT = Decimal("0.0405")  # 40 calls fit, the 41st does not
RESERVES_PER_RACE = 2  # each writer's reservations in a race: 128 for 40 places
TIGHT_FITS = 5
TIGHT_LIMIT = Decimal("0.005")  # unreserved calls: 5 fit, the other 59 are stored and answered 429
BATCHES = 4  # of TOOL_EVENTS tool events, per writer, without an Idempotency-Key
IDEMPOTENT_BATCHES = 3  # the same, with one
TOOL_EVENTS = 25
TIMEOUT = httpx.Timeout(30.0)
ABANDON = httpx.Timeout(30.0, read=0.002)  # a first attempt given up before its answer
START_TIMEOUT = 60.0
PHASE_TIMEOUT = 120.0


def exact(response: httpx.Response) -> Any:
    return json.loads(response.text, parse_float=Decimal) if response.content else None


# -- the replicas -------------------------------------------------------------------------------------


@dataclass
class Replica:
    number: int
    process: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent_ledger_sdk.cli", *args]


def _wait_until_listening(replica: Replica, deadline: float) -> None:
    while True:
        found = re.search(r"listening on (http://\S+)", replica.log_text())
        if found:
            replica.url = found.group(1)
            break
        if replica.process.poll() is not None:
            raise AssertionError(
                f"replica {replica.number} exited with status {replica.process.returncode} before listening; "
                f"its log:\n{replica.tail()}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(
                f"replica {replica.number} did not listen in {START_TIMEOUT} s; its log:\n{replica.tail()}"
            )
        time.sleep(0.05)
    while True:
        try:
            if httpx.get(f"{replica.url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(
                f"replica {replica.number} at {replica.url} never answered /health; its log:\n{replica.tail()}"
            )
        time.sleep(0.05)


def stop(replicas: Sequence[Replica]) -> None:
    """Stop every replica: SIGTERM, then SIGKILL for any still running after 10 s."""
    for replica in replicas:
        if replica.process.poll() is None:
            replica.process.terminate()
    for replica in replicas:
        try:
            replica.process.wait(10)
        except subprocess.TimeoutExpired:
            replica.process.kill()
            replica.process.wait(10)


@contextmanager
def running_replicas(
    db: Union[Path, str], directory: Path, count: int = REPLICAS, *options: str
) -> Iterator[list[Replica]]:
    """``count`` ``agent-ledger serve`` processes on ``db`` (with ``options``), all started at once (they migrate
    a new database together); stopped on leaving, whatever happens."""
    replicas: list[Replica] = []
    logs: list[IO[bytes]] = []
    try:
        for number in range(count):
            home = directory / f"replica-{number}"
            home.mkdir()
            log = home / "serve.log"
            sink: IO[bytes] = log.open("wb")
            logs.append(sink)
            process = subprocess.Popen(
                cli("serve", "--db", str(db), "--port", "0", *options),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env={**os.environ, "AGENT_LEDGER_HOME": str(home), "PYTHONUNBUFFERED": "1"},
            )
            replicas.append(Replica(number, process, log))
        deadline = time.monotonic() + START_TIMEOUT
        for replica in replicas:
            _wait_until_listening(replica, deadline)
        yield replicas
    finally:
        stop(replicas)
        for sink in logs:
            sink.close()


def create_key(db: Union[Path, str]) -> str:
    made = subprocess.run(
        cli("keys", "create", "--name", "replicas-test", "--workspace", WORKSPACE, "--db", str(db)),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert made.returncode == 0, f"agent-ledger keys create failed ({made.returncode}):\n{made.stdout}\n{made.stderr}"
    return made.stdout.strip().splitlines()[-1]


# -- the writers --------------------------------------------------------------------------------------


@dataclass
class Ledger:
    """The replicas as the writers see them, and what the writers saw, for the checks."""

    urls: list[str]
    key: str
    problems: list[str] = field(default_factory=list)  # unexpected answers and errors, each said in full
    requests: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)

    def count(self, what: str) -> None:
        with self.lock:
            self.requests[what] += 1

    def send(
        self,
        http: httpx.Client,
        replica: int,
        method: str,
        path: str,
        body: Optional[dict[str, Any]] = None,
        *,
        idempotency_key: Optional[str] = None,
        timeout: httpx.Timeout = TIMEOUT,
    ) -> httpx.Response:
        headers = {"x-api-key": self.key}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        self.count(f"{method} {path.split('/')[2]}")
        return http.request(
            method, f"{self.urls[replica % len(self.urls)]}{path}", json=body, headers=headers, timeout=timeout
        )

    def retried(
        self,
        http: httpx.Client,
        first: int,
        method: str,
        path: str,
        body: Optional[dict[str, Any]] = None,
        *,
        abandon_first: bool = False,
        expected: tuple[int, ...] = (200, 201, 202, 204),
    ) -> Optional[httpx.Response]:
        """An idempotent write sent to replica ``first``, then again (same key, same body) to another replica.

        Returns the retry's answer (None after a problem, recorded). When the first attempt was answered,
        the retry must give the same status and body, and, for a success, say it is a replay.
        """
        key = uuid.uuid4().hex
        second = first + 1 + first % (REPLICAS - 1)  # another replica, whichever the first
        what = f"{method} {path} {json.dumps(body)[:160]} (Idempotency-Key {key}; replicas {first % REPLICAS}, then {second % REPLICAS})"
        answer: Optional[httpx.Response] = None
        try:
            answer = self.send(
                http, first, method, path, body, idempotency_key=key, timeout=ABANDON if abandon_first else TIMEOUT
            )
        except httpx.TimeoutException:
            if not abandon_first:
                self.problem(f"{what}: the first attempt timed out")
                return None
            self.count("(first attempts given up)")
        except httpx.HTTPError as error:
            self.problem(f"{what}: the first attempt failed: {error!r}")
            return None
        try:
            retry = self.send(http, second, method, path, body, idempotency_key=key)
        except httpx.HTTPError as error:
            self.problem(f"{what}: the retry failed: {error!r}")
            return None
        if retry.status_code not in expected:
            self.problem(f"{what}: the retry was answered {retry.status_code} {retry.text[:500]}")
            return None
        if answer is None and retry.headers.get("idempotent-replayed") == "true":
            self.count("(given up, yet applied: the retry replayed it)")
        if answer is not None and answer.status_code == 429 and "/reservations" in path:
            # A refused reservation is not remembered (nothing was applied): its retry is decided afresh, and
            # the figures in its body are today's. During a race nothing frees budget, so it is refused too.
            if retry.status_code != 429:
                self.problem(
                    f"{what}: refused first ({answer.text[:300]}), then answered {retry.status_code} {retry.text[:300]}"
                )
        elif answer is not None:
            if (answer.status_code, exact(answer)) != (retry.status_code, exact(retry)):
                self.problem(
                    f"{what}: a different answer to the retry: first {answer.status_code} {answer.text[:300]}, "
                    f"retry {retry.status_code} {retry.text[:300]}"
                )
            elif answer.status_code < 300 and retry.headers.get("idempotent-replayed") != "true":
                self.problem(f"{what}: the retry of an answered request was not a replay: {retry.headers}")
        return retry


@dataclass
class Writer:
    """One writer thread's client and what it was told."""

    number: int
    http: httpx.Client
    racing_session: str = ""
    own_session: str = ""
    granted: list[str] = field(default_factory=list)  # this race's reservation ids
    settled: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    refused: int = 0
    acknowledged: list[tuple[str, int]] = field(default_factory=list)  # (session, stepIndex) of stored events
    step: int = 0

    def next_step(self) -> int:
        self.step += 1
        return self.step


def in_parallel(writers: Sequence[Writer], work: Callable[[Writer], None], ledger: Ledger) -> float:
    """Run ``work`` for every writer at once, each in its own thread, released together; the seconds it took."""
    barrier = threading.Barrier(len(writers) + 1)

    def run(writer: Writer) -> None:
        try:
            barrier.wait(PHASE_TIMEOUT)
            work(writer)
        except threading.BrokenBarrierError:
            ledger.problem(f"writer {writer.number}: the start barrier broke")
        except Exception as error:
            ledger.problem(f"writer {writer.number} raised {error!r}")

    threads = [threading.Thread(target=run, args=(w,), name=f"writer-{w.number}", daemon=True) for w in writers]
    for thread in threads:
        thread.start()
    barrier.wait(PHASE_TIMEOUT)
    started = time.monotonic()
    deadline = started + PHASE_TIMEOUT
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, (
        f"{len(stuck)} writers still running after {PHASE_TIMEOUT} s: {stuck[:8]}; problems: {ledger.problems[:5]}"
    )
    return time.monotonic() - started


def llm_call(step: int, reservation_id: Optional[str] = None) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "llm_call",
        "stepIndex": step,
        "provider": "test",
        "model": "flat",
        "tokensIn": 1000,
        "tokensOut": 0,
        "latencyMs": 1,
    }
    if reservation_id is not None:
        event["reservationId"] = reservation_id
    return event


def tool_events(first_step: int) -> list[dict[str, Any]]:
    return [
        {"type": "tool_call", "stepIndex": first_step + n, "toolName": "lookup", "input": {"n": n}, "output": "ok"}
        for n in range(TOOL_EVENTS)
    ]


def budget_on(ledger: Ledger, replica: int, agent: str) -> dict[str, Any]:
    with httpx.Client(timeout=TIMEOUT) as http:
        response = ledger.send(http, replica, "GET", "/v1/budgets")
    assert response.status_code == 200, f"GET /v1/budgets on replica {replica}: {response.status_code} {response.text}"
    found = [b for b in exact(response)["budgets"] if b["agentName"] == agent]
    assert len(found) == 1, f"replica {replica}: {agent!r} in GET /v1/budgets {found}"
    budget: dict[str, Any] = found[0]
    return budget


def assert_budget_everywhere(ledger: Ledger, agent: str, spent: Decimal, reserved: Decimal, when: str) -> None:
    for replica in range(REPLICAS):
        budget = budget_on(ledger, replica, agent)
        seen = (Decimal(budget["spentTodayUsd"]), Decimal(budget["reservedUsd"]))
        assert seen == (spent, reserved), (
            f"{when}: replica {replica} says {agent!r} spent {seen[0]} with {seen[1]} reserved; expected spent "
            f"{spent} with {reserved} reserved (limit {budget['dailyLimitUsd']})"
        )
        assert seen[0] + seen[1] <= LIMIT, f"{when}: OVERSPEND on replica {replica}: {seen} against {LIMIT}"


def no_problems(ledger: Ledger, when: str) -> None:
    assert not ledger.problems, f"{when}: {len(ledger.problems)} problems, the first ones:\n" + "\n".join(
        ledger.problems[:15]
    )


# -- the scenario -------------------------------------------------------------------------------------


def scenario(db: Union[Path, str], directory: Path, backend: str) -> None:
    prices = directory / "prices.json"  # each replica is given the same file, as each machine would be
    prices.write_text(json.dumps(PRICES))
    with running_replicas(db, directory, REPLICAS, "--prices", str(prices)) as replicas:
        try:
            key = create_key(db)
            ledger = Ledger([r.url for r in replicas], key)
            figures = run_writers(ledger, db)
            for replica in replicas:
                assert replica.process.poll() is None, f"replica {replica.number} died:\n{replica.tail()}"
                log = replica.log_text()
                errors = [line for line in log.splitlines() if '" 500' in line or "Traceback" in line]
                assert not errors, (
                    f"replica {replica.number} logged errors:\n" + "\n".join(errors[:10]) + "\n" + replica.tail()
                )
            print(f"\n{backend}: {REPLICAS} replicas, {WRITERS} writers: {figures}")
        except BaseException:
            for replica in replicas:
                print(f"--- replica {replica.number} ({replica.url}), last lines of its log ---\n{replica.tail(20)}")
            raise


def run_writers(ledger: Ledger, db: Union[Path, str]) -> str:
    with httpx.Client(timeout=TIMEOUT) as setup:
        for agent, limit in (("racer", LIMIT), ("tight", TIGHT_LIMIT)):
            response = ledger.send(setup, 0, "PUT", f"/v1/budgets/{agent}", {"dailyLimitUsd": float(limit)})
            assert response.status_code == 200, response.text
        response = ledger.send(setup, 1, "POST", "/v1/sessions", {"agentName": "tight"})
        assert response.status_code == 201, response.text
        tight_session = response.json()["id"]
    clients = [httpx.Client(timeout=TIMEOUT) for _ in range(WRITERS)]
    writers = [Writer(n, client) for n, client in enumerate(clients)]
    tight_answers: Counter[int] = Counter()
    seconds: dict[str, float] = {}
    try:
        # 1. Sessions, each started with a retry on another replica.
        def start_sessions(w: Writer) -> None:
            for agent, attribute in (("racer", "racing_session"), (f"writer-{w.number}", "own_session")):
                answer = ledger.retried(
                    w.http, w.number, "POST", "/v1/sessions", {"agentName": agent}, abandon_first=w.number % 3 == 0
                )
                if answer is not None:
                    setattr(w, attribute, answer.json()["id"])

        seconds["sessions"] = in_parallel(writers, start_sessions, ledger)
        no_problems(ledger, "starting the sessions")

        # 2. The first race: 128 reservations for 40 places.
        def race(w: Writer, settle_at_once: bool) -> None:
            w.granted = []
            for attempt in range(RESERVES_PER_RACE):
                body = {"sessionId": w.racing_session, "provider": "test", "model": "flat", "maxCostUsd": float(CALL)}
                answer = ledger.retried(
                    w.http,
                    w.number + attempt,
                    "POST",
                    "/v1/reservations",
                    body,
                    abandon_first=(w.number + attempt) % 3 == 0,
                    expected=(201, 429),
                )
                if answer is None:
                    continue
                if answer.status_code == 429:
                    w.refused += 1
                    continue
                reservation = answer.json()["id"]
                w.granted.append(reservation)
                if settle_at_once:
                    settle(w, reservation, w.number + attempt)

        def settle(w: Writer, reservation: str, replica: int) -> None:
            step = w.next_step()
            answer = ledger.retried(
                w.http,
                replica,
                "POST",
                "/v1/events",
                {"sessionId": w.racing_session, "events": [llm_call(step, reservation)]},
                abandon_first=replica % 2 == 0,
                expected=(202,),
            )
            if answer is not None:
                w.settled.append(reservation)
                w.acknowledged.append((w.racing_session, step))

        seconds["race 1"] = in_parallel(writers, lambda w: race(w, settle_at_once=False), ledger)
        no_problems(ledger, "the first race")
        first_grants = [r for w in writers for r in w.granted]
        refused = sum(w.refused for w in writers)
        assert (len(first_grants), len(set(first_grants)), refused) == (
            FITS,
            FITS,
            WRITERS * RESERVES_PER_RACE - FITS,
        ), (
            f"OVER- OR UNDER-GRANT: {len(first_grants)} reservations granted ({len(set(first_grants))} distinct), "
            f"{refused} refused, of {WRITERS * RESERVES_PER_RACE} for a budget that fits exactly {FITS}"
        )
        assert_budget_everywhere(ledger, "racer", Decimal(0), FITS * CALL, "after the first race")

        # 3. Settle or release each grant; meanwhile events without and with Idempotency-Keys, and unreserved calls
        # over a tight budget.
        def settle_and_ingest(w: Writer) -> None:
            for n, reservation in enumerate(w.granted):
                if (w.number + n) % 2 == 0:
                    settle(w, reservation, w.number + n)
                else:
                    released = ledger.retried(
                        w.http,
                        w.number + n,
                        "DELETE",
                        f"/v1/reservations/{reservation}",
                        abandon_first=n % 2 == 0,
                        expected=(204,),
                    )
                    if released is not None:
                        w.released.append(reservation)
            for batch in range(BATCHES + IDEMPOTENT_BATCHES):
                first_step = w.step + 1
                w.step += TOOL_EVENTS
                body = {"sessionId": w.own_session, "events": tool_events(first_step)}
                replica = w.number + batch
                if batch < BATCHES:
                    try:
                        plain = ledger.send(w.http, replica, "POST", "/v1/events", body)
                    except httpx.HTTPError as error:
                        ledger.problem(f"writer {w.number}: POST /v1/events to replica {replica % REPLICAS}: {error!r}")
                        continue
                    if plain.status_code != 202:
                        ledger.problem(f"writer {w.number}: POST /v1/events: {plain.status_code} {plain.text[:300]}")
                        continue
                else:
                    retried = ledger.retried(
                        w.http, replica, "POST", "/v1/events", body, abandon_first=batch % 2 == 0, expected=(202,)
                    )
                    if retried is None:
                        continue
                w.acknowledged.extend((w.own_session, first_step + n) for n in range(TOOL_EVENTS))
            step = w.number  # the writers share the tight session: each its own step
            tight = ledger.send(
                w.http, w.number + 2, "POST", "/v1/events", {"sessionId": tight_session, "events": [llm_call(step)]}
            )
            with ledger.lock:
                tight_answers[tight.status_code] += 1
            if tight.status_code in (202, 429):
                w.acknowledged.append((tight_session, step))
            else:
                ledger.problem(f"writer {w.number}: unreserved call: {tight.status_code} {tight.text[:300]}")

        seconds["settle, release, ingest"] = in_parallel(writers, settle_and_ingest, ledger)
        no_problems(ledger, "settling and ingesting")
        settled = sum(len(w.settled) for w in writers)
        released = sum(len(w.released) for w in writers)
        assert settled + released == FITS, (settled, released)
        assert_budget_everywhere(ledger, "racer", settled * CALL, Decimal(0), "after settling and releasing")
        assert dict(tight_answers) == {202: TIGHT_FITS, 429: WRITERS - TIGHT_FITS}, (
            f"unreserved calls over a budget of {TIGHT_FITS} calls: answered {dict(tight_answers)}"
        )

        # 4. The second race, for what the releases freed; each grant settled at once.
        seconds["race 2"] = in_parallel(writers, lambda w: race(w, settle_at_once=True), ledger)
        no_problems(ledger, "the second race")
        second_grants = [r for w in writers for r in w.granted]
        assert len(second_grants) == released, (
            f"OVER- OR UNDER-GRANT: the second race was granted {len(second_grants)} reservations; "
            f"{released} places were free ({settled} of {FITS} settled)"
        )
        assert_budget_everywhere(ledger, "racer", FITS * CALL, Decimal(0), "after the second race")
    finally:
        for client in clients:
            client.close()

    check_database(ledger, db, writers, tight_session, first_grants + second_grants)
    check_read_back(ledger, writers, tight_session)
    total = sum(n for what, n in ledger.requests.items() if not what.startswith("("))
    events = sum(len(w.acknowledged) for w in writers)
    return (
        f"{total} requests ({dict(sorted(ledger.requests.items()))}); {events} events acknowledged and found once; "
        f"race 1: {FITS} of {WRITERS * RESERVES_PER_RACE} granted; {settled} settled, {released} released; "
        f"race 2: {released} granted; spend {FITS * CALL} of {LIMIT}; seconds: "
        + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items())
    )


def check_database(
    ledger: Ledger, db: Union[Path, str], writers: Sequence[Writer], tight_session: str, grants: list[str]
) -> None:
    """Straight from the database: each idempotent write applied once, every acknowledged event stored once."""
    sessions = Counter(agent for (agent,) in raw_rows(db, "SELECT agent_name FROM sessions"))
    expected = Counter({"racer": WRITERS, "tight": 1, **{f"writer-{n}": 1 for n in range(WRITERS)}})
    assert sessions == expected, (
        f"DUPLICATE OR MISSING SESSIONS: {dict(sessions - expected)} extra, {dict(expected - sessions)} missing"
    )

    reservations = dict(raw_rows(db, "SELECT id, state FROM reservations"))
    assert sorted(reservations) == sorted(grants), (
        f"DUPLICATE RESERVATIONS: {len(reservations)} in the database, {len(grants)} granted; "
        f"not granted: {sorted(set(reservations) - set(grants))[:5]}"
    )
    states = Counter(reservations.values())
    settled = sum(len(w.settled) for w in writers)
    released = sum(len(w.released) for w in writers)
    assert states == Counter({"settled": settled, "released": released}), f"reservation states: {dict(states)}"

    stored = Counter((session, step) for session, step in raw_rows(db, "SELECT session_id, step_index FROM events"))
    duplicated = {k: v for k, v in stored.items() if v > 1}
    assert not duplicated, (
        f"DUPLICATE EVENTS: {len(duplicated)} (session, stepIndex) stored more than once: {list(duplicated.items())[:5]}"
    )
    acknowledged = Counter(pair for w in writers for pair in w.acknowledged)
    assert max(acknowledged.values()) == 1
    lost = set(acknowledged) - set(stored)
    assert not lost, (
        f"LOST EVENTS: {len(lost)} of {len(acknowledged)} acknowledged events are not stored: {sorted(lost)[:5]}"
    )
    unacknowledged = set(stored) - set(acknowledged)
    assert not unacknowledged, (
        f"{len(unacknowledged)} events stored that no writer was told of: {sorted(unacknowledged)[:5]}"
    )

    spend = {
        (scope, subject): Decimal(str(value))
        for scope, subject, value in raw_rows(
            db, "SELECT scope, subject, amount FROM spend WHERE workspace = ?", (WORKSPACE,)
        )
    }
    racer = [v for (scope, subject), v in spend.items() if subject == "racer"]
    assert racer and all(v == FITS * CALL for v in racer), f"the racer's spend rows: {spend}"
    assert max(racer) <= LIMIT, f"OVERSPEND: {racer} against {LIMIT}"
    cost = dict(raw_rows(db, "SELECT id, cost FROM sessions WHERE agent_name = 'tight'"))
    assert Decimal(str(cost[tight_session])) == WRITERS * CALL, f"the tight session cost {cost}"


def check_read_back(ledger: Ledger, writers: Sequence[Writer], tight_session: str) -> None:
    """Through the API, a page at a time, each session from a different replica: every event is there, once."""
    wanted: dict[str, set[int]] = {}
    for w in writers:
        for session, step in w.acknowledged:
            wanted.setdefault(session, set()).add(step)
    with httpx.Client(timeout=TIMEOUT) as http:
        for n, (session, steps) in enumerate(sorted(wanted.items())):
            found: list[int] = []
            cursor: Optional[str] = None
            while True:
                query = "?eventsLimit=50" + (f"&eventsCursor={cursor}" if cursor else "")
                response = ledger.send(http, n, "GET", f"/v1/sessions/{session}{query}")
                assert response.status_code == 200, (
                    f"GET /v1/sessions/{session}: {response.status_code} {response.text}"
                )
                page = response.json()
                found.extend(e["stepIndex"] for e in page["events"] if e["type"] in ("llm_call", "tool_call"))
                cursor = page["nextEventsCursor"]
                if cursor is None:
                    break
            assert sorted(found) == sorted(steps), (
                f"session {session} read back through replica {n % REPLICAS}: {len(found)} events, "
                f"{len(steps)} acknowledged; missing {sorted(steps - set(found))[:5]}, "
                f"duplicated {[s for s, c in Counter(found).items() if c > 1][:5]}"
            )
            assert page["eventCount"] == len(steps), (
                f"session {session}: eventCount {page['eventCount']}, {len(steps)} events"
            )


def test_four_replicas_on_one_postgresql_database(postgres_server: PostgresServer, tmp_path: Path) -> None:
    with postgres_server.fresh_database() as url:
        scenario(url, tmp_path, "postgresql")


def test_four_replicas_on_one_sqlite_file(tmp_path: Path) -> None:
    scenario(tmp_path / "shared.db", tmp_path, "sqlite")


def test_a_release_whose_client_gives_up_is_no_500(tmp_path: Path) -> None:
    """A client that gives up on ``DELETE /v1/reservations/{id}`` (a timeout, a load balancer's retry) is not a
    server error: no 500 in the access log and metrics, no traceback (a POST given up is a 400 today)."""
    db = tmp_path / "release.db"
    with running_replicas(db, tmp_path, 1) as (replica,):
        key = create_key(db)
        host, port = replica.url.rsplit("/", 1)[-1].split(":")
        for n in range(20):
            with socket.create_connection((host, int(port)), timeout=5) as connection:
                connection.sendall(
                    f"DELETE /v1/reservations/res_{n:024x} HTTP/1.1\r\nHost: {host}\r\nx-api-key: {key}\r\n"
                    "Content-Length: 0\r\n\r\n".encode()
                )
        time.sleep(1.0)
        assert httpx.get(f"{replica.url}/health").status_code == 200
        log = replica.log_text()
    statuses = Counter(re.findall(r'"DELETE /v1/reservations/\S+" (\d{3})', log))
    tracebacks = log.count("Traceback (most recent call last)")
    assert not statuses["500"] and not tracebacks, (
        f"20 DELETEs whose client went away: statuses {dict(statuses)}, {tracebacks} tracebacks logged; the last:\n"
        + log[log.rfind("Traceback") :][-1500:]
    )
