"""archive rate limits: one token bucket per archive, shared by every VOXL process and host

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 19:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "archive_rate_limits",
        sa.Column("archive", sa.String(length=64), nullable=False),
        sa.Column("configured_qps", sa.Float(), nullable=False),
        sa.Column("override_qps", sa.Float(), nullable=True),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("archive"),
    )


def downgrade() -> None:
    op.drop_table("archive_rate_limits")
