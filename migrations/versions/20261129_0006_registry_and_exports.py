"""named models with versions and aliases; model exports

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import service.storage.tables

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Models stored before this revision: numbered per name in the order they were stored.
NUMBER_EXISTING = """
UPDATE models SET version = (
    SELECT COUNT(*) FROM models AS earlier
    WHERE earlier.name = models.name
      AND (earlier.created_at < models.created_at
           OR (earlier.created_at = models.created_at AND earlier.id <= models.id))
)
"""


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("version", sa.Integer(), nullable=True))
    op.execute(NUMBER_EXISTING)
    with op.batch_alter_table("models") as batch:
        batch.alter_column("version", existing_type=sa.Integer(), nullable=False)
        batch.create_unique_constraint("uq_models_name_version", ["name", "version"])
    op.create_table(
        "model_aliases",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("model_id", sa.String(32), nullable=False),
        sa.Column("updated_at", service.storage.tables.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name="fk_model_aliases_model_id_models",
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("name", "alias", name="pk_model_aliases"),
    )
    op.create_index("ix_model_aliases_model_id", "model_aliases", ["model_id"])
    op.create_table(
        "model_exports",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("model_id", sa.String(32), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=True),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("data", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", service.storage.tables.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name="fk_model_exports_model_id_models",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_model_exports_job_id_jobs", ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_model_exports"),
        sa.UniqueConstraint("model_id", "format", name="uq_model_exports_model_id"),
        sa.UniqueConstraint("job_id", name="uq_model_exports_job_id"),
    )
    op.create_index("ix_model_exports_model_id", "model_exports", ["model_id"])


def downgrade() -> None:
    op.drop_index("ix_model_exports_model_id", table_name="model_exports")
    op.drop_table("model_exports")
    op.drop_index("ix_model_aliases_model_id", table_name="model_aliases")
    op.drop_table("model_aliases")
    with op.batch_alter_table("models") as batch:
        batch.drop_constraint("uq_models_name_version", type_="unique")
        batch.drop_column("version")
