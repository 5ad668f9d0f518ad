"""The Gemini adapter: requests from google-genai / REST callers, replies and streams rendered for them,
requests built for a Gemini upstream and its replies and streams read back, with the PROTOCOLS §5 traps."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.gemini import client, upstream
from adapters.internal import estimate_prompt
from adapters.gemini.schema import to_gemini_schema
from adapters.internal import (
    Chat, Embed, EmbedReply, End, InvalidRequest, Media, Message, OutputFormat, Reasoning, Reply, Start,
    StreamContext, StreamError, Text, TextDelta, Thinking, ThinkingDelta, Tool, ToolCall, ToolCallDelta,
    ToolChoice, ToolResult, Usage, UsageUpdate, pack_call_id,
)

CTX = StreamContext(request_id="req_1", model="gemini-2.5-flash", created=1730000000)
SIG = base64.b64encode(b"opaque-thought-signature-bytes").decode()
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(200, 256))).decode()
WEATHER = {"name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}, "required": ["city"]}}


def sse_frames(stream: bytes) -> list[dict[str, Any]]:
    """Read a stream the way google-genai does: only `data: ` lines count, blank lines end a chunk."""
    assert stream.endswith(b"\n\n")
    frames = []
    for block in stream.split(b"\n\n")[:-1]:
        assert block.startswith(b"data: ") and b"\n" not in block, block  # no comments, no event: lines
        frames.append(orjson.loads(block[len(b"data: "):]))
    return frames


def agent_history() -> dict[str, Any]:
    """A second agent turn as google-genai 2.x/3.x sends it: inner objects in snake_case, bytes URL-safe."""
    urlsafe_png = base64.urlsafe_b64encode(base64.b64decode(PNG)).decode()
    return {
        "contents": [
            {"role": "user", "parts": [{"text": "Weather in Paris and Rome? See the map."},
                                       {"inlineData": {"mime_type": "image/png", "data": urlsafe_png}}]},
            {"role": "model", "parts": [
                {"text": "Let me think.", "thought": True, "thoughtSignature": SIG},
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": SIG},
                {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}}]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"output": "18C"}}},
                {"functionResponse": {"name": "get_weather", "response": {"temp": 22}}}]},
        ],
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Use metric."}]},
        "generationConfig": {"maxOutputTokens": 512, "temperature": 0.7, "topP": 0.9, "topK": 40.0,
                             "stopSequences": ["END"], "seed": 7, "presencePenalty": 0.5,
                             "thinkingConfig": {"thinking_budget": 1024, "include_thoughts": True}},
        "tools": [{"functionDeclarations": [WEATHER]}],
        "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
    }


# -- client side: requests ------------------------------------------------------------------


def test_parse_request_of_a_google_genai_agent_turn() -> None:
    chat = client.parse_request(agent_history())
    assert [t.text for t in chat.system] == ["Be brief.", "Use metric."]
    user, model, results = chat.messages
    assert user.role == "user" and model.role == "assistant" and results.role == "user"
    image = user.parts[1]
    assert isinstance(image, Media) and image.mime == "image/png" and image.data == PNG  # standard base64 again
    thinking, paris, rome = model.parts
    assert thinking == Thinking("Let me think.", SIG)
    assert isinstance(paris, ToolCall) and paris.signature == SIG and orjson.loads(paris.arguments) == {"city": "Paris"}
    assert isinstance(rome, ToolCall) and rome.signature is None and rome.id != paris.id
    first, second = results.parts
    assert isinstance(first, ToolResult) and isinstance(second, ToolResult)
    assert (first.call_id, second.call_id) == (paris.id, rome.id)  # paired by name, in order
    assert first.content == [Text("18C")] and orjson.loads(second.content[0].text) == {"temp": 22}
    assert (chat.max_output, chat.temperature, chat.top_p, chat.top_k, chat.stop, chat.seed) == \
        (512, 0.7, 0.9, 40, ["END"], 7)
    assert chat.presence_penalty == 0.5
    assert chat.reasoning == Reasoning(budget=1024, include_thoughts=True)
    assert chat.tools[0].parameters == {"type": "object", "properties": {"city": {"type": "string"}},
                                        "required": ["city"]}
    assert chat.tool_choice == ToolChoice("auto")


def test_snake_case_and_camel_case_bodies_parse_alike() -> None:
    camel = {"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": PNG}},
                                                     {"text": "hi"}]}],
             "systemInstruction": {"parts": [{"text": "sys"}]},
             "generationConfig": {"maxOutputTokens": 9, "candidateCount": 1, "responseMimeType": "application/json",
                                  "thinkingConfig": {"thinkingLevel": "low", "includeThoughts": True}},
             "tools": [{"functionDeclarations": [{"name": "f", "parametersJsonSchema": {"type": "object"}}]}],
             "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}}}
    snake = {"contents": [{"role": "user", "parts": [{"inline_data": {"mime_type": "image/png", "data": PNG}},
                                                     {"text": "hi"}]}],
             "system_instruction": {"parts": [{"text": "sys"}]},
             "generation_config": {"max_output_tokens": 9, "candidate_count": 1,
                                   "response_mime_type": "application/json",
                                   "thinking_config": {"thinking_level": "LOW", "include_thoughts": True}},
             "tools": [{"function_declarations": [{"name": "f", "parameters_json_schema": {"type": "object"}}]}],
             "tool_config": {"function_calling_config": {"mode": "any", "allowed_function_names": ["f"]}}}
    a, b = client.parse_request(camel), client.parse_request(snake)
    assert a == b
    assert a.reasoning == Reasoning(effort="low", include_thoughts=True)
    assert a.output_format == OutputFormat("json_object") and a.tool_choice == ToolChoice("tool", "f")


def test_call_ids_given_by_the_client_are_kept_and_missing_ones_are_deterministic() -> None:
    body = {"contents": [
        {"role": "user", "parts": [{"text": "go"}]},
        {"role": "model", "parts": [{"functionCall": {"id": "call_abc", "name": "a", "args": {}}},
                                    {"functionCall": {"name": "b", "args": {"x": 1}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "b", "response": {"result": [1, 2]}}},
                                   {"functionResponse": {"id": "call_abc", "name": "a", "response": {}}}]},
        {"role": "model", "parts": [{"functionCall": {"name": "b", "args": {}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "b", "response": {"error": "boom"}}}]},
    ]}
    chat = client.parse_request(body)
    calls = [p for m in chat.messages for p in m.parts if isinstance(p, ToolCall)]
    results = [p for m in chat.messages for p in m.parts if isinstance(p, ToolResult)]
    assert calls[0].id == "call_abc"
    assert [r.call_id for r in results] == [calls[1].id, "call_abc", calls[2].id]
    assert len({c.id for c in calls}) == 3
    assert results[2].is_error and not results[0].is_error
    assert client.parse_request(body) == chat  # the same history always gets the same ids


def test_a_packed_call_id_from_an_earlier_rendering_gives_back_its_signature() -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "x"}]},
                         {"role": "model", "parts": [{"functionCall": {"id": pack_call_id("c1", SIG), "name": "f"}}]},
                         {"role": "user", "parts": [{"functionResponse": {"id": pack_call_id("c1", SIG),
                                                                          "name": "f", "response": {}}}]}]}
    chat = client.parse_request(body)
    call, result = chat.messages[1].parts[0], chat.messages[2].parts[0]
    assert isinstance(call, ToolCall) and isinstance(result, ToolResult)
    assert (call.id, call.signature, result.call_id) == ("c1", SIG, "c1")


def test_a_response_id_matching_no_call_pairs_by_name() -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "x"}]},
                         {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]},
                         {"role": "user", "parts": [{"functionResponse": {"id": "lost", "name": "f", "response": {}}},
                                                    {"functionResponse": {"name": "g", "response": {}}}]}]}
    chat = client.parse_request(body)
    call, (answer, orphan) = chat.messages[1].parts[0], chat.messages[2].parts
    assert isinstance(call, ToolCall) and isinstance(answer, ToolResult) and isinstance(orphan, ToolResult)
    assert answer.call_id == call.id and orphan.call_id not in ("", call.id)


def test_a_foreign_signature_comes_back_exactly_after_google_genai_re_encodes_it() -> None:
    anthropic_sig = base64.b64encode(bytes([251, 239, 255, 254] * 6)).decode()  # has '+' and '/'
    reply = Reply(id="m", model="claude", finish="tool_calls", usage=Usage(1, 1),
                  parts=[Thinking("plan", anthropic_sig), ToolCall("toolu_1", "f", "{}")])
    model_turn = orjson.loads(client.render_response(reply, CTX))["candidates"][0]["content"]
    for part in model_turn["parts"]:  # what google-genai sends back: bytes, URL-safe base64
        if "thoughtSignature" in part:
            part["thoughtSignature"] = base64.urlsafe_b64encode(base64.b64decode(part["thoughtSignature"])).decode()
    chat = client.parse_request({"contents": [{"role": "user", "parts": [{"text": "x"}]}, model_turn]})
    thinking, call = chat.messages[1].parts
    assert thinking == Thinking("plan", anthropic_sig)
    assert isinstance(call, ToolCall) and call.id == "toolu_1"


@pytest.mark.parametrize("tool", [{"googleSearch": {}}, {"codeExecution": {}}, {"url_context": {}},
                                  {"googleSearchRetrieval": {"dynamicRetrievalConfig": {}}}])
def test_gemini_only_tools_need_a_gemini_model_but_are_estimated_in_passthrough(tool: dict[str, Any]) -> None:
    body = {"contents": [{"parts": [{"text": "search it"}]}], "tools": [tool]}
    with pytest.raises(InvalidRequest) as err:
        client.parse_request(body)
    assert "Gemini model" in str(err.value) and err.value.param == "tools"
    plain = estimate_prompt(client.prompt_of({"contents": body["contents"]}))
    assert estimate_prompt(client.prompt_of(body)) >= plain > 0


@pytest.mark.parametrize("body, param", [
    ({}, "contents"),
    ({"contents": []}, "contents"),
    ({"contents": [{"role": "system", "parts": [{"text": "x"}]}]}, "contents"),
    ({"contents": [{"parts": [{"functionCall": {"name": "f", "args": {}}}]}]}, "contents"),
    ({"contents": [{"role": "model", "parts": [{"functionResponse": {"name": "f", "response": {}}}]}]}, "contents"),
    ({"contents": [{"parts": [{"fileData": {"fileUri": "gs://b/a.pdf", "mimeType": "application/pdf"}}]}]},
     "contents"),
    ({"contents": [{"parts": [{"executableCode": {"code": "1+1", "language": "PYTHON"}}]}]}, "contents"),
    ({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"temperature": 3}}, "temperature"),
    ({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"maxOutputTokens": 0}}, "maxOutputTokens"),
    ({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"responseModalities": ["IMAGE"]}},
     "responseModalities"),
    ({"contents": [{"parts": [{"text": "x"}]}], "cachedContent": "cachedContents/abc"}, "cachedContent"),
])
def test_invalid_or_gemini_only_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        client.parse_request(body)
    assert err.value.param == param


def test_thinking_config_budgets_and_json_schemas() -> None:
    def chat_with(config: dict[str, Any]) -> Chat:
        return client.parse_request({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": config})

    assert chat_with({"thinkingConfig": {"thinkingBudget": 0}}).reasoning == Reasoning(budget=0, include_thoughts=False)
    assert chat_with({"thinkingConfig": {"thinkingBudget": -1}}).reasoning == Reasoning(include_thoughts=False)
    assert chat_with({"thinkingConfig": {"includeThoughts": False}}).reasoning is None
    schema = {"type": "OBJECT", "properties": {"n": {"type": "INTEGER", "nullable": True}},
              "property_ordering": ["n"]}
    fmt = chat_with({"responseMimeType": "application/json", "responseSchema": schema}).output_format
    assert fmt == OutputFormat("json_schema", schema={"type": "object",
                                                      "properties": {"n": {"type": ["integer", "null"]}}})
    raw = {"type": "object", "additionalProperties": False}
    assert chat_with({"responseJsonSchema": raw}).output_format == OutputFormat("json_schema", schema=raw)


def test_count_tokens_takes_both_shapes() -> None:
    contents = [{"role": "user", "parts": [{"text": "How many tokens is this?"}]}]
    a = client.parse_count_request({"contents": contents})
    b = client.parse_count_request({"generateContentRequest": {"model": "models/x", "contents": contents,
                                                               "tools": [{"googleSearch": {}}]}})
    assert a.messages == b.messages and a.messages[0].parts == [Text("How many tokens is this?")]
    assert orjson.loads(client.count_tokens_body(42)) == {"totalTokens": 42}


# -- client side: replies and streams -------------------------------------------------------


def test_render_response_with_thoughts_a_signed_call_and_charged_usage() -> None:
    reply = Reply(id="chatcmpl-1", model="gpt-x", finish="tool_calls",
                  parts=[Thinking("hmm", SIG), Text("Checking."),
                         ToolCall(pack_call_id("call_1", SIG), "get_weather", '{"city":"Paris"}')],
                  usage=Usage(in_total=100, out_total=50, cache_read=80, reasoning=20))
    body = orjson.loads(client.render_response(reply, CTX))
    candidate = body["candidates"][0]
    assert candidate["finishReason"] == "STOP" and candidate["index"] == 0  # tool turns end in STOP
    assert candidate["content"] == {"role": "model", "parts": [
        {"text": "hmm", "thought": True, "thoughtSignature": SIG}, {"text": "Checking."},
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1"}, "thoughtSignature": SIG}]}
    assert body["usageMetadata"] == {"promptTokenCount": 100, "candidatesTokenCount": 30, "thoughtsTokenCount": 20,
                                     "cachedContentTokenCount": 80, "totalTokenCount": 150}
    assert all(type(v) is int for v in body["usageMetadata"].values())
    assert body["modelVersion"] == "gemini-2.5-flash" and body["responseId"] == "req_1"


@pytest.mark.parametrize("finish, reason", [("stop", "STOP"), ("length", "MAX_TOKENS"), ("content_filter", "SAFETY")])
def test_render_response_of_empty_answers(finish: str, reason: str) -> None:
    reply = Reply(id="x", model="m", parts=[Text("")], finish=finish, usage=Usage(5, 0))  # type: ignore[arg-type]
    candidate = orjson.loads(client.render_response(reply, CTX))["candidates"][0]
    assert candidate["finishReason"] == reason
    expected = [] if finish == "content_filter" else [{"text": ""}]  # no empty Part() for google-genai chats
    assert candidate["content"]["parts"] == expected


def test_stream_writer_sends_only_data_frames_and_holds_tool_calls_until_complete() -> None:
    w = client.StreamWriter(CTX)
    out = w.write(Start("chatcmpl-1", "gpt-x")) + w.write(TextDelta("Hel")) + w.write(TextDelta("lo"))
    out += w.write(ThinkingDelta("why", SIG))
    assert w.write(ToolCallDelta(0, "", "call_a", "get_weather")) == b""
    assert w.write(ToolCallDelta(0, '{"city":')) == b"" and w.write(ToolCallDelta(0, '"Paris"}')) == b""
    assert w.write(ToolCallDelta(1, '{}', "call_b", "now")) == b""
    assert w.write(UsageUpdate(Usage(1, 1), final=False)) == b""
    out += w.write(End("tool_calls"))
    out += w.close(Usage(in_total=20, out_total=9, reasoning=2))
    frames = sse_frames(out)
    parts = [p for f in frames for p in f["candidates"][0]["content"]["parts"]]
    assert parts[:3] == [{"text": "Hel"}, {"text": "lo"}, {"text": "why", "thought": True, "thoughtSignature": SIG}]
    assert parts[3:5] == [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}, "id": "call_a"}},
                          {"functionCall": {"name": "now", "args": {}, "id": "call_b"}}]
    last = frames[-1]
    assert last["candidates"][0]["finishReason"] == "STOP" and last["candidates"][0]["content"]["parts"]
    assert last["usageMetadata"] == {"promptTokenCount": 20, "candidatesTokenCount": 7, "thoughtsTokenCount": 2,
                                     "totalTokenCount": 29}
    assert all("finishReason" not in f["candidates"][0] for f in frames[:-1])
    assert all(f["responseId"] == "req_1" and f["modelVersion"] == "gemini-2.5-flash" for f in frames)
    assert w.close(Usage()) == b"" and w.write(TextDelta("late")) == b""


def test_stream_writer_json_array_mode_is_one_json_array() -> None:
    w = client.StreamWriter(CTX, sse=False)
    out = w.write(TextDelta("a")) + w.write(TextDelta("b")) + w.write(End("length")) + w.close(Usage(3, 2))
    chunks = orjson.loads(out)
    assert isinstance(chunks, list) and len(chunks) == 3 and out.startswith(b"[")
    assert chunks[-1]["candidates"][0]["finishReason"] == "MAX_TOKENS"
    empty = client.StreamWriter(CTX, sse=False)
    assert len(orjson.loads(empty.close(Usage()))) == 1
    failed = client.StreamWriter(CTX, sse=False)
    arr = orjson.loads(failed.write(TextDelta("a")) + failed.error("gone", "upstream_closed"))
    assert list(arr[-1]) == ["error"] and arr[-1]["error"]["code"] == 502


def test_in_band_errors_put_error_first_with_an_int_code() -> None:
    w = client.StreamWriter(CTX)
    out = w.write(TextDelta("par")) + w.error("The upstream is overloaded", "overloaded")
    frames = sse_frames(out)
    raw = out.split(b"data: ")[-1]
    assert raw.startswith(b'{"error":{"code":503,')  # google-genai matches the text '{"error":'
    assert frames[-1]["error"]["status"] == "UNAVAILABLE"
    assert frames[-1]["error"]["message"] == "The upstream is overloaded"
    assert w.write(TextDelta("more")) == b"" and w.close(Usage()) == b""
    assert client.StreamWriter(CTX).write(StreamError("slow down", "rate_limited")).startswith(
        b'data: {"error":{"code":429,')
    event = client.stream_error_event("upstream closed", "upstream_closed", "req_9")
    assert sse_frames(event)[0]["error"]["code"] == 502
    assert orjson.loads(b"[{}" + client.stream_error_event("x", "weird", "r", sse=False))[1]["error"]["code"] == 500


@pytest.mark.parametrize("status, expected", [
    (400, "INVALID_ARGUMENT"), (401, "UNAUTHENTICATED"), (402, "FAILED_PRECONDITION"), (403, "PERMISSION_DENIED"),
    (404, "NOT_FOUND"), (413, "INVALID_ARGUMENT"), (429, "RESOURCE_EXHAUSTED"), (500, "INTERNAL"),
    (503, "UNAVAILABLE"), (504, "DEADLINE_EXCEEDED"), (418, "INVALID_ARGUMENT"), (599, "INTERNAL"),
])
def test_error_bodies_follow_the_status_table(status: int, expected: str) -> None:
    raw = client.error_body(status, "nope", "some_code", "model", "req_7")
    body = orjson.loads(raw)
    assert raw.startswith(b'{"error":{"code":') and body["error"]["code"] == status
    assert body["error"]["status"] == expected and body["error"]["message"] == "nope"
    assert body["error"]["details"][0]["reason"] == "some_code"
    assert body["error"]["details"][0]["metadata"] == {"request_id": "req_7", "param": "model"}


def test_models_list() -> None:
    chat = client.model_object("gemini-pro-latest", "Gemini Pro", 65536, client.CHAT_METHODS, input_limit=1048576)
    embed = client.model_object("models/text-embedding-004", "Embedding", 1, client.EMBED_METHODS)
    body = orjson.loads(client.models_list([chat, embed]))
    assert list(body) == ["models"]  # no nextPageToken: the SDK's pager stops
    first, second = body["models"]
    assert first["name"] == "models/gemini-pro-latest" and first["baseModelId"] == "gemini-pro-latest"
    assert first["inputTokenLimit"] == 1048576 and first["outputTokenLimit"] == 65536
    assert first["supportedGenerationMethods"] == ["generateContent", "streamGenerateContent", "countTokens"]
    assert second["name"] == "models/text-embedding-004" and "inputTokenLimit" not in second


def test_embed_requests_and_replies() -> None:
    single = client.parse_embed_request({"content": {"parts": [{"text": "Hello "}, {"text": "world"}]},
                                         "taskType": "RETRIEVAL_QUERY", "outputDimensionality": 256}, batch=False)
    assert single == Embed(["Hello world"], dimensions=256, task_type="RETRIEVAL_QUERY")
    batch = client.parse_embed_request({"requests": [
        {"model": "models/e", "content": {"parts": [{"text": "a"}]}, "task_type": "CLUSTERING"},
        {"model": "models/e", "content": {"parts": [{"text": "b"}]}, "task_type": "CLUSTERING"}]}, batch=True)
    assert batch == Embed(["a", "b"], task_type="CLUSTERING")
    with pytest.raises(InvalidRequest):
        client.parse_embed_request({"requests": [{"content": {"parts": [{"text": "a"}]}, "taskType": "A"},
                                                 {"content": {"parts": [{"text": "b"}]}}]}, batch=True)
    with pytest.raises(InvalidRequest):
        client.parse_embed_request({"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": PNG}}]}},
                                   batch=False)
    reply = EmbedReply([[0.5, -1.0], [0.25, 2.0]])
    assert orjson.loads(client.render_embed(reply, batch=True)) == {"embeddings": [{"values": [0.5, -1.0]},
                                                                                  {"values": [0.25, 2.0]}]}
    assert orjson.loads(client.render_embed(reply, batch=False)) == {"embedding": {"values": [0.5, -1.0]}}


# -- upstream side: requests ----------------------------------------------------------------


def openai_style_chat(**extra: Any) -> Chat:
    """What an OpenAI client's second agent turn looks like once parsed (ids carry the signature)."""
    return Chat(
        system=[Text("You are terse.")],
        messages=[
            Message("user", [Text("Weather in Paris?"), Text("")]),
            Message("user", [Text("And Rome.")]),
            Message("assistant", [Text(""), Thinking("I should call", "anthropic-sig"),
                                  ToolCall(pack_call_id("call_p", SIG), "get_weather", '{"city":"Paris"}'),
                                  ToolCall("call_r", "get_weather", "")]),
            Message("user", [ToolResult(pack_call_id("call_p", SIG), [Text('{"temp": 18}')]),
                             ToolResult("call_r", [Text("22C")], name=None)]),
            Message("user", [Text("Thanks")]),
        ],
        tools=[Tool("get_weather", "Weather", {"type": "object", "properties": {"city": {"type": "string"}}})],
        **extra,
    )


def test_build_request_shapes_contents_for_gemini() -> None:
    path, raw = upstream.build_request(openai_style_chat(), "gemini-3-pro-preview", 777)
    assert path == "/models/gemini-3-pro-preview:generateContent"
    body = orjson.loads(raw)
    assert body["systemInstruction"] == {"parts": [{"text": "You are terse."}]}
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]  # same roles merged
    assert body["contents"][0]["parts"] == [{"text": "Weather in Paris?"}, {"text": "And Rome."}]
    paris, rome = body["contents"][1]["parts"]  # no empty text, no foreign thinking
    assert paris == {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": SIG}
    assert rome == {"functionCall": {"name": "get_weather", "args": {}}}  # parallel calls: first one signed
    r1, r2, thanks = body["contents"][2]["parts"]
    assert r1 == {"functionResponse": {"name": "get_weather", "response": {"temp": 18}}}  # name from the call
    assert r2 == {"functionResponse": {"name": "get_weather", "response": {"result": "22C"}}}
    assert thanks == {"text": "Thanks"}
    for content in body["contents"]:
        assert content["parts"] and all(p.get("text") != "" for p in content["parts"])
    assert body["generationConfig"] == {"maxOutputTokens": 777}
    stream_path, _ = upstream.build_request(openai_style_chat(stream=True), "gemini-2.5-flash", 10)
    assert stream_path == "/models/gemini-2.5-flash:streamGenerateContent?alt=sse"


def test_unsigned_calls_get_the_documented_skip_value() -> None:
    chat = Chat(messages=[Message("user", [Text("hi")]),
                          Message("assistant", [Text("calling"), ToolCall("toolu_1", "a", "{}"),
                                                ToolCall("toolu_2", "b", "{}")]),
                          Message("user", [ToolResult("toolu_1", [Text("1")]), ToolResult("toolu_2", [Text("2")])])])
    body = orjson.loads(upstream.build_request(chat, "gemini-3-flash-preview", 100)[1])
    calls = [p for p in body["contents"][1]["parts"] if "functionCall" in p]
    assert calls[0]["thoughtSignature"] == "skip_thought_signature_validator"
    assert "thoughtSignature" not in calls[1]
    assert [p["functionResponse"]["name"] for p in body["contents"][2]["parts"]] == ["a", "b"]


def test_tool_results_without_a_name_or_call_are_refused() -> None:
    chat = Chat(messages=[Message("user", [ToolResult("nobody", [Text("x")])])])
    with pytest.raises(InvalidRequest):
        upstream.build_request(chat, "gemini-2.5-flash", 10)
    named = Chat(messages=[Message("user", [ToolResult("nobody", [Text("[1,2]")], name="f", is_error=True)])])
    part = orjson.loads(upstream.build_request(named, "gemini-2.5-flash", 10)[1])["contents"][0]["parts"][0]
    assert part == {"functionResponse": {"name": "f", "response": {"error": "[1,2]"}}}


FORBIDDEN = {"$schema", "additionalProperties", "$ref", "$defs", "definitions", "const", "propertyNames",
             "oneOf", "allOf", "examples", "$id", "patternProperties"}


def schema_keys(node: Any) -> set[str]:
    if isinstance(node, dict):
        keys = set(node)
        for k, v in node.items():
            keys |= set().union(*(schema_keys(x) for x in v.values())) if k == "properties" else schema_keys(v)
        return keys
    if isinstance(node, list):
        return set().union(*(schema_keys(x) for x in node)) if node else set()
    return set()


def test_tool_schemas_are_cleaned_for_gemini() -> None:
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#", "type": "object", "additionalProperties": False,
        "$defs": {"Point": {"type": "object",
                            "properties": {"x": {"type": "number"}, "next": {"$ref": "#/$defs/Point"}},
                            "required": ["x", "ghost"]}},
        "properties": {
            "start": {"$ref": "#/$defs/Point", "description": "where"},
            "mode": {"const": "fast"},
            "level": {"type": "integer", "enum": [1, 2, 3]},
            "tags": {"type": "array"},
            "note": {"type": ["string", "null"], "format": "email"},
            "id": {"type": ["string", "integer"]},
            "maybe": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "meta": {"type": "object", "propertyNames": {"pattern": "^[a-z]+$"},
                     "additionalProperties": {"type": "string"}},
            "both": {"allOf": [{"properties": {"a": {"type": "string"}}, "required": ["a"]},
                               {"properties": {"b": {"type": "boolean"}}}]},
        },
        "required": ["start", "nope"],
    }
    chat = Chat(messages=[Message("user", [Text("x")])], tools=[Tool("draw", "Draw", schema), Tool("ping", "", {})])
    decls = orjson.loads(upstream.build_request(chat, "gemini-2.5-flash", 10)[1])["tools"][0]["functionDeclarations"]
    params = decls[0]["parameters"]
    assert not schema_keys(params) & FORBIDDEN
    props = params["properties"]
    assert params["type"] == "OBJECT" and params["required"] == ["start"]
    assert props["start"]["description"] == "where" and props["start"]["required"] == ["x"]
    assert props["start"]["properties"]["next"]["type"] == "OBJECT"  # the recursive reference, cut
    assert props["mode"] == {"enum": ["fast"], "type": "STRING"}
    assert props["level"]["type"] == "INTEGER" and "enum" not in props["level"]
    assert "1, 2, 3" in props["level"]["description"]
    assert props["tags"] == {"type": "ARRAY", "items": {"type": "STRING"}}
    assert props["note"] == {"type": "STRING", "nullable": True}  # unsupported format dropped
    assert props["id"]["anyOf"] == [{"type": "STRING"}, {"type": "INTEGER"}]
    assert props["maybe"] == {"type": "STRING", "nullable": True}
    assert props["meta"] == {"type": "OBJECT"}
    assert props["both"]["required"] == ["a"] and set(props["both"]["properties"]) == {"a", "b"}
    assert decls[1] == {"name": "ping"}  # no empty OBJECT properties: Gemini refuses those


@pytest.mark.parametrize("choice, config", [
    (ToolChoice("auto"), {"mode": "AUTO"}), (ToolChoice("none"), {"mode": "NONE"}),
    (ToolChoice("required"), {"mode": "ANY"}),
    (ToolChoice("tool", "f"), {"mode": "ANY", "allowedFunctionNames": ["f"]}),
])
def test_tool_choice_becomes_tool_config(choice: ToolChoice, config: dict[str, Any]) -> None:
    chat = Chat(messages=[Message("user", [Text("x")])], tools=[Tool("f", "", {"type": "object"})], tool_choice=choice)
    assert orjson.loads(upstream.build_request(chat, "g", 5)[1])["toolConfig"] == {"functionCallingConfig": config}


def test_generation_config_from_the_chat() -> None:
    chat = openai_style_chat(temperature=2.5, top_p=0.5, top_k=20, stop=["a", "b"], seed=3, presence_penalty=0.1,
                             frequency_penalty=-0.2, output_format=OutputFormat("json_schema", schema={
                                 "type": "object", "properties": {"a": {"type": "string"}},
                                 "additionalProperties": False}),
                             reasoning=Reasoning(effort="high"))
    config = orjson.loads(upstream.build_request(chat, "gemini-3-pro-preview", 4096)[1])["generationConfig"]
    assert config == {"maxOutputTokens": 4096, "temperature": 2.0, "topP": 0.5, "topK": 20, "seed": 3,
                      "presencePenalty": 0.1, "frequencyPenalty": -0.2, "stopSequences": ["a", "b"],
                      "responseMimeType": "application/json",
                      "responseSchema": {"type": "OBJECT", "properties": {"a": {"type": "STRING"}}},
                      "thinkingConfig": {"thinkingLevel": "HIGH", "includeThoughts": True}}
    older = orjson.loads(upstream.build_request(openai_style_chat(reasoning=Reasoning(effort="low")),
                                              "gemini-2.5-flash", 10)[1])["generationConfig"]
    assert older["thinkingConfig"] == {"thinkingBudget": 1024, "includeThoughts": True}
    off = orjson.loads(upstream.build_request(openai_style_chat(reasoning=Reasoning(budget=0)), "g", 10)[1])
    assert off["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 0}
    with pytest.raises(InvalidRequest) as err:
        upstream.build_request(openai_style_chat(n=2), "g", 10)
    assert err.value.param == "n"
    with pytest.raises(InvalidRequest) as err:
        upstream.build_request(openai_style_chat(stop=list("abcdef")), "g", 10)
    assert err.value.param == "stop"


def test_media_is_inlined_or_referenced_and_remote_urls_must_be_downloaded_first() -> None:
    remote = Media(mime="", url="https://example.com/cat.jpg")
    chat = Chat(messages=[Message("user", [
        Text("Describe"), Media(mime="image/png", data=PNG), Media(mime="video/mp4", url="https://youtu.be/abc"),
        Media(mime="application/pdf", url="gs://bucket/doc.pdf"), remote])])
    assert upstream.remote_media(chat) == [remote] and upstream.remote_media(chat)[0] is remote
    with pytest.raises(InvalidRequest):
        upstream.build_request(chat, "g", 10)
    remote.mime, remote.data = "image/jpeg", PNG  # what the relay does after downloading
    assert upstream.remote_media(chat) == []
    parts = orjson.loads(upstream.build_request(chat, "g", 10)[1])["contents"][0]["parts"]
    assert parts[1] == {"inlineData": {"mimeType": "image/png", "data": PNG}}
    assert parts[2] == {"fileData": {"fileUri": "https://youtu.be/abc", "mimeType": "video/mp4"}}
    assert parts[3] == {"fileData": {"fileUri": "gs://bucket/doc.pdf", "mimeType": "application/pdf"}}
    assert parts[4] == {"inlineData": {"mimeType": "image/jpeg", "data": PNG}}


def test_signatures_survive_a_gemini_client_to_gemini_upstream_round_trip() -> None:
    chat = client.parse_request(agent_history())
    body = orjson.loads(upstream.build_request(chat, "gemini-3-pro-preview", 512)[1])
    model = body["contents"][1]
    assert model["role"] == "model"
    assert model["parts"][0] == {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                                 "thoughtSignature": SIG}
    assert "thoughtSignature" not in model["parts"][1]
    responses = body["contents"][2]["parts"]
    assert responses[0]["functionResponse"] == {"name": "get_weather", "response": {"result": "18C"}}
    assert responses[1]["functionResponse"] == {"name": "get_weather", "response": {"temp": 22}}
    assert body["contents"][0]["parts"][1] == {"inlineData": {"mimeType": "image/png", "data": PNG}}
    assert body["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 1024, "includeThoughts": True}


def test_passthrough_body_sets_only_the_output_limit() -> None:
    body = {"contents": [{"parts": [{"text": "x"}]}], "generation_config": {"max_output_tokens": 99999, "top_k": 3}}
    out = orjson.loads(upstream.passthrough_body(body, "gemini-2.5-pro", 2048))
    assert out == {"contents": body["contents"], "generation_config": {"top_k": 3, "maxOutputTokens": 2048}}
    empty = orjson.loads(upstream.passthrough_body({"contents": []}, "m", 5))
    assert empty["generationConfig"] == {"maxOutputTokens": 5}
    assert body["generation_config"]["max_output_tokens"] == 99999  # the caller's dict is untouched


def test_embeddings_upstream() -> None:
    path, raw = upstream.build_embed_request(Embed(["a", "b"], dimensions=768, task_type="SEMANTIC_SIMILARITY"),
                                           "gemini-embedding-001")
    assert path == "/models/gemini-embedding-001:batchEmbedContents"
    assert orjson.loads(raw)["requests"][1] == {"model": "models/gemini-embedding-001",
                                                "content": {"parts": [{"text": "b"}]},
                                                "taskType": "SEMANTIC_SIMILARITY", "outputDimensionality": 768}
    with pytest.raises(InvalidRequest):
        upstream.build_embed_request(Embed(["x"] * 101), "e")
    assert upstream.parse_embed_response({"embeddings": [{"values": [0.1, 2]}, {"values": []}]}).vectors == \
        [[0.1, 2.0], []]
    assert upstream.parse_embed_response({"embedding": {"values": [1]}}).vectors == [[1.0]]
    assert upstream.parse_embed_response("junk").vectors == []
    assert upstream.auth_headers("k-123") == {"x-goog-api-key": "k-123"}


# -- upstream side: replies, streams, usage -------------------------------------------------


def test_parse_response_of_a_tool_turn_ending_in_stop() -> None:
    obj = {"candidates": [{"content": {"role": "model", "parts": [
        {"text": "Let me check the weather...", "thought": True},
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": SIG},
        {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}}]},
        "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 120, "candidatesTokenCount": 30, "thoughtsTokenCount": 45,
                          "cachedContentTokenCount": 100, "totalTokenCount": 195},
        "modelVersion": "gemini-3-pro-preview", "responseId": "resp-9"}
    reply = upstream.parse_response(obj)
    assert reply.finish == "tool_calls" and reply.id == "resp-9" and reply.model == "gemini-3-pro-preview"
    thinking, paris, rome = reply.parts
    assert thinking == Thinking("Let me check the weather...")
    assert isinstance(paris, ToolCall) and isinstance(rome, ToolCall)
    assert paris.signature == SIG and rome.signature is None
    assert paris.id != rome.id and paris.id.startswith("call_resp-9")
    assert reply.usage == Usage(in_total=120, out_total=75, cache_read=100, reasoning=45)
    assert upstream.parse_response(obj) == reply  # ids are deterministic


@pytest.mark.parametrize("obj, finish", [
    ({"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []}, "usageMetadata": {"promptTokenCount": 9,
                                                                                          "totalTokenCount": 9}},
     "content_filter"),
    ({"candidates": [{"finishReason": "SAFETY", "index": 0}]}, "content_filter"),
    ({"candidates": [{"content": {"role": "model"}, "finishReason": "MAX_TOKENS"}],
      "usageMetadata": {"promptTokenCount": 10, "thoughtsTokenCount": 50, "totalTokenCount": 60}}, "length"),
    ({"candidates": [{"content": {"role": "model", "parts": []}, "finishReason": "STOP"}]}, "stop"),
    ({"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": "RECITATION"}]}, "content_filter"),
    ({"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": "MALFORMED_FUNCTION_CALL"}]}, "stop"),
    ({"candidates": "odd"}, "stop"),
    ([], "stop"),
])
def test_parse_response_survives_blocked_and_empty_answers(obj: Any, finish: str) -> None:
    reply = upstream.parse_response(obj)
    assert reply.finish == finish
    assert all(not isinstance(p, ToolCall) for p in reply.parts)


def test_usage_normalization_and_cache_accounting() -> None:
    assert upstream.normalize_usage({"promptTokenCount": 2000, "cachedContentTokenCount": 1500,
                                   "candidatesTokenCount": 100, "thoughtsTokenCount": 300,
                                   "toolUsePromptTokenCount": 50, "totalTokenCount": 2450}) == \
        Usage(in_total=2050, out_total=400, cache_read=1500, cache_write=0, reasoning=300)
    # MAX_TOKENS spent on thinking: no candidatesTokenCount, the total still adds up
    assert upstream.normalize_usage({"promptTokenCount": 10, "thoughtsTokenCount": 50, "totalTokenCount": 60}) == \
        Usage(in_total=10, out_total=50, reasoning=50)
    assert upstream.normalize_usage({"prompt_token_count": 3, "candidates_token_count": 4}) == Usage(3, 4)
    assert upstream.normalize_usage(None) is None
    assert upstream.normalize_usage({"promptTokenCount": "x", "candidatesTokenCount": -1}) == Usage(0, 0)


def stream_lines() -> list[bytes]:
    """A Gemini 3 stream: thoughts, text, then two calls in separate chunks, the last one finishing."""
    head = {"modelVersion": "gemini-3-pro-preview", "responseId": "r1"}
    return [orjson.dumps({"candidates": [{"content": {"role": "model", "parts": [
                {"text": "Planning", "thought": True}]}, "index": 0}],
                          "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8}, **head}),
            orjson.dumps({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}, "index": 0}],
                          **head}),
            orjson.dumps({"candidates": [{"content": {"role": "model", "parts": [
                {"functionCall": {"name": "get_w", "args": {"city": "Paris"}}, "thoughtSignature": SIG}]},
                "index": 0}], **head}),
            orjson.dumps({"candidates": [{"content": {"role": "model", "parts": [
                {"functionCall": {"id": "fc-2", "name": "get_w", "args": {"city": "Rome"}}}]},
                "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 12, "thoughtsTokenCount": 30,
                                  "cachedContentTokenCount": 0, "totalTokenCount": 50}, **head})]


def test_stream_reader_turns_chunks_into_events() -> None:
    reader = upstream.StreamReader()
    events = [e for line in stream_lines() for e in reader.feed("", line)]
    assert reader.done
    assert events[0] == Start(id="r1", model="gemini-3-pro-preview")
    assert events[1] == ThinkingDelta("Planning")
    assert events[2] == UsageUpdate(Usage(8, 0), final=False)
    assert events[3] == TextDelta("Hel")
    first, second = events[4], events[5]
    assert isinstance(first, ToolCallDelta) and isinstance(second, ToolCallDelta)
    assert (first.index, first.name, first.signature) == (0, "get_w", SIG)
    assert orjson.loads(first.arguments) == {"city": "Paris"}
    assert first.id == "call_r1_0" and (second.index, second.id) == (1, "fc-2")
    assert events[6:] == [End("tool_calls"), UsageUpdate(Usage(8, 42, 0, 0, 30), final=True)]
    assert reader.feed("", stream_lines()[1]) == []  # nothing after the finishing chunk


def test_stream_reader_blocked_prompt_errors_and_junk() -> None:
    blocked = upstream.StreamReader()
    events = blocked.feed("", b'{"promptFeedback":{"blockReason":"PROHIBITED_CONTENT"},'
                              b'"usageMetadata":{"promptTokenCount":7,"totalTokenCount":7},"responseId":"b"}')
    assert events == [Start("b", ""), End("content_filter"), UsageUpdate(Usage(7, 0), final=True)] and blocked.done
    failing = upstream.StreamReader()
    failing.feed("", stream_lines()[1])
    err = failing.feed("", b'{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}')
    assert err == [StreamError("The model is overloaded.", "overloaded")] and not failing.done
    assert upstream.StreamReader().feed("", b'{"error":{"code":429,"message":"quota"}}') == \
        [StreamError("quota", "rate_limited")]
    assert isinstance(upstream.StreamReader().feed("", b": keepalive")[0], StreamError)
    assert upstream.StreamReader().feed("", b"") == []
    safety = upstream.StreamReader()
    out = safety.feed("", b'{"candidates":[{"finishReason":"SAFETY","index":0}]}')
    assert out[-1] == End("content_filter") and safety.done


def test_reader_to_writer_round_trip_keeps_text_calls_signatures_and_usage() -> None:
    reader, writer = upstream.StreamReader(), client.StreamWriter(CTX)
    out, charged = b"", None
    for line in stream_lines():
        for event in reader.feed("", line):
            out += writer.write(event)
            if isinstance(event, UsageUpdate) and event.final:
                charged = event.usage
    assert charged is not None
    out += writer.close(charged)
    frames = sse_frames(out)
    parts = [p for f in frames for p in f["candidates"][0]["content"]["parts"]]
    assert parts[0] == {"text": "Planning", "thought": True} and parts[1] == {"text": "Hel"}
    calls = [p for p in parts if "functionCall" in p]
    assert calls == [{"functionCall": {"name": "get_w", "args": {"city": "Paris"}, "id": "call_r1_0"},
                      "thoughtSignature": SIG},
                     {"functionCall": {"name": "get_w", "args": {"city": "Rome"}, "id": "fc-2"}}]
    assert frames[-1]["usageMetadata"] == {"promptTokenCount": 8, "candidatesTokenCount": 12,
                                           "thoughtsTokenCount": 30, "totalTokenCount": 50}
    # and the non-stream path: the same answer parsed whole renders the same parts
    whole = upstream.parse_response({**orjson.loads(stream_lines()[-1]), "candidates": [{"content": {"parts": [
        p for line in stream_lines() for p in orjson.loads(line)["candidates"][0]["content"]["parts"]]},
        "finishReason": "STOP"}]})
    whole.usage = charged
    rendered = orjson.loads(client.render_response(whole, CTX))["candidates"][0]["content"]["parts"]
    assert rendered == parts[:-1]  # the stream's last part is the empty text of the finishing chunk


# -- properties -----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(arguments=st.dictionaries(st.text(max_size=8), st.integers(-2**53, 2**53) | st.text(max_size=10), max_size=4),
       cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6))
def test_any_split_of_tool_arguments_gives_back_the_same_call(arguments: dict[str, Any], cuts: list[int]) -> None:
    text = orjson.dumps(arguments).decode()
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])] or [""]
    w = client.StreamWriter(CTX)
    out = w.write(ToolCallDelta(0, pieces[0], "call_x", "f"))
    for piece in pieces[1:]:
        out += w.write(ToolCallDelta(0, piece))
    out += w.write(End("tool_calls")) + w.close(Usage(1, 1))
    calls = [p for f in sse_frames(out) for p in f["candidates"][0]["content"]["parts"] if "functionCall" in p]
    assert calls == [{"functionCall": {"name": "f", "args": arguments, "id": "call_x"}}]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(
        ["role", "parts", "text", "thought", "functionCall", "functionResponse", "name", "args", "response",
         "id", "inlineData", "mimeType", "data", "fileData", "fileUri", "type", "properties", "items",
         "$ref", "anyOf", "enum", "required", "x"]), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=100, deadline=None)
@given(body=st.fixed_dictionaries({"contents": json_values}, optional={
    "systemInstruction": json_values, "generationConfig": json_values, "tools": json_values,
    "toolConfig": json_values}))
def test_any_json_body_is_parsed_or_refused_never_crashes(body: dict[str, Any]) -> None:
    try:
        chat = client.parse_request(body)
    except InvalidRequest:
        return
    assert chat.messages is not None and estimate_prompt(client.prompt_of(body)) > 0


@settings(max_examples=150, deadline=None)
@given(schema=json_values)
def test_any_schema_comes_out_in_the_gemini_subset(schema: Any) -> None:
    cleaned = to_gemini_schema(schema)
    assert not schema_keys(cleaned) & FORBIDDEN
    orjson.dumps(cleaned)


@settings(max_examples=80, deadline=None)
@given(chunks=st.lists(json_values, max_size=5))
def test_any_upstream_chunks_are_read_without_crashing(chunks: list[Any]) -> None:
    reader = upstream.StreamReader()
    for chunk in chunks:
        for event in reader.feed("", orjson.dumps(chunk)):
            assert not isinstance(event, ToolCallDelta) or event.id
    upstream.parse_response(chunks[0] if chunks else None)


@pytest.mark.parametrize("name", ["get_weather\n", "get_weather\r\n", "\nget_weather"])
def test_a_tool_name_with_a_line_break_is_refused_for_gemini(name: str) -> None:
    chat = Chat(messages=[Message("user", [Text("hi")])], tools=[Tool(name, "", {"type": "object"})])
    with pytest.raises(InvalidRequest) as refused:
        upstream.build_request(chat, "gemini-2.5-flash", 10)
    assert refused.value.param == "tools"


def test_a_signature_with_a_trailing_newline_is_not_base64_for_gemini() -> None:
    from adapters.gemini.common import valid_signature
    assert valid_signature(SIG) and not valid_signature(SIG + "\n")


# -- one spelling per field ----------------------------------------------------------------------


def test_a_field_spelled_both_ways_with_one_value_is_sent_once() -> None:
    from adapters.gemini.common import spelled_once

    body = {"contents": [{"parts": [{"inline_data": {"mime_type": "image/png", "mimeType": "image/png", "data": "x"}}]}],
            "generationConfig": {"maxOutputTokens": 5, "max_output_tokens": 5}, "generation_config": {
                "maxOutputTokens": 5, "max_output_tokens": 5}}
    assert spelled_once(body) == {"contents": [{"parts": [{"inline_data": {"mimeType": "image/png", "data": "x"}}]}],
                                  "generationConfig": {"maxOutputTokens": 5}}
    assert body["generation_config"]  # the caller's body is left as it was
    tool = {"functionDeclarations": [{"name": "f", "parameters": {"type": "object", "properties": {
        "user_name": {"type": "string"}, "userName": {"type": "string"}}}}]}
    assert spelled_once({"contents": [], "tools": [tool]})["tools"] == [tool]  # a schema's own properties: data


@pytest.mark.parametrize("body, named", [
    ({"contents": [], "generationConfig": {"candidateCount": 1}, "generation_config": {"candidateCount": 8}},
     ("generationConfig", "generation_config")),
    ({"contents": [], "generationConfig": {"maxOutputTokens": 10, "max_output_tokens": 100000}},
     ("generationConfig.maxOutputTokens", "max_output_tokens")),
    ({"contents": [{"parts": [{"fileData": {"fileUri": "gs://a/1.mp4"}, "file_data": {"fileUri": "gs://a/2.mp4"}}]}]},
     ("contents[0].parts[0].fileData", "file_data")),
    ({"contents": [], "systemInstruction": {"parts": [{"text": "a"}]}, "system_instruction": {"parts": []}},
     ("systemInstruction", "system_instruction")),
])
def test_a_field_spelled_both_ways_with_two_values_is_refused_naming_both(body: dict[str, Any],
                                                                          named: tuple[str, str]) -> None:
    from adapters.gemini.common import spelled_once

    with pytest.raises(InvalidRequest) as err:
        spelled_once(body)
    assert all(f"'{name}'" in str(err.value) for name in named), str(err.value)
