"""A misbehaving upstream for the chaos test: speaks the OpenAI, Anthropic and Gemini formats (the bodies and
streams of tests/native_upstream.py) and misbehaves as each request asks. The behaviour is written in the
prompt as `chaos=<name>` (it survives every translation), so the client side draws it from a seeded random
and a failing run replays exactly from its seed, whatever order the requests arrive in."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Any

import orjson
from aiohttp import web

from tests.loopback import LoopbackServer
from tests.native_upstream import (
    FIRST_TEXT,
    _anthropic_stream,
    _answer,
    _body,
    _data,
    _error,
    _gemini_chunks,
    _openai_stream,
)

MARK = re.compile(rb"chaos=([a-z0-9-]+)")
NONCE = re.compile(rb"nonce=([0-9a-f]+)")
# What each behaviour does (the test's expectations of the gateway live in tests/test_chaos.py):
BEHAVIOURS = (
    "ok",        # a normal answer
    "slow",      # a normal answer, its stream paced (a client may leave in the middle)
    "fail",      # the connection drops before any answer
    "stall",     # nothing at all until the gateway gives up (past the first-byte timeout)
    "cut",       # the answer starts, then the connection drops mid-way
    "idle",      # the stream starts, then goes silent past the idle timeout
    "429",       # rate limited, with Retry-After
    "500",       # a server error
    "long",      # a stream that goes on for a long time (still running when the gateway is killed), its chunks
                 # empty, within its output limit (a stream past the limit is cut by the gateway)
)
PACE = 0.05  # seconds between the frames of a paced stream
LONG_FRAMES = 1000  # 50 s: the gateway is killed long before


class ChaosUpstream(LoopbackServer):
    name = "chaos upstream"

    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter[str] = Counter()  # behaviours asked for, by the gateway's attempts
        self.nonces: set[str] = set()  # the requests that reached the upstream (by their prompt's nonce)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/openai/v1/chat/completions", self._openai)
        app.router.add_post("/anthropic/v1/messages", self._anthropic)
        app.router.add_post("/gemini/{version:v1beta|v1}/models/{rest:.+}", self._gemini)

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "openai", None)

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "anthropic", None)

    async def _gemini(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["rest"].rpartition(":")
        if method not in ("generateContent", "streamGenerateContent"):
            return _error("gemini", 404, f"method {method!r} not served here")
        return await self._serve(request, "gemini", method == "streamGenerateContent", model)

    async def _serve(self, request: web.Request, fmt: str, stream: bool | None,
                     model: str = "chaos") -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _error(fmt, 400, "the body is not JSON")
        if not isinstance(body, dict):
            return _error(fmt, 400, "the body is not a JSON object")
        if stream is None:
            stream = bool(body.get("stream"))
            model = str(body.get("model", "chaos"))
        found = MARK.search(raw)
        behaviour = found.group(1).decode() if found else "ok"
        self.seen[behaviour] += 1
        if nonce := NONCE.search(raw):
            self.nonces.add(nonce.group(1).decode())
        if behaviour in ("429", "500"):
            return _error(fmt, int(behaviour), f"chaos says {behaviour}")
        if behaviour == "fail":
            _abort(request)
            return web.Response()
        if behaviour == "stall":
            await _until_closed(request, 30)
            return web.Response()
        answer = _answer(fmt, "scripted", {})  # plain text, 20 in / 9 out
        if not stream:
            if behaviour == "slow":  # long enough for a client to leave while the gateway waits
                await _until_closed(request, 0.6)
            payload = orjson.dumps(_body(fmt, model, answer))
            if behaviour != "cut":
                return web.Response(body=payload, content_type="application/json")
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.content_length = len(payload)
            await resp.prepare(request)
            await resp.write(payload[: len(payload) // 2])
            await asyncio.sleep(0.05)
            _abort(request)
            return resp
        sse = fmt != "gemini" or request.query.get("alt") == "sse"
        if fmt == "openai":
            frames = _openai_stream(model, answer, bool((body.get("stream_options") or {}).get("include_usage")))
        elif fmt == "anthropic":
            frames = _anthropic_stream(model, answer)
        else:
            frames = [_data(c) for c in _gemini_chunks(model, answer)]
        if not sse:  # Gemini without alt=sse: one JSON array
            return web.Response(body=orjson.dumps(_gemini_chunks(model, answer)), content_type="application/json")
        first = FIRST_TEXT[fmt]
        if behaviour == "long":
            frames = frames[: first + 1] + [_idle_frame(fmt, frames[first])] * LONG_FRAMES + frames[first + 1:]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        try:
            for n, frame in enumerate(frames):
                await resp.write(frame)
                if behaviour in ("slow", "long"):
                    await asyncio.sleep(PACE)
                    if request.transport is None or request.transport.is_closing():
                        return resp
                if n == first and behaviour == "cut":
                    await asyncio.sleep(0.05)  # let the bytes leave before the connection drops
                    _abort(request)
                    return resp
                if n == first and behaviour == "idle":
                    await _until_closed(request, 30)
                    return resp
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the gateway left
        return resp


def _idle_frame(fmt: str, text_frame: bytes) -> bytes:
    """A frame that keeps a stream going without adding output: an empty content delta (Anthropic: a ping)."""
    if fmt == "anthropic":
        return b'event: ping\ndata: {"type":"ping"}\n\n'
    chunk = orjson.loads(text_frame.split(b"data: ", 1)[1])
    if fmt == "openai":
        chunk["choices"][0]["delta"] = {"content": ""}
    else:
        chunk["candidates"][0]["content"]["parts"] = [{"text": ""}]
    return _data(chunk)


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


async def _until_closed(request: web.Request, limit: float) -> None:
    """Sleep until the gateway hangs up (or `limit` seconds)."""
    for _ in range(int(limit / 0.05)):
        if request.transport is None or request.transport.is_closing():
            return
        await asyncio.sleep(0.05)
