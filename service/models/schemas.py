"""Response models of the models routes: models, their layers and evaluation, weights files,
and the registry of named models."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.schemas import example_config
from service.storage.tables import MAX_INTEGER


class ParamCounts(BaseModel):
    trainable: int
    non_trainable: int
    total: int


class ModelRead(BaseModel):
    model_config = example_config(
        {
            "id": "m_0123456789abcdef",
            "name": "flowers-mobilenet",
            "version": 3,
            "job_id": "j_0123456789abcdef",
            "dataset_id": "d_0123456789abcdef",
            "dataset_version": 2,
            "backbone": "MobileNetV2",
            "input_size": 224,
            "classes": ["cats", "dogs"],
            "metrics": {"val_accuracy": 0.93, "val_loss": 0.2},
            "params": {"trainable": 1281, "non_trainable": 2257984, "total": 2259265},
            "size_bytes": 9437184,
            "created_at": "2026-11-28T12:05:00Z",
        }
    )
    id: str
    name: str = Field(description="The named model it is a version of: GET /registry/{name}.")
    version: int = Field(description="1, 2, 3… per name, in the order they were stored.")
    job_id: str | None
    dataset_id: str | None
    dataset_version: int | None = Field(
        description="The version of the dataset it learnt from: GET "
        "/datasets/{dataset_id}/versions/{dataset_version} lists exactly its images."
    )
    parent_model_id: str | None = Field(
        None,
        description="The model it retrains (POST /models/{model_id}/retrain), whose weights it "
        "started from unless asked otherwise; null for a model trained by POST /jobs.",
    )
    backbone: str
    input_size: int
    classes: list[str]
    thresholds: list[float] | None = Field(
        None,
        description="A multi-label model's threshold per class (in `classes`' order), fitted "
        "on its validation split: /predict answers each label whose score reaches its own. "
        "Null for a single-label model.",
    )
    metrics: dict[str, float]
    params: ParamCounts
    size_bytes: int
    created_at: datetime


class BatchNormShift(BaseModel):
    """Relative changes ‖s − s₀‖ / ‖s₀‖ of a BatchNormalization layer's moving statistics
    (null where s₀ is all zeros and moved: no relative figure exists)."""

    moving_mean: float | None
    moving_variance: float | None


class LayerRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    index: int
    name: str
    path: str
    class_name: str
    trainable: bool
    trainable_params: int
    non_trainable_params: int
    output_shape: list[int | None] | None
    weight_change: float | None = Field(
        None,
        description="‖W − W₀‖ / ‖W₀‖ over every weight the layer holds except BatchNormalization "
        "moving statistics, W₀ being the weights the job started from. null where the layer "
        "started from random weights (a backbone without source weights, the head), has no "
        "weights, in a preview, or for models stored before it was recorded.",
    )
    batchnorm_shift: BatchNormShift | None = Field(
        None, description="BatchNormalization layers only: their moving statistics' changes."
    )


class StageLayers(BaseModel):
    stage: int
    trainable_params: int
    non_trainable_params: int
    layers: list[LayerRead]


class LayersRead(BaseModel):
    model_config = example_config(
        {
            "model_id": "m_0123456789abcdef",
            "trainable_params": 1281,
            "non_trainable_params": 2257984,
            "layers": [
                {
                    "index": 150,
                    "name": "block_16_project",
                    "path": "mobilenetv2_1.00_96/block_16_project",
                    "class_name": "Conv2D",
                    "trainable": False,
                    "trainable_params": 0,
                    "non_trainable_params": 307200,
                    "output_shape": [None, 3, 3, 320],
                    "weight_change": 0.0,
                    "batchnorm_shift": None,
                },
                {
                    "index": 151,
                    "name": "block_16_project_BN",
                    "path": "mobilenetv2_1.00_96/block_16_project_BN",
                    "class_name": "BatchNormalization",
                    "trainable": False,
                    "trainable_params": 0,
                    "non_trainable_params": 1280,
                    "output_shape": [None, 3, 3, 320],
                    "weight_change": 0.0,
                    "batchnorm_shift": {"moving_mean": 0.0, "moving_variance": 0.0},
                },
            ],
        }
    )
    model_id: str | None = Field(None, description="null for a preview")
    trainable_params: int
    non_trainable_params: int
    layers: list[LayerRead]
    stages: list[StageLayers] | None = Field(
        None,
        description="Preview only: every stage's layers (the top-level ones are the last "
        "stage's, what the trained model will show).",
    )


class ClassReport(BaseModel):
    label: str
    precision: float
    recall: float
    f1: float
    support: int


class ConfusionMatrix(BaseModel):
    labels: list[str]
    matrix: list[list[int]] = Field(description="Rows: true class; columns: predicted class.")


class ReliabilityBin(BaseModel):
    """One of 15 equal-width bins of confidence (the top probability), (lower, upper]."""

    lower: float
    upper: float
    count: int = Field(description="Validation images whose confidence falls in the bin.")
    confidence: float | None = Field(description="Their mean confidence; null when empty.")
    accuracy: float | None = Field(description="The share of them answered right; null when empty.")


class CalibrationFitted(BaseModel):
    fitted: Literal[True] = True
    temperature: float = Field(
        description="T in softmax(log p / T), applied by the served and exported model: above 1 "
        "softens an over-confident model, below 1 sharpens an under-confident one."
    )
    images: int = Field(description="Validation images T was fitted on (and measured on).")
    ece_before: float = Field(
        description="Expected calibration error of the uncalibrated probabilities: "
        "Σ over bins of (share of images) · |accuracy − mean confidence|."
    )
    ece_after: float = Field(description="The same, with T applied (on the same images).")
    nll_before: float = Field(description="Mean negative log-likelihood of the true class.")
    nll_after: float = Field(description="The same, with T applied: what the fit minimised.")
    bins_before: list[ReliabilityBin] = Field(description="The reliability diagram before.")
    bins_after: list[ReliabilityBin] = Field(description="And after.")


class CalibrationNotFitted(BaseModel):
    fitted: Literal[False] = False
    reason: str = Field(description="Why no temperature was fitted (the model applies none).")


def _bins(filled: dict[int, tuple[int, float, float]]) -> list[dict[str, Any]]:
    """15 reliability bins for an example: {bin: (count, confidence, accuracy)}, others empty."""
    rows = []
    for number in range(15):
        count, confidence, accuracy = filled.get(number, (0, None, None))
        rows.append(
            {
                "lower": round(number / 15, 4),
                "upper": round((number + 1) / 15, 4),
                "count": count,
                "confidence": confidence,
                "accuracy": accuracy,
            }
        )
    return rows


class UnknownsReport(BaseModel):
    method: Literal["mahalanobis-ensemble"] = Field(
        description="Mahalanobis distance to the nearest class at each stage depth of the "
        "backbone, each standardised on the validation split, the largest kept (docs/unknowns.md)."
    )
    depths: list[str] = Field(description="The backbone layers whose pooled outputs are scored.")
    unknown_rate: float = Field(description="The share of known images the threshold flags.")
    threshold: float = Field(description="`ood_score` above this: `unknown`.")
    flagged_share: float = Field(description="The share of the split's images flagged.")
    images: int = Field(description="Images of the split the threshold was fitted on.")
    split: Literal["validation", "train"] = Field(
        description='"train" only for a model trained without a validation split: then more '
        "than unknown_rate of new known images are flagged."
    )


class EvaluationRead(BaseModel):
    model_config = example_config(
        {
            "model_id": "m_0123456789abcdef",
            "split": "validation",
            "accuracy": 0.9,
            "per_class": [
                {"label": "cats", "precision": 0.95, "recall": 0.9, "f1": 0.92, "support": 10},
                {"label": "dogs", "precision": 0.86, "recall": 0.9, "f1": 0.88, "support": 10},
            ],
            "confusion_matrix": {"labels": ["cats", "dogs"], "matrix": [[9, 1], [1, 9]]},
            "calibration": {
                "fitted": True,
                "temperature": 2.31,
                "images": 20,
                "ece_before": 0.089,
                "ece_after": 0.031,
                "nll_before": 0.412,
                "nll_after": 0.276,
                "bins_before": _bins({14: (20, 0.989, 0.9)}),
                "bins_after": _bins(
                    {11: (4, 0.77, 0.75), 12: (6, 0.84, 0.83), 14: (10, 0.95, 1.0)}
                ),
            },
            "unknowns": {
                "method": "mahalanobis-ensemble",
                "depths": ["block_3_expand_relu", "block_6_expand_relu", "out_relu"],
                "unknown_rate": 0.05,
                "threshold": 2.82,
                "flagged_share": 0.05,
                "images": 20,
                "split": "validation",
            },
        }
    )
    model_id: str
    split: Literal["validation"] = "validation"
    accuracy: float
    per_class: list[ClassReport]
    confusion_matrix: ConfusionMatrix
    calibration: CalibrationFitted | CalibrationNotFitted | None = Field(
        None,
        description="Temperature scaling fitted on the validation split after training, with "
        "the expected calibration error and reliability bins before and after; "
        '`{"fitted": false, "reason"}` when `training.calibrate` was false; null for models '
        "stored before calibration existed. The per-class report above is of the calibrated "
        "probabilities (the ranking, and so the report, is unchanged by T).",
    )
    unknowns: UnknownsReport | None = Field(
        None,
        description="The unknown-input score's threshold, fitted on the validation split, and "
        "the share of it flagged; null for models stored before models carried the score.",
    )


class LabelReport(BaseModel):
    label: str
    precision: float
    recall: float
    f1: float
    support: int = Field(description="Validation images holding the label.")
    average_precision: float | None = Field(
        description="Area under the label's precision-recall curve; null without positives."
    )
    threshold: float = Field(description="Its score reaching this answers the label.")
    false_positives: list[int] = Field(
        description="Image ids (in the model's dataset) given the label wrongly, most "
        "confident first; at most 20."
    )
    false_negatives: list[int] = Field(
        description="Image ids holding the label that the model missed, least confident "
        "first; at most 20."
    )


class ErrorPair(BaseModel):
    false_positive: str
    false_negative: str
    count: int = Field(description="Images with both errors: one label taken for the other.")


class LabelEvaluationRead(BaseModel):
    """A multi-label model's report on its validation split, at its fitted thresholds."""

    model_config = example_config(
        {
            "model_id": "m_0123456789abcdef",
            "split": "validation",
            "images": 40,
            "micro_f1": 0.91,
            "macro_f1": 0.88,
            "mean_average_precision": 0.94,
            "exact_match": 0.8,
            "no_label_images": 3,
            "per_label": [
                {
                    "label": "cat",
                    "precision": 0.95,
                    "recall": 0.9,
                    "f1": 0.92,
                    "support": 20,
                    "average_precision": 0.97,
                    "threshold": 0.42,
                    "false_positives": [1093],
                    "false_negatives": [1041, 1187],
                }
            ],
            "error_cooccurrence": [{"false_positive": "dog", "false_negative": "cat", "count": 2}],
            "calibration": {
                "fitted": True,
                "temperatures": [1.31],
                "reasons": [None],
                "ece_before": [0.061],
                "ece_after": [0.024],
                "nll_before": 0.21,
                "nll_after": 0.18,
                "threshold_reasons": [None],
            },
            "unknowns": None,
        }
    )
    model_id: str
    split: Literal["validation"] = "validation"
    images: int
    micro_f1: float
    macro_f1: float | None = Field(description="Over the labels the split holds.")
    mean_average_precision: float | None
    exact_match: float = Field(description="Share of images whose whole label set is right.")
    no_label_images: int = Field(description="Validation images holding none of the labels.")
    per_label: list[LabelReport]
    error_cooccurrence: list[ErrorPair] = Field(
        description="Labels whose errors come together, most often first."
    )
    calibration: dict[str, Any] = Field(
        description="The temperature per label (`temperatures`, with `reasons` where none "
        "was fitted), the expected calibration error per label before and after "
        "(`ece_before`, `ece_after`), the mean binary cross-entropy before and after."
    )
    unknowns: UnknownsReport | None = Field(
        None,
        description="The unknown-input score (a Gaussian per label set seen in training), its "
        "threshold fitted on the validation split, and the share of it flagged.",
    )


class EvaluationSample(BaseModel):
    model_config = example_config(
        {
            "image_id": 1041,
            "label": "cats",
            "predicted": "dogs",
            "score": 0.8123,
            "scores": {"cats": 0.1877, "dogs": 0.8123},
        }
    )
    image_id: int = Field(
        description="The image in the model's dataset: "
        "`GET /datasets/{dataset_id}/images/{image_id}`."
    )
    label: str = Field(description="Its true class.")
    predicted: str = Field(description="The class the model gave it.")
    score: float = Field(description="The probability of the predicted class (the highest).")
    scores: dict[str, float] = Field(
        description="Every class's probability, rounded to 4 decimals (so they sum to about 1)."
    )


class WeightsRead(BaseModel):
    model_config = example_config(
        {
            "id": "w_0123456789abcdef",
            "backbone": "MobileNetV2",
            "filename": "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
            "size_bytes": 9406464,
            "sha256": "…",
            "created_at": "2026-11-28T12:00:00Z",
        }
    )
    id: str
    backbone: str
    filename: str
    size_bytes: int
    sha256: str
    created_at: datetime


# -- the registry: named models, versions, aliases (/registry) -------------------------------


class RegisteredModel(BaseModel):
    model_config = example_config(
        {
            "name": "flowers-mobilenet",
            "versions": 3,
            "latest_version": 3,
            "latest_model_id": "m_0123456789abcdef",
            "updated_at": "2026-11-29T12:00:00Z",
            "aliases": {"production": 2, "staging": 3},
        }
    )
    name: str
    versions: int = Field(description="How many versions are stored.")
    latest_version: int
    latest_model_id: str
    updated_at: datetime = Field(description="When the latest version was stored.")
    aliases: dict[str, int] = Field(description="Each alias and the version it points to.")


class RegisteredVersion(BaseModel):
    version: int
    model_id: str
    created_at: datetime
    metrics: dict[str, float]
    aliases: list[str] = Field(description="The aliases pointing to this version.")


class NamedModelRead(BaseModel):
    model_config = example_config(
        {
            "name": "flowers-mobilenet",
            "aliases": {"production": 2},
            "versions": [
                {
                    "version": 2,
                    "model_id": "m_0123456789abcdef",
                    "created_at": "2026-11-29T12:00:00Z",
                    "metrics": {"val_accuracy": 0.95, "val_loss": 0.15},
                    "aliases": ["production"],
                },
                {
                    "version": 1,
                    "model_id": "m_fedcba9876543210",
                    "created_at": "2026-11-28T12:00:00Z",
                    "metrics": {"val_accuracy": 0.93, "val_loss": 0.2},
                    "aliases": [],
                },
            ],
        }
    )
    name: str
    aliases: dict[str, int] = Field(description="Each alias and the version it points to.")
    versions: list[RegisteredVersion] = Field(description="Newest first.")


class AliasWrite(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"version": 3}]})
    version: int = Field(
        ge=1, le=MAX_INTEGER, description="The version of the named model to point to."
    )


class AliasRead(BaseModel):
    model_config = example_config(
        {
            "name": "flowers-mobilenet",
            "alias": "production",
            "version": 3,
            "model_id": "m_0123456789abcdef",
            "updated_at": "2026-11-29T12:00:00Z",
        }
    )
    name: str
    alias: str
    version: int
    model_id: str
    updated_at: datetime = Field(description="When it was last set or moved.")
