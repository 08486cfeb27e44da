"""Comparisons as the API and the console ask for them: checked, recorded, queued, read."""

from __future__ import annotations

from sqlalchemy.orm import Session

from service.comparisons.kind import COMPARE
from service.comparisons.schemas import ComparisonCreate, ComparisonRead
from service.comparisons.spec import ComparisonSpec
from service.datasets import versions
from service.jobs import records
from service.problems import Invalid, NotFound
from service.storage.pages import Page, PageOf
from service.storage.tables import Comparison, Dataset, Job, TrainedModel, new_id


def request_comparison(session: Session, request: ComparisonCreate) -> Comparison:
    """Check the request, store its record and queue its job: Invalid for one model named
    twice or a model that knows none of the images' classes, NotFound for a model, the
    dataset or its version."""
    a, b = request.models
    if a == b:
        raise Invalid(
            "name two different models: a model compared with itself differs in nothing",
            field=("models",),
        )
    dataset = session.get(Dataset, request.dataset_id)
    if dataset is None:
        raise NotFound(f"no dataset {request.dataset_id!r}", field=("dataset_id",))
    version = versions.get_version(session, dataset, request.dataset_version)
    classes = {entry["name"] for entry in version.classes}
    for position, model_id in enumerate(request.models):
        model = session.get(TrainedModel, model_id)
        if model is None:
            raise NotFound(f"no model {model_id!r}", field=("models", position))
        if (model.thresholds is not None) != dataset.multi_label:
            kinds = ("single-label", "multi-label")
            raise Invalid(
                f"model {model_id} is {kinds[model.thresholds is not None]} and dataset "
                f"{dataset.id} {kinds[dataset.multi_label]}: a comparison scores answers of "
                "the dataset's kind",
                field=("models", position),
            )
        if not classes & set(model.classes):
            raise Invalid(
                f"model {model_id} knows none of the classes of dataset {dataset.id} "
                f"version {version.number} ({', '.join(sorted(classes))})",
                field=("models", position),
            )
    record = Comparison(
        id=new_id("c"),
        model_a_id=a,
        model_b_id=b,
        dataset_id=dataset.id,
        dataset_version=version.number,
    )
    spec = ComparisonSpec(
        comparison_id=record.id,
        model_ids=[a, b],
        dataset_id=dataset.id,
        dataset_version=version.number,
    )
    # The job holds the dataset; both models are held through its spec (`model_ids`).
    return records.queue_for(record, session, COMPARE.name, f"compare-{a}-{b}", spec)


def list_comparisons(session: Session, page: Page) -> PageOf[tuple[Comparison, Job | None]]:
    """A page of comparisons, newest first, each with its job."""
    return records.page_with_jobs(session, Comparison, page)


def get_comparison(session: Session, comparison_id: str) -> tuple[Comparison, Job | None]:
    return records.get_with_job(session, Comparison, comparison_id, "comparison")


def comparison_read(record: Comparison, job: Job | None) -> ComparisonRead:
    """The record as GET /comparisons/{id} answers it: its job's state, its figures once done."""
    status, error = records.record_status(job)
    figures = record.result or {}
    return ComparisonRead.model_validate(
        {
            "id": record.id,
            "status": status,
            "error": error,
            "job_id": record.job_id,
            "model_ids": [record.model_a_id, record.model_b_id],
            "dataset_id": record.dataset_id,
            "dataset_version": record.dataset_version,
            **{field: figures.get(field) for field in FIGURES},
            "created_at": record.created_at,
            "finished_at": job.finished_at if job is not None else None,
        }
    )


# What the job stores in `result`, each a field of ComparisonRead.
FIGURES = (
    "images",
    "models",
    "difference",
    "mcnemar_p",
    "b_is_better",
    "verdict",
    "per_class",
    "disagreements",
    "disagreements_total",
)
