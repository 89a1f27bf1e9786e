"""S9 and R3 under timeouts, races and operators (issue 10), on the real stack.

A 503 whose outcome the caller cannot know is made without mocks: the account's workflow runs
on a task queue of its own, and the step is asked while no worker serves that queue, on an API
whose workflow calls give up after a second. The caller gets 503; the server keeps the request,
and the workflow carries it out once a worker is back. The same request is then repeated on the
normal API, which must give the step's real outcome, having done it once. (An API giving up
after 50 ms while a worker runs is not enough: a quick step answers 200 within 50 ms.)

Races are made certain the same way: a workflow is held between two steps by leaving its queue
without a worker, or its mail without a relay, for a moment.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from tests.conftest import ApiFactory, LogCapture
from tests.support import postgres
from tests.support.history import update_refusals
from tests.support.journey import (
    Api,
    User,
    account_row,
    at_activation_step,
    audited,
    count,
    device_rows,
    eventually,
    new_user,
    parse_time,
    progress,
    settled,
    sleep_until,
    state_in_store,
    trusted_devices,
    untrusted,
)
from tests.support.processes import free_port
from tests.support.relay import silent_server
from twofa.activities.effects import Effects
from twofa.config import Settings
from twofa.crypto import Keyring
from twofa.devstack import start_smtp_sink
from twofa.errors import ServiceError
from twofa.notifications import BROWSER_ENROLLED
from twofa.store.db import Database, did_not_answer, migrate
from twofa.store.models import (
    Account,
    ActivationDraft,
    LoginThrottle,
    Notification,
    SentMail,
    Session,
)
from twofa.temporal import build_worker
from twofa.web.security import SESSION_COOKIE
from twofa.wiring import Services
from twofa.workflows.messages import ActorRequest, SessionCut, workflow_id

ENABLE, DISABLE = {"enabled": True}, {"enabled": False, "confirm": True}
#: Password logins looping while the user enables 2FA (R3).
LOGIN_LOOPS = 4
#: Of them, how many must have started after the enable's cut for the race to count.
LATE_LOGINS = 3


@dataclass
class HeldQueue:
    """A task queue of its own, served only inside ``async with held.worker()``."""

    api: Api  # starts workflows on the queue
    impatient: Api  # the same, but its workflow calls give up after a second
    settings: Settings
    client: Client
    database: Database

    def worker(self) -> Worker:
        return build_worker(self.client, self.settings, self.database)


@pytest.fixture(scope="module")
async def held(
    start_api: ApiFactory, base_settings: Settings, client: Client, database: Database
) -> HeldQueue:
    queue = f"held-{uuid.uuid4().hex[:8]}"
    return HeldQueue(
        api=await start_api(temporal_task_queue=queue),
        # a long auto-logout: whoever enabled 2FA there can still repeat the enable
        impatient=await start_api(
            temporal_task_queue=queue, workflow_call_timeout_seconds=1, auto_logout_seconds=60
        ),
        settings=base_settings.model_copy(update={"temporal_task_queue": queue}),
        client=client,
        database=database,
    )


def unavailable(r: httpx.Response) -> None:
    """The contract's 503: the caller cannot know whether the step happened."""
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "temporarily_unavailable", r.text
    assert int(r.headers["Retry-After"]) >= 1, r.headers  # when to repeat it


async def no_activity_retrying(client: Client, account_id: str) -> None:
    """S9: no effect of the account's workflow has failed and waits for another try."""
    description = await client.get_workflow_handle(workflow_id(account_id)).describe()
    retrying = [
        (a.activity_type.name, a.attempt, a.last_failure.message)
        for a in description.raw_description.pending_activities
        if a.attempt > 1 or a.HasField("last_failure")
    ]
    assert not retrying, retrying


async def drafts_of(database: Database, account_id: str) -> int:
    return await count(database, ActivationDraft, ActivationDraft.account_id == account_id)


# -- (1) a step repeated after a 503 gets the step's real outcome (S9)


@pytest.mark.single_backend
def test_a_database_name_that_no_longer_resolves_did_not_answer() -> None:
    """A container stopped, its name gone from the DNS (docker-compose's ``postgresql``),
    or every address of a name refusing: the connection's own errors, unwrapped, each a 503."""
    assert did_not_answer(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    assert did_not_answer(OSError("Multiple exceptions: [Errno 111] ..., [Errno 99] ..."))
    assert not did_not_answer(ValueError("a bug, not an outage"))


@pytest.mark.single_backend  # a PostgreSQL server of its own, stopped mid-test, on either pass
async def test_a_database_that_does_not_answer_gets_503_and_then_the_repeat_works(
    start_api: ApiFactory,
) -> None:
    """docs/api.md: any call may answer 503 ``temporarily_unavailable`` with a ``Retry-After`` when
    the database does not answer; the caller repeats it once the database is back (S9)."""
    with (
        postgres.throwaway_directory("twofa-outage-") as directory,
        postgres.postgres_server(directory / "server") as url,
    ):
        migrate(url)
        api = await start_api(database_url=url)
        user = await api.registered_and_logged_in(new_user("dbdown"))
        postgres.stop(directory / "server")
        unavailable(await api.login(user))  # the pool's connection, ended by the shutdown
        unavailable(await api.login(user))  # a new connection, refused
        unavailable(await api.call("GET", "/v1/session", user))
        cookie = {"Cookie": f"{SESSION_COOKIE}={user.session_token}"}
        page = await api.http.get("/settings", headers=cookie)
        assert page.status_code == 503, page.text  # the pages say it in a page of their own
        assert "try again shortly" in page.text, page.text
        postgres.start(directory / "server", make_url(url).port or 5432)
        assert (await api.login_ok(user))["outcome"] == "authenticated"


async def test_enable_repeated_after_a_503_answers_that_enable(
    held: HeldQueue, database: Database, client: Client, logs: LogCapture
) -> None:
    api = held.api
    user = await api.registered_and_logged_in(new_user("s9-enable"))

    def enable(on: Api) -> Any:
        return on.call("PUT", "/v1/account/two-factor", user, json={"enabled": True})

    logged = len(logs.lines)
    unavailable(await enable(held.impatient))
    gc.collect()  # the failed call's objects go: an outcome left unread is logged then
    assert not [line for line in logs.lines[logged:] if "never retrieved" in line]
    async with held.worker():
        at_once = await enable(api)  # the first enable may not have landed yet
        await api.code_mail(user)
        await settled(client, user.account_id)
        later = await enable(api)  # it has

        assert [at_once.status_code, later.status_code] == [202, 202], [at_once.text, later.text]
        assert at_once.json() == later.json()
        state = await progress(client, user.account_id)
        assert state["state"] == "pending_code" and state["code_number"] == 1, state
        assert parse_time(later.json()["auto_logout_at"]) == parse_time(state["auto_logout_at"])
        assert parse_time(later.json()["code_expires_at"]) == parse_time(state["code_expires_at"])
        assert len(api.activation_mails_to(user.email)) == 1
        assert await count(database, SentMail, SentMail.account_id == user.account_id) == 1


async def test_enable_repeated_after_its_auto_logout_answers_that_enable_and_nothing_else(
    api: Api, database: Database, client: Client
) -> None:
    """The API waits on the workflow longer than the auto-logout, so a caller repeating an
    enable after a 503 finds its session cut by that very enable: it still gets the enable's
    answer (S9), and that session opens nothing else (R3)."""
    user = await api.registered_and_logged_in(new_user("s9-enable-cut"))

    def enable() -> Any:
        return api.call("PUT", "/v1/account/two-factor", user, json={"enabled": True})

    first = await enable()
    assert first.status_code == 202, first.text
    cut_token = user.session_token
    # the cut is the session's own expiry, on the clock
    await sleep_until(parse_time(first.json()["auto_logout_at"]))
    assert (await api.call("GET", "/v1/account/two-factor", user)).status_code == 401

    again = await enable()
    assert again.status_code == 202, again.text
    assert again.json() == first.json()
    r = await api.call(
        "PUT", "/v1/account/two-factor", user, json={"enabled": False, "confirm": True}
    )
    assert r.status_code == 401 and r.json()["error"] == "session_ended", r.text
    await settled(client, user.account_id)
    assert len(api.activation_mails_to(user.email)) == 1
    assert (await account_row(database, user.account_id)).two_factor_state == "pending_code"

    # Once the user has gone on, the repeat says where 2FA is; a session cut by an earlier
    # enrollment (2FA disabled and enabled again since) gets nothing.
    await api.activated_with(user, await api.code_mail(user))
    r = await enable()
    assert r.status_code == 409 and r.json()["error"] == "already_enabled", r.text
    r = await api.call(
        "PUT", "/v1/account/two-factor", user, json={"enabled": False, "confirm": True}
    )
    assert r.status_code == 200, r.text
    await api.login_ok(user)
    assert (await api.enable(user))["auto_logout_at"] != first.json()["auto_logout_at"]
    user.session_token = cut_token
    r = await enable()
    assert r.status_code == 401 and r.json()["error"] == "session_ended", r.text


async def test_activation_code_repeated_after_a_503_is_accepted_again(
    held: HeldQueue, client: Client
) -> None:
    api, user = held.api, new_user("s9-code")
    async with held.worker():
        await api.enabled(user)
        code = await api.code_mail(user)
        login = await api.login_ok(user)
    assert login["outcome"] == "activation_code_required", login
    login_id = login["login_id"]

    unavailable(await held.impatient.submit_code(login_id, code))
    async with held.worker():

        async def accepted() -> bool:
            return (await progress(client, user.account_id))["state"] == "pending_activation"

        await eventually(accepted, "the workflow to accept the code")
        answers = [await api.submit_code(login_id, code) for _ in range(2)]
        assert [(r.status_code, r.json()) for r in answers] == [
            (200, {"outcome": "activation_required"})
        ] * 2, [r.text for r in answers]
        assert (await progress(client, user.account_id))["code_failures"] == 0
        r = await api.activate(login_id, user)
        assert r.status_code == 200, r.text


async def test_a_right_password_whose_login_got_a_503_counts_toward_no_block(
    held: HeldQueue, database: Database
) -> None:
    """S2 counts a password attempt before checking it, and the right password clears the
    count; a login whose code is used up asks the workflow for a new one, and when that call
    answers 503 the caller repeats (S9): four such repeats must not block the fifth."""
    api, user = held.api, new_user("s9-password")
    code = "ZZZZZZZZ"
    async with held.worker():
        await api.enabled(user)
        if code == await api.code_mail(user):
            code = "YYYYYYYY"
        login = await api.login_ok(user)
        for _ in range(5):  # five wrong codes use the code up
            await api.submit_code(login["login_id"], code)
    assert not (await account_row(database, user.account_id)).code_usable
    for _ in range(4):
        unavailable(await held.impatient.login(user))
    async with held.worker():
        again = await api.login_ok(user)
        # the calls that answered 503 went on: one of them mailed the new code
        fresh = await api.code_mail(user, count=2)
        assert again["outcome"] == "activation_code_required", again
        assert (await api.submit_code(again["login_id"], fresh)).status_code == 200


async def test_activation_repeated_after_a_503_hands_the_same_working_browser(
    held: HeldQueue, database: Database, client: Client
) -> None:
    api, user = held.api, new_user("s9-activate")
    async with held.worker():
        login_id = await at_activation_step(api, user)

    unavailable(await held.impatient.activate(login_id, user))
    async with held.worker():

        async def applied() -> bool:
            return await trusted_devices(database, user.account_id) == 1

        await eventually(applied, "the workflow to apply the activation")
        answers = [await api.activate(login_id, user) for _ in range(2)]
        assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
        body = answers[0].json()
        assert answers[1].json() == body
        assert body["outcome"] == "pin_required" and body["seal"] == user.seal, body
        assert [d.id for d in await device_rows(database, user.account_id)] == [body["device_id"]]
        assert await drafts_of(database, user.account_id) == 0
        assert (await progress(client, user.account_id))["state"] == "active"

        # The token handed out is the trusted browser's: this login goes on, and later ones.
        r = await api.pin(login_id, user.pin)
        assert r.status_code == 200, r.text
        user.device_token, user.device_id = body["device_token"], body["device_id"]
        await api.pin_login(user)
        assert await trusted_devices(database, user.account_id) == 1


async def test_disable_repeated_after_a_503_answers_disabled_and_no_session_outlives_2fa(
    held: HeldQueue, database: Database
) -> None:
    """The session that asks to disable 2FA is untied from its browser first, so the disable's
    revocation leaves it open for the repeat (S9); while 2FA is still on, that session serves
    only the disable's repeats (only trusted browsers connect), so a disable that has not taken
    effect leaves no session that a revocation of its browser would miss."""
    api, user = held.api, new_user("s9-disable")
    async with held.worker():
        await api.activated(user)
    disable = {"enabled": False, "confirm": True}
    unavailable(await held.impatient.call("PUT", "/v1/account/two-factor", user, json=disable))
    r = await api.call("GET", "/v1/session", user)
    assert (r.status_code, r.json()["error"]) == (401, "session_ended"), r.text
    # ... but its repeat is heard (503 here again: still no worker), not refused
    unavailable(await held.impatient.call("PUT", "/v1/account/two-factor", user, json=disable))
    async with held.worker():
        await state_in_store(database, user.account_id, "disabled")  # the 503'd disable went on
        again = await api.call("PUT", "/v1/account/two-factor", user, json=disable)
    assert again.status_code == 200, again.text
    assert again.json() == {"state": "disabled", "revoked_devices": 0}
    assert await trusted_devices(database, user.account_id) == 0
    assert (await api.call("GET", "/v1/session", user)).status_code == 200


async def test_the_session_kept_for_a_disable_outlives_the_enables_auto_logout(
    held: HeldQueue, database: Database
) -> None:
    """A disable racing its enable's auto-logout: the disable unties the asking session from
    its browser, then the timer's effect ends the sessions 2FA did not open before the disable
    reaches the workflow. That session was opened by a trusted browser after the enable, so it
    is not one of them: it stays open and the disable's repeat is answered (R3, S9). Here the
    timer's effect runs in between, as the worker would; CI once met it when a quick journey
    disabled just as its 1.5 s auto-logout fired, and the repeat got 401."""
    api, user = held.api, new_user("s9-kept-vs-cut")
    before_enable = datetime.now(UTC)
    async with held.worker():
        await api.activated(user)
    unavailable(await held.impatient.call("PUT", "/v1/account/two-factor", user, json=DISABLE))
    effects = Effects(held.settings, database, Keyring(held.settings.pepper_bytes))
    cut = SessionCut(user.account_id, datetime.now(UTC), opened_before=before_enable)
    await ActivityEnvironment().run(effects.end_sessions, cut)
    open_now = Session.account_id == user.account_id, Session.ended_at.is_(None)
    assert await count(database, Session, *open_now) == 1
    async with held.worker():
        again = await api.call("PUT", "/v1/account/two-factor", user, json=DISABLE)
    assert again.status_code == 200, again.text
    assert again.json()["state"] == "disabled", again.text
    assert (await api.call("GET", "/v1/session", user)).status_code == 200


async def test_a_locking_pin_whose_answer_was_lost_is_not_sent_again_after_the_lock(
    held: HeldQueue, database: Database, client: Client
) -> None:
    """The fifth wrong PIN answered 503 (no worker) is kept, then counted once a worker is
    back, and locks: the lock's projection lets go of it, so once an admin unlocks, the right
    PIN opens a session instead of the kept one being sent again and answering the old lock."""
    api, user = held.api, new_user("s2-lost-lock")
    async with held.worker():
        await api.activated(user)
        login = await api.login_ok(user)
        for attempts_left in (4, 3, 2, 1):
            r = await api.pin(login["login_id"], "13572468")
            assert r.status_code == 400 and r.json()["attempts_left"] == attempts_left, r.text
    unavailable(await held.impatient.pin(login["login_id"], "13572468"))
    assert (await account_row(database, user.account_id)).pin_failure_unrecorded is not None
    async with held.worker():
        await state_in_store(database, user.account_id, "locked")
        assert (await account_row(database, user.account_id)).pin_failure_unrecorded is None
        rejected = await audited(database, user.account_id, "pin_rejected")
        assert [r["attempts_left"] for r in rejected] == [4, 3, 2, 1, 0], rejected  # once each
        handle = client.get_workflow_handle(workflow_id(user.account_id))
        await handle.execute_update("unlock", ActorRequest(actor="admin:test"))
        await state_in_store(database, user.account_id, "active")
        again = await api.login_ok(user)
        r = await api.pin(again["login_id"], user.pin)
        assert r.status_code == 200, r.text


async def test_a_wrong_pin_kept_through_a_disable_counts_nothing_in_the_next_enrollment(
    held: HeldQueue, database: Database
) -> None:
    """A wrong PIN answered 503 (no worker) is kept for the workflow to count; the disable
    that lands before any PIN check revokes the enrollment it was typed against and lets go of
    it, so the next enrollment's logins neither send it again nor audit it (S2, R10)."""
    api, user = held.api, new_user("s2-kept-disable")
    async with held.worker():
        await api.activated(user)
    login = await held.impatient.login_ok(user)
    unavailable(await held.impatient.pin(login["login_id"], "13572468"))
    assert (await account_row(database, user.account_id)).pin_failure_unrecorded is not None
    async with held.worker():
        r = await api.call("PUT", "/v1/account/two-factor", user, json=DISABLE)
        assert r.status_code == 200, r.text
        assert (await account_row(database, user.account_id)).pin_failure_unrecorded is None
        before = len(await audited(database, user.account_id, "pin_rejected"))
        await api.login_ok(user)
        await api.enable(user)
        await api.activated_with(user, await api.code_mail(user, count=2))
        again = await api.login_ok(user)
        r = await api.pin(again["login_id"], "24681357")
        assert r.status_code == 400 and r.json()["attempts_left"] == 4, r.text
    rejected = (await audited(database, user.account_id, "pin_rejected"))[before:]
    assert [r["attempts_left"] for r in rejected] == [4], rejected


async def test_disable_sent_while_an_enable_is_under_way_is_the_last_word(
    held: HeldQueue, database: Database, client: Client
) -> None:
    """An enable answered 503 (no worker), then a disable with the same session: the store
    still says 2FA is off, but the enable is on its way and would turn it on after a "disabled"
    answer. The disable waits for it (503 while it cannot land), and its repeat, once it has
    landed, turns 2FA off: the last request wins (S9, R10)."""
    api, user = held.api, new_user("s9-enable-then-disable")
    await api.registered_and_logged_in(user)
    unavailable(await held.impatient.call("PUT", "/v1/account/two-factor", user, json=ENABLE))
    unavailable(await held.impatient.call("PUT", "/v1/account/two-factor", user, json=DISABLE))
    assert (await account_row(database, user.account_id)).two_factor_state == "disabled"
    async with held.worker():
        r = await api.call("PUT", "/v1/account/two-factor", user, json=DISABLE)
        assert r.status_code == 200, r.text
        assert r.json() == {"state": "disabled", "revoked_devices": 0}
        assert (await progress(client, user.account_id))["state"] == "disabled"
    assert (await account_row(database, user.account_id)).two_factor_state == "disabled"
    # a disable of an account that never enabled 2FA (no workflow at all) answers at once
    stranger = await api.registered_and_logged_in(new_user("s9-never-enabled"))
    r = await held.impatient.call("PUT", "/v1/account/two-factor", stranger, json=DISABLE)
    assert r.status_code == 200 and r.json() == {"state": "disabled", "revoked_devices": 0}


async def test_pin_step_repeated_after_a_lost_answer_gets_that_session(
    api: Api, database: Database
) -> None:
    """The PIN step's answer lost, the caller repeats it: the same session, not a 404 (S9).
    The repeat proves the PIN again, so a wrong one counts (S2); once the session is ended,
    the login is over."""
    user = await api.activated(new_user("pin-repeat"))
    login = await api.login_ok(user)
    first = await api.pin(login["login_id"], user.pin)
    assert first.status_code == 200, first.text
    before = await count(database, Session, Session.account_id == user.account_id)
    again = await api.pin(login["login_id"], user.pin)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert await count(database, Session, Session.account_id == user.account_id) == before
    wrong = await api.pin(login["login_id"], "1357")
    assert (wrong.status_code, wrong.json()["error"]) == (400, "invalid_pin"), wrong.text
    assert wrong.json()["attempts_left"] == 4, wrong.text
    user.session_token = first.json()["session_token"]
    assert (await api.call("DELETE", "/v1/session", user)).status_code == 204
    ended = await api.pin(login["login_id"], user.pin)
    assert (ended.status_code, ended.json()["error"]) == (404, "login_not_found"), ended.text


async def test_no_pin_is_checked_while_a_wrong_one_goes_uncounted(
    held: HeldQueue, database: Database, client: Client
) -> None:
    """S2 while Temporal cannot count: a wrong PIN whose count no worker confirms answers 503,
    and every PIN after it, the right one too and on another login, gets 503 unchecked until
    the workflow has counted it, once: no outage hands out uncounted guesses. The password step
    needs no Temporal, so an attacker holding the password and a stolen browser could
    otherwise try PINs without end (each wrong one a 503, the right one a session)."""
    api, user = held.api, new_user("s2-uncounted")
    async with held.worker():
        await api.activated(user)
    login = await held.impatient.login_ok(user)
    assert login["outcome"] == "pin_required", login
    unavailable(await held.impatient.pin(login["login_id"], "13572468"))
    another = await held.impatient.login_ok(user)
    for login_id in (login["login_id"], login["login_id"], another["login_id"]):
        unavailable(await held.impatient.pin(login_id, user.pin))
    account = await account_row(database, user.account_id)
    assert account.pin_failure_unrecorded is not None and account.pin_failures == 0
    async with held.worker():
        # the uncounted one counts first, once however often it was sent, then this one
        r = await api.pin(login["login_id"], "24681357")
        assert r.status_code == 400 and r.json()["attempts_left"] == 3, r.text
        assert (await progress(client, user.account_id))["pin_failures"] == 2
        r = await api.pin(another["login_id"], user.pin)
        assert r.status_code == 200, r.text
        assert (await progress(client, user.account_id))["pin_failures"] == 0
    rejected = await audited(database, user.account_id, "pin_rejected")
    assert [r["attempts_left"] for r in rejected] == [4, 3], rejected
    assert (await account_row(database, user.account_id)).pin_failure_unrecorded is None


async def test_browser_enrollment_pin_repeated_hands_the_same_trusted_browser(
    api: Api, database: Database
) -> None:
    """The last step of enrolling a browser, repeated after a lost answer: the same browser
    id and token, one browser more, one "browser enrolled" notice (S9, S10)."""
    user = await api.activated(new_user("enroll-pin-repeat"))
    other = untrusted(user)
    login = await api.login_ok(other)
    assert (await api.enroll(login["login_id"])).status_code == 202
    code = await api.code_mail(user, count=2)
    assert (await api.submit_code(login["login_id"], code)).status_code == 200
    notices = Notification.account_id == user.account_id, Notification.kind == BROWSER_ENROLLED
    notices_before = await count(database, Notification, *notices)
    first = await api.pin(login["login_id"], user.pin)
    assert first.status_code == 200, first.text
    again = await api.pin(login["login_id"], user.pin)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert again.json()["device_token"] and again.json()["device_id"]
    assert await trusted_devices(database, user.account_id) == 2
    assert await count(database, Notification, *notices) == notices_before + 1
    other.device_token = again.json()["device_token"]
    assert (await api.login_ok(other))["outcome"] == "pin_required"


async def test_browser_enrollment_repeated_after_a_503_mails_one_code(
    held: HeldQueue, database: Database, client: Client
) -> None:
    api = held.api
    async with held.worker():
        user = await api.activated(new_user("s9-enroll"))
        other = untrusted(user)
        login = await api.login_ok(other)
        codes_before = (await progress(client, user.account_id))["code_number"]
    assert login["outcome"] == "browser_not_trusted", login
    login_id = login["login_id"]

    unavailable(await held.impatient.enroll(login_id, device_name="laptop"))
    async with held.worker():

        async def issued() -> bool:
            return (await progress(client, user.account_id))["code_number"] > codes_before

        await eventually(issued, "the workflow to issue the enrollment code")
        answers = [await api.enroll(login_id, device_name="laptop") for _ in range(2)]
        assert [r.status_code for r in answers] == [202, 202], [r.text for r in answers]
        assert answers[0].json() == answers[1].json()
        assert answers[0].json()["outcome"] == "activation_code_required", answers[0].text
        code = await api.code_mail(user, count=2)
        await settled(client, user.account_id)
        assert (await progress(client, user.account_id))["code_number"] == codes_before + 1
        assert len(api.activation_mails_to(user.email)) == 2, "the enrollment code was mailed twice"
        assert await count(database, SentMail, SentMail.account_id == user.account_id) == 2

        r = await api.submit_code(login_id, code)
        assert r.status_code == 200 and r.json()["outcome"] == "pin_required", r.text
        r = await api.pin(login_id, user.pin)
        assert r.status_code == 200 and r.json()["device_token"], r.text
        assert await trusted_devices(database, user.account_id) == 2


# -- (2) an effect refused for good returns the user to a step they can go on from (S9)


async def finish_after_refusal(
    api: Api, database: Database, client: Client, user: User, login_id: str
) -> None:
    """The refused user is back at the activation step, and activates with another email."""
    assert (await progress(client, user.account_id))["state"] == "pending_activation"
    assert (await account_row(database, user.account_id)).two_factor_state == "pending_activation"
    await no_activity_retrying(client, user.account_id)
    assert await trusted_devices(database, user.account_id) == 0

    new_email = new_user("s9-other-email").email
    r = await api.activate(login_id, user, email=new_email)
    assert r.status_code == 200, r.text
    r = await api.pin(login_id, user.pin)
    assert r.status_code == 200, r.text
    account = await account_row(database, user.account_id)
    assert (account.email, account.two_factor_state) == (new_email, "active")
    assert await trusted_devices(database, user.account_id) == 1
    assert await drafts_of(database, user.account_id) == 0
    await no_activity_retrying(client, user.account_id)


async def test_two_activations_taking_one_new_email_at_once(
    api: Api, database: Database, client: Client
) -> None:
    users = [new_user("s9-race-a"), new_user("s9-race-b")]
    logins = await asyncio.gather(*(at_activation_step(api, u) for u in users))
    taken = new_user("s9-race-email").email

    answers = await asyncio.gather(
        *(api.activate(login, u, email=taken) for u, login in zip(users, logins, strict=True))
    )
    assert sorted(r.status_code for r in answers) == [200, 409], [r.text for r in answers]
    lost = next(i for i, r in enumerate(answers) if r.status_code == 409)
    assert answers[lost].json()["error"] == "email_taken", answers[lost].text
    assert answers[lost].json()["field"] == "email", answers[lost].text
    winner = users[1 - lost]
    assert (await account_row(database, winner.account_id)).email == taken
    await finish_after_refusal(api, database, client, users[lost], logins[lost])


async def test_activation_its_workflow_refuses_for_good_lets_the_user_go_on(
    api: Api, held: HeldQueue, database: Database, client: Client
) -> None:
    """The email race, made certain: the loser's activation passed the service's check and
    waits for its workflow (no worker on its queue) while another account takes the email."""
    loser = new_user("s9-held")
    async with held.worker():
        login_id = await at_activation_step(held.api, loser)
    taken = new_user("s9-held-email").email
    unavailable(await held.impatient.activate(login_id, loser, email=taken))
    winner = new_user("s9-held-winner")
    r = await api.activate(await at_activation_step(api, winner), winner, email=taken)
    assert r.status_code == 200, r.text

    async with held.worker():
        handle = client.get_workflow_handle(workflow_id(loser.account_id))

        async def refused() -> bool:
            return "email_taken" in update_refusals((await handle.fetch_history()).events)

        await eventually(refused, "the loser's workflow to refuse its activation")
        await finish_after_refusal(held.api, database, client, loser, login_id)


# -- (3) R3: no password-only session outlives the auto-logout


async def test_password_logins_racing_the_enable_end_at_the_auto_logout(
    api: Api,
    start_api: ApiFactory,
    base_settings: Settings,
    database: Database,
    client: Client,
    tmp_path: Path,
) -> None:
    """Logins loop while the user enables 2FA. The enable is held between its session cut and
    its state change (its mail's first try waits for a relay that says nothing until the test
    has seen enough logins), so logins surely start after the cut and still see 2FA off: their
    sessions too must end at ``auto_logout_at``."""
    queue = f"r3-{uuid.uuid4().hex[:8]}"
    smtp_port = free_port()
    settings = base_settings.model_copy(
        # only the test's hang-up ends the first try's wait for the relay's greeting
        update={"temporal_task_queue": queue, "smtp_port": smtp_port, "smtp_timeout_seconds": 300}
    )
    on_queue = await start_api(temporal_task_queue=queue)
    user = await api.registered_and_logged_in(new_user("r3-race"))
    assert user.session_token
    tokens = [user.session_token]
    late: list[str] = []  # tokens of logins begun after the cut was seen in the store
    cut_seen = asyncio.Event()
    stop = asyncio.Event()

    async def log_in_again_and_again() -> None:
        while not stop.is_set():
            after_cut = cut_seen.is_set()
            body = await api.login_ok(User(email=user.email, password=user.password))
            if body["outcome"] != "authenticated":
                assert body["outcome"] == "activation_code_required", body
                return
            tokens.append(body["session_token"])
            if after_cut:
                late.append(body["session_token"])

    async def cut() -> bool:
        """The enable's session cut is committed (a local activity: no event until it ends)."""
        return (await account_row(database, user.account_id)).auto_logout_at is not None

    async def enough_late_logins() -> bool:
        return len(late) >= LATE_LOGINS

    async with build_worker(client, settings, database):
        loops = [asyncio.create_task(log_in_again_and_again()) for _ in range(LOGIN_LOOPS)]
        try:
            async with silent_server(close_at_once=False, port=smtp_port) as relay:
                enabling = asyncio.create_task(
                    on_queue.call("PUT", "/v1/account/two-factor", user, json={"enabled": True})
                )
                await eventually(cut, "the enable's session cut")
                cut_seen.set()
                await eventually(enough_late_logins, "logins begun after the cut")
                relay.hang_up()  # the first try fails; the mail's retries go to the sink below
            sink = start_smtp_sink(tmp_path / "mail", "127.0.0.1", smtp_port)
            try:
                r = await enabling
                await settled(client, user.account_id)
            finally:
                sink.stop()
            assert r.status_code == 202, r.text
            await asyncio.gather(*loops)
        finally:
            stop.set()
            await asyncio.gather(*loops, return_exceptions=True)
        auto_logout_at = parse_time(r.json()["auto_logout_at"])

        # every session must be over by the clock, whether or not the timer has run yet
        await sleep_until(auto_logout_at)
        for number, token in enumerate(tokens):
            r = await api.call("GET", "/v1/session", headers={"X-Session-Token": token})
            when = "after" if token in late else "before"
            assert r.status_code == 401, f"session #{number} (begun {when} the cut): {r.text}"
        now = datetime.now(UTC)
        alive = await count(
            database,
            Session,
            Session.account_id == user.account_id,
            Session.device_id.is_(None),
            Session.ended_at.is_(None),
            Session.expires_at > now,
        )
        assert alive == 0, f"{alive} password-only session(s) outlive the auto-logout"
        await settled(client, user.account_id)


# -- (4) revoking a browser ends its logins in progress


async def test_revoked_browser_gets_no_pin_verdict_and_changes_no_counter(
    api: Api, database: Database, client: Client
) -> None:
    user = await api.activated(new_user("revoked-pin"))
    second = await api.enrolled(untrusted(user))
    login = await api.login_ok(user)
    assert login["outcome"] == "pin_required", login
    login_id = login["login_id"]
    r = await api.pin(login_id, "00000000")
    assert r.status_code == 400 and r.json()["attempts_left"] == 4, r.text
    assert (await progress(client, user.account_id))["pin_failures"] == 1

    r = await api.call("DELETE", f"/v1/account/devices/{user.device_id}", second)
    assert r.status_code == 204, r.text

    for pin in ("00000000", user.pin):  # a wrong PIN, then the right one
        r = await api.pin(login_id, pin)
        assert r.status_code == 404 and r.json()["error"] == "login_not_found", r.text
    assert (await progress(client, user.account_id))["pin_failures"] == 1
    assert (await account_row(database, user.account_id)).pin_failures == 1
    # The other browser goes on.
    await api.pin_login(second)


# -- (5) an admin can always disable


@pytest.mark.parametrize("by", ["admin", "user"])
async def test_disable_works_after_the_workflow_was_terminated(
    by: str,
    api: Api,
    base_settings: Settings,
    database: Database,
    client: Client,
) -> None:
    user = await api.activated(new_user(f"terminated-{by}"))
    handle = client.get_workflow_handle(workflow_id(user.account_id))
    await handle.terminate("an operator's mistake")

    if by == "admin":
        admin = Services.on(base_settings, database, client).admin
        operator = await admin.create_operator(
            f"admin.{uuid.uuid4().hex[:10]}@ops.example.com", "admin", "correct horse battery"
        )
        assert (await admin.disable(operator, user.account_id)).revoked_devices == 1
    else:
        r = await api.call(
            "PUT", "/v1/account/two-factor", user, json={"enabled": False, "confirm": True}
        )
        assert r.status_code == 200, r.text
        assert r.json() == {"state": "disabled", "revoked_devices": 1}

    account = await account_row(database, user.account_id)
    assert account.two_factor_state == "disabled"
    assert account.pin_hash is None and account.seal_ciphertext is None
    assert await trusted_devices(database, user.account_id) == 0
    # Nothing is stuck: the password alone logs in, and 2FA can be enabled afresh.
    body = await api.login_ok(User(email=user.email, password=user.password))
    assert body["outcome"] == "authenticated", body
    user.session_token = body["session_token"]
    await api.enable(user)
    await api.code_mail(user, count=2)
    assert (await progress(client, user.account_id))["state"] == "pending_code"

    await state_in_store(database, user.account_id, "pending_code")  # the new run's projection


async def test_a_login_temporal_cannot_tell_about_a_passed_cut_answers_503(
    api: Api, base_settings: Settings, database: Database
) -> None:
    """A password login finds a passed session cut on an account still without 2FA, and
    Temporal does not say whether an enable is under way (it holds the connection and never
    answers): 503, which the caller repeats, rather than a session ended at birth or one that
    outlives an enable (R3). The right password's count is cleared first, so the repeats add
    up to no block (S2); the cut stays."""
    user = await api.registered_and_logged_in(new_user("cut-unanswered"))
    async with database.write() as db:
        account = await db.get(Account, user.account_id)
        assert account is not None
        account.auto_logout_at = datetime.now(UTC) - timedelta(seconds=1)
        account.auto_logout_run = "a-run-nobody-can-ask-about"
    key = Keyring.of(base_settings).digests("login-throttle", user.email)[0]
    async with silent_server(close_at_once=False) as temporal:
        unanswering = await Client.connect(f"127.0.0.1:{temporal.port}", lazy=True)
        users = Services.on(base_settings, database, unanswering).users
        with pytest.raises(ServiceError) as refused:
            await users.login(user.email, user.password, None)
        temporal.hang_up()
    assert refused.value.status == 503, refused.value.body()
    async with database.read() as db:
        throttle = await db.get(LoginThrottle, key)
        account = await db.get(Account, user.account_id)
    assert throttle is None, throttle.failures  # the attempt counted, then cleared
    assert account is not None and account.auto_logout_at is not None


async def test_right_pin_at_the_end_of_a_lock_is_locked_or_opens_a_session(
    start_api: ApiFactory, client: Client, database: Database
) -> None:
    """The store counts a lock as ended at ``locked_until``; the workflow must agree even when
    a PIN's update reaches it before the lock's own timer was handled (R8). Right PINs sent
    across that moment each get 423 (still locked) or 200, never 409 ``two_factor_not_active``
    (what the workflow answered while its timer was still queued)."""
    api = await start_api(pin_lock_seconds=1)
    user = await api.activated(new_user("lock-end"))
    login = await api.login_ok(user)
    for _ in range(5):
        r = await api.pin(login["login_id"], "90817263")
    assert r.status_code == 423, r.text
    locked_until = parse_time(r.json()["locked_until"])
    await sleep_until(locked_until, margin=-0.3)  # the PINs must cross the lock's end
    answers: list[int] = []

    async def opened() -> bool:
        login = await api.login_ok(user)
        if login["outcome"] == "locked":
            return False
        assert login["outcome"] == "pin_required", login
        r = await api.pin(login["login_id"], user.pin)
        answers.append(r.status_code)
        assert r.status_code in (200, 423), (answers, r.text)
        return r.status_code == 200

    await eventually(opened, lambda: f"a session once the lock ended: {answers}", interval=0)
    await settled(client, user.account_id)
    assert (await progress(client, user.account_id))["state"] == "active"
    assert (await account_row(database, user.account_id)).two_factor_state == "active"
