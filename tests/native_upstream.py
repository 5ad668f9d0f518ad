"""A mock upstream speaking the OpenAI, Anthropic and Gemini wire formats, written by hand from PROTOCOLS.md
(no gateway code): an aiohttp server on loopback in its own thread; the upstream model name picks a behaviour."""

from __future__ import annotations

import asyncio
import re
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from tests.loopback import LoopbackServer

TOOL_NAME, TOOL_ARGS = "get_weather", {"city": "Paris"}
ARG_FRAGMENTS = ('{"city":', '"Paris"}')  # the compact JSON of TOOL_ARGS, in 2 fragments
BEHAVIOURS = ("scripted", "cached", "die", "stream-error", "runaway", "engine", "media-heavy")
# Behaviours of real engines (PROTOCOLS §6): "runaway" ignores every output limit and writes RUNAWAY_WORDS tokens;
# "engine" is llama.cpp's Python server: it obeys max_tokens (Anthropic: max_tokens, Gemini: maxOutputTokens)
# and ignores max_completion_tokens. Neither sends usage in an OpenAI stream, even when asked. "media-heavy"
# reports a million input tokens, as Gemini does for a long video given by URL.
RUNAWAY_WORDS = 400  # " word" is one token in cl100k, so the text's count is exact
NO_STREAM_USAGE = ("runaway", "engine")
PACED_FRAMES = 12  # streams longer than this are paced, so that a reader who stops early is seen to stop
GEMINI_CALL = {"functionCall": {"name": TOOL_NAME, "args": TOOL_ARGS}, "thoughtSignature": "c2lnLTE="}  # no id
EMBEDDING = [0.1, 0.2, 0.3]
ERRORS = {  # HTTP status: OpenAI type and code, Anthropic type, Gemini status (PROTOCOLS §3)
    400: ("invalid_request_error", None, "invalid_request_error", "INVALID_ARGUMENT"),
    401: ("invalid_request_error", "invalid_api_key", "authentication_error", "UNAUTHENTICATED"),
    403: ("request_forbidden", None, "permission_error", "PERMISSION_DENIED"),
    404: ("invalid_request_error", "model_not_found", "not_found_error", "NOT_FOUND"),
    413: ("invalid_request_error", None, "request_too_large", "INVALID_ARGUMENT"),
    429: ("requests", "rate_limit_exceeded", "rate_limit_error", "RESOURCE_EXHAUSTED"),
    503: ("server_error", "service_unavailable", "api_error", "UNAVAILABLE"),
    504: ("server_error", None, "timeout_error", "DEADLINE_EXCEEDED"),
    529: ("server_error", None, "overloaded_error", "UNAVAILABLE")}
Usage = tuple[int, int, int, int]  # input in total (cache included), cache read, cache write, output


@dataclass
class Recorded:
    path: str
    query: str
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON (the raw text if it was not JSON)


@dataclass
class Answer:
    text: str | None  # None: one get_weather tool call
    usage: Usage


def _json(obj: Any) -> web.Response:
    return web.Response(body=orjson.dumps(obj), content_type="application/json")


def _data(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _event(name: str, obj: Any) -> bytes:
    return b"event: " + name.encode() + b"\n" + _data(obj)


def _thirds(text: str) -> list[str]:
    """A short text in three pieces; a long one in pieces of five words (each with its leading space)."""
    words = re.findall(r"\s*\S+", text)
    if len(words) > 12:
        return ["".join(words[i:i + 5]) for i in range(0, len(words), 5)]
    n = len(text)
    return [text[: n // 3], text[n // 3: 2 * n // 3], text[2 * n // 3:]]


def _obeyed_limit(fmt: str, body: dict[str, Any]) -> int | None:
    """The output limit llama.cpp's Python server reads: max_tokens only (and each other format's own field)."""
    value = ((body.get("generationConfig") or {}).get("maxOutputTokens") if fmt == "gemini"
             else body.get("max_tokens"))
    return value if isinstance(value, int) else None


def _joined(content: Any) -> str:
    """The text of a string, or of a list of text parts/blocks."""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content or () if isinstance(p, dict) and p.get("type") == "text")


def _tool_result(fmt: str, body: dict[str, Any]) -> str | None:
    """The tool-result text carried by the last turn, or None if the last turn is not a tool result."""
    turns = body.get("contents" if fmt == "gemini" else "messages") or [{}]
    last = turns[-1] if isinstance(turns[-1], dict) else {}
    if fmt == "openai":
        return _joined(last.get("content")) if last.get("role") == "tool" else None
    if fmt == "anthropic":
        blocks = last.get("content") if last.get("role") == "user" else None
        results = [b for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"] \
            if isinstance(blocks, list) else []
        return _joined(results[-1].get("content", "")) if results else None
    answers = [p["functionResponse"] for p in last.get("parts") or () if "functionResponse" in p]
    if not answers:
        return None
    response = answers[-1].get("response") or {}
    return response["result"] if isinstance(response.get("result"), str) else orjson.dumps(response).decode()


def _answer(fmt: str, model: str, body: dict[str, Any]) -> Answer:
    if model in ("runaway", "engine"):
        words = RUNAWAY_WORDS if model == "runaway" else min(_obeyed_limit(fmt, body) or RUNAWAY_WORDS, RUNAWAY_WORDS)
        return Answer(" word" * words, (20, 0, 0, words))
    if model == "media-heavy":
        return Answer("I watched it.", (1_000_000, 0, 0, 4))
    if model == "cached":
        return Answer("cached answer", (20, 8, 4, 9))
    result = _tool_result(fmt, body) if model == "scripted" else None
    if result is not None:
        return Answer("The tool said: " + result, (20, 0, 0, 9))
    tools = body.get("tools") or ()
    if fmt == "gemini":
        tools = [t for t in tools if isinstance(t, dict) and t.get("functionDeclarations")]
    if model == "scripted" and tools:
        return Answer(None, (20, 0, 0, 9))
    return Answer(f"Hello from {fmt}", (20, 0, 0, 9))


# -- per-format usage and bodies --------------------------------------------------------------------


def _openai_usage(u: Usage) -> dict[str, Any]:
    details: dict[str, int] = {"cached_tokens": u[1]}
    if u[2]:
        details["cache_write_tokens"] = u[2]
    return {"prompt_tokens": u[0], "completion_tokens": u[3], "total_tokens": u[0] + u[3],
            "prompt_tokens_details": details, "completion_tokens_details": {"reasoning_tokens": 0}}


def _anthropic_usage(u: Usage, output: int) -> dict[str, int]:
    return {"input_tokens": u[0] - u[1] - u[2], "cache_creation_input_tokens": u[2],
            "cache_read_input_tokens": u[1], "output_tokens": output}


def _gemini_usage(u: Usage, output: int) -> dict[str, int]:
    usage = {"promptTokenCount": u[0], "candidatesTokenCount": output, "totalTokenCount": u[0] + output}
    if u[1]:
        usage["cachedContentTokenCount"] = u[1]
    return usage


def _body(fmt: str, model: str, a: Answer) -> dict[str, Any]:
    """The complete non-stream response body (PROTOCOLS §4.2)."""
    if fmt == "openai":
        message: dict[str, Any] = {"role": "assistant", "content": a.text, "refusal": None, "annotations": []}
        if a.text is None:
            message["tool_calls"] = [{"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
                                      "function": {"name": TOOL_NAME, "arguments": "".join(ARG_FRAGMENTS)}}]
        return {"id": "chatcmpl-" + uuid.uuid4().hex, "object": "chat.completion", "created": int(time.time()),
                "model": model, "choices": [{"index": 0, "message": message, "logprobs": None,
                                             "finish_reason": "stop" if a.text is not None else "tool_calls"}],
                "usage": _openai_usage(a.usage)}
    if fmt == "anthropic":
        block = {"type": "text", "text": a.text} if a.text is not None else \
            {"type": "tool_use", "id": "toolu_01" + uuid.uuid4().hex[:22], "name": TOOL_NAME, "input": TOOL_ARGS}
        return {"id": "msg_01" + uuid.uuid4().hex[:22], "type": "message", "role": "assistant", "model": model,
                "content": [block], "stop_reason": "end_turn" if a.text is not None else "tool_use",
                "stop_sequence": None, "usage": _anthropic_usage(a.usage, a.usage[3])}
    part = {"text": a.text} if a.text is not None else GEMINI_CALL
    return {"candidates": [{"content": {"role": "model", "parts": [part]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": _gemini_usage(a.usage, a.usage[3]), "modelVersion": model,
            "responseId": uuid.uuid4().hex[:22]}


def _openai_stream(model: str, a: Answer, include_usage: bool) -> list[bytes]:
    cid, created = "chatcmpl-" + uuid.uuid4().hex, int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        c: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                             "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            c["usage"] = None
        return _data(c)

    frames = [b": keep-alive\n\n", chunk({"role": "assistant", "content": ""})]
    if a.text is not None:
        frames += [chunk({"content": piece}) for piece in _thirds(a.text)]
    else:
        frames.append(chunk({"tool_calls": [{"index": 0, "id": "call_" + uuid.uuid4().hex[:24], "type": "function",
                                             "function": {"name": TOOL_NAME, "arguments": ""}}]}))
        frames += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": f}}]}) for f in ARG_FRAGMENTS]
    frames.append(chunk({}, "stop" if a.text is not None else "tool_calls"))
    if include_usage:
        frames.append(_data({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                             "choices": [], "usage": _openai_usage(a.usage)}))
    return frames + [b"data: [DONE]\n\n"]


def _anthropic_stream(model: str, a: Answer) -> list[bytes]:
    message = {"id": "msg_01" + uuid.uuid4().hex[:22], "type": "message", "role": "assistant", "model": model,
               "content": [], "stop_reason": None, "stop_sequence": None, "usage": _anthropic_usage(a.usage, 1)}
    if a.text is not None:
        block: dict[str, Any] = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in _thirds(a.text)]
    else:
        block = {"type": "tool_use", "id": "toolu_01" + uuid.uuid4().hex[:22], "name": TOOL_NAME, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": f} for f in ARG_FRAGMENTS]
    return [_event("message_start", {"type": "message_start", "message": message}),
            _event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}),
            _event("ping", {"type": "ping"}),
            *[_event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d}) for d in deltas],
            _event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            _event("message_delta", {"type": "message_delta", "delta": {
                "stop_reason": "end_turn" if a.text is not None else "tool_use", "stop_sequence": None},
                "usage": {"output_tokens": a.usage[3]}}),
            _event("message_stop", {"type": "message_stop"})]


def _gemini_chunks(model: str, a: Answer) -> list[dict[str, Any]]:
    rid = uuid.uuid4().hex[:22]

    def chunk(part: dict[str, Any], output: int, last: bool) -> dict[str, Any]:
        cand = {"content": {"role": "model", "parts": [part]}, **({"finishReason": "STOP"} if last else {}),
                "index": 0}
        return {"candidates": [cand], "usageMetadata": _gemini_usage(a.usage, output), "modelVersion": model,
                "responseId": rid}

    if a.text is None:
        return [chunk(GEMINI_CALL, a.usage[3], True)]
    out, pieces = a.usage[3], _thirds(a.text)
    return [chunk({"text": p}, out * (i + 1) // len(pieces), i == len(pieces) - 1) for i, p in enumerate(pieces)]


# where the first text piece sits in each stream, and each format's in-band error
FIRST_TEXT = {"openai": 2, "anthropic": 3, "gemini": 0}
STREAM_ERROR = {
    "openai": _data({"error": {"message": "overloaded", "type": "server_error", "param": None, "code": "overloaded"}}),
    "anthropic": _event("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    "gemini": _data({"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}})}


def _error(fmt: str, status: int, message: str) -> web.Response:
    """HTTP `status` with the format's own error body (and its request-id header)."""
    otype, code, atype, gstatus = ERRORS.get(status) or (
        ("server_error", None, "api_error", "INTERNAL") if status >= 500 else
        ("invalid_request_error", None, "invalid_request_error", "FAILED_PRECONDITION"))
    headers = {"retry-after": "1"} if status == 429 else {}
    if fmt == "openai":
        body: Any = {"error": {"message": message, "type": otype, "param": None, "code": code}}
        headers["x-request-id"] = "req_" + uuid.uuid4().hex
    elif fmt == "anthropic":
        body = {"type": "error", "error": {"type": atype, "message": message}, "request_id": "req_011mock"}
        headers["request-id"] = "req_011mock"
    else:
        body = {"error": {"code": status, "message": message, "status": gstatus}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


COUNTED = 42  # what the providers' own token counting answers
PNG_DOT = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154789c6360"
                        "f8cfc0f01f0005000201ab0b1d2b0000000049454e44ae426082")  # a 1x1 PNG
BIG_PNG_BYTES = 256 * 1024


class NativeUpstream(LoopbackServer):
    name = "native upstream"

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Recorded] = []
        self.paced: list[tuple[int, int]] = []  # long streams: (frames written, frames in all), as each ended
        self.media_fetches: list[str] = []  # the media files asked for, by name, in order

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/openai/v1/chat/completions", self._chat)
        app.router.add_post("/openai/v1/embeddings", self._openai_embeddings)
        app.router.add_post("/openai/v1/completions", self._completions)
        app.router.add_post("/openai/v1/responses", self._responses)
        app.router.add_get("/media/{name}", self._media)
        app.router.add_post("/anthropic/v1/messages", self._chat)
        app.router.add_post("/anthropic/v1/messages/count_tokens", self._count)
        app.router.add_post("/gemini/{version:v1beta|v1}/models/{rest:.+}", self._gemini)

    # -- handlers -------------------------------------------------------------------------------------

    async def _record(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = raw.decode(errors="replace")
        self.requests.append(Recorded(request.path, request.query_string,
                                      {k.lower(): v for k, v in request.headers.items()}, body))
        return body

    async def _chat(self, request: web.Request) -> web.StreamResponse:  # OpenAI chat and Anthropic messages
        body = await self._record(request)
        stream = isinstance(body, dict) and bool(body.get("stream"))
        return await self._generate(request, request.path.split("/")[1], body, stream)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        """The legacy Completions API, for the engine behaviours: text_completion chunks, no stream usage."""
        body = await self._record(request)
        model = str(body.get("model", "")) if isinstance(body, dict) else ""
        if early := self._early(request, "openai", model, body):
            return early
        answer = _answer("openai", model, body)
        text, created = answer.text or "", int(time.time())
        head = {"id": "cmpl-1", "object": "text_completion", "created": created, "model": model}
        if not body.get("stream"):
            return _json({**head, "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
                          "usage": {"prompt_tokens": answer.usage[0], "completion_tokens": answer.usage[3],
                                    "total_tokens": answer.usage[0] + answer.usage[3]}})
        frames = [_data({**head, "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": None}]})
                  for piece in _thirds(text)]
        frames += [_data({**head, "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}]}),
                   b"data: [DONE]\n\n"]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        return await self._paced(request, resp, frames)

    async def _openai_embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        model = str(body.get("model", "")) if isinstance(body, dict) else ""
        if early := self._early(request, "openai", model, body):
            return early
        inp = body.get("input")  # a string, a token list, or a list of either: floats whatever encoding_format says
        n = 1 if isinstance(inp, str) or (isinstance(inp, list) and all(isinstance(x, int) for x in inp)) else len(inp)
        data = [{"object": "embedding", "index": i, "embedding": EMBEDDING} for i in range(n)]
        return _json({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": 5, "total_tokens": 5}})

    async def _media(self, request: web.Request) -> web.StreamResponse:
        """Files for media URLs: a tiny PNG, a redirect to it, a large PNG (BIG_PNG_BYTES, any name starting
        big-), and a page that is not media."""
        name = request.match_info["name"]
        self.media_fetches.append(name)
        if name.startswith("big-"):
            return web.Response(body=PNG_DOT + bytes(BIG_PNG_BYTES - len(PNG_DOT)), content_type="image/png")
        if name == "dot.png":
            return web.Response(body=PNG_DOT, content_type="image/png")
        if name == "hop.png":
            raise web.HTTPFound("/media/dot.png")
        return web.Response(text="<html></html>", content_type="text/html")

    async def _count(self, request: web.Request) -> web.StreamResponse:
        """Token counting, exact at the provider: always 42 here, so a test can tell it from an estimate."""
        await self._record(request)
        return _json({"input_tokens": COUNTED})

    async def _count_recorded(self, body: Any) -> web.StreamResponse:
        return _json({"totalTokens": COUNTED})

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        """The Responses API, for OpenAI clients passed through: the scripted behaviour only."""
        body = await self._record(request)
        model = str(body.get("model", "")) if isinstance(body, dict) else ""
        if early := self._early(request, "openai", model, body):
            return early
        if model in ("runaway", "engine", "media-heavy"):
            return await self._responses_text(request, model, body)
        items = body.get("input")
        last = items[-1] if isinstance(items, list) and items and isinstance(items[-1], dict) else {}
        if last.get("type") == "function_call_output":
            output = [{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant", "content": [
                {"type": "output_text", "text": "The tool said: " + str(last.get("output")), "annotations": []}]}]
        elif body.get("tools"):
            output = [{"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": TOOL_NAME,
                       "arguments": orjson.dumps(TOOL_ARGS).decode(), "status": "completed"}]
        else:
            output = [{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant", "content": [
                {"type": "output_text", "text": "Hello from openai", "annotations": []}]}]
        usage = {"input_tokens": 20, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 9,
                 "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 29}
        done = {"id": "resp_1", "object": "response", "created_at": 1, "status": "completed", "model": model,
                "output": output, "usage": usage, "tools": [], "tool_choice": "auto", "parallel_tool_calls": True}
        if not body.get("stream"):
            return _json(done)
        started = {**done, "status": "in_progress", "output": [], "usage": None}
        events = [("response.created", {"response": started}), ("response.in_progress", {"response": started})]
        for i, item in enumerate(output):  # whole items: enough for the SDK's accumulator
            events.append(("response.output_item.added", {"output_index": i, "item": item}))
            events.append(("response.output_item.done", {"output_index": i, "item": item}))
        events.append(("response.completed", {"response": done}))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for n, (name, data) in enumerate(events):
            await resp.write(_event(name, {"type": name, "sequence_number": n, **data}))
        await resp.write_eof()
        return resp

    async def _paced(self, request: web.Request, resp: web.StreamResponse,
                     frames: list[bytes]) -> web.StreamResponse:
        """A long stream, a frame every 5 ms, that stops when its reader has gone (and records how far it got)."""
        written = 0
        try:
            for frame in frames:
                if request.transport is None or request.transport.is_closing():
                    break
                await resp.write(frame)
                written += 1
                await asyncio.sleep(0.005)
            else:
                await resp.write_eof()
        except (ConnectionResetError, ConnectionError, RuntimeError):
            pass
        finally:
            self.paced.append((written, len(frames)))
        return resp

    async def _responses_text(self, request: web.Request, model: str, body: dict[str, Any]) -> web.StreamResponse:
        """A text answer of the engine behaviours, non-stream or as Responses events with a delta per piece
        ("engine" reads max_output_tokens, as llama.cpp's server does)."""
        limit = body.get("max_output_tokens") if model == "engine" else None
        answer = _answer("openai", "engine" if limit else model, {"max_tokens": limit})
        text = answer.text or ""
        usage = {"input_tokens": answer.usage[0], "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": answer.usage[3], "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": answer.usage[0] + answer.usage[3]}
        part = {"type": "output_text", "text": text, "annotations": []}
        item = {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant", "content": [part]}
        done = {"id": "resp_1", "object": "response", "created_at": 1, "status": "completed", "model": model,
                "output": [item], "usage": usage}
        if not body.get("stream"):
            return _json(done)
        started = {**done, "status": "in_progress", "output": [], "usage": None}
        where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
        events: list[tuple[str, dict[str, Any]]] = [
            ("response.created", {"response": started}), ("response.in_progress", {"response": started}),
            ("response.output_item.added", {"output_index": 0, "item": {**item, "status": "in_progress",
                                                                         "content": []}}),
            ("response.content_part.added", {**where, "part": {**part, "text": ""}})]
        events += [("response.output_text.delta", {**where, "delta": piece, "logprobs": []}) for piece in _thirds(text)]
        events += [("response.output_text.done", {**where, "text": text, "logprobs": []}),
                   ("response.content_part.done", {**where, "part": part}),
                   ("response.output_item.done", {"output_index": 0, "item": item}),
                   ("response.completed", {"response": done})]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        frames = [_event(name, {"type": name, "sequence_number": n, **data}) for n, (name, data) in enumerate(events)]
        return await self._paced(request, resp, frames)

    async def _gemini(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        model, _, method = request.match_info["rest"].rpartition(":")
        if method == "batchEmbedContents":
            if early := self._early(request, "gemini", model, body):
                return early
            return _json({"embeddings": [{"values": EMBEDDING} for _ in body.get("requests") or ()]})
        if method == "countTokens":
            return await self._count_recorded(body)
        if method not in ("generateContent", "streamGenerateContent"):
            return _error("gemini", 404, f"method {method!r} not found")
        return await self._generate(request, "gemini", body, method == "streamGenerateContent", model)

    def _early(self, request: web.Request, fmt: str, model: str, body: Any) -> web.StreamResponse | None:
        """The answers that don't depend on the request: errors, and the dropped connection."""
        if not isinstance(body, dict):
            return _error(fmt, 400, "the body is not a JSON object")
        if model.startswith("status-") and model[7:].isdigit():
            return _error(fmt, int(model[7:]), f"mock status {model[7:]}")
        if model not in BEHAVIOURS:
            return _error(fmt, 404, f"model {model!r} not found")
        if model == "die":
            request.transport.abort()  # type: ignore[union-attr]
            return web.Response()
        return None

    async def _generate(self, request: web.Request, fmt: str, body: Any, stream: bool,
                        model: str | None = None) -> web.StreamResponse:
        model = model if model is not None else str(body.get("model", "")) if isinstance(body, dict) else ""
        if not (stream and model == "die") and (early := self._early(request, fmt, model, body)):
            return early
        answer = _answer(fmt, model, body)
        if not stream:
            return _json(_body(fmt, model, answer))
        if fmt == "gemini" and request.query.get("alt") != "sse":  # without alt=sse: one JSON array
            return _json(_gemini_chunks(model, answer))
        if fmt == "openai":
            asked = bool((body.get("stream_options") or {}).get("include_usage"))
            frames = _openai_stream(model, answer, asked and model not in NO_STREAM_USAGE)
        elif fmt == "anthropic":
            frames = _anthropic_stream(model, answer)
        else:
            frames = [_data(c) for c in _gemini_chunks(model, answer)]
        if model in ("die", "stream-error"):
            frames = frames[: FIRST_TEXT[fmt] + 1] + ([STREAM_ERROR[fmt]] if model == "stream-error" else [])
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        if len(frames) > PACED_FRAMES:
            return await self._paced(request, resp, frames)
        for frame in frames:
            await resp.write(frame)
        if model == "die":
            await asyncio.sleep(0.05)  # let the bytes leave before the connection drops
            request.transport.abort()  # type: ignore[union-attr]
            return resp
        await resp.write_eof()
        return resp


SERVE_CONFIG = """# A gateway config (beside [server] and [billing]) for the engine behaviours of {url}: each format's
# upstream that ignores every limit, llama.cpp's Python server, and one that reports 1,000,000 input tokens
{providers}
[models.engine]
provider = "engine-openai"
upstream_model = "engine"
price = {{ input = "1", output = "2" }}

[models.media-window]
provider = "engine-gemini"
upstream_model = "media-heavy"
max_input_tokens = 1048576
price = {{ input = "1", output = "2" }}

[models.media-heavy]
provider = "engine-gemini"
upstream_model = "media-heavy"
price = {{ input = "1", output = "2" }}
"""


def serve() -> None:
    """`python -m tests.native_upstream --serve`: the mock until Ctrl-C, and a config to try the engines by hand."""
    import time

    up = NativeUpstream().start()
    version = {"openai": "v1", "anthropic": "v1", "gemini": "v1beta"}
    providers = "".join(f'\n[providers.engine-{f}]\nformat = "{f}"\nbase_url = "{up.base_url}/{f}/{version[f]}"\n'
                        f'\n[models.runaway-{f}]\nprovider = "engine-{f}"\nupstream_model = "runaway"\n'
                        f'price = {{ input = "1", output = "2" }}\n' for f in ("openai", "anthropic", "gemini"))
    print(SERVE_CONFIG.format(url=up.base_url, providers=providers), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        up.stop()


if __name__ == "__main__" and "--serve" in sys.argv:
    serve()
elif __name__ == "__main__":
    import urllib.error
    import urllib.request

    up, msgs = NativeUpstream().start(), [{"role": "user", "content": "hi"}]
    for path, payload in [
        ("/openai/v1/chat/completions", {"model": "scripted", "messages": msgs}),
        ("/openai/v1/chat/completions", {"model": "scripted", "messages": msgs, "stream": True,
                                         "stream_options": {"include_usage": True}}),
        ("/openai/v1/embeddings", {"model": "scripted", "input": ["a", "b"]}),
        ("/anthropic/v1/messages", {"model": "cached", "max_tokens": 9, "messages": msgs}),
        ("/anthropic/v1/messages", {"model": "stream-error", "max_tokens": 9, "messages": msgs, "stream": True}),
        ("/gemini/v1beta/models/scripted:generateContent", {"contents": []}),
        ("/gemini/v1beta/models/scripted:streamGenerateContent?alt=sse", {"contents": []}),
        ("/gemini/v1beta/models/scripted:batchEmbedContents", {"requests": [{}, {}]}),
        ("/openai/v1/chat/completions", {"model": "status-429", "messages": msgs}),
    ]:
        req = urllib.request.Request(up.base_url + path, orjson.dumps(payload), {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        print(f"{status} {path} {payload.get('model', '')}: {raw[:90]!r}")
    up.stop()
