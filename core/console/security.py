"""The console's secrets, as pure functions: password hashes (scrypt), session tokens in signed cookies, and
CSRF tokens bound to a per-browser cookie. No I/O; the secret they sign with is stored in the database."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# scrypt at OWASP's floor (N=2^17, r=8, p=1): 128 MiB and a few hundred ms per hash, run off the event loop,
# a few at a time. The parameters are stored in each hash, so they can be raised later.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**17, 8, 1
SCRYPT_MAXMEM = 256 * 1024 * 1024
PASSWORD_MIN, PASSWORD_MAX = 10, 1024
EMAIL_MAX = 254


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, n: int = SCRYPT_N) -> str:
    salt = secrets.token_bytes(16)
    derived = hashlib.scrypt(password.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, maxmem=SCRYPT_MAXMEM,
                             dklen=32)
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(derived)}"


def check_password(password: str, stored: str) -> bool:
    """Whether `password` is the one `stored` was made from (compared in constant time)."""
    try:
        scheme, n, r, p, salt, expected = stored.split("$")
        if scheme != "scrypt":
            return False
        derived = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                                 maxmem=SCRYPT_MAXMEM, dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(derived, _unb64(expected))


# What a log-in for an unknown address is checked against, so that it costs the same as a wrong password: a hash,
# at the same parameters as every other, of a random password thrown away when it was made (the check's answer is
# ignored anyway). A constant, so no process spends a hash on it at start.
DUMMY_HASH = "scrypt$131072$8$1$X5utizreCdcxxwwVQ4fsrw$8ZDJ1yAkJSKAnAGHlrNGro9oW5fpZBIrGBTVKm-Aqm0"


def password_problem(password: str) -> str | None:
    """Why a new password is refused, or None."""
    if len(password) < PASSWORD_MIN:
        return f"a password needs at least {PASSWORD_MIN} characters"
    if len(password) > PASSWORD_MAX:
        return f"a password has at most {PASSWORD_MAX} characters"
    if password != password.strip():
        return "a password cannot begin or end with a space"
    return None


def normal_email(text: str) -> str | None:
    """The address as stored (trimmed, lower-cased), or None when it is not one."""
    email = text.strip().lower()
    local, _, domain = email.partition("@")
    if (not local or "." not in domain or domain.startswith(".") or domain.endswith(".") or len(email) > EMAIL_MAX
            or any(c.isspace() or c in '<>()[],;:"\\' for c in email) or "@" in domain):
        return None
    return email


def new_secret() -> str:
    return secrets.token_hex(32)


def _sign(secret: str, purpose: str, value: str) -> str:
    return _b64(hmac.new(bytes.fromhex(secret), f"{purpose}|{value}".encode(), hashlib.sha256).digest())


def new_session() -> tuple[str, bytes]:
    """A session token and the hash the database keeps of it."""
    token = secrets.token_urlsafe(32)
    return token, session_hash(token)


def session_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def session_cookie(secret: str, token: str) -> str:
    return f"{token}.{_sign(secret, 'session', token)}"


def session_token(secret: str, cookie: str | None) -> str | None:
    """The token of a session cookie this gateway signed, else None (checked before any database look-up)."""
    if not cookie or cookie.count(".") != 1:
        return None
    token, signature = cookie.split(".")
    return token if token and _same(signature, _sign(secret, "session", token)) else None


def _same(presented: str, expected: str) -> bool:
    """Constant-time equality of a presented text and an expected one (as bytes: any text may be presented)."""
    return hmac.compare_digest(presented.encode("utf-8", "surrogatepass"), expected.encode())


def new_browser_id() -> str:
    """The per-browser value the CSRF token is bound to (kept in its own cookie)."""
    return secrets.token_urlsafe(24)


def csrf_token(secret: str, browser_id: str) -> str:
    return _sign(secret, "csrf", browser_id)


def csrf_ok(secret: str, browser_id: str | None, presented: str | None) -> bool:
    if not browser_id or not presented:
        return False
    return _same(presented, csrf_token(secret, browser_id))
