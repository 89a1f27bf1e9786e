"""A database of a test's own, for the store's tests that migrate or fill one."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.conftest import BACKEND
from twofa import audit
from twofa.config import Settings
from twofa.crypto import Keyring
from twofa.store.db import Database, migrate, sync_url


@pytest.fixture
def fresh_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """An empty database beside the session's, on the same backend."""
    if BACKEND == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    name = f"fresh_{uuid.uuid4().hex[:12]}"
    admin = create_engine(sync_url(database_url), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(database_url).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture
async def db(fresh_url: str, base_settings: Settings) -> AsyncIterator[Database]:
    """A migrated database of the test's own, writing audit records as the service does."""
    migrate(fresh_url)
    database = Database(fresh_url, audit=audit.chain_for(base_settings, Keyring.of(base_settings)))
    yield database
    await database.dispose()
