"""How a request crosses formats: which lane it takes (OpenAI passthrough, native passthrough, or translation
through the internal shape), the upstream request each lane builds, and how internal events are metered."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from collections.abc import Callable
from typing import Any, Literal

import orjson


from adapters import internal
from adapters.anthropic import client as anthropic_client
from adapters.anthropic import upstream as anthropic_upstream
from adapters.gemini import client as gemini_client
from adapters.gemini import upstream as gemini_upstream
from adapters.gemini.common import _f, spelled_once
from adapters.openai import chat_client as openai_chat
from adapters.openai import chat_upstream as openai_upstream
from adapters.openai import passthrough as openai_passthrough
from adapters.openai import prompt as openai_prompt
from adapters.openai import responses as openai_responses
from billing.metering import Meter, TextCounter
from core.config import Model, Provider
from core.dialects import Call
from core.errors import BadRequest

Lane = Literal["openai", "native", "translate", "embed", "count"]

UPSTREAMS: dict[str, Any] = {"openai": openai_upstream, "anthropic": anthropic_upstream, "gemini": gemini_upstream}
CLIENTS: dict[str, Any] = {"chat": openai_chat, "responses": openai_responses, "messages": anthropic_client,
                           "generate": gemini_client}
FORMAT_NAMES = {"openai": "OpenAI", "anthropic": "Anthropic", "gemini": "Gemini"}


@dataclass(slots=True)
class Plan:
    """One request's way through the relay, decided before anything is held or sent."""

    lane: Lane
    path: str = ""  # the upstream path, relative to the provider's base_url
    body: bytes = b""
    stream: bool = False
    max_output: int = 0
    prompt_estimate: int = 0
    include_usage: bool = False  # OpenAI passthrough: the client asked for the usage chunk
    upstream: Any = None  # the upstream-side adapter module (native, translate and embed lanes)
    embeddings: bool = False  # the answer is embeddings (native Gemini embeddings and the embed lane)
    # What the client gets, in its dialect, where it is not the upstream's own bytes: a translated reply,
    # embeddings, or a token count; and a new writer for a translated stream.
    render: Callable[[Any], bytes] | None = None
    new_writer: Callable[[], Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)  # extra upstream headers (anthropic-beta)
    chat: internal.Chat | None = None  # translate lane: the request, until its media are fetched
    choices: int = 1  # OpenAI passthrough: the answers the upstream writes (n), which a cut stream finishes


def lane_for(call: Call, provider: Provider, model: str) -> Lane:
    """Same format passes through; otherwise translate, or refuse what the upstream cannot do. The Responses
    API is OpenAI's own format only where the provider serves it (responses_api); elsewhere it is translated,
    to the Chat Completions of an OpenAI-format upstream as to any other format."""
    e, fmt = call.endpoint, provider.format
    if e in ("count_tokens", "count"):
        return "count"
    if call.dialect == "openai":
        if fmt == "openai":
            return "translate" if e == "responses" and not provider.responses_api else "openai"
        if e == "completions":
            raise BadRequest(f"the model {model!r} is served by an {FORMAT_NAMES[fmt]} upstream, which has no legacy "
                             "Completions API: use POST /v1/chat/completions", param="model")
        if e == "embeddings":
            return _embed_lane(fmt, model)
        return "translate"
    if call.dialect == "gemini" and e in ("embed", "batch_embed"):
        return "native" if fmt == "gemini" else _embed_lane(fmt, model)
    native = (call.dialect == "anthropic" and fmt == "anthropic") or (call.dialect == "gemini" and fmt == "gemini")
    return "native" if native else "translate"


def _embed_lane(fmt: str, model: str) -> Lane:
    if fmt == "anthropic":
        raise BadRequest(f"the model {model!r} is served by an Anthropic upstream, which has no embeddings",
                         param="model")
    return "embed"


def plan_request(call: Call, body: dict[str, Any], model: Model, request_id: str,
                 headers: list[tuple[bytes, bytes]] = ()) -> Plan:  # type: ignore[assignment]
    """Validate the client's body and build the upstream request (pure: no I/O). `headers` are the
    client's: an Anthropic client's betas go on to an Anthropic upstream."""
    fmt = model.provider.format
    lane = lane_for(call, model.provider, model.name)
    _check_depth(body)
    try:
        if call.dialect == "gemini":  # a field spelled two ways must not mean one thing here and another upstream
            body = spelled_once(body)
        if lane == "openai":
            prepared = openai_passthrough.prepare(call.endpoint, body, model.upstream_model, model.max_output_tokens,
                                                  model.provider.limit_field)
            if call.endpoint in ("chat", "responses"):
                prompt = held_prompt(openai_prompt.prompt_of(call.endpoint, body), model)
            else:
                prompt = capped_prompt(openai_passthrough.text_prompt_tokens(call.endpoint, body), model)
            return Plan("openai", openai_passthrough.UPSTREAM_PATHS[call.endpoint], prepared.upstream_body,
                        prepared.stream, prepared.max_output, prompt, prepared.include_usage,
                        choices=prepared.choices)
        if lane == "count":
            return _plan_count(call, body, model, _betas(call, fmt, headers))
        if lane == "native":
            plan = _plan_native(call, body, model)
            plan.headers = _betas(call, fmt, headers)
            return plan
        if lane == "embed":
            return _plan_embed(call, body, model, request_id)
        return _plan_translate(call, body, model, request_id)
    except internal.InvalidRequest as exc:
        raise BadRequest(str(exc), param=exc.param) from None


DEPTH_MARGIN = 16  # levels the gateway may wrap around a body's parts when it writes them out again


def _check_depth(body: dict[str, Any]) -> None:
    """orjson reads JSON nested up to 1024 levels but writes at most 254: a body in between would fail
    (a 500) wherever the gateway writes it again (the upstream body, the estimate, the cache key). Refuse
    it here, with room for the levels the gateway adds, in one C call."""
    wrapped: Any = body
    for _ in range(DEPTH_MARGIN):
        wrapped = [wrapped]
    try:
        orjson.dumps(wrapped)
    except orjson.JSONEncodeError as exc:
        raise BadRequest(f"the request body cannot be used: {exc} (nested too deeply?)") from None


def finish_translate(plan: Plan, model: Model) -> None:
    """Build the translated upstream body once the request's remote media (if any) are inline."""
    assert plan.chat is not None
    if model.provider.format == "openai":  # the one format whose servers differ in the field they obey
        plan.path, plan.body = plan.upstream.build_request(plan.chat, model.upstream_model, plan.max_output,
                                                           model.provider.limit_field)
    else:
        plan.path, plan.body = plan.upstream.build_request(plan.chat, model.upstream_model, plan.max_output)
    plan.chat = None


def held_prompt(chat: internal.Chat, model: Model) -> int:
    """The prompt tokens a request is held for: the one estimate (internal.estimate_prompt), at most the model's
    max_input_tokens; for a prompt with media whose size only the upstream learns (a video by URL, a file by id),
    max_input_tokens itself, and without it the request is refused: nothing would bound what the upstream counts."""
    if internal.has_unsized_media(chat):
        if model.max_input_tokens is None:
            raise BadRequest(f"this request carries media whose size cannot be known before it is sent (a video, "
                             f"audio or file given by URL or by id, or a stored conversation), and the model "
                             f"{model.name!r} has no input bound to hold for it: the operator must set "
                             f"models.{model.name}.max_input_tokens (its context window); send such media inline "
                             f"instead")
        return model.max_input_tokens
    return capped_prompt(internal.estimate_prompt(chat), model)


def capped_prompt(estimate: int, model: Model) -> int:
    """A prompt estimate, at most the model's max_input_tokens: no prompt is longer than its context window."""
    return estimate if model.max_input_tokens is None else min(estimate, model.max_input_tokens)


def _plan_translate(call: Call, body: dict[str, Any], model: Model, request_id: str) -> Plan:
    chat = parse_chat(call, body)
    estimate = held_prompt(chat, model)
    max_output = min(chat.max_output or model.max_output_tokens, model.max_output_tokens)
    render, new_writer = client_output(call, body, model, request_id, chat, estimate)
    return Plan("translate", stream=chat.stream, max_output=max_output, prompt_estimate=estimate,
                upstream=UPSTREAMS[model.provider.format], render=render, new_writer=new_writer, chat=chat)


def parse_chat(call: Call, body: dict[str, Any]) -> internal.Chat:
    """The client's generation request in the internal shape (raises InvalidRequest)."""
    chat: internal.Chat = CLIENTS[call.endpoint].parse_request(body)
    if call.dialect == "gemini":
        chat.stream = call.stream
    return chat


def client_output(call: Call, body: dict[str, Any], model: Model, request_id: str, chat: internal.Chat,
                  estimate: int) -> tuple[Callable[[Any], bytes], Callable[[], Any]]:
    """How an answer in the internal shape reaches this client: a renderer for a whole reply, and a
    factory of stream writers, in the client's dialect."""
    client = CLIENTS[call.endpoint]
    ctx = internal.StreamContext(request_id, model.name, int(time.time()), chat.include_usage, estimate)
    if call.endpoint == "responses":  # the Responses dialect echoes the request's settings
        return (lambda reply: client.render_response(reply, ctx, body)), (lambda: client.StreamWriter(ctx, body))
    if call.dialect == "gemini":  # with alt=sse, or Gemini's JSON-array stream
        return partial(client.render_response, ctx=ctx), partial(client.StreamWriter, ctx, call.sse)
    return partial(client.render_response, ctx=ctx), partial(client.StreamWriter, ctx)


def _plan_native(call: Call, body: dict[str, Any], model: Model) -> Plan:
    cap = model.max_output_tokens
    if call.dialect == "anthropic":
        stream = _bool(body.get("stream"), "stream")
        requested = _limit(body.get("max_tokens"), "max_tokens", required=True)
        max_output = min(requested or cap, cap)
        return Plan("native", "/messages", anthropic_upstream.passthrough_body(body, model.upstream_model, max_output),
                    stream, max_output, held_prompt(anthropic_client.prompt_of(body), model),
                    upstream=anthropic_upstream)
    m = model.upstream_model
    if call.endpoint in ("embed", "batch_embed"):
        embed = gemini_client.parse_embed_request(body, call.endpoint == "batch_embed")
        verb = "batchEmbedContents" if call.endpoint == "batch_embed" else "embedContent"
        return Plan("native", gemini_upstream.method_path(m, verb), gemini_upstream.with_upstream_model(body, m),
                    False, 0, capped_prompt(internal.estimate_embed(embed), model), upstream=gemini_upstream,
                    embeddings=True)
    config = _f(body, "generationConfig")
    if config is not None and not isinstance(config, dict):
        raise internal.InvalidRequest("'generationConfig' must be an object", "generationConfig")
    if _f(config, "candidateCount") not in (None, 1):  # one answer per request is what is held for and metered
        raise internal.InvalidRequest("generationConfig.candidateCount must be 1 through this gateway; send "
                                      "several requests for several answers", "generationConfig.candidateCount")
    requested = _limit(_f(config, "maxOutputTokens"), "generationConfig.maxOutputTokens", required=False)
    max_output = min(requested or cap, cap)
    path = gemini_upstream.method_path(m, "streamGenerateContent?alt=sse" if call.stream else "generateContent")
    return Plan("native", path, gemini_upstream.passthrough_body(body, m, max_output), call.stream, max_output,
                held_prompt(gemini_client.prompt_of(body), model), upstream=gemini_upstream)


def _plan_embed(call: Call, body: dict[str, Any], model: Model, request_id: str) -> Plan:
    if call.dialect == "openai":
        embed = openai_chat.parse_embed_request(body)
        ctx = internal.StreamContext(request_id, model.name, int(time.time()))
        render: Callable[[Any], bytes] = partial(openai_chat.render_embed, ctx=ctx,
                                                 encoding_format=body.get("encoding_format") or "float")
    else:
        batch = call.endpoint == "batch_embed"
        embed = gemini_client.parse_embed_request(body, batch)
        render = partial(gemini_client.render_embed, batch=batch)
    upstream = UPSTREAMS[model.provider.format]
    path, up = upstream.build_embed_request(embed, model.upstream_model)
    return Plan("embed", path, up, False, 0, capped_prompt(internal.estimate_embed(embed), model), upstream=upstream,
                embeddings=True, render=render)


def _plan_count(call: Call, body: dict[str, Any], model: Model, betas: dict[str, str]) -> Plan:
    """Token counting: a same-format upstream counts exactly (the request goes there unbilled); for
    another format the gateway estimates."""
    fmt, m = model.provider.format, model.upstream_model
    if call.dialect == "anthropic":
        if fmt == "anthropic":
            return Plan("count", "/messages/count_tokens", orjson.dumps({**body, "model": m}), headers=betas)
        chat = anthropic_client.parse_request(body, for_count=True)
        return Plan("count", prompt_estimate=internal.estimate_prompt(chat), render=anthropic_client.count_tokens_body)
    if fmt == "gemini":
        return Plan("count", gemini_upstream.method_path(m, "countTokens"), gemini_upstream.with_upstream_model(body, m))
    chat = gemini_client.parse_count_request(body)
    return Plan("count", prompt_estimate=internal.estimate_prompt(chat), render=gemini_client.count_tokens_body)


def _betas(call: Call, fmt: str, headers: Any) -> dict[str, str]:
    """An Anthropic client's `anthropic-beta` header, for an Anthropic upstream only."""
    if call.dialect != "anthropic" or fmt != "anthropic":
        return {}
    values = [v.decode("latin-1") for k, v in headers if k == b"anthropic-beta"]
    return {"anthropic-beta": ",".join(values)} if values else {}


def _bool(value: Any, param: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise internal.InvalidRequest(f"'{param}' must be a boolean", param)
    return value


def _limit(value: Any, param: str, required: bool) -> int | None:
    if value is None:
        if required:
            raise internal.InvalidRequest(f"'{param}' is required", param)
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise internal.InvalidRequest(f"'{param}' must be a positive integer", param)
    return value


# -- metering internal events --------------------------------------------------------------


def meter_event(meter: Meter, event: internal.Event) -> None:
    """Count what an internal stream event adds to the answer, or take the upstream's usage."""
    if isinstance(event, internal.TextDelta):
        meter.add_output(event.text)
    elif isinstance(event, internal.ThinkingDelta):
        meter.add_output(event.text)
    elif isinstance(event, internal.ToolCallDelta):
        meter.add_output((event.name or "") + event.arguments)
    elif isinstance(event, internal.UsageUpdate):
        if event.final:
            meter.set_upstream(event.usage)
        else:
            meter.set_partial(event.usage)


def meter_reply(meter: Meter, reply: internal.Reply) -> None:
    if reply.usage is not None:
        meter.set_upstream(reply.usage)
        return
    count = TextCounter()
    for part in reply.parts:
        if isinstance(part, (internal.Text, internal.Thinking)):
            meter.add_counted(count(part.text))
        elif isinstance(part, internal.ToolCall):
            meter.add_counted(count(part.name) + count(part.arguments))
    meter.mark_complete()
