"""The workflow driven straight through the Temporal client, no HTTP: validators, timers,
continue-as-new and permanent failures, each read back from the query, the server and the store.

The workflow runs on a task queue of its own, served by an in-process worker built like the real
one, so its effects land in the session's database. Timers are short through the settings the
workflow's policy comes from; every wait is on a condition.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.workflow import UpdateMethodMultiParam

from tests.support.history import accepted_updates, events_naming, update_refusals
from tests.support.journey import account_row, count, eventually, new_user, settled
from tests.support.relay import RelayHandler, relay
from twofa.config import Settings
from twofa.crypto import Keyring
from twofa.policy import Policy
from twofa.service import TwoFactorService
from twofa.store import activation_queries
from twofa.store.db import Database
from twofa.store.models import ActivationDraft, AuditRecord, Device, Session
from twofa.temporal import build_worker
from twofa.workflows.messages import (
    Activation,
    ActorRequest,
    CodeResult,
    CodeSubmission,
    CodeVerdict,
    EnableResult,
    NewCodeRequest,
    Progress,
    TwoFactorInput,
    TwoFactorState,
    workflow_id,
)
from twofa.workflows.two_factor import STATE_KEY, TASK_TIMEOUT, TwoFactorWorkflow

S = TwoFactorState
#: The smallest history bound the settings allow: a few steps continue the workflow as new.
SHORT_HISTORY = 50
#: Deadlines still ahead once a few steps have continued the workflow as new: that takes under
#: half a second on a quiet machine; 10 s leaves a loaded two-core CI machine a wide margin.
AHEAD = 10
LOGIN = "login-digest-of-this-test"  # what the service passes: a login's keyed digest


@dataclass
class Direct:
    """The suite's worker and what a test needs beside it: the client, the store, the keys."""

    client: Client
    settings: Settings
    database: Database
    users: TwoFactorService
    keyring: Keyring

    def policy(self, **timers: float) -> Policy:
        """The policy a workflow gets from these settings with ``timers`` changed."""
        return self.settings.model_copy(update=timers).policy


@pytest.fixture(scope="module")
async def direct(
    client: Client, base_settings: Settings, database: Database
) -> AsyncIterator[Direct]:
    settings = base_settings.model_copy(
        update={"temporal_task_queue": f"direct-{uuid.uuid4().hex[:8]}"}
    )
    async with build_worker(client, settings, database):
        yield Direct(
            client=client,
            settings=settings,
            database=database,
            users=TwoFactorService(settings, database, client),
            keyring=Keyring.of(settings),
        )


@dataclass
class Flow:
    """One account and its workflow, driven as the service drives it, minus the HTTP."""

    direct: Direct
    account_id: str
    email: str
    password: str

    @property
    def handle(self) -> WorkflowHandle[TwoFactorWorkflow, None]:
        """The workflow's latest run: it follows a continue-as-new."""
        return self.direct.client.get_workflow_handle_for(
            TwoFactorWorkflow.run, workflow_id(self.account_id)
        )

    async def enable(self, policy: Policy) -> EnableResult:
        """As ``AccountSettings.enable``: update-with-start, versions going on from the store's."""
        version = (await account_row(self.direct.database, self.account_id)).projection_version
        start = WithStartWorkflowOperation(
            TwoFactorWorkflow.run,
            TwoFactorInput(self.account_id, policy, Progress(version=version)),
            id=workflow_id(self.account_id),
            task_queue=self.direct.settings.temporal_task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            task_timeout=TASK_TIMEOUT,
        )
        return await self.direct.client.execute_update_with_start_workflow(
            TwoFactorWorkflow.enable, start_workflow_operation=start, id=f"enable-{version}"
        )

    async def progress(self) -> Progress:
        return await self.handle.query(TwoFactorWorkflow.progress_now)

    async def state_attribute(self) -> str | None:
        return (await self.handle.describe()).typed_search_attributes.get(STATE_KEY)

    async def stored_state(self) -> str:
        return (await account_row(self.direct.database, self.account_id)).two_factor_state

    async def code(self, number: int | None = None) -> CodeSubmission:
        """The mailed code (number ``number``, by default the last), as the service submits it:
        derived like the mail activity derives it, then keyed."""
        progress = await self.progress()
        code = self.direct.keyring.activation_code(
            progress.enrollment_id, number or progress.code_number
        )
        return CodeSubmission(self.direct.keyring.code_digest(code), login=LOGIN)

    async def submit(self, submission: CodeSubmission) -> CodeResult:
        return await self.handle.execute_update(TwoFactorWorkflow.submit_code, submission)

    async def draft(self) -> str:
        """An activation's PIN, seal and browser drafted in the store, as the service does."""
        draft_id = str(uuid.uuid4())
        keyring = self.direct.keyring
        pin_hash = await asyncio.to_thread(keyring.hash_secret, "27182818")
        async with self.direct.database.write() as db:
            await activation_queries.save_draft(
                db,
                id=draft_id,
                account_id=self.account_id,
                pin_hash=pin_hash,
                seal_ciphertext=keyring.seal("a blue heron"),
                device_name="laptop",
                device_token_digest=keyring.digest("device", f"token-{draft_id}"),
                created_at=datetime.now(UTC),
                pepper_id=keyring.id,
            )
        return draft_id

    async def devices(self) -> int:
        return await count(
            self.direct.database,
            Device,
            Device.account_id == self.account_id,
            Device.revoked_at.is_(None),
        )

    async def drafts(self) -> int:
        return await count(
            self.direct.database, ActivationDraft, ActivationDraft.account_id == self.account_id
        )

    async def settled(self) -> None:
        await settled(self.direct.client, self.account_id)

    async def run_id(self) -> str:
        run_id = (await self.handle.describe()).run_id
        assert run_id is not None
        return run_id


async def registered(direct: Direct) -> Flow:
    user = new_user("direct")
    account = await direct.users.register(user.email, user.password)
    return Flow(direct, account.id, user.email, user.password)


async def pending_code(direct: Direct, **timers: float) -> Flow:
    flow = await registered(direct)
    result = await flow.enable(direct.policy(**timers))
    assert result.code_sent, result
    return flow


async def pending_activation(direct: Direct, **timers: float) -> Flow:
    flow = await pending_code(direct, **timers)
    assert (await flow.submit(await flow.code())).verdict is CodeVerdict.ACCEPTED
    return flow


async def active(direct: Direct, **timers: float) -> Flow:
    flow = await pending_activation(direct, **timers)
    await flow.handle.execute_update(TwoFactorWorkflow.activate, Activation(await flow.draft()))
    return flow


async def locked(direct: Direct, **timers: float) -> tuple[Flow, datetime]:
    """A locked account, and when its lock ends (as the locking answer said)."""
    flow = await active(direct, **timers)
    for _ in range(direct.settings.policy.max_pin_failures):
        verdict = await flow.handle.execute_update(TwoFactorWorkflow.record_pin_failure)
    assert verdict.locked and verdict.locked_until is not None, verdict
    return flow, verdict.locked_until


async def assert_refused(
    flow: Flow, update: UpdateMethodMultiParam[..., Any], *args: Any, reason: str
) -> None:
    """The validator refuses ``update``: no event in history, nothing changed anywhere."""
    before = (await flow.progress(), await flow.stored_state(), await flow.state_attribute())
    row_version = (await account_row(flow.direct.database, flow.account_id)).projection_version
    update_id = f"refused-{uuid.uuid4().hex}"
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await flow.handle.execute_update(update, args=args, id=update_id)
    cause = refused.value.cause
    assert isinstance(cause, ApplicationError), cause
    assert (cause.type, cause.non_retryable) == (reason, True), cause
    events = (await flow.handle.fetch_history()).events
    assert update_id not in accepted_updates(events)
    assert not events_naming(events, update_id), events_naming(events, update_id)
    after = (await flow.progress(), await flow.stored_state(), await flow.state_attribute())
    assert after == before
    assert (await account_row(flow.direct.database, flow.account_id)).projection_version == (
        row_version
    )


# -- validators: a request the state does not allow is refused before it reaches history

#: No timer fires while a test compares the before and after of a refusal.
QUIET = {"auto_logout_seconds": 600, "pin_lock_seconds": 600}


async def test_pending_code_refuses_every_step_but_a_code(direct: Direct) -> None:
    flow = await pending_code(direct, **QUIET)
    assert await flow.state_attribute() == S.PENDING_CODE
    await assert_refused(flow, TwoFactorWorkflow.enable, reason="already_enabled")
    await assert_refused(
        flow,
        TwoFactorWorkflow.activate,
        Activation(str(uuid.uuid4())),
        reason="not_pending_activation",
    )
    await assert_refused(flow, TwoFactorWorkflow.record_pin_failure, reason="not_active")
    await assert_refused(flow, TwoFactorWorkflow.record_pin_success, reason="not_active")
    await assert_refused(
        flow, TwoFactorWorkflow.unlock, ActorRequest("admin:x@ops.example.com"), reason="not_locked"
    )


async def test_pending_activation_refuses_codes_and_pins(direct: Direct) -> None:
    flow = await pending_activation(direct, **QUIET)
    other_login = replace(await flow.code(), login="another-login")
    await assert_refused(
        flow, TwoFactorWorkflow.submit_code, other_login, reason="no_code_expected"
    )
    await assert_refused(
        flow, TwoFactorWorkflow.issue_new_code, NewCodeRequest(), reason="no_code_expected"
    )
    await assert_refused(flow, TwoFactorWorkflow.record_pin_failure, reason="not_active")
    # the login whose code was accepted hears so again (S9): that one is not refused
    assert (await flow.submit(await flow.code())).verdict is CodeVerdict.ACCEPTED


async def test_active_refuses_a_second_activation_and_an_unlock(direct: Direct) -> None:
    flow = await active(direct, **QUIET)
    await assert_refused(
        flow,
        TwoFactorWorkflow.activate,
        Activation(await flow.draft()),
        reason="not_pending_activation",
    )
    await assert_refused(flow, TwoFactorWorkflow.unlock, ActorRequest(), reason="not_locked")
    await assert_refused(flow, TwoFactorWorkflow.enable, reason="already_enabled")


async def test_locked_refuses_a_right_pin_and_a_new_code(direct: Direct) -> None:
    flow, _ = await locked(direct, **QUIET)
    assert await flow.state_attribute() == S.LOCKED
    await assert_refused(flow, TwoFactorWorkflow.record_pin_success, reason="not_active")
    await assert_refused(
        flow, TwoFactorWorkflow.issue_new_code, NewCodeRequest(), reason="no_code_expected"
    )
    await assert_refused(
        flow,
        TwoFactorWorkflow.activate,
        Activation(await flow.draft()),
        reason="not_pending_activation",
    )
    # a wrong PIN meanwhile is answered "locked", and counts nothing
    before = await flow.progress()
    verdict = await flow.handle.execute_update(TwoFactorWorkflow.record_pin_failure)
    assert (verdict.locked, verdict.attempts_left) == (True, 0), verdict
    assert verdict.locked_until == before.locked_until
    assert await flow.progress() == before


# -- timers: each fires at its due time, in the workflow and in the store


def read_before(deadline: datetime) -> bool:
    """What a test read just now was read before ``deadline``: only then must it show the state
    before that deadline's timer. The timers here are short, and a loaded machine may take longer
    than them between the step and the read; after the deadline either state is right."""
    return datetime.now(UTC) < deadline


async def test_auto_logout_ends_the_sessions_opened_before_the_enable(direct: Direct) -> None:
    """R3: the enable caps every open session at ``auto_logout_at``; the timer then ends them."""
    flow = await registered(direct)
    login = await direct.users.login(flow.email, flow.password, None)
    assert login.session_token
    result = await flow.enable(direct.policy(auto_logout_seconds=1))

    async def sessions() -> list[Session]:
        async with direct.database.read() as db:
            rows = await db.scalars(select(Session).where(Session.account_id == flow.account_id))
            return list(rows.all())

    [session] = await sessions()
    assert session.expires_at == result.auto_logout_at
    done = (await flow.progress()).auto_logout_done
    assert not (done and read_before(result.auto_logout_at)), "the auto-logout ran early"

    async def ended() -> bool:
        return all(s.ended_at is not None for s in await sessions())

    await eventually(ended, "the auto-logout to end the session")
    [session] = await sessions()
    assert session.end_reason == "auto_logout"
    assert session.ended_at is not None and session.ended_at >= result.auto_logout_at
    assert (await flow.progress()).auto_logout_done
    assert await flow.stored_state() == S.PENDING_CODE  # the logout is no state change


async def test_an_expired_code_stops_working_and_a_new_one_replaces_it(direct: Direct) -> None:
    """R4: at its expiry the code stops working (state unchanged); a new one works, the old
    one never again."""
    flow = await pending_code(direct, code_ttl_seconds=2.5)
    first = await flow.code()
    expires_at = (await flow.progress()).code_expires_at
    assert expires_at is not None
    usable = (await account_row(direct.database, flow.account_id)).code_usable
    assert usable or not read_before(expires_at), "the code stopped working before its expiry"

    async def burned() -> bool:
        return not (await account_row(direct.database, flow.account_id)).code_usable

    await eventually(burned, "the code's expiry")
    account = await account_row(direct.database, flow.account_id)
    assert account.updated_at >= expires_at
    assert (account.two_factor_state, await flow.state_attribute()) == (S.PENDING_CODE,) * 2
    progress = await flow.progress()
    assert (progress.state, progress.code_digest) == (S.PENDING_CODE, None)
    assert (await flow.submit(first)).verdict is CodeVerdict.EXPIRED

    renewed = await flow.handle.execute_update(TwoFactorWorkflow.issue_new_code, NewCodeRequest())
    assert renewed.code_sent and renewed.code_expires_at > expires_at, renewed
    assert (await account_row(direct.database, flow.account_id)).code_usable
    assert (await flow.submit(first)).verdict is CodeVerdict.INVALID
    assert (await flow.submit(await flow.code())).verdict is CodeVerdict.ACCEPTED
    assert await flow.stored_state() == S.PENDING_ACTIVATION


async def test_a_pin_lock_ends_at_its_due_time(direct: Direct) -> None:
    """S2: the fifth wrong PIN locks for the policy's time; the timer then unlocks, and the
    lock still counts toward the admin lock."""
    flow, locked_until = await locked(direct, pin_lock_seconds=1.5)
    account = await account_row(direct.database, flow.account_id)
    attribute = await flow.state_attribute()
    if read_before(locked_until):
        assert (account.two_factor_state, account.locked_until) == (S.LOCKED, locked_until)
        assert attribute == S.LOCKED

    async def unlocked() -> bool:
        return await flow.stored_state() == S.ACTIVE

    await eventually(unlocked, "the lock's end")
    account = await account_row(direct.database, flow.account_id)
    assert (account.locked_until, account.pin_failures, account.pin_locks_in_a_row) == (None, 0, 1)
    progress = await flow.progress()
    assert (progress.state, progress.locked_until, progress.locks_in_a_row) == (S.ACTIVE, None, 1)
    assert await flow.state_attribute() == S.ACTIVE
    async with direct.database.read() as db:
        record = await db.scalar(
            select(AuditRecord).where(
                AuditRecord.account_id == flow.account_id,
                AuditRecord.event == "two_factor_unlocked",
            )
        )
    assert record is not None and record.actor == "system", record
    assert record.at >= locked_until


# -- continue-as-new: a long life goes on in a new run with its state and its deadlines


async def continued(flow: Flow, step: Callable[[], Awaitable[object]]) -> TwoFactorInput:
    """Repeats ``step`` until the workflow continues as new; returns what the old run handed
    the new one (its ContinuedAsNew event's input)."""
    first_run = await flow.run_id()
    for _ in range(SHORT_HISTORY):  # each step adds events: the bound is reached before this
        await step()
        await flow.settled()
        if await flow.run_id() != first_run:
            break
    else:
        pytest.fail(f"no continue-as-new within {SHORT_HISTORY} steps")
    client = flow.direct.client
    old = await client.get_workflow_handle(
        workflow_id(flow.account_id), run_id=first_run
    ).fetch_history()
    closing = old.events[-1]
    assert closing.HasField("workflow_execution_continued_as_new_event_attributes"), closing
    payloads = closing.workflow_execution_continued_as_new_event_attributes.input.payloads
    [handed] = await client.data_converter.decode(payloads, [TwoFactorInput])
    assert isinstance(handed, TwoFactorInput)
    return handed


async def test_continue_as_new_keeps_the_auto_logout_and_the_code_expiry(direct: Direct) -> None:
    flow = await registered(direct)
    await direct.users.login(flow.email, flow.password, None)
    policy = direct.policy(
        history_event_limit=SHORT_HISTORY, auto_logout_seconds=AHEAD, code_ttl_seconds=AHEAD
    )
    enabled = await flow.enable(policy)

    async def new_code() -> None:
        await flow.handle.execute_update(TwoFactorWorkflow.issue_new_code, NewCodeRequest())

    handed = await continued(flow, new_code)
    carried = handed.progress
    assert carried is not None and handed.policy == policy
    # both deadlines were still ahead when the old run closed, so the new run owns them
    assert (carried.state, carried.auto_logout_done) == (S.PENDING_CODE, False)
    assert carried.auto_logout_at == enabled.auto_logout_at
    assert carried.code_digest is not None and carried.code_expires_at is not None
    assert await flow.progress() == carried
    assert await flow.state_attribute() == S.PENDING_CODE

    async def logged_out_and_burned() -> bool:
        sessions = await count(
            direct.database,
            Session,
            Session.account_id == flow.account_id,
            Session.ended_at.is_(None),
        )
        row = await account_row(direct.database, flow.account_id)
        return sessions == 0 and not row.code_usable

    await eventually(logged_out_and_burned, "the new run's auto-logout and code expiry")
    progress = await flow.progress()
    assert (progress.auto_logout_done, progress.code_digest) == (True, None)
    assert progress.code_number == carried.code_number
    assert await flow.stored_state() == S.PENDING_CODE


async def test_continue_as_new_keeps_a_lock_and_ends_it_on_time(direct: Direct) -> None:
    flow, _ = await locked(
        direct, history_event_limit=SHORT_HISTORY, pin_lock_seconds=AHEAD, auto_logout_seconds=600
    )
    locked_since = await flow.progress()

    async def wrong_pin() -> None:
        await flow.handle.execute_update(TwoFactorWorkflow.record_pin_failure)

    handed = await continued(flow, wrong_pin)
    assert handed.progress == locked_since
    assert locked_since.locked_until is not None
    assert await flow.state_attribute() == S.LOCKED
    # the new run counts on: still locked, then unlocked by its own timer
    assert await flow.stored_state() == S.LOCKED

    # the store, not the query: the run moves to ACTIVE before its projection is written
    async def unlocked() -> bool:
        return await flow.stored_state() == S.ACTIVE

    await eventually(unlocked, "the new run to end the lock")
    account = await account_row(direct.database, flow.account_id)
    assert account.pin_locks_in_a_row == 1
    assert account.updated_at >= locked_since.locked_until
    assert (await flow.progress()).state is S.ACTIVE


# -- permanent failures: an effect that cannot succeed is not retried, and the user goes on


async def refused_activation(flow: Flow, activation: Activation, reason: str) -> None:
    """The activation's effect fails for good: the update answers ``reason`` (no retry loop
    holds it), and the user is back at the activation step, in the workflow and the store."""
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await flow.handle.execute_update(TwoFactorWorkflow.activate, activation)
    cause = refused.value.cause
    assert isinstance(cause, ApplicationError), cause
    assert (cause.type, cause.non_retryable) == (reason, True), cause
    await flow.settled()
    assert update_refusals((await flow.handle.fetch_history()).events) == [reason]
    assert (await flow.progress()).state is S.PENDING_ACTIVATION
    assert await flow.stored_state() == S.PENDING_ACTIVATION
    assert await flow.state_attribute() == S.PENDING_ACTIVATION
    assert await flow.devices() == 0


async def test_an_activation_whose_draft_is_gone_lets_the_user_activate_again(
    direct: Direct,
) -> None:
    flow = await pending_activation(direct, **QUIET)
    await refused_activation(flow, Activation(str(uuid.uuid4())), "activation_draft_gone")

    draft_id = await flow.draft()
    result = await flow.handle.execute_update(TwoFactorWorkflow.activate, Activation(draft_id))
    assert result.device_id == draft_id
    assert (await flow.stored_state(), await flow.state_attribute()) == (S.ACTIVE, S.ACTIVE)
    assert (await flow.devices(), await flow.drafts()) == (1, 0)


async def test_an_activation_whose_new_email_was_taken_meanwhile_can_take_another(
    direct: Direct,
) -> None:
    """The race the service's own check cannot close: another account holds the new email by
    the time the workflow applies the activation. Nothing of it is applied, the draft stays."""
    flow = await pending_activation(direct, **QUIET)
    holder = await registered(direct)
    draft_id = await flow.draft()
    await refused_activation(flow, Activation(draft_id, email=holder.email), "email_taken")
    assert (await account_row(direct.database, flow.account_id)).email == flow.email
    assert await flow.drafts() == 1

    new_email = new_user("direct-new").email
    await flow.handle.execute_update(TwoFactorWorkflow.activate, Activation(draft_id, new_email))
    account = await account_row(direct.database, flow.account_id)
    assert (account.email, account.two_factor_state) == (new_email, S.ACTIVE)
    assert (await flow.devices(), await flow.drafts()) == (1, 0)
    assert (await account_row(direct.database, holder.account_id)).email == holder.email


# -- a mail the relay keeps refusing "for now": retried beside the steps, never across runs


async def test_a_long_history_waits_for_no_mail_retry_and_continues_once_the_code_expires(
    client: Client, base_settings: Settings, database: Database
) -> None:
    """The mail's retries live in their run: with the history past its bound, the run goes on
    (its deadlines too) while a code's mail is retried, and continues as new once the code's
    expiry has called the retries off, never carrying a mail it would forget."""
    handler = RelayHandler(refuse={"RCPT": "451 4.3.0 try again later"})
    with relay(handler) as port:
        settings = base_settings.model_copy(
            update={"temporal_task_queue": f"busy-{uuid.uuid4().hex[:8]}", "smtp_port": port}
        )
        async with build_worker(client, settings, database):
            own = Direct(
                client, settings, database, TwoFactorService(settings, database, client),
                Keyring.of(settings),
            )  # fmt: skip
            flow = await registered(own)
            policy = own.policy(
                history_event_limit=SHORT_HISTORY, code_ttl_seconds=AHEAD, auto_logout_seconds=600
            )
            assert (await flow.enable(policy)).code_sent
            first_run = await flow.run_id()
            # each new code's first try fails and leaves its mail to retry, calling off the last
            for _ in range(SHORT_HISTORY):
                if len((await flow.handle.fetch_history()).events) >= SHORT_HISTORY:
                    break
                issuing = flow.handle.execute_update(
                    TwoFactorWorkflow.issue_new_code, NewCodeRequest()
                )
                await asyncio.wait_for(issuing, AHEAD)  # a run that spins never answers
                assert await flow.run_id() == first_run, "a new run while a mail was retried"
            issued = await flow.progress()
            assert issued.code_digest is not None and issued.code_expires_at is not None
            assert await flow.run_id() == first_run
            [mail] = (await flow.handle.describe()).raw_description.pending_activities
            assert mail.activity_type.name == "send_activation_code"

            async def continued_as_new() -> bool:
                return await flow.run_id() != first_run

            await eventually(continued_as_new, "a new run once the code has expired", AHEAD * 3)
            carried = await flow.progress()
            assert carried.code_number == issued.code_number and carried.code_digest is None
            assert datetime.now(UTC) >= issued.code_expires_at
            old = await client.get_workflow_handle(
                workflow_id(flow.account_id), run_id=first_run
            ).fetch_history()
            called_off = [
                e
                for e in old.events
                if e.HasField("activity_task_cancel_requested_event_attributes")
            ]
            assert len(called_off) == issued.code_number  # each replaced, the last expired
            assert not (await flow.handle.describe()).raw_description.pending_activities
            assert handler.accepted == []
