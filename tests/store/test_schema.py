"""The store on its backend: migrations from empty, and models that match them."""

from __future__ import annotations

import importlib.util
import platform
import sys
import traceback
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Connection, bindparam, create_engine, inspect, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.schema import CreateIndex

from tests.conftest import BACKEND
from tests.support.journey import eventually
from twofa.config import Settings
from twofa.store.db import WAL_IS_SAFE, Database, alembic_config, async_url, migrate, sync_url
from twofa.store.models import Account, Base, LoginChallenge, Operator
from twofa.vocabulary import STORED_STATES, Role, Step, TwoFactorState


@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
@pytest.mark.filterwarnings("ignore:autogenerate skipping metadata-specified expression-based")
def test_models_match_the_migrations(base_settings: Settings, database_url: str) -> None:
    """The session's database was migrated from empty; autogenerate must find nothing to add.

    SQLite does not reflect an index on an expression (``lower(email)``), so autogenerate
    skips those there, with a warning each: their SQL as SQLite keeps it is compared instead.
    """
    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            tables = set(inspect(connection).get_table_names())
            if engine.dialect.name == "sqlite":
                expected, found = expression_indexes(connection)
                assert expected, "the models have indexes on lower(email)"
                assert found == expected
    finally:
        engine.dispose()
    assert set(Base.metadata.tables) <= tables


def expression_indexes(connection: Connection) -> tuple[dict[str, str], dict[str, str]]:
    """The models' indexes on an expression, as SQL for this database, and as it keeps them."""
    expected = {
        str(index.name): " ".join(
            str(CreateIndex(index).compile(dialect=connection.dialect)).split()
        )
        for table in Base.metadata.tables.values()
        for index in table.indexes
        if index.name and not all(isinstance(part, Column) for part in index.expressions)
    }
    kept = connection.execute(
        text(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND name IN :names"
        ).bindparams(bindparam("names", expanding=True)),
        {"names": list(expected)},
    )
    return expected, {name: " ".join(sql.split()) for name, sql in kept}


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
        assert pooled is not None
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


def _migration(name: str) -> ModuleType:
    """A migration module by its file name: what it wrote into the schema, frozen."""
    path = Path(migrate.__code__.co_filename).parent / "migrations" / "versions" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_checks_list_the_vocabulary() -> None:
    """A word added to the vocabulary needs a migration that lets the store hold it."""
    checks = _migration("0012_state_and_step_checks")
    assert checks._STATES == STORED_STATES
    assert tuple(Step) == checks._STEPS
    assert tuple(Role) == checks._ROLES


async def test_the_store_holds_only_the_vocabulary_words(database_url: str) -> None:
    """State, step and role refuse a word the vocabulary lacks (CHECK constraints, 0012).

    Each refused write rolls back whole, so the session's database keeps nothing of it."""
    migrate(database_url)
    database = Database(database_url)
    now = datetime.now(UTC)

    def account(state: str = TwoFactorState.DISABLED) -> Account:
        key = str(uuid.uuid4())
        return Account(
            id=key, email=f"{key}@example.com", password_hash="x", two_factor_state=state,
            created_at=now, updated_at=now,
        )  # fmt: skip

    holder = account()
    challenge = LoginChallenge(
        id_digest=uuid.uuid4().hex, account_id=holder.id, step="sms", created_at=now,
        expires_at=now,
    )  # fmt: skip
    operator = Operator(
        id=str(uuid.uuid4()), email="root@example.com", password_hash="x", role="root",
        created_at=now,
    )  # fmt: skip
    try:
        for rows in ([account(TwoFactorState.NEW)], [holder, challenge], [operator]):
            with pytest.raises(IntegrityError):
                async with database.write() as db:
                    db.add_all(rows)
    finally:
        await database.dispose()


async def test_a_refused_write_names_none_of_its_values(database_url: str) -> None:
    """S4: a statement's error carries its SQL, not its values (hashes, ciphertexts, keyed
    digests), as a traceback in a log or a failed activity's cause in history would show it:
    neither SQLAlchemy's parameters nor PostgreSQL's detail ("Key (id)=(…)")."""
    migrate(database_url)
    database = Database(database_url)
    now, key = datetime.now(UTC), str(uuid.uuid4())
    pin_hash = f"$argon2id$v=19$m=19456,t=2,p=1${uuid.uuid4().hex}"

    def account() -> Account:
        return Account(
            id=key, email=f"{key}@example.com", password_hash="x", pin_hash=pin_hash,
            created_at=now, updated_at=now,
        )  # fmt: skip

    try:
        async with database.write() as db:
            db.add(account())
        with pytest.raises(IntegrityError) as refused:
            async with database.write() as db:
                db.add(account())
    finally:
        await database.dispose()
    told = "".join(traceback.format_exception(refused.value))  # the driver's error as its cause
    assert "INSERT INTO accounts" in told
    assert pin_hash not in told and key not in told


@pytest.mark.single_backend
def test_the_checks_keep_the_sqlite_triggers_and_indexes(tmp_path: Path) -> None:
    """SQLite adds a CHECK by copying the table: its triggers (the overview's tallies) and
    its indexes on lower(email) come back, on the way up and on the way down."""
    from alembic import command

    url = f"sqlite:///{tmp_path / 'twofa.db'}"
    config = alembic_config(url)

    def objects() -> set[tuple[str, str]]:
        engine = create_engine(sync_url(url))
        try:
            with engine.connect() as connection:
                rows = connection.exec_driver_sql(
                    "SELECT type, name FROM sqlite_master "
                    "WHERE type IN ('index', 'trigger') AND sql IS NOT NULL"
                )
                return {(kind, name) for kind, name in rows}
        finally:
            engine.dispose()

    command.upgrade(config, "0011")
    before = objects()
    assert ("trigger", "accounts_tally_state") in before
    assert ("index", "uq_accounts_email_lower") in before
    command.upgrade(config, "0012")
    assert objects() == before
    command.downgrade(config, "0011")
    assert objects() == before
