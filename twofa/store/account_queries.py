"""The accounts: found by id or email (with the login's trusted browser), the workflow's state
written over them, and the one PIN-check slot each holds. Writers take an open transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import BindParameter, ColumnElement, and_, bindparam, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from twofa.store.models import Account, Device
from twofa.store.statements import as_model, rows_changed, table_of
from twofa.workflows.messages import Projection


def email_matches(email: str | BindParameter[str]) -> ColumnElement[bool]:
    """Case-insensitive, as the unique index on lower(email) judges it (and answers it)."""
    return func.lower(Account.email) == func.lower(email)


_accounts, _devices = table_of(Account), table_of(Device)
#: The account of an email (login path: built once)
_ACCOUNT_BY_EMAIL = select(_accounts).where(email_matches(bindparam("email")))
#: ... and its live browser of a token, under any of the keyring's digests, in the same trip.
_ACCOUNT_AND_DEVICE = (
    select(_accounts, *[c.label(f"device_{c.name}") for c in _devices.c])
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
    .where(email_matches(bindparam("email")))
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

_NOTE_PIN_FAILURE = (
    update(_accounts)
    .where(_accounts.c.id == bindparam("account"), _accounts.c.pin_hash == bindparam("checked"))
    .values(pin_failure_unrecorded=bindparam("failure"))
)
_FORGET_PIN_FAILURE = (
    update(_accounts)
    .where(
        _accounts.c.id == bindparam("account"),
        _accounts.c.pin_failure_unrecorded == bindparam("failure"),
    )
    .values(pin_failure_unrecorded=None)
)


async def account_by_id(db: AsyncSession, account_id: str) -> Account | None:
    return await db.get(Account, account_id)


async def login_lookup(
    db: AsyncSession, email: str, device_digests: Sequence[str] | None
) -> tuple[Account | None, Device | None]:
    """The account of ``email`` and its trusted browser of that token, in one round trip; both
    transient (see store.statements)."""
    if device_digests is None:
        row = (await db.execute(_ACCOUNT_BY_EMAIL, {"email": email})).first()
        return (as_model(Account, row), None) if row else (None, None)
    found = await db.execute(_ACCOUNT_AND_DEVICE, {"email": email, "digests": list(device_digests)})
    row = found.first()
    if row is None:
        return None, None
    device = as_model(Device, row, "device_") if row.device_id is not None else None
    return as_model(Account, row), device


async def email_taken(db: AsyncSession, email: str, *, except_account: str | None = None) -> bool:
    query = select(Account.id).where(email_matches(email))
    if except_account:
        query = query.where(Account.id != except_account)
    return (await db.scalar(query)) is not None


async def save_projection(db: AsyncSession, projection: Projection, now: datetime) -> bool:
    """Apply a workflow's state unless a newer one is there already (retries arrive late).
    A cut the projection drops (a disable) goes with the run that made it."""
    dropped = {"auto_logout_run": None} if projection.auto_logout_at is None else {}
    result = await db.execute(
        update(Account)
        .where(Account.id == projection.account_id)
        .where(Account.projection_version < projection.version)
        .values(
            **dropped,
            two_factor_state=projection.state.value,
            auto_logout_at=projection.auto_logout_at,
            code_expires_at=projection.code_expires_at,
            code_usable=projection.code_usable,
            locked_until=projection.locked_until,
            pin_failures=projection.pin_failures,
            pin_locks_in_a_row=projection.locks_in_a_row,
            projection_version=projection.version,
            updated_at=now,
        )
    )
    return bool(rows_changed(result))


async def claim_pin_check(
    db: AsyncSession, account_id: str, now: datetime, until: datetime
) -> bool:
    """Takes the account's one PIN-check slot until ``until``, unless another check holds it."""
    result = await db.execute(_CLAIM_PIN_CHECK, {"account": account_id, "now": now, "until": until})
    return bool(rows_changed(result))


async def note_pin_failure(
    db: AsyncSession, account_id: str, pin_hash: str | None, failure_id: str
) -> None:
    """A wrong PIN, kept until the workflow confirms it counted (``forget_pin_failure``); not
    if the PIN it was checked against is gone meanwhile (a disable, a new enrollment)."""
    values = {"account": account_id, "checked": pin_hash, "failure": failure_id}
    await db.execute(_NOTE_PIN_FAILURE, values)


async def forget_pin_failure(db: AsyncSession, account_id: str, failure_id: str) -> bool:
    """The workflow counted ``failure_id``; True when this call is the one that learnt it."""
    result = await db.execute(_FORGET_PIN_FAILURE, {"account": account_id, "failure": failure_id})
    return bool(rows_changed(result))


async def release_pin_check(db: AsyncSession, account_id: str) -> Account | None:
    """Frees the PIN-check slot; returns the account as it stands, read under the row's lock
    (transient, see store.statements)."""
    row = (await db.execute(_RELEASE_PIN_CHECK, {"account": account_id})).first()
    return as_model(Account, row) if row else None
