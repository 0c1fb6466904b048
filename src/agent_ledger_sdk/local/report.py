"""Plain-text tables of sessions, timelines, budgets and keys, for the CLI and the demo."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Optional


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, right: Sequence[int] = ()) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def usd(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return f"${value:.6f}" if 0 < value < 0.01 else f"${value:.4f}"


def _short(value: Any, width: int) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _tags(session: dict[str, Any]) -> str:
    return ",".join(session.get("tags") or ())


def sessions_table(sessions: Sequence[dict[str, Any]]) -> str:
    if not sessions:
        return "No sessions recorded yet."
    rows = [
        (
            s["id"],
            s["agentName"],
            _short(s.get("userId") or "", 24),
            s["status"],
            s["startedAt"][:19].replace("T", " "),
            s["eventCount"],
            s["tokensIn"] + s["tokensOut"],
            usd(s["costUsd"]),
            _short(_tags(s), 30),
            _short(s.get("errorMessage") or "", 40),
        )
        for s in sessions
    ]
    return table(
        ["SESSION", "AGENT", "USER", "STATUS", "STARTED (UTC)", "EVENTS", "TOKENS", "COST", "TAGS", "ERROR"],
        rows,
        right=(5, 6, 7),
    )


def _what(event: dict[str, Any]) -> str:
    if event.get("type") == "llm_call":
        return f"{event.get('provider')}/{event.get('model')}"
    return str(event.get("toolName") or "")


def _detail(event: dict[str, Any]) -> str:
    kind = event.get("type")
    if event.get("error"):
        return f"error: {event['error']}"
    if kind == "tool_result" and isinstance(event.get("toolOutput"), dict) and "errorType" in event["toolOutput"]:
        output = event["toolOutput"]
        return f"error: {output['errorType']}: {output.get('error')}"
    if kind == "tool_call":
        return f"input {_short(event.get('toolInput'), 46)}"
    if kind == "tool_result":
        return f"output {_short(event.get('toolOutput'), 45)}"
    if kind == "llm_call":
        note = "" if event.get("priced", True) else "  [unpriced]"
        return f"{_short(event.get('response'), 44)}{note}"
    extra = {k: v for k, v in event.items() if k not in _BOOKKEEPING}
    return _short(extra, 52)


_BOOKKEEPING = {
    "type",
    "stepIndex",
    "costUsd",
    "priced",
    "pricingNote",
    "receivedAt",
    "startedAt",
    "spanId",
    "parentSpanId",
}


def _depths(events: Sequence[dict[str, Any]]) -> list[int]:
    """How deep each event sits: one level below the earlier event whose spanId is its parentSpanId."""
    spans: dict[str, int] = {}
    depths = []
    for event in events:
        parent = event.get("parentSpanId")
        depth = spans[parent] + 1 if isinstance(parent, str) and parent in spans else 0
        span = event.get("spanId")
        if isinstance(span, str):
            spans.setdefault(span, depth)
        depths.append(depth)
    return depths


def _clock(started: Any, day: str) -> str:
    """An event's start: the time of day (to the ms) on ``day``, else the date and the time."""
    if not isinstance(started, str):
        return ""
    text = started.replace("T", " ").replace("t", " ").rstrip("Zz").replace("+00:00", "")
    return text[11:23] if text[:10] == day else text[:23]


def _context(session: dict[str, Any]) -> list[str]:
    lines = []
    if session.get("parentSessionId"):
        lines.append(f"  parent session: {session['parentSessionId']}")
    if session.get("childSessionIds"):
        lines.append(f"  child sessions: {', '.join(session['childSessionIds'])}")
    if session.get("metadata"):
        lines.append(f"  metadata: {_short(json.dumps(session['metadata'], ensure_ascii=False), 100)}")
    return lines


def timeline(session: dict[str, Any]) -> str:
    header = (
        f"Session {session['id']}  agent={session['agentName']}  status={session['status']}"
        + (f"  user={session['userId']}" if session.get("userId") else "")
        + (f"  tags={_tags(session)}" if session.get("tags") else "")
        + (f"  error={session['errorMessage']!r}" if session.get("errorMessage") else "")
    )
    events = session["events"]
    starts = [event["startedAt"] for event in events if isinstance(event.get("startedAt"), str)]
    timed = bool(starts)
    day = starts[0][:10] if starts else ""  # the first timed event's day: its times show without the date
    rows = []
    for event, depth in zip(events, _depths(events)):
        tokens = ""
        if event.get("type") == "llm_call":
            tokens = f"{event.get('tokensIn', 0)}→{event.get('tokensOut', 0)}"
        latency = event.get("latencyMs")
        row = [
            event.get("stepIndex", ""),
            "  " * depth + str(event.get("type")),
            _what(event),
            f"{latency} ms" if latency is not None else "",
            tokens,
            usd(event.get("costUsd")) if event.get("type") == "llm_call" else "",
            _detail(event),
        ]
        if timed:
            row.insert(1, _clock(event.get("startedAt"), day))
        rows.append(row)
    headers = ["STEP", "TYPE", "TOOL / MODEL", "LATENCY", "TOKENS", "COST", "DETAIL"]
    right = (0, 3, 5)
    if timed:
        headers.insert(1, "STARTED (UTC)")
        right = (0, 4, 6)
    body = table(headers, rows, right=right)
    unpriced = session.get("unpricedEvents", 0)
    total = (
        f"Total: {session['eventCount']} events, {session['tokensIn']} tokens in, {session['tokensOut']} out, "
        f"{usd(session['costUsd'])}" + (f"  ({unpriced} unpriced LLM calls)" if unpriced else "")
    )
    return "\n".join([header, *_context(session), body, total])


def budgets_table(budgets: Sequence[dict[str, Any]]) -> str:
    if not budgets:
        return "No budgets set and no spend today. Set one with: agent-ledger budget set AGENT USD"
    rows = [
        (b["workspace"], b["agentName"], usd(b["dailyLimitUsd"]), usd(b["spentTodayUsd"]), usd(b["remainingBudgetUsd"]))
        for b in budgets
    ]
    resets = budgets[0]["resetsAt"]
    return table(["WORKSPACE", "AGENT", "DAILY LIMIT", "SPENT TODAY", "REMAINING"], rows, right=(2, 3, 4)) + (
        f"\nDaily budgets reset at 00:00 UTC (next: {resets})."
    )


def keys_table(keys: Sequence[Any]) -> str:
    if not keys:
        return "No API keys. Create one with: agent-ledger keys create --name NAME"
    rows = [
        (k.id, k.name, k.workspace, k.created_at[:19].replace("T", " "), "revoked" if k.revoked_at else "active")
        for k in keys
    ]
    return table(["ID", "NAME", "WORKSPACE", "CREATED (UTC)", "STATE"], rows)
