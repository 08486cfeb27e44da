"""Response models of strategy advice (POST /datasets/{dataset_id}/advice)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, WithJsonSchema

from service.advice.spec import AdviceRequest
from service.jobs import JobStatus
from service.schemas import example_config, inline_schema
from service.training.spec import JobSpec

# -- strategy advice (POST /datasets/{dataset_id}/advice) ------------------------------------


class AdviceImages(BaseModel):
    total: int
    sampled: int = Field(description="Images whose features were extracted: all, or a sample.")
    smallest_class: int
    median_class: float = Field(
        description="Images in the median class (multi-label: label): the data-size axis."
    )
    largest_class: int


class AdviceProbe(BaseModel):
    folds: int
    metric: Literal["accuracy", "mean_average_precision"] = Field(
        "accuracy",
        description="What the probe's three figures are in: accuracy; for a multi-label "
        "dataset, the mean over labels of their average precision (one logistic regression "
        "per label).",
    )
    accuracy: float = Field(description="Out-of-fold score on the pretrained features.")
    random_accuracy: float = Field(
        description="The same probe on the same architecture with random weights."
    )
    chance: float = Field(
        description="Knowing nothing: the largest class's share (always answering it); "
        "multi-label, the labels' mean share of the images."
    )


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
        "share of the errors random weights leave that the pretrained features remove (in the "
        "probe's metric)."
    )
    quadrant: AdviceQuadrant
    reasons: list[str] = Field(description="The advice in plain words, with the numbers.")
    spec: Annotated[dict[str, Any], WithJsonSchema(inline_schema(JobSpec))] = Field(
        description="A job spec for the strategy: POST it to /jobs as it is."
    )
    features: AdviceFeatures


class AdviceRead(BaseModel):
    model_config = example_config(
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
