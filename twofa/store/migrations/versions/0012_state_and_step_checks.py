"""state and step checks

The stored 2FA state, login step and operator role each accept only the words of
``twofa/vocabulary.py``: a CHECK constraint per column, named as the models name it.

SQLite adds a constraint by copying the table (batch mode), which drops its triggers and the
indexes on expressions that reflection cannot read (``lower(email)``): each is read from
``sqlite_master`` before the copy and made again after it, as it was.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 03:00:00.000000

"""

import warnings
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The words of each column as this revision knows them; later words need a later revision.
_STATES = ("disabled", "pending_code", "pending_activation", "active", "locked")
_STEPS = ("code", "activation", "pin", "enroll", "enroll_code", "enroll_pin")
_ROLES = ("admin", "auditor")
_CHECKS = (
    ("accounts", "ck_accounts_two_factor_state", "two_factor_state", _STATES),
    ("login_challenges", "ck_login_challenges_step", "step", _STEPS),
    ("operators", "ck_operators_role", "role", _ROLES),
)


def _condition(column: str, words: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(w) for w in words)})"


def _kept(table: str) -> list[tuple[str, str]]:
    """The triggers and indexes of ``table`` on SQLite, as (name, statement)."""
    rows = op.get_bind().exec_driver_sql(
        "SELECT name, sql FROM sqlite_master WHERE tbl_name = ? "
        "AND type IN ('index', 'trigger') AND sql IS NOT NULL",
        (table,),
    )
    return [(name, sql) for name, sql in rows]


def _restore(table: str, kept: list[tuple[str, str]]) -> None:
    present = {name for name, _ in _kept(table)}
    for name, sql in kept:
        if name not in present:
            op.execute(sql)


def _alter(table: str, change: str, name: str, condition: str) -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    kept = _kept(table) if sqlite else []
    with warnings.catch_warnings():  # the indexes reflection skips are made again below
        warnings.filterwarnings("ignore", "Skipped unsupported reflection", sa.exc.SAWarning)
        with op.batch_alter_table(table) as batch:
            if change == "create":
                batch.create_check_constraint(name, condition)
            else:
                batch.drop_constraint(name, type_="check")
    if sqlite:
        _restore(table, kept)


def upgrade() -> None:
    """Upgrade schema."""
    for table, name, column, words in _CHECKS:
        _alter(table, "create", name, _condition(column, words))


def downgrade() -> None:
    """Downgrade schema."""
    for table, name, column, words in reversed(_CHECKS):
        _alter(table, "drop", name, _condition(column, words))
