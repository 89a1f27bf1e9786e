"""Keeps an operator signed in across reloads and tabs with an HttpOnly cookie set by the server.

Streamlit can read the cookies of the page's first request (``st.context.cookies``) but has no
way to write one. So a sign-in leaves a one-use handoff (random, 60 seconds) in this process; a
tiny script on the page POSTs it, in the body, to ``/dashboard-session`` on the same origin, and
that route answers with ``Set-Cookie: ...; HttpOnly; SameSite=Strict``. The page's JavaScript
never holds the session token, no URL carries it, and the store keeps only its keyed hash (the
operator session row, which also sets when it expires). Signing out ends the session in the store
first; the route then only has to expire the cookie.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from twofa.admin import OPERATOR_SESSION_TTL

COOKIE = "twofa_dashboard_session"
PATH = "/dashboard-session"
HANDOFF_SECONDS = 60.0
#: Browsers accept a cookie value of these characters without quoting (tokens are url-safe).
_TOKEN_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass
class _Handoff:
    token: str
    deadline: float


class Handoffs:
    """Tokens waiting, a minute at most, for their page to fetch them as a cookie."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, _Handoff] = {}

    @staticmethod
    def _key(handoff: str) -> str:
        return hashlib.sha256(handoff.encode()).hexdigest()

    def offer(self, token: str) -> str:
        handoff = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            self._waiting = {k: h for k, h in self._waiting.items() if h.deadline > now}
            self._waiting[self._key(handoff)] = _Handoff(token, now + HANDOFF_SECONDS)
        return handoff

    def take(self, handoff: str) -> str | None:
        """The token once, and only before its deadline."""
        with self._lock:
            waiting = self._waiting.pop(self._key(handoff), None)
        if waiting is None or waiting.deadline <= time.monotonic():
            return None
        return waiting.token


handoffs = Handoffs()


def _same_origin(request: Request) -> bool:
    """Refuses cross-site posts (login CSRF): the browser's Origin must be this very host."""
    origin = request.headers.get("origin")
    host = request.headers.get("host")
    return bool(origin and host) and origin is not None and origin.split("://", 1)[-1] == host


def _cookie(response: Response, request: Request, value: str, max_age: int) -> None:
    response.set_cookie(
        COOKIE,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


async def _session(request: Request) -> Response:
    if not _same_origin(request):
        return JSONResponse({"error": "cross_origin"}, status_code=403)
    if request.method == "DELETE":
        response = Response(status_code=204)
        _cookie(response, request, "", 0)
        return response
    try:
        body: Any = await request.json()
    except ValueError:
        body = None
    handoff = body.get("handoff") if isinstance(body, dict) else None
    token = handoffs.take(handoff) if isinstance(handoff, str) else None
    if token is None or not set(token) <= _TOKEN_CHARS:
        return JSONResponse({"error": "handoff_unknown"}, status_code=400)
    response = Response(status_code=204)
    _cookie(response, request, token, int(OPERATOR_SESSION_TTL.total_seconds()))
    return response


routes = [Route(PATH, _session, methods=["POST", "DELETE"])]

#: Runs on the page (not sandboxed, same origin); once per handoff, whatever the reruns.
JS = """
const done = new Set();
export default function (component) {
  const { data, setTriggerValue } = component;
  if (!data || !data.action) return;
  const once = data.action + ":" + (data.handoff || "");
  if (done.has(once)) return;
  done.add(once);
  fetch(data.path, {
    method: data.action === "keep" ? "POST" : "DELETE",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: data.action === "keep" ? JSON.stringify({ handoff: data.handoff }) : undefined,
  }).then(
    (response) => setTriggerValue("done", response.ok),
    () => setTriggerValue("done", false),
  );
}
"""
