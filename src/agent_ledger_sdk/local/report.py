"""Plain-text tables of sessions, timelines, budgets, prices and keys, for the CLI and the demo."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Optional, Union

from . import money
from .records import LEDGER_EVENT_FIELDS


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, right: Sequence[int] = ()) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def usd(value: Union[Decimal, float, None]) -> str:
    """An amount for a table: four decimals, six below a cent, and every digit below a millionth."""
    if value is None:
        return "-"
    amount = money.exact(value)
    if 0 < amount < Decimal("0.000001"):
        return f"${money.text(amount)}"
    return f"${amount:.6f}" if 0 < amount < Decimal("0.01") else f"${amount:.4f}"


def cost(event: Mapping[str, Any]) -> str:
    """What an LLM call cost, as its status says: never $0 for a call the ledger could not price."""
    status = event.get("costStatus")
    if status == "unpriced":
        return "unpriced"
    shown = usd(event.get("costUsd"))
    return f"~{shown}" if status == "estimated" else shown


def _session_cost(session: Mapping[str, Any]) -> str:
    shown = usd(session["costUsd"])
    unpriced = session.get("unpricedEvents") or 0
    return f"{shown} +{unpriced} unpriced" if unpriced else shown


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
            _session_cost(s),
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
        note = "  [OVER BUDGET]" if event.get("overBudget") else ""
        if event.get("costStatus") == "unpriced":
            note += "  [no price: see agent-ledger prices set]"
        elif event.get("costStatus") == "estimated":
            note += "  [estimated: usage missing]" if event.get("usageMissing") else "  [estimated]"
        return f"{_short(event.get('response'), 44)}{note}"
    if kind == "budget_warning" and event.get("message"):
        return _short(f"warning: {event['message']}", 100)
    extra = {k: v for k, v in event.items() if k not in _BOOKKEEPING}
    return _short(extra, 52)


_BOOKKEEPING = {"type", "stepIndex", *LEDGER_EVENT_FIELDS, "startedAt", "spanId", "parentSpanId"}


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


# What ``show --full`` prints of each step, in this order.
_FULL_FIELDS = (
    ("prompt", "prompt"),
    ("messages", "messages"),
    ("response", "response"),
    ("toolInput", "tool input"),
    ("toolOutput", "tool output"),
    ("error", "error"),
    ("message", "message"),
)


def readable(value: Any) -> str:
    """Text as a person reads it: a string as it is (JSON in a string pretty-printed), chat messages as
    ``[role]`` blocks, anything else as indented JSON. (The dashboard shows steps so too.)"""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in ("{", "[") and len(stripped) <= 1_000_000:
            try:
                return json.dumps(json.loads(stripped), indent=2, ensure_ascii=False)
            except ValueError:
                return value
        return value
    if isinstance(value, list) and value and all(_is_message(m) for m in value):
        blocks = []
        for message in value:
            content = message.get("content")
            text = content if isinstance(content, str) else json.dumps(content, indent=2, ensure_ascii=False)
            rest = {k: v for k, v in message.items() if k not in ("role", "content")}
            extra = f"\n{json.dumps(rest, indent=2, ensure_ascii=False, default=str)}" if rest else ""
            blocks.append(f"[{message['role']}]\n{text}{extra}")
        return "\n\n".join(blocks)
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _is_message(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("role"), str) and "content" in value


def _steps_in_full(events: Sequence[dict[str, Any]]) -> list[str]:
    """Each step's prompt, response, tool input and output, every character, indented under the step."""
    lines = ["", "Steps in full:"]
    for event in events:
        fields = [(label, event[key]) for key, label in _FULL_FIELDS if event.get(key) not in (None, "")]
        if not fields:
            continue
        step = event.get("stepIndex")
        lines.append(f"--- step {step if step is not None else '-'}: {event.get('type')} {_what(event)}".rstrip())
        for label, value in fields:
            lines.append(f"  {label}:")
            lines.extend(f"    {line}" for line in readable(value).splitlines() or [""])
    return lines


def timeline(session: dict[str, Any], *, full: bool = False) -> str:
    """A session's steps as a table (texts cut to fit); ``full``: then every step's texts in full."""
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
            cost(event) if event.get("type") == "llm_call" else "",
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
    flags = [
        f"{count} {what}"
        for count, what in (
            (session.get("unpricedEvents") or 0, "unpriced LLM calls"),
            (session.get("estimatedEvents") or 0, "estimated"),
            (session.get("overBudgetEvents") or 0, "over budget"),
        )
        if count
    ]
    cap = f", cap {usd(session['maxCostUsd'])}" if session.get("maxCostUsd") is not None else ""
    total = (
        f"Total: {session['eventCount']} events, {session['tokensIn']} tokens in, {session['tokensOut']} out, "
        f"{usd(session['costUsd'])}{cap}" + (f"  ({', '.join(flags)})" if flags else "")
    )
    details = _steps_in_full(events) if full else []
    return "\n".join([header, *_context(session), body, *details, total])


def _when(moment: Optional[str]) -> str:
    return moment[:16].replace("T", " ") if moment else "never"


def budgets_table(budgets: Sequence[dict[str, Any]], workspace_budgets: Sequence[dict[str, Any]] = ()) -> str:
    """Every budget: its limit, what its window spent and holds in flight, what remains and when it resets."""
    rows = []
    for w in workspace_budgets:
        if w["dailyLimitUsd"] is not None:
            rows.append(
                (
                    w["workspace"],
                    "workspace-daily",
                    "(all agents)",
                    usd(w["dailyLimitUsd"]),
                    usd(w["spentTodayUsd"]),
                    usd(w["reservedUsd"]),
                    usd(w["remainingBudgetUsd"]),
                    _percent(w["warnAtPercent"]),
                    _when(w["resetsAt"]),
                )
            )
    for b in budgets:
        kinds = [
            ("agent-daily", b["dailyLimitUsd"], b["spentTodayUsd"], b["remainingBudgetUsd"], b["resetsAt"]),
            (
                "agent-monthly",
                b["monthlyLimitUsd"],
                b["spentThisMonthUsd"],
                b["remainingMonthlyUsd"],
                b["monthResetsAt"],
            ),
        ]
        limited = [k for k in kinds if k[1] is not None]
        for kind, limit, spent, remaining, resets in limited or [("(no limit)", None, b["spentTodayUsd"], None, None)]:
            rows.append(
                (
                    b["workspace"],
                    kind,
                    b["agentName"],
                    usd(limit),
                    usd(spent),
                    usd(b["reservedUsd"]),
                    usd(remaining),
                    _percent(b["warnAtPercent"]) if limit is not None else "-",
                    _when(resets) if limit is not None else "-",
                )
            )
    if not rows:
        return "No budgets set and no spend today. Set one with: agent-ledger budget set AGENT USD"
    headers = ["WORKSPACE", "BUDGET", "AGENT", "LIMIT", "SPENT", "RESERVED", "REMAINING", "WARN AT", "RESETS (UTC)"]
    return table(headers, rows, right=(3, 4, 5, 6, 7)) + (
        "\nDaily budgets reset at 00:00 UTC, monthly ones on the 1st; SPENT is today's (the month's for a monthly "
        "budget), RESERVED what calls in flight hold."
    )


def _percent(value: Optional[Decimal]) -> str:
    return "-" if value is None else f"{money.text(money.exact(value))}%"


def prices_table(prices: Mapping[str, Any]) -> str:
    if not prices:
        return (
            "No prices added to this workspace: models are priced by genai-prices (and the --prices file). "
            "Add one with: agent-ledger prices set MODEL --input USD --output USD"
        )
    rows = [
        (
            name,
            usd(rates.input_per_mtok),
            usd(rates.output_per_mtok),
            usd(rates.cache_read_per_mtok),
            usd(rates.cache_write_per_mtok),
        )
        for name, rates in prices.items()
    ]
    return table(
        ["MODEL", "INPUT/MTOK", "OUTPUT/MTOK", "CACHE READ/MTOK", "CACHE WRITE/MTOK"], rows, right=(1, 2, 3, 4)
    )


def keys_table(keys: Sequence[Any]) -> str:
    if not keys:
        return "No API keys. Create one with: agent-ledger keys create --name NAME"
    rows = [
        (k.id, k.name, k.workspace, k.created_at[:19].replace("T", " "), "revoked" if k.revoked_at else "active")
        for k in keys
    ]
    return table(["ID", "NAME", "WORKSPACE", "CREATED (UTC)", "STATE"], rows)


# -- JSON for `--json`: the same records, for programs (print them with money.dumps: exact amounts) ----------


def keys_json(keys: Sequence[Any]) -> dict[str, Any]:
    """API keys as ``keys list --json`` prints them: never a secret, nor its hash."""
    return {
        "keys": [
            {
                "id": k.id,
                "name": k.name,
                "workspace": k.workspace,
                "createdAt": k.created_at,
                "revokedAt": k.revoked_at,
                "state": "revoked" if k.revoked_at else "active",
            }
            for k in keys
        ]
    }


def prices_json(workspace: str, prices: Mapping[str, Any]) -> dict[str, Any]:
    """A workspace's own prices as ``prices list --json`` prints them (the models as ``GET /v1/prices``)."""
    return {"workspace": workspace, "prices": [{"model": name, **rates.as_json()} for name, rates in prices.items()]}


def budgets_json(budgets: Sequence[dict[str, Any]], workspace_budgets: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``budget show --json``: each agent's budgets and spend, and each workspace's daily budget."""
    return {"budgets": list(budgets), "workspaceBudgets": list(workspace_budgets)}
