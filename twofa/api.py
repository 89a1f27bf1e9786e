"""The HTTP API (docs/api.md, the HTTP API contract v1): a thin mapping of the service layer."""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, StrictBool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp

from twofa import errors
from twofa.config import Settings
from twofa.errors import ServiceError
from twofa.observability import BoundedInput, Metrics, Observed
from twofa.service import CurrentSession
from twofa.store.db import did_not_answer
from twofa.views import (
    AccountView,
    DeviceView,
    DisabledView,
    EnabledView,
    LoginView,
    SessionView,
    TwoFactorView,
)
from twofa.web import router as pages
from twofa.web.core import Service
from twofa.wiring import services

log = logging.getLogger(__name__)
#: Any text the API takes: bounded, and without NUL, which no database column may hold.
NO_NUL = r"^[^\x00]*$"
Text = Annotated[str, Field(max_length=1024, pattern=NO_NUL)]
Short = Annotated[str, Field(max_length=64, pattern=NO_NUL)]


class NewAccount(BaseModel):
    email: Text
    password: Text


class Credentials(BaseModel):
    email: Text
    password: Text
    device_token: Text | None = None


class LoginStep(BaseModel):
    """S8: a login step names its login in the body, never in the URL (no log holds it)."""

    login_id: Text


class CodeInput(LoginStep):
    code: Annotated[Short, Field(min_length=1)]


class ActivationInput(LoginStep):
    pin: Short
    pin_confirmation: Short
    seal: Text
    device_name: Text | None = None
    email: Text | None = None


class EnrollInput(LoginStep):
    device_name: Text | None = None


class PinInput(LoginStep):
    pin: Short


class TwoFactorSwitch(BaseModel):
    enabled: StrictBool
    confirm: StrictBool = False


def _error(error: ServiceError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


class EdgeGuardedApp(FastAPI):
    """FastAPI inside the edge middlewares, which run before anything FastAPI does (S8)."""

    def __init__(self, settings: Settings, metrics: Metrics, **options: Any) -> None:
        super().__init__(**options)
        self.settings = settings
        self.metrics = metrics

    def build_middleware_stack(self) -> ASGIApp:
        inner = BoundedInput(super().build_middleware_stack(), self.settings.resolved_service_token)
        return Observed(inner, self.metrics)


def retry_after(error: ServiceError) -> dict[str, str]:
    """The contract's ``Retry-After`` header on a 503 and on a 429, in whole seconds."""
    if error.status == 503:
        return {"Retry-After": str(error.details.get("retry_after", UNAVAILABLE_RETRY_SECONDS))}
    if error.status == 429 and "retry_after" in error.details:
        return {"Retry-After": str(error.details["retry_after"])}
    return {}


#: How long a caller waits before repeating a request that got a 503 (S9: repeating is safe).
UNAVAILABLE_RETRY_SECONDS = 1


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with services(settings) as built:
            app.state.service = built.users
            yield

    docs = settings.api_docs
    app = EdgeGuardedApp(
        settings,
        Metrics(),
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
        title="Cockpit 2FA",
        version="1",
        summary="Two-factor authentication for Cockpit: enrollment, PIN login, trusted browsers.",
        lifespan=lifespan,
    )
    app.exception_handler(ServiceError)(_service_error)
    app.exception_handler(RequestValidationError)(_invalid_request)
    app.exception_handler(StarletteHTTPException)(_http_error)
    app.exception_handler(Exception)(_unexpected)
    app.include_router(router)
    app.include_router(pages)  # the end users' pages at /, without the service token
    return app


async def _service_error(_: Request, error: ServiceError) -> JSONResponse:
    body = error.body()
    return JSONResponse(
        {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in body.items()},
        status_code=error.status,
        headers=retry_after(error),
    )


async def _invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
    first = error.errors()[0] if error.errors() else {}
    location = [str(part) for part in first.get("loc", ())]
    if first.get("type") == "json_invalid":  # the position of a parse error is no field
        location = ["body"]
    field = ".".join(part for part in location if part != "body") or "body"
    return _error(errors.INVALID_REQUEST(field, first.get("msg", "invalid"), field=field))


async def _http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
    return _error(errors.http_error(error.status_code, str(error.detail)))


async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    if did_not_answer(error):
        log.error("the database did not answer: %s", type(error).__name__)
        return await _service_error(request, errors.UNAVAILABLE())
    log.error("unexpected %s", type(error).__name__)
    return _error(errors.INTERNAL_ERROR())


# -- the routes: /healthz, /metrics and /v1

router = APIRouter()
bearer = HTTPBearer(auto_error=False)


def edge_app(request: Request) -> EdgeGuardedApp:
    """The app serving this request, with its settings and its metrics."""
    app = request.app
    assert isinstance(app, EdgeGuardedApp)
    return app


async def caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """S6: every call carries the service token (async: checked on the loop, not a thread)."""
    expected = edge_app(request).settings.resolved_service_token.encode()
    given = credentials.credentials.encode() if credentials else b""
    if not hmac.compare_digest(given, expected):
        raise errors.INVALID_SERVICE_TOKEN()


async def user(
    svc: Service,
    x_session_token: Annotated[str | None, Header(max_length=1024)] = None,
) -> CurrentSession:
    """S6: user actions also carry the user's session."""
    return await svc.current_session(x_session_token)


User = Annotated[CurrentSession, Depends(user)]
V1: dict[str, Any] = {"dependencies": [Depends(caller)]}
#: A login's outcome carries only the fields that outcome has (docs/api.md "Login outcomes").
LOGIN_STEP: dict[str, Any] = {**V1, "response_model_exclude_none": True}


@router.get("/healthz", tags=["operations"])
async def healthz(svc: Service) -> JSONResponse:
    """Which part answers; a 503 in the contract's error shape, with its ``Retry-After``."""
    checks = await svc.health()
    if all(checks.values()):
        return JSONResponse({"status": "ok", **checks})
    unavailable = errors.UNAVAILABLE()
    return JSONResponse(
        {**unavailable.body(), "status": "unavailable", **checks},
        status_code=503,
        headers=retry_after(unavailable),
    )


@router.get("/metrics", include_in_schema=False, **V1)
async def metrics(request: Request) -> Response:
    """Prometheus text format; labels are route templates and codes, never an id (S4)."""
    registry = edge_app(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.post("/v1/accounts", status_code=201, tags=["accounts"], **V1)
async def register(body: NewAccount, svc: Service) -> AccountView:
    return await svc.register(body.email, body.password)


@router.post("/v1/login", tags=["login"], **LOGIN_STEP)
async def login(body: Credentials, svc: Service) -> LoginView:
    return await svc.login(body.email, body.password, body.device_token)


@router.post("/v1/login/activation-code", tags=["login"], **LOGIN_STEP)
async def activation_code(body: CodeInput, svc: Service) -> LoginView:
    return await svc.submit_code(body.login_id, body.code)


@router.post("/v1/login/activate", tags=["login"], **LOGIN_STEP)
async def activate(body: ActivationInput, svc: Service) -> LoginView:
    return await svc.activate(
        body.login_id,
        pin=body.pin,
        pin_confirmation=body.pin_confirmation,
        seal=body.seal,
        device_name=body.device_name,
        email=body.email,
    )


@router.post("/v1/login/enroll-browser", status_code=202, tags=["login"], **LOGIN_STEP)
async def enroll_browser(body: EnrollInput, svc: Service) -> LoginView:
    return await svc.enroll_browser(body.login_id, body.device_name)


@router.post("/v1/login/pin", tags=["login"], **LOGIN_STEP)
async def pin(body: PinInput, svc: Service) -> LoginView:
    return await svc.submit_pin(body.login_id, body.pin)


@router.get("/v1/session", tags=["session"], **V1)
async def session(current: User, svc: Service) -> SessionView:
    return svc.session_view(current)


@router.delete("/v1/session", status_code=204, tags=["session"], **V1)
async def logout(current: User, svc: Service) -> Response:
    await svc.logout(current)
    return Response(status_code=204)


@router.get("/v1/account/two-factor", tags=["two-factor"], **V1)
async def two_factor(current: User, svc: Service) -> TwoFactorView:
    return await svc.two_factor(current)


@router.put(
    "/v1/account/two-factor",
    tags=["two-factor"],
    responses={202: {"model": EnabledView}, 200: {"model": DisabledView}},
    **V1,
)
async def switch_two_factor(
    body: TwoFactorSwitch,
    svc: Service,
    response: Response,
    x_session_token: Annotated[str | None, Header(max_length=1024)] = None,
) -> EnabledView | DisabledView:
    if body.enabled:
        response.status_code = 202
        return await svc.enable(await svc.session_for_enable(x_session_token))
    current = await svc.current_session(x_session_token, repeating_disable=True)
    return await svc.disable(current.account, body.confirm, keep=current.session)


@router.get("/v1/account/devices", tags=["devices"], **V1)
async def devices(current: User, svc: Service) -> list[DeviceView]:
    return await svc.devices(current.account.id)


@router.delete("/v1/account/devices/{device_id}", status_code=204, tags=["devices"], **V1)
async def delete_device(device_id: Text, current: User, svc: Service) -> Response:
    await svc.delete_device(current, device_id)
    return Response(status_code=204)
