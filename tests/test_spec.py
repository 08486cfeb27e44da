"""The job spec's own rules, checked without TensorFlow, a database or a server.

The figures expected here (sizes, minimums) are Keras's documented ones, written out, not
read back from the registry the code uses.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from service.training.spec import MAX_STAGES, FreezeSpec, JobSpec, TrainingSpec


def spec(**parts: Any) -> JobSpec:
    """A JobSpec from the two required fields plus `parts`, each merged into its section."""
    body: dict[str, Any] = {"dataset_id": "d_1", "backbone": {"name": "MobileNetV2"}}
    for key, value in parts.items():
        body[key] = {**body[key], **value} if isinstance(body.get(key), dict) else value
    return JobSpec.model_validate(body)


def problem(**parts: Any) -> tuple[tuple[str | int, ...], str]:
    """Where the one validation error is, and its message."""
    with pytest.raises(ValidationError) as caught:
        spec(**parts)
    errors = caught.value.errors(include_url=False)
    assert len(errors) == 1, errors
    return tuple(errors[0]["loc"]), errors[0]["msg"]


def test_defaults_fill_every_section() -> None:
    job = spec()
    assert job.backbone.weights == "imagenet" and job.input_size == 224
    assert job.head.pooling == "avg" and job.head.dense == [] and job.head.dropout == 0.2
    assert job.freeze.mode == "backbone" and job.freeze.trainable_from is None
    assert job.training.epochs == 5 and job.training.validation_split == 0.2
    assert job.fine_tune == [] and [stage.number for stage in job.stages] == [1]


@pytest.mark.parametrize(
    ("name", "default_size"),
    [("MobileNetV2", 224), ("InceptionV3", 299), ("EfficientNetB3", 300), ("NASNetLarge", 331)],
)
def test_input_size_defaults_to_the_backbones_own(name: str, default_size: int) -> None:
    assert spec(backbone={"name": name}).input_size == default_size


def test_unknown_backbone_is_named() -> None:
    loc, message = problem(backbone={"name": "NoSuchNet"})
    assert loc == ("backbone", "name")
    assert "'NoSuchNet'" in message and "GET /backbones" in message


@pytest.mark.parametrize(("name", "minimum"), [("MobileNetV2", 32), ("InceptionV3", 75)])
def test_input_size_below_the_backbones_minimum(name: str, minimum: int) -> None:
    assert spec(backbone={"name": name, "input_size": minimum}).input_size == minimum
    loc, message = problem(backbone={"name": name, "input_size": minimum - 1})
    assert loc == ("backbone",)
    assert f"input_size {minimum - 1} is below {name}'s minimum of {minimum}" in message


@pytest.mark.parametrize("size", [0, -5, 2049])
def test_input_size_out_of_range(size: int) -> None:
    loc, _ = problem(backbone={"input_size": size})
    assert loc == ("backbone", "input_size")


@pytest.mark.parametrize(
    ("weights", "stored"),
    [
        ("imagenet", None),
        (None, None),
        ("model:m_1", ("model", "m_1")),
        ("file:w_2", ("file", "w_2")),
    ],
)
def test_weights_forms(weights: str | None, stored: tuple[str, str] | None) -> None:
    backbone = spec(backbone={"weights": weights}).backbone
    assert backbone.weights == weights and backbone.stored_weights == stored
    assert backbone.pretrained == (weights is not None)


@pytest.mark.parametrize("weights", ["bogus", "model:", "file:", "model", "ImageNet", ""])
def test_other_weights_are_refused_listing_the_forms(weights: str) -> None:
    loc, message = problem(backbone={"weights": weights})
    assert loc == ("backbone", "weights")
    assert repr(weights) in message and '"model:<model_id>"' in message


@pytest.mark.parametrize("trainable_from", ["block_16_expand", -20, -1])
def test_partial_takes_a_layer_name_or_a_negative_count(trainable_from: str | int) -> None:
    freeze = spec(freeze={"mode": "partial", "trainable_from": trainable_from}).freeze
    assert freeze.trainable_from == trainable_from


@pytest.mark.parametrize(
    ("freeze", "expected"),
    [
        ({"mode": "partial"}, "'partial' needs freeze.trainable_from"),
        ({"mode": "partial", "trainable_from": 0}, "must be negative"),
        ({"mode": "partial", "trainable_from": 5}, "must be negative"),
        ({"mode": "backbone", "trainable_from": -3}, "only used with freeze.mode 'partial'"),
        ({"mode": "none", "trainable_from": "block_1"}, "only used with freeze.mode 'partial'"),
    ],
)
def test_trainable_from_rules(freeze: dict[str, Any], expected: str) -> None:
    loc, message = problem(freeze=freeze)
    assert loc == ("freeze",) and expected in message


@pytest.mark.parametrize(
    ("weights", "batchnorm"),
    [("imagenet", "frozen"), ("model:m_1", "frozen"), ("file:w_1", "frozen"), (None, "trainable")],
)
def test_batchnorm_default_follows_the_weights(weights: str | None, batchnorm: str) -> None:
    # Random-init statistics are meaningless in inference mode, so they train by default.
    job = spec(
        backbone={"weights": weights},
        fine_tune=[
            {"freeze": {"mode": "none"}},
            {"freeze": {"mode": "none", "batchnorm": "frozen"}},
        ],
    )
    assert [stage.freeze.batchnorm for stage in job.stages] == [batchnorm, batchnorm, "frozen"]


def test_an_explicit_batchnorm_is_kept() -> None:
    job = spec(backbone={"weights": None}, freeze={"mode": "none", "batchnorm": "frozen"})
    assert job.freeze.batchnorm == "frozen"
    assert FreezeSpec().batchnorm is None  # filled in by JobSpec, which knows the weights


def test_trains_batchnorm_only_when_a_stage_lets_it() -> None:
    assert not spec().trains_batchnorm  # imagenet: frozen
    assert not spec(backbone={"weights": None}).trains_batchnorm  # mode backbone trains no BN
    assert spec(backbone={"weights": None}, freeze={"mode": "none"}).trains_batchnorm
    staged = spec(fine_tune=[{"freeze": {"mode": "none", "batchnorm": "trainable"}}])
    assert staged.trains_batchnorm


@pytest.mark.parametrize("weights", ["balanced", {"cats": 2.0}, {"cats": 0.5, "dogs": 1e-3}])
def test_class_weight_forms(weights: str | dict[str, float]) -> None:
    assert spec(training={"class_weight": weights}).training.class_weight == weights


@pytest.mark.parametrize("weights", [{"cats": 0.0}, {"cats": 2.0, "dogs": -1.0}])
def test_class_weight_must_be_positive(weights: dict[str, float]) -> None:
    loc, message = problem(training={"class_weight": weights})
    assert loc == ("training", "class_weight") and "must be positive" in message


def test_class_weight_other_strings_are_refused() -> None:
    with pytest.raises(ValidationError, match="class_weight"):
        spec(training={"class_weight": "inverse"})


@pytest.mark.parametrize("monitor", ["val_loss", "val_accuracy"])
def test_early_stopping_on_a_validation_metric_needs_a_validation_split(monitor: str) -> None:
    training = {"validation_split": 0.0, "early_stopping": {"monitor": monitor}}
    loc, message = problem(training=training)
    assert loc == ("training",)
    assert f"early_stopping.monitor '{monitor}' needs validation_split > 0" in message
    with_split = spec(training={**training, "validation_split": 0.1}).training
    assert with_split.early_stopping is not None and with_split.early_stopping.patience == 3


@pytest.mark.parametrize("monitor", ["loss", "accuracy"])
def test_early_stopping_on_a_training_metric_needs_no_split(monitor: str) -> None:
    training = TrainingSpec.model_validate(
        {"validation_split": 0.0, "early_stopping": {"monitor": monitor}}
    )
    assert training.early_stopping is not None and training.early_stopping.monitor == monitor


def test_stages_number_in_order_and_inherit_the_optimizer() -> None:
    job = spec(
        freeze={"mode": "backbone"},
        training={"epochs": 3, "learning_rate": 1e-3, "optimizer": "sgd"},
        fine_tune=[
            {"freeze": {"mode": "partial", "trainable_from": -20}, "epochs": 4},
            {"freeze": {"mode": "none"}, "learning_rate": 1e-6, "optimizer": "adamw"},
        ],
    )
    summary = [
        (stage.number, stage.freeze.mode, stage.epochs, stage.learning_rate, stage.optimizer)
        for stage in job.stages
    ]
    assert summary == [
        (1, "backbone", 3, 1e-3, "sgd"),
        (2, "partial", 4, 1e-5, "sgd"),
        (3, "none", 5, 1e-6, "adamw"),
    ]


def test_at_most_max_stages() -> None:
    stage = {"freeze": {"mode": "none"}}
    assert len(spec(fine_tune=[stage] * (MAX_STAGES - 1)).stages) == MAX_STAGES
    loc, _ = problem(fine_tune=[stage] * MAX_STAGES)
    assert loc == ("fine_tune",)


def test_a_stage_needs_its_freeze() -> None:
    loc, _ = problem(fine_tune=[{"epochs": 2}])
    assert loc == ("fine_tune", 0, "freeze")


@pytest.mark.parametrize(
    ("parts", "loc"),
    [
        ({"colour": "red"}, ("colour",)),
        ({"head": {"pooling": "mean"}}, ("head", "pooling")),
        ({"head": {"dense": [128, 0]}}, ("head", "dense")),
        ({"head": {"dropout": 1.0}}, ("head", "dropout")),
        ({"training": {"epochs": 0}}, ("training", "epochs")),
        ({"training": {"learning_rate": 0}}, ("training", "learning_rate")),
        ({"training": {"validation_split": 1.0}}, ("training", "validation_split")),
        ({"training": {"augment": {"rotation": 2}}}, ("training", "augment", "rotation")),
        ({"freeze": {"batchnorm": "sometimes"}}, ("freeze", "batchnorm")),
    ],
)
def test_other_fields_are_checked_where_they_are(
    parts: dict[str, Any], loc: tuple[str, ...]
) -> None:
    assert problem(**parts)[0] == loc


def test_augment_is_active_only_with_a_transform() -> None:
    assert not spec(training={"augment": {}}).training.augmenting
    assert not spec().training.augmenting
    assert spec(training={"augment": {"flip": "horizontal"}}).training.augmenting
