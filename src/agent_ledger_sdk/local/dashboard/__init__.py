"""The ledger's dashboard: HTML pages served by the ledger server itself, on the same port as its API.

==========================  =====================================================================
``GET /``                   sessions, newest first; filters, text search, keyset paging, live rows
``GET /sessions/{id}``      a session: its steps as a tree (``<details>`` each), a waterfall, totals
``GET /compare?a=&b=``      two runs aligned step by step, with text diffs and deltas
``GET /costs``              spend per UTC day (an SVG bar chart) and per agent, model and user
``GET|POST /budgets``       budgets, spend, reservations in flight, recent refusals; set or lift one
``GET|POST /login``         only when a login is needed (see ``auth.py``); ``POST /logout``
``GET /live/sessions``      the list's new rows, as JSON (what ``static/dashboard.js`` polls)
``GET /static/...``         the CSS, the script and the icon, from the package (no CDN)
==========================  =====================================================================

Pages are rendered on the server (Jinja2, autoescaped; charts are SVG drawn there too) and work
without JavaScript; the only script adds new sessions to the list as they start, and buttons to
open or close every step. Each request reads the database off the event loop, a page at a time:
a session of 10,000 events is shown :data:`~.views.EVENTS_PAGE` steps a page, a search reads for at
most a quarter of a second a page. No page ever shows an API key.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import threading
from collections.abc import Mapping
from typing import Any, Callable, Optional, TypeVar
from urllib.parse import parse_qsl, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from ..records import DEFAULT_WORKSPACE
from ..service import LedgerService
from .auth import CSRF_COOKIE, LOGIN_COOKIE, LOGIN_SECONDS, Access, Viewer, is_loopback, login_from_environment
from .render import STATIC, environment
from .views import (
    PageError,
    budget_change,
    budgets_page,
    compare_page,
    costs_page,
    live_sessions,
    session_page,
    sessions_page,
)

__all__ = ["Access", "dashboard_routes", "is_loopback", "login_from_environment"]

_T = TypeVar("_T")
logger = logging.getLogger("agent_ledger_sdk.local.dashboard")
FLASH_COOKIE = "agent_ledger_flash"
MAX_FORM_BYTES = 16 * 1024

# Every page: only this server's own script, styles and images; no framing; forms post here only.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class _FormTooLarge(Exception):
    pass


async def _read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (what the pages' forms send), at most 16 KB."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_FORM_BYTES:
            raise _FormTooLarge
    if kind != "application/x-www-form-urlencoded":
        return {}
    form: dict[str, str] = {}
    for name, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        form.setdefault(name, value)
    return form


def _safe_next(target: Optional[str]) -> str:
    """Where to go after logging in: a path of this site only (never ``//other.host`` nor a URL)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


class Dashboard:
    """The dashboard's request handlers over one service."""

    def __init__(self, service: LedgerService, access: Access) -> None:
        self.service = service
        self.access = access
        self.templates = environment()
        self._catching_up: set[str] = set()
        self._catching_up_lock = threading.Lock()

    # -- plumbing -----------------------------------------------------------------------------------

    def _html(
        self,
        request: Request,
        template: str,
        context: Mapping[str, Any],
        viewer: Optional[Viewer],
        *,
        status: int = 200,
    ) -> Response:
        page = self.templates.get_template(template).render(
            {**context, "viewer": viewer, "path": request.url.path, "login_needed": viewer is None}
        )
        response = HTMLResponse(page, status_code=status, headers=HEADERS)
        if viewer is not None and viewer.new_csrf_cookie is not None:
            self.access.set_cookie(request, response, CSRF_COOKIE, viewer.new_csrf_cookie, None)
        return response

    def _error(self, request: Request, viewer: Optional[Viewer], status: int, message: str) -> Response:
        titles = {400: "Bad request", 403: "Forbidden", 404: "Not found", 413: "Too large", 415: "Not a form"}
        context = {"title": titles.get(status, "Error"), "message": message, "status": status}
        return self._html(request, "error.html", context, viewer, status=status)

    def _to_login(self, request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        location = "/login" if target == "/" else "/login?" + urlencode({"next": target})
        return RedirectResponse(location, status_code=303, headers={"Cache-Control": "no-store"})

    def _page(
        self, request: Request, template: str, build: Callable[[Viewer], Mapping[str, Any]], *, status: int = 200
    ) -> Response:
        """A page for the viewer (a blocking call: run it off the event loop)."""
        viewer = self.access.viewer(request)
        if viewer is None:
            return self._to_login(request)
        try:
            context = build(viewer)
        except PageError as error:
            return self._error(request, viewer, error.status, error.message)
        return self._html(request, template, context, viewer, status=status)

    @staticmethod
    async def _off_loop(function: Callable[..., _T], *args: Any) -> _T:
        return await run_in_threadpool(functools.partial(function, *args))

    # -- pages ---------------------------------------------------------------------------------------

    async def sessions(self, request: Request) -> Response:
        params = dict(request.query_params)

        def build(viewer: Viewer) -> Mapping[str, Any]:
            return sessions_page(self.service, viewer.workspace, params)

        return await self._off_loop(self._page, request, "sessions.html", build)

    async def live(self, request: Request) -> Response:
        params = dict(request.query_params)

        def answer() -> Response:
            viewer = self.access.viewer(request)
            if viewer is None:
                return JSONResponse({"error": "Log in again."}, status_code=401, headers=HEADERS)
            try:
                found = live_sessions(self.service, viewer.workspace, params)
            except PageError as error:
                return JSONResponse({"error": error.message}, status_code=error.status, headers=HEADERS)
            rows = self.templates.get_template("rows.html").render({"sessions": found["sessions"]})
            body = {"html": rows, "count": len(found["sessions"]), "after": found["after"], "more": found["more"]}
            return JSONResponse(body, headers=HEADERS)

        return await self._off_loop(answer)

    async def session(self, request: Request) -> Response:
        session_id = request.path_params["session_id"]
        params = dict(request.query_params)

        def build(viewer: Viewer) -> Mapping[str, Any]:
            return session_page(self.service, viewer.workspace, session_id, params)

        return await self._off_loop(self._page, request, "session.html", build)

    async def compare(self, request: Request) -> Response:
        params = dict(request.query_params)

        def build(viewer: Viewer) -> Mapping[str, Any]:
            return compare_page(self.service, viewer.workspace, params)

        return await self._off_loop(self._page, request, "compare.html", build)

    async def costs(self, request: Request) -> Response:
        params = dict(request.query_params)

        def build(viewer: Viewer) -> Mapping[str, Any]:
            context = costs_page(self.service, viewer.workspace, params)
            if not context["up_to_date"]:
                self._catch_up_later(viewer.workspace)
            return context

        return await self._off_loop(self._page, request, "costs.html", build)

    def _catch_up_later(self, workspace: str) -> None:
        """Bring the workspace's cost rollup up to date in a thread of its own (a ledger upgraded with many
        calls stored takes longer than a request may wait); one such thread per workspace at a time."""
        with self._catching_up_lock:
            if workspace in self._catching_up:
                return
            self._catching_up.add(workspace)

        def work() -> None:
            try:
                self.service.catch_up_costs(workspace, seconds=float("inf"))
            except Exception:  # the store was closed, say: the next read of /costs tries again
                logger.warning("The cost rollup of workspace %r stopped catching up", workspace, exc_info=True)
            finally:
                with self._catching_up_lock:
                    self._catching_up.discard(workspace)

        threading.Thread(target=work, name="agent-ledger-cost-rollup", daemon=True).start()

    async def budgets(self, request: Request) -> Response:
        flash = _flash(request.cookies.get(FLASH_COOKIE))

        def build(viewer: Viewer) -> Mapping[str, Any]:
            return {**budgets_page(self.service, viewer.workspace), "flash": flash, "errors": [], "form": {}}

        response = await self._off_loop(self._page, request, "budgets.html", build)
        if flash is not None:
            self.access.clear_cookie(request, response, FLASH_COOKIE)
        return response

    async def change_budget(self, request: Request) -> Response:
        try:
            form = await _read_form(request)
        except _FormTooLarge:
            return await self._off_loop(self._error, request, None, 413, "That form is larger than 16 KB.")

        def answer() -> Response:
            viewer = self.access.viewer(request)
            if viewer is None:
                return self._to_login(request)
            refused = self._refused(request, viewer, form)
            if refused is not None:
                return refused
            message, errors = budget_change(self.service, viewer.workspace, form)
            if errors:
                context = {**budgets_page(self.service, viewer.workspace), "flash": None, "errors": errors}
                context["form"] = {k: v for k, v in form.items() if k != "csrf_token"}
                return self._html(request, "budgets.html", context, viewer, status=400)
            response = RedirectResponse("/budgets", status_code=303, headers={"Cache-Control": "no-store"})
            flash = base64.urlsafe_b64encode(message.encode("utf-8")).decode("ascii")
            self.access.set_cookie(request, response, FLASH_COOKIE, flash, 60)
            return response

        return await self._off_loop(answer)

    def _refused(self, request: Request, viewer: Viewer, form: Mapping[str, str]) -> Optional[Response]:
        """A 403 page for a form sent from another site or without this viewer's CSRF token; None if it is fine."""
        if not self.access.same_origin(request):
            return self._error(request, viewer, 403, "This form was sent from another site: nothing was changed.")
        if not self.access.csrf_ok(viewer, form):
            return self._error(
                request,
                viewer,
                403,
                "This form's security token is missing or out of date: nothing was changed. "
                "Reload the page and send it again.",
            )
        return None

    # -- logging in and out --------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        target = _safe_next(request.query_params.get("next"))

        def answer() -> Response:
            if not self.access.needs_login(request):
                return RedirectResponse(target, status_code=303)
            return self._html(request, "login.html", {"next": target, "error": None}, None)

        return await self._off_loop(answer)

    async def log_in(self, request: Request) -> Response:
        try:
            form = await _read_form(request)
        except _FormTooLarge:
            return await self._off_loop(self._error, request, None, 413, "That form is larger than 16 KB.")
        target = _safe_next(form.get("next"))

        def answer() -> Response:
            if not self.access.needs_login(request):
                return RedirectResponse(target, status_code=303)
            if not self.access.same_origin(request):
                return self._error(request, None, 403, "This form was sent from another site.")
            token = self.access.log_in(form.get("api_key", "").strip())
            if token is None:
                context = {"next": target, "error": "That is not a valid API key of this ledger (or it was revoked)."}
                return self._html(request, "login.html", context, None, status=401)
            response = RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})
            self.access.set_cookie(request, response, LOGIN_COOKIE, token, LOGIN_SECONDS)
            return response

        return await self._off_loop(answer)

    async def log_out(self, request: Request) -> Response:
        try:
            form = await _read_form(request)
        except _FormTooLarge:
            form = {}

        def answer() -> Response:
            viewer = self.access.viewer(request)
            if viewer is None:
                return self._to_login(request)
            refused = self._refused(request, viewer, form)
            if refused is not None:
                return refused
            response = RedirectResponse("/login", status_code=303, headers={"Cache-Control": "no-store"})
            self.access.clear_cookie(request, response, LOGIN_COOKIE)
            return response

        return await self._off_loop(answer)


def _flash(cookie: Optional[str]) -> Optional[str]:
    if not cookie:
        return None
    try:
        return base64.urlsafe_b64decode(cookie.encode("ascii")).decode("utf-8")[:300]
    except (ValueError, binascii.Error, UnicodeError):
        return None


def dashboard_routes(
    service: LedgerService, *, login: Optional[bool] = None, workspace: str = DEFAULT_WORKSPACE
) -> list[BaseRoute]:
    """The dashboard's routes over ``service``.

    ``login``: True asks every viewer for an API key; False shows ``workspace`` without one to viewers on
    this machine (loopback client, loopback ``Host``); None (the default) also requires the server's own
    address of the connection to be loopback.
    """
    dashboard = Dashboard(service, Access(service, login=login, workspace=workspace))
    return [
        Route("/", dashboard.sessions, methods=["GET"]),
        Route("/live/sessions", dashboard.live, methods=["GET"]),
        Route("/sessions/{session_id}", dashboard.session, methods=["GET"]),
        Route("/compare", dashboard.compare, methods=["GET"]),
        Route("/costs", dashboard.costs, methods=["GET"]),
        Route("/budgets", dashboard.budgets, methods=["GET"]),
        Route("/budgets", dashboard.change_budget, methods=["POST"]),
        Route("/login", dashboard.login_form, methods=["GET"]),
        Route("/login", dashboard.log_in, methods=["POST"]),
        Route("/logout", dashboard.log_out, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=str(STATIC)), name="static"),
    ]
