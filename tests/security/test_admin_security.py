"""The admin API's findings of issue 17 (5 and 9), on a real gateway: hostile inputs are 4xx in its JSON shape, dates
that would break a later read are refused, and failed tokens are throttled per address (429) and counted."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.conftest import DEMO_ECHO, GatewayProcess, base_config, demo_provider, serve_gateway
from tests.security.test_key_scope import tron, tron_chain  # noqa: F401 - tron: the chain RPC fixture
from tests.test_fuzz import PY_ERROR_TEXT
from tests.tron_stub import TronStub

TOKEN = "tt-admin-" + "s" * 40
HUGE = "99999999999999999999999"


@pytest.fixture(scope="module")
def gw(tron: TronStub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:  # noqa: F811
    def config(log_path: Path) -> str:  # 127.0.0.1 is a trusted proxy: X-Forwarded-For says who the client is
        return base_config(log_path, trusted_proxies=["127.0.0.1"]) + demo_provider() + DEMO_ECHO + \
            tron_chain(tron.url) + '\n[console]\nsignups_per_hour = 100\n'

    yield from serve_gateway(tmp_path_factory.mktemp("admin-security"), config, {"TOKENTOLL_ADMIN_TOKEN": TOKEN},
                             "sec", "5", ("Traceback",))


@pytest.fixture(scope="module")
def api(gw: GatewayProcess) -> httpx.Client:
    return httpx.Client(base_url=gw.url + "/admin", headers={"authorization": f"Bearer {TOKEN}"}, timeout=20)


def refused(reply: httpx.Response, status: int) -> str:
    """The admin API's own error shape with this status, and none of Python's error text; its message."""
    assert reply.status_code == status, (reply.status_code, reply.text)
    text = reply.text
    assert not [word for word in PY_ERROR_TEXT if word in text], text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error", error
    assert isinstance(error["message"], str) and isinstance(error["code"], str)
    return str(error["message"])


# -- finding 5: no 500 and no Python text from any admin input ------------------------------------


@pytest.mark.parametrize("limit", [HUGE, "9223372036854775808", "0", "-1", "1001", "²", "٣", "1_0", "", "abc", "5.0"])
def test_a_history_limit_out_of_range_is_a_400(api: httpx.Client, limit: str) -> None:
    message = refused(api.get("/wallets/sec/history", params={"limit": limit}), 400)
    assert message == "'limit' must be a whole number from 1 to 1000"
    assert len(api.get("/wallets/sec/history", params={"limit": "1"}).json()) == 1  # in range, it answers
    assert api.get("/wallets/sec/history", params={"limit": "1000"}).status_code == 200


def test_superscript_digits_are_a_400_without_pythons_message(api: httpx.Client) -> None:
    assert "invalid literal" not in refused(api.get("/usage", params={"key": "²"}), 400)
    for path in ("/recharge/orders", "/recharge/deposits"):
        refused(api.get(path, params={"limit": "²"}), 400)
    assert refused(api.get("/wallets/²"), 404) == "no account '²'"
    assert refused(api.get("/keys", params={"account": "²"}), 404) == "no account '²'"


def test_ids_past_what_sqlite_holds_name_nothing(api: httpx.Client) -> None:
    for method, path in [("POST", f"/keys/{HUGE}/rotate"), ("POST", f"/keys/{HUGE}/disable"),
                         ("POST", f"/keys/{HUGE}/enable"), ("PATCH", f"/keys/{HUGE}"),
                         ("POST", f"/recharge/deposits/{HUGE}/credit"), ("GET", f"/wallets/{HUGE}"),
                         ("GET", f"/wallets/{HUGE}/history")]:
        body: dict[str, Any] = {"note": "x"} if "credit" in path else {"rpm": 5} if method == "PATCH" else {}
        refused(api.request(method, path, json=body), 404)
    refused(api.get("/usage", params={"key": HUGE}), 400)
    refused(api.get("/usage", params={"key": "9223372036854775807"}), 404)  # SQLite's largest: simply no such key


def test_a_rescan_past_the_largest_block_is_a_400(api: httpx.Client) -> None:
    for block in (2**64 - 1, 2**63, -1, "5", 1.5, True, None):
        refused(api.post("/recharge/chains/tron/rescan", json={"from_block": block}), 400)
    assert api.post("/recharge/chains/tron/rescan", json={"from_block": 2**63 - 1}).status_code == 200


def test_a_month_past_the_calendar_is_a_400(api: httpx.Client) -> None:
    for month in ("9999-12", "0000-01", "2026-13", "2026-1", "２０２６-01"):
        message = refused(api.get("/usage", params={"month": month}), 400)
        assert "out of range" not in message and "is not a month like 2026-11" in message
    assert api.get("/usage", params={"month": "2999-12"}).status_code == 200


@pytest.mark.parametrize("expiry", ["9999-12-31T23:59:59-23:59", "9999-12-31", "0001-01-01T00:00:00+14:00",
                                   "0001-01-01", "3000-01-01", "2999-12-31T23:59:59-00:01", "29991231T235959-1400"])
def test_an_expiry_that_would_break_a_later_read_is_refused(api: httpx.Client, expiry: Any) -> None:
    before = api.get("/keys", params={"account": "sec"}).json()
    refused(api.post("/keys", json={"account": "sec", "expires_at": expiry}), 400)
    assert api.get("/keys", params={"account": "sec"}).json() == before  # no key made
    key_id = before[0]["id"] if before else api.post("/keys", json={"account": "sec"}).json()["id"]
    refused(api.patch(f"/keys/{key_id}", json={"expires_at": expiry}), 400)


def test_the_latest_expiry_is_stored_and_every_page_still_loads(gw: GatewayProcess, api: httpx.Client) -> None:
    from tests.console_client import ConsoleClient

    visitor = ConsoleClient(gw.url)
    visitor.sign_up("far-future@example.com")
    refused(api.post("/keys", json={"account": "far-future@example.com", "expires_at": "9999-12-31T23:59:59-23:59"}),
            400)  # the expiry: stored, it made /console/keys a 500 on every load
    made = api.post("/keys", json={"account": "far-future@example.com", "name": "far",
                                   "expires_at": "2999-12-31T23:59:59+14:00"})
    assert made.status_code == 201, made.text
    assert api.get("/keys", params={"account": "far-future@example.com"}).status_code == 200
    assert api.get("/accounts").status_code == 200
    page = visitor.get("/console/keys")
    assert page.status_code == 200 and "far" in page.text
    assert visitor.get("/console/dashboard").status_code == 200


@pytest.mark.parametrize("field,value", [("rpm", "٣"), ("tpm", "1_000"), ("rpm", " 1_0 "), ("monthly_limit", "١٢"),
                                         ("monthly_limit", "1_0")])
def test_key_settings_take_ascii_digits_only(api: httpx.Client, field: str, value: Any) -> None:
    refused(api.post("/keys", json={"account": "sec", field: value}), 400)


def test_unknown_parameters_and_fields_are_refused(api: httpx.Client) -> None:
    assert "unknown query parameter" in refused(api.get("/wallets/sec/history", params={"limt": "5"}), 400)
    assert "more than once" in refused(api.get("/wallets/sec/history?limit=5&limit=6"), 400)
    assert "unknown field" in refused(api.post("/wallets/sec/credit", json={"usd": "1", "nte": "x"}), 400)
    refused(api.post("/accounts", content=b"x" * (70 * 1024)), 413)
    assert api.get("/wallets/sec").json()["balance"] == 5 * 10**9  # nothing was credited


# -- finding 9: failed admin-token attempts are throttled per address and counted --------------------


def failures_counted(gw: GatewayProcess) -> float:
    found = re.search(r"^tokentoll_admin_auth_failures_total (\S+)$", httpx.get(gw.url + "/metrics").text, re.M)
    assert found, "the counter is exported"
    return float(found.group(1))


def from_address(gw: GatewayProcess, address: str, token: str) -> httpx.Response:
    return httpx.get(gw.url + "/admin/holds", headers={"authorization": f"Bearer {token}",
                                                       "x-forwarded-for": address}, timeout=20)


def test_failed_admin_tokens_are_throttled_per_address_and_counted(gw: GatewayProcess) -> None:
    from core.admin import FAILURE_WINDOW, MAX_FAILURES

    attacker, operator = "203.0.113.7", "198.51.100.20"
    counted = failures_counted(gw)
    for attempt in range(MAX_FAILURES):
        refused(from_address(gw, attacker, f"tt-admin-guess-{attempt}"), 401)
    throttled = from_address(gw, attacker, "tt-admin-guess-again")
    assert "too many failed admin-token attempts" in refused(throttled, 429)
    assert 0 < int(throttled.headers["retry-after"]) <= FAILURE_WINDOW
    # the right token from that address waits too (a throttle that let it through would confirm a guess)
    refused(from_address(gw, attacker, TOKEN), 429)
    assert failures_counted(gw) == counted + MAX_FAILURES + 1  # every wrong token; the right one is no failure
    # another address is not throttled, nor is the same /64 of IPv6 confused with an IPv4 client
    assert from_address(gw, operator, TOKEN).status_code == 200
    refused(from_address(gw, operator, "wrong"), 401)
    assert from_address(gw, "2001:db8::1", TOKEN).status_code == 200
    assert failures_counted(gw) == counted + MAX_FAILURES + 2


def test_the_throttle_window_passes_on_its_clock_and_memory_stays_bounded() -> None:
    from core.admin import FailedAttempts

    now = [1000.0]
    attempts = FailedAttempts(limit=3, window=60, max_addresses=100, clock=lambda: now[0])
    for _ in range(3):
        assert attempts.retry_after("192.0.2.1") is None
        attempts.failed("192.0.2.1")
    assert attempts.retry_after("192.0.2.1") == 60
    assert attempts.retry_after("::ffff:192.0.2.1") == 60  # the same client on a dual-stack socket
    now[0] += 59.5
    assert attempts.retry_after("192.0.2.1") == 1
    now[0] += 0.5
    assert attempts.retry_after("192.0.2.1") is None  # the window has passed
    for _ in range(3):  # one IPv6 host owns its /64: its addresses count together
        attempts.failed(f"2001:db8:1:2::{_ + 1}")
    assert attempts.retry_after("2001:db8:1:2:ffff::9") == 60 and attempts.retry_after("2001:db8:1:3::1") is None
    for n in range(10_000):  # a caller with many addresses cannot grow the memory
        attempts.failed(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}")
    assert len(attempts) == 100
    assert attempts.retry_after("2001:db8:1:2::1") is None  # the oldest window went first


def test_the_admin_api_lets_the_right_token_in_again_once_the_window_passes() -> None:
    """In-process, on a clock the test moves: after the window the same address gets in with the right token."""
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from billing.keys import digest
    from core.admin import AdminAPI, FailedAttempts
    from core.metrics import Metrics

    class Ops:
        async def holds(self) -> list[Any]:
            return []

    now = [0.0]
    metrics = Metrics()
    attempts = FailedAttempts(limit=2, window=30, clock=lambda: now[0])
    admin = AdminAPI(Ops(), None, metrics, attempts=attempts)  # type: ignore[arg-type]
    admin.token_hash = digest("right")
    client = TestClient(Starlette(routes=admin.routes()))

    def holds(token: str) -> int:
        return client.get("/admin/holds", headers={"authorization": f"Bearer {token}"}).status_code

    assert [holds("wrong"), holds("wrong"), holds("wrong"), holds("right")] == [401, 401, 429, 429]
    assert client.get("/admin/holds", headers={"authorization": "Bearer right"}).headers["retry-after"] == "30"
    now[0] = 30.0
    assert holds("right") == 200
    assert [holds("wrong"), holds("right"), holds("wrong")] == [401, 200, 401]  # a success starts the count again
    assert metrics.registry.get_sample_value("tokentoll_admin_auth_failures_total") == 5
