"""Bulk seeding straight into the store (SQLAlchemy core, batched), never through the journey."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, create_engine, insert

from twofa.store.db import sync_url
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
