"""A mock Ollama server speaking the native API (/api/chat, /api/embed, /api/tags, /api/version) as Ollama documents
and implements it (docs/formats-ollama.md); an aiohttp server on loopback, the model name picks a behaviour."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson
from aiohttp import web

from tests.loopback import LoopbackServer

VERSION = "0.33.0"  # what GET /api/version answers
NDJSON = "application/x-ndjson"
JSON = "application/json; charset=utf-8"  # gin's c.JSON

# Token counting, deliberately simple (the real count is the model's tokenizer; tests need an exact one):
# a word is a token (text.split()). The prompt: 4 per message + its words (content and thinking) + 256 per image
# + 10 per tool call in the history, + 20 per tool offered. The output: one token per word streamed (content and
# thinking; each NDJSON line carries one word with its leading space) + 10 per tool call made.
MESSAGE_TOKENS, IMAGE_TOKENS, TOOL_TOKENS, CALL_TOKENS = 4, 256, 20, 10

# The models. Every chat model echoes the last user message, word by word (see _answer). Behaviours:
#   thinker       supports thinking: emits message.thinking first (thinking is on unless "think": false)
#   runaway       ignores options.num_predict: RUNAWAY_WORDS words whatever the limit
#   cached        omits prompt_eval_count (and prompt_eval_duration), as Ollama < 0.1.49 did on a cached prompt
#   cache-hit     adds prompt_eval_cached_count (Ollama after PR #17943): all but the last message was cached
#   late-tools    tool calls arrive on the done:true line (Ollama's llama-server "native" chat path)
#   stream-error  streams two words, then a {"error": ...} line, and ends (no done line); non-stream: 500
#   die           streams two words, then drops the connection
#   notools       a model without the tools capability: 400 when tools are offered
#   busy          503, Ollama's full queue;  crash: 500, the runner died before answering
#   all-minilm    an embedding model: /api/embed only, chat is a 400
CHAT_MODELS = ("llama3.2", "llava", "thinker", "runaway", "cached", "cache-hit", "late-tools", "stream-error", "die",
               "notools", "busy", "crash")
EMBED_MODELS = ("all-minilm",)
RUNAWAY_WORDS = 300
THINKING = "Let me think about that."
DEFAULT_ARGS = {"city": "Paris"}  # a scripted call's arguments when the message gives none
STREAM_ERROR = "an error was encountered while running the model"
BUSY = "server busy, please try again.  maximum pending requests exceeded"
CRASH = ("model runner has unexpectedly stopped, this may be due to resource limitations or an internal error, "
         "check ollama server logs for details")
EMBED_DIM, EMBED_CONTEXT = 8, 64  # the vector length; the words an input may have (more: truncated, or a 400)

# Request options checked the way api.Options.FromMap checks them (a wrong type is a 500, see the docs page)
INT_OPTIONS = ("num_predict", "num_ctx", "top_k", "seed", "num_keep", "repeat_last_n", "num_batch", "num_gpu")
FLOAT_OPTIONS = ("temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "presence_penalty",
                 "frequency_penalty")
THINK_LEVELS = ("high", "medium", "low", "max")
B64 = re.compile(r"[A-Za-z0-9+/=\r\n]")


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any  # the parsed JSON, the raw text if it was not JSON, None if empty


@dataclass
class StreamLog:
    model: str
    written: int  # NDJSON lines written
    total: int  # lines the answer had
    complete: bool  # False: the reader left (or the model died) before the end


@dataclass
class Answer:
    thinking: list[str]  # one word per piece, with its leading space
    content: list[str]
    calls: list[dict[str, Any]]  # Ollama tool calls: {"id", "function": {"index", "name", "arguments"}}
    reason: str  # done_reason: "stop" or "length"
    prompt: int  # prompt_eval_count
    cached: int  # prompt tokens read from the cache (the cache-hit model reports them)

    @property
    def output(self) -> int:
        return len(self.thinking) + len(self.content) + CALL_TOKENS * len(self.calls)


def words(text: Any) -> int:
    return len(text.split()) if isinstance(text, str) else 0


def pieces(text: str) -> list[str]:
    return re.findall(r"\s*\S+", text)


def prompt_tokens(body: dict[str, Any]) -> int:
    """prompt_eval_count of a chat request, by the rule at the top of this file."""
    return sum(message_tokens(m) for m in body.get("messages") or []) + TOOL_TOKENS * len(body.get("tools") or [])


def message_tokens(m: Any) -> int:
    if not isinstance(m, dict):
        return 0
    return (MESSAGE_TOKENS + words(m.get("content")) + words(m.get("thinking"))
            + IMAGE_TOKENS * len(m.get("images") or []) + CALL_TOKENS * len(m.get("tool_calls") or []))


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(obj), headers={"Content-Type": JSON})


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


def _known(name: str, models: tuple[str, ...]) -> str | None:
    """The model a name means: "llama3.2" and "llama3.2:latest" are the same model."""
    base = name[: -len(":latest")] if name.endswith(":latest") else name
    return base if base in models else None


def _base64_error(image: Any) -> str | None:
    """Go's encoding/json decodes []byte with base64.StdEncoding: no data: prefix, no URL, padding required."""
    if not isinstance(image, str):
        return "json: cannot unmarshal " + type(image).__name__ + " into Go struct field Message.messages.images " \
            "of type []uint8"
    for i, ch in enumerate(image):
        if not B64.match(ch):
            return f"illegal base64 data at input byte {i}"
    try:
        base64.b64decode(image.replace("\r", "").replace("\n", ""), validate=True)
    except binascii.Error:
        return f"illegal base64 data at input byte {len(image)}"
    return None


def _is_zero_duration(value: Any) -> bool:
    """keep_alive 0 (a number of seconds, or a Go duration string such as "0" or "0s") unloads the model."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value == 0
    return isinstance(value, str) and re.fullmatch(r"[+-]?0*\.?0*(ns|us|µs|ms|s|m|h)?", value) is not None \
        and any(c == "0" for c in value)


def _option_error(options: Any) -> str | None:
    if options is None:
        return None
    if not isinstance(options, dict):
        return "json: cannot unmarshal into Go struct field ChatRequest.options of type map[string]interface {}"
    for key, val in options.items():
        if val is None:
            continue
        if key in INT_OPTIONS and (isinstance(val, bool) or not isinstance(val, (int, float))):
            return f'option "{key}" must be of type integer'
        if key in FLOAT_OPTIONS and (isinstance(val, bool) or not isinstance(val, (int, float))):
            return f'option "{key}" must be of type float32'
        if key == "stop":
            if not isinstance(val, list):
                return 'option "stop" must be of type array'
            if not all(isinstance(s, str) for s in val):
                return 'option "stop" must be of an array of strings'
    return None


def _think_error(think: Any) -> str | None:
    if think is None or isinstance(think, bool):
        return None
    if isinstance(think, str):
        if think in THINK_LEVELS:
            return None
        return f'invalid think value: "{think}" (must be "high", "medium", "low", "max", true, or false)'
    return 'think must be a boolean or string ("high", "medium", "low", "max", true, or false)'


def _scripted_calls(text: str, tools: list[Any]) -> list[dict[str, Any]]:
    """`call:` [name] [JSON arguments], several separated by " | ": the name defaults to the first tool offered,
    the arguments to DEFAULT_ARGS."""
    calls = []
    for i, part in enumerate(text[len("call:"):].split(" | ")):
        name, _, args = part.strip().partition(" ")
        if not name:
            first = tools[0] if tools and isinstance(tools[0], dict) else {}
            name = str((first.get("function") or {}).get("name") or "tool")
        try:
            arguments = orjson.loads(args) if args.strip() else DEFAULT_ARGS
        except orjson.JSONDecodeError:
            arguments = {"text": args.strip()}
        digest = hashlib.sha256(f"{i}:{part}".encode()).hexdigest()[:8]
        calls.append({"id": f"call_{digest}", "function": {"index": i, "name": name, "arguments": arguments}})
    return calls


def _answer(model: str, body: dict[str, Any]) -> Answer:
    """What a chat model answers:
    - the last message is a tool result: "The tool said: <its content>";
    - tools offered and the last message is from the user and starts with "call:": the scripted tool call(s);
    - otherwise the last user message's text, echoed ("Hello from Ollama." if it is empty), after
      "I see N image(s)." when it carries images.
    options.stop cuts the text before the first stop string; options.num_predict > 0 cuts the output (thinking,
    then content; a tool call needs CALL_TOKENS) with done_reason "length" (-1, -2, 0 or none: no limit)."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    last = messages[-1] if messages else {}
    tools = body.get("tools") or []
    options = body.get("options") or {}
    content = last.get("content") if isinstance(last.get("content"), str) else ""
    calls: list[dict[str, Any]] = []
    if last.get("role") == "tool":
        text = f"The tool said: {content}"
    elif tools and last.get("role") == "user" and content.startswith("call:"):
        text, calls = "", _scripted_calls(content, tools)
    else:
        users = [m for m in messages if m.get("role") == "user"]
        user = users[-1] if users else {}
        text = user.get("content") if isinstance(user.get("content"), str) else ""
        text = text.strip() or "Hello from Ollama."
        if n := len(user.get("images") or []):
            text = f"I see {n} image{'s' if n > 1 else ''}. {text}"
    if model == "runaway":
        text = " ".join(["word"] * RUNAWAY_WORDS)
    stops = [s for s in options.get("stop") or [] if s]
    if model != "runaway" and stops and (hits := [text.find(s) for s in stops if s in text]):
        text = text[: min(hits)]
    think = body.get("think")
    thinking = pieces(THINKING) if model == "thinker" and think is not False else []
    content_pieces, reason = pieces(text), "stop"
    limit = options.get("num_predict")
    if model != "runaway" and isinstance(limit, (int, float)) and limit > 0:
        limit = int(limit)
        if len(thinking) > limit:
            thinking, content_pieces, calls, reason = thinking[:limit], [], [], "length"
        elif len(thinking) + len(content_pieces) > limit:
            content_pieces, reason = content_pieces[: limit - len(thinking)], "length"
        elif calls and len(thinking) + CALL_TOKENS * len(calls) > limit:
            calls, reason = [], "length"  # cut inside the call: no call comes out
    prompt = prompt_tokens(body)
    cached = prompt - message_tokens(last) if model == "cache-hit" else 0
    return Answer(thinking, content_pieces, calls, reason, prompt, cached)


def _metrics(model: str, a: Answer) -> dict[str, Any]:
    """The done line's fields; zeros are left out, as Go's omitempty does (api.Metrics)."""
    prompt_ns, eval_ns, load_ns = a.prompt * 100_000, a.output * 1_000_000, 1_500_000
    m: dict[str, Any] = {"total_duration": load_ns + prompt_ns + eval_ns + 250_000, "load_duration": load_ns,
                         "prompt_eval_count": a.prompt, "prompt_eval_duration": prompt_ns,
                         "eval_count": a.output, "eval_duration": eval_ns}
    if model == "cached":
        del m["prompt_eval_count"], m["prompt_eval_duration"]
    if model == "cache-hit":
        m["prompt_eval_cached_count"] = a.cached  # a pointer in Go: present even when 0
    return {k: v for k, v in m.items() if v or k == "prompt_eval_cached_count"}


def embedding(text: str, dimensions: int = 0) -> list[float]:
    """A deterministic unit vector of EMBED_DIM floats (the first `dimensions`, renormalized, when asked)."""
    digest = hashlib.sha256(text.encode()).digest()
    vec = [(b - 127.5) / 127.5 for b in digest[:EMBED_DIM]]
    if 0 < dimensions < len(vec):
        vec = vec[:dimensions]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [round(v / norm, 7) for v in vec]


class OllamaUpstream(LoopbackServer):
    """Ollama's native API on a free loopback port. `requests` records every request; `streams` every NDJSON
    stream (how many lines left before it ended); `line_delay` (seconds) paces the lines of every stream."""

    name = "ollama upstream"

    def __init__(self, line_delay: float = 0.0) -> None:
        super().__init__()
        self.line_delay = line_delay
        self.requests: list[Recorded] = []
        self.streams: list[StreamLog] = []

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/api/chat", self._chat)
        app.router.add_post("/api/embed", self._embed)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_get("/api/version", self._version)
        app.router.add_get("/", self._root)
        app.router.add_route("*", "/{tail:.*}", self._not_found)

    def last(self, path: str = "/api/chat") -> Recorded:
        return next(r for r in reversed(self.requests) if r.path == path)

    # -- plain routes ---------------------------------------------------------------------------------

    async def _record(self, request: web.Request) -> tuple[Any, bytes]:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw.strip() else None
        except orjson.JSONDecodeError:
            body = raw.decode(errors="replace")
        self.requests.append(Recorded(request.method, request.path,
                                      {k.lower(): v for k, v in request.headers.items()}, body))
        return body, raw

    async def _root(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(text="Ollama is running")

    async def _not_found(self, request: web.Request) -> web.Response:
        """gin's answer to an unknown path or method: plain text, not JSON (an Ollama older than the route too)."""
        await self._record(request)
        return web.Response(status=404, text="404 page not found")

    async def _version(self, request: web.Request) -> web.Response:
        await self._record(request)
        return _json({"version": VERSION})

    async def _tags(self, request: web.Request) -> web.Response:
        await self._record(request)
        models = []
        for i, name in enumerate(CHAT_MODELS + EMBED_MODELS):
            digest = hashlib.sha256(name.encode()).hexdigest()
            family = "bert" if name in EMBED_MODELS else "llama"
            models.append({"name": f"{name}:latest", "model": f"{name}:latest",
                           "modified_at": f"2025-05-{i + 1:02d}T08:06:48.639712648-07:00",
                           "size": 45_000_000 if name in EMBED_MODELS else 2_019_393_189, "digest": digest,
                           "details": {"parent_model": "", "format": "gguf", "family": family, "families": [family],
                                       "parameter_size": "23M" if name in EMBED_MODELS else "3.2B",
                                       "quantization_level": "F16" if name in EMBED_MODELS else "Q4_K_M"}})
        return _json({"models": models})

    # -- /api/embed -----------------------------------------------------------------------------------

    async def _embed(self, request: web.Request) -> web.Response:
        body, raw = await self._record(request)
        if early := self._bad_body(body, raw):
            return early
        name = body.get("model")
        if not isinstance(name, str) or not name:
            return _error(404, f"model '{name or ''}' not found")
        inp = body.get("input")
        if isinstance(inp, str):
            texts = [inp] if inp else []
        elif isinstance(inp, list) and all(isinstance(t, str) for t in inp):
            texts = list(inp)
        elif inp is None:
            texts = []
        else:
            return _error(400, "invalid input type")
        if _known(name, CHAT_MODELS + EMBED_MODELS) is None:
            return _error(404, f'model "{name}" not found, try pulling it first')
        if opt := _option_error(body.get("options")):
            return _error(500, opt)
        if not texts:
            return _json({"model": name, "embeddings": []})
        dims = body.get("dimensions") if isinstance(body.get("dimensions"), int) else 0
        count = 0
        for text in texts:
            if words(text) > EMBED_CONTEXT and body.get("truncate") is False:
                return _error(400, "the input length exceeds the context length")
            count += min(words(text), EMBED_CONTEXT)
        vectors = [embedding(" ".join(t.split()[:EMBED_CONTEXT]), dims) for t in texts]
        out: dict[str, Any] = {"model": name, "embeddings": vectors, "total_duration": 14_143_917,
                               "load_duration": 1_019_500, "prompt_eval_count": count}
        return _json({k: v for k, v in out.items() if v != 0})

    # -- /api/chat ------------------------------------------------------------------------------------

    @staticmethod
    def _bad_body(body: Any, raw: bytes) -> web.Response | None:
        if not raw.strip():
            return _error(400, "missing request body")
        if isinstance(body, str):
            return _error(400, "invalid character looking for beginning of value")
        if not isinstance(body, dict):
            return _error(400, "json: cannot unmarshal into Go value of type api.ChatRequest")
        return None

    def _refusal(self, body: dict[str, Any]) -> web.Response | None:
        """The checks ChatHandler makes before it answers, in its order (server/routes.go)."""
        messages = body.get("messages")
        if messages is not None and not (isinstance(messages, list) and all(isinstance(m, dict) for m in messages)):
            return _error(400, "json: cannot unmarshal into Go struct field ChatRequest.messages of type "
                               "[]api.Message")
        for m in messages or []:
            for image in m.get("images") or []:
                if err := _base64_error(image):
                    return _error(400, err)
        if err := _think_error(body.get("think")):
            return _error(400, err)
        name = body.get("model")
        if not isinstance(name, str) or not name:
            return _error(400, "model is required")
        if _known(name, EMBED_MODELS):
            if body.get("think"):
                return _error(400, f'"{name}" does not support thinking')
            return _error(400, f'"{name}" does not support chat')
        model = _known(name, CHAT_MODELS)
        if model is None:
            return _error(404, f"model '{name}' not found")
        if model != "thinker" and body.get("think"):
            return _error(400, f'"{name}" does not support thinking')
        if model == "notools" and body.get("tools"):
            return _error(400, f"registry.ollama.ai/library/{model}:latest does not support tools")
        if err := _option_error(body.get("options")):
            return _error(500, err)
        if model == "busy":
            return _error(503, BUSY)
        if model == "crash":
            return _error(500, CRASH)
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, raw = await self._record(request)
        if early := self._bad_body(body, raw):
            return early
        if refused := self._refusal(body):
            return refused
        name = body["model"]
        model = _known(name, CHAT_MODELS) or name
        head = {"model": name, "created_at": now()}
        if not body.get("messages"):  # load (or, with keep_alive 0, unload) the model: one object, never a stream
            reason = "unload" if _is_zero_duration(body.get("keep_alive")) else "load"
            return _json({**head, "message": {"role": "assistant", "content": ""}, "done": True,
                          "done_reason": reason})
        answer = _answer(model, body)
        stream = body.get("stream") is not False  # streaming is the default
        if not stream:
            if model == "stream-error":
                return _error(500, STREAM_ERROR)
            if model == "die":
                request.transport.abort()  # type: ignore[union-attr]
                return web.Response()
            message: dict[str, Any] = {"role": "assistant", "content": "".join(answer.content)}
            if answer.thinking:
                message["thinking"] = "".join(answer.thinking)
            if answer.calls:
                message["tool_calls"] = answer.calls
            return _json({**head, "message": message, "done": True, "done_reason": answer.reason,
                          **_metrics(model, answer)})
        return await self._stream(request, model, name, answer)

    def _lines(self, model: str, name: str, a: Answer) -> list[bytes]:
        def line(message: dict[str, Any], **rest: Any) -> bytes:
            return orjson.dumps({"model": name, "created_at": now(), "message": {"role": "assistant", **message},
                                 **rest}) + b"\n"

        lines = [line({"content": "", "thinking": t}, done=False) for t in a.thinking]
        lines += [line({"content": c}, done=False) for c in a.content]
        late = model == "late-tools"
        if a.calls and not late:
            lines.append(line({"content": "", "tool_calls": a.calls}, done=False))
        final: dict[str, Any] = {"content": ""}
        if a.calls and late:
            final["tool_calls"] = a.calls
        if model in ("stream-error", "die"):
            lines = lines[:2] + ([orjson.dumps({"error": STREAM_ERROR}) + b"\n"] if model == "stream-error" else [])
            return lines
        return lines + [line(final, done=True, done_reason=a.reason, **_metrics(model, a))]

    async def _stream(self, request: web.Request, model: str, name: str, a: Answer) -> web.StreamResponse:
        lines = self._lines(model, name, a)
        log = StreamLog(model, 0, len(lines), False)
        self.streams.append(log)
        resp = web.StreamResponse(headers={"Content-Type": NDJSON})
        await resp.prepare(request)
        try:
            for i, data in enumerate(lines):
                if request.transport is None or request.transport.is_closing():
                    return resp
                await resp.write(data)
                log.written += 1
                if self.line_delay and i < len(lines) - 1:
                    await asyncio.sleep(self.line_delay)
            if model == "die":
                await asyncio.sleep(0.05)  # let the lines leave before the connection drops
                request.transport.abort()  # type: ignore[union-attr]
                return resp
            await resp.write_eof()
            log.complete = True
        except (ConnectionResetError, ConnectionError, RuntimeError):
            pass
        return resp
