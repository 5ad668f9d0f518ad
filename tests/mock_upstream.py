"""Scripted OpenAI-format upstreams: real aiohttp servers on loopback, run in a thread. MockUpstream's upstream
model name picks a behaviour (normal answers come from the demo provider); ChatOnlyUpstream is a llama.cpp-shaped
engine that serves Chat Completions only."""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
import time
from typing import Any

import orjson
from aiohttp import web

from billing.metering import count_text
from core import demo
from core.config import Provider, Timeouts
from tests.loopback import LoopbackServer

DEMO = Provider("mock", "openai", "", "", Timeouts(), "demo", 0.0)

# An event stream written in the awkward ways real servers do: CRLF line ends, comments,
# a keep-alive, an `id:` line, a multi-byte character, then cut into pieces at odd offsets.
AWKWARD_TEXTS = ["Hé", "llo", " wörld", " 🌍", " end"]


def awkward_stream() -> bytes:
    head = '{"id":"c1","object":"chat.completion.chunk","created":1,"model":"awkward","choices":[{"index":0,'
    parts = [b": keep-alive\r\n\r\n"]
    parts.append(("data: " + head + '"delta":{"role":"assistant","content":""},"finish_reason":null}]}\r\n\r\n').encode())
    for i, text in enumerate(AWKWARD_TEXTS):
        data = head + '"delta":{"content":' + orjson.dumps(text).decode() + '},"finish_reason":null}]}'
        if i == 2:
            parts.append(("id: 7\r\ndata: " + data + "\r\n\r\n").encode())
        elif i == 3:
            parts.append(("data:" + data + "\n\n").encode())  # no space after the colon, LF only
        else:
            parts.append(("data: " + data + "\r\n\r\n").encode())
        if i == 1:
            parts.append(b":\r\n\r\n")
    parts.append(("data: " + head + '"delta":{},"finish_reason":"stop"}]}\r\n\r\n').encode())
    parts.append(b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"awkward","choices":[],'
                 b'"usage":{"prompt_tokens":5,"completion_tokens":6,"total_tokens":11}}\r\n\r\n')
    parts.append(b"data: [DONE]\r\n\r\n")
    return b"".join(parts)


def awkward_pieces() -> list[bytes]:
    """Cuts in the middle of 'data:', of a CRLF, of a UTF-8 character and of a JSON string."""
    raw = awkward_stream()
    cuts = sorted({3, raw.index(b"\r\n") + 1, raw.index("é".encode()) + 1, raw.index("🌍".encode()) + 2,
                   raw.index(b"data:", 40) + 2, raw.index(b"wr") if b"wr" in raw else 50, len(raw) // 2,
                   len(raw) - 5})
    pieces, last = [], 0
    for c in cuts:
        pieces.append(raw[last:c])
        last = c
    pieces.append(raw[last:])
    return [p for p in pieces if p]


class MockUpstream(LoopbackServer):
    name = "mock upstream"

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict[str, Any]] = []
        self.stream_closed = threading.Event()  # a slow stream saw its client (the gateway) leave

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/{tail:.*}", self.handle)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def last_request(self, model: str) -> dict[str, Any]:
        return next(r for r in reversed(self.requests) if r["body"].get("model") == model)

    # -- behaviours -----------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = orjson.loads(raw)
        self.requests.append({"path": request.path, "headers": dict(request.headers), "body": body})
        behaviour = body.get("model", "ok")
        if behaviour.startswith("status-"):
            status = int(behaviour.split("-")[1])
            headers = {"Retry-After": "7"} if status == 429 else {}
            err = {"error": {"message": f"mock says {status} for organization org-SECRETORG123456 "
                                        f"with key sk-proj-abcdef123456****WXYZ", "type": "mock_error",
                             "param": None, "code": "mock"}}
            return web.Response(status=status, body=orjson.dumps(err), content_type="application/json",
                                headers=headers)
        if behaviour == "hang":
            await asyncio.sleep(30)
        if behaviour == "json-for-stream":
            return web.Response(status=200, body=b'{"error":{"message":"streaming is off today"}}',
                                content_type="application/json")
        if behaviour == "not-json":
            return web.Response(status=200, body=b"<html>oops</html>", content_type="text/html")
        path = request.path[len("/v1"):]
        answer = await demo.answer(DEMO, path, raw, bool(body.get("stream")))
        if not body.get("stream"):
            return web.Response(status=200, body=await answer.read(), content_type="application/json")
        events = []
        while chunk := await answer.read_chunk():
            events.append(chunk)
        if behaviour == "no-usage":
            events = [e for e in events if b'"choices":[]' not in e]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if behaviour == "awkward":
            for piece in awkward_pieces():
                await resp.write(piece)
                await asyncio.sleep(0.005)  # let each piece leave as its own TCP segment
            await resp.write_eof()
            return resp
        if behaviour in ("slow", "slow-usage"):
            return await self._slow(request, resp, events[0], with_usage=behaviour == "slow-usage")
        if behaviour == "bulk":  # fast and large: a slow reader must not be cut off
            head = events[0].split(b'"choices"')[0]
            filler = b"x" * 16000
            for _ in range(300):
                await resp.write(head + b'"choices":[{"index":0,"delta":{"content":"' + filler + b'"}}]}\n\n')
            await resp.write(events[-1])
            await resp.write_eof()
            return resp
        if behaviour == "linger":  # a complete answer, then the connection stays open
            for e in events:
                await resp.write(e)
            await asyncio.sleep(30)
            return resp
        if behaviour in ("die", "eof", "stall"):
            for e in events[:3]:
                await resp.write(e)
            if behaviour == "die":
                request.transport.abort()  # type: ignore[union-attr]
                return resp
            if behaviour == "stall":
                await asyncio.sleep(30)
            await resp.write_eof()
            return resp
        for e in events:
            await resp.write(e)
        await resp.write_eof()
        return resp

    async def _slow(self, request: web.Request, resp: web.StreamResponse, first: bytes,
                    with_usage: bool = False) -> web.StreamResponse:
        """A long stream, one chunk every 20 ms, that notices when its reader goes away. With usage:
        every chunk carries the running usage (as some providers send it), 7 prompt tokens + 1 per chunk."""
        head = first.split(b'"choices"')[0]
        try:
            await resp.write(first)
            for i in range(1500):
                usage = b',"usage":{"prompt_tokens":7,"completion_tokens":%d,"total_tokens":%d}' % (i + 1, i + 8) \
                    if with_usage else b""
                await resp.write(head + b'"choices":[{"index":0,"delta":{"content":" tick"},"finish_reason":null}]'
                                 + usage + b'}\n\n')
                await asyncio.sleep(0.02)
                if request.transport is None or request.transport.is_closing():
                    break
        except (ConnectionResetError, ConnectionError, RuntimeError):
            pass
        finally:
            self.stream_closed.set()
        return resp


class ChatOnlyUpstream(LoopbackServer):
    """An OpenAI-compatible engine shaped like llama.cpp's Python server (../shared/PROTOCOLS.md §6): it serves
    POST /v1/chat/completions and nothing else (/v1/responses is FastAPI's 404), reads the output limit from
    max_tokens only (max_completion_tokens is ignored: the answer runs to the context), reports usage in
    non-stream answers, and sends no usage in streams even when asked, with CRLF line ends (sse-starlette).
    The model "vllm" sends the usage chunk when stream_options.include_usage asks, as vLLM does.
    What it answers: offered tools and no tool result yet, it calls the first tool with {"city": "Paris"};
    after a tool result, "The tool said: <result>"; otherwise it echoes the last user text, word by word."""

    name = "chat-only upstream"
    CONTEXT = 2000  # the tokens an answer may run to when the request sets no max_tokens
    ARGUMENTS = ('{"city": ', '"Paris"}')  # the tool call's arguments, in the two fragments a stream sends

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict[str, Any]] = []  # path, body (None off the chat route), usage it reported

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_route("*", "/{tail:.*}", self.not_found)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def since(self, seen: int) -> list[dict[str, Any]]:
        return self.requests[seen:]

    async def not_found(self, request: web.Request) -> web.Response:
        await request.read()
        self.requests.append({"path": request.path, "body": None, "usage": None})
        return web.json_response({"detail": "Not Found"}, status=404)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        messages = body.get("messages") or []
        limit = body["max_tokens"] if isinstance(body.get("max_tokens"), int) else self.CONTEXT
        text, call = self._answer(messages, body.get("tools") or [])
        pieces, finished = self._pieces(text, limit)
        prompt = sum(count_text(m.get("content") or "") + 4 for m in messages if isinstance(m.get("content"), str))
        usage = {"prompt_tokens": prompt, "completion_tokens": sum(map(count_text, pieces)) + (9 if call else 0)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        self.requests.append({"path": request.path, "body": body, "usage": usage})
        finish = "tool_calls" if call else "stop" if finished else "length"
        head = {"id": "chatcmpl-" + hashlib.sha256(orjson.dumps(body)).hexdigest()[:20],
                "created": int(time.time()), "model": body.get("model")}
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": "".join(pieces) or None}
            if call:
                message["tool_calls"] = [{**call, "function": {**call["function"],
                                                              "arguments": "".join(self.ARGUMENTS)}}]
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            return web.json_response({**head, "object": "chat.completion", "choices": [choice], "usage": usage})
        deltas: list[dict[str, Any]] = [{"role": "assistant"}]
        deltas += [{"content": p} for p in pieces]
        if call:
            deltas.append({"tool_calls": [{"index": 0, **call}]})
            deltas += [{"tool_calls": [{"index": 0, "function": {"arguments": a}}]} for a in self.ARGUMENTS]
        chunks = [{"index": 0, "delta": d, "logprobs": None, "finish_reason": None} for d in deltas]
        chunks.append({"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for choice in chunks:
            await resp.write(self._event({**head, "object": "chat.completion.chunk", "choices": [choice]}))
        options = body.get("stream_options") or {}
        if body.get("model") == "vllm" and options.get("include_usage"):
            await resp.write(self._event({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage}))
        await resp.write(b"data: [DONE]\r\n\r\n")
        await resp.write_eof()
        return resp

    @staticmethod
    def _pieces(text: str, limit: int) -> tuple[list[str], bool]:
        """The text one word per chunk, cut at `limit` tokens; whether it all fitted."""
        pieces, used = [], 0
        for word in re.findall(r"\s*\S+", text):
            used += count_text(word)
            if used > limit:
                return pieces, False
            pieces.append(word)
        return pieces, True

    @staticmethod
    def _event(data: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(data) + b"\r\n\r\n"

    @staticmethod
    def _answer(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> tuple[str, dict[str, Any] | None]:
        """The answer's text, or the tool call it makes (id, type and name; the arguments are ARGUMENTS)."""
        last = messages[-1] if messages else {}
        if last.get("role") == "tool":
            return f"The tool said: {last.get('content')}", None
        if tools and not any(m.get("role") == "tool" for m in messages):
            digest = hashlib.sha256(orjson.dumps(messages)).hexdigest()[:12]
            return "", {"id": f"call_{digest}", "type": "function",
                        "function": {"name": tools[0]["function"]["name"], "arguments": ""}}
        users = [m.get("content") for m in messages if m.get("role") == "user"]
        text = users[-1] if users else ""
        if isinstance(text, list):
            text = " ".join(p.get("text", "") for p in text if isinstance(p, dict))
        return text or "", None
