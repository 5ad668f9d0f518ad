"""The console's web layer: who the visitor is (session cookie), CSRF checks on every change, security headers,
rendering the templates, and the log-in pages (sign-up, log-in, log-out, change password). Pages live beside it."""

from __future__ import annotations

import hashlib
import logging
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from billing import store
from billing.pricing import usd_text
from core.clientip import client_bucket, from_scope, public_base_url, public_origin, untrusted_proxy
from core.config import Settings
from core.console import security
from core.operations import MAX_ID, BusyError, Operations

log = logging.getLogger("tokentoll.console")

HERE = Path(__file__).parent
SESSION_COOKIE = "tt_session"
BROWSER_COOKIE = "tt_browser"
FLASH_COOKIE = "tt_flash"
MAX_FORM_BYTES = 64 * 1024
SIGNUP_WINDOW = 3600.0  # seconds over which [console] signups_per_hour counts
CLIENT_ATTEMPTS = 4  # failed log-ins per client address per window, across accounts: this many times login_attempts
ACCOUNT_ATTEMPTS = 4  # failed log-ins per account per window from clients it never logged in from: x login_attempts
KNOWN_CLIENT_SECONDS = 90 * 86400  # a client that logged in to an account stays known to it this long
MAX_NEXT = 2048  # the longest page a log-in goes back to
BROWSER_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
FORM_EXPIRED = "This form has expired or did not come from this console. Reload the page and try again."
PROXY_HINT = ("If this console is reached through a proxy that ends TLS (nginx), its operator must list that proxy "
              "in [server] trusted_proxies.")
PROXY_WARNING_SECONDS = 600.0  # the log says why forms are refused at most this often
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


class NotFound(Exception):
    """A page or record the visitor may not see: always the same 404, whether it exists or not."""


class FormError(Exception):
    """Input a form cannot take: shown on the page again, nothing changed."""


@dataclass
class Visitor:
    user: dict[str, Any] | None
    browser_id: str
    csrf: str
    session_hash: bytes | None
    secure: bool
    new_browser: bool = False

    @property
    def account_id(self) -> int:
        assert self.user is not None
        return int(self.user["account_id"])

    @property
    def operator(self) -> bool:
        return self.user is not None and self.user["role"] == "operator"


Handler = Callable[[Request, Visitor], Awaitable[Response]]


def form_value(form: dict[str, str], name: str, default: str = "") -> str:
    return form.get(name, default)


def email_digest(email: str) -> str:
    """How a typed e-mail address is kept in the throttle's counters (people type passwords there too)."""
    return hashlib.sha256(email.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def login_subjects(email: str, client: str, attempts: int, known_client: bool = True) -> list[tuple[str, int]]:
    """What one log-in attempt counts against, with each one's limit per window: the (e-mail, client) pair, the
    client across every e-mail address, and, from a client that has not logged in to this account before
    (`known_client` False), the account across every such client. A stranger's failures therefore slow strangers
    and never refuse the owner at an address the owner has logged in from."""
    digest = email_digest(email)
    subjects = [(f"login:{digest}|{client}", attempts), (f"login-client:{client}", attempts * CLIENT_ATTEMPTS)]
    if not known_client:
        subjects.append((f"login-account:{digest}", attempts * ACCOUNT_ATTEMPTS))
    return subjects


def known_client_subject(email: str, client: str) -> str:
    """The mark a successful log-in leaves: this client has logged in to this account (store.KNOWN_PREFIX)."""
    return f"{store.KNOWN_PREFIX}{email_digest(email)}|{client}"


class ConsoleWeb:
    def __init__(self, settings: Settings, ops: Operations, db: store.Store) -> None:
        self.settings = settings
        self.ops = ops
        self.db = db
        self.secret = ""
        self.templates = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                            autoescape=True, undefined=jinja2.StrictUndefined,
                                            trim_blocks=True, lstrip_blocks=True)
        self.templates.filters["usd"] = lambda units: usd_text(units) if units is not None else ""
        self.templates.filters["when"] = _when
        self.templates.filters["day"] = day_text
        self.clock: Callable[[], float] = time.time  # what the log-in throttle counts by (tests may set it)
        self._proxy_warned_at = -PROXY_WARNING_SECONDS  # when the log last said forms fail for want of a proxy

    async def start(self) -> None:
        """The signing secret, shared by every worker through the database (made at the first start)."""
        self.secret, _ = await self.db.run(store.tx_setting, "console_secret", security.new_secret())

    # -- the visitor ------------------------------------------------------------------------

    async def visitor(self, request: Request) -> Visitor:
        scheme, _host = public_origin(request.scope, self.settings.server.trusted_proxies)
        browser_id = request.cookies.get(BROWSER_COOKIE, "")
        new_browser = BROWSER_ID.fullmatch(browser_id) is None
        if new_browser:
            browser_id = security.new_browser_id()
        user = None
        session_hash = None
        token = security.session_token(self.secret, request.cookies.get(SESSION_COOKIE))
        if token is not None:
            session_hash = security.session_hash(token)
            user = await self.db.run(store.tx_session_user, session_hash, time.time())
            if user is None:
                session_hash = None
        return Visitor(user, browser_id, security.csrf_token(self.secret, browser_id), session_hash,
                       scheme == "https", new_browser)

    def page(self, handler: Handler, *, login: bool = True,
             operator: bool = False) -> Callable[[Request], Awaitable[Response]]:
        """A console endpoint: the visitor resolved, log-in and role enforced, CSRF checked on every change,
        errors turned into pages, and the security headers and cookies set."""

        async def endpoint(request: Request) -> Response:
            v = await self.visitor(request)
            try:
                if login and v.user is None:
                    if request.method == "GET":
                        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                        response: Response = RedirectResponse(
                            "/console/login?" + urllib.parse.urlencode({"next": target}), status_code=303)
                    else:
                        response = self.error(v, 401, "Your session has ended. Log in again.")
                elif operator and not v.operator:
                    raise NotFound
                elif any(isinstance(p, int) and p > MAX_ID for p in request.path_params.values()):
                    raise NotFound
                elif request.method != "GET" and (refusal := await self._csrf_refusal(request, v)):
                    response = self.error(v, 403, refusal)
                else:
                    response = await handler(request, v)
            except NotFound:
                response = self.error(v, 404, "There is nothing here, or it is not yours to see.")
            except FormError as exc:  # a body the console's forms never send
                response = self.error(v, 400, sentence(str(exc)) + ".")
            except BusyError as exc:
                response = self.error(v, 503, sentence(str(exc)) + ".")
                response.headers["retry-after"] = "5"
            return self.finish(response, v)

        return endpoint

    async def _csrf_refusal(self, request: Request, v: Visitor) -> str:
        """"" when a form comes from this console with its token; else what its 403 says."""
        origin = request.headers.get("origin")
        if origin and origin != "null":
            scheme, host = public_origin(request.scope, self.settings.server.trusted_proxies)
            if origin != f"{scheme}://{host}":
                return self._origin_refusal(request, origin, scheme, host)
        presented = request.headers.get("x-csrf-token")
        if presented is None:
            presented = (await self.form(request)).get("csrf_token")
        return "" if security.csrf_ok(self.secret, request.cookies.get(BROWSER_COOKIE), presented) else FORM_EXPIRED

    def _origin_refusal(self, request: Request, origin: str, scheme: str, host: str) -> str:
        """A form from another origin. When a proxy the gateway does not trust sent forwarded headers, or the browser
        used HTTPS while the gateway saw HTTP, the likely cause is [server] trusted_proxies: the operator is told in
        the log (at most once in PROXY_WARNING_SECONDS), and the page names the setting."""
        proxy = untrusted_proxy(request.scope, self.settings.server.trusted_proxies)
        if not proxy and not (origin == f"https://{host}" and scheme == "http"):
            return FORM_EXPIRED
        now = self.clock()
        if now - self._proxy_warned_at >= PROXY_WARNING_SECONDS:
            self._proxy_warned_at = now
            if proxy:
                log.warning("console forms are refused (403): the proxy at %s sent X-Forwarded-* headers but is not "
                            "in [server] trusted_proxies, so they are ignored and a form's origin does not match; "
                            "add its address to trusted_proxies", proxy)
            else:
                log.warning("console forms are refused (403): the browser used HTTPS but the gateway saw HTTP; when "
                            "a proxy ends TLS, it must send X-Forwarded-Proto and be listed in [server] "
                            "trusted_proxies")
        return FORM_EXPIRED + " " + PROXY_HINT

    async def form(self, request: Request) -> dict[str, str]:
        """An application/x-www-form-urlencoded body (the console's forms), read once; the last value of a name wins."""
        cached = request.scope.get("tt_form")
        if cached is not None:
            return cached
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise FormError("the form is too large")
        ctype = request.headers.get("content-type", "")
        form: dict[str, str] = {}
        if ctype.startswith("application/x-www-form-urlencoded"):
            try:
                form = dict(urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=200))
            except (UnicodeDecodeError, ValueError):
                raise FormError("the form could not be read") from None
        request.scope["tt_form"] = form
        return form

    def finish(self, response: Response, v: Visitor) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if v.new_browser:
            # Lax, not Strict: a link from elsewhere must not renew it (that would void every open tab's forms)
            response.set_cookie(BROWSER_COOKIE, v.browser_id, httponly=True, samesite="lax", secure=v.secure,
                                path="/console")
        return response

    # -- rendering ----------------------------------------------------------------------------

    def render(self, v: Visitor, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        flash = context.pop("flash", None)
        html = self.templates.get_template(template).render(
            user=v.user, operator=v.operator, csrf=v.csrf, flash=flash, signup=self.settings.console.signup,
            **context)
        return HTMLResponse(html, status_code=status)

    def error(self, v: Visitor, status: int, message: str) -> HTMLResponse:
        return self.render(v, "error.html", status=status, status_code=status, message=message)

    def back(self, path: str, message: str, v: Visitor) -> Response:
        """After a change: back to a page (303), with a one-time note shown there."""
        response = RedirectResponse(path, status_code=303)
        response.set_cookie(FLASH_COOKIE, urllib.parse.quote(message[:300]), httponly=True, samesite="strict",
                            secure=v.secure, path="/console", max_age=60)
        return response

    def show(self, request: Request, v: Visitor, template: str, **context: Any) -> HTMLResponse:
        """A GET page with the last change's note (if any)."""
        note = request.cookies.get(FLASH_COOKIE)
        response = self.render(v, template, flash=urllib.parse.unquote(note)[:300] if note else None, **context)
        if note is not None:
            response.delete_cookie(FLASH_COOKIE, path="/console")
        return response

    def base_url(self, request: Request) -> str:
        """The gateway's public URL, as configured, else as this request reached it."""
        return public_base_url(request.scope, self.settings.server.trusted_proxies, self.settings.console.base_url)

    # -- log-ins ------------------------------------------------------------------------------

    async def check_password(self, password: str, stored: str | None) -> bool:
        """Against a user's stored hash; with none, against a dummy one (the same cost, so a log-in for an unknown
        address takes as long as a wrong password)."""
        return await self.ops.check_password(password, stored or security.DUMMY_HASH)

    def client_address(self, request: Request) -> str:
        return from_scope(request.scope, self.settings.server.trusted_proxies)

    async def log_in(self, request: Request, email: str, password: str) -> int | str:
        """The user id of a right e-mail and password; else why not (wrong, or too many attempts). Each attempt is
        counted (login_subjects) before the password is checked, across workers; one that succeeds takes its
        count back, and the earlier failures of that e-mail from that client."""
        client = client_bucket(self.client_address(request))
        known = known_client_subject(email, client)
        now = self.clock()
        known_client = await self.db.run(store.tx_marked_since, known, now - KNOWN_CLIENT_SECONDS)
        subjects = login_subjects(email, client, self.settings.console.login_attempts, known_client)
        taken = await self.take_attempt(subjects, self.settings.console.login_window, "Too many failed log-ins.")
        if isinstance(taken, str):
            return taken
        user = await self.db.run(store.tx_login_user, email)
        if not await self.check_password(password, user["password"] if user else None) or user is None:
            return "Wrong e-mail address or password."
        await self.db.run(store.tx_give_back_attempt, taken, subjects[0][0], known, self.clock())
        return int(user["id"])

    def password_subjects(self, request: Request, email: str) -> list[tuple[str, int]]:
        """What a logged-in user's guess at the current password (changing it) counts against from this request's
        client; a log-in counts against these and, from a client new to the account, the account too (check_login)."""
        client = client_bucket(self.client_address(request))
        return login_subjects(email, client, self.settings.console.login_attempts)

    async def take_attempt(self, subjects: list[tuple[str, int]], window: float, refusal: str) -> list[int] | str:
        """One more attempt for each (subject, limit) in the window: the rows that count it, or the refusal with
        how long to wait."""
        now = self.clock()
        keep = max(self.settings.console.login_window, SIGNUP_WINDOW)  # the longest window any subject counts
        rows, wait = await self.db.run(store.tx_take_attempt, subjects, now - window, now, keep)
        if not rows:
            return f"{refusal} Try again in {_duration(max(1, int(wait) + 1))}."
        return rows

    async def start_session(self, v: Visitor, user_id: int, target: str) -> Response:
        token, token_hash = security.new_session()
        now = time.time()
        await self.db.run(store.tx_create_session, token_hash, user_id, now, now + self.settings.console.session_ttl)
        if v.session_hash is not None:
            await self.db.run(store.tx_drop_session, v.session_hash)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(SESSION_COOKIE, security.session_cookie(self.secret, token), httponly=True, samesite="lax",
                            secure=v.secure, path="/console", max_age=int(self.settings.console.session_ttl))
        # a new browser id (and so a new CSRF token) at every log-in: a token seen before it is worth nothing after
        v.browser_id = security.new_browser_id()
        v.new_browser = True
        return response


def safe_next(target: str | None) -> str:
    """Where to go after logging in: only a console page of this site (printable ASCII, of a sane length)."""
    if (target and target.startswith("/console/") and not target.startswith("//") and "\\" not in target
            and len(target) <= MAX_NEXT and target.isascii() and target.isprintable()):
        return target
    return "/console/dashboard"


def _utc(ts: float | None, fmt: str) -> str:
    """A moment for people, UTC; one no calendar can show (NaN, past the year 9999) as words, never an error."""
    if not ts:
        return ""
    try:
        return time.strftime(fmt, time.gmtime(ts))
    except (OverflowError, OSError, ValueError):
        return "far in the future" if ts > 0 else "unknown"


def _when(ts: float | None) -> str:
    return _utc(ts, "%Y-%m-%d %H:%M:%S UTC")


def day_text(ts: float | None) -> str:
    return _utc(ts, "%Y-%m-%d")


def _duration(seconds: int) -> str:
    if seconds < 90:
        return f"{seconds} seconds"
    return f"{(seconds + 59) // 60} minutes"


def sentence(text: str) -> str:
    """A message (Operations' are written lower-case, to go after a colon) as a sentence: first letter upper-case."""
    return text[:1].upper() + text[1:]
