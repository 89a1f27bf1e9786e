"""Accounts and the password gate: registering, the password step of a login (S2, S7)."""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from twofa import audit, errors
from twofa.crypto import new_token
from twofa.policy import (
    RuleViolation,
    check_email_shape,
    check_password,
    normalize_email,
    password_block_seconds,
)
from twofa.service.core import ServiceCore, state_of, utcnow
from twofa.store import (
    account_queries,
    login_queries,
    pepper_queries,
    session_queries,
    throttle_queries,
)
from twofa.store.models import Account, Device, LoginChallenge
from twofa.views import AccountView, LoginView
from twofa.vocabulary import Outcome, Step
from twofa.vocabulary import TwoFactorState as S
from twofa.workflows.messages import NewCodeRequest, workflow_id
from twofa.workflows.two_factor import TwoFactorWorkflow

log = logging.getLogger(__name__)
RUNNING = WorkflowExecutionStatus.RUNNING
#: How long a login waits for Temporal on the rare path that asks it (a passed session cut).
_ASKED_AT_LOGIN = 5


@dataclass(frozen=True)
class Attempt:
    """A password attempt as counted: the counter's key, and the block it hit or began."""

    throttle_key: str
    at: datetime
    failures: int
    block_seconds: int
    blocked_until: datetime | None


class Accounts(ServiceCore):
    """Registering, and the password that every login (users', operators') passes first."""

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
                # in any case: Bob@ and bob@ are one
                if await account_queries.email_taken(db, email):
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
            account, device = await account_queries.login_lookup(db, typed, device_digests)
            if device is not None and device_digests and device.token_digest != device_digests[0]:
                # made under a previous pepper: the browser's token, digested anew
                await pepper_queries.redigest(
                    db, Device, device.id, device_digests[0], self.keyring.id
                )
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
            await pepper_queries.replace_secret(
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
            await throttle_queries.adopt_throttles(db, throttle_key, previous_keys)
        failures, blocked_until = await throttle_queries.count_password_attempt(
            db, throttle_key, now
        )
        if blocked_until is not None and blocked_until > now:
            return Attempt(throttle_key, now, failures, 0, blocked_until)
        block = password_block_seconds(failures)
        if block:
            await throttle_queries.block_logins(db, throttle_key, now + timedelta(seconds=block))
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
        """The counted attempt's verdict: refused while blocked, else the password's check.

        Its audit record names the email only when it is an account's (or an operator's): an
        unknown one is kept as a keyed digest, which still tells repeats apart, since what was
        typed there may be a password, and the log keeps every record for good (S4).
        """
        digest = self.keyring.digest("audited-email", email)[:16]  # either way: same work (S7)
        typed: dict[str, Any] = (
            {"email": email} if stored_hash is not None else {"email_digest": digest}
        )
        if attempt.blocked_until is not None:
            async with self.db.write() as db:
                await audit.append(
                    db, f"{scope}_refused", account_id=account_id, actor=actor, reason="blocked",
                    **typed,
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
                reason="invalid_credentials",
                failures_in_a_row=attempt.failures,
                blocked_seconds=attempt.block_seconds,
                **typed,
            )
        raise errors.INVALID_CREDENTIALS()

    async def _second_factor(
        self, account: Account, device: Device | None, now: datetime, passed: str
    ) -> LoginView:
        """The login after the right password (``passed``: the failure counter to clear)."""
        state = state_of(account, now)
        if state is S.DISABLED:
            if account.auto_logout_at is not None and account.auto_logout_at <= now:
                await self._forget_stray_cut(account, passed)
            token, session = self._new_session(account.id, None, now)
            async with self._login_write(passed) as db:
                cap = await session_queries.session_cap(db, account.id)
                if cap is not None:  # an enable is under way, or began since the state was read
                    session.expires_at = min(session.expires_at, cap)
                await session_queries.add_session(db, session)
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
                # the right password's count cleared first: this call may answer 503, and the
                # caller's repeats must not add up to a block (S2, S9)
                async with self.db.write() as db:
                    await throttle_queries.clear_password_failures(db, passed)
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

    async def _forget_stray_cut(self, account: Account, passed: str) -> None:
        """A passed session cut on an account whose 2FA is still off: an enable under way past
        it (a slow relay, a worker away), whose sessions must still end there (R3), or the cut
        of a run that closed before its state change (an operator terminated it), which would
        end every session at birth and which no disable clears. Whether a run of the account's
        workflow is still open tells them apart; only this rare path asks Temporal. No answer:
        503, the right password's count cleared first, so repeats add up to no block (S2)."""
        latest = self.client.get_workflow_handle(workflow_id(account.id))
        try:
            async with asyncio.timeout(_ASKED_AT_LOGIN):
                if (await latest.describe()).status == RUNNING:
                    return
        except RPCError as error:
            if error.status != RPCStatusCode.NOT_FOUND:
                await self._unanswered(account, passed)
        except TimeoutError:
            await self._unanswered(account, passed)
        async with self.db.write() as db:
            if await session_queries.forget_cut(db, account.id, account.auto_logout_run):
                await audit.append(
                    db, "session_cut_cleared", account_id=account.id, cut=account.auto_logout_at
                )
                log.info("account %s: a session cut its closed run left behind cleared", account.id)

    async def _unanswered(self, account: Account, passed: str) -> NoReturn:
        log.error("login of account %s: Temporal did not say whether its enable runs", account.id)
        async with self.db.write() as db:
            await throttle_queries.clear_password_failures(db, passed)
        raise errors.UNAVAILABLE()

    @asynccontextmanager
    async def _login_write(self, passed: str) -> AsyncIterator[AsyncSession]:
        """The login's next write, which also clears the password failures it counted."""
        async with self.db.write() as db:
            await throttle_queries.clear_password_failures(db, passed)
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
            await login_queries.add_challenge(
                db,
                LoginChallenge(
                    id_digest=self.keyring.digest("login", login_id),
                    account_id=account_id,
                    step=step,
                    device_id=device_id,
                    created_at=now,
                    expires_at=now + timedelta(seconds=self.settings.login_ttl_seconds),
                ),
            )
            await audit.append(
                db, "login_password_accepted", account_id=account_id, actor="user", next_step=step
            )
        return login_id
