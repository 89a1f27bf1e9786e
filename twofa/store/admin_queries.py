"""The dashboard's reads over all accounts: the overview's counts and the account listing.

Each stays quick at a million accounts: the overview reads tallies that triggers keep in the
transaction of every change (migration 0011) instead of counting rows; the listing walks one
index per sort (lower(email) for the email sort and the prefix search), reaches at most
``REACHABLE`` rows deep, and counts a search's matches only up to that bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any, Literal

from sqlalchemy import ColumnElement, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from twofa.store.models import Account, AuditDay, FunnelTally, StateTally

SortKey = Literal["email", "created_at", "updated_at", "state"]
#: How deep paging reaches and how far a search's matches are counted: past it an OFFSET walk
#: and an exact count grow with the table; a narrower search or the reverse order reaches on.
REACHABLE = 10_000
_lowered = func.lower(Account.email)  # emails are kept as typed, sorted and searched in any case
#: Each sort and the columns that make it total, in the order of the index that serves it.
_SORT_COLUMNS: dict[str, tuple[Any, ...]] = {
    "email": (_lowered,),
    "created_at": (Account.created_at, Account.id),
    "updated_at": (Account.updated_at, Account.id),
    "state": (Account.two_factor_state, _lowered),
}


async def state_counts(db: AsyncSession) -> dict[str, int]:
    """Accounts per stored 2FA state."""
    rows = await db.execute(select(StateTally.state, StateTally.accounts))
    return {state: int(accounts) for state, accounts in rows.all()}


async def funnel_counts(db: AsyncSession) -> dict[int, int]:
    """Accounts that ever reached each enrollment level (1 enabled, 2 validated, 3 active)."""
    rows = await db.execute(select(FunnelTally.level, FunnelTally.accounts))
    return {level: int(accounts) for level, accounts in rows.all()}


async def audit_days(
    db: AsyncSession, since: date, events: Sequence[str]
) -> list[tuple[date, str, int]]:
    """Audit records per UTC day from ``since`` on, of these events, oldest day first."""
    rows = await db.execute(
        select(AuditDay.day, AuditDay.event, AuditDay.records)
        .where(AuditDay.event.in_(events), AuditDay.day >= since)
        .order_by(AuditDay.day, AuditDay.event)
    )
    return [(day, event, int(records)) for day, event, records in rows.all()]


async def locked_accounts(db: AsyncSession, limit: int) -> Sequence[Account]:
    """Accounts stored as locked, by email (a lock past its end is still among them)."""
    rows = await db.scalars(
        select(Account).where(Account.two_factor_state == "locked").order_by(_lowered).limit(limit)
    )
    return rows.all()


def _filters(prefix: str, state: str | None) -> list[ColumnElement[bool]]:
    found: list[ColumnElement[bool]] = []
    if prefix:  # a range on the index of lower(email); the prefix comes lowercased
        found += [_lowered >= prefix, _lowered < prefix + "\uffff"]
    if state:
        found.append(Account.two_factor_state == state)
    return found


async def count_accounts(db: AsyncSession, prefix: str, state: str | None) -> tuple[int, bool]:
    """How many accounts match, and whether that is exact: the tallies answer a state filter or
    none at once; a search is counted up to ``REACHABLE`` matches, then (REACHABLE, False)."""
    if not prefix:
        counts = await state_counts(db)
        return (counts.get(state, 0) if state else sum(counts.values())), True
    # in the order of the index the filters range over, so no planner walks another index
    order = _SORT_COLUMNS["state" if state else "email"]
    bounded = (
        select(literal(1))
        .where(*_filters(prefix, state))
        .order_by(*order)
        .limit(REACHABLE + 1)
        .subquery()
    )
    found = int(await db.scalar(select(func.count()).select_from(bounded)) or 0)
    return min(found, REACHABLE), found <= REACHABLE


async def account_page(
    db: AsyncSession,
    *,
    prefix: str,
    state: str | None,
    sort: SortKey,
    descending: bool,
    offset: int,
    limit: int,
) -> Sequence[Account]:
    """One page of matching accounts in the sort's index order (offset at most REACHABLE).
    Where the sort's index holds the id (every one on PostgreSQL, see models.py), the offset is
    walked in the index alone and only the page's rows are read: PostgreSQL would otherwise
    fetch every skipped row (SQLite's indexes hold the rowid, which it reads rows by)."""
    order = [c.desc() if descending else c.asc() for c in _SORT_COLUMNS[sort]]
    query = select(Account).where(*_filters(prefix, state))
    if _SORT_COLUMNS[sort][-1] is Account.id or db.get_bind().dialect.name == "postgresql":
        ids = (
            query.with_only_columns(Account.id)
            .order_by(*order)
            .offset(min(offset, REACHABLE))
            .limit(limit)
            .subquery()
        )
        query = select(Account).join(ids, Account.id == ids.c.id)
    else:
        query = query.offset(min(offset, REACHABLE)).limit(limit)
    rows = await db.scalars(query.order_by(*order))
    return rows.all()
