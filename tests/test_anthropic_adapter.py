"""The Anthropic adapter's pure functions: a /v1/messages caller's request, answer, stream and errors,
and an Anthropic upstream's request, answer and stream, with the traps of PROTOCOLS §5 they touch."""

from __future__ import annotations

import base64
import copy
import re
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.anthropic import client, common, upstream
from adapters.internal import (
    Chat,
    End,
    InvalidRequest,
    Media,
    Message,
    OutputFormat,
    Reasoning,
    Reply,
    Start,
    StreamContext,
    StreamError,
    Text,
    TextDelta,
    Thinking,
    ThinkingDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolResult,
    Usage,
    UsageUpdate,
    estimate_prompt,
    media_from_url,
    pack_call_id,
    unpack_call_id,
)

CTX = StreamContext(request_id="req_0190abc", model="claude-public", created=1730000000, prompt_estimate=321)
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake").decode()
PDF = base64.b64encode(b"%PDF-1.4 fake").decode()
ANTHROPIC_ID = re.compile(r"^[A-Za-z0-9_-]+$")
WEATHER_TOOL: dict[str, Any] = {"name": "get_weather", "description": "Current weather for a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def weather_request(**extra: Any) -> dict[str, Any]:
    """A body as anthropic's `client.messages.create(...)` sends it, mid tool loop."""
    body: dict[str, Any] = {
        "model": "claude-public",
        "max_tokens": 2048,
        "system": [{"type": "text", "text": "You are a weather bot.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What's the weather where this photo was taken?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Looks like Paris.", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA"},
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather",
                 "input": {"city": "Paris"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A09q90qw90lq917835lq9",
                 "content": [{"type": "text", "text": "15 degrees, cloudy"}]},
                {"type": "text", "text": "And tomorrow?"},
            ]},
        ],
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "stop_sequences": ["END"],
        "temperature": 0.3,
        "metadata": {"user_id": "user-42"},
        "stream": True,
    }
    body.update(extra)
    return body


# -- an SSE reader as strict as anthropic's messages.stream() helper ---------------------------


def sse_events(raw: bytes) -> list[tuple[str | None, dict[str, Any]]]:
    assert raw.endswith(b"\n\n")
    events: list[tuple[str | None, dict[str, Any]]] = []
    for frame in raw.decode().split("\n\n")[:-1]:
        name, data = None, []
        for line in frame.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                data.append(line[len("data: "):])
            else:
                raise AssertionError(f"unexpected SSE line {line!r}")
        events.append((name, orjson.loads("\n".join(data))))
    return events


class StreamFailed(Exception):
    pass


def accumulate(raw: bytes) -> dict[str, Any]:
    """The final message the anthropic SDK builds from a stream, asserting the order it relies on:
    message_start first, blocks appended at contiguous indices, one open block, deltas of the open
    block's kind, cumulative usage in message_delta, message_stop last; an error event raises."""
    message: dict[str, Any] | None = None
    open_index: int | None = None
    partial: dict[int, str] = {}
    stopped = False
    for name, data in sse_events(raw):
        assert not stopped, "event after message_stop"
        assert name is not None and name == data["type"], "every event needs its event: line"
        if name == "error":
            raise StreamFailed(data["error"]["type"])
        if message is None:
            assert name == "message_start"
            message = copy.deepcopy(data["message"])
            assert isinstance(message["usage"]["input_tokens"], int) and message["content"] == []
            continue
        assert name != "message_start"
        content = message["content"]
        if name == "content_block_start":
            assert open_index is None, "a block opened while another is open"
            assert data["index"] == len(content), "block indices must be contiguous from 0"
            content.append(copy.deepcopy(data["content_block"]))
            open_index = data["index"]
        elif name == "content_block_delta":
            assert open_index is not None and data["index"] == open_index
            block, delta = content[open_index], data["delta"]
            if delta["type"] == "text_delta":
                assert block["type"] == "text" and delta["text"]
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                assert block["type"] == "thinking" and delta["thinking"]
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                assert block["type"] == "thinking"
                block["signature"] = delta["signature"]
            else:
                assert delta["type"] == "input_json_delta" and block["type"] == "tool_use"
                partial[open_index] = partial.get(open_index, "") + delta["partial_json"]
        elif name == "content_block_stop":
            assert open_index is not None and data["index"] == open_index
            block = content[open_index]
            if block["type"] == "thinking":
                assert block["signature"], "Claude clients drop thinking without a signature"
            if block["type"] == "tool_use":
                block["partial_json"] = partial.get(open_index, "")
            open_index = None
        elif name == "message_delta":
            assert open_index is None
            message["stop_reason"] = data["delta"]["stop_reason"]
            message["stop_sequence"] = data["delta"]["stop_sequence"]
            assert isinstance(data["usage"]["output_tokens"], int)
            message["usage"].update({k: v for k, v in data["usage"].items() if v is not None})
        else:
            assert name == "message_stop" and message["stop_reason"] is not None
            stopped = True
    assert message is not None and stopped, "a complete stream ends with message_stop"
    return message


def write_all(events: list[Any], usage: Usage, ctx: StreamContext = CTX) -> bytes:
    writer = client.StreamWriter(ctx)
    return b"".join(writer.write(e) for e in events) + writer.close(usage)


# -- client side: parse_request --------------------------------------------------------------


def test_a_tool_loop_request_becomes_the_internal_shape_in_order() -> None:
    chat = client.parse_request(weather_request())
    assert chat.system == [Text("You are a weather bot.", cache=True)]
    assert [m.role for m in chat.messages] == ["user", "assistant", "user"]
    assert chat.messages[0].parts == [Text("What's the weather where this photo was taken?"),
                                      Media(mime="image/png", data=PNG)]
    assert chat.messages[1].parts == [
        Thinking("Looks like Paris.", signature="EqQBCgIYAhIM1gbcDa9GJwZA"), Text("Let me check."),
        ToolCall("toolu_01A09q90qw90lq917835lq9", "get_weather", '{"city":"Paris"}')]
    assert chat.messages[2].parts == [
        ToolResult("toolu_01A09q90qw90lq917835lq9", [Text("15 degrees, cloudy")], name="get_weather"),
        Text("And tomorrow?")]
    assert chat.tools == [Tool("get_weather", "Current weather for a city", WEATHER_TOOL["input_schema"])]
    assert chat.tool_choice == ToolChoice("auto") and chat.parallel_tool_calls is False
    assert (chat.max_output, chat.stop, chat.temperature, chat.user, chat.stream) == \
        (2048, ["END"], 0.3, "user-42", True)
    assert chat.reasoning is None and chat.top_p is None and chat.top_k is None


def test_every_content_block_kind_is_read() -> None:
    body = {"max_tokens": 100, "system": "Be brief.", "messages": [
        {"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            {"type": "document", "title": "report.pdf", "source": {"type": "base64", "media_type": "application/pdf",
                                                                   "data": PDF}},
            {"type": "document", "source": {"type": "url", "url": "https://example.com/paper.pdf"}},
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain notes"},
             "cache_control": {"type": "ephemeral", "ttl": "1h"}},
            {"type": "search_result", "title": "Docs", "source": "https://docs.example",
             "content": [{"type": "text", "text": "found it"}]},
            {"type": "text", "text": ""},
        ]},
        {"role": "assistant", "content": [
            {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
            {"type": "tool_use", "id": "toolu_1", "name": "run", "input": {}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True, "content": "boom"},
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/gif", "data": "R0lG"}}]},
        ]},
        {"role": "assistant", "content": ""},
    ]}
    chat = client.parse_request(body)
    assert chat.system == [Text("Be brief.")]
    assert chat.messages[0].parts == [
        Media(mime="", url="https://example.com/cat.jpg"),
        Media(mime="application/pdf", data=PDF, name="report.pdf"),
        Media(mime="application/pdf", url="https://example.com/paper.pdf"),
        Text("plain notes", cache=True),
        Text("Docs\nhttps://docs.example\nfound it"),
    ]
    assert chat.messages[1].parts == [Thinking("", redacted="EmwKAhgBEgy3va3pzix"), ToolCall("toolu_1", "run", "{}")]
    assert chat.messages[2].parts == [ToolResult("toolu_1", [Text("boom")], name="run", is_error=True),
                                      ToolResult("toolu_1", [Media(mime="image/gif", data="R0lG")], name="run")]
    assert len(chat.messages) == 3  # the empty final assistant turn carries nothing


def test_thinking_effort_and_output_format_are_read() -> None:
    def reasoning(**extra: Any) -> Reasoning | None:
        body = {"max_tokens": 4096, "messages": [{"role": "user", "content": "x"}], **extra}
        return client.parse_request(body).reasoning

    assert reasoning(thinking={"type": "enabled", "budget_tokens": 2048}) == Reasoning(budget=2048)
    assert reasoning(thinking={"type": "adaptive"}, output_config={"effort": "xhigh"}) == Reasoning(effort="high")
    assert reasoning(thinking={"type": "adaptive", "display": "omitted"}) == Reasoning(include_thoughts=False)
    assert reasoning(thinking={"type": "disabled"}) == Reasoning(budget=0)
    assert reasoning(output_config={"effort": "low"}) == Reasoning(effort="low")
    assert reasoning() is None
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    chat = client.parse_request({"max_tokens": 10, "messages": [{"role": "user", "content": "x"}],
                               "output_config": {"format": {"type": "json_schema", "schema": schema}},
                               "top_p": 0.9, "top_k": 40})
    assert chat.output_format == OutputFormat(kind="json_schema", schema=schema)
    assert (chat.top_p, chat.top_k) == (0.9, 40)


def test_count_tokens_bodies_may_leave_out_max_tokens() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "Hello"}]}
    assert client.parse_request(body, for_count=True).max_output is None
    with pytest.raises(InvalidRequest) as err:
        client.parse_request(body)
    assert err.value.param == "max_tokens"
    assert client.count_tokens_body(17) == b'{"input_tokens":17}'


def test_signatures_this_gateway_wrote_come_back_unmarked() -> None:
    body = {"max_tokens": 10, "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "from gpt", "signature": common.UNSIGNED_THINKING},
        {"type": "thinking", "thinking": "from gemini", "signature": "tokentoll:sig:CiQBjz1rX"},
        {"type": "thinking", "thinking": "from claude", "signature": "EqQBCgIYAhIM"},
        {"type": "text", "text": "a"}]}, {"role": "user", "content": "more"}]}
    assert client.parse_request(body).messages[1].parts[:3] == [
        Thinking("from gpt", signature=None), Thinking("from gemini", signature="CiQBjz1rX"),
        Thinking("from claude", signature="EqQBCgIYAhIM")]


MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("body, param", [
    ({"messages": MSG}, "max_tokens"),
    ({"messages": MSG, "max_tokens": 0}, "max_tokens"),
    ({"messages": MSG, "max_tokens": True}, "max_tokens"),
    ({"messages": [], "max_tokens": 5}, "messages"),
    ({"messages": [{"role": "system", "content": "x"}], "max_tokens": 5}, "messages.0"),
    ({"messages": [{"role": "user", "content": 5}], "max_tokens": 5}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": [{"type": "video"}]}], "max_tokens": 5}, "messages.0.content.0"),
    ({"messages": [{"role": "assistant", "content": [{"type": "server_tool_use", "id": "srvtoolu_1",
                                                      "name": "web_search", "input": {}}]}], "max_tokens": 5},
     "messages.0.content.0"),
    ({"messages": [{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t"}]}],
      "max_tokens": 5}, "messages.0.content.0"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}],
      "max_tokens": 5}, "messages.0.content.0.source"),
    ({"messages": MSG, "max_tokens": 5, "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
     "tools.0.type"),
    ({"messages": MSG, "max_tokens": 5, "tools": [{"type": "bash_20250124", "name": "bash"}]}, "tools.0.type"),
    ({"messages": MSG, "max_tokens": 5, "tools": [WEATHER_TOOL], "tool_choice": {"type": "tool", "name": "nope"}},
     "tool_choice.name"),
    ({"messages": MSG, "max_tokens": 5, "tool_choice": {"type": "required"}}, "tool_choice"),
    ({"messages": MSG, "max_tokens": 5000, "thinking": {"type": "enabled", "budget_tokens": 512}},
     "thinking.budget_tokens"),
    ({"messages": MSG, "max_tokens": 2000, "thinking": {"type": "enabled", "budget_tokens": 2000}}, "max_tokens"),
    ({"messages": MSG, "max_tokens": 5, "thinking": {"type": "sometimes"}}, "thinking.type"),
    ({"messages": MSG, "max_tokens": 5, "temperature": 1.5}, "temperature"),
    ({"messages": MSG, "max_tokens": 5, "top_k": 0}, "top_k"),
    ({"messages": MSG, "max_tokens": 5, "stop_sequences": "END"}, "stop_sequences"),
    ({"messages": MSG, "max_tokens": 5, "stream": "yes"}, "stream"),
    ({"messages": MSG, "max_tokens": 5, "output_config": {"format": {"type": "json_object"}}}, "output_config.format"),
    ({"messages": MSG, "max_tokens": 5, "output_config": {"effort": "extreme"}}, "output_config.effort"),
    ({"messages": MSG, "max_tokens": 5, "metadata": {"user_id": 7}}, "metadata.user_id"),
    ({"messages": MSG, "max_tokens": 5, "mcp_servers": [{"type": "url", "url": "https://mcp", "name": "m"}]},
     "mcp_servers"),
])
def test_bad_or_anthropic_only_requests_are_refused_with_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        client.parse_request(body)
    assert err.value.param == param


def test_server_tools_are_refused_with_a_reason_and_no_prompt_text() -> None:
    with pytest.raises(InvalidRequest) as err:
        client.parse_request({"max_tokens": 5, "messages": [{"role": "user", "content": "my secret plan"}],
                            "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]})
    assert "Anthropic model" in str(err.value) and "secret" not in str(err.value)
    with pytest.raises(InvalidRequest) as err:
        client.parse_request({"max_tokens": 5, "messages": [
            {"role": "user", "content": [{"type": "text", "text": 12345}]}]})
    assert "12345" not in str(err.value)


def test_passthrough_estimate_accepts_what_only_anthropic_knows_and_counts_it() -> None:
    plain = weather_request()
    assert estimate_prompt(client.prompt_of(plain)) == estimate_prompt(client.parse_request(plain))
    server = weather_request(tools=[WEATHER_TOOL, {"type": "web_search_20250305", "name": "web_search"}])
    server["messages"].append({"role": "assistant", "content": [
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "paris weather"}},
        {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": [
            {"type": "web_search_result", "url": "https://w.example", "title": "Weather",
             "encrypted_content": "x" * 400}]},
    ]})
    assert estimate_prompt(client.prompt_of(server)) > estimate_prompt(client.prompt_of(plain)) + 100
    with pytest.raises(InvalidRequest):
        client.prompt_of({"messages": "nope"})


# -- client side: render_response -------------------------------------------------------------


def test_a_tool_only_answer_has_no_empty_text_block_and_cache_is_split_out() -> None:
    reply = Reply(id="chatcmpl-9", model="gpt-4o", finish="tool_calls",
                  parts=[Text(""), ToolCall("functions.get_weather:0", "get_weather", '{"city":"Paris"}')],
                  usage=Usage(in_total=1200, out_total=30, cache_read=1000, cache_write=100))
    out = orjson.loads(client.render_response(reply, CTX))
    assert out["content"] == [{"type": "tool_use", "id": out["content"][0]["id"], "name": "get_weather",
                               "input": {"city": "Paris"}}]
    assert ANTHROPIC_ID.match(out["content"][0]["id"])
    assert (out["id"], out["type"], out["role"], out["model"]) == \
        ("msg_0190abc", "message", "assistant", "claude-public")
    assert (out["stop_reason"], out["stop_sequence"]) == ("tool_use", None)
    assert out["usage"] == {"input_tokens": 100, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 1000,
                            "output_tokens": 30}


@pytest.mark.parametrize("finish, stop_sequence, tools, expected", [
    ("stop", None, False, ("end_turn", None)),
    ("stop", "END", False, ("stop_sequence", "END")),
    ("length", None, False, ("max_tokens", None)),
    ("content_filter", None, False, ("refusal", None)),
    ("tool_calls", None, True, ("tool_use", None)),
    ("stop", None, True, ("tool_use", None)),  # a Gemini tool turn ends with STOP
])
def test_finish_reasons_map_to_stop_reasons(finish: Any, stop_sequence: str | None, tools: bool,
                                            expected: tuple[str, str | None]) -> None:
    parts: list[Any] = [Text("hi")] + ([ToolCall("c1", "f", "{}")] if tools else [])
    reply = Reply(id="r", model="m", parts=parts, finish=finish, stop_sequence=stop_sequence, usage=Usage(5, 1))
    out = orjson.loads(client.render_response(reply, CTX))
    assert (out["stop_reason"], out["stop_sequence"]) == expected
    events: list[Any] = [TextDelta("hi")] + ([ToolCallDelta(0, "{}", id="c1", name="f")] if tools else [])
    message = accumulate(write_all([*events, End(finish, stop_sequence)], Usage(5, 1)))
    assert (message["stop_reason"], message["stop_sequence"]) == expected


def test_thinking_and_gemini_signatures_survive_rendering() -> None:
    reply = Reply(id="r", model="gemini", finish="tool_calls", usage=Usage(10, 50, reasoning=40), parts=[
        Thinking("plan", signature="gem-thought-sig"), Thinking("no sig"), Thinking("", redacted="opaque"),
        Text("ok"), ToolCall("call_0", "f", "", signature="fc-sig")])
    out = orjson.loads(client.render_response(reply, CTX))
    assert out["content"][:4] == [
        {"type": "thinking", "thinking": "plan", "signature": "tokentoll:sig:gem-thought-sig"},
        {"type": "thinking", "thinking": "no sig", "signature": common.UNSIGNED_THINKING},
        {"type": "redacted_thinking", "data": "opaque"}, {"type": "text", "text": "ok"}]
    tool = out["content"][4]
    assert tool["input"] == {} and ANTHROPIC_ID.match(tool["id"])
    assert unpack_call_id(tool["id"]) == ("call_0", "fc-sig")
    assert out["usage"]["output_tokens_details"] == {"thinking_tokens": 40}


# -- client side: StreamWriter ---------------------------------------------------------------


def test_an_openai_style_stream_becomes_contiguous_anthropic_blocks() -> None:
    raw = write_all([
        Start("chatcmpl-1", "gpt-4o"), UsageUpdate(Usage(10, 0), final=False), ThinkingDelta("Think"),
        ThinkingDelta("ing."), TextDelta(""), TextDelta("Sure, "), TextDelta("checking."),
        ToolCallDelta(0, "", id="functions.get_weather:0", name="get_weather"),
        ToolCallDelta(0, '{"city":'), ToolCallDelta(0, '"Paris"}'),
        ToolCallDelta(1, '{"tz":"CET"}', id="call_b", name="get_time"),
        End("tool_calls"), UsageUpdate(Usage(1300, 77, cache_read=1024), final=True),
    ], Usage(in_total=1300, out_total=77, cache_read=1024, cache_write=0))
    events = sse_events(raw)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_delta",
        "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert start["usage"] == {"input_tokens": 321, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                              "output_tokens": 1}
    message = accumulate(raw)
    assert [b["type"] for b in message["content"]] == ["thinking", "text", "tool_use", "tool_use"]
    assert message["content"][0] == {"type": "thinking", "thinking": "Thinking.", "signature": common.UNSIGNED_THINKING}
    assert message["content"][1]["text"] == "Sure, checking."
    first, second = message["content"][2], message["content"][3]
    assert ANTHROPIC_ID.match(first["id"]) and first["id"] != "functions.get_weather:0"
    assert (first["name"], orjson.loads(first["partial_json"])) == ("get_weather", {"city": "Paris"})
    assert (second["id"], second["name"], second["partial_json"]) == ("call_b", "get_time", '{"tz":"CET"}')
    assert message["stop_reason"] == "tool_use"
    assert message["usage"] == {"input_tokens": 276, "cache_creation_input_tokens": 0,
                                "cache_read_input_tokens": 1024, "output_tokens": 77}


def test_usage_updates_send_nothing_and_message_start_comes_once() -> None:
    writer = client.StreamWriter(CTX)
    first = writer.write(UsageUpdate(Usage(5, 1), final=False))
    assert [name for name, _ in sse_events(first)] == ["message_start"]
    assert writer.write(UsageUpdate(Usage(5, 3), final=False)) == b""
    assert writer.write(Start("x", "y")) == b""
    tail = sse_events(writer.close(Usage(5, 3)))
    assert [name for name, _ in tail] == ["message_delta", "message_stop"]
    assert tail[0][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert writer.write(TextDelta("late")) == b"" and writer.close(Usage()) == b""


def test_signed_thinking_keeps_its_signature_and_new_thinking_opens_a_new_block() -> None:
    message = accumulate(write_all([
        ThinkingDelta("one"), ThinkingDelta("", signature="sig-1"), ThinkingDelta("two"),
        ThinkingDelta("", redacted="r3d"), ThinkingDelta("", signature="lonely"), TextDelta("answer"),
    ], Usage(3, 9)))
    assert message["content"] == [
        {"type": "thinking", "thinking": "one", "signature": "tokentoll:sig:sig-1"},
        {"type": "thinking", "thinking": "two", "signature": common.UNSIGNED_THINKING},
        {"type": "redacted_thinking", "data": "r3d"},
        {"type": "thinking", "thinking": "", "signature": "tokentoll:sig:lonely"},
        {"type": "text", "text": "answer"}]


def test_arguments_for_an_already_closed_tool_block_are_dropped_not_misplaced() -> None:
    message = accumulate(write_all([
        ToolCallDelta(0, '{"a":1}', id="c0", name="f"), ToolCallDelta(1, '{"b":2}', id="c1", name="g"),
        ToolCallDelta(0, "garbage"), End("tool_calls")], Usage(1, 1)))
    assert [b["partial_json"] for b in message["content"]] == ['{"a":1}', '{"b":2}']


@pytest.mark.parametrize("code, etype", [
    ("upstream_timeout", "timeout_error"), ("overloaded", "overloaded_error"), ("rate_limited", "rate_limit_error"),
    ("rate_limit_exceeded", "rate_limit_error"), ("server_error", "api_error"), ("upstream_closed", "api_error"),
    ("gateway_shutting_down", "api_error"), ("billing_shortfall", "billing_error"),
    ("api_key_quota_exceeded", "billing_error"), ("invalid_request", "invalid_request_error"),
    ("overloaded_error", "overloaded_error"), ("", "api_error"),
])
def test_in_band_errors_carry_a_fitting_type_and_end_the_stream(code: str, etype: str) -> None:
    writer = client.StreamWriter(CTX)
    head = writer.write(TextDelta("partial"))
    tail = writer.error("the upstream failed", code)
    assert tail.startswith(b"event: error\n")
    assert sse_events(tail)[0][1] == {"type": "error", "error": {"type": etype, "message": "the upstream failed"},
                                      "request_id": CTX.request_id}  # as on the passthrough lane (issue 18.7)
    with pytest.raises(StreamFailed, match=etype):
        accumulate(head + tail)
    assert writer.write(TextDelta("more")) == b"" and writer.close(Usage()) == b"" and writer.error("x", "y") == b""
    passthrough = client.stream_error_event("the upstream failed", code, "req_1")
    assert sse_events(passthrough) == [("error", {"type": "error", "request_id": "req_1",
                                                  "error": {"type": etype, "message": "the upstream failed"}})]


def test_an_upstream_stream_error_event_is_rendered_as_the_error_event() -> None:
    writer = client.StreamWriter(CTX)
    out = writer.write(StreamError("Overloaded", "overloaded"))
    assert sse_events(out) == [("error", {"type": "error", "error": {"type": "overloaded_error",
                                                                     "message": "Overloaded"},
                                          "request_id": CTX.request_id})]


def _steps_to_events(steps: list[Any]) -> list[Any]:
    events: list[Any] = []
    tools = 0
    for step in steps:
        if step == "tool":
            events.append(ToolCallDelta(tools, "", id=f"id.{tools}:x", name=f"tool{tools}"))
            tools += 1
        elif isinstance(step, tuple):  # arguments go on right after their call, as upstreams send them
            if events and isinstance(events[-1], ToolCallDelta):
                events.append(ToolCallDelta(tools - 1, step[1]))
        else:
            events.append(step)
    return events


STEP = st.one_of(
    st.builds(TextDelta, st.text(max_size=4)),
    st.builds(ThinkingDelta, st.text(max_size=4)),
    st.builds(lambda s: ThinkingDelta("", signature=s), st.text(min_size=1, max_size=4)),
    st.builds(lambda d: ThinkingDelta("", redacted=d), st.text(min_size=1, max_size=4)),
    st.just("tool"),
    st.tuples(st.just("args"), st.text(max_size=4)),
    st.just(UsageUpdate(Usage(4, 2), final=False)),
    st.just(Start("s", "m")),
)


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(STEP, max_size=25), end=st.booleans())
def test_any_event_sequence_gives_a_stream_the_sdk_accepts(steps: list[Any], end: bool) -> None:
    events = _steps_to_events(steps) + ([End("stop")] if end else [])
    message = accumulate(write_all(events, Usage(40, 12, cache_read=8)))
    blocks = message["content"]
    assert "".join(b["text"] for b in blocks if b["type"] == "text") == \
        "".join(e.text for e in events if isinstance(e, TextDelta))
    assert "".join(b["thinking"] for b in blocks if b["type"] == "thinking") == \
        "".join(e.text for e in events if isinstance(e, ThinkingDelta))
    tool_blocks = [b for b in blocks if b["type"] == "tool_use"]
    assert [b["name"] for b in tool_blocks] == [f"tool{i}" for i in range(len(tool_blocks))]
    for i, block in enumerate(tool_blocks):
        assert ANTHROPIC_ID.match(block["id"])
        assert block["partial_json"] == "".join(e.arguments for e in events
                                                if isinstance(e, ToolCallDelta) and e.index == i)
    assert all(b["text"] for b in blocks if b["type"] == "text")
    assert message["usage"]["input_tokens"] == 32 and message["usage"]["cache_read_input_tokens"] == 8


@settings(max_examples=100, deadline=None)
@given(value=st.dictionaries(st.text(max_size=5), st.one_of(st.integers(-2**63, 2**63 - 1), st.text(max_size=5),
                                                            st.booleans()),
                             max_size=4), cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6))
def test_any_split_of_tool_arguments_gives_back_the_same_input(value: dict[str, Any], cuts: list[int]) -> None:
    text = orjson.dumps(value).decode()
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    events = [ToolCallDelta(0, pieces[0] if pieces else "", id="toolu_x", name="f"),
              *(ToolCallDelta(0, p) for p in pieces[1:]), End("tool_calls")]
    block = accumulate(write_all(events, Usage(1, 1)))["content"][0]
    assert orjson.loads(block["partial_json"]) == value


# -- client side: errors and models ----------------------------------------------------------


@pytest.mark.parametrize("status, etype", [
    (400, "invalid_request_error"), (401, "authentication_error"), (402, "billing_error"), (403, "permission_error"),
    (404, "not_found_error"), (405, "invalid_request_error"), (413, "request_too_large"), (429, "rate_limit_error"),
    (500, "api_error"), (502, "api_error"), (503, "api_error"), (504, "timeout_error"), (529, "overloaded_error"),
])
def test_error_bodies_follow_the_status_table(status: int, etype: str) -> None:
    body = orjson.loads(client.error_body(status, "wallet is empty", "billing_shortfall", None, "req_9"))
    assert body == {"type": "error", "error": {"type": etype, "message": "wallet is empty"}, "request_id": "req_9"}


def test_models_list_stops_the_sdk_paging_and_uses_rfc3339() -> None:
    models = [client.model_object("claude-sonnet", "Claude Sonnet", 1730000000), client.model_object("gpt-4o", "", 0)]
    assert models[0] == {"type": "model", "id": "claude-sonnet", "display_name": "Claude Sonnet",
                         "created_at": "2024-10-27T03:33:20Z"}
    assert models[1]["display_name"] == "gpt-4o" and models[1]["created_at"] == "1970-01-01T00:00:00Z"
    assert orjson.loads(client.models_list(models)) == {"data": models, "has_more": False, "first_id": "claude-sonnet",
                                                      "last_id": "gpt-4o"}
    assert orjson.loads(client.models_list([])) == {"data": [], "has_more": False, "first_id": None, "last_id": None}


# -- upstream side: build_request ------------------------------------------------------------


def build(chat: Chat, max_output: int = 1000) -> dict[str, Any]:
    path, body = upstream.build_request(chat, "claude-sonnet-4-5", max_output)
    assert path == "/messages"
    return orjson.loads(body)


def user(*parts: Any) -> Message:
    return Message("user", list(parts))


def assistant(*parts: Any) -> Message:
    return Message("assistant", list(parts))


def test_auth_headers_carry_the_key_and_version() -> None:
    assert upstream.auth_headers("sk-ant-1") == {"x-api-key": "sk-ant-1", "anthropic-version": "2023-06-01"}


def test_openai_tool_messages_become_one_user_turn_with_results_first() -> None:
    chat = Chat(messages=[
        user(Text("Weather in Paris and Rome?")),
        assistant(Text(""), ToolCall("call_rome", "w", '{"city":"Rome"}'),
                  ToolCall("call_paris", "w", '{"city":"Paris"}')),
        user(ToolResult("call_paris", [Text("15C")])), user(ToolResult("call_rome", [Text("22C")])),
        user(Text("Also, which is warmer?")),
    ])
    messages = build(chat)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == [
        {"type": "tool_use", "id": "call_rome", "name": "w", "input": {"city": "Rome"}},
        {"type": "tool_use", "id": "call_paris", "name": "w", "input": {"city": "Paris"}}]
    assert messages[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_rome", "content": [{"type": "text", "text": "22C"}]},
        {"type": "tool_result", "tool_use_id": "call_paris", "content": [{"type": "text", "text": "15C"}]},
        {"type": "text", "text": "Also, which is warmer?"}]


def test_unanswered_calls_get_an_error_result_and_stray_results_become_text() -> None:
    chat = Chat(messages=[
        user(Text("go")), assistant(ToolCall("a", "f", "{}"), ToolCall("b", "f", "{}")),
        user(ToolResult("a", [Text("done")]), ToolResult("zzz", [Text("old")], is_error=True)),
        assistant(ToolCall("c", "f", "{}")),
    ])
    messages = build(chat)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "a", "content": [{"type": "text", "text": "done"}]},
        {"type": "tool_result", "tool_use_id": "b", "content": upstream.NO_RESULT_TEXT, "is_error": True},
        {"type": "text", "text": "[Tool error for call zzz]"}, {"type": "text", "text": "old"}]
    assert messages[4]["content"] == [
        {"type": "tool_result", "tool_use_id": "c", "content": upstream.NO_RESULT_TEXT, "is_error": True}]


def test_call_ids_are_unpacked_then_sanitized_the_same_way_on_both_sides() -> None:
    packed = pack_call_id("functions.Bash:0", "gemini-sig")
    chat = Chat(messages=[user(Text("ls")), assistant(ToolCall(packed, "Bash", '{"cmd":"ls"}')),
                          user(ToolResult(packed, [Text("a.txt")]))])
    messages = build(chat)["messages"]
    call_id = messages[1]["content"][0]["id"]
    assert ANTHROPIC_ID.match(call_id) and "__ts_" not in call_id
    assert messages[2]["content"][0]["tool_use_id"] == call_id


def test_empty_and_blank_text_is_dropped_and_the_prefill_is_trimmed() -> None:
    chat = Chat(system=[Text(""), Text("  ")], messages=[
        assistant(Text("Hello! How can I help?")), user(Text("")), user(Text("Tell me a joke"), Text(" \n")),
        assistant(Text("Why did the"), Text("  \n")),
    ])
    body = build(chat)
    assert "system" not in body
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": upstream.OPENING_TEXT}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello! How can I help?"}]},
        {"role": "user", "content": [{"type": "text", "text": "Tell me a joke"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Why did the"}]}]
    only_system = build(Chat(system=[Text("Be terse.")], messages=[]))
    assert only_system["messages"] == [{"role": "user", "content": [{"type": "text", "text": upstream.OPENING_TEXT}]}]
    blank_prefill = build(Chat(messages=[user(Text("q")), assistant(Text("   "))]))["messages"]
    assert blank_prefill == [{"role": "user", "content": [{"type": "text", "text": "q"}]}]


def test_system_cache_marks_pass_and_at_most_four_survive_the_first_and_the_last() -> None:
    chat = Chat(system=[Text("rules", cache=True), Text("more rules", cache=True)],
                messages=[user(Text("a", cache=True)), assistant(Text("b")), user(Text("c", cache=True)),
                          assistant(Text("d", cache=True)), user(Text("e", cache=True))])
    body = build(chat)
    assert body["system"] == [{"type": "text", "text": "rules", "cache_control": {"type": "ephemeral"}},
                              {"type": "text", "text": "more rules"}]
    marked = [b["text"] for m in body["messages"] for b in m["content"] if "cache_control" in b]
    assert marked == ["c", "d", "e"]
    few = build(Chat(system=[Text("s", cache=True)], messages=[user(Text("u", cache=True))]))
    assert "cache_control" in few["system"][0] and "cache_control" in few["messages"][0]["content"][0]


def test_media_becomes_image_and_document_blocks() -> None:
    chat = Chat(messages=[user(
        media_from_url(f"data:image/png;base64,{PNG}"), Media(mime="image/jpg", data="/9j/"),
        media_from_url("https://example.com/cat.webp"), Media(mime="application/pdf", data=PDF, name="report.pdf"),
        Media(mime="application/pdf", url="https://example.com/paper.pdf"),
        Media(mime="text/plain", data=base64.b64encode("notes ü".encode()).decode()),
    )])
    assert build(chat)["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.webp"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
         "title": "report.pdf"},
        {"type": "document", "source": {"type": "url", "url": "https://example.com/paper.pdf"}},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "notes ü"}}]


@pytest.mark.parametrize("media", [Media(mime="image/bmp", data="Qk0="), Media(mime="audio/wav", data="UklG"),
                                   Media(mime="video/mp4", url="https://example.com/v.mp4")])
def test_media_anthropic_cannot_read_is_refused(media: Media) -> None:
    with pytest.raises(InvalidRequest) as err:
        build(Chat(messages=[user(Text("see"), media)]))
    assert media.mime in str(err.value)


def test_only_signed_thinking_is_replayed() -> None:
    chat = Chat(messages=[user(Text("q"), Thinking("user side", signature="s0")), assistant(
        Thinking("signed", signature="sig"), Thinking("from gpt"), Thinking("", redacted="blob"), Text("a"))])
    assert build(chat)["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "q"}]},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "signed", "signature": "sig"},
                                          {"type": "redacted_thinking", "data": "blob"},
                                          {"type": "text", "text": "a"}]}]


def test_sampling_is_clamped_and_never_both_temperature_and_top_p() -> None:
    msgs = [user(Text("hi"))]
    both = build(Chat(messages=msgs, temperature=1.7, top_p=0.5, top_k=20, seed=7, presence_penalty=0.5,
                      frequency_penalty=0.1, stop=["END", "  ", ""], user="u-1", stream=True), max_output=333)
    assert {k: both[k] for k in ("temperature", "top_k", "max_tokens", "stop_sequences", "metadata", "stream")} == \
        {"temperature": 1.0, "top_k": 20, "max_tokens": 333, "stop_sequences": ["END"],
         "metadata": {"user_id": "u-1"}, "stream": True}
    assert not {"top_p", "seed", "presence_penalty", "frequency_penalty", "n", "stop"} & both.keys()
    assert build(Chat(messages=msgs, top_p=0.5))["top_p"] == 0.5
    assert build(Chat(messages=msgs, temperature=-0.5))["temperature"] == 0.0
    with pytest.raises(InvalidRequest) as err:
        build(Chat(messages=msgs, n=2))
    assert err.value.param == "n"


def test_reasoning_becomes_a_budget_that_fits_and_thinking_drops_what_anthropic_refuses() -> None:
    tools = [Tool("f", "", {"type": "object", "properties": {}})]
    chat = Chat(messages=[user(Text("hi"))], reasoning=Reasoning(budget=4000), temperature=0.2, top_k=5, top_p=0.99,
                tools=tools, tool_choice=ToolChoice("required"))
    body = build(chat, max_output=8000)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 4000}
    assert "temperature" not in body and "top_k" not in body and body["top_p"] == 0.99
    assert body["tool_choice"] == {"type": "auto"}

    def thinking(reasoning: Reasoning, max_output: int) -> Any:
        return build(Chat(messages=[user(Text("hi"))], reasoning=reasoning), max_output).get("thinking")

    assert thinking(Reasoning(budget=50000), 8000) == {"type": "enabled", "budget_tokens": 7999}
    assert thinking(Reasoning(budget=100), 8000) == {"type": "enabled", "budget_tokens": 1024}
    assert thinking(Reasoning(effort="high"), 4096) == {"type": "enabled", "budget_tokens": 2048}
    assert thinking(Reasoning(effort="low"), 64000) == {"type": "enabled", "budget_tokens": 2048}
    assert thinking(Reasoning(), 64000) == {"type": "enabled", "budget_tokens": 8192}
    assert thinking(Reasoning(budget=0), 8000) == {"type": "disabled"}
    assert thinking(Reasoning(budget=2000), 1000) is None  # cannot fit: off, and sampling is kept
    kept = build(Chat(messages=[user(Text("hi"))], reasoning=Reasoning(effort="minimal"), temperature=0.5), 1500)
    assert "thinking" not in kept and kept["temperature"] == 0.5


def test_thinking_stays_off_when_the_open_tool_loop_has_no_signed_thinking() -> None:
    loop = [user(Text("q")), assistant(ToolCall("c", "f", "{}")), user(ToolResult("c", [Text("r")]))]
    assert "thinking" not in build(Chat(messages=loop, reasoning=Reasoning(budget=2000)), 8000)
    signed = [loop[0], assistant(Thinking("t", signature="s"), ToolCall("c", "f", "{}")), loop[2]]
    assert build(Chat(messages=signed, reasoning=Reasoning(budget=2000)), 8000)["thinking"]["type"] == "enabled"


def test_tools_and_tool_choice_map_to_anthropic() -> None:
    tools = [Tool("get_weather", "Weather", {"properties": {"city": {"type": "string"}}}, strict=True),
             Tool("now", "", {})]
    body = build(Chat(messages=[user(Text("x"))], tools=tools, tool_choice=ToolChoice("tool", "now"),
                      parallel_tool_calls=False))
    assert body["tools"] == [
        {"name": "get_weather", "description": "Weather", "strict": True,
         "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
        {"name": "now", "input_schema": {"type": "object", "properties": {}}}]
    assert body["tool_choice"] == {"type": "tool", "name": "now", "disable_parallel_tool_use": True}
    choices = {mode: build(Chat(messages=[user(Text("x"))], tools=tools, tool_choice=ToolChoice(mode)))["tool_choice"]
               for mode in ("auto", "none", "required")}
    assert choices == {"auto": {"type": "auto"}, "none": {"type": "none"}, "required": {"type": "any"}}
    assert "tool_choice" not in build(Chat(messages=[user(Text("x"))], tools=tools))
    assert build(Chat(messages=[user(Text("x"))], tools=tools, parallel_tool_calls=False))["tool_choice"] == \
        {"type": "auto", "disable_parallel_tool_use": True}
    assert not {"tools", "tool_choice"} & build(Chat(messages=[user(Text("x"))], tool_choice=ToolChoice("auto"))).keys()
    with pytest.raises(InvalidRequest):
        build(Chat(messages=[user(Text("x"))], tools=[Tool("bad", "", {"type": "array"})]))


def test_output_formats_map_to_output_config_or_an_instruction() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    body = build(Chat(messages=[user(Text("x"))], output_format=OutputFormat("json_schema", schema, name="r")))
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema}} and "system" not in body
    body = build(Chat(system=[Text("sys")], messages=[user(Text("x"))], output_format=OutputFormat("json_object")))
    assert body["system"][-1] == {"type": "text", "text": upstream.JSON_OBJECT_INSTRUCTION}
    assert "output_config" not in body


def test_an_anthropic_request_survives_parse_then_build() -> None:
    original = weather_request()
    body = build(client.parse_request(original), max_output=2048)
    assert body["system"] == original["system"]
    assert body["messages"][1:] == original["messages"][1:]
    assert body["messages"][0]["content"] == original["messages"][0]["content"]
    for key in ("tools", "tool_choice", "stop_sequences", "temperature", "metadata", "stream", "max_tokens"):
        assert body[key] == original[key], key


ROLE_PARTS = {
    "user": st.one_of(st.builds(Text, st.sampled_from(["", " ", "hi", "ok \n"]), st.booleans()),
                      st.builds(lambda i: ToolResult(i, [Text("r")]), st.sampled_from(["a", "b.c:1", "d"]))),
    "assistant": st.one_of(st.builds(Text, st.sampled_from(["", "  ", "sure", "so  "])),
                           st.builds(lambda i: ToolCall(i, "f", '{"x":1}'), st.sampled_from(["a", "b.c:1", "d"])),
                           st.builds(lambda s: Thinking("t", signature=s), st.sampled_from([None, "sig"]))),
}
MESSAGE = st.one_of(*(st.builds(Message, st.just(role), st.lists(parts, max_size=4))
                      for role, parts in ROLE_PARTS.items()))


@settings(max_examples=120, deadline=None)
@given(messages=st.lists(MESSAGE, max_size=7))
def test_any_conversation_is_built_into_one_anthropic_accepts(messages: list[Message]) -> None:
    turns = build(Chat(messages=messages))["messages"]
    assert turns and turns[0]["role"] == "user"
    assert all(a["role"] != b["role"] for a, b in zip(turns, turns[1:]))
    for i, turn in enumerate(turns):
        assert turn["content"]
        for block in turn["content"]:
            assert block["type"] != "text" or block["text"].strip()
            for key in ("id", "tool_use_id"):
                assert key not in block or ANTHROPIC_ID.match(block[key])
        calls = [b["id"] for b in turn["content"] if b["type"] == "tool_use"]
        results = [b["tool_use_id"] for b in turn["content"] if b["type"] == "tool_result"]
        if turn["role"] == "assistant":
            assert not results
            if calls:
                following = turns[i + 1]["content"]
                assert [b.get("tool_use_id") for b in following[:len(calls)]] == calls
        else:
            before = turns[i - 1]["content"] if i else []
            assert results == [b["id"] for b in before if b["type"] == "tool_use"]
            assert all(b["type"] == "tool_result" for b in turn["content"][:len(results)])
    last = turns[-1]
    if last["role"] == "assistant" and last["content"][-1]["type"] == "text":
        assert last["content"][-1]["text"] == last["content"][-1]["text"].rstrip()


def test_passthrough_replaces_only_the_model_and_the_limit() -> None:
    body = weather_request(thinking={"type": "enabled", "budget_tokens": 1500})
    sent = orjson.loads(upstream.passthrough_body(body, "claude-sonnet-4-5-20250929", 1200))
    assert sent["model"] == "claude-sonnet-4-5-20250929" and sent["max_tokens"] == 1200
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1199}
    assert {k: v for k, v in sent.items() if k not in ("model", "max_tokens", "thinking")} == \
        {k: v for k, v in body.items() if k not in ("model", "max_tokens", "thinking")}
    assert body["model"] == "claude-public"  # the caller's dict is not changed
    roomy = orjson.loads(upstream.passthrough_body(body, "m", 4096))
    assert roomy["thinking"] == body["thinking"]
    assert roomy["messages"] == body["messages"]  # Claude's own signed thinking is kept


def test_passthrough_leaves_out_thinking_the_gateway_signed_for_another_provider() -> None:
    """A Claude Code user switched from a GPT model to Claude mid-conversation: the GPT turns carry
    thinking with our marked signatures, which Claude would refuse."""
    history: list[dict[str, Any]] = [
        {"role": "user", "content": "list files"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "use ls", "signature": common.UNSIGNED_THINKING},
            {"type": "tool_use", "id": "call_1", "name": "Bash", "input": {"cmd": "ls"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "a.txt"}]},
    ]
    body = {"model": "claude", "max_tokens": 8000, "messages": history,
            "thinking": {"type": "enabled", "budget_tokens": 2000}}
    sent = orjson.loads(upstream.passthrough_body(body, "claude-sonnet-4-5", 8000))
    assert sent["messages"][1]["content"] == [history[1]["content"][1]]
    assert "thinking" not in sent  # the open tool loop has no thinking Claude could check
    assert history[1]["content"][0]["type"] == "thinking"  # the caller's body is not changed
    body["messages"] = [*history[:2], {"role": "user", "content": "thanks"}]
    sent = orjson.loads(upstream.passthrough_body(body, "claude-sonnet-4-5", 8000))
    assert sent["thinking"] == body["thinking"] and len(sent["messages"][1]["content"]) == 1
    only_thinking = [history[0], {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "tokentoll:sig:abc"}]}, {"role": "user", "content": "?"}]
    assert orjson.loads(upstream.passthrough_body({"messages": only_thinking}, "m", 10))["messages"] == \
        [history[0], {"role": "user", "content": "?"}]


# -- upstream side: answers ------------------------------------------------------------------

CLAUDE_MESSAGE: dict[str, Any] = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
    "content": [
        {"type": "thinking", "thinking": "The user wants Paris.", "signature": "EqQBCgIYAhIM"},
        {"type": "redacted_thinking", "data": "EmwKAhgB"},
        {"type": "text", "text": "Checking.", "citations": None},
        {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}},
    ],
    "stop_reason": "tool_use", "stop_sequence": None,
    "usage": {"input_tokens": 50, "cache_creation_input_tokens": 200, "cache_read_input_tokens": 1000,
              "output_tokens": 80, "output_tokens_details": {"thinking_tokens": 30}, "service_tier": "standard"},
}


def test_a_claude_message_becomes_a_reply_with_cache_included_in_input() -> None:
    reply = upstream.parse_response(CLAUDE_MESSAGE)
    assert (reply.id, reply.model, reply.finish, reply.stop_sequence) == (
        "msg_01XFDUDYJgAACzvnptvVoYEL", "claude-sonnet-4-5", "tool_calls", None)
    assert reply.parts == [Thinking("The user wants Paris.", signature="EqQBCgIYAhIM"),
                           Thinking("", redacted="EmwKAhgB"), Text("Checking."),
                           ToolCall("toolu_01A", "get_weather", '{"city":"Paris"}')]
    assert reply.usage == Usage(in_total=1250, out_total=80, cache_read=1000, cache_write=200, reasoning=30)


def test_cache_accounting_survives_a_round_trip_through_both_sides() -> None:
    reply = upstream.parse_response(CLAUDE_MESSAGE)
    rendered = orjson.loads(client.render_response(reply, CTX))
    assert {k: rendered["usage"][k] for k in ("input_tokens", "cache_creation_input_tokens",
                                              "cache_read_input_tokens", "output_tokens")} == \
        {k: CLAUDE_MESSAGE["usage"][k] for k in ("input_tokens", "cache_creation_input_tokens",
                                                 "cache_read_input_tokens", "output_tokens")}
    assert upstream.normalize_usage(rendered["usage"]) == reply.usage


@pytest.mark.parametrize("stop_reason, finish", [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("pause_turn", "stop"), ("max_tokens", "length"),
    ("model_context_window_exceeded", "length"), ("tool_use", "tool_calls"), ("refusal", "content_filter"),
    (None, "stop"), ("something_new", "stop"),
])
def test_stop_reasons_map_to_finishes(stop_reason: Any, finish: str) -> None:
    reply = upstream.parse_response({"content": [{"type": "text", "text": "x"}], "stop_reason": stop_reason,
                                 "stop_sequence": "END" if stop_reason == "stop_sequence" else None})
    assert reply.finish == finish
    assert reply.stop_sequence == ("END" if stop_reason == "stop_sequence" else None)


@pytest.mark.parametrize("odd", [None, [], "text", {}, {"content": "hi"}, {"content": [None, 5, {"type": "text"}]},
                                 {"content": [{"type": "tool_use", "input": "x"}], "usage": "lots"},
                                 {"usage": {"input_tokens": -4, "output_tokens": "9"}}])
def test_odd_answers_never_crash(odd: Any) -> None:
    reply = upstream.parse_response(odd)
    assert reply.finish == "stop" and all(isinstance(p, (Text, ToolCall)) for p in reply.parts)


def test_normalize_usage() -> None:
    assert upstream.normalize_usage({"input_tokens": 10, "output_tokens": 3}) == Usage(in_total=10, out_total=3)
    assert upstream.normalize_usage({"input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 0}) == Usage()
    assert upstream.normalize_usage(None) is None and upstream.normalize_usage([1]) is None


# -- upstream side: StreamReader -------------------------------------------------------------


def sse(name: str, data: dict[str, Any]) -> tuple[str, bytes]:
    return name, orjson.dumps({"type": name, **data})


CLAUDE_STREAM = [
    sse("message_start", {"message": {
        "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 25, "cache_creation_input_tokens": 40, "cache_read_input_tokens": 900,
                  "output_tokens": 1}}}),
    sse("content_block_start", {"index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
    sse("ping", {}),
    sse("content_block_delta", {"index": 0, "delta": {"type": "thinking_delta", "thinking": "Two cities."}}),
    sse("content_block_delta", {"index": 0, "delta": {"type": "signature_delta", "signature": "EqQBCgIYAhIM"}}),
    sse("content_block_stop", {"index": 0}),
    sse("content_block_start", {"index": 1, "content_block": {"type": "text", "text": ""}}),
    sse("content_block_delta", {"index": 1, "delta": {"type": "text_delta", "text": "Checking "}}),
    sse("content_block_delta", {"index": 1, "delta": {"type": "text_delta", "text": "both."}}),
    sse("content_block_stop", {"index": 1}),
    sse("content_block_start", {"index": 2, "content_block": {"type": "tool_use", "id": "toolu_01",
                                                              "name": "get_weather", "input": {}}}),
    sse("content_block_delta", {"index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}}),
    sse("content_block_delta", {"index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"city\":"}}),
    sse("ping", {}),
    sse("content_block_delta", {"index": 2, "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}}),
    sse("content_block_stop", {"index": 2}),
    sse("content_block_start", {"index": 3, "content_block": {"type": "tool_use", "id": "toolu_02",
                                                              "name": "get_weather", "input": {}}}),
    sse("content_block_delta", {"index": 3, "delta": {"type": "input_json_delta",
                                                      "partial_json": "{\"city\":\"Rome\"}"}}),
    sse("content_block_stop", {"index": 3}),
    sse("message_delta", {"delta": {"stop_reason": "tool_use", "stop_sequence": None}, "usage": {"output_tokens": 42}}),
    sse("message_stop", {}),
]


def read_all(stream: list[tuple[str, bytes]]) -> tuple[list[Any], upstream.StreamReader]:
    reader = upstream.StreamReader()
    events: list[Any] = []
    for name, data in stream:
        assert not reader.done
        events.extend(reader.feed(name, data))
    return events, reader


def test_a_claude_stream_becomes_internal_events() -> None:
    events, reader = read_all(CLAUDE_STREAM)
    assert reader.done
    running = Usage(in_total=965, out_total=1, cache_read=900, cache_write=40)
    final = Usage(in_total=965, out_total=42, cache_read=900, cache_write=40)
    assert events == [
        Start("msg_01", "claude-sonnet-4-5"), UsageUpdate(running, final=False),
        ThinkingDelta("Two cities."), ThinkingDelta("", signature="EqQBCgIYAhIM"),
        TextDelta("Checking "), TextDelta("both."),
        ToolCallDelta(0, "", id="toolu_01", name="get_weather"), ToolCallDelta(0, '{"city":'),
        ToolCallDelta(0, '"Paris"}'),
        ToolCallDelta(1, "", id="toolu_02", name="get_weather"), ToolCallDelta(1, '{"city":"Rome"}'),
        End("tool_calls"), UsageUpdate(final, final=True),
    ]


def test_pings_and_unknown_events_produce_nothing_for_other_dialects() -> None:
    reader = upstream.StreamReader()
    for name, data in [("ping", b'{"type":"ping"}'), ("ping", b""), ("", b"not json"), ("content_block_stop",
                       b'{"type":"content_block_stop","index":0}'), ("whatever", b'{"type":"whatever"}'),
                       ("content_block_delta", b'{"type":"content_block_delta","index":0,"delta":{"type":'
                                               b'"citations_delta","citation":{}}}')]:
        assert reader.feed(name, data) == []
    assert not reader.done


def test_message_delta_usage_overrides_message_start_fields_it_repeats() -> None:
    reader = upstream.StreamReader()
    reader.feed(*sse("message_start", {"message": {"id": "m", "model": "c", "usage": {
        "input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 1}}}))
    events = reader.feed(*sse("message_delta", {"delta": {"stop_reason": "stop_sequence", "stop_sequence": "END"},
                                                "usage": {"output_tokens": 7, "input_tokens": 12,
                                                          "cache_creation_input_tokens": 3,
                                                          "output_tokens_details": {"thinking_tokens": 2}}}))
    assert events == [End("stop", "END"),
                      UsageUpdate(Usage(in_total=20, out_total=7, cache_read=5, cache_write=3, reasoning=2), True)]


def test_an_in_band_error_ends_the_stream() -> None:
    reader = upstream.StreamReader()
    events = reader.feed("error", b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}')
    assert events == [StreamError("Overloaded", "overloaded")] and reader.done
    assert reader.feed(*sse("message_stop", {})) == []
    other = upstream.StreamReader()
    assert other.feed("error", b'{"type":"error","error":{"type":"rate_limit_error","message":"slow"}}') == \
        [StreamError("slow", "rate_limited")]
    assert upstream.StreamReader().feed("error", b'{"type":"error"}') == \
        [StreamError("upstream stream error", "server_error")]


def test_redacted_thinking_arrives_whole() -> None:
    reader = upstream.StreamReader()
    assert reader.feed(*sse("content_block_start", {"index": 0, "content_block": {
        "type": "redacted_thinking", "data": "EmwKAhgB"}})) == [ThinkingDelta("", redacted="EmwKAhgB")]


@settings(max_examples=100, deadline=None)
@given(value=st.dictionaries(st.text(max_size=6), st.integers(-2**63, 2**63 - 1), max_size=5),
       cuts=st.lists(st.integers(min_value=0, max_value=120), max_size=8))
def test_any_split_of_input_json_deltas_gives_back_the_same_arguments(value: dict[str, int], cuts: list[int]) -> None:
    text = orjson.dumps(value).decode()
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    stream = [CLAUDE_STREAM[0], sse("content_block_start", {"index": 0, "content_block": {
        "type": "tool_use", "id": "toolu_9", "name": "f", "input": {}}})]
    stream += [sse("content_block_delta", {"index": 0, "delta": {"type": "input_json_delta",
                                                                 "partial_json": text[a:b]}})
               for a, b in zip(bounds, bounds[1:])]
    events, _ = read_all(stream)
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    assert all(c.index == 0 for c in calls) and calls[0].id == "toolu_9"
    assert orjson.loads("".join(c.arguments for c in calls)) == value


# -- reader -> writer round trip -------------------------------------------------------------


def test_a_claude_stream_read_and_rewritten_is_one_the_sdk_accepts() -> None:
    events, _ = read_all(CLAUDE_STREAM)
    charged = next(e.usage for e in reversed(events) if isinstance(e, UsageUpdate) and e.final)
    raw = write_all(events, charged)
    assert b"ping" not in raw
    names = [name for name, _ in sse_events(raw)]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    starts = [data["index"] for name, data in sse_events(raw) if name == "content_block_start"]
    assert starts == [0, 1, 2, 3]
    message = accumulate(raw)
    assert message["content"] == [
        {"type": "thinking", "thinking": "Two cities.", "signature": "tokentoll:sig:EqQBCgIYAhIM"},
        {"type": "text", "text": "Checking both."},
        {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {}, "partial_json": '{"city":"Paris"}'},
        {"type": "tool_use", "id": "toolu_02", "name": "get_weather", "input": {}, "partial_json": '{"city":"Rome"}'},
    ]
    assert message["stop_reason"] == "tool_use"
    assert message["usage"] == {"input_tokens": 25, "cache_creation_input_tokens": 40,
                                "cache_read_input_tokens": 900, "output_tokens": 42}


# -- odd input never crashes -------------------------------------------------------------------

KEYS = st.sampled_from(["type", "role", "content", "text", "messages", "max_tokens", "source", "id", "name", "input",
                        "tool_use_id", "index", "delta", "usage", "message", "stop_reason", "content_block",
                        "thinking", "signature", "tools", "tool_choice", "system", "partial_json", "error"])
WORDS = st.sampled_from(["text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking",
                         "user", "assistant", "base64", "url", "content", "enabled", "auto", "tool",
                         "message_start", "content_block_start", "content_block_delta", "input_json_delta",
                         "text_delta", "message_delta", "message_stop", "error", "end_turn"])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text(max_size=4) | WORDS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=5), max_leaves=14)


@settings(max_examples=80, deadline=None)
@given(body=JSON)
def test_any_json_body_is_parsed_or_refused_as_invalid(body: Any) -> None:
    for parse in (client.parse_request, client.prompt_of):
        try:
            parse(body)
        except InvalidRequest:
            pass


@settings(max_examples=60, deadline=None)
@given(objs=st.lists(st.tuples(WORDS, JSON), max_size=4))
def test_any_json_answer_or_stream_event_is_read_without_crashing(objs: list[tuple[str, Any]]) -> None:
    reader = upstream.StreamReader()
    for name, obj in objs:
        upstream.parse_response(obj)
        upstream.normalize_usage(obj)
        reader.feed(name, orjson.dumps(obj))
