"""delivered instances: what each destination holds of a study, for re-delivering topped-up
studies exactly once per change

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25 19:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("study_exports", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revision", sa.Integer(), nullable=False, server_default="1"))
    op.create_table(
        "delivered_instances",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("export_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["export_id"], ["study_exports.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("export_id", "name", name="uq_delivered_instance"),
    )


def downgrade() -> None:
    op.drop_table("delivered_instances")
    with op.batch_alter_table("study_exports", schema=None) as batch_op:
        batch_op.drop_column("revision")
