"""One test per pitfall of PROTOCOLS.md section 5 that applies to this gateway (issue 4): end to end through
the gateway and the official SDKs when the trap is what a client receives, pure against the adapters otherwise."""

# e2e (native_gw before tests/native_upstream.py; SDKs or raw bytes; native.requests = what went upstream): 2-10,
# 12, 14, 16-24. Pure (upstream shapes the mock cannot produce): 1, 11, 13, 15, part of 10. Applying only in part:
#   1  not its n>1 half (a translated n>1 is refused, trap 23; OpenAI passthrough relays the upstream's choices).
#   18 the gateway never retries itself: only what it tells the SDKs (x-should-retry, Retry-After, 529) applies.
#   21 no reasoning-model detection needed: translated OpenAI requests always carry max_completion_tokens.

from __future__ import annotations

import base64
import json
import re
import struct
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import orjson
import pytest
from google import genai
from google.genai import errors as gerrors, types as gt
from openai._models import construct_type
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from adapters.anthropic import client as anthropic_client, upstream as anthropic_upstream
from adapters.gemini import upstream as gemini_upstream
from adapters.internal import (
    Chat, End, Message, Reasoning, Reply, StreamContext, Text, TextDelta, Thinking, ThinkingDelta, Tool, ToolCall,
    ToolCallDelta, ToolChoice, ToolResult, Usage,
)
from adapters.openai import chat_client, responses
from tests.conftest import GatewayProcess
from tests.native_upstream import PNG_DOT, NativeUpstream

UPSTREAMS = ("openai", "anthropic", "gemini")
HELLO = [{"role": "user", "content": "hello"}]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOL: Any = {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": SCHEMA}}
TOOLS: dict[str, Any] = {
    "anthropic": {"tools": [{"name": "get_weather", "input_schema": SCHEMA}]},
    "responses": {"tools": [{"type": "function", "name": "get_weather", "parameters": SCHEMA}]}}
CTX = StreamContext(request_id="req_trap", model="pub", created=1730000000)
ANTHROPIC_ID = re.compile(r"^[A-Za-z0-9_-]+$")
GEMINI_SIG = "c2lnLTE="  # the thoughtSignature on the mock's functionCall


def post(url: str, body: Any, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """A raw POST: the status, the headers (lower-case) and the bytes an SDK would parse away."""
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


class GW:
    """The gateway in front of the three-format mock, with an official SDK client of each format."""

    def __init__(self, gw: GatewayProcess, key: str, native: NativeUpstream) -> None:
        self.gw, self.key, self.native = gw, key, native
        self.oai = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=20)
        self.claude = anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0, timeout=20)
        self.gem = self.genai()  # kept: a collected genai.Client closes the connection its models use

    def genai(self, version: str | None = None) -> genai.Client:
        options = gt.HttpOptions(base_url=self.gw.url, api_version=version, timeout=20_000)
        return genai.Client(api_key=self.key, http_options=options)

    def claude_stream(self, model: str, max_tokens: int = 50, messages: Any = HELLO, **extra: Any) -> Any:
        """The final message of anthropic's messages.stream() helper."""
        with self.claude.messages.stream(model=model, max_tokens=max_tokens, messages=messages, **extra) as s:
            return s.get_final_message()

    @property
    def sent(self) -> Any:
        """The body of the last request the gateway sent upstream."""
        return self.native.requests[-1].body

    def ask(self, dialect: str, model: str, stream: bool = True, key: str | None = None, accept: str = "*/*",
            **extra: Any) -> tuple[int, dict[str, str], bytes]:
        """One request in a client dialect (chat, responses, anthropic, gemini), as raw bytes."""
        key, url = key or self.key, self.gw.url
        if dialect in ("chat", "responses"):
            path, field = ("/chat/completions", "messages") if dialect == "chat" else ("/responses", "input")
            url, body, headers = url + "/v1" + path, {field: ASK}, {"authorization": f"Bearer {key}"}
        elif dialect == "anthropic":
            url, body, headers = url + "/v1/messages", {"max_tokens": 50, "messages": ASK}, {
                "x-api-key": key, "anthropic-version": "2023-06-01"}
        else:
            method = "streamGenerateContent?alt=sse" if stream else "generateContent"
            url, body, headers = f"{url}/v1beta/models/{model}:{method}", {"contents": [{"role": "user", "parts": [
                {"text": "Weather in Paris?"}]}]}, {"x-goog-api-key": key}
        body = body if dialect == "gemini" else {"model": model, **body, "stream": stream}
        return post(url, {**body, **extra}, {**headers, "accept": accept})


@pytest.fixture(scope="module")
def g(native_gw: GatewayProcess, native_key: str, native: NativeUpstream) -> GW:
    return GW(native_gw, native_key, native)


def sse(raw: bytes) -> list[tuple[str | None, Any]]:
    """(event name, parsed data) of each SSE event that has data; [DONE] stays a string."""
    out: list[tuple[str | None, Any]] = []
    for block in raw.decode().replace("\r\n", "\n").split("\n\n"):
        lines = block.split("\n")
        data = next((ln[6:] for ln in lines if ln.startswith("data: ")), None)
        if data is not None:
            name = next((ln[7:] for ln in lines if ln.startswith("event: ")), None)
            out.append((name, data if data == "[DONE]" else json.loads(data)))
    return out


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every object inside a JSON value."""
    if isinstance(node, dict):
        yield node
    for value in node.values() if isinstance(node, dict) else node if isinstance(node, list) else ():
        yield from walk(value)


def drain(stream: Any) -> None:
    for _ in stream:
        pass


def call(call_id: str, city: str = "Paris") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": f'{{"city":"{city}"}}'}}


def history_with(call_id: str) -> list[Any]:
    """The question, one get_weather call with this id, and its result."""
    return [*ASK, {"role": "assistant", "content": None, "tool_calls": [call(call_id)]},
            {"role": "tool", "tool_call_id": call_id, "content": "sunny"}]


def signature_sent(g: GW) -> Any:
    """The thoughtSignature on the first functionCall part the gateway sent to the Gemini upstream."""
    return next(p for c in g.sent["contents"] for p in c["parts"] if "functionCall" in p).get("thoughtSignature")


# -- the traps ---------------------------------------------------------------------------------------------


def test_trap_01_tool_call_index() -> None:
    """Trap 1: "Tool-call index wrong in streamed chunks": all calls at index:0, or the Anthropic block index reused."""
    def block(i: int, arg: str | None, **start: Any) -> list[tuple[str, dict[str, Any]]]:
        deltas = [{"type": "text_delta", "text": "Checking."}] if arg is None else \
            [{"type": "input_json_delta", "partial_json": p} for p in ('{"city":', f'"{arg}"}}')]
        return [("content_block_start", {"type": "content_block_start", "index": i, "content_block": start}),
                *[("content_block_delta", {"type": "content_block_delta", "index": i, "delta": d}) for d in deltas],
                ("content_block_stop", {"type": "content_block_stop", "index": i})]

    claude_events = [
        ("message_start", {"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 5}}}),
        *block(0, None, type="text", text=""), *block(1, "Paris", type="tool_use", id="t_a", name="get_weather"),
        *block(2, "Rome", type="tool_use", id="t_b", name="get_time"),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                           "usage": {"output_tokens": 9}}),
        ("message_stop", {"type": "message_stop"})]
    gemini_chunks = [  # the second call comes in the next chunk: indices keep counting
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "Checking."}, {"functionCall": {
            "name": "get_weather", "args": {"city": "Paris"}}}]}, "index": 0}], "responseId": "r1"},
        {"candidates": [{"content": {"role": "model", "parts": [{"functionCall": {
            "name": "get_time", "args": {"city": "Rome"}}}]}, "finishReason": "STOP", "index": 0}]}]
    feeds = {"anthropic": (anthropic_upstream.StreamReader(), [(n, orjson.dumps(d)) for n, d in claude_events]),
             "gemini": (gemini_upstream.StreamReader(), [("", orjson.dumps(c)) for c in gemini_chunks])}
    for fmt, (reader, feed) in feeds.items():
        events = [e for n, d in feed for e in reader.feed(n, d)]
        assert [e.index for e in events if isinstance(e, ToolCallDelta) and e.id] == [0, 1], fmt  # the reader
        writer = chat_client.StreamWriter(CTX)
        raw = b"".join(writer.write(e) for e in events) + writer.close(Usage(5, 9))
        chunks = [d for _, d in sse(raw) if d != "[DONE]"]
        calls = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", ())]
        assert [tc["index"] for tc in calls if "id" in tc] == [0, 1], (fmt, calls)  # not 1, 2; not 0, 0
        state = ChatCompletionStreamState()  # what openai's chat.completions.stream() helper merges them into
        for chunk in chunks:
            list(state.handle_chunk(construct_type(type_=ChatCompletionChunk, value=chunk)))
        merged = state.get_final_completion().choices[0].message.tool_calls or []
        assert [(t.function.name, json.loads(t.function.arguments)) for t in merged] == \
            [("get_weather", {"city": "Paris"}), ("get_time", {"city": "Rome"})], fmt


def test_trap_02_repeated_role_deltas(g: GW) -> None:
    """Trap 2: "Repeated role/id/name deltas get concatenated"; Anthropic blocks contiguous, one open, event: lines."""
    for up in ("anthropic", "gemini"):  # translated for OpenAI clients (passthrough relays the upstream's bytes)
        with g.oai.chat.completions.stream(model=f"scripted-{up}", messages=ASK, tools=[TOOL]) as s:
            deltas = [ev.chunk.choices[0].delta for ev in s if ev.type == "chunk" and ev.chunk.choices]
            message = s.get_final_completion().choices[0].message
        calls = [tc for d in deltas for tc in d.tool_calls or ()]
        assert sum(d.role is not None for d in deltas) == 1, up
        assert [tc.index for tc in calls if tc.id] == [0] and [bool(tc.function and tc.function.name)
                                                               for tc in calls].count(True) == 1
        assert message.tool_calls and message.tool_calls[0].function.name == "get_weather"  # not get_weatherget_weather
        assert message.role == "assistant" and message.tool_calls[0].id == next(tc.id for tc in calls if tc.id)
    writer = anthropic_client.StreamWriter(CTX)  # several blocks in one answer (the mock sends one per turn)
    several = b"".join(writer.write(e) for e in (TextDelta("Checking."), ToolCallDelta(0, "{}", "c_a", "get_weather"),
                                                 ToolCallDelta(1, "{", "c_b", "get_time"), ToolCallDelta(1, "}")))
    raws = [several + writer.write(End("tool_calls")) + writer.close(Usage(5, 9))]
    for up in ("openai", "gemini"):  # translated for Anthropic clients: a text turn, then a tool turn
        raws += [g.ask("anthropic", f"scripted-{up}", **extra)[2] for extra in ({}, TOOLS["anthropic"])]
    for raw in raws:
        assert all(b.startswith(b"event: ") for b in raw.split(b"\n\n") if b.strip()), raw[:300]
        events = sse(raw)
        assert all(name == data["type"] for name, data in events)
        assert events[0][0] == "message_start" and events[-1][0] == "message_stop"
        blocks = [(str(n).rsplit("_", 1)[1], d["index"]) for n, d in events if str(n).startswith("content_block")]
        indices = [i for _, i in blocks]  # 0, 0, 0, 1, 1...: never back to an earlier block
        assert indices and indices == sorted(indices) and sorted(set(indices)) == list(range(len(set(indices))))
        assert raw != raws[0] or len(set(indices)) == 3  # text, get_weather, get_time
        for i in set(indices):  # each block opened, given its deltas, closed before the next opens
            assert re.fullmatch(r"start(delta)*stop", "".join(kind for kind, j in blocks if j == i)), blocks


def test_trap_03_ping_leaking(g: GW) -> None:
    """Trap 3: "ping leaking into other dialects ... Only Anthropic clients may receive ping"."""
    assert b"event: ping" in g.ask("anthropic", "scripted-anthropic")[2]  # the Claude mock sends one; passed on
    for dialect in ("chat", "responses", "gemini"):
        status, _, raw = g.ask(dialect, "scripted-anthropic")
        assert status == 200 and b"ping" not in raw, dialect
        events = sse(raw)
        if dialect == "chat":  # never a chunk without choices
            assert events[-1][1] == "[DONE]" and all(d["choices"] for _, d in events[:-1])
        elif dialect == "responses":
            assert all(d["type"].startswith("response.") for _, d in events)
        else:  # nothing google-genai cannot read
            assert all(line.startswith(b"data: {") for line in raw.splitlines() if line)


def test_trap_04_keepalive_comments_to_gemini(g: GW) -> None:
    """Trap 4: "Keepalives: `: comment` breaks google-genai. For Gemini use blank lines only, and always `data: `"."""
    assert b": keep-alive" in g.ask("chat", "scripted-openai")[2]  # the OpenAI mock opens its streams with one
    for up in UPSTREAMS:
        raw = g.ask("gemini", f"scripted-{up}")[2]
        lines = [line for line in raw.replace(b"\r\n", b"\n").split(b"\n") if line]
        assert lines and all(line.startswith(b"data: {") for line in lines), raw[:300]
        chunks = list(g.gem.models.generate_content_stream(model=f"scripted-{up}", contents="hi"))
        assert "".join(c.text or "" for c in chunks) == f"Hello from {up}"  # google-genai read every chunk


def test_trap_05_silent_truncation(g: GW) -> None:
    """Trap 5: "Silent truncation: if the upstream dies mid-stream, the openai SDK treats EOF as success"."""
    for up in UPSTREAMS:
        model = f"die-{up}"  # the mock sends the first piece of the answer, then drops the connection
        with pytest.raises(openai.APIError) as chat_err:
            drain(g.oai.chat.completions.create(model=model, messages=HELLO, stream=True))
        assert type(chat_err.value) is openai.APIError and isinstance(chat_err.value.body, dict)  # the in-band error
        with pytest.raises(anthropic.APIStatusError) as claude_err:
            g.claude_stream(model)
        assert claude_err.value.status_code == 200  # the error event, after the 200
        with pytest.raises(gerrors.APIError) as gemini_err:
            drain(g.gem.models.generate_content_stream(model=model, contents="hi"))
        assert isinstance(gemini_err.value.code, int) and gemini_err.value.code >= 500
        status, _, raw = g.ask("responses", model)  # the mock's Responses API dies before its first byte
        assert status >= 500 if status != 200 else sse(raw)[-1][1]["type"] in ("response.failed", "error")


def test_trap_06_usage_only_chunk(g: GW) -> None:
    """Trap 6: "Usage-only final chunk (choices: []) ... Send it only when include_usage is set", usage still asked."""
    for up in UPSTREAMS:
        _, headers, raw = g.ask("chat", f"scripted-{up}")
        chunks = [d for _, d in sse(raw) if d != "[DONE]"]
        assert chunks and all(c["choices"] and c.get("usage") is None for c in chunks), up
        if up == "openai":
            assert g.sent["stream_options"] == {"include_usage": True}  # asked upstream all the same, for billing
        entry = g.gw.log_entry(headers["x-tt-request-id"])
        assert (entry["usage_source"], entry["input_tokens"], entry["output_tokens"]) == ("upstream", 20, 9)
        events = sse(g.ask("chat", f"scripted-{up}", stream_options={"include_usage": True})[2])
        assert events[-1][1] == "[DONE]" and [d["choices"] for _, d in events[:-1]].count([]) == 1, up
        assert events[-2][1]["choices"] == [] and events[-2][1]["usage"]["prompt_tokens"] == 20  # Gemini too
        assert all(d["usage"] is None for _, d in events[:-2])


def test_trap_07_cache_accounting(g: GW) -> None:
    """Trap 7: "Anthropic input_tokens excludes cached tokens, while OpenAI prompt_tokens and Gemini include them"."""
    for up in UPSTREAMS:  # 20 prompt tokens: 8 read from the cache, 4 written (Gemini reports no cache write)
        write = 0 if up == "gemini" else 4
        u = g.claude_stream(f"cached-{up}").usage
        assert (u.input_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens, u.output_tokens) == \
            (20 - 8 - write, 8, write, 9), up
        meta = g.gem.models.generate_content(model=f"cached-{up}", contents="hi").usage_metadata
        assert meta is not None and (meta.prompt_token_count, meta.cached_content_token_count,
                                     meta.candidates_token_count) == (20, 8, 9), up
        r = g.oai.chat.completions.with_raw_response.create(model=f"cached-{up}", messages=HELLO)
        usage = r.parse().usage
        assert usage is not None and usage.prompt_tokens == 20 and usage.prompt_tokens_details.cached_tokens == 8
        entry = g.gw.log_entry(r.headers["x-tt-request-id"])
        assert (entry["input_tokens"], entry["cache_read_tokens"], entry["cache_write_tokens"]) == (20, 8, write)
        assert entry["cost_nanousd"] == (20 - 8 - write) * 1000 + 8 * 100 + write * 1250 + 9 * 2000


def test_trap_08_empty_content(g: GW) -> None:
    """Trap 8: "Anthropic rejects empty text blocks ...; Gemini rejects Content with no parts and "" text parts"."""
    history = [{"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "Weather?"}]},
               {"role": "assistant", "content": "", "tool_calls": [call("call_1")]},
               {"role": "tool", "tool_call_id": "call_1", "content": ""},
               {"role": "user", "content": " "}, {"role": "assistant", "content": "Sure, "}]
    g.oai.chat.completions.create(model="scripted-anthropic", messages=history, tools=[TOOL])
    messages = g.sent["messages"]
    assert all(b["text"].strip() for b in walk(messages) if b.get("type") == "text"), messages
    assert messages[-1]["content"][-1] == {"type": "text", "text": "Sure,"}  # the prefill, right-trimmed
    g.oai.chat.completions.create(model="scripted-gemini", messages=history[:4], tools=[TOOL])
    contents = g.sent["contents"]
    assert all(c["parts"] for c in contents) and all(p.get("text") != "" for c in contents for p in c["parts"])
    assert [c["role"] for c in contents] == ["user", "model", "user"]


def test_trap_09_tool_result_grouping(g: GW) -> None:
    """Trap 9: "consecutive OpenAI tool messages must be merged into one user message, with the tool_result first"."""
    calls = [call("call_a"), call("call_b", "Rome"), call("call_c", "Oslo")]  # call_c is never answered
    g.oai.chat.completions.create(model="scripted-anthropic", tools=[TOOL], messages=[
        *ASK, {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_a", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_b", "content": "21C"}, {"role": "user", "content": "And Oslo?"}])
    messages = g.sent["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    answer = messages[2]["content"]
    assert [b["type"] for b in answer] == ["tool_result"] * 3 + ["text"]
    assert [b["tool_use_id"] for b in answer[:3]] == [b["id"] for b in messages[1]["content"]] == \
        ["call_a", "call_b", "call_c"]
    assert answer[2].get("is_error") is True and answer[2]["content"]  # a placeholder result for call_c


def test_trap_10_id_sanitizing(g: GW) -> None:
    """Trap 10: "Tool-call ids": Anthropic's ^[a-zA-Z0-9_-]+$, Responses call_id <= 64, Gemini ids synthesized."""
    g.oai.chat.completions.create(model="scripted-anthropic", messages=history_with("functions.Bash:0"), tools=[TOOL])
    use, result = g.sent["messages"][1]["content"][0], g.sent["messages"][2]["content"][0]
    assert ANTHROPIC_ID.match(use["id"]) and result["tool_use_id"] == use["id"]
    g.ask("gemini", "scripted-anthropic", stream=False, tools=[{"functionDeclarations": [{"name": "get_weather"}]}],
          contents=[{"role": "user", "parts": [{"text": "Weather?"}]}, {"role": "model", "parts": [{"functionCall": {
              "name": "get_weather", "args": {}}}]}, {"role": "user", "parts": [{"functionResponse": {
                  "name": "get_weather", "response": {"r": "ok"}}}]}])  # no ids, as google-genai sends them
    use, result = g.sent["messages"][1]["content"][0], g.sent["messages"][2]["content"][0]
    assert ANTHROPIC_ID.match(use["id"]) and result["tool_use_id"] == use["id"]
    first = g.oai.chat.completions.create(model="scripted-gemini", messages=ASK, tools=[TOOL])
    call_id = (first.choices[0].message.tool_calls or [])[0].id
    assert call_id  # Gemini gave none: synthesized, and the name found again for the functionResponse
    g.oai.chat.completions.create(model="scripted-gemini", messages=history_with(call_id), tools=[TOOL])
    assert g.sent["contents"][2]["parts"][0]["functionResponse"]["name"] == "get_weather"
    for sig in ("c2ln", "A" * 400):  # a signature too long to pack into the call_id must ride elsewhere
        reply = Reply("r", "m", [ToolCall("call_" + "x" * 40, "get_weather", "{}", sig)], "tool_calls")
        items = orjson.loads(responses.render_response(reply, CTX))["output"]
        assert [len(i["call_id"]) <= 64 for i in items if i["type"] == "function_call"] == [True]


def test_trap_11_gemini_schema_keywords() -> None:
    """Trap 11: "Gemini schemas: ... rejects $schema, additionalProperties, $ref/$defs, const, propertyNames, ..."."""
    schema = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object", "additionalProperties": False,
              "$defs": {"City": {"type": "object", "properties": {"name": {"type": "string"}},
                                 "propertyNames": {"pattern": "^[a-z]+$"}, "additionalProperties": {"type": "string"}}},
              "properties": {"city": {"$ref": "#/$defs/City"}, "unit": {"const": "C"}, "tags": {"type": "array"},
                             "note": {"type": ["string", "null"]}, "edits": {"type": "array", "items": {
                                 "type": "object", "properties": {"a": {"type": "string"}},
                                 "additionalProperties": False}}},
              "required": ["city", "unit"]}
    body = {"model": "m", "messages": HELLO, "tools": [{"type": "function", "function": {
        "name": "get_weather", "parameters": schema}}], "response_format": {"type": "json_schema", "json_schema": {
            "name": "w", "schema": schema}}}
    sent = orjson.loads(gemini_upstream.build_request(chat_client.parse_request(body), "gemini-2.5-flash", 100)[1])
    banned = {"$schema", "additionalProperties", "$ref", "$defs", "definitions", "const", "propertyNames"}
    for cleaned in (sent["tools"][0]["functionDeclarations"][0]["parameters"],
                    sent["generationConfig"]["responseSchema"]):
        for node in walk(cleaned):
            assert not banned & node.keys(), node
            assert not isinstance(node.get("type"), list) and (node.get("type") != "ARRAY" or "items" in node)
        props = cleaned["properties"]
        assert props["city"]["properties"]["name"]["type"] == "STRING"  # the $ref inlined
        assert props["unit"]["enum"] == ["C"] and props["note"]["nullable"] is True
        assert cleaned["required"] == ["city", "unit"]


def test_trap_12_thought_signatures_across_turns(g: GW) -> None:
    """Trap 12: "thoughtSignature on functionCall parts must be sent back verbatim next turn" (any client format)."""
    with g.oai.chat.completions.stream(model="scripted-gemini", messages=ASK, tools=[TOOL]) as s:
        tc = (s.get_final_completion().choices[0].message.tool_calls or [])[0]
    g.oai.chat.completions.create(model="scripted-gemini", messages=history_with(tc.id), tools=[TOOL])
    assert signature_sent(g) == GEMINI_SIG  # carried in the OpenAI tool-call id
    use = next(b for b in g.claude_stream("scripted-gemini", messages=ASK, **TOOLS["anthropic"]).content
               if b.type == "tool_use")
    g.claude.messages.create(model="scripted-gemini", max_tokens=50, **TOOLS["anthropic"], messages=[
        *ASK, {"role": "assistant", "content": [use.model_dump(exclude_none=True)]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}])
    assert signature_sent(g) == GEMINI_SIG
    r = g.oai.responses.create(model="scripted-gemini", input=ASK, **TOOLS["responses"])
    fc = next(o for o in r.output if o.type == "function_call")
    g.oai.responses.create(model="scripted-gemini", **TOOLS["responses"], input=[
        *ASK, *[o.model_dump(exclude_none=True) for o in r.output],
        {"type": "function_call_output", "call_id": fc.call_id, "output": "sunny"}])
    assert signature_sent(g) == GEMINI_SIG
    g.oai.chat.completions.create(model="scripted-gemini", messages=history_with("call_x"), tools=[TOOL])
    assert signature_sent(g) == "skip_thought_signature_validator"  # a call Gemini never signed


def test_trap_13_anthropic_thinking() -> None:
    """Trap 13: "Anthropic thinking": replayed signed, no temperature/top_k/forced tool, signed, kept out of content."""
    chat = Chat(messages=[Message("user", [Text("Weather?")]),
                          Message("assistant", [Thinking("Use the tool.", signature="sig-c"),
                                                ToolCall("toolu_1", "get_weather", '{"city":"Paris"}')]),
                          Message("user", [ToolResult("toolu_1", [Text("18C")])])],
                tools=[Tool("get_weather", "", SCHEMA)], tool_choice=ToolChoice("required"),
                reasoning=Reasoning(budget=2048), temperature=0.3, top_k=5)
    body = orjson.loads(anthropic_upstream.build_request(chat, "claude-x", 4096)[1])
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert body.get("temperature", 1) == 1 and "top_k" not in body and body["tool_choice"]["type"] == "auto"
    assert body["messages"][1]["content"][0] == {"type": "thinking", "thinking": "Use the tool.", "signature": "sig-c"}
    writer = anthropic_client.StreamWriter(CTX)  # reasoning_content from an OpenAI upstream, for a Claude client
    raw = writer.write(ThinkingDelta("Hmm.")) + writer.write(TextDelta("Hi")) + writer.write(End("stop"))
    thinking = [d for _, d in sse(raw + writer.close(Usage(5, 3))) if d.get("index") == 0]
    assert thinking[0]["content_block"]["type"] == "thinking" and thinking[-1]["type"] == "content_block_stop"
    assert thinking[-2]["delta"]["type"] == "signature_delta" and thinking[-2]["delta"]["signature"]
    reply = anthropic_upstream.parse_response({"id": "m", "type": "message", "role": "assistant", "content": [
        {"type": "thinking", "thinking": "Let me think.", "signature": "s"}, {"type": "text", "text": "Hi"}],
        "stop_reason": "end_turn", "usage": {"input_tokens": 5, "output_tokens": 3}})
    message = orjson.loads(chat_client.render_response(reply, CTX))["choices"][0]["message"]
    assert message["content"] == "Hi" and message["reasoning_content"] == "Let me think."


def test_trap_14_claude_sampling_limits(g: GW) -> None:
    """Trap 14: "newer Claude models reject setting both temperature and top_p. Send only one. Clamp temperature"."""
    g.oai.chat.completions.create(model="scripted-anthropic", messages=HELLO, temperature=1.5, top_p=0.9)
    assert g.sent["temperature"] == 1.0 and "top_p" not in g.sent
    g.oai.chat.completions.create(model="scripted-anthropic", messages=HELLO, top_p=0.9)
    assert g.sent["top_p"] == 0.9 and "temperature" not in g.sent


def test_trap_15_gemini_blocked_prompts() -> None:
    """Trap 15: "Gemini blocks and empty candidates": content_filter or length with empty content, not a 500."""
    blocked = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 7}}  # no candidates
    shapes = [(blocked, "content_filter"),
              ({"candidates": [{"finishReason": "SAFETY", "index": 0}]}, "content_filter"),
              ({"candidates": [{"content": {"role": "model"}, "finishReason": "MAX_TOKENS", "index": 0}],
                "usageMetadata": {"promptTokenCount": 7, "thoughtsTokenCount": 50, "totalTokenCount": 57}}, "length"),
              ({"candidates": [{"content": {"role": "model", "parts": []}, "finishReason": "STOP"}]}, "stop")]
    for obj, finish in shapes:
        reply = gemini_upstream.parse_response(obj)
        assert reply.finish == finish and reply.parts == [], obj
        choice = orjson.loads(chat_client.render_response(reply, CTX))["choices"][0]
        assert choice["finish_reason"] == finish and choice["message"]["content"] is None
        assert orjson.loads(anthropic_client.render_response(reply, CTX))["stop_reason"] == \
            {"content_filter": "refusal", "length": "max_tokens", "stop": "end_turn"}[finish]
        reader, writer = gemini_upstream.StreamReader(), chat_client.StreamWriter(CTX)
        raw = b"".join(writer.write(e) for e in reader.feed("", orjson.dumps(obj))) + writer.close(Usage(7, 0))
        assert reader.done and [d["choices"][0]["finish_reason"] for _, d in sse(raw)[:-1]][-1] == finish


def test_trap_16_gemini_tool_turns_end_in_stop(g: GW) -> None:
    """Trap 16: "Gemini tool turns end with STOP: map them to tool_calls / tool_use, or agent loops stop"."""
    model, tools = "scripted-gemini", TOOLS["anthropic"]  # its functionCall comes with finishReason STOP
    assert gemini_upstream.parse_response({"candidates": [{"content": {"parts": [{"functionCall": {"name": "f"}}]},
                                                           "finishReason": "STOP"}]}).finish == "tool_calls"
    r = g.oai.chat.completions.create(model=model, messages=ASK, tools=[TOOL])
    assert r.choices[0].finish_reason == "tool_calls"
    with g.oai.chat.completions.stream(model=model, messages=ASK, tools=[TOOL]) as s:
        assert s.get_final_completion().choices[0].finish_reason == "tool_calls"
    assert g.claude.messages.create(model=model, max_tokens=50, messages=ASK, **tools).stop_reason == "tool_use"
    assert g.claude_stream(model, messages=ASK, **tools).stop_reason == "tool_use"
    resp = g.oai.responses.create(model=model, input=ASK, **TOOLS["responses"])
    assert resp.status == "completed" and [o.type for o in resp.output] == ["function_call"]


def test_trap_17_pre_stream_vs_mid_stream_errors(g: GW) -> None:
    """Trap 17: "before the first byte, return a real status ...; after a 200, only the in-band error formats work"."""
    for up in UPSTREAMS:
        with pytest.raises(openai.RateLimitError):
            g.oai.chat.completions.create(model=f"status-429-{up}", messages=HELLO, stream=True)
        with pytest.raises(anthropic.OverloadedError):
            g.claude_stream(f"status-529-{up}")
        with pytest.raises(gerrors.ClientError) as bad:
            drain(g.gem.models.generate_content_stream(model=f"status-400-{up}", contents="hi"))
        assert bad.value.code == 400
        with pytest.raises(anthropic.APIStatusError) as mid:
            g.claude_stream(f"stream-error-{up}")
        assert mid.value.status_code == 200 and mid.value.type == "overloaded_error"
        status, _, raw = g.ask("gemini", f"stream-error-{up}")
        last = raw.strip().split(b"\n")[-1]  # `error` the first key, and an int code
        assert status == 200 and last.startswith(b'data: {"error":'), raw[-200:]
        assert isinstance(json.loads(last[6:])["error"]["code"], int)
        with pytest.raises(openai.APIError) as chat_mid:
            drain(g.oai.chat.completions.create(model=f"stream-error-{up}", messages=HELLO, stream=True))
        assert type(chat_mid.value) is openai.APIError


def test_trap_18_retry_policy(g: GW) -> None:
    """Trap 18: "Retry behaviour differs by SDK": x-should-retry:false where a retry cannot help; usable Retry-After."""
    for dialect in ("chat", "anthropic", "gemini"):
        status, headers, _ = g.ask(dialect, "scripted-openai", stream=False, key="sk-tt-" + "z" * 40)
        assert status == 401 and headers.get("x-should-retry") == "false", dialect
        status, headers, _ = g.ask(dialect, "status-429-anthropic", stream=False)
        assert status == 429 and 0 < float(headers["retry-after"]) <= 60  # honoured by openai (<=120) and anthropic
        assert headers.get("x-should-retry") != "false"
    assert g.ask("anthropic", "status-529-openai", stream=False)[0] == 529  # Claude's SDK retries its own overload


def test_trap_19_routing(g: GW) -> None:
    """Trap 19: "Routing": %2F ids, raw / and :method in Gemini paths, Anthropic without /v1, v1beta/v1, stream."""
    with pytest.raises(openai.NotFoundError) as missing:  # the SDK asks for /v1/models/vendor%2Fno-model
        g.oai.models.retrieve("vendor/no-model")
    assert "'vendor/no-model'" in missing.value.message  # the whole id reached the model lookup
    with pytest.raises(gerrors.ClientError) as gmissing:  # .../models/vendor/no-model:generateContent, unencoded
        g.gem.models.generate_content(model="vendor/no-model", contents="hi")
    assert gmissing.value.code == 404 and "'vendor/no-model'" in (gmissing.value.message or "")
    for version in ("v1beta", "v1"):  # google-genai 2.x and 3.x
        client = g.genai(version)
        assert client.models.generate_content(model="scripted-gemini", contents="hi").text
    assert g.claude.messages.create(model="scripted-openai", max_tokens=9, messages=HELLO).content
    for dialect in ("chat", "anthropic", "gemini"):  # stream or not: the body (or the method) says, never Accept
        for stream, accept in ((False, "text/event-stream"), (True, "application/json")):
            _, headers, _ = g.ask(dialect, "scripted-gemini", stream=stream, accept=accept)
            assert headers["content-type"].startswith("text/event-stream" if stream else "application/json")


def test_trap_20_embeddings_encoding(g: GW) -> None:
    """Trap 20: "When a client explicitly asks for base64, encode float32 little-endian" (the SDK asks by default)."""
    for model in ("embed-gemini", "embed-openai"):
        r = g.oai.embeddings.create(model=model, input=["a", "b"])  # base64, asked by the SDK, decoded by it
        assert [[round(x, 5) for x in d.embedding] for d in r.data] == [[0.1, 0.2, 0.3]] * 2
    url, key = g.gw.base_url + "/embeddings", {"authorization": f"Bearer {g.key}"}
    value = json.loads(post(url, {"model": "embed-gemini", "input": "a", "encoding_format": "base64"}, key)[2])
    vector = value["data"][0]["embedding"]
    assert isinstance(vector, str) and [round(x, 5) for x in struct.unpack("<3f", base64.b64decode(vector))] == \
        [0.1, 0.2, 0.3]
    floats = json.loads(post(url, {"model": "embed-gemini", "input": "a", "encoding_format": "float"}, key)[2])
    assert [round(x, 5) for x in floats["data"][0]["embedding"]] == [0.1, 0.2, 0.3]


def test_trap_21_max_tokens(g: GW) -> None:
    """Trap 21: "Anthropic requires max_tokens (fill a default). OpenAI reasoning models reject max_tokens"."""
    g.oai.chat.completions.create(model="scripted-anthropic", messages=HELLO)
    assert g.sent["max_tokens"] == 1000  # the model's max_output_tokens
    g.claude.messages.create(model="scripted-openai", max_tokens=50, messages=HELLO)
    assert g.sent["max_tokens"] == 50 and "max_completion_tokens" not in g.sent  # what self-hosted engines read
    g.claude.messages.create(model="scripted-reasoning", max_tokens=50, messages=HELLO)
    assert g.sent["max_completion_tokens"] == 50 and "max_tokens" not in g.sent  # limit_field = max_completion_tokens
    g.gem.models.generate_content(model="scripted-reasoning", contents="hi")
    assert g.sent["max_completion_tokens"] == 1000 and "max_tokens" not in g.sent
    g.oai.chat.completions.create(model="scripted-reasoning", messages=HELLO, max_tokens=20)
    assert g.sent["max_completion_tokens"] == 20 and "max_tokens" not in g.sent
    g.oai.chat.completions.create(model="scripted-gemini", messages=HELLO, max_tokens=30)
    assert g.sent["generationConfig"]["maxOutputTokens"] == 30


def test_trap_22_images(g: GW) -> None:
    """Trap 22: "Anthropic base64 images must be jpeg/png/gif/webp ... Gemini cannot fetch arbitrary https URLs"."""
    png, remote = base64.b64encode(PNG_DOT).decode(), g.native.base_url + "/media/dot.png"

    def show(model: str, url: str) -> list[dict[str, Any]]:
        g.oai.chat.completions.create(model=model, messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]}])
        return g.sent["messages"][0]["content"] if "messages" in g.sent else g.sent["contents"][0]["parts"]

    assert {"type": "base64", "media_type": "image/png", "data": png} in \
        [b.get("source") for b in show("scripted-anthropic", f"data:image/png;base64,{png}")]
    assert {"type": "url", "url": remote} in [b.get("source") for b in show("scripted-anthropic", remote)]
    for url in (f"data:image/png;base64,{png}", remote):  # a data: URL parsed, a remote one fetched and inlined
        assert {"mimeType": "image/png", "data": png} in [p.get("inlineData") for p in show("scripted-gemini", url)]
    before = len(g.native.requests)
    with pytest.raises(openai.BadRequestError):
        show("scripted-anthropic", f"data:image/bmp;base64,{png}")
    assert len(g.native.requests) == before  # refused here, with a 400, not sent


def test_trap_23_n_greater_than_one(g: GW) -> None:
    """Trap 23: "n>1 on Anthropic: either fan out and merge ... or return 400. Never ignore it silently"."""
    before = len(g.native.requests)
    for up in ("anthropic", "gemini"):
        with pytest.raises(openai.BadRequestError) as refused:
            g.oai.chat.completions.create(model=f"scripted-{up}", messages=HELLO, n=2)
        assert refused.value.param == "n", up
    with pytest.raises(gerrors.ClientError) as many:
        g.gem.models.generate_content(model="scripted-anthropic", contents="hi",
                                      config=gt.GenerateContentConfig(candidate_count=2))
    assert many.value.code == 400 and len(g.native.requests) == before


def test_trap_24_system_messages(g: GW) -> None:
    """Trap 24: "several system messages, or a developer role, must be merged for Anthropic (system) and Gemini"."""
    messages: Any = [{"role": "system", "content": "Be terse."}, {"role": "developer", "content": "Use metric units."},
                     {"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "Where?"},
                     {"role": "system", "content": "Answer in one line."}, {"role": "user", "content": "Paris"}]
    g.oai.chat.completions.create(model="scripted-anthropic", messages=messages)
    assert [b["text"] for b in g.sent["system"]] == ["Be terse.", "Use metric units."]
    assert {m["role"] for m in g.sent["messages"]} == {"user", "assistant"}  # never a system role in messages
    assert "Answer in one line." in [b["text"] for m in g.sent["messages"] if m["role"] == "user" for b in m["content"]]
    g.oai.chat.completions.create(model="scripted-gemini", messages=messages)
    instruction = " ".join(p["text"] for p in g.sent["systemInstruction"]["parts"])
    assert "Be terse." in instruction and "Use metric units." in instruction
    assert {c["role"] for c in g.sent["contents"]} == {"user", "model"}
