"""Logins in progress (a login's steps past the password): found live, moved on one step at a
time, and ended."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from twofa.store.models import Account, LoginChallenge
from twofa.store.statements import (
    as_model,
    column_values,
    rows_changed,
    table_of,
    with_its_account,
)

_challenges = table_of(LoginChallenge)
#: The login path's statements, built once (see store.statements).
_NEW_CHALLENGE = insert(_challenges)
_LIVE_CHALLENGE_AND_ACCOUNT = with_its_account(LoginChallenge, "login_").where(
    _challenges.c.id_digest.in_(bindparam("digests", expanding=True)),
    _challenges.c.finished_at.is_(None),
    _challenges.c.expires_at > bindparam("now"),
)
#: A login its last step finished since a moment (see LoginSteps.submit_pin), until it expires.
_FINISHED_CHALLENGE_AND_ACCOUNT = with_its_account(LoginChallenge, "login_").where(
    _challenges.c.id_digest.in_(bindparam("digests", expanding=True)),
    _challenges.c.finished_at > bindparam("since"),
    _challenges.c.expires_at > bindparam("now"),
)
#: The compare-and-set of a login's step (its new values are set per call).
_ADVANCE_CHALLENGE = update(_challenges).where(
    _challenges.c.id_digest == bindparam("digest"),
    _challenges.c.step == bindparam("from_step"),
    _challenges.c.finished_at.is_(None),
)


async def add_challenge(db: AsyncSession, challenge: LoginChallenge) -> None:
    await db.execute(_NEW_CHALLENGE, column_values(challenge))


async def live_challenge_and_account(
    db: AsyncSession, id_digests: Sequence[str], now: datetime
) -> tuple[LoginChallenge, Account] | None:
    """A live login and its account, in one round trip; both transient (see store.statements)."""
    values = {"digests": list(id_digests), "now": now}
    return await _challenge_and_account(db, _LIVE_CHALLENGE_AND_ACCOUNT, values)


async def finished_challenge_and_account(
    db: AsyncSession, id_digests: Sequence[str], now: datetime, since: datetime
) -> tuple[LoginChallenge, Account] | None:
    """A login that ended after ``since`` and has not yet expired, and its account; both
    transient."""
    values = {"digests": list(id_digests), "now": now, "since": since}
    return await _challenge_and_account(db, _FINISHED_CHALLENGE_AND_ACCOUNT, values)


async def _challenge_and_account(
    db: AsyncSession, statement: Any, values: dict[str, Any]
) -> tuple[LoginChallenge, Account] | None:
    row = (await db.execute(statement, values)).first()
    return (as_model(LoginChallenge, row, "login_"), as_model(Account, row)) if row else None


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
        _ADVANCE_CHALLENGE.values(**changes), {"digest": id_digest, "from_step": from_step}
    )
    return bool(rows_changed(result))


async def finish_challenges(db: AsyncSession, account_id: str, now: datetime) -> None:
    """A lock ends every login in progress of the account (S2)."""
    await db.execute(
        update(LoginChallenge)
        .where(LoginChallenge.account_id == account_id, LoginChallenge.finished_at.is_(None))
        .values(finished_at=now)
    )
