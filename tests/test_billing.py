"""Billing end to end, through the openai SDK against the real gateway: every 401 case, 402 (both
codes), 403, 429 with Retry-After, exact holds under a racing crowd, and charges for dropped streams."""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any

import httpx2 as httpx
import openai
import pytest

from billing.metering import count_text
from billing.pricing import TOKENS_PER_PRICE, ceil_div
from tests.conftest import GatewayProcess, cli, fresh_minute, wait_for, wallet
from tests.mock_upstream import MockUpstream

MSG = [{"role": "user", "content": "The quick brown fox jumps over the lazy dog"}]


def sdk(gateway: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=20)


def new_account(gateway: GatewayProcess, name: str, credit: str, **key_flags: str) -> tuple[int, str, int]:
    account = cli(gateway.config, "accounts", "create", name, "--credit", credit, env=gateway.env)
    flags = [x for k, v in key_flags.items() for x in (f"--{k.replace('_', '-')}", v)]
    key = cli(gateway.config, "keys", "create", "--account", name, *flags, env=gateway.env)
    return account["id"], key["key"], key["id"]


def books_add_up(gateway: GatewayProcess) -> None:
    import sqlite3

    db = sqlite3.connect(gateway.config.parent / "tokentoll.db")
    for balance, held, lb, lh in db.execute(
            "SELECT a.balance, a.held, COALESCE(SUM(l.balance_delta), 0), COALESCE(SUM(l.held_delta), 0) "
            "FROM accounts a LEFT JOIN ledger l ON l.account_id = a.id GROUP BY a.id"):
        assert (balance, held) == (lb, lh) and 0 <= held <= balance
    db.close()


def test_each_401_has_its_own_message(gateway: GatewayProcess, api_key: str) -> None:
    cases = {  # key as the SDK sends it -> (code, words of the message)
        "": ("missing_api_key", "no API key"),
        " " + api_key: ("api_key_whitespace", "whitespace"),
        "sk-proj-abcdefabcdefabcdefabcdefabcdefab": ("not_a_tokentoll_key", "not a TokenToll API key"),
        "sk-tt-short": ("not_a_tokentoll_key", "not a complete TokenToll API key"),
        "sk-tt-" + "Z" * 40: ("invalid_api_key", "unknown or has been rotated"),
    }
    for key, (code, words) in cases.items():
        with pytest.raises(openai.AuthenticationError) as err:
            if key:
                sdk(gateway, key).chat.completions.create(model="mock-ok", messages=MSG)
            else:  # the SDK refuses an empty key itself: send none at all
                sdk(gateway, "unused").chat.completions.create(model="mock-ok", messages=MSG,
                                                               extra_headers={"Authorization": openai.omit})
        assert err.value.code == code and words in err.value.message, (key, err.value.message)
        assert err.value.request_id and err.value.response.headers["x-should-retry"] == "false"
    # a line break can only come by the query, which only Gemini's routes read
    r = httpx.post(gateway.url + "/v1beta/models/mock-ok:generateContent", params={"key": api_key + "\n"},
                   json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
    assert r.status_code == 401 and "api_key_whitespace" in r.text  # Gemini's error shape: the code is a reason
    assert "line break" in r.json()["error"]["message"]
    for header in ("x-api-key", "x-goog-api-key"):  # the other ways a key may come
        r = httpx.post(gateway.base_url + "/chat/completions", json={"model": "mock-ok", "messages": MSG},
                       headers={header: api_key})
        assert r.status_code == 200, header
    r = httpx.post(gateway.url + "/v1beta/models/mock-ok:generateContent", params={"key": api_key},
                   json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
    assert r.status_code == 200  # Gemini's REST API documents ?key=; every other route refuses it (tests/security)


def test_rotation_disable_and_expiry(gateway: GatewayProcess) -> None:
    _, key, key_id = new_account(gateway, "rotator", "1")
    client = sdk(gateway, key)
    assert client.chat.completions.create(model="mock-ok", messages=MSG).choices
    rotated = cli(gateway.config, "keys", "rotate", str(key_id), env=gateway.env)["key"]
    with pytest.raises(openai.AuthenticationError) as old:
        client.chat.completions.create(model="mock-ok", messages=MSG)
    assert "rotated" in old.value.message
    assert sdk(gateway, rotated).chat.completions.create(model="mock-ok", messages=MSG).choices
    cli(gateway.config, "keys", "disable", str(key_id), env=gateway.env)
    with pytest.raises(openai.AuthenticationError) as disabled:
        sdk(gateway, rotated).chat.completions.create(model="mock-ok", messages=MSG)
    assert disabled.value.code == "api_key_disabled"
    cli(gateway.config, "keys", "enable", str(key_id), env=gateway.env)
    cli(gateway.config, "keys", "set-limit", str(key_id), "--expires", "2020-01-01", env=gateway.env)
    with pytest.raises(openai.AuthenticationError) as expired:
        sdk(gateway, rotated).chat.completions.create(model="mock-ok", messages=MSG)
    assert expired.value.code == "api_key_expired" and "2020-01-01" in expired.value.message


def test_402_both_codes_and_403(gateway: GatewayProcess) -> None:
    _, poor_key, _ = new_account(gateway, "poor", "0.000001")
    with pytest.raises(openai.APIStatusError) as short:
        sdk(gateway, poor_key).chat.completions.create(model="mock-ok", messages=MSG)
    assert short.value.status_code == 402 and short.value.code == "billing_shortfall"
    assert "available" in short.value.message and "$0.000001000" in short.value.message
    assert short.value.response.headers["x-should-retry"] == "false"
    _, capped_key, _ = new_account(gateway, "capped", "100", monthly_limit="0.000002", models="mock-ok")
    with pytest.raises(openai.APIStatusError) as quota:
        sdk(gateway, capped_key).chat.completions.create(model="mock-ok", messages=MSG)
    assert quota.value.status_code == 402 and quota.value.code == "api_key_quota_exceeded"
    with pytest.raises(openai.PermissionDeniedError) as forbidden:
        sdk(gateway, capped_key).chat.completions.create(model="demo-echo", messages=MSG)
    assert forbidden.value.code == "model_not_allowed" and "mock-ok" in forbidden.value.message
    assert wallet(gateway, "poor")["held"] == 0  # refused requests leave nothing behind


def test_429_with_retry_after_and_ratelimit_headers(gateway: GatewayProcess) -> None:
    _, key, _ = new_account(gateway, "limited", "10", rpm="2")
    client = sdk(gateway, key)
    fresh_minute()
    client.chat.completions.create(model="mock-ok", messages=MSG)
    client.chat.completions.create(model="mock-ok", messages=MSG)
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="mock-ok", messages=MSG)
    headers = limited.value.response.headers
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-limit-requests"] == "2" and headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert limited.value.code == "rate_limit_exceeded"
    _, tkey, _ = new_account(gateway, "token-limited", "10", tpm="150")
    tclient = sdk(gateway, tkey)
    fresh_minute()
    tclient.chat.completions.create(model="mock-ok", messages=MSG, max_tokens=100)
    # the first request settled at its real 16 + 9 tokens; this one needs 16 + 120: 161 > 150
    with pytest.raises(openai.RateLimitError) as tokens:
        tclient.chat.completions.create(model="mock-ok", messages=MSG, max_tokens=120)
    assert "tokens per minute" in tokens.value.message and tokens.value.code == "rate_limit_exceeded"
    assert tokens.value.response.headers["x-ratelimit-limit-tokens"] == "150"
    assert int(tokens.value.response.headers["retry-after"]) >= 1
    with pytest.raises(openai.RateLimitError) as never:  # more than a whole minute's budget: no retry
        tclient.chat.completions.create(model="mock-ok", messages=MSG, max_tokens=1000)
    assert never.value.code == "request_too_large_for_tpm"
    assert "retry-after" not in never.value.response.headers
    assert never.value.response.headers["x-should-retry"] == "false"


def test_a_settled_request_is_charged_its_real_usage(gateway: GatewayProcess) -> None:
    _, key, _ = new_account(gateway, "exact", "1")
    raw = sdk(gateway, key).chat.completions.with_raw_response.create(model="mock-ok", messages=MSG)
    usage = raw.parse().usage
    assert usage is not None
    entry = gateway.log_entry(raw.headers["x-tt-request-id"])
    # mock-ok costs $1 / $2 per 1M tokens = 1000 / 2000 nano-dollars per token
    expected = ceil_div(usage.prompt_tokens * 1_000_000_000 + usage.completion_tokens * 2_000_000_000,
                        TOKENS_PER_PRICE)
    assert entry["cost_nanousd"] == expected
    row = cli(gateway.config, "usage", "--request", raw.headers["x-tt-request-id"], env=gateway.env)
    assert (row["cost"], row["source"], row["input_tokens"], row["status"]) == \
        (expected, "upstream", usage.prompt_tokens, 200)  # one request's charge, for the operator
    w = wallet(gateway, "exact")
    assert w["balance"] == 1_000_000_000 - expected and w["held"] == 0


def test_dropped_stream_is_charged_prompt_plus_observed_output(gateway: GatewayProcess,
                                                              upstream: MockUpstream) -> None:
    _, key, _ = new_account(gateway, "dropper", "1")
    k = 6
    with sdk(gateway, key).chat.completions.with_streaming_response.create(
            model="mock-slow", messages=MSG, stream=True) as resp:
        rid = resp.headers["x-tt-request-id"]
        stream = iter(resp.parse())
        for _ in range(k):
            next(stream)
    entry = gateway.log_entry(rid)
    assert entry["usage_source"] == "observed" and entry["client_disconnected"]
    per_chunk = count_text(" tick")
    assert (k - 1) * per_chunk <= entry["output_tokens"] <= (k + 3) * per_chunk  # chunks in flight may be counted
    expected = ceil_div(entry["input_tokens"] * 1_000_000_000 + entry["output_tokens"] * 2_000_000_000,
                        TOKENS_PER_PRICE)
    assert entry["cost_nanousd"] == expected
    assert wallet(gateway, "dropper")["held"] == 0


def test_dropped_stream_with_upstream_usage_is_charged_exactly_that(gateway: GatewayProcess) -> None:
    _, key, _ = new_account(gateway, "dropper2", "1")
    with sdk(gateway, key).chat.completions.with_streaming_response.create(
            model="mock-slow-usage", messages=MSG, stream=True) as resp:
        rid = resp.headers["x-tt-request-id"]
        stream = iter(resp.parse())
        seen = [next(stream) for _ in range(6)]
    assert all(c.usage is None for c in seen)  # this client did not ask for usage
    entry = gateway.log_entry(rid)
    assert entry["usage_source"] == "upstream" and entry["input_tokens"] == 7
    completion = entry["output_tokens"]  # the last running figure the upstream sent before the close
    assert completion >= 5
    assert entry["cost_nanousd"] == ceil_div(7 * 1_000_000_000 + completion * 2_000_000_000, TOKENS_PER_PRICE)


def test_failed_upstream_costs_nothing(gateway: GatewayProcess) -> None:
    _, key, _ = new_account(gateway, "unlucky", "1")
    with pytest.raises(openai.InternalServerError):
        sdk(gateway, key).chat.completions.create(model="mock-500", messages=MSG)
    w = wallet(gateway, "unlucky")
    assert w["balance"] == 1_000_000_000 and w["held"] == 0


def test_200_racing_streams_against_a_wallet_for_20_holds(gateway: GatewayProcess, upstream: MockUpstream) -> None:
    # One hold for mock-slow with max_tokens=100: the prompt estimate x $1/1M + 100 x $2/1M.
    prompt = 3 + count_text(MSG[0]["content"]) + 3  # a message's framing, its text, the reply's framing
    hold = ceil_div(prompt * 1_000_000_000 + 100 * 2_000_000_000, TOKENS_PER_PRICE)
    _, key, _ = new_account(gateway, "crowd", f"{20 * hold / 1e9:.9f}")
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=30,
                           http_client=openai.DefaultHttpxClient(limits=httpx.Limits(max_connections=250)))
    opened = threading.Barrier(21, timeout=60)  # the 20 served streams and this test
    release = threading.Event()
    outcomes: list[str] = []

    def one() -> None:
        try:
            with client.chat.completions.with_streaming_response.create(
                    model="mock-slow", messages=MSG, stream=True, max_tokens=100) as resp:
                next(iter(resp.parse()))
                outcomes.append("served")
                opened.wait()
                release.wait(60)
        except openai.APIStatusError as exc:
            outcomes.append(f"{exc.status_code} {exc.code}")

    with concurrent.futures.ThreadPoolExecutor(200) as pool:
        futures = [pool.submit(one) for _ in range(200)]
        opened.wait()  # all 20 streams are open at once
        wait_for(lambda: len(outcomes) == 200, 60, "all 200 answers")
        assert outcomes.count("served") == 20
        assert outcomes.count("402 billing_shortfall") == 180
        w = wallet(gateway, "crowd")
        assert w["held"] == 20 * hold and w["available"] == 0
        release.set()
        for f in futures:
            f.result()
    wait_for(lambda: wallet(gateway, "crowd")["held"] == 0, 10, "all holds settled")
    w = wallet(gateway, "crowd")
    assert 0 <= w["balance"] < 20 * hold
    books_add_up(gateway)
