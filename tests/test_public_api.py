"""The package's public surface is deliberate: this pins it."""

from __future__ import annotations

import subprocess
import sys

import agent_ledger_sdk


def test_all_is_pinned() -> None:
    assert agent_ledger_sdk.__all__ == [
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
    for name in agent_ledger_sdk.__all__:
        assert hasattr(agent_ledger_sdk, name)


def test_the_published_names_are_all_here() -> None:
    for name in (
        "AgentLedgerClient",
        "AgentLedgerError",
        "BudgetGuardrailError",
        "BudgetGuardrailDetails",
        "StepCounter",
        "run_session",
        "instrument_tool",
    ):
        assert name in agent_ledger_sdk.__all__


def test_the_error_tree() -> None:
    from agent_ledger_sdk import (
        AgentLedgerError,
        APIConnectionError,
        APIStatusError,
        APITimeoutError,
        BudgetGuardrailError,
        InternalServerError,
        RateLimitError,
    )

    assert issubclass(BudgetGuardrailError, AgentLedgerError)
    assert issubclass(APITimeoutError, APIConnectionError)
    assert issubclass(APIConnectionError, AgentLedgerError)
    assert issubclass(RateLimitError, APIStatusError)
    assert issubclass(InternalServerError, APIStatusError)
    assert not issubclass(BudgetGuardrailError, APIStatusError)


def test_importing_the_package_stays_light() -> None:
    code = (
        "import sys, agent_ledger_sdk;"
        "heavy = [m for m in ('asyncio', 'starlette', 'uvicorn', 'genai_prices', 'pydantic', 'sqlite3', 'openai', 'anthropic', 'agents', 'langchain_core')"
        " if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_the_package_is_typed() -> None:
    from importlib import resources

    assert resources.files("agent_ledger_sdk").joinpath("py.typed").is_file()
