"""What every page shares: rendering, redirects with one-shot notices, refusals as pages.

Every action goes through ``TwoFactorService``; the pages only keep the browser's tokens in
cookies, check the CSRF token of every form and turn service refusals into messages. The pages'
one router is here; ``login`` and ``account_settings`` add their routes to it.
No postponed annotations here: FastAPI resolves the dependencies declared below.
"""

import base64
import binascii
import math
import re
import secrets
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from twofa import errors
from twofa.errors import ServiceError
from twofa.service import CurrentSession, TwoFactorService
from twofa.store.db import did_not_answer
from twofa.vocabulary import Step
from twofa.web.security import (
    CSRF_COOKIE,
    CSRF_FIELD,
    FLASH_COOKIE,
    SESSION_COOKIE,
    CsrfRefused,
    FlowCookie,
    PageForm,
    checked_form,
    clear_cookie,
    content_security_policy,
    csrf_token,
    harden,
    set_cookie,
)

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")

#: One-shot notices carried by a cookie across a redirect, so no message rides in a URL.
FLASH: dict[str, tuple[str, str]] = {
    "logged_out": ("info", "You are logged out from Cockpit."),
    "session_ended": ("info", "Your session has ended. Log in to Cockpit again."),
    "login_expired": ("error", "This login has expired. Log in to Cockpit again."),
    "code_expired": (
        "error",
        "The activation code is no longer valid. Log in to Cockpit again to receive another "
        "email with a new activation code.",
    ),
    "connected": (
        "success",
        "You are securely connected to your Cockpit account with two-factor authentication.",
    ),
    "enrolled": (
        "success",
        "This browser is enrolled as a trusted device. You are securely connected to your "
        "Cockpit account with two-factor authentication.",
    ),
    "browser_deleted": ("success", "The browser “{name}” was deleted from your trusted devices."),
    "browser_gone": ("info", "That browser is no longer among your trusted devices."),
    "this_browser_deleted": (
        "info",
        "This browser (“{name}”) was deleted from your trusted devices, and you are logged out.",
    ),
    "disabled": (
        "success",
        "Two-factor authentication is disabled for your account, and automatically for all "
        "the browsers you had enrolled as trusted devices.",
    ),
}

#: The page that asks for each form's step (``Step.form``: a new browser's code and PIN are
#: typed on the same pages as any).
STEP_PAGES = {
    Step.CODE: "/login/code",
    Step.ACTIVATION: "/login/activate",
    Step.PIN: "/login/pin",
    Step.ENROLL: "/login/not-trusted",
}


# -- rendering and redirects


def in_page_words(message: str) -> str:
    """The service says PIN; the document (and so the pages) says inWebo password."""
    return re.sub(r"\bPIN(s?)\b", r"inWebo password\1", message)


def duration_text(seconds: float) -> str:
    """``900`` reads "15 minutes", ``10`` reads "10 seconds": the document's wording."""
    if seconds >= 60 and seconds % 60 == 0:
        minutes = int(seconds // 60)
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    whole = math.ceil(seconds)
    return f"{whole} second{'s' if whole != 1 else ''}"


def clock(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if value else ""


templates.env.filters["clock"] = clock


def render(
    request: Request,
    name: str,
    status: int = 200,
    *,
    current: CurrentSession | None = None,
    **context: Any,
) -> HTMLResponse:
    """A page with its CSRF token, its one-shot notice and a per-response CSP nonce."""
    token, fresh = csrf_token(request)
    nonce = secrets.token_urlsafe(16)
    flash = read_flash(request)
    response = templates.TemplateResponse(
        request,
        name,
        {
            "csrf_field": CSRF_FIELD,
            "csrf_token": token,
            "nonce": nonce,
            "flash": flash,
            "user_email": current.account.email if current else None,
            **context,
        },
        status_code=status,
    )
    if fresh:
        set_cookie(response, request, CSRF_COOKIE, token)
    if FLASH_COOKIE in request.cookies:
        clear_cookie(response, request, FLASH_COOKIE)
    response.headers["Content-Security-Policy"] = content_security_policy(nonce)
    return response


def redirect(
    request: Request, path: str, flash: str | None = None, name: str | None = None
) -> RedirectResponse:
    """303 See Other: after a form post the browser GETs the next page (POST-redirect-GET).

    ``name`` fills the notice's ``{name}``, carried base64-encoded beside its key.
    """
    response = RedirectResponse(path, status_code=303)
    if flash:
        value = flash
        if name is not None:
            value += "." + base64.urlsafe_b64encode(name.encode()).decode()
        set_cookie(response, request, FLASH_COOKIE, value, max_age=60)
    return response


def read_flash(request: Request) -> tuple[str, str] | None:
    """The one-shot notice of the flash cookie, if its key is known (and its name decodes)."""
    key, _, encoded = request.cookies.get(FLASH_COOKIE, "").partition(".")
    notice = FLASH.get(key)
    if notice is None:
        return None
    try:
        name = base64.urlsafe_b64decode(encoded.encode()).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return notice[0], notice[1].replace("{name}", name)


def service_of(request: Request) -> TwoFactorService:
    return request.app.state.service


async def current_service(request: Request) -> TwoFactorService:
    """``service_of`` as a dependency: FastAPI runs a plain function dependency on a thread,
    a hand-off each way per request for an attribute lookup; an async one on the loop."""
    return service_of(request)


def flows(request: Request) -> FlowCookie:
    svc = service_of(request)
    return FlowCookie(svc.keyring, svc.settings.login_ttl_seconds)


def error_page(request: Request, error: ServiceError) -> Response:
    """What a refusal the page did not handle itself means to the person at the browser."""
    if error.code == errors.SESSION_ENDED.code:
        had_session = SESSION_COOKIE in request.cookies
        response = redirect(request, "/login", "session_ended" if had_session else None)
        clear_cookie(response, request, SESSION_COOKIE)
        return response
    if error.code == errors.LOGIN_NOT_FOUND.code:
        response = redirect(request, "/login", "login_expired")
        FlowCookie.clear(response, request)
        return response
    if error.code == errors.WRONG_STEP.code:
        expected = str(error.details.get("expected", ""))
        flow = flows(request).read(request)
        step = next((s.form for s in Step if s == expected), None)
        if flow is None or step is None or (step is Step.PIN and not flow.seal):
            response = redirect(request, "/login", "login_expired")
            FlowCookie.clear(response, request)
            return response
        response = redirect(request, STEP_PAGES[step])
        flow.step = step
        flows(request).write(response, request, flow)
        return response
    if error.code == errors.LOCKED.code:
        return locked_page(request, error.details.get("locked_until"))
    return render(request, "error.html", error.status, message=in_page_words(error.message))


def locked_page(request: Request, locked_until: datetime | None) -> Response:
    """S2: five wrong PINs in a row lock 2FA; the page says until when, and what to do."""
    settings = service_of(request).settings
    left = (locked_until - datetime.now(UTC)).total_seconds() if locked_until else None
    response = render(
        request,
        "locked.html",
        423,
        locked_until=locked_until,
        remaining=duration_text(max(60, math.ceil(left / 60) * 60)) if left is not None else None,
        lock_time=duration_text(settings.pin_lock_seconds),
    )
    FlowCookie.clear(response, request)
    return response


class Detour(Exception):
    """This browser's login is elsewhere (or over): the page answers with this redirect."""

    def __init__(self, response: Response) -> None:
        super().__init__("detour")
        self.response = response


class PageRoute(APIRoute):
    """Pages answer in HTML: CSRF refusals and service errors become pages, not JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page_handler(request: Request) -> Response:
            try:
                response = await handler(request)
            except Detour as detour:
                response = detour.response
            except CsrfRefused:
                response = render(
                    request,
                    "error.html",
                    403,
                    message="This form has expired or did not come from this site. "
                    "Go back, reload the page and try again.",
                )
            except ServiceError as error:
                response = error_page(request, error)
            except Exception as error:
                if not did_not_answer(error):
                    raise
                response = error_page(request, errors.UNAVAILABLE())
            harden(response)
            return response

        return page_handler


router = APIRouter(route_class=PageRoute, include_in_schema=False)


async def signed_in(request: Request) -> CurrentSession:
    """The session of this browser's cookie; none or ended sends the browser to the login."""
    return await service_of(request).current_session(request.cookies.get(SESSION_COOKIE))


async def signed_in_to_disable(request: Request) -> CurrentSession:
    """As ``signed_in``, and also the session a disable not yet taken effect kept: the disable's
    repeat, after a 503, must reach it (S9), as the API's repeat does."""
    svc = service_of(request)
    return await svc.current_session(request.cookies.get(SESSION_COOKIE), repeating_disable=True)


async def signed_in_to_enable(request: Request) -> CurrentSession:
    """As ``signed_in``, and also the session the browser's own enable cut while it waited:
    the enable's repeat, after a 503, gets that enable's answer (S9), as the API's does."""
    return await service_of(request).session_for_enable(request.cookies.get(SESSION_COOKIE))


Service = Annotated[TwoFactorService, Depends(current_service)]
Form = Annotated[PageForm, Depends(checked_form)]
User = Annotated[CurrentSession, Depends(signed_in)]
Disabling = Annotated[CurrentSession, Depends(signed_in_to_disable)]
Enabling = Annotated[CurrentSession, Depends(signed_in_to_enable)]


async def optional_session(request: Request, svc: TwoFactorService) -> CurrentSession | None:
    try:
        return await svc.current_session(request.cookies.get(SESSION_COOKIE))
    except ServiceError:
        return None
