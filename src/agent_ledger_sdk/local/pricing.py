"""Pricing LLM calls: a local override file first, then the maintained ``genai-prices`` table.

An unknown model is never an error: it costs 0 and the event is flagged
(``priced: false`` with a note), so that an unpriced model cannot silently
defeat a budget without anyone seeing it.

The override file is JSON::

    {
      "openai/my-finetune": {"input_per_mtok": 3.0, "output_per_mtok": 12.0},
      "local-llama": {"input_per_mtok": 0, "output_per_mtok": 0}
    }

Keys are ``provider/model`` or just ``model``; prices are USD per million tokens.
Prices from ``genai-prices`` are per-token rates for the model's base tier.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

logger = logging.getLogger("agent_ledger_sdk.local")

PRICES_ENV = "AGENT_LEDGER_PRICES"
_MTOK = 1_000_000


@dataclass(frozen=True)
class Rates:
    input_per_token: float
    output_per_token: float


@dataclass(frozen=True)
class Price:
    cost_usd: float
    priced: bool
    note: Optional[str] = None


class PriceBook:
    """Looks up USD rates per (provider, model), caching every answer."""

    def __init__(self, overrides_path: Optional[str | Path] = None) -> None:
        path = overrides_path if overrides_path is not None else os.environ.get(PRICES_ENV)
        self.overrides_path = Path(path) if path else None
        self._overrides = _load_overrides(self.overrides_path) if self.overrides_path else {}
        self._cache: dict[tuple[str, str], Optional[Rates]] = {}
        self._lock = threading.Lock()

    def price(self, provider: str, model: str, tokens_in: int, tokens_out: int) -> Price:
        rates = self.rates(provider, model)
        if rates is None:
            return Price(0.0, False, f"unknown model {provider}/{model}: priced at $0; add it to the price overrides")
        return Price(tokens_in * rates.input_per_token + tokens_out * rates.output_per_token, True)

    def rates(self, provider: str, model: str) -> Optional[Rates]:
        key = (provider.lower(), model)
        if key in self._cache:
            return self._cache[key]
        rates = self._override(provider, model) or _genai_prices(provider, model)
        with self._lock:
            self._cache[key] = rates
        return rates

    def _override(self, provider: str, model: str) -> Optional[Rates]:
        entry = self._overrides.get(f"{provider.lower()}/{model}") or self._overrides.get(model)
        if entry is None:
            return None
        return Rates(entry[0] / _MTOK, entry[1] / _MTOK)


def _load_overrides(path: Path) -> dict[str, tuple[float, float]]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"price overrides file {path} does not exist") from None
    except ValueError as exc:
        raise ValueError(f"price overrides file {path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"price overrides file {path} must hold a JSON object of model -> prices")
    result: dict[str, tuple[float, float]] = {}
    for name, entry in raw.items():
        try:
            result[name] = (float(entry["input_per_mtok"]), float(entry["output_per_mtok"]))
        except (TypeError, KeyError, ValueError):
            raise ValueError(
                f"price overrides file {path}: {name!r} needs numbers input_per_mtok and output_per_mtok"
            ) from None
    return result


# Provider names people use that genai-prices spells differently.
_PROVIDER_ALIASES = {"gemini": "google", "google-genai": "google", "vertex": "google", "azure-openai": "azure"}


def _genai_prices(provider: str, model: str) -> Optional[Rates]:
    try:
        from genai_prices import Usage, calc_price
    except ImportError:  # pragma: no cover - the server extra installs it
        logger.warning("genai-prices is not installed; every model is unknown. pip install 'agent-ledger-sdk[server]'")
        return None
    provider_id: Any = _PROVIDER_ALIASES.get(provider.lower(), provider.lower())
    for candidate in (provider_id, None):
        try:
            per_input = calc_price(Usage(input_tokens=_MTOK, output_tokens=0), model_ref=model, provider_id=candidate)
            per_output = calc_price(Usage(input_tokens=0, output_tokens=_MTOK), model_ref=model, provider_id=candidate)
        except LookupError:
            continue
        except Exception as exc:  # a table bug must not fail ingestion
            logger.warning("genai-prices failed for %s/%s: %r", provider, model, exc)
            return None
        return Rates(float(per_input.total_price) / _MTOK, float(per_output.total_price) / _MTOK)
    return None
