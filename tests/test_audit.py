"""SPEC S5: the audit trail records what happened and `twofa audit verify` catches tampering."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.journey import Api, new_user
from twofa import audit
from twofa.config import Settings
from twofa.store.db import Database, migrate

TWOFA = str(Path(sys.executable).parent / "twofa")


def verify(database_file: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TWOFA_DATABASE_URL": f"sqlite:///{database_file}"}
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


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database with 20 audit records, written by 4 processes at once."""
    path = tmp_path_factory.mktemp("audit") / "chain.db"
    url = f"sqlite:///{path}"
    migrate(url)
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
    return path


def test_concurrent_writers_keep_one_intact_chain(chain: Path) -> None:
    result = verify(chain)
    assert result.returncode == 0, result.stderr
    assert "intact: 20 records" in result.stdout
    rows = sqlite3.connect(chain).execute("SELECT seq FROM audit_log ORDER BY seq").fetchall()
    assert [seq for (seq,) in rows] == list(range(1, 21))


def _edit(c: sqlite3.Connection) -> None:
    c.execute("UPDATE audit_log SET actor = 'someone else' WHERE seq = 7")


def _delete(c: sqlite3.Connection) -> None:
    c.execute("DELETE FROM audit_log WHERE seq = 7")


def _insert(c: sqlite3.Connection) -> None:
    c.execute("UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 7")
    c.execute("UPDATE audit_log SET seq = seq - 999 WHERE seq >= 1000")
    c.execute(
        "INSERT INTO audit_log (seq, at, account_id, actor, event, details, prev_hash, hash) "
        "SELECT 7, at, account_id, 'forger', event, details, prev_hash, hash "
        "FROM audit_log WHERE seq = 8"
    )


def _reorder(c: sqlite3.Connection) -> None:
    c.execute("UPDATE audit_log SET seq = -1 WHERE seq = 7")
    c.execute("UPDATE audit_log SET seq = 7 WHERE seq = 8")
    c.execute("UPDATE audit_log SET seq = 8 WHERE seq = -1")


@pytest.mark.parametrize("tamper", [_edit, _delete, _insert, _reorder])
def test_verify_names_the_first_tampered_record(
    chain: Path, tmp_path: Path, tamper: Callable[[sqlite3.Connection], None]
) -> None:
    copy = tmp_path / "tampered.db"
    shutil.copy(chain, copy)
    with sqlite3.connect(copy) as connection:
        tamper(connection)
    result = verify(copy)
    assert result.returncode == 1, result.stdout
    assert "BROKEN at record 7" in result.stderr, result.stderr


async def test_append_in_a_failed_transaction_leaves_no_record(base_settings: Settings) -> None:
    db = Database(base_settings.resolved_database_url)
    with pytest.raises(RuntimeError):
        async with db.write() as s:
            await audit.append(s, "never_happened")
            raise RuntimeError("the change fails")
    async with db.read() as s:
        _, broken = await audit.verify(s)
        assert broken is None
    await db.dispose()
    rows = sqlite3.connect(base_settings.data_dir / "twofa.db").execute(
        "SELECT count(*) FROM audit_log WHERE event = 'never_happened'"
    )
    assert rows.fetchone() == (0,)
