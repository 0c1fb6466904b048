"""Shared fixtures: respx for HTTP, one suite for the sync and the async client."""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

import agent_ledger_sdk
from agent_ledger_sdk import AgentLedgerClient, AsyncAgentLedgerClient
from agent_ledger_sdk import _default as default_module
from agent_ledger_sdk import _http as client_module
from agent_ledger_sdk import _instrumentation as recorder_module

from .postgres_server import postgres_server, postgres_url  # noqa: F401  (fixtures: a real PostgreSQL)

BASE_URL = "https://ledger.test"
API_KEY = "sk-test-123"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    for name in (
        "AGENT_LEDGER_API_KEY",
        "AGENT_LEDGER_BASE_URL",
        "AGENT_LEDGER_ENABLED",
        "AGENT_LEDGER_CAPTURE_CONTENT",
        "AGENT_LEDGER_OTEL",
        "AGENT_LEDGER_DB",
    ):
        monkeypatch.delenv(name, raising=False)
    # No test reads or writes the real local-ledger key file or journal of this machine.
    monkeypatch.setenv("AGENT_LEDGER_HOME", str(tmp_path_factory.mktemp("agent-ledger-home")))
    monkeypatch.setattr(default_module, "_default", None)
    yield
    recorder_module.capture_override = None


@pytest.fixture(autouse=True)
def retry_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Backoff waits are recorded instead of slept."""
    delays: list[float] = []

    async def async_sleep(delay: float) -> None:
        delays.append(delay)

    monkeypatch.setattr(client_module, "_sleep", delays.append)
    monkeypatch.setattr(client_module, "_async_sleep", async_sleep)
    return delays


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE_URL, assert_all_called=False) as router:
        yield router


@pytest.fixture
def http(ledger: Any) -> Iterator[httpx.Client]:
    """An HTTP client on the module's ``ledger`` fixture (a local ledger), with its key."""
    with httpx.Client(base_url=ledger.url, headers={"x-api-key": ledger.api_key}) as client:
        yield client


@pytest.fixture
def ledger_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="agent_ledger_sdk")
    return caplog


class Api:
    """Calls a sync or an async client the same way, so one test covers both."""

    def __init__(self, client: Any, loop: asyncio.AbstractEventLoop | None) -> None:
        self.client = client
        self.loop = loop
        self.is_async = loop is not None

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.client, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attribute(*args, **kwargs)
            if inspect.isawaitable(result):
                assert self.loop is not None
                return self.loop.run_until_complete(result)
            return result

        return call

    def close(self) -> None:
        if self.loop is not None:
            self.loop.run_until_complete(self.client.aclose())
            self.loop.close()
        else:
            self.client.close()


@pytest.fixture(params=["sync", "async"])
def make_api(request: pytest.FixtureRequest) -> Iterator[Any]:
    made: list[Api] = []

    def make(**options: Any) -> Api:
        options.setdefault("api_key", API_KEY)
        options.setdefault("base_url", BASE_URL)
        if request.param == "sync":
            wrapper = Api(AgentLedgerClient(**options), None)
        else:
            wrapper = Api(AsyncAgentLedgerClient(**options), asyncio.new_event_loop())
        made.append(wrapper)
        return wrapper

    yield make
    for wrapper in made:
        wrapper.close()


@pytest.fixture
def ledger_api(make_api: Any) -> Any:
    return make_api()


RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SPAN_ID = re.compile(r"^[0-9a-f]{16}$")


def without_span(event: dict[str, Any]) -> dict[str, Any]:
    """The event less its span keys, after checking their form: ``startedAt`` (RFC 3339 ms UTC), ``spanId``."""
    rest = dict(event)
    started = rest.pop("startedAt")
    assert RFC3339_MS.match(started), started
    if "spanId" in rest:
        assert SPAN_ID.match(rest.pop("spanId"))
    return rest


__all__ = ["API_KEY", "BASE_URL", "agent_ledger_sdk", "without_span"]
