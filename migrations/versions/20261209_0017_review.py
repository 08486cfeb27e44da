"""Review: a dataset's unlabelled pool, captures labelled into a dataset, and images a person
marked unknown on a model's review page

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-09 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pool_images",
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
            name=op.f("fk_pool_images_dataset_id_datasets"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["dataset_images.id"],
            name=op.f("fk_pool_images_image_id_dataset_images"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("image_id", name=op.f("pk_pool_images")),
    )
    op.create_index(op.f("ix_pool_images_dataset_id"), "pool_images", ["dataset_id"])
    op.create_table(
        "labelled_captures",
        sa.Column("dataset_id", sa.String(length=32), nullable=False),
        sa.Column("capture_id", sa.String(length=32), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
            name=op.f("fk_labelled_captures_dataset_id_datasets"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["dataset_images.id"],
            name=op.f("fk_labelled_captures_image_id_dataset_images"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("dataset_id", "capture_id", name=op.f("pk_labelled_captures")),
    )
    op.create_table(
        "review_marks",
        sa.Column("model_id", sa.String(length=32), nullable=False),
        sa.Column("item", sa.String(length=48), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_review_marks_model_id_models"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("model_id", "item", name=op.f("pk_review_marks")),
    )


def downgrade() -> None:
    op.drop_table("review_marks")
    op.drop_table("labelled_captures")
    op.drop_table("pool_images")
