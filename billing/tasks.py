"""The async tasks' lifecycle and money: what a task holds and costs, every state change as a compare-and-set
followed by the ledger's idempotent settle, and the background poller (one process at a time, by lease)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from billing import store
from billing.background import repeat
from billing.ledger import Ledger
from billing.metering import NO_USAGE, Usage, UsageRecord
from billing.store import tasks as task_store
from billing.store.tasks import ENDED, OPEN, NewTask

log = logging.getLogger("tokentoll.tasks")
LEASE = "task-poller"
BATCH = 200
POLL_CONCURRENCY = 16
# the status written on a task's usage row (an HTTP-like code, as for requests)
USAGE_STATUS = {"completed": 200, "failed": 502, "cancelled": 499, "expired": 504}
Prices = Callable[[str], "tuple[int | None, int | None] | None"]  # model -> (task price, second price), None: gone


# -- prices (pure) ----------------------------------------------------------------------------------


def hold_amount(task_price: int | None, second_price: int | None, seconds: int) -> int:
    """What a submission holds: the task price, plus the per-second price x the seconds asked for."""
    return (task_price or 0) + (second_price or 0) * seconds


def completed_cost(task_price: int | None, second_price: int | None, reported: int | None, amount: int) -> int:
    """What a completed task costs: the task price, plus the per-second price x the seconds the upstream
    reports making (the seconds held for when it reports none); never more than was held."""
    if second_price is None:
        return min(task_price or 0, amount)
    if reported is None:
        return amount
    return min((task_price or 0) + second_price * reported, amount)


def reported_seconds(obj: dict[str, Any]) -> int | None:
    """The seconds of video in an (upstream) object: "8", 8 or "8.0", rounded up; None if absent or bad."""
    value = obj.get("seconds")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if not isinstance(value, str):
        return None
    whole, _, frac = value.strip().partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        return None
    return int(whole) + (1 if frac.strip("0") else 0)


def task_charge(row: dict[str, Any], prices: Prices) -> tuple[int, int]:
    """(cost, seconds) owed by an ended task, from its row alone, so that any process computes the same:
    completed tasks are priced at the model's prices (the whole hold if the model is no longer configured);
    failed, cancelled and expired ones cost nothing."""
    if row["status"] != "completed":
        return 0, 0
    obj = orjson.loads(row["object"])
    seconds = reported_seconds(obj)
    found = prices(row["model"])
    if found is None:
        return row["amount"], seconds or 0
    task_price, second_price = found
    return completed_cost(task_price, second_price, seconds, row["amount"]), seconds or 0


# -- the lifecycle ----------------------------------------------------------------------------------


class TaskBook:
    """Tasks in the books. Each state change is a compare-and-set on the task row in its own transaction;
    the one writer that wins it then closes the hold through the ledger (idempotent). A process that stops
    between the two leaves an ended task with an open hold, which `repair` closes at the next pass."""

    def __init__(self, ledger: Ledger, db: store.Store, prices: Prices) -> None:
        self.ledger = ledger
        self.db = db
        self.prices = prices

    async def record(self, task: NewTask) -> bool:
        return await self.db.run(task_store.tx_insert_task, task)

    async def get(self, task_id: str, account_id: int | None) -> dict[str, Any] | None:
        return await self.db.run(task_store.tx_task, task_id, account_id)

    async def list(self, account_id: int, after: str | None, limit: int, order: str,
                   models: list[str] | None = None) -> list[dict[str, Any]] | None:
        """A page of the account's tasks (only those of `models`, when given: a model-restricted key's)."""
        return await self.db.run(task_store.tx_list_tasks, account_id, after, limit, order, models)

    async def observe(self, row: dict[str, Any], status: str, obj: dict[str, Any]) -> dict[str, Any]:
        """An open task seen still open; returns its row as it now is."""
        found = await self.db.run(task_store.tx_observe, row["id"], status, orjson.dumps(obj).decode(), time.time())
        return found if found is not None else row

    async def end(self, row: dict[str, Any], status: str,
                  obj: dict[str, Any] | None = None) -> tuple[bool, dict[str, Any]]:
        """End an open task (completed, failed, cancelled or expired; `obj` None keeps the stored object).
        Returns whether this call ended it (and so closed its hold), and the row as it now is."""
        assert status in ENDED
        text = orjson.dumps(obj).decode() if obj is not None else None
        won, found = await self.db.run(task_store.tx_end, row["id"], status, text, time.time())
        now_row = found if found is not None else row
        if won:
            await self.close_hold(now_row)
        return won, now_row

    async def close_hold(self, row: dict[str, Any]) -> store.Settled | None:
        """Charge an ended task what it owes and release the rest of its hold. Idempotent: a closed hold is
        left as it is, so a repair racing the writer that ended the task changes nothing."""
        cost, seconds = task_charge(row, self.prices)
        record = UsageRecord(Usage(), "upstream") if row["status"] == "completed" else NO_USAGE
        duration = round((time.time() - row["created_at"]) * 1000, 3)
        return await self.ledger.settle_amount(row["request_id"], cost, record, USAGE_STATUS[row["status"]],
                                               duration, units=seconds, by="task")

    async def release(self, request_id: str, status: int, duration_ms: float | None) -> None:
        """A submission that never became a task (the upstream refused it, or failed): its hold, released."""
        await self.ledger.settle_amount(request_id, 0, NO_USAGE, status, duration_ms, by="task")

    async def delete(self, task_id: str, account_id: int) -> bool:
        return await self.db.run(task_store.tx_delete_task, task_id, account_id)

    async def repair(self) -> int:
        """Close the holds of ended tasks that are still open (a crash between the state change and the money)."""
        closed = 0
        for row in await self.db.run(task_store.tx_unsettled_tasks, BATCH):
            settled = await self.close_hold(row)
            if settled is not None and not settled.already:
                closed += 1
                log.warning("closed the hold of task %s, ended (%s) without its hold closed", row["id"], row["status"])
        return closed

    async def release_orphans(self, older_than: float) -> int:
        """Release task holds older than `older_than` seconds that have no task: the process stopped between
        placing the hold and recording the task. Nothing was delivered, so nothing is charged."""
        closed = 0
        for hold in await self.db.run(task_store.tx_orphan_task_holds, time.time() - older_than, BATCH):
            settled = await self.ledger.settle_amount(hold["request_id"], 0, NO_USAGE, 0, None, by="task")
            if settled is not None and not settled.already:
                closed += 1
                log.warning("released task hold %s: no task was ever recorded for it", hold["request_id"])
        return closed


class TaskPoller:
    """The background poller: in one process at a time (a lease), each pass closes the holds left open by a
    crash, releases holds that never became tasks, expires overdue tasks and advances the open tasks nobody
    polled within the poll interval. It reads everything from the database, so it survives restarts. The lease
    (3 ticks + 1 s) is renewed every tick while a pass runs, so a pass waiting on slow upstreams keeps it."""

    def __init__(self, book: TaskBook, holder: str, poll_interval: float, orphan_age: float,
                 advance: Callable[[dict[str, Any]], Awaitable[None]],
                 on_expired: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        self.book = book
        self.db = book.db
        self.holder = holder
        self.poll_interval = poll_interval
        self.tick = poll_interval / 2
        self.orphan_age = orphan_age
        self.advance = advance
        self.on_expired = on_expired
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(repeat(self.run_pass, self.tick, "task poller pass"),
                                         name="tokentoll-task-poller")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None
        try:  # a restarted or sibling process takes over at once
            await self.db.run(store.tx_drop_lease, LEASE, self.holder)
        except store.StoreClosed:
            pass

    async def _take_lease(self) -> bool:
        return await self.db.run(store.tx_take_lease, LEASE, self.holder, time.time(), self.tick * 3 + 1)

    async def _keep_lease(self, lost: asyncio.Event) -> None:
        """Renew the lease every tick while a pass runs (a pass may wait on slow upstreams for longer than the
        lease lasts); if another process took it meanwhile, say so: the pass starts no further task."""
        while True:
            await asyncio.sleep(self.tick)
            if not await self._take_lease():
                log.warning("task poller: the lease was lost during a pass; the rest of the pass is skipped")
                lost.set()
                return

    async def run_pass(self) -> bool:
        """One pass, if this process holds the lease (kept renewed while the pass runs). Returns whether it ran."""
        now = time.time()
        if not await self._take_lease():
            return False
        lost = asyncio.Event()
        keeper = asyncio.create_task(self._keep_lease(lost), name="tokentoll-task-poller-lease")
        try:
            await self._pass(now, lost)
        finally:
            keeper.cancel()
            try:
                await keeper
            except (asyncio.CancelledError, Exception):  # a renewal's trouble is the next pass's to meet
                pass
        return True

    async def _pass(self, now: float, lost: asyncio.Event) -> None:
        await self.book.repair()
        await self.book.release_orphans(self.orphan_age)
        due = await self.db.run(task_store.tx_due_tasks, now - self.poll_interval, now, BATCH)
        gate = asyncio.Semaphore(POLL_CONCURRENCY)

        async def one(row: dict[str, Any]) -> None:
            async with gate:
                if lost.is_set():  # another process polls now
                    return
                try:
                    if row["expires_at"] <= now:
                        won, _ = await self.book.end(row, "expired")
                        if won:
                            log.warning("task %s expired before it completed; its hold was released", row["id"])
                            await self.on_expired(row)
                    else:
                        await self.advance(row)
                except store.StoreClosed:
                    raise
                except Exception as exc:  # one task's trouble must not stop the others
                    log.warning("task poller: task %s not advanced: %s", row["id"], exc)

        await asyncio.gather(*(one(row) for row in due))


__all__ = ["OPEN", "ENDED", "NewTask", "TaskBook", "TaskPoller", "hold_amount", "completed_cost",
           "reported_seconds", "task_charge"]
