"""No request costs more than its hold, against upstreams that behave like real engines (tests/native_upstream.py:
"runaway" ignores every output limit, "engine" is llama.cpp's Python server): every client format against every
upstream format, through the official SDKs, stream and non-stream, with the books read from the database."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import types as gt

from billing.metering import output_cutoff
from tests.conftest import FORMATS, GatewayProcess, call, cli, newest_entry, wait_for, wallet
from tests.native_upstream import RUNAWAY_WORDS, NativeUpstream

LIMIT = 20  # the output limit every request here asks for
CLIENTS = ("chat", "responses", "anthropic", "gemini")
# What each SDK reads at the end of an answer that stopped at its limit
AT_LIMIT = {"chat": "length", "responses": "max_output_tokens", "anthropic": "max_tokens", "gemini": "MAX_TOKENS"}
QUESTION = "Tell me a long story."


@dataclass
class Seen:
    text: str
    finish: str  # as the SDK reports it


def ask(gw: GatewayProcess, key: str, client: str, model: str, stream: bool, limit: int = LIMIT,
        **extra: Any) -> Seen:
    """One request through the client format's official SDK; what the SDK read."""
    if client == "chat":
        sdk = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=20)
        messages = [{"role": "user", "content": QUESTION}]
        limits = extra or {"max_tokens": limit}
        if not stream:
            r = sdk.chat.completions.create(model=model, messages=messages, **limits)  # type: ignore[arg-type]
            return Seen(r.choices[0].message.content or "", r.choices[0].finish_reason)
        seen = Seen("", "")
        for chunk in sdk.chat.completions.create(model=model, messages=messages, stream=True,  # type: ignore[arg-type]
                                                 stream_options={"include_usage": True}, **limits):
            for c in chunk.choices:
                seen.text += c.delta.content or ""
                seen.finish = c.finish_reason or seen.finish
        return seen
    if client == "responses":
        sdk = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=20)
        if not stream:
            r = sdk.responses.create(model=model, input=QUESTION, max_output_tokens=limit)
            return Seen(r.output_text, r.incomplete_details.reason if r.incomplete_details else r.status)
        seen = Seen("", "")
        for event in sdk.responses.create(model=model, input=QUESTION, max_output_tokens=limit, stream=True):
            if event.type == "response.output_text.delta":
                seen.text += event.delta
            elif event.type in ("response.completed", "response.incomplete"):
                details = event.response.incomplete_details
                seen.finish = details.reason if details else event.response.status
        return seen
    if client == "anthropic":
        sdk = anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0, timeout=20)
        messages = [{"role": "user", "content": QUESTION}]
        if stream:
            with sdk.messages.stream(model=model, max_tokens=limit, messages=messages) as s:  # type: ignore[arg-type]
                m = s.get_final_message()
        else:
            m = sdk.messages.create(model=model, max_tokens=limit, messages=messages)  # type: ignore[arg-type]
        return Seen("".join(b.text for b in m.content if b.type == "text"), m.stop_reason or "")
    sdk_g = genai.Client(api_key=key, http_options=gt.HttpOptions(base_url=gw.url, timeout=20_000))
    config = gt.GenerateContentConfig(max_output_tokens=limit)
    responses = (sdk_g.models.generate_content_stream(model=model, contents=QUESTION, config=config) if stream
                 else [sdk_g.models.generate_content(model=model, contents=QUESTION, config=config)])
    seen = Seen("", "")
    for r in responses:
        for cand in r.candidates or ():
            seen.text += "".join(p.text or "" for p in (cand.content.parts if cand.content else None) or ())
            if cand.finish_reason:
                seen.finish = cand.finish_reason.name
    return seen


def books(gw: GatewayProcess, request_id: str) -> tuple[int, dict[str, Any]]:
    """The request's hold (what its hold entry held) and its usage row, read from the database."""
    db = sqlite3.connect(gw.log_path.parent / "tokentoll.db")
    db.row_factory = sqlite3.Row
    try:
        held = db.execute("SELECT held_delta FROM ledger WHERE request_id = ? AND kind = 'hold'",
                          (request_id,)).fetchone()[0]
        row = dict(db.execute("SELECT * FROM usage WHERE request_id = ?", (request_id,)).fetchone())
    finally:
        db.close()
    return held, row


def words(text: str) -> int:
    return text.count("word")


def overrun_counted(gw: GatewayProcess, provider: str, model: str) -> float:
    """tokentoll_upstream_overrun_tokens_total for one provider and model, as /metrics has it now."""
    status, raw = call(gw, "/metrics", "")
    assert status == 200
    for line in raw.decode().splitlines():
        if line.startswith("tokentoll_upstream_overrun_tokens_total{") and f'provider="{provider}"' in line \
                and f'model="{model}"' in line:
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
@pytest.mark.parametrize("upstream", FORMATS)
@pytest.mark.parametrize("client", CLIENTS)
def test_an_upstream_that_ignores_the_limit_costs_at_most_the_hold(native_gw: GatewayProcess, native_key: str,
                                                                   native: NativeUpstream, client: str,
                                                                   upstream: str, stream: bool) -> None:
    gw, model = native_gw, f"runaway-{upstream}"
    seen_lines, seen_streams = len(gw.log_entries()), len(native.paced)
    counted = overrun_counted(gw, f"up-{upstream}", model)
    answer = ask(gw, native_key, client, model, stream)
    line = newest_entry(gw, model, seen_lines)
    hold, row = books(gw, line["request_id"])
    assert line["status"] == 200 and row["unbilled"] == 0
    assert line["cost_nanousd"] == row["cost"] == hold  # every runaway costs more than its hold: charged the hold
    assert row["overrun"] > 0 and row["overrun_tokens"] == line["overrun_tokens"] > 0
    assert overrun_counted(gw, f"up-{upstream}", model) - counted == row["overrun_tokens"]  # and in the metric
    if not stream:  # the answer is the upstream's, whole; the tokens past the limit were not charged
        assert words(answer.text) == RUNAWAY_WORDS and row["output_tokens"] == RUNAWAY_WORDS
        assert row["overrun_tokens"] >= RUNAWAY_WORDS - LIMIT and not line["cut_at_limit"]
        return
    # the stream ended at the limit (plus the margin and the piece that crossed it), in the client's own terms
    assert answer.finish == AT_LIMIT[client], answer
    assert LIMIT <= words(answer.text) <= output_cutoff(LIMIT) + 5
    assert line["cut_at_limit"] and line["usage_source"] in ("observed", "upstream")
    written, frames = wait_for(lambda: native.paced[seen_streams:], 5, "the upstream's stream to end")[-1]
    assert written < frames // 2  # the gateway stopped reading and closed the upstream connection


@pytest.mark.parametrize("client, upstream", [("chat", "gemini"), ("responses", "openai"), ("anthropic", "anthropic"),
                                              ("gemini", "openai")])
def test_a_wallet_that_covers_only_the_hold_ends_at_exactly_zero(native_gw: GatewayProcess, native_key: str,
                                                                 client: str, upstream: str) -> None:
    gw, model = native_gw, f"runaway-{upstream}"
    seen = len(gw.log_entries())
    ask(gw, native_key, client, model, True)  # learn the hold of this very request
    hold, _ = books(gw, newest_entry(gw, model, seen)["request_id"])
    account = f"one-hold-{client}-{upstream}"
    cli(gw.config, "accounts", "create", account, "--credit", str(Decimal(hold) / 10**9), env=gw.env)
    key = cli(gw.config, "keys", "create", "--account", account, env=gw.env)["key"]
    seen = len(gw.log_entries())
    assert ask(gw, key, client, model, True).finish == AT_LIMIT[client]
    _, row = books(gw, newest_entry(gw, model, seen)["request_id"])
    assert (row["cost"], row["unbilled"]) == (hold, 0) and row["overrun"] > 0
    shown = wallet(gw, account)
    assert (shown["balance"], shown["held"]) == (0, 0)
    with pytest.raises(Exception) as refused:  # the next one cannot be held for
        ask(gw, key, client, model, False)
    assert "billing_shortfall" in str(refused.value) or "402" in str(refused.value)


# -- llama.cpp's server: reads max_tokens, ignores max_completion_tokens, sends no usage in streams ----------


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
@pytest.mark.parametrize("client", CLIENTS)
def test_an_engine_that_reads_only_max_tokens_is_bounded_from_every_client(native_gw: GatewayProcess,
                                                                           native_key: str, native: NativeUpstream,
                                                                           client: str, stream: bool) -> None:
    """The probe: an Anthropic client's max_tokens=30 reached llama.cpp as max_completion_tokens, which it ignores:
    2,028 tokens were written. Now the field it reads carries the limit, for every client."""
    gw = native_gw
    seen = len(gw.log_entries())
    answer = ask(gw, native_key, client, "engine-openai", stream, limit=30)
    sent = native.requests[-1].body
    limits = {k: v for k, v in sent.items() if k in ("max_tokens", "max_completion_tokens", "max_output_tokens")}
    assert limits == ({"max_output_tokens": 30} if client == "responses" else {"max_tokens": 30})
    assert words(answer.text) == 30
    line = newest_entry(gw, "engine-openai", seen)
    hold, row = books(gw, line["request_id"])
    assert row["cost"] <= hold and not line["cut_at_limit"]
    assert row["output_tokens"] == 30 and line["usage_source"] == ("observed" if stream and client != "responses"
                                                                   else "upstream")
    # no output past the limit; the engine's prompt (20 tokens, as its chat template counts) may pass the estimate
    assert row["overrun_tokens"] <= max(row["input_tokens"] - 1, 0)


def test_an_openai_client_sending_max_completion_tokens_is_bounded_too(native_gw: GatewayProcess, native_key: str,
                                                                       native: NativeUpstream) -> None:
    answer = ask(native_gw, native_key, "chat", "engine-openai", False, max_completion_tokens=30)
    assert words(answer.text) == 30
    assert {k for k in native.requests[-1].body if k.startswith("max_")} == {"max_tokens"}


# -- the probes of the issue, each as it was found ----------------------------------------------------------


def test_two_limits_that_disagree_are_refused_before_anything_is_sent(native_gw: GatewayProcess, native_key: str,
                                                                      native: NativeUpstream) -> None:
    before = len(native.requests)
    status, body = call(native_gw, "/v1/chat/completions", native_key, {
        "model": "runaway-openai", "messages": [{"role": "user", "content": "hi"}],
        "max_completion_tokens": 1, "max_tokens": 100000})
    error = json.loads(body)["error"]
    assert status == 400 and "max_completion_tokens" in error["message"] and "max_tokens" in error["message"]
    status, body = call(native_gw, "/v1beta/models/runaway-gemini:generateContent", native_key, {
        "contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"candidateCount": 1},
        "generation_config": {"candidateCount": 8}})
    error = json.loads(body)["error"]
    assert status == 400 and error["status"] == "INVALID_ARGUMENT"
    assert "generationConfig" in error["message"] and "generation_config" in error["message"]
    assert len(native.requests) == before  # nothing reached the upstream


def test_a_gemini_field_spelled_twice_with_one_value_goes_upstream_once(native_gw: GatewayProcess, native_key: str,
                                                                        native: NativeUpstream) -> None:
    status, _ = call(native_gw, "/v1beta/models/engine-gemini:generateContent", native_key, {
        "contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 7},
        "generation_config": {"maxOutputTokens": 7, "max_output_tokens": 7}})
    assert status == 200
    sent = native.requests[-1].body
    assert sent["generationConfig"] == {"maxOutputTokens": 7} and "generation_config" not in sent


def test_passthrough_streams_cut_at_the_limit_end_every_choice_and_every_framing(native_gw: GatewayProcess,
                                                                                 native_key: str) -> None:
    """Raw bytes of the cut ends the SDK tests do not see: n = 2, the legacy Completions API, and Gemini's
    JSON-array stream (no alt=sse)."""
    gw, key = native_gw, native_key
    status, raw = call(gw, "/v1/chat/completions", key, {
        "model": "runaway-openai", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10, "n": 2,
        "stream": True})
    events = [json.loads(line[6:]) for line in raw.decode().split("\n") if line.startswith("data: {")]
    assert status == 200 and raw.endswith(b"data: [DONE]\n\n")
    assert [(c["index"], c["finish_reason"]) for c in events[-1]["choices"]] == [(0, "length"), (1, "length")]
    status, raw = call(gw, "/v1/completions", key, {"model": "runaway-openai", "prompt": "hi", "max_tokens": 10,
                                                    "stream": True})
    events = [json.loads(line[6:]) for line in raw.decode().split("\n") if line.startswith("data: {")]
    assert status == 200 and raw.endswith(b"data: [DONE]\n\n")
    assert events[-1]["choices"] == [{"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}]
    assert sum(e["choices"][0]["text"].count("word") for e in events) <= output_cutoff(10) + 5
    status, raw = call(gw, "/v1beta/models/runaway-gemini:streamGenerateContent", key, {
        "contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 10}})
    chunks = json.loads(raw)
    assert status == 200 and chunks[-1]["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert sum(p.get("text", "").count("word") for c in chunks for p in c["candidates"][0]["content"]["parts"]) \
        <= output_cutoff(10) + 5


# -- media whose size only the upstream learns ---------------------------------------------------------------

UNSIZED = {  # one request per client format that carries media by URL or by id
    "gemini fileData": ("/v1beta/models/{model}-gemini:generateContent", {"contents": [{"role": "user", "parts": [
        {"text": "What happens in it?"}, {"fileData": {"mimeType": "video/mp4", "fileUri": "gs://bucket/long.mp4"}}]}]}),
    "responses input_file": ("/v1/responses", {"model": "{model}-openai", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "Summarize"}, {"type": "input_file", "file_url": "https://x.test/r.pdf"}]}]}),
    "anthropic document url": ("/v1/messages", {"model": "{model}-anthropic", "max_tokens": 50, "messages": [
        {"role": "user", "content": [{"type": "document", "source": {"type": "url", "url": "https://x.test/r.pdf"}},
                                     {"type": "text", "text": "Summarize"}]}]}),
    "chat file_id": ("/v1/chat/completions", {"model": "{model}-openai", "messages": [{"role": "user", "content": [
        {"type": "file", "file": {"file_id": "file-abc123"}}, {"type": "text", "text": "Summarize"}]}]}),
    "chat video_url (vLLM)": ("/v1/chat/completions", {"model": "{model}-openai", "messages": [{"role": "user",
        "content": [{"type": "video_url", "video_url": {"url": "https://x.test/v.mp4"}}]}]}),
    "responses previous_response_id": ("/v1/responses", {"model": "{model}-openai", "input": "and then?",
                                                         "previous_response_id": "resp_123"}),
}


def unsized(case: str, model: str) -> tuple[str, dict[str, Any]]:
    path, body = UNSIZED[case]
    return path.format(model=model), json.loads(json.dumps(body).replace("{model}", model))


def error_message(raw: bytes) -> str:
    error = json.loads(raw)["error"]
    return error["message"]


@pytest.mark.parametrize("case", UNSIZED)
def test_media_of_unknown_size_are_refused_by_a_model_without_an_input_bound(native_gw: GatewayProcess,
                                                                             native_key: str, native: NativeUpstream,
                                                                             case: str) -> None:
    before = len(native.requests)
    path, body = unsized(case, "media-heavy")
    status, raw = call(native_gw, path, native_key, body)
    assert status == 400 and "max_input_tokens" in error_message(raw), raw
    assert len(native.requests) == before


@pytest.mark.parametrize("case", UNSIZED)
def test_media_of_unknown_size_are_held_at_the_models_input_bound(native_gw: GatewayProcess, native_key: str,
                                                                  case: str) -> None:
    """The probe: a video by URL was held at 0 tokens, and the upstream reported 1,000,000."""
    seen = len(native_gw.log_entries())
    path, body = unsized(case, "media-window")
    status, raw = call(native_gw, path, native_key, body)
    assert status == 200, raw
    line = newest_entry(native_gw, body.get("model") or "media-window-gemini", seen)
    hold, row = books(native_gw, line["request_id"])
    assert hold >= 1048576 * 1000  # the context window at the input price (plus the most output)
    assert row["input_tokens"] == 1_000_000 and row["cost"] <= hold and row["overrun"] == 0


def test_media_past_the_input_bound_are_charged_the_hold_and_counted_as_an_overrun(native_gw: GatewayProcess,
                                                                                  native_key: str) -> None:
    seen = len(native_gw.log_entries())
    path, body = UNSIZED["gemini fileData"]
    status, _ = call(native_gw, path.replace("{model}-gemini", "media-half-window-gemini"), native_key, body)
    assert status == 200
    line = newest_entry(native_gw, "media-half-window-gemini", seen)
    hold, row = books(native_gw, line["request_id"])
    assert row["cost"] == hold and row["overrun_tokens"] == 500_000 and row["unbilled"] == 0


def test_a_small_wallet_cannot_start_a_request_for_media_of_unknown_size(native_gw: GatewayProcess,
                                                                        native: NativeUpstream) -> None:
    """The probe: $0.0035 of credit became $38.99 of unbilled usage over 38 requests."""
    cli(native_gw.config, "accounts", "create", "small-wallet", "--credit", "0.0035", env=native_gw.env)
    key = cli(native_gw.config, "keys", "create", "--account", "small-wallet", env=native_gw.env)["key"]
    before = len(native.requests)
    path, body = unsized("gemini fileData", "media-window")
    status, raw = call(native_gw, path, key, body)
    assert status == 402 and "available" in error_message(raw), raw
    assert len(native.requests) == before
    assert wallet(native_gw, "small-wallet")["balance"] == 3_500_000


# -- models by kind ------------------------------------------------------------------------------------------

TEXT_CALLS = {
    "chat": ("/v1/chat/completions", {"model": "{m}", "messages": [{"role": "user", "content": "hi"}]}),
    "completions": ("/v1/completions", {"model": "{m}", "prompt": "hi"}),
    "responses": ("/v1/responses", {"model": "{m}", "input": "hi"}),
    "embeddings": ("/v1/embeddings", {"model": "{m}", "input": "hi"}),
    "messages": ("/v1/messages", {"model": "{m}", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
    "count_tokens": ("/v1/messages/count_tokens", {"model": "{m}", "messages": [{"role": "user", "content": "hi"}]}),
    "generateContent": ("/v1beta/models/{m}:generateContent", {"contents": [{"parts": [{"text": "hi"}]}]}),
    "countTokens": ("/v1beta/models/{m}:countTokens", {"contents": [{"parts": [{"text": "hi"}]}]}),
}


@pytest.mark.parametrize("model, endpoint", [("pixels", "/v1/images"), ("clip", "/v1/videos")])
@pytest.mark.parametrize("text_call", TEXT_CALLS)
def test_text_endpoints_refuse_models_priced_per_image_or_second(native_gw: GatewayProcess, native_key: str,
                                                                 native: NativeUpstream, text_call: str, model: str,
                                                                 endpoint: str) -> None:
    """The probe: demo-image answered chat, messages and generateContent, so the upstream's text work was free."""
    path, body = TEXT_CALLS[text_call]
    before = len(native.requests)
    status, raw = call(native_gw, path.replace("{m}", model), native_key,
                       json.loads(json.dumps(body).replace("{m}", model)))
    assert status == 400 and endpoint in error_message(raw), raw
    assert len(native.requests) == before


def test_image_and_video_endpoints_refuse_models_priced_per_token(native_gw: GatewayProcess, native_key: str) -> None:
    status, raw = call(native_gw, "/v1/images/generations", native_key, {"model": "scripted-openai",
                                                                          "prompt": "a cat"})
    assert status == 400 and "image prices" in error_message(raw)
    status, raw = call(native_gw, "/v1/videos", native_key, {"model": "scripted-openai", "prompt": "a cat"})
    assert status == 400 and "not a video model" in error_message(raw)


# -- one prompt estimate, whatever the format ---------------------------------------------------------------

SAME_CONTENT = {  # a system prompt and "hi", in each client format
    "chat": ("/v1/chat/completions", {"model": "{m}", "max_tokens": 20, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]}),
    "responses": ("/v1/responses", {"model": "{m}", "max_output_tokens": 20, "instructions": "Be brief.",
                                    "input": "hi"}),
    "anthropic": ("/v1/messages", {"model": "{m}", "max_tokens": 20, "system": "Be brief.",
                                   "messages": [{"role": "user", "content": "hi"}]}),
    "gemini": ("/v1beta/models/{m}:generateContent", {"systemInstruction": {"parts": [{"text": "Be brief."}]},
                                                      "generationConfig": {"maxOutputTokens": 20},
                                                      "contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
}


def test_the_same_prompt_gets_the_same_hold_from_every_format_and_lane(native_gw: GatewayProcess,
                                                                       native_key: str) -> None:
    """The probe: "hi" was 8 tokens through the OpenAI passthrough and 7 through the translated lanes."""
    holds = {}
    for client, (path, body) in SAME_CONTENT.items():
        for upstream in FORMATS:  # passthrough for one, translation for the two others
            model = f"engine-{upstream}"
            seen = len(native_gw.log_entries())
            status, raw = call(native_gw, path.replace("{m}", model), native_key,
                               json.loads(json.dumps(body).replace("{m}", model)))
            assert status == 200, raw
            holds[(client, upstream)] = books(native_gw, newest_entry(native_gw, model, seen)["request_id"])[0]
    assert len(set(holds.values())) == 1, holds
