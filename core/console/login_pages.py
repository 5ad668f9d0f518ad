"""The console's log-in pages: sign-up (answering alike whether or not the address is registered), log-in
(throttled), log-out and change password. Sessions, CSRF and the throttle are web.py's; the users Operations'."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from billing import store
from core.console.security import EMAIL_MAX
from core.clientip import client_bucket
from core.console.web import (SIGNUP_WINDOW, ConsoleWeb, FormError, NotFound, Visitor, safe_next,
                              sentence)
from core.operations import OperationError

# What every sign-up that passes the form's checks is told, whether its address was new (an account is made) or
# registered already (nothing is made or changed): the same redirect, the same note, no session either way.
SIGNUP_DONE = ("Thank you. If that address was new here, its account is ready: log in with it and the password you "
               "chose. If it was registered already, nothing changed: log in with its own password.")


def routes(web: ConsoleWeb) -> list[Route]:
    async def home(request: Request, v: Visitor) -> Response:
        return RedirectResponse("/console/dashboard" if v.user else "/console/login", status_code=303)

    async def login_form(request: Request, v: Visitor) -> Response:
        if v.user is not None:
            return RedirectResponse("/console/dashboard", status_code=303)
        return web.show(request, v, "login.html", email="", problem=None,
                        next=safe_next(request.query_params.get("next")))

    async def login(request: Request, v: Visitor) -> Response:
        try:
            form = await web.form(request)
        except FormError as exc:
            return web.render(v, "login.html", 400, email="", problem=str(exc), next="/console/dashboard")
        email = form.get("email", "").strip().lower()
        target = safe_next(form.get("next"))
        outcome = await web.log_in(request, email, form.get("password", ""))
        if isinstance(outcome, str):
            status = 429 if outcome.startswith("Too many") else 401
            return web.render(v, "login.html", status, email=email[:EMAIL_MAX], problem=outcome, next=target)
        return await web.start_session(v, outcome, target)

    async def signup_form(request: Request, v: Visitor) -> Response:
        if not web.settings.console.signup:
            raise NotFound
        return web.render(v, "signup.html", email="", problem=None)

    async def signup(request: Request, v: Visitor) -> Response:
        """A new account, or (the address registered already) nothing: either way the same answer (SIGNUP_DONE, a
        303 to the log-in page, no session) after the same work (the password is hashed in both cases)."""
        if not web.settings.console.signup:
            raise NotFound
        email = ""
        try:
            form = await web.form(request)
            email = form.get("email", "")[:EMAIL_MAX]
            if form.get("password", "") != form.get("password2", ""):
                raise FormError("The two passwords differ.")
            taken = await web.take_attempt([(f"signup:{client_bucket(web.client_address(request))}",
                                             web.settings.console.signups_per_hour)], SIGNUP_WINDOW,
                                           "Too many sign-ups from your address.")
            if isinstance(taken, str):
                return web.render(v, "signup.html", 429, email=email, problem=taken)
            await web.ops.sign_up(form.get("email", ""), form.get("password", ""))
        except FormError as exc:
            return web.render(v, "signup.html", 400, email=email, problem=str(exc))
        except OperationError as exc:
            return web.render(v, "signup.html", 400, email=email, problem=sentence(str(exc)))
        return web.back("/console/login", SIGNUP_DONE, v)

    async def logout(request: Request, v: Visitor) -> Response:
        if v.session_hash is not None:
            await web.db.run(store.tx_drop_session, v.session_hash)
        response = RedirectResponse("/console/login", status_code=303)
        response.delete_cookie("tt_session", path="/console")
        return response

    async def password_form(request: Request, v: Visitor) -> Response:
        return web.show(request, v, "password.html", problem=None)

    async def change_password(request: Request, v: Visitor) -> Response:
        assert v.user is not None
        try:
            form = await web.form(request)
            # guesses here count as failed log-ins of this user from this client
            taken = await web.take_attempt(web.password_subjects(request, v.user["email"]),
                                           web.settings.console.login_window, "Too many wrong passwords.")
            if isinstance(taken, str):
                return web.render(v, "password.html", 429, problem=taken)
            login = await web.db.run(store.tx_login_user, v.user["email"])
            if login is None or not await web.check_password(form.get("current", ""), login["password"]):
                raise FormError("The current password is wrong.")
            await web.db.run(store.tx_give_back_attempt, taken)
            if form.get("password", "") != form.get("password2", ""):
                raise FormError("The two new passwords differ.")
            await web.ops.set_password(str(v.user["id"]), form.get("password", ""), keep_session=v.session_hash)
        except FormError as exc:
            return web.render(v, "password.html", 400, problem=str(exc))
        except OperationError as exc:
            return web.render(v, "password.html", 400, problem=sentence(str(exc)))
        return web.back("/console/dashboard", "Your password was changed; your other sessions have ended.", v)

    return [
        Route("/", web.page(home, login=False), methods=["GET"]),
        Route("/login", web.page(login_form, login=False), methods=["GET"]),
        Route("/login", web.page(login, login=False), methods=["POST"]),
        Route("/signup", web.page(signup_form, login=False), methods=["GET"]),
        Route("/signup", web.page(signup, login=False), methods=["POST"]),
        Route("/logout", web.page(logout, login=False), methods=["POST"]),
        Route("/password", web.page(password_form), methods=["GET"]),
        Route("/password", web.page(change_password), methods=["POST"]),
    ]
