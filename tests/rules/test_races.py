"""Races (issue 3, point 4): double clicks on one login, double enables, and many journeys at once.

Every request goes through the real HTTP API, on the real Temporal dev server and store; what a
race leaves behind is counted in the store and in Temporal, never inferred from the answers alone.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from temporalio.client import Client

from tests.conftest import ApiFactory
from tests.support.journey import (
    CODE_LINE,
    Api,
    User,
    at_activation_step,
    count,
    eventually,
    new_user,
    progress,
    settled,
    trusted_devices,
    untrusted,
)
from tests.support.processes import TWOFA, environment, free_port, started
from twofa.config import Settings
from twofa.devstack import start_smtp_sink
from twofa.store.db import Database
from twofa.store.models import Account, ActivationDraft, Device, SentMail, Session
from twofa.workflows.messages import workflow_id

#: How many journeys run at once in the crowd test: the machine has 2 cores.
CROWD = 100
CROWD_PARALLELISM = 20
#: How long a crowd journey's step may be answered 503 (S9: no answer, repeat it) before the
#: test calls it stuck: each 503 is mostly the API's whole wait on the workflow (20 s here).
UNANSWERED_SECONDS = 300


# -- helpers


def assert_error(r: httpx.Response) -> dict[str, Any]:
    """A clean refusal: a 4xx in the contract's shape ``{"error", "message", ...}``."""
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body: dict[str, Any] = r.json()
    assert isinstance(body.get("error"), str), body
    assert re.fullmatch(r"[a-z]+(_[a-z]+)*", body["error"]), body
    assert isinstance(body.get("message"), str) and body["message"], body
    return body


def one_success(answers: list[httpx.Response]) -> tuple[httpx.Response, httpx.Response]:
    """Of two concurrent answers, exactly one is a 200: returns (the success, the refusal)."""
    statuses = sorted(r.status_code for r in answers)
    assert statuses.count(200) == 1, [(r.status_code, r.text) for r in answers]
    ok = next(r for r in answers if r.status_code == 200)
    refused = next(r for r in answers if r is not ok)
    assert_error(refused)
    return ok, refused


async def sessions(database: Database, account_id: str) -> int:
    return await count(database, Session, Session.account_id == account_id)


async def mails_recorded(database: Database, account_id: str) -> int:
    return await count(database, SentMail, SentMail.account_id == account_id)


async def workflow_runs(client: Client, account_id: str) -> int:
    query = f'WorkflowId = "{workflow_id(account_id)}"'
    return len([run async for run in client.list_workflows(query)])


# -- two submissions of one login at once


async def test_double_submitted_activation_code_passes_once(
    api: Api, database: Database, client: Client
) -> None:
    user = new_user("race-code")
    await api.enabled(user)
    code = await api.code_mail(user)
    login = await api.login_ok(user)
    assert login["outcome"] == "activation_code_required", login
    login_id = login["login_id"]

    answers = await asyncio.gather(api.submit_code(login_id, code), api.submit_code(login_id, code))
    # the code passes once, and both clicks get that outcome (S9)
    assert [(r.status_code, r.json()) for r in answers] == [
        (200, {"outcome": "activation_required"})
    ] * 2, [r.text for r in answers]
    state = await progress(client, user.account_id)
    assert state["state"] == "pending_activation", state
    assert state["code_failures"] == 0, "the losing click counted as a wrong code"

    # The journey goes on from the one success, and ends with one trusted browser.
    r = await api.activate(login_id, user)
    assert r.status_code == 200, r.text
    r = await api.pin(login_id, user.pin)
    assert r.status_code == 200, r.text
    assert await trusted_devices(database, user.account_id) == 1


async def test_double_clicked_activate_enrolls_one_browser(
    api: Api, database: Database, client: Client
) -> None:
    user = new_user("race-activate")
    login_id = await at_activation_step(api, user)

    answers = await asyncio.gather(api.activate(login_id, user), api.activate(login_id, user))
    # one activation, and both clicks get its answer: the same browser and token (S9)
    assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
    body = answers[0].json()
    assert answers[1].json() == body
    assert body["outcome"] == "pin_required" and body["device_token"], body

    assert await trusted_devices(database, user.account_id) == 1
    async with database.read() as db:
        devices = (
            await db.scalars(select(Device).where(Device.account_id == user.account_id))
        ).all()
    assert [d.id for d in devices] == [body["device_id"]], "the second click left a device"
    # Nothing of either click lingers: the draft (PIN hash, seal) went into place.
    assert (
        await count(database, ActivationDraft, ActivationDraft.account_id == user.account_id) == 0
    )
    state = await progress(client, user.account_id)
    assert state["state"] == "active", state

    # The winner's browser is the trusted one: its PIN login works.
    r = await api.pin(login_id, user.pin)
    assert r.status_code == 200, r.text
    user.device_token = body["device_token"]
    await api.pin_login(user)
    assert await trusted_devices(database, user.account_id) == 1


async def test_double_submitted_pin_opens_one_session(api: Api, database: Database) -> None:
    """Both clicks get that one session: the second waits for the first's verdict (429) or,
    once it is given, is answered as a repeat of the step (S9)."""
    user = await api.activated(new_user("race-pin"))
    login = await api.login_ok(user)
    assert login["outcome"] == "pin_required", login
    before = await sessions(database, user.account_id)

    answers = await asyncio.gather(
        api.pin(login["login_id"], user.pin), api.pin(login["login_id"], user.pin)
    )
    opened = [r for r in answers if r.status_code == 200]
    assert opened, [(r.status_code, r.text) for r in answers]
    for waited in (r for r in answers if r.status_code != 200):
        assert assert_error(waited)["error"] == "pin_check_in_progress", waited.text
    assert len({r.json()["session_token"] for r in opened}) == 1, [r.json() for r in opened]
    assert opened[0].json()["outcome"] == "authenticated"

    assert await sessions(database, user.account_id) - before == 1
    assert await trusted_devices(database, user.account_id) == 1
    # The session handed out works; a repeat gets it again and opens no other.
    user.session_token = opened[0].json()["session_token"]
    r = await api.call("GET", "/v1/session", user)
    assert r.status_code == 200, r.text
    r = await api.pin(login["login_id"], user.pin)
    assert r.status_code == 200, r.text
    assert r.json() == opened[0].json()
    assert await sessions(database, user.account_id) - before == 1


async def test_double_clicked_enroll_browser_mails_one_code(
    api: Api, database: Database, client: Client
) -> None:
    """R9 with a double click on "enroll this browser": one new code, one new mail, and both
    clicks get that one answer (S9)."""
    user = await api.activated(new_user("race-enroll-mail"))
    other = untrusted(user)
    login = await api.login_ok(other)
    assert login["outcome"] == "browser_not_trusted", login
    login_id = login["login_id"]
    codes_before = (await progress(client, user.account_id))["code_number"]

    def enroll() -> Awaitable[httpx.Response]:
        return api.enroll(login_id, device_name="b")

    answers = await asyncio.gather(enroll(), enroll())
    assert [r.status_code for r in answers] == [202, 202], [r.text for r in answers]
    assert answers[0].json() == answers[1].json()
    code = await api.code_mail(user, count=2)
    await settled(client, user.account_id)  # a second mail, if any, is in the sink by now
    issued = (await progress(client, user.account_id))["code_number"] - codes_before
    assert (issued, len(api.activation_mails_to(user.email))) == (1, 2), (
        f"one enrollment, yet {issued} codes were issued and "
        f"{len(api.activation_mails_to(user.email)) - 1} enrollment mails sent"
    )
    r = await api.submit_code(login_id, code)
    assert r.status_code == 200, r.text


async def test_double_submitted_pin_of_a_browser_enrollment_trusts_one_browser(
    api: Api, database: Database
) -> None:
    """R9 with a double click on the last step: one new browser, one session."""
    user = await api.activated(new_user("race-enroll"))
    other = untrusted(user)
    login = await api.login_ok(other)
    assert login["outcome"] == "browser_not_trusted", login
    login_id = login["login_id"]
    r = await api.enroll(login_id, device_name="b")
    assert r.status_code == 202, r.text
    code = await api.code_mail(user, count=2)
    r = await api.submit_code(login_id, code)
    assert r.status_code == 200, r.text
    before = await sessions(database, user.account_id)

    answers = await asyncio.gather(api.pin(login_id, user.pin), api.pin(login_id, user.pin))
    ok, _ = one_success(list(answers))
    assert ok.json()["device_token"], ok.json()

    assert await trusted_devices(database, user.account_id) == 2
    assert await sessions(database, user.account_id) - before == 1


async def test_enabling_twice_at_once_starts_one_workflow_and_mails_one_code(
    api: Api, database: Database, client: Client
) -> None:
    user = await api.registered_and_logged_in(new_user("race-enable"))

    def enable() -> Awaitable[httpx.Response]:
        return api.call("PUT", "/v1/account/two-factor", user, json={"enabled": True})

    answers = await asyncio.gather(enable(), enable())
    # one enable, and both get its answer: a repeat is safe and tells the real outcome (S9)
    assert [r.status_code for r in answers] == [202, 202], [r.text for r in answers]
    assert answers[0].json() == answers[1].json()

    async def listed() -> bool:
        return await workflow_runs(client, user.account_id) >= 1

    await eventually(listed, "the workflow to be listed")
    await api.code_mail(user)
    await settled(client, user.account_id)  # a second mail, if any, is in the sink by now
    assert await workflow_runs(client, user.account_id) == 1
    assert len(api.activation_mails_to(user.email)) == 1
    assert await mails_recorded(database, user.account_id) == 1
    state = await progress(client, user.account_id)
    assert state["state"] == "pending_code" and state["code_number"] == 1, state


# -- many journeys at once


class MailBox:
    """The sink's mail directory read incrementally: each message is parsed once, not per poll."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.seen: set[str] = set()
        self.codes: dict[str, list[str]] = {}

    def refresh(self) -> None:
        for path in sorted(self.directory.glob("*.eml")):
            if path.name in self.seen:
                continue
            self.seen.add(path.name)
            message = message_from_bytes(path.read_bytes(), policy=policy.default)
            body = message.get_body(("plain",))
            match = CODE_LINE.search(body.get_content()) if body is not None else None
            if match:
                self.codes.setdefault(str(message["To"]), []).append(match.group(1))

    async def code_for(self, email: str, timeout: float = 120) -> str:
        def arrived() -> bool:
            self.refresh()
            return email in self.codes

        await eventually(arrived, f"an activation mail for {email}", timeout, 0.2)
        return self.codes[email][-1]


async def definite(request: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
    """What S9 tells a caller: a 503 is no answer, so repeat after its Retry-After; the repeat
    answers with the step's real outcome. A hundred journeys on a loaded machine may outlast
    the API's wait on the workflow; what they must never do is end inconsistent, or never end:
    a step still answered 503 after ``UNANSWERED_SECONDS`` is stuck, not slow."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + UNANSWERED_SECONDS
    unanswered = 0
    while True:
        r = await request()
        if r.status_code != 503:
            return r
        unanswered += 1
        if loop.time() >= deadline:
            pytest.fail(
                f"{r.request.method} {r.request.url.path} still unanswered after "
                f"{UNANSWERED_SECONDS} s ({unanswered} 503s): {r.text}"
            )
        await asyncio.sleep(float(r.headers["retry-after"]))


async def whole_journey(api: Api, mailbox: MailBox, user: User) -> User:
    """``Api.activated``, reading the mail through the shared incremental mailbox."""
    await api.registered_and_logged_in(user)
    r = await definite(
        lambda: api.call("PUT", "/v1/account/two-factor", user, json={"enabled": True})
    )
    assert r.status_code == 202, r.text
    code = await mailbox.code_for(user.email)
    r = await definite(lambda: api.login(user))
    assert r.status_code == 200 and r.json()["outcome"] == "activation_code_required", r.text
    login_id = r.json()["login_id"]
    r = await definite(lambda: api.submit_code(login_id, code))
    assert r.status_code == 200 and r.json() == {"outcome": "activation_required"}, r.text
    r = await definite(lambda: api.activate(login_id, user))
    assert r.status_code == 200, r.text
    user.device_token = r.json()["device_token"]
    user.device_id = r.json()["device_id"]
    r = await definite(lambda: api.pin(login_id, user.pin))
    assert r.status_code == 200, r.text
    user.session_token = r.json()["session_token"]
    return user


async def test_a_hundred_concurrent_journeys_all_complete_consistently(
    start_api: ApiFactory,
    base_settings: Settings,
    database: Database,
    client: Client,
    tmp_path: Path,
) -> None:
    """Their workflows run on a ``twofa worker`` process of their own, mailing a sink of their
    own: a hundred journeys' work is off this test's event loop and out of the shared mailbox."""
    queue = f"crowd-{uuid.uuid4().hex[:8]}"
    smtp_port = free_port()
    sink = start_smtp_sink(tmp_path / "mail", "127.0.0.1", smtp_port)
    try:
        api = await start_api(temporal_task_queue=queue)
        env = environment(base_settings, temporal_task_queue=queue, smtp_port=str(smtp_port))
        async with started([TWOFA, "worker"], env, tmp_path / "worker.log"):
            mailbox = MailBox(tmp_path / "mail")
            gate = asyncio.Semaphore(CROWD_PARALLELISM)

            async def one() -> User:
                async with gate:
                    return await whole_journey(api, mailbox, new_user("crowd"))

            users = await asyncio.gather(*(one() for _ in range(CROWD)))
            assert len({u.account_id for u in users}) == CROWD
            await check_crowd(api, database, client, users)
            mailbox.refresh()
            assert all(len(mailbox.codes[u.email]) == 1 for u in users), "a code mailed twice"
    finally:
        sink.stop()


async def check_crowd(api: Api, database: Database, client: Client, users: list[User]) -> None:
    ids = [u.account_id for u in users]
    async with database.read() as db:
        accounts = {a.id: a for a in (await db.scalars(select(Account).where(Account.id.in_(ids))))}
        device_rows = (await db.scalars(select(Device).where(Device.account_id.in_(ids)))).all()
        mail_rows = (await db.scalars(select(SentMail).where(SentMail.account_id.in_(ids)))).all()
        drafts = await db.scalar(
            select(func.count())
            .select_from(ActivationDraft)
            .where(ActivationDraft.account_id.in_(ids))
        )
    assert drafts == 0
    devices: dict[str, list[Device]] = {}
    for device in device_rows:
        devices.setdefault(device.account_id, []).append(device)
    mails: dict[str, int] = {}
    for mail in mail_rows:
        mails[mail.account_id] = mails.get(mail.account_id, 0) + 1
    states = await asyncio.gather(*(progress(client, i) for i in ids))
    for user, state in zip(users, states, strict=True):
        account = accounts[user.account_id]
        assert account.two_factor_state == "active", (user.email, account.two_factor_state)
        assert state["state"] == "active", state
        # The store's projection is the workflow's latest: none lost, none applied out of order.
        assert account.projection_version == state["version"], (user.email, state)
        assert account.pin_hash and account.seal_ciphertext
        assert [d.id for d in devices.get(user.account_id, [])] == [user.device_id], user.email
        assert devices[user.account_id][0].revoked_at is None
        assert mails.get(user.account_id) == 1, user.email
        assert state["code_number"] == 1, state
    # And each of them can come back with the PIN on the browser it trusted.
    for user in users[:5]:
        await api.pin_login(user)
