"""Demo data: accounts in every 2FA state, each with a real workflow, so the dashboard lives.

Each account gets a past that reads like real traffic over the last 90 days: created in working
hours, enabled later, codes, activations, browsers, wrong PINs and locks each at their own time,
``updated_at`` at the last change, a running lock ending 15 minutes after its own start. Rows are
written straight to the store and each enabled account's workflow is started with the
state it is seeded in (the same input continue-as-new uses), so admin actions on seeded accounts
go through the real workflow like any other.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

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
from twofa.workflows.two_factor import STATE_KEY, TASK_TIMEOUT, TwoFactorWorkflow

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
BROWSERS = (
    "Firefox on laptop",
    "Chrome at work",
    "Safari on iPad",
    "Edge on desktop",
    "Carol laptop",
    "Home PC",
    None,
)
ADMINS = ("ops@cockpit.example.com", "security@cockpit.example.com")
#: How far back accounts were created.
DAYS = 90
#: Sign-ups per hour of the day (UTC): quiet at night, busy in working hours.
HOURLY_WEIGHTS = [1, 1, 1, 1, 1, 2, 3, 5, 8, 9, 9, 8, 7, 8, 9, 9, 8, 7, 6, 5, 4, 3, 2, 1]


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
    for state in states:
        now = utcnow()
        story = _Story(rng, policy, state, now)
        account = Account(
            id=str(uuid.uuid4()),
            email=_email(fake, taken),
            password_hash=password_hash,
            created_at=story.created,
            updated_at=story.created,  # until write() sets the last change
            two_factor_state=state.value,
            projection_version=1,
        )
        async with db.write() as session:
            session.add(account)
            await session.flush()
            await story.write(session, account)
        progress = Progress(
            state=state,
            enrollment_id=str(uuid.uuid4()),
            enabled_at=story.enabled,
            pin_failures=account.pin_failures,
            locks_in_a_row=account.pin_locks_in_a_row,
            locked_until=account.locked_until,
            version=1,
        )
        if state in (TwoFactorState.ACTIVE, TwoFactorState.LOCKED):
            async with db.write() as session:
                row = await session.get(Account, account.id)
                assert row is not None
                row.pin_hash = pin_hash
                row.seal_ciphertext = keyring.seal(fake.sentence(nb_words=5))
        if state is not TwoFactorState.DISABLED:
            await client.start_workflow(
                TwoFactorWorkflow.run,
                TwoFactorInput(account_id=account.id, policy=policy, progress=progress),
                id=workflow_id(account.id),
                task_queue=task_queue,
                task_timeout=TASK_TIMEOUT,
                search_attributes=TypedSearchAttributes(
                    [SearchAttributePair(STATE_KEY, state.value)]
                ),
            )
        tally[state.value] += 1
        advance(1)
    return tally


def _day_time(rng: random.Random, now: datetime, days: float) -> datetime:
    """A moment in the last ``days`` days, mostly in working hours (UTC), never ahead of now."""
    day = now - timedelta(days=rng.uniform(0, days))
    hour = rng.choices(range(24), weights=HOURLY_WEIGHTS)[0]
    moment = day.replace(hour=hour, minute=rng.randrange(60), second=rng.randrange(60))
    if moment >= now:
        return now - timedelta(minutes=rng.uniform(1, 60))
    return max(moment, now - timedelta(days=days) + timedelta(minutes=rng.uniform(1, 600)))


class _Story:
    """One account's past, in order: each event at its own time, the projection at the last.

    ``write`` adds the audit records and trusted browsers and sets the account's projection
    (updated_at is the last change; a lock's end follows from the lock's own time).
    """

    def __init__(
        self, rng: random.Random, policy: Policy, state: TwoFactorState, now: datetime
    ) -> None:
        self.rng, self.policy, self.state, self.now = rng, policy, state, now
        self.created = _day_time(rng, now, DAYS)
        self.enabled: datetime | None = None
        self._held = False
        self._locks_left = 0
        self.events: list[tuple[datetime, str, str, dict[str, Any]]] = []

    def after(self, moment: datetime, low: float, high: float) -> datetime:
        """``moment`` plus low..high minutes, but not past now."""
        later = moment + timedelta(minutes=self.rng.uniform(low, high))
        return min(later, self.now - timedelta(seconds=self.rng.uniform(1, 30)))

    def add(self, at: datetime, event: str, actor: str = "user", **details: Any) -> None:
        self.events.append((at, event, actor, details))

    def changed(self, at: datetime, before: str, after: str, actor: str = "user") -> None:
        self.add(at, "two_factor_state_changed", actor, before=before, after=after)

    async def write(self, session: AsyncSession, account: Account) -> None:
        rng, state = self.rng, self.state
        self.add(self.created, "account_registered")
        last_change = self.created
        if state is TwoFactorState.DISABLED and rng.random() < 0.3:
            last_change = self._enabled_then_disabled(session, account)
        elif state is not TwoFactorState.DISABLED:
            last_change = self._enrollment(session, account)
        account.updated_at = max(last_change, self.created)
        for at, event, actor, details in sorted(self.events, key=lambda e: e[0]):
            await audit.append(session, event, account_id=account.id, actor=actor, at=at, **details)

    def _enable(self) -> datetime:
        """2FA enabled some time after registering, the code mailed at once."""
        span = max((self.now - self.created).total_seconds() / 60, 2)
        self.enabled = self.after(self.created, 1, span * self.rng.uniform(0.05, 0.6))
        self.changed(self.enabled, TwoFactorState.DISABLED, TwoFactorState.PENDING_CODE)
        expires = self.enabled + timedelta(seconds=self.policy.code_ttl_seconds)
        self.add(self.enabled, "code_issued", "system", number=1, expires_at=expires)
        return self.enabled

    def _activate(self, session: AsyncSession, account: Account) -> datetime:
        accepted = self.after(self._enable(), 0.5, 14)
        self.changed(accepted, TwoFactorState.PENDING_CODE, TwoFactorState.PENDING_ACTIVATION)
        activated = self.after(accepted, 0.5, 8)
        self.changed(activated, TwoFactorState.PENDING_ACTIVATION, TwoFactorState.ACTIVE)
        for number in range(self.rng.choices((1, 2, 3), weights=(6, 3, 1))[0]):
            enrolled = activated if number == 0 else self.after(activated, 60, 60 * 24 * 20)
            used = self.after(enrolled, 5, 60 * 24 * 10)
            device = Device(
                id=str(uuid.uuid4()),
                account_id=account.id,
                name=self.rng.choice(BROWSERS),
                token_digest=uuid.uuid4().hex + uuid.uuid4().hex,  # no token opens it
                enrolled_at=enrolled,
                last_used_at=used,
            )
            session.add(device)
            self.add(
                enrolled,
                "device_enrolled",
                device_id=device.id,
                name=device.name,
                at_activation=number == 0,
            )
            self.add(used, "login_succeeded", second_factor=True)
        return activated

    def _enabled_then_disabled(self, session: AsyncSession, account: Account) -> datetime:
        """A past enrollment turned off again, by its user or by an admin."""
        disabled = self.after(self._activate(session, account), 60, 60 * 24 * 30)
        actor = "user" if self.rng.random() < 0.7 else f"admin:{self.rng.choice(ADMINS)}"
        self.changed(disabled, TwoFactorState.ACTIVE, TwoFactorState.DISABLED, actor)
        return disabled

    def _wrong_pins(self, end: datetime, count: int, lock: bool) -> None:
        """``count`` wrong PINs a few seconds to minutes apart, the last at ``end``."""
        at = end
        times = []
        for _ in range(count):
            times.append(at)
            at -= timedelta(seconds=self.rng.uniform(8, 90))
        for n, at in enumerate(reversed(times)):
            left = self.policy.max_pin_failures - n - 1
            locked = lock and left == 0
            if locked:  # the workflow records the lock, then the service the refused PIN
                until = self._lock_ends(at)
                self.add(
                    at,
                    "two_factor_locked",
                    before=TwoFactorState.ACTIVE,
                    after=TwoFactorState.LOCKED,
                    locked_until=until,
                )
            self.add(at, "pin_rejected", attempts_left=left, locked=locked)

    def _lock_ends(self, at: datetime) -> datetime | None:
        """The end of the lock starting at ``at``: the last of three in a row waits for an admin."""
        self._locks_left -= 1
        if self._locks_left == 0 and self._held:
            return None
        return at + timedelta(seconds=self.policy.pin_lock_seconds)

    def _enrollment(self, session: AsyncSession, account: Account) -> datetime:
        rng, policy, state = self.rng, self.policy, self.state
        if state is TwoFactorState.PENDING_CODE:
            return self._enable()
        if state is TwoFactorState.PENDING_ACTIVATION:
            accepted = self.after(self._enable(), 0.5, 14)
            self.changed(accepted, TwoFactorState.PENDING_CODE, TwoFactorState.PENDING_ACTIVATION)
            return accepted
        activated = self._activate(session, account)
        if state is TwoFactorState.ACTIVE:
            last = max(at for at, event, _, _ in self.events if event == "login_succeeded")
            failures = rng.choices((0, 1, 2, 3), weights=(12, 3, 2, 1))[0]
            if failures:
                last = self.after(last, 10, 60 * 24 * 5)
                self._wrong_pins(last, failures, lock=False)
            account.pin_failures = failures
            return max(last, activated)
        held = rng.random() < 0.3  # the third lock in a row waits for an admin
        locks = policy.locks_before_admin_unlock if held else rng.choice((1, 1, 2))
        lock_seconds = policy.pin_lock_seconds
        if held:
            last_lock = self.after(activated, 60, 60 * 24 * 20)
        else:  # a lock still running: it began less than the lock's length ago
            last_lock = self.now - timedelta(seconds=rng.uniform(10, lock_seconds - 30))
        if last_lock - (locks - 1) * timedelta(seconds=lock_seconds + 4 * 3600) < activated:
            locks, held = 1, False  # too recent an activation for earlier locks: one, running
            last_lock = max(
                self.now - timedelta(seconds=rng.uniform(10, lock_seconds - 30)), activated
            )
        self._held = held
        gap = timedelta(seconds=lock_seconds) + timedelta(minutes=rng.uniform(5, 240))
        self._locks_left = locks
        for n in range(locks):
            at = last_lock - (locks - 1 - n) * gap
            self._wrong_pins(at, policy.max_pin_failures, lock=True)
            if n < locks - 1:
                until = at + timedelta(seconds=lock_seconds)
                self.add(
                    until,
                    "two_factor_unlocked",
                    "system",
                    before=TwoFactorState.LOCKED,
                    after=TwoFactorState.ACTIVE,
                )
        account.pin_locks_in_a_row = locks
        account.locked_until = None if held else last_lock + timedelta(seconds=lock_seconds)
        return last_lock
