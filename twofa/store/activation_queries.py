"""An activation's draft (the seals the API drafts for an activity to move into place) and
the activation-code mails sent."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from twofa.store.db import insert_for
from twofa.store.models import ActivationDraft, SentMail


async def save_draft(db: AsyncSession, **values: Any) -> None:
    """Inserts an activation draft, or replaces it: two identical activations racing (a double
    click) write one row, the last one's values."""
    insert = insert_for(db)(ActivationDraft).values(**values)
    changed = {k: v for k, v in values.items() if k != "id"}
    await db.execute(insert.on_conflict_do_update(index_elements=["id"], set_=changed))


async def take_draft(db: AsyncSession, draft_id: str) -> ActivationDraft | None:
    """Removes the draft and returns it, in one statement: of two transactions taking it at
    once (PostgreSQL lets them overlap), one gets it and the other finds it gone."""
    taken = delete(ActivationDraft).where(ActivationDraft.id == draft_id)
    return await db.scalar(taken.returning(ActivationDraft))


async def mail_sent(db: AsyncSession, key: str) -> bool:
    return (await db.get(SentMail, key)) is not None


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
