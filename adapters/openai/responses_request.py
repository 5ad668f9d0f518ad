"""OpenAI Responses API (POST /v1/responses), client side, requests: the body parsed into the internal Chat for
a model whose upstream has no Responses API, and the encrypted_content carrier our reasoning items hand back."""

from __future__ import annotations

import base64
import re
from typing import Any

import orjson

from adapters.internal import (Chat, InvalidRequest, Media, Message, OutputFormat, Part, Reasoning, Role, Text,
                               Thinking, Tool, ToolCall, ToolChoice, ToolResult, media_from_url)
from adapters.openai.common import EFFORTS, EMPTY_PARAMETERS, number, opt_bool
from adapters.openai.passthrough import requested_limit

__all__ = ["CARRIER_PREFIX", "carrier", "parse_request", "read_carrier"]

CARRIER_PREFIX = "tokentoll.v1."  # our reasoning items' encrypted_content: signatures to hand back next turn
_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,39}")  # a type name safe to quote back in an error message
_SUMMARIES = ("auto", "concise", "detailed")
_FILE_TYPES = {"pdf": "application/pdf", "txt": "text/plain", "md": "text/markdown", "csv": "text/csv",
               "html": "text/html", "json": "application/json", "xml": "application/xml", "png": "image/png",
               "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif", "webp": "image/webp"}
_NO_RESPONSES_API = "this model's upstream has no Responses API (the gateway translates the request for it)"
_OPENAI_ONLY = f"is served by OpenAI's Responses API itself and needs an OpenAI model behind it; {_NO_RESPONSES_API}"

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
        stream=bool(opt_bool(body, "stream")),
        max_output=requested_limit(body),
        temperature=number(body, "temperature", 0, 2),
        top_p=number(body, "top_p", 0, 1),
        tools=tools,
        tool_choice=choice,
        parallel_tool_calls=opt_bool(body, "parallel_tool_calls"),
        output_format=_parse_text(body.get("text")),
        reasoning=_parse_reasoning(body.get("reasoning")),
        user=user,
    )


def _refuse_openai_only_fields(body: dict[str, Any]) -> None:
    stored = "only an upstream's Responses API keeps, and this model's upstream has no Responses API (the gateway " \
             "stores no responses): send the whole conversation in 'input' instead"
    if body.get("previous_response_id"):
        raise InvalidRequest(f"'previous_response_id' names a stored response, which {stored}", "previous_response_id")
    if body.get("conversation"):
        raise InvalidRequest(f"'conversation' names a stored conversation, which {stored}", "conversation")
    if body.get("prompt"):
        raise InvalidRequest("'prompt' names a prompt template stored at OpenAI, which this model cannot use (its "
                             "upstream has no Responses API): send 'instructions' and 'input' instead", "prompt")
    if body.get("background") is True:
        raise InvalidRequest(f"background responses are stored and polled at OpenAI; {_NO_RESPONSES_API}: make "
                             "a normal request (or stream it) instead", "background")
    top = body.get("top_logprobs")
    include = body.get("include")
    if include is not None and (not isinstance(include, list) or not all(isinstance(x, str) for x in include)):
        raise InvalidRequest("'include' must be an array of strings", "include")
    if (isinstance(top, int) and not isinstance(top, bool) and top > 0) or \
            "message.output_text.logprobs" in (include or ()):
        raise InvalidRequest(f"log probabilities are available only from OpenAI models; {_NO_RESPONSES_API}",
                             "top_logprobs" if top else "include")
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
        return f"'{param}' refers to an item stored at OpenAI; {_NO_RESPONSES_API}: send the item itself"
    if isinstance(kind, str) and _NAME.fullmatch(kind):
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
        raise InvalidRequest(f"'{where}.file_id' names a file uploaded to OpenAI, which this model cannot read (its "
                             "upstream has no Responses API): send the image as 'image_url' (a data: URL or an "
                             "https URL)", f"{where}.file_id")
    url = part.get("image_url")
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"'{where}.image_url' must be a data: URL or an https URL", f"{where}.image_url")
    detail = part.get("detail")
    return media_from_url(url, detail if isinstance(detail, str) else None)


def _file(part: dict[str, Any], where: str) -> Media:
    name = part.get("filename") if isinstance(part.get("filename"), str) else None
    if part.get("file_id"):
        raise InvalidRequest(f"'{where}.file_id' names a file uploaded to OpenAI, which this model cannot read (its "
                             "upstream has no Responses API): send the file as 'file_data' (a data: URL) or "
                             "'file_url'", f"{where}.file_id")
    data = part.get("file_data")
    if isinstance(data, str) and data:
        if data.startswith("data:"):
            media = media_from_url(data, name=name)
            if media.data is None:
                raise InvalidRequest(f"'{where}.file_data' must be base64 (data:<type>;base64,...)",
                                     f"{where}.file_data")
            return media
        return Media(mime=file_type(name) or "application/octet-stream", data=data, name=name)
    url = part.get("file_url")
    if isinstance(url, str) and url:
        return Media(mime=file_type(url.split("?", 1)[0]) or "application/octet-stream", url=url, name=name)
    raise InvalidRequest(f"'{where}' needs 'file_data' (a data: URL) or 'file_url'", where)


def file_type(name: str | None) -> str:
    """A file's type by its name's extension, among those the providers take; "" when unknown."""
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
            quoted = f"the '{kind}' tool" if isinstance(kind, str) and _NAME.fullmatch(kind) else "this tool type"
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
                          parameters or dict(EMPTY_PARAMETERS), strict))
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
    if effort is not None and (not isinstance(effort, str) or effort != "none" and effort not in EFFORTS):
        raise InvalidRequest("'reasoning.effort' must be none, minimal, low, medium, high or xhigh",
                             "reasoning.effort")
    if summary is not None and summary not in _SUMMARIES:
        raise InvalidRequest("'reasoning.summary' must be auto, concise or detailed", "reasoning.summary")
    if effort == "none":
        return Reasoning(budget=0, include_thoughts=False)
    return Reasoning(effort=EFFORTS.get(effort) if effort else None, include_thoughts=summary is not None)


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


# -- the encrypted_content carrier -------------------------------------------------------------


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
