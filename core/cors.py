"""CORS for the API routes (server.cors_origins): a web page on an allowed origin may call /v1 and /v1beta with
its key and read the answers and the X-TT headers. /console and /admin never answer another origin."""

from __future__ import annotations

import re
from typing import Any

API_PREFIXES = ("/v1/", "/v1beta/")
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
        listed; None for a request with no Origin, from another origin, or outside /v1 and /v1beta."""
        if not scope["path"].startswith(API_PREFIXES):
            return None
        origin = header(scope["headers"], b"origin")
        if origin is None:
            return None
        if self.any:
            return b"*"
        return origin if origin.lower() in self.origins else None

    def preflight(self, scope: dict[str, Any], allow: bytes) -> list[tuple[bytes, bytes]] | None:
        """The headers of a preflight's 204, or None if the request is not a preflight (OPTIONS with
        Access-Control-Request-Method)."""
        if scope["method"] != "OPTIONS" or header(scope["headers"], b"access-control-request-method") is None:
            return None
        requested = header(scope["headers"], b"access-control-request-headers") or b""
        wanted = requested.strip()
        headers = wanted if wanted and len(wanted) <= MAX_REQUESTED and HEADER_LIST.fullmatch(wanted) \
            else DEFAULT_HEADERS
        return [(b"access-control-allow-origin", allow), (b"access-control-allow-methods", METHODS),
                (b"access-control-allow-headers", headers), (b"access-control-max-age", MAX_AGE),
                *self.vary(allow)]

    def exposing(self, send: Any, allow: bytes) -> Any:
        """`send` with the CORS headers added to the response's start."""
        extra = [(b"access-control-allow-origin", allow), (b"access-control-expose-headers", EXPOSED),
                 *self.vary(allow)]

        async def send_exposed(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        return send_exposed

    @staticmethod
    def vary(allow: bytes) -> list[tuple[bytes, bytes]]:
        """An answer that names the caller's origin differs by Origin: caches must keep one per origin."""
        return [] if allow == b"*" else [(b"vary", b"Origin")]


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None
