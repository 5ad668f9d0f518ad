"""Deposit amounts: token base units (6 decimals for USDT on most chains, 18 on BSC) turned into wallet credit in
nano-dollars, at the configured rate and fee. Pure; the rounding goes the house's way, as for request costs."""

from __future__ import annotations

import math
import re
from decimal import Decimal
from fractions import Fraction

UNITS_PER_USD = 10**9  # the wallet's nano-dollar (billing/pricing.py)


def credit_for(raw: int, decimals: int, usd_per_token: Decimal = Decimal(1), fee: Decimal = Decimal(0)) -> int:
    """Nano-dollars credited for `raw` base units of a token with `decimals` decimals: raw / 10^decimals tokens
    at `usd_per_token`, less the `fee` fraction (0.01 = 1%). Rounded down once, to a whole nano-dollar: a
    deposit never credits more than arrived (and a request never costs less than it used: costs round up)."""
    if raw < 0 or decimals < 0:
        raise ValueError("a deposit amount and its decimals are never negative")
    if not (Decimal(0) <= fee < Decimal(1)) or usd_per_token <= 0:
        raise ValueError("the fee is a fraction below 1 and the rate is positive")
    exact = Fraction(raw * UNITS_PER_USD, 10**decimals) * Fraction(usd_per_token) * (1 - Fraction(fee))
    return math.floor(exact)  # exact rational arithmetic: no precision runs out on an 18-decimal amount


def smallest_raw(credit: int, decimals: int, usd_per_token: Decimal = Decimal(1), fee: Decimal = Decimal(0)) -> int:
    """The fewest base units whose credit_for is at least `credit` nano-dollars (the fee and the rate included)."""
    per_unit = Fraction(UNITS_PER_USD, 10**decimals) * Fraction(usd_per_token) * (1 - Fraction(fee))
    return math.ceil(Fraction(credit) / per_unit)


def decimal_text(value: Decimal) -> str:
    """A configured rate or fee for people: exact, no exponent, no trailing zeros ("1", "0.5")."""
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def tokens(raw: int, decimals: int) -> str:
    """A token amount for people: the exact decimal, no trailing zeros past the point ("12.5", "0.000001")."""
    whole, frac = divmod(raw, 10**decimals)
    digits = f"{frac:0{decimals}d}".rstrip("0") if decimals else ""
    return f"{whole}.{digits}" if digits else str(whole)


AMOUNT_TEXT = re.compile(r"-?[0-9]{1,40}(\.[0-9]{1,40})?")  # plain decimals: "1e999999999" would take minutes


def raw_amount(text: str, decimals: int) -> int:
    """A decimal token amount ("25", "25.5") in base units, exactly; refuses more decimals than the token has,
    and any other notation (an exponent, other scripts' digits, underscores)."""
    if not AMOUNT_TEXT.fullmatch(text):
        raise ValueError(f"not an amount: {text[:40]!r} (write it as digits, such as 25 or 25.5)")
    value = Decimal(text)
    if value <= 0:
        raise ValueError("an amount must be a positive number")
    _, digits, exponent = value.as_tuple()  # exact, whatever the size: no context rounding
    coefficient = int("".join(map(str, digits)))
    shift = int(exponent) + decimals
    if shift >= 0:
        return coefficient * 10**shift
    whole, rest = divmod(coefficient, 10**-shift)
    if rest:
        raise ValueError(f"at most {decimals} decimals")
    return whole
