"""Response models of capture and drift."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from service.schemas import example_config


class CapturePolicyRead(BaseModel):
    model_config = example_config(
        {
            "model_id": "m_0123456789abcdef",
            "name": None,
            "alias": None,
            "rate": 0.1,
            "max_images": 10000,
            "days": 30,
            "updated_at": "2026-12-07T09:00:00Z",
        }
    )
    model_id: str | None = Field(None, description="Set on this model version.")
    name: str | None = Field(None, description="Set on this alias of this named model.")
    alias: str | None = None
    rate: float
    max_images: int
    days: int
    updated_at: datetime


class CaptureRead(BaseModel):
    model_config = example_config(
        {
            "id": "c_0123456789abcdef",
            "model_id": "m_0123456789abcdef",
            "request_id": "5f0c8e1a9b2d4c6e8f0a1b2c3d4e5f60",
            "filename": "IMG_2041.jpg",
            "label": "cats",
            "score": 0.58,
            "margin": 0.16,
            "ood_score": 1.7,
            "unknown": False,
            "scores": {"cats": 0.58, "dogs": 0.42},
            "width": 448,
            "height": 336,
            "created_at": "2026-12-07T09:01:12Z",
            "image": "/models/m_0123456789abcdef/captures/c_0123456789abcdef/image",
        }
    )
    id: str
    model_id: str
    request_id: str | None = Field(description="The X-Request-ID of the /predict request.")
    filename: str = Field(description="As the request named it (`instances[i]` for JSON).")
    label: str = Field(description="The model's top label.")
    score: float = Field(description="Its probability.")
    margin: float = Field(
        description="Top probability minus the second: small is uncertain. A multi-label "
        "model's: the smallest distance of a label's probability to its threshold."
    )
    ood_score: float | None = Field(description="null for models without the score.")
    unknown: bool | None
    scores: dict[str, float] = Field(description="Every class's probability.")
    width: int = Field(description="Of the stored JPEG: at most twice the model's input size.")
    height: int
    created_at: datetime
    image: str = Field(description="Where the stored image is.")


class DriftTestRead(BaseModel):
    at: datetime
    statistic: float = Field(description="Kolmogorov–Smirnov D: window against validation.")
    threshold: float = Field(description="The critical D at the false-alarm rate.")
    p_value: float
    unknown_share: float = Field(description="Share of the window's images flagged unknown.")
    drifting: bool


class DriftRead(BaseModel):
    model_config = example_config(
        {
            "model_id": "m_0123456789abcdef",
            "window": 300,
            "window_size": 300,
            "test_every": 25,
            "false_alarm_rate": 0.001,
            "reference_images": 81,
            "drifting": True,
            "statistic": 0.31,
            "threshold": 0.243,
            "p_value": 0.00002,
            "unknown_share": 0.3,
            "tests": [],
        }
    )
    model_id: str
    window: int = Field(description="Images in the window now (this API process's).")
    window_size: int = Field(description="Images a full window holds; tests need it full.")
    test_every: int = Field(description="Images between tests.")
    false_alarm_rate: float = Field(description="Of each test, when nothing has changed.")
    reference_images: int = Field(description="Validation images the window is compared with.")
    drifting: bool
    statistic: float | None = Field(description="The last test's; null before the first.")
    threshold: float | None
    p_value: float | None
    unknown_share: float | None
    tests: list[DriftTestRead] = Field(description="This process's tests, oldest first.")


def capture_read(row: Any, classes: list[str]) -> CaptureRead:
    """A capture row (every column but the image) as the API shows it."""
    columns = dict(row._mapping)
    scores = dict(zip(classes, columns.pop("scores"), strict=False))
    image = f"/models/{row.model_id}/captures/{row.id}/image"
    return CaptureRead(**columns, scores=scores, image=image)
