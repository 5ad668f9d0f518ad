"""Money in /metrics: tokentoll_spend_nanousd_total adds up to what wallets paid and the request log's costs,
tokentoll_unbilled_nanousd_total to the work nobody was charged for; replays, refunds and old models counted right."""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import openai
import pytest

from billing import store
from billing.keys import check_presented, new_key
from billing.ledger import OUTLIVED_STATUS, Ledger
from billing.metering import NO_USAGE, Usage, UsageRecord
from billing.pricing import TokenPrices
from core.metrics import Metrics
from tests.conftest import GatewayProcess, base_config, cli, demo_provider, serve_gateway, wait_for, wallet
from tests.native_upstream import NativeUpstream

MONEY = ("tokentoll_spend_nanousd_total", "tokentoll_refunded_nanousd_total", "tokentoll_unbilled_nanousd_total")
MODELS = ("demo-echo", "demo-embed", "demo-image", "runaway", "unreachable")


def models_config() -> str:
    return """
[models.demo-echo]
provider = "demo"
upstream_model = "echo"
max_output_tokens = 256
price = { input = "0.50", output = "1.50" }

[models.demo-embed]
provider = "demo"
upstream_model = "embed"
max_output_tokens = 1
price = { input = "0.02", output = "0" }

[models.demo-image]
provider = "demo"
upstream_model = "image"
price = { input = "0", output = "0", image = { "1024x1024" = "0.02" } }
"""


def config(native: str, log_path: Path) -> str:
    return f"""
{base_config(log_path)}{demo_provider()}
[providers.engine]
format = "openai"
base_url = "{native}/openai/v1"
timeouts = {{ connect = 5, first_byte = 20, idle = 20, total = 60 }}

[providers.nowhere]
format = "openai"
base_url = "http://127.0.0.1:9/v1"
timeouts = {{ connect = 1, first_byte = 1, idle = 1, total = 5 }}
{models_config()}
[models.runaway]
provider = "engine"
upstream_model = "runaway"
price = {{ input = "1", output = "2" }}

[models.unreachable]
provider = "nowhere"
price = {{ input = "1", output = "2" }}
"""


@pytest.fixture(scope="module")
def gw(native: NativeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    yield from serve_gateway(tmp_path_factory.mktemp("spend"), partial(config, native.base_url), {}, "spender", "10",
                             ("Traceback",))


def scrape(gw: GatewayProcess) -> str:
    with urllib.request.urlopen(gw.url + "/metrics", timeout=10) as resp:
        return resp.read().decode()


def series(text: str, name: str) -> dict[tuple[str, ...], float]:
    """Every series of one metric: its label values (model, then reason where there is one) -> value."""
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels = dict(part.split("=", 1) for part in line[len(name) + 1:line.index("}")].split(","))
            key = tuple(labels[k].strip('"') for k in ("model", "reason") if k in labels)
            found[key] = float(line.rsplit(" ", 1)[1])
    return found


def usage_rows(gw: GatewayProcess) -> list[dict[str, Any]]:
    db = sqlite3.connect(gw.config.parent / "tokentoll.db")
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM usage")]
    finally:
        db.close()


def test_spend_adds_up_to_the_request_log_and_the_wallet_and_overruns_are_unbilled(gw: GatewayProcess) -> None:
    key = cli(gw.config, "keys", "create", "--account", "spender", env=gw.env)["key"]
    before = wallet(gw, "spender")["balance"]
    seen = len(gw.log_entries())
    client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=30)
    chat = [{"role": "user", "content": "one two three"}]
    client.chat.completions.create(model="demo-echo", messages=chat)  # type: ignore[arg-type]
    assert list(client.chat.completions.create(model="demo-echo", messages=chat, stream=True))  # type: ignore[arg-type]
    client.embeddings.create(model="demo-embed", input="hello")
    assert len(client.images.generate(model="demo-image", prompt="a lighthouse", n=2).data or []) == 2
    client.chat.completions.create(model="runaway", messages=chat, max_tokens=10)  # type: ignore[arg-type]
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="unreachable", messages=chat)  # type: ignore[arg-type]
    wait_for(lambda: len(gw.log_entries()) >= seen + 6, 15, "six request-log lines")  # each written once settled
    lines = gw.log_entries()[seen:]
    text = scrape(gw)
    spend, refunded, unbilled = (series(text, name) for name in MONEY)
    costs = {m: sum(e["cost_nanousd"] or 0 for e in lines if e["model"] == m) for m in MODELS}
    assert costs["demo-echo"] > 0 and costs["demo-image"] == 2 * 20_000_000 and costs["unreachable"] == 0
    assert {m: spend.get((m,)) for m in MODELS} == costs  # per model, what the request log says each cost
    assert sum(spend.values()) == before - wallet(gw, "spender")["balance"]  # what the wallet paid, in all
    assert set(refunded.values()) == {0}
    overrun = sum(e["overrun_nanousd"] or 0 for e in lines if e["model"] == "runaway")
    assert overrun > 0 and unbilled[("runaway", "overrun")] == overrun  # the work past the hold, not charged
    assert sum(unbilled.values()) == overrun
    assert overrun == sum(r["overrun"] for r in usage_rows(gw) if r["model"] == "runaway")
    # bounded labels: the configured models and "-" (a hold of a model no longer configured), each from 0
    assert set(spend) == set(refunded) == {(m,) for m in (*MODELS, "-")}
    assert set(unbilled) == {(m, reason) for m in (*MODELS, "-") for reason in ("overrun", "shortfall")}


def late_config(log_path: Path) -> str:
    return f"""
[server]
host = "127.0.0.1"
port = 0
request_log = "{log_path}"

[billing]
database = "{log_path.parent / 'tokentoll.db'}"
hold_ttl = 1
sweep_interval = 0.2
{demo_provider(0.1)}{models_config()}"""


@pytest.mark.slow  # a 6 s stream, paced, outlives a 1 s hold
def test_a_request_that_outlives_its_hold_into_a_spent_wallet_is_unbilled_and_logged_as_such(
        tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(late_config(tmp_path / "requests.log"))
    env = {k: v for k, v in os.environ.items() if k != "TOKENTOLL_CONFIG"}
    cli(config, "accounts", "create", "late", "--credit", "1", env=env)
    gw = GatewayProcess(config, tmp_path / "requests.log", env)
    try:
        key = cli(config, "keys", "create", "--account", "late", env=env)["key"]
        client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=30)
        words = " ".join(f"w{i}" for i in range(60))  # 60 chunks 0.1 s apart: the hold_ttl of 1 s passes mid-way
        db = sqlite3.connect(tmp_path / "tokentoll.db")
        began = time.monotonic()
        with client.chat.completions.with_streaming_response.create(
                model="demo-echo", messages=[{"role": "user", "content": words}], stream=True) as resp:
            request_id = resp.headers["x-tt-request-id"]
            chunks = iter(resp.parse())
            next(chunks)
            by_net = ("SELECT charged, estimate, prompt_tokens FROM holds WHERE request_id = ? AND "
                      "closed_by = 'safety_net'")
            charged, estimate, prompt_tokens = wait_for(lambda: db.execute(by_net, (request_id,)).fetchone(), 5,
                                                        "the safety net to close the open stream's hold")
            assert charged == estimate > 0 and prompt_tokens > 0
            # the row the net wrote: the estimate's tokens, and a status that says it outlived its hold
            row = db.execute("SELECT input_tokens, output_tokens, status, source, cost FROM usage WHERE request_id = ?",
                             (request_id,)).fetchone()
            assert row == (prompt_tokens, 0, OUTLIVED_STATUS, "estimate", estimate)
            balance = wallet(gw, "late")["balance"]
            cli(gw.config, "wallet", "adjust", "late", str(-Decimal(balance).scaleb(-9)), "--note", "spent", env=gw.env)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text.split()[-1] == "w59"  # the stream ran to its end
        line = gw.log_entry(request_id)
        cost, unbilled, status, source = db.execute(
            "SELECT cost, unbilled, status, source FROM usage WHERE request_id = ?", (request_id,)).fetchone()
        db.close()
        assert status == 200 and source != "estimate" and line["cost_nanousd"] == cost == estimate  # nothing more
        assert unbilled > 0  # the output, which the spent wallet could not pay for
        metrics = scrape(gw)
        assert series(metrics, MONEY[0])[("demo-echo",)] == estimate
        assert series(metrics, MONEY[2])[("demo-echo", "shortfall")] == unbilled
        assert wallet(gw, "late")["balance"] == 0
        nets = [x for x in gw.stderr_lines if "safety net closed" in x]
        assert len(nets) == 1, nets
        said = re.search(r"closed 1 hold\(s\) open for more than billing.hold_ttl = 1 s \(oldest (\d+) s\)", nets[0])
        assert said is not None and 1 <= int(said.group(1)) <= time.monotonic() - began, nets  # its true age
    finally:
        gw.stop()


PRICES = TokenPrices(input=1_000_000, output=2_000_000)  # 1 and 2 nano-dollars a token


def test_replays_refunds_and_models_no_longer_configured(tmp_path: Path) -> None:
    """Against the ledger and a real store: a replayed settlement counts nothing, a late settlement that costs less
    than the safety net's estimate counts a refund, a hold of a model not configured any more is labelled '-'."""
    metrics = Metrics(["m"])

    async def scenario() -> int:
        db = store.Store(str(tmp_path / "db"))
        await db.start()
        account = await db.run(store.tx_create_account, "acct", 0.0)
        made = new_key()
        await db.run(store.tx_create_key, account["id"], "k", made.display, made.hash, 0.0, {})
        ledger = Ledger(db, 0, 0, on_settled=metrics.count_settlement)
        await ledger.credit(account["id"], 100_000, "test")
        key = check_presented(made.plaintext)
        for rid, model in (("paid", "m"), ("netted", "m"), ("old", "retired")):
            assert not (await ledger.admit(rid, key, model, PRICES, 1000, 1000)).error  # hold 3000, estimate 1000
        used = UsageRecord(Usage(1000, 200), "upstream")
        for _ in range(2):  # the second is a replay
            assert await ledger.settle("paid", PRICES, used, 200, 1.0, (1000, 1000))
            assert await ledger.settle("old", PRICES, used, 200, 1.0, (1000, 1000))
        assert [hold.request_id for hold in await ledger.settle_stale(older_than=-1)] == ["netted"]
        for _ in range(2):  # the request failed after all: the estimate goes back, once
            assert await ledger.settle("netted", PRICES, NO_USAGE, 502, 1.0, (1000, 1000))
        balance = (await db.run(store.tx_account, account["id"]))["balance"]
        await db.close()
        return 100_000 - balance

    paid = asyncio.run(scenario())
    text = metrics.render().decode()
    spend, refunded = series(text, MONEY[0]), series(text, MONEY[1])
    assert spend == {("m",): 1400 + 1000, ("-",): 1400}  # "paid" and the net's estimate; "retired" is not a label
    assert refunded == {("m",): 1000, ("-",): 0}
    assert sum(spend.values()) - sum(refunded.values()) == paid == 2800
    assert set(series(text, MONEY[2]).values()) == {0}
