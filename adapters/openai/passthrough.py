"""Same-format OpenAI traffic (Chat Completions, Completions, Embeddings, Responses) relayed as is: request
preparation, prompt estimate, usage normalization, the error dialect, the models list (streams: passthrough_stream)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from adapters.internal import InvalidRequest  # one class for every adapter: the relay answers it with a 400
from adapters.openai.common import str_or_empty
from billing.metering import (
    Meter,
    TextCounter,
    Usage,
)

Endpoint = Literal["chat", "completions", "embeddings", "responses"]

UPSTREAM_PATHS: dict[str, str] = {
    "chat": "/chat/completions",
    "completions": "/completions",
    "embeddings": "/embeddings",
    "responses": "/responses",
}
STREAMING_ENDPOINTS = ("chat", "completions", "responses")
DEFAULT_COMPLETIONS_MAX_TOKENS = 16  # the legacy Completions API's own default


@dataclass(slots=True)
class Prepared:
    """What the relay needs to know about one client request, and the body to send upstream."""

    stream: bool
    include_usage: bool  # the client asked for the usage-only chunk
    max_output: int  # the most output tokens the request can be billed for (all its choices)
    upstream_body: bytes
    choices: int = 1  # the answers the upstream writes (n, or best_of)


# -- requests ------------------------------------------------------------------------------


def prepare(endpoint: str, body: dict[str, Any], upstream_model: str, model_cap: int,
            limit_field: str = "max_tokens") -> Prepared:
    """Validate the fields the gateway relies on and build the upstream body (the prompt is estimated by
    adapters/openai/prompt.py, which reads it through the internal shape): it carries
    the output limit once, in `limit_field` for Chat Completions (the provider's choice), `max_tokens` for
    Completions and `max_output_tokens` for Responses, whatever spelling the client used. The upstream is always
    asked for stream usage; the client only gets it if it asked."""
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean", "stream")
    if stream and endpoint not in STREAMING_ENDPOINTS:
        raise InvalidRequest(f"streaming is not supported on this endpoint", "stream")
    include_usage = False
    upstream = dict(body)
    upstream["model"] = upstream_model
    if endpoint in ("chat", "completions"):
        options = body.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise InvalidRequest("'stream_options' must be an object", "stream_options")
        if stream:
            include_usage = bool(options and options.get("include_usage") is True)
            upstream["stream_options"] = {**(options or {}), "include_usage": True}
    max_output = max_output_tokens(endpoint, body, model_cap)
    if endpoint != "embeddings":  # the upstream may produce no more than was held for
        for name in LIMIT_FIELDS:
            upstream.pop(name, None)
        upstream[limit_field if endpoint == "chat" else _LIMIT_FIELD[endpoint]] = max_output
    copies = answers_per_request(endpoint, body)
    return Prepared(stream, include_usage, max_output * copies, orjson.dumps(upstream), copies)


_LIMIT_FIELD = {"completions": "max_tokens", "responses": "max_output_tokens"}
# a provider's choice (docs/billing.md "What a request can cost")
CHAT_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens")
# Every spelling of the output limit an OpenAI-compatible server may read: OpenAI's max_completion_tokens and
# max_tokens (and max_output_tokens in Responses); llama.cpp's server reads n_predict before either; TGI and SGLang
# take max_new_tokens natively. A client may use any of them (several only with one value); the upstream gets
# exactly one, with the held value, so no spelling the client sent can lift the limit.
LIMIT_FIELDS = ("max_output_tokens", "max_completion_tokens", "max_tokens", "n_predict", "max_new_tokens")
MAX_CHOICES = 128


def requested_limit(body: dict[str, Any]) -> int | None:
    """The most output tokens the client asked for, in whichever spelling; a 400 naming both spellings when
    two of them disagree."""
    found: tuple[str, int] | None = None
    for name in LIMIT_FIELDS:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidRequest(f"'{name}' must be a positive integer", name)
        if found is not None and found[1] != value:
            raise InvalidRequest(f"'{found[0]}' ({found[1]}) and '{name}' ({value}) both set the most output tokens "
                                 "and disagree: send one of them", name)
        found = found or (name, value)
    return found[1] if found is not None else None


def answers_per_request(endpoint: str, body: dict[str, Any]) -> int:
    """How many answers the upstream generates (and bills output for): `n`, or `best_of` on Completions."""
    if endpoint not in ("chat", "completions"):
        return 1
    most = 1
    for field in ("n", "best_of") if endpoint == "completions" else ("n",):
        value = body.get(field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CHOICES:
            raise InvalidRequest(f"'{field}' must be an integer from 1 to {MAX_CHOICES}", field)
        most = max(most, value)
    return most


def max_output_tokens(endpoint: str, body: dict[str, Any], cap: int) -> int:
    """The most output tokens of one answer: what the client asked for, at most the model's cap; without a
    limit, the cap (the legacy Completions API: its own default of 16)."""
    if endpoint == "embeddings":
        return 0
    requested = requested_limit(body)
    if requested is not None:
        return min(requested, cap)
    if endpoint == "completions":
        return min(DEFAULT_COMPLETIONS_MAX_TOKENS, cap)
    return cap


# -- prompt estimation (documented in docs/billing.md "Token counting") ------------------------------


def text_prompt_tokens(endpoint: str, body: dict[str, Any]) -> int:
    """The prompt tokens of a Completions or Embeddings request: its text (or token arrays), no framing. Chat
    Completions and Responses go through the internal shape's one rule (adapters/openai/prompt.py)."""
    count = TextCounter()
    field = "prompt" if endpoint == "completions" else "input"
    if field not in body:
        raise InvalidRequest(f"'{field}' is required", field)
    return _text_or_token_lists(body[field], field, count)


def _text_or_token_lists(value: Any, param: str, count: TextCounter) -> int:
    if isinstance(value, str):
        return count(value)
    if isinstance(value, list):
        total = 0
        for item in value:
            if isinstance(item, str):
                total += count(item)
            elif isinstance(item, int) and not isinstance(item, bool):
                total += 1
            elif isinstance(item, list):
                total += len(item)
            else:
                raise InvalidRequest(f"'{param}' must be a string, an array of strings, or token arrays", param)
        return total
    raise InvalidRequest(f"'{param}' must be a string, an array of strings, or token arrays", param)


# -- responses and usage --------------------------------------------------------------------


def _int(d: Any, key: str) -> int:
    v = d.get(key) if isinstance(d, dict) else None
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


def normalize_usage(usage: Any) -> Usage | None:
    """Chat/Completions/Embeddings `usage` or Responses `usage`, into the neutral shape."""
    if not isinstance(usage, dict):
        return None
    if "input_tokens" in usage or "output_tokens" in usage:  # Responses API
        return Usage(
            in_total=_int(usage, "input_tokens"),
            out_total=_int(usage, "output_tokens"),
            cache_read=_int(usage.get("input_tokens_details"), "cached_tokens"),
            cache_write=_int(usage.get("input_tokens_details"), "cache_write_tokens"),
            reasoning=_int(usage.get("output_tokens_details"), "reasoning_tokens"),
        )
    return Usage(
        in_total=_int(usage, "prompt_tokens"),
        out_total=_int(usage, "completion_tokens"),
        cache_read=_int(usage.get("prompt_tokens_details"), "cached_tokens"),
        cache_write=_int(usage.get("prompt_tokens_details"), "cache_write_tokens"),
        reasoning=_int(usage.get("completion_tokens_details"), "reasoning_tokens"),
    )


def meter_response(endpoint: str, body: Any, meter: Meter) -> None:
    """A complete non-stream answer: take the upstream usage, or count the text it carries."""
    if not isinstance(body, dict):
        return
    usage = normalize_usage(body.get("usage"))
    if usage is not None:
        meter.set_upstream(usage)
        return
    if endpoint == "responses":
        for item in body.get("output") or ():
            if isinstance(item, dict):
                meter.add_output(str_or_empty(item.get("arguments")))
                for part in item.get("content") or ():
                    if isinstance(part, dict):
                        meter.add_output(str_or_empty(part.get("text")))
        return
    for choice in body.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if endpoint == "completions":
            meter.add_output(str_or_empty(choice.get("text")))
        else:
            _meter_message(choice.get("message"), meter)


def _meter_message(msg: Any, meter: Meter) -> None:
    if not isinstance(msg, dict):
        return
    for key in ("content", "reasoning_content", "reasoning", "refusal"):
        text = msg.get(key)
        if isinstance(text, str) and text:
            meter.add_output(text)
    calls = msg.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict):
                meter.add_output(str_or_empty(fn.get("name")) + str_or_empty(fn.get("arguments")))


# -- errors ---------------------------------------------------------------------------------

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(status: int, message: str, code: str | None, param: str | None, request_id: str) -> bytes:
    etype = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return orjson.dumps(
        {"error": {"message": message, "type": etype, "param": param, "code": code, "request_id": request_id}}
    )


def stream_error_event(endpoint: str, message: str, code: str, request_id: str, sequence: int) -> bytes:
    """The in-band error that makes the openai SDK raise instead of ending quietly."""
    error = {"message": message, "type": "server_error", "param": None, "code": code, "request_id": request_id}
    if endpoint == "responses":
        data = {"type": "error", "code": code, "message": message, "param": None,
                "sequence_number": sequence, "error": error}
        return b"event: error\ndata: " + orjson.dumps(data) + b"\n\n"
    return b"data: " + orjson.dumps({"error": error}) + b"\n\n"


# -- models ---------------------------------------------------------------------------------


def model_object(name: str, created: int, owned_by: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": owned_by}


def models_list(models: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"object": "list", "data": models})
