"""The dashboard's reads at scale: tallies kept by the database, bounded counts and paging.

Each test works on a database of its own (a file on SQLite, a new database on the session's
PostgreSQL server), written with plain SQL as any writer could, so the triggers are what keeps
the overview's counts right, not the service's code path.
"""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import create_engine, text
from temporalio.client import Client

from bench.seeding import seed_population
from twofa import audit, store
from twofa.admin import AdminService
from twofa.config import Settings
from twofa.service import TwoFactorService
from twofa.store.admin_queries import REACHABLE
from twofa.store.db import Database, alembic_config, migrate, sync_url

HASH = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA"
#: One statement each, so PostgreSQL reads tallies and rows in one snapshot.
TALLIES_AND_ROWS = {
    "states": "SELECT t.state, t.accounts, (SELECT count(*) FROM accounts a "
    "WHERE a.two_factor_state = t.state) FROM state_tallies t",
    "funnel": "SELECT t.level, t.accounts, (SELECT count(*) FROM accounts a "
    "WHERE a.enrollment_reached >= t.level) FROM funnel_tallies t",
    "events": "SELECT d.event, sum(d.records), (SELECT count(*) FROM audit_log l "
    "WHERE l.event = d.event) FROM audit_days d GROUP BY d.event",
}


def run_sql(url: str, *statements: str, **params: Any) -> list[tuple[Any, ...]]:
    """Runs the statements in one transaction; the last one's rows."""
    engine = create_engine(sync_url(url))
    try:
        with engine.begin() as connection:
            rows: list[tuple[Any, ...]] = []
            for statement in statements:
                result = connection.execute(text(statement), params)
                rows = [tuple(r) for r in result] if result.returns_rows else []
            return rows
    finally:
        engine.dispose()


def add_account(url: str, email: str, state: str = "disabled") -> str:
    account_id = str(uuid.uuid4())
    run_sql(
        url,
        "INSERT INTO accounts (id, email, password_hash, created_at, updated_at, "
        "two_factor_state, code_usable, pin_failures, pin_locks_in_a_row, projection_version) "
        "VALUES (:id, :email, :hash, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, :state, "
        "false, 0, 0, 0)",
        id=account_id,
        email=email,
        hash=HASH,
        state=state,
    )
    return account_id


def set_state(url: str, account_id: str, state: str) -> None:
    run_sql(url, "UPDATE accounts SET two_factor_state = :s WHERE id = :id", s=state, id=account_id)


def add_audit(url: str, account_id: str, event: str, details: str, at: str) -> None:
    run_sql(
        url,
        "INSERT INTO audit_log (seq, at, account_id, actor, event, details, prev_hash, hash, "
        "version) SELECT coalesce(max(seq), 0) + 1, :at, :id, 'user', :event, :details, "
        "'0', '0', 2 FROM audit_log",
        at=at,
        id=account_id,
        event=event,
        details=details,
    )


def reached(url: str, account_id: str) -> int:
    rows = run_sql(url, "SELECT enrollment_reached FROM accounts WHERE id = :id", id=account_id)
    return int(rows[0][0])


def assert_tallies_match_rows(url: str, *names: str) -> None:
    for name in names or TALLIES_AND_ROWS:
        query = TALLIES_AND_ROWS[name]
        for key, tally, counted in run_sql(url, query):
            assert tally == counted, f"{name} {key}: tallied {tally}, counted {counted}"


def test_tallies_follow_inserts_state_changes_deletes_and_audit_records(fresh_url: str) -> None:
    migrate(fresh_url)
    gave_up = add_account(fresh_url, "gave.up@example.com")
    set_state(fresh_url, gave_up, "pending_code")
    set_state(fresh_url, gave_up, "disabled")  # the code expired: enabled once, still counted
    active = add_account(fresh_url, "Active.One@example.com")
    for state in ("pending_code", "pending_activation", "active", "locked", "active"):
        set_state(fresh_url, active, state)
    seeded = add_account(fresh_url, "seeded@example.com", "active")  # bulk-loaded as active
    doomed = add_account(fresh_url, "doomed@example.com", "pending_activation")
    for at in ("2026-03-01 23:59:59.000000", "2026-03-02 00:00:00.000000"):
        add_audit(fresh_url, active, "pin_rejected", "{}", at)
    assert [reached(fresh_url, a) for a in (gave_up, active, seeded)] == [1, 3, 3]
    assert_tallies_match_rows(fresh_url)

    run_sql(fresh_url, "DELETE FROM accounts WHERE id = :id", id=doomed)
    assert_tallies_match_rows(fresh_url, "states", "events")
    states = dict(run_sql(fresh_url, "SELECT state, accounts FROM state_tallies"))
    assert (states["disabled"], states["active"], states["pending_activation"]) == (1, 2, 0)
    funnel = dict(run_sql(fresh_url, "SELECT level, accounts FROM funnel_tallies"))
    assert funnel == {1: 4, 2: 3, 3: 2}  # the deleted account had reached step 2: still counted
    days = run_sql(fresh_url, "SELECT day, records FROM audit_days WHERE event = 'pin_rejected'")
    assert sorted((str(day), records) for day, records in days) == [
        ("2026-03-01", 1),
        ("2026-03-02", 1),
    ]


def test_the_migration_backfills_the_tallies_from_the_history(fresh_url: str) -> None:
    command.upgrade(alembic_config(fresh_url), "0010")
    gave_up = add_account(fresh_url, "gave.up@example.com")
    add_audit(
        fresh_url,
        gave_up,
        "two_factor_state_changed",
        '{"after": "pending_code", "before": "disabled"}',
        "2026-03-01 10:00:00.000000",
    )
    validated = add_account(fresh_url, "validated@example.com", "pending_activation")
    locked = add_account(fresh_url, "locked@example.com", "locked")  # no history: its state says
    add_audit(fresh_url, locked, "two_factor_locked", "{}", "2026-03-02 10:00:00.000000")
    migrate(fresh_url)

    assert [reached(fresh_url, a) for a in (gave_up, validated, locked)] == [1, 2, 3]
    assert_tallies_match_rows(fresh_url)
    funnel = dict(run_sql(fresh_url, "SELECT level, accounts FROM funnel_tallies"))
    assert funnel == {1: 3, 2: 2, 3: 1}
    days = run_sql(fresh_url, "SELECT day, event, records FROM audit_days")
    assert sorted((str(d), e, r) for d, e, r in days) == [
        ("2026-03-01", "two_factor_state_changed", 1),
        ("2026-03-02", "two_factor_locked", 1),
    ]


@pytest.fixture
async def fresh_admin(
    fresh_url: str, base_settings: Settings, client: Client
) -> AsyncIterator[AdminService]:
    migrate(fresh_url)
    db = Database(fresh_url)
    try:
        yield AdminService(TwoFactorService(base_settings, db, client))
    finally:
        await db.dispose()


async def test_listing_counts_exactly_without_a_search_and_bounds_a_broad_one(
    fresh_url: str, fresh_admin: AdminService
) -> None:
    count = REACHABLE + 50
    seed_population(fresh_url, count, password_hash=HASH, email_start="wide.")

    everything = await fresh_admin.accounts(page=10**6)  # past the reach: its last page
    assert (everything.total, everything.total_is_exact) == (count, True)
    assert everything.pages == REACHABLE // 50 and everything.page == everything.pages
    assert len(everything.rows) == 50
    reversed_first = await fresh_admin.accounts(descending=True)
    assert reversed_first.rows[0].email > everything.rows[-1].email  # the rest, from the end

    broad = await fresh_admin.accounts(search="WIDE.")  # searched in any case
    assert (broad.total, broad.total_is_exact, broad.pages) == (REACHABLE, False, REACHABLE // 50)
    emails = [row.email for row in broad.rows]
    assert emails == sorted(emails) and all(e.startswith("wide.") for e in emails)

    narrow = await fresh_admin.accounts(search="wide.ab")
    assert narrow.total_is_exact and 0 < narrow.total < REACHABLE
    assert narrow.total == len(
        run_sql(fresh_url, "SELECT id FROM accounts WHERE email LIKE 'wide.ab%'")
    )
    states = await fresh_admin.overview()
    active = await fresh_admin.accounts(state="active")
    assert (active.total, active.total_is_exact) == (states.states["active"], True)


def test_the_tally_trigger_takes_the_audit_chain_lock_first() -> None:
    """PostgreSQL: a state change locks the shared tally rows only under the audit chain's lock,
    which every state change takes for its audit record anyway; in the other order two
    concurrent journeys deadlocked (seen in the hundred-journey test)."""
    path = Path(store.__file__).parent / "migrations" / "versions" / "0011_listing_indexes.py"
    spec = importlib.util.spec_from_file_location("listing_indexes", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.CHAIN_LOCK == audit._ADVISORY_LOCK_KEY
