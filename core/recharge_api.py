"""The user's side of USDT recharge, under /v1/recharge (the console's Recharge and Recharge Records pages): create
an order (address, amount, payment URI, time left), follow it, list deposits; with a key not restricted to models."""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from billing import store
from billing.recharge.orders import OrderError, RechargeDesk
from core.auth import NO_RETRY, admission_error, presented_key
from core.dialects import error_response
from core.errors import BadRequest, GatewayError, NotFound, PermissionDenied


class RechargeAPI:
    """HTTP over the RechargeDesk (billing/recharge/orders.py): the account from the API key, JSON in and out."""

    def __init__(self, desk: RechargeDesk, db: store.Store) -> None:
        self.desk = desk
        self.db = db

    def routes(self) -> list[Route]:
        return [
            Route("/v1/recharge/orders", self._guarded(self.create_order), methods=["POST"]),
            Route("/v1/recharge/orders", self._guarded(self.list_orders), methods=["GET"]),
            Route("/v1/recharge/orders/{order_id}", self._guarded(self.get_order), methods=["GET"]),
            Route("/v1/recharge/deposits", self._guarded(self.list_deposits), methods=["GET"]),
        ]

    def _guarded(self, handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            rid = request.scope.get("tt_request_id", "")
            try:
                account_id = await self._account(request)
                status, body = await handler(request, account_id)
            except GatewayError as err:
                return error_response("openai", err.status, err.message, err.code, err.param, rid, err.headers)
            return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                            headers={"cache-control": "no-store"})

        return endpoint

    async def _account(self, request: Request) -> int:
        """The key's account. A key restricted to some models is refused (403) on every verb: orders and deposits
        are bound to no model, and they move money for the whole account."""
        key = presented_key(request.scope)
        admission, models = await self.db.run(store.tx_key_scope, key.hash, time.time())
        if admission.error:
            raise admission_error(admission, "-")
        if models is not None:
            raise PermissionDenied("this API key is restricted to some models, and recharge orders and deposits "
                                   "belong to the whole account: use an API key with no model restriction, or the "
                                   "console's Recharge pages", code="api_key_restricted", headers=NO_RETRY)
        return admission.account_id

    async def create_order(self, request: Request, account_id: int) -> tuple[int, dict[str, Any]]:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            raise BadRequest("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        try:
            return 201, await self.desk.create_order(account_id, body.get("chain"), body.get("amount"))
        except OrderError as err:
            raise BadRequest(err.message, param=err.param) from None

    async def list_orders(self, request: Request, account_id: int) -> tuple[int, dict[str, Any]]:
        return 200, {"object": "list", "data": await self.desk.orders(account_id)}

    async def get_order(self, request: Request, account_id: int) -> tuple[int, dict[str, Any]]:
        raw_id = request.path_params["order_id"]
        order = await self.desk.order(account_id, raw_id)
        if order is None:  # another account's order is not found either
            raise NotFound(f"no recharge order {raw_id!r}", param="order_id")
        return 200, order

    async def list_deposits(self, request: Request, account_id: int) -> tuple[int, dict[str, Any]]:
        return 200, {"object": "list", "data": await self.desk.deposits(account_id)}
