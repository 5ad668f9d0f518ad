"""The Recharge pages: create a USDT order (address, exact amount, QR code, time left, live status) and the Recharge
Records (orders and deposits with their transaction hashes). The orders themselves are billing.recharge.orders'."""

from __future__ import annotations

from typing import Any

from starlette.routing import Route

from core.console.web import ConsoleWeb


def routes(web: ConsoleWeb, desk: Any) -> list[Route]:
    return []
