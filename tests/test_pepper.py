"""A pepper rotation without a lockout, on real parts: a stack of its own (database, data dir,
task queue) is started, used, stopped, rotated with `twofa pepper rotate`, and started again."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url
from temporalio.testing import WorkflowEnvironment

from tests.conftest import SERVICE_TOKEN
from tests.support.journey import Api, User, account_row, new_user
from tests.support.processes import TWOFA, environment, free_port, serve_api
from twofa import audit
from twofa.admin import AdminService
from twofa.config import Settings
from twofa.crypto import Keyring
from twofa.pepper import Report, report
from twofa.service import TwoFactorService
from twofa.store.db import Database, migrate, sync_url
from twofa.store.models import Device, Session
from twofa.temporal import serving

OPERATOR_PASSWORD = "operator-password-long-enough"


def _fresh_database(url: str, tmp: Path) -> str:
    """A database of this test's own beside the session's, on the same backend."""
    if url.startswith("sqlite"):
        return f"sqlite:///{tmp / 'twofa.db'}"
    name = f"pepper_{uuid.uuid4().hex[:12]}"
    engine = create_engine(sync_url(url), isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return make_url(url).set(database=name).render_as_string(hide_password=False)


class Stack:
    """Settings of one deployment; each ``settings()`` reads the keyring anew, as a start does."""

    def __init__(self, base: Settings, tmp: Path, **overrides: Any) -> None:
        self.data_dir = tmp / "data"
        self.values: dict[str, Any] = {
            "data_dir": self.data_dir,
            "database_url": _fresh_database(base.resolved_database_url, tmp),
            "temporal_address": base.temporal_address,
            "temporal_task_queue": f"pepper-{uuid.uuid4().hex[:8]}",
            "smtp_port": base.smtp_port,
            "service_token": SERVICE_TOKEN,
            "pepper": None,
            "workflow_call_timeout_seconds": 20,
            # the sessions an enable cuts end long before the counts are taken
            "auto_logout_seconds": base.auto_logout_seconds,
            **overrides,
        }
        migrate(self.values["database_url"])

    def settings(self, **overrides: Any) -> Settings:
        return Settings(**{**self.values, "api_port": free_port(), **overrides})

    async def twofa(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """The `twofa` command as an operator runs it, on this deployment; in a thread, so that
        this test's own open transactions go on meanwhile (see ``processes.exited``)."""
        return await asyncio.to_thread(
            subprocess.run,
            [TWOFA, *args],
            env=environment(self.settings(), **env),
            capture_output=True,
            text=True,
            timeout=120,
            input=f"{OPERATOR_PASSWORD}\n",
        )


@asynccontextmanager
async def running(
    temporal: WorkflowEnvironment, settings: Settings, mail_dir: Path
) -> AsyncIterator[Api]:
    """Worker and API of one deployment, stopped at the end like a restart stops them."""
    db = Database(settings.resolved_database_url)
    try:
        async with serving(temporal.client, settings, db):
            server, task = await serve_api(settings)
            api = Api(f"http://127.0.0.1:{settings.api_port}", SERVICE_TOKEN, mail_dir)
            try:
                yield api
            finally:
                server.should_exit = True
                await task
                await api.close()
    finally:
        await db.dispose()


async def pepper_report(settings: Settings) -> Report:
    keyring = Keyring.of(settings)
    db = Database(settings.resolved_database_url)
    try:
        async with db.read() as session:
            return await report(session, keyring, audit.chain_for(settings, keyring))
    finally:
        await db.dispose()


def _left(found: Report, pepper: str) -> dict[str, int]:
    return found.counts.get(pepper, {})


async def test_rotation_keeps_every_user_in(
    temporal: WorkflowEnvironment, base_settings: Settings, data_dir: Path, tmp_path: Path
) -> None:
    stack = Stack(base_settings, tmp_path)
    mail_dir = data_dir  # the session's SMTP sink keeps the mails there
    alice, bob, carol, dave, erin = (new_user(n) for n in ("alice", "bob", "carol", "dave", "erin"))
    operator = f"op.{uuid.uuid4().hex[:8]}@example.com"
    before = stack.settings()
    async with running(temporal, before, mail_dir) as api:
        await api.activated(alice)
        await api.activated(bob)
        await api.enabled(carol)
        carols_code = await api.code_mail(carol)  # mailed just before the rotation
        await api.registered_and_logged_in(dave)
        await api.activated(erin)
        # erin's browser is at the PIN page when the service stops: her login id, and the seal
        # to show, sit in the login cookie, encrypted under the old pepper
        browser = httpx.AsyncClient(base_url=str(api.http.base_url), timeout=60)
        browser.cookies.set("twofa_device", erin.device_token or "")
        await browser.get("/login")
        form = _form(browser, email=erin.email, password=erin.password)
        r = await browser.post("/login", data=form)
        assert r.status_code == 303 and r.headers["location"] == "/login/pin", r.text
    created = await stack.twofa("admin", "create", "--email", operator, "--role", "admin")
    assert created.returncode == 0, created.stderr

    old = Keyring.of(before).id
    counted = await pepper_report(before)
    assert _left(counted, old)["password hashes"] == 5
    assert _left(counted, old)["PIN hashes"] == 3 and _left(counted, old)["seals"] == 3
    assert _left(counted, old)["trusted browsers"] == 3
    assert _left(counted, old)["operator passwords"] == 1

    rotated = await stack.twofa("pepper", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    after = stack.settings()
    keyring = Keyring.of(after)
    new = keyring.id
    assert new != old and keyring.ids == [new, old]
    assert f"pepper {old} (previous): 5 password hashes, 3 PIN hashes" in rotated.stdout
    assert f"pepper {new} (current)" in rotated.stdout
    peppers = {before.pepper_bytes.decode(), after.pepper_bytes.decode()}
    assert not any(p in rotated.stdout + rotated.stderr for p in peppers)

    async with running(temporal, after, mail_dir) as api:
        # a live session goes on, and its token's digest moves to the new pepper
        r = await api.call("GET", "/v1/session", alice)
        assert r.status_code == 200, r.text
        # password, then the trusted browser and its PIN; the seal reads as it was typed
        login = await api.login_ok(alice)
        assert login["outcome"] == "pin_required" and login["seal"] == alice.seal, login
        wrong = await api.pin(login["login_id"], "99999999")
        assert wrong.status_code == 400 and wrong.json()["attempts_left"] == 4, wrong.text
        right = await api.pin(login["login_id"], alice.pin)
        assert right.status_code == 200, right.text
        row = await account_row_of(after, alice)
        assert (row.password_pepper, row.pin_pepper, row.seal_pepper) == (new, new, new)
        # another browser of bob's: a code, then the PIN
        bobs_laptop = User(email=bob.email, password=bob.password, pin=bob.pin, seal=bob.seal)
        await api.enrolled(bobs_laptop)
        # the code mailed before the rotation is still taken
        login = await api.login_ok(carol)
        assert login["outcome"] == "activation_code_required", login
        r = await api.submit_code(login["login_id"], carols_code)
        assert r.status_code == 200 and r.json() == {"outcome": "activation_required"}, r.text
        r = await api.activate(login["login_id"], carol)
        assert r.status_code == 200 and r.json()["seal"] == carol.seal, r.text
        r = await api.pin(login["login_id"], carol.pin)
        assert r.status_code == 200, r.text
        r = await api.login(dave)
        assert r.status_code == 200 and r.json()["outcome"] == "authenticated", r.text
        await sign_in_operator(temporal, after, operator)
        # erin's browser goes on where it stood: the seal shown, the PIN taken
        browser = httpx.AsyncClient(
            base_url=str(api.http.base_url), timeout=60, cookies=browser.cookies
        )
        try:
            r = await browser.get("/login/pin")
            assert r.status_code == 200 and erin.seal in r.text, r.text
            r = await browser.post("/login/pin", data=_form(browser, pin=erin.pin))
            assert r.status_code == 303 and r.headers["location"].startswith("/"), r.text
            assert "twofa_session" in r.headers.get("set-cookie", ""), r.headers
            browser.cookies.delete("twofa_session")
            r = await browser.get("/login")  # and the login form still knows who she is
            assert f'value="{erin.email}"' in r.text, r.text
        finally:
            await browser.aclose()

        counted = await pepper_report(after)
        left = _left(counted, old)
        for what in ("PIN hashes", "seals", "operator passwords"):
            assert what not in left, (what, counted.counts)
        # not used since: erin's password (typed before), bob's and erin's first browsers
        # (erin's PIN came through her login begun before), bob's, dave's and erin's sessions
        assert left["password hashes"] == 1, counted.counts
        assert left["trusted browsers"] == 2 and left["open sessions"] == 3, counted.counts
        assert await digest_pepper(after, Device, bob.device_token, "device") == old
        assert await digest_pepper(after, Session, alice.session_token, "session") == new
        assert counted.left(old) == 6 and not counted.unknown
        status = await stack.twofa("pepper", "status")
        assert status.returncode == 0, status.stderr
        expected = f"{old} (previous): 1 password hashes, 2 trusted browsers, 3 open sessions"
        assert expected in status.stdout

        for first_session in (bob, dave, erin):  # untouched since the rotation, and still open
            r = await api.call("GET", "/v1/session", first_session)
            assert r.status_code == 200, r.text
        assert "open sessions" not in _left(await pepper_report(after), old)
    verified = await stack.twofa("audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert "audit chain intact" in verified.stdout


def _form(browser: httpx.AsyncClient, **fields: str) -> dict[str, str]:
    return {**fields, "csrf_token": browser.cookies.get("twofa_csrf") or ""}


async def account_row_of(settings: Settings, user: User) -> Any:
    db = Database(settings.resolved_database_url)
    try:
        return await account_row(db, user.account_id)
    finally:
        await db.dispose()


async def digest_pepper(settings: Settings, model: Any, token: str | None, purpose: str) -> str:
    """The pepper id beside the row that a token's digest finds, under any pepper."""
    assert token is not None
    db = Database(settings.resolved_database_url)
    try:
        async with db.read() as session:
            digests = Keyring.of(settings).digests(purpose, token)
            return str(
                await session.scalar(select(model.pepper_id).where(model.token_digest.in_(digests)))
            )
    finally:
        await db.dispose()


async def sign_in_operator(temporal: WorkflowEnvironment, settings: Settings, email: str) -> None:
    """A dashboard sign-in, which hashes the operator's password anew under the new pepper."""
    db = Database(settings.resolved_database_url)
    try:
        admin = AdminService(TwoFactorService(settings, db, temporal.client))
        token, who = await admin.sign_in(email, OPERATOR_PASSWORD)
        assert (await admin.operator(token)).email == who.email == email
    finally:
        await db.dispose()


async def test_a_pepper_dropped_too_early_is_reported(
    temporal: WorkflowEnvironment, base_settings: Settings, data_dir: Path, tmp_path: Path
) -> None:
    first, second = f"first-{uuid.uuid4().hex}", f"second-{uuid.uuid4().hex}"
    stack = Stack(base_settings, tmp_path, pepper=first)
    user, guessed = new_user("dropped"), new_user("guessed")
    async with running(temporal, stack.settings(), data_dir) as api:
        await api.activated(user)
        await api.register(guessed)
        for _ in range(3):  # one failure short of the block
            r = await api.login(User(email=guessed.email, password="not-the-password"))
            assert r.status_code == 401, r.text
    # TWOFA_PEPPER comes from the environment: the command says what to set, and shows no value
    told = await stack.twofa("pepper", "rotate")
    assert told.returncode == 0, told.stderr
    assert "TWOFA_PEPPER_PREVIOUS" in told.stdout and first not in told.stdout
    old, new = Keyring(first.encode()).id, Keyring(second.encode()).id

    rotated = stack.settings(pepper=second, pepper_previous=first)
    async with running(temporal, rotated, data_dir) as api:
        # the password and the browser's token move to the new pepper; the PIN and seal not
        login = await api.login_ok(user)
        assert login["outcome"] == "pin_required" and login["seal"] == user.seal, login
        # the failures counted under the old pepper still count: the fourth blocks
        r = await api.login(User(email=guessed.email, password="not-the-password"))
        assert r.status_code == 401, r.text
        r = await api.login(guessed)
        assert r.status_code == 429 and r.json()["error"] == "too_many_attempts", r.text

    status = await stack.twofa("pepper", "status", pepper=second, pepper_previous=first)
    assert status.returncode == 0, status.stderr
    assert (
        f"pepper {old} (previous): 1 password hashes, 1 PIN hashes, 1 seals, 1 open sessions,"
        in status.stdout
    )
    refused = await stack.twofa("pepper", "drop", old, pepper=second, pepper_previous=first)
    assert refused.returncode == 1 and "still has 4 secret(s)" in refused.stderr, refused.stderr

    # the operator takes the old pepper out anyway: what still needs it is named, not passed
    dropped = await stack.twofa("pepper", "status", pepper=second)
    assert dropped.returncode == 1, dropped.stdout
    assert f"pepper {old} (NOT IN THE KEYRING): 1 password hashes, 1 PIN hashes" in dropped.stdout
    assert f"peppers dropped too early: {old}" in dropped.stderr
    assert f"pepper {new} (current)" in dropped.stdout
    assert first not in dropped.stdout + dropped.stderr
    verified = await stack.twofa("audit", "verify", pepper=second)
    assert verified.returncode == 1, verified.stdout
    assert "no longer in the keyring" in verified.stderr
    verified = await stack.twofa("audit", "verify", pepper=second, pepper_previous=first)
    assert verified.returncode == 0, verified.stderr

    # a record keyed under the retired pepper after the new one's: whoever holds the old
    # pepper cannot append to the log
    retired = Database(
        rotated.resolved_database_url,
        audit=audit.Chain(Keyring(first.encode()).audit_key, stack.data_dir / "audit-anchor"),
    )
    try:
        async with retired.write() as session:
            await audit.append(session, "operator_created", actor="cli", operator="x@example.com")
    finally:
        await retired.dispose()
    forged = await stack.twofa("audit", "verify", pepper=second, pepper_previous=first)
    assert forged.returncode == 1, forged.stdout
    assert "keyed under an older pepper than a record before it" in forged.stderr
