"""The job spec: what to train. Shared by the API (which validates it), the worker and ML.

Everything here is checkable without TensorFlow; the one check that needs the backbone's
layer names (`freeze.trainable_from`) is made by the API with `ml.build.backbone_layer_names`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.ml.backbones import BACKBONES

WEIGHTS_DESCRIPTION = (
    '"imagenet", null (random initialisation) or "model:<model_id>" '
    "(the backbone of a model this service trained)"
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackboneSpec(_Strict):
    name: str = Field(description="A name from GET /backbones.", examples=["MobileNetV2"])
    weights: str | None = Field("imagenet", description=WEIGHTS_DESCRIPTION)
    input_size: int | None = Field(
        None, description="Square input side in pixels; default: the backbone's own.", ge=1
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
        if weights.startswith("model:") and len(weights) > len("model:"):
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
    def source_model_id(self) -> str | None:
        if self.weights and self.weights.startswith("model:"):
            return self.weights.removeprefix("model:")
        return None


class HeadSpec(_Strict):
    pooling: Literal["avg", "max", "flatten"] = Field(
        "avg", description="GlobalAveragePooling2D, GlobalMaxPooling2D or Flatten."
    )
    dense: list[int] = Field(default_factory=list, description="Hidden Dense widths (ReLU).")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="Dropout before the output layer.")

    @field_validator("dense")
    @classmethod
    def _positive(cls, widths: list[int]) -> list[int]:
        if any(width < 1 for width in widths):
            raise ValueError("every dense width must be a positive integer")
        return widths


class FreezeSpec(_Strict):
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


class TrainingSpec(_Strict):
    epochs: int = Field(5, ge=1, le=1000)
    batch_size: int = Field(32, ge=1, le=4096)
    optimizer: Literal["adam", "sgd", "rmsprop", "adamw"] = "adam"
    learning_rate: float = Field(1e-3, gt=0, le=10)
    validation_split: float = Field(0.2, ge=0.0, lt=1.0)
    seed: int = Field(0, ge=0, le=2**31 - 1)


class JobSpec(_Strict):
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
    name: str | None = Field(None, max_length=200)
    backbone: BackboneSpec
    head: HeadSpec = Field(default_factory=HeadSpec)
    freeze: FreezeSpec = Field(default_factory=FreezeSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)

    @model_validator(mode="after")
    def _batchnorm_default(self) -> JobSpec:
        if self.freeze.batchnorm is None:
            # Random-init BN statistics are meaningless in inference mode: let them train.
            self.freeze.batchnorm = "trainable" if self.backbone.weights is None else "frozen"
        return self

    @property
    def input_size(self) -> int:
        assert self.backbone.input_size is not None
        return self.backbone.input_size
