"""The module-level helpers: ``agent_ledger_sdk.session`` and friends act on a default client.

The default client is built by :func:`configure`, or from the environment
(``AGENT_LEDGER_API_KEY``, ``AGENT_LEDGER_BASE_URL``, else the key a local
ledger left on this machine) the first time a helper runs. With no key
anywhere, the helpers pass through and warn once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from typing import Any, Optional, overload

from ._client import AgentLedgerClient
from ._context import current_session_var
from ._instrument_llm import LLMCall, make_llm_call
from ._instrument_session import SessionScope, make_session
from ._instrument_tool import ToolDecorator, make_tool
from ._instrument_wrapping import F
from ._instrumentation import Instrumentation
from ._session import SessionHandle

_default: Optional[AgentLedgerClient] = None
_lock = threading.Lock()


def _reinit_after_fork() -> None:
    global _lock
    _lock = threading.Lock()  # fork() waited for it (below): no thread of the child can hold it


if hasattr(os, "register_at_fork"):
    # Building the default client takes milliseconds under this lock: a fork in that moment
    # would leave the child a lock nobody releases, and its first session waiting forever.
    os.register_at_fork(
        before=lambda: _lock.acquire(), after_in_parent=lambda: _lock.release(), after_in_child=_reinit_after_fork
    )


def configure(**options: Any) -> AgentLedgerClient:
    """Build the default client used by the module-level helpers, and return it.

    Takes the arguments of :class:`AgentLedgerClient`.

    ```python
    import agent_ledger_sdk

    ledger = agent_ledger_sdk.configure(api_key="sk-test", enabled=False)
    assert agent_ledger_sdk.get_client() is ledger
    ```
    """
    global _default
    client = AgentLedgerClient(**options)
    with _lock:
        previous, _default = _default, client
    if previous is not None:
        previous.close()
    return client


def get_client() -> AgentLedgerClient:
    """The default client, built from the environment on first use."""
    global _default
    client = _default
    if client is None:
        with _lock:
            client = _default
            if client is None:
                client = _default = AgentLedgerClient()  # with no key: records nothing, says what to do
    return client


def _resolve() -> Instrumentation:
    return get_client()._instrumentation


@overload
def session(func: F, /) -> F: ...


@overload
def session(
    func_or_name: Optional[str] = None,
    /,
    *,
    agent_name: Optional[str] = None,
    user_id: Optional[str] = None,
    tags: Optional[Iterable[str]] = None,
    metadata: Optional[dict[str, Any]] = None,
    max_cost_usd: Optional[float] = None,
) -> SessionScope: ...


def session(
    func_or_name: Any = None,
    /,
    *,
    agent_name: Optional[str] = None,
    user_id: Optional[str] = None,
    tags: Optional[Iterable[str]] = None,
    metadata: Optional[dict[str, Any]] = None,
    max_cost_usd: Optional[float] = None,
) -> Any:
    """``ledger.session`` of the default client; see :meth:`AgentLedgerClient.session`."""
    return make_session(
        _resolve, func_or_name, agent_name, user_id=user_id, tags=tags, metadata=metadata, max_cost_usd=max_cost_usd
    )


@overload
def tool(func: F, /) -> F: ...


@overload
def tool(
    func_or_name: Optional[str] = None,
    /,
    *,
    name: Optional[str] = None,
    capture_input: bool = True,
    capture_output: bool = True,
) -> ToolDecorator: ...


def tool(
    func_or_name: Any = None,
    /,
    *,
    name: Optional[str] = None,
    capture_input: bool = True,
    capture_output: bool = True,
) -> Any:
    """``ledger.tool`` of the default client; see :meth:`AgentLedgerClient.tool`."""
    return make_tool(func_or_name, name, capture_input, capture_output)


def llm_call(
    *, provider: str, model: str, prompt: Any = None, max_cost_usd: Optional[float] = None, **attributes: Any
) -> LLMCall:
    """``ledger.llm_call`` of the default client; see :meth:`AgentLedgerClient.llm_call`."""
    return make_llm_call(provider, model, prompt, attributes, max_cost_usd)


def current_session() -> Optional[SessionHandle]:
    """The session the calling code runs in, or None."""
    return current_session_var.get()


def flush(timeout: Optional[float] = 5.0) -> int:
    """Flush the default client; return how many events are left unsent."""
    client = _default
    return client.flush(timeout) if client is not None else 0


# -- auto-instrumentation of the default client (docs/integrations.md) --------------


def instrument_openai(client: Any = None) -> None:
    """Record the ``openai`` clients' calls with the default client; see :meth:`AgentLedgerClient.instrument_openai`.

    ```python
    import agent_ledger_sdk

    agent_ledger_sdk.instrument_openai()   # every OpenAI / AsyncOpenAI client, before or after this line
    ```
    """
    from .integrations import openai as integration

    integration.instrument(_resolve, client)


def uninstrument_openai(client: Any = None) -> None:
    """Undo :func:`instrument_openai` (for every client, or only ``client``)."""
    from .integrations import openai as integration

    integration.uninstrument(client)


def instrument_anthropic(client: Any = None) -> None:
    """:func:`instrument_openai` for the ``anthropic`` package."""
    from .integrations import anthropic as integration

    integration.instrument(_resolve, client)


def uninstrument_anthropic(client: Any = None) -> None:
    """Undo :func:`instrument_anthropic` (for every client, or only ``client``)."""
    from .integrations import anthropic as integration

    integration.uninstrument(client)


def instrument_openai_agents() -> Any:
    """Record the OpenAI Agents SDK's runs with the default client; see
    :meth:`AgentLedgerClient.instrument_openai_agents`. Returns the tracing processor."""
    from .integrations import openai_agents as integration

    return integration.instrument(_resolve)


def uninstrument_openai_agents() -> None:
    """Undo :func:`instrument_openai_agents`."""
    from .integrations import openai_agents as integration

    integration.uninstrument()
