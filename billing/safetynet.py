"""The safety net: a background task that closes every hold left open longer than the configured TTL,
and at once those of a process that died (its heartbeat lease lapsed). One process sweeps at a time."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time

from billing import store
from billing.background import repeat
from billing.ledger import Ledger

log = logging.getLogger("tokentoll.safetynet")
LEASE = "safety-net"


def owner_id() -> str:
    """A name for this process, unique across hosts and restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class SafetyNet:
    def __init__(self, ledger: Ledger, db: store.Store, hold_ttl: float, interval: float) -> None:
        self.ledger = ledger
        self.db = db
        self.hold_ttl = hold_ttl
        self.interval = interval
        self.holder = ledger.owner or owner_id()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(repeat(self._pass, self.interval, "safety net pass"),
                                         name="tokentoll-safety-net")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def heartbeat(self) -> None:
        """This process is alive: its holds are its own to settle. Must run before the first hold."""
        await self.db.run(store.tx_take_lease, "worker:" + self.holder, self.holder, time.time(), self.interval * 3)

    async def sweep(self) -> int:
        """One pass, if this process holds the lease. Returns how many holds it closed."""
        if not await self.db.run(store.tx_take_lease, LEASE, self.holder, time.time(), self.interval * 3):
            return 0
        closed = await self.ledger.settle_stale(self.hold_ttl)
        stopped = [hold.age for hold in closed if hold.stopped]
        outlived = [hold.age for hold in closed if not hold.stopped]
        if stopped:
            log.warning("safety net closed %d hold(s) of a process that stopped (oldest %.0f s)", len(stopped),
                        max(stopped))
        if outlived:
            log.warning("safety net closed %d hold(s) open for more than billing.hold_ttl = %g s (oldest %.0f s)",
                        len(outlived), self.hold_ttl, max(outlived))
        return len(closed)

    async def _pass(self) -> None:
        await self.heartbeat()
        await self.sweep()
