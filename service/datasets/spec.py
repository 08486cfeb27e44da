"""A server-side import (POST /datasets/import): the request, and the import job's spec."""

from __future__ import annotations

from pydantic import ConfigDict, Field

from service.storage.tables import ID_LENGTH, NAME_LENGTH
from service.training.spec import WEBHOOK_DESCRIPTION, StrictModel, WebhookUrl


class ImportRequest(StrictModel):
    """A directory of class folders on the service's host to make a dataset of."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"path": "flowers/2026-11", "name": "flowers"}]},
    )

    path: str = Field(
        min_length=1,
        max_length=4000,
        description="The directory, relative to IMPORT_ROOT (or absolute inside it).",
    )
    name: str | None = Field(
        None, max_length=NAME_LENGTH, description="The new dataset's name; default: the folder's."
    )
    dataset_id: str | None = Field(
        None,
        max_length=ID_LENGTH,
        description="Add the images to this dataset instead of creating one (duplicates "
        "skipped, as with POST /datasets/{dataset_id}/images).",
    )
    webhook_url: WebhookUrl | None = Field(None, description=WEBHOOK_DESCRIPTION)


class ImportSpec(ImportRequest):
    """An import job's stored spec: the request, the directory resolved inside the root."""

    directory: str = Field(description="The resolved absolute directory the worker reads.")
