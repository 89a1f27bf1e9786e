"""The login in a browser: the password, then the code, activation, browser enrollment and PIN
pages the service's answer asks for, each kept in step by the login cookie; and the logout.

No postponed annotations here: FastAPI resolves the dependencies declared below.
"""

from datetime import UTC, datetime

from fastapi import Request
from fastapi.responses import Response

from twofa import errors
from twofa.errors import ServiceError
from twofa.views import LoginView
from twofa.vocabulary import Outcome, Step
from twofa.web.core import (
    STEP_PAGES,
    Detour,
    Form,
    Service,
    duration_text,
    flows,
    in_page_words,
    locked_page,
    optional_session,
    redirect,
    render,
    router,
    service_of,
)
from twofa.web.security import (
    DEVICE_COOKIE,
    DEVICE_MAX_AGE,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    FlowCookie,
    LoginFlow,
    clear_cookie,
    set_cookie,
)


def attempts_text(left: object) -> str:
    """The count in correct English ("1 attempt left", "4 attempts left"), or nothing."""
    if not isinstance(left, int):
        return ""
    return f" {left} attempt{'s' if left != 1 else ''} left."


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
        if error.code == errors.PIN_CHECK_IN_PROGRESS.code:  # a double click's second post:
            # the page again, and the password typed again gets the first one's session (S9)
            return pin_page(request, flow, 429, in_page_words(error.message))
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
