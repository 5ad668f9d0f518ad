"""Fuzzing every console input against a real gateway: each form (the state-changing ones included: keys with
expiries and limits, sign-up, log-in, password, recharge, the operator's credits), each query, path and cookie."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.chain.gateway_config import XPUB
from tests.conftest import DEMO_ECHO, GatewayProcess, base_config, cli, demo_provider, serve_gateway
from tests.console_client import PASSWORD, ConsoleClient
from tests.test_fuzz import FUZZ, Reply, assert_not_crashed, raw_request

USER = "fuzzed-user@example.com"
OPERATOR = "fuzzed-operator@example.com"
KEY_FIELDS = ("name", "monthly_limit", "models", "rpm", "tpm", "expires_at")


def config(log: Path) -> str:
    """Behind a "proxy" on loopback, so that each example may come from its own client address (the log-in throttle
    would otherwise soon answer every log-in with a 429); a chain whose node is never reached, so that recharge
    orders are made."""
    return (base_config(log, trusted_proxies=["127.0.0.1"]) + demo_provider() + DEMO_ECHO + f"""
[recharge]
minimum = "1"

[chains.nowhere]
rpc_url = "http://127.0.0.1:9"
chain_id = 1337
confirmations = 3
contract = "0x{'11' * 20}"
xpub = "{XPUB}"
poll_interval = 60

[console]
signups_per_hour = 100000
""")


@dataclass
class Actors:
    """Who sends the forms: an account holder with a key, an operator, and nobody (no session)."""

    gw: GatewayProcess
    user: ConsoleClient
    operator: ConsoleClient
    anonymous: ConsoleClient
    key_id: int
    account_id: int


@pytest.fixture(scope="module")
def actors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Actors]:
    for gw in serve_gateway(tmp_path_factory.mktemp("console-inputs"), config, {}, "house", "0", ("Traceback",)):
        user = ConsoleClient(gw.url)
        user.sign_up(USER)
        key_id = user.post("/console/keys", {"name": "fuzzed"}, headers={"Accept": "application/json"}).json()["id"]
        cli(gw.config, "users", "create", OPERATOR, "--account", "house", "--operator",
            env={**gw.env, "TOKENTOLL_PASSWORD": PASSWORD})
        operator = ConsoleClient(gw.url)
        assert operator.log_in(OPERATOR).status_code == 303
        anonymous = ConsoleClient(gw.url)
        anonymous.get("/console/login")
        account_id = next(u["account_id"] for u in cli(gw.config, "users", "list", env=gw.env) if u["email"] == USER)
        yield Actors(gw, user, operator, anonymous, key_id, account_id)


# -- values -----------------------------------------------------------------------------------------

NUMBER_TRAPS = ["", " ", "0", "-1", "+1", "1e999", "1e999999999", "-1e999999999", "NaN", "nan", "inf", "-Infinity",
                "sNaN", "none", "99999999999999999999999", "9" * 5000, "²", "²²²", "²²", "٣", "４２", "१०", "४२९",
                "1_000", "0x10", "1,5", "1.", ".5", "0.0000000001", "5", "25.5", "1000000000.000000001", "\x00"]
DATE_TRAPS = ["9999-12-31T23:59:59-23:59", "9999-12-31", "0001-01-01T00:00:00+14:00", "2999-12-31T23:59:59-00:01",
              "2020-02-30", "2099-12-31", "10000-01-01", "2030-01-01T00:00:00+24:00", "2030-01-01T25:00",
              "2030-01-01Z", "٢٠٣٠-٠١-٠١", "２０３０-01-01", "2030-01-01T00:00:00.1234567", "20300101", "2030-W01-1",
              "1969-12-31", "", "none"]
TEXT_TRAPS = ["", " ", "\x00", "%", "&=&", "a" * 5000, "<script>x</script>", "demo-echo", "nowhere", "x@example.com",
              USER, OPERATOR, PASSWORD, "/console/keys", "//evil.example", "/console/\r\nx", "/console/" + "a" * 3000,
              "/console/é", "req_1", "X-TT-Request-ID: req_1", "ok", "error", "upstream"]


def datetimes() -> st.SearchStrategy[str]:
    """Moments written every way fromisoformat reads them, from the year 1 to 9999 and any offset (the ends of the
    calendar most often)."""
    zones = st.one_of(st.none(), st.just(timezone.utc), st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(
        lambda minutes: timezone(timedelta(minutes=minutes))))
    moments = st.one_of(st.datetimes(), st.datetimes(min_value=datetime(9999, 12, 30)),
                        st.datetimes(max_value=datetime(1, 1, 2)), st.datetimes(min_value=datetime(2999, 12, 31),
                                                                                max_value=datetime(3000, 1, 1)))
    return st.one_of(st.dates().map(lambda d: d.isoformat()),
                     st.builds(lambda dt, tz, sep: dt.replace(tzinfo=tz).isoformat(sep), moments, zones,
                               st.sampled_from(["T", " "])))


def numbers() -> st.SearchStrategy[str]:
    return st.one_of(st.integers(-(10**30), 10**30).map(str), st.integers(0, 999).map(str),
                     st.decimals(allow_nan=True, allow_infinity=True).map(str), st.floats().map(repr))


anything = st.one_of(st.text(max_size=40), st.sampled_from(NUMBER_TRAPS + DATE_TRAPS + TEXT_TRAPS))
NUMERIC = {"monthly_limit", "rpm", "tpm", "amount", "key", "status", "offset"}
DATED = {"expires_at", "from", "to"}


def value_of(name: str) -> st.SearchStrategy[str]:
    """A value for a field or query parameter: of its own kind most often, anything sometimes."""
    if name in NUMERIC:  # (a trap twice as often as the rest: 40 examples a form must meet some)
        return st.one_of(st.sampled_from(NUMBER_TRAPS), st.sampled_from(NUMBER_TRAPS), numbers(), anything)
    if name in DATED:
        return st.one_of(st.sampled_from(DATE_TRAPS), st.sampled_from(DATE_TRAPS), datetimes(), anything)
    return st.one_of(st.sampled_from(TEXT_TRAPS), anything)


# -- sending ----------------------------------------------------------------------------------------

def headers_of(visitor: ConsoleClient, ctype: str, client: str | None,
               extra: list[tuple[str, str]] | None = None) -> list[tuple[str, bytes | str]]:
    cookies = "; ".join(f"{c.name}={c.value}" for c in visitor.http.cookies)
    out: list[tuple[str, bytes | str]] = [("Cookie", cookies)]
    if ctype:
        out.append(("Content-Type", ctype))
    if client is not None:
        out.append(("X-Forwarded-For", client))
    return out + list(extra or [])


def check(reply: Reply | None, what: str) -> None:
    """An answer (every request here is well-formed HTTP: no answer within raw_request's 15 s is a hang), never a
    5xx, nor Python's error text."""
    assert reply is not None, f"{what}: no answer"
    assert_not_crashed(reply, what)


clients = st.one_of(st.none(), st.ip_addresses().map(str), st.sampled_from(["", "unknown", "1.2.3.4, 5.6.7.8",
                                                                              "[::1]:80", "999.1.1.1", "²"]))


@dataclass(frozen=True)
class Form:
    path: str
    good: dict[str, str]  # a valid filling: each example changes a field or two of it, so the handler gets far
    who: str  # "user", "operator" or "anonymous"
    after: str  # a page that must still load afterwards, for the same visitor ("" for none)


KEY = {"name": "fuzzed", "monthly_limit": "5", "models": "demo-echo", "rpm": "10", "tpm": "1000",
       "expires_at": "2099-12-31"}
FORMS = [
    Form("/console/login", {"email": USER, "password": "not the password", "next": "/console/keys"}, "anonymous", ""),
    Form("/console/signup", {"email": "signed-up@example.com", "password": PASSWORD, "password2": PASSWORD},
         "anonymous", ""),
    Form("/console/logout", {}, "anonymous", ""),
    Form("/console/password", {"current": PASSWORD, "password": PASSWORD, "password2": PASSWORD}, "user",
         "/console/dashboard"),
    Form("/console/keys", KEY, "user", "/console/keys"),
    Form("/console/keys/{k}", KEY, "user", "/console/keys"),
    Form("/console/keys/{k}/rotate", {}, "user", "/console/keys"),
    Form("/console/keys/{k}/disable", {}, "user", "/console/keys"),
    Form("/console/keys/{k}/enable", {}, "user", "/console/keys"),
    Form("/console/recharge/orders", {"chain": "nowhere", "amount": "5"}, "user", "/console/recharge"),
    Form("/console/admin/accounts/{a}/credit", {"amount": "1", "note": "fuzz"}, "operator",
         "/console/admin/accounts/{a}"),
    Form("/console/admin/accounts/{a}/adjust", {"amount": "-0.5", "note": "fuzz"}, "operator",
         "/console/admin/accounts/{a}"),
    Form("/console/admin/deposits/{d}/credit", {"note": "fuzz"}, "operator", "/console/admin/deposits"),
]


def filled(text: str, actors: Actors, deposit: str = "1") -> str:
    return text.replace("{k}", str(actors.key_id)).replace("{a}", str(actors.account_id)).replace("{d}", deposit)


@pytest.mark.parametrize("form", FORMS, ids=lambda f: f.path)
@FUZZ
@given(data=st.data())
def test_every_console_form_survives_any_value(actors: Actors, form: Form, data: st.DataObject) -> None:
    """Each form's valid filling with a field or two changed (or dropped) to values of every shape, most often with
    the CSRF token, so that the handler runs and changes things; then the page the change lands on still loads."""
    visitor = getattr(actors, form.who)
    fields = dict(form.good)
    for name in data.draw(st.lists(st.sampled_from(sorted(form.good)), max_size=2, unique=True)) if form.good else []:
        if data.draw(st.integers(0, 5)):
            fields[name] = data.draw(value_of(name), label=name)
        else:
            del fields[name]
    if data.draw(st.integers(0, 9)) == 0:
        fields[data.draw(st.text(max_size=10))] = data.draw(anything)  # a field no form has
    if data.draw(st.integers(0, 9)):
        fields["csrf_token"] = visitor.csrf
    kind = data.draw(st.sampled_from(["form"] * 6 + ["raw", "json", "none"]))
    if kind == "form":
        body = "&".join(f"{urllib.parse.quote(k)}={urllib.parse.quote(v)}" for k, v in fields.items()).encode()
        ctype = "application/x-www-form-urlencoded"
    elif kind == "raw":
        body, ctype = data.draw(st.binary(max_size=300)), "application/x-www-form-urlencoded"
    elif kind == "json":
        body, ctype = urllib.parse.urlencode(fields).encode(), "application/json"
    else:
        body, ctype = b"", ""
    accept = [("Accept", "application/json")] if data.draw(st.booleans()) else []
    path = filled(form.path, actors, data.draw(st.sampled_from(["1", "0", "9" * 19, "9" * 25])))
    client = data.draw(clients)
    reply = raw_request(actors.gw, "POST", path, headers_of(visitor, ctype, client, accept), body)
    check(reply, f"POST {path} {body[:200]!r}")
    if form.after:
        page = raw_request(actors.gw, "GET", filled(form.after, actors), headers_of(visitor, "", client))
        assert page is not None and page.status in (200, 303), (form.after, page)
        check(page, f"GET {form.after} after POST {path} {body[:200]!r}")


QUERIES = {
    "/console/usage": ("key", "model", "from", "to", "status", "source", "offset", "request_id"),
    "/console/usage.csv": ("key", "model", "from", "to", "status", "source"),
    "/console/login": ("next",),
}
PAGES = ["/console/", "/console/dashboard", "/console/keys", "/console/recharge", "/console/prices",
         "/console/integration", "/console/signup", "/console/password", "/console/admin", "/console/admin/holds",
         "/console/admin/deposits", "/console/admin/upstreams", "/console/admin/accounts/{x}",
         "/console/recharge/orders/{x}", "/console/recharge/orders/{x}/status", "/console/usage/{x}",
         "/console/static/{x}", "/console/{x}", "/console/keys/{x}"]
segments = st.one_of(st.text(max_size=40), st.sampled_from(["1", "0", "-1", "²", "٣", "9" * 19, "9" * 30, "%00",
                                                             "%FF%FE", "..%2F..%2Fweb.py", "a" * 3000, "req_1"]))


@FUZZ
@given(data=st.data())
def test_every_console_query_and_path_survives_any_value(actors: Actors, data: st.DataObject) -> None:
    """Every query parameter a console page reads, and every page with any path segment, as each visitor."""
    visitor = getattr(actors, data.draw(st.sampled_from(["user", "operator", "anonymous"])))
    if data.draw(st.booleans()):
        page = data.draw(st.sampled_from(sorted(QUERIES)))
        names = data.draw(st.lists(st.sampled_from(QUERIES[page]), max_size=5))
    else:
        page = filled(data.draw(st.sampled_from(PAGES)), actors)
        names = data.draw(st.lists(st.text(max_size=8), max_size=2))
    segment = "".join(c if c.isascii() and c.isprintable() and c not in " #?/" else
                      "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass")) for c in data.draw(segments))
    query = urllib.parse.urlencode([(name, data.draw(value_of(name))) for name in names])
    target = page.replace("{x}", segment) + (f"?{query}" if query else "")
    check(raw_request(actors.gw, "GET", target, headers_of(visitor, "", data.draw(clients))), f"GET {target}")


cookie_values = st.one_of(st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=";,"),
                                  max_size=80),
                          st.sampled_from(["", "a" * 4000, "x.y", "x.y.z", ".", "é", "%FF", "%C3%A9" * 50]))


@FUZZ
@given(data=st.data())
def test_console_cookies_survive_any_value(actors: Actors, data: st.DataObject) -> None:
    """The cookies the console reads back (browser id, session, one-time note), forged, with the forms' headers."""
    cookies = "; ".join(f"{name}={data.draw(cookie_values)}" for name in
                        data.draw(st.lists(st.sampled_from(["tt_browser", "tt_session", "tt_flash"]), max_size=3)))
    extra: list[tuple[str, bytes | str]] = [("Cookie", cookies)] if cookies else []
    for name in data.draw(st.lists(st.sampled_from(["Origin", "X-CSRF-Token", "Accept"]), max_size=2)):
        extra.append((name, data.draw(st.sampled_from(["null", "http://evil.example", "", "é", "x" * 300,
                                                       "application/json"]))))
    method, path = data.draw(st.sampled_from([("GET", "/console/login"), ("GET", "/console/dashboard"),
                                              ("GET", "/console/keys"), ("POST", "/console/keys"),
                                              ("POST", "/console/login"), ("POST", "/console/logout")]))
    check(raw_request(actors.gw, method, path, extra), f"{method} {path} {extra!r}")


def test_the_pages_still_load_after_all_that(actors: Actors) -> None:
    """Whatever the forms stored, every page shows it."""
    for visitor, pages in ((actors.user, ["/console/dashboard", "/console/keys", "/console/usage",
                                          "/console/recharge"]),
                           (actors.operator, ["/console/admin", f"/console/admin/accounts/{actors.account_id}",
                                              "/console/admin/holds", "/console/admin/deposits"])):
        for path in pages:
            r = visitor.get(path)
            assert r.status_code in (200, 303), (path, r.status_code, r.text[:300])
