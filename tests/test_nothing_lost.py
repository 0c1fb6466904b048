"""With a healthy ledger no event is dropped at any rate: bursts are absorbed, a flood spills to the journal."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_ledger_sdk._journal import Journal

pytestmark = pytest.mark.integration


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[object]:
    pytest.importorskip("starlette")
    from agent_ledger_sdk.local import run

    with run(db=tmp_path / "ledger.db") as running:
        yield running


def test_a_burst_of_100000_events_is_recorded_whole(ledger: object) -> None:
    client = ledger.client()  # type: ignore[attr-defined]

    @client.tool
    def work(i: int) -> int:
        return i

    with client.session("burst"):
        for i in range(50_000):
            work(i)
    assert client.flush(120) == 0
    stats = client.stats
    assert (stats.sent, stats.dropped, stats.failed, stats.rejected) == (100_000, 0, 0, 0)
    (summary,) = ledger.sessions("burst")  # type: ignore[attr-defined]
    assert summary["eventCount"] == 100_000
    assert summary["status"] == "success"
    client.close()


def test_a_flood_beyond_memory_spills_to_the_journal_and_arrives_in_order(
    ledger: object, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent_ledger_sdk")
    client = ledger.client(max_queue_bytes=64 * 1024, journal=tmp_path / "journal")  # type: ignore[attr-defined]

    @client.tool
    def work(i: int) -> str:
        return "x" * 200

    with client.session("flood"):
        for i in range(5_000):
            work(i)
    assert any("events now go to the journal" in r.getMessage() for r in caplog.records)
    assert client.flush(120) == 0
    assert client.stats.sent == 10_000 and client.stats.dropped == 0
    (summary,) = ledger.sessions("flood")  # type: ignore[attr-defined]
    events = ledger.session(summary["id"])["events"]  # type: ignore[attr-defined]
    assert [(e["stepIndex"], e["type"]) for e in events] == [
        (i, kind) for i in range(5_000) for kind in ("tool_call", "tool_result")
    ]
    assert summary["status"] == "success"
    assert client.stats.journaled_bytes == 0  # drained
    assert not list((tmp_path / "journal").glob("*.jsonl"))  # and its files removed
    client.close()


# -- the journal itself ------------------------------------------------------------


def records(journal: Journal, n: int = 100) -> list[dict[str, object]]:
    return [record for record, _ in journal.read(n)]


def test_the_journal_gives_records_back_in_order_and_forgets_them_once_consumed(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    assert journal.append([json.dumps({"n": i}) for i in range(3)])
    assert journal.append([json.dumps({"n": 3})])
    read = journal.read(10)
    assert [r for r, _ in read] == [{"n": 0}, {"n": 1}, {"n": 2}, {"n": 3}]
    journal.consume(sum(size for _, size in read[:2]))
    assert records(journal) == [{"n": 2}, {"n": 3}]
    journal.consume(sum(size for _, size in read[2:]))
    assert records(journal) == []
    assert journal.is_empty()
    assert not list(tmp_path.glob("*.jsonl"))


def test_the_journal_refuses_past_its_bound(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=100)
    assert journal.append(['{"a":"' + "x" * 40 + '"}'])
    assert not journal.append(['{"a":"' + "x" * 60 + '"}'])  # would pass the bound: refused whole
    assert records(journal) == [{"a": "x" * 40}]


def test_the_files_of_a_closed_journal_are_claimed_by_the_next_one(tmp_path: Path) -> None:
    first = Journal(tmp_path)
    first.append([json.dumps({"n": i}) for i in range(5)])
    second = Journal(tmp_path)
    assert records(second) == []  # the first holds its file: alive, not an orphan
    first.close()  # (as a process that exits)
    third = Journal(tmp_path)
    assert records(third) == [{"n": i} for i in range(5)]


def test_a_torn_last_line_of_a_dead_writer_is_skipped_and_the_rest_delivered(tmp_path: Path) -> None:
    (tmp_path / "00000000000000000001-1-aaaaaa.jsonl").write_bytes(b'{"n":1}\n{"n":2}\nnot json\n{"n":3}\n{"n":')
    journal = Journal(tmp_path)
    read = journal.read(10)
    assert [r for r, _ in read] == [{"n": 1}, {"n": 2}, {"n": 3}]
    journal.consume(sum(size for _, size in read))
    assert records(journal) == []
    assert journal.is_empty()


def test_a_record_longer_than_one_read_is_read_whole(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    big = {"e": "y" * 3_000_000}
    journal.append([json.dumps(big)])
    assert records(journal, 1) == [big]
