"""The enable's session cut (R3), as a password login, a re-run enable and a stray read it.

A cut caps every password-only session, passed or not. It names the workflow run that made it:
a try of the same enable run again keeps it however late it comes, another run's cut is not
taken over, and a cut whose run closed before 2FA was on is forgotten only while no other
enable has made one since.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from twofa.store import account_queries, session_queries
from twofa.store.db import Database
from twofa.store.models import Account
from twofa.vocabulary import TwoFactorState as S
from twofa.workflows.messages import Projection

NOW = datetime.now(UTC).replace(microsecond=0)
AHEAD, PASSED = NOW + timedelta(seconds=5), NOW - timedelta(seconds=5)
LATER = AHEAD + timedelta(seconds=3)  # the cut a try made now would make
RUN, OTHER_RUN = "run-of-this-enable", "run-of-another-enable"


async def account_with_cut(db: Database, state: S, cut: datetime | None, run: str | None) -> str:
    account_id = str(uuid.uuid4())
    async with db.write() as session:
        session.add(
            Account(
                id=account_id, email=f"{account_id}@example.com", password_hash="-",
                created_at=NOW, updated_at=NOW, two_factor_state=state, auto_logout_at=cut,
                auto_logout_run=run,
            )
        )  # fmt: skip
    return account_id


async def stored_cut(db: Database, account_id: str) -> tuple[datetime | None, str | None]:
    async with db.read() as session:
        account = await session.get(Account, account_id)
    assert account is not None
    return account.auto_logout_at, account.auto_logout_run


@pytest.mark.parametrize("cut", [None, AHEAD, PASSED])
async def test_a_password_session_is_capped_by_any_cut_passed_or_not(
    db: Database, cut: datetime | None
) -> None:
    account_id = await account_with_cut(db, S.DISABLED, cut, RUN)
    async with db.write() as session:
        assert await session_queries.session_cap(session, account_id) == cut


@pytest.mark.parametrize(
    ("state", "earlier", "made_by", "in_force"),
    [
        (S.DISABLED, None, None, LATER),
        (S.DISABLED, AHEAD, RUN, AHEAD),  # a try of this enable whose worker died
        (S.DISABLED, PASSED, RUN, PASSED),  # the same, run again after its cut
        (S.PENDING_CODE, PASSED, RUN, PASSED),  # the same, after its state change
        (S.DISABLED, AHEAD, OTHER_RUN, LATER),  # a stray: the user is not logged out early
        (S.DISABLED, AHEAD, None, AHEAD),  # made before cuts named their run: 2FA still off
        (S.PENDING_CODE, AHEAD, None, LATER),
    ],
)
async def test_an_enable_keeps_an_earlier_cut_of_its_own_run(
    db: Database, state: S, earlier: datetime | None, made_by: str | None, in_force: datetime
) -> None:
    account_id = await account_with_cut(db, state, earlier, made_by)
    async with db.write() as session:
        assert (
            await session_queries.limit_sessions(session, account_id, LATER, NOW, RUN) == in_force
        )
    assert await stored_cut(db, account_id) == (in_force, RUN)


@pytest.mark.parametrize(
    ("state", "made_by", "seen", "forgotten"),
    [
        (S.DISABLED, RUN, RUN, True),  # the closed run's cut
        (S.DISABLED, None, None, True),  # the same, made before cuts named their run
        (S.DISABLED, OTHER_RUN, RUN, False),  # another enable made a cut since
        (S.DISABLED, RUN, None, False),  # the same, the login having read an older cut
        (S.PENDING_CODE, RUN, RUN, False),  # the enable landed: its cut stands
    ],
)
async def test_a_cut_is_forgotten_only_as_its_closed_run_left_it(
    db: Database, state: S, made_by: str | None, seen: str | None, forgotten: bool
) -> None:
    account_id = await account_with_cut(db, state, PASSED, made_by)
    async with db.write() as session:
        assert await session_queries.forget_cut(session, account_id, seen) is forgotten
    assert await stored_cut(db, account_id) == ((None, None) if forgotten else (PASSED, made_by))


@pytest.mark.parametrize(("state", "cut"), [(S.PENDING_CODE, AHEAD), (S.DISABLED, None)])
async def test_a_projection_keeps_the_cut_and_its_run_together(
    db: Database, state: S, cut: datetime | None
) -> None:
    """A disable's projection drops the cut, and its run with it: a run id left behind would
    be paired with a cut an older release writes without one."""
    account_id = await account_with_cut(db, S.PENDING_CODE, AHEAD, RUN)
    projection = Projection(account_id=account_id, state=state, version=1, auto_logout_at=cut)
    async with db.write() as session:
        assert await account_queries.save_projection(session, projection, NOW)
    assert await stored_cut(db, account_id) == ((cut, RUN) if cut else (None, None))
