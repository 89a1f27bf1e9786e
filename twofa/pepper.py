"""Pepper rotation: what is left on each pepper, and the keyring's files in the data dir.

A rotation makes a new current pepper and keeps the old one as previous: everything made under
it is still read, and made anew under the current pepper at its next use (a login re-hashes the
password, a right PIN re-hashes the PIN and re-encrypts the seal, a browser's or session's token
is digested anew). The report counts what is still on each pepper, so an operator knows when a
previous pepper can be dropped; one the store still needs but the keyring lacks is reported as
dropped too early. No pepper value is ever printed or logged, only its id.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from twofa import audit
from twofa.config import (
    PEPPER_FILE,
    PREVIOUS_PEPPERS_FILE,
    RETIRED_AUDIT_KEYS_FILE,
    Settings,
    private_dir,
)
from twofa.crypto import Keyring, new_pepper
from twofa.store import pepper_queries

UNTAGGED = "untagged"
RETIRED = "retired"  # the audit keys kept of dropped peppers
NO_KEY = "unknown"  # audit records that verify under no key the keyring has
AUDIT_RECORDS = "audit records"


@dataclass
class Report:
    """Counts per pepper id (``UNTAGGED`` for rows from before pepper ids)."""

    keyring_ids: list[str]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, pepper: str, what: str, n: int) -> None:
        if n:
            bucket = self.counts.setdefault(pepper, {})
            bucket[what] = bucket.get(what, 0) + n

    def left(self, pepper: str, *, audit_too: bool = False) -> int:
        """What is still made under ``pepper``: what needs it to be read."""
        counts = self.counts.get(pepper, {})
        return sum(n for what, n in counts.items() if audit_too or what != AUDIT_RECORDS)

    @property
    def unknown(self) -> list[str]:
        """Peppers the store still needs but the keyring lacks: dropped too early."""
        return [p for p in self.counts if p not in (*self.keyring_ids, UNTAGGED, RETIRED)]

    def lines(self) -> list[str]:
        out = []
        for index, pepper in enumerate([*self.keyring_ids, *self.unknown]):
            if index == 0:
                role = "current"
            elif pepper in self.keyring_ids:
                role = "previous"
            else:
                role = "NOT IN THE KEYRING"
            out.append(f"pepper {pepper} ({role}): {self._counts(pepper)}")
            if role == "previous":
                if self.left(pepper):
                    out.append("  still needed: each goes to the current pepper at its next use")
                else:
                    out.append(f"  only audit records left: `twofa pepper drop {pepper}` drops it")
            elif role == "NOT IN THE KEYRING":
                out.append(
                    "  dropped too early: these can no longer be read (logins fail, audit verify "
                    "fails); put the pepper back in the keyring"
                )
        if RETIRED in self.counts:
            out.append(f"audit keys of dropped peppers: {self._counts(RETIRED)}")
        if UNTAGGED in self.counts:
            out.append(
                f"untagged (made before pepper ids, under the pepper of their day): "
                f"{self._counts(UNTAGGED)}"
            )
        return out

    def _counts(self, pepper: str) -> str:
        counts = self.counts.get(pepper, {})
        return ", ".join(f"{n} {what}" for what, n in counts.items()) or "nothing"


async def report(db: AsyncSession, keyring: Keyring, chain: audit.Chain) -> Report:
    """What is made under each pepper, counted in the store; audit records by their key."""
    result = Report(keyring.ids)
    for what, pepper, n in await pepper_queries.made_under_each_pepper(db, datetime.now(UTC)):
        result.add(pepper or UNTAGGED, what, n)
    async for record in pepper_queries.keyed_audit_records(db):
        index = chain.key_index(record)
        if index is None:
            result.add(NO_KEY, AUDIT_RECORDS, 1)
        else:
            result.add(
                keyring.ids[index] if index < len(keyring.ids) else RETIRED, AUDIT_RECORDS, 1
            )
    return result


def rotate_files(settings: Settings) -> tuple[str, str]:
    """A new current pepper in the data dir; the old one first in ``pepper-previous``.

    The previous file is written first: a crash in between leaves the old pepper current, and
    also (harmlessly) previous. Returns the old and the new pepper's ids.
    """
    old = settings.pepper_bytes
    new = new_pepper()
    previous = settings.data_dir / PREVIOUS_PEPPERS_FILE
    lines = previous.read_text().splitlines() if previous.exists() else []
    _write_private(previous, "\n".join([old.decode(), *lines]) + "\n")
    _write_private(settings.data_dir / PEPPER_FILE, new + "\n")
    return Keyring(old).id, Keyring(new.encode()).id


def drop_files(settings: Settings, keyring: Keyring, pepper: str) -> bool:
    """Keeps the dropped pepper's audit key (not the pepper) for verify, and takes the pepper
    out of ``pepper-previous``; False when it comes from TWOFA_PEPPER_PREVIOUS instead."""
    dropped = next(p for p in keyring.previous if p.id == pepper)
    retired = settings.data_dir / RETIRED_AUDIT_KEYS_FILE
    keys = retired.read_text().splitlines() if retired.exists() else []
    _write_private(retired, "\n".join([dropped.mac(b"audit-chain-key").hex(), *keys]) + "\n")
    path = settings.data_dir / PREVIOUS_PEPPERS_FILE
    lines = path.read_text().splitlines() if path.exists() else []
    kept = [line for line in lines if line.strip() and Keyring(line.strip().encode()).id != pepper]
    if len(kept) == len([line for line in lines if line.strip()]):
        return False
    _write_private(path, "".join(f"{line}\n" for line in kept))
    return True


def _write_private(path: Path, text: str) -> None:
    """Replaces a file of the data dir atomically, readable by its owner only."""
    private_dir(path.parent)
    partial = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, path)
