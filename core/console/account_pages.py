"""The account holder's pages: the dashboard (wallet, this month's spend per key, 30 days of spend, the last requests)
and API keys (create, rotate with the secret shown once, disable, enable, limits read strictly), via Operations."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from core.console.charts import daily_spend_svg
from core.console.public_pages import price_rows
from core.console.web import ConsoleWeb, FormError, NotFound, Visitor, day_text, sentence
from core.operations import LATEST, MAX_RATE, NotFoundError, OperationError, whole_number

CHART_DAYS = 30
LAST_REQUESTS = 10
KEY_SETTINGS = ("name", "monthly_limit", "models", "rpm", "tpm", "expires_at")
MAX_SHOWN = 60  # characters of a refused value quoted back
DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
DATE_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?"
                       r"(?:Z|[+-][0-9]{2}:[0-9]{2})?")


def wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def key_settings(form: dict[str, str], creating: bool, now: float | None = None) -> dict[str, Any]:
    """A key form's fields as Operations takes them: an empty field clears a limit (or, creating, sets none). Each
    is read strictly (ASCII digits, bounded sizes); FormError says which one cannot be taken and why."""
    out: dict[str, Any] = {}
    for name in KEY_SETTINGS:
        if name not in form:
            continue
        value = form[name].strip()
        if name == "name":
            if value:
                out["name"] = value
        elif value:
            out[name] = value
        elif not creating:
            out[name] = "none"
    if "models" in out and out["models"] != "none":
        out["models"] = [m.strip() for m in out["models"].replace("\n", ",").split(",") if m.strip()] or "none"
    for name, what in (("rpm", "requests per minute (rpm)"), ("tpm", "tokens per minute (tpm)")):
        if out.get(name) not in (None, "none") and whole_number(out[name], 0, MAX_RATE) is None:
            raise FormError(sentence(f"{what}: a whole number from 0 to {MAX_RATE:,} (0 = no limit), in digits 0-9."))
    if out.get("expires_at") not in (None, "none"):
        out["expires_at"] = expiry(out["expires_at"], time.time() if now is None else now)
    return out


def expiry(text: str, now: float) -> str:
    """A key's expiry as the form sends it: a day (its end, UTC) or an ISO date-time (UTC unless it says), after
    `now` and before LATEST (in UTC), as an ISO date-time in UTC. A later one would be stored, then break every
    page that shows it: past the year 9999 in UTC, no calendar type can hold it."""
    if DAY.fullmatch(text):
        text += "T23:59:59+00:00"  # what an <input type=date> sends: the end of that day
    elif not DATE_TIME.fullmatch(text):
        raise FormError(f"Expires on: {text[:MAX_SHOWN]!r} is not a day; write it as YYYY-MM-DD (or an ISO "
                        f"date-time such as 2030-01-31T12:00:00+00:00).")
    try:
        moment = datetime.fromisoformat(text)
        moment = (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    except (ValueError, OverflowError):  # no such day or offset, or in UTC past the year 9999
        moment = None
    if moment is None or moment >= LATEST:
        raise FormError(f"Expires on: {text[:MAX_SHOWN]!r} is not a day before {LATEST.year} (UTC); leave the "
                        f"field empty for a key that never expires.")
    if moment.timestamp() <= now:
        raise FormError("Expires on: that day has passed (disable the key to stop it now).")
    return moment.isoformat()


def expires_on(ts: float | None) -> str:
    """A stored expiry as the keys page shows it (YYYY-MM-DD, UTC); "" (never) for none, and for one at or past
    LATEST, which an older gateway (or the CLI) may have stored: shown, never an error."""
    return "" if not ts or ts >= LATEST.timestamp() else day_text(ts)


def routes(web: ConsoleWeb) -> list[Route]:
    ops = web.ops

    async def keys_with_spend(account_id: int) -> list[dict[str, Any]]:
        """The account's keys, each with what it spent this month (`spent`)."""
        keys = await ops.list_keys(str(account_id))
        spent = await ops.month_spend_by_key(account_id)
        for key in keys:
            key["spent"] = spent.get(key["id"], 0)
        return keys

    async def dashboard(request: Request, v: Visitor) -> Response:
        wallet = await ops.wallet(str(v.account_id))
        keys = await keys_with_spend(v.account_id)
        for key in keys:
            limit = key.get("monthly_limit")
            key["used_percent"] = min(100, round(100 * key["spent"] / limit)) if limit else None
        days = await ops.daily_spend(v.account_id, CHART_DAYS)
        recent = await ops.usage_log(v.account_id, {}, limit=LAST_REQUESTS)
        return web.show(request, v, "dashboard.html", wallet=wallet, keys=keys, chart=daily_spend_svg(days),
                        total_30d=sum(cost for _, cost in days), recent=recent,
                        month=time.strftime("%B %Y", time.gmtime()))

    async def key_list(request: Request, v: Visitor) -> Response:
        return await _keys_page(request, v)

    async def _keys_page(request: Request, v: Visitor, revealed: dict[str, Any] | None = None,
                         problem: str | None = None, status: int = 200) -> Response:
        keys = await keys_with_spend(v.account_id)
        for key in keys:
            key["expires_on"] = expires_on(key.get("expires_at"))
        models = sorted(web.settings.models)
        if revealed is None and problem is None:
            return web.show(request, v, "keys.html", keys=keys, revealed=None, problem=None, models=models,
                            now=time.time())
        return web.render(v, "keys.html", status, keys=keys, revealed=revealed, problem=problem, models=models,
                          now=time.time())

    async def _answer(request: Request, v: Visitor, action: Any) -> Response:
        """Run a key operation; JSON for the page's script, else the keys page again (a secret shown once)."""
        try:
            result = await action(await web.form(request))
        except NotFoundError:
            raise NotFound from None
        except (FormError, OperationError) as exc:
            message = sentence(str(exc))
            if wants_json(request):
                return Response(orjson.dumps({"error": message}), status_code=400, media_type="application/json")
            return await _keys_page(request, v, problem=message, status=400)
        if "key" in result:  # a new secret: shown in this response only, never stored
            if wants_json(request):
                return Response(orjson.dumps({"id": result["id"], "name": result["name"], "key": result["key"],
                                              "display": result["display"]}), media_type="application/json")
            return await _keys_page(request, v, revealed=result)
        return web.back("/console/keys", result.pop("_note"), v)

    async def create_key(request: Request, v: Visitor) -> Response:
        async def action(form: dict[str, str]) -> dict[str, Any]:
            settings = key_settings(form, creating=True)
            return await ops.create_key(str(v.account_id), settings.pop("name", "default"), **settings)
        return await _answer(request, v, action)

    async def rotate_key(request: Request, v: Visitor) -> Response:
        key_id = request.path_params["key_id"]
        return await _answer(request, v, lambda form: ops.rotate_key(key_id, owner=v.account_id))

    def set_status(status: str, word: str) -> Any:
        async def endpoint(request: Request, v: Visitor) -> Response:
            async def action(form: dict[str, str]) -> dict[str, Any]:
                row = await ops.set_key(request.path_params["key_id"], owner=v.account_id, status=status)
                return {**row, "_note": f"The key {row['name']} is {word}."}
            return await _answer(request, v, action)
        return endpoint

    async def key_prices(request: Request, v: Visitor) -> Response:
        """The Model Prices table for one of the account's keys: only the models that key may use."""
        key_id = request.path_params["key_id"]
        key = next((k for k in await ops.list_keys(str(v.account_id)) if k["id"] == key_id), None)
        if key is None:
            raise NotFound
        allowed = key.get("models")
        models = {name: m for name, m in web.settings.models.items() if allowed is None or name in allowed}
        return web.show(request, v, "prices.html", rows=price_rows(models), key=key)

    async def update_key(request: Request, v: Visitor) -> Response:
        async def action(form: dict[str, str]) -> dict[str, Any]:
            row = await ops.set_key(request.path_params["key_id"], owner=v.account_id, **key_settings(form, False))
            return {**row, "_note": f"The key {row['name']} was saved."}
        return await _answer(request, v, action)

    return [
        Route("/dashboard", web.page(dashboard), methods=["GET"]),
        Route("/keys", web.page(key_list), methods=["GET"]),
        Route("/keys", web.page(create_key), methods=["POST"]),
        Route("/keys/{key_id:int}/rotate", web.page(rotate_key), methods=["POST"]),
        Route("/keys/{key_id:int}/disable", web.page(set_status("disabled", "disabled")), methods=["POST"]),
        Route("/keys/{key_id:int}/enable", web.page(set_status("active", "enabled")), methods=["POST"]),
        Route("/keys/{key_id:int}", web.page(update_key), methods=["POST"]),
        Route("/keys/{key_id:int}/prices", web.page(key_prices), methods=["GET"]),
    ]
