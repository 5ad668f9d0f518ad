"""The public pages, no log-in: Model Prices (every model's prices, searchable and sortable) and Client Integration
(the base URL and ready-to-paste snippets for curl, the three SDKs and desktop clients)."""

from __future__ import annotations

from starlette.routing import Route

from core.console.web import ConsoleWeb


def routes(web: ConsoleWeb) -> list[Route]:
    return []
