"""Response models of the HTTP API (requests: `service.spec`). Each carries an example."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from service.jobs import JobKind, JobStatus
from service.spec import (
    AdviceRequest,
    AdviceSpec,
    ExportFormat,
    ExportSpec,
    ImportSpec,
    JobSpec,
)


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its `$defs` written in place: for a schema given by hand
    (a requestBody, a field read without validation), where no `$ref` can be resolved."""
    schema = model.model_json_schema()
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


def _example(example: dict[str, Any]) -> ConfigDict:
    return ConfigDict(from_attributes=True, json_schema_extra={"examples": [example]})


class Status(BaseModel):
    model_config = _example({"status": "ok"})
    status: str
    detail: str | None = None


class BackboneRead(BaseModel):
    model_config = _example(
        {
            "name": "MobileNetV2",
            "default_input_size": 224,
            "min_input_size": 32,
            "weights": ["imagenet", None],
        }
    )
    name: str
    default_input_size: int
    min_input_size: int
    weights: list[str | None]


class BackboneLayer(BaseModel):
    index: int
    name: str
    class_name: str
    params: int


class BackboneLayers(BaseModel):
    model_config = _example(
        {
            "backbone": "MobileNetV2",
            "input_size": 96,
            "layers": [
                {"index": 0, "name": "input_layer", "class_name": "InputLayer", "params": 0}
            ],
        }
    )
    backbone: str
    input_size: int
    layers: list[BackboneLayer]


class ClassCount(BaseModel):
    name: str
    count: int


class SkippedFile(BaseModel):
    path: str
    reason: str


class DatasetRead(BaseModel):
    model_config = _example(
        {
            "id": "d_0123456789abcdef",
            "name": "pets",
            "num_images": 80,
            "classes": [{"name": "cats", "count": 40}, {"name": "dogs", "count": 40}],
            "skipped": [{"path": "cats/bad.jpg", "reason": "not a decodable image"}],
            "created_at": "2026-11-28T12:00:00Z",
        }
    )
    id: str
    name: str
    num_images: int
    classes: list[ClassCount]
    skipped: list[SkippedFile]
    created_at: datetime


class DatasetImagesAdded(BaseModel):
    """What POST /datasets/{dataset_id}/images answers."""

    model_config = _example(
        {
            "dataset": DatasetRead.model_config["json_schema_extra"]["examples"][0],  # type: ignore[index]
            "added": [{"name": "cats", "count": 12}, {"name": "birds", "count": 30}],
            "skipped": [
                {"path": "cats/001.jpg", "reason": "already in the dataset (the same bytes)"}
            ],
        }
    )
    dataset: DatasetRead = Field(description="The dataset with the images added.")
    added: list[ClassCount] = Field(description="Images added, per class.")
    skipped: list[SkippedFile] = Field(
        description="Files of this zip not added, and why: not an image, outside a class "
        "folder, or already in the dataset (so a part can safely be sent again)."
    )


class DatasetImageRead(BaseModel):
    model_config = _example(
        {"id": 1041, "label": "cats", "filename": "cats/001.jpg", "size_bytes": 48213}
    )
    id: int = Field(description="The image's number; with the dataset's id it names the image.")
    label: str = Field(description="Its class: the folder it came from.")
    filename: str = Field(description="Its path in the uploaded zip.")
    size_bytes: int


# -- the dataset health report (GET /datasets/{id}/report; built by service/reports.py) -------


class ReportImage(BaseModel):
    """One image a finding names: `GET /datasets/{dataset_id}/images/{id}` shows it."""

    id: int
    filename: str = Field(description="Its path in the uploaded zip.")
    label: str


class ImageShape(ReportImage):
    width: int
    height: int
    mode: str = Field(description='Pillow\'s mode as stored: "RGB", "L", "CMYK", "P"…')


class ImageFinding(BaseModel):
    count: int = Field(description="How many images the finding holds (all listed).")
    images: list[ImageShape]


class SmallImages(ImageFinding):
    input_size: int | None = Field(
        description="The size asked about; null when none was (then the list is empty)."
    )


class Balance(BaseModel):
    ratio: float = Field(description="Largest class count ÷ smallest, rounded to 2 decimals.")
    largest: ClassCount
    smallest: ClassCount
    imbalanced: bool = Field(description="`ratio` is past `thresholds.max_balance_ratio`.")
    note: str | None = Field(description="What to do about it; null when balanced.")


class SmallClasses(BaseModel):
    floor: int = Field(description="`thresholds.min_class_images`.")
    classes: list[ClassCount] = Field(description="The classes below the floor, with counts.")


class DuplicateGroup(BaseModel):
    kind: Literal["exact", "near"] = Field(
        description='"exact": byte-identical files (same SHA-256); "near": the same picture '
        "re-encoded, resized or lightly edited (perceptual hashes within "
        "`thresholds.near_duplicate_bits`), at least two different files."
    )
    scope: Literal["within_class", "across_classes"] = Field(
        description='"across_classes": one picture under two or more labels.'
    )
    distance: int = Field(
        description="The largest Hamming distance between two of its perceptual hashes (of 64)."
    )
    images: list[ReportImage]


class Duplicates(BaseModel):
    exact: list[DuplicateGroup]
    near: list[DuplicateGroup] = Field(
        description="Never a group of exact copies alone: those are under `exact`."
    )


class LeakedPair(BaseModel):
    kind: Literal["exact", "near"]
    scope: Literal["within_class", "across_classes"]
    distance: int = Field(description="Hamming distance of the two perceptual hashes (of 64).")
    training: ReportImage = Field(description="The copy in the training split.")
    validation: ReportImage = Field(description="The copy in the validation split.")


class Leakage(BaseModel):
    seed: int
    validation_split: float
    training_images: int
    validation_images: int
    count: int = Field(description="Validation images with a copy in training.")
    pairs: list[LeakedPair] = Field(
        description="One per such validation image: its closest copy in training."
    )


class LabelIssue(BaseModel):
    image_id: int
    filename: str
    label: str = Field(description="Its label as uploaded.")
    suggested: str = Field(description="The class the probe predicts for it.")
    confidence: float = Field(description="The probe's probability of `suggested`.")


class LabelReview(BaseModel):
    """Likely mislabelled images, as the worker stored them (`Dataset.label_review`)."""

    method: str
    features: str = Field(description="The frozen backbone whose features the probe read.")
    job_id: str = Field(description="The job that made the review.")
    created_at: datetime
    images_checked: int
    probe_accuracy: float = Field(description="The probe's out-of-fold accuracy.")
    issues: list[LabelIssue]


class Mislabelled(BaseModel):
    review: LabelReview | None = Field(description="null until a job has made one.")
    note: str = Field(description="What the review says, or how to get one.")


class ReportThresholds(BaseModel):
    min_class_images: int
    near_duplicate_bits: int
    max_aspect_ratio: float
    max_balance_ratio: float


def _report_example() -> dict[str, Any]:
    cat = {"id": 1041, "filename": "cats/001.jpg", "label": "cats"}
    dog = {"id": 1093, "filename": "dogs/017.jpg", "label": "dogs"}
    small = {"id": 1102, "filename": "dogs/030.png", "label": "dogs"}
    shape = {**small, "width": 64, "height": 48, "mode": "L"}
    cats, dogs = {"name": "cats", "count": 60}, {"name": "dogs", "count": 20}
    return {
        "dataset_id": "d_0123456789abcdef",
        "images": 80,
        "classes": [cats, dogs],
        "measured": 0,
        "thresholds": {
            "min_class_images": 20,
            "near_duplicate_bits": 6,
            "max_aspect_ratio": 2.5,
            "max_balance_ratio": 2.0,
        },
        "balance": {
            "ratio": 3.0,
            "largest": cats,
            "smallest": dogs,
            "imbalanced": True,
            "note": 'training.class_weight: "balanced" weighs each class by its inverse count.',
        },
        "small_classes": {"floor": 20, "classes": []},
        "duplicates": {
            "exact": [
                {"kind": "exact", "scope": "across_classes", "distance": 0, "images": [cat, dog]}
            ],
            "near": [],
        },
        "leakage": {
            "seed": 0,
            "validation_split": 0.2,
            "training_images": 64,
            "validation_images": 16,
            "count": 1,
            "pairs": [
                {
                    "kind": "exact",
                    "scope": "across_classes",
                    "distance": 0,
                    "training": cat,
                    "validation": dog,
                }
            ],
        },
        "small_images": {"input_size": 96, "count": 1, "images": [shape]},
        "extreme_aspect": {"count": 0, "images": []},
        "grayscale": {"count": 1, "images": [shape]},
        "cmyk": {"count": 0, "images": []},
        "mislabelled": {
            "review": None,
            "note": "No label review yet: run POST /datasets/{id}/advice, or train a job whose "
            "first stage freezes the whole backbone.",
        },
        "warnings": [
            "Classes are imbalanced 3:1 (cats 60, dogs 20) …",
            "1 image appears in both training and validation at seed 0 …",
        ],
    }


class DatasetReport(BaseModel):
    model_config = _example(_report_example())
    dataset_id: str
    images: int
    classes: list[ClassCount]
    measured: int = Field(
        description="Images whose facts this report measured and stored (uploaded before the "
        "service kept them); 0 once every image has them."
    )
    thresholds: ReportThresholds
    balance: Balance
    small_classes: SmallClasses
    duplicates: Duplicates
    leakage: Leakage
    small_images: SmallImages = Field(description="Shorter side below `input_size`: upscaled.")
    extreme_aspect: ImageFinding = Field(
        description="Long side ÷ short side past `thresholds.max_aspect_ratio`: the model "
        "squashes every image to a square."
    )
    grayscale: ImageFinding = Field(description="Stored in a grayscale mode (1, L, LA, I, F…).")
    cmyk: ImageFinding = Field(description="Stored as CMYK: colours shift when made RGB.")
    mislabelled: Mislabelled
    warnings: list[str] = Field(description="One plain sentence per problem found.")


class Progress(BaseModel):
    stage: int = 1
    stages: int = 1
    epoch: int = Field(description="Counted across stages.")
    epochs: int = Field(description="Planned over all stages; early stopping may end sooner.")
    step: int
    steps: int


class JobRead(BaseModel):
    model_config = _example(
        {
            "id": "j_0123456789abcdef",
            "kind": "train",
            "name": "flowers-mobilenet",
            "status": "running",
            "spec": JobSpec.model_config["json_schema_extra"]["examples"][0],  # type: ignore[index]
            "progress": {
                "stage": 1,
                "stages": 1,
                "epoch": 3,
                "epochs": 5,
                "step": 10,
                "steps": 20,
            },
            "history": [
                {
                    "epoch": 1,
                    "stage": 1,
                    "loss": 0.9,
                    "accuracy": 0.6,
                    "val_loss": 0.8,
                    "val_accuracy": 0.7,
                    "seconds": 12.5,
                }
            ],
            "error": None,
            "model_id": None,
            "dataset_id": "d_0123456789abcdef",
            "attempts": 1,
            "created_at": "2026-11-28T12:00:00Z",
            "started_at": "2026-11-28T12:00:01Z",
            "finished_at": None,
        }
    )
    id: str
    kind: JobKind = Field(
        description='"train": trains a model (spec: the job spec); "advice": measures a '
        "dataset for POST /datasets/{dataset_id}/advice (spec: the advice request and "
        'dataset_id); "export": converts a model for POST /models/{model_id}/exports (spec: '
        'model_id and format); "import": reads a server-side folder into a dataset for POST '
        "/datasets/import (spec: the request and the resolved directory). GET /jobs lists one "
        "kind at a time."
    )
    name: str
    status: JobStatus
    # As stored, never re-validated: a job queued before a field or backbone was removed or
    # tightened still reads; the worker says what no longer validates when it runs it.
    spec: Annotated[
        dict[str, Any],
        WithJsonSchema(
            {
                "anyOf": [
                    inline_schema(JobSpec),
                    inline_schema(AdviceSpec),
                    inline_schema(ExportSpec),
                    inline_schema(ImportSpec),
                ]
            }
        ),
    ]
    progress: Progress | None
    history: list[dict[str, int | float]] = Field(
        description="One row per epoch: epoch, stage, the Keras metrics, seconds."
    )
    error: str | None
    model_id: str | None
    dataset_id: str | None = Field(
        description="The dataset it reads; an import's is set when it succeeds: the dataset "
        "it created or grew."
    )
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class ParamCounts(BaseModel):
    trainable: int
    non_trainable: int
    total: int


class ModelRead(BaseModel):
    model_config = _example(
        {
            "id": "m_0123456789abcdef",
            "name": "flowers-mobilenet",
            "version": 3,
            "job_id": "j_0123456789abcdef",
            "dataset_id": "d_0123456789abcdef",
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
    backbone: str
    input_size: int
    classes: list[str]
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
    model_config = _example(
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


class PredictionRead(BaseModel):
    model_config = _example(
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


class EvaluationRead(BaseModel):
    model_config = _example(
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


class EvaluationSample(BaseModel):
    model_config = _example(
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
    model_config = _example(
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


class PredictForm(BaseModel):
    """The multipart form's fields besides `files`. The model is named one way: `model_id`,
    `name` (its latest version), `name` + `version`, or `name` + `alias`."""

    model_id: str | None = None
    name: str | None = Field(None, max_length=200, description="A named model: GET /registry.")
    version: int | None = Field(
        None, ge=1, le=2**31 - 1, description="With `name`: this version of it."
    )
    alias: str | None = Field(
        None, max_length=64, description="With `name`: the version this alias points to."
    )
    top_k: int = Field(5, ge=1, le=1000)
    threshold: float = Field(0.0, ge=0.0, le=1.0, description="Leave out labels below this.")
    explain: bool = Field(
        False, description="Give each returned label its class activation map (`heatmap`)."
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
    model_config = _example({"instances": [{"b64": "iVBORw0KGgo…"}]})
    instances: list[Any] = Field(
        min_length=1, description='Each {"b64": "<base64 image>"}, or {"<input name>": {"b64"}}'
    )
    signature_name: str | None = Field(None, description="Accepted and ignored: one signature.")


class TFServingResponse(BaseModel):
    model_config = _example({"predictions": [[0.93, 0.07]]})
    predictions: list[list[float]]


class TFServingStatus(BaseModel):
    error_code: str = "OK"
    error_message: str = ""


class TFServingVersionStatus(BaseModel):
    version: str = Field(description="The version number, as text (TF Serving's int64).")
    state: Literal["AVAILABLE"] = Field(description="Every stored version can be served.")
    status: TFServingStatus


class TFServingModelStatus(BaseModel):
    """TF Serving's GetModelStatus answer (`GET /v1/models/{name}`)."""

    model_config = _example(
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


# -- the registry: named models, versions, aliases (/registry) -------------------------------


class RegisteredModel(BaseModel):
    model_config = _example(
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
    model_config = _example(
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
        ge=1, le=2**31 - 1, description="The version of the named model to point to."
    )


class AliasRead(BaseModel):
    model_config = _example(
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


# -- strategy advice (POST /datasets/{dataset_id}/advice) ------------------------------------


class AdviceImages(BaseModel):
    total: int
    sampled: int = Field(description="Images whose features were extracted: all, or a sample.")
    smallest_class: int
    median_class: float = Field(description="Images in the median class: the data-size axis.")
    largest_class: int


class AdviceProbe(BaseModel):
    folds: int
    accuracy: float = Field(description="Out-of-fold accuracy on the pretrained features.")
    random_accuracy: float = Field(
        description="The same probe on the same architecture with random weights."
    )
    chance: float = Field(description="The largest class's share: always answering it.")


class AdviceQuadrant(BaseModel):
    data: Literal["little", "much"]
    similarity: Literal["similar", "different"]
    strategy: Literal[1, 2, 3] = Field(
        description="1: train everything; 2: freeze the bottom, fine-tune the top; 3: freeze "
        "the backbone, train the classifier."
    )
    summary: str


class AdviceFeatures(BaseModel):
    key: str | None = Field(description="The feature cache's key; null for random weights.")
    reused: bool = Field(description="Whether the features came from the cache.")
    seconds: dict[str, float]


class AdviceResult(BaseModel):
    images: AdviceImages
    probe: AdviceProbe
    similarity: float = Field(
        description="(accuracy − random_accuracy) / (1 − random_accuracy), clipped to 0..1: the "
        "share of the errors random weights leave that the pretrained features remove."
    )
    quadrant: AdviceQuadrant
    reasons: list[str] = Field(description="The advice in plain words, with the numbers.")
    spec: Annotated[dict[str, Any], WithJsonSchema(inline_schema(JobSpec))] = Field(
        description="A job spec for the strategy: POST it to /jobs as it is."
    )
    features: AdviceFeatures


class AdviceRead(BaseModel):
    model_config = _example(
        {
            "id": "a_0123456789abcdef",
            "dataset_id": "d_0123456789abcdef",
            "job_id": "j_0123456789abcdef",
            "status": "succeeded",
            "error": None,
            "request": AdviceRequest.model_config["json_schema_extra"]["examples"][0],  # type: ignore[index]
            "result": None,
            "created_at": "2026-11-29T12:00:00Z",
        }
    )
    id: str
    dataset_id: str
    job_id: str | None = Field(description="The advice job: GET /jobs/{job_id}/events follows it.")
    status: JobStatus = Field(description="The advice job's status.")
    error: str | None
    request: AdviceRequest
    result: AdviceResult | None = Field(description="Null until the advice job has succeeded.")
    created_at: datetime


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
    agreeing: int = Field(description="Images whose top class is the SavedModel's.")
    agreement: float = Field(description="agreeing / images.")
    bar: float = Field(description="The agreement the format must reach.")
    passed: bool
    max_abs_difference: float = Field(
        description="The largest difference from the SavedModel's probability of any class "
        "of any image."
    )
    mean_abs_difference: float
    accuracy: float = Field(description="The export's top-1 accuracy on the true labels.")
    savedmodel_accuracy: float = Field(description="The SavedModel's, on the same images.")


class ExportReport(BaseModel):
    format: ExportFormat
    file: str = Field(description="The model's file in the archive.")
    file_bytes: int
    labels_file: str = Field(description="One class name a line, in the output's order.")
    classes: list[str]
    input: ExportTensor
    output: ExportTensor
    temperature: float = Field(description="Folded into the last layer, as `serve` applies it.")
    calibration_images: int = Field(
        description="tflite-int8: training-split images the quantization ranges were "
        "calibrated on (else 0)."
    )
    parity: ExportParity
    runtime: str = Field(description="What ran the file for the parity check.")
    converter: str
    seconds: dict[str, float] = Field(description="convert and check.")


class ExportRead(BaseModel):
    model_config = _example(
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


# -- batch prediction --------------------------------------------------------------------------


class BadImage(BaseModel):
    file: str
    reason: str


class BatchPredictionRead(BaseModel):
    model_config = _example(
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


# -- workers (GET /workers; service/workers.py) ------------------------------------------------


class DeviceRead(BaseModel):
    kind: Literal["GPU", "CPU"]
    name: str = Field(description="TensorFlow's physical device name.")
    memory_bytes: int | None = Field(
        None, description="A GPU's memory as TensorFlow may use it; for the CPU, the host's RAM."
    )
    model: str | None = Field(None, description='The GPU as its driver names it: "NVIDIA H200".')


class WorkerRead(BaseModel):
    model_config = _example(
        {
            "id": "gpu-host-1:4242:0123abcd",
            "hostname": "gpu-host-1",
            "pid": 4242,
            "status": "alive",
            "devices": [
                {
                    "kind": "GPU",
                    "name": "/physical_device:GPU:0",
                    "memory_bytes": 150_000_000_000,
                    "model": "NVIDIA H200",
                }
            ],
            "gpus": 1,
            "memory_bytes": 137_438_953_472,
            "job_id": "j_0123456789abcdef",
            "started_at": "2026-11-29T15:00:00Z",
            "heartbeat_at": "2026-11-29T15:10:00Z",
            "heartbeat_age_seconds": 4.2,
            "stopped_at": None,
        }
    )

    id: str = Field(description="The worker's name, as jobs' lease owner.")
    hostname: str
    pid: int
    status: Literal["alive", "lost", "stopped"] = Field(
        description='"alive": its heartbeat is recent; "lost": silent for two leases (it died, '
        'or its host did); "stopped": it shut down cleanly.'
    )
    devices: list[DeviceRead] = Field(description="What it trains on: its GPUs, or the CPU.")
    gpus: int = Field(description="GPUs it claims jobs for (WORKER_GPUS, else its GPUs).")
    memory_bytes: int | None = Field(description="The host's RAM.")
    job_id: str | None = Field(description="The job it runs now.")
    started_at: datetime
    heartbeat_at: datetime
    heartbeat_age_seconds: float
    stopped_at: datetime | None
