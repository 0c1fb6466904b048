"""What each page of the dashboard shows: its data, read through the service and shaped for its template.

Every function here is synchronous (it reads the database): the routes run them off the event loop.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Optional
from urllib.parse import urlencode

from markupsafe import Markup

from .. import money
from ..budgets import day_of
from ..records import UNSET, BadInput, NotFound, utc_now
from ..service import LedgerService
from ..store.sql import RollupRow, SessionSearch
from .render import daily_chart, duration_ms, pretty, text_diff, waterfall

SESSIONS_PAGE = 50
LIVE_PAGE = 50
EVENTS_PAGE = 200  # steps on a session's page (a 10k-event session is 50 pages)
COMPARE_PAGE = 200  # steps of each run on a page of the comparison
DEFAULT_COST_DAYS = 30
MAX_COST_DAYS = 366
TOP_ROWS = 100  # agents, models or users listed on the costs page (the rest summed in one line)
MAX_TEXT = 200  # characters of a filter field
STATUSES = ("running", "success", "error")

__all__ = [
    "CostsPage",
    "Filters",
    "Step",
    "budget_change",
    "budgets_page",
    "compare_page",
    "costs_page",
    "live_sessions",
    "session_page",
    "sessions_page",
    "steps_of",
]


class PageError(Exception):
    """A request the page cannot answer as asked: ``status`` and a message for the person."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- the sessions list ---------------------------------------------------------------------------------


@dataclass
class Filters:
    """The filters of the sessions list, as the form sends them (strings; empty: not filtered)."""

    agent: str = ""
    status: str = ""
    since: str = ""
    until: str = ""
    user: str = ""
    tag: str = ""
    min_cost: str = ""
    q: str = ""

    @classmethod
    def of(cls, params: Mapping[str, str]) -> Filters:
        values = {}
        for name in (f.name for f in dataclasses.fields(cls)):
            value = params.get(name) or ""
            values[name] = value.strip()[:MAX_TEXT] if isinstance(value, str) else ""
        return cls(**values)

    def query(self, **extra: Any) -> str:
        """The query string of these filters (and ``extra``), empty values left out."""
        pairs = [(k, v) for k, v in dataclasses.asdict(self).items() if v]
        pairs.extend((k, str(v)) for k, v in extra.items() if v is not None and v != "")
        return urlencode(pairs)

    @property
    def active(self) -> bool:
        return any(dataclasses.asdict(self).values())

    def search(self, workspace: str) -> tuple[SessionSearch, Optional[str], list[str]]:
        """The store's filter, the text to search and what was wrong with the fields (those are ignored)."""
        errors: list[str] = []
        where = SessionSearch(workspace=workspace)
        if "\x00" in "".join(dataclasses.asdict(self).values()):
            return where, None, ["A filter holds a NUL character (U+0000); remove it."]
        where.agent_name = self.agent or None
        where.user_id = self.user or None
        where.tags = (self.tag,) if self.tag else ()
        if self.status:
            if self.status in STATUSES:
                where.status = self.status
            else:
                errors.append(f"Status must be one of {', '.join(STATUSES)}; got {self.status!r}.")
        try:
            where.started_after = _moment(self.since, end=False) if self.since else None
        except ValueError:
            errors.append(f"Since must be a date (2026-01-31) or a time (2026-01-31T09:30); got {self.since!r}.")
        try:
            where.started_before = _moment(self.until, end=True) if self.until else None
        except ValueError:
            errors.append(f"Until must be a date (2026-01-31) or a time (2026-01-31T17:00); got {self.until!r}.")
        if self.min_cost:
            try:
                minimum = Decimal(self.min_cost)
            except InvalidOperation:
                minimum = Decimal(-1)
            if not minimum.is_finite() or minimum < 0:
                errors.append(f"Minimum cost must be a number of US dollars, 0 or more; got {self.min_cost!r}.")
            else:
                where.min_cost = minimum
        return where, self.q or None, errors


def _moment(text: str, *, end: bool) -> str:
    """A date or a time (UTC) as a bound on the stored start times: a date ``until`` includes its day."""
    if len(text) == 10:
        day = datetime.date.fromisoformat(text)
        if end:
            day += datetime.timedelta(days=1)
        return f"{day.isoformat()}T00:00:00"
    moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is not None:
        moment = moment.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return moment.isoformat(timespec="seconds") if moment.microsecond == 0 else moment.isoformat()


def _session_row(session: Mapping[str, Any]) -> dict[str, Any]:
    """A session as a row of the list."""
    ended = session.get("endedAt")
    flags = []
    if session.get("overBudgetEvents"):
        flags.append(("over-budget", f"{session['overBudgetEvents']} over budget"))
    if session.get("unpricedEvents"):
        flags.append(("unpriced", f"{session['unpricedEvents']} unpriced"))
    if session.get("status") == "error":
        flags.append(("error", "error"))
    return {
        "id": session["id"],
        "seq": session.get("seq"),
        "agent": session["agentName"],
        "status": session["status"],
        "started_at": session["startedAt"],
        "duration_ms": duration_ms(session["startedAt"], ended) if ended else None,
        "llm_calls": session.get("llmCalls"),
        "tokens_in": session["tokensIn"],
        "tokens_out": session["tokensOut"],
        "cost": session["costUsd"],
        "user": session.get("userId") or "",
        "tags": session.get("tags") or [],
        "flags": flags,
        "error_message": session.get("errorMessage") or "",
    }


def sessions_page(service: LedgerService, workspace: str, params: Mapping[str, str]) -> dict[str, Any]:
    """``/``: a page of the workspace's sessions, newest first, filtered; links to older and newer pages."""
    filters = Filters.of(params)
    where, text, errors = filters.search(workspace)
    cursor = _cursor(params.get("cursor"), "cursor", errors)
    after = _cursor(params.get("after"), "after", errors)
    if cursor is not None and after is not None:
        after = None
    where.before_seq = cursor
    where.after_seq = after
    found = service.find_sessions(where, SESSIONS_PAGE, text=text)
    rows = [_session_row(s) for s in found["sessions"]]
    first_page = cursor is None and after is None
    next_href = newer_href = None
    if found["nextCursor"] is not None:
        next_href = "/?" + filters.query(cursor=found["nextCursor"])
    elif after is not None and rows:
        next_href = "/?" + filters.query(cursor=rows[-1]["seq"])
    if found["newerCursor"] is not None:
        newer_href = "/?" + filters.query(after=found["newerCursor"])
    elif cursor is not None and rows:
        newer_href = "/?" + filters.query(after=rows[0]["seq"])
    elif cursor is not None:
        newer_href = "/?" + filters.query()
    live_href = "/live/sessions?" + filters.query() if first_page else None
    return {
        "filters": filters,
        "errors": errors,
        "sessions": rows,
        "next_href": next_href,
        "newer_href": newer_href,
        "newest_href": None if first_page else "/?" + filters.query(),
        "live_href": live_href,
        "latest_seq": found["latestSeq"],
        "searched": found["searched"],
        "statuses": STATUSES,
    }


def live_sessions(service: LedgerService, workspace: str, params: Mapping[str, str]) -> dict[str, Any]:
    """The sessions started after ``after`` that the filters match, newest first (the list's live updates)."""
    filters = Filters.of(params)
    where, text, errors = filters.search(workspace)
    after = _cursor(params.get("after"), "after", errors)
    if errors:
        raise PageError(400, " ".join(errors))
    where.after_seq = after or 0
    found = service.find_sessions(where, LIVE_PAGE, text=text)
    rows = [_session_row(s) for s in found["sessions"]]
    if found["newerCursor"] is not None:
        following = int(found["newerCursor"])
    else:  # every session up to the newest was looked at
        following = max([where.after_seq, found["latestSeq"], *(r["seq"] for r in rows)])
    return {"sessions": rows, "after": following, "more": found["newerCursor"] is not None and bool(rows)}


def _cursor(text: Optional[str], name: str, errors: list[str]) -> Optional[int]:
    if not text:
        return None
    if text.isascii() and text.isdigit() and len(text) <= 19:
        return int(text)
    errors.append(f"{name} must be a session number from a link of this page; got {text[:40]!r}.")
    return None


# -- a session --------------------------------------------------------------------------------------------

# What a step's page shows apart, in this order: (key, css class, label).
_TEXTS = (
    ("prompt", "prompt", "Prompt"),
    ("messages", "prompt", "Messages"),
    ("response", "response", "Response"),
    ("toolInput", "tool-input", "Tool input"),
    ("toolOutput", "tool-output", "Tool output"),
    ("error", "error-text", "Error"),
    ("message", "message", "Message"),
)
_SHOWN = {
    "type",
    "stepIndex",
    "provider",
    "model",
    "toolName",
    "latencyMs",
    "tokensIn",
    "tokensOut",
    "cacheReadTokens",
    "cacheWriteTokens",
    "reasoningTokens",
    "costUsd",
    "overBudget",
    "priced",
    *(key for key, _, _ in _TEXTS),
}


@dataclass
class Step:
    """One event of a session, as its ``<details>`` shows it."""

    anchor: str
    step_index: Optional[int]
    type: str
    name: str
    depth: int
    flags: list[str]
    latency_ms: Optional[float]
    tokens_in: Optional[int]
    tokens_out: Optional[int]
    cache_read: Optional[int]
    cache_write: Optional[int]
    reasoning: Optional[int]
    cost: Decimal
    cost_status: Optional[str]
    started_at: Optional[str]
    texts: list[tuple[str, str, str]] = field(default_factory=list)
    details: list[tuple[str, str]] = field(default_factory=list)
    event: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        number = f"#{self.step_index} " if self.step_index is not None else ""
        return f"{number}{self.type}" + (f" {self.name}" if self.name else "")

    @property
    def tokens(self) -> Optional[int]:
        if self.tokens_in is None and self.tokens_out is None:
            return None
        return (self.tokens_in or 0) + (self.tokens_out or 0)


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _integer(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def is_error(event: Mapping[str, Any]) -> bool:
    if event.get("error") or event.get("type") == "error":
        return True
    output = event.get("toolOutput")
    return event.get("type") == "tool_result" and isinstance(output, dict) and "errorType" in output


def _name(event: Mapping[str, Any]) -> str:
    if event.get("type") == "llm_call":
        provider, model = event.get("provider"), event.get("model")
        return "/".join(str(p) for p in (provider, model) if p)
    tool = event.get("toolName")
    return str(tool) if tool is not None else ""


def _flags(event: Mapping[str, Any]) -> list[str]:
    flags = []
    if event.get("overBudget"):
        flags.append("over-budget")
    if is_error(event):
        flags.append("error")
    if event.get("costStatus") == "unpriced":
        flags.append("unpriced")
    elif event.get("costStatus") == "estimated":
        flags.append("estimated")
    return flags


def _texts(event: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    return [(css, label, pretty(event[key])) for key, css, label in _TEXTS if event.get(key) not in (None, "")]


def _details(event: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [
        (key, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str))
        for key, value in event.items()
        if key not in _SHOWN and value is not None
    ]


def steps_of(events: Sequence[dict[str, Any]], first: int = 0) -> list[Step]:
    """The events as steps (one each), each one level below the earlier event whose ``spanId`` is its
    ``parentSpanId`` (a tool's result shares its call's span, and sits at its level)."""
    spans: dict[str, int] = {}
    steps: list[Step] = []
    for offset, event in enumerate(events):
        parent = event.get("parentSpanId")
        depth = spans[parent] + 1 if isinstance(parent, str) and parent in spans else 0
        span = event.get("spanId")
        if isinstance(span, str):
            spans.setdefault(span, depth)
        started = event.get("startedAt")
        step = Step(
            anchor=f"step-{first + offset}",
            step_index=_integer(event.get("stepIndex")),
            type=str(event.get("type")),
            name=_name(event),
            depth=depth,
            flags=_flags(event),
            latency_ms=_number(event.get("latencyMs")),
            tokens_in=_integer(event.get("tokensIn")),
            tokens_out=_integer(event.get("tokensOut")),
            cache_read=_integer(event.get("cacheReadTokens")),
            cache_write=_integer(event.get("cacheWriteTokens")),
            reasoning=_integer(event.get("reasoningTokens")),
            cost=money.exact(event.get("costUsd") or money.ZERO),
            cost_status=event.get("costStatus"),
            started_at=started if isinstance(started, str) else None,
            texts=_texts(event),
            details=_details(event),
            event=event,
        )
        steps.append(step)
    return steps


def _totals(session: Mapping[str, Any]) -> dict[str, Any]:
    by_type = session.get("eventTotals", {})

    def summed(name: str) -> Any:
        return sum(found[name] for found in by_type.values())

    return {
        "cost": session["costUsd"],
        "events": session["eventCount"],
        "llm_calls": by_type.get("llm_call", {}).get("events", 0),
        "tool_calls": by_type.get("tool_call", {}).get("events", 0),
        "tokens_in": session["tokensIn"],
        "tokens_out": session["tokensOut"],
        "cache_read": summed("cacheReadTokens"),
        "cache_write": summed("cacheWriteTokens"),
        "reasoning": summed("reasoningTokens"),
        "latency_ms": summed("latencyMs"),
        "duration_ms": duration_ms(session["startedAt"], session["endedAt"]) if session.get("endedAt") else None,
        "errors": summed("errors"),
        "unpriced": session.get("unpricedEvents", 0),
        "estimated": session.get("estimatedEvents", 0),
        "over_budget": session.get("overBudgetEvents", 0),
        "max_cost": session.get("maxCostUsd"),
    }


def _not_found(session_id: str) -> PageError:
    return PageError(404, f"No session {session_id!r} in this workspace.")


def session_page(service: LedgerService, workspace: str, session_id: str, params: Mapping[str, str]) -> dict[str, Any]:
    """``/sessions/{id}``: a page of the session's steps as a tree and a waterfall, with its totals."""
    cursor = params.get("events") or None
    offset = _offset(params.get("from"))
    try:
        session = service.session_overview(session_id, workspace, events_limit=EVENTS_PAGE, events_cursor=cursor)
    except NotFound:
        raise _not_found(session_id) from None
    except BadInput:
        raise PageError(400, "That page of steps is not one this dashboard linked to; start from the first.") from None
    steps = steps_of(session["events"], offset)
    following = session["nextEventsCursor"]
    return {
        "session": session,
        "steps": steps,
        "first_step": offset + 1,
        "last_step": offset + len(steps),
        "waterfall": waterfall(steps),
        "totals": _totals(session),
        "next_href": f"/sessions/{session['id']}?" + urlencode({"events": following, "from": offset + len(steps)})
        if following
        else None,
        "first_href": f"/sessions/{session['id']}" if cursor else None,
        "compare_href": f"/compare?{urlencode({'a': session['previousSessionId'], 'b': session['id']})}"
        if session["previousSessionId"]
        else None,
        "duration_ms": duration_ms(session["startedAt"], session["endedAt"]) if session.get("endedAt") else None,
    }


def _offset(text: Optional[str]) -> int:
    if text and text.isascii() and text.isdigit() and len(text) <= 12:
        return int(text)
    return 0


# -- two runs side by side -------------------------------------------------------------------------------


@dataclass
class Pair:
    """A step of run A and the step of run B it lines up with (either may be missing)."""

    a: Optional[Step]
    b: Optional[Step]
    diffs: list[tuple[str, str, Markup, bool]]  # (css, label, diff, changed)

    def delta(self, name: str) -> Any:
        left = getattr(self.a, name, None) if self.a is not None else None
        right = getattr(self.b, name, None) if self.b is not None else None
        if left is None and right is None:
            return None
        if name == "cost":
            return money.subtract(right if right is not None else money.ZERO, left if left is not None else money.ZERO)
        return (right or 0) - (left or 0)


def _signature(step: Step) -> tuple[str, str]:
    return step.type, step.name


def align(a: Sequence[Step], b: Sequence[Step]) -> list[Pair]:
    """Line two runs' steps up: in order, matching type and model or tool (a step only one run has stands alone)."""
    matcher = difflib.SequenceMatcher(None, [_signature(s) for s in a], [_signature(s) for s in b], autojunk=False)
    pairs: list[Pair] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        left, right = list(a[i1:i2]), list(b[j1:j2])
        if tag in ("equal", "replace"):
            for x, y in zip(left, right):
                pairs.append(_pair(x, y))
            left, right = left[len(right) :], right[len(left) :]
        pairs.extend(_pair(x, None) for x in left)
        pairs.extend(_pair(None, y) for y in right)
    return pairs


def _pair(a: Optional[Step], b: Optional[Step]) -> Pair:
    diffs = []
    if a is not None and b is not None:
        left = {css: (label, text) for css, label, text in a.texts}
        right = {css: (label, text) for css, label, text in b.texts}
        for css in dict.fromkeys([*left, *right]):
            label = (left.get(css) or right[css])[0]
            before, after = left.get(css, ("", ""))[1], right.get(css, ("", ""))[1]
            diffs.append((css, label, text_diff(before, after), before != after))
    return Pair(a, b, diffs)


def compare_page(service: LedgerService, workspace: str, params: Mapping[str, str]) -> dict[str, Any]:
    """``/compare?a=&b=``: two runs aligned step by step, with text diffs and cost, token and latency deltas."""
    ids = {name: (params.get(name) or "").strip() for name in ("a", "b")}
    if not ids["a"] or not ids["b"]:
        raise PageError(400, "Compare takes two sessions: /compare?a=SESSION_ID&b=SESSION_ID.")
    sessions = {}
    for name, session_id in ids.items():
        try:
            sessions[name] = service.session_overview(
                session_id, workspace, events_limit=COMPARE_PAGE, events_cursor=params.get(f"{name}_events") or None
            )
        except NotFound:
            raise _not_found(session_id) from None
        except BadInput:
            raise PageError(400, "That page of steps is not one this dashboard linked to.") from None
    a, b = sessions["a"], sessions["b"]
    pairs = align(steps_of(a["events"]), steps_of(b["events"]))
    totals_a, totals_b = _totals(a), _totals(b)
    deltas: dict[str, Any] = {}
    for name, value in totals_a.items():
        other = totals_b[name]
        if name in ("cost", "max_cost"):
            if value is not None and other is not None:
                deltas[name] = money.subtract(other, value)
        elif isinstance(value, (int, float)) and isinstance(other, (int, float)):
            deltas[name] = other - value
    more = a["nextEventsCursor"] or b["nextEventsCursor"]
    next_href = None
    if more:
        following = {"a": a["id"], "b": b["id"]}
        for name, session in sessions.items():
            if session["nextEventsCursor"]:
                following[f"{name}_events"] = session["nextEventsCursor"]
            else:
                following[f"{name}_events"] = "9223372036854775806.0"  # past the last step: nothing more
        next_href = "/compare?" + urlencode(following)
    return {
        "a": a,
        "b": b,
        "pairs": pairs,
        "totals_a": totals_a,
        "totals_b": totals_b,
        "deltas": deltas,
        "next_href": next_href,
        "changed": sum(1 for p in pairs if p.a is None or p.b is None or any(d[3] for d in p.diffs)),
    }


# -- costs ----------------------------------------------------------------------------------------------------


@dataclass
class CostsPage:
    since: str
    until: str
    days: list[str]


def _day(text: str, name: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise PageError(400, f"{name} must be a date such as 2026-01-31; got {text[:40]!r}.") from None


def _ranked(rows: Mapping[str, RollupRow]) -> tuple[list[tuple[str, RollupRow]], Optional[tuple[int, RollupRow]]]:
    ordered = sorted(rows.items(), key=lambda item: (-item[1].cost, -item[1].llm_calls, item[0]))
    if len(ordered) <= TOP_ROWS:
        return ordered, None
    rest = RollupRow()
    for _, row in ordered[TOP_ROWS:]:
        rest.add(row)
    return ordered[:TOP_ROWS], (len(ordered) - TOP_ROWS, rest)


def costs_page(service: LedgerService, workspace: str, params: Mapping[str, str]) -> dict[str, Any]:
    """``/costs``: spend per day over the range (a bar chart) and per agent, model and user."""
    today = utc_now().date()
    until = _day(params["until"], "Until") if params.get("until") else today
    since = (
        _day(params["since"], "Since")
        if params.get("since")
        else until - datetime.timedelta(days=DEFAULT_COST_DAYS - 1)
    )
    if since > until:
        raise PageError(400, f"Since ({since}) must not be after until ({until}).")
    if (until - since).days >= MAX_COST_DAYS:
        raise PageError(400, f"A range of at most {MAX_COST_DAYS} days, please: {since} to {until} is longer.")
    summary = service.cost_summary(workspace, since.isoformat(), until.isoformat())
    days = [(since + datetime.timedelta(days=n)).isoformat() for n in range((until - since).days + 1)]
    tables = {}
    for name, key in (("agent", "byAgent"), ("model", "byModel"), ("user", "byUser")):
        rows, rest = _ranked(summary[key])
        tables[name] = {"rows": rows, "rest": rest}
    total: RollupRow = summary["total"]
    return {
        "since": since.isoformat(),
        "until": until.isoformat(),
        "days": days,
        "spend": summary["days"],
        "chart": daily_chart(days, summary["days"]),
        "tables": tables,
        "total": total,
        "up_to_date": summary["upToDate"],
        "today": day_of(utc_now()),
    }


# -- budgets ---------------------------------------------------------------------------------------------------


def budgets_page(service: LedgerService, workspace: str) -> dict[str, Any]:
    """``/budgets``: each budget with its spend, what remains and what calls in flight hold; recent refusals."""
    (workspace_budget,) = service.workspace_budgets(workspace)
    return {
        "budgets": service.budgets(workspace),
        "workspace_budget": workspace_budget,
        "reservations": service.reservations_in_flight(workspace),
        "refusals": service.recent_refusals(workspace),
    }


def _limit(form: Mapping[str, Any], name: str, what: str, errors: list[str]) -> Any:
    text = str(form.get(name) or "").strip()
    if not text:
        return UNSET
    try:
        value = Decimal(text.lstrip("$"))
    except InvalidOperation:
        value = Decimal(-1)
    if not value.is_finite() or value < 0:
        errors.append(f"{what} must be a number of US dollars, 0 or more; got {text[:40]!r}.")
        return UNSET
    return value


def budget_change(service: LedgerService, workspace: str, form: Mapping[str, Any]) -> tuple[str, list[str]]:
    """Apply the budget form: set the limits given (empty: left as they are), or lift them; a message, or errors."""
    errors: list[str] = []
    lift = bool(form.get("lift"))
    scope = form.get("scope") or "agent"
    warn: Any = UNSET
    warn_text = str(form.get("warn_at_percent") or "").strip()
    if warn_text:
        try:
            warn = Decimal(warn_text.rstrip("%"))
        except InvalidOperation:
            warn = Decimal(-1)
        if not warn.is_finite() or not 0 < warn <= 100:
            errors.append(f"Warn at must be a percentage above 0 and at most 100; got {warn_text[:40]!r}.")
            warn = UNSET
    daily = _limit(form, "daily_limit_usd", "The daily limit", errors)
    if scope == "workspace":
        if errors:
            return "", errors
        if lift:
            service.set_workspace_budget(workspace, None)
            return f"Lifted the daily budget of workspace {workspace}.", []
        if daily is UNSET and warn is UNSET:
            return "", ["Give a daily limit (or check lift to remove it)."]
        service.set_workspace_budget(workspace, daily, warn_at_percent=warn)
        return f"Saved the daily budget of workspace {workspace}.", []
    agent = str(form.get("agent") or "").strip()
    monthly = _limit(form, "monthly_limit_usd", "The monthly limit", errors)
    if not agent:
        errors.append("Name the agent whose budget to set.")
    elif len(agent) > 200 or "\x00" in agent:
        errors.append("An agent's name is 1 to 200 characters, without NUL.")
    if errors:
        return "", errors
    if lift:
        service.set_budget(workspace, agent, None, monthly_limit_usd=None)
        return f"Lifted the budgets of {agent}.", []
    if daily is UNSET and monthly is UNSET and warn is UNSET:
        return "", ["Give a daily or a monthly limit (or check lift to remove them)."]
    service.set_budget(workspace, agent, daily, monthly_limit_usd=monthly, warn_at_percent=warn)
    return f"Saved the budget of {agent}.", []
