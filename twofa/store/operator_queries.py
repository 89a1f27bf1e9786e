"""Dashboard operators and their sessions. The rules (roles, password checks, throttle, audit)
stay in admin.py; these only read and write the rows. Writers take an open transaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from twofa.store.models import Operator, OperatorSession


async def operator_email_taken(db: AsyncSession, email: str) -> bool:
    """Operators' emails are stored lowercased, so the comparison is exact."""
    return bool(await db.scalar(select(Operator.id).where(Operator.email == email)))


async def add_operator(
    db: AsyncSession,
    *,
    email: str,
    role: str,
    password_hash: str,
    pepper_id: str,
    created_at: datetime,
) -> str:
    """Adds an operator; returns its new id."""
    operator_id = str(uuid.uuid4())
    db.add(
        Operator(
            id=operator_id,
            email=email,
            password_hash=password_hash,
            pepper_id=pepper_id,
            role=role,
            created_at=created_at,
        )
    )
    return operator_id


async def operator_by_email(db: AsyncSession, email: str) -> Operator | None:
    return await db.scalar(select(Operator).where(Operator.email == email))


async def rehash_operator(
    db: AsyncSession, operator_id: str, old_hash: str, new_hash: str, pepper_id: str
) -> None:
    """An operator's password hash, made anew under ``pepper_id``, unless it changed meanwhile."""
    await db.execute(
        update(Operator)
        .where(Operator.id == operator_id)
        .where(Operator.password_hash == old_hash)
        .values(password_hash=new_hash, pepper_id=pepper_id)
    )


async def open_operator_session(
    db: AsyncSession,
    *,
    token_digest: str,
    pepper_id: str,
    operator_id: str,
    created_at: datetime,
    expires_at: datetime,
) -> None:
    db.add(
        OperatorSession(
            token_digest=token_digest,
            pepper_id=pepper_id,
            operator_id=operator_id,
            created_at=created_at,
            expires_at=expires_at,
        )
    )


async def operator_of_session(
    db: AsyncSession, token_digests: Sequence[str], now: datetime
) -> Operator | None:
    """The operator of a live session whose token has any of these digests (one per pepper)."""
    return (
        await db.execute(
            select(Operator)
            .join(OperatorSession, OperatorSession.operator_id == Operator.id)
            .where(
                OperatorSession.token_digest.in_(token_digests),
                OperatorSession.ended_at.is_(None),
                OperatorSession.expires_at > now,
            )
        )
    ).scalar_one_or_none()


async def end_operator_session(
    db: AsyncSession, token_digests: Sequence[str], now: datetime
) -> Operator | None:
    """The operator whose open session this call ended; ``None`` when none was open."""
    ended = await db.scalar(
        update(OperatorSession)
        .where(
            OperatorSession.token_digest.in_(token_digests),
            OperatorSession.ended_at.is_(None),
        )
        .values(ended_at=now)
        .returning(OperatorSession.operator_id)
    )
    return None if ended is None else await db.get(Operator, ended)
