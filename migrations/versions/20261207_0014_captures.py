"""Production capture: policies per model version or registry alias, and the captured images

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _policy_columns() -> list[sa.Column]:
    return [
        sa.Column("rate", sa.Float(), nullable=False),
        sa.Column("max_images", sa.Integer(), nullable=False),
        sa.Column("days", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "model_capture_policies",
        *_policy_columns(),
        sa.Column("model_id", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_model_capture_policies_model_id_models"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("model_id", name=op.f("pk_model_capture_policies")),
    )
    op.create_table(
        "alias_capture_policies",
        *_policy_columns(),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["name", "alias"],
            ["model_aliases.name", "model_aliases.alias"],
            name="fk_alias_capture_policies_name_model_aliases",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("name", "alias", name=op.f("pk_alias_capture_policies")),
    )
    op.create_table(
        "captures",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("model_id", sa.String(length=32), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("margin", sa.Float(), nullable=False),
        sa.Column("ood_score", sa.Float(), nullable=True),
        sa.Column("unknown", sa.Boolean(), nullable=True),
        sa.Column("scores", sa.JSON(), nullable=False),
        sa.Column("media_type", sa.String(length=32), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("image", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_captures_model_id_models"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_captures")),
    )
    op.create_index("ix_captures_created_at_id", "captures", ["created_at", "id"])
    op.create_index("ix_captures_model_id_created_at", "captures", ["model_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_captures_model_id_created_at", table_name="captures")
    op.drop_index("ix_captures_created_at_id", table_name="captures")
    op.drop_table("captures")
    op.drop_table("alias_capture_policies")
    op.drop_table("model_capture_policies")
