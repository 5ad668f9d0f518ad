"""Observability: /metrics, scraped after real traffic, passes `promtool check metrics`; the oldest open
hold's age is read at scrape time; failed ledger writes are counted; deploy/alerts.yml passes
`promtool check rules`, and it and deploy/grafana-dashboard.json name only metrics the gateway exports."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from billing import store
from billing.keys import check_presented, new_key
from billing.ledger import Ledger
from billing.metering import NO_USAGE
from billing.pricing import TokenPrices
from core.metrics import Metrics
from tests.conftest import GatewayProcess, base_config, call, cli, demo_provider, serve_gateway, wait_for
from tests.native_upstream import NativeUpstream

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PROMTOOL = shutil.which("promtool")
CHUNK_DELAY = 0.1

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and not os.environ.get("CI"),
    reason="promtool is not installed (Debian package prometheus); CI installs it and runs these tests")


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    assert PROMTOOL is not None, "promtool is missing: .ci/run installs the Debian package prometheus"
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, timeout=60)


def config(native: str, log_path: Path) -> str:
    return f"""
{base_config(log_path)}{demo_provider(CHUNK_DELAY)}
[providers.engine]
format = "openai"
base_url = "{native}/openai/v1"
timeouts = {{ connect = 5, first_byte = 20, idle = 20, total = 60 }}

[models.runaway]
provider = "engine"
upstream_model = "runaway"
price = {{ input = "1", output = "2" }}

[providers.nowhere]
format = "openai"
base_url = "http://127.0.0.1:9/v1"
timeouts = {{ connect = 1, first_byte = 1, idle = 1, total = 5 }}

[models.demo-echo]
provider = "demo"
upstream_model = "echo"
max_output_tokens = 64
price = {{ input = "0.50", output = "1.50" }}

[models.demo-embed]
provider = "demo"
upstream_model = "embed"
max_output_tokens = 1
price = {{ input = "0.02", output = "0" }}

[models.unreachable]
provider = "nowhere"
price = {{ input = "1", output = "2" }}
"""


@pytest.fixture(scope="module")
def gw(native: NativeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    yield from serve_gateway(tmp_path_factory.mktemp("metrics"), partial(config, native.base_url), {}, "metrics", "10",
                             ("Traceback",))


@pytest.fixture(scope="module")
def key(gw: GatewayProcess) -> str:
    return cli(gw.config, "keys", "create", "--account", "metrics", env=gw.env)["key"]


def scrape(gw: GatewayProcess) -> str:
    with urllib.request.urlopen(gw.url + "/metrics", timeout=10) as resp:
        return resp.read().decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in a scrape, or None if it is absent."""
    for line in text.splitlines():
        m = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
        if m is None or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return None


def traffic(gw: GatewayProcess, key: str) -> None:
    """Enough requests that every metric family has series: streams, non-streams, embeddings, an upstream
    that cannot be reached, one that ignores the output limit, a bad key, an unknown URL."""
    chat = {"model": "demo-echo", "messages": [{"role": "user", "content": "one two"}]}
    assert call(gw, "/v1/chat/completions", key, chat)[0] == 200
    assert call(gw, "/v1/chat/completions", key, {**chat, "stream": True})[0] == 200
    assert call(gw, "/v1/embeddings", key, {"model": "demo-embed", "input": "hello"})[0] == 200
    assert call(gw, "/v1/chat/completions", key, {**chat, "model": "unreachable"})[0] == 502
    assert call(gw, "/v1/chat/completions", key, {**chat, "model": "runaway", "max_tokens": 10})[0] == 200
    assert call(gw, "/v1/chat/completions", "sk-tt-wrong", chat)[0] == 401
    assert call(gw, "/v1/nowhere", key)[0] == 404
    assert call(gw, "/v1/models", key)[0] == 200


@needs_promtool
def test_scrape_after_traffic_passes_promtool(gw: GatewayProcess, key: str) -> None:
    traffic(gw, key)
    text = scrape(gw)
    for family in ("tokentoll_requests_total", "tokentoll_tokens_total", "tokentoll_upstream_errors_total",
                   "tokentoll_time_to_first_byte_seconds_bucket", "tokentoll_gateway_overhead_seconds_bucket",
                   "tokentoll_oldest_open_hold_age_seconds", "tokentoll_ledger_write_failures_total",
                   "tokentoll_upstream_overrun_tokens_total", "tokentoll_spend_nanousd_total",
                   "tokentoll_refunded_nanousd_total", "tokentoll_unbilled_nanousd_total"):
        assert f"\n{family}" in text, f"{family} missing from the scrape"
    # 400 tokens written where 10 were allowed (and held): 390 past the hold, and a little input past the estimate
    overrun = sample(text, "tokentoll_upstream_overrun_tokens_total", provider="engine", model="runaway")
    assert overrun is not None and overrun >= 390
    # the money of those tokens (at 2 USD per 1M output tokens), unbilled; what was charged, spent
    unbilled = sample(text, "tokentoll_unbilled_nanousd_total", model="runaway", reason="overrun")
    assert unbilled is not None and unbilled >= 390 * 2000
    assert (sample(text, "tokentoll_spend_nanousd_total", model="demo-echo") or 0) > 0
    run = promtool("check", "metrics", stdin=text.encode())
    assert run.returncode == 0 and not run.stdout.strip() and not run.stderr.strip(), \
        (run.stdout + run.stderr).decode()


def test_oldest_open_hold_is_read_at_scrape_time(gw: GatewayProcess, key: str) -> None:
    """While a slow stream holds money, the gauge shows its age; once it is settled, 0."""
    words = " ".join(["w"] * 20)  # about 23 events, CHUNK_DELAY apart: over 2 s of stream
    body = {"model": "demo-echo", "messages": [{"role": "user", "content": words}], "stream": True}
    done = threading.Event()
    result: list[int] = []

    def stream() -> None:
        result.append(call(gw, "/v1/chat/completions", key, body)[0])
        done.set()

    assert sample(scrape(gw), "tokentoll_oldest_open_hold_age_seconds", kind="request") == 0
    started = time.monotonic()
    threading.Thread(target=stream, daemon=True).start()
    ages: list[float] = []

    def aged() -> bool:
        ages.append(sample(scrape(gw), "tokentoll_oldest_open_hold_age_seconds", kind="request") or 0)
        return ages[-1] >= 0.7

    wait_for(aged, 10, "the gauge to show the open hold's age")
    assert ages[-1] < time.monotonic() - started + 0.1, ages  # the hold's age at scrape time, not more
    assert not done.is_set() and ages == sorted(ages), ages  # growing while the stream is open
    assert sample(scrape(gw), "tokentoll_oldest_open_hold_age_seconds", kind="task") == 0
    assert done.wait(20) and result == [200]
    deadline = time.monotonic() + 5
    while sample(scrape(gw), "tokentoll_oldest_open_hold_age_seconds", kind="request") != 0:
        assert time.monotonic() < deadline, "the gauge did not return to 0 after the stream was settled"
        time.sleep(0.05)


def test_ledger_write_failures_are_counted(tmp_path: Path) -> None:
    """A hold or settle transaction that raises calls the ledger's on_failure (the app counts it)."""
    metrics = Metrics()

    async def scenario() -> None:
        db = store.Store(str(tmp_path / "db"))
        await db.start()
        account = await db.run(store.tx_create_account, "acct", 0.0)
        key = new_key()
        await db.run(store.tx_create_key, account["id"], "k", key.display, key.hash, 0.0, {})
        ledger = Ledger(db, 0, 0, on_failure=metrics.ledger_write_failures.inc)
        await db.close()  # every transaction now raises StoreClosed
        presented = check_presented(key.plaintext)
        with pytest.raises(store.StoreClosed):
            await ledger.admit("req_a", presented, "m", TokenPrices(input=1, output=1), 10, 10)
        with pytest.raises(store.StoreClosed):
            await ledger.admit_amount("req_b", presented, "m", 100)
        with pytest.raises(store.StoreClosed):
            await ledger.settle_amount("req_b", 0, NO_USAGE, 200, 1.0)

    asyncio.run(scenario())
    assert sample(metrics.render().decode(), "tokentoll_ledger_write_failures_total") == 3


@needs_promtool
def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    """The rules are valid, and their unit tests (deploy/alerts.test.yml) show each alert firing when it should
    and staying quiet when it should."""
    run = promtool("check", "rules", str(DEPLOY / "alerts.yml"))
    assert run.returncode == 0 and b"SUCCESS" in run.stdout, (run.stdout + run.stderr).decode()
    run = promtool("test", "rules", str(DEPLOY / "alerts.test.yml"))
    assert run.returncode == 0 and b"SUCCESS" in run.stdout, (run.stdout + run.stderr).decode()


def exported_names(gw: GatewayProcess, key: str) -> set[str]:
    """The series names in a scrape after traffic (histograms as their _bucket, _sum and _count)."""
    traffic(gw, key)
    return {re.split(r"[{ ]", line, maxsplit=1)[0] for line in scrape(gw).splitlines()
            if line and not line.startswith("#")}


def test_dashboard_and_alerts_name_only_exported_metrics(gw: GatewayProcess, key: str) -> None:
    """A renamed metric would leave an empty panel or an alert that never fires: both files are checked."""
    names = exported_names(gw, key)
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    titles = {p["title"] for p in dashboard["panels"]}
    assert len(exprs) >= 9 and len(titles) == len(dashboard["panels"])
    alerts = (DEPLOY / "alerts.yml").read_text()
    used = set(re.findall(r"\btokentoll_[a-z_]+", "\n".join(exprs) + alerts))
    assert used and used <= names, f"not exported: {sorted(used - names)}"



@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses rule expressions: each panel query goes through it as a recording rule."""
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [t["expr"].replace("$__rate_interval", "5m") for p in dashboard["panels"] for t in p["targets"]]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"panel:query{i}", "expr": e}
                                                          for i, e in enumerate(exprs)]}]}
    (tmp_path / "dashboard.yml").write_text(json.dumps(rules))  # JSON is YAML
    run = promtool("check", "rules", str(tmp_path / "dashboard.yml"))
    assert run.returncode == 0, (run.stdout + run.stderr).decode()
