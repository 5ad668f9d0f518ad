"""Stack floor for bench/run.py: a featureless relay on the gateway's own stack (hypercorn on uvloop, aiohttp).
It is the floor our stack allows, to show how much of the gateway's cost is the stack's own."""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import uvloop
import yarl
from hypercorn.asyncio import serve
from hypercorn.config import Config

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SSE_HEADERS = [  # the gateway's own stream headers
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class Floor:
    """ASGI app: POST each request body unchanged to upstream + path and send back what comes."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.urls: dict[str, yarl.URL] = {}
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.relay(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while (message := await receive())["type"] != "lifespan.shutdown":
            connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=60)  # as the gateway's pool
            self.session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None),
                                                 skip_auto_headers=("User-Agent",))
            await send({"type": "lifespan.startup.complete"})
        if self.session is not None:
            await self.session.close()
        await send({"type": "lifespan.shutdown.complete"})

    async def relay(self, scope: Message, receive: Receive, send: Send) -> None:
        assert self.session is not None, "no lifespan startup"
        body = await read_body(receive)
        url = self.urls.get(scope["path"])
        if url is None:
            url = self.urls[scope["path"]] = yarl.URL(self.upstream + scope["path"], encoded=True)
        headers = {"Content-Type": header(scope, b"content-type") or "application/json"}
        async with self.session.post(url, data=body, headers=headers) as resp:
            content_type = resp.headers.get("Content-Type", "application/octet-stream")
            if content_type.startswith("text/event-stream"):
                await send({"type": "http.response.start", "status": resp.status, "headers": SSE_HEADERS})
                async for chunk in resp.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            data = await resp.read()
        await send({"type": "http.response.start", "status": resp.status,
                    "headers": [(b"content-type", content_type.encode()),
                                (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})


async def read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


def header(scope: Message, name: bytes) -> str | None:
    return next((v.decode("latin-1") for k, v in scope["headers"] if k == name), None)


def hypercorn_config(sock: socket.socket) -> Config:
    """The gateway's settings: one worker on an inherited socket, no access log."""
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = None
    config.include_server_header = False
    config.keep_alive_timeout = 75
    config.graceful_timeout = 10
    return config


async def run(upstream: str, sock: socket.socket) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(Floor(upstream), hypercorn_config(sock), shutdown_trigger=stop.wait)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/stack_floor.py", description=__doc__)
    p.add_argument("upstream", help="upstream base URL, e.g. http://127.0.0.1:8081")
    p.add_argument("port", type=int, help="port to listen on (127.0.0.1), 0 for any free port")
    args = p.parse_args(argv)
    sock = socket.create_server(("127.0.0.1", args.port), backlog=4096)
    print(f"stack-floor: serving http://127.0.0.1:{sock.getsockname()[1]}", file=sys.stderr, flush=True)
    uvloop.run(run(args.upstream, sock))
    return 0


if __name__ == "__main__":
    sys.exit(main())
