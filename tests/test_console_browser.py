"""The console in a real headless chromium (tests/browser.py): what a person does there, click by click, with the
official SDK on the side, and a screenshot of each page in tests/out/screenshots/ for a human to look at."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator

import openai
import pytest
from playwright.sync_api import Page, expect

from tests.browser import browser, page, screenshot  # noqa: F401
from tests.chain.ganache import Chain, Token
from tests.chain.gateway_config import CONFIRMATIONS, USDT, chain_sections
from tests.conftest import DEMO_ECHO, GatewayProcess, base_config, cli, demo_provider, serve_gateway
from tests.console_client import PASSWORD

pytest_plugins = ["tests.chain.fixtures"]
pytestmark = pytest.mark.slow

MSG = [{"role": "user", "content": "hello from the browser test"}]
MODELS = DEMO_ECHO + """
[models.demo-image]
provider = "demo"
upstream_model = "image"
max_output_tokens = 1
price = { input = "0", output = "0", image = { "1024x1024" = "0.02", "1024x1024/hd" = "0.04" } }
"""


OPERATOR, OPERATOR_PASSWORD = "operator@example.com", "operator password"


@pytest.fixture(scope="module")
def gw(chain: Chain, token: Token, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway with the demo models, USDT recharge on the local chain, and an operator log-in."""
    token.mint(token.deployer, 100 * USDT)
    start = chain.block_number()
    for gateway in serve_gateway(tmp_path_factory.mktemp("console-browser"),
                                 lambda log: base_config(log) + demo_provider() + MODELS
                                 + chain_sections(chain.url, token, start, order_ttl=600),
                                 {}, "operators", "0", ("Traceback",)):
        cli(gateway.config, "users", "create", OPERATOR, "--account", "operators", "--operator",
            env={**gateway.env, "TOKENTOLL_PASSWORD": OPERATOR_PASSWORD})
        yield gateway


def sdk(gw: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def sign_up(page: Page, gw: GatewayProcess) -> str:
    address = f"browser-{secrets.token_hex(4)}@example.com"
    page.goto(gw.url + "/console/signup")
    page.get_by_label("E-mail").fill(address)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password again").fill(PASSWORD)
    screenshot(page, "sign-up")
    page.get_by_role("button", name="Create my account").click()
    # a sign-up answers alike whether or not the address was registered: to the log-in page, with a note
    expect(page).to_have_url(gw.url + "/console/login")
    expect(page.locator(".flash")).to_contain_text("If that address was new here, its account is ready")
    screenshot(page, "signed-up")
    page.get_by_label("E-mail").fill(address)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(gw.url + "/console/dashboard")
    return address


def test_keys_shown_once_used_rotated_and_limited(page: Page, gw: GatewayProcess) -> None:
    address = sign_up(page, gw)
    expect(page.locator("#balance")).to_have_text("$0.00")
    screenshot(page, "dashboard-new-account")
    cli(gw.config, "wallet", "credit", address, "2", env=gw.env)

    # create a key: its secret appears once, with a copy button
    page.get_by_role("link", name="API keys").click()
    page.get_by_label("Name").first.fill("laptop")
    page.get_by_role("button", name="Create key").click()
    revealed = page.locator("#revealed-key")
    expect(revealed).to_have_text(re.compile(r"^sk-tt-[A-Za-z0-9]{32,}$"))
    key = revealed.inner_text()
    expect(page.locator("#reveal")).to_be_visible()
    expect(page.locator("#reveal button.copy")).to_be_visible()
    expect(page.locator("#keys")).to_contain_text("laptop")
    screenshot(page, "keys-created")
    page.reload()
    expect(page.locator("#reveal")).to_be_hidden()
    assert key not in page.content()  # gone for good after a reload

    # use it with the openai SDK; the request shows up in Usage with its cost
    raw = sdk(gw, key).chat.completions.with_raw_response.create(model="demo-echo", messages=MSG)
    request_id = raw.headers["x-tt-request-id"]
    assert raw.parse().choices[0].message.content
    cost = cli(gw.config, "usage", "--request", request_id, env=gw.env)["cost_usd"].rstrip("0")
    page.get_by_role("link", name="Dashboard").click()
    expect(page.locator("table.usage")).to_contain_text("demo-echo")
    expect(page.locator("#balance")).not_to_have_text("$2.00")
    screenshot(page, "dashboard-after-a-request")
    page.get_by_role("link", name="Usage", exact=True).click()
    row = page.locator("table.usage tbody tr", has_text=request_id)
    expect(row).to_contain_text("demo-echo")
    expect(row).to_contain_text("$" + cost)
    screenshot(page, "usage")
    page.get_by_label("Request ID").fill(request_id)
    page.get_by_role("button", name="Open").click()
    expect(page.locator("#request-id")).to_have_text(request_id)
    expect(page.locator("#charged")).to_have_text("$" + cost)
    expect(page.locator("#breakdown")).to_contain_text("Output")
    screenshot(page, "usage-request")

    # rotate, with a confirmation: the old secret fails at once, the new one works
    page.get_by_role("link", name="API keys").click()
    row = page.locator("#keys tbody tr", has_text="laptop")
    row.get_by_text("Rotate…").click()
    row.get_by_role("button", name="Rotate now").click()
    expect(revealed).not_to_have_text(key)
    expect(revealed).to_have_text(re.compile(r"^sk-tt-"))
    new_key = revealed.inner_text()
    screenshot(page, "keys-rotated")
    with pytest.raises(openai.AuthenticationError):
        sdk(gw, key).chat.completions.create(model="demo-echo", messages=MSG)
    assert sdk(gw, new_key).chat.completions.create(model="demo-echo", messages=MSG).choices

    # a monthly limit, set in the page, is what the gateway enforces
    row = page.locator("#keys tbody tr", has_text="laptop")
    row.get_by_text("Limits…").click()
    row.get_by_label("Monthly limit, USD").fill("0.000001")
    row.get_by_role("button", name="Save").click()
    expect(page.locator(".flash")).to_have_text("The key laptop was saved.")
    expect(page.locator("#keys tbody tr", has_text="laptop")).to_contain_text("$0.000001")
    with pytest.raises(openai.APIStatusError) as refused:
        sdk(gw, new_key).chat.completions.create(model="demo-echo", messages=MSG)
    assert refused.value.status_code == 402 and "api_key_quota_exceeded" in str(refused.value.body)
    screenshot(page, "keys-limited")


def test_prices_and_client_integration_need_no_log_in(page: Page, gw: GatewayProcess) -> None:
    page.goto(gw.url + "/console/prices")
    table = page.locator("#prices")
    expect(table.locator("tbody tr", has_text="demo-echo")).to_contain_text("$0.625")  # cache write, per 1M
    expect(table.locator("tbody tr", has_text="demo-image")).to_contain_text("$0.04")
    page.get_by_label("Search").fill("image")
    expect(table.locator("tbody tr", has_text="demo-echo")).to_be_hidden()
    expect(table.locator("tbody tr", has_text="demo-image")).to_be_visible()
    page.get_by_label("Search").fill("")
    screenshot(page, "prices")
    page.get_by_role("link", name="Client Integration").click()
    expect(page.locator("#base-url")).to_have_text(gw.url)
    expect(page.locator("#url-openai")).to_have_text(gw.url + "/v1")
    page.get_by_role("tab", name="Python: anthropic").click()
    expect(page.locator("#panel-python-anthropic")).to_be_visible()
    expect(page.locator("#panel-python-anthropic")).to_contain_text(f'base_url="{gw.url}"')
    expect(page.locator("#panel-curl")).to_be_hidden()
    screenshot(page, "integration")
    expect(page.locator("header .who")).to_contain_text("Log in")  # nobody is logged in here


def test_a_recharge_order_reaches_credited_after_a_deposit_on_the_test_chain(page: Page, gw: GatewayProcess,
                                                                             chain: Chain, token: Token) -> None:
    sign_up(page, gw)
    page.get_by_role("link", name="Recharge").first.click()
    expect(page.locator("#available")).to_have_text("$0.00")
    page.get_by_label("Amount, USDT").fill("7.25")
    page.get_by_role("button", name="Create order").click()
    expect(page.locator("#order-status")).to_have_text("pending")
    expect(page.locator("#order-amount")).to_have_text("7.25")
    expect(page.locator("svg.qr-code")).to_be_visible()
    expect(page.locator("#order-time-left")).to_have_text(re.compile(r"^(9|10):\d\d$"))
    screenshot(page, "recharge-order-pending")
    address = page.locator("#order-address").inner_text()
    paid = token.transfer(token.deployer, address, 7_250_000)
    # the page follows the order by itself: confirming k/N, then credited
    expect(page.locator("#order-status")).to_have_text(re.compile(rf"^confirming [12]/{CONFIRMATIONS}$"))
    screenshot(page, "recharge-order-confirming")
    chain.mine(CONFIRMATIONS)
    expect(page.locator("#order-status")).to_have_text("credited")
    screenshot(page, "recharge-order-credited")
    page.get_by_role("link", name="Recharge").first.click()
    expect(page.locator("#deposits")).to_contain_text(paid.hash)
    expect(page.locator("#available")).to_have_text("$7.25")
    screenshot(page, "recharge-records")


def test_an_operator_adjusts_a_balance_and_the_ledger_shows_it(page: Page, gw: GatewayProcess) -> None:
    address = sign_up(page, gw)
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("link", name="Admin")).to_have_count(0)
    page.get_by_label("E-mail").fill(OPERATOR)
    page.get_by_label("Password").fill(OPERATOR_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("link", name="Admin").click()
    screenshot(page, "admin")
    page.get_by_role("link", name=address).click()
    form = page.locator("#adjust-form")
    form.get_by_label("Amount, USD").fill("3.50")
    form.get_by_label("Reason (kept in the ledger)").fill("goodwill for the outage")
    form.get_by_role("button").click()
    expect(page.locator(".flash")).to_contain_text("goodwill for the outage")
    expect(page.locator("#balance")).to_have_text("$3.50")
    newest = page.locator("#ledger tbody tr").first
    expect(newest).to_contain_text("adjustment")
    expect(newest).to_contain_text("goodwill for the outage")
    screenshot(page, "admin-account-adjusted")
    history = cli(gw.config, "wallet", "history", address, env=gw.env)
    assert history[0]["kind"] == "adjustment" and history[0]["note"] == "goodwill for the outage"
    for path, name in (("/console/admin/holds", "admin-holds"), ("/console/admin/deposits", "admin-deposits"),
                       ("/console/admin/upstreams", "admin-upstreams")):
        assert page.goto(gw.url + path).status == 200
        screenshot(page, name)
    page.goto(gw.url + "/console/password")
    screenshot(page, "change-password")
    page.get_by_role("button", name="Log out").click()
    screenshot(page, "log-in")
