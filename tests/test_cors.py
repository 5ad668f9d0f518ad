"""server.cors_origins: a web page on an allowed origin calls /v1 and /v1beta from Chromium (a real preflight) and
reads the answer and the X-TT headers; another origin, and /console and /admin on any origin, get no CORS headers."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from playwright.sync_api import Page

from tests.browser import browser, page  # noqa: F401
from tests.conftest import DEMO_ECHO, GatewayProcess, base_config, cli, demo_provider, serve_gateway
from tests.loopback import LoopbackServer

pytestmark = pytest.mark.slow

PAGE = b"<!doctype html><title>a chat front-end</title><p>served from another origin"


class PageServer(LoopbackServer):
    """A web page's own origin (http://localhost:PORT): the page that calls the gateway."""

    name = "page server"

    def add_routes(self, app: web.Application) -> None:
        async def home(_request: web.Request) -> web.Response:
            return web.Response(body=PAGE, content_type="text/html")

        app.router.add_get("/", home)

    @property
    def origin(self) -> str:
        return f"http://localhost:{self.port}"


@pytest.fixture(scope="module")
def pages() -> Iterator[tuple[PageServer, PageServer]]:
    allowed, other = PageServer().start(), PageServer().start()
    yield allowed, other
    allowed.stop()
    other.stop()


def cors_config(origin: str, log: Path) -> str:
    return base_config(log, cors_origins=[origin]) + demo_provider() + DEMO_ECHO


@pytest.fixture(scope="module")
def gw(pages: tuple[PageServer, PageServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    yield from serve_gateway(tmp_path_factory.mktemp("cors"), partial(cors_config, pages[0].origin), {}, "web", "5",
                             ("Traceback",))


@pytest.fixture(scope="module")
def key(gw: GatewayProcess) -> str:
    return cli(gw.config, "keys", "create", "--account", "web", env=gw.env)["key"]


CALL = """async ([url, init]) => {
  try {
    const r = await fetch(url, init);
    return {status: r.status, body: await r.text(), request_id: r.headers.get("x-tt-request-id"),
            cache: r.headers.get("x-tt-cache"), type: r.headers.get("content-type")};
  } catch (e) { return {error: String(e)}; }
}"""


def fetch(page: Page, url: str, method: str = "GET", headers: dict[str, str] | None = None,
          body: str | None = None) -> dict[str, Any]:
    init: dict[str, Any] = {"method": method, "headers": headers or {}}
    if body is not None:
        init["body"] = body
    return page.evaluate(CALL, [url, init])


def chat(key: str, stream: bool = False) -> dict[str, Any]:
    return {"headers": {"Authorization": f"Bearer {key}", "Content-Type": "application/json", "X-TT-Cache": "use"},
            "body": '{"model": "demo-echo", "messages": [{"role": "user", "content": "hello from a page"}]' +
                    (', "stream": true' if stream else '') + '}'}


def test_a_page_on_an_allowed_origin_calls_the_api_and_reads_the_tt_headers(
        page: Page, gw: GatewayProcess, key: str, pages: tuple[PageServer, PageServer]) -> None:
    page.goto(pages[0].origin + "/")
    seen = len([e for e in gw.log_entries() if e.get("route") == "preflight"])
    answer = fetch(page, gw.url + "/v1/chat/completions", "POST", **chat(key))
    assert answer.get("status") == 200, answer
    assert "hello from a page" in answer["body"] and answer["request_id"].startswith("req_")
    assert answer["cache"] in ("miss", "hit")  # X-TT-Cache is exposed to the page
    # Chromium asked first (Authorization and a JSON body are not "simple"): the gateway answered the preflight
    assert len([e for e in gw.log_entries() if e.get("route") == "preflight"]) > seen
    streamed = fetch(page, gw.url + "/v1/chat/completions", "POST", **chat(key, stream=True))
    assert streamed.get("status") == 200 and "data: [DONE]" in streamed["body"], streamed
    listed = fetch(page, gw.url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert listed.get("status") == 200 and "demo-echo" in listed["body"]
    claude = fetch(page, gw.url + "/v1/messages", "POST", headers={
        "x-api-key": key, "anthropic-version": "2023-06-01", "content-type": "application/json",
        "anthropic-dangerous-direct-browser-access": "true"},
        body='{"model": "demo-echo", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}')
    assert claude.get("status") == 200 and '"type":"message"' in claude["body"].replace(" ", ""), claude
    gemini = fetch(page, gw.url + "/v1beta/models/demo-echo:generateContent", "POST", headers={
        "x-goog-api-key": key, "content-type": "application/json"},
        body='{"contents": [{"parts": [{"text": "hi"}]}]}')
    assert gemini.get("status") == 200 and "candidates" in gemini["body"], gemini
    # what NextChat reads for the balance, under the path it calls (no /v1), and the API's description
    subscription = fetch(page, gw.url + "/dashboard/billing/subscription", headers={"Authorization": f"Bearer {key}"})
    assert subscription.get("status") == 200 and "hard_limit_usd" in subscription["body"], subscription
    described = fetch(page, gw.url + "/openapi.json")
    assert described.get("status") == 200 and '"openapi"' in described["body"]
    refused = fetch(page, gw.url + "/v1/chat/completions", "POST", **chat("sk-tt-" + "0" * 40))
    assert refused.get("status") == 401 and refused["request_id"]  # a page can read the error and its id


def test_another_origin_and_the_console_get_nothing(page: Page, gw: GatewayProcess, key: str,
                                                   pages: tuple[PageServer, PageServer]) -> None:
    page.goto(pages[1].origin + "/")
    before = gw.log_entries()
    blocked = fetch(page, gw.url + "/v1/chat/completions", "POST", **chat(key))
    assert "error" in blocked and "Failed to fetch" in blocked["error"], blocked
    assert not [e for e in gw.log_entries()[len(before):] if e.get("route") == "preflight"]
    page.goto(pages[0].origin + "/")  # the allowed origin still cannot read the console or the operator's API
    for path in ("/console/prices", "/console/login", "/admin/accounts"):
        assert "Failed to fetch" in fetch(page, gw.url + path).get("error", ""), path


def raw(gw: GatewayProcess, method: str, path: str, headers: dict[str, str]) -> http.client.HTTPResponse:
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request(method, path, headers=headers)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


def test_preflight_answers(gw: GatewayProcess, pages: tuple[PageServer, PageServer]) -> None:
    origin = pages[0].origin
    asked = {"Origin": origin, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os"}
    ok = raw(gw, "OPTIONS", "/v1/chat/completions", asked)
    assert ok.status == 204 and ok.getheader("access-control-allow-origin") == origin
    assert ok.getheader("access-control-allow-headers") == "authorization, content-type, x-stainless-os"
    assert "POST" in ok.getheader("access-control-allow-methods")
    assert ok.getheader("vary") == "Origin, Access-Control-Request-Headers"  # the answer echoes both
    odd = raw(gw, "OPTIONS", "/v1beta/models/demo-echo:streamGenerateContent",
              {**asked, "Access-Control-Request-Headers": "bad header\u00e9".encode().decode("latin-1")})
    assert odd.status == 204 and "x-goog-api-key" in odd.getheader("access-control-allow-headers")
    for path in ("/console/login", "/admin/accounts", "/metrics"):  # never cross-origin
        r = raw(gw, "OPTIONS", path, asked)
        assert r.getheader("access-control-allow-origin") is None and r.status != 204, path
    stranger = raw(gw, "OPTIONS", "/v1/chat/completions", {**asked, "Origin": pages[1].origin})
    assert stranger.getheader("access-control-allow-origin") is None and stranger.status != 204
    plain = raw(gw, "GET", "/v1/pricing", {})  # no Origin: no CORS headers, but a cache must key on Origin
    assert plain.status == 200 and plain.getheader("access-control-allow-origin") is None
    assert plain.getheader("vary") == "Origin"
    assert raw(gw, "GET", "/healthz", {}).getheader("vary") is None  # not an API route
    exposed = raw(gw, "GET", "/v1/pricing", {"Origin": origin})
    assert exposed.getheader("access-control-allow-origin") == origin
    assert "x-tt-request-id" in exposed.getheader("access-control-expose-headers")
    assert "x-tt-cache-savings" in exposed.getheader("access-control-expose-headers")


def test_cors_origins_must_be_origins(tmp_path: Path) -> None:
    from core.config import ConfigError, load

    for bad in (["https://chat.example.com/"], ["chat.example.com"], ["https://a.example/path"], "*", [1]):
        config = tmp_path / "bad.toml"
        config.write_text(base_config(tmp_path / "r.log", cors_origins=bad) + demo_provider() + DEMO_ECHO)
        with pytest.raises(ConfigError, match="server.cors_origins"):
            load(config)
    good = tmp_path / "good.toml"
    good.write_text(base_config(tmp_path / "r.log", cors_origins=["*", "https://Chat.Example.com:8443"]) +
                    demo_provider() + DEMO_ECHO)
    assert load(good).server.cors_origins == ("*", "https://chat.example.com:8443")
