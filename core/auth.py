"""Auth and admission at the HTTP edge: reads the caller's key, and turns the ledger's decision into
the exact 401 / 402 / 403 / 429 answer (with Retry-After and x-ratelimit-* headers) that says what is wrong."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from billing.keys import KeyRejected, Presented, check_presented, credentials
from billing.ledger import Ledger
from billing.pricing import units_to_usd
from billing.store import Admission
from core.errors import AuthenticationFailed, GatewayError, PaymentRequired, PermissionDenied, RateLimited

NO_RETRY = {"x-should-retry": "false"}  # the SDKs must not retry what retrying cannot fix


def presented_key(scope: Mapping[str, Any], query_allowed: bool = False) -> Presented:
    """The caller's key, shape-checked; `query_allowed`: `?key=` is read too (Gemini's routes only)."""
    try:
        return check_presented(credentials(scope["headers"], scope.get("query_string", b""), query_allowed))
    except KeyRejected as exc:
        raise AuthenticationFailed(exc.message, code=exc.code, headers=NO_RETRY) from None


async def refuse_unknown_key(ledger: Ledger, key: Presented) -> None:
    """The 401 for a key that is unknown, disabled or expired, asked before any costly work for its request
    (reading and parsing the body, counting tokens, fetching media)."""
    known = await ledger.authenticate(key)
    if known.error:
        raise admission_error(known, "")


def admission_error(adm: Admission, model: str, smaller: str = "lower max_tokens") -> GatewayError:
    """The refusal a client sees; `smaller` says how this kind of request can ask for less (a 402's advice)."""
    d = adm.detail or {}
    if adm.error == "key_unknown":
        return AuthenticationFailed("the API key is unknown or has been rotated: use the current key, or rotate "
                                    "it in the console if it was lost", code="invalid_api_key", headers=NO_RETRY)
    if adm.error == "key_disabled":
        return AuthenticationFailed("the API key is disabled: enable it or use another key",
                                    code="api_key_disabled", headers=NO_RETRY)
    if adm.error == "key_expired":
        expired = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(d.get("expired_at", 0)))
        return AuthenticationFailed(f"the API key expired at {expired}", code="api_key_expired", headers=NO_RETRY)
    if adm.error == "model_not_allowed":
        return PermissionDenied(f"this API key may not use the model {model!r}; it may use: "
                                f"{', '.join(d.get('allowed', [])) or 'no model'}", param="model", headers=NO_RETRY)
    if adm.error == "billing_shortfall":
        return PaymentRequired(f"insufficient balance: this request needs up to ${units_to_usd(d['needed'])} held "
                               f"and ${units_to_usd(max(d['available'], 0))} is available; recharge the wallet or "
                               f"{smaller}", code="billing_shortfall", headers=NO_RETRY)
    if adm.error == "api_key_quota_exceeded":
        return PaymentRequired(f"this API key's monthly limit of ${units_to_usd(d['limit'])} would be exceeded: "
                               f"${units_to_usd(d['committed'])} is spent or held this month and this request needs "
                               f"up to ${units_to_usd(d['needed'])}", code="api_key_quota_exceeded",
                               headers=NO_RETRY)
    if adm.error in ("rate_limit_requests", "rate_limit_tokens"):
        return rate_limited(adm)
    if adm.error == "request_over_tpm":  # waiting cannot help: no Retry-After, and no SDK retry
        return RateLimited(f"this request needs {d['needed']} tokens (prompt + max output) and this API key allows "
                           f"{d['limit']} tokens per minute: lower max_tokens", code="request_too_large_for_tpm",
                           headers={**NO_RETRY, **ratelimit_headers(0, 0, d["limit"], d["limit"], 60)})
    return GatewayError(f"admission failed: {adm.error}")


def rate_limited(adm: Admission) -> RateLimited:
    d = adm.detail or {}
    now = time.time()
    reset = max(1, math.ceil(60 - now % 60))  # the per-minute window ends; whole seconds
    requests = adm.error == "rate_limit_requests"
    rpm = d["limit"] if requests else d["rpm"]
    tpm = d["tpm"] if requests else d["limit"]
    headers = {"retry-after": str(reset), **ratelimit_headers(rpm, 0 if requests else max(rpm - d["requests_used"], 0),
                                                              tpm, d.get("remaining", 0) if not requests
                                                              else max(tpm - d["tokens_used"], 0), reset)}
    if requests:
        message = f"rate limit reached: {rpm} requests per minute for this API key; retry in {reset}s"
    else:
        message = (f"rate limit reached: {tpm} tokens per minute for this API key ({d['needed']} needed, "
                   f"{d['remaining']} left this minute); retry in {reset}s")
    return RateLimited(message, code="rate_limit_exceeded", headers=headers)


def ratelimit_headers(rpm: int, rpm_left: int, tpm: int, tpm_left: int, reset: int) -> dict[str, str]:
    headers: dict[str, str] = {}
    if rpm:
        headers |= {"x-ratelimit-limit-requests": str(rpm), "x-ratelimit-remaining-requests": str(rpm_left),
                    "x-ratelimit-reset-requests": f"{reset}s"}
    if tpm:
        headers |= {"x-ratelimit-limit-tokens": str(tpm), "x-ratelimit-remaining-tokens": str(tpm_left),
                    "x-ratelimit-reset-tokens": f"{reset}s"}
    return headers
