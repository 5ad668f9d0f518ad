"""Several hypercorn workers sharing one socket and one database: a rotated key fails on the very
next request whichever worker answers, and rate limits count across workers."""

from __future__ import annotations

import os
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.conftest import UPSTREAM_KEY, GatewayProcess, cli, fresh_minute
from tests.mock_upstream import MockUpstream

pytestmark = pytest.mark.slow

BODY = {"model": "ok", "messages": [{"role": "user", "content": "hello"}]}


def config(upstream_url: str, tmp: Path) -> str:
    return f"""
[server]
workers = 2
request_log = "{tmp / 'requests.log'}"

[billing]
database = "{tmp / 'tokentoll.db'}"
hold_ttl = 120

[providers.mock]
base_url = "{upstream_url}"
api_key_env = "TT_TEST_UPSTREAM_KEY"
timeouts = {{ connect = 2, first_byte = 5, idle = 5, total = 60 }}

[models.ok]
provider = "mock"
price = {{ input = "1", output = "2" }}
"""


def post_fresh(gw: GatewayProcess, key: str) -> httpx.Response:
    """A new connection each time, so that either worker may take it."""
    with httpx.Client(headers={"connection": "close"}) as c:
        return c.post(gw.base_url + "/chat/completions", json=BODY, headers={"authorization": f"Bearer {key}"})


def test_rotation_and_rate_limits_across_two_workers(upstream: MockUpstream, tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(config(upstream.base_url, tmp_path))
    env = {**os.environ, "TT_TEST_UPSTREAM_KEY": UPSTREAM_KEY}
    cli(cfg, "accounts", "create", "two", "--credit", "1", env=env)
    created = cli(cfg, "keys", "create", "--account", "two", env=env)
    limited = cli(cfg, "keys", "create", "--account", "two", "--name", "slow", "--rpm", "5", env=env)["key"]
    gw = GatewayProcess(cfg, tmp_path / "requests.log", env)
    try:
        assert all(post_fresh(gw, created["key"]).status_code == 200 for _ in range(10))
        new = cli(cfg, "keys", "rotate", str(created["id"]), env=env)["key"]
        old_answers = [post_fresh(gw, created["key"]) for _ in range(20)]
        assert [r.status_code for r in old_answers] == [401] * 20
        assert all(post_fresh(gw, new).status_code == 200 for _ in range(5))
        fresh_minute()
        statuses = [post_fresh(gw, limited).status_code for _ in range(8)]
        assert statuses == [200] * 5 + [429] * 3
        entries = gw.log_entries()
        assert len({e["worker"] for e in entries if e["status"] == 401}) == 2, "both workers refused the old key"
        assert len({e["worker"] for e in entries if e["status"] == 200}) == 2
    finally:
        gw.stop()
