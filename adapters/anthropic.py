"""Anthropic Messages wire format, both sides: a /v1/messages caller's request, answer, stream, errors and
models list (client side), and an Anthropic upstream's request, answer and stream (upstream side). No I/O."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime, timezone
from typing import Any, TypeGuard

import orjson

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
    Start,
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
    UsageUpdate,
    estimate_prompt as estimate_chat,
    pack_call_id,
    parse_arguments,
    sanitize_call_id,
    unpack_call_id,
)

ANTHROPIC_VERSION = "2023-06-01"
UPSTREAM_PATH = "/messages"
MIN_THINKING_BUDGET = 1024  # Anthropic refuses smaller budget_tokens
# Effort -> thinking budget for an Anthropic upstream; never more than half of max_tokens (see _thinking).
EFFORT_BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384}
_EFFORTS: dict[str, Any] = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
MAX_CACHE_BREAKPOINTS = 4  # Anthropic refuses a fifth cache_control
# Thinking this gateway streams to an Anthropic client never comes from Claude (Claude is passthrough), so
# its signature is marked: "tokentoll:sig:<the upstream's signature>", or UNSIGNED_THINKING when the upstream
# gave none (Claude clients drop unsigned thinking). parse_request takes the mark off; passthrough to
# Claude drops marked thinking, whose signature Claude would refuse.
SIGNATURE_MARK = "tokentoll:"
UNSIGNED_THINKING = "tokentoll:none"
OPENING_TEXT = "."  # the user turn put before a conversation that starts with the assistant
NO_RESULT_TEXT = "No result was provided for this tool call."
JSON_OBJECT_INSTRUCTION = "Answer with a single valid JSON object and nothing else."

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


def estimate_prompt(body: Any) -> int:
    """The prompt's tokens for same-format passthrough: blocks and tools that only Anthropic knows are
    counted by their JSON size instead of refused."""
    return estimate_chat(_parse_prompt(body, strict=False))


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
            parts.append(Text(_dump(block)))
    return parts


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


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


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
        return _sse("error", {"type": "error", "error": {"type": _error_type(code), "message": message}})

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


def stream_error_event(message: str, code: str, request_id: str) -> bytes:
    """The in-band error that makes the anthropic SDK raise (a passthrough stream, no writer)."""
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


# -- upstream side: requests -----------------------------------------------------------------


def auth_headers(api_key: str) -> dict[str, str]:
    return {"x-api-key": api_key, "anthropic-version": ANTHROPIC_VERSION}


def build_request(chat: Chat, upstream_model: str, max_output: int) -> tuple[str, bytes]:
    """A Messages request for an Anthropic upstream, told exactly max_output as max_tokens."""
    if chat.n > 1:
        raise InvalidRequest("Anthropic models give one answer per request: 'n' must be 1", "n")
    body: dict[str, Any] = {"model": upstream_model, "max_tokens": max_output}
    system = [_text_block(t) for t in chat.system if t.text.strip()]
    if chat.output_format is not None and (chat.output_format.kind == "json_object" or not chat.output_format.schema):
        system.append({"type": "text", "text": JSON_OBJECT_INSTRUCTION})
    messages = _conversation(chat.messages)
    _limit_cache_breakpoints([*system, *(b for m in messages for b in m["content"])])
    if system:
        body["system"] = system
    body["messages"] = messages
    thinking = _thinking(chat.reasoning, max_output)
    if thinking is not None and thinking["type"] == "enabled" and not _loop_starts_with_thinking(messages):
        thinking = None
    thinking_on = thinking is not None and thinking["type"] == "enabled"
    if thinking is not None:
        body["thinking"] = thinking
    if chat.tools:
        body["tools"] = [_tool_block(tool) for tool in chat.tools]
        choice = _upstream_tool_choice(chat, thinking_on)
        if choice is not None:
            body["tool_choice"] = choice
    stops = [s for s in chat.stop if s.strip()]
    if stops:
        body["stop_sequences"] = stops
    if not thinking_on:  # with thinking: temperature only 1 or unset, no top_k, top_p from 0.95
        if chat.temperature is not None:  # newer Claude models refuse temperature and top_p together
            body["temperature"] = min(max(chat.temperature, 0.0), 1.0)
        elif chat.top_p is not None:
            body["top_p"] = chat.top_p
        if chat.top_k is not None:
            body["top_k"] = chat.top_k
    elif chat.top_p is not None and 0.95 <= chat.top_p <= 1:
        body["top_p"] = chat.top_p
    if chat.output_format is not None and chat.output_format.kind == "json_schema" and chat.output_format.schema:
        body["output_config"] = {"format": {"type": "json_schema", "schema": chat.output_format.schema}}
    if chat.user:
        body["metadata"] = {"user_id": chat.user}
    if chat.stream:
        body["stream"] = True
    return UPSTREAM_PATH, orjson.dumps(body)


def _text_block(text: Text) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": text.text}
    if text.cache:
        block["cache_control"] = {"type": "ephemeral"}
    return block


def _conversation(messages: list[Message]) -> list[dict[str, Any]]:
    """Turns Anthropic accepts: same-role turns merged, a user turn first, each tool_use answered by
    tool_result blocks at the head of the very next user turn, no empty or blank text blocks."""
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        blocks = _blocks(message, f"messages.{i}")
        if not blocks:
            continue
        if turns and turns[-1]["role"] == message.role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": message.role, "content": blocks})
    turns = _pair_tool_results(turns)
    if not turns or turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": [{"type": "text", "text": OPENING_TEXT}]})
    last = turns[-1]
    while last["role"] == "assistant" and last["content"] and last["content"][-1]["type"] == "text":
        block = last["content"][-1]  # a prefill may not end in whitespace
        block["text"] = block["text"].rstrip()
        if block["text"]:
            break
        last["content"].pop()
    if not last["content"]:
        turns.pop()
    return turns


def _blocks(message: Message, where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for part in message.parts:
        if isinstance(part, Text):
            if part.text.strip():
                blocks.append(_text_block(part))
        elif isinstance(part, Media):
            blocks.append(_media_block(part, where))
        elif isinstance(part, Thinking):
            if message.role != "assistant":
                continue
            if part.redacted:
                blocks.append({"type": "redacted_thinking", "data": part.redacted})
            elif part.signature:  # unsigned thinking cannot be replayed
                blocks.append({"type": "thinking", "thinking": part.text, "signature": part.signature})
        elif isinstance(part, ToolCall):
            blocks.append({"type": "tool_use", "id": _upstream_call_id(part.id), "name": part.name,
                           "input": parse_arguments(part.arguments)})
        else:
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": _upstream_call_id(part.call_id)}
            content = [_text_block(p) if isinstance(p, Text) else _media_block(p, where)
                       for p in part.content if not isinstance(p, Text) or p.text.strip()]
            if content:
                result["content"] = content
            if part.is_error:
                result["is_error"] = True
            blocks.append(result)
    return blocks


def _upstream_call_id(call_id: str) -> str:
    return sanitize_call_id(unpack_call_id(call_id)[0])


def _media_block(media: Media, where: str) -> dict[str, Any]:
    mime = media.mime.lower()
    mime = "image/jpeg" if mime == "image/jpg" else mime
    title = {"title": media.name} if media.name else {}
    if media.data is not None:
        if mime in IMAGE_TYPES:
            return {"type": "image", "source": {"type": "base64", "media_type": mime, "data": media.data}}
        if mime == "application/pdf":
            return {"type": "document", "source": {"type": "base64", "media_type": mime, "data": media.data}, **title}
        if mime == "text/plain":
            try:
                text = base64.b64decode(media.data, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise InvalidRequest("a text/plain file must be UTF-8 text in base64", where) from None
            return {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": text}, **title}
    elif media.url:
        if mime == "application/pdf" or (not mime and media.url.lower().split("?")[0].endswith(".pdf")):
            return {"type": "document", "source": {"type": "url", "url": media.url}, **title}
        if not mime or mime.startswith("image/"):
            return {"type": "image", "source": {"type": "url", "url": media.url}}
    raise InvalidRequest(f"Anthropic models accept JPEG, PNG, GIF and WebP images, PDF and plain-text documents; "
                         f"not '{mime[:60] or 'an empty file'}'", where)


def _pair_tool_results(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every assistant tool_use gets its tool_result at the head of the next turn (a placeholder error
    result when none came); results that answer no call of the turn before become plain text."""
    out: list[dict[str, Any]] = []
    pending: list[str] = []
    for turn in turns:
        if turn["role"] == "assistant":
            if pending:
                out.append({"role": "user", "content": [_placeholder(i) for i in pending]})
            pending = []
            kept: list[dict[str, Any]] = []
            for block in turn["content"]:
                if block["type"] == "tool_use":
                    if block["id"] in pending:  # the same call twice (merged turns): Anthropic wants unique ids
                        continue
                    pending.append(block["id"])
                kept.append(block)
            turn["content"] = kept
            out.append(turn)
            continue
        answers: dict[str, dict[str, Any]] = {}
        rest: list[dict[str, Any]] = []
        for block in turn["content"]:
            call_id = block.get("tool_use_id") if block["type"] == "tool_result" else None
            if call_id is None:
                rest.append(block)
            elif call_id in pending and call_id not in answers:
                answers[call_id] = block
            else:
                label = "Tool error" if block.get("is_error") else "Tool result"
                rest.append({"type": "text", "text": f"[{label} for call {call_id}]"})
                rest.extend(block.get("content", ()))
        turn["content"] = [answers.get(i) or _placeholder(i) for i in pending] + rest
        pending = []
        out.append(turn)
    if pending:
        out.append({"role": "user", "content": [_placeholder(i) for i in pending]})
    return out


def _placeholder(call_id: str) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": call_id, "content": NO_RESULT_TEXT, "is_error": True}


def _limit_cache_breakpoints(blocks: list[dict[str, Any]]) -> None:
    """At most MAX_CACHE_BREAKPOINTS cache_control marks: the first (the prefix every later request
    shares) and the last ones (the longest prefixes of this conversation)."""
    marked = [b for b in blocks if "cache_control" in b]
    for block in marked[1:len(marked) - MAX_CACHE_BREAKPOINTS + 1]:
        del block["cache_control"]


def _thinking(reasoning: Reasoning | None, max_output: int) -> dict[str, Any] | None:
    """Anthropic's thinking config: a budget of at least 1024 and under max_tokens, else off."""
    if reasoning is None:
        return None
    if reasoning.budget == 0:
        return {"type": "disabled"}
    if reasoning.budget is not None:  # as asked, within Anthropic's bounds
        budget = min(max(reasoning.budget, MIN_THINKING_BUDGET), max_output - 1)
    else:  # an effort (or "think as you see fit"): leave at least half of max_tokens for the answer
        budget = min(EFFORT_BUDGETS[reasoning.effort or "medium"], max_output // 2)
    return {"type": "enabled", "budget_tokens": budget} if budget >= MIN_THINKING_BUDGET else None


def _tool_block(tool: Tool) -> dict[str, Any]:
    schema = dict(tool.parameters) if tool.parameters else {"type": "object", "properties": {}}
    if "type" not in schema:
        schema = {"type": "object", **schema}
    if schema["type"] != "object":
        raise InvalidRequest(f"tool '{tool.name[:64]}': Anthropic models need an object input schema", "tools")
    block: dict[str, Any] = {"name": tool.name, "input_schema": schema}
    if tool.description:
        block["description"] = tool.description
    if tool.strict:
        block["strict"] = True
    return block


def _upstream_tool_choice(chat: Chat, thinking_on: bool) -> dict[str, Any] | None:
    mode = chat.tool_choice.mode if chat.tool_choice else "auto"
    if thinking_on and mode in ("required", "tool"):
        mode = "auto"  # Anthropic refuses forced tool use while thinking
    choice: dict[str, Any] = {"type": {"required": "any"}.get(mode, mode)}
    if mode == "tool":
        choice["name"] = chat.tool_choice.name if chat.tool_choice else None
    if chat.parallel_tool_calls is False and mode != "none":
        choice["disable_parallel_tool_use"] = True
    return choice if chat.tool_choice is not None or len(choice) > 1 else None


def passthrough_body(body: dict[str, Any], upstream_model: str, max_output: int) -> bytes:
    """The caller's own Messages body with the upstream model and the held output limit. Also: a
    thinking budget that no longer fits under the lowered max_tokens is lowered with it, and thinking
    this gateway wrote for another provider's answer (SIGNATURE_MARK) is left out, as Claude refuses
    its signature (and then thinking stays off if the open tool loop would need it)."""
    out = dict(body)
    out["model"] = upstream_model
    out["max_tokens"] = max_output
    thinking = out.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if _is_int(budget) and budget >= max_output > MIN_THINKING_BUDGET:
            out["thinking"] = {**thinking, "budget_tokens": max_output - 1}
    messages = out.get("messages")
    if isinstance(messages, list):
        kept = _without_marked_thinking(messages)
        if kept is not messages:
            out["messages"] = kept
            if isinstance(thinking, dict) and thinking.get("type") != "disabled" and \
                    not _loop_starts_with_thinking(kept):
                del out["thinking"]
    return orjson.dumps(out)


def _marked_thinking(block: Any) -> bool:
    return isinstance(block, dict) and block.get("type") == "thinking" and \
        _str(block.get("signature")).startswith(SIGNATURE_MARK)


def _without_marked_thinking(messages: list[Any]) -> list[Any]:
    """The messages without gateway-marked thinking blocks; the same list when there are none."""
    out: list[Any] = []
    changed = False
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(_marked_thinking(b) for b in content):
            changed = True
            content = [b for b in content if not _marked_thinking(b)]
            if not content:
                continue  # Anthropic merges the same-role turns this leaves side by side
            message = {**message, "content": content}
        out.append(message)
    return out if changed else messages


def _loop_starts_with_thinking(messages: list[Any]) -> bool:
    """False when the last turn answers tool calls of an assistant turn that opens without thinking:
    with thinking on, Anthropic wants that turn to start with its signed thinking (else: thinking off)."""
    if len(messages) < 2 or not all(isinstance(m, dict) for m in messages[-2:]):
        return True
    results, calls = messages[-1].get("content"), messages[-2].get("content")
    if not isinstance(results, list) or not any(isinstance(b, dict) and b.get("type") == "tool_result"
                                                for b in results):
        return True
    first = calls[0] if isinstance(calls, list) and calls else None
    return isinstance(first, dict) and first.get("type") in ("thinking", "redacted_thinking")


# -- upstream side: answers and streams -------------------------------------------------------

_FINISH: dict[str, Finish] = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
    "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter",
}


def _finish(stop_reason: Any) -> Finish:
    return _FINISH.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _count(obj: Any, key: str) -> int | None:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if _is_int(value) and value >= 0 else None


def normalize_usage(obj: Any) -> Usage | None:
    """Anthropic usage: input_tokens EXCLUDES cache reads and writes; in_total includes them."""
    if not isinstance(obj, dict):
        return None
    cache_read = _count(obj, "cache_read_input_tokens") or 0
    cache_write = _count(obj, "cache_creation_input_tokens") or 0
    return Usage(in_total=(_count(obj, "input_tokens") or 0) + cache_read + cache_write,
                 out_total=_count(obj, "output_tokens") or 0, cache_read=cache_read, cache_write=cache_write,
                 reasoning=_count(obj.get("output_tokens_details"), "thinking_tokens") or 0)


def parse_response(obj: Any) -> Reply:
    """A non-stream Message; odd or missing fields give an empty answer, never an exception."""
    obj = obj if isinstance(obj, dict) else {}
    parts: list[Part] = []
    for block in obj.get("content") if isinstance(obj.get("content"), list) else ():
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str) and block["text"]:
            parts.append(Text(block["text"]))
        elif kind == "thinking":
            parts.append(Thinking(_str(block.get("thinking")), signature=_str(block.get("signature")) or None))
        elif kind == "redacted_thinking":
            parts.append(Thinking("", redacted=_str(block.get("data"))))
        elif kind == "tool_use":
            arguments = block.get("input") if isinstance(block.get("input"), dict) else {}
            parts.append(ToolCall(id=_str(block.get("id")), name=_str(block.get("name")),
                                  arguments=orjson.dumps(arguments).decode()))
    stop = obj.get("stop_sequence")
    return Reply(id=_str(obj.get("id")), model=_str(obj.get("model")), parts=parts,
                 finish=_finish(obj.get("stop_reason")), stop_sequence=stop if isinstance(stop, str) else None,
                 usage=normalize_usage(obj.get("usage")))


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


_ERROR_KINDS = {
    "overloaded_error": "overloaded", "rate_limit_error": "rate_limited", "api_error": "server_error",
    "invalid_request_error": "invalid_request", "timeout_error": "timeout", "authentication_error": "authentication",
    "permission_error": "permission", "not_found_error": "not_found", "billing_error": "billing",
    "request_too_large": "request_too_large",
}


class StreamReader:
    """Decodes an Anthropic upstream's SSE stream into internal events. Tool calls are numbered by
    appearance (never by Anthropic's block index); usage is merged from message_start and message_delta."""

    def __init__(self) -> None:
        self.done = False
        self.tools: dict[int, int] = {}  # Anthropic block index -> tool-call index
        self.usage: dict[str, Any] = {}  # the latest value of each Anthropic usage field

    def feed(self, event: str, data: bytes) -> list[Event]:
        if self.done:
            return []
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return []
        if not isinstance(obj, dict):
            return []
        kind = obj.get("type") or event
        if kind == "content_block_delta":
            return self._delta(obj.get("index"), obj.get("delta"))
        if kind == "content_block_start":
            return self._block_start(obj.get("index"), obj.get("content_block"))
        if kind == "message_start":
            message = _dict(obj.get("message"))
            self._merge(message.get("usage"))
            return [Start(id=_str(message.get("id")), model=_str(message.get("model"))),
                    UsageUpdate(self._usage(), final=False)]
        if kind == "message_delta":
            delta = _dict(obj.get("delta"))
            self._merge(obj.get("usage"))
            stop = delta.get("stop_sequence")
            return [End(_finish(delta.get("stop_reason")), stop if isinstance(stop, str) else None),
                    UsageUpdate(self._usage(), final=True)]
        if kind == "message_stop":
            self.done = True
        elif kind == "error":
            self.done = True
            error = _dict(obj.get("error"))
            etype = _str(error.get("type"))
            return [StreamError(message=_str(error.get("message")) or "upstream stream error",
                                kind=_ERROR_KINDS.get(etype, etype.removesuffix("_error") or "server_error"))]
        return []  # ping, content_block_stop and what this gateway does not translate

    def _block_start(self, index: Any, block: Any) -> list[Event]:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and _str(block.get("text")):
            return [TextDelta(block["text"])]
        if kind == "thinking":
            text, signature = _str(block.get("thinking")), _str(block.get("signature"))
            return [ThinkingDelta(text, signature=signature or None)] if text or signature else []
        if kind == "redacted_thinking":
            return [ThinkingDelta("", redacted=_str(block.get("data")))]
        if kind == "tool_use" and _is_int(index):
            self.tools[index] = len(self.tools)
            given = block.get("input")  # {} when streamed; arguments follow as input_json_delta
            arguments = orjson.dumps(given).decode() if isinstance(given, dict) and given else ""
            return [ToolCallDelta(index=self.tools[index], arguments=arguments, id=_str(block.get("id")),
                                  name=_str(block.get("name")))]
        return []

    def _delta(self, index: Any, delta: Any) -> list[Event]:
        kind = delta.get("type") if isinstance(delta, dict) else None
        if kind == "text_delta" and _str(delta.get("text")):
            return [TextDelta(delta["text"])]
        if kind == "thinking_delta" and _str(delta.get("thinking")):
            return [ThinkingDelta(delta["thinking"])]
        if kind == "signature_delta" and _str(delta.get("signature")):
            return [ThinkingDelta("", signature=delta["signature"])]
        if kind == "input_json_delta" and _is_int(index) and index in self.tools and _str(delta.get("partial_json")):
            return [ToolCallDelta(index=self.tools[index], arguments=delta["partial_json"])]
        return []  # citations_delta and deltas of untranslated blocks

    def _merge(self, usage: Any) -> None:
        """message_delta counts are cumulative: each present field replaces the earlier one."""
        for key in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "output_tokens"):
            value = _count(usage, key)
            if value is not None:
                self.usage[key] = value
        details = usage.get("output_tokens_details") if isinstance(usage, dict) else None
        if _count(details, "thinking_tokens") is not None:
            self.usage["output_tokens_details"] = details

    def _usage(self) -> Usage:
        return normalize_usage(self.usage) or Usage()
