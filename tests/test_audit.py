"""S5 (docs/rules.md): the audit trail records what happened; `twofa audit verify` catches
tampering."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, insert, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session as OrmSession

from tests.conftest import PEPPER
from tests.support.journey import Api, audit_trail, eventually, new_user
from tests.support.stores import (
    TWOFA,
    Store,
    chain_in,
    clone_store,
    drop_guards,
    empty_store,
    sql,
    verify,
)
from twofa import audit
from twofa.config import Settings
from twofa.store.db import Database, migrate, sync_url
from twofa.store.models import AuditRecord
from twofa.store.statements import table_of


async def _events(database: Database, account_id: str) -> list[tuple[str, str]]:
    return [(r.event, r.actor) for r in await audit_trail(database, account_id)]


async def test_journey_is_audited_step_by_step(api: Api, database: Database) -> None:
    user = await api.activated(new_user())

    async def logged_out() -> bool:  # the auto-logout timer fires 1.5 s after enabling
        return ("sessions_ended", "system") in await _events(database, user.account_id)

    await eventually(logged_out, "the auto-logout's sessions_ended record", timeout=10)
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


async def test_an_unknown_email_is_audited_as_a_digest(api: Api, database: Database) -> None:
    """What was typed as an email may be a password: the log keeps it only as a digest (S4)."""
    typed = f"Hunter2-{uuid.uuid4().hex[:8]}"  # a password typed into the email field
    async with database.read() as db:
        before = await db.scalar(select(func.coalesce(func.max(AuditRecord.seq), 0)))
    for _ in range(2):
        r = await api.call("POST", "/v1/login", json={"email": typed, "password": "wrong!!!"})
        assert r.status_code == 401, r.text
    async with database.read() as db:
        rows = await db.execute(
            select(AuditRecord.details).where(
                AuditRecord.seq > before, AuditRecord.event == "login_failed"
            )
        )
    details = [json.loads(d) for (d,) in rows]
    mine = [d for d in details if "email" not in d]
    assert len(mine) == 2, details
    assert not [d for d in details if typed.lower() in json.dumps(d).lower()], details
    assert mine[0]["email_digest"] == mine[1]["email_digest"]  # repeats still tell apart


WRITER = """
import asyncio, sys
from twofa import audit
from twofa.config import Settings
from twofa.crypto import Keyring
from twofa.store.db import Database
async def main():
    settings = Settings()
    db = Database(sys.argv[1], audit=audit.chain_for(settings, Keyring(settings.pepper_bytes)))
    for i in range(int(sys.argv[3])):
        async with db.write() as s:
            await audit.append(s, 'test_event', actor=f'writer-{sys.argv[2]}', i=i)
    await db.dispose()
asyncio.run(main())
"""


def _write(store: Store, writers: int, each: int) -> None:
    """``writers`` processes at once, each appending ``each`` records in its own transactions."""
    env = {**os.environ, "TWOFA_DATA_DIR": str(store.data_dir), "TWOFA_PEPPER": PEPPER}
    processes = [
        subprocess.Popen([sys.executable, "-c", WRITER, store.url, str(n), str(each)], env=env)
        for n in range(writers)
    ]
    assert [p.wait(timeout=60) for p in processes] == [0] * writers


@pytest.fixture(scope="module")
def chain(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A database with 20 audit records, written by 4 processes at once."""
    store = empty_store(database_url, "audit_chain", tmp_path_factory.mktemp("audit"))
    _write(store, writers=4, each=5)
    return store


def test_concurrent_writers_keep_one_intact_chain_and_move_the_anchor_forward(
    chain: Store,
) -> None:
    result = chain.verify()
    assert result.returncode == 0, result.stderr
    assert "intact: 20 records (20 keyed, 0 unkeyed" in result.stdout, result.stdout
    assert "anchored at record 20" in result.stdout, result.stdout
    rows = sql(chain.url, "SELECT seq, hash, version FROM audit_log ORDER BY seq")
    assert [seq for seq, _, _ in rows] == list(range(1, 21))
    assert {version for _, _, version in rows} == {audit.KEYED}
    assert chain.chain.read_anchor() == audit.Anchor(20, str(rows[-1][1]))
    assert stat.S_IMODE(chain.chain.anchor_path.stat().st_mode) == 0o600


TAMPERING = {
    "edit": ["UPDATE audit_log SET actor = 'someone else' WHERE seq = 7"],
    "delete": ["DELETE FROM audit_log WHERE seq = 7"],
    "insert": [
        "UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 7",
        "UPDATE audit_log SET seq = seq - 999 WHERE seq >= 1000",
        "INSERT INTO audit_log (seq, at, account_id, actor, event, details, prev_hash, hash, "
        "version) SELECT 7, at, account_id, 'forger', event, details, prev_hash, hash, version "
        "FROM audit_log WHERE seq = 8",
    ],
    # the same parsed content, so the same hash: only the stored text shows the edit
    "respaced": ["UPDATE audit_log SET details = replace(details, ': ', ':') WHERE seq = 7"],
    "duplicate_key": [
        'UPDATE audit_log SET details = \'{"i": "forged", \' || substr(details, 2) WHERE seq = 7'
    ],
    "reorder": [
        "UPDATE audit_log SET seq = -1 WHERE seq = 7",
        "UPDATE audit_log SET seq = 7 WHERE seq = 8",
        "UPDATE audit_log SET seq = 8 WHERE seq = -1",
    ],
}


@pytest.mark.parametrize("tampering", list(TAMPERING))
def test_verify_names_the_first_tampered_record(
    chain: Store, tmp_path: Path, tampering: str
) -> None:
    copy = clone_store(chain, f"tampered_{tampering}", tmp_path)
    sql(copy.url, *drop_guards(copy.url), *TAMPERING[tampering])
    result = copy.verify()
    assert result.returncode == 1, result.stdout
    assert "BROKEN at record 7" in result.stderr, result.stderr


def test_verify_finds_the_newest_records_cut_off(chain: Store, tmp_path: Path) -> None:
    """The chain of what is left holds: only the anchor outside the database shows the cut."""
    copy = clone_store(chain, "truncated", tmp_path)
    sql(copy.url, *drop_guards(copy.url), "DELETE FROM audit_log WHERE seq > 17")
    result = copy.verify()
    assert result.returncode == 1, result.stdout
    assert (
        "the newest records are cut off: the anchor names record 20 but the log ends at 17"
        in result.stderr
    ), result.stderr


def _rebuild(url: str, *, edit: int, unkeyed_from: int | None) -> None:
    """Edits record ``edit`` and recomputes every hash from there with the public algorithm,
    as someone who can write the database but lacks the key would; ``unkeyed_from`` also marks
    the records from there on as written before the key."""
    engine = create_engine(sync_url(url))
    try:
        with OrmSession(engine) as session, session.begin():
            for statement in drop_guards(url):
                session.execute(text(statement))
            prev = audit.GENESIS
            for record in session.scalars(select(AuditRecord).order_by(AuditRecord.seq)).all():
                if record.seq == edit:
                    record.actor = "someone else"
                if unkeyed_from is not None and record.seq >= unkeyed_from:
                    record.version = audit.UNKEYED
                if record.seq >= min(edit, unkeyed_from or edit):
                    record.prev_hash = prev
                    record.hash = audit.public_hash(prev, record)
                prev = record.hash
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("unkeyed_from", "found"),
    [
        (
            None,
            "BROKEN at record 7: record 7's keyed hash does not match: rebuilt or edited "
            "without the key",
        ),
        (7, "BROKEN at record 7: record 7 is unkeyed after keyed records: written without the"),
        (1, "BROKEN at record 20: record 20's keyed hash does not match the anchor: rebuilt"),
    ],
    ids=["keyed_label_kept", "unkeyed_from_the_edit", "unkeyed_throughout"],
)
def test_verify_finds_a_chain_rebuilt_without_the_key(
    chain: Store, tmp_path: Path, unkeyed_from: int | None, found: str
) -> None:
    """Today's attack on a public chain: edit record 7, recompute every hash after it."""
    copy = clone_store(chain, f"rebuilt_{unkeyed_from}", tmp_path)
    _rebuild(copy.url, edit=7, unkeyed_from=unkeyed_from)
    result = copy.verify()
    assert result.returncode == 1, result.stdout
    assert found in result.stderr, result.stderr


def test_verify_distrusts_a_forged_or_missing_anchor(chain: Store, tmp_path: Path) -> None:
    copy = clone_store(chain, "forged_anchor", tmp_path)
    anchor = json.loads(copy.chain.anchor_path.read_text())
    copy.chain.anchor_path.write_text(json.dumps({**anchor, "seq": 17}))
    result = copy.verify()
    assert result.returncode == 1, result.stdout
    assert "has a MAC that does not match" in result.stderr, result.stderr
    copy.chain.anchor_path.unlink()
    result = copy.verify()
    assert result.returncode == 1, result.stdout
    assert "is missing, yet the log holds keyed records" in result.stderr, result.stderr


@pytest.mark.single_backend
def test_verify_that_could_not_check_exits_2_not_1(chain: Store, tmp_path: Path) -> None:
    """A monitor must tell an outage from tampering: no database, an anchor it cannot read,
    no pepper are "not checked" (exit 2), never "broken" (exit 1)."""
    copy = clone_store(chain, "unchecked", tmp_path)
    gone = verify(f"sqlite:///{tmp_path / 'no-such-dir' / 'twofa.db'}", copy.data_dir)
    assert gone.returncode == 2, gone
    assert gone.stderr.startswith("audit chain NOT CHECKED: OperationalError: "), gone.stderr
    copy.chain.anchor_path.unlink()
    copy.chain.anchor_path.mkdir()  # unreadable even for root, unlike a chmod
    unreadable = copy.verify()
    assert unreadable.returncode == 2, unreadable
    assert "NOT CHECKED: IsADirectoryError" in unreadable.stderr, unreadable.stderr
    env = {**os.environ, "TWOFA_DATABASE_URL": copy.url, "TWOFA_DATA_DIR": str(copy.data_dir)}
    env.pop("TWOFA_PEPPER", None)
    unpeppered = subprocess.run(
        [TWOFA, "audit", "verify"], env=env, capture_output=True, text=True, timeout=60
    )
    assert unpeppered.returncode == 2, unpeppered
    assert "NOT CHECKED: no pepper" in unpeppered.stderr, unpeppered.stderr


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_log SET actor = 'someone else' WHERE seq = 1",
        "DELETE FROM audit_log WHERE seq = 20",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ],
)
def test_the_database_refuses_to_change_or_delete_audit_records(
    chain: Store, tmp_path: Path, statement: str
) -> None:
    if statement.startswith("TRUNCATE") and chain.url.startswith("sqlite"):
        pytest.skip("SQLite has no TRUNCATE; its DELETE without WHERE is refused above")
    copy = clone_store(chain, f"guarded_{uuid.uuid4().hex[:8]}", tmp_path)  # spoils no other test
    with pytest.raises(DBAPIError, match="audit_log is append-only"):
        sql(copy.url, statement)
    assert sql(copy.url, "SELECT count(*), min(actor) FROM audit_log") == [(20, "writer-0")]


_V1_COLUMNS = ("seq", "at", "account_id", "actor", "event", "details", "prev_hash", "hash")


def _insert_unkeyed(url: str, count: int, at: datetime, actor: str = "system") -> None:
    """``count`` version 1 records (public SHA-256, as 0006 wrote them) at the head, with a
    plain INSERT: what be3d6ff's API writes, and what the triggers let anyone write."""
    head = sql(url, "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
    seq, prev = (int(str(head[0][0])), str(head[0][1])) if head else (0, audit.GENESIS)
    rows = []
    for n in range(1, count + 1):
        record = AuditRecord(
            seq=seq + n,
            at=at,
            account_id=None,
            actor=actor,
            event="old_event",
            details="{}",
            prev_hash=prev,
        )
        record.hash = prev = audit.public_hash(prev, record)
        rows.append({c: getattr(record, c) for c in _V1_COLUMNS})
    engine = create_engine(sync_url(url))
    try:
        with engine.begin() as connection:  # no version given: the column's default, 1
            connection.execute(insert(table_of(AuditRecord)), rows)
    finally:
        engine.dispose()


async def _append_keyed(store: Store, at: datetime) -> None:
    """One record as the new release writes it, stamped ``at``."""
    database = Database(store.url, audit=store.chain)
    try:
        async with database.write() as s:
            await audit.append(s, "new_event", at=at)
    finally:
        await database.dispose()


def test_records_from_before_the_key_still_verify_as_a_prefix(
    database_url: str, tmp_path: Path
) -> None:
    """Version 1 records (public SHA-256, as 0006 wrote them), then keyed records after them."""
    store = empty_store(database_url, "audit_legacy", tmp_path)
    _insert_unkeyed(store.url, 3, datetime(2026, 11, 1, 12, tzinfo=UTC))
    result = store.verify()
    assert result.returncode == 0, result.stderr
    assert "intact: 3 records (0 keyed, 3 unkeyed" in result.stdout, result.stdout
    assert "not anchored" in result.stdout, result.stdout
    _write(store, writers=1, each=2)
    result = store.verify()
    assert result.returncode == 0, result.stderr
    assert "intact: 5 records (2 keyed, 3 unkeyed" in result.stdout, result.stdout
    assert "anchored at record 5" in result.stdout, result.stdout


def test_an_unkeyed_record_inserted_at_the_head_stays_a_break_once_covered(
    chain: Store, tmp_path: Path
) -> None:
    """An INSERT needs no guard dropped; the app's next keyed record then chains over it. On a
    chain that began keyed, no unkeyed record may ever follow a keyed one."""
    copy = clone_store(chain, "forged_head", tmp_path)
    _insert_unkeyed(copy.url, 1, datetime.now(UTC), actor="admin:alice@example.com")
    _write(copy, writers=1, each=1)
    result = copy.verify()
    assert result.returncode == 1, result.stdout
    assert "BROKEN at record 21: record 21 is unkeyed after keyed records" in result.stderr, (
        result.stderr
    )


async def test_an_upgraded_chain_takes_the_old_releases_records_only_for_an_hour(
    database_url: str, tmp_path: Path
) -> None:
    """During a rolling upgrade from be3d6ff its API still writes unkeyed records beside the
    new workers' keyed ones: they verify under a keyed record written within the hour after
    the first keyed one, and never after it (the keyed times cannot be set without the key)."""
    store = empty_store(database_url, "audit_upgrade", tmp_path)
    upgraded = datetime(2026, 12, 1, 12, tzinfo=UTC)
    _insert_unkeyed(store.url, 3, upgraded - timedelta(days=1))
    await _append_keyed(store, upgraded)  # record 4: the new release's first
    _insert_unkeyed(store.url, 2, upgraded + timedelta(minutes=5))  # 5, 6: the old API
    result = store.verify()
    assert result.returncode == 1, result.stdout
    assert "BROKEN at record 5: record 5 is unkeyed" in result.stderr, result.stderr
    await _append_keyed(store, upgraded + timedelta(minutes=50))  # 7 covers them
    result = store.verify()
    assert result.returncode == 0, result.stderr
    assert "intact: 7 records (2 keyed, 5 unkeyed" in result.stdout, result.stdout
    _insert_unkeyed(store.url, 1, upgraded + timedelta(minutes=55))  # 8
    await _append_keyed(store, upgraded + timedelta(minutes=61))  # 9: past the hour
    result = store.verify()
    assert result.returncode == 1, result.stdout
    assert "BROKEN at record 8: record 8 is unkeyed" in result.stderr, result.stderr


async def test_append_in_a_failed_transaction_leaves_no_record_nor_anchor(
    database_url: str, tmp_path: Path
) -> None:
    store = empty_store(database_url, "audit_rollback", tmp_path)
    database = Database(store.url, audit=store.chain)
    try:
        with pytest.raises(RuntimeError):
            async with database.write() as s:
                await audit.append(s, "never_happened")
                raise RuntimeError("the change fails")
        async with database.read() as s:
            verdict = await audit.verify(s, store.chain)
            found = await s.scalar(select(func.count()).select_from(AuditRecord))
    finally:
        await database.dispose()
    assert verdict.broken is None
    assert found == 0
    assert store.chain.read_anchor() is None


async def test_no_audit_record_without_the_key(database_url: str) -> None:
    """A store opened without the chain cannot write an unkeyed record by mistake."""
    database = Database(database_url)
    try:
        with pytest.raises(RuntimeError, match="audit chain"):
            async with database.write() as s:
                await audit.append(s, "unkeyed")
    finally:
        await database.dispose()


@pytest.mark.single_backend
def test_the_anchor_only_moves_forward(tmp_path: Path) -> None:
    """A writer that committed earlier but reaches the anchor later changes nothing."""
    chain = chain_in(tmp_path / "data")
    chain.advance(audit.Anchor(5, "a" * 64))
    chain.advance(audit.Anchor(3, "b" * 64))
    assert chain.read_anchor() == audit.Anchor(5, "a" * 64)
    chain.advance(audit.Anchor(6, "c" * 64))
    assert chain.read_anchor() == audit.Anchor(6, "c" * 64)
    assert stat.S_IMODE(chain.anchor_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(chain.anchor_path.parent.stat().st_mode) == 0o700
    names = sorted(p.name for p in chain.anchor_path.parent.iterdir())
    assert names == [".audit-anchor.lock", "audit-anchor"]  # no temporary file left behind


@pytest.mark.single_backend
def test_data_dir_and_database_are_created_for_their_owner_only(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings = Settings(data_dir=data_dir, service_token=None, pepper=None)
    assert settings.pepper_bytes
    migrate(settings.resolved_database_url)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "twofa.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((data_dir / "pepper").stat().st_mode) == 0o600
    older = tmp_path / "older"
    older.mkdir()
    (older / "twofa.db").touch(mode=0o644)
    migrate(f"sqlite:///{older / 'twofa.db'}")
    assert stat.S_IMODE((older / "twofa.db").stat().st_mode) == 0o600
