"""Async video tasks in the shape of OpenAI's /v1/videos (create, list, retrieve, content, delete, cancel),
relayed to OpenAI-format upstreams: held at submission, settled on completion, released otherwise (billing/tasks.py).

Cancelling (POST /v1/videos/{id}/cancel, or DELETE of an open task) first asks the upstream how the task stands:
one the upstream has completed is settled as completed and charged (a cancel of it is a 400
`video_already_completed`; a DELETE deletes it, charged, as any ended task); only a task the upstream still
reports open is cancelled and its hold released. An upstream that cannot be asked refuses the cancel (502) and
nothing is released: the work may be done and billed to the operator. A submission interrupted while its task
was being recorded looks the task up by id before releasing: a recorded task keeps its hold for its lifecycle."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Awaitable, TypeVar
from urllib.parse import quote

import orjson

from adapters.internal import InvalidRequest
from adapters.openai import videos
from billing import store
from billing.keys import Presented
from billing.ledger import Ledger
from billing.safetynet import owner_id
from billing.tasks import OPEN, USAGE_STATUS, NewTask, TaskBook, TaskPoller, hold_amount, task_charge
from core.auth import NO_RETRY, admission_error, presented_key, refuse_unknown_key
from core.config import Model, Provider, Settings
from core.dialects import id_headers
from core.errors import (
    BadRequest,
    GatewayError,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    TasksNeedBilling,
    UpstreamBadStatus,
    UpstreamClientError,
    UpstreamError,
    VideoNotReady,
)
from core.edge import method_label
from core.exchange import ClientGone, error_kind, failure_body, read_body, upstream_refusal
from core.metrics import Metrics
from core.requestlog import RequestLog
from core.upstream import UpstreamResponse, Upstreams

T = TypeVar("T")
log = logging.getLogger("tokentoll.tasks")
JSON = b"application/json"
ORPHAN_MIN_AGE = 300.0  # a task hold with no task is released once this old (and past every upstream timeout)
ROUTE_LABELS = {"create": "/v1/videos", "list": "/v1/videos", "retrieve": "/v1/videos/{id}",
                "delete": "/v1/videos/{id}", "content": "/v1/videos/{id}/content", "cancel": "/v1/videos/{id}/cancel"}


@dataclass(slots=True)
class Call:
    """One request to a video route, for its answer, its log line and its metrics."""

    request_id: str
    method: str
    t0: float
    route: str = "/v1/videos"
    model: str = "-"
    provider: str | None = None
    status: int = 0
    started: bool = False
    error_code: str = ""
    upstream_error: str = ""
    cost: int | None = None  # what ending a task in this request charged
    held: int | None = None  # what a submission held
    task_id: str | None = None
    task_status: str = ""  # the state this request ended a task in
    upstream_wait: float = 0.0


class TaskRelay:
    def __init__(self, settings: Settings, upstreams: Upstreams, metrics: Metrics, log: RequestLog, ledger: Ledger,
                 store: store.Store) -> None:
        self.settings = settings
        self.upstreams = upstreams
        self.metrics = metrics
        self.log = log
        self.ledger = ledger
        self.db = store
        self.billing = settings.billing.enabled
        self.pid = os.getpid()
        self.book = TaskBook(ledger, store, self._prices)
        longest = max((p.timeouts.total for p in settings.providers.values()), default=0.0)
        self.poller = TaskPoller(self.book, ledger.owner or owner_id(), settings.tasks.poll_interval,
                                 max(ORPHAN_MIN_AGE, longest + 60), self._advance_for_poller,
                                 self._expired_by_poller)

    def _prices(self, model: str) -> tuple[int | None, int | None] | None:
        m = self.settings.models.get(model)
        return (m.task_price, m.second_price) if m is not None else None

    async def start(self) -> None:
        if self.billing:
            self.poller.start()

    async def stop(self) -> None:
        await self.poller.stop()

    # -- the HTTP edge ------------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any, request_id: str) -> None:
        c = Call(request_id, method_label(scope["method"]), perf_counter())
        try:
            try:
                action, vid = videos.route(scope["method"], scope["path"])
                if action is None:
                    if vid == "unknown":
                        raise NotFound(f"unknown URL {scope['method']} {scope['path']}: this gateway serves "
                                            "POST/GET /v1/videos, GET/DELETE /v1/videos/{id}, GET /v1/videos/{id}/"
                                            "content and POST /v1/videos/{id}/cancel", code="unknown_url")
                    raise MethodNotAllowed(f"{scope['method']} is not allowed on {scope['path']}; use {vid}",
                                           headers={"allow": vid})
                c.route = ROUTE_LABELS[action]
                if not self.billing:
                    raise TasksNeedBilling("video tasks need billing on (each task has an owning account); this "
                                           "gateway runs with billing.enabled = false", headers=NO_RETRY)
                key = presented_key(scope)
                if action == "create":
                    await self._create(c, scope, receive, send, key)
                    return
                account, models = await self._scope(key)
                if action == "list":
                    await self._list(c, scope, send, account, models)
                    return
                c.task_id = vid
                row = await self.book.get(vid, account)
                if row is None or (models is not None and row["model"] not in models):  # the same 404 for both
                    raise NotFound(f"no video found with id {vid!r}", param="video_id")
                c.model = row["model"]
                found = self.settings.models.get(row["model"])
                c.provider = found.provider.name if found is not None else None
                handler = {"retrieve": self._retrieve, "content": self._content, "delete": self._delete,
                           "cancel": self._cancel}[action]
                await handler(c, scope, send, row)
            except GatewayError as err:
                await self._fail(c, err, send)
            except ClientGone:
                c.status = 499
            except Exception:  # a bug: answered as such; the trace (never a body) goes to the log
                log.exception("internal error in request %s", request_id)
                await self._fail(c, GatewayError("internal error in the gateway; quote the request id to the "
                                                 "operator"), send)
        finally:
            self._finish(c)

    async def _scope(self, key: Presented) -> tuple[int, list[str] | None]:
        """The key's account, and the models whose tasks it may see and act on (None: all). A key restricted to
        some models sees only the tasks of those models, whichever key made them: another task is a 404, exactly
        as one that does not exist, and the list leaves it out."""
        admission, models = await self.db.run(store.tx_key_scope, key.hash, time.time())
        if admission.error:
            raise admission_error(admission, "-")
        return admission.account_id, models

    # -- the actions --------------------------------------------------------------------------------

    async def _create(self, c: Call, scope: dict[str, Any], receive: Any, send: Any, key: Presented) -> None:
        await refuse_unknown_key(self.ledger, key)  # before the body (an upload, perhaps) is read or parsed
        body = await read_body(scope, receive, self.settings.server.max_body_bytes)
        content_type = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"content-type"), "")
        try:
            req = videos.parse_create(body, content_type)
        except InvalidRequest as exc:
            raise BadRequest(str(exc), param=exc.param) from None
        model = self._video_model(req.model)
        c.model, c.provider = model.name, model.provider.name
        amount = hold_amount(model.task_price, model.second_price, req.seconds)
        up_body, up_type = videos.upstream_request(req, model.upstream_model)
        admission = await self.ledger.admit_amount(c.request_id, key, model.name, amount, kind="task")
        if admission.error:
            raise admission_error(admission, model.name, "ask for fewer seconds")
        c.held = amount
        vid = videos.task_id(c.request_id)
        recorded = False
        try:
            obj = await self._upstream_json(c, model.provider, "POST", "/videos", up_body, up_type)
            upstream_id = obj.get("id")
            if not isinstance(upstream_id, str) or not upstream_id:
                raise UpstreamBadStatus("the upstream answered the video request without a video id")
            status = videos.task_status(obj)
            shown = videos.client_object(obj, vid, model.name)
            now = time.time()
            recorded = await self.book.record(NewTask(
                vid, upstream_id, admission.account_id, admission.key_id, model.name, c.request_id,
                status if status in OPEN else "queued", amount, orjson.dumps(shown).decode(), now,
                now + self.settings.tasks.ttl))
            if not recorded:  # the hold was closed under us (a process stalled for minutes): nothing is held
                log.error("task %s not recorded: its hold was closed before the upstream answered", vid)
                raise UpstreamBadStatus("the video request took too long to be recorded; it was not charged, "
                                        "retry it")
        except BaseException as exc:  # never a task: the hold is released at once
            if not recorded and isinstance(exc, asyncio.CancelledError):
                # cancelled (a shutdown) while the task row may have been committing: the database thread runs
                # its work in order, so this read sees that commit; a recorded task keeps its hold
                recorded = await self.book.get(vid, None) is not None
            if not recorded:
                status = exc.status if isinstance(exc, GatewayError) else 499 if isinstance(
                    exc, asyncio.CancelledError) else 500
                await self.book.release(c.request_id, status, round((perf_counter() - c.t0) * 1000, 3))
            raise
        c.task_id = vid
        row = await self.book.get(vid, None)
        assert row is not None
        if status not in OPEN:  # done at once (or failed at once)
            row = await self._end(c, row, status, shown)
        await self._send_row(c, send, row)

    def _video_model(self, name: str) -> Model:
        model = self.settings.models.get(name)
        if model is None:
            raise ModelNotFound(f"the model {name!r} does not exist; GET /v1/models lists the models served here"
                                + (" (sora-2 is OpenAI's default when a request names no model)"
                                   if name == videos.DEFAULT_MODEL else ""), param="model")
        if model.task_price is None and model.second_price is None:
            raise BadRequest(f"the model {name!r} is not a video model (it has no per-task or per-second price)",
                             param="model")
        if model.provider.format != "openai":
            raise BadRequest(f"the model {name!r} is served by a {model.provider.format}-format upstream, which has "
                             "no /videos API", param="model")
        return model

    async def _list(self, c: Call, scope: dict[str, Any], send: Any, account: int, models: list[str] | None) -> None:
        try:
            after, limit, order = videos.list_query(scope.get("query_string", b""))
        except InvalidRequest as exc:
            raise BadRequest(str(exc), param=exc.param) from None
        rows = await self.book.list(account, after, limit, order, models)
        if rows is None:
            raise BadRequest(f"'after' is {after!r}, which is not one of your videos", param="after")
        page = [videos.rendered(orjson.loads(r["object"]), r["status"]) for r in rows[:limit]]
        await self._send(c, send, 200, videos.list_page(page, len(rows) > limit))

    async def _retrieve(self, c: Call, scope: dict[str, Any], send: Any, row: dict[str, Any]) -> None:
        await self._send_row(c, send, await self._refresh(c, row))

    async def _refresh(self, c: Call, row: dict[str, Any]) -> dict[str, Any]:
        """An open task brought up to date: expired if overdue, else as the upstream now says."""
        if row["status"] not in OPEN:
            return row
        if time.time() >= row["expires_at"]:
            ended = await self._end(c, row, "expired")
            if c.task_status == "expired":  # this request expired it
                await self._cancel_upstream(ended)
            return ended
        return await self._advance(c, row)

    async def _advance(self, c: Call | None, row: dict[str, Any]) -> dict[str, Any]:
        """Ask the upstream about an open task and record what it says (the end of it at most once)."""
        model = self._row_model(row)
        resp = await self._timed(c, self.upstreams.request(model.provider, "GET", self._upstream_path(row)))
        try:
            if resp.status == 404:  # the upstream lost it: nothing will be delivered
                await self._timed(c, resp.read())
                lost = {**orjson.loads(row["object"]), "status": "failed", "error": {
                    "code": "video_not_found_upstream", "message": "the upstream provider no longer has this video"}}
                return await self._end(c, row, "failed", lost)
            if resp.status != 200:
                await self._refused(c, resp)
            raw = await self._timed(c, resp.read())
        finally:
            resp.close()
        obj = _json_object(raw)
        status = videos.task_status(obj)
        shown = videos.client_object(obj, row["id"], row["model"])
        if status in OPEN:
            return await self.book.observe(row, status, shown)
        return await self._end(c, row, status, shown)

    async def _advance_for_poller(self, row: dict[str, Any]) -> None:
        await self._advance(None, row)

    async def _content(self, c: Call, scope: dict[str, Any], send: Any, row: dict[str, Any]) -> None:
        """The video (or its thumbnail or spritesheet), passed through chunk by chunk, never held whole."""
        try:
            variant = videos.variant_query(scope.get("query_string", b""))
        except InvalidRequest as exc:
            raise BadRequest(str(exc), param=exc.param) from None
        row = await self._refresh(c, row)
        if row["status"] != "completed":
            shown = videos.rendered(orjson.loads(row["object"]), row["status"])
            if row["status"] in OPEN:
                raise VideoNotReady(f"the video is {row['status']}: its content can be downloaded once it is "
                                    "completed (poll GET /v1/videos/{id})")
            raise VideoNotReady(f"the video {shown['status']} ({(shown.get('error') or {}).get('code', 'error')}): "
                                "it has no content", code="video_not_available")
        model = self._row_model(row)
        resp = await self._timed(c, self.upstreams.request(
            model.provider, "GET", self._upstream_path(row) + f"/content?variant={variant}", stream=True))
        try:
            if resp.status != 200:
                await self._refused(c, resp)
            headers = [(b"content-type", resp.headers.get("content-type", "application/octet-stream").encode())]
            if "content-length" in resp.headers:
                headers.append((b"content-length", resp.headers["content-length"].encode()))
            for name in ("content-disposition", "etag", "last-modified"):
                if name in resp.headers:
                    headers.append((name.encode(), resp.headers[name].encode()))
            chunk = await self._timed(c, resp.read_chunk())
            await self._start(c, send, 200, headers)
            while chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                chunk = await self._timed(c, resp.read_chunk())
            await send({"type": "http.response.body", "body": b""})
        finally:
            resp.close()

    async def _cancel(self, c: Call, scope: dict[str, Any], send: Any, row: dict[str, Any]) -> None:
        """POST /v1/videos/{id}/cancel: a task the upstream still reports open ends `cancelled` (shown as failed,
        code video_cancelled) and its hold is released; a completed one (charged) is a 400; any other ended
        task is answered as it is."""
        if row["status"] in OPEN:
            row = await self._cancel_task(c, row)
        if row["status"] == "completed":
            raise BadRequest(f"the video {row['id']} already completed (and was charged); a completed video cannot "
                             "be cancelled (DELETE /v1/videos/{id} deletes it)", code="video_already_completed")
        await self._send_row(c, send, row)

    async def _delete(self, c: Call, scope: dict[str, Any], send: Any, row: dict[str, Any]) -> None:
        """DELETE /v1/videos/{id}: an open task is cancelled first (released, not charged, unless the upstream
        has completed it: then charged); a completed or failed one is deleted upstream too. Then the task is
        gone for its owner (its books stay)."""
        if row["status"] in OPEN:
            row = await self._cancel_task(c, row)
        if row["status"] in ("completed", "failed"):
            model = self._row_model(row)
            resp = await self._timed(c, self.upstreams.request(model.provider, "DELETE", self._upstream_path(row)))
            try:
                if resp.status not in (200, 204, 404):
                    await self._refused(c, resp)
            finally:
                resp.close()
        if not await self.book.delete(row["id"], row["account_id"]):
            await self.book.close_hold(row)  # ended but its hold still open (a repair pending): close it now
            await self.book.delete(row["id"], row["account_id"])
        await self._send(c, send, 200, videos.deleted(row["id"]))

    async def _cancel_task(self, c: Call, row: dict[str, Any]) -> dict[str, Any]:
        """Cancel an open task, after asking the upstream how it stands: completed there, it is settled as
        completed (charged); only one still open there is cancelled and released. Unasked: a 502, nothing moves."""
        try:
            row = await self._refresh(c, row)
        except (UpstreamError, UpstreamClientError) as exc:
            refused = UpstreamBadStatus(f"the upstream could not be asked whether video {row['id']} is done "
                                        f"({exc.message}); it was not cancelled and is still held: retry the "
                                        "cancel")
            refused.kind = error_kind(exc)  # the metric keeps what went wrong (connect, timeout, status...)
            raise refused from None
        if row["status"] not in OPEN:  # ended upstream (or expired here): not cancelled
            return row
        row = await self._end(c, row, "cancelled")
        if c.task_status == "cancelled":
            await self._cancel_upstream(row)
        return row

    async def _end(self, c: Call | None, row: dict[str, Any], status: str,
                   obj: dict[str, Any] | None = None) -> dict[str, Any]:
        """End an open task (the compare-and-set, then its hold closed, by whoever wins); the row as it now is.
        The winner's request log line (or the poller's own line) says what it was charged."""
        won, row = await self.book.end(row, status, obj)
        if won:
            cost = task_charge(row, self._prices)[0]
            if c is not None:
                c.task_status, c.cost = status, cost
            else:
                self._log_ended(row, cost)
        return row

    async def _expired_by_poller(self, row: dict[str, Any]) -> None:
        self._log_ended({**row, "status": "expired"}, 0)
        await self._cancel_upstream(row)

    def _log_ended(self, row: dict[str, Any], cost: int) -> None:
        """A task the poller ended: one log line under the request id of its submission."""
        model = self.settings.models.get(row["model"])
        self.log.write({"request_id": row["request_id"], "route": "task-poller", "model": row["model"],
                        "provider": model.provider.name if model is not None else None, "status":
                        USAGE_STATUS[row["status"]], "task_id": row["id"], "task_status": row["status"],
                        "cost_nanousd": cost, "usage_source": "upstream" if row["status"] == "completed" else "none",
                        "worker": self.pid})

    async def _cancel_upstream(self, row: dict[str, Any]) -> None:
        """Best effort: ask the upstream to drop a task that was cancelled or expired here (OpenAI has no
        cancel; DELETE is the nearest). Its answer changes nothing: the hold is already released."""
        model = self.settings.models.get(row["model"])
        if model is None:
            return
        try:
            resp = await self.upstreams.request(model.provider, "DELETE", self._upstream_path(row))
            resp.close()
        except UpstreamError as exc:
            log.info("task %s: the upstream was not told to drop it: %s", row["id"], exc.message)

    # -- upstream helpers ---------------------------------------------------------------------------

    def _row_model(self, row: dict[str, Any]) -> Model:
        model = self.settings.models.get(row["model"])
        if model is None:
            raise UpstreamBadStatus(f"the model {row['model']!r} of this video is no longer configured here")
        return model

    @staticmethod
    def _upstream_path(row: dict[str, Any]) -> str:
        return "/videos/" + quote(row["upstream_id"], safe="")

    async def _upstream_json(self, c: Call, provider: Provider, method: str, path: str, body: bytes,
                             content_type: str) -> dict[str, Any]:
        resp = await self._timed(c, self.upstreams.request(provider, method, path, body, content_type))
        try:
            if resp.status != 200:
                await self._refused(c, resp)
            raw = await self._timed(c, resp.read())
        finally:
            resp.close()
        return _json_object(raw)

    async def _refused(self, c: Call | None, resp: UpstreamResponse) -> None:
        """The upstream's non-200 answer as the error the client gets (as core/relay.py does)."""
        raise upstream_refusal(resp.status, resp.headers, await self._timed(c, resp.read()))

    async def _timed(self, c: Call | None, waiting: Awaitable[T]) -> T:
        t = perf_counter()
        try:
            return await waiting
        finally:
            if c is not None:
                c.upstream_wait += perf_counter() - t

    # -- answers ------------------------------------------------------------------------------------

    async def _send_row(self, c: Call, send: Any, row: dict[str, Any]) -> None:
        await self._send(c, send, 200, orjson.dumps(videos.rendered(orjson.loads(row["object"]), row["status"])))

    async def _start(self, c: Call, send: Any, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        c.status = status
        c.started = True
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, *id_headers("openai", c.request_id)]})

    async def _send(self, c: Call, send: Any, status: int, body: bytes,
                    extra: list[tuple[bytes, bytes]] | None = None) -> None:
        await self._start(c, send, status, [(b"content-type", JSON), (b"content-length", b"%d" % len(body)),
                                            *(extra or [])])
        await send({"type": "http.response.body", "body": body})

    async def _fail(self, c: Call, err: GatewayError, send: Any) -> None:
        if isinstance(err, (UpstreamError, UpstreamClientError)):
            c.upstream_error = error_kind(err)
            self.metrics.upstream_error(c.provider or "-", c.upstream_error)
        c.error_code = err.code
        if c.started:  # a download under way: end it short (the connection drops), never as if complete
            return
        body = failure_body("openai", err, c.request_id)
        await self._send(c, send, err.status, body, [(k.encode(), v.encode()) for k, v in err.headers.items()])

    def _finish(self, c: Call) -> None:
        total = perf_counter() - c.t0
        status = c.status or 500
        self.metrics.observe_request(c.route, c.model, status, total, max(total - c.upstream_wait, 0.0), None, False)
        self.log.write({
            "request_id": c.request_id,
            "route": c.route,
            "method": c.method,
            "model": c.model,
            "provider": c.provider,
            "status": status,
            "task_id": c.task_id,
            "task_status": c.task_status or None,
            "held_nanousd": c.held,
            "cost_nanousd": c.cost,
            "usage_source": None if c.cost is None else "upstream" if c.task_status == "completed" else "none",
            "duration_ms": round(total * 1000, 3),
            "upstream_ms": round(c.upstream_wait * 1000, 3),
            "error": c.error_code or None,
            "upstream_error": c.upstream_error or None,
            "worker": self.pid,
        })


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamBadStatus("the upstream answered 200 with a body that is not JSON") from None
    if not isinstance(obj, dict):
        raise UpstreamBadStatus("the upstream answered 200 with JSON that is not an object")
    return obj
