"""The chain watcher: scans a chain's USDT transfers to our deposit addresses from a cursor stored in the database,
credits each deposit once it is final (N confirmations, its block hash checked), and drops what a reorg removed."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from billing import store
from billing.ledger import Ledger
from billing.recharge.amounts import credit_for

log = logging.getLogger("tokentoll.recharge")


@dataclass(frozen=True)
class ChainSettings:
    name: str
    contract: str  # the USDT contract, 0x + 40 lower-case hex
    decimals: int
    confirmations: int  # a block is final once this many blocks (itself included) are on top of the chain
    batch_blocks: int = 2000  # the widest eth_getLogs range asked at once
    poll_interval: float = 5.0
    start_block: int | None = None  # where the first scan begins (None: the chain's head at the first start)
    usd_per_token: Decimal = Decimal(1)
    fee: Decimal = Decimal(0)
    minimum: int = 0  # nano-dollars: smaller deposits are recorded and credited only by an operator


class TransferLike(Protocol):
    tx_hash: str
    log_index: int
    recipient: str
    amount_raw: int
    block_number: int
    block_hash: str


class ChainClient(Protocol):
    """What the watcher needs of a chain (billing/recharge/evm.py's EvmClient)."""

    async def block_number(self) -> int: ...

    async def block_hash(self, number: int) -> str | None: ...

    async def transfer_logs(self, contract: str, recipients: list[str], from_block: int,
                            to_block: int) -> list[Any]: ...


@dataclass(slots=True)
class PassResult:
    head: int
    scanned_to: int  # the last block scanned in this pass (cursor - 1 when nothing was)
    found: int  # deposits new in this pass
    credited: int
    dropped: int


class Watcher:
    """One chain's watcher. `run_pass` is one scan-and-confirm; `run` repeats it, backing off after errors
    (nothing is skipped: the cursor moves only past blocks scanned and final)."""

    def __init__(self, settings: ChainSettings, client: ChainClient, ledger: Ledger, db: store.Store) -> None:
        self.settings = settings
        self.client = client
        self.ledger = ledger
        self.db = db
        self.lag = 0  # head minus cursor, after the last pass (for /metrics)
        self.errors = 0  # failed passes in a row
        self.on_error: Callable[[], None] | None = None  # told of each failed pass (a metric)

    def seen(self, t: TransferLike) -> store.SeenTransfer:
        s = self.settings
        credit = credit_for(t.amount_raw, s.decimals, s.usd_per_token, s.fee)
        return store.SeenTransfer(t.tx_hash, t.log_index, t.recipient, t.amount_raw, t.block_number, t.block_hash,
                                  credit, held=credit < s.minimum)

    async def run_pass(self) -> PassResult:
        s = self.settings
        head = await self.client.block_number()
        now = time.time()
        cursor = await self.db.run(store.tx_cursor, s.name, s.start_block if s.start_block is not None else head, now,
                                   head)
        addresses = list(await self.db.run(store.tx_watched_addresses, s.name))
        found = 0
        scanned_to = cursor - 1
        if addresses:  # every block from the cursor to the head, the unconfirmed ones again each pass
            start = cursor
            while start <= head:
                end = min(start + s.batch_blocks - 1, head)
                transfers = await self.client.transfer_logs(s.contract, addresses, start, end)
                # zero-value transfers are address-poisoning spam, not deposits
                found += await self.db.run(store.tx_record_transfers, s.name,
                                           [self.seen(t) for t in transfers if t.amount_raw > 0], time.time())
                scanned_to, start = end, end + 1
        else:
            scanned_to = head  # no address yet: nothing to find in these blocks
        final = head - s.confirmations + 1  # the highest block with enough confirmations
        credited = dropped = 0
        for deposit in await self.db.run(store.tx_deposits_to_confirm, s.name, min(final, scanned_to)):
            current = await self.client.block_hash(deposit["block_number"])
            if current == deposit["block_hash"]:
                if await self.ledger.credit_deposit(deposit["id"]) is not None:
                    credited += 1
                    log.info("credited deposit %s on %s to account %s", deposit["id"], s.name, deposit["account_id"])
            elif await self.db.run(store.tx_drop_deposit, deposit["id"], "its block was replaced (a reorg) and "
                                   "this scan found the transfer in no block"):
                dropped += 1  # found again later, it becomes a deposit again
                log.warning("dropped deposit %s on %s: its block was replaced", deposit["id"], s.name)
        cursor = await self.db.run(store.tx_advance_cursor, s.name, min(final, scanned_to) + 1, time.time(), head)
        self.lag = max(head - cursor, 0)
        return PassResult(head, scanned_to, found, credited, dropped)

    async def step(self) -> None:
        """One pass, then the wait before the next: the poll interval, or after a failure (an RPC outage, a rate
        limit) a growing back-off, at least the rate limit's own Retry-After. The next pass scans the same blocks
        again: nothing is skipped."""
        try:
            await self.run_pass()
            self.errors = 0
            delay = self.settings.poll_interval
        except (asyncio.CancelledError, store.StoreClosed):
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the chain or its RPC: back off and retry
            self.errors += 1
            if self.on_error is not None:
                self.on_error()
            delay = min(self.settings.poll_interval * 2 ** min(self.errors, 6), 300.0) * random.uniform(0.8, 1.2)
            delay = max(delay, getattr(exc, "retry_after", None) or 0.0)
            log.warning("%s watcher pass failed (%s); again in %.0f s", self.settings.name, type(exc).__name__,
                        delay)
        await asyncio.sleep(delay)
