"""Multi-label datasets, and the per-label thresholds of the models trained on them

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-11 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(
            sa.Column("multi_label", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    # A table of its own, not a column of `models`: see model_lineage (revision 0010).
    op.create_table(
        "model_thresholds",
        sa.Column("model_id", sa.String(length=32), nullable=False),
        sa.Column("thresholds", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_model_thresholds_model_id_models"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("model_id", name=op.f("pk_model_thresholds")),
    )


def downgrade() -> None:
    op.drop_table("model_thresholds")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("multi_label")
