"""What sits between the network and the API: bounded input, request ids, logs and metrics.

Both middlewares are pure ASGI and wrap the whole application, so the service token and the
body limit are checked before FastAPI reads a byte of the body (S8), and every answer, even a
refusal, gets a request id and is counted.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import sys
import time
import uuid
from contextvars import ContextVar
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Histogram
from pythonjsonlogger.json import JsonFormatter
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from twofa import errors
from twofa.errors import ServiceError

#: S8: no request body may be larger (the API's and the pages' bodies are a few hundred bytes).
MAX_BODY_BYTES = 64 * 1024
#: uvicorn's own bounds, matched to the body limit: the request line and headers are kept well
#: under it, and the pure-Python h11 parser is named so that these limits are the ones in force.
UVICORN_LIMITS: dict[str, Any] = {
    "http": "h11",
    "h11_max_incomplete_event_size": 16 * 1024,
    "ws": "none",  # the API serves no WebSocket
}
#: The paths only a backend holding the service token may call (S6).
TOKEN_PATHS = ("/v1/", "/metrics")
#: The current request's id, for every log line written while it is served.
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
#: An incoming ``X-Request-ID`` is kept only when it looks like an id (a UUID, a hex or a
#: proxy's token), so no header can inject text or length into the logs.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{7,127}")
#: The login steps, by route template, as the metrics name them.
LOGIN_STEPS = {
    "/v1/login": "login",
    "/v1/login/activation-code": "activation_code",
    "/v1/login/activate": "activate",
    "/v1/login/enroll-browser": "enroll_browser",
    "/v1/login/pin": "pin",
}
#: A label value taken from an answer must look like one of our codes: bounded cardinality.
LABEL = re.compile(r"[a-z][a-z_]{0,39}")
#: The methods the latency histogram names; any other token a client sends is "other", so no
#: request line, token or not, can add series (bounded cardinality).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
#: Enough for any answer of a login step; longer bodies are not parsed for metrics.
CAPTURE_BYTES = 8 * 1024


class PayloadTooLarge(HTTPException):
    """Raised while the body streams in, once it passes the limit; FastAPI lets it through."""

    def __init__(self) -> None:
        super().__init__(413, errors.PAYLOAD_TOO_LARGE(MAX_BODY_BYTES).message)


async def _reply(send: Send, error: ServiceError, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(error.body()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *((k.encode(), v.encode()) for k, v in (headers or {}).items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def needs_token(path: str) -> bool:
    return path == "/v1" or path.startswith(TOKEN_PATHS)


class BoundedInput:
    """The service token first, then the body limit; nothing is read before both pass (S8)."""

    def __init__(self, app: ASGIApp, service_token: str, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.expected = service_token.encode()
        self.limit = limit

    def authorized(self, headers: Headers) -> bool:
        scheme, _, given = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), self.expected)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if needs_token(scope["path"]) and not self.authorized(headers):
            await _reply(send, errors.INVALID_SERVICE_TOKEN(), {"www-authenticate": "Bearer"})
            return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.limit:
            await _reply(send, errors.PAYLOAD_TOO_LARGE(MAX_BODY_BYTES))
            return
        received = 0

        async def bounded() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:  # chunked, or more than announced: stop reading here
                raise PayloadTooLarge
            return message

        await self.app(scope, bounded, send)


class Metrics:
    """The API's Prometheus metrics, in a registry of its own (one per application)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "twofa_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template (never the raw path) and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.outcomes = Counter(
            "twofa_login_outcomes",
            "Outcomes of logins and login steps that succeeded (authenticated, pin_required...).",
            ["outcome"],
            registry=self.registry,
        )
        self.steps = Counter(
            "twofa_login_steps",
            "Login steps answered, by step and result: ok, or the error code of the refusal.",
            ["step", "result"],
            registry=self.registry,
        )
        self.locks = Counter(
            "twofa_locks",
            "PIN steps answered 423 locked (kind=pin): the wrong PIN that locked an account's "
            "2FA, and, while the lock lasts, its repeats and other logins' PIN steps.",
            ["kind"],
            registry=self.registry,
        )
        self.mails = Counter(
            "twofa_mails_requested",
            "Mails the API asked the worker to send (the worker sends them: its Temporal "
            "metrics for the send_activation_code activity, local and remote, count the sent "
            "and failed ones).",
            ["kind"],
            registry=self.registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float, body: bytes) -> None:
        named = method if method in METHODS else "other"
        self.latency.labels(named, route, str(status)).observe(seconds)
        if method == "PUT" and route == "/v1/account/two-factor" and status == 202:
            self.mails.labels("activation_code").inc()
        step = LOGIN_STEPS.get(route) if method == "POST" else None
        if step is None:
            return
        answer = _json_object(body)
        if status >= 400:
            error = _label(answer.get("error"))
            self.steps.labels(step, error).inc()
            if step == "pin" and error == errors.LOCKED.code:
                self.locks.labels("pin").inc()
            return
        self.steps.labels(step, "ok").inc()
        self.outcomes.labels(_label(answer.get("outcome"))).inc()
        if answer.get("code_sent") is True:
            self.mails.labels("activation_code").inc()
        if step == "enroll_browser" and status == 202:
            self.mails.labels("enrollment_code").inc()


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _label(value: Any) -> str:
    return value if isinstance(value, str) and LABEL.fullmatch(value) else "other"


class QueryStringDropped(logging.Filter):
    """Cuts the query string off uvicorn's access lines: the API takes no secret in a URL
    (S8), but a caller that puts one there anyway must not get it logged (S4)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and "?" in str(args[2]):
            record.args = (*args[:2], str(args[2]).split("?", 1)[0] + "?…", *args[3:])
        return True


class Observed:
    """Gives each request an id (echoed as ``X-Request-ID``), times it and counts its answer."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        access = logging.getLogger("uvicorn.access")
        if not any(isinstance(f, QueryStringDropped) for f in access.filters):
            access.addFilter(QueryStringDropped())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get("x-request-id", "")
        request_id = incoming if SANE_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        echoed = request_id.encode()
        token = REQUEST_ID.set(request_id)
        start = time.perf_counter()
        status = 500
        captured = bytearray()

        def counted(size: int) -> bool:
            """Only a login step's answer is read, for its outcome or error code."""
            route = getattr(scope.get("route"), "path", None)
            return route in LOGIN_STEPS and size < CAPTURE_BYTES

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", echoed)]
            elif message["type"] == "http.response.body" and counted(len(captured)):
                captured.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            seconds = time.perf_counter() - start
            self.metrics.observe(scope["method"], route, status, seconds, bytes(captured))
            REQUEST_ID.reset(token)


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record (``missing`` outside a request)."""

    def __init__(self, missing: str | None) -> None:
        super().__init__()
        self.missing = missing

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get() or self.missing
        return True


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_handler(log_format: Literal["text", "json"]) -> logging.Handler:
    """One line per record on stderr: text for a terminal, one JSON object for a log shipper."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter(None if log_format == "json" else "-"))
    if log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT + " [%(request_id)s]"))
    return handler


def configure_logging(log_format: Literal["text", "json"], level: int = logging.INFO) -> None:
    """The root logger of a part (API, worker): every library's records go through it."""
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(log_handler(log_format))
    root.setLevel(level)
