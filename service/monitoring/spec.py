"""What a capture request asks for."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from service.schemas import example_config

# Captured images per model, at most: a policy asking for more is refused.
MAX_CAPTURED_IMAGES = 1_000_000
MAX_CAPTURE_DAYS = 3650


class CapturePolicyWrite(BaseModel):
    model_config = ConfigDict(
        extra="forbid", **example_config({"rate": 0.1, "max_images": 10000, "days": 30})
    )
    rate: float = Field(
        gt=0.0, le=1.0, description="The share of predicted images kept, drawn at random."
    )
    max_images: int = Field(
        10_000,
        ge=1,
        le=MAX_CAPTURED_IMAGES,
        description="Kept at most; past it the oldest captures of the model are deleted.",
    )
    days: int = Field(
        30, ge=1, le=MAX_CAPTURE_DAYS, description="Captures older than this are deleted."
    )
