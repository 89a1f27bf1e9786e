"""Writers that meet on one account's rows take their locks in one order, on PostgreSQL.

A PIN login's last transaction locks the account (its PIN-check slot), then the login, then the
browser; a revocation (of one browser, or all at a disable) locked the browser first, then the
logins on it: with both under way PostgreSQL aborted one of them for a deadlock, and the user
or the admin got a 503. Now every revocation locks the account first, so the second writer
waits for the first instead.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from tests.conftest import BACKEND
from twofa.store import account_queries, device_queries, login_queries
from twofa.store.db import Database
from twofa.store.models import Account, Device, LoginChallenge
from twofa.vocabulary import Step

pytestmark = pytest.mark.skipif(BACKEND != "postgresql", reason="PostgreSQL's row locks")


async def waiting_for_a_lock(db: Database) -> bool:
    async with db.read() as session:
        waiting = await session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"
            )
        )
    return bool(waiting)


async def test_a_pin_login_and_a_revocation_of_its_browser_do_not_deadlock(db: Database) -> None:
    now = datetime.now(UTC)
    account_id, device_id, login = str(uuid.uuid4()), str(uuid.uuid4()), uuid.uuid4().hex
    async with db.write() as session:
        session.add(
            Account(
                id=account_id, email="order@example.com", password_hash="-",
                created_at=now, updated_at=now,
            )
        )  # fmt: skip
        await session.flush()
        session.add(
            Device(id=device_id, account_id=account_id, token_digest=login, enrolled_at=now)
        )
        session.add(
            LoginChallenge(
                id_digest=login, account_id=account_id, step=Step.PIN, device_id=device_id,
                created_at=now, expires_at=now + timedelta(minutes=15),
            )
        )  # fmt: skip

    async def revoke() -> list[str]:
        async with db.write() as session:
            return await device_queries.revoke_devices(
                session, account_id, now, actor="user", reason="user", device_id=device_id
            )

    async with db.write() as pin_step:  # the PIN login's last transaction, as login_steps runs it
        await account_queries.release_pin_check(pin_step, account_id)
        assert await login_queries.advance_challenge(
            pin_step, login, Step.PIN, None, finished_at=now
        )
        revoking = asyncio.create_task(revoke())
        for _ in range(500):
            if await waiting_for_a_lock(db):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the revocation never waited for the PIN login's locks")
        # before: the revocation held the browser and waited for the login: a deadlock here
        assert await device_queries.touch_device(pin_step, device_id, now)
    assert await asyncio.wait_for(revoking, 10) == [device_id]
