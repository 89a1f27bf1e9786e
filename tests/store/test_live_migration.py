"""A migration under the running release (README "Upgrading", step 2) on PostgreSQL.

The release's transactions go on while ``twofa migrate`` alters their tables. Neither may be
aborted for a deadlock: the migration waits its turn and then applies everything, or gives up
having applied nothing.
"""

from __future__ import annotations

import subprocess
import sys
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


def wait_for_lock_waits(engine: Engine, backends: int = 1) -> None:
    """Until so many other backends of this database have been seen waiting for a lock: the
    migrations, waiting for the release's read. The server's other databases (the session's
    store, other tests') are not looked at: a wait there says nothing of the migration's.

    Autocommit: PostgreSQL shows one snapshot of ``pg_stat_activity`` per transaction."""
    seen: set[int] = set()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as watcher:
        for _ in range(3000):
            seen.update(
                watcher.execute(
                    text(
                        "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND pid <> pg_backend_pid() AND datname = current_database()"
                    )
                ).scalars()
            )
            if len(seen) >= backends:
                return
            time.sleep(0.01)
    pytest.fail(f"{backends - len(seen)} migration(s) never waited for the release's lock")


def test_a_transaction_that_reads_one_table_then_another_outlasts_the_migration(
    fresh_url: str, engine: Engine
) -> None:
    """The running release reads ``sessions``, then ``accounts`` while the migration asks for
    ``sessions``: migrating table after table, the migration would hold ``accounts`` by then
    and PostgreSQL would abort one of the two (the deadlock seen in the upgrade test)."""
    with ThreadPoolExecutor(1) as pool, engine.connect() as release:
        release.execute(text("SELECT count(*) FROM sessions"))
        migrating = pool.submit(migrate, fresh_url)
        wait_for_lock_waits(engine)
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


def test_two_processes_that_start_at_once_both_end_migrated(fresh_url: str, engine: Engine) -> None:
    """Every process migrates as it starts. Both read the revision while the release holds a
    table; the one that locks second must find nothing left to do, where migrating table after
    table it would add the first's columns again.

    Processes, not threads: Alembic keeps the running migration in module globals."""
    run = [
        sys.executable,
        "-c",
        "import sys; from twofa.store.db import migrate; migrate(sys.argv[1])",
    ]
    with engine.connect() as release:
        release.execute(text("SELECT count(*) FROM sessions"))
        starting = [subprocess.Popen([*run, fresh_url], stderr=subprocess.PIPE) for _ in range(2)]
        wait_for_lock_waits(engine, backends=2)
        release.commit()
    for process in starting:
        _, errors = process.communicate(timeout=60)
        assert process.returncode == 0, errors.decode()
    head = ScriptDirectory.from_config(alembic_config(fresh_url)).get_current_head()
    assert revision(engine) == head
