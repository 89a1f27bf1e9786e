"""The signed-in user's session, 2FA settings and trusted browsers, and the service's health."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from temporalio.client import (
    WithStartWorkflowOperation,
    WorkflowUpdateFailedError,
    WorkflowUpdateHandle,
)
from temporalio.common import WorkflowIDConflictPolicy

from twofa import audit, errors
from twofa.activities.effects import disable_in_store
from twofa.errors import ServiceError
from twofa.policy import RuleViolation, check_two_factor_email
from twofa.service.core import CurrentSession, ServiceCore, state_of, utcnow
from twofa.store import account_queries, device_queries, pepper_queries, session_queries
from twofa.store.models import Account, Session
from twofa.store.session_queries import KEPT_FOR_DISABLE
from twofa.views import DeviceView, DisabledView, EnabledView, SessionView, TwoFactorView
from twofa.vocabulary import TwoFactorState as S
from twofa.workflows.messages import ActorRequest, Progress, Projection, TwoFactorInput, workflow_id
from twofa.workflows.two_factor import TASK_TIMEOUT, TwoFactorWorkflow

log = logging.getLogger(__name__)
#: The states in which every session comes from a trusted browser.
ON = (S.ACTIVE, S.LOCKED)


async def _read_start_outcome(start: WithStartWorkflowOperation[Any, Any]) -> None:
    """The start's own outcome, which the SDK settles when an update-with-start fails: left
    unread, it is logged as "Future exception was never retrieved" (an error with a traceback,
    for every 503) once collected."""
    try:
        async with asyncio.timeout(1):  # settled already: this does not wait
            await start.workflow_handle()
    except asyncio.CancelledError:  # the outcome of a call cancelled by its timeout
        task = asyncio.current_task()
        if task is not None and task.cancelling():  # this request is being cancelled itself
            raise
    except Exception:  # the start's failure: the update's has been answered already
        pass


async def _ended(update: WorkflowUpdateHandle[Any]) -> None:
    """Until ``update`` has ended, whether it succeeded or failed (a failed enable may still
    have changed the state: the workflow's disable then tells)."""
    with contextlib.suppress(WorkflowUpdateFailedError):
        await update.result()


def enable_update_id(version: int) -> str:
    """The enable's update id: the last disable's projection version names the enrollment, so
    a repeat before its first state change lands gets the first request's answer from the
    server, and a disable meanwhile finds it."""
    return f"enable-{version}"


class AccountSettings(ServiceCore):
    """What a signed-in user does: 2FA on and off (R1, R3, R10), browsers (R11), logout."""

    async def current_session(
        self, session_token: str | None, *, repeating_disable: bool = False
    ) -> CurrentSession:
        """The open session of ``session_token``. One kept for a disable that has not taken
        effect yet serves only that disable's repeat (``repeating_disable``, S9)."""
        if not session_token:
            raise errors.SESSION_ENDED()
        digests = self.keyring.digests("session", session_token)
        async with self.db.read() as db:
            found = await session_queries.open_session_and_account(db, digests, utcnow())
        if found is None:
            raise errors.SESSION_ENDED()
        session, account = found
        kept = session.end_reason == KEPT_FOR_DISABLE and account.two_factor_state in ON
        if kept and not repeating_disable:
            # its disable has not taken effect: with 2FA on, only a trusted browser's session
            raise errors.SESSION_ENDED()
        if session.token_digest != digests[0]:  # made under a previous pepper: digested anew
            async with self.db.write() as db:
                await pepper_queries.redigest(db, Session, session.id, digests[0], self.keyring.id)
        return CurrentSession(session=session, account=account)

    async def session_for_enable(self, session_token: str | None) -> CurrentSession:
        """The caller's session, or the one its own enable ended: that enable may be repeated.

        A caller whose enable answered 503 repeats it (S9), but the API waited on the workflow
        longer than the auto-logout, so by then that very enable has cut the session (R3). Such
        a session still gets the enable's own answer, and nothing else: ``enable`` only returns
        that enrollment's times, and a session cut by an earlier enrollment does not qualify.
        """
        try:
            return await self.current_session(session_token)
        except ServiceError:
            if not session_token:
                raise
            async with self.db.read() as db:
                cut = await session_queries.session_cut_by_enable(
                    db, self.keyring.digests("session", session_token)
                )
            if cut is None:
                raise
            return CurrentSession(session=cut[0], account=cut[1])

    def session_view(self, current: CurrentSession) -> SessionView:
        return SessionView(
            account_id=current.account.id,
            email=current.account.email,
            expires_at=current.session.expires_at,
        )

    async def logout(self, current: CurrentSession) -> None:
        """The "Auto-logout" button: this session ends now (R3)."""
        async with self.db.write() as db:
            session = await db.get(Session, current.session.id)
            if session is not None and session.ended_at is None:
                session.ended_at = utcnow()
                session.end_reason = "logout"
                await audit.append(db, "logged_out", account_id=session.account_id, actor="user")

    async def two_factor(self, current: CurrentSession) -> TwoFactorView:
        account, now = current.account, utcnow()
        state = state_of(account, now)
        pending = state in (S.PENDING_CODE, S.PENDING_ACTIVATION)
        return TwoFactorView(
            state=state,
            code_expires_at=account.code_expires_at if state is S.PENDING_CODE else None,
            auto_logout_at=account.auto_logout_at if pending else None,
            locked_until=account.locked_until if state is S.LOCKED else None,
            devices=await self.devices(account.id),
        )

    async def enable(self, current: CurrentSession) -> EnabledView:
        """R1, R2, R3: start the account's workflow, which mails the code and plans the logout."""
        account = current.account
        if account.two_factor_state == S.PENDING_CODE and account.auto_logout_at:
            # a repeat whose first answer was lost, or a double click: that enable's answer (S9)
            assert account.code_expires_at is not None
            return EnabledView(
                auto_logout_at=account.auto_logout_at, code_expires_at=account.code_expires_at
            )
        if account.two_factor_state != S.DISABLED:
            raise errors.ALREADY_ENABLED()
        try:
            check_two_factor_email(account.email)
        except RuleViolation as error:
            raise errors.rule_refused(error) from None
        start = WithStartWorkflowOperation(
            TwoFactorWorkflow.run,
            TwoFactorInput(
                account_id=account.id,
                policy=self.policy,
                # versions go on from the last run's, so its projections are not taken as stale
                progress=Progress(version=account.projection_version),
            ),
            id=workflow_id(account.id),
            task_queue=self.settings.temporal_task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            task_timeout=TASK_TIMEOUT,
        )
        try:
            result = await self._call(
                self.client.execute_update_with_start_workflow(
                    TwoFactorWorkflow.enable,
                    start_workflow_operation=start,
                    id=enable_update_id(account.projection_version),
                )
            )
        except ServiceError as error:
            await _read_start_outcome(start)
            if error.code != errors.NOT_ENABLED.code:
                raise
            # the run closed under the enable (an operator terminated it): a repeat starts anew
            raise errors.UNAVAILABLE() from None
        log.info("2FA enabled for account %s", account.id)
        return EnabledView(
            auto_logout_at=result.auto_logout_at, code_expires_at=result.code_expires_at
        )

    async def disable(
        self,
        account: Account,
        confirm: bool,
        actor: str = "user",
        *,
        keep: Session | None = None,
    ) -> DisabledView:
        """R10: only with an explicit confirmation; every trusted browser goes with it.

        ``keep``: the session of the user who said Yes, which stays open (no longer tied to a
        browser); every other session a trusted browser opened ends with its browser. It is
        untied first, so the revocation never ends it: a caller repeating the disable after a
        503 or a lost answer still holds it, and gets 2FA disabled (S9). Until the disable takes
        effect, that session serves nothing else (see ``current_session``).
        """
        if not confirm:
            raise errors.CONFIRMATION_REQUIRED()
        if account.two_factor_state == S.DISABLED and not await self._enable_under_way(account):
            return DisabledView(revoked_devices=0)
        if keep is not None:
            await self._keep_session(keep)
        try:
            result = await self.call_workflow(
                account.id, TwoFactorWorkflow.disable, ActorRequest(actor=actor)
            )
            revoked = result.revoked_devices
        except ServiceError as error:
            if error.code != errors.NOT_ENABLED.code:
                raise
            revoked = await self._disable_without_workflow(account, actor)
        log.info("2FA disabled for account %s by %s", account.id, actor)
        return DisabledView(revoked_devices=revoked)

    async def _enable_under_way(self, account: Account) -> bool:
        """2FA off in the store, and maybe an enable under way (its worker away, its mail held
        at a slow relay) that would turn it on after this disable answered "disabled". Its
        update, named by the store's projection version, is waited for until it lands (then
        the workflow disables, so the last request wins), up to the call's timeout (503: the
        caller repeats, S9). False when there is none: no run, no such update, or its run
        closed under it."""
        enable = self.client.get_workflow_handle(workflow_id(account.id)).get_update_handle(
            enable_update_id(account.projection_version)
        )
        try:
            await self._call(_ended(enable))
        except ServiceError as error:
            if error.code == errors.NOT_ENABLED.code:
                return False
            raise
        return True

    async def _disable_without_workflow(self, account: Account, actor: str) -> int:
        """The store says 2FA is on but no workflow runs to turn it off (it ended or was
        terminated by an operator): the same writes as the workflow's, or none if a repeat
        finds them done."""
        async with self.db.write() as db:
            current = await account_queries.account_by_id(db, account.id)
            if current is None or current.two_factor_state == S.DISABLED:
                return 0
            projection = Projection(
                account_id=account.id,
                state=S.DISABLED,
                version=current.projection_version + 1,
                actor=actor,
            )
            return await disable_in_store(db, projection)

    async def _keep_session(self, kept: Session) -> None:
        """Unties the session from its browser, whose revocation would end it, and marks it
        kept for the disable it asked for."""
        async with self.db.write() as db:
            session = await db.get(Session, kept.id)
            if session is None or session.device_id is None or session.ended_at is not None:
                return
            session.device_id, session.end_reason = None, KEPT_FOR_DISABLE
            await audit.append(
                db, "session_kept", account_id=session.account_id, actor="user", reason="disable"
            )

    async def devices(self, account_id: str) -> list[DeviceView]:
        async with self.db.read() as db:
            devices = await device_queries.active_devices(db, account_id)
        return [
            DeviceView(id=d.id, name=d.name, enrolled_at=d.enrolled_at, last_used_at=d.last_used_at)
            for d in devices
        ]

    async def delete_device(self, current: CurrentSession, device_id: str) -> None:
        """R11: one browser goes; the others keep working."""
        await self.revoke_one_device(current.account.id, device_id, actor="user", reason="user")

    async def revoke_one_device(
        self, account_id: str, device_id: str, *, actor: str, reason: str
    ) -> None:
        """One browser of the account revoked, by its user or an admin (R11). A browser of the
        account already gone (the request repeated after a lost answer, S9) answers as its
        revocation did; 404 only for an id that never named one of the account's browsers."""
        async with self.db.write() as db:
            revoked = await device_queries.revoke_devices(
                db, account_id, utcnow(), actor=actor, reason=reason, device_id=device_id
            )
            if not revoked and not await device_queries.revoked_device(db, account_id, device_id):
                raise errors.DEVICE_NOT_FOUND()
        if revoked:
            log.info("device %s of account %s revoked by %s", device_id, account_id, actor)

    async def health(self) -> dict[str, bool]:
        checks = {"database": False, "temporal": False}
        try:
            await self.db.answers()
            checks["database"] = True
        except Exception:
            log.exception("health: database does not answer")
        try:
            checks["temporal"] = await asyncio.wait_for(
                self.client.service_client.check_health(), timeout=5
            )
        except Exception:
            log.exception("health: Temporal does not answer")
        return checks
