"""A key's balance (core/balance_api.py): /v1/balance against the operator's figures, the legacy billing routes read
as NextChat reads them (never more left than the key can spend), refusals, billing off, and the rounding."""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import httpx2 as httpx
import openai
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.balance_api import KeyBalance, legacy_limit_cents, legacy_used_cents, subscription_body, usage_body
from tests.conftest import (
    DEMO_ECHO, GatewayProcess, base_config, cli, demo_provider, on_one_utc_day, serve_gateway, wallet,
)

CENT = 10_000_000  # nano-dollars


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    yield from serve_gateway(tmp_path_factory.mktemp("balance"), lambda log: base_config(log) + demo_provider() +
                             DEMO_ECHO, {}, "payer", "10", ("Traceback",))


def new_key(gw: GatewayProcess, account: str = "payer", *limits: str) -> dict[str, Any]:
    return cli(gw.config, "keys", "create", "--account", account, *limits, env=gw.env)


def get(gw: GatewayProcess, path: str, key: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(gw.url + path, headers=headers), timeout=20) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, orjson.loads(err.read())


def sdk(gw: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=20)


def spend(gw: GatewayProcess, key: str) -> int:
    """One chat request with the key; what it was charged, in nano-dollars, as the operator's CLI reports it."""
    raw = sdk(gw, key).chat.completions.with_raw_response.create(
        model="demo-echo", messages=[{"role": "user", "content": "count the cents, please"}], max_tokens=20)
    rid = raw.headers["x-tt-request-id"]
    gw.log_entry(rid)  # written after the request is settled
    return int(cli(gw.config, "usage", "--request", rid, env=gw.env)["cost"])


def nextchat_shown(gw: GatewayProcess, key: str) -> tuple[float, float]:
    """(used, total) exactly as NextChat's OpenAI client computes them (app/client/platforms/openai.ts usage()):
    both routes without /v1 under its base URL, the month's dates, Math.round to cents."""
    today = date.today()
    used_status, used = get(gw, f"/dashboard/billing/usage?start_date={today.replace(day=1)}&end_date="
                                f"{today + timedelta(days=1)}", key)
    subs_status, subs = get(gw, "/dashboard/billing/subscription", key)
    assert (used_status, subs_status) == (200, 200)
    js_round = lambda x: math.floor(x + 0.5)  # noqa: E731 - JavaScript's Math.round
    return js_round(used["total_usage"]) / 100, js_round(subs["hard_limit_usd"] * 100) / 100


def test_balance_shows_the_wallet_and_the_keys_month_as_the_operator_sees_them(gw: GatewayProcess) -> None:
    key = new_key(gw, "payer", "--monthly-limit", "1.00")["key"]
    with on_one_utc_day():
        status, before = get(gw, "/v1/balance", key)
        assert status == 200
        assert before["available_usd"] == wallet(gw, "payer")["available_usd"]
        assert (before["month_spent_usd"], before["monthly_limit_usd"], before["spendable_usd"]) == (
            "0.000000000", "1.000000000", "1.000000000")
        cost = spend(gw, key)
        assert cost > 0
        _, after = get(gw, "/v1/balance", key)
    assert after["available_usd"] == wallet(gw, "payer")["available_usd"]
    assert Decimal(after["month_spent_usd"]) * 10**9 == cost
    assert Decimal(after["monthly_limit_left_usd"]) == Decimal("1") - Decimal(cost) / 10**9
    assert after["spendable_usd"] == after["monthly_limit_left_usd"]
    assert (after["held_usd"], after["key_held_usd"], after["currency"]) == ("0.000000000", "0.000000000", "USD")


def test_nextchat_shows_what_a_key_with_a_limit_can_still_spend(gw: GatewayProcess) -> None:
    key = new_key(gw, "payer", "--monthly-limit", "1.00")["key"]
    with on_one_utc_day():
        cost = spend(gw, key)
        used, total = nextchat_shown(gw, key)
        _, balance = get(gw, "/v1/balance", key)
    assert total == 1.0  # a whole-cent limit on a rich wallet shows as itself
    assert used == math.ceil(cost / CENT) / 100  # a spend of a fraction of a cent shows as one cent
    spendable = Decimal(balance["spendable_usd"])
    assert spendable - Decimal("0.01") < Decimal(str(total)) - Decimal(str(used)) <= spendable


def test_nextchat_shows_a_small_wallet_not_the_keys_larger_limit(gw: GatewayProcess) -> None:
    cli(gw.config, "accounts", "create", "thin", "--credit", "0.0399", env=gw.env)
    key = new_key(gw, "thin", "--monthly-limit", "5")["key"]
    with on_one_utc_day():
        spend(gw, key)
        used, total = nextchat_shown(gw, key)
        _, balance = get(gw, "/v1/balance", key)
    spendable = Decimal(balance["spendable_usd"])
    assert spendable == Decimal(balance["available_usd"]) < Decimal("0.0399")
    assert Decimal(str(total)) - Decimal(str(used)) == Decimal(math.floor(spendable * 100)) / 100  # 3 cents, not 4


def test_the_legacy_routes_answer_alike_with_and_without_v1_in_the_shapes_clients_read(gw: GatewayProcess) -> None:
    key = new_key(gw, "payer", "--expires", "2099-01-01")["key"]
    subs = [get(gw, path, key) for path in ("/v1/dashboard/billing/subscription", "/dashboard/billing/subscription")]
    usage = [get(gw, path, key) for path in ("/v1/dashboard/billing/usage", "/dashboard/billing/usage?start_date=x")]
    assert subs[0] == subs[1] and usage[0] == usage[1]
    status, body = subs[0]
    assert status == 200 and body["object"] == "billing_subscription" and body["has_payment_method"] is True
    assert body["hard_limit_usd"] == body["soft_limit_usd"] == body["system_hard_limit_usd"]
    assert isinstance(body["hard_limit_usd"], float)
    assert body["access_until"] == 4070908800  # 2099-01-01T00:00:00Z
    assert usage[0] == (200, {"object": "list", "total_usage": 0})


def test_the_openai_sdk_reads_the_balance_and_gets_its_own_401_without_a_key(gw: GatewayProcess) -> None:
    key = new_key(gw)["key"]
    body = sdk(gw, key).get("/dashboard/billing/subscription", cast_to=httpx.Response).json()
    assert body["object"] == "billing_subscription"
    with pytest.raises(openai.AuthenticationError) as refused:
        openai.OpenAI(base_url=gw.base_url, api_key="sk-tt-" + "x" * 40, max_retries=0).get(
            "/balance", cast_to=httpx.Response)
    assert refused.value.code == "invalid_api_key"
    status, missing = get(gw, "/v1/dashboard/billing/usage", None)
    assert status == 401 and missing["error"]["code"] == "missing_api_key"
    assert "Authorization: Bearer" in missing["error"]["message"]


def test_a_key_restricted_to_models_reads_its_balance_and_a_disabled_one_does_not(gw: GatewayProcess) -> None:
    restricted = new_key(gw, "payer", "--models", "demo-echo")
    assert get(gw, "/v1/balance", restricted["key"])[0] == 200
    cli(gw.config, "keys", "disable", str(restricted["id"]), env=gw.env)
    status, body = get(gw, "/v1/balance", restricted["key"])
    assert status == 401 and body["error"]["code"] == "api_key_disabled"


def test_the_routes_have_fixed_metric_labels(gw: GatewayProcess) -> None:
    key = new_key(gw)["key"]
    get(gw, "/dashboard/billing/usage", key)
    get(gw, "/v1/balance", key)
    with urllib.request.urlopen(gw.url + "/metrics", timeout=20) as resp:
        metrics = resp.read().decode()
    assert 'route="/v1/dashboard/billing"' in metrics and 'route="/v1/balance"' in metrics
    assert 'route="/dashboard/billing/usage"' not in metrics


@pytest.fixture(scope="module")
def gw_unbilled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    yield from serve_gateway(tmp_path_factory.mktemp("unbilled"), lambda log: base_config(log) + "enabled = false\n"
                             + demo_provider() + DEMO_ECHO, {}, "nobody", "1", ("Traceback",))


def test_with_billing_off_the_routes_say_so_with_a_404(gw_unbilled: GatewayProcess) -> None:
    for path in ("/v1/balance", "/v1/dashboard/billing/subscription", "/dashboard/billing/usage"):
        status, body = get(gw_unbilled, path, None)
        assert status == 404 and body["error"]["code"] == "billing_disabled", path


# -- the rounding, pure ---------------------------------------------------------------------------------------------


def figures(available: int, spent: int, key_held: int = 0, limit: int | None = None) -> KeyBalance:
    return KeyBalance(available=available, held=key_held, month="2026-01", month_spent=spent, key_held=key_held,
                      monthly_limit=limit, expires_at=None)


def test_a_fraction_of_a_cent_spent_shows_as_a_cent_and_one_left_shows_as_none() -> None:
    b = figures(available=CENT - 1, spent=1)
    assert (legacy_used_cents(b), legacy_limit_cents(b)) == (1, 1)  # 0.01 - 0.01: nothing shown as spendable
    assert usage_body(b) == {"object": "list", "total_usage": 1}
    assert orjson.dumps(subscription_body(figures(available=12_345 * CENT, spent=0))["hard_limit_usd"]) == b"123.45"


def test_the_monthly_limit_counts_open_holds_and_never_goes_below_zero() -> None:
    assert figures(available=10**12, spent=3 * CENT, key_held=2 * CENT, limit=10 * CENT).spendable == 5 * CENT
    assert figures(available=10**12, spent=30 * CENT, limit=10 * CENT).spendable == 0  # a limit lowered after spend
    assert figures(available=4 * CENT, spent=0, limit=10 * CENT).spendable == 4 * CENT


@given(available=st.integers(0, 10**18), spent=st.integers(0, 10**15), key_held=st.integers(0, 10**12),
       limit=st.one_of(st.none(), st.integers(0, 10**15)))
def test_nextchats_remaining_is_never_more_than_spendable_nor_a_cent_less(available: int, spent: int, key_held: int,
                                                                          limit: int | None) -> None:
    b = figures(available, spent, key_held, limit)
    used = math.floor(usage_body(b)["total_usage"] + 0.5)  # cents, as NextChat rounds them
    total = math.floor(orjson.loads(orjson.dumps(subscription_body(b)))["hard_limit_usd"] * 100 + 0.5)
    assert b.spendable - CENT < (total - used) * CENT <= b.spendable
    assert used * CENT >= spent
