"""A test's view of Cockpit 2FA: the HTTP API as a backend calls it, and the mail a user reads."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select
from temporalio.client import Client

from twofa import audit
from twofa.devstack import read_mails
from twofa.store.db import Database
from twofa.store.models import Account, AuditRecord, Device, Notification
from twofa.workflows.messages import workflow_id

CODE_LINE = re.compile(r"^Activation code: (\S+)\r?$", re.MULTILINE)


@dataclass
class User:
    """One person and the secrets they hold, so a test can look for them where they must not be."""

    email: str
    password: str = field(default_factory=lambda: f"pw-{uuid.uuid4().hex}")
    pin: str = "27182818"
    seal: str = field(default_factory=lambda: f"my seal is a blue heron {uuid.uuid4().hex[:6]}")
    account_id: str = ""
    session_token: str | None = None
    device_token: str | None = None
    device_id: str | None = None
    codes: list[str] = field(default_factory=list)

    def secrets(self) -> list[str]:
        found = [self.password, self.pin, self.seal, *self.codes]
        return [s for s in (*found, self.session_token, self.device_token) if s]


async def account_row(database: Database, account_id: str) -> Account:
    """The account's row in the store, as the workflow's projection left it."""
    async with database.read() as db:
        account = await db.get(Account, account_id)
    assert account is not None, account_id
    return account


async def state_in_store(
    database: Database, account_id: str, state: str, due: datetime | None = None
) -> None:
    """Waits until the workflow's projection of the account shows ``state`` (from ``due`` on,
    when a timer brings it)."""

    async def reached() -> bool:
        return (await account_row(database, account_id)).two_factor_state == state

    await eventually(reached, f"account {account_id} in state {state}", due=due)


async def device_rows(database: Database, account_id: str) -> list[Device]:
    """Every browser the account ever trusted, revoked or not."""
    async with database.read() as db:
        return list((await db.scalars(select(Device).where(Device.account_id == account_id))).all())


async def audit_trail(database: Database, account_id: str) -> list[AuditRecord]:
    """The account's audit records, oldest first."""
    async with database.read() as db:
        return await audit.history(db, account_id)


async def audited(database: Database, account_id: str, event: str) -> list[dict[str, Any]]:
    """The details of the account's ``event`` records, oldest first."""
    return [
        json.loads(a.details) for a in await audit_trail(database, account_id) if a.event == event
    ]


def new_user(prefix: str = "user") -> User:
    return User(email=f"{prefix}.{uuid.uuid4().hex[:12]}@example.com")


def parse_time(value: str) -> datetime:
    """An ISO 8601 timestamp of the API or of the workflow, as an aware datetime."""
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, f"timestamp without time zone: {value}"
    return parsed


def seconds_until(moment: datetime) -> float:
    return max((moment - datetime.now(UTC)).total_seconds(), 0.0)


async def sleep_until(moment: datetime, margin: float = 0.1) -> None:
    """Waits until the clock has passed ``moment`` (a deadline the system announced), for a
    check that is about the clock itself: a rule that holds from that instant on, or nothing
    happening before it. Anything a timer produces is waited for with ``eventually``."""
    delay = (moment - datetime.now(UTC)).total_seconds() + margin
    if delay > 0:
        await asyncio.sleep(delay)


async def eventually(
    check: Callable[[], Awaitable[bool] | bool],
    what: str | Callable[[], str],
    timeout: float = 30,
    interval: float = 0.1,
    due: datetime | None = None,
) -> None:
    """Polls ``check`` (a coroutine function or a plain one) until it holds; fails naming
    ``what`` (or what it returns then) after ``timeout`` seconds. With ``due``, the moment a
    timer makes the condition true, the timeout counts from that moment."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout + (seconds_until(due) if due is not None else 0)
    while True:
        held = check()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        assert loop.time() < deadline, (
            f"timed out waiting for: {what if isinstance(what, str) else what()}"
        )
        await asyncio.sleep(interval)


async def count(database: Database, model: Any, *where: Any) -> int:
    async with database.read() as db:
        return int(await db.scalar(select(func.count()).select_from(model).where(*where)) or 0)


async def trusted_devices(database: Database, account_id: str) -> int:
    return await count(
        database, Device, Device.account_id == account_id, Device.revoked_at.is_(None)
    )


async def progress(client: Client, account_id: str) -> dict[str, Any]:
    """What the account's workflow knows now (its ``progress_now`` query)."""
    result: dict[str, Any] = await client.get_workflow_handle(workflow_id(account_id)).query(
        "progress_now"
    )
    return result


async def settled(client: Client, account_id: str) -> None:
    """Waits until the account's workflow has nothing in flight: no activity (a mail, a store
    write) and no workflow task pending, so every effect it was going to have has happened."""

    async def idle() -> bool:
        raw = (await client.get_workflow_handle(workflow_id(account_id)).describe()).raw_description
        return not raw.pending_activities and not raw.HasField("pending_workflow_task")

    await eventually(idle, f"the workflow of {account_id} at rest")


async def at_rest(database: Database, client: Client, account_id: str) -> None:
    """Everything the account's past steps will write has been written: its auto-logout has
    happened, its workflow is settled and the notifier has sent (or given up on) every mail.
    A check that reads the audit trail twice, a page and the store, compares like with like."""
    known = await progress(client, account_id)
    if known["auto_logout_at"] and not known["auto_logout_done"]:

        async def logged_out() -> bool:
            return bool((await progress(client, account_id))["auto_logout_done"])

        due = parse_time(known["auto_logout_at"])
        await eventually(logged_out, f"the auto-logout of {account_id}", due=due)
    await settled(client, account_id)

    async def mails_out() -> bool:
        return not await count(
            database,
            Notification,
            Notification.account_id == account_id,
            Notification.sent_at.is_(None),
            Notification.failed_at.is_(None),
        )

    await eventually(mails_out, f"the notifications of {account_id} to go out")


def messages_to(mail_dir: Path, email: str) -> list[EmailMessage]:
    """The sink's messages to ``email``, comparing parsed addresses (quoting aside)."""
    return [
        m
        for m in read_mails(mail_dir)
        if any(f"{a.username}@{a.domain}" == email for a in getattr(m["To"], "addresses", ()))
    ]


def activation_mails_to(mail_dir: Path, email: str) -> list[str]:
    """The bodies of the activation mails only: S10's notifications come to the same box."""
    bodies = [
        m.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        for m in messages_to(mail_dir, email)
    ]
    return [body for body in bodies if CODE_LINE.search(body)]


async def code_mail(mail_dir: Path, user: User, count: int = 1, timeout: float = 20) -> str:
    """Waits until ``count`` activation mails reached the user; returns the newest code."""

    def arrived() -> bool:
        return len(activation_mails_to(mail_dir, user.email)) >= count

    await eventually(arrived, f"mail #{count} for {user.email}", timeout=timeout, interval=0.05)
    match = CODE_LINE.search(activation_mails_to(mail_dir, user.email)[-1])
    assert match, "no activation code in the newest mail"
    code = match.group(1)
    if code not in user.codes:
        user.codes.append(code)
    return code


class Api:
    def __init__(self, base_url: str, service_token: str, data_dir: Path) -> None:
        self.http = httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {service_token}"}, timeout=60
        )
        self.mail_dir = data_dir / "mail"

    async def close(self) -> None:
        await self.http.aclose()

    async def call(
        self, method: str, path: str, user: User | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if user is not None and user.session_token:
            headers["X-Session-Token"] = user.session_token
        return await self.http.request(method, path, headers=headers, **kwargs)

    # -- the journey's steps, each asserting its success status

    async def register(self, user: User) -> User:
        r = await self.call(
            "POST", "/v1/accounts", json={"email": user.email, "password": user.password}
        )
        assert r.status_code == 201, r.text
        user.account_id = r.json()["id"]
        return user

    async def login(self, user: User, device_token: str | None = None) -> httpx.Response:
        body = {"email": user.email, "password": user.password}
        token = device_token if device_token is not None else user.device_token
        if token:
            body["device_token"] = token
        return await self.call("POST", "/v1/login", json=body)

    async def login_ok(self, user: User, device_token: str | None = None) -> dict[str, Any]:
        r = await self.login(user, device_token)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        if body["outcome"] == "authenticated":
            user.session_token = body["session_token"]
        return body

    async def enable(self, user: User) -> dict[str, Any]:
        r = await self.call("PUT", "/v1/account/two-factor", user, json={"enabled": True})
        assert r.status_code == 202, r.text
        return dict(r.json())

    async def submit_code(self, login_id: str, code: str) -> httpx.Response:
        body = {"login_id": login_id, "code": code}
        return await self.call("POST", "/v1/login/activation-code", json=body)

    async def activate(self, login_id: str, user: User, **extra: Any) -> httpx.Response:
        body = {
            "login_id": login_id,
            "pin": user.pin,
            "pin_confirmation": user.pin,
            "seal": user.seal,
            **extra,
        }
        return await self.call("POST", "/v1/login/activate", json=body)

    async def enroll(self, login_id: str, **extra: Any) -> httpx.Response:
        """S8: the browser enrollment step, its login id in the body."""
        return await self.call(
            "POST", "/v1/login/enroll-browser", json={"login_id": login_id, **extra}
        )

    async def pin(self, login_id: str, pin: str) -> httpx.Response:
        return await self.call("POST", "/v1/login/pin", json={"login_id": login_id, "pin": pin})

    def messages_to(self, email: str) -> list[EmailMessage]:
        return messages_to(self.mail_dir, email)

    def activation_mails_to(self, email: str) -> list[str]:
        return activation_mails_to(self.mail_dir, email)

    async def code_mail(self, user: User, count: int = 1, timeout: float = 20) -> str:
        return await code_mail(self.mail_dir, user, count, timeout)

    # -- whole stretches of the journey

    async def registered_and_logged_in(self, user: User) -> User:
        await self.register(user)
        await self.login_ok(user)
        return user

    async def enabled(self, user: User) -> dict[str, Any]:
        await self.registered_and_logged_in(user)
        return await self.enable(user)

    async def activated(self, user: User, **extra: Any) -> User:
        """Register, enable, log in, validate the code, activate, log in with the PIN."""
        await self.enabled(user)
        return await self.activated_with(user, await self.code_mail(user), **extra)

    async def activated_with(self, user: User, code: str, **extra: Any) -> User:
        """An enabled user logs in, validates ``code``, activates, logs in with the PIN."""
        login = await self.login_ok(user)
        assert login["outcome"] == "activation_code_required", login
        r = await self.submit_code(login["login_id"], code)
        assert r.status_code == 200 and r.json() == {"outcome": "activation_required"}, r.text
        r = await self.activate(login["login_id"], user, **extra)
        assert r.status_code == 200, r.text
        user.device_token = r.json()["device_token"]
        user.device_id = r.json()["device_id"]
        r = await self.pin(login["login_id"], user.pin)
        assert r.status_code == 200, r.text
        user.session_token = r.json()["session_token"]
        return user

    async def enrolled(self, user: User, device_name: str | None = None) -> User:
        """R9: this browser (``user`` without a device token) becomes trusted: code, then PIN."""
        login = await self.login_ok(user)
        assert login["outcome"] == "browser_not_trusted", login
        mails = len(self.activation_mails_to(user.email))
        r = await self.enroll(
            login["login_id"], **({"device_name": device_name} if device_name else {})
        )
        assert r.status_code == 202, r.text
        code = await self.code_mail(user, count=mails + 1)
        r = await self.submit_code(login["login_id"], code)
        assert r.status_code == 200 and r.json()["outcome"] == "pin_required", r.text
        r = await self.pin(login["login_id"], user.pin)
        assert r.status_code == 200, r.text
        user.session_token = r.json()["session_token"]
        user.device_token = r.json()["device_token"]
        user.device_id = r.json()["device_id"]
        return user

    async def pin_login(self, user: User) -> dict[str, Any]:
        login = await self.login_ok(user)
        assert login["outcome"] == "pin_required", login
        r = await self.pin(login["login_id"], user.pin)
        assert r.status_code == 200, r.text
        user.session_token = r.json()["session_token"]
        return dict(r.json())


async def at_activation_step(api: Api, user: User) -> str:
    """Registered, 2FA enabled, logged in again and the code validated: the login's id."""
    await api.enabled(user)
    code = await api.code_mail(user)
    login = await api.login_ok(user)
    assert login["outcome"] == "activation_code_required", login
    r = await api.submit_code(login["login_id"], code)
    assert r.status_code == 200, r.text
    return str(login["login_id"])


def untrusted(user: User) -> User:
    """The same person in another browser: same email and password, no device token."""
    return User(email=user.email, password=user.password, pin=user.pin, seal=user.seal)
