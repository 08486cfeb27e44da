"""What GET /searches and GET /searches/{id} answer."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from service.schemas import example_config


class TrialRead(BaseModel):
    number: int = Field(description="In the order the trials finished, from 0.")
    phase: str = Field(
        description='"head": a head configuration on the cached features; "fine_tune": a '
        "finalist trained as a job, its backbone's last `freeze_depth` layers fine-tuned."
    )
    params: dict[str, Any] = Field(
        description="learning_rate, dropout, l2, label_smoothing, pooling, dense (widths as "
        '"128,64"; "" for none), and for fine_tune the freeze_depth.'
    )
    scores: list[float] = Field(
        description="The search's `metric` on the validation split after each epoch "
        "(fine_tune: each fine-tuning epoch)."
    )
    value: float | None = Field(description="The last score: what the trial is ranked by.")
    val_loss: float | None
    state: str = Field(
        description="complete, pruned (by the median or successive-halving pruner) or "
        "stopped (the budget's time ran out)."
    )
    reason: str = Field(description="Why it stopped, in a sentence.")
    seconds: float
    created_at: datetime


class BestTrial(BaseModel):
    trial: int
    spec: dict[str, Any] = Field(description="The trial's job spec: POST /jobs takes it as it is.")


class RangeTestRead(BaseModel):
    learning_rates: list[float]
    losses: list[float] = Field(description="The head's loss at each learning rate of the ramp.")
    picked: float = Field(description="A tenth of the rate of the lowest smoothed loss.")
    seconds: float


class SearchRead(BaseModel):
    model_config = example_config(
        {
            "id": "s_0123456789abcdef",
            "status": "succeeded",
            "error": None,
            "job_id": "j_0123456789abcdef",
            "dataset_id": "d_0123456789abcdef",
            "dataset_version": 3,
            "metric": "accuracy",
            "request": {
                "backbone": {"name": "MobileNetV2", "weights": "imagenet", "input_size": 160},
                "budget": {"seconds": 600},
            },
            "range_test": {
                "learning_rates": [1e-6, 1e-5, 1e-4, 1e-3, 1e-2],
                "losses": [2.31, 2.3, 2.1, 1.2, 3.9],
                "picked": 1e-4,
                "seconds": 1.2,
            },
            "trials": [
                {
                    "number": 0,
                    "phase": "head",
                    "params": {
                        "learning_rate": 0.0008,
                        "dropout": 0.21,
                        "l2": 1e-5,
                        "label_smoothing": 0.05,
                        "pooling": "avg",
                        "dense": "128",
                    },
                    "scores": [0.62, 0.78, 0.81],
                    "value": 0.81,
                    "val_loss": 0.58,
                    "state": "complete",
                    "reason": "completed its 3 epochs",
                    "seconds": 1.4,
                    "created_at": "2026-12-10T09:00:03Z",
                }
            ],
            "trials_total": 74,
            "best": {"trial": 71, "spec": {"dataset_id": "d_0123456789abcdef"}},
            "trained_job_id": None,
            "created_at": "2026-12-10T09:00:00Z",
            "finished_at": "2026-12-10T09:10:00Z",
        }
    )

    id: str
    status: str = Field(description="queued, running, succeeded, failed or cancelled (its job's)")
    error: str | None
    job_id: str | None = Field(description="Its job: trials on GET /jobs/{job_id}/events.")
    dataset_id: str | None = Field(description="Null once the dataset is deleted.")
    dataset_version: int
    metric: Literal["accuracy", "mean_average_precision"] = Field(
        description="What the trials' scores are: validation accuracy; for a multi-label "
        "dataset, the labels' mean average precision (Keras's area under each label's "
        "precision-recall curve, averaged)."
    )
    request: dict[str, Any] = Field(description="The request, every default filled in.")
    range_test: RangeTestRead | None = Field(description="The learning-rate range test, once run.")
    trials: list[TrialRead] = Field(
        description="A page of the finished trials in their order (`limit`, `cursor`; the "
        'Link header\'s rel="next" names the next page).'
    )
    trials_total: int
    best: BestTrial | None = Field(description="Once done: the best trial and its spec.")
    trained_job_id: str | None = Field(
        description="With train_best: the training job queued with the best spec."
    )
    created_at: datetime
    finished_at: datetime | None
