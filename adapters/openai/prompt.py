"""The prompt of an OpenAI Chat Completions or Responses request in the internal shape, for the one prompt estimate
every lane uses: read as the translation reads it, and what it cannot translate read leniently instead of refused."""

from __future__ import annotations

from typing import Any

import orjson

from adapters.internal import (Chat, InvalidRequest, Media, Message, OutputFormat, Part, Role, Text, Thinking, Tool,
                               ToolCall, ToolResult, media_from_url)
from adapters.internal import estimate_prompt as internal_estimate
from adapters.openai import chat_client, responses_request
from adapters.openai.common import str_or_empty
from adapters.openai.passthrough import text_prompt_tokens
from adapters.openai.responses_request import file_type

# Responses fields that continue a conversation stored at OpenAI: what they add to the prompt is not in the request
STORED_STATE = ("previous_response_id", "conversation", "prompt")


def estimate_prompt(endpoint: str, body: dict[str, Any]) -> int:
    """The prompt's tokens, estimated before sending: Chat Completions and Responses by the internal shape's one
    rule (docs/billing.md "Token counting"), Completions and Embeddings by the tokens of their text."""
    if endpoint in ("chat", "responses"):
        return internal_estimate(prompt_of(endpoint, body))
    return text_prompt_tokens(endpoint, body)


def prompt_of(endpoint: str, body: dict[str, Any]) -> Chat:
    """A Chat Completions or Responses request's prompt (raises InvalidRequest for a body of the wrong shape)."""
    strict = chat_client.parse_request if endpoint == "chat" else responses_request.parse_request
    try:
        return strict(body)
    except InvalidRequest:  # something only OpenAI-compatible servers take: read leniently, or refuse the shape
        return _chat(body) if endpoint == "chat" else _responses(body)


def _chat(body: dict[str, Any]) -> Chat:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array", "messages")
    system: list[Text] = []
    turns: list[Message] = []
    previous = ""
    for m in messages:
        if not isinstance(m, dict):
            raise InvalidRequest("each entry of 'messages' must be an object", "messages")
        role, parts = m.get("role"), _parts(m.get("content"))
        if role in ("system", "developer"):
            if turns:
                turns.append(Message("user", parts))
            else:
                _instructions(system, turns, parts)
        elif role == "assistant":
            turns.append(Message("assistant", [*_reasoning(m), *parts, *_calls(m)]))
        elif role in ("tool", "function"):
            result = ToolResult(str_or_empty(m.get("tool_call_id")), [p for p in parts if isinstance(p, (Text, Media))],
                                name=str_or_empty(m.get("name")) or None)
            if previous in ("tool", "function") and turns:
                turns[-1].parts.append(result)
            else:
                turns.append(Message("user", [result]))
        else:
            turns.append(Message("user", parts))
        previous = role if isinstance(role, str) else ""
    chat = Chat(messages=[t for t in turns if t.parts], system=system)
    chat.tools = _tools([*_list(body.get("tools")), *_list(body.get("functions"))])
    chat.output_format = _output_format(_dict(body.get("response_format")))
    return chat


def _responses(body: dict[str, Any]) -> Chat:
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    system = [Text(body["instructions"])] if isinstance(body.get("instructions"), str) and body["instructions"] else []
    turns: list[Message] = []
    items = body.get("input")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    elif items is None and any(body.get(name) for name in STORED_STATE):
        items = []
    elif not isinstance(items, list):
        raise InvalidRequest("'input' must be a string or an array of items", "input")
    for item in items:
        if not isinstance(item, dict):
            raise InvalidRequest("each entry of 'input' must be an object", "input")
        kind, role = item.get("type"), item.get("role")
        if kind == "message" or (kind is None and role is not None):
            parts = _parts(item.get("content"))
            if role in ("system", "developer") and not turns:
                _instructions(system, turns, parts)
            else:
                _append(turns, "assistant" if role == "assistant" else "user", parts)
        elif kind == "function_call":
            _append(turns, "assistant", [ToolCall(str_or_empty(item.get("call_id")), str_or_empty(item.get("name")),
                                                  str_or_empty(item.get("arguments")))])
        elif kind == "function_call_output":
            output = item.get("output")
            content = [Text(output)] if isinstance(output, str) else _parts(output)
            _append(turns, "user", [ToolResult(str_or_empty(item.get("call_id")),
                                               [p for p in content if isinstance(p, (Text, Media))])])
        elif kind == "reasoning":
            texts = [s.get("text") for s in _list(item.get("summary")) if isinstance(s, dict)]
            _append(turns, "assistant", [Thinking("\n\n".join(t for t in texts if isinstance(t, str)))])
        else:  # other items (custom tool calls, MCP, computer use...): their JSON
            _append(turns, "user", [Text(_dump(item))])
    for name in STORED_STATE:  # a stored conversation or prompt: input whose size only OpenAI knows
        if body.get(name):
            _append(turns, "user", [Media(mime="application/octet-stream", url=f"openai:{name}", name=name)])
    chat = Chat(messages=turns, system=system)
    chat.tools = _tools(_list(body.get("tools")))
    text = _dict(body.get("text"))
    chat.output_format = _output_format(_dict(text.get("format")))
    return chat


def _instructions(system: list[Text], turns: list[Message], parts: list[Part]) -> None:
    """Leading system text joins the system prompt; anything else it carries, a user turn."""
    system.extend(p for p in parts if isinstance(p, Text))
    _append(turns, "user", [p for p in parts if not isinstance(p, Text)])


def _append(turns: list[Message], role: Role, parts: list[Part]) -> None:
    if not parts:
        return
    if not turns or turns[-1].role != role:
        turns.append(Message(role, []))
    turns[-1].parts.extend(parts)


def _parts(content: Any) -> list[Part]:
    """Content parts of either API, whatever their type: text, images and files (inline, by URL or by id),
    audio, vLLM's video_url and audio_url; anything else as its JSON text."""
    if isinstance(content, str):
        return [Text(content)] if content else []
    parts: list[Part] = []
    for part in _list(content):
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in ("text", "input_text", "output_text", "refusal"):
            text = part.get("refusal" if kind == "refusal" else "text")
            if isinstance(text, str) and text:
                parts.append(Text(text))
        elif kind in ("image_url", "input_image"):
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            detail = image.get("detail") if isinstance(image, dict) else part.get("detail")
            detail = detail if isinstance(detail, str) else None
            if isinstance(url, str) and url:
                parts.append(media_from_url(url, detail))
            else:  # an uploaded image (file_id): still an image, of bounded size
                parts.append(Media(mime="", url=f"file:{str_or_empty(part.get('file_id'))}", detail=detail))
        elif kind in ("file", "input_file"):
            parts.append(_file(_dict(part.get("file")) or part))
        elif kind == "input_audio":
            audio = _dict(part.get("input_audio"))
            audio_type = str_or_empty(audio.get("format")) or "wav"
            parts.append(Media(mime=f"audio/{audio_type}", data=str_or_empty(audio.get("data"))))
        elif kind in ("video_url", "audio_url"):  # vLLM's: media its server fetches, of any length
            ref = part.get(kind)
            url = ref.get("url") if isinstance(ref, dict) else ref
            parts.append(Media(mime=f"{kind[:5]}/*", url=str_or_empty(url) or kind))
        else:
            parts.append(Text(_dump(part)))
    return parts


def _file(file: dict[str, Any]) -> Media:
    """A file inline (file_data), by URL (file_url) or uploaded (file_id): the last two of a size only the
    upstream learns, unless they are images."""
    name = str_or_empty(file.get("filename")) or None
    data = str_or_empty(file.get("file_data"))
    if data:
        media = media_from_url(data, name=name) if data.startswith("data:") else None
        return media if media is not None and media.data is not None else \
            Media(mime=file_type(name) or "application/octet-stream", data=data, name=name)
    reference = str_or_empty(file.get("file_url")) or f"file:{str_or_empty(file.get('file_id'))}"
    return Media(mime=file_type(name or reference.split("?", 1)[0]) or "application/octet-stream", url=reference,
                 name=name)


def _reasoning(m: dict[str, Any]) -> list[Part]:
    for key in ("reasoning_content", "reasoning"):
        value = m.get(key)
        if isinstance(value, str) and value:
            return [Thinking(value)]
    return []


def _calls(m: dict[str, Any]) -> list[Part]:
    calls: list[Part] = []
    for call in [*_list(m.get("tool_calls")), *([m["function_call"]] if isinstance(m.get("function_call"), dict)
                                               else [])]:
        call = _dict(call)
        fn = _dict(call["function"]) if "function" in call else call
        arguments = fn.get("arguments")
        calls.append(ToolCall(str_or_empty(call.get("id")), str_or_empty(fn.get("name")),
                              arguments if isinstance(arguments, str) else _dump(arguments)))
    return calls


def _tools(raw: list[Any]) -> list[Tool]:
    """Function tools by name, description and schema; any other tool by its JSON."""
    tools = []
    for tool in raw:
        if not isinstance(tool, dict):
            continue
        fn = _dict(tool.get("function")) if tool.get("type") == "function" and "function" in tool else tool
        if isinstance(fn.get("name"), str) and isinstance(fn.get("parameters", {}), dict) and \
                tool.get("type") in (None, "function"):
            tools.append(Tool(fn["name"], str_or_empty(fn.get("description")), fn.get("parameters") or {}))
        else:
            tools.append(Tool("", "", tool))
    return tools


def _output_format(fmt: dict[str, Any]) -> OutputFormat | None:
    spec = _dict(fmt.get("json_schema")) or fmt
    schema = spec.get("schema")
    return OutputFormat("json_schema", schema=schema) if isinstance(schema, dict) else None


def _dump(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # integers past 64 bits and the like: the upstream will judge them
        return ""


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
