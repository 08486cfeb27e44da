"""The tables. Every change here needs an Alembic migration in migrations/versions."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    func,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, column_property, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# Widths and bounds the columns below have, named so that request models and forms that
# validate what lands in them say the same thing (Field(max_length=NAME_LENGTH)).
ID_LENGTH = 32  # "m_" + 16 hex digits, with room to spare
NAME_LENGTH = 200  # names of datasets, jobs, models; class labels
LABEL_SEPARATOR = ";"  # between an image's labels in a multi-label manifest
URL_LENGTH = 2000  # webhook URLs
# The largest value an Integer column holds on every backend (PostgreSQL's INTEGER).
MAX_INTEGER = 2**31 - 1


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


class UTCDateTime(TypeDecorator[datetime]):
    """Stored as naive UTC (SQLite has no time zones), always read back as aware UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use an aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _newest_first(table: str) -> Index:
    """The index every list walks: (created_at, id), the key of its keyset pagination."""
    return Index(f"ix_{table}_created_at_id", "created_at", "id")


class DatasetVersion(Base):
    """One immutable state of a dataset: numbered 1, 2, 3… per dataset, made by an upload,
    an append, an import or an edit. Its images and their labels are its manifest."""

    __tablename__ = "dataset_versions"
    __table_args__ = (
        UniqueConstraint("dataset_id", "number", name="uq_dataset_versions_dataset_id_number"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(16))  # upload, append, import, edit, migration
    message: Mapped[str] = mapped_column(Text, default="")
    num_images: Mapped[int] = mapped_column(Integer)
    classes: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (_newest_first("datasets"),)

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    num_images: Mapped[int] = mapped_column(Integer)
    classes: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    skipped: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # Several labels per image (uploaded with a labels.csv or labels.jsonl): a manifest's
    # `label` is then the image's labels joined by LABEL_SEPARATOR, sorted ("" for none).
    multi_label: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Likely mislabelled images, found by the worker from out-of-fold predictions on backbone
    # features (service/ml/labels.py); null until an advice or training job has them.
    label_review: Mapped[dict[str, Any] | None] = mapped_column(JSON, deferred=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The latest version's number (read with the row: one index lookup).
    version: Mapped[int] = column_property(
        select(func.max(DatasetVersion.number))
        .where(DatasetVersion.dataset_id == id)
        .correlate_except(DatasetVersion)
        .scalar_subquery()
    )


class DatasetImage(Base):
    """An image's bytes and facts as uploaded, stored once and never changed: which versions
    hold it, and under which label, is their manifests' business (`VersionImage`)."""

    __tablename__ = "dataset_images"
    # Appends skip images the dataset already holds, looked up by hash (datasets/service.py).
    __table_args__ = (Index("ix_dataset_images_dataset_id_sha256", "dataset_id", "sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[str] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True
    )
    # The class folder it was uploaded in; its label in a version is the manifest's.
    uploaded_label: Mapped[str] = mapped_column("label", String(NAME_LENGTH))
    filename: Mapped[str] = mapped_column(Text)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    # What the health report reads, measured at upload (service/ml/images.py:image_facts);
    # null for images stored before revision 0005 until a report measures them.
    sha256: Mapped[str | None] = mapped_column(String(64))
    phash: Mapped[str | None] = mapped_column(String(16))  # 64-bit perceptual hash, hex
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    mode: Mapped[str | None] = mapped_column(String(16))  # Pillow's mode as stored: RGB, L, CMYK…


class VersionImage(Base):
    """A version's manifest, a row per image: which stored image, under which label. No image
    bytes: a version costs tens of bytes per image, however many versions hold it.

    No foreign key on `image_id`: an image row goes only with its dataset (whose versions
    cascade first), and the index such a key needs would double each row's size."""

    __tablename__ = "dataset_version_images"
    __table_args__ = ({"sqlite_with_rowid": False},)

    version_id: Mapped[int] = mapped_column(
        ForeignKey("dataset_versions.id", ondelete="CASCADE"), primary_key=True
    )
    image_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    label: Mapped[str] = mapped_column(String(NAME_LENGTH))


class PoolImage(Base):
    """An image of a dataset's unlabelled pool (POST /datasets/{id}/pool): stored with the
    dataset's images, in no version until a person labels it, when its row goes."""

    __tablename__ = "pool_images"

    image_id: Mapped[int] = mapped_column(
        ForeignKey("dataset_images.id", ondelete="CASCADE"), primary_key=True
    )
    dataset_id: Mapped[str] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True
    )


class LabelledCapture(Base):
    """A captured prediction labelled into a dataset, and the image it became: the review
    queue does not offer it again, and an edit cannot add it twice. No key on the capture:
    captures expire, the image stays."""

    __tablename__ = "labelled_captures"

    dataset_id: Mapped[str] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True
    )
    capture_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("dataset_images.id", ondelete="CASCADE"))


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status_created_at_id", "status", "created_at", "id"),
        _newest_first("jobs"),
    )

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    # A registered kind's name (service/job_kinds.py): one queue for all kinds.
    kind: Mapped[str] = mapped_column(String(16), default="train", server_default="train")
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    status: Mapped[str] = mapped_column(String(16))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    dataset_id: Mapped[str | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), index=True
    )
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Accelerators the job asks for: a worker with fewer never claims it.
    gpus: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Where the job's end is announced (a signed POST), if anywhere.
    webhook_url: Mapped[str | None] = mapped_column(String(URL_LENGTH))

    model: Mapped[TrainedModel | None] = relationship(back_populates="job", lazy="raise")


class WorkerRow(Base):
    """A worker process as it said it was: its devices, and its latest heartbeat."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the lease owner's name
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    # [{"kind": "GPU", "name": "/physical_device:GPU:0", "memory_bytes": …}, …]
    devices: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    gpus: Mapped[int] = mapped_column(Integer)
    memory_bytes: Mapped[int | None] = mapped_column(BigInteger)  # the host's RAM
    job_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))  # the job it runs now
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookDelivery(Base):
    """One announcement of a job's end to its webhook URL, and how delivering it went."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    job_id: Mapped[str | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), index=True
    )
    url: Mapped[str] = mapped_column(String(URL_LENGTH))
    event: Mapped[dict[str, Any]] = mapped_column(JSON)  # the body POSTed
    status: Mapped[str] = mapped_column(String(16))  # pending, delivered, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Every attempt: {"at", "status_code" | null, "error" | null, "seconds"}.
    log: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ModelThresholds(Base):
    """A multi-label model's thresholds, one per label: a table of its own for the reason
    `ModelLineage` is one."""

    __tablename__ = "model_thresholds"

    model_id: Mapped[str] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    thresholds: Mapped[list[float]] = mapped_column(JSON)


class ModelLineage(Base):
    """Which version of its dataset a model learnt from, and the model it retrains, if any. A
    table of its own rather than columns of `models`: on SQLite a column added there lands
    after the model's blobs, and reading it would walk them (see migration 0010)."""

    __tablename__ = "model_lineage"

    model_id: Mapped[str] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    dataset_version: Mapped[int] = mapped_column(Integer)
    # POST /models/{id}/retrain's model; kept as history when that model is deleted.
    parent_model_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))


class TrainedModel(Base):
    __tablename__ = "models"
    __table_args__ = (
        _newest_first("models"),
        UniqueConstraint("name", "version", name="uq_models_name_version"),
    )

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    # The named model it is a version of; versions count 1, 2, 3… per name, in store order.
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    version: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[str | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), unique=True
    )
    dataset_id: Mapped[str | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), index=True
    )
    backbone: Mapped[str] = mapped_column(String(64))
    input_size: Mapped[int] = mapped_column(Integer)
    classes: Mapped[list[str]] = mapped_column(JSON)
    metrics: Mapped[dict[str, float]] = mapped_column(JSON)
    # Per-class report and confusion matrix on the validation split; null without one.
    # Deferred: SQLite stores it after the BLOBs, so reading it walks their overflow pages.
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSON, deferred=True)
    trainable_params: Mapped[int] = mapped_column(BigInteger)
    non_trainable_params: Mapped[int] = mapped_column(BigInteger)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    savedmodel_sha256: Mapped[str] = mapped_column(String(64))
    savedmodel: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    backbone_weights: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The version of its dataset it learnt from (null for models stored without a dataset).
    dataset_version: Mapped[int | None] = column_property(
        select(ModelLineage.dataset_version)
        .where(ModelLineage.model_id == id)
        .correlate_except(ModelLineage)
        .scalar_subquery()
    )
    parent_model_id: Mapped[str | None] = column_property(
        select(ModelLineage.parent_model_id)
        .where(ModelLineage.model_id == id)
        .correlate_except(ModelLineage)
        .scalar_subquery()
    )
    # A multi-label model's threshold per label (in `classes`' order), fitted on its
    # validation split: /predict answers each label reaching its own. Null for a softmax.
    thresholds: Mapped[list[float] | None] = column_property(
        select(ModelThresholds.thresholds)
        .where(ModelThresholds.model_id == id)
        .correlate_except(ModelThresholds)
        .scalar_subquery()
    )

    job: Mapped[Job | None] = relationship(back_populates="model", lazy="raise")


class ModelHead(Base):
    """A model's head weights and the classes of its columns (service/ml/heads.py): what a
    retrain warm-starts its head from. A table of its own for the reason ModelLineage is."""

    __tablename__ = "model_heads"

    model_id: Mapped[str] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    weights: Mapped[bytes] = mapped_column(LargeBinary)


class ModelLayer(Base):
    __tablename__ = "model_layers"

    model_id: Mapped[str] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    path: Mapped[str] = mapped_column(Text)
    class_name: Mapped[str] = mapped_column(String(100))
    trainable: Mapped[bool] = mapped_column(Boolean)
    trainable_params: Mapped[int] = mapped_column(BigInteger)
    non_trainable_params: Mapped[int] = mapped_column(BigInteger)
    output_shape: Mapped[list[int | None] | None] = mapped_column(JSON)
    # What fine-tuning changed, relative to the weights the job started from (see
    # service/ml/drift.py); null where the layer started from random weights, has none, or
    # the model predates them.
    weight_change: Mapped[float | None] = mapped_column(Float)
    moving_mean_change: Mapped[float | None] = mapped_column(Float)
    moving_variance_change: Mapped[float | None] = mapped_column(Float)

    @property
    def batchnorm_shift(self) -> dict[str, float | None] | None:
        """The BatchNormalization layer's moving statistics' changes, as the API shows them."""
        if self.moving_mean_change is None and self.moving_variance_change is None:
            return None
        return {
            "moving_mean": self.moving_mean_change,
            "moving_variance": self.moving_variance_change,
        }


class Advice(Base):
    """A strategy advice for a dataset and backbone: the request, and its result once the
    worker's advice job (`job_id`) has measured it."""

    __tablename__ = "advice"
    __table_args__ = (_newest_first("advice"),)

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True
    )
    job_id: Mapped[str | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), unique=True
    )
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class FeatureSet(Base):
    """A frozen backbone's pooled features of some of a dataset's images, cached by the worker
    so that advice and later jobs with the same frozen backbone do not run it again.

    `key` names everything the features depend on (service/ml/features.py:feature_key);
    `data` is an .npz of `image_ids` (int64) and `features` (float32, one row per image).
    """

    __tablename__ = "feature_sets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[str] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True
    )
    key: Mapped[str] = mapped_column(String(400))
    images: Mapped[int] = mapped_column(Integer)
    dimensions: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ModelName(Base):
    """The last version number given under a name: kept when that version is deleted, so a
    number is never given twice (a client that cached "version 3" never gets another model)."""

    __tablename__ = "model_names"

    name: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    last_version: Mapped[int] = mapped_column(Integer)


class ModelAlias(Base):
    """A movable label (`production`, `staging`, …) on one version of a named model."""

    __tablename__ = "model_aliases"

    name: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    # RESTRICT: a version an alias points to cannot be deleted (the API answers 409 first).
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"), index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class ModelExport(Base):
    """A trained model converted to another format by the worker's export job."""

    __tablename__ = "model_exports"
    __table_args__ = (UniqueConstraint("model_id", "format", name="uq_model_exports_model_id"),)

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    format: Mapped[str] = mapped_column(String(16))
    job_id: Mapped[str | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), unique=True
    )
    # Parity with the SavedModel on the validation split, input/output types, labels: JSON.
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    data: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BatchPrediction(Base):
    """Images classified by a batch prediction job: a zip uploaded with the request, or a
    stored dataset; the results as JSON Lines once the job succeeds."""

    __tablename__ = "batch_predictions"
    __table_args__ = (_newest_first("batch_predictions"),)

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    job_id: Mapped[str | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), unique=True
    )
    # The version the request resolved to; how it was named (id, name, version, alias) too.
    model_id: Mapped[str | None] = mapped_column(
        ForeignKey("models.id", ondelete="SET NULL"), index=True
    )
    model_ref: Mapped[dict[str, Any]] = mapped_column(JSON)
    dataset_id: Mapped[str | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), index=True
    )
    filename: Mapped[str | None] = mapped_column(String(255))  # the uploaded zip's
    top_k: Mapped[int] = mapped_column(Integer)
    explain: Mapped[bool] = mapped_column(Boolean)
    # The uploaded zip, kept until the job has read it and succeeded.
    archive: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    # Once done: images looked at, classified, and those that could not be (file, reason).
    images: Mapped[int | None] = mapped_column(Integer)
    classified: Mapped[int | None] = mapped_column(Integer)
    bad: Mapped[list[dict[str, str]] | None] = mapped_column(JSON)
    seconds: Mapped[float | None] = mapped_column(Float)
    results: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)  # JSON Lines
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Comparison(Base):
    """Two model versions scored by a "compare" job on the same images: a dataset version's.
    The models are kept by id (a deleted one leaves its figures and loses its link)."""

    __tablename__ = "comparisons"
    __table_args__ = (_newest_first("comparisons"),)

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    job_id: Mapped[str | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), unique=True
    )
    model_a_id: Mapped[str] = mapped_column(String(ID_LENGTH), index=True)
    model_b_id: Mapped[str] = mapped_column(String(ID_LENGTH), index=True)
    dataset_id: Mapped[str | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), index=True
    )
    dataset_version: Mapped[int] = mapped_column(Integer)
    # Once done: the figures GET /comparisons/{id} answers (service/comparisons/schemas.py).
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Search(Base):
    """A search for the best spec within a budget (service/searches/): the request, the
    learning-rate range test's outcome once run, and the best trial once the job is done."""

    __tablename__ = "searches"
    __table_args__ = (_newest_first("searches"),)

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    job_id: Mapped[str | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), unique=True
    )
    dataset_id: Mapped[str | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), index=True
    )
    dataset_version: Mapped[int] = mapped_column(Integer)
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    # What its trials' scores are: "accuracy", or a multi-label dataset's
    # "mean_average_precision".
    metric: Mapped[str] = mapped_column(String(32), default="accuracy", server_default="accuracy")
    # Written by the job as it goes: kept when a worker dies, so a resumed search reuses it.
    range_test: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Once done: {"trial": number, "spec": a job spec}, and the training job train_best queued.
    best: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    trained_job_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SearchTrial(Base):
    """One finished trial of a search, written as it ends: what a resumed search starts from."""

    __tablename__ = "search_trials"
    __table_args__ = (
        UniqueConstraint("search_id", "number", name="uq_search_trials_search_id_number"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    search_id: Mapped[str] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    phase: Mapped[str] = mapped_column(String(16))  # "head" or "fine_tune"
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The validation metric after each epoch, as the pruner saw it.
    scores: Mapped[list[float]] = mapped_column(JSON)
    value: Mapped[float | None] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16))  # complete, pruned, stopped, failed
    reason: Mapped[str] = mapped_column(Text)
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WeightsFile(Base):
    """A Keras weights file for a backbone, uploaded for machines that cannot download them."""

    __tablename__ = "weights_files"
    __table_args__ = (_newest_first("weights_files"),)

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    backbone: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# A console session's nonce (service/security.py: token_urlsafe(16), 22 characters).
NONCE_LENGTH = 64


class RevokedSession(Base):
    """A console session ended by logout before it expired: its cookie, signed and unexpired,
    is refused until `expires_at`, after which it would be refused anyway and the row goes."""

    __tablename__ = "revoked_sessions"

    nonce: Mapped[str] = mapped_column(String(NONCE_LENGTH), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class WeightsSource(NamedTuple):
    table: type[TrainedModel] | type[WeightsFile]
    column: Any  # the column holding the weights file's bytes
    kind: str  # what messages call it


# Where the backbone weights of a spec's "model:<id>" and "file:<id>" are stored.
WEIGHTS_SOURCES = {
    "model": WeightsSource(TrainedModel, TrainedModel.backbone_weights, "model"),
    "file": WeightsSource(WeightsFile, WeightsFile.data, "weights file"),
}


class _CapturePolicyColumns:
    """What a capture policy says: the share of predicted images kept, and for how long."""

    rate: Mapped[float] = mapped_column(Float)
    max_images: Mapped[int] = mapped_column(Integer)
    days: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class ModelCapturePolicy(_CapturePolicyColumns, Base):
    """Capture asked for one model version."""

    __tablename__ = "model_capture_policies"

    model_id: Mapped[str] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )


class AliasCapturePolicy(_CapturePolicyColumns, Base):
    """Capture asked for a registry alias: it follows the alias to whichever version it points
    to, and ends with the alias."""

    __tablename__ = "alias_capture_policies"
    __table_args__ = (
        ForeignKeyConstraint(
            ["name", "alias"],
            ["model_aliases.name", "model_aliases.alias"],
            name="fk_alias_capture_policies_name_model_aliases",
            ondelete="CASCADE",
        ),
    )

    name: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)


class Capture(Base):
    """An image /predict received, kept under a capture policy with what the model answered."""

    __tablename__ = "captures"
    __table_args__ = (
        _newest_first("captures"),
        Index("ix_captures_model_id_created_at", "model_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    request_id: Mapped[str | None] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(String(255))
    label: Mapped[str] = mapped_column(String(NAME_LENGTH))  # the model's top label
    score: Mapped[float] = mapped_column(Float)  # its probability
    margin: Mapped[float] = mapped_column(Float)  # top probability − the second's
    ood_score: Mapped[float | None] = mapped_column(Float)
    unknown: Mapped[bool | None] = mapped_column(Boolean)
    scores: Mapped[list[float]] = mapped_column(JSON)  # every class's, in `classes` order
    media_type: Mapped[str] = mapped_column(String(32))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Last: SQLite stores a row's columns in order, and reading one after a BLOB walks its
    # overflow pages; lists read every column but this one.
    image: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)


# A review item as a mark names it: "capture:<capture id>" or "image:<pool image id>".
REVIEW_ITEM_LENGTH = 48


class ReviewMark(Base):
    """An image a person marked unknown on a model's review page (it fits none of the model's
    classes): out of the model's queue, listed with the unknowns."""

    __tablename__ = "review_marks"

    model_id: Mapped[str] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    item: Mapped[str] = mapped_column(String(REVIEW_ITEM_LENGTH), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
