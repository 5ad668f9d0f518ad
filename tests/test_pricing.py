"""Pricing: exact integer money, one rounding rule (up, once per request), cache reads cheaper."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters import openai
from billing.metering import Usage
from billing.pricing import (PriceError, TokenPrices, full_price_cost, hold_amount, token_cost, units_to_usd,
                             usd_to_units)

GPT4O = TokenPrices(input=usd_to_units(Decimal("2.50")), output=usd_to_units(Decimal("10")),
                    cache_read=usd_to_units(Decimal("1.25")), cache_write=usd_to_units(Decimal("3.125")))


def test_units_are_exact_and_refuse_finer_amounts() -> None:
    assert usd_to_units(Decimal("0.000000001")) == 1
    assert usd_to_units(Decimal("2.5")) == 2_500_000_000
    with pytest.raises(PriceError):
        usd_to_units(Decimal("0.0000000001"))
    assert units_to_usd(1_234_567_890) == "1.234567890" and units_to_usd(-5) == "-0.000000005"


def test_real_openai_usage_with_cached_tokens() -> None:
    usage = openai.normalize_usage({"prompt_tokens": 2006, "completion_tokens": 300,
                                    "prompt_tokens_details": {"cached_tokens": 1920}})
    assert usage is not None
    # 86 fresh x 2.50 + 1920 cached x 1.25 + 300 out x 10, per 1M tokens, in nano-dollars
    assert token_cost(GPT4O, usage) == (86 * 2_500_000_000 + 1920 * 1_250_000_000 + 300 * 10_000_000_000) // 1_000_000
    assert full_price_cost(GPT4O, usage) > token_cost(GPT4O, usage)


def test_rounding_is_up_once_per_request() -> None:
    tiny = TokenPrices(input=1, output=1)  # 1 nano-dollar per 1M tokens
    assert token_cost(tiny, Usage(in_total=1)) == 1  # never rounds a nonzero cost to zero
    assert token_cost(tiny, Usage(in_total=1_000_000)) == 1
    assert token_cost(tiny, Usage(in_total=1_000_001)) == 2
    assert token_cost(tiny, Usage()) == 0


@given(st.integers(0, 10**7), st.integers(0, 10**7), st.integers(0, 10**7), st.integers(0, 10**7))
def test_cost_properties(fresh: int, cache_read: int, cache_write: int, out: int) -> None:
    usage = Usage(in_total=fresh + cache_read + cache_write, out_total=out, cache_read=cache_read,
                  cache_write=cache_write)
    cost = token_cost(GPT4O, usage)
    assert isinstance(cost, int) and cost >= 0
    assert cost <= token_cost(GPT4O, Usage(usage.in_total + usage.cache_write, out))  # never above list price + writes
    assert hold_amount(GPT4O, usage.in_total, out) >= token_cost(GPT4O, Usage(usage.in_total, out))
    exact = Decimal(fresh * GPT4O.input + cache_read * GPT4O.cache_read + cache_write * GPT4O.cache_write
                    + out * GPT4O.output) / 1_000_000
    assert cost - 1 < exact <= cost
