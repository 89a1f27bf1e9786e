"""Records the workflow histories of a release, one account per state, for the replay test.

Run at release time, on the release's own commit (``make record-histories RELEASE=<name>``):
each scenario drives a real account through the HTTP API on the real dev server and writes the
history of every run of its workflow to
``tests/workflows/histories/<release>/<scenario>[.<run>].json``.
``tests/workflows/test_histories.py`` then replays every recorded release against the current
workflow code, so a change that older histories cannot follow fails before it lands.

Not collected by a plain ``pytest`` (the name does not start with ``test_``); it only runs when
named on the command line, with ``TWOFA_HISTORY_RELEASE`` set.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from tests.conftest import ApiFactory
from tests.support.journey import Api, User, at_rest, eventually, new_user
from tests.support.relay import RelayHandler, api_on_relay
from twofa.config import Settings
from twofa.store.db import Database
from twofa.workflows.messages import workflow_id
from twofa.workflows.two_factor import TwoFactorWorkflow

HISTORIES = Path(__file__).parent / "histories"
RELEASE = os.environ.get("TWOFA_HISTORY_RELEASE", "")

pytestmark = pytest.mark.skipif(not RELEASE, reason="set TWOFA_HISTORY_RELEASE to record")


async def save(client: Client, scenario: str, user: User) -> None:
    """Writes every run of the account's workflow, oldest first; the newest is ``<scenario>``."""
    folder = HISTORIES / RELEASE
    folder.mkdir(parents=True, exist_ok=True)
    wid = workflow_id(user.account_id)
    runs = [w.run_id async for w in client.list_workflows(f'WorkflowId = "{wid}"')]
    runs.reverse()  # the listing is newest first
    for number, run_id in enumerate(runs, start=1):
        history = await client.get_workflow_handle(wid, run_id=run_id).fetch_history()
        name = scenario if number == len(runs) else f"{scenario}.run{number}"
        (folder / f"{name}.json").write_text(history.to_json() + "\n")


async def wrong_pins(api: Api, user: User, count: int) -> None:
    login = await api.login_ok(user)
    for _ in range(count):
        r = await api.pin(login["login_id"], "0000")
        assert r.status_code in (400, 423), r.text


async def test_pending_code_with_both_timers(start_api: ApiFactory, client: Client) -> None:
    api = await start_api(auto_logout_seconds=600)
    user = new_user("pending-code")
    await api.enabled(user)
    await save(client, "pending_code", user)


async def test_pending_code_after_auto_logout(api: Api, client: Client, database: Database) -> None:
    """The auto-logout's timer fired and its sessions ended (a session's own capped expiry ends
    it as well, so its 401 alone would save a history from before the timer)."""
    user = new_user("logged-out")
    await api.enabled(user)
    await at_rest(database, client, user.account_id)
    await save(client, "pending_code_logged_out", user)


async def test_expired_code_replaced(start_api: ApiFactory, client: Client) -> None:
    api = await start_api(code_ttl_seconds=2)
    user = new_user("expired")
    await api.enabled(user)
    await api.code_mail(user)

    async def new_code_sent() -> bool:
        login = await api.login_ok(user)
        return bool(login["code_sent"])

    await eventually(new_code_sent, "a new code after expiry")
    await save(client, "pending_code_replaced", user)


async def test_code_burned_by_wrong_tries(api: Api, client: Client) -> None:
    user = new_user("burned")
    await api.enabled(user)
    await api.code_mail(user)
    login = await api.login_ok(user)
    for _ in range(5):
        r = await api.submit_code(login["login_id"], "WRONGCODE")
        assert r.status_code == 400, r.text
    await save(client, "pending_code_burned", user)


async def test_mail_after_a_busy_relay(
    start_api: ApiFactory, client: Client, base_settings: Settings, database: Database
) -> None:
    """Since ea117d1: the mail's first try failed locally, its remote retry delivered it (since
    614187c, after the enable had answered)."""
    handler = RelayHandler(refuse={"RCPT": "451 4.3.0 try again later"})
    async with api_on_relay(handler, client, base_settings, database, start_api) as api:
        user = await api.registered_and_logged_in(new_user("relay-busy"))
        enabling = asyncio.create_task(
            api.call("PUT", "/v1/account/two-factor", user, json={"enabled": True})
        )
        await eventually(lambda: handler.mail_commands >= 3, "three tries", interval=0.05)
        handler.refuse = {}
        r = await enabling
        assert r.status_code == 202, r.text
        await eventually(lambda: len(handler.accepted) == 1, "the mail", interval=0.05)
    await save(client, "pending_code_relay_busy", user)


async def test_mail_called_off_at_the_code_expiry(
    start_api: ApiFactory, client: Client, base_settings: Settings, database: Database
) -> None:
    """Since 614187c (the mail's retries after the step): the code expired while the relay was busy,
    so its retries were called off, and the next login mailed a new code."""
    handler = RelayHandler(refuse={"RCPT": "451 4.3.0 try again later"})
    relayed = api_on_relay(handler, client, base_settings, database, start_api, code_ttl_seconds=2)
    async with relayed as api:
        user = new_user("mail-called-off")
        await api.enabled(user)
        handle = client.get_workflow_handle(workflow_id(user.account_id))

        async def code_burnt() -> bool:
            return not (await handle.query(TwoFactorWorkflow.progress_now)).code_digest

        await eventually(code_burnt, "the code's expiry")
        handler.refuse = {}
        login = await api.login_ok(user)
        assert login["code_sent"] is True, login
    await save(client, "pending_code_mail_called_off", user)


async def test_mail_refused(
    start_api: ApiFactory, client: Client, base_settings: Settings, database: Database
) -> None:
    """Since ea117d1: the relay refused the address on the mail's first, local, try."""
    handler = RelayHandler(refuse={"RCPT": "550 5.1.1 mailbox unavailable"})
    async with api_on_relay(handler, client, base_settings, database, start_api) as api:
        user = new_user("relay-refused")
        await api.enabled(user)
    await save(client, "pending_code_mail_refused", user)


async def test_mail_refused_on_a_retry(
    start_api: ApiFactory, client: Client, base_settings: Settings, database: Database
) -> None:
    """Since 614187c: the relay was busy at the first try and refused the address for good on
    a retry after the step, so the code was burnt (no code is out)."""
    handler = RelayHandler(refuse={"RCPT": "451 4.3.0 try again later"})
    async with api_on_relay(handler, client, base_settings, database, start_api) as api:
        user = new_user("relay-refused-later")
        await api.enabled(user)
        handler.refuse = {"RCPT": "550 5.1.1 mailbox unavailable"}
        handle = client.get_workflow_handle(workflow_id(user.account_id))

        async def code_burnt() -> bool:
            return not (await handle.query(TwoFactorWorkflow.progress_now)).code_digest

        await eventually(code_burnt, "the refusal on a retry")
        await at_rest(database, client, user.account_id)
    await save(client, "pending_code_mail_refused_on_retry", user)


async def test_disabled_while_mailing(
    start_api: ApiFactory, client: Client, base_settings: Settings, database: Database
) -> None:
    """Since 614187c: a disable while the relay kept the mail waiting called its retries off,
    and the run ended once they stopped."""
    handler = RelayHandler(refuse={"RCPT": "451 4.3.0 try again later"})
    async with api_on_relay(handler, client, base_settings, database, start_api) as api:
        user = new_user("disabled-mailing")
        await api.enabled(user)
        await eventually(lambda: handler.mail_commands >= 2, "a retry", interval=0.05)
        r = await api.call(
            "PUT", "/v1/account/two-factor", user, json={"enabled": False, "confirm": True}
        )
        assert r.status_code == 200, r.text
        handle = client.get_workflow_handle(workflow_id(user.account_id))

        async def run_ended() -> bool:
            return (await handle.describe()).status != WorkflowExecutionStatus.RUNNING

        await eventually(run_ended, "the run's end")
    await save(client, "disabled_while_mailing", user)


async def test_pending_activation(api: Api, client: Client) -> None:
    user = new_user("pending-activation")
    await api.enabled(user)
    code = await api.code_mail(user)
    login = await api.login_ok(user)
    r = await api.submit_code(login["login_id"], code)
    assert r.status_code == 200, r.text
    await save(client, "pending_activation", user)


async def test_code_repeated_after_acceptance(api: Api, client: Client) -> None:
    """Since 2026-12-01: the workflow answers a login's repeated code (a patched branch)."""
    user = new_user("code-repeated")
    await api.enabled(user)
    code = await api.code_mail(user)
    login = await api.login_ok(user)
    for _ in range(2):
        r = await api.submit_code(login["login_id"], code)
        assert r.status_code == 200, r.text
    await save(client, "pending_activation_code_repeated", user)


async def test_active(api: Api, client: Client) -> None:
    user = await api.activated(new_user("active"))
    await api.pin_login(user)
    await save(client, "active", user)


async def test_second_browser(api: Api, client: Client) -> None:
    user = await api.activated(new_user("second-browser"))
    other = User(email=user.email, password=user.password, pin=user.pin)
    await api.enrolled(other, "second laptop")
    await save(client, "active_second_browser", user)


async def test_locked_with_timer(start_api: ApiFactory, client: Client) -> None:
    api = await start_api(pin_lock_seconds=900)
    user = await api.activated(new_user("locked"))
    await wrong_pins(api, user, 5)
    await save(client, "locked", user)


async def test_lock_ended_on_time(start_api: ApiFactory, client: Client) -> None:
    api = await start_api(pin_lock_seconds=1)
    user = await api.activated(new_user("unlocked"))
    await wrong_pins(api, user, 5)

    async def unlocked() -> bool:
        return (await api.login_ok(user))["outcome"] == "pin_required"

    await eventually(unlocked, "the lock's end")
    await api.pin_login(user)
    await save(client, "lock_ended", user)


async def test_disabled(api: Api, client: Client) -> None:
    user = await api.activated(new_user("disabled"))
    r = await api.call(
        "PUT", "/v1/account/two-factor", user, json={"enabled": False, "confirm": True}
    )
    assert r.status_code == 200, r.text
    await save(client, "disabled", user)


async def test_disabled_while_pending(api: Api, client: Client) -> None:
    user = new_user("disabled-pending")
    await api.enabled(user)
    r = await api.call(
        "PUT", "/v1/account/two-factor", user, json={"enabled": False, "confirm": True}
    )
    assert r.status_code == 200, r.text
    await save(client, "disabled_while_pending", user)


async def test_continued_as_new(start_api: ApiFactory, client: Client) -> None:
    api = await start_api(history_event_limit=50)
    user = await api.activated(new_user("continued"))
    for _ in range(3):
        await wrong_pins(api, user, 3)
        await api.pin_login(user)
    wid = workflow_id(user.account_id)
    runs = [w async for w in client.list_workflows(f'WorkflowId = "{wid}"')]
    assert len(runs) > 1, "no continue-as-new happened"
    await save(client, "continued_as_new", user)
