"""The operator CLI's human output: one line a row, money in USD, times in UTC, no hashes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from core.cli import human
from tests.conftest import ROOT, base_config, cli


def test_rows_read_as_a_person_expects() -> None:
    rows = [{"id": 2, "name": "laptop", "hash": "ab" * 32, "monthly_limit": 10_000_000_000,
             "monthly_limit_usd": "10.000000000", "created_at": 1795967809, "expires_at": None}]
    text = human(rows)
    header, line = text.splitlines()
    assert header.split() == ["id", "name", "monthly_limit_usd", "created_at", "expires_at"]
    assert "2026-11-29 15:56:49 UTC" in line and line.split()[-1] == "-"
    assert "abab" not in text and "10000000000" not in text  # no hash, no raw nano-dollars
    assert human([]) == "(none)"


def test_operator_commands_need_no_provider_key_but_serving_does(tmp_path: Path) -> None:
    """Issue 18.8: `wallet show` failed with 'environment variable ... is not set' when a provider's key variable
    was missing; only serving (and --check, which says whether it could serve) needs the upstreams' keys."""
    config = tmp_path / "config.toml"
    config.write_text(base_config(tmp_path / "requests.log") + """
[providers.remote]
format = "openai"
base_url = "https://api.example.com/v1"
api_key_env = "TT_TEST_KEY_NOBODY_SET"
timeouts = { connect = 5, first_byte = 20, idle = 20, total = 60 }

[models.remote-chat]
provider = "remote"
price = { input = "1", output = "2" }
""")
    env = {k: v for k, v in os.environ.items() if k != "TT_TEST_KEY_NOBODY_SET"}
    cli(config, "accounts", "create", "ops", "--credit", "2", env=env)
    assert cli(config, "wallet", "show", "ops", env=env)["balance"] == 2_000_000_000  # nano-dollars
    for args in (["--check"], ["--port", "0"]):
        run = subprocess.run([sys.executable, str(ROOT / "gateway.py"), "--config", str(config), *args], cwd=ROOT,
                             env=env, capture_output=True, timeout=60)
        assert run.returncode == 2 and b"TT_TEST_KEY_NOBODY_SET is not set" in run.stderr, run.stderr
