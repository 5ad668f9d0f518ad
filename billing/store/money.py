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
    prompt_tokens: int = 0  # the prompt tokens `estimate` is the price of (0 for a priced amount)


def tx_admit(conn: sqlite3.Connection, r: HoldRequest) -> Admission:
    """Authenticate, check the key's limits, and place the hold: all or nothing."""
    return tx_admit_all(conn, [r])[0]


def tx_admit_all(conn: sqlite3.Connection, requests: list[HoldRequest]) -> list[Admission]:
    """Admissions decided in order, each exactly as if it ran alone after the ones before it, then written
    with one statement per table, account, key and rate window rather than several per request."""
    turn = _Admissions(conn)
    decided = [turn.admit(r) for r in requests]
    turn.write()
    return decided


class _Admissions:
    """One transaction's admissions: what each reads comes from the database once, plus what the
    admissions before it in the same transaction placed; the writes wait for write()."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.keys: dict[bytes, sqlite3.Row | None] = {}
        self.available: dict[int, int] = {}  # account -> balance - held, as this transaction has left it
        self.held: dict[int, int] = {}  # account -> held by this transaction's admissions
        self.windows: dict[tuple[int, int], list[int]] = {}  # (key, minute) -> [requests, tokens] so far
        self.counted: dict[tuple[int, int], list[int]] = {}  # (key, minute) -> [requests, tokens] this transaction
        self.committed: dict[tuple[int, str], int] = {}  # (key, month) -> spent + open holds, before this transaction
        self.placed: dict[int, int] = {}  # key -> held by this transaction's admissions
        self.holds: list[tuple[Any, ...]] = []
        self.entries: list[tuple[Any, ...]] = []

    def key(self, key_hash: bytes) -> sqlite3.Row | None:
        if key_hash not in self.keys:
            self.keys[key_hash] = self.conn.execute("SELECT * FROM api_keys WHERE hash = ?", (key_hash,)).fetchone()
        return self.keys[key_hash]

    def admit(self, r: HoldRequest) -> Admission:
        key = self.key(r.key_hash)
        refusal = key_refusal(key, r.model, r.now)
        if refusal is not None:
            return refusal
        assert key is not None
        key_id, account_id = key["id"], key["account_id"]
        rpm = key["rpm"] if key["rpm"] is not None else r.default_rpm
        tpm = key["tpm"] if key["tpm"] is not None else r.default_tpm
        limited = bool(rpm or tpm)
        used_requests = used_tokens = 0
        if limited:
            used_requests, used_tokens = self._window(key_id, r.window)
            if rpm and used_requests + 1 > rpm:
                return Admission("rate_limit_requests", {"limit": rpm, "remaining": 0, "used": used_requests,
                                                         "tpm": tpm, "tokens_used": used_tokens})
            if tpm and r.tokens > tpm:  # can never pass, whatever the wait
                return Admission("request_over_tpm", {"limit": tpm, "needed": r.tokens})
            if tpm and used_tokens + r.tokens > tpm:
                return Admission("rate_limit_tokens", {"limit": tpm, "remaining": max(tpm - used_tokens, 0),
                                                       "needed": r.tokens, "rpm": rpm, "requests_used": used_requests})
        if key["monthly_limit"] is not None:
            committed = self._committed(key_id, r.month) + self.placed.get(key_id, 0)
            if committed + r.amount > key["monthly_limit"]:
                return Admission("api_key_quota_exceeded", {"limit": key["monthly_limit"], "committed": committed,
                                                            "needed": r.amount})
        available = self._available(account_id)
        if available < r.amount:
            return Admission("billing_shortfall", {"needed": r.amount, "available": available})
        self.available[account_id] = available - r.amount
        self.held[account_id] = self.held.get(account_id, 0) + r.amount
        self.placed[key_id] = self.placed.get(key_id, 0) + r.amount
        window = r.window if limited else 0  # 0: not counted against any rate window
        self.holds.append((r.request_id, account_id, key_id, r.model, r.amount, r.estimate, r.tokens, window, r.owner,
                           r.kind, r.now, r.prompt_tokens))
        self.entries.append((account_id, r.amount, r.request_id, key_id, r.now))
        if limited:
            for tally in (self.windows[(key_id, r.window)], self.counted.setdefault((key_id, r.window), [0, 0])):
                tally[0] += 1
                tally[1] += r.tokens
        return Admission("", {"rpm": rpm, "tpm": tpm, "requests_used": used_requests + 1,
                              "tokens_used": used_tokens + r.tokens}, key_id, account_id)

    def _window(self, key_id: int, minute: int) -> list[int]:
        if (key_id, minute) not in self.windows:
            row = self.conn.execute("SELECT requests, tokens FROM rate_windows WHERE key_id = ? AND window = ?",
                                    (key_id, minute)).fetchone()
            self.windows[(key_id, minute)] = [row[0], row[1]] if row is not None else [0, 0]
        return self.windows[(key_id, minute)]

    def _committed(self, key_id: int, month: str) -> int:
        if (key_id, month) not in self.committed:
            self.committed[(key_id, month)] = self.conn.execute(
                "SELECT COALESCE((SELECT spent FROM key_spend WHERE key_id = ?1 AND month = ?2), 0) + "
                "COALESCE((SELECT SUM(amount) FROM holds WHERE key_id = ?1 AND status = 'open'), 0)",
                (key_id, month)).fetchone()[0]  # the holds this transaction placed are not written yet
        return self.committed[(key_id, month)]

    def _available(self, account_id: int) -> int:
        return wallet_available(self.conn, self.available, account_id)

    def write(self) -> None:
        for account_id, amount in self.held.items():
            moved = self.conn.execute("UPDATE accounts SET held = held + ? WHERE id = ? AND balance - held >= ?",
                                      (amount, account_id, amount)).rowcount
            if moved != 1:  # the transaction read the account itself: only a bug gets here
                raise RuntimeError(f"account {account_id} could not hold what its admissions placed")
        if self.holds:
            self.conn.executemany(
                "INSERT INTO holds (request_id, account_id, key_id, model, amount, estimate, tokens, window, owner, "
                "kind, created_at, prompt_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", self.holds)
            self.conn.executemany(
                "INSERT INTO ledger (account_id, kind, balance_delta, held_delta, request_id, key_id, created_at) "
                "VALUES (?, 'hold', 0, ?, ?, ?, ?)", self.entries)
        for (key_id, minute), (requests, tokens) in self.counted.items():
            self.conn.execute("INSERT INTO rate_windows (key_id, window, requests, tokens) VALUES (?, ?, ?, ?) "
                              "ON CONFLICT (key_id, window) DO UPDATE SET requests = requests + excluded.requests, "
                              "tokens = tokens + excluded.tokens", (key_id, minute, requests, tokens))


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
    return usable_key(conn, key_hash, model, now)[0]


def usable_key(conn: sqlite3.Connection, key_hash: bytes, model: str | None,
               now: float) -> tuple[Admission, sqlite3.Row | None]:
    """Who a key belongs to and its row, or why it may not be used for this model now (and no row)."""
    key = conn.execute("SELECT * FROM api_keys WHERE hash = ?", (key_hash,)).fetchone()
    refusal = key_refusal(key, model, now)
    if refusal is not None:
        return refusal, None
    return Admission("", None, key["id"], key["account_id"]), key


def tx_key_scope(conn: sqlite3.Connection, key_hash: bytes, now: float) -> tuple[Admission, list[str] | None]:
    """Who a key belongs to (tx_check_key's checks, for no model in particular) and the models it is restricted to
    (None: all of them). A restricted key sees only its account's tasks of those models, and no recharge."""
    admission, key = usable_key(conn, key_hash, None, now)
    if key is None:
        return admission, None
    return admission, json.loads(key["models"]) if key["models"] is not None else None


def tx_key_balance(conn: sqlite3.Connection, key_hash: bytes, now: float,
                   month: str) -> tuple[Admission, dict[str, Any] | None]:
    """What a key may read of the books (tx_check_key's checks, for no model in particular): its account's balance
    and held money, and the key's own monthly limit, spend in `month` (YYYY-MM, UTC) and open holds, the figures
    admission checks its monthly limit against. Read in one transaction, so they agree with each other."""
    admission, key = usable_key(conn, key_hash, None, now)
    if key is None:
        return admission, None
    row = conn.execute(
        "SELECT balance, held, "
        "COALESCE((SELECT spent FROM key_spend WHERE key_id = ? AND month = ?), 0) AS month_spent, "
        "COALESCE((SELECT SUM(amount) FROM holds WHERE key_id = ? AND status = 'open'), 0) AS key_held "
        "FROM accounts WHERE id = ?", (key["id"], month, key["id"], key["account_id"])).fetchone()
    return (admission,
            {"balance": int(row["balance"]), "held": int(row["held"]), "month_spent": int(row["month_spent"]),
             "key_held": int(row["key_held"]), "monthly_limit": key["monthly_limit"],
             "expires_at": key["expires_at"]})


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
    overrun_tokens: int = 0  # tokens past what the hold was sized for (pricing.overrun_tokens): kept if cost > hold


@dataclass(slots=True)
class Settled:
    charged: int
    released: int
    unbilled: int  # capped cost the wallet could not cover: only a request settled late, after the safety net
    already: bool = False
    overrun: int = 0  # cost above the hold, never charged
    overrun_tokens: int = 0
    model: str = ""  # the hold's model
    taken: int = 0  # what this settlement itself took from the balance (< 0: a late one gave some back)


def tx_settle(conn: sqlite3.Connection, s: Settlement) -> Settled | None:
    """Charge the real cost, never more than the hold (the rest of the cost is recorded as an overrun) nor
    than the wallet holds, release the rest, write the usage row. Idempotent: a hold that is already closed is
    left as it is. None: no such hold."""
    return tx_settle_all(conn, [s])[0]


def tx_settle_all(conn: sqlite3.Connection, settlements: list[Settlement]) -> list[Settled | None]:
    """Settlements decided in order, each exactly as if it ran alone after the ones before it, then written
    with one statement per account, key and rate window (and one batch of rows per table)."""
    turn = _Settlements(conn, [s.request_id for s in settlements])
    decided = [turn.settle(s) for s in settlements]
    turn.write()
    return decided


LATE_NOTE = "the request ended after the safety net closed its hold"


class _Settlements:
    """One transaction's settlements: every hold they name is read at once, each account once; what the
    settlements before one changed is kept here, and the writes wait for write()."""

    def __init__(self, conn: sqlite3.Connection, request_ids: list[str]) -> None:
        self.conn = conn
        wanted = list(dict.fromkeys(request_ids))
        rows = (conn.execute("SELECT * FROM holds WHERE request_id = ?", wanted) if len(wanted) == 1 else
                conn.execute("SELECT * FROM holds WHERE request_id IN (SELECT value FROM json_each(?))",
                             (json.dumps(wanted),)))
        self.holds: dict[str, dict[str, Any]] = {row["request_id"]: dict(row) for row in rows}
        self.closed: list[str] = []  # holds this transaction changed, in order
        self.available: dict[int, int] = {}  # account -> balance - held, as this transaction has left it
        self.moved: dict[int, list[int]] = {}  # account -> [balance taken, held freed]
        self.entries: list[tuple[Any, ...]] = []
        self.spend: dict[tuple[int, str], list[int]] = {}  # (key, month) -> spend changes, in order
        self.tokens: dict[tuple[int, int], list[int]] = {}  # (key, minute) -> TPM corrections, in order
        self.usage_rows: list[tuple[Any, ...]] = []
        self.usage_updates: list[tuple[Any, ...]] = []

    def settle(self, s: Settlement) -> Settled | None:
        hold = self.holds.get(s.request_id)
        if hold is None:
            return None
        if hold["status"] != "open":
            if hold["closed_by"] == "safety_net" and s.by == "request":
                return self._late(hold, s)
            return Settled(hold["charged"] or 0, 0, 0, already=True, model=hold["model"])
        account_id, key_id, amount = hold["account_id"], hold["key_id"], hold["amount"]
        capped = min(s.cost, amount)  # no request costs more than its hold
        charged = min(capped, self._available(account_id) + amount)
        released = amount - charged
        self._move(account_id, charged, amount)
        # One entry closes the hold: a settle charges the cost and frees the whole hold (what was not charged is
        # released with it); a hold with nothing charged is released.
        self.entries.append((account_id, "settle" if charged else "release", -charged, -amount, s.request_id, key_id,
                             None, s.now))
        if key_id is not None:
            if charged:
                self.spend.setdefault((key_id, s.month), []).append(charged)
            actual_tokens = s.input_tokens + s.output_tokens
            if hold["window"] and actual_tokens != hold["tokens"]:  # TPM counts what was really used
                self.tokens.setdefault((key_id, hold["window"]), []).append(actual_tokens - hold["tokens"])
        hold.update(status="settled" if charged else "released", charged=charged, closed_at=s.now, closed_by=s.by)
        self.closed.append(s.request_id)
        overrun = s.cost - capped
        over_tokens = s.overrun_tokens if overrun else 0
        self.usage_rows.append((s.request_id, account_id, key_id, hold["model"], s.input_tokens, s.output_tokens,
                                s.cache_read_tokens, s.cache_write_tokens, charged, capped - charged, s.source,
                                s.status, s.duration_ms, s.now, s.savings, s.units, overrun, over_tokens))
        return Settled(charged, released, capped - charged, overrun=overrun, overrun_tokens=over_tokens,
                       model=hold["model"], taken=charged)

    def _late(self, hold: dict[str, Any], s: Settlement) -> Settled:
        """The request outlived its hold: the safety net charged the prompt estimate, and now the real
        cost is known. Charge (or give back) the difference, never past the hold nor below zero, once."""
        account_id, key_id = hold["account_id"], hold["key_id"]
        capped = min(s.cost, hold["amount"])
        delta = capped - (hold["charged"] or 0)
        extra = min(delta, self._available(account_id)) if delta > 0 else delta
        if extra:
            self._move(account_id, extra, 0)
            self.entries.append((account_id, "settle" if extra > 0 else "adjustment", -extra, 0, s.request_id, key_id,
                                 LATE_NOTE, s.now))
            if key_id is not None:
                self.spend.setdefault((key_id, s.month), []).append(extra)
        charged = (hold["charged"] or 0) + extra
        hold.update(charged=charged, closed_by="request", status="settled" if charged else "released")
        self.closed.append(s.request_id)
        overrun = s.cost - capped
        over_tokens = s.overrun_tokens if overrun else 0
        self.usage_updates.append((s.input_tokens, s.output_tokens, s.cache_read_tokens, s.cache_write_tokens, charged,
                                   capped - charged, s.source, s.status, s.duration_ms, s.savings, s.units, overrun,
                                   over_tokens, s.request_id))
        return Settled(charged, 0, capped - charged, overrun=overrun, overrun_tokens=over_tokens, model=hold["model"],
                       taken=extra)

    def _available(self, account_id: int) -> int:
        return wallet_available(self.conn, self.available, account_id)

    def _move(self, account_id: int, taken: int, freed: int) -> None:
        """`taken` leaves the balance, `freed` leaves the held amount."""
        self.available[account_id] = self._available(account_id) + freed - taken
        moved = self.moved.setdefault(account_id, [0, 0])
        moved[0] += taken
        moved[1] += freed

    def write(self) -> None:
        conn = self.conn
        for account_id, (taken, freed) in self.moved.items():
            conn.execute("UPDATE accounts SET balance = balance - ?, held = held - ? WHERE id = ?",
                         (taken, freed, account_id))
        if self.entries:
            conn.executemany("INSERT INTO ledger (account_id, kind, balance_delta, held_delta, request_id, key_id, "
                             "note, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", self.entries)
        for (key_id, month), changes in self.spend.items():
            for amount in same_sign_sums(changes):
                conn.execute("INSERT INTO key_spend (key_id, month, spent) VALUES (?, ?, MAX(?, 0)) ON CONFLICT "
                             "(key_id, month) DO UPDATE SET spent = MAX(spent + ?, 0)", (key_id, month, amount, amount))
        for (key_id, minute), changes in self.tokens.items():
            for tokens in same_sign_sums(changes):
                conn.execute("UPDATE rate_windows SET tokens = MAX(tokens + ?, 0) WHERE key_id = ? AND window = ?",
                             (tokens, key_id, minute))
        if not self.closed:
            return
        conn.executemany("UPDATE holds SET status = ?, charged = ?, closed_at = ?, closed_by = ? WHERE request_id = ?",
                         [(h["status"], h["charged"], h["closed_at"], h["closed_by"], rid)
                          for rid, h in ((rid, self.holds[rid]) for rid in dict.fromkeys(self.closed))])
        # a request's usage row is inserted when its hold closes and updated by a late settlement: every insert
        # first, then every update, keeps each request's own order
        if self.usage_rows:
            conn.executemany("INSERT OR IGNORE INTO usage (request_id, account_id, key_id, model, input_tokens, "
                             "output_tokens, cache_read_tokens, cache_write_tokens, cost, unbilled, source, status, "
                             "duration_ms, created_at, savings, units, overrun, overrun_tokens) VALUES (?, ?, ?, ?, ?, "
                             "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", self.usage_rows)
        if self.usage_updates:
            conn.executemany("UPDATE usage SET input_tokens = ?, output_tokens = ?, cache_read_tokens = ?, "
                             "cache_write_tokens = ?, cost = ?, unbilled = ?, source = ?, status = ?, duration_ms = ?, "
                             "savings = ?, units = ?, overrun = ?, overrun_tokens = ? WHERE request_id = ?",
                             self.usage_updates)


def wallet_available(conn: sqlite3.Connection, known: dict[int, int], account_id: int) -> int:
    """An account's balance - held: as `known` has it (what this transaction has left it at), else as read."""
    if account_id not in known:
        known[account_id] = conn.execute("SELECT balance - held FROM accounts WHERE id = ?",
                                         (account_id,)).fetchone()[0]
    return known[account_id]


def same_sign_sums(changes: list[int]) -> list[int]:
    """Runs of changes of one sign, each summed. For a count kept at zero or above (MAX(count + change, 0)),
    applying the sums one by one ends where applying every change one by one ends."""
    sums: list[int] = []
    for change in changes:
        if sums and (sums[-1] >= 0) == (change >= 0):
            sums[-1] += change
        else:
            sums.append(change)
    return sums


def tx_stale_holds(conn: sqlite3.Connection, before: float, now: float, limit: int) -> list[dict[str, Any]]:
    """Open request holds older than `before`, or whose owner's heartbeat has lapsed (`stopped`: the process that
    placed it died), oldest first, with what the safety net settles them at (model, estimate, prompt_tokens)."""
    conn.execute("DELETE FROM rate_windows WHERE window < ?", (int(now // 60) - 2,))  # housekeeping
    rows = conn.execute(
        "SELECT * FROM (SELECT request_id, model, estimate, prompt_tokens, created_at, NOT EXISTS (SELECT 1 FROM "
        "leases WHERE name = 'worker:' || holds.owner AND expires_at >= ?) AS stopped FROM holds WHERE status = "
        "'open' AND kind = 'request') WHERE created_at < ? OR stopped ORDER BY created_at LIMIT ?",
        (now, before, limit)).fetchall()
    return [{**dict(r), "stopped": bool(r["stopped"])} for r in rows]


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
