"""The three client dialects at the HTTP edge: which URL speaks which format (OpenAI under /v1, Anthropic's
/v1/messages, Gemini's models/{model}:{method}), and how an error is written in each."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from starlette.responses import Response

from adapters.anthropic import client as anthropic_client
from adapters.gemini import client as gemini_client
from adapters.openai import passthrough as openai_passthrough

Dialect = Literal["openai", "anthropic", "gemini"]


@dataclass(frozen=True, slots=True)
class Call:
    """What the URL says about a relay request: the caller's dialect, the endpoint, and for Gemini the
    model (it is in the path) and the stream framing."""

    dialect: Dialect
    endpoint: str  # chat, completions, embeddings, responses | messages, count_tokens | generate, count, embed, batch_embed
    model: str | None = None
    stream: bool = False  # Gemini: streamGenerateContent
    sse: bool = True  # Gemini: alt=sse (else the JSON-array stream)


OPENAI_ROUTES = {
    "/v1/chat/completions": Call("openai", "chat"),
    "/v1/completions": Call("openai", "completions"),
    "/v1/embeddings": Call("openai", "embeddings"),
    "/v1/responses": Call("openai", "responses"),
    "/v1/messages": Call("anthropic", "messages"),
    "/v1/messages/count_tokens": Call("anthropic", "count_tokens"),
}
GEMINI_METHODS = {
    "generateContent": "generate",
    "streamGenerateContent": "generate",
    "countTokens": "count",
    "embedContent": "embed",
    "batchEmbedContents": "batch_embed",
}
GEMINI_PREFIXES = ("/v1beta/models/", "/v1/models/")
API_VERSIONS = ("v1/", "v1beta/", "v1alpha/")
UNKNOWN_METHOD = "unknown_method"


def relay_call(method: str, path: str, query_string: bytes) -> Call | None:
    """The relay call a URL names, or None for every other route."""
    call = OPENAI_ROUTES.get(path)
    if call is not None:
        return call
    if method != "POST" or not path.startswith(GEMINI_PREFIXES) or repeats_api_version(path):
        return None
    rest = path[len("/v1beta/models/"):] if path.startswith("/v1beta/") else path[len("/v1/models/"):]
    model, colon, verb = rest.rpartition(":")  # model names may hold '/' and even ':'; the method is last
    if not colon:
        return None
    endpoint = GEMINI_METHODS.get(verb, UNKNOWN_METHOD)  # refused by the relay, in Gemini's dialect
    stream = verb == "streamGenerateContent"
    sse = b"alt=sse" in query_string
    return Call("gemini", endpoint, model.removeprefix("models/"), stream, sse)


def repeats_api_version(path: str) -> bool:
    """/v1beta/models/v1/models/m:generateContent: google-genai given base_url .../v1beta/models adds its own
    version and models/ again. A wrong URL (a 404 that says how to fix it), not a model named 'v1/models/m'."""
    prefix = next((p for p in GEMINI_PREFIXES if path.startswith(p)), None)
    return prefix is not None and path[len(prefix):].removeprefix("models/").startswith(API_VERSIONS)


def wants_gemini(headers: list[tuple[bytes, bytes]], query_string: bytes) -> bool:
    """A GET under /v1/models from google-genai (its v1 API) rather than from an OpenAI client."""
    if b"key=" in query_string or b"pageSize=" in query_string:
        return True
    return any(name in (b"x-goog-api-key", b"x-goog-api-client") for name, _ in headers)


def wants_anthropic(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name == b"anthropic-version" for name, _ in headers)


def error_body(dialect: Dialect, status: int, message: str, code: str | None, param: str | None,
               request_id: str) -> bytes:
    if dialect == "anthropic":
        return anthropic_client.error_body(status, message, code, param, request_id)
    if dialect == "gemini":
        return gemini_client.error_body(status, message, code, param, request_id)
    return openai_passthrough.error_body(status, message, code, param, request_id)


def error_response(dialect: Dialect, status: int, message: str, code: str | None, param: str | None,
                   request_id: str, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON error answer in the caller's dialect, with `headers` and, for Anthropic, its request-id header."""
    out = {**(headers or {}), **({"request-id": request_id} if dialect == "anthropic" else {})}
    return Response(error_body(dialect, status, message, code, param, request_id), status_code=status,
                    media_type="application/json", headers=out)


def id_headers(dialect: Dialect, request_id: str) -> list[tuple[bytes, bytes]]:
    """The request id under each SDK's own header name, and always X-TT-Request-ID."""
    rid = request_id.encode()
    if dialect == "anthropic":
        return [(b"x-tt-request-id", rid), (b"request-id", rid)]
    return [(b"x-tt-request-id", rid), (b"x-request-id", rid)]
