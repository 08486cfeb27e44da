"""The job spec: what to train. Shared by the API (which validates it), the worker and ML,
and the parts other kinds' specs are made of (the backbone, resources, the webhook).

Everything here is checkable without TensorFlow; the one check that needs the backbone's
layer names (`freeze.trainable_from`) is made by the API with `ml.build.backbone_layer_names`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AnyUrl,
    BaseModel,
    ConfigDict,
    Field,
    UrlConstraints,
    field_validator,
    model_validator,
)

from service.backbones import BACKBONES
from service.storage.tables import ID_LENGTH, MAX_INTEGER, NAME_LENGTH, URL_LENGTH

WEIGHTS_DESCRIPTION = (
    '"imagenet", null (random initialisation), "model:<model_id>" (the backbone of a model '
    'this service trained) or "file:<weights_id>" (a weights file uploaded to /weights)'
)
WEIGHTS_PREFIXES = ("model:", "file:")
MAX_STAGES = 10

# Where a job's end is announced (service/webhooks.py): http or https, as long as the column.
WebhookUrl = Annotated[
    AnyUrl,
    UrlConstraints(max_length=URL_LENGTH, allowed_schemes=["http", "https"], host_required=True),
]
WEBHOOK_DESCRIPTION = (
    "Announce the job's end (succeeded, failed, cancelled) with a signed POST to this http(s) "
    "URL: docs/api.md, Webhooks."
)


def _valid_unicode(value: Any) -> Any:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                "text must be valid Unicode: a lone surrogate escape (\\ud800–\\udfff) is "
                "not a character"
            ) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _valid_unicode(key)
            _valid_unicode(item)
    elif isinstance(value, list):
        for item in value:
            _valid_unicode(item)
    return value


class StrictModel(BaseModel):
    """A request or stored spec: unknown fields refused, text valid Unicode."""

    model_config = ConfigDict(extra="forbid")

    # JSON may escape lone surrogates; Python keeps them, and no database or answer can
    # encode them: refuse them here, naming the field, instead of failing when stored.
    @field_validator("*", mode="before")
    @classmethod
    def _valid_text(cls, value: Any) -> Any:
        return _valid_unicode(value)


class BackboneSpec(StrictModel):
    name: str = Field(description="A name from GET /backbones.", examples=["MobileNetV2"])
    weights: str | None = Field("imagenet", description=WEIGHTS_DESCRIPTION)
    input_size: int | None = Field(
        None, description="Square input side in pixels; default: the backbone's own.", ge=1, le=2048
    )

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in BACKBONES:
            raise ValueError(f"unknown backbone {name!r}; GET /backbones lists the choices")
        return name

    @field_validator("weights")
    @classmethod
    def _weights_form(cls, weights: str | None) -> str | None:
        if weights is None or weights == "imagenet":
            return weights
        for prefix in WEIGHTS_PREFIXES:
            if weights.startswith(prefix) and len(weights) > len(prefix):
                return weights
        raise ValueError(f"weights must be {WEIGHTS_DESCRIPTION}, got {weights!r}")

    @model_validator(mode="after")
    def _size(self) -> BackboneSpec:
        backbone = BACKBONES[self.name]
        if self.input_size is None:
            self.input_size = backbone.default_input_size
        if self.input_size < backbone.min_input_size:
            raise ValueError(
                f"input_size {self.input_size} is below {self.name}'s minimum of "
                f"{backbone.min_input_size} pixels"
            )
        return self

    @property
    def stored_weights(self) -> tuple[str, str] | None:
        """("model", id) or ("file", id) for weights the service stores; else None."""
        for prefix in WEIGHTS_PREFIXES:
            if self.weights and self.weights.startswith(prefix):
                return prefix.removesuffix(":"), self.weights.removeprefix(prefix)
        return None

    @property
    def pretrained(self) -> bool:
        return self.weights is not None


class HeadSpec(StrictModel):
    pooling: Literal["avg", "max", "flatten"] = Field(
        "avg", description="GlobalAveragePooling2D, GlobalMaxPooling2D or Flatten."
    )
    dense: list[int] = Field(default_factory=list, description="Hidden Dense widths (ReLU).")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="Dropout before the output layer.")
    l2: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="L2 penalty on the head's Dense kernels (Keras's kernel_regularizer); 0: none.",
    )

    @field_validator("dense")
    @classmethod
    def _positive(cls, widths: list[int]) -> list[int]:
        if any(width < 1 for width in widths):
            raise ValueError("every dense width must be a positive integer")
        return widths


class FreezeSpec(StrictModel):
    mode: Literal["backbone", "partial", "none"] = Field(
        "backbone",
        description='"backbone": only the head trains; "partial": backbone layers from '
        '`trainable_from` on train; "none": everything trains.',
    )
    trainable_from: str | int | None = Field(
        None,
        description="With mode partial: a backbone layer name, or -N for the last N layers.",
        examples=["block_16_expand", -20],
    )
    batchnorm: Literal["frozen", "trainable"] | None = Field(
        None,
        description='"frozen": BatchNormalization layers stay frozen in inference mode; '
        '"trainable": they train. Default: frozen with pretrained weights, trainable with null.',
    )

    @model_validator(mode="after")
    def _trainable_from_fits_mode(self) -> FreezeSpec:
        if self.mode == "partial" and self.trainable_from is None:
            raise ValueError("freeze.mode 'partial' needs freeze.trainable_from")
        if self.mode != "partial" and self.trainable_from is not None:
            raise ValueError("freeze.trainable_from is only used with freeze.mode 'partial'")
        if isinstance(self.trainable_from, int) and self.trainable_from >= 0:
            raise ValueError("freeze.trainable_from as a number must be negative: -N")
        return self


Optimizer = Literal["adam", "sgd", "rmsprop", "adamw"]
OPTIMIZER_DESCRIPTION = "adam, sgd (momentum 0.9, Nesterov), rmsprop or adamw (weight decay 0.004)."


class AugmentSpec(StrictModel):
    """Keras preprocessing layers inside the model, active only while training."""

    flip: Literal["horizontal", "vertical", "horizontal_and_vertical"] | None = Field(
        None, description="RandomFlip mode."
    )
    rotation: float = Field(
        0.0, ge=0.0, le=1.0, description="RandomRotation factor, a fraction of 2π."
    )
    zoom: float = Field(0.0, ge=0.0, lt=1.0, description="RandomZoom height/width factor.")
    contrast: float = Field(0.0, ge=0.0, lt=1.0, description="RandomContrast factor.")

    @property
    def active(self) -> bool:
        return bool(self.flip or self.rotation or self.zoom or self.contrast)


class EarlyStoppingSpec(StrictModel):
    monitor: Literal["val_loss", "val_accuracy", "loss", "accuracy"] = "val_loss"
    patience: int = Field(3, ge=0, le=1000, description="Epochs without improvement to wait.")
    min_delta: float = Field(0.0, ge=0.0, description="The least change that counts.")


class TrainingSpec(StrictModel):
    epochs: int = Field(5, ge=1, le=1000)
    batch_size: int = Field(32, ge=1, le=4096)
    optimizer: Optimizer = Field("adam", description=OPTIMIZER_DESCRIPTION)
    learning_rate: float = Field(1e-3, gt=0, le=10)
    validation_split: float = Field(0.2, ge=0.0, lt=1.0)
    seed: int = Field(0, ge=0, le=MAX_INTEGER)
    augment: AugmentSpec | None = Field(
        None,
        description="Random flip, rotation, zoom and contrast, inside the model, training only.",
        examples=[{"flip": "horizontal", "rotation": 0.1, "zoom": 0.1, "contrast": 0.1}],
    )
    early_stopping: EarlyStoppingSpec | None = Field(
        None,
        description="Stop a stage when `monitor` stops improving; the best weights are kept.",
        examples=[{"monitor": "val_loss", "patience": 3}],
    )
    class_weight: Literal["balanced"] | dict[str, float] | None = Field(
        None,
        description='"balanced" (n_samples / (n_classes × count), from the training split) or '
        "a weight per class name (others 1.0).",
        examples=["balanced", {"cats": 2.0}],
    )
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    calibrate: bool = Field(
        True,
        description="Fit a temperature T on the validation split after training (temperature "
        "scaling: the served probabilities become softmax(log p / T), the top class never "
        "changes); nothing is fitted without a validation split.",
    )
    label_precision: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Multi-label datasets only: fit each label's threshold to reach this "
        "precision on the validation split (the lowest threshold that does, for the best "
        "recall), instead of maximising its F1; a label that cannot reach it keeps its "
        "max-F1 threshold, and the evaluation says so.",
    )
    unknown_rate: float = Field(
        0.05,
        gt=0.0,
        lt=1.0,
        description="The share of images like the training ones that the model's unknown-input "
        "threshold flags, fitted on the validation split (predictions' `unknown`; a request "
        "may set its own).",
    )
    mixed_precision: bool = Field(
        False,
        description="Compute in 16 bits, keeping the weights in float32: mixed_float16 on a "
        "GPU (with loss scaling), mixed_bfloat16 on a CPU. The last Dense and its softmax stay "
        "float32, and the stored model takes float32 pixels as always.",
    )

    @field_validator("class_weight")
    @classmethod
    def _positive_weights(
        cls, weights: Literal["balanced"] | dict[str, float] | None
    ) -> Literal["balanced"] | dict[str, float] | None:
        if isinstance(weights, dict) and any(value <= 0 for value in weights.values()):
            raise ValueError("every class weight must be positive")
        return weights

    @model_validator(mode="after")
    def _monitor_needs_validation(self) -> TrainingSpec:
        stopping = self.early_stopping
        if stopping and stopping.monitor.startswith("val_") and self.validation_split == 0:
            raise ValueError(
                f"early_stopping.monitor {stopping.monitor!r} needs validation_split > 0"
            )
        return self

    @property
    def augmenting(self) -> bool:
        return self.augment is not None and self.augment.active


class FineTuneStage(StrictModel):
    """A further stage: apply `freeze`, recompile with a fresh optimizer, train on."""

    freeze: FreezeSpec
    epochs: int = Field(5, ge=1, le=1000)
    learning_rate: float = Field(1e-5, gt=0, le=10)
    optimizer: Optimizer | None = Field(None, description="Default: training.optimizer.")


class Resources(StrictModel):
    """Accelerators a job needs: only a worker with at least as many claims it."""

    gpus: int = Field(
        0,
        ge=0,
        le=64,
        description="GPUs the job needs; a worker with fewer (WORKER_GPUS) never claims it, "
        "and the job waits queued while no such worker runs.",
    )


class Stage(BaseModel):
    """One training stage, the first from the job's own fields, the rest from `fine_tune`."""

    number: int
    freeze: FreezeSpec
    epochs: int
    learning_rate: float
    optimizer: Optimizer


class JobSpec(StrictModel):
    """The normalised job body: every default filled in."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "dataset_id": "d_0123456789abcdef",
                    "name": "flowers-mobilenet",
                    "backbone": {"name": "MobileNetV2", "weights": "imagenet", "input_size": 224},
                    "head": {"pooling": "avg", "dense": [128], "dropout": 0.2},
                    "freeze": {"mode": "backbone", "batchnorm": "frozen"},
                    "training": {
                        "epochs": 5,
                        "batch_size": 32,
                        "optimizer": "adam",
                        "learning_rate": 0.001,
                        "validation_split": 0.2,
                        "seed": 0,
                    },
                }
            ]
        },
    )

    dataset_id: str
    dataset_version: int | None = Field(
        None,
        ge=1,
        le=MAX_INTEGER,
        description="The dataset's version to train on (GET /datasets/{id}/versions); "
        "default: its latest when the job is submitted, recorded here in the stored spec. The "
        "job trains on exactly that version's images and labels, whatever changes after.",
    )
    name: str | None = Field(None, max_length=NAME_LENGTH)
    backbone: BackboneSpec
    head: HeadSpec = Field(default_factory=HeadSpec)
    freeze: FreezeSpec = Field(default_factory=FreezeSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    fine_tune: list[FineTuneStage] = Field(
        default_factory=list,
        max_length=MAX_STAGES - 1,
        description="Further stages after the first, e.g. unfreeze the top and train on at a "
        "low learning rate.",
        examples=[[{"freeze": {"mode": "partial", "trainable_from": -20}, "epochs": 5}]],
    )
    resources: Resources = Field(
        default_factory=Resources, description="Accelerators the job needs to be claimed."
    )
    webhook_url: WebhookUrl | None = Field(None, description=WEBHOOK_DESCRIPTION)
    parent_model_id: str | None = Field(
        None,
        max_length=ID_LENGTH,
        description="The model this job retrains (POST /models/{model_id}/retrain sets it): "
        "recorded as the new model's parent.",
    )

    @model_validator(mode="after")
    def _batchnorm_default(self) -> JobSpec:
        # Random-init BN statistics are meaningless in inference mode: let them train.
        default = "frozen" if self.backbone.pretrained else "trainable"
        for freeze in [self.freeze, *(stage.freeze for stage in self.fine_tune)]:
            if freeze.batchnorm is None:
                freeze.batchnorm = default
        return self

    @property
    def stages(self) -> list[Stage]:
        training = self.training
        first = Stage(
            number=1,
            freeze=self.freeze,
            epochs=training.epochs,
            learning_rate=training.learning_rate,
            optimizer=training.optimizer,
        )
        return [first] + [
            Stage(
                number=number,
                freeze=stage.freeze,
                epochs=stage.epochs,
                learning_rate=stage.learning_rate,
                optimizer=stage.optimizer or training.optimizer,
            )
            for number, stage in enumerate(self.fine_tune, start=2)
        ]

    @property
    def trains_batchnorm(self) -> bool:
        """Whether any stage lets BatchNormalization layers train (and so leave inference mode)."""
        return any(
            stage.freeze.mode != "backbone" and stage.freeze.batchnorm == "trainable"
            for stage in self.stages
        )

    @property
    def input_size(self) -> int:
        assert self.backbone.input_size is not None
        return self.backbone.input_size


class RetrainRequest(StrictModel):
    """POST /models/{model_id}/retrain: the model's own spec, on another version of its
    dataset, starting from its weights."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"dataset_version": 5, "warm_start": True}]}
    )

    dataset_version: int | None = Field(
        None, ge=1, le=MAX_INTEGER, description="The version to train on (default: the latest)."
    )
    warm_start: bool = Field(
        True,
        description="Start from this model's trained backbone (its weights as `model:<id>`); "
        "false: from the backbone weights its own job started from.",
    )
