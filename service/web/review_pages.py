"""The console's Review page of a model: its review queue as a grid labelled from the
keyboard, the unknowns apart, the labels saved as one edit of its dataset, and "Retrain with
these" once enough are in. Over service.review's and service.datasets' functions, as the
JSON routes are."""

from __future__ import annotations

from typing import Annotated

from fastapi import Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from service.api.deps import ServingDep, SessionDep, SettingsDep
from service.datasets import edits, pool
from service.datasets import service as datasets
from service.datasets.label_files import split_labels
from service.datasets.spec import DatasetEdit, ImageRef, LabelImage
from service.models import service as models
from service.problems import Invalid, Problem
from service.review import service as reviews
from service.review.schemas import MAX_REVIEW_LIMIT
from service.web.common import console_routers, failed
from service.web.render import page

pages, writes = console_routers()

# Images a page of the queue shows: two pages of right suggestions are 100 labels, each
# page one action ("Accept every suggestion and save").
SHOWN = 50
# Labels since the model's version before the page offers to retrain with them.
RETRAIN_AT = 10


@pages.get("/models/{model_id}/review", response_class=HTMLResponse)
def review_page(
    request: Request,
    session: SessionDep,
    serving: ServingDep,
    model_id: str,
    limit: Annotated[int, Query(ge=1, le=MAX_REVIEW_LIMIT)] = SHOWN,
) -> HTMLResponse:
    """The queue (GET /models/{id}/review) as a grid, and the pool's upload form."""
    model = models.get_model(session, model_id)
    queue = reviews.review_queue(serving, model_id, limit)
    return page(
        request,
        "review.html",
        model=model,
        queue=queue,
        retrain_at=RETRAIN_AT,
        pool_size=pool.pool_size(session, queue.dataset_id),
    )


@writes.post("/models/{model_id}/review", response_class=HTMLResponse)
def review_save(
    request: Request,
    session: SessionDep,
    model_id: str,
    item: Annotated[list[str], Form(max_length=MAX_REVIEW_LIMIT * 2)] = [],  # noqa: B006
    label: Annotated[list[str], Form(max_length=MAX_REVIEW_LIMIT * 2)] = [],  # noqa: B006
    unknown: Annotated[list[str], Form(max_length=MAX_REVIEW_LIMIT * 2)] = [],  # noqa: B006
) -> Response:
    """Save the page's decisions: labels as one edit of the model's dataset (the `label`
    entries of POST /datasets/{id}/edits), unknowns as marks; then show the next page."""
    try:
        if len(item) != len(label):
            raise Invalid("each label names one image", field=("label",))
        model, dataset_id = reviews.reviewed_model(session, model_id)
        labels = [
            _labelled(key, name, model.thresholds is not None)
            for key, name in zip(item, label, strict=True)
        ]
        marks = [_ref(key) for key in unknown]
        if not labels and not marks:
            raise Invalid("label or mark at least one image before saving", field=("label",))
        with session.begin_nested():  # the labels and the marks, or neither
            if labels:
                message = f"labelled on the review page of {model.name} v{model.version}"
                edit = DatasetEdit(label=labels, message=message)
                edits.edit_dataset(session, dataset_id, edit)
            if marks:
                reviews.mark_unknown(session, model_id, marks)
    except (Problem, ValidationError) as error:
        return failed(request, error)
    return Response(status_code=204, headers={"HX-Redirect": f"/console/models/{model_id}/review"})


def _labelled(key: str, label: str, multi_label: bool) -> LabelImage:
    """An image as the page labels it: a class, or a multi-label model's set, joined by ";"
    as manifests keep it ("": none of the labels)."""
    chosen = {"labels": split_labels(label)} if multi_label else {"label": label}
    return LabelImage(**_ref(key).model_dump(exclude_none=True), **chosen)


def _ref(key: str) -> ImageRef:
    """An image as the page names it: "capture:<id>" or "image:<id>"."""
    ref = ImageRef.from_key(key)
    if ref is None:
        raise Invalid(f"{key!r} names no image of the review", field=("item",))
    return ref


@writes.post("/models/{model_id}/review/pool", response_class=HTMLResponse)
def pool_upload(
    request: Request, session: SessionDep, settings: SettingsDep, model_id: str, file: UploadFile
) -> Response:
    """Add a zip to the pool of the model's dataset (as POST /datasets/{id}/pool), then
    reload the Review page, which now offers its images."""
    try:
        _, dataset_id = reviews.reviewed_model(session, model_id)
        pool.add_to_pool(
            session,
            dataset_id,
            upload=file.file,
            filename=file.filename,
            limits=datasets.upload_limits(settings),
        )
    except Problem as problem:
        return failed(request, problem)
    return Response(status_code=201, headers={"X-Location": f"/console/models/{model_id}/review"})
