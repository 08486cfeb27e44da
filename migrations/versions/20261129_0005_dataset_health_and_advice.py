"""dataset health facts per image, advice jobs, cached backbone features, label review

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Nullable: images stored before this revision are measured when a report first needs them.
IMAGE_FACTS = (
    ("sha256", sa.String(64)),
    ("phash", sa.String(16)),
    ("width", sa.Integer()),
    ("height", sa.Integer()),
    ("mode", sa.String(16)),
)


def upgrade() -> None:
    with op.batch_alter_table("dataset_images") as batch:
        for name, kind in IMAGE_FACTS:
            batch.add_column(sa.Column(name, kind, nullable=True))
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("label_review", sa.JSON(), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="train"))
    op.create_table(
        "advice",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("dataset_id", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=True),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
            name="fk_advice_dataset_id_datasets",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_advice_job_id_jobs", ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_advice"),
        sa.UniqueConstraint("job_id", name="uq_advice_job_id"),
    )
    op.create_index("ix_advice_dataset_id", "advice", ["dataset_id"])
    op.create_index("ix_advice_created_at_id", "advice", ["created_at", "id"])
    op.create_table(
        "feature_sets",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("dataset_id", sa.String(32), nullable=False),
        sa.Column("key", sa.String(400), nullable=False),
        sa.Column("images", sa.Integer(), nullable=False),
        sa.Column("dimensions", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
            name="fk_feature_sets_dataset_id_datasets",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_feature_sets"),
    )
    op.create_index("ix_feature_sets_dataset_id", "feature_sets", ["dataset_id"])


def downgrade() -> None:
    op.drop_index("ix_feature_sets_dataset_id", table_name="feature_sets")
    op.drop_table("feature_sets")
    op.drop_index("ix_advice_created_at_id", table_name="advice")
    op.drop_index("ix_advice_dataset_id", table_name="advice")
    op.drop_table("advice")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("kind")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("label_review")
    with op.batch_alter_table("dataset_images") as batch:
        for name, _ in reversed(IMAGE_FACTS):
            batch.drop_column(name)
