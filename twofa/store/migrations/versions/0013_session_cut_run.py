"""the workflow run that made an account's session cut

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 20:30:00.000000

The enable's session cut (``accounts.auto_logout_at``) keeps the id of the workflow run whose
enable made it. A try of that enable run again (its worker died) finds its own cut by the id
and keeps it, however late it runs; a cut whose run closed before its state change (an operator
terminated it) is told apart from one an enable still under way holds. Nullable: cuts made
before have none.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column("accounts", sa.Column("auto_logout_run", sa.String(length=64), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_column("accounts", "auto_logout_run")
