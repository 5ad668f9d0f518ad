"""The edge's findings of issue 17: no caller grows /metrics or the log, nothing costly before the key, keys out of
URLs, slow and idle connections closed, conflicting framing refused, /admin on its own listener."""

from __future__ import annotations

import http.client
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import orjson
import pytest

from core.admin import ADMIN_TOKEN_ENV
from core.edge import wrong_listener
from core.server import listen_socket
from tests.conftest import NATIVE_KEY, GatewayProcess, base_config, cli, serve_gateway, wait_for, wallet
from tests.native_upstream import BIG_PNG_BYTES, NativeUpstream

ADMIN_TOKEN = "tt-admin-edge-token-0123456789abcdef"
MEDIA_COUNT = 4
BODY_SECONDS = 1
IDLE_SECONDS = 1
UNKNOWN_KEY = "sk-tt-" + "Z" * 40  # well formed, in no database
NETWORK_WORDS = ("Errno", "errno", "refused", "Connect call", "getaddrinfo", "Name or service", "resolve",
                 "OSError", "ClientConnector", "127.0.0.1:9")


def edge_config(native: str, log_path: Path) -> str:
    return base_config(log_path, media_fetch_private=True, media_fetch_count=MEDIA_COUNT,
                       media_fetch_total_bytes=3 * BIG_PNG_BYTES + 1024, body_timeout=BODY_SECONDS,
                       idle_timeout=IDLE_SECONDS, admin_listen="127.0.0.1:0") + f"""
[providers.up-gemini]
format = "gemini"
base_url = "{native}/gemini/v1beta"
api_key_env = "TT_NATIVE_KEY"
timeouts = {{ connect = 5, first_byte = 20, idle = 20, total = 60 }}

[providers.up-openai]
format = "openai"
base_url = "{native}/openai/v1"
api_key_env = "TT_NATIVE_KEY"
timeouts = {{ connect = 5, first_byte = 20, idle = 20, total = 60 }}

[models.pic-gemini]
provider = "up-gemini"
upstream_model = "scripted"
max_output_tokens = 100
price = {{ input = "1", output = "2" }}

[models.chat-openai]
provider = "up-openai"
upstream_model = "scripted"
max_output_tokens = 100
price = {{ input = "1", output = "2" }}
"""


@pytest.fixture(scope="module")
def edge_gw(native: NativeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    yield from serve_gateway(tmp_path_factory.mktemp("edge"), partial(edge_config, native.base_url),
                             {"TT_NATIVE_KEY": NATIVE_KEY, ADMIN_TOKEN_ENV: ADMIN_TOKEN}, "edge", "100",
                             ("Traceback",))


@pytest.fixture(scope="module")
def edge_key(edge_gw: GatewayProcess) -> str:
    return cli(edge_gw.config, "keys", "create", "--account", "edge", env=edge_gw.env)["key"]


def request(url: str, method: str = "GET", body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, body, headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def chat_with_images(urls: list[str]) -> bytes:
    return orjson.dumps({"model": "pic-gemini", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in these pictures?"},
        *({"type": "image_url", "image_url": {"url": url}} for url in urls)]}]})


def raw_exchange(gw: GatewayProcess, data: bytes, timeout: float = 15) -> tuple[bytes, bool]:
    """Send `data` on a fresh connection and read until the gateway closes it: what it answered, and
    whether it closed (False: still open when `timeout` passed)."""
    host, port = gw.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        if data:
            sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            return received, False
        return received, True


def series(metrics: bytes) -> set[str]:
    """The names and labels of every series in a /metrics body, without their values."""
    return {line.rpartition(" ")[0] for line in metrics.decode().splitlines() if line and not line.startswith("#")}


# -- 1. metric labels and log lines are bounded by the configuration --------------------------------------------

def test_ten_thousand_bogus_paths_methods_and_models_add_no_series(edge_gw: GatewayProcess, edge_key: str) -> None:
    host, port = edge_gw.url.removeprefix("http://").split(":")
    keyed = {"Authorization": f"Bearer {edge_key}", "x-goog-api-key": edge_key, "Content-Type": "application/json"}
    pad = "x" * 1000  # long names: a log line must not grow with them either

    def kinds(i: int) -> tuple[str, str, bytes, dict[str, str]]:  
        n = f"{i}{pad if i % 10 == 0 else ''}"
        return [
            ("POST", f"/bogus/{n}", b"", {}),
            ("POST", f"/v1beta/models/pic-gemini:method{n}", b"", {}),
            ("POST", f"/v1beta/models/pic-gemini:method{n}", b"", keyed),
            ("POST", "/v1/chat/completions", orjson.dumps({"model": f"nope-{n}", "messages": []}), keyed),
            ("POST", f"/v1beta/models/nope-{n}:generateContent", b"{}", keyed),
            ("POST", f"/v1beta/models/nope-{n}:generateContent", b"{}", {}),
            ("GET", f"/v1/models/nope-{n}", b"", {}),
            (f"X{i}", "/v1/chat/completions", b"", {}),
        ][i % 8]

    def send_all(indices: range) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=20)
        for i in indices:
            method, path, body, headers = kinds(i)
            for attempt in range(2):
                try:
                    conn.request(method, path, body, headers)
                    resp = conn.getresponse()
                    resp.read()
                    assert 400 <= resp.status < 500, (method, path[:80], resp.status)
                    if resp.getheader("connection", "").lower() == "close":
                        conn.close()
                    break
                except (http.client.HTTPException, ConnectionError):
                    conn.close()
                    if attempt:
                        raise
        conn.close()

    send_all(range(16))  # each kind of refusal once: its series exist from here on
    request(edge_gw.url + "/metrics")  # the scrape counts itself from the second on
    before = request(edge_gw.url + "/metrics")[2]
    lines_before = len(edge_gw.log_entries())
    send_all(range(16, 10_016))
    after = request(edge_gw.url + "/metrics")[2]
    assert series(after) == series(before)
    assert len(after) - len(before) < 2000  # counters gained digits; no series was added
    assert b"method1" not in after and b"nope-" not in after and b"bogus" not in after
    lines = wait_for(lambda: (e := edge_gw.log_path.read_bytes().splitlines()[lines_before:]) and
                     len(e) >= 10_000 and e, 30, "the request log lines of 10,000 requests")
    assert max(len(line) for line in lines) < 1000, "a log line grew with the caller's URL"


# -- 2. nothing costly before the key; media bounded; no network detail --------------------------------------

def test_a_bad_key_gets_its_401_before_any_media_is_fetched(edge_gw: GatewayProcess, native: NativeUpstream) -> None:
    fetched = len(native.media_fetches)
    body = chat_with_images([f"{native.base_url}/media/big-{i}.png" for i in range(100)])
    for headers in ({"Authorization": f"Bearer {UNKNOWN_KEY}"}, {}):
        status, _, answer = request(edge_gw.base_url + "/chat/completions", "POST", body,
                                    {**headers, "Content-Type": "application/json"})
        assert status == 401, answer
        assert not any(word in answer.decode() for word in NETWORK_WORDS)
    assert len(native.media_fetches) == fetched


def test_a_bad_key_is_refused_before_the_body_is_read_or_parsed(edge_gw: GatewayProcess) -> None:
    status, _, answer = request(edge_gw.base_url + "/chat/completions", "POST", b"{not json",
                                {"Authorization": f"Bearer {UNKNOWN_KEY}", "Content-Type": "application/json"})
    assert status == 401 and orjson.loads(answer)["error"]["code"] == "invalid_api_key"
    # headers announcing 5 MB that never come: the 401 does not wait for them
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + UNKNOWN_KEY.encode() + b"\r\nContent-Length: 5000000\r\n\r\n")
    answer, closed = raw_exchange(edge_gw, head)  # had it waited for the body: a 408 after body_timeout
    assert closed and answer.startswith(b"HTTP/1.1 401"), answer[:200]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/images/edits", "/v1/videos", "/v1/recharge/orders",
                                  "/console/login", "/no/such/route"])
def test_an_answer_before_a_large_body_still_reads_it_and_frees_the_connection(edge_gw: GatewayProcess,
                                                                                path: str) -> None:
    """hypercorn queues 10 unread body messages, and at the end of a request waits for room for one more: an
    answer over a body nobody read used to hold its connection (and ~1 MB) for ever, past every timeout."""
    body = b"x" * (8 * 1024 * 1024)
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {UNKNOWN_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    answer, closed = raw_exchange(edge_gw, head + body)  # sendall itself times out if the body is left unread
    assert closed and answer.startswith(b"HTTP/1.1 4"), answer[:200]


def test_the_log_holds_no_caller_made_method(edge_gw: GatewayProcess) -> None:
    seen = len(edge_gw.log_entries())
    method = "M" * 4000
    for path in ("/healthz", "/v1/videos", "/console/login", "/nowhere", "/v1/chat/completions"):
        request = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        answer, _ = raw_exchange(edge_gw, request.encode())
        assert answer.startswith(b"HTTP/1.1 4"), answer[:100]
    lines = wait_for(lambda: (e := edge_gw.log_entries()[seen:]) and len(e) >= 5 and e, 15, "five log lines")
    assert {line.get("method", "other") for line in lines} == {"other"}  # the relay's lines have no method
    assert max(len(orjson.dumps(line)) for line in lines) < 1000


@pytest.mark.parametrize("path", ["/v1/images/edits", "/v1/images/generations", "/v1/videos"])
def test_a_bad_key_on_uploads_is_refused_before_the_upload_is_parsed(edge_gw: GatewayProcess, path: str) -> None:
    status, _, answer = request(edge_gw.url + path, "POST", b"--x\r\nnot a form",
                                {"Authorization": f"Bearer {UNKNOWN_KEY}",
                                 "Content-Type": "multipart/form-data; boundary=x"})
    assert status == 401 and orjson.loads(answer)["error"]["code"] == "invalid_api_key", answer


def test_more_media_urls_than_allowed_are_refused_before_anything_is_held(
        edge_gw: GatewayProcess, edge_key: str, native: NativeUpstream) -> None:
    before, fetched = wallet(edge_gw, "edge"), len(native.media_fetches)
    body = chat_with_images([f"{native.base_url}/media/dot.png"] * (MEDIA_COUNT + 1))
    status, _, answer = request(edge_gw.base_url + "/chat/completions", "POST", body,
                                {"Authorization": f"Bearer {edge_key}", "Content-Type": "application/json"})
    assert status == 400 and "media_fetch_count" in orjson.loads(answer)["error"]["message"]
    assert len(native.media_fetches) == fetched
    assert wallet(edge_gw, "edge") == before


def test_media_past_the_total_byte_limit_are_refused_and_cost_nothing(
        edge_gw: GatewayProcess, edge_key: str, native: NativeUpstream) -> None:
    before = wallet(edge_gw, "edge")
    body = chat_with_images([f"{native.base_url}/media/big-{i}.png" for i in range(MEDIA_COUNT)])
    status, _, answer = request(edge_gw.base_url + "/chat/completions", "POST", body,
                                {"Authorization": f"Bearer {edge_key}", "Content-Type": "application/json"})
    assert status == 400 and "media_fetch_total_bytes" in orjson.loads(answer)["error"]["message"]
    after = wait_for(lambda: (w := wallet(edge_gw, "edge"))["held"] == before["held"] and w, 15, "the hold released")
    assert after["balance"] == before["balance"]


def test_a_media_url_that_fails_says_nothing_about_the_network(edge_gw: GatewayProcess, edge_key: str) -> None:
    body = chat_with_images(["http://127.0.0.1:9/secret-host/x.png"])  # nothing listens on the discard port
    status, _, answer = request(edge_gw.base_url + "/chat/completions", "POST", body,
                                {"Authorization": f"Bearer {edge_key}", "Content-Type": "application/json"})
    message = orjson.loads(answer)["error"]["message"]
    assert status == 400 and "could not be fetched" in message
    assert not any(word in message for word in NETWORK_WORDS if word != "127.0.0.1:9"), message


# -- 3. keys out of URLs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/chat/completions"), ("POST", "/v1/messages"), ("POST", "/v1/responses"), ("POST", "/v1/embeddings"),
    ("POST", "/v1/completions"), ("POST", "/v1/images/generations"), ("POST", "/v1/videos"), ("GET", "/v1/videos"),
    ("GET", "/v1/recharge/orders"), ("POST", "/v1/recharge/orders")])
def test_a_key_in_the_url_is_refused_outside_gemini_routes(edge_gw: GatewayProcess, edge_key: str, method: str,
                                                          path: str) -> None:
    body = orjson.dumps({"model": "chat-openai", "messages": [{"role": "user", "content": "hi"}], "input": "hi",
                         "prompt": "hi", "max_tokens": 5}) if method == "POST" else None
    for headers in ({}, {"Authorization": f"Bearer {edge_key}"}):  # in the URL at all: refused, header or not
        status, _, answer = request(f"{edge_gw.url}{path}?key={edge_key}", method, body,
                                    {**headers, "Content-Type": "application/json"})
        assert status == 401, (path, answer)
        error = orjson.loads(answer)["error"]
        assert "Authorization" in error["message"] and edge_key not in answer.decode()


def test_a_key_in_the_url_still_works_on_gemini_routes(edge_gw: GatewayProcess, edge_key: str) -> None:
    body = orjson.dumps({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
    status, _, answer = request(f"{edge_gw.url}/v1beta/models/pic-gemini:generateContent?key={edge_key}", "POST",
                                body, {"Content-Type": "application/json"})
    assert status == 200, answer


# -- 4. slow and idle connections ----------------------------------------------------------------------------

def test_a_body_that_stops_coming_gets_a_408_and_its_connection_closed(edge_gw: GatewayProcess,
                                                                       edge_key: str) -> None:
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + edge_key.encode() + b"\r\nContent-Length: 100\r\n\r\n{\"mod")
    answer, closed = raw_exchange(edge_gw, head)
    assert closed and answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"body_timeout" in answer


@pytest.mark.parametrize("path", ["/console/login", "/v1/recharge/orders"])
def test_a_slow_form_or_json_body_is_closed_too(edge_gw: GatewayProcess, edge_key: str, path: str) -> None:
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            f"Authorization: Bearer {edge_key}\r\nContent-Length: 100\r\n\r\nemail=").encode()
    answer, closed = raw_exchange(edge_gw, head)
    assert closed and not answer.startswith(b"HTTP/1.1 5"), answer[:300]


def test_an_idle_connection_and_one_whose_headers_never_end_are_closed(edge_gw: GatewayProcess) -> None:
    assert raw_exchange(edge_gw, b"") == (b"", True)
    answer, closed = raw_exchange(edge_gw, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: 1")
    assert closed and not answer.startswith(b"HTTP/1.1 2")


# -- 9. conflicting framing ----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/chat/completions", "/healthz", "/console/login"])
def test_content_length_with_transfer_encoding_is_a_400_and_a_closed_connection(edge_gw: GatewayProcess,
                                                                                edge_key: str, path: str) -> None:
    body = b'{"model": "chat-openai", "messages": [{"role": "user", "content": "hi"}]}'
    smuggled = (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {edge_key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                f"{len(body):x}\r\n").encode() + body + b"\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    answer, closed = raw_exchange(edge_gw, smuggled)
    assert closed and answer.startswith(b"HTTP/1.1 400"), answer[:300]
    assert answer.count(b"HTTP/1.1 ") == 1  # the request behind it was not answered


# -- 9. the admin API on its own listener --------------------------------------------------------------------

def admin_url(gw: GatewayProcess) -> str:
    line = wait_for(lambda: next((s for s in gw.stderr_lines if "serving /admin on" in s), None), 15,
                    "the admin listener's address")
    found = re.search(r"http://[^ ]+", line)
    assert found is not None
    return found.group(0)


def test_admin_is_served_on_its_own_listener_only(edge_gw: GatewayProcess) -> None:
    token = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    status, _, _ = request(edge_gw.url + "/admin/accounts", headers=token)
    assert status == 404
    status, _, answer = request(admin_url(edge_gw) + "/admin/accounts", headers=token)
    assert status == 200 and b"edge" in answer
    assert request(admin_url(edge_gw) + "/v1/models")[0] == 404
    assert request(admin_url(edge_gw) + "/console/login")[0] == 404
    assert request(edge_gw.url + "/healthz")[0] == 200


def test_the_refusals_are_counted_under_fixed_labels(edge_gw: GatewayProcess) -> None:
    metrics = request(edge_gw.url + "/metrics")[2].decode()
    routes = set(re.findall(r'tokentoll_requests_total\{[^}]*route="([^"]*)"', metrics))
    assert routes and all(len(r) < 64 for r in routes), routes
    assert not any(":method" in r for r in routes)


@pytest.mark.parametrize(("path", "server", "admin", "refused"), [
    ("/admin/accounts", ("127.0.0.1", 8080), ("127.0.0.1", 9090), True),
    ("/admin/accounts", ("127.0.0.1", 9090), ("127.0.0.1", 9090), False),
    ("/v1/models", ("127.0.0.1", 9090), ("127.0.0.1", 9090), True),
    ("/v1/models", ("127.0.0.1", 8080), None, False),
    ("/admin/accounts", ("10.1.2.3", 9090), ("0.0.0.0", 9090), False),  # a wildcard bind: the port says it
    ("/v1/models", ("10.1.2.3", 9090), ("0.0.0.0", 9090), True),
    ("/admin/accounts", ("10.1.2.3", 8080), ("0.0.0.0", 9090), True),
    ("/admin/accounts", ("::1", 9090), ("::1", 9090), False),
    ("/admin/accounts", ("2001:db8::5", 9090), ("::", 9090), False),
    ("/admin/accounts", None, ("127.0.0.1", 9090), True),  # no server address (a Unix socket): public
])
def test_which_listener_serves_admin(path: str, server: tuple[str, int] | None, admin: tuple[str, int] | None,
                                     refused: bool) -> None:
    assert wrong_listener(path, server, admin) is refused


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "::1"])
def test_a_listener_binds_ipv4_and_ipv6_addresses(host: str) -> None:
    if ":" in host and not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    with listen_socket(host, 0, 8) as sock:
        assert sock.getsockname()[0] == host.strip("[]")

