"""Image generation and edits (POST /v1/images/generations, /v1/images/edits), billed by the image: n x the
price of the size and quality held, each image returned charged, nothing when none came back.

The quality sent upstream is exactly the one billed: a SIZE/QUALITY price sends that quality; a plain SIZE price
bills the upstream's default quality, so no quality is sent (a client's quality is dropped); where the size has
SIZE/QUALITY prices, a quality without its own price is a 400 naming the priced ones (adapters/openai/images.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import orjson

from adapters.gemini import images as gemini_images
from adapters.internal import InvalidRequest
from adapters.openai import images as openai_images
from adapters.openai.images import ImageRequest, PriceChoice
from billing.keys import Presented
from billing.ledger import Ledger
from billing.metering import Usage, UsageRecord
from core.auth import admission_error, presented_key, refuse_unknown_key
from core.config import Model, Settings
from core.dialects import id_headers
from core.errors import (
    BadRequest,
    ContentBlocked,
    GatewayError,
    GatewayShuttingDown,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    UpstreamBadStatus,
    UpstreamClientError,
    UpstreamError,
)
from core.exchange import (
    ClientGone,
    Receive,
    Scope,
    Send,
    error_kind,
    model_rename,
    read_body,
    renamed,
    failure_body,
    upstream_refusal,
    upstream_time,
)
from core.metrics import Metrics
from core.requestlog import RequestLog
from core.upstream import UpstreamResponse, Upstreams

log = logging.getLogger("tokentoll.images")
ROUTES = {"/v1/images/generations": "generations", "/v1/images/edits": "edits"}
JSON = (b"content-type", b"application/json")
CLIENT_GONE_STATUS = 499


@dataclass(slots=True)
class ImageExchange:
    """One images request as it goes: what was asked, held, returned and charged."""

    request_id: str
    route: str
    t0: float
    status: int = 0
    started: bool = False
    t_first: float = 0.0
    upstream_wait: float = 0.0
    client_gone: bool = False
    model: Model | None = None
    key: Presented | None = None
    held: bool = False
    settled: bool = False
    requested: int = 0
    returned: int = 0
    price: int = 0
    price_key: str = ""
    cost: int | None = None
    error_code: str = ""
    upstream_error_kind: str = ""


class ImageRelay:
    def __init__(self, settings: Settings, upstreams: Upstreams, metrics: Metrics, log: RequestLog,
                 ledger: Ledger) -> None:
        self.settings = settings
        self.upstreams = upstreams
        self.metrics = metrics
        self.log = log
        self.ledger = ledger
        self.billing = settings.billing.enabled
        self.pid = os.getpid()

    async def __call__(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        path = scope["path"]
        x = ImageExchange(request_id, path if path in ROUTES else "/v1/images/{other}", perf_counter())
        try:
            try:
                await self._serve(x, scope, receive, send)
            except GatewayError as err:
                await self._fail(x, err, send)
            except ClientGone:
                x.client_gone = True
            except Exception:  # a bug: a 500 in OpenAI's shape; the trace (never the body) goes to the log
                log.exception("internal error in request %s", request_id)
                await self._fail(x, GatewayError("internal error in the gateway; quote the request id to the "
                                                 "operator"), send)
        except asyncio.CancelledError:  # the server is stopping
            if not x.started:
                await self._fail(x, GatewayShuttingDown("the gateway is shutting down; retry the request"), send)
            raise
        finally:
            if x.held and not x.settled:  # failed or interrupted before an image was counted: nothing owed
                await self._settle(x, 0, x.status if x.started else CLIENT_GONE_STATUS if x.client_gone else 500)
            self._finish(x, perf_counter())

    # -- the exchange ---------------------------------------------------------------------

    async def _serve(self, x: ImageExchange, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            raise MethodNotAllowed(f"{scope['method']} is not allowed here; use POST", headers={"allow": "POST"})
        endpoint = ROUTES.get(scope["path"])
        if endpoint is None:
            raise NotFound(f"{scope['path']} is not served here; the image endpoints are "
                                     f"/v1/images/generations and /v1/images/edits")
        if self.billing:  # the key is known good before the body (an upload, perhaps) is read or parsed
            x.key = presented_key(scope)
            await refuse_unknown_key(self.ledger, x.key)
        raw = await read_body(scope, receive, self.settings.server.max_body_bytes)
        ctype = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"content-type"), "")
        try:
            if endpoint == "generations":
                req = openai_images.parse_generation(raw)
            else:
                req = openai_images.parse_edit(raw, ctype)
            model = self._image_model(req.model)
            choice = openai_images.choose_price(model.image_prices, req.size, req.quality)
            gemini = model.provider.format == "gemini"
            images = _gemini_inputs(req) if gemini else []
        except InvalidRequest as exc:
            raise BadRequest(str(exc), param=exc.param) from None
        x.model, x.requested, x.price, x.price_key = model, req.n, choice.price, choice.key
        if x.key is not None:
            x.held = True  # before the await: a request cancelled while its hold commits still settles it
            admission = await self.ledger.admit_amount(x.request_id, x.key, model.name, req.n * choice.price,
                                                       estimate=0)
            if admission.error:
                raise admission_error(admission, model.name, "ask for fewer images (n)")
        if gemini:
            body = await self._from_gemini(x, model, req, choice, images)
        else:
            body = await self._from_openai(x, model, req, choice)
        if x.held:
            await self._settle(x, x.returned * x.price, 200)
        await self._respond(x, 200, body, [], send)

    def _image_model(self, name: str) -> Model:
        model = self.settings.models.get(name)
        if model is None:
            raise ModelNotFound(f"the model {name!r} does not exist; GET /v1/models lists the models served here",
                                param="model")
        if not model.image_prices:
            raise InvalidRequest(f"the model {name!r} does not generate images (it has no image prices); GET "
                                 f"/v1/pricing lists the models that do", "model")
        if model.provider.format == "anthropic":
            raise InvalidRequest(f"the model {name!r} is served by an Anthropic-format upstream, which has no image "
                                 f"generation", "model")
        return model

    async def _from_openai(self, x: ImageExchange, model: Model, req: ImageRequest, choice: PriceChoice) -> bytes:
        """Same format: the request goes on with the upstream's model name; its answer comes back with the public one."""
        if req.endpoint == "generations":
            body, ctype = openai_images.upstream_json(req, model.upstream_model, choice), "application/json"
        else:
            body, ctype = self._form(req, model, choice)
        resp = await upstream_time(x, self.upstreams.request(model.provider, "POST", f"/images/{req.endpoint}",
                                                           body, ctype))
        raw = await self._read(x, resp)
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamBadStatus("the upstream answered 200 with a body that is not JSON") from None
        x.returned = min(openai_images.count_images(obj), req.n)  # never more than was held
        return renamed(raw, model_rename(model.upstream_model, model.name))

    def _form(self, req: ImageRequest, model: Model, choice: PriceChoice) -> tuple[bytes, str]:
        while True:  # a fresh boundary; another one in the (astronomically rare) case it occurs in a file
            try:
                return openai_images.upstream_form(req, model.upstream_model, choice, "tt-" + secrets.token_hex(16))
            except ValueError:
                continue

    async def _from_gemini(self, x: ImageExchange, model: Model, req: ImageRequest, choice: PriceChoice,
                           images: list[tuple[str, bytes]]) -> bytes:
        """One generateContent per image (Gemini's image models give one candidate), all at once; the
        images that came back are returned and charged, even when some of the requests failed."""
        body = gemini_images.build_request(req.prompt, images, choice.size)
        path = gemini_images.path(model.upstream_model)
        t = perf_counter()
        try:
            results = await asyncio.gather(*(self._gemini_one(model, path, body) for _ in range(req.n)),
                                           return_exceptions=True)
        finally:
            x.upstream_wait += perf_counter() - t
        found: list[dict[str, Any]] = []
        mimes: list[str] = []
        failures: list[GatewayError] = []
        blocked = ""
        for result in results:
            if isinstance(result, GatewayError):
                failures.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                found += result.images
                mimes += result.mime_types
                blocked = blocked or result.blocked
        found, mimes = found[:req.n], mimes[:req.n]
        x.returned = len(found)
        for err in failures[1:] if not found else failures:  # the first failure is counted by _fail
            self._count_upstream_error(x, error_kind(err))
        if not found:
            if failures:
                raise failures[0]
            if blocked:
                raise ContentBlocked(f"the upstream's safety filter returned no image ({blocked}); change the prompt",
                              param="prompt")
            raise UpstreamBadStatus("the upstream answered without an image")
        return openai_images.images_response(found, int(time.time()), gemini_images.output_format(mimes))

    async def _gemini_one(self, model: Model, path: str, body: bytes) -> gemini_images.GeminiImages:
        resp = await self.upstreams.request(model.provider, "POST", path, body, "application/json")
        try:
            raw = await resp.read()
            if resp.status != 200:
                raise upstream_refusal(resp.status, resp.headers, raw)
        finally:
            resp.close()
        try:
            return gemini_images.parse_response(orjson.loads(raw))
        except orjson.JSONDecodeError:
            raise UpstreamBadStatus("the upstream answered 200 with a body that is not JSON") from None

    async def _read(self, x: ImageExchange, resp: UpstreamResponse) -> bytes:
        try:
            raw = await upstream_time(x, resp.read())
        finally:
            resp.close()
        if resp.status != 200:
            raise upstream_refusal(resp.status, resp.headers, raw)
        return raw

    # -- money, answers, the end of a request ------------------------------------------------

    async def _settle(self, x: ImageExchange, cost: int, status: int) -> None:
        """Charge `cost` (the images returned; 0 releases the whole hold) and write the usage row."""
        record = UsageRecord(Usage(), "upstream" if cost else "none")
        settled = await self.ledger.settle_amount(x.request_id, cost, record, status,
                                                  round((perf_counter() - x.t0) * 1000, 3),
                                                  units=x.returned if cost else 0)
        x.settled = True
        x.cost = settled.charged if settled is not None else None

    async def _respond(self, x: ImageExchange, status: int, body: bytes, headers: list[tuple[bytes, bytes]],
                       send: Send) -> None:
        x.status = status
        x.started = True
        x.t_first = perf_counter()
        await send({"type": "http.response.start", "status": status,
                    "headers": [JSON, (b"content-length", b"%d" % len(body)), *id_headers("openai", x.request_id),
                                *headers]})
        await send({"type": "http.response.body", "body": body})

    async def _fail(self, x: ImageExchange, err: GatewayError, send: Send) -> None:
        if isinstance(err, (UpstreamClientError, UpstreamError)):
            self._count_upstream_error(x, error_kind(err))
        x.error_code = err.code
        if x.started:
            return
        body = failure_body("openai", err, x.request_id)
        await self._respond(x, err.status, body, [(k.encode(), v.encode()) for k, v in err.headers.items()], send)

    def _count_upstream_error(self, x: ImageExchange, kind: str) -> None:
        x.upstream_error_kind = kind
        provider = x.model.provider.name if x.model else "-"
        self.metrics.upstream_error(provider, kind)

    def _finish(self, x: ImageExchange, now: float) -> None:
        status = x.status if x.started else CLIENT_GONE_STATUS if x.client_gone else 500
        model = x.model.name if x.model else "-"
        total = now - x.t0
        overhead = max(total - x.upstream_wait, 0.0)
        self.metrics.observe_request(x.route, model, status, total, overhead,
                                     x.t_first - x.t0 if x.started else None, x.client_gone)
        self.log.write({
            "request_id": x.request_id,
            "route": x.route,
            "model": model,
            "provider": x.model.provider.name if x.model else None,
            "status": status,
            "images_requested": x.requested,
            "images_returned": x.returned,
            "price_key": x.price_key or None,
            "usage_source": "upstream" if x.returned else "none",
            "cost_nanousd": x.cost,
            "duration_ms": round(total * 1000, 3),
            "ttfb_ms": round((x.t_first - x.t0) * 1000, 3) if x.started else None,
            "upstream_ms": round(x.upstream_wait * 1000, 3),
            "overhead_ms": round(overhead * 1000, 3),
            "client_disconnected": x.client_gone,
            "error": x.error_code or None,
            "upstream_error": x.upstream_error_kind or None,
            "worker": self.pid,
        })


def _gemini_inputs(req: ImageRequest) -> list[tuple[str, bytes]]:
    """What a Gemini model can take of an OpenAI images request: b64_json answers, and images to edit
    without a mask (Gemini edits from the prompt alone)."""
    if req.response_format == "url":
        raise InvalidRequest(f"the model {req.model!r} returns images as b64_json only (its Gemini upstream "
                             f"gives no URLs); leave out response_format or send \"b64_json\"", "response_format")
    if req.files("mask"):
        raise InvalidRequest(f"the model {req.model!r} edits from the prompt and takes no mask (its upstream is "
                             f"Gemini); describe the change in the prompt instead", "mask")
    return [(gemini_images.input_mime(p.content_type, p.data), p.data)
            for p in req.files(*openai_images.IMAGE_FIELDS)]
