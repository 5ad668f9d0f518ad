"""The Responses client adapter: requests parsed into the internal shape, replies and streams checked
against the official openai SDK's own models, stream accumulator and client (over a mock transport)."""

from __future__ import annotations

from typing import Any

import httpx2
import openai
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai import omit
from openai._models import construct_type
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from adapters import openai as openai_adapter
from adapters.openai import responses
from adapters.internal import (
    End,
    InvalidRequest,
    Media,
    Reply,
    Start,
    StreamContext,
    StreamError,
    Text,
    TextDelta,
    Thinking,
    ThinkingDelta,
    ToolCall,
    ToolCallDelta,
    ToolResult,
    Usage,
    UsageUpdate,
    pack_call_id,
    unpack_call_id,
)

CTX = StreamContext(request_id="req_0189abcdef0123a1b2c3d4e5f6", model="claude-sonnet", created=1730000000)
EVENTS = TypeAdapter(ResponseStreamEvent)
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Current weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"], "additionalProperties": False}, "strict": True}


def frames(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Each SSE event as (event name, data), asserting the framing on the way."""
    out = []
    for block in data.decode().split("\n\n")[:-1]:
        head, _, body = block.partition("\ndata: ")
        assert head.startswith("event: ") and "\n" not in body
        out.append((head.removeprefix("event: "), orjson.loads(body)))
    assert data.endswith(b"\n\n") or not data
    return out


def checked(data: bytes) -> list[dict[str, Any]]:
    """The events, each validated by the SDK's own event models, with its name equal to its type."""
    events = []
    for name, event in frames(data):
        assert name == event["type"]
        assert EVENTS.validate_python(event).type == event["type"]
        events.append(event)
    return events


def accumulate(data: bytes) -> ResponseStreamState[Any]:
    """Feed the stream through the SDK's own stream helper state (what responses.stream() uses)."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    for _, event in frames(data):
        state.handle_event(construct_type(type_=ResponseStreamEvent, value=event))  # type: ignore[arg-type]
    return state


def stream(events: list[Any], usage: Usage | None = None, request: dict[str, Any] | None = None) -> bytes:
    writer = responses.StreamWriter(CTX, request)
    out = b"".join(writer.write(e) for e in events)
    return out + writer.close(usage or Usage(in_total=20, out_total=9))


def sdk_client(body: bytes) -> openai.OpenAI:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    return openai.OpenAI(api_key="k", base_url="http://gw.test/v1", max_retries=0,
                         http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))


# -- parse_request ---------------------------------------------------------------------------


def test_a_multi_turn_agent_conversation_with_a_tool_round_trip() -> None:
    body = {
        "model": "claude-sonnet", "instructions": "You are terse.", "stream": True, "store": True,
        "input": [
            {"role": "developer", "content": "Answer in French."},
            {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris and Lyon?"},
                                         {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}",
                                          "detail": "low"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Two cities."}],
             "encrypted_content": responses.carrier("sig-A")},
            {"type": "function_call", "id": "fc_1", "call_id": "toolu_01", "name": "get_weather",
             "arguments": "{\"city\":\"Paris\"}", "status": "completed"},
            {"type": "function_call", "id": "fc_2", "call_id": "toolu_02", "name": "get_weather", "arguments": ""},
            {"type": "function_call_output", "call_id": "toolu_01", "output": "18C"},
            {"type": "function_call_output", "call_id": "toolu_02",
             "output": [{"type": "input_text", "text": "21C"}]},
            {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
             "content": [{"type": "output_text", "text": "Paris 18C, Lyon 21C.", "annotations": []}]},
            {"role": "user", "content": "Merci"},
        ],
        "tools": [WEATHER_TOOL], "tool_choice": "auto", "parallel_tool_calls": True,
        "max_output_tokens": 1024, "temperature": 0.5, "top_p": 0.9, "safety_identifier": "user-42",
    }
    chat = responses.parse_request(body)
    assert [t.text for t in chat.system] == ["You are terse.", "Answer in French."]
    assert [m.role for m in chat.messages] == ["user", "assistant", "user", "assistant", "user"]
    user, calls, results, answer, thanks = chat.messages
    assert user.parts[0] == Text("Weather in Paris and Lyon?")
    assert user.parts[1] == Media(mime="image/png", data=PNG, detail="low")
    assert calls.parts == [Thinking("Two cities.", signature="sig-A"),
                           ToolCall("toolu_01", "get_weather", "{\"city\":\"Paris\"}"),
                           ToolCall("toolu_02", "get_weather", "{}")]
    assert results.parts == [ToolResult("toolu_01", [Text("18C")], name="get_weather"),
                             ToolResult("toolu_02", [Text("21C")], name="get_weather")]
    assert answer.parts == [Text("Paris 18C, Lyon 21C.")] and thanks.parts == [Text("Merci")]
    assert chat.stream and chat.max_output == 1024 and chat.temperature == 0.5 and chat.top_p == 0.9
    assert chat.user == "user-42" and chat.parallel_tool_calls is True and chat.tool_choice.mode == "auto"
    tool = chat.tools[0]
    assert (tool.name, tool.strict, tool.parameters["required"]) == ("get_weather", True, ["city"])


def test_plain_string_input_and_the_defaults() -> None:
    chat = responses.parse_request({"model": "m", "input": "Hello"})
    assert [(m.role, m.parts) for m in chat.messages] == [("user", [Text("Hello")])]
    assert chat.system == [] and chat.tools == [] and chat.tool_choice is None and not chat.stream
    assert chat.max_output is None and chat.output_format is None and chat.reasoning is None


def test_request_options_map_onto_the_internal_shape() -> None:
    body = {"input": "x", "tools": [WEATHER_TOOL, {"type": "function", "name": "noop"}],
            "tool_choice": {"type": "function", "name": "noop"},
            "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": True},
                     "verbosity": "low"},
            "reasoning": {"effort": "xhigh", "summary": "auto"}, "user": "u1", "parallel_tool_calls": False}
    chat = responses.parse_request(body)
    assert chat.tool_choice.mode == "tool" and chat.tool_choice.name == "noop"
    assert chat.tools[1].parameters == {"type": "object", "properties": {}} and chat.tools[1].description == ""
    assert chat.tools[1].strict is None
    fmt = chat.output_format
    assert (fmt.kind, fmt.name, fmt.schema, fmt.strict) == ("json_schema", "w", {"type": "object"}, True)
    assert chat.reasoning.effort == "high" and chat.reasoning.include_thoughts
    assert chat.user == "u1" and chat.parallel_tool_calls is False
    json_mode = responses.parse_request({"input": "x", "text": {"format": {"type": "json_object"}}})
    assert json_mode.output_format.kind == "json_object"
    assert responses.parse_request({"input": "x", "text": {"format": {"type": "text"}}}).output_format is None
    off = responses.parse_request({"input": "x", "reasoning": {"effort": "none"}}).reasoning
    assert off.budget == 0 and not off.include_thoughts
    quiet = responses.parse_request({"input": "x", "reasoning": {"effort": "low"}}).reasoning
    assert quiet.effort == "low" and not quiet.include_thoughts  # no summary asked: none returned


def test_allowed_tools_narrows_the_offered_tools() -> None:
    body = {"input": "x", "tools": [WEATHER_TOOL, {"type": "function", "name": "noop"}],
            "tool_choice": {"type": "allowed_tools", "mode": "required",
                            "tools": [{"type": "function", "name": "noop"}]}}
    chat = responses.parse_request(body)
    assert [t.name for t in chat.tools] == ["noop"] and chat.tool_choice.mode == "required"


def test_files_images_and_tool_outputs_with_media() -> None:
    body = {"input": [
        {"role": "user", "content": [
            {"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"},
            {"type": "input_file", "filename": "b.pdf", "file_data": "JVBERi0y"},
            {"type": "input_file", "file_url": "https://example.com/r/c.pdf?sig=1"},
            {"type": "input_image", "image_url": "https://example.com/cat.jpg", "detail": "high"}]},
        {"type": "function_call", "call_id": "c1", "name": "shot", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1",
         "output": [{"type": "input_image", "image_url": f"data:image/png;base64,{PNG}", "detail": "auto"}]}]}
    chat = responses.parse_request(body)
    assert chat.messages[0].parts == [
        Media(mime="application/pdf", data="JVBERi0x", name="a.pdf"),
        Media(mime="application/pdf", data="JVBERi0y", name="b.pdf"),
        Media(mime="application/pdf", url="https://example.com/r/c.pdf?sig=1"),
        Media(mime="", url="https://example.com/cat.jpg", detail="high")]
    assert chat.messages[2].parts == [ToolResult("c1", [Media(mime="image/png", data=PNG, detail="auto")],
                                                 name="shot")]


def test_tool_results_stay_first_and_late_system_messages_stay_in_place() -> None:
    body = {"input": [
        {"role": "user", "content": "go"},
        {"type": "function_call", "call_id": "a", "name": "f", "arguments": "{}"},
        {"role": "system", "content": [{"type": "input_text", "text": "Be careful."}]},
        {"type": "function_call_output", "call_id": "a", "output": "done"}]}
    chat = responses.parse_request(body)
    assert chat.system == []
    assert chat.messages[2].parts == [ToolResult("a", [Text("done")], name="f"), Text("Be careful.")]


def test_prompt_cache_breakpoints_become_cache_marks() -> None:
    body = {"input": [{"role": "user", "content": [
        {"type": "input_text", "text": "long context", "prompt_cache_breakpoint": {"mode": "explicit"}},
        {"type": "input_text", "text": "question"}]}]}
    assert responses.parse_request(body).messages[0].parts == [Text("long context", cache=True), Text("question")]


@pytest.mark.parametrize("body, param, words", [
    ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id", "stored"),
    ({"input": "x", "conversation": "conv_1"}, "conversation", "stored"),
    ({"input": "x", "conversation": {"id": "conv_1"}}, "conversation", "stored"),
    ({"input": "x", "background": True}, "background", "OpenAI"),
    ({"input": "x", "prompt": {"id": "pmpt_1"}}, "prompt", "OpenAI"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type", "'web_search' tool"),
    ({"input": "x", "tools": [WEATHER_TOOL, {"type": "file_search", "vector_store_ids": ["vs"]}]},
     "tools[1].type", "OpenAI model"),
    ({"input": "x", "tools": [{"type": "computer_use_preview"}]}, "tools[0].type", "OpenAI model"),
    ({"input": "x", "tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools[0].type",
     "OpenAI model"),
    ({"input": "x", "tools": [{"type": "mcp", "server_label": "s"}]}, "tools[0].type", "OpenAI model"),
    ({"input": "x", "tools": [{"type": "image_generation"}]}, "tools[0].type", "OpenAI model"),
    ({"input": "x", "tools": [{"type": "custom", "name": "grammar"}]}, "tools[0].type", "OpenAI model"),
    ({"input": "x", "tool_choice": {"type": "web_search_preview"}}, "tool_choice", "OpenAI model"),
    ({"input": "x", "tool_choice": {"type": "function", "name": "missing"}}, "tool_choice", "not in 'tools'"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1", "detail": "auto"}]}]},
     "input[0].content[0].file_id", "uploaded to OpenAI"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]},
     "input[0].content[0].file_id", "uploaded to OpenAI"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type", "stored at OpenAI"),
    ({"input": [{"type": "web_search_call", "id": "ws_1", "status": "completed"}]}, "input[0].type",
     "OpenAI model"),
    ({"input": "x", "top_logprobs": 5}, "top_logprobs", "OpenAI models"),
    ({"input": "x", "include": ["message.output_text.logprobs"]}, "include", "OpenAI models"),
    ({}, "input", "required"),
    ({"input": 5}, "input", "string or an array"),
    ({"input": []}, "input", "no user or assistant"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role", "user, assistant"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id", "non-empty"),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id", "non-empty"),
    ({"input": [{"role": "assistant", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]},
     "input[0].content[0]", "user messages"),
    ({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input[0].content[0].type", "input_text"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens", "positive"),
    ({"input": "x", "temperature": 3}, "temperature", "from 0 to 2"),
    ({"input": "x", "top_p": True}, "top_p", "number"),
    ({"input": "x", "stream": "yes"}, "stream", "boolean"),
    ({"input": "x", "reasoning": {"effort": "huge"}}, "reasoning.effort", "effort"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}}, "text.format.schema", "Schema"),
    ({"input": "x", "truncation": "sometimes"}, "truncation", "auto"),
])
def test_refusals_name_the_param_and_say_why(body: dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        responses.parse_request(body)
    assert err.value.param == param
    assert words in str(err.value)


def test_stored_state_refusal_tells_the_user_what_to_do() -> None:
    with pytest.raises(InvalidRequest) as err:
        responses.parse_request({"input": "x", "previous_response_id": "resp_1"})
    assert "stores no responses" in str(err.value) and "whole conversation in 'input'" in str(err.value)
    assert "only at OpenAI" not in str(err.value)  # the id may be one a Responses-serving upstream gave, not OpenAI
    # true of a Claude or Gemini model and of an OpenAI-format engine that serves only Chat Completions alike
    assert "this model's upstream has no Responses API" in str(err.value) and "another provider" not in str(err.value)


@given(st.text(max_size=40).map(lambda s: f"Q~{s}"))
@settings(max_examples=30, deadline=None)
def test_refusals_never_quote_prompt_content(secret: str) -> None:
    bad_bodies = [
        {"input": [{"role": "user", "content": [{"type": secret, "text": secret}]}]},
        {"input": [{"type": secret, "content": secret}]},
        {"input": [{"role": secret, "content": secret}]},
        {"input": "x", "tools": [{"type": secret, "name": secret}]},
    ]
    for body in bad_bodies:
        with pytest.raises(InvalidRequest) as err:
            responses.parse_request(body)
        assert secret not in str(err.value)  # only short lower-case type names are ever quoted back


def test_a_foreign_encrypted_reasoning_is_dropped_but_its_summary_kept() -> None:
    body = {"input": [{"role": "user", "content": "q"},
                      {"type": "reasoning", "id": "rs_x", "summary": [], "encrypted_content": "gAAAAABopenai..."},
                      {"type": "reasoning", "id": "rs_y", "summary": [{"type": "summary_text", "text": "a"},
                                                                      {"type": "summary_text", "text": "b"}],
                       "encrypted_content": "gAAAAABopenai..."},
                      {"role": "assistant", "content": "ok"}]}
    chat = responses.parse_request(body)
    assert chat.messages[1].parts == [Thinking("a\n\nb"), Text("ok")]


# -- render_response -------------------------------------------------------------------------


def rendered(reply: Reply, request: dict[str, Any] | None = None) -> tuple[dict[str, Any], Response]:
    raw = orjson.loads(responses.render_response(reply, CTX, request))
    return raw, Response.model_validate(raw)


def test_a_text_reply_is_a_valid_response_object() -> None:
    reply = Reply(id="msg_up", model="claude-sonnet-4-5", parts=[Text("Bonjour "), Text("Paris")], finish="stop",
                  usage=Usage(in_total=2006, out_total=300, cache_read=1920, cache_write=10, reasoning=0))
    raw, resp = rendered(reply)
    assert resp.id == "resp_0189abcdef0123a1b2c3d4e5f6" and resp.object == "response"
    assert resp.created_at == CTX.created and resp.model == "claude-sonnet" and resp.status == "completed"
    assert resp.output_text == "Bonjour Paris"
    [msg] = raw["output"]
    assert msg == {"id": "msg_0189abcdef0123a1b2c3d4e5f6_0", "type": "message", "status": "completed",
                   "role": "assistant",
                   "content": [{"type": "output_text", "text": "Bonjour Paris", "annotations": []}]}
    assert raw["usage"] == {"input_tokens": 2006, "input_tokens_details": {"cached_tokens": 1920,
                                                                           "cache_write_tokens": 10},
                            "output_tokens": 300, "output_tokens_details": {"reasoning_tokens": 0},
                            "total_tokens": 2306}
    assert raw["error"] is None and raw["incomplete_details"] is None and raw["metadata"] == {}
    assert raw["tools"] == [] and raw["tool_choice"] == "auto" and raw["parallel_tool_calls"] is True


def test_the_echo_fields_repeat_the_request() -> None:
    request = {"input": "x", "instructions": "Be terse.", "tools": [WEATHER_TOOL], "tool_choice": "required",
               "parallel_tool_calls": False, "temperature": 0.2, "max_output_tokens": 99, "metadata": {"k": "v"},
               "text": {"format": {"type": "json_object"}}, "reasoning": {"effort": "low", "summary": "auto"}}
    raw, resp = rendered(Reply(id="x", model="m", parts=[Text("{}")], finish="stop", usage=Usage()), request)
    assert resp.instructions == "Be terse." and resp.tools[0].name == "get_weather" and resp.tools[0].strict
    assert resp.tool_choice == "required" and resp.parallel_tool_calls is False and resp.temperature == 0.2
    assert resp.max_output_tokens == 99 and resp.metadata == {"k": "v"} and resp.text.format.type == "json_object"
    assert resp.reasoning.effort == "low" and resp.reasoning.summary == "auto" and raw["store"] is False


def test_a_tool_reply_with_reasoning_and_gemini_signatures() -> None:
    long_sig = "CiQB" + "x" * 300  # Gemini signatures are usually far too long for a 64-character call_id
    reply = Reply(id="r", model="gemini", finish="tool_calls", usage=Usage(in_total=50, out_total=40, reasoning=30),
                  parts=[Thinking("Need the weather.", signature="sig-think"),
                         Text("Checking."),
                         ToolCall("call_a", "get_weather", "{\"city\":\"Paris\"}", signature="s1"),
                         ToolCall("call_b", "get_weather", "{\"city\":\"Lyon\"}", signature=long_sig),
                         ToolCall("toolu_c", "noop", "{}")])
    raw, resp = rendered(reply)
    assert [o.type for o in resp.output] == ["reasoning", "message", "function_call", "reasoning", "function_call",
                                             "function_call"]
    assert resp.output[0].summary[0].text == "Need the weather." and resp.output_text == "Checking."
    first, second, third = resp.output[2], resp.output[4], resp.output[5]
    assert first.call_id == pack_call_id("call_a", "s1") and unpack_call_id(first.call_id) == ("call_a", "s1")
    assert len(first.call_id) <= 64 and second.call_id == "call_b" and third.call_id == "toolu_c"
    assert [o.id for o in resp.output] == [f"{p}_0189abcdef0123a1b2c3d4e5f6_{i}"
                                           for i, p in enumerate(["rs", "msg", "fc", "rs", "fc", "fc"])]
    assert all(o.status == "completed" for o in resp.output) and resp.status == "completed"
    assert resp.usage.output_tokens_details.reasoning_tokens == 30
    # the next turn: the client sends the output back as input, and every signature comes home
    follow = responses.parse_request({"input": [{"role": "user", "content": "q"}, *raw["output"],
                                                {"type": "function_call_output", "call_id": first.call_id,
                                                 "output": "18C"}]})
    assistant = follow.messages[1].parts
    assert assistant[0] == Thinking("Need the weather.", signature="sig-think")
    assert assistant[1] == Text("Checking.")
    assert assistant[2] == ToolCall(first.call_id, "get_weather", "{\"city\":\"Paris\"}")
    assert assistant[3] == ToolCall("call_b", "get_weather", "{\"city\":\"Lyon\"}", signature=long_sig)
    assert assistant[4] == ToolCall("toolu_c", "noop", "{}")
    assert follow.messages[2].parts[0].name == "get_weather"


def test_redacted_thinking_survives_a_round_trip() -> None:
    reply = Reply(id="r", model="m", finish="stop", usage=Usage(),
                  parts=[Thinking("", redacted="EmwKAhgBEgy3va"), Text("ok")])
    raw, resp = rendered(reply)
    assert resp.output[0].type == "reasoning" and resp.output[0].summary == []
    chat = responses.parse_request({"input": [{"role": "user", "content": "q"}, *raw["output"]]})
    assert chat.messages[1].parts == [Thinking("", redacted="EmwKAhgBEgy3va"), Text("ok")]


@pytest.mark.parametrize("finish, reason", [("length", "max_output_tokens"), ("content_filter", "content_filter")])
def test_incomplete_replies(finish: str, reason: str) -> None:
    raw, resp = rendered(Reply(id="r", model="m", parts=[Text("Once upon")], finish=finish,  # type: ignore[arg-type]
                               usage=Usage(in_total=5, out_total=16)))
    assert resp.status == "incomplete" and resp.incomplete_details.reason == reason
    assert resp.output[0].status == "incomplete" and resp.output_text == "Once upon"
    raw, resp = rendered(Reply(id="r", model="m", parts=[], finish=finish, usage=Usage()))  # type: ignore[arg-type]
    assert resp.status == "incomplete" and resp.output == []


@given(st.builds(Usage, *(st.integers(0, 2**40) for _ in range(5))))
@settings(max_examples=50, deadline=None)
def test_usage_round_trips_through_the_shared_normalizer(usage: Usage) -> None:
    assert responses.normalize_usage(responses.usage_object(usage)) == usage


# -- StreamWriter ------------------------------------------------------------------------------


TEXT_AND_TOOL = [
    Start("msg_up", "claude"), UsageUpdate(Usage(in_total=20), final=False),
    TextDelta("Let me "), TextDelta("check."),
    ToolCallDelta(0, "", id="toolu_01", name="get_weather"), ToolCallDelta(0, "{\"city\":"),
    ToolCallDelta(0, "\"Paris\"}"),
    ToolCallDelta(1, "{\"city\":\"Lyon\"}", id="toolu_02", name="get_weather"),
    End("tool_calls"), UsageUpdate(Usage(in_total=20, out_total=9), final=True),
]


def test_the_full_event_order_of_a_streamed_text_and_tool_answer() -> None:
    events = checked(stream(TEXT_AND_TOOL))
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    created = events[0]["response"]
    assert created["status"] == "in_progress" and created["output"] == [] and created["usage"] is None
    assert created["id"] == "resp_0189abcdef0123a1b2c3d4e5f6"
    added = events[2]
    assert added["output_index"] == 0 and added["item"]["content"] == [] and added["item"]["status"] == "in_progress"
    assert events[3]["part"] == {"type": "output_text", "text": "", "annotations": []}
    assert events[6]["text"] == "Let me check." and events[7]["part"]["text"] == "Let me check."
    assert events[8]["item"]["status"] == "completed"
    call = events[9]
    assert call["output_index"] == 1 and call["item"]["arguments"] == "" and call["item"]["call_id"] == "toolu_01"
    assert events[12] == {"type": "response.function_call_arguments.done", "item_id": call["item"]["id"],
                          "output_index": 1, "arguments": "{\"city\":\"Paris\"}", "name": "get_weather",
                          "sequence_number": 12}
    assert events[14]["output_index"] == 2
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["usage"]["total_tokens"] == 29
    assert [o["type"] for o in final["output"]] == ["message", "function_call", "function_call"]
    assert final["output"][2]["arguments"] == "{\"city\":\"Lyon\"}"


def test_the_sdk_stream_helper_accepts_the_stream_and_builds_the_final_response() -> None:
    data = stream(TEXT_AND_TOOL)
    final = accumulate(data)._completed_response
    assert final is not None and final.output_text == "Let me check."
    assert [(o.call_id, o.arguments) for o in final.output[1:]] == [
        ("toolu_01", "{\"city\":\"Paris\"}"), ("toolu_02", "{\"city\":\"Lyon\"}")]
    with sdk_client(data).responses.stream(model="claude-sonnet", input="hi") as s:
        seen = [e.type for e in s]
        response = s.get_final_response()
    assert seen[0] == "response.created" and seen[-1] == "response.completed"
    assert response.output_text == "Let me check." and response.usage.input_tokens == 20


def test_a_streamed_reasoning_block_with_its_signature() -> None:
    data = stream([ThinkingDelta("Two "), ThinkingDelta("cities."), ThinkingDelta("", signature="sig-A"),
                   ThinkingDelta("", redacted="opaque"), TextDelta("Hi"), End("stop")])
    events = checked(data)
    assert [e["type"] for e in events][2:] == [
        "response.output_item.added", "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta", "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed"]
    assert events[6]["text"] == "Two cities."
    output = events[-1]["response"]["output"]
    assert output[0]["summary"] == [{"type": "summary_text", "text": "Two cities."}]
    chat = responses.parse_request({"input": [{"role": "user", "content": "q"}, *output]})
    assert chat.messages[1].parts == [Thinking("Two cities.", signature="sig-A"), Thinking("", redacted="opaque"),
                                      Text("Hi")]
    assert accumulate(data)._completed_response.output_text == "Hi"


def test_a_long_gemini_signature_rides_in_a_reasoning_item_before_its_call() -> None:
    sig = "S" * 200
    events = checked(stream([ToolCallDelta(0, "{}", id="call_x", name="f", signature=sig), End("tool_calls")]))
    output = events[-1]["response"]["output"]
    assert [o["type"] for o in output] == ["reasoning", "function_call"] and output[1]["call_id"] == "call_x"
    chat = responses.parse_request({"input": [{"role": "user", "content": "q"}, *output]})
    assert chat.messages[1].parts == [ToolCall("call_x", "f", "{}", signature=sig)]


@pytest.mark.parametrize("finish, reason", [("length", "max_output_tokens"), ("content_filter", "content_filter")])
def test_a_stream_cut_by_the_limit_ends_incomplete(finish: str, reason: str) -> None:
    events = checked(stream([TextDelta("Once upon"), End(finish)]))  # type: ignore[arg-type]
    last = events[-1]
    assert last["type"] == "response.incomplete"
    assert last["response"]["status"] == "incomplete" and last["response"]["incomplete_details"] == {"reason": reason}
    assert last["response"]["output"][0]["status"] == "incomplete"
    assert events[-2]["type"] == "response.output_item.done" and events[-2]["item"]["status"] == "incomplete"


def test_an_error_mid_stream_fails_the_response_and_makes_the_sdk_raise() -> None:
    writer = responses.StreamWriter(CTX)
    data = writer.write(TextDelta("Hel")) + writer.write(ToolCallDelta(0, "{\"a\"", id="c", name="f"))
    data += writer.error("the upstream closed the stream", "upstream_closed")
    assert writer.write(TextDelta("more")) == b"" and writer.close(Usage()) == b""
    events = checked(data)
    failed, error = events[-2], events[-1]
    assert failed["type"] == "response.failed" and failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {"code": "server_error", "message": "the upstream closed the stream"}
    assert [o["status"] for o in failed["response"]["output"]] == ["completed", "incomplete"]
    assert failed["response"]["output"][1]["arguments"] == "{\"a\""
    assert error["type"] == "error" and error["code"] == "upstream_closed" and error["param"] is None
    assert error["sequence_number"] == failed["sequence_number"] + 1
    with pytest.raises(openai.APIError) as err:
        with sdk_client(data).responses.stream(model="m", input="hi") as s:
            s.get_final_response()
    assert err.value.message == "the upstream closed the stream" and err.value.code == "upstream_closed"


def test_an_error_before_anything_was_sent_is_just_the_error_event() -> None:
    writer = responses.StreamWriter(CTX)
    data = writer.write(StreamError("Overloaded", "overloaded"))
    [(name, event)] = frames(data)
    assert name == "error" and event["sequence_number"] == 0 and event["message"] == "Overloaded"
    with pytest.raises(openai.APIError):
        list(sdk_client(data).responses.create(model="m", input="hi", stream=True))


def test_the_passthrough_error_event_makes_the_sdk_raise() -> None:
    data = responses.stream_error_event("gateway shutting down", "gateway_shutting_down", "req_1", 7)
    [(name, event)] = frames(data)
    assert EVENTS.validate_python(event).type == "error" and event["sequence_number"] == 7
    assert event["error"]["request_id"] == "req_1"
    with pytest.raises(openai.APIError) as err:
        list(sdk_client(data).responses.create(model="m", input="hi", stream=True))
    assert err.value.code == "gateway_shutting_down"


def test_error_bodies_are_the_openai_dialect() -> None:
    body = orjson.loads(responses.error_body(400, "bad", None, "input", "req_1"))
    assert body == orjson.loads(openai_adapter.error_body(400, "bad", None, "input", "req_1"))
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["param"] == "input"


def test_a_late_fragment_of_a_finished_call_still_reaches_the_final_output() -> None:
    events = checked(stream([ToolCallDelta(0, "{\"a\":", id="c0", name="f"), ToolCallDelta(1, "{}", id="c1", name="g"),
                             ToolCallDelta(0, "1}"), End("tool_calls")]))
    assert events[-1]["response"]["output"][0]["arguments"] == "{\"a\":1}"


def test_an_empty_answer_still_completes() -> None:
    data = stream([Start("x", "m"), End("stop")])
    events = checked(data)
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", "response.completed"]
    assert accumulate(data)._completed_response.output == []


def cuts(text: str) -> st.SearchStrategy[list[str]]:
    """Any split of `text` into consecutive pieces."""
    return st.sets(st.integers(1, max(len(text) - 1, 1)), max_size=8).map(
        lambda points: [text[a:b] for a, b in zip([0, *sorted(points)], [*sorted(points), len(text)]) if a < b])


@given(st.text(min_size=1, max_size=60), st.dictionaries(st.text(max_size=8), st.integers(-10**9, 10**9), max_size=4),
       st.data())
@settings(max_examples=25, deadline=None)
def test_any_split_into_deltas_gives_back_the_same_answer(text: str, args: dict[str, int], data: Any) -> None:
    arguments = orjson.dumps(args).decode()
    text_pieces = data.draw(cuts(text))
    arg_pieces = data.draw(cuts(arguments))
    events: list[Any] = [TextDelta(p) for p in text_pieces]
    events += [ToolCallDelta(0, p, id="call_1", name="f") if i == 0 else ToolCallDelta(0, p)
               for i, p in enumerate(arg_pieces)]
    raw = stream([*events, End("tool_calls")])
    checked(raw)
    final = accumulate(raw)._completed_response
    assert final.output_text == text and final.output[1].arguments == arguments
    deltas = [e for _, e in frames(raw) if e["type"].endswith(".delta")]
    assert len(deltas) == len(text_pieces) + len(arg_pieces)


@given(st.lists(st.one_of(
    st.builds(Text, st.text(min_size=1, max_size=20)),
    st.builds(Thinking, st.text(max_size=20), st.one_of(st.none(), st.text(min_size=1, max_size=300))),
    st.builds(ToolCall, st.from_regex(r"call_[a-z0-9]{1,20}", fullmatch=True), st.sampled_from(["f", "g"]),
              st.just("{}"), st.one_of(st.none(), st.text(min_size=1, max_size=300)))), max_size=6,
    unique_by=lambda p: getattr(p, "id", id(p))))
@settings(max_examples=40, deadline=None)
def test_rendered_output_sent_back_as_input_gives_back_the_same_parts(parts: list[Any]) -> None:
    raw = orjson.loads(responses.render_response(Reply(id="r", model="m", parts=parts, finish="stop"), CTX))
    Response.model_validate(raw)
    chat = responses.parse_request({"input": [{"role": "user", "content": "q"}, *raw["output"]]})
    back = [p for m in chat.messages[1:] for p in m.parts]
    expected: list[Any] = []
    for part in parts:  # empty thinking is not rendered; consecutive texts share one message
        if isinstance(part, Thinking) and not (part.text or part.signature):
            continue
        if isinstance(part, Text) and expected and isinstance(expected[-1], Text):
            expected[-1] = Text(expected[-1].text + part.text)
        elif isinstance(part, ToolCall):
            packed = pack_call_id(part.id, part.signature)
            expected.append(ToolCall(packed, part.name, part.arguments) if len(packed) <= 64 and part.signature
                            else part)
        else:
            expected.append(part)
    assert back == expected
