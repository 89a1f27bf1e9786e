"""Browser identity for the pages: cookies, CSRF, the login in progress, hardening headers.

Everything secret a browser holds lives in ``HttpOnly``, ``SameSite=Strict`` cookies (``Secure``
when the request came over HTTPS), never in a URL: a URL ends up in history, logs and referrers.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime

from cryptography.fernet import InvalidToken
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from twofa.crypto import Keyring
from twofa.vocabulary import Step

SESSION_COOKIE = "twofa_session"
DEVICE_COOKIE = "twofa_device"
LOGIN_COOKIE = "twofa_login"
CSRF_COOKIE = "twofa_csrf"
FLASH_COOKIE = "twofa_flash"
#: The email of the last login that passed the password, to fill the login form next time.
EMAIL_COOKIE = "twofa_email"
EMAIL_MAX_AGE = 30 * 24 * 3600
CSRF_FIELD = "csrf_token"
#: The login in progress is only ever needed by the pages under /login.
LOGIN_PATH = "/login"
#: Chrome caps a cookie's lifetime at 400 days; a trusted browser stays trusted that long.
DEVICE_MAX_AGE = 400 * 24 * 3600
MAX_FIELD_LENGTH = 1024
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{32,64}")


class CsrfRefused(Exception):
    """A form post without the browser's CSRF token: refused before anything runs."""


def is_https(request: Request) -> bool:
    """HTTPS as uvicorn sees it: directly, or X-Forwarded-Proto from a trusted proxy.

    uvicorn's proxy-header handling only believes ``X-Forwarded-Proto`` from the addresses in
    ``--forwarded-allow-ips`` (loopback by default), so a client cannot fake it.
    """
    return request.url.scheme == "https"


def set_cookie(
    response: Response,
    request: Request,
    name: str,
    value: str,
    *,
    max_age: int | None = None,
    path: str = "/",
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=path,
        secure=is_https(request),
        httponly=True,
        samesite="strict",
    )


def clear_cookie(response: Response, request: Request, name: str, path: str = "/") -> None:
    response.delete_cookie(
        name, path=path, secure=is_https(request), httponly=True, samesite="strict"
    )


# -- CSRF: double-submit of a per-browser random token, compared in constant time


def csrf_token(request: Request) -> tuple[str, bool]:
    """The browser's CSRF token, and whether it is new (then the caller sets the cookie)."""
    current = request.cookies.get(CSRF_COOKIE, "")
    if _TOKEN_SHAPE.fullmatch(current):
        return current, False
    return secrets.token_urlsafe(32), True


class PageForm:
    """A posted form whose CSRF token matched; values are strings cut to a sane length."""

    def __init__(self, values: dict[str, str]) -> None:
        self._values = values

    def get(self, name: str) -> str:
        return self._values.get(name, "")[:MAX_FIELD_LENGTH]


async def checked_form(request: Request) -> PageForm:
    """Every form post passes here first: no matching CSRF token, nothing happens (403).

    A browser that says the post came from another origin is refused even with a matching
    token: a page on a sibling subdomain is same-site, so SameSite cookies reach us from it,
    and it may have set the CSRF cookie itself. Browsers too old to say (no
    ``Sec-Fetch-Site``) rely on the token alone; ``Origin`` cannot serve instead, as the pages'
    ``no-referrer`` policy makes a browser send ``Origin: null`` with every post.
    """
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise CsrfRefused
    async with request.form(max_files=0, max_fields=20) as form:
        values = _strings(form)
    cookie = request.cookies.get(CSRF_COOKIE, "")
    sent = values.get(CSRF_FIELD, "")
    if not (_TOKEN_SHAPE.fullmatch(cookie) and hmac.compare_digest(sent.encode(), cookie.encode())):
        raise CsrfRefused
    return PageForm(values)


def _strings(form: FormData) -> dict[str, str]:
    return {key: value for key, value in form.items() if isinstance(value, str)}


# -- the login in progress: login_id (and the seal to show) sealed in a short-lived cookie


@dataclass
class LoginFlow:
    """Where this browser's login stands; the service re-checks every step anyway."""

    login_id: str
    step: Step  # the step of the form it is at (``Step.form``): a page, not the service's step
    seal: str | None = None
    code_expires_at: str | None = None
    code_sent: bool = False
    enrolling: bool = False

    @property
    def code_expires(self) -> datetime | None:
        return datetime.fromisoformat(self.code_expires_at) if self.code_expires_at else None


class FlowCookie:
    """Encrypts and authenticates the login in progress, so the cookie reveals and accepts
    nothing: the seal is a secret, and a tampered or stale cookie is simply no login."""

    def __init__(self, keyring: Keyring, ttl_seconds: float) -> None:
        """Keyed by the keyring: cookies made under a pepper a rotation replaced still read."""
        self._fernet = keyring.fernet("twofa-web-login-cookie")
        self._ttl = max(1, int(ttl_seconds))

    def read(self, request: Request) -> LoginFlow | None:
        raw = request.cookies.get(LOGIN_COOKIE)
        if not raw:
            return None
        try:
            data = json.loads(self._fernet.decrypt(raw.encode(), ttl=self._ttl))
            flow = LoginFlow(**data)
            flow.step = Step(flow.step)
            return flow
        except (InvalidToken, ValueError, TypeError):
            return None

    def write(self, response: Response, request: Request, flow: LoginFlow) -> None:
        value = self._fernet.encrypt(json.dumps(asdict(flow)).encode()).decode()
        set_cookie(response, request, LOGIN_COOKIE, value, max_age=self._ttl, path=LOGIN_PATH)

    @staticmethod
    def clear(response: Response, request: Request) -> None:
        clear_cookie(response, request, LOGIN_COOKIE, path=LOGIN_PATH)

    def remember_email(self, response: Response, request: Request, email: str) -> None:
        """After the auto-logout (or any logout) the login form still knows who logs in.

        Encrypted like the login in progress, so the browser's cookie store shows no address.
        """
        value = self._fernet.encrypt(email.encode()).decode()
        set_cookie(response, request, EMAIL_COOKIE, value, max_age=EMAIL_MAX_AGE, path=LOGIN_PATH)

    def remembered_email(self, request: Request) -> str | None:
        raw = request.cookies.get(EMAIL_COOKIE)
        if not raw:
            return None
        try:
            return self._fernet.decrypt(raw.encode()).decode()
        except (InvalidToken, UnicodeDecodeError):
            return None


# -- headers of every page


def harden(response: Response) -> None:
    """No caching (pages show the seal), no framing (clickjacking), no referrer, no sniffing."""
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    )


def content_security_policy(nonce: str) -> str:
    """Only the page's own inline style and (on the auto-logout notice) script may run."""
    return (
        f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
