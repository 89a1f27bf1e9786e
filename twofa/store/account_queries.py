"""The accounts: found by id or email (with the login's trusted browser), the workflow's state
written over them, and the one PIN-check slot each holds. Writers take an open transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from twofa.store.models import Account, Device
from twofa.store.pepper_queries import digest_is
from twofa.workflows.messages import Projection


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
                    digest_is(Device.token_digest, device_digest),
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
