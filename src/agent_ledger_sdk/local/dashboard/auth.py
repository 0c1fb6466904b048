"""Who may see the dashboard, and which workspace they see; logins and protection of its forms.

Two modes, chosen when the app is made (``create_app(dashboard_login=...)``):

- **No login** (the default, and ``agent-ledger serve`` on 127.0.0.1, ``localhost`` or ``::1``):
  whoever can open the page on this machine can already read the ledger's database and the local
  key file, so the dashboard shows the local key's workspace (``default``) without asking. It still
  answers only a request that came over loopback (the client's address), addressed to a loopback
  name (the ``Host`` header: a page of another site that a DNS trick points at 127.0.0.1 gets the
  login page, not the data) and, unless the app was told the server's host, to a loopback address
  of this server.
- **Login** (``serve --host`` anything else, or ``AGENT_LEDGER_DASHBOARD_LOGIN=1``): an API key is
  asked once, on ``/login``; the page then shows only that key's workspace. The key is not kept:
  the browser gets a cookie holding a login token (the key's id, an expiry and a random nonce,
  signed with HMAC-SHA256 under a key derived from the stored hash of the API key), HttpOnly,
  SameSite=Strict, Secure when the request came over https. Every replica can check it (the hash
  is in the shared database), it expires after :data:`LOGIN_SECONDS`, and revoking the API key ends
  it at once.

Forms that change something (the budgets, logging out) carry a CSRF token in a hidden field, checked
on POST: in login mode an HMAC of the login's nonce, with no login the value of a random HttpOnly,
SameSite=Strict cookie (double submit). A POST whose ``Origin`` (or, without one, ``Referer``) is
another host is refused too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from ..service import LedgerService, key_id_of

LOGIN_COOKIE = "agent_ledger_login"
CSRF_COOKIE = "agent_ledger_csrf"
LOGIN_SECONDS = 12 * 3600
LOGIN_ENV = "AGENT_LEDGER_DASHBOARD_LOGIN"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,64}\Z")

__all__ = [
    "CSRF_COOKIE",
    "LOGIN_COOKIE",
    "LOGIN_ENV",
    "LOGIN_SECONDS",
    "Access",
    "Viewer",
    "is_loopback",
    "login_from_environment",
]


def is_loopback(host: Optional[str]) -> bool:
    """True for ``localhost`` (and ``*.localhost``) and loopback addresses (127.0.0.0/8, ::1, ::ffff:127.x)."""
    if not host:
        return False
    name = host.strip().strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def login_from_environment() -> Optional[bool]:
    """``AGENT_LEDGER_DASHBOARD_LOGIN``: 1/true/yes/on asks for a key even on loopback; unset: decide by host."""
    value = os.environ.get(LOGIN_ENV, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    return None


def _host_name(host_header: str) -> str:
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Viewer:
    """Who is looking: the workspace shown, and what this viewer's forms must carry."""

    workspace: str
    csrf_token: str
    logged_in: bool  # True: by a login (the page offers to log out); False: loopback, no login
    new_csrf_cookie: Optional[str] = None  # to set on the response (no login, first visit)


class Access:
    """Decides, for each request, whether a login is needed and which workspace the viewer sees."""

    def __init__(
        self,
        service: LedgerService,
        *,
        login: Optional[bool],
        workspace: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.service = service
        self.login = login
        self.workspace = workspace
        self._clock = clock

    # -- the mode -------------------------------------------------------------------------------

    def needs_login(self, request: Request) -> bool:
        """Whether this request must come with a login (see the module's docstring)."""
        if self.login:
            return True
        client = request.client.host if request.client is not None else None
        if not is_loopback(client):
            return True
        if not is_loopback(_host_name(request.headers.get("host", ""))):
            return True
        if self.login is None:
            server = request.scope.get("server")
            if server and not is_loopback(str(server[0])):
                return True
        return False

    # -- who is looking ------------------------------------------------------------------------------

    def viewer(self, request: Request) -> Optional[Viewer]:
        """The viewer of ``request``, or None when a login is needed and there is none (a blocking call)."""
        if not self.needs_login(request):
            cookie = request.cookies.get(CSRF_COOKIE, "")
            if _TOKEN.match(cookie):
                return Viewer(self.workspace, cookie, logged_in=False)
            fresh = secrets.token_urlsafe(32)
            return Viewer(self.workspace, fresh, logged_in=False, new_csrf_cookie=fresh)
        token = request.cookies.get(LOGIN_COOKIE)
        found = self._check_login(token) if token else None
        if found is None:
            return None
        workspace, nonce, signing = found
        return Viewer(workspace, self._csrf_for(signing, nonce), logged_in=True)

    def log_in(self, api_key: str) -> Optional[str]:
        """A login token for ``api_key``, or None when it is not a live key (a blocking call)."""
        key_id = key_id_of(api_key)
        if key_id is None or self.service.authenticate(api_key) is None:
            return None
        found = self.service.session_signing_key(key_id)
        if found is None:
            return None
        _, signing = found
        body = _b64(json.dumps([key_id, int(self._clock()) + LOGIN_SECONDS, secrets.token_hex(16)]).encode())
        return f"{body}.{self._sign(signing, body)}"

    def _check_login(self, token: str) -> Optional[tuple[str, str, bytes]]:
        body, _, signature = token.partition(".")
        try:
            key_id, expires, nonce = json.loads(_unb64(body))
        except (ValueError, TypeError, binascii.Error):
            return None
        if not (isinstance(key_id, str) and isinstance(expires, int) and isinstance(nonce, str)):
            return None
        if expires < self._clock():
            return None
        found = self.service.session_signing_key(key_id)
        if found is None:
            return None
        workspace, signing = found
        if not hmac.compare_digest(self._sign(signing, body).encode("ascii"), signature.encode("utf-8", "replace")):
            return None
        return workspace, nonce, signing

    @staticmethod
    def _sign(signing: bytes, body: str) -> str:
        return _b64(hmac.new(signing, b"login:" + body.encode("ascii", "replace"), hashlib.sha256).digest())

    @staticmethod
    def _csrf_for(signing: bytes, nonce: str) -> str:
        return _b64(hmac.new(signing, b"csrf:" + nonce.encode("utf-8", "replace"), hashlib.sha256).digest())

    # -- forms ---------------------------------------------------------------------------------------

    @staticmethod
    def same_origin(request: Request) -> bool:
        """False when the browser says the form was sent from a page of another host (Origin, else Referer)."""
        host = request.headers.get("host", "").lower()
        origin = request.headers.get("origin")
        if origin is not None:
            return origin != "null" and urlsplit(origin).netloc.lower() == host
        referer = request.headers.get("referer")
        if referer:
            return urlsplit(referer).netloc.lower() == host
        return True  # browsers send an Origin with every cross-site POST; the token decides

    @staticmethod
    def csrf_ok(viewer: Viewer, form: Any) -> bool:
        """The form's ``csrf_token`` is the viewer's (never true on a first visit: no cookie to match yet)."""
        sent = form.get("csrf_token")
        return (
            isinstance(sent, str)
            and viewer.new_csrf_cookie is None
            and hmac.compare_digest(sent.encode("utf-8", "replace"), viewer.csrf_token.encode("ascii"))
        )

    # -- cookies -------------------------------------------------------------------------------------

    @staticmethod
    def set_cookie(request: Request, response: Response, name: str, value: str, max_age: Optional[int]) -> None:
        """An HttpOnly, SameSite=Strict cookie for the whole site; Secure when the request came over https."""
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    @staticmethod
    def clear_cookie(request: Request, response: Response, name: str) -> None:
        response.delete_cookie(name, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https")
