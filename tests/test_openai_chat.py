"""OpenAI Chat Completions translation: chat_client's parse/render/stream writer, chat_upstream's
build/parse/stream reader, embeddings, and the round trips between them (read by the real openai SDK)."""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai._models import construct_type
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from adapters.openai import chat_client, chat_upstream
from adapters.openai import prompt as openai_prompt
from adapters.internal import (
    Chat, Embed, EmbedReply, End, InvalidRequest, Media, Message, OutputFormat, Reasoning, Reply, Start,
    StreamContext, StreamError, Text, TextDelta, Thinking, ThinkingDelta, Tool, ToolCall, ToolCallDelta,
    ToolChoice, ToolResult, Usage, UsageUpdate, pack_call_id,
)

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
PDF = base64.b64encode(b"%PDF-1.4 tiny").decode()
CTX = StreamContext(request_id="req_42", model="pub-model", created=1730000000)
CTX_USAGE = StreamContext(request_id="req_42", model="pub-model", created=1730000000, include_usage=True)
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}, "strict": True}}


def frames(raw: bytes) -> list[Any]:
    """The data of each SSE event ([DONE] as the string)."""
    out = []
    for block in raw.split(b"\n\n"):
        if block:
            assert block.startswith(b"data: ") and b"\n" not in block, block
            data = block[6:]
            out.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
    return out


def sdk_final(objs: list[Any]) -> Any:
    """What `client.chat.completions.stream()` accumulates from these chunks."""
    state = ChatCompletionStreamState()
    for obj in objs:
        if obj == "[DONE]":
            break
        assert "choices" in obj  # a chunk without choices crashes naive clients (trap 3 / 6)
        list(state.handle_chunk(construct_type(type_=ChatCompletionChunk, value=obj)))
    return state.get_final_completion()


# == client side: parse_request ===============================================================


def agent_body() -> dict[str, Any]:
    return {
        "model": "pub-model",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather in Paris and Rome? See the map."},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/map.jpg"}},
                {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{PDF}", "filename": "r.pdf"}},
            ]},
            {"role": "assistant", "content": "", "reasoning_content": "Two cities: two calls.",
             "tool_calls": [
                 {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
                 {"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
             ]},
            {"role": "tool", "tool_call_id": "call_a", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "21C"}]},
            {"role": "system", "content": "Answer in one line."},
            {"role": "user", "content": "Thanks"},
        ],
        "tools": [WEATHER],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"},
                                                                    "strict": True}},
        "reasoning_effort": "low",
        "max_completion_tokens": 500,
        "max_tokens": 500,  # both spellings, one value: allowed
        "stop": "END",
        "seed": 7,
        "temperature": 0.2,
        "top_p": 0.9,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "safety_identifier": "user-123",
        "stream": True,
        "stream_options": {"include_usage": True},
        "store": False,
        "metadata": {"k": "v"},
        "prediction": {"type": "content", "content": "x"},
    }


def test_a_realistic_agent_request_parses_into_the_internal_shape() -> None:
    chat = chat_client.parse_request(agent_body())
    assert chat.system == [Text("You are terse."), Text("Use metric units.")]  # leading system + developer
    user, assistant, results, late_system, thanks = chat.messages
    assert user.role == "user" and user.parts[0] == Text("Weather in Paris and Rome? See the map.")
    assert user.parts[1] == Media(mime="image/png", data=PNG, detail="low")
    assert user.parts[2] == Media(mime="", url="https://example.com/map.jpg")
    assert user.parts[3] == Media(mime="application/pdf", data=PDF, name="r.pdf")
    # content "" is dropped (trap 8); reasoning first; empty arguments become "{}"
    assert assistant.parts == [Thinking("Two cities: two calls."),
                               ToolCall("call_a", "get_weather", '{"city":"Paris"}'),
                               ToolCall("call_b", "get_weather", "{}")]
    # consecutive tool messages: ONE user turn, names looked up from the calls (trap 9)
    assert results.role == "user" and results.parts == [
        ToolResult("call_a", [Text("18C")], name="get_weather"), ToolResult("call_b", [Text("21C")], name="get_weather")]
    assert late_system == Message("user", [Text("Answer in one line.")])  # a later system message: user text
    assert thanks == Message("user", [Text("Thanks")])
    assert chat.tools == [Tool("get_weather", "Weather by city", WEATHER["function"]["parameters"], True)]
    assert chat.tool_choice == ToolChoice("auto") and chat.parallel_tool_calls is False
    assert chat.output_format == OutputFormat("json_schema", {"type": "object"}, "w", True)
    assert chat.reasoning == Reasoning(effort="low")
    assert chat.max_output == 500
    assert chat.stop == ["END"] and chat.seed == 7 and chat.temperature == 0.2 and chat.top_p == 0.9
    assert chat.presence_penalty == 0.5 and chat.frequency_penalty == -0.5 and chat.user == "user-123"
    assert chat.stream and chat.include_usage and chat.n == 1


@pytest.mark.parametrize("field, value, expected", [
    ("tool_choice", "none", ToolChoice("none")),
    ("tool_choice", "required", ToolChoice("required")),
    ("tool_choice", {"type": "function", "function": {"name": "get_weather"}}, ToolChoice("tool", "get_weather")),
    ("response_format", {"type": "text"}, None),
    ("response_format", {"type": "json_object"}, OutputFormat("json_object")),
    ("reasoning_effort", "none", Reasoning(budget=0)),
    ("reasoning_effort", "xhigh", Reasoning(effort="high")),
    ("stop", ["a", "b"], ["a", "b"]),
    ("stop", None, []),
    ("n", 3, 3),
    ("user", "u1", "u1"),
])
def test_option_mapping(field: str, value: Any, expected: Any) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER], field: value}
    chat = chat_client.parse_request(body)
    attr = {"response_format": "output_format", "reasoning_effort": "reasoning"}.get(field, field)
    assert getattr(chat, attr) == expected


def test_allowed_tools_narrows_the_tools_and_usage_needs_stream() -> None:
    other = {"type": "function", "function": {"name": "search"}}
    chat = chat_client.parse_request({"messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER, other],
                             "tool_choice": {"type": "allowed_tools", "allowed_tools": {
                                 "mode": "required", "tools": [{"type": "function", "function": {"name": "search"}}]}},
                             "stream_options": {"include_usage": True}})
    assert [t.name for t in chat.tools] == ["search"] and chat.tool_choice == ToolChoice("required")
    assert chat.tools[0].parameters == {"type": "object", "properties": {}}
    assert not chat.stream and not chat.include_usage


def test_assistant_refusal_and_text_parts() -> None:
    chat = chat_client.parse_request({"messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": None, "refusal": "I can't help with that."},
        {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "refusal", "refusal": "b"}]},
    ]})
    assert chat.messages[1].parts == [Text("I can't help with that.")]
    assert chat.messages[2].parts == [Text("a"), Text("b")]


@pytest.mark.parametrize("patch, param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-abc"}}]}]},
     "messages[0].content[0].file.file_id"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,xx"}}]}]},
     "messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "user", "content": [{"type": "video", "video": {}}]}]}, "messages[0].content[0].type"),
    ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "custom", "custom": {"name": "x", "input": "y"}}]}]}, "messages[1].tool_calls[0].type"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"function_call": "auto"}, "function_call"),
    ({"tools": [{"type": "custom", "custom": {"name": "grammar"}}]}, "tools[0].type"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "custom", "custom": {"name": "x"}}}, "tool_choice"),
    ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"web_search_options": {}}, None),  # empty: fine
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, "response_format"),
    ({"reasoning_effort": "extreme"}, "reasoning_effort"),
    ({"temperature": 3}, "temperature"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"n": 0}, "n"),
    ({"stop": [1]}, "stop"),
    ({"stream": "yes"}, "stream"),
])
def test_untranslatable_or_invalid_requests_name_the_param(patch: dict[str, Any], param: str | None) -> None:
    body = {"messages": [{"role": "user", "content": "SECRET-PROMPT"}], **patch}
    if param is None:
        chat_client.parse_request(body)
        return
    with pytest.raises(InvalidRequest) as err:
        chat_client.parse_request(body)
    assert err.value.param == param
    assert "SECRET" not in str(err.value) and "only a system prompt" not in str(err.value)  # no prompt content


def test_the_passthrough_estimate_is_lenient_and_the_body_keeps_all_but_model_and_limit() -> None:
    body = {"model": "pub", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "custom",
            "custom": {"name": "g"}}], "logprobs": True, "stream": True, "max_tokens": 9999}
    assert openai_prompt.estimate_prompt("chat", body) > 0
    sent = orjson.loads(chat_upstream.passthrough_body(body, "gpt-up", 300))
    assert sent["model"] == "gpt-up" and sent["max_tokens"] == 300 and sent["stream_options"] == {"include_usage": True}
    assert sent["logprobs"] is True and sent["tools"] == body["tools"]


# == client side: render_response ===============================================================


def test_render_response_is_a_chat_completion_the_sdk_reads() -> None:
    reply = Reply("msg_1", "claude-x", [Thinking("Let me think."), Text("Calling "), Text("the tool."),
                                        ToolCall("toolu_1", "get_weather", '{"city":"Paris"}'),
                                        ToolCall("fc_2", "get_weather", '{"city":"Rome"}', signature="sig/+=")],
                  "tool_calls", usage=Usage(in_total=2006, out_total=300, cache_read=1920, cache_write=50, reasoning=128))
    obj = orjson.loads(chat_client.render_response(reply, CTX))
    done = ChatCompletion.model_validate(obj)
    assert done.id == "chatcmpl-req_42" and done.created == CTX.created and done.model == "pub-model"
    msg = done.choices[0].message
    assert msg.content == "Calling the tool." and msg.refusal is None and obj["choices"][0]["logprobs"] is None
    assert obj["choices"][0]["message"]["reasoning_content"] == "Let me think."
    assert [c.id for c in msg.tool_calls] == ["toolu_1", pack_call_id("fc_2", "sig/+=")]
    assert msg.tool_calls[1].function.arguments == '{"city":"Rome"}' and done.choices[0].finish_reason == "tool_calls"
    assert obj["usage"] == {"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
                            "prompt_tokens_details": {"cached_tokens": 1920, "cache_write_tokens": 50},
                            "completion_tokens_details": {"reasoning_tokens": 128}}


def test_render_response_without_text_has_null_content_and_tool_answers_finish_tool_calls() -> None:
    only_call = Reply("r", "g", [ToolCall("c1", "f", "{}")], "stop", usage=Usage(5, 2))  # Gemini's STOP (trap 16)
    obj = orjson.loads(chat_client.render_response(only_call, CTX))
    assert obj["choices"][0]["message"]["content"] is None and obj["choices"][0]["finish_reason"] == "tool_calls"
    assert "reasoning_content" not in obj["choices"][0]["message"]
    blocked = orjson.loads(chat_client.render_response(Reply("r", "g", [], "content_filter", usage=None), CTX))
    assert blocked["choices"][0]["finish_reason"] == "content_filter" and blocked["usage"]["total_tokens"] == 0
    assert "tool_calls" not in blocked["choices"][0]["message"]


# == client side: StreamWriter ================================================================


def writer_events() -> list[Any]:
    return [
        Start("msg_1", "claude-x"),
        ThinkingDelta("Hmm"), ThinkingDelta("", signature="sig"),
        TextDelta("Hel"), TextDelta(""), TextDelta("lo"),
        ToolCallDelta(0, "", id="toolu_1", name="get_weather"),
        ToolCallDelta(0, '{"city":'), ToolCallDelta(0, '"Paris"}'),
        ToolCallDelta(1, '{"city":"Rome"}', id="fc_2", name="get_weather", signature="s1"),
        UsageUpdate(Usage(10, 5), final=False),
        End("tool_calls"),
        UsageUpdate(Usage(10, 9), final=True),
    ]


def test_stream_writer_chunks_read_back_by_the_sdk() -> None:
    w = chat_client.StreamWriter(CTX)
    raw = b"".join(w.write(e) for e in writer_events()) + w.close(Usage(10, 9))
    objs = frames(raw)
    assert objs[-1] == "[DONE]"
    chunks = objs[:-1]
    assert all(c["id"] == "chatcmpl-req_42" and c["created"] == CTX.created and c["model"] == "pub-model"
               and c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert sum("role" in d for d in deltas) == 1  # trap 2
    assert all("usage" not in c for c in chunks) and all(c["choices"] for c in chunks)  # no usage chunk unasked (trap 6)
    calls = [tc for d in deltas for tc in d.get("tool_calls", [])]
    assert [tc["index"] for tc in calls] == [0, 0, 0, 1]  # per-call index (trap 1)
    assert [("id" in tc, "name" in tc.get("function", {})) for tc in calls] == \
        [(True, True), (False, False), (False, False), (True, True)]  # id/name only first (trap 2)
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}
    final = sdk_final(objs)
    msg = final.choices[0].message
    assert msg.content == "Hello" and msg.role == "assistant"
    assert [(c.id, c.function.name, c.function.arguments) for c in msg.tool_calls] == [
        ("toolu_1", "get_weather", '{"city":"Paris"}'), (pack_call_id("fc_2", "s1"), "get_weather", '{"city":"Rome"}')]
    assert msg.model_extra and msg.model_extra.get("reasoning_content") == "Hmm"


def test_the_usage_chunk_only_when_asked_and_usage_null_on_every_other_chunk() -> None:
    w = chat_client.StreamWriter(CTX_USAGE)
    raw = w.write(Start("x", "m")) + w.write(TextDelta("hi")) + w.write(End("stop"))
    raw += w.close(Usage(in_total=30, out_total=9, cache_read=20, cache_write=4, reasoning=3))
    objs = frames(raw)
    assert objs[-1] == "[DONE]" and objs[-2]["choices"] == []
    assert objs[-2]["usage"]["prompt_tokens"] == 30 and objs[-2]["usage"]["prompt_tokens_details"]["cached_tokens"] == 20
    assert all(o["usage"] is None for o in objs[:-2])
    assert objs[-3]["choices"][0]["finish_reason"] == "stop"  # finish chunk, then usage, then [DONE]
    final = sdk_final(objs)
    assert final.usage is not None and final.usage.completion_tokens == 9 and final.usage.total_tokens == 39


def test_an_empty_or_truncated_stream_still_gives_role_finish_and_done() -> None:
    w = chat_client.StreamWriter(CTX)
    objs = frames(w.close(Usage()))
    assert objs[0]["choices"][0]["delta"]["role"] == "assistant"
    assert objs[1]["choices"][0]["finish_reason"] == "stop" and objs[2] == "[DONE]"
    assert w.close(Usage()) == b"" and w.write(TextDelta("late")) == b""


def test_stream_errors_end_the_stream_with_the_sdk_error_frame() -> None:
    w = chat_client.StreamWriter(CTX)
    w.write(TextDelta("partial"))
    err = frames(w.write(StreamError("Overloaded", "overloaded")))
    assert err == [{"error": {"message": "Overloaded", "type": "server_error", "param": None, "code": "overloaded",
                              "request_id": "req_42"}}]
    assert w.close(Usage()) == b"" and w.error("again", "x") == b""
    assert chat_client.stream_error_event("gone", "upstream_closed", "r1").startswith(b'data: {"error":')


def test_events_after_end_are_dropped_and_a_stop_with_calls_finishes_tool_calls() -> None:
    w = chat_client.StreamWriter(CTX)
    raw = w.write(ToolCallDelta(0, "{}", id="c", name="f")) + w.write(End("stop")) + w.write(TextDelta("x"))
    objs = frames(raw)
    assert objs[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert not any(o["choices"][0]["delta"].get("content") == "x" for o in objs)


# == upstream side: build_request =============================================================


def test_build_request_from_an_anthropic_style_conversation() -> None:
    chat = Chat(
        system=[Text("Be brief.", cache=True), Text("Use tools.")],
        messages=[
            Message("user", [Text("Weather?"), Media(mime="image/jpeg", data=PNG), Media(mime="application/pdf", data=PDF)]),
            Message("assistant", [Thinking("plan", signature="s"), Text(""), Text("Checking."),
                                  ToolCall(pack_call_id("fc_1", "sig"), "get_weather", '{"city":"Paris"}'),
                                  ToolCall("toolu_2", "screenshot", "")]),
            Message("user", [ToolResult(pack_call_id("fc_1", "sig"), [Text("18C")], name="get_weather"),
                             ToolResult("toolu_2", [Text("see image"), Media(mime="image/png", data=PNG)], is_error=False),
                             Text("and tomorrow?")]),
        ],
        tools=[Tool("get_weather", "", {"type": "object", "properties": {}}), Tool("screenshot", "d", {}, strict=True)],
        tool_choice=ToolChoice("tool", "get_weather"), parallel_tool_calls=False,
        output_format=OutputFormat("json_object"), reasoning=Reasoning(budget=10000), stop=["a", "b"],
        temperature=0.5, top_p=0.8, top_k=40, seed=1, presence_penalty=0.1, frequency_penalty=0.2, user="u", stream=True,
    )
    path, raw = chat_upstream.build_request(chat, "gpt-4.1", 1234, "max_completion_tokens")
    body = orjson.loads(raw)
    assert path == "/chat/completions" and body["model"] == "gpt-4.1"
    msgs = body["messages"]
    assert msgs[0] == {"role": "system", "content": "Be brief.\n\nUse tools."}
    assert msgs[1]["role"] == "user" and msgs[1]["content"] == [
        {"type": "text", "text": "Weather?"},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{PNG}"}},
        {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{PDF}", "filename": "document.pdf"}}]
    assert msgs[2] == {"role": "assistant", "content": "Checking.", "tool_calls": [  # thinking dropped, ids unpacked
        {"id": "fc_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        {"id": "toolu_2", "type": "function", "function": {"name": "screenshot", "arguments": "{}"}}]}
    assert msgs[3] == {"role": "tool", "tool_call_id": "fc_1", "content": "18C"}
    assert msgs[4] == {"role": "tool", "tool_call_id": "toolu_2", "content": "see image"}
    assert msgs[5]["role"] == "user" and msgs[5]["content"][1]["type"] == "image_url"
    assert msgs[5]["content"][-1] == {"type": "text", "text": "and tomorrow?"} and len(msgs) == 6
    assert body["tools"][0] == {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {}}}}
    assert body["tools"][1]["function"]["strict"] is True
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False and body["response_format"] == {"type": "json_object"}
    assert body["reasoning_effort"] == "high" and body["stop"] == ["a", "b"] and body["max_completion_tokens"] == 1234
    assert "max_tokens" not in body and "top_k" not in body and "n" not in body
    assert (body["temperature"], body["top_p"], body["seed"], body["user"]) == (0.5, 0.8, 1, "u")
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("reasoning, effort", [
    (None, None), (Reasoning(budget=0), None), (Reasoning(budget=-1), None), (Reasoning(budget=1024), "low"),
    (Reasoning(budget=4096), "medium"), (Reasoning(budget=32000), "high"), (Reasoning(effort="minimal"), "minimal"),
])
def test_reasoning_budget_buckets(reasoning: Reasoning | None, effort: str | None) -> None:
    chat = Chat(messages=[Message("user", [Text("hi")])], reasoning=reasoning)
    assert orjson.loads(chat_upstream.build_request(chat, "o4-mini", 10)[1]).get("reasoning_effort") == effort


def test_build_request_refuses_what_it_cannot_send_and_omits_tool_options_without_tools() -> None:
    base = [Message("user", [Text("hi")])]
    with pytest.raises(InvalidRequest) as err:
        chat_upstream.build_request(Chat(messages=base, stop=["1", "2", "3", "4", "5"]), "m", 10)
    assert err.value.param == "stop"
    with pytest.raises(InvalidRequest) as err:
        chat_upstream.build_request(Chat(messages=base, n=2), "m", 10)
    assert err.value.param == "n"
    with pytest.raises(InvalidRequest):
        chat_upstream.build_request(Chat(messages=[Message("user", [Media(mime="application/pdf",
                                                                           url="https://x/y.pdf")])]), "m", 1)
    body = orjson.loads(chat_upstream.build_request(Chat(messages=base, tool_choice=ToolChoice("none"),
                                                         parallel_tool_calls=True), "m", 10)[1])
    assert "tool_choice" not in body and "parallel_tool_calls" not in body and "stream" not in body
    assert body["messages"] == [{"role": "user", "content": "hi"}]


def test_consecutive_user_turns_are_merged_so_tool_messages_follow_the_calls() -> None:
    chat = Chat(messages=[
        Message("user", [Text("go")]),
        Message("assistant", [ToolCall("a", "f", "{}"), ToolCall("b", "f", "{}")]),
        Message("user", [ToolResult("a", [])]), Message("user", [Text("note"), ToolResult("b", [Text("ok")])]),
        Message("user", [Media(mime="text/plain", data=base64.b64encode("plain doc".encode()).decode())]),
    ])
    msgs = orjson.loads(chat_upstream.build_request(chat, "m", 10)[1])["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "tool", "user"]
    assert msgs[1]["content"] is None and [m.get("tool_call_id") for m in msgs[2:4]] == ["a", "b"]
    assert msgs[4]["content"] == [{"type": "text", "text": "note"}, {"type": "text", "text": "plain doc"}]


def test_parse_then_build_round_trips_an_openai_request() -> None:
    body = agent_body()
    body["messages"] = body["messages"][:4] + [body["messages"][4], body["messages"][5]]
    chat = chat_client.parse_request(body)
    sent = orjson.loads(chat_upstream.build_request(chat, "gpt-up", 500, "max_completion_tokens")[1])
    assert sent["messages"][0] == {"role": "system", "content": "You are terse.\n\nUse metric units."}
    assert sent["messages"][1]["content"] == body["messages"][2]["content"]
    assert sent["messages"][2]["tool_calls"][0] == body["messages"][3]["tool_calls"][0]
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "tool", "tool"]
    for key in ("tools", "tool_choice", "parallel_tool_calls", "response_format", "reasoning_effort", "seed",
                "temperature", "top_p", "presence_penalty", "frequency_penalty", "max_completion_tokens"):
        assert sent[key] == body[key], key
    assert sent["stop"] == ["END"] and sent["user"] == "user-123"


def test_the_limit_goes_upstream_once_in_the_providers_field() -> None:
    chat = chat_client.parse_request({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                      "max_completion_tokens": 30})
    for field, other in (("max_tokens", "max_completion_tokens"), ("max_completion_tokens", "max_tokens")):
        sent = orjson.loads(chat_upstream.build_request(chat, "m", 30, field)[1])
        assert sent[field] == 30 and other not in sent
    assert "max_completion_tokens" not in orjson.loads(chat_upstream.build_request(chat, "m", 30)[1])  # default


@pytest.mark.parametrize("fields", [{"max_tokens": 100000, "max_completion_tokens": 1},
                                    {"max_completion_tokens": 5, "n_predict": 9000},
                                    {"max_tokens": 5, "max_new_tokens": 6}])
def test_two_spellings_of_the_limit_that_disagree_are_refused_naming_both(fields: dict[str, int]) -> None:
    with pytest.raises(InvalidRequest) as err:
        chat_client.parse_request({"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields})
    first, second = fields
    assert f"'{first}'" in str(err.value) and f"'{second}'" in str(err.value) and "disagree" in str(err.value)


# == upstream side: parse_response and StreamReader ===========================================


def test_parse_response_of_a_real_completion() -> None:
    obj = {"id": "chatcmpl-9", "object": "chat.completion", "created": 1, "model": "deepseek-reasoner",
           "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None, "message": {
               "role": "assistant", "content": "Let me check.", "reasoning_content": "thinking...", "refusal": None,
               "tool_calls": [{"id": "call_1", "type": "function",
                               "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
           "usage": {"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
                     "prompt_tokens_details": {"cached_tokens": 1920},
                     "completion_tokens_details": {"reasoning_tokens": 128}}}
    reply = chat_upstream.parse_response(obj)
    assert reply.id == "chatcmpl-9" and reply.model == "deepseek-reasoner" and reply.finish == "tool_calls"
    assert reply.parts == [Thinking("thinking..."), Text("Let me check."),
                           ToolCall("call_1", "get_weather", '{"city":"Paris"}')]
    assert reply.usage == Usage(2006, 300, 1920, 0, 128)  # prompt_tokens already includes cached (trap 7)


@pytest.mark.parametrize("obj, finish", [
    ({"choices": [{"message": {"content": None, "refusal": "No."}, "finish_reason": "stop"}]}, "stop"),
    ({"choices": [{"message": {"tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]},
                   "finish_reason": "stop"}]}, "tool_calls"),
    ({"choices": [{"message": {"content": "x"}, "finish_reason": "length"}]}, "length"),
    ({"choices": [{"message": {"content": "x"}, "finish_reason": "eos"}]}, "stop"),
    ({"choices": []}, "stop"), (None, "stop"), ({"choices": "x"}, "stop"), ({"choices": [{"message": 5}]}, "stop"),
])
def test_parse_response_tolerates_odd_shapes(obj: Any, finish: str) -> None:
    reply = chat_upstream.parse_response(obj)
    assert reply.finish == finish
    for part in reply.parts:
        if isinstance(part, ToolCall):
            assert part.id and part.arguments == '{"a":1}'


def sse(obj: Any) -> bytes:
    return orjson.dumps(obj)


def upstream_chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: Any = None,
                   choices: bool = True) -> bytes:
    obj: dict[str, Any] = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 5, "model": "gpt-4.1"}
    obj["choices"] = [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}] if choices else []
    obj["usage"] = usage
    return sse(obj)


UP_USAGE = {"prompt_tokens": 120, "completion_tokens": 40, "total_tokens": 160,
            "prompt_tokens_details": {"cached_tokens": 100}, "completion_tokens_details": {"reasoning_tokens": 12}}


def openai_upstream_stream() -> list[bytes]:
    return [
        upstream_chunk({"role": "assistant", "content": "", "refusal": None}),
        upstream_chunk({"reasoning_content": "think"}),
        upstream_chunk({"content": "Sure"}),
        upstream_chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                        "function": {"name": "get_weather", "arguments": ""}}]}),
        upstream_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
        upstream_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
        upstream_chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                                        "function": {"name": "get_time", "arguments": "{}"}}]}),
        upstream_chunk({}, finish="tool_calls"),
        upstream_chunk(usage=UP_USAGE, choices=False),
        b"[DONE]",
    ]


def test_stream_reader_turns_openai_chunks_into_events() -> None:
    r = chat_upstream.StreamReader()
    events = [e for data in openai_upstream_stream() for e in r.feed("", data)]
    assert events == [
        Start("chatcmpl-up", "gpt-4.1"),
        ThinkingDelta("think"), TextDelta("Sure"),
        ToolCallDelta(0, "", id="call_a", name="get_weather"),
        ToolCallDelta(0, '{"city":'), ToolCallDelta(0, '"Paris"}'),
        ToolCallDelta(1, "{}", id="call_b", name="get_time"),
        End("tool_calls"),
        UsageUpdate(Usage(120, 40, 100, 0, 12), final=True),
    ]
    assert r.done


def test_stream_reader_repairs_upstreams_that_reuse_index_zero_or_repeat_ids() -> None:
    r = chat_upstream.StreamReader()
    feed = [
        upstream_chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{\"x\""}}]}),
        upstream_chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": ":1}"}}]}),
        upstream_chunk({"tool_calls": [{"index": 0, "id": "b", "function": {"name": "g", "arguments": "{}"}}]}),
        upstream_chunk({"tool_calls": [{"id": "c", "function": {"name": "h", "arguments": "{"}},
                                       {"function": {"arguments": "}"}}]}),
        upstream_chunk({}, finish="stop", usage={"prompt_tokens": 3, "completion_tokens": 4}),  # usage on content
    ]
    events = [e for data in feed for e in r.feed("", data)][1:]
    assert events == [ToolCallDelta(0, '{"x"', id="a", name="f"), ToolCallDelta(0, ":1}"),
                      ToolCallDelta(1, "{}", id="b", name="g"), ToolCallDelta(2, "{", id="c", name="h"),
                      ToolCallDelta(2, "}"), End("tool_calls"), UsageUpdate(Usage(3, 4), final=True)]
    assert r.done  # finished with its usage even though the upstream sent no [DONE]


def test_stream_reader_usage_mid_stream_is_not_final_and_errors_are_stream_errors() -> None:
    r = chat_upstream.StreamReader()
    ev = r.feed("", upstream_chunk({"content": "x"}, usage={"prompt_tokens": 3, "completion_tokens": 1}))
    assert ev[-1] == UsageUpdate(Usage(3, 1), final=False) and not r.done
    assert r.feed("", b"") == [] and r.feed("", b": keepalive") != []  # not JSON: an error, never a crash
    err = r.feed("", b'{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}')
    assert err == [StreamError("Rate limit reached", "rate_limited")]
    assert r.feed("", b'{"error":{"message":"busy","code":503}}')[0].kind == "overloaded"
    assert r.feed("", b'{"error":"boom"}')[0].kind == "server_error"
    assert not r.done


# == round trip: an OpenAI upstream stream through reader and writer ===========================


def relay(upstream: list[bytes], ctx: StreamContext) -> bytes:
    """What the relay does: reader events into the writer, close with the final usage."""
    reader, writer = chat_upstream.StreamReader(), chat_client.StreamWriter(ctx)
    out, usage = b"", Usage()
    for data in upstream:
        for event in reader.feed("", data):
            if isinstance(event, UsageUpdate):
                usage = event.usage
            out += writer.write(event)
    assert reader.done
    return out + writer.close(usage)


def test_reader_to_writer_gives_back_an_equivalent_stream() -> None:
    upstream = openai_upstream_stream()
    objs = frames(relay(upstream, CTX_USAGE))
    original = [orjson.loads(d) for d in upstream[:-1]]
    assert len(objs) == len(original) + 1  # same chunks, then [DONE]
    for mine, theirs in zip(objs[:-1], original):
        assert bool(mine["choices"]) == bool(theirs["choices"])
        if theirs["choices"]:
            d_theirs = {k: v for k, v in theirs["choices"][0]["delta"].items() if v is not None}
            assert mine["choices"][0]["delta"] == d_theirs
            assert mine["choices"][0]["finish_reason"] == theirs["choices"][0]["finish_reason"]
    assert objs[-2]["usage"] == {**UP_USAGE, "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 0}}
    mine, theirs = sdk_final(objs), sdk_final(original + ["[DONE]"])
    assert mine.choices[0].message.tool_calls == theirs.choices[0].message.tool_calls
    assert mine.choices[0].message.content == theirs.choices[0].message.content == "Sure"
    assert mine.usage == theirs.usage.model_copy(update={"prompt_tokens_details": mine.usage.prompt_tokens_details})


@settings(max_examples=40, deadline=None)
@given(arguments=st.lists(st.text(max_size=30), min_size=1, max_size=4),
       cuts=st.lists(st.integers(0, 120), max_size=8), text=st.text(max_size=20))
def test_any_split_of_arguments_into_deltas_comes_back_whole(arguments: list[str], cuts: list[int], text: str) -> None:
    """Tool calls split anywhere, through the reader and the writer, read by the SDK: same calls."""
    upstream = [upstream_chunk({"role": "assistant", "content": ""})]
    if text:
        upstream.append(upstream_chunk({"content": text}))
    for i, args in enumerate(arguments):
        points = sorted({c % (len(args) + 1) for c in cuts} | {0, len(args)})
        pieces = [args[a:b] for a, b in zip(points, points[1:])] or [""]
        upstream.append(upstream_chunk({"tool_calls": [{"index": i, "id": f"call_{i}", "type": "function",
                                                        "function": {"name": f"tool_{i}", "arguments": pieces[0]}}]}))
        upstream += [upstream_chunk({"tool_calls": [{"index": i, "function": {"arguments": p}}]}) for p in pieces[1:]]
    upstream += [upstream_chunk({}, finish="tool_calls"), upstream_chunk(usage=UP_USAGE, choices=False), b"[DONE]"]
    objs = frames(relay(upstream, CTX))
    message = sdk_final(objs).choices[0].message
    assert [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls] == \
        [(f"call_{i}", f"tool_{i}", a) for i, a in enumerate(arguments)]
    assert (message.content or "") == text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=8) | st.sampled_from(["user", "tool", "text"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["role", "content", "type", "text", "tool_calls", "function", "arguments", "name", "id",
                         "index", "delta", "message", "choices", "usage", "finish_reason", "tool_call_id",
                         "image_url", "url", "error"]), children, max_size=4),
    max_leaves=10)


@settings(max_examples=100, deadline=None)
@given(body=st.dictionaries(st.sampled_from(["messages", "tools", "tool_choice", "response_format", "stop", "n",
                                             "stream_options", "reasoning_effort", "temperature"]),
                            json_values, max_size=4),
       chunk=json_values)
def test_odd_json_is_refused_or_read_never_crashes(body: dict[str, Any], chunk: Any) -> None:
    try:
        chat_client.parse_request(body)
    except InvalidRequest:
        pass
    chat_upstream.parse_response(chunk)
    chat_upstream.StreamReader().feed("", orjson.dumps(chunk))


# == embeddings ================================================================================


def test_embeddings_both_ways() -> None:
    embed = chat_client.parse_embed_request({"input": ["a", "b"], "model": "e", "dimensions": 3,
                                             "encoding_format": "base64"})
    assert embed == Embed(["a", "b"], dimensions=3)
    assert chat_client.parse_embed_request({"input": "one"}).inputs == ["one"]
    path, raw = chat_upstream.build_embed_request(Embed(["a"], dimensions=3, task_type="RETRIEVAL_QUERY"),
                                                  "text-embedding-3-small")
    assert path == "/embeddings" and orjson.loads(raw) == {"model": "text-embedding-3-small", "input": ["a"],
                                                           "encoding_format": "float", "dimensions": 3}
    packed = base64.b64encode(struct.pack("<3f", 0.5, -1.0, 2.25)).decode()
    reply = chat_upstream.parse_embed_response({"object": "list", "data": [
        {"object": "embedding", "index": 1, "embedding": packed},
        {"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
        "model": "m", "usage": {"prompt_tokens": 7, "total_tokens": 7}})
    assert reply.vectors == [[0.1, 0.2, 0.3], [0.5, -1.0, 2.25]] and reply.usage == Usage(7, 0)
    assert chat_upstream.parse_embed_response(None).vectors == []
    assert chat_upstream.parse_embed_response({"data": "x"}).vectors == []


@pytest.mark.parametrize("body", [{"input": [[1, 2], [3]]}, {"input": [1, 2, 3]}, {"input": []}, {},
                                  {"input": "x", "encoding_format": "int8"}, {"input": "x", "dimensions": 0}])
def test_embed_requests_that_cannot_be_translated(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        chat_client.parse_embed_request(body)


def test_render_embed_floats_and_base64_as_the_sdk_reads_them() -> None:
    reply = EmbedReply([[0.5, -1.0], [0.25, 3.0]], Usage(in_total=11))
    floats = orjson.loads(chat_client.render_embed(reply, CTX, "float"))
    assert floats["data"][1] == {"object": "embedding", "index": 1, "embedding": [0.25, 3.0]}
    assert floats["model"] == "pub-model" and floats["usage"] == {"prompt_tokens": 11, "total_tokens": 11}
    b64 = orjson.loads(chat_client.render_embed(reply, CTX, "base64"))
    assert struct.unpack("<2f", base64.b64decode(b64["data"][0]["embedding"])) == (0.5, -1.0)
    CreateEmbeddingResponse.model_validate(floats)
    assert chat_upstream.parse_embed_response(b64).vectors == reply.vectors
