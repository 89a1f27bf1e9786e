"""Several worker processes share the task queue; killing one loses nothing (issues 3 and 6)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import uuid
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import func, select
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from tests.conftest import ApiFactory
from tests.support.journey import (
    Api,
    User,
    account_row,
    audit_trail,
    count,
    eventually,
    new_user,
    parse_time,
    settled,
    sleep_until,
    state_in_store,
)
from tests.support.processes import (
    REPO,
    TWOFA,
    environment,
    free_port,
    started,
    wait_for_http,
    worker_polls,
)
from tests.support.relay import silent_server
from twofa.config import Settings
from twofa.store.db import Database
from twofa.store.models import ActivationDraft, Device, SentMail, Session
from twofa.workflows.messages import workflow_id


async def _one_device_one_mail_per_code(
    database: Database, api: Api, account_id: str, email: str
) -> None:
    async with database.read() as db:
        devices = await db.scalar(
            select(func.count())
            .select_from(Device)
            .where(Device.account_id == account_id, Device.revoked_at.is_(None))
        )
        codes = await db.scalar(
            select(func.count()).select_from(SentMail).where(SentMail.account_id == account_id)
        )
    assert devices == 1
    assert len(api.activation_mails_to(email)) == codes


async def test_a_journey_survives_a_killed_worker(
    start_api: ApiFactory,
    base_settings: Settings,
    database: Database,
    client: Client,
    tmp_path: Path,
) -> None:
    queue = f"workers-{uuid.uuid4().hex[:8]}"
    api = await start_api(temporal_task_queue=queue)
    env = environment(base_settings, temporal_task_queue=queue)
    async with (
        started([TWOFA, "worker"], env, tmp_path / "a.log") as first,
        started([TWOFA, "worker"], env, tmp_path / "b.log") as second,
    ):
        await worker_polls(client, queue, first, tmp_path / "a.log")
        await worker_polls(client, queue, second, tmp_path / "b.log")
        user = new_user()
        await api.enabled(user)
        first.send_signal(signal.SIGKILL)
        first.wait()
        code = await api.code_mail(user)
        login = await api.login_ok(user)
        r = await api.submit_code(login["login_id"], code)
        assert r.status_code == 200, r.text
        r = await api.activate(login["login_id"], user)
        assert r.status_code == 200, r.text
        r = await api.pin(login["login_id"], user.pin)
        assert r.status_code == 200, r.text
        assert second.poll() is None
    await _one_device_one_mail_per_code(database, api, user.account_id, user.email)


async def test_workers_killed_at_each_step_lose_nothing(
    start_api: ApiFactory,
    base_settings: Settings,
    database: Database,
    client: Client,
    tmp_path: Path,
) -> None:
    """SIGKILL the only worker after enable, after the code, and while activation runs."""
    queue = f"crash-{uuid.uuid4().hex[:8]}"
    api = await start_api(temporal_task_queue=queue)
    env = environment(base_settings, temporal_task_queue=queue)
    logs = iter(tmp_path / f"worker-{n}.log" for n in range(10))

    def restart() -> AbstractAsyncContextManager[subprocess.Popen[bytes]]:
        return started([TWOFA, "worker"], env, next(logs))

    user = new_user()
    await api.registered_and_logged_in(user)
    async with restart() as worker:
        await worker_polls(client, queue, worker, tmp_path / "worker-0.log")
        await api.enable(user)
        worker.send_signal(signal.SIGKILL)
        worker.wait()  # dead before started() stops it: no SIGTERM to judge
    async with restart() as worker:
        code = await api.code_mail(user)
        login = await api.login_ok(user)
        r = await api.submit_code(login["login_id"], code)
        assert r.status_code == 200, r.text
        worker.send_signal(signal.SIGKILL)
        worker.wait()  # dead before started() stops it: no SIGTERM to judge
    async with restart() as worker:
        activation = asyncio.create_task(api.activate(login["login_id"], user))

        async def under_way() -> bool:
            """Its draft is in the store (the update comes next), or it is over already."""
            where = ActivationDraft.account_id == user.account_id
            return activation.done() or await count(database, ActivationDraft, where) > 0

        await eventually(under_way, "the activation under way", interval=0.01)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    async with restart():
        r = await activation  # the update was durable: the new worker finishes it
        assert r.status_code == 200, r.text
        r = await api.pin(login["login_id"], user.pin)
        assert r.status_code == 200, r.text
    await _one_device_one_mail_per_code(database, api, user.account_id, user.email)


async def test_the_api_runs_with_several_uvicorn_workers(
    base_settings: Settings, worker: None, tmp_path: Path, data_dir: Path
) -> None:
    port = free_port()
    env = environment(base_settings, api_port=str(port))
    async with started([TWOFA, "api", "--workers", "2"], env, tmp_path / "api.log"):
        await wait_for_http(f"http://127.0.0.1:{port}/healthz")
        api = Api(f"http://127.0.0.1:{port}", base_settings.resolved_service_token, data_dir)
        try:
            users = await asyncio.gather(*(api.activated(new_user()) for _ in range(4)))
            for user in users:
                await api.pin_login(user)
        finally:
            await api.close()


async def test_python_worker_py_serves_the_queue_as_temporal_samples_do(
    start_api: ApiFactory, base_settings: Settings, tmp_path: Path
) -> None:
    """``python worker.py`` at the repository's top, the entry point Temporal's samples use."""
    queue = f"worker-py-{uuid.uuid4().hex[:8]}"
    api = await start_api(temporal_task_queue=queue)
    env = environment(base_settings, temporal_task_queue=queue)
    command = [sys.executable, str(REPO / "worker.py")]
    async with started(command, env, tmp_path / "w.log") as process:
        user = new_user("worker-py")
        await api.enabled(user)  # answered only once a worker ran the enable
        await api.code_mail(user)
        assert process.poll() is None


async def _killed_inside_the_enable(
    api: Api,
    user: User,
    queue: str,
    base_settings: Settings,
    database: Database,
    client: Client,
    tmp_path: Path,
) -> asyncio.Task[httpx.Response]:
    """Runs ``user``'s enable on the only worker of ``queue`` and SIGKILLs it after the session
    cut, while the mail's first try waits at a relay that says nothing until then. Returns the
    enable's call, still waiting; the relay is gone."""

    async def cut() -> bool:
        return (await account_row(database, user.account_id)).auto_logout_at is not None

    enabling = asyncio.create_task(
        api.call("PUT", "/v1/account/two-factor", user, json={"enabled": True})
    )
    try:
        async with silent_server(close_at_once=False) as relay:
            # only the kill ends the first try's wait for the relay's greeting
            env = environment(
                base_settings,
                temporal_task_queue=queue,
                smtp_port=str(relay.port),
                smtp_timeout_seconds="300",
            )
            async with started([TWOFA, "worker"], env, tmp_path / "killed.log") as worker:
                await worker_polls(client, queue, worker, tmp_path / "killed.log")
                await eventually(cut, "the enable's session cut")
                await eventually(lambda: bool(relay.held), "the mail's first try at the relay")
                worker.send_signal(signal.SIGKILL)
                worker.wait()  # dead before started() stops it: no SIGTERM to judge
    except BaseException:
        enabling.cancel()
        raise
    return enabling


async def test_a_worker_killed_inside_the_enable_answers_the_cut_its_try_made(
    start_api: ApiFactory,
    base_settings: Settings,
    database: Database,
    client: Client,
    tmp_path: Path,
) -> None:
    """R3, S9: the only worker is SIGKILLed inside the enable, after its session cut and while
    its mail's first try waits at the relay, and no worker comes back before the cut has
    passed. A password login meanwhile is capped at the cut all the same (the enable is under
    way), and the caller's repeat with the session the cut ended gets 503 (the outcome is not
    known yet). The next worker runs the enable again, later: it keeps the cut its run made, so
    the answer's ``auto_logout_at`` is when the sessions ended, and the repeat gets that answer
    (before: the re-run answered its own later time; once the cut had passed, a new one; and
    the repeat was refused 401 until the enable landed)."""
    queue = f"cut-{uuid.uuid4().hex[:8]}"
    api = await start_api(temporal_task_queue=queue)
    user = await api.registered_and_logged_in(new_user("cut"))

    async def enable() -> httpx.Response:
        return await api.call("PUT", "/v1/account/two-factor", user, json={"enabled": True})

    enabling = await _killed_inside_the_enable(
        api, user, queue, base_settings, database, client, tmp_path
    )
    try:
        first_cut = (await account_row(database, user.account_id)).auto_logout_at
        assert first_cut is not None
        await sleep_until(first_cut)
        late = await api.login_ok(User(email=user.email, password=user.password))
        assert parse_time(late["expires_at"]) == first_cut, late
        # the caller's repeat with the session the cut ended: the enable's outcome is not known
        # yet, and a session the enable cut may still ask it (S9; before: 401 session_ended)
        impatient = await start_api(temporal_task_queue=queue, workflow_call_timeout_seconds=1)
        r = await impatient.call("PUT", "/v1/account/two-factor", user, json={"enabled": True})
        assert r.status_code == 503 and r.json()["error"] == "temporarily_unavailable", r.text
        # the relay is gone: the next worker's first try fails at once and its step answers
        env = environment(base_settings, temporal_task_queue=queue, smtp_port=str(free_port()))
        async with started([TWOFA, "worker"], env, tmp_path / "second.log"):
            r = await enabling
            # a repeat with the cut session gets the enable's answer once the enable has landed
            await state_in_store(database, user.account_id, "pending_code")
            if r.status_code == 503:  # the call's wait ran out: the repeat answers (S9)
                r = await enable()
            assert r.status_code == 202, r.text
            assert parse_time(r.json()["auto_logout_at"]) == first_cut
            r = await enable()  # a repeat, with the session that enable's cut ended
            assert r.status_code == 202, r.text
            assert parse_time(r.json()["auto_logout_at"]) == first_cut
    finally:
        enabling.cancel()
    # the second worker ran the enable afresh, later: the killed try's task timed out first
    events = (await client.get_workflow_handle(workflow_id(user.account_id)).fetch_history()).events
    kinds = [e.event_type for e in events]
    assert EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT in kinds
    assert kinds.index(EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT) < kinds.index(
        EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    )
    assert (await account_row(database, user.account_id)).auto_logout_at == first_cut
    async with database.read() as db:
        sessions = (
            await db.scalars(select(Session).where(Session.account_id == user.account_id))
        ).all()
    assert [session.expires_at for session in sessions] == [first_cut, first_cut]


async def test_an_enable_an_operator_terminated_after_its_cut_strands_no_one(
    start_api: ApiFactory,
    base_settings: Settings,
    database: Database,
    client: Client,
    tmp_path: Path,
) -> None:
    """The only worker dies inside the enable, after its session cut, and an operator then
    terminates the run: the store says 2FA is off, but keeps the cut. The next password login
    finds the cut's run closed and forgets the cut: its session works (before: capped at the
    passed cut, every session ended at birth, and no disable mended it). Enabling 2FA again
    plans its own auto-logout (before: it took the stray cut over and logged the user out at
    once)."""
    queue = f"stray-cut-{uuid.uuid4().hex[:8]}"
    # the enable's call waits past the terminate: its 503 is the closed run's, not a timeout's
    api = await start_api(temporal_task_queue=queue, workflow_call_timeout_seconds=120)
    user = await api.registered_and_logged_in(new_user("stray-cut"))
    enabling = await _killed_inside_the_enable(
        api, user, queue, base_settings, database, client, tmp_path
    )
    try:
        stray = await account_row(database, user.account_id)
        assert stray.auto_logout_at is not None
        await sleep_until(stray.auto_logout_at)
        await client.get_workflow_handle(workflow_id(user.account_id)).terminate(
            "an operator's mistake"
        )
        r = await enabling
        # the enable's outcome: none, and a repeat would start anew (S9)
        assert r.status_code == 503 and r.json()["error"] == "temporarily_unavailable", r.text
    finally:
        enabling.cancel()
    assert (await account_row(database, user.account_id)).two_factor_state == "disabled"

    body = await api.login_ok(user)  # its new session token goes to the user
    assert body["outcome"] == "authenticated", body
    assert parse_time(body["expires_at"]) > datetime.now(UTC), body
    r = await api.call("GET", "/v1/session", user)
    assert r.status_code == 200, r.text
    assert (await account_row(database, user.account_id)).auto_logout_at is None
    trail = await audit_trail(database, user.account_id)
    cleared = [(r.actor, json.loads(r.details)) for r in trail if r.event == "session_cut_cleared"]
    assert cleared == [("system", {"cut": stray.auto_logout_at.isoformat()})], cleared

    env = environment(base_settings, temporal_task_queue=queue)
    async with started([TWOFA, "worker"], env, tmp_path / "next.log"):
        began = datetime.now(UTC)
        enabled = await api.enable(user)
        assert parse_time(enabled["auto_logout_at"]) > began, (enabled, stray.auto_logout_at)
        await api.code_mail(user)
        await state_in_store(database, user.account_id, "pending_code")
        await settled(client, user.account_id)
