"""The Responses API for OpenAI-format upstreams that serve only Chat Completions (providers.*.responses_api):
the official openai SDK through the real gateway, against a llama.cpp-shaped engine (tests/mock_upstream.py)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import openai
import pytest

from billing.metering import count_text
from billing.pricing import TOKENS_PER_PRICE, ceil_div
from core.config import ConfigError, Provider, Timeouts, parse
from core.dialects import Call
from core.translate import finish_translate, plan_request
from tests.conftest import UPSTREAM_KEY, GatewayProcess, base_config, cli, serve_gateway, wallet
from tests.mock_upstream import ChatOnlyUpstream, MockUpstream

QUESTION = "The quick brown fox jumps over the lazy dog"
WEATHER_TOOL: dict[str, Any] = {
    "type": "function", "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
LIMIT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens", "n_predict", "max_new_tokens")


def config(engine: str, mock: str, log_path: Path) -> str:
    """The engine three times (translated by the setting, translated by default, passed through by the
    setting) and the Responses-serving mock passed through by the setting. $1 / $2 per 1M tokens."""
    providers = {"llama": "responses_api = false\n", "llama-auto": "", "llama-on": "responses_api = true\n"}
    parts = [base_config(log_path)]
    for name, setting in providers.items():  # llama.cpp's server takes no key
        parts.append(f'[providers.{name}]\nformat = "openai"\nbase_url = "{engine}"\n{setting}'
                     'timeouts = { connect = 2, first_byte = 5, idle = 5, total = 30 }\n')
    parts.append(f'[providers.mock]\nformat = "openai"\nbase_url = "{mock}"\napi_key_env = "TT_TEST_UPSTREAM_KEY"\n'
                 'responses_api = true\ntimeouts = { connect = 2, first_byte = 5, idle = 5, total = 30 }\n')
    for model, provider, upstream_model in (("local-llama", "llama", "llama"), ("local-vllm", "llama", "vllm"),
                                            ("local-auto", "llama-auto", "llama"), ("local-on", "llama-on", "llama"),
                                            ("mock-pass", "mock", "ok")):
        parts.append(f'[models.{model}]\nprovider = "{provider}"\nupstream_model = "{upstream_model}"\n'
                     'max_output_tokens = 500\nprice = { input = "1", output = "2" }\n')
    return "\n".join(parts)


@pytest.fixture(scope="module")
def engine() -> Iterator[ChatOnlyUpstream]:
    server = ChatOnlyUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gw(engine: ChatOnlyUpstream, upstream: MockUpstream,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    yield from serve_gateway(tmp_path_factory.mktemp("via-chat"), partial(config, engine.base_url, upstream.base_url),
                             {"TT_TEST_UPSTREAM_KEY": UPSTREAM_KEY}, "via-chat", "10", ("Traceback",))


@pytest.fixture(scope="module")
def client(gw: GatewayProcess) -> openai.OpenAI:
    key = cli(gw.config, "keys", "create", "--account", "via-chat", env=gw.env)["key"]
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=20)


def funded_client(gw: GatewayProcess, account: str) -> openai.OpenAI:
    """A client of a fresh account holding $1, whose wallet shows exactly what its requests cost."""
    cli(gw.config, "accounts", "create", account, "--credit", "1", env=gw.env)
    key = cli(gw.config, "keys", "create", "--account", account, env=gw.env)["key"]
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=20)


def cost(input_tokens: int, output_tokens: int) -> int:
    """What the test models charge, in nano-USD ($1 / $2 per 1M tokens)."""
    return ceil_div(input_tokens * 1_000_000_000 + output_tokens * 2_000_000_000, TOKENS_PER_PRICE)


def only_chat(engine: ChatOnlyUpstream, seen: int) -> dict[str, Any]:
    """The one request the engine got since `seen`: a chat completion, never a /v1/responses call."""
    got = engine.since(seen)
    assert [r["path"] for r in got] == ["/v1/chat/completions"], got
    return got[0]["body"]


def limits(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k in LIMIT_FIELDS}


# -- answers ------------------------------------------------------------------------------------------------


def test_a_non_stream_answer_is_charged_the_engines_usage(gw: GatewayProcess, engine: ChatOnlyUpstream) -> None:
    sdk = funded_client(gw, "via-chat-body")
    seen = len(engine.requests)
    raw = sdk.responses.with_raw_response.create(model="local-llama", input=QUESTION, instructions="Echo me.",
                                                 max_output_tokens=50)
    response = raw.parse()
    assert response.output_text == QUESTION and response.status == "completed"
    sent = only_chat(engine, seen)
    assert sent["messages"] == [{"role": "system", "content": "Echo me."}, {"role": "user", "content": QUESTION}]
    assert sent["model"] == "llama" and limits(sent) == {"max_tokens": 50}  # the field llama.cpp reads
    reported = engine.requests[-1]["usage"]
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == \
        (reported["prompt_tokens"], reported["completion_tokens"])
    entry = gw.log_entry(raw.headers["x-tt-request-id"])
    assert entry["usage_source"] == "upstream" and entry["status"] == 200
    assert entry["cost_nanousd"] == cost(reported["prompt_tokens"], reported["completion_tokens"]) > 0
    shown = wallet(gw, "via-chat-body")
    assert (shown["balance"], shown["held"]) == (1_000_000_000 - entry["cost_nanousd"], 0)


def test_a_stream_without_engine_usage_is_parsed_by_the_sdk_and_charged_what_was_relayed(
        gw: GatewayProcess, engine: ChatOnlyUpstream) -> None:
    """llama.cpp sends no usage in streams, even asked: the gateway counts what it relayed, and says so in
    response.completed."""
    sdk = funded_client(gw, "via-chat-stream")
    seen = len(engine.requests)
    with sdk.responses.with_streaming_response.create(model="local-llama", input=QUESTION, stream=True) as resp:
        rid = resp.headers["x-tt-request-id"]
        events = list(resp.parse())
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    final = events[-1].response  # type: ignore[union-attr]
    assert "".join(deltas) == QUESTION == final.output_text
    sent = only_chat(engine, seen)
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert limits(sent) == {"max_tokens": 500}  # no limit asked: the model's cap
    entry = gw.log_entry(rid)
    assert entry["usage_source"] == "observed"
    assert final.usage is not None and final.usage.output_tokens == sum(map(count_text, deltas)) > 0
    assert (final.usage.input_tokens, final.usage.output_tokens) == (entry["input_tokens"], entry["output_tokens"])
    assert entry["cost_nanousd"] == cost(entry["input_tokens"], entry["output_tokens"])
    shown = wallet(gw, "via-chat-stream")
    assert (shown["balance"], shown["held"]) == (1_000_000_000 - entry["cost_nanousd"], 0)


def test_a_stream_with_engine_usage_is_charged_that_usage(gw: GatewayProcess, client: openai.OpenAI,
                                                          engine: ChatOnlyUpstream) -> None:
    """vLLM sends the usage chunk when asked: it is the truth, and response.completed carries it."""
    seen = len(engine.requests)
    with client.responses.stream(model="local-vllm", input=QUESTION) as stream:
        final = stream.get_final_response()
    assert only_chat(engine, seen)["stream_options"] == {"include_usage": True}
    reported = engine.requests[-1]["usage"]
    assert final.output_text == QUESTION and final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens) == \
        (reported["prompt_tokens"], reported["completion_tokens"])
    entry = gw.log_entry(final.id.replace("resp_", "req_", 1))
    assert entry["usage_source"] == "upstream" and entry["input_tokens"] == reported["prompt_tokens"]


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
def test_max_output_tokens_reaches_the_engine_as_max_tokens_and_cuts_the_answer(
        client: openai.OpenAI, engine: ChatOnlyUpstream, stream: bool) -> None:
    seen = len(engine.requests)
    if stream:  # the SDK's stream helper waits for response.completed only: the events themselves
        events = list(client.responses.create(model="local-llama", input=QUESTION, max_output_tokens=3, stream=True))
        assert events[-1].type == "response.incomplete"
        response = events[-1].response
    else:
        response = client.responses.create(model="local-llama", input=QUESTION, max_output_tokens=3)
    assert limits(only_chat(engine, seen)) == {"max_tokens": 3}
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "The quick brown"


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
def test_a_function_tool_round_trip(client: openai.OpenAI, engine: ChatOnlyUpstream, stream: bool) -> None:
    """The call comes back as a function_call item; its output goes back as a chat `tool` message."""
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    seen = len(engine.requests)
    if stream:
        with client.responses.stream(model="local-llama", input=ask, tools=[WEATHER_TOOL]) as s:
            kinds = [e.type for e in s]
            first = s.get_final_response()
        assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    else:
        first = client.responses.create(model="local-llama", input=ask, tools=[WEATHER_TOOL])
    sent = only_chat(engine, seen)
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather for a city", "parameters": WEATHER_TOOL["parameters"]}}]
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and first.status == "completed"
    call = calls[0]
    assert (call.name, call.arguments) == ("get_weather", '{"city": "Paris"}') and call.call_id.startswith("call_")
    follow_up = [*ask, call.model_dump(exclude_none=True),
                 {"type": "function_call_output", "call_id": call.call_id, "output": "22 C and sunny"}]
    seen = len(engine.requests)
    second = client.responses.create(model="local-llama", input=follow_up,  # type: ignore[arg-type]
                                     tools=[WEATHER_TOOL])
    sent = only_chat(engine, seen)
    function = {"name": "get_weather", "arguments": call.arguments}
    assert sent["messages"][1:] == [
        {"role": "assistant", "content": None, "tool_calls": [{"id": call.call_id, "type": "function",
                                                               "function": function}]},
        {"role": "tool", "tool_call_id": call.call_id, "content": "22 C and sunny"}]
    assert second.output_text == "The tool said: 22 C and sunny"


# -- what cannot be translated ------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
def test_previous_response_id_is_a_clear_400_and_the_engine_gets_nothing(
        gw: GatewayProcess, engine: ChatOnlyUpstream, stream: bool) -> None:
    sdk = funded_client(gw, f"via-chat-previous-{stream}")
    seen = len(engine.requests)
    with pytest.raises(openai.BadRequestError) as err:
        sdk.responses.create(model="local-llama", input="and then?", previous_response_id="resp_abc123", stream=stream)
    assert err.value.status_code == 400 and err.value.param == "previous_response_id"
    assert err.value.code == "invalid_request" and err.value.type == "invalid_request_error"
    assert "whole conversation in 'input'" in err.value.message and "no Responses API" in err.value.message
    assert engine.since(seen) == []
    shown = wallet(gw, f"via-chat-previous-{stream}")
    assert (shown["balance"], shown["held"]) == (1_000_000_000, 0)


def test_a_built_in_tool_is_a_clear_400_and_the_engine_gets_nothing(client: openai.OpenAI,
                                                                    engine: ChatOnlyUpstream) -> None:
    seen = len(engine.requests)
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="local-llama", input="news?", tools=[{"type": "web_search"}])
    assert err.value.param == "tools[0].type" and "'web_search' tool" in err.value.message
    assert engine.since(seen) == []


# -- the setting --------------------------------------------------------------------------------------------


def test_by_default_a_local_server_is_translated(gw: GatewayProcess, client: openai.OpenAI,
                                                 engine: ChatOnlyUpstream) -> None:
    """The issue: a llama.cpp server configured as usual (no setting) answered responses.create with a 404."""
    seen = len(engine.requests)
    assert client.responses.create(model="local-auto", input=QUESTION).output_text == QUESTION
    only_chat(engine, seen)
    # the start-up log says which providers translate, so an operator upgrading from passthrough sees it
    told = [line for line in gw.stderr_lines if "Responses API calls are translated" in line]
    assert sorted(line.split("providers.")[1].split(":")[0] for line in told) == ["llama", "llama-auto"]


def test_with_the_setting_on_responses_pass_through_unchanged(client: openai.OpenAI, engine: ChatOnlyUpstream,
                                                              upstream: MockUpstream) -> None:
    response = client.responses.create(model="mock-pass", input="plain answer", max_output_tokens=20)
    assert response.output_text == "plain answer"
    sent = upstream.last_request("ok")
    assert sent["path"] == "/v1/responses" and sent["body"]["input"] == "plain answer"
    assert limits(sent["body"]) == {"max_output_tokens": 20}
    seen = len(engine.requests)  # an engine without the API, said to have it: its own 404, as before
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="local-on", input=QUESTION)
    assert [r["path"] for r in engine.since(seen)] == ["/v1/responses"]


def provider_config(**provider: Any) -> dict[str, Any]:
    return {"providers": {"up": {"format": "openai", "base_url": "http://127.0.0.1:8080/v1", **provider}},
            "models": {"m": {"provider": "up", "price": {"input": "1", "output": "2"}}}}


@pytest.mark.parametrize("base_url, serves", [
    ("http://127.0.0.1:8080/v1", False),  # llama.cpp, vLLM, Ollama, LM Studio on this machine
    ("http://localhost:11434/v1", False),
    ("https://api.deepseek.com/v1", False),
    ("https://openrouter.ai/api/v1", False),
    ("https://api.openai.com/v1", True),
    ("https://my-team.openai.azure.com/openai/v1", True),
    ("https://my-team.openai.azure.com/openai/v1/", True),
    ("https://my-team.openai.azure.com/openai/deployments/gpt-4o", False),  # a deployment's URL has no /responses
])
def test_auto_passes_through_only_to_hosts_known_to_serve_the_responses_api(base_url: str, serves: bool) -> None:
    assert parse(provider_config(base_url=base_url), {}).providers["up"].responses_api is serves
    assert parse(provider_config(base_url=base_url, responses_api="auto"), {}).providers["up"].responses_api is serves
    chosen = parse(provider_config(base_url=base_url, responses_api=not serves), {}).providers["up"]
    assert chosen.responses_api is not serves  # the operator's choice wins
    demo = parse({**provider_config(), "providers": {"up": {"builtin": "demo"}}}, {}).providers["up"]
    assert demo.responses_api is True  # the demo provider serves /v1/responses


@pytest.mark.parametrize("provider", [
    {"responses_api": "yes"}, {"responses_api": "false"}, {"responses_api": 1}, {"responses_api": []},
    {"format": "anthropic", "responses_api": False}, {"format": "gemini", "responses_api": True},
])
def test_a_bad_setting_is_a_config_error_naming_the_key(provider: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as err:
        parse(provider_config(**provider), {})
    assert str(err.value).startswith("providers.up.responses_api: "), str(err.value)


@pytest.mark.parametrize("serves, lane, path", [(True, "openai", "/responses"),
                                                (False, "translate", "/chat/completions")])
def test_the_setting_picks_the_lane(serves: bool, lane: str, path: str) -> None:
    settings = parse(provider_config(responses_api=serves, limit_field="max_completion_tokens"), {})
    model = settings.models["m"]
    plan = plan_request(Call("openai", "responses"), {"model": "m", "input": "hi", "max_output_tokens": 9}, model,
                        "req_1")
    if plan.chat is not None:
        finish_translate(plan, model)
    assert (plan.lane, plan.path, plan.max_output) == (lane, path, 9)
    field = b'"max_output_tokens":9' if serves else b'"max_completion_tokens":9'  # translated: the provider's field
    assert field in plan.body
    assert Provider("p", "openai", "", "", Timeouts()).responses_api is True  # a Provider built in code: as before
