"""Freeze specs: what the service reports equals what Keras itself says, mode by mode."""

from __future__ import annotations

from typing import Any

import keras
import pytest

from tests.conftest import Service, colour_images, job_body


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
    for row in backbone_rows:
        if not row["trainable"]:
            assert row["trainable_params"] == 0


def test_unknown_layer_name_is_422_naming_it(service: Service, dataset_id: str) -> None:
    body = job_body(dataset_id, freeze={"mode": "partial", "trainable_from": "block_99_nope"})
    for path in ("/jobs", "/jobs/preview"):
        response = service.client.post(path, json=body)
        assert response.status_code == 422
        detail = response.json()["detail"][0]
        assert detail["loc"] == ["body", "freeze", "trainable_from"]
        assert "block_99_nope" in detail["msg"]
    assert service.client.get("/jobs").json() == []


def test_stored_layers_match_keras_counts(trained: dict[str, Any]) -> None:
    client = trained["service"].client
    model_id = trained["job"]["model_id"]
    layers = client.get(f"/models/{model_id}/layers").json()
    model = client.get(f"/models/{model_id}").json()
    reference, _flags = keras_reference({"mode": "none"}, num_classes=3)

    assert layers["trainable_params"] == count(reference.trainable_weights)
    assert layers["non_trainable_params"] == count(reference.non_trainable_weights)
    assert model["params"]["trainable"] == layers["trainable_params"]
    assert sum(row["trainable_params"] for row in layers["layers"]) == layers["trainable_params"]
    assert (
        sum(row["non_trainable_params"] for row in layers["layers"])
        == layers["non_trainable_params"]
    )
    by_path = {row["path"]: row for row in layers["layers"]}
    projection = by_path["mobilenetv2_1.00_32/block_16_project"]
    assert projection["class_name"] == "Conv2D"
    assert projection["output_shape"] == [None, 1, 1, 320]

    # Mode "none" from random weights: everything trained, BatchNormalization included.
    frozen = client.get(f"/models/{model_id}/layers", params={"trainable": "false"}).json()
    assert frozen["layers"] == []
    trainable = client.get(f"/models/{model_id}/layers", params={"trainable": "true"}).json()
    assert len(trainable["layers"]) == len(layers["layers"])


def test_backbone_layers_endpoint(service: Service) -> None:
    response = service.client.get("/backbones/MobileNetV2/layers", params={"input_size": 32})
    assert response.status_code == 200
    body = response.json()
    keras.backend.clear_session()
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    assert [row["name"] for row in body["layers"]] == [layer.name for layer in base.layers]
    assert sum(row["params"] for row in body["layers"]) == base.count_params()
    assert service.client.get("/backbones/NoSuchNet/layers").status_code == 404
    assert (
        service.client.get("/backbones/Xception/layers", params={"input_size": 40}).status_code
        == 422
    )


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
