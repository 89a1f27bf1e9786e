"""The product document's rules R1-R11 (docs/rules.md), one or more end-to-end tests each.

Every test drives the real HTTP API (uvicorn + FastAPI) on a real Temporal dev server, SQLite
store and SMTP sink, with fresh users, and reads codes from the mails the sink received.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from tests.conftest import ApiFactory
from tests.support.journey import (
    CODE_LINE,
    Api,
    User,
    account_row,
    device_rows,
    eventually,
    new_user,
    parse_time,
    settled,
    sleep_until,
)
from twofa.config import Settings
from twofa.devstack import read_mails
from twofa.store.db import Database
from twofa.store.models import ActivationDraft, Session
from twofa.workflows.messages import workflow_id

#: The product's own auto-logout time (R3), for the test that waits for it: the session's
#: 1.5 s may be over before a loaded machine has answered the enable.
AUTO_LOGOUT = 10

# -- helpers


def now() -> datetime:
    return datetime.now(UTC)


async def draft_rows(database: Database, account_id: str) -> list[ActivationDraft]:
    async with database.read() as db:
        query = select(ActivationDraft).where(ActivationDraft.account_id == account_id)
        return list((await db.scalars(query)).all())


def plain_text(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


async def workflow_status(client: Client, account_id: str) -> WorkflowExecutionStatus | None:
    """The status of the account's workflow, or None when it does not exist."""
    try:
        description = await client.get_workflow_handle(workflow_id(account_id)).describe()
    except RPCError as error:
        assert error.status == RPCStatusCode.NOT_FOUND, error
        return None
    return description.status


async def wait_for_status(
    client: Client, account_id: str, status: WorkflowExecutionStatus, timeout: float = 20
) -> None:
    current: list[WorkflowExecutionStatus | None] = []

    async def reached() -> bool:
        current[:] = [await workflow_status(client, account_id)]
        return current[0] == status

    await eventually(reached, lambda: f"workflow {status}, is {current}", timeout, 0.05)


async def two_factor(api: Api, user: User) -> dict[str, Any]:
    r = await api.call("GET", "/v1/account/two-factor", user)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def devices(api: Api, user: User) -> list[dict[str, Any]]:
    r = await api.call("GET", "/v1/account/devices", user)
    assert r.status_code == 200, r.text
    return list(r.json())


def assert_error(r: httpx.Response, status: int, error: str, **details: Any) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["error"] == error, body
    assert body.get("message"), body
    for key, value in details.items():
        assert body.get(key) == value, (key, body)
    return body


async def at_code_step(api: Api, user: User) -> str:
    """Register, enable, log in: the login_id that waits for the activation code."""
    await api.enabled(user)
    await api.code_mail(user)
    login = await api.login_ok(user)
    assert login["outcome"] == "activation_code_required", login
    return str(login["login_id"])


async def at_activation_step(api: Api, user: User) -> str:
    """... and the code validated: the login_id that waits for the activation."""
    login_id = await at_code_step(api, user)
    r = await api.submit_code(login_id, user.codes[-1])
    assert r.status_code == 200 and r.json() == {"outcome": "activation_required"}, r.text
    return login_id


async def enroll_browser(api: Api, user: User, name: str | None = None) -> tuple[str, str]:
    """R9 from an untrusted browser: enroll-browser, the mailed code, the PIN."""
    other = await api.enrolled(User(email=user.email, password=user.password, pin=user.pin), name)
    assert other.device_id and other.device_token
    return other.device_id, other.device_token


MESSAGE_ID = re.compile(r"<[^<>@\s]+@[^<>@\s]+>")
VALID_ACTIVATION = {"pin": "27182818", "pin_confirmation": "27182818", "seal": "a heron at dawn"}


# -- R1: enabling creates the second-factor identity and mails an activation code


async def test_r1_enable_mails_one_code_and_starts_the_workflow(
    start_api: ApiFactory, client: Client, database: Database
) -> None:
    # A minute before the auto-logout: the session reads the 2FA status after the enable
    api = await start_api(auto_logout_seconds=60)
    user = await api.registered_and_logged_in(new_user("r1"))
    assert await workflow_status(client, user.account_id) is None
    assert api.activation_mails_to(user.email) == []

    before = now()
    enabled = await api.enable(user)
    assert enabled["state"] == "pending_code", enabled
    code_expires_at = parse_time(enabled["code_expires_at"])
    assert parse_time(enabled["auto_logout_at"]) > before

    # The mail went out before the API answered: exactly one, to the account's address.
    mails = api.activation_mails_to(user.email)
    assert len(mails) == 1, mails
    match = CODE_LINE.search(mails[0])
    assert match, mails[0]
    assert f"valid until {code_expires_at:%Y-%m-%d %H:%M:%S} UTC" in mails[0], mails[0]
    await settled(client, user.account_id)  # a second mail, if any, is in the sink by now
    assert len(api.activation_mails_to(user.email)) == 1, "a second mail was sent"

    # The second-factor identity: the account's workflow runs, the store says pending_code.
    assert await workflow_status(client, user.account_id) == WorkflowExecutionStatus.RUNNING
    assert (await account_row(database, user.account_id)).two_factor_state == "pending_code"

    status = await two_factor(api, user)
    assert status["state"] == "pending_code", status
    assert parse_time(status["code_expires_at"]) == code_expires_at
    assert parse_time(status["auto_logout_at"]) == parse_time(enabled["auto_logout_at"])
    assert status["devices"] == []

    # The mailed code is the one the account expects.
    login = await api.login_ok(user)
    assert login["outcome"] == "activation_code_required", login
    r = await api.submit_code(login["login_id"], match.group(1))
    assert r.status_code == 200 and r.json() == {"outcome": "activation_required"}, r.text


async def test_r1_enable_twice_makes_one_identity_and_sends_no_second_mail(
    start_api: ApiFactory, client: Client
) -> None:
    # A minute before the auto-logout: the session enables again after the mail came
    api = await start_api(auto_logout_seconds=60)
    user = await api.registered_and_logged_in(new_user("r1twice"))
    # A double click: two enables at once make one identity and one mail, and both clicks
    # get that enable's answer (a repeated request tells the step's real outcome, S9).
    first, second = await asyncio.gather(
        *(api.call("PUT", "/v1/account/two-factor", user, json={"enabled": True}) for _ in "12")
    )
    assert [first.status_code, second.status_code] == [202, 202], (first.text, second.text)
    assert first.json() == second.json()
    await api.code_mail(user)
    r = await api.call("PUT", "/v1/account/two-factor", user, json={"enabled": True})
    assert r.status_code == 202 and r.json() == first.json(), r.text
    await settled(client, user.account_id)  # a second mail, if any, is in the sink by now
    assert len(api.activation_mails_to(user.email)) == 1
    # Once 2FA is on, enabling it again is refused.
    active = await api.activated(new_user("r1active"))
    r = await api.call("PUT", "/v1/account/two-factor", active, json={"enabled": True})
    assert_error(r, 409, "already_enabled")


# -- R2: only a-z A-Z 0-9 @ \ . _ - ; anything else refused, naming the character


@pytest.mark.parametrize(
    ("local_part", "character"),
    [
        ("a+b", "+"),
        ("jos\u00e9", "\u00e9"),
        ("o'brien", "'"),
        ('say"hi', '"'),
        ("zero\u200bwidth", "\u200b"),
        ("bang!", "!"),
    ],
    ids=["plus", "accent", "quote", "double-quote", "zero-width-space", "bang"],
)
async def test_r2_enable_refuses_plus_and_names_it(
    api: Api, client: Client, database: Database, local_part: str, character: str
) -> None:
    user = new_user()
    user.email = f"{local_part}.{user.email}"
    r = await api.call(
        "POST", "/v1/accounts", json={"email": user.email, "password": user.password}
    )
    assert r.status_code == 201, f"registration must accept {user.email!r}: {r.text}"
    user.account_id = r.json()["id"]
    await api.login_ok(user)
    assert user.session_token

    r = await api.call("PUT", "/v1/account/two-factor", user, json={"enabled": True})
    body = assert_error(r, 422, "unsupported_email", field="email", character=character)
    assert character in body["message"] or repr(character) in body["message"], body

    # Nothing changed: still disabled, no workflow, no mail, still logged in normally.
    assert (await two_factor(api, user))["state"] == "disabled"
    assert (await account_row(database, user.account_id)).two_factor_state == "disabled"
    assert await workflow_status(client, user.account_id) is None  # so no mail can follow
    assert api.messages_to(user.email) == []
    login = await api.login_ok(user)
    assert login["outcome"] == "authenticated", login


async def test_r2_enable_accepts_every_allowed_character(api: Api, client: Client) -> None:
    user = new_user()
    user.email = f"a-z_0.9\\x.{user.email}"
    enabled = await api.enabled(user)
    assert enabled["state"] == "pending_code"
    assert await workflow_status(client, user.account_id) == WorkflowExecutionStatus.RUNNING
    # The mail reached that address (the backslash is quoted in the header, as it must be).
    mails = api.messages_to(user.email)
    assert len(mails) == 1, [str(m["To"]) for m in read_mails(api.mail_dir)][-3:]
    assert CODE_LINE.search(plain_text(mails[0]))


@pytest.mark.parametrize(
    ("email", "character"),
    [
        ("new+tag@example.com", "+"),
        ("ren\u00e9e@example.com", "\u00e9"),
        ("d'arcy@example.com", "'"),
    ],
    ids=["plus", "accent", "quote"],
)
async def test_r2_activation_email_with_bad_character_is_refused(
    api: Api, database: Database, email: str, character: str
) -> None:
    user = new_user("r2act")
    login_id = await at_activation_step(api, user)
    r = await api.activate(login_id, user, email=email)
    body = assert_error(r, 422, "unsupported_email", field="email", character=character)
    assert character in body["message"], body

    # Nothing changed: still pending activation, no device, no PIN, same email.
    account = await account_row(database, user.account_id)
    assert account.two_factor_state == "pending_activation"
    assert account.email == user.email
    assert account.pin_hash is None and account.seal_ciphertext is None
    assert await device_rows(database, user.account_id) == []
    assert await draft_rows(database, user.account_id) == []
    login = await api.login_ok(user)
    assert login["outcome"] == "activation_required", login

    # A valid new email is then accepted, and becomes the account's email.
    new_email = f"renamed.{user.email}"
    r = await api.activate(login_id, user, email=new_email)
    assert r.status_code == 200, r.text
    user.device_token = r.json()["device_token"]
    r = await api.pin(login_id, user.pin)
    assert r.status_code == 200, r.text
    user.session_token = r.json()["session_token"]
    r = await api.call("GET", "/v1/session", user)
    assert r.status_code == 200, r.text
    assert r.json()["email"] == new_email
    assert (await account_row(database, user.account_id)).email == new_email

    # Logins and later codes now use the new address.
    old_email = user.email
    r = await api.login(user)
    assert_error(r, 401, "invalid_credentials")
    user.email = new_email
    assert (await api.login_ok(user))["outcome"] == "pin_required"
    await enroll_browser(api, user)
    assert len(api.activation_mails_to(new_email)) == 1
    assert len(api.activation_mails_to(old_email)) == 1


async def test_r2_activation_refuses_space_and_names_it(api: Api, database: Database) -> None:
    """R2 names space explicitly; an email given at activation falls under the same rule, as
    typed: a space around the address is refused too, not trimmed away."""
    user = new_user("r2space")
    login_id = await at_activation_step(api, user)
    for typed in ("john smith@example.com", " john.smith@example.com"):
        r = await api.activate(login_id, user, email=typed)
        assert r.status_code == 422, r.text
        assert r.json().get("field") == "email", r.json()
        account = await account_row(database, user.account_id)
        assert account.two_factor_state == "pending_activation"
        assert account.email == user.email
        assert await device_rows(database, user.account_id) == []
        # The error must name the character, as for every other refused character.
        assert_error(r, 422, "unsupported_email", field="email", character=" ")


# -- R3: logged out automatically after auto_logout_seconds; "Auto-logout" at once


def test_r3_default_auto_logout_is_ten_seconds() -> None:
    assert Settings.model_fields["auto_logout_seconds"].default == 10


async def test_r3_sessions_end_exactly_at_auto_logout(
    start_api: ApiFactory, database: Database, client: Client
) -> None:
    # The product's own 10 s, not the session's 1.5 s: the enable's answer and a request on
    # the session must come before the end, or nothing shows the session working until then.
    api = await start_api(auto_logout_seconds=AUTO_LOGOUT)
    user = await api.registered_and_logged_in(new_user("r3"))
    other = User(email=user.email, password=user.password, account_id=user.account_id)
    await api.login_ok(other)  # a second session of the same user, e.g. another browser
    assert other.session_token and other.session_token != user.session_token

    before = now()
    enabled = await api.enable(user)
    after = now()
    auto_logout_at = parse_time(enabled["auto_logout_at"])
    # The enable's own clock, between the request and its answer, plus the auto-logout time.
    enabled_at = auto_logout_at - timedelta(seconds=AUTO_LOGOUT)
    assert before - timedelta(seconds=0.1) <= enabled_at <= after, (before, auto_logout_at, after)

    seen_ok = 0
    ended_at: datetime | None = None

    async def session_ended() -> bool:
        nonlocal seen_ok, ended_at
        sent = now()
        r = await api.call("GET", "/v1/session", user)
        received = now()
        if r.status_code == 200:
            assert sent < auto_logout_at, f"session still open at {sent} >= {auto_logout_at}"
            seen_ok += 1
            return False
        assert_error(r, 401, "session_ended")
        assert received >= auto_logout_at, f"session ended early, at {received}"
        ended_at = received
        return True

    await eventually(session_ended, "the session's end", 10, 0.02, due=auto_logout_at)
    assert ended_at is not None
    assert seen_ok >= 1, "the session never worked before auto_logout_at"
    assert ended_at - auto_logout_at < timedelta(seconds=1), (ended_at, auto_logout_at)

    # All sessions ended, and stay ended once the workflow's timer has run.
    async def sessions_ended() -> bool:
        async with database.read() as db:
            query = select(Session).where(Session.account_id == user.account_id)
            sessions = list((await db.scalars(query)).all())
        assert len(sessions) == 2, sessions
        return all(s.ended_at is not None for s in sessions)

    await eventually(sessions_ended, "the auto-logout timer to end the sessions", 10, 0.05)
    for who in (user, other):
        for path in ("/v1/session", "/v1/account/two-factor", "/v1/account/devices"):
            assert_error(await api.call("GET", path, who), 401, "session_ended")
    assert await workflow_status(client, user.account_id) == WorkflowExecutionStatus.RUNNING
    # The next login asks for the code: no way back into the old sessions.
    assert (await api.login_ok(user))["outcome"] == "activation_code_required"


async def test_r3_auto_logout_button_ends_the_session_at_once(start_api: ApiFactory) -> None:
    # A minute before the auto-logout: the steps must all come before the timer would end it
    api = await start_api(auto_logout_seconds=60)
    user = await api.registered_and_logged_in(new_user("r3button"))
    enabled = await api.enable(user)
    auto_logout_at = parse_time(enabled["auto_logout_at"])
    r = await api.call("GET", "/v1/session", user)
    assert r.status_code == 200, r.text
    r = await api.call("DELETE", "/v1/session", user)
    assert r.status_code == 204, r.text
    assert now() < auto_logout_at, "too slow to prove the logout came before the timer"
    assert_error(await api.call("GET", "/v1/session", user), 401, "session_ended")
    assert_error(await api.call("DELETE", "/v1/session", user), 401, "session_ended")
    assert now() < auto_logout_at, "too slow to prove the logout came before the timer"


# -- R4: the code is valid code_ttl; then a new login mails a new one, older codes die


async def test_r4_code_valid_fifteen_minutes_by_default(api: Api) -> None:
    assert Settings.model_fields["code_ttl_seconds"].default == 900
    user = await api.registered_and_logged_in(new_user("r4ttl"))
    before = now()
    enabled = await api.enable(user)
    after = now()
    code_expires_at = parse_time(enabled["code_expires_at"])
    assert before + timedelta(seconds=899) <= code_expires_at <= after + timedelta(seconds=901)


async def login_mailing_only_past(
    api: Api, user: User, expires_at: datetime, mails_before: int
) -> dict[str, Any]:
    """R4 at one login: the code in force is reused while it lasts (no mail), and a login past
    its expiry mails a new one. The clock at the request says which half applies: with a 2 s
    TTL, a loaded machine may land either side, and both halves are the rule."""
    before = now()
    body = await api.login_ok(user)
    after = now()
    assert body["outcome"] == "activation_code_required", body
    if after < expires_at:
        assert body["code_sent"] is False, body
    if before >= expires_at:
        assert body["code_sent"] is True, body
    if body["code_sent"]:
        assert parse_time(body["code_expires_at"]) > expires_at, body
        await api.code_mail(user, count=mails_before + 1)
    else:
        assert parse_time(body["code_expires_at"]) == expires_at, body
    assert len(api.activation_mails_to(user.email)) == mails_before + body["code_sent"]
    return body


async def test_r4_expired_code_is_refused_and_a_new_login_mails_a_new_one(
    start_api: ApiFactory, client: Client
) -> None:
    api = await start_api(code_ttl_seconds=2)
    user = new_user("r4")
    enabled = await api.enabled(user)
    first_code = await api.code_mail(user)
    early = await login_mailing_only_past(api, user, parse_time(enabled["code_expires_at"]), 1)
    mails = len(api.activation_mails_to(user.email))
    code, expires_at = await api.code_mail(user, count=mails), parse_time(early["code_expires_at"])

    # the code's expiry is on the clock: from that instant on, the code is refused
    await sleep_until(expires_at)
    r = await api.submit_code(early["login_id"], code)
    assert_error(r, 410, "code_expired")
    await settled(client, user.account_id)  # a mail the expiry sent, if any, is in the sink now
    assert len(api.activation_mails_to(user.email)) == mails, "a mail was sent without a login"

    login = await login_mailing_only_past(api, user, expires_at, mails)  # past: a new code
    assert login["code_sent"] is True, login
    again = await login_mailing_only_past(
        api, user, parse_time(login["code_expires_at"]), mails + 1
    )
    new_code = await api.code_mail(user, count=len(api.activation_mails_to(user.email)))
    assert new_code not in (first_code, code)

    # The old codes no longer work, on any login; the code in force does while it lasts.
    expires_at = parse_time(again["code_expires_at"])
    before = now()
    verdicts = [
        await api.submit_code(login_id, old)
        for login_id in (login["login_id"], early["login_id"])
        for old in {first_code, code}
    ]
    r = await api.submit_code(login["login_id"], new_code)
    if now() < expires_at:
        assert all(v.status_code == 400 for v in verdicts), [v.text for v in verdicts]
        assert r.status_code == 200 and r.json() == {"outcome": "activation_required"}, r.text
    elif before >= expires_at:
        assert_error(r, 410, "code_expired")
    assert all(v.status_code in (400, 410) for v in verdicts), [v.text for v in verdicts]


async def test_r4_each_new_code_comes_in_a_distinct_well_formed_mail(
    start_api: ApiFactory,
) -> None:
    """A new code is a new email: its own Message-ID, or mail stores drop it as a duplicate."""
    api = await start_api(code_ttl_seconds=1)
    user = new_user("r4mid")
    enabled = await api.enabled(user)
    await api.code_mail(user)
    # past the code's expiry on the clock, a login mails a new one
    await sleep_until(parse_time(enabled["code_expires_at"]))
    login = await api.login_ok(user)
    assert login["code_sent"] is True, login
    await api.code_mail(user, count=2)
    ids = [str(m["Message-ID"]) for m in api.messages_to(user.email)]
    assert len(ids) == 2, ids
    for message_id in ids:
        assert MESSAGE_ID.fullmatch(message_id), f"malformed Message-ID {message_id!r}"
    assert ids[0] != ids[1], f"both code mails carry the Message-ID {ids[0]!r}"


# -- R5: after enabling, the activation code comes before anything else


async def test_r5_code_comes_before_anything_else(api: Api, database: Database) -> None:
    user = new_user("r5")
    await api.enabled(user)
    code = await api.code_mail(user)
    login = await api.login_ok(user)
    assert login["outcome"] == "activation_code_required", login
    assert "session_token" not in login and "seal" not in login, login
    assert login["login_id"] and login["code_expires_at"], login
    login_id = login["login_id"]

    activate = await api.call(
        "POST", "/v1/login/activate", json={"login_id": login_id, **VALID_ACTIVATION}
    )
    assert_error(activate, 409, "wrong_step", expected="code")
    assert_error(await api.pin(login_id, user.pin), 409, "wrong_step", expected="code")
    enroll = await api.enroll(login_id)
    assert_error(enroll, 409, "wrong_step", expected="code")
    account = await account_row(database, user.account_id)
    assert account.two_factor_state == "pending_code"
    assert account.pin_hash is None and account.seal_ciphertext is None
    assert await device_rows(database, user.account_id) == []

    r = await api.submit_code(login_id, code)
    assert r.status_code == 200 and r.json() == {"outcome": "activation_required"}, r.text
    # The PIN still waits for the activation; the code is not asked twice.
    assert_error(await api.pin(login_id, user.pin), 409, "wrong_step", expected="activation")
    enroll = await api.enroll(login_id)
    assert_error(enroll, 409, "wrong_step", expected="activation")
    # The code is not asked twice: sent again, it tells the step's outcome and changes nothing.
    r = await api.submit_code(login_id, code)
    assert r.status_code == 200 and r.json() == {"outcome": "activation_required"}, r.text
    assert (await api.login_ok(user))["outcome"] == "activation_required"

    r = await api.activate(login_id, user)
    assert r.status_code == 200, r.text


# -- R6: activation's inputs


async def test_r6_activation_refuses_bad_inputs_naming_the_field(
    api: Api, database: Database
) -> None:
    user = new_user("r6")
    user.pin = "1112"  # 4 digits, 2 different: the smallest valid PIN
    login_id = await at_activation_step(api, user)
    good = {"pin": user.pin, "pin_confirmation": user.pin, "seal": user.seal}
    refusals: list[tuple[str, dict[str, Any], str]] = [
        ("3 digits", {"pin": "123", "pin_confirmation": "123"}, "pin"),
        ("9 digits", {"pin": "123456789", "pin_confirmation": "123456789"}, "pin"),
        ("letters", {"pin": "12ab", "pin_confirmation": "12ab"}, "pin"),
        ("one distinct digit", {"pin": "1111", "pin_confirmation": "1111"}, "pin"),
        ("8 same digits", {"pin": "77777777", "pin_confirmation": "77777777"}, "pin"),
        ("non-ASCII digits", {"pin": "\u0661\u0662\u0663\u0664"}, "pin"),
        ("mismatch", {"pin_confirmation": "1121"}, "pin_confirmation"),
        ("empty confirmation", {"pin_confirmation": ""}, "pin_confirmation"),
        ("empty seal", {"seal": ""}, "seal"),
        ("blank seal", {"seal": "   \t "}, "seal"),
        ("missing seal", {"seal": None}, "seal"),
    ]
    for name, change, field in refusals:
        body = {**good, **change}
        body = {k: v for k, v in body.items() if v is not None}
        r = await api.call("POST", "/v1/login/activate", json={"login_id": login_id, **body})
        assert r.status_code == 422, (name, r.text)
        assert r.json().get("field") == field, (name, r.json())
        account = await account_row(database, user.account_id)
        assert account.two_factor_state == "pending_activation", name
        assert account.pin_hash is None and account.seal_ciphertext is None, name
        assert await device_rows(database, user.account_id) == [], name
        assert await draft_rows(database, user.account_id) == [], name

    # No device name: optional. The same login then activates.
    r = await api.call("POST", "/v1/login/activate", json={"login_id": login_id, **good})
    assert r.status_code == 200, r.text
    assert r.json()["outcome"] == "pin_required"
    r = await api.pin(login_id, user.pin)
    assert r.status_code == 200, r.text
    user.session_token = r.json()["session_token"]
    listed = await devices(api, user)
    assert len(listed) == 1 and listed[0].get("name") is None, listed
    assert (await account_row(database, user.account_id)).two_factor_state == "active"


async def test_r6_eight_digit_pin_with_two_different_digits_is_accepted(api: Api) -> None:
    user = new_user("r6max")
    user.pin = "99999990"
    login_id = await at_activation_step(api, user)
    r = await api.activate(login_id, user, device_name="  Home PC  ")
    assert r.status_code == 200, r.text
    user.device_token = r.json()["device_token"]
    await api.pin_login(user)
    assert [d["name"] for d in await devices(api, user)] == ["Home PC"]


# -- R7: activation turns 2FA on and trusts this browser; then the PIN connects


async def test_r7_activation_enrolls_this_browser_then_pin_connects(
    api: Api, database: Database, client: Client
) -> None:
    user = new_user("r7")
    login_id = await at_activation_step(api, user)
    r = await api.activate(login_id, user, device_name="Work laptop")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["outcome"] == "pin_required", body
    assert body["seal"] == user.seal
    assert body["device_id"] and body["device_token"], body
    assert "session_token" not in body, body
    assert (await account_row(database, user.account_id)).two_factor_state == "active"
    assert await workflow_status(client, user.account_id) == WorkflowExecutionStatus.RUNNING

    # The PIN, and only the PIN, connects.
    wrong = await api.pin(login_id, "13579135")
    assert_error(wrong, 400, "invalid_pin")
    assert "session_token" not in wrong.json()
    r = await api.pin(login_id, user.pin)
    assert r.status_code == 200, r.text
    assert r.json()["outcome"] == "authenticated"
    assert r.json()["session_token"] and r.json()["expires_at"]
    user.session_token = r.json()["session_token"]
    session = await api.call("GET", "/v1/session", user)
    assert session.status_code == 200 and session.json()["account_id"] == user.account_id

    status = await two_factor(api, user)
    assert status["state"] == "active", status
    listed = await devices(api, user)
    assert [(d["id"], d["name"]) for d in listed] == [(body["device_id"], "Work laptop")]
    assert [d["id"] for d in status["devices"]] == [body["device_id"]]

    # The browser stays trusted: its token leads to the PIN again.
    user.device_token = body["device_token"]
    await api.pin_login(user)
    assert (await api.call("GET", "/v1/session", user)).status_code == 200


# -- R8: every login shows the seal before the PIN


async def test_r8_every_login_shows_the_seal_before_the_pin(api: Api) -> None:
    user = await api.activated(new_user("r8"))
    other = await api.activated(new_user("r8other"))
    assert user.seal != other.seal
    for attempt in range(3):
        for who in (user, other):
            login = await api.login_ok(who)
            assert login["outcome"] == "pin_required", login
            assert login["seal"] == who.seal, (attempt, login)
            assert "session_token" not in login, login
            if attempt == 1:  # a wrong PIN does not hide the seal next time
                assert_error(await api.pin(login["login_id"], "86420864"), 400, "invalid_pin")
    r = await api.pin(login["login_id"], other.pin)
    assert r.status_code == 200 and r.json()["outcome"] == "authenticated", r.text


# -- R9: only trusted browsers connect; another can be enrolled


async def test_r9_untrusted_browser_is_enrolled_with_a_code_then_the_pin(
    api: Api, database: Database
) -> None:
    user = await api.activated(new_user("r9"))
    stranger = await api.activated(new_user("r9stranger"))
    first_device, first_token = user.device_id, user.device_token
    assert first_device and first_token

    for token in ("", "not-a-device-token", stranger.device_token):
        assert token is not None
        login = await api.login_ok(user, device_token=token)
        assert login["outcome"] == "browser_not_trusted", (token, login)
        assert login["login_id"], login
        assert "session_token" not in login and "seal" not in login, login
        # No PIN shortcut for an untrusted browser.
        assert_error(await api.pin(login["login_id"], user.pin), 409, "wrong_step")

    login = await api.login_ok(user, device_token="")
    r = await api.enroll(login["login_id"], device_name="Phone")
    assert r.status_code == 202, r.text
    assert r.json()["outcome"] == "activation_code_required", r.json()
    assert parse_time(r.json()["code_expires_at"]) > now()
    code = await api.code_mail(user, count=2)
    assert_error(await api.pin(login["login_id"], user.pin), 409, "wrong_step")

    r = await api.submit_code(login["login_id"], code)
    assert r.status_code == 200, r.text
    assert r.json() == {"outcome": "pin_required", "seal": user.seal}
    r = await api.pin(login["login_id"], user.pin)
    assert r.status_code == 200, r.text
    enrolled = r.json()
    assert enrolled["outcome"] == "authenticated" and enrolled["session_token"], enrolled
    assert enrolled["device_id"] and enrolled["device_token"], enrolled
    assert enrolled["device_id"] != first_device
    assert enrolled["device_token"] != first_token

    user.session_token = enrolled["session_token"]
    listed = await devices(api, user)
    assert {d["id"] for d in listed} == {first_device, enrolled["device_id"]}, listed
    assert {d.get("name") for d in listed} == {None, "Phone"}, listed
    for token in (first_token, enrolled["device_token"]):
        user.device_token = token
        await api.pin_login(user)
    assert (await account_row(database, user.account_id)).two_factor_state == "active"


async def test_r9_enroll_browser_needs_the_enroll_step(api: Api) -> None:
    user = await api.activated(new_user("r9step"))
    trusted = await api.login_ok(user)
    assert trusted["outcome"] == "pin_required"
    r = await api.enroll(trusted["login_id"])
    assert_error(r, 409, "wrong_step")

    pending = new_user("r9pending")
    login_id = await at_code_step(api, pending)
    r = await api.enroll(login_id)
    assert r.status_code == 409, r.text

    # An enrollment already at its code step is not restarted on the same login: sent again,
    # the request gets the first one's answer and no second code (S9).
    login = await api.login_ok(user, device_token="")
    first = await api.enroll(login["login_id"])
    assert first.status_code == 202, first.text
    again = await api.enroll(login["login_id"])
    assert again.status_code == 202 and again.json() == first.json(), again.text
    assert len(api.activation_mails_to(user.email)) == 2


# -- R10: disabling needs a confirmation and revokes every trusted browser


async def test_r10_disable_needs_confirmation_and_revokes_every_browser(
    api: Api, client: Client, database: Database
) -> None:
    user = await api.activated(new_user("r10"))
    await enroll_browser(api, user, "Second")
    await api.pin_login(user)
    waiting = await api.login_ok(user)  # a PIN login in progress
    assert waiting["outcome"] == "pin_required"

    for body in ({"enabled": False}, {"enabled": False, "confirm": False}):
        r = await api.call("PUT", "/v1/account/two-factor", user, json=body)
        assert_error(r, 400, "confirmation_required")
        status = await two_factor(api, user)
        assert status["state"] == "active", status
        assert len(status["devices"]) == 2, status
    assert await workflow_status(client, user.account_id) == WorkflowExecutionStatus.RUNNING

    r = await api.call(
        "PUT", "/v1/account/two-factor", user, json={"enabled": False, "confirm": True}
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"state": "disabled", "revoked_devices": 2}
    # The session that said Yes stays open, untied from its browser: a repeat of the disable
    # (after a 503 or a lost answer) finds 2FA off (S9).
    again = await api.call(
        "PUT", "/v1/account/two-factor", user, json={"enabled": False, "confirm": True}
    )
    assert again.status_code == 200, again.text
    assert again.json() == {"state": "disabled", "revoked_devices": 0}

    # Every browser revoked at once, the login in progress with them.
    rows = await device_rows(database, user.account_id)
    assert len(rows) == 2 and all(d.revoked_at is not None for d in rows), rows
    assert_error(await api.pin(waiting["login_id"], user.pin), 404, "login_not_found")
    account = await account_row(database, user.account_id)
    assert account.two_factor_state == "disabled"
    assert account.pin_hash is None and account.seal_ciphertext is None

    login = await api.login_ok(user)
    assert login["outcome"] == "authenticated", login
    assert "seal" not in login
    assert await devices(api, user) == []
    status = await two_factor(api, user)
    assert status["state"] == "disabled" and status["devices"] == [], status
    user.device_token = None
    assert (await api.login_ok(user))["outcome"] == "authenticated"
    await wait_for_status(client, user.account_id, WorkflowExecutionStatus.COMPLETED)


async def test_r10_disable_while_pending_kills_the_code(
    start_api: ApiFactory, client: Client, database: Database
) -> None:
    # A minute before the auto-logout: the user's session must outlast the steps to disable
    api = await start_api(auto_logout_seconds=60)
    user = await api.registered_and_logged_in(new_user("r10pending"))
    await api.enable(user)
    code = await api.code_mail(user)
    login = await api.login_ok(user)
    assert login["outcome"] == "activation_code_required"
    r = await api.call(
        "PUT", "/v1/account/two-factor", user, json={"enabled": False, "confirm": True}
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"state": "disabled", "revoked_devices": 0}
    # The login in progress ended with 2FA, and the code with it.
    assert_error(await api.submit_code(login["login_id"], code), 404, "login_not_found")
    assert (await account_row(database, user.account_id)).two_factor_state == "disabled"
    assert (await api.login_ok(user))["outcome"] == "authenticated"
    await wait_for_status(client, user.account_id, WorkflowExecutionStatus.COMPLETED)


async def test_r10_after_disabling_2fa_can_be_enabled_again(
    api: Api, client: Client, database: Database
) -> None:
    """Disabling turns 2FA off for the account: it is then like any disabled account."""
    user = await api.activated(new_user("r10again"))
    r = await api.call(
        "PUT", "/v1/account/two-factor", user, json={"enabled": False, "confirm": True}
    )
    assert r.status_code == 200, r.text
    user.device_token = None
    assert (await api.login_ok(user))["outcome"] == "authenticated"
    r = await api.call("PUT", "/v1/account/two-factor", user, json={"enabled": True})
    assert r.status_code == 202, r.text
    assert r.json()["state"] == "pending_code"
    await api.code_mail(user, count=2)
    assert await workflow_status(client, user.account_id) == WorkflowExecutionStatus.RUNNING
    account = await account_row(database, user.account_id)
    login = await api.login_ok(user)
    assert login["outcome"] == "activation_code_required", (
        f"2FA re-enabled, yet the login is {login['outcome']!r}; the store says "
        f"{account.two_factor_state!r} (projection_version {account.projection_version})"
    )
    assert account.two_factor_state == "pending_code"


# -- R11: one trusted browser can be deleted; the others keep working


async def test_r11_delete_one_browser_others_keep_working(api: Api, database: Database) -> None:
    user = await api.activated(new_user("r11"))
    first_device, first_token = user.device_id, user.device_token
    assert first_device and first_token
    second_device, second_token = await enroll_browser(api, user, "Second")
    first_session = user.session_token  # opened through the first browser by activated()
    second = User(email=user.email, password=user.password, pin=user.pin, device_token=second_token)
    await api.pin_login(second)
    stranger = await api.activated(new_user("r11stranger"))
    assert stranger.device_id

    in_progress = await api.login_ok(user, device_token=first_token)
    assert in_progress["outcome"] == "pin_required"

    r = await api.call("DELETE", f"/v1/account/devices/{first_device}", second)
    assert r.status_code == 204, r.text

    assert [d["id"] for d in await devices(api, second)] == [second_device]
    login = await api.login_ok(user, device_token=first_token)
    assert login["outcome"] == "browser_not_trusted", login
    assert_error(await api.pin(in_progress["login_id"], user.pin), 404, "login_not_found")
    user.session_token = first_session
    assert_error(await api.call("GET", "/v1/session", user), 401, "session_ended")

    # The other browser keeps working: its session and its logins.
    assert (await api.call("GET", "/v1/session", second)).status_code == 200
    login = await api.login_ok(second)
    assert login["outcome"] == "pin_required" and login["seal"] == user.seal, login
    await api.pin_login(second)
    assert (await account_row(database, user.account_id)).two_factor_state == "active"

    # The deletion repeated (S9: its answer lost) answers as it did; unknown and another
    # account's devices: 404, and nothing changes.
    r = await api.call("DELETE", f"/v1/account/devices/{first_device}", second)
    assert r.status_code == 204, r.text
    for device_id in ("no-such-device", stranger.device_id):
        r = await api.call("DELETE", f"/v1/account/devices/{device_id}", second)
        assert_error(r, 404, "device_not_found")
    assert (await api.login_ok(stranger))["outcome"] == "pin_required"
    assert [d["id"] for d in await devices(api, stranger)] == [stranger.device_id]
    assert [d["id"] for d in await devices(api, second)] == [second_device]
