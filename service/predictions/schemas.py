"""Request and response models of prediction: /predict, TF Serving's paths, batch prediction."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from service.schemas import example_config
from service.storage.tables import MAX_INTEGER, NAME_LENGTH


class Heatmap(BaseModel):
    """Where in the image the evidence for a label lies (`/predict` with `explain`)."""

    method: Literal["cam", "grad-cam"] = Field(
        description='"cam": exact class activation map (the head is pooling → softmax Dense); '
        '"grad-cam": gradient-weighted, for heads with hidden Dense layers or max pooling.'
    )
    png: str = Field(
        description="A PNG, base64: the map (jet colours, scaled to its own range) over the "
        "image as the model saw it (resized to its input size).",
        json_schema_extra={"format": "byte"},
    )
    map: list[list[float]] = Field(
        description="The map at the backbone's feature resolution, rows top to bottom. CAM: "
        "raw (its mean plus the output bias is the label's logit); Grad-CAM: ReLU'd."
    )


class Score(BaseModel):
    label: str
    score: float
    heatmap: Heatmap | None = Field(
        None, description="With `explain`: the label's class activation map; null otherwise."
    )


class ImagePrediction(BaseModel):
    filename: str
    top: list[Score]
    ood_score: float | None = Field(
        None,
        description="How unlike the model's training images this one is (higher: stranger; "
        "0 is about the average validation image). Absent for models stored before models "
        "carried an unknown-input score.",
    )
    unknown: bool | None = Field(
        None,
        description="True past the model's threshold: an input of none of its classes, most "
        "likely. The threshold flags `unknown_rate` of images like the training ones (the "
        "request's, else the model's). Absent where `ood_score` is.",
    )

    # Unannotated return: pydantic then keeps the model's own schema for the OpenAPI
    # document (a `dict` annotation would publish a bare object, and generated clients
    # would lose every field).
    @model_serializer(mode="wrap")
    def _without_absent_unknowns(self, handler: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        answer: dict[str, Any] = handler(self)
        if self.ood_score is None:
            answer.pop("ood_score", None)
            answer.pop("unknown", None)
        return answer


class PredictionRead(BaseModel):
    model_config = example_config(
        {
            "model_id": "m_0123456789abcdef",
            "predictions": [
                {
                    "filename": "a.jpg",
                    "top": [{"label": "cats", "score": 0.93}, {"label": "dogs", "score": 0.07}],
                }
            ],
        }
    )
    model_id: str
    predictions: list[ImagePrediction]


class PredictForm(BaseModel):
    """The multipart form's fields besides `files`. The model is named one way: `model_id`,
    `name` (its latest version), `name` + `version`, or `name` + `alias`."""

    model_id: str | None = None
    name: str | None = Field(
        None, max_length=NAME_LENGTH, description="A named model: GET /registry."
    )
    version: int | None = Field(
        None, ge=1, le=MAX_INTEGER, description="With `name`: this version of it."
    )
    alias: str | None = Field(
        None, max_length=64, description="With `name`: the version this alias points to."
    )
    top_k: int = Field(5, ge=1, le=1000)
    threshold: float = Field(0.0, ge=0.0, le=1.0, description="Leave out labels below this.")
    explain: bool = Field(
        False, description="Give each returned label its class activation map (`heatmap`)."
    )
    unknown_rate: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="Move the `unknown` threshold for this request: the share of images like "
        "the training ones it flags (default: the model's `training.unknown_rate`).",
    )


class Base64Image(BaseModel):
    model_config = ConfigDict(extra="forbid")
    b64: str = Field(
        description="The encoded image file (JPEG, PNG, …), base64.",
        json_schema_extra={"format": "byte"},
    )


class PredictJSON(PredictForm):
    model_config = ConfigDict(extra="forbid")
    instances: list[Base64Image] = Field(min_length=1)


class TFServingRequest(BaseModel):
    model_config = example_config({"instances": [{"b64": "iVBORw0KGgo…"}]})
    instances: list[Any] = Field(
        min_length=1, description='Each {"b64": "<base64 image>"}, or {"<input name>": {"b64"}}'
    )
    signature_name: str | None = Field(
        None,
        description='"unknowns": each prediction is an object with `probabilities`, '
        "`ood_score` and `unknown` (TF Serving's form for a signature of several outputs). "
        "Any other name: the probabilities, as `serve` (`serving_default`) gives them.",
    )


class TFServingUnknowns(BaseModel):
    probabilities: list[float]
    ood_score: float
    unknown: bool


class TFServingResponse(BaseModel):
    model_config = example_config({"predictions": [[0.93, 0.07]]})
    predictions: list[list[float]] | list[TFServingUnknowns]


class TFServingStatus(BaseModel):
    error_code: str = "OK"
    error_message: str = ""


class TFServingVersionStatus(BaseModel):
    version: str = Field(description="The version number, as text (TF Serving's int64).")
    state: Literal["AVAILABLE"] = Field(description="Every stored version can be served.")
    status: TFServingStatus


class TFServingModelStatus(BaseModel):
    """TF Serving's GetModelStatus answer (`GET /v1/models/{name}`)."""

    model_config = example_config(
        {
            "model_version_status": [
                {
                    "version": "3",
                    "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""},
                }
            ]
        }
    )
    model_version_status: list[TFServingVersionStatus]


# -- batch prediction --------------------------------------------------------------------------


class BadImage(BaseModel):
    file: str
    reason: str


class BatchPredictionRead(BaseModel):
    model_config = example_config(
        {
            "id": "p_0123456789abcdef",
            "status": "succeeded",
            "error": None,
            "job_id": "j_0123456789abcdef",
            "model_id": "m_0123456789abcdef",
            "model": {"name": "flowers", "alias": "production"},
            "source": "zip",
            "filename": "holiday.zip",
            "dataset_id": None,
            "top_k": 3,
            "explain": False,
            "images": 1204,
            "classified": 1202,
            "bad": [{"file": "notes.txt", "reason": "cannot identify image file"}],
            "seconds": 41.7,
            "images_per_second": 28.9,
            "results": {
                "jsonl": "/predictions/p_0123456789abcdef/results?format=jsonl",
                "csv": "/predictions/p_0123456789abcdef/results?format=csv",
            },
            "created_at": "2026-11-29T15:00:00Z",
            "finished_at": "2026-11-29T15:00:45Z",
        }
    )

    id: str
    status: str = Field(description="queued, running, succeeded, failed or cancelled (its job's)")
    error: str | None
    job_id: str | None = Field(description="Its job: progress on GET /jobs/{job_id}/events.")
    model_id: str | None = Field(description="The version the request resolved to.")
    model: dict[str, Any] = Field(description="How the request named the model.")
    source: Literal["zip", "dataset"]
    filename: str | None = Field(description="The uploaded zip's name.")
    dataset_id: str | None
    top_k: int
    explain: bool
    images: int | None = Field(description="Files looked at; null until the job succeeds.")
    classified: int | None
    bad: list[BadImage] = Field(description="Files that could not be classified, and why.")
    seconds: float | None = Field(description="The job's time, reading the model included.")
    images_per_second: float | None
    results: dict[str, str] | None = Field(description="Where to download them, once done.")
    created_at: datetime
    finished_at: datetime | None
