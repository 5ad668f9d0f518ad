"""OpenAI Chat Completions and Embeddings, upstream side: an OpenAI-format provider serving another
dialect (the internal shape built into requests; answers, stream chunks and embeddings read back)."""

from __future__ import annotations

import base64
import binascii
import sys
from array import array
from typing import Any

import orjson

from adapters.internal import (
    Chat, Embed, EmbedReply, End, Event, Finish, InvalidRequest, Media, OutputFormat, Part, Reasoning, Reply, Start,
    StreamError, Text, TextDelta, Thinking, ThinkingDelta, Tool, ToolCall, ToolCallDelta, ToolChoice, ToolResult,
    UsageUpdate, data_url, unpack_call_id,
)
from adapters.openai import passthrough
from adapters.openai.common import EMPTY_PARAMETERS, finish_out, str_or_empty
from adapters.openai.passthrough import normalize_usage

__all__ = [
    "auth_headers", "build_request", "parse_response", "StreamReader", "normalize_usage", "passthrough_body",
    "build_embed_request", "parse_embed_response",
]

CHAT_PATH = "/chat/completions"
EMBED_PATH = "/embeddings"
MAX_STOP = 4  # OpenAI's limit on stop sequences
_FINISHES: dict[str, Finish] = {"stop": "stop", "length": "length", "tool_calls": "tool_calls",
                                "content_filter": "content_filter", "function_call": "tool_calls"}


# -- requests ---------------------------------------------------------------------------------


def auth_headers(api_key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def passthrough_body(body: dict[str, Any], upstream_model: str, max_output: int,
                     limit_field: str = "max_tokens") -> bytes:
    """Same-format traffic: the client's body with the model and output limit replaced and stream
    usage forced on (the existing `prepare` does exactly this)."""
    return passthrough.prepare("chat", body, upstream_model, max_output, limit_field).upstream_body


def build_request(chat: Chat, upstream_model: str, max_output: int,
                  limit_field: str = "max_tokens") -> tuple[str, bytes]:
    """A /chat/completions body told exactly `max_output` in `limit_field` (the provider's: max_tokens, which
    self-hosted engines read, or max_completion_tokens, which OpenAI's reasoning models require). n > 1 is
    refused: the internal Reply and stream events carry one choice, so the other answers could not reach the
    client."""
    if chat.n > 1:
        raise InvalidRequest("more than one answer per request (n > 1) cannot be served by this model", "n")
    if len(chat.stop) > MAX_STOP:
        raise InvalidRequest(f"this model accepts at most {MAX_STOP} stop sequences", "stop")
    body: dict[str, Any] = {"model": upstream_model, "messages": _messages_out(chat)}
    if chat.tools:  # OpenAI refuses tool_choice and parallel_tool_calls without tools
        body["tools"] = [_tool_out(t) for t in chat.tools]
        if chat.tool_choice is not None:
            body["tool_choice"] = _tool_choice_out(chat.tool_choice)
        if chat.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = chat.parallel_tool_calls
    if chat.output_format is not None:
        body["response_format"] = _response_format_out(chat.output_format)
    effort = _effort_out(chat.reasoning)
    if effort is not None:
        body["reasoning_effort"] = effort
    if chat.stop:
        body["stop"] = list(chat.stop)
    body[limit_field] = max_output
    for name in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "user"):
        value = getattr(chat, name)
        if value is not None:
            body[name] = value
    if chat.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return CHAT_PATH, orjson.dumps(body)


def _messages_out(chat: Chat) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    system = "\n\n".join(p.text for p in chat.system if p.text)
    if system:
        out.append({"role": "system", "content": system})
    pending: list[Part] = []  # the parts of consecutive user turns, sent together
    for message in chat.messages:
        if message.role == "user":
            pending.extend(message.parts)
            continue
        out.extend(_user_out(pending))
        pending = []
        assistant = _assistant_out(message.parts)
        if assistant is not None:
            out.append(assistant)
    out.extend(_user_out(pending))
    return out


def _user_out(parts: list[Part]) -> list[dict[str, Any]]:
    """Tool results first, one `tool` message each (OpenAI wants them right after the calls), then
    one user message: the images the results carried (tool messages hold text only), then the rest."""
    out: list[dict[str, Any]] = []
    content: list[dict[str, Any]] = []
    for result in (p for p in parts if isinstance(p, ToolResult)):
        call_id = unpack_call_id(result.call_id)[0]
        text = "\n".join(p.text for p in result.content if isinstance(p, Text))
        media = [p for p in result.content if isinstance(p, Media)]
        if media:
            text = text or "(the result's attachments follow in the next message)"
            content.append({"type": "text", "text": f"Attachments from the result of tool call {call_id}:"})
            content.extend(_media_out(p) for p in media)
        out.append({"role": "tool", "tool_call_id": call_id, "content": text})
    for part in parts:
        if isinstance(part, Text) and part.text:
            content.append({"type": "text", "text": part.text})
        elif isinstance(part, Media):
            content.append(_media_out(part))
    if len(content) == 1 and content[0]["type"] == "text":
        out.append({"role": "user", "content": content[0]["text"]})
    elif content:
        out.append({"role": "user", "content": content})
    return out


def _media_out(media: Media) -> dict[str, Any]:
    if media.mime.startswith("image/") or (media.data is None and not media.mime):
        image: dict[str, Any] = {"url": data_url(media)}
        if media.detail:
            image["detail"] = media.detail
        return {"type": "image_url", "image_url": image}
    if media.data is None:
        raise InvalidRequest("documents given by URL cannot be sent to this model's provider; send them inline",
                             "messages")
    if media.mime.startswith("text/"):  # a plain-text document: its text
        try:
            return {"type": "text", "text": base64.b64decode(media.data).decode("utf-8", "replace")}
        except (binascii.Error, ValueError):
            raise InvalidRequest("a text document is not valid base64", "messages") from None
    audio = {"audio/wav": "wav", "audio/x-wav": "wav", "audio/mpeg": "mp3", "audio/mp3": "mp3"}.get(media.mime)
    if audio:
        return {"type": "input_audio", "input_audio": {"data": media.data, "format": audio}}
    if media.mime.startswith("audio/") or media.mime.startswith("video/"):
        raise InvalidRequest("this kind of audio or video cannot be sent to this model's provider", "messages")
    name = media.name or ("document.pdf" if media.mime == "application/pdf" else "document")
    return {"type": "file", "file": {"file_data": data_url(media), "filename": name}}


def _assistant_out(parts: list[Part]) -> dict[str, Any] | None:
    """Text joined, tool calls with their plain ids; thinking is dropped (OpenAI takes none back)."""
    text = "".join(p.text for p in parts if isinstance(p, Text))
    calls = [{"id": unpack_call_id(p.id)[0], "type": "function",
              "function": {"name": p.name, "arguments": p.arguments or "{}"}}
             for p in parts if isinstance(p, ToolCall)]
    if not text and not calls:
        return None
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _tool_out(tool: Tool) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": tool.name}
    if tool.description:
        fn["description"] = tool.description
    fn["parameters"] = tool.parameters or dict(EMPTY_PARAMETERS)
    if tool.strict is not None:
        fn["strict"] = tool.strict
    return {"type": "function", "function": fn}


def _tool_choice_out(choice: ToolChoice) -> Any:
    if choice.mode == "tool":
        return {"type": "function", "function": {"name": choice.name}}
    return choice.mode


def _response_format_out(fmt: OutputFormat) -> dict[str, Any]:
    if fmt.kind == "json_object":
        return {"type": "json_object"}
    spec: dict[str, Any] = {"name": fmt.name or "response", "schema": fmt.schema or {"type": "object"}}
    if fmt.strict is not None:
        spec["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": spec}


EFFORT_LOW_MAX = 2048  # a thinking budget up to this is "low" effort...
EFFORT_MEDIUM_MAX = 8192  # ...up to this "medium", above it "high"


def _effort_out(reasoning: Reasoning | None) -> str | None:
    """The effort, or a budget's bucket. A budget of 0 (thinking off) or a dynamic one sends nothing:
    no effort value is accepted by every OpenAI model, and the non-reasoning ones refuse the field."""
    if reasoning is None:
        return None
    if reasoning.effort:
        return reasoning.effort
    budget = reasoning.budget
    if budget is None or budget <= 0:
        return None
    return "low" if budget <= EFFORT_LOW_MAX else "medium" if budget <= EFFORT_MEDIUM_MAX else "high"


# -- reading answers --------------------------------------------------------------------------


def _finish_in(reason: Any, has_calls: bool) -> Finish:
    finish = _FINISHES.get(reason, "stop") if isinstance(reason, str) else "stop"
    return finish_out(finish, has_calls)


def _arguments_in(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode() if isinstance(value, dict) else ""


def parse_response(obj: Any) -> Reply:
    """Choice 0 of a `chat.completion`: reasoning, text (a refusal as text), tool calls, usage."""
    obj = obj if isinstance(obj, dict) else {}
    reply_id = str_or_empty(obj.get("id"))
    choices = obj.get("choices") if isinstance(obj.get("choices"), list) else []
    choice = next((c for c in choices if isinstance(c, dict) and c.get("index", 0) == 0), {})
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    parts: list[Part] = []
    reasoning = str_or_empty(message.get("reasoning_content")) or str_or_empty(message.get("reasoning"))
    if reasoning:
        parts.append(Thinking(reasoning))
    content = message.get("content")
    if isinstance(content, list):  # some compatible servers send parts
        content = "".join(str_or_empty(p.get("text")) for p in content
                          if isinstance(p, dict) and p.get("type") in (None, "text"))
    text = str_or_empty(content) or str_or_empty(message.get("refusal"))
    if text:
        parts.append(Text(text))
    calls = message.get("tool_calls") if isinstance(message.get("tool_calls"), list) else []
    for k, call in enumerate(c for c in calls if isinstance(c, dict)):
        fn = call.get("function") if isinstance(call.get("function"), dict) else {}
        parts.append(ToolCall(str_or_empty(call.get("id")) or f"call_{reply_id}_{k}", str_or_empty(fn.get("name")),
                              _arguments_in(fn.get("arguments")) or "{}"))
    has_calls = any(isinstance(p, ToolCall) for p in parts)
    return Reply(id=reply_id, model=str_or_empty(obj.get("model")), parts=parts,
                 finish=_finish_in(choice.get("finish_reason"), has_calls), usage=normalize_usage(obj.get("usage")))


class StreamReader:
    """`chat.completion.chunk` events into internal events (choice 0; n > 1 is refused upstream of
    here). Tool calls are renumbered 0, 1, 2... in order of appearance: a delta with a new id is a
    new call even when the upstream reuses an index (trap 1); a repeated id or name is not sent again."""

    __slots__ = ("done", "_id", "_started", "_ended", "_final_usage", "_calls", "_last_key", "_count")

    def __init__(self) -> None:
        self.done = False
        self._id = ""
        self._started = False
        self._ended = False
        self._final_usage = False
        self._calls: dict[int, tuple[int, str | None]] = {}  # upstream index -> (our index, its id)
        self._last_key: int | None = None
        self._count = 0

    def feed(self, event: str, data: bytes) -> list[Event]:
        data = data.strip()
        if not data or self.done:
            return []
        if data == b"[DONE]":
            self.done = True
            return []
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            return [StreamError("the upstream sent a stream event that is not a JSON object", "server_error")]
        if obj.get("error"):
            return [_stream_error(obj["error"])]
        events: list[Event] = []
        if not self._started:
            self._started = True
            self._id = str_or_empty(obj.get("id"))
            events.append(Start(self._id, str_or_empty(obj.get("model"))))
        choices = obj.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, dict) and choice.get("index", 0) == 0:
                    self._choice(choice, events)
        usage = normalize_usage(obj.get("usage")) if obj.get("usage") else None
        if usage is not None:  # the usage-only chunk, or usage on the last content chunk, is the whole usage
            final = not choices or self._ended
            self._final_usage = self._final_usage or final
            events.append(UsageUpdate(usage, final))
        if self._ended and self._final_usage:  # complete even if the upstream omits [DONE]
            self.done = True
        return events

    def _choice(self, choice: dict[str, Any], events: list[Event]) -> None:
        delta = choice.get("delta")
        if isinstance(delta, dict) and not self._ended:
            thinking = str_or_empty(delta.get("reasoning_content")) or str_or_empty(delta.get("reasoning"))
            if thinking:
                events.append(ThinkingDelta(thinking))
            for key in ("content", "refusal"):
                text = str_or_empty(delta.get(key))
                if text:
                    events.append(TextDelta(text))
            calls = delta.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                if isinstance(call, dict):
                    out = self._call(call)
                    if out is not None:
                        events.append(out)
        reason = choice.get("finish_reason")
        if reason and not self._ended:
            self._ended = True
            events.append(End(_finish_in(reason, self._count > 0)))

    def _call(self, call: dict[str, Any]) -> ToolCallDelta | None:
        fn = call.get("function") if isinstance(call.get("function"), dict) else {}
        arguments = _arguments_in(fn.get("arguments"))
        call_id = str_or_empty(call.get("id")) or None
        raw = call.get("index")
        key = raw if isinstance(raw, int) and not isinstance(raw, bool) else self._last_key
        known = self._calls.get(key) if key is not None else None
        if known is not None and (call_id is None or call_id == known[1]):
            return ToolCallDelta(known[0], arguments) if arguments else None
        index = self._count
        self._count += 1
        key = -1 if key is None else key
        self._calls[key] = (index, call_id)
        self._last_key = key
        return ToolCallDelta(index, arguments, id=call_id or f"call_{self._id}_{index}",
                             name=str_or_empty(fn.get("name")))


def _stream_error(error: Any) -> StreamError:
    if not isinstance(error, dict):
        return StreamError(str_or_empty(error) or "the upstream reported an error", "server_error")
    code, etype = error.get("code"), str_or_empty(error.get("type"))
    label = f"{etype} {code}".lower()
    if code == 429 or "rate_limit" in label or "insufficient_quota" in label:
        kind = "rate_limited"
    elif code in (503, 529) or "overload" in label or "unavailable" in label:
        kind = "overloaded"
    elif code == 400 or "invalid_request" in label:
        kind = "invalid_request"
    else:
        kind = "server_error"
    return StreamError(str_or_empty(error.get("message")) or "the upstream reported an error", kind)


# -- embeddings -------------------------------------------------------------------------------


def build_embed_request(embed: Embed, upstream_model: str) -> tuple[str, bytes]:
    body: dict[str, Any] = {"model": upstream_model, "input": embed.inputs, "encoding_format": "float"}
    if embed.dimensions is not None:
        body["dimensions"] = embed.dimensions
    return EMBED_PATH, orjson.dumps(body)


def parse_embed_response(obj: Any) -> EmbedReply:
    """Vectors in input order (by `index`), floats or base64 float32; tolerant of odd shapes."""
    obj = obj if isinstance(obj, dict) else {}
    items = [d for d in obj.get("data") or () if isinstance(d, dict)] if isinstance(obj.get("data"), list) else []
    if all(isinstance(d.get("index"), int) for d in items):
        items.sort(key=lambda d: d["index"])
    vectors = []
    for item in items:
        value = item.get("embedding")
        if isinstance(value, str):
            vectors.append(_float32_decode(value))
        elif isinstance(value, list):
            vectors.append([float(x) for x in value if isinstance(x, (int, float)) and not isinstance(x, bool)])
    return EmbedReply(vectors, normalize_usage(obj.get("usage")))


def _float32_decode(text: str) -> list[float]:
    try:
        raw = base64.b64decode(text)
    except (binascii.Error, ValueError):
        return []
    values = array("f")
    values.frombytes(raw[: len(raw) - len(raw) % 4])
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()
