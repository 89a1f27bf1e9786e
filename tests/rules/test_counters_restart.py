"""S2 counters survive restarts (issue 3, point 6): wrong PINs, wrong codes and password failures.

A worker restart is a ``twofa worker`` process on a private task queue killed with SIGKILL and
replaced by a new one; an API restart is a second API instance (another server with its own
engine and Temporal client), and, for the hardest case, a ``twofa api`` process killed with
SIGKILL and started again. The counts must carry on from where they were, not start over.
"""

from __future__ import annotations

import signal
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from temporalio.client import Client

from tests.conftest import ApiFactory
from tests.support.journey import Api, User, account_row, new_user, progress
from tests.support.processes import TWOFA, environment, free_port, started, wait_for_http
from twofa.config import Settings
from twofa.store.db import Database

WRONG_PIN = "90817263"
WRONG_CODE = "ZZZZZZZZ"


# -- helpers


def wrong_code(code: str) -> str:
    return WRONG_CODE if code != WRONG_CODE else "YYYYYYYY"


async def wrong_pins(api: Api, login_id: str, attempts_left: list[int]) -> None:
    """One wrong PIN per expected ``attempts_left``, each refused with exactly that count."""
    for left in attempts_left:
        r = await api.pin(login_id, WRONG_PIN)
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "invalid_pin", r.text
        assert r.json()["attempts_left"] == left, r.text


async def wrong_codes(api: Api, login_id: str, code: str, attempts_left: list[int]) -> None:
    for left in attempts_left:
        r = await api.submit_code(login_id, wrong_code(code))
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "invalid_code", r.text
        assert r.json()["attempts_left"] == left, r.text


async def assert_locked_by_the_fifth_pin(api: Api, user: User, login_id: str) -> None:
    locked = await api.pin(login_id, WRONG_PIN)
    assert locked.status_code == 423, locked.text
    assert locked.json()["error"] == "locked" and locked.json()["locked_until"], locked.text
    # S2: the lock ends this login, even for the right PIN, which is told of the lock, and new
    # logins are told it is locked.
    r = await api.pin(login_id, user.pin)
    assert r.status_code == 423 and r.json() == locked.json(), r.text
    login = await api.login_ok(user)
    assert login["outcome"] == "locked" and login["locked_until"], login


async def assert_code_used_up(api: Api, user: User, login_id: str, code: str) -> None:
    """The fifth wrong code left 0 attempts: the right code no longer works (410)."""
    r = await api.submit_code(login_id, code)
    assert r.status_code == 410, r.text
    assert r.json()["error"] == "code_expired", r.text
    # A new login mails a new code, which works (R4).
    login = await api.login_ok(user)
    assert login["outcome"] == "activation_code_required" and login["code_sent"] is True, login
    new_code = await api.code_mail(user, count=2)
    assert new_code != code
    r = await api.submit_code(login["login_id"], new_code)
    assert r.status_code == 200, r.text


class Workers:
    """``twofa worker`` processes on a private task queue, one after the other."""

    def __init__(self, settings: Settings, queue: str, logs: Path) -> None:
        self.env = environment(settings, temporal_task_queue=queue)
        self.logs = logs
        self.started = 0

    @asynccontextmanager
    async def run(self) -> AsyncIterator[subprocess.Popen[bytes]]:
        self.started += 1
        log = self.logs / f"worker-{self.started}.log"
        async with started([TWOFA, "worker"], self.env, log) as process:
            yield process

    @staticmethod
    def kill(process: subprocess.Popen[bytes]) -> None:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert process.returncode == -signal.SIGKILL


async def private_queue(
    start_api: ApiFactory, base_settings: Settings, tmp_path: Path, name: str
) -> tuple[Api, Workers]:
    """An API instance whose workflows run only on ``twofa worker`` processes of a new queue."""
    queue = f"{name}-{uuid.uuid4().hex[:8]}"
    return await start_api(temporal_task_queue=queue), Workers(base_settings, queue, tmp_path)


# -- worker restarts


async def test_wrong_pins_count_across_a_killed_worker(
    start_api: ApiFactory,
    base_settings: Settings,
    database: Database,
    client: Client,
    tmp_path: Path,
) -> None:
    api, workers = await private_queue(start_api, base_settings, tmp_path, "pin-restart")
    async with workers.run() as worker:
        user = await api.activated(new_user("pin-restart"))
        login = await api.login_ok(user)
        assert login["outcome"] == "pin_required", login
        await wrong_pins(api, login["login_id"], [4, 3, 2])
        workers.kill(worker)
    # The count is durable where it lives: the workflow and its projection.
    assert (await account_row(database, user.account_id)).pin_failures == 3
    async with workers.run():
        assert (await progress(client, user.account_id))["pin_failures"] == 3
        await wrong_pins(api, login["login_id"], [1])
        await assert_locked_by_the_fifth_pin(api, user, login["login_id"])
        account = await account_row(database, user.account_id)
        assert account.two_factor_state == "locked" and account.locked_until is not None


async def test_wrong_codes_count_across_a_killed_worker(
    start_api: ApiFactory,
    base_settings: Settings,
    client: Client,
    tmp_path: Path,
) -> None:
    api, workers = await private_queue(start_api, base_settings, tmp_path, "code-restart")
    user = new_user("code-restart")
    async with workers.run() as worker:
        await api.enabled(user)
        code = await api.code_mail(user)
        login = await api.login_ok(user)
        assert login["outcome"] == "activation_code_required", login
        await wrong_codes(api, login["login_id"], code, [4, 3, 2])
        workers.kill(worker)
    async with workers.run():
        assert (await progress(client, user.account_id))["code_failures"] == 3
        await wrong_codes(api, login["login_id"], code, [1, 0])
        await assert_code_used_up(api, user, login["login_id"], code)


# -- API restarts


async def two_api_instances(start_api: ApiFactory) -> tuple[Api, Api]:
    """Two servers of the same deployment, each with its own engine and Temporal client.

    They differ only in a setting these tests do not touch, so the fixture starts two.
    """
    first = await start_api(session_ttl_seconds=7 * 3600)
    second = await start_api(session_ttl_seconds=8 * 3600)
    assert first is not second and first.http.base_url != second.http.base_url
    return first, second


async def test_wrong_pins_count_across_api_instances(
    start_api: ApiFactory, database: Database
) -> None:
    first, second = await two_api_instances(start_api)
    user = await first.activated(new_user("pin-api"))
    login = await first.login_ok(user)
    assert login["outcome"] == "pin_required", login
    await wrong_pins(first, login["login_id"], [4, 3, 2])
    assert (await account_row(database, user.account_id)).pin_failures == 3
    await wrong_pins(second, login["login_id"], [1])
    await assert_locked_by_the_fifth_pin(second, user, login["login_id"])
    # Both instances see the lock.
    login = await first.login_ok(user)
    assert login["outcome"] == "locked", login


async def test_wrong_codes_count_across_api_instances(start_api: ApiFactory) -> None:
    first, second = await two_api_instances(start_api)
    user = new_user("code-api")
    await first.enabled(user)
    code = await first.code_mail(user)
    login = await first.login_ok(user)
    assert login["outcome"] == "activation_code_required", login
    await wrong_codes(first, login["login_id"], code, [4, 3, 2])
    await wrong_codes(second, login["login_id"], code, [1, 0])
    await assert_code_used_up(second, user, login["login_id"], code)


async def test_password_block_holds_on_a_second_api_instance(start_api: ApiFactory) -> None:
    first, second = await two_api_instances(start_api)
    user = await first.register(new_user("password-api"))
    wrong = User(email=user.email, password="not-the-password-0")
    for _ in range(4):
        r = await first.login(wrong)
        assert r.status_code == 401 and r.json()["error"] == "invalid_credentials", r.text
    for api in (second, first):  # the right password, while blocked, on either instance
        r = await api.login(user)
        assert r.status_code == 429, r.text
        assert r.json()["error"] == "too_many_attempts", r.text
        assert 1 <= r.json()["retry_after"] <= 60, r.text


async def test_pin_code_and_password_counters_survive_a_killed_api_process(
    api: Api, base_settings: Settings, database: Database, tmp_path: Path
) -> None:
    """A real restart: the ``twofa api`` process is SIGKILLed and a new one takes over."""
    pin_user = await api.activated(new_user("kill-api-pin"))
    code_user = new_user("kill-api-code")
    await api.enabled(code_user)
    code = await api.code_mail(code_user)
    password_user = await api.register(new_user("kill-api-password"))
    wrong_password = User(email=password_user.email, password="not-the-password-9")

    @asynccontextmanager
    async def api_process(n: int) -> AsyncIterator[tuple[subprocess.Popen[bytes], str]]:
        port = free_port()
        env = environment(base_settings, api_port=str(port))
        async with started([TWOFA, "api"], env, tmp_path / f"api-{n}.log") as process:
            yield process, f"http://127.0.0.1:{port}"

    async def ready(url: str) -> Api:
        await wait_for_http(f"{url}/healthz")
        return Api(url, base_settings.resolved_service_token, base_settings.data_dir)

    async with api_process(1) as (process, url):
        before = await ready(url)
        try:
            pin_login = await before.login_ok(pin_user)
            assert pin_login["outcome"] == "pin_required", pin_login
            await wrong_pins(before, pin_login["login_id"], [4, 3, 2])
            code_login = await before.login_ok(code_user)
            assert code_login["outcome"] == "activation_code_required", code_login
            await wrong_codes(before, code_login["login_id"], code, [4, 3, 2])
            for _ in range(3):
                r = await before.login(wrong_password)
                assert r.status_code == 401, r.text
        finally:
            await before.close()
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    async with api_process(2) as (_, url):
        after = await ready(url)
        try:
            await wrong_pins(after, pin_login["login_id"], [1])
            await assert_locked_by_the_fifth_pin(after, pin_user, pin_login["login_id"])
            await wrong_codes(after, code_login["login_id"], code, [1, 0])
            await assert_code_used_up(after, code_user, code_login["login_id"], code)
            r = await after.login(wrong_password)  # the fourth in a row: blocks
            assert r.status_code == 401, r.text
            r = await after.login(password_user)
            assert r.status_code == 429, r.text
            assert 1 <= r.json()["retry_after"] <= 60, r.text
        finally:
            await after.close()
    account = await account_row(database, pin_user.account_id)
    assert account.two_factor_state == "locked"
