"""USDT recharge orders for one account, whoever asks (the /v1/recharge API, the web console): create an order,
list orders and deposits, and their JSON shapes (address as paid to, payment URI, confirmations k of N)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from billing import store
from billing.pricing import units_to_usd, usd_text
from billing.recharge import addresses, amounts

if TYPE_CHECKING:  # billing does not import core at run time
    from core.config import Chain, Recharge

MAX_ORDER_ID = 2**63 - 1  # SQLite's largest INTEGER: a longer id is no order, not an overflow
MAX_ORDER_TOKENS = 10**9  # no order asks for more USDT than this (an operator credits anything larger by hand)


class OrderError(ValueError):
    """A recharge order refused as asked: `message` for the person, `param` the field at fault."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class RechargeDesk:
    """An account's recharge orders and deposits, over the store; callers authenticate the account first."""

    def __init__(self, chains: dict[str, Chain], recharge: Recharge, db: store.Store) -> None:
        self.chains = chains
        self.recharge = recharge
        self.db = db

    def chain_names(self) -> list[str]:
        return sorted(self.chains)

    def _chain(self, name: Any) -> Chain:
        chain = self.chains.get(name) if isinstance(name, str) else None
        if chain is None:
            names = ", ".join(self.chain_names()) or "none is configured"
            raise OrderError(f"'chain' must be one of: {names}", "chain")
        return chain

    async def create_order(self, account_id: int, chain: Any, amount: Any) -> dict[str, Any]:
        """A new pending order of `amount` USDT (a decimal string) on the chain named `chain`, shaped; raises
        OrderError for an unknown chain, an amount that is not a decimal string, or one below the minimum."""
        c = self._chain(chain)
        if not isinstance(amount, str):
            raise OrderError("'amount' is required, as a decimal string of USDT such as \"25\" or \"25.5\"", "amount")
        try:
            raw = amounts.raw_amount(amount, c.decimals)
        except ValueError as exc:
            raise OrderError(f"'amount': {exc}", "amount") from None
        r = self.recharge
        if amounts.credit_for(raw, c.decimals, r.usd_per_usdt, r.fee) < r.minimum:
            least = amounts.tokens(amounts.smallest_raw(r.minimum, c.decimals, r.usd_per_usdt, r.fee), c.decimals)
            kept = f", after the {amounts.decimal_text(r.fee * 100)}% fee" if r.fee else ""
            raise OrderError(f"the smallest recharge is {usd_text(r.minimum)} USD credited{kept}: send at least "
                             f"{least} USDT", "amount")
        if raw > MAX_ORDER_TOKENS * 10**c.decimals:
            raise OrderError(f"the largest recharge order is {MAX_ORDER_TOKENS:,} USDT", "amount")
        shown = addresses.deposit_address(c.xpub, c.kind, account_id)
        stored = addresses.tron_to_evm(shown) if c.kind == "tron" else addresses.evm_key(shown)
        now = time.time()
        await self.db.run(store.tx_deposit_address, c.name, account_id, stored, account_id, now)
        order_id = await self.db.run(store.tx_create_order, store.NewOrder(account_id, c.name, stored, raw, now,
                                                                           now + r.order_ttl))
        (row,) = await self.db.run(store.tx_orders, account_id, order_id, now)
        return shape_order(row, self.chains.get(row["chain"]), now)

    async def orders(self, account_id: int, order_id: int | None = None) -> list[dict[str, Any]]:
        """The account's orders, newest first (or the one with `order_id`, if it is the account's), shaped."""
        now = time.time()
        rows = await self.db.run(store.tx_orders, account_id, order_id, now)
        return [shape_order(row, self.chains.get(row["chain"]), now) for row in rows]

    async def order(self, account_id: int, raw_id: str) -> dict[str, Any] | None:
        """The order whose id is `raw_id` (as in a URL), shaped; None if there is none or it is another account's."""
        if not (raw_id.isascii() and raw_id.isdigit()) or int(raw_id) > MAX_ORDER_ID:
            return None
        found = await self.orders(account_id, int(raw_id))
        return found[0] if found else None

    async def deposits(self, account_id: int, limit: int = 200) -> list[dict[str, Any]]:
        """The account's recharge records, newest first, shaped."""
        rows = await self.db.run(store.tx_deposits, account_id, limit)
        return [shape_deposit(row, self.chains.get(row["chain"])) for row in rows]


# -- shapes (pure) ----------------------------------------------------------------------------------

def shape_order(row: dict[str, Any], chain: Chain | None, now: float) -> dict[str, Any]:
    """An order row of store.tx_orders as JSON; `chain` is its configured chain (None if no longer configured)."""
    decimals = chain.decimals if chain else 6
    raw = int(row["amount_raw"])
    address = shown_address(chain, row["address"])
    out: dict[str, Any] = {
        "id": row["id"], "object": "recharge.order", "chain": row["chain"], "status": row["status"],
        "address": address, "amount": amounts.tokens(raw, decimals), "token": "USDT",
        "created_at": int(row["created_at"]), "expires_at": int(row["expires_at"]),
        "expires_in": max(int(row["expires_at"] - now), 0) if row["status"] == "pending" else 0,
        "payment_uri": payment_uri(chain, address, raw) if chain else None,
        "deposit_id": row["deposit_id"],
    }
    if row["status"] == "confirming" and chain is not None:
        seen = 0 if row["deposit_block"] is None else max(row["chain_head"] - row["deposit_block"] + 1, 0)
        out["confirmations"] = {"received": min(seen, chain.confirmations), "required": chain.confirmations}
    return out


def shape_deposit(row: dict[str, Any], chain: Chain | None) -> dict[str, Any]:
    """A deposit row of store.tx_deposits as JSON; `chain` is its configured chain (None if no longer configured)."""
    return {"id": row["id"], "object": "recharge.deposit", "chain": row["chain"], "tx_hash": row["tx_hash"],
            "log_index": row["log_index"], "address": shown_address(chain, row["address"]),
            "amount": amounts.tokens(int(row["amount_raw"]), chain.decimals if chain else 6),
            "credit_usd": units_to_usd(row["credit"]), "status": row["status"],
            "block_number": row["block_number"],
            "confirmations": {"received": store.confirmations(row, chain.confirmations) if chain else 0,
                              "required": chain.confirmations if chain else 0},
            "order_id": row["order_id"], "note": row["note"],
            "seen_at": int(row["seen_at"]),
            "credited_at": int(row["credited_at"]) if row["credited_at"] is not None else None}


def shown_address(chain: Chain | None, stored: str) -> str:
    """An address as a person pays to it: TRON's T-form, else EIP-55's checksummed 0x form."""
    if chain is not None and chain.kind == "tron":
        return addresses.evm_to_tron(stored)
    return addresses.checksummed(stored)


def payment_uri(chain: Chain, address: str, raw: int) -> str:
    """EIP-681 for an ERC-20 transfer on EVM chains; TRON has no standard URI, so its wallets' common
    `tron:` form with the token contract and the amount in tokens."""
    if chain.kind == "tron":
        return f"tron:{address}?token={addresses.evm_to_tron(chain.contract)}&amount={amounts.tokens(raw, chain.decimals)}"
    at = f"@{chain.chain_id}" if chain.chain_id else ""
    return f"ethereum:{chain.contract}{at}/transfer?address={address}&uint256={raw}"
