"""Reading a request's JSON body: size limits, and what JSON the ledger accepts."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from .validation import BadInput, TooLarge

MAX_BODY_BYTES = 16 * 1024 * 1024

__all__ = ["MAX_BODY_BYTES", "read_json_object"]


async def read_json_object(request: Request) -> tuple[dict[str, Any], bytes]:
    """The request's body as a JSON object, and its raw bytes (for idempotency fingerprints)."""
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise TooLarge(
            f"Request body is {len(raw)} bytes; the limit is {MAX_BODY_BYTES}. Send fewer events per request."
        )
    try:
        body = json.loads(raw) if raw else None
    except ValueError as exc:
        raise BadInput(
            f"Request body is not valid JSON ({exc}). Send a JSON object with Content-Type: application/json."
        ) from None
    except RecursionError:
        raise BadInput("Request body is nested too deeply to read; flatten it.") from None
    if not isinstance(body, dict):
        raise BadInput(
            f"Request body must be a JSON object, got {type(body).__name__ if body is not None else 'nothing'}."
        )
    return body, raw
