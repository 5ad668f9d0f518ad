"""The recharge service inside the gateway: one watcher per configured chain, each run by one process at a time
(a lease, as the safety net's), over a session of its own; each watcher's lag is read for /metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from billing import store
from billing.ledger import Ledger
from billing.recharge.evm import TRON_MAX_SPAN, EvmClient
from billing.recharge.watcher import ChainSettings, Watcher

log = logging.getLogger("tokentoll.recharge")


class RechargeService:
    def __init__(self, chains: dict[str, Any], recharge: Any, ledger: Ledger, db: store.Store, holder: str,
                 on_rpc_error: Callable[[str], None] | None = None) -> None:
        self.on_rpc_error = on_rpc_error
        self.chains = chains  # name -> core.config.Chain
        self.recharge = recharge  # core.config.Recharge
        self.ledger = ledger
        self.db = db
        self.holder = holder
        self.watchers: dict[str, Watcher] = {}
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if not self.chains:
            return
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        r = self.recharge
        for name, c in self.chains.items():
            client = EvmClient(self._session, c.rpc_url, chain=name, max_span=TRON_MAX_SPAN if c.kind == "tron" else None)
            settings = ChainSettings(name, c.contract, c.decimals, c.confirmations, c.batch_blocks, c.poll_interval,
                                     c.start_block, r.usd_per_usdt, r.fee, r.minimum)
            watcher = self.watchers[name] = Watcher(settings, client, self.ledger, self.db)
            if self.on_rpc_error is not None:
                watcher.on_error = lambda chain=name: self.on_rpc_error(chain)  # type: ignore[misc]
            self._tasks.append(asyncio.create_task(self._lead(name, watcher), name=f"tokentoll-recharge-{name}"))

    async def _lead(self, name: str, watcher: Watcher) -> None:
        """Run the chain's watcher while this process holds its lease; another process takes over when it stops."""
        lease = f"recharge:{name}"
        interval = watcher.settings.poll_interval
        while True:
            try:
                if await self.db.run(store.tx_take_lease, lease, self.holder, time.time(), interval * 3 + 5):
                    await watcher.step()
                    continue
            except store.StoreClosed:
                return
            except Exception:  # noqa: BLE001 - the lease read failed: try again later
                log.exception("recharge lease for %s", name)
            await asyncio.sleep(interval)

    def lags(self) -> dict[str, int]:
        return {name: w.lag for name, w in self.watchers.items()}

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for name in self.watchers:  # give the leases up, so that a restarted process takes over at once
            try:
                await self.db.run(store.tx_drop_lease, f"recharge:{name}", self.holder)
            except store.StoreClosed:
                break
        if self._session is not None:
            await self._session.close()
            self._session = None
