"""The journal goes out in large requests per session, interleaved or not, and exactly once across failures and crashes.

Sessions recorded side by side journal their events interleaved, one record an
event. The sender reads the journal a window at a time and sends each window's
records as one request per session; a window read again (after a failed
request, or by the process that claims the journal after a crash) makes the same
requests under the same keys, so the ledger counts each event once.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_ledger_sdk import AgentLedgerClient
from agent_ledger_sdk._journal import SEAL, Journal

from .subprocesses import free_port, run_script

SESSIONS = 4
STEPS = 300


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Any]:
    pytest.importorskip("starlette")
    from agent_ledger_sdk.local import run

    with run(db=tmp_path / "ledger.db") as running:
        yield running


def write_interleaved(journal: Path, sessions: int = SESSIONS, steps: int = STEPS) -> None:
    """A client whose ledger is down journals ``sessions`` sessions' events, one of each in turn, then exits."""
    client = AgentLedgerClient(
        api_key="key", base_url=f"http://127.0.0.1:{free_port()}", max_queue_bytes=1024, journal=journal
    )
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(client.session(f"s{k}")) for k in range(sessions)]
        for _ in range(steps):
            for handle in handles:
                handle.log("step")
    client.close(0.2)
    assert client.stats.dropped == 0
    assert list(journal.glob("*.jsonl"))


def arrival_steps(db: Path, session_id: str) -> list[int]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
        rows = connection.execute(
            "SELECT step_index FROM events WHERE session_id = ? ORDER BY seq", (session_id,)
        ).fetchall()
    return [row[0] for row in rows]


def event_count(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
        return int(connection.execute("SELECT count(*) FROM events").fetchone()[0])


def assert_each_session_whole_and_in_order(ledger: Any, sessions: int = SESSIONS, steps: int = STEPS) -> None:
    for k in range(sessions):
        (summary,) = ledger.sessions(f"s{k}")
        assert arrival_steps(ledger.db_path, summary["id"]) == list(range(steps)), f"s{k}"
        assert summary["status"] == "success"


class Recording(httpx.BaseTransport):
    """The real transport, noting each request's path and idempotency key."""

    def __init__(self) -> None:
        self.real = httpx.HTTPTransport()
        self.requests: list[tuple[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.url.path, request.headers.get("idempotency-key", "")))
        return self.real.handle_request(request)

    def close(self) -> None:
        self.real.close()

    def events(self) -> list[str]:
        return [key for path, key in self.requests if path == "/v1/events"]


@pytest.mark.integration
def test_interleaved_sessions_journaled_go_out_in_a_few_requests_each_in_its_order(ledger: Any, tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    write_interleaved(journal)
    transport = Recording()
    client = ledger.client(journal=journal, transport=transport)
    assert client.flush(30) == 0
    client.close()
    transport.close()
    # 1,200 records, each session's next one four lines on: a request per session (and per segment that
    # the exit wrote from memory), not one per record as when only consecutive records were merged.
    assert len(transport.events()) <= 2 * SESSIONS, transport.events()
    assert_each_session_whole_and_in_order(ledger)
    assert event_count(ledger.db_path) == SESSIONS * STEPS
    assert client.stats.sent == SESSIONS * STEPS
    assert not list(journal.glob("*.jsonl"))


class SlowEvents(Recording):
    """The real transport, each batch of events answered ``delay`` seconds later; ``first_batch`` is set at the first."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.first_batch = threading.Event()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/events":
            self.first_batch.set()
            time.sleep(self.delay)
        return super().handle_request(request)


@pytest.mark.integration
def test_events_queued_before_a_spill_go_before_it_while_an_older_journal_is_delivered(
    ledger: Any, tmp_path: Path
) -> None:
    """An older process's journal is being delivered (slowly) when this process's queue fills: the events queued
    before the spill go out before the spilled ones, the session's end among them. (They once went after: the
    ledger refused them, the session had ended.)"""
    journal = tmp_path / "journal"
    write_interleaved(journal)
    transport = SlowEvents(0.05)
    client = ledger.client(journal=journal, transport=transport, max_queue_bytes=32 * 1024)
    with client.session("now") as session:
        assert transport.first_batch.wait(10)  # the sender is delivering the older journal now
        for _ in range(1_000):
            session.log("step")
    assert client.flush(60) == 0
    stats = client.stats
    client.close()
    transport.close()
    assert (stats.failed, stats.dropped) == (0, 0)
    (now,) = ledger.sessions("now")
    assert arrival_steps(ledger.db_path, now["id"]) == list(range(1_000))
    assert now["status"] == "success"
    assert_each_session_whole_and_in_order(ledger)


@pytest.mark.integration
def test_a_process_killed_after_the_ledger_took_some_requests_is_redone_by_the_next_exactly(
    ledger: Any, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    write_interleaved(journal)
    died = run_script(
        """
        import os, sys
        import httpx
        from agent_ledger_sdk import AgentLedgerClient

        real = httpx.HTTPTransport()
        taken = []

        class DiesAfterTheLedgerTookTwo(httpx.BaseTransport):
            def handle_request(self, request):
                response = real.handle_request(request)
                if request.url.path == "/v1/events" and response.status_code < 300:
                    taken.append(request.headers["idempotency-key"])
                    if len(taken) == 2:
                        print(" ".join(taken), flush=True)
                        os._exit(3)  # applied by the ledger, never known to us
                return response

        client = AgentLedgerClient(
            api_key=sys.argv[1], base_url=sys.argv[2], journal=sys.argv[3], transport=DiesAfterTheLedgerTookTwo()
        )
        client.flush(30)
        os._exit(0)
        """.replace("sys.argv[1]", repr(ledger.api_key))
        .replace("sys.argv[2]", repr(ledger.url))
        .replace("sys.argv[3]", repr(str(journal))),
        {},
    )
    assert died.returncode == 3, died.stderr
    taken_before = died.stdout.split()
    arrived_before = event_count(ledger.db_path)
    assert 0 < arrived_before < SESSIONS * STEPS  # it died in the middle

    transport = Recording()
    client = ledger.client(journal=journal, transport=transport)
    assert client.flush(30) == 0
    client.close()
    transport.close()
    assert set(taken_before) <= set(transport.events())  # made again, under the same keys
    assert event_count(ledger.db_path) == SESSIONS * STEPS  # and counted once
    assert_each_session_whole_and_in_order(ledger)
    assert not list(journal.glob("*.jsonl"))


@pytest.mark.integration
def test_a_journal_request_failing_after_the_ledger_applied_it_is_made_again_alone_and_counted_once(
    ledger: Any, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    write_interleaved(journal)

    class LosesTheSecondAnswer(Recording):
        def __init__(self) -> None:
            super().__init__()
            self.lost: list[str] = []

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = super().handle_request(request)
            if request.url.path == "/v1/events" and len(self.events()) == 2:
                response.read()
                self.lost.append(request.headers["idempotency-key"])
                raise httpx.ReadError("the connection dropped before the answer")
            return response

    transport = LosesTheSecondAnswer()
    client = ledger.client(journal=journal, transport=transport)
    assert client.flush(30) == 0
    client.close()
    transport.close()
    keys = transport.events()
    (lost,) = transport.lost
    assert keys.count(lost) == 2  # tried again, under its key
    assert len(keys) == len(set(keys)) + 1  # and only it: the first was not made again
    assert event_count(ledger.db_path) == SESSIONS * STEPS
    assert client.stats.sent == SESSIONS * STEPS
    assert_each_session_whole_and_in_order(ledger)


# -- windows -----------------------------------------------------------------------


def lines_of(journal: Journal, max_lines: int = 100, max_bytes: int = 1 << 20) -> list[list[int]]:
    """Every window's records (``{"n": i}``), consuming them."""
    windows = []
    while True:
        window = journal.read_window(max_lines, max_bytes)
        if window is None:
            return windows
        windows.append([json.loads(line)["n"] for line in window.lines])
        journal.consume_window(window)


def test_a_window_is_cut_by_its_bounds_and_the_same_for_the_next_reader(tmp_path: Path) -> None:
    first = Journal(tmp_path)
    first.append([json.dumps({"n": i}) for i in range(10)])
    window = first.read_window(4, 1 << 20)
    assert window is not None
    assert [json.loads(line)["n"] for line in window.lines] == [0, 1, 2, 3]
    first.close()  # (a crash before consuming it: the next claims the file from its start)
    assert lines_of(Journal(tmp_path), 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_a_window_stops_before_a_line_past_its_bytes_but_always_holds_one(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append([json.dumps({"n": 0, "x": "y" * 50}), json.dumps({"n": 1}), json.dumps({"n": 2, "x": "y" * 200})])
    journal.close()
    assert lines_of(Journal(tmp_path), 100, 80) == [[0, 1], [2]]


def test_the_segment_being_written_is_sealed_where_it_was_read(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append([json.dumps({"n": i}) for i in range(3)])
    window = journal.read_window(100, 1 << 20)
    assert window is not None and len(window.lines) == 3
    journal.append([json.dumps({"n": i}) for i in range(3, 5)])  # written while the window is delivered
    (path,) = tmp_path.glob("*.jsonl")
    assert path.read_bytes().count(SEAL) == 1
    journal.close()  # crashed before consuming: the next reader cuts the same windows
    assert lines_of(Journal(tmp_path)) == [[0, 1, 2], [3, 4]]
    assert not list(tmp_path.glob("*.jsonl"))


def test_a_consumed_window_is_forgotten_and_nothing_is_read_until_more_is_written(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    assert journal.read_window(10, 1 << 20) is None
    journal.append([json.dumps({"n": 0})])
    window = journal.read_window(10, 1 << 20)
    assert window is not None
    journal.consume_window(window)
    journal.consume_window(window)  # twice: ignored
    assert journal.is_empty()
    assert journal.read_window(10, 1 << 20) is None
    journal.append([json.dumps({"n": 1})])
    assert lines_of(journal) == [[1]]


def test_a_dead_writers_torn_last_line_ends_its_last_window(tmp_path: Path) -> None:
    (tmp_path / "00000000000000000001-1-aaaaaa.jsonl").write_bytes(b'{"n":1}\n{"n":2}\n{"n":')
    journal = Journal(tmp_path)
    assert lines_of(journal) == [[1, 2]]
    assert journal.is_empty()
    assert not list(tmp_path.glob("*.jsonl"))


def test_journal_records_of_an_older_layout_are_still_delivered(tmp_path: Path) -> None:
    from agent_ledger_sdk._sender import _grouped, _parse

    old = json.dumps(
        {"t": "e", "k": "s", "i": "k1", "a": "agent", "id": "sid", "e": [{"type": "step", "stepIndex": 0}]},
        separators=(",", ":"),
    )
    new = '{"i":"k2","n":29,"e":[{"type":"step","stepIndex":1}],"t":"e","k":"s","a":"agent","id":"sid"}'
    heads: dict[str, dict[str, Any]] = {}
    records = [_parse(old, heads), _parse(new, heads), _parse("not json", heads)]
    assert records[2] is None
    ((head, key, encoded, session_id),) = _grouped([r for r in records if r is not None])
    assert (key, session_id, head["k"]) == ("k1-g2", "sid", "s")
    assert encoded == ['{"type":"step","stepIndex":0}', '{"type":"step","stepIndex":1}']
    assert os.environ.get("AGENT_LEDGER_HOME")  # (the conftest's: nothing of the user's touched)
