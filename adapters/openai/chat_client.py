"""OpenAI Chat Completions and Embeddings, client side: a chat caller served by another provider (the
request parsed into the internal shape; answers, streams and embeddings rendered back as OpenAI objects)."""

from __future__ import annotations

import base64
import sys
from array import array
from typing import Any

import orjson

from adapters.internal import (
    Chat, Embed, EmbedReply, End, Event, InvalidRequest, Media, Message, OutputFormat, Part, Reasoning, Reply, Start,
    StreamContext, StreamError, Text, TextDelta, Thinking, ThinkingDelta, Tool, ToolCall, ToolCallDelta, ToolChoice,
    ToolResult, Usage, UsageUpdate, media_from_url, pack_call_id,
)
from adapters.openai import passthrough
from adapters.openai.common import EFFORTS, EMPTY_PARAMETERS, finish_out, number, opt_bool
from adapters.openai.passthrough import error_body

__all__ = [
    "parse_request", "render_response", "StreamWriter", "error_body", "stream_error_event",
    "parse_embed_request", "render_embed", "usage_object", "completion_id",
]

# Request fields an answer from another provider cannot honour: refused rather than silently dropped.
_UNTRANSLATABLE = {
    "functions": "the legacy 'functions' field cannot be translated for this model; use 'tools'",
    "function_call": "the legacy 'function_call' field cannot be translated for this model; use 'tool_choice'",
    "logit_bias": "'logit_bias' is not supported by this model's provider",
    "top_logprobs": "log probabilities are not available from this model's provider",
    "audio": "audio output is not available from this model's provider",
    "web_search_options": "web search is not available for this model",
}


# -- requests ---------------------------------------------------------------------------------


def parse_request(body: dict[str, Any]) -> Chat:
    """A Chat Completions request in the internal shape; raises InvalidRequest for what cannot be
    translated (audio, uploaded file ids, custom tools, logprobs, the legacy function fields)."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    for name, message in _UNTRANSLATABLE.items():
        if body.get(name):
            raise InvalidRequest(message, name)
    if body.get("logprobs") is True:
        raise InvalidRequest("log probabilities are not available from this model's provider", "logprobs")
    modalities = body.get("modalities")
    if modalities is not None and (not isinstance(modalities, list) or any(m != "text" for m in modalities)):
        raise InvalidRequest("only the 'text' output modality is available for this model", "modalities")
    system, messages = _parse_messages(body.get("messages"))
    tools = _parse_tools(body.get("tools"))
    choice, tools = _parse_tool_choice(body.get("tool_choice"), tools)
    stream = opt_bool(body, "stream") is True
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object", "stream_options")
    for name in ("safety_identifier", "user"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise InvalidRequest(f"'{name}' must be a string", name)
    return Chat(
        messages=messages,
        system=system,
        stream=stream,
        include_usage=stream and bool(options) and options.get("include_usage") is True,
        max_output=_max_output(body),
        temperature=number(body, "temperature", 0, 2),
        top_p=number(body, "top_p", 0, 1),
        top_k=_integer(body, "top_k", 0, 1 << 31),  # not OpenAI's, but sent by some clients of compatible servers
        stop=_parse_stop(body.get("stop")),
        tools=tools,
        tool_choice=choice,
        parallel_tool_calls=opt_bool(body, "parallel_tool_calls"),
        output_format=_parse_response_format(body.get("response_format")),
        reasoning=_parse_effort(body.get("reasoning_effort")),
        n=passthrough.answers_per_request("chat", body),
        seed=_integer(body, "seed", -(1 << 63), (1 << 63) - 1),
        presence_penalty=number(body, "presence_penalty", -2, 2),
        frequency_penalty=number(body, "frequency_penalty", -2, 2),
        user=body.get("safety_identifier") or body.get("user") or None,
    )


def _parse_messages(raw: Any) -> tuple[list[Text], list[Message]]:
    """Leading system/developer messages become the system prompt; later ones a user turn with the
    same text. Consecutive `tool` messages become the ToolResult parts of one user turn."""
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("'messages' must be a non-empty array", "messages")
    system: list[Text] = []
    out: list[Message] = []
    names: dict[str, str] = {}  # tool-call id -> tool name, for the results (Gemini needs the name)
    previous = ""
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise InvalidRequest("each entry of 'messages' must be an object", where)
        role = m.get("role")
        if role in ("system", "developer"):
            texts = _system_texts(m.get("content"), f"{where}.content")
            if not out:
                system.extend(texts)
            elif texts:
                out.append(Message("user", list(texts)))
        elif role == "user":
            parts = _user_parts(m.get("content"), f"{where}.content")
            if parts:
                out.append(Message("user", parts))
        elif role == "assistant":
            parts = _assistant_parts(m, where, names)
            if parts:
                out.append(Message("assistant", parts))
        elif role == "tool":
            result = _tool_result(m, where, names)
            if previous == "tool" and out:
                out[-1].parts.append(result)
            else:
                out.append(Message("user", [result]))
        elif role == "function":
            raise InvalidRequest("the legacy 'function' role cannot be translated for this model; use 'tool'",
                                 f"{where}.role")
        else:
            raise InvalidRequest("'role' must be system, developer, user, assistant or tool", f"{where}.role")
        previous = role
    if not out:
        raise InvalidRequest("'messages' must contain at least one user or assistant message", "messages")
    return system, out


def _system_texts(content: Any, where: str) -> list[Text]:
    if isinstance(content, str):
        return [Text(content)] if content else []
    if not isinstance(content, list):
        raise InvalidRequest("'content' must be a string or an array of text parts", where)
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise InvalidRequest("system and developer content parts must be text", f"{where}[{j}]")
        if part["text"]:
            texts.append(Text(part["text"]))
    return texts


def _user_parts(content: Any, where: str) -> list[Part]:
    if isinstance(content, str):
        return [Text(content)] if content else []
    if not isinstance(content, list):
        raise InvalidRequest("'content' must be a string or an array of content parts", where)
    parts: list[Part] = []
    for j, raw in enumerate(content):
        part = _content_part(raw, f"{where}[{j}]")
        if part is not None:
            parts.append(part)
    return parts


def _content_part(part: Any, where: str) -> Text | Media | None:
    if not isinstance(part, dict):
        raise InvalidRequest("each content part must be an object", where)
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidRequest("a text part needs a string 'text'", f"{where}.text")
        return Text(text) if text else None
    if kind == "image_url":
        return _image_part(part.get("image_url"), f"{where}.image_url")
    if kind == "file":
        return _file_part(part.get("file"), f"{where}.file")
    if kind == "input_audio":
        raise InvalidRequest("audio input cannot be sent to this model's provider", where)
    raise InvalidRequest("unsupported content part type (expected text, image_url or file)", f"{where}.type")


def _image_part(image: Any, where: str) -> Media:
    url, detail = (image, None) if isinstance(image, str) else (None, None)
    if isinstance(image, dict):
        url, detail = image.get("url"), image.get("detail")
    if not isinstance(url, str) or not url:
        raise InvalidRequest("'image_url.url' must be a base64 data URL or an https URL", where)
    if detail is not None and detail not in ("auto", "low", "high"):
        raise InvalidRequest("'detail' must be auto, low or high", f"{where}.detail")
    media = media_from_url(url, detail)
    if media.data is None and url.startswith("data:"):
        raise InvalidRequest("image data URLs must be base64-encoded", f"{where}.url")
    return media


def _file_part(file: Any, where: str) -> Media:
    if not isinstance(file, dict):
        raise InvalidRequest("a file part needs a 'file' object", where)
    data, name = file.get("file_data"), file.get("filename")
    name = name if isinstance(name, str) and name else None
    if not data and file.get("file_id"):
        raise InvalidRequest("uploaded files ('file_id') cannot be sent to this model's provider; "
                             "send the file inline as 'file_data'", f"{where}.file_id")
    if not isinstance(data, str) or not data:
        raise InvalidRequest("'file_data' must be a base64 data URL", f"{where}.file_data")
    if data.startswith("data:"):
        media = media_from_url(data, name=name)
        if media.data is None:
            raise InvalidRequest("'file_data' must be a base64 data URL", f"{where}.file_data")
        return media
    if name and name.lower().endswith(".pdf"):  # bare base64, the type told by the file name
        return Media(mime="application/pdf", data=data, name=name)
    raise InvalidRequest("'file_data' must be a base64 data URL (data:<type>;base64,...)", f"{where}.file_data")


def _assistant_parts(m: dict[str, Any], where: str, names: dict[str, str]) -> list[Part]:
    """Thinking (the de-facto reasoning_content), then text (refusals as text), then tool calls."""
    if m.get("function_call"):
        raise InvalidRequest("the legacy 'function_call' cannot be translated for this model; use 'tool_calls'",
                             f"{where}.function_call")
    parts: list[Part] = []
    for key in ("reasoning_content", "reasoning"):
        value = m.get(key)
        if isinstance(value, str) and value:
            parts.append(Thinking(value))
            break
    content = m.get("content")
    if isinstance(content, str):
        if content:
            parts.append(Text(content))
    elif isinstance(content, list):
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            text = part.get("refusal" if kind == "refusal" else "text") if kind in ("text", "refusal") else None
            if not isinstance(text, str):
                raise InvalidRequest("assistant content parts must be text or refusal", f"{where}.content[{j}]")
            if text:
                parts.append(Text(text))
    elif content is not None:
        raise InvalidRequest("'content' must be a string, an array of parts or null", f"{where}.content")
    refusal = m.get("refusal")
    if isinstance(refusal, str) and refusal and not any(isinstance(p, Text) for p in parts):
        parts.append(Text(refusal))
    calls = m.get("tool_calls")
    if calls is not None and not isinstance(calls, list):
        raise InvalidRequest("'tool_calls' must be an array", f"{where}.tool_calls")
    for k, call in enumerate(calls or ()):
        parts.append(_tool_call(call, f"{where}.tool_calls[{k}]", names))
    return parts


def _tool_call(call: Any, where: str, names: dict[str, str]) -> ToolCall:
    if not isinstance(call, dict):
        raise InvalidRequest("each tool call must be an object", where)
    if call.get("type", "function") != "function":
        raise InvalidRequest("only function tool calls can be translated for this model", f"{where}.type")
    fn, call_id = call.get("function"), call.get("id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest("a tool call needs a string 'id'", f"{where}.id")
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str) or not name:
        raise InvalidRequest("a tool call needs 'function.name'", f"{where}.function.name")
    arguments = fn["arguments"] if isinstance(fn, dict) and "arguments" in fn else None
    if isinstance(arguments, dict):  # some clients send an object; OpenAI carries JSON text
        arguments = orjson.dumps(arguments).decode()
    elif arguments is not None and not isinstance(arguments, str):
        raise InvalidRequest("'function.arguments' must be a JSON string", f"{where}.function.arguments")
    names[call_id] = name
    return ToolCall(call_id, name, arguments or "{}")


def _tool_result(m: dict[str, Any], where: str, names: dict[str, str]) -> ToolResult:
    call_id = m.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest("a tool message needs 'tool_call_id'", f"{where}.tool_call_id")
    content = m.get("content")
    parts = [] if content is None else _user_parts(content, f"{where}.content")
    return ToolResult(call_id, [p for p in parts if isinstance(p, (Text, Media))], name=names.get(call_id))


def _parse_tools(raw: Any) -> list[Tool]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidRequest("'tools' must be an array", "tools")
    tools = []
    for k, tool in enumerate(raw):
        where = f"tools[{k}]"
        if not isinstance(tool, dict):
            raise InvalidRequest("each tool must be an object", where)
        if tool.get("type") != "function":
            raise InvalidRequest("only 'function' tools can be translated for this model (not custom or "
                                 "built-in tools)", f"{where}.type")
        fn = tool.get("function") if isinstance(tool.get("function"), dict) else {}
        name, description = fn.get("name"), fn.get("description")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("a function tool needs 'function.name'", f"{where}.function.name")
        parameters, strict = fn.get("parameters"), fn.get("strict")
        if description is not None and not isinstance(description, str):
            raise InvalidRequest("'description' must be a string", f"{where}.function.description")
        if parameters is not None and not isinstance(parameters, dict):
            raise InvalidRequest("'parameters' must be a JSON Schema object", f"{where}.function.parameters")
        if strict is not None and not isinstance(strict, bool):
            raise InvalidRequest("'strict' must be a boolean", f"{where}.function.strict")
        tools.append(Tool(name, description or "", parameters or dict(EMPTY_PARAMETERS), strict))
    return tools


def _parse_tool_choice(raw: Any, tools: list[Tool]) -> tuple[ToolChoice | None, list[Tool]]:
    """The choice, and the tools offered (narrowed by an `allowed_tools` choice)."""
    if raw is None:
        return None, tools
    if raw in ("auto", "none", "required"):
        return ToolChoice(raw), tools
    known = {t.name for t in tools}
    if isinstance(raw, dict) and raw.get("type") == "function":
        fn = raw.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or name not in known:
            raise InvalidRequest("'tool_choice' must name a function listed in 'tools'", "tool_choice")
        return ToolChoice("tool", name), tools
    if isinstance(raw, dict) and raw.get("type") == "allowed_tools":
        spec = raw.get("allowed_tools")
        mode = spec.get("mode") if isinstance(spec, dict) else None
        listed = spec.get("tools") if isinstance(spec, dict) else None
        allowed = {e["function"].get("name") for e in listed if isinstance(e, dict) and e.get("type") == "function"
                   and isinstance(e.get("function"), dict)} if isinstance(listed, list) else set()
        if mode not in ("auto", "required") or not allowed or not allowed <= known:
            raise InvalidRequest("'allowed_tools' needs a mode (auto or required) and functions listed in 'tools'",
                                 "tool_choice")
        return ToolChoice(mode), [t for t in tools if t.name in allowed]
    raise InvalidRequest("'tool_choice' must be auto, none, required or a function (custom tool choices cannot "
                         "be translated)", "tool_choice")


def _parse_response_format(raw: Any) -> OutputFormat | None:
    if raw is None:
        return None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return OutputFormat("json_object")
    if kind == "json_schema":
        spec = raw.get("json_schema") if isinstance(raw.get("json_schema"), dict) else {}
        name, schema, strict = spec.get("name"), spec.get("schema"), spec.get("strict")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("'json_schema.name' is required", "response_format")
        if (schema is not None and not isinstance(schema, dict)) or (strict is not None and not isinstance(strict, bool)):
            raise InvalidRequest("'json_schema.schema' must be an object and 'strict' a boolean", "response_format")
        return OutputFormat("json_schema", schema=schema, name=name, strict=strict)
    raise InvalidRequest("'response_format.type' must be text, json_object or json_schema", "response_format")


def _parse_effort(raw: Any) -> Reasoning | None:
    if raw is None:
        return None
    if raw == "none":
        return Reasoning(budget=0)
    if isinstance(raw, str) and raw in EFFORTS:
        return Reasoning(effort=EFFORTS[raw])
    raise InvalidRequest("'reasoning_effort' must be none, minimal, low, medium, high, xhigh or max", "reasoning_effort")


def _parse_stop(raw: Any) -> list[str]:
    if raw is None:
        return []
    values = [raw] if isinstance(raw, str) else raw
    if not isinstance(values, list) or not all(isinstance(s, str) for s in values):
        raise InvalidRequest("'stop' must be a string or an array of strings", "stop")
    return [s for s in values if s]


def _max_output(body: dict[str, Any]) -> int | None:
    return passthrough.requested_limit(body)


def _integer(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be an integer" + (" of at least 1" if low == 1 else ""), name)
    return value


# -- rendering --------------------------------------------------------------------------------


def completion_id(ctx: StreamContext) -> str:
    return f"chatcmpl-{ctx.request_id}"


def usage_object(usage: Usage) -> dict[str, Any]:
    """Chat usage: prompt_tokens includes cached tokens, completion_tokens includes reasoning."""
    return {
        "prompt_tokens": usage.in_total,
        "completion_tokens": usage.out_total,
        "total_tokens": usage.in_total + usage.out_total,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read, "cache_write_tokens": usage.cache_write},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning},
    }


def render_response(reply: Reply, ctx: StreamContext) -> bytes:
    """A complete `chat.completion` with one choice; thinking goes to `reasoning_content`."""
    text = "".join(p.text for p in reply.parts if isinstance(p, Text))
    thinking = "".join(p.text for p in reply.parts if isinstance(p, Thinking))
    calls = [{"id": pack_call_id(p.id, p.signature), "type": "function",
              "function": {"name": p.name, "arguments": p.arguments}}
             for p in reply.parts if isinstance(p, ToolCall)]
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if thinking:
        message["reasoning_content"] = thinking
    if calls:
        message["tool_calls"] = calls
    message["refusal"] = None
    message["annotations"] = []
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_out(reply.finish, bool(calls))}
    return orjson.dumps({"id": completion_id(ctx), "object": "chat.completion", "created": ctx.created,
                         "model": ctx.model, "choices": [choice], "usage": usage_object(reply.usage or Usage())})


class StreamWriter:
    """Internal events as `chat.completion.chunk` frames: the role once in the first chunk, a tool
    call's id/type/name only in its first delta, the finish chunk at End, the usage-only chunk only
    when the client asked, then [DONE]. Every chunk has `choices`."""

    __slots__ = ("_ctx", "_head", "_tail", "_started", "_ended", "_closed", "_calls")

    def __init__(self, ctx: StreamContext) -> None:
        self._ctx = ctx
        head = orjson.dumps({"id": completion_id(ctx), "object": "chat.completion.chunk", "created": ctx.created,
                             "model": ctx.model})
        self._head = b"data: " + head[:-1] + b',"choices":[{"index":0,"delta":'
        self._tail = b"}]" + (b',"usage":null' if ctx.include_usage else b"") + b"}\n\n"
        self._started = False
        self._ended = False
        self._closed = False
        self._calls: dict[int, int] = {}  # the event's tool-call index -> the index sent (0, 1, 2...)

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        reason = b"null" if finish is None else orjson.dumps(finish)
        return self._head + orjson.dumps(delta) + b',"logprobs":null,"finish_reason":' + reason + self._tail

    def _open(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return self._chunk({"role": "assistant", "content": ""})

    def write(self, event: Event) -> bytes:
        if self._closed or isinstance(event, UsageUpdate):
            return b""
        if isinstance(event, StreamError):
            return self.error(event.message, event.kind)
        if self._ended:  # nothing after the finish chunk but close()
            return b""
        if isinstance(event, Start):
            return self._open()
        if isinstance(event, TextDelta):
            return self._open() + (self._chunk({"content": event.text}) if event.text else b"")
        if isinstance(event, ThinkingDelta):
            return self._open() + (self._chunk({"reasoning_content": event.text}) if event.text else b"")
        if isinstance(event, ToolCallDelta):
            delta = self._call_delta(event)
            return self._open() + (self._chunk({"tool_calls": [delta]}) if delta else b"")
        if isinstance(event, End):
            self._ended = True
            return self._open() + self._chunk({}, finish_out(event.finish, bool(self._calls)))
        return b""

    def _call_delta(self, event: ToolCallDelta) -> dict[str, Any] | None:
        index = self._calls.get(event.index)
        if index is not None:
            return {"index": index, "function": {"arguments": event.arguments}} if event.arguments else None
        index = self._calls[event.index] = len(self._calls)
        call_id = pack_call_id(event.id or f"call_{self._ctx.request_id}_{index}", event.signature)
        return {"index": index, "id": call_id, "type": "function",
                "function": {"name": event.name or "", "arguments": event.arguments}}

    def close(self, usage: Usage) -> bytes:
        if self._closed:
            return b""
        self._closed = True
        out = self._open()
        if not self._ended:
            self._ended = True
            out += self._chunk({}, finish_out("stop", bool(self._calls)))
        if self._ctx.include_usage:
            out += b"data: " + orjson.dumps({"id": completion_id(self._ctx), "object": "chat.completion.chunk",
                                             "created": self._ctx.created, "model": self._ctx.model,
                                             "choices": [], "usage": usage_object(usage)}) + b"\n\n"
        return out + b"data: [DONE]\n\n"

    def error(self, message: str, code: str) -> bytes:
        if self._closed:
            return b""
        self._closed = True
        return stream_error_event(message, code, self._ctx.request_id)


def stream_error_event(message: str, code: str, request_id: str) -> bytes:
    """The in-band error that makes the openai SDK raise (for a passthrough chat stream)."""
    return passthrough.stream_error_event("chat", message, code, request_id, 0)


# -- embeddings -------------------------------------------------------------------------------


def parse_embed_request(body: dict[str, Any]) -> Embed:
    """An embeddings request for another provider: text only (token-id arrays cannot be translated)."""
    raw = body.get("input") if isinstance(body, dict) else None
    inputs = [raw] if isinstance(raw, str) else raw
    if not isinstance(inputs, list) or not inputs:
        raise InvalidRequest("'input' must be a string or a non-empty array of strings", "input")
    if not all(isinstance(x, str) for x in inputs):
        if all(isinstance(x, (int, list)) and not isinstance(x, bool) for x in inputs):
            raise InvalidRequest("token-id arrays cannot be sent to this model's provider; send text", "input")
        raise InvalidRequest("'input' must be a string or a non-empty array of strings", "input")
    if body.get("encoding_format") not in (None, "float", "base64"):
        raise InvalidRequest("'encoding_format' must be float or base64", "encoding_format")
    return Embed(list(inputs), dimensions=_integer(body, "dimensions", 1, 1 << 16))


def render_embed(reply: EmbedReply, ctx: StreamContext, encoding_format: str) -> bytes:
    """The embeddings list; with "base64" each vector is little-endian float32 bytes, as the SDK decodes."""
    encode = _float32_base64 if encoding_format == "base64" else None
    data = [{"object": "embedding", "index": i, "embedding": encode(v) if encode else v}
            for i, v in enumerate(reply.vectors)]
    tokens = (reply.usage or Usage()).in_total
    return orjson.dumps({"object": "list", "data": data, "model": ctx.model,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _float32_base64(vector: list[float]) -> str:
    values = array("f", vector)
    if sys.byteorder == "big":
        values.byteswap()
    return base64.b64encode(values.tobytes()).decode()
