"""an index on dataset images' content hash, for appends that skip images already stored

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 17:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Not unique: a dataset created before appends existed may hold byte-identical images
    # (the health report lists them), and creation still keeps them.
    op.create_index(
        "ix_dataset_images_dataset_id_sha256", "dataset_images", ["dataset_id", "sha256"]
    )


def downgrade() -> None:
    op.drop_index("ix_dataset_images_dataset_id_sha256", table_name="dataset_images")
