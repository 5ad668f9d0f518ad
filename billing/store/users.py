"""Console log-ins: users (an e-mail and a password hash, each tied to one account), their sessions, and the
attempts (log-ins, sign-ups) their rate limits count. Each function runs on the database thread as one transaction."""

from __future__ import annotations

import sqlite3
from typing import Any

from billing.store.money import tx_create_account

MAX_USER_ID = 2**63 - 1  # SQLite's largest integer: a longer "id" is no user's
USER_COLUMNS = ("users.id, users.email, users.account_id, users.role, users.created_at, users.password_changed_at, "
                "accounts.name AS account_name")


def tx_create_user(conn: sqlite3.Connection, email: str, password_hash: str, account_id: int | None, role: str,
                   now: float) -> dict[str, Any]:
    """A log-in for an existing account, or (account_id None) for a new empty account named after the address,
    made in the same transaction. An address or account name already taken raises sqlite3.IntegrityError."""
    if account_id is None:
        account_id = int(tx_create_account(conn, email, now)["id"])
    elif conn.execute("SELECT 1 FROM accounts WHERE id = ?", (account_id,)).fetchone() is None:
        raise LookupError(f"no account {account_id}")
    cur = conn.execute("INSERT INTO users (email, password, account_id, role, created_at, password_changed_at) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (email, password_hash, account_id, role, now, now))
    return tx_user(conn, int(cur.lastrowid or 0))


def _user(conn: sqlite3.Connection, where: str, args: tuple[Any, ...], password: bool = False) -> dict[str, Any] | None:
    """The user the condition finds, with its account's name (and its password hash, when asked), or None."""
    row = conn.execute(f"SELECT {USER_COLUMNS}{', users.password' if password else ''} FROM users JOIN accounts "
                       f"ON accounts.id = users.account_id WHERE {where}", args).fetchone()
    return dict(row) if row is not None else None


def tx_user(conn: sqlite3.Connection, user_id: int) -> dict[str, Any]:
    found = _user(conn, "users.id = ?", (user_id,))
    if found is None:
        raise LookupError(f"no user {user_id}")
    return found


def tx_login_user(conn: sqlite3.Connection, email: str) -> dict[str, Any] | None:
    """A user with its password hash, for checking a log-in."""
    return _user(conn, "users.email = ?", (email,), password=True)


def tx_find_user(conn: sqlite3.Connection, ref: str) -> dict[str, Any]:
    """A user by id (ASCII digits, within SQLite's integers) or by e-mail address."""
    if ref.isascii() and ref.isdigit():
        found = _user(conn, "users.id = ?", (int(ref),)) if len(ref) <= 19 and int(ref) <= MAX_USER_ID else None
    else:
        found = _user(conn, "users.email = ?", (ref.strip().lower(),))
    if found is None:
        raise LookupError(f"no user {ref!r}")
    return found


def tx_list_users(conn: sqlite3.Connection, account_id: int | None = None) -> list[dict[str, Any]]:
    where = "WHERE users.account_id = ?" if account_id is not None else ""
    return [dict(r) for r in conn.execute(
        f"SELECT {USER_COLUMNS} FROM users JOIN accounts ON accounts.id = users.account_id {where} ORDER BY users.id",
        () if account_id is None else (account_id,))]


def tx_set_password(conn: sqlite3.Connection, user_id: int, password_hash: str, now: float,
                    keep_session: bytes | None = None) -> None:
    """A new password, and every session of the user ended but the one that changed it (if any)."""
    if conn.execute("UPDATE users SET password = ?, password_changed_at = ? WHERE id = ?",
                    (password_hash, now, user_id)).rowcount != 1:
        raise LookupError(f"no user {user_id}")
    conn.execute("DELETE FROM console_sessions WHERE user_id = ? AND token_hash IS NOT ?", (user_id, keep_session))


def tx_set_role(conn: sqlite3.Connection, user_id: int, role: str) -> dict[str, Any]:
    if conn.execute("UPDATE users SET role = ? WHERE id = ?", (role, user_id)).rowcount != 1:
        raise LookupError(f"no user {user_id}")
    return tx_user(conn, user_id)


def tx_create_session(conn: sqlite3.Connection, token_hash: bytes, user_id: int, now: float,
                      expires_at: float) -> None:
    conn.execute("DELETE FROM console_sessions WHERE expires_at <= ?", (now,))
    conn.execute("INSERT INTO console_sessions (token_hash, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
                 (token_hash, user_id, now, expires_at))


def tx_session_user(conn: sqlite3.Connection, token_hash: bytes, now: float) -> dict[str, Any] | None:
    """The user of a live session, or None."""
    return _user(conn, "users.id = (SELECT user_id FROM console_sessions WHERE token_hash = ? AND expires_at > ?)",
                 (token_hash, now))


def tx_drop_session(conn: sqlite3.Connection, token_hash: bytes) -> None:
    conn.execute("DELETE FROM console_sessions WHERE token_hash = ?", (token_hash,))


KNOWN_PREFIX, KNOWN_END = "known:", "known;"  # marks of clients that logged in to an account: kept past the windows


def tx_take_attempt(conn: sqlite3.Connection, limits: list[tuple[str, int]], since: float, now: float,
                    keep: float = 0.0) -> tuple[list[int], float]:
    """One more attempt (a log-in, a sign-up) for each subject (core/console/web.py login_subjects, 'signup:...'),
    counted before the slow password work so that parallel attempts cannot all pass the check; an attempt that
    succeeds takes its rows back. Returns the new rows' ids, or when a subject has used its `limit` since `since`,
    ([], seconds until its oldest attempt leaves the window). Rows older than `keep` seconds (the longest window
    of any subject) or than this window go: a log-in's 15 minutes once cleared the sign-ups' hour."""
    conn.execute("DELETE FROM login_failures WHERE at <= ? AND NOT (subject >= ? AND subject < ?)",
                 (min(since, now - keep), KNOWN_PREFIX, KNOWN_END))
    for subject, limit in limits:
        n, oldest = conn.execute("SELECT COUNT(*), MIN(at) FROM login_failures WHERE subject = ? AND at > ?",
                                 (subject, since)).fetchone()
        if n >= limit:
            return [], float(oldest) - since
    return [int(conn.execute("INSERT INTO login_failures (subject, at) VALUES (?, ?)", (subject, now)).lastrowid or 0)
            for subject, _ in limits], 0.0


def tx_give_back_attempt(conn: sqlite3.Connection, rows: list[int], clear_subject: str | None = None,
                         known: str | None = None, now: float = 0.0) -> None:
    """A successful attempt is not a failure: its rows go, and (a log-in) the earlier failures of `clear_subject`
    too (that e-mail from that client: never the client's count across accounts, which a log-in to one's own
    account must not reset). `known` (a log-in): the mark that this client has logged in to this account, kept
    past every window (tx_marked_since), one row per account and client."""
    conn.executemany("DELETE FROM login_failures WHERE rowid = ?", [(r,) for r in rows])
    if clear_subject is not None:
        conn.execute("DELETE FROM login_failures WHERE subject = ?", (clear_subject,))
    if known is not None:
        conn.execute("DELETE FROM login_failures WHERE subject = ?", (known,))
        conn.execute("INSERT INTO login_failures (subject, at) VALUES (?, ?)", (known, now))


def tx_marked_since(conn: sqlite3.Connection, subject: str, since: float) -> bool:
    """Whether `subject` (a known-client mark) was recorded after `since`."""
    return conn.execute("SELECT 1 FROM login_failures WHERE subject = ? AND at > ?", (subject, since)).fetchone() \
        is not None