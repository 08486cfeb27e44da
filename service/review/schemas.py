"""What the review queue answers (GET /models/{model_id}/review) and what marking takes."""

from __future__ import annotations

from pydantic import BaseModel, Field

from service.datasets.spec import ImageRef
from service.schemas import example_config
from service.training.spec import StrictModel

MAX_REVIEW_LIMIT = 100
# Images marked in one request, at most.
MAX_MARKS = 1000


class ReviewItem(BaseModel):
    capture_id: str | None = Field(None, description="A captured prediction, or…")
    image_id: int | None = Field(None, description="…an image of the dataset's pool.")
    filename: str
    image_url: str = Field(description="Where its bytes are (with the API key, as any path).")
    suggestion: str = Field(description="The model's top label for it.")
    labels: list[str] | None = Field(
        None,
        description="A multi-label model's answer: every label reaching its threshold (the "
        "set to accept); None for a single-label model.",
    )
    score: float = Field(description="The suggestion's probability.")
    margin: float = Field(
        description="The top probability minus the second's; a multi-label model's: the "
        "smallest distance of a label's probability to its threshold."
    )
    ood_score: float | None = Field(
        None, description="How unlike the model's training images it is (None: no score)."
    )
    reason: str = Field(description="Why it is here.")


class ReviewQueue(BaseModel):
    model_config = example_config(
        {
            "model_id": "m_0123456789abcdef",
            "dataset_id": "d_0123456789abcdef",
            "dataset_version": 5,
            "classes": ["cats", "dogs"],
            "method": "uncertainty then diversity: …",
            "features": "backbone",
            "candidates": {"captures": 180, "pool": 200},
            "items": [
                {
                    "capture_id": "c_0123456789abcdef",
                    "image_id": None,
                    "filename": "IMG_0412.jpg",
                    "image_url": "/models/m_0123456789abcdef/captures/c_0123456789abcdef/image",
                    "suggestion": "cats",
                    "score": 0.51,
                    "margin": 0.02,
                    "ood_score": 0.4,
                    "reason": "margin 0.02 (cats 0.51, dogs 0.49); unlike those labelled or "
                    "above (distance 0.31)",
                }
            ],
            "unknowns": [],
            "labelled_since_model": 12,
            "labelled_compared": 200,
        }
    )
    model_id: str
    dataset_id: str = Field(description="Where labels go: the model's dataset.")
    dataset_version: int = Field(description="The dataset's latest version, which labels extend.")
    classes: list[str] = Field(description="The model's classes.")
    thresholds: list[float] | None = Field(
        None,
        description="A multi-label model's threshold per label (as `classes`): label its "
        "images with sets (`labels`); None for a single-label model.",
    )
    method: str = Field(description="How the queue is ordered.")
    features: str = Field(
        description='"backbone": diversity measured on the backbone\'s features; "scores": on '
        "the model's probabilities (a model stored before the `features` signature)."
    )
    candidates: dict[str, int] = Field(
        description="Images looked at: the newest unlabelled captures and pool images."
    )
    items: list[ReviewItem] = Field(description="Most worth labelling first.")
    unknowns: list[ReviewItem] = Field(
        description="Past the model's unknown threshold, or marked unknown by a person: "
        "perhaps a class the model does not have. Strangest first."
    )
    labelled_since_model: int = Field(
        description="Images the dataset's latest version holds that the model's did not."
    )
    labelled_compared: int = Field(
        description="Labelled images of the dataset's latest version (the newest, up to 200) "
        "that diversity measures distance from: an image like one of them waits."
    )


class ReviewMarks(StrictModel):
    """Images of a model's queue a person says fit none of its classes."""

    model_config = example_config({"unknown": [{"capture_id": "c_0123456789abcdef"}]})

    unknown: list[ImageRef] = Field(min_length=1, max_length=MAX_MARKS)


class ReviewMarked(BaseModel):
    marked: int = Field(description="Images newly marked (those marked before count once).")
