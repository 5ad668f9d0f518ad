"""One exchange's state and the helpers around it: reading the client's body, the upstream's body and chunks
(timed as upstream time), what a finished request owes, and the upstream's own error message made safe to show."""

from __future__ import annotations

import re
from time import perf_counter
from collections.abc import Awaitable
from typing import Any, Protocol, TypeVar

import orjson

from billing.keys import Presented
from billing.metering import NO_USAGE, Meter, UsageRecord
from billing.pricing import TokenPrices
from core.config import Model
from core.auth import NO_RETRY
from core.dialects import GEMINI_METHODS, Call, Dialect, error_body, id_headers
from core.errors import (BadRequest, BodyTooLarge, GatewayError, UpstreamBadStatus, UpstreamClientError,
                         UpstreamOverloaded)
from core.translate import Plan

T = TypeVar("T")
Scope = dict[str, Any]
Receive = Any
Send = Any


class ClientGone(Exception):
    """The client disconnected before the request body was complete."""


class Exchange:
    """The state of one request as it moves through the relay."""

    __slots__ = ("request_id", "id_headers", "route", "call", "endpoint", "model", "status", "started", "stream",
                 "t0", "t_first", "upstream_wait", "client_gone", "meter", "sent", "error_code",
                 "upstream_error_kind", "finished", "key", "held", "plan", "writer", "headers", "rename",
                 "cache_state", "cache_key", "cache_scope", "collector", "reader", "prices", "attempts",
                 "held_tokens", "cut")

    def __init__(self, request_id: str, route: str, call: Call, t0: float) -> None:
        self.request_id = request_id
        self.id_headers = id_headers(call.dialect, request_id)
        self.route = route
        self.call = call
        self.endpoint = call.endpoint
        self.model: Model | None = None
        self.status = 0
        self.started = False  # response headers sent
        self.stream = False
        self.t0 = t0
        self.t_first = 0.0
        self.upstream_wait = 0.0
        self.client_gone = False
        self.meter: Meter | None = None
        self.sent = False  # the request went to the upstream
        self.error_code = ""
        self.upstream_error_kind = ""
        self.finished = False
        self.key: Presented | None = None
        self.held = False  # a hold was placed: the request must be settled
        self.plan: Plan | None = None
        self.writer: Any = None  # the client dialect's stream writer (translated streams)
        self.headers: list[tuple[bytes, bytes]] = []  # the client's request headers
        self.rename: tuple[bytes, bytes] | None = None  # passthrough: the upstream's model name -> the public one
        # The response cache (core/response_cache.py): "" on routes without it, else hit / miss / bypass.
        self.cache_state = ""
        self.cache_key = b""
        self.cache_scope = ""
        self.collector: Any = None  # a missed stream's AnswerCollector
        self.reader: Any = None  # a missed OpenAI passthrough stream's reader, for the collector
        self.prices: TokenPrices | None = None  # what the request is charged at, when not the model's prices
        self.attempts = 0  # channels that failed before one answered (failover)
        self.held_tokens = (0, 0)  # what the hold was sized for: prompt tokens, most output tokens
        self.cut = False  # the gateway ended the stream at the held limit: the upstream went on past it


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length":
            if not value.isdigit():
                raise BadRequest("invalid Content-Length header")
            if int(value) > limit:
                raise BodyTooLarge(f"the request body is larger than the limit of {limit} bytes")
            break
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"the request body is larger than the limit of {limit} bytes")
            parts.append(chunk)
        if not message.get("more_body", False):
            return parts[0] if len(parts) == 1 else b"".join(parts)


def error_kind(err: GatewayError) -> str:
    """The `kind` label of tokentoll_upstream_errors_total for an upstream failure."""
    if isinstance(err, UpstreamClientError):
        return f"status_{err.status}"
    return getattr(err, "kind", "error")


def charged_usage(x: Exchange) -> UsageRecord:
    """What a finished request owes: the upstream's usage, else what was observed; the bare prompt
    estimate only when the client left after the request went upstream. An upstream that failed
    before producing anything costs nothing."""
    if x.meter is None:
        return NO_USAGE
    record = x.meter.record()
    if record.source == "estimate" and not (x.client_gone and x.sent):
        return NO_USAGE
    return record


class Timed(Protocol):
    upstream_wait: float  # seconds spent waiting on the upstream


async def upstream_time(x: Timed, waiting: Awaitable[T]) -> T:
    """Await something of the upstream's (its answer, its body, its next chunk); the wait counts as
    upstream time, not gateway overhead."""
    t = perf_counter()
    try:
        return await waiting
    finally:
        x.upstream_wait += perf_counter() - t


_SECRETS = re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_*\-]{6,}|\borg-[A-Za-z0-9]{6,}|\bproj_[A-Za-z0-9]{6,}")


def upstream_message(raw: bytes) -> str:
    """The upstream's own error message, shortened and with anything that looks like the operator's
    key, organization or project taken out; never request content."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        text = raw[:200].decode("utf-8", "replace").strip()
    else:
        err = obj.get("error") if isinstance(obj, dict) else None
        msg = err.get("message") if isinstance(err, dict) else err if isinstance(err, str) else None
        text = msg[:300] if isinstance(msg, str) else ""
    return _SECRETS.sub("[redacted]", text)


def with_upstream_message(text: str, raw: bytes) -> str:
    detail = upstream_message(raw)
    return f"{text}: {detail}" if detail else text


def upstream_code(raw: bytes) -> tuple[str | None, str | None]:
    """The upstream's error code and param (e.g. context_length_exceeded), which clients act on."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, None
    err = obj.get("error") if isinstance(obj, dict) else None
    if not isinstance(err, dict):
        return None, None
    code, param = err.get("code"), err.get("param")
    return (code if isinstance(code, str) else None), (param if isinstance(param, str) else None)


PASSED_ON_HEADERS = ("retry-after", "retry-after-ms")


def upstream_refusal(status: int, headers: Any, raw: bytes) -> GatewayError:
    """An upstream's non-200 answer as the error the client gets: a refusal of the gateway's own credentials
    (Gemini says 400 API_KEY_INVALID) is the operator's affair; overloaded may be retried (after Retry-After
    when the upstream sent one); other 5xx are a bad status; the upstream's 4xx/429 is passed on."""
    if status in (401, 403, 407) or (status == 400 and b"API_KEY_INVALID" in raw):
        return UpstreamBadStatus(f"the upstream provider refused the gateway's credentials ({status}); "
                                 "the operator has been told", headers=NO_RETRY)
    retry = {k: headers[k] for k in PASSED_ON_HEADERS if k in headers}
    if status in (503, 529):
        return UpstreamOverloaded(with_upstream_message(f"the upstream provider is overloaded ({status})", raw),
                                  headers=retry)
    if status >= 500 or status < 400:
        return UpstreamBadStatus(with_upstream_message(f"the upstream provider answered {status}", raw))
    return UpstreamClientError(status, raw, retry)


def failure_body(dialect: Dialect, err: GatewayError, request_id: str) -> bytes:
    """A failure's body in the client's dialect; an upstream's own refusal keeps its code and param
    (context_length_exceeded...) and gets our request id."""
    if isinstance(err, UpstreamClientError):
        code, param = upstream_code(err.body)
        message = with_upstream_message(f"the upstream refused the request ({err.status})", err.body)
        return error_body(dialect, err.status, message, code or err.code, param, request_id)
    return error_body(dialect, err.status, err.message, err.code, err.param, request_id)


def route_label(path: str, call: Call) -> str:
    """A bounded label for metrics and the log: Gemini paths carry the model, so they are named by method, and a
    method this gateway does not serve is named `unknown` (a caller must not add label values)."""
    if call.dialect != "gemini":
        return path
    base = "/v1beta/models" if path.startswith("/v1beta/") else "/v1/models"
    method = path.rpartition(':')[2]
    return f"{base}/{{model}}:{method if method in GEMINI_METHODS else 'unknown'}"


def model_rename(upstream_model: str, public: str) -> tuple[bytes, bytes] | None:
    """The JSON string forms of both names, when a passed-through answer must have its name replaced."""
    if upstream_model == public:
        return None
    return orjson.dumps(upstream_model)[1:-1], orjson.dumps(public)[1:-1]


def renamed(data: bytes, rename: tuple[bytes, bytes] | None) -> bytes:
    """A passed-through body or event with the upstream's model name (an operator's deployment name, say)
    replaced by the public one the client asked for; a cheap byte replace of the `"model"` field only."""
    if rename is None or rename[0] not in data:
        return data
    up, public = rename
    for sep in (b'":"', b'": "'):
        field = b'"model' + sep + up + b'"'
        if field in data:
            return data.replace(field, b'"model' + sep + public + b'"', 1)
    return data
