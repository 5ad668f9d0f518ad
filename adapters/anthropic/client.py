"""Anthropic Messages, client side: a /v1/messages caller's request (and count_tokens body) in the internal
shape, and the answer, stream, errors and models list it expects back. No I/O."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import orjson

from adapters.anthropic.common import MIN_THINKING_BUDGET, SIGNATURE_MARK, UNSIGNED_THINKING, _dict, _is_int
from adapters.internal import (
    Chat,
    End,
    Event,
    Finish,
    InvalidRequest,
    Media,
    Message,
    OutputFormat,
    Part,
    Reasoning,
    Reply,
    StreamContext,
    StreamError,
    Text,
    Thinking,
    ThinkingDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolResult,
    TextDelta,
    Usage,
    pack_call_id,
    parse_arguments,
    sanitize_call_id,
)

_EFFORTS: dict[str, Any] = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}
_SERVER_BLOCKS = frozenset({
    "server_tool_use", "web_search_tool_result", "web_fetch_tool_result", "code_execution_tool_result",
    "bash_code_execution_tool_result", "text_editor_code_execution_tool_result", "tool_search_tool_result",
    "container_upload", "mcp_tool_use", "mcp_tool_result",
})


# -- client side: requests -----------------------------------------------------------------


def parse_request(body: Any, for_count: bool = False) -> Chat:
    """A Messages request (or, with for_count, a count_tokens body without max_tokens) in the internal
    shape. Raises InvalidRequest for what Anthropic would refuse or only an Anthropic model can do."""
    chat = _parse_prompt(body, strict=True)
    max_tokens = body.get("max_tokens")
    if max_tokens is not None or not for_count:
        if not _is_int(max_tokens) or max_tokens < 1:
            raise InvalidRequest("'max_tokens' is required and must be a positive integer", "max_tokens")
        chat.max_output = max_tokens
    chat.stream = _flag(body, "stream")
    chat.stop = _stop_sequences(body.get("stop_sequences"))
    chat.temperature = _number(body, "temperature")
    chat.top_p = _number(body, "top_p")
    top_k = body.get("top_k")
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise InvalidRequest("'top_k' must be a positive integer", "top_k")
    chat.top_k = top_k
    chat.tool_choice, chat.parallel_tool_calls = _tool_choice(body.get("tool_choice"), chat.tools)
    config = body.get("output_config")
    if config is not None and not isinstance(config, dict):
        raise InvalidRequest("'output_config' must be an object", "output_config")
    effort = (config or {}).get("effort")
    if effort is not None and (not isinstance(effort, str) or effort not in _EFFORTS):
        raise InvalidRequest("'output_config.effort' must be low, medium, high, xhigh or max", "output_config.effort")
    chat.reasoning = _reasoning(body.get("thinking"), _EFFORTS.get(effort or ""), chat.max_output)
    metadata = body.get("metadata")
    if metadata is not None:
        user = metadata.get("user_id") if isinstance(metadata, dict) else None
        if not isinstance(metadata, dict) or not isinstance(user, (str, type(None))):
            raise InvalidRequest("'metadata.user_id' must be a string", "metadata.user_id")
        chat.user = user or None
    if body.get("mcp_servers"):
        raise InvalidRequest("'mcp_servers' needs an Anthropic model", "mcp_servers")
    return chat


def prompt_of(body: Any) -> Chat:
    """The prompt of a same-format request, for the one prompt estimate: blocks and tools that only Anthropic
    knows are read (by their JSON, or as the files they name) instead of refused."""
    return _parse_prompt(body, strict=False)


def count_tokens_body(input_tokens: int) -> bytes:
    """The answer to POST /v1/messages/count_tokens."""
    return orjson.dumps({"input_tokens": input_tokens})


def _parse_prompt(body: Any, strict: bool) -> Chat:
    """What the prompt is made of (system, messages, tools, output schema); strict=False keeps what it
    does not understand as JSON text, so that it is still counted."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array", "messages")
    names: dict[str, str] = {}  # tool_use id -> tool name, for ToolResult.name
    parsed: list[Message] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
            raise InvalidRequest(f"messages.{i} must be an object with role 'user' or 'assistant'", f"messages.{i}")
        parts = _content(msg.get("content"), msg["role"], names, strict, f"messages.{i}.content")
        if parts:
            parsed.append(Message(role=msg["role"], parts=parts))
    if strict and not parsed:  # every message empty: nothing to answer (Anthropic refuses empty content too)
        raise InvalidRequest("'messages' must hold at least one message with non-empty content", "messages")
    chat = Chat(messages=parsed, system=_system(body.get("system"), strict))
    chat.tools = _tools(body.get("tools"), strict)
    config = body.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else None
    if fmt is not None:
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
            chat.output_format = OutputFormat(kind="json_schema", schema=fmt["schema"])
        elif strict:
            raise InvalidRequest("'output_config.format' must be {\"type\": \"json_schema\", \"schema\": {...}}",
                                 "output_config.format")
    return chat


def _system(value: Any, strict: bool) -> list[Text]:
    if value is None:
        return []
    if isinstance(value, str):
        return [Text(value)] if value else []
    if not isinstance(value, list):
        raise InvalidRequest("'system' must be a string or an array of text blocks", "system")
    out: list[Text] = []
    for j, block in enumerate(value):
        if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
            if block["text"]:
                out.append(Text(block["text"], cache=bool(block.get("cache_control"))))
        elif strict:
            raise InvalidRequest(f"system.{j} must be a text block", f"system.{j}")
        else:
            out.append(Text(_dump(block)))
    return out


def _content(content: Any, role: str, names: dict[str, str], strict: bool, where: str) -> list[Part]:
    if isinstance(content, str):
        return [Text(content)] if content else []
    if not isinstance(content, list):
        raise InvalidRequest(f"{where} must be a string or an array of content blocks", where)
    parts: list[Part] = []
    for j, block in enumerate(content):
        try:
            parts.extend(_block(block, role, names, f"{where}.{j}"))
        except InvalidRequest:
            if strict:
                raise
            parts.append(_opaque(block))
    return parts


def _opaque(block: Any) -> Part:
    """A block only Anthropic reads, for the estimate: an image or document from the Files API is media of the
    size the upstream alone knows (an image's is bounded); anything else counts as its JSON."""
    kind = block.get("type") if isinstance(block, dict) else None
    source = _dict(block.get("source")) if isinstance(block, dict) else {}
    if kind in ("image", "document") and source.get("type") == "file":
        return Media(mime="" if kind == "image" else "application/octet-stream",
                     url=f"file:{source.get('file_id')}")
    return Text(_dump(block))


def _block(block: Any, role: str, names: dict[str, str], where: str) -> list[Part]:
    if not isinstance(block, dict):
        raise InvalidRequest(f"{where} must be an object", where)
    kind = block.get("type")
    if kind == "text":
        text = _string(block, "text", where)
        return [Text(text, cache=bool(block.get("cache_control")))] if text else []
    if kind == "image":
        return [_image(block.get("source"), f"{where}.source")]
    if kind == "document":
        return _document(block, where)
    if kind == "search_result":
        return _search_result(block, where)
    if kind in ("tool_use", "tool_result", "thinking", "redacted_thinking"):
        if (role == "user") != (kind == "tool_result"):
            raise InvalidRequest(f"{where}: '{kind}' blocks may not appear in a {role} message", where)
    if kind == "tool_use":
        call_id, name = _string(block, "id", where), _string(block, "name", where)
        arguments = block.get("input", {})
        if not isinstance(arguments, dict):
            raise InvalidRequest(f"{where}.input must be an object", f"{where}.input")
        names[call_id] = name
        return [ToolCall(id=call_id, name=name, arguments=orjson.dumps(arguments).decode())]
    if kind == "tool_result":
        call_id = _string(block, "tool_use_id", where)
        return [ToolResult(call_id=call_id, content=_result_content(block.get("content"), f"{where}.content"),
                           name=names.get(call_id), is_error=block.get("is_error") is True)]
    if kind == "thinking":
        text, signature = _string(block, "thinking", where), block.get("signature")
        return [Thinking(text, signature=_upstream_signature(signature))]
    if kind == "redacted_thinking":
        return [Thinking("", redacted=_string(block, "data", where))]
    if isinstance(kind, str) and kind in _SERVER_BLOCKS:
        raise InvalidRequest(f"{where}: '{kind}' blocks come from Anthropic server tools and need an Anthropic model",
                             where)
    raise InvalidRequest(f"{where}: unknown content block type '{str(kind)[:40]}'", where)


def _upstream_signature(signature: Any) -> str | None:
    """The provider's own signature from one a client hands back (see SIGNATURE_MARK)."""
    if not isinstance(signature, str) or not signature:
        return None
    if not signature.startswith(SIGNATURE_MARK):
        return signature  # Claude's own, from a conversation that began on Claude
    return signature.removeprefix(SIGNATURE_MARK + "sig:") if signature.startswith(SIGNATURE_MARK + "sig:") else None


def _client_signature(signature: str | None) -> str:
    return f"{SIGNATURE_MARK}sig:{signature}" if signature else UNSIGNED_THINKING


def _image(source: Any, where: str) -> Media:
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        mime, data = _string(source, "media_type", where), _string(source, "data", where)
        if not mime.startswith("image/"):
            raise InvalidRequest(f"{where}.media_type must be an image type", f"{where}.media_type")
        return Media(mime=mime, data=data)
    if kind == "url":
        return Media(mime="", url=_string(source, "url", where))
    if kind == "file":
        raise InvalidRequest(f"{where}: Files API sources need an Anthropic model", where)
    raise InvalidRequest(f"{where} must be a base64 or url image source", where)


def _document(block: dict[str, Any], where: str) -> list[Part]:
    source, title = _dict(block.get("source")), block.get("title")
    name = title if isinstance(title, str) and title else None
    kind = source.get("type")
    if kind == "base64":
        return [Media(mime=_string(source, "media_type", where), data=_string(source, "data", where), name=name)]
    if kind == "url":
        return [Media(mime="application/pdf", url=_string(source, "url", where), name=name)]
    if kind == "text":
        text = _string(source, "data", where)
        return [Text(text, cache=bool(block.get("cache_control")))] if text else []
    if kind == "content":
        content = source.get("content")
        if isinstance(content, str):
            return [Text(content)] if content else []
        return [*_result_content(content, f"{where}.source.content")]
    if kind == "file":
        raise InvalidRequest(f"{where}: Files API sources need an Anthropic model", where)
    raise InvalidRequest(f"{where}.source must be a base64, url, text or content source", f"{where}.source")


def _search_result(block: dict[str, Any], where: str) -> list[Part]:
    head = "\n".join(v for v in (block.get("title"), block.get("source")) if isinstance(v, str) and v)
    texts = [p.text for p in _result_content(block.get("content"), f"{where}.content") if isinstance(p, Text)]
    text = "\n".join([head, *texts] if head else texts)
    return [Text(text)] if text else []


def _result_content(content: Any, where: str) -> list[Text | Media]:
    """A tool_result's (or a content source's) content: a string or text/image/document blocks."""
    if content is None:
        return []
    if isinstance(content, str):
        return [Text(content)] if content else []
    if not isinstance(content, list):
        raise InvalidRequest(f"{where} must be a string or an array of blocks", where)
    out: list[Text | Media] = []
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind in ("text", "image", "document", "search_result"):
            out.extend(p for p in _block(block, "user", {}, f"{where}.{j}") if isinstance(p, (Text, Media)))
        else:
            raise InvalidRequest(f"{where}.{j}: a tool result holds text, image and document blocks", f"{where}.{j}")
    return out


def _tools(value: Any, strict: bool) -> list[Tool]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidRequest("'tools' must be an array", "tools")
    tools: list[Tool] = []
    for i, tool in enumerate(value):
        if not isinstance(tool, dict):
            raise InvalidRequest(f"tools.{i} must be an object", f"tools.{i}")
        kind = tool.get("type")
        if kind not in (None, "custom") or not isinstance(tool.get("name"), str):
            if strict and kind not in (None, "custom"):
                raise InvalidRequest(f"tools.{i}: '{str(kind)[:40]}' is an Anthropic server tool and needs an "
                                     "Anthropic model", f"tools.{i}.type")
            if strict:
                raise InvalidRequest(f"tools.{i}.name must be a string", f"tools.{i}.name")
            tools.append(Tool(name="", description="", parameters=tool))
            continue
        schema = tool.get("input_schema", {"type": "object", "properties": {}})
        description = tool.get("description") or ""
        if strict and (not isinstance(schema, dict) or not isinstance(description, str)):
            raise InvalidRequest(f"tools.{i} needs an input_schema object and a string description", f"tools.{i}")
        tools.append(Tool(name=tool["name"], description=description if isinstance(description, str) else "",
                          parameters=schema if isinstance(schema, dict) else {},
                          strict=tool.get("strict") if isinstance(tool.get("strict"), bool) else None))
    return tools


def _tool_choice(value: Any, tools: list[Tool]) -> tuple[ToolChoice | None, bool | None]:
    if value is None:
        return None, None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in ("auto", "any", "tool", "none"):
        raise InvalidRequest("'tool_choice.type' must be auto, any, tool or none", "tool_choice")
    parallel = False if value.get("disable_parallel_tool_use") is True else None
    if kind != "tool":
        return ToolChoice(mode="required" if kind == "any" else kind), parallel
    name = value.get("name")
    if not isinstance(name, str) or name not in {t.name for t in tools}:
        raise InvalidRequest("'tool_choice.name' must name one of the request's tools", "tool_choice.name")
    return ToolChoice(mode="tool", name=name), parallel


def _reasoning(thinking: Any, effort: Any, max_tokens: int | None) -> Reasoning | None:
    if thinking is None:
        return Reasoning(effort=effort) if effort else None
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind == "disabled":
        return Reasoning(budget=0)
    shown = thinking.get("display") != "omitted" if isinstance(thinking, dict) else True
    if kind in ("adaptive", "between_tools"):
        return Reasoning(effort=effort, include_thoughts=shown)
    if kind != "enabled":
        raise InvalidRequest("'thinking.type' must be enabled, adaptive or disabled", "thinking.type")
    budget = thinking.get("budget_tokens")
    if not _is_int(budget) or budget < MIN_THINKING_BUDGET:
        raise InvalidRequest(f"'thinking.budget_tokens' must be an integer of at least {MIN_THINKING_BUDGET}",
                             "thinking.budget_tokens")
    if max_tokens is not None and budget >= max_tokens:
        raise InvalidRequest("'max_tokens' must be greater than 'thinking.budget_tokens'", "max_tokens")
    return Reasoning(effort=effort, budget=budget, include_thoughts=shown)


def _stop_sequences(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise InvalidRequest("'stop_sequences' must be an array of strings", "stop_sequences")
    return list(value)


def _number(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise InvalidRequest(f"'{key}' must be a number from 0 to 1", key)
    return float(value)


def _flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise InvalidRequest(f"'{key}' must be a boolean", key)
    return bool(value)


def _string(obj: Any, key: str, where: str) -> str:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, str):
        raise InvalidRequest(f"{where}.{key} must be a string", f"{where}.{key}")
    return value


def _dump(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return ""


# -- client side: answers ------------------------------------------------------------------


def render_response(reply: Reply, ctx: StreamContext) -> bytes:
    """A complete non-stream Message; reply.usage is what was charged."""
    content: list[dict[str, Any]] = []
    for part in reply.parts:
        if isinstance(part, Text) and part.text:
            content.append({"type": "text", "text": part.text})
        elif isinstance(part, Thinking):
            signature = _client_signature(part.signature)
            content.append({"type": "redacted_thinking", "data": part.redacted} if part.redacted else
                           {"type": "thinking", "thinking": part.text, "signature": signature})
        elif isinstance(part, ToolCall):
            n = sum(block["type"] == "tool_use" for block in content)
            content.append({"type": "tool_use", "id": _client_call_id(part.id, part.signature, ctx, n),
                            "name": part.name, "input": parse_arguments(part.arguments)})
    has_tools = any(block["type"] == "tool_use" for block in content)
    stop_reason = _stop_reason(reply.finish, reply.stop_sequence, has_tools)
    return orjson.dumps({
        "id": _message_id(ctx), "type": "message", "role": "assistant", "model": ctx.model, "content": content,
        "stop_reason": stop_reason, "stop_sequence": reply.stop_sequence if stop_reason == "stop_sequence" else None,
        "usage": _client_usage(reply.usage or Usage()),
    })


def _message_id(ctx: StreamContext) -> str:
    return "msg_" + ctx.request_id.removeprefix("req_")


def _client_call_id(call_id: str | None, signature: str | None, ctx: StreamContext, index: int) -> str:
    """A tool_use id the caller can hand back: sanitized, with a Gemini thoughtSignature packed in."""
    plain = sanitize_call_id(call_id) if call_id else f"toolu_{ctx.request_id.removeprefix('req_')}_{index}"
    return pack_call_id(plain, signature)


def _stop_reason(finish: Finish, stop_sequence: str | None, has_tools: bool) -> str:
    if finish == "length":
        return "max_tokens"
    if finish == "content_filter":
        return "refusal"
    if finish == "tool_calls" or has_tools:  # a Gemini tool turn ends with STOP: still a tool_use turn
        return "tool_use"
    return "stop_sequence" if stop_sequence else "end_turn"


def _client_usage(usage: Usage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "input_tokens": max(usage.in_total - usage.cache_read - usage.cache_write, 0),
        "cache_creation_input_tokens": usage.cache_write,
        "cache_read_input_tokens": usage.cache_read,
        "output_tokens": usage.out_total,
    }
    if usage.reasoning:
        out["output_tokens_details"] = {"thinking_tokens": usage.reasoning}
    return out


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class StreamWriter:
    """Internal stream events as Anthropic SSE: message_start first, content blocks indexed 0, 1, 2...
    with exactly one open at a time, then message_delta (the charged usage) and message_stop.

    Tool calls must arrive one after another (as every upstream streams them): arguments for a call
    whose block was already closed cannot be sent and are dropped."""

    def __init__(self, ctx: StreamContext) -> None:
        self.ctx = ctx
        self.started = False
        self.ended = False
        self.index = 0  # the index of the open block, or of the next one
        self.open: str | None = None  # "text" | "thinking" | "tool_use"
        self.signed = False  # the open thinking block got its signature
        self.tool = -1  # the internal index of the open tool_use block
        self.tools: set[int] = set()  # internal tool indices that had a block
        self.finish: Finish = "stop"
        self.stop_sequence: str | None = None

    def write(self, event: Event) -> bytes:
        if self.ended:
            return b""
        if isinstance(event, StreamError):
            return self.error(event.message, event.kind)
        out = self._start()
        if isinstance(event, TextDelta):
            if event.text:
                if self.open != "text":
                    out += self._open("text", {"type": "text", "text": ""})
                out += self._delta({"type": "text_delta", "text": event.text})
        elif isinstance(event, ThinkingDelta):
            out += self._thinking(event)
        elif isinstance(event, ToolCallDelta):
            out += self._tool_call(event)
        elif isinstance(event, End):
            self.finish, self.stop_sequence = event.finish, event.stop_sequence
            out += self._close_block()
        return out  # Start and UsageUpdate add nothing: usage goes out once, with what was charged

    def close(self, usage: Usage) -> bytes:
        if self.ended:
            return b""
        out = self._start() + self._close_block()
        self.ended = True
        stop_reason = _stop_reason(self.finish, self.stop_sequence, bool(self.tools))
        delta = {"stop_reason": stop_reason,
                 "stop_sequence": self.stop_sequence if stop_reason == "stop_sequence" else None}
        out += _sse("message_delta", {"type": "message_delta", "delta": delta, "usage": _client_usage(usage)})
        return out + _sse("message_stop", {"type": "message_stop"})

    def error(self, message: str, code: str) -> bytes:
        if self.ended:
            return b""
        self.ended = True
        return stream_error_event(message, code, self.ctx.request_id)

    def _start(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        message: dict[str, Any] = {
            "id": _message_id(self.ctx), "type": "message", "role": "assistant", "model": self.ctx.model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self.ctx.prompt_estimate, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0, "output_tokens": 1},
        }
        return _sse("message_start", {"type": "message_start", "message": message})

    def _thinking(self, event: ThinkingDelta) -> bytes:
        if event.redacted:
            out = self._open("redacted_thinking", {"type": "redacted_thinking", "data": event.redacted})
            return out + self._close_block()
        out = b""
        if event.text:
            if self.open != "thinking" or self.signed:  # thinking after a signature starts a new block
                out += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            out += self._delta({"type": "thinking_delta", "thinking": event.text})
        if event.signature:
            if self.open != "thinking" or self.signed:
                out += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            out += self._delta({"type": "signature_delta", "signature": _client_signature(event.signature)})
            self.signed = True
        return out

    def _tool_call(self, event: ToolCallDelta) -> bytes:
        out = b""
        if self.open != "tool_use" or event.index != self.tool:
            if event.index in self.tools:
                return b""  # its block is closed: see the class docstring
            self.tools.add(event.index)
            block = {"type": "tool_use", "id": _client_call_id(event.id, event.signature, self.ctx, event.index),
                     "name": event.name or "", "input": {}}
            out = self._open("tool_use", block)
            self.tool = event.index
        if event.arguments:
            out += self._delta({"type": "input_json_delta", "partial_json": event.arguments})
        return out

    def _open(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close_block()
        self.open, self.signed = kind, False
        return out + _sse("content_block_start", {"type": "content_block_start", "index": self.index,
                                                  "content_block": block})

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return _sse("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})

    def _close_block(self) -> bytes:
        if self.open is None:
            return b""
        out = b""
        if self.open == "thinking" and not self.signed:
            out = self._delta({"type": "signature_delta", "signature": UNSIGNED_THINKING})
        out += _sse("content_block_stop", {"type": "content_block_stop", "index": self.index})
        self.open = None
        self.index += 1
        return out


# -- client side: errors and models ----------------------------------------------------------

ERROR_TYPES = frozenset({
    "invalid_request_error", "authentication_error", "billing_error", "permission_error", "not_found_error",
    "request_too_large", "rate_limit_error", "api_error", "timeout_error", "overloaded_error",
})
_STATUS_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
    504: "timeout_error", 529: "overloaded_error",
}
# A gateway or internal error code -> Anthropic's error type (first matching fragment wins).
_CODE_TYPES = (
    ("overload", "overloaded_error"), ("rate_limit", "rate_limit_error"), ("timeout", "timeout_error"),
    ("billing", "billing_error"), ("quota", "billing_error"), ("too_large", "request_too_large"),
    ("invalid_request", "invalid_request_error"), ("authentication", "authentication_error"),
    ("api_key", "authentication_error"), ("permission", "permission_error"), ("not_allowed", "permission_error"),
    ("not_found", "not_found_error"),
)


def _error_type(code: str | None) -> str:
    code = (code or "").lower()
    if code in ERROR_TYPES:
        return code
    return next((etype for fragment, etype in _CODE_TYPES if fragment in code), "api_error")


def error_body(status: int, message: str, code: str | None, param: str | None, request_id: str) -> bytes:
    """An error answer in Anthropic's shape; the SDK picks its exception class by status and reads
    error.type (`code` and `param` have no place in this dialect)."""
    etype = _STATUS_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return orjson.dumps({"type": "error", "error": {"type": etype, "message": message}, "request_id": request_id})


def cut_events(open_block: int | None, usage: Usage) -> bytes:
    """The end of a passed-through stream the gateway cut at the held limit, as Anthropic ends one that reached
    max_tokens: the open content block stopped, message_delta (stop_reason max_tokens, the output counted) and
    message_stop."""
    out = _sse("content_block_stop", {"type": "content_block_stop", "index": open_block}) \
        if open_block is not None else b""
    out += _sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "max_tokens",
                                                                      "stop_sequence": None},
                                  "usage": {"output_tokens": usage.out_total}})
    return out + _sse("message_stop", {"type": "message_stop"})


def stream_error_event(message: str, code: str, request_id: str) -> bytes:
    """The in-band error that makes the anthropic SDK raise, with the request id as the API's own errors carry it
    (a passed-through stream and a translated one alike)."""
    return _sse("error", {"type": "error", "error": {"type": _error_type(code), "message": message},
                          "request_id": request_id})


def model_object(model_id: str, display_name: str, created_unix: int) -> dict[str, Any]:
    created = datetime.fromtimestamp(created_unix, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"type": "model", "id": model_id, "display_name": display_name or model_id, "created_at": created}


def models_list(models: list[dict[str, Any]]) -> bytes:
    """GET /v1/models; has_more is always false so that the SDK does not page on."""
    return orjson.dumps({"data": models, "has_more": False,
                         "first_id": models[0]["id"] if models else None,
                         "last_id": models[-1]["id"] if models else None})
