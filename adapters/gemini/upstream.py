"""The Gemini upstream side, for a provider speaking generateContent: build its requests (chat,
passthrough, embeddings), read its replies, streams and usage back into the internal shape. Pure; no I/O."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson

from adapters.gemini.common import (
    _ERROR_STATUS, _f, _int, _key, _list, _model_path, _str, gemini_fetchable, valid_signature,
)
from adapters.gemini.schema import to_gemini_schema
from adapters.internal import (
    Chat, Embed, EmbedReply, End, Event, Finish, InvalidRequest, Media, Message, Part, Reply, Start,
    StreamError, Text, TextDelta, Thinking, ThinkingDelta, Tool, ToolCall, ToolCallDelta, ToolResult, Usage,
    UsageUpdate, parse_arguments, unpack_call_id,
)

__all__ = [
    "SKIP_SIGNATURE", "MAX_STOP_SEQUENCES", "MAX_EMBED_BATCH", "auth_headers", "remote_media",
    "gemini_fetchable", "build_request", "parse_response", "StreamReader", "normalize_usage",
    "passthrough_body", "build_embed_request", "parse_embed_response", "valid_signature",
]

SKIP_SIGNATURE = "skip_thought_signature_validator"  # Google's documented value for unsigned calls
MAX_STOP_SEQUENCES = 5
MAX_EMBED_BATCH = 100  # batchEmbedContents refuses more requests than this


# -- requests -----------------------------------------------------------------------------------


def auth_headers(api_key: str) -> dict[str, str]:
    return {"x-goog-api-key": api_key} if api_key else {}


def _all_media(chat: Chat) -> list[Media]:
    found: list[Media] = []
    for message in chat.messages:
        for part in message.parts:
            if isinstance(part, Media):
                found.append(part)
            elif isinstance(part, ToolResult):
                found.extend(p for p in part.content if isinstance(p, Media))
    return found


def remote_media(chat: Chat) -> list[Media]:
    """The media the relay must download and fill in (mime + data) before build_request: Gemini
    cannot fetch arbitrary URLs itself."""
    return [m for m in _all_media(chat) if m.data is None and m.url and not gemini_fetchable(m.url)]


_NAME_OK = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}")  # fullmatch: `$` passes a trailing newline
_EFFORT_BUDGET = {"minimal": 512, "low": 1024, "medium": 8192, "high": 24576}


def build_request(chat: Chat, upstream_model: str, max_output: int) -> tuple[str, bytes]:
    if chat.n > 1:
        raise InvalidRequest("n > 1 is not supported with this model; send one request per answer", "n")
    if len(chat.stop) > MAX_STOP_SEQUENCES:
        raise InvalidRequest(f"this model takes at most {MAX_STOP_SEQUENCES} stop sequences", "stop")
    body: dict[str, Any] = {"contents": _contents(chat.messages)}
    system = "\n\n".join(t.text for t in chat.system if t.text)
    if system:
        body["systemInstruction"] = {"parts": [{"text": system}]}
    if chat.tools:
        body["tools"] = [{"functionDeclarations": [_declaration(t) for t in chat.tools]}]
    if chat.tool_choice is not None and chat.tools:
        mode = {"auto": "AUTO", "none": "NONE", "required": "ANY", "tool": "ANY"}[chat.tool_choice.mode]
        config: dict[str, Any] = {"mode": mode}
        if chat.tool_choice.mode == "tool" and chat.tool_choice.name:
            config["allowedFunctionNames"] = [chat.tool_choice.name]
        body["toolConfig"] = {"functionCallingConfig": config}
    body["generationConfig"] = _upstream_config(chat, upstream_model, max_output)
    method = "streamGenerateContent?alt=sse" if chat.stream else "generateContent"
    return method_path(upstream_model, method), orjson.dumps(body)


def _declaration(tool: Tool) -> dict[str, Any]:
    if not _NAME_OK.fullmatch(tool.name):
        raise InvalidRequest("tool names must start with a letter or _ and use only letters, digits, "
                             "_ . : - (64 at most) for this model", "tools")
    decl: dict[str, Any] = {"name": tool.name}
    if tool.description:
        decl["description"] = tool.description
    schema = to_gemini_schema(tool.parameters)
    if schema.get("properties"):  # Gemini refuses an OBJECT with empty properties: leave it out
        decl["parameters"] = schema
    return decl


def _upstream_config(chat: Chat, model: str, max_output: int) -> dict[str, Any]:
    config: dict[str, Any] = {"maxOutputTokens": max_output}
    if chat.temperature is not None:
        config["temperature"] = min(max(chat.temperature, 0.0), 2.0)
    for key, value in (("topP", chat.top_p), ("topK", chat.top_k), ("seed", chat.seed),
                       ("presencePenalty", chat.presence_penalty), ("frequencyPenalty", chat.frequency_penalty)):
        if value is not None:
            config[key] = value
    if chat.stop:
        config["stopSequences"] = list(chat.stop)
    if chat.output_format is not None:
        config["responseMimeType"] = "application/json"
        if chat.output_format.kind == "json_schema" and chat.output_format.schema:
            config["responseSchema"] = to_gemini_schema(chat.output_format.schema)
    r = chat.reasoning
    if r is not None:
        thinking: dict[str, Any] = {}
        if r.budget is not None:
            thinking["thinkingBudget"] = r.budget
        elif r.effort is not None and re.search(r"gemini-[12](\.|-|$)", model):
            thinking["thinkingBudget"] = _EFFORT_BUDGET[r.effort]  # 2.x models know no thinkingLevel
        elif r.effort is not None:
            thinking["thinkingLevel"] = r.effort.upper()
        if r.include_thoughts and r.budget != 0:
            thinking["includeThoughts"] = True
        if thinking:
            config["thinkingConfig"] = thinking
    return config


def _contents(messages: list[Message]) -> list[dict[str, Any]]:
    names: dict[str, str] = {}  # plain call id -> tool name, for functionResponse.name
    contents: list[dict[str, Any]] = []
    for message in messages:
        role = "model" if message.role == "assistant" else "user"
        parts = [p for part in message.parts for p in _upstream_parts(part, names)]
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    if not contents:
        raise InvalidRequest("the conversation has no content to send", "messages")
    for content in contents:  # Gemini 3 checks the first functionCall of each step for a signature
        first = next((p for p in content["parts"] if "functionCall" in p), None)
        if first is not None and "thoughtSignature" not in first:
            first["thoughtSignature"] = SKIP_SIGNATURE
    return contents


def _upstream_parts(part: Part, names: dict[str, str]) -> list[dict[str, Any]]:
    if isinstance(part, Text):
        return [{"text": part.text}] if part.text else []
    if isinstance(part, Media):
        return [_media_part(part)]
    if isinstance(part, ToolCall):
        plain, packed = unpack_call_id(part.id)
        names[plain] = part.name
        out: dict[str, Any] = {"functionCall": {"name": part.name, "args": parse_arguments(part.arguments)}}
        sig = part.signature if valid_signature(part.signature) else packed
        if valid_signature(sig):
            out["thoughtSignature"] = sig
        return [out]
    if isinstance(part, ToolResult):
        name = part.name or names.get(unpack_call_id(part.call_id)[0])
        if not name:
            raise InvalidRequest("a tool result answers no earlier tool call and has no name", "messages")
        text = "".join(p.text for p in part.content if isinstance(p, Text))
        response: dict[str, Any] = {"error": text} if part.is_error else _tool_output(text)
        return [{"functionResponse": {"name": name, "response": response}}] + \
            [_media_part(p) for p in part.content if isinstance(p, Media)]
    return []  # Thinking: never replayed (other providers' signatures would fail Gemini's check)


def _tool_output(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text) if text else ""
    except orjson.JSONDecodeError:
        value = text
    return value if isinstance(value, dict) else {"result": value}


def _media_part(media: Media) -> dict[str, Any]:
    if media.data is not None:
        return {"inlineData": {"mimeType": media.mime or "application/octet-stream", "data": media.data}}
    url = media.url or ""
    if not gemini_fetchable(url):
        raise InvalidRequest("a media URL Gemini cannot fetch was not downloaded; send it inline", "messages")
    file: dict[str, Any] = {"fileUri": url}
    if media.mime:
        file["mimeType"] = media.mime
    return {"fileData": file}


def method_path(upstream_model: str, method: str) -> str:
    """The URL path of a model's method, relative to the base URL: /models/{m}:{method}."""
    return f"/{_model_path(upstream_model)}:{method}"


def with_upstream_model(body: dict[str, Any], upstream_model: str) -> bytes:
    """Same-format embeddings and token counts: every model name in the body replaced (batch requests
    carry one each, countTokens may wrap a whole generateContentRequest)."""
    out = dict(body)
    model = _model_path(upstream_model)
    if "model" in out:
        out["model"] = model
    if isinstance(out.get("requests"), list):
        out["requests"] = [{**r, "model": model} if isinstance(r, dict) else r for r in out["requests"]]
    key = _key(out, "generateContentRequest")
    if isinstance(out.get(key), dict) and "model" in out[key]:
        out[key] = {**out[key], "model": model}
    return orjson.dumps(out)


def passthrough_body(body: dict[str, Any], upstream_model: str, max_output: int) -> bytes:
    """Same-format traffic: the client's body with only the output limit (and a body model) replaced."""
    out = dict(body)
    if "model" in out:
        out["model"] = _model_path(upstream_model)
    key = _key(out, "generationConfig")
    config = dict(out[key]) if isinstance(out.get(key), dict) else {}
    config.pop("max_output_tokens", None)
    config["maxOutputTokens"] = max_output
    out[key] = config
    return orjson.dumps(out)


def build_embed_request(embed: Embed, upstream_model: str) -> tuple[str, bytes]:
    if len(embed.inputs) > MAX_EMBED_BATCH:
        raise InvalidRequest(f"this model embeds at most {MAX_EMBED_BATCH} inputs per request", "input")
    model = _model_path(upstream_model)
    requests = []
    for text in embed.inputs:
        req: dict[str, Any] = {"model": model, "content": {"parts": [{"text": text}]}}
        if embed.task_type:
            req["taskType"] = embed.task_type
        if embed.dimensions:
            req["outputDimensionality"] = embed.dimensions
        requests.append(req)
    return f"/{model}:batchEmbedContents", orjson.dumps({"requests": requests})


def parse_embed_response(obj: Any) -> EmbedReply:
    entries = _f(obj, "embeddings")
    if entries is None and isinstance(_f(obj, "embedding"), dict):
        entries = [obj["embedding"]]
    vectors = [[float(x) for x in _list(_f(e, "values")) if isinstance(x, (int, float))] for e in _list(entries)]
    return EmbedReply(vectors, usage=None)


# -- replies, streams and usage ------------------------------------------------------------------

_FILTERED = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
                       "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "LANGUAGE", "MODEL_ARMOR", "JAILBREAK"})


def _finish(reason: Any, has_calls: bool) -> Finish:
    reason = str(reason).upper()
    if reason == "MAX_TOKENS":
        return "length"
    if reason in _FILTERED:
        return "content_filter"
    return "tool_calls" if has_calls else "stop"  # STOP, OTHER, MALFORMED_FUNCTION_CALL, ...


def normalize_usage(obj: Any) -> Usage | None:
    """usageMetadata: promptTokenCount includes cachedContentTokenCount; output = candidates + thoughts."""
    if not isinstance(obj, dict):
        return None
    prompt = _int(_f(obj, "promptTokenCount")) + _int(_f(obj, "toolUsePromptTokenCount"))
    thoughts = _int(_f(obj, "thoughtsTokenCount"))
    candidates = _f(obj, "candidatesTokenCount")
    if candidates is None:  # left out on some blocked / MAX_TOKENS answers: derive it from the total
        candidates = _int(_f(obj, "totalTokenCount")) - prompt - thoughts
    out = max(_int(candidates), 0) + thoughts
    return Usage(in_total=prompt, out_total=out, cache_read=_int(_f(obj, "cachedContentTokenCount")),
                 reasoning=thoughts)


def _call_id(given: Any, response_id: str, index: int, name: str, args: str) -> str:
    if isinstance(given, str) and given:
        return given
    seed = response_id or hashlib.sha256(f"{name}\0{args}".encode()).hexdigest()[:12]
    return f"call_{seed}_{index}"


def _candidate(obj: dict[str, Any]) -> dict[str, Any]:
    candidates = _f(obj, "candidates")
    first = candidates[0] if isinstance(candidates, list) and candidates else None
    return first if isinstance(first, dict) else {}


def _parts_of(candidate: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in _list(_f(_f(candidate, "content"), "parts")) if isinstance(p, dict)]


def _blocked(obj: dict[str, Any]) -> bool:
    return bool(_f(_f(obj, "promptFeedback"), "blockReason")) and not _f(obj, "candidates")


def parse_response(obj: Any) -> Reply:
    if not isinstance(obj, dict):
        return Reply(id="", model="", parts=[], finish="stop")
    response_id = _str(_f(obj, "responseId"))
    candidate = _candidate(obj)
    parts: list[Part] = []
    for raw in _parts_of(candidate):
        text, call = raw.get("text"), _f(raw, "functionCall")
        sig = _f(raw, "thoughtSignature")
        if isinstance(text, str) and raw.get("thought") is True:
            parts.append(Thinking(text, sig if valid_signature(sig) else None))
        elif isinstance(text, str) and text:
            if parts and isinstance(parts[-1], Text):
                parts[-1].text += text
            else:
                parts.append(Text(text))
        elif isinstance(call, dict):
            parts.append(_tool_call(call, sig, response_id, sum(isinstance(p, ToolCall) for p in parts)))
    has_calls = any(isinstance(p, ToolCall) for p in parts)
    finish = "content_filter" if _blocked(obj) else _finish(_f(candidate, "finishReason"), has_calls)
    return Reply(id=response_id, model=_str(_f(obj, "modelVersion")), parts=parts, finish=finish,
                 usage=normalize_usage(_f(obj, "usageMetadata")))


def _tool_call(call: dict[str, Any], sig: Any, response_id: str, index: int) -> ToolCall:
    name = _str(_f(call, "name"))
    args = _f(call, "args")
    arguments = orjson.dumps(args if isinstance(args, dict) else {}).decode()
    return ToolCall(_call_id(_f(call, "id"), response_id, index, name, arguments), name, arguments,
                    sig if valid_signature(sig) else None)


_STATUS_KIND = {"RESOURCE_EXHAUSTED": "rate_limited", "UNAVAILABLE": "overloaded", "INVALID_ARGUMENT":
                "invalid_request", "DEADLINE_EXCEEDED": "timeout", "FAILED_PRECONDITION": "invalid_request"}


class StreamReader:
    """:streamGenerateContent?alt=sse, where every chunk is a whole GenerateContentResponse holding its
    new parts; the chunk with a finishReason (or a blocked prompt) ends the answer."""

    def __init__(self) -> None:
        self._started = self._done = False
        self._calls = 0
        self._response_id = ""

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, event: str, data: bytes) -> list[Event]:
        if self._done or not data.strip():
            return []
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return [StreamError("the upstream sent a chunk that is not JSON", "server_error")]
        if not isinstance(obj, dict):
            return [StreamError("the upstream sent a chunk that is not an object", "server_error")]
        if isinstance(obj.get("error"), dict):
            err = obj["error"]
            status = _str(err.get("status")).upper() or _ERROR_STATUS.get(_int(err.get("code")), "")
            kind = _STATUS_KIND.get(status, "server_error")
            return [StreamError(_str(err.get("message")) or "upstream error", kind)]
        events: list[Event] = []
        if not self._started:
            self._started = True
            self._response_id = _str(_f(obj, "responseId"))
            events.append(Start(id=self._response_id, model=_str(_f(obj, "modelVersion"))))
        candidate = _candidate(obj)
        for raw in _parts_of(candidate):
            events.extend(self._part(raw))
        reason = _f(candidate, "finishReason")
        finishing = reason is not None or _blocked(obj)
        usage = normalize_usage(_f(obj, "usageMetadata"))
        if finishing:
            self._done = True
            finish = "content_filter" if reason is None else _finish(reason, self._calls > 0)
            events.append(End(finish))
        if usage is not None:
            events.append(UsageUpdate(usage, final=finishing))
        return events

    def _part(self, raw: dict[str, Any]) -> list[Event]:
        text, call, sig = raw.get("text"), _f(raw, "functionCall"), _f(raw, "thoughtSignature")
        if isinstance(text, str) and raw.get("thought") is True:
            sig = sig if valid_signature(sig) else None
            return [ThinkingDelta(text, sig)] if text or sig else []
        if isinstance(text, str):
            return [TextDelta(text)] if text else []
        if isinstance(call, dict):
            tc = _tool_call(call, sig, self._response_id, self._calls)
            self._calls += 1
            return [ToolCallDelta(self._calls - 1, tc.arguments, tc.id, tc.name, tc.signature)]
        return []
