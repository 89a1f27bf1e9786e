"""The primary-password throttle: failures in a row and the block, counted per keyed email."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, case, delete, func, update
from sqlalchemy.ext.asyncio import AsyncSession

from twofa.store.db import UPSERT_DIALECTS, insert_for
from twofa.store.models import LoginThrottle
from twofa.store.statements import table_of

_throttles = table_of(LoginThrottle)


def _count_attempt(dialect: Any) -> Any:
    """The attempt's upsert in ``dialect`` (login path: built once per dialect)."""
    statement = dialect.insert(_throttles).values(key_digest=bindparam("key"), failures=1)
    return statement.on_conflict_do_update(
        index_elements=[_throttles.c.key_digest],
        set_={
            "failures": case(
                (_throttles.c.blocked_until > bindparam("now"), _throttles.c.failures),
                else_=_throttles.c.failures + 1,
            )
        },
    ).returning(_throttles.c.failures, _throttles.c.blocked_until)


_COUNT_ATTEMPT = {name: _count_attempt(module) for name, module in UPSERT_DIALECTS.items()}
_CLEAR_FAILURES = delete(_throttles).where(_throttles.c.key_digest == bindparam("key"))


async def count_password_attempt(
    db: AsyncSession, key_digest: str, now: datetime
) -> tuple[int, datetime | None]:
    """Counts an attempt unless the email is blocked at ``now``: one atomic upsert, so
    concurrent guesses are all counted. Returns the failures in a row and the block's end."""
    statement = _COUNT_ATTEMPT[db.get_bind().dialect.name]
    row = (await db.execute(statement, {"key": key_digest, "now": now})).one()
    return int(row.failures), row.blocked_until


async def block_logins(db: AsyncSession, key_digest: str, until: datetime) -> None:
    await db.execute(
        update(LoginThrottle)
        .where(LoginThrottle.key_digest == key_digest)
        .values(blocked_until=until)
    )


async def clear_password_failures(db: AsyncSession, key_digest: str) -> None:
    await db.execute(_CLEAR_FAILURES, {"key": key_digest})


async def adopt_throttles(db: AsyncSession, key_digest: str, previous: Sequence[str]) -> None:
    """A counter kept under previous peppers' keys moves to the current key, failures and
    block included, so a pepper rotation never hands out fresh tries."""
    old = (
        await db.execute(
            delete(LoginThrottle)
            .where(LoginThrottle.key_digest.in_(list(previous)))
            .returning(LoginThrottle.failures, LoginThrottle.blocked_until)
        )
    ).all()
    if not old:
        return
    failures = max(row.failures for row in old)
    blocks = [row.blocked_until for row in old if row.blocked_until is not None]
    blocked_until = max(blocks) if blocks else None
    insert = insert_for(db)
    statement = insert(LoginThrottle).values(
        key_digest=key_digest, failures=failures, blocked_until=blocked_until
    )
    await db.execute(
        statement.on_conflict_do_update(
            index_elements=[LoginThrottle.key_digest],
            set_={"failures": func.max(LoginThrottle.failures, failures)}
            if db.get_bind().dialect.name == "sqlite"
            else {"failures": func.greatest(LoginThrottle.failures, failures)},
        )
    )
