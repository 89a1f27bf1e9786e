"""device revoked_by holds an actor

An admin's revocation names the admin ("admin:<email>", as the audit trail does), which did
not fit in 20 characters: PostgreSQL refused the write, so admins could neither revoke a
browser nor disable 2FA there (SQLite does not enforce the length).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 07:40:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.alter_column(
            "revoked_by",
            existing_type=sa.String(length=20),
            type_=sa.String(length=300),
            existing_nullable=True,
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.alter_column(
            "revoked_by",
            existing_type=sa.String(length=300),
            type_=sa.String(length=20),
            existing_nullable=True,
        )
