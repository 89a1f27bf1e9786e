"""One workflow per account's 2FA life: ``two-factor-<account id>``, from enable to disable."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from dataclasses import replace
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from twofa.activities.effects import Effects
    from twofa.workflows.effect_calls import (
        first_mail_try,
        is_permanent,
        mail_code,
        refusal,
        run_effect,
        start_mail_retries,
    )
    from twofa.workflows.messages import (
        STATE_SEARCH_ATTRIBUTE,
        Activation,
        ActivationEffect,
        ActivationResult,
        ActorRequest,
        CodeMail,
        CodeResult,
        CodeSubmission,
        CodeVerdict,
        DisableEffect,
        DisableResult,
        EnableResult,
        NewCodeRequest,
        NewCodeResult,
        PinFailureResult,
        Progress,
        Projection,
        SessionCut,
        TwoFactorInput,
        TwoFactorState,
    )
    from twofa.workflows.patches import (
        PATCH_ACTIVATION_REFUSAL,
        PATCH_DUE_LOCK_ENDS_FIRST,
        PATCH_EARLIER_CUT_STANDS,
        PATCH_MAIL_REFUSAL,
        PATCH_MAIL_RETRIED_AFTER_THE_STEP,
        PATCH_REPEATED_CODE,
    )

S = TwoFactorState
STATE_KEY = SearchAttributeKey.for_keyword(STATE_SEARCH_ATTRIBUTE)
#: A start option (not a command): how long a workflow task held by a dead worker waits before
#: another worker may take it. The database effects run inside workflow tasks (local
#: activities), so this bounds a step's stall after a worker SIGKILL; the SDK heartbeats a task
#: whose local activity runs longer, so a slow database does not hit it.
TASK_TIMEOUT = timedelta(seconds=4)

ENABLED = (S.PENDING_CODE, S.PENDING_ACTIVATION, S.ACTIVE, S.LOCKED)
EXPECTING_CODE = (S.PENDING_CODE, S.ACTIVE)


@workflow.defn(name="TwoFactor")
class TwoFactorWorkflow:
    @workflow.init
    def __init__(self, input: TwoFactorInput) -> None:
        self.account_id = input.account_id
        self.policy = input.policy
        self.progress = input.progress or Progress()
        self._lock = asyncio.Lock()
        self._mails_retried: set[asyncio.Task[None]] = set()

    @workflow.run
    async def run(self, input: TwoFactorInput) -> None:
        while True:
            seen = self.progress.version
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda seen=seen: self.progress.version != seen or self._should_leave(),
                    timeout=self._time_to_deadline(),
                )
            async with self._lock:
                await self._on_deadlines()
            if self.progress.state is S.DISABLED or self._may_continue_as_new():
                # handlers finish first: an answered request is never cut off by the end; so do
                # a mail's retries, which the disable has called off
                await workflow.wait_condition(
                    lambda: (
                        workflow.all_handlers_finished()
                        and (self.progress.state is not S.DISABLED or not self._mailing())
                    )
                )
                if self.progress.state is S.DISABLED:
                    return
                if self._mailing():
                    continue  # a step meanwhile left a mail to retry, which a new run would not
                workflow.continue_as_new(replace(input, progress=self.progress))

    # -- updates: request/response steps; validators keep refused requests out of history

    @workflow.update
    async def enable(self) -> EnableResult:
        async with self._lock:
            self._require(S.NEW, reason="already_enabled")
            p = self.progress
            now = workflow.now()
            p.enrollment_id = str(workflow.uuid4())
            p.enabled_at = now
            p.auto_logout_at = now + timedelta(seconds=self.policy.auto_logout_seconds)
            cut = SessionCut(self.account_id, p.auto_logout_at, now)
            in_force = await run_effect(Effects.limit_sessions, cut)
            if workflow.patched(PATCH_EARLIER_CUT_STANDS):
                # a try of this enable whose worker died cut the sessions earlier: the answer
                # and the timer keep to that cut (R3)
                p.auto_logout_at = in_force or p.auto_logout_at
            await self._issue_code()
            await self._move_to(S.PENDING_CODE)
            assert p.code_expires_at is not None
            return EnableResult(
                auto_logout_at=p.auto_logout_at,
                code_expires_at=p.code_expires_at,
                code_sent=p.code_digest is not None,
            )

    @enable.validator
    def _validate_enable(self) -> None:
        self._require(S.NEW, reason="already_enabled")

    @workflow.update
    async def issue_new_code(self, request: NewCodeRequest) -> NewCodeResult:
        async with self._lock:
            self._require(*EXPECTING_CODE, reason="no_code_expected")
            p = self.progress
            if request.reuse_fresh and self._code_usable() and p.code_expires_at is not None:
                return NewCodeResult(code_expires_at=p.code_expires_at, code_sent=False)
            await self._issue_code()
            await self._project()
            assert p.code_expires_at is not None
            sent = p.code_digest is not None
            return NewCodeResult(
                code_expires_at=p.code_expires_at, code_sent=sent, refused=not sent
            )

    @issue_new_code.validator
    def _validate_issue_new_code(self, request: NewCodeRequest) -> None:
        self._require(*EXPECTING_CODE, reason="no_code_expected")

    @workflow.update
    async def submit_code(self, submission: CodeSubmission) -> CodeResult:
        async with self._lock:
            p = self.progress
            if self._accepted_before(submission) and workflow.patched(PATCH_REPEATED_CODE):
                return CodeResult(CodeVerdict.ACCEPTED)  # a repeat after a lost answer (S9)
            self._require(*EXPECTING_CODE, S.LOCKED, reason="no_code_expected")
            if p.state is S.LOCKED:
                return CodeResult(CodeVerdict.LOCKED, locked_until=p.locked_until)
            if not self._code_usable():
                await self._burn_code()
                return CodeResult(CodeVerdict.EXPIRED)
            assert p.code_digest is not None
            if hmac.compare_digest(p.code_digest, submission.code_digest):
                p.code_digest = None
                p.code_accepted_for = submission.login
                await self._move_to(S.PENDING_ACTIVATION if p.state is S.PENDING_CODE else p.state)
                return CodeResult(CodeVerdict.ACCEPTED)
            p.code_failures += 1
            attempts_left = max(self.policy.max_code_failures - p.code_failures, 0)
            if attempts_left == 0:
                await self._burn_code()
            return CodeResult(CodeVerdict.INVALID, attempts_left=attempts_left)

    @submit_code.validator
    def _validate_submit_code(self, submission: CodeSubmission) -> None:
        if not self._accepted_before(submission):
            self._require(*EXPECTING_CODE, S.LOCKED, reason="no_code_expected")

    def _accepted_before(self, submission: CodeSubmission) -> bool:
        """This login's code was accepted already, and nothing has happened since."""
        p = self.progress
        return (
            bool(submission.login)
            and submission.login == p.code_accepted_for
            and p.state in (S.PENDING_ACTIVATION, S.ACTIVE)
        )

    @workflow.update
    async def activate(self, activation: Activation) -> ActivationResult:
        async with self._lock:
            self._require(S.PENDING_ACTIVATION, reason="not_pending_activation")
            p = self.progress
            p.state = S.ACTIVE
            p.code_digest = None
            p.code_expires_at = None
            try:
                effect = ActivationEffect(
                    self._next_projection(), activation.draft_id, activation.email
                )
                device_id: str = await run_effect(Effects.apply_activation, effect)
            except (ActivityError, ApplicationError) as failure:  # remote, local
                if not workflow.patched(PATCH_ACTIVATION_REFUSAL):
                    raise
                # refused for good (the email taken meanwhile, the draft gone): nothing was
                # applied, so the user is still where they were and can activate again (S9)
                p.state = S.PENDING_ACTIVATION
                raise refusal(failure) from None
            self._publish_state()
            return ActivationResult(device_id=device_id)

    @activate.validator
    def _validate_activate(self, activation: Activation) -> None:
        self._require(S.PENDING_ACTIVATION, reason="not_pending_activation")

    @workflow.update
    async def record_pin_failure(self) -> PinFailureResult:
        async with self._lock:
            await self._end_lock_if_due()
            self._require(S.ACTIVE, S.LOCKED, reason="not_active")
            p = self.progress
            if p.state is S.LOCKED:
                return PinFailureResult(attempts_left=0, locked=True, locked_until=p.locked_until)
            p.pin_failures += 1
            attempts_left = max(self.policy.max_pin_failures - p.pin_failures, 0)
            if attempts_left:
                await self._project()
                return PinFailureResult(attempts_left=attempts_left, locked=False)
            p.pin_failures = 0
            p.locks_in_a_row += 1
            p.code_digest = None
            if p.locks_in_a_row >= self.policy.locks_before_admin_unlock:
                p.locked_until = None  # held until an admin unlocks it
            else:
                p.locked_until = workflow.now() + timedelta(seconds=self.policy.pin_lock_seconds)
            await self._move_to(S.LOCKED)
            return PinFailureResult(attempts_left=0, locked=True, locked_until=p.locked_until)

    @record_pin_failure.validator
    def _validate_record_pin_failure(self) -> None:
        self._require(S.ACTIVE, S.LOCKED, reason="not_active")

    @workflow.update
    async def record_pin_success(self) -> None:
        async with self._lock:
            await self._end_lock_if_due()
            self._require(S.ACTIVE, reason="not_active")
            self.progress.pin_failures = 0
            self.progress.locks_in_a_row = 0
            await self._project()

    @record_pin_success.validator
    def _validate_record_pin_success(self) -> None:
        if not self._lock_is_due():
            self._require(S.ACTIVE, reason="not_active")

    @workflow.update
    async def unlock(self, request: ActorRequest) -> None:
        async with self._lock:
            self._require(S.LOCKED, reason="not_locked")
            self._unlock()
            self.progress.locks_in_a_row = 0
            await self._move_to(S.ACTIVE, actor=request.actor)

    @unlock.validator
    def _validate_unlock(self, request: ActorRequest) -> None:
        self._require(S.LOCKED, reason="not_locked")

    @workflow.update
    async def disable(self, request: ActorRequest) -> DisableResult:
        async with self._lock:
            self._require(*ENABLED, reason="not_enabled")
            self.progress = Progress(state=S.DISABLED, version=self.progress.version)
            revoked: int = await run_effect(
                Effects.apply_disable, DisableEffect(self._next_projection(actor=request.actor))
            )
            self._publish_state()
            return DisableResult(revoked_devices=revoked)

    @disable.validator
    def _validate_disable(self, request: ActorRequest) -> None:
        self._require(*ENABLED, reason="not_enabled")

    @workflow.query
    def progress_now(self) -> Progress:
        return self.progress

    # -- timers

    def _deadlines(self) -> list[datetime]:
        p = self.progress
        deadlines = []
        if p.auto_logout_at and not p.auto_logout_done:
            deadlines.append(p.auto_logout_at)
        if p.code_digest and p.code_expires_at:
            deadlines.append(p.code_expires_at)
        if p.state is S.LOCKED and p.locked_until:
            deadlines.append(p.locked_until)
        return deadlines

    def _time_to_deadline(self) -> timedelta | None:
        deadlines = self._deadlines()
        if not deadlines:
            return None
        return max(min(deadlines) - workflow.now(), timedelta(milliseconds=1))

    def _should_leave(self) -> bool:
        due = any(d <= workflow.now() for d in self._deadlines())
        return due or self.progress.state is S.DISABLED or self._may_continue_as_new()

    async def _on_deadlines(self) -> None:
        p = self.progress
        now = workflow.now()
        if p.auto_logout_at and not p.auto_logout_done and now >= p.auto_logout_at:
            assert p.enabled_at is not None
            await run_effect(
                Effects.end_sessions, SessionCut(self.account_id, p.auto_logout_at, p.enabled_at)
            )
            p.auto_logout_done = True
        if p.code_digest and p.code_expires_at and now >= p.code_expires_at:
            await self._burn_code()
        if p.state is S.LOCKED and p.locked_until and now >= p.locked_until:
            self._unlock()
            await self._move_to(S.ACTIVE, actor="system")

    def _may_continue_as_new(self) -> bool:
        """The history is long, and no mail is being retried: a new run would not know of it."""
        info = workflow.info()
        long = (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() >= self.policy.history_event_limit
        )
        return long and not self._mailing()

    # -- helpers

    def _lock_is_due(self) -> bool:
        p = self.progress
        return bool(p.state is S.LOCKED and p.locked_until and workflow.now() >= p.locked_until)

    async def _end_lock_if_due(self) -> None:
        """A lock whose time is up ends before a PIN is judged, even when the request comes
        before the lock's timer was handled: the store already counts it as ended (R8)."""
        if self._lock_is_due() and workflow.patched(PATCH_DUE_LOCK_ENDS_FIRST):
            self._unlock()
            await self._move_to(S.ACTIVE, actor="system")

    def _require(self, *states: TwoFactorState, reason: str) -> None:
        """Checked by validators, and again under the lock: another handler may have run since."""
        if self.progress.state not in states:
            raise ApplicationError(
                f"2FA is {self.progress.state.value}", type=reason, non_retryable=True
            )

    def _code_usable(self) -> bool:
        p = self.progress
        return bool(p.code_digest and p.code_expires_at and workflow.now() < p.code_expires_at)

    def _unlock(self) -> None:
        self.progress.locked_until = None
        self.progress.pin_failures = 0

    async def _issue_code(self) -> None:
        p = self.progress
        p.code_number += 1
        p.code_failures = 0
        p.code_expires_at = workflow.now() + timedelta(seconds=self.policy.code_ttl_seconds)
        mail = CodeMail(self.account_id, p.enrollment_id, p.code_number, p.code_expires_at)
        try:
            if workflow.patched(PATCH_MAIL_RETRIED_AFTER_THE_STEP):
                p.code_digest = await self._mail_or_retry_later(mail)
            else:
                p.code_digest = await mail_code(mail)
        except (ActivityError, ApplicationError):  # remote, local
            if not workflow.patched(PATCH_MAIL_REFUSAL):
                raise
            # the relay refused the address for good: no code is out, and the next login
            # tries again and tells the user, rather than waiting for a mail (S9)
            p.code_digest = None

    async def _mail_or_retry_later(self, mail: CodeMail) -> str:
        """The code's digest, once its mail went out or is on its way: a relay that says "try
        later" or does not answer gets the mail's retries after the step has answered, so a
        relay that is down delays the mail, never the user or an admin (S9)."""
        digest = await first_mail_try(mail)
        if digest is not None:
            return digest
        digest = await run_effect(Effects.activation_code_digest, mail)
        retries = asyncio.create_task(self._retry_mail(mail))
        self._mails_retried.add(retries)
        retries.add_done_callback(self._mails_retried.discard)
        return digest

    async def _retry_mail(self, mail: CodeMail) -> None:
        """Retries the mail until the relay takes it or refuses it for good, and calls the
        retries off once the code is no longer awaited: replaced, burnt, used, or 2FA off."""
        sending = start_mail_retries(mail)
        await workflow.wait_condition(lambda: sending.done() or not self._awaits(mail))
        if not sending.done():
            sending.cancel()
        try:
            await sending
        except (ActivityError, ApplicationError, asyncio.CancelledError) as failure:
            if isinstance(failure, asyncio.CancelledError) or not is_permanent(failure):
                return  # called off
            async with self._lock:  # refused for good: no code is out, as on a first try
                if self._awaits(mail):
                    await self._burn_code()

    def _awaits(self, mail: CodeMail) -> bool:
        p = self.progress
        return p.code_number == mail.number and p.code_digest is not None

    def _mailing(self) -> bool:
        return bool(self._mails_retried)

    async def _burn_code(self) -> None:
        """The current code stops working: expired, or too many wrong tries (R4, S2)."""
        if self.progress.code_digest is not None:
            self.progress.code_digest = None
            await self._project()

    async def _move_to(self, state: TwoFactorState, actor: str = "user") -> None:
        self.progress.state = state
        await self._project(actor)
        self._publish_state()

    def _next_projection(self, actor: str = "user") -> Projection:
        p = self.progress
        p.version += 1
        return Projection(
            account_id=self.account_id,
            state=p.state,
            version=p.version,
            auto_logout_at=p.auto_logout_at,
            code_expires_at=p.code_expires_at,
            code_usable=p.code_digest is not None,
            locked_until=p.locked_until,
            pin_failures=p.pin_failures,
            locks_in_a_row=p.locks_in_a_row,
            actor=actor,
        )

    async def _project(self, actor: str = "user") -> None:
        await run_effect(Effects.save_projection, self._next_projection(actor))

    def _publish_state(self) -> None:
        workflow.upsert_search_attributes([STATE_KEY.value_set(self.progress.state.value)])
