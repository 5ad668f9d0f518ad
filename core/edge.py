"""What the edge refuses before any route runs: a body that takes too long to arrive, framing that two parsers
could read two ways (Content-Length with Transfer-Encoding), and /admin on the wrong listener."""

from __future__ import annotations

import asyncio
from typing import Any

from core.errors import BodyTimeout

ADMIN_PREFIX = "/admin"
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


class BodyDeadline:
    """An ASGI `receive` that gives the whole request body `seconds` from the request's headers: past that, it
    raises BodyTimeout, which each route answers with a 408 (its connection is then closed, the body being
    unread). Once the body is complete, later calls (the relay's disconnect watch) pass straight through."""

    __slots__ = ("receive", "deadline", "seconds", "complete")

    def __init__(self, receive: Any, seconds: float) -> None:
        self.receive = receive
        self.seconds = seconds
        self.deadline = asyncio.get_running_loop().time() + seconds
        self.complete = False

    async def __call__(self) -> dict[str, Any]:
        if self.complete:
            return await self.receive()
        try:
            async with asyncio.timeout_at(self.deadline):
                message: dict[str, Any] = await self.receive()
        except TimeoutError:
            raise BodyTimeout(f"the request body did not arrive within {self.seconds:g} s "
                              "(server.body_timeout)") from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.complete = True
        return message

    async def drain(self) -> None:
        """Read and drop what is left of the body, until it ends, the client leaves or the deadline passes.
        hypercorn queues at most 10 unread body messages and, when the request ends, queues one more
        (http.disconnect) and waits for room: an answer sent over a body nobody reads (a 401 before the body)
        would wait there for ever, holding its connection. So every answer is sent after the body is read."""
        try:
            while not self.complete:
                await self()
        except BodyTimeout:
            pass

    def answering(self, send: Any) -> Any:
        """`send`, with the rest of the body drained before the answer starts (see drain)."""
        async def send_after_body(message: dict[str, Any]) -> None:
            if not self.complete and message["type"] == "http.response.start":
                await self.drain()
            await send(message)
        return send_after_body


def conflicting_framing(headers: list[tuple[bytes, bytes]]) -> bool:
    """Content-Length and Transfer-Encoding together: RFC 9112 section 6.1 says such a request may be an attempt
    to smuggle a second one past a proxy that reads it the other way, and the connection must be closed."""
    length = encoding = False
    for name, _ in headers:
        if name == b"content-length":
            length = True
        elif name == b"transfer-encoding":
            encoding = True
    return length and encoding


KNOWN_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


def method_label(method: str) -> str:
    """The HTTP method for the request log: a caller may send any token there, of any length."""
    return method if method in KNOWN_METHODS else "other"


def admin_path(path: str) -> bool:
    return path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")


def wrong_listener(path: str, server: tuple[str, int] | None, admin: tuple[str, int] | None) -> bool:
    """With server.admin_listen set (`admin`: its bound address), /admin is served on that socket alone and the
    admin socket serves nothing else; without it, /admin is served on the one listener."""
    if admin is None:
        return False
    if server is None:
        on_admin = False
    elif admin[0] in WILDCARD_HOSTS:  # bound to every address: a connection shows the address it came in on
        on_admin = server[1] == admin[1]
    else:
        on_admin = (server[0], server[1]) == admin
    return admin_path(path) != on_admin
