"""Digests and secrets under a keyring of peppers: a row is found by any pepper's digest, what
a previous pepper made is made anew under the current one at its next use, and what is still
made under each pepper is counted for `twofa pepper status`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from twofa.audit import UNKEYED
from twofa.store.models import (
    Account,
    ActivationDraft,
    AuditRecord,
    Device,
    Operator,
    OperatorSession,
    Session,
)


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


#: What `twofa pepper status` counts, each as (name, its pepper column, the rows that count).
_COUNTED: list[tuple[str, Any, list[Any]]] = [
    ("password hashes", Account.password_pepper, []),
    ("PIN hashes", Account.pin_pepper, [Account.pin_hash.is_not(None)]),
    ("seals", Account.seal_pepper, [Account.seal_ciphertext.is_not(None)]),
    ("activation drafts", ActivationDraft.pepper_id, []),
    ("trusted browsers", Device.pepper_id, [Device.revoked_at.is_(None)]),
    ("open sessions", Session.pepper_id, [Session.ended_at.is_(None)]),
    ("operator passwords", Operator.pepper_id, []),
    ("operator sessions", OperatorSession.pepper_id, [OperatorSession.ended_at.is_(None)]),
]
#: Untagged rows, made before pepper ids, which a rotation tags with the pepper of their day.
_TAGGED: list[tuple[Any, Any, Any]] = [
    (Account, Account.password_pepper, Account.password_hash),
    (Account, Account.pin_pepper, Account.pin_hash),
    (Account, Account.seal_pepper, Account.seal_ciphertext),
    (ActivationDraft, ActivationDraft.pepper_id, ActivationDraft.pin_hash),
    (Device, Device.pepper_id, Device.token_digest),
    (Session, Session.pepper_id, Session.token_digest),
    (Operator, Operator.pepper_id, Operator.password_hash),
    (OperatorSession, OperatorSession.pepper_id, OperatorSession.token_digest),
]


async def made_under_each_pepper(
    db: AsyncSession, now: datetime
) -> list[tuple[str, str | None, int]]:
    """(what, pepper id or None for untagged, how many) of every peppered secret still in use."""
    counted = []
    for what, column, where in _COUNTED:
        query = select(column, func.count()).where(*where).group_by(column)
        if column is Session.pepper_id:
            query = query.where(Session.expires_at > now)
        if column is OperatorSession.pepper_id:
            query = query.where(OperatorSession.expires_at > now)
        counted += [(what, pepper, int(n)) for pepper, n in (await db.execute(query)).all()]
    return counted


async def keyed_audit_records(db: AsyncSession) -> AsyncIterator[AuditRecord]:
    """The audit records made under a key (a pepper's), oldest first, streamed."""
    records = await db.stream_scalars(
        select(AuditRecord).where(AuditRecord.version != UNKEYED).order_by(AuditRecord.seq)
    )
    async for record in records:
        yield record


async def tag_untagged(db: AsyncSession, pepper: str) -> None:
    """Rows made before pepper ids get the id of the pepper they were made under."""
    for model, column, secret in _TAGGED:
        await db.execute(
            update(model).where(column.is_(None), secret.is_not(None)).values({column: pepper})
        )
