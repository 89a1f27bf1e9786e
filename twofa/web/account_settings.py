"""The signed-in person's pages: home, 2FA on and off (R1, R3, R10), trusted browsers (R11).

No postponed annotations here: FastAPI resolves the dependencies declared below.
"""

import math
from datetime import UTC, datetime

from fastapi import Request
from fastapi.responses import Response

from twofa import errors
from twofa.errors import ServiceError
from twofa.service import CurrentSession, TwoFactorService
from twofa.web.core import (
    Disabling,
    Enabling,
    Form,
    Service,
    User,
    duration_text,
    in_page_words,
    optional_session,
    redirect,
    render,
    router,
)
from twofa.web.security import DEVICE_COOKIE, SESSION_COOKIE, clear_cookie


def device_label(name: str | None) -> str:
    return name or "Unnamed browser"


@router.get("/")
async def home(request: Request, current: User) -> Response:
    return render(request, "home.html", current=current)


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
async def enable(request: Request, form: Form, current: Enabling, svc: Service) -> Response:
    """R1, R3: the code is mailed and the notice counts down to the automatic logout. After a
    503 the settings page says so, and its button repeats the enable (S9)."""
    try:
        await svc.enable(current)
    except ServiceError as error:
        if error.status in (422, 503):
            message = in_page_words(error.message)
            if await optional_session(request, svc):
                return await settings_view(request, current, svc, error.status, message)
            # cut by this very enable: its repeat gets the enable's answer, and nothing else
            return render(request, "error.html", error.status, message=message)
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
async def disable(request: Request, form: Form, current: Disabling, svc: Service) -> Response:
    """R10: only the Yes of the confirmation page gets here; every trusted browser goes. After
    a 503 the confirmation is asked again, saying why, and its Yes repeats the disable (S9)."""
    if form.get("confirm") != "yes":
        return redirect(request, "/settings")
    try:
        await svc.disable(current.account, confirm=True, keep=current.session)
    except ServiceError as error:
        if error.status != 503:
            raise
        message = in_page_words(error.message)
        return render(request, "disable.html", 503, current=current, error=message)
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
