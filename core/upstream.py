"""Connections to upstream providers: one shared aiohttp session with keep-alive pooling, per-provider
timeouts (connect, first byte, idle gap, total), and only the provider's own credentials sent."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import NamedTuple, Protocol

import aiohttp
import yarl

from adapters.anthropic import upstream as anthropic_upstream
from adapters.gemini import upstream as gemini_upstream
from adapters.openai import chat_upstream as openai_upstream
from core.config import Provider, Settings, Timeouts
from core.health import UpstreamHealth
from core.errors import UpstreamClosed, UpstreamConnectError, UpstreamTimeout

USER_AGENT = "TokenToll/0.1"
UPSTREAM_ADAPTERS = {"openai": openai_upstream, "anthropic": anthropic_upstream, "gemini": gemini_upstream}


class UpstreamResponse(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...  # looked up by lower-case names

    async def read(self) -> bytes: ...

    async def read_chunk(self) -> bytes: ...

    async def drain(self, seconds: float) -> None: ...

    def close(self) -> None: ...


class HttpResponse:
    """An aiohttp response. A non-stream body is read under aiohttp's own timeouts (set in open());
    a stream is read under the provider's idle and total deadlines."""

    __slots__ = ("_resp", "_timeouts", "_deadline", "status", "headers")

    def __init__(self, resp: aiohttp.ClientResponse, provider: Provider, deadline: float) -> None:
        self._resp = resp
        self._timeouts = provider.timeouts
        self._deadline = deadline
        self.status = resp.status
        self.headers: Mapping[str, str] = resp.headers  # case-insensitive, no copy

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except aiohttp.ServerTimeoutError:  # a gap in the body longer than first_byte
            raise UpstreamTimeout("idle", self._timeouts.first_byte) from None
        except TimeoutError as exc:
            raise _timeout_error(exc, self._timeouts, "total") from None
        except aiohttp.ClientError as exc:
            raise UpstreamClosed(f"the upstream connection failed while reading: {type(exc).__name__}") from None

    async def read_chunk(self) -> bytes:
        """The next raw body chunk as it arrives, b"" at the end. Only the wait for the upstream is
        timed (idle gap, total deadline), never the time the caller spends passing a chunk on."""
        loop = asyncio.get_running_loop()
        idle = self._timeouts.idle
        try:
            async with asyncio.timeout_at(min(loop.time() + idle, self._deadline)):
                return await self._resp.content.readany()
        except TimeoutError:
            if loop.time() >= self._deadline - 0.001:
                raise UpstreamTimeout("total", self._timeouts.total) from None
            raise UpstreamTimeout("idle", idle) from None
        except aiohttp.ClientError as exc:
            raise UpstreamClosed(f"the upstream connection broke mid-stream: {type(exc).__name__}") from None

    async def drain(self, seconds: float) -> None:
        """Read to the end of the body, for at most `seconds`, so the connection can be reused."""
        try:
            async with asyncio.timeout(seconds):
                while await self._resp.content.readany():
                    pass
        except (TimeoutError, aiohttp.ClientError):
            pass

    def close(self) -> None:
        """Drop the connection unless the body was read to its end (then it goes back to the pool);
        a client that left mid-stream makes the upstream see the close at once."""
        self._resp.close()


class BuiltinProvider(Protocol):
    """A provider answered in-process (`builtin = "demo"`: core/demo.py), handed in by the composition root."""

    async def answer(self, provider: Provider, path: str, body: bytes, stream: bool) -> UpstreamResponse: ...

    async def request(self, provider: Provider, method: str, path: str, body: bytes | None,
                      content_type: str | None) -> UpstreamResponse: ...


class Upstreams:
    """Opens requests to providers; built-in providers are answered in-process by `builtin`."""

    def __init__(self, settings: Settings, health: UpstreamHealth | None = None,
                 builtin: BuiltinProvider | None = None) -> None:
        self._settings = settings
        self._health = health  # every request opened is an attempt in the upstream health tally
        self._builtin = builtin
        self._session: aiohttp.ClientSession | None = None
        self._plans: dict[tuple[str, str, bool], RequestPlan] = {}

    def _builtin_provider(self) -> BuiltinProvider:
        assert self._builtin is not None, "a builtin provider is configured but none was handed to Upstreams"
        return self._builtin

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._settings.server.upstream_pool_size, keepalive_timeout=60, enable_cleanup_closed=True
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def open(self, provider: Provider, path: str, body: bytes, stream: bool,
                   extra_headers: Mapping[str, str] | None = None) -> UpstreamResponse:
        """Send the request; returns once the upstream's status and headers have arrived."""
        if self._health is not None:
            self._health.attempt(provider.name)
        if provider.builtin:
            return await self._builtin_provider().answer(provider, path, body, stream)
        assert self._session is not None, "Upstreams.start() was not awaited"
        t = provider.timeouts
        loop = asyncio.get_running_loop()
        deadline = loop.time() + t.total
        plan = self._plan(provider, path, stream)
        headers = {**plan.headers, **extra_headers} if extra_headers else plan.headers
        try:
            if stream:  # first_byte here; idle and total are enforced chunk by chunk in chunks()
                async with asyncio.timeout_at(min(loop.time() + t.connect + t.first_byte, deadline)):
                    resp = await self._session.post(plan.url, data=body, headers=headers, timeout=plan.timeout)
            else:  # aiohttp's own timers: connect, first byte (socket read) and total
                resp = await self._session.post(plan.url, data=body, headers=headers, timeout=plan.timeout)
        except TimeoutError as exc:
            raise _timeout_error(exc, t, "first_byte" if stream else "total") from None
        except aiohttp.ClientConnectorError as exc:  # the reason, never the upstream's address
            reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
            raise UpstreamConnectError(f"cannot connect to the upstream provider {provider.name!r}: "
                                       f"{reason.lower()}") from None
        except aiohttp.ClientError as exc:
            raise UpstreamClosed(f"the upstream closed the connection before answering: {type(exc).__name__}") from None
        return HttpResponse(resp, provider, deadline)

    async def request(self, provider: Provider, method: str, path: str, body: bytes | None = None,
                      content_type: str | None = None, stream: bool = False) -> UpstreamResponse:
        """Any other call (images, video tasks): a method, a body of any content type (multipart for
        edits), and with `stream` a body to read chunk by chunk (a video download). Built-in
        providers answer in-process."""
        if provider.builtin:
            return await self._builtin_provider().request(provider, method, path, body, content_type)
        assert self._session is not None, "Upstreams.start() was not awaited"
        t = provider.timeouts
        loop = asyncio.get_running_loop()
        deadline = loop.time() + t.total
        headers = {"User-Agent": USER_AGENT, "Accept": "*/*" if stream else "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        headers.update(UPSTREAM_ADAPTERS[provider.format].auth_headers(provider.api_key))  # "" adds no key
        if stream:
            timeout = aiohttp.ClientTimeout(total=None, connect=t.connect, sock_connect=t.connect)
        else:
            timeout = aiohttp.ClientTimeout(total=t.total, sock_connect=t.connect, sock_read=t.first_byte)
        url = yarl.URL(provider.base_url + path, encoded=True)
        try:
            async with asyncio.timeout_at(min(loop.time() + t.connect + t.first_byte, deadline)):
                resp = await self._session.request(method, url, data=body, headers=headers, timeout=timeout)
        except TimeoutError as exc:
            raise _timeout_error(exc, t, "first_byte") from None
        except aiohttp.ClientConnectorError as exc:
            reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
            raise UpstreamConnectError(f"cannot connect to the upstream provider {provider.name!r}: "
                                       f"{reason.lower()}") from None
        except aiohttp.ClientError as exc:
            raise UpstreamClosed(f"the upstream closed the connection before answering: {type(exc).__name__}") from None
        return HttpResponse(resp, provider, deadline)

    def _plan(self, provider: Provider, path: str, stream: bool) -> RequestPlan:
        """URL, headers and timeouts for one kind of request, built once and reused."""
        key = (provider.name, path, stream)
        plan = self._plans.get(key)
        if plan is None:
            t = provider.timeouts
            headers = {
                "Content-Type": "application/json",
                "Accept": "text/event-stream" if stream else "application/json",
                "User-Agent": USER_AGENT,
            }
            if stream:  # a compressed event stream may be held back by the encoder: ask for none
                headers["Accept-Encoding"] = "identity"
            # each format's own version headers, and its credential when the provider has a key
            headers.update(UPSTREAM_ADAPTERS[provider.format].auth_headers(provider.api_key))
            if stream:
                timeout = aiohttp.ClientTimeout(total=None, connect=t.connect, sock_connect=t.connect)
            else:
                timeout = aiohttp.ClientTimeout(total=t.total, sock_connect=t.connect, sock_read=t.first_byte)
            plan = self._plans[key] = RequestPlan(yarl.URL(provider.base_url + path, encoded=True), headers, timeout)
        return plan


class RequestPlan(NamedTuple):
    url: yarl.URL
    headers: dict[str, str]
    timeout: aiohttp.ClientTimeout


def _timeout_error(exc: TimeoutError, t: Timeouts, plain: str) -> UpstreamTimeout:
    """Which of the provider's timeouts fired. aiohttp names its connect and socket-read timeouts;
    a plain TimeoutError is the timer the caller names (ours on a stream, aiohttp's total otherwise)."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamTimeout("connect", t.connect)
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return UpstreamTimeout("first_byte", t.first_byte)
    return UpstreamTimeout(plain, getattr(t, plain))
