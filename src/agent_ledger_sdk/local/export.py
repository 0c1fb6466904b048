"""Sessions out of the ledger, a session at a time: JSON Lines (a session and its events per line) and CSV.

Nothing here holds more than one page of sessions and one page of a session's
events at a time, whatever the size of the database: ``agent-ledger export``
streams what it writes. Amounts are exact: JSON numbers with the stored digits
(``money.dumps``), and the same digits as CSV text.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Optional, TextIO

from . import money
from .records import NotFound, SessionQuery
from .service import MAX_EVENTS_PAGE, LedgerService

__all__ = ["CSV_COLUMNS", "FORMATS", "Exported", "export_sessions", "write_session_json"]

FORMATS = ("jsonl", "csv")

# (CSV header, the session's key): the columns of the session each event belongs to.
_SESSION_COLUMNS = (
    ("sessionId", "id"),
    ("workspace", "workspace"),
    ("agentName", "agentName"),
    ("sessionStatus", "status"),
    ("sessionStartedAt", "startedAt"),
    ("sessionEndedAt", "endedAt"),
    ("userId", "userId"),
    ("tags", "tags"),
)
# (CSV header, the event's key).
_EVENT_COLUMNS = (
    ("stepIndex", "stepIndex"),
    ("type", "type"),
    ("provider", "provider"),
    ("model", "model"),
    ("tokensIn", "tokensIn"),
    ("tokensOut", "tokensOut"),
    ("cacheReadTokens", "cacheReadTokens"),
    ("cacheWriteTokens", "cacheWriteTokens"),
    ("costUsd", "costUsd"),
    ("costStatus", "costStatus"),
    ("latencyMs", "latencyMs"),
    ("startedAt", "startedAt"),
    ("receivedAt", "receivedAt"),
    ("toolName", "toolName"),
)
CSV_COLUMNS = tuple(header for header, _ in (*_SESSION_COLUMNS, *_EVENT_COLUMNS))


@dataclass
class Exported:
    sessions: int = 0
    events: int = 0


def _pages(service: LedgerService, session_id: str, workspace: Optional[str]) -> Iterator[dict[str, Any]]:
    """The session with its first page of events, then each further page; NotFound only for the first.

    A session deleted while its pages are read (retention) ends with the events read so far.
    """
    page = service.get_session(session_id, workspace, events_limit=MAX_EVENTS_PAGE)
    while True:
        yield page
        following = page["nextEventsCursor"]
        if following is None:
            return
        try:
            page = service.get_session(session_id, workspace, events_limit=MAX_EVENTS_PAGE, events_cursor=following)
        except NotFound:
            return


def write_session_json(out: TextIO, service: LedgerService, session_id: str, workspace: Optional[str] = None) -> int:
    """Write a session with every event as one JSON object (``GET /v1/sessions/{id}`` with all its events,
    no cursor), on one line with no newline; return how many events. NotFound if there is no such session.

    The events are written a page at a time: a session of a million events never sits in memory.
    """
    pages = _pages(service, session_id, workspace)
    first = next(pages)
    session = {k: v for k, v in first.items() if k not in ("events", "nextEventsCursor")}
    head = money.dumps(session)
    out.write(head[:-1] + ',"events":[')  # the object without its closing brace, then the events
    count = 0
    for page in itertools.chain((first,), pages):
        for event in page["events"]:
            if count:
                out.write(",")
            out.write(money.dumps(event))
            count += 1
    out.write("]}")
    return count


def _cell(value: Any) -> str:
    """CSV text: amounts with their exact digits, JSON's true/false, nothing for null."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return money.text(value)
    if isinstance(value, float):  # a latency, say: its shortest digits, never an exponent
        return money.text(money.exact(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def _session_cells(session: Mapping[str, Any]) -> list[str]:
    cells = []
    for _, key in _SESSION_COLUMNS:
        value = session.get(key)
        cells.append(",".join(str(tag) for tag in value) if key == "tags" and isinstance(value, list) else _cell(value))
    return cells


def export_sessions(service: LedgerService, out: TextIO, fmt: str, query: SessionQuery) -> Exported:
    """Write every session ``query`` matches (newest first) to ``out`` as ``jsonl`` or ``csv``.

    jsonl: one JSON object per session, its events in ``events`` (see :func:`write_session_json`).
    csv: a header row, then one row per event: the session's columns, then the event's (a session
    without events has no row).
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format takes {' or '.join(FORMATS)}, not {fmt!r}")
    done = Exported()
    writer = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
    if writer is not None:
        writer.writerow(CSV_COLUMNS)
    for summary in service.iter_sessions(query):
        try:
            if writer is None:
                done.events += write_session_json(out, service, summary["id"], summary["workspace"])
                out.write("\n")
            else:
                done.events += _write_csv_rows(writer, service, summary)
        except NotFound:  # deleted since it was listed
            continue
        done.sessions += 1
    return done


def _write_csv_rows(writer: Any, service: LedgerService, summary: Mapping[str, Any]) -> int:
    count = 0
    session: Sequence[str] = ()
    for page in _pages(service, summary["id"], summary["workspace"]):
        if not session:
            session = _session_cells(page)
        for event in page["events"]:
            writer.writerow([*session, *(_cell(event.get(key)) for _, key in _EVENT_COLUMNS)])
            count += 1
    return count
