"""kill -9 with streams in flight, then a restart: the safety net closes every hold, each request is
charged exactly once, the books still add up, and the net says why it closed them."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import threading
import time
import urllib.request
from pathlib import Path

import openai
import pytest

from billing.ledger import STOPPED_STATUS
from tests.conftest import UPSTREAM_KEY, GatewayProcess, cli, wait_for
from tests.mock_upstream import MockUpstream

pytestmark = pytest.mark.slow

STREAMS = 8


def crash_config(upstream_url: str, tmp: Path) -> str:
    return f"""
[server]
request_log = "{tmp / 'requests.log'}"

[billing]
database = "{tmp / 'tokentoll.db'}"
hold_ttl = 600  # far away: only the dead owner's lapsed heartbeat can close its holds in time
sweep_interval = 0.5

[providers.mock]
base_url = "{upstream_url}"
api_key_env = "TT_TEST_UPSTREAM_KEY"
timeouts = {{ connect = 1, first_byte = 2, idle = 2, total = 2.5 }}

[models.slow]
provider = "mock"
upstream_model = "slow"
price = {{ input = "1", output = "2" }}
"""


def test_kill_9_mid_stream_then_restart(upstream: MockUpstream, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(crash_config(upstream.base_url, tmp_path))
    env = {**os.environ, "TT_TEST_UPSTREAM_KEY": UPSTREAM_KEY}
    cli(config, "accounts", "create", "victim", "--credit", "1", env=env)
    key = cli(config, "keys", "create", "--account", "victim", env=env)["key"]
    first = GatewayProcess(config, tmp_path / "requests.log", env)
    client = openai.OpenAI(base_url=first.base_url, api_key=key, max_retries=0, timeout=10)
    started = threading.Barrier(STREAMS + 1, timeout=30)

    def stream() -> None:
        try:
            with client.chat.completions.with_streaming_response.create(
                    model="slow", messages=[{"role": "user", "content": "hello"}], stream=True) as resp:
                chunks = iter(resp.parse())
                next(chunks)
                started.wait()
                for _ in chunks:
                    pass
        except (openai.APIError, threading.BrokenBarrierError):
            pass  # the gateway died under it: expected

    threads = [threading.Thread(target=stream) for _ in range(STREAMS)]
    began = time.monotonic()  # every hold is younger than this
    for t in threads:
        t.start()
    started.wait()
    assert cli(config, "holds", env=env).__len__() == STREAMS
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    for t in threads:
        t.join(30)

    second = GatewayProcess(config, tmp_path / "requests.log", env)
    try:
        wait_for(lambda: cli(config, "holds", env=env) == [], 15, "the safety net to close every hold")
        with urllib.request.urlopen(second.url + "/metrics", timeout=10) as resp:
            spend = re.findall(r'^tokentoll_spend_nanousd_total\{model="([^"]*)"\} (\S+)$', resp.read().decode(), re.M)
    finally:
        second.stop()
    second._drain.join(5)  # everything it wrote has been read
    # it says why it closed them and how old the oldest was: placed since `began`, not hold_ttl (600 s) ago
    nets = [line for line in second.stderr_lines if "safety net closed" in line]
    said = [re.search(rf"closed {STREAMS} hold\(s\) of a process that stopped \(oldest (\d+) s\)", line)
            for line in nets]
    assert len(nets) == 1 and said[0] is not None, nets
    assert int(said[0].group(1)) <= time.monotonic() - began, nets
    db = sqlite3.connect(tmp_path / "tokentoll.db")
    holds = db.execute("SELECT request_id, status, charged, estimate FROM holds").fetchall()
    assert len(holds) == STREAMS and all(status != "open" for _, status, _, _ in holds)
    assert all(charged == estimate for _, _, charged, estimate in holds)  # nothing else was known
    assert {model: float(value) for model, value in spend} == {"slow": sum(charged for _, _, charged, _ in holds),
                                                               "-": 0}  # in /metrics, by model
    # each usage row: the prompt tokens the estimate is the price of (input is 1 USD per 1M tokens), and a status
    # that says the process serving it stopped
    rows = db.execute("SELECT u.input_tokens, u.output_tokens, u.status, u.cost, h.prompt_tokens FROM usage u "
                      "JOIN holds h USING (request_id)").fetchall()
    assert len(rows) == STREAMS and all(tokens > 0 and tokens * 1000 == cost and (tokens, output, status) ==
                                        (prompt, 0, STOPPED_STATUS) for tokens, output, status, cost, prompt in rows)
    per_request = db.execute("SELECT request_id, COUNT(*) FROM ledger WHERE kind = 'settle' GROUP BY request_id")
    assert all(n == 1 for _, n in per_request)
    assert db.execute("SELECT COUNT(*) FROM usage WHERE source = 'estimate'").fetchone()[0] == STREAMS
    balance, held, ledger_balance, ledger_held = db.execute(
        "SELECT a.balance, a.held, SUM(l.balance_delta), SUM(l.held_delta) FROM accounts a "
        "JOIN ledger l ON l.account_id = a.id GROUP BY a.id").fetchone()
    assert (balance, held) == (ledger_balance, ledger_held) and held == 0
    assert balance == 1_000_000_000 - sum(charged for _, _, charged, _ in holds)
    db.close()


def test_sigterm_ends_open_streams_in_band_and_settles_them(upstream: MockUpstream, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(crash_config(upstream.base_url, tmp_path).replace("[server]", "[server]\nshutdown_grace = 0.5"))
    env = {**os.environ, "TT_TEST_UPSTREAM_KEY": UPSTREAM_KEY}
    cli(config, "accounts", "create", "stopping", "--credit", "1", env=env)
    key = cli(config, "keys", "create", "--account", "stopping", env=env)["key"]
    gw = GatewayProcess(config, tmp_path / "requests.log", env)
    client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=10)
    received = []
    with pytest.raises(openai.APIError) as err:
        with client.chat.completions.with_streaming_response.create(
                model="slow", messages=[{"role": "user", "content": "hello"}], stream=True) as resp:
            for chunk in resp.parse():
                received.append(chunk)
                if len(received) == 3:
                    gw.proc.send_signal(signal.SIGTERM)
    assert len(received) >= 3  # the stream ran until the grace period ended...
    assert err.value.body["code"] == "gateway_shutting_down"  # ...and then said why it ended  # type: ignore[index]
    assert gw.proc.wait(15) == 0
    gw._drain.join(5)  # everything it wrote has been read
    assert not [line for line in gw.stderr_lines if "Traceback" in line or "ERROR" in line], gw.stderr_lines
    assert cli(config, "holds", env=env) == []  # settled on the way out
    db = sqlite3.connect(tmp_path / "tokentoll.db")
    assert db.execute("SELECT source FROM usage").fetchall() == [("observed",)]
    db.close()


def test_sigterm_stops_accepting_and_lets_a_stream_that_ends_within_the_grace_finish(
        upstream: MockUpstream, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(crash_config(upstream.base_url, tmp_path).replace("[server]", "[server]\nshutdown_grace = 20")
                      + '\n[providers.demo]\nbuiltin = "demo"\ndemo_chunk_delay = 0.05\n'
                        '\n[models.echo]\nprovider = "demo"\nupstream_model = "echo"\nprice = { input = "1", output = "2" }\n')
    env = {**os.environ, "TT_TEST_UPSTREAM_KEY": UPSTREAM_KEY}
    cli(config, "accounts", "create", "graceful", "--credit", "1", env=env)
    key = cli(config, "keys", "create", "--account", "graceful", env=env)["key"]
    gw = GatewayProcess(config, tmp_path / "requests.log", env)
    client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=10)
    words = " ".join(f"word{i}" for i in range(30))  # 30 chunks, 50 ms apart: done well inside the grace
    pieces, finish = [], None
    with client.chat.completions.with_streaming_response.create(
            model="echo", messages=[{"role": "user", "content": words}], stream=True) as resp:
        for chunk in resp.parse():
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
            if len(pieces) == 3:
                gw.proc.send_signal(signal.SIGTERM)

                def refused() -> bool:  # no new connection is accepted once the signal is in
                    try:
                        socket.create_connection(("127.0.0.1", int(gw.url.rsplit(":", 1)[1])), timeout=1).close()
                    except OSError:
                        return True
                    return False

                wait_for(refused, 5, "the listening socket to close")
    assert "".join(pieces).strip() == words and finish == "stop"  # the open stream ran to its end
    assert gw.proc.wait(15) == 0
    assert cli(config, "holds", env=env) == []
    db = sqlite3.connect(tmp_path / "tokentoll.db")
    assert db.execute("SELECT status, source FROM usage").fetchall() == [(200, "upstream")]
    db.close()
