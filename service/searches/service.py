"""Searches as the API and the console ask for them: checked, recorded, queued, read."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.datasets.service import get_dataset
from service.jobs import records
from service.ml.multilabel import ranking_metric
from service.problems import Invalid, NotFound
from service.searches.kind import SEARCH
from service.searches.schemas import SearchRead, TrialRead
from service.searches.spec import SearchCreate, SearchSpec
from service.searches.study import range_spec
from service.searches.trials import check_freeze_depths, job_spec
from service.storage.pages import Page, PageOf, after_page
from service.storage.tables import Job, Search, SearchTrial, new_id
from service.training.service import check_references
from service.training.spec import JobSpec

TRIALS_PAGE = 100


def request_search(session: Session, request: SearchCreate) -> Search:
    """Check what the request names (the dataset and its version, the backbone's stored
    weights, freeze depths the backbone has), store the search and queue its job: NotFound
    or Invalid naming the field. Builds the backbone when the space names freeze depths
    (TensorFlow): call it off any event loop."""
    search_id = new_id("s")
    spec = SearchSpec.model_validate({**request.model_dump(), "search_id": search_id})
    base = range_spec(spec)
    version = check_references(session, base)
    multi_label = get_dataset(session, spec.dataset_id).multi_label
    if len(version.classes) < 2:
        raise Invalid(
            f"dataset {spec.dataset_id} version {version.number} has one class: a search "
            "needs two or more to score",
            field=("dataset_id",),
        )
    if spec.space.freeze_depths:
        from service.ml.build import backbone_layer_names  # TensorFlow: only for given depths

        check_freeze_depths(spec, len(backbone_layer_names(spec.backbone.name, base.input_size)))
    spec = spec.model_copy(update={"dataset_version": version.number})
    record = Search(
        id=search_id,
        dataset_id=spec.dataset_id,
        dataset_version=version.number,
        metric=ranking_metric(multi_label),
        request=request.model_copy(update={"dataset_version": version.number}).model_dump(
            mode="json"
        ),
    )
    name = f"search-{spec.backbone.name}-{spec.dataset_id}"
    return records.queue_for(record, session, SEARCH.name, name, spec)


def list_searches(session: Session, page: Page) -> PageOf[tuple[Search, Job | None]]:
    """A page of searches, newest first, each with its job."""
    return records.page_with_jobs(session, Search, page)


def get_search(session: Session, search_id: str) -> tuple[Search, Job | None]:
    return records.get_with_job(session, Search, search_id, "search")


def trials_page(
    session: Session, search_id: str, limit: int = TRIALS_PAGE, after: int | None = None
) -> tuple[list[SearchTrial], int | None]:
    """The search's trials in their order, `limit` after trial `after`: the page, and the
    `after` of the next one (None on the last)."""
    query = select(SearchTrial).where(SearchTrial.search_id == search_id)
    if after is not None:
        query = query.where(SearchTrial.number > after)
    rows = list(session.scalars(query.order_by(SearchTrial.number).limit(limit + 1)))
    return after_page(rows, limit, lambda row: row.number)


def trial_spec(session: Session, search_id: str, number: int) -> JobSpec:
    """The job spec trial `number` of the search trained ("Train this"): built as the search
    built it, from the stored request (its dataset version resolved), so the best trial's is
    `best.spec`. NotFound naming the search or the trial."""
    record, _ = get_search(session, search_id)
    trial = session.scalar(
        select(SearchTrial).where(SearchTrial.search_id == search_id, SearchTrial.number == number)
    )
    if trial is None:
        raise NotFound(f"search {search_id} has no trial {number}")
    request = SearchCreate.model_validate(record.request)
    return job_spec(request, trial.params, record.dataset_version)


def search_read(
    session: Session,
    record: Search,
    job: Job | None,
    trials: list[SearchTrial] | None = None,
) -> SearchRead:
    """The search as GET /searches/{id} answers it, with a page of its trials (the first,
    unless given): its job's state, the trials so far, the best once done."""
    status, error = records.record_status(job)
    if trials is None:
        trials, _ = trials_page(session, record.id)
    total = session.scalar(
        select(func.count()).select_from(SearchTrial).where(SearchTrial.search_id == record.id)
    )
    return SearchRead.model_validate(
        {
            "id": record.id,
            "status": status,
            "error": error,
            "job_id": record.job_id,
            "dataset_id": record.dataset_id,
            "dataset_version": record.dataset_version,
            "metric": record.metric,
            "request": record.request,
            "range_test": record.range_test,
            "trials": [TrialRead.model_validate(row, from_attributes=True) for row in trials],
            "trials_total": total or 0,
            "best": record.best,
            "trained_job_id": record.trained_job_id,
            "created_at": record.created_at,
            "finished_at": job.finished_at if job is not None else None,
        }
    )
