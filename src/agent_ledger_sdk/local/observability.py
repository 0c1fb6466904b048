"""What an operator sees of a running local ledger: Prometheus metrics, access logs, health and readiness.

Every process has its own :class:`Metrics` (one per app: ``create_metrics()``),
served at ``/metrics`` in the Prometheus text format 0.0.4, with no dependency
beyond Starlette; the worker processes of one ``serve --workers N`` share their
counts through a directory (``create_metrics(shared=...)``), so that a scrape
reaching any of them answers for all. :class:`ObservabilityMiddleware`, a pure ASGI middleware,
writes one access-log line per HTTP request on the ``agent_ledger_sdk.local.access``
logger, gives every request an ``x-request-id`` and records the request metrics.

Wiring, in ``create_app``::

    metrics = create_metrics()
    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/ready", readiness(store.ping), methods=["GET"]),
            Route("/metrics", metrics_endpoint(metrics), methods=["GET"]),
            ...,
        ],
        middleware=[Middleware(ObservabilityMiddleware, metrics=metrics)],
    )

Metric labels are bounded: a route label is the route's template
(``/v1/sessions/{session_id}``, ``unmatched`` when none matched), a method
outside the standard ones is ``other``, and a family that reaches its limit of
label sets counts any new one under ``other``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import threading
import time
from bisect import bisect_left
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._version import __version__

__all__ = [
    "ACCESS_LOGGER",
    "CONTENT_TYPE",
    "DEFAULT_BUCKETS",
    "Metrics",
    "ObservabilityMiddleware",
    "create_metrics",
    "health",
    "metrics_endpoint",
    "readiness",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ACCESS_LOGGER = "agent_ledger_sdk.local.access"
DEFAULT_BUCKETS: Tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SHARE_INTERVAL = 0.5  # seconds between the writes of a process's counts for the others of its server
GUARDRAIL_REASONS = ("budget_exceeded", "unpriced_model")  # shown at 0 from the start, so that rate() has a base

UNMATCHED = "unmatched"
OTHER = "other"
MAX_LABEL_VALUE = 128
MAX_REQUEST_ID = 128
MAX_LOGGED_PATH = 1024
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_REQUEST_ID_HEADER = b"x-request-id"

Endpoint = Callable[[Request], Awaitable[Response]]
_Labels = Tuple[str, ...]

logger = logging.getLogger("agent_ledger_sdk.local")


# -- the registry ------------------------------------------------------------------


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _labels(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    return "{" + ",".join(f'{name}="{_escape_label(value)}"' for name, value in zip(names, values)) + "}"


class _Family:
    """One metric family; its owner's lock guards every change and every read."""

    kind = ""
    # Across the processes of one server (Metrics with ``shared``): "all" sums every process's series, those of
    # processes that exited too (a counter never goes back); "live" sums those of the processes running now (a
    # gauge of what is under way); "own" shows this process's alone (what it is: its start, its version).
    across = "all"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = (), max_series: int = 1000) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self.max_series = max_series

    def _key(self, values: _Labels, known: Mapping[_Labels, Any]) -> _Labels:
        key = tuple(value[:MAX_LABEL_VALUE] for value in values)
        if key in known or len(known) < self.max_series:
            return key
        return (OTHER,) * len(self.labelnames)

    def header(self) -> List[str]:
        return [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]

    def snapshot(self) -> Any:
        raise NotImplementedError

    def lines(self, snapshot: Any) -> List[str]:
        raise NotImplementedError

    def shared(self, snapshot: Any) -> List[Any]:
        """``snapshot`` as JSON, for the other processes of the server (see :class:`Metrics`)."""
        raise NotImplementedError

    def add_shared(self, snapshot: Any, shared: List[Any]) -> None:
        """Add another process's ``shared`` form into ``snapshot``."""
        raise NotImplementedError


class _Value(_Family):
    """A counter or a gauge: one number per label set."""

    def __init__(self, kind: str, name: str, help: str, labelnames: Sequence[str] = (), max_series: int = 1000) -> None:
        super().__init__(name, help, labelnames, max_series)
        self.kind = kind
        self.values: Dict[_Labels, float] = {} if self.labelnames else {(): 0}

    def add(self, values: _Labels, amount: float) -> None:
        if values in self.values:
            self.values[values] += amount
            return
        key = self._key(values, self.values)
        self.values[key] = self.values.get(key, 0) + amount

    def snapshot(self) -> Dict[_Labels, float]:
        return dict(self.values)

    def shared(self, snapshot: Dict[_Labels, float]) -> List[Any]:
        return [[list(key), value] for key, value in snapshot.items()]

    def add_shared(self, snapshot: Dict[_Labels, float], shared: List[Any]) -> None:
        for key, value in shared:
            labels = tuple(key)
            snapshot[labels] = snapshot.get(labels, 0) + value

    def lines(self, snapshot: Dict[_Labels, float]) -> List[str]:
        return [
            f"{self.name}{_labels(self.labelnames, key)} {_number(value)}" for key, value in sorted(snapshot.items())
        ]


class _Histogram(_Family):
    kind = "histogram"

    def __init__(self, name: str, help: str, labelnames: Sequence[str], buckets: Iterable[float]) -> None:
        super().__init__(name, help, labelnames)
        self.bounds = tuple(sorted(float(bound) for bound in buckets if not math.isinf(bound)))
        self.le = [repr(bound) for bound in self.bounds] + ["+Inf"]
        # per label set: the count of each bucket alone (the last is above every bound), the sum, the count
        self.series: Dict[_Labels, Tuple[List[int], List[float]]] = {}

    def observe(self, values: _Labels, value: float) -> None:
        series = self.series.get(values)
        if series is None:
            key = self._key(values, self.series)
            series = self.series.get(key)
            if series is None:
                series = self.series[key] = ([0] * (len(self.bounds) + 1), [0.0, 0])
        series[0][bisect_left(self.bounds, value)] += 1
        totals = series[1]
        totals[0] += value
        totals[1] += 1

    def snapshot(self) -> Dict[_Labels, Tuple[List[int], List[float]]]:
        return {key: (list(counts), list(totals)) for key, (counts, totals) in self.series.items()}

    def shared(self, snapshot: Dict[_Labels, Tuple[List[int], List[float]]]) -> List[Any]:
        return [[list(key), counts, totals] for key, (counts, totals) in snapshot.items()]

    def add_shared(self, snapshot: Dict[_Labels, Tuple[List[int], List[float]]], shared: List[Any]) -> None:
        for key, counts, totals in shared:
            if len(counts) != len(self.le):
                continue  # another version's buckets: not comparable
            mine = snapshot.setdefault(tuple(key), ([0] * len(self.le), [0.0, 0]))
            for index, count in enumerate(counts):
                mine[0][index] += count
            mine[1][0] += totals[0]
            mine[1][1] += totals[1]

    def lines(self, snapshot: Dict[_Labels, Tuple[List[int], List[float]]]) -> List[str]:
        out = []
        names = (*self.labelnames, "le")
        for key, (counts, (total, count)) in sorted(snapshot.items()):
            cumulative = 0
            for le, bucket in zip(self.le, counts):
                cumulative += bucket
                out.append(f"{self.name}_bucket{_labels(names, (*key, le))} {cumulative}")
            labels = _labels(self.labelnames, key)
            out.append(f"{self.name}_sum{labels} {_number(total)}")
            out.append(f"{self.name}_count{labels} {_number(count)}")
        return out


def _process_start_time() -> float:
    """The process's start in Unix seconds, from /proc where there is one, else when this module was imported."""
    try:
        with open("/proc/self/stat", "rb") as stat:
            ticks = int(stat.read().rsplit(b")", 1)[1].split()[19])
        with open("/proc/stat", "rb") as system:
            boot = next(int(line.split()[1]) for line in system if line.startswith(b"btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration, AttributeError):
        return time.time()


_PROCESS_START = _process_start_time()


class Metrics:
    """The metrics of one ledger process, safe to update from any thread; ``render()`` gives the exposition text.

    Example::

        metrics = create_metrics()
        metrics.session_started()
        metrics.events_ingested(3, {"llm_call": 2, "tool_call": 1})
        metrics.guardrail_refusal("budget_exceeded")
        text = metrics.render()
    """

    def __init__(
        self,
        *,
        buckets: Iterable[float] = DEFAULT_BUCKETS,
        version: str = __version__,
        shared: Union[str, Path, None] = None,
    ) -> None:
        self._lock = threading.Lock()
        self._changes = 0  # every change counts one: a process writes its shared file only when it changed
        self._requests = _Value(
            "counter",
            "agent_ledger_http_requests_total",
            "HTTP requests answered, by method, route template and status.",
            ("method", "route", "status"),
        )
        self._durations = _Histogram(
            "agent_ledger_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response, in seconds.",
            ("method", "route"),
            buckets,
        )
        self._in_progress = _Value(
            "gauge", "agent_ledger_http_requests_in_progress", "HTTP requests being answered now."
        )
        self._in_progress.across = "live"
        self._events = _Value(
            "counter",
            "agent_ledger_events_ingested_total",
            "Events stored, by event type (unknown when the caller did not say).",
            ("type",),
            max_series=64,
        )
        self._refusals = _Value(
            "counter",
            "agent_ledger_guardrail_refusals_total",
            "Requests refused by a budget guardrail, by reason.",
            ("reason",),
            max_series=64,
        )
        for reason in GUARDRAIL_REASONS:
            self._refusals.add((reason,), 0)
        self._sessions = _Value("counter", "agent_ledger_sessions_started_total", "Sessions started.")
        start = _Value("gauge", "process_start_time_seconds", "Start time of the process since unix epoch in seconds.")
        start.add((), _PROCESS_START)
        build = _Value("gauge", "agent_ledger_build_info", "The running agent-ledger-sdk; always 1.", ("version",))
        build.add((version,), 1)
        start.across = build.across = "own"
        self._families: Tuple[_Family, ...] = (
            self._requests,
            self._durations,
            self._in_progress,
            self._events,
            self._refusals,
            self._sessions,
            start,
            build,
        )
        self._shared = None if shared is None else Path(shared)
        self._shared_file = None if self._shared is None else self._shared / f"{os.getpid()}.json"
        self._shared_changes = -1
        if self._shared is not None:
            threading.Thread(target=self._share_every_interval, name="agent-ledger-metrics", daemon=True).start()

    # -- what the service reports ----------------------------------------------------

    def events_ingested(self, n: int, by_type: Optional[Mapping[str, int]] = None) -> None:
        """Count ``n`` stored events; ``by_type`` splits them by event type (the rest count as ``unknown``)."""
        with self._lock:
            counted = 0
            for kind, count in (by_type or {}).items():
                if count > 0:
                    self._events.add((kind,), count)
                    counted += count
            if n > counted:
                self._events.add(("unknown",), n - counted)
            self._changes += 1

    def guardrail_refusal(self, reason: str) -> None:
        """Count one request refused by a guardrail: ``budget_exceeded``, ``unpriced_model``, ..."""
        with self._lock:
            self._refusals.add((reason,), 1)
            self._changes += 1

    def session_started(self) -> None:
        """Count one started session."""
        with self._lock:
            self._sessions.add((), 1)
            self._changes += 1

    # -- what the middleware reports ---------------------------------------------------

    def request_started(self) -> None:
        """One more request in progress (the middleware calls it, then ``request_finished`` once)."""
        with self._lock:
            self._in_progress.add((), 1)
            self._changes += 1

    def request_finished(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request under its route template and observe its duration."""
        if method not in _METHODS:
            method = OTHER
        with self._lock:
            self._in_progress.add((), -1)
            self._requests.add((method, route, str(status)), 1)
            self._durations.observe((method, route), seconds)
            self._changes += 1

    # -- exposition ----------------------------------------------------------------------

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4) of every metric; serve it as :data:`CONTENT_TYPE`.

        With ``shared``: the counters and histograms of every process of the server (this one's as they are now,
        the others' as their files last said), the requests in progress of those running, and this process's
        start time and version."""
        with self._lock:
            snapshots = [(family, family.snapshot()) for family in self._families]
        if self._shared is not None:
            for other in self._others():
                for family, snapshot in snapshots:
                    found = other["families"].get(family.name)
                    if found is None or family.across == "own" or (family.across == "live" and not other["live"]):
                        continue
                    family.add_shared(snapshot, found)
        lines: List[str] = []
        for family, snapshot in snapshots:
            lines.extend(family.header())
            lines.extend(family.lines(snapshot))
        return "\n".join(lines) + "\n"

    # -- one server of several processes ------------------------------------------------------

    def share(self) -> None:
        """Write this process's counts to its file in ``shared`` (atomically), if they changed since it last did."""
        shared_file = self._shared_file
        if shared_file is None:
            return
        with self._lock:
            changes = self._changes
            if changes == self._shared_changes:
                return
            snapshots = [(family, family.snapshot()) for family in self._families if family.across != "own"]
        document = {"pid": os.getpid(), "families": {family.name: family.shared(snap) for family, snap in snapshots}}
        partial = shared_file.with_suffix(".partial")
        partial.write_text(json.dumps(document), encoding="utf-8")
        os.replace(partial, shared_file)
        self._shared_changes = changes

    def _share_every_interval(self) -> None:
        while True:
            time.sleep(SHARE_INTERVAL)
            try:
                self.share()
            except (OSError, ValueError) as exc:  # e.g. the directory removed as the server stops
                logger.debug("agent-ledger: could not share this process's metrics: %r", exc)

    def _others(self) -> List[Dict[str, Any]]:
        """The files of the server's other processes, each with whether that process is running."""
        assert self._shared is not None
        found = []
        for path in self._shared.glob("*.json"):
            if path == self._shared_file:
                continue
            try:
                document = json.loads(path.read_text(encoding="utf-8"))
                pid = int(document["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # gone, or being replaced: the next scrape reads it
            document["live"] = _running(pid)
            found.append(document)
        return found


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it runs, as another user
        pass
    return True


def create_metrics(*, buckets: Iterable[float] = DEFAULT_BUCKETS, shared: Union[str, Path, None] = None) -> Metrics:
    """A new, empty :class:`Metrics` for one app; each app (and each test) makes its own.

    ``buckets`` are the upper bounds of the request-duration histogram, in seconds (``+Inf`` is added).
    ``shared``: a directory that the processes of one server share (``serve --workers N``): each writes its
    counts there every SHARE_INTERVAL seconds, and ``/metrics`` answers for them all, whichever process a
    scrape reaches (the others' counts at most SHARE_INTERVAL old).
    """
    return Metrics(buckets=buckets, shared=shared)


# -- the middleware --------------------------------------------------------------------


def _request_id(headers: Iterable[Tuple[bytes, bytes]]) -> str:
    """The caller's ``x-request-id`` when it is sane (visible ASCII, 1 to 128 characters), else a new one."""
    for name, value in headers:
        if name == _REQUEST_ID_HEADER:
            if 0 < len(value) <= MAX_REQUEST_ID and value.isascii():
                text = value.decode("ascii")
                if text.isprintable() and " " not in text:
                    return text
            break
    return os.urandom(16).hex()  # as random as a uuid4, and a quarter of its cost


def _logged_path(raw_path: Any, path: str) -> str:
    """The path as sent, without its query string (which may hold anything), escaped and cut for a log line."""
    if isinstance(raw_path, bytes):
        path = raw_path.split(b"?", 1)[0].decode("ascii", "backslashreplace")
    if not path.isprintable():
        path = path.encode("unicode_escape").decode("ascii")
    if len(path) > MAX_LOGGED_PATH:
        path = path[:MAX_LOGGED_PATH] + "..."
    return path


def _match(routes: Sequence[BaseRoute], scope: Scope, prefix: str) -> Optional[str]:
    """The template of the route that ``scope`` matches (fully, else partly, as Starlette picks), through mounts."""
    partial: Optional[str] = None
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.NONE or (match is Match.PARTIAL and partial is not None):
            continue
        template: Optional[str]
        if isinstance(route, Mount):
            template = _match(route.routes, {**scope, **child}, prefix + route.path) if route.routes else None
            template = template or prefix + route.path_format
        else:
            path_format = getattr(route, "path_format", None)
            template = prefix + path_format if isinstance(path_format, str) else None
        if match is Match.FULL:
            return template
        partial = template
    return partial


class _RouteTemplates:
    """Which route template answered a request, once the app has answered it."""

    def __init__(self) -> None:
        self._indexed: Tuple[int, int] = (0, -1)
        self._by_endpoint: Dict[Any, List[BaseRoute]] = {}

    def __call__(self, scope: Scope, method: str, path: str, root_path: str) -> str:
        route = scope.get("route")  # set by Starlette 1.7 on
        mounted = scope.get("root_path", "") != root_path  # a Mount answered: its path is part of the template
        if route is not None and not mounted and not isinstance(route, Mount):
            path_format = getattr(route, "path_format", None)
            if isinstance(path_format, str):
                return path_format
        routes = getattr(scope.get("router") or scope.get("app"), "routes", None)
        if not routes:
            return UNMATCHED
        if route is None and not mounted and "endpoint" in scope:  # before 1.7, Starlette says the endpoint only
            candidates = self._routes_of(routes, scope["endpoint"])
            if len(candidates) == 1:
                return getattr(candidates[0], "path_format", UNMATCHED)
            routes = candidates or routes
        probe = {"type": "http", "method": method, "path": path, "root_path": root_path, "path_params": {}}
        try:
            return _match(routes, probe, "") or UNMATCHED
        except Exception:  # a route type that cannot match a bare scope
            return UNMATCHED

    def _routes_of(self, routes: List[BaseRoute], endpoint: Any) -> List[BaseRoute]:
        if self._indexed != (id(routes), len(routes)):
            by_endpoint: Dict[Any, List[BaseRoute]] = {}
            for route in routes:
                if isinstance(getattr(route, "path_format", None), str) and not isinstance(route, Mount):
                    try:
                        by_endpoint.setdefault(getattr(route, "endpoint", None), []).append(route)
                    except TypeError:  # an endpoint that cannot be a key
                        continue
            self._by_endpoint, self._indexed = by_endpoint, (id(routes), len(routes))
        try:
            return self._by_endpoint.get(endpoint, [])
        except TypeError:
            return []


class ObservabilityMiddleware:
    """A pure ASGI middleware: one access-log line, an ``x-request-id`` and the request metrics for each HTTP request.

    Example::

        app = Starlette(routes=routes, middleware=[Middleware(ObservabilityMiddleware, metrics=metrics)])

    The log line is INFO on ``agent_ledger_sdk.local.access`` (or ``logger``), and its ``extra`` holds
    ``client_addr``, ``method``, ``path``, ``route``, ``status_code``, ``response_bytes``, ``duration_ms``
    and ``request_id``. No header and no query string is logged. The request id is the caller's
    ``x-request-id`` when sane, else a new one; it is sent back as ``x-request-id`` and is
    ``request.state.request_id`` for the handlers. A request whose app raises counts and logs as a 500,
    and the exception goes on up. Lifespan and websocket scopes pass through untouched.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, logger: Optional[logging.Logger] = None) -> None:
        self.app = app
        self.metrics = metrics
        self.logger = logger if logger is not None else logging.getLogger(ACCESS_LOGGER)
        self._route_template = _RouteTemplates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method: str = scope["method"]
        path: str = scope["path"]
        root_path: str = scope.get("root_path", "")
        raw_path = scope.get("raw_path")
        request_id = _request_id(scope["headers"])
        scope.setdefault("state", {})["request_id"] = request_id
        request_id_header = (_REQUEST_ID_HEADER, request_id.encode("ascii"))
        status = 0
        size = 0

        async def send_observed(message: Message) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), request_id_header]}
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        error: Optional[BaseException] = None
        self.metrics.request_started()
        try:
            await self.app(scope, receive, send_observed)
        except BaseException as exc:
            error = exc
            raise
        finally:
            seconds = time.perf_counter() - started
            if error is not None or not status:
                status = 500
            route = self._route_template(scope, method, path, root_path)
            self.metrics.request_finished(method, route, status, seconds)
            if self.logger.isEnabledFor(logging.INFO):
                client = scope.get("client")
                client_addr = f"{client[0]}:{client[1]}" if client else "-"
                path = _logged_path(raw_path, path)
                self._log(client_addr, method, path, route, status, size, seconds, request_id, error)

    def _log(
        self,
        client_addr: str,
        method: str,
        path: str,
        route: str,
        status: int,
        size: int,
        seconds: float,
        request_id: str,
        error: Optional[BaseException],
    ) -> None:
        duration_ms = round(seconds * 1000, 3)
        extra = {
            "client_addr": client_addr,
            "method": method,
            "path": path,
            "route": route,
            "status_code": status,
            "response_bytes": size,
            "duration_ms": duration_ms,
            "request_id": request_id,
        }
        if error is not None:
            extra["error"] = type(error).__name__
        self.logger.info(
            '%s "%s %s" %d %dB %.2fms request_id=%s',
            client_addr,
            method,
            path,
            status,
            size,
            duration_ms,
            request_id,
            extra=extra,
        )


# -- health, readiness and the metrics endpoint -----------------------------------------


async def health(request: Request) -> Response:
    """Liveness: 200 ``{"status": "ok"}`` while the process answers at all; it touches no database."""
    return JSONResponse({"status": "ok"})


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "..."


def _retrieve(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()  # read, so that a failure nobody waited for is not reported as never retrieved


def readiness(check: Callable[[], None], *, timeout: float = 2.0) -> Endpoint:
    """A readiness endpoint: 200 ``{"status": "ready"}`` when ``check()`` returns within ``timeout`` seconds.

    Example::

        Route("/ready", readiness(store.ping), methods=["GET"])

    ``check`` is blocking (a database ping) and runs in Starlette's thread pool, never on the event
    loop. When it raises or is still running after ``timeout`` the answer is 503
    ``{"status": "unavailable", "error": "..."}``. Probes that arrive while a check runs wait for that
    same check, so a hung database holds one thread, not one per probe.
    """
    running: Optional[asyncio.Future[None]] = None

    async def ready(request: Request) -> Response:
        nonlocal running
        loop = asyncio.get_running_loop()
        if running is None or running.done() or running.get_loop() is not loop:
            running = loop.create_task(run_in_threadpool(check))
            running.add_done_callback(_retrieve)
        task = running
        await asyncio.wait((task,), timeout=timeout)
        if not task.done():
            error = f"readiness check still running after {timeout:g} s"
        elif task.cancelled():
            error = "readiness check cancelled"
        else:
            failure = task.exception()
            if failure is None:
                return JSONResponse({"status": "ready"})
            error = _error_text(failure)
        logger.warning("Not ready: %s", error)
        return JSONResponse({"status": "unavailable", "error": error}, status_code=503)

    return ready


def metrics_endpoint(metrics: Metrics) -> Endpoint:
    """The ``/metrics`` endpoint: ``metrics.render()`` as ``text/plain; version=0.0.4; charset=utf-8``."""

    async def serve_metrics(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return serve_metrics
