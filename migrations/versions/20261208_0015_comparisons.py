"""Comparisons: two model versions scored on the same dataset version by a "compare" job

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-08 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "comparisons",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=True),
        sa.Column("model_a_id", sa.String(length=32), nullable=False),
        sa.Column("model_b_id", sa.String(length=32), nullable=False),
        sa.Column("dataset_id", sa.String(length=32), nullable=True),
        sa.Column("dataset_version", sa.Integer(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
            name=op.f("fk_comparisons_dataset_id_datasets"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_comparisons_job_id_jobs"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_comparisons")),
        sa.UniqueConstraint("job_id", name=op.f("uq_comparisons_job_id")),
    )
    op.create_index("ix_comparisons_created_at_id", "comparisons", ["created_at", "id"])
    op.create_index(op.f("ix_comparisons_dataset_id"), "comparisons", ["dataset_id"])
    op.create_index(op.f("ix_comparisons_model_a_id"), "comparisons", ["model_a_id"])
    op.create_index(op.f("ix_comparisons_model_b_id"), "comparisons", ["model_b_id"])


def downgrade() -> None:
    op.drop_table("comparisons")
