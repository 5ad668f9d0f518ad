"""The one binary (`make binary`: PyInstaller onefile, packaging/tokentoll.spec), run as an operator on a
machine without Python would run it: copied out of the source tree, with the shipped config.toml in a
directory of its own, from a third directory, with no PYTHON* variable and an empty PATH.

The module's first test runs `make binary`, which rebuilds dist/tokentoll only when it is older than
gateway.py, core/, billing/, adapters/, packaging/ or the installed lock (make compares the times): a fresh
checkout builds it (about 45 s on the 2-core machine), a second run of the test reuses it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest
from openai import OpenAI

from billing.metering import count_text
from tests.conftest import ROOT, wait_for

pytestmark = [pytest.mark.slow,
              pytest.mark.timeout(600)]  # the build, on a fresh checkout, is part of the first test

BUILD_TIMEOUT = 540
DEMO_KEY = re.compile(r"^\s+(sk-tt-\S+)$")
WORDS = re.compile(r"\s*\S+")  # the demo streams word by word, each word counted by the tokenizer


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    started = time.monotonic()
    run = subprocess.run(["make", "binary"], cwd=ROOT, capture_output=True, timeout=BUILD_TIMEOUT)
    if run.returncode != 0:
        raise AssertionError(f"make binary failed ({run.returncode}):\n{run.stdout.decode()}{run.stderr.decode()}")
    print(f"make binary: {time.monotonic() - started:.1f} s")
    # Out of the source tree: nothing next to the binary may be what makes it work.
    copy = tmp_path_factory.mktemp("opt") / "tokentoll"
    shutil.copy2(ROOT / "dist" / "tokentoll", copy)
    return copy


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """etc/ holds the config (its relative database path lands in etc/data/), work/ is the working
    directory, bin/ an empty PATH, tmp/ the TMPDIR the binary unpacks into."""
    for name in ("etc", "work", "bin", "tmp"):
        (tmp_path / name).mkdir()
    shutil.copy(ROOT / "config.toml", tmp_path / "etc" / "config.toml")
    return tmp_path


def target_env(site: Path) -> dict[str, str]:
    return {"PATH": str(site / "bin"), "HOME": str(site), "TMPDIR": str(site / "tmp"), "LANG": "C.UTF-8"}


def run_binary(binary: Path, site: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(binary), "--config", str(site / "etc" / "config.toml"), *args],
                          cwd=site / "work", env=target_env(site), capture_output=True, timeout=60)


class Binary:
    """The binary serving on a free port; its stderr collected line by line."""

    def __init__(self, binary: Path, site: Path, config: Path) -> None:
        self.stdout = open(site / "stdout.log", "wb")  # noqa: SIM115 - the request log, closed in stop()
        self.proc = subprocess.Popen([str(binary), "--config", str(config), "--port", "0"], cwd=site / "work",
                                     env=target_env(site), stdout=self.stdout, stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        first = self.proc.stderr.readline().decode()
        if "serving http://" not in first:
            raise AssertionError(f"the binary did not start: {first}{self.proc.stderr.read().decode()}")
        self.first_line = first
        self.url = first.split("serving ")[1].split()[0]
        self.lines: list[str] = [first]
        threading.Thread(target=self._drain, daemon=True).start()
        wait_for(self.ready, 30, "/readyz")

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.decode(errors="replace"))

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def demo_keys(self) -> list[str]:
        return [m.group(1) for line in list(self.lines) if (m := DEMO_KEY.match(line.rstrip("\n")))]

    def descendants(self) -> set[int]:
        """Every process under the binary (onefile: the bootloader, then Python, then any workers)."""
        found: set[int] = set()
        todo = [self.proc.pid]
        while todo:
            pid = todo.pop()
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                found.add(child)
                todo.append(child)
        return found

    def stop(self) -> int:
        """SIGTERM, as systemd or docker stop sends it; the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
            self.stdout.close()


def request_log(site: Path) -> list[dict[str, Any]]:
    """The request log (`request_log = "-"` in the shipped config: the binary's stdout)."""
    return [orjson.loads(line) for line in (site / "stdout.log").read_bytes().splitlines() if line.startswith(b"{")]


@pytest.fixture
def serve(binary: Path, site: Path) -> Iterator[list[Binary]]:
    started: list[Binary] = []
    yield started
    for b in started:  # a failed test's binary: the processes below the bootloader first
        for pid in b.descendants():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if b.proc.poll() is None:
            b.proc.kill()
            b.proc.wait(5)


def test_the_binary_serves_the_shipped_config_offline(binary: Path, site: Path, serve: list[Binary]) -> None:
    help_text = run_binary(binary, site, "--help")
    assert help_text.returncode == 0 and help_text.stdout.startswith(b"usage: tokentoll ")

    check = run_binary(binary, site, "--check")
    assert check.returncode == 0, check.stderr
    assert b"is valid (1 providers, 5 models)" in check.stdout

    gw = Binary(binary, site, site / "etc" / "config.toml")
    serve.append(gw)
    assert "(5 models from" in gw.first_line and "1 worker)" in gw.first_line
    # The relative database path is relative to the config file, not to the working directory.
    assert (site / "etc" / "data" / "tokentoll.db").exists() and not (site / "work" / "data").exists()
    keys = wait_for(gw.demo_keys, 10, "the demo key on stderr")
    assert len(keys) == 1

    client = OpenAI(base_url=gw.url + "/v1", api_key=keys[0], max_retries=0)
    text = "Hello from one binary, tokenized offline!"
    reply = client.chat.completions.create(model="demo-echo", messages=[{"role": "user", "content": text}])
    assert reply.choices[0].message.content == text
    assert reply.usage is not None
    # The bundled cl100k encoding: the same counts as the source tree's tokenizer.
    assert reply.usage.completion_tokens == sum(count_text(w) for w in WORDS.findall(text))

    chunks = list(client.chat.completions.create(model="demo-echo", messages=[{"role": "user", "content": text}],
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == len(WORDS.findall(text))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == reply.usage.completion_tokens

    with urllib.request.urlopen(gw.url + "/metrics", timeout=5) as resp:  # prometheus_client, frozen
        metrics = resp.read().decode()
    assert re.search(r'(?m)^tokentoll_requests_total\{.*model="demo-echo".*\} 2\.0$', metrics), metrics

    # The web console's templates and static files are bundled: its pages render from the binary.
    with urllib.request.urlopen(gw.url + "/console/prices", timeout=5) as resp:
        assert resp.status == 200 and "demo-echo" in resp.read().decode()
    with urllib.request.urlopen(gw.url + "/console/static/console.css", timeout=5) as resp:
        assert resp.headers["content-type"].startswith("text/css") and b"--accent" in resp.read()

    # An operator command against the same database while the gateway runs; its key works at once.
    created = run_binary(binary, site, "accounts", "create", "team", "--credit", "2", "--json")
    assert created.returncode == 0, created.stderr
    assert orjson.loads(created.stdout)["name"] == "team"
    made = run_binary(binary, site, "keys", "create", "--account", "team", "--json")
    assert made.returncode == 0, made.stderr
    team = OpenAI(base_url=gw.url + "/v1", api_key=orjson.loads(made.stdout)["key"], max_retries=0)
    assert team.chat.completions.create(model="demo-echo", messages=[{"role": "user", "content": "hi"}]).id

    assert gw.stop() == 0
    assert not [line for line in gw.lines if "Traceback" in line], "".join(gw.lines)
    assert [e["model"] for e in request_log(site) if e["route"] == "/v1/chat/completions"] == ["demo-echo"] * 3
    # A clean exit removes what the binary unpacked, and tiktoken left no cached copy of the encoding.
    assert list((site / "tmp").iterdir()) == []

    # Started again: the demo key is not shown a second time, and still works.
    again = Binary(binary, site, site / "etc" / "config.toml")
    serve.append(again)
    client = OpenAI(base_url=again.url + "/v1", api_key=keys[0], max_retries=0)
    assert client.chat.completions.create(model="demo-echo", messages=[{"role": "user", "content": "again"}]).id
    assert again.demo_keys() == []
    assert again.stop() == 0


def two_workers(binary: Path, site: Path) -> tuple[Path, str]:
    """The shipped config with two workers and no demo account, and a key made by operator commands
    (which create the database first: workers that start on a fresh database race to create it)."""
    made = run_binary(binary, site, "accounts", "create", "team", "--credit", "1", "--json")
    assert made.returncode == 0, made.stderr
    key = orjson.loads(run_binary(binary, site, "keys", "create", "--account", "team", "--json").stdout)["key"]
    config = site / "etc" / "config.toml"
    text = re.sub(r"(?m)^workers = 1\b", "workers = 2", config.read_text())
    config.write_text(re.sub(r'(?m)^demo_balance = "5.00"', 'demo_balance = "0"', text))
    return config, key


def test_the_binary_runs_forked_workers(binary: Path, site: Path, serve: list[Binary]) -> None:
    config, key = two_workers(binary, site)
    gw = Binary(binary, site, config)
    serve.append(gw)
    assert "2 workers)" in gw.first_line
    assert gw.demo_keys() == []  # demo_balance = "0": no demo account
    wait_for(lambda: len(gw.descendants()) >= 3, 10, "the supervisor and its two workers")
    processes = gw.descendants()
    # A new connection for each request, so that either worker may take it.
    client = OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, default_headers={"connection": "close"})
    texts = [f"request {i} of twelve, streamed while the others run" for i in range(12)]

    def ask(text: str) -> str:
        stream = client.chat.completions.create(model="demo-echo", messages=[{"role": "user", "content": text}],
                                                stream=True)
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    def workers_that_answered() -> set[int]:
        return {e["worker"] for e in request_log(site) if e["route"] == "/v1/chat/completions"}

    with ThreadPoolExecutor(len(texts)) as pool:  # at once, so that both workers take connections
        for _ in range(5):  # one round has always been enough; the kernel decides who accepts
            assert list(pool.map(ask, texts)) == texts
            if len(wait_for(workers_that_answered, 5, "the request log")) == 2:
                break
    assert len(workers_that_answered()) == 2 and workers_that_answered() <= processes
    assert gw.descendants() == processes  # no worker died and was replaced

    assert gw.stop() == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in processes)
    assert not [line for line in gw.lines if "Traceback" in line], "".join(gw.lines)
    assert list((site / "tmp").iterdir()) == []


def test_kill_9_of_the_binary_stops_the_gateway_under_it(binary: Path, site: Path, serve: list[Binary]) -> None:
    """The pid an operator holds is the bootloader's: killed with SIGKILL, it cannot pass the signal on,
    and the gateway below it (packaging/rthook_parent.py) gets a SIGTERM from the kernel instead."""
    config, _ = two_workers(binary, site)
    gw = Binary(binary, site, config)
    serve.append(gw)
    wait_for(lambda: len(gw.descendants()) >= 3, 10, "the supervisor and its two workers")
    processes = gw.descendants()
    gw.proc.kill()
    gw.proc.wait(5)
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in processes), 15, "the gateway to stop")


def test_the_binary_reads_recharge_chains_and_derives_deposit_addresses(binary: Path, site: Path) -> None:
    """bip-utils (the xpub derivation) is inside the binary: a config with a chain checks, and an account gets
    the same deposit address from the binary as from the source tree."""
    from bip_utils import Bip39SeedGenerator, Bip44, Bip44Coins

    from billing.recharge.addresses import deposit_address

    xpub = Bip44.FromSeed(Bip39SeedGenerator("abandon " * 11 + "about").Generate(), Bip44Coins.ETHEREUM) \
        .Purpose().Coin().Account(0).PublicKey().ToExtended()
    chained = site / "etc" / "chains.toml"
    chained.write_text((site / "etc" / "config.toml").read_text() + f"""
[chains.ethereum]
rpc_url = "http://127.0.0.1:9"
chain_id = 1
contract = "0xdAC17F958D2ee523a2206206994597C13D831ec7"
xpub = "{xpub}"
""")

    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([str(binary), "--config", str(chained), *args], cwd=site / "work",
                              env=target_env(site), capture_output=True, timeout=60)

    assert run("--check").returncode == 0
    account = orjson.loads(run("accounts", "create", "chain-user", "--json").stdout)
    shown = orjson.loads(run("recharge", "address", "chain-user", "ethereum", "--json").stdout)
    assert shown["address"] == deposit_address(xpub, "evm", account["id"])
