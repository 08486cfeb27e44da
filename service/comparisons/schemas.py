"""Request and response models of comparisons (POST /comparisons)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from service.schemas import example_config
from service.storage.tables import ID_LENGTH, MAX_INTEGER
from service.training.spec import StrictModel

# At most this many disagreements are stored and answered; `disagreements_total` counts all.
MAX_DISAGREEMENTS = 200


class ComparisonCreate(StrictModel):
    model_config = example_config(
        {
            "models": ["m_0123456789abcdef", "m_fedcba9876543210"],
            "dataset_id": "d_0123456789abcdef",
            "dataset_version": 4,
        }
    )

    models: list[str] = Field(
        min_length=2,
        max_length=2,
        description="Two model ids, a then b: the figures say how b differs from a.",
    )
    dataset_id: str = Field(max_length=ID_LENGTH, description="The images both are scored on.")
    dataset_version: int | None = Field(
        None, ge=1, le=MAX_INTEGER, description="The dataset's version (default: its latest)."
    )


class ModelScore(BaseModel):
    model_id: str
    name: str = Field(description="The model's registry name, as when it was scored.")
    version: int
    accuracy: float
    macro_f1: float = Field(description="Unweighted mean of the per-class F1 scores.")


class AccuracyDifference(BaseModel):
    estimate: float = Field(description="b's accuracy − a's, on these images.")
    low: float = Field(description="The paired bootstrap's 95 % interval: its lower end.")
    high: float


class ClassDifference(BaseModel):
    name: str = Field(description="A class of the evaluation images.")
    images: int
    a: float = Field(description="a's accuracy on this class's images (its recall).")
    b: float
    difference: float = Field(description="b − a.")


class Disagreement(BaseModel):
    image_id: int
    filename: str
    label: str = Field(description="The image's label in the dataset version.")
    answers: list[str] = Field(description="a's answer, then b's.")


class ComparisonRead(BaseModel):
    model_config = example_config(
        {
            "id": "c_0123456789abcdef",
            "status": "succeeded",
            "error": None,
            "job_id": "j_0123456789abcdef",
            "model_ids": ["m_0123456789abcdef", "m_fedcba9876543210"],
            "dataset_id": "d_0123456789abcdef",
            "dataset_version": 4,
            "images": 400,
            "models": [
                {
                    "model_id": "m_0123456789abcdef",
                    "name": "flowers",
                    "version": 2,
                    "accuracy": 0.87,
                    "macro_f1": 0.861,
                },
                {
                    "model_id": "m_fedcba9876543210",
                    "name": "flowers",
                    "version": 3,
                    "accuracy": 0.915,
                    "macro_f1": 0.909,
                },
            ],
            "difference": {"estimate": 0.045, "low": 0.0175, "high": 0.0725},
            "mcnemar_p": 0.0021,
            "b_is_better": True,
            "verdict": "b is better: +4.5 points of accuracy (95 % interval +1.8 to +7.2)",
            "per_class": [
                {"name": "rose", "images": 200, "a": 0.86, "b": 0.92, "difference": 0.06}
            ],
            "disagreements": [
                {
                    "image_id": 17,
                    "filename": "rose/0017.jpg",
                    "label": "rose",
                    "answers": ["tulip", "rose"],
                }
            ],
            "disagreements_total": 31,
            "created_at": "2026-12-08T09:00:00Z",
            "finished_at": "2026-12-08T09:00:40Z",
        }
    )

    id: str
    status: str = Field(description="queued, running, succeeded, failed or cancelled (its job's)")
    error: str | None
    job_id: str | None = Field(description="Its job: progress on GET /jobs/{job_id}/events.")
    model_ids: list[str] = Field(description="a, then b.")
    dataset_id: str | None = Field(description="Null once the dataset is deleted.")
    dataset_version: int
    images: int | None = Field(description="Images both scored; null until the job succeeds.")
    models: list[ModelScore] | None = Field(description="a's figures, then b's.")
    difference: AccuracyDifference | None
    mcnemar_p: float | None = Field(
        description="McNemar's exact test: the chance of a split of the images only one "
        "model gets right at least this uneven if both were as good."
    )
    b_is_better: bool | None = Field(
        description="The difference's whole interval is above zero: the evidence to promote b."
    )
    verdict: str | None = Field(description="The figures in one sentence.")
    per_class: list[ClassDifference] | None
    disagreements: list[Disagreement] | None = Field(
        description=f"Images the two answer differently, the first {MAX_DISAGREEMENTS}."
    )
    disagreements_total: int | None
    created_at: datetime
    finished_at: datetime | None
