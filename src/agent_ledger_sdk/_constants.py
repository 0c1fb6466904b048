"""Defaults shared by every part of the SDK, named so they can be read and tested."""

from __future__ import annotations

DEFAULT_BASE_URL = "https://agent-ledger-api.azurewebsites.net"
API_KEY_ENV = "AGENT_LEDGER_API_KEY"
BASE_URL_ENV = "AGENT_LEDGER_BASE_URL"
ENABLED_ENV = "AGENT_LEDGER_ENABLED"
CAPTURE_CONTENT_ENV = "AGENT_LEDGER_CAPTURE_CONTENT"
AGENT_NAME_ENV = "AGENT_LEDGER_AGENT_NAME"
OTEL_ENV = "AGENT_LEDGER_OTEL"

DEFAULT_TIMEOUT = 10.0

# Retry policy (the openai-python defaults): 2 retries, exponential backoff from
# 0.5 s capped at 8 s, up to 25 % jitter, and a server's Retry-After honoured up
# to MAX_RETRY_AFTER seconds.
DEFAULT_MAX_RETRIES = 2
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
RETRY_JITTER = 0.25
MAX_RETRY_AFTER = 60.0

# The published README asks for events under ~64 KB; larger ones are trimmed.
MAX_EVENT_BYTES = 64 * 1024
# How deep nested values are followed before they are cut with a marker.
MAX_VALUE_DEPTH = 32

REDACTED = "[redacted]"

# A request header: the reply to POST /v1/events lists each LLM call's cost by span id (``priced``). The SDK
# asks for it when it exports OpenTelemetry spans (their cost attributes); without it the ledger leaves the
# list out, which costs it and the client time for every call of a batch.
PRICED_HEADER = "Agent-Ledger-Priced"
