"""The console over HTTP: sign-up, log-in and its rate limit, sessions, CSRF, password change, the API keys page
(secret shown once, rotation, limits) and the dashboard, against a real gateway. The browser tests are elsewhere."""

from __future__ import annotations

import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from core.console import security
from core.console.charts import daily_spend_svg, nice_ceiling
from billing.pricing import usd_text
from tests.conftest import (DEMO_ECHO, GatewayProcess, base_config, cli, demo_provider, on_one_utc_day,
                            serve_gateway, wait_for)
from tests.console_client import PASSWORD, ConsoleClient

MSG = [{"role": "user", "content": "hello console"}]


def email() -> str:
    return f"user-{secrets.token_hex(4)}@example.com"


def sdk(gateway: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


def create_key(c: ConsoleClient, **fields: str) -> dict[str, str]:
    r = c.post("/console/keys", {"name": "k", **fields}, headers={"Accept": "application/json"})
    assert r.status_code == 200, r.text
    return r.json()


def alert(html: str) -> str:
    found = re.search(r'role="alert">([^<]*)', html)
    return found.group(1) if found else ""


# -- pure parts ---------------------------------------------------------------------------------


def test_passwords_are_salted_scrypt_and_checked_exactly() -> None:
    stored = security.hash_password("a long password", n=2**10)
    assert stored.startswith("scrypt$1024$8$1$") and "a long password" not in stored
    assert security.check_password("a long password", stored)
    assert not security.check_password("a long passworD", stored)
    assert stored != security.hash_password("a long password", n=2**10)  # salted
    assert not security.check_password("x", "md5$whatever") and not security.check_password("x", "garbage")


def test_an_unknown_address_is_checked_at_the_cost_of_a_real_password() -> None:
    assert security.DUMMY_HASH.startswith(f"scrypt${security.SCRYPT_N}${security.SCRYPT_R}${security.SCRYPT_P}$")
    assert not security.check_password("", security.DUMMY_HASH)


def test_signed_cookies_and_csrf_tokens_refuse_tampering() -> None:
    secret = security.new_secret()
    token, token_hash = security.new_session()
    cookie = security.session_cookie(secret, token)
    assert security.session_token(secret, cookie) == token and security.session_hash(token) == token_hash
    assert security.session_token(secret, cookie[:-1] + ("A" if cookie[-1] != "A" else "B")) is None
    assert security.session_token(security.new_secret(), cookie) is None
    assert security.session_token(secret, token) is None and security.session_token(secret, None) is None
    browser = security.new_browser_id()
    assert security.csrf_ok(secret, browser, security.csrf_token(secret, browser))
    assert not security.csrf_ok(secret, security.new_browser_id(), security.csrf_token(secret, browser))
    assert not security.csrf_ok(secret, browser, None) and not security.csrf_ok(secret, None, "x")
    assert not security.csrf_ok(secret, browser, "\x80é") and security.session_token(secret, "é.\x80") is None


@pytest.mark.parametrize("text, expected", [
    (" Ann@Example.COM ", "ann@example.com"), ("a@b", None), ("no-at.example.com", None), ("a@@b.com", None),
    ("a b@c.com", None), ("a@b.com.", None), ("<a@b.com>", None), ("x" * 250 + "@b.com", None)])
def test_email_addresses(text: str, expected: str | None) -> None:
    assert security.normal_email(text) == expected


def test_password_rules() -> None:
    assert security.password_problem("short") and security.password_problem(" padded password ")
    assert security.password_problem("long enough password") is None


def test_money_and_chart_for_people() -> None:
    assert [usd_text(u) for u in (0, 5_000_000_000, 35_100, -1_500_000_000)] == ["0.00", "5.00", "0.0000351", "-1.50"]
    assert [nice_ceiling(v) for v in (0, 1, 3, 7, 11, 4_999, 120_000_000)] == [1, 1, 5, 10, 20, 5_000, 200_000_000]
    svg = daily_spend_svg([("2026-11-01", 0), ("2026-11-02", 2_000_000_000), ("2026-11-03", 500_000_000)])
    bars = re.findall(r'height="([0-9.]+)" class="bar" data-day="([0-9-]+)" data-cost="([0-9.]+)"', svg)
    assert [(day, cost) for _, day, cost in bars] == [("2026-11-01", "0.000000000"), ("2026-11-02", "2.000000000"),
                                                      ("2026-11-03", "0.500000000")]
    heights = [float(h) for h, _, _ in bars]
    assert heights[0] == 0 and heights[1] == pytest.approx(4 * heights[2])  # to scale
    assert "<script" not in svg and "$2" in svg  # the axis top is $2


# -- log-ins ------------------------------------------------------------------------------------


def test_sign_up_log_out_log_in_and_wrong_passwords(gateway: GatewayProcess) -> None:
    c = ConsoleClient(gateway.url)
    assert c.get("/console/dashboard").headers["location"] == "/console/login?next=%2Fconsole%2Fdashboard"
    address = email()
    r = c.sign_up(address.upper())
    assert r.headers["location"] == "/console/dashboard"
    session = c.http.cookies.get("tt_session")
    assert session and len(session) > 40
    set_cookie = r.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=lax" in set_cookie and "secure" not in set_cookie  # plain http
    page = c.get("/console/dashboard")
    assert page.status_code == 200 and address in page.text and 'id="balance">$0.00<' in page.text
    # the account is named after the address, with an empty wallet, and the operator sees the log-in
    users = cli(gateway.config, "users", "list", env=gateway.env)
    assert any(u["email"] == address and u["account_name"] == address and u["role"] == "user" for u in users)
    assert "password" not in users[0]
    # a second sign-up with the same address makes nothing, changes nothing, and starts no session
    other = ConsoleClient(gateway.url)
    r = other.sign_up_only(address, "another password")
    assert r.status_code == 303 and r.headers["location"] == "/console/login" and "tt_session" not in r.headers.get(
        "set-cookie", "")
    assert other.get("/console/dashboard").status_code == 303
    assert other.log_in(address, "another password").status_code == 401  # the owner's password stands
    assert [u["email"] for u in cli(gateway.config, "users", "list", env=gateway.env)].count(address) == 1
    other.get("/console/signup")
    r = other.post("/console/signup", {"email": email(), "password": PASSWORD, "password2": PASSWORD + "x"})
    assert r.status_code == 400 and "differ" in alert(r.text)
    r = other.post("/console/signup", {"email": email(), "password": "short", "password2": "short"})
    assert r.status_code == 400 and "at least 10" in alert(r.text)
    # log out: the session ends on the server, not just in this browser
    assert c.post("/console/logout").headers["location"] == "/console/login"
    stolen = ConsoleClient(gateway.url)
    stolen.http.cookies.set("tt_session", session)
    assert stolen.get("/console/dashboard").status_code == 303
    assert c.get("/console/dashboard").status_code == 303
    # log in again; a wrong password and an unknown address get the same answer
    wrong = c.log_in(address, PASSWORD + "!")
    unknown = c.log_in(email(), PASSWORD)
    assert wrong.status_code == unknown.status_code == 401
    assert alert(wrong.text) == alert(unknown.text) == "Wrong e-mail address or password."
    assert c.log_in(address).headers["location"] == "/console/dashboard"
    assert c.get("/console/dashboard").status_code == 200


def test_log_in_goes_back_to_the_page_asked_for_but_never_off_site(gateway: GatewayProcess) -> None:
    c = ConsoleClient(gateway.url)
    address = email()
    c.sign_up(address)
    c.post("/console/logout")
    for target, expected in (("/console/keys", "/console/keys"), ("https://evil.example/", "/console/dashboard"),
                             ("//evil.example/console/", "/console/dashboard")):
        c.get("/console/login?next=" + target)
        r = c.post("/console/login", {"email": address, "password": PASSWORD, "next": target})
        assert r.headers.get("location") == expected, target
        c.get("/console/dashboard")  # the CSRF token changes at every log-in
        assert c.post("/console/logout").status_code == 303


def test_changes_without_the_csrf_token_or_from_another_origin_are_refused(gateway: GatewayProcess) -> None:
    c = ConsoleClient(gateway.url)
    c.sign_up(email())
    r = c.post("/console/keys", {"name": "sneaky"}, csrf=False)
    assert r.status_code == 403 and "did not come from this console" in r.text
    r = c.post("/console/keys", {"name": "sneaky"}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    tampered = ("y" if c.csrf[0] == "x" else "x") + c.csrf[1:]  # always differs from the real token
    r = c.post("/console/keys", {"name": "sneaky", "csrf_token": tampered})
    assert r.status_code == 403
    assert "sneaky" not in c.get("/console/keys").text  # nothing was made
    # another browser's token is worth nothing here
    other = ConsoleClient(gateway.url)
    other.get("/console/login")
    r = c.post("/console/keys", {"name": "sneaky", "csrf_token": other.csrf}, csrf=False)
    assert r.status_code == 403 and other.csrf != c.csrf
    # a log-in form posted without the token is refused too (log-in CSRF)
    r = ConsoleClient(gateway.url).post("/console/login", {"email": "a@b.co", "password": PASSWORD}, csrf=False)
    assert r.status_code == 403


def test_changing_the_password_ends_the_other_sessions(gateway: GatewayProcess) -> None:
    address = email()
    here, elsewhere = ConsoleClient(gateway.url), ConsoleClient(gateway.url)
    here.sign_up(address)
    assert elsewhere.log_in(address).status_code == 303
    r = here.post("/console/password", {"current": "wrong password", "password": "a new password 1",
                                        "password2": "a new password 1"})
    assert r.status_code == 400 and "current password is wrong" in alert(r.text)
    r = here.post("/console/password", {"current": PASSWORD, "password": "a new password 1",
                                        "password2": "a new password 1"})
    assert r.status_code == 303
    assert "password was changed" in here.get("/console/dashboard").text
    assert elsewhere.get("/console/dashboard").status_code == 303
    assert elsewhere.log_in(address).status_code == 401
    assert elsewhere.log_in(address, "a new password 1").status_code == 303


def test_operators_make_log_ins_and_reset_passwords_from_the_cli(gateway: GatewayProcess) -> None:
    env = {**gateway.env, "TOKENTOLL_PASSWORD": "operator password"}
    made = cli(gateway.config, "users", "create", "Op@Example.com", "--account", "tester", "--operator", env=env)
    assert made["email"] == "op@example.com" and made["account_name"] == "tester" and made["role"] == "operator"
    c = ConsoleClient(gateway.url)
    assert c.log_in("op@example.com", "operator password").status_code == 303
    assert 'href="/console/admin"' in c.get("/console/dashboard").text
    cli(gateway.config, "users", "set-password", "op@example.com",
        env={**gateway.env, "TOKENTOLL_PASSWORD": "another password"})
    assert c.get("/console/dashboard").status_code == 303  # the reset ended the session
    assert c.log_in("op@example.com", "another password").status_code == 303
    assert cli(gateway.config, "users", "set-role", "op@example.com", "user", env=gateway.env)["role"] == "user"
    assert 'href="/console/admin"' not in c.get("/console/dashboard").text


@pytest.fixture(scope="module")
def closed_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """Sign-up turned off."""
    def config(log: Path) -> str:
        return base_config(log) + demo_provider() + DEMO_ECHO + "\n[console]\nsignup = false\n"
    yield from serve_gateway(tmp_path_factory.mktemp("closed-console"), config, {}, "closed", "0", ("Traceback",))


@pytest.fixture(scope="module")
def strict_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """Two failed log-ins allowed per e-mail address and client per window (eight per client across addresses), two
    sign-ups per client an hour."""
    def config(log: Path) -> str:  # behind a "proxy" on loopback: X-Forwarded-Proto is believed
        return (base_config(log, trusted_proxies=["127.0.0.1"]) + demo_provider() + DEMO_ECHO
                + "\n[console]\nlogin_attempts = 2\nlogin_window = 600\nsignups_per_hour = 2\n")
    yield from serve_gateway(tmp_path_factory.mktemp("strict-console"), config, {}, "strict", "0", ("Traceback",))


def test_sign_up_can_be_turned_off(closed_gateway: GatewayProcess) -> None:
    c = ConsoleClient(closed_gateway.url)
    assert c.get("/console/signup").status_code == 404
    assert c.post("/console/signup", {"email": email(), "password": PASSWORD, "password2": PASSWORD}).status_code == 404
    assert 'href="/console/signup"' not in c.get("/console/login").text
    assert cli(closed_gateway.config, "users", "list", env=closed_gateway.env) == []


def test_an_untrusted_tls_proxy_is_named_on_the_page_and_in_the_log_once(closed_gateway: GatewayProcess) -> None:
    """nginx ends TLS and forwards X-Forwarded-Proto/-Host, but trusted_proxies is empty (the default): every form
    fails its origin check. The page names the setting, and the log says why, once."""
    behind_nginx = {"Origin": "https://gw.example", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "gw.example",
                    "X-Forwarded-For": "198.51.100.7"}
    for _ in range(3):
        r = ConsoleClient(closed_gateway.url).post("/console/login", {"email": "a@b.co", "password": PASSWORD},
                                                   headers=behind_nginx)
        assert r.status_code == 403 and "did not come from this console" in r.text
        assert "[server] trusted_proxies" in r.text
    warned = wait_for(lambda: [line for line in closed_gateway.stderr_lines if "trusted_proxies" in line] or None,
                      10, "the trusted_proxies warning")
    assert len(warned) == 1 and "the proxy at 127.0.0.1 sent X-Forwarded-* headers" in warned[0]
    # a form from another site, with no proxy in the way, is refused without the hint: it is not a setting's fault
    r = ConsoleClient(closed_gateway.url).post("/console/login", {"email": "a@b.co", "password": PASSWORD},
                                               headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and "trusted_proxies" not in r.text


def test_failed_log_ins_are_limited_per_address_and_client_even_when_sent_at_once(
        strict_gateway: GatewayProcess) -> None:
    env = {**strict_gateway.env, "TOKENTOLL_PASSWORD": PASSWORD}
    cli(strict_gateway.config, "users", "create", "limited@example.com", "--account", "strict", env=env)
    visitors = [ConsoleClient(strict_gateway.url) for _ in range(6)]
    for visitor in visitors:
        visitor.get("/console/login")
    with ThreadPoolExecutor(len(visitors)) as pool:  # all at once: each is counted before its password is checked
        statuses = sorted(pool.map(lambda v: v.post("/console/login", {"email": "limited@example.com",
                                                                     "password": "wrong password!"}).status_code,
                                   visitors))
    assert statuses == [401, 401, 429, 429, 429, 429]
    c = ConsoleClient(strict_gateway.url)
    r = c.log_in("limited@example.com")  # the right password, but too late from this client
    assert r.status_code == 429 and "Too many failed log-ins. Try again in" in alert(r.text)
    assert c.get("/console/dashboard").status_code == 303
    # the limit counts per address and client: the owner logs in from their own client (through the proxy)...
    owner = ConsoleClient(strict_gateway.url)
    owner.http.headers["X-Forwarded-For"] = "198.51.100.23"
    assert owner.log_in("limited@example.com").status_code == 303
    # ...and another user from the same place as the failures
    cli(strict_gateway.config, "users", "create", "fine@example.com", "--account", "strict", env=env)
    assert ConsoleClient(strict_gateway.url).log_in("fine@example.com").status_code == 303


def test_sign_ups_are_limited_per_client_address_and_cookies_are_secure_over_https(
        strict_gateway: GatewayProcess) -> None:
    made = [ConsoleClient(strict_gateway.url).sign_up(email()) for _ in range(1)]
    assert all(r.status_code == 303 for r in made)
    assert "secure" not in made[0].headers["set-cookie"].lower()  # plain http
    # through a TLS-terminating proxy: the cookies are Secure, and the form's https Origin is the console's own
    https = ConsoleClient(strict_gateway.url)
    https.http.headers["X-Forwarded-Proto"] = "https"
    form = https.get("/console/signup")
    browser_cookie = form.raw.headers.getlist("set-cookie")[0]
    assert "secure" in browser_cookie.lower()  # so the jar (on http://) would not send it back: send it by hand
    host = strict_gateway.url.removeprefix("http://")
    address = email()
    headers = {"Origin": f"https://{host}", "Cookie": browser_cookie.split(";")[0]}
    r = https.post("/console/signup", {"email": address, "password": PASSWORD, "password2": PASSWORD},
                   headers=headers)
    assert r.status_code == 303
    r = https.post("/console/login", {"email": address, "password": PASSWORD}, headers=headers)
    assert r.status_code == 303
    cookies = [c.lower() for c in r.raw.headers.getlist("set-cookie")]
    assert any(c.startswith("tt_session=") for c in cookies)
    assert cookies and all("secure" in c and "httponly" in c for c in cookies)
    late = ConsoleClient(strict_gateway.url)
    late.get("/console/signup")
    address = email()
    r = late.post("/console/signup", {"email": address, "password": PASSWORD, "password2": PASSWORD})
    assert r.status_code == 429 and "Too many sign-ups from your address. Try again in" in alert(r.text)
    assert address not in [u["email"] for u in cli(strict_gateway.config, "users", "list", env=strict_gateway.env)]


def test_malformed_forms_and_ids_are_clear_4xx_never_500(gateway: GatewayProcess) -> None:
    c = ConsoleClient(gateway.url)
    c.sign_up(email())
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for body in (b"csrf_token=" + c.csrf.encode() + b"&name=\xff", b"a=1&" * 300, b"x" * 70_000):
        r = c.http.post(gateway.url + "/console/keys", data=body, headers=form, allow_redirects=False)
        assert r.status_code == 400 and "text/html" in r.headers["content-type"], body[:20]
    anonymous = ConsoleClient(gateway.url)
    anonymous.get("/console/login")
    r = anonymous.http.post(gateway.url + "/console/login", data=b"\xff" * 10, headers=form, allow_redirects=False)
    assert r.status_code == 400
    huge = "9" * 30
    for path in (f"/console/keys/{huge}/disable", f"/console/keys/{huge}/rotate", f"/console/keys/{huge}"):
        assert c.post(path, {"name": "x"}).status_code == 404, path
    bad = {"rpm": "99999999999999999999", "models": "no-such-model", "expires_at": "2020-01-01",
           "monthly_limit": "no key", "tpm": "1.5"}
    for field, value in bad.items():
        r = c.post("/console/keys", {"name": "x", field: value})
        assert r.status_code == 400, (field, r.status_code)
    assert "Requests per minute (rpm): a whole number from 0 to 1,000,000,000,000" in alert(
        c.post("/console/keys", {"name": "x", "rpm": "-1"}).text)
    assert "no model is called no-such-model" in alert(c.post("/console/keys", {"name": "x", "models": "no-such-model"}).text)
    assert "that day has passed" in alert(c.post("/console/keys", {"name": "x", "expires_at": "2020-01-01"}).text)
    assert "x" not in [k["name"] for k in cli(gateway.config, "keys", "list", env=gateway.env)
                       if k["account_id"] == cli(gateway.config, "users", "list", env=gateway.env)[-1]["account_id"]]


# -- API keys and the dashboard -------------------------------------------------------------------


def test_a_key_is_shown_once_and_works_and_rotation_kills_the_old_one(gateway: GatewayProcess) -> None:
    c = ConsoleClient(gateway.url)
    address = email()
    c.sign_up(address)
    cli(gateway.config, "wallet", "credit", address, "1", env=gateway.env)
    made = create_key(c, name="laptop")
    plaintext = made["key"]
    assert plaintext.startswith("sk-tt-") and made["display"].startswith(plaintext[:10])
    page = c.get("/console/keys").text
    assert plaintext not in page and made["display"] in page  # never shown again
    reply = sdk(gateway, plaintext).chat.completions.create(model="demo-echo", messages=MSG)
    assert reply.choices[0].message.content
    dashboard = c.get("/console/dashboard").text
    assert "demo-echo" in dashboard and 'id="balance">$1.00<' not in dashboard  # charged, and in the last requests
    rotated = c.post(f"/console/keys/{made['id']}/rotate", headers={"Accept": "application/json"}).json()
    assert rotated["id"] == made["id"] and rotated["key"] != plaintext
    with pytest.raises(openai.AuthenticationError):
        sdk(gateway, plaintext).chat.completions.create(model="demo-echo", messages=MSG)
    assert sdk(gateway, rotated["key"]).chat.completions.create(model="demo-echo", messages=MSG).choices
    # without the page's script, the same forms answer with the page, the secret in it once
    page = c.post("/console/keys", {"name": "no-js"})
    shown = re.findall(r'id="revealed-key">(sk-tt-[A-Za-z0-9]+)<', page.text)
    assert page.status_code == 200 and len(shown) == 1
    assert shown[0] not in c.get("/console/keys").text


def test_key_limits_status_and_another_accounts_keys(gateway: GatewayProcess) -> None:
    owner, stranger = ConsoleClient(gateway.url), ConsoleClient(gateway.url)
    address = email()
    owner.sign_up(address)
    stranger.sign_up(email())
    cli(gateway.config, "wallet", "credit", address, "1", env=gateway.env)
    made = create_key(owner, name="capped", monthly_limit="0.000001", models="demo-echo", rpm="5",
                      expires_at="2099-12-31")
    listed = [k for k in cli(gateway.config, "keys", "list", "--account", address, env=gateway.env)]
    assert listed[0]["monthly_limit"] == 1000 and listed[0]["models"] == ["demo-echo"] and listed[0]["rpm"] == 5
    assert listed[0]["expires_at"] == 4102444799  # the end of that day, UTC
    with pytest.raises(openai.APIStatusError) as refused:
        sdk(gateway, made["key"]).chat.completions.create(model="demo-echo", messages=MSG)
    assert refused.value.status_code == 402 and "api_key_quota_exceeded" in str(refused.value.body)
    r = owner.post(f"/console/keys/{made['id']}", {"name": "capped", "monthly_limit": "", "models": "", "rpm": "",
                                                   "tpm": "", "expires_at": ""})
    assert r.status_code == 303 and "was saved" in owner.get("/console/keys").text
    assert sdk(gateway, made["key"]).chat.completions.create(model="demo-echo", messages=MSG).choices
    assert owner.post(f"/console/keys/{made['id']}/disable").status_code == 303
    with pytest.raises(openai.AuthenticationError):
        sdk(gateway, made["key"]).chat.completions.create(model="demo-echo", messages=MSG)
    assert owner.post(f"/console/keys/{made['id']}/enable").status_code == 303
    r = owner.post(f"/console/keys/{made['id']}", {"name": "capped", "monthly_limit": "lots"})
    assert r.status_code == 400 and "not a USD amount" in alert(r.text)
    # another account's key: the same 404 as a key that does not exist, and nothing changes
    for path in (f"/console/keys/{made['id']}/rotate", f"/console/keys/{made['id']}/disable",
                 f"/console/keys/{made['id']}", "/console/keys/999999/rotate"):
        r = stranger.post(path, {"name": "mine now"})
        assert r.status_code == 404 and "not yours to see" in r.text, path
    assert made["display"] not in stranger.get("/console/keys").text
    assert sdk(gateway, made["key"]).chat.completions.create(model="demo-echo", messages=MSG).choices


def test_each_key_has_a_prices_page_of_the_models_it_may_use(gateway: GatewayProcess) -> None:
    owner, stranger = ConsoleClient(gateway.url), ConsoleClient(gateway.url)
    owner.sign_up(email())
    stranger.sign_up(email())
    narrow = create_key(owner, name="narrow", models="demo-echo")
    wide = create_key(owner, name="wide")
    keys_page = owner.get("/console/keys").text
    assert f'href="/console/keys/{narrow["id"]}/prices"' in keys_page
    shown = owner.get(f"/console/keys/{narrow['id']}/prices")
    assert shown.status_code == 200 and "Prices for the key narrow" in shown.text
    assert re.findall(r'<tr data-model="([^"]+)"', shown.text) == ["demo-echo"]
    listed = [m.id for m in sdk(gateway, narrow["key"]).models.list()]
    assert listed == ["demo-echo"]  # the page and the API agree
    every = re.findall(r'<tr data-model="([^"]+)"', owner.get(f"/console/keys/{wide['id']}/prices").text)
    assert every == [m.id for m in sdk(gateway, wide["key"]).models.list()] and len(every) > 1
    public = re.findall(r'<tr data-model="([^"]+)"', owner.get("/console/prices").text)
    assert public == every  # the public page is unchanged: every model
    assert stranger.get(f"/console/keys/{narrow['id']}/prices").status_code == 404  # another account's key
    assert ConsoleClient(gateway.url).get(f"/console/keys/{narrow['id']}/prices").status_code == 303  # log in first


def test_the_dashboard_shows_the_wallet_spend_per_key_and_the_chart(gateway: GatewayProcess) -> None:
    c = ConsoleClient(gateway.url)
    address = email()
    c.sign_up(address)
    cli(gateway.config, "wallet", "credit", address, "2", env=gateway.env)
    key = create_key(c, name="metered", monthly_limit="1")
    with on_one_utc_day():  # the chart's last bar is today, the key's spend is this month's
        sdk(gateway, key["key"]).chat.completions.create(model="demo-echo", messages=MSG)
        wallet = cli(gateway.config, "wallet", "show", address, env=gateway.env)
        spent = 2_000_000_000 - wallet["balance"]
        assert spent > 0
        page = c.get("/console/dashboard").text
        assert f'id="balance">${usd_text(wallet["balance"])}<' in page
        assert f'id="available">${usd_text(wallet["available"])}<' in page
        row = re.search(r"<tr>\s*<td>metered.*?</tr>", page, re.S)
        assert row and f"${usd_text(spent)}" in row.group(0) and "$1.00" in row.group(0)
        bars = re.findall(r'data-cost="([0-9.]+)"', page)
        assert len(bars) == 30 and bars[-1] == f"{spent / 1e9:.9f}" and set(bars[:-1]) == {"0.000000000"}
    assert page.count("/console/usage/req_") == 1  # the last requests: this one


def test_pages_carry_strict_security_headers_and_unknown_pages_are_html_404s(gateway: GatewayProcess) -> None:
    c = ConsoleClient(gateway.url)
    r = c.get("/console/login")
    assert "script-src 'self'" in r.headers["content-security-policy"] and r.headers["x-frame-options"] == "DENY"
    assert r.headers["cache-control"] == "no-store" and r.headers["x-tt-request-id"].startswith("req_")
    missing = c.get("/console/nothing/here")
    assert missing.status_code == 404 and "text/html" in missing.headers["content-type"]
    css = c.get("/console/static/console.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert c.get("/console/static/console.css", headers={"If-None-Match": css.headers["etag"]}).status_code == 304
    assert c.get("/console/static/../web.py").status_code == 404
