"""Demo data: accounts in every 2FA state, each with a real workflow, so the dashboard lives.

Rows are written straight to the store and each enabled account's workflow is started with the
state it is seeded in (the same input continue-as-new uses), so admin actions on seeded accounts
go through the real workflow like any other.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from faker import Faker
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from twofa import audit
from twofa.crypto import Keyring
from twofa.policy import Policy, check_two_factor_email
from twofa.service import utcnow
from twofa.store.db import Database
from twofa.store.models import Account, Device
from twofa.workflows.messages import Progress, TwoFactorInput, TwoFactorState, workflow_id
from twofa.workflows.two_factor import STATE_KEY, TwoFactorWorkflow

#: Share of each state among seeded accounts.
STATE_MIX = {
    TwoFactorState.DISABLED: 0.35,
    TwoFactorState.PENDING_CODE: 0.10,
    TwoFactorState.PENDING_ACTIVATION: 0.10,
    TwoFactorState.ACTIVE: 0.40,
    TwoFactorState.LOCKED: 0.05,
}
DEMO_PASSWORD = "demo password"
DEMO_PIN = "2468"
BROWSERS = ("Firefox on laptop", "Chrome at work", "Safari on iPad", "Edge on desktop", None)


def _email(fake: Faker, taken: set[str]) -> str:
    """A fresh address the second factor accepts (R2)."""
    while True:
        email = f"{fake.user_name()}.{fake.random_int(10, 9999)}@{fake.free_email_domain()}"
        email = email.lower().replace("'", "")
        if email not in taken:
            try:
                check_two_factor_email(email)
            except ValueError:
                continue
            taken.add(email)
            return email


async def seed(
    db: Database,
    client: Client,
    keyring: Keyring,
    policy: Policy,
    task_queue: str,
    count: int,
    *,
    advance: Callable[[int], None] = lambda _: None,
    rng: random.Random | None = None,
) -> dict[str, int]:
    """Creates ``count`` accounts; returns how many landed in each state."""
    rng = rng or random.Random()
    fake = Faker()
    fake.seed_instance(rng.random())
    password_hash = await asyncio.to_thread(keyring.hash_secret, DEMO_PASSWORD)
    pin_hash = await asyncio.to_thread(keyring.hash_secret, DEMO_PIN)
    states = rng.choices(list(STATE_MIX), weights=list(STATE_MIX.values()), k=count)
    taken: set[str] = set()
    tally = dict.fromkeys((s.value for s in STATE_MIX), 0)
    now = utcnow()
    for state in states:
        created = now - timedelta(days=rng.uniform(0, 30))
        account = Account(
            id=str(uuid.uuid4()),
            email=_email(fake, taken),
            password_hash=password_hash,
            created_at=created,
            updated_at=created,
            two_factor_state=state.value,
            projection_version=1,
        )
        progress = Progress(state=state, enrollment_id=str(uuid.uuid4()), version=1)
        if state in (TwoFactorState.ACTIVE, TwoFactorState.LOCKED):
            account.pin_hash = pin_hash
            account.seal_ciphertext = keyring.seal(fake.sentence(nb_words=5))
        if state is TwoFactorState.LOCKED:
            account.locked_until = progress.locked_until = now + timedelta(
                seconds=policy.pin_lock_seconds
            )
            progress.locks_in_a_row = 1
        async with db.write() as session:
            session.add(account)
            await session.flush()
            await _history(session, account, state, created, rng)
        if state is not TwoFactorState.DISABLED:
            await client.start_workflow(
                TwoFactorWorkflow.run,
                TwoFactorInput(account_id=account.id, policy=policy, progress=progress),
                id=workflow_id(account.id),
                task_queue=task_queue,
                search_attributes=TypedSearchAttributes(
                    [SearchAttributePair(STATE_KEY, state.value)]
                ),
            )
        tally[state.value] += 1
        advance(1)
    return tally


async def _history(
    session: AsyncSession,
    account: Account,
    state: TwoFactorState,
    created: datetime,
    rng: random.Random,
) -> None:
    """Backdated audit records and trusted browsers, so the overview's charts have a past."""
    steps = {
        TwoFactorState.DISABLED: [],
        TwoFactorState.PENDING_CODE: ["pending_code"],
        TwoFactorState.PENDING_ACTIVATION: ["pending_code", "pending_activation"],
        TwoFactorState.ACTIVE: ["pending_code", "pending_activation", "active"],
        TwoFactorState.LOCKED: ["pending_code", "pending_activation", "active"],
    }[state]
    at, before = created, "disabled"
    await audit.append(session, "account_registered", account_id=account.id, actor="seed", at=at)
    for after in steps:
        at += timedelta(minutes=rng.uniform(1, 600))
        await audit.append(
            session,
            "two_factor_state_changed",
            account_id=account.id,
            actor="seed",
            at=at,
            before=before,
            after=after,
        )
        before = after
    if "active" in steps:
        for _ in range(rng.randint(1, 2)):
            device = Device(
                id=str(uuid.uuid4()),
                account_id=account.id,
                name=rng.choice(BROWSERS),
                token_digest=uuid.uuid4().hex + uuid.uuid4().hex,  # no token opens it
                enrolled_at=at,
                last_used_at=at + timedelta(hours=rng.uniform(0, 48)),
            )
            session.add(device)
            await audit.append(
                session,
                "device_enrolled",
                account_id=account.id,
                actor="seed",
                at=at,
                device_id=device.id,
                name=device.name,
            )
        for _ in range(rng.randint(0, 3)):
            await audit.append(
                session,
                "pin_rejected",
                account_id=account.id,
                actor="seed",
                at=at + timedelta(hours=rng.uniform(1, 200)),
            )
    if state is TwoFactorState.LOCKED:
        await audit.append(
            session,
            "two_factor_locked",
            account_id=account.id,
            actor="seed",
            before="active",
            after="locked",
            locked_until=account.locked_until,
        )
