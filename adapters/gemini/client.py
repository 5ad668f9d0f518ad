"""The Gemini client side, for callers speaking generateContent: parse requests (chat, countTokens,
embeddings), render replies, streams, errors and model lists in Gemini's shape. Pure; no I/O."""

from __future__ import annotations

from typing import Any

import orjson

from adapters.gemini.common import _ERROR_STATUS, _f, _list, _model_path, _str, gemini_fetchable, valid_signature
from adapters.gemini.schema import from_gemini_schema
from adapters.internal import (
    Chat, Embed, EmbedReply, End, Event, Finish, InvalidRequest, Media, Message, OutputFormat, Part,
    Reasoning, Reply, StreamContext, StreamError, Text, TextDelta, Thinking, ThinkingDelta, Tool,
    ToolCall, ToolCallDelta, ToolChoice, ToolResult, Usage,
    parse_arguments, unpack_call_id,
)

__all__ = [
    "CHAT_METHODS", "EMBED_METHODS", "parse_request", "parse_count_request", "prompt_of",
    "count_tokens_body", "render_response", "StreamWriter", "error_body", "stream_error_event",
    "model_object", "models_list", "parse_embed_request", "render_embed",
]

CHAT_METHODS = ["generateContent", "streamGenerateContent", "countTokens"]
EMBED_METHODS = ["embedContent", "batchEmbedContents", "countTokens"]
_GEMINI_ONLY_PARTS = ("executableCode", "codeExecutionResult", "toolCall", "toolResponse")
_URLSAFE = str.maketrans("-_", "+/")

# -- small readers ------------------------------------------------------------------------------


def _number(obj: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = _f(obj, name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise InvalidRequest(f"generationConfig.{name} must be a number from {low:g} to {high:g}", name)
    return float(value)


MAX_INT = 2**31 - 1  # every integer field of generationConfig is an int32 at Google


def _count(obj: dict[str, Any], name: str, low: int = 1) -> int | None:
    value = _f(obj, name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():  # google-genai types topK as a float
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_INT:
        raise InvalidRequest(f"generationConfig.{name} must be an integer from {low} to {MAX_INT}", name)
    return value


def _std_base64(data: str) -> str:
    """google-genai sends bytes URL-safe encoded; other providers want the standard alphabet, padded
    (and a signature we rendered from another provider must come back exactly as it was)."""
    if "-" in data or "_" in data:
        data = data.translate(_URLSAFE)
    return data + "=" * (-len(data) % 4)


# -- requests -----------------------------------------------------------------------------------


def parse_request(body: dict[str, Any]) -> Chat:
    """A generateContent body as a Chat, for a non-Gemini upstream (refuses Gemini-only features)."""
    return _parse(body, strict=True)


def parse_count_request(body: dict[str, Any]) -> Chat:
    """countTokens: {"contents"} or {"generateContentRequest": {...}}; lenient, since it only counts."""
    inner = _f(body, "generateContentRequest")
    return _parse(inner if isinstance(inner, dict) else body, strict=False)


def prompt_of(body: dict[str, Any]) -> Chat:
    """The prompt of a same-format request, for the one prompt estimate: Gemini-only features are read, not
    refused (server-side tools such as googleSearch by their JSON)."""
    chat = _parse(body, strict=False)
    for tool in _list(_f(body, "tools")):
        other = {k: v for k, v in tool.items() if k not in _DECLS} if isinstance(tool, dict) else None
        if other:
            chat.tools.append(Tool("", "", other))
    return chat


_DECLS = ("functionDeclarations", "function_declarations")


def count_tokens_body(n: int) -> bytes:
    return orjson.dumps({"totalTokens": n})


def _parse(body: Any, strict: bool) -> Chat:
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    contents = _f(body, "contents")
    if not isinstance(contents, list) or not contents:
        raise InvalidRequest("'contents' must be a non-empty array", "contents")
    chat = Chat(messages=_messages(contents, strict))
    if strict and not chat.messages:  # every turn's parts empty (Gemini itself refuses a Content without parts)
        raise InvalidRequest("'contents' must hold at least one part with content", "contents")
    chat.system = _system(_f(body, "systemInstruction"))
    if strict and _f(body, "cachedContent"):
        raise InvalidRequest("'cachedContent' needs a Gemini model", "cachedContent")
    _generation_config(chat, _f(body, "generationConfig"), strict)
    chat.tools = _tools(_f(body, "tools"), strict)
    _tool_config(chat, _f(body, "toolConfig"))
    return chat


def _system(value: Any) -> list[Text]:
    if value is None:
        return []
    if isinstance(value, str):
        return [Text(value)] if value else []
    if not isinstance(value, dict) or not isinstance(_f(value, "parts"), list):
        raise InvalidRequest("'systemInstruction' must be a Content with parts", "systemInstruction")
    return [Text(p["text"]) for p in value["parts"] if isinstance(p, dict) and _str(p.get("text"))]


def _messages(contents: list[Any], strict: bool) -> list[Message]:
    messages: list[Message] = []
    pending: dict[str, list[str]] = {}  # tool name -> ids of its calls not answered yet, in order
    known: set[str] = set()
    for content in contents:
        if not isinstance(content, dict) or not isinstance(_f(content, "parts"), list):
            raise InvalidRequest("each entry of 'contents' must be an object with a 'parts' array", "contents")
        role = content.get("role") or "user"
        if role not in ("user", "model", "function"):
            raise InvalidRequest("'role' must be 'user' or 'model'", "contents")
        parts: list[Part] = []
        for raw in content["parts"]:
            if not isinstance(raw, dict):
                raise InvalidRequest("each entry of 'parts' must be an object", "contents")
            part = _part(raw, role == "model", strict)
            if isinstance(part, ToolCall):
                part.id = part.id or f"gcall_{len(known)}"
                known.add(part.id)
                pending.setdefault(part.name, []).append(part.id)
            elif isinstance(part, ToolResult):
                _pair(part, pending, known)
            if part is not None:
                parts.append(part)
        if parts:
            messages.append(Message("assistant" if role == "model" else "user", parts))
    return messages


def _pair(result: ToolResult, pending: dict[str, list[str]], known: set[str]) -> None:
    """A functionResponse answers the call with its id, else the oldest unanswered call of its name."""
    waiting = pending.get(result.name or "", [])
    if result.call_id in waiting:
        waiting.remove(result.call_id)
    elif result.call_id in known:  # answers a call of another name: the id is what counts
        return
    elif waiting:  # no id, or one matching no call (the call had none): by name, in order
        result.call_id = waiting.pop(0)
    elif not result.call_id:  # an answer to no call: keep it apart, deterministically
        result.call_id = f"gcall_{len(known)}"
        known.add(result.call_id)


def _part(raw: dict[str, Any], model: bool, strict: bool) -> Part | None:
    text = raw.get("text")
    if isinstance(text, str):
        if model and raw.get("thought") is True:
            sig = _f(raw, "thoughtSignature")
            return Thinking(text, _std_base64(sig) if valid_signature(sig) else None) if text or sig else None
        return Text(text) if text else None
    if (blob := _f(raw, "inlineData")) is not None:
        data, mime = _f(blob, "data"), _f(blob, "mimeType")
        if not isinstance(data, str) or not isinstance(mime, str):
            raise InvalidRequest("inlineData needs 'mimeType' and base64 'data'", "contents")
        return Media(mime=mime, data=_std_base64(data), name=_f(blob, "displayName"))
    if (file := _f(raw, "fileData")) is not None:
        uri = _f(file, "fileUri")
        if not isinstance(uri, str) or not uri:
            raise InvalidRequest("fileData needs a 'fileUri'", "contents")
        if strict and (gemini_fetchable(uri) or not uri.startswith(("http://", "https://"))):
            raise InvalidRequest("fileData URIs of the Files API, Cloud Storage or YouTube need a Gemini "
                                 "model; send the file as inlineData", "contents")
        # without a type it may be anything (a video, say): never taken for an image, whose size is bounded
        return Media(mime=_str(_f(file, "mimeType")) or "application/octet-stream", url=uri)
    if (call := _f(raw, "functionCall")) is not None:
        return _function_call(call, _f(raw, "thoughtSignature"), model)
    if (response := _f(raw, "functionResponse")) is not None:
        return _function_response(response, model)
    if strict and any(_f(raw, name) is not None for name in _GEMINI_ONLY_PARTS):
        raise InvalidRequest("code execution and server-side tool parts need a Gemini model", "contents")
    return None


def _function_call(call: Any, sig: Any, model: bool) -> ToolCall:
    if not model:
        raise InvalidRequest("functionCall parts belong in 'model' turns", "contents")
    name, args = _f(call, "name"), _f(call, "args")
    if not isinstance(name, str) or not name or (args is not None and not isinstance(args, dict)):
        raise InvalidRequest("functionCall needs a 'name' and an object 'args'", "contents")
    call_id = _str(_f(call, "id"))
    plain, packed_sig = unpack_call_id(call_id) if call_id else ("", None)
    sig = _std_base64(sig) if valid_signature(sig) else packed_sig
    return ToolCall(plain, name, orjson.dumps(args or {}).decode(), sig)


def _function_response(response: Any, model: bool) -> ToolResult:
    if model:
        raise InvalidRequest("functionResponse parts belong in 'user' turns", "contents")
    name, value = _f(response, "name"), _f(response, "response")
    if not isinstance(name, str) or not name or (value is not None and not isinstance(value, dict)):
        raise InvalidRequest("functionResponse needs a 'name' and an object 'response'", "contents")
    value = value or {}
    inner = next(iter(value.values())) if len(value) == 1 and set(value) & {"output", "result", "error"} else None
    text = inner if isinstance(inner, str) else orjson.dumps(value).decode()
    content: list[Text | Media] = [Text(text)]
    for extra in _list(_f(response, "parts")):
        blob = _f(extra, "inlineData")
        if isinstance(_f(blob, "data"), str) and isinstance(_f(blob, "mimeType"), str):
            content.append(Media(mime=_f(blob, "mimeType"), data=_std_base64(_f(blob, "data"))))
    call_id = unpack_call_id(_str(_f(response, "id")))[0]
    is_error = "error" in value and "output" not in value and "result" not in value
    return ToolResult(call_id, content, name, is_error)


_LEVELS = {"MINIMAL": "minimal", "LOW": "low", "MEDIUM": "medium", "HIGH": "high", "XHIGH": "high"}


def _generation_config(chat: Chat, config: Any, strict: bool) -> None:
    if config is None:
        return
    if not isinstance(config, dict):
        raise InvalidRequest("'generationConfig' must be an object", "generationConfig")
    chat.max_output = _count(config, "maxOutputTokens")
    chat.temperature = _number(config, "temperature", 0, 2)
    chat.top_p = _number(config, "topP", 0, 1)
    chat.top_k = _count(config, "topK")
    chat.n = _count(config, "candidateCount") or 1
    chat.seed = _count(config, "seed", -(2**63))
    chat.presence_penalty = _number(config, "presencePenalty", -2, 2)
    chat.frequency_penalty = _number(config, "frequencyPenalty", -2, 2)
    stop = _f(config, "stopSequences")
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) for s in stop)):
        raise InvalidRequest("generationConfig.stopSequences must be an array of strings", "stopSequences")
    chat.stop = stop or []
    modalities = {str(m).upper() for m in _list(_f(config, "responseModalities"))}
    if strict and modalities - {"TEXT"}:
        raise InvalidRequest("image or audio output needs a Gemini model", "responseModalities")
    schema = _f(config, "responseJsonSchema")
    if schema is None:
        schema = _f(config, "responseSchema")
        schema = from_gemini_schema(schema) if isinstance(schema, dict) else None
    if isinstance(schema, dict):
        chat.output_format = OutputFormat("json_schema", schema=schema)
    elif _f(config, "responseMimeType") == "application/json":
        chat.output_format = OutputFormat("json_object")
    chat.reasoning = _thinking(_f(config, "thinkingConfig"))


def _thinking(config: Any) -> Reasoning | None:
    if not isinstance(config, dict):
        return None
    include = _f(config, "includeThoughts") is True
    budget, level = _f(config, "thinkingBudget"), _f(config, "thinkingLevel")
    if budget is None and level is None and not include:
        return None  # the model's default: for a non-Gemini model that means no extended thinking
    if level is not None:
        effort = _LEVELS.get(str(level).upper())
        if effort is None:
            raise InvalidRequest("thinkingLevel must be MINIMAL, LOW, MEDIUM or HIGH", "thinkingLevel")
        return Reasoning(effort=effort, include_thoughts=include)  # type: ignore[arg-type]
    if budget is None or budget == -1:  # -1: dynamic, the model decides
        return Reasoning(include_thoughts=include)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise InvalidRequest("thinkingBudget must be -1, 0 or a positive integer", "thinkingBudget")
    return Reasoning(budget=budget, include_thoughts=include and budget > 0)


def _tools(value: Any, strict: bool) -> list[Tool]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidRequest("'tools' must be an array", "tools")
    tools: list[Tool] = []
    for entry in value:
        if not isinstance(entry, dict):
            raise InvalidRequest("each entry of 'tools' must be an object", "tools")
        other = [k for k, v in entry.items() if k not in _DECLS and v is not None]
        if strict and other:
            raise InvalidRequest(f"the '{other[0]}' tool needs a Gemini model; only functionDeclarations "
                                 "work with this model", "tools")
        for decl in _list(_f(entry, "functionDeclarations")):
            name = _f(decl, "name")
            if not isinstance(name, str) or not name:
                raise InvalidRequest("each function declaration needs a 'name'", "tools")
            schema = _f(decl, "parametersJsonSchema")
            if not isinstance(schema, dict):
                params = _f(decl, "parameters")
                schema = from_gemini_schema(params) if isinstance(params, dict) else None
            tools.append(Tool(name, _str(_f(decl, "description")),
                              schema or {"type": "object", "properties": {}}))
    return tools


def _tool_config(chat: Chat, value: Any) -> None:
    config = _f(value, "functionCallingConfig")
    if not isinstance(config, dict):
        return
    mode = str(_f(config, "mode") or "AUTO").upper()
    allowed = [n for n in _list(_f(config, "allowedFunctionNames")) if isinstance(n, str)]
    if allowed and mode in ("ANY", "AUTO", "VALIDATED"):  # only these may be called: offer only these
        chat.tools = [t for t in chat.tools if t.name in allowed]
    if mode == "NONE":
        chat.tool_choice = ToolChoice("none")
    elif mode == "ANY":
        chat.tool_choice = ToolChoice("tool", allowed[0]) if len(allowed) == 1 else ToolChoice("required")
    elif mode in ("AUTO", "VALIDATED", "MODE_UNSPECIFIED"):
        chat.tool_choice = ToolChoice("auto")
    else:
        raise InvalidRequest("functionCallingConfig.mode must be AUTO, ANY, NONE or VALIDATED", "toolConfig")


# -- replies, streams and errors -----------------------------------------------------------------

_TO_GEMINI_FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP", "content_filter": "SAFETY"}


def _usage_metadata(usage: Usage | None) -> dict[str, int]:
    u = usage or Usage()
    meta = {"promptTokenCount": u.in_total, "candidatesTokenCount": max(u.out_total - u.reasoning, 0)}
    if u.reasoning:
        meta["thoughtsTokenCount"] = u.reasoning
    if u.cache_read:
        meta["cachedContentTokenCount"] = u.cache_read
    meta["totalTokenCount"] = u.in_total + u.out_total
    return meta


def _call_part(call_id: str | None, name: str, arguments: str, signature: str | None) -> dict[str, Any]:
    plain, packed = unpack_call_id(call_id) if call_id else (None, None)
    fc: dict[str, Any] = {"name": name, "args": parse_arguments(arguments)}
    if plain:
        fc["id"] = plain
    part: dict[str, Any] = {"functionCall": fc}
    sig = signature or packed
    if valid_signature(sig):
        part["thoughtSignature"] = sig
    return part


def _thought_part(text: str, signature: str | None) -> dict[str, Any]:
    part: dict[str, Any] = {"text": text, "thought": True}
    if valid_signature(signature):
        part["thoughtSignature"] = signature
    return part


def _chunk(ctx: StreamContext, parts: list[dict[str, Any]], finish: str | None = None,
           usage: Usage | None = None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}}
    if finish:
        candidate["finishReason"] = finish
    candidate["index"] = 0
    obj: dict[str, Any] = {"candidates": [candidate]}
    if finish:
        obj["usageMetadata"] = _usage_metadata(usage)
    obj["modelVersion"] = ctx.model
    obj["responseId"] = ctx.request_id
    return obj


def render_response(reply: Reply, ctx: StreamContext) -> bytes:
    """A complete generateContent answer; reply.usage is the charged usage."""
    parts: list[dict[str, Any]] = []
    for part in reply.parts:
        if isinstance(part, Text) and part.text:
            parts.append({"text": part.text})
        elif isinstance(part, Thinking) and (part.text or valid_signature(part.signature)):
            parts.append(_thought_part(part.text, part.signature))
        elif isinstance(part, ToolCall):
            parts.append(_call_part(part.id, part.name, part.arguments, part.signature))
    if not parts and reply.finish != "content_filter":
        parts.append({"text": ""})  # google-genai chats drop a turn whose content has no parts
    return orjson.dumps(_chunk(ctx, parts, _TO_GEMINI_FINISH[reply.finish], reply.usage))


_KIND_STATUS = {"overloaded": 503, "rate_limited": 429, "timeout": 504, "invalid_request": 400,
                "upstream_timeout": 504, "upstream_closed": 502, "gateway_shutting_down": 503}


def _error(status: int, message: str, code: str | None, request_id: str | None,
           param: str | None = None) -> dict[str, Any]:
    """{"error": {...}} with "error" the first key and an int code: google-genai needs both."""
    error: dict[str, Any] = {"code": status, "message": message,
                             "status": _ERROR_STATUS.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT")}
    metadata = {k: v for k, v in (("request_id", request_id), ("param", param)) if v}
    if code or metadata:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": code or "",
                             "domain": "tokentoll", "metadata": metadata}]
    return {"error": error}


def error_body(status: int, message: str, code: str | None, param: str | None, request_id: str) -> bytes:
    return orjson.dumps(_error(status, message, code, request_id, param))


def cut_chunk(model: str, request_id: str, usage: Usage) -> bytes:
    """The last chunk of a passed-through stream the gateway cut at the held limit, as Gemini ends one that
    reached maxOutputTokens: finishReason MAX_TOKENS with the usage counted (the JSON; the relay frames it)."""
    return orjson.dumps(_chunk(StreamContext(request_id, model, 0), [{"text": ""}], "MAX_TOKENS", usage))


def stream_error_event(message: str, code: str, request_id: str, sse: bool = True) -> bytes:
    """An in-band error for a passthrough stream (alt=sse; or the tail of an open JSON array)."""
    data = orjson.dumps(_error(_KIND_STATUS.get(code, 500), message, code, request_id))
    return b"data: " + data + b"\n\n" if sse else b",\n" + data + b"]"


class StreamWriter:
    """Internal events as :streamGenerateContent output: `data: {json}` SSE frames and nothing else
    (google-genai chokes on comments, event: lines and [DONE]), or the JSON array of the non-SSE form.
    Tool calls are held until End and sent whole; finishReason and usage ride on the last chunk."""

    def __init__(self, ctx: StreamContext, sse: bool = True) -> None:
        self.ctx, self.sse = ctx, sse
        self._opened = self._ended = False
        self._calls: dict[int, list[Any]] = {}  # index -> [id, name, [argument pieces], signature]
        self._finish: Finish = "stop"

    def _frame(self, obj: dict[str, Any]) -> bytes:
        data = orjson.dumps(obj)
        if self.sse:
            return b"data: " + data + b"\n\n"
        head, self._opened = (b",\n" if self._opened else b"["), True
        return head + data

    def _flush_calls(self) -> list[dict[str, Any]]:
        parts = [_call_part(c[0], c[1] or "", "".join(c[2]), c[3]) for _, c in sorted(self._calls.items())]
        self._calls.clear()
        return parts

    def write(self, event: Event) -> bytes:
        if self._ended:
            return b""
        if isinstance(event, TextDelta):
            return self._frame(_chunk(self.ctx, [{"text": event.text}])) if event.text else b""
        if isinstance(event, ThinkingDelta):
            if not event.text and not valid_signature(event.signature):
                return b""
            return self._frame(_chunk(self.ctx, [_thought_part(event.text, event.signature)]))
        if isinstance(event, ToolCallDelta):
            call = self._calls.setdefault(event.index, [None, None, [], None])
            call[0], call[1] = call[0] or event.id, call[1] or event.name
            call[3] = call[3] or event.signature
            call[2].append(event.arguments)
            return b""
        if isinstance(event, End):
            self._finish = event.finish
            parts = self._flush_calls()
            return self._frame(_chunk(self.ctx, parts)) if parts else b""
        if isinstance(event, StreamError):
            return self.error(event.message, event.kind)
        return b""  # Start and UsageUpdate: the id, model and charged usage come from ctx and close()

    def close(self, usage: Usage) -> bytes:
        if self._ended:
            return b""
        parts = self._flush_calls() or [{"text": ""}]  # the last chunk needs a part for google-genai chats
        frame = self._frame(_chunk(self.ctx, parts, _TO_GEMINI_FINISH[self._finish], usage))
        self._ended = True
        return frame if self.sse else frame + b"]"

    def error(self, message: str, code: str) -> bytes:
        if self._ended:
            return b""
        frame = self._frame(_error(_KIND_STATUS.get(code, 500), message, code, self.ctx.request_id))
        self._ended = True
        return frame if self.sse else frame + b"]"


# -- models and embeddings ----------------------------------------------------------------------


def model_object(id: str, display_name: str, output_limit: int, methods: list[str],
                 input_limit: int | None = None, description: str = "") -> dict[str, Any]:
    """One entry of GET /models (methods: CHAT_METHODS or EMBED_METHODS)."""
    name = _model_path(id)
    obj: dict[str, Any] = {"name": name, "baseModelId": name.split("/", 1)[1], "version": "1",
                           "displayName": display_name, "description": description}
    if input_limit is not None:
        obj["inputTokenLimit"] = input_limit
    obj["outputTokenLimit"] = output_limit
    obj["supportedGenerationMethods"] = list(methods)
    return obj


def models_list(models: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"models": models})  # no nextPageToken: the SDK stops paging


def _embed_fields(req: Any) -> tuple[str, str | None, int | None]:
    content = _f(req, "content")
    parts = _f(content, "parts")
    if not isinstance(parts, list) or not parts:
        raise InvalidRequest("'content' must have a non-empty 'parts' array", "content")
    if not all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in parts):
        raise InvalidRequest("only text parts can be embedded with this model", "content")
    dims = _f(req, "outputDimensionality")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 1):
        raise InvalidRequest("'outputDimensionality' must be a positive integer", "outputDimensionality")
    task = _f(req, "taskType")
    return "".join(p["text"] for p in parts), task if isinstance(task, str) else None, dims


def parse_embed_request(body: dict[str, Any], batch: bool) -> Embed:
    """embedContent ({"content", "taskType", "outputDimensionality"}) or batchEmbedContents ({"requests"})."""
    requests = _f(body, "requests") if batch else [body]
    if not isinstance(requests, list) or not requests:
        raise InvalidRequest("'requests' must be a non-empty array", "requests")
    fields = [_embed_fields(r) for r in requests]
    if len({(task, dims) for _, task, dims in fields}) > 1:
        raise InvalidRequest("every request of a batch must share taskType and outputDimensionality", "requests")
    return Embed([text for text, _, _ in fields], dimensions=fields[0][2], task_type=fields[0][1])


def render_embed(reply: EmbedReply, batch: bool) -> bytes:
    if batch:
        return orjson.dumps({"embeddings": [{"values": v} for v in reply.vectors]})
    return orjson.dumps({"embedding": {"values": reply.vectors[0] if reply.vectors else []}})


