"""Notifications (S10): an outbox the worker's notifier drains."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from twofa.observability import REQUEST_ID
from twofa.store.models import Notification


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


async def claim_notification(
    db: AsyncSession, now: datetime, lease_until: datetime
) -> Notification | None:
    """The mail due first, claimed until ``lease_until`` so no other notifier sends it
    meanwhile; none if none is due."""
    due = (
        select(Notification)
        .where(
            Notification.sent_at.is_(None),
            Notification.failed_at.is_(None),
            Notification.due_at <= now,
        )
        .order_by(Notification.due_at)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    notification = await db.scalar(due)
    if notification is not None:
        notification.due_at = lease_until
        notification.attempts += 1
    return notification


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
