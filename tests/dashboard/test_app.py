"""Issue 4: the Streamlit dashboard, on the session's real database, Temporal server and worker.

Every page is driven with Streamlit's ``AppTest`` as an admin and as an auditor: admins act
through confirmation dialogs and the effect is checked in the store and through the HTTP API;
auditors see the same data, get no buttons, and the service layer refuses them anyway. One test
drives Debian's chromium with playwright against ``streamlit run`` on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import random
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from playwright.async_api import Page, async_playwright
from playwright.async_api import expect as page_expect
from sqlalchemy import select
from streamlit.testing.v1 import AppTest
from temporalio.client import Client

from tests.support.browser import launch
from tests.support.journey import Api, User, at_rest, new_user
from tests.support.processes import environment, free_port, started, wait_for_http
from twofa.admin import AdminService
from twofa.config import Settings
from twofa.dashboard import history_story, runtime, session_cookie, ui
from twofa.devstack import DASHBOARD_LIMITS
from twofa.errors import ServiceError
from twofa.seed import seed
from twofa.service import utcnow
from twofa.store.db import Database
from twofa.store.models import Account, AuditRecord, OperatorSession
from twofa.views import AuditRow, OperatorView, TimelineRow
from twofa.wiring import Services

APP = Path(ui.__file__).parent / "app.py"
#: What `twofa dashboard` serves: app.py plus the session cookie's route.
SERVER = Path(ui.__file__).parent / "server.py"
PASSWORD = "correct horse battery staple"
Role = Literal["admin", "auditor"]
ROLES: tuple[Role, ...] = ("admin", "auditor")
ACTION_KEYS = ("unlock", "disable")


@dataclass
class Operator:
    view: OperatorView
    token: str


@pytest.fixture(scope="module")
def dashboard_env(base_settings: Settings) -> Iterator[dict[str, str]]:
    """The TWOFA_* variables of this test session, set while this module runs.

    The dashboard reads ``Settings()`` itself, like under ``streamlit run``; the runtime is
    reset before and after so it is built from exactly these settings.
    """
    env = {k: v for k, v in environment(base_settings).items() if k.startswith("TWOFA_")}
    with pytest.MonkeyPatch.context() as patch:
        for name in [k for k in os.environ if k.startswith("TWOFA_")]:
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        runtime.reset()
        yield env
        runtime.reset()


@pytest.fixture(scope="module")
def admin_service(base_settings: Settings, database: Database, client: Client) -> AdminService:
    """The test's own service layer, on the test loop, to set up and to check effects."""
    return Services.on(base_settings, database, client).admin


async def _operator(service: AdminService, role: Role) -> Operator:
    email = f"{role}.{uuid.uuid4().hex[:10]}@ops.example.com"
    view = await service.create_operator(email, role, PASSWORD)
    token, signed_in = await service.sign_in(email, PASSWORD)
    assert signed_in == view
    return Operator(view, token)


@pytest.fixture(scope="module")
async def operators(admin_service: AdminService) -> dict[Role, Operator]:
    return {role: await _operator(admin_service, role) for role in ROLES}


# -- driving AppTest without blocking the test loop (the worker runs on it)


async def run(at: AppTest) -> AppTest:
    await asyncio.to_thread(at.run, timeout=90)
    assert not at.exception, [e.value for e in at.exception]
    return at


async def open_page(
    operator: Operator | None, screen: str | None = None, account_id: str | None = None
) -> AppTest:
    """A fresh browser session: signed in with ``operator``'s token, then on ``screen``."""
    at = AppTest.from_file(str(APP), default_timeout=90)
    if operator is not None:
        at.session_state[ui.TOKEN_KEY] = operator.token
    if account_id is not None:
        at.session_state[ui.ACCOUNT_KEY] = account_id
    await run(at)
    if screen is not None:
        at.switch_page(f"screens/{screen}")
        await run(at)
    return at


def texts(at: AppTest) -> str:
    """Everything the page says, in one string to search."""
    parts: list[str] = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "info", "success"):
        parts += [str(e.value) for e in getattr(at, kind)]
    parts += [str(e.value) for e in at.error] + [str(e.value) for e in at.warning]
    parts += [f"{m.label}={m.value}" for m in at.metric]
    return "\n".join(parts)


def keys(at: AppTest) -> set[str]:
    return {b.key for b in at.button if b.key}


def table_values(at: AppTest) -> list[list[Any]]:
    return [frame.value.values.tolist() for frame in at.dataframe]


async def locked_user(api: Api) -> User:
    """An activated user who typed five wrong PINs: 2FA locked (S2)."""
    user = await api.activated(new_user("locked"))
    for attempt in range(5):
        login = await api.login_ok(user)
        assert login["outcome"] == "pin_required", login
        r = await api.pin(login["login_id"], "11112222")
        assert r.status_code == (423 if attempt == 4 else 400), r.text
    return user


# -- signed out


async def test_signed_out_visitor_sees_only_the_sign_in_form(dashboard_env: dict[str, str]) -> None:
    at = await open_page(None)
    assert [t.label for t in at.text_input] == ["Email", "Password"]
    assert [b.label for b in at.button] == ["Sign in"]
    assert not at.sidebar.children
    assert not at.metric and not at.dataframe
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page("screens/accounts.py")  # no other page is even registered


async def test_a_dead_token_is_dropped_and_the_form_says_why(
    dashboard_env: dict[str, str], operators: dict[Role, Operator]
) -> None:
    at = await open_page(Operator(operators["admin"].view, "not-a-live-token"))
    assert [t.label for t in at.text_input] == ["Email", "Password"]
    assert "session has ended" in texts(at)
    assert ui.TOKEN_KEY not in at.session_state
    await run(at)  # a rerun (the cookie script's, once the cookie is gone) keeps the notice
    assert "session has ended" in texts(at)
    at.text_input(key="sign_in_email").input(operators["admin"].view.email)
    at.text_input(key="sign_in_password").input("not the password")
    at.button[0].click()  # the person acts on the form: the notice has done its job
    await run(at)
    assert "session has ended" not in texts(at)
    assert [str(e.value) for e in at.error] == ["Wrong email or password."]


async def test_wrong_passwords_are_refused_then_throttled(
    dashboard_env: dict[str, str], admin_service: AdminService
) -> None:
    operator = await _operator(admin_service, "admin")
    at = await open_page(None)
    for attempt in range(5):
        at.text_input(key="sign_in_email").input(operator.view.email)
        at.text_input(key="sign_in_password").input("not the password")
        at.button[0].click()
        await run(at)
        errors = [str(e.value) for e in at.error]
        if attempt < 4:  # operators read the sentence, not the status and code
            assert errors == ["Wrong email or password."], errors
        else:  # four failures in a row block sign-ins for a minute (S2)
            assert len(errors) == 1 and re.fullmatch(
                r"Too many failed logins for this email; try again in \d+ seconds\.", errors[0]
            ), errors
        assert ui.TOKEN_KEY not in at.session_state


async def test_an_unknown_operator_email_is_not_audited_as_typed(
    admin_service: AdminService, database: Database
) -> None:
    """A sign-in with an email no operator has: its record keeps a digest, never the text (S4)."""
    typed = f"Hunter2-{uuid.uuid4().hex[:8]}"  # a password typed into the email field
    with pytest.raises(ServiceError) as refused:
        await admin_service.sign_in(typed, "not the password")
    assert refused.value.status == 401
    async with database.read() as db:
        actor, details = (
            await db.execute(
                select(AuditRecord.actor, AuditRecord.details)
                .where(AuditRecord.event == "operator_login_failed")
                .order_by(AuditRecord.seq.desc())
                .limit(1)
            )
        ).one()
    assert actor == "operator" and "email_digest" in json.loads(details), (actor, details)
    assert typed.lower() not in (actor + details).lower()


@pytest.mark.parametrize("role", ROLES)
async def test_sign_in_and_sign_out(
    role: Role, dashboard_env: dict[str, str], admin_service: AdminService, database: Database
) -> None:
    operator = await _operator(admin_service, role)
    at = await open_page(None)
    at.text_input(key="sign_in_email").input(operator.view.email)
    at.text_input(key="sign_in_password").input(PASSWORD)
    at.button[0].click()
    await run(at)
    assert [t.value for t in at.title] == ["Overview"]
    token = at.session_state[ui.TOKEN_KEY]
    assert (await admin_service.operator(token)).role == role
    sidebar = "\n".join(str(m.value) for m in at.sidebar.markdown)
    sidebar += "\n".join(str(c.value) for c in at.sidebar.caption)
    assert operator.view.email in sidebar
    assert ("read-only" in sidebar) == (role == "auditor")
    at.button(key="sign_out").click()
    await run(at)
    assert [t.label for t in at.text_input] == ["Email", "Password"]
    assert "Signed out." in texts(at)
    with pytest.raises(ServiceError) as refused:
        await admin_service.operator(token)
    assert refused.value.status == 401
    await admin_service.sign_out(token)  # a repeat: nothing more to record
    assert await operator_events(database, operator.view.actor) == [
        "operator_signed_in",  # _operator's own sign-in
        "operator_signed_in",
        "operator_signed_out",
    ]


async def operator_events(database: Database, actor: str) -> list[str]:
    """An operator's own records (sign-ins and -outs, which name no account), oldest first."""
    async with database.read() as db:
        found = await db.scalars(
            select(AuditRecord.event)
            .where(AuditRecord.actor == actor, AuditRecord.account_id.is_(None))
            .order_by(AuditRecord.seq)
        )
    return list(found)


# -- overview


@pytest.mark.parametrize("role", ROLES)
async def test_overview_counts_charts_and_locked_accounts(
    role: Role, api: Api, dashboard_env: dict[str, str], operators: dict[Role, Operator]
) -> None:
    user = await locked_user(api)
    at = await open_page(operators[role])
    assert [t.value for t in at.title] == ["Overview"]
    metrics = {m.label: m.value for m in at.metric}
    assert set(metrics) == {"Accounts", *(ui.state_label(s) for s in ui.STATE_LABELS)}
    assert int(metrics[ui.state_label("locked")].replace(",", "")) >= 1
    assert int(metrics["Accounts"].replace(",", "")) >= 1
    assert len(list(_walk(at.main, "vega_lite_chart"))) == 3
    locked = [row[0] for row in table_values(at)[0]]
    assert user.email in locked
    # both roles may open a locked account from here
    at.selectbox(key="overview_locked_choice").select_index(locked.index(user.email))
    at.button(key="overview_open_locked").click()
    await run(at)
    assert user.email in [s.value for s in at.subheader]


def _walk(node: Any, kind: str) -> Iterator[Any]:
    if getattr(node, "type", None) == kind:
        yield node
    for child in getattr(node, "children", {}).values():
        yield from _walk(child, kind)


# -- accounts


@pytest.mark.parametrize("role", ROLES)
async def test_accounts_search_filter_sort_paginate_and_open(
    role: Role,
    api: Api,
    dashboard_env: dict[str, str],
    operators: dict[Role, Operator],
    admin_service: AdminService,
) -> None:
    prefix = f"page{uuid.uuid4().hex[:8]}"
    emails = sorted(f"{prefix}.{n:03d}@example.com" for n in range(52))
    await asyncio.gather(*(admin_service.users.register(e, PASSWORD) for e in emails[:-1]))
    activated = await api.activated(new_user(prefix))  # the 52nd, with 2FA active
    emails[-1] = activated.email
    emails.sort()

    at = await open_page(operators[role], "accounts.py")
    assert [t.value for t in at.title] == ["Accounts"]
    at.text_input(key="accounts_search").input(prefix)
    await run(at)
    assert "52 accounts match" in texts(at) and "page 1 of 2" in texts(at)
    assert [row[0] for row in table_values(at)[0]] == emails[:50]

    at.button(key="accounts_next").click()
    await run(at)
    assert "page 2 of 2" in texts(at)
    assert [row[0] for row in table_values(at)[0]] == emails[50:]

    at.radio(key="accounts_order").set_value("Descending")  # a new question: back to page 1
    await run(at)
    assert "page 1 of 2" in texts(at)
    assert [row[0] for row in table_values(at)[0]] == emails[::-1][:50]

    at.selectbox(key="accounts_state").set_value("active")
    await run(at)
    assert "1 account matches" in texts(at)
    assert [row[0] for row in table_values(at)[0]] == [activated.email]

    at.selectbox(key="accounts_state").set_value("locked")
    await run(at)
    assert "No account matches." in texts(at) and not at.dataframe

    at.selectbox(key="accounts_state").set_value("all")
    at.selectbox(key="accounts_sort").set_value("created_at")
    at.radio(key="accounts_order").set_value("Descending")
    await run(at)
    assert table_values(at)[0][0][0] == activated.email  # the newest first

    at.button(key="accounts_open").click()  # the first row is selected by default
    await run(at)
    assert [t.value for t in at.title] == ["Account"]
    assert activated.email in [s.value for s in at.subheader]
    assert at.session_state[ui.ACCOUNT_KEY] == activated.account_id

    at.switch_page("screens/accounts.py")  # the question is still there on the way back
    await run(at)
    assert at.text_input(key="accounts_search").value == prefix


# -- one account, read by both roles


@pytest.mark.parametrize("role", ROLES)
async def test_account_page_shows_state_timers_devices_sessions(
    role: Role, api: Api, dashboard_env: dict[str, str], operators: dict[Role, Operator]
) -> None:
    name = "Firefox ![pixel](http://127.0.0.1:9/p) :red[laptop]"  # users choose these names
    user = await api.activated(new_user(), device_name=name)
    at = await open_page(operators[role], "account.py", user.account_id)
    shown = texts(at)
    assert user.email in shown
    assert f"2FA state={ui.state_label('active')}" in shown
    assert "Trusted browsers (1)" in shown
    assert f"**{ui.md(name)}**" in shown and name not in shown  # shown literally, not rendered
    assert "Open sessions (" in shown
    assert table_values(at)[0], "the session opened by the PIN login is listed"
    if role == "admin":
        assert {f"revoke_{user.device_id}", *ACTION_KEYS} <= keys(at)
        assert not at.button(key="disable").disabled and at.button(key="unlock").disabled
    else:
        assert not [k for k in keys(at) if k.startswith("revoke_") or k in ACTION_KEYS]
        assert "Auditors read everything here but change nothing." in shown
    for secret in user.secrets():
        assert secret not in shown


async def test_locked_account_shows_when_it_unlocks(
    api: Api,
    dashboard_env: dict[str, str],
    operators: dict[Role, Operator],
    admin_service: AdminService,
) -> None:
    user = await locked_user(api)
    at = await open_page(operators["auditor"], "account.py", user.account_id)
    shown = texts(at)
    assert f"2FA state={ui.state_label('locked')}" in shown
    # the lock resets the wrong-PIN count: say what locked it and which lock in a row it is
    assert "Locked by wrong PINs=5" in shown and "Wrong PINs in a row" not in shown
    assert "1st lock in a row; the 3rd in a row needs an admin" in shown
    unlocks = next(m.value for m in at.metric if m.label == "Unlocks")
    assert unlocks.startswith("in 1") and unlocks.endswith(" min"), unlocks  # in 15 or 14 min
    detail = await admin_service.account(user.account_id)
    assert f"{ui.when(detail.account.locked_until)} UTC" in shown


# -- admin actions through the confirmation dialog


async def confirm(at: AppTest, button_key: str, label: str) -> AppTest:
    """Clicks an action button, checks the dialog asks first, then confirms."""
    at.button(key=button_key).click()
    await run(at)
    assert at.button(key="confirm_action").label == label
    at.button(key="confirm_action").click()
    return await run(at)


async def test_admin_revokes_one_device_and_it_no_longer_connects(
    api: Api,
    dashboard_env: dict[str, str],
    operators: dict[Role, Operator],
    admin_service: AdminService,
) -> None:
    user = await api.activated(new_user())
    at = await open_page(operators["admin"], "account.py", user.account_id)

    at.button(key=f"revoke_{user.device_id}").click()  # Cancel changes nothing
    await run(at)
    at.button(key="cancel_action").click()
    await run(at)
    assert [d.id for d in await admin_service.users.devices(user.account_id)] == [user.device_id]
    assert "confirm_action" not in keys(at)

    await confirm(at, f"revoke_{user.device_id}", "Revoke browser")
    assert "can no longer connect" in texts(at)
    assert "Trusted browsers (0)" in texts(at)
    assert await admin_service.users.devices(user.account_id) == []
    trail = await admin_service.audit_trail(user.account_id)
    assert ("device_removed", operators["admin"].view.actor) in [(r.event, r.actor) for r in trail]
    login = await api.login_ok(user)
    assert login["outcome"] == "browser_not_trusted", login

    # repeated after a lost answer: answered as the revocation was, and recorded once (S9)
    admin = operators["admin"].view
    assert user.device_id
    await admin_service.revoke_device(admin, user.account_id, user.device_id)
    again = await admin_service.audit_trail(user.account_id)
    assert [r.event for r in again].count("device_removed") == 1
    with pytest.raises(ServiceError) as unknown:  # an id that never named one of its browsers
        await admin_service.revoke_device(admin, user.account_id, str(uuid.uuid4()))
    assert unknown.value.code == "device_not_found"


async def test_admin_unlocks_a_locked_account(
    api: Api,
    dashboard_env: dict[str, str],
    operators: dict[Role, Operator],
    admin_service: AdminService,
) -> None:
    user = await locked_user(api)
    at = await open_page(operators["admin"], "account.py", user.account_id)
    assert not at.button(key="unlock").disabled
    await confirm(at, "unlock", "Unlock")
    assert "Unlocked" in texts(at)
    assert f"2FA state={ui.state_label('active')}" in texts(at)
    assert (await admin_service.account(user.account_id)).account.state == "active"
    await api.pin_login(user)  # the PIN works again
    trail = await admin_service.audit_trail(user.account_id)
    assert operators["admin"].view.actor in {r.actor for r in trail}


async def test_admin_disables_two_factor(
    api: Api,
    dashboard_env: dict[str, str],
    operators: dict[Role, Operator],
    admin_service: AdminService,
) -> None:
    user = await api.activated(new_user())
    at = await open_page(operators["admin"], "account.py", user.account_id)
    await confirm(at, "disable", "Disable 2FA")
    assert "2FA disabled; 1 trusted browser(s) revoked." in texts(at)
    detail = await admin_service.account(user.account_id)
    assert detail.account.state == "disabled" and detail.devices == []
    assert at.button(key="disable").disabled
    login = await api.login_ok(user)
    assert login["outcome"] == "authenticated", login  # no second factor any more


async def test_auditor_cannot_act_even_around_the_page(
    api: Api,
    dashboard_env: dict[str, str],
    operators: dict[Role, Operator],
    admin_service: AdminService,
) -> None:
    user = await locked_user(api)
    auditor = operators["auditor"].view
    for call in (
        admin_service.revoke_device(auditor, user.account_id, user.device_id or ""),
        admin_service.unlock(auditor, user.account_id),
        admin_service.disable(auditor, user.account_id),
    ):
        with pytest.raises(ServiceError) as refused:
            await call
        assert (refused.value.status, refused.value.code) == (403, "read_only")

    # a forged confirmation (no button leads there) is refused by the service, and shown
    at = await open_page(operators["auditor"], "account.py", user.account_id)
    for pending in (
        {"kind": "revoke", "device_id": user.device_id, "name": "forged"},
        {"kind": "unlock"},
        {"kind": "disable"},
    ):
        at.session_state[ui.PENDING_KEY] = {**pending, "account_id": user.account_id}
        await run(at)
        at.button(key="confirm_action").click()
        await run(at)
        assert [str(e.value) for e in at.error] == [
            "Auditors can read everything but change nothing."
        ]
        at.button(key="cancel_action").click()
        await run(at)
    detail = await admin_service.account(user.account_id)
    assert detail.account.state == "locked"
    assert [d.id for d in detail.devices] == [user.device_id]


# -- history


def story_rows(at: AppTest) -> list[list[Any]]:
    """The History page's story table: number, time, what happened, by."""
    return at.table[0].value.values.tolist()


@pytest.mark.parametrize("role", ROLES)
async def test_history_tells_the_story_with_engine_detail_one_click_away(
    role: Role,
    api: Api,
    dashboard_env: dict[str, str],
    operators: dict[Role, Operator],
    admin_service: AdminService,
    database: Database,
    client: Client,
) -> None:
    name = "Carol ![pixel](http://127.0.0.1:9/p) :red[laptop]"  # users choose these names
    user = await api.activated(new_user(), device_name=name)
    login = await api.login_ok(user)
    assert (await api.pin(login["login_id"], "11112222")).status_code == 400  # one wrong PIN
    await at_rest(database, client, user.account_id)  # no record lands between page and check
    at = await open_page(operators[role], "account.py", user.account_id)
    assert "Wrong PINs in a row=1 of 5" in texts(at)

    at = await open_page(operators[role], "history.py", user.account_id)
    assert [t.value for t in at.title] == ["History"]
    story = story_rows(at)
    records = await admin_service.audit_trail(user.account_id)
    assert [row[0] for row in story] == [r.seq for r in records]  # one line per audit record
    said = {row[2] for row in story}  # Markdown the table renders: user text shown literally
    for sentence in (
        "Account registered",
        "2FA enabled; the user is logged out to enter the code",
        "Activation code accepted",
        "2FA activated",
        f"Browser “{name}” enrolled at activation",
        "Logged in with the PIN",
        "Wrong PIN, 4 attempts left",
    ):
        assert ui.md(sentence) in said, (sentence, said)
    assert not [w for w in said if name in w]
    emailed = re.escape(ui.md("Activation code #1 emailed, valid until "))
    assert any(re.fullmatch(emailed + r".* UTC", w) for w in said)
    wrong_pin = next(row for row in story if row[2] == ui.md("Wrong PIN, 4 attempts left"))
    assert next(r for r in records if r.seq == wrong_pin[0]).event == "pin_rejected"
    assert {row[3] for row in story} >= {"the user"}

    # the records as stored and the engine's steps: each in its own expander, in full
    assert [e.label for e in at.expander] == [
        f"Audit records as stored ({len(records)})",
        f"Engine detail: workflow history ({len(await admin_service.timeline(user.account_id))}"
        " steps)",
    ]
    trail, timeline = (e.dataframe[0].value.values.tolist() for e in at.expander)
    assert [row[3] for row in trail] == [r.event for r in records]
    steps = [row[2] for row in timeline]
    assert steps[0] == "run started" and "timer set" in steps and "request answered" in steps
    assert any(row[3] == "now active" for row in timeline)
    labels = [(b.key, b.label) for b in at.download_button]
    assert labels == [
        ("audit_json", "Download JSON"),
        ("audit_csv", "Download CSV"),
        ("timeline_json", "Download JSON"),
        ("timeline_csv", "Download CSV"),
    ]
    shown = texts(at) + json.dumps(story + trail + timeline, default=str)
    for secret in user.secrets():
        assert secret not in shown

    # what the buttons hand over: the same records, as JSON and as CSV
    rows = await admin_service.timeline(user.account_id)
    assert [r["step"] for r in json.loads(ui.as_json(rows))] == [r.step for r in rows]
    read = list(csv.DictReader(io.StringIO(ui.as_csv(records, AuditRow))))
    assert [int(r["seq"]) for r in read] == [r.seq for r in records]
    assert list(read[0]) == list(AuditRow.model_fields)
    assert ui.as_csv([], TimelineRow).strip() == ",".join(TimelineRow.model_fields)


class Forwarder:
    """A TCP forwarder to the dev server that can be cut: Temporal, as a client sees it, gone."""

    def __init__(self, target: str) -> None:
        self.host, port = target.rsplit(":", 1)
        self.port = int(port)
        self.writers: list[asyncio.StreamWriter] = []
        self.is_cut = False

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._pair, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *_: object) -> None:
        await self.cut()

    async def cut(self) -> None:
        self.is_cut = True
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()

    async def _pair(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        self.writers += [writer, up_writer]
        if self.is_cut:  # accepted as it was cut: cut too
            writer.close()
            up_writer.close()
            return

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_history_reads_without_temporal(
    api: Api,
    dashboard_env: dict[str, str],
    operators: dict[Role, Operator],
    base_settings: Settings,
) -> None:
    """Temporal gone: the History page still tells the story from the audit trail, and says
    the engine's steps cannot be read now, instead of failing as a whole."""
    user = await api.activated(new_user())
    assert base_settings.temporal_address is not None
    forwarder = Forwarder(base_settings.temporal_address)
    async with forwarder as address:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("TWOFA_TEMPORAL_ADDRESS", address)  # a runtime of its own, through it
            at = await open_page(operators["auditor"], "history.py", user.account_id)
            assert [e.label for e in at.expander][1].startswith("Engine detail")
            assert not at.warning
            await forwarder.cut()
            at = await open_page(operators["auditor"], "history.py", user.account_id)
            assert [str(w.value) for w in at.warning] == [
                "Engine detail: the workflow history cannot be read now (Temporal does not "
                "answer). The story and the audit records above are complete; reload later "
                "for the engine's steps."
            ]
            assert story_rows(at) and ui.md("2FA activated") in {r[2] for r in story_rows(at)}
            assert len(at.expander) == 1, [e.label for e in at.expander]
            assert at.expander[0].label.startswith("Audit records as stored")
    runtime.reset()  # the forwarder's runtime goes; the next page builds the module's again


async def test_history_says_locks_and_admin_actions(
    api: Api,
    dashboard_env: dict[str, str],
    operators: dict[Role, Operator],
    admin_service: AdminService,
) -> None:
    user = await locked_user(api)
    locked_until = (await admin_service.account(user.account_id)).account.locked_until
    await admin_service.disable(operators["admin"].view, user.account_id)
    at = await open_page(operators["auditor"], "history.py", user.account_id)
    said = [row[2] for row in story_rows(at)]
    for left in (4, 3, 2):
        assert ui.md(f"Wrong PIN, {left} attempts left") in said
    assert ui.md("Wrong PIN, 1 attempt left") in said  # not "1 attempts"
    assert ui.md("Wrong PIN: 2FA locked") in said
    assert ui.md(f"2FA locked until {ui.when(locked_until)} UTC") in said
    admin = operators["admin"].view.email
    assert ui.md(f"2FA disabled by admin {admin}") in said
    assert any(w.endswith("revoked as 2FA was disabled") for w in said), said


# -- seeded data looks like traffic


async def test_seed_spreads_accounts_like_real_traffic(
    dashboard_env: dict[str, str],
    base_settings: Settings,
    admin_service: AdminService,
    operators: dict[Role, Operator],
    worker: None,
) -> None:
    users = admin_service.users
    async with users.db.read() as db:
        before = set(await db.scalars(select(Account.id)))
    tally = await seed(
        users.db, users.client, users.keyring, users.policy,
        base_settings.temporal_task_queue, 120, rng=random.Random(13),
    )  # fmt: skip
    assert tally["locked"] >= 3, tally
    now = utcnow()
    async with users.db.read() as db:
        seeded = [a for a in await db.scalars(select(Account)) if a.id not in before]
    assert len(seeded) == 120
    created = sorted(a.created_at for a in seeded)
    assert created[0] < now - timedelta(days=60) and created[-1] <= now  # over the last 90 days
    assert created[0] >= now - timedelta(days=90, minutes=1)
    assert len({c.date() for c in created}) > 40  # not all on a few days
    assert all(a.updated_at >= a.created_at for a in seeded)
    enabled = [a for a in seeded if a.two_factor_state != "disabled"]
    assert all(a.updated_at > a.created_at for a in enabled)
    locked = [a for a in seeded if a.two_factor_state == "locked"]
    running = [a for a in locked if a.locked_until is not None]
    assert len({a.locked_until for a in running}) == len(running)  # not one second for all
    for account in running:  # a lock ends 15 minutes after it began, which was its last change
        assert account.locked_until is not None  # as ``running`` kept only these
        assert account.locked_until > now
        lock = timedelta(seconds=users.policy.pin_lock_seconds)
        assert account.locked_until - account.updated_at == lock
        assert 1 <= account.pin_locks_in_a_row < users.policy.locks_before_admin_unlock
    for account in seeded:  # every record of an account in time order, none ahead of now
        trail = await admin_service.audit_trail(account.id)
        times = [r.time for r in trail]
        assert times == sorted(times) and times[-1] <= now and times[0] == account.created_at
        previous: tuple[str, Any] = ("", None)  # wrong PINs count down 4, 3, 2, 1, 0 in order
        for record in trail:
            left = json.loads(record.details).get("attempts_left")
            if record.event == "pin_rejected" and left != users.policy.max_pin_failures - 1:
                assert previous == ("pin_rejected", left + 1), (account.email, record)
            if record.event in ("pin_rejected", "two_factor_unlocked", "login_succeeded"):
                previous = (record.event, left)
    held = [a for a in locked if a.locked_until is None]
    assert held and running, "this rng gives both kinds of lock"
    at = await open_page(operators["auditor"], "account.py", held[0].id)  # why a held lock holds
    assert "3rd lock in a row; held until an admin unlocks it" in texts(at)
    assert "Unlocks=by admin" in texts(at)


# -- a real browser against `streamlit run`


@pytest.fixture
async def served_dashboard(
    base_settings: Settings, tmp_path: Path, worker: None
) -> AsyncIterator[str]:
    port = free_port()
    log = tmp_path / "streamlit.log"
    command = [
        sys.executable, "-m", "streamlit", "run", str(SERVER),
        "--server.address", "127.0.0.1",
        "--server.port", str(port),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        *DASHBOARD_LIMITS,  # the production bounds: the pages must work within them
    ]  # fmt: skip
    async with started(command, environment(base_settings), log) as process:

        def alive() -> None:
            assert process.poll() is None, log.read_text()

        url = f"http://127.0.0.1:{port}"
        await wait_for_http(f"{url}/_stcore/health", alive=alive)  # streamlit's own health
        yield url


async def test_browser_admin_revokes_a_device_and_the_api_refuses_it(
    api: Api,
    served_dashboard: str,
    admin_service: AdminService,
    tmp_path: Path,
) -> None:
    user = await api.activated(new_user("browser"))
    admin = await admin_service.create_operator(
        f"admin.{uuid.uuid4().hex[:10]}@ops.example.com", "admin", PASSWORD
    )
    shots = tmp_path / "screenshots"
    shots.mkdir()
    step = 0

    async def snap(page: Page, name: str) -> None:
        """Once the script run is over and nothing stale is left on screen."""
        nonlocal step
        step += 1
        await page.get_by_test_id("stStatusWidget").wait_for(state="hidden")
        await page_expect(page.locator("[data-stale='true']")).to_have_count(0)
        await page.screenshot(path=shots / f"{step:02d}-{name}.png", full_page=True)

    async with async_playwright() as p:
        browser = await launch(p)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(45_000)
            await page.goto(served_dashboard)
            email = page.get_by_role("textbox", name="Email")
            await email.wait_for()
            await snap(page, "sign-in-form")

            await email.fill(admin.email)
            await page.get_by_role("textbox", name="Password").fill(PASSWORD)
            await page.get_by_role("button", name="Sign in").click()
            await page_expect(page.get_by_role("heading", name="Overview")).to_be_visible()
            await page_expect(page.get_by_text("Enrollment funnel")).to_be_visible()
            await page_expect(page.locator(".vega-embed")).to_have_count(3)
            await snap(page, "overview")

            await page.get_by_role("link", name="Accounts").click()
            search = page.get_by_role("textbox", name="Email starts with")
            await search.fill(user.email)
            await search.press("Enter")
            await page_expect(page.get_by_text("1 account matches")).to_be_visible()
            await page_expect(page.get_by_test_id("stDataFrame")).to_be_visible()
            await snap(page, "accounts-search")

            await page.get_by_role("button", name="Open account").click()
            await page_expect(page.get_by_role("heading", name=user.email)).to_be_visible()
            await page_expect(page.get_by_text("Trusted browsers (1)")).to_be_visible()
            await snap(page, "account")

            await page.get_by_role("button", name="Revoke").click()
            dialog = page.get_by_role("dialog")
            await page_expect(dialog.get_by_text("will no longer connect")).to_be_visible()
            await snap(page, "confirmation-dialog")

            await dialog.get_by_role("button", name="Revoke browser").click()
            await page_expect(page.get_by_text("can no longer connect")).to_be_visible()
            await page_expect(page.get_by_text("Trusted browsers (0)")).to_be_visible()
            await snap(page, "revoked")
        finally:
            await browser.close()

    login = await api.login_ok(user)  # the device token no longer opens the PIN step
    assert login["outcome"] == "browser_not_trusted", login
    assert len(list(shots.glob("*.png"))) == 6


async def session_cookie_of(context: Any) -> dict[str, Any] | None:
    for cookie in await context.cookies():
        if cookie["name"] == session_cookie.COOKIE:
            return cookie
    return None


async def test_browser_reload_and_new_tab_keep_the_sign_in_until_sign_out(
    served_dashboard: str, admin_service: AdminService
) -> None:
    operator = await admin_service.create_operator(
        f"auditor.{uuid.uuid4().hex[:10]}@ops.example.com", "auditor", PASSWORD
    )
    async with async_playwright() as p:
        browser = await launch(p)
        try:
            context = await browser.new_context(viewport={"width": 1400, "height": 1000})
            page = await context.new_page()
            page.set_default_timeout(45_000)
            overview = page.get_by_role("heading", name="Overview")
            await page.goto(served_dashboard)
            await page.get_by_role("textbox", name="Email").fill(operator.email)
            await page.get_by_role("textbox", name="Password").fill(PASSWORD)
            await page.get_by_role("button", name="Sign in").click()
            await page_expect(overview).to_be_visible()
            await page.wait_for_function(  # the page's script has fetched the cookie
                "() => performance.getEntriesByName("
                f"location.origin + '{session_cookie.PATH}').length > 0"
            )
            cookie = await session_cookie_of(context)
            assert cookie is not None
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
            assert cookie["expires"] > 0  # it lives as long as the session, not the tab
            token = cookie["value"]
            assert token not in await page.evaluate("document.cookie")  # out of scripts' reach
            assert (await admin_service.operator(token)).email == operator.email
            async with admin_service.db.read() as db:  # the store keeps its keyed hash only
                stored = await db.get(
                    OperatorSession, admin_service.keyring.digest("operator-session", token)
                )
                assert stored is not None and stored.ended_at is None
                assert token not in json.dumps([str(v) for v in vars(stored).values()])

            await page.reload()
            await page_expect(overview).to_be_visible()
            assert token not in page.url and "token" not in page.url
            tab = await context.new_page()
            await tab.goto(served_dashboard)
            await page_expect(tab.get_by_role("heading", name="Overview")).to_be_visible()
            await page_expect(tab.get_by_text(operator.email)).to_be_visible()
            await tab.close()

            await page.get_by_role("button", name="Sign out").click()
            await page_expect(page.get_by_role("textbox", name="Email")).to_be_visible()
            with pytest.raises(ServiceError):  # ended on the server, not only in the browser
                await admin_service.operator(token)
            await page.reload()
            await page_expect(page.get_by_role("textbox", name="Email")).to_be_visible()
            await page_expect(overview).to_have_count(0)
            assert await session_cookie_of(context) is None

            # the old cookie, replayed, opens nothing: the server ended that session
            replay = await browser.new_context()
            await replay.add_cookies([{**cookie, "expires": -1}])
            again = await replay.new_page()
            await again.goto(served_dashboard)
            await page_expect(again.get_by_text("session has ended")).to_be_visible()
            await page_expect(again.get_by_role("textbox", name="Email")).to_be_visible()
        finally:
            await browser.close()

    async with httpx.AsyncClient(base_url=served_dashboard) as http:  # the route itself
        url = session_cookie.PATH
        other = await http.post(url, json={"handoff": "x"}, headers={"Origin": "http://evil"})
        assert other.status_code == 403 and "set-cookie" not in other.headers
        host = served_dashboard.removeprefix("http://")
        unknown = await http.post(
            url, json={"handoff": "not-offered"}, headers={"Origin": f"http://{host}"}
        )
        assert unknown.status_code == 400 and "set-cookie" not in unknown.headers


def test_a_handoff_gives_its_token_once() -> None:
    handoffs = session_cookie.Handoffs()
    handoff = handoffs.offer("token-a")
    assert handoffs.take("not-offered") is None
    assert handoffs.take(handoff) == "token-a"
    assert handoffs.take(handoff) is None  # single use: a replayed POST sets no cookie


def test_the_server_preloads_everything_the_pages_import() -> None:
    """The first visitor must not wait for imports (11 s cold before): after the server's
    preload, importing what app.py and every screen import loads no new module."""
    sources = [APP, *sorted((APP.parent / "screens").glob("*.py"))]
    imports = sorted(
        {
            line.strip()
            for source in sources
            for line in source.read_text().splitlines()
            if line.startswith(("import ", "from ")) and "__future__" not in line
        }
    )
    probe = "\n".join(
        [
            "import sys",
            "from twofa.dashboard import server",
            "server.preload()",
            "before = set(sys.modules)",
            *imports,
            "print(sorted(set(sys.modules) - before))",
        ]
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_history_tells_mail_failures_and_notifications_in_words() -> None:
    def said(event: str, details: dict[str, object], actor: str = "system") -> str:
        row = AuditRow(seq=7, time=datetime.now(UTC), actor=actor, event=event, details="")
        return history_story.line(row.model_copy(update={"details": json.dumps(details)})).what

    assert said("mail_failed", {"number": 2, "reason": "the relay answered 550"}) == (
        "Activation mail 2 could not be sent: the relay answered 550"
    )
    assert said("notification_sent", {"kind": "two_factor_locked"}) == (
        "Told the user by mail: 2FA was locked"
    )
    assert "a browser was enrolled" in said(
        "notification_failed", {"kind": "browser_enrolled", "reason": "550"}
    )
    assert said("session_kept", {}, "user") == "The session that asked to disable 2FA is kept open"
