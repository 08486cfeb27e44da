"""Classification over HTTP: multipart uploads, JSON with base64 images, and TF Serving's REST
shape. This module only reads the three body shapes and maps problems to status codes; the
classifying itself is `service.serving`'s.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from service.api.deps import ServingDep
from service.api.errors import invalid, unprocessable
from service.schemas import (
    ImagePrediction,
    PredictForm,
    PredictionRead,
    PredictJSON,
    TFServingRequest,
    TFServingResponse,
    inline_schema,
)
from service.serving import (
    BadImage,
    Classification,
    ExplanationUnavailable,
    Image,
    ModelCorrupt,
    ModelNotFound,
    Serving,
    TooManyImages,
    decode_base64,
)

router = APIRouter(tags=["predict"])

ERRORS = {
    400: {"description": "An image cannot be decoded; `detail` names it"},
    404: {"description": "Unknown model"},
    413: {"description": "Over the size or file-count limit"},
    503: {"description": "The stored model fails its integrity check; others still serve"},
}
STATUS = {
    BadImage: 400,
    ModelNotFound: 404,
    ExplanationUnavailable: 409,
    TooManyImages: 413,
    ModelCorrupt: 503,
}


@contextmanager
def _as_http_errors() -> Iterator[None]:
    try:
        yield
    except tuple(STATUS) as error:
        status = next(code for kind, code in STATUS.items() if isinstance(error, kind))
        raise HTTPException(status, str(error)) from None


async def _classify(
    serving: Serving, model_id: str, images: list[Image], explain_top_k: int = 0
) -> Classification:
    with _as_http_errors():
        if explain_top_k:
            return await serving.explain(model_id, images, explain_top_k)
        return await serving.classify(model_id, images)


def _b64(number: int, encoded: str) -> bytes:
    with _as_http_errors():
        return decode_base64(f"instances[{number}].b64", encoded)


async def _read_json(request: Request) -> tuple[PredictJSON, list[Image]]:
    try:
        body = PredictJSON.model_validate_json(await request.body())
    except ValidationError as error:
        raise unprocessable(error.errors(include_url=False), prefix=("body",)) from None
    images = [
        Image(f"instances[{n}]", f"instances[{n}]", _b64(n, instance.b64))
        for n, instance in enumerate(body.instances)
    ]
    return body, images


async def _read_multipart(request: Request, limit: int) -> tuple[PredictForm, list[Image]]:
    try:
        form = await request.form(max_files=limit)
    except (MultiPartException, StarletteHTTPException) as error:
        if isinstance(error, StarletteHTTPException) and error.status_code != 400:
            raise  # the body limit's 413, met while the form streams in
        message = str(getattr(error, "message", None) or getattr(error, "detail", error))
        if "Too many files" in message:
            raise HTTPException(413, f"more than {limit} files sent; at most {limit}") from None
        raise HTTPException(400, f"body: not a readable multipart form ({message})") from None
    uploads = form.getlist("files")
    for number, upload in enumerate(uploads):
        if not isinstance(upload, UploadFile):  # a text field, or a part with no file name
            raise invalid(["files", number], "expected a file upload with a file name")
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    try:
        parameters = PredictForm.model_validate(fields)
    except ValidationError as error:
        raise unprocessable(error.errors(include_url=False), prefix=("body",)) from None
    if not uploads:
        missing = {"type": "missing", "loc": ("files",), "msg": "Field required", "input": None}
        raise unprocessable([missing], prefix=("body",))
    images = []
    for number, upload in enumerate(uploads):
        name = upload.filename or f"file{number}"
        images.append(Image(f"files[{number}] {name!r}", name, await upload.read()))
    return parameters, images


# The two bodies /predict reads by hand, documented from the models that validate them.
_FORM = PredictForm.model_json_schema()
PREDICT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                **_FORM,
                "description": "model_id, files, optional top_k, threshold and explain",
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
            "schema": inline_schema(PredictJSON),
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
    description="Multipart: `model_id`, one or more `files`, optional `top_k`, `threshold` "
    "and `explain`. JSON: `{model_id, instances: [{b64}], top_k, threshold, explain}`. Labels "
    "scoring below `threshold` are left out of `top`. With `explain` true each returned label "
    "carries its class activation map (`heatmap`: method, PNG overlay, low-resolution map).",
    openapi_extra={"requestBody": PREDICT_BODY},
    responses={
        **ERRORS,
        409: {"description": "`explain` asked of a model stored before models carried maps"},
        422: {"description": "A field is missing or invalid"},
    },
)
async def predict(request: Request, serving: ServingDep) -> PredictionRead:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        parameters, images = await _read_json(request)
    elif content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        parameters, images = await _read_multipart(request, serving.max_images)
    else:
        raise HTTPException(
            415, "send multipart/form-data (files) or application/json (base64 instances)"
        )
    explain_top_k = parameters.top_k if parameters.explain else 0
    result = await _classify(serving, parameters.model_id, images, explain_top_k)
    scores = result.top(parameters.top_k, parameters.threshold)
    return PredictionRead(
        model_id=result.model_id,
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
    serving: ServingDep, model_id: str, body: TFServingRequest
) -> TFServingResponse:
    images = [
        Image(f"instances[{n}]", f"instances[{n}]", _tf_serving_image(n, instance))
        for n, instance in enumerate(body.instances)
    ]
    result = await _classify(serving, model_id, images)
    return TFServingResponse(predictions=result.probabilities.astype(float).tolist())
