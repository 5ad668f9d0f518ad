"""Pricing: pure functions from prices and usage to integer money. No I/O.
The unit is the nano-dollar (1 USD = 10^9 units); a request's cost is rounded once, up, to a whole unit."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from billing.metering import Usage

UNITS_PER_USD = 1_000_000_000  # nano-dollars
TOKENS_PER_PRICE = 1_000_000  # prices are quoted per 1M tokens


class PriceError(ValueError):
    """A configured price that cannot be represented exactly in the money unit."""


def usd_to_units(usd: Decimal) -> int:
    """An exact USD amount as nano-dollars; refuses anything finer than the unit."""
    units = usd * UNITS_PER_USD
    if units != units.to_integral_value():
        raise PriceError(f"{usd} USD is finer than the money unit (1e-9 USD)")
    return int(units)


def units_to_usd(units: int) -> str:
    """For display: a fixed-point USD string with all nine decimals, exact."""
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), UNITS_PER_USD)
    return f"{sign}{whole}.{frac:09d}"


def usd_text(units: int) -> str:
    """For people: exact, at least two decimals, no trailing zeros past them (5.00, 0.0000351)."""
    whole, _, frac = units_to_usd(units).partition(".")
    return f"{whole}.{frac.rstrip('0').ljust(2, '0')}"


@dataclass(frozen=True, slots=True)
class TokenPrices:
    """Nano-dollars per 1M tokens, one integer per kind."""

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def token_cost(prices: TokenPrices, usage: Usage) -> int:
    """The cost of one request. Cached input is priced at cache_read, cache writes at cache_write,
    the rest of the input at input; all output (reasoning included) at output. Rounded up once."""
    cached = min(usage.cache_read + usage.cache_write, usage.in_total)
    cache_read = min(usage.cache_read, cached)
    cache_write = cached - cache_read
    fresh_input = usage.in_total - cached
    scaled = (fresh_input * prices.input + cache_read * prices.cache_read
              + cache_write * prices.cache_write + usage.out_total * prices.output)
    return ceil_div(scaled, TOKENS_PER_PRICE)


def full_price_cost(prices: TokenPrices, usage: Usage) -> int:
    """What the same usage would cost with no cache discount (for the savings shown to users)."""
    return ceil_div(usage.in_total * prices.input + usage.out_total * prices.output, TOKENS_PER_PRICE)


def held_input_price(prices: TokenPrices) -> int:
    """The price a hold reserves each input token at: the dearest of input, cache read and cache write, so
    that however the upstream splits the prompt between them, the prompt's tokens cost no more than held."""
    return max(prices.input, prices.cache_read, prices.cache_write)


def hold_amount(prices: TokenPrices, prompt_tokens: int, max_output: int) -> int:
    """What to hold before a request: the prompt's tokens at the held input price plus the most output the
    request may produce at the output price. A usage within both token counts never costs more than this."""
    return ceil_div(prompt_tokens * held_input_price(prices) + max_output * prices.output, TOKENS_PER_PRICE)


def overrun_tokens(usage: Usage, held_input: int, held_output: int) -> int:
    """The tokens a usage went past what its hold was sized for: input past the held prompt tokens plus
    output past the held maximum. Only a usage past one of them can cost more than its hold."""
    return max(usage.in_total - held_input, 0) + max(usage.out_total - held_output, 0)
