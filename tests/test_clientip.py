"""core/clientip.py (pure): forwarded addresses are believed only from trusted proxies, the rightmost
untrusted hop is the client, and whatever a client writes in X-Forwarded-For cannot make it someone else.
Also the [server] trusted_proxies setting that feeds it."""

from __future__ import annotations

import ipaddress
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.clientip import _address, client_ip, from_scope, parse_networks
from core.config import ConfigError, parse

TRUSTED = parse_networks(["127.0.0.1", "10.0.0.0/8", "fd00::/8"])


def h(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in pairs]


@pytest.mark.parametrize("peer, headers, expected", [
    # an untrusted peer: its headers are ignored, whatever they say
    ("198.51.100.7", h(("X-Forwarded-For", "1.1.1.1")), "198.51.100.7"),
    ("198.51.100.7", h(("X-Real-IP", "1.1.1.1")), "198.51.100.7"),
    # a trusted peer with no forwarding headers is the client (a health check from the proxy host)
    ("127.0.0.1", [], "127.0.0.1"),
    # one proxy (nginx on the same host): the address it appended
    ("127.0.0.1", h(("X-Forwarded-For", "203.0.113.9")), "203.0.113.9"),
    # the client's own spoofed entries are left of the real one and never reached
    ("127.0.0.1", h(("X-Forwarded-For", "6.6.6.6, 10.9.9.9, 203.0.113.9")), "203.0.113.9"),
    # two trusted proxies (a load balancer, then nginx): walked past
    ("127.0.0.1", h(("X-Forwarded-For", "203.0.113.9, 10.0.0.5")), "203.0.113.9"),
    # every hop trusted: the furthest one known
    ("127.0.0.1", h(("X-Forwarded-For", "10.0.0.9, 10.0.0.5")), "10.0.0.9"),
    # repeated headers are one list, in order
    ("127.0.0.1", h(("X-Forwarded-For", "6.6.6.6, 203.0.113.9"), ("x-forwarded-for", "10.0.0.5")), "203.0.113.9"),
    # X-Real-IP only when there is no X-Forwarded-For
    ("127.0.0.1", h(("X-Real-IP", "203.0.113.9")), "203.0.113.9"),
    ("127.0.0.1", h(("X-Real-IP", "203.0.113.9"), ("X-Forwarded-For", "192.0.2.1")), "192.0.2.1"),
    ("127.0.0.1", h(("X-Real-IP", "not an address")), "127.0.0.1"),
    # garbage stops the walk at the last good hop: what lies left of it is not trustworthy
    ("127.0.0.1", h(("X-Forwarded-For", "203.0.113.9, unknown, 10.0.0.5")), "10.0.0.5"),
    ("127.0.0.1", h(("X-Forwarded-For", "203.0.113.9, ")), "127.0.0.1"),
    # ports and brackets as some proxies write them; IPv6
    ("127.0.0.1", h(("X-Forwarded-For", "203.0.113.9:51234")), "203.0.113.9"),
    ("127.0.0.1", h(("X-Forwarded-For", "[2001:db8::1]:443, fd00::2")), "2001:db8::1"),
    ("fd00::1", h(("X-Forwarded-For", "2001:db8::1")), "2001:db8::1"),
    # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    ("::ffff:127.0.0.1", h(("X-Forwarded-For", "203.0.113.9")), "203.0.113.9"),
    # a peer that is not an address (a Unix socket) is never trusted
    ("", h(("X-Forwarded-For", "203.0.113.9")), ""),
])
def test_client_ip(peer: str, headers: list[tuple[bytes, bytes]], expected: str) -> None:
    assert client_ip(peer, headers, TRUSTED) == expected


def test_trusting_nobody_is_the_default_and_returns_the_peer() -> None:
    assert client_ip("127.0.0.1", h(("X-Forwarded-For", "203.0.113.9"), ("X-Real-IP", "1.2.3.4")), ()) == "127.0.0.1"


def test_from_scope_reads_the_asgi_client() -> None:
    scope = {"client": ("127.0.0.1", 5555), "headers": h(("x-forwarded-for", "203.0.113.9"))}
    assert from_scope(scope, TRUSTED) == "203.0.113.9"
    assert from_scope({"client": None, "headers": []}, TRUSTED) == ""


untrusted_v4 = st.ip_addresses(v=4).filter(lambda a: not any(a in n for n in TRUSTED if n.version == 4))
trusted_hops = st.lists(st.ip_addresses(network="10.0.0.0/8"), min_size=1, max_size=4)
spoofed = st.lists(st.one_of(st.ip_addresses().map(str), st.text(alphabet=st.characters(
    blacklist_characters=",", blacklist_categories=("Cs",)), max_size=20)), max_size=5)


@given(client=untrusted_v4, proxies=trusted_hops, spoof=spoofed)
def test_a_client_cannot_spoof_its_address(client: ipaddress.IPv4Address, proxies: list[ipaddress.IPv4Address],
                                           spoof: list[str]) -> None:
    """Whatever the client writes first, each trusted proxy appends the address it saw: the gateway finds the
    client's real address."""
    forwarded = [*spoof, str(client), *map(str, proxies[:-1])]
    headers = [(b"x-forwarded-for", ", ".join(forwarded).encode("utf-8"))]
    assert client_ip(str(proxies[-1]), headers, TRUSTED) == str(client)


@given(peer=st.ip_addresses().map(str), values=st.lists(st.text(max_size=40), max_size=4),
       real=st.text(max_size=40))
def test_the_answer_is_the_peer_or_an_address_a_header_named(peer: str, values: list[str], real: str) -> None:
    headers = [(b"x-forwarded-for", v.encode("utf-8")) for v in values] + [(b"x-real-ip", real.encode("utf-8"))]
    """Never raw header text and never an invented address: the peer, or one of the headers' addresses."""
    found = client_ip(peer, headers, TRUSTED)
    named = {str(a) for e in ",".join([*values, real]).split(",") if (a := _address(e)) is not None}
    assert found in (peer, str(_address(peer))) or found in named  # the peer, maybe unmapped from ::ffff:
    if found != peer:
        ipaddress.ip_address(found)


@given(peer=untrusted_v4, xff=st.text(max_size=60))
def test_an_untrusted_peer_is_its_own_address(peer: ipaddress.IPv4Address, xff: str) -> None:
    assert client_ip(str(peer), [(b"x-forwarded-for", xff.encode("utf-8"))], TRUSTED) == str(peer)


# -- the [server] trusted_proxies setting -------------------------------------------------------

def config(**server: object) -> dict:
    return {
        "server": server,
        "providers": {"up": {"format": "openai", "base_url": "http://127.0.0.1:1/v1"}},
        "models": {"m": {"provider": "up", "price": {"input": Decimal("1"), "output": "2"}}},
    }


def test_trusted_proxies_default_to_none() -> None:
    assert parse(config(), {}).server.trusted_proxies == ()


def test_trusted_proxies_parse_addresses_and_cidrs() -> None:
    got = parse(config(trusted_proxies=["127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8"]), {}).server.trusted_proxies
    assert [str(n) for n in got] == ["127.0.0.1/32", "10.0.0.0/8", "::1/128", "fd00::/8"]


@pytest.mark.parametrize("value, says", [
    (["10.0.0.0/33"], "'10.0.0.0/33' is not an IP address or CIDR"),
    (["127.0.0.1", "nginx"], "'nginx' is not an IP address or CIDR"),
    ("127.0.0.1", "must be a list"),
    ([127], "must be a list"),
])
def test_a_bad_trusted_proxy_names_the_key(value: object, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(config(trusted_proxies=value), {})
    assert str(err.value).startswith("server.trusted_proxies: ") and says in str(err.value), str(err.value)
