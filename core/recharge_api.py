"""The user's side of USDT recharge, under /v1/recharge (the console's Recharge and Recharge Records pages): create
an order (address, amount, payment URI, time left), follow it (pending, confirming k of N, credited, expired), list deposits."""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapters import openai
from billing import store
from billing.pricing import units_to_usd
from billing.recharge import addresses, amounts
from core.auth import admission_error, presented_key
from core.config import Chain, Settings
from core.errors import BadRequest, GatewayError, NotFound


class RechargeAPI:
    def __init__(self, settings: Settings, db: store.Store) -> None:
        self.settings = settings
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
                headers = dict(err.headers)
                return Response(openai.error_body(err.status, err.message, err.code, err.param, rid),
                                status_code=err.status, media_type="application/json", headers=headers)
            return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                            headers={"cache-control": "no-store"})

        return endpoint

    async def _account(self, request: Request) -> int:
        key = presented_key(request.scope)
        admission = await self.db.run(store.tx_check_key, key.hash, None, time.time())
        if admission.error:
            raise admission_error(admission, "-")
        return admission.account_id

    def _chain(self, name: Any) -> Chain:
        chain = self.settings.chains.get(name) if isinstance(name, str) else None
        if chain is None:
            names = ", ".join(sorted(self.settings.chains)) or "none is configured"
            raise BadRequest(f"'chain' must be one of: {names}", param="chain")
        return chain

    async def create_order(self, request: Request, account_id: int) -> tuple[int, dict[str, Any]]:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            raise BadRequest("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        chain = self._chain(body.get("chain"))
        amount = body.get("amount")
        if not isinstance(amount, str):
            raise BadRequest("'amount' is required, as a decimal string of USDT such as \"25\" or \"25.5\"",
                             param="amount")
        try:
            raw = amounts.raw_amount(amount, chain.decimals)
        except ValueError as exc:
            raise BadRequest(f"'amount': {exc}", param="amount") from None
        r = self.settings.recharge
        if amounts.credit_for(raw, chain.decimals, r.usd_per_usdt, r.fee) < r.minimum:
            raise BadRequest(f"the smallest recharge is {units_to_usd(r.minimum)} USD", param="amount")
        shown = addresses.deposit_address(chain.xpub, chain.kind, account_id)
        stored = addresses.tron_to_evm(shown) if chain.kind == "tron" else addresses.evm_key(shown)
        now = time.time()
        await self.db.run(store.tx_deposit_address, chain.name, account_id, stored, account_id, now)
        order_id = await self.db.run(store.tx_create_order, store.NewOrder(account_id, chain.name, stored, raw, now,
                                                                           now + r.order_ttl))
        (row,) = await self.db.run(store.tx_orders, account_id, order_id, now)
        return 201, self._order(row, now)

    async def list_orders(self, request: Request, account_id: int) -> tuple[int, dict[str, Any]]:
        now = time.time()
        rows = await self.db.run(store.tx_orders, account_id, None, now)
        return 200, {"object": "list", "data": [self._order(r, now) for r in rows]}

    async def get_order(self, request: Request, account_id: int) -> tuple[int, dict[str, Any]]:
        raw_id = request.path_params["order_id"]
        now = time.time()
        rows = await self.db.run(store.tx_orders, account_id, int(raw_id), now) if raw_id.isdigit() else []
        if not rows:  # another account's order is not found either
            raise NotFound(f"no recharge order {raw_id!r}", param="order_id")
        return 200, self._order(rows[0], now)

    async def list_deposits(self, request: Request, account_id: int) -> tuple[int, dict[str, Any]]:
        rows = await self.db.run(store.tx_deposits, account_id, 200)
        return 200, {"object": "list", "data": [self._deposit(r) for r in rows]}

    # -- shapes ---------------------------------------------------------------------------

    def _order(self, row: dict[str, Any], now: float) -> dict[str, Any]:
        chain = self.settings.chains.get(row["chain"])
        decimals = chain.decimals if chain else 6
        raw = int(row["amount_raw"])
        address = _shown(chain, row["address"])
        out: dict[str, Any] = {
            "id": row["id"], "object": "recharge.order", "chain": row["chain"], "status": row["status"],
            "address": address, "amount": amounts.tokens(raw, decimals), "token": "USDT",
            "created_at": int(row["created_at"]), "expires_at": int(row["expires_at"]),
            "expires_in": max(int(row["expires_at"] - now), 0) if row["status"] == "pending" else 0,
            "payment_uri": _payment_uri(chain, address, raw) if chain else None,
            "deposit_id": row["deposit_id"],
        }
        if row["status"] == "confirming" and chain is not None:
            seen = 0 if row["deposit_block"] is None else max(row["chain_head"] - row["deposit_block"] + 1, 0)
            out["confirmations"] = {"received": min(seen, chain.confirmations), "required": chain.confirmations}
        return out

    def _deposit(self, row: dict[str, Any]) -> dict[str, Any]:
        chain = self.settings.chains.get(row["chain"])
        return {"id": row["id"], "object": "recharge.deposit", "chain": row["chain"], "tx_hash": row["tx_hash"],
                "log_index": row["log_index"], "address": _shown(chain, row["address"]),
                "amount": amounts.tokens(int(row["amount_raw"]), chain.decimals if chain else 6),
                "credit_usd": units_to_usd(row["credit"]), "status": row["status"],
                "block_number": row["block_number"],
                "confirmations": {"received": store.confirmations(row, chain.confirmations) if chain else 0,
                                  "required": chain.confirmations if chain else 0},
                "order_id": row["order_id"], "note": row["note"],
                "seen_at": int(row["seen_at"]),
                "credited_at": int(row["credited_at"]) if row["credited_at"] is not None else None}


def _shown(chain: Chain | None, stored: str) -> str:
    """An address as a person pays to it: TRON's T-form, else EIP-55's checksummed 0x form."""
    if chain is not None and chain.kind == "tron":
        return addresses.evm_to_tron(stored)
    return addresses.checksummed(stored)


def _payment_uri(chain: Chain, address: str, raw: int) -> str:
    """EIP-681 for an ERC-20 transfer on EVM chains; TRON has no standard URI, so its wallets' common
    `tron:` form with the token contract and the amount in tokens."""
    if chain.kind == "tron":
        return f"tron:{address}?token={addresses.evm_to_tron(chain.contract)}&amount={amounts.tokens(raw, chain.decimals)}"
    at = f"@{chain.chain_id}" if chain.chain_id else ""
    return f"ethereum:{chain.contract}{at}/transfer?address={address}&uint256={raw}"
