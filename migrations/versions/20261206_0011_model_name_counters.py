"""A version counter per model name: numbers are never given twice

Before this, a name's next version was one past its highest stored one, so deleting the
latest version and training again gave the deleted number to a different model. Each name's
counter starts at the highest version it has now.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 02:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model_names",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("last_version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_model_names")),
    )
    op.execute(
        "INSERT INTO model_names (name, last_version) "
        "SELECT name, MAX(version) FROM models GROUP BY name"
    )


def downgrade() -> None:
    op.drop_table("model_names")
