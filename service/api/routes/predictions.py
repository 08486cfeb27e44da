"""Batch prediction over HTTP: a zip of images or a stored dataset, classified by the worker
(service/predictions/batch.py), results downloaded as JSON Lines or CSV."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile, status

from service.api.deps import SessionDep, SettingsDep
from service.api.pagination import LINK_HEADER, PageDep, link_next
from service.datasets.service import upload_limits
from service.models import registry
from service.predictions import batch as predictions
from service.predictions.batch import BatchRequest, ResultFormat
from service.predictions.schemas import BatchPredictionRead
from service.storage.tables import ID_LENGTH, MAX_INTEGER, NAME_LENGTH, BatchPrediction, Job
from service.training.spec import WEBHOOK_DESCRIPTION, WebhookUrl
from service.webhook_addresses import check_submitted

router = APIRouter(prefix="/predictions", tags=["predict"])

NOT_FOUND = {404: {"description": "Unknown batch prediction"}}


def batch_read(record: BatchPrediction, job: Job | None) -> BatchPredictionRead:
    state, error = predictions.batch_status(job)
    done = state == "succeeded"
    base = f"/predictions/{record.id}/results?format="
    rate = record.images / record.seconds if record.images and record.seconds else None
    return BatchPredictionRead(
        id=record.id,
        status=state,
        error=error,
        job_id=record.job_id,
        model_id=record.model_id,
        model=record.model_ref,
        source="dataset" if record.filename is None else "zip",
        filename=record.filename,
        dataset_id=record.dataset_id,
        top_k=record.top_k,
        explain=record.explain,
        images=record.images,
        classified=record.classified,
        bad=record.bad or [],
        seconds=record.seconds,
        images_per_second=round(rate, 2) if rate else None,
        results={kind: base + kind for kind in predictions.MEDIA_TYPES} if done else None,
        created_at=record.created_at,
        finished_at=job.finished_at if job is not None else None,
    )


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BatchPredictionRead,
    summary="Classify a zip of images or a stored dataset (queued; the worker classifies)",
    description="Multipart form. Name the model as `/predict` does: `model_id`, or `name` "
    "(its latest version), `name` + `version`, or `name` + `alias`; the version it names now "
    "is the one used, even if an alias moves before the job runs. Send the images one way: "
    "a zip in `file` (any folders; every file is tried, and those that are not readable "
    "images are listed in `bad`, not fatal) or the `dataset_id` of a stored dataset (each "
    "result then carries the image's id and label). Progress: `GET /jobs/{job_id}/events`.",
    responses={
        400: {"description": "`file` is not a zip, is unsafe, or holds no files"},
        404: {"description": "Unknown model, version, alias or dataset; `detail` names it"},
        413: {"description": "Over the upload size limit (MAX_DATASET_BYTES)"},
        422: {
            "description": "A field is invalid, the model is named two ways, or both or "
            "neither of `file` and `dataset_id` are given"
        },
    },
)
def create_batch(
    session: SessionDep,
    settings: SettingsDep,
    model_id: Annotated[str | None, Form(max_length=ID_LENGTH)] = None,
    name: Annotated[str | None, Form(max_length=NAME_LENGTH, description="A named model")] = None,
    version: Annotated[int | None, Form(ge=1, le=MAX_INTEGER)] = None,
    alias: Annotated[str | None, Form(max_length=64)] = None,
    top_k: Annotated[int, Form(ge=1, le=1000, description="Labels per image, best first")] = 5,
    explain: Annotated[
        bool, Form(description="Add each returned label's class activation map (low-res)")
    ] = False,
    dataset_id: Annotated[str | None, Form(max_length=ID_LENGTH)] = None,
    file: Annotated[UploadFile | None, File(description="A .zip of images")] = None,
    webhook_url: Annotated[WebhookUrl | None, Form(description=WEBHOOK_DESCRIPTION)] = None,
) -> BatchPredictionRead:
    check_submitted(webhook_url, settings.webhook_allowed_networks)
    request = BatchRequest(
        model=registry.reference(model_id=model_id, name=name, version=version, alias=alias),
        top_k=top_k,
        explain=explain,
        dataset_id=dataset_id,
        archive=file.file.read() if file is not None else None,
        filename=(file.filename or "images.zip") if file is not None else None,
        webhook_url=str(webhook_url) if webhook_url is not None else None,
    )
    record = predictions.request_batch(session, request, upload_limits(settings))
    return batch_read(*predictions.get_batch(session, record.id))


@router.get(
    "",
    response_model=list[BatchPredictionRead],
    summary="Batch predictions, newest first, a page at a time",
    responses={200: {"headers": LINK_HEADER, "description": "A page of batch predictions"}},
)
def list_batches(
    session: SessionDep, request: Request, response: Response, page: PageDep
) -> list[BatchPredictionRead]:
    found = predictions.list_batches(session, page)
    return [batch_read(*row) for row in link_next(found, page.limit, request, response)]


@router.get("/{prediction_id}", response_model=BatchPredictionRead, responses=NOT_FOUND)
def read_batch(session: SessionDep, prediction_id: str) -> BatchPredictionRead:
    return batch_read(*predictions.get_batch(session, prediction_id))


@router.get(
    "/{prediction_id}/results",
    response_class=Response,
    summary="The results: JSON Lines (one object per image) or CSV (one row per image)",
    description="JSON Lines: `{file, top: [{label, score}], heatmaps?}` per image in the "
    "zip's path order or the dataset's upload order (with `image_id` and the true `label` "
    "for a dataset), `{file, error}` for one that could not be classified. CSV: columns "
    "file, image_id, label, predicted_1, score_1, … predicted_k, score_k, error.",
    responses={
        200: {
            "content": {"application/x-ndjson": {}, "text/csv": {}},
            "description": "The results file",
        },
        404: {"description": "Unknown batch prediction, or it failed or was cancelled"},
        409: {"description": "The job is still queued or running"},
    },
)
def download_results(
    session: SessionDep,
    prediction_id: str,
    format: Annotated[ResultFormat, Query(description="jsonl or csv")] = "jsonl",
) -> Response:
    data = predictions.results(session, prediction_id, format)
    return Response(
        data,
        media_type=predictions.MEDIA_TYPES[format],
        headers={
            "Content-Disposition": f'attachment; filename="{prediction_id}.{format}"',
        },
    )


@router.delete(
    "/{prediction_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete a batch prediction and its results; a queued or running job is cancelled",
    responses=NOT_FOUND,
)
def delete_batch(session: SessionDep, prediction_id: str) -> Response:
    predictions.delete_batch(session, prediction_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
