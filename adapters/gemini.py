"""Gemini wire format (generateContent): the client side (parse requests, render replies, streams, errors,
model lists, embeddings) and the upstream side (build requests, read replies and streams). Pure; no I/O."""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from typing import Any

import orjson

from adapters.internal import (
    Chat, Embed, EmbedReply, End, Event, Finish, InvalidRequest, Media, Message, OutputFormat, Part,
    Reasoning, Reply, Start, StreamContext, StreamError, Text, TextDelta, Thinking, ThinkingDelta, Tool,
    ToolCall, ToolCallDelta, ToolChoice, ToolResult, Usage, UsageUpdate, estimate_prompt as _estimate,
    parse_arguments, unpack_call_id,
)

CHAT_METHODS = ["generateContent", "streamGenerateContent", "countTokens"]
EMBED_METHODS = ["embedContent", "batchEmbedContents", "countTokens"]
SKIP_SIGNATURE = "skip_thought_signature_validator"  # Google's documented value for unsigned calls
MAX_STOP_SEQUENCES = 5
MAX_EMBED_BATCH = 100  # batchEmbedContents refuses more requests than this

# -- small readers ------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def _f(obj: Any, name: str) -> Any:
    """A field by its camelCase name or its snake_case twin (the REST API takes both)."""
    if not isinstance(obj, dict):
        return None
    value = obj.get(name)
    return obj.get(_snake(name)) if value is None else value


def _key(obj: dict[str, Any], name: str) -> str:
    """The spelling of `name` the client used (camelCase unless only the snake_case one is there)."""
    return _snake(name) if name not in obj and _snake(name) in obj else name


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _number(obj: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = _f(obj, name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise InvalidRequest(f"generationConfig.{name} must be a number from {low:g} to {high:g}", name)
    return float(value)


def _count(obj: dict[str, Any], name: str, low: int = 1) -> int | None:
    value = _f(obj, name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():  # google-genai types topK as a float
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidRequest(f"generationConfig.{name} must be an integer of at least {low}", name)
    return value


_B64 = re.compile(r"^[A-Za-z0-9+/_-]+={0,2}$")


def valid_signature(sig: Any) -> bool:
    """A thoughtSignature Gemini (and google-genai's bytes field) can decode: base64, either alphabet."""
    return isinstance(sig, str) and bool(_B64.match(sig)) and len(sig.rstrip("=")) % 4 != 1


def _std_base64(data: str) -> str:
    """google-genai sends bytes URL-safe encoded; other providers want the standard alphabet, padded
    (and a signature we rendered from another provider must come back exactly as it was)."""
    if "-" in data or "_" in data:
        data = data.translate(_URLSAFE)
    return data + "=" * (-len(data) % 4)


_URLSAFE = str.maketrans("-_", "+/")

# -- tool and response schemas ------------------------------------------------------------------

_SCHEMA_TYPES = {"string", "number", "integer", "boolean", "array", "object"}
_SCALAR_KEYS = {"title": str, "description": str, "pattern": str, "minItems": int, "maxItems": int,
                "minLength": int, "maxLength": int, "minProperties": int, "maxProperties": int,
                "minimum": (int, float), "maximum": (int, float)}
_FORMATS = {"STRING": {"enum", "date-time"}, "NUMBER": {"float", "double"}, "INTEGER": {"int32", "int64"}}


def to_gemini_schema(schema: Any) -> dict[str, Any]:
    """A JSON Schema as Gemini's OpenAPI `Schema` subset (trap 11): $ref/$defs inlined (a recursive
    reference becomes a bare OBJECT), type arrays and null unions made `nullable`/anyOf, oneOf as anyOf,
    allOf merged, const as a one-value enum, non-string enums and every unknown keyword
    ($schema, additionalProperties, propertyNames, ...) dropped, arrays given `items`."""
    defs: dict[str, Any] = {}
    if isinstance(schema, dict):
        for key in ("definitions", "$defs"):
            if isinstance(schema.get(key), dict):
                defs.update(schema[key])
    return _clean(schema, defs, frozenset(), 0)


def _clean(node: Any, defs: dict[str, Any], seen: frozenset[str], depth: int) -> dict[str, Any]:
    if not isinstance(node, dict) or depth > 40:
        return {"type": "STRING"}
    ref = node.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        rest = {k: v for k, v in node.items() if k != "$ref"}
        if name in seen or not isinstance(defs.get(name), dict):
            return {"type": "OBJECT", **({"description": rest["description"]} if _str(rest.get("description")) else {})}
        return _clean({**defs[name], **rest}, defs, seen | {name}, depth + 1)
    if isinstance(node.get("allOf"), list):
        node = _merge_all_of(node, defs, seen)
    out: dict[str, Any] = {}
    kind, nullable = node.get("type"), node.get("nullable") is True
    kind = kind.lower() if isinstance(kind, str) else kind if isinstance(kind, list) else None
    if isinstance(kind, list):
        nullable = nullable or "null" in kind
        kinds = [k.lower() for k in kind if isinstance(k, str) and k.lower() in _SCHEMA_TYPES]
        if len(kinds) > 1:
            out["anyOf"] = [_clean({**node, "type": k}, defs, seen, depth + 1) for k in kinds]
            kind = None
        else:
            kind = kinds[0] if kinds else None
    elif kind == "null":
        kind, nullable = None, True
    variants = node.get("anyOf", node.get("oneOf"))
    if isinstance(variants, list) and "anyOf" not in out:
        real = [v for v in variants if not (isinstance(v, dict) and v.get("type") == "null")]
        nullable = nullable or len(real) < len(variants)
        cleaned = [_clean(v, defs, seen, depth + 1) for v in real]
        if len(cleaned) == 1 and kind is None:
            out.update(cleaned[0])
        elif cleaned:
            out["anyOf"] = cleaned
    values = node.get("enum", [node["const"]] if "const" in node else None)
    if isinstance(values, list) and values and all(isinstance(v, str) for v in values):
        out["enum"], kind = list(values), "string"
    elif isinstance(values, list) and values:  # Gemini enums are strings only: say it in words instead
        listed = ", ".join(orjson.dumps(v).decode() for v in values[:20])
        node = {**node, "description": (_str(node.get("description")) + f" (one of: {listed})").strip()}
    if kind is None and "anyOf" not in out:
        kind = "object" if isinstance(node.get("properties"), dict) else "array" if "items" in node else kind
    if kind in _SCHEMA_TYPES:
        out["type"] = kind.upper()
    elif "anyOf" not in out and "type" not in out:
        out["type"] = "STRING"  # an untyped value: Gemini wants a type, and text loses the least
    if nullable:
        out["nullable"] = True
    for key, types in _SCALAR_KEYS.items():
        value = node.get(key)
        if isinstance(value, types) and not isinstance(value, bool):  # type: ignore[arg-type]
            out[key] = value
    if isinstance(node.get("format"), str) and node["format"] in _FORMATS.get(out.get("type", ""), ()):
        out["format"] = node["format"]
    if out.get("type") == "OBJECT" and isinstance(node.get("properties"), dict):
        props = {str(k): _clean(v, defs, seen, depth + 1) for k, v in node["properties"].items()}
        if props:
            out["properties"] = props
            required = [r for r in _list(node.get("required")) if r in props]
            if required:
                out["required"] = required
    if out.get("type") == "ARRAY":
        items = node.get("items")
        items = items[0] if isinstance(items, list) and items else items
        out["items"] = _clean(items, defs, seen, depth + 1) if isinstance(items, dict) else {"type": "STRING"}
    return out


def _merge_all_of(node: dict[str, Any], defs: dict[str, Any], seen: frozenset[str]) -> dict[str, Any]:
    merged = {k: v for k, v in node.items() if k != "allOf"}
    props = dict(merged.get("properties") or {})
    required = list(_list(merged.get("required")))
    for sub in node["allOf"]:
        if isinstance(sub, dict) and isinstance(sub.get("$ref"), str):
            name = sub["$ref"].rsplit("/", 1)[-1]
            sub = defs.get(name) if name not in seen else None
        if not isinstance(sub, dict):
            continue
        props.update(sub.get("properties") or {})
        required += [r for r in _list(sub.get("required")) if r not in required]
        for key, value in sub.items():
            merged.setdefault(key, value)
    if props:
        merged["properties"], merged["type"] = props, merged.get("type", "object")
    merged["required"] = required
    merged.pop("allOf", None)
    return merged


def from_gemini_schema(node: Any) -> dict[str, Any]:
    """A Gemini `Schema` (upper-case types, `nullable`; google-genai sends its keywords in snake_case)
    as plain JSON Schema for other providers."""
    if not isinstance(node, dict):
        return {}
    out: dict[str, Any] = {}
    for key, value in node.items():
        key = {"ref": "$ref", "defs": "$defs"}.get(key) or re.sub(r"_([a-z])", lambda m: m.group(1).upper(), key)
        if key == "type" and isinstance(value, str):
            kind = value.lower()
            out["type"] = [kind, "null"] if _f(node, "nullable") is True else kind
        elif key in ("properties", "$defs") and isinstance(value, dict):
            out[key] = {k: from_gemini_schema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = from_gemini_schema(value)
        elif key == "anyOf" and isinstance(value, list):
            out[key] = [from_gemini_schema(v) for v in value]
        elif key not in ("nullable", "propertyOrdering") and not (key == "format" and value == "enum"):
            out[key] = value
    return out


# -- client side: requests ----------------------------------------------------------------------

_GEMINI_ONLY_PARTS = ("executableCode", "codeExecutionResult", "toolCall", "toolResponse")
_FILES_API = re.compile(r"^https://generativelanguage\.googleapis\.com/[^?#]*/files/", re.I)
_YOUTUBE = re.compile(r"^https?://(www\.|m\.)?(youtube\.com/|youtu\.be/)", re.I)


def gemini_fetchable(url: str) -> bool:
    """Gemini reads these URIs itself (fileData); anything else must be downloaded and inlined."""
    return url.startswith("gs://") or bool(_FILES_API.match(url) or _YOUTUBE.match(url))


def parse_request(body: dict[str, Any]) -> Chat:
    """A generateContent body as a Chat, for a non-Gemini upstream (refuses Gemini-only features)."""
    return _parse(body, strict=True)


def parse_count_request(body: dict[str, Any]) -> Chat:
    """countTokens: {"contents"} or {"generateContentRequest": {...}}; lenient, since it only counts."""
    inner = _f(body, "generateContentRequest")
    return _parse(inner if isinstance(inner, dict) else body, strict=False)


def estimate_prompt(body: dict[str, Any]) -> int:
    """The prompt estimate for same-format passthrough: Gemini-only features are counted, not refused."""
    chat = _parse(body, strict=False)
    extra = 0
    for tool in _list(_f(body, "tools")):
        other = {k: v for k, v in tool.items() if k not in _DECLS} if isinstance(tool, dict) else None
        if other:  # googleSearch, codeExecution...: about 4 characters a token, as billing does
            extra += len(orjson.dumps(other)) // 4
    return _estimate(chat) + extra


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
        return Media(mime=_str(_f(file, "mimeType")), url=uri)
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


# -- client side: replies and streams -----------------------------------------------------------

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


_ERROR_STATUS = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 402: "FAILED_PRECONDITION", 403: "PERMISSION_DENIED",
    404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED", 409: "ABORTED", 413: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL",
    501: "UNIMPLEMENTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED", 529: "UNAVAILABLE",
}
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


# -- client side: models and embeddings ---------------------------------------------------------


def model_object(id: str, display_name: str, output_limit: int, methods: list[str],
                 input_limit: int | None = None, description: str = "") -> dict[str, Any]:
    """One entry of GET /models (methods: CHAT_METHODS or EMBED_METHODS)."""
    name = id if id.startswith(("models/", "tunedModels/")) else f"models/{id}"
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


# -- upstream side: requests --------------------------------------------------------------------


def auth_headers(api_key: str) -> dict[str, str]:
    return {"x-goog-api-key": api_key}


def _model_path(model: str) -> str:
    return model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"


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


_NAME_OK = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")
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
    return f"/{_model_path(upstream_model)}:{method}", orjson.dumps(body)


def _declaration(tool: Tool) -> dict[str, Any]:
    if not _NAME_OK.match(tool.name):
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


# -- upstream side: replies, streams and usage --------------------------------------------------

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
