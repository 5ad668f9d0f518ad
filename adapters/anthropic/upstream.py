"""Anthropic Messages, upstream side: the request for an Anthropic provider (built from the internal shape,
or the caller's own body passed through), and its answer, stream and usage read back. No I/O."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

from adapters.anthropic.common import MIN_THINKING_BUDGET, SIGNATURE_MARK, _dict, _is_int
from adapters.internal import (
    Chat,
    End,
    Event,
    Finish,
    InvalidRequest,
    Media,
    Message,
    Part,
    Reasoning,
    Reply,
    Start,
    StreamError,
    Text,
    Thinking,
    ThinkingDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    TextDelta,
    Usage,
    UsageUpdate,
    parse_arguments,
    sanitize_call_id,
    unpack_call_id,
)

ANTHROPIC_VERSION = "2023-06-01"
UPSTREAM_PATH = "/messages"
# Effort -> thinking budget for an Anthropic upstream; never more than half of max_tokens (see _thinking).
EFFORT_BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384}
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
MAX_CACHE_BREAKPOINTS = 4  # Anthropic refuses a fifth cache_control
OPENING_TEXT = "."  # the user turn put before a conversation that starts with the assistant
NO_RESULT_TEXT = "No result was provided for this tool call."
JSON_OBJECT_INSTRUCTION = "Answer with a single valid JSON object and nothing else."


# -- upstream side: requests -----------------------------------------------------------------


def auth_headers(api_key: str) -> dict[str, str]:
    """The API version always (every Messages request needs it), the key when the provider has one."""
    return {"anthropic-version": ANTHROPIC_VERSION, **({"x-api-key": api_key} if api_key else {})}


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
        self.open_block: int | None = None  # the index of the content block started and not yet stopped

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
            index = obj.get("index")
            self.open_block = index if _is_int(index) else None
            return self._block_start(index, obj.get("content_block"))
        if kind == "content_block_stop":
            self.open_block = None
            return []
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
