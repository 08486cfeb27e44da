"""The job lifecycle, in one place: what a job is and may become.

    queued → running → succeeded | failed | cancelled

Jobs come in four kinds on one queue: "train" (the spec is a JobSpec; success stores a
model), "advice" (the spec is an AdviceSpec; success stores the advice's result), "export"
(the spec is an ExportSpec; success stores the converted file in its export record) and
"predict" (the spec is a BatchPredictionSpec; success stores a batch's results). One
queue, so all get the same leases, retries, cancelling and events, and a worker's
accelerator serves them in the order they were asked for.

The API and the worker both call this module and neither re-implements it:
- the status enum and the transitions (enqueue, cancel; claim, heartbeat, release, end,
  complete), each one transaction; every write after a claim is fenced by the lease owner,
  so a worker whose lease was taken over can change nothing;
- the checks that a spec's references exist (dataset, weights source, class names), raising
  the domain's problems (service/problems.py): the API answers them 404/409/422, the worker
  fails the job with the same message;
- the "in use" rule: what a queued or running job needs cannot be deleted;
- reading stored specs: leniently for display, strictly where a job is about to run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy import Select, func, select, update
from sqlalchemy.orm import Session, object_session

from service import webhooks
from service.problems import Conflict, Invalid, NotFound, Problem
from service.spec import AdviceSpec, BatchPredictionSpec, ExportSpec, ImportSpec, JobSpec
from service.storage.db import Database
from service.storage.pages import Page, PageOf, fetch_page
from service.storage.tables import (
    WEIGHTS_SOURCES,
    Advice,
    BatchPrediction,
    Dataset,
    Job,
    ModelExport,
    ModelLayer,
    TrainedModel,
    WeightsFile,
    new_id,
    utcnow,
)


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


SpecT = TypeVar("SpecT", JobSpec, AdviceSpec, ExportSpec, BatchPredictionSpec, ImportSpec)


class JobKind(StrEnum):
    TRAIN = "train"
    ADVICE = "advice"
    EXPORT = "export"
    PREDICT = "predict"
    IMPORT = "import"  # a server-side directory into a dataset (service/imports.py)


ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


# -- reading stored specs -----------------------------------------------------------------


def runnable_spec(
    stored: dict[str, Any],
    kind: type[SpecT] = JobSpec,  # type: ignore[assignment]
) -> SpecT:
    """The stored spec, validated as a new request would be; Invalid saying what no longer
    validates when the service changed since the job was queued."""
    try:
        return kind.model_validate(stored)
    except ValidationError as error:
        raise Invalid(f"the stored spec no longer validates: {what_fails(error)}") from None


def what_fails(error: ValidationError) -> str:
    """A spec's validation errors in one line a person can act on: `field: message; …`."""
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or 'spec'}: {item['msg']}"
        for item in error.errors(include_url=False)
    )


# -- reference checks ---------------------------------------------------------------------


def check_references(session: Session, spec: JobSpec | AdviceSpec) -> Dataset:
    """The dataset the job uses, after checking what the spec refers to exists and fits:
    the dataset, the stored weights source, and the class names of `class_weight`."""
    dataset = session.get(Dataset, spec.dataset_id)
    if dataset is None:
        raise NotFound(f"no dataset {spec.dataset_id!r}", field=("dataset_id",))
    weights_source(session, spec)
    if isinstance(spec, AdviceSpec):
        return dataset
    class_weight = spec.training.class_weight
    if isinstance(class_weight, dict):
        names = {entry["name"] for entry in dataset.classes}
        for name in class_weight:
            if name not in names:
                raise Invalid(
                    f"{name!r} is not a class of dataset {dataset.id}: {sorted(names)}",
                    field=("training", "class_weight", name),
                )
    return dataset


def weights_source(
    session: Session, spec: JobSpec | AdviceSpec, *options: Any
) -> TrainedModel | WeightsFile | None:
    """The stored model or weights file of "model:<id>" / "file:<id>" weights; None for
    "imagenet" and random weights. It must exist and be for the spec's backbone."""
    stored = spec.backbone.stored_weights
    if stored is None:
        return None
    where, reference = stored
    table, _, kind = WEIGHTS_SOURCES[where]
    source = session.get(table, reference, options=options)
    if source is None:
        raise NotFound(f"no {kind} {reference!r}", field=("backbone", "weights"))
    if source.backbone != spec.backbone.name:
        raise Invalid(
            f"{kind} {reference} is for {source.backbone}, not {spec.backbone.name}",
            field=("backbone", "weights"),
        )
    return source


def check_freeze_points(spec: JobSpec) -> None:
    """Every `trainable_from` names a layer the backbone has. Builds the backbone (TensorFlow):
    the API runs it off its event loop; the worker meets the same check in `apply_freeze`."""
    partial = [stage for stage in spec.stages if stage.freeze.trainable_from is not None]
    if not partial:
        return
    from service.ml.build import backbone_layer_names, trainable_from_index

    names = backbone_layer_names(spec.backbone.name, spec.input_size)
    for stage in partial:
        where = ("freeze",) if stage.number == 1 else ("fine_tune", stage.number - 2, "freeze")
        assert stage.freeze.trainable_from is not None
        try:
            trainable_from_index(names, stage.freeze.trainable_from)
        except ValueError as error:
            raise Invalid(str(error), field=(*where, "trainable_from")) from None


# -- the "in use" rule --------------------------------------------------------------------

Resource = Dataset | WeightsFile | TrainedModel


def _needs(resource: Resource, dataset_id: str | None, spec: dict[str, Any]) -> bool:
    if isinstance(resource, Dataset):
        return dataset_id == resource.id
    prefix = "model" if isinstance(resource, TrainedModel) else "file"
    if prefix == "model" and spec.get("model_id") == resource.id:
        return True  # an export job converts it, a batch prediction job classifies with it
    backbone = spec.get("backbone")
    weights = backbone.get("weights") if isinstance(backbone, dict) else None
    return weights == f"{prefix}:{resource.id}"


def ensure_unused(session: Session, resource: Resource) -> None:
    """Conflict naming the jobs when a queued or running job needs `resource`: deleting it
    would fail that job later."""
    active = session.execute(
        select(Job.id, Job.dataset_id, Job.spec)
        .where(Job.status.in_(ACTIVE))
        .order_by(Job.created_at, Job.id)
    )
    users = [job_id for job_id, dataset_id, spec in active if _needs(resource, dataset_id, spec)]
    if users:
        kind = {Dataset: "dataset", WeightsFile: "weights file", TrainedModel: "model"}
        raise Conflict(
            f"{kind[type(resource)]} {resource.id} is used by queued or running "
            f"job(s) {', '.join(users)}"
        )


# -- what the API and the console ask ---------------------------------------------------------


def submit(session: Session, spec: JobSpec) -> Job:
    """Check what the spec refers to, then queue it. Builds the backbone when a stage names a
    freeze point (TensorFlow): call it off any event loop."""
    dataset = check_references(session, spec)
    check_freeze_points(spec)
    return enqueue(session, spec, dataset)


def preview(session: Session, spec: JobSpec) -> list[dict[str, Any]]:
    """Every stage's layer table, as the trained model's /layers would show it, with totals;
    nothing is trained or stored."""
    dataset = check_references(session, spec)
    check_freeze_points(spec)
    from service.ml.build import preview_layers

    return [
        {
            "stage": number,
            "trainable_params": sum(row["trainable_params"] for row in rows),
            "non_trainable_params": sum(row["non_trainable_params"] for row in rows),
            "layers": rows,
        }
        for number, rows in enumerate(preview_layers(spec, len(dataset.classes)), start=1)
    ]


def _with_model_ids(query: Select[Any]) -> Select[Any]:
    return query.add_columns(TrainedModel.id).outerjoin(TrainedModel, TrainedModel.job_id == Job.id)


def list_jobs(
    session: Session,
    page: Page,
    status: JobStatus | None = None,
    kind: JobKind = JobKind.TRAIN,
) -> PageOf[tuple[Job, str | None]]:
    """A page of jobs of one kind, newest first, each with the id of the model it produced."""
    query = _with_model_ids(select(Job).where(Job.kind == kind))
    if status is not None:
        query = query.where(Job.status == status)
    return fetch_page(session, query, Job, page, scalars=False, key=lambda row: row[0])


def get_job(session: Session, job_id: str) -> tuple[Job, str | None]:
    """The job and the id of the model it produced."""
    row = session.execute(_with_model_ids(select(Job).where(Job.id == job_id))).first()
    if row is None:
        raise NotFound(f"no job {job_id!r}")
    return row[0], row[1]


def status_of(db: Database, job_id: str) -> str:
    """The job's status as committed now ("" for a job that is gone)."""
    with db.session() as session:
        return session.scalar(select(Job.status).where(Job.id == job_id)) or ""


# -- transitions the API makes --------------------------------------------------------------


def enqueue(session: Session, spec: JobSpec | AdviceSpec, dataset: Dataset) -> Job:
    """A new queued training or advice job for a spec whose references were checked."""
    if isinstance(spec, AdviceSpec):
        name = f"advice-{dataset.name}-{spec.backbone.name}"
        return _queue(session, JobKind.ADVICE, name, spec, dataset.id, gpus=spec.resources.gpus)
    name = spec.name or f"{dataset.name}-{spec.backbone.name}"
    return _queue(session, JobKind.TRAIN, name, spec, dataset.id, gpus=spec.resources.gpus)


def enqueue_export(session: Session, spec: ExportSpec, model: TrainedModel) -> Job:
    """A new queued export job for a model that exists. It holds the model's dataset like a
    training job does: the parity check reads its validation images, so the dataset cannot
    be deleted while the job waits."""
    name = f"export-{model.name}-{spec.format}"[:200]
    return _queue(session, JobKind.EXPORT, name, spec, model.dataset_id)


def enqueue_prediction(session: Session, spec: BatchPredictionSpec, model: TrainedModel) -> Job:
    """A new queued batch prediction job for a model that exists. It holds the dataset it
    classifies, if any, like a training job does; the model is held through its spec."""
    name = f"predict-{model.name}-v{model.version}"[:200]
    return _queue(session, JobKind.PREDICT, name, spec, spec.dataset_id)


# -- server-side import (service/imports.py) ----------------------------------------------


def enqueue_import(session: Session, spec: ImportSpec, folder: str) -> Job:
    """A new queued import job. Growing a dataset, it holds it like a training job does (no
    append, delete or other import under it); creating one, its `dataset_id` is set when
    the dataset is stored, in the transaction that marks the job succeeded."""
    return _queue(session, JobKind.IMPORT, f"import-{folder}"[:200], spec, spec.dataset_id)


def complete_import(db: Database, claim: Claim, store: Callable[[Session], None]) -> bool:
    """Store the imported images and the job's success in one transaction; False (and
    nothing stored) when the lease is no longer this worker's."""
    return _complete(db, claim, store)


def _queue(
    session: Session,
    kind: JobKind,
    name: str,
    spec: JobSpec | AdviceSpec | ExportSpec | BatchPredictionSpec | ImportSpec,
    dataset_id: str | None,
    *,
    gpus: int = 0,
) -> Job:
    """A new queued job; `gpus`: what a worker needs to claim it (resources.gpus)."""
    job = Job(
        id=new_id("j"),
        kind=kind,
        name=name,
        status=JobStatus.QUEUED,
        # The URL is the job's column, not part of what to run (service/webhooks.py).
        spec=spec.model_dump(mode="json", exclude={"webhook_url"}),
        dataset_id=dataset_id,
        history=[],
        attempts=0,
        cancel_requested=False,
        gpus=gpus,
        webhook_url=str(spec.webhook_url) if spec.webhook_url is not None else None,
    )
    session.add(job)
    session.flush()
    return job


def cancel(session: Session, job: Job) -> None:
    """A queued job is cancelled at once; a running one is asked to stop at its next step."""
    if job.status in FINISHED:
        raise Conflict(f"job {job.id} has already {job.status}")
    if job.status == JobStatus.QUEUED:
        _finish(job, JobStatus.CANCELLED, utcnow(), error=None)
    else:
        job.cancel_requested = True
    session.flush()


# -- transitions the worker makes -----------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    job_id: str
    worker_id: str
    attempt: int
    spec: dict[str, Any]
    name: str = ""
    kind: str = JobKind.TRAIN
    created_at: datetime | None = None  # when it was queued: its wait, for the metrics


@dataclass(frozen=True)
class Heartbeat:
    lease_held: bool
    cancel_requested: bool


def claim_next_job(
    db: Database,
    *,
    worker_id: str,
    lease_seconds: float,
    max_attempts: int,
    gpus: int = 0,
    now: datetime | None = None,
) -> Claim | None:
    """Take the oldest queued job, or a running one whose lease ran out, in one transaction
    (SQLite: BEGIN IMMEDIATE; PostgreSQL: FOR UPDATE SKIP LOCKED).

    Only jobs asking for at most `gpus` GPUs (the worker's own count) are taken; a dead
    job that is only to be ended (cancelled, or out of attempts) is ended by any worker.
    """
    now = now or utcnow()
    with db.session(write=True) as session:
        while True:
            job = _next_claimable(session, db, now, gpus=gpus, max_attempts=max_attempts)
            if job is None:
                return None
            if job.status == JobStatus.RUNNING and job.cancel_requested:
                _finish(job, JobStatus.CANCELLED, now, error=None)
                continue
            if job.status == JobStatus.RUNNING and job.attempts >= max_attempts:
                _finish(
                    job,
                    JobStatus.FAILED,
                    now,
                    error=f"its worker stopped renewing the lease {job.attempts} times "
                    f"(max_attempts={max_attempts}); last holder {job.lease_owner}",
                )
                continue
            job.status = JobStatus.RUNNING
            job.attempts += 1
            job.lease_owner = worker_id
            job.lease_expires_at = now + timedelta(seconds=lease_seconds)
            job.started_at = now
            job.progress = None
            job.history = []
            job.error = None
            return Claim(
                job_id=job.id,
                worker_id=worker_id,
                attempt=job.attempts,
                spec=job.spec,
                name=job.name,
                kind=job.kind,
                created_at=job.created_at,
            )


def _next_claimable(
    session: Session, db: Database, now: datetime, *, gpus: int, max_attempts: int
) -> Job | None:
    expired = (Job.status == JobStatus.RUNNING) & (Job.lease_expires_at < now)
    # What claim_next_job only ends, never runs: no devices needed for that.
    to_end = expired & (Job.cancel_requested | (Job.attempts >= max_attempts))
    query = (
        select(Job)
        .where(((Job.status == JobStatus.QUEUED) | expired) & ((Job.gpus <= gpus) | to_end))
        .order_by(Job.created_at, Job.id)
        .limit(1)
    )
    if not db.is_sqlite:
        query = query.with_for_update(skip_locked=True)
    return session.scalars(query).first()


def _finish(job: Job, status: JobStatus, now: datetime, *, error: str | None) -> None:
    job.status = status
    job.error = error
    job.finished_at = now
    job.lease_owner = None
    job.lease_expires_at = None
    session = object_session(job)
    assert session is not None  # every caller loaded the job in its transaction
    webhooks.announce(session, job)


def _owned(claim: Claim) -> Any:
    return (
        (Job.id == claim.job_id)
        & (Job.lease_owner == claim.worker_id)
        & (Job.status == JobStatus.RUNNING)
    )


def heartbeat(
    db: Database,
    claim: Claim,
    *,
    lease_seconds: float,
    progress: dict[str, Any] | None = None,
    history_row: dict[str, Any] | None = None,
) -> Heartbeat:
    """Renew the lease, record progress, and learn whether the job was cancelled."""
    now = utcnow()
    with db.session(write=True) as session:
        job = session.scalars(select(Job).where(_owned(claim))).first()
        if job is None:
            return Heartbeat(lease_held=False, cancel_requested=False)
        job.lease_expires_at = now + timedelta(seconds=lease_seconds)
        if progress is not None:
            job.progress = progress
        if history_row is not None:
            job.history = [*job.history, history_row]
        return Heartbeat(lease_held=True, cancel_requested=job.cancel_requested)


def restore_history(db: Database, claim: Claim, history: list[dict[str, Any]]) -> bool:
    """Set the history of a job resumed from a checkpoint to the checkpoint's epochs: the
    attempt before may have recorded one more that is now done again, and each epoch is
    listed once. False if the lease is no longer ours."""
    with db.session(write=True) as session:
        job = session.scalars(select(Job).where(_owned(claim))).first()
        if job is None:
            return False
        job.history = list(history)
        return True


def end_job(db: Database, claim: Claim, *, status: JobStatus, error: str | None = None) -> bool:
    """Mark a claimed job failed or cancelled; False if the lease was no longer ours."""
    with db.session(write=True) as session:
        job = session.scalars(select(Job).where(_owned(claim))).first()
        if job is None:
            return False
        _finish(job, status, utcnow(), error=error)
        return True


def release_job(db: Database, claim: Claim) -> bool:
    """Give a job back to the queue at once (the worker is shutting down cleanly)."""
    with db.session(write=True) as session:
        result = session.execute(
            update(Job)
            .where(_owned(claim))
            .values(
                status=JobStatus.QUEUED,
                attempts=Job.attempts - 1,
                lease_owner=None,
                lease_expires_at=None,
                progress=None,
            )
        )
        return result.rowcount == 1


def _succeed(session: Session, claim: Claim) -> bool:
    """Mark the claimed job succeeded, unless its lease is no longer this worker's."""
    result = session.execute(
        update(Job)
        .where(_owned(claim))
        .values(
            status=JobStatus.SUCCEEDED,
            finished_at=utcnow(),
            lease_owner=None,
            lease_expires_at=None,
        )
    )
    return result.rowcount == 1


def _complete(db: Database, claim: Claim, store: Callable[[Session], None]) -> bool:
    with db.session(write=True) as session:
        if not _succeed(session, claim):
            return False
        store(session)
        job = session.get(Job, claim.job_id, populate_existing=True)
        assert job is not None  # _succeed just updated it
        webhooks.announce(session, job)
        return True


def _review(session: Session, dataset_id: str, label_review: dict[str, Any] | None) -> None:
    if label_review is not None:
        session.execute(
            update(Dataset).where(Dataset.id == dataset_id).values(label_review=label_review)
        )


def next_version(session: Session, name: str) -> int:
    """The version number the next model stored under `name` gets: one past the highest.

    Called in the transaction that stores the model. SQLite runs one writer at a time; on
    PostgreSQL a transaction-scoped advisory lock on the name makes two workers storing
    models of one name take turns, so they never both pick the same number.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(func.hashtext(name))))
    highest = session.scalar(
        select(func.max(TrainedModel.version)).where(TrainedModel.name == name)
    )
    return (highest or 0) + 1


def complete_job(
    db: Database,
    claim: Claim,
    *,
    model: TrainedModel,
    layers: list[dict[str, Any]],
    label_review: dict[str, Any] | None = None,
) -> bool:
    """Store the model, its layers, the dataset's label review if the job made one, and the
    job's success in one transaction.

    False (and nothing stored) when the lease is no longer this worker's.
    """

    def store(session: Session) -> None:
        model.version = next_version(session, model.name)
        session.add(model)
        session.flush()
        session.add_all(ModelLayer(model_id=model.id, **row) for row in layers)
        if model.dataset_id is not None:
            _review(session, model.dataset_id, label_review)

    return _complete(db, claim, store)


def complete_advice(
    db: Database,
    claim: Claim,
    *,
    dataset_id: str,
    result: dict[str, Any],
    label_review: dict[str, Any] | None,
) -> bool:
    """Store the advice's result, the dataset's label review and the job's success in one
    transaction; False (and nothing stored) when the lease is no longer this worker's."""

    def store(session: Session) -> None:
        session.execute(update(Advice).where(Advice.job_id == claim.job_id).values(result=result))
        _review(session, dataset_id, label_review)

    return _complete(db, claim, store)


def _export_values(session: Session, claim: Claim, **values: Any) -> None:
    session.execute(update(ModelExport).where(ModelExport.job_id == claim.job_id).values(values))


def record_export_report(db: Database, claim: Claim, report: dict[str, Any]) -> bool:
    """Store an export's report (its parity figures) while the job still runs, so that an
    export failed for missing its bar keeps the figures; False if the lease is not ours."""
    with db.session(write=True) as session:
        if session.scalars(select(Job.id).where(_owned(claim))).first() is None:
            return False
        _export_values(session, claim, report=report)
        return True


def complete_export(
    db: Database, claim: Claim, *, data: bytes, sha256: str, report: dict[str, Any]
) -> bool:
    """Store the converted file and its report, and the job's success, in one transaction;
    False (and nothing stored) when the lease is no longer this worker's."""

    def store(session: Session) -> None:
        _export_values(
            session, claim, data=data, size_bytes=len(data), sha256=sha256, report=report
        )

    return _complete(db, claim, store)


def complete_prediction(
    db: Database, claim: Claim, *, results: bytes, summary: dict[str, Any]
) -> bool:
    """Store a batch's results and counts, drop its uploaded zip (read, and never needed
    again), and mark the job succeeded, in one transaction; False (and nothing stored) when
    the lease is no longer this worker's."""

    def store(session: Session) -> None:
        session.execute(
            update(BatchPrediction)
            .where(BatchPrediction.job_id == claim.job_id)
            .values(results=results, archive=None, **summary)
        )

    return _complete(db, claim, store)


__all__ = ["Conflict", "Invalid", "NotFound", "Problem"]  # the problems jobs raise
