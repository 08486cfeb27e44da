"""Response models every domain shares (status, backbones, jobs) and the helpers each
domain's `schemas.py` builds its own with. Each model carries an example."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from service.job_kinds import KINDS, KINDS_DESCRIPTION
from service.jobs import JobStatus
from service.training.spec import JobSpec


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its `$defs` written in place: for a schema given by hand
    (a requestBody, a field read without validation), where no `$ref` can be resolved."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


def example_config(example: dict[str, Any]) -> ConfigDict:
    return ConfigDict(from_attributes=True, json_schema_extra={"examples": [example]})


class Status(BaseModel):
    model_config = example_config({"status": "ok"})
    status: str
    detail: str | None = None


class BackboneRead(BaseModel):
    model_config = example_config(
        {
            "name": "MobileNetV2",
            "default_input_size": 224,
            "min_input_size": 32,
            "weights": ["imagenet", None],
        }
    )
    name: str
    default_input_size: int
    min_input_size: int
    weights: list[str | None]


class BackboneLayer(BaseModel):
    index: int
    name: str
    class_name: str
    params: int


class BackboneLayers(BaseModel):
    model_config = example_config(
        {
            "backbone": "MobileNetV2",
            "input_size": 96,
            "layers": [
                {"index": 0, "name": "input_layer", "class_name": "InputLayer", "params": 0}
            ],
        }
    )
    backbone: str
    input_size: int
    layers: list[BackboneLayer]


class Progress(BaseModel):
    stage: int = 1
    stages: int = 1
    epoch: int = Field(description="Counted across stages.")
    epochs: int = Field(description="Planned over all stages; early stopping may end sooner.")
    step: int
    steps: int


class JobRead(BaseModel):
    model_config = example_config(
        {
            "id": "j_0123456789abcdef",
            "kind": "train",
            "name": "flowers-mobilenet",
            "status": "running",
            "spec": JobSpec.model_config["json_schema_extra"]["examples"][0],  # type: ignore[index]
            "progress": {
                "stage": 1,
                "stages": 1,
                "epoch": 3,
                "epochs": 5,
                "step": 10,
                "steps": 20,
            },
            "history": [
                {
                    "epoch": 1,
                    "stage": 1,
                    "loss": 0.9,
                    "accuracy": 0.6,
                    "val_loss": 0.8,
                    "val_accuracy": 0.7,
                    "seconds": 12.5,
                }
            ],
            "error": None,
            "model_id": None,
            "dataset_id": "d_0123456789abcdef",
            "attempts": 1,
            "created_at": "2026-11-28T12:00:00Z",
            "started_at": "2026-11-28T12:00:01Z",
            "finished_at": None,
        }
    )
    id: str
    # Any stored kind reads, one this version does not run included (queued by another
    # version of the service): the worker fails such a job, naming its kind.
    kind: str = Field(
        description=f"{KINDS_DESCRIPTION}. GET /jobs lists one kind at a time.",
        examples=list(KINDS.names),
    )
    name: str
    status: JobStatus
    # As stored, never re-validated: a job queued before a field or backbone was removed or
    # tightened still reads; the worker says what no longer validates when it runs it.
    spec: Annotated[
        dict[str, Any],
        WithJsonSchema({"anyOf": [inline_schema(kind.spec) for kind in KINDS]}),
    ]
    progress: Progress | None
    history: list[dict[str, int | float]] = Field(
        description="One row per epoch: epoch, stage, the Keras metrics, seconds."
    )
    error: str | None
    model_id: str | None
    dataset_id: str | None = Field(
        description="The dataset it reads; an import's is set when it succeeds: the dataset "
        "it created or grew."
    )
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
