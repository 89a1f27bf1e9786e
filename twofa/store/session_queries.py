"""Users' sessions: the one a token opens, and the cuts an enable, a disable or a lock makes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from twofa.store.models import Account, Session
from twofa.store.pepper_queries import digest_is
from twofa.store.statements import (
    as_model,
    column_values,
    rows_changed,
    table_of,
    with_its_account,
)
from twofa.workflows.messages import TwoFactorState

_sessions = table_of(Session)
#: ``Session.end_reason`` of an open session untied from its browser by the disable it asked
#: for (see ``AccountSettings.disable``): while 2FA is still on, it serves only that disable's
#: repeat.
KEPT_FOR_DISABLE = "kept_for_disable"
#: Built once: every login ends in a new session, every user's call checks one (see
#: store.statements).
_NEW_SESSION = insert(_sessions)
_OPEN_SESSION_AND_ACCOUNT = with_its_account(Session, "session_").where(
    _sessions.c.token_digest.in_(bindparam("digests", expanding=True)),
    _sessions.c.ended_at.is_(None),
    _sessions.c.expires_at > bindparam("now"),
)


async def add_session(db: AsyncSession, session: Session) -> None:
    await db.execute(_NEW_SESSION, column_values(session))


async def open_session_and_account(
    db: AsyncSession, token_digests: Sequence[str], now: datetime
) -> tuple[Session, Account] | None:
    """An open session and its account, in one round trip; both transient (see
    store.statements). A session counts until ``expires_at`` exactly, whatever a timer's
    lateness (R3)."""
    values = {"digests": list(token_digests), "now": now}
    row = (await db.execute(_OPEN_SESSION_AND_ACCOUNT, values)).first()
    return (as_model(Session, row, "session_"), as_model(Account, row)) if row else None


async def session_cut_by_enable(
    db: AsyncSession, token_digest: str | Sequence[str]
) -> tuple[Session, Account] | None:
    """A session the account's current enrollment ended at its auto-logout, with its account.

    Its expiry was capped to exactly this enrollment's ``auto_logout_at`` (``limit_sessions``),
    and nothing but the auto-logout ended it; the enable may still be under way (the store then
    says 2FA is off, and the cut is there all the same: a disable clears it).
    """
    row = (
        await db.execute(
            select(Session, Account)
            .join(Account, Account.id == Session.account_id)
            .where(
                digest_is(Session.token_digest, token_digest),
                Session.expires_at == Account.auto_logout_at,
                or_(Session.ended_at.is_(None), Session.end_reason == "auto_logout"),
            )
        )
    ).first()
    return (row[0], row[1]) if row else None


def _before_two_factor(account_id: str, opened_before: datetime) -> Any:
    """Sessions the 2FA steps did not open: older than the enable, or without a trusted browser.

    The second half catches a password-only login that raced the enable and wrote its session
    after the enable's first cut (R3 holds by state, not by a time window). A session a disable
    untied from its browser was a trusted browser's: the auto-logout that races that disable
    leaves it open for the disable's repeat (S9).
    """
    password_only = and_(
        Session.device_id.is_(None), Session.end_reason.is_distinct_from(KEPT_FOR_DISABLE)
    )
    return and_(
        Session.account_id == account_id,
        Session.ended_at.is_(None),
        or_(Session.created_at < opened_before, password_only),
    )


async def limit_sessions(
    db: AsyncSession, account_id: str, at: datetime, opened_before: datetime, run: str | None
) -> datetime:
    """Every session 2FA did not open ends at ``at``; password-only logins from now on too.
    ``run``: the workflow run of the enable making the cut, kept beside it.

    Returns the cut in force: an earlier one of the same run is this enable's own, made by a try
    whose worker died before the workflow heard of it, however late this try comes; the sessions
    it capped end then, and so it stands (R3). A cut made before cuts named their run counts as
    this enable's own if 2FA is still off.

    The account row is locked first: on PostgreSQL its lock orders this cut against a racing
    login's ``session_cap``, which then sees the cut (SQLite writers are serial anyway).
    """
    row = (
        await db.execute(
            select(Account.auto_logout_at, Account.auto_logout_run, Account.two_factor_state)
            .where(Account.id == account_id)
            .with_for_update(key_share=True)  # as the UPDATE below: rows referring to it go on
        )
    ).first()
    if row is not None and row.auto_logout_at is not None and row.auto_logout_at < at:
        own = (
            row.auto_logout_run == run
            if row.auto_logout_run is not None
            else row.two_factor_state == TwoFactorState.DISABLED
        )
        if own:
            at = row.auto_logout_at
    await db.execute(
        update(Account)
        .where(Account.id == account_id)
        .values(auto_logout_at=at, auto_logout_run=run)
    )
    await db.execute(
        update(Session)
        .where(_before_two_factor(account_id, opened_before), Session.expires_at > at)
        .values(expires_at=at)
    )
    return at


async def session_cap(db: AsyncSession, account_id: str) -> datetime | None:
    """When a password-only session opened now must end: the auto-logout of a racing enable,
    passed or not (an enable a slow relay holds past its cut still logs every session out)."""
    return await db.scalar(
        select(Account.auto_logout_at).where(Account.id == account_id).with_for_update()
    )


async def forget_cut(db: AsyncSession, account_id: str, run: str | None) -> bool:
    """Clears the cut ``run`` made on an account whose 2FA is still off: that run closed before
    its state change (an operator terminated it), and the cut would end every later session at
    birth. Unless another enable has made a cut since."""
    column = Account.auto_logout_run
    made_by = column == run if run is not None else column.is_(None)
    result = await db.execute(
        update(Account)
        .where(
            Account.id == account_id,
            Account.two_factor_state == TwoFactorState.DISABLED,
            Account.auto_logout_at.is_not(None),
            made_by,
        )
        .values(auto_logout_at=None, auto_logout_run=None)
    )
    return bool(rows_changed(result))


async def end_sessions(
    db: AsyncSession, account_id: str, now: datetime, reason: str, *, created_before: datetime
) -> int:
    result = await db.execute(
        update(Session)
        .where(_before_two_factor(account_id, created_before))
        .values(ended_at=now, end_reason=reason)
    )
    return rows_changed(result)


async def open_sessions(db: AsyncSession, account_id: str, now: datetime) -> Sequence[Session]:
    result = await db.scalars(
        select(Session).where(
            Session.account_id == account_id, Session.ended_at.is_(None), Session.expires_at > now
        )
    )
    return result.all()
