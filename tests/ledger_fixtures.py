"""The local ledger's HTTP tests share this ``ledger`` fixture (with test prices); ``http`` is in conftest."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Callable

import pytest

from agent_ledger_sdk.local import LocalLedger, run

# $1 per million tokens in and out: a call of N tokens costs N micro-dollars.
FLAT_PRICES = {"test/flat": {"input_per_mtok": 1.0, "output_per_mtok": 1.0}}


def priced_ledger(prices: dict[str, Any]) -> Callable[..., Iterator[LocalLedger]]:
    """A module-scoped ``ledger`` fixture: a local ledger whose price overrides are ``prices``."""

    @pytest.fixture(scope="module")
    def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLedger]:
        path = tmp_path_factory.mktemp("prices") / "prices.json"
        path.write_text(json.dumps(prices))
        with run(prices=path) as running:
            yield running

    return ledger
