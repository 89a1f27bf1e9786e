"""Databases beside the test session's, on the same backend, to write to and to tamper with as
someone who owns the database would; and `twofa audit verify` run on them as an operator does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.conftest import PEPPER
from twofa import audit
from twofa.crypto import Keyring
from twofa.store.db import migrate, sync_url

TWOFA = str(Path(sys.executable).parent / "twofa")


def verify(url: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """`twofa audit verify` as an operator runs it: the database, the data dir, the pepper."""
    env = {
        **os.environ,
        "TWOFA_DATABASE_URL": url,
        "TWOFA_DATA_DIR": str(data_dir),
        "TWOFA_PEPPER": PEPPER,
    }
    return subprocess.run(
        [TWOFA, "audit", "verify"], env=env, capture_output=True, text=True, timeout=60
    )


def chain_in(data_dir: Path) -> audit.Chain:
    return audit.Chain(Keyring(PEPPER.encode()).audit_key, data_dir / "audit-anchor")


def sql(url: str, *statements: str) -> list[tuple[object, ...]]:
    """Runs SQL straight on the database, around the application: how a tamperer would."""
    engine = create_engine(sync_url(url))
    try:
        with engine.begin() as connection:
            rows: list[tuple[object, ...]] = []
            for statement in statements:
                result = connection.execute(text(statement))
                rows = [tuple(r) for r in result] if result.returns_rows else []
            return rows
    finally:
        engine.dispose()


def create_database(url: str, name: str, template: str | None = None) -> str:
    engine = create_engine(sync_url(url), isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        clause = f' TEMPLATE "{template}"' if template else ""
        connection.execute(text(f'CREATE DATABASE "{name}"{clause}'))
    engine.dispose()
    return make_url(url).set(database=name).render_as_string(hide_password=False)


@dataclass(frozen=True)
class Store:
    """A database and the data dir beside it (the anchor, the pepper's stand-in for verify)."""

    url: str
    data_dir: Path

    def verify(self) -> subprocess.CompletedProcess[str]:
        return verify(self.url, self.data_dir)

    @property
    def chain(self) -> audit.Chain:
        return chain_in(self.data_dir)


def empty_store(url: str, name: str, tmp_path: Path) -> Store:
    """A new, migrated database beside the test session's, on the same backend."""
    data_dir = tmp_path / f"{name}-data"
    if url.startswith("sqlite"):
        fresh = f"sqlite:///{data_dir / 'twofa.db'}"
    else:
        fresh = create_database(url, name)
    migrate(fresh)
    return Store(fresh, data_dir)


def clone_store(store: Store, name: str, tmp_path: Path) -> Store:
    """A copy of the database and its anchor, to tamper with."""
    data_dir = tmp_path / f"{name}-data"
    shutil.copytree(store.data_dir, data_dir)
    if store.url.startswith("sqlite"):
        return Store(f"sqlite:///{data_dir / 'twofa.db'}", data_dir)
    return Store(create_database(store.url, name, template=make_url(store.url).database), data_dir)


def drop_guards(url: str) -> list[str]:
    """What someone who owns the database does first: the append-only triggers go."""
    if url.startswith("sqlite"):
        return ["DROP TRIGGER audit_log_no_update", "DROP TRIGGER audit_log_no_delete"]
    return ["DROP TRIGGER audit_log_append_only ON audit_log"]
