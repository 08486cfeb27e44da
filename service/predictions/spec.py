"""A batch prediction job's stored spec (POST /predictions)."""

from __future__ import annotations

from pydantic import Field

from service.training.spec import StrictModel, WebhookUrl


class BatchPredictionSpec(StrictModel):
    """A batch prediction job's stored spec: the model it resolved to when it was asked for
    (an alias that moves later does not move it), the record, and what to answer."""

    prediction_id: str
    model_id: str
    top_k: int = Field(5, ge=1, le=1000)
    explain: bool = False
    dataset_id: str | None = None  # None: the images are the record's uploaded zip
    webhook_url: WebhookUrl | None = None


# -- server-side import (POST /datasets/import) ------------------------------------------------
