"""Whole-system crashes lose nothing (issue 3): the dev server restarted, `make run` killed."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.support.journey import (
    Api,
    User,
    audit_trail,
    eventually,
    new_user,
    parse_time,
    sleep_until,
)
from tests.support.processes import (
    REPO,
    TWOFA,
    exited,
    free_port,
    listening,
    started,
    wait_for_http,
)
from twofa.config import Settings
from twofa.devstack import dev_server_args, temporal_binary
from twofa.store.db import Database
from twofa.store.models import Account

#: Independent of the database backend: run once, in the SQLite pass of `make test`.
pytestmark = pytest.mark.single_backend


def _stack_env(data_dir: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOFA_")}
    return (
        env
        | {"TWOFA_DATA_DIR": str(data_dir)}
        | {f"TWOFA_{k.upper()}": v for k, v in settings.items()}
    )


async def _events(data_dir: Path, account_id: str) -> list[str]:
    db = Database(f"sqlite:///{data_dir / 'twofa.db'}")
    try:
        return [record.event for record in await audit_trail(db, account_id)]
    finally:
        await db.dispose()


async def _finish_journey(api: Api, user: User) -> None:
    code = await api.code_mail(user)
    login = await api.login_ok(user)
    assert login["outcome"] == "activation_code_required", login
    r = await api.submit_code(login["login_id"], code)
    assert r.status_code == 200, r.text
    r = await api.activate(login["login_id"], user)
    assert r.status_code == 200, r.text
    user.device_token = r.json()["device_token"]
    r = await api.pin(login["login_id"], user.pin)
    assert r.status_code == 200, r.text


@asynccontextmanager
async def _make_run(env: dict[str, str], log: Path) -> AsyncIterator[subprocess.Popen[bytes]]:
    """`make run` in its own process group, as a terminal would start it."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            ["make", "-s", "run"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            await exited(process, timeout=30)


async def test_make_run_killed_mid_enrollment_continues_where_it_was(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ports = {name: free_port() for name in ("api", "temporal", "temporal_ui", "smtp", "dashboard")}
    env = _stack_env(
        data, auto_logout_seconds="3", **{f"{k}_port": str(v) for k, v in ports.items()}
    )
    base = f"http://127.0.0.1:{ports['api']}"
    user = new_user()
    async with _make_run(env, tmp_path / "first.log") as first:
        await wait_for_http(f"{base}/healthz", 120)
        api = Api(base, (data / "service-token").read_text().strip(), data)
        await api.registered_and_logged_in(user)
        old_session = user.session_token
        auto_logout_at = parse_time((await api.enable(user))["auto_logout_at"])
        await api.code_mail(user)
        os.killpg(first.pid, signal.SIGKILL)  # the whole group, no chance to clean up
        first.wait()
        await api.close()
    await eventually(
        lambda: not any(listening(p) for p in ports.values()),
        f"ports {list(ports.values())} released",
        interval=0.2,
    )
    async with _make_run(env, tmp_path / "second.log"):
        await wait_for_http(f"{base}/healthz", 120)
        api = Api(base, (data / "service-token").read_text().strip(), data)
        try:
            user.session_token = old_session
            # the session's own expiry (the store's, on the clock) is what must hold here
            await sleep_until(auto_logout_at, margin=0)
            r = await api.call("GET", "/v1/session", user)
            assert r.status_code == 401  # the auto-logout held across the crash
            await _finish_journey(api, user)
            await api.pin_login(user)
            assert "sessions_ended" in await _events(data, user.account_id)
            assert len(api.activation_mails_to(user.email)) == 1  # no second, different code
        finally:
            await api.close()


async def test_dev_server_restarted_mid_enrollment_still_fires_its_timers(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    ports = {name: free_port() for name in ("api", "temporal", "temporal_ui", "smtp", "dashboard")}
    settings = Settings(
        data_dir=data,
        **{f"{k}_port": v for k, v in ports.items()},  # type: ignore[arg-type]
    )
    server = [temporal_binary(), "server", "start-dev", *dev_server_args(settings)]
    env = _stack_env(
        data,
        temporal_address=f"127.0.0.1:{ports['temporal']}",
        auto_logout_seconds="4",
        code_ttl_seconds="8",
        **{f"{k}_port": str(v) for k, v in ports.items()},
    )
    base = f"http://127.0.0.1:{ports['api']}"
    user = new_user()
    async with (
        started(server, env, tmp_path / "temporal-1.log") as temporal,
        started([TWOFA, "up"], env, tmp_path / "up.log"),
    ):
        await wait_for_http(f"{base}/healthz", 120)
        api = Api(base, (data / "service-token").read_text().strip(), data)
        try:
            await api.registered_and_logged_in(user)
            enabled = await api.enable(user)
            first_code = await api.code_mail(user)
            temporal.send_signal(signal.SIGTERM)
            await exited(temporal, timeout=30)
            # both timers fall due while the server is down: the clock itself must pass them
            due = [parse_time(enabled[k]) for k in ("auto_logout_at", "code_expires_at")]
            await sleep_until(max(due), margin=1)
            async with started(server, env, tmp_path / "temporal-2.log"):
                await wait_for_http(f"{base}/healthz", 120)
                events: list[str] = []

                async def fired() -> bool:  # the timers fire once the server is back
                    events[:] = await _events(data, user.account_id)
                    return "sessions_ended" in events and not await _code_usable(data, user)

                await eventually(fired, lambda: f"the timers to fire after the restart: {events}")
                login = await api.login_ok(user)
                assert login["code_sent"] is True  # R4: a new mail with a new code
                r = await api.submit_code(login["login_id"], first_code)
                assert r.status_code in (400, 410), r.text
                await api.code_mail(user, count=2)
                await _finish_journey(api, user)
        finally:
            await api.close()


async def _code_usable(data: Path, user: User) -> bool:
    db = Database(f"sqlite:///{data / 'twofa.db'}")
    try:
        async with db.read() as session:
            return bool(
                await session.scalar(
                    select(Account.code_usable).where(Account.id == user.account_id)
                )
            )
    finally:
        await db.dispose()
