"""The store on its backend: migrations from empty, and models that match them."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from twofa.config import Settings
from twofa.store.db import async_url, sync_url
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
    assert async_url("sqlite:///x.db") == "sqlite+aiosqlite:///x.db"
    assert sync_url("sqlite+aiosqlite:///x.db") == "sqlite:///x.db"
