"""The relay: a plain ASGI handler that reads a client's request, sends it to the model's upstream and
passes the answer back event by event, metering tokens per chunk; every request ends in one usage record."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from dataclasses import replace
from time import perf_counter
from typing import Any

import orjson

from adapters import internal, openai
from adapters.anthropic import client as anthropic_client
from adapters.gemini import client as gemini_client
from adapters.gemini import upstream as gemini_upstream
from adapters.openai import chat_upstream as openai_upstream
from billing.ledger import Ledger
from billing.metering import Meter, Usage, UsageRecord, output_cutoff
from core.auth import admission_error, presented_key, refuse_unknown_key
from core import sse
from core.clientip import from_scope
from core.config import Channel, Model, Settings
from core.dialects import UNKNOWN_METHOD, Call, error_body
from core.exchange import (
    ClientGone,
    Exchange,
    Receive,
    Scope,
    Send,
    charged_usage,
    error_kind,
    failure_body,
    model_rename,
    read_body,
    renamed,
    route_label,
    upstream_refusal,
    upstream_time,
    with_upstream_message,
)
from core import response_cache
from core.response_cache import ResponseCache
from core.routing import Router
from core.translate import Plan, client_output, finish_translate, meter_event, meter_reply, parse_chat, plan_request
from core.errors import (
    BadRequest,
    GatewayError,
    GatewayShuttingDown,
    InvalidJSON,
    MethodNotAllowed,
    ModelNotFound,
    UpstreamBadStatus,
    UpstreamClientError,
    UpstreamClosed,
    UpstreamError,
    UpstreamOverloaded,
    UnknownMethod,
)
from core.media import MediaFetcher
from core.metrics import Metrics
from core.requestlog import RequestLog
from core.upstream import UpstreamResponse, Upstreams

STREAM_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
JSON_HEADERS = [(b"content-type", b"application/json")]
# Gemini's streamGenerateContent without alt=sse: one JSON array written a chunk at a time, sent as Google does
ARRAY_STREAM_HEADERS = [(b"content-type", b"application/json; charset=UTF-8"), *STREAM_HEADERS[1:]]
log = logging.getLogger("tokentoll.relay")
CLIENT_GONE_STATUS = 499  # nginx's convention, for the log and metrics only
KIND_ENDPOINTS = {"image": "POST /v1/images/generations (or /v1/images/edits)", "video": "POST /v1/videos"}
DRAIN_SECONDS = 0.5  # after the answer is complete, how long the upstream may take to end its body


class Relay:
    def __init__(self, settings: Settings, upstreams: Upstreams, metrics: Metrics, log: RequestLog,
                 ledger: Ledger, media: MediaFetcher, cache: ResponseCache) -> None:
        self.media = media
        self.cache = cache
        self.router = Router(settings.routing)
        self.settings = settings
        self.ledger = ledger
        self.billing = settings.billing.enabled
        self.pid = os.getpid()
        self.upstreams = upstreams
        self.metrics = metrics
        self.log = log
        self.in_flight = 0  # exchanges under way in this worker

    async def __call__(self, call: Call, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        x = Exchange(request_id, route_label(scope["path"], call), call, perf_counter())
        x.headers = scope["headers"]
        if call.endpoint in response_cache.HEADER_ENDPOINTS:
            x.cache_state = "bypass"  # until the cache is asked
        watch: asyncio.Future[Any] | None = None
        task = asyncio.current_task()
        assert task is not None

        def on_disconnect(fut: asyncio.Future[Any]) -> None:
            if not fut.cancelled() and not x.finished:
                x.client_gone = True
                task.cancel()

        self.in_flight += 1
        try:
            try:
                if scope["method"] != "POST":
                    raise MethodNotAllowed(f"{scope['method']} is not allowed here; use POST",
                                           headers={"allow": "POST"})
                if call.endpoint == UNKNOWN_METHOD:  # a routing answer: no key needed to learn the URL is wrong
                    raise UnknownMethod(f"unknown method {scope['path'].rpartition(':')[2][:64]!r}: this gateway "
                                        f"serves generateContent, streamGenerateContent, countTokens, embedContent "
                                        f"and batchEmbedContents")
                if self.billing:  # the key is known good before the body is read, parsed or counted
                    x.key = presented_key(scope, call.dialect == "gemini")
                    await refuse_unknown_key(self.ledger, x.key)
                body = await read_body(scope, receive, self.settings.server.max_body_bytes)
                watch = asyncio.ensure_future(receive())
                watch.add_done_callback(on_disconnect)
                await self._exchange(x, body, send)
            except GatewayError as err:
                await self._fail(x, err, send)
            except ClientGone:
                x.client_gone = True
            except Exception:  # a bug: answer in the caller's dialect; the trace (never the body) goes to the log
                log.exception("internal error in request %s", x.request_id)
                await self._fail(x, GatewayError("internal error in the gateway; quote the request id to the "
                                                 "operator"), send)
        except asyncio.CancelledError:
            if not x.client_gone:  # the server is stopping: say so in-band, then let the cancel go on
                await self._fail(x, GatewayShuttingDown("the gateway is shutting down and ended this stream; "
                                                        "retry the request"), send)
                raise
            task.uncancel()
        finally:
            self.in_flight -= 1
            x.finished = True
            if watch is not None:
                watch.remove_done_callback(on_disconnect)
                watch.cancel()
            await self._finish(x, perf_counter(), from_scope(scope, self.settings.server.trusted_proxies))

    # -- the exchange ---------------------------------------------------------------------

    async def _exchange(self, x: Exchange, raw: bytes, send: Send) -> None:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidJSON(f"the request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        name = x.call.model if x.call.dialect == "gemini" else body.get("model")
        if not isinstance(name, str) or not name:
            raise BadRequest("'model' is required and must be a string", param="model")
        model = self.settings.models.get(name)
        if model is None:
            raise ModelNotFound(f"the model {name!r} does not exist; GET /v1/models lists the models served here",
                                param="model")
        if model.kind != "text":  # priced per image or video, not per token: the text work would be free
            raise BadRequest(f"the model {name!r} is priced per {model.kind}, not per token, and is not served "
                             f"here: use {KIND_ENDPOINTS[model.kind]}", param="model")
        channels = self.router.order(model, time.monotonic())
        model = x.model = on_channel(model, channels[0])
        x.rename = model_rename(model.upstream_model, model.name)
        plan = x.plan = plan_request(x.call, body, model, x.request_id, x.headers)
        if plan.lane == "count":
            await self._count(x, plan, send)
            return
        x.stream = plan.stream
        if x.cache_state and await self._from_cache(x, plan, body, send):
            return
        media = self._media_to_fetch(x, plan)
        if not media:
            self._translate(x, plan)
        if x.key is not None:
            x.held = True  # before the await: a request cancelled while its hold commits still settles it
            x.held_tokens = (plan.prompt_estimate, plan.max_output)
            admission = await self.ledger.admit(x.request_id, x.key, model.name, model.prices, *x.held_tokens)
            if admission.error:
                raise admission_error(admission, model.name)
        if media:  # fetched only for a request whose hold is placed
            await self.media.inline(media)
            self._translate(x, plan)
        x.meter = Meter(plan.prompt_estimate)
        x.sent = True  # from here on the upstream may be doing work for us
        resp = await self._open(x, body, channels)
        plan = x.plan
        try:
            if plan.lane == "openai":
                if plan.stream:
                    await self._relay_stream(x, resp, plan, send)
                else:
                    await self._relay_body(x, resp, send)
            elif plan.stream:
                await self._cross_stream(x, resp, plan, send)
            else:
                await self._cross_body(x, resp, plan, send)
        finally:
            resp.close()

    async def _finish_plan(self, x: Exchange, plan: Plan) -> None:
        """A translated request's upstream body, once its media are inline for a Gemini upstream (which
        cannot fetch URLs itself)."""
        media = self._media_to_fetch(x, plan)
        if media:
            await self.media.inline(media)
        self._translate(x, plan)

    def _media_to_fetch(self, x: Exchange, plan: Plan) -> list[internal.Media]:
        """The media given by URL that the gateway must fetch (a Gemini upstream takes bytes only); a request
        giving more than one may is refused here, before anything is held or fetched."""
        assert x.model is not None
        if plan.chat is None or x.model.provider.format != "gemini":
            return []
        media = gemini_upstream.remote_media(plan.chat)
        self.media.check_count(media)
        return media

    @staticmethod
    def _translate(x: Exchange, plan: Plan) -> None:
        if plan.chat is None:
            return
        assert x.model is not None
        try:
            finish_translate(plan, x.model)
        except internal.InvalidRequest as exc:
            raise BadRequest(str(exc), param=exc.param) from None

    async def _open(self, x: Exchange, body: dict[str, Any], channels: list[Channel]) -> UpstreamResponse:
        """Send the request to the first channel that answers 200 with the right kind of body. Before anything
        reached the client, a connect error, a timeout, a 5xx or a 429 moves on to the next channel (the one
        hold covers every attempt); an upstream's other 4xx is the request's own fault and ends it."""
        public = self.settings.models[x.model.name]  # type: ignore[union-attr]
        refusals: list[UpstreamClientError] = []
        for i, channel in enumerate(channels):
            if i:  # another channel may speak another format: the request is planned again for it
                model = x.model = on_channel(public, channel)
                x.rename = model_rename(model.upstream_model, model.name)
                x.plan = plan_request(x.call, body, model, x.request_id, x.headers)
                await self._finish_plan(x, x.plan)
            plan, model = x.plan, x.model
            assert plan is not None and model is not None
            self.router.trying(channel, time.monotonic())
            resp: UpstreamResponse | None = None
            try:
                resp = await upstream_time(x, self.upstreams.open(model.provider, plan.path, plan.body, plan.stream,
                                                                  plan.headers))
                if resp.status != 200:
                    await self._upstream_refused(x, resp)
                if plan.stream and "json" in resp.headers.get("content-type", ""):
                    await self._not_a_stream(x, resp)
            except (UpstreamError, UpstreamClientError) as err:
                if resp is not None:
                    resp.close()
                if isinstance(err, UpstreamClientError) and err.status != 429:
                    raise
                self.router.failed(channel, time.monotonic(), _retry_after(err))
                if i == len(channels) - 1:
                    if isinstance(err, UpstreamClientError) and len(refusals) == i:  # every channel said 429
                        raise self._all_rate_limited(public, err) from None
                    raise
                if isinstance(err, UpstreamClientError):
                    refusals.append(err)
                self._count_upstream_error(x, error_kind(err))
                x.attempts += 1
                continue
            except BaseException:
                if resp is not None:
                    resp.close()
                raise
            self.router.succeeded(channel)
            return resp
        raise AssertionError("a model has at least one channel")

    def _all_rate_limited(self, model: Model, last: UpstreamClientError) -> UpstreamClientError:
        """Every channel answered 429: the client gets a 429 whose Retry-After is when the first is back."""
        wait = self.router.retry_after(model, time.monotonic())
        if wait is None:
            return last
        return UpstreamClientError(429, last.body, {**last.headers, "retry-after": str(max(1, math.ceil(wait)))})

    async def _from_cache(self, x: Exchange, plan: Plan, body: dict[str, Any], send: Send) -> bool:
        """The response cache's part of a generation request: True when the answer came from the cache
        (held and charged at the cache_read price); otherwise a miss is prepared to be stored."""
        model = x.model
        assert model is not None
        mode = response_cache.requested_mode(x.headers)  # a wrong value is a 400 on every generation route
        if x.endpoint not in response_cache.CACHED_ENDPOINTS or not self.settings.cache.enabled:
            return False
        if not response_cache.worth_a_look(x.call.dialect, body, mode):
            return False
        try:
            chat = parse_chat(x.call, body) if plan.chat is None else plan.chat
        except internal.InvalidRequest:  # a passthrough request the internal shape cannot hold: not cached
            return False
        if not response_cache.cacheable(chat, mode):
            return False
        account_id = None
        if x.key is not None:
            account_id = self.cache.account_of(x.key.hash)
            if account_id is None:
                refusal = await self.ledger.check_key(x.key, model.name)
                if refusal.error:
                    raise admission_error(refusal, model.name)
                account_id = refusal.account_id
                self.cache.remember_account(x.key.hash, account_id)
        x.cache_scope = response_cache.scope_of(account_id, self.settings.cache.shared)
        passed_on = response_cache.unmodeled(x.endpoint, body) if plan.lane in ("openai", "native") else None
        x.cache_key = response_cache.cache_key(x.cache_scope, model.name, plan.max_output, chat, passed_on)
        found = await self.cache.get(x.cache_key, time.time())
        if found is None:
            x.cache_state = "miss"
            if plan.stream:
                x.collector = response_cache.AnswerCollector()
                if plan.lane == "openai":
                    x.reader = openai_upstream.StreamReader()
            return False
        x.cache_state = "hit"
        reply = response_cache.decode_answer(found.answer, "tt-cache-" + x.request_id.removeprefix("req_"), model.name)
        x.prices = response_cache.hit_prices(model.prices)
        if x.key is not None:
            x.held = True
            x.held_tokens = (found.input_tokens, found.output_tokens)
            admission = await self.ledger.admit(x.request_id, x.key, model.name, x.prices, *x.held_tokens)
            if admission.error:
                raise admission_error(admission, model.name)
        assert reply.usage is not None
        x.meter = Meter(found.input_tokens)
        x.meter.set_upstream(reply.usage)
        render, new_writer = client_output(x.call, body, model, x.request_id, chat, found.input_tokens)
        if not plan.stream:
            await self._send_json(x, render(reply), send)
            return True
        writer = new_writer()
        events = [writer.write(event) for event in response_cache.replay(reply)]
        await self._send_events(x, [*events, writer.close(reply.usage)], send)
        x.finished = True
        await send({"type": "http.response.body", "body": b""})
        return True

    def _cache_headers(self, x: Exchange, known: bool = True) -> list[tuple[bytes, bytes]]:
        if not x.cache_state:
            return []
        if x.model is None or x.meter is None:
            return response_cache.headers(x.cache_state, None, None, None, False)
        usage = x.meter.record().usage
        return response_cache.headers(x.cache_state, usage, x.model.prices, x.prices or x.model.prices, known)

    async def _count(self, x: Exchange, plan: Plan, send: Send) -> None:
        """count_tokens / countTokens, for any key that may use the model, never charged: counted by a
        same-format upstream, else the gateway's own estimate."""
        assert x.model is not None
        if x.key is not None:
            refusal = await self.ledger.check_key(x.key, x.model.name)
            if refusal.error:
                raise admission_error(refusal, x.model.name)
        if plan.render is not None:
            await self._send_json(x, plan.render(plan.prompt_estimate), send)
            return
        resp = await upstream_time(x, self.upstreams.open(x.model.provider, plan.path, plan.body, False,
                                                          plan.headers))
        try:
            if resp.status != 200:
                await self._upstream_refused(x, resp)
            await self._send_json(x, await upstream_time(x, resp.read()), send)
        finally:
            resp.close()

    async def _upstream_refused(self, x: Exchange, resp: UpstreamResponse) -> None:
        raise upstream_refusal(resp.status, resp.headers, await upstream_time(x, resp.read()))

    async def _not_a_stream(self, x: Exchange, resp: UpstreamResponse) -> None:
        """Some upstreams answer a stream request with a JSON error and status 200."""
        raw = await upstream_time(x, resp.read())
        raise UpstreamBadStatus(with_upstream_message("the upstream answered JSON instead of an event stream", raw))

    async def _relay_body(self, x: Exchange, resp: UpstreamResponse, send: Send) -> None:
        raw = await upstream_time(x, resp.read())
        assert x.meter is not None
        obj = _answer_object(raw)
        openai.meter_response(x.endpoint, obj, x.meter)
        x.meter.mark_complete()
        if x.cache_state == "miss":
            await self._cache_answer(x, openai_upstream.parse_response(obj))
        raw = renamed(raw, x.rename)
        ctype = resp.headers.get("content-type", "application/json").encode()
        x.status = 200
        x.started = True
        x.t_first = perf_counter()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", ctype), (b"content-length", b"%d" % len(raw)), *x.id_headers,
                                *self._cache_headers(x)]})
        x.finished = True  # from here a disconnect is the normal end of the exchange
        await send({"type": "http.response.body", "body": raw})

    async def _relay_stream(self, x: Exchange, resp: UpstreamResponse, plan: Plan, send: Send) -> None:
        """Each upstream event goes to the client as soon as it is complete. The response starts
        only with the first event, so an upstream that fails before it still gets a real status. An upstream
        that goes on past the held limit is cut there, and the client's stream ends as if it had stopped."""
        meter = x.meter
        assert meter is not None
        endpoint, include_usage = x.endpoint, plan.include_usage
        stream = openai.PassthroughStream(endpoint, meter, plan.choices)
        cutoff = output_cutoff(plan.max_output)  # OpenAI streams carry no running count of the upstream's own
        decoder = sse.SSEDecoder()
        complete = False
        sequence = 0
        self.metrics.open_streams.inc()
        try:
            while not complete:
                chunk = await upstream_time(x, resp.read_chunk())
                out: list[bytes] = []
                for ev in decoder.feed(chunk) if chunk else decoder.finish():
                    if complete:
                        break  # nothing is passed on after the end of the answer
                    if ev.comment:
                        out.append(sse.encode_comment(ev.comment))
                    if not ev.has_data:
                        continue
                    sequence += 1
                    if ev.data == b"[DONE]":
                        complete = True
                        out.append(b"data: [DONE]\n\n")
                        continue
                    flags = stream.feed(ev.data)
                    if flags & openai.NOT_JSON:
                        continue  # it would crash the SDK; the bytes are not part of an answer
                    if x.reader is not None:
                        for event in x.reader.feed(ev.event or "", ev.data):
                            x.collector.add(event)
                    if flags & openai.TERMINAL:
                        complete = True
                    if flags & openai.UPSTREAM_ERROR:
                        x.error_code = "upstream_stream_error"
                        self._count_upstream_error(x, "stream_error")
                    data = ev.data
                    if not include_usage and flags & (openai.USAGE_ONLY | openai.USAGE_ON_CONTENT):
                        if flags & openai.USAGE_ONLY:
                            continue
                        data = openai.without_usage(data)
                    out.append(sse.encode(renamed(data, x.rename), ev.event))
                    if meter.output_observed >= cutoff and not complete:
                        x.cut = complete = True
                        out.append(stream.cut(meter.record().usage, include_usage))
                if complete and x.collector is not None and not x.error_code and not x.cut:
                    await self._cache_collected(x)
                await self._send_events(x, out, send)
                if not chunk:
                    break
            if not complete:
                raise UpstreamClosed("the upstream ended the stream before it was complete")
            meter.mark_complete()
        except UpstreamError as err:
            if not x.started:
                raise
            await self._end_in_band(x, err, openai.stream_error_event(endpoint, err.message, err.code,
                                                                       x.request_id, sequence), send)
        finally:
            self.metrics.open_streams.dec()
        if not x.started:  # an upstream that sent nothing but comments
            await self._start_stream(x, send)
        x.finished = True
        await send({"type": "http.response.body", "body": b""})
        if complete and not x.cut:  # a cut upstream is still writing: its connection is closed, not drained
            await resp.drain(DRAIN_SECONDS)  # the upstream's own end, so its connection can be reused

    async def _cross_body(self, x: Exchange, resp: UpstreamResponse, plan: Plan, send: Send) -> None:
        """A non-stream answer in another lane: native bodies pass through as they are (metered from their
        usage), translated ones are rendered in the client's dialect with the usage that is charged."""
        raw = await upstream_time(x, resp.read())
        meter = x.meter
        assert meter is not None
        obj = _answer_object(raw)
        if plan.embeddings:
            vectors = plan.upstream.parse_embed_response(obj)
            if vectors.usage is not None:
                meter.set_upstream(vectors.usage)
            meter.mark_complete()
            if plan.render is not None:
                raw = plan.render(internal.EmbedReply(vectors.vectors, meter.record().usage))
        else:
            reply = plan.upstream.parse_response(obj)
            meter_reply(meter, reply)
            if x.cache_state == "miss":
                await self._cache_answer(x, reply)
            if plan.render is not None:  # translated: told the usage that is charged
                reply.usage = meter.record().usage
                raw = plan.render(reply)
            else:
                raw = renamed(raw, x.rename)
        await self._send_json(x, raw, send)

    async def _send_json(self, x: Exchange, raw: bytes, send: Send) -> None:
        x.status = 200
        x.started = True
        x.t_first = perf_counter()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*JSON_HEADERS, (b"content-length", b"%d" % len(raw)), *x.id_headers,
                                *self._cache_headers(x)]})
        x.finished = True  # from here a disconnect is the normal end of the exchange
        await send({"type": "http.response.body", "body": raw})

    async def _cross_stream(self, x: Exchange, resp: UpstreamResponse, plan: Plan, send: Send) -> None:
        """A stream in another lane: the upstream's events are decoded to internal events, which meter
        the answer; a native stream passes its own bytes on, a translated one is written in the client's
        dialect by its writer. Either way the client sees the end of a complete answer, or an error."""
        meter = x.meter
        assert meter is not None and x.model is not None
        reader = plan.upstream.StreamReader()
        translated = plan.lane == "translate"
        gemini = x.call.dialect == "gemini"
        if translated:
            assert plan.new_writer is not None
            x.writer = plan.new_writer()
        array = gemini and not translated and not x.call.sse  # Gemini's JSON-array stream, framed here
        limit, cutoff = plan.max_output, output_cutoff(plan.max_output)
        decoder = sse.SSEDecoder()
        complete = failed = False
        self.metrics.open_streams.inc()
        try:
            while not (complete or failed):
                chunk = await upstream_time(x, resp.read_chunk())
                out: list[bytes] = []
                for ev in decoder.feed(chunk) if chunk else decoder.finish():
                    if not ev.has_data or complete or failed:
                        continue  # comments are never passed on (they break google-genai)
                    for event in reader.feed(ev.event, ev.data):
                        meter_event(meter, event)
                        if x.collector is not None:
                            x.collector.add(event)
                        if isinstance(event, internal.StreamError):
                            failed = True
                            x.error_code = "upstream_stream_error"
                            self._count_upstream_error(x, "stream_error")
                            if translated:  # the upstream's kind (overloaded...) picks the dialect's code
                                out.append(x.writer.error(event.message, event.kind or "upstream_stream_error"))
                        elif translated:
                            out.append(x.writer.write(event))
                    if not translated:
                        out.append(_native_frame(ev, gemini, array, x.started or bool(out), x.rename))
                    complete = reader.done
                    if not (complete or failed) and meter.past_limit(limit, cutoff):
                        x.cut = complete = True  # the upstream went on past the limit: it ends here
                        if translated:
                            out.append(x.writer.write(internal.End("length")))
                if complete and x.collector is not None and not failed and not x.cut:
                    await self._cache_collected(x)
                await self._send_events(x, out, send)
                if not chunk:
                    break
            if failed:
                if array:  # the upstream's error chunk went out inside the array: close it
                    await send({"type": "http.response.body", "body": b"]", "more_body": True})
            elif not complete:
                raise UpstreamClosed("the upstream ended the stream before it was complete")
            else:
                meter.mark_complete()
                usage = meter.record().usage
                if translated:
                    tail = x.writer.close(usage)
                elif x.cut:
                    tail = self._native_cut(x, reader, usage, array)
                else:
                    tail = b"]" if array else b""
                await self._send_events(x, [tail] if tail else [], send)
        except UpstreamError as err:
            if not x.started:
                raise
            await self._end_in_band(x, err, self._stream_error(x, err.message, err.code), send)
        finally:
            self.metrics.open_streams.dec()
        if not x.started:
            await self._start_stream(x, send)
        x.finished = True
        await send({"type": "http.response.body", "body": b""})
        if complete and not x.cut:
            await resp.drain(DRAIN_SECONDS)

    def _native_cut(self, x: Exchange, reader: Any, usage: Usage, array: bool) -> bytes:
        """The end of a passed-through Anthropic or Gemini stream cut at the held limit, in the client's terms."""
        assert x.model is not None
        if x.call.dialect == "anthropic":
            return anthropic_client.cut_events(reader.open_block, usage)
        data = gemini_client.cut_chunk(x.model.name, x.request_id, usage)
        return b",\r\n" + data + b"]" if array else sse.encode(data)

    async def _end_in_band(self, x: Exchange, err: UpstreamError, event: bytes, send: Send) -> None:
        """An upstream failure after the stream started: counted, and told to the client in-band."""
        self._count_upstream_error(x, error_kind(err))
        x.error_code = err.code
        await send({"type": "http.response.body", "more_body": True, "body": event})

    def _stream_error(self, x: Exchange, message: str, code: str) -> bytes:
        """The in-band error that ends a started stream, in the client's own dialect."""
        if x.writer is not None:
            return x.writer.error(message, code)
        if x.call.dialect == "anthropic":
            return anthropic_client.stream_error_event(message, code, x.request_id)
        if x.call.dialect == "gemini":
            return gemini_client.stream_error_event(message, code, x.request_id, x.call.sse)
        return openai.stream_error_event(x.endpoint, message, code, x.request_id, 0)

    async def _send_events(self, x: Exchange, out: list[bytes], send: Send) -> None:
        """Pass on what one upstream read produced; the response starts with the first of it."""
        if out:
            if not x.started:
                await self._start_stream(x, send)
            await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})

    async def _start_stream(self, x: Exchange, send: Send) -> None:
        x.started = True
        x.status = 200
        x.t_first = perf_counter()
        framing = ARRAY_STREAM_HEADERS if x.call.dialect == "gemini" and not x.call.sse else STREAM_HEADERS
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*framing, *x.id_headers, *self._cache_headers(x, x.cache_state == "hit")]})

    # -- errors and the end of a request --------------------------------------------------

    async def _fail(self, x: Exchange, err: GatewayError, send: Send) -> None:
        if isinstance(err, (UpstreamError, UpstreamClientError)):
            self._count_upstream_error(x, error_kind(err))
        x.error_code = err.code
        if x.started:  # a stream is under way: end it with the in-band error, never silently
            if x.stream and not x.finished:
                x.finished = True
                await send({"type": "http.response.body", "more_body": True,
                            "body": self._stream_error(x, err.message, err.code)})
                await send({"type": "http.response.body", "body": b""})
            return
        body = failure_body(x.call.dialect, err, x.request_id)
        status = err.status
        if isinstance(err, UpstreamOverloaded) and x.call.dialect == "anthropic":
            status = 529  # Anthropic's own overloaded status: the SDK raises OverloadedError and retries
            body = error_body("anthropic", 529, err.message, err.code, None, x.request_id)
        headers = [*JSON_HEADERS, (b"content-length", b"%d" % len(body)), *x.id_headers,
                   *((k.encode(), v.encode()) for k, v in err.headers.items()), *self._cache_headers(x, False)]
        x.status = status
        x.started = True
        x.t_first = perf_counter()
        await send({"type": "http.response.start", "status": status, "headers": headers})
        x.finished = True
        await send({"type": "http.response.body", "body": body})

    async def _cache_collected(self, x: Exchange) -> None:
        """A stream whose end has come from the upstream: its whole answer, collected, goes into the cache before
        the client reads that end."""
        assert x.meter is not None and x.collector is not None
        x.meter.mark_complete()
        await self._cache_answer(x, x.collector.reply())

    async def _cache_answer(self, x: Exchange, answer: internal.Reply | None) -> None:
        """A complete answer that missed the cache goes into it before its last bytes go to the client, so that
        the same request sent as soon as this answer is read finds it. A failure to store costs the request
        nothing."""
        if answer is None or not answer.parts or x.model is None or x.meter is None:
            return
        record = x.meter.record()
        if record.source not in ("upstream", "observed"):
            return
        try:
            await self.cache.put(x.cache_key, x.cache_scope, x.model.name,
                                 response_cache.encode_answer(answer, record.usage), record.usage, time.time())
        except Exception:  # noqa: BLE001 - the answer is delivered and charged all the same; only the cache lost it
            log.exception("could not store the answer of %s in the response cache", x.request_id)

    def _count_upstream_error(self, x: Exchange, kind: str) -> None:
        x.upstream_error_kind = kind
        provider = x.model.provider.name if x.model else "-"
        self.metrics.upstream_error(provider, kind)

    async def _finish(self, x: Exchange, now: float, client_ip: str = "") -> None:
        record = charged_usage(x)
        if x.cache_state == "hit":  # every token of a hit was read from the cache, as its headers say
            u = record.usage
            record = UsageRecord(Usage(u.in_total, u.out_total, u.in_total + u.out_total, 0, u.reasoning), "cache")
        status = x.status if x.started else CLIENT_GONE_STATUS if x.client_gone else 500
        model = x.model.name if x.model else "-"
        total = now - x.t0
        overhead = max(total - x.upstream_wait, 0.0)
        m = self.metrics  # counted at once: the settlement below may wait a few ms to commit with others
        m.observe_request(x.route, model, status, total, overhead, x.t_first - x.t0 if x.started else None,
                          x.client_gone)
        usage = record.usage
        for kind, n in (("input", usage.in_total), ("output", usage.out_total), ("cache_read", usage.cache_read),
                        ("cache_write", usage.cache_write), ("reasoning", usage.reasoning)):
            if n:
                m.child(m.tokens, model, kind, record.source).inc(n)
        cost = overrun = None
        over_tokens = 0
        if x.held and x.model is not None:
            # under load the settlement may wait a few ms to commit with others'; a lone request's commits at once
            settled = await self.ledger.settle(x.request_id, x.prices or x.model.prices, record, status,
                                               round(total * 1000, 3), x.held_tokens, x.model.prices,
                                               busy=self.in_flight > 0)
            if settled is not None:
                cost, overrun, over_tokens = settled.charged, settled.overrun, settled.overrun_tokens
                if over_tokens and not settled.already:
                    m.child(m.overrun_tokens, x.model.provider.name, model).inc(over_tokens)
        self.log.write({
            "request_id": x.request_id,
            "route": x.route,
            "model": model,
            "provider": x.model.provider.name if x.model else None,
            "status": status,
            "stream": x.stream,
            "input_tokens": usage.in_total,
            "output_tokens": usage.out_total,
            "cache_read_tokens": usage.cache_read,
            "cache_write_tokens": usage.cache_write,
            "reasoning_tokens": usage.reasoning,
            "attempts": x.attempts + 1 if x.sent else 0,
            "usage_source": record.source,
            "cache": x.cache_state or None,
            "cost_nanousd": cost,
            "cut_at_limit": x.cut,
            "overrun_tokens": over_tokens,
            "overrun_nanousd": overrun,
            "duration_ms": round(total * 1000, 3),
            "ttfb_ms": round((x.t_first - x.t0) * 1000, 3) if x.started else None,
            "upstream_ms": round(x.upstream_wait * 1000, 3),
            "overhead_ms": round(overhead * 1000, 3),
            "client_disconnected": x.client_gone,
            "client_ip": client_ip,
            "error": x.error_code or None,
            "upstream_error": x.upstream_error_kind or None,
            "worker": self.pid,
        })


ANSWER_FIELDS = ("choices", "output", "data", "content", "candidates", "embeddings", "embedding")


def _answer_object(raw: bytes) -> Any:
    """A 200 body as JSON. Some upstreams answer 200 with nothing but an error: that is a failure (never
    charged, never cached), not an answer."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamBadStatus("the upstream answered 200 with a body that is not JSON") from None
    if isinstance(obj, dict) and obj.get("error") and not any(k in obj for k in ANSWER_FIELDS):
        raise UpstreamBadStatus(with_upstream_message("the upstream answered 200 with an error", raw))
    return obj


def on_channel(model: Model, channel: Channel) -> Model:
    """The model as served by one of its channels: the same public name, prices and limits."""
    if channel.provider is model.provider and channel.upstream_model == model.upstream_model:
        return model
    return replace(model, provider=channel.provider, upstream_model=channel.upstream_model)


def _retry_after(err: GatewayError) -> float | None:
    """The upstream's Retry-After (seconds) or retry-after-ms, when it sent one."""
    value = err.headers.get("retry-after-ms")
    try:
        if value is not None:
            return float(value) / 1000
        value = err.headers.get("retry-after")
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: not worth parsing for a rest of seconds
        return None


def _native_frame(ev: sse.SSEEvent, gemini: bool, array: bool, after_first: bool,
                  rename: tuple[bytes, bytes] | None) -> bytes:
    """A passed-through event: Anthropic keeps its event names (and gets the public model name); Gemini
    gets bare `data: ` lines, or its JSON-array framing when the client did not ask for SSE."""
    if not gemini:
        return sse.encode(renamed(ev.data, rename), ev.event)
    if array:
        return (b",\r\n" if after_first else b"[") + ev.data
    return sse.encode(ev.data)
