"""The operator CLI's human output: one line a row, money in USD, times in UTC, no hashes."""

from __future__ import annotations

from core.cli import human


def test_rows_read_as_a_person_expects() -> None:
    rows = [{"id": 2, "name": "laptop", "hash": "ab" * 32, "monthly_limit": 10_000_000_000,
             "monthly_limit_usd": "10.000000000", "created_at": 1795967809, "expires_at": None}]
    text = human(rows)
    header, line = text.splitlines()
    assert header.split() == ["id", "name", "monthly_limit_usd", "created_at", "expires_at"]
    assert "2026-11-29 15:56:49 UTC" in line and line.split()[-1] == "-"
    assert "abab" not in text and "10000000000" not in text  # no hash, no raw nano-dollars
    assert human([]) == "(none)"
