"""The admin HTTP API under /admin: the operator's CLI operations over HTTP, behind an admin token.
The token is stored hashed; it comes from $TOKENTOLL_ADMIN_TOKEN, or is generated and printed once at first start."""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from billing import store
from billing.keys import BASE62, digest
from core.operations import OperationError, Operations

ADMIN_TOKEN_ENV = "TOKENTOLL_ADMIN_TOKEN"
Handler = Callable[[Request], Awaitable[Any]]


class AdminAPI:
    def __init__(self, ops: Operations, db: store.Store) -> None:
        self.ops = ops
        self.db = db
        self.token_hash = b""

    async def start(self) -> str | None:
        """Settle the admin token. Returns a newly generated token, to be printed once."""
        from_env = os.environ.get(ADMIN_TOKEN_ENV, "")
        if from_env:
            self.token_hash = digest(from_env)
            return None
        token = "tt-admin-" + "".join(secrets.choice(BASE62) for _ in range(40))
        stored, created = await self.db.run(store.tx_setting, "admin_token_sha256", digest(token).hex())
        self.token_hash = bytes.fromhex(stored)
        return token if created else None

    def routes(self) -> list[Route]:
        o = self.ops
        return [
            self._route("/admin/accounts", "GET", lambda r: o.list_accounts()),
            self._route("/admin/accounts", "POST", lambda r: self._with_body(r, lambda b: o.create_account(
                _text(b, "name"), _opt(b, "credit")))),
            self._route("/admin/keys", "GET", lambda r: o.list_keys(r.query_params.get("account"))),
            self._route("/admin/keys", "POST", lambda r: self._with_body(r, lambda b: o.create_key(
                _text(b, "account"), _opt(b, "name") or "default", **_limits(b, creating=True)))),
            self._route("/admin/keys/{key_id:int}/rotate", "POST", lambda r: o.rotate_key(r.path_params["key_id"])),
            self._route("/admin/keys/{key_id:int}/disable", "POST",
                        lambda r: o.set_key(r.path_params["key_id"], status="disabled")),
            self._route("/admin/keys/{key_id:int}/enable", "POST",
                        lambda r: o.set_key(r.path_params["key_id"], status="active")),
            self._route("/admin/keys/{key_id:int}", "PATCH", lambda r: self._with_body(
                r, lambda b: o.set_key(r.path_params["key_id"], **_limits(b)))),
            self._route("/admin/wallets/{account}", "GET", lambda r: o.wallet(r.path_params["account"])),
            self._route("/admin/wallets/{account}/history", "GET", lambda r: o.history(
                r.path_params["account"], int(r.query_params.get("limit", "50")))),
            self._route("/admin/wallets/{account}/credit", "POST", lambda r: self._with_body(r, lambda b: o.credit(
                r.path_params["account"], _text(b, "usd"), _opt(b, "note") or "operator credit"))),
            self._route("/admin/wallets/{account}/adjust", "POST", lambda r: self._with_body(r, lambda b: o.adjust(
                r.path_params["account"], _text(b, "usd"), _text(b, "note")))),
            self._route("/admin/usage", "GET", lambda r: o.usage(
                r.query_params.get("account"), _int_param(r, "key"), r.query_params.get("month"))),
            self._route("/admin/usage/{request_id}", "GET", lambda r: o.request_usage(r.path_params["request_id"])),
            self._route("/admin/holds", "GET", lambda r: o.holds()),
            self._route("/admin/recharge/addresses", "POST", lambda r: self._with_body(r, lambda b: o.recharge_address(
                _text(b, "account"), _text(b, "chain")))),
            self._route("/admin/recharge/deposits", "GET", lambda r: o.deposits(
                r.query_params.get("account"), _int_param(r, "limit") or 100)),
            self._route("/admin/recharge/orders", "GET", lambda r: o.orders(
                r.query_params.get("account"), _int_param(r, "limit") or 100)),
            self._route("/admin/recharge/deposits/{deposit_id:int}/credit", "POST", lambda r: self._with_body(
                r, lambda b: o.credit_deposit(r.path_params["deposit_id"], _text(b, "note")))),
            self._route("/admin/recharge/chains/{chain}/rescan", "POST", lambda r: self._with_body(
                r, lambda b: o.rescan(r.path_params["chain"], _integer(b, "from_block")))),
        ]

    def _route(self, path: str, method: str, handler: Handler) -> Route:
        async def endpoint(request: Request) -> Response:
            if not self._authorized(request):
                return _error(401, "admin token missing or wrong: send 'Authorization: Bearer <admin token>'",
                              "invalid_admin_token")
            try:
                result = await handler(request)
            except OperationError as exc:
                return _error(404 if str(exc).startswith("no ") else 400, str(exc), "invalid_request")
            except (ValueError, TypeError) as exc:
                return _error(400, str(exc), "invalid_request")
            status = 201 if method == "POST" and path in ("/admin/accounts", "/admin/keys") else 200
            return Response(orjson.dumps(result), status_code=status, media_type="application/json",
                            headers={"cache-control": "no-store"})

        return Route(path, endpoint, methods=[method])

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return bool(self.token_hash) and scheme.lower() == "bearer" and \
            hmac.compare_digest(digest(token), self.token_hash)

    @staticmethod
    async def _with_body(request: Request, call: Callable[[dict[str, Any]], Awaitable[Any]]) -> Any:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            raise OperationError("the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise OperationError("the body must be a JSON object")
        return await call(body)


def _error(status: int, message: str, code: str) -> Response:
    return Response(orjson.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                            "code": code}}), status_code=status, media_type="application/json")


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and name == "usd":
        raise OperationError(f"'{name}' must be a string such as \"12.50\" (exact decimals, never a float)")
    if not isinstance(value, str) or not value:
        raise OperationError(f"'{name}' is required and must be a string")
    return value


def _opt(body: dict[str, Any], name: str) -> str | None:
    return _text(body, name) if body.get(name) is not None else None


def _limits(body: dict[str, Any], creating: bool = False) -> dict[str, Any]:
    """Key settings from a JSON body, passed on as they are (Operations checks them); null clears one.
    On creation `account` and `name` are read by the caller."""
    allowed = ("monthly_limit", "models", "rpm", "tpm", "expires_at") + (() if creating else ("name",))
    unknown = [k for k in body if k not in allowed and not (creating and k in ("account", "name"))]
    if unknown:
        raise OperationError(f"unknown field(s): {', '.join(unknown)}")
    return {k: ("none" if body[k] is None else body[k]) for k in allowed if k in body}


def _integer(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise OperationError(f"'{name}' is required and must be an integer")
    return value


def _int_param(request: Request, name: str) -> int | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    if not value.isdigit():
        raise OperationError(f"'{name}' must be a number")
    return int(value)
