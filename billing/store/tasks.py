"""The async tasks' transactions: recording a task beside its hold, compare-and-set state changes, a key's view
of them, and the poller's reads (tasks due a look, ended tasks whose hold is still open, task holds without a task)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


OPEN = ("queued", "in_progress")
ENDED = ("completed", "failed", "cancelled", "expired")
TASK_ID_PREFIX = "video_tt_"  # a task's id is this + its hold's request id without "req_" (see tx_unsettled_tasks)
_OPEN_SQL = "('queued', 'in_progress')"


@dataclass(slots=True)
class NewTask:
    id: str
    upstream_id: str
    account_id: int
    key_id: int | None
    model: str
    request_id: str
    status: str
    amount: int
    object: str  # JSON
    now: float
    expires_at: float


def tx_insert_task(conn: sqlite3.Connection, t: NewTask) -> bool:
    """Record a submitted task, only while its hold is still open (else the money is no longer held for it)."""
    assert t.id == TASK_ID_PREFIX + t.request_id.removeprefix("req_"), "a task's id is derived from its hold's"
    hold = conn.execute("SELECT status FROM holds WHERE request_id = ?", (t.request_id,)).fetchone()
    if hold is None or hold["status"] != "open":
        return False
    conn.execute("INSERT INTO tasks (id, upstream_id, account_id, key_id, model, request_id, status, amount, object, "
                 "created_at, updated_at, expires_at, polled_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (t.id, t.upstream_id, t.account_id, t.key_id, t.model, t.request_id, t.status, t.amount, t.object,
                  t.now, t.now, t.expires_at, t.now))
    return True


def tx_task(conn: sqlite3.Connection, task_id: str, account_id: int | None) -> dict[str, Any] | None:
    """A task by id; with an account, only if that account owns it."""
    if account_id is None:
        row = conn.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
    else:
        row = conn.execute("SELECT * FROM tasks WHERE id = ? AND account_id = ?", (task_id, account_id)).fetchone()
    return dict(row) if row is not None else None


def tx_list_tasks(conn: sqlite3.Connection, account_id: int, after: str | None, limit: int,
                  order: str, models: Sequence[str] | None = None) -> list[dict[str, Any]] | None:
    """An account's tasks by creation time (only those of `models`, when given), `limit` + 1 of them (the extra one
    says there are more), from just past `after` (one of those task ids). None: `after` is not one of them."""
    desc = order == "desc"
    clauses: list[str] = ["account_id = ?"]
    args: list[Any] = [account_id]
    if models is not None:
        clauses.append(f"model IN ({', '.join('?' * len(models))})")
        args.extend(models)
    if after is not None:
        mark = conn.execute(f"SELECT created_at, id FROM tasks WHERE id = ? AND {' AND '.join(clauses)}",
                            (after, *args)).fetchone()
        if mark is None:
            return None
        clauses.append("(created_at, id) < (?, ?)" if desc else "(created_at, id) > (?, ?)")
        args += [mark["created_at"], mark["id"]]
    direction = "DESC" if desc else "ASC"
    rows = conn.execute(f"SELECT * FROM tasks WHERE {' AND '.join(clauses)} ORDER BY created_at {direction}, "
                        f"id {direction} LIMIT ?", (*args, limit + 1))
    return [dict(r) for r in rows]


def tx_observe(conn: sqlite3.Connection, task_id: str, status: str, obj: str, now: float) -> dict[str, Any] | None:
    """An open task seen still open (queued or in progress): its object and poll time, only while it is open.
    Returns the row as it now is (ended, if another writer ended it first)."""
    assert status in OPEN
    conn.execute(f"UPDATE tasks SET status = ?, object = ?, updated_at = ?, polled_at = ? WHERE id = ? "
                 f"AND status IN {_OPEN_SQL}", (status, obj, now, now, task_id))
    return tx_task(conn, task_id, None)


def tx_end(conn: sqlite3.Connection, task_id: str, status: str, obj: str | None,
           now: float) -> tuple[bool, dict[str, Any] | None]:
    """The compare-and-set that ends a task: open -> completed, failed, cancelled or expired. True for the one
    writer that made the change (and so must close the hold); the row as it now is, either way."""
    assert status in ENDED
    if obj is None:
        moved = conn.execute(f"UPDATE tasks SET status = ?, updated_at = ?, polled_at = ? WHERE id = ? "
                             f"AND status IN {_OPEN_SQL}", (status, now, now, task_id)).rowcount
    else:
        moved = conn.execute(f"UPDATE tasks SET status = ?, object = ?, updated_at = ?, polled_at = ? WHERE id = ? "
                             f"AND status IN {_OPEN_SQL}", (status, obj, now, now, task_id)).rowcount
    return moved == 1, tx_task(conn, task_id, None)


def tx_delete_task(conn: sqlite3.Connection, task_id: str, account_id: int) -> bool:
    """Forget an ended task whose hold is closed (an open hold keeps its row, so the poller can close it)."""
    return conn.execute(
        f"DELETE FROM tasks WHERE id = ? AND account_id = ? AND status NOT IN {_OPEN_SQL} AND NOT EXISTS "
        f"(SELECT 1 FROM holds WHERE request_id = tasks.request_id AND status = 'open')",
        (task_id, account_id)).rowcount == 1


def tx_due_tasks(conn: sqlite3.Connection, polled_before: float, now: float, limit: int) -> list[dict[str, Any]]:
    """Open tasks nobody has looked at since `polled_before`, and those past their expiry."""
    rows = conn.execute(f"SELECT * FROM tasks WHERE status IN {_OPEN_SQL} AND (polled_at < ? OR expires_at <= ?) "
                        f"ORDER BY polled_at LIMIT ?", (polled_before, now, limit))
    return [dict(r) for r in rows]


def tx_unsettled_tasks(conn: sqlite3.Connection, limit: int) -> list[dict[str, Any]]:
    """Ended tasks whose hold is still open: the process that ended one stopped before closing its hold.
    Found from the open holds (a small index), each task by its primary key."""
    rows = conn.execute(
        f"SELECT t.* FROM holds h JOIN tasks t ON t.id = '{TASK_ID_PREFIX}' || substr(h.request_id, 5) "
        f"WHERE h.status = 'open' AND h.kind = 'task' AND t.status NOT IN {_OPEN_SQL} LIMIT ?", (limit,))
    return [dict(r) for r in rows]


def tx_orphan_task_holds(conn: sqlite3.Connection, before: float, limit: int) -> list[dict[str, Any]]:
    """Open task holds placed before `before` that have no task: the process stopped between the hold and
    recording the task (or the upstream never answered)."""
    rows = conn.execute(
        f"SELECT request_id, amount, created_at FROM holds h WHERE status = 'open' AND kind = 'task' AND "
        f"created_at < ? AND NOT EXISTS (SELECT 1 FROM tasks WHERE id = '{TASK_ID_PREFIX}' || "
        f"substr(h.request_id, 5)) ORDER BY created_at LIMIT ?", (before, limit))
    return [dict(r) for r in rows]

