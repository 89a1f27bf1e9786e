"""Upgrading from the previous release keeps every account going (issue 16).

The previous release's own code, extracted from git, runs the worker and the API on a data dir
and leaves accounts in every state. Then it stops; the current code migrates the database and
takes over the same data dir and Temporal server, and every account goes on through the current
API. Each workflow was started by the old code, so the new worker must replay old histories,
take over their pending timers and answer their updates without one workflow task failing.

The old code runs on this virtualenv's libraries (its ``twofa`` package first on the path): a
release whose pinned libraries the previous one cannot run on would need a venv of its own here.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from tests.conftest import BACKEND, SERVICE_TOKEN
from tests.support import postgres
from tests.support.journey import (
    Api,
    User,
    account_row,
    code_mail,
    eventually,
    new_user,
    parse_time,
    sleep_until,
    state_in_store,
)
from tests.support.processes import (
    REPO,
    TWOFA,
    environment,
    exited,
    free_port,
    started,
    wait_for_http,
    worker_polls,
)
from twofa.config import Settings
from twofa.devstack import POLLS_END_ON_SHUTDOWN, start_smtp_sink, temporal_binary
from twofa.store.db import Database, migrate
from twofa.workflows.messages import workflow_id
from twofa.workflows.two_factor import STATE_KEY

#: The release users run today. At each release this moves to the new one (README "Upgrading").
PREVIOUS_RELEASE = "be3d6ffc3174430af7a6461de354e276c61c3d67"
#: Long enough for the switch to happen inside the lock on a loaded machine.
PIN_LOCK_SECONDS = 30
#: How late the workflow may project the lock's end (a timer, a workflow task, one activity).
LOCK_END_SLACK = timedelta(seconds=3)
#: The old ``twofa`` command. ``-P``: no working directory on the path, so PYTHONPATH decides.
OLD_TWOFA = [sys.executable, "-P", "-c", "from twofa.cli import app; app()"]


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, check=False)


@pytest.fixture(scope="session")
def release_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous release's files, from git (a clone with its history; CI's clone has it).

    ``git archive`` rather than ``git worktree add``: the same files, and nothing registered in
    the repository that a killed test run would leave behind.
    """
    if _git("rev-parse", "--git-dir").returncode != 0:
        pytest.fail(f"the upgrade test needs the git repository of {REPO}")
    if _git("cat-file", "-e", f"{PREVIOUS_RELEASE}^{{commit}}").returncode != 0:
        shallow = _git("rev-parse", "--is-shallow-repository").stdout.strip() == b"true"
        pytest.fail(
            f"release {PREVIOUS_RELEASE[:7]} is not in this clone"
            + (": it is shallow, run `git fetch --unshallow`" if shallow else "")
        )
    archive = _git("archive", "--format=tar", PREVIOUS_RELEASE)
    assert archive.returncode == 0, archive.stderr.decode()
    tree = tmp_path_factory.mktemp("release")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tree, filter="data")
    return tree


def _twofa_imported_from(env: dict[str, str]) -> Path:
    """Where a child started with ``env`` finds the ``twofa`` package."""
    found = subprocess.run(
        [sys.executable, "-P", "-c", "import twofa; print(twofa.__file__)"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return Path(found.stdout.strip()).parent


@dataclass
class Stack:
    """Everything both releases share: the data dir, the database, Temporal and the mailbox."""

    settings: Settings
    client: Client
    logs: Path

    def env(self, **extra: str) -> dict[str, str]:
        return environment(
            self.settings,
            auto_logout_seconds="2",
            pin_lock_seconds=str(PIN_LOCK_SECONDS),
            workflow_call_timeout_seconds="20",
            **extra,
        )

    async def worker_polls(self, process: subprocess.Popen[bytes], log: Path) -> None:
        await worker_polls(self.client, self.settings.temporal_task_queue, process, log)


@pytest.fixture
def database_url_for_upgrade(tmp_path: Path) -> Iterator[str | None]:
    """None: the data dir's own SQLite file; or a fresh PostgreSQL in the PostgreSQL pass."""
    if BACKEND == "sqlite":
        yield None
        return
    with postgres.throwaway_server("twofa-upgrade-postgres-") as url:
        yield url


@pytest.fixture
async def stack(tmp_path: Path, database_url_for_upgrade: str | None) -> AsyncIterator[Stack]:
    data = tmp_path / "data"
    data.mkdir()
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        search_attributes=[STATE_KEY],
        dev_server_extra_args=POLLS_END_ON_SHUTDOWN,
    )
    smtp_port = free_port()
    sink = start_smtp_sink(data / "mail", "127.0.0.1", smtp_port)
    try:
        settings = Settings(
            data_dir=data,
            database_url=database_url_for_upgrade,
            temporal_address=env.client.service_client.config.target_host,
            smtp_port=smtp_port,
            service_token=SERVICE_TOKEN,  # the pepper comes from the data dir, as by default
        )
        yield Stack(settings, env.client, tmp_path)
    finally:
        sink.stop()
        await env.shutdown()


class OldApi:
    """The previous release's API as its callers used it: the login id in the URL path."""

    def __init__(self, base_url: str, service_token: str, mail_dir: Path) -> None:
        self.http = httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {service_token}"}, timeout=60
        )
        self.mail_dir = mail_dir

    async def close(self) -> None:
        await self.http.aclose()

    async def call(
        self, method: str, path: str, user: User | None = None, **body: Any
    ) -> httpx.Response:
        headers = {"X-Session-Token": user.session_token} if user and user.session_token else {}
        return await self.http.request(method, path, headers=headers, json=body or None)

    async def status(self, method: str, path: str, user: User | None = None) -> int:
        return (await self.call(method, path, user)).status_code

    async def expect(
        self, status: int, method: str, path: str, user: User | None = None, **body: Any
    ) -> dict[str, Any]:
        r = await self.call(method, path, user, **body)
        assert r.status_code == status, f"{method} {path}: {r.status_code} {r.text}"
        return dict(r.json()) if r.content else {}

    async def step(
        self, login_id: str, step: str, status: int = 200, **body: Any
    ) -> dict[str, Any]:
        return await self.expect(status, "POST", f"/v1/login/{login_id}/{step}", **body)

    async def login(self, user: User, device_token: str | None = None) -> dict[str, Any]:
        token = user.device_token if device_token is None else device_token
        return await self.expect(
            200,
            "POST",
            "/v1/login",
            email=user.email,
            password=user.password,
            device_token=token or None,
        )

    async def code(self, user: User, count: int) -> str:
        """The newest code once ``count`` activation mails reached the user."""
        return await code_mail(self.mail_dir, user, count, timeout=30)

    async def enabled(self, user: User) -> None:
        """Registered, logged in, 2FA enabled: the code is in the mailbox."""
        user.account_id = (
            await self.expect(201, "POST", "/v1/accounts", email=user.email, password=user.password)
        )["id"]
        user.session_token = (await self.login(user))["session_token"]
        await self.expect(202, "PUT", "/v1/account/two-factor", user, enabled=True)
        await self.code(user, 1)

    async def code_validated(self, user: User) -> None:
        await self.enabled(user)
        login = await self.login(user)
        assert login["outcome"] == "activation_code_required", login
        r = await self.step(login["login_id"], "activation-code", code=user.codes[-1])
        assert r == {"outcome": "activation_required"}, r

    async def activated(self, user: User) -> None:
        """2FA active, this browser trusted, logged in with the PIN."""
        await self.code_validated(user)
        login = await self.login(user)
        assert login["outcome"] == "activation_required", login
        activation = await self.step(
            login["login_id"], "activate", pin=user.pin, pin_confirmation=user.pin, seal=user.seal
        )
        user.device_token, user.device_id = activation["device_token"], activation["device_id"]
        user.session_token = (await self.step(login["login_id"], "pin", pin=user.pin))[
            "session_token"
        ]

    async def second_browser(self, user: User) -> str:
        """Enrolls another browser (a mailed code, then the PIN); returns its device token."""
        login = await self.login(user, device_token="")
        assert login["outcome"] == "browser_not_trusted", login
        await self.step(login["login_id"], "enroll-browser", 202, device_name="second laptop")
        code = await self.code(user, 2)
        r = await self.step(login["login_id"], "activation-code", code=code)
        assert r["outcome"] == "pin_required", r
        return str((await self.step(login["login_id"], "pin", pin=user.pin))["device_token"])

    async def locked(self, user: User) -> datetime:
        """Five wrong PINs in a row; returns the end of the lock they cause."""
        login = await self.login(user)
        for _ in range(4):
            await self.step(login["login_id"], "pin", 400, pin="0000")
        refused = await self.step(login["login_id"], "pin", 423, pin="0000")
        return parse_time(refused["locked_until"])


@dataclass
class Accounts:
    """One account per state the previous release leaves behind."""

    pending_code: User
    pending_activation: User
    active: User
    two_browsers: User
    second_token: str
    disabled: User
    locked: User
    locked_until: datetime


async def _leave_accounts_in_every_state(old: OldApi) -> Accounts:
    pending_code = new_user("pending-code")
    await old.enabled(pending_code)
    pending_activation = new_user("pending-activation")
    await old.code_validated(pending_activation)
    active = new_user("active")
    await old.activated(active)
    login = await old.login(active)
    for attempts_left in (4, 3):
        r = await old.step(login["login_id"], "pin", 400, pin="0000")
        assert r["attempts_left"] == attempts_left, r
    two_browsers = new_user("two-browsers")
    await old.activated(two_browsers)
    second_token = await old.second_browser(two_browsers)
    disabled = new_user("disabled")
    await old.activated(disabled)
    r = await old.expect(
        200, "PUT", "/v1/account/two-factor", disabled, enabled=False, confirm=True
    )
    assert r["revoked_devices"] == 1, r

    async def logged_out() -> bool:
        return await old.status("GET", "/v1/session", pending_code) == 401

    await eventually(logged_out, "the auto-logout under the old release")
    locked = new_user("locked")
    await old.activated(locked)
    locked_until = await old.locked(locked)  # last: its lock must outlast the switch
    return Accounts(
        pending_code, pending_activation, active, two_browsers, second_token, disabled, locked,
        locked_until,
    )  # fmt: skip


async def test_every_account_goes_on_after_the_upgrade(stack: Stack, release_tree: Path) -> None:
    """The README's order: migrate under the running release, then the workers, then the API."""
    old_env = stack.env(api_port=str(free_port())) | {"PYTHONPATH": str(release_tree)}
    assert _twofa_imported_from(old_env) == release_tree / "twofa"
    new_env = stack.env(api_port=str(free_port()))
    assert _twofa_imported_from(new_env) == REPO / "twofa"
    subprocess.run([*OLD_TWOFA, "migrate"], env=old_env, check=True)
    logs = stack.logs
    async with AsyncExitStack() as processes:
        old_api = await processes.enter_async_context(
            started([*OLD_TWOFA, "api"], old_env, logs / "old-api.log")
        )
        old_worker = await processes.enter_async_context(
            started([*OLD_TWOFA, "worker"], old_env, logs / "old-worker.log")
        )
        await stack.worker_polls(old_worker, logs / "old-worker.log")
        old = OldApi(_url(old_env), SERVICE_TOKEN, stack.settings.mail_dir)
        await wait_for_http(_url(old_env, "/healthz"))
        try:
            accounts = await _leave_accounts_in_every_state(old)
            migrate(stack.settings.resolved_database_url)
            login = await old.login(accounts.active)  # the old API reads the migrated schema
            assert login["outcome"] == "pin_required", login

            new_worker = await processes.enter_async_context(
                started([TWOFA, "worker"], new_env, logs / "new-worker.log")
            )
            await stack.worker_polls(new_worker, logs / "new-worker.log")
            old_worker.terminate()
            stopped = await exited(old_worker, timeout=30)
            assert stopped == 0, "the old worker did not stop gracefully"
            # the old API's update reaches the new worker, which replays the old history
            r = await old.step(login["login_id"], "pin", 400, pin="0000")
            assert r["attempts_left"] == 2, r
        finally:
            await old.close()

        await processes.enter_async_context(started([TWOFA, "api"], new_env, logs / "new-api.log"))
        await wait_for_http(_url(new_env, "/healthz"))
        old_api.terminate()
        await exited(old_api, timeout=30)
        api = Api(_url(new_env), SERVICE_TOKEN, stack.settings.data_dir)
        database = Database(stack.settings.resolved_database_url)
        try:
            await _every_account_goes_on(api, database, accounts)
        finally:
            await api.close()
            await database.dispose()
        await _no_workflow_task_failed(stack.client, accounts, new_worker.pid)
    verified = subprocess.run([TWOFA, "audit", "verify"], env=new_env, capture_output=True)
    assert verified.returncode == 0, verified.stderr.decode()  # both releases' records chain


def _url(env: dict[str, str], path: str = "") -> str:
    return f"http://127.0.0.1:{env['TWOFA_API_PORT']}{path}"


async def _every_account_goes_on(api: Api, database: Database, a: Accounts) -> None:
    login = await api.login_ok(a.locked)
    assert login["outcome"] == "locked", login  # the lock outlasted the switch
    assert parse_time(login["locked_until"]) == a.locked_until

    # the code mailed before the upgrade is accepted, and no second one was sent
    user = a.pending_code
    login = await api.login_ok(user)
    assert login["outcome"] == "activation_code_required" and not login["code_sent"], login
    r = await api.submit_code(login["login_id"], user.codes[0])
    assert r.status_code == 200 and r.json() == {"outcome": "activation_required"}, r.text
    await _activate(api, user, login["login_id"])
    assert len(api.activation_mails_to(user.email)) == 1

    user = a.pending_activation
    login = await api.login_ok(user)
    assert login["outcome"] == "activation_required", login
    await _activate(api, user, login["login_id"])

    # the session opened under the old release holds; the three wrong PINs still count
    user = a.active
    r = await api.call("GET", "/v1/session", user)
    assert r.status_code == 200, r.text
    login = await api.login_ok(user)
    assert login["outcome"] == "pin_required", login
    r = await api.pin(login["login_id"], "0000")
    assert r.status_code == 400 and r.json()["attempts_left"] == 1, r.text
    r = await api.pin(login["login_id"], user.pin)
    assert r.status_code == 200, r.text

    user = a.two_browsers
    await api.pin_login(user)
    user.device_token = a.second_token
    await api.pin_login(user)
    r = await api.call(
        "PUT", "/v1/account/two-factor", user, json={"enabled": False, "confirm": True}
    )
    assert r.status_code == 200 and r.json()["revoked_devices"] == 2, r.text
    assert (await api.login_ok(user))["outcome"] == "authenticated"  # 2FA is off
    r = await api.call("GET", "/v1/account/devices", user)
    assert r.status_code == 200 and r.json() == [], r.text

    # disabled under the old release: it logs in without 2FA and enables it again
    user = a.disabled
    assert (await api.login_ok(user))["outcome"] == "authenticated"
    mails = len(api.activation_mails_to(user.email))
    await api.enable(user)
    code = await api.code_mail(user, count=mails + 1)
    login = await api.login_ok(user)
    assert login["outcome"] == "activation_code_required", login
    r = await api.submit_code(login["login_id"], code)
    assert r.status_code == 200, r.text

    # the lock ends on time for the user, and its timer, started by the old worker, fires
    # under the new one
    await sleep_until(a.locked_until, margin=0)  # on the clock: the login sees no lock from then
    login = await api.login_ok(a.locked)
    assert login["outcome"] == "pin_required", login
    await state_in_store(database, a.locked.account_id, "active")  # the timer's projection
    ended = (await account_row(database, a.locked.account_id)).updated_at
    assert a.locked_until <= ended <= a.locked_until + LOCK_END_SLACK, (ended, a.locked_until)
    r = await api.pin(login["login_id"], a.locked.pin)
    assert r.status_code == 200, r.text


async def _activate(api: Api, user: User, login_id: str) -> None:
    r = await api.activate(login_id, user)
    assert r.status_code == 200, r.text
    user.device_token = r.json()["device_token"]
    r = await api.pin(login_id, user.pin)
    assert r.status_code == 200, r.text


async def _no_workflow_task_failed(client: Client, a: Accounts, new_worker_pid: int) -> None:
    """Every run replayed by the new worker, none with a failed or retried workflow task."""
    old_workflows = {
        workflow_id(u.account_id)
        for u in (a.pending_code, a.pending_activation, a.active, a.two_browsers, a.locked)
    }
    seen: set[str] = set()
    async for execution in client.list_workflows():
        handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
        history = await handle.fetch_history()
        kinds = [event.event_type for event in history.events]
        assert EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED not in kinds, execution.id
        assert EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT not in kinds, execution.id
        assert execution.status in (
            WorkflowExecutionStatus.RUNNING,
            WorkflowExecutionStatus.COMPLETED,
        ), (execution.id, execution.status)
        if execution.status == WorkflowExecutionStatus.RUNNING:
            pending = (await handle.describe()).raw_description.pending_workflow_task
            assert pending.attempt <= 1, (execution.id, pending)
        workers = {
            event.workflow_task_started_event_attributes.identity.split("@")[0]
            for event in history.events
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED
        }
        if str(new_worker_pid) in workers:
            seen.add(execution.id)
    assert old_workflows <= seen, old_workflows - seen  # the new code took each one over
