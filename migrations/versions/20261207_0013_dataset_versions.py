"""Dataset versions: every change a new immutable manifest, every model its version

Each dataset becomes its version 1: a manifest row per image, labelled as it was uploaded.
Models trained on a dataset learnt from that version (appends waited for jobs until now, so
nothing changed under them), and queued or finished training jobs record it in their spec.

Downgrade keeps each dataset as its latest version: images it no longer holds are deleted,
labels become the manifest's; older versions and models' lineage are lost.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 06:00:00
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dataset_versions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("dataset_id", sa.String(length=32), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("num_images", sa.Integer(), nullable=False),
        sa.Column("classes", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
            name=op.f("fk_dataset_versions_dataset_id_datasets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset_versions")),
        sa.UniqueConstraint("dataset_id", "number", name="uq_dataset_versions_dataset_id_number"),
    )
    op.create_table(
        "dataset_version_images",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["dataset_versions.id"],
            name=op.f("fk_dataset_version_images_version_id_dataset_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("version_id", "image_id", name=op.f("pk_dataset_version_images")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "model_lineage",
        sa.Column("model_id", sa.String(length=32), nullable=False),
        sa.Column("dataset_version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_model_lineage_model_id_models"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("model_id", name=op.f("pk_model_lineage")),
    )
    op.execute(
        "INSERT INTO dataset_versions "
        "(dataset_id, number, source, message, num_images, classes, created_at) "
        "SELECT id, 1, 'migration', '', num_images, classes, created_at FROM datasets"
    )
    op.execute(
        "INSERT INTO dataset_version_images (version_id, image_id, label) "
        "SELECT v.id, i.id, i.label FROM dataset_images i "
        "JOIN dataset_versions v ON v.dataset_id = i.dataset_id"
    )
    op.execute(
        "INSERT INTO model_lineage (model_id, dataset_version) "
        "SELECT id, 1 FROM models WHERE dataset_id IS NOT NULL"
    )
    _record_version_in_training_specs()


def _record_version_in_training_specs() -> None:
    """Training jobs name version 1 of their dataset, as new ones name the version they train."""
    connection = op.get_bind()
    jobs = sa.table("jobs", sa.column("id"), sa.column("kind"), sa.column("spec", sa.JSON()))
    rows = connection.execute(sa.select(jobs.c.id, jobs.c.spec).where(jobs.c.kind == "train"))
    for job_id, spec in rows.all():
        spec = json.loads(spec) if isinstance(spec, str) else spec
        if spec.get("dataset_id") and "dataset_version" not in spec:
            spec = {**spec, "dataset_version": 1}
            connection.execute(sa.update(jobs).where(jobs.c.id == job_id).values(spec=spec))


def downgrade() -> None:
    latest = (
        "SELECT v.id FROM dataset_versions v WHERE v.dataset_id = dataset_images.dataset_id "
        "AND v.number = (SELECT MAX(number) FROM dataset_versions w "
        "WHERE w.dataset_id = v.dataset_id)"
    )
    op.execute(
        "DELETE FROM dataset_images WHERE NOT EXISTS (SELECT 1 FROM dataset_version_images m "
        f"WHERE m.image_id = dataset_images.id AND m.version_id = ({latest}))"
    )
    op.execute(
        "UPDATE dataset_images SET label = (SELECT m.label FROM dataset_version_images m "
        f"WHERE m.image_id = dataset_images.id AND m.version_id = ({latest}))"
    )
    op.drop_table("model_lineage")
    op.drop_table("dataset_version_images")
    op.drop_table("dataset_versions")
