"""OpenAI Responses API (POST /v1/responses), client side, answers: replies rendered as Response objects,
internal stream events as Responses stream events, and the in-band stream error; parse_request re-exported."""

from __future__ import annotations

from typing import Any

import orjson

from adapters.internal import (End, Event, Finish, Reply, StreamContext, StreamError, Text, TextDelta, Thinking,
                               ThinkingDelta, ToolCall, ToolCallDelta, Usage, pack_call_id)
from adapters.openai.common import EMPTY_PARAMETERS
from adapters.openai.passthrough import error_body, normalize_usage
from adapters.openai.responses_request import carrier, parse_request

__all__ = ["StreamWriter", "error_body", "normalize_usage", "parse_request", "render_response",
           "response_id", "stream_error_event", "usage_object"]

MAX_CALL_ID = 64  # the Responses API refuses longer call_ids

# -- responses -----------------------------------------------------------------------------


def response_id(request_id: str) -> str:
    return "resp_" + request_id.removeprefix("req_")


def usage_object(usage: Usage | None) -> dict[str, Any]:
    """The Responses usage object (input includes cached tokens, output includes reasoning)."""
    u = usage or Usage()
    return {"input_tokens": u.in_total,
            "input_tokens_details": {"cached_tokens": u.cache_read, "cache_write_tokens": u.cache_write},
            "output_tokens": u.out_total, "output_tokens_details": {"reasoning_tokens": u.reasoning},
            "total_tokens": u.in_total + u.out_total}


_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def render_response(reply: Reply, ctx: StreamContext, request: dict[str, Any] | None = None) -> bytes:
    """A complete Response object. `request` (the client's body, optional) fills the echo fields
    (instructions, tools, tool_choice, text, reasoning, ...); without it they get the API's defaults."""
    base = _base(ctx.request_id)
    output: list[dict[str, Any]] = []
    texts: list[str] = []
    for part in reply.parts:
        if isinstance(part, Text):
            texts.append(part.text)
            continue
        if isinstance(part, Thinking) and not (part.text or part.signature or part.redacted):
            continue
        if texts:
            output.append(_message(base, len(output), "".join(texts)))
            texts = []
        if isinstance(part, Thinking):
            output.append(_reasoning(base, len(output), part.text, part.signature, part.redacted))
        elif isinstance(part, ToolCall):
            call_id = _call_id(part.id, part.signature)
            if call_id == part.id and part.signature:
                output.append(_reasoning(base, len(output), "", part.signature, None, part.id))
            output.append(_function_call(base, len(output), call_id, part.name, part.arguments, "completed"))
    if texts:
        output.append(_message(base, len(output), "".join(texts)))
    reason = _INCOMPLETE.get(reply.finish)
    if reason and output:
        output[-1]["status"] = "incomplete"
    body = _envelope(ctx, _echo(request), "incomplete" if reason else "completed", output,
                     usage_object(reply.usage), {"reason": reason} if reason else None)
    return orjson.dumps(body)


def _base(request_id: str) -> str:
    return request_id.removeprefix("req_")


def _call_id(call_id: str, signature: str | None) -> str:
    packed = pack_call_id(call_id, signature)
    return packed if len(packed) <= MAX_CALL_ID else call_id


def _message(base: str, index: int, text: str, status: str = "completed") -> dict[str, Any]:
    return {"id": f"msg_{base}_{index}", "type": "message", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def _reasoning(base: str, index: int, text: str, signature: str | None, redacted: str | None,
               call_id: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"id": f"rs_{base}_{index}", "type": "reasoning",
                            "summary": [{"type": "summary_text", "text": text}] if text else [],
                            "status": "completed"}
    if signature or redacted:
        item["encrypted_content"] = carrier(signature, redacted, call_id)
    return item


def _function_call(base: str, index: int, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"id": f"fc_{base}_{index}", "type": "function_call", "status": status, "call_id": call_id,
            "name": name, "arguments": arguments}


def _envelope(ctx: StreamContext, echo: dict[str, Any], status: str, output: list[dict[str, Any]],
              usage: dict[str, Any] | None, incomplete: dict[str, str] | None) -> dict[str, Any]:
    return {"id": response_id(ctx.request_id), "object": "response", "created_at": ctx.created,
            "status": status, "model": ctx.model, "output": output, "usage": usage, "error": None,
            "incomplete_details": incomplete, **echo}


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _echo(request: dict[str, Any] | None) -> dict[str, Any]:
    """The request fields a Response repeats, read defensively from the client's (already parsed) body."""
    req = request if isinstance(request, dict) else {}

    def pick(key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        value = req.get(key)
        if kind is bool:
            return value if isinstance(value, bool) else default
        return value if isinstance(value, kind) and not isinstance(value, bool) else default

    tools = [{"type": "function", "name": t["name"], "description": _str_or_none(t.get("description")),
              "parameters": t.get("parameters") or dict(EMPTY_PARAMETERS), "strict": t.get("strict")}
             for t in req.get("tools") or () if isinstance(t, dict) and isinstance(t.get("name"), str)]
    text = req.get("text") if isinstance(req.get("text"), dict) and isinstance(req["text"].get("format"), dict) \
        else {"format": {"type": "text"}}
    reasoning = req.get("reasoning") if isinstance(req.get("reasoning"), dict) else {}
    return {
        "instructions": pick("instructions", str),
        "tools": tools,
        "tool_choice": req.get("tool_choice") if isinstance(req.get("tool_choice"), (str, dict)) else "auto",
        "parallel_tool_calls": pick("parallel_tool_calls", bool, True),
        "temperature": pick("temperature", (int, float)),
        "top_p": pick("top_p", (int, float)),
        "max_output_tokens": pick("max_output_tokens", int),
        "text": text,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "metadata": pick("metadata", dict, {}),
        "user": pick("user", str),
        "safety_identifier": pick("safety_identifier", str),
        "truncation": req.get("truncation") if req.get("truncation") in ("auto", "disabled") else "disabled",
        "previous_response_id": None,
        "background": False,
        "store": False,  # nothing is stored, whatever the request said
    }


# -- streams -------------------------------------------------------------------------------


class StreamWriter:
    """Internal events as Responses stream events: response.created and .in_progress first, then
    one output item at a time (added, parts, deltas, done), then response.completed or .incomplete."""

    def __init__(self, ctx: StreamContext, request: dict[str, Any] | None = None) -> None:
        self._ctx = ctx
        self._echo = _echo(request)
        self._base = _base(ctx.request_id)
        self._seq = 0
        self._started = False
        self._ended = False
        self._finish: Finish = "stop"
        self._output: list[dict[str, Any]] = []  # every item added so far, by output_index
        self._open: dict[str, Any] | None = None  # the item being streamed (the last of _output)
        self._chunks: list[str] = []  # the open item's text or arguments so far
        self._sealed = False  # the open reasoning item already has its signature or redacted data
        self._calls: dict[int, dict[str, Any]] = {}  # tool index -> its function_call item

    def write(self, event: Event) -> bytes:
        if self._ended:
            return b""
        if isinstance(event, StreamError):
            return self.error(event.message, event.kind)
        out: list[bytes] = []
        self._begin(out)
        if isinstance(event, TextDelta):
            self._text(out, event.text)
        elif isinstance(event, ThinkingDelta):
            self._thinking(out, event)
        elif isinstance(event, ToolCallDelta):
            self._tool(out, event)
        elif isinstance(event, End):
            self._finish = event.finish
        # Start: the response was already announced; UsageUpdate: close() gets the charged usage
        return b"".join(out)

    def close(self, usage: Usage) -> bytes:
        if self._ended:
            return b""
        out: list[bytes] = []
        self._begin(out)
        reason = _INCOMPLETE.get(self._finish)
        self._finish_open(out, "incomplete" if reason else "completed")
        status = "incomplete" if reason else "completed"
        response = _envelope(self._ctx, self._echo, status, self._output, usage_object(usage),
                             {"reason": reason} if reason else None)
        self._emit(out, f"response.{status}", response=response)
        self._ended = True
        return b"".join(out)

    def error(self, message: str, code: str) -> bytes:
        """response.failed (the terminal event raw-SSE clients watch for), then the `error` event with
        a top-level error object, which makes the openai SDK raise APIError instead of ending quietly."""
        if self._ended:
            return b""
        out: list[bytes] = []
        if self._started:
            if self._open is not None:
                self._settle_open("incomplete")
            failed = {"code": "rate_limit_exceeded" if "rate" in code else "server_error", "message": message}
            response = _envelope(self._ctx, self._echo, "failed", self._output, None, None)
            response["error"] = failed
            self._emit(out, "response.failed", response=response)
        out.append(_error_event(message, code, self._ctx.request_id, self._seq))
        self._seq += 1
        self._ended = True
        return b"".join(out)

    # -- items --

    def _begin(self, out: list[bytes]) -> None:
        if self._started:
            return
        self._started = True
        response = _envelope(self._ctx, self._echo, "in_progress", [], None, None)
        self._emit(out, "response.created", response=response)
        self._emit(out, "response.in_progress", response=response)

    def _text(self, out: list[bytes], text: str) -> None:
        if not text:
            return
        item = self._open
        if item is None or item["type"] != "message":
            item = _message(self._base, len(self._output), "", "in_progress")
            item["content"] = []
            self._add(out, item)
            part = {"type": "output_text", "text": "", "annotations": []}
            self._emit(out, "response.content_part.added", item_id=item["id"],
                       output_index=len(self._output) - 1, content_index=0, part=part)
            item["content"].append(part)
        self._chunks.append(text)
        self._emit(out, "response.output_text.delta", item_id=item["id"], output_index=len(self._output) - 1,
                   content_index=0, delta=text, logprobs=[])

    def _thinking(self, out: list[bytes], event: ThinkingDelta) -> None:
        """One reasoning item per thinking block: text, then its signature (or redacted data) seals it."""
        item = self._open
        reuse = item is not None and item["type"] == "reasoning" and not self._sealed
        if event.text:
            if not reuse:
                item = self._add(out, self._new_reasoning())
                reuse = True
            assert item is not None
            index = len(self._output) - 1
            if not item["summary"]:
                item["summary"].append({"type": "summary_text", "text": ""})
                self._emit(out, "response.reasoning_summary_part.added", item_id=item["id"], output_index=index,
                           summary_index=0, part={"type": "summary_text", "text": ""})
            self._chunks.append(event.text)
            self._emit(out, "response.reasoning_summary_text.delta", item_id=item["id"], output_index=index,
                       summary_index=0, delta=event.text)
        if event.signature or event.redacted:
            if not reuse:
                item = self._add(out, self._new_reasoning())
            assert item is not None
            item["encrypted_content"] = carrier(event.signature, event.redacted)
            self._sealed = True

    def _tool(self, out: list[bytes], event: ToolCallDelta) -> None:
        item = self._calls.get(event.index)
        if item is None:
            plain = event.id or f"call_{self._base}_{event.index}"
            call_id = _call_id(plain, event.signature)
            if call_id == plain and event.signature:  # too long to pack: a reasoning item carries it
                self._add(out, _reasoning(self._base, len(self._output), "", event.signature, None, plain))
                self._finish_open(out, "completed")
            item = self._add(out, _function_call(self._base, len(self._output), call_id, event.name or "", "",
                                                 "in_progress"))
            self._calls[event.index] = item
        elif item is not self._open:  # a late fragment of a finished call: kept for the final output
            item["arguments"] += event.arguments
            return
        if event.arguments:
            self._chunks.append(event.arguments)
            self._emit(out, "response.function_call_arguments.delta", item_id=item["id"],
                       output_index=len(self._output) - 1, delta=event.arguments)

    def _new_reasoning(self) -> dict[str, Any]:
        item = _reasoning(self._base, len(self._output), "", None, None)
        item["status"] = "in_progress"
        return item

    def _add(self, out: list[bytes], item: dict[str, Any]) -> dict[str, Any]:
        self._finish_open(out, "completed")
        self._emit(out, "response.output_item.added", output_index=len(self._output), item=item)
        self._output.append(item)
        self._open, self._chunks, self._sealed = item, [], False
        return item

    def _settle_open(self, status: str) -> None:
        """The open item's accumulated text or arguments written into it, with its final status."""
        item = self._open
        assert item is not None
        text = "".join(self._chunks)
        if item["type"] == "message":
            item["content"] = [{"type": "output_text", "text": text, "annotations": []}]
        elif item["type"] == "reasoning" and item["summary"]:
            item["summary"] = [{"type": "summary_text", "text": text}]
        elif item["type"] == "function_call":
            item["arguments"] = text
        item["status"] = status

    def _finish_open(self, out: list[bytes], status: str) -> None:
        item = self._open
        if item is None:
            return
        self._settle_open(status)
        index = len(self._output) - 1
        ref = {"item_id": item["id"], "output_index": index}
        if item["type"] == "message":
            part = item["content"][0]
            self._emit(out, "response.output_text.done", **ref, content_index=0, text=part["text"], logprobs=[])
            self._emit(out, "response.content_part.done", **ref, content_index=0, part=part)
        elif item["type"] == "reasoning" and item["summary"]:
            part = item["summary"][0]
            self._emit(out, "response.reasoning_summary_text.done", **ref, summary_index=0, text=part["text"])
            self._emit(out, "response.reasoning_summary_part.done", **ref, summary_index=0, part=part)
        elif item["type"] == "function_call":
            self._emit(out, "response.function_call_arguments.done", **ref, arguments=item["arguments"],
                       name=item["name"])
        self._emit(out, "response.output_item.done", output_index=index, item=item)
        self._open, self._chunks, self._sealed = None, [], False

    def _emit(self, out: list[bytes], kind: str, **fields: Any) -> None:
        data = orjson.dumps({"type": kind, **fields, "sequence_number": self._seq})
        self._seq += 1
        out.append(b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n")


# -- errors --------------------------------------------------------------------------------


def _error_event(message: str, code: str, request_id: str | None, sequence: int) -> bytes:
    error: dict[str, Any] = {"message": message, "type": "server_error", "param": None, "code": code}
    if request_id:
        error["request_id"] = request_id
    data = {"type": "error", "code": code, "message": message, "param": None, "sequence_number": sequence,
            "error": error}
    return b"event: error\ndata: " + orjson.dumps(data) + b"\n\n"


def stream_error_event(message: str, code: str, request_id: str, sequence: int = 0) -> bytes:
    """The in-band error for a Responses stream: a ResponseErrorEvent that also has a top-level
    `error` object, so the openai SDK raises APIError (a bare error event would only be yielded)."""
    return _error_event(message, code, request_id, sequence)
