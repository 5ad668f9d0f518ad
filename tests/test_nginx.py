"""deploy/nginx.conf, end to end: a real nginx (Debian's package) runs the shipped file in front of a real
gateway, and stream chunks reach the client spaced as the gateway wrote them, not in one burst; request
ids, the client's address, body limits and the /metrics restriction come through as documented.

The file runs with the three changes its header lists (TLS out, a free loopback port in, the test
gateway's address as the upstream); `transform` asserts each matches exactly once, so the directives
tested are the directives shipped. Skipped only when nginx is missing and $CI is unset: CI installs it."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import GatewayProcess, base_config, cli, demo_provider, serve_gateway, wait_for

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_CONF = ROOT / "deploy" / "nginx.conf"
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin:/usr/local/sbin")
CHUNK_DELAY = 0.1  # the demo provider's pause before each stream event
GATEWAY_BODY_LIMIT = 65536  # below nginx's 10m, so that both 413s can be reached
CLIENT = "127.0.0.2"  # the test's client address: loopback, but not the trusted proxy's 127.0.0.1

pytestmark = pytest.mark.skipif(NGINX is None and not os.environ.get("CI"),
                                reason="nginx is not installed (Debian package nginx); CI installs it")


def transform(text: str, listen: str, upstream: str) -> str:
    """The shipped file as the test runs it: the three changes listed in its header, nothing else."""
    text, n = re.subn(r"\n[ \t]*# >>> tls-redirect\n.*?# <<< tls-redirect\n", "\n", text, flags=re.S)
    assert n == 1, "deploy/nginx.conf: the tls-redirect block must appear exactly once"
    text, n = re.subn(r"(?m)^([ \t]*)# >>> tls\n.*?# <<< tls\n", rf"\g<1>listen {listen};\n", text, flags=re.S)
    assert n == 1, "deploy/nginx.conf: the tls block must appear exactly once"
    assert text.count("server 127.0.0.1:8080;") == 1, "deploy/nginx.conf: the upstream server line changed"
    return text.replace("server 127.0.0.1:8080;", f"server {upstream};")


def main_conf(site: str) -> str:
    """What Debian's /etc/nginx/nginx.conf provides around a conf.d file, confined to the test's prefix."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # else nginx drops its workers to nobody
    return f"""{user}worker_processes 1;
daemon off;
pid nginx.pid;
error_log error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    include {site};
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway_config(log_path: Path) -> str:
    return f"""
{base_config(log_path, max_body_bytes=GATEWAY_BODY_LIMIT, trusted_proxies=["127.0.0.1"])}{demo_provider(CHUNK_DELAY)}
[models.demo-echo]
provider = "demo"
upstream_model = "echo"
max_output_tokens = 64
price = {{ input = "0.50", output = "1.50" }}
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    yield from serve_gateway(tmp_path_factory.mktemp("nginx-gw"), gateway_config, {}, "edge", "10", ("Traceback",))


@pytest.fixture(scope="module")
def key(gw: GatewayProcess) -> str:
    return cli(gw.config, "keys", "create", "--account", "edge", env=gw.env)["key"]


@pytest.fixture(scope="module")
def nginx(gw: GatewayProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """nginx on a free loopback port, in its own prefix; yields the port."""
    assert NGINX is not None, "nginx is missing: .ci/run installs the Debian package nginx"
    prefix = tmp_path_factory.mktemp("nginx")
    (prefix / "tmp").mkdir()
    upstream = gw.url.removeprefix("http://")
    for _attempt in range(3):  # the free port may be taken before nginx binds it
        port = free_port()
        (prefix / "tokentoll.conf").write_text(transform(DEPLOY_CONF.read_text(), f"127.0.0.1:{port}", upstream))
        (prefix / "nginx.conf").write_text(main_conf("tokentoll.conf"))
        proc = subprocess.Popen([NGINX, "-p", f"{prefix}/", "-c", "nginx.conf", "-e", "error.log"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for(lambda: proc.poll() is not None or get(port, "/healthz")[0] == 200, 10, "nginx to answer")
        except AssertionError:
            pass
        if proc.poll() is None:
            yield port
            proc.send_signal(signal.SIGQUIT)  # graceful: finishes open requests
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return
        errors = proc.stderr.read().decode() if proc.stderr else ""
        if "Address already in use" not in errors + (prefix / "error.log").read_text():
            raise AssertionError(f"nginx did not start: {errors}{(prefix / 'error.log').read_text()}")
    raise AssertionError("nginx could not bind a free port in 3 attempts")


def connect(port: int) -> http.client.HTTPConnection:
    """A connection from the test's client address."""
    return http.client.HTTPConnection("127.0.0.1", port, timeout=20, source_address=(CLIENT, 0))


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    try:
        conn = connect(port)
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    except OSError:
        return 0, {}, b""


def post(port: int, path: str, body: bytes, key: str) -> tuple[int, dict[str, str], bytes]:
    conn = connect(port)
    conn.request("POST", path, body=body, headers={"Authorization": f"Bearer {key}",
                                                   "Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()


def read_stream(port: int, body: bytes, key: str) -> tuple[bytes, list[tuple[float, bytes]]]:
    """POSTs a stream request on a raw socket and returns the response head and each HTTP chunk of the
    body with the time it was complete, read as the bytes come (no client library buffering)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(CLIENT, 0))
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: llm.example.com\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nAccept-Encoding: gzip\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode()
    sock.sendall(head + body)
    buf = b""
    chunks: list[tuple[float, bytes]] = []
    response_head = b""
    with sock:
        while True:
            data = sock.recv(65536)
            now = time.monotonic()
            if not data:
                break
            buf += data
            if not response_head:
                if b"\r\n\r\n" not in buf:
                    continue
                response_head, buf = buf.split(b"\r\n\r\n", 1)
            while True:  # HTTP/1.1 chunked framing: size line, data, CRLF
                line, sep, rest = buf.partition(b"\r\n")
                if not sep:
                    break
                size = int(line.split(b";")[0], 16)
                if len(rest) < size + 2:
                    break
                if size == 0:
                    return response_head, chunks
                chunks.append((now, rest[:size]))
                buf = rest[size + 2:]
    return response_head, chunks


def test_stream_chunks_arrive_spaced_not_in_one_burst(nginx: int, key: str) -> None:
    words = " ".join(f"w{i}" for i in range(10))
    body = json.dumps({"model": "demo-echo", "stream": True,
                       "messages": [{"role": "user", "content": words}]}).encode()
    head, chunks = read_stream(nginx, body, key)
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    assert status_line.split()[1] == "200", head
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["transfer-encoding"] == "chunked"
    assert "content-encoding" not in headers  # gzip off: the client asked for it, the stream stays plain
    assert headers["x-tt-request-id"].startswith("req_")

    # when each SSE event was complete on the client's side
    arrivals: list[float] = []
    text = b""
    for at, data in chunks:
        text += data
        while b"\n\n" in text:
            _event, text = text.split(b"\n\n", 1)
            arrivals.append(at)
    n = len(arrivals)
    assert n == 10 + 3, f"{n} events"  # the role chunk, ten words, the finish chunk, [DONE]
    spread = arrivals[-1] - arrivals[0]
    assert spread >= 0.7 * (n - 1) * CHUNK_DELAY, f"events arrived within {spread:.3f}s: buffered"
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    separate = sum(gap >= CHUNK_DELAY / 2 for gap in gaps)
    assert separate >= 0.8 * (n - 1), f"only {separate} of {n - 1} events arrived apart: {gaps}"


def test_request_id_and_the_real_client_address_come_through(gw: GatewayProcess, nginx: int, key: str) -> None:
    """The client (at 127.0.0.2) claims to be someone else in X-Forwarded-For; nginx (127.0.0.1, trusted)
    appends what it saw, and the gateway logs the client's real address."""
    status, headers, _ = get(nginx, "/v1/models", {"X-Forwarded-For": "198.51.100.66",
                                                   "Authorization": f"Bearer {key}"})
    assert status == 200
    rid = headers["x-tt-request-id"]
    assert rid.startswith("req_") and headers["x-request-id"] == rid
    assert gw.log_entry(rid)["client_ip"] == CLIENT

    # the same lie told to the gateway directly: an untrusted peer's headers are ignored
    direct = int(gw.url.rsplit(":", 1)[1])
    status, headers, _ = get(direct, "/v1/models", {"X-Forwarded-For": "198.51.100.66"})
    assert status == 200 and gw.log_entry(headers["x-tt-request-id"])["client_ip"] == CLIENT

    body = json.dumps({"model": "demo-echo", "messages": [{"role": "user", "content": "hi"}]}).encode()
    status, headers, answer = post(nginx, "/v1/chat/completions", body, key)
    assert status == 200 and headers["x-tt-request-id"].startswith("req_")
    assert json.loads(answer)["choices"][0]["message"]["content"]
    assert gw.log_entry(headers["x-tt-request-id"])["client_ip"] == CLIENT  # the relay's log line too


def test_a_body_over_nginx_limit_gets_a_json_413(nginx: int, key: str) -> None:
    status, headers, body = post(nginx, "/v1/chat/completions", b"x" * (10 * 1024 * 1024 + 1), key)
    assert status == 413 and headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == "request_too_large" and error["type"] == "invalid_request_error"


def test_a_body_over_the_gateway_limit_gets_the_gateway_json_413(nginx: int, key: str) -> None:
    status, headers, body = post(nginx, "/v1/chat/completions", b"x" * (GATEWAY_BODY_LIMIT + 1), key)
    assert status == 413 and headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == "request_too_large" and error["request_id"] == headers["x-tt-request-id"]


def test_metrics_are_for_the_prometheus_network_only(gw: GatewayProcess, nginx: int) -> None:
    assert get(nginx, "/metrics")[0] == 403  # the test's client is not in the shipped allow list
    direct = int(gw.url.rsplit(":", 1)[1])
    assert get(direct, "/metrics")[0] == 200


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make a test certificate")
def test_the_tls_parts_pass_nginx_t(tmp_path: Path) -> None:
    """The lines the other tests remove: the whole shipped file, with only its certificate placeholders
    pointing at a throwaway certificate, passes `nginx -t`."""
    assert NGINX is not None
    cert, privkey = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=llm.example.com", "-keyout", str(privkey), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    site = DEPLOY_CONF.read_text()
    for placeholder, path in (("/etc/ssl/tokentoll/fullchain.pem", cert), ("/etc/ssl/tokentoll/privkey.pem", privkey)):
        assert site.count(placeholder) == 1
        site = site.replace(placeholder, str(path))
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tokentoll.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(main_conf("tokentoll.conf"))
    run = subprocess.run([NGINX, "-t", "-p", f"{tmp_path}/", "-c", "nginx.conf", "-e", "error.log"],
                         capture_output=True, timeout=30)
    assert run.returncode == 0, run.stderr.decode()
