"""The account holder's pages: the dashboard (wallet, this month's spend per key, 30 days of spend, the last
requests) and API keys (create and rotate with the secret shown once, disable, enable, limits). Each change calls Operations."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from core.console.charts import daily_spend_svg
from core.console.web import ConsoleWeb, FormError, NotFound, Visitor, sentence
from core.operations import NotFoundError, OperationError

CHART_DAYS = 30
LAST_REQUESTS = 10
KEY_SETTINGS = ("name", "monthly_limit", "models", "rpm", "tpm", "expires_at")


def wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def key_settings(form: dict[str, str], creating: bool) -> dict[str, Any]:
    """A key form's fields as Operations takes them: an empty field clears a limit (or, creating, sets none)."""
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
    if out.get("expires_at") not in (None, "none"):
        out["expires_at"] = _end_of_day(out["expires_at"])
        try:
            moment = datetime.fromisoformat(out["expires_at"])
        except ValueError:
            return out  # Operations says what is wrong with it
        if (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp() <= time.time():
            raise FormError("Expires on: that day has passed (disable the key to stop it now).")
    return out


def _end_of_day(text: str) -> str:
    """A bare date (what an <input type=date> sends) means the end of that day, UTC."""
    if len(text) == 10 and text[4] == "-" and text[7] == "-":
        return text + "T23:59:59+00:00"
    return text


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
            key["expires_on"] = (datetime.fromtimestamp(key["expires_at"], timezone.utc).strftime("%Y-%m-%d")
                                 if key.get("expires_at") else "")
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
    ]
