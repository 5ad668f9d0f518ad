"""The console's composition: one ConsoleWeb (sessions, CSRF, rendering) shared by the page modules, and their
routes mounted under /console with the static files (CSS, JS) served from memory."""

from __future__ import annotations

import hashlib
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from billing import store
from core.config import Settings
from core.console import account_pages, admin_pages, login_pages, public_pages, recharge_pages, usage_pages
from core.console.web import HERE, ConsoleWeb, NotFound, Visitor
from core.operations import Operations

STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".svg": "image/svg+xml"}


class Console:
    def __init__(self, settings: Settings, ops: Operations, db: store.Store, recharge_desk: Any) -> None:
        self.settings = settings
        self.web = ConsoleWeb(settings, ops, db)
        self.recharge_desk = recharge_desk
        self._static = {path.name: (path.read_bytes(), STATIC_TYPES[path.suffix])
                        for path in (HERE / "static").iterdir() if path.suffix in STATIC_TYPES}

    async def start(self) -> None:
        await self.web.start()

    def routes(self) -> list[BaseRoute]:
        if not self.settings.console.enabled:
            return []
        return [Mount("/console", routes=[
            Route("/static/{name}", self.static, methods=["GET"]),
            *login_pages.routes(self.web),
            *account_pages.routes(self.web),
            *usage_pages.routes(self.web),
            *public_pages.routes(self.web),
            *recharge_pages.routes(self.web, self.recharge_desk),
            *admin_pages.routes(self.web),
            Route("/{path:path}", self.web.page(self.missing, login=False)),
        ])]

    async def missing(self, request: Request, v: Visitor) -> Response:
        raise NotFound

    async def static(self, request: Request) -> Response:
        found = self._static.get(request.path_params["name"])
        if found is None:
            return Response("not found", status_code=404, media_type="text/plain")
        body, ctype = found
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"etag": etag})
        return Response(body, media_type=ctype, headers={"etag": etag, "cache-control": "no-cache",
                                                         "x-content-type-options": "nosniff"})
