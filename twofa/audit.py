"""The append-only, hash-chained audit log (SPEC S5).

Each record's hash is SHA-256 over the previous record's hash and the record's canonical content,
so editing, deleting, inserting or reordering any record breaks the chain from there on.
Records are appended inside the transaction of the change they describe: nothing is logged that
did not happen, and nothing happens unlogged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from twofa.store.models import AuditRecord

GENESIS = "0" * 64
#: Two writers must not read the same chain head: PostgreSQL takes this transaction lock, while
#: SQLite's BEGIN IMMEDIATE already serializes writers.
_ADVISORY_LOCK_KEY = 0x2FA0A0D1


def canonical(record: AuditRecord) -> str:
    content = {
        "seq": record.seq,
        "at": record.at.astimezone(UTC).isoformat(),
        "account_id": record.account_id,
        "actor": record.actor,
        "event": record.event,
        "details": json.loads(record.details),
    }
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: str, record: AuditRecord) -> str:
    return hashlib.sha256(f"{prev_hash}\n{canonical(record)}".encode()).hexdigest()


async def append(
    db: AsyncSession,
    event: str,
    *,
    account_id: str | None = None,
    actor: str = "system",
    at: datetime | None = None,
    **details: Any,
) -> AuditRecord:
    """Adds one record at the head of the chain, in the caller's transaction."""
    if db.bind.dialect.name == "postgresql":
        await db.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
    head = await db.scalar(select(AuditRecord).order_by(AuditRecord.seq.desc()).limit(1))
    record = AuditRecord(
        seq=(head.seq + 1) if head else 1,
        at=at or datetime.now(UTC),
        account_id=account_id,
        actor=actor,
        event=event,
        details=json.dumps(details, sort_keys=True, default=_json_default),
        prev_hash=head.hash if head else GENESIS,
    )
    record.hash = chain_hash(record.prev_hash, record)
    db.add(record)
    await db.flush()
    return record


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    raise TypeError(f"not JSON serializable in an audit record: {type(value).__name__}")


@dataclass(frozen=True)
class Break:
    """The first record where the chain stops holding, and why."""

    seq: int
    reason: str


async def _records(db: AsyncSession) -> AsyncIterator[AuditRecord]:
    result = await db.stream_scalars(select(AuditRecord).order_by(AuditRecord.seq))
    async for record in result:
        yield record


async def verify(db: AsyncSession) -> tuple[int, Break | None]:
    """Walks the whole chain; returns how many records hold, and the first break if any."""
    expected_prev, expected_seq, count = GENESIS, 1, 0
    async for record in _records(db):
        if record.seq != expected_seq:
            return count, Break(expected_seq, f"record {expected_seq} is missing")
        if record.prev_hash != expected_prev:
            return count, Break(record.seq, "its previous-hash does not match the record before")
        if chain_hash(record.prev_hash, record) != record.hash:
            return count, Break(record.seq, "its content does not match its hash")
        expected_prev, expected_seq, count = record.hash, expected_seq + 1, count + 1
    return count, None


async def history(db: AsyncSession, account_id: str) -> list[AuditRecord]:
    result = await db.scalars(
        select(AuditRecord).where(AuditRecord.account_id == account_id).order_by(AuditRecord.seq)
    )
    return list(result.all())
