"""The chain watcher against an in-memory chain (its client's contract, no network): confirmations, exactly-once
credit across passes and restarts, reorgs before finality, RPC failures that skip nothing, the minimum deposit."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from billing import store
from billing.ledger import Ledger
from billing.recharge.watcher import ChainSettings, Watcher

ALICE = "0x" + "a1" * 20
BOB = "0x" + "b2" * 20
USDT = "0x" + "de" * 20


@dataclass
class Log:
    tx_hash: str
    log_index: int
    recipient: str
    amount_raw: int
    block_number: int = 0
    block_hash: str = ""
    contract: str = USDT


@dataclass
class FakeChain:
    """Blocks of transfer logs; a block's hash changes when it is replaced. With `fail_on` = k, the k-th call
    from now fails (the RPC endpoint is down at that moment)."""

    blocks: list[list[Log]] = field(default_factory=lambda: [[]])
    generation: dict[int, int] = field(default_factory=dict)
    fail_on: int = 0
    calls_made: int = 0
    calls: list[tuple[int, int]] = field(default_factory=list)

    def mine(self, *logs: Log) -> int:
        number = len(self.blocks)
        self.blocks.append([Log(l.tx_hash, l.log_index, l.recipient, l.amount_raw, contract=l.contract) for l in logs])
        return number

    def mine_empty(self, n: int) -> None:
        for _ in range(n):
            self.mine()

    def replace(self, number: int, *logs: Log) -> None:
        """A reorg: block `number` and everything after it go; the new block holds `logs`."""
        del self.blocks[number:]
        self.generation[number] = self.generation.get(number, 0) + 1
        self.mine(*logs)

    def hash_of(self, number: int) -> str:
        return f"0x{number:x}g{self.generation.get(number, 0)}"

    def _maybe_fail(self) -> None:
        self.calls_made += 1
        if self.calls_made == self.fail_on:
            raise ConnectionError("the RPC endpoint is down")

    async def block_number(self) -> int:
        self._maybe_fail()
        return len(self.blocks) - 1

    async def block_hash(self, number: int) -> str | None:
        self._maybe_fail()
        return self.hash_of(number) if number < len(self.blocks) else None

    async def transfer_logs(self, contract: str, recipients: list[str], start: int, end: int) -> list[Log]:
        self._maybe_fail()
        self.calls.append((start, end))
        return [Log(l.tx_hash, l.log_index, l.recipient, l.amount_raw, n, self.hash_of(n), l.contract)
                for n in range(start, min(end, len(self.blocks) - 1) + 1) for l in self.blocks[n]
                if l.contract == contract and l.recipient in recipients]


SETTINGS = ChainSettings("testchain", USDT, decimals=6, confirmations=3, batch_blocks=4, start_block=0,
                         minimum=1_000_000_000)  # 1 USD


async def open_books(path: Path) -> tuple[store.Store, Ledger, int, int]:
    db = store.Store(str(path))
    await db.start()
    alice = (await db.run(store.tx_create_account, "alice", 0.0))["id"]
    bob = (await db.run(store.tx_create_account, "bob", 0.0))["id"]
    await db.run(store.tx_deposit_address, SETTINGS.name, alice, ALICE, alice, 0.0)
    await db.run(store.tx_deposit_address, SETTINGS.name, bob, BOB, bob, 0.0)
    return db, Ledger(db, 0, 0), alice, bob


async def balance(db: store.Store, account: int) -> int:
    return int((await db.run(store.tx_account, account))["balance"])


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_deposits_are_credited_after_n_confirmations_once_even_across_a_restart(tmp_path: Path) -> None:
    async def scenario() -> None:
        db, ledger, alice, bob = await open_books(tmp_path / "db")
        chain = FakeChain()
        chain.mine(Log("0xa", 0, ALICE, 25_000_000), Log("0xa", 1, BOB, 2_000_000),  # two in one block
                   Log("0xother", 0, ALICE, 5_000_000, contract="0x" + "99" * 20))  # another token: ignored
        watcher = Watcher(SETTINGS, chain, ledger, db)
        first = await watcher.run_pass()
        assert (first.found, first.credited) == (2, 0) and await balance(db, alice) == 0  # 1 confirmation of 3
        chain.mine_empty(1)
        assert (await watcher.run_pass()).credited == 0  # 2 confirmations
        restarted = Watcher(SETTINGS, chain, ledger, db)  # a new process: everything it knows is in the database
        chain.mine_empty(1)
        result = await restarted.run_pass()
        assert result.credited == 2 and result.found == 0
        assert (await balance(db, alice), await balance(db, bob)) == (25 * 10**9, 2 * 10**9)
        chain.mine_empty(5)
        assert (await restarted.run_pass()).credited == 0 and await balance(db, alice) == 25 * 10**9
        # head minus cursor: the cursor stops at the first block not yet final (those are scanned again each pass)
        assert restarted.lag == SETTINGS.confirmations - 2
        await db.close()

    run(scenario())


def test_a_reorg_before_finality_is_never_credited_and_a_moved_deposit_still_is(tmp_path: Path) -> None:
    async def scenario() -> None:
        db, ledger, alice, bob = await open_books(tmp_path / "db")
        chain = FakeChain()
        block = chain.mine(Log("0xgone", 0, ALICE, 7_000_000), Log("0xmoves", 0, BOB, 3_000_000))
        watcher = Watcher(SETTINGS, chain, ledger, db)
        assert (await watcher.run_pass()).found == 2
        chain.replace(block)  # both transfers left the chain...
        chain.mine(Log("0xmoves", 0, BOB, 3_000_000))  # ...and one came back a block later
        chain.mine_empty(3)
        result = await watcher.run_pass()
        assert (result.credited, result.dropped) == (1, 1)
        assert (await balance(db, alice), await balance(db, bob)) == (0, 3 * 10**9)
        records = {d["tx_hash"]: d for d in await db.run(store.tx_deposits, None, 10)}
        assert records["0xgone"]["status"] == "dropped" and records["0xmoves"]["block_number"] == block + 1
        await db.close()

    run(scenario())


def test_rpc_failures_skip_nothing_and_the_deposit_is_credited_once_the_rpc_recovers(tmp_path: Path) -> None:
    async def scenario() -> None:
        db, ledger, alice, _ = await open_books(tmp_path / "db")
        chain = FakeChain()
        chain.mine_empty(9)
        chain.mine(Log("0xlate", 0, ALICE, 10_000_000))
        chain.mine_empty(5)
        watcher = Watcher(SETTINGS, chain, ledger, db)
        # a pass asks the head (call 1), scans 0-3, 4-7, 8-11, 12-15 (calls 2 to 5), checks a block hash (6)
        for fail_on in (1, 3, 6):  # the endpoint fails at the head query, mid-scan, then while confirming
            chain.calls_made, chain.fail_on = 0, fail_on
            with pytest.raises(ConnectionError):
                await watcher.run_pass()
            assert chain.calls_made == fail_on and await balance(db, alice) == 0
        assert await db.run(store.tx_cursor, SETTINGS.name, 0, 0.0) == 0  # nothing was skipped past
        chain.calls_made, chain.fail_on = 0, 0
        chain.calls.clear()
        result = await watcher.run_pass()
        assert result.credited == 1 and await balance(db, alice) == 10 * 10**9
        scanned = sorted(b for start, end in chain.calls for b in range(start, end + 1))
        assert scanned == list(range(0, 16))  # every block, in bounded ranges of at most 4
        await db.close()

    run(scenario())


def test_a_deposit_below_the_minimum_is_recorded_not_credited(tmp_path: Path) -> None:
    async def scenario() -> None:
        db, ledger, alice, _ = await open_books(tmp_path / "db")
        chain = FakeChain()
        chain.mine(Log("0xdust", 0, ALICE, 999_999))  # 0.999999 USDT, under the 1 USD minimum
        chain.mine_empty(4)
        watcher = Watcher(SETTINGS, chain, ledger, db)
        assert (await watcher.run_pass()).credited == 0
        (record,) = await db.run(store.tx_deposits, alice, 5)
        assert (record["status"], record["credit"], await balance(db, alice)) == ("held", 999_999_000, 0)
        await db.close()

    run(scenario())
