"""Shared fixtures: the mock upstream (a real HTTP server) and the gateway itself, started as
`python gateway.py` under hypercorn on a free loopback port, exactly as an operator runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import settings

# No per-example deadline: a loaded CI machine may stall one example; correctness, not speed, is tested here
settings.register_profile("tokentoll", deadline=None)
settings.load_profile("tokentoll")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.mock_upstream import MockUpstream  # noqa: E402
from tests.native_upstream import NativeUpstream  # noqa: E402

UPSTREAM_KEY = "upstream-secret-key"


def cli(config: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    """Runs an operator command (`gateway.py --config ... <args> --json`) and returns its JSON."""
    run = subprocess.run([sys.executable, str(ROOT / "gateway.py"), "--config", str(config), *args, "--json"],
                         cwd=ROOT, env=env, capture_output=True, timeout=60)
    if run.returncode != 0:
        raise AssertionError(f"gateway.py {' '.join(args)} failed: {run.stderr.decode()}")
    return orjson.loads(run.stdout)


class GatewayProcess:
    """A running gateway: its port, its request log, and a way to read what it wrote."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str]) -> None:
        self.config = config
        self.env = env
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "gateway.py"), "--config", str(config), "--port", "0"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        assert self.proc.stderr is not None
        self.stderr_lines: list[str] = []
        first = self.proc.stderr.readline().decode()
        self.stderr_lines.append(first)
        if "serving http://" not in first:
            rest = self.proc.stderr.read().decode()
            raise RuntimeError(f"gateway did not start: {first}{rest}")
        self.url = first.split("serving ")[1].split()[0]
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line.decode(errors="replace"))

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def log_entries(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        return [orjson.loads(line) for line in self.log_path.read_bytes().splitlines() if line.strip()]

    def log_entry(self, request_id: str, timeout: float = 15.0) -> dict[str, Any]:
        """The request's log line, written when the request ends (just after its last byte)."""
        found = wait_for(lambda: next((e for e in self.log_entries() if e["request_id"] == request_id), None),
                         timeout, f"log line for {request_id}")
        return found

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def wallet(gw: GatewayProcess, account: str) -> dict[str, Any]:
    """An account's wallet (balance, held, available), as the operator CLI shows it."""
    return cli(gw.config, "wallet", "show", account, env=gw.env)


def newest_entry(gw: GatewayProcess, model: str, seen: int) -> dict[str, Any]:
    """The request-log line of the newest request for the model, after `seen` lines (waited for)."""
    def probe() -> dict[str, Any] | None:
        entries = [e for e in gw.log_entries()[seen:] if e.get("model") == model]
        return entries[-1] if entries else None
    return wait_for(probe, 15, f"the log line of a {model} request")


def wait_for(probe: Callable[[], Any], timeout: float, what: str) -> Any:
    """Wait until probe() returns something truthy (a condition, bounded in time)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def call(gw: GatewayProcess, path: str, key: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
    """A request to the gateway with a key in each client format's header (a POST when there is a body); the
    status and body, whatever the status."""
    data = None if body is None else orjson.dumps(body)
    req = urllib.request.Request(gw.url + path, data, {
        "Authorization": f"Bearer {key}", "x-goog-api-key": key, "anthropic-version": "2023-06-01",
        "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


class Ticking:
    """A clock that moves `step` seconds each time it is read: every event-loop iteration the store times with
    it (engine.clock) looks that long. `now` can be moved on by hand."""

    def __init__(self, step: float) -> None:
        self.step = step
        self.now = 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@contextmanager
def on_one_utc_day() -> Iterator[None]:
    """Around checks of what the gateway counts as today or this month (UTC): a failure in a block that ran
    across UTC midnight is a skip, as the day the gateway counted in is no longer the day the page shows."""
    day = datetime.now(timezone.utc).date()
    try:
        yield
    except (AssertionError, LookupError):
        if datetime.now(timezone.utc).date() != day:
            pytest.skip("ran across UTC midnight: today changed under the test")
        raise


def fresh_minute(margin: float = 5.0) -> None:
    """Rate limits count per clock minute: a test that must stay inside one minute starts early in it."""
    left = 60 - time.time() % 60
    if left < margin:
        time.sleep(left + 0.05)


def base_config(log_path: Path, hold_ttl: float = 120, **server: Any) -> str:
    """The [server] and [billing] sections every test gateway starts from: loopback on a free port, its
    request log and database beside each other, a short hold TTL and a fast safety net; `server` adds
    [server] settings (written as JSON, which TOML reads the same for strings, numbers, bools and lists)."""
    extra = "".join(f"{name} = {orjson.dumps(value).decode()}\n" for name, value in server.items())
    return f"""
[server]
host = "127.0.0.1"
port = 0
request_log = "{log_path}"
{extra}
[billing]
database = "{log_path.parent / 'tokentoll.db'}"
hold_ttl = {hold_ttl}
sweep_interval = 1
"""


DEMO_ECHO = """
[models.demo-echo]
provider = "demo"
upstream_model = "echo"
max_output_tokens = 64
price = { input = "0.50", output = "1.50", cache_read = "0.05", cache_write = "0.625" }
"""  # the demo provider's chat model, as the tests that need just one declare it


def demo_provider(chunk_delay: float = 0.0) -> str:
    return f'\n[providers.demo]\nformat = "openai"\nbuiltin = "demo"\ndemo_chunk_delay = {chunk_delay}\n'


def gateway_config(upstream_url: str, log_path: Path, extra: str = "") -> str:
    return base_config(log_path, max_body_bytes=65536) + demo_provider() + f"""
[providers.mock]
format = "openai"
base_url = "{upstream_url}"
responses_api = true  # the mock serves /v1/responses: passed through
api_key_env = "TT_TEST_UPSTREAM_KEY"
timeouts = {{ connect = 2, first_byte = 5, idle = 5, total = 60 }}

[providers.mock-short]
format = "openai"
base_url = "{upstream_url}"
responses_api = true  # the mock serves /v1/responses: passed through
api_key_env = "TT_TEST_UPSTREAM_KEY"
timeouts = {{ connect = 1, first_byte = 0.5, idle = 0.5, total = 10 }}

[providers.mock-total]
format = "openai"
base_url = "{upstream_url}"
responses_api = true  # the mock serves /v1/responses: passed through
api_key_env = "TT_TEST_UPSTREAM_KEY"
timeouts = {{ connect = 1, first_byte = 5, idle = 5, total = 0.6 }}

[providers.nowhere]
format = "openai"
base_url = "http://127.0.0.1:9/v1"
timeouts = {{ connect = 1, first_byte = 1, idle = 1, total = 5 }}

[models.demo-echo]
provider = "demo"
upstream_model = "echo"
max_output_tokens = 64
price = {{ input = "0.50", output = "1.50" }}

[models.mock-ok]
provider = "mock"
upstream_model = "ok"
price = {{ input = "1", output = "2" }}

[models."vendor/model-x"]
provider = "mock"
upstream_model = "ok"
price = {{ input = "1", output = "2" }}

[models.mock-no-usage]
provider = "mock"
upstream_model = "no-usage"
price = {{ input = "1", output = "2" }}

[models.mock-slow]
provider = "mock"
upstream_model = "slow"
price = {{ input = "1", output = "2" }}

[models.mock-slow-usage]
provider = "mock"
upstream_model = "slow-usage"
price = {{ input = "1", output = "2" }}

[models.mock-die]
provider = "mock"
upstream_model = "die"
price = {{ input = "1", output = "2" }}

[models.mock-eof]
provider = "mock"
upstream_model = "eof"
price = {{ input = "1", output = "2" }}

[models.mock-awkward]
provider = "mock"
upstream_model = "awkward"
price = {{ input = "1", output = "2" }}

[models.mock-500]
provider = "mock"
upstream_model = "status-500"
price = {{ input = "1", output = "2" }}

[models.mock-429]
provider = "mock"
upstream_model = "status-429"
price = {{ input = "1", output = "2" }}

[models.mock-400]
provider = "mock"
upstream_model = "status-400"
price = {{ input = "1", output = "2" }}

[models.mock-401]
provider = "mock"
upstream_model = "status-401"
price = {{ input = "1", output = "2" }}

[models.mock-not-json]
provider = "mock"
upstream_model = "not-json"
price = {{ input = "1", output = "2" }}

[models.mock-json-for-stream]
provider = "mock"
upstream_model = "json-for-stream"
price = {{ input = "1", output = "2" }}

[models.mock-hang]
provider = "mock-short"
upstream_model = "hang"
price = {{ input = "1", output = "2" }}

[models.mock-bulk]
provider = "mock-short"
upstream_model = "bulk"
price = {{ input = "1", output = "2" }}

[models.mock-linger]
provider = "mock-short"
upstream_model = "linger"
price = {{ input = "1", output = "2" }}

[models.mock-stall]
provider = "mock-short"
upstream_model = "stall"
price = {{ input = "1", output = "2" }}

[models.mock-endless]
provider = "mock-total"
upstream_model = "slow"
price = {{ input = "1", output = "2" }}

[models.unreachable]
provider = "nowhere"
upstream_model = "x"
price = {{ input = "1", output = "2" }}

[console]
signups_per_hour = 1000  # every test signs up from 127.0.0.1
{extra}
"""


@pytest.fixture(scope="session")
def upstream() -> Iterator[MockUpstream]:
    mock = MockUpstream().start()
    yield mock
    mock.stop()


def serve_gateway(tmp: Path, config_text: Callable[[Path], str], env_extra: dict[str, str], account: str,
                  credit: str, forbidden: tuple[str, ...]) -> Iterator[GatewayProcess]:
    """A session's gateway: its config (given the request log's path), one funded account, and after the
    tests, a stop and a check that stderr holds none of the `forbidden` words."""
    log_path = tmp / "requests.log"
    config = tmp / "config.toml"
    config.write_text(config_text(log_path))
    env = {**os.environ, **env_extra}
    env.pop("TOKENTOLL_CONFIG", None)
    cli(config, "accounts", "create", account, "--credit", credit, env=env)
    gw = GatewayProcess(config, log_path, env)
    yield gw
    gw.stop()
    errors = [line for line in gw.stderr_lines if any(word in line for word in forbidden)]
    assert not errors, "the gateway wrote errors to stderr:\n" + "".join(gw.stderr_lines)


@pytest.fixture(scope="session")
def gateway(upstream: MockUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    yield from serve_gateway(tmp_path_factory.mktemp("gateway"), partial(gateway_config, upstream.base_url),
                             {"TT_TEST_UPSTREAM_KEY": UPSTREAM_KEY}, "tester", "1000", ("Traceback", "Error"))


@pytest.fixture(scope="session")
def api_key(gateway: GatewayProcess) -> str:
    """A key of the well-funded 'tester' account."""
    return cli(gateway.config, "keys", "create", "--account", "tester", "--name", "tests", env=gateway.env)["key"]


@pytest.fixture()
def client(gateway: GatewayProcess, api_key: str) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=gateway.base_url, api_key=api_key, max_retries=0, timeout=20)


# -- a gateway in front of upstreams of all three formats (tests/native_upstream.py) ----------

FORMATS = ("openai", "anthropic", "gemini")
NATIVE_KEY = "native-upstream-key"


def matrix_config(native: str, log_path: Path) -> str:
    parts = [base_config(log_path, media_fetch_private=True)]  # the media URLs of the tests are on loopback
    version = {"openai": "v1", "anthropic": "v1", "gemini": "v1beta"}
    for fmt in FORMATS:
        serves_responses = 'responses_api = true\n' if fmt == "openai" else ''  # it serves /v1/responses
        parts.append(f'[providers.up-{fmt}]\nformat = "{fmt}"\nbase_url = "{native}/{fmt}/{version[fmt]}"\n'
                     f'api_key_env = "TT_NATIVE_KEY"\n{serves_responses}'
                     'timeouts = { connect = 5, first_byte = 20, idle = 20, total = 60 }\n')
        for name in ("scripted", "cached", "die", "stream-error", "status-429", "status-529", "status-400", "runaway",
                     "engine", "media-heavy"):
            parts.append(f'[models.{name}-{fmt}]\nprovider = "up-{fmt}"\nupstream_model = "{name}"\n'
                         f'max_output_tokens = 1000\nprice = {{ input = "1", output = "2", cache_read = "0.1", '
                         f'cache_write = "1.25" }}\n')
        # media of unknown size are held at the model's context window (max_input_tokens)
        parts.append(f'[models.media-window-{fmt}]\nprovider = "up-{fmt}"\nupstream_model = "media-heavy"\n'
                     f'max_output_tokens = 1000\nmax_input_tokens = 1048576\nprice = {{ input = "1", output = "2" }}\n')
    parts.append('[models.media-half-window-gemini]\nprovider = "up-gemini"\nupstream_model = "media-heavy"\n'
                 'max_output_tokens = 1000\nmax_input_tokens = 500000\nprice = { input = "1", output = "2" }\n')
    # priced per image and per second: not served by the text endpoints
    parts.append('[models.pixels]\nprovider = "up-openai"\nupstream_model = "scripted"\n'
                 'price = { image = { "1024x1024" = "0.04" } }\n')
    parts.append('[models.clip]\nprovider = "up-openai"\nupstream_model = "scripted"\nprice = { second = "0.1" }\n')
    # OpenAI's own reasoning models refuse max_tokens: a provider told to send max_completion_tokens
    parts.append(f'[providers.up-openai-reasoning]\nformat = "openai"\nbase_url = "{native}/openai/v1"\n'
                 'api_key_env = "TT_NATIVE_KEY"\nlimit_field = "max_completion_tokens"\nresponses_api = true\n'
                 'timeouts = { connect = 5, first_byte = 20, idle = 20, total = 60 }\n')
    parts.append('[models.scripted-reasoning]\nprovider = "up-openai-reasoning"\nupstream_model = "scripted"\n'
                 'max_output_tokens = 1000\nprice = { input = "1", output = "2" }\n')
    # a self-hosted Anthropic-format server that takes no key: still sent the API version
    parts.append(f'[providers.up-anthropic-open]\nformat = "anthropic"\nbase_url = "{native}/anthropic/v1"\n'
                 'timeouts = { connect = 5, first_byte = 20, idle = 20, total = 60 }\n')
    parts.append('[models.open-anthropic]\nprovider = "up-anthropic-open"\nupstream_model = "scripted"\n'
                 'max_output_tokens = 1000\nprice = { input = "1", output = "2" }\n')
    parts.append('[models.embed-openai]\nprovider = "up-openai"\nupstream_model = "scripted"\nmax_output_tokens = 1\n'
                 'price = { input = "1", output = "0" }\n')
    parts.append('[models.embed-gemini]\nprovider = "up-gemini"\nupstream_model = "scripted"\nmax_output_tokens = 1\n'
                 'price = { input = "1", output = "0" }\n')
    return "\n".join(parts)


@pytest.fixture(scope="session")
def native() -> Iterator[NativeUpstream]:
    server = NativeUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def native_gw(native: NativeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    yield from serve_gateway(tmp_path_factory.mktemp("matrix"), partial(matrix_config, native.base_url),
                             {"TT_NATIVE_KEY": NATIVE_KEY}, "matrix", "100", ("Traceback",))


@pytest.fixture(scope="session")
def native_key(native_gw: GatewayProcess) -> str:
    return cli(native_gw.config, "keys", "create", "--account", "matrix", env=native_gw.env)["key"]
