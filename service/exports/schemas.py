"""Response models of exports (POST /models/{model_id}/exports)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from service.exports.spec import ExportFormat
from service.schemas import example_config

# -- exports (POST /models/{model_id}/exports) -------------------------------------------------


class ExportQuantization(BaseModel):
    scale: float
    zero_point: int


class ExportTensor(BaseModel):
    name: str
    dtype: Literal["float32", "uint8", "int8"]
    shape: list[int | None] = Field(description="null: any size (the batch).")
    quantization: ExportQuantization | None = Field(
        description="Integer tensors only: real = (q − zero_point) × scale."
    )


class ExportParity(BaseModel):
    images: int = Field(description="The model's validation images, all of them.")
    agreeing: int = Field(
        description="Images whose top class is the SavedModel's (multi-label: whose whole "
        "label set at the thresholds is)."
    )
    agreement: float = Field(description="agreeing / images.")
    bar: float = Field(description="The agreement the format must reach.")
    passed: bool
    max_abs_difference: float = Field(
        description="The largest difference from the SavedModel's probability of any class "
        "of any image."
    )
    mean_abs_difference: float
    accuracy: float = Field(
        description="The export's top-1 accuracy on the true labels (multi-label: the share "
        "of images whose label set it answers right)."
    )
    savedmodel_accuracy: float = Field(description="The SavedModel's, on the same images.")


class ExportReport(BaseModel):
    format: ExportFormat
    file: str = Field(description="The model's file in the archive.")
    file_bytes: int
    labels_file: str = Field(description="One class name a line, in the output's order.")
    classes: list[str]
    input: ExportTensor
    output: ExportTensor
    temperature: float | list[float] = Field(
        description="Folded into the last layer, as `serve` applies it; a multi-label "
        "model's, one per label."
    )
    thresholds: list[float] | None = Field(
        None,
        description="A multi-label model's threshold per label, in the labels file's order: "
        "the file answers each label's probability, and a label is answered when it reaches "
        "its threshold. Null for a single-label model.",
    )
    calibration_images: int = Field(
        description="tflite-int8: training-split images the quantization ranges were "
        "calibrated on (else 0)."
    )
    parity: ExportParity
    runtime: str = Field(description="What ran the file for the parity check.")
    converter: str
    seconds: dict[str, float] = Field(description="convert and check.")


class ExportRead(BaseModel):
    model_config = example_config(
        {
            "id": "x_0123456789abcdef",
            "model_id": "m_0123456789abcdef",
            "format": "tflite-int8",
            "status": "ready",
            "error": None,
            "job_id": "j_0123456789abcdef",
            "report": {
                "format": "tflite-int8",
                "file": "model.tflite",
                "file_bytes": 2_931_264,
                "labels_file": "labels.txt",
                "classes": ["cats", "dogs"],
                "input": {
                    "name": "pixels",
                    "dtype": "uint8",
                    "shape": [None, 224, 224, 3],
                    "quantization": {"scale": 1.0, "zero_point": 0},
                },
                "output": {
                    "name": "probabilities",
                    "dtype": "uint8",
                    "shape": [None, 2],
                    "quantization": {"scale": 0.00390625, "zero_point": 0},
                },
                "temperature": 1.42,
                "calibration_images": 200,
                "parity": {
                    "images": 400,
                    "agreeing": 397,
                    "agreement": 0.9925,
                    "bar": 0.98,
                    "passed": True,
                    "max_abs_difference": 0.041,
                    "mean_abs_difference": 0.004,
                    "accuracy": 0.9125,
                    "savedmodel_accuracy": 0.915,
                },
                "runtime": "ai-edge-litert 2.3.0",
                "converter": "tensorflow 2.21.0 TFLiteConverter",
                "seconds": {"convert": 21.4, "check": 6.2},
            },
            "size_bytes": 2_934_101,
            "sha256": "9f2c" + "0" * 60,
            "created_at": "2026-11-29T12:00:00Z",
        }
    )
    id: str
    model_id: str
    format: ExportFormat
    status: Literal["queued", "running", "ready", "failed"] = Field(
        description="Its job's: ready once it succeeded; failed when it failed (below its "
        "parity bar, say), was cancelled or removed."
    )
    error: str | None
    job_id: str | None = Field(description="The export job: GET /jobs/{job_id}/events follows it.")
    report: ExportReport | None = Field(
        description="Parity and the file's input and output; set once converted and checked, "
        "on a failed export too when it was below its bar."
    )
    size_bytes: int | None = Field(description="The archive's size; null until ready.")
    sha256: str | None = Field(description="The archive's; null until ready.")
    created_at: datetime
