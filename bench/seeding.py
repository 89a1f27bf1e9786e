"""Bulk seeding straight into the store (SQLAlchemy core, batched), never through the journey."""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Engine, create_engine, insert
from sqlalchemy.engine import make_url

from twofa.store.db import sqlite3, sync_url
from twofa.store.models import Account, Session

BATCH = 5_000
#: The state mix of ``twofa seed`` (twofa/seed.py STATE_MIX).
STATE_MIX = {
    "disabled": 0.35,
    "pending_code": 0.10,
    "pending_activation": 0.10,
    "active": 0.40,
    "locked": 0.05,
}
_SYLLABLES = (
    "ka", "lo", "mi", "ra", "to", "ne", "su", "vi", "da", "pe", "jo", "ma", "ri", "an", "el",
    "or", "ti", "be", "co", "lu", "sa", "ge", "fa", "zo", "he", "yu", "wi", "qu", "xe", "ba",
)  # fmt: skip
_DOMAINS = ("example.com", "example.org", "example.net", "mail.test", "corp.test")


def engine(url: str) -> Engine:
    return create_engine(sync_url(url), connect_args={"timeout": 60})


def _emails(rng: random.Random, count: int, prefix: str) -> Iterator[str]:
    """Unique, R2-valid addresses spread over the alphabet (so prefix searches vary)."""
    for index in range(count):
        name = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))
        yield f"{name}.{prefix}{index}@{rng.choice(_DOMAINS)}"


def account_rows(
    count: int,
    *,
    password_hash: str,
    prefix: str,
    state: str | None = None,
    rng: random.Random | None = None,
) -> list[dict[str, Any]]:
    """Rows for ``accounts``: one state, or ``twofa seed``'s mix; created over the last 30 days."""
    rng = rng or random.Random(5)
    now = datetime.now(UTC)
    states = (
        [state] * count
        if state
        else rng.choices(list(STATE_MIX), weights=list(STATE_MIX.values()), k=count)
    )
    rows = []
    for email, account_state in zip(_emails(rng, count, prefix), states, strict=True):
        created = now - timedelta(days=rng.uniform(0, 30))
        rows.append(
            {
                "id": str(uuid.uuid4()),
                "email": email,
                "password_hash": password_hash,
                "created_at": created,
                "updated_at": created + timedelta(hours=rng.uniform(0, 48)),
                "two_factor_state": account_state,
                "locked_until": now + timedelta(minutes=15) if account_state == "locked" else None,
                "projection_version": 0 if account_state == "disabled" else 1,
                "code_usable": False,
                "pin_failures": 0,
            }
        )
    return rows


def insert_rows(url: str, table: Any, rows: Sequence[dict[str, Any]]) -> None:
    """Batched executemany inserts, one transaction per batch."""
    db = engine(url)
    try:
        for start in range(0, len(rows), BATCH):
            with db.begin() as connection:
                connection.execute(insert(table), list(rows[start : start + BATCH]))
    finally:
        db.dispose()


def insert_accounts(url: str, rows: Sequence[dict[str, Any]]) -> None:
    insert_rows(url, Account, rows)


def insert_sessions(url: str, rows: Sequence[dict[str, Any]]) -> None:
    insert_rows(url, Session, rows)


#: The pasts the audit log tells, per seeded state: (state, step, event, before, after). A
#: disabled account whose number ends in 0-2 enabled 2FA once and let the code expire.
_PASTS = (
    ("pending_code", 1, "two_factor_state_changed", "disabled", "pending_code"),
    ("pending_activation", 1, "two_factor_state_changed", "disabled", "pending_code"),
    ("pending_activation", 2, "two_factor_state_changed", "pending_code", "pending_activation"),
    ("active", 1, "two_factor_state_changed", "disabled", "pending_code"),
    ("active", 2, "two_factor_state_changed", "pending_code", "pending_activation"),
    ("active", 3, "two_factor_state_changed", "pending_activation", "active"),
    ("active", 4, "device_enrolled", None, None),
    ("locked", 1, "two_factor_state_changed", "disabled", "pending_code"),
    ("locked", 2, "two_factor_state_changed", "pending_code", "pending_activation"),
    ("locked", 3, "two_factor_state_changed", "pending_activation", "active"),
    ("locked", 4, "device_enrolled", None, None),
    ("locked", 5, "pin_rejected", None, None),
    ("locked", 6, "two_factor_locked", "active", "locked"),
    ("gave_up", 1, "two_factor_state_changed", "disabled", "pending_code"),
    ("gave_up", 2, "two_factor_state_changed", "pending_code", "disabled"),
)


@dataclass(frozen=True)
class Population:
    """What ``seed_population`` wrote, for the bench's captions."""

    accounts: int
    audit_records: int
    seconds: float


def _state_case(number: str) -> str:
    """``twofa seed``'s state mix (STATE_MIX), by a hash of the account's number."""
    bucket = f"(({number} * 2654435761) % 100)"
    return (
        f"CASE WHEN {bucket} < 35 THEN 'disabled' WHEN {bucket} < 45 THEN 'pending_code' "
        f"WHEN {bucket} < 55 THEN 'pending_activation' WHEN {bucket} < 95 THEN 'active' "
        "ELSE 'locked' END"
    )


def _email(number: str, chr_: str, start: str) -> str:
    """Addresses spread over the alphabet after ``start`` (letters and dots only): a one-letter
    prefix matches ~1/26 of them, two letters ~1/676, and each is unique through its number."""
    assert all(c.isalpha() or c == "." for c in start), start
    letters = [f"{chr_}(97 + ({number} / {div}) % 26)" for div in (1, 26, 676)]
    return " || ".join([f"'{start}'", *letters, "'.'", f"{number}", "'@example.com'"])


def _pasts_table(create: str) -> list[str]:
    """The pasts as a table, each with its audit details as the app writes them."""
    rows = []
    for state, step, event, before, after in _PASTS:
        details = json.dumps({"after": after, "before": before} if after else {}, sort_keys=True)
        rows.append(f"('{state}', {step}, '{event}', '{details}')")
    return [
        f"{create} pasts (state TEXT, step INTEGER, event TEXT, details TEXT)",
        f"INSERT INTO pasts VALUES {', '.join(rows)}",
    ]


def seed_population(
    url: str, count: int, *, password_hash: str, email_start: str = ""
) -> Population:
    """Generates the accounts and their audit records inside the database, in one transaction
    (a recursive CTE on SQLite, generate_series on PostgreSQL): no row crosses into Python.
    Triggers are off and secondary indexes are built after the load (a sort each, not a
    million B-tree inserts); the overview's tallies are then counted once, as migration 0011's
    backfill does. The audit rows carry placeholder hashes (no bench reads the chain)."""
    started = time.perf_counter()
    if make_url(url).get_backend_name() == "postgresql":
        records = _seed_postgresql(url, count, password_hash, email_start)
    else:
        records = _seed_sqlite(url, count, password_hash, email_start)
    return Population(count, records, time.perf_counter() - started)


_ACCOUNTS = (
    "id, email, password_hash, created_at, updated_at, two_factor_state, locked_until, "
    "projection_version, code_usable, pin_failures, pin_locks_in_a_row"
)
_AUDIT = "seq, at, account_id, actor, event, details, prev_hash, hash"
#: Migration 0011's enrollment levels; a disabled account whose number ends in 0-2 gave up at 1.
_REACHED = (
    "CASE s.state WHEN 'pending_code' THEN 1 WHEN 'pending_activation' THEN 2 "
    "WHEN 'active' THEN 3 WHEN 'locked' THEN 3 ELSE CASE WHEN s.i % 10 < 3 THEN 1 ELSE 0 END END"
)
_PAST_JOIN = (
    "FROM seeded s JOIN pasts p ON p.state = "
    "CASE WHEN s.state = 'disabled' AND s.i % 10 < 3 THEN 'gave_up' ELSE s.state END"
)


def _tally_statements(day: str) -> list[str]:
    """The overview's tallies counted from the rows (the triggers were off during the load)."""
    return [
        "DELETE FROM state_tallies",
        "INSERT INTO state_tallies (state, accounts) "
        "SELECT two_factor_state, count(*) FROM accounts GROUP BY two_factor_state",
        "DELETE FROM funnel_tallies",
        "INSERT INTO funnel_tallies (level, accounts) SELECT level, "
        "(SELECT count(*) FROM accounts WHERE enrollment_reached >= level) FROM "
        "(SELECT 1 AS level UNION ALL SELECT 2 UNION ALL SELECT 3) AS levels",
        "DELETE FROM audit_days",
        f"INSERT INTO audit_days (day, event, records) SELECT {day}, event, count(*) "
        f"FROM audit_log GROUP BY {day}, event",
    ]


def _seed_sqlite(url: str, count: int, password_hash: str, email_start: str) -> int:
    now = int(time.time())

    def stamp(seconds: str) -> str:
        return f"strftime('%Y-%m-%d %H:%M:%S', {seconds}, 'unixepoch') || '.000000'"

    connection = sqlite3.connect(make_url(url).database, isolation_level=None)
    try:
        connection.execute("PRAGMA cache_size=-262144")  # 256 MiB while loading
        connection.execute("BEGIN IMMEDIATE")
        tallied = bool(
            connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'state_tallies'"
            ).fetchone()
        )
        kept = connection.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE type IN ('index', 'trigger') "
            "AND sql IS NOT NULL AND tbl_name IN ('accounts', 'audit_log')"
        ).fetchall()
        for kind, name, _ in kept:
            connection.execute(f"DROP {kind.upper()} {name}")
        connection.execute(
            "CREATE TEMP TABLE seeded AS WITH RECURSIVE n(i) AS "
            f"(SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {count - 1}), "
            "r(i, h) AS (SELECT i, lower(hex(randomblob(16))) FROM n) "
            "SELECT i, substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-' || substr(h, 13, 4) "
            "|| '-' || substr(h, 17, 4) || '-' || substr(h, 21) AS id, "
            f"{_state_case('i')} AS state, {now} - (i * 7919) % 2592000 AS created FROM r"
        )
        for statement in _pasts_table("CREATE TEMP TABLE"):
            connection.execute(statement)
        connection.execute(
            f"INSERT INTO accounts ({_ACCOUNTS}{', enrollment_reached' if tallied else ''}) "
            f"SELECT s.id, {_email('s.i', 'char', email_start)}, ?, "
            f"{stamp('s.created')}, {stamp(f'min(s.created + 21600, {now})')}, s.state, "
            f"CASE s.state WHEN 'locked' THEN {stamp(f'{now} + 900')} END, 1, 0, 0, 0"
            f"{', ' + _REACHED if tallied else ''} FROM seeded s",
            (password_hash,),
        )
        connection.execute(
            f"INSERT INTO audit_log ({_AUDIT}) SELECT "
            "row_number() OVER (ORDER BY s.i, p.step), "
            f"{stamp(f'min(s.created + p.step * 3600, {now})')}, s.id, 'user', p.event, "
            f"p.details, printf('%064d', 0), printf('%064d', 0) {_PAST_JOIN}"
        )
        for _, _, sql in kept:
            connection.execute(sql)
        for statement in _tally_statements("date(at)") if tallied else ():
            connection.execute(statement)
        connection.execute("DROP TABLE seeded")
        connection.execute("DROP TABLE pasts")
        connection.execute("COMMIT")
        connection.execute("ANALYZE")
        return int(connection.execute("SELECT count(*) FROM audit_log").fetchone()[0])
    finally:
        connection.close()


def _seed_postgresql(url: str, count: int, password_hash: str, email_start: str) -> int:
    plain = make_url(url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(plain, autocommit=True) as pg:
        with pg.transaction():
            pg.execute("SET LOCAL session_replication_role = replica")  # no triggers
            tallied = pg.execute("SELECT to_regclass('state_tallies') IS NOT NULL").fetchone()
            indexes = pg.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN "
                "('accounts', 'audit_log') AND indexname NOT IN (SELECT conname FROM pg_constraint)"
            ).fetchall()
            for name, _ in indexes:
                pg.execute(f'DROP INDEX "{name}"')
            pg.execute(
                "CREATE TEMP TABLE seeded ON COMMIT DROP AS SELECT i, "
                f"gen_random_uuid()::text AS id, {_state_case('i::bigint')} AS state, "
                "now() - make_interval(secs => (i::bigint * 7919) % 2592000) AS created "
                f"FROM generate_series(0, {count - 1}) AS i"
            )
            for statement in _pasts_table("CREATE TEMP TABLE"):
                pg.execute(statement)
            reached = bool(tallied and tallied[0])
            pg.execute(
                f"INSERT INTO accounts ({_ACCOUNTS}{', enrollment_reached' if reached else ''}) "
                f"SELECT s.id, {_email('s.i', 'chr', email_start)}, "
                f"{sql.Literal(password_hash).as_string(pg)}, s.created, "
                "least(s.created + interval '6 hours', now()), s.state, "
                "CASE s.state WHEN 'locked' THEN now() + interval '15 minutes' END, "
                f"1, false, 0, 0{', ' + _REACHED if reached else ''} FROM seeded s"
            )
            pg.execute(
                f"INSERT INTO audit_log ({_AUDIT}) SELECT "
                "row_number() OVER (ORDER BY s.i, p.step), "
                "least(s.created + p.step * interval '1 hour', now()), s.id, 'user', p.event, "
                f"p.details, repeat('0', 64), repeat('0', 64) {_PAST_JOIN}"
            )
            for _, definition in indexes:
                pg.execute(definition)
            for statement in _tally_statements("(at AT TIME ZONE 'UTC')::date") if reached else ():
                pg.execute(statement)
            pg.execute("DROP TABLE pasts")
        pg.execute("VACUUM ANALYZE accounts")  # as autovacuum would: index-only scans work
        pg.execute("VACUUM ANALYZE audit_log")
        return int(pg.execute("SELECT count(*) FROM audit_log").fetchone()[0])  # type: ignore[index]
