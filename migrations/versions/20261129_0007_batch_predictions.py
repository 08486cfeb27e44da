"""batch predictions: a zip or a dataset classified by the worker, results as JSON Lines

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 15:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import service.storage.tables

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "batch_predictions",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=True),
        sa.Column("model_id", sa.String(32), nullable=True),
        sa.Column("model_ref", sa.JSON(), nullable=False),
        sa.Column("dataset_id", sa.String(32), nullable=True),
        sa.Column("filename", sa.String(255), nullable=True),
        sa.Column("top_k", sa.Integer(), nullable=False),
        sa.Column("explain", sa.Boolean(), nullable=False),
        sa.Column("archive", sa.LargeBinary(), nullable=True),
        sa.Column("images", sa.Integer(), nullable=True),
        sa.Column("classified", sa.Integer(), nullable=True),
        sa.Column("bad", sa.JSON(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("results", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", service.storage.tables.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_batch_predictions_job_id_jobs", ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name="fk_batch_predictions_model_id_models",
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
            name="fk_batch_predictions_dataset_id_datasets",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_batch_predictions"),
        sa.UniqueConstraint("job_id", name="uq_batch_predictions_job_id"),
    )
    op.create_index("ix_batch_predictions_created_at_id", "batch_predictions", ["created_at", "id"])
    op.create_index("ix_batch_predictions_model_id", "batch_predictions", ["model_id"])
    op.create_index("ix_batch_predictions_dataset_id", "batch_predictions", ["dataset_id"])


def downgrade() -> None:
    op.drop_index("ix_batch_predictions_dataset_id", table_name="batch_predictions")
    op.drop_index("ix_batch_predictions_model_id", table_name="batch_predictions")
    op.drop_index("ix_batch_predictions_created_at_id", table_name="batch_predictions")
    op.drop_table("batch_predictions")
