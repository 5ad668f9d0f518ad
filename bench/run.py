"""TokenToll benchmark (`make bench`): owns the mock upstream (nginx with canned OpenAI answers), the gateway under
test (one process, billing on, with its own fresh SQLite database, account and key), the same gateway with billing
off (a second process, for the cost of billing), the gateway at a base commit and a twin of the gateway under test
(two more, billing on, each with its own database, account and key, the base one's tree from `git archive`: for the
cost of the change since, in requests per second and, under callgrind, in instructions), the stack floor
(bench/stack_floor.py, a featureless relay on the same stack) and the load (wrk, plus an aiohttp client for time to
first byte); records results in RESULTS.md."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import astuple, dataclass, field, replace
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
NGINX_PREFIX = OUT / "nginx"
RESULTS = BENCH / "RESULTS.md"
REQUEST_LOG = OUT / "requests.jsonl"
GATEWAY_LOG = OUT / "gateway.log"
GATEWAY_CONFIG = OUT / "gateway.toml"
BILLING_DB = OUT / "billing.db"  # the billing-on gateway's database, made afresh each run
NOBILL_REQUEST_LOG = OUT / "requests-billing-off.jsonl"
NOBILL_LOG = OUT / "gateway-billing-off.log"
NOBILL_CONFIG = OUT / "gateway-billing-off.toml"
NOBILL_DB = OUT / "billing-off.db"  # opened by the billing-off gateway, never written to by a request
FLOOR_LOG = OUT / "stack-floor.log"
BASE_TREE = OUT / "base"  # the base commit's files (`git archive BASE | tar -x`), written afresh each run
BASE_REQUEST_LOG = OUT / "requests-base.jsonl"
BASE_LOG = OUT / "gateway-base.log"
BASE_CONFIG = OUT / "gateway-base.toml"
BASE_DB = OUT / "base.db"  # the base gateway's own database: the base commit has an older schema version
# The gateway under test again, a fourth process that serves only what the base gateway serves, so that the change
# cost compares two gateways of the same history: a billing database grows with every request (its request-id
# indexes spill out of SQLite's page cache), and the gateway under test serves far more than the base one
TWIN_REQUEST_LOG = OUT / "requests-twin.jsonl"
TWIN_LOG = OUT / "gateway-twin.log"
TWIN_CONFIG = OUT / "gateway-twin.toml"
TWIN_DB = OUT / "twin.db"
ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")  # Debian's libnginx-mod-http-echo

GATEWAY_PATH = "/v1/chat/completions"
UPSTREAM_MODEL = "mock-gpt-1"
CHUNKS = 50
PACE_MS = 1
PROMPT_TOKENS = 31
WORDS = "The quick brown fox jumps over the lazy dog while a gateway in between counts every token".split()

TARGET_ADDED_P50_MS = 1.0
TARGET_REQS_PER_S = 1200.0
TARGET_STREAMS_PER_S = 250.0
TARGET_RSS_GROWTH = 0.10
TARGET_BILLING_RATIO = 0.85  # billing costs at most 15% of throughput: billing on / billing off >= 0.85
TARGET_CHANGE_RATIO = 0.95  # the change since BASE_REF costs at most 5% of throughput: HEAD / base >= 0.95
TARGET_INSTRUCTION_RATIO = 1.05  # ...and at most 5% more instructions per request: HEAD / base <= 1.05
# The change cost in instructions: each gateway alone under callgrind (which counts instructions, not seconds: the
# same for the same code and requests whatever the machine is doing), these many requests of each kind after a
# warm-up, one at a time
COUNTED_WARMUP = 20
COUNTED_REQUESTS = 100

# The last commit before streams were cut at the held limit and overruns accounted (issue 16): the change cost
# compares the gateway under test with the gateway at this commit (--base REF for another, --base none for none)
BASE_REF = "af3c875"

PRICE_INPUT, PRICE_OUTPUT = "0.50", "1.50"  # USD per 1M tokens, as in the generated config
PROVIDER_TOTAL_TIMEOUT = 120  # seconds; billing.hold_ttl must be longer
HOLD_TTL = 300
BENCH_ACCOUNT = "bench"
BENCH_CREDIT_USD = 1_000_000  # far more than a run spends (about $0.09 per 1,000 requests)
KEY_ENV = "TOKENTOLL_BENCH_KEY"  # how post.lua gets the key (not on wrk's command line, which is saved)
_bench_key = ""  # the plaintext key of the bench account, set by create_wallet(); sent to every target


class BenchError(Exception):
    """Something that makes the figures untrustworthy: the run stops and says why."""


@dataclass(frozen=True)
class Route:
    """One canned answer: where nginx serves it, and the gateway model (and provider) that leads there."""

    name: str
    path: str
    stream: bool
    dialect: str = "openai"  # "anthropic": the same upstream answer asked for through /v1/messages (translated)

    @property
    def model(self) -> str:
        return f"bench-{self.name}"

    @property
    def request_file(self) -> Path:
        return OUT / (f"request-{self.name}.json" if self.dialect == "openai" else
                      f"request-{self.name}-{self.dialect}.json")


CHAT = Route("chat", "/json/v1/chat/completions", stream=False)
STREAM = Route("stream", "/sse/v1/chat/completions", stream=True)  # a static file: arrives in one read
PACED = Route("paced", "/paced/v1/chat/completions", stream=True)  # one event per PACE_MS, as providers send
FIRST = Route("first", "/first/v1/chat/completions", stream=True)  # the first event PACE_MS before the rest
ROUTES = (CHAT, STREAM, PACED, FIRST)
# The translated lane: an Anthropic-format client served by the same OpenAI-format upstream answers
CLAUDE_CHAT = Route("chat", CHAT.path, stream=False, dialect="anthropic")
CLAUDE_STREAM = Route("stream", STREAM.path, stream=True, dialect="anthropic")
TRANSLATED = (CLAUDE_CHAT, CLAUDE_STREAM)
MESSAGES_PATH = "/v1/messages"
TARGET_TRANSLATION_RATIO = 0.75  # translation costs at most 25% of passthrough throughput


# -- canned bodies -----------------------------------------------------------------------------


def compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def usage() -> dict[str, Any]:
    return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": CHUNKS, "total_tokens": PROMPT_TOKENS + CHUNKS,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def words() -> list[str]:
    return [" " + WORDS[i % len(WORDS)] for i in range(CHUNKS)]


def chat_answer() -> bytes:
    message = {"role": "assistant", "content": "".join(words()).strip(), "refusal": None}
    return compact({"id": "chatcmpl-bench0000000000000000000001", "object": "chat.completion", "created": 1764400000,
                    "model": UPSTREAM_MODEL, "system_fingerprint": "fp_bench01",
                    "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
                    "usage": usage()}) + b"\n"


def stream_events() -> list[bytes]:
    """50 content chunks, a finish chunk, the usage-only chunk (`choices: []`) and [DONE], as OpenAI sends them."""
    base = {"id": "chatcmpl-bench0000000000000000000002", "object": "chat.completion.chunk", "created": 1764400000,
            "model": UPSTREAM_MODEL, "system_fingerprint": "fp_bench01"}
    chunks = []
    for i, word in enumerate(words()):
        delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
        chunks.append({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}],
                       "usage": None})
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
                   "usage": None})
    chunks.append({**base, "choices": [], "usage": usage()})
    return [b"data: " + compact(c) + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]


def echo_directives(parts: list[list[bytes]]) -> str:
    """nginx echo-module lines that write the events of each part, flush them, and wait PACE_MS before the next."""
    lines = []
    for i, events in enumerate(parts):
        for event in events:
            text = event.decode().replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
            if "$" in text:
                raise BenchError("an event contains '$', which nginx would read as a variable")
            lines.append(f"            echo -n '{text}';")
        lines.append("            echo_flush;" + (f" echo_sleep {PACE_MS / 1000:g};" if i < len(parts) - 1 else ""))
    return "\n".join(lines)


def request_body(route: Route) -> bytes:
    if route.dialect == "anthropic":
        return compact({"model": route.model, "system": "You are a concise assistant.", "max_tokens": 256,
                        "temperature": 0.7, "stream": route.stream, "messages": [
                            {"role": "user", "content": "Write one sentence about a fox and a dog, fifty words at most."}]})
    body: dict[str, Any] = {
        "model": route.model,
        "messages": [{"role": "system", "content": "You are a concise assistant."},
                     {"role": "user", "content": "Write one sentence about a fox and a dog, fifty words at most."}],
        "max_tokens": 256,
        "temperature": 0.7,
    }
    if route.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return compact(body)


def client_headers(key: str) -> dict[str, str]:
    """What every client sends: the bench key goes to every target but the base gateway, which has its own (nginx
    and the stack floor ignore it), so that all of them get the same requests."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def expected_cost_nanousd() -> int:
    """What one canned exchange costs: its upstream usage at the generated config's prices (nano-USD)."""
    per_token = {kind: Decimal(price) * 1000 for kind, price in (("in", PRICE_INPUT), ("out", PRICE_OUTPUT))}
    return int(PROMPT_TOKENS * per_token["in"] + CHUNKS * per_token["out"])


def sse_data(raw: bytes) -> list[bytes]:
    """The data payloads of an event stream, in order (the canned streams use single-line events)."""
    return [block[6:] for block in raw.split(b"\n\n") if block.startswith(b"data: ")]


def check_answer(route: Route, raw: bytes, where: str) -> None:
    if route.dialect == "anthropic":
        check_claude_answer(route, raw, where)
        return
    if route.stream:
        check_stream_answer(raw, where)
        return
    obj = json.loads(raw)
    if obj.get("object") != "chat.completion" or obj.get("usage", {}).get("completion_tokens") != CHUNKS:
        raise BenchError(f"{where}: the non-stream answer is not the canned chat completion: {raw[:200]!r}")


def check_claude_answer(route: Route, raw: bytes, where: str) -> None:
    """The canned answer as an Anthropic Message (or its event stream), with the upstream's usage."""
    if route.stream:
        names = [line[7:] for line in raw.decode().splitlines() if line.startswith("event: ")]
        deltas = names.count("content_block_delta")
        if names[:1] != ["message_start"] or names[-1:] != ["message_stop"] or deltas != CHUNKS:
            raise BenchError(f"{where}: not the canned answer as an Anthropic stream: {raw[:200]!r}")
        return
    obj = json.loads(raw)
    if obj.get("type") != "message" or obj.get("usage", {}).get("output_tokens") != CHUNKS:
        raise BenchError(f"{where}: not the canned answer as an Anthropic message: {raw[:200]!r}")


def check_stream_answer(raw: bytes, where: str) -> None:
    data = sse_data(raw)
    if len(data) != CHUNKS + 3 or data[-1] != b"[DONE]":
        raise BenchError(f"{where}: expected {CHUNKS + 3} events ending in [DONE], got {len(data)}")
    chunks = [json.loads(d) for d in data[:-1]]
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks[:CHUNKS]]
    if deltas != words() or chunks[CHUNKS]["choices"][0]["finish_reason"] != "stop":
        raise BenchError(f"{where}: the content chunks or the finish chunk are not the canned ones")
    if chunks[-1]["choices"] != [] or chunks[-1]["usage"]["completion_tokens"] != CHUNKS:
        raise BenchError(f"{where}: the last chunk before [DONE] is not the usage-only chunk")


# -- tools and processes -----------------------------------------------------------------------


def find_binary(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")


def run_quiet(cmd: list[str]) -> bool:
    return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT).returncode == 0


def ensure_tools() -> None:
    """nginx, its echo module, wrk and valgrind from Debian's packages, installed only if missing; apt-get update
    only if the install fails."""
    needs: dict[str, Callable[[], bool]] = {
        "nginx": lambda: find_binary("nginx") is not None,
        "libnginx-mod-http-echo": ECHO_MODULE.exists,
        "wrk": lambda: find_binary("wrk") is not None,
        "valgrind": lambda: find_binary("valgrind") is not None and find_binary("callgrind_control") is not None,
    }
    missing = [pkg for pkg, present in needs.items() if not present()]
    if not missing:
        return
    step(f"installing {' '.join(missing)} with apt-get")
    os.environ.setdefault("DEBIAN_FRONTEND", "noninteractive")
    install = ["apt-get", "install", "-y", "-q", *missing]
    installed = run_quiet(install) or (run_quiet(["apt-get", "update", "-q"]) and run_quiet(install))
    still = [pkg for pkg in missing if not needs[pkg]()]
    if not installed or still:
        raise BenchError(f"could not install {' '.join(still or missing)} (apt-get install -y {' '.join(missing)})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get_ok(url: str, body: bytes | None = None) -> bool:
    """A 200 answer to a GET, or to a POST of `body` if given."""
    headers = {} if body is None else {"Content-Type": "application/json"}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_until(check: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with status {proc.returncode} while starting")
        if time.monotonic() > deadline:
            raise BenchError(f"{what} was not ready after {timeout:.0f} s")
        time.sleep(0.05)


def stop_process(proc: subprocess.Popen[bytes], sig: signal.Signals, grace: float) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def write_nginx_files(port: int) -> None:
    (NGINX_PREFIX / "tmp").mkdir(parents=True, exist_ok=True)
    for route, body in ((CHAT, chat_answer()), (STREAM, b"".join(stream_events()))):
        file = NGINX_PREFIX / "www" / route.path.lstrip("/")
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(body)
    conf = (BENCH / "nginx.conf.tmpl").read_text()
    events = stream_events()
    for name, value in (("PORT", str(port)), ("PREFIX", str(NGINX_PREFIX)), ("ECHO_MODULE", str(ECHO_MODULE)),
                        ("PACED_EVENTS", echo_directives([[e] for e in events])),
                        ("FIRST_EVENTS", echo_directives([events[:1], events[1:]]))):
        conf = conf.replace(f"@{name}@", value)
    (NGINX_PREFIX / "nginx.conf").write_text(conf)
    (NGINX_PREFIX / "error.log").write_text("")


def start_nginx(stack: ExitStack) -> str:
    """The mock upstream on a free loopback port; returns its base URL."""
    nginx = find_binary("nginx") or "nginx"
    for _attempt in range(3):  # the free port may be taken before nginx binds it
        port = free_port()
        write_nginx_files(port)
        proc = subprocess.Popen([nginx, "-p", f"{NGINX_PREFIX}/", "-c", "nginx.conf", "-e", "error.log"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stack.callback(stop_process, proc, signal.SIGTERM, 5)
        try:  # the status page is ours alone: a stranger on the same port would not answer it
            wait_until(partial(http_get_ok, f"http://127.0.0.1:{port}/nginx_status"), proc, "nginx", 5)
            return f"http://127.0.0.1:{port}"
        except BenchError:
            stop_process(proc, signal.SIGTERM, 5)
    raise BenchError(f"nginx did not start; see {NGINX_PREFIX / 'error.log'}")


@dataclass(frozen=True)
class GatewaySetup:
    """One gateway process's files: billing on (the gateway under test), off (the same config otherwise), or the
    base commit's gateway (billing on, the same config, its own tree)."""

    billing: bool
    config: Path
    log: Path
    request_log: Path
    database: Path
    name: str  # the target's name, in labels and file names
    title: str  # in messages
    log_label: str  # which gateway's request log, in its note
    tree: Path = ROOT  # the source tree whose gateway.py runs it (and its operator CLI)


BILLING_ON = GatewaySetup(True, GATEWAY_CONFIG, GATEWAY_LOG, REQUEST_LOG, BILLING_DB, "gateway", "the gateway",
                          "billing on")
BILLING_OFF = GatewaySetup(False, NOBILL_CONFIG, NOBILL_LOG, NOBILL_REQUEST_LOG, NOBILL_DB, "gateway-nobill",
                           "the billing-off gateway", "billing off")
TWIN = GatewaySetup(True, TWIN_CONFIG, TWIN_LOG, TWIN_REQUEST_LOG, TWIN_DB, "gateway-twin",
                    "the gateway under test's twin", "the twin (HEAD for the change cost), billing on")


@dataclass(frozen=True)
class BaseCommit:
    """The commit whose gateway the change cost compares with the gateway under test."""

    ref: str  # as given to --base
    sha: str
    short: str

    @property
    def setup(self) -> GatewaySetup:
        return GatewaySetup(True, BASE_CONFIG, BASE_LOG, BASE_REQUEST_LOG, BASE_DB, "gateway-base",
                            f"the base gateway ({self.short})", f"base {self.short}, billing on", BASE_TREE)


def git_output(*args: str) -> str | None:
    """A read-only git command's first line of output in the repository, or None if it failed."""
    proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)
    lines = proc.stdout.strip().splitlines()
    return lines[0] if proc.returncode == 0 and lines else None


def resolve_base(ref: str) -> BaseCommit | None:
    """The commit that --base names (None for "none")."""
    if ref.lower() == "none":
        return None
    sha = git_output("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    short = git_output("rev-parse", "--short", sha) if sha else None
    if sha is None or short is None:
        raise BenchError(f"--base {ref}: not a commit of this repository (--base none skips the change cost)")
    return BaseCommit(ref, sha, short)


def materialize_base(base: BaseCommit) -> None:
    """The base commit's files in BASE_TREE, afresh: `git archive SHA | tar -x` (a plain copy, not a worktree).
    Its gateway runs on the gateway under test's virtualenv: the dependencies have not changed since the base, which
    its requirements.lock must show."""
    shutil.rmtree(BASE_TREE, ignore_errors=True)
    BASE_TREE.mkdir(parents=True)
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", base.sha], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    assert archive.stdout is not None and archive.stderr is not None
    untar = subprocess.run(["tar", "-x", "-C", str(BASE_TREE)], stdin=archive.stdout, capture_output=True)
    archive.stdout.close()
    archive_errors = archive.stderr.read().decode(errors="replace")
    if archive.wait() != 0 or untar.returncode != 0:
        raise BenchError(f"`git archive {base.sha} | tar -x -C {BASE_TREE}` failed:\n{archive_errors}"
                         f"{untar.stderr.decode(errors='replace')}")
    base_lock, head_lock = BASE_TREE / "requirements.lock", ROOT / "requirements.lock"
    if not base_lock.exists() or base_lock.read_bytes() != head_lock.read_bytes():
        raise BenchError(f"{base.short}'s requirements.lock differs from the tree under test's: its gateway would "
                         "need a virtualenv of its own; compare with a later base (--base REF) or none (--base none)")


def venv_python() -> str:
    """The project's virtualenv python (make's), else the one running this script; every gateway runs on it."""
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def write_gateway_config(nginx: str, setup: GatewaySetup) -> None:
    parts = [f'# Written by bench/run.py for one benchmark run.\n[server]\nhost = "127.0.0.1"\nport = 0\n'
             # one worker, in the process that run.py starts: its pid is the one whose CPU and RSS are read
             f'workers = 1\nrequest_log = "{setup.request_log}"\n',
             # no rate limits (0): the load is one key's; hold_ttl must exceed every provider's total timeout
             f'[billing]\nenabled = {str(setup.billing).lower()}\n'
             f'database = "{setup.database.relative_to(setup.config.parent)}"\nsynchronous = "NORMAL"\n'
             f'hold_ttl = {HOLD_TTL}\nsweep_interval = 30\ndefault_rpm = 0\ndefault_tpm = 0\n']
    for route in ROUTES:
        parts.append(f'[providers.mock-{route.name}]\nformat = "openai"\n'
                     f'base_url = "{nginx}{route.path.removesuffix("/chat/completions")}"\n'
                     f'timeouts = {{ connect = 5, first_byte = 30, idle = 30, total = {PROVIDER_TOTAL_TIMEOUT} }}\n')
        parts.append(f'[models.{route.model}]\nprovider = "mock-{route.name}"\nupstream_model = "{UPSTREAM_MODEL}"\n'
                     f'price = {{ input = "{PRICE_INPUT}", output = "{PRICE_OUTPUT}" }}\n')
    setup.config.write_text("\n".join(parts))


def remove_database(db: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)


def operator_cli(config: Path, *args: str, tree: Path = ROOT) -> Any:
    """`gateway.py --config CONFIG ARGS --json` (the operator's command line) of the source tree `tree`, its JSON
    answer parsed."""
    cmd = [venv_python(), "gateway.py", "--config", str(config), *args, "--json"]
    proc = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise BenchError(f"`{' '.join(cmd[1:])}` failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise BenchError(f"`{' '.join(cmd[1:])}` did not print JSON:\n{proc.stdout[:500]}") from None


def create_account_key(setup: GatewaySetup) -> str:
    """A fresh database for a billing-on gateway, with one account (a large credit) and one key, made with its own
    tree's operator CLI before the gateway starts; returns the key's plaintext."""
    account = operator_cli(setup.config, "accounts", "create", BENCH_ACCOUNT, "--credit", str(BENCH_CREDIT_USD),
                           tree=setup.tree)
    if account.get("balance") != BENCH_CREDIT_USD * 10**9:
        raise BenchError(f"the new account does not hold the ${BENCH_CREDIT_USD:,} credit: {account}")
    key = operator_cli(setup.config, "keys", "create", "--account", BENCH_ACCOUNT, tree=setup.tree)
    if not str(key.get("key", "")).startswith("sk-tt-"):
        raise BenchError(f"keys create printed no sk-tt- key: {sorted(key)}")
    return str(key["key"])


def create_wallet() -> None:
    """The gateway under test's account and key (create_account_key); the key becomes what every client sends."""
    global _bench_key
    _bench_key = create_account_key(BILLING_ON)


@dataclass(frozen=True)
class Target:
    """One side of the comparison: nginx itself, or a relay in front of it whose process is watched (CPU,
    and the connections it opens to nginx)."""

    name: str  # in labels and file names
    title: str  # in messages
    url: str
    nginx: str
    proc: subprocess.Popen[bytes] | None = None  # None: nginx itself
    log: Path | None = None  # the relay's stdout and stderr
    path: str | None = None  # the one path the relay serves; None: each route at nginx's own path
    key: str | None = None  # the key its clients send; None: the bench key, which every other target gets

    @property
    def client_key(self) -> str:
        return _bench_key if self.key is None else self.key

    @property
    def pid(self) -> int:
        assert self.proc is not None, "nginx is not watched"
        return self.proc.pid

    def url_for(self, route: Route) -> str:
        if route.dialect == "anthropic":
            return self.url + MESSAGES_PATH
        return self.url + (self.path or route.path)


def port_from_log(log: Path, name: str) -> int | None:
    """The port in the "NAME: serving http://127.0.0.1:PORT" line that the gateway and the stack floor print."""
    match = re.search(re.escape(name.encode()) + rb": serving http://127\.0\.0\.1:(\d+)", log.read_bytes())
    return int(match.group(1)) if match else None


def start_server(stack: ExitStack, args: list[str], log_path: Path, name: str, what: str,
                 cwd: Path = ROOT) -> tuple[subprocess.Popen[bytes], str]:
    """A Python server process from the venv, run in `cwd` and logging to `log_path`; returns it and its base URL
    once it has printed its port (stopped with SIGTERM when the stack closes)."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([venv_python(), *args], cwd=cwd, stdout=log, stderr=log)
    stack.callback(stop_process, proc, signal.SIGTERM, 15)
    try:
        wait_until(lambda: port_from_log(log_path, name) is not None, proc, what, 30)
    except BenchError as exc:
        raise BenchError(f"{exc}; the end of {log_path}:\n{log_tail(log_path)}") from None
    return proc, f"http://127.0.0.1:{port_from_log(log_path, name)}"


def log_tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def start_gateway(stack: ExitStack, nginx: str, setup: GatewaySetup, key: str | None = None) -> Target:
    """One gateway process (one hypercorn worker), started from its tree as `make run` starts it; its clients send
    `key` (None: the bench key)."""
    setup.request_log.unlink(missing_ok=True)
    args = ["gateway.py", "--config", str(setup.config), "--port", "0"]
    proc, url = start_server(stack, args, setup.log, "tokentoll", setup.title, cwd=setup.tree)
    wait_until(partial(http_get_ok, url + "/readyz"), proc, setup.title, 30)
    return Target(setup.name, setup.title, url, nginx, proc, setup.log, GATEWAY_PATH, key)


def start_floor(stack: ExitStack, nginx: str) -> Target:
    """The stack floor in front of nginx; it serves every route at nginx's own path."""
    proc, url = start_server(stack, [str(BENCH / "stack_floor.py"), nginx, "0"], FLOOR_LOG, "stack-floor",
                             "the stack floor")
    wait_until(partial(http_get_ok, url + CHAT.path, request_body(CHAT)), proc, "the stack floor", 30)
    return Target("floor", "the stack floor", url, nginx, proc, FLOOR_LOG)


# -- /proc readings ----------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and kernel CPU seconds the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick  # utime, stime


class RssSampler(threading.Thread):
    """Reads the gateway's VmRSS every `interval` seconds and keeps the highest."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak_kib = rss_kib(pid)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            try:
                self.peak_kib = max(self.peak_kib, rss_kib(self.pid))
            except (OSError, BenchError):
                return

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak_kib


def nginx_accepts(nginx: str) -> int:
    """The "accepts" counter of nginx's stub_status page (this request's own connection included)."""
    with urllib.request.urlopen(nginx + "/nginx_status", timeout=2) as resp:
        return int(resp.read().decode().split("\n")[2].split()[0])


# -- load --------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    cpu: float = 0.0  # share of one core the relay (gateway or stack floor) used during the run
    cpu_sys: float = 0.0  # the part of cpu spent in the kernel
    upstream_connects: int = 0  # connections the relay opened to nginx during the run

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds


def run_wrk(label: str, url: str, route: Route, conns: int, seconds: float, key: str) -> WrkResult:
    """One wrk run (two threads, or one for a single connection), each request with `key`; any socket error or
    non-2xx/3xx answer stops the benchmark."""
    cmd = ["wrk", f"-t{min(conns, 2)}", f"-c{conns}", f"-d{seconds:g}s", "--timeout", "10s", "--latency",
           "-s", str(BENCH / "post.lua"), url, "--", str(route.request_file)]
    env = {**os.environ, KEY_ENV: key}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, env=env)
    output = proc.stdout + proc.stderr
    (OUT / f"wrk-{label}.txt").write_text(" ".join(cmd) + "\n\n" + output)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise BenchError(f"wrk {label} failed (exit {proc.returncode}):\n{output}")
    r = json.loads(line.removeprefix("BENCH_JSON "))
    errors = {k: r[k] for k in ("non_2xx_3xx", "connect_errors", "read_errors", "write_errors", "timeouts") if r[k]}
    if errors or r["requests"] == 0:
        raise BenchError(f"wrk {label}: {errors or 'no requests completed'}\n{output}")
    return WrkResult(r["requests"], r["duration_us"] / 1e6, r["latency_p50_us"] / 1000, r["latency_p99_us"] / 1000)


def run_on(target: Target, what: str, route: Route, conns: int, seconds: float) -> WrkResult:
    """One measured wrk run against a target; for a relay, also its CPU use and the connections it opened."""
    label, url = f"{what}-{target.name}-c{conns}", target.url_for(route)
    if target.proc is None:
        return run_wrk(label, url, route, conns, seconds, target.client_key)
    pid = target.pid
    accepts0, (user0, sys0), t0 = nginx_accepts(target.nginx), cpu_seconds(pid), time.monotonic()
    result = run_wrk(label, url, route, conns, seconds, target.client_key)
    (user1, sys1), wall = cpu_seconds(pid), time.monotonic() - t0
    result.cpu = (user1 - user0 + sys1 - sys0) / wall
    result.cpu_sys = (sys1 - sys0) / wall
    result.upstream_connects = nginx_accepts(target.nginx) - accepts0 - 1  # less the status request's own
    return result


def run_each(targets: tuple[Target, ...], what: str, route: Route, conns: int,
             seconds: float) -> tuple[WrkResult, ...]:
    return tuple(run_on(t, what, route, conns, seconds) for t in targets)


def warm_up(relays: tuple[Target, ...], route: Route, conns: int, seconds: float) -> None:
    for t in relays:
        run_wrk(f"warmup-{route.name}-{t.name}", t.url_for(route), route, conns, seconds, t.client_key)


async def post_read(session: aiohttp.ClientSession, url: str, body: bytes,
                    headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    sent = client_headers(_bench_key) if headers is None else headers
    async with session.post(url, data=body, headers=sent) as resp:
        return resp.status, await resp.read()


KEYLESS_PROBES = 1  # requests without a key that verify_billing() sends to each gateway


async def verify_billing(billing_on: tuple[Target, ...], billing_off: Target) -> None:
    """Billing is really on in the first (the gateway under test, and the base gateway) and off in the other:
    without a key, the first answer 401 and the other 200."""
    body, keyless = request_body(CHAT), {"Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        for gateway in billing_on:
            status, raw = await post_read(session, gateway.url_for(CHAT), body, keyless)
            if status != 401:
                raise BenchError(f"{gateway.title} answered {status}, not 401, to a request without a key "
                                 f"(is billing on?): {raw[:300]!r}")
        status, raw = await post_read(session, billing_off.url_for(CHAT), body, keyless)
        if status != 200:
            raise BenchError(f"{billing_off.title} answered {status}, not 200, to a request without a key "
                             f"(is billing off?): {raw[:300]!r}")
        check_answer(CHAT, raw, f"{billing_off.title}, without a key")


async def verify(nginx: str, relays: tuple[Target, ...] = ()) -> None:
    """The canned answers are what they should be, straight from nginx and through each relay (event for event
    the same as nginx's)."""
    async with aiohttp.ClientSession() as session:
        for route in ROUTES:
            status, direct = await post_read(session, nginx + route.path, request_body(route))
            if status != 200:
                raise BenchError(f"nginx answered {status} on POST {route.path}")
            check_answer(route, direct, f"nginx {route.path}")
            for relay in relays:
                for _ in range(5):  # a few, so that the idle RSS is that of a relay that has served requests
                    status, relayed = await post_read(session, relay.url_for(route), request_body(route),
                                                      client_headers(relay.client_key))
                    if status != 200:
                        raise BenchError(f"{relay.title} answered {status} for {route.model}: {relayed[:300]!r}")
                    check_answer(route, relayed, f"{relay.title}, model {route.model}")
                    # the gateway names the model as the client asked for it (the stack floor passes bytes on)
                    renamed = direct.replace(b'"model":"%s"' % UPSTREAM_MODEL.encode(),
                                             b'"model":"%s"' % route.model.encode())
                    same = any(sse_data(relayed) == sse_data(expected) if route.stream else relayed == expected
                               for expected in (direct, renamed))
                    if not same:
                        raise BenchError(f"{relay.title}'s answer for {route.model} differs from the upstream's")


async def verify_translated(gateway: Target) -> None:
    """The translated lane answers the canned upstream answer in Anthropic's format, usage included."""
    async with aiohttp.ClientSession() as session:
        for route in TRANSLATED:
            status, raw = await post_read(session, gateway.url_for(route), request_body(route))
            if status != 200:
                raise BenchError(f"{gateway.title} answered {status} on POST {MESSAGES_PATH}: {raw[:300]!r}")
            check_answer(route, raw, f"{gateway.title} {MESSAGES_PATH}")


async def first_byte_times(url: str, body: bytes, count: int, warmup: int) -> list[float]:
    """Milliseconds from sending each stream request to its first body byte, one request at a time;
    each stream is read to its end and must finish with [DONE]."""
    samples: list[float] = []
    headers = client_headers(_bench_key)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for i in range(warmup + count):
            t0 = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as resp:
                first = await resp.content.readany()
                t1 = time.perf_counter()
                tail = first
                while chunk := await resp.content.readany():
                    tail = tail[-64:] + chunk
                if resp.status != 200 or not tail.endswith(b"data: [DONE]\n\n"):
                    raise BenchError(f"TTFB client: status {resp.status}, stream tail {tail[-64:]!r}")
            if i >= warmup:
                samples.append((t1 - t0) * 1000)
    return samples


def percentile(samples: list[float], p: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[p - 1]


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Plan:
    seconds: float
    conns: int
    ttfb_requests: int
    settle_s: float
    counted_requests: int = COUNTED_REQUESTS  # of each kind, for the change cost in instructions


@dataclass
class Side:
    """One target's figures, from the same runs as the other targets'."""

    reqs: WrkResult  # non-stream, plan.conns connections
    lat: WrkResult  # non-stream, one connection
    streams: WrkResult
    paced: WrkResult
    ttfb: list[float]


@dataclass
class BillingOff:
    """The billing-off gateway's figures, from the runs that the billing cost compares: BILLING_ROUNDS short runs
    of the gateway under test (billing on) and of the billing-off gateway in turn, each side's runs together."""

    reqs: WrkResult  # non-stream, plan.conns connections
    streams: WrkResult
    on_reqs: WrkResult  # billing on, the runs alternating with those above
    on_streams: WrkResult
    rounds: list[tuple[float, float]]  # per round: on / off for non-stream, then for streams


@dataclass
class Translated:
    """The gateway (billing on) serving an Anthropic-format client from the OpenAI-format upstream."""

    reqs: WrkResult  # non-stream, plan.conns connections
    streams: WrkResult
    passthrough_reqs: WrkResult  # the passthrough runs just before and after, added together
    passthrough_streams: WrkResult


Alternation = tuple[WrkResult, WrkResult, list[float]]  # what alternate() returns: each side's runs, round ratios


@dataclass
class ChangeCost:
    """The gateway under test and the base commit's gateway (both billing on), from the runs that the change cost
    compares: BILLING_ROUNDS short runs of each in turn, as for the billing cost, each side's runs together."""

    base: BaseCommit
    reqs: WrkResult  # the gateway under test, non-stream, plan.conns connections
    base_reqs: WrkResult  # the base gateway, the runs alternating with those above
    streams: WrkResult
    base_streams: WrkResult
    rounds: list[tuple[float, float]]  # per round: HEAD / base for non-stream, then for streams
    instructions: tuple[Instructions, Instructions] | None = None  # HEAD's, the base's (callgrind)

    @classmethod
    def of(cls, base: BaseCommit, reqs: Alternation, streams: Alternation) -> ChangeCost:
        (head_reqs, base_reqs, reqs_rounds), (head_streams, base_streams, streams_rounds) = reqs, streams
        return cls(base, head_reqs, base_reqs, head_streams, base_streams, list(zip(reqs_rounds, streams_rounds)))


@dataclass(frozen=True)
class Instructions:
    """Instructions per request of one gateway, every thread, counted by callgrind."""

    chat: float  # a non-stream request
    stream: float  # a 50-chunk stream
    requests: int  # counted of each kind


def counted_setup(name: str, tree: Path) -> GatewaySetup:
    """A gateway that serves only the counted requests, from `tree`, with a fresh database of its own."""
    return GatewaySetup(True, OUT / f"gateway-{name}.toml", OUT / f"gateway-{name}.log", OUT / f"requests-{name}.jsonl",
                        OUT / f"{name}.db", f"gateway-{name}", f"the {name} gateway", f"{name}, billing on", tree)


def count_instructions(nginx: str, setup: GatewaySetup, requests: int) -> Instructions:
    """The gateway of `setup` alone under callgrind: warmed up, then `requests` requests of each kind one at a
    time, its counters zeroed before each kind and read after it (every thread: the database's too)."""
    remove_database(setup.database)
    write_gateway_config(nginx, setup)
    key = create_account_key(setup)
    out = OUT / f"callgrind-{setup.name}.out"
    with ExitStack() as stack, open(setup.log, "wb") as log:
        proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", venv_python(),
                                 "gateway.py", "--config", str(setup.config), "--port", "0"], cwd=setup.tree,
                                stdout=log, stderr=log)
        stack.callback(stop_process, proc, signal.SIGTERM, 120)
        wait_until(lambda: port_from_log(setup.log, "tokentoll") is not None, proc, setup.title, 600)
        url = f"http://127.0.0.1:{port_from_log(setup.log, 'tokentoll')}{GATEWAY_PATH}"
        headers = client_headers(key)

        def send(route: Route, times: int) -> None:
            body = request_body(route)
            for _ in range(times):
                with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=300) as resp:
                    resp.read()

        per_request = []
        for route in (CHAT, STREAM):
            send(route, COUNTED_WARMUP)
            callgrind_control("--zero", proc.pid)
            send(route, requests)
            per_request.append(callgrind_control("-e", proc.pid) / requests)
    return Instructions(per_request[0], per_request[1], requests)


def callgrind_control(action: str, pid: int) -> int:
    """Zero a callgrind run's counters (returns 0), or read the instructions counted since (every thread's)."""
    proc = subprocess.run(["callgrind_control", action, str(pid)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise BenchError(f"callgrind_control {action} {pid} failed: {proc.stdout}{proc.stderr}")
    return sum(int(n.replace(",", "")) for n in re.findall(r"^\s*Th \d+\s+([\d,]+)", proc.stdout, re.M))


def instruction_cost(nginx: str, base: BaseCommit, requests: int) -> tuple[Instructions, Instructions]:
    """Instructions per request of the gateway under test and of the base commit's, each alone under callgrind."""
    step(f"change cost in instructions: the gateway under test, then {base.short}'s, alone under callgrind, "
         f"{COUNTED_WARMUP} + {requests} requests of each kind, one at a time")
    return (count_instructions(nginx, counted_setup("counted", ROOT), requests),
            count_instructions(nginx, counted_setup("counted-base", BASE_TREE), requests))


@dataclass
class Figures:
    conns: int
    direct: Side
    floor: Side
    gateway: Side  # billing on
    billing_off: BillingOff
    rss_cold_kib: int
    rss_idle_kib: int
    rss_peak_kib: int
    rss_after_kib: int
    floor_rss_cold_kib: int
    floor_rss_idle_kib: int
    settle_s: float
    notes: list[str]
    translated: Translated
    change: ChangeCost | None  # None: no base commit to compare with (--base none)


def step(text: str) -> None:
    print(f"bench: {text}", flush=True)


def measure(plan: Plan, nginx: str, stack: ExitStack, base: BaseCommit | None) -> Figures:
    for route in (*ROUTES, *TRANSLATED):
        route.request_file.write_bytes(request_body(route))
    asyncio.run(verify(nginx))
    setups = (BILLING_ON, BILLING_OFF, *((TWIN, base.setup) if base else ()))
    for setup in setups:
        remove_database(setup.database)
        write_gateway_config(nginx, setup)
    step(f"creating a fresh {BILLING_DB.relative_to(ROOT)} with an account and a key (operator CLI)")
    create_wallet()
    base_key = twin_key = None
    if base:
        step(f"creating a fresh {BASE_DB.relative_to(ROOT)} with an account and a key ({base.short}'s operator CLI), "
             f"and {TWIN_DB.relative_to(ROOT)} for the twin")
        base_key, twin_key = create_account_key(base.setup), create_account_key(TWIN)
    gw = start_gateway(stack, nginx, BILLING_ON)
    rss_cold = rss_kib(gw.pid)
    floor = start_floor(stack, nginx)
    floor_rss_cold = rss_kib(floor.pid)
    off = start_gateway(stack, nginx, BILLING_OFF)
    base_gw = start_gateway(stack, nginx, base.setup, base_key) if base else None
    twin = start_gateway(stack, nginx, TWIN, twin_key) if base else None
    base_gws = (twin, base_gw) if twin and base_gw else ()
    asyncio.run(verify(nginx, (floor, gw, off, *base_gws)))
    asyncio.run(verify_billing((gw, *base_gws), off))
    asyncio.run(verify_translated(gw))
    time.sleep(2)
    rss_idle, floor_rss_idle = rss_kib(gw.pid), rss_kib(floor.pid)
    sampler = RssSampler(gw.pid)
    sampler.start()
    try:
        (direct, floor_side, gateway), billing_off, translated, change_runs = load(
            plan, (Target("direct", "nginx", nginx, nginx), floor, gw), off, (twin, base_gw) if twin and base_gw
            else None)
    finally:
        rss_peak = sampler.stop()
    step(f"letting the gateway settle for {plan.settle_s:g} s")
    time.sleep(plan.settle_s)
    for relay in (gw, floor, off, *base_gws):
        check_relay(relay)
    rss_after = rss_kib(gw.pid)
    check_nginx_log()
    step("checking the wallet: open holds with the gateway idle; stopping the gateway; then the books")
    idle_holds = operator_cli(GATEWAY_CONFIG, "holds")
    stop_relay(gw)
    c = plan.conns
    # wrk cuts off up to c requests when each run ends: at c connections, 13 runs (4 of them warm-ups, the translated
    # lane's 8 included), 2 x BILLING_ROUNDS for the billing cost, and one at 1 for the gateway under test; 2 warm-ups
    # and 2 x BILLING_ROUNDS for the billing-off one, the twin and the base one
    billed = check_request_log(BILLING_ON, allowed_cut=(13 + 2 * BILLING_ROUNDS) * c + 1)
    unbilled = check_request_log(BILLING_OFF, allowed_cut=(2 + 2 * BILLING_ROUNDS) * c)
    base_billed = [check_request_log(setup, allowed_cut=(2 + 2 * BILLING_ROUNDS) * c)
                   for setup in ((TWIN, base.setup) if base else ())]
    notes = [billed.note, unbilled.note, *(b.note for b in base_billed),
             check_wallet(billed, idle_holds, plan.settle_s),
             f"billing: the gateway column is the gateway with billing on (a fresh SQLite database, synchronous "
             f"NORMAL, hold_ttl {HOLD_TTL} s, no rate limits; one account, one key sent by every client); "
             "\"billing off\" rows are a second gateway process with the same config but `[billing] enabled = "
             f"false`; the billing cost compares {BILLING_ROUNDS} rounds of short runs of the two in turn (billing "
             "on then off, off then on, and so on), each side's runs together; per round, on / off: "
             + ", ".join(f"{a:.3f}" for a, _ in billing_off.rounds) + " (non-stream), "
             + ", ".join(f"{b:.3f}" for _, b in billing_off.rounds) + " (streams)",
             connection_note(c, {"gateway": gateway, "stack floor": floor_side}, billing_off),
             f"a paced stream takes {1000 * c / direct.paced.per_second:.0f} ms straight from nginx (timer "
             "granularity), so the direct paced figure is bounded by the pacing, not by nginx"]
    notes.append(f"translated lane: the gateway with billing on, an Anthropic-format client (POST {MESSAGES_PATH}, "
                 "Bearer key) of the same model and upstream answers, translated both ways; each translated run "
                 "sits between two passthrough runs of the same kind on the same gateway, and is compared with "
                 "their mean (so that a machine that speeds up or slows down during the run does not bias it)")
    change = ChangeCost.of(base, *change_runs) if base and change_runs else None
    if change:
        counted = instruction_cost(nginx, change.base, plan.counted_requests)
        change = replace(change, instructions=counted)
        notes.append(change_note(change))
    return Figures(c, direct, floor_side, gateway, billing_off, rss_cold, rss_idle, rss_peak, rss_after,
                   floor_rss_cold, floor_rss_idle, plan.settle_s, notes, translated, change)


def head_commit() -> str:
    return tool_version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])


def change_note(change: ChangeCost) -> str:
    base = change.base
    return (f"change cost: the gateway under test at {head_commit()} (plus any uncommitted changes) against the "
            f"gateway at the base commit {base.short} (--base {base.ref}; its tree from `git archive` in "
            f"{BASE_TREE.relative_to(ROOT)}, on the same virtualenv), both billing on, each with its own fresh "
            f"database, account and key and the same config otherwise; the HEAD side is a twin of the gateway under "
            "test, a process that serves only what the base one serves (the same warm-ups and rounds), since a "
            f"billing database slows as it grows; {BILLING_ROUNDS} rounds of short runs of the two in turn (HEAD then "
            "base, base then HEAD, and so on), each side's runs together; per round, HEAD / base: "
            + ", ".join(f"{a:.3f}" for a, _ in change.rounds) + " (non-stream), "
            + ", ".join(f"{b:.3f}" for _, b in change.rounds) + " (streams); CPU per request HEAD / base: "
            f"{cpu_ms(change.reqs)} / {cpu_ms(change.base_reqs)} ms (non-stream), "
            f"{cpu_ms(change.streams)} / {cpu_ms(change.base_streams)} ms (streams)"
            + (f"; instructions: each gateway alone under callgrind with a fresh database, {COUNTED_WARMUP} requests "
               f"of each kind to warm up, then {change.instructions[0].requests} counted one at a time (every "
               "thread)" if change.instructions else ""))


# the billing cost: this many rounds of (billing on, billing off), each run 2/5 of a plan's seconds; and as many of
# (HEAD, base) for the change cost
BILLING_ROUNDS = 6  # even: half the rounds in each order


def joined_all(runs: list[WrkResult]) -> WrkResult:
    """Runs of the same kind as one: their requests over their time, mean latency and CPU."""
    n = len(runs)
    return WrkResult(sum(r.requests for r in runs), sum(r.seconds for r in runs), sum(r.p50_ms for r in runs) / n,
                     max(r.p99_ms for r in runs), sum(r.cpu for r in runs) / n, sum(r.cpu_sys for r in runs) / n,
                     sum(r.upstream_connects for r in runs))


def alternate(first: Target, second: Target, what: str, cost: str, route: Route, conns: int,
              seconds: float) -> Alternation:
    """The gateway under test and another (billing off, or the base commit's) in turn, BILLING_ROUNDS short runs
    each: a machine that speeds up or slows down during the comparison (this one swings by a fifth from one 10 s
    run to the next) moves both sides alike. The rounds go first-second, then second-first (ABBA), so that a drift
    within a round favours neither side. `cost` names the comparison in wrk's output files. Returns each side's
    runs together, and each round's first / second."""
    first_runs, second_runs = [], []
    for i in range(BILLING_ROUNDS):
        label = f"{what}-{cost}-round{i}"
        if i % 2:
            second_runs.append(run_on(second, label, route, conns, seconds))
            first_runs.append(run_on(first, label, route, conns, seconds))
        else:
            first_runs.append(run_on(first, label, route, conns, seconds))
            second_runs.append(run_on(second, label, route, conns, seconds))
    return (joined_all(first_runs), joined_all(second_runs),
            [a.per_second / b.per_second for a, b in zip(first_runs, second_runs)])


def change_cost_runs(pair: tuple[Target, Target] | None, what: str, route: Route, conns: int,
                     seconds: float) -> Alternation | None:
    """The change cost's rounds of one kind: the gateway under test's twin, then the base gateway (None: no base)."""
    if pair is None:
        return None
    twin, base = pair
    kind = "streams" if route.stream else "non-stream"
    step(f"change cost, {kind}: {BILLING_ROUNDS} rounds of {twin.title}, then {base.title}, {seconds:g} s each")
    return alternate(twin, base, what, "change", route, conns, seconds)


def load(plan: Plan, targets: tuple[Target, ...], off: Target, change: tuple[Target, Target] | None
         ) -> tuple[list[Side], BillingOff, Translated, tuple[Alternation, Alternation] | None]:
    """The same runs against every target, one measurement at a time, the targets in turn; the billing-off
    gateway joins the non-stream and stream throughput runs, right after the gateway under test, and so do the
    twin and the base gateway (`change`, if any), which serve nothing else."""
    s, c, warmup = plan.seconds, plan.conns, min(2.0, plan.seconds)
    relays = tuple(t for t in targets if t.proc is not None)
    others = (off, *(change or ()))
    joining = "the billing-off gateway" + (f", the twin and {change[1].title}" if change else "")
    step(f"non-stream throughput, {c} connections, {s:g} s each target (and {joining})")
    warm_up((*relays, *others), CHAT, c, warmup)
    reqs = run_each(targets, "chat", CHAT, c, s)
    round_s = max(1, round(s * 2 / BILLING_ROUNDS))  # whole seconds: wrk reads -d1.2s as a usage error
    step(f"billing cost, non-stream: {BILLING_ROUNDS} rounds of billing on, billing off, {round_s:g} s each")
    on_reqs, off_reqs, reqs_rounds = alternate(targets[-1], off, "chat", "billing", CHAT, c, round_s)
    change_reqs = change_cost_runs(change, "chat", CHAT, c, round_s)
    step("non-stream latency, 1 connection")
    lat = run_each(targets, "chat", CHAT, 1, s)
    step(f"{CHUNKS}-chunk stream throughput, {c} connections (and {joining})")
    warm_up((*relays, *others), STREAM, c, warmup)
    streams = run_each(targets, "stream", STREAM, c, s)
    step(f"billing cost, streams: {BILLING_ROUNDS} rounds of billing on, billing off, {round_s:g} s each")
    on_streams, off_streams, streams_rounds = alternate(targets[-1], off, "stream", "billing", STREAM, c, round_s)
    change_streams = change_cost_runs(change, "stream", STREAM, c, round_s)
    step(f"translated lane: an Anthropic-format client, non-stream and {CHUNKS}-chunk streams, {c} connections, "
         "each between two passthrough runs of the same kind")
    gateway = relays[-1]
    lanes = []
    for passthrough, translated in ((CHAT, CLAUDE_CHAT), (STREAM, CLAUDE_STREAM)):
        warm_up((gateway,), translated, c, warmup)
        before = run_on(gateway, f"{passthrough.name}-before-translated", passthrough, c, s)
        lanes.append(run_on(gateway, f"claude-{translated.name}", translated, c, s))
        after = run_on(gateway, f"{passthrough.name}-after-translated", passthrough, c, s)
        lanes.append(joined_all([before, after]))
    claude_reqs, around_reqs, claude_streams, around_streams = lanes
    step(f"{CHUNKS}-chunk streams paced {PACE_MS} ms per event, {c} connections")
    paced = run_each(targets, "paced", PACED, c, s)
    step(f"stream time to first byte, 1 connection, {plan.ttfb_requests} streams each target")
    body = request_body(FIRST)
    ttfb = [asyncio.run(first_byte_times(t.url_for(FIRST), body, plan.ttfb_requests, 50)) for t in targets]
    sides = [Side(*runs) for runs in zip(reqs, lat, streams, paced, ttfb)]
    billing_off = BillingOff(off_reqs, off_streams, on_reqs, on_streams, list(zip(reqs_rounds, streams_rounds)))
    change = (change_reqs, change_streams) if change_reqs and change_streams else None
    return (sides, billing_off,
            Translated(claude_reqs, claude_streams, around_reqs, around_streams), change)


# A relay's log must show no error; the only warning allowed is the billing-off gateway's own notice.
LOG_PROBLEM = re.compile(r"Traceback|\[(ERROR|CRITICAL|WARNING)\]| (ERROR|CRITICAL|WARNING) ")
ALLOWED_WARNINGS = {"gateway-nobill": ("billing is disabled",)}


def check_relay(relay: Target) -> None:
    """The relay is still running and logged no errors."""
    assert relay.proc is not None
    if relay.proc.poll() is not None:
        raise BenchError(f"{relay.title} exited with status {relay.proc.returncode}; see {relay.log}")
    check_relay_log(relay)


def check_relay_log(relay: Target) -> None:
    assert relay.log is not None
    text = relay.log.read_text(errors="replace")
    allowed = ALLOWED_WARNINGS.get(relay.name, ())
    bad = [ln for ln in text.splitlines() if LOG_PROBLEM.search(ln) and not any(a in ln for a in allowed)]
    if bad:
        raise BenchError(f"{relay.title} logged errors; see {relay.log}:\n{text[-3000:]}")


def stop_relay(relay: Target) -> None:
    """SIGTERM, as an operator stops it: it must exit cleanly (status 0) and log nothing wrong on the way out."""
    assert relay.proc is not None
    stop_process(relay.proc, signal.SIGTERM, 15)
    if relay.proc.returncode != 0:
        raise BenchError(f"{relay.title} exited with status {relay.proc.returncode} on SIGTERM; see {relay.log}:\n"
                         f"{log_tail(relay.log or Path())}")
    check_relay_log(relay)


@dataclass
class RequestLogSummary:
    note: str
    charged_requests: int = 0  # entries with a cost, settled holds: one usage row each
    charged_nanousd: int = 0
    uncharged_cut: dict[str, dict[str, Any]] = field(default_factory=dict)  # cut off, no cost: by request id


def check_request_log(setup: GatewaySetup, allowed_cut: int) -> RequestLogSummary:
    """Every request the gateway logged must have succeeded with upstream usage, and, with billing on, have cost
    exactly the canned exchange's price; with billing off, nothing. Only those wrk cut off when a run ended may
    differ, and the keyless probes of verify_billing (401, billing on)."""
    statuses: Counter[int] = Counter()
    cut, failed, keyless = 0, [], 0
    charged, total = 0, 0
    uncharged_cut: dict[str, dict[str, Any]] = {}
    expected = expected_cost_nanousd()
    for line in setup.request_log.read_bytes().splitlines():
        entry = json.loads(line)
        if "model" not in entry:  # a non-relay request (readiness probes): logged, never billed
            continue
        statuses[entry["status"]] += 1
        cost = entry.get("cost_nanousd", "absent")
        if cost == "absent":
            failed.append(entry)
            continue
        if cost is not None:
            charged += 1
            total += cost
            if not setup.billing:
                failed.append(entry)  # billing off charges nothing
                continue
        if entry["client_disconnected"] or entry["status"] == 499:
            cut += 1
            if cost is None:
                uncharged_cut[entry["request_id"]] = entry
        elif setup.billing and entry["status"] == 401 and cost is None:
            keyless += 1
        elif entry["status"] != 200 or entry["error"] or entry["upstream_error"] or entry["usage_source"] != "upstream":
            failed.append(entry)
        elif setup.billing and cost != expected:
            failed.append(entry)
    want_keyless = KEYLESS_PROBES if setup.billing else 0
    which = setup.log_label
    if failed or cut > allowed_cut or keyless != want_keyless:
        sample = "\n".join(json.dumps(e) for e in failed[:5])
        raise BenchError(f"the request log ({which}, {setup.request_log.name}) has {len(failed)} failed or "
                         f"mischarged requests (a 200 should cost {expected} nano-USD with billing on, nothing "
                         f"with billing off), {cut} cut off (at most {allowed_cut} expected) and {keyless} "
                         f"keyless 401s ({want_keyless} expected):\n{sample}")
    shown = ", ".join(f"{n} x {s}" for s, n in sorted(statuses.items()))
    money = (f", each 200 charged {expected:,} nano-USD, {total / 1e9:.6f} USD in all ({keyless} x 401: the "
             "keyless probe)" if setup.billing else ", none charged")
    note = (f"request log, {which}: {sum(statuses.values())} requests ({shown}), all with upstream usage{money}; "
            f"{cut} cut off by wrk at the end of a run")
    return RequestLogSummary(note, charged, total, uncharged_cut)


def check_wallet(billed: RequestLogSummary, idle_holds: list[dict[str, Any]], idle_s: float) -> str:
    """No open hold with the gateway idle (`idle_holds`) nor once it stopped; then nothing held, and the money that
    left the wallet is the sum of the request log's costs and of the usage rows, one usage row per charged
    request."""
    holds = operator_cli(GATEWAY_CONFIG, "holds")
    if idle_holds or holds:
        cut = [billed.uncharged_cut[h["request_id"]] for h in holds if h["request_id"] in billed.uncharged_cut]
        models = Counter(h["model"] for h in holds)
        raise BenchError(
            f"open holds left in {BILLING_DB.name}: {len(idle_holds)} with the gateway idle for {idle_s:g} s, "
            f"{len(holds)} after it stopped on SIGTERM ({', '.join(f'{n} x {m}' for m, n in models.items())}); "
            f"{len(cut)} of them belong to requests that the request log shows cut off by the client (499) with no "
            "cost: a hold placed but neither settled nor released, left to the safety net (hold_ttl). "
            "The first holds, then the first such log entries:\n"
            + "\n".join(json.dumps(h) for h in holds[:3]) + "\n" + "\n".join(json.dumps(e) for e in cut[:3]))
    wallet = operator_cli(GATEWAY_CONFIG, "wallet", "show", BENCH_ACCOUNT)
    spent = BENCH_CREDIT_USD * 10**9 - wallet["balance"]
    usage_rows = operator_cli(GATEWAY_CONFIG, "usage", "--account", BENCH_ACCOUNT)
    usage_cost = sum(r["cost"] or 0 for r in usage_rows)
    usage_requests = sum(r["requests"] for r in usage_rows)
    if (wallet["held"], spent, usage_cost, usage_requests) != (0, billed.charged_nanousd, billed.charged_nanousd,
                                                                billed.charged_requests):
        raise BenchError(f"the wallet does not add up: held {wallet['held']} (0 expected), spent {spent}, usage rows "
                         f"{usage_requests} costing {usage_cost}; the request log has {billed.charged_requests} "
                         f"charged requests costing {billed.charged_nanousd} (nano-USD)")
    return (f"wallet after the gateway stopped: no open hold, nothing held; {billed.charged_requests} usage rows, "
            f"and the balance fell by {spent / 1e9:.6f} USD, both as in the request log")


def check_nginx_log() -> None:
    text = (NGINX_PREFIX / "error.log").read_text(errors="replace")
    bad = [ln for ln in text.splitlines() if re.search(r"\[(error|crit|alert|emerg)\]", ln)]
    if bad:
        raise BenchError("nginx logged errors (a wrong upstream path from a relay?):\n" + "\n".join(bad[:10]))


def connection_note(conns: int, relays: dict[str, Side], off: BillingOff) -> str:
    counts = "; ".join(f"{name} {', '.join(str(r.upstream_connects) for r in (s.reqs, s.lat, s.streams, s.paced))}"
                       for name, s in relays.items())
    return (f"new upstream connections opened during the measured runs (non-stream c={conns}, c=1, "
            f"streams, paced streams): {counts}; gateway with billing off {off.reqs.upstream_connects}, -, "
            f"{off.streams.upstream_connects}, -")


# -- the table ---------------------------------------------------------------------------------


@dataclass
class Row:
    metric: str
    direct: str = ""
    floor: str = ""
    gateway: str = ""
    vs_direct: str = ""
    vs_floor: str = ""
    target: str = ""
    result: str = ""


Three = tuple[float, float, float]  # direct, stack floor, gateway


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def ratio(gateway: float, base: float) -> str:
    if not base:
        return "-"
    r = gateway / base
    return f"{r:.0f}" if r >= 100 else f"{r:#.3g}"


def ms(value: float) -> str:
    return f"{value:.3f} ms"


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def cpu_ms(r: WrkResult) -> str:
    """Milliseconds of the relay's CPU per request."""
    return f"{r.cpu * 1000 / r.per_second:.2f}"


def cpu_per_request(r: WrkResult) -> str:
    kernel = r.cpu_sys / r.cpu if r.cpu else 0.0
    return f"{r.cpu * 1000 / r.per_second:.2f} ms ({r.cpu:.0%} of a core, {kernel:.0%} in the kernel)"


def across(f: Figures, get: Callable[[Side], float]) -> Three:
    return get(f.direct), get(f.floor), get(f.gateway)


def value_row(metric: str, values: Three, fmt: Callable[[float], str]) -> Row:
    direct, floor, gateway = values
    return Row(metric, fmt(direct), fmt(floor), fmt(gateway), ratio(gateway, direct), ratio(gateway, floor))


def rate_row(metric: str, rates: Three, target: float | None = None) -> Row:
    row = value_row(metric, rates, lambda v: f"{v:,.0f}")
    if target is not None:
        row.target, row.result = f">= {target:,.0f}", verdict(rates[2] >= target)
    return row


def added_row(metric: str, *pairs: Three) -> Row:
    """Floor and gateway minus direct, for each (direct, floor, gateway) given, joined with " / "."""
    return Row(metric, floor=" / ".join(ms(p[1] - p[0]) for p in pairs),
               gateway=" / ".join(ms(p[2] - p[0]) for p in pairs))


def rows(f: Figures) -> list[Row]:
    lat50, lat99 = across(f, lambda s: s.lat.p50_ms), across(f, lambda s: s.lat.p99_ms)
    ttfb50, ttfb99 = across(f, lambda s: percentile(s.ttfb, 50)), across(f, lambda s: percentile(s.ttfb, 99))
    added_p50 = lat50[2] - lat50[0]
    growth = (f.rss_after_kib - f.rss_idle_kib) / f.rss_idle_kib
    return [
        rate_row(f"non-stream req/s, c={f.conns}", across(f, lambda s: s.reqs.per_second), TARGET_REQS_PER_S),
        value_row("non-stream latency p50, c=1", lat50, ms),
        value_row("non-stream latency p99, c=1", lat99, ms),
        Row("added latency p50, c=1", floor=ms(lat50[1] - lat50[0]), gateway=ms(added_p50),
            target=f"<= {TARGET_ADDED_P50_MS:g} ms", result=verdict(added_p50 <= TARGET_ADDED_P50_MS)),
        Row("added latency p50 vs floor, c=1", gateway=ms(lat50[2] - lat50[1])),
        added_row("added latency p99, c=1", lat99),
        rate_row(f"streams/s ({CHUNKS} chunks), c={f.conns}", across(f, lambda s: s.streams.per_second),
                 TARGET_STREAMS_PER_S),
        rate_row(f"streams/s, paced {PACE_MS} ms per event, c={f.conns}", across(f, lambda s: s.paced.per_second)),
        value_row("stream TTFB p50, c=1", ttfb50, ms),
        value_row("stream TTFB p99, c=1", ttfb99, ms),
        added_row("added TTFB p50 / p99, c=1", ttfb50, ttfb99),
        Row("RSS at start / idle (warm)", floor=f"{mib(f.floor_rss_cold_kib)} / {mib(f.floor_rss_idle_kib)}",
            gateway=f"{mib(f.rss_cold_kib)} / {mib(f.rss_idle_kib)}"),
        Row("gateway RSS peak under load",
            gateway=f"{mib(f.rss_peak_kib)} ({f.rss_peak_kib / f.rss_idle_kib - 1:+.1%})"),
        Row(f"gateway RSS after load (+{f.settle_s:g} s)", gateway=f"{mib(f.rss_after_kib)} ({growth:+.1%})",
            target=f"<= +{TARGET_RSS_GROWTH:.0%} vs idle", result=verdict(growth <= TARGET_RSS_GROWTH)),
        cpu_row(f"CPU per non-stream request, c={f.conns}", f.floor.reqs, f.gateway.reqs),
        cpu_row(f"CPU per stream, c={f.conns}", f.floor.streams, f.gateway.streams),
        cpu_row(f"CPU per paced stream, c={f.conns}", f.floor.paced, f.gateway.paced),
        *billing_rows(f),
        *change_rows(f),
        *translated_rows(f),
    ]


def translated_rows(f: Figures) -> list[Row]:
    """The translated lane beside the passthrough lane, and what translation costs: translated / passthrough."""
    c, out = f.conns, []
    t = f.translated
    for metric, translated, passthrough in ((f"non-stream req/s, c={c}", t.reqs, t.passthrough_reqs),
                                            (f"streams/s ({CHUNKS} chunks), c={c}", t.streams, t.passthrough_streams)):
        share = translated.per_second / passthrough.per_second
        out.append(Row(f"{metric}, Anthropic client (translated)", gateway=f"{translated.per_second:,.0f}"))
        out.append(Row(f"translation cost: {metric.split(',')[0]} translated / passthrough, c={c}",
                       gateway=f"{translated.per_second:,.0f} / {passthrough.per_second:,.0f} = {share:.3f}",
                       target=f">= {TARGET_TRANSLATION_RATIO:g}", result=verdict(share >= TARGET_TRANSLATION_RATIO)))
    out.append(Row(f"CPU per non-stream request, c={c}, translated", gateway=cpu_per_request(f.translated.reqs)))
    out.append(Row(f"CPU per stream, c={c}, translated", gateway=cpu_per_request(f.translated.streams)))
    return out


def billing_rows(f: Figures) -> list[Row]:
    """The gateway with billing off, from the same runs, and what billing costs: billing on / off."""
    off, c = f.billing_off, f.conns
    pairs = ((f"non-stream req/s, c={c}", off.on_reqs, off.reqs),
             (f"streams/s ({CHUNKS} chunks), c={c}", off.on_streams, off.streams))
    out = [Row(f"{metric}, billing off", gateway=f"{off_run.per_second:,.0f}",
               vs_direct=ratio(off_run.per_second, direct.per_second),
               vs_floor=ratio(off_run.per_second, floor.per_second))
           for (metric, _, off_run), direct, floor in zip(pairs, (f.direct.reqs, f.direct.streams),
                                                          (f.floor.reqs, f.floor.streams))]
    for metric, on_run, off_run in pairs:
        cost = on_run.per_second / off_run.per_second
        out.append(Row(f"billing cost: {metric.split(',')[0]} on / off, c={c}",
                       gateway=f"{on_run.per_second:,.0f} / {off_run.per_second:,.0f} = {cost:.3f}",
                       target=f">= {TARGET_BILLING_RATIO:g}", result=verdict(cost >= TARGET_BILLING_RATIO)))
    out.append(Row(f"CPU per non-stream request, c={c}, billing off", gateway=cpu_per_request(off.reqs)))
    out.append(Row(f"CPU per stream, c={c}, billing off", gateway=cpu_per_request(off.streams)))
    return out


def change_rows(f: Figures) -> list[Row]:
    """What the change since the base commit costs: the gateway under test / the base commit's gateway, both
    billing on, from the same alternating runs (none without a base)."""
    change, c = f.change, f.conns
    if change is None:
        return []
    out = []
    for kind, head_run, base_run in (("non-stream req/s", change.reqs, change.base_reqs),
                                     (f"streams/s ({CHUNKS} chunks)", change.streams, change.base_streams)):
        share = head_run.per_second / base_run.per_second
        out.append(Row(f"change cost vs {change.base.short}: {kind} HEAD / base, c={c}",
                       gateway=f"{head_run.per_second:,.0f} / {base_run.per_second:,.0f} = {share:.3f}",
                       target=f">= {TARGET_CHANGE_RATIO:g}", result=verdict(share >= TARGET_CHANGE_RATIO)))
    if change.instructions:
        head, base = change.instructions
        for kind, mine, theirs in (("non-stream request", head.chat, base.chat),
                                   (f"stream ({CHUNKS} chunks)", head.stream, base.stream)):
            share = mine / theirs
            out.append(Row(f"change cost vs {change.base.short}: instructions per {kind} HEAD / base (callgrind)",
                           gateway=f"{mine / 1e6:.3f}M / {theirs / 1e6:.3f}M = {share:.3f}",
                           target=f"<= {TARGET_INSTRUCTION_RATIO:g}",
                           result=verdict(share <= TARGET_INSTRUCTION_RATIO)))
    return out


def cpu_row(metric: str, floor: WrkResult, gateway: WrkResult) -> Row:
    return Row(metric, floor=cpu_per_request(floor), gateway=cpu_per_request(gateway))


def markdown_table(table: list[Row]) -> str:
    header = Row("metric", "direct (nginx)", "stack floor", "gateway", "gateway/direct", "gateway/floor", "target",
                 "result")
    cells = [astuple(r) for r in [header, *table]]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    lines = ["| " + " | ".join(c[i].ljust(w) for i, w in enumerate(widths)) + " |" for c in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


# -- RESULTS.md --------------------------------------------------------------------------------


RESULTS_HEADER = f"""# Benchmark results

Each section is one run of `make bench` (bench/run.py), appended by the script itself: the same requests
sent straight to a mock upstream (nginx serving canned OpenAI answers) and through one gateway process,
on one machine, with wrk and nginx sharing its cores. "Added" figures are gateway minus direct.
"streams/s" streams come from a static file, so the gateway reads all {CHUNKS} events at once; "paced"
streams are written event by event with a {PACE_MS} ms sleep between, as a provider streams, so the gateway
reads and relays each event on its own (the direct paced figure is bounded by that pacing).
Time to first byte (TTFB) is measured on streams whose first event comes alone, {PACE_MS} ms before the rest.
Runs with a "stack floor" column also sent the same load through bench/stack_floor.py, a featureless relay on
the gateway's own stack (hypercorn on uvloop, one worker, aiohttp keep-alive upstream, no parsing): the floor
that stack allows, to show how much of the gateway's cost is the stack's own. In its column "added" figures are
floor minus direct; "vs floor" is gateway minus floor.
Since billing exists, the gateway column is the gateway with billing on (an API key on every request, a hold in
its SQLite database before forwarding, settled after); "billing off" rows are the same gateway with
`[billing] enabled = false`, in the same runs, and "billing cost" is billing on / billing off.
"Change cost" rows compare the gateway with the same gateway at a base commit (billing on in both, alternating
runs as for the billing cost): HEAD / base.
Targets: added p50 latency <= 1 ms at concurrency 1, >= 1200 non-stream requests/s, >= 250 streams/s,
RSS after load within 10% of idle, billing costing at most 15% of throughput (on / off >= 0.85), the change
since the base commit at most 5% (HEAD / base >= 0.95).
Compare runs only on like machines.
"""


def command_line(argv: list[str]) -> str:
    if os.environ.get("MAKELEVEL"):
        return "make bench" + (f" BENCH_ARGS='{' '.join(argv)}'" if argv else "")
    return " ".join(["python bench/run.py", *argv])


def tool_version(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (proc.stdout + proc.stderr).strip().splitlines()
    return text[0] if text else "?"


def machine_facts() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.machine())
    commit = head_commit()
    nginx = tool_version([find_binary("nginx") or "nginx", "-v"]).removeprefix("nginx version: ")
    wrk = tool_version(["wrk", "-v"]).split(" [")[0]
    return (f"nproc {len(os.sched_getaffinity(0))} ({cpu}), Linux {platform.release()}, "
            f"Python {platform.python_version()}, {nginx}, {wrk}; gateway at commit {commit} "
            "(plus any uncommitted changes)")


def record(table: str, plan: Plan, quick: bool, argv: list[str], notes: list[str]) -> None:
    if not RESULTS.exists():
        RESULTS.write_text(RESULTS_HEADER)
    today = subprocess.run(["date", "-u", "+%F"], capture_output=True, text=True).stdout.strip()
    lines = [
        "",
        f"## {today}{' (quick smoke run)' if quick else ''}",
        "",
        f"- command: `{command_line(argv)}`",
        f"- machine: {machine_facts()}",
        f"- load: wrk {plan.seconds:g} s per run (-t2 -c{plan.conns} for throughput, -t1 -c1 for latency); "
        f"{plan.ttfb_requests} sequential streams per side for time to first byte (aiohttp client)",
        *(f"- {n}" for n in notes),
        "",
        table,
        "",
    ]
    with RESULTS.open("a") as f:
        f.write("\n".join(lines))


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__)
    p.add_argument("--quick", action="store_true", help="a short smoke run: 3 s per wrk run, fewer TTFB requests")
    p.add_argument("--duration", type=float, help="seconds per wrk run (default 10, or 3 with --quick)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections for the throughput runs")
    p.add_argument("--no-record", action="store_true", help="do not append the results to bench/RESULTS.md")
    p.add_argument("--base", default=BASE_REF, metavar="REF",
                   help=f"the commit whose gateway the change cost compares with the gateway under test (default "
                        f"{BASE_REF}, the last before issue 16's stream cut-off and overrun accounting); 'none' skips "
                        "the comparison")
    return p.parse_args(argv)


def plan_from(args: argparse.Namespace) -> Plan:
    seconds = args.duration if args.duration else 3.0 if args.quick else 10.0
    if seconds <= 0 or args.connections < 1:
        raise SystemExit("bench/run.py: --duration and --connections must be positive")
    return Plan(seconds, args.connections, 300 if args.quick else 2000, 2.0 if args.quick else 5.0,
                20 if args.quick else COUNTED_REQUESTS)


def on_sigterm(_signum: int, _frame: object) -> None:
    print("\nbench: terminated; stopping nginx, the gateways and the stack floor", file=sys.stderr, flush=True)
    raise SystemExit(143)  # unwinds through the ExitStack that stops the processes


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    plan = plan_from(args)
    signal.signal(signal.SIGTERM, on_sigterm)
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        ensure_tools()
        base = resolve_base(args.base)
        if base:
            step(f"writing the base commit {base.short}'s files to {BASE_TREE.relative_to(ROOT)} (git archive)")
            materialize_base(base)
        with ExitStack() as stack:
            step("starting nginx (mock upstream)")
            figures = measure(plan, start_nginx(stack), stack, base)
            step(f"stopping the billing-off gateway{', the base gateway' if base else ''}, the stack floor and nginx")
    except BenchError as exc:
        print(f"\nBENCH FAILED: {exc}", file=sys.stderr)
        return 1
    table = markdown_table(rows(figures))
    print(f"\n{table}\n")
    for note in figures.notes:
        print(f"note: {note}")
    if not args.no_record:
        record(table, plan, args.quick, argv, figures.notes)
        print(f"\nbench: appended to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
