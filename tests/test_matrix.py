"""Every client format against every upstream format, through the official SDKs: {OpenAI chat, OpenAI
Responses, Anthropic Messages, Gemini} x {openai, anthropic, gemini} upstreams x {non-stream, stream} x {text, tool round trip}."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import types as gt

from tests.conftest import FORMATS, GatewayProcess, newest_entry
from tests.native_upstream import NativeUpstream

CLIENTS = ("chat", "responses", "anthropic", "gemini")
PRICE_IN, PRICE_OUT = 1000, 2000  # nano-dollars per token ($1 and $2 per 1M)
CHARGE = 20 * PRICE_IN + 9 * PRICE_OUT  # the scripted upstream always reports 20 in, 9 out
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@dataclass
class Answer:
    text: str = ""
    tool: tuple[str, dict[str, Any], str] | None = None  # name, arguments, call id
    finish: str = ""
    usage: tuple[int, int] = (0, 0)  # input, output as the client was told
    raw: Any = None


# -- one driver per client format ------------------------------------------------------------


class ChatClient:
    def __init__(self, gw: GatewayProcess, key: str) -> None:
        self.sdk = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=20)

    def ask(self, model: str, stream: bool, tools: bool, history: list[Any] | None = None) -> Answer:
        messages = history or [{"role": "user", "content": "What is the weather in Paris?"}]
        extra: dict[str, Any] = {"tools": [{"type": "function", "function": {
            "name": "get_weather", "description": "Weather of a city", "parameters": WEATHER_SCHEMA}}]} if tools else {}
        if not stream:
            r = self.sdk.chat.completions.create(model=model, messages=messages, **extra)
            c = r.choices[0]
            call = c.message.tool_calls[0] if c.message.tool_calls else None
            tool = (call.function.name, json.loads(call.function.arguments), call.id) if call else None
            return Answer(c.message.content or "", tool, c.finish_reason,
                          (r.usage.prompt_tokens, r.usage.completion_tokens), messages)
        answer, calls = Answer(raw=messages), {}
        for chunk in self.sdk.chat.completions.create(model=model, messages=messages, stream=True,
                                                      stream_options={"include_usage": True}, **extra):
            if chunk.usage:
                answer.usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
            for c in chunk.choices:
                answer.text += c.delta.content or ""
                for t in c.delta.tool_calls or ():
                    slot = calls.setdefault(t.index, ["", "", ""])
                    slot[0] += t.id or ""
                    slot[1] += (t.function.name or "") if t.function else ""
                    slot[2] += (t.function.arguments or "") if t.function else ""
                answer.finish = c.finish_reason or answer.finish
        assert list(calls) in ([], [0]), calls  # one call, at index 0
        if calls:
            cid, name, args = calls[0]
            answer.tool = (name, json.loads(args), cid)
        return answer

    def round_trip(self, model: str, stream: bool, first: Answer) -> Answer:
        assert first.tool is not None
        name, args, cid = first.tool
        history = [*first.raw, {"role": "assistant", "content": None, "tool_calls": [
            {"id": cid, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}]},
                   {"role": "tool", "tool_call_id": cid, "content": "sunny"}]
        return self.ask(model, stream, True, history)


class ResponsesClient:
    def __init__(self, gw: GatewayProcess, key: str) -> None:
        self.sdk = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=20)

    def ask(self, model: str, stream: bool, tools: bool, history: list[Any] | None = None) -> Answer:
        items = history or [{"role": "user", "content": "What is the weather in Paris?"}]
        extra: dict[str, Any] = {"tools": [{"type": "function", "name": "get_weather", "description": "Weather",
                                            "parameters": WEATHER_SCHEMA}]} if tools else {}
        if stream:
            with self.sdk.responses.stream(model=model, input=items, **extra) as s:
                r = s.get_final_response()
        else:
            r = self.sdk.responses.create(model=model, input=items, **extra)
        calls = [o for o in r.output if o.type == "function_call"]
        tool = (calls[0].name, json.loads(calls[0].arguments), calls[0].call_id) if calls else None
        finish = "tool_calls" if calls else "stop" if r.status == "completed" else r.status
        return Answer(r.output_text, tool, finish, (r.usage.input_tokens, r.usage.output_tokens),
                      [*items, *[o.model_dump(exclude_none=True) for o in calls]])

    def round_trip(self, model: str, stream: bool, first: Answer) -> Answer:
        assert first.tool is not None
        return self.ask(model, stream, True, [*first.raw, {"type": "function_call_output", "call_id": first.tool[2],
                                                            "output": "sunny"}])


class AnthropicClient:
    def __init__(self, gw: GatewayProcess, key: str) -> None:
        self.sdk = anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0, timeout=20)

    def ask(self, model: str, stream: bool, tools: bool, history: list[Any] | None = None) -> Answer:
        messages = history or [{"role": "user", "content": "What is the weather in Paris?"}]
        extra: dict[str, Any] = {"tools": [{"name": "get_weather", "description": "Weather of a city",
                                            "input_schema": WEATHER_SCHEMA}]} if tools else {}
        if stream:
            with self.sdk.messages.stream(model=model, max_tokens=200, messages=messages, **extra) as s:
                m = s.get_final_message()
        else:
            m = self.sdk.messages.create(model=model, max_tokens=200, messages=messages, **extra)
        text = "".join(b.text for b in m.content if b.type == "text")
        uses = [b for b in m.content if b.type == "tool_use"]
        tool = (uses[0].name, dict(uses[0].input), uses[0].id) if uses else None
        finish = {"end_turn": "stop", "tool_use": "tool_calls"}.get(m.stop_reason or "", m.stop_reason or "")
        total_in = m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0) + \
            (m.usage.cache_creation_input_tokens or 0)
        return Answer(text, tool, finish, (total_in, m.usage.output_tokens),
                      [*messages, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]}])

    def round_trip(self, model: str, stream: bool, first: Answer) -> Answer:
        assert first.tool is not None
        return self.ask(model, stream, True, [*first.raw, {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": first.tool[2], "content": "sunny"}]}])


class GeminiClient:
    def __init__(self, gw: GatewayProcess, key: str) -> None:
        self.sdk = genai.Client(api_key=key, http_options=gt.HttpOptions(base_url=gw.url, timeout=20_000))

    def ask(self, model: str, stream: bool, tools: bool, history: list[Any] | None = None) -> Answer:
        contents = history or [gt.Content(role="user", parts=[gt.Part(text="What is the weather in Paris?")])]
        config = gt.GenerateContentConfig(
            tools=[gt.Tool(function_declarations=[gt.FunctionDeclaration(
                name="get_weather", description="Weather of a city", parameters_json_schema=WEATHER_SCHEMA)])],
            automatic_function_calling=gt.AutomaticFunctionCallingConfig(disable=True)) if tools else None
        answer, parts = Answer(), []
        responses = (self.sdk.models.generate_content_stream(model=model, contents=contents, config=config)
                     if stream else [self.sdk.models.generate_content(model=model, contents=contents, config=config)])
        for r in responses:
            for cand in r.candidates or ():
                for p in (cand.content.parts if cand.content else None) or ():
                    parts.append(p)
                    answer.text += p.text or ""
                    if p.function_call:
                        answer.tool = (p.function_call.name, dict(p.function_call.args or {}), "")
                answer.finish = (str(cand.finish_reason.value) if cand.finish_reason else "") or answer.finish
            if r.usage_metadata and r.usage_metadata.prompt_token_count is not None:
                u = r.usage_metadata
                answer.usage = (u.prompt_token_count, (u.candidates_token_count or 0) + (u.thoughts_token_count or 0))
        answer.finish = "tool_calls" if answer.tool else {"STOP": "stop"}.get(answer.finish, answer.finish)
        answer.raw = [*contents, gt.Content(role="model", parts=[p for p in parts if p.function_call or p.text])]
        return answer

    def round_trip(self, model: str, stream: bool, first: Answer) -> Answer:
        assert first.tool is not None
        reply = gt.Content(role="user", parts=[gt.Part.from_function_response(name=first.tool[0],
                                                                               response={"result": "sunny"})])
        return self.ask(model, stream, True, [*first.raw, reply])


DRIVERS = {"chat": ChatClient, "responses": ResponsesClient, "anthropic": AnthropicClient, "gemini": GeminiClient}


@pytest.mark.parametrize("kind", ["text", "tool"])
@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
@pytest.mark.parametrize("upstream", FORMATS)
@pytest.mark.parametrize("client_format", CLIENTS)
def test_matrix(native_gw: GatewayProcess, native_key: str, native: NativeUpstream, client_format: str, upstream: str,
                stream: bool, kind: str) -> None:
    gw = native_gw
    driver = DRIVERS[client_format](gw, native_key)
    model = f"scripted-{upstream}"
    seen = len(gw.log_entries())
    first = driver.ask(model, stream, kind == "tool")
    charge = newest_entry(gw, model, seen)
    assert (charge["status"], charge["input_tokens"], charge["output_tokens"], charge["usage_source"],
            charge["cost_nanousd"]) == (200, 20, 9, "upstream", CHARGE)
    assert first.usage == (20, 9)
    if kind == "text":
        assert first.text == f"Hello from {upstream}" and first.tool is None and first.finish == "stop"
        return
    assert first.tool is not None and first.tool[:2] == ("get_weather", {"city": "Paris"})
    assert first.finish == "tool_calls" and first.text == ""
    seen = len(gw.log_entries())
    second = driver.round_trip(model, stream, first)
    assert second.text == "The tool said: sunny" and second.tool is None and second.finish == "stop"
    assert newest_entry(gw, model, seen)["cost_nanousd"] == CHARGE
