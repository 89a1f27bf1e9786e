"""pepper ids beside every peppered secret

Each password and PIN hash, seal and token digest names the pepper it was made under, so a
pepper rotation can keep reading what the previous pepper made and count what is left on it.
Rows from before stay NULL: made under the pepper of their day, which ``twofa pepper rotate``
tags before it replaces that pepper.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 10:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = [
    ("accounts", "password_pepper"),
    ("accounts", "pin_pepper"),
    ("accounts", "seal_pepper"),
    ("activation_drafts", "pepper_id"),
    ("devices", "pepper_id"),
    ("sessions", "pepper_id"),
    ("operators", "pepper_id"),
    ("operator_sessions", "pepper_id"),
]


def upgrade() -> None:
    """Upgrade schema."""
    for table, column in _COLUMNS:
        op.add_column(table, sa.Column(column, sa.String(length=16), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    for table, column in reversed(_COLUMNS):
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column)
