"""A console visitor over plain HTTP for the console's tests (no browser): a cookie jar, the CSRF token read from
the last page, sign-up and log-in. Browser tests use tests/browser.py instead."""

from __future__ import annotations

import re
from typing import Any

import requests

CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
PASSWORD = "correct horse battery"


class ConsoleClient:
    def __init__(self, base_url: str) -> None:
        self.base = base_url.rstrip("/")
        self.http = requests.Session()
        self.csrf = ""

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        """A GET of a console page; the CSRF token on it (if any) is kept for the next change."""
        kwargs.setdefault("allow_redirects", False)
        response = self.http.get(self.base + path, timeout=30, **kwargs)
        found = CSRF_FIELD.search(response.text) if "html" in response.headers.get("content-type", "") else None
        if found:
            self.csrf = found.group(1)
        return response

    def post(self, path: str, data: dict[str, str] | None = None, csrf: bool = True, **kwargs: Any) -> requests.Response:
        """A form POST, with the CSRF token unless csrf=False (to see it refused)."""
        if csrf and not self.csrf:
            self.get("/console/login")
        form = {**({"csrf_token": self.csrf} if csrf else {}), **(data or {})}
        kwargs.setdefault("allow_redirects", False)
        return self.http.post(self.base + path, data=form, timeout=30, **kwargs)

    def sign_up(self, email: str, password: str = PASSWORD) -> requests.Response:
        """Sign up, then log in (a sign-up never starts a session: it answers alike for a registered address);
        the log-in's answer."""
        made = self.sign_up_only(email, password)
        assert made.status_code == 303, made.text
        response = self.log_in(email, password)
        assert response.status_code == 303, response.text
        return response

    def sign_up_only(self, email: str, password: str = PASSWORD, password2: str | None = None) -> requests.Response:
        """The sign-up form posted (from a fresh form), its answer as it is."""
        self.get("/console/signup")
        return self.post("/console/signup", {"email": email, "password": password,
                                             "password2": password if password2 is None else password2})

    def log_in(self, email: str, password: str = PASSWORD) -> requests.Response:
        self.get("/console/login")
        response = self.post("/console/login", {"email": email, "password": password})
        if response.status_code == 303:
            self.get("/console/dashboard")
        return response
