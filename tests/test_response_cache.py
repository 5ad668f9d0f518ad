"""The response cache: its rule and key (pure), its table (the store, with a clock passed in), and
through the gateway: miss then hit in all three client formats, streamed and not, with the headers and the charge."""

from __future__ import annotations

import asyncio
import http.client
import sqlite3
import threading
import time
from decimal import Decimal
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import orjson
import pytest
from google import genai
from google.genai import types as gtypes
from hypothesis import given
from hypothesis import strategies as st
from openai import OpenAI

from adapters import internal
from adapters.anthropic import client as anthropic_client
from adapters.gemini import client as gemini_client
from adapters.openai import chat_client
from billing import store
from billing.metering import Usage
from billing.pricing import TokenPrices
from core import response_cache as rc
from core.errors import BadRequest
from tests.conftest import (NATIVE_KEY, GatewayProcess, NativeUpstream, cli, demo_provider, matrix_config,
                            serve_gateway, wait_for)

# -- the rule and the key --------------------------------------------------------------------------


def openai_body(text: str = "cache me", **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], "temperature": 0, "max_tokens": 50,
            **extra}


def test_the_same_question_has_one_key_in_all_three_formats() -> None:
    key = partial(rc.cache_key, "account:1", "m", 50)
    k_openai = key(chat_client.parse_request(openai_body(stream=True, user="u1", stream_options={"include_usage": True})))
    k_anthropic = key(anthropic_client.parse_request(
        {"model": "m", "max_tokens": 50, "temperature": 0.0, "messages": [{"role": "user", "content": "cache me"}]}))
    k_gemini = key(gemini_client.parse_request(
        {"contents": [{"role": "user", "parts": [{"text": "cache me"}]}], "generationConfig": {"temperature": 0}}))
    assert k_openai == k_anthropic == k_gemini


def test_what_can_change_the_answer_changes_the_key() -> None:
    base = chat_client.parse_request(openai_body())
    key = rc.cache_key("account:1", "m", 50, base)
    assert rc.cache_key("account:2", "m", 50, base) != key
    assert rc.cache_key("shared", "m", 50, base) != key
    assert rc.cache_key("account:1", "other", 50, base) != key
    assert rc.cache_key("account:1", "m", 51, base) != key
    for change in ({"temperature": 0.5}, {"stop": ["x"]}, {"seed": 7}, {"top_p": 0.5},
                   {"messages": [{"role": "user", "content": "cache me!"}]},
                   {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "cache me"}]}):
        assert rc.cache_key("account:1", "m", 50, chat_client.parse_request({**openai_body(), **change})) != key, change


def test_the_rule_temperature_zero_or_opted_in_and_never_when_bypassed() -> None:
    deterministic = chat_client.parse_request(openai_body())
    warm = chat_client.parse_request(openai_body(temperature=0.7))
    assert rc.cacheable(deterministic, "") and not rc.cacheable(warm, "")
    assert rc.cacheable(warm, "use") and not rc.cacheable(deterministic, "bypass")
    assert not rc.cacheable(chat_client.parse_request(openai_body(n=2)), "use")
    assert rc.worth_a_look("openai", {"temperature": 0}, "") and not rc.worth_a_look("openai", {"temperature": False}, "")
    assert not rc.worth_a_look("openai", {}, "") and rc.worth_a_look("openai", {}, "use")
    assert rc.worth_a_look("gemini", {"generationConfig": {"temperature": 0.0}}, "")
    assert not rc.worth_a_look("anthropic", {"temperature": 0}, "bypass")
    assert rc.requested_mode([(b"x-tt-cache", b" Bypass ")]) == "bypass"
    assert rc.requested_mode([(b"accept", b"*/*")]) == ""
    with pytest.raises(BadRequest, match="'use' or 'bypass'"):
        rc.requested_mode([(b"x-tt-cache", b"always")])


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_a_replayed_text_joins_back_to_itself(text: str) -> None:
    assert "".join(rc.text_pieces(text)) == text


def test_a_collected_stream_is_stored_and_replayed_to_the_same_answer() -> None:
    reply = internal.Reply("id", "m", [internal.Thinking("let me think", "sig"), internal.Text("Hello there, how are you today?"),
                                       internal.ToolCall("call_1", "lookup", '{"q": 1}'),
                                       internal.ToolCall("call_2", "other", "{}", "gsig")], "tool_calls")
    collector = rc.AnswerCollector()
    for event in rc.replay(reply):
        collector.add(event)
    collected = collector.reply()
    assert collected is not None and collected.parts == reply.parts and collected.finish == "tool_calls"
    usage = Usage(40, 12, reasoning=3)
    restored = rc.decode_answer(rc.encode_answer(collected, usage), "new-id", "public")
    assert restored.parts == reply.parts and restored.id == "new-id" and restored.model == "public"
    assert restored.usage == Usage(40, 12, cache_read=40, reasoning=3)  # every input token read from the cache
    unfinished = rc.AnswerCollector()
    unfinished.add(internal.TextDelta("half"))
    assert unfinished.reply() is None  # a stream that never ended is not stored


def test_headers_show_a_hits_tokens_and_what_it_saved() -> None:
    prices = TokenPrices(input=1_000_000_000, output=2_000_000_000, cache_read=100_000_000, cache_write=1_250_000_000)
    hit = Usage(20, 9, cache_read=20)
    assert dict(rc.headers("hit", hit, prices, rc.hit_prices(prices))) == {
        b"x-tt-cache": b"hit", b"x-tt-cache-read-tokens": b"29", b"x-tt-cache-write-tokens": b"0",
        b"x-tt-cache-savings": b"0.000035100"}  # 20 x 1000 + 9 x 2000 at full price, 29 x 100 charged
    prompt_cache = Usage(20, 9, cache_read=8, cache_write=4)  # the upstream's own prompt cache
    assert dict(rc.headers("miss", prompt_cache, prices, prices)) == {
        b"x-tt-cache": b"miss", b"x-tt-cache-read-tokens": b"8", b"x-tt-cache-write-tokens": b"4",
        b"x-tt-cache-savings": b"0.000006200"}  # 8 x (1000 - 100) - 4 x (1250 - 1000)
    assert rc.headers("miss", prompt_cache, prices, prices, known=False) == [(b"x-tt-cache", b"miss")]


# -- the table ------------------------------------------------------------------------------------


def entry(key: bytes, answer_bytes: int, now: float, ttl: float = 100.0) -> store.CacheEntry:
    return store.CacheEntry(key, "shared", "m", b"x" * answer_bytes, 10, 5, now, now + ttl)


def test_entries_expire_and_the_least_recently_used_go_when_the_cache_is_full(tmp_path: Path) -> None:
    async def scenario() -> None:
        db = store.Store(str(tmp_path / "books.db"))
        await db.start()
        try:
            size = 1000 + store.engine.PAGE_SIZE * 0  # each entry: 1000 bytes of answer + the overhead
            limit = 3 * (size + 200)
            for i, key in enumerate((b"a", b"b", b"c")):
                assert await db.run(store.tx_cache_put, entry(key, size, now=float(i)), limit) == 0
            assert (await db.run_hot(store.tx_cache_get, b"a", 10.0)).input_tokens == 10  # "a" is used again
            assert await db.run(store.tx_cache_put, entry(b"d", size, now=11.0), limit) == 1  # "b" goes
            assert await db.run_hot(store.tx_cache_get, b"b", 12.0) is None
            assert all([await db.run_hot(store.tx_cache_get, k, 12.0) for k in (b"a", b"c", b"d")])
            assert await db.run_hot(store.tx_cache_get, b"d", 11.0 + 100.0) is None  # expired: never served
            stats = await db.run(store.tx_cache_stats, 12.0)
            assert stats["entries"] == 3 and stats["bytes"] == 3 * (size + 200)
            assert await db.run(store.tx_cache_put, entry(b"huge", 10 * size, now=13.0), limit) == 0
            assert await db.run_hot(store.tx_cache_get, b"huge", 13.0) is None  # larger than the whole cache
            # a later write clears what expired, and the running total stays equal to the rows
            assert await db.run(store.tx_cache_put, entry(b"e", 10, now=500.0), limit) == 3
            stats = await db.run(store.tx_cache_stats, 500.0)
            total = await db.run(lambda c: int(c.execute("SELECT value FROM settings WHERE name = ?",
                                                         (store.cache.TOTAL_SETTING,)).fetchone()[0]))
            assert stats["entries"] == 1 and stats["bytes"] == total == 10 + 200
        finally:
            await db.close()

    asyncio.run(scenario())


# -- through the gateway ----------------------------------------------------------------------------

DEMO_SLOW = '''
[models.demo-slow]
provider = "demo"
upstream_model = "echo"
max_output_tokens = 64
price = { input = "0.5", output = "1.5" }
'''  # a stream that takes a while: other requests in flight
CACHE_MODEL = "scripted-openai"  # 1 USD / 2 USD per 1M in / out, cache_read 0.1 (tests/conftest.py)


def cache_config(native: str, log_path: Path) -> str:
    return (matrix_config(native, log_path) + demo_provider(0.02) + DEMO_SLOW
            + "\n[cache]\nttl = 3600\nmax_bytes = 1048576\n")


@pytest.fixture(scope="module")
def cache_gw(native: NativeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    yield from serve_gateway(tmp_path_factory.mktemp("cache"), partial(cache_config, native.base_url),
                             {"TT_NATIVE_KEY": NATIVE_KEY}, "cachers", "100", ("Traceback",))


@pytest.fixture(scope="module")
def cache_key(cache_gw: GatewayProcess) -> str:
    return cli(cache_gw.config, "keys", "create", "--account", "cachers", env=cache_gw.env)["key"]


def charge(gw: GatewayProcess, request_id: str) -> dict[str, Any]:
    gw.log_entry(request_id)  # written after the settlement
    return cli(gw.config, "usage", "--request", request_id, env=gw.env)


def upstream_calls(native: NativeUpstream) -> int:
    return len(native.requests)


def openai_call(gw: GatewayProcess, key: str, model: str, text: str, stream: bool,
                headers: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    client = OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=20, default_headers=headers or {})
    kwargs: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}], "temperature": 0,
                              "max_tokens": 50}
    if stream:
        with client.chat.completions.with_streaming_response.create(stream=True, **kwargs) as raw:
            text_out = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
            return text_out, dict(raw.headers)
    raw = client.chat.completions.with_raw_response.create(**kwargs)
    return raw.parse().choices[0].message.content or "", dict(raw.headers)


def anthropic_call(gw: GatewayProcess, key: str, model: str, text: str, stream: bool) -> tuple[str, dict[str, str]]:
    client = anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0, timeout=20)
    kwargs: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 50,
                              "extra_body": {"temperature": 0}}  # this SDK version has no temperature argument
    if stream:
        with client.messages.with_streaming_response.create(stream=True, **kwargs) as raw:
            out = "".join(e.delta.text for e in raw.parse() if e.type == "content_block_delta"
                          and e.delta.type == "text_delta")
            return out, dict(raw.headers)
    raw = client.messages.with_raw_response.create(**kwargs)
    return "".join(b.text for b in raw.parse().content if b.type == "text"), dict(raw.headers)


def gemini_call(gw: GatewayProcess, key: str, model: str, text: str, stream: bool) -> tuple[str, dict[str, str]]:
    seen: dict[str, str] = {}

    def keep(response: httpx2.Response) -> None:
        seen.update(response.headers)

    client = genai.Client(api_key=key, http_options=gtypes.HttpOptions(
        base_url=gw.url, client_args={"event_hooks": {"response": [keep]}}))
    config = gtypes.GenerateContentConfig(temperature=0, max_output_tokens=50)
    if stream:
        out = "".join(c.text or "" for c in client.models.generate_content_stream(model=model, contents=text,
                                                                                   config=config))
    else:
        out = client.models.generate_content(model=model, contents=text, config=config).text or ""
    return out, seen


CALLERS = {"openai": openai_call, "anthropic": anthropic_call, "gemini": gemini_call}


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
@pytest.mark.parametrize("dialect", list(CALLERS))
def test_a_miss_then_a_hit_in_each_format_is_charged_at_the_cache_read_price(
        cache_gw: GatewayProcess, cache_key: str, native: NativeUpstream, dialect: str, stream: bool) -> None:
    call = CALLERS[dialect]
    question = f"cache test {dialect} {stream}"
    before = upstream_calls(native)
    first, missed = call(cache_gw, cache_key, CACHE_MODEL, question, stream)
    assert missed["x-tt-cache"] == "miss" and upstream_calls(native) == before + 1
    cache_gw.log_entry(missed["x-tt-request-id"])  # stored once the request ended
    second, hit = call(cache_gw, cache_key, CACHE_MODEL, question, stream)
    assert second == first == "Hello from openai"
    assert upstream_calls(native) == before + 1  # the upstream never saw the second request
    assert hit["x-tt-cache"] == "hit"
    # the upstream counted 20 input and 9 output tokens: 29 tokens at 0.1 USD per 1M instead of 20 x 1 + 9 x 2
    assert (hit["x-tt-cache-read-tokens"], hit["x-tt-cache-write-tokens"], hit["x-tt-cache-savings"]) == (
        "29", "0", "0.000035100")
    row = charge(cache_gw, hit["x-tt-request-id"])
    assert (row["source"], row["input_tokens"], row["output_tokens"], row["cost"]) == ("cache", 20, 9, 2900)
    assert row["cache_read_tokens"] == 29  # as the header says: every token of a hit was read from the cache
    assert row["savings"] == 35100
    entry = cache_gw.log_entry(hit["x-tt-request-id"])
    assert entry["cache"] == "hit" and entry["usage_source"] == "cache"


def test_an_answer_made_through_one_format_serves_the_others(
        cache_gw: GatewayProcess, cache_key: str, native: NativeUpstream) -> None:
    before = upstream_calls(native)
    _, missed = anthropic_call(cache_gw, cache_key, "scripted-gemini", "one answer, three formats", stream=True)
    assert missed["x-tt-cache"] == "miss"
    cache_gw.log_entry(missed["x-tt-request-id"])
    text_openai, h_openai = openai_call(cache_gw, cache_key, "scripted-gemini", "one answer, three formats", False)
    text_gemini, h_gemini = gemini_call(cache_gw, cache_key, "scripted-gemini", "one answer, three formats", True)
    assert h_openai["x-tt-cache"] == h_gemini["x-tt-cache"] == "hit"
    assert text_openai == text_gemini == "Hello from gemini" and upstream_calls(native) == before + 1


def test_bypass_and_non_deterministic_requests_never_touch_the_cache(
        cache_gw: GatewayProcess, cache_key: str, native: NativeUpstream) -> None:
    _, first = openai_call(cache_gw, cache_key, CACHE_MODEL, "bypass me", False, {"X-TT-Cache": "bypass"})
    _, second = openai_call(cache_gw, cache_key, CACHE_MODEL, "bypass me", False, {"X-TT-Cache": "bypass"})
    assert first["x-tt-cache"] == second["x-tt-cache"] == "bypass"
    _, third = openai_call(cache_gw, cache_key, CACHE_MODEL, "bypass me", False)
    assert third["x-tt-cache"] == "miss"  # bypassed requests stored nothing
    client = OpenAI(base_url=cache_gw.base_url, api_key=cache_key, max_retries=0)
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model=CACHE_MODEL, messages=[{"role": "user", "content": "warm"}], temperature=0.8)
        assert raw.headers["x-tt-cache"] == "bypass"
    opted = []
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model=CACHE_MODEL, messages=[{"role": "user", "content": "warm"}], temperature=0.8,
            extra_headers={"X-TT-Cache": "use"})
        cache_gw.log_entry(raw.headers["x-tt-request-id"])  # the answer is stored as the request ends
        opted.append(raw.headers["x-tt-cache"])
    assert opted == ["miss", "hit"]
    with pytest.raises(Exception) as refused:
        client.chat.completions.create(model=CACHE_MODEL, messages=[{"role": "user", "content": "x"}],
                                       extra_headers={"X-TT-Cache": "sometimes"})
    assert getattr(refused.value, "status_code", None) == 400 and "'use' or 'bypass'" in str(refused.value)


def test_the_upstreams_prompt_cache_shows_in_the_headers_of_a_miss(cache_gw: GatewayProcess, cache_key: str) -> None:
    # the "cached" model's upstream reports 20 input tokens, 8 read from its prompt cache and 4 written to it
    _, headers = openai_call(cache_gw, cache_key, "cached-anthropic", "prompt cache", False, {"X-TT-Cache": "bypass"})
    assert (headers["x-tt-cache"], headers["x-tt-cache-read-tokens"], headers["x-tt-cache-write-tokens"],
            headers["x-tt-cache-savings"]) == ("bypass", "8", "4", "0.000006200")
    row = charge(cache_gw, headers["x-tt-request-id"])
    assert (row["cache_read_tokens"], row["cache_write_tokens"], row["savings"]) == (8, 4, 6200)
    _, streamed = openai_call(cache_gw, cache_key, "cached-anthropic", "prompt cache", True, {"X-TT-Cache": "bypass"})
    assert streamed["x-tt-cache"] == "bypass" and "x-tt-cache-savings" not in streamed  # known only at the end
    row = charge(cache_gw, streamed["x-tt-request-id"])
    assert (row["cache_read_tokens"], row["cache_write_tokens"], row["savings"]) == (8, 4, 6200)


def test_each_account_has_its_own_cache(cache_gw: GatewayProcess, cache_key: str) -> None:
    cli(cache_gw.config, "accounts", "create", "neighbour", "--credit", "10", env=cache_gw.env)
    other = cli(cache_gw.config, "keys", "create", "--account", "neighbour", env=cache_gw.env)["key"]
    _, mine = openai_call(cache_gw, cache_key, CACHE_MODEL, "private answer", False)
    cache_gw.log_entry(mine["x-tt-request-id"])
    _, theirs = openai_call(cache_gw, other, CACHE_MODEL, "private answer", False)
    _, mine_again = openai_call(cache_gw, cache_key, CACHE_MODEL, "private answer", False)
    assert (mine["x-tt-cache"], theirs["x-tt-cache"], mine_again["x-tt-cache"]) == ("miss", "miss", "hit")


def test_a_hit_is_refused_like_any_request_when_the_wallet_cannot_cover_it(cache_gw: GatewayProcess) -> None:
    cli(cache_gw.config, "accounts", "create", "thrifty", "--credit", "0.001", env=cache_gw.env)
    key = cli(cache_gw.config, "keys", "create", "--account", "thrifty", env=cache_gw.env)["key"]
    _, missed = openai_call(cache_gw, key, CACHE_MODEL, "thrifty question", False)
    cache_gw.log_entry(missed["x-tt-request-id"])
    left = cli(cache_gw.config, "wallet", "show", "thrifty", env=cache_gw.env)["balance"]
    # leave 2,899 nano-USD: one nano-dollar short of the hit's 2,900
    cli(cache_gw.config, "wallet", "adjust", "thrifty", str(-Decimal(left - 2899) / 10**9), "--note", "test",
        env=cache_gw.env)
    with pytest.raises(Exception) as refused:
        openai_call(cache_gw, key, CACHE_MODEL, "thrifty question", False)
    assert getattr(refused.value, "status_code", None) == 402
    assert refused.value.body["code"] == "billing_shortfall"  # type: ignore[attr-defined]
    wallet = cli(cache_gw.config, "wallet", "show", "thrifty", env=cache_gw.env)
    assert (wallet["balance"], wallet["held"]) == (2899, 0)


def test_answers_survive_a_restart(native: NativeUpstream, tmp_path: Path) -> None:
    gws = serve_gateway(tmp_path, partial(cache_config, native.base_url), {"TT_NATIVE_KEY": NATIVE_KEY},
                        "durable", "10", ("Traceback",))
    gw = next(gws)
    key = cli(gw.config, "keys", "create", "--account", "durable", env=gw.env)["key"]
    _, first = openai_call(gw, key, CACHE_MODEL, "remember me", True)
    gw.log_entry(first["x-tt-request-id"])
    gw.stop()
    again = GatewayProcess(gw.config, gw.log_path, gw.env)
    try:
        _, second = openai_call(again, key, CACHE_MODEL, "remember me", True)
        assert (first["x-tt-cache"], second["x-tt-cache"]) == ("miss", "hit")
    finally:
        again.stop()
    with pytest.raises(StopIteration):
        next(gws)  # the first process's stderr is checked as it ends
    conn = sqlite3.connect(str(tmp_path / "tokentoll.db"))
    assert conn.execute("SELECT COUNT(*) FROM response_cache").fetchone()[0] == 1


def test_an_answer_is_served_until_its_ttl_and_then_asked_again(native: NativeUpstream, tmp_path: Path) -> None:
    short = partial(matrix_config, native.base_url)
    gws = serve_gateway(tmp_path, lambda log: short(log) + "\n[cache]\nttl = 3\n", {"TT_NATIVE_KEY": NATIVE_KEY},
                        "brief", "10", ("Traceback",))
    gw = next(gws)
    key = cli(gw.config, "keys", "create", "--account", "brief", env=gw.env)["key"]
    _, first = openai_call(gw, key, CACHE_MODEL, "short-lived", False)
    stored_at = time.monotonic()
    gw.log_entry(first["x-tt-request-id"])
    states = []

    def expired() -> bool:
        _, headers = openai_call(gw, key, CACHE_MODEL, "short-lived", False)
        states.append((headers["x-tt-cache"], time.monotonic() - stored_at))
        gw.log_entry(headers["x-tt-request-id"])
        return headers["x-tt-cache"] == "miss"

    wait_for(expired, 20, "the cached answer to expire")
    assert first["x-tt-cache"] == "miss" and states[0][0] == "hit"  # served while fresh...
    assert states[-1][1] > 2.9  # ...and asked of the upstream again only once its 3 seconds (stored as the
    # request ended, a moment before the client measured) had passed
    assert all(state == "hit" for state, _ in states[:-1])
    with pytest.raises(StopIteration):
        next(gws)


def test_fields_a_passthrough_carries_beyond_the_internal_shape_are_part_of_the_key() -> None:
    chat = chat_client.parse_request(openai_body())
    plain = rc.cache_key("s", "m", 50, chat, rc.unmodeled("chat", openai_body(stream=True, user="u", metadata={"a": 1})))
    assert plain == rc.cache_key("s", "m", 50, chat)  # only fields that cannot change the answer: the shared key
    low = rc.cache_key("s", "m", 50, chat, rc.unmodeled("chat", openai_body(verbosity="low")))
    high = rc.cache_key("s", "m", 50, chat, rc.unmodeled("chat", openai_body(verbosity="high")))
    assert len({plain, low, high}) == 3
    named = {**openai_body(), "messages": [{"role": "user", "content": "cache me", "name": "alice"}]}
    assert rc.unmodeled("chat", named) == {"(messages)": [{"name": "alice"}]}
    gemini = {"contents": [{"role": "user", "parts": [{"text": "x"}]}],
              "generationConfig": {"temperature": 0, "responseLogprobs": True}, "safetySettings": [{"x": 1}]}
    assert rc.unmodeled("generate", gemini) == {"safetySettings": [{"x": 1}],
                                                "(generationConfig)": {"responseLogprobs": True}}
    assert rc.unmodeled("messages", {"model": "m", "max_tokens": 5, "messages": [], "temperature": 0}) == {}


def test_a_passthrough_request_with_extra_fields_is_cached_apart(cache_gw: GatewayProcess, cache_key: str) -> None:
    client = OpenAI(base_url=cache_gw.base_url, api_key=cache_key, max_retries=0)
    states = []
    for verbosity in ("low", "high", "high"):
        raw = client.chat.completions.with_raw_response.create(
            model=CACHE_MODEL, messages=[{"role": "user", "content": "verbose?"}], temperature=0,
            extra_body={"verbosity": verbosity})
        cache_gw.log_entry(raw.headers["x-tt-request-id"])
        states.append(raw.headers["x-tt-cache"])
    assert states == ["miss", "miss", "hit"]


def test_every_response_of_a_generation_route_says_its_cache_state(cache_gw: GatewayProcess, cache_key: str) -> None:
    for path, body in (("/v1/chat/completions", b"{not json"), ("/v1/responses", b'{"model": "nope"}'),
                       ("/v1/messages", b"{}")):
        r = httpx2.post(cache_gw.url + path, content=body, headers={"Authorization": f"Bearer {cache_key}"})
        assert r.status_code in (400, 404) and r.headers["x-tt-cache"] == "bypass", (path, r.status_code)
    unauthenticated = httpx2.post(cache_gw.url + "/v1/chat/completions", content=b"{}")
    assert unauthenticated.status_code == 401 and unauthenticated.headers["x-tt-cache"] == "bypass"
    for path, field in (("/v1/responses", "input"), ("/v1/completions", "prompt")):  # refused where nothing is cached too
        r = httpx2.post(cache_gw.url + path, headers={"Authorization": f"Bearer {cache_key}", "X-TT-Cache": "yes"},
                        json={"model": CACHE_MODEL, field: "x"})
        assert r.status_code == 400 and "'use' or 'bypass'" in r.text, path


def test_scope_is_the_account_unless_the_cache_is_shared() -> None:
    assert rc.scope_of(7, shared=False) == "account:7" and rc.scope_of(7, shared=True) == "shared"
    assert rc.scope_of(None, shared=False) == "shared"  # billing off: there are no accounts to keep apart
    chat = chat_client.parse_request(openai_body())
    keys = {rc.cache_key(rc.scope_of(a, shared=True), "m", 50, chat) for a in (1, 2)}
    assert len(keys) == 1  # shared: one answer serves every account


# -- an answer is in the cache by the time its client has it (issue 18, item 10) ----------------------

RACE_PAIRS = 25


def raw_post(port: int, path: str, body: dict[str, Any], key: str) -> tuple[str, bytes]:
    """One request on a fresh connection with http.client, read to its very end: its X-TT-Cache and body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("POST", path, orjson.dumps(body), {"Authorization": f"Bearer {key}",
                                                        "Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == 200, data
        return resp.getheader("x-tt-cache") or "", data
    finally:
        conn.close()


def keep_busy(gw: GatewayProcess, key: str, stop: threading.Event) -> None:
    """Slow streams, one after another, until `stop`: other requests in flight, as on a real gateway."""
    client = OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=20)
    while not stop.is_set():
        for _ in client.chat.completions.create(model="demo-slow", stream=True, max_tokens=64, messages=[
                {"role": "user", "content": "one two three four five six seven eight nine ten " * 3}]):
            if stop.is_set():
                break


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
@pytest.mark.parametrize("model", [CACHE_MODEL, "scripted-anthropic"], ids=["passthrough", "translated"])
def test_the_same_request_sent_again_at_once_is_a_hit(cache_gw: GatewayProcess, cache_key: str, model: str,
                                                      stream: bool) -> None:
    """The answer was stored after its last bytes went out: a client that sent the same request as soon as it had
    read the first answer could miss (about 1 pair in 20 with http.client). Now it is stored before."""
    port = int(cache_gw.url.rsplit(":", 1)[1])
    stop = threading.Event()
    busy = threading.Thread(target=keep_busy, args=(cache_gw, cache_key, stop), daemon=True)
    busy.start()
    try:
        for i in range(RACE_PAIRS):
            body = {"model": model, "temperature": 0, "max_tokens": 20, "stream": stream,
                    "messages": [{"role": "user", "content": f"back to back {model} {stream} {i} {time.time_ns()}"}]}
            first, answer = raw_post(port, "/v1/chat/completions", body, cache_key)
            second, again = raw_post(port, "/v1/chat/completions", body, cache_key)
            assert (first, second) == ("miss", "hit"), f"pair {i}"
            if not stream:
                assert orjson.loads(again)["choices"][0]["message"] == orjson.loads(answer)["choices"][0]["message"]
    finally:
        stop.set()
        busy.join(timeout=30)
