"""Auto-instrumentation of LLM clients and agent frameworks: no glue code at the call sites.

Each integration is a leaf module that imports its package only when asked:

- :mod:`agent_ledger_sdk.integrations.openai`: ``instrument_openai()``
- :mod:`agent_ledger_sdk.integrations.anthropic`: ``instrument_anthropic()``
- :mod:`agent_ledger_sdk.integrations.openai_agents`: a tracing processor for the OpenAI Agents SDK
- :mod:`agent_ledger_sdk.integrations.langchain`: a LangChain / LangGraph callback handler

They all record through :class:`~agent_ledger_sdk.integrations._calls.ProviderCall`.
"""
