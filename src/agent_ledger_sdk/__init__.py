"""agent-ledger-sdk: record every session, LLM call and tool call of an AI agent, priced and budgeted.

```python
from agent_ledger_sdk import AgentLedgerClient

ledger = AgentLedgerClient()          # key from AGENT_LEDGER_API_KEY

@ledger.tool
def search_docs(query: str) -> list[str]: ...

@ledger.session("support-bot")
def handle(ticket: str) -> str: ...
```
"""

from ._client import AgentLedgerClient, AsyncAgentLedgerClient
from ._context import ContextThreadPoolExecutor, bind_context
from ._default import (
    configure,
    current_session,
    flush,
    get_client,
    instrument_anthropic,
    instrument_openai,
    instrument_openai_agents,
    llm_call,
    session,
    tool,
    uninstrument_anthropic,
    uninstrument_openai,
    uninstrument_openai_agents,
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
    UnpricedModelError,
    UnprocessableEntityError,
)
from ._helpers import StepCounter, instrument_tool, run_session
from ._instrument_llm import LLMCall
from ._instrument_session import SessionScope
from ._instrument_tool import ToolDecorator
from ._session import SessionHandle
from ._stats import LedgerStats
from ._version import __version__

__all__ = [
    "APIConnectionError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AgentLedgerClient",
    "AgentLedgerError",
    "AsyncAgentLedgerClient",
    "AuthenticationError",
    "BadRequestError",
    "BudgetGuardrailDetails",
    "BudgetGuardrailError",
    "ConflictError",
    "ContextThreadPoolExecutor",
    "InternalServerError",
    "LLMCall",
    "LedgerStats",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "SessionHandle",
    "SessionScope",
    "StepCounter",
    "ToolDecorator",
    "UnpricedModelError",
    "UnprocessableEntityError",
    "__version__",
    "bind_context",
    "configure",
    "current_session",
    "flush",
    "get_client",
    "instrument_anthropic",
    "instrument_openai",
    "instrument_openai_agents",
    "instrument_tool",
    "llm_call",
    "run_session",
    "session",
    "tool",
    "uninstrument_anthropic",
    "uninstrument_openai",
    "uninstrument_openai_agents",
]
