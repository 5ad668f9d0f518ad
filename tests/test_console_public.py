"""The console's public pages over HTTP: Model Prices (every model, the figures of /v1/pricing, search and sort) and
Client Integration (the base URL as configured or as the request came in, snippets that work as pasted, and the error
codes the gateway really answers)."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import openai
import pytest
import requests

from billing.pricing import usd_to_units
from tests.conftest import DEMO_ECHO, GatewayProcess, base_config, cli, demo_provider, serve_gateway
from tests.console_client import ConsoleClient

PLACEHOLDER = "sk-tt-..."
MODELS = DEMO_ECHO + """
[models.free-chat]
provider = "demo"
upstream_model = "echo"
price = { input = "0", output = "0" }

[models."vendor/big-model"]
provider = "demo"
upstream_model = "echo"
max_output_tokens = 128000
price = { input = "3", output = "15", cache_read = "0.3" }

[models.demo-image]
provider = "demo"
upstream_model = "image"
price = { input = "0", output = "0", image = { "1024x1024" = "0.04", "1024x1024/hd" = "0.08", "512x512" = "0.018" } }

[models.image-chat]
provider = "demo"
upstream_model = "image"
price = { image = { "1024x1024" = "0.039" } }

[models.demo-video]
provider = "demo"
upstream_model = "video"
price = { input = "0", output = "0", task = "0.10", second = "0.05" }
"""
TOKEN_KINDS = ("input", "output", "cache_read", "cache_write")
COLUMNS = ("model", "owned_by", *TOKEN_KINDS, "image", "task", "second", "max_output_tokens")
ROW = re.compile(r'<tr data-model="([^"]*)">(.*?)</tr>', re.S)
CELL = re.compile(r"<td([^>]*)>(.*?)</td>", re.S)
IMAGE_PRICE = re.compile(r'<li data-size="([^"]+)"><span class="size">[^<]*</span> \$([0-9.]+)</li>')
SNIPPET = re.compile(r'<code id="snippet-[^"]+" data-snippet="([^"]+)">(.*?)</code>', re.S)


def config_with(console: str = "", **server: object) -> Callable[[Path], str]:
    return lambda log_path: base_config(log_path, **server) + demo_provider() + MODELS + console


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    yield from serve_gateway(tmp_path_factory.mktemp("public"), config_with(), {}, "public", "10", ("Traceback",))


@pytest.fixture(scope="module")
def configured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """[console] base_url set (with a trailing slash, which the config drops), behind a trusted proxy too."""
    yield from serve_gateway(tmp_path_factory.mktemp("public-configured"),
                             config_with('\n[console]\nbase_url = "https://llm.example.com/"\n',
                                         trusted_proxies=["127.0.0.1"]),
                             {}, "public", "1", ("Traceback",))


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """No base_url: the scheme and host come from X-Forwarded-* of the trusted proxy (loopback)."""
    yield from serve_gateway(tmp_path_factory.mktemp("public-proxied"), config_with(trusted_proxies=["127.0.0.1"]),
                             {}, "public", "1", ("Traceback",))


@pytest.fixture(scope="module")
def key(gw: GatewayProcess) -> str:
    return cli(gw.config, "keys", "create", "--account", "public", "--name", "snippets", env=gw.env)["key"]


def get(gw: GatewayProcess, path: str, **headers: str) -> requests.Response:
    """A visitor with no cookie."""
    return requests.get(gw.url + path, headers=headers, timeout=20, allow_redirects=False)


def text_of(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment)).strip()


def price_table(page: str) -> dict[str, dict[str, tuple[str, str]]]:
    """Model -> column -> (the cell's attributes, its HTML)."""
    return {html.unescape(name): dict(zip(COLUMNS, CELL.findall(row), strict=True)) for name, row in ROW.findall(page)}


def sort_value(attrs: str) -> int | None:
    found = re.search(r'data-sort="(\d+)"', attrs)
    return int(found.group(1)) if found else None


def money_cell(cell: tuple[str, str], usd: str | None) -> None:
    """A money cell shows the exact figure of /v1/pricing and sorts by its nano-dollars; None shows —."""
    attrs, inner = cell
    if usd is None:
        assert text_of(inner) == "—" and sort_value(attrs) is None
        return
    shown = text_of(inner)
    assert shown.startswith("$") and Decimal(shown[1:]) == Decimal(usd), (shown, usd)
    assert sort_value(attrs) == usd_to_units(Decimal(usd))


def snippets_of(page: str) -> dict[str, str]:
    return {name: html.unescape(body) for name, body in SNIPPET.findall(page)}


def base_url_on(page: str) -> str:
    found = re.search(r'<code id="base-url">([^<]*)</code>', page)
    assert found, "no base URL on the page"
    return html.unescape(found.group(1))


# -- both pages -----------------------------------------------------------------------------


def test_both_pages_answer_without_a_log_in(gw: GatewayProcess) -> None:
    for path, title in (("/console/prices", "Model Prices"), ("/console/integration", "Client Integration")):
        r = get(gw, path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert f"<h1>{title}</h1>" in r.text and 'href="/console/login"' in r.text
        assert 'href="/console/dashboard"' not in r.text  # no account's nav for a stranger
        assert "default-src 'self'" in r.headers["content-security-policy"]
    assert get(gw, "/console/static/public.css").status_code == 200


def test_pages_need_nothing_from_elsewhere_and_nothing_inline(gw: GatewayProcess) -> None:
    """They work offline and under the strict CSP: every script and stylesheet is the console's own."""
    for path in ("/console/prices", "/console/integration"):
        page = get(gw, path).text
        loaded = re.findall(r'<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)="([^"]*)"', page)
        assert loaded and all(url.startswith("/console/static/") for url in loaded), loaded
        assert " style=" not in page and "<style" not in page
        assert all("src=" in tag for tag in re.findall(r"<script\b[^>]*>", page))


def test_a_logged_in_visitor_keeps_their_nav(gw: GatewayProcess) -> None:
    visitor = ConsoleClient(gw.url)
    visitor.sign_up("public-pages@example.com")
    for path in ("/console/prices", "/console/integration"):
        page = visitor.get(path).text
        assert 'href="/console/dashboard"' in page and "public-pages@example.com" in page
    assert 'href="/console/keys">create one</a>' in visitor.get("/console/integration").text


# -- Model Prices ---------------------------------------------------------------------------


def test_prices_show_every_model_with_the_figures_of_v1_pricing(gw: GatewayProcess) -> None:
    pricing = requests.get(gw.url + "/v1/pricing", timeout=20).json()["data"]
    table = price_table(get(gw, "/console/prices").text)
    assert list(table) == [p["model"] for p in pricing]  # every model, in the config's order
    not_per_token = {"demo-image", "image-chat", "demo-video"}  # image and video models: no token prices
    for p in pricing:
        row = table[p["model"]]
        assert text_of(row["model"][1]) == p["model"] and text_of(row["owned_by"][1]) == p["owned_by"]
        for kind in TOKEN_KINDS:
            money_cell(row[kind], None if p["model"] in not_per_token else p[kind])
        money_cell(row["task"], p["task"])
        money_cell(row["second"], p["second"])
        shown = {size: Decimal(usd) for size, usd in IMAGE_PRICE.findall(row["image"][1])}
        assert shown == {size: Decimal(usd) for size, usd in (p["image"] or {}).items()}
        if p["image"]:  # sorted by the cheapest size
            assert sort_value(row["image"][0]) == min(usd_to_units(Decimal(u)) for u in p["image"].values())
        else:
            assert text_of(row["image"][1]) == "—"
        assert sort_value(row["max_output_tokens"][0]) == p["max_output_tokens"]


def test_prices_read_as_configured(gw: GatewayProcess) -> None:
    """Exact figures (no float rounding); a free model is $0.00, not —; an unset cache price is the input price."""
    table = price_table(get(gw, "/console/prices").text)
    shown = {model: [text_of(row[kind][1]) for kind in TOKEN_KINDS] for model, row in table.items()}
    assert shown["demo-echo"] == ["$0.50", "$1.50", "$0.05", "$0.625"]
    assert shown["free-chat"] == ["$0.00"] * 4
    assert shown["vendor/big-model"] == ["$3.00", "$15.00", "$0.30", "$3.00"]
    assert shown["demo-image"] == shown["image-chat"] == shown["demo-video"] == ["—"] * 4  # priced per unit
    assert text_of(table["demo-video"]["task"][1]) == "$0.10" and text_of(table["demo-video"]["second"][1]) == "$0.05"
    assert text_of(table["vendor/big-model"]["max_output_tokens"][1]) == "128,000"


def test_prices_table_is_searchable_and_sortable(gw: GatewayProcess) -> None:
    page = get(gw, "/console/prices").text
    assert re.search(r'<input[^>]*data-filter-table="prices"', page)
    assert '<table id="prices" data-sortable>' in page
    headers = re.findall(r"<th(\s[^>]*)?>", page.split('<table id="prices"')[1].split("</thead>")[0])
    assert len(headers) == len(COLUMNS) and all('class="sortable' in h for h in headers)


# -- Client Integration: the base URL ---------------------------------------------------------


def assert_snippets_use(page: str, base: str) -> None:
    """Each SDK gets the base URL it wants: OpenAI's with /v1, Anthropic's and google-genai's without."""
    s = snippets_of(page)
    assert f'OpenAI(base_url="{base}/v1", api_key="{PLACEHOLDER}")' in s["python-openai"]
    assert f'baseURL: "{base}/v1", apiKey: "{PLACEHOLDER}"' in s["node-openai"]
    assert f'anthropic.Anthropic(base_url="{base}", api_key="{PLACEHOLDER}")' in s["python-anthropic"]
    assert f'genai.Client(api_key="{PLACEHOLDER}", http_options={{"base_url": "{base}"}})' in s["python-genai"]
    assert s["curl"].startswith(f"curl {base}/v1/chat/completions ")
    assert f"export OPENAI_BASE_URL={base}/v1\n" in s["env"] and f"export ANTHROPIC_BASE_URL={base}\n" in s["env"]
    assert f'<code id="url-openai">{base}/v1</code>' in page and f'<code id="url-anthropic">{base}</code>' in page
    assert f'<code id="url-gemini">{base}</code>' in page


def test_the_base_url_is_the_one_the_request_came_in_on(gw: GatewayProcess) -> None:
    page = get(gw, "/console/integration").text
    assert base_url_on(page) == gw.url
    assert_snippets_use(page, gw.url)
    page = get(gw, "/console/integration", Host="llm.example.test:8443").text
    assert base_url_on(page) == "http://llm.example.test:8443"
    assert_snippets_use(page, "http://llm.example.test:8443")
    spoofed = get(gw, "/console/integration", **{"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"})
    assert base_url_on(spoofed.text) == gw.url  # loopback is not a trusted proxy of this gateway


def test_forwarded_headers_count_from_a_trusted_proxy(proxied: GatewayProcess) -> None:
    page = get(proxied, "/console/integration", **{"X-Forwarded-Proto": "https",
                                                   "X-Forwarded-Host": "llm.example.org"}).text
    assert base_url_on(page) == "https://llm.example.org"
    assert_snippets_use(page, "https://llm.example.org")


def test_a_configured_base_url_wins(configured: GatewayProcess) -> None:
    for headers in ({}, {"Host": "other.example:9000"}, {"X-Forwarded-Proto": "http", "X-Forwarded-Host": "x.example"}):
        page = get(configured, "/console/integration", **headers).text
        assert base_url_on(page) == "https://llm.example.com"
        assert_snippets_use(page, "https://llm.example.com")


def test_snippets_have_tabs_copy_buttons_and_a_real_model(gw: GatewayProcess) -> None:
    page = get(gw, "/console/integration").text
    names = list(snippets_of(page))
    assert names[:5] == ["curl", "curl-stream", "python-openai", "python-anthropic", "python-genai"]
    for name in names:
        assert f'data-tab="panel-{name}"' in page and f'id="panel-{name}"' in page
        assert f'data-copy="snippet-{name}"' in page
    assert "data-tabs" in page and 'data-copy="base-url"' in page
    for name, text in snippets_of(page).items():
        assert PLACEHOLDER in text and "sk-tt-" not in text.replace(PLACEHOLDER, ""), name
        if name != "env":
            assert '"demo-echo"' in text, name  # the first chat model of the config


# -- Client Integration: the snippets work as pasted ----------------------------------------


def run_python(code: str, env: dict[str, str] | None = None) -> str:
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, env=env, text=True)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_the_openai_base_url_on_the_page_works_with_the_sdk(gw: GatewayProcess, key: str) -> None:
    snippet = snippets_of(get(gw, "/console/integration").text)["python-openai"]
    base_url = re.search(r'base_url="([^"]+)"', snippet).group(1)  # type: ignore[union-attr]
    sdk = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=20)
    reply = sdk.chat.completions.create(model="demo-echo", messages=[{"role": "user", "content": "Hello there"}])
    assert reply.choices[0].message.content == "Hello there" and reply.model == "demo-echo"


@pytest.mark.parametrize("name", ["python-openai", "python-anthropic", "python-genai"])
def test_python_snippets_run_as_pasted(gw: GatewayProcess, key: str, name: str) -> None:
    snippet = snippets_of(get(gw, "/console/integration").text)[name]
    assert run_python(snippet.replace(PLACEHOLDER, key)) == "Hello!\n"


def test_curl_snippets_run_as_pasted(gw: GatewayProcess, key: str) -> None:
    snippets = snippets_of(get(gw, "/console/integration").text)
    out = subprocess.run(["bash", "-c", snippets["curl"].replace(PLACEHOLDER, key)], capture_output=True,
                         timeout=30, text=True, check=True).stdout
    assert json.loads(out)["choices"][0]["message"]["content"] == "Hello!"
    out = subprocess.run(["bash", "-c", snippets["curl-stream"].replace(PLACEHOLDER, key)], capture_output=True,
                         timeout=30, text=True, check=True).stdout
    events = [line[6:] for line in out.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "Hello!"
    assert chunks[-1]["usage"]["completion_tokens"] >= 1


def test_the_environment_variables_configure_all_three_sdks(gw: GatewayProcess, key: str) -> None:
    exports = snippets_of(get(gw, "/console/integration").text)["env"].replace(PLACEHOLDER, key)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_", "GOOGLE_", "GEMINI_"))}
    env.update(re.findall(r"^export (\w+)=(\S+)$", exports, re.M))
    assert env["OPENAI_API_KEY"] == key
    hello = '[{"role": "user", "content": "Hi"}]'
    code = (f"import openai, anthropic\nfrom google import genai\n"
            f"print(openai.OpenAI().chat.completions.create(model='demo-echo', messages={hello})"
            f".choices[0].message.content)\n"
            f"print(anthropic.Anthropic().messages.create(model='demo-echo', max_tokens=50, messages={hello})"
            f".content[0].text)\n"
            f"gemini = genai.Client()  # kept in a name: a client that is collected closes its connections\n"
            f"print(gemini.models.generate_content(model='demo-echo', contents='Hi').text)\n")
    assert run_python(code, env) == "Hi\nHi\nHi\n"


# -- Client Integration: the error codes are the gateway's ------------------------------------


def error_code(response: requests.Response) -> str:
    return response.json()["error"]["code"]


def test_the_error_codes_listed_are_what_the_gateway_answers(gw: GatewayProcess, key: str) -> None:
    page = get(gw, "/console/integration").text
    listed = set(re.findall(r'<code class="error-code">([a-z_]+)</code>', page))
    base = base_url_on(page)
    body = {"model": "demo-echo", "messages": [{"role": "user", "content": "hi"}]}

    def chat(url: str, token: str | None, **params: str) -> requests.Response:
        headers = {"authorization": f"Bearer {token}"} if token is not None else {}
        return requests.post(url, json=body, headers=headers, params=params, timeout=20)

    poor = cli(gw.config, "accounts", "create", "public-poor", "--credit", "0.000001", env=gw.env)
    poor_key = cli(gw.config, "keys", "create", "--account", poor["name"], env=gw.env)["key"]
    seen = {
        (404, "unknown_url"): chat(base + "/v1/v1/chat/completions", key),  # /v1 doubled
        (404, "model_not_found"): requests.post(base + "/v1/chat/completions", json={**body, "model": "demo-ech0"},
                                                headers={"authorization": f"Bearer {key}"}, timeout=20),
        (401, "missing_api_key"): chat(base + "/v1/chat/completions", None),
        (401, "api_key_whitespace"): chat(base + "/v1/chat/completions", " " + key),  # "Bearer  sk-tt-..."
        (401, "api_key_in_url"): chat(base + "/v1/chat/completions", None, key=key),
        (401, "not_a_tokentoll_key"): chat(base + "/v1/chat/completions", "sk-proj-abcdef"),
        (401, "invalid_api_key"): chat(base + "/v1/chat/completions", "sk-tt-" + "Z" * 40),
        (402, "billing_shortfall"): chat(base + "/v1/chat/completions", poor_key),
    }
    missing_v1 = chat(base + "/chat/completions", key)
    assert missing_v1.status_code == 404 and error_code(missing_v1) == "unknown_url"
    assert f"Set base_url to {base}/v1" in missing_v1.json()["error"]["message"]
    for (status, code), response in seen.items():
        assert (response.status_code, error_code(response)) == (status, code), response.text
        assert code in listed, code
    for code in ("api_key_disabled", "api_key_expired", "api_key_quota_exceeded", "model_not_allowed",
                 "rate_limit_exceeded", "request_too_large_for_tpm"):
        assert code in listed, code


def test_the_root_sends_browsers_to_the_console_and_api_clients_to_the_base_url(gw: GatewayProcess) -> None:
    """Issue 18.12: GET / was a JSON 404 for everyone."""
    browser = requests.get(gw.url + "/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"},
                           allow_redirects=False, timeout=20)
    assert browser.status_code == 302 and browser.headers["location"] == "/console/"
    assert "Sign" in requests.get(gw.url + "/", timeout=20, headers={"Accept": "text/html"}).text  # lands on a page
    api = requests.get(gw.url + "/", headers={"Accept": "application/json"}, timeout=20)
    assert api.status_code == 404 and error_code(api) == "unknown_url"
    assert f"{gw.url}/v1/chat/completions" in api.json()["error"]["message"]
