"""The statements of a trusted-browser login (password, then PIN), built once.

A login runs four short write transactions around two argon2 runs. Through the ORM each of its
statements was built anew, its cache key computed, its update synchronized with the session
and its inserts flushed by the unit of work: more Python than SQL. Here each statement is a
Core statement on the tables, built at import with bound parameters, so a call only binds its
values; rows come back as plain (transient) model objects, which the service reads and never
writes back through a session. Writers take the caller's open transaction, as in ``queries``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import Row, Table, and_, bindparam, case, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from twofa.store.models import Account, Device, LoginChallenge, LoginThrottle, Session

M = TypeVar("M", Account, Device, LoginChallenge)


def _table(model: type[Any]) -> Table:
    return cast(Table, model.__table__)


_accounts, _devices, _challenges = _table(Account), _table(Device), _table(LoginChallenge)
_throttles, _sessions = _table(LoginThrottle), _table(Session)
_DEVICE = [c.label(f"device_{c.name}") for c in _devices.c]
_CHALLENGE = [c.label(f"login_{c.name}") for c in _challenges.c]

#: The account of an email (as its unique index on lower(email) judges it).
_ACCOUNT_BY_EMAIL = select(_accounts).where(
    func.lower(_accounts.c.email) == func.lower(bindparam("email"))
)
#: ... and its live browser of a token, under any of the keyring's digests, in the same trip.
_ACCOUNT_AND_DEVICE = (
    select(_accounts, *_DEVICE)
    .select_from(
        _accounts.outerjoin(
            _devices,
            and_(
                _devices.c.account_id == _accounts.c.id,
                _devices.c.token_digest.in_(bindparam("digests", expanding=True)),
                _devices.c.revoked_at.is_(None),
            ),
        )
    )
    .where(func.lower(_accounts.c.email) == func.lower(bindparam("email")))
)


def _count_attempt(dialect: Any) -> Any:
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


_COUNT_ATTEMPT = {"postgresql": _count_attempt(postgresql), "sqlite": _count_attempt(sqlite)}
_CLEAR_FAILURES = delete(_throttles).where(_throttles.c.key_digest == bindparam("key"))
_NEW_CHALLENGE = insert(_challenges)
_LIVE_CHALLENGE_AND_ACCOUNT = (
    select(_accounts, *_CHALLENGE)
    .select_from(_challenges.join(_accounts, _accounts.c.id == _challenges.c.account_id))
    .where(
        _challenges.c.id_digest.in_(bindparam("digests", expanding=True)),
        _challenges.c.finished_at.is_(None),
        _challenges.c.expires_at > bindparam("now"),
    )
)
_CLAIM_PIN_CHECK = (
    update(_accounts)
    .where(
        _accounts.c.id == bindparam("account"),
        or_(_accounts.c.pin_check_until.is_(None), _accounts.c.pin_check_until <= bindparam("now")),
    )
    .values(pin_check_until=bindparam("until"))
)
_RELEASE_PIN_CHECK = (
    update(_accounts)
    .where(_accounts.c.id == bindparam("account"))
    .values(pin_check_until=None)
    .returning(*_accounts.c)
)
_FINISH_CHALLENGE = (
    update(_challenges)
    .where(
        _challenges.c.id_digest == bindparam("digest"),
        _challenges.c.step == bindparam("from_step"),
        _challenges.c.finished_at.is_(None),
    )
    .values(finished_at=bindparam("now"))
)
_TOUCH_DEVICE = (
    update(_devices)
    .where(_devices.c.id == bindparam("device"), _devices.c.revoked_at.is_(None))
    .values(last_used_at=bindparam("now"))
)
_NEW_SESSION = insert(_sessions)


def _model(model: type[M], row: Row[Any], prefix: str = "") -> M:
    """A transient model object from a row's columns (``prefix``: their labels' prefix)."""
    values = row._mapping
    return model(**{c.key: values[f"{prefix}{c.name}"] for c in _table(model).c})


def _values(instance: Any) -> dict[str, Any]:
    """A new model object's columns, for a Core insert (no unit of work, no flush)."""
    return {c.name: getattr(instance, c.key) for c in _table(type(instance)).c}


async def login_lookup(
    db: AsyncSession, email: str, device_digests: Sequence[str] | None
) -> tuple[Account | None, Device | None]:
    """The account of ``email`` and its trusted browser of that token, in one round trip."""
    if device_digests is None:
        row = (await db.execute(_ACCOUNT_BY_EMAIL, {"email": email})).first()
        return (_model(Account, row), None) if row else (None, None)
    found = await db.execute(_ACCOUNT_AND_DEVICE, {"email": email, "digests": list(device_digests)})
    row = found.first()
    if row is None:
        return None, None
    device = _model(Device, row, "device_") if row.device_id is not None else None
    return _model(Account, row), device


async def count_password_attempt(
    db: AsyncSession, key_digest: str, now: datetime
) -> tuple[int, datetime | None]:
    """``queries.count_password_attempt``: the attempt counted unless blocked, one upsert."""
    statement = _COUNT_ATTEMPT[db.get_bind().dialect.name]
    row = (await db.execute(statement, {"key": key_digest, "now": now})).one()
    return int(row.failures), row.blocked_until


async def clear_password_failures(db: AsyncSession, key_digest: str) -> None:
    await db.execute(_CLEAR_FAILURES, {"key": key_digest})


async def add_challenge(db: AsyncSession, challenge: LoginChallenge) -> None:
    await db.execute(_NEW_CHALLENGE, _values(challenge))


async def live_challenge_and_account(
    db: AsyncSession, id_digests: Sequence[str], now: datetime
) -> tuple[LoginChallenge, Account] | None:
    """A live login and its account, in one round trip."""
    row = (
        await db.execute(_LIVE_CHALLENGE_AND_ACCOUNT, {"digests": list(id_digests), "now": now})
    ).first()
    return (_model(LoginChallenge, row, "login_"), _model(Account, row)) if row else None


async def claim_pin_check(
    db: AsyncSession, account_id: str, now: datetime, until: datetime
) -> bool:
    """Takes the account's one PIN-check slot until ``until``, unless another check holds it."""
    result = await db.execute(_CLAIM_PIN_CHECK, {"account": account_id, "now": now, "until": until})
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def release_pin_check(db: AsyncSession, account_id: str) -> Account | None:
    """Frees the PIN-check slot; returns the account as it stands, read under the row's lock."""
    row = (await db.execute(_RELEASE_PIN_CHECK, {"account": account_id})).first()
    return _model(Account, row) if row else None


async def finish_challenge(db: AsyncSession, id_digest: str, step: str, now: datetime) -> bool:
    """Compare-and-set on the step: a double-click ends a login (and opens a session) once."""
    result = await db.execute(
        _FINISH_CHALLENGE, {"digest": id_digest, "from_step": step, "now": now}
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def touch_device(db: AsyncSession, device_id: str | None, now: datetime) -> bool:
    """Marks a trusted browser used; False if it was revoked (or never was)."""
    result = await db.execute(_TOUCH_DEVICE, {"device": device_id, "now": now})
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def add_session(db: AsyncSession, session: Session) -> None:
    await db.execute(_NEW_SESSION, _values(session))
