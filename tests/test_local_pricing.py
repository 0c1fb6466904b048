"""Pricing in the local ledger over real HTTP: genai-prices to the last digit, names as people write them, exact money."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("starlette", reason="the local ledger needs the server extra")

from genai_prices import Usage, calc_price

from agent_ledger_sdk.local import LocalLedger
from agent_ledger_sdk.local.pricing import Rates, TokenUsage

from .ledger_fixtures import priced_ledger

pytestmark = pytest.mark.integration

PRICES = {
    "test/flat": {"input_per_mtok": 1.0, "output_per_mtok": 1.0},
    "test/cached": {"input_per_mtok": 2, "output_per_mtok": 8, "cache_read_per_mtok": 0.5, "cache_write_per_mtok": 2.5},
    "Test/Read-Only-Cache": {"input_per_mtok": 3, "output_per_mtok": 6, "cache_read_per_mtok": 0.3},
}


ledger = priced_ledger(PRICES)


def exact_json(response: httpx.Response) -> Any:
    """The body with every JSON number that has a fraction read as the Decimal it spells."""
    assert response.status_code < 300, response.text
    return json.loads(response.text, parse_float=Decimal)


def call(
    provider: str, model: str, tokens_in: int, tokens_out: int, cache_read: int = 0, cache_write: int = 0, **extra: Any
) -> dict[str, Any]:
    event = {"type": "llm_call", "provider": provider, "model": model, "tokensIn": tokens_in, "tokensOut": tokens_out}
    if cache_read:
        event["cacheReadTokens"] = cache_read
    if cache_write:
        event["cacheWriteTokens"] = cache_write
    return {**event, **extra}


def record(http: httpx.Client, agent: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    """Send ``events`` in one session; return the session as GET /v1/sessions/{id} answers it, amounts exact."""
    session_id = http.post("/v1/sessions", json={"agentName": agent}).json()["id"]
    for start in range(0, len(events), 1000):
        sent = http.post("/v1/events", json={"sessionId": session_id, "events": events[start : start + 1000]})
        assert sent.status_code == 202, sent.text
    session: dict[str, Any] = exact_json(http.get(f"/v1/sessions/{session_id}"))
    return session


def genai(provider: str, model: str, tokens_in: int, tokens_out: int, cache_read: int, cache_write: int) -> Decimal:
    usage = Usage(
        input_tokens=tokens_in,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        output_tokens=tokens_out,
    )
    total: Decimal = calc_price(usage, model_ref=model, provider_id=provider).total_price
    return total


# (provider, model, tokensIn, tokensOut, cacheReadTokens, cacheWriteTokens)
USAGES = [
    ("openai", "gpt-4o-mini", 1000, 100, 0, 0),
    ("openai", "gpt-4o-mini", 1000, 100, 400, 0),
    ("openai", "gpt-4o-mini", 1000, 100, 400, 300),  # no cache-write price: those tokens cost the input price
    ("openai", "gpt-4o", 12_345, 678, 1024, 0),
    ("anthropic", "claude-sonnet-4-5", 10_000, 500, 6000, 2000),
    ("anthropic", "claude-sonnet-4-5", 199_999, 100, 0, 0),  # the base tier
    ("anthropic", "claude-sonnet-4-5", 250_000, 1000, 100_000, 50_000),  # over 200k: the long-context tier
    ("google", "gemini-2.5-pro", 150_000, 2000, 10_000, 0),
    ("google", "gemini-2.5-pro", 300_000, 2000, 120_000, 0),  # over 200k
    ("openai", "gpt-4o-mini", 1, 0, 1, 0),  # one cached token: a fraction of a nano-dollar
    ("openai", "gpt-4o-mini", 0, 0, 0, 0),
]


@pytest.mark.parametrize(
    ("provider", "model", "tokens_in", "tokens_out", "cache_read", "cache_write"),
    USAGES,
    ids=[f"{u[1]}-{u[2]}in-{u[4]}cr-{u[5]}cw" for u in USAGES],
)
def test_a_call_costs_exactly_what_genai_prices_says(
    http: httpx.Client,
    provider: str,
    model: str,
    tokens_in: int,
    tokens_out: int,
    cache_read: int,
    cache_write: int,
) -> None:
    session = record(http, "table", [call(provider, model, tokens_in, tokens_out, cache_read, cache_write)])
    (event,) = session["events"]
    assert event["costStatus"] == "priced"
    assert Decimal(event["costUsd"]) == genai(provider, model, tokens_in, tokens_out, cache_read, cache_write)


def test_the_long_context_tier_applies_only_to_calls_past_it(http: httpx.Client) -> None:
    below = record(http, "tiers", [call("anthropic", "claude-sonnet-4-5", 200_000, 0)])["events"][0]["costUsd"]
    above = record(http, "tiers", [call("anthropic", "claude-sonnet-4-5", 200_001, 0)])["events"][0]["costUsd"]
    assert Decimal(below) == Decimal("0.6")  # $3 per million
    assert Decimal(above) == Decimal("1.200006")  # $6 per million, for every token of the call


def test_random_usages_cost_exactly_what_genai_prices_says(http: httpx.Client) -> None:
    draw = random.Random(20261125)
    models = [
        ("openai", "gpt-4o-mini"),
        ("openai", "gpt-4o"),
        ("anthropic", "claude-sonnet-4-5"),
        ("anthropic", "claude-3-5-haiku"),
        ("google", "gemini-2.5-pro"),
        ("google", "gemini-2.5-flash"),
    ]
    usages = []
    for _ in range(300):
        provider, model = draw.choice(models)
        tokens_in = draw.choice([draw.randint(0, 2000), draw.randint(0, 400_000)])
        cache_read = draw.randint(0, tokens_in) if draw.random() < 0.6 else 0
        cache_write = draw.randint(0, tokens_in - cache_read) if draw.random() < 0.4 else 0
        usages.append((provider, model, tokens_in, draw.randint(0, 20_000), cache_read, cache_write))
    session = record(http, "random", [call(*usage) for usage in usages])
    got = [Decimal(e["costUsd"]) for e in session["events"]]
    assert got == [genai(*usage) for usage in usages]
    assert Decimal(session["costUsd"]) == sum(got, Decimal(0))


def test_override_prices_price_cache_reads_and_writes(http: httpx.Client) -> None:
    session = record(
        http,
        "overrides",
        [
            call("test", "cached", 1_000_000, 1_000_000, 600_000, 300_000),
            call("test", "read-only-cache", 1_000_000, 0, 600_000, 300_000),  # keys ignore case
        ],
    )
    cached, read_only = (Decimal(e["costUsd"]) for e in session["events"])
    assert cached == Decimal("0.1") * 2 + Decimal("0.6") * Decimal("0.5") + Decimal("0.3") * Decimal("2.5") + 8
    assert read_only == Decimal("0.4") * 3 + Decimal("0.6") * Decimal("0.3")  # no write price: writes cost input


@pytest.mark.parametrize(
    ("provider", "written", "canonical"),
    [
        ("openai", "openai/gpt-4o-mini", "gpt-4o-mini"),
        ("openai", "gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("openai", "gpt-4o-mini-20240718", "gpt-4o-mini"),
        ("OpenAI", "  GPT-4o-Mini \n", "gpt-4o-mini"),
        ("litellm", "openai/gpt-4o-mini", "gpt-4o-mini"),
        ("google", "models/gemini-2.5-pro", "gemini-2.5-pro"),
        ("gemini", "gemini-2.5-pro", "gemini-2.5-pro"),
        ("anthropic", "claude-3-5-sonnet@20240620", "claude-3-5-sonnet"),
        ("anthropic", "claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("anthropic", "anthropic/claude-sonnet-4-5", "claude-sonnet-4-5"),
        ("my-proxy", "openai/gpt-4o", "gpt-4o"),  # an unknown provider: the model's own prefix
        ("test", " TEST/Flat ", "flat"),  # override keys are found the same way
    ],
)
def test_model_names_are_found_the_way_people_write_them(
    http: httpx.Client, provider: str, written: str, canonical: str
) -> None:
    session = record(http, "names", [call(provider, written, 30_000, 2000, 10_000, 0)])
    (event,) = session["events"]
    assert event["costStatus"] == "priced", event["pricingNote"]
    assert event["model"] == written  # stored as sent
    if canonical == "flat":
        assert Decimal(event["costUsd"]) == Decimal("0.032")
    else:
        real_provider = {"gemini": "google", "litellm": "openai", "my-proxy": "openai"}.get(provider, provider.lower())
        assert Decimal(event["costUsd"]) == genai(real_provider, canonical, 30_000, 2000, 10_000, 0)


def test_a_thousand_small_costs_add_up_exactly(http: httpx.Client) -> None:
    session_id = http.post("/v1/sessions", json={"agentName": "pennies"}).json()["id"]
    events = [call("test", "flat", 80, 0) for _ in range(1000)]  # $0.00008 each: 0.1 + 0.2 territory for floats
    response = http.post("/v1/events", json={"sessionId": session_id, "events": events})
    assert '"costUsd":0.08' in response.text
    text = http.get(f"/v1/sessions/{session_id}").text
    assert '"costUsd":0.00008,' in text
    assert "e-05" not in text and "99999" not in text
    session = exact_json(http.get(f"/v1/sessions/{session_id}"))
    assert session["costUsd"] == Decimal("0.08")
    assert all(event["costUsd"] == Decimal("0.00008") for event in session["events"])
    budgets = exact_json(http.get("/v1/budgets"))["budgets"]
    (pennies,) = [b for b in budgets if b["agentName"] == "pennies"]
    assert pennies["spentTodayUsd"] == Decimal("0.08")


def test_fractions_of_a_nano_dollar_are_kept(http: httpx.Client) -> None:
    events = [call("openai", "gpt-4o-mini", 1, 0, 1, 0) for _ in range(7)]  # $0.075 per million cached tokens
    session = record(http, "tiny", events)
    assert [Decimal(e["costUsd"]) for e in session["events"]] == [Decimal("0.000000075")] * 7
    assert Decimal(session["costUsd"]) == Decimal("0.000000525")


def test_cached_tokens_are_part_of_tokens_in(http: httpx.Client) -> None:
    session_id = http.post("/v1/sessions", json={"agentName": "cache-check"}).json()["id"]
    response = http.post(
        "/v1/events", json={"sessionId": session_id, "events": [call("openai", "gpt-4o-mini", 100, 5, 80, 40)]}
    )
    assert response.status_code == 400
    (rejected,) = response.json()["rejected"]
    assert rejected["field"] == "cacheReadTokens"
    assert "exceed tokensIn (100)" in rejected["error"]
    assert "counts every input token, the cached ones included" in rejected["error"]


# -- prices added at run time -------------------------------------------------------------------


def test_a_price_added_through_the_api_prices_the_workspaces_calls(http: httpx.Client, ledger: LocalLedger) -> None:
    unpriced = record(http, "private", [call("acme", "private-7b", 1000, 1000, 500, 0)])["events"][0]
    assert unpriced["costStatus"] == "unpriced"
    added = http.put(
        "/v1/prices/acme/private-7b", json={"inputPerMtok": 2, "outputPerMtok": 6, "cacheReadPerMtok": 0.2}
    )
    assert added.status_code == 200, added.text
    assert added.json() == {
        "model": "acme/private-7b",
        "inputPerMtok": 2,
        "outputPerMtok": 6,
        "cacheReadPerMtok": 0.2,
        "cacheWritePerMtok": None,
    }
    priced = record(http, "private", [call("ACME", "Private-7B", 1000, 1000, 500, 0)])["events"][0]
    assert priced["costStatus"] == "priced"
    assert Decimal(priced["costUsd"]) == Decimal("0.001") + Decimal("0.006") + Decimal("0.0001")
    assert "acme/private-7b" in [p["model"] for p in http.get("/v1/prices").json()["prices"]]
    other = ledger.service.create_key("other", "pricing-elsewhere").secret
    elsewhere = httpx.get(f"{ledger.url}/v1/prices", headers={"x-api-key": other}).json()
    assert elsewhere == {"prices": []}  # prices belong to a workspace
    assert http.delete("/v1/prices/acme/private-7b").status_code == 204
    assert http.delete("/v1/prices/acme/private-7b").status_code == 404
    assert record(http, "private", [call("acme", "private-7b", 1, 1)])["events"][0]["costStatus"] == "unpriced"


def test_a_workspace_price_comes_before_genai_prices(http: httpx.Client) -> None:
    assert http.put("/v1/prices/my-gpt-4o-mini-deal", json={"inputPerMtok": 0, "outputPerMtok": 0}).status_code == 200
    assert http.put("/v1/prices/openai/gpt-4o-mini", json={"inputPerMtok": 1, "outputPerMtok": 1}).status_code == 200
    try:
        event = record(http, "deal", [call("openai", "gpt-4o-mini-2024-07-18", 1000, 1000)])["events"][0]
        assert Decimal(event["costUsd"]) == Decimal("0.002")
    finally:
        http.delete("/v1/prices/openai/gpt-4o-mini")
        http.delete("/v1/prices/my-gpt-4o-mini-deal")


@pytest.mark.parametrize(
    "body",
    [
        {"inputPerMtok": 1},
        {"inputPerMtok": -1, "outputPerMtok": 1},
        {"inputPerMtok": "1", "outputPerMtok": 1},
        {"inputPerMtok": 1, "outputPerMtok": 1, "cacheReadPerMtok": True},
        {"inputPerMtok": 1, "outputPerMtok": 1, "per": "token"},
    ],
)
def test_a_bad_price_is_a_400_that_says_what_to_send(http: httpx.Client, body: dict[str, Any]) -> None:
    response = http.put("/v1/prices/acme/bad", json=body)
    assert response.status_code == 400
    assert "inputPerMtok" in response.json()["error"]


# -- genai-prices' models priced from their rates -----------------------------------------------------------


def _snapshot_models() -> list[tuple[Any, Any]]:
    from genai_prices.data_snapshot import get_snapshot

    return [(provider, model) for provider in get_snapshot().providers for model in provider.models]


def _usages(seed: int, count: int) -> list[TokenUsage]:
    """Random usages, cached tokens within the input; half near the long-context tiers (200k and so)."""
    chance = random.Random(seed)
    found = []
    for _ in range(count):
        tokens_in = chance.choice([chance.randint(0, 10**7), chance.randint(100_000, 300_000), chance.randint(0, 50)])
        cache_read = chance.randint(0, tokens_in)
        found.append(
            TokenUsage(tokens_in, chance.randint(0, 10**6), cache_read, chance.randint(0, tokens_in - cache_read))
        )
    return found


def test_every_model_priced_from_its_rates_costs_what_calc_price_says() -> None:
    """``calc_price`` costs 100 to 500 µs a call, so a model whose price is a rate per token kind (by tier of the
    input, or flat) is priced from those rates: for every model of the table, on random usages, exactly what
    genai-prices itself says. Most models of the table are priced so."""
    from agent_ledger_sdk.local.pricing import _GenaiModel

    models = _snapshot_models()
    fast = 0
    for number, (provider, model) in enumerate(models):
        priced = _GenaiModel(provider, model, None)
        if priced.rates is None:
            continue
        fast += 1
        for usage in _usages(number, 12):
            assert priced.cost(usage) == priced.calc_price(usage), (provider.id, model.id, usage)
    assert fast > len(models) / 2, f"only {fast} of {len(models)} models are priced from their rates"


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(
        ["gpt-4o", "gpt-4o-mini", "gpt-5", "claude-sonnet-4-5", "claude-opus-4-1", "gemini-2.5-pro", "gemini-2.5-flash"]
    ),
    tokens_in=st.integers(0, 2_000_000),
    tokens_out=st.integers(0, 200_000),
    read_share=st.floats(0, 1),
    write_share=st.floats(0, 1),
)
def test_popular_models_cost_what_calc_price_says(
    name: str, tokens_in: int, tokens_out: int, read_share: float, write_share: float
) -> None:
    from agent_ledger_sdk.local.pricing import PriceBook

    priced = PriceBook().lookup("", name)
    assert priced is not None and not isinstance(priced, Rates)
    assert priced.rates is not None, f"{name} goes to calc_price for each call"
    cache_read = int(tokens_in * read_share)
    usage = TokenUsage(tokens_in, tokens_out, cache_read, int((tokens_in - cache_read) * write_share))
    assert priced.cost(usage) == priced.calc_price(usage)


def test_a_fee_per_request_or_a_price_that_changes_over_time_goes_to_calc_price() -> None:
    from genai_prices.types import ModelPrice

    from agent_ledger_sdk.local.pricing import _GenaiModel

    for provider, model in _snapshot_models():
        price = model.prices
        if not isinstance(price, ModelPrice) or getattr(price, "requests_kcount", None) is not None:
            assert _GenaiModel(provider, model, None).rates is None, (provider.id, model.id)


def _rate() -> Any:
    return st.decimals(min_value=0, max_value=1000, places=6, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(
    rates=st.tuples(_rate(), _rate(), st.none() | _rate(), st.none() | _rate()),
    tokens_in=st.integers(0, 2_000_000),
    tokens_out=st.integers(0, 200_000),
    read_share=st.floats(0, 1),
    write_share=st.floats(0, 1),
    cache_fields=st.booleans(),
)
def test_a_batch_prices_a_call_at_the_workspaces_own_rates_as_the_price_book_does(
    rates: tuple[Decimal, Decimal, Any, Any],
    tokens_in: int,
    tokens_out: int,
    read_share: float,
    write_share: float,
    cache_fields: bool,
) -> None:
    """The service prices a call of a model with the workspace's own rates inline (``BatchPrices.flat_rates``,
    ``LedgerService._price_calls``):
    the same cost, to the last digit, status and note as ``BatchPrices.price`` gives, cached tokens included
    (with their own prices or at the input price), and absent cache fields read as none."""
    from agent_ledger_sdk.local.pricing import PriceBook
    from agent_ledger_sdk.local.records import PricedEvent
    from agent_ledger_sdk.local.service import LedgerService

    custom = {"acme/flat-1": Rates(*rates)}
    cache_read = int(tokens_in * read_share)
    cache_write = int((tokens_in - cache_read) * write_share)
    payload: dict[str, Any] = {"type": "llm_call", "provider": "acme", "model": "flat-1"}
    if cache_fields:
        payload.update(cacheReadTokens=cache_read, cacheWriteTokens=cache_write)
    else:
        cache_read = cache_write = 0
    event = PricedEvent(
        payload=payload,
        type="llm_call",
        step_index=0,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        provider="acme",
        model="flat-1",
    )
    batch = PriceBook().batch(custom)
    assert batch.flat_rates("acme", "flat-1") is custom["acme/flat-1"]
    LedgerService._price_calls([event], batch)
    expected = PriceBook().batch(custom).price("acme", "flat-1", tokens_in, tokens_out, cache_read, cache_write)
    assert (event.cost_usd, event.cost_status, event.pricing_note) == (
        expected.cost_usd,
        expected.status,
        expected.note,
    )
    assert str(event.cost_usd) == str(expected.cost_usd)
