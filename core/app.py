"""The ASGI application: gives every request its id, sends the relay routes straight to the relay
(plain ASGI, the hot path) and everything else through a small Starlette app (models, health, metrics, 404s)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
import time
from time import perf_counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from adapters import openai
from adapters.anthropic import client as anthropic_client
from adapters.gemini import client as gemini_client
from billing.background import repeat
from billing.ledger import Ledger
from billing.metering import encoding
from billing.pricing import units_to_usd
from core.admin import ADMIN_TOKEN_ENV, AdminAPI
from core.operations import Operations
from billing.safetynet import SafetyNet, owner_id
from billing.recharge.orders import RechargeDesk
from billing.recharge.service import RechargeService
from billing.store import Store, tx_deposit_counts, tx_key_scope, tx_oldest_open_hold
from core import demo
from core.clientip import from_scope, public_base_url
from core.console import Console
from core.health import FLUSH_SECONDS as HEALTH_FLUSH_SECONDS
from core.auth import admission_error, presented_key
from core.balance_api import DASHBOARD_PATHS, BalanceAPI
from core.config import Model, Settings
from core.cors import Cors
from core.dialects import Dialect, relay_call, repeats_api_version, wants_anthropic, wants_gemini
from core.dialects import error_response
from core.edge import BodyDeadline, conflicting_framing, method_label, wrong_listener
from core.errors import BodyTimeout, GatewayError
from core.images import ImageRelay
from core.media import MediaFetcher
from core.metrics import Metrics
from core import openapi
from core.relay import Receive, Relay, Scope, Send
from core.recharge_api import RechargeAPI
from core.requestlog import RequestLog
from core.response_cache import ResponseCache
from core.tasks import TaskRelay
from core.upstream import Upstreams

log = logging.getLogger("tokentoll")

KNOWN_ROUTES = ("/v1/models", "/v1beta/models", "/v1/pricing", "/metrics", "/healthz", "/readyz", "/admin/",
                "/v1/recharge/", "/console", "/openapi.json", "/v1/balance", "/v1/dashboard/", "/dashboard/")
KNOWN_PATHS = frozenset({"/v1/models", "/v1beta/models", "/v1/pricing", "/metrics", "/healthz", "/readyz",
                         "/openapi.json", "/v1/balance"})
CLAUDE_TAILS = ("/messages/count_tokens", "/messages")  # a Claude-format call, whatever the prefix before it
OPENAI_TAILS = ("/chat/completions", "/completions", "/embeddings", "/responses")  # an OpenAI call, likewise


def new_request_id() -> str:
    """req_ + 13 hex digits of the time in microseconds + 12 random: unique, and in time order, so the
    database's indexes on request ids grow at their end."""
    return f"req_{time.time_ns() // 1000:013x}{secrets.token_hex(6)}"


class Gateway:
    """The whole HTTP surface of one worker."""

    def __init__(self, settings: Settings, admin_address: tuple[str, int] | None = None) -> None:
        self.settings = settings
        self.admin_address = admin_address  # the bound server.admin_listen socket: /admin is served there alone
        self.cors = Cors(settings.server.cors_origins) if settings.server.cors_origins else None
        self.metrics = Metrics(settings.models)
        self.log = RequestLog(settings.server.request_log)
        self.upstreams = Upstreams(settings, self.metrics.health, builtin=demo)
        self.store = Store(settings.billing.database, settings.billing.synchronous)
        self.ledger = Ledger(self.store, settings.billing.default_rpm, settings.billing.default_tpm, owner_id(),
                             on_failure=self.metrics.ledger_write_failures.inc,
                             on_settled=self.metrics.count_settlement)
        srv = settings.server
        self.media = MediaFetcher(srv.media_fetch_bytes, srv.media_fetch_private, srv.media_fetch_count,
                                  srv.media_fetch_total_bytes)
        self.response_cache = ResponseCache(settings.cache, self.store)
        self.relay = Relay(settings, self.upstreams, self.metrics, self.log, self.ledger, self.media,
                           self.response_cache)
        self.images = ImageRelay(settings, self.upstreams, self.metrics, self.log, self.ledger)
        self.tasks = TaskRelay(settings, self.upstreams, self.metrics, self.log, self.ledger, self.store)
        self.operations = Operations(self.store, self.ledger, settings.chains, frozenset(settings.models))
        self.recharge_desk = RechargeDesk(settings.chains, settings.recharge, self.store)
        self.recharge = RechargeService(settings.chains, settings.recharge, self.ledger, self.store, self.ledger.owner,
                                        lambda chain: self.metrics.recharge_rpc_errors.labels(chain).inc())
        self.admin = AdminAPI(self.operations, self.store, self.metrics, settings.server.trusted_proxies)
        self.console = Console(settings, self.operations, self.store, self.recharge_desk)
        self.ready = False
        self._pricing = orjson.dumps({"object": "list", "currency": "USD", "unit": "per 1M tokens", "data": [
            {"model": m.name, "owned_by": m.owned_by, "max_output_tokens": m.max_output_tokens,
             **{kind: units_to_usd(getattr(m.prices, kind)) for kind in ("input", "output", "cache_read", "cache_write")},
             "image": {size: units_to_usd(p) for size, p in m.image_prices.items()} or None,
             "task": units_to_usd(m.task_price) if m.task_price is not None else None,
             "second": units_to_usd(m.second_price) if m.second_price is not None else None}
            for m in settings.models.values()]})
        self.router = Starlette(
            routes=[
                Route("/", self.root, methods=["GET"]),
                Route("/v1/models", self.list_models, methods=["GET"]),
                Route("/v1/models/{model_id:path}", self.get_model, methods=["GET"]),
                Route("/v1beta/models", self.list_gemini_models, methods=["GET"]),
                Route("/v1beta/models/{model_id:path}", self.get_gemini_model, methods=["GET"]),
                Route("/v1/pricing", self.pricing, methods=["GET"]),
                Route("/metrics", self.render_metrics, methods=["GET"]),
                Route("/healthz", self.healthz, methods=["GET"]),
                Route("/readyz", self.readyz, methods=["GET"]),
                Route("/openapi.json", self.openapi_document, methods=["GET"]),
                *self.admin.routes(),
                *RechargeAPI(self.recharge_desk, self.store).routes(),
                *BalanceAPI(self.store, settings.billing.enabled).routes(),
                *self.console.routes(),
            ],
            exception_handlers={HTTPException: self.http_error, BodyTimeout: self.body_timeout,
                                Exception: self.internal_error},
            lifespan=self.lifespan,
        )

    @asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        await self.store.start()
        await self.console.start()
        admin_token = await self.admin.start()
        if admin_token:
            print(f"tokentoll: generated the admin token for /admin (shown once; or set ${ADMIN_TOKEN_ENV}):\n\n"
                  f"    {admin_token}\n", file=sys.stderr, flush=True)
        demo_key = await self.operations.bootstrap_demo(self.settings.billing.demo_balance)
        if demo_key:
            print(f"tokentoll: created the demo account with ${units_to_usd(self.settings.billing.demo_balance)} "
                  f"and its first API key (shown once, store it now):\n\n    {demo_key}\n", file=sys.stderr, flush=True)
        if not self.settings.billing.enabled:
            log.warning("billing is disabled: relay routes take no key and charge nothing (billing.enabled = false)")
        for p in self.settings.providers.values():
            if p.format == "openai" and not p.builtin and not p.responses_api:
                log.info("providers.%s: Responses API calls are translated to its Chat Completions (responses_api: "
                         "false, or \"auto\" for this host); set responses_api = true if it serves /v1/responses",
                         p.name)
        await self.upstreams.start()
        await self.media.start()
        encoding()  # load the tokenizer now, not on the first request
        b = self.settings.billing
        safety_net = SafetyNet(self.ledger, self.store, b.hold_ttl, b.sweep_interval)
        await safety_net.heartbeat()  # before any hold of ours exists
        safety_net.start()
        await self.tasks.start()
        self.recharge.start()
        health = self.metrics.health
        health_flush = asyncio.create_task(repeat(lambda: health.flush(self.store, self.ledger.owner),
                                                  HEALTH_FLUSH_SECONDS, "the upstream health flush"))
        self.ready = True
        try:
            yield
        finally:
            self.ready = False
            health_flush.cancel()
            try:
                await health.flush(self.store, self.ledger.owner)
            except Exception:  # noqa: BLE001 - a lost minute of tallies, never a failed shutdown
                log.exception("the last upstream health flush failed")
            await self.tasks.stop()
            await self.recharge.stop()
            await safety_net.stop()
            await self.upstreams.close()
            await self.media.close()
            await self.store.close()
            self.log.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.router(scope, receive, send)
            return
        request_id = new_request_id()
        deadline = BodyDeadline(receive, self.settings.server.body_timeout)
        receive, send = deadline, deadline.answering(send)  # every answer goes after the body is read
        framing = conflicting_framing(scope["headers"])
        if framing or wrong_listener(scope["path"], scope.get("server"), self.admin_address):
            await self.refuse_at_edge(scope, send, request_id, framing)
            return
        if self.cors is not None:  # server.cors_origins: a web page's call to the API
            allow = self.cors.allowed_origin(scope)
            if allow is not None:
                preflight = self.cors.preflight(scope, allow)
                if preflight is not None:
                    await self.answer_preflight(scope, send, request_id, preflight)
                    return
                send = self.cors.exposing(send, allow)
        call = relay_call(scope["method"], scope["path"], scope.get("query_string", b""))
        if call is not None:
            await self.relay(call, scope, receive, send, request_id)
            return
        path = scope["path"]
        if path.startswith("/v1/images/"):
            await self.images(scope, receive, send, request_id)
            return
        if path == "/v1/videos" or path.startswith("/v1/videos/"):
            await self.tasks(scope, receive, send, request_id)
            return
        scope["tt_request_id"] = request_id
        rid = request_id.encode()
        status = 500

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-tt-request-id", rid), (b"x-request-id", rid)]
            await send(message)

        started = perf_counter()
        try:
            await self.router(scope, receive, send_with_id)
        finally:
            route = route_label(scope["path"])
            self.metrics.child(self.metrics.requests, route, "-", str(status)).inc()
            if route != "/metrics":  # scrapes every few seconds would drown the log
                self.log.write({"request_id": request_id, "route": route, "method": method_label(scope["method"]),
                                "status": status, "duration_ms": round((perf_counter() - started) * 1000, 3),
                                "client_ip": from_scope(scope, self.settings.server.trusted_proxies)})

    async def refuse_at_edge(self, scope: Scope, send: Send, request_id: str, framing: bool) -> None:
        """Conflicting framing: a 400, and the connection closed (RFC 9112 section 6.1). /admin on the public
        listener, or anything but /admin on the admin listener: a 404, as for a route that does not exist."""
        if framing:
            status, message, code = 400, ("the request has both Content-Length and Transfer-Encoding: send one "
                                          "of them"), "conflicting_framing"
        else:
            status, message, code = 404, f"unknown URL {scope['path'][:200]}", "unknown_url"
        rid = request_id.encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"connection", b"close"), (b"x-tt-request-id", rid),
            (b"x-request-id", rid)]})
        await send({"type": "http.response.body", "body": openai.error_body(status, message, code, None, request_id)})
        route = route_label(scope["path"])
        self.metrics.child(self.metrics.requests, route, "-", str(status)).inc()
        self.log.write({"request_id": request_id, "route": route, "method": method_label(scope["method"]),
                        "status": status, "error": code,
                        "client_ip": from_scope(scope, self.settings.server.trusted_proxies)})

    async def answer_preflight(self, scope: Scope, send: Send, request_id: str,
                               headers: list[tuple[bytes, bytes]]) -> None:
        """A browser asks whether its page may call an API route: yes (core/cors.py), before any key is needed."""
        rid = request_id.encode()
        await send({"type": "http.response.start", "status": 204,
                    "headers": [*headers, (b"x-tt-request-id", rid), (b"x-request-id", rid)]})
        await send({"type": "http.response.body", "body": b""})
        self.metrics.child(self.metrics.requests, "preflight", "-", "204").inc()
        self.log.write({"request_id": request_id, "route": "preflight", "method": "OPTIONS", "status": 204,
                        "client_ip": from_scope(scope, self.settings.server.trusted_proxies)})

    # -- routes ---------------------------------------------------------------------------

    async def key_models(self, request: Request, dialect: Dialect) -> list[Model] | Response:
        """The models the caller's key may use, in the configured order (every model when billing is off), or the
        refusal in the caller's dialect: 401 without a valid key. The lists answer no one without a key."""
        models = list(self.settings.models.values())
        if not self.settings.billing.enabled:
            return models
        try:
            key = presented_key(request.scope, query_allowed=dialect == "gemini")
            admission, allowed = await self.store.run(tx_key_scope, key.hash, time.time())
            if admission.error:
                raise admission_error(admission, "-")
        except GatewayError as err:
            return self.dialect_error(request, dialect, err.status, err.message, err.code, err.param, err.headers)
        if allowed is None:
            return models
        return [m for m in models if m.name in allowed]

    async def key_model(self, request: Request, dialect: Dialect, model_id: str, listed_at: str) -> Model | Response:
        """One model of the caller's key; a model it may not use is answered as one that does not exist."""
        models = await self.key_models(request, dialect)
        if isinstance(models, Response):
            return models
        found = next((m for m in models if m.name == model_id), None)
        if found is None:
            return self.dialect_error(request, dialect, 404, f"the model {model_id!r} does not exist or this API key "
                                      f"may not use it; GET {listed_at} lists the models of this key",
                                      "model_not_found", "model" if dialect == "openai" else None)
        return found

    async def list_models(self, request: Request) -> Response:
        """The OpenAI list; the Anthropic one for anthropic-version callers; Gemini's for google-genai (v1): the
        models of the caller's key."""
        if wants_gemini(request.scope["headers"], request.scope.get("query_string", b"")):
            return await self.list_gemini_models(request)
        dialect: Dialect = "anthropic" if wants_anthropic(request.scope["headers"]) else "openai"
        models = await self.key_models(request, dialect)
        if isinstance(models, Response):
            return models
        if dialect == "anthropic":
            return Response(anthropic_client.models_list([anthropic_client.model_object(m.name, m.name, m.created)
                                                          for m in models]), media_type="application/json")
        return Response(openai.models_list([openai.model_object(m.name, m.created, m.owned_by) for m in models]),
                        media_type="application/json")

    async def list_gemini_models(self, request: Request) -> Response:
        models = await self.key_models(request, "gemini")
        if isinstance(models, Response):
            return models
        return Response(gemini_client.models_list([_gemini_model(m) for m in models]), media_type="application/json")

    async def get_model(self, request: Request) -> Response:
        headers = request.scope["headers"]
        if wants_gemini(headers, request.scope.get("query_string", b"")):
            return await self.get_gemini_model(request)
        dialect: Dialect = "anthropic" if wants_anthropic(headers) else "openai"
        model = await self.key_model(request, dialect, request.path_params["model_id"], "/v1/models")
        if isinstance(model, Response):
            return model
        if dialect == "anthropic":
            return JSONResponse(anthropic_client.model_object(model.name, model.name, model.created))
        return JSONResponse(openai.model_object(model.name, model.created, model.owned_by))

    async def get_gemini_model(self, request: Request) -> Response:
        if repeats_api_version(request.url.path):  # base_url .../v1beta/models: the URL is wrong, whatever the key
            return self.not_found(request)
        model = await self.key_model(request, "gemini", request.path_params["model_id"].removeprefix("models/"),
                                     "/v1beta/models")
        if isinstance(model, Response):
            return model
        return JSONResponse(_gemini_model(model))

    async def root(self, request: Request) -> Response:
        """A browser is sent to the console; an API client gets the 404 that names the base URL to use."""
        if self.settings.console.enabled and "text/html" in request.headers.get("accept", ""):
            return RedirectResponse("/console/", status_code=302)
        return self.not_found(request)

    async def pricing(self, request: Request) -> Response:
        """Public: every model's prices (USD per 1M tokens as exact decimal strings)."""
        return Response(self._pricing, media_type="application/json")

    async def render_metrics(self, request: Request) -> Response:
        try:  # read at scrape time, so the gauge is as fresh as the scrape
            self.metrics.set_oldest_open_hold(await self.store.run(tx_oldest_open_hold, time.time()))
        except Exception:  # noqa: BLE001 - the other metrics still matter; the gauge keeps its last value
            log.warning("could not read the oldest open hold for /metrics", exc_info=True)
        if self.settings.chains:
            try:
                self.metrics.set_recharge(self.recharge.lags(), await self.store.run(tx_deposit_counts))
            except Exception:  # noqa: BLE001 - as above
                log.warning("could not read the recharge figures for /metrics", exc_info=True)
        # rendered off the event loop: a large scrape must not hold up the requests in flight
        return Response(await asyncio.to_thread(self.metrics.render), media_type=self.metrics.content_type)

    async def openapi_document(self, request: Request) -> Response:
        """Public: the OpenAPI 3.1 description of this API (core/openapi.py), built at start-up."""
        return Response(openapi.DOCUMENT, media_type="application/json")

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        if not self.ready:
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse({"status": "ready"})

    # -- errors ---------------------------------------------------------------------------

    def error(self, request: Request, status: int, message: str, code: str | None, param: str | None = None,
              headers: dict[str, str] | None = None) -> Response:
        return self.dialect_error(request, "openai", status, message, code, param, headers)

    def dialect_error(self, request: Request, dialect: Dialect, status: int, message: str, code: str | None,
                      param: str | None, headers: dict[str, str] | None = None) -> Response:
        """An error in the caller's dialect (Anthropic's with its request-id header)."""
        return error_response(dialect, status, message, code, param, request.scope.get("tt_request_id", ""), headers)

    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        path = request.url.path  # a POST under /v1beta/models/{id} that repeats the API version: a wrong base URL
        if exc.status_code == 404 or (exc.status_code == 405 and (not path.startswith(KNOWN_ROUTES)
                                                                  or repeats_api_version(path))):
            return self.not_found(request)
        if exc.status_code == 405:
            allow = (exc.headers or {}).get("Allow", "GET")
            return self.error(request, 405, f"{request.method} is not allowed on {request.url.path}; use {allow}",
                              "method_not_allowed", headers={"Allow": allow})
        return self.error(request, exc.status_code, exc.detail, None)

    def not_found(self, request: Request) -> Response:
        """An unknown URL, answered in the dialect of the SDK that asked, with the base URL it should use."""
        headers = request.scope["headers"]
        root = public_base_url(request.scope, self.settings.server.trusted_proxies, self.settings.console.base_url)
        dialect: Dialect = ("anthropic" if wants_anthropic(headers) else
                            "gemini" if wants_gemini(headers, request.scope.get("query_string", b"")) else "openai")
        return self.dialect_error(request, dialect, 404, not_found_hint(request, dialect, root), "unknown_url", None)

    async def body_timeout(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BodyTimeout)
        return self.error(request, 408, exc.message, exc.code, headers={"connection": "close"})

    async def internal_error(self, request: Request, exc: Exception) -> Response:
        return self.error(request, 500, "internal error in the gateway; the request id identifies it in the log",
                          "internal_error")


def _gemini_model(m: Any) -> dict[str, Any]:
    methods = gemini_client.EMBED_METHODS if m.max_output_tokens <= 1 else gemini_client.CHAT_METHODS
    return gemini_client.model_object(m.name, m.name, m.max_output_tokens, list(methods))


def route_label(path: str) -> str:
    """A bounded set of route names for metrics: never the raw path of an unknown URL."""
    if path in KNOWN_PATHS:
        return path
    if path.startswith("/admin/"):
        return "/admin"
    if path == "/console" or path.startswith("/console/"):
        return "/console"
    if path.startswith("/v1/recharge/"):
        return "/v1/recharge/orders" if path.startswith("/v1/recharge/orders") else "/v1/recharge/deposits"
    if path in DASHBOARD_PATHS:
        return "/v1/dashboard/billing"
    if path.startswith("/v1beta/models/"):
        return "/v1beta/models/{id}"
    return "/v1/models/{id}" if path.startswith("/v1/models/") else "other"


def not_found_hint(request: Request, dialect: str, root: str) -> str:
    """Most 404s are a base URL one segment off: say how to fix it, for the SDK and for curl (`root`: the gateway's
    public URL). The endpoint at the path's end names the API; the caller's headers decide only for model URLs."""
    path, method = request.url.path, request.method
    unknown = f"unknown URL {method} {path}"
    claude_tail = next((tail for tail in CLAUDE_TAILS if path.endswith(tail)), None)
    if claude_tail is not None:  # Anthropic's Messages API one segment off, from the SDK or from curl
        return claude_hint(unknown, root, f"POST {root}/v1{claude_tail}")
    openai_tail = next((tail for tail in OPENAI_TAILS if path.endswith(tail)), None)
    if openai_tail is not None:
        return openai_hint(unknown, path.removesuffix(openai_tail), root, f"POST {root}/v1{openai_tail}")
    head, models, rest = path.rpartition("/models")
    if models and (not rest or rest.startswith("/")):  # a list, a model or a Gemini call, under a wrong prefix
        gemini_call = method == "POST" and ":" in rest  # models/{model}:generateContent
        if gemini_call or dialect == "gemini" or "v1beta" in head:
            return gemini_hint(unknown, root, f"{'POST' if gemini_call else 'GET'} {root}/v1beta/models{rest}")
        if dialect == "anthropic":
            return claude_hint(unknown, root, f"GET {root}/v1/models{rest}")
        return openai_hint(unknown, head, root, f"GET {root}/v1/models{rest}")
    if dialect == "anthropic":
        return claude_hint(unknown, root, None)
    if dialect == "gemini":
        return gemini_hint(unknown, root, None)
    if path.startswith("/v1/v1/"):
        return openai_hint(unknown, "/v1/v1", root, None)
    return (f"{unknown}. TokenToll serves the OpenAI API under /v1 (for example POST "
            f"{root}/v1/chat/completions), Anthropic's at {root}/v1/messages and Gemini's at "
            f"{root}/v1beta/models/{{model}}:generateContent.")


def openai_hint(unknown: str, prefix: str, root: str, curl: str | None) -> str:
    """The OpenAI SDK's base URL is <root>/v1; `prefix` is the path the caller's base URL had instead."""
    wrong = ("the base URL lacks /v1" if not prefix else "the base URL ends in /v1 twice" if prefix == "/v1/v1"
             else f"the base URL's path is {prefix}, not /v1")
    return (f"{unknown}: {wrong}. Set base_url to {root}/v1 (for example OpenAI(base_url=\"{root}/v1\")), the SDK "
            f"adds the rest" + (f"; with curl, {curl}." if curl else "."))


def claude_hint(unknown: str, root: str, curl: str | None) -> str:
    return (f"{unknown}. The Anthropic SDK adds /v1 itself: set base_url to {root} (Anthropic(base_url=\"{root}\")), "
            f"with no path" + (f"; with curl, {curl}." if curl else "."))


def gemini_hint(unknown: str, root: str, curl: str | None) -> str:
    return (f"{unknown}. google-genai adds the API version itself: set base_url to {root} "
            f"(http_options={{\"base_url\": \"{root}\"}}), with no path" + (f"; with curl, {curl}." if curl else "."))
