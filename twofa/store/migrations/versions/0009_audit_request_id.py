"""request ids on audit records and queued notifications

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 10:00:00.000000

Each audit record keeps the id of the HTTP request that caused it (the ``X-Request-ID`` of the
access log line), and each queued notification the id of the request that queued it, so the
notifier's audit record of the mail carries it too. Both are nullable: records written before,
and those no request caused (timers, the CLI, the dashboard), have none.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column("audit_log", sa.Column("request_id", sa.String(length=128), nullable=True))
    op.add_column("notifications", sa.Column("request_id", sa.String(length=128), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_column("notifications", "request_id")
    op.drop_column("audit_log", "request_id")
