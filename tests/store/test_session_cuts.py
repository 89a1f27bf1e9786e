"""The enable's session cut (R3), as a password login and a re-run enable read it.

A cut caps every password-only session, passed or not, for as long as its enable could still be
under way; one passed longer ago, on an account the store still says has 2FA off, is a stray an
operator's terminate left, and caps nothing. A re-run enable keeps an earlier cut only while it
is ahead, so a stray is never taken over by the next enable.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from twofa import audit
from twofa.config import Settings
from twofa.crypto import Keyring
from twofa.store import session_queries
from twofa.store.db import Database, migrate
from twofa.store.models import Account
from twofa.vocabulary import TwoFactorState as S

NOW = datetime.now(UTC).replace(microsecond=0)
AHEAD, PASSED = NOW + timedelta(seconds=5), NOW - timedelta(seconds=5)
STRAYS_AFTER = timedelta(seconds=30)
LONG_PASSED = NOW - STRAYS_AFTER - timedelta(seconds=1)


@pytest.fixture
async def db(fresh_url: str, base_settings: Settings) -> AsyncIterator[Database]:
    migrate(fresh_url)
    database = Database(fresh_url, audit=audit.chain_for(base_settings, Keyring.of(base_settings)))
    yield database
    await database.dispose()


async def account_with_cut(db: Database, state: S, cut: datetime | None) -> str:
    account_id = str(uuid.uuid4())
    async with db.write() as session:
        session.add(
            Account(
                id=account_id, email=f"{account_id}@example.com", password_hash="-",
                created_at=NOW, updated_at=NOW, two_factor_state=state, auto_logout_at=cut,
            )
        )  # fmt: skip
    return account_id


@pytest.mark.parametrize(
    ("state", "cut", "cap"),
    [
        (S.DISABLED, None, None),
        (S.DISABLED, AHEAD, AHEAD),  # an enable under way: the session ends with the others
        (S.DISABLED, PASSED, PASSED),  # an enable a slow relay holds past its own cut
        (S.DISABLED, LONG_PASSED, None),  # a stray: it would end every session at birth
        (S.PENDING_CODE, LONG_PASSED, LONG_PASSED),  # the enable landed since the state was read
    ],
)
async def test_a_password_session_is_capped_by_a_cut_its_enable_may_still_make(
    db: Database, state: S, cut: datetime | None, cap: datetime | None
) -> None:
    account_id = await account_with_cut(db, state, cut)
    async with db.write() as session:
        assert await session_queries.session_cap(session, account_id, NOW, STRAYS_AFTER) == cap


@pytest.mark.parametrize(
    ("earlier", "in_force"),
    [
        (None, AHEAD + timedelta(seconds=3)),
        (AHEAD, AHEAD),  # a try of this enable whose worker died: its cut stands
        (PASSED, AHEAD + timedelta(seconds=3)),  # a stray: the user is not logged out at once
    ],
)
async def test_an_enable_keeps_an_earlier_cut_only_while_it_is_ahead(
    db: Database, earlier: datetime | None, in_force: datetime
) -> None:
    account_id = await account_with_cut(db, S.DISABLED, earlier)
    at = AHEAD + timedelta(seconds=3)
    async with db.write() as session:
        assert await session_queries.limit_sessions(session, account_id, at, NOW) == in_force
    async with db.read() as session:
        account = await session.get(Account, account_id)
    assert account is not None and account.auto_logout_at == in_force
