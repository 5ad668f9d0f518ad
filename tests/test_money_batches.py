"""Admissions and settlements written together (tx_admit_all, tx_settle_all, as one loop turn's transaction
runs them) leave exactly the books, and give exactly the answers, of the same operations run one by one."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing import store
from billing.keys import digest
from billing.store import engine
from billing.store.money import same_sign_sums

KEYS = {  # name -> (account, limits)
    "plain": ("a", {}),
    "limited": ("a", {"monthly_limit": 9_000, "rpm": 4, "tpm": 600}),
    "tpm": ("b", {"tpm": 500}),
}
BALANCES = {"a": 30_000, "b": 5_000}
MONTHS = ("2026-11", "2026-12")


class Done:
    """Stands in for an asyncio future: run_batch only hands results to it."""

    def done(self) -> bool:
        return False


def open_books(path: Path, balances: dict[str, int] = BALANCES) -> sqlite3.Connection:
    conn = engine.connect(str(path))
    engine.migrate(conn)
    conn.execute("BEGIN IMMEDIATE")
    accounts = {name: store.tx_create_account(conn, name, 0.0, balance)["id"] for name, balance in balances.items()}
    for name, (account, limits) in KEYS.items():
        store.tx_create_key(conn, accounts[account], name, name, digest(name), 0.0, limits)
    conn.execute("COMMIT")
    return conn


# Request ids are given out by name() below: fresh for most admissions, now and then one already used (which
# fails alone); a settlement names one admitted before it, or one never admitted.
admission = st.builds(
    lambda key, again, amount, tokens, month, window, kind: ("admit", again, store.HoldRequest(
        request_id="", owner="w", key_hash=digest(key), model="m", amount=amount, estimate=amount // 4,
        tokens=tokens, now=float(window * 60), month=month, window=window, default_rpm=0, default_tpm=0, kind=kind)),
    st.sampled_from([*KEYS, "unknown"]), st.integers(0, 9), st.integers(0, 5_000), st.integers(0, 400),
    st.sampled_from(MONTHS), st.integers(1, 2), st.sampled_from(["request", "task"]))
settlement = st.builds(
    lambda target, cost, tokens_in, tokens_out, by, month: ("settle", target, store.Settlement(
        request_id="", cost=cost, input_tokens=tokens_in, output_tokens=tokens_out, cache_read_tokens=0,
        cache_write_tokens=0, source="upstream", status=200, duration_ms=1.0, now=500.0, month=month, by=by)),
    st.integers(0, 30), st.integers(0, 7_000), st.integers(0, 300), st.integers(0, 300),
    st.sampled_from(["request", "request", "safety_net"]), st.sampled_from(MONTHS))
# a transaction's worth: operations of one kind, as a loop turn groups them
turns = st.lists(st.one_of(st.lists(admission, min_size=1, max_size=6), st.lists(settlement, min_size=1, max_size=6)),
                 min_size=1, max_size=8)


def name(plan: list[list[tuple[str, int, Any]]]) -> list[list[tuple[str, Any]]]:
    """The plan with its request ids given out."""
    admitted: list[str] = []
    named = []
    for turn in plan:
        ops = []
        for kind, pick, item in turn:
            if kind == "admit":
                rid = admitted[-1] if pick == 0 and admitted else f"r{len(admitted)}"
                admitted.append(rid)
            else:
                rid = admitted[pick % len(admitted)] if admitted and pick < 25 else "r-never"
            item.request_id = rid
            ops.append((kind, item))
        named.append(ops)
    return named


def run(conn: sqlite3.Connection, ops: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    batch = [engine._Op(store.tx_admit_all if kind == "admit" else store.tx_settle_all, (item,), Done(),  # type: ignore[arg-type]
                        each=True) for kind, item in ops]
    isolated = engine._run_isolated
    fell_back: list[bool] = []

    def one_by_one(conn: sqlite3.Connection, batch: list[engine._Op]) -> engine.Results:
        fell_back.append(True)
        return isolated(conn, batch)

    engine._run_isolated = one_by_one  # type: ignore[assignment]
    try:
        results = engine.run_batch(conn, batch, busy_gives_up=False)
    finally:
        engine._run_isolated = isolated  # type: ignore[assignment]
    assert results is not None
    answers = [("error", type(exc).__name__) if exc is not None else ("ok", value) for _, value, exc in results]
    # a batch runs one by one (in savepoints) only when one of its operations fails: never to hide a wrong sum
    assert not fell_back or any(kind == "error" for kind, _ in answers)
    return answers


def books(conn: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
    tables = ("accounts", "holds", "ledger", "usage", "key_spend", "rate_windows")
    return {t: [tuple(r) for r in conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2")] for t in tables}


def same_as_one_by_one(folder: Path, turns: list[list[tuple[str, Any]]], balances: dict[str, int] = BALANCES) -> None:
    together, alone = open_books(folder / "together.db", balances), open_books(folder / "alone.db", balances)
    try:
        for turn in turns:
            assert run(together, turn) == [answer for op in turn for answer in run(alone, [op])]
        assert books(together) == books(alone)
        totals = together.execute("SELECT a.balance, a.held, SUM(l.balance_delta), SUM(l.held_delta) FROM accounts a "
                                  "JOIN ledger l ON l.account_id = a.id GROUP BY a.id").fetchall()
        assert all(balance == in_ledger and held == held_in_ledger and 0 <= held <= balance
                   for balance, held, in_ledger, held_in_ledger in totals)
    finally:
        together.close()
        alone.close()


@settings(max_examples=150, deadline=None)
@given(turns, st.sampled_from([BALANCES, {"a": 8_000, "b": 3_000}]))
def test_a_turn_written_together_equals_its_operations_one_by_one(tmp_path_factory: Any,
                                                                  plan: list[list[tuple[str, int, Any]]],
                                                                  balances: dict[str, int]) -> None:
    same_as_one_by_one(tmp_path_factory.mktemp("books"), name(plan), balances)


def admit(rid: int, key: str, amount: int, tokens: int = 10, window: int = 1) -> tuple[str, Any]:
    return ("admit", store.HoldRequest(request_id=f"r{rid}", owner="w", key_hash=digest(key), model="m", amount=amount,
                                       estimate=1, tokens=tokens, now=60.0 * window, month="2026-11", window=window,
                                       default_rpm=0, default_tpm=0))


def settle(rid: int, cost: int, by: str = "request", tokens: int = 10, month: str = "2026-11") -> tuple[str, Any]:
    return ("settle", store.Settlement(request_id=f"r{rid}", cost=cost, input_tokens=tokens // 2,
                                       output_tokens=tokens - tokens // 2, cache_read_tokens=0, cache_write_tokens=0,
                                       source="upstream", status=200, duration_ms=1.0, now=500.0, month=month, by=by))


SCENARIOS = {  # each turn depends on what the operations before it in the same turn did
    "the wallet runs out within a turn": [[admit(i, "plain", 7_000) for i in range(5)]],
    "the monthly limit is reached within a turn": [[admit(i, "limited", 4_000, tokens=1) for i in range(3)]],
    "RPM and TPM are reached within a turn": [[admit(i, "limited", 10, tokens=250) for i in range(5)],
                                              [admit(10 + i, "tpm", 10, tokens=200) for i in range(3)]],
    "settlements share what the wallet has left": [
        [admit(1, "plain", 10_000), admit(2, "plain", 10_000), admit(3, "plain", 10_000)],
        [settle(1, 1), settle(2, 15_000), settle(3, 15_000)]],  # what the first frees, the second may take
    "a request settled twice, and late after the safety net": [
        [admit(1, "plain", 5_000), admit(2, "limited", 5_000)],
        [settle(1, 4_000), settle(1, 4_500), settle(2, 100, "safety_net"), settle(2, 6_000), settle(2, 7_000)]],
    "a late settlement gives money back": [  # in the next month: its key's spend there stops at zero, then grows
        [admit(1, "limited", 5_000, tokens=100), admit(2, "limited", 100, tokens=100), admit(3, "limited", 600)],
        [settle(1, 3_000, "safety_net", tokens=100), settle(2, 100, tokens=100)],
        [settle(1, 0, tokens=300, month="2026-12"), settle(2, 5), settle(3, 500, month="2026-12")]],
    "TPM corrections of both signs in one turn": [
        [admit(i, "tpm", 10, tokens=120) for i in range(4)],
        [settle(0, 1, tokens=10), settle(1, 1, tokens=200), settle(2, 1, tokens=5), settle(3, 1, tokens=120)]],
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenarios_written_together_equal_one_by_one(tmp_path: Path, scenario: str) -> None:
    same_as_one_by_one(tmp_path, SCENARIOS[scenario], {"a": 30_000, "b": 5_000})


def test_turns_reach_every_path(tmp_path: Path) -> None:
    """One fixed plan that takes each path, with its answers spelled out."""
    conn = open_books(tmp_path / "paths.db", {"a": 12_000, "b": 5_000})
    answers = run(conn, [admit(1, "plain", 7_000), admit(2, "plain", 7_000), admit(3, "unknown", 1),
                         admit(4, "limited", 4_000), admit(5, "limited", 6_000), admit(6, "tpm", 1, tokens=501),
                         admit(7, "tpm", 1, tokens=300), admit(8, "tpm", 1, tokens=300), admit(1, "plain", 1)])
    assert [a[1].error if a[0] == "ok" else a[1] for a in answers] == [
        "", "billing_shortfall", "key_unknown", "", "api_key_quota_exceeded", "request_over_tpm", "",
        "rate_limit_tokens", "IntegrityError"]  # the duplicate request id fails alone; the rest stand
    answers = run(conn, [settle(1, 9_000), settle(1, 1), settle(9, 1), settle(4, 100, "safety_net"),
                         settle(4, 3_000), settle(7, 0)])
    assert [a[1] for a in answers] == [
        store.Settled(7_000, 0, 0, overrun=2_000, model="m", taken=7_000),  # at most the hold: the rest, an overrun
        store.Settled(7_000, 0, 0, already=True, model="m"), None, store.Settled(100, 3_900, 0, model="m", taken=100),
        store.Settled(3_000, 0, 0, model="m", taken=2_900), store.Settled(0, 1, 0, model="m")]  # late: takes 2,900 more
    entries = conn.execute("SELECT kind, note IS NOT NULL FROM ledger WHERE request_id = 'r4' ORDER BY id")
    assert [tuple(r) for r in entries] == [
        ("hold", 0), ("settle", 0), ("settle", 1)]  # the late one says why
    assert conn.execute("SELECT tokens FROM rate_windows WHERE window = 1 AND key_id = 3").fetchone()[0] == 10
    conn.close()


def test_same_sign_sums_end_where_the_changes_end() -> None:
    def clamp(start: int, changes: list[int]) -> int:
        for change in changes:
            start = max(start + change, 0)
        return start

    for changes in ([5, 3, -10, -2, 4], [-1, -1, 7], [0, -3, 0, 2], []):
        for start in (0, 1, 6, 20):
            assert clamp(start, same_sign_sums(changes)) == clamp(start, changes)
    assert same_sign_sums([5, 3, -10, -2, 4]) == [8, -12, 4]
