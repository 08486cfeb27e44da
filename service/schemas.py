"""Response models of the HTTP API (requests: `service.spec`). Each carries an example."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from service.jobs import JobKind, JobStatus
from service.spec import AdviceRequest, AdviceSpec, JobSpec


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
        "dataset_id). GET /jobs lists one kind at a time."
    )
    name: str
    status: JobStatus
    # As stored, never re-validated: a job queued before a field or backbone was removed or
    # tightened still reads; the worker says what no longer validates when it runs it.
    spec: Annotated[
        dict[str, Any],
        WithJsonSchema({"anyOf": [inline_schema(JobSpec), inline_schema(AdviceSpec)]}),
    ]
    progress: Progress | None
    history: list[dict[str, int | float]] = Field(
        description="One row per epoch: epoch, stage, the Keras metrics, seconds."
    )
    error: str | None
    model_id: str | None
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
    name: str
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
    """The multipart form's fields besides `files`."""

    model_id: str
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
