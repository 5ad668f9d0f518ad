"""The operator's pages: accounts and their wallets, manual credit or adjustment with a reason (into the ledger),
open holds, unmatched deposits, and upstream providers with their recent error rate."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from billing.pricing import usd_text
from core.console.web import ConsoleWeb, FormError, Handler, NotFound, Visitor, sentence
from core.operations import OperationError, parse_usd

HISTORY_ROWS = 100  # ledger entries on an account's page
DEPOSIT_ROWS = 1000  # the newest deposits looked through for those needing an operator
HEALTH_WINDOWS = (15, 60)  # minutes
MAX_REASON = 500
WARN_RATE, BAD_RATE = 5, 20  # percent of upstream attempts failed

Change = Callable[[str, str, str], Awaitable[dict[str, Any]]]


def reason(form: dict[str, str]) -> str:
    """The operator's reason for a change: required, as it is written in the ledger beside the amount."""
    note = form.get("note", "").strip()
    if not note:
        raise FormError("Give a reason: it is written in the ledger beside the amount.")
    if len(note) > MAX_REASON:
        raise FormError(f"A reason is at most {MAX_REASON} characters.")
    return note


def age_text(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def rate_level(row: dict[str, Any]) -> str:
    """A CSS class for an error rate: '' when fine, 'warn', or 'bad'."""
    if not row["requests"]:
        return ""
    return "bad" if row["error_rate"] >= BAD_RATE else "warn" if row["error_rate"] >= WARN_RATE else ""


def provider_rows(configured: list[str], windows: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per provider (configured ones without traffic too, as 0 requests) with each window's figures;
    the most failing first."""
    found = {m: {r["provider"]: r for r in rows} for m, rows in windows.items()}
    names = list(configured) + sorted({p for rows in found.values() for p in rows} - set(configured))
    out = []
    for name in names:
        row: dict[str, Any] = {"provider": name}
        last_minute = 0
        for minutes, by_provider in found.items():
            figures = by_provider.get(name) or {"requests": 0, "errors": 0, "error_rate": 0.0, "last_minute": None}
            row[minutes] = {**figures, "level": rate_level(figures)}
            last_minute = max(last_minute, figures["last_minute"] or 0)
        row["last_active"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime(last_minute * 60)) if last_minute else ""
        out.append(row)
    short, long = HEALTH_WINDOWS[0], HEALTH_WINDOWS[-1]
    return sorted(out, key=lambda r: (-r[short]["errors"], -r[long]["errors"], r["provider"]))


def routes(web: ConsoleWeb) -> list[Route]:
    ops = web.ops

    def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        return web.page(handler, operator=True)

    async def account_names() -> dict[int, str]:
        return {a["id"]: a["name"] for a in await ops.list_accounts()}

    # -- accounts ---------------------------------------------------------------------------

    async def overview(request: Request, v: Visitor) -> Response:
        accounts = await ops.list_accounts()
        users: dict[int, list[dict[str, Any]]] = {}
        for user in await ops.list_users():
            users.setdefault(user["account_id"], []).append(user)
        holds = await ops.holds()
        waiting = await ops.deposits(None, DEPOSIT_ROWS, status="held")
        failing = [r for r in await ops.upstream_health(HEALTH_WINDOWS[0]) if r["errors"]]
        return web.show(request, v, "admin.html", section="accounts", accounts=accounts, users=users,
                        holds=len(holds), held=sum(h["amount"] for h in holds), waiting=len(waiting),
                        failing=failing, minutes=HEALTH_WINDOWS[0])

    async def wallet_of(account_id: int) -> dict[str, Any]:
        try:
            return await ops.wallet(str(account_id))
        except OperationError:
            raise NotFound from None

    async def account_page(request: Request, v: Visitor, problem: str | None = None,
                           form: dict[str, str] | None = None) -> Response:
        account_id = request.path_params["account_id"]
        wallet = await wallet_of(account_id)
        keys = await ops.list_keys(str(account_id))
        context = dict(section="accounts", wallet=wallet, keys=keys, users=await ops.list_users(str(account_id)),
                       history=await ops.history(str(account_id), HISTORY_ROWS), rows=HISTORY_ROWS,
                       key_names={k["id"]: k["name"] for k in keys}, problem=problem, form=form or {})
        if problem is None:
            return web.show(request, v, "admin_account.html", **context)
        return web.render(v, "admin_account.html", 400, **context)

    def change(action: str, run: Change, done: str) -> Handler:
        async def endpoint(request: Request, v: Visitor) -> Response:
            account_id = request.path_params["account_id"]
            await wallet_of(account_id)
            form: dict[str, str] = {}
            try:
                form = await web.form(request)
                amount = form.get("amount", "")
                if not amount.strip():
                    raise FormError("Give an amount in USD, such as 5.00.")
                note = reason(form)
                wallet = await run(str(account_id), amount, note)
            except (FormError, OperationError) as exc:
                message = sentence(str(exc))
                return await account_page(request, v, message, {**form, "action": action})
            return web.back(f"/console/admin/accounts/{account_id}",
                            f"{done} {usd_text(parse_usd(amount.strip(), 'amount'))} USD ({note}). The balance of "
                            f"{wallet['name']} is now "
                            f"{usd_text(wallet['balance'])} USD.", v)
        return endpoint

    # -- holds, deposits, upstreams ---------------------------------------------------------

    async def holds_page(request: Request, v: Visitor) -> Response:
        holds = await ops.holds()
        names = await account_names()
        now = time.time()
        ttl = web.settings.billing.hold_ttl
        for hold in holds:
            hold["account_name"] = names.get(hold["account_id"], "")
            hold["age"] = now - hold["created_at"]
            hold["age_text"] = age_text(hold["age"])
            hold["overdue"] = hold["kind"] == "request" and hold["age"] > ttl
        return web.show(request, v, "admin_holds.html", section="holds", holds=holds, ttl=age_text(ttl),
                        total=sum(h["amount"] for h in holds))

    async def deposits_page(request: Request, v: Visitor, problem: str | None = None,
                            form: dict[str, str] | None = None) -> Response:
        held = await ops.deposits(None, DEPOSIT_ROWS, status="held")
        unmatched = [d for d in await ops.deposits(None, DEPOSIT_ROWS, without_order=True) if d["status"] != "held"]
        names = await account_names()
        for deposit in (*held, *unmatched):
            deposit["account_name"] = names.get(deposit["account_id"], "")
        context = dict(section="deposits", problem=problem, form=form or {}, rows=DEPOSIT_ROWS, held=held,
                       unmatched=unmatched)
        if problem is None:
            return web.show(request, v, "admin_deposits.html", **context)
        return web.render(v, "admin_deposits.html", 400, **context)

    async def credit_deposit(request: Request, v: Visitor) -> Response:
        deposit_id = request.path_params["deposit_id"]
        form: dict[str, str] = {}
        try:
            form = await web.form(request)
            credited = await ops.credit_deposit(deposit_id, reason(form))
        except (FormError, OperationError) as exc:
            message = sentence(str(exc))
            return await deposits_page(request, v, message, {**form, "deposit_id": str(deposit_id)})
        return web.back("/console/admin/deposits", f"Deposit {deposit_id} credited: "
                                                   f"{usd_text(credited['credited'])} USD.", v)

    async def upstreams_page(request: Request, v: Visitor) -> Response:
        windows = {m: await ops.upstream_health(m) for m in HEALTH_WINDOWS}
        return web.show(request, v, "admin_upstreams.html", section="upstreams", windows=HEALTH_WINDOWS,
                        providers=provider_rows(list(web.settings.providers), windows),
                        formats={name: p.builtin or p.format for name, p in web.settings.providers.items()},
                        warn_rate=WARN_RATE, bad_rate=BAD_RATE)

    async def show_account(request: Request, v: Visitor) -> Response:
        return await account_page(request, v)

    async def show_deposits(request: Request, v: Visitor) -> Response:
        return await deposits_page(request, v)

    return [
        Route("/admin", page(overview), methods=["GET"]),
        Route("/admin/accounts/{account_id:int}", page(show_account), methods=["GET"]),
        Route("/admin/accounts/{account_id:int}/credit", page(change("credit", ops.credit, "Credited")),
              methods=["POST"]),
        Route("/admin/accounts/{account_id:int}/adjust", page(change("adjust", ops.adjust, "Adjusted by")),
              methods=["POST"]),
        Route("/admin/holds", page(holds_page), methods=["GET"]),
        Route("/admin/deposits", page(show_deposits), methods=["GET"]),
        Route("/admin/deposits/{deposit_id:int}/credit", page(credit_deposit), methods=["POST"]),
        Route("/admin/upstreams", page(upstreams_page), methods=["GET"]),
    ]
