"""API keys: making them, hashing them, and reading the one a caller presents.
Only a hash and a short display form are ever stored; the plaintext exists once, in the answer that creates it."""

from __future__ import annotations

import hashlib
import secrets
import string
from dataclasses import dataclass
from urllib.parse import parse_qsl

KEY_PREFIX = "sk-tt-"
SECRET_LENGTH = 40  # base62 characters: about 238 bits
BASE62 = string.ascii_letters + string.digits
_BASE62_SET = frozenset(BASE62)


@dataclass(frozen=True, slots=True)
class NewKey:
    plaintext: str  # shown once, never stored
    display: str  # sk-tt-AbCd...wxyz: 8 of the 40 secret characters, for people to tell keys apart
    hash: bytes  # how the key is found: no secret character is needed for the lookup


@dataclass(frozen=True, slots=True)
class Presented:
    hash: bytes


class KeyRejected(Exception):
    """A 401 before the database is asked: the code says which of the cases it is."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def new_key() -> NewKey:
    secret = "".join(secrets.choice(BASE62) for _ in range(SECRET_LENGTH))
    plaintext = KEY_PREFIX + secret
    return NewKey(plaintext, f"{KEY_PREFIX}{secret[:4]}...{secret[-4:]}", digest(plaintext))


def digest(plaintext: str) -> bytes:
    """SHA-256 suffices for a 238-bit random secret (no dictionary to attack). Keys are found by this
    digest, so lookups compare digests, never secrets: their timing tells nothing about a key."""
    return hashlib.sha256(plaintext.encode()).digest()


def credentials(headers: list[tuple[bytes, bytes]], query_string: bytes, query_allowed: bool = False) -> str | None:
    """The key from `Authorization: Bearer`, `x-api-key`, `x-goog-api-key`, or `?key=` where `query_allowed`
    (Gemini's REST routes, whose documented clients send it there). Elsewhere a `key` in the URL is refused:
    URLs are written to access logs and echoed in redirects."""
    found: str | None = None
    for name, value in headers:
        if name == b"authorization":
            text = value.decode("latin-1")
            scheme, _, rest = text.partition(" ")
            if scheme.lower() == "bearer":
                found = rest
                break
            found = found or text
        elif name in (b"x-api-key", b"x-goog-api-key"):
            found = found or value.decode("latin-1")
    if not query_string or b"key=" not in query_string:
        return found
    in_url = next((value for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
                   if name == "key"), None)
    if in_url is not None and not query_allowed:
        raise KeyRejected("api_key_in_url", "API keys are not accepted in the URL on this route (URLs end up in "
                                            "logs): send it as 'Authorization: Bearer sk-tt-...' or x-api-key, "
                                            "and rotate a key that was sent in a URL")
    return found if found is not None else in_url


def check_presented(raw: str | None) -> Presented:
    """Shape checks, each with its own message; the database decides unknown/rotated/disabled/expired."""
    if raw is None or raw == "":
        raise KeyRejected("missing_api_key", "no API key: send it as 'Authorization: Bearer sk-tt-...' "
                                             "(or x-api-key, or x-goog-api-key)")
    if raw != raw.strip() or any(c in raw for c in "\r\n\t"):
        raise KeyRejected("api_key_whitespace", "the API key has leading or trailing whitespace or a line break "
                                                "in it: copy the key again without spaces or newlines")
    if not raw.startswith(KEY_PREFIX):
        raise KeyRejected("not_a_tokentoll_key", "this is not a TokenToll API key (they start with 'sk-tt-'); "
                                                 "a provider's own key does not work here")
    secret = raw[len(KEY_PREFIX):]
    if len(secret) < 32 or not _BASE62_SET.issuperset(secret):
        raise KeyRejected("not_a_tokentoll_key", "this is not a complete TokenToll API key: it should be 'sk-tt-' "
                                                 "followed by 40 letters and digits; copy it again")
    return Presented(digest(raw))
