"""Every user operation of Cockpit 2FA, one method each; the API and the web pages map it.

The hot path (login, PIN, session checks) reads the store's projection of each account's 2FA
state and calls the account's workflow only for steps that change that state.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, overload

from anyio import CapacityLimiter, to_thread
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import (
    Client,
    RPCTimeoutOrCancelledError,
    WithStartWorkflowOperation,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.workflow import UpdateMethodMultiParam

from twofa import audit, errors
from twofa.activities.effects import disable_in_store
from twofa.config import Settings
from twofa.crypto import Keyring, new_token
from twofa.errors import ServiceError
from twofa.notifications import BROWSER_ENROLLED
from twofa.policy import (
    RuleViolation,
    check_device_name,
    check_email_shape,
    check_password,
    check_pin,
    check_pin_confirmation,
    check_pin_shape,
    check_seal,
    check_two_factor_email,
    effective_state,
    normalize_email,
    password_block_seconds,
)
from twofa.store import queries
from twofa.store.db import Database
from twofa.store.models import Account, Device, LoginChallenge, Session
from twofa.views import (
    AccountView,
    DeviceView,
    DisabledView,
    EnabledView,
    LoginView,
    SessionView,
    TwoFactorView,
)
from twofa.vocabulary import Outcome, Step, TwoFactorState
from twofa.workflows.messages import (
    Activation,
    ActorRequest,
    CodeSubmission,
    CodeVerdict,
    NewCodeRequest,
    Progress,
    Projection,
    TwoFactorInput,
    workflow_id,
)
from twofa.workflows.two_factor import TASK_TIMEOUT, TwoFactorWorkflow

log = logging.getLogger(__name__)
S = TwoFactorState
T = TypeVar("T")
A = TypeVar("A")


@dataclass(frozen=True)
class Attempt:
    """A password attempt as counted: the counter's key, and the block it hit or began."""

    throttle_key: str
    at: datetime
    failures: int
    block_seconds: int
    blocked_until: datetime | None


@dataclass(frozen=True)
class CurrentSession:
    session: Session
    account: Account


def utcnow() -> datetime:
    return datetime.now(UTC)


def checked_activation(
    pin: str, pin_confirmation: str, seal: str, device_name: str | None, email: str | None
) -> tuple[str, str | None, str | None]:
    """R6: every activation field checked, and every wrong one reported at once.

    The 422 names the first wrong field as usual (``field``, ``error``, ``message``) and lists
    each wrong field in ``fields``, so a form can show all its errors at the first try.
    """
    violations: list[RuleViolation] = []
    values: dict[str, str | None] = {}
    checks: list[tuple[str, Callable[[], str | None]]] = [
        ("pin", lambda: check_pin(pin, pin)),
        ("pin_confirmation", lambda: check_pin_confirmation(pin, pin_confirmation)),
        ("seal", lambda: check_seal(seal)),
        ("device_name", lambda: check_device_name(device_name)),
        ("email", lambda: check_two_factor_email(email) if email and email.strip() else None),
    ]
    for name, check in checks:
        try:
            values[name] = check()
        except RuleViolation as error:
            violations.append(error)
    if violations:
        first = errors.rule_refused(violations[0])
        first.details["fields"] = [
            {"field": v.field, "error": v.code, "message": v.message, **v.details}
            for v in violations
        ]
        raise first
    return str(values["seal"]), values["device_name"], values["email"]


def state_of(account: Account, now: datetime) -> TwoFactorState:
    """The account's 2FA state as the rules read it now (``policy.effective_state``)."""
    return effective_state(account.two_factor_state, account.locked_until, now)


class TwoFactorService:
    def __init__(self, settings: Settings, db: Database, client: Client) -> None:
        self.settings = settings
        self.db = db
        self.client = client
        self.keyring = Keyring.of(settings)
        db.audit = db.audit or audit.chain_for(settings, self.keyring)
        self._kdf_limiter = CapacityLimiter(os.cpu_count() or 1)
        self.policy = settings.policy

    # -- accounts and primary login

    async def register(self, email: str, password: str) -> AccountView:
        try:
            email = check_email_shape(email)
            check_password(password)
        except RuleViolation as error:
            raise errors.rule_refused(error) from None
        password_hash = await self.kdf(self.keyring.hash_secret, password)
        now = utcnow()
        account = Account(
            id=str(uuid.uuid4()),
            email=email,
            password_hash=password_hash,
            password_pepper=self.keyring.id,
            created_at=now,
            updated_at=now,
        )
        try:
            async with self.db.write() as db:
                if await queries.email_taken(db, email):  # in any case: Bob@ and bob@ are one
                    raise errors.EMAIL_TAKEN()
                db.add(account)
                await audit.append(db, "account_registered", account_id=account.id, actor="user")
        except IntegrityError:  # its twin registered in the same instant (PostgreSQL)
            raise errors.EMAIL_TAKEN() from None
        log.info("account %s registered", account.id)
        return AccountView(id=account.id, email=account.email, two_factor=S.DISABLED)

    async def login(self, email: str, password: str, device_token: str | None) -> LoginView:
        """Primary password first, throttled per email whether or not it exists (S2, S7).

        The account, its browser and the attempt's count come in one write transaction before
        the password is checked: parallel guesses are all counted, in one commit per attempt.
        """
        device_digests = self.keyring.digests("device", device_token) if device_token else None
        # the database lowercases both sides, as its index; the throttle's key is the email
        # whatever the case typed
        typed, email = email.strip(), normalize_email(email)
        now = utcnow()
        throttle_keys = self.keyring.digests("login-throttle", email)
        async with self.db.write() as db:
            account, device = await queries.login_lookup(db, typed, device_digests)
            if device is not None and device_digests and device.token_digest != device_digests[0]:
                # made under a previous pepper: the browser's token, digested anew
                await queries.redigest(db, Device, device.id, device_digests[0], self.keyring.id)
            attempt = await self._count_attempt(db, throttle_keys[0], now, throttle_keys[1:])
        passed = await self._judge_password(
            attempt, "login", email, password, account.password_hash if account else None,
            account_id=account.id if account else None, actor="user",
            stored_pepper=account.password_pepper if account else None,
        )  # fmt: skip
        assert account is not None
        if self.keyring.stale(account.password_pepper):
            await self._rehash_password(account, password)
        return await self._second_factor(account, device, utcnow(), passed)

    async def _rehash_password(self, account: Account, password: str) -> None:
        """A password hashed under a previous pepper, hashed anew under the current one."""
        new_hash = await self.kdf(self.keyring.hash_secret, password)
        async with self.db.write() as db:
            await queries.replace_secret(
                db, Account.password_hash, Account.password_pepper, account.id,
                account.password_hash, new_hash, self.keyring.id,
            )  # fmt: skip

    async def password_gate(
        self,
        scope: str,
        email: str,
        password: str,
        stored_hash: str | None,
        *,
        account_id: str | None = None,
        actor: str = "user",
        stored_pepper: str | None = None,
    ) -> str:
        """S2 for every password login (users', operators'): 4 failures in a row block a while.

        Counted per (scope, email) whether or not the email exists, and with the same work and
        answers either way, so a refusal never tells whether an email exists (S7). Every attempt
        is counted before it is checked; a right password returns the counter's key, which the
        caller clears in the transaction that lets the user in (one write fewer per login).
        """
        throttle_keys = self.keyring.digests(f"{scope}-throttle", email)
        async with self.db.write() as db:  # counted before checking: parallel guesses count too
            attempt = await self._count_attempt(db, throttle_keys[0], utcnow(), throttle_keys[1:])
        return await self._judge_password(
            attempt, scope, email, password, stored_hash, account_id=account_id, actor=actor,
            stored_pepper=stored_pepper,
        )  # fmt: skip

    async def _count_attempt(
        self, db: AsyncSession, throttle_key: str, now: datetime, previous_keys: list[str]
    ) -> Attempt:
        """One attempt counted in the caller's write transaction, unless the email is blocked.

        ``previous_keys``: the counter's keys under previous peppers, whose failures and block
        carry over to the current key, so a rotation gives no one fresh tries.
        """
        if previous_keys:
            await queries.adopt_throttles(db, throttle_key, previous_keys)
        failures, blocked_until = await queries.count_password_attempt(db, throttle_key, now)
        if blocked_until is not None and blocked_until > now:
            return Attempt(throttle_key, now, failures, 0, blocked_until)
        block = password_block_seconds(failures)
        if block:
            await queries.block_logins(db, throttle_key, now + timedelta(seconds=block))
        return Attempt(throttle_key, now, failures, block, None)

    async def _judge_password(
        self,
        attempt: Attempt,
        scope: str,
        email: str,
        password: str,
        stored_hash: str | None,
        *,
        account_id: str | None,
        actor: str,
        stored_pepper: str | None = None,
    ) -> str:
        """The counted attempt's verdict: refused while blocked, else the password's check."""
        if attempt.blocked_until is not None:
            async with self.db.write() as db:
                await audit.append(
                    db, f"{scope}_refused", account_id=account_id, actor=actor, email=email,
                    reason="blocked",
                )  # fmt: skip
            raise errors.TOO_MANY_ATTEMPTS(
                retry_after=math.ceil((attempt.blocked_until - attempt.at).total_seconds())
            )
        if await self.kdf(self.keyring.verify_secret, stored_hash, password, stored_pepper):
            return attempt.throttle_key
        async with self.db.write() as db:
            await audit.append(
                db,
                f"{scope}_failed",
                account_id=account_id,
                actor=actor,
                email=email,
                reason="invalid_credentials",
                failures_in_a_row=attempt.failures,
                blocked_seconds=attempt.block_seconds,
            )
        raise errors.INVALID_CREDENTIALS()

    async def _second_factor(
        self, account: Account, device: Device | None, now: datetime, passed: str
    ) -> LoginView:
        """The login after the right password (``passed``: the failure counter to clear)."""
        state = state_of(account, now)
        if state is S.DISABLED:
            token, session = self._new_session(account.id, None, now)
            async with self._login_write(passed) as db:
                cap = await queries.session_cap(db, account.id)
                if cap is not None:  # an enable began since the state was read (R3)
                    session.expires_at = min(session.expires_at, cap)
                db.add(session)
                await audit.append(
                    db, "login_succeeded", account_id=account.id, actor="user", second_factor=False
                )
            return LoginView(
                outcome=Outcome.AUTHENTICATED, session_token=token, expires_at=session.expires_at
            )
        if state is S.LOCKED:
            async with self._login_write(passed) as db:
                await audit.append(
                    db, "login_refused", account_id=account.id, actor="user", reason="locked"
                )
            return LoginView(outcome=Outcome.LOCKED, locked_until=account.locked_until)
        if state is S.PENDING_CODE:
            code_expires_at, code_sent, refused = account.code_expires_at, False, None
            if not (account.code_usable and code_expires_at and code_expires_at > now):
                result = await self.call_workflow(
                    account.id, TwoFactorWorkflow.issue_new_code, NewCodeRequest(reuse_fresh=True)
                )
                code_expires_at, code_sent = result.code_expires_at, result.code_sent
                refused = result.refused or None
            login_id = await self._begin_login(account.id, Step.CODE, now, passed)
            return LoginView(
                outcome=Outcome.ACTIVATION_CODE_REQUIRED,
                login_id=login_id,
                code_expires_at=code_expires_at,
                code_sent=code_sent,
                mail_refused=refused,
            )
        if state is S.PENDING_ACTIVATION:
            login_id = await self._begin_login(account.id, Step.ACTIVATION, now, passed)
            return LoginView(outcome=Outcome.ACTIVATION_REQUIRED, login_id=login_id)
        if device is None:
            login_id = await self._begin_login(account.id, Step.ENROLL, now, passed)
            return LoginView(outcome=Outcome.BROWSER_NOT_TRUSTED, login_id=login_id)
        login_id = await self._begin_login(account.id, Step.PIN, now, passed, device_id=device.id)
        return LoginView(
            outcome=Outcome.PIN_REQUIRED, login_id=login_id, seal=self._seal_of(account)
        )

    # -- the steps of a login in progress

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
        seal, device_name, email = checked_activation(
            pin, pin_confirmation, seal, device_name, email
        )
        pin_hash = await self.kdf(self.keyring.hash_secret, pin)
        async with self.db.write() as db:
            if email and await queries.email_taken(db, email, except_account=account.id):
                raise errors.NEW_EMAIL_TAKEN()
            if await db.get(Device, draft_id) is None:  # not applied by an earlier try
                await queries.save_draft(  # a repeat may bring other values: the last counts
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
                    await queries.take_draft(db, draft_id)
            if not applied:
                raise
        await self._advance(challenge, Step.PIN, device_id=draft_id)
        return await self._activated(account.id, draft_id, device_token)

    async def _activated(self, account_id: str, device_id: str, device_token: str) -> LoginView:
        """The activation's answer, as the first try gave it or a repeat finds it."""
        async with self.db.read() as db:
            account = await queries.account_by_id(db, account_id)
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
        before, so the fifth wrong PIN locks before a sixth can be tried.
        """
        now = utcnow()
        lease = now + timedelta(seconds=self.settings.workflow_call_timeout_seconds + 10)
        async with self.db.write() as db:  # read and claim at once; a refusal writes nothing
            challenge, account = await self._live_challenge(
                db, login_id, now, Step.PIN, Step.ENROLL_PIN
            )
            if state_of(account, now) is S.LOCKED:
                raise errors.locked(account.locked_until)
            try:
                check_pin_shape(pin)
            except RuleViolation as error:
                raise errors.rule_refused(error) from None
            claimed = await queries.claim_pin_check(db, account.id, now, lease)
        if not claimed:
            raise errors.PIN_CHECK_IN_PROGRESS(retry_after=1)
        try:
            return await self._check_pin(challenge, account, pin, now)
        except BaseException:  # a right PIN releases the slot in the session's transaction
            async with self.db.write() as db:
                await queries.release_pin_check(db, account.id)
            raise

    async def _check_pin(
        self, challenge: LoginChallenge, account: Account, pin: str, now: datetime
    ) -> LoginView:
        right = await self.kdf(
            self.keyring.verify_secret, account.pin_hash, pin, account.pin_pepper
        )
        new_pin_hash = None
        if right and self.keyring.stale(account.pin_pepper):  # hashed anew under the current
            new_pin_hash = await self.kdf(self.keyring.hash_secret, pin)
        if not right or account.pin_failures or account.pin_locks_in_a_row:
            await self._still_live(challenge)  # a browser revoked meanwhile changes no counter
        if not right:  # each try counts, a repeated one too: S2 errs on the side of the lock
            failure = await self.call_workflow(account.id, TwoFactorWorkflow.record_pin_failure)
            await self._audit(
                "pin_rejected",
                account.id,
                attempts_left=failure.attempts_left,
                locked=failure.locked,
            )
            if failure.locked:
                raise errors.locked(failure.locked_until)
            raise errors.INVALID_PIN(attempts_left=failure.attempts_left)
        if account.pin_failures or account.pin_locks_in_a_row:
            await self.call_workflow(
                account.id,
                TwoFactorWorkflow.record_pin_success,
                update_id=self._request_id("pin-success", challenge.id_digest),
            )
        device_id, device_token = challenge.device_id, None
        async with self.db.write() as db:  # one transaction: a double-click opens one session
            current = await queries.release_pin_check(db, account.id)  # the account, locked
            state = state_of(current, now) if current else S.DISABLED
            if current is not None and state is S.LOCKED:  # locked while the PIN was checked
                raise errors.locked(current.locked_until)
            if state is not S.ACTIVE:
                raise errors.LOGIN_NOT_FOUND()
            if not await queries.advance_challenge(
                db, challenge.id_digest, challenge.step, None, finished_at=now
            ):
                raise errors.LOGIN_NOT_FOUND()
            if current is not None:
                await self._repepper(db, current, account.pin_hash, new_pin_hash)
            if challenge.step == Step.ENROLL_PIN:
                device_token = new_token()
                device_id = str(uuid.uuid4())
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
                await queries.notify(
                    db,
                    account.id,
                    BROWSER_ENROLLED,
                    account.email,
                    now,
                    device_name=challenge.device_name,
                )
            elif not await queries.touch_device(db, device_id, now):
                raise errors.LOGIN_NOT_FOUND()  # the browser was revoked meanwhile
            token, session = self._new_session(account.id, device_id, now)
            db.add(session)
            await audit.append(
                db,
                "login_succeeded",
                account_id=account.id,
                actor="user",
                second_factor=True,
                device_id=device_id,
            )
        return LoginView(
            outcome=Outcome.AUTHENTICATED,
            session_token=token,
            expires_at=session.expires_at,
            device_id=device_id if device_token else None,
            device_token=device_token,
        )

    # -- the user's session and settings

    async def current_session(self, session_token: str | None) -> CurrentSession:
        if not session_token:
            raise errors.SESSION_ENDED()
        digests = self.keyring.digests("session", session_token)
        async with self.db.read() as db:
            session = await queries.open_session(db, digests, utcnow())
            account = await queries.account_by_id(db, session.account_id) if session else None
        if session is None or account is None:
            raise errors.SESSION_ENDED()
        if session.token_digest != digests[0]:  # made under a previous pepper: digested anew
            async with self.db.write() as db:
                await queries.redigest(db, Session, session.id, digests[0], self.keyring.id)
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
                cut = await queries.session_cut_by_enable(
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
        result = await self._call(
            self.client.execute_update_with_start_workflow(
                TwoFactorWorkflow.enable,
                start_workflow_operation=start,
                # the last disable's version names this enrollment: a repeat before its first
                # state change lands gets the first request's answer from the server
                id=f"enable-{account.projection_version}",
            )
        )
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
        browser); every other session a trusted browser opened ends with its browser.
        """
        if not confirm:
            raise errors.CONFIRMATION_REQUIRED()
        if account.two_factor_state == S.DISABLED:
            return DisabledView(revoked_devices=0)
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
        if keep is not None:
            await self._keep_session(keep)
        return DisabledView(revoked_devices=revoked)

    async def _disable_without_workflow(self, account: Account, actor: str) -> int:
        """The store says 2FA is on but no workflow runs to turn it off (it ended or was
        terminated by an operator): the same writes as the workflow's, or none if a repeat
        finds them done."""
        async with self.db.write() as db:
            current = await queries.account_by_id(db, account.id)
            if current is None or current.two_factor_state == S.DISABLED:
                return 0
            projection = Projection(
                account_id=account.id,
                state=TwoFactorState.DISABLED,
                version=current.projection_version + 1,
                actor=actor,
            )
            return await disable_in_store(db, projection)

    async def _keep_session(self, kept: Session) -> None:
        """Reopens the session that the revocation of its browser has just ended."""
        async with self.db.write() as db:
            session = await db.get(Session, kept.id)
            if (
                session is None
                or session.end_reason != "device_revoked"
                or session.expires_at <= utcnow()
            ):
                return
            session.ended_at, session.end_reason, session.device_id = None, None, None
            await audit.append(
                db, "session_kept", account_id=session.account_id, actor="user", reason="disable"
            )

    async def devices(self, account_id: str) -> list[DeviceView]:
        async with self.db.read() as db:
            devices = await queries.active_devices(db, account_id)
        return [
            DeviceView(id=d.id, name=d.name, enrolled_at=d.enrolled_at, last_used_at=d.last_used_at)
            for d in devices
        ]

    async def delete_device(self, current: CurrentSession, device_id: str) -> None:
        """R11: one browser goes; the others keep working."""
        async with self.db.write() as db:
            revoked = await queries.revoke_devices(
                db, current.account.id, utcnow(), actor="user", reason="user", device_id=device_id
            )
        if not revoked:
            raise errors.DEVICE_NOT_FOUND()
        log.info("device %s of account %s deleted by its user", device_id, current.account.id)

    async def health(self) -> dict[str, bool]:
        checks = {"database": False, "temporal": False}
        try:
            async with self.db.read() as db:
                await db.execute(text("SELECT 1"))
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

    # -- helpers

    async def kdf(self, function: Callable[..., T], *args: Any) -> T:
        """argon2 in a worker thread, one per CPU at most: each call holds 19 MiB, and more
        threads than CPUs only add memory, not throughput."""
        return await to_thread.run_sync(function, *args, limiter=self._kdf_limiter)

    def _new_session(
        self, account_id: str, device_id: str | None, now: datetime
    ) -> tuple[str, Session]:
        """A session row to add in the caller's transaction, and the token only its owner gets."""
        token = new_token()
        session = Session(
            id=str(uuid.uuid4()),
            account_id=account_id,
            device_id=device_id,
            token_digest=self.keyring.digest("session", token),
            pepper_id=self.keyring.id,
            created_at=now,
            expires_at=now + timedelta(seconds=self.settings.session_ttl_seconds),
        )
        return token, session

    @asynccontextmanager
    async def _login_write(self, passed: str) -> AsyncIterator[AsyncSession]:
        """The login's next write, which also clears the password failures it counted."""
        async with self.db.write() as db:
            await queries.clear_password_failures(db, passed)
            yield db

    async def _begin_login(
        self,
        account_id: str,
        step: Step,
        now: datetime,
        passed: str,
        device_id: str | None = None,
    ) -> str:
        """A login in progress after the right password; audited with the step it waits for."""
        login_id = new_token()
        async with self._login_write(passed) as db:
            db.add(
                LoginChallenge(
                    id_digest=self.keyring.digest("login", login_id),
                    account_id=account_id,
                    step=step,
                    device_id=device_id,
                    created_at=now,
                    expires_at=now + timedelta(seconds=self.settings.login_ttl_seconds),
                )
            )
            await audit.append(
                db, "login_password_accepted", account_id=account_id, actor="user", next_step=step
            )
        return login_id

    async def _audit(self, event: str, account_id: str | None, **details: Any) -> None:
        """An audit record for a refusal, which changes nothing else."""
        async with self.db.write() as db:
            await audit.append(db, event, account_id=account_id, actor="user", **details)

    async def _challenge(self, login_id: str, *steps: Step) -> tuple[LoginChallenge, Account]:
        """The live login ``login_id`` if it waits for one of ``steps`` (R5: the code first)."""
        async with self.db.read() as db:
            return await self._live_challenge(db, login_id, utcnow(), *steps)

    async def _live_challenge(
        self, db: AsyncSession, login_id: str, now: datetime, *steps: Step
    ) -> tuple[LoginChallenge, Account]:
        """``_challenge`` in the caller's transaction: the login and its account, one query."""
        found = await queries.live_challenge_and_account(
            db, self.keyring.digests("login", login_id), now
        )
        if found is None:
            raise errors.LOGIN_NOT_FOUND()
        if found[0].step not in steps:
            raise errors.wrong_step(found[0].step)
        return found

    async def _still_live(self, challenge: LoginChallenge) -> None:
        """The login was not ended since it was read: by a lock, a disable or a revocation."""
        async with self.db.read() as db:
            live = await queries.live_challenge(db, challenge.id_digest, utcnow())
        if live is None:
            raise errors.LOGIN_NOT_FOUND()

    async def _advance(self, challenge: LoginChallenge, step: Step, **values: Any) -> None:
        """Compare-and-set; an identical request racing this one may have moved it first (S9)."""
        async with self.db.write() as db:
            moved = await queries.advance_challenge(
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
            now = await queries.live_challenge(db, challenge.id_digest, utcnow())
        if now is None or now.step != step or any(getattr(now, k) != v for k, v in values.items()):
            raise errors.LOGIN_NOT_FOUND()

    async def _repepper(
        self, db: AsyncSession, account: Account, checked: str | None, new_pin_hash: str | None
    ) -> None:
        """At a right PIN: the PIN hashed (``new_pin_hash``, for the hash ``checked``) and the
        seal encrypted anew under the current pepper, if a previous one made them; in the
        caller's transaction, each only if unchanged since it was read."""
        if new_pin_hash is not None and checked is not None:
            await queries.replace_secret(
                db, Account.pin_hash, Account.pin_pepper, account.id,
                checked, new_pin_hash, self.keyring.id,
            )  # fmt: skip
        if account.seal_ciphertext is not None and self.keyring.stale(account.seal_pepper):
            await queries.replace_secret(
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
            mails = await queries.mails_since(db, account_id, since)
        return self.keyring.submitted_code_digest(code, mails)

    def _seal_of(self, account: Account) -> str | None:
        """R8: shown to its owner at every 2FA login, before the PIN is asked."""
        return self.keyring.unseal(account.seal_ciphertext) if account.seal_ciphertext else None

    @overload
    async def call_workflow(
        self,
        account_id: str,
        update: UpdateMethodMultiParam[[Any], T],
        /,
        *,
        update_id: str | None = None,
    ) -> T: ...

    @overload
    async def call_workflow(
        self,
        account_id: str,
        update: UpdateMethodMultiParam[[Any, A], T],
        arg: A,
        /,
        *,
        update_id: str | None = None,
    ) -> T: ...

    async def call_workflow(
        self,
        account_id: str,
        update: UpdateMethodMultiParam[..., T],
        /,
        *args: Any,
        update_id: str | None = None,
    ) -> T:
        """``update_id`` names the request: the server runs a repeated one once, and a caller
        who repeats it after a 503 or a lost answer gets the first one's result (S9).

        Typed as the SDK's ``execute_update``: an update without its argument, or with one of
        the wrong type, does not type-check."""
        handle = self.client.get_workflow_handle(workflow_id(account_id))
        return await self._call(handle.execute_update(update, args=args, id=update_id))

    def _request_id(self, step: str, login_id: str, *parts: str) -> str:
        """A step's update id: keyed, so history never holds the login id it came from."""
        return f"{step}-{self.keyring.digest('update-id', chr(0).join((login_id, *parts)))}"

    async def _call(self, call: Awaitable[T]) -> T:
        """A workflow call, with its refusals turned into the contract's errors."""
        try:
            return await asyncio.wait_for(call, timeout=self.settings.workflow_call_timeout_seconds)
        except WorkflowUpdateFailedError as failure:
            cause = failure.cause
            reason = cause.type if isinstance(cause, ApplicationError) else None
            if reason in errors.WORKFLOW_REFUSALS:
                raise errors.WORKFLOW_REFUSALS[reason]() from None
            log.error("workflow update failed: %s", failure)
            raise errors.UNAVAILABLE() from None
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                raise errors.NOT_ENABLED() from None
            log.error("Temporal refused a call: %s", error.status)
            raise errors.UNAVAILABLE() from None
        except (TimeoutError, RPCTimeoutOrCancelledError):
            log.error(
                "workflow call timed out after %ss", self.settings.workflow_call_timeout_seconds
            )
            raise errors.UNAVAILABLE() from None
