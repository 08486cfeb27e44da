"""From a trial's parameters to the job spec it trains, and back: what `best.spec` and
"Train this" hand to `POST /jobs` as it is. No TensorFlow, no Optuna."""

from __future__ import annotations

from typing import Any

from service.problems import Invalid
from service.searches.spec import SearchCreate
from service.training.spec import JobSpec

# A finalist fine-tunes at this fraction of its head's learning rate (the Keras guide's
# fine-tuning stage runs at a rate 10 to 100 times lower than the head's).
FINE_TUNE_RATE = 0.1
HEAD = "head"
FINE_TUNE = "fine_tune"


def widths(choice: str) -> list[int]:
    """A dense choice as Optuna holds it ("128,64"; "" for none) as the head's widths."""
    return [int(width) for width in choice.split(",") if width]


def choice(widths: list[int]) -> str:
    return ",".join(str(width) for width in widths)


def job_spec(search: SearchCreate, params: dict[str, Any], dataset_version: int | None) -> JobSpec:
    """The training job a trial's parameters describe: the head trained on the frozen
    backbone for `head_epochs`, then, with a freeze depth N > 0, the backbone's last N layers
    fine-tuned with it for `fine_tune_epochs`."""
    rate = float(params["learning_rate"])
    depth = int(params.get("freeze_depth", 0))
    fine_tune = [
        {
            "freeze": {"mode": "partial", "trainable_from": -depth},
            "epochs": search.fine_tune_epochs,
            "learning_rate": rate * FINE_TUNE_RATE,
        }
    ]
    return JobSpec.model_validate(
        {
            "dataset_id": search.dataset_id,
            "dataset_version": dataset_version,
            "name": search.name,
            "backbone": search.backbone.model_dump(),
            "head": {
                "pooling": params["pooling"],
                "dense": widths(params["dense"]),
                "dropout": float(params["dropout"]),
                "l2": float(params["l2"]),
            },
            "freeze": {"mode": "backbone"},
            "training": {
                "epochs": search.head_epochs,
                "batch_size": search.batch_size,
                "optimizer": search.optimizer,
                "learning_rate": rate,
                "validation_split": search.validation_split,
                "seed": search.seed,
                "label_smoothing": float(params["label_smoothing"]),
            },
            "fine_tune": fine_tune if depth > 0 else [],
            "resources": search.resources.model_dump(),
        }
    )


def default_params(search: SearchCreate) -> dict[str, Any]:
    """The space's plainest point: the range test's head (no hidden layer, its first pooling,
    the least regularisation), at a learning rate the test replaces."""
    space = search.space
    return {
        "learning_rate": 1e-3,
        "dropout": space.dropout[0],
        "l2": space.l2[0],
        "label_smoothing": space.label_smoothing[0],
        "pooling": space.pooling[0],
        "dense": choice(min(space.dense, key=len)),
    }


def default_depths(layers: int) -> list[int]:
    """Freeze depths for a backbone of `layers` layers: none, its top tenth, its top third
    (the advice's fine-tuning share)."""
    return sorted({0, max(1, round(layers / 10)), max(1, round(layers / 3))})


def check_freeze_depths(search: SearchCreate, layers: int) -> None:
    """Every freeze depth the space names leaves some of the backbone's `layers` frozen:
    Invalid naming `space.freeze_depths` otherwise."""
    depths = search.space.freeze_depths or []
    if any(depth >= layers for depth in depths):
        raise Invalid(
            f"{search.backbone.name} has {layers} layers: fine-tune fewer than that "
            f"(freeze depths {depths})",
            field=("space", "freeze_depths"),
        )
