"""indexes for keyset pagination of every list

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 09:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LISTS = ("datasets", "jobs", "models", "weights_files")


def upgrade() -> None:
    for table in LISTS:
        op.create_index(f"ix_{table}_created_at_id", table, ["created_at", "id"])
    # Claims and status-filtered lists order by (created_at, id) within one status.
    op.drop_index("ix_jobs_status_created_at", table_name="jobs")
    op.create_index("ix_jobs_status_created_at_id", "jobs", ["status", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_status_created_at_id", table_name="jobs")
    op.create_index("ix_jobs_status_created_at", "jobs", ["status", "created_at"])
    for table in LISTS:
        op.drop_index(f"ix_{table}_created_at_id", table_name=table)
