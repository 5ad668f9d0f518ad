"""The native endpoints through the official anthropic and google-genai SDKs: count tokens, models,
embeddings, errors in each dialect, cache accounting, and the stream traps of PROTOCOLS.md section 5."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import urllib.error
import urllib.request
import openai
import pytest
from google import genai
from google.genai import errors as gerrors
from google.genai import types as gt

from tests.conftest import GatewayProcess, cli
from tests.native_upstream import NativeUpstream

HELLO = [{"role": "user", "content": "hello"}]


def claude(gw: GatewayProcess, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0, timeout=20)


def gemini(gw: GatewayProcess, key: str) -> genai.Client:
    return genai.Client(api_key=key, http_options=gt.HttpOptions(base_url=gw.url, timeout=20_000))


def post(url: str, body: Any, headers: dict[str, str]) -> str:
    """A raw POST, to look at the bytes an SDK would parse away."""
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json", **headers})
    with urllib.request.urlopen(req, timeout=20) as resp:
        return resp.read().decode()


def log_line(gw: GatewayProcess, request_id: str) -> dict[str, Any]:
    return gw.log_entry(request_id)


# -- Anthropic ------------------------------------------------------------------------------


def test_anthropic_count_tokens_and_models(native_gw: GatewayProcess, native_key: str) -> None:
    c = claude(native_gw, native_key)
    counted = c.messages.count_tokens(model="scripted-openai", messages=[{"role": "user", "content": "hello world"}])
    assert 5 <= counted.input_tokens <= 20
    models = list(c.models.list())  # the SDK pages until has_more is false: one page here
    assert "scripted-anthropic" in {m.id for m in models} and all(m.type == "model" for m in models)


def test_anthropic_errors_raise_the_sdk_classes(native_gw: GatewayProcess, native_key: str) -> None:
    with pytest.raises(anthropic.AuthenticationError) as no_key:
        claude(native_gw, "sk-tt-" + "x" * 40).messages.create(model="scripted-openai", max_tokens=10,
                                                                messages=HELLO)
    assert no_key.value.type == "authentication_error" and no_key.value.request_id
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude(native_gw, native_key).messages.create(model="no-such-model", max_tokens=10, messages=HELLO)
    assert missing.value.type == "not_found_error"
    with pytest.raises(anthropic.RateLimitError):
        claude(native_gw, native_key).messages.create(model="status-429-openai", max_tokens=10, messages=HELLO)
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude(native_gw, native_key).messages.create(model="scripted-openai", max_tokens=0, messages=HELLO)
    assert bad.value.type == "invalid_request_error"
    poor = cli(native_gw.config, "accounts", "create", "poor-claude", "--credit", "0.000001", env=native_gw.env)
    poor_key = cli(native_gw.config, "keys", "create", "--account", poor["name"], env=native_gw.env)["key"]
    with pytest.raises(anthropic.APIStatusError) as short:
        claude(native_gw, poor_key).messages.create(model="scripted-openai", max_tokens=10, messages=HELLO)
    assert short.value.status_code == 402 and short.value.type == "billing_error"


def test_anthropic_overloaded_upstream_is_529_for_claude_clients(native_gw: GatewayProcess, native_key: str) -> None:
    with pytest.raises(anthropic.OverloadedError):
        claude(native_gw, native_key).messages.create(model="status-529-anthropic", max_tokens=10, messages=HELLO)


def test_anthropic_stream_error_midway_raises(native_gw: GatewayProcess, native_key: str) -> None:
    for upstream in ("openai", "anthropic", "gemini"):
        with pytest.raises(anthropic.APIStatusError):
            with claude(native_gw, native_key).messages.stream(model=f"stream-error-{upstream}", max_tokens=50,
                                                                messages=HELLO) as s:
                s.get_final_message()


def test_pings_reach_only_anthropic_clients(native_gw: GatewayProcess, native_key: str) -> None:
    raw = post(native_gw.url + "/v1/messages",
               {"model": "scripted-anthropic", "max_tokens": 50, "messages": HELLO, "stream": True},
               {"x-api-key": native_key, "anthropic-version": "2023-06-01"})
    assert "event: ping" in raw  # same format: the upstream's bytes pass through
    raw = post(native_gw.base_url + "/chat/completions", {"model": "scripted-anthropic", "messages": HELLO,
                                                          "stream": True}, {"authorization": f"Bearer {native_key}"})
    assert "ping" not in raw and raw.rstrip().endswith("data: [DONE]")
    for line in raw.splitlines():
        if line.startswith("data: {"):
            assert "choices" in json.loads(line[6:])  # never a chunk without choices


def test_cache_accounting_is_the_same_from_every_upstream(native_gw: GatewayProcess, native_key: str) -> None:
    """20 prompt tokens of which 8 read from the cache and 4 written: Anthropic's input_tokens excludes
    both, OpenAI's prompt_tokens includes them; the charge is the same (Gemini reports no cache write)."""
    for upstream in ("openai", "anthropic", "gemini"):
        r = openai.OpenAI(base_url=native_gw.base_url, api_key=native_key, max_retries=0).chat.completions \
            .with_raw_response.create(model=f"cached-{upstream}", messages=HELLO)
        entry = log_line(native_gw, r.headers["x-tt-request-id"])
        write = 0 if upstream == "gemini" else 4
        assert (entry["input_tokens"], entry["cache_read_tokens"], entry["cache_write_tokens"]) == (20, 8, write)
        fresh = 20 - 8 - write
        assert entry["cost_nanousd"] == fresh * 1000 + 8 * 100 + write * 1250 + 9 * 2000
        usage = r.parse().usage
        assert usage.prompt_tokens == 20 and usage.prompt_tokens_details.cached_tokens == 8
        m = claude(native_gw, native_key).messages.create(model=f"cached-{upstream}", max_tokens=20, messages=HELLO)
        assert (m.usage.input_tokens, m.usage.cache_read_input_tokens, m.usage.cache_creation_input_tokens) == \
            (fresh, 8, write)


def test_dropped_translated_stream_is_charged_what_was_produced(native_gw: GatewayProcess, native_key: str) -> None:
    for upstream in ("openai", "anthropic", "gemini"):
        with claude(native_gw, native_key).messages.with_streaming_response.create(
                model=f"die-{upstream}", max_tokens=50, messages=HELLO, stream=True) as raw:
            rid = raw.headers["x-tt-request-id"]
            with pytest.raises(anthropic.APIStatusError):
                for _ in raw.parse():
                    pass
        entry = log_line(native_gw, rid)
        assert entry["usage_source"] in ("observed", "upstream") and entry["output_tokens"] >= 1
        assert entry["error"] is not None


# -- Gemini ---------------------------------------------------------------------------------


def test_gemini_count_embed_and_models(native_gw: GatewayProcess, native_key: str) -> None:
    g = gemini(native_gw, native_key)
    counted = g.models.count_tokens(model="scripted-anthropic", contents="hello world")
    assert counted.total_tokens and counted.total_tokens >= 2
    for model in ("embed-gemini", "embed-openai"):  # passed through, and translated from OpenAI's embeddings
        e = g.models.embed_content(model=model, contents="one")
        assert [emb.values for emb in e.embeddings] == [[0.1, 0.2, 0.3]]
    names = {m.name for m in g.models.list()}
    assert "models/scripted-gemini" in names


def test_openai_embeddings_from_a_gemini_model(native_gw: GatewayProcess, native_key: str) -> None:
    sdk = openai.OpenAI(base_url=native_gw.base_url, api_key=native_key, max_retries=0)
    r = sdk.embeddings.create(model="embed-gemini", input=["a", "b"])  # the SDK asks for base64 and decodes it
    assert [round(x, 5) for x in r.data[1].embedding] == [0.1, 0.2, 0.3] and r.usage.prompt_tokens >= 2


def test_gemini_errors_raise_client_and_server_errors(native_gw: GatewayProcess, native_key: str) -> None:
    stranger, g = gemini(native_gw, "sk-tt-" + "y" * 40), gemini(native_gw, native_key)
    with pytest.raises(gerrors.ClientError) as no_key:
        stranger.models.generate_content(model="scripted-openai", contents="hi")
    assert no_key.value.code == 401
    with pytest.raises(gerrors.ClientError) as missing:
        g.models.generate_content(model="no-such-model", contents="hi")
    assert missing.value.code == 404 and missing.value.status == "NOT_FOUND"
    with pytest.raises(gerrors.ClientError) as limited:
        g.models.generate_content(model="status-429-anthropic", contents="hi")
    assert limited.value.code == 429
    with pytest.raises(gerrors.ServerError) as broken:
        for _ in g.models.generate_content_stream(model="stream-error-openai", contents="hi"):
            pass
    assert isinstance(broken.value.code, int) and broken.value.code >= 500


def test_gemini_streams_have_only_data_lines(native_gw: GatewayProcess, native_key: str) -> None:
    """No comments (the OpenAI upstream sends a keep-alive), no event: lines, no [DONE]."""
    for model in ("scripted-openai", "scripted-anthropic", "scripted-gemini"):
        raw = post(f"{native_gw.url}/v1beta/models/{model}:streamGenerateContent?alt=sse",
                   {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}, {"x-goog-api-key": native_key})
        lines = [line for line in raw.splitlines() if line]
        assert lines and all(line.startswith("data: {") for line in lines), raw[:300]
        assert json.loads(lines[-1][6:])["candidates"][0]["finishReason"] == "STOP"


def test_gemini_json_array_stream_without_alt_sse(native_gw: GatewayProcess, native_key: str) -> None:
    """Without alt=sse the stream is one JSON array, sent as Google sends it: application/json (issue 18.6)."""
    body = json.dumps({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}).encode()
    for model in ("scripted-openai", "scripted-gemini"):  # translated, and passed through from a Gemini upstream
        for query, content_type in (("", "application/json"), ("&alt=sse", "text/event-stream")):
            req = urllib.request.Request(
                f"{native_gw.url}/v1beta/models/{model}:streamGenerateContent?key={native_key}{query}", body,
                {"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=20) as resp:
                assert resp.headers["content-type"].startswith(content_type), (model, query)
                raw = resp.read().decode()
            if not query:
                chunks = json.loads(raw)
                assert isinstance(chunks, list) and chunks[-1]["candidates"][0]["finishReason"] == "STOP"


def test_upstreams_get_their_own_credentials(native_gw: GatewayProcess, native_key: str,
                                             native: NativeUpstream) -> None:
    claude(native_gw, native_key).messages.create(model="scripted-anthropic", max_tokens=10, messages=HELLO)
    g = gemini(native_gw, native_key)
    g.models.generate_content(model="scripted-gemini", contents="hi")
    sent = {r.path.split("/")[1]: r.headers for r in native.requests}
    assert sent["anthropic"]["x-api-key"] == "native-upstream-key" and sent["anthropic"]["anthropic-version"]
    assert sent["gemini"]["x-goog-api-key"] == "native-upstream-key"
    for headers in sent.values():
        assert native_key not in " ".join(headers.values())  # the caller's key never goes upstream


def post_status(url: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_bad_input_is_a_4xx_in_the_callers_dialect_never_a_500(native_gw: GatewayProcess, native_key: str) -> None:
    gem = {"x-goog-api-key": native_key}
    hi = [{"role": "user", "parts": [{"text": "hi"}]}]
    status, body = post_status(f"{native_gw.url}/v1beta/models/scripted-openai:generateContent",
                               {"contents": hi, "generationConfig": {"seed": 1e20}}, gem)
    assert status == 400 and body["error"]["code"] == 400 and body["error"]["status"] == "INVALID_ARGUMENT"
    status, body = post_status(f"{native_gw.url}/v1beta/models/scripted-gemini:generateContent",
                               {"contents": hi, "generationConfig": {"candidateCount": 8}}, gem)
    assert status == 400 and "candidateCount" in body["error"]["message"]  # one answer is what is held for
    status, body = post_status(native_gw.base_url + "/responses", {"model": "scripted-anthropic", "input": "hi",
                                                                   "reasoning": {"effort": ["high"]}},
                               {"authorization": f"Bearer {native_key}"})
    assert status == 400 and body["error"]["param"] == "reasoning.effort"
    tool = {"name": "f", "input_schema": {"type": "object", "properties": {"a": {"type": "string"}},
                                          "required": [{}]}}  # nonsense in `required` is dropped, not a crash
    status, body = post_status(native_gw.url + "/v1/messages", {"model": "scripted-gemini", "max_tokens": 20,
                                                                "messages": HELLO, "tools": [tool]},
                               {"x-api-key": native_key, "anthropic-version": "2023-06-01"})
    assert status == 200 and body["type"] == "message"


def test_same_format_token_counts_come_from_the_upstream(native_gw: GatewayProcess, native_key: str,
                                                         native: NativeUpstream) -> None:
    """Exact and free at the provider (the mock says 42); another format gets the gateway's estimate."""
    c = claude(native_gw, native_key)
    assert c.messages.count_tokens(model="scripted-anthropic", messages=HELLO).input_tokens == 42
    assert native.requests[-1].body["model"] == "scripted"  # the upstream's own name for the model
    assert c.messages.count_tokens(model="scripted-openai", messages=HELLO).input_tokens != 42
    g = gemini(native_gw, native_key)
    assert g.models.count_tokens(model="scripted-gemini", contents="hello").total_tokens == 42
    assert g.models.count_tokens(model="scripted-anthropic", contents="hello").total_tokens != 42


def test_anthropic_betas_go_to_anthropic_upstreams_only(native_gw: GatewayProcess, native_key: str,
                                                        native: NativeUpstream) -> None:
    c = claude(native_gw, native_key)
    c.beta.messages.create(model="scripted-anthropic", max_tokens=20, messages=HELLO, betas=["context-1m-2025-08-07"])
    assert native.requests[-1].headers.get("anthropic-beta") == "context-1m-2025-08-07"
    assert native.requests[-1].path == "/anthropic/v1/messages"
    c.beta.messages.create(model="scripted-openai", max_tokens=20, messages=HELLO, betas=["context-1m-2025-08-07"])
    assert "anthropic-beta" not in native.requests[-1].headers


def test_unknown_things_are_404_in_the_callers_dialect(native_gw: GatewayProcess, native_key: str) -> None:
    status, body = post_status(f"{native_gw.url}/v1beta/models/scripted-gemini:fooBar", {},
                               {"x-goog-api-key": native_key})
    assert status == 404 and body["error"]["status"] == "NOT_FOUND" and "fooBar" in body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude(native_gw, native_key).models.retrieve("no-such-model")
    assert missing.value.type == "not_found_error"


def test_a_base_url_one_segment_off_gets_advice_for_the_sdk_that_asked(native_gw: GatewayProcess,
                                                                       native_key: str) -> None:
    wrong = anthropic.Anthropic(base_url=native_gw.url + "/v1", api_key=native_key, max_retries=0)
    with pytest.raises(anthropic.NotFoundError) as claude_404:
        wrong.messages.create(model="scripted-anthropic", max_tokens=10, messages=HELLO)
    assert f"set base_url to {native_gw.url} " in claude_404.value.message and claude_404.value.request_id
    # curl (no anthropic-version) one segment off either way: the advice names the Messages URL, never a
    # base URL ending in /v1 (issue 18.3)
    for path in ("/v1/v1/messages", "/messages", "/v1/v1/messages/count_tokens", "/messages/count_tokens"):
        status, body = post_status(native_gw.url + path, {"model": "scripted-anthropic"}, {"x-api-key": native_key})
        message = body["error"]["message"]
        tail = path.removeprefix("/v1/v1").removeprefix("/v1")
        assert status == 404 and f"POST {native_gw.url}/v1{tail}" in message, message
        assert f"set base_url to {native_gw.url} " in message and f"{native_gw.url}/v1 (" not in message
    for suffix in ("/v1", "/v1beta"):
        g = genai.Client(api_key=native_key, http_options=gt.HttpOptions(base_url=native_gw.url + suffix))
        with pytest.raises(gerrors.ClientError) as gemini_404:
            g.models.generate_content(model="scripted-gemini", contents="hi")
        assert gemini_404.value.code == 404 and "with no path" in (gemini_404.value.message or "")


def test_an_anthropic_upstream_without_a_key_still_gets_the_api_version(native_gw: GatewayProcess, native_key: str,
                                                                          native: NativeUpstream) -> None:
    """Issue 18.12: a provider with no api_key_env (a self-hosted server) was sent no anthropic-version header, which
    the Messages API requires; the credential is the only header a key decides."""
    for c in (claude(native_gw, native_key), openai.OpenAI(base_url=native_gw.base_url, api_key=native_key,
                                                           max_retries=0)):
        if isinstance(c, anthropic.Anthropic):
            c.messages.create(model="open-anthropic", max_tokens=10, messages=HELLO)
        else:
            c.chat.completions.create(model="open-anthropic", messages=HELLO)  # translated to Messages
        sent = native.requests[-1].headers
        assert sent["anthropic-version"] == "2023-06-01" and "x-api-key" not in sent


def test_native_passthrough_answers_carry_the_public_model_name(native_gw: GatewayProcess, native_key: str) -> None:
    c = claude(native_gw, native_key)
    assert c.messages.create(model="scripted-anthropic", max_tokens=10, messages=HELLO).model == "scripted-anthropic"
    with c.messages.stream(model="scripted-anthropic", max_tokens=10, messages=HELLO) as s:
        assert s.get_final_message().model == "scripted-anthropic"
