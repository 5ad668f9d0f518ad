"""The Recharge pages: create a USDT order (address, exact amount, QR code, time left, live status) and the Recharge
Records (orders and deposits with their transaction hashes). The orders themselves are billing.recharge.orders'."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import segno
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from billing.pricing import usd_to_units
from billing.recharge import amounts
from billing.recharge.orders import OrderError, RechargeDesk
from core.console.web import ConsoleWeb, NotFound, Visitor, sentence

POLL_MS = 3000  # how often an open order's page asks for its status
OPEN = ("pending", "confirming")


def status_text(order: dict[str, Any]) -> str:
    """An order's status for people: pending, confirming k/N (as the watcher last saw the chain), credited, expired."""
    seen = order.get("confirmations")
    if order["status"] == "confirming" and seen:
        return f"confirming {seen['received']}/{seen['required']}"
    return str(order["status"])


def time_left(seconds: int) -> str:
    """The time left as the page's script counts it down (m:ss), a dash once there is none."""
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds > 0 else "—"


def qr_svg(text: str) -> str:
    """`text` as a QR code in inline SVG, sized by CSS (a viewBox, classes, no style attribute: the CSP allows none)."""
    return segno.make(text, error="m").svg_inline(omitsize=True, svgclass="qr-code", lineclass=None, border=4,
                                                  title="QR code of the payment")


def terms(desk: RechargeDesk) -> dict[str, Any]:
    """What every recharge is subject to (core/config.py Recharge): the smallest credit, the rate and the fee."""
    r = desk.recharge
    return {"minimum": r.minimum, "rate": amounts.decimal_text(r.usd_per_usdt),
            "fee_percent": amounts.decimal_text(r.fee * 100)}


def order_credit(desk: RechargeDesk, order: dict[str, Any]) -> int | None:
    """Nano-dollars the order's exact amount credits, at today's rate and fee; None if its chain is gone."""
    chain = desk.chains.get(order["chain"])
    if chain is None:
        return None
    raw = amounts.raw_amount(order["amount"], chain.decimals)
    return amounts.credit_for(raw, chain.decimals, desk.recharge.usd_per_usdt, desk.recharge.fee)


def person_message(err: OrderError) -> str:
    """The desk's message for a form: the field by its label ("Amount: at most 6 decimals")."""
    return sentence(err.message.replace(f"'{err.param}'", err.param.capitalize(), 1))


def routes(web: ConsoleWeb, desk: RechargeDesk) -> list[Route]:

    async def records_page(request: Request, v: Visitor, problem: str | None = None,
                           entered: dict[str, str] | None = None, status: int = 200) -> Response:
        wallet = await web.ops.wallet(str(v.account_id))
        orders = await desk.orders(v.account_id)
        for order in orders:
            order["status_text"] = status_text(order)
        deposits = await desk.deposits(v.account_id)
        for deposit in deposits:
            deposit["credit"] = usd_to_units(Decimal(deposit["credit_usd"]))
        context = {"wallet": wallet, "chains": desk.chain_names(), "orders": orders, "deposits": deposits,
                   "terms": terms(desk), "problem": problem, "entered": entered or {}}
        if problem is None:
            return web.show(request, v, "recharge.html", **context)
        return web.render(v, "recharge.html", status, **context)

    async def create_order(request: Request, v: Visitor) -> Response:
        form = await web.form(request)
        entered = {"chain": form.get("chain", "")[:100], "amount": form.get("amount", "").strip()[:100]}
        try:
            order = await desk.create_order(v.account_id, entered["chain"], entered["amount"])
        except OrderError as err:
            return await records_page(request, v, person_message(err), entered, 400)
        return web.back(f"/console/recharge/orders/{order['id']}",
                        f"Order {order['id']} is open: send exactly {order['amount']} USDT on {order['chain']}.", v)

    async def own_order(v: Visitor, raw_id: str) -> dict[str, Any]:
        order = await desk.order(v.account_id, raw_id)
        if order is None:  # missing, or another account's: the same 404
            raise NotFound
        order["status_text"] = status_text(order)
        return order

    async def order_page(request: Request, v: Visitor) -> Response:
        order = await own_order(v, request.path_params["order_id"])
        chain = desk.chains.get(order["chain"])
        return web.show(request, v, "recharge_order.html", order=order, open=order["status"] in OPEN,
                        time_left=time_left(order["expires_in"]), poll_ms=POLL_MS,
                        qr=qr_svg(order["payment_uri"]) if order["payment_uri"] else None,
                        credit=order_credit(desk, order), terms=terms(desk),
                        confirmations=chain.confirmations if chain else None)

    async def order_status(request: Request, v: Visitor) -> Response:
        order = await own_order(v, request.path_params["order_id"])
        body = {"status": order["status"], "status_text": order["status_text"], "expires_in": order["expires_in"]}
        return Response(orjson.dumps(body), media_type="application/json")

    return [
        Route("/recharge", web.page(records_page), methods=["GET"]),
        Route("/recharge/orders", web.page(create_order), methods=["POST"]),
        Route("/recharge/orders/{order_id}", web.page(order_page), methods=["GET"]),
        Route("/recharge/orders/{order_id}/status", web.page(order_status), methods=["GET"]),
    ]
