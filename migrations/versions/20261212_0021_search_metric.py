"""What a search ranks its trials by: accuracy, or a multi-label dataset's mean average
precision

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-12 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("searches") as batch:
        batch.add_column(
            sa.Column("metric", sa.String(length=32), server_default="accuracy", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("searches") as batch:
        batch.drop_column("metric")
