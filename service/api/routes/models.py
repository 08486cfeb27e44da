from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from sqlalchemy import delete, select
from sqlalchemy.orm import undefer

from service import jobs
from service.api.deps import ModelCacheDep, SessionDep
from service.api.pagination import LINK_HEADER, PageDep, keyset, one_page
from service.schemas import EvaluationRead, LayersRead, ModelRead
from service.storage.tables import ModelLayer, TrainedModel

router = APIRouter(prefix="/models", tags=["models"])

NOT_FOUND = {404: {"description": "Unknown model"}}


def get_model(session: SessionDep, model_id: str, *options: Any) -> TrainedModel:
    model = session.get(TrainedModel, model_id, options=options)
    if model is None:
        raise HTTPException(404, f"no model {model_id!r}")
    return model


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
    session: SessionDep, request: Request, response: Response, page: PageDep
) -> list[ModelRead]:
    models = session.scalars(keyset(select(TrainedModel), TrainedModel, page)).all()
    return [model_read(model) for model in one_page(models, page, request, response)]


@router.get("/{model_id}", response_model=ModelRead, responses=NOT_FOUND)
def read_model(session: SessionDep, model_id: str) -> ModelRead:
    return model_read(get_model(session, model_id))


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
    model = get_model(session, model_id)
    query = select(ModelLayer).where(ModelLayer.model_id == model_id).order_by(ModelLayer.index)
    if trainable is not None:
        query = query.where(ModelLayer.trainable == trainable)
    return {
        "model_id": model.id,
        "trainable_params": model.trainable_params,
        "non_trainable_params": model.non_trainable_params,
        "layers": list(session.scalars(query)),
    }


@router.get(
    "/{model_id}/evaluation",
    response_model=EvaluationRead,
    summary="Per-class precision, recall, F1 and the confusion matrix on the validation split",
    responses={404: {"description": "Unknown model, or one trained without a validation split"}},
)
def model_evaluation(session: SessionDep, model_id: str) -> dict[str, Any]:
    model = get_model(session, model_id, undefer(TrainedModel.evaluation))
    if model.evaluation is None:
        raise HTTPException(
            404, f"model {model_id} has no evaluation: it was trained with validation_split 0"
        )
    return {"model_id": model.id, **model.evaluation}


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
    model = get_model(session, model_id, undefer(TrainedModel.savedmodel))
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
    responses={**NOT_FOUND, 409: {"description": "A queued or running job starts from it"}},
)
def delete_model(session: SessionDep, cache: ModelCacheDep, model_id: str) -> Response:
    model = get_model(session, model_id)
    jobs.ensure_unused(session, model)
    session.execute(delete(ModelLayer).where(ModelLayer.model_id == model.id))
    session.delete(model)
    session.flush()
    cache.evict(model_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
