"""Digests and secrets under a keyring of peppers: a row is found by any pepper's digest, and
what a previous pepper made is made anew under the current one at its next use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from twofa.store.models import Account, Device, Session


def digest_is(column: Any, digest: str | Sequence[str]) -> ColumnElement[bool]:
    """One digest, or any of a keyring's (one per pepper, after a rotation)."""
    if isinstance(digest, str):
        return column == digest
    return column.in_(list(digest))


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
