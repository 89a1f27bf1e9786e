"""Trusted browsers: listed, marked used, and revoked with the sessions and logins they opened."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from twofa import audit
from twofa.store.models import Account, Device, LoginChallenge, Session
from twofa.store.statements import rows_changed, table_of

_devices = table_of(Device)
#: Built once: it runs at every PIN login (see store.statements).
_TOUCH_DEVICE = (
    update(_devices)
    .where(_devices.c.id == bindparam("device"), _devices.c.revoked_at.is_(None))
    .values(last_used_at=bindparam("now"))
)


async def active_devices(db: AsyncSession, account_id: str) -> Sequence[Device]:
    result = await db.scalars(
        select(Device)
        .where(Device.account_id == account_id, Device.revoked_at.is_(None))
        .order_by(Device.enrolled_at)
    )
    return result.all()


async def touch_device(db: AsyncSession, device_id: str | None, now: datetime) -> bool:
    """Marks a trusted browser used; False if it was revoked (or never was)."""
    result = await db.execute(_TOUCH_DEVICE, {"device": device_id, "now": now})
    return bool(rows_changed(result))


async def revoked_device(db: AsyncSession, account_id: str, device_id: str) -> bool:
    """The account's browser ``device_id`` was revoked (by whom and when does not matter)."""
    found = await db.scalar(
        select(Device.id).where(
            Device.id == device_id,
            Device.account_id == account_id,
            Device.revoked_at.is_not(None),
        )
    )
    return found is not None


async def revoke_devices(
    db: AsyncSession,
    account_id: str,
    now: datetime,
    *,
    actor: str,
    reason: str,
    device_id: str | None = None,
) -> list[str]:
    """Revoke one device or all, end the sessions they opened, and audit each; returns the ids.

    The account's row is locked first, as a PIN login's last transaction locks it before the
    login and the browser: on PostgreSQL the two then wait for each other in turn, instead of
    each holding what the other needs until one is aborted for a deadlock.
    """
    await db.execute(select(Account.id).where(Account.id == account_id).with_for_update())
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
