"""S8 at the HTTP edge: no login id in a URL or a log line, bounded bodies, the token first.

The memory test runs the real ``twofa api`` in a child process, so the child's RSS is the
API's alone while a 100 MB body streams at it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import SERVICE_TOKEN, ApiFactory, LogCapture
from tests.support.journey import Api, User, new_user, untrusted
from tests.support.processes import TWOFA, environment, free_port, started, wait_for_http
from twofa.config import Settings
from twofa.observability import MAX_BODY_BYTES

AUTH = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
JSON = {"Content-Type": "application/json"}
STEPS = ("activation-code", "activate", "enroll-browser", "pin")
MiB = 1024 * 1024
WRONG_PIN = "90909090"


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text[:300])
    body: dict[str, Any] = r.json()
    assert body["error"] == code and body["message"], body
    return body


class Recorder:
    """Every request URL a journey sends, and every login id the API hands back."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.login_ids: set[str] = set()

    async def request(self, request: httpx.Request) -> None:
        self.urls.append(str(request.url))

    async def response(self, response: httpx.Response) -> None:
        await response.aread()
        try:
            body = response.json()
        except ValueError:
            return
        if isinstance(body, dict) and isinstance(body.get("login_id"), str):
            self.login_ids.add(body["login_id"])


@pytest.fixture
async def recorded(api: Api, data_dir: Path) -> AsyncIterator[tuple[Api, Recorder]]:
    """The API as ``api`` sees it, through a client that records what it sends and gets."""
    recorder = Recorder()
    mine = Api(str(api.http.base_url), SERVICE_TOKEN, data_dir)
    mine.http.event_hooks = {"request": [recorder.request], "response": [recorder.response]}
    yield mine, recorder
    await mine.close()


async def whole_journey(api: Api) -> list[User]:
    """Every login step: enrollment, activation, PIN login, a wrong PIN, another browser."""
    user = await api.activated(new_user("s8journey"))
    await api.pin_login(user)
    login = await api.login_ok(user)
    assert_error(await api.pin(login["login_id"], WRONG_PIN), 400, "invalid_pin")
    other = untrusted(user)
    await api.enrolled(other, "second")  # its code lands in other.codes, to be looked for
    return [user, other]


async def test_s8_login_steps_take_the_login_id_in_the_body(api: Api) -> None:
    user = new_user("s8old")
    await api.enabled(user)
    code = await api.code_mail(user)
    login = await api.login_ok(user)
    login_id = login["login_id"]
    # The old path form is gone: the login id in a URL finds nothing, and changes nothing.
    for step in STEPS:
        r = await api.call("POST", f"/v1/login/{login_id}/{step}", json={"code": code})
        assert_error(r, 404, "not_found")
    r = await api.submit_code(login_id, code)
    assert r.status_code == 200 and r.json() == {"outcome": "activation_required"}, r.text
    # A body without the login id names the missing field.
    r = await api.call("POST", "/v1/login/pin", json={"pin": user.pin})
    assert assert_error(r, 422, "invalid_request")["field"] == "login_id"


async def test_s8_no_login_id_or_secret_in_any_url_or_log_line(
    recorded: tuple[Api, Recorder], logs: LogCapture
) -> None:
    api, recorder = recorded
    # uvicorn's access lines go to their own handler; capture them here too.
    access = logging.getLogger("uvicorn.access")
    access.addHandler(logs)
    first = len(logs.lines)
    try:
        users = await whole_journey(api)
    finally:
        access.removeHandler(logs)
    lines = logs.lines[first:]
    assert any("POST /v1/login/pin" in line for line in lines), "no access line was captured"
    assert len(recorder.login_ids) >= 4, recorder.login_ids
    secrets = {s for user in users for s in user.secrets()} | recorder.login_ids | {WRONG_PIN}
    assert all(len(s) >= 4 for s in secrets), secrets
    leaks = [(s, line) for line in lines for s in secrets if s in line]
    assert not leaks, leaks[:5]
    in_urls = [(s, url) for url in recorder.urls for s in recorder.login_ids if s in url]
    assert not in_urls, in_urls[:5]


async def test_s8_secrets_sent_in_a_query_string_count_for_nothing_and_are_not_logged(
    api: Api, logs: LogCapture
) -> None:
    """A caller that puts a login id, a PIN or a session token in the URL is refused as if they
    were not there, and the access line keeps the path only (S4)."""
    user = await api.activated(new_user("s8query"))
    login = await api.login_ok(user)
    login_id, token = login["login_id"], user.session_token
    assert token is not None
    access = logging.getLogger("uvicorn.access")
    access.addHandler(logs)
    # httpx would log the URL this test itself sends into the session's capture, which the
    # S4 test reads as the system's logs: the caller's line is not the server's.
    caller = logging.getLogger("httpx")
    caller_level = caller.level
    caller.setLevel(logging.WARNING)
    first = len(logs.lines)
    try:
        r = await api.http.post(f"/v1/login/pin?login_id={login_id}&pin={user.pin}")
        assert assert_error(r, 422, "invalid_request")["field"] == "body"
        r = await api.http.get(f"/v1/session?session_token={token}")
        assert r.status_code == 401, r.text
    finally:
        caller.setLevel(caller_level)
        access.removeHandler(logs)
    lines = logs.lines[first:]
    assert any('"POST /v1/login/pin?… HTTP' in line for line in lines), lines
    leaks = [line for line in lines for s in (login_id, user.pin, token) if s in line]
    assert not leaks, leaks
    r = await api.pin(login_id, user.pin)  # the login is still there, untouched
    assert r.status_code == 200, r.text


# -- bounded input


def padded_login(size: int) -> bytes:
    """A login body of exactly ``size`` bytes (the email padded past any valid length)."""
    empty = json.dumps({"email": "", "password": "pw"}).encode()
    body = json.dumps({"email": "x" * (size - len(empty)), "password": "pw"}).encode()
    assert len(body) == size
    return body


def chunks(total: int, size: int = 256 * 1024) -> Iterator[bytes]:
    block = b"x" * size
    for _ in range(total // size):
        yield block


async def achunks(total: int, size: int = 4096) -> AsyncIterator[bytes]:
    """A chunked body for an async client: no length is announced."""
    for block in chunks(total, size):
        yield block


async def test_s8_bodies_over_64_kib_are_refused_with_413(api: Api) -> None:
    # The limit itself is accepted (and refused by validation, as too long an email).
    r = await api.call("POST", "/v1/login", content=padded_login(MAX_BODY_BYTES), headers=JSON)
    assert assert_error(r, 422, "invalid_request")["field"] == "email"
    # One byte more, announced by Content-Length: 413 before anything is read.
    r = await api.call("POST", "/v1/login", content=padded_login(MAX_BODY_BYTES + 1), headers=JSON)
    assert_error(r, 413, "payload_too_large")
    # Chunked, so no length is announced: refused once the count passes the limit.
    r = await api.call("POST", "/v1/login", content=achunks(4 * MAX_BODY_BYTES), headers=JSON)
    assert "content-length" not in r.request.headers
    assert_error(r, 413, "payload_too_large")


async def test_s8_the_pages_refuse_big_bodies_too(api: Api) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    async with httpx.AsyncClient(base_url=api.http.base_url, timeout=60) as browser:
        big = b"email=" + b"a" * MAX_BODY_BYTES + b"&password=x"
        assert_error(
            await browser.post("/login", content=big, headers=form), 413, "payload_too_large"
        )
        r = await browser.post("/login", content=achunks(4 * MAX_BODY_BYTES), headers=form)
        assert_error(r, 413, "payload_too_large")


async def test_s8_the_token_is_checked_before_the_body(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.http.base_url, timeout=60) as bare:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = await bare.post("/v1/login", content=b"{bad json", headers={**JSON, **headers})
            assert_error(r, 401, "invalid_service_token")
            # Even a body over the limit: the missing token is the answer.
            big = padded_login(MAX_BODY_BYTES + 1)
            r = await bare.post("/v1/login", content=big, headers={**JSON, **headers})
            assert_error(r, 401, "invalid_service_token")
    r = await api.call("POST", "/v1/login", content=b"{bad json", headers=JSON)
    assert assert_error(r, 422, "invalid_request")["field"] == "body"


class PeakRss:
    """Samples a process's resident memory in a thread until stopped."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self) -> None:
        while not self.done.wait(0.01):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        self.thread.join()


@pytest.mark.single_backend
async def test_s8_a_100_mb_body_costs_the_api_no_memory(
    worker: None, base_settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    env = environment(base_settings, api_port=str(port))
    url = f"http://127.0.0.1:{port}"
    async with started([TWOFA, "api"], env, tmp_path / "api.log") as process:
        await wait_for_http(f"{url}/healthz")

        def upload(headers: dict[str, str], content: Any) -> httpx.Response:
            with httpx.Client(base_url=url, timeout=120) as http:
                return http.post("/v1/login", content=content, headers={**JSON, **headers})

        total = 100 * MiB
        # A warm-up request, so the baseline includes what any first request allocates.
        assert upload(AUTH, padded_login(MAX_BODY_BYTES)).status_code == 422
        baseline = psutil.Process(process.pid).memory_info().rss
        with PeakRss(process.pid) as rss:
            no_token = asyncio.to_thread(upload, {}, chunks(total))
            announced = asyncio.to_thread(upload, {"Content-Length": str(total)}, chunks(total))
            over_limit = asyncio.to_thread(upload, AUTH, chunks(total))
            answers = await asyncio.gather(no_token, announced, over_limit)
        assert [r.status_code for r in answers] == [401, 401, 413], [r.text for r in answers]
        grown = rss.peak - baseline
        assert grown < 16 * MiB, f"the API grew by {grown / MiB:.1f} MiB"


# -- TWOFA_API_DOCS


DOC_PATHS = ("/docs", "/redoc", "/openapi.json")


async def test_api_docs_are_served_by_default(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.http.base_url, timeout=60) as bare:
        for path in DOC_PATHS:
            assert (await bare.get(path)).status_code == 200, path


async def test_api_docs_can_be_turned_off(start_api: ApiFactory) -> None:
    quiet = await start_api(api_docs=False)
    async with httpx.AsyncClient(base_url=quiet.http.base_url, timeout=60) as bare:
        for path in DOC_PATHS:
            assert_error(await bare.get(path), 404, "not_found")
    # Only the docs are gone: the API answers as before.
    assert (await quiet.call("GET", "/healthz")).status_code == 200
    user = await quiet.registered_and_logged_in(new_user("nodocs"))
    assert user.session_token


def test_api_docs_setting_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().api_docs is True
    monkeypatch.setenv("TWOFA_API_DOCS", "false")
    assert Settings().api_docs is False
