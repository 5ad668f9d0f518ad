"""A JSON-RPC proxy in front of ganache for the chain-reader tests: passes calls through, or is told to fail the
next k of them the ways real endpoints do (429 with Retry-After, 500, a JSON-RPC error, no answer at all), and
to refuse eth_getLogs ranges wider than W blocks with geth's "query returned more than 10000 results"."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from tests.loopback import LoopbackServer

FAULTS = ("429", "500", "rpc_error", "hang", "garbage")
TOO_MANY_RESULTS = {"code": -32005, "message": "query returned more than 10000 results"}


@dataclass
class Fault:
    kind: str
    left: int
    method: str | None  # only calls of this method, or any
    retry_after: str | None


class RpcProxy(LoopbackServer):
    """Serves any path (a URL may carry a fake API key in it) and records every call as (method, params,
    answer), where answer is "ok", a fault's kind or "range"."""

    name = "rpc proxy"

    def __init__(self, upstream: str, hang_seconds: float = 30.0) -> None:
        super().__init__()
        self.upstream = upstream
        self.hang_seconds = hang_seconds
        self.max_range: int | None = None
        self.calls: list[tuple[str, Any, str]] = []
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._session: aiohttp.ClientSession | None = None

    def url(self, path: str = "/") -> str:
        return self.base_url + path

    def fail_next(self, k: int, kind: str, method: str | None = None, retry_after: str | None = None) -> None:
        """The next k calls (of `method`, when given) fail as `kind`: 429 (with Retry-After when given), 500,
        rpc_error (HTTP 200, JSON-RPC error -32000), hang (no answer for hang_seconds) or garbage (HTML, 200)."""
        assert kind in FAULTS, kind
        with self._lock:
            self._faults.append(Fault(kind, k, method, retry_after))

    def refuse_ranges_wider_than(self, blocks: int | None) -> None:
        """eth_getLogs over more than `blocks` blocks answers -32005 "query returned more than 10000 results"."""
        self.max_range = blocks

    def reset(self) -> None:
        with self._lock:
            self._faults.clear()
            self.calls.clear()
        self.max_range = None

    def answers(self, method: str | None = None) -> list[str]:
        with self._lock:
            return [answer for m, _, answer in self.calls if method in (None, m)]

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/{tail:.*}", self._handle)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)

    async def _open(self, _app: web.Application) -> None:
        self._session = aiohttp.ClientSession(trust_env=False)

    async def _close(self, _app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    def _take_fault(self, method: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.left > 0 and fault.method in (None, method):
                    fault.left -= 1
                    return fault
        return None

    def _record(self, method: str, params: Any, answer: str) -> None:
        with self._lock:
            self.calls.append((method, params, answer))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        call = orjson.loads(body)
        method, params = call.get("method", ""), call.get("params")
        fault = self._take_fault(method)
        if fault is not None:
            self._record(method, params, fault.kind)
            if fault.kind == "429":
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                return web.json_response({"error": "too many requests"}, status=429, headers=headers)
            if fault.kind == "500":
                return web.Response(status=500, text="internal server error")
            if fault.kind == "garbage":
                return web.Response(status=200, text="<html>bad gateway</html>", content_type="text/html")
            if fault.kind == "hang":
                await asyncio.sleep(self.hang_seconds)
            error = {"code": -32000, "message": "header not found"}
            return web.json_response({"jsonrpc": "2.0", "id": call.get("id"), "error": error})
        if method == "eth_getLogs" and self.max_range is not None:
            span = int(params[0]["toBlock"], 16) - int(params[0]["fromBlock"], 16) + 1
            if span > self.max_range:
                self._record(method, params, "range")
                return web.json_response({"jsonrpc": "2.0", "id": call.get("id"), "error": TOO_MANY_RESULTS})
        self._record(method, params, "ok")
        assert self._session is not None
        async with self._session.post(self.upstream, data=body,
                                      headers={"Content-Type": "application/json"}) as upstream:
            return web.Response(status=upstream.status, body=await upstream.read(),
                                content_type="application/json")
