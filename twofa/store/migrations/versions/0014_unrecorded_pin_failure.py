"""a wrong PIN the workflow has yet to confirm counting

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04 00:20:00.000000

A wrong PIN is counted by the account's workflow. Until the workflow confirms it (Temporal or
the worker away, the answer lost), the store keeps the update's id in
``accounts.pin_failure_unrecorded``, and the account's next PIN check sends it again, under the
same id, before it checks anything: no PIN is checked while a wrong one goes uncounted (S2).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column(
        "accounts", sa.Column("pin_failure_unrecorded", sa.String(length=64), nullable=True)
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_column("accounts", "pin_failure_unrecorded")
