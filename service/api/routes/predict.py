"""Classification over HTTP: multipart uploads, JSON with base64 images, and TF Serving's REST
shape. This module only reads the three body shapes; the classifying itself is
`service.serving`'s, whose problems are answered as every other route's are (api/errors.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from service import logs
from service.api.deps import ServingDep, SessionDep
from service.api.errors import invalid, unprocessable
from service.models import registry
from service.models.registry import ModelRef
from service.monitoring.watch import Monitoring
from service.predictions.schemas import (
    ImagePrediction,
    PredictForm,
    PredictionRead,
    PredictJSON,
    TFServingModelStatus,
    TFServingRequest,
    TFServingResponse,
    TFServingStatus,
    TFServingUnknowns,
    TFServingVersionStatus,
)
from service.predictions.serving import Classification, Image, Serving, decode_base64
from service.problems import Conflict
from service.schemas import inline_schema
from service.storage.tables import MAX_INTEGER, NAME_LENGTH

router = APIRouter(tags=["predict"])

ERRORS = {
    400: {"description": "An image cannot be decoded; `detail` names it"},
    404: {"description": "Unknown model"},
    413: {"description": "Over the size or file-count limit"},
    503: {"description": "The stored model fails its integrity check; others still serve"},
}


async def _classify(
    request: Request,
    serving: Serving,
    model: ModelRef,
    images: list[Image],
    explain_top_k: int = 0,
) -> Classification:
    """The images classified (explained with `explain_top_k`), and handed to capture and
    drift, which keep what they need in memory and store it off this request's path."""
    if explain_top_k:
        result = await serving.explain(model, images, explain_top_k)
    else:
        result = await serving.classify(model, images)
    monitoring: Monitoring = request.app.state.monitoring
    monitoring.served(result, images, logs.current().get("request_id"))
    return result


def _b64(number: int, encoded: str) -> bytes:
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
                "description": "model_id (or name, with optional version or alias), files, "
                "optional top_k, threshold, explain and unknown_rate",
                "required": [*_FORM.get("required", []), "files"],
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
    "and `explain`. JSON: `{model_id, instances: [{b64}], top_k, threshold, explain}`. Instead "
    "of `model_id`, `name` picks a named model's latest version, `name` + `version` one "
    "version, `name` + `alias` the version the alias points to: exactly one way, else 422 "
    "naming the field that conflicts. Labels scoring below `threshold` are left out of "
    "`top`. With `explain` true each returned label carries its class activation map "
    "(`heatmap`: method, PNG overlay, low-resolution map). Each image also gets `ood_score` "
    "and `unknown` (past the threshold for `unknown_rate`, default the model's), except from "
    "models stored before models carried them.",
    openapi_extra={"requestBody": PREDICT_BODY},
    responses={
        **ERRORS,
        409: {"description": "`explain` asked of a model stored before models carried maps"},
        422: {"description": "A field is missing or invalid, or the model is named two ways"},
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
    model = registry.reference(
        model_id=parameters.model_id,
        name=parameters.name,
        version=parameters.version,
        alias=parameters.alias,
    )
    explain_top_k = parameters.top_k if parameters.explain else 0
    result = await _classify(request, serving, model, images, explain_top_k)
    given = "threshold" in parameters.model_fields_set  # else a multi-label model's own
    scores = result.top(parameters.top_k, parameters.threshold if given else None)
    unknowns = result.unknown(parameters.unknown_rate)
    return PredictionRead(
        model_id=result.model_id,
        predictions=[
            ImagePrediction(
                filename=image.name,
                top=top,
                ood_score=unknown.ood_score if unknown else None,
                unknown=unknown.unknown if unknown else None,
            )
            for image, top, unknown in zip(images, scores, unknowns, strict=True)
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


# TF Serving's paths. `{model_id}` takes a model id, as it always has, or else a model's name
# (its latest version). Starlette's `{param}` never matches a '/', so `{model_id}:predict`
# cannot swallow `…/versions/{n}:predict` or `…/labels/{label}:predict`, nor they it.
ModelPath = Annotated[
    str, Path(description="A model id, or a named model's name (then its latest version)")
]
NamePath = Annotated[str, Path(max_length=NAME_LENGTH, description="A named model: GET /registry")]
# At most the largest 32-bit integer: the column's type on PostgreSQL and SQLite alike.
VersionPath = Annotated[int, Path(ge=1, le=MAX_INTEGER, description="A version of the named model")]
LabelPath = Annotated[
    str, Path(max_length=64, description="An alias of the named model (TF Serving's label)")
]
TF_SERVING_PREDICT: dict[str, Any] = {
    "response_model": TFServingResponse,
    "description": "For existing TensorFlow Serving clients. Each prediction is the full "
    "probability vector in the order of the model's `classes`; with `signature_name` "
    '"unknowns", an object of `probabilities`, `ood_score` and `unknown`.',
    "responses": {
        **ERRORS,
        409: {"description": '"unknowns" asked of a model stored before models had it'},
    },
}
TF_SERVING_STATUS: dict[str, Any] = {
    "response_model": TFServingModelStatus,
    "description": "TF Serving's model status: every version asked for is AVAILABLE, since "
    "any stored version can be served.",
    "responses": {404: {"description": "Unknown model, version or label"}},
}


async def _tf_serving_predict(
    request: Request, serving: Serving, model: ModelRef, body: TFServingRequest
) -> TFServingResponse:
    images = [
        Image(f"instances[{n}]", f"instances[{n}]", _tf_serving_image(n, instance))
        for n, instance in enumerate(body.instances)
    ]
    result = await _classify(request, serving, model, images)
    probabilities = result.probabilities.astype(float).tolist()
    if body.signature_name != "unknowns":
        return TFServingResponse(predictions=probabilities)
    unknowns = result.unknown()
    if unknowns[0] is None:
        raise Conflict(
            f"model {result.model_id} has no `unknowns` signature: it was stored before models "
            "carried an unknown-input score"
        )
    return TFServingResponse(
        predictions=[
            TFServingUnknowns(probabilities=row, ood_score=u.ood_score, unknown=u.unknown)
            for row, u in zip(probabilities, unknowns, strict=True)
            if u is not None
        ]
    )


@router.post(
    "/v1/models/{model_id}:predict",
    summary="TF Serving's REST predict: {instances: [{b64}]} → {predictions: [[p0, p1, …]]}",
    **TF_SERVING_PREDICT,
)
async def tf_serving_predict(
    request: Request, serving: ServingDep, model_id: ModelPath, body: TFServingRequest
) -> TFServingResponse:
    model = ModelRef(model_id=model_id, or_name=True)
    return await _tf_serving_predict(request, serving, model, body)


@router.post(
    "/v1/models/{name}/versions/{version}:predict",
    summary="TF Serving's REST predict with one version of a named model",
    **TF_SERVING_PREDICT,
)
async def tf_serving_predict_version(
    request: Request,
    serving: ServingDep,
    name: NamePath,
    version: VersionPath,
    body: TFServingRequest,
) -> TFServingResponse:
    model = ModelRef(name=name, version=version)
    return await _tf_serving_predict(request, serving, model, body)


@router.post(
    "/v1/models/{name}/labels/{label}:predict",
    summary="TF Serving's REST predict with the version an alias (label) points to",
    **TF_SERVING_PREDICT,
)
async def tf_serving_predict_label(
    request: Request,
    serving: ServingDep,
    name: NamePath,
    label: LabelPath,
    body: TFServingRequest,
) -> TFServingResponse:
    registry.check_alias(label, field="label")
    model = ModelRef(name=name, alias=label)
    return await _tf_serving_predict(request, serving, model, body)


def _model_status(versions: list[int]) -> TFServingModelStatus:
    return TFServingModelStatus(
        model_version_status=[
            TFServingVersionStatus(
                version=str(version), state="AVAILABLE", status=TFServingStatus()
            )
            for version in versions
        ]
    )


@router.get(
    "/v1/models/{model_id}",
    summary="TF Serving's model status: every version of a named model, newest first",
    **TF_SERVING_STATUS,
)
def tf_serving_status(session: SessionDep, model_id: ModelPath) -> TFServingModelStatus:
    model = registry.resolve(session, ModelRef(model_id=model_id, or_name=True))
    if model.id == model_id:  # named by its id: that one version
        return _model_status([model.version])
    return _model_status(registry.versions_of(session, model.name))


@router.get(
    "/v1/models/{name}/versions/{version}",
    summary="TF Serving's model status of one version",
    **TF_SERVING_STATUS,
)
def tf_serving_version_status(
    session: SessionDep, name: NamePath, version: VersionPath
) -> TFServingModelStatus:
    model = registry.resolve(session, ModelRef(name=name, version=version))
    return _model_status([model.version])


@router.get(
    "/v1/models/{name}/labels/{label}",
    summary="TF Serving's model status of the version an alias (label) points to",
    **TF_SERVING_STATUS,
)
def tf_serving_label_status(
    session: SessionDep, name: NamePath, label: LabelPath
) -> TFServingModelStatus:
    registry.check_alias(label, field="label")
    model = registry.resolve(session, ModelRef(name=name, alias=label))
    return _model_status([model.version])
