"""The store on its backend: migrations from empty, and models that match them."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from tests.conftest import BACKEND
from tests.journey import eventually
from twofa.config import Settings
from twofa.store.db import WAL_IS_SAFE, Database, async_url, migrate, sync_url
from twofa.store.models import Base


def test_models_match_the_migrations(base_settings: Settings, database_url: str) -> None:
    """The session's database was migrated from empty; autogenerate must find nothing to add."""
    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            tables = set(inspect(connection).get_table_names())
    finally:
        engine.dispose()
    assert set(Base.metadata.tables) <= tables


def test_plain_urls_get_the_project_drivers() -> None:
    assert async_url("postgresql://u:p@db:5432/twofa") == "postgresql+asyncpg://u:p@db:5432/twofa"
    assert sync_url("postgresql://u:p@db:5432/twofa") == "postgresql+psycopg://u:p@db:5432/twofa"
    assert async_url("sqlite:///x.db") == "sqlite+twofa_aiosqlite:///x.db"
    assert sync_url("sqlite+aiosqlite:///x.db") == "sqlite+twofa_pysqlite:///x.db"


@pytest.mark.single_backend
async def test_sqlite_store_runs_wal_on_a_library_without_the_wal_reset_bug(
    tmp_path: Path,
) -> None:
    """Every process opens the store through the same fixed SQLite, in WAL, with commits
    synced (FULL): the migrating engine, the app's engine, and what both answer."""
    url = f"sqlite:///{tmp_path / 'twofa.db'}"
    migrate(url)
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            version = connection.exec_driver_sql("SELECT sqlite_version()").scalar_one()
    finally:
        engine.dispose()
    database = Database(url)
    try:
        async with database.write() as db:
            mode = (await db.execute(text("PRAGMA journal_mode"))).scalar_one()
            synchronous = (await db.execute(text("PRAGMA synchronous"))).scalar_one()
            async_version = (await db.execute(text("SELECT sqlite_version()"))).scalar_one()
    finally:
        await database.dispose()
    fixed = tuple(int(part) for part in version.split(".")) >= (3, 51, 3)
    if sys.platform == "linux" and platform.machine() == "x86_64":  # the wheel is pinned here
        assert fixed, version
    assert version == async_version
    assert fixed == WAL_IS_SAFE
    assert (mode, synchronous) == ("wal" if fixed else "truncate", 2)  # 2: FULL


@pytest.mark.skipif(BACKEND != "postgresql", reason="the pool of PostgreSQL connections")
async def test_a_pooled_connection_the_server_ended_is_replaced_before_use(
    database_url: str,
) -> None:
    """A server restart ends every pooled connection: the next transaction gets a live one
    instead of failing on the dead one (without a pre-ping round trip per transaction)."""
    database = Database(database_url)
    try:
        async with database.read() as db:
            pid = (await db.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            pooled = (await (await db.connection()).get_raw_connection()).driver_connection
        killer = Database(database_url)
        try:
            async with killer.write() as db:
                await db.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        finally:
            await killer.dispose()

        async def closed() -> bool:
            return bool(pooled.is_closed())

        await eventually(closed, "the client to see the server end its connection")
        async with database.write() as db:
            again = (await db.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        assert again != pid
    finally:
        await database.dispose()
