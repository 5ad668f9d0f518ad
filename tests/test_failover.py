"""Failover between a model's channels: the order (priority, then weight), the circuit breaker (pure, with the
clock passed in), and through the gateway: retries before the first byte only, one hold per request, all-429s."""

from __future__ import annotations

import random
import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from core.config import Channel, Model, Provider, Routing, Timeouts
from billing.pricing import TokenPrices
from core.routing import Router
from tests.conftest import NATIVE_KEY, UPSTREAM_KEY, GatewayProcess, NativeUpstream, base_config, cli, serve_gateway
from tests.mock_upstream import MockUpstream

# -- the order and the breaker (pure) -------------------------------------------------------------


def provider(name: str) -> Provider:
    return Provider(name, "openai", "http://x", "", Timeouts())


def model(*channels: Channel) -> Model:
    ordered = tuple(sorted(channels, key=lambda c: -c.priority))
    return Model("m", ordered[0].provider, ordered[0].upstream_model, 100, TokenPrices(), "x", 0, channels=ordered)


A, B, C = (Channel(provider(n), "m", priority=p, weight=w) for n, p, w in (("a", 2, 1), ("b", 1, 3), ("c", 1, 1)))


def test_the_highest_priority_comes_first_and_weights_share_the_rest() -> None:
    router = Router(Routing(), random.Random(7))
    m = model(B, C, A)
    firsts_after_a = Counter(router.order(m, 0.0)[1].provider.name for _ in range(4000))
    assert all(router.order(m, 0.0)[0] is A for _ in range(50))
    assert 0.72 < firsts_after_a["b"] / 4000 < 0.78  # weight 3 against 1
    assert sorted(c.provider.name for c in router.order(m, 0.0)) == ["a", "b", "c"]  # every channel, once


def test_a_failing_channel_is_taken_out_then_probed_by_one_request_and_back_in_when_it_works() -> None:
    router = Router(Routing(breaker_failures=2, breaker_seconds=30), random.Random(1))
    m = model(A, B)
    router.failed(A, now=0.0)
    assert router.order(m, 1.0)[0] is A  # one failure: still first
    router.failed(A, now=1.0)
    assert [c.provider.name for c in router.order(m, 2.0)] == ["b", "a"]  # out: tried last, not dropped
    assert router.order(m, 31.5)[0] is A  # rested: back for one probe
    router.trying(A, 31.5)
    assert router.order(m, 31.6)[0] is B  # while the probe runs, the others keep away
    router.failed(A, now=32.0)  # the probe failed: out again
    assert router.order(m, 40.0)[0] is B and router.order(m, 62.5)[0] is A
    router.trying(A, 62.5)
    router.succeeded(A)
    assert router.order(m, 62.6)[0] is A and not router.is_out(A, 62.6)


def test_retry_after_rests_a_channel_and_tells_when_the_first_is_back() -> None:
    router = Router(Routing(breaker_failures=5), random.Random(1))
    m = model(A, B)
    router.failed(A, now=0.0, retry_after=7)
    assert router.order(m, 1.0)[0] is B and router.retry_after(m, 1.0) is None  # B is still there
    router.failed(B, now=1.0, retry_after=3)
    assert router.retry_after(m, 2.0) == pytest.approx(2.0)  # B is back at 4, A at 7
    assert router.order(m, 7.5)[0] is A


def test_an_upstreams_retry_after_is_not_stretched_by_the_breaker() -> None:
    """Issue 18.9: an upstream that said retry-after: 2 three times gave the third caller retry-after: 30 (the
    breaker's rest); it says when it takes requests again, and the client is told that."""
    router = Router(Routing(breaker_failures=3, breaker_seconds=30), random.Random(1))
    m = model(A)
    for now in (0.0, 0.1, 0.2):
        router.failed(A, now=now, retry_after=2)
    assert router.retry_after(m, 0.2) == pytest.approx(2.0)
    assert router.order(m, 2.3)[0] is A and not router.is_out(A, 2.3)
    for now in (3.0, 3.1, 3.2):  # failures with no Retry-After still open the breaker
        router.failed(A, now=now)
    assert router.retry_after(m, 3.2) == pytest.approx(30.0)


# -- through the gateway --------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when this returns: connections are refused


def failover_config(upstream: str, native: str, log_path: Path) -> str:
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    price = 'price = { input = "1", output = "2" }'

    def channels(name: str, *pairs: tuple[str, str]) -> str:
        listed = ", ".join(f'{{ provider = "{p}", upstream_model = "{m}", priority = {len(pairs) - i} }}'
                           for i, (p, m) in enumerate(pairs))
        return f'[models.{name}]\nchannels = [{listed}]\nmax_output_tokens = 100\n{price}\n'

    return f"""
{base_config(log_path, hold_ttl=300)}
[routing]
breaker_failures = 2
breaker_seconds = 300

[providers.mock]
format = "openai"
base_url = "{upstream}"
api_key_env = "TT_TEST_UPSTREAM_KEY"
timeouts = {{ connect = 2, first_byte = 5, idle = 5, total = 60 }}

[providers.dead]
format = "openai"
base_url = "{dead}"
api_key_env = "TT_TEST_UPSTREAM_KEY"
timeouts = {{ connect = 1, first_byte = 1, idle = 1, total = 10 }}

[providers.claude]
format = "anthropic"
base_url = "{native}/anthropic/v1"
api_key_env = "TT_NATIVE_KEY"
timeouts = {{ connect = 2, first_byte = 5, idle = 5, total = 60 }}

{channels("fo-500", ("mock", "status-500"), ("mock", "ok-after-500"))}
{channels("fo-dead", ("dead", "ok"), ("mock", "ok-after-dead"))}
{channels("fo-400", ("mock", "status-400"), ("mock", "ok-after-400"))}
{channels("fo-429", ("mock", "status-429"), ("mock", "status-429-b"))}
{channels("fo-die", ("mock", "die"), ("mock", "ok-after-die"))}
{channels("fo-cross", ("claude", "status-529"), ("mock", "ok-after-claude"))}
{channels("fo-breaker", ("mock", "status-503-x"), ("mock", "ok-after-breaker"))}
"""


@pytest.fixture(scope="module")
def fo_gw(upstream: MockUpstream, native: NativeUpstream,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    yield from serve_gateway(tmp_path_factory.mktemp("failover"),
                             lambda log: failover_config(upstream.base_url, native.base_url, log),
                             {"TT_TEST_UPSTREAM_KEY": UPSTREAM_KEY, "TT_NATIVE_KEY": NATIVE_KEY}, "failover", "10",
                             ("Traceback",))


@pytest.fixture(scope="module")
def fo_client(fo_gw: GatewayProcess) -> openai.OpenAI:
    key = cli(fo_gw.config, "keys", "create", "--account", "failover", env=fo_gw.env)["key"]
    return openai.OpenAI(base_url=fo_gw.base_url, api_key=key, max_retries=0, timeout=20)


MSG = [{"role": "user", "content": "fail over, please"}]


def calls(upstream: MockUpstream, model: str) -> int:
    return sum(1 for r in upstream.requests if r["body"].get("model") == model)


def ledger_kinds(gw: GatewayProcess, request_id: str) -> list[str]:
    history = cli(gw.config, "wallet", "history", "failover", "--limit", "200", env=gw.env)
    return sorted(e["kind"] for e in history if e["request_id"] == request_id)


@pytest.mark.parametrize("name", ["fo-500", "fo-dead", "fo-cross"])
@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
def test_a_failure_before_the_first_byte_moves_on_to_the_next_channel_under_one_hold(
        fo_gw: GatewayProcess, fo_client: openai.OpenAI, upstream: MockUpstream, name: str, stream: bool) -> None:
    served_by = {"fo-500": "ok-after-500", "fo-dead": "ok-after-dead", "fo-cross": "ok-after-claude"}[name]
    before = calls(upstream, served_by)
    if stream:
        with fo_client.chat.completions.with_streaming_response.create(model=name, messages=MSG, stream=True) as r:
            text = "".join(c.choices[0].delta.content or "" for c in r.parse() if c.choices)
            request_id = r.headers["x-tt-request-id"]
    else:
        raw = fo_client.chat.completions.with_raw_response.create(model=name, messages=MSG)
        text, request_id = raw.parse().choices[0].message.content, raw.headers["x-tt-request-id"]
    assert text and calls(upstream, served_by) == before + 1
    entry = fo_gw.log_entry(request_id)
    assert (entry["status"], entry["attempts"], entry["provider"], entry["model"]) == (200, 2, "mock", name)
    assert ledger_kinds(fo_gw, request_id) == ["hold", "settle"]  # one hold for both attempts


def test_a_refusal_of_the_request_itself_is_not_retried(fo_gw: GatewayProcess, fo_client: openai.OpenAI,
                                                        upstream: MockUpstream) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        fo_client.chat.completions.create(model="fo-400", messages=MSG)
    assert calls(upstream, "ok-after-400") == 0
    assert fo_gw.log_entry(err.value.request_id)["attempts"] == 1  # type: ignore[arg-type]


def test_nothing_is_retried_once_the_answer_has_started(fo_gw: GatewayProcess, fo_client: openai.OpenAI,
                                                        upstream: MockUpstream) -> None:
    with pytest.raises(openai.APIError):
        for _ in fo_client.chat.completions.create(model="fo-die", messages=MSG, stream=True):
            pass
    assert calls(upstream, "ok-after-die") == 0


def test_when_every_channel_says_429_the_client_gets_429_with_the_earliest_retry_after(
        fo_client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as err:
        fo_client.chat.completions.create(model="fo-429", messages=MSG)
    assert err.value.response.headers["retry-after"] == "7"  # both upstreams said 7 seconds


def test_a_channel_that_keeps_failing_is_taken_out(fo_gw: GatewayProcess, fo_client: openai.OpenAI,
                                                   upstream: MockUpstream) -> None:
    for _ in range(2):  # breaker_failures = 2
        assert fo_client.chat.completions.create(model="fo-breaker", messages=MSG).choices[0].message.content
    failed_before = calls(upstream, "status-503-x")
    assert failed_before == 2
    for _ in range(3):
        raw = fo_client.chat.completions.with_raw_response.create(model="fo-breaker", messages=MSG)
        assert fo_gw.log_entry(raw.headers["x-tt-request-id"])["attempts"] == 1  # straight to the second
    assert calls(upstream, "status-503-x") == failed_before  # out of the rotation for breaker_seconds
