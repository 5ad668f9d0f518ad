"""Operations' own records: the reads behind metrics and alerts (cheap, read-only, safe on every scrape) and the
upstream health tally the workers write now and then for the console's Admin page."""

from __future__ import annotations

import sqlite3
from typing import Any

HOLD_KINDS = ("request", "task")


def tx_oldest_open_hold(conn: sqlite3.Connection, now: float) -> dict[str, float]:
    """The age in seconds of the oldest open hold of each kind ("request": the safety net closes it after
    billing.hold_ttl; "task": the task poller after tasks.ttl), 0 when there is none. Reads only the
    open holds, through their partial index."""
    ages = dict.fromkeys(HOLD_KINDS, 0.0)
    for kind, oldest in conn.execute("SELECT kind, MIN(created_at) FROM holds WHERE status = 'open' GROUP BY kind"):
        ages[kind] = max(now - oldest, 0.0)
    return ages


def tx_add_upstream_health(conn: sqlite3.Connection, rows: list[tuple[str, int, int, int]], owner: str,
                           forget_before: int) -> None:
    """A worker's tally of upstream attempts and failures per provider and minute, added to what it wrote before."""
    conn.executemany("INSERT INTO upstream_health (provider, minute, owner, requests, errors) VALUES (?, ?, ?, ?, ?) "
                     "ON CONFLICT (provider, minute, owner) DO UPDATE SET requests = requests + excluded.requests, "
                     "errors = errors + excluded.errors",
                     [(provider, minute, owner, n, failed) for provider, minute, n, failed in rows])
    conn.execute("DELETE FROM upstream_health WHERE minute < ?", (forget_before,))


def tx_upstream_health(conn: sqlite3.Connection, since_minute: int) -> list[dict[str, Any]]:
    """Every worker's upstream attempts and failures per provider since a minute, added up."""
    return [dict(r) for r in conn.execute(
        "SELECT provider, SUM(requests) AS requests, SUM(errors) AS errors, MAX(minute) AS last_minute "
        "FROM upstream_health WHERE minute >= ? GROUP BY provider ORDER BY provider", (since_minute,))]
