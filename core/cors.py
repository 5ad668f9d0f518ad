"""CORS for the API routes (server.cors_origins): a web page on an allowed origin may call /v1, /v1beta and the
legacy billing routes with its key and read the answers and the X-TT headers; /console and /admin never."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

Send = Callable[[dict[str, Any]], Awaitable[None]]
# The API a page may call: the LLM routes, the key's own figures (chat front-ends read /dashboard/billing/...
# without /v1) and the API's description
API_PREFIXES = ("/v1/", "/v1beta/", "/dashboard/billing/", "/openapi.json")
# What a page may read of an answer besides the CORS-safelisted headers: the request id under each SDK's name,
# the response cache's headers, and what a 429 or a refusal says about retrying.
EXPOSED = b", ".join([
    b"x-tt-request-id", b"x-request-id", b"request-id", b"x-tt-cache", b"x-tt-cache-read-tokens",
    b"x-tt-cache-write-tokens", b"x-tt-cache-savings", b"retry-after", b"x-should-retry",
    b"x-ratelimit-limit-requests", b"x-ratelimit-remaining-requests", b"x-ratelimit-reset-requests",
    b"x-ratelimit-limit-tokens", b"x-ratelimit-remaining-tokens", b"x-ratelimit-reset-tokens"])
METHODS = b"GET, POST, DELETE, OPTIONS"
MAX_AGE = b"600"  # seconds a browser may keep a preflight's answer
# Headers the SDKs send from a browser; a preflight that asks for others (each a valid name) gets them too
DEFAULT_HEADERS = (b"authorization, content-type, x-api-key, anthropic-version, anthropic-beta, "
                   b"anthropic-dangerous-direct-browser-access, x-goog-api-key, x-goog-api-client, x-tt-cache")
HEADER_LIST = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:[ \t]*,[ \t]*[!#$%&'*+.^_`|~0-9A-Za-z-]+)*")
MAX_REQUESTED = 2048  # bytes of Access-Control-Request-Headers echoed back


class Cors:
    """The allowed origins, and the headers that let their pages in."""

    def __init__(self, origins: tuple[str, ...]) -> None:
        self.any = "*" in origins
        self.origins = frozenset(o.encode() for o in origins if o != "*")

    def allowed_origin(self, scope: dict[str, Any]) -> bytes | None:
        """The Access-Control-Allow-Origin to send for this request: b"*" for any origin, else its own Origin if
        listed; b"" for an API request that gets no CORS headers but must say it varies by Origin (a list of
        origins); None outside the API routes, or for a request nothing is added to."""
        if not scope["path"].startswith(API_PREFIXES):
            return None
        origin = header(scope["headers"], b"origin")
        if self.any:
            return None if origin is None else b"*"
        return origin if origin is not None and origin.lower() in self.origins else b""

    def preflight(self, scope: dict[str, Any], allow: bytes) -> list[tuple[bytes, bytes]] | None:
        """The headers of a preflight's 204, or None if the request is not a preflight (OPTIONS with
        Access-Control-Request-Method) from an allowed origin."""
        if not allow or scope["method"] != "OPTIONS" or \
                header(scope["headers"], b"access-control-request-method") is None:
            return None
        requested = header(scope["headers"], b"access-control-request-headers") or b""
        wanted = requested.strip()
        headers = wanted if wanted and len(wanted) <= MAX_REQUESTED and HEADER_LIST.fullmatch(wanted) \
            else DEFAULT_HEADERS
        vary = [] if allow == b"*" else [(b"vary", b"Origin, Access-Control-Request-Headers")]
        return [(b"access-control-allow-origin", allow), (b"access-control-allow-methods", METHODS),
                (b"access-control-allow-headers", headers), (b"access-control-max-age", MAX_AGE), *vary]

    def exposing(self, send: Send, allow: bytes) -> Send:
        """`send` with the CORS headers added to the response's start: for an allowed origin, the origin and the
        headers its page may read; with a list of origins, Vary: Origin on every answer (a shared cache must not
        give one origin's copy to another, nor a copy without CORS headers to an allowed page)."""
        extra = [(b"vary", b"Origin")] if allow != b"*" else []
        if allow:
            extra += [(b"access-control-allow-origin", allow), (b"access-control-expose-headers", EXPOSED)]

        async def send_exposed(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        return send_exposed


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None
