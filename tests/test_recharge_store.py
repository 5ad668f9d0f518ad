"""Recharge records in the store: deposits recorded as the watcher finds them, moved by a reorg or dropped, and
credited to the wallet exactly once through the ledger; orders; the scan cursor only moves forward."""

from __future__ import annotations

import asyncio
from pathlib import Path

from billing import store
from billing.ledger import Ledger
from billing.store import SeenTransfer

CHAIN = "ethereum"
ALICE_ADDR = "0x" + "a1" * 20
BOB_ADDR = "0x" + "b2" * 20
STRANGER = "0x" + "c3" * 20


def transfer(tx: str, index: int, to: str, amount: int, block: int, block_hash: str = "", held: bool = False) -> SeenTransfer:
    return SeenTransfer(tx, index, to, amount, block, block_hash or f"0xhash{block}", credit=amount * 1000, held=held)


async def books(path: Path) -> tuple[store.Store, Ledger, int, int]:
    db = store.Store(str(path))
    await db.start()
    alice = (await db.run(store.tx_create_account, "alice", 0.0))["id"]
    bob = (await db.run(store.tx_create_account, "bob", 0.0))["id"]
    assert await db.run(store.tx_deposit_address, CHAIN, alice, ALICE_ADDR, alice, 0.0) == ALICE_ADDR
    await db.run(store.tx_deposit_address, CHAIN, bob, BOB_ADDR, bob, 0.0)
    return db, Ledger(db, 0, 0), alice, bob


async def balance(db: store.Store, account_id: int) -> int:
    return int((await db.run(store.tx_account, account_id))["balance"])


def test_a_deposit_is_credited_once_even_when_found_and_confirmed_again(tmp_path: Path) -> None:
    async def scenario() -> None:
        db, ledger, alice, bob = await books(tmp_path / "db")
        found = [transfer("0xt1", 0, ALICE_ADDR, 25_000_000, 100), transfer("0xt1", 1, BOB_ADDR, 5_000_000, 100),
                 transfer("0xt2", 0, STRANGER, 9, 100)]  # two deposits in one block, and one not ours
        assert await db.run(store.tx_record_transfers, CHAIN, found, 1.0) == 2
        assert await db.run(store.tx_record_transfers, CHAIN, found, 2.0) == 0  # a rescan finds them again
        final = await db.run(store.tx_deposits_to_confirm, CHAIN, 100)
        assert [(d["tx_hash"], d["log_index"]) for d in final] == [("0xt1", 0), ("0xt1", 1)]
        credits = await asyncio.gather(*(ledger.credit_deposit(d["id"]) for d in final for _ in range(3)))
        assert sorted(c for c in credits if c is not None) == [5_000_000_000, 25_000_000_000]  # once each
        assert (await balance(db, alice), await balance(db, bob)) == (25_000_000_000, 5_000_000_000)
        assert await db.run(store.tx_deposits_to_confirm, CHAIN, 10**9) == []
        for row in await db.run(store.tx_ledger_totals):
            assert row["balance"] == row["ledger_balance"]
        await db.close()

    asyncio.run(scenario())


def test_a_reorg_moves_or_drops_a_deposit_before_it_is_final(tmp_path: Path) -> None:
    async def scenario() -> None:
        db, ledger, alice, _ = await books(tmp_path / "db")
        await db.run(store.tx_record_transfers, CHAIN, [transfer("0xmoved", 0, ALICE_ADDR, 1, 50, "0xold"),
                                                       transfer("0xgone", 0, ALICE_ADDR, 2, 50, "0xold")], 1.0)
        # the block was replaced: one transfer is in a later block now, the other in none
        await db.run(store.tx_record_transfers, CHAIN, [transfer("0xmoved", 0, ALICE_ADDR, 1, 52, "0xnew")], 2.0)
        seen = {d["tx_hash"]: d for d in await db.run(store.tx_deposits_to_confirm, CHAIN, 60)}
        assert (seen["0xmoved"]["block_number"], seen["0xmoved"]["block_hash"]) == (52, "0xnew")
        assert await db.run(store.tx_drop_deposit, seen["0xgone"]["id"], "its block was replaced")
        assert await ledger.credit_deposit(seen["0xgone"]["id"]) is None  # dropped: never credited
        assert await ledger.credit_deposit(seen["0xmoved"]["id"]) == 1000
        assert await balance(db, alice) == 1000
        # a dropped transfer that shows up again (in yet another block) is a deposit again
        await db.run(store.tx_record_transfers, CHAIN, [transfer("0xgone", 0, ALICE_ADDR, 2, 55, "0xlater")], 3.0)
        again = await db.run(store.tx_deposits_to_confirm, CHAIN, 60)
        assert [(d["tx_hash"], d["block_number"]) for d in again] == [("0xgone", 55)]
        await db.close()

    asyncio.run(scenario())


def test_a_deposit_below_the_minimum_waits_for_an_operator(tmp_path: Path) -> None:
    async def scenario() -> None:
        db, ledger, alice, _ = await books(tmp_path / "db")
        await db.run(store.tx_record_transfers, CHAIN, [transfer("0xdust", 0, ALICE_ADDR, 3, 10, held=True)], 1.0)
        assert await db.run(store.tx_deposits_to_confirm, CHAIN, 100) == []  # the watcher never credits it
        (held,) = await db.run(store.tx_deposits, alice, 10)
        assert held["status"] == "held" and await ledger.credit_deposit(held["id"]) is None
        assert await ledger.credit_deposit(held["id"], note="operator: small test payment") == 3000
        (row,) = await db.run(store.tx_deposits, alice, 10)
        assert (row["status"], row["note"]) == ("credited", "operator: small test payment")
        history = await db.run(store.tx_history, alice, 5)
        assert "small test payment" in history[0]["note"] and "0xdust:0" in history[0]["note"]
        await db.close()

    asyncio.run(scenario())


def test_an_expired_order_then_a_late_payment_is_credited_and_recorded_as_late(tmp_path: Path) -> None:
    async def scenario() -> None:
        db, ledger, alice, _ = await books(tmp_path / "db")

        def order(conn: object, status: str) -> int:
            return conn.execute(  # type: ignore[attr-defined]
                "INSERT INTO recharge_orders (account_id, chain, address, amount_raw, status, created_at, expires_at) "
                "VALUES (?, ?, ?, '10000000', ?, 0, 1)", (alice, CHAIN, ALICE_ADDR, status)).lastrowid

        expired = await db.run(order, "expired")
        await db.run(store.tx_record_transfers, CHAIN, [transfer("0xlate", 0, ALICE_ADDR, 10_000_000, 7)], 5.0)
        (deposit,) = await db.run(store.tx_deposits_to_confirm, CHAIN, 7)
        assert await ledger.credit_deposit(deposit["id"]) == 10_000_000_000
        (row,) = await db.run(store.tx_deposits, alice, 10)
        assert row["order_id"] == expired and row["note"] == f"arrived after order {expired} expired"
        await db.close()

    asyncio.run(scenario())


def test_one_order_waits_at_a_time_and_a_deposit_pays_only_an_order_it_covers(tmp_path: Path) -> None:
    async def scenario() -> None:
        db, ledger, alice, _ = await books(tmp_path / "db")

        def new_order(amount: int, now: float) -> store.NewOrder:
            return store.NewOrder(alice, CHAIN, ALICE_ADDR, amount, now, now + 600)

        async def statuses() -> dict[int, str]:
            return {o["id"]: o["status"] for o in await db.run(store.tx_orders, alice, None, 100.0)}

        first = await db.run(store.tx_create_order, new_order(1000_000_000, 10.0))
        second = await db.run(store.tx_create_order, new_order(25_000_000, 20.0))
        assert await statuses() == {first: "expired", second: "pending"}  # the new order replaces the waiting one
        # too little for the order: credited to the wallet all the same, but it pays no order
        await db.run(store.tx_record_transfers, CHAIN, [transfer("0xsmall", 0, ALICE_ADDR, 5_000_000, 7)], 30.0)
        assert (await statuses())[second] == "pending"
        await db.run(store.tx_record_transfers, CHAIN, [transfer("0xfull", 0, ALICE_ADDR, 25_000_000, 8)], 31.0)
        assert (await statuses())[second] == "confirming"
        third = await db.run(store.tx_create_order, new_order(10_000_000, 40.0))  # another, while one is confirming
        assert await statuses() == {first: "expired", second: "confirming", third: "pending"}
        small, full = sorted(await db.run(store.tx_deposits_to_confirm, CHAIN, 8), key=lambda d: d["block_number"])
        assert await ledger.credit_deposit(small["id"]) == 5_000_000_000
        assert await statuses() == {first: "expired", second: "confirming", third: "pending"}
        assert await ledger.credit_deposit(full["id"]) == 25_000_000_000
        assert await statuses() == {first: "expired", second: "credited", third: "pending"}  # the one it was for
        records = {d["tx_hash"]: d["order_id"] for d in await db.run(store.tx_deposits, alice, 10)}
        assert records == {"0xsmall": None, "0xfull": second}
        assert await balance(db, alice) == 30_000_000_000
        await db.close()

    asyncio.run(scenario())


def test_the_cursor_only_moves_forward_unless_an_operator_rescans(tmp_path: Path) -> None:
    async def scenario() -> None:
        db, _, _, _ = await books(tmp_path / "db")
        assert await db.run(store.tx_cursor, CHAIN, 1000, 0.0) == 1000
        assert await db.run(store.tx_cursor, CHAIN, 5, 0.0) == 1000  # the first start's value stays
        assert await db.run(store.tx_advance_cursor, CHAIN, 1200, 1.0) == 1200
        assert await db.run(store.tx_advance_cursor, CHAIN, 1100, 2.0) == 1200  # never back by itself
        assert await db.run(store.tx_rewind_cursor, CHAIN, 900, 3.0) == 900
        await db.close()

    asyncio.run(scenario())


def test_the_operator_commands_for_recharge(tmp_path: Path) -> None:
    """`recharge address|deposits|credit|rescan` through the CLI, on a config with an EVM chain."""
    from bip_utils import Bip39SeedGenerator, Bip44, Bip44Coins

    from tests.conftest import base_config, cli

    seed = Bip39SeedGenerator("abandon " * 11 + "about").Generate()
    xpub = Bip44.FromSeed(seed, Bip44Coins.ETHEREUM).Purpose().Coin().Account(0).PublicKey().ToExtended()
    config = tmp_path / "config.toml"
    config.write_text(base_config(tmp_path / "requests.log") + f"""
[providers.demo]
builtin = "demo"
[models.m]
provider = "demo"
price = {{ input = "1", output = "1" }}
[recharge]
minimum = "1"
[chains.testnet]
rpc_url = "http://127.0.0.1:9"
chain_id = 1337
confirmations = 3
contract = "0x{'de' * 20}"
xpub = "{xpub}"
""")
    account = cli(config, "accounts", "create", "payer")
    shown = cli(config, "recharge", "address", "payer", "testnet")
    again = cli(config, "recharge", "address", "payer", "testnet")
    assert shown == again and shown["address"].startswith("0x") and shown["derivation_path"].endswith(f"/{account['id']}")

    async def dust() -> int:
        db = store.Store(str(tmp_path / "tokentoll.db"))
        await db.start()
        try:
            await db.run(store.tx_record_transfers, "testnet", [
                SeenTransfer("0xdust", 0, shown["address"].lower(), 500_000, 5, "0xh", 500_000_000, held=True)], 1.0)
            return (await db.run(store.tx_deposits, None, 1))[0]["id"]
        finally:
            await db.close()

    deposit_id = asyncio.run(dust())
    (record,) = cli(config, "recharge", "deposits", "--account", "payer")
    assert (record["amount"], record["status"], record["credit_usd"]) == ("0.5", "held", "0.500000000")
    credited = cli(config, "recharge", "credit", str(deposit_id), "--note", "operator: confirmed by hand")
    assert credited["credited_usd"] == "0.500000000"
    assert cli(config, "wallet", "show", "payer")["balance"] == 500_000_000
    assert cli(config, "recharge", "rescan", "testnet", "0") == {"chain": "testnet", "next_block": 0}
    import subprocess, sys  # noqa: E401 - the refusals exit 1 with a message
    from tests.conftest import ROOT
    again_credit = subprocess.run([sys.executable, str(ROOT / "gateway.py"), "--config", str(config), "recharge",
                                   "credit", str(deposit_id), "--note", "twice"], capture_output=True, text=True)
    assert again_credit.returncode == 1 and "cannot be credited" in again_credit.stderr
