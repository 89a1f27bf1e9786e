"""Logins in progress (a login's steps past the password): found live, moved on one step at a
time, and ended."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from twofa.store.models import Account, LoginChallenge
from twofa.store.pepper_queries import digest_is


async def live_challenge_and_account(
    db: AsyncSession, id_digest: str | Sequence[str], now: datetime
) -> tuple[LoginChallenge, Account] | None:
    """A live login and its account, in one round trip."""
    row = (
        await db.execute(
            select(LoginChallenge, Account)
            .join(Account, Account.id == LoginChallenge.account_id)
            .where(
                digest_is(LoginChallenge.id_digest, id_digest),
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
