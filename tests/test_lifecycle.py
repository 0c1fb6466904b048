"""The process around the SDK, against a real local ledger and real processes.

Fork (``os.fork`` and multiprocessing), interpreter exit with the ledger up,
down or failing, an outage shorter than the retry window, SIGTERM, ``atexit``
handlers and ``SessionHandle.id`` with a ledger that hangs. Every test asserts
what the ledger recorded: exact event counts, statuses, and the order in which
events arrived (the ledger's ``seq``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_ledger_sdk import AgentLedgerClient
from agent_ledger_sdk._lifecycle import EXIT_FLUSH_TIMEOUT, SIGTERM_FLUSH_TIMEOUT
from agent_ledger_sdk._session import ID_WAIT_TIMEOUT

from .subprocesses import free_port, python, run_script

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
needs_sigterm = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")


# -- helpers ------------------------------------------------------------------------


@contextlib.contextmanager
def ledger_on(db: Path, port: int = 0) -> Iterator[Any]:
    """A local ledger on ``db``; on ``port`` too, to stop it and start it again at the same address."""
    pytest.importorskip("starlette", reason="needs the server extra")
    from agent_ledger_sdk.local import run

    with run(db=db, port=port) as running:
        yield running


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Any]:
    with ledger_on(tmp_path / "ledger.db") as running:
        yield running


@contextlib.contextmanager
def started(code: str, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        python(code), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env}
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def next_client(env: dict[str, str]) -> None:
    """A later process with the same key, ledger and home, that only makes a client and flushes it.

    It delivers what earlier processes left in the journal.
    """
    result = run_script(
        """
        import agent_ledger_sdk

        print(agent_ledger_sdk.get_client().flush(10))
        """,
        env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0", result.stderr  # nothing left
    assert "agent-ledger" not in result.stderr, result.stderr


def arrival_steps(db: Path, session_id: str) -> list[int]:
    """The session's step indexes in the order the ledger received its events."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
        rows = connection.execute(
            "SELECT step_index FROM events WHERE session_id = ? ORDER BY seq", (session_id,)
        ).fetchall()
    return [row[0] for row in rows]


def tool_steps(calls: int) -> list[int]:
    """What ``calls`` tool calls record, in order: a tool_call and a tool_result per step."""
    return [step for step in range(calls) for _ in ("tool_call", "tool_result")]


def journal_files() -> list[Path]:
    return sorted(Path(os.environ["AGENT_LEDGER_HOME"]).glob("journal/*/*.jsonl"))


# -- fork ---------------------------------------------------------------------------

FORK_CHILDREN = 120

FORK_SCRIPT = """
import json, multiprocessing, os, random, sys, threading, time
import agent_ledger_sdk

CHILDREN = __CHILDREN__
rng = random.Random(__SEED__)

@agent_ledger_sdk.tool
def work(i):
    return i

def calls(k):
    return 3 + k % 7

def child_session(k):
    @agent_ledger_sdk.session(f"fork-child-{k}")
    def job():
        for i in range(calls(k)):
            work(i)
    job()

def forked_child(k):
    # The parent's multiprocessing children are not ours: else the stdlib's own exit hook
    # tries to join them (an AssertionError it prints), which has nothing to do with us.
    multiprocessing.process._children.clear()
    child_session(k)
    if k % 4 == 0:
        sys.exit(0)  # a normal exit: the SDK's exit hook delivers
    left = agent_ledger_sdk.flush(20)
    os._exit(0 if left == 0 else 3)

def multiprocessing_child(k):
    child_session(k)  # and return, without flushing: the SDK's multiprocessing finalizer delivers

stop = threading.Event()
produced = []

@agent_ledger_sdk.session("fork-parent")
def producer():  # keeps the parent's sender busy the whole time
    i = 0
    while not stop.is_set():
        work(i)
        i += 1
        if i % 4 == 0:
            time.sleep(0.001)
    produced.append(i)

def main():
    thread = threading.Thread(target=producer)
    thread.start()
    context = multiprocessing.get_context("fork")
    forked, processes, failures = {}, {}, {}
    began = time.monotonic()
    for k in range(CHILDREN):
        time.sleep(rng.uniform(0, 0.01))
        if k % 2 == 0:
            pid = os.fork()
            if pid == 0:
                forked_child(k)
            forked[pid] = k
        else:
            process = context.Process(target=multiprocessing_child, args=(k,))
            process.start()
            processes[k] = process
    deadline = time.monotonic() + 25
    while forked and time.monotonic() < deadline:
        for pid, k in list(forked.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                del forked[pid]
                if os.waitstatus_to_exitcode(status) != 0:
                    failures[k] = os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    for pid, k in forked.items():
        failures[k] = "hung"
        os.kill(pid, 9)
    for k, process in processes.items():
        process.join(max(0.1, deadline - time.monotonic()))
        if process.exitcode != 0:
            failures[k] = "hung" if process.exitcode is None else process.exitcode
            process.kill()
    children_done = time.monotonic() - began
    stop.set()
    thread.join(10)
    left = agent_ledger_sdk.flush(20)
    print(json.dumps({"produced": produced[0], "failures": failures, "left": left, "seconds": children_done}))

main()
"""


@pytest.mark.integration
@needs_fork
def test_children_forked_at_any_moment_record_everything_and_so_does_the_parent(ledger: Any) -> None:
    seed = random.randrange(1 << 30)
    code = FORK_SCRIPT.replace("__CHILDREN__", str(FORK_CHILDREN)).replace("__SEED__", str(seed))
    began = time.monotonic()
    result = run_script(code, ledger.env(), timeout=50)  # a deadlock fails here, not in the CI's timeout
    elapsed = time.monotonic() - began
    assert result.returncode == 0, f"seed {seed}: {result.stderr}"
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["failures"] == {}, f"seed {seed}: children that failed or hung: {report}"
    assert report["left"] == 0
    # Children share the parent's stderr. On a loaded machine a child may still be waiting
    # for the ledger when its exit hook's EXIT_FLUSH_TIMEOUT ends: then it says what it left
    # in the journal, and the next client delivers it. Any other word is a loss or a bug.
    warnings = [line for line in result.stderr.splitlines() if line.strip()]
    journaled = [line for line in warnings if "were not delivered before exit; they wait in the journal" in line]
    assert [line for line in warnings if line not in journaled] == [], result.stderr
    if journaled:
        next_client(ledger.env())

    recorded = {s["agentName"]: s for s in ledger.sessions()}
    wrong = {}
    for k in range(FORK_CHILDREN):
        session = recorded.get(f"fork-child-{k}")
        expected = 2 * (3 + k % 7)
        got = None if session is None else (session["eventCount"], session["status"])
        if got != (expected, "success"):
            wrong[k] = (got, expected)
    assert wrong == {}, f"seed {seed}: children whose events were not all recorded: {wrong}; {journaled}"
    parent = recorded["fork-parent"]
    assert report["produced"] > 500  # the parent's sender was busy while the children were forked
    assert (parent["eventCount"], parent["status"]) == (2 * report["produced"], "success")
    assert arrival_steps(ledger.db_path, parent["id"]) == tool_steps(report["produced"])
    assert elapsed < 45, f"{FORK_CHILDREN} children took {elapsed:.1f} s"


# -- interpreter exit ---------------------------------------------------------------

AN_AGENT_THAT_EXITS = """
import agent_ledger_sdk

@agent_ledger_sdk.tool
def work(i):
    return i

@agent_ledger_sdk.session("offline-at-exit")
def job():
    for i in range(50):
        work(i)

@agent_ledger_sdk.session("left-open")
def stream():
    work(-1)
    yield 1
    yield 2

job()
gen = stream()
next(gen)  # left open: the exit hook ends its session
"""


class _Overloaded(BaseHTTPRequestHandler):
    """A ledger that answers 503 to everything, and counts what it was asked."""

    protocol_version = "HTTP/1.1"
    requests: list[str] = []  # noqa: RUF012

    def do_POST(self) -> None:
        self.requests.append(self.path)
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = b'{"error": "overloaded"}'
        self.send_response(503)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def ledger_that_is(state: str, port: int) -> Iterator[None]:
    """Nothing on ``port`` (down), a server that answers 503 (failing), or one that never answers (hanging)."""
    if state == "down":
        yield
    elif state == "failing":
        _Overloaded.requests = []
        overloaded = ThreadingHTTPServer(("127.0.0.1", port), _Overloaded)
        threading.Thread(target=overloaded.serve_forever, daemon=True).start()
        try:
            yield
        finally:
            overloaded.shutdown()
            overloaded.server_close()
    else:
        with socket.socket() as silent:
            silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            silent.bind(("127.0.0.1", port))
            silent.listen(64)
            yield


@pytest.mark.integration
@pytest.mark.parametrize("state", ["down", "failing", "hanging"])
def test_what_a_process_leaves_at_exit_when_the_ledger_is_not_there_is_delivered_by_the_next_one(
    tmp_path: Path, state: str
) -> None:
    db, port = tmp_path / "ledger.db", free_port()
    with ledger_on(db, port) as ledger:
        env = ledger.env()
    with ledger_that_is(state, port):
        began = time.monotonic()
        first = run_script(AN_AGENT_THAT_EXITS, env)
        elapsed = time.monotonic() - began
    assert first.returncode == 0, first.stderr
    assert elapsed < EXIT_FLUSH_TIMEOUT + 4  # bounded, whatever the ledger does
    assert "they wait in the journal" in first.stderr
    assert journal_files()
    if state == "failing":
        # For its EXIT_FLUSH_TIMEOUT s the exit hook retries with backoff (0.25, 0.5, 1, 2 s...):
        # a few tries, not one every few milliseconds.
        assert 1 <= len(_Overloaded.requests) <= 8, _Overloaded.requests

    with ledger_on(db, port) as ledger:  # the same address and database, up (again)
        assert ledger.url == env["AGENT_LEDGER_BASE_URL"]
        assert ledger.sessions("offline-at-exit") == []
        next_client(env)
        (job,) = ledger.sessions("offline-at-exit")
        assert (job["eventCount"], job["status"]) == (100, "success")  # each event once
        assert arrival_steps(ledger.db_path, job["id"]) == tool_steps(50)
        (abandoned,) = ledger.sessions("left-open")
        assert (abandoned["eventCount"], abandoned["status"]) == (2, "error")
        assert abandoned["errorMessage"] == "Session still open at interpreter exit"
        assert journal_files() == []  # delivered, and its files removed
        assert "running" not in {s["status"] for s in ledger.sessions()}


@pytest.mark.integration
def test_a_client_that_only_flushes_delivers_the_journal_it_finds(tmp_path: Path) -> None:
    db, port = tmp_path / "ledger.db", free_port()
    with ledger_on(db, port) as ledger:
        key, url = ledger.api_key, ledger.url
    offline = AgentLedgerClient(api_key=key, base_url=url, journal=tmp_path / "journal")
    with offline.session("journaled") as session:
        session.log("tick")
    assert offline.close(timeout=0.3) > 0  # left in the journal
    with ledger_on(db, port) as ledger:
        later = AgentLedgerClient(api_key=key, base_url=url, journal=tmp_path / "journal")
        assert later.flush(10) == 0
        later.close()
        (summary,) = ledger.sessions("journaled")
        assert (summary["eventCount"], summary["status"]) == (1, "success")
        assert list((tmp_path / "journal").glob("*.jsonl")) == []


# -- an outage shorter than the retry window ----------------------------------------


@pytest.mark.integration
def test_an_outage_shorter_than_the_retry_window_loses_nothing_and_keeps_the_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent_ledger_sdk")
    db, port = tmp_path / "ledger.db", free_port()
    with ledger_on(db, port) as first:
        client = AgentLedgerClient(api_key=first.api_key, base_url=first.url, journal=tmp_path / "journal")

        @client.tool
        def work(i: int) -> int:
            return i

        stop = threading.Event()
        calls: list[int] = []

        def agent() -> None:
            with client.session("through-the-outage"):
                i = 0
                while not stop.is_set():
                    work(i)
                    i += 1
                    if i % 5 == 0:
                        time.sleep(0.001)
            calls.append(i)

        thread = threading.Thread(target=agent)
        thread.start()
        time.sleep(1.0)
    # Down for 2 s; a session starts and ends meanwhile.
    with client.session("during-the-outage"):
        work(-1)
    time.sleep(2.0)
    with ledger_on(db, port) as ledger:
        time.sleep(1.0)
        stop.set()
        thread.join(10)
        assert client.flush(30) == 0
        messages = [r.getMessage() for r in caplog.records]
        assert any("the ledger failed" in m for m in messages)  # the outage was real
        assert any("answers again" in m for m in messages)
        (through,) = ledger.sessions("through-the-outage")
        assert (through["eventCount"], through["status"]) == (2 * calls[0], "success")
        assert arrival_steps(db, through["id"]) == tool_steps(calls[0])  # once each, in step order
        (during,) = ledger.sessions("during-the-outage")
        assert (during["eventCount"], during["status"]) == (2, "success")
        assert "running" not in {s["status"] for s in ledger.sessions()}
        stats = client.stats
        assert (stats.sent, stats.failed, stats.dropped) == (2 * calls[0] + 2, 0, 0)
        assert stats.journaled_bytes == 0  # it never needed the journal
        client.close()


@pytest.mark.integration
def test_a_batch_the_ledger_applied_without_answering_is_recorded_once_after_the_journal(
    ledger: Any, tmp_path: Path
) -> None:
    # A proxy loses the ledger's answer to the first batch; with retry_window=0 that batch goes
    # straight to the journal, where the events recorded next follow it: journal records of one
    # session are sent merged, under a new key, but not the one that may have been applied.
    real = httpx.HTTPTransport()
    lost: list[str] = []

    class LosesTheFirstAnswer(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = real.handle_request(request)
            if request.url.path == "/v1/events" and not lost:
                lost.append(request.headers["idempotency-key"])
                response.read()
                return httpx.Response(502, json={"error": "the proxy lost the answer"})
            return response

    client = AgentLedgerClient(
        api_key=ledger.api_key,
        base_url=ledger.url,
        transport=LosesTheFirstAnswer(),
        retry_window=0,
        journal=tmp_path / "journal",
    )

    @client.tool
    def work(i: int) -> int:
        return i

    with client.session("answer-lost"):
        for i in range(50):
            work(i)
        time.sleep(0.05)  # the first batch is sent and its answer lost
        for i in range(50, 100):
            work(i)
    assert client.flush(10) == 0
    client.close()
    real.close()
    assert lost
    (summary,) = ledger.sessions("answer-lost")
    assert (summary["eventCount"], summary["status"]) == (200, "success")
    assert arrival_steps(ledger.db_path, summary["id"]) == tool_steps(100)


@pytest.mark.integration
def test_a_journal_request_the_ledger_applied_without_answering_is_recorded_once(ledger: Any, tmp_path: Path) -> None:
    # Past a small memory bound events go to the journal one by one, and are sent from there
    # merged, many records a request. The answer to the first merged request is lost; by its
    # retry more records are journaled: it must be made again as it was (same records, same key).
    real = httpx.HTTPTransport()
    lost: list[str] = []
    answer_lost = threading.Event()

    class LosesTheFirstMergedAnswer(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = real.handle_request(request)
            key = request.headers.get("idempotency-key", "")
            if request.url.path == "/v1/events" and "-g" in key and not lost:
                lost.append(key)
                response.read()
                answer_lost.set()
                return httpx.Response(502, json={"error": "the proxy lost the answer"})
            return response

    client = AgentLedgerClient(
        api_key=ledger.api_key,
        base_url=ledger.url,
        transport=LosesTheFirstMergedAnswer(),
        max_queue_bytes=16 * 1024,
        journal=tmp_path / "journal",
    )

    @client.tool
    def work(i: int) -> int:
        return i

    with client.session("merged-answer-lost"):
        for i in range(100):
            work(i)
        assert answer_lost.wait(10)
        for i in range(100, 300):  # journaled while the lost request waits for its retry (0.25 s)
            work(i)
    assert client.flush(20) == 0
    client.close()
    real.close()
    assert lost
    (summary,) = ledger.sessions("merged-answer-lost")
    assert (summary["eventCount"], summary["status"]) == (600, "success")
    assert arrival_steps(ledger.db_path, summary["id"]) == tool_steps(300)


# -- SIGTERM ------------------------------------------------------------------------


@pytest.mark.integration
@needs_sigterm
def test_sigterm_delivers_what_is_queued_and_the_process_still_dies_of_it(ledger: Any) -> None:
    code = """
        import time
        import agent_ledger_sdk

        @agent_ledger_sdk.tool
        def work(i):
            return i

        with agent_ledger_sdk.session("terminated"):
            for i in range(5000):
                work(i)
            print(agent_ledger_sdk.get_client().stats.queued, flush=True)
            time.sleep(60)
        """
    with started(code, ledger.env()) as process:
        assert process.stdout is not None
        queued = int(process.stdout.readline())
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(15)
        died_after = time.monotonic() - began
    assert process.returncode == -signal.SIGTERM
    assert queued > 0  # the sender had not delivered them all yet
    assert died_after < SIGTERM_FLUSH_TIMEOUT + 3
    next_client(ledger.env())  # delivers what was journaled, if anything was
    (summary,) = ledger.sessions("terminated")
    assert (summary["eventCount"], summary["status"]) == (10_000, "error")
    assert summary["errorMessage"] == "Terminated by SIGTERM"
    assert arrival_steps(ledger.db_path, summary["id"]) == tool_steps(5000)


@pytest.mark.integration
@needs_sigterm
def test_sigterm_in_the_middle_of_a_flood_loses_nothing_that_was_recorded(ledger: Any) -> None:
    # Faster than the ledger takes them: what the SIGTERM handler cannot deliver in its
    # SIGTERM_FLUSH_TIMEOUT seconds goes to the journal, and the next client delivers it.
    code = """
        import agent_ledger_sdk

        with agent_ledger_sdk.session("flooding") as session:
            for i in range(60_000):
                session.log("tick", i=i)
                if i == 1000:
                    print("recording", flush=True)
            print("done", flush=True)
            import time
            time.sleep(60)
        """
    with started(code, ledger.env()) as process:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "recording"
        time.sleep(random.uniform(0.05, 0.4))
        process.send_signal(signal.SIGTERM)
        process.wait(15)
    assert process.returncode == -signal.SIGTERM
    next_client(ledger.env())
    (summary,) = ledger.sessions("flooding")
    assert (summary["status"], summary["errorMessage"]) == ("error", "Terminated by SIGTERM")
    steps = sorted(arrival_steps(ledger.db_path, summary["id"]))
    assert len(steps) > 1000
    assert steps == list(range(len(steps)))  # no gap, no duplicate: all that was recorded, once
    assert summary["eventCount"] == len(steps)


@pytest.mark.integration
@needs_sigterm
def test_sigterm_that_interrupts_the_thread_while_it_queues_an_event_still_delivers(ledger: Any) -> None:
    # The handler runs on the main thread, between two bytecodes of whatever it was doing:
    # here, as when a signal lands while the SDK holds its queue's lock on that thread
    # (spilling an event to the journal, starting the sender).
    code = """
        import os, signal, time
        import agent_ledger_sdk

        with agent_ledger_sdk.session("interrupted") as session:
            for i in range(3000):
                session.log("tick", i=i)
            sender = agent_ledger_sdk.get_client()._instrumentation.sender
            with sender._lock:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)
        """
    result = run_script(code, ledger.env())
    assert result.returncode == -signal.SIGTERM
    assert "agent-ledger" not in result.stderr, result.stderr
    (summary,) = ledger.sessions("interrupted")
    assert (summary["eventCount"], summary["status"]) == (3000, "error")
    assert summary["errorMessage"] == "Terminated by SIGTERM"


# A SIGTERM taken by another thread (or landing just before the main thread blocks) while the main thread waits
# in sem_wait, as a multiprocessing pool's worker does between tasks: the handler stays pending. It once hung
# Pool.terminate() (tests/test_budget_end_to_end.py's 32 processes, about one run in 25).
SIGTERM_WHILE_THE_MAIN_THREAD_WAITS = """
    import multiprocessing, signal, threading, time
    import agent_ledger_sdk

    def taken_by_another_thread():
        time.sleep(0.3)
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

    with agent_ledger_sdk.session(NAME) as session:
        session.log("tick")
        agent_ledger_sdk.flush()
        threading.Thread(target=taken_by_another_thread, daemon=True).start()
        multiprocessing.Semaphore(0).acquire()  # no task will come
    """


@pytest.mark.integration
@needs_sigterm
def test_sigterm_taken_while_the_main_thread_waits_in_sem_wait_still_ends_the_process(ledger: Any) -> None:
    result = run_script(SIGTERM_WHILE_THE_MAIN_THREAD_WAITS.replace("NAME", repr("waiting")), ledger.env(), timeout=30)
    assert result.returncode == -signal.SIGTERM, result.stderr
    (summary,) = ledger.sessions("waiting")
    assert (summary["eventCount"], summary["status"]) == (1, "error")
    assert summary["errorMessage"] == "Terminated by SIGTERM"


@pytest.mark.integration
@needs_sigterm
def test_a_forked_child_has_a_sigterm_watchdog_of_its_own_and_the_parent_lives_on(ledger: Any) -> None:
    child = textwrap.indent(textwrap.dedent(SIGTERM_WHILE_THE_MAIN_THREAD_WAITS), " " * 16)
    code = f"""
        import os, signal, sys, time
        import agent_ledger_sdk
        from agent_ledger_sdk import _lifecycle

        with agent_ledger_sdk.session("parent") as session:
            session.log("tick")
            agent_ledger_sdk.flush()
            pid = os.fork()
            if pid == 0:
{child.replace("NAME", repr("child"))}
                os._exit(0)  # not reached: SIGTERM ends the child
            _, status = os.waitpid(pid, 0)
            print(os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, flush=True)
            os.write(_lifecycle._watchdog_fds[1], bytes([signal.SIGTERM]))  # a stray byte: only a SIGURG
            time.sleep(2 * _lifecycle.SIGTERM_NUDGE + 0.5)
            print("alive", flush=True)
        """
    result = run_script(code, ledger.env(), timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "alive"]
    (child_session,) = ledger.sessions("child")
    assert (child_session["status"], child_session["errorMessage"]) == ("error", "Terminated by SIGTERM")
    (parent_session,) = ledger.sessions("parent")
    assert parent_session["status"] == "success"


@pytest.mark.integration
@needs_sigterm
def test_a_wakeup_fd_already_set_is_left_alone_and_no_watchdog_starts(ledger: Any) -> None:
    code = """
        import os, signal, threading
        import agent_ledger_sdk

        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd)  # as an event loop's add_signal_handler does
        with agent_ledger_sdk.session("own-wakeup-fd") as session:
            session.log("tick")
            agent_ledger_sdk.flush()
            print(signal.set_wakeup_fd(-1) == write_fd, signal.getsignal(signal.SIGURG) is signal.SIG_DFL, flush=True)
            print(any(t.name == "agent-ledger-sigterm" for t in threading.enumerate()), flush=True)
        """
    result = run_script(code, ledger.env(), timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "False"]


@pytest.mark.integration
@needs_sigterm
def test_a_process_with_its_own_sigterm_handler_keeps_it(ledger: Any) -> None:
    code = """
        import signal, sys, time

        def on_sigterm(signum, frame):
            print("the user's handler", flush=True)
            sys.exit(0)

        signal.signal(signal.SIGTERM, on_sigterm)
        import agent_ledger_sdk

        @agent_ledger_sdk.tool
        def work(i):
            return i

        with agent_ledger_sdk.session("own-handler"):
            for i in range(100):
                work(i)
            agent_ledger_sdk.flush()  # the sender runs: the SDK had its chance to install its own
            print(signal.getsignal(signal.SIGTERM) is on_sigterm, flush=True)
            time.sleep(60)
        """
    with started(code, ledger.env()) as process:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "True"
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=15)
    assert process.returncode == 0, err
    assert out.strip() == "the user's handler"
    (summary,) = ledger.sessions("own-handler")
    assert (summary["eventCount"], summary["status"]) == (200, "success")  # sys.exit(0): a normal end


# -- atexit -------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("registered", ["after importing the SDK", "before importing the SDK"])
def test_a_session_run_by_an_atexit_handler_runs_and_is_recorded(ledger: Any, registered: str) -> None:
    # atexit runs handlers last registered first: registered after the import, this one runs
    # before the SDK's exit hook; registered before, it runs after it (when, from Python 3.12,
    # no thread can start, and before 3.12 none would be waited for: its caller delivers).
    before = registered.startswith("before")
    code = f"""
        import atexit
        {"" if before else "import agent_ledger_sdk"}

        def last_words():
            import agent_ledger_sdk

            @agent_ledger_sdk.tool
            def work(i):
                return i * 2

            @agent_ledger_sdk.session("at-exit")
            def report():
                return sum(work(i) for i in range(20))

            print("result", report(), flush=True)

        atexit.register(last_words)
        {"import agent_ledger_sdk" if before else ""}
        print("main done", flush=True)
        """
    result = run_script(code, ledger.env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n") == ["main done", "result 380", ""]
    assert "agent-ledger" not in result.stderr, result.stderr
    (summary,) = ledger.sessions("at-exit")
    assert (summary["eventCount"], summary["status"]) == (40, "success")
    assert arrival_steps(ledger.db_path, summary["id"]) == tool_steps(20)


# -- SessionHandle.id ---------------------------------------------------------------

READ_THE_ID = """
import json, os, sys, time
import agent_ledger_sdk

with agent_ledger_sdk.session("identified") as session:
    session.log("tick")
    reads = []
    for _ in range(2):
        began = time.monotonic()
        reads.append((session.id, time.monotonic() - began))
print(json.dumps(reads))
sys.stdout.flush()
os._exit(0)  # no exit hook: with a ledger that hangs, it would wait EXIT_FLUSH_TIMEOUT s for nothing
"""


def test_session_id_waits_at_most_its_bound_when_the_ledger_hangs() -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        result = run_script(READ_THE_ID, {"AGENT_LEDGER_BASE_URL": url, "AGENT_LEDGER_API_KEY": "k"})
    assert result.returncode == 0, result.stderr
    (first, waited), (second, again) = json.loads(result.stdout)
    assert first is None and second is None
    assert ID_WAIT_TIMEOUT - 0.1 <= waited <= ID_WAIT_TIMEOUT + 0.5
    assert again < 0.1  # it waits once: an agent reading it again is not slowed down again


@pytest.mark.integration
def test_session_id_is_the_id_the_ledger_recorded(ledger: Any) -> None:
    result = run_script(READ_THE_ID.replace("os._exit(0)", "agent_ledger_sdk.flush(10)"), ledger.env())
    assert result.returncode == 0, result.stderr
    (first, waited), (second, again) = json.loads(result.stdout)
    (summary,) = ledger.sessions("identified")
    assert first == second == summary["id"]
    assert waited < ID_WAIT_TIMEOUT and again < 0.1  # known after one round trip, then at once
    assert (summary["eventCount"], summary["status"]) == (1, "success")


class _RequestInFlightAtTheDeadline:
    """What the exit hook sees of a client whose last request was still in flight when its time ran out."""

    def __init__(self, left_after: int) -> None:
        self.left_after = left_after

    def end_open_sessions(self, reason: str) -> None:
        pass

    def flush(self, timeout: float) -> int:
        return 1  # the deadline came with one event in a request

    def journal_remaining(self) -> None:
        return None  # by then memory held nothing to journal (or there was no journal)

    def left(self) -> int:
        return self.left_after  # 0: that request ended, delivered; 1: still undelivered


@pytest.mark.parametrize("left_after", [0, 1])
def test_at_exit_only_events_still_undelivered_are_reported_lost(
    left_after: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A forked child on a loaded machine said "1 events were not sent" of an event its last request delivered
    just after the exit hook's deadline (the ledger had it). Only what is still undelivered is reported lost."""
    import weakref

    from agent_ledger_sdk import _lifecycle

    client = _RequestInFlightAtTheDeadline(left_after)
    monkeypatch.setattr(_lifecycle, "live", weakref.WeakSet([client]))
    with caplog.at_level(logging.WARNING, logger="agent_ledger_sdk"):
        _lifecycle.shut_down("exit", 0.01)
    lost = [r.getMessage() for r in caplog.records if "were not sent before the interpreter exited" in r.getMessage()]
    assert lost == ([] if left_after == 0 else ["agent-ledger: 1 events were not sent before the interpreter exited"])
