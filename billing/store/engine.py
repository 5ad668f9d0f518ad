"""The store's engine: the SQLite schema, the connection settings, and the database thread that runs
each transaction whole and commits whatever is queued together (group commit, WAL)."""

from __future__ import annotations

import asyncio
import os
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
