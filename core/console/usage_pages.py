"""The Usage pages: an account's request log with filters (key, model, date range, status, usage source), search by
request id, one request's cost breakdown, and the CSV export of what the filters select."""

from __future__ import annotations

from starlette.routing import Route

from core.console.web import ConsoleWeb


def routes(web: ConsoleWeb) -> list[Route]:
    return []
