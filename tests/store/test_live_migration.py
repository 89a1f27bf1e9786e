"""A migration under the running release (README "Upgrading", step 2) on PostgreSQL.

The release's transactions go on while ``twofa migrate`` alters their tables. Neither may be
aborted for a deadlock: the migration waits its turn and then applies everything, or gives up
having applied nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, inspect, text

from tests.conftest import BACKEND
from twofa.store.db import alembic_config, migrate, sync_url
from twofa.store.migration_locks import TablesBusy

pytestmark = pytest.mark.skipif(BACKEND != "postgresql", reason="PostgreSQL's table locks")

#: The revision before 0010, which alters ``accounts`` first and ``sessions`` later.
BEFORE_0010 = "0009"


@pytest.fixture
def engine(fresh_url: str) -> Iterator[Engine]:
    """The database at ``BEFORE_0010``, and an engine on it for the running release."""
    command.upgrade(alembic_config(fresh_url), BEFORE_0010)
    engine = create_engine(sync_url(fresh_url))
    yield engine
    engine.dispose()


def revision(engine: Engine) -> str:
    with engine.connect() as connection:
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one()


def wait_for_a_lock_wait(engine: Engine) -> None:
    """Until another backend waits for a lock: the migration, waiting for the release's read.

    Autocommit: PostgreSQL shows one snapshot of ``pg_stat_activity`` per transaction."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as watcher:
        for _ in range(1000):
            waiting = watcher.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
            if waiting:
                return
            time.sleep(0.01)
    pytest.fail("the migration never waited for the running release's lock")


def test_a_transaction_that_reads_one_table_then_another_outlasts_the_migration(
    fresh_url: str, engine: Engine
) -> None:
    """The running release reads ``sessions``, then ``accounts`` while the migration asks for
    ``sessions``: migrating table after table, the migration would hold ``accounts`` by then
    and PostgreSQL would abort one of the two (the deadlock seen in the upgrade test)."""
    with ThreadPoolExecutor(1) as pool, engine.connect() as release:
        release.execute(text("SELECT count(*) FROM sessions"))
        migrating = pool.submit(migrate, fresh_url)
        wait_for_a_lock_wait(engine)
        assert release.execute(text("SELECT count(*) FROM accounts")).scalar_one() == 0
        release.commit()
        migrating.result(timeout=60)
    head = ScriptDirectory.from_config(alembic_config(fresh_url)).get_current_head()
    assert revision(engine) == head
    assert "pepper_id" in {column["name"] for column in inspect(engine).get_columns("sessions")}


def test_a_migration_that_never_gets_its_locks_applies_nothing(
    fresh_url: str, engine: Engine
) -> None:
    with ThreadPoolExecutor(1) as pool, engine.connect() as release:
        release.execute(text("SELECT count(*) FROM sessions"))
        migrating = pool.submit(migrate, fresh_url, patience_seconds=2)
        with pytest.raises(TablesBusy, match=r"Nothing was applied; run the migration again"):
            migrating.result(timeout=60)
        release.commit()
    assert revision(engine) == BEFORE_0010
    assert "pepper_id" not in {column["name"] for column in inspect(engine).get_columns("sessions")}
