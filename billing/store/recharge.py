"""The recharge records' transactions: deposit addresses, deposits as the chain watchers see them (found, moved by
a reorg, dropped), recharge orders and each chain's scan cursor. Crediting a deposit moves money: it is in money.py."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from billing.store.engine import where


@dataclass(slots=True)
class SeenTransfer:
    """A transfer of the chain's USDT to one of our deposit addresses, as read from the chain."""

    tx_hash: str
    log_index: int
    address: str  # the recipient, 0x + 40 lower-case hex
    amount_raw: int
    block_number: int
    block_hash: str
    credit: int  # nano-dollars, already priced (billing/recharge/amounts.py)
    held: bool = False  # below the minimum deposit: recorded, credited only by an operator


def tx_deposit_address(conn: sqlite3.Connection, chain: str, account_id: int, address: str, index: int,
                       now: float) -> str:
    """The account's address on the chain, recorded on first use (derivation is deterministic, so a second
    call finds the same one)."""
    conn.execute("INSERT OR IGNORE INTO deposit_addresses (chain, address, account_id, derivation_index, created_at) "
                 "VALUES (?, ?, ?, ?, ?)", (chain, address, account_id, index, now))
    row = conn.execute("SELECT address FROM deposit_addresses WHERE chain = ? AND account_id = ?",
                       (chain, account_id)).fetchone()
    return str(row["address"])


def tx_watched_addresses(conn: sqlite3.Connection, chain: str) -> dict[str, int]:
    """Every deposit address on the chain, with its account."""
    rows = conn.execute("SELECT address, account_id FROM deposit_addresses WHERE chain = ?", (chain,))
    return {r["address"]: r["account_id"] for r in rows}


def tx_record_transfers(conn: sqlite3.Connection, chain: str, transfers: list[SeenTransfer], now: float) -> int:
    """Record what a scan found. A new transfer is a deposit 'seen' (or 'held' below the minimum); one seen
    before and not yet credited takes the block it is in now (a reorg may have moved it). Transfers to an
    address that is not ours are left out. Returns how many deposits are new."""
    new = 0
    for t in transfers:
        owner = conn.execute("SELECT account_id FROM deposit_addresses WHERE chain = ? AND address = ?",
                             (chain, t.address)).fetchone()
        if owner is None:
            continue
        moved = conn.execute("UPDATE deposits SET block_number = ?, block_hash = ? WHERE chain = ? AND tx_hash = ? "
                             "AND log_index = ? AND status IN ('seen', 'dropped')",
                             (t.block_number, t.block_hash, chain, t.tx_hash, t.log_index)).rowcount
        if moved:
            conn.execute("UPDATE deposits SET status = 'seen' WHERE chain = ? AND tx_hash = ? AND log_index = ? "
                         "AND status = 'dropped'", (chain, t.tx_hash, t.log_index))  # found again after a reorg
            continue
        new += conn.execute(
            "INSERT OR IGNORE INTO deposits (chain, tx_hash, log_index, account_id, address, amount_raw, credit, "
            "block_number, block_hash, status, seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (chain, t.tx_hash, t.log_index, owner["account_id"], t.address, str(t.amount_raw), t.credit,
             t.block_number, t.block_hash, "held" if t.held else "seen", now)).rowcount
        if t.held:
            continue
        order = order_paid_by(conn, owner["account_id"], chain, t.amount_raw, ("pending",))
        if order is not None:  # an order is confirming only when a transfer of at least its amount is on its way
            conn.execute("UPDATE recharge_orders SET status = 'confirming' WHERE id = ?", (order,))
    return new


def order_paid_by(conn: sqlite3.Connection, account_id: int, chain: str, amount_raw: int,
                   statuses: tuple[str, ...]) -> int | None:
    """The order a deposit of `amount_raw` pays: of the account's orders on the chain in one of `statuses` with no
    deposit yet and an amount the deposit covers, a confirming one first (the oldest), then the newest pending,
    then the newest expired (a late payment)."""
    rank = {"confirming": 0, "pending": 1, "expired": 2}
    rows = conn.execute(f"SELECT id, status, amount_raw, created_at FROM recharge_orders WHERE account_id = ? AND "
                        f"chain = ? AND deposit_id IS NULL AND status IN ({', '.join('?' * len(statuses))})",
                        (account_id, chain, *statuses)).fetchall()
    covered = [r for r in rows if int(r["amount_raw"]) <= amount_raw]
    if not covered:
        return None
    best = min(covered, key=lambda r: (rank[r["status"]],
                                       r["created_at"] if r["status"] == "confirming" else -r["created_at"]))
    return int(best["id"])


def tx_deposits_to_confirm(conn: sqlite3.Connection, chain: str, up_to_block: int) -> list[dict[str, Any]]:
    """Deposits seen in blocks that are now deep enough to be final, oldest first."""
    rows = conn.execute("SELECT * FROM deposits WHERE chain = ? AND status = 'seen' AND block_number <= ? "
                        "ORDER BY block_number, log_index", (chain, up_to_block))
    return [dict(r) for r in rows]


def tx_drop_deposit(conn: sqlite3.Connection, deposit_id: int, note: str) -> bool:
    """A deposit whose transfer is gone (its block was replaced and it is in no other): never credited."""
    return conn.execute("UPDATE deposits SET status = 'dropped', note = ? WHERE id = ? AND status = 'seen'",
                        (note, deposit_id)).rowcount == 1


def tx_cursor(conn: sqlite3.Connection, chain: str, start: int, now: float, head: int = 0) -> int:
    """The first block not yet scanned and final; `start` on a chain's first scan. The chain's head is noted first,
    so a transfer recorded in this pass never shows 0 confirmations against an older head."""
    conn.execute("INSERT OR IGNORE INTO chain_cursors (chain, next_block, updated_at) VALUES (?, ?, ?)",
                 (chain, start, now))
    conn.execute("UPDATE chain_cursors SET head = MAX(head, ?) WHERE chain = ?", (head, chain))
    return int(conn.execute("SELECT next_block FROM chain_cursors WHERE chain = ?", (chain,)).fetchone()[0])


def tx_advance_cursor(conn: sqlite3.Connection, chain: str, next_block: int, now: float, head: int = 0) -> int:
    """Move the cursor forward (never back), noting the chain's head; returns where the cursor is."""
    conn.execute("UPDATE chain_cursors SET next_block = MAX(next_block, ?), head = MAX(head, ?), updated_at = ? "
                 "WHERE chain = ?", (next_block, head, now, chain))
    return int(conn.execute("SELECT next_block FROM chain_cursors WHERE chain = ?", (chain,)).fetchone()[0])


def tx_rewind_cursor(conn: sqlite3.Connection, chain: str, block: int, now: float) -> int:
    """An operator's rescan: the cursor goes back to `block` (deposits already recorded stay as they are); on a
    chain not scanned yet, the first scan starts there."""
    conn.execute("INSERT OR IGNORE INTO chain_cursors (chain, next_block, updated_at) VALUES (?, ?, ?)",
                 (chain, block, now))
    conn.execute("UPDATE chain_cursors SET next_block = MIN(next_block, ?), updated_at = ? WHERE chain = ?",
                 (block, now, chain))
    return int(conn.execute("SELECT next_block FROM chain_cursors WHERE chain = ?", (chain,)).fetchone()[0])


@dataclass(slots=True)
class NewOrder:
    account_id: int
    chain: str
    address: str
    amount_raw: int
    now: float
    expires_at: float


def tx_create_order(conn: sqlite3.Connection, o: NewOrder) -> int:
    """A new pending order. It replaces the account's pending order on that chain (one waits at a time, so a
    payment is never matched to an order its payer has forgotten); an order already confirming is left to finish."""
    conn.execute("UPDATE recharge_orders SET status = 'expired', expires_at = MIN(expires_at, ?) WHERE account_id = ? "
                 "AND chain = ? AND status = 'pending'", (o.now, o.account_id, o.chain))
    return int(conn.execute("INSERT INTO recharge_orders (account_id, chain, address, amount_raw, status, created_at, "
                            "expires_at) VALUES (?, ?, ?, ?, 'pending', ?, ?)",
                            (o.account_id, o.chain, o.address, str(o.amount_raw), o.now, o.expires_at)).lastrowid)


def tx_orders(conn: sqlite3.Connection, account_id: int, order_id: int | None, now: float,
              limit: int = 100) -> list[dict[str, Any]]:
    """An account's orders, newest first (or one of them), each with what is known of its payment: orders past
    their time with nothing arrived are expired first; a confirming order shows its deposit's block and the
    chain's head (its confirmations)."""
    conn.execute("UPDATE recharge_orders SET status = 'expired' WHERE account_id = ? AND status = 'pending' AND "
                 "expires_at <= ?", (account_id, now))
    where, args = ("AND o.id = ?", [order_id]) if order_id is not None else ("", [])
    rows = conn.execute(
        "SELECT o.*, c.head AS chain_head, (SELECT d.block_number FROM deposits d WHERE d.account_id = o.account_id "
        "AND d.chain = o.chain AND d.status = 'seen' AND d.seen_at >= o.created_at ORDER BY d.block_number LIMIT 1) "
        f"AS deposit_block FROM recharge_orders o LEFT JOIN chain_cursors c ON c.chain = o.chain "
        f"WHERE o.account_id = ? {where} ORDER BY o.created_at DESC, o.id DESC LIMIT ?", (account_id, *args, limit))
    return [dict(r) for r in rows]


def tx_all_orders(conn: sqlite3.Connection, account_id: int | None, now: float, limit: int) -> list[dict[str, Any]]:
    """Recharge orders for the operator, newest first (one account's, or all); overdue pending ones expired first."""
    conn.execute("UPDATE recharge_orders SET status = 'expired' WHERE status = 'pending' AND expires_at <= ?", (now,))
    where, args = ("WHERE account_id = ?", [account_id]) if account_id is not None else ("", [])
    rows = conn.execute(f"SELECT * FROM recharge_orders {where} ORDER BY created_at DESC, id DESC LIMIT ?",
                        (*args, limit))
    return [dict(r) for r in rows]


def tx_deposit_counts(conn: sqlite3.Connection) -> list[tuple[str, str, int]]:
    """Deposits by chain and status, for /metrics."""
    rows = conn.execute("SELECT chain, status, COUNT(*) FROM deposits GROUP BY chain, status")
    return [(r[0], r[1], int(r[2])) for r in rows]


def tx_deposits(conn: sqlite3.Connection, account_id: int | None, limit: int, status: str | None = None,
                without_order: bool = False) -> list[dict[str, Any]]:
    """Recharge records, newest first (one account's, or all; of one status; tied to no order)."""
    clause, args = where(("d.account_id = ?", account_id), ("d.status = ?", status),
                         ("d.order_id IS NULL", without_order))
    rows = conn.execute(f"SELECT d.*, c.head AS chain_head FROM deposits d LEFT JOIN chain_cursors c ON "
                        f"c.chain = d.chain WHERE {clause} ORDER BY d.seen_at DESC, d.id DESC LIMIT ?",
                        (*args, limit))
    return [dict(r) for r in rows]


def confirmations(row: dict[str, Any], required: int) -> int:
    """How many confirmations a deposit's block has, as the watcher last saw the chain (capped at `required`)."""
    head = row.get("chain_head") or 0
    return min(max(head - row["block_number"] + 1, 0), required)
