"""The relay end to end: the official openai SDK against the real gateway under hypercorn, with a
real mock upstream on loopback."""

from __future__ import annotations

import base64

import httpx2 as httpx
import openai
import orjson
import pytest

from billing.metering import count_text
from tests.conftest import UPSTREAM_KEY, GatewayProcess, wait_for
from tests.mock_upstream import AWKWARD_TEXTS, MockUpstream

MSG = [{"role": "user", "content": "The quick brown fox jumps over the lazy dog"}]


def test_chat_non_stream(client: openai.OpenAI, gateway: GatewayProcess, upstream: MockUpstream) -> None:
    raw = client.chat.completions.with_raw_response.create(model="mock-ok", messages=MSG)
    completion = raw.parse()
    assert completion.choices[0].message.content == MSG[0]["content"]
    assert completion.usage is not None and completion.usage.completion_tokens == count_text(MSG[0]["content"])
    rid = raw.headers["x-tt-request-id"]
    assert rid.startswith("req_")
    entry = gateway.log_entry(rid)
    assert entry["status"] == 200 and entry["usage_source"] == "upstream"
    assert entry["output_tokens"] == completion.usage.completion_tokens
    assert entry["input_tokens"] == completion.usage.prompt_tokens
    sent = upstream.last_request("ok")
    assert sent["body"]["model"] == "ok"  # the public name was mapped to the upstream's


def test_credentials_and_telemetry_never_forwarded(client: openai.OpenAI, upstream: MockUpstream,
                                                  api_key: str) -> None:
    client.chat.completions.create(model="mock-ok", messages=MSG, extra_headers={"OpenAI-Organization": "org-x"})
    headers = {k.lower(): v for k, v in upstream.last_request("ok")["headers"].items()}
    assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert not [k for k in headers if k.startswith("x-stainless")]
    assert "openai-organization" not in headers
    assert api_key not in str(headers) and api_key[6:] not in str(headers)
    assert headers["user-agent"].startswith("TokenToll/")


def test_chat_stream_without_usage_request(client: openai.OpenAI, gateway: GatewayProcess,
                                          upstream: MockUpstream) -> None:
    with client.chat.completions.with_streaming_response.create(model="mock-ok", messages=MSG, stream=True) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["cache-control"] == "no-cache"
        assert resp.headers["x-accel-buffering"] == "no"
        rid = resp.headers["x-tt-request-id"]
        chunks = list(resp.parse())
    assert all(c.choices for c in chunks), "the usage-only chunk must not reach a client that did not ask"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == MSG[0]["content"]
    assert upstream.last_request("ok")["body"]["stream_options"] == {"include_usage": True}
    entry = gateway.log_entry(rid)
    assert entry["usage_source"] == "upstream" and entry["output_tokens"] == count_text(text)
    assert entry["stream"] is True and entry["client_disconnected"] is False


def test_chat_stream_with_usage_request(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="mock-ok", messages=MSG, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == count_text(MSG[0]["content"])


def test_stream_helper_accumulates(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(model="mock-ok", messages=MSG) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == MSG[0]["content"]


def test_stream_without_upstream_usage_is_metered_per_chunk(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    with client.chat.completions.with_streaming_response.create(
            model="mock-no-usage", messages=MSG, stream=True, stream_options={"include_usage": True}) as resp:
        rid = resp.headers["x-tt-request-id"]
        chunks = list(resp.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    entry = gateway.log_entry(rid)
    assert entry["usage_source"] == "observed"
    assert text == MSG[0]["content"]
    per_chunk = sum(count_text(c.choices[0].delta.content or "") for c in chunks if c.choices)
    assert entry["output_tokens"] == per_chunk
    assert entry["input_tokens"] > 0


def test_completions_stream_and_non_stream(client: openai.OpenAI) -> None:
    done = client.completions.create(model="mock-ok", prompt="one two three", max_tokens=50)
    assert done.choices[0].text == "one two three"
    pieces = [c.choices[0].text for c in client.completions.create(model="mock-ok", prompt="one two three",
                                                                    max_tokens=50, stream=True) if c.choices]
    assert "".join(pieces) == "one two three"


def test_embeddings_base64_and_float(client: openai.OpenAI, upstream: MockUpstream) -> None:
    as_b64 = client.embeddings.create(model="mock-ok", input=["alpha", "beta"])  # the SDK asks for base64
    assert upstream.last_request("ok")["body"]["encoding_format"] == "base64"
    as_float = client.embeddings.create(model="mock-ok", input=["alpha", "beta"], encoding_format="float")
    assert len(as_b64.data) == 2 and len(as_float.data) == 2
    assert as_b64.data[0].embedding == pytest.approx(as_float.data[0].embedding, abs=1e-6)
    assert as_b64.usage.prompt_tokens == count_text("alpha") + count_text("beta")


def test_responses_stream_and_non_stream(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    with client.responses.stream(model="mock-ok", input="stream me please") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "stream me please" == final.output_text
    assert final.usage is not None and final.usage.output_tokens == count_text("stream me please")
    plain = client.responses.create(model="mock-ok", input="plain answer")
    assert plain.output_text == "plain answer"


def test_models_list_and_retrieve_with_slash(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert "vendor/model-x" in ids and "mock-ok" in ids
    model = client.models.retrieve("vendor/model-x")  # sent as /v1/models/vendor%2Fmodel-x
    assert model.id == "vendor/model-x"
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("no-such/model")
    assert err.value.code == "model_not_found"


def test_demo_provider_answers_offline(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="demo-echo", messages=MSG, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == MSG[0]["content"]
    assert chunks[-1].choices[0].finish_reason == "stop"


# -- errors ---------------------------------------------------------------------------------


def test_sdk_error_classes(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="mock-ok", messages="not a list")  # type: ignore[arg-type]
    assert bad.value.param == "messages" and bad.value.request_id
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=MSG)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.APIStatusError) as big:
        client.chat.completions.create(model="mock-ok", messages=[{"role": "user", "content": "x" * 70_000}])
    assert big.value.status_code == 413
    with pytest.raises(openai.InternalServerError) as upstream_500:
        client.chat.completions.create(model="mock-500", messages=MSG)
    assert upstream_500.value.status_code == 502 and "500" in upstream_500.value.message


def test_upstream_4xx_passed_on(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="mock-429", messages=MSG)
    assert limited.value.response.headers["retry-after"] == "7"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="mock-400", messages=MSG)
    assert bad.value.code == "mock"


def test_upstream_refusals_keep_their_code_but_not_the_operators_secrets(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="mock-429", messages=MSG)
    message = limited.value.message
    assert "SECRETORG" not in message and "abcdef123456" not in message and "[redacted]" in message
    assert limited.value.code == "mock" and limited.value.body["request_id"] == limited.value.request_id  # type: ignore[index]


def test_a_slow_reader_is_not_cut_off(gateway: GatewayProcess, api_key: str) -> None:
    """The idle timeout (0.5 s on this provider) times the upstream, never a client that reads slowly."""
    import socket
    import time

    body = orjson.dumps({"model": "mock-bulk", "messages": MSG, "stream": True})
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + api_key.encode() + b"\r\nConnection: close\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        first = sock.recv(4096)
        time.sleep(2.0)  # the slow reader: the gateway's sends block far longer than the idle timeout
        received = bytearray(first)
        while chunk := sock.recv(1 << 20):
            received += chunk
    assert received.rstrip().endswith(b"0") and b"data: [DONE]" in received
    assert b'"error"' not in received


def test_an_upstream_that_lingers_after_done_does_not_hold_the_stream(client: openai.OpenAI,
                                                                      gateway: GatewayProcess) -> None:
    with client.chat.completions.with_streaming_response.create(model="mock-linger", messages=MSG,
                                                                stream=True) as resp:
        rid = resp.headers["x-tt-request-id"]
        text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    assert text == MSG[0]["content"]
    entry = gateway.log_entry(rid)
    assert entry["error"] is None and entry["upstream_error"] is None and entry["usage_source"] == "upstream"


def test_a_request_that_never_reached_the_upstream_costs_nothing(client: openai.OpenAI,
                                                                 gateway: GatewayProcess) -> None:
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model="unreachable", messages=MSG)
    assert "127.0.0.1" not in err.value.message  # the upstream's address stays inside
    entry = gateway.log_entry(err.value.request_id)  # type: ignore[arg-type]
    assert entry["usage_source"] == "none" and entry["cost_nanousd"] == 0


def test_malformed_message_fields_are_a_400(gateway: GatewayProcess, api_key: str) -> None:
    r = httpx.post(gateway.base_url + "/chat/completions", headers={"authorization": f"Bearer {api_key}"},
                   json={"model": "mock-ok", "messages": [{"role": "assistant", "content": "x", "tool_calls": 5}]})
    assert r.status_code in (200, 400)  # the gateway lets the upstream judge it, but never answers 500


def test_upstream_auth_failure_is_not_blamed_on_the_client(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model="mock-401", messages=MSG)
    assert err.value.status_code == 502 and "mock says" not in err.value.message  # nothing of the upstream's
    assert "gateway's credentials" in err.value.message and err.value.response.headers["x-should-retry"] == "false"


def test_unreachable_upstream_and_timeouts(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as unreachable:
        client.chat.completions.create(model="unreachable", messages=MSG)
    assert unreachable.value.status_code == 502 and unreachable.value.code == "upstream_connect_error"
    with pytest.raises(openai.InternalServerError) as slow:
        client.chat.completions.create(model="mock-hang", messages=MSG)
    assert slow.value.status_code == 504 and slow.value.code == "upstream_timeout"


def test_upstream_not_json_is_502(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model="mock-not-json", messages=MSG)
    assert err.value.status_code == 502


def test_json_answer_to_a_stream_request_is_502(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as err:
        list(client.chat.completions.create(model="mock-json-for-stream", messages=MSG, stream=True))
    assert err.value.status_code == 502 and "streaming is off today" in err.value.message


def test_client_leaving_before_the_answer_records_the_estimate(gateway: GatewayProcess, api_key: str) -> None:
    impatient = openai.OpenAI(base_url=gateway.base_url, api_key=api_key, max_retries=0, timeout=0.2)
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(model="mock-hang", messages=MSG)
    entry = wait_for(lambda: next((e for e in gateway.log_entries()
                                   if e.get("model") == "mock-hang" and e.get("client_disconnected")), None), 15, "log")
    assert entry["status"] == 499 and entry["usage_source"] == "estimate"
    assert entry["input_tokens"] > 0 and entry["output_tokens"] == 0


def test_malformed_json_and_wrong_method(gateway: GatewayProcess, api_key: str) -> None:
    auth = {"authorization": f"Bearer {api_key}"}
    r = httpx.post(gateway.base_url + "/chat/completions", content=b'{"model": "mock-ok", "messages": [',
                   headers={"content-type": "application/json", **auth})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert r.json()["error"]["request_id"] == r.headers["x-tt-request-id"]
    r = httpx.post(gateway.base_url + "/chat/completions", content=b'[1, 2]', headers=auth)
    assert r.status_code == 400
    r = httpx.post(gateway.base_url + "/chat/completions", json={"messages": MSG}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = httpx.get(gateway.base_url + "/chat/completions")
    assert r.status_code == 405 and r.headers["allow"] == "POST" and r.headers["x-tt-request-id"]
    r = httpx.delete(gateway.base_url + "/models")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = httpx.post(gateway.base_url + "/chat/completions", json={"model": "mock-ok", "messages": MSG,
                                                                "stream": "yes"}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream"


def test_wrong_base_url_gets_a_hint(gateway: GatewayProcess) -> None:
    doubled = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key="k", max_retries=0)
    with pytest.raises(openai.NotFoundError) as err:
        doubled.chat.completions.create(model="mock-ok", messages=MSG)
    assert "/v1 twice" in err.value.message and err.value.request_id
    bare = openai.OpenAI(base_url=gateway.url, api_key="k", max_retries=0)
    with pytest.raises(openai.NotFoundError) as err2:
        bare.chat.completions.create(model="mock-ok", messages=MSG)
    assert "lacks /v1" in err2.value.message


def test_every_response_has_a_request_id(gateway: GatewayProcess) -> None:
    for method, path in [("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/nope"),
                         ("GET", "/v1/models"), ("POST", "/v1/embeddings")]:
        r = httpx.request(method, gateway.url + path)
        assert r.headers.get("x-tt-request-id", "").startswith("req_"), (method, path, r.status_code)
        if path != "/metrics":  # every request but the scrapes leaves a log line under its id
            assert gateway.log_entry(r.headers["x-tt-request-id"])["status"] == r.status_code


# -- streams that go wrong ------------------------------------------------------------------


def test_client_disconnect_closes_upstream(gateway: GatewayProcess, upstream: MockUpstream,
                                           client: openai.OpenAI) -> None:
    upstream.stream_closed.clear()
    with client.chat.completions.with_streaming_response.create(model="mock-slow", messages=MSG,
                                                                stream=True) as resp:
        rid = resp.headers["x-tt-request-id"]
        stream = iter(resp.parse())
        seen = [next(stream) for _ in range(5)]
    assert len(seen) == 5
    assert upstream.stream_closed.wait(5.0), "the upstream connection stayed open after the client left"
    entry = gateway.log_entry(rid)
    assert entry["client_disconnected"] is True
    assert entry["usage_source"] == "observed" and entry["output_tokens"] >= 4


def test_upstream_dying_mid_stream_raises_in_the_sdk(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    for model in ("mock-die", "mock-eof"):
        received = []
        with pytest.raises(openai.APIError) as err:
            for chunk in client.chat.completions.create(model=model, messages=MSG, stream=True):
                received.append(chunk)
        assert received, "the chunks before the failure still arrive"
        assert err.value.body["code"] == "upstream_closed"  # type: ignore[index]
        entry = gateway.log_entry(err.value.body["request_id"])  # type: ignore[index]
        assert entry["usage_source"] == "observed" and entry["error"] == "upstream_closed"


def test_idle_timeout_mid_stream_is_an_in_band_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIError) as err:
        list(client.chat.completions.create(model="mock-stall", messages=MSG, stream=True))
    assert err.value.body["code"] == "upstream_timeout"  # type: ignore[index]


def test_total_timeout_ends_a_stream_that_never_ends(client: openai.OpenAI) -> None:
    received = []
    with pytest.raises(openai.APIError) as err:
        for chunk in client.chat.completions.create(model="mock-endless", messages=MSG, stream=True):
            received.append(chunk)
    assert len(received) > 3  # chunks flowed until the total deadline
    assert err.value.body["code"] == "upstream_timeout" and "total timeout" in err.value.message  # type: ignore[index]


def test_responses_stream_dying_raises(client: openai.OpenAI, upstream: MockUpstream) -> None:
    with pytest.raises(openai.APIError):
        list(client.responses.create(model="mock-die", input="hello there you", stream=True))


def test_awkward_byte_boundaries_arrive_intact(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    with client.chat.completions.with_streaming_response.create(
            model="mock-awkward", messages=MSG, stream=True, stream_options={"include_usage": True}) as resp:
        rid = resp.headers["x-tt-request-id"]
        chunks = list(resp.parse())
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert texts == AWKWARD_TEXTS
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 11
    assert gateway.log_entry(rid)["usage_source"] == "upstream"


def test_metrics_exposed(gateway: GatewayProcess, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="mock-ok", messages=MSG)
    text = httpx.get(gateway.url + "/metrics").text
    for name in ("tokentoll_requests_total", "tokentoll_request_duration_seconds_bucket",
                 "tokentoll_time_to_first_byte_seconds_bucket", "tokentoll_gateway_overhead_seconds_bucket",
                 "tokentoll_tokens_total", "tokentoll_open_streams", "tokentoll_upstream_errors_total"):
        assert name in text, name
    assert 'tokentoll_requests_total{model="mock-ok",route="/v1/chat/completions",status="200"}' in text
    assert 'tokentoll_tokens_total{kind="output",model="mock-ok",source="upstream"}' in text


def test_log_never_holds_keys_or_text(gateway: GatewayProcess, client: openai.OpenAI, api_key: str) -> None:
    secret_text = "purple-elephant-secret-phrase"
    raw = client.chat.completions.with_raw_response.create(model="mock-ok",
                                                           messages=[{"role": "user", "content": secret_text}])
    gateway.log_entry(raw.headers["x-tt-request-id"])
    log = gateway.log_path.read_text()
    assert secret_text not in log and "elephant" not in log
    assert api_key not in log and api_key[6:18] not in log and UPSTREAM_KEY not in log
    assert api_key not in "".join(gateway.stderr_lines)


def test_health_endpoints(gateway: GatewayProcess) -> None:
    assert httpx.get(gateway.url + "/healthz").json() == {"status": "ok"}
    wait_for(lambda: httpx.get(gateway.url + "/readyz").status_code == 200, 5, "readyz")


def test_pricing_is_public_and_exact(gateway: GatewayProcess) -> None:
    r = httpx.get(gateway.base_url + "/pricing")
    assert r.status_code == 200
    prices = {m["model"]: m for m in r.json()["data"]}
    assert prices["demo-echo"]["input"] == "0.500000000" and prices["demo-echo"]["output"] == "1.500000000"
    assert prices["mock-ok"]["cache_read"] == "1.000000000"  # unset: cached input costs the input price


def test_passed_through_answers_carry_the_public_model_name(client: openai.OpenAI) -> None:
    """The upstream's own name for a model (an operator's deployment name) never reaches the client."""
    assert client.chat.completions.create(model="mock-ok", messages=[{"role": "user", "content": "hi"}]).model \
        == "mock-ok"
    chunks = list(client.chat.completions.create(model="vendor/model-x", stream=True,
                                                 messages=[{"role": "user", "content": "hi there"}]))
    assert chunks and {c.model for c in chunks} == {"vendor/model-x"}


def test_a_200_that_carries_only_an_error_is_a_failure_never_charged_nor_cached(
        client: openai.OpenAI, gateway: GatewayProcess) -> None:
    for attempt in range(2):  # the second would be a cache hit if the first had been stored
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.with_raw_response.create(
                model="mock-json-for-stream", messages=MSG, temperature=0)
        assert err.value.status_code == 502 and "streaming is off today" in err.value.message
        assert err.value.response.headers["x-tt-cache"] == "miss", attempt
        entry = gateway.log_entry(err.value.request_id)  # type: ignore[arg-type]
        assert entry["cost_nanousd"] == 0 and entry["usage_source"] == "none"
