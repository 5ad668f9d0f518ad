"""What both Gemini sides share: tolerant field readers (camelCase or snake_case) and the check that a request
spells each field once, the model path, the thoughtSignature and fetchable-URI checks and the HTTP status ->
google.rpc status table. Pure; no I/O."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from adapters.internal import InvalidRequest


@lru_cache(maxsize=256)
def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def _f(obj: Any, name: str) -> Any:
    """A field by its camelCase name or its snake_case twin (the REST API takes both)."""
    if not isinstance(obj, dict):
        return None
    value = obj.get(name)
    return obj.get(_snake(name)) if value is None else value


@lru_cache(maxsize=256)
def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


# The objects of a request whose fields are checked for two spellings: what the prompt estimate reads (the
# contents, their parts and media, the system instruction) and what bounds the answer (generationConfig, with
# its maxOutputTokens and candidateCount). Tool schemas and call arguments are the caller's own data.
_SPELLED_ONCE = {
    "": ("contents", "systemInstruction", "generationConfig", "toolConfig"),
    "contents": ("parts",),
    "systemInstruction": ("parts",),
    "parts": ("inlineData", "fileData", "functionCall", "functionResponse", "videoMetadata"),
    "generationConfig": ("thinkingConfig",),
}


def spelled_once(body: dict[str, Any]) -> dict[str, Any]:
    """The request with each field spelled once: Gemini's REST API reads camelCase and snake_case alike, so a
    field given both ways (`generationConfig` and `generation_config`) could mean one thing to the gateway's
    checks and another to the upstream. The same value twice keeps one (the camelCase); two values are refused
    with a 400 naming both. Raises InvalidRequest."""
    return _spelled_once(body, "", "")


def _spelled_once(value: Any, kind: str, where: str) -> Any:
    if isinstance(value, list):
        return [_spelled_once(item, kind, f"{where}[{i}]") for i, item in enumerate(value)]
    if not isinstance(value, dict):
        return value
    children = _SPELLED_ONCE.get(kind, ())
    out: dict[str, Any] = {}
    kept: dict[str, str] = {}  # camelCase name -> the spelling kept in `out`
    for key, item in value.items():
        camel = _camel(key)
        if camel in children:
            item = _spelled_once(item, camel, f"{where}{'.' if where else ''}{camel}")
        if camel not in kept:
            kept[camel] = key
            out[key] = item
            continue
        if out[kept[camel]] != item:
            raise InvalidRequest(f"'{where}{'.' if where else ''}{camel}' is given twice, as '{kept[camel]}' and "
                                 f"'{key}', with different values: send one", camel)
        if key == camel:  # the camelCase spelling is the one kept
            out[camel] = out.pop(kept[camel])
            kept[camel] = camel
    return out


def _key(obj: dict[str, Any], name: str) -> str:
    """The spelling of `name` the client used (camelCase unless only the snake_case one is there)."""
    return _snake(name) if name not in obj and _snake(name) in obj else name


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


_B64 = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")  # fullmatch: `$` passes a trailing newline


def valid_signature(sig: Any) -> bool:
    """A thoughtSignature Gemini (and google-genai's bytes field) can decode: base64, either alphabet."""
    return isinstance(sig, str) and bool(_B64.fullmatch(sig)) and len(sig.rstrip("=")) % 4 != 1


_FILES_API = re.compile(r"^https://generativelanguage\.googleapis\.com/[^?#]*/files/", re.I)
_YOUTUBE = re.compile(r"^https?://(www\.|m\.)?(youtube\.com/|youtu\.be/)", re.I)


def gemini_fetchable(url: str) -> bool:
    """Gemini reads these URIs itself (fileData); anything else must be downloaded and inlined."""
    return url.startswith("gs://") or bool(_FILES_API.match(url) or _YOUTUBE.match(url))


def _model_path(model: str) -> str:
    return model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"


_ERROR_STATUS = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 402: "FAILED_PRECONDITION", 403: "PERMISSION_DENIED",
    404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED", 409: "ABORTED", 413: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL",
    501: "UNIMPLEMENTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED", 529: "UNAVAILABLE",
}
