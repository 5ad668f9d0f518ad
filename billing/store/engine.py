"""The store's engine: the SQLite schema, the connection settings, and the database thread that runs
each transaction whole and commits whatever is queued together (group commit, WAL)."""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

SCHEMA_VERSION = 7
PAGE_SIZE = 1024
WAL_CHECKPOINT_PAGES = 4000  # 4 MiB of WAL between checkpoints
CHECKPOINT_EVERY_COMMITS = 500  # the event loop's commits between two checkpoints on the thread
BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
CHECKPOINT = "checkpoint"  # a queue item: checkpoint the WAL on the database thread
# A deferred hot operation (a settlement, which nobody waits on before answering) waits at most this long for
# others to commit with: one commit writes the pages they share (the account, the tails of the ledger and of the
# usage table) once for all of them. When a turn is already due it joins that one instead, which may itself wait
# up to COMPANY_SECONDS for company (below).
DEFER_SECONDS = 0.004
DEFER_BATCH = 64  # ...or until this many are waiting
# A transaction costs about the same however many requests it carries: on a busy loop its statements, pages and
# code have all gone cold in the CPU's caches since the last one (measured in a loop of the real transactions with
# 8 MiB touched between turns: about 0.7 ms a turn plus 30 us a request).
# So a turn waits for company while the loop has other work and company has been coming (the last
# COMPANY_SEEN operations were queued within COMPANY_SECONDS): it runs at the first loop iteration that comes
# round quickly (the loop had nothing else to do; an idle iteration takes some 10-20 us), else after
# COMPANY_SECONDS. A request on a quiet gateway, or a rare one beside busy streams, has its hold written at once.
BUSY_ITERATION_SECONDS = 0.0001
COMPANY_SECONDS = 0.010
COMPANY_SEEN = 4
clock = time.perf_counter  # what the turns are timed with (a test gives its own)
log = logging.getLogger("tokentoll.store")
# The tables every request writes (holds, ledger) spell their CHECKs as OR chains: SQLite evaluates `x IN (...)`
# with a constant list by building a temporary table each time, a few microseconds on every row written.
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
    status TEXT NOT NULL DEFAULT 'open' CHECK (status = 'open' OR status = 'settled' OR status = 'released'),
    owner TEXT NOT NULL,                  -- the process serving the request (its heartbeat is a lease)
    kind TEXT NOT NULL DEFAULT 'request', -- 'task': an async task's hold, closed by the task poller, not the net
    closed_by TEXT,                       -- 'request', or 'safety_net' when the net closed it
    charged INTEGER,
    created_at REAL NOT NULL,
    closed_at REAL
, prompt_tokens INTEGER NOT NULL DEFAULT 0);  -- the prompt tokens the estimate is for (as ALTER TABLE writes it)
CREATE INDEX holds_open ON holds (created_at) WHERE status = 'open';   -- only open holds: stays small
CREATE INDEX holds_key ON holds (key_id) WHERE status = 'open';
CREATE TABLE ledger (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    kind TEXT NOT NULL CHECK (kind = 'credit' OR kind = 'hold' OR kind = 'settle' OR kind = 'release' OR
                              kind = 'adjustment'),
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
    created_at REAL NOT NULL,
    savings INTEGER NOT NULL DEFAULT 0,   -- the full price less the cost: what cache reads saved
    units INTEGER NOT NULL DEFAULT 0,     -- images returned, or seconds of video, where priced so
    overrun INTEGER NOT NULL DEFAULT 0,   -- cost above the hold, never charged (an upstream past its limits)
    overrun_tokens INTEGER NOT NULL DEFAULT 0  -- the tokens past what the hold was sized for
);
CREATE INDEX usage_account ON usage (account_id, created_at);   -- (a key's usage: through its account's)
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
CREATE TABLE response_cache (
    key BLOB PRIMARY KEY,                 -- sha256 of scope, model and the canonical request
    scope TEXT NOT NULL,                  -- 'account:<id>' or 'shared'
    model TEXT NOT NULL,
    body BLOB NOT NULL,                   -- the answer in the gateway's internal shape (JSON)
    size INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    used_at REAL NOT NULL                 -- the least recently used go first when the cache is full
);
CREATE INDEX response_cache_used ON response_cache (used_at);
CREATE INDEX response_cache_expires ON response_cache (expires_at);
CREATE TABLE tasks (
    id TEXT PRIMARY KEY,                  -- the id the client sees
    upstream_id TEXT NOT NULL,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    key_id INTEGER,
    model TEXT NOT NULL,
    request_id TEXT NOT NULL,             -- the hold's request id
    status TEXT NOT NULL,                 -- queued, in_progress, completed, failed, cancelled, expired
    amount INTEGER NOT NULL,              -- held at submission
    object TEXT NOT NULL,                 -- the last task object seen (JSON), as the client sees it
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    expires_at REAL NOT NULL,             -- not completed by then: expired, released
    polled_at REAL NOT NULL DEFAULT 0
);
CREATE INDEX tasks_open ON tasks (polled_at) WHERE status IN ('queued', 'in_progress');
CREATE INDEX tasks_account ON tasks (account_id, created_at);
CREATE TABLE deposit_addresses (       -- each account's own deposit address on each chain
    chain TEXT NOT NULL,
    address TEXT NOT NULL,                -- 0x + 40 lower-case hex digits (TRON: the same 20 bytes)
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    derivation_index INTEGER NOT NULL,    -- m/44'/coin'/account'/0/index
    created_at REAL NOT NULL,
    PRIMARY KEY (chain, address),
    UNIQUE (chain, account_id)
);
CREATE TABLE deposits (
    id INTEGER PRIMARY KEY,
    chain TEXT NOT NULL,
    tx_hash TEXT NOT NULL,
    log_index INTEGER NOT NULL,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    address TEXT NOT NULL,
    amount_raw TEXT NOT NULL,             -- token base units, as decimal text (18 decimals can pass 2^63)
    credit INTEGER NOT NULL,              -- nano-dollars it credits
    block_number INTEGER NOT NULL,
    block_hash TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('seen', 'credited', 'dropped', 'held')),
    order_id INTEGER,
    seen_at REAL NOT NULL,
    credited_at REAL,
    note TEXT,                            -- why an operator credited or dropped it
    UNIQUE (chain, tx_hash, log_index)
);
CREATE INDEX deposits_seen ON deposits (chain, block_number) WHERE status = 'seen';
CREATE INDEX deposits_account ON deposits (account_id, seen_at);
CREATE TABLE recharge_orders (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    chain TEXT NOT NULL,
    address TEXT NOT NULL,
    amount_raw TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'confirming', 'credited', 'expired')),
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    deposit_id INTEGER
);
CREATE INDEX recharge_orders_account ON recharge_orders (account_id, created_at);
CREATE TABLE chain_cursors (
    chain TEXT PRIMARY KEY,
    next_block INTEGER NOT NULL,          -- every block below it was scanned and is final
    head INTEGER NOT NULL DEFAULT 0,      -- the chain's head at the last pass (for an order's confirmations)
    updated_at REAL NOT NULL
);
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE users (                  -- console log-ins: each belongs to one account
    id INTEGER PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,           -- lower-cased
    password TEXT NOT NULL,               -- scrypt$N$r$p$salt$hash (core/console/security.py)
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    role TEXT NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'operator')),
    created_at REAL NOT NULL,
    password_changed_at REAL NOT NULL
);
CREATE INDEX users_account ON users (account_id);
CREATE TABLE console_sessions (
    token_hash BLOB PRIMARY KEY,          -- sha256 of the session token; the token is only in the cookie
    user_id INTEGER NOT NULL REFERENCES users(id),
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX console_sessions_user ON console_sessions (user_id);
CREATE TABLE login_failures (         -- console log-in and sign-up attempts, for their rate limits
    subject TEXT NOT NULL,                -- login:<e-mail sha256>|<client>, login-client:<client>, signup:<client>
    at REAL NOT NULL
);
CREATE INDEX login_failures_subject ON login_failures (subject, at);
CREATE TABLE upstream_health (        -- each worker's upstream outcomes per minute, flushed now and then
    provider TEXT NOT NULL,
    minute INTEGER NOT NULL,              -- unix minute
    owner TEXT NOT NULL,                  -- the worker
    requests INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    PRIMARY KEY (provider, minute, owner)
);
"""


def where(*conditions: tuple[str, Any]) -> tuple[str, list[Any]]:
    """A WHERE clause joining the conditions whose value is not None (or "1" when none is left), and its
    arguments: a condition's value is its argument when its SQL has a `?`, else only says whether it applies."""
    kept = [(sql, value) for sql, value in conditions if value is not None and value is not False]
    return " AND ".join(sql for sql, _ in kept) or "1", [value for sql, value in kept if "?" in sql]


class StoreClosed(Exception):
    pass


@dataclass(slots=True)
class _Op:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]
    each: bool = False  # fn(conn, items) takes the items of every such operation of a transaction at once
    # not run if its caller has stopped waiting (its future is cancelled) when the transaction takes the lock: a
    # hold for a request that has gone (see still_wanted); its caller must never forward after a cancellation
    abandonable: bool = False


class Store:
    """Owns the SQLite connections and the database thread. `await store.run(fn, *args)` runs
    fn(conn, *args) as one transaction on the thread; operations queued together commit together.
    `await store.run_hot(fn, *args)` is for the per-request transactions (admit, settle): those of one
    event-loop turn run as one transaction right on the loop, with no thread hop; when another
    connection (another worker, the CLI, the safety net) holds the write lock, they queue on the
    thread instead, which waits for it. A turn's operations run grouped by function, not in the order
    they were queued: callers that need an order between two operations await the first before queuing
    the second. While the loop is busy with other work and operations keep coming, a turn waits for more to
    join it (at most COMPANY_SECONDS). Checkpoints of the WAL run on the thread, never on the loop."""

    def __init__(self, path: str, synchronous: str = "NORMAL", hot_inline: bool = True) -> None:
        self.path = path
        self.synchronous = synchronous
        self.hot_inline = hot_inline and path != ":memory:"  # a memory database is private to one connection
        self._queue: queue.SimpleQueue[list[_Op] | str | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._hot: list[_Op] = []  # hot operations of this loop turn
        self._deferred: list[_Op] = []  # hot operations that may wait a little for company (see DEFER_SECONDS)
        self._turn_due = False  # a turn is scheduled with call_soon (see _next_iteration)
        self._iteration: asyncio.Handle | None = None  # the scheduled turn's callback for the next loop iteration
        self._turn_asked = 0.0  # when (perf_counter) the scheduled turn was asked for
        self._looked = 0.0  # when it last looked at the loop
        self._arrivals: deque[float] = deque(maxlen=COMPANY_SEEN)  # when the last hot operations were queued
        self._timer: asyncio.TimerHandle | None = None  # or, for deferred operations only, with call_later
        self._hot_conn: sqlite3.Connection | None = None
        self._hot_commits = 0

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="tokentoll-db", daemon=True)
        self._thread.start()
        await ready
        if self.hot_inline:
            # Without foreign-key checks: the per-request transactions (admit, settle) write only the ids of rows
            # they have just read in the same transaction (the key, its account, the hold), so each check would
            # look up a row already found. Every other connection checks them.
            self._hot_conn = connect(self.path, self.synchronous, busy_timeout_ms=0, autocheckpoint=False,
                                     foreign_keys=False)

    async def close(self) -> None:
        if self._thread is None or self._closed:
            return
        self._closed = True
        if self._hot or self._deferred:
            self._run_hot_turn()
        self._queue.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        if self._hot_conn is not None:
            self._hot_conn.close()
            self._hot_conn = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed or self._loop is None:
            raise StoreClosed("the store is closed")
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put([_Op(fn, args, future)])
        return await future

    async def run_hot(self, fn: Callable[..., T], *args: Any, deferred: bool = False) -> T:
        """`deferred`: the caller can wait a few ms (DEFER_SECONDS) for others to commit with."""
        return await self._queue_hot(_Op(fn, args, self._new_future()), deferred)

    async def run_hot_each(self, fn: Callable[[sqlite3.Connection, list[Any]], list[T]], item: Any,
                           deferred: bool = False, abandonable: bool = False) -> T:
        """Like run_hot, for a function of many items (fn(conn, items) -> one result per item, in order): the
        items queued for one transaction go to one call, which can write them with a statement per table
        rather than several per item. `abandonable`: the item is dropped if the caller is cancelled before its
        transaction begins."""
        return await self._queue_hot(_Op(fn, (item,), self._new_future(), each=True, abandonable=abandonable),
                                     deferred)

    def _new_future(self) -> asyncio.Future[Any]:
        if self._closed or self._loop is None:
            raise StoreClosed("the store is closed")
        return self._loop.create_future()

    async def _queue_hot(self, op: _Op, deferred: bool) -> Any:
        if self._hot_conn is None:
            self._queue.put([op])
            return await op.future
        assert self._loop is not None
        future = op.future
        self._arrivals.append(clock())
        if deferred:
            self._deferred.append(op)
            if len(self._deferred) >= DEFER_BATCH:
                self._schedule_turn()
            elif self._timer is None and not self._turn_due:
                self._timer = self._loop.call_later(DEFER_SECONDS, self._run_hot_turn)
        else:
            self._hot.append(op)
            self._schedule_turn()
        return await future

    def _schedule_turn(self) -> None:
        """The turn runs once every request of this loop iteration has queued its own operation, and later
        while the loop is busy (see COMPANY_SECONDS)."""
        if not self._turn_due:
            assert self._loop is not None
            self._turn_due = True
            self._turn_asked = self._looked = clock()
            self._iteration = self._loop.call_soon(self._next_iteration)

    def _next_iteration(self) -> None:
        now = clock()
        busy = now - self._looked > BUSY_ITERATION_SECONDS  # other callbacks ran since it last looked
        coming = len(self._arrivals) == COMPANY_SEEN and now - self._arrivals[0] < COMPANY_SECONDS
        if (busy and coming and now - self._turn_asked < COMPANY_SECONDS
                and len(self._hot) + len(self._deferred) < DEFER_BATCH):
            assert self._loop is not None
            self._looked = now
            self._iteration = self._loop.call_soon(self._next_iteration)
            return
        self._iteration = None
        self._run_hot_turn()

    def _run_hot_turn(self) -> None:
        self._turn_due = False
        if self._iteration is not None:
            self._iteration.cancel()
            self._iteration = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # The operations of one turn come from requests running concurrently, so any order is one they could have
        # come in: they run grouped by function, in the order each function first came (deferred settlements
        # first), each group in the order it was queued.
        batch = grouped(self._deferred + self._hot)
        self._hot, self._deferred = [], []
        if not batch:
            return
        assert self._hot_conn is not None and self._loop is not None
        results = run_batch(self._hot_conn, batch, busy_gives_up=True)
        if results is None:  # another connection is writing: wait for it on the thread, not here
            self._queue.put(batch)
            return
        _settle_all(results)
        self._hot_commits += 1
        if self._hot_commits % CHECKPOINT_EVERY_COMMITS == 0:
            self._queue.put(CHECKPOINT)

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
            batch: list[_Op] = []
            checkpoint_due = False
            item: list[_Op] | str | None = first
            while True:
                if item is None:
                    stop = True
                    break
                if item == CHECKPOINT:
                    checkpoint_due = True
                else:
                    assert isinstance(item, list)
                    batch.extend(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                results = run_batch(conn, batch, busy_gives_up=False)
                assert results is not None
                self._loop.call_soon_threadsafe(_settle_all, results)
            if checkpoint_due:
                checkpoint(conn)
        conn.close()


Results = list[tuple["asyncio.Future[Any]", Any, "BaseException | None"]]


def run_batch(conn: sqlite3.Connection, batch: list[_Op], busy_gives_up: bool) -> Results | None:
    """Run the operations in one transaction and commit once. An operation that raises is undone alone
    and its caller gets the exception: the batch runs again with a savepoint around each operation
    (operations only read and write the database, so running one again is safe). None (with
    busy_gives_up): another connection holds the write lock and nothing was done."""
    failed = _begin(conn)
    if failed is not None:
        return None if busy_gives_up and _busy(failed) else [(op.future, None, failed) for op in batch]
    batch = still_wanted(batch)
    try:
        try:  # the common case, with no savepoint statements: nothing raises
            results = _run_all(conn, batch)
        except Exception as exc:  # noqa: BLE001 - handed to its caller below
            conn.execute("ROLLBACK")
            if len(batch) <= 1:
                return [(op.future, None, exc) for op in batch]
            failed = _begin(conn)
            if failed is not None:
                return None if busy_gives_up and _busy(failed) else [(op.future, None, failed) for op in batch]
            batch = still_wanted(batch)  # the rollback let go of the lock: the request may have gone since
            results = _run_isolated(conn, batch)
        conn.execute("COMMIT")
    except sqlite3.Error as exc:  # the commit itself failed: nothing of the batch happened
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        return [(op.future, None, exc) for op in batch]
    return results


def still_wanted(batch: list[_Op]) -> list[_Op]:
    """Called with the write lock just taken: a hold whose request was cancelled before this point is not
    placed (the request's settlement, in this transaction or a later one, finds no hold); one cancelled after
    it is closed by that settlement, which cannot commit before this transaction does."""
    return [op for op in batch if not (op.abandonable and op.future.cancelled())]


def grouped(batch: list[_Op]) -> list[_Op]:
    """The operations grouped by function, in the order each function first appears; each group keeps its order."""
    groups: dict[Callable[..., Any], list[_Op]] = {}
    for op in batch:
        groups.setdefault(op.fn, []).append(op)
    return [op for group in groups.values() for op in group]


def _run_all(conn: sqlite3.Connection, batch: list[_Op]) -> Results:
    """Every operation in order; consecutive operations of one function of many items make one call."""
    results: Results = []
    i = 0
    while i < len(batch):
        op = batch[i]
        if not op.each:
            results.append((op.future, op.fn(conn, *op.args), None))
            i += 1
            continue
        j = i + 1
        while j < len(batch) and batch[j].each and batch[j].fn is op.fn:
            j += 1
        values = op.fn(conn, [o.args[0] for o in batch[i:j]])
        results.extend((o.future, value, None) for o, value in zip(batch[i:j], values, strict=True))
        i = j
    return results


def _begin(conn: sqlite3.Connection) -> sqlite3.OperationalError | None:
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        return exc
    return None


def _busy(exc: sqlite3.OperationalError) -> bool:
    return exc.sqlite_errorcode & 0xFF in BUSY_CODES  # the primary code of an extended one


def _run_isolated(conn: sqlite3.Connection, batch: list[_Op]) -> Results:
    results: Results = []
    for op in batch:
        conn.execute("SAVEPOINT op")
        try:
            value = op.fn(conn, [op.args[0]])[0] if op.each else op.fn(conn, *op.args)
        except Exception as exc:  # noqa: BLE001 - the op's own failure, for its caller
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            results.append((op.future, None, exc))
        else:
            conn.execute("RELEASE op")
            results.append((op.future, value, None))
    return results


def checkpoint(conn: sqlite3.Connection) -> None:
    """Copy the WAL back into the database file without waiting for (or blocking) the writers; outside
    any transaction. A failure only postpones it to the next one."""
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    except sqlite3.Error as exc:
        log.warning("WAL checkpoint postponed: %s", exc)


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


def connect(path: str, synchronous: str = "NORMAL", busy_timeout_ms: int = 30000,
            autocheckpoint: bool = True, foreign_keys: bool = True) -> sqlite3.Connection:
    if path != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        # The books are readable by their owner only; SQLite gives its -wal and -shm files the same mode.
        # Only a missing file is made here: closing any descriptor of the database file would drop the
        # POSIX locks this process's other connections hold on it (and another process could then
        # take the database for unused, checkpoint it and start a WAL they never see).
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
        except FileExistsError:
            pass
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000)
    conn.row_factory = sqlite3.Row
    # Small pages (set on a new database only): a request dirties about a dozen pages of small rows,
    # and every one is written to the WAL at commit: 1 KiB pages write a quarter of the bytes.
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
    _set_wal(conn, busy_timeout_ms / 1000)
    # fewer, larger checkpoints; none at all on the event loop's connection (the thread does its checkpoints)
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES if autocheckpoint else 0}")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
    conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
    return conn


def _set_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """WAL mode, waiting for other connections: turning a new database to WAL needs it alone, and SQLite
    answers "database is locked" at once, without its busy handler, while another process opens it too
    (workers starting together on a new file)."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if not _busy(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)  # a start-up path, never on the event loop's hot path
        pause = min(pause * 2, 0.05)


# The holds table as versions 4 to 6 made it: version 7's column comes from its own upgrade, and SCHEMA spells
# that column as ALTER TABLE writes it, so an upgraded database's holds read exactly as a new one's.
HOLDS_V6 = SCHEMA[SCHEMA.index("CREATE TABLE holds"):SCHEMA.index(", prompt_tokens")] + ");\n"

# From each older version to the next; a new database gets SCHEMA whole.
UPGRADES = {
    1: """
ALTER TABLE holds ADD COLUMN kind TEXT NOT NULL DEFAULT 'request';
ALTER TABLE usage ADD COLUMN savings INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage ADD COLUMN units INTEGER NOT NULL DEFAULT 0;
""" + SCHEMA[SCHEMA.index("CREATE TABLE response_cache"):SCHEMA.index("CREATE TABLE deposit_addresses")],
    2: SCHEMA[SCHEMA.index("CREATE TABLE deposit_addresses"):SCHEMA.index("CREATE TABLE settings")],
    3: "DROP INDEX IF EXISTS usage_key;\n" + SCHEMA[SCHEMA.index("CREATE TABLE users"):],
    # holds and ledger rebuilt with their CHECKs as OR chains (a table's CHECK cannot be altered); their rows are
    # copied column by column (a version 1 database added holds.kind at the end), ids and all
    4: """
DROP INDEX holds_open;
DROP INDEX holds_key;
DROP INDEX ledger_account;
ALTER TABLE holds RENAME TO holds_v4;
ALTER TABLE ledger RENAME TO ledger_v4;
""" + HOLDS_V6 + SCHEMA[SCHEMA.index("CREATE INDEX holds_open"):SCHEMA.index("CREATE TABLE usage")] + """
INSERT INTO holds (request_id, account_id, key_id, model, amount, estimate, tokens, window, status, owner, kind,
                   closed_by, charged, created_at, closed_at)
SELECT request_id, account_id, key_id, model, amount, estimate, tokens, window, status, owner, kind, closed_by,
       charged, created_at, closed_at FROM holds_v4;
INSERT INTO ledger (id, account_id, kind, balance_delta, held_delta, request_id, key_id, note, created_at)
SELECT id, account_id, kind, balance_delta, held_delta, request_id, key_id, note, created_at FROM ledger_v4;
DROP TABLE holds_v4;
DROP TABLE ledger_v4;
""",
    5: """
ALTER TABLE usage ADD COLUMN overrun INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage ADD COLUMN overrun_tokens INTEGER NOT NULL DEFAULT 0;
""",
    6: """
ALTER TABLE holds ADD COLUMN prompt_tokens INTEGER NOT NULL DEFAULT 0;
""",
}


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the database to SCHEMA_VERSION in one transaction, under the write lock: of several processes
    starting together on a new database, one creates the schema and the others find it made."""
    if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]  # again, now that no one else can write
        if version != SCHEMA_VERSION:
            if version > SCHEMA_VERSION or (version != 0 and version not in UPGRADES):
                raise RuntimeError(f"database schema version {version} is newer or unknown (this gateway knows "
                                   f"{SCHEMA_VERSION})")
            script = SCHEMA if version == 0 else "".join(UPGRADES[v] for v in range(version, SCHEMA_VERSION))
            for statement in _statements(script):  # a half-made schema is never left behind
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _statements(script: str) -> list[str]:
    """A script's statements one by one (executescript would commit the transaction they must share)."""
    out, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            out.append(pending)
            pending = ""
    if pending.strip() and not all(p.strip().startswith("--") for p in pending.splitlines() if p.strip()):
        raise ValueError("the schema script ends with an incomplete statement")
    return out
