"""The console in a real headless chromium (tests/browser.py): what a person does there, click by click, with the
official SDK on the side, and a screenshot of each page in tests/out/screenshots/ for a human to look at."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from playwright.sync_api import Page, expect

from tests.browser import browser, page, screenshot  # noqa: F401
from tests.conftest import GatewayProcess, base_config, cli, demo_provider, serve_gateway
from tests.console_client import PASSWORD

MSG = [{"role": "user", "content": "hello from the browser test"}]
MODELS = """
[models.demo-echo]
provider = "demo"
upstream_model = "echo"
max_output_tokens = 64
price = { input = "0.50", output = "1.50", cache_read = "0.05", cache_write = "0.625" }

[models.demo-image]
provider = "demo"
upstream_model = "image"
max_output_tokens = 1
price = { input = "0", output = "0", image = { "1024x1024" = "0.02", "1024x1024/hd" = "0.04" } }
"""


def gateway_config(log_path: Path) -> str:
    return base_config(log_path) + demo_provider() + MODELS


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    yield from serve_gateway(tmp_path_factory.mktemp("console-browser"), gateway_config, {}, "operators", "0",
                             ("Traceback",))


def sdk(gw: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def sign_up(page: Page, gw: GatewayProcess) -> str:
    address = f"browser-{secrets.token_hex(4)}@example.com"
    page.goto(gw.url + "/console/signup")
    page.get_by_label("E-mail").fill(address)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password again").fill(PASSWORD)
    page.get_by_role("button", name="Create my account").click()
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

    # use it with the openai SDK; the request shows up with its cost
    reply = sdk(gw, key).chat.completions.create(model="demo-echo", messages=MSG)
    assert reply.choices[0].message.content
    page.get_by_role("link", name="Dashboard").click()
    expect(page.locator("table.usage")).to_contain_text("demo-echo")
    expect(page.locator("#balance")).not_to_have_text("$2.00")
    screenshot(page, "dashboard-after-a-request")

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
