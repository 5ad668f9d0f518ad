"""A key's balance for the key holder: TokenToll's own GET /v1/balance (exact USD strings), and the legacy OpenAI
billing routes (/dashboard/billing/subscription and /usage, with or without /v1) that chat front-ends read it from."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from billing import store
from billing.ledger import month_of
from billing.pricing import UNITS_PER_USD, units_to_usd
from core.auth import NO_RETRY, admission_error, presented_key
from core.dialects import error_response
from core.errors import GatewayError, NotFound

UNITS_PER_CENT = UNITS_PER_USD // 100
BALANCE_PATH = "/v1/balance"
SUBSCRIPTION_PATHS = ("/v1/dashboard/billing/subscription", "/dashboard/billing/subscription")
USAGE_PATHS = ("/v1/dashboard/billing/usage", "/dashboard/billing/usage")
DASHBOARD_PATHS = frozenset(SUBSCRIPTION_PATHS + USAGE_PATHS)  # one metrics label for all four


@dataclass(frozen=True, slots=True)
class KeyBalance:
    """One key's view of the books, in nano-dollars: its account's wallet and its own month."""

    available: int  # the account's balance less what is held: what any of its keys may start spending
    held: int  # the account's open holds, every key's
    month: str  # YYYY-MM, UTC: the month the key's monthly limit counts
    month_spent: int  # what this key has spent in that month
    key_held: int  # this key's open holds (counted against its monthly limit until they settle)
    monthly_limit: int | None  # None: no monthly limit
    expires_at: int | None

    @property
    def limit_left(self) -> int | None:
        """What the key's monthly limit still allows, as admission counts it (spent + open holds); None: no limit."""
        if self.monthly_limit is None:
            return None
        return max(self.monthly_limit - self.month_spent - self.key_held, 0)

    @property
    def spendable(self) -> int:
        """What this key can still spend: the wallet's available money, capped by what its limit leaves."""
        left = self.limit_left
        return max(self.available if left is None else min(self.available, left), 0)


def balance_body(b: KeyBalance) -> dict[str, Any]:
    """GET /v1/balance: every figure exact, as a USD decimal string with nine decimals."""
    limit_left = b.limit_left
    return {"object": "balance", "currency": "USD", "available_usd": units_to_usd(b.available),
            "held_usd": units_to_usd(b.held), "month": b.month, "month_spent_usd": units_to_usd(b.month_spent),
            "key_held_usd": units_to_usd(b.key_held),
            "monthly_limit_usd": units_to_usd(b.monthly_limit) if b.monthly_limit is not None else None,
            "monthly_limit_left_usd": units_to_usd(limit_left) if limit_left is not None else None,
            "spendable_usd": units_to_usd(b.spendable)}


def legacy_used_cents(b: KeyBalance) -> int:
    """total_usage: the key's spend this month in whole US cents, rounded up (never shows less spent than was)."""
    return -(-b.month_spent // UNITS_PER_CENT)


def legacy_limit_cents(b: KeyBalance) -> int:
    """hard_limit_usd in cents: the used cents plus what the key can still spend, rounded down to a cent, so that a
    client's hard_limit_usd - total_usage / 100 is never more than the key can spend. A whole number of cents,
    which a client's own rounding to cents leaves as it is."""
    return legacy_used_cents(b) + b.spendable // UNITS_PER_CENT


def dollars_number(cents: int) -> orjson.Fragment:
    """Cents (never negative) as the exact JSON number of dollars these clients parse (1234 -> 12.34), written
    from integers."""
    assert cents >= 0
    return orjson.Fragment(f"{cents // 100}.{cents % 100:02d}".encode())


def subscription_body(b: KeyBalance) -> dict[str, Any]:
    """The legacy OpenAI subscription object, as new-api serves it (the three limits alike)."""
    limit = dollars_number(legacy_limit_cents(b))
    return {"object": "billing_subscription", "has_payment_method": True, "soft_limit_usd": limit,
            "hard_limit_usd": limit, "system_hard_limit_usd": limit, "access_until": b.expires_at or 0}


def usage_body(b: KeyBalance) -> dict[str, Any]:
    """The legacy OpenAI usage object: total_usage in US cents, for this key's UTC month whatever the dates asked."""
    return {"object": "list", "total_usage": legacy_used_cents(b)}


class BalanceAPI:
    """HTTP over tx_key_balance: the key from the request, JSON out. Read-only, so a key restricted to some models
    may read it too (a 402 already tells such a key how much its account has available)."""

    def __init__(self, db: store.Store, billing: bool) -> None:
        self.db = db
        self.billing = billing

    def routes(self) -> list[Route]:
        return [
            Route(BALANCE_PATH, self._guarded(balance_body), methods=["GET"]),
            *(Route(path, self._guarded(subscription_body), methods=["GET"]) for path in SUBSCRIPTION_PATHS),
            *(Route(path, self._guarded(usage_body), methods=["GET"]) for path in USAGE_PATHS),
        ]

    def _guarded(self, shape: Callable[[KeyBalance], dict[str, Any]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            rid = request.scope.get("tt_request_id", "")
            try:
                body = shape(await self._balance(request))
            except GatewayError as err:
                return error_response("openai", err.status, err.message, err.code, err.param, rid,
                                      {**err.headers, "cache-control": "no-store"})
            return Response(orjson.dumps(body), media_type="application/json", headers={"cache-control": "no-store"})

        return endpoint

    async def _balance(self, request: Request) -> KeyBalance:
        if not self.billing:  # no key is checked and nothing is charged: there is no balance to show
            raise NotFound("this gateway runs with billing.enabled = false: it keeps no balance and no spend",
                           code="billing_disabled", headers=NO_RETRY)
        key = presented_key(request.scope)
        now = time.time()
        month = month_of(now)
        admission, figures = await self.db.run(store.tx_key_balance, key.hash, now, month)
        if admission.error or figures is None:
            raise admission_error(admission, "-")
        return KeyBalance(available=figures["balance"] - figures["held"], held=figures["held"], month=month,
                          month_spent=figures["month_spent"], key_held=figures["key_held"],
                          monthly_limit=figures["monthly_limit"], expires_at=figures["expires_at"])
