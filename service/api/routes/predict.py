from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, HTTPException, UploadFile
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from service.api.deps import DatabaseDep, ModelCacheDep, SessionDep, SettingsDep
from service.ml.images import UndecodableImage, to_pixels
from service.ml.serving import LoadedModel, ModelCorrupt, ModelSource
from service.schemas import ImagePrediction, PredictionRead, Score
from service.storage.db import Database
from service.storage.tables import TrainedModel

router = APIRouter(tags=["predict"])


def model_source(session: SessionDep, database: Database, model_id: str) -> ModelSource:
    model = session.get(TrainedModel, model_id)
    if model is None:
        raise HTTPException(404, f"model_id: no model {model_id!r}")

    def fetch_archive() -> bytes:
        with database.session() as reading:
            return reading.scalar(
                select(TrainedModel.savedmodel).where(TrainedModel.id == model_id)
            )

    return ModelSource(
        model_id=model.id,
        sha256=model.savedmodel_sha256,
        classes=list(model.classes),
        input_size=model.input_size,
        fetch_archive=fetch_archive,
    )


def decode_all(images: list[tuple[str, bytes]], size: int) -> np.ndarray:
    batch = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for number, (filename, data) in enumerate(images):
        try:
            batch[number] = to_pixels(data, size)
        except UndecodableImage as error:
            raise HTTPException(400, f"files[{number}] {filename!r}: {error}") from None
    return batch


def top_scores(probabilities: np.ndarray, classes: list[str], top_k: int) -> list[list[Score]]:
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    return [
        [Score(label=classes[index], score=float(row[index])) for index in indices]
        for row, indices in zip(probabilities, order, strict=True)
    ]


@router.post(
    "/predict",
    response_model=PredictionRead,
    summary="Classify images with a trained model",
    responses={
        400: {"description": "An image cannot be decoded; `detail` names the file"},
        404: {"description": "Unknown model"},
        413: {"description": "Over the size limit"},
        503: {"description": "The stored model fails its integrity check; others still serve"},
    },
)
async def predict(
    session: SessionDep,
    database: DatabaseDep,
    cache: ModelCacheDep,
    settings: SettingsDep,
    model_id: Annotated[str, Form()],
    files: Annotated[list[UploadFile], File(description="One or more images, any size")],
    top_k: Annotated[int, Form(ge=1, le=1000)] = 5,
) -> PredictionRead:
    source = model_source(session, database, model_id)
    if len(files) > settings.max_predict_files:
        raise HTTPException(
            413, f"{len(files)} files sent; at most {settings.max_predict_files} per request"
        )
    images = [
        (upload.filename or f"file{number}", await upload.read())
        for number, upload in enumerate(files)
    ]
    pixels = await run_in_threadpool(decode_all, images, source.input_size)
    try:
        model: LoadedModel = await run_in_threadpool(cache.get, source)
    except ModelCorrupt as error:
        raise HTTPException(503, str(error)) from None
    probabilities = await run_in_threadpool(model.probabilities, pixels)
    scores = top_scores(probabilities, model.classes, top_k)
    return PredictionRead(
        model_id=model_id,
        predictions=[
            ImagePrediction(filename=filename, top=top)
            for (filename, _), top in zip(images, scores, strict=True)
        ],
    )
