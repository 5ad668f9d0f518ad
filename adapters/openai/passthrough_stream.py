"""Same-format OpenAI streams (Chat Completions, Completions, Responses) passed through as they come: each event
metered, and what it takes to end a stream properly when the gateway cuts it at the held limit."""

from __future__ import annotations

from typing import Any

import orjson

from adapters.openai.common import str_or_empty
from adapters.openai.passthrough import normalize_usage
from billing.metering import Meter, Usage

RESPONSES_DELTA_EVENTS = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
        "response.custom_tool_call_input.delta",
    }
)
RESPONSES_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})

USAGE_ONLY = 1  # the `choices: []` usage chunk: forwarded only to clients that asked for it
TERMINAL = 2  # the stream is complete (Responses' final events; chat's [DONE] is seen by the relay)
UPSTREAM_ERROR = 4  # the upstream sent an in-band error (passed on; the client raises on it)
NOT_JSON = 8  # not JSON: an OpenAI client would crash on it
USAGE_ON_CONTENT = 16  # a content chunk that also carries usage


def without_usage(data: bytes) -> bytes:
    """A content chunk with its usage set to null, for a client that did not ask for usage."""
    obj = orjson.loads(data)
    obj["usage"] = None
    return orjson.dumps(obj)


class PassthroughStream:
    """One passed-through stream: `feed` meters each event's output (or takes the upstream's usage) and
    returns flags for the relay; it also keeps what `cut` needs to end the stream in the client's own terms
    when the upstream goes on past the limit: a chunk's id, created and model, which choices have ended, and
    for Responses the response and its output items so far."""

    __slots__ = ("endpoint", "meter", "choices", "head", "ended", "response", "items", "sequence")

    def __init__(self, endpoint: str, meter: Meter, choices: int = 1) -> None:
        self.endpoint = endpoint
        self.meter = meter
        self.choices = choices  # answers the client asked for (n)
        self.head: dict[str, Any] | None = None  # id, object, created, model of the first chunk
        self.ended: set[Any] = set()  # choice indices that had their finish_reason
        self.response: dict[str, Any] | None = None  # Responses: the response as its lifecycle events gave it
        self.items: dict[int, dict[str, Any]] = {}  # Responses: output items by output_index, as far as they came
        self.sequence = -1  # Responses: the last sequence_number seen

    def feed(self, data: bytes) -> int:
        """Count one upstream event; returns USAGE_ONLY / TERMINAL / UPSTREAM_ERROR / NOT_JSON flags."""
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return NOT_JSON
        if not isinstance(obj, dict):
            return NOT_JSON
        if obj.get("error"):
            return TERMINAL | UPSTREAM_ERROR
        endpoint = self.endpoint
        if endpoint == "responses":
            return self._responses_event(obj)
        meter = self.meter
        if self.head is None:
            self.head = {k: obj.get(k) for k in ("id", "object", "created", "model")}
        usage = obj.get("usage")
        if usage:
            normalized = normalize_usage(usage)
            if normalized is not None:
                meter.set_upstream(normalized)
        choices = obj.get("choices")
        if not choices or not isinstance(choices, list):
            return USAGE_ONLY if usage else 0
        several = self.choices > 1  # one answer's end needs no tracking: once it ended, nothing more is counted
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            if several and choice.get("finish_reason"):
                self.ended.add(choice.get("index"))
            if endpoint == "completions":
                meter.add_output(str_or_empty(choice.get("text")))
                continue
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            text = ""
            for key in ("content", "reasoning_content", "reasoning", "refusal"):
                v = delta.get(key)
                if isinstance(v, str):
                    text += v
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for call in calls:
                    fn = call.get("function") if isinstance(call, dict) else None
                    if isinstance(fn, dict):
                        text += str_or_empty(fn.get("name")) + str_or_empty(fn.get("arguments"))
            meter.add_output(text)
        return USAGE_ON_CONTENT if usage else 0

    def _responses_event(self, obj: dict[str, Any]) -> int:
        kind = obj.get("type")
        number = obj.get("sequence_number")
        if isinstance(number, int):
            self.sequence = number
        if kind in RESPONSES_DELTA_EVENTS:
            delta = str_or_empty(obj.get("delta"))
            self.meter.add_output(delta)
            self._grow(obj, kind, delta)
        elif kind in RESPONSES_FINAL_EVENTS:
            response = obj.get("response")
            usage = normalize_usage(response.get("usage")) if isinstance(response, dict) else None
            if usage is not None:
                self.meter.set_upstream(usage)
            return TERMINAL
        elif kind == "error":
            return TERMINAL | UPSTREAM_ERROR
        elif kind in ("response.created", "response.in_progress", "response.queued"):
            if isinstance(obj.get("response"), dict):
                self.response = obj["response"]
        elif kind in ("response.output_item.added", "response.output_item.done"):
            item, index = obj.get("item"), obj.get("output_index")
            if isinstance(item, dict) and isinstance(index, int):
                self.items[index] = {**item, "_done": kind.endswith("done")}
        elif kind == "response.content_part.added":
            item, part = self.items.get(obj.get("output_index")), obj.get("part")  # type: ignore[arg-type]
            if item is not None and isinstance(part, dict) and isinstance(item.get("content"), list):
                item["content"] = [*item["content"], dict(part)]
        return 0

    def _grow(self, obj: dict[str, Any], kind: str, delta: str) -> None:
        """A Responses delta added to the output item it belongs to (what a cut must close with)."""
        item = self.items.get(obj.get("output_index"))  # type: ignore[arg-type]
        if item is None:
            return
        if kind == "response.function_call_arguments.delta":
            item["arguments"] = str_or_empty(item.get("arguments")) + delta
        elif kind == "response.output_text.delta":
            content, index = item.get("content"), obj.get("content_index")
            if isinstance(content, list) and isinstance(index, int) and 0 <= index < len(content) and \
                    isinstance(content[index], dict):
                content[index]["text"] = str_or_empty(content[index].get("text")) + delta

    def cut(self, usage: Usage, include_usage: bool) -> bytes:
        """The end of a stream the gateway stopped at the limit, as OpenAI ends one that reached it: every open
        choice finishes with `length` (then the usage chunk if the client asked for it, then [DONE]); a
        Responses stream closes its open items and ends with response.incomplete (max_output_tokens)."""
        if self.endpoint == "responses":
            return self._responses_cut(usage)
        from adapters.openai.chat_client import usage_object  # the client side's shape (no import cycle at load)

        head = self.head or {"id": "cut", "object": "chat.completion.chunk", "created": 0, "model": ""}
        finishes = [{"index": i, "delta": {}, "logprobs": None, "finish_reason": "length"} if self.endpoint == "chat"
                    else {"index": i, "text": "", "logprobs": None, "finish_reason": "length"}
                    for i in range(self.choices) if i not in self.ended]
        out = b"data: " + orjson.dumps({**head, "choices": finishes, **({"usage": None} if include_usage else {})}) \
            + b"\n\n" if finishes else b""
        if include_usage:
            out += b"data: " + orjson.dumps({**head, "choices": [], "usage": usage_object(usage)}) + b"\n\n"
        return out + b"data: [DONE]\n\n"

    def _responses_cut(self, usage: Usage) -> bytes:
        from adapters.openai.responses import usage_object

        out: list[bytes] = []

        def emit(kind: str, **fields: Any) -> None:
            self.sequence += 1
            data = orjson.dumps({"type": kind, "sequence_number": self.sequence, **fields})
            out.append(b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n")

        items = []
        for index in sorted(self.items):
            item = dict(self.items[index])
            done = item.pop("_done")
            if not done:
                item["status"] = "incomplete"
                item_id = item.get("id")
                if item.get("type") == "message":
                    for part_index, part in enumerate(p for p in item.get("content") or () if isinstance(p, dict)):
                        if part.get("type") == "output_text":
                            emit("response.output_text.done", item_id=item_id, output_index=index,
                                 content_index=part_index, text=str_or_empty(part.get("text")), logprobs=[])
                        emit("response.content_part.done", item_id=item_id, output_index=index,
                             content_index=part_index, part=part)
                elif item.get("type") == "function_call":
                    emit("response.function_call_arguments.done", item_id=item_id, output_index=index,
                         arguments=str_or_empty(item.get("arguments")), name=item.get("name"))
                emit("response.output_item.done", output_index=index, item=item)
            items.append(item)
        response = {**(self.response or {"object": "response"}), "status": "incomplete",
                    "incomplete_details": {"reason": "max_output_tokens"}, "output": items,
                    "usage": usage_object(usage)}
        emit("response.incomplete", response=response)
        return b"".join(out)
