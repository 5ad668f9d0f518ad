"""The money transactions: admission (auth, limits and the conditional hold), settlement, the safety
net's reads, credits. Money moves only here, and only billing/ledger.py calls these."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from billing.store.accounts import tx_account, tx_create_key
from billing.store.recharge import order_paid_by

MAX_BALANCE = 10**18  # nano-dollars: one billion USD, far inside SQLite's 64-bit integers


@dataclass(slots=True)
class Admission:
    """What tx_admit decided. error is "" when the request may go ahead with its hold placed."""

    error: str = ""
    detail: dict[str, Any] | None = None
    key_id: int = 0
    account_id: int = 0


@dataclass(slots=True)
class HoldRequest:
    request_id: str
    owner: str
    key_hash: bytes
    model: str
    amount: int
    estimate: int
    tokens: int
    now: float
    month: str
    window: int
    default_rpm: int
    default_tpm: int
    kind: str = "request"  # or "task": closed by the task poller, never by the safety net


def tx_admit(conn: sqlite3.Connection, r: HoldRequest) -> Admission:
    """Authenticate, check the key's limits, and place the hold: all or nothing."""
    key = conn.execute("SELECT * FROM api_keys WHERE hash = ?", (r.key_hash,)).fetchone()
    refusal = key_refusal(key, r.model, r.now)
    if refusal is not None:
        return refusal
    rpm = key["rpm"] if key["rpm"] is not None else r.default_rpm
    tpm = key["tpm"] if key["tpm"] is not None else r.default_tpm
    limited = bool(rpm or tpm)
    used_requests = used_tokens = 0
    if limited:
        win = conn.execute("SELECT requests, tokens FROM rate_windows WHERE key_id = ? AND window = ?",
                           (key["id"], r.window)).fetchone()
        if win is not None:
            used_requests, used_tokens = win["requests"], win["tokens"]
        if rpm and used_requests + 1 > rpm:
            return Admission("rate_limit_requests", {"limit": rpm, "remaining": 0, "used": used_requests,
                                                     "tpm": tpm, "tokens_used": used_tokens})
        if tpm and r.tokens > tpm:  # can never pass, whatever the wait
            return Admission("request_over_tpm", {"limit": tpm, "needed": r.tokens})
        if tpm and used_tokens + r.tokens > tpm:
            return Admission("rate_limit_tokens", {"limit": tpm, "remaining": max(tpm - used_tokens, 0),
                                                   "needed": r.tokens, "rpm": rpm, "requests_used": used_requests})
    if key["monthly_limit"] is not None:
        committed = conn.execute(
            "SELECT COALESCE((SELECT spent FROM key_spend WHERE key_id = ?1 AND month = ?2), 0) + "
            "COALESCE((SELECT SUM(amount) FROM holds WHERE key_id = ?1 AND status = 'open'), 0)",
            (key["id"], r.month)).fetchone()[0]
        if committed + r.amount > key["monthly_limit"]:
            return Admission("api_key_quota_exceeded", {"limit": key["monthly_limit"], "committed": committed,
                                                        "needed": r.amount})
    account_id = key["account_id"]
    moved = conn.execute("UPDATE accounts SET held = held + ? WHERE id = ? AND balance - held >= ?",
                         (r.amount, account_id, r.amount)).rowcount
    if moved != 1:
        row = conn.execute("SELECT balance - held AS available FROM accounts WHERE id = ?", (account_id,)).fetchone()
        return Admission("billing_shortfall", {"needed": r.amount, "available": row["available"]})
    window = r.window if limited else 0  # 0: not counted against any rate window
    conn.execute("INSERT INTO holds (request_id, account_id, key_id, model, amount, estimate, tokens, window, "
                 "owner, kind, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (r.request_id, account_id, key["id"], r.model, r.amount, r.estimate, r.tokens, window, r.owner,
                  r.kind, r.now))
    conn.execute("INSERT INTO ledger (account_id, kind, balance_delta, held_delta, request_id, key_id, created_at) "
                 "VALUES (?, 'hold', 0, ?, ?, ?, ?)", (account_id, r.amount, r.request_id, key["id"], r.now))
    if limited:
        conn.execute("INSERT INTO rate_windows (key_id, window, requests, tokens) VALUES (?, ?, 1, ?) "
                     "ON CONFLICT (key_id, window) DO UPDATE SET requests = requests + 1, "
                     "tokens = tokens + excluded.tokens", (key["id"], r.window, r.tokens))
    return Admission("", {"rpm": rpm, "tpm": tpm, "requests_used": used_requests + 1,
                          "tokens_used": used_tokens + r.tokens}, key["id"], account_id)


def key_refusal(key: sqlite3.Row | None, model: str | None, now: float) -> Admission | None:
    """Why a key may not be used for this model now (with model None: for anything), or None."""
    if key is None:
        return Admission("key_unknown")
    if key["status"] != "active":
        return Admission("key_disabled")
    if key["expires_at"] is not None and key["expires_at"] <= now:
        return Admission("key_expired", {"expired_at": key["expires_at"]})
    if model is not None and key["models"] is not None and model not in json.loads(key["models"]):
        return Admission("model_not_allowed", {"allowed": json.loads(key["models"])})
    return None


def tx_check_key(conn: sqlite3.Connection, key_hash: bytes, model: str | None, now: float) -> Admission:
    """The key checks of admission alone (for unbilled calls such as token counting): no hold, no rate. With
    model None, without the model allow-list: who the key belongs to (reading one's own tasks and orders)."""
    key = conn.execute("SELECT * FROM api_keys WHERE hash = ?", (key_hash,)).fetchone()
    refusal = key_refusal(key, model, now)
    return refusal if refusal is not None else Admission("", None, key["id"], key["account_id"])


@dataclass(slots=True)
class Settlement:
    request_id: str
    cost: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    source: str
    status: int
    duration_ms: float | None
    now: float
    month: str
    by: str = "request"  # or "safety_net", or "task"
    savings: int = 0  # the full price less the cost (cache reads)
    units: int = 0  # images returned, or seconds of video


@dataclass(slots=True)
class Settled:
    charged: int
    released: int
    unbilled: int
    already: bool = False


def tx_settle(conn: sqlite3.Connection, s: Settlement) -> Settled | None:
    """Charge the real cost (never more than the wallet holds), release the rest, write the usage
    row. Idempotent: a hold that is already closed is left as it is. None: no such hold."""
    hold = conn.execute("SELECT h.*, a.balance - a.held AS available FROM holds h JOIN accounts a "
                        "ON a.id = h.account_id WHERE h.request_id = ?", (s.request_id,)).fetchone()
    if hold is None:
        return None
    if hold["status"] != "open":
        if hold["closed_by"] == "safety_net" and s.by == "request":
            return _settle_late(conn, hold, s)
        return Settled(hold["charged"] or 0, 0, 0, already=True)
    amount = hold["amount"]
    coverable = hold["available"] + amount
    charged = min(s.cost, coverable)
    from_hold = min(charged, amount)
    released = amount - from_hold
    conn.execute("UPDATE accounts SET balance = balance - ?, held = held - ? WHERE id = ?",
                 (charged, amount, hold["account_id"]))
    # One entry closes the hold: a settle charges the cost and frees the whole hold (what was not charged is
    # released with it); a hold with nothing charged is released.
    conn.execute("INSERT INTO ledger (account_id, kind, balance_delta, held_delta, request_id, key_id, created_at) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?)", (hold["account_id"], "settle" if charged else "release", -charged,
                                                  -amount, s.request_id, hold["key_id"], s.now))
    if hold["key_id"] is not None:
        if charged:
            _add_key_spend(conn, hold["key_id"], s.month, charged)
        actual_tokens = s.input_tokens + s.output_tokens
        if hold["window"] and actual_tokens != hold["tokens"]:  # TPM counts what was really used
            conn.execute("UPDATE rate_windows SET tokens = MAX(tokens + ?, 0) WHERE key_id = ? AND window = ?",
                         (actual_tokens - hold["tokens"], hold["key_id"], hold["window"]))
    conn.execute("UPDATE holds SET status = ?, charged = ?, closed_at = ?, closed_by = ? WHERE request_id = ?",
                 ("settled" if charged else "released", charged, s.now, s.by, s.request_id))
    conn.execute("INSERT OR IGNORE INTO usage (request_id, account_id, key_id, model, input_tokens, output_tokens, "
                 "cache_read_tokens, cache_write_tokens, cost, unbilled, source, status, duration_ms, created_at, "
                 "savings, units) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (s.request_id, hold["account_id"], hold["key_id"], hold["model"], s.input_tokens, s.output_tokens,
                  s.cache_read_tokens, s.cache_write_tokens, charged, s.cost - charged, s.source, s.status,
                  s.duration_ms, s.now, s.savings, s.units))
    return Settled(charged, released, s.cost - charged)


def _add_key_spend(conn: sqlite3.Connection, key_id: int, month: str, amount: int) -> None:
    """A key's spend this month, moved by `amount` (negative when a charge is given back), never below 0."""
    conn.execute("INSERT INTO key_spend (key_id, month, spent) VALUES (?, ?, MAX(?, 0)) ON CONFLICT (key_id, month) "
                 "DO UPDATE SET spent = MAX(spent + ?, 0)", (key_id, month, amount, amount))


def _settle_late(conn: sqlite3.Connection, hold: sqlite3.Row, s: Settlement) -> Settled:
    """The request outlived its hold: the safety net charged the prompt estimate, and now the real
    cost is known. Charge (or give back) the difference, never below zero, once."""
    delta = s.cost - (hold["charged"] or 0)
    extra = min(delta, hold["available"]) if delta > 0 else delta
    if extra:
        conn.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", (extra, hold["account_id"]))
        conn.execute("INSERT INTO ledger (account_id, kind, balance_delta, held_delta, request_id, key_id, note, "
                     "created_at) VALUES (?, ?, ?, 0, ?, ?, 'the request ended after the safety net closed its hold', ?)",
                     (hold["account_id"], "settle" if extra > 0 else "adjustment", -extra, s.request_id,
                      hold["key_id"], s.now))
        if hold["key_id"] is not None:
            _add_key_spend(conn, hold["key_id"], s.month, extra)
    charged = (hold["charged"] or 0) + extra
    conn.execute("UPDATE holds SET charged = ?, closed_by = 'request', status = ? WHERE request_id = ?",
                 (charged, "settled" if charged else "released", s.request_id))
    conn.execute("UPDATE usage SET input_tokens = ?, output_tokens = ?, cache_read_tokens = ?, cache_write_tokens = ?, "
                 "cost = ?, unbilled = ?, source = ?, status = ?, duration_ms = ?, savings = ?, units = ? "
                 "WHERE request_id = ?",
                 (s.input_tokens, s.output_tokens, s.cache_read_tokens, s.cache_write_tokens, charged,
                  s.cost - charged, s.source, s.status, s.duration_ms, s.savings, s.units, s.request_id))
    return Settled(charged, 0, s.cost - charged)


def tx_stale_holds(conn: sqlite3.Connection, before: float, now: float, limit: int) -> list[dict[str, Any]]:
    """Open holds older than `before`, or whose owner's heartbeat has lapsed (a process that died)."""
    conn.execute("DELETE FROM rate_windows WHERE window < ?", (int(now // 60) - 2,))  # housekeeping
    rows = conn.execute(
        "SELECT request_id, estimate, created_at FROM holds WHERE status = 'open' AND kind = 'request' AND "
        "(created_at < ? OR NOT EXISTS (SELECT 1 FROM leases WHERE name = 'worker:' || holds.owner AND "
        "expires_at >= ?)) ORDER BY created_at LIMIT ?", (before, now, limit)).fetchall()
    return [dict(r) for r in rows]


def tx_credit(conn: sqlite3.Connection, account_id: int, amount: int, kind: str, note: str, now: float) -> int:
    """A credit (amount > 0) or an adjustment (either sign). The balance never drops below what is held."""
    if kind not in ("credit", "adjustment") or (kind == "credit" and amount <= 0):
        raise ValueError("a credit must be a positive amount")
    moved = conn.execute("UPDATE accounts SET balance = balance + ? WHERE id = ? AND balance + ? >= held "
                         "AND balance + ? <= ?", (amount, account_id, amount, amount, MAX_BALANCE)).rowcount
    if moved != 1:
        if conn.execute("SELECT 1 FROM accounts WHERE id = ?", (account_id,)).fetchone() is None:
            raise LookupError(f"no account {account_id}")
        raise ValueError("the change would take the balance below zero, below the money held, or above "
                         f"the largest balance the books hold ({MAX_BALANCE // 10**9} USD)")
    conn.execute("INSERT INTO ledger (account_id, kind, balance_delta, held_delta, note, created_at) "
                 "VALUES (?, ?, ?, 0, ?, ?)", (account_id, kind, amount, note, now))
    return int(conn.execute("SELECT balance FROM accounts WHERE id = ?", (account_id,)).fetchone()[0])



def tx_bootstrap_demo(conn: sqlite3.Connection, display: str, key_hash: bytes, balance: int,
                      now: float) -> bool:
    """On a database with no account at all: the demo account, its balance and one key, at once
    (so that several workers starting together make exactly one)."""
    if conn.execute("SELECT 1 FROM accounts LIMIT 1").fetchone() is not None:
        return False
    account = tx_create_account(conn, "demo", now, balance, "demo balance")
    tx_create_key(conn, account["id"], "demo", display, key_hash, now, {})
    return True


def tx_create_account(conn: sqlite3.Connection, name: str, now: float, credit: int = 0,
                      note: str = "initial credit") -> dict[str, Any]:
    """An account, and its first credit in the same transaction: never one without the other."""
    cur = conn.execute("INSERT INTO accounts (name, created_at) VALUES (?, ?)", (name, int(now)))
    account_id = int(cur.lastrowid or 0)
    if credit:
        tx_credit(conn, account_id, credit, "credit", note, now)
    return tx_account(conn, account_id)


def tx_credit_deposit(conn: sqlite3.Connection, deposit_id: int, now: float, note: str | None = None) -> int | None:
    """Credit a final deposit to its account, exactly once: marking the deposit credited and the wallet's credit
    are one transaction. A deposit held below the minimum is credited only by an operator, with a note. The
    account's open recharge order (else its latest expired one: a late payment) records the deposit.
    Returns the nano-dollars credited, or None when the deposit is not one to credit (already credited, dropped)."""
    allowed = ("seen", "held") if note else ("seen",)
    deposit = conn.execute("SELECT * FROM deposits WHERE id = ?", (deposit_id,)).fetchone()
    if deposit is None or deposit["status"] not in allowed:
        return None
    moved = conn.execute("UPDATE deposits SET status = 'credited', credited_at = ?, note = COALESCE(?, note) "
                         "WHERE id = ? AND status = ?", (now, note, deposit_id, deposit["status"])).rowcount
    if moved != 1:
        return None
    what = f"USDT deposit {deposit['chain']} {deposit['tx_hash']}:{deposit['log_index']}"
    if deposit["credit"] > 0:
        tx_credit(conn, deposit["account_id"], deposit["credit"], "credit", what + (f" ({note})" if note else ""), now)
    order_id = order_paid_by(conn, deposit["account_id"], deposit["chain"], int(deposit["amount_raw"]),
                              ("confirming", "pending", "expired"))
    if order_id is not None:  # a deposit smaller than every open order pays none of them (it is credited all the same)
        late = conn.execute("SELECT status FROM recharge_orders WHERE id = ?", (order_id,)).fetchone()[0] == "expired"
        conn.execute("UPDATE recharge_orders SET deposit_id = ?, status = CASE WHEN status = 'expired' THEN "
                     "'expired' ELSE 'credited' END WHERE id = ?", (deposit_id, order_id))
        conn.execute("UPDATE deposits SET order_id = ?, note = COALESCE(note, ?) WHERE id = ?",
                     (order_id, f"arrived after order {order_id} expired" if late else None, deposit_id))
    return int(deposit["credit"])
