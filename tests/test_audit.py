"""SPEC S5: the audit trail records what happened and `twofa audit verify` catches tampering."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from tests.journey import Api, new_user
from twofa import audit
from twofa.store.db import Database, migrate, sync_url
from twofa.store.models import AuditRecord

TWOFA = str(Path(sys.executable).parent / "twofa")


def verify(url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TWOFA_DATABASE_URL": url}
    return subprocess.run(
        [TWOFA, "audit", "verify"], env=env, capture_output=True, text=True, timeout=60
    )


async def _events(database: Database, account_id: str) -> list[tuple[str, str]]:
    async with database.read() as db:
        return [(r.event, r.actor) for r in await audit.history(db, account_id)]


async def test_journey_is_audited_step_by_step(api: Api, database: Database) -> None:
    user = await api.activated(new_user())
    for _ in range(100):  # the auto-logout timer fires 1.5 s after enabling
        if ("sessions_ended", "system") in await _events(database, user.account_id):
            break
        await asyncio.sleep(0.1)
    r = await api.call(
        "PUT", "/v1/account/two-factor", user, json={"enabled": False, "confirm": True}
    )
    assert r.status_code == 200, r.text
    events = await _events(database, user.account_id)
    names = [event for event, _ in events]
    for expected in (
        "account_registered",
        "login_succeeded",
        "code_issued",
        "two_factor_state_changed",
        "sessions_ended",
        "login_password_accepted",
        "login_step_passed",
        "device_enrolled",
        "device_removed",
    ):
        assert expected in names, (expected, names)
    states = [e for e in names if e == "two_factor_state_changed"]
    # disabled → pending_code → pending_activation → active → disabled
    assert len(states) == 4, names
    assert ("device_removed", "user") in events


async def test_refusals_are_audited(api: Api, database: Database) -> None:
    user = await api.register(new_user())
    r = await api.call("POST", "/v1/login", json={"email": user.email, "password": "wrong!!!"})
    assert r.status_code == 401
    async with database.read() as db:
        records = await audit.history(db, user.account_id)
    failed = [r for r in records if r.event == "login_failed"]
    assert len(failed) == 1 and '"reason": "invalid_credentials"' in failed[0].details
    assert "wrong!!!" not in failed[0].details


def _sql(url: str, *statements: str) -> list[tuple[object, ...]]:
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


def _create_database(url: str, name: str, template: str | None = None) -> str:
    engine = create_engine(sync_url(url), isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        clause = f' TEMPLATE "{template}"' if template else ""
        connection.execute(text(f'CREATE DATABASE "{name}"{clause}'))
    engine.dispose()
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def _empty(url: str, name: str, tmp_path: Path) -> str:
    """A new, migrated database beside the test session's, on the same backend."""
    if url.startswith("sqlite"):
        fresh = f"sqlite:///{tmp_path / name}.db"
    else:
        fresh = _create_database(url, name)
    migrate(fresh)
    return fresh


def _clone(url: str, name: str, tmp_path: Path) -> str:
    """A copy of the database at ``url``, to tamper with."""
    if url.startswith("sqlite"):
        copy = tmp_path / f"{name}.db"
        shutil.copy(make_url(url).database, copy)  # type: ignore[arg-type]
        return f"sqlite:///{copy}"
    return _create_database(url, name, template=make_url(url).database)


@pytest.fixture(scope="module")
def chain(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database with 20 audit records, written by 4 processes at once."""
    url = _empty(database_url, "audit_chain", tmp_path_factory.mktemp("audit"))
    script = (
        "import asyncio, sys\n"
        "from twofa import audit\n"
        "from twofa.store.db import Database\n"
        "async def main():\n"
        "    db = Database(sys.argv[1])\n"
        "    for i in range(5):\n"
        "        async with db.write() as s:\n"
        "            await audit.append(s, 'test_event', actor=f'writer-{sys.argv[2]}', i=i)\n"
        "    await db.dispose()\n"
        "asyncio.run(main())\n"
    )
    writers = [subprocess.Popen([sys.executable, "-c", script, url, str(n)]) for n in range(4)]
    assert [w.wait(timeout=60) for w in writers] == [0, 0, 0, 0]
    return url


def test_concurrent_writers_keep_one_intact_chain(chain: str) -> None:
    result = verify(chain)
    assert result.returncode == 0, result.stderr
    assert "intact: 20 records" in result.stdout
    rows = _sql(chain, "SELECT seq FROM audit_log ORDER BY seq")
    assert [seq for (seq,) in rows] == list(range(1, 21))


TAMPERING = {
    "edit": ["UPDATE audit_log SET actor = 'someone else' WHERE seq = 7"],
    "delete": ["DELETE FROM audit_log WHERE seq = 7"],
    "insert": [
        "UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 7",
        "UPDATE audit_log SET seq = seq - 999 WHERE seq >= 1000",
        "INSERT INTO audit_log (seq, at, account_id, actor, event, details, prev_hash, hash) "
        "SELECT 7, at, account_id, 'forger', event, details, prev_hash, hash "
        "FROM audit_log WHERE seq = 8",
    ],
    "reorder": [
        "UPDATE audit_log SET seq = -1 WHERE seq = 7",
        "UPDATE audit_log SET seq = 7 WHERE seq = 8",
        "UPDATE audit_log SET seq = 8 WHERE seq = -1",
    ],
}


@pytest.mark.parametrize("tampering", list(TAMPERING))
def test_verify_names_the_first_tampered_record(chain: str, tmp_path: Path, tampering: str) -> None:
    copy = _clone(chain, f"tampered_{tampering}", tmp_path)
    _sql(copy, *TAMPERING[tampering])
    result = verify(copy)
    assert result.returncode == 1, result.stdout
    assert "BROKEN at record 7" in result.stderr, result.stderr


async def test_append_in_a_failed_transaction_leaves_no_record(database: Database) -> None:
    with pytest.raises(RuntimeError):
        async with database.write() as s:
            await audit.append(s, "never_happened")
            raise RuntimeError("the change fails")
    async with database.read() as s:
        _, broken = await audit.verify(s)
        found = await s.scalar(
            select(func.count())
            .select_from(AuditRecord)
            .where(AuditRecord.event == "never_happened")
        )
    assert broken is None
    assert found == 0
