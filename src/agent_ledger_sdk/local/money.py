"""Money in the local ledger: exact US dollars.

Every amount is a :class:`~decimal.Decimal`, computed with a context precise
enough that sums never round, stored in SQLite as its plain text (``"0.00008"``,
never a REAL), and sent as a JSON number with exactly those digits. A float
never holds an amount: ``0.1 + 0.2`` is ``0.30000000000000004`` and a ledger
must not say so.
"""

from __future__ import annotations

import decimal
import json
import secrets
from decimal import Decimal
from typing import Any, Optional, Union

__all__ = [
    "ZERO",
    "add",
    "dumps",
    "dumps_bytes",
    "exact",
    "multiply",
    "parse",
    "per_million",
    "percent_of",
    "subtract",
    "text",
]

Number = Union[int, float, str, Decimal]

ZERO = Decimal(0)
_MILLION = Decimal(1_000_000)
# Sixty significant digits: a billion dollars to the 1e-50 of a dollar. Sums of prices never reach it.
_CONTEXT = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN, traps=[decimal.InvalidOperation])
CONTEXT = _CONTEXT  # for hot loops that call its methods directly


def exact(value: Number) -> Decimal:
    """``value`` as a Decimal; a float becomes the shortest decimal that reads back as it (``0.1``, not 0.1000…0555)."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(value)


def add(*amounts: Decimal) -> Decimal:
    total = ZERO
    for amount in amounts:
        total = _CONTEXT.add(total, amount)
    return total


def subtract(left: Decimal, right: Decimal) -> Decimal:
    return _CONTEXT.subtract(left, right)


def multiply(left: Decimal, right: Decimal) -> Decimal:
    return _CONTEXT.multiply(left, right)


def per_million(amount: Decimal) -> Decimal:
    """``amount`` divided by a million (exact: only the decimal point moves)."""
    return _CONTEXT.divide(amount, _MILLION)


def percent_of(amount: Decimal, percent: Decimal) -> Decimal:
    """``percent`` % of ``amount`` (exact: dividing by 100 only moves the decimal point)."""
    return _CONTEXT.divide(_CONTEXT.multiply(amount, percent), Decimal(100))


def text(amount: Decimal) -> str:
    """The canonical text of an amount: plain digits, no exponent, no trailing zeros (``"0.00008"``, ``"5"``).

    Exact whatever the amount's precision: the digits are never rounded to the context's.
    """
    if not amount:
        return "0"
    plain = str(amount)  # already canonical, most often (a price's cost): half the time of formatting
    if "E" in plain:
        plain = format(amount, "f")  # "f" without a precision writes the amount's own digits, unrounded
    if "." in plain and plain[-1] == "0":
        plain = plain.rstrip("0").rstrip(".")
    return plain


def parse(stored: Optional[str]) -> Decimal:
    """An amount stored as text (NULL reads as 0)."""
    return ZERO if stored is None else Decimal(stored)


# -- JSON with exact numbers ---------------------------------------------------------------

# json cannot write a Decimal as a number: each becomes a string holding the amount's digits between two
# markers, and the markers and quotes are then taken away (two str.replace: a third of the time of one
# regular expression over the text). json always escapes U+0000, and the random part makes a collision
# with a user's string impossible in practice.
_OPEN = f"\x00{secrets.token_hex(8)}<"
_CLOSE = f">{secrets.token_hex(8)}\x00"
_OPEN_QUOTED = json.dumps(_OPEN)[:-1]  # '"\u0000…<'
_CLOSE_QUOTED = json.dumps(_CLOSE)[1:]  # '>…\u0000"'


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return _OPEN + text(value) + _CLOSE
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_default).encode


def dumps(value: Any) -> str:
    """Compact JSON in which every Decimal is a number with exactly its digits."""
    encoded = _ENCODE(value)
    if _OPEN_QUOTED in encoded:
        return encoded.replace(_OPEN_QUOTED, "").replace(_CLOSE_QUOTED, "")
    return encoded


def dumps_bytes(value: Any) -> bytes:
    return dumps(value).encode("utf-8")
