"""The OpenAI passthrough, through the package surface core/ uses (`from adapters import openai`): request
preparation, usage normalization, stream metering."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters import openai
from billing.metering import Meter, Usage, count_text


def test_prepare_forces_upstream_usage_but_remembers_the_client_choice() -> None:
    body = {"model": "pub", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    p = openai.prepare("chat", body, "up-model", 100)
    sent = orjson.loads(p.upstream_body)
    assert sent["model"] == "up-model" and sent["stream_options"] == {"include_usage": True}
    assert p.stream and not p.include_usage
    body["stream_options"] = {"include_usage": True}
    assert openai.prepare("chat", body, "up-model", 100).include_usage


def test_the_upstream_is_told_the_held_limit_and_n_multiplies_it() -> None:
    msgs = [{"role": "user", "content": "hi"}]
    capped = openai.prepare("chat", {"messages": msgs, "max_tokens": 5000}, "m", 100)
    assert orjson.loads(capped.upstream_body)["max_tokens"] == 100 and capped.max_output == 100
    unset = openai.prepare("chat", {"messages": msgs}, "m", 100, "max_completion_tokens")
    assert orjson.loads(unset.upstream_body)["max_completion_tokens"] == 100
    assert orjson.loads(openai.prepare("responses", {"input": "x"}, "m", 7).upstream_body)["max_output_tokens"] == 7
    many = openai.prepare("chat", {"messages": msgs, "n": 50, "max_tokens": 10}, "m", 100)
    assert many.max_output == 500
    best = openai.prepare("completions", {"prompt": "x", "n": 2, "best_of": 5, "max_tokens": 10}, "m", 100)
    assert best.max_output == 50
    with pytest.raises(openai.InvalidRequest) as err:
        openai.prepare("chat", {"messages": msgs, "n": 0}, "m", 100)
    assert err.value.param == "n"


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_whatever_the_client_sent_the_upstream_gets_one_limit_field_with_the_held_value(field: str) -> None:
    """llama.cpp's server reads n_predict before max_completion_tokens before max_tokens; llama-cpp-python and
    Ollama read only max_tokens: every spelling the client sent goes, and the provider's one comes in."""
    msgs = [{"role": "user", "content": "hi"}]
    for sent in ({"max_completion_tokens": 30}, {"max_tokens": 30}, {"n_predict": 30}, {"max_new_tokens": 30},
                 {"max_tokens": 30, "max_completion_tokens": 30, "n_predict": 30}, {}):
        prepared = openai.prepare("chat", {"messages": msgs, **sent}, "m", 30, field)
        body = orjson.loads(prepared.upstream_body)
        assert [k for k in openai.LIMIT_FIELDS if k in body] == [field] and body[field] == prepared.max_output == 30
    for endpoint, body, field in (("completions", {"prompt": "x", "max_completion_tokens": 9}, "max_tokens"),
                                  ("responses", {"input": "x", "max_tokens": 9, "max_output_tokens": 9},
                                   "max_output_tokens")):
        upstream = orjson.loads(openai.prepare(endpoint, body, "m", 50, "max_completion_tokens").upstream_body)
        assert [k for k in openai.LIMIT_FIELDS if k in upstream] == [field] and upstream[field] == 9


def test_a_limit_spelled_twice_with_two_values_is_refused_naming_both() -> None:
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.InvalidRequest) as err:
        openai.prepare("chat", {"messages": msgs, "max_completion_tokens": 1, "max_tokens": 100000}, "m", 4096)
    assert "'max_completion_tokens' (1) and 'max_tokens' (100000)" in str(err.value)
    with pytest.raises(openai.InvalidRequest) as err:
        openai.prepare("chat", {"messages": msgs, "max_tokens": 10, "n_predict": -1}, "m", 4096)
    assert err.value.param == "n_predict"


def test_max_output_is_the_request_limit_capped_by_the_model() -> None:
    msgs = [{"role": "user", "content": "hi"}]
    assert openai.prepare("chat", {"messages": msgs}, "m", 4096).max_output == 4096
    assert openai.prepare("chat", {"messages": msgs, "max_tokens": 10}, "m", 4096).max_output == 10
    assert openai.prepare("chat", {"messages": msgs, "max_completion_tokens": 9999}, "m", 4096).max_output == 4096
    assert openai.prepare("responses", {"input": "x", "max_output_tokens": 7}, "m", 50).max_output == 7
    with pytest.raises(openai.InvalidRequest) as err:
        openai.prepare("chat", {"messages": msgs, "max_tokens": -1}, "m", 4096)
    assert err.value.param == "max_tokens"


@pytest.mark.parametrize("endpoint, body, param", [
    ("chat", {"messages": []}, "messages"),
    ("chat", {"messages": ["x"]}, "messages"),
    ("chat", {"messages": [{"role": "user", "content": "x"}], "stream": 1}, "stream"),
    ("chat", {"messages": [{"role": "user", "content": "x"}], "stream_options": "yes"}, "stream_options"),
    ("embeddings", {}, "input"),
    ("embeddings", {"input": {"a": 1}}, "input"),
    ("embeddings", {"input": "x", "stream": True}, "stream"),
    ("completions", {}, "prompt"),
    ("responses", {"input": 5}, "input"),
])
def test_invalid_requests_name_the_param(endpoint: str, body: dict, param: str) -> None:
    with pytest.raises(openai.InvalidRequest) as err:  # as the relay plans it: the body, then the prompt
        openai.prepare(endpoint, body, "m", 10)
        openai.estimate_prompt(endpoint, body)
    assert err.value.param == param


def test_prompt_estimate_counts_text_framing_and_images() -> None:
    text = "The quick brown fox"
    plain = openai.estimate_prompt("chat", {"messages": [{"role": "user", "content": text}]})
    assert plain == 3 + count_text(text) + 3  # a message's framing, its text, the reply's framing
    with_image = openai.estimate_prompt("chat", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": "data:,", "detail": "low"}}]}]})
    assert with_image == plain + 85
    assert openai.estimate_prompt("embeddings", {"input": [[1, 2, 3], [4]]}) == 4


def test_usage_normalization_of_real_payloads() -> None:
    chat = {"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
            "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 128}}
    assert openai.normalize_usage(chat) == Usage(2006, 300, 1920, 0, 128)
    responses = {"input_tokens": 36, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 87,
                 "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 123}
    assert openai.normalize_usage(responses) == Usage(36, 87, 0, 0, 0)
    assert openai.normalize_usage({"prompt_tokens": 0, "completion_tokens": 0}) == Usage(0, 0)
    assert openai.normalize_usage(None) is None
    assert openai.normalize_usage({"prompt_tokens": "many", "completion_tokens": -3}) == Usage(0, 0)


def test_stream_event_flags_and_counting() -> None:
    m = Meter(10)
    chat, responses = openai.PassthroughStream("chat", m), openai.PassthroughStream("responses", m)
    chunk = b'{"choices":[{"index":0,"delta":{"content":"Hello world"}}]}'
    assert chat.feed(chunk) == 0
    tool = b'{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"a\\":1}"}}]}}]}'
    chat.feed(tool)
    assert m.output_observed == count_text("Hello world") + count_text('{"a":1}')
    usage_only = b'{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}'
    assert chat.feed(usage_only) == openai.USAGE_ONLY
    assert m.record().source == "upstream" and m.record().usage == Usage(5, 2)
    assert chat.feed(b'{"error":{"message":"x"}}') & openai.UPSTREAM_ERROR
    assert responses.feed(b'{"type":"response.completed","response":{}}') \
        == openai.TERMINAL
    assert chat.feed(b"not json") == openai.NOT_JSON
    content_with_usage = b'{"choices":[{"index":0,"delta":{"content":"x"}}],"usage":{"prompt_tokens":1}}'
    assert chat.feed(content_with_usage) == openai.USAGE_ON_CONTENT
    assert orjson.loads(openai.without_usage(content_with_usage))["usage"] is None


def test_error_shapes() -> None:
    body = orjson.loads(openai.error_body(404, "no such model", "model_not_found", "model", "req_1"))
    assert body == {"error": {"message": "no such model", "type": "invalid_request_error", "param": "model",
                              "code": "model_not_found", "request_id": "req_1"}}
    chat = openai.stream_error_event("chat", "gone", "upstream_closed", "req_1", 3)
    assert chat.startswith(b"data: {\"error\":") and chat.endswith(b"\n\n")
    resp = openai.stream_error_event("responses", "gone", "upstream_closed", "req_1", 3)
    data = orjson.loads(resp.split(b"data: ")[1])
    assert resp.startswith(b"event: error\n") and data["type"] == "error" and data["error"]["code"] == "upstream_closed"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["role", "content", "type", "text", "tool_calls", "function", "arguments", "name",
                         "image_url", "detail", "input_audio", "data", "x"]), children, max_size=4),
    max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(endpoint=st.sampled_from(["chat", "completions", "embeddings", "responses"]),
       body=st.dictionaries(st.sampled_from(["messages", "prompt", "input", "instructions", "tools", "stream",
                                             "stream_options", "max_tokens", "max_output_tokens"]),
                            json_values, max_size=5))
def test_any_json_body_is_prepared_or_refused_never_crashes(endpoint: str, body: dict) -> None:
    try:
        p = openai.prepare(endpoint, body, "m", 100)
        estimate = openai.estimate_prompt(endpoint, body)
    except openai.InvalidRequest:
        return
    assert estimate >= 0 and 0 <= p.max_output <= 100


def test_huge_prompts_are_counted_within_a_budget() -> None:
    import time

    body = {"messages": [{"role": "user", "content": "y" * 999_999} for _ in range(10)]}
    started = time.perf_counter()
    estimate = openai.estimate_prompt("chat", body)
    assert time.perf_counter() - started < 1.0  # the 10 MB body of the review took 5.5 s before
    assert estimate >= 9 * 999_999 // 4


def test_a_responses_stream_cut_at_the_limit_closes_its_open_items_and_ends_incomplete() -> None:
    m = Meter(10)
    stream = openai.PassthroughStream("responses", m)
    where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    for n, event in enumerate([
            {"type": "response.created", "response": {"id": "resp_1", "object": "response", "status": "in_progress"}},
            {"type": "response.output_item.added", "output_index": 0,
             "item": {"type": "message", "id": "msg_1", "status": "in_progress", "role": "assistant", "content": []}},
            {"type": "response.content_part.added", **where, "part": {"type": "output_text", "text": ""}},
            {"type": "response.output_text.delta", **where, "delta": "Hello"},
            {"type": "response.output_text.delta", **where, "delta": " world"}]):
        stream.feed(orjson.dumps({**event, "sequence_number": n}))
    events = [orjson.loads(block.split(b"data: ", 1)[1]) for block in
              stream.cut(Usage(10, 2), include_usage=False).split(b"\n\n") if block]
    assert [e["type"] for e in events] == ["response.output_text.done", "response.content_part.done",
                                           "response.output_item.done", "response.incomplete"]
    assert [e["sequence_number"] for e in events] == [5, 6, 7, 8]
    assert events[0]["text"] == "Hello world" and events[2]["item"]["status"] == "incomplete"
    final = events[3]["response"]
    assert final["id"] == "resp_1" and final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"][0]["content"][0]["text"] == "Hello world" and final["usage"]["output_tokens"] == 2


def test_a_chat_stream_cut_at_the_limit_finishes_every_open_choice() -> None:
    m = Meter(10)
    stream = openai.PassthroughStream("chat", m, choices=3)
    head = {"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m"}
    stream.feed(orjson.dumps({**head, "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]}))
    stream.feed(orjson.dumps({**head, "choices": [{"index": 1, "delta": {}, "finish_reason": "stop"}]}))
    tail = stream.cut(Usage(10, 2), include_usage=True).split(b"\n\n")
    finish, usage = orjson.loads(tail[0][6:]), orjson.loads(tail[1][6:])
    assert {k: finish[k] for k in head} == head
    assert [(c["index"], c["finish_reason"]) for c in finish["choices"]] == [(0, "length"), (2, "length")]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 2 and tail[2] == b"data: [DONE]"
