"""Lineage: the model a retraining job started from (POST /models/{model_id}/retrain)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-08 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_lineage") as table:
        table.add_column(sa.Column("parent_model_id", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_lineage") as table:
        table.drop_column("parent_model_id")
