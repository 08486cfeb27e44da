"""each layer's weight change from the weights its job started from

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Nullable: the layers of models stored before this revision have no figures.
COLUMNS = ("weight_change", "moving_mean_change", "moving_variance_change")


def upgrade() -> None:
    with op.batch_alter_table("model_layers") as batch:
        for name in COLUMNS:
            batch.add_column(sa.Column(name, sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_layers") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
