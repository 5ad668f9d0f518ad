"""Reads for operations (metrics, alerts): cheap, read-only, safe to run on every scrape."""

from __future__ import annotations

import sqlite3

HOLD_KINDS = ("request", "task")


def tx_oldest_open_hold(conn: sqlite3.Connection, now: float) -> dict[str, float]:
    """The age in seconds of the oldest open hold of each kind ("request": the safety net closes it after
    billing.hold_ttl; "task": the task poller after tasks.ttl), 0 when there is none. Reads only the
    open holds, through their partial index."""
    ages = dict.fromkeys(HOLD_KINDS, 0.0)
    for kind, oldest in conn.execute("SELECT kind, MIN(created_at) FROM holds WHERE status = 'open' GROUP BY kind"):
        ages[kind] = max(now - oldest, 0.0)
    return ages
