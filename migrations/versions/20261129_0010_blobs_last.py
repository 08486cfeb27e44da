"""SQLite: every table's large binary columns last in its rows

SQLite stores a row's columns in table order, a large value spilling into a chain of
overflow pages, and reading a column after it walks that chain. Columns added by later
revisions land after the blobs: reading a model's `version` walked its whole SavedModel and
backbone weights (5.7 ms a /predict with a 17 MB model, against 0.2 ms), and every image's
health facts walked the image. Rebuilt with the blobs at the end, a row's small columns are
read from its first page. PostgreSQL keeps large values out of line (TOAST): nothing to do.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29 18:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Each table's columns in their new order: the blobs (and a large deferred JSON before them,
# read only on its own) at the end.
ORDER: dict[str, tuple[str, ...]] = {
    "models": (
        "id",
        "name",
        "version",
        "job_id",
        "dataset_id",
        "backbone",
        "input_size",
        "classes",
        "metrics",
        "trainable_params",
        "non_trainable_params",
        "size_bytes",
        "savedmodel_sha256",
        "created_at",
        "evaluation",
        "savedmodel",
        "backbone_weights",
    ),
    "dataset_images": (
        "id",
        "dataset_id",
        "label",
        "filename",
        "size_bytes",
        "sha256",
        "phash",
        "width",
        "height",
        "mode",
        "data",
    ),
    "model_exports": (
        "id",
        "model_id",
        "format",
        "job_id",
        "size_bytes",
        "sha256",
        "created_at",
        "report",
        "data",
    ),
    "batch_predictions": (
        "id",
        "job_id",
        "model_id",
        "model_ref",
        "dataset_id",
        "filename",
        "top_k",
        "explain",
        "images",
        "classified",
        "seconds",
        "created_at",
        "bad",
        "archive",
        "results",
    ),
    "weights_files": ("id", "backbone", "filename", "size_bytes", "sha256", "created_at", "data"),
    "feature_sets": (
        "id",
        "dataset_id",
        "key",
        "images",
        "dimensions",
        "size_bytes",
        "created_at",
        "data",
    ),
}


def _reorder(order: dict[str, tuple[str, ...]]) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table, columns in order.items():
        with op.batch_alter_table(table, recreate="always", partial_reordering=[columns]):
            pass


def upgrade() -> None:
    _reorder(ORDER)


def downgrade() -> None:
    pass  # the order is no part of the schema: the rows read the same either way
