"""Pricing LLM calls exactly: the workspace's own prices, then a local override file, then ``genai-prices``.

A call is priced from its full usage, with the maintained genai-prices table
(`genai_prices.calc_price`): input, output, cache reads and cache writes, each
at the rate of the price tier that the call's prompt size falls in (for
instance above 200k input tokens). The ledger and ``calc_price`` agree to the
last digit, because the ledger calls it for every call; only the lookup of the
model is cached.

Token counts follow OpenAI's convention, which is also genai-prices'
``Usage``: ``tokensIn`` counts *every* input token, cached ones included, and
``cacheReadTokens`` and ``cacheWriteTokens`` say how many of them were read
from or written to the prompt cache (so they add up to at most ``tokensIn``).
``reasoningTokens`` are part of ``tokensOut`` and are not priced apart.

Model names are found the way people write them: case and surrounding
whitespace do not matter, nor a provider prefix (``openai/gpt-4o-mini``,
``models/gemini-2.5-pro``), nor a dated snapshot (``gpt-4o-mini-2024-07-18``,
``claude-3-5-sonnet@20240620``) or ``-latest``.

A model with no price is never priced at $0 silently: its event says
``costStatus: "unpriced"``, and under a budget it is refused unless the
workspace allows unpriced models.

The override file is JSON, prices in USD per million tokens (the cache prices
are optional; without one, those tokens cost the input price)::

    {
      "openai/my-finetune": {"input_per_mtok": 3.0, "output_per_mtok": 12.0,
                             "cache_read_per_mtok": 1.5, "cache_write_per_mtok": 3.75},
      "local-llama": {"input_per_mtok": 0, "output_per_mtok": 0}
    }

Keys are ``provider/model`` or just ``model``. Prices added at run time
(``PUT /v1/prices/{model}``, ``agent-ledger prices set``) live in the database,
per workspace, and come first.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Optional, Union

from . import money

logger = logging.getLogger("agent_ledger_sdk.local")

PRICES_ENV = "AGENT_LEDGER_PRICES"
PRICED = "priced"
UNPRICED = "unpriced"
ESTIMATED = "estimated"
COST_STATUSES = (PRICED, UNPRICED, ESTIMATED)
# A call whose usage is missing (usageMissing: true) and that reserved nothing is charged as if it
# had used this many tokens (or the tokensIn / tokensOut it reports, when more).
ESTIMATE_TOKENS_IN = 4096
ESTIMATE_TOKENS_OUT = 4096
_OVERRIDE_FIELDS = ("input_per_mtok", "output_per_mtok", "cache_read_per_mtok", "cache_write_per_mtok")

_MULTIPLY, _ADD = money.CONTEXT.multiply, money.CONTEXT.add

# Provider names people use that genai-prices spells differently.
_PROVIDER_ALIASES = {
    "gemini": "google",
    "google-genai": "google",
    "google-gla": "google",
    "google-vertex": "google",
    "vertex": "google",
    "vertexai": "google",
    "azure-openai": "azure",
    "bedrock": "aws",
    "aws-bedrock": "aws",
    "xai": "x-ai",
    "grok": "x-ai",
}
# A dated snapshot or a moving alias at the end of a model name.
_SNAPSHOT_SUFFIX = re.compile(r"(?:[-@](?:\d{4}-\d{2}-\d{2}|\d{8})|-latest)$")


@dataclass(frozen=True)
class TokenUsage:
    """What one LLM call used (``tokens_in`` includes the cached input tokens)."""

    tokens_in: int
    tokens_out: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


@dataclass(frozen=True)
class Rates:
    """Flat prices in USD per million tokens; a cache price of None means those tokens cost the input price."""

    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cache_read_per_mtok: Optional[Decimal] = None
    cache_write_per_mtok: Optional[Decimal] = None

    def cost(self, usage: TokenUsage) -> Decimal:
        return self.cost_of(usage.tokens_in, usage.tokens_out, usage.cache_read_tokens, usage.cache_write_tokens)

    def cost_of(self, tokens_in: int, tokens_out: int, cache_read: int = 0, cache_write: int = 0) -> Decimal:
        """The exact cost of these counts (the decimal context takes the ints as they are: no rounding)."""
        # The same decomposition as genai-prices: cached tokens with a price of their own leave the input count.
        multiply, add = _MULTIPLY, _ADD
        total = multiply(tokens_out, self.output_per_mtok)
        if cache_read and self.cache_read_per_mtok is not None:
            tokens_in -= cache_read
            total = add(total, multiply(cache_read, self.cache_read_per_mtok))
        if cache_write and self.cache_write_per_mtok is not None:
            tokens_in -= cache_write
            total = add(total, multiply(cache_write, self.cache_write_per_mtok))
        return money.per_million(add(total, multiply(tokens_in, self.input_per_mtok)))

    def describe(self) -> str:
        def rate(value: Optional[Decimal]) -> str:
            return "the input price" if value is None else f"${money.text(value)}"

        return (
            f"${money.text(self.input_per_mtok)} in, ${money.text(self.output_per_mtok)} out, "
            f"{rate(self.cache_read_per_mtok)} for cache reads and {rate(self.cache_write_per_mtok)} for cache "
            "writes, per million tokens"
        )

    def as_json(self) -> dict[str, Optional[Decimal]]:
        return {
            "inputPerMtok": self.input_per_mtok,
            "outputPerMtok": self.output_per_mtok,
            "cacheReadPerMtok": self.cache_read_per_mtok,
            "cacheWritePerMtok": self.cache_write_per_mtok,
        }


@dataclass(frozen=True)
class Price:
    cost_usd: Decimal
    status: str  # priced | unpriced | estimated
    note: Optional[str] = None

    @property
    def priced(self) -> bool:
        return self.status != UNPRICED


class _GenaiModel:
    """A model found in genai-prices, priced as its own ``calc_price`` prices it.

    ``calc_price`` costs 100 to 500 µs a call (it resolves the model's price units through a registry, checks
    them and builds a calculation each time), more than the rest of ingesting the call. A model whose price is
    a rate per token kind, flat or by tier of the input's size (no prices that change over time, no fee per
    request, nothing but tokens that a call's usage counts) costs exactly ``Rates.cost`` of the rates its
    input reaches: ``rates`` holds them, and every call is priced from them. That they agree is checked when
    the model is first priced (against ``calc_price`` on probe usages, each tier's edges among them) and, for
    every model in the table, by ``tests/test_local_pricing.py``. Any other model goes through ``calc_price``
    each time.
    """

    def __init__(self, provider: Any, model: Any, snapshot: Any) -> None:
        self.provider = provider
        self.model = model
        self.snapshot = snapshot
        self.rates = _flat_rates(provider, model)

    def cost(self, usage: TokenUsage) -> Decimal:
        if self.rates is not None:
            return self.rates.cost(usage)
        return self.calc_price(usage)

    def calc_price(self, usage: TokenUsage) -> Decimal:
        return _calc_price(self.provider, self.model, usage)

    def describe(self) -> str:
        return f"{self.provider.id}/{self.model.id} in genai-prices: {self.model.get_prices(_now())}"


# genai-prices' price units that a call's usage as the ledger gives it (tokens in, out, cache reads and writes)
# never counts: a price for one of them adds nothing (web searches, audio, images: the ledger is not told of
# them). A fee per request (requests_kcount) is not among them: each call pays it.
_UNCOUNTED_UNITS = frozenset(
    {
        "audio_hours",
        "cache_audio_read_mtok",
        "cache_image_read_mtok",
        "cache_write_1h_mtok",
        "input_audio_hours",
        "input_audio_mtok",
        "input_image_mtok",
        "input_video_mtok",
        "output_audio_mtok",
        "output_citation_mtok",
        "output_image_mtok",
        "output_reasoning_mtok",
        "output_video_mtok",
        "storage_searches_kcount",
        "web_searches_kcount",
    }
)
_TOKEN_UNITS = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok")
_PROBES = (TokenUsage(1_234_567, 89_012, 345_678, 12_345), TokenUsage(1, 1), TokenUsage(999_999, 0, 0, 999_999))


class _TieredRates:
    """Flat rates that change with the size of the input: crossing a tier's start applies that tier's rate to
    every token of the call (genai-prices' TieredPrices, Anthropic's and Google's long-context prices)."""

    def __init__(self, bands: list[tuple[int, Rates]]) -> None:
        self.bands = bands  # (start, rates), ascending; the first start is -1: the base rates

    def cost(self, usage: TokenUsage) -> Decimal:
        rates = self.bands[0][1]
        for start, band in self.bands[1:]:
            if usage.tokens_in <= start:
                break
            rates = band
        return rates.cost(usage)


def _flat_rates(provider: Any, model: Any) -> Union[Rates, _TieredRates, None]:
    """The model's rates per token kind, when ``calc_price`` is exactly ``Rates.cost`` of them (of the tier that
    the call's input reaches); else None."""
    try:
        from genai_prices.types import ModelPrice, TieredPrices

        price = model.prices
        if not isinstance(price, ModelPrice):
            return None  # prices by date or time of day (variants apply only with a price context: never here)
        units = {name: value for name, value in vars(price).items() if value is not None}
        if set(units) - set(_TOKEN_UNITS) - _UNCOUNTED_UNITS:
            return None
        found = [units.get(name) for name in _TOKEN_UNITS]
        if found[0] is None or found[1] is None:
            return None
        if any(rate is not None and not isinstance(rate, (Decimal, TieredPrices)) for rate in found):
            return None
        starts = sorted({tier.start for rate in found if isinstance(rate, TieredPrices) for tier in rate.tiers})

        def at(rate: Any, tokens_in: int) -> Optional[Decimal]:
            if not isinstance(rate, TieredPrices):
                return rate  # type: ignore[no-any-return]
            applies: Decimal = rate.base
            for tier in rate.tiers:  # ascending
                if tokens_in > tier.start:
                    applies = tier.price
            return applies

        bands = []
        for start in [-1, *starts]:
            rates = [at(rate, start + 1) for rate in found]
            bands.append((start, Rates(rates[0], rates[1], rates[2], rates[3])))  # type: ignore[arg-type]
        pricer: Union[Rates, _TieredRates] = bands[0][1] if len(bands) == 1 else _TieredRates(bands)
        probes = list(_PROBES)
        for start in starts:
            probes += [TokenUsage(start, 7, start // 3, start // 5), TokenUsage(start + 1, 7, start // 3, start // 5)]
        if any(pricer.cost(usage) != _calc_price(provider, model, usage) for usage in probes):
            return None
        return pricer
    except Exception as exc:  # a table or an API that changed: each call goes to calc_price, as before
        logger.debug("genai-prices: no flat rates for %r: %r", getattr(model, "id", model), exc)
        return None


def _calc_price(provider: Any, model: Any, usage: TokenUsage) -> Decimal:
    """genai-prices' own price of a call (100 to 500 µs: see _GenaiModel)."""
    from genai_prices import Usage

    calculation = model.calc_price(
        Usage(
            input_tokens=usage.tokens_in,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            output_tokens=usage.tokens_out,
        ),
        provider,
    )
    total: Decimal = calculation.total_price
    return total


_Pricer = Union[Rates, _GenaiModel]


def normalise_name(name: str) -> str:
    """A price key or provider as the ledger compares them: trimmed, lower case."""
    return name.strip().lower()


def model_candidates(model: str) -> Iterator[str]:
    """The names to try for a model, most specific first: as written, without a provider prefix, without a date."""
    seen: set[str] = set()
    name = normalise_name(model)
    for candidate in (name, name.rsplit("/", 1)[-1]):
        for form in (candidate, _SNAPSHOT_SUFFIX.sub("", candidate)):
            if form and form not in seen:
                seen.add(form)
                yield form


def _provider_candidates(provider: str, model: str) -> Iterator[Optional[str]]:
    name = normalise_name(provider)
    yield _PROVIDER_ALIASES.get(name, name)
    prefix = normalise_name(model).split("/", 1)[0] if "/" in model else ""
    if prefix and prefix != name:
        yield _PROVIDER_ALIASES.get(prefix, prefix)
    yield None  # genai-prices picks the provider from the model name


def unpriced_message(provider: str, model: str) -> str:
    name = f"{normalise_name(provider)}/{normalise_name(model)}" if provider.strip() else normalise_name(model)
    return (
        f"No price for model {model!r} (provider {provider!r}): genai-prices does not know it and no price was "
        f"added. Add one with `agent-ledger prices set {name} --input USD_PER_MTOK --output USD_PER_MTOK` or "
        f'PUT /v1/prices/{name} {{"inputPerMtok": ..., "outputPerMtok": ...}} (or in the --prices file), or allow '
        "unpriced models in this workspace with `agent-ledger settings set allow-unpriced-models true` or "
        'PUT /v1/settings {"allowUnpricedModels": true}.'
    )


class _Unseen:
    """Not looked up yet (None means: looked up, and nothing prices the model)."""


_UNSEEN = _Unseen()


class PriceBook:
    """Prices LLM calls; caches each model's lookup (never a price)."""

    def __init__(self, overrides_path: Optional[Union[str, Path]] = None) -> None:
        path = overrides_path if overrides_path is not None else os.environ.get(PRICES_ENV)
        self.overrides_path = Path(path) if path else None
        self._overrides = load_overrides(self.overrides_path) if self.overrides_path else {}
        self._cache: dict[tuple[str, str], Optional[_Pricer]] = {}
        self._lock = threading.Lock()

    def batch(self, custom: Mapping[str, Rates] | None = None) -> BatchPrices:
        """A pricer for the calls of one batch (one moment, one workspace's ``custom`` prices)."""
        return BatchPrices(self, custom)

    def price(
        self,
        provider: str,
        model: str,
        usage: TokenUsage,
        custom: Mapping[str, Rates] | None = None,
        *,
        pricer: Optional[_Pricer] | _Unseen = _UNSEEN,
    ) -> Price:
        """The exact cost of one call; ``custom`` holds the workspace's own prices by key (``pricer``: the
        model's price source, when the caller already looked it up)."""
        if isinstance(pricer, _Unseen):
            pricer = self.lookup(provider, model, custom)
        if pricer is None:
            return Price(money.ZERO, UNPRICED, unpriced_message(provider, model))
        try:
            return Price(pricer.cost(usage), PRICED)
        except Exception as exc:  # a table bug must not fail ingestion: flag the call instead
            logger.warning("genai-prices failed to price %s/%s: %r", provider, model, exc)
            return Price(money.ZERO, UNPRICED, f"genai-prices failed to price {provider}/{model}: {exc}")

    def estimate(
        self,
        provider: str,
        model: str,
        tokens_in: int,
        tokens_out: int,
        custom: Mapping[str, Rates] | None = None,
        *,
        pricer: Optional[_Pricer] | _Unseen = _UNSEEN,
    ) -> Price:
        """A call whose usage is missing: priced as ESTIMATE_TOKENS_IN in and ESTIMATE_TOKENS_OUT out (or more)."""
        usage = TokenUsage(max(tokens_in, ESTIMATE_TOKENS_IN), max(tokens_out, ESTIMATE_TOKENS_OUT))
        price = self.price(provider, model, usage, custom, pricer=pricer)
        if not price.priced:
            return price
        note = (
            f"usage missing: estimated as {usage.tokens_in} tokens in and {usage.tokens_out} out "
            f"(the ledger's default estimate)"
        )
        return Price(price.cost_usd, ESTIMATED, note)

    def describe(self, provider: str, model: str, custom: Mapping[str, Rates] | None = None) -> tuple[bool, str]:
        """Whether a model is priced, and by what: for people (``agent-ledger prices check``)."""
        if custom:
            found = _find_rates(custom, provider, model)
            if found is not None:
                return True, f"{provider}/{model} is priced by this workspace's own price: {found.describe()}."
        pricer = self.lookup(provider, model)
        if pricer is None:
            return False, unpriced_message(provider, model)
        if isinstance(pricer, Rates):
            return (
                True,
                f"{provider}/{model} is priced by the overrides file {self.overrides_path}: {pricer.describe()}.",
            )
        return True, f"{provider}/{model} is priced as {pricer.describe()}."

    def lookup(self, provider: str, model: str, custom: Mapping[str, Rates] | None = None) -> Optional[_Pricer]:
        """The price source of a model, or None when nothing prices it."""
        if custom:
            found = _find_rates(custom, provider, model)
            if found is not None:
                return found
        key = (normalise_name(provider), normalise_name(model))
        pricer = self._cache.get(key)
        if pricer is not None and (not isinstance(pricer, _GenaiModel) or pricer.snapshot is _snapshot()):
            return pricer
        if pricer is None and key in self._cache:
            return None
        pricer = _find_rates(self._overrides, provider, model) or _genai_model(provider, model)
        with self._lock:
            self._cache[key] = pricer
        return pricer


class BatchPrices:
    """Prices the LLM calls of one batch: each model is looked up once, and calls of the same model and the
    same usage are priced once (a price depends on nothing else within a batch). Made by
    :meth:`PriceBook.batch`; not shared between threads."""

    def __init__(self, book: PriceBook, custom: Mapping[str, Rates] | None) -> None:
        self.book = book
        self.custom = custom
        self._pricers: dict[tuple[str, str], Optional[_Pricer]] = {}
        self._prices: dict[tuple[Any, ...], Price] = {}

    def _pricer(self, provider: str, model: str) -> Optional[_Pricer]:
        key = (provider, model)
        found = self._pricers.get(key, _UNSEEN)
        if isinstance(found, _Unseen):
            found = self._pricers[key] = self.book.lookup(provider, model, self.custom)
        return found

    def flat_rates(self, provider: str, model: str) -> Optional[Rates]:
        """The model's flat rates when it has the workspace's or the overrides' own price (a call is then
        ``Rates.cost_of`` its counts, which cannot fail: what :meth:`price` gives it, with less around it),
        else None."""
        pricer = self._pricer(provider, model)
        return pricer if type(pricer) is Rates else None

    def price(
        self, provider: str, model: str, tokens_in: int, tokens_out: int, cache_read: int = 0, cache_write: int = 0
    ) -> Price:
        key = (provider, model, tokens_in, tokens_out, cache_read, cache_write)
        found = self._prices.get(key)
        if found is None:
            pricer = self._pricer(provider, model)
            if type(pricer) is Rates:  # the workspace's or the overrides' own price: nothing can fail
                found = Price(pricer.cost_of(tokens_in, tokens_out, cache_read, cache_write), PRICED)
            else:
                usage = TokenUsage(tokens_in, tokens_out, cache_read, cache_write)
                found = self.book.price(provider, model, usage, self.custom, pricer=pricer)
            self._prices[key] = found
        return found

    def estimate(self, provider: str, model: str, tokens_in: int, tokens_out: int) -> Price:
        key = (provider, model, tokens_in, tokens_out, None)
        found = self._prices.get(key)
        if found is None:
            pricer = self._pricer(provider, model)
            found = self._prices[key] = self.book.estimate(
                provider, model, tokens_in, tokens_out, self.custom, pricer=pricer
            )
        return found


def _find_rates(table: Mapping[str, Rates], provider: str, model: str) -> Optional[Rates]:
    provider_name = normalise_name(provider)
    for candidate in model_candidates(model):
        for key in (f"{provider_name}/{candidate}", candidate):
            if key in table:
                return table[key]
    return None


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _snapshot() -> Any:
    try:
        from genai_prices import data_snapshot
    except ImportError:  # pragma: no cover - the server extra installs it
        return None
    return data_snapshot.get_snapshot()


def _genai_model(provider: str, model: str) -> Optional[_GenaiModel]:
    snapshot = _snapshot()
    if snapshot is None:  # pragma: no cover - the server extra installs it
        logger.warning("genai-prices is not installed; every model is unpriced. pip install 'agent-ledger-sdk[server]'")
        return None
    for candidate in model_candidates(model):
        for provider_id in _provider_candidates(provider, model):
            try:
                found_provider, found_model = snapshot.find_provider_model(candidate, None, provider_id, None)
            except LookupError:
                continue
            except Exception as exc:  # a table bug must not fail ingestion
                logger.warning("genai-prices failed to look up %s/%s: %r", provider, model, exc)
                return None
            return _GenaiModel(found_provider, found_model, snapshot)
    return None


# -- prices given by people ------------------------------------------------------------------


def rates_from(
    entry: Mapping[str, Any], names: tuple[str, str, str, str], where: str, *, text_ok: bool = False
) -> Rates:
    """Rates from a mapping of non-negative numbers; ``names`` are its keys for input, output, cache read, write.

    ``text_ok`` also takes numbers written as text (from a command line).
    """
    values: list[Optional[Decimal]] = []
    for position, name in enumerate(names):
        value = entry.get(name)
        if value is None and position >= 2:
            values.append(None)
            continue
        kinds = (int, float, str, Decimal) if text_ok else (int, float, Decimal)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ValueError(f"{where}: {name} must be a non-negative number of USD per million tokens")
        try:
            amount = money.exact(value)
        except (InvalidOperation, ValueError):
            raise ValueError(f"{where}: {name} must be a non-negative number of USD per million tokens") from None
        if not amount.is_finite() or amount < 0:
            raise ValueError(f"{where}: {name} must be a non-negative number of USD per million tokens")
        values.append(amount)
    input_rate, output_rate = values[0], values[1]
    assert input_rate is not None
    assert output_rate is not None
    return Rates(input_rate, output_rate, values[2], values[3])


def load_overrides(path: Path) -> dict[str, Rates]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
    except FileNotFoundError:
        raise ValueError(f"price overrides file {path} does not exist") from None
    except ValueError as exc:
        raise ValueError(f"price overrides file {path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"price overrides file {path} must hold a JSON object of model -> prices")
    result: dict[str, Rates] = {}
    for name, entry in raw.items():
        where = f"price overrides file {path}: {name!r}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} needs numbers input_per_mtok and output_per_mtok")
        missing = [field for field in _OVERRIDE_FIELDS[:2] if field not in entry]
        if missing:
            raise ValueError(f"{where} needs numbers input_per_mtok and output_per_mtok")
        result[normalise_name(name)] = rates_from(entry, _OVERRIDE_FIELDS, where)
    return result
