"""How the dashboard writes things: its Jinja2 templates (autoescaped), amounts, times, long text, text diffs
and the geometry of its SVG charts. Nothing here reads the ledger."""

from __future__ import annotations

import datetime
import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Optional, Union

import jinja2
from markupsafe import Markup, escape

from ..._version import __version__
from .. import money
from ..report import readable as pretty
from ..report import usd

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

# Above this many tokens on a side, a text diff compares lines, not words (difflib is quadratic at worst).
MAX_WORD_DIFF_TOKENS = 6000
_TOKENS = re.compile(r"\w+|\s+|[^\w\s]", re.UNICODE)

__all__ = ["STATIC", "Bar", "Waterfall", "daily_chart", "environment", "pretty", "text_diff", "waterfall"]


def _exact(value: Any) -> str:
    """An amount with every digit it has (``0.00008``), for data attributes and tooltips."""
    if value is None:
        return ""
    return money.text(money.exact(value))


def _count(value: Any) -> str:
    """A count with thousands separators (``12,345``); empty for None."""
    if value is None or value == "":
        return ""
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def _milliseconds(value: Any) -> str:
    """A latency: ``812 ms``, ``4.2 s``, ``3 min 5 s``; empty when unknown."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        return ""
    ms = float(value)
    if ms < 1000:
        return f"{ms:.0f} ms" if ms >= 10 or ms == int(ms) else f"{ms:.1f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def parse_time(text: Any) -> Optional[datetime.datetime]:
    """An RFC 3339 time as the ledger stores them (``...Z``), or None."""
    if not isinstance(text, str) or len(text) < 10:
        return None
    raw = text.strip().replace("z", "Z")
    if raw.endswith("Z"):
        raw = raw[:-1] + "+00:00"
    raw = raw.replace("t", "T")
    # Python 3.9's fromisoformat takes 3 or 6 fraction digits only.
    match = re.match(r"(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)\Z", raw)
    if match:
        fraction = (match.group(2) or "")[1:7]
        raw = match.group(1) + (("." + fraction.ljust(6, "0")) if fraction else "") + match.group(3)
    try:
        moment = datetime.datetime.fromisoformat(raw)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment


def _when(text: Any) -> str:
    """A stored time as ``2026-01-31 12:00:05`` (UTC)."""
    if not isinstance(text, str):
        return ""
    return text[:19].replace("T", " ")


def duration_ms(start: Any, end: Any) -> Optional[float]:
    began, ended = parse_time(start), parse_time(end)
    if began is None or ended is None:
        return None
    return max((ended - began).total_seconds() * 1000, 0.0)


def _short_id(text: Any) -> str:
    return str(text)[:8]


def _signed(value: Any, kind: str = "count") -> str:
    """A delta with its sign: ``+$0.0012``, ``-340``, ``+1.2 s``; ``0`` when nothing changed."""
    if value is None:
        return ""
    if kind == "usd":
        amount = money.exact(value)
        if amount == 0:
            return "$0"
        return ("+" if amount > 0 else "-") + usd(abs(amount))
    number = float(value)
    if number == 0:
        return "0"
    sign = "+" if number > 0 else "-"
    if kind == "ms":
        return sign + _milliseconds(abs(number))
    return sign + _count(abs(number) if kind != "count" else abs(int(number)))


def text_diff(before: str, after: str) -> Markup:
    """``before`` -> ``after`` as escaped HTML: removed text in ``<del>``, added text in ``<ins>``.

    Compares words (and the spaces and punctuation between them); long texts compare lines.
    """
    a_tokens, b_tokens = _TOKENS.findall(before), _TOKENS.findall(after)
    if max(len(a_tokens), len(b_tokens)) > MAX_WORD_DIFF_TOKENS:
        a_tokens, b_tokens = before.splitlines(keepends=True), after.splitlines(keepends=True)
    matcher = difflib.SequenceMatcher(None, a_tokens, b_tokens, autojunk=len(a_tokens) + len(b_tokens) > 2000)
    out: list[str] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        removed = "".join(a_tokens[i1:i2])
        added = "".join(b_tokens[j1:j2])
        if tag == "equal":
            out.append(str(escape(removed)))
            continue
        if removed:
            out.append(f"<del>{escape(removed)}</del>")
        if added:
            out.append(f"<ins>{escape(added)}</ins>")
    return Markup("".join(out))


# -- SVG geometry -----------------------------------------------------------------------------------


@dataclass
class Bar:
    x: float
    y: float
    width: float
    height: float
    css: str
    title: str
    href: str = ""
    label: str = ""
    data: Optional[dict[str, str]] = None


@dataclass
class Waterfall:
    width: int
    height: int
    left: int
    bars: list[Bar]
    ticks: list[tuple[float, str]]
    note: str


WATERFALL_WIDTH = 960
WATERFALL_LABELS = 230
WATERFALL_ROW = 18


def waterfall(steps: Sequence[Any]) -> Waterfall:
    """Each step that says when it started, as a bar from its start for its latency, on one time axis."""
    timed = [(s, parse_time(s.started_at)) for s in steps]
    placed = [(s, t) for s, t in timed if t is not None]
    plot = WATERFALL_WIDTH - WATERFALL_LABELS - 40  # room on the right for the last tick's label
    if not placed:
        return Waterfall(WATERFALL_WIDTH, 40, WATERFALL_LABELS, [], [], "No step on this page says when it started.")
    origin = min(t for _, t in placed)
    ends = [(t - origin).total_seconds() * 1000 + float(s.latency_ms or 0) for s, t in placed]
    span = max(max(ends), 1.0)
    bars = []
    for row, (step, began) in enumerate(placed):
        offset = (began - origin).total_seconds() * 1000
        x = WATERFALL_LABELS + plot * offset / span
        width = max(plot * float(step.latency_ms or 0) / span, 2.0)
        bars.append(
            Bar(
                x=round(x, 2),
                y=row * WATERFALL_ROW + 22,
                width=round(min(width, WATERFALL_LABELS + plot - x + 2), 2),  # a bar of ~0 ms stays visible
                height=WATERFALL_ROW - 5,
                css=" ".join(["bar", step.type.replace("_", "-"), *step.flags]),
                title=f"{step.label}: starts at +{_milliseconds(offset) or '0 ms'}"
                + (f", takes {_milliseconds(step.latency_ms)}" if step.latency_ms is not None else ""),
                href=f"#{step.anchor}",
                label=step.label if len(step.label) <= 34 else step.label[:33] + "…",
            )
        )
    ticks = [
        (WATERFALL_LABELS + plot * part / 4, "+" + (_milliseconds(span * part / 4) or "0 ms")) for part in range(5)
    ]
    missing = len(steps) - len(placed)
    note = f"{missing} step(s) on this page do not say when they started." if missing else ""
    return Waterfall(WATERFALL_WIDTH, len(placed) * WATERFALL_ROW + 30, WATERFALL_LABELS, bars, ticks, note)


@dataclass
class DailyChart:
    width: int
    height: int
    bars: list[Bar]
    labels: list[tuple[float, str]]
    y_ticks: list[tuple[float, str]]
    bottom: float


CHART_WIDTH = 960
CHART_HEIGHT = 260
CHART_LEFT = 70
CHART_BOTTOM = 220


def daily_chart(days: Sequence[str], spend: Mapping[str, Any]) -> DailyChart:
    """A bar per day of ``days`` that has spend (``spend[day]`` has ``cost`` and ``llm_calls``)."""
    plot = CHART_WIDTH - CHART_LEFT - 10
    slot = plot / max(len(days), 1)
    top = max((money.exact(spend[d].cost) for d in days if d in spend), default=money.ZERO)
    scale = float(top) if top > 0 else 1.0
    bars = []
    for index, day in enumerate(days):
        found = spend.get(day)
        if found is None or found.cost <= 0:
            continue
        height = max((CHART_BOTTOM - 20) * float(found.cost) / scale, 1.0)
        tokens = found.tokens_in + found.tokens_out
        bars.append(
            Bar(
                x=round(CHART_LEFT + index * slot + slot * 0.1, 2),
                y=round(CHART_BOTTOM - height, 2),
                width=round(max(slot * 0.8, 1.0), 2),
                height=round(height, 2),
                css="bar",
                title=f"{day}: {usd(found.cost)} (exactly ${_exact(found.cost)}), {found.llm_calls:,} LLM calls, "
                f"{tokens:,} tokens",
                data={"day": day, "cost": _exact(found.cost)},
            )
        )
    every = max(1, len(days) // 10)
    labels = [(CHART_LEFT + i * slot + slot / 2, day[5:]) for i, day in enumerate(days) if i % every == 0]
    y_ticks = [
        (CHART_BOTTOM - (CHART_BOTTOM - 20) * part / 2, usd(top * part / 2) if top else "$0") for part in range(3)
    ]
    return DailyChart(CHART_WIDTH, CHART_HEIGHT, bars, labels, y_ticks, CHART_BOTTOM)


# -- templates ----------------------------------------------------------------------------------------


def _usd(value: Union[Decimal, float, None]) -> str:
    return usd(value)


def environment() -> jinja2.Environment:
    """The templates, from the package's directory (shipped in the wheel), with autoescape on."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    env.filters.update(
        usd=_usd,
        exact=_exact,
        count=_count,
        ms=_milliseconds,
        when=_when,
        short_id=_short_id,
        signed=_signed,
        pretty=pretty,
    )
    env.globals.update(version=__version__)
    return env
