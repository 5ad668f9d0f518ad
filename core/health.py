"""Upstream health across workers: each worker tallies its upstream attempts and failures per provider and
minute in memory, and writes them to the store every few seconds, where the console's Admin page adds them up."""

from __future__ import annotations

import time

from billing import store

FLUSH_SECONDS = 10.0
KEEP_MINUTES = 24 * 60  # rows older than a day are dropped at each flush


class UpstreamHealth:
    def __init__(self) -> None:
        self._tally: dict[tuple[str, int], list[int]] = {}  # (provider, unix minute) -> [attempts, failures]

    def attempt(self, provider: str, now: float | None = None) -> None:
        self._cell(provider, now)[0] += 1

    def failure(self, provider: str, now: float | None = None) -> None:
        self._cell(provider, now)[1] += 1

    def _cell(self, provider: str, now: float | None) -> list[int]:
        key = (provider, int((time.time() if now is None else now) // 60))
        cell = self._tally.get(key)
        if cell is None:
            cell = self._tally[key] = [0, 0]
        return cell

    def take(self) -> list[tuple[str, int, int, int]]:
        """What was tallied since the last take: (provider, minute, attempts, failures) rows."""
        tally, self._tally = self._tally, {}
        return [(provider, minute, n, failed) for (provider, minute), (n, failed) in tally.items()]

    async def flush(self, db: store.Store, owner: str) -> None:
        rows = self.take()
        now_minute = int(time.time() // 60)
        try:
            await db.run(store.tx_add_upstream_health, rows, owner, now_minute - KEEP_MINUTES)
        except BaseException:
            for provider, minute, n, failed in rows:  # kept for the next flush
                cell = self._tally.setdefault((provider, minute), [0, 0])
                cell[0] += n
                cell[1] += failed
            raise
