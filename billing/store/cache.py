"""The response cache's transactions: a read that marks the entry used, and a write that keeps the
cache under its size (expired entries first, then the least recently used). No money moves here."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

ENTRY_OVERHEAD = 200  # bytes counted per entry besides its answer (key, columns, index entries)
TOTAL_SETTING = "response_cache_bytes"  # the running size of every entry, kept with them
EVICT_BATCH = 64


@dataclass(slots=True)
class CacheEntry:
    key: bytes
    scope: str
    model: str
    answer: bytes
    input_tokens: int
    output_tokens: int
    now: float
    expires_at: float


@dataclass(slots=True)
class CachedAnswer:
    answer: bytes
    input_tokens: int
    output_tokens: int


def tx_cache_get(conn: sqlite3.Connection, key: bytes, now: float) -> CachedAnswer | None:
    row = conn.execute("SELECT body, input_tokens, output_tokens FROM response_cache WHERE key = ? AND expires_at > ?",
                       (key, now)).fetchone()
    if row is None:
        return None
    conn.execute("UPDATE response_cache SET used_at = ? WHERE key = ?", (now, key))
    return CachedAnswer(row["body"], row["input_tokens"], row["output_tokens"])


def tx_cache_put(conn: sqlite3.Connection, e: CacheEntry, max_bytes: int) -> int:
    """Store (or replace) an answer, then evict until the cache fits: expired entries, then the least
    recently used. Returns how many entries went. An answer larger than the whole cache is not kept."""
    size = len(e.answer) + ENTRY_OVERHEAD
    if size > max_bytes:
        return 0
    row = conn.execute("SELECT value FROM settings WHERE name = ?", (TOTAL_SETTING,)).fetchone()
    total = int(row[0]) if row is not None else 0
    old = conn.execute("SELECT size FROM response_cache WHERE key = ?", (e.key,)).fetchone()
    if old is not None:
        total -= old[0]
    conn.execute("INSERT OR REPLACE INTO response_cache (key, scope, model, body, size, input_tokens, output_tokens, "
                 "created_at, expires_at, used_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (e.key, e.scope, e.model, e.answer, size, e.input_tokens, e.output_tokens, e.now, e.expires_at, e.now))
    total += size
    evicted = 0
    for victim, victim_size in conn.execute("SELECT key, size FROM response_cache WHERE expires_at <= ? LIMIT ?",
                                            (e.now, EVICT_BATCH)).fetchall():
        conn.execute("DELETE FROM response_cache WHERE key = ?", (victim,))
        total -= victim_size
        evicted += 1
    while total > max_bytes:  # then the least recently used, until the cache fits
        victims = conn.execute("SELECT key, size FROM response_cache WHERE key != ? ORDER BY used_at LIMIT ?",
                               (e.key, EVICT_BATCH)).fetchall()
        if not victims:
            break
        for victim, victim_size in victims:
            if total <= max_bytes:
                break
            conn.execute("DELETE FROM response_cache WHERE key = ?", (victim,))
            total -= victim_size
            evicted += 1
    conn.execute("INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                 (TOTAL_SETTING, str(total)))
    return evicted


def tx_cache_stats(conn: sqlite3.Connection, now: float) -> dict[str, int]:
    row = conn.execute("SELECT COUNT(*) AS entries, COALESCE(SUM(size), 0) AS bytes, "
                       "COALESCE(SUM(expires_at <= ?), 0) AS expired FROM response_cache", (now,)).fetchone()
    return dict(row)
