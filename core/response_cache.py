"""The gateway's own response cache: which requests it answers (the documented rule and the X-TT-Cache request
header), their key (scope + model + the canonical request, whatever format it came in), and answers kept in the internal shape."""

from __future__ import annotations

import hashlib
import re
from dataclasses import fields, is_dataclass
from typing import Any, Literal

import orjson

from adapters import internal
from billing import store
from billing.metering import Usage
from billing.pricing import TokenPrices, full_price_cost, token_cost, units_to_usd
from core.config import Cache
from core.errors import BadRequest

# Chat Completions, Messages and generateContent answers are cached. The Responses API is not: its answers are
# server-side state (stored, chained by previous_response_id) that a replayed copy would not be. Legacy
# Completions are not either (their answers have no internal shape). Both still carry the X-TT-Cache headers.
CACHED_ENDPOINTS = frozenset({"chat", "messages", "generate"})
HEADER_ENDPOINTS = CACHED_ENDPOINTS | {"completions", "responses"}
REQUEST_HEADER = b"x-tt-cache"
State = Literal["hit", "miss", "bypass"]
# Request fields that cannot change the answer: how it is delivered, who asked, where a prompt-cache breakpoint sits;
# and the output limit the client asked for, which the key holds as the limit actually sent upstream.
_IGNORED_FIELDS = frozenset({"stream", "include_usage", "user", "cache", "max_output"})
_WORDS = re.compile(r"\S*\s*")
WORDS_PER_DELTA = 4  # a replayed stream sends a few words per event, like a model


def requested_mode(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's X-TT-Cache request header: "use" (cache this request even if it is not deterministic),
    "bypass" (neither read nor write the cache), or "" (the rule decides)."""
    for name, value in headers:
        if name == REQUEST_HEADER:
            mode = value.decode("latin-1").strip().lower()
            if mode not in ("use", "bypass"):
                raise BadRequest(f"the X-TT-Cache request header must be 'use' or 'bypass', not {mode[:20]!r}")
            return mode
    return ""


def worth_a_look(dialect: str, body: dict[str, Any], mode: str) -> bool:
    """A cheap first test on the raw body, before the request is parsed for its key: opted in, or
    temperature 0 (Gemini: generationConfig.temperature)."""
    if mode:
        return mode == "use"
    if dialect == "gemini":
        config = body.get("generationConfig", body.get("generation_config"))
        temperature = config.get("temperature") if isinstance(config, dict) else None
    else:
        temperature = body.get("temperature")
    return temperature == 0 and not isinstance(temperature, bool)


def cacheable(chat: internal.Chat, mode: str) -> bool:
    """The rule: one answer asked for, and either temperature 0 (the request is deterministic) or the
    client opted in with X-TT-Cache: use. X-TT-Cache: bypass always wins."""
    if mode == "bypass" or chat.n != 1:
        return False
    return mode == "use" or chat.temperature == 0


# What each client format's parser turns into the internal shape: at the top level, in each message, and (Gemini)
# in generationConfig. In a passed-through body anything else reaches the upstream as it is and may change the
# answer, so it goes into the key as it is (and such a request is answered only to its own format).
_NEUTRAL = frozenset({"model", "stream", "stream_options", "user", "safety_identifier", "metadata", "store",
                      "prompt_cache_key", "labels"})
_MODELED: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "chat": (frozenset({"messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "stop",
                        "tools", "tool_choice", "parallel_tool_calls", "response_format", "reasoning_effort", "n",
                        "seed", "presence_penalty", "frequency_penalty", "modalities", "logprobs"}),
             frozenset({"role", "content", "tool_calls", "tool_call_id"})),
    "messages": (frozenset({"messages", "system", "max_tokens", "temperature", "top_p", "top_k", "stop_sequences",
                            "tools", "tool_choice", "thinking", "output_config"}),
                 frozenset({"role", "content"})),
    "generate": (frozenset({"contents", "systemInstruction", "system_instruction", "tools", "toolConfig",
                            "tool_config", "generationConfig", "generation_config"}),
                 frozenset({"role", "parts"})),
}
_GEMINI_CONFIG = frozenset({
    "temperature", "topP", "top_p", "topK", "top_k", "maxOutputTokens", "max_output_tokens", "stopSequences",
    "stop_sequences", "candidateCount", "candidate_count", "seed", "presencePenalty", "presence_penalty",
    "frequencyPenalty", "frequency_penalty", "responseMimeType", "response_mime_type", "responseSchema",
    "response_schema", "responseJsonSchema", "response_json_schema", "thinkingConfig", "thinking_config"})


def unmodeled(endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    """The parts of a passed-through body that the internal shape does not hold (empty for most requests)."""
    top, per_message = _MODELED[endpoint]
    extra = {k: v for k, v in body.items() if k not in top and k not in _NEUTRAL}
    messages = body.get("contents" if endpoint == "generate" else "messages")
    if isinstance(messages, list):
        odd = [{k: v for k, v in m.items() if k not in per_message} if isinstance(m, dict) else m for m in messages]
        if any(odd):
            extra["(messages)"] = odd
    config = body.get("generationConfig", body.get("generation_config")) if endpoint == "generate" else None
    if isinstance(config, dict):
        odd_config = {k: v for k, v in config.items() if k not in _GEMINI_CONFIG}
        if odd_config:
            extra["(generationConfig)"] = odd_config
    return extra


def scope_of(account_id: int | None, shared: bool) -> str:
    """Whose cache a request reads: its account's own, or with [cache] shared = true the one of every account."""
    return "shared" if shared or account_id is None else f"account:{account_id}"


def cache_key(scope: str, model: str, max_output: int, chat: internal.Chat,
              extra: dict[str, Any] | None = None) -> bytes:
    """sha256 of the scope, the public model, the output limit actually asked of the upstream, and the request
    in the internal shape with its keys sorted: the same question in any of the three formats has one key.
    `extra`: what a passed-through body holds beyond the internal shape (see unmodeled)."""
    canonical = {"scope": scope, "model": model, "max_output": max_output, "chat": _canonical(chat)}
    if extra:
        canonical["extra"] = _canonical(extra)
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).digest()


def _canonical(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        out = {f.name: _canonical(getattr(value, f.name)) for f in fields(value) if f.name not in _IGNORED_FIELDS}
        out["_"] = type(value).__name__
        return out
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, float) and value.is_integer():
        return int(value)  # temperature 0 and 0.0 ask the same
    return value


# -- answers in the internal shape ---------------------------------------------------------------


def encode_answer(reply: internal.Reply, usage: Usage) -> bytes:
    """A complete answer as stored: its parts, its finish and the tokens it took (input, output, reasoning)."""
    parts: list[dict[str, Any]] = []
    for p in reply.parts:
        if isinstance(p, internal.Text):
            parts.append({"type": "text", "text": p.text})
        elif isinstance(p, internal.Thinking):
            parts.append({"type": "thinking", "text": p.text, "signature": p.signature, "redacted": p.redacted})
        elif isinstance(p, internal.ToolCall):
            parts.append({"type": "tool_call", "id": p.id, "name": p.name, "arguments": p.arguments,
                          "signature": p.signature})
    return orjson.dumps({"version": 1, "finish": reply.finish, "stop_sequence": reply.stop_sequence, "parts": parts,
                         "usage": {"input": usage.in_total, "output": usage.out_total, "reasoning": usage.reasoning}})


def decode_answer(raw: bytes, reply_id: str, model: str) -> internal.Reply:
    """A stored answer, ready to render; its usage says every input token was read from the cache."""
    obj = orjson.loads(raw)
    parts: list[internal.Part] = []
    for p in obj["parts"]:
        if p["type"] == "text":
            parts.append(internal.Text(p["text"]))
        elif p["type"] == "thinking":
            parts.append(internal.Thinking(p["text"], p.get("signature"), p.get("redacted")))
        elif p["type"] == "tool_call":
            parts.append(internal.ToolCall(p["id"], p["name"], p["arguments"], p.get("signature")))
    u = obj["usage"]
    usage = Usage(u["input"], u["output"], cache_read=u["input"], reasoning=u.get("reasoning", 0))
    return internal.Reply(reply_id, model, parts, obj["finish"], obj.get("stop_sequence"), usage)


def headers(state: State, usage: Usage | None, prices: TokenPrices | None, charged: TokenPrices | None,
            known: bool = True) -> list[tuple[bytes, bytes]]:
    """The X-TT-Cache headers: the state, and when the usage is known (not at the start of a stream that
    missed) the tokens read from and written to a cache and the USD saved against the model's full price,
    whether the saving came from this cache or the upstream's prompt cache. A hit counts its input and
    output tokens as read."""
    out = [(b"x-tt-cache", state.encode())]
    if not known or usage is None or prices is None or charged is None:
        return out
    read = usage.in_total + usage.out_total if state == "hit" else usage.cache_read
    saved = max(full_price_cost(prices, usage) - token_cost(charged, usage), 0)
    out += [(b"x-tt-cache-read-tokens", b"%d" % read), (b"x-tt-cache-write-tokens", b"%d" % usage.cache_write),
            (b"x-tt-cache-savings", units_to_usd(saved).encode())]
    return out


def hit_prices(prices: TokenPrices) -> TokenPrices:
    """A hit's input and output tokens are all billed at the model's cache_read price."""
    r = prices.cache_read
    return TokenPrices(input=r, output=r, cache_read=r, cache_write=r)


def replay(reply: internal.Reply) -> list[internal.Event]:
    """A stored answer as the stream events an upstream would have sent: a few words per text delta,
    each tool call whole, then the end and the usage."""
    events: list[internal.Event] = [internal.Start(reply.id, reply.model)]
    index = 0
    for p in reply.parts:
        if isinstance(p, internal.Text):
            events.extend(internal.TextDelta(piece) for piece in text_pieces(p.text))
        elif isinstance(p, internal.Thinking):
            events.append(internal.ThinkingDelta(p.text, p.signature, p.redacted))
        elif isinstance(p, internal.ToolCall):
            events.append(internal.ToolCallDelta(index, p.arguments, p.id, p.name, p.signature))
            index += 1
    events.append(internal.End(reply.finish, reply.stop_sequence))
    if reply.usage is not None:
        events.append(internal.UsageUpdate(reply.usage, final=True))
    return events


def text_pieces(text: str) -> list[str]:
    """The text cut after every few words; the pieces join back to exactly the text."""
    words = _WORDS.findall(text)
    pieces = ["".join(words[i:i + WORDS_PER_DELTA]) for i in range(0, len(words), WORDS_PER_DELTA)]
    return [p for p in pieces if p]


class AnswerCollector:
    """Builds the complete answer from a stream's internal events, to be stored once the stream completes."""

    __slots__ = ("parts", "finish", "stop_sequence", "_calls")

    def __init__(self) -> None:
        self.parts: list[internal.Part] = []
        self.finish: internal.Finish | None = None
        self.stop_sequence: str | None = None
        self._calls: dict[int, internal.ToolCall] = {}

    def add(self, event: internal.Event) -> None:
        last = self.parts[-1] if self.parts else None
        if isinstance(event, internal.TextDelta):
            if isinstance(last, internal.Text):
                last.text += event.text
            elif event.text:
                self.parts.append(internal.Text(event.text))
        elif isinstance(event, internal.ThinkingDelta):
            if isinstance(last, internal.Thinking) and last.signature is None and last.redacted is None:
                last.text += event.text
                last.signature, last.redacted = event.signature, event.redacted
            else:
                self.parts.append(internal.Thinking(event.text, event.signature, event.redacted))
        elif isinstance(event, internal.ToolCallDelta):
            call = self._calls.get(event.index)
            if call is None:
                call = self._calls[event.index] = internal.ToolCall(event.id or f"call_{event.index}",
                                                                    event.name or "", "", event.signature)
                self.parts.append(call)
            call.arguments += event.arguments
            call.signature = call.signature or event.signature
        elif isinstance(event, internal.End):
            self.finish, self.stop_sequence = event.finish, event.stop_sequence

    def reply(self) -> internal.Reply | None:
        """The answer, or None when the stream never reached its end."""
        if self.finish is None:
            return None
        return internal.Reply("", "", self.parts, self.finish, self.stop_sequence)


# -- the cache itself (durable: the store's response_cache table) -------------------------------


class ResponseCache:
    """Reads and writes the store's response_cache table, and remembers which account each key belongs to
    (a key's account never changes; a rotated or deleted key is refused by admission all the same)."""

    def __init__(self, settings: Cache, db: store.Store) -> None:
        self.settings = settings
        self.db = db
        self._accounts: dict[bytes, int] = {}

    def account_of(self, key_hash: bytes) -> int | None:
        return self._accounts.get(key_hash)

    def remember_account(self, key_hash: bytes, account_id: int) -> None:
        if len(self._accounts) >= 100_000:
            self._accounts.clear()
        self._accounts[key_hash] = account_id

    async def get(self, key: bytes, now: float) -> store.CachedAnswer | None:
        return await self.db.run_hot(store.tx_cache_get, key, now)

    async def put(self, key: bytes, scope: str, model: str, answer: bytes, usage: Usage, now: float) -> None:
        entry = store.CacheEntry(key, scope, model, answer, usage.in_total, usage.out_total, now,
                                 now + self.settings.ttl)
        await self.db.run(store.tx_cache_put, entry, self.settings.max_bytes)
