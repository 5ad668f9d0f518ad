"""The caller's address behind reverse proxies (pure). X-Forwarded-For and X-Real-IP are believed only when
they come from a configured proxy (`server.trusted_proxies`): anyone else could write them."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or CIDRs ("127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8"); ValueError names the bad one."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or CIDR") from None
    return tuple(networks)


def client_ip(peer: str, headers: Iterable[tuple[bytes, bytes]], trusted: Sequence[Network]) -> str:
    """The client's address. `peer` is the socket's remote address and `headers` the ASGI request headers.

    Only a trusted peer's headers count. Then X-Forwarded-For is walked from the right (each proxy appends
    the address it saw): trusted hops are skipped and the first untrusted address is the client. Hops that
    are all trusted give the leftmost; an entry that is not an address stops the walk at the last good
    hop (whatever is left of it was written by someone we do not trust). With no X-Forwarded-For, a valid
    X-Real-IP is the client. Otherwise the peer."""
    if not trusted:  # the default: nothing to look up, the hot path pays nothing
        return peer
    peer_addr = _address(peer)
    if peer_addr is None or not _is_trusted(peer_addr, trusted):
        return peer
    forwarded: list[str] = []
    real_ip = b""
    for name, value in headers:
        lname = name.lower()
        if lname == b"x-forwarded-for":  # repeated headers form one list, in order (RFC 9110 5.3)
            forwarded.extend(value.decode("latin-1").split(","))
        elif lname == b"x-real-ip":
            real_ip = value
    if not forwarded:
        real = _address(real_ip.decode("latin-1")) if real_ip else None
        return str(real) if real is not None else peer
    found = str(peer_addr)
    for entry in reversed(forwarded):
        addr = _address(entry)
        if addr is None:
            return found
        found = str(addr)
        if not _is_trusted(addr, trusted):
            return found
    return found


def peer_of(scope: Mapping[str, Any]) -> str:
    """The socket's remote address from an ASGI scope ("" for a Unix socket)."""
    client = scope.get("client")
    return str(client[0]) if client else ""


def from_scope(scope: Mapping[str, Any], trusted: Sequence[Network]) -> str:
    return client_ip(peer_of(scope), scope["headers"], trusted)


def _address(text: str) -> Address | None:
    """An address as proxies write it: bare, "[v6]", "[v6]:port" or "v4:port"; None if it is none of them."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # IPv4 with a port (a bare IPv6 address has at least two colons)
        text = text.partition(":")[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # a dual-stack socket's ::ffff:a.b.c.d is the IPv4 address a.b.c.d
    return addr


def _is_trusted(addr: Address, trusted: Sequence[Network]) -> bool:
    return any(addr.version == net.version and addr in net for net in trusted)


FORWARDED_HEADERS = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip",
                               b"forwarded"})


def untrusted_proxy(scope: Mapping[str, Any], trusted: Sequence[Network]) -> str:
    """The peer's address when it sent forwarded headers but is not in `trusted` (a proxy the operator has not
    listed in server.trusted_proxies, whose headers are therefore ignored); "" otherwise."""
    if not any(name in FORWARDED_HEADERS for name, _ in scope["headers"]):
        return ""
    peer = peer_of(scope)
    addr = _address(peer)
    return peer if addr is not None and not _is_trusted(addr, trusted) else ""


def public_origin(scope: Mapping[str, Any], trusted: Sequence[Network]) -> tuple[str, str]:
    """The scheme and host the caller used: the socket's, or X-Forwarded-Proto / X-Forwarded-Host when the
    peer is a trusted proxy (nginx in front of the gateway terminating TLS)."""
    headers = dict(scope["headers"])
    scheme = str(scope.get("scheme", "http"))
    host = headers.get(b"host", b"").decode("latin-1")
    addr = _address(peer_of(scope))
    if addr is not None and _is_trusted(addr, trusted):
        proto = headers.get(b"x-forwarded-proto", b"").decode("latin-1").split(",")[0].strip().lower()
        if proto in ("http", "https"):
            scheme = proto
        forwarded_host = headers.get(b"x-forwarded-host", b"").decode("latin-1").split(",")[0].strip()
        host = forwarded_host or host
    return scheme, host


def public_base_url(scope: Mapping[str, Any], trusted: Sequence[Network], configured: str = "") -> str:
    """The gateway's URL as its callers should write it: the configured one ([console] base_url), else the scheme
    and host this request came in on (the socket's own address when the request named no host)."""
    if configured:
        return configured
    scheme, host = public_origin(scope, trusted)
    if not host:
        server = scope.get("server")
        host = f"{server[0]}:{server[1]}" if server else "localhost"
    return f"{scheme}://{host}"


def client_bucket(address: str) -> str:
    """The client a throttle counts (console log-ins and sign-ups, failed admin tokens): an IPv4 address as it is
    (also when an IPv6 socket shows it as ::ffff:a.b.c.d), an IPv6 address by its /64 (one subscriber's network:
    whoever has one has 2^64 addresses to rotate through)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)
