"""A comparison job's stored spec (POST /comparisons)."""

from __future__ import annotations

from pydantic import Field

from service.storage.tables import ID_LENGTH, MAX_INTEGER
from service.training.spec import StrictModel


class ComparisonSpec(StrictModel):
    """Two model versions, a and b, scored on one dataset version's images: the record the
    figures go to, and what was resolved when it was asked for (the version's number, so that
    a later edit of the dataset does not change what is compared)."""

    comparison_id: str = Field(max_length=ID_LENGTH)
    model_ids: list[str] = Field(min_length=2, max_length=2)
    dataset_id: str = Field(max_length=ID_LENGTH)
    dataset_version: int = Field(ge=1, le=MAX_INTEGER)
