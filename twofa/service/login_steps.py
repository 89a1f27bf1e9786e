"""The steps of a login in progress after the password: code, activation, enrollment, PIN."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from twofa import audit, errors
from twofa.errors import ServiceError
from twofa.notifications import BROWSER_ENROLLED
from twofa.policy import (
    ActivationRefused,
    RuleViolation,
    check_activation,
    check_device_name,
    check_pin_shape,
)
from twofa.service.core import ServiceCore, state_of, utcnow
from twofa.store import (
    account_queries,
    activation_queries,
    device_queries,
    login_queries,
    notification_queries,
    pepper_queries,
    session_queries,
)
from twofa.store.models import Account, Device, LoginChallenge, Session
from twofa.views import LoginView
from twofa.vocabulary import Outcome, Step
from twofa.vocabulary import TwoFactorState as S
from twofa.workflows.messages import (
    Activation,
    CodeSubmission,
    CodeVerdict,
    NewCodeRequest,
    PinFailureResult,
)
from twofa.workflows.two_factor import TwoFactorWorkflow


class LoginSteps(ServiceCore):
    """Each step checks that the login waits for it (R5), then moves it on (S9: once)."""

    async def submit_code(self, login_id: str, code: str) -> LoginView:
        challenge, account = await self._challenge(
            login_id, Step.CODE, Step.ENROLL_CODE, Step.ACTIVATION, Step.ENROLL_PIN
        )
        # Each try counts, a repeated one too (S2: five wrong codes burn the code); the workflow
        # knows which login a code was accepted for, and tells that login so again (S9).
        result = await self.call_workflow(
            account.id,
            TwoFactorWorkflow.submit_code,
            CodeSubmission(
                code_digest=await self._code_digest(account.id, code), login=challenge.id_digest
            ),
        )
        if result.verdict is not CodeVerdict.ACCEPTED:
            await self._audit(
                "code_rejected",
                account.id,
                verdict=result.verdict.value,
                attempts_left=result.attempts_left,
            )
        if result.verdict is CodeVerdict.LOCKED:
            raise errors.locked(result.locked_until)
        if result.verdict is CodeVerdict.EXPIRED:
            raise errors.CODE_EXPIRED()
        if result.verdict is CodeVerdict.INVALID:
            raise errors.invalid_code(result.attempts_left)
        if challenge.step in (Step.CODE, Step.ACTIVATION):
            if challenge.step == Step.CODE:
                await self._advance(challenge, Step.ACTIVATION)
            return LoginView(outcome=Outcome.ACTIVATION_REQUIRED)
        if challenge.step == Step.ENROLL_CODE:
            await self._advance(challenge, Step.ENROLL_PIN)
        return LoginView(outcome=Outcome.PIN_REQUIRED, seal=self._seal_of(account))

    async def activate(
        self,
        login_id: str,
        *,
        pin: str,
        pin_confirmation: str,
        seal: str,
        device_name: str | None = None,
        email: str | None = None,
    ) -> LoginView:
        """R6, R7: PIN, seal and browser are drafted in the store; the workflow makes them live.

        The draft's id and the device token derive from the login id, so a caller repeating the
        activation after a 503 or a lost answer gets the same browser and token (S9).
        """
        challenge, account = await self._challenge(login_id, Step.ACTIVATION, Step.PIN)
        draft_id = self.keyring.derived_id("activation-draft", login_id)
        device_token = self.keyring.derived_token("device-token", login_id)
        if challenge.step == Step.PIN:
            if challenge.device_id != draft_id:
                raise errors.wrong_step(challenge.step)
            return await self._activated(account.id, draft_id, device_token)
        try:
            fields = check_activation(pin, pin_confirmation, seal, device_name, email)
        except ActivationRefused as refusal:
            raise errors.activation_refused(refusal) from None
        seal, device_name, email = fields.seal, fields.device_name, fields.email
        pin_hash = await self.kdf(self.keyring.hash_secret, pin)
        async with self.db.write() as db:
            if email and await account_queries.email_taken(db, email, except_account=account.id):
                raise errors.NEW_EMAIL_TAKEN()
            if await db.get(Device, draft_id) is None:  # not applied by an earlier try
                # a repeat may bring other values: the last counts
                await activation_queries.save_draft(
                    db,
                    id=draft_id,
                    account_id=account.id,
                    pin_hash=pin_hash,
                    seal_ciphertext=self.keyring.seal(seal),
                    device_name=device_name,
                    device_token_digest=self.keyring.digest("device", device_token),
                    created_at=utcnow(),
                    pepper_id=self.keyring.id,
                )
        try:
            await self.call_workflow(
                account.id,
                TwoFactorWorkflow.activate,
                Activation(draft_id=draft_id, email=email),
                # the email is part of the request: after a refusal (the email taken), the
                # same login may try another one, which the server must not answer from before
                update_id=self._request_id("activate", login_id, email or ""),
            )
        except ServiceError as error:
            if error.status == 503:  # the outcome is unknown: the repeat will find the draft
                raise
            async with self.db.write() as db:
                applied = await db.get(Device, draft_id) is not None
                if not applied:
                    await activation_queries.take_draft(db, draft_id)
            if not applied:
                raise
        async with self.db.write() as db:
            # applied, so a draft by this id is a repeat's, written again while the first was
            # being applied (PostgreSQL lets the two transactions overlap): it goes too
            await activation_queries.take_draft(db, draft_id)
        await self._advance(challenge, Step.PIN, device_id=draft_id)
        return await self._activated(account.id, draft_id, device_token)

    async def _activated(self, account_id: str, device_id: str, device_token: str) -> LoginView:
        """The activation's answer, as the first try gave it or a repeat finds it."""
        async with self.db.read() as db:
            account = await account_queries.account_by_id(db, account_id)
        assert account is not None
        return LoginView(
            outcome=Outcome.PIN_REQUIRED,
            seal=self._seal_of(account),
            device_id=device_id,
            device_token=device_token,
        )

    async def enroll_browser(self, login_id: str, device_name: str | None) -> LoginView:
        """R9: another browser gets an emailed code, then the PIN, and becomes trusted.

        The login moves on first, and the mail is one update per login: a double-click or a
        repeat after a lost answer gets the first request's answer, never a second code (S9).
        """
        challenge, account = await self._challenge(login_id, Step.ENROLL, Step.ENROLL_CODE)
        try:
            device_name = check_device_name(device_name)
        except RuleViolation as error:
            raise errors.rule_refused(error) from None
        state = state_of(account, utcnow())
        if state is S.LOCKED:
            raise errors.locked(account.locked_until)
        if state is not S.ACTIVE:
            raise errors.NOT_ACTIVE()
        if challenge.step == Step.ENROLL:
            await self._advance(challenge, Step.ENROLL_CODE, device_name=device_name)
        result = await self.call_workflow(
            account.id,
            TwoFactorWorkflow.issue_new_code,
            NewCodeRequest(reuse_fresh=challenge.step == Step.ENROLL_CODE),
            update_id=self._request_id("enroll", login_id),
        )
        return LoginView(
            outcome=Outcome.ACTIVATION_CODE_REQUIRED, code_expires_at=result.code_expires_at
        )

    async def submit_pin(self, login_id: str, pin: str) -> LoginView:
        """R7, R9: the PIN opens the session; wrong ones are counted by the workflow (S2).

        PIN checks of one account run one at a time: a guess waits for the verdict on the one
        before, so the fifth wrong PIN locks before a sixth can be tried. The session's token,
        and an enrolled browser's id and token, derive from the login id: a caller repeating
        the step after a 503 or a lost answer, with the right PIN again, gets the same ones
        while that session is open (S9).
        """
        now = utcnow()
        # the check's two workflow calls at most (a kept wrong PIN sent again, then its own)
        lease = now + timedelta(seconds=2 * self.settings.workflow_call_timeout_seconds + 10)
        async with self.db.write() as db:  # read and claim at once; a refusal writes nothing
            challenge, account = await self._pin_challenge(db, login_id, now)
            if state_of(account, now) is S.LOCKED:
                raise errors.locked(account.locked_until)
            try:
                check_pin_shape(pin)
            except RuleViolation as error:
                raise errors.rule_refused(error) from None
            claimed = await account_queries.claim_pin_check(db, account.id, now, lease)
        if not claimed:
            raise errors.PIN_CHECK_IN_PROGRESS(retry_after=1)
        try:
            return await self._check_pin(challenge, account, login_id, pin, now)
        except BaseException:  # a right PIN releases the slot in the session's transaction
            async with self.db.write() as db:
                await account_queries.release_pin_check(db, account.id)
            raise

    async def _record_pin_failure(self, account_id: str, failure_id: str) -> PinFailureResult:
        """A wrong PIN counted by the workflow, once however often ``failure_id`` is sent; then
        forgotten by the store and audited, in one transaction. 423 when it locked.

        While the workflow does not answer (Temporal or the worker away), the store keeps it
        and every PIN check of the account sends it again before it checks anything: an outage
        hands out no uncounted guesses, and its answer, once it comes, is the lock if it locked
        (S2, S9). A refusal (2FA no longer on) counts no PIN, so nothing is kept then.
        """
        try:
            failure = await self.call_workflow(
                account_id, TwoFactorWorkflow.record_pin_failure, update_id=failure_id
            )
        except ServiceError as error:
            if error.status != 503:
                async with self.db.write() as db:
                    await account_queries.forget_pin_failure(db, account_id, failure_id)
            raise
        async with self.db.write() as db:
            if await account_queries.forget_pin_failure(db, account_id, failure_id):
                await audit.append(
                    db, "pin_rejected", account_id=account_id, actor="user",
                    attempts_left=failure.attempts_left, locked=failure.locked,
                )  # fmt: skip
        if failure.locked:
            raise errors.locked(failure.locked_until)
        return failure

    async def _pin_challenge(
        self, db: AsyncSession, login_id: str, now: datetime
    ) -> tuple[LoginChallenge, Account]:
        """The login waiting for its PIN, or a repeat's: one this step finished, whose session
        is still open. Only for a lock's length after it finished: a lock taken meanwhile by
        wrong PINs sent with it ends before that login could take more guesses (S2)."""
        digests = self.keyring.digests("login", login_id)
        found = await login_queries.live_challenge_and_account(db, digests, now)
        if found is None:
            found = await self._ended_login(db, digests, now)
            if found is None or await self._pin_session(db, login_id, now) is None:
                raise errors.LOGIN_NOT_FOUND()
        if found[0].step not in (Step.PIN, Step.ENROLL_PIN):
            raise errors.wrong_step(found[0].step)
        return found

    async def _pin_session(self, db: AsyncSession, login_id: str, now: datetime) -> Session | None:
        """The open session the PIN step of ``login_id`` opened."""
        token = self.keyring.derived_token("pin-session", login_id)
        found = await session_queries.open_session_and_account(
            db, self.keyring.digests("session", token), now
        )
        return found[0] if found else None

    async def _check_pin(
        self, challenge: LoginChallenge, account: Account, login_id: str, pin: str, now: datetime
    ) -> LoginView:
        counted = bool(account.pin_failures or account.pin_locks_in_a_row)
        if account.pin_failure_unrecorded:  # the workflow has yet to count a wrong PIN: first
            await self._record_pin_failure(account.id, account.pin_failure_unrecorded)
            counted = True
        right = await self.kdf(
            self.keyring.verify_secret, account.pin_hash, pin, account.pin_pepper
        )
        new_pin_hash = None
        if right and self.keyring.stale(account.pin_pepper):  # hashed anew under the current
            new_pin_hash = await self.kdf(self.keyring.hash_secret, pin)
        if not right or counted:
            await self._still_live(challenge, login_id)  # a browser revoked: no counter moves
        if not right:  # each try counts, a repeated one too: S2 errs on the side of the lock
            failure_id = f"pin-failure-{uuid.uuid4().hex}"
            async with self.db.write() as db:
                await account_queries.note_pin_failure(db, account.id, account.pin_hash, failure_id)
            failure = await self._record_pin_failure(account.id, failure_id)
            raise errors.INVALID_PIN(attempts_left=failure.attempts_left)
        if counted:
            await self.call_workflow(
                account.id,
                TwoFactorWorkflow.record_pin_success,
                update_id=self._request_id("pin-success", challenge.id_digest),
            )
        enrolling = challenge.step == Step.ENROLL_PIN
        device_id = (
            self.keyring.derived_id("enrolled-browser-id", login_id)
            if enrolling
            else challenge.device_id
        )
        device_token = (
            self.keyring.derived_token("enrolled-browser-token", login_id) if enrolling else None
        )
        token = self.keyring.derived_token("pin-session", login_id)
        async with self.db.write() as db:  # one transaction: a double-click opens one session
            current = await account_queries.release_pin_check(db, account.id)  # the account, locked
            state = state_of(current, now) if current else S.DISABLED
            if current is not None and state is S.LOCKED:  # locked while the PIN was checked
                raise errors.locked(current.locked_until)
            if state is not S.ACTIVE:
                raise errors.LOGIN_NOT_FOUND()
            # a repeat's; or, on PostgreSQL, a double click's that read the login before the
            # first click's commit finished it: either gets the session that step opened
            if challenge.finished_at is not None or not await login_queries.advance_challenge(
                db, challenge.id_digest, challenge.step, None, finished_at=now
            ):
                opened = await self._pin_session(db, login_id, now)
                if opened is None:
                    raise errors.LOGIN_NOT_FOUND()
                return self._authenticated(token, opened, device_id, device_token)
            if current is not None:
                await self._repepper(db, current, account.pin_hash, new_pin_hash)
            if enrolling:
                assert device_id is not None and device_token is not None
                db.add(
                    Device(
                        id=device_id,
                        account_id=account.id,
                        name=challenge.device_name,
                        token_digest=self.keyring.digest("device", device_token),
                        enrolled_at=now,
                        last_used_at=now,
                        pepper_id=self.keyring.id,
                    )
                )
                await audit.append(
                    db,
                    "device_enrolled",
                    account_id=account.id,
                    actor="user",
                    device_id=device_id,
                    name=challenge.device_name,
                    at_activation=False,
                )
                await notification_queries.notify(
                    db,
                    account.id,
                    BROWSER_ENROLLED,
                    account.email,
                    now,
                    device_name=challenge.device_name,
                )
            elif not await device_queries.touch_device(db, device_id, now):
                raise errors.LOGIN_NOT_FOUND()  # the browser was revoked meanwhile
            token, session = self._new_session(account.id, device_id, now, token)
            await session_queries.add_session(db, session)
            await audit.append(
                db,
                "login_succeeded",
                account_id=account.id,
                actor="user",
                second_factor=True,
                device_id=device_id,
            )
        return self._authenticated(token, session, device_id, device_token)

    @staticmethod
    def _authenticated(
        token: str, session: Session, device_id: str | None, device_token: str | None
    ) -> LoginView:
        """The PIN step's answer: the browser's id and token only when it was just enrolled."""
        return LoginView(
            outcome=Outcome.AUTHENTICATED,
            session_token=token,
            expires_at=session.expires_at,
            device_id=device_id if device_token else None,
            device_token=device_token,
        )

    async def _challenge(self, login_id: str, *steps: Step) -> tuple[LoginChallenge, Account]:
        """The live login ``login_id`` if it waits for one of ``steps`` (R5: the code first)."""
        async with self.db.read() as db:
            return await self._live_challenge(db, login_id, utcnow(), *steps)

    async def _live_challenge(
        self, db: AsyncSession, login_id: str, now: datetime, *steps: Step
    ) -> tuple[LoginChallenge, Account]:
        """``_challenge`` in the caller's transaction: the login and its account, one query."""
        digests = self.keyring.digests("login", login_id)
        found = await login_queries.live_challenge_and_account(db, digests, now)
        if found is None:
            await self._ended_login(db, digests, now)
            raise errors.LOGIN_NOT_FOUND()
        if found[0].step not in steps:
            raise errors.wrong_step(found[0].step)
        return found

    async def _ended_login(
        self, db: AsyncSession, digests: list[str], now: datetime
    ) -> tuple[LoginChallenge, Account] | None:
        """A login that ended within a lock's length, and its account. While a lock that ended
        it lasts, every step of it answers 423 with the lock's end, as the guess that locked
        did, so a caller repeating that guess after a lost answer learns the lock (S2, S9); it
        takes no guess, and stays ended once the lock is over."""
        since = now - timedelta(seconds=self.settings.pin_lock_seconds)
        found = await login_queries.finished_challenge_and_account(db, digests, now, since)
        if found is not None and state_of(found[1], now) is S.LOCKED:
            raise errors.locked(found[1].locked_until)
        return found

    async def _still_live(self, challenge: LoginChallenge, login_id: str) -> None:
        """The login was not ended since it was read (by a lock, a disable or a revocation);
        for a repeat of a finished PIN step, its session was not."""
        async with self.db.read() as db:
            if challenge.finished_at is None:
                live = await login_queries.live_challenge(db, challenge.id_digest, utcnow())
                if live is None:
                    raise errors.LOGIN_NOT_FOUND()
            elif await self._pin_session(db, login_id, utcnow()) is None:
                raise errors.LOGIN_NOT_FOUND()

    async def _advance(self, challenge: LoginChallenge, step: Step, **values: Any) -> None:
        """Compare-and-set; an identical request racing this one may have moved it first (S9)."""
        async with self.db.write() as db:
            moved = await login_queries.advance_challenge(
                db, challenge.id_digest, challenge.step, step, **values
            )
            if moved:
                await audit.append(
                    db,
                    "login_step_passed",
                    account_id=challenge.account_id,
                    actor="user",
                    passed=challenge.step,
                    next_step=step,
                )
                return
            now = await login_queries.live_challenge(db, challenge.id_digest, utcnow())
        if now is None or now.step != step or any(getattr(now, k) != v for k, v in values.items()):
            raise errors.LOGIN_NOT_FOUND()

    async def _repepper(
        self, db: AsyncSession, account: Account, checked: str | None, new_pin_hash: str | None
    ) -> None:
        """At a right PIN: the PIN hashed (``new_pin_hash``, for the hash ``checked``) and the
        seal encrypted anew under the current pepper, if a previous one made them; in the
        caller's transaction, each only if unchanged since it was read."""
        if new_pin_hash is not None and checked is not None:
            await pepper_queries.replace_secret(
                db, Account.pin_hash, Account.pin_pepper, account.id,
                checked, new_pin_hash, self.keyring.id,
            )  # fmt: skip
        if account.seal_ciphertext is not None and self.keyring.stale(account.seal_pepper):
            await pepper_queries.replace_secret(
                db, Account.seal_ciphertext, Account.seal_pepper, account.id,
                account.seal_ciphertext, self.keyring.reseal(account.seal_ciphertext),
                self.keyring.id,
            )  # fmt: skip

    async def _code_digest(self, account_id: str, code: str) -> str:
        """The typed code's digest; after a rotation, under the pepper its mail was made with."""
        if not self.keyring.previous:
            return self.keyring.code_digest(code)
        since = utcnow() - timedelta(seconds=self.settings.code_ttl_seconds)
        async with self.db.read() as db:
            mails = await activation_queries.mails_since(db, account_id, since)
        return self.keyring.submitted_code_digest(code, mails)
