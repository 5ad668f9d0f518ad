"""The browser tests' plumbing, end to end: a real gateway, a real headless chromium (tests/browser.py), one
page load of /healthz, what the page shows, and a screenshot in tests/out/screenshots/."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser import browser, page, screenshot  # noqa: F401
from tests.conftest import GatewayProcess, base_config, demo_provider, serve_gateway


def gateway_config(log_path: Path) -> str:
    return base_config(log_path) + demo_provider() + """
[models.demo-echo]
provider = "demo"
upstream_model = "echo"
max_output_tokens = 64
price = { input = "0.50", output = "1.50" }
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    yield from serve_gateway(tmp_path_factory.mktemp("browser-gw"), gateway_config, {}, "browser", "1",
                             ("Traceback",))


def test_healthz_in_chromium(page: Page, gw: GatewayProcess) -> None:
    response = page.goto(gw.url + "/healthz")
    assert response is not None and response.status == 200
    assert response.headers["content-type"].startswith("application/json")
    body = page.locator("body")
    expect(body).to_contain_text('"status"')
    assert json.loads(page.locator("pre").first.inner_text()) == {"status": "ok"}
    assert page.url == gw.url + "/healthz"
    shot = screenshot(page, "healthz")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
