"""The built-in `demo` provider: answers OpenAI-format requests in-process, deterministically, so the
shipped config works offline. It produces the same bytes a real upstream would, and the relay treats it as one."""

from __future__ import annotations

import base64
import hashlib
import re
import struct
import time
from typing import Any

import orjson

from adapters import openai
from adapters.internal import InvalidRequest
from billing.metering import count_text
from core import demo_images, demo_videos
from core.demo_response import DemoResponse
from core.config import Provider

GREETING = "Hello! I am the TokenToll demo model. Send me a message and I will echo it back."
EMBEDDING_DIMENSIONS = 256
_WORDS = re.compile(r"\s*\S+")


async def answer(provider: Provider, path: str, body: bytes, stream: bool) -> DemoResponse:
    try:
        return await _answer(provider, path, body, stream)
    except InvalidRequest as exc:  # what a real upstream would refuse: its 400, never an exception in the relay
        return DemoResponse(400, orjson.dumps({"error": {"message": str(exc), "type": "invalid_request_error",
                                                         "param": exc.param, "code": None}}), [], 0)


async def _answer(provider: Provider, path: str, body: bytes, stream: bool) -> DemoResponse:
    req = orjson.loads(body)
    endpoint = next(e for e, p in openai.UPSTREAM_PATHS.items() if p == path)
    created = int(time.time())
    if endpoint == "embeddings":
        return DemoResponse(200, _embeddings(req), [], 0)
    prompt_tokens = openai.estimate_prompt(endpoint, req)
    limit = openai.max_output_tokens(endpoint, req, 1 << 30)
    pieces, finished = _reply_pieces(_last_user_text(endpoint, req), limit)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": sum(map(count_text, pieces))}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    finish = "stop" if finished else "length"
    rid = "demo-" + hashlib.sha256(body).hexdigest()[:24]
    model = req.get("model", "demo")
    if endpoint == "responses":
        events = _responses_events(rid, model, created, pieces, usage, finished)
        if stream:
            return DemoResponse(200, b"", events, provider.demo_chunk_delay)
        final = orjson.loads(events[-1].split(b"data: ", 1)[1])["response"]
        return DemoResponse(200, orjson.dumps(final), [], 0)
    obj = "chat.completion" if endpoint == "chat" else "text_completion"
    if not stream:
        text = "".join(pieces)
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if endpoint == "chat":
            choice["message"] = {"role": "assistant", "content": text, "refusal": None}
        else:
            choice["text"] = text
        return DemoResponse(200, orjson.dumps(
            {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice], "usage": usage}), [], 0)
    head = {"id": rid, "object": obj + ".chunk" if endpoint == "chat" else obj, "created": created, "model": model}

    def chunk(choice: dict[str, Any] | None, usage_: dict[str, Any] | None = None) -> bytes:
        return b"data: " + orjson.dumps({**head, "choices": [choice] if choice else [], "usage": usage_}) + b"\n\n"

    def delta(text: str, first: bool = False) -> dict[str, Any]:
        if endpoint == "chat":
            d: dict[str, Any] = {"role": "assistant", "content": text} if first else {"content": text}
            return {"index": 0, "delta": d, "logprobs": None, "finish_reason": None}
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": None}

    events = [chunk(delta("", True))] if endpoint == "chat" else []
    events += [chunk(delta(p)) for p in pieces]
    last = delta("")
    last["finish_reason"] = finish
    if endpoint == "chat":
        last["delta"] = {}
    events.append(chunk(last))
    options = req.get("stream_options") or {}
    if options.get("include_usage"):
        events.append(chunk(None, usage))
    events.append(b"data: [DONE]\n\n")
    return DemoResponse(200, b"", events, provider.demo_chunk_delay)


def _last_user_text(endpoint: str, req: dict[str, Any]) -> str:
    if endpoint == "completions":
        prompt = req.get("prompt")
        return prompt if isinstance(prompt, str) else " ".join(p for p in prompt or () if isinstance(p, str))
    items = req.get("messages") if endpoint == "chat" else req.get("input")
    if isinstance(items, str):
        return items
    for item in reversed(items or []):
        if isinstance(item, dict) and item.get("role") == "user":
            content = item.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _reply_pieces(text: str, limit: int) -> tuple[list[str], bool]:
    """The echo, one word per chunk (about a token each), cut at the output limit."""
    words = _WORDS.findall(text.strip() or GREETING)
    pieces, used = [], 0
    for word in words:
        n = count_text(word)
        if used + n > limit:
            return pieces, False
        pieces.append(word)
        used += n
    return pieces, True


def _embeddings(req: dict[str, Any]) -> bytes:
    inputs = req.get("input")
    if not isinstance(inputs, list) or (inputs and isinstance(inputs[0], int)):
        inputs = [inputs]
    dims = req.get("dimensions") if isinstance(req.get("dimensions"), int) else EMBEDDING_DIMENSIONS
    dims = max(1, min(dims, 4096))
    data, tokens = [], 0
    for i, item in enumerate(inputs):
        text = item if isinstance(item, str) else orjson.dumps(item).decode()
        tokens += count_text(item) if isinstance(item, str) else len(item) if isinstance(item, list) else 1
        vector = _vector(text, dims)
        if req.get("encoding_format") == "base64":
            embedding: Any = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
        else:
            embedding = vector
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    return orjson.dumps({"object": "list", "data": data, "model": req.get("model"),
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _vector(text: str, dims: int) -> list[float]:
    """A deterministic unit vector derived from the text's hash (demo data, not money)."""
    raw = b""
    counter = 0
    while len(raw) < dims * 4:
        raw += hashlib.sha256(text.encode() + counter.to_bytes(4, "little")).digest()
        counter += 1
    ints = struct.unpack(f"<{dims}i", raw[: dims * 4])
    norm = sum(v * v for v in ints) ** 0.5 or 1.0
    return [round(v / norm, 6) for v in ints]


def _responses_events(rid: str, model: str, created: int, pieces: list[str], usage: dict[str, int],
                      finished: bool) -> list[bytes]:
    seq = 0
    out: list[bytes] = []
    msg_id = "msg_" + rid
    text = "".join(pieces)

    def emit(kind: str, **fields: Any) -> None:
        nonlocal seq
        out.append(b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, "sequence_number": seq, **fields}) + b"\n\n")
        seq += 1

    def response(status: str, output: list[Any], usage_: Any) -> dict[str, Any]:
        return {"id": "resp_" + rid, "object": "response", "created_at": created, "status": status, "model": model,
                "output": output, "usage": usage_, "error": None,
                "incomplete_details": None if finished else {"reason": "max_output_tokens"}}

    part = {"type": "output_text", "text": "", "annotations": []}
    emit("response.created", response=response("in_progress", [], None))
    emit("response.in_progress", response=response("in_progress", [], None))
    item = {"type": "message", "id": msg_id, "status": "in_progress", "role": "assistant", "content": []}
    emit("response.output_item.added", output_index=0, item=item)
    emit("response.content_part.added", item_id=msg_id, output_index=0, content_index=0, part=part)
    for p in pieces:
        emit("response.output_text.delta", item_id=msg_id, output_index=0, content_index=0, delta=p, logprobs=[])
    emit("response.output_text.done", item_id=msg_id, output_index=0, content_index=0, text=text, logprobs=[])
    done_part = {**part, "text": text}
    emit("response.content_part.done", item_id=msg_id, output_index=0, content_index=0, part=done_part)
    done_item = {**item, "status": "completed", "content": [done_part]}
    emit("response.output_item.done", output_index=0, item=done_item)
    final_usage = {"input_tokens": usage["prompt_tokens"], "input_tokens_details": {"cached_tokens": 0},
                   "output_tokens": usage["completion_tokens"], "output_tokens_details": {"reasoning_tokens": 0},
                   "total_tokens": usage["total_tokens"]}
    kind = "response.completed" if finished else "response.incomplete"
    emit(kind, response=response("completed" if finished else "incomplete", [done_item], final_usage))
    return out


async def request(provider: Provider, method: str, path: str, body: bytes | None,
                  content_type: str | None) -> DemoResponse:
    """The demo's image and video endpoints (Upstreams.request): generated in-process, deterministically."""
    if path.startswith("/images/"):
        return await demo_images.answer(method, path, body, content_type)
    if path.startswith("/videos"):
        return await demo_videos.answer(provider, method, path, body, content_type)
    return DemoResponse(404, orjson.dumps({"error": {"message": f"the demo provider has no {method} {path}",
                                                     "type": "invalid_request_error", "code": "not_found"}}), [], 0)
