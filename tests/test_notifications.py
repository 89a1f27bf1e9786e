"""S10 notification mails, and activation mails to a relay that refuses or is busy (issue 14).

Every mail here crosses a real SMTP server on loopback: the session's sink, or a relay of the
test's own (tests/test_mail.py) served by a worker of its own on its own task queue.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope
from aiosmtpd.smtp import Session as SmtpSession
from sqlalchemy import select
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle

from tests.conftest import ApiFactory
from tests.support.history import activities_run, header_id
from tests.support.journey import (
    CODE_LINE,
    Api,
    User,
    account_row,
    audit_trail,
    eventually,
    new_user,
    untrusted,
)
from tests.support.relay import RelayHandler, api_on_relay, relay
from twofa import audit
from twofa.admin import AdminService
from twofa.config import Settings
from twofa.crypto import Keyring
from twofa.notifications import BROWSER_ENROLLED, run_notifier
from twofa.service import TwoFactorService
from twofa.store import notification_queries
from twofa.store.db import Database, migrate
from twofa.store.models import Account, AuditRecord, Notification
from twofa.views import OperatorView
from twofa.vocabulary import Role
from twofa.workflows.messages import workflow_id


async def mails_until(
    api: Api, user: User, done: Callable[[list[EmailMessage]], bool], timeout: float = 20
) -> list[EmailMessage]:
    messages: list[EmailMessage] = []

    def arrived() -> bool:
        messages[:] = api.messages_to(user.email)
        return done(messages)

    await eventually(
        arrived, lambda: f"the mails; so far {[m['Subject'] for m in messages]}", timeout, 0.05
    )
    return messages


def readable(message: EmailMessage) -> str:
    """Every header, decoded, and the body: a secret could leak through a subject or a name."""
    headers = "\n".join(f"{name}: {value}" for name, value in message.items())
    return headers + "\n" + message.get_content()


def about(subject_word: str) -> Callable[[EmailMessage], bool]:
    return lambda m: subject_word in str(m["Subject"])


async def audited(database: Database, account_id: str, event: str) -> list[AuditRecord]:
    return [r for r in await audit_trail(database, account_id) if r.event == event]


async def test_s10_enrolled_browsers_lock_and_disable_are_mailed_without_secrets(
    api: Api, database: Database
) -> None:
    user = await api.activated(new_user("s10"), device_name="Carol laptop")
    other = untrusted(user)
    await api.enrolled(other, "Carol phone")
    login = await api.login_ok(user)
    for _ in range(5):
        await api.pin(login["login_id"], "0000")
    r = await api.call("GET", "/v1/session", user)
    assert r.status_code == 200, r.text
    r = await api.call(
        "PUT", "/v1/account/two-factor", user, json={"enabled": False, "confirm": True}
    )
    assert r.status_code == 200, r.text

    messages = await mails_until(
        api,
        user,
        lambda ms: (
            sum(about("new browser")(m) for m in ms) == 2
            and any(about("locked")(m) for m in ms)
            and any(about("is off")(m) for m in ms)
        ),
    )
    notifications = [m for m in messages if not about("activation code")(m)]
    enrolled = [m for m in notifications if about("new browser")(m)]
    bodies = [m.get_body(("plain",)).get_content() for m in notifications]  # type: ignore[union-attr]
    assert any('"Carol laptop"' in b for b in bodies) and any('"Carol phone"' in b for b in bodies)
    locked = next(m for m in messages if about("locked")(m))
    assert "until" in locked.get_content() and "administrator" in locked.get_content()
    disabled = next(m for m in messages if about("is off")(m))
    assert "from your account" in disabled.get_content()
    ids = [str(m["Message-ID"]) for m in notifications]
    assert len(set(ids)) == len(ids), ids
    for message in notifications:
        text = readable(message)
        for secret in [*user.secrets(), *other.secrets()]:
            assert secret not in text, message["Subject"]
    assert len(enrolled) == 2

    async def all_audited() -> bool:  # each is audited just after its mail is handed over
        return len(await audited(database, user.account_id, "notification_sent")) == 4

    await eventually(all_audited, "four notification_sent records")


async def test_s10_a_disable_by_an_admin_is_mailed_saying_so(
    api: Api, database: Database, base_settings: Settings, client: Client
) -> None:
    user = await api.activated(new_user("s10admin"))
    admin = AdminService(TwoFactorService(base_settings, database, client))
    operator = OperatorView(id=str(uuid.uuid4()), email="root@example.com", role=Role.ADMIN)
    assert (await admin.disable(operator, user.account_id)).revoked_devices == 1
    [disabled] = [
        m
        for m in await mails_until(api, user, lambda ms: any(map(about("is off"), ms)))
        if about("is off")(m)
    ]
    body = disabled.get_content()
    assert "by an administrator" in body and "contact your administrator" in body, body
    text = readable(disabled)
    for secret in user.secrets():
        assert secret not in text


async def test_a_refused_activation_mail_is_audited_and_the_next_login_says_so(
    client: Client, base_settings: Settings, database: Database, start_api: ApiFactory
) -> None:
    handler = RelayHandler(refuse={"RCPT": "550 5.1.1 mailbox unavailable"})
    async with api_on_relay(handler, client, base_settings, database, start_api) as api:
        user = new_user("refused")
        await api.enabled(user)
        [failed] = await audited(database, user.account_id, "mail_failed")
        assert "550" in failed.details and user.email not in failed.details
        # nothing retries for ever: the workflow waits for the user, with no activity
        description = await client.get_workflow_handle(workflow_id(user.account_id)).describe()
        assert not description.raw_description.pending_activities

        login = await api.login_ok(user)
        assert login["outcome"] == "activation_code_required", login
        assert login["code_sent"] is False and login["mail_refused"] is True, login

        handler.refuse = {}  # the address works again: the next login mails a code
        login = await api.login_ok(user)
        assert login["code_sent"] is True and "mail_refused" not in login, login
        [(mail, _, _)] = handler.accepted
        code = mail.get_content().split("Activation code: ")[1].split()[0]
        r = await api.submit_code(login["login_id"], code)
        assert r.status_code == 200, r.text


def relayed_code(handler: RelayHandler, number: int = 0) -> str:
    """The code in the ``number``-th mail the relay accepted."""
    match = CODE_LINE.search(handler.accepted[number][0].get_content())
    assert match, "no activation code in the mail"
    return match.group(1)


@dataclass
class Relayed:
    """A user logged in on an API whose mail goes through a relay the test controls."""

    api: Api
    user: User
    relay: RelayHandler
    handle: WorkflowHandle[Any, Any]  # the user's workflow

    async def called_off(self) -> bool:
        """A mail's retries were called off (its activity's cancel requested)."""
        cancelled = EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED
        return any(e.event_type == cancelled for e in (await self.handle.fetch_history()).events)


@asynccontextmanager
async def relay_saying(
    reply: str,
    name: str,
    client: Client,
    base_settings: Settings,
    database: Database,
    start_api: ApiFactory,
    **api_settings: object,
) -> AsyncIterator[Relayed]:
    """A relay answering every recipient with ``reply``, until the test changes its mind; no
    auto-logout timer fires meanwhile unless ``api_settings`` says otherwise."""
    handler = RelayHandler(refuse={"RCPT": reply})
    settings: dict[str, object] = {"auto_logout_seconds": 60, **api_settings}
    async with api_on_relay(handler, client, base_settings, database, start_api, **settings) as api:
        user = await api.registered_and_logged_in(new_user(name))
        yield Relayed(api, user, handler, client.get_workflow_handle(workflow_id(user.account_id)))


BUSY = "451 4.3.0 try again later"


async def test_a_busy_relay_delays_the_mail_and_never_sends_two_codes(
    client: Client, base_settings: Settings, database: Database, start_api: ApiFactory
) -> None:
    # no auto-logout timer fires while the relay is busy: the history is the mail's alone
    async with relay_saying(BUSY, "busy", client, base_settings, database, start_api) as relayed:
        api, user, handler = relayed.api, relayed.user, relayed.relay
        # the enable answers while the relay is busy: the mail is retried after the step
        enabled = await api.call("PUT", "/v1/account/two-factor", user, json={"enabled": True})
        assert enabled.status_code == 202, enabled.text
        handle = relayed.handle

        async def tried(times: int) -> int:
            """The history's length once the relay has refused ``times`` tries."""
            await eventually(
                lambda: handler.mail_commands >= times, f"{times} tries", interval=0.05
            )
            return len((await handle.fetch_history()).events)

        # the first try, in the workflow task, then the remote activity's retries, which
        # add nothing to the history however long the relay stays busy
        assert await tried(3) == await tried(5)
        [mail] = (await handle.describe()).raw_description.pending_activities
        assert mail.activity_type.name == "send_activation_code" and mail.attempt >= 4
        # meanwhile the user logs in to the code step: the enable's code is on its way
        login = await api.login_ok(user)
        assert login["outcome"] == "activation_code_required", login
        assert login["code_sent"] is False, login
        assert handler.accepted == []

        handler.refuse = {}
        await eventually(lambda: len(handler.accepted) == 1, "the mail, once the relay takes it")
        r = await api.submit_code(login["login_id"], relayed_code(handler))
        assert r.status_code == 200, r.text
        events = (await handle.fetch_history()).events
        mails = [run for run in activities_run(events) if "activation_code" in run[1]]
        assert mails == [
            ("local", "send_activation_code", True),
            ("local", "activation_code_digest", False),
            ("remote", "send_activation_code", False),
        ], mails
        # the remote mail carries the enable's request id, as its log line and records do
        [scheduled] = [
            e.activity_task_scheduled_event_attributes
            for e in events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        ]
        assert header_id(scheduled.header) == enabled.headers["x-request-id"]
        assert len(handler.accepted) == 1
        assert await audited(database, user.account_id, "mail_failed") == []


async def test_a_relay_that_is_down_holds_back_neither_the_user_nor_an_admin(
    client: Client, base_settings: Settings, database: Database, start_api: ApiFactory
) -> None:
    """S9: the account is never stuck behind the relay. Before, the enable held the workflow
    until the relay came back: the store still said "disabled", so a login after the
    auto-logout got a session that had already ended, and an admin's disable did nothing."""
    down = relay_saying(
        "421 4.3.2 service not available", "relay-down",
        client, base_settings, database, start_api, auto_logout_seconds=2,
    )  # fmt: skip
    async with down as relayed:
        api, user, handler = relayed.api, relayed.user, relayed.relay
        await api.enable(user)

        async def logged_out() -> bool:
            return (await api.call("GET", "/v1/session", user)).status_code == 401

        await eventually(logged_out, "the auto-logout")
        login = await api.login_ok(user)
        assert login["outcome"] == "activation_code_required", login

        admin = AdminService(TwoFactorService(base_settings, database, client))
        operator = OperatorView(id=str(uuid.uuid4()), email="root@example.com", role=Role.ADMIN)
        assert (await admin.disable(operator, user.account_id)).revoked_devices == 0
        await asyncio.wait_for(relayed.handle.result(), 10)
        assert await relayed.called_off()
        assert (await api.login_ok(user))["outcome"] == "authenticated"
        assert handler.accepted == []


async def test_a_code_that_expires_before_the_relay_takes_its_mail_is_never_mailed(
    client: Client, base_settings: Settings, database: Database, start_api: ApiFactory
) -> None:
    """R4: only the newest code works, so only the newest code's mail goes out."""
    expiring = relay_saying(
        BUSY, "expired-on-the-way", client, base_settings, database, start_api, code_ttl_seconds=2
    )
    async with expiring as relayed:
        api, user, handler = relayed.api, relayed.user, relayed.relay
        await api.enable(user)
        handle = relayed.handle

        async def retries_over() -> bool:
            """The code is burnt and no try of its mail is left: called off, or a try that
            began before the expiry has ended (one still talking to the relay when the code
            expired would deliver it once the relay takes mail, its code no longer working)."""
            burnt = not (await account_row(database, user.account_id)).code_usable
            return burnt and not (await handle.describe()).raw_description.pending_activities

        await eventually(retries_over, "the first code's mail over at its expiry")
        handler.refuse = {}
        login = await api.login_ok(user)
        assert login["outcome"] == "activation_code_required" and login["code_sent"], login
        assert len(handler.accepted) == 1
        r = await api.submit_code(login["login_id"], relayed_code(handler))
        assert r.status_code == 200, r.text
        [issued] = await audited(database, user.account_id, "code_issued")
        assert '"number": 2' in issued.details, issued.details


async def test_a_mail_the_relay_refuses_on_a_retry_leaves_no_code_and_the_login_says_so(
    client: Client, base_settings: Settings, database: Database, start_api: ApiFactory
) -> None:
    refusing = relay_saying(BUSY, "refused-later", client, base_settings, database, start_api)
    async with refusing as relayed:
        api, user, handler = relayed.api, relayed.user, relayed.relay
        await api.enable(user)
        await eventually(lambda: handler.mail_commands >= 2, "a retry", interval=0.05)
        handler.refuse = {"RCPT": "550 5.1.1 mailbox unavailable"}

        async def refused() -> bool:
            return bool(await audited(database, user.account_id, "mail_failed"))

        await eventually(refused, "the relay's refusal for good")

        async def code_burnt() -> bool:
            async with database.read() as db:
                account = await db.get(Account, user.account_id, populate_existing=True)
            return account is not None and not account.code_usable

        await eventually(code_burnt, "the code, which no mail carries, burnt")
        login = await api.login_ok(user)  # its new code's mail is refused too
        assert login["outcome"] == "activation_code_required", login
        assert login["code_sent"] is False and login["mail_refused"] is True, login
        assert handler.accepted == []


class SlowRelay(RelayHandler):
    """Holds each mail's DATA (or only the first: ``hold_all=False``) until the test lets it
    through: a send caught in flight."""

    def __init__(self, hold_all: bool = True) -> None:
        super().__init__()
        self.hold_all = hold_all
        self.in_flight = threading.Event()
        self.answer = threading.Event()
        self.first_held = ""  # its Message-ID

    async def handle_DATA(self, server: SMTP, session: SmtpSession, envelope: Envelope) -> str:
        if self.hold_all or not self.in_flight.is_set():
            if not self.in_flight.is_set():
                held = message_from_bytes(envelope.original_content or b"", policy=policy.default)
                self.first_held = str(held["Message-ID"])
            self.in_flight.set()
            await asyncio.get_running_loop().run_in_executor(None, self.answer.wait, 20)
        return await super().handle_DATA(server, session, envelope)


@asynccontextmanager
async def outbox_of_three(
    tmp_path: Path, base_settings: Settings, port: int
) -> AsyncIterator[tuple[Settings, Database]]:
    """A database of its own whose outbox holds three notices, and settings that mail them
    to the relay on ``port``."""
    own_db = f"sqlite:///{tmp_path / 'own.db'}"
    settings = base_settings.model_copy(
        update={"data_dir": tmp_path, "database_url": own_db, "smtp_port": port}
    )
    migrate(settings.resolved_database_url)
    chain = audit.chain_for(settings, Keyring.of(settings))
    db = Database(settings.resolved_database_url, audit=chain)
    now = datetime.now(UTC)
    try:
        async with db.write() as session:
            account = Account(
                id=str(uuid.uuid4()), email="queue@example.com", password_hash="-",
                created_at=now, updated_at=now,
            )  # fmt: skip
            session.add(account)
            for n in range(3):
                await notification_queries.notify(
                    session, account.id, BROWSER_ENROLLED, account.email, now, device_name=f"b{n}"
                )
        yield settings, db
    finally:
        await db.dispose()


@pytest.mark.single_backend  # an outbox of its own: no other notifier may take its mails
async def test_a_stopping_notifier_finishes_the_mail_in_flight_and_leaves_the_rest(
    tmp_path: Path, base_settings: Settings
) -> None:
    handler = SlowRelay()
    with relay(handler) as port:
        async with outbox_of_three(tmp_path, base_settings, port) as (settings, db):
            stop = asyncio.Event()
            notifier = asyncio.create_task(run_notifier(settings, db, stop))
            await eventually(handler.in_flight.is_set, "a mail at the relay", interval=0.01)
            stop.set()
            handler.answer.set()
            await asyncio.wait_for(notifier, 20)
            async with db.read() as session:
                rows = (await session.scalars(select(Notification))).all()
    assert len(handler.accepted) == 1  # none started after the stop
    [sent] = [n for n in rows if n.sent_at is not None]
    assert sent.attempts == 1
    left = [n for n in rows if n.sent_at is None]
    assert len(left) == 2
    assert all(n.attempts == 0 and n.due_at <= datetime.now(UTC) for n in left)
    assert all(n.failed_at is None for n in left)


@pytest.mark.single_backend  # an outbox of its own: no other notifier may take its mails
async def test_a_mail_held_at_the_relay_holds_back_no_other_and_none_goes_twice(
    tmp_path: Path, base_settings: Settings
) -> None:
    """Notifiers claim one mail at a time: while one waits on a slow relay, another sends the
    rest, and a claim never lapses behind mails still waiting in a batch (which another
    notifier would then send too)."""
    handler = SlowRelay(hold_all=False)
    with relay(handler) as port:
        async with outbox_of_three(tmp_path, base_settings, port) as (settings, db):
            settings.smtp_timeout_seconds = 60  # the held send never gives up meanwhile
            stop = asyncio.Event()
            notifiers = [asyncio.create_task(run_notifier(settings, db, stop))]
            await eventually(handler.in_flight.is_set, "a mail at the relay", interval=0.01)
            notifiers.append(asyncio.create_task(run_notifier(settings, db, stop)))
            try:
                await eventually(
                    lambda: len(handler.accepted) == 2, "the two others sent meanwhile"
                )
            finally:
                handler.answer.set()
            await eventually(lambda: len(handler.accepted) == 3, "the held one sent")
            stop.set()
            await asyncio.wait_for(asyncio.gather(*notifiers), 20)
    ids = [str(mail["Message-ID"]) for mail, _, _ in handler.accepted]
    assert len(set(ids)) == 3, ids
    assert ids[-1] == handler.first_held, (ids, handler.first_held)  # the others went first
