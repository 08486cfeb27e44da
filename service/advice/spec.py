"""What advice measures a dataset against (POST /datasets/{dataset_id}/advice), and an advice
job's stored spec."""

from __future__ import annotations

from pydantic import ConfigDict, Field

from service.storage.tables import MAX_INTEGER
from service.training.spec import (
    WEBHOOK_DESCRIPTION,
    BackboneSpec,
    Resources,
    StrictModel,
    WebhookUrl,
)


class AdviceRequest(StrictModel):
    """What to measure a dataset against: a backbone, and how much of the dataset to use."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "backbone": {"name": "MobileNetV2", "weights": "imagenet", "input_size": 96},
                    "max_images": 1000,
                }
            ]
        },
    )

    backbone: BackboneSpec
    dataset_version: int | None = Field(
        None,
        ge=1,
        le=MAX_INTEGER,
        description="The dataset's version to measure; default: its latest when asked, "
        "recorded in the advice's request.",
    )
    max_images: int = Field(
        1000,
        ge=10,
        le=20000,
        description="Features are extracted for at most this many images: a stratified sample "
        "of a larger dataset, each class in its share.",
    )
    folds: int = Field(
        5, ge=2, le=10, description="k of the k-fold linear probe (at most the smallest class)."
    )
    much_data_per_class: int = Field(
        500,
        ge=2,
        le=1_000_000,
        description="From how many images in the median class the dataset counts as much data.",
    )
    seed: int = Field(
        0, ge=0, le=MAX_INTEGER, description="Seeds the sample, folds and random init."
    )
    resources: Resources = Field(
        default_factory=Resources, description="Accelerators the job needs to be claimed."
    )
    webhook_url: WebhookUrl | None = Field(None, description=WEBHOOK_DESCRIPTION)


class AdviceSpec(AdviceRequest):
    """An advice job's stored spec: the request and the dataset it is for."""

    dataset_id: str
