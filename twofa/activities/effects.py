"""The workflow's side effects: activation mails and every DB write of a state change.

Each is idempotent, since Temporal retries them: mails are keyed by (enrollment, code number)
and derive the same code on a retry; projections carry a version; the rest are absolute writes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from twofa import audit
from twofa.config import Settings
from twofa.crypto import Keyring
from twofa.mail import MailRefused, activation_mail, deliver
from twofa.notifications import BROWSER_ENROLLED, TWO_FACTOR_DISABLED, TWO_FACTOR_LOCKED
from twofa.store import (
    account_queries,
    activation_queries,
    device_queries,
    login_queries,
    notification_queries,
    session_queries,
)
from twofa.store.db import Database
from twofa.store.models import Account, Device, SentMail
from twofa.workflows.messages import (
    ActivationEffect,
    CodeMail,
    DisableEffect,
    Projection,
    SessionCut,
    TwoFactorState,
)

log = logging.getLogger(__name__)


def permanent(kind: str, message: str) -> ApplicationError:
    """A failure no retry can mend: Temporal stops retrying, the workflow decides what next."""
    return ApplicationError(message, type=kind, non_retryable=True)


def _now() -> datetime:
    return datetime.now(UTC)


class Effects:
    def __init__(self, settings: Settings, db: Database, keyring: Keyring) -> None:
        self.settings = settings
        self.db = db
        self.keyring = keyring
        db.audit = db.audit or audit.chain_for(settings, keyring)

    @activity.defn
    async def send_activation_code(self, mail: CodeMail) -> str:
        """Mails code number ``mail.number`` once; returns only its keyed digest (S1, S4)."""
        code = self._code(mail)
        key = f"{mail.enrollment_id}:{mail.number}"
        async with self.db.read() as db:
            account = await account_queries.account_by_id(db, mail.account_id)
            already_sent = await activation_queries.mail_sent(db, key)
        if account is None:
            raise permanent("account_gone", f"account {mail.account_id} does not exist")
        if not already_sent:
            if mail.expires_at <= _now():
                # a retry that outlived its code (R4): the workflow calls such retries off, and
                # this stops one that had started before it did
                raise permanent("code_expired", f"code {mail.number} expired before it was mailed")
            message_id = f"<activation-{mail.enrollment_id}.{mail.number}@cockpit-2fa>"
            message = activation_mail(
                sender=self.settings.mail_from,
                to=account.email,
                code=code,
                expires_at=mail.expires_at,
                message_id=message_id,
            )
            try:
                await deliver(message, self.settings)
            except MailRefused as refused:
                if not refused.permanent:
                    raise  # retried with backoff: a relay away never loses the mail
                async with self.db.write() as db:
                    await audit.append(
                        db,
                        "mail_failed",
                        account_id=mail.account_id,
                        number=mail.number,
                        reason=str(refused),
                    )
                raise permanent("mail_refused", str(refused)) from None
            async with self.db.write() as db:
                if not await activation_queries.mail_sent(db, key):
                    db.add(
                        SentMail(
                            key=key,
                            account_id=mail.account_id,
                            message_id=message_id,
                            sent_at=_now(),
                        )
                    )
                    await audit.append(
                        db,
                        "code_issued",
                        account_id=mail.account_id,
                        number=mail.number,
                        expires_at=mail.expires_at,
                    )
            log.info("activation code %d mailed for account %s", mail.number, mail.account_id)
        return self.keyring.code_digest(code)

    @activity.defn
    async def activation_code_digest(self, mail: CodeMail) -> str:
        """The digest of a code whose mail the relay has not taken yet: the code works once
        the mail's retries deliver it."""
        return self.keyring.code_digest(self._code(mail))

    def _code(self, mail: CodeMail) -> str:
        """The code a mail carries, derived the same on every try and for its digest."""
        return self.keyring.activation_code(mail.enrollment_id, mail.number)

    @activity.defn
    async def save_projection(self, projection: Projection) -> None:
        async with self.db.write() as db:
            await _project(db, projection)

    @activity.defn
    async def limit_sessions(self, cut: SessionCut) -> datetime | None:
        """Sessions end at the cut exactly, even if the timer that follows fires late (R3);
        returns the cut in force (``None`` in histories from before it did). The cut names the
        run making it: a try of the same enable run again finds it as its own."""
        async with self.db.write() as db:
            return await session_queries.limit_sessions(
                db, cut.account_id, cut.at, cut.opened_before, activity.info().workflow_run_id
            )

    @activity.defn
    async def end_sessions(self, cut: SessionCut) -> None:
        async with self.db.write() as db:
            ended = await session_queries.end_sessions(
                db, cut.account_id, _now(), "auto_logout", created_before=cut.opened_before
            )
            if ended:
                await audit.append(
                    db,
                    "sessions_ended",
                    account_id=cut.account_id,
                    reason="auto_logout",
                    count=ended,
                )
        log.info("auto-logout ended %d session(s) of account %s", ended, cut.account_id)

    @activity.defn
    async def apply_activation(self, effect: ActivationEffect) -> str:
        """Moves the drafted PIN, seal and browser into place in one transaction (R7)."""
        account_id = effect.projection.account_id
        try:
            async with self.db.write() as db:
                if await db.get(Device, effect.draft_id) is not None:
                    return effect.draft_id  # a retry: done already
                await self._activate_in_store(db, effect)
        except IntegrityError as error:  # PostgreSQL: a racing activation took the email first
            if not effect.email:
                raise
            raise permanent("email_taken", "the new email was taken meanwhile") from error
        log.info("2FA activated for account %s, device %s", account_id, effect.draft_id)
        return effect.draft_id

    async def _activate_in_store(self, db: AsyncSession, effect: ActivationEffect) -> None:
        """Permanent refusals are non-retryable: the workflow then lets the user go on."""
        account_id = effect.projection.account_id
        draft = await activation_queries.take_draft(db, effect.draft_id)
        account = await db.get(Account, account_id)
        if draft is None or account is None:
            raise permanent("activation_draft_gone", f"activation draft {effect.draft_id} is gone")
        if effect.email and await account_queries.email_taken(
            db, effect.email, except_account=account_id
        ):
            raise permanent("email_taken", "the new email was taken meanwhile")
        account.pin_hash = draft.pin_hash
        account.seal_ciphertext = draft.seal_ciphertext
        account.pin_pepper = account.seal_pepper = draft.pepper_id
        if effect.email:
            account.email = effect.email
        db.add(
            Device(
                id=draft.id,
                account_id=account_id,
                name=draft.device_name,
                token_digest=draft.device_token_digest,
                pepper_id=draft.pepper_id,
                enrolled_at=_now(),
            )
        )
        await audit.append(
            db,
            "device_enrolled",
            account_id=account_id,
            actor="user",
            device_id=draft.id,
            name=draft.device_name,
            at_activation=True,
        )
        if effect.email:
            await audit.append(db, "email_changed", account_id=account_id, actor="user")
        await notification_queries.notify(
            db, account_id, BROWSER_ENROLLED, account.email, _now(), device_name=draft.device_name
        )
        await _project(db, effect.projection)

    @activity.defn
    async def apply_disable(self, effect: DisableEffect) -> int:
        """R10: 2FA off and every trusted browser revoked, at once."""
        async with self.db.write() as db:
            return await disable_in_store(db, effect.projection)

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.send_activation_code,
            self.activation_code_digest,
            self.save_projection,
            self.limit_sessions,
            self.end_sessions,
            self.apply_activation,
            self.apply_disable,
        ]


async def disable_in_store(db: AsyncSession, projection: Projection) -> int:
    """R10's writes: every browser revoked, PIN and seal gone, logins ended; returns the count.

    Also what the service applies itself when an account's workflow no longer runs, so an
    admin can always disable (S9).
    """
    account_id, now = projection.account_id, _now()
    revoked = await device_queries.revoke_devices(
        db, account_id, now, actor=projection.actor, reason="disable"
    )
    account = await db.get(Account, account_id)
    if account is not None:
        account.pin_hash = None
        account.seal_ciphertext = None
        account.pin_failure_unrecorded = None  # no PIN of this enrollment counts any more
    await login_queries.finish_challenges(db, account_id, now)
    if await _project(db, projection) and account is not None:
        by_admin = projection.actor.startswith("admin:")
        await notification_queries.notify(
            db, account_id, TWO_FACTOR_DISABLED, account.email, now, by_admin=by_admin
        )
    log.info("2FA disabled for account %s, %d device(s) revoked", account_id, len(revoked))
    return len(revoked)


async def _project(db: AsyncSession, projection: Projection) -> bool:
    """Saves a projection; a state change is audited, and a lock ends every login in progress
    and tells the user (S10). True when the state changed (not on a late retry)."""
    account = await account_queries.account_by_id(db, projection.account_id)
    before = account.two_factor_state if account else None
    if (
        not await account_queries.save_projection(db, projection, _now())
        or before == projection.state
    ):
        return False
    assert account is not None
    if projection.state is TwoFactorState.LOCKED:
        if account.pin_failure_unrecorded is not None:
            # the wrong PIN that locked, which the API kept until the workflow answered: a
            # locked workflow counts no more, so it goes now, audited here as the API (finding
            # it gone) will not, and is never sent again once the lock is over (S2, S5)
            account.pin_failure_unrecorded = None
            await audit.append(
                db, "pin_rejected", account_id=projection.account_id, actor="user",
                attempts_left=0, locked=True,
            )  # fmt: skip
        await login_queries.finish_challenges(db, projection.account_id, _now())
        await notification_queries.notify(
            db,
            projection.account_id,
            TWO_FACTOR_LOCKED,
            account.email,
            _now(),
            locked_until=projection.locked_until,
        )
        event = "two_factor_locked"
    elif before == TwoFactorState.LOCKED and projection.state is TwoFactorState.ACTIVE:
        event = "two_factor_unlocked"
    else:
        event = "two_factor_state_changed"
    await audit.append(
        db,
        event,
        account_id=projection.account_id,
        actor=projection.actor,
        before=before,
        after=projection.state.value,
        locked_until=projection.locked_until,
    )
    return True
