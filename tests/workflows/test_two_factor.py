"""The workflow and its activities on the real dev server: determinism, long lives, idempotence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Replayer

from tests.conftest import ApiFactory
from tests.support.journey import Api, eventually, new_user
from twofa.activities.effects import Effects
from twofa.config import Settings
from twofa.crypto import Keyring
from twofa.store.db import Database
from twofa.workflows.messages import CodeMail, workflow_id
from twofa.workflows.two_factor import TwoFactorWorkflow


async def test_histories_replay_deterministically(api: Api, client: Client) -> None:
    user = await api.activated(new_user())
    r = await api.call(
        "PUT", "/v1/account/two-factor", user, json={"enabled": False, "confirm": True}
    )
    assert r.status_code == 200, r.text
    handle = client.get_workflow_handle(workflow_id(user.account_id))
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
    history = await handle.fetch_history()
    result = await Replayer(workflows=[TwoFactorWorkflow]).replay_workflow(history)
    assert result.replay_failure is None


async def test_state_is_a_search_attribute(api: Api, client: Client) -> None:
    user = await api.activated(new_user())
    wid = workflow_id(user.account_id)
    found: list[str] = []

    async def listed() -> bool:
        # the visibility store takes the upserted attribute after the workflow task, not with it
        query = f'TwoFactorState = "active" AND WorkflowId = "{wid}"'
        found[:] = [w.id async for w in client.list_workflows(query)]
        return bool(found)

    await eventually(listed, lambda: f"{wid} listed as active, found {found}")
    assert found == [wid]


async def test_long_lives_continue_as_new_and_keep_their_state(
    start_api: ApiFactory, client: Client
) -> None:
    api = await start_api(history_event_limit=50)
    user = await api.activated(new_user())
    handle = client.get_workflow_handle(workflow_id(user.account_id))
    first_run = (await handle.describe()).run_id
    for _ in range(3):  # wrong PINs, then a right one: each a workflow update
        login = await api.login_ok(user)
        for _ in range(3):
            r = await api.pin(login["login_id"], "0000")
            assert r.status_code == 400, r.text
        r = await api.pin(login["login_id"], user.pin)
        assert r.status_code == 200, r.text
    description = await handle.describe()
    assert description.run_id != first_run
    assert description.status == WorkflowExecutionStatus.RUNNING
    # the new run goes on from the same state: counting and the PIN work as before
    login = await api.login_ok(user)
    for attempts_left in (4, 3, 2, 1):
        r = await api.pin(login["login_id"], "0000")
        assert r.json()["attempts_left"] == attempts_left
    await api.pin_login(user)


async def test_mail_activity_is_idempotent(
    api: Api, base_settings: Settings, database: Database
) -> None:
    user = await api.register(new_user())
    effects = Effects(base_settings, database, Keyring(base_settings.pepper_bytes))
    mail = CodeMail(user.account_id, "enrollment-x", 1, datetime.now(UTC) + timedelta(minutes=15))
    env = ActivityEnvironment()
    first = await env.run(effects.send_activation_code, mail)
    second = await env.run(effects.send_activation_code, mail)
    assert first == second
    assert len(api.activation_mails_to(user.email)) == 1
    other = await env.run(
        effects.send_activation_code, CodeMail(user.account_id, "enrollment-x", 2, mail.expires_at)
    )
    assert other != first
    assert len(api.activation_mails_to(user.email)) == 2
