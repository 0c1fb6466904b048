"""The local ledger: the Agent Ledger API on your machine, over SQLite, with no account.

Needs the server extra: ``pip install "agent-ledger-sdk[server]"``.

```python
from agent_ledger_sdk import local

with local.run() as ledger:                    # a temporary database, a free port
    client = ledger.client()
    session_id = client.start_session("demo")
    client.end_session(session_id, "success")
    assert ledger.session(session_id)["status"] == "success"
```
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from .._client import AgentLedgerClient, AsyncAgentLedgerClient
from .records import DEFAULT_WORKSPACE, UNSET, Amount
from .service import LedgerService

__all__ = ["LocalLedger", "run"]


@dataclass
class LocalLedger:
    """A running local ledger: where it listens, a key for it, and its database."""

    url: str
    api_key: str
    db_path: Union[Path, str]  # a SQLite file, or the postgresql:// URL it was given
    workspace: str
    service: LedgerService
    _redirecting: list[AgentLedgerClient] = field(default_factory=list, repr=False)

    def client(self, **options: Any) -> AgentLedgerClient:
        """An :class:`AgentLedgerClient` pointed at this ledger."""
        return AgentLedgerClient(api_key=self.api_key, base_url=self.url, **options)

    def async_client(self, **options: Any) -> AsyncAgentLedgerClient:
        """An :class:`AsyncAgentLedgerClient` pointed at this ledger."""
        return AsyncAgentLedgerClient(api_key=self.api_key, base_url=self.url, **options)

    @contextmanager
    def redirect(self) -> Iterator[AgentLedgerClient]:
        """Record the sessions that *every* client starts in the block into this ledger.

        Also clients made before the block, such as a module-level
        ``ledger = AgentLedgerClient()``: what tests of an agent need. Yields
        the client that delivers them (``flush()`` it to wait for delivery).
        """
        from .. import _instrumentation

        client = self.client()
        previous = _instrumentation.capture_override
        _instrumentation.capture_override = client._instrumentation.default_delivery
        self._redirecting.append(client)
        try:
            yield client
        finally:
            _instrumentation.capture_override = previous
            self._redirecting.remove(client)
            client.close()

    def flush(self, timeout: float = 10.0) -> int:
        """Wait until what the redirected clients recorded is in this ledger; return what is left."""
        return sum(client.flush(timeout) for client in self._redirecting)

    def env(self) -> dict[str, str]:
        """Environment variables that point the SDK (and its module-level helpers) here."""
        return {"AGENT_LEDGER_BASE_URL": self.url, "AGENT_LEDGER_API_KEY": self.api_key}

    def set_budget(
        self,
        agent_name: str,
        daily_limit_usd: Amount = UNSET,
        *,
        monthly_limit_usd: Amount = UNSET,
        warn_at_percent: Amount = UNSET,
    ) -> dict[str, Any]:
        """Set an agent's daily (UTC day) and monthly (UTC month) limits in USD; None removes one.

        ``warn_at_percent`` records a ``budget_warning`` event when the spend crosses
        that share of a limit. A limit not given is left as it is.
        """
        return self.service.set_budget(
            self.workspace,
            agent_name,
            daily_limit_usd,
            monthly_limit_usd=monthly_limit_usd,
            warn_at_percent=warn_at_percent,
        )

    def set_workspace_budget(
        self, daily_limit_usd: Amount = UNSET, *, warn_at_percent: Amount = UNSET
    ) -> dict[str, Any]:
        """Set the workspace's daily limit in USD, all agents together (None removes it)."""
        return self.service.set_workspace_budget(self.workspace, daily_limit_usd, warn_at_percent=warn_at_percent)

    def allow_unpriced_models(self, allow: bool = True) -> dict[str, Any]:
        """Let agents with a budget make calls the ledger cannot price (refused by default)."""
        return self.service.set_settings(self.workspace, allow_unpriced_models=allow)

    def set_price(
        self,
        model: str,
        input_per_mtok: Union[float, str],
        output_per_mtok: Union[float, str],
        *,
        cache_read_per_mtok: Union[float, str, None] = None,
        cache_write_per_mtok: Union[float, str, None] = None,
    ) -> None:
        """Price ``model`` (``provider/model`` or ``model``) in USD per million tokens, in this workspace."""
        from .pricing import normalise_name, rates_from

        entry = {
            "input": input_per_mtok,
            "output": output_per_mtok,
            "cache_read": cache_read_per_mtok,
            "cache_write": cache_write_per_mtok,
        }
        rates = rates_from(
            entry, ("input", "output", "cache_read", "cache_write"), f"the price of {model!r}", text_ok=True
        )
        self.service.set_price(self.workspace, normalise_name(model), rates)

    def session(self, session_id: str) -> dict[str, Any]:
        """A recorded session with its events, as ``GET /v1/sessions/{id}`` returns it."""
        return self.service.session_with_all_events(session_id, self.workspace)

    def sessions(
        self, agent_name: Optional[str] = None, *, user: Optional[str] = None, tags: Sequence[str] = ()
    ) -> list[dict[str, Any]]:
        """Recorded sessions, newest first; only those of ``user`` and carrying every one of ``tags`` if given."""
        from .records import SessionQuery

        query = SessionQuery(agent_name=agent_name, user_id=user, tags=tuple(tags), workspace=self.workspace, limit=500)
        page = self.service.list_sessions(query)
        sessions: list[dict[str, Any]] = page["sessions"]
        return sessions


@contextmanager
def run(
    *,
    db: Union[str, Path, None] = None,
    host: str = "127.0.0.1",
    port: int = 0,
    workspace: str = DEFAULT_WORKSPACE,
    prices: Union[str, Path, None] = None,
) -> Iterator[LocalLedger]:
    """Start a local ledger in a background thread for the duration of the block.

    Args:
        db: the SQLite file, or a ``postgresql://`` URL; a temporary SQLite file (deleted afterwards)
            by default.
        host: the interface to listen on; loopback by default.
        port: the port; 0 picks a free one.
        workspace: the workspace of the key created for this run.
        prices: a JSON file of price overrides (see ``agent_ledger_sdk.local.pricing``).
    """
    from .app import create_app
    from .pricing import PriceBook
    from .server import BackgroundServer
    from .store import is_url, open_store

    with tempfile.TemporaryDirectory(prefix="agent-ledger-") as scratch:
        where: Union[Path, str] = Path(scratch) / "ledger.db" if db is None else db if is_url(db) else Path(db)
        with LedgerService(open_store(where), PriceBook(prices)) as service:
            key = service.create_key("local.run", workspace)
            server = BackgroundServer(create_app(service), host, port).start()
            try:
                yield LocalLedger(server.url, key.secret, where, workspace, service)
            finally:
                server.stop()
