"""Fuzz: every admin route, writes included, with the right token and hostile paths, queries and JSON bodies:
no 5xx, no Python error text, the admin API's error shape, and whatever was stored reads back (API and console)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import DEMO_ECHO, GatewayProcess, base_config, demo_provider, serve_gateway
from tests.security.test_key_scope import tron, tron_chain  # noqa: F401 - tron: the chain RPC fixture
from tests.test_fuzz import (
    FUZZ, PY_ERROR_TEXT, Reply, assert_dialect, assert_not_crashed, dumps, json_bodies, raw_request,
)
from tests.tron_stub import TronStub

TOKEN = "tt-admin-" + "i" * 40
OWNER = "inputs@example.com"  # a console log-in whose account the fuzzed keys belong to
LATEST_EXPIRY = datetime(3000, 1, 1, tzinfo=timezone.utc).timestamp()

# every admin route: method, path ({s}: a fuzzed segment), its query parameters, a valid body (None: none read)
KEY_BODY = {"monthly_limit": "5", "models": ["demo-echo"], "rpm": 5, "tpm": 100, "expires_at": "2030-01-01"}
ROUTES: list[tuple[str, str, tuple[str, ...], dict[str, Any] | None]] = [
    ("GET", "/admin/accounts", (), None),
    ("POST", "/admin/accounts", (), {"name": "made-by-fuzz", "credit": "1.5"}),
    ("GET", "/admin/keys", ("account",), None),
    ("POST", "/admin/keys", (), {"account": OWNER, "name": "fuzzed", **KEY_BODY}),
    ("POST", "/admin/keys/{s}/rotate", (), None),
    ("POST", "/admin/keys/{s}/disable", (), None),
    ("POST", "/admin/keys/{s}/enable", (), None),
    ("PATCH", "/admin/keys/{s}", (), {"name": "renamed", **KEY_BODY}),
    ("GET", "/admin/wallets/{s}", (), None),
    ("GET", "/admin/wallets/{s}/history", ("limit",), None),
    ("POST", "/admin/wallets/{s}/credit", (), {"usd": "1.25", "note": "fuzz credit"}),
    ("POST", "/admin/wallets/{s}/adjust", (), {"usd": "-0.5", "note": "fuzz adjustment"}),
    ("GET", "/admin/usage", ("account", "key", "month"), None),
    ("GET", "/admin/usage/{s}", (), None),
    ("GET", "/admin/holds", (), None),
    ("POST", "/admin/recharge/addresses", (), {"account": OWNER, "chain": "tron"}),
    ("GET", "/admin/recharge/deposits", ("account", "limit"), None),
    ("GET", "/admin/recharge/orders", ("account", "limit"), None),
    ("POST", "/admin/recharge/deposits/{s}/credit", (), {"note": "fuzz"}),
    ("POST", "/admin/recharge/chains/{s}/rescan", (), {"from_block": 5}),
]
NUMBERS = ["0", "1", "-1", "²", "٣", "1_0", "99999999999999999999999", "9223372036854775807", "9223372036854775808",
           "1001", "9999-12", "0000-01", "2026-13"]  # ids, limits and months that Python or SQLite take badly
HOSTILE = ["", "2", "1e3", "18446744073709551616", "fuzz", OWNER, "tron", "req_1", "2999-12", "%00", "%FF%FE",
           "..%2F..", "a" * 3000, "NaN", "none", "1000", " 5", "5 "]
texts = st.one_of(st.sampled_from(NUMBERS), st.sampled_from(HOSTILE), st.text(max_size=40))
offsets = st.integers(-1439, 1439).map(lambda m: timezone(timedelta(minutes=m)))
expiries = st.one_of(  # ISO moments anywhere in the calendar, at any offset, and other ways of writing dates
    st.builds(lambda d, tz: d.replace(tzinfo=tz).isoformat(), st.datetimes(), offsets),
    st.dates().map(str), st.datetimes().map(lambda d: d.strftime("%Y%m%dT%H%M%S")), texts,
    st.integers(-(2**70), 2**70), st.floats(), st.none())


@pytest.fixture(scope="module")
def gw(tron: TronStub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:  # noqa: F811
    def config(log_path: Path) -> str:
        return base_config(log_path) + demo_provider() + DEMO_ECHO + tron_chain(tron.url) + \
            "\n[console]\nsignups_per_hour = 100\n"

    yield from serve_gateway(tmp_path_factory.mktemp("admin-inputs"), config, {"TOKENTOLL_ADMIN_TOKEN": TOKEN},
                             "fuzz", "100", ("Traceback",))


@pytest.fixture(scope="module")
def owner(gw: GatewayProcess) -> Any:
    """The console visitor whose account the fuzzed keys are made in: its pages must load whatever was stored."""
    from tests.console_client import ConsoleClient

    visitor = ConsoleClient(gw.url)
    visitor.sign_up(OWNER)
    return visitor


def admin(gw: GatewayProcess, method: str, target: str, body: bytes = b"") -> Reply:
    headers: list[tuple[str, bytes | str]] = [("Authorization", f"Bearer {TOKEN}"),
                                              ("Content-Type", "application/json")]
    reply = raw_request(gw, method, target, headers, body)
    assert reply is not None, f"{method} {target}: no answer"
    return reply


def check(reply: Reply, what: str) -> None:
    """No 5xx nor Python's text; an error from the gateway in the admin API's shape (or, for a path no admin route
    matches, the gateway's own 404 or 405, which has the same fields)."""
    assert_not_crashed(reply, what)
    if reply.status >= 400 and reply.header("x-tt-request-id"):  # (hypercorn's own 400s for broken HTTP have none)
        assert_dialect(orjson.loads(reply.body), "openai", reply.status, what)


def reads_still_work(gw: GatewayProcess, owner: Any, what: str) -> None:
    """What the last request stored can be read back: the key lists and the wallets, and the owner's key page."""
    for target in ("/admin/keys", "/admin/accounts", f"/admin/keys?account={urllib.parse.quote(OWNER)}"):
        reply = admin(gw, "GET", target)
        assert reply.status == 200, f"after {what}: GET {target} is {reply.status} {reply.body[:300]!r}"
    for key in orjson.loads(admin(gw, "GET", "/admin/keys").body):
        assert key["expires_at"] is None or 0 <= key["expires_at"] < LATEST_EXPIRY, f"after {what}: {key}"
    page = owner.get("/console/keys")
    assert page.status_code == 200, f"after {what}: /console/keys is {page.status_code}"
    assert not [word for word in PY_ERROR_TEXT if word in page.text], f"after {what}: {page.text[:300]}"


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r[0]} {r[1]}")
@FUZZ
@given(data=st.data())
def test_every_admin_route_survives_hostile_input(gw: GatewayProcess, owner: Any,
                                                  route: tuple[str, str, tuple[str, ...], dict[str, Any] | None],
                                                  data: st.DataObject) -> None:
    method, template, params, base = route
    segment = urllib.parse.quote(data.draw(texts, label="segment"), safe="%")
    known = st.lists(st.sampled_from(params), max_size=3) if params else st.just([])
    names = data.draw(known | st.lists(st.sampled_from([*params, "limt", "key ", "x"]), max_size=3), label="params")
    query = "&".join(f"{urllib.parse.quote(n)}={urllib.parse.quote(data.draw(texts, label=n))}" for n in names)
    target = template.replace("{s}", segment) + (f"?{query}" if query else "")
    body = data.draw(json_bodies(base), label="body") if base is not None else data.draw(
        st.sampled_from([b"", b"{}", b"[", b'{"x": 1}']), label="body")
    what = f"{method} {target[:200]} body={body[:150]!r}"
    reply = admin(gw, method, target, body)
    check(reply, what)
    if method != "GET" and reply.status < 300:
        reads_still_work(gw, owner, what)


@FUZZ
@given(data=st.data())
def test_key_expiries_anywhere_in_the_calendar_are_refused_or_read_back(gw: GatewayProcess, owner: Any,
                                                                        data: st.DataObject) -> None:
    expiry = data.draw(expiries, label="expires_at")
    made = admin(gw, "POST", "/admin/keys", dumps({"account": OWNER, "name": "expiring", "expires_at": expiry}))
    check(made, f"POST /admin/keys expires_at={expiry!r}")
    if made.status == 201:
        key_id = orjson.loads(made.body)["id"]
        patched = admin(gw, "PATCH", f"/admin/keys/{key_id}", dumps({"expires_at": expiry}))
        check(patched, f"PATCH /admin/keys/{key_id} expires_at={expiry!r}")
        reads_still_work(gw, owner, f"an expiry of {expiry!r}")
