"""The append-only, keyed hash chain of the audit log, anchored outside the database
(docs/rules.md S5).

Each record's hash covers the previous record's hash and the record's canonical content, so
editing, deleting, inserting or reordering any record breaks the chain from there on. Since
version 2 the hash is an HMAC under a key derived from the pepper, which never enters the
database: someone who can write the database cannot rebuild the chain after an edit. The head of
the chain (its newest sequence number and keyed hash) is also kept in an anchor file in the data
dir, so cutting off the newest records shows too. Records written before the key (version 1,
public SHA-256) still verify as a prefix. Anyone can compute an unkeyed record, and the triggers
allow an INSERT at the head, which the next keyed record then covers; so after a keyed record an
unkeyed one is a break, with one exception: a chain that began unkeyed (an install upgraded
from be3d6ff) accepts them for ``UPGRADE_WINDOW`` after its first keyed record, while the old
release's API still runs beside the new workers (README "Upgrading"), as long as a keyed record
follows them. The window is read off keyed records' times, which no one without the key can set.
The stored details must read exactly as ``append`` writes them: the hash covers their parsed
content, and a respaced or duplicated key would change what a reader sees without changing it.

After a pepper rotation, records are keyed under the new pepper's key while the older ones
still verify under the previous peppers' keys; a record keyed under an older pepper than one
before it is a break, so whoever holds a retired pepper cannot append records that verify.

Records are appended inside the transaction of the change they describe: nothing is logged that
did not happen, and nothing happens unlogged. The anchor moves after that transaction commits.

Each record also keeps the id of the HTTP request that caused it (``observability.REQUEST_ID``,
carried into the worker's activities through Temporal headers), so an operator can put it next
to that request's log lines. The id is covered by the hash whenever a record has one: it says
which request a record answers for, and one edited without the key would point an
investigation at another request's logs. A record without one (written before the column
existed, or caused by no request: a timer, the CLI) hashes exactly as before, so older records
still verify; an older release's ``verify`` cannot check the newer records that carry an id.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from twofa.config import Settings, private_dir
from twofa.crypto import Keyring
from twofa.observability import REQUEST_ID
from twofa.store.models import AuditRecord
from twofa.store.statements import column_values, table_of

log = logging.getLogger(__name__)
GENESIS = "0" * 64
UNKEYED, KEYED = 1, 2
#: Where a write session carries the chain it appends with, and the head it leaves to anchor.
CHAIN_INFO, HEAD_INFO = "twofa_audit_chain", "twofa_audit_head"
#: How long after its first keyed record an upgraded chain takes the old release's records.
UPGRADE_WINDOW = timedelta(hours=1)
#: The most often one process moves the anchor (see Chain.advance_soon).
ANCHOR_INTERVAL = 0.2
#: Two writers must not read the same chain head: PostgreSQL takes this transaction lock, while
#: SQLite's BEGIN IMMEDIATE already serializes writers.
_ADVISORY_LOCK_KEY = 0x2FA0A0D1
_audit_log = table_of(AuditRecord)
#: Built once: every step of a login appends (see store.statements).
_CHAIN_HEAD = select(_audit_log.c.seq, _audit_log.c.hash).order_by(_audit_log.c.seq.desc()).limit(1)
_NEW_RECORD = insert(_audit_log)
_TAKE_CHAIN_LOCK = text("SELECT pg_advisory_xact_lock(:key)")


def canonical(record: AuditRecord) -> str:
    """What a record's hash covers; the request id only when there is one (see the module)."""
    content = {
        "seq": record.seq,
        "at": record.at.astimezone(UTC).isoformat(),
        "account_id": record.account_id,
        "actor": record.actor,
        "event": record.event,
        "details": json.loads(record.details),
    }
    if record.request_id is not None:
        content["request_id"] = record.request_id
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def public_hash(prev_hash: str, record: AuditRecord) -> str:
    """Version 1: anyone can recompute it, so it proves nothing against a database writer."""
    return hashlib.sha256(f"{prev_hash}\n{canonical(record)}".encode()).hexdigest()


@dataclass(frozen=True)
class Anchor:
    """The chain's head as last committed: record ``seq`` and its keyed hash."""

    seq: int
    hash: str


class AnchorError(Exception):
    """The anchor file exists but cannot be trusted (unreadable, or its MAC does not match)."""


class Chain:
    """The audit key, and the anchor file that holds the chain's head outside the database.

    ``key``: the key records are written with, or every key of the keyring (current first), of
    which the others only verify records written before a pepper rotation.
    """

    def __init__(self, key: bytes | Sequence[bytes], anchor_path: Path) -> None:
        self._keys = [key] if isinstance(key, bytes) else list(key)
        self._key = self._keys[0]
        self.anchor_path = anchor_path
        self._lock_path = anchor_path.with_name(f".{anchor_path.name}.lock")
        self._pending: Anchor | None = None
        self._mover: asyncio.Task[None] | None = None

    def keyed_hash(self, prev_hash: str, record: AuditRecord, key: bytes | None = None) -> str:
        message = f"audit-chain-v2\x00{prev_hash}\n{canonical(record)}".encode()
        return hmac.new(key or self._key, message, hashlib.sha256).hexdigest()

    def expected_hash(self, record: AuditRecord) -> str:
        if record.version == UNKEYED:
            return public_hash(record.prev_hash, record)
        return self.keyed_hash(record.prev_hash, record)

    def key_index(self, record: AuditRecord) -> int | None:
        """Which key of the keyring (0: current) a keyed record verifies under; None: none."""
        for index, key in enumerate(self._keys):
            if hmac.compare_digest(self.keyed_hash(record.prev_hash, record, key), record.hash):
                return index
        return None

    def _anchor_mac(self, seq: int, hash_: str, key: bytes | None = None) -> str:
        message = f"audit-anchor\x00{seq}\x00{hash_}".encode()
        return hmac.new(key or self._key, message, hashlib.sha256).hexdigest()

    def read_anchor(self) -> Anchor | None:
        """The anchored head; None when no keyed record was ever committed with this data dir."""
        try:
            raw = self.anchor_path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            content = json.loads(raw)
            anchor = Anchor(seq=int(content["seq"]), hash=str(content["hash"]))
            mac = str(content["mac"])
        except (ValueError, KeyError, TypeError) as error:
            raise AnchorError(f"the anchor {self.anchor_path} is unreadable") from error
        if not any(
            hmac.compare_digest(mac, self._anchor_mac(anchor.seq, anchor.hash, key))
            for key in self._keys
        ):
            raise AnchorError(
                f"the anchor {self.anchor_path} has a MAC that does not match: written "
                "without the key (or under another pepper)"
            )
        return anchor

    def advance(self, head: Anchor) -> None:
        """Moves the anchor to ``head`` if it is newer; safe across processes.

        An exclusive lock on a side file orders the writers of every process; the anchor only
        moves forward, so a writer that committed earlier but arrives later changes nothing.
        The new content goes to a temporary file, is synced, then renamed over the anchor: a
        crash leaves the old anchor or the new one, never half of one. A distrusted anchor is
        left as found, for verify to report.
        """
        private_dir(self.anchor_path.parent)
        lock = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current = self.read_anchor()
            except AnchorError:
                log.error("the audit anchor is distrusted; left as found for verify to report")
                return
            if current is not None and current.seq >= head.seq:
                return
            content = {"seq": head.seq, "hash": head.hash}
            content["mac"] = self._anchor_mac(head.seq, head.hash)
            partial = self.anchor_path.with_name(f".{self.anchor_path.name}.{secrets.token_hex(8)}")
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, json.dumps(content).encode() + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(partial, self.anchor_path)
        finally:
            os.close(lock)  # closing releases the lock

    def advance_soon(self, head: Anchor) -> None:
        """Moves the anchor to a committed head off the caller's path.

        Its fsync costs a few ms on a busy disk and stalls the database's own syncs, so a
        process moves it at most every ``ANCHOR_INTERVAL`` seconds: heads committed meanwhile
        coalesce into the next move, and the anchor trails the log by that much at most.
        """
        if self._pending is None or head.seq > self._pending.seq:
            self._pending = head
        if self._mover is None or self._mover.done():
            self._mover = asyncio.get_running_loop().create_task(self._move())

    async def _move(self) -> None:
        while self._pending is not None:
            head, self._pending = self._pending, None
            try:
                await asyncio.to_thread(self.advance, head)
            except OSError:  # committed all the same; verify shows how far the anchor lags
                log.exception("the audit anchor could not be moved to record %d", head.seq)
            await asyncio.sleep(ANCHOR_INTERVAL)  # a rate limit: heads committed meanwhile wait

    async def settle(self) -> None:
        """Returns once the anchor names every record this process committed."""
        if self._mover is not None:
            await self._mover


def chain_for(settings: Settings, keyring: Keyring) -> Chain:
    """The deployment's chain: the peppers' audit keys, the anchor in the data dir."""
    return Chain(keyring.audit_keys, settings.data_dir / "audit-anchor")


async def append(
    db: AsyncSession,
    event: str,
    *,
    account_id: str | None = None,
    actor: str = "system",
    at: datetime | None = None,
    **details: Any,
) -> AuditRecord:
    """Adds one keyed record at the head of the chain, in the caller's write transaction.

    It carries the current request's id, if the caller serves one (an API request, or an
    activity or a notification that request caused).
    """
    chain: Chain | None = db.info.get(CHAIN_INFO)
    if chain is None:
        raise RuntimeError("audit records are written in Database.write(), with its audit chain")
    if db.get_bind().dialect.name == "postgresql":
        await db.execute(_TAKE_CHAIN_LOCK, {"key": _ADVISORY_LOCK_KEY})
    head = (await db.execute(_CHAIN_HEAD)).first()
    record = AuditRecord(
        seq=(head.seq + 1) if head else 1,
        at=at or datetime.now(UTC),
        account_id=account_id,
        actor=actor,
        event=event,
        details=_details(details),
        prev_hash=head.hash if head else GENESIS,
        version=KEYED,
        request_id=REQUEST_ID.get(),
    )
    record.hash = chain.keyed_hash(record.prev_hash, record)
    await db.execute(_NEW_RECORD, column_values(record))
    db.info[HEAD_INFO] = Anchor(record.seq, record.hash)  # anchored once the transaction commits
    return record


def _details(details: dict[str, Any]) -> str:
    """The one spelling of a record's details: every release has written them so."""
    return json.dumps(details, sort_keys=True, default=_json_default)


def _as_written(details: str) -> bool:
    try:
        return _details(json.loads(details)) == details
    except ValueError:
        return False


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    raise TypeError(f"not JSON serializable in an audit record: {type(value).__name__}")


@dataclass(frozen=True)
class Break:
    """The first record where the chain stops holding, and why."""

    seq: int | None  # None when the anchor itself is at fault
    reason: str


async def _records(db: AsyncSession) -> AsyncIterator[AuditRecord]:
    result = await db.stream_scalars(select(AuditRecord).order_by(AuditRecord.seq))
    async for record in result:
        yield record


@dataclass(frozen=True)
class Verdict:
    """What verify found: how many records hold, the first break, and how far the proof goes."""

    count: int
    broken: Break | None
    keyed: int
    anchor: Anchor | None


async def verify(db: AsyncSession, chain: Chain) -> Verdict:
    """Walks the whole chain, then checks its head against the anchor."""
    try:
        anchor = chain.read_anchor()
    except AnchorError as error:
        return Verdict(0, Break(None, str(error)), 0, None)
    expected_prev, expected_seq, count, keyed = GENESIS, 1, 0, 0
    newest_key: int | None = None  # the newest pepper a record was keyed under so far
    anchored_hash: str | None = None
    upgraded_at: datetime | None = None  # the first keyed record's time, after unkeyed ones
    uncovered: int | None = None  # the first unkeyed record after keyed ones, if any

    def verdict(broken: Break | None) -> Verdict:
        return Verdict(count, broken, keyed, anchor)

    async for record in _records(db):
        if record.seq > expected_seq:
            return verdict(Break(expected_seq, f"record {expected_seq} is missing"))
        if record.seq < expected_seq:
            return verdict(Break(record.seq, "its number is out of sequence"))
        if record.version == UNKEYED and keyed:
            if upgraded_at is None:
                return verdict(Break(record.seq, _unkeyed_after_keyed(record.seq)))
            uncovered = uncovered or record.seq
        if record.prev_hash != expected_prev:
            return verdict(Break(record.seq, "its previous-hash does not match the record before"))
        if not _as_written(record.details):
            return verdict(
                Break(record.seq, f"record {record.seq}'s details are not as they were written")
            )
        if record.version == UNKEYED:
            if not hmac.compare_digest(chain.expected_hash(record), record.hash):
                return verdict(Break(record.seq, "its content does not match its hash"))
        else:
            key = chain.key_index(record)
            if key is None:
                return verdict(
                    Break(
                        record.seq,
                        f"record {record.seq}'s keyed hash does not match: rebuilt or edited "
                        "without the key (or keyed under a pepper no longer in the keyring)",
                    )
                )
            if newest_key is not None and key > newest_key:
                return verdict(
                    Break(
                        record.seq,
                        f"record {record.seq} is keyed under an older pepper than a record "
                        "before it: written with a retired pepper",
                    )
                )
            newest_key = key
        if anchor is not None and record.seq == anchor.seq:
            anchored_hash = record.hash
        if record.version != UNKEYED:
            if not keyed and count:
                upgraded_at = record.at
            if uncovered and upgraded_at and record.at - upgraded_at > UPGRADE_WINDOW:
                return verdict(Break(uncovered, _unkeyed_after_keyed(uncovered)))
            keyed, uncovered = keyed + 1, None
        expected_prev, expected_seq, count = record.hash, expected_seq + 1, count + 1
    if uncovered is not None:
        return verdict(Break(uncovered, _unkeyed_after_keyed(uncovered)))
    if anchor is None:
        if keyed:
            return verdict(
                Break(
                    None,
                    f"the anchor {chain.anchor_path} is missing, yet the log holds keyed records",
                )
            )
        return verdict(None)
    if count < anchor.seq:
        return verdict(
            Break(
                count + 1,
                f"the newest records are cut off: the anchor names record {anchor.seq} "
                f"but the log ends at {count}",
            )
        )
    if anchored_hash is None or not hmac.compare_digest(anchored_hash, anchor.hash):
        return verdict(
            Break(
                anchor.seq,
                f"record {anchor.seq}'s keyed hash does not match the anchor: rebuilt or "
                "edited without the key",
            )
        )
    return verdict(None)


def _unkeyed_after_keyed(seq: int) -> str:
    hours = f"{UPGRADE_WINDOW.total_seconds() / 3600:g}"
    return (
        f"record {seq} is unkeyed after keyed records: written without the key (a chain "
        f"upgraded from unkeyed records takes them only in the {hours} h after its first keyed "
        "record, and under a keyed one)"
    )


async def history(db: AsyncSession, account_id: str) -> list[AuditRecord]:
    result = await db.scalars(
        select(AuditRecord).where(AuditRecord.account_id == account_id).order_by(AuditRecord.seq)
    )
    return list(result.all())
