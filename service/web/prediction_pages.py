"""The console's batch prediction pages."""

from __future__ import annotations

from typing import Annotated

from fastapi import Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, Response

from service.api.deps import SessionDep, SettingsDep
from service.datasets import service as datasets
from service.models import registry
from service.models import service as models
from service.predictions import batch as predictions
from service.problems import Problem
from service.storage.pages import Page
from service.storage.tables import ID_LENGTH
from service.web.common import (
    console_routers,
    failed,
)
from service.web.render import page

pages, writes = console_routers()

# -- batch prediction ---------------------------------------------------------------------------


@pages.get("/predictions", response_class=HTMLResponse)
def batch_list(
    request: Request,
    session: SessionDep,
    cursor: str | None = None,
    model_id: Annotated[str | None, Query(max_length=ID_LENGTH)] = None,
) -> HTMLResponse:
    """The batch predictions, newest first, and the form that asks for one."""
    return page(
        request,
        "predictions.html",
        page_of=predictions.list_batches(session, Page(limit=25, cursor=cursor)),
        models=models.list_models(session, Page(limit=100)).rows,
        datasets=datasets.list_datasets(session, Page(limit=100)).rows,
        chosen=model_id,
        status_of=predictions.batch_status,
    )


@writes.post("/predictions", response_class=HTMLResponse)
def batch_create(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    model_id: Annotated[str, Form(max_length=ID_LENGTH)],
    top_k: Annotated[int, Form(ge=1, le=1000)] = 5,
    explain: Annotated[bool, Form()] = False,
    dataset_id: Annotated[str, Form(max_length=ID_LENGTH)] = "",
    file: UploadFile | None = None,
) -> Response:
    """Queue a batch prediction as POST /predictions does, and follow its job."""
    upload = file if file is not None and file.filename else None  # no file chosen: ""
    try:
        asked = predictions.BatchRequest(
            model=registry.reference(model_id=model_id or None),
            top_k=top_k,
            explain=explain,
            dataset_id=dataset_id or None,
            archive=upload.file.read() if upload is not None else None,
            filename=upload.filename if upload is not None else None,
        )
        record = predictions.request_batch(session, asked, datasets.upload_limits(settings))
    except Problem as problem:
        return failed(request, problem)
    return Response(status_code=201, headers={"X-Location": f"/console/jobs/{record.job_id}"})
