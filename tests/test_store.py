"""The store's engine: per-request transactions run on the event loop, see what other processes wrote,
step aside to the database thread while another connection writes, and fail one by one."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from billing import store
from billing.store import engine
from tests.conftest import Ticking

ROOT = Path(__file__).resolve().parent.parent

WRITE_ACCOUNT = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("INSERT INTO accounts (name, balance, created_at) VALUES (?, 7, 0)", (sys.argv[2],))
"""


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


@asynccontextmanager
async def opened(path: str) -> AsyncIterator[store.Store]:
    """A started store, closed afterwards whatever happens."""
    db = store.Store(path)
    await db.start()
    try:
        yield db
    finally:
        await db.close()


def test_hot_connection_sees_other_processes_after_more_connections_open(tmp_path: Path) -> None:
    """Opening a second connection in the process once dropped the first one's file locks, after which
    another process's writes went to a WAL this process never read."""
    path = str(tmp_path / "books.db")

    async def go() -> None:
        async with opened(path) as db:
            for i in range(3):
                engine.connect(path).close()  # more connections come and go in this process
                subprocess.run([sys.executable, "-c", WRITE_ACCOUNT, path, f"other-{i}"], check=True)
                names = await db.run_hot(lambda c: [r["name"] for r in c.execute("SELECT name FROM accounts")])
                assert f"other-{i}" in names

    run(go())


def test_hot_operations_wait_on_the_thread_while_another_connection_writes(tmp_path: Path) -> None:
    path = str(tmp_path / "books.db")

    async def go() -> None:
        async with opened(path) as db:
            await db.run(store.tx_create_account, "acct", 0.0)
            blocker = engine.connect(path)
            blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
            pending = asyncio.ensure_future(db.run_hot(store.tx_find_account, "acct"))
            for _ in range(20):  # the loop keeps turning: nothing waits on the lock here
                await asyncio.sleep(0)
            assert not pending.done()
            released = threading.Event()

            def release() -> None:
                released.set()  # before the commit: the waiting operation can only finish after it
                blocker.execute("COMMIT")
                blocker.close()

            threading.Thread(target=release).start()
            account = await pending
            assert released.is_set() and account["name"] == "acct"

    run(go())


def test_one_turn_commits_together_and_a_failing_operation_fails_alone(tmp_path: Path) -> None:
    path = str(tmp_path / "books.db")

    def insert(conn: sqlite3.Connection, name: str) -> int:
        return conn.execute("INSERT INTO accounts (name, created_at) VALUES (?, 0)", (name,)).lastrowid or 0

    async def go() -> None:
        async with opened(path) as db:
            results = await asyncio.gather(*(db.run_hot(insert, n) for n in ("a", "b", "a", "c")),
                                           return_exceptions=True)
            assert isinstance(results[2], sqlite3.IntegrityError)  # the duplicate name, alone
            assert all(isinstance(r, int) for i, r in enumerate(results) if i != 2)
            names = await db.run(lambda c: sorted(r["name"] for r in c.execute("SELECT name FROM accounts")))
            assert names == ["a", "b", "c"]

    run(go())


def test_the_database_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "books.db"
    engine.connect(str(path)).close()
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(sqlite3.OperationalError):  # the hot path's connection never waits for a lock
        holder = engine.connect(str(path))
        holder.execute("BEGIN IMMEDIATE")
        engine.connect(str(path), busy_timeout_ms=0).execute("BEGIN IMMEDIATE")


def test_wal_checkpoints_run_on_the_thread_outside_any_transaction(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "books.db")
    done: list[tuple[int, int, int]] = []
    ran = threading.Event()

    def checkpoint(conn: sqlite3.Connection) -> None:
        assert not conn.in_transaction
        done.append(tuple(conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()))  # type: ignore[arg-type]
        ran.set()

    monkeypatch.setattr(engine, "CHECKPOINT_EVERY_COMMITS", 2)
    monkeypatch.setattr(engine, "checkpoint", checkpoint)

    async def go() -> None:
        async with opened(path) as db:
            for i in range(2):  # two loop turns, two commits on the loop's connection
                await db.run_hot(lambda c, n=i: c.execute("INSERT INTO settings VALUES (?, 'v')", (f"s{n}",)))
            await asyncio.get_running_loop().run_in_executor(None, ran.wait, 10)

    run(go())
    busy, frames, copied = done[0]
    assert busy == 0 and frames > 0 and copied == frames  # the whole WAL went back into the database


def old_database(path: str, version: int) -> sqlite3.Connection:
    """A database as a gateway of that schema version made it (tests/data/schema_v<version>.sql)."""
    old = sqlite3.connect(path)
    old.executescript((Path(__file__).parent / "data" / f"schema_v{version}.sql").read_text() +
                      f"PRAGMA user_version={version};")
    return old


def test_a_version_1_database_is_upgraded_in_place_and_keeps_its_rows(tmp_path: Path) -> None:
    path = str(tmp_path / "books.db")
    old = old_database(path, 1)
    old.execute("INSERT INTO accounts (name, balance, created_at) VALUES ('old', 7, 0)")
    old.execute("INSERT INTO usage (request_id, account_id, model, input_tokens, output_tokens, cache_read_tokens, "
                "cache_write_tokens, cost, source, status, created_at) VALUES ('r1', 1, 'm', 1, 2, 0, 0, 3, "
                "'upstream', 200, 0)")
    old.commit()
    old.close()
    conn = engine.connect(path)
    engine.migrate(conn)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == engine.SCHEMA_VERSION
    row = conn.execute("SELECT cost, savings, units FROM usage WHERE request_id = 'r1'").fetchone()
    assert tuple(row) == (3, 0, 0)
    assert conn.execute("SELECT balance FROM accounts WHERE name = 'old'").fetchone()[0] == 7
    fresh = sqlite3.connect(str(tmp_path / "fresh.db"))
    engine.migrate(fresh)

    def columns(c: sqlite3.Connection) -> dict[str, list[str]]:
        tables = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: sorted(r[1] for r in c.execute(f"PRAGMA table_info({t})")) for t in tables}

    assert columns(conn) == columns(fresh)  # the upgraded database has what a new one has
    engine.migrate(conn)  # a second start changes nothing
    conn.close()


def test_a_version_4_database_gets_its_hot_tables_rebuilt_with_every_row(tmp_path: Path) -> None:
    path = str(tmp_path / "books.db")
    old = old_database(path, 4)
    old.execute("INSERT INTO accounts (name, balance, held, created_at) VALUES ('old', 100, 30, 0)")
    old.execute("INSERT INTO holds (request_id, account_id, key_id, model, amount, estimate, tokens, window, owner, "
                "created_at) VALUES ('r-open', 1, NULL, 'm', 30, 5, 10, 0, 'w', 1.5)")
    old.execute("INSERT INTO holds (request_id, account_id, key_id, model, amount, estimate, tokens, window, status, "
                "owner, kind, closed_by, charged, created_at, closed_at) VALUES ('r-done', 1, NULL, 'm', 9, 2, 4, 0, "
                "'settled', 'w', 'task', 'request', 7, 1.0, 2.0)")
    for i, kind in enumerate(("credit", "hold", "settle", "hold"), start=40):
        old.execute("INSERT INTO ledger (id, account_id, kind, balance_delta, held_delta, request_id, note, created_at) "
                    "VALUES (?, 1, ?, ?, ?, 'r', ?, ?)", (i, kind, i, -i, f"n{i}", float(i)))
    old.commit()
    before = {t: old.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in ("holds", "ledger")}
    before["holds"] = [(*row, 0) for row in before["holds"]]  # version 7 adds holds.prompt_tokens, 0 for these
    old.close()
    conn = engine.connect(path)
    conn.row_factory = None
    engine.migrate(conn)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == engine.SCHEMA_VERSION
    assert {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in ("holds", "ledger")} == before
    fresh = sqlite3.connect(str(tmp_path / "fresh.db"))
    engine.migrate(fresh)

    def definitions(c: sqlite3.Connection) -> list[tuple[str, str]]:
        return c.execute("SELECT name, sql FROM sqlite_master WHERE tbl_name IN ('holds', 'ledger') AND sql IS NOT NULL "
                         "ORDER BY name").fetchall()

    assert definitions(conn) == definitions(fresh)  # the tables and their indexes, as a new database makes them
    assert not any(" IN (" in sql for _, sql in definitions(conn))
    with pytest.raises(sqlite3.IntegrityError):  # the checks still hold
        conn.execute("INSERT INTO ledger (account_id, kind, balance_delta, held_delta, created_at) "
                     "VALUES (1, 'gift', 0, 0, 0)")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE holds SET status = 'lost' WHERE request_id = 'r-open'")
    assert conn.execute("SELECT request_id FROM holds WHERE status = 'open'").fetchall() == [("r-open",)]
    conn.close()


def test_a_database_from_a_newer_gateway_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(str(tmp_path / "new.db"))
    conn.execute(f"PRAGMA user_version={engine.SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match="newer or unknown"):
        engine.migrate(conn)


def test_processes_starting_together_on_a_new_database_make_its_schema_once(tmp_path: Path) -> None:
    path = str(tmp_path / "books.db")
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def starter() -> None:  # as a worker starts: open the database (a new file), then bring its schema up
        try:
            start.wait(30)
            conn = engine.connect(path)
            try:
                engine.migrate(conn)
            finally:
                conn.close()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)
            start.abort()

    threads = [threading.Thread(target=starter, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    conn = engine.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == engine.SCHEMA_VERSION
    assert conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'accounts'").fetchone()[0] == 1
    conn.close()


def insert_setting(conn: sqlite3.Connection, name: str) -> None:
    conn.execute("INSERT INTO settings VALUES (?, 'v')", (name,))


async def queue_one_per_iteration(db: store.Store, names: list[str]) -> list[asyncio.Future[Any]]:
    """One hot operation queued at each of len(names) loop iterations in a row."""
    pending = []
    for name in names:
        pending.append(asyncio.ensure_future(db.run_hot(insert_setting, name)))
        await asyncio.sleep(0)
    return pending


def test_on_a_quiet_loop_each_operation_commits_at_the_next_iteration(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "clock", Ticking(engine.BUSY_ITERATION_SECONDS / 10))

    async def go() -> None:
        async with opened(str(tmp_path / "books.db")) as db:
            first = asyncio.ensure_future(db.run_hot(insert_setting, "a"))
            for _ in range(3):  # the task queues it; the turn runs at the next iteration; the task wakes
                await asyncio.sleep(0)
            assert first.done() and db._hot_commits == 1
            await asyncio.gather(*await queue_one_per_iteration(db, ["b", "c", "d"]))
            assert db._hot_commits == 4  # nobody waited for company

    run(go())


def test_while_the_loop_is_busy_and_company_comes_a_turn_waits_for_it_at_most_company_seconds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    step = engine.BUSY_ITERATION_SECONDS * 2  # each iteration looks busy
    monkeypatch.setattr(engine, "clock", Ticking(step))
    iterations_allowed = int(engine.COMPANY_SECONDS / step)

    async def go() -> None:
        async with opened(str(tmp_path / "books.db")) as db:
            first = [asyncio.ensure_future(db.run_hot(insert_setting, f"a{i}")) for i in range(engine.COMPANY_SEEN)]
            later = await queue_one_per_iteration(db, [f"b{i}" for i in range(5)])
            pending = first + later
            assert db._hot_commits == 0 and not any(p.done() for p in pending)  # all waiting together
            for _ in range(iterations_allowed + 3):  # the loop stays busy: the turn runs at the limit all the same
                await asyncio.sleep(0)
            assert all(p.done() for p in pending) and db._hot_commits == 1
            names = await db.run(lambda c: sorted(r[0] for r in c.execute("SELECT name FROM settings")))
            assert len(names) == engine.COMPANY_SEEN + 5

    run(go())


def test_on_a_busy_loop_a_rare_operation_does_not_wait_for_company(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A request beside busy streams: the loop is busy, but nothing else has been queued lately."""
    clock = Ticking(engine.BUSY_ITERATION_SECONDS * 2)
    monkeypatch.setattr(engine, "clock", clock)

    async def go() -> None:
        async with opened(str(tmp_path / "books.db")) as db:
            for i in range(engine.COMPANY_SEEN + 2):
                clock.now += engine.COMPANY_SECONDS  # a while since the one before
                lone = asyncio.ensure_future(db.run_hot(insert_setting, f"s{i}"))
                for _ in range(3):
                    await asyncio.sleep(0)
                assert lone.done() and db._hot_commits == i + 1

    run(go())


def test_a_full_turn_does_not_wait_for_company(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "clock", Ticking(engine.BUSY_ITERATION_SECONDS * 2))
    monkeypatch.setattr(engine, "DEFER_BATCH", 4)

    async def go() -> None:
        async with opened(str(tmp_path / "books.db")) as db:
            pending = [asyncio.ensure_future(db.run_hot(insert_setting, f"s{i}")) for i in range(4)]
            for _ in range(3):
                await asyncio.sleep(0)
            assert all(p.done() for p in pending) and db._hot_commits == 1

    run(go())


def test_a_hold_is_not_placed_if_its_request_goes_while_a_failed_batch_lets_go_of_the_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch with a failing operation rolls back and takes the lock again to run one by one; a request
    cancelled in between has been settled (finding no hold) and must not get its hold after all."""
    path = str(tmp_path / "books.db")

    def place(conn: sqlite3.Connection, names: list[str]) -> list[None]:
        conn.executemany("INSERT INTO settings VALUES (?, 'held')", [(n,) for n in names])
        return [None for _ in names]

    def refused(conn: sqlite3.Connection) -> None:
        raise ValueError("refused")

    async def go() -> None:
        async with opened(path):  # makes the schema
            pass
        loop = asyncio.get_running_loop()
        hold = engine._Op(place, ("gone",), loop.create_future(), each=True, abandonable=True)
        kept = engine._Op(place, ("kept",), loop.create_future(), each=True, abandonable=True)
        failing = engine._Op(refused, (), loop.create_future())
        real_begin = engine._begin
        begins: list[int] = []

        def begin(conn: sqlite3.Connection) -> sqlite3.OperationalError | None:
            begins.append(1)
            if len(begins) == 2:
                hold.future.cancel()  # the request went while the lock was let go
            return real_begin(conn)

        monkeypatch.setattr(engine, "_begin", begin)
        conn = engine.connect(path)
        results = engine.run_batch(conn, [hold, kept, failing], busy_gives_up=False)
        assert len(begins) == 2
        assert [(future is kept.future, future is failing.future, type(exc)) for future, _, exc in results] == [
            (True, False, type(None)), (False, True, ValueError)]
        assert [r[0] for r in conn.execute("SELECT name FROM settings ORDER BY name")] == ["kept"]
        conn.close()

    run(go())
