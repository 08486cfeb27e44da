"""Classification: multipart uploads, JSON with base64 images, and TF Serving's REST shape.

All three decode and resize the way training did, then go through the dynamic batcher.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, NamedTuple

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from service.api.deps import DatabaseDep
from service.ml.images import UndecodableImage, to_pixels
from service.ml.serving import LoadedModel, ModelCorrupt, ModelSource
from service.schemas import (
    ImagePrediction,
    PredictForm,
    PredictionRead,
    PredictJSON,
    Score,
    TFServingRequest,
    TFServingResponse,
)
from service.storage.db import Database
from service.storage.tables import TrainedModel

router = APIRouter(tags=["predict"])


class Image(NamedTuple):
    where: str  # where it came from, for error messages: files[0] 'a.jpg', instances[2]
    name: str  # what the answer calls it
    data: bytes


ERRORS = {
    400: {"description": "An image cannot be decoded; `detail` names it"},
    404: {"description": "Unknown model"},
    413: {"description": "Over the size or file-count limit"},
    503: {"description": "The stored model fails its integrity check; others still serve"},
}


def model_source(database: Database, model_id: str) -> ModelSource:
    """What the cache needs to load the model, read in a short transaction of its own: a
    prediction holds no database connection while it waits for the model."""
    with database.session() as session:
        row = session.execute(
            select(
                TrainedModel.savedmodel_sha256, TrainedModel.classes, TrainedModel.input_size
            ).where(TrainedModel.id == model_id)
        ).first()
    if row is None:
        raise HTTPException(404, f"model_id: no model {model_id!r}")
    sha, classes, input_size = row.savedmodel_sha256, list(row.classes), row.input_size

    def fetch_archive() -> bytes:
        with database.session() as reading:
            return reading.scalar(
                select(TrainedModel.savedmodel).where(TrainedModel.id == model_id)
            )

    return ModelSource(
        model_id=model_id,
        sha256=sha,
        classes=classes,
        input_size=input_size,
        fetch_archive=fetch_archive,
    )


def decode_all(images: list[Image], size: int) -> np.ndarray:
    """Raw pixels for the batch, decoded and resized exactly as the training pipeline does."""
    batch = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for number, image in enumerate(images):
        try:
            batch[number] = to_pixels(image.data, size)
        except UndecodableImage as error:
            raise HTTPException(400, f"{image.where}: {error}") from None
    return batch


async def classify(
    request: Request, database: Database, model_id: str, images: list[Image]
) -> tuple[LoadedModel, np.ndarray]:
    """Class probabilities for the images, one row each, in order."""
    settings = request.app.state.settings
    if len(images) > settings.max_predict_files:
        raise HTTPException(
            413, f"{len(images)} images sent; at most {settings.max_predict_files} per request"
        )

    def prepare() -> tuple[LoadedModel, np.ndarray]:
        # One trip to a worker thread for the lookup, the decoding and the (cached) model.
        source = model_source(database, model_id)
        pixels = decode_all(images, source.input_size)
        try:
            return request.app.state.model_cache.get(source), pixels
        except ModelCorrupt as error:
            raise HTTPException(503, str(error)) from None

    model, pixels = await run_in_threadpool(prepare)
    probabilities = await request.app.state.batcher.predict(
        model.model_id, model.probabilities, pixels
    )
    return model, probabilities


def top_scores(
    probabilities: np.ndarray, classes: list[str], top_k: int, threshold: float = 0.0
) -> list[list[Score]]:
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    return [
        [
            Score(label=classes[index], score=float(row[index]))
            for index in indices
            if row[index] >= threshold
        ]
        for row, indices in zip(probabilities, order, strict=True)
    ]


def _invalid(error: ValidationError, *, prefix: tuple[str, ...] = ("body",)) -> Exception:
    return RequestValidationError(
        [{**item, "loc": (*prefix, *item["loc"])} for item in error.errors(include_url=False)]
    )


def _b64(number: int, encoded: str) -> bytes:
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(400, f"instances[{number}].b64: not valid base64") from None


async def _read_multipart(request: Request) -> tuple[PredictForm, list[Image]]:
    settings = request.app.state.settings
    limit = settings.max_predict_files
    try:
        form = await request.form(max_files=limit)
    except (MultiPartException, StarletteHTTPException) as error:
        message = str(getattr(error, "message", None) or getattr(error, "detail", error))
        if "Too many files" in message:
            raise HTTPException(413, f"more than {limit} files sent; at most {limit}") from None
        raise HTTPException(400, f"body: not a readable multipart form ({message})") from None
    uploads = form.getlist("files")
    for number, upload in enumerate(uploads):
        if not isinstance(upload, UploadFile):  # a text field, or a part with no file name
            raise RequestValidationError(
                [
                    {
                        "type": "value_error",
                        "loc": ("body", "files", number),
                        "msg": "expected a file upload with a file name",
                        "input": None,
                    }
                ]
            )
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    try:
        parameters = PredictForm.model_validate(fields)
    except ValidationError as error:
        raise _invalid(error) from None
    if not uploads:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body", "files"), "msg": "Field required", "input": None}]
        )
    images = []
    for number, upload in enumerate(uploads):
        name = upload.filename or f"file{number}"
        images.append(Image(f"files[{number}] {name!r}", name, await upload.read()))
    return parameters, images


def _inline_definitions(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its `$defs` written in place, as a requestBody needs."""
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


# The two bodies /predict reads by hand, documented from the models that validate them.
_FORM = PredictForm.model_json_schema()
PREDICT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                **_FORM,
                "description": "model_id, one or more files, optional top_k and threshold",
                "required": [*_FORM["required"], "files"],
                "properties": {
                    **_FORM["properties"],
                    "files": {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "description": "One or more images of any size",
                    },
                },
            }
        },
        "application/json": {
            "schema": _inline_definitions(PredictJSON.model_json_schema()),
            "example": {
                "model_id": "m_0123456789abcdef",
                "instances": [{"b64": "iVBORw0KGgo…"}],
                "top_k": 3,
                "threshold": 0.1,
            },
        },
    },
}


@router.post(
    "/predict",
    response_model=PredictionRead,
    summary="Classify images: multipart files, or JSON with base64 images",
    description="Multipart: `model_id`, one or more `files`, optional `top_k` and "
    "`threshold`. JSON: `{model_id, instances: [{b64}], top_k, threshold}`. Labels scoring "
    "below `threshold` are left out of `top`.",
    openapi_extra={"requestBody": PREDICT_BODY},
    responses={**ERRORS, 422: {"description": "A field is missing or invalid"}},
)
async def predict(request: Request, database: DatabaseDep) -> PredictionRead:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        try:
            body = PredictJSON.model_validate_json(await request.body())
        except ValidationError as error:
            raise _invalid(error) from None
        parameters: PredictForm | PredictJSON = body
        images = [
            Image(f"instances[{n}]", f"instances[{n}]", _b64(n, instance.b64))
            for n, instance in enumerate(body.instances)
        ]
    elif content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        parameters, images = await _read_multipart(request)
    else:
        raise HTTPException(
            415, "send multipart/form-data (files) or application/json (base64 instances)"
        )
    model, probabilities = await classify(request, database, parameters.model_id, images)
    scores = top_scores(probabilities, model.classes, parameters.top_k, parameters.threshold)
    return PredictionRead(
        model_id=model.model_id,
        predictions=[
            ImagePrediction(filename=image.name, top=top)
            for image, top in zip(images, scores, strict=True)
        ],
    )


def _tf_serving_image(number: int, instance: Any) -> bytes:
    if isinstance(instance, dict) and len(instance) == 1:
        ((key, value),) = instance.items()
        if key == "b64" and isinstance(value, str):
            return _b64(number, value)
        if isinstance(value, dict):  # a named input, e.g. {"image_bytes": {"b64": …}}
            return _tf_serving_image(number, value)
    raise HTTPException(
        400, f'instances[{number}]: expected {{"b64": "<base64 image>"}} or {{"<name>": {{"b64"}}}}'
    )


@router.post(
    "/v1/models/{model_id}:predict",
    response_model=TFServingResponse,
    summary="TF Serving's REST predict: {instances: [{b64}]} → {predictions: [[p0, p1, …]]}",
    description="For existing TensorFlow Serving clients. Each prediction is the full "
    "probability vector in the order of the model's `classes`.",
    responses=ERRORS,
)
async def tf_serving_predict(
    request: Request, database: DatabaseDep, model_id: str, body: TFServingRequest
) -> TFServingResponse:
    images = [
        Image(f"instances[{n}]", f"instances[{n}]", _tf_serving_image(n, instance))
        for n, instance in enumerate(body.instances)
    ]
    _, probabilities = await classify(request, database, model_id, images)
    return TFServingResponse(predictions=probabilities.astype(float).tolist())
