"""The ledger: the only code that moves money. It prices, holds, settles, releases and credits,
through the store's transactions, in integer nano-dollars (see billing/pricing.py for the unit and rounding)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from billing import pricing, store
from billing.keys import NewKey, Presented
from billing.metering import Usage, UsageRecord
from billing.pricing import TokenPrices


_month_cache: tuple[float, float, str] = (0.0, 0.0, "")
KNOWN_KEY_SECONDS = 10.0  # a key found valid is not looked up again before costly work for this long
KNOWN_KEYS_MAX = 65536  # keys remembered as valid; only valid keys enter, and the memo is cleared when full
# The HTTP-like status on the usage row of a hold the safety net closes (the request's own settlement, if it comes,
# writes its real one): the process serving it stopped (the gateway failed it), or it outlived billing.hold_ttl.
STOPPED_STATUS = 500
OUTLIVED_STATUS = 504


@dataclass(slots=True)
class ClosedHold:
    """A hold the safety net closed: how old it was then, and why (its process stopped, or it outlived the TTL)."""

    request_id: str
    age: float
    stopped: bool


def month_of(ts: float) -> str:
    """The UTC calendar month of a timestamp, as YYYY-MM (cached for the month in progress)."""
    global _month_cache
    start, end, name = _month_cache
    if start <= ts < end:
        return name
    moment = datetime.fromtimestamp(ts, tz=timezone.utc)
    first = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = first.replace(year=first.year + (first.month == 12), month=first.month % 12 + 1)
    _month_cache = (first.timestamp(), following.timestamp(), first.strftime("%Y-%m"))
    return _month_cache[2]


class Ledger:
    def __init__(self, db: store.Store, default_rpm: int, default_tpm: int, owner: str = "",
                 on_failure: Callable[[], None] | None = None,
                 on_settled: Callable[[store.Settled], None] | None = None) -> None:
        self.db = db
        self.default_rpm = default_rpm
        self.default_tpm = default_tpm
        self.owner = owner  # this process, on every hold it places (see billing/safetynet.py)
        self.on_failure = on_failure  # called when a hold or settle transaction raises (a metric, an alert)
        self.on_settled = on_settled  # called with each committed settlement that changed the books (not a replay)
        self._known_keys: dict[bytes, tuple[float, store.Admission]] = {}  # key hash -> (valid until, who)

    def _failed(self) -> None:
        if self.on_failure is not None:
            self.on_failure()

    async def admit(self, request_id: str, key: Presented, model: str, prices: TokenPrices, prompt_estimate: int,
                    max_output: int) -> store.Admission:
        """Authenticate the key and hold the most this request can cost, in one transaction. A caller cancelled
        before the transaction begins gets no hold (its settlement then finds none and charges nothing), so a
        cancellation must end the request: no wait_for or shield around this that goes on to forward it."""
        now = time.time()
        amount = pricing.hold_amount(prices, prompt_estimate, max_output)
        estimate = pricing.token_cost(prices, Usage(prompt_estimate, 0))
        try:
            return await self.db.run_hot_each(store.tx_admit_all, store.HoldRequest(
                request_id=request_id, owner=self.owner, key_hash=key.hash, model=model, amount=amount,
                estimate=estimate, tokens=prompt_estimate + max_output, now=now, month=month_of(now),
                window=int(now // 60), default_rpm=self.default_rpm, default_tpm=self.default_tpm,
                prompt_tokens=prompt_estimate), abandonable=True)
        except Exception:
            self._failed()
            raise

    async def admit_amount(self, request_id: str, key: Presented, model: str, amount: int, kind: str = "request",
                           estimate: int = 0) -> store.Admission:
        """Authenticate the key and hold a priced amount (images by the image, async tasks, cache hits) in one
        transaction. `estimate` is what the safety net charges if the request never settles itself; `kind`
        "task" leaves the hold to the task poller."""
        now = time.time()
        try:
            return await self.db.run_hot_each(store.tx_admit_all, store.HoldRequest(
                request_id=request_id, owner=self.owner, key_hash=key.hash, model=model, amount=amount,
                estimate=estimate, tokens=0, now=now, month=month_of(now), window=int(now // 60),
                default_rpm=self.default_rpm, default_tpm=self.default_tpm, kind=kind), abandonable=True)
        except Exception:
            self._failed()
            raise

    async def authenticate(self, key: Presented, now: float | None = None) -> store.Admission:
        """Whether the key exists, is enabled and has not expired: asked before any costly work is done for its
        request (reading and parsing the body, counting tokens, fetching media). A key found valid in the last
        KNOWN_KEY_SECONDS is not looked up again; the hold that follows checks it in full, so a key disabled or
        rotated in that time still gets no work from the upstream."""
        now = time.monotonic() if now is None else now
        known = self._known_keys.get(key.hash)
        if known is not None and known[0] > now:
            return known[1]
        found = await self.check_key(key, None)
        if not found.error:
            if len(self._known_keys) >= KNOWN_KEYS_MAX:
                self._known_keys.clear()
            self._known_keys[key.hash] = (now + KNOWN_KEY_SECONDS, found)
        return found

    async def check_key(self, key: Presented, model: str | None) -> store.Admission:
        """Whether the key may use the model, without holding anything (unbilled calls)."""
        return await self.db.run_hot(store.tx_check_key, key.hash, model, time.time())

    async def settle(self, request_id: str, prices: TokenPrices, record: UsageRecord, status: int,
                     duration_ms: float | None, held: tuple[int, int], full_prices: TokenPrices | None = None,
                     busy: bool = False) -> store.Settled | None:
        """Charge what the usage record says (nothing for source "none"), never more than the hold, and release
        the rest. `held` is what the hold was sized for (prompt tokens, most output tokens): a usage that costs
        more than the hold is charged the hold, and the store records the rest as an overrun, with the tokens past
        `held`. The saving recorded is the usage at `full_prices` (the model's, where `prices` are a cache hit's)
        less the cost. `busy` (other requests are in flight, the answer has gone): it may wait a few ms to commit
        with theirs."""
        if record.source == "none":
            return await self._settle(request_id, 0, record, status, duration_ms, deferred=busy)
        cost = pricing.token_cost(prices, record.usage)
        savings = pricing.full_price_cost(full_prices or prices, record.usage) - cost
        return await self._settle(request_id, cost, record, status, duration_ms, savings=max(savings, 0),
                                  deferred=busy, overrun_tokens=pricing.overrun_tokens(record.usage, *held))

    async def settle_amount(self, request_id: str, cost: int, record: UsageRecord, status: int,
                            duration_ms: float | None, units: int = 0, by: str = "request") -> store.Settled | None:
        """Charge a priced amount (images returned, a completed task; 0 for none) and release the rest."""
        return await self._settle(request_id, cost, record, status, duration_ms, by=by, units=units)

    async def _settle(self, request_id: str, cost: int, record: UsageRecord, status: int,
                      duration_ms: float | None, by: str = "request", savings: int = 0,
                      units: int = 0, deferred: bool = False, overrun_tokens: int = 0) -> store.Settled | None:
        now = time.time()
        u = record.usage
        try:
            settled = await self.db.run_hot_each(store.tx_settle_all, store.Settlement(
                request_id=request_id, cost=cost, input_tokens=u.in_total, output_tokens=u.out_total,
                cache_read_tokens=u.cache_read, cache_write_tokens=u.cache_write, source=record.source,
                status=status, duration_ms=duration_ms, now=now, month=month_of(now), by=by, savings=savings,
                units=units, overrun_tokens=overrun_tokens), deferred=deferred)
        except Exception:
            self._failed()
            raise
        if settled is not None and not settled.already and self.on_settled is not None:
            self.on_settled(settled)
        return settled

    async def settle_stale(self, older_than: float, batch: int = 500) -> list[ClosedHold]:
        """The safety net's pass: every hold open for longer than `older_than` seconds, or placed by a
        process whose heartbeat has lapsed, is settled at its prompt estimate (source "estimate", the prompt
        tokens it was sized for as input, status STOPPED_STATUS or OUTLIVED_STATUS). If its request does end
        later, its own settle charges or returns the difference. Returns the holds it closed."""
        closed: list[ClosedHold] = []
        while True:
            now = time.time()
            stale = await self.db.run(store.tx_stale_holds, now - older_than, now, batch)
            for hold in stale:
                record = UsageRecord(Usage(hold["prompt_tokens"], 0), "estimate")
                status = STOPPED_STATUS if hold["stopped"] else OUTLIVED_STATUS
                settled = await self._settle(hold["request_id"], hold["estimate"], record, status, None,
                                             by="safety_net")
                if settled is not None and not settled.already:
                    closed.append(ClosedHold(hold["request_id"], now - hold["created_at"], hold["stopped"]))
            if len(stale) < batch:
                return closed

    async def credit(self, account_id: int, amount: int, note: str) -> int:
        return await self.db.run(store.tx_credit, account_id, amount, "credit", note, time.time())

    async def open_account(self, name: str, credit: int) -> dict[str, object]:
        """A new account and its first credit, in one transaction."""
        return await self.db.run(store.tx_create_account, name, time.time(), credit, "initial credit")

    async def open_demo_account(self, key: NewKey, balance: int) -> bool:
        """The demo account with its balance and key, only on a database that has no account yet."""
        return await self.db.run(store.tx_bootstrap_demo, key.display, key.hash, balance, time.time())

    async def credit_deposit(self, deposit_id: int, note: str | None = None) -> int | None:
        """A final USDT deposit, credited to its account once (see store.tx_credit_deposit); with an operator's
        note, also a deposit held below the minimum."""
        try:
            return await self.db.run(store.tx_credit_deposit, deposit_id, time.time(), note)
        except Exception:
            self._failed()
            raise

    async def adjust(self, account_id: int, amount: int, note: str) -> int:
        return await self.db.run(store.tx_credit, account_id, amount, "adjustment", note, time.time())
