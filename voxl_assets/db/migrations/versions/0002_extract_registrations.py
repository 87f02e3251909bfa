"""extract registrations, source problems, participant ids

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 16:30:00

Every existing ``extracts`` row gets a registration in state ``ingested`` (an extracts row
exists only for an ingested extract from now on).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "extract_registrations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project", sa.String(length=128), nullable=False),
        sa.Column("extract_datetime", sa.DateTime(), nullable=False),
        sa.Column("source_path", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("bad_input", sa.Boolean(), nullable=False),
        sa.Column("warnings", sa.JSON(), nullable=True),
        sa.Column("counts", sa.JSON(), nullable=True),
        sa.Column("omop_es_settings", sa.JSON(), nullable=True),
        sa.Column("omop_es_git_hash", sa.String(length=64), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("registered_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project", "extract_datetime", name="uq_extract_registration"),
    )
    op.create_table(
        "extract_source_problems",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source_path", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("first_seen", sa.DateTime(), nullable=False),
        sa.Column("last_seen", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("source_path"),
    )
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("participant_id", sa.String(length=64), nullable=False, server_default="")
        )
    op.execute(
        "INSERT INTO extract_registrations (project, extract_datetime, source_path, state, "
        "bad_input, omop_es_settings, omop_es_git_hash, revision, registered_at, updated_at) "
        "SELECT project, extract_datetime, source_path, 'ingested', false, omop_es_settings, "
        "omop_es_git_hash, 1, registered_at, registered_at FROM extracts"
    )


def downgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_column("participant_id")
    op.drop_table("extract_source_problems")
    op.drop_table("extract_registrations")
