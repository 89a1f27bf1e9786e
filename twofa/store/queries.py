"""Every query of the store, named for what it answers. Writers take an open transaction."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, case, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from twofa import audit
from twofa.observability import REQUEST_ID
from twofa.store.models import (
    Account,
    ActivationDraft,
    Device,
    LoginChallenge,
    LoginThrottle,
    Notification,
    SentMail,
    Session,
)
from twofa.workflows.messages import Projection, TwoFactorState


def _digest_is(column: Any, digest: str | Sequence[str]) -> ColumnElement[bool]:
    """One digest, or any of a keyring's (one per pepper, after a rotation)."""
    if isinstance(digest, str):
        return column == digest
    return column.in_(list(digest))


async def account_by_id(db: AsyncSession, account_id: str) -> Account | None:
    return await db.get(Account, account_id)


def email_matches(email: str) -> ColumnElement[bool]:
    """Case-insensitive, as the unique index on lower(email) judges it (and answers it)."""
    return func.lower(Account.email) == func.lower(email)


async def account_by_email(db: AsyncSession, email: str) -> Account | None:
    return await db.scalar(select(Account).where(email_matches(email)))


async def login_lookup(
    db: AsyncSession, email: str, device_digest: str | Sequence[str] | None
) -> tuple[Account | None, Device | None]:
    """The account of ``email`` and its trusted browser of that token, in one round trip."""
    if device_digest is None:
        return await account_by_email(db, email), None
    row = (
        await db.execute(
            select(Account, Device)
            .outerjoin(
                Device,
                and_(
                    Device.account_id == Account.id,
                    _digest_is(Device.token_digest, device_digest),
                    Device.revoked_at.is_(None),
                ),
            )
            .where(email_matches(email))
        )
    ).first()
    return (row[0], row[1]) if row else (None, None)


async def email_taken(db: AsyncSession, email: str, *, except_account: str | None = None) -> bool:
    query = select(Account.id).where(email_matches(email))
    if except_account:
        query = query.where(Account.id != except_account)
    return (await db.scalar(query)) is not None


async def save_projection(db: AsyncSession, projection: Projection, now: datetime) -> bool:
    """Apply a workflow's state unless a newer one is there already (retries arrive late)."""
    result = await db.execute(
        update(Account)
        .where(Account.id == projection.account_id)
        .where(Account.projection_version < projection.version)
        .values(
            two_factor_state=projection.state.value,
            auto_logout_at=projection.auto_logout_at,
            code_expires_at=projection.code_expires_at,
            code_usable=projection.code_usable,
            locked_until=projection.locked_until,
            pin_failures=projection.pin_failures,
            pin_locks_in_a_row=projection.locks_in_a_row,
            projection_version=projection.version,
            updated_at=now,
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def claim_pin_check(
    db: AsyncSession, account_id: str, now: datetime, until: datetime
) -> bool:
    """Takes the account's one PIN-check slot until ``until``, unless another check holds it."""
    result = await db.execute(
        update(Account)
        .where(Account.id == account_id)
        .where((Account.pin_check_until.is_(None)) | (Account.pin_check_until <= now))
        .values(pin_check_until=until)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def release_pin_check(db: AsyncSession, account_id: str) -> Account | None:
    """Frees the PIN-check slot; returns the account as it stands, read under the row's lock."""
    return await db.scalar(
        update(Account)
        .where(Account.id == account_id)
        .values(pin_check_until=None)
        .returning(Account)
        .execution_options(synchronize_session=False)
    )


# -- devices


async def active_devices(db: AsyncSession, account_id: str) -> Sequence[Device]:
    result = await db.scalars(
        select(Device)
        .where(Device.account_id == account_id, Device.revoked_at.is_(None))
        .order_by(Device.enrolled_at)
    )
    return result.all()


async def touch_device(db: AsyncSession, device_id: str | None, now: datetime) -> bool:
    """Marks a trusted browser used; False if it was revoked (or never was)."""
    result = await db.execute(
        update(Device)
        .where(Device.id == device_id, Device.revoked_at.is_(None))
        .values(last_used_at=now)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def revoke_devices(
    db: AsyncSession,
    account_id: str,
    now: datetime,
    *,
    actor: str,
    reason: str,
    device_id: str | None = None,
) -> list[str]:
    """Revoke one device or all, end the sessions they opened, and audit each; returns the ids."""
    query = (
        update(Device)
        .where(Device.account_id == account_id, Device.revoked_at.is_(None))
        .values(revoked_at=now, revoked_by=actor)
        .returning(Device.id, Device.name)
    )
    if device_id is not None:
        query = query.where(Device.id == device_id)
    revoked = (await db.execute(query)).all()
    for device in revoked:
        await audit.append(
            db,
            "device_removed",
            account_id=account_id,
            actor=actor,
            at=now,
            device_id=device.id,
            name=device.name,
            reason=reason,
        )
    ids = [device.id for device in revoked]
    if ids:
        await db.execute(
            update(Session)
            .where(Session.device_id.in_(ids), Session.ended_at.is_(None))
            .values(ended_at=now, end_reason="device_revoked")
        )
        # a PIN login begun on a revoked browser ends too: no more verdicts on it
        await db.execute(
            update(LoginChallenge)
            .where(LoginChallenge.device_id.in_(ids), LoginChallenge.finished_at.is_(None))
            .values(finished_at=now)
        )
    return ids


# -- sessions


async def open_session(
    db: AsyncSession, token_digest: str | Sequence[str], now: datetime
) -> Session | None:
    """A session counts until ``expires_at`` exactly, whatever a timer's lateness (R3)."""
    return await db.scalar(
        select(Session).where(
            _digest_is(Session.token_digest, token_digest),
            Session.ended_at.is_(None),
            Session.expires_at > now,
        )
    )


async def session_cut_by_enable(
    db: AsyncSession, token_digest: str | Sequence[str]
) -> tuple[Session, Account] | None:
    """A session the account's current enrollment ended at its auto-logout, with its account.

    Its expiry was capped to exactly this enrollment's ``auto_logout_at`` (``limit_sessions``),
    and nothing but the auto-logout ended it.
    """
    row = (
        await db.execute(
            select(Session, Account)
            .join(Account, Account.id == Session.account_id)
            .where(
                _digest_is(Session.token_digest, token_digest),
                Account.two_factor_state != TwoFactorState.DISABLED,
                Session.expires_at == Account.auto_logout_at,
                or_(Session.ended_at.is_(None), Session.end_reason == "auto_logout"),
            )
        )
    ).first()
    return (row[0], row[1]) if row else None


def _before_two_factor(account_id: str, opened_before: datetime) -> Any:
    """Sessions the 2FA steps did not open: older than the enable, or without a trusted browser.

    The second half catches a password-only login that raced the enable and wrote its session
    after the enable's first cut (R3 holds by state, not by a time window).
    """
    return and_(
        Session.account_id == account_id,
        Session.ended_at.is_(None),
        or_(Session.created_at < opened_before, Session.device_id.is_(None)),
    )


async def limit_sessions(
    db: AsyncSession, account_id: str, at: datetime, opened_before: datetime
) -> None:
    """Every session 2FA did not open ends at ``at``; password-only logins from now on too.

    The account row is written first: on PostgreSQL its lock orders this cut against a racing
    login's ``session_cap``, which then sees ``at`` (SQLite writers are serial anyway).
    """
    await db.execute(update(Account).where(Account.id == account_id).values(auto_logout_at=at))
    await db.execute(
        update(Session)
        .where(_before_two_factor(account_id, opened_before), Session.expires_at > at)
        .values(expires_at=at)
    )


async def session_cap(db: AsyncSession, account_id: str) -> datetime | None:
    """When a password-only session opened now must end: the auto-logout of a racing enable."""
    return await db.scalar(
        select(Account.auto_logout_at).where(Account.id == account_id).with_for_update()
    )


async def end_sessions(
    db: AsyncSession, account_id: str, now: datetime, reason: str, *, created_before: datetime
) -> int:
    result = await db.execute(
        update(Session)
        .where(_before_two_factor(account_id, created_before))
        .values(ended_at=now, end_reason=reason)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def open_sessions(db: AsyncSession, account_id: str, now: datetime) -> Sequence[Session]:
    result = await db.scalars(
        select(Session).where(
            Session.account_id == account_id, Session.ended_at.is_(None), Session.expires_at > now
        )
    )
    return result.all()


# -- logins in progress


async def live_challenge_and_account(
    db: AsyncSession, id_digest: str | Sequence[str], now: datetime
) -> tuple[LoginChallenge, Account] | None:
    """A live login and its account, in one round trip."""
    row = (
        await db.execute(
            select(LoginChallenge, Account)
            .join(Account, Account.id == LoginChallenge.account_id)
            .where(
                _digest_is(LoginChallenge.id_digest, id_digest),
                LoginChallenge.finished_at.is_(None),
                LoginChallenge.expires_at > now,
            )
        )
    ).first()
    return (row[0], row[1]) if row else None


async def live_challenge(db: AsyncSession, id_digest: str, now: datetime) -> LoginChallenge | None:
    return await db.scalar(
        select(LoginChallenge).where(
            LoginChallenge.id_digest == id_digest,
            LoginChallenge.finished_at.is_(None),
            LoginChallenge.expires_at > now,
        )
    )


async def advance_challenge(
    db: AsyncSession, id_digest: str, from_step: str, to_step: str | None, **values: Any
) -> bool:
    """Compare-and-set on the step, so a double-click moves a login on only once."""
    changes = {"step": to_step or from_step, **values}
    result = await db.execute(
        update(LoginChallenge)
        .where(
            LoginChallenge.id_digest == id_digest,
            LoginChallenge.step == from_step,
            LoginChallenge.finished_at.is_(None),
        )
        .values(**changes)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def finish_challenges(db: AsyncSession, account_id: str, now: datetime) -> None:
    """A lock ends every login in progress of the account (S2)."""
    await db.execute(
        update(LoginChallenge)
        .where(LoginChallenge.account_id == account_id, LoginChallenge.finished_at.is_(None))
        .values(finished_at=now)
    )


# -- primary-password throttle


def _insert_for(db: AsyncSession) -> Any:
    return postgresql.insert if db.get_bind().dialect.name == "postgresql" else sqlite.insert


async def count_password_attempt(
    db: AsyncSession, key_digest: str, now: datetime
) -> tuple[int, datetime | None]:
    """Counts an attempt unless the email is blocked at ``now``: one atomic upsert, so
    concurrent guesses are all counted. Returns the failures in a row and the block's end."""
    insert = _insert_for(db)
    statement = insert(LoginThrottle).values(key_digest=key_digest, failures=1)
    statement = statement.on_conflict_do_update(
        index_elements=[LoginThrottle.key_digest],
        set_={
            "failures": case(
                (LoginThrottle.blocked_until > now, LoginThrottle.failures),
                else_=LoginThrottle.failures + 1,
            )
        },
    ).returning(LoginThrottle.failures, LoginThrottle.blocked_until)
    row = (await db.execute(statement)).one()
    return int(row.failures), row.blocked_until


async def block_logins(db: AsyncSession, key_digest: str, until: datetime) -> None:
    await db.execute(
        update(LoginThrottle)
        .where(LoginThrottle.key_digest == key_digest)
        .values(blocked_until=until)
    )


async def clear_password_failures(db: AsyncSession, key_digest: str) -> None:
    await db.execute(delete(LoginThrottle).where(LoginThrottle.key_digest == key_digest))


async def adopt_throttles(db: AsyncSession, key_digest: str, previous: Sequence[str]) -> None:
    """A counter kept under previous peppers' keys moves to the current key, failures and
    block included, so a pepper rotation never hands out fresh tries."""
    old = (
        await db.execute(
            delete(LoginThrottle)
            .where(LoginThrottle.key_digest.in_(list(previous)))
            .returning(LoginThrottle.failures, LoginThrottle.blocked_until)
        )
    ).all()
    if not old:
        return
    failures = max(row.failures for row in old)
    blocks = [row.blocked_until for row in old if row.blocked_until is not None]
    blocked_until = max(blocks) if blocks else None
    insert = _insert_for(db)
    statement = insert(LoginThrottle).values(
        key_digest=key_digest, failures=failures, blocked_until=blocked_until
    )
    await db.execute(
        statement.on_conflict_do_update(
            index_elements=[LoginThrottle.key_digest],
            set_={"failures": func.max(LoginThrottle.failures, failures)}
            if db.get_bind().dialect.name == "sqlite"
            else {"failures": func.greatest(LoginThrottle.failures, failures)},
        )
    )


# -- pepper rotation: what a previous pepper made, made anew at its next use


async def redigest(
    db: AsyncSession, model: type[Device] | type[Session], row_id: str, digest: str, pepper: str
) -> None:
    """A browser's or session's token digest, made again under the current pepper."""
    await db.execute(
        update(model).where(model.id == row_id).values(token_digest=digest, pepper_id=pepper)
    )


async def replace_secret(
    db: AsyncSession,
    column: InstrumentedAttribute[Any],
    pepper_column: InstrumentedAttribute[Any],
    account_id: str,
    old: str,
    new: str,
    pepper: str,
) -> None:
    """An account's hash or seal, made anew under ``pepper``, unless it changed meanwhile."""
    await db.execute(
        update(Account)
        .where(Account.id == account_id, column == old)
        .values({column: new, pepper_column: pepper})
    )


async def mails_since(db: AsyncSession, account_id: str, since: datetime) -> list[tuple[str, int]]:
    """The (enrollment, number) of the activation codes mailed to an account since ``since``."""
    keys = await db.scalars(
        select(SentMail.key).where(SentMail.account_id == account_id, SentMail.sent_at >= since)
    )
    mails = []
    for key in keys:
        enrollment_id, _, number = key.rpartition(":")
        mails.append((enrollment_id, int(number)))
    return mails


# -- activation and mail


async def save_draft(db: AsyncSession, **values: Any) -> None:
    """Inserts an activation draft, or replaces it: two identical activations racing (a double
    click) write one row, the last one's values."""
    insert = _insert_for(db)(ActivationDraft).values(**values)
    changed = {k: v for k, v in values.items() if k != "id"}
    await db.execute(insert.on_conflict_do_update(index_elements=["id"], set_=changed))


async def take_draft(db: AsyncSession, draft_id: str) -> ActivationDraft | None:
    draft = await db.get(ActivationDraft, draft_id)
    if draft is not None:
        await db.delete(draft)
    return draft


async def mail_sent(db: AsyncSession, key: str) -> bool:
    return (await db.get(SentMail, key)) is not None


# -- notifications (S10): an outbox the worker's notifier drains


async def notify(
    db: AsyncSession, account_id: str, kind: str, to_address: str, now: datetime, **details: Any
) -> None:
    """Queues a mail to the user in the caller's transaction: sent once that commits.

    It keeps the current request's id, for the notifier's audit record of the mail.
    """
    db.add(
        Notification(
            id=str(uuid.uuid4()),
            account_id=account_id,
            kind=kind,
            to_address=to_address,
            details=json.dumps(details, default=lambda v: v.isoformat()),
            created_at=now,
            due_at=now,
            attempts=0,
            request_id=REQUEST_ID.get(),
        )
    )


async def claim_notifications(
    db: AsyncSession, now: datetime, lease_until: datetime, limit: int
) -> Sequence[Notification]:
    """Due mails, each claimed until ``lease_until`` so no other notifier sends it meanwhile."""
    due = (
        select(Notification.id)
        .where(
            Notification.sent_at.is_(None),
            Notification.failed_at.is_(None),
            Notification.due_at <= now,
        )
        .order_by(Notification.due_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list((await db.scalars(due)).all())
    if not ids:
        return []
    await db.execute(
        update(Notification)
        .where(Notification.id.in_(ids))
        .values(due_at=lease_until, attempts=Notification.attempts + 1)
    )
    return (await db.scalars(select(Notification).where(Notification.id.in_(ids)))).all()


async def notification_done(
    db: AsyncSession,
    notification_id: str,
    now: datetime,
    *,
    sent: bool,
    error: str | None = None,
    retry_at: datetime | None = None,
) -> None:
    """Sent, failed for good (``retry_at`` None), or due again at ``retry_at``."""
    values: dict[str, Any] = {"last_error": error}
    if sent:
        values["sent_at"] = now
    elif retry_at is None:
        values["failed_at"] = now
    else:
        values["due_at"] = retry_at
    await db.execute(update(Notification).where(Notification.id == notification_id).values(values))
