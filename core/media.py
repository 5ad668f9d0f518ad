"""Fetching the images and documents a caller gave by URL, for upstreams that cannot fetch them (Gemini):
public addresses only (no way into the operator's network), few redirects, bounded in size and in time."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
from typing import Any

import aiohttp
import yarl

from adapters.internal import Media
from core.errors import BadRequest

MAX_REDIRECTS = 3
FETCH_SECONDS = 20.0
ALLOWED_TYPES = ("image/", "application/pdf", "text/plain", "audio/", "video/")


class MediaRefused(BadRequest):
    code = "media_url_refused"


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global


class PublicResolver(aiohttp.abc.AbstractResolver):
    """Resolves like the default resolver, then drops every address that is not globally routable, so a
    name that points into the operator's network (or rebinds to it) is never connected to."""

    def __init__(self, allow_private: bool) -> None:
        self._inner = aiohttp.ThreadedResolver()
        self._allow_private = allow_private

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        found = await self._inner.resolve(host, port, family)
        kept = [a for a in found if self._allow_private or _public(a["host"])]
        if not kept:
            raise OSError(f"{host} has no public address")
        return kept

    async def close(self) -> None:
        await self._inner.close()


class MediaBudget:
    """What one request's media downloads may still take, shared by its parallel fetches."""

    __slots__ = ("bytes_left", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.bytes_left = limit

    def take(self, size: int) -> None:
        self.bytes_left -= size
        if self.bytes_left < 0:
            raise MediaRefused(f"the media given by URL in this request add up to more than {self.limit} bytes "
                               "(server.media_fetch_total_bytes): send fewer or smaller ones")


class MediaFetcher:
    """One session for media downloads, separate from the upstream pool (its own resolver and limits). Per request
    at most `max_count` URLs and `max_total` bytes in all; each one at most `limit` bytes."""

    def __init__(self, limit_bytes: int, allow_private: bool = False, max_count: int = 16,
                 max_total: int = 64 * 1024 * 1024) -> None:
        self.limit = limit_bytes
        self.allow_private = allow_private
        self.max_count = max_count
        self.max_total = max_total
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(resolver=PublicResolver(self.allow_private), limit=32)
        self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=FETCH_SECONDS))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def check_count(self, media: list[Media]) -> None:
        """Refuse, before anything is fetched or held, a request giving more URLs than one may."""
        if len(media) > self.max_count:
            raise MediaRefused(f"this request gives {len(media)} media by URL and at most {self.max_count} are "
                               "fetched for one request (server.media_fetch_count): send fewer, or send them inline")

    async def inline(self, media: list[Media]) -> None:
        """Download each URL and put its bytes (base64) and type in place; all or a 400 naming the URL (the first
        refusal stops the other downloads)."""
        if not media:
            return
        self.check_count(media)
        budget = MediaBudget(self.max_total)
        fetches = [asyncio.ensure_future(self._inline_one(m, budget)) for m in media]
        try:
            await asyncio.gather(*fetches)
        finally:
            for fetch in fetches:
                fetch.cancel()

    async def _inline_one(self, media: Media, budget: MediaBudget) -> None:
        assert media.url is not None
        mime, data = await self.fetch(media.url, budget)
        media.mime = media.mime or mime
        media.data = base64.b64encode(data).decode()
        media.url = None

    async def fetch(self, url: str, budget: MediaBudget | None = None) -> tuple[str, bytes]:
        """The type and bytes at a public URL. A failure names the URL (never its query) and says nothing of
        what the network answered: no DNS or connect detail reaches the caller."""
        assert self._session is not None, "MediaFetcher.start() was not awaited"
        budget = budget or MediaBudget(self.max_total)
        target = yarl.URL(url)
        for _ in range(MAX_REDIRECTS + 1):
            self._check(target, url)
            try:
                async with self._session.get(target, allow_redirects=False) as resp:
                    if resp.status in (301, 302, 303, 307, 308) and "location" in resp.headers:
                        target = target.join(yarl.URL(resp.headers["location"]))
                        continue
                    if resp.status != 200:
                        raise MediaRefused(f"the media URL {_short(url)} answered {resp.status}")
                    mime = resp.headers.get("content-type", "").split(";")[0].strip().lower()
                    if not mime.startswith(ALLOWED_TYPES):
                        raise MediaRefused(f"the media URL {_short(url)} is {mime or 'of no type'}, not an image, "
                                           "audio, video or PDF")
                    if resp.content_length is not None and resp.content_length > self.limit:
                        raise MediaRefused(f"the media at {_short(url)} is larger than {self.limit} bytes")
                    body = bytearray()
                    async for chunk in resp.content.iter_chunked(65536):
                        body += chunk
                        if len(body) > self.limit:
                            raise MediaRefused(f"the media at {_short(url)} is larger than {self.limit} bytes")
                        budget.take(len(chunk))
                    return mime, bytes(body)
            except (aiohttp.ClientError, OSError, TimeoutError):
                raise MediaRefused(f"the media URL {_short(url)} could not be fetched: it must be a public http(s) "
                                   f"URL that answers within {FETCH_SECONDS:g} s") from None
        raise MediaRefused(f"the media URL {_short(url)} redirects more than {MAX_REDIRECTS} times")

    def _check(self, target: yarl.URL, url: str) -> None:
        if target.scheme not in ("http", "https") or not target.host:
            raise MediaRefused(f"the media URL {_short(url)} is not an http(s) URL")
        try:
            literal = ipaddress.ip_address(target.host.strip("[]"))
        except ValueError:
            return  # a name: the resolver keeps only its public addresses
        if not self.allow_private and not _public(str(literal)):
            raise MediaRefused(f"the media URL {_short(url)} points at a private address")


def _short(url: str) -> str:
    """A URL for an error message: scheme, host and path, never a query (it may carry a token)."""
    u = yarl.URL(url)
    return f"{u.scheme}://{u.host}{u.path}"[:120] if u.host else repr(url[:40])
