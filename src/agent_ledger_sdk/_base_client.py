"""Everything the sync and async clients share that does no I/O.

Configuration, request building, retry decisions and the mapping of responses
to errors live here once; ``_client.py`` only moves bytes.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import platform
import random
import time
from collections.abc import Mapping
from typing import Any, Optional, Union

import httpx

from ._constants import (
    API_KEY_ENV,
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    INITIAL_RETRY_DELAY,
    MAX_RETRY_AFTER,
    MAX_RETRY_DELAY,
    RETRY_JITTER,
)
from ._exceptions import (
    AgentLedgerError,
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BudgetGuardrailDetails,
    BudgetGuardrailError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    UnprocessableEntityError,
)
from ._version import __version__

logger = logging.getLogger("agent_ledger_sdk")

USER_AGENT = f"agent-ledger-sdk/{__version__} python/{platform.python_version()} httpx/{httpx.__version__}"

_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}
MAX_KEPT_URLS = 16  # parsed URLs kept by BaseClient._build_request: the fixed paths of the protocol
_RETRYABLE_STATUS = frozenset({408, 429})
_KEY_HINT = (
    "The API key is missing, wrong or revoked: create a key (hosted dashboard, or "
    "`agent-ledger keys create` for a local ledger) and pass it as api_key= or set "
    f"{API_KEY_ENV}."
)


def idempotency_key() -> str:
    """A unique key per logical request, time-ordered so that a ledger's index of keys grows at one end."""
    return f"agent-ledger-{time.time_ns():016x}-{os.urandom(8).hex()}"


NO_KEY_MESSAGE = (
    f"no API key: pass AgentLedgerClient(api_key=...) or set {API_KEY_ENV}; to record on this machine with no "
    "account, run `agent-ledger serve` (pip install 'agent-ledger-sdk[server]') and clients find its key"
)


def resolve_api_key(api_key: Optional[str]) -> str:
    """``api_key``, else ``AGENT_LEDGER_API_KEY``, else the key a local ledger left on this machine."""
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    if key is None:
        from ._local_key import read_local_key

        key = read_local_key()
    if not key or not key.strip():
        raise ValueError(NO_KEY_MESSAGE)
    return key.strip()


def resolve_base_url(base_url: Optional[str], api_key: str = "") -> str:
    """``base_url``, else ``AGENT_LEDGER_BASE_URL``, else the local ledger for a local key, else the hosted API."""
    from ._local_key import LOCAL_BASE_URL, is_local_key, read_local_url

    url = base_url or os.environ.get(BASE_URL_ENV)
    if not url:
        url = (read_local_url() or LOCAL_BASE_URL) if is_local_key(api_key) else DEFAULT_BASE_URL
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must start with http:// or https://, got {url!r}")
    return url


class BaseClient:
    """Configuration and protocol logic of :class:`AgentLedgerClient` and its async twin."""

    def __init__(
        self,
        api_key: Optional[str] = None,
        *,
        base_url: Optional[str] = None,
        timeout: Union[float, httpx.Timeout, None] = DEFAULT_TIMEOUT,
        default_headers: Optional[Mapping[str, str]] = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        try:
            self.api_key = resolve_api_key(api_key)
        except ValueError:
            if api_key is not None:
                raise  # an explicit empty key is a mistake to say at once (the published client does)
            # No key anywhere: the client is built, records nothing, and says what to do;
            # a published call (start_session...) raises that same message.
            self.api_key = ""
            logger.warning("agent-ledger: %s. Nothing is recorded until then.", NO_KEY_MESSAGE)
        self.base_url = resolve_base_url(base_url, self.api_key)
        self.timeout = timeout
        self.max_retries = max_retries
        self.default_headers = dict(default_headers or {})
        self._headers = {
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
            **self.default_headers,
            "x-api-key": self.api_key,
        }
        self._prepared: Optional[tuple[tuple[tuple[str, str], ...], httpx.Headers]] = None
        self._urls: dict[str, httpx.URL] = {}
        self._heads: dict[str, tuple[tuple[tuple[str, str], ...], httpx.URL, bytes]] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    # -- requests ---------------------------------------------------------

    def _build_request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content: Optional[bytes] = None,
        key: Optional[str] = None,
    ) -> httpx.Request:
        """One logical request; its Idempotency-Key (``key``, else a new one) is reused by every retry."""
        if not self.api_key:
            raise ValueError(NO_KEY_MESSAGE)
        # The headers and the URL are made once and copied (httpx checks and parses them anew otherwise: about
        # 25 µs of each request's 55): the URLs of the fixed paths by their text, the headers while unchanged.
        prepared = self._prepared
        current = tuple(self._headers.items())
        if prepared is None or prepared[0] != current:
            prepared = self._prepared = (current, httpx.Headers(self._headers))
        headers = httpx.Headers(prepared[1])
        if method in ("POST", "DELETE"):
            headers["Idempotency-Key"] = key or idempotency_key()
        if method == "POST":
            headers["Content-Type"] = "application/json"
            if content is None:
                content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        text = self.base_url + path
        url = self._urls.get(text)
        if url is None:
            url = httpx.URL(text)
            if len(self._urls) < MAX_KEPT_URLS:  # the paths of sessions' ends are many, and each used once
                self._urls[text] = url
        return httpx.Request(method, url, headers=headers, content=content)

    def _request_head(self, path: str) -> tuple[httpx.URL, bytes]:
        """A JSON POST to ``path`` as HTTP/1.1 bytes, but for its ``Idempotency-Key`` and ``Content-Length``
        (which the caller adds last, then the blank line): the headers :meth:`_build_request` sends, in its
        order (made by it, once for each path of the protocol while the headers are unchanged). With the URL
        it goes to."""
        current = tuple(self._headers.items())
        kept = self._heads.get(path)
        if kept is not None and kept[0] == current:
            return kept[1], kept[2]
        template = self._build_request("POST", path, content=b"", key="-")
        head = [b"POST ", template.url.raw_path, b" HTTP/1.1\r\n"]
        for name, value in template.headers.raw:
            if name.lower() not in (b"idempotency-key", b"content-length"):
                head += (name, b": ", value, b"\r\n")
        made = b"".join(head)
        if len(self._heads) < MAX_KEPT_URLS:
            self._heads[path] = (current, template.url, made)
        return template.url, made

    # -- responses --------------------------------------------------------

    def _error_for_exception(self, exc: Exception, request: httpx.Request) -> AgentLedgerError:
        if isinstance(exc, httpx.TimeoutException):
            return APITimeoutError(f"Request to {request.url} timed out: {exc}", request=request)
        return APIConnectionError(
            f"Could not reach the ledger at {self.base_url}: {exc or type(exc).__name__}",
            request=request,
        )

    def _error_for_response(self, response: httpx.Response) -> AgentLedgerError:
        body = _json_or_none(response)
        message = _message(response, body)
        if response.status_code == 429 and isinstance(body, dict):
            details = BudgetGuardrailDetails.from_payload(body.get("details"))
            if details is not None:
                guardrail_message = str(body["error"]) if "error" in body else "Budget limit exceeded"
                return BudgetGuardrailError(guardrail_message, details, response=response)
        if response.status_code in (401, 403):
            message = f"{message}. {_KEY_HINT}"
        error_class = _STATUS_ERRORS.get(response.status_code)
        if error_class is None:
            error_class = InternalServerError if response.status_code >= 500 else APIStatusError
        return error_class(message, response=response, body=body)

    def _parse_success(self, response: httpx.Response) -> Any:
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return None

    def _session_id_from(self, response: httpx.Response) -> str:
        body = self._parse_success(response)
        session_id = body.get("id") if isinstance(body, dict) else None
        if not isinstance(session_id, str) or not session_id:
            raise APIResponseValidationError(
                f"The ledger answered {response.status_code} to POST /v1/sessions without a "
                f'session id (expected JSON {{"id": "..."}}, got {response.text[:200]!r})',
                response=response,
            )
        return session_id

    # -- retries ----------------------------------------------------------

    def _retry_delay(self, error: AgentLedgerError, attempt: int, max_retries: int) -> Optional[float]:
        """Seconds to wait before retry number ``attempt + 1``, or None to give up."""
        if attempt >= max_retries or not is_retryable(error):
            return None
        response = getattr(error, "response", None)
        retry_after = _retry_after(response) if response is not None else None
        if retry_after is not None and 0 <= retry_after <= MAX_RETRY_AFTER:
            return retry_after
        delay = min(INITIAL_RETRY_DELAY * (2.0**attempt), MAX_RETRY_DELAY)
        return delay * (1 - RETRY_JITTER * random.random())

    def _log_retry(
        self, request: httpx.Request, error: AgentLedgerError, delay: float, attempt: int, max_retries: int
    ) -> None:
        logger.debug(
            "Retrying %s %s in %.2fs (retry %d of %d) after: %s",
            request.method,
            request.url.path,
            delay,
            attempt + 1,
            max_retries,
            error,
        )

    # -- validation -------------------------------------------------------

    @staticmethod
    def _check_agent_name(agent_name: Any) -> str:
        if not isinstance(agent_name, str) or not agent_name.strip():
            raise ValueError(f"agent_name must be a non-empty string, got {agent_name!r}")
        return agent_name

    @staticmethod
    def _end_body(session_id: Any, status: Any, error_message: Optional[str]) -> dict[str, Any]:
        BaseClient._check_session_id(session_id)
        if status not in ("success", "error"):
            raise ValueError(f'status must be "success" or "error", got {status!r}')
        if error_message is not None and not isinstance(error_message, str):
            error_message = str(error_message)
        return {"status": status, "errorMessage": error_message}

    @staticmethod
    def _check_session_id(session_id: Any) -> str:
        if not isinstance(session_id, str) or not session_id:
            raise ValueError(f"session_id must be the non-empty string start_session() returned, got {session_id!r}")
        return session_id


def is_retryable(error: BaseException) -> bool:
    """True for faults that may pass: connection errors, timeouts, 408, 429 without a guardrail, 5xx."""
    if isinstance(error, APIConnectionError):
        return True
    if isinstance(error, APIStatusError):
        return error.status_code in _RETRYABLE_STATUS or error.status_code >= 500
    return False  # guardrails, validation errors


def _retry_after(response: httpx.Response) -> Optional[float]:
    header = response.headers.get("retry-after-ms")
    if header is not None:
        try:
            return float(header) / 1000
        except ValueError:
            pass
    header = response.headers.get("retry-after")
    if header is None:
        return None
    try:
        return float(header)
    except ValueError:
        parsed = email.utils.parsedate_tz(header)
        if parsed is None:
            return None
        return float(email.utils.mktime_tz(parsed) - time.time())


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _message(response: httpx.Response, body: Any) -> str:
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    text = response.text.strip()
    if text:
        return text
    return f"Request failed with status {response.status_code}"
