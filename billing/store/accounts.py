"""Accounts, keys and the read side of the books: every other statement of the store.
Each function runs on the database thread as one whole transaction (see Store.run)."""

from __future__ import annotations

import sqlite3
from typing import Any

from billing.store.engine import where

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
                  now: float, account_id: int | None = None) -> dict[str, Any]:
    """A new secret for a key (of that account, when one is given)."""
    moved = conn.execute("UPDATE api_keys SET display = ?, hash = ?, rotated_at = ? WHERE id = ? "
                         "AND (? IS NULL OR account_id = ?)",
                         (display, key_hash, int(now), key_id, account_id, account_id)).rowcount
    if moved != 1:
        raise LookupError(f"no key {key_id}")
    return tx_key(conn, key_id)


SETTABLE_KEY_FIELDS = ("name", "status", "monthly_limit", "models", "rpm", "tpm", "expires_at")


def tx_set_key(conn: sqlite3.Connection, key_id: int, fields: dict[str, Any],
               account_id: int | None = None) -> dict[str, Any]:
    """Change a key's settings (a key of that account, when one is given)."""
    for name in fields:
        if name not in SETTABLE_KEY_FIELDS:
            raise ValueError(f"{name} cannot be set on a key")
    if conn.execute("SELECT 1 FROM api_keys WHERE id = ? AND (? IS NULL OR account_id = ?)",
                    (key_id, account_id, account_id)).fetchone() is None:
        raise LookupError(f"no key {key_id}")
    if fields:
        assignments = ", ".join(f"{name} = ?" for name in fields)
        conn.execute(f"UPDATE api_keys SET {assignments} WHERE id = ?", (*fields.values(), key_id))
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
    clause, args = where(("created_at >= ?", since), ("created_at < ?", until), ("account_id = ?", account_id),
                         ("key_id = ?", key_id))
    rows = conn.execute(
        "SELECT account_id, key_id, model, COUNT(*) AS requests, SUM(input_tokens) AS input_tokens, "
        "SUM(output_tokens) AS output_tokens, SUM(cache_read_tokens) AS cache_read_tokens, "
        "SUM(cache_write_tokens) AS cache_write_tokens, SUM(cost) AS cost, SUM(unbilled) AS unbilled, "
        "SUM(savings) AS savings, SUM(units) AS units FROM usage WHERE "
        + clause + " GROUP BY account_id, key_id, model ORDER BY account_id, key_id, model", args)
    return [dict(r) for r in rows]


def tx_request_usage(conn: sqlite3.Connection, request_id: str, account_id: int | None = None) -> dict[str, Any] | None:
    """One request's usage row (of that account, when one is given): its tokens, what it was charged and where
    the figures came from."""
    row = conn.execute("SELECT usage.*, api_keys.name AS key_name FROM usage LEFT JOIN api_keys ON api_keys.id = "
                       "usage.key_id WHERE request_id = ? AND (? IS NULL OR usage.account_id = ?)",
                       (request_id, account_id, account_id)).fetchone()
    return dict(row) if row is not None else None


def tx_usage_log(conn: sqlite3.Connection, account_id: int, filters: dict[str, Any], since: float | None,
                 until: float | None, limit: int, offset: int = 0) -> list[dict[str, Any]]:
    """An account's usage rows, newest first, filtered by key, model, status class ('ok': below 400, 'error': 400
    and above, or one status), usage source and a time range."""
    status = filters.get("status")
    clause, args = where(("usage.key_id = ?", filters.get("key_id")),
                         ("usage.model = ?", filters.get("model")), ("usage.source = ?", filters.get("source")),
                         ("usage.status = ?", status if status not in ("ok", "error") else None),
                         ("usage.status < 400", status == "ok"), ("usage.status >= 400", status == "error"),
                         ("usage.created_at >= ?", since), ("usage.created_at < ?", until))
    rows = conn.execute("SELECT usage.*, api_keys.name AS key_name FROM usage LEFT JOIN api_keys ON api_keys.id = "
                        "usage.key_id WHERE usage.account_id = ? AND " + clause + " ORDER BY usage.created_at DESC, "
                        "usage.request_id DESC LIMIT ? OFFSET ?", (account_id, *args, limit, offset))
    return [dict(r) for r in rows]


def tx_daily_spend(conn: sqlite3.Connection, account_id: int, since: float) -> dict[int, int]:
    """An account's cost per UTC day (the day's number since 1970) from `since` on."""
    rows = conn.execute("SELECT CAST(created_at / 86400 AS INTEGER) AS day, SUM(cost) AS cost FROM usage "
                        "WHERE account_id = ? AND created_at >= ? GROUP BY day", (account_id, since))
    return {int(r["day"]): int(r["cost"]) for r in rows}


def tx_month_spend_by_key(conn: sqlite3.Connection, account_id: int, month: str) -> dict[int, int]:
    """What each of an account's keys has spent in a month (YYYY-MM): the figure its monthly limit is checked against."""
    rows = conn.execute("SELECT key_spend.key_id, key_spend.spent FROM key_spend JOIN api_keys ON api_keys.id = "
                        "key_spend.key_id WHERE api_keys.account_id = ? AND key_spend.month = ?", (account_id, month))
    return {int(r["key_id"]): int(r["spent"]) for r in rows}


def tx_take_lease(conn: sqlite3.Connection, name: str, holder: str, now: float, ttl: float) -> bool:
    """One holder at a time across processes: true if `holder` has the lease until now + ttl."""
    conn.execute("INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                 "holder = excluded.holder, expires_at = excluded.expires_at "
                 "WHERE leases.holder = excluded.holder OR leases.expires_at < ?", (name, holder, now + ttl, now))
    row = conn.execute("SELECT holder FROM leases WHERE name = ?", (name,)).fetchone()
    return bool(row and row["holder"] == holder)


def tx_drop_lease(conn: sqlite3.Connection, name: str, holder: str) -> None:
    """Give a lease up (at shutdown), so that another process takes over at once."""
    conn.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))



def tx_setting(conn: sqlite3.Connection, name: str, value_if_missing: str) -> tuple[str, bool]:
    """The stored value of a setting, storing `value_if_missing` first if there is none.
    Returns (value, whether it was stored now)."""
    created = conn.execute("INSERT OR IGNORE INTO settings (name, value) VALUES (?, ?)",
                           (name, value_if_missing)).rowcount == 1
    return conn.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()[0], created

