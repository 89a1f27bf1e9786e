"""The product document's screens, server-rendered, on top of the same service layer as the API.

Every action goes through ``TwoFactorService``; the pages only keep the browser's tokens in
cookies, check the CSRF token of every form and turn service refusals into messages.
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
from twofa.views import LoginView
from twofa.vocabulary import Outcome, Step
from twofa.web.security import (
    CSRF_COOKIE,
    CSRF_FIELD,
    DEVICE_COOKIE,
    DEVICE_MAX_AGE,
    FLASH_COOKIE,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    CsrfRefused,
    FlowCookie,
    LoginFlow,
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
    "browser_gone": ("info", "This browser is no longer among your trusted devices."),
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


def attempts_text(left: object) -> str:
    """The count in correct English ("1 attempt left", "4 attempts left"), or nothing."""
    if not isinstance(left, int):
        return ""
    return f" {left} attempt{'s' if left != 1 else ''} left."


def device_label(name: str | None) -> str:
    return name or "Unnamed browser"


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
            harden(response)
            return response

        return page_handler


router = APIRouter(route_class=PageRoute, include_in_schema=False)


async def signed_in(request: Request) -> CurrentSession:
    """The session of this browser's cookie; none or ended sends the browser to the login."""
    return await service_of(request).current_session(request.cookies.get(SESSION_COOKIE))


Service = Annotated[TwoFactorService, Depends(service_of)]
Form = Annotated[PageForm, Depends(checked_form)]
User = Annotated[CurrentSession, Depends(signed_in)]


async def optional_session(request: Request, svc: TwoFactorService) -> CurrentSession | None:
    try:
        return await svc.current_session(request.cookies.get(SESSION_COOKIE))
    except ServiceError:
        return None


def start_session(request: Request, response: Response, view: LoginView) -> None:
    """The session token, and after an enrollment the device token, go to their cookies."""
    assert view.session_token is not None and view.expires_at is not None
    max_age = max(1, int((view.expires_at - datetime.now(UTC)).total_seconds()))
    set_cookie(response, request, SESSION_COOKIE, view.session_token, max_age=max_age)
    if view.device_token:
        set_cookie(response, request, DEVICE_COOKIE, view.device_token, max_age=DEVICE_MAX_AGE)
    FlowCookie.clear(response, request)


def field_errors(error: ServiceError, fields: set[str]) -> dict[str, str] | None:
    """A refusal naming the form's fields (one, or each in ``fields``), as inline errors."""
    if error.status not in (409, 422):
        return None
    named = error.details.get("fields") or [error.details]
    errors = {
        str(item["field"]): in_page_words(str(item.get("message", error.message)))
        for item in named
        if item.get("field") in fields
    }
    return errors or None


# -- home, login and logout


@router.get("/")
async def home(request: Request, current: User) -> Response:
    return render(request, "home.html", current=current)


@router.get("/login")
async def login_page(request: Request, svc: Service) -> Response:
    if await optional_session(request, svc):
        return redirect(request, "/")
    return render(request, "login.html", email=flows(request).remembered_email(request))


@router.post("/login")
async def login(request: Request, form: Form, svc: Service) -> Response:
    email = form.get("email")
    try:
        view = await svc.login(email, form.get("password"), request.cookies.get(DEVICE_COOKIE))
    except ServiceError as error:
        if error.status in (401, 422, 429):
            retry = error.details.get("retry_after")
            message = error.message + (f" Try again in {retry} seconds." if retry else "")
            return render(request, "login.html", error.status, error=message, email=email)
        raise
    response = login_outcome(request, view)
    flows(request).remember_email(response, request, email.strip())
    return response


def login_outcome(request: Request, view: LoginView) -> Response:
    """Each outcome of the password step, as the page that asks for what comes next."""
    if view.outcome is Outcome.AUTHENTICATED:
        response = redirect(request, "/")
        start_session(request, response, view)
        return response
    if view.outcome is Outcome.LOCKED:
        return locked_page(request, view.locked_until)
    assert view.login_id is not None
    flow = LoginFlow(login_id=view.login_id, step=Step.CODE)
    if view.outcome is Outcome.ACTIVATION_CODE_REQUIRED:
        flow.code_expires_at = view.code_expires_at.isoformat() if view.code_expires_at else None
        flow.code_sent = bool(view.code_sent)
        page = "/login/code"
    elif view.outcome is Outcome.ACTIVATION_REQUIRED:
        flow.step, page = Step.ACTIVATION, STEP_PAGES[Step.ACTIVATION]
    elif view.outcome is Outcome.PIN_REQUIRED:
        flow.step, flow.seal, page = Step.PIN, view.seal, STEP_PAGES[Step.PIN]
    else:  # browser_not_trusted
        flow.step, page = Step.ENROLL, STEP_PAGES[Step.ENROLL]
    response = redirect(request, page)
    flows(request).write(response, request, flow)
    return response


@router.post("/logout")
async def logout(request: Request, form: Form, svc: Service) -> Response:
    """The "Auto-logout" button (and the end of the countdown): this session ends now."""
    current = await optional_session(request, svc)
    if current is not None:
        await svc.logout(current)
    response = redirect(request, "/login", "logged_out")
    clear_cookie(response, request, SESSION_COOKIE)
    return response


# -- the login in progress


def flow_at(request: Request, step: Step) -> LoginFlow:
    """This browser's login if it waits for ``step``; else a detour to where it stands."""
    flow = flows(request).read(request)
    if flow is None:
        had_flow = LOGIN_COOKIE in request.cookies
        response = redirect(request, "/login", "login_expired" if had_flow else None)
        FlowCookie.clear(response, request)
        raise Detour(response)
    if flow.step != step:
        raise Detour(redirect(request, STEP_PAGES[flow.step]))
    return flow


def code_page(
    request: Request, flow: LoginFlow, status: int = 200, error: str | None = None
) -> Response:
    settings = service_of(request).settings
    return render(
        request,
        "code.html",
        status,
        flow=flow,
        validity=duration_text(settings.code_ttl_seconds),
        error=error,
    )


@router.get("/login/code")
async def code_form(request: Request) -> Response:
    return code_page(request, flow_at(request, Step.CODE))


@router.post("/login/code")
async def code(request: Request, form: Form, svc: Service) -> Response:
    flow = flow_at(request, Step.CODE)
    typed = form.get("code").strip()
    if not typed:
        return code_page(request, flow, 422, "Type the activation code received by email.")
    try:
        view = await svc.submit_code(flow.login_id, typed)
    except ServiceError as error:
        if error.code == errors.CODE_EXPIRED.code or error.details.get("attempts_left") == 0:
            response = redirect(request, "/login", "code_expired")
            FlowCookie.clear(response, request)
            return response
        if error.code == errors.INVALID_CODE.code:
            message = error.message + attempts_text(error.details.get("attempts_left"))
            return code_page(request, flow, 400, message)
        raise
    if view.outcome is Outcome.PIN_REQUIRED:
        flow.step, flow.seal, page = Step.PIN, view.seal, STEP_PAGES[Step.PIN]
    else:
        flow.step, page = Step.ACTIVATION, STEP_PAGES[Step.ACTIVATION]
    response = redirect(request, page)
    flows(request).write(response, request, flow)
    return response


ACTIVATION_FIELDS = {"device_name", "pin", "pin_confirmation", "seal", "email"}


@router.get("/login/activate")
async def activation_form(request: Request) -> Response:
    flow_at(request, Step.ACTIVATION)
    return render(request, "activate.html", errors={}, values={})


@router.post("/login/activate")
async def activate(request: Request, form: Form, svc: Service) -> Response:
    flow = flow_at(request, Step.ACTIVATION)
    values = {name: form.get(name) for name in ACTIVATION_FIELDS}
    try:
        view = await svc.activate(
            flow.login_id,
            pin=values["pin"],
            pin_confirmation=values["pin_confirmation"],
            seal=values["seal"],
            device_name=values["device_name"] or None,
            email=values["email"] or None,
        )
    except ServiceError as error:
        wrong = field_errors(error, ACTIVATION_FIELDS)
        if wrong is None:
            raise
        pins = ("pin", "pin_confirmation")
        # the PIN is typed back only when both its boxes were right: a wrong one is retyped
        kept = {k: v for k, v in values.items() if k not in pins or not wrong.keys() & pins}
        return render(request, "activate.html", error.status, errors=wrong, values=kept)
    response = redirect(request, "/login/activated")
    assert view.device_token is not None
    set_cookie(response, request, DEVICE_COOKIE, view.device_token, max_age=DEVICE_MAX_AGE)
    flow.step, flow.seal = Step.PIN, view.seal
    flows(request).write(response, request, flow)
    return response


@router.get("/login/activated")
async def activated(request: Request) -> Response:
    flow_at(request, Step.PIN)
    return render(request, "activated.html")


def pin_page(
    request: Request, flow: LoginFlow, status: int = 200, error: str | None = None
) -> Response:
    return render(request, "pin.html", status, seal=flow.seal, error=error)


@router.get("/login/pin")
async def pin_form(request: Request) -> Response:
    return pin_page(request, flow_at(request, Step.PIN))


@router.post("/login/pin")
async def pin(request: Request, form: Form, svc: Service) -> Response:
    flow = flow_at(request, Step.PIN)
    try:
        view = await svc.submit_pin(flow.login_id, form.get("pin"))
    except ServiceError as error:
        if error.code == errors.INVALID_PIN.code:
            message = "Wrong password." + attempts_text(error.details.get("attempts_left"))
            return pin_page(request, flow, 400, message)
        if error.status == 422:
            return pin_page(request, flow, 422, in_page_words(error.message))
        raise
    response = redirect(request, "/", "enrolled" if view.device_token else "connected")
    start_session(request, response, view)
    return response


@router.get("/login/not-trusted")
async def not_trusted(request: Request) -> Response:
    flow_at(request, Step.ENROLL)
    return render(request, "not_trusted.html", errors={}, values={})


@router.post("/login/not-trusted")
async def enroll(request: Request, form: Form, svc: Service) -> Response:
    """R9: this browser gets an emailed code, then the PIN, and becomes trusted."""
    flow = flow_at(request, Step.ENROLL)
    name = form.get("device_name")
    try:
        view = await svc.enroll_browser(flow.login_id, name or None)
    except ServiceError as error:
        wrong = field_errors(error, {"device_name"})
        if wrong is None:
            raise
        values = {"device_name": name}
        return render(request, "not_trusted.html", error.status, errors=wrong, values=values)
    flow.step, flow.enrolling, flow.code_sent = Step.CODE, True, True
    flow.code_expires_at = view.code_expires_at.isoformat() if view.code_expires_at else None
    response = redirect(request, "/login/code")
    flows(request).write(response, request, flow)
    return response


# -- settings


@router.get("/settings")
async def settings_page(request: Request, current: User, svc: Service) -> Response:
    return await settings_view(request, current, svc)


async def settings_view(
    request: Request,
    current: CurrentSession,
    svc: TwoFactorService,
    status: int = 200,
    error: str | None = None,
) -> Response:
    two_factor = await svc.two_factor(current)
    return render(
        request, "settings.html", status, current=current, two_factor=two_factor, error=error
    )


@router.post("/settings/two-factor/enable")
async def enable(request: Request, form: Form, current: User, svc: Service) -> Response:
    """R1, R3: the code is mailed and the notice counts down to the automatic logout."""
    try:
        await svc.enable(current)
    except ServiceError as error:
        if error.status == 422:
            return await settings_view(request, current, svc, 422, error.message)
        if error.code == errors.ALREADY_ENABLED.code:
            return redirect(request, "/settings")
        raise
    return redirect(request, "/settings/enabled")


@router.get("/settings/enabled")
async def logout_notice(request: Request, current: User, svc: Service) -> Response:
    two_factor = await svc.two_factor(current)
    if two_factor.auto_logout_at is None:
        return redirect(request, "/settings")
    left = (two_factor.auto_logout_at - datetime.now(UTC)).total_seconds()
    return render(
        request,
        "logout_notice.html",
        current=current,
        after=duration_text(svc.settings.auto_logout_seconds),
        remaining_ms=max(0, int(left * 1000)),
        remaining=max(0, math.ceil(left)),
    )


@router.get("/settings/disable")
async def disable_confirmation(request: Request, current: User) -> Response:
    return render(request, "disable.html", current=current)


@router.post("/settings/two-factor/disable")
async def disable(request: Request, form: Form, current: User, svc: Service) -> Response:
    """R10: only the Yes of the confirmation page gets here; every trusted browser goes."""
    if form.get("confirm") != "yes":
        return redirect(request, "/settings")
    await svc.disable(current.account, confirm=True, keep=current.session)
    response = await after_revocation(request, svc, "/settings", "disabled")
    clear_cookie(response, request, DEVICE_COOKIE)  # revoked with every other browser
    return response


async def after_revocation(
    request: Request, svc: TwoFactorService, page: str, flash: str, name: str | None = None
) -> Response:
    """Revoking this browser ends the sessions it opened: then back to the login page."""
    if await optional_session(request, svc):
        return redirect(request, page, flash, name)
    response = redirect(request, "/login", flash, name)
    clear_cookie(response, request, SESSION_COOKIE)
    clear_cookie(response, request, DEVICE_COOKIE)
    return response


@router.get("/settings/browsers")
async def browsers(request: Request, current: User, svc: Service) -> Response:
    devices = await svc.devices(current.account.id)
    return render(
        request,
        "browsers.html",
        current=current,
        devices=devices,
        this_device=current.session.device_id,
    )


@router.post("/settings/browsers/delete")
async def delete_browser(request: Request, form: Form, current: User, svc: Service) -> Response:
    """R11: one browser goes, the others keep working; the Delete button asks first."""
    device_id = form.get("device_id")
    device = next((d for d in await svc.devices(current.account.id) if d.id == device_id), None)
    if device is None:
        return redirect(request, "/settings/browsers", "browser_gone")
    this_browser = device_id == current.session.device_id
    if form.get("confirm") != "yes":
        return render(
            request,
            "delete_browser.html",
            current=current,
            device=device,
            label=device_label(device.name),
            this_browser=this_browser,
        )
    await svc.delete_device(current, device_id)
    name = device_label(device.name)
    if this_browser:
        return await after_revocation(
            request, svc, "/settings/browsers", "this_browser_deleted", name
        )
    return redirect(request, "/settings/browsers", "browser_deleted", name)
