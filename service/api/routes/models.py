from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status

from service import jobs
from service.api.deps import ServingDep, SessionDep
from service.api.pagination import LINK_HEADER, PageDep, link_next
from service.api.routes.jobs import SPEC_ERRORS, job_read
from service.models import service as models
from service.models.schemas import (
    EvaluationRead,
    EvaluationSample,
    LabelEvaluationRead,
    LayersRead,
    ModelRead,
)
from service.schemas import JobRead
from service.storage.tables import NAME_LENGTH, TrainedModel
from service.training import service as training
from service.training.spec import RetrainRequest

router = APIRouter(prefix="/models", tags=["models"])

NOT_FOUND = {404: {"description": "Unknown model"}}


def model_read(model: TrainedModel) -> ModelRead:
    return ModelRead.model_validate(
        {
            **{name: getattr(model, name) for name in ModelRead.model_fields if name != "params"},
            "params": {
                "trainable": model.trainable_params,
                "non_trainable": model.non_trainable_params,
                "total": model.trainable_params + model.non_trainable_params,
            },
        }
    )


@router.get(
    "",
    response_model=list[ModelRead],
    summary="Trained models, newest first, a page at a time",
    responses={200: {"headers": LINK_HEADER, "description": "A page of models"}},
)
def list_models(
    session: SessionDep,
    request: Request,
    response: Response,
    page: PageDep,
    name: Annotated[
        str | None,
        Query(max_length=NAME_LENGTH, description="Only the versions of this named model"),
    ] = None,
) -> list[ModelRead]:
    found = models.list_models(session, page, name=name)
    rows = link_next(found, page.limit, request, response)
    return [model_read(model) for model in rows]


@router.get("/{model_id}", response_model=ModelRead, responses=NOT_FOUND)
def read_model(session: SessionDep, model_id: str) -> ModelRead:
    return model_read(models.get_model(session, model_id))


@router.get(
    "/{model_id}/layers",
    response_model=LayersRead,
    summary="Every layer with its trainable status as the model was trained",
    responses=NOT_FOUND,
)
def model_layers(
    session: SessionDep,
    model_id: str,
    trainable: Annotated[bool | None, Query(description="Only layers with this status")] = None,
) -> dict[str, Any]:
    return models.model_layers(session, model_id, trainable)


@router.get(
    "/{model_id}/evaluation",
    response_model=EvaluationRead,
    summary="Per-class precision, recall, F1 and the confusion matrix on the validation split",
    responses={
        404: {"description": "Unknown model, or one trained without a validation split"},
        409: {"description": "A multi-label model (GET /models/{model_id}/label-evaluation)"},
    },
)
def model_evaluation(session: SessionDep, model_id: str) -> dict[str, Any]:
    return models.model_evaluation(session, model_id)


@router.get(
    "/{model_id}/label-evaluation",
    response_model=LabelEvaluationRead,
    summary="A multi-label model's per-label report on the validation split",
    description="Per label precision, recall, F1, support, average precision, its "
    "threshold and the images behind its errors; micro and macro F1, mean average "
    "precision, the exact-match ratio, and which labels' errors come together. 409 for a "
    "single-label model (its report is GET /models/{model_id}/evaluation).",
    responses={
        404: {"description": "Unknown model, or one trained without a validation split"},
        409: {"description": "A single-label model"},
    },
)
def label_evaluation(session: SessionDep, model_id: str) -> dict[str, Any]:
    return models.label_evaluation(session, model_id)


@router.get(
    "/{model_id}/evaluation/samples",
    response_model=list[EvaluationSample],
    summary="The validation images behind the evaluation, with the model's scores for each",
    description="`label` and `predicted` together give the images of one confusion-matrix "
    "cell (row `label`, column `predicted`): exactly as many as the cell counts. 422 names "
    "`label` or `predicted` when it is not a class of the model.",
    responses={
        404: {
            "description": "Unknown model, one trained without a validation split, or one "
            "whose evaluation predates per-image samples"
        },
        409: {"description": "A multi-label model: its errors are in its label-evaluation"},
    },
)
def evaluation_samples(
    session: SessionDep,
    model_id: str,
    label: Annotated[
        str | None, Query(max_length=NAME_LENGTH, description="Only images of this true class")
    ] = None,
    predicted: Annotated[
        str | None, Query(max_length=NAME_LENGTH, description="Only images predicted as this class")
    ] = None,
) -> list[dict[str, Any]]:
    return models.evaluation_samples(session, model_id, label=label, predicted=predicted)


@router.get(
    "/{model_id}/savedmodel",
    response_class=Response,
    summary="Download the SavedModel (tar.gz); its `serve` takes raw pixels 0–255",
    responses={
        **NOT_FOUND,
        200: {"content": {"application/gzip": {}}, "description": "tar.gz of the directory"},
    },
)
def download_savedmodel(session: SessionDep, model_id: str) -> Response:
    model = models.savedmodel_archive(session, model_id)
    return Response(
        model.savedmodel,
        media_type="application/gzip",
        headers={
            "Content-Disposition": f'attachment; filename="{model.id}-savedmodel.tar.gz"',
            "ETag": f'"{model.savedmodel_sha256}"',
        },
    )


@router.delete(
    "/{model_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={
        **NOT_FOUND,
        409: {"description": "A queued or running job starts from it, or an alias points to it"},
    },
)
def delete_model(session: SessionDep, serving: ServingDep, model_id: str) -> Response:
    models.delete_model(session, model_id)
    serving.evict(model_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{model_id}/retrain",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRead,
    summary="Retrain: the model's own spec on a version of its dataset, from its weights",
    description="Queues a training job with the spec that trained the model, on "
    "`dataset_version` of its dataset (default: the latest, e.g. after labelling), named as "
    "the model so that it becomes the name's next version. With `warm_start` (the default) "
    "the backbone starts from this model's trained weights (`model:<id>`) and the classifier "
    "is trained anew, since the classes may have changed; the new model's `parent_model_id` "
    "is this one. Compare the two with POST /comparisons before moving an alias.",
    responses={
        **SPEC_ERRORS,
        404: {"description": "Unknown model, or its dataset has no such version"},
        409: {"description": "The model's job or dataset was deleted"},
    },
)
def retrain_model(session: SessionDep, model_id: str, body: RetrainRequest) -> JobRead:
    job = training.retrain(session, model_id, body)
    return job_read(*jobs.get_job(session, job.id))
