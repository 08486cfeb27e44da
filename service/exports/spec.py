"""What to convert a model to (POST /models/{model_id}/exports), and an export job's spec."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from service.training.spec import WEBHOOK_DESCRIPTION, StrictModel, WebhookUrl

ExportFormat = Literal["keras", "tflite", "tflite-fp16", "tflite-int8", "onnx"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("keras", "tflite", "tflite-fp16", "tflite-int8", "onnx")


class ExportRequest(StrictModel):
    """The format to convert a trained model to."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"format": "tflite"}]}
    )

    format: ExportFormat = Field(
        description='"keras" (a .keras file), "tflite" (float32), "tflite-fp16" (float16 '
        'weights, float32 input and output), "tflite-int8" (full-integer: uint8 pixels in, '
        'uint8 probabilities out) or "onnx" (via tf2onnx).'
    )
    webhook_url: WebhookUrl | None = Field(None, description=WEBHOOK_DESCRIPTION)


class ExportSpec(ExportRequest):
    """An export job's stored spec: the model and the format."""

    model_id: str


# -- batch prediction (POST /predictions) ------------------------------------------------------
