"""The bench's view of the API: a lean HTTP client, the SMTP sink's mail, and the whole journey."""

from __future__ import annotations

import asyncio
import json as jsonlib
import os
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any, Generic, TypeVar

import aiohttp

T = TypeVar("T")
CODE_LINE = re.compile(r"^Activation code: (\S+)\r?$", re.MULTILINE)
#: The journey's steps, in order (README "The whole journey with curl").
JOURNEY_STEPS = (
    "register",
    "login",
    "enable",
    "mail",
    "login (2FA)",
    "code",
    "activate",
    "pin",
)


class CallFailed(Exception):
    def __init__(self, step: str, status: int, body: str) -> None:
        super().__init__(f"{step}: HTTP {status} {body[:200]}")
        self.step = step
        self.status = status


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


class ApiClient:
    """aiohttp, whose C parser keeps the client's own CPU low: on the 2-core machine it shares
    the cores with the stack it measures (a 404 login step: ~0.8-1.2 ms of client CPU per
    request, against ~2.4-2.9 ms through httpx, and ~1 ms less latency)."""

    def __init__(self, base_url: str, service_token: str, max_connections: int = 600) -> None:
        self.http = aiohttp.ClientSession(
            base_url,
            headers={"Authorization": f"Bearer {service_token}"},
            timeout=aiohttp.ClientTimeout(total=120, connect=60),
            connector=aiohttp.TCPConnector(limit=max_connections),
        )

    async def close(self) -> None:
        await self.http.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        session: str | None = None,
        json: dict[str, Any] | None = None,
    ) -> Answer:
        headers = {"X-Session-Token": session} if session else {}
        async with self.http.request(method, path, headers=headers, json=json) as response:
            raw = await response.read()
            body = dict(jsonlib.loads(raw)) if raw else {}
            return Answer(response.status, body)

    async def call(
        self,
        step: str,
        method: str,
        path: str,
        *,
        session: str | None = None,
        json: dict[str, Any] | None = None,
        expect: int = 200,
    ) -> dict[str, Any]:
        answer = await self.request(method, path, session=session, json=json)
        if answer.status != expect:
            raise CallFailed(step, answer.status, jsonlib.dumps(answer.body))
        return answer.body

    async def session_status(self, session: str) -> int:
        return (await self.request("GET", "/v1/session", session=session)).status


class MailWatcher:
    """Reads the sink's ``.eml`` files as they land (only new ones), codes by recipient."""

    def __init__(self, directory: Path, interval: float = 0.01) -> None:
        self.directory = directory
        self.interval = interval
        self._seen: set[str] = set()
        self._codes: dict[str, list[str]] = defaultdict(list)
        self._waiters: dict[str, list[tuple[int, asyncio.Future[str]]]] = defaultdict(list)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> MailWatcher:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            if self._waiters:
                self._scan()
            await asyncio.sleep(self.interval)

    def _scan(self) -> None:
        try:
            names = [
                entry.name
                for entry in os.scandir(self.directory)
                if entry.name.endswith(".eml")
                and not entry.name.startswith(".")
                and entry.name not in self._seen
            ]
        except FileNotFoundError:
            return
        for name in sorted(names):
            self._seen.add(name)
            message = message_from_bytes(
                (self.directory / name).read_bytes(),
                policy=policy.default,
            )
            body = message.get_body(("plain",))
            match = CODE_LINE.search(body.get_content() if body else "")
            if match:
                self._deliver(str(message["To"]), match.group(1))

    def _deliver(self, to: str, code: str) -> None:
        codes = self._codes[to]
        codes.append(code)
        waiting = self._waiters.get(to, [])
        for count, future in list(waiting):
            if len(codes) >= count and not future.done():
                future.set_result(codes[count - 1])
                waiting.remove((count, future))
        if not waiting:
            self._waiters.pop(to, None)

    async def code(self, email: str, count: int = 1, timeout: float = 120) -> str:
        """The ``count``-th activation code mailed to ``email``, once it has landed."""
        if len(self._codes[email]) >= count:
            return self._codes[email][count - 1]
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters[email].append((count, future))
        return await asyncio.wait_for(future, timeout)


@dataclass
class BenchUser:
    email: str
    password: str = field(default_factory=lambda: f"pw-{uuid.uuid4().hex}")
    pin: str = "27182818"
    seal: str = "a blue heron at dawn"
    account_id: str = ""
    device_token: str = ""
    auto_logout_at: float = 0.0


def new_user(prefix: str) -> BenchUser:
    return BenchUser(email=f"{prefix}.{uuid.uuid4().hex[:12]}@example.com")


def epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


async def journey(api: ApiClient, mails: MailWatcher, user: BenchUser) -> dict[str, float]:
    """The whole journey (README) through the HTTP API; the seconds each step took."""
    took: dict[str, float] = {}

    async def timed(step: str, call: Awaitable[T]) -> T:
        start = time.perf_counter()
        result = await call
        took[step] = time.perf_counter() - start
        return result

    credentials = {"email": user.email, "password": user.password}
    body = await timed(
        "register", api.call("register", "POST", "/v1/accounts", json=credentials, expect=201)
    )
    user.account_id = body["id"]
    body = await timed("login", api.call("login", "POST", "/v1/login", json=credentials))
    assert body["outcome"] == "authenticated", body
    session = body["session_token"]
    body = await timed(
        "enable",
        api.call(
            "enable",
            "PUT",
            "/v1/account/two-factor",
            session=session,
            json={"enabled": True},
            expect=202,
        ),
    )
    user.auto_logout_at = epoch(body["auto_logout_at"])
    code = await timed("mail", mails.code(user.email))
    body = await timed(
        "login (2FA)", api.call("login (2FA)", "POST", "/v1/login", json=credentials)
    )
    assert body["outcome"] == "activation_code_required", body
    login_id = body["login_id"]
    await timed(
        "code",
        api.call(
            "code",
            "POST",
            "/v1/login/activation-code",
            json={"login_id": login_id, "code": code},
        ),
    )
    activation = {
        "login_id": login_id,
        "pin": user.pin,
        "pin_confirmation": user.pin,
        "seal": user.seal,
        "device_name": "bench browser",
    }
    body = await timed(
        "activate",
        api.call("activate", "POST", "/v1/login/activate", json=activation),
    )
    user.device_token = body["device_token"]
    body = await timed(
        "pin",
        api.call("pin", "POST", "/v1/login/pin", json={"login_id": login_id, "pin": user.pin}),
    )
    assert body["outcome"] == "authenticated", body
    return took


async def pin_login(api: ApiClient, user: BenchUser) -> tuple[float, float]:
    """A trusted browser's login: password (+ device token), then the PIN; seconds of each."""
    start = time.perf_counter()
    body = await api.call(
        "login",
        "POST",
        "/v1/login",
        json={"email": user.email, "password": user.password, "device_token": user.device_token},
    )
    assert body["outcome"] == "pin_required", body
    middle = time.perf_counter()
    body = await api.call(
        "pin", "POST", "/v1/login/pin", json={"login_id": body["login_id"], "pin": user.pin}
    )
    assert body["outcome"] == "authenticated", body
    return middle - start, time.perf_counter() - middle


@dataclass
class PoolRun(Generic[T]):
    results: list[T]
    errors: list[BaseException]
    wall_seconds: float

    @property
    def per_second(self) -> float:
        return len(self.results) / self.wall_seconds if self.wall_seconds else 0.0


async def run_pool(count: int, concurrency: int, task: Callable[[int], Awaitable[T]]) -> PoolRun[T]:
    """``count`` tasks, ``concurrency`` at a time (a closed loop of that many clients)."""
    results: list[T] = []
    errors: list[BaseException] = []
    next_index = 0

    async def client() -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            try:
                results.append(await task(index))
            except Exception as error:
                errors.append(error)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(min(concurrency, count))))
    return PoolRun(results, errors, time.perf_counter() - start)
