"""The admin HTTP API under /admin: the operator's CLI operations over HTTP, each input parsed strictly, behind an
admin token stored hashed ($TOKENTOLL_ADMIN_TOKEN, or generated once), whose failed tries are throttled per address."""

from __future__ import annotations

import hmac
import logging
import math
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from billing import store
from billing.keys import BASE62, digest
from core.clientip import Network, client_bucket, from_scope
from core.metrics import Metrics
from core.operations import MAX_ID, MAX_ROWS, NotFoundError, OperationError, Operations, whole_number

ADMIN_TOKEN_ENV = "TOKENTOLL_ADMIN_TOKEN"
Handler = Callable[[Request, dict[str, str], dict[str, Any]], Awaitable[Any]]
log = logging.getLogger("tokentoll.admin")

MAX_FAILURES = 50  # failed token attempts one address may make per window; the next ones get a 429
FAILURE_WINDOW = 300.0  # seconds: a fixed window, opened by an address's first failure
MAX_ADDRESSES = 10_000  # addresses remembered at once (about 2 MB); past that the oldest window is forgotten
MAX_BODY = 64 * 1024  # an admin request's JSON body, in bytes
NOTE_MAX = 1000  # characters in a credit's, an adjustment's or a manual deposit credit's note
KEY_SETTINGS = ("monthly_limit", "models", "rpm", "tpm", "expires_at")


class BodyTooLarge(OperationError):
    """A body past MAX_BODY: a 413."""


class FailedAttempts:
    """Failed admin-token attempts per client address, in fixed windows, in memory (each worker process its own).
    An address with MAX_FAILURES failures in its window is throttled until the window ends. IPv6 addresses count
    per /64 (one host usually holds the whole prefix). Bounded: at most `max_addresses` entries, the oldest
    window dropped first, so no caller can grow it."""

    def __init__(self, limit: int = MAX_FAILURES, window: float = FAILURE_WINDOW,
                 max_addresses: int = MAX_ADDRESSES, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.max_addresses = max_addresses
        self.clock = clock
        self._seen: OrderedDict[str, tuple[float, int]] = OrderedDict()  # address -> (window start, failures)

    def __len__(self) -> int:
        return len(self._seen)

    def retry_after(self, address: str) -> int | None:
        """Whole seconds until the address may try again; None when it is not throttled."""
        bucket = client_bucket(address)
        entry = self._seen.get(bucket)
        if entry is None:
            return None
        start, failures = entry
        left = start + self.window - self.clock()
        if left <= 0:
            del self._seen[bucket]
            return None
        return max(1, math.ceil(left)) if failures >= self.limit else None

    def failed(self, address: str) -> None:
        bucket = client_bucket(address)
        now = self.clock()
        entry = self._seen.get(bucket)
        if entry is not None and now < entry[0] + self.window:
            self._seen[bucket] = (entry[0], entry[1] + 1)  # same window, same place in the order
            return
        self._seen.pop(bucket, None)
        while len(self._seen) >= self.max_addresses:
            self._seen.popitem(last=False)  # the oldest window
        self._seen[bucket] = (now, 1)

    def succeeded(self, address: str) -> None:
        self._seen.pop(client_bucket(address), None)


class AdminAPI:
    def __init__(self, ops: Operations, db: store.Store, metrics: Metrics | None = None,
                 trusted_proxies: Sequence[Network] = (), attempts: FailedAttempts | None = None) -> None:
        self.ops = ops
        self.db = db
        self.token_hash = b""
        self.auth_failures = metrics.admin_auth_failures if metrics is not None else None  # each wrong token
        self.trusted_proxies = trusted_proxies
        self.attempts = attempts if attempts is not None else FailedAttempts()

    async def start(self) -> str | None:
        """Settle the admin token. Returns a newly generated token, to be printed once."""
        from_env = os.environ.get(ADMIN_TOKEN_ENV, "")
        if from_env:
            self.token_hash = digest(from_env)
            return None
        token = "tt-admin-" + "".join(secrets.choice(BASE62) for _ in range(40))
        stored, created = await self.db.run(store.tx_setting, "admin_token_sha256", digest(token).hex())
        self.token_hash = bytes.fromhex(stored)
        return token if created else None

    def routes(self) -> list[Route]:
        o = self.ops
        return [
            self._route("/admin/accounts", "GET", lambda r, q, b: o.list_accounts()),
            self._route("/admin/accounts", "POST", lambda r, q, b: o.create_account(
                _text(b, "name"), _opt(b, "credit")), body=("name", "credit"), created=True),
            self._route("/admin/keys", "GET", lambda r, q, b: o.list_keys(q.get("account")), query=("account",)),
            self._route("/admin/keys", "POST", lambda r, q, b: o.create_key(
                _text(b, "account"), _opt(b, "name") or "default", **_limits(b)),
                body=("account", "name", *KEY_SETTINGS), created=True),
            self._route("/admin/keys/{key_id}/rotate", "POST", lambda r, q, b: o.rotate_key(_key_id(r))),
            self._route("/admin/keys/{key_id}/disable", "POST",
                        lambda r, q, b: o.set_key(_key_id(r), status="disabled")),
            self._route("/admin/keys/{key_id}/enable", "POST", lambda r, q, b: o.set_key(_key_id(r), status="active")),
            self._route("/admin/keys/{key_id}", "PATCH", lambda r, q, b: o.set_key(
                _key_id(r), **_limits(b, rename=True)), body=("name", *KEY_SETTINGS)),
            self._route("/admin/wallets/{account}", "GET", lambda r, q, b: o.wallet(r.path_params["account"])),
            self._route("/admin/wallets/{account}/history", "GET", lambda r, q, b: o.history(
                r.path_params["account"], _rows(q, 50)), query=("limit",)),
            self._route("/admin/wallets/{account}/credit", "POST", lambda r, q, b: o.credit(
                r.path_params["account"], _text(b, "usd"), _opt(b, "note", NOTE_MAX) or "operator credit"),
                body=("usd", "note")),
            self._route("/admin/wallets/{account}/adjust", "POST", lambda r, q, b: o.adjust(
                r.path_params["account"], _text(b, "usd"), _text(b, "note", NOTE_MAX)), body=("usd", "note")),
            self._route("/admin/usage", "GET", lambda r, q, b: o.usage(
                q.get("account") or None, _key_param(q), q.get("month") or None), query=("account", "key", "month")),
            self._route("/admin/usage/{request_id}", "GET",
                        lambda r, q, b: o.request_usage(r.path_params["request_id"])),
            self._route("/admin/holds", "GET", lambda r, q, b: o.holds()),
            self._route("/admin/recharge/addresses", "POST", lambda r, q, b: o.recharge_address(
                _text(b, "account"), _text(b, "chain")), body=("account", "chain")),
            self._route("/admin/recharge/deposits", "GET", lambda r, q, b: o.deposits(
                q.get("account") or None, _rows(q, 100)), query=("account", "limit")),
            self._route("/admin/recharge/orders", "GET", lambda r, q, b: o.orders(
                q.get("account") or None, _rows(q, 100)), query=("account", "limit")),
            self._route("/admin/recharge/deposits/{deposit_id}/credit", "POST", lambda r, q, b: o.credit_deposit(
                _deposit_id(r), _text(b, "note", NOTE_MAX)), body=("note",)),
            self._route("/admin/recharge/chains/{chain}/rescan", "POST", lambda r, q, b: o.rescan(
                r.path_params["chain"], _block(b, "from_block")), body=("from_block",)),
        ]

    def _route(self, path: str, method: str, handler: Handler, query: tuple[str, ...] = (),
               body: tuple[str, ...] | None = None, created: bool = False) -> Route:
        """One route: the token first (and the throttle), then its query parameters (only `query`, each once) and
        its JSON body (an object with only the `body` fields), then the operation. Refusals are 4xx in the admin
        API's JSON error shape; none carries Python's own error text."""
        async def endpoint(request: Request) -> Response:
            refused = self._refused(request)
            if refused is not None:
                return refused
            try:
                params = _query(request, query)
                fields = await _body(request, body) if body is not None else {}
                result = await handler(request, params, fields)
            except BodyTooLarge as exc:
                return _error(413, str(exc), "request_too_large")
            except OperationError as exc:
                missing = isinstance(exc, NotFoundError) or str(exc).startswith("no ")
                return _error(404 if missing else 400, str(exc), "invalid_request")
            except (ValueError, TypeError, OverflowError) as exc:  # a check missed it: refused all the same
                log.warning("admin %s %s: an input got past the checks (%s)", method, path, type(exc).__name__)
                return _error(400, "the request's parameters or body could not be used: check them against the "
                                   "admin API's documentation", "invalid_request")
            return Response(orjson.dumps(result), status_code=201 if created else 200, media_type="application/json",
                            headers={"cache-control": "no-store"})

        return Route(path, endpoint, methods=[method])

    def _refused(self, request: Request) -> Response | None:
        """The 401 or 429 for a request without the right token, or the 429 for any request from an address that
        is throttled (the right token too: otherwise the throttle would tell a guesser which guess was right).
        None: the request may go on."""
        address = from_scope(request.scope, self.trusted_proxies)
        wait = self.attempts.retry_after(address)
        authorized = self._authorized(request)
        if not authorized and self.auth_failures is not None:
            self.auth_failures.inc()
        if wait is not None:
            return _error(429, f"too many failed admin-token attempts from this address: try again in {wait} s",
                          "too_many_admin_token_failures", {"retry-after": str(wait)})
        if not authorized:
            self.attempts.failed(address)
            return _error(401, "admin token missing or wrong: send 'Authorization: Bearer <admin token>'",
                          "invalid_admin_token")
        self.attempts.succeeded(address)
        return None

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return bool(self.token_hash) and scheme.lower() == "bearer" and \
            hmac.compare_digest(digest(token), self.token_hash)


def _error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                            "code": code}}), status_code=status, media_type="application/json",
                    headers={"cache-control": "no-store", **(headers or {})})


def _query(request: Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query parameters: only those the route takes, each at most once."""
    found: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name not in allowed:
            takes = ", ".join(allowed) if allowed else "none"
            raise OperationError(f"unknown query parameter {name[:50]!r} (this route takes: {takes})")
        if name in found:
            raise OperationError(f"the query parameter {name!r} is given more than once")
        found[name] = value
    return found


async def _body(request: Request, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The JSON object in the body (at most MAX_BODY bytes), with no field but the `allowed` ones."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise BodyTooLarge(f"the body is larger than {MAX_BODY} bytes")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise OperationError("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise OperationError("the body must be a JSON object")
    unknown = [k for k in body if k not in allowed]
    if unknown:
        raise OperationError(f"unknown field(s): {', '.join(repr(k[:50]) for k in unknown[:10])} "
                             f"(this route takes: {', '.join(allowed)})")
    return body


def _text(body: dict[str, Any], name: str, longest: int = 10_000) -> str:
    value = body.get(name)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and name == "usd":
        raise OperationError(f"'{name}' must be a string such as \"12.50\" (exact decimals, never a float)")
    if not isinstance(value, str) or not value:
        raise OperationError(f"'{name}' is required and must be a string")
    if len(value) > longest:
        raise OperationError(f"'{name}' is longer than {longest} characters")
    return value


def _opt(body: dict[str, Any], name: str, longest: int = 10_000) -> str | None:
    return _text(body, name, longest) if body.get(name) is not None else None


def _limits(body: dict[str, Any], rename: bool = False) -> dict[str, Any]:
    """Key settings from a JSON body, passed on as they are (Operations checks each); null clears one. On creation
    `account` and `name` are read by the caller; with `rename` (a PATCH), `name` is one of the settings."""
    out = {k: ("none" if body[k] is None else body[k]) for k in KEY_SETTINGS if k in body}
    if rename and "name" in body:
        out["name"] = body["name"] if body["name"] is not None else ""  # null is no name: refused as such
    return out


def _rows(query: dict[str, str], default: int) -> int:
    text = query.get("limit")
    if text is None:
        return default
    rows = whole_number(text, 1, MAX_ROWS)
    if rows is None:
        raise OperationError(f"'limit' must be a whole number from 1 to {MAX_ROWS}")
    return rows


def _key_param(query: dict[str, str]) -> int | None:
    text = query.get("key")
    if not text:
        return None
    key_id = whole_number(text, 1, MAX_ID)
    if key_id is None:
        raise OperationError("'key' must be a key id: a whole number")
    return key_id


def _key_id(request: Request) -> int:
    return _path_id(request, "key_id", "key")


def _deposit_id(request: Request) -> int:
    return _path_id(request, "deposit_id", "deposit")


def _path_id(request: Request, param: str, what: str) -> int:
    """An id in the path: ASCII digits up to SQLite's largest integer; anything else names no record (a 404)."""
    text = request.path_params[param]
    found = whole_number(text, 1, MAX_ID) if text.isdigit() else None
    if found is None:
        raise NotFoundError(f"no {what} {text[:50]!r}")
    return found


def _block(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or whole_number(value, 0, MAX_ID) is None:
        raise OperationError(f"'{name}' is required and must be a whole number from 0 to {MAX_ID}")
    return value
