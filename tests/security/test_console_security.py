"""Regression tests for the console findings of issue 17, each replaying the exact input of the report against a real
gateway: non-ASCII digits in filters, a far-future key expiry, strangers locking an owner out, sign-up enumeration."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from billing import store
from billing.ledger import Ledger
from billing.store import engine
from core.operations import Operations
from tests.conftest import DEMO_ECHO, GatewayProcess, base_config, cli, demo_provider, serve_gateway
from tests.console_client import PASSWORD, ConsoleClient
from tests.test_fuzz import PY_ERROR_TEXT

FAR_EXPIRY = "9999-12-31T23:59:59-23:59"  # in UTC: the first day of the year 10000
FAR_SECONDS = 253402387139  # ...what an older gateway stored for it
OWNER = "owner@example.com"
ATTEMPTS = 5  # [console] login_attempts, the default
WINDOW = 600.0


def config(log: Path) -> str:
    """Behind a "proxy" on loopback (X-Forwarded-For is believed, so each test client can have its own address);
    the default of five failed log-ins per window, sign-ups not limited (every test signs up from 127.0.0.1)."""
    return (base_config(log, trusted_proxies=["127.0.0.1"]) + demo_provider() + DEMO_ECHO
            + f"\n[console]\nlogin_window = {WINDOW}\nsignups_per_hour = 100000\n")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    yield from serve_gateway(tmp_path_factory.mktemp("console-security"), config, {}, "house", "0",
                             ("Traceback",))


@pytest.fixture(scope="module")
def member(gw: GatewayProcess) -> ConsoleClient:
    """A logged-in account holder with one API key."""
    c = visitor(gw)
    c.sign_up("member@example.com")
    assert c.post("/console/keys", {"name": "mine"}, headers={"Accept": "application/json"}).status_code == 200
    return c


def visitor(gw: GatewayProcess, address: str | None = None) -> ConsoleClient:
    """A console visitor, from its own client address when given (as the trusted proxy says)."""
    c = ConsoleClient(gw.url)
    if address is not None:
        c.http.headers["X-Forwarded-For"] = address
    return c


def alert(html: str) -> str:
    found = re.search(r'role="alert">([^<]*)', html)
    return found.group(1) if found else ""


def assert_clean(r: requests.Response, status: int) -> None:
    """The status expected, an HTML page in the console's style, and none of Python's error text."""
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert "text/html" in r.headers["content-type"]
    leaked = [word for word in PY_ERROR_TEXT if word in r.text]
    assert not leaked, (leaked, r.text[:500])


# -- 1. non-ASCII digits in the Usage filters ----------------------------------------------------------


def test_superscript_digits_in_usage_filters_are_a_400_with_a_message(member: ConsoleClient) -> None:
    """The report's inputs: str.isdigit() took '²', and int() refused it: a 500 with a traceback (for ?key=², and a
    status of three superscripts; ?status=²² was already a 400, its length being wrong). Now: ASCII digits only."""
    for query, field in (("status=²²", "Status:"), ("status=²²²", "Status:"), ("key=²", "Key:"),
                         ("offset=²", "Offset:")):
        for path in ("/console/usage", "/console/usage.csv"):
            if path.endswith(".csv") and query.startswith("offset"):
                continue  # the CSV has no pages
            r = member.get(f"{path}?{query}")
            assert_clean(r, 400)
            assert field in alert(r.text) or field in r.text, (query, r.text[:500])


@pytest.mark.parametrize("query, field", [
    ("key=٣", "Key:"), ("offset=١٠", "Offset:"), ("status=४२९", "Status:"), ("key=" + "9" * 40, "Key:"),
    ("offset=" + "9" * 5000, "Offset:"), ("from=２０２４-01-01", "From:"), ("to=٢٠٢٤-٠١-٠١", "To:"),
    ("key=1_0", "Key:"), ("offset=%2B5", "Offset:")])
def test_other_scripts_digits_and_huge_numbers_in_usage_filters_are_a_400(member: ConsoleClient, query: str,
                                                                          field: str) -> None:
    for path in ("/console/usage", "/console/usage.csv"):
        if path.endswith(".csv") and query.startswith("offset"):
            continue
        r = member.get(f"{path}?{query}")
        assert_clean(r, 400)
        assert field in r.text, r.text[:500]


# -- 2. a key expiry past the year 9999 in UTC --------------------------------------------------------


def test_a_far_future_expiry_is_refused_and_the_keys_page_still_loads(gw: GatewayProcess) -> None:
    """9999-12-31T23:59:59-23:59 was stored; datetime could not show it (year 10000 in UTC), so /console/keys was
    a 500 on every load. Now the form refuses it, and a value stored before shows as "never"."""
    address = "expiry@example.com"
    c = visitor(gw)
    c.sign_up(address)

    def names() -> list[str]:
        return [k["name"] for k in cli(gw.config, "keys", "list", "--account", address, env=gw.env)]
    r = c.post("/console/keys", {"name": "far", "expires_at": FAR_EXPIRY})
    assert_clean(r, 400)
    assert "Expires on:" in alert(r.text) and "before 3000" in alert(r.text)
    r = c.post("/console/keys", {"name": "far", "expires_at": FAR_EXPIRY}, headers={"Accept": "application/json"})
    assert r.status_code == 400 and "before 3000" in r.json()["error"]
    for refused in ("3000-01-01", "2999-12-31T23:59:59-00:01", "10000-01-01", "٢٠٣٠-٠١-٠١", "2030-02-30",
                    "2030-01-01T00:00:00+24:00", "0001-01-01T00:00:00+01:00", "+2030-01-01"):
        assert_clean(c.post("/console/keys", {"name": "far", "expires_at": refused}), 400)
    assert_clean(c.get("/console/keys"), 200)
    assert names() == []  # nothing was made
    # the last moment accepted, and the edit form refuses the far one too
    made = c.post("/console/keys", {"name": "late", "expires_at": "2999-12-31T23:59:59Z"},
                  headers={"Accept": "application/json"}).json()
    assert_clean(c.post(f"/console/keys/{made['id']}", {"name": "late", "expires_at": FAR_EXPIRY}), 400)
    assert "2999-12-31" in c.get("/console/keys").text and names() == ["late"]
    # the moment itself, as an older gateway stored it, no longer breaks the page: it shows as never
    with sqlite3.connect(gw.config.parent / "tokentoll.db") as db:
        db.execute("UPDATE api_keys SET expires_at = ? WHERE id = ?", (FAR_SECONDS, made["id"]))
    page = c.get("/console/keys")
    assert_clean(page, 200)
    assert "2999-12-31" not in page.text and "late" in page.text
    assert_clean(c.get("/console/dashboard"), 200)


# -- 3. strangers locking an owner out ------------------------------------------------------------------


def test_wrong_passwords_from_strangers_do_not_lock_the_owner_out(gw: GatewayProcess) -> None:
    """Five wrong passwords from any addresses locked the account for 15 minutes, the right password refused too.
    Now the failures count per (e-mail, client address), per client address, and per account only for clients
    that never logged in to it: they slow strangers and never refuse the owner at the owner's own address."""
    cli(gw.config, "users", "create", OWNER, "--account", "house", env={**gw.env, "TOKENTOLL_PASSWORD": PASSWORD})
    assert visitor(gw, "198.51.100.10").log_in(OWNER).status_code == 303  # the owner's own address, known now
    attacker = visitor(gw, "203.0.113.66")
    statuses = [attacker.log_in(OWNER, f"guess number {i}").status_code for i in range(ATTEMPTS + 2)]
    assert statuses == [401] * ATTEMPTS + [429, 429]
    refused = attacker.log_in(OWNER)  # the stranger's client stays throttled, whatever it sends
    assert refused.status_code == 429 and "Too many failed log-ins. Try again in" in alert(refused.text)
    # more strangers, all at once, each from an address of its own
    strangers = [visitor(gw, f"203.0.113.{i}") for i in range(1, 4)]
    with ThreadPoolExecutor(len(strangers)) as pool:
        tried = list(pool.map(lambda s: [s.log_in(OWNER, "wrong again!").status_code for _ in range(ATTEMPTS + 1)],
                              strangers))
    assert all(t == [401] * ATTEMPTS + [429] for t in tried), tried
    # 20 failures from clients the account never saw log in: the account refuses new clients for the window...
    assert visitor(gw, "192.0.2.200").log_in(OWNER).status_code == 429
    owner = visitor(gw, "198.51.100.10")  # ...never the owner's own address
    assert owner.log_in(OWNER).status_code == 303
    page = owner.get("/console/dashboard")
    assert page.status_code == 200 and OWNER in page.text


def test_one_client_is_throttled_across_every_account_it_tries(gw: GatewayProcess) -> None:
    """Spraying one password over many addresses from one client stops at 4x login_attempts, for every address:
    the others' clients are untouched."""
    sprayer = visitor(gw, "192.0.2.77")
    statuses = [sprayer.log_in(f"nobody-{i}@example.com", "Password123!").status_code for i in range(4 * ATTEMPTS + 1)]
    assert statuses == [401] * (4 * ATTEMPTS) + [429]
    assert sprayer.log_in("someone-else@example.com").status_code == 429
    c = visitor(gw, "198.51.100.11")
    c.sign_up("unbothered@example.com")
    assert c.get("/console/dashboard").status_code == 200


def test_the_throttle_rule_with_a_clock(tmp_path: Path) -> None:
    """The rule at the store, at chosen times: a pair stops at login_attempts, a client at 4x across addresses,
    both come back when the window passes; a success forgets that pair's failures but never the client's count; and
    a log-in no longer clears the sign-ups' longer window."""
    from core.console.web import client_bucket, known_client_subject, login_subjects  # (loads on the old code too)

    conn = engine.connect(str(tmp_path / "books.db"))
    engine.migrate(conn)

    def take(subjects: list[tuple[str, int]], now: float, window: float = WINDOW) -> list[int]:
        rows, _ = store.tx_take_attempt(conn, subjects, now - window, now, 3600.0)
        return rows

    stranger, owner = client_bucket("203.0.113.5"), client_bucket("198.51.100.5")
    for i in range(ATTEMPTS):
        assert take(login_subjects(OWNER, stranger, ATTEMPTS), 1000.0 + i)
    assert not take(login_subjects(OWNER, stranger, ATTEMPTS), 1010.0)  # the stranger's pair is spent...
    assert take(login_subjects(OWNER, owner, ATTEMPTS), 1010.0)  # ...the owner's is not
    for i in range(3 * ATTEMPTS):
        assert take(login_subjects(f"x{i}@example.com", stranger, ATTEMPTS), 1020.0 + i)
    assert not take(login_subjects("fresh@example.com", stranger, ATTEMPTS), 1040.0)  # the client is spent
    assert take(login_subjects("fresh@example.com", stranger, ATTEMPTS), 1000.0 + WINDOW + 25)  # window passed
    # a success gives its rows back and clears the pair, never the client's count across accounts
    rows = take(login_subjects("mine@example.com", owner, ATTEMPTS), 2000.0)
    pair, client = login_subjects("mine@example.com", owner, ATTEMPTS)
    before = conn.execute("SELECT COUNT(*) FROM login_failures WHERE subject = ?", (client[0],)).fetchone()[0]
    store.tx_give_back_attempt(conn, rows, pair[0])
    assert conn.execute("SELECT COUNT(*) FROM login_failures WHERE subject = ?", (pair[0],)).fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM login_failures WHERE subject = ?",
                        (client[0],)).fetchone()[0] == before - 1
    # the account across clients it never saw log in: 4x login_attempts, then refused for them, not for a known one
    spread = [client_bucket(f"192.0.2.{i}") for i in range(4 * ATTEMPTS)]
    for i, c in enumerate(spread):
        assert take(login_subjects("target@example.com", c, ATTEMPTS, known_client=False), 3000.0 + i)
    assert not take(login_subjects("target@example.com", client_bucket("192.0.2.250"), ATTEMPTS,
                                   known_client=False), 3030.0)
    assert take(login_subjects("target@example.com", owner, ATTEMPTS, known_client=True), 3030.0)
    mark = known_client_subject("target@example.com", owner)
    store.tx_give_back_attempt(conn, [], None, mark, 3031.0)
    assert store.tx_marked_since(conn, mark, 3000.0) and not store.tx_marked_since(conn, mark, 3032.0)
    take([("signup:192.0.2.9", 5)], 3031.0 + 7200.0)  # a later purge of the windows keeps the mark
    assert store.tx_marked_since(conn, mark, 3000.0)
    # IPv6: one /64 is one client; IPv4-mapped addresses are their IPv4 address
    assert client_bucket("2001:db8:1:2:aaaa::1") == client_bucket("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert client_bucket("::ffff:203.0.113.5") == "203.0.113.5"
    # the sign-ups of the last hour survive a log-in's purge of its shorter window
    signups = [("signup:192.0.2.1", 2)]
    assert take(signups, 5000.0, 3600.0) and take(signups, 5001.0, 3600.0)
    take(login_subjects("late@example.com", owner, ATTEMPTS), 5000.0 + WINDOW + 100)
    assert not take(signups, 5000.0 + WINDOW + 200, 3600.0)
    conn.close()


# -- 4. sign-up tells nothing about the address --------------------------------------------------------


def comparable(r: requests.Response) -> tuple[Any, ...]:
    """What a visitor sees of an answer, less what differs for every visitor (CSRF tokens, cookie values)."""
    cookies = sorted(c.split("=")[0] + ";" + c.split(";", 1)[1] if ";" in c else c.split("=")[0]
                     for c in r.raw.headers.getlist("set-cookie"))
    flash = [c.split(";")[0] for c in r.raw.headers.getlist("set-cookie") if c.startswith("tt_flash=")]
    body = re.sub(r'name="csrf_token" value="[^"]+"', 'name="csrf_token" value=""', r.text)
    return r.status_code, r.headers.get("location"), cookies, flash, body


def test_sign_up_answers_alike_for_a_registered_and_a_new_address(gw: GatewayProcess) -> None:
    """Sign-up said "… is already registered". Now both get the same 303 to the log-in page with the same note, no
    session either way; for the registered address nothing is made or changed."""
    registered = "taken@example.com"
    visitor(gw).sign_up(registered)
    users_before = cli(gw.config, "users", "list", env=gw.env)
    old, new = visitor(gw), visitor(gw)
    answers = [c.sign_up_only(address, "a different password")
               for c, address in ((old, registered), (new, "brand-new@example.com"))]
    assert comparable(answers[0]) == comparable(answers[1])
    assert answers[0].status_code == 303 and answers[0].headers["location"] == "/console/login"
    assert not any(c.startswith("tt_session=") for r in answers for c in r.raw.headers.getlist("set-cookie"))
    pages = [c.get("/console/login") for c in (old, new)]
    assert comparable(pages[0]) == comparable(pages[1]) and 'role="status"' in pages[0].text
    # the registered address is as it was: same user, same password; the new one can log in
    users_after = cli(gw.config, "users", "list", env=gw.env)
    assert [u for u in users_after if u["email"] == registered] == [u for u in users_before
                                                                    if u["email"] == registered]
    assert visitor(gw).log_in(registered).status_code == 303
    assert visitor(gw).log_in(registered, "a different password").status_code == 401
    assert visitor(gw).log_in("brand-new@example.com", "a different password").status_code == 303
    # the form's own refusals do not depend on the address either
    refusals = [visitor(gw).sign_up_only(address, "short", "short") for address in (registered, "other@example.com")]
    assert [r.status_code for r in refusals] == [400, 400]
    assert alert(refusals[0].text) == alert(refusals[1].text) and "at least 10" in alert(refusals[0].text)


def test_sign_up_hashes_the_password_whether_or_not_the_address_exists(tmp_path: Path) -> None:
    """The same work in both cases, so the time taken does not tell either: one password hash each, then the
    insert (which a registered address makes fail, inside one rolled-back transaction)."""
    async def go() -> tuple[list[str], list[bool]]:
        db = store.Store(str(tmp_path / "books.db"))
        await db.start()
        try:
            ops = Operations(db, Ledger(db, default_rpm=0, default_tpm=0))
            hashed: list[str] = []
            real = ops._scrypt

            async def counting(fn: Any, *args: Any) -> Any:
                hashed.append(fn.__name__)
                return await real(fn, *args)

            ops._scrypt = counting  # type: ignore[method-assign]
            made = [await ops.sign_up(address, PASSWORD) is not None
                    for address in ("a@example.com", "A@example.com ", "b@example.com")]
            return hashed, made
        finally:
            await db.close()

    hashed, made = asyncio.run(go())
    assert made == [True, False, True] and hashed == ["hash_password"] * 3
    assert sqlite3.connect(tmp_path / "books.db").execute("SELECT COUNT(*) FROM accounts").fetchone()[0] == 2
