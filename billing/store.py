"""The store: every SQL statement of the gateway, run on one database thread with group commit.
Each operation is a whole transaction in one call; whatever is queued commits together (SQLite, WAL)."""

from __future__ import annotations

import asyncio
import os
import json
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

SCHEMA_VERSION = 1
PAGE_SIZE = 1024
WAL_CHECKPOINT_PAGES = 4000  # 4 MiB of WAL between checkpoints
MAX_BALANCE = 10**18  # nano-dollars: one billion USD, far inside SQLite's 64-bit integers
SCHEMA = """
CREATE TABLE accounts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    balance INTEGER NOT NULL DEFAULT 0,   -- nano-dollars in the wallet, held money included
    held INTEGER NOT NULL DEFAULT 0,      -- the sum of open holds
    created_at INTEGER NOT NULL,
    CHECK (typeof(balance) = 'integer' AND typeof(held) = 'integer' AND held >= 0 AND balance >= held)
);
CREATE TABLE api_keys (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    display TEXT NOT NULL,                -- what a person sees: sk-tt-AbCd...wxyz
    hash BLOB NOT NULL UNIQUE,            -- sha256 of the whole plaintext: finds the row
    status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    monthly_limit INTEGER,                -- nano-dollars per calendar month (UTC), NULL = none
    models TEXT,                          -- JSON list of allowed public model names, NULL = all
    rpm INTEGER, tpm INTEGER,             -- NULL = the configured defaults
    expires_at INTEGER,                   -- unix seconds, NULL = never
    created_at INTEGER NOT NULL,
    rotated_at INTEGER
);
CREATE TABLE key_spend (
    key_id INTEGER NOT NULL REFERENCES api_keys(id),
    month TEXT NOT NULL,                  -- YYYY-MM, UTC
    spent INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, month)
);
CREATE TABLE holds (
    request_id TEXT PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    key_id INTEGER REFERENCES api_keys(id),
    model TEXT NOT NULL,
    amount INTEGER NOT NULL CHECK (amount >= 0),
    estimate INTEGER NOT NULL,            -- the prompt-only cost: what a request is charged when nothing else is known
    tokens INTEGER NOT NULL,              -- tokens counted against TPM at hold time
    window INTEGER NOT NULL,              -- the rate-limit minute it was counted in
    status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'settled', 'released')),
    owner TEXT NOT NULL,                  -- the process serving the request (its heartbeat is a lease)
    closed_by TEXT,                       -- 'request', or 'safety_net' when the net closed it
    charged INTEGER,
    created_at REAL NOT NULL,
    closed_at REAL
);
CREATE INDEX holds_open ON holds (created_at) WHERE status = 'open';   -- only open holds: stays small
CREATE INDEX holds_key ON holds (key_id) WHERE status = 'open';
CREATE TABLE ledger (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    kind TEXT NOT NULL CHECK (kind IN ('credit', 'hold', 'settle', 'release', 'adjustment')),
    balance_delta INTEGER NOT NULL,
    held_delta INTEGER NOT NULL,
    request_id TEXT,
    key_id INTEGER,
    note TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX ledger_account ON ledger (account_id, id);
CREATE TABLE usage (
    request_id TEXT PRIMARY KEY,
    account_id INTEGER NOT NULL,
    key_id INTEGER,
    model TEXT NOT NULL,
    input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
    cache_read_tokens INTEGER NOT NULL, cache_write_tokens INTEGER NOT NULL,
    cost INTEGER NOT NULL,                -- what was charged
    unbilled INTEGER NOT NULL DEFAULT 0,  -- cost the wallet could not cover
    source TEXT NOT NULL,
    status INTEGER NOT NULL,
    duration_ms REAL,
    created_at REAL NOT NULL
);
CREATE INDEX usage_account ON usage (account_id, created_at);
CREATE INDEX usage_key ON usage (key_id, created_at);
CREATE TABLE rate_windows (
    key_id INTEGER NOT NULL,
    window INTEGER NOT NULL,              -- unix minute
    requests INTEGER NOT NULL DEFAULT 0,
    tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, window)
);
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class StoreClosed(Exception):
    pass


@dataclass(slots=True)
class _Op:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]


class Store:
    """Owns the SQLite connection and its thread. `await store.run(fn, *args)` runs fn(conn, *args)
    as one transaction; operations queued together commit together (one fsync for all)."""

    def __init__(self, path: str, synchronous: str = "NORMAL") -> None:
        self.path = path
        self.synchronous = synchronous
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="tokentoll-db", daemon=True)
        self._thread.start()
        await ready

    async def close(self) -> None:
        if self._thread is None or self._closed:
            return
        self._closed = True
        self._queue.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed or self._loop is None:
            raise StoreClosed("the store is closed")
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put(_Op(fn, args, future))
        return await future

    # -- the database thread ----------------------------------------------------------------

    def _serve(self, ready: asyncio.Future[None]) -> None:
        assert self._loop is not None
        try:
            conn = connect(self.path, self.synchronous)
            migrate(conn)
        except Exception as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            self._loop.call_soon_threadsafe(_settle_future, ready, None, exc)
            return
        self._loop.call_soon_threadsafe(_settle_future, ready, None, None)
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while True:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._commit_batch(conn, batch)
        conn.close()

    def _commit_batch(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        if len(batch) == 1:
            self._commit_one(conn, batch[0])
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in batch:
                conn.execute("SAVEPOINT op")
                try:
                    value = op.fn(conn, *op.args)
                except Exception as exc:  # noqa: BLE001 - the op's own failure, for its caller
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    results.append((op.future, None, exc))
                else:
                    conn.execute("RELEASE op")
                    results.append((op.future, value, None))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:  # the commit itself failed: nothing of the batch happened
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            results = [(op.future, None, exc) for op in batch]
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_settle_all, results)


    def _commit_one(self, conn: sqlite3.Connection, op: _Op) -> None:
        """A batch of one: its own transaction, no savepoint needed."""
        value: Any = None
        error: BaseException | None = None
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                value = op.fn(conn, *op.args)
            except Exception as exc:  # noqa: BLE001 - the op's own failure, for its caller
                conn.execute("ROLLBACK")
                error = exc
            else:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            value, error = None, exc
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_settle_future, op.future, value, error)


def _settle_future(future: asyncio.Future[Any], value: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)


def _settle_all(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, value, exc in results:
        _settle_future(future, value, exc)


def connect(path: str, synchronous: str = "NORMAL") -> sqlite3.Connection:
    if path != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        # the books are readable by their owner only; SQLite gives its -wal and -shm files the same mode
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.row_factory = sqlite3.Row
    # Small pages (set on a new database only): a request dirties about a dozen pages of small rows,
    # and every one is written to the WAL at commit: 1 KiB pages write a quarter of the bytes.
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")  # fewer, larger checkpoints
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    if version != 0:
        raise RuntimeError(f"database schema version {version} is newer or unknown (this gateway knows {SCHEMA_VERSION})")
    try:  # one script, one transaction: a half-made schema is never left behind
        conn.executescript(f"BEGIN IMMEDIATE;\n{SCHEMA}\nPRAGMA user_version={SCHEMA_VERSION};\nCOMMIT;")
    except Exception:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


# == transactions ==============================================================================
# Each function below runs on the database thread as one whole transaction (see Store.run).
# Money moves only through tx_admit, tx_settle and tx_credit, and only billing/ledger.py calls them.


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


def tx_admit(conn: sqlite3.Connection, r: HoldRequest) -> Admission:
    """Authenticate, check the key's limits, and place the hold: all or nothing."""
    key = conn.execute("SELECT * FROM api_keys WHERE hash = ?", (r.key_hash,)).fetchone()
    if key is None:
        return Admission("key_unknown")
    if key["status"] != "active":
        return Admission("key_disabled")
    if key["expires_at"] is not None and key["expires_at"] <= r.now:
        return Admission("key_expired", {"expired_at": key["expires_at"]})
    if key["models"] is not None and r.model not in json.loads(key["models"]):
        return Admission("model_not_allowed", {"allowed": json.loads(key["models"])})
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
                 "owner, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (r.request_id, account_id, key["id"], r.model, r.amount, r.estimate, r.tokens, window, r.owner,
                  r.now))
    conn.execute("INSERT INTO ledger (account_id, kind, balance_delta, held_delta, request_id, key_id, created_at) "
                 "VALUES (?, 'hold', 0, ?, ?, ?, ?)", (account_id, r.amount, r.request_id, key["id"], r.now))
    if limited:
        conn.execute("INSERT INTO rate_windows (key_id, window, requests, tokens) VALUES (?, ?, 1, ?) "
                     "ON CONFLICT (key_id, window) DO UPDATE SET requests = requests + 1, "
                     "tokens = tokens + excluded.tokens", (key["id"], r.window, r.tokens))
    return Admission("", {"rpm": rpm, "tpm": tpm, "requests_used": used_requests + 1,
                          "tokens_used": used_tokens + r.tokens}, key["id"], account_id)


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
    by: str = "request"  # or "safety_net"


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
    entries = []  # one statement for the settle and release entries
    if charged:
        entries.append((hold["account_id"], "settle", -charged, -from_hold, s.request_id, hold["key_id"], s.now))
    if released:
        entries.append((hold["account_id"], "release", 0, -released, s.request_id, hold["key_id"], s.now))
    if entries:
        conn.execute("INSERT INTO ledger (account_id, kind, balance_delta, held_delta, request_id, key_id, "
                     "created_at) VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(entries)),
                     [v for e in entries for v in e])
    if hold["key_id"] is not None:
        if charged:
            conn.execute("INSERT INTO key_spend (key_id, month, spent) VALUES (?, ?, ?) "
                         "ON CONFLICT (key_id, month) DO UPDATE SET spent = spent + excluded.spent",
                         (hold["key_id"], s.month, charged))
        actual_tokens = s.input_tokens + s.output_tokens
        if hold["window"] and actual_tokens != hold["tokens"]:  # TPM counts what was really used
            conn.execute("UPDATE rate_windows SET tokens = MAX(tokens + ?, 0) WHERE key_id = ? AND window = ?",
                         (actual_tokens - hold["tokens"], hold["key_id"], hold["window"]))
    conn.execute("UPDATE holds SET status = ?, charged = ?, closed_at = ?, closed_by = ? WHERE request_id = ?",
                 ("settled" if charged else "released", charged, s.now, s.by, s.request_id))
    conn.execute("INSERT OR IGNORE INTO usage (request_id, account_id, key_id, model, input_tokens, output_tokens, "
                 "cache_read_tokens, cache_write_tokens, cost, unbilled, source, status, duration_ms, created_at) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (s.request_id, hold["account_id"], hold["key_id"], hold["model"], s.input_tokens, s.output_tokens,
                  s.cache_read_tokens, s.cache_write_tokens, charged, s.cost - charged, s.source, s.status,
                  s.duration_ms, s.now))
    return Settled(charged, released, s.cost - charged)


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
            conn.execute("INSERT INTO key_spend (key_id, month, spent) VALUES (?, ?, ?) ON CONFLICT (key_id, month) "
                         "DO UPDATE SET spent = MAX(spent + excluded.spent, 0)", (hold["key_id"], s.month, extra))
    charged = (hold["charged"] or 0) + extra
    conn.execute("UPDATE holds SET charged = ?, closed_by = 'request', status = ? WHERE request_id = ?",
                 (charged, "settled" if charged else "released", s.request_id))
    conn.execute("UPDATE usage SET input_tokens = ?, output_tokens = ?, cache_read_tokens = ?, cache_write_tokens = ?, "
                 "cost = ?, unbilled = ?, source = ?, status = ?, duration_ms = ? WHERE request_id = ?",
                 (s.input_tokens, s.output_tokens, s.cache_read_tokens, s.cache_write_tokens, charged,
                  s.cost - charged, s.source, s.status, s.duration_ms, s.request_id))
    return Settled(charged, 0, s.cost - charged)


def tx_stale_holds(conn: sqlite3.Connection, before: float, now: float, limit: int) -> list[dict[str, Any]]:
    """Open holds older than `before`, or whose owner's heartbeat has lapsed (a process that died)."""
    conn.execute("DELETE FROM rate_windows WHERE window < ?", (int(now // 60) - 2,))  # housekeeping
    rows = conn.execute(
        "SELECT request_id, estimate, created_at FROM holds WHERE status = 'open' AND (created_at < ? OR NOT EXISTS "
        "(SELECT 1 FROM leases WHERE name = 'worker:' || holds.owner AND expires_at >= ?)) ORDER BY created_at "
        "LIMIT ?", (before, now, limit)).fetchall()
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


# -- accounts and keys ---------------------------------------------------------------------------


def tx_create_account(conn: sqlite3.Connection, name: str, now: float, credit: int = 0,
                      note: str = "initial credit") -> dict[str, Any]:
    """An account, and its first credit in the same transaction: never one without the other."""
    cur = conn.execute("INSERT INTO accounts (name, created_at) VALUES (?, ?)", (name, int(now)))
    account_id = int(cur.lastrowid or 0)
    if credit:
        tx_credit(conn, account_id, credit, "credit", note, now)
    return tx_account(conn, account_id)


def tx_account(conn: sqlite3.Connection, account_id: int) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM accounts WHERE id = ?", (account_id,)).fetchone()
    if row is None:
        raise LookupError(f"no account {account_id}")
    return dict(row)


def tx_find_account(conn: sqlite3.Connection, ref: str) -> dict[str, Any]:
    """An account by id (all digits) or by name (names are never all digits)."""
    if ref.isdigit():
        row = conn.execute("SELECT * FROM accounts WHERE id = ?", (int(ref),)).fetchone()
    else:
        row = conn.execute("SELECT * FROM accounts WHERE name = ?", (ref,)).fetchone()
    if row is None:
        raise LookupError(f"no account {ref!r}")
    return dict(row)


def tx_list_accounts(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute("SELECT * FROM accounts ORDER BY id")]


KEY_COLUMNS = ("id, account_id, name, display, status, monthly_limit, models, rpm, tpm, expires_at, created_at, "
               "rotated_at, (SELECT COALESCE(SUM(amount), 0) FROM holds WHERE key_id = api_keys.id AND status = 'open') "
               "AS held")


def tx_create_key(conn: sqlite3.Connection, account_id: int, name: str, display: str, key_hash: bytes,
                  now: float, limits: dict[str, Any]) -> dict[str, Any]:
    tx_account(conn, account_id)
    cur = conn.execute("INSERT INTO api_keys (account_id, name, display, hash, created_at) "
                       "VALUES (?, ?, ?, ?, ?)", (account_id, name, display, key_hash, int(now)))
    key_id = int(cur.lastrowid or 0)
    if limits:
        tx_set_key(conn, key_id, limits)
    return tx_key(conn, key_id)


def tx_key(conn: sqlite3.Connection, key_id: int) -> dict[str, Any]:
    row = conn.execute(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
    if row is None:
        raise LookupError(f"no key {key_id}")
    return dict(row)


def tx_list_keys(conn: sqlite3.Connection, account_id: int | None) -> list[dict[str, Any]]:
    if account_id is None:
        rows = conn.execute(f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY id")
    else:
        rows = conn.execute(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE account_id = ? ORDER BY id", (account_id,))
    return [dict(r) for r in rows]


def tx_rotate_key(conn: sqlite3.Connection, key_id: int, display: str, key_hash: bytes,
                  now: float) -> dict[str, Any]:
    moved = conn.execute("UPDATE api_keys SET display = ?, hash = ?, rotated_at = ? WHERE id = ?",
                         (display, key_hash, int(now), key_id)).rowcount
    if moved != 1:
        raise LookupError(f"no key {key_id}")
    return tx_key(conn, key_id)


SETTABLE_KEY_FIELDS = ("name", "status", "monthly_limit", "models", "rpm", "tpm", "expires_at")


def tx_set_key(conn: sqlite3.Connection, key_id: int, fields: dict[str, Any]) -> dict[str, Any]:
    for name in fields:
        if name not in SETTABLE_KEY_FIELDS:
            raise ValueError(f"{name} cannot be set on a key")
    if fields:
        assignments = ", ".join(f"{name} = ?" for name in fields)
        moved = conn.execute(f"UPDATE api_keys SET {assignments} WHERE id = ?", (*fields.values(), key_id)).rowcount
        if moved != 1:
            raise LookupError(f"no key {key_id}")
    return tx_key(conn, key_id)


# -- reading the books ---------------------------------------------------------------------------


def tx_history(conn: sqlite3.Connection, account_id: int, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT * FROM ledger WHERE account_id = ? ORDER BY id DESC LIMIT ?", (account_id, limit))
    return [dict(r) for r in rows]


def tx_ledger_totals(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Per account: the balance and held columns beside what the ledger entries add up to."""
    rows = conn.execute(
        "SELECT a.id, a.balance, a.held, COALESCE(SUM(l.balance_delta), 0) AS ledger_balance, "
        "COALESCE(SUM(l.held_delta), 0) AS ledger_held FROM accounts a LEFT JOIN ledger l ON l.account_id = a.id "
        "GROUP BY a.id ORDER BY a.id")
    return [dict(r) for r in rows]


def tx_open_holds(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute("SELECT * FROM holds WHERE status = 'open' ORDER BY created_at")]


def tx_usage(conn: sqlite3.Connection, account_id: int | None, key_id: int | None, since: float,
             until: float) -> list[dict[str, Any]]:
    clauses, args = ["created_at >= ?", "created_at < ?"], [since, until]
    if account_id is not None:
        clauses.append("account_id = ?")
        args.append(account_id)
    if key_id is not None:
        clauses.append("key_id = ?")
        args.append(key_id)
    rows = conn.execute(
        "SELECT account_id, key_id, model, COUNT(*) AS requests, SUM(input_tokens) AS input_tokens, "
        "SUM(output_tokens) AS output_tokens, SUM(cache_read_tokens) AS cache_read_tokens, "
        "SUM(cache_write_tokens) AS cache_write_tokens, SUM(cost) AS cost, SUM(unbilled) AS unbilled FROM usage WHERE "
        + " AND ".join(clauses) + " GROUP BY account_id, key_id, model ORDER BY account_id, key_id, model", args)
    return [dict(r) for r in rows]


def tx_take_lease(conn: sqlite3.Connection, name: str, holder: str, now: float, ttl: float) -> bool:
    """One holder at a time across processes: true if `holder` has the lease until now + ttl."""
    conn.execute("INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                 "holder = excluded.holder, expires_at = excluded.expires_at "
                 "WHERE leases.holder = excluded.holder OR leases.expires_at < ?", (name, holder, now + ttl, now))
    row = conn.execute("SELECT holder FROM leases WHERE name = ?", (name,)).fetchone()
    return bool(row and row["holder"] == holder)


def tx_bootstrap_demo(conn: sqlite3.Connection, display: str, key_hash: bytes, balance: int,
                      now: float) -> bool:
    """On a database with no account at all: the demo account, its balance and one key, at once
    (so that several workers starting together make exactly one)."""
    if conn.execute("SELECT 1 FROM accounts LIMIT 1").fetchone() is not None:
        return False
    account = tx_create_account(conn, "demo", now, balance, "demo balance")
    tx_create_key(conn, account["id"], "demo", display, key_hash, now, {})
    return True


def tx_setting(conn: sqlite3.Connection, name: str, value_if_missing: str) -> tuple[str, bool]:
    """The stored value of a setting, storing `value_if_missing` first if there is none.
    Returns (value, whether it was stored now)."""
    created = conn.execute("INSERT OR IGNORE INTO settings (name, value) VALUES (?, ?)",
                           (name, value_if_missing)).rowcount == 1
    return conn.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()[0], created
