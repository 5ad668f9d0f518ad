"""Pricing: exact integer money, one rounding rule (up, once per request), cache reads cheaper."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

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


# -- real usage payloads of each provider, normalized by their adapters and priced exactly ------------

from adapters.anthropic import upstream as anthropic_upstream  # noqa: E402
from adapters.gemini import upstream as gemini_upstream  # noqa: E402
from adapters.openai import passthrough as openai_passthrough  # noqa: E402

# 2.50 / 10 / 0.25 / 3.125 USD per 1M tokens: 2,500 / 10,000 / 250 / 3,125 nano-USD a token
TABLE_PRICES = TokenPrices(input=2_500_000_000, output=10_000_000_000, cache_read=250_000_000,
                           cache_write=3_125_000_000)
USAGE_TABLE = [
    ("openai chat, no cache", openai_passthrough.normalize_usage,
     {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
      "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
      "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}},
     Usage(1200, 300), 1200 * 2500 + 300 * 10000),
    ("openai chat, cache read and reasoning", openai_passthrough.normalize_usage,
     {"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
      "prompt_tokens_details": {"cached_tokens": 1920}, "completion_tokens_details": {"reasoning_tokens": 64}},
     Usage(2006, 300, cache_read=1920, reasoning=64), 86 * 2500 + 1920 * 250 + 300 * 10000),
    ("openai-compatible, cache write too", openai_passthrough.normalize_usage,
     {"prompt_tokens": 3000, "completion_tokens": 10,
      "prompt_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 1500}},
     Usage(3000, 10, cache_read=1000, cache_write=1500), 500 * 2500 + 1000 * 250 + 1500 * 3125 + 10 * 10000),
    ("openai responses, cache read", openai_passthrough.normalize_usage,
     {"input_tokens": 2006, "input_tokens_details": {"cached_tokens": 1920}, "output_tokens": 300,
      "output_tokens_details": {"reasoning_tokens": 64}, "total_tokens": 2306},
     Usage(2006, 300, cache_read=1920, reasoning=64), 86 * 2500 + 1920 * 250 + 300 * 10000),
    ("anthropic, no cache", anthropic_upstream.normalize_usage,
     {"input_tokens": 1200, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 300,
      "service_tier": "standard"},
     Usage(1200, 300), 1200 * 2500 + 300 * 10000),
    ("anthropic, cache read and write", anthropic_upstream.normalize_usage,
     {"input_tokens": 50, "cache_creation_input_tokens": 1000, "cache_read_input_tokens": 2000, "output_tokens": 300,
      "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 0}},
     Usage(3050, 300, cache_read=2000, cache_write=1000), 50 * 2500 + 2000 * 250 + 1000 * 3125 + 300 * 10000),
    ("gemini, no cache", gemini_upstream.normalize_usage,
     {"promptTokenCount": 1200, "candidatesTokenCount": 300, "totalTokenCount": 1500,
      "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1200}]},
     Usage(1200, 300), 1200 * 2500 + 300 * 10000),
    ("gemini, cached content and thoughts", gemini_upstream.normalize_usage,
     {"promptTokenCount": 2006, "cachedContentTokenCount": 1920, "candidatesTokenCount": 236,
      "thoughtsTokenCount": 64, "totalTokenCount": 2306},
     Usage(2006, 300, cache_read=1920, reasoning=64), 86 * 2500 + 1920 * 250 + 300 * 10000),
]


@pytest.mark.parametrize(("normalize", "payload", "usage", "cost"), [row[1:] for row in USAGE_TABLE],
                         ids=[row[0] for row in USAGE_TABLE])
def test_real_usage_payloads_are_priced_exactly(normalize: Any, payload: dict[str, Any], usage: Usage,
                                                cost: int) -> None:
    assert normalize(payload) == usage
    assert token_cost(TABLE_PRICES, usage) == cost
    full = usage.in_total * 2500 + usage.out_total * 10000
    assert full_price_cost(TABLE_PRICES, usage) - cost == full - cost >= 0  # the savings the headers show


def test_a_fraction_of_a_nano_dollar_is_rounded_up_once_per_request() -> None:
    # 0.00015 / 0.0006 / 0.000075 USD per 1M tokens: 0.15 / 0.6 / 0.075 nano-USD a token
    cheap = TokenPrices(input=150_000, output=600_000, cache_read=75_000)
    assert token_cost(cheap, Usage(7, 0)) == 2  # 1.05 nano-USD
    assert token_cost(cheap, Usage(7, 1, cache_read=6)) == 2  # 0.15 + 0.45 + 0.6 = 1.2, once
