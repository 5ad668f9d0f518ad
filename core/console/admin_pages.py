"""The operator's pages: accounts and their wallets, manual credit or adjustment with a reason (into the ledger),
open holds, unmatched deposits, and upstream providers with their recent error rate."""

from __future__ import annotations

from starlette.routing import Route

from core.console.web import ConsoleWeb


def routes(web: ConsoleWeb) -> list[Route]:
    return []
