"""deploy/nginx.conf, end to end: a real nginx (Debian's package) runs the shipped file in front of a real
gateway, and stream chunks reach the client spaced as the gateway wrote them, not in one burst; request
ids, the client's address, body limits and the /metrics restriction come through as documented. The
test_security_ tests replay finding 3 and the operator-surface finding of issue 17: the access log holds
no query and no credential, plain HTTP never redirects a request that carries a key (nor echoes a query),
and /admin is not forwarded.

The file runs with the four changes its header lists (free loopback ports for the port-80 server and, with
TLS out, for the main one; the test gateway's address as the upstream; the log directory in the test's
prefix); `transform` asserts each matches as expected, so the directives tested are the directives shipped.
Around it, `main_conf` is what Debian's nginx.conf provides, its http-level combined access log included.
Skipped only when nginx is missing and $CI is unset: CI installs it."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import GatewayProcess, base_config, cli, demo_provider, serve_gateway, wait_for

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_CONF = ROOT / "deploy" / "nginx.conf"
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin:/usr/local/sbin")
CHUNK_DELAY = 0.1  # the demo provider's pause before each stream event
GATEWAY_BODY_LIMIT = 65536  # below nginx's 10m, so that both 413s can be reached
CLIENT = "127.0.0.2"  # the test's client address: loopback, but not the trusted proxy's 127.0.0.1
ADMIN_TOKEN = "tt-admin-nginx-test-" + "A" * 24  # the gateway's admin token ($TOKENTOLL_ADMIN_TOKEN)
HOST = "llm.example.com"  # the shipped server_name

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(NGINX is None and not os.environ.get("CI"),
                                 reason="nginx is not installed (Debian package nginx); CI installs it")]


def transform(text: str, listen: str, plain_listen: str, upstream: str, logs: Path) -> str:
    """The shipped file as the test runs it: the four changes listed in its header, nothing else."""
    text, n = re.subn(r"(?m)^([ \t]*)# >>> http-listen\n.*?# <<< http-listen\n", rf"\g<1>listen {plain_listen};\n",
                      text, flags=re.S)
    assert n == 1, "deploy/nginx.conf: the http-listen block (the port-80 server) must appear exactly once"
    text, n = re.subn(r"(?m)^([ \t]*)# >>> tls\n.*?# <<< tls\n", rf"\g<1>listen {listen};\n", text, flags=re.S)
    assert n == 1, "deploy/nginx.conf: the tls block must appear exactly once"
    assert text.count("server 127.0.0.1:8080;") == 1, "deploy/nginx.conf: the upstream server line changed"
    text = text.replace("server 127.0.0.1:8080;", f"server {upstream};")
    assert text.count("/var/log/nginx/") == 2, "deploy/nginx.conf: an access_log line in each of its two servers"
    return text.replace("/var/log/nginx/", f"{logs}/")


def main_conf(site: str) -> str:
    """What Debian's /etc/nginx/nginx.conf provides around a conf.d file, confined to the test's prefix: its
    http-level access log too, in the predefined combined format (the full request line, query included),
    which the site's servers must replace with their own."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # else nginx drops its workers to nobody
    return f"""{user}worker_processes 1;
daemon off;
pid nginx.pid;
error_log error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log logs/access.log;
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
    yield from serve_gateway(tmp_path_factory.mktemp("nginx-gw"), gateway_config,
                             {"TOKENTOLL_ADMIN_TOKEN": ADMIN_TOKEN}, "edge", "10", ("Traceback",))


@pytest.fixture(scope="module")
def key(gw: GatewayProcess) -> str:
    return cli(gw.config, "keys", "create", "--account", "edge", env=gw.env)["key"]


@dataclass(frozen=True)
class Edge:
    """The running nginx: its two servers' ports and where it writes its logs."""

    port: int  # the main server (TLS taken out: plain HTTP on loopback)
    plain_port: int  # the port-80 server, as shipped
    prefix: Path  # nginx's prefix: error.log here, the access logs (Debian's and the site's) in logs/

    def access_lines(self) -> list[str]:
        """Every access log line so far, from each file of logs/ (Debian's http-level log and the site's)."""
        return [line for f in sorted((self.prefix / "logs").iterdir())
                for line in f.read_text(errors="replace").splitlines()]

    def everything(self) -> str:
        """All that nginx has logged so far: the access logs and the error log."""
        error_log = self.prefix / "error.log"
        return "\n".join([*self.access_lines(), error_log.read_text(errors="replace") if error_log.exists() else ""])

    def access_line(self, marker: str) -> str:
        """The access log line holding `marker`, waited for: nginx writes it just after the response."""
        found: str = wait_for(lambda: next((line for line in self.access_lines() if marker in line), None),
                              10, f"nginx's access log line for {marker}")
        return found


@pytest.fixture(scope="module")
def edge(gw: GatewayProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    """nginx on two free loopback ports, in its own prefix."""
    assert NGINX is not None, "nginx is missing: .ci/run installs the Debian package nginx"
    prefix = tmp_path_factory.mktemp("nginx")
    (prefix / "tmp").mkdir()
    (prefix / "logs").mkdir()
    upstream = gw.url.removeprefix("http://")
    for _attempt in range(3):  # a free port may be taken before nginx binds it
        port, plain_port = free_port(), free_port()
        if port == plain_port:
            continue
        (prefix / "tokentoll.conf").write_text(transform(DEPLOY_CONF.read_text(), f"127.0.0.1:{port}",
                                                         f"127.0.0.1:{plain_port}", upstream, prefix / "logs"))
        (prefix / "nginx.conf").write_text(main_conf("tokentoll.conf"))
        proc = subprocess.Popen([NGINX, "-p", f"{prefix}/", "-c", "nginx.conf", "-e", "error.log"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for(lambda: proc.poll() is not None or get(port, "/healthz")[0] == 200, 10, "nginx to answer")
        except AssertionError:
            pass
        if proc.poll() is None:
            yield Edge(port, plain_port, prefix)
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
    raise AssertionError("nginx could not bind free ports in 3 attempts")


@pytest.fixture(scope="module")
def nginx(edge: Edge) -> int:
    """The main server's port."""
    return edge.port


def connect(port: int) -> http.client.HTTPConnection:
    """A connection from the test's client address."""
    return http.client.HTTPConnection("127.0.0.1", port, timeout=20, source_address=(CLIENT, 0))


def get(port: int, path: str, headers: dict[str, str] | None = None,
        method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    try:
        conn = connect(port)
        conn.request(method, path, headers=headers or {})
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
    status, headers, _ = get(direct, "/v1/models", {"X-Forwarded-For": "198.51.100.66",
                                                    "Authorization": f"Bearer {key}"})
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
    pointing at a throwaway certificate (and its logs in the test's directory, not /var/log/nginx), passes
    `nginx -t`."""
    assert NGINX is not None
    cert, privkey = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=llm.example.com", "-keyout", str(privkey), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    site = DEPLOY_CONF.read_text()
    for placeholder, path in (("/etc/ssl/tokentoll/fullchain.pem", cert), ("/etc/ssl/tokentoll/privkey.pem", privkey)):
        assert site.count(placeholder) == 1
        site = site.replace(placeholder, str(path))
    site = site.replace("/var/log/nginx/", f"{tmp_path}/logs/")
    (tmp_path / "tmp").mkdir()
    (tmp_path / "logs").mkdir()
    (tmp_path / "tokentoll.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(main_conf("tokentoll.conf"))
    run = subprocess.run([NGINX, "-t", "-p", f"{tmp_path}/", "-c", "nginx.conf", "-e", "error.log"],
                         capture_output=True, timeout=30)
    assert run.returncode == 0, run.stderr.decode()


# -- issue 17: no key in nginx's logs, none redirected over plain HTTP, /admin not forwarded ---------------

def a_secret() -> str:
    """A key-shaped secret no test has sent before."""
    return "sk-tt-SECRET" + uuid.uuid4().hex


def basic(user: str) -> str:
    """An `Authorization: Basic` value with `user` and no password, as `curl -u KEY:` sends a key."""
    return "Basic " + base64.b64encode(f"{user}:".encode()).decode()


def test_security_the_access_log_holds_no_query_and_no_credential(edge: Edge, key: str) -> None:
    """Finding 3: Debian's combined format logs the whole request line, so ?key= (Gemini's REST key) landed in
    the access log. Each server now logs the path without its query, and nothing else that carries a key:
    no $remote_user (a Basic user is a key sent with `curl -u`), only the path of the referer."""
    probe = uuid.uuid4().hex
    in_referer, in_basic, in_plain = a_secret(), a_secret(), a_secret()
    # the real key in the query of a Gemini route, a secret in the referer's query
    status, headers, _ = get(edge.port, f"/v1beta/models/probe-{probe}-gemini?key={key}&alt=sse",
                             {"Referer": f"https://{HOST}/console/usage?key={in_referer}"})
    assert 400 <= status < 500 and headers["x-tt-request-id"].startswith("req_")  # the gateway answered
    rid = headers["x-tt-request-id"]
    # a key as Basic credentials
    assert "x-tt-request-id" in get(edge.port, f"/v1/models/probe-{probe}-basic", {"Authorization": basic(in_basic)})[1]
    # a key in the query on the port-80 server
    assert get(edge.plain_port, f"/v1/models/probe-{probe}-plain?key={in_plain}", {"Host": HOST})[0] != 0

    gemini = edge.access_line(f"probe-{probe}-gemini")
    edge.access_line(f"probe-{probe}-basic")
    edge.access_line(f"probe-{probe}-plain")
    logged = edge.everything()
    for secret in (key, in_referer, in_basic, in_plain):
        assert secret not in logged, f"nginx logged a key:\n{logged}"
    assert "SECRET" not in logged and "key=" not in logged
    # what stays useful: method, path, status, the gateway's request id, the referer's path
    assert f'"GET /v1beta/models/probe-{probe}-gemini HTTP/1.1" {status} ' in gemini, gemini
    assert f"rid={rid}" in gemini and f'"https://{HOST}/console/usage"' in gemini, gemini


PLAIN_HTTP_KEYS = [  # (method, path, headers) with {s} for the secret: every place the gateway reads a key
    ("GET", "/v1beta/models?key={s}", {}),
    ("POST", "/v1beta/models/gemini-pro:generateContent?alt=sse&key={s}", {}),
    ("GET", "/v1/models?KEY={s}", {}),
    ("GET", "/v1/models?%6Bey={s}", {}),  # the gateway decodes argument names
    ("POST", "/v1/chat/completions", {"Authorization": "Bearer {s}"}),
    ("GET", "/v1/models", {"Authorization": "basic"}),
    ("POST", "/v1/messages", {"x-api-key": "{s}"}),
    ("POST", "/v1beta/models/gemini-pro:generateContent", {"x-goog-api-key": "{s}"}),
]


@pytest.mark.parametrize(("method", "path", "headers"), PLAIN_HTTP_KEYS,
                         ids=["query", "query-post", "query-upper", "query-encoded", "authorization", "basic",
                              "x-api-key", "x-goog-api-key"])
def test_security_plain_http_with_a_key_is_refused_never_redirected(edge: Edge, method: str, path: str,
                                                                    headers: dict[str, str]) -> None:
    """Finding 3: the port-80 server redirected everything, echoing ?key= in Location over plain HTTP and
    having the client send its key again. A request that carries a key now gets a 403 that says to use https
    and rotate the key, no Location, and nothing of the key in the answer."""
    secret = a_secret()
    sent = {name: basic(secret) if value == "basic" else value.format(s=secret) for name, value in headers.items()}
    status, answer_headers, body = get(edge.plain_port, path.format(s=secret), {"Host": HOST, **sent}, method)
    assert status == 403, (status, answer_headers)
    assert "location" not in answer_headers
    assert secret not in body.decode() and not any(secret in f"{k}: {v}" for k, v in answer_headers.items())
    assert answer_headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == "https_required" and "https" in error["message"] and "rotated" in error["message"]


def test_security_plain_http_without_a_key_redirects_to_https_without_the_query(edge: Edge) -> None:
    """A browser typing the address is still sent to HTTPS, with its path, but never with its query: a query
    may hold a secret under a name the key check does not know, and Location would send it in clear again.
    The path is the raw one: a decoded %0D%0A would split the Location header."""
    for path, location in (("/", "/"),
                           ("/console/usage?status=ok&month=2024-05", "/console/usage"),
                           ("/console?token=abc", "/console"),
                           ("/console/%0D%0ASet-Cookie:%20tt=1?a=b", "/console/%0D%0ASet-Cookie:%20tt=1")):
        status, headers, body = get(edge.plain_port, path, {"Host": HOST})
        assert status == 301 and headers["location"] == f"https://{HOST}{location}", (path, status, headers)
        assert "set-cookie" not in headers and b"status=ok" not in body and b"abc" not in body


def test_security_admin_is_not_forwarded(edge: Edge, gw: GatewayProcess) -> None:
    """Operator surface: /admin (the JSON API, behind only the admin token) answers 404 at nginx, in every
    spelling nginx normalizes, and the gateway never sees the request; the console's operator pages
    (/console/admin, behind a console log-in with the operator role) are still forwarded."""
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    direct = int(gw.url.rsplit(":", 1)[1])
    status, headers, _ = get(direct, "/admin/accounts", auth)
    assert status == 200  # the token works: a forwarded request would succeed
    gw.log_entry(headers["x-tt-request-id"])
    before = len(gw.log_entries())

    for path in ("/admin", "/admin/", "/admin/accounts", "/admin/accounts?account=edge", "/admin/wallets/edge",
                 "//admin/accounts", "/%61dmin/accounts", "/./admin/accounts", "/v1/../admin/accounts"):
        for method in ("GET", "POST"):
            status, headers, body = get(edge.port, path, auth, method)
            assert status == 404, (method, path, status, body)
            assert "x-tt-request-id" not in headers, (method, path)  # nginx answered, not the gateway
            assert json.loads(body)["error"]["code"] == "unknown_url"

    status, headers, _ = get(edge.port, "/console/admin")
    assert status != 404 and "x-tt-request-id" in headers, (status, headers)  # forwarded: the gateway answered
    console = headers["x-tt-request-id"]
    status, headers, _ = get(edge.port, "/healthz")
    assert status == 200
    gw.log_entry(headers["x-tt-request-id"])  # a later request's line is there, so any /admin one would be
    reached = [e for e in gw.log_entries()[before:] if e["request_id"] not in (console, headers["x-tt-request-id"])]
    assert not reached, f"requests nginx forwarded to the gateway: {reached}"


def test_a_port_other_than_443_reaches_the_console_with_its_port(nginx: int) -> None:
    """Issue 18.4: `proxy_set_header Host $host` dropped the port, so behind nginx on another port the console's
    forms failed their Origin check and Client Integration showed a URL without the port."""
    host = f"{HOST}:8443"
    status, _, page = get(nginx, "/console/integration", {"Host": host})
    assert status == 200 and f"http://{host}/v1".encode() in page, page[:300]

