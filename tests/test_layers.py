"""Freeze specs: what the service reports equals what Keras itself says, mode by mode."""

from __future__ import annotations

from typing import Any

import keras
import pytest

from tests.conftest import SQLITE_ONLY, Service, colour_images, job_body


def keras_reference(
    freeze: dict[str, Any], num_classes: int
) -> tuple[keras.Model, dict[str, bool]]:
    """The same network built by hand with plain Keras, frozen the way the Keras guide does.

    Answers the model and each backbone layer's name → trainable flag.
    """
    keras.backend.clear_session()
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    inputs = keras.Input((32, 32, 3))
    x = keras.applications.mobilenet_v2.preprocess_input(inputs)
    bn_frozen = freeze.get("batchnorm", "trainable") == "frozen"
    x = base(x, training=False) if bn_frozen else base(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    if freeze["mode"] == "backbone":
        base.trainable = False
    elif freeze["mode"] == "partial":
        names = [layer.name for layer in base.layers]
        start = (
            names.index(freeze["trainable_from"])
            if isinstance(freeze["trainable_from"], str)
            else len(names) + freeze["trainable_from"]
        )
        for layer in base.layers[:start]:
            layer.trainable = False
    if bn_frozen:
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    flags = {layer.name: layer.trainable and base.trainable for layer in base.layers}
    return model, flags


def count(weights: list[Any]) -> int:
    return sum(int(w.numpy().size) for w in weights)


def keras_backbone_counts(reference: keras.Model) -> dict[str, tuple[int, int]]:
    """Each backbone layer's (trainable, non-trainable) parameter counts, as Keras has them."""
    base = next(layer for layer in reference.layers if isinstance(layer, keras.Model))
    return {
        layer.name: (count(layer.trainable_weights), count(layer.non_trainable_weights))
        for layer in base.layers
    }


def reported_backbone_counts(rows: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    return {
        row["path"].split("/", 1)[1]: (row["trainable_params"], row["non_trainable_params"])
        for row in rows
        if "/" in row["path"]
    }


FREEZES = [
    {"mode": "backbone"},
    {"mode": "partial", "trainable_from": "block_15_expand"},
    {"mode": "partial", "trainable_from": -12, "batchnorm": "frozen"},
    {"mode": "none"},
    {"mode": "none", "batchnorm": "frozen"},
]


@pytest.fixture
def dataset_id(service: Service) -> str:
    return service.upload(colour_images(per_class=2))["id"]


@SQLITE_ONLY  # the preview is computed, not stored
@pytest.mark.parametrize("freeze", FREEZES, ids=lambda f: "-".join(map(str, f.values())))
def test_preview_matches_keras(service: Service, dataset_id: str, freeze: dict[str, Any]) -> None:
    response = service.client.post(
        "/jobs/preview", json=job_body(dataset_id, freeze=freeze, head={"dropout": 0.2})
    )
    assert response.status_code == 200, response.text
    preview = response.json()
    reference, flags = keras_reference(freeze, num_classes=3)

    assert preview["model_id"] is None
    assert preview["trainable_params"] == count(reference.trainable_weights)
    assert preview["non_trainable_params"] == count(reference.non_trainable_weights)
    backbone_rows = [row for row in preview["layers"] if "/" in row["path"]]
    assert {row["path"].split("/", 1)[1]: row["trainable"] for row in backbone_rows} == flags
    assert all(row["path"].startswith("mobilenetv2_1.00_32/") for row in backbone_rows)
    head = [row for row in preview["layers"] if "/" not in row["path"]]
    assert [row["name"] for row in head] == [
        "pixels",
        "preprocess_input",
        "head_avg_pool",
        "head_dropout",
        "predictions",
    ]
    assert head[-1]["output_shape"] == [None, 3]
    assert head[-1]["trainable"] and head[-1]["trainable_params"] == 1280 * 3 + 3
    assert all(row["trainable_params"] == row["non_trainable_params"] == 0 for row in head[:-1])
    assert reported_backbone_counts(preview["layers"]) == keras_backbone_counts(reference)


@pytest.mark.any_database
def test_unknown_layer_name_is_422_naming_it(service: Service, dataset_id: str) -> None:
    body = job_body(dataset_id, freeze={"mode": "partial", "trainable_from": "block_99_nope"})
    for path in ("/jobs", "/jobs/preview"):
        response = service.client.post(path, json=body)
        assert response.status_code == 422
        detail = response.json()["detail"][0]
        assert detail["loc"] == ["body", "freeze", "trainable_from"]
        assert "block_99_nope" in detail["msg"]
    assert service.client.get("/jobs").json() == []


@pytest.mark.slow  # a stored model: trained by the worker
@pytest.mark.parametrize("stored", ["small_model", "trained"])
def test_stored_layers_match_keras_counts(request: pytest.FixtureRequest, stored: str) -> None:
    """small_model: backbone frozen. trained: mode "none" from random weights, so everything
    trained, BatchNormalization included."""
    model_run = request.getfixturevalue(stored)
    client = model_run["service"].client
    model_id = model_run["job"]["model_id"]
    freeze = model_run["job"]["spec"]["freeze"]
    layers = client.get(f"/models/{model_id}/layers").json()
    model = client.get(f"/models/{model_id}").json()
    reference, flags = keras_reference(freeze, num_classes=3)

    trainable = count(reference.trainable_weights)
    non_trainable = count(reference.non_trainable_weights)
    assert (layers["trainable_params"], layers["non_trainable_params"]) == (
        trainable,
        non_trainable,
    )
    assert model["params"] == {
        "trainable": trainable,
        "non_trainable": non_trainable,
        "total": reference.count_params(),
    }
    # Row by row, not only in total: each layer's counts are Keras's for that layer.
    assert reported_backbone_counts(layers["layers"]) == keras_backbone_counts(reference)
    head = {row["name"]: row for row in layers["layers"] if "/" not in row["path"]}
    predictions = head.pop("predictions")
    counts = (predictions["trainable_params"], predictions["non_trainable_params"])
    assert counts == (1280 * 3 + 3, 0)
    assert all(row["trainable_params"] == row["non_trainable_params"] == 0 for row in head.values())
    by_path = {row["path"]: row for row in layers["layers"]}
    projection = by_path["mobilenetv2_1.00_32/block_16_project"]
    assert projection["class_name"] == "Conv2D"
    assert projection["output_shape"] == [None, 1, 1, 320]

    # The flags are those of the model as trained, and the filter splits the rows by them.
    backbone = {
        path.split("/", 1)[1]: row["trainable"] for path, row in by_path.items() if "/" in path
    }
    assert backbone == flags
    if freeze["mode"] == "none":
        assert all(row["trainable"] for row in layers["layers"])
    for wanted in (True, False):
        filtered = client.get(
            f"/models/{model_id}/layers", params={"trainable": str(wanted).lower()}
        ).json()
        expected = [row["path"] for row in layers["layers"] if row["trainable"] is wanted]
        assert [row["path"] for row in filtered["layers"]] == expected


@SQLITE_ONLY  # the backbones' layers are computed, not stored
def test_backbone_layers_endpoint(service: Service) -> None:
    response = service.client.get("/backbones/MobileNetV2/layers", params={"input_size": 32})
    assert response.status_code == 200
    body = response.json()
    keras.backend.clear_session()
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    assert [(row["name"], row["params"]) for row in body["layers"]] == [
        (layer.name, layer.count_params()) for layer in base.layers
    ]
    assert service.client.get("/backbones/NoSuchNet/layers").status_code == 404
    assert (
        service.client.get("/backbones/Xception/layers", params={"input_size": 40}).status_code
        == 422
    )


@SQLITE_ONLY  # the registry of backbones is code, not rows
def test_backbones_lists_every_family(service: Service) -> None:
    names = {entry["name"]: entry for entry in service.client.get("/backbones").json()}
    assert len(names) == 40
    for family in (
        "Xception",
        "VGG16",
        "ResNet152V2",
        "InceptionResNetV2",
        "MobileNetV3Large",
        "DenseNet201",
        "NASNetLarge",
        "EfficientNetB7",
        "EfficientNetV2L",
        "ConvNeXtXLarge",
    ):
        assert family in names
    assert names["InceptionV3"]["min_input_size"] == 75
    assert names["EfficientNetB3"]["default_input_size"] == 300
