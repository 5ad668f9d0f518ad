"""The Ollama mock itself (tests/ollama_upstream.py), over raw HTTP: NDJSON framing and content types, the done
line's fields, the num_predict cut, tool calls with object arguments, images, thinking, embed, and the errors."""

from __future__ import annotations

import base64
import http.client
import json
import math
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.ollama_upstream import (BUSY, CALL_TOKENS, CRASH, EMBED_CONTEXT, EMBED_DIM, IMAGE_TOKENS, MESSAGE_TOKENS,
                                   RUNAWAY_WORDS, STREAM_ERROR, THINKING, TOOL_TOKENS, VERSION, OllamaUpstream)

DONE_FIELDS = {"total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
               "eval_duration"}
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather in a given city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
PNG = base64.b64encode(bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000")).decode()


@pytest.fixture(scope="module")
def ollama() -> Iterator[OllamaUpstream]:
    up = OllamaUpstream().start()
    yield up
    up.stop()


def call(up: OllamaUpstream, path: str, body: Any = None, method: str = "POST",
         raw: bytes | None = None) -> tuple[int, str, bytes]:
    """A raw request: the status, the Content-Type and the body's bytes, errors included."""
    data = raw if raw is not None else json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(up.base_url + path, data, {"Content-Type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def chat(up: OllamaUpstream, body: dict[str, Any]) -> tuple[int, str, bytes]:
    return call(up, "/api/chat", body)


def ndjson(raw: bytes) -> list[dict[str, Any]]:
    """The lines of an NDJSON body: each a complete JSON object ended by a newline."""
    assert raw.endswith(b"\n")
    lines = raw.split(b"\n")[:-1]
    assert all(lines), "no blank lines between objects"
    return [json.loads(line) for line in lines]


def user(text: str, **extra: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text, **extra}]


# -- /api/chat: framing -----------------------------------------------------------------------------


def test_stream_is_the_default_and_is_ndjson(ollama: OllamaUpstream) -> None:
    status, ctype, raw = chat(ollama, {"model": "llama3.2", "messages": user("why is the sky blue")})
    assert status == 200 and ctype == "application/x-ndjson"
    lines = ndjson(raw)
    assert [x["done"] for x in lines] == [False] * 5 + [True]
    assert "".join(x["message"]["content"] for x in lines) == "why is the sky blue"
    assert [x["message"]["content"] for x in lines[:2]] == ["why", " is"]
    for x in lines:
        assert x["model"] == "llama3.2" and x["message"]["role"] == "assistant"
        assert x["created_at"].endswith("Z") and "T" in x["created_at"]
    assert not DONE_FIELDS & set(lines[0]) and "done_reason" not in lines[0]
    last = lines[-1]
    assert last["message"] == {"role": "assistant", "content": ""}
    assert last["done_reason"] == "stop" and DONE_FIELDS <= set(last)
    assert last["prompt_eval_count"] == MESSAGE_TOKENS + 5 and last["eval_count"] == 5
    assert all(isinstance(last[k], int) and last[k] > 0 for k in DONE_FIELDS)
    assert last["total_duration"] >= last["load_duration"] + last["prompt_eval_duration"] + last["eval_duration"]
    assert ollama.last().body["messages"] == user("why is the sky blue")


def test_non_stream_is_one_json_object(ollama: OllamaUpstream) -> None:
    status, ctype, raw = chat(ollama, {"model": "llama3.2:latest", "messages": user("hello world"), "stream": False})
    assert status == 200 and ctype.startswith("application/json")
    body = json.loads(raw)
    assert body["model"] == "llama3.2:latest"  # the name as sent
    assert body["message"] == {"role": "assistant", "content": "hello world"}
    assert body["done"] is True and body["done_reason"] == "stop"
    assert body["eval_count"] == 2 and body["prompt_eval_count"] == MESSAGE_TOKENS + 2


def test_prompt_count_rule(ollama: OllamaUpstream) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "one two three"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
                {"role": "tool", "content": "sunny", "tool_name": "get_weather"}]
    body = json.loads(chat(ollama, {"model": "llama3.2", "messages": messages, "tools": TOOLS, "stream": False})[2])
    assert body["prompt_eval_count"] == 4 * MESSAGE_TOKENS + 2 + 3 + 1 + CALL_TOKENS + TOOL_TOKENS
    assert body["message"]["content"] == "The tool said: sunny"


# -- the output limit and stop ----------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
def test_num_predict_cuts_with_length(ollama: OllamaUpstream, stream: bool) -> None:
    req = {"model": "llama3.2", "messages": user("a b c d e f g"), "options": {"num_predict": 3}, "stream": stream}
    status, _, raw = chat(ollama, req)
    assert status == 200
    if stream:
        lines = ndjson(raw)
        assert len(lines) == 4 and "".join(x["message"]["content"] for x in lines) == "a b c"
        last = lines[-1]
    else:
        last = json.loads(raw)
        assert last["message"]["content"] == "a b c"
    assert last["done_reason"] == "length" and last["eval_count"] == 3


@pytest.mark.parametrize("limit", [-1, -2, 0, 100])
def test_no_cut_without_a_positive_limit_reached(ollama: OllamaUpstream, limit: int) -> None:
    body = json.loads(chat(ollama, {"model": "llama3.2", "messages": user("a b c d"), "stream": False,
                                    "options": {"num_predict": limit}})[2])
    assert body["message"]["content"] == "a b c d" and body["done_reason"] == "stop"


def test_stop_sequences(ollama: OllamaUpstream) -> None:
    body = json.loads(chat(ollama, {"model": "llama3.2", "messages": user("one two. three"), "stream": False,
                                    "options": {"stop": [".", "zzz"]}})[2])
    assert body["message"]["content"] == "one two" and body["done_reason"] == "stop"


def test_runaway_ignores_num_predict(ollama: OllamaUpstream) -> None:
    lines = ndjson(chat(ollama, {"model": "runaway", "messages": user("hi"), "options": {"num_predict": 5}})[2])
    assert len(lines) == RUNAWAY_WORDS + 1
    assert lines[-1]["eval_count"] == RUNAWAY_WORDS and lines[-1]["done_reason"] == "stop"


# -- usage quirks -----------------------------------------------------------------------------------


def test_cached_model_omits_prompt_eval_count(ollama: OllamaUpstream) -> None:
    last = ndjson(chat(ollama, {"model": "cached", "messages": user("hi there")})[2])[-1]
    assert last["done"] is True and last["eval_count"] == 2
    assert "prompt_eval_count" not in last and "prompt_eval_duration" not in last


def test_cache_hit_model_reports_cached_tokens(ollama: OllamaUpstream) -> None:
    messages = [{"role": "system", "content": "a long system prompt here"}, *user("hi")]
    body = json.loads(chat(ollama, {"model": "cache-hit", "messages": messages, "stream": False})[2])
    assert body["prompt_eval_count"] == 2 * MESSAGE_TOKENS + 5 + 1
    assert body["prompt_eval_cached_count"] == MESSAGE_TOKENS + 5  # everything before the last message


# -- tool calls -------------------------------------------------------------------------------------


def test_tool_call_streamed_in_one_line_with_object_arguments(ollama: OllamaUpstream) -> None:
    req = {"model": "llama3.2", "messages": user('call: get_weather {"city": "Tokyo"}'), "tools": TOOLS}
    lines = ndjson(chat(ollama, req)[2])
    assert len(lines) == 2
    calls = lines[0]["message"]["tool_calls"]
    assert lines[0]["done"] is False and lines[0]["message"]["content"] == ""
    assert len(calls) == 1 and calls[0]["id"].startswith("call_")
    assert calls[0]["function"] == {"index": 0, "name": "get_weather", "arguments": {"city": "Tokyo"}}
    assert isinstance(calls[0]["function"]["arguments"], dict)
    assert lines[1]["done"] is True and lines[1]["done_reason"] == "stop" and "tool_calls" not in lines[1]["message"]
    assert lines[1]["eval_count"] == CALL_TOKENS


def test_tool_calls_non_stream_and_parallel(ollama: OllamaUpstream) -> None:
    req = {"model": "llama3.2", "messages": user("call: | get_weather {\"city\": \"Oslo\"}"), "tools": TOOLS,
           "stream": False}
    body = json.loads(chat(ollama, req)[2])
    calls = body["message"]["tool_calls"]
    assert [c["function"]["index"] for c in calls] == [0, 1]
    assert [c["function"]["arguments"] for c in calls] == [{"city": "Paris"}, {"city": "Oslo"}]
    assert body["message"]["content"] == "" and body["done_reason"] == "stop"
    assert body["eval_count"] == 2 * CALL_TOKENS


def test_late_tools_arrive_on_the_done_line(ollama: OllamaUpstream) -> None:
    lines = ndjson(chat(ollama, {"model": "late-tools", "messages": user("call:"), "tools": TOOLS})[2])
    assert len(lines) == 1 and lines[0]["done"] is True
    assert lines[0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_no_call_without_tools_or_prefix(ollama: OllamaUpstream) -> None:
    plain = json.loads(chat(ollama, {"model": "llama3.2", "messages": user("call: x"), "stream": False})[2])
    assert plain["message"] == {"role": "assistant", "content": "call: x"}
    other = json.loads(chat(ollama, {"model": "llama3.2", "messages": user("weather?"), "tools": TOOLS,
                                     "stream": False})[2])
    assert "tool_calls" not in other["message"]


def test_no_tools_capability(ollama: OllamaUpstream) -> None:
    status, _, raw = chat(ollama, {"model": "notools", "messages": user("call:"), "tools": TOOLS})
    assert status == 400
    assert json.loads(raw) == {"error": "registry.ollama.ai/library/notools:latest does not support tools"}


# -- images and thinking ----------------------------------------------------------------------------


def test_images_are_base64_and_counted(ollama: OllamaUpstream) -> None:
    body = json.loads(chat(ollama, {"model": "llava", "messages": user("what is this", images=[PNG, PNG]),
                                    "stream": False})[2])
    assert body["message"]["content"] == "I see 2 images. what is this"
    assert body["prompt_eval_count"] == MESSAGE_TOKENS + 3 + 2 * IMAGE_TOKENS
    assert ollama.last().body["messages"][0]["images"] == [PNG, PNG]


@pytest.mark.parametrize("image,byte", [("data:image/png;base64," + PNG, 4), ("https://x/y.png", 5)])
def test_images_reject_data_urls_and_urls(ollama: OllamaUpstream, image: str, byte: int) -> None:
    status, ctype, raw = chat(ollama, {"model": "llava", "messages": user("?", images=[image])})
    assert status == 400 and ctype.startswith("application/json")
    assert json.loads(raw) == {"error": f"illegal base64 data at input byte {byte}"}


def test_thinking(ollama: OllamaUpstream) -> None:
    lines = ndjson(chat(ollama, {"model": "thinker", "messages": user("hi")})[2])
    thinking = [x for x in lines if x["message"].get("thinking")]
    assert "".join(x["message"]["thinking"] for x in thinking) == THINKING
    assert all(x["message"]["content"] == "" for x in thinking) and lines.index(thinking[-1]) < len(thinking)
    assert lines[-1]["eval_count"] == len(THINKING.split()) + 1
    off = json.loads(chat(ollama, {"model": "thinker", "messages": user("hi"), "think": False, "stream": False})[2])
    assert off["message"] == {"role": "assistant", "content": "hi"}
    level = json.loads(chat(ollama, {"model": "thinker", "messages": user("hi"), "think": "low", "stream": False})[2])
    assert level["message"]["thinking"] == THINKING


def test_think_refused(ollama: OllamaUpstream) -> None:
    status, _, raw = chat(ollama, {"model": "llama3.2", "messages": user("hi"), "think": True})
    assert status == 400 and json.loads(raw) == {"error": '"llama3.2" does not support thinking'}
    status, _, raw = chat(ollama, {"model": "thinker", "messages": user("hi"), "think": "ultra"})
    assert status == 400 and json.loads(raw)["error"].startswith('invalid think value: "ultra"')


# -- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
def test_unknown_model_is_404_json(ollama: OllamaUpstream, stream: bool) -> None:
    status, ctype, raw = chat(ollama, {"model": "nope", "messages": user("hi"), "stream": stream})
    assert status == 404 and ctype.startswith("application/json")
    assert json.loads(raw) == {"error": "model 'nope' not found"}


def test_error_mid_stream(ollama: OllamaUpstream) -> None:
    status, ctype, raw = chat(ollama, {"model": "stream-error", "messages": user("one two three")})
    assert status == 200 and ctype == "application/x-ndjson"
    lines = ndjson(raw)
    assert [x.get("done") for x in lines] == [False, False, None]
    assert lines[-1] == {"error": STREAM_ERROR}
    status, _, raw = chat(ollama, {"model": "stream-error", "messages": user("x"), "stream": False})
    assert status == 500 and json.loads(raw) == {"error": STREAM_ERROR}


def test_die_drops_the_connection(ollama: OllamaUpstream) -> None:
    req = urllib.request.Request(ollama.base_url + "/api/chat",
                                 json.dumps({"model": "die", "messages": user("a b c d")}).encode())
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200
        with pytest.raises(http.client.IncompleteRead) as cut:
            resp.read()
    assert [json.loads(line)["message"]["content"] for line in cut.value.partial.splitlines()] == ["a", " b"]


@pytest.mark.parametrize("body,raw,status,error", [
    (None, b"", 400, "missing request body"),
    (None, b"{not json", 400, None),
    ({"messages": user("hi")}, None, 400, "model is required"),
    ({"model": "all-minilm", "messages": user("hi")}, None, 400, '"all-minilm" does not support chat'),
    ({"model": "busy", "messages": user("hi")}, None, 503, BUSY),
    ({"model": "crash", "messages": user("hi")}, None, 500, CRASH),
    ({"model": "llama3.2", "messages": user("hi"), "options": {"num_predict": "9"}}, None, 500,
     'option "num_predict" must be of type integer'),
    ({"model": "llama3.2", "messages": user("hi"), "options": {"stop": "\n"}}, None, 500,
     'option "stop" must be of type array'),
])
def test_refusals(ollama: OllamaUpstream, body: Any, raw: bytes | None, status: int, error: str | None) -> None:
    got, ctype, data = call(ollama, "/api/chat", body, raw=raw)
    assert got == status and ctype.startswith("application/json")
    answer = json.loads(data)
    assert set(answer) == {"error"} and (error is None or answer["error"] == error)


@pytest.mark.parametrize("keep_alive,reason", [(None, "load"), (0, "unload"), ("0s", "unload"), ("5m", "load")])
def test_empty_messages_load_or_unload(ollama: OllamaUpstream, keep_alive: Any, reason: str) -> None:
    req: dict[str, Any] = {"model": "llama3.2", "messages": []}
    if keep_alive is not None:
        req["keep_alive"] = keep_alive
    status, ctype, raw = chat(ollama, req)  # stream is true by default, yet one JSON object comes back
    assert status == 200 and ctype.startswith("application/json")
    body = json.loads(raw)
    assert body["done"] is True and body["done_reason"] == reason and not DONE_FIELDS & set(body)


# -- pacing and a reader who leaves ----------------------------------------------------------------


def test_line_delay_and_early_leave() -> None:
    up = OllamaUpstream(line_delay=0.01).start()
    try:
        payload = json.dumps({"model": "runaway", "messages": user("hi")}).encode()
        sock = socket.create_connection(("127.0.0.1", up.port), timeout=5)
        sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(payload) + payload)
        started = time.monotonic()
        seen = b""
        while seen.count(b'"done":false') < 3:
            seen += sock.recv(65536)
        assert time.monotonic() - started >= 0.015  # the lines are paced
        sock.close()
        deadline = time.monotonic() + 5
        while up.streams[-1].written == up.streams[-1].total and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        log = up.streams[-1]
        assert log.model == "runaway" and not log.complete and log.written < log.total
    finally:
        up.stop()


# -- /api/embed -------------------------------------------------------------------------------------


def test_embed_shapes(ollama: OllamaUpstream) -> None:
    status, ctype, raw = call(ollama, "/api/embed", {"model": "all-minilm", "input": "why is the sky blue"})
    assert status == 200 and ctype.startswith("application/json")
    one = json.loads(raw)
    assert set(one) == {"model", "embeddings", "total_duration", "load_duration", "prompt_eval_count"}
    assert one["model"] == "all-minilm" and one["prompt_eval_count"] == 5
    assert len(one["embeddings"]) == 1 and len(one["embeddings"][0]) == EMBED_DIM
    assert math.isclose(sum(v * v for v in one["embeddings"][0]), 1.0, rel_tol=1e-5)
    two = json.loads(call(ollama, "/api/embed", {"model": "llama3.2", "input": ["a b", "c"], "dimensions": 4})[2])
    assert [len(v) for v in two["embeddings"]] == [4, 4] and two["prompt_eval_count"] == 3
    assert math.isclose(sum(v * v for v in two["embeddings"][1]), 1.0, rel_tol=1e-5)
    empty = json.loads(call(ollama, "/api/embed", {"model": "all-minilm", "input": ""})[2])
    assert empty == {"model": "all-minilm", "embeddings": []}


def test_embed_errors_and_truncation(ollama: OllamaUpstream) -> None:
    status, _, raw = call(ollama, "/api/embed", {"model": "nope", "input": "x"})
    assert status == 404 and json.loads(raw) == {"error": 'model "nope" not found, try pulling it first'}
    status, _, raw = call(ollama, "/api/embed", {"model": "all-minilm", "input": [1, 2]})
    assert status == 400 and json.loads(raw) == {"error": "invalid input type"}
    long = " ".join(["w"] * (EMBED_CONTEXT + 10))
    status, _, raw = call(ollama, "/api/embed", {"model": "all-minilm", "input": long, "truncate": False})
    assert status == 400 and json.loads(raw) == {"error": "the input length exceeds the context length"}
    cut = json.loads(call(ollama, "/api/embed", {"model": "all-minilm", "input": long})[2])
    assert cut["prompt_eval_count"] == EMBED_CONTEXT


# -- tags, version, unknown paths -------------------------------------------------------------------


def test_tags_version_and_unknown_paths(ollama: OllamaUpstream) -> None:
    status, _, raw = call(ollama, "/api/tags", method="GET")
    models = json.loads(raw)["models"]
    assert status == 200 and {"llama3.2:latest", "all-minilm:latest", "runaway:latest"} <= {m["name"] for m in models}
    for m in models:
        assert {"name", "model", "modified_at", "size", "digest", "details"} <= set(m)
        assert {"format", "family", "families", "parameter_size", "quantization_level"} <= set(m["details"])
    assert json.loads(call(ollama, "/api/version", method="GET")[2]) == {"version": VERSION}
    assert call(ollama, "/", method="GET")[2] == b"Ollama is running"
    for path, method in [("/api/nothing", "POST"), ("/api/chat", "GET"), ("/v1/chat/completions", "POST")]:
        status, ctype, raw = call(ollama, path, {} if method == "POST" else None, method=method)
        assert status == 404 and ctype.startswith("text/plain") and raw == b"404 page not found"


# -- the official client, if present (it is not a dependency) ---------------------------------------


def test_official_client(ollama: OllamaUpstream) -> None:
    client_mod = pytest.importorskip("ollama")
    client = client_mod.Client(host=ollama.base_url)
    answer = client.chat(model="llama3.2", messages=user("hello there"))
    assert answer.message.content == "hello there" and answer.done_reason == "stop"
    parts = list(client.chat(model="llama3.2", messages=user("call:"), tools=TOOLS, stream=True))
    calls = [c for p in parts for c in (p.message.tool_calls or [])]
    assert calls[0].function.arguments == {"city": "Paris"}
    assert len(client.embed(model="all-minilm", input=["a", "b"]).embeddings) == 2
    with pytest.raises(client_mod.ResponseError) as err:
        client.chat(model="nope", messages=user("hi"))
    assert err.value.status_code == 404
