"""OpenAI Responses API (POST /v1/responses), client side, for models served by Anthropic or Gemini:
the request parsed into the internal Chat, and replies and streams rendered as Response objects and events."""

from __future__ import annotations

import base64
import re
from typing import Any, Literal

import orjson

from adapters.internal import (Chat, End, Event, Finish, InvalidRequest, Media, Message, OutputFormat, Part,
                               Reasoning, Reply, Role, StreamContext, StreamError, Text, TextDelta, Thinking,
                               ThinkingDelta, Tool, ToolCall, ToolCallDelta, ToolChoice, ToolResult, Usage,
                               media_from_url, pack_call_id)
from adapters.openai import error_body, normalize_usage

__all__ = ["StreamWriter", "error_body", "normalize_usage", "parse_request", "render_response",
           "response_id", "stream_error_event", "usage_object"]

MAX_CALL_ID = 64  # the Responses API refuses longer call_ids
CARRIER_PREFIX = "tokentoll.v1."  # our reasoning items' encrypted_content: signatures to hand back next turn
_NO_TOOLS_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}
_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,39}$")  # a type name safe to quote back in an error message
_EFFORTS: dict[str, Literal["minimal", "low", "medium", "high"]] = {
    "minimal": "minimal", "low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}
_SUMMARIES = ("auto", "concise", "detailed")
_FILE_TYPES = {"pdf": "application/pdf", "txt": "text/plain", "md": "text/markdown", "csv": "text/csv",
               "html": "text/html", "json": "application/json", "xml": "application/xml", "png": "image/png",
               "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif", "webp": "image/webp"}
_OPENAI_ONLY = "is served by OpenAI's Responses API itself and needs an OpenAI model; this model is served by " \
               "another provider"

# -- requests ------------------------------------------------------------------------------


def parse_request(body: dict[str, Any]) -> Chat:
    """A Responses request in the internal shape. Stored state (previous_response_id, conversation,
    prompt, background) and OpenAI's built-in tools are refused with a 400; `store` is ignored: the
    gateway stores nothing, whatever the client asks."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    _refuse_openai_only_fields(body)
    system: list[Text] = []
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise InvalidRequest("'instructions' must be a string", "instructions")
    if instructions:
        system.append(Text(instructions))
    messages = _parse_input(body.get("input"), system)
    tools = _parse_tools(body.get("tools"))
    choice, tools = _parse_tool_choice(body.get("tool_choice"), tools)
    user = _opt_str(body, "safety_identifier") or _opt_str(body, "user")
    return Chat(
        messages=messages,
        system=system,
        stream=bool(_opt_bool(body, "stream")),
        max_output=_opt_positive_int(body, "max_output_tokens"),
        temperature=_opt_number(body, "temperature", 2.0),
        top_p=_opt_number(body, "top_p", 1.0),
        tools=tools,
        tool_choice=choice,
        parallel_tool_calls=_opt_bool(body, "parallel_tool_calls"),
        output_format=_parse_text(body.get("text")),
        reasoning=_parse_reasoning(body.get("reasoning")),
        user=user,
    )


def _refuse_openai_only_fields(body: dict[str, Any]) -> None:
    stored = "lives only at OpenAI, and this model is served by another provider (the gateway stores no " \
             "responses): send the whole conversation in 'input' instead"
    if body.get("previous_response_id"):
        raise InvalidRequest(f"'previous_response_id' names a stored response, which {stored}", "previous_response_id")
    if body.get("conversation"):
        raise InvalidRequest(f"'conversation' names a stored conversation, which {stored}", "conversation")
    if body.get("prompt"):
        raise InvalidRequest("'prompt' names a prompt template stored at OpenAI, which this model (served by "
                             "another provider) cannot use: send 'instructions' and 'input' instead", "prompt")
    if body.get("background") is True:
        raise InvalidRequest("background responses are stored and polled at OpenAI; this model is served by "
                             "another provider: make a normal request (or stream it) instead", "background")
    top = body.get("top_logprobs")
    include = body.get("include")
    if include is not None and (not isinstance(include, list) or not all(isinstance(x, str) for x in include)):
        raise InvalidRequest("'include' must be an array of strings", "include")
    if (isinstance(top, int) and not isinstance(top, bool) and top > 0) or \
            "message.output_text.logprobs" in (include or ()):
        raise InvalidRequest("log probabilities are available only from OpenAI models; this model is served by "
                             "another provider", "top_logprobs" if top else "include")
    if body.get("truncation") not in (None, "auto", "disabled"):
        raise InvalidRequest("'truncation' must be 'auto' or 'disabled'", "truncation")
    metadata = body.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict)
                                 or not all(isinstance(v, str) for v in metadata.values())):
        raise InvalidRequest("'metadata' must be an object of string values", "metadata")


def _parse_input(value: Any, system: list[Text]) -> list[Message]:
    if value is None:
        raise InvalidRequest("'input' is required (the gateway keeps no earlier responses to continue from)", "input")
    if isinstance(value, str):
        if not value:
            raise InvalidRequest("'input' must not be empty", "input")
        return [Message("user", [Text(value)])]
    if not isinstance(value, list):
        raise InvalidRequest("'input' must be a string or an array of items", "input")
    turns: list[Message] = []
    names: dict[str, str] = {}  # call_id -> function name, for results (Gemini needs the name)
    carried: dict[str, str] = {}  # call_id -> a Gemini signature that did not fit in the call_id
    for i, item in enumerate(value):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"'{param}' must be an object", param)
        kind = item.get("type")
        if kind == "message" or (kind is None and "role" in item):
            _message_item(item, param, turns, system)
        elif kind == "function_call":
            call_id, name = _req_str(item, "call_id", param), _req_str(item, "name", param)
            arguments = item.get("arguments")
            if not isinstance(arguments, str):
                raise InvalidRequest(f"'{param}.arguments' must be a string of JSON", f"{param}.arguments")
            names[call_id] = name
            _append(turns, "assistant", [ToolCall(call_id, name, arguments or "{}")])
        elif kind == "function_call_output":
            call_id = _req_str(item, "call_id", param)
            name = item.get("name") if isinstance(item.get("name"), str) and item.get("name") else names.get(call_id)
            content = _tool_output(item.get("output"), f"{param}.output")
            _append(turns, "user", [ToolResult(call_id, content, name=name)])
        elif kind == "reasoning":
            thinking = _reasoning_item(item, param, carried)
            if thinking is not None:
                _append(turns, "assistant", [thinking])
        else:
            raise InvalidRequest(_unsupported_item(kind, param), f"{param}.type")
    for turn in turns:
        for part in turn.parts:
            if isinstance(part, ToolCall) and part.signature is None:
                part.signature = carried.get(part.id)
    if not turns:
        raise InvalidRequest("'input' holds no user or assistant content", "input")
    return turns


def _unsupported_item(kind: Any, param: str) -> str:
    if kind == "item_reference":
        return f"'{param}' refers to an item stored at OpenAI; this model is served by another provider: " \
               "send the item itself"
    if isinstance(kind, str) and _NAME.match(kind):
        return f"'{param}' is a '{kind}' item, which {_OPENAI_ONLY}; send message, function_call, " \
               "function_call_output or reasoning items"
    return f"'{param}.type' must be message, function_call, function_call_output or reasoning"


def _message_item(item: dict[str, Any], param: str, turns: list[Message], system: list[Text]) -> None:
    role = item.get("role")
    if role in ("system", "developer"):
        parts = _content(item.get("content"), f"{param}.content", "system")
        if turns:  # mid-conversation instructions stay in place, as user text (PROTOCOLS §4.1)
            _append(turns, "user", parts)
        else:
            system.extend(p for p in parts if isinstance(p, Text))
        return
    if role not in ("user", "assistant"):
        raise InvalidRequest(f"'{param}.role' must be user, assistant, system or developer", f"{param}.role")
    _append(turns, role, _content(item.get("content"), f"{param}.content", role))


def _append(turns: list[Message], role: Role, parts: list[Part]) -> None:
    """Consecutive items of one side share a turn; tool results stay first in theirs (PROTOCOLS §5.9)."""
    if not parts:
        return
    if not turns or turns[-1].role != role:
        turns.append(Message(role, []))
    existing = turns[-1].parts
    for part in parts:
        if isinstance(part, ToolResult):
            lead = 0
            while lead < len(existing) and isinstance(existing[lead], ToolResult):
                lead += 1
            existing.insert(lead, part)
        else:
            existing.append(part)


def _content(content: Any, path: str, role: str) -> list[Part]:
    if isinstance(content, str):
        return [Text(content)] if content else []
    if not isinstance(content, list):
        raise InvalidRequest(f"'{path}' must be a string or an array of parts", path)
    parts: list[Part] = []
    for j, part in enumerate(content):
        where = f"{path}[{j}]"
        if not isinstance(part, dict):
            raise InvalidRequest(f"'{where}' must be an object", where)
        kind = part.get("type")
        if kind in ("input_text", "output_text", "refusal"):
            text = part.get("refusal" if kind == "refusal" else "text")
            if not isinstance(text, str):
                raise InvalidRequest(f"'{where}' needs its text as a string", where)
            if text:
                parts.append(Text(text, cache=bool(part.get("prompt_cache_breakpoint"))))
        elif kind in ("input_image", "input_file"):
            if role != "user":
                raise InvalidRequest(f"'{where}': images and files can be sent only in user messages and tool "
                                     "outputs", where)
            parts.append(_image(part, where) if kind == "input_image" else _file(part, where))
        else:
            raise InvalidRequest(f"'{where}.type' must be input_text, input_image or input_file (output_text or "
                                 "refusal in assistant messages)", f"{where}.type")
    return parts


def _image(part: dict[str, Any], where: str) -> Media:
    if part.get("file_id"):
        raise InvalidRequest(f"'{where}.file_id' names a file uploaded to OpenAI, which this model (served by "
                             "another provider) cannot read: send the image as 'image_url' (a data: URL or an "
                             "https URL)", f"{where}.file_id")
    url = part.get("image_url")
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"'{where}.image_url' must be a data: URL or an https URL", f"{where}.image_url")
    detail = part.get("detail")
    return media_from_url(url, detail if isinstance(detail, str) else None)


def _file(part: dict[str, Any], where: str) -> Media:
    name = part.get("filename") if isinstance(part.get("filename"), str) else None
    if part.get("file_id"):
        raise InvalidRequest(f"'{where}.file_id' names a file uploaded to OpenAI, which this model (served by "
                             "another provider) cannot read: send the file as 'file_data' (a data: URL) or "
                             "'file_url'", f"{where}.file_id")
    data = part.get("file_data")
    if isinstance(data, str) and data:
        if data.startswith("data:"):
            media = media_from_url(data, name=name)
            if media.data is None:
                raise InvalidRequest(f"'{where}.file_data' must be base64 (data:<type>;base64,...)",
                                     f"{where}.file_data")
            return media
        return Media(mime=_guess_type(name) or "application/octet-stream", data=data, name=name)
    url = part.get("file_url")
    if isinstance(url, str) and url:
        return Media(mime=_guess_type(url.split("?", 1)[0]), url=url, name=name)
    raise InvalidRequest(f"'{where}' needs 'file_data' (a data: URL) or 'file_url'", where)


def _guess_type(name: str | None) -> str:
    ext = name.rsplit(".", 1)[-1].lower() if name and "." in name else ""
    return _FILE_TYPES.get(ext, "")


def _tool_output(output: Any, path: str) -> list[Text | Media]:
    return [p for p in _content(output, path, "user") if isinstance(p, (Text, Media))]


def _reasoning_item(item: dict[str, Any], param: str, carried: dict[str, str]) -> Thinking | None:
    """Summary text survives (as Thinking), with the signature our own encrypted_content carries; an
    OpenAI encrypted_content is dropped (only OpenAI can read it)."""
    texts = [s.get("text") for s in item.get("summary") or () if isinstance(s, dict)]
    if not any(texts):
        texts = [c.get("text") for c in item.get("content") or () if isinstance(c, dict)]
    text = "\n\n".join(t for t in texts if isinstance(t, str) and t)
    carrier = read_carrier(item.get("encrypted_content"))
    if "c" in carrier:
        if carrier.get("s"):
            carried[carrier["c"]] = carrier["s"]
        return None
    signature, redacted = carrier.get("s"), carrier.get("r")
    if not text and not signature and not redacted:
        return None
    return Thinking(text, signature=signature, redacted=redacted)


def carrier(signature: str | None = None, redacted: str | None = None, call_id: str | None = None) -> str:
    """encrypted_content for our reasoning items: a signature the next turn must hand back unchanged."""
    fields = {k: v for k, v in (("s", signature), ("r", redacted), ("c", call_id)) if v}
    return CARRIER_PREFIX + base64.urlsafe_b64encode(orjson.dumps(fields)).decode().rstrip("=")


def read_carrier(value: Any) -> dict[str, str]:
    if not isinstance(value, str) or not value.startswith(CARRIER_PREFIX):
        return {}
    raw = value[len(CARRIER_PREFIX):]
    try:
        fields = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return {}
    if not isinstance(fields, dict):
        return {}
    return {k: v for k, v in fields.items() if k in ("s", "r", "c") and isinstance(v, str)}


def _parse_tools(value: Any) -> list[Tool]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidRequest("'tools' must be an array", "tools")
    tools: list[Tool] = []
    for i, tool in enumerate(value):
        param = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise InvalidRequest(f"'{param}' must be an object", param)
        kind = tool.get("type")
        if kind != "function":
            quoted = f"the '{kind}' tool" if isinstance(kind, str) and _NAME.match(kind) else "this tool type"
            raise InvalidRequest(f"'{param}': {quoted} {_OPENAI_ONLY}; only 'function' tools can be used",
                                 f"{param}.type")
        name = _req_str(tool, "name", param)
        description = tool.get("description")
        parameters = tool.get("parameters")
        strict = tool.get("strict")
        if parameters is not None and not isinstance(parameters, dict):
            raise InvalidRequest(f"'{param}.parameters' must be a JSON Schema object", f"{param}.parameters")
        if strict is not None and not isinstance(strict, bool):
            raise InvalidRequest(f"'{param}.strict' must be a boolean", f"{param}.strict")
        tools.append(Tool(name, description if isinstance(description, str) else "",
                          parameters or dict(_NO_TOOLS_SCHEMA), strict))
    return tools


def _parse_tool_choice(value: Any, tools: list[Tool]) -> tuple[ToolChoice | None, list[Tool]]:
    if value is None:
        return None, tools
    if value in ("auto", "none", "required"):
        return ToolChoice(value), tools
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "function":
        name = value.get("name")
        if not any(t.name == name for t in tools):
            raise InvalidRequest("'tool_choice' names a function that is not in 'tools'", "tool_choice")
        return ToolChoice("tool", name), tools
    if kind == "allowed_tools":  # a subset of the tools, offered with mode auto or required
        mode, listed = value.get("mode"), value.get("tools")
        if mode not in ("auto", "required") or not isinstance(listed, list):
            raise InvalidRequest("'tool_choice' allowed_tools needs 'mode' (auto or required) and 'tools'",
                                 "tool_choice")
        names = set()
        for entry in listed:
            if not isinstance(entry, dict) or entry.get("type") != "function" or not isinstance(entry.get("name"), str):
                raise InvalidRequest(f"'tool_choice' allowed_tools: each entry must be a function tool "
                                     f"({{\"type\": \"function\", \"name\": ...}}); other tools {_OPENAI_ONLY}",
                                     "tool_choice")
            names.add(entry["name"])
        return ToolChoice(mode), [t for t in tools if t.name in names]
    if isinstance(kind, str):
        raise InvalidRequest(f"'tool_choice' of this type {_OPENAI_ONLY}; use auto, none, required or a "
                             "function", "tool_choice")
    raise InvalidRequest("'tool_choice' must be auto, none, required or {\"type\": \"function\", \"name\": ...}",
                         "tool_choice")


def _parse_text(value: Any) -> OutputFormat | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest("'text' must be an object", "text")
    fmt = value.get("format")  # text.verbosity is a GPT-5 hint with no counterpart: ignored
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return OutputFormat("json_object")
    if kind == "json_schema":
        schema, name, strict = fmt.get("schema"), fmt.get("name"), fmt.get("strict")
        if not isinstance(schema, dict):
            raise InvalidRequest("'text.format.schema' must be a JSON Schema object", "text.format.schema")
        if strict is not None and not isinstance(strict, bool):
            raise InvalidRequest("'text.format.strict' must be a boolean", "text.format.strict")
        return OutputFormat("json_schema", schema, name if isinstance(name, str) else None, strict)
    raise InvalidRequest("'text.format.type' must be text, json_object or json_schema", "text.format.type")


def _parse_reasoning(value: Any) -> Reasoning | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest("'reasoning' must be an object", "reasoning")
    effort = value.get("effort")
    summary = value.get("summary") or value.get("generate_summary")  # the latter: its deprecated name
    if effort is not None and effort != "none" and effort not in _EFFORTS:
        raise InvalidRequest("'reasoning.effort' must be none, minimal, low, medium, high or xhigh",
                             "reasoning.effort")
    if summary is not None and summary not in _SUMMARIES:
        raise InvalidRequest("'reasoning.summary' must be auto, concise or detailed", "reasoning.summary")
    if effort == "none":
        return Reasoning(budget=0, include_thoughts=False)
    return Reasoning(effort=_EFFORTS.get(effort) if effort else None, include_thoughts=summary is not None)


def _req_str(obj: dict[str, Any], key: str, param: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"'{param}.{key}' must be a non-empty string", f"{param}.{key}")
    return value


def _opt_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"'{key}' must be a string", key)
    return value or None


def _opt_bool(body: dict[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise InvalidRequest(f"'{key}' must be a boolean", key)
    return value


def _opt_positive_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidRequest(f"'{key}' must be a positive integer", key)
    return value


def _opt_number(body: dict[str, Any], key: str, most: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= most:
        raise InvalidRequest(f"'{key}' must be a number from 0 to {most:g}", key)
    return float(value)


# -- responses -----------------------------------------------------------------------------


def response_id(request_id: str) -> str:
    return "resp_" + request_id.removeprefix("req_")


def usage_object(usage: Usage | None) -> dict[str, Any]:
    """The Responses usage object (input includes cached tokens, output includes reasoning)."""
    u = usage or Usage()
    return {"input_tokens": u.in_total,
            "input_tokens_details": {"cached_tokens": u.cache_read, "cache_write_tokens": u.cache_write},
            "output_tokens": u.out_total, "output_tokens_details": {"reasoning_tokens": u.reasoning},
            "total_tokens": u.in_total + u.out_total}


_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def render_response(reply: Reply, ctx: StreamContext, request: dict[str, Any] | None = None) -> bytes:
    """A complete Response object. `request` (the client's body, optional) fills the echo fields
    (instructions, tools, tool_choice, text, reasoning, ...); without it they get the API's defaults."""
    base = _base(ctx.request_id)
    output: list[dict[str, Any]] = []
    texts: list[str] = []
    for part in reply.parts:
        if isinstance(part, Text):
            texts.append(part.text)
            continue
        if isinstance(part, Thinking) and not (part.text or part.signature or part.redacted):
            continue
        if texts:
            output.append(_message(base, len(output), "".join(texts)))
            texts = []
        if isinstance(part, Thinking):
            output.append(_reasoning(base, len(output), part.text, part.signature, part.redacted))
        elif isinstance(part, ToolCall):
            call_id = _call_id(part.id, part.signature)
            if call_id == part.id and part.signature:
                output.append(_reasoning(base, len(output), "", part.signature, None, part.id))
            output.append(_function_call(base, len(output), call_id, part.name, part.arguments, "completed"))
    if texts:
        output.append(_message(base, len(output), "".join(texts)))
    reason = _INCOMPLETE.get(reply.finish)
    if reason and output:
        output[-1]["status"] = "incomplete"
    body = _envelope(ctx, _echo(request), "incomplete" if reason else "completed", output,
                     usage_object(reply.usage), {"reason": reason} if reason else None)
    return orjson.dumps(body)


def _base(request_id: str) -> str:
    return request_id.removeprefix("req_")


def _call_id(call_id: str, signature: str | None) -> str:
    packed = pack_call_id(call_id, signature)
    return packed if len(packed) <= MAX_CALL_ID else call_id


def _message(base: str, index: int, text: str, status: str = "completed") -> dict[str, Any]:
    return {"id": f"msg_{base}_{index}", "type": "message", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def _reasoning(base: str, index: int, text: str, signature: str | None, redacted: str | None,
               call_id: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"id": f"rs_{base}_{index}", "type": "reasoning",
                            "summary": [{"type": "summary_text", "text": text}] if text else [],
                            "status": "completed"}
    if signature or redacted:
        item["encrypted_content"] = carrier(signature, redacted, call_id)
    return item


def _function_call(base: str, index: int, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"id": f"fc_{base}_{index}", "type": "function_call", "status": status, "call_id": call_id,
            "name": name, "arguments": arguments}


def _envelope(ctx: StreamContext, echo: dict[str, Any], status: str, output: list[dict[str, Any]],
              usage: dict[str, Any] | None, incomplete: dict[str, str] | None) -> dict[str, Any]:
    return {"id": response_id(ctx.request_id), "object": "response", "created_at": ctx.created,
            "status": status, "model": ctx.model, "output": output, "usage": usage, "error": None,
            "incomplete_details": incomplete, **echo}


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _echo(request: dict[str, Any] | None) -> dict[str, Any]:
    """The request fields a Response repeats, read defensively from the client's (already parsed) body."""
    req = request if isinstance(request, dict) else {}

    def pick(key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        value = req.get(key)
        if kind is bool:
            return value if isinstance(value, bool) else default
        return value if isinstance(value, kind) and not isinstance(value, bool) else default

    tools = [{"type": "function", "name": t["name"], "description": _str_or_none(t.get("description")),
              "parameters": t.get("parameters") or dict(_NO_TOOLS_SCHEMA), "strict": t.get("strict")}
             for t in req.get("tools") or () if isinstance(t, dict) and isinstance(t.get("name"), str)]
    text = req.get("text") if isinstance(req.get("text"), dict) and isinstance(req["text"].get("format"), dict) \
        else {"format": {"type": "text"}}
    reasoning = req.get("reasoning") if isinstance(req.get("reasoning"), dict) else {}
    return {
        "instructions": pick("instructions", str),
        "tools": tools,
        "tool_choice": req.get("tool_choice") if isinstance(req.get("tool_choice"), (str, dict)) else "auto",
        "parallel_tool_calls": pick("parallel_tool_calls", bool, True),
        "temperature": pick("temperature", (int, float)),
        "top_p": pick("top_p", (int, float)),
        "max_output_tokens": pick("max_output_tokens", int),
        "text": text,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "metadata": pick("metadata", dict, {}),
        "user": pick("user", str),
        "safety_identifier": pick("safety_identifier", str),
        "truncation": req.get("truncation") if req.get("truncation") in ("auto", "disabled") else "disabled",
        "previous_response_id": None,
        "background": False,
        "store": False,  # nothing is stored, whatever the request said
    }


# -- streams -------------------------------------------------------------------------------


class StreamWriter:
    """Internal events as Responses stream events: response.created and .in_progress first, then
    one output item at a time (added, parts, deltas, done), then response.completed or .incomplete."""

    def __init__(self, ctx: StreamContext, request: dict[str, Any] | None = None) -> None:
        self._ctx = ctx
        self._echo = _echo(request)
        self._base = _base(ctx.request_id)
        self._seq = 0
        self._started = False
        self._ended = False
        self._finish: Finish = "stop"
        self._output: list[dict[str, Any]] = []  # every item added so far, by output_index
        self._open: dict[str, Any] | None = None  # the item being streamed (the last of _output)
        self._chunks: list[str] = []  # the open item's text or arguments so far
        self._sealed = False  # the open reasoning item already has its signature or redacted data
        self._calls: dict[int, dict[str, Any]] = {}  # tool index -> its function_call item

    def write(self, event: Event) -> bytes:
        if self._ended:
            return b""
        if isinstance(event, StreamError):
            return self.error(event.message, event.kind)
        out: list[bytes] = []
        self._begin(out)
        if isinstance(event, TextDelta):
            self._text(out, event.text)
        elif isinstance(event, ThinkingDelta):
            self._thinking(out, event)
        elif isinstance(event, ToolCallDelta):
            self._tool(out, event)
        elif isinstance(event, End):
            self._finish = event.finish
        # Start: the response was already announced; UsageUpdate: close() gets the charged usage
        return b"".join(out)

    def close(self, usage: Usage) -> bytes:
        if self._ended:
            return b""
        out: list[bytes] = []
        self._begin(out)
        reason = _INCOMPLETE.get(self._finish)
        self._finish_open(out, "incomplete" if reason else "completed")
        status = "incomplete" if reason else "completed"
        response = _envelope(self._ctx, self._echo, status, self._output, usage_object(usage),
                             {"reason": reason} if reason else None)
        self._emit(out, f"response.{status}", response=response)
        self._ended = True
        return b"".join(out)

    def error(self, message: str, code: str) -> bytes:
        """response.failed (the terminal event raw-SSE clients watch for), then the `error` event with
        a top-level error object, which makes the openai SDK raise APIError instead of ending quietly."""
        if self._ended:
            return b""
        out: list[bytes] = []
        if self._started:
            if self._open is not None:
                self._settle_open("incomplete")
            failed = {"code": "rate_limit_exceeded" if "rate" in code else "server_error", "message": message}
            response = _envelope(self._ctx, self._echo, "failed", self._output, None, None)
            response["error"] = failed
            self._emit(out, "response.failed", response=response)
        out.append(_error_event(message, code, self._ctx.request_id, self._seq))
        self._seq += 1
        self._ended = True
        return b"".join(out)

    # -- items --

    def _begin(self, out: list[bytes]) -> None:
        if self._started:
            return
        self._started = True
        response = _envelope(self._ctx, self._echo, "in_progress", [], None, None)
        self._emit(out, "response.created", response=response)
        self._emit(out, "response.in_progress", response=response)

    def _text(self, out: list[bytes], text: str) -> None:
        if not text:
            return
        item = self._open
        if item is None or item["type"] != "message":
            item = _message(self._base, len(self._output), "", "in_progress")
            item["content"] = []
            self._add(out, item)
            part = {"type": "output_text", "text": "", "annotations": []}
            self._emit(out, "response.content_part.added", item_id=item["id"],
                       output_index=len(self._output) - 1, content_index=0, part=part)
            item["content"].append(part)
        self._chunks.append(text)
        self._emit(out, "response.output_text.delta", item_id=item["id"], output_index=len(self._output) - 1,
                   content_index=0, delta=text, logprobs=[])

    def _thinking(self, out: list[bytes], event: ThinkingDelta) -> None:
        """One reasoning item per thinking block: text, then its signature (or redacted data) seals it."""
        item = self._open
        reuse = item is not None and item["type"] == "reasoning" and not self._sealed
        if event.text:
            if not reuse:
                item = self._add(out, self._new_reasoning())
                reuse = True
            assert item is not None
            index = len(self._output) - 1
            if not item["summary"]:
                item["summary"].append({"type": "summary_text", "text": ""})
                self._emit(out, "response.reasoning_summary_part.added", item_id=item["id"], output_index=index,
                           summary_index=0, part={"type": "summary_text", "text": ""})
            self._chunks.append(event.text)
            self._emit(out, "response.reasoning_summary_text.delta", item_id=item["id"], output_index=index,
                       summary_index=0, delta=event.text)
        if event.signature or event.redacted:
            if not reuse:
                item = self._add(out, self._new_reasoning())
            assert item is not None
            item["encrypted_content"] = carrier(event.signature, event.redacted)
            self._sealed = True

    def _tool(self, out: list[bytes], event: ToolCallDelta) -> None:
        item = self._calls.get(event.index)
        if item is None:
            plain = event.id or f"call_{self._base}_{event.index}"
            call_id = _call_id(plain, event.signature)
            if call_id == plain and event.signature:  # too long to pack: a reasoning item carries it
                self._add(out, _reasoning(self._base, len(self._output), "", event.signature, None, plain))
                self._finish_open(out, "completed")
            item = self._add(out, _function_call(self._base, len(self._output), call_id, event.name or "", "",
                                                 "in_progress"))
            self._calls[event.index] = item
        elif item is not self._open:  # a late fragment of a finished call: kept for the final output
            item["arguments"] += event.arguments
            return
        if event.arguments:
            self._chunks.append(event.arguments)
            self._emit(out, "response.function_call_arguments.delta", item_id=item["id"],
                       output_index=len(self._output) - 1, delta=event.arguments)

    def _new_reasoning(self) -> dict[str, Any]:
        item = _reasoning(self._base, len(self._output), "", None, None)
        item["status"] = "in_progress"
        return item

    def _add(self, out: list[bytes], item: dict[str, Any]) -> dict[str, Any]:
        self._finish_open(out, "completed")
        self._emit(out, "response.output_item.added", output_index=len(self._output), item=item)
        self._output.append(item)
        self._open, self._chunks, self._sealed = item, [], False
        return item

    def _settle_open(self, status: str) -> None:
        """The open item's accumulated text or arguments written into it, with its final status."""
        item = self._open
        assert item is not None
        text = "".join(self._chunks)
        if item["type"] == "message":
            item["content"] = [{"type": "output_text", "text": text, "annotations": []}]
        elif item["type"] == "reasoning" and item["summary"]:
            item["summary"] = [{"type": "summary_text", "text": text}]
        elif item["type"] == "function_call":
            item["arguments"] = text
        item["status"] = status

    def _finish_open(self, out: list[bytes], status: str) -> None:
        item = self._open
        if item is None:
            return
        self._settle_open(status)
        index = len(self._output) - 1
        ref = {"item_id": item["id"], "output_index": index}
        if item["type"] == "message":
            part = item["content"][0]
            self._emit(out, "response.output_text.done", **ref, content_index=0, text=part["text"], logprobs=[])
            self._emit(out, "response.content_part.done", **ref, content_index=0, part=part)
        elif item["type"] == "reasoning" and item["summary"]:
            part = item["summary"][0]
            self._emit(out, "response.reasoning_summary_text.done", **ref, summary_index=0, text=part["text"])
            self._emit(out, "response.reasoning_summary_part.done", **ref, summary_index=0, part=part)
        elif item["type"] == "function_call":
            self._emit(out, "response.function_call_arguments.done", **ref, arguments=item["arguments"],
                       name=item["name"])
        self._emit(out, "response.output_item.done", output_index=index, item=item)
        self._open, self._chunks, self._sealed = None, [], False

    def _emit(self, out: list[bytes], kind: str, **fields: Any) -> None:
        data = orjson.dumps({"type": kind, **fields, "sequence_number": self._seq})
        self._seq += 1
        out.append(b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n")


# -- errors --------------------------------------------------------------------------------


def _error_event(message: str, code: str, request_id: str | None, sequence: int) -> bytes:
    error: dict[str, Any] = {"message": message, "type": "server_error", "param": None, "code": code}
    if request_id:
        error["request_id"] = request_id
    data = {"type": "error", "code": code, "message": message, "param": None, "sequence_number": sequence,
            "error": error}
    return b"event: error\ndata: " + orjson.dumps(data) + b"\n\n"


def stream_error_event(message: str, code: str, request_id: str, sequence: int = 0) -> bytes:
    """The in-band error for a Responses stream: a ResponseErrorEvent that also has a top-level
    `error` object, so the openai SDK raises APIError (a bare error event would only be yielded)."""
    return _error_event(message, code, request_id, sequence)
