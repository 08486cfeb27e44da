"""What fine-tuning changed: each layer's weights against those its job started from, as
GET /models/{id}/layers reports them, checked against NumPy on the stored weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from alembic import command
from sqlalchemy import insert, select, text

from service.ml.drift import relative_change
from service.storage.db import Database
from service.storage.tables import TrainedModel
from tests.conftest import (
    LIGHT,
    SIZE,
    SQLITE_ONLY,
    Service,
    colour_images,
    job_body,
    make_settings,
    stored_model,
)

# On the light backbone: the figures are of weights and statistics, not of a network.
BACKBONE = "mobilenet_1.00_32"
# MobileNet's last 6 layers, from conv_dw_13 (two convolutions, each with its
# BatchNormalization): what stage 2 of the staged job trains.
TRAINED_FROM = -6


def test_relative_change_arithmetic() -> None:
    before = [np.array([3.0, 0.0]), np.array([[4.0]])]
    assert relative_change(before, [b.copy() for b in before]) == 0.0
    # ‖(0, 1, 0)‖ / ‖(3, 0, 4)‖: the arrays count as one vector.
    after = [np.array([3.0, 1.0]), np.array([[4.0]])]
    assert relative_change(before, after) == pytest.approx(0.2)
    zeros = [np.zeros(3, dtype=np.float32)]
    assert relative_change(zeros, [np.zeros(3, dtype=np.float32)]) == 0.0
    assert relative_change(zeros, [np.ones(3, dtype=np.float32)]) is None
    assert relative_change([], []) is None


def test_random_initialised_layers_have_no_figures(small_model: dict[str, Any]) -> None:
    client = small_model["service"].client
    rows = client.get(f"/models/{small_model['job']['model_id']}/layers").json()["layers"]
    assert small_model["job"]["spec"]["backbone"]["weights"] is None
    assert rows and all(row["weight_change"] is None for row in rows)
    assert all(row["batchnorm_shift"] is None for row in rows)


def test_models_stored_before_the_figures_read_null(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    database = Database(settings.database_url)
    command.upgrade(database.alembic_config(), "0003")
    model = stored_model(None)
    table = TrainedModel.__table__
    # Revision 0003's columns (`version` came with 0006); unset ones take their defaults.
    values = {c.name: getattr(model, c.key) for c in table.columns if c.name != "version"}
    values = {name: value for name, value in values.items() if value is not None}
    with database.session(write=True) as session:
        session.execute(insert(table).values(values))
        session.execute(
            text(
                'INSERT INTO model_layers (model_id, "index", name, path, class_name, '
                "trainable, trainable_params, non_trainable_params, output_shape) VALUES "
                "(:id, 0, 'bn', 'net/bn', 'BatchNormalization', false, 0, 4, NULL)"
            ),
            {"id": model.id},
        )
    database.dispose()
    service = Service(settings)  # migrates to head
    try:
        (row,) = service.client.get(f"/models/{model.id}/layers").json()["layers"]
        assert row["weight_change"] is None and row["batchnorm_shift"] is None
    finally:
        service.close()


def seeded_backbone_file(path: Path, name: str = "MobileNetV2") -> None:
    """A weights file of backbone `name` (test_advice's: MobileNetV2) with nothing at its
    initial value: random kernels and BatchNormalization statistics away from their zeros
    and ones."""
    keras.utils.set_random_seed(7)
    backbone = getattr(keras.applications, name)(
        include_top=False, weights=None, input_shape=(SIZE, SIZE, 3)
    )
    rng = np.random.default_rng(7)
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0.0, 0.5, shape).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, shape).astype("float32"))
    backbone.save_weights(str(path))


def stored_arrays(service: Service, model_id: str, tmp_path: Path) -> dict[str, list[np.ndarray]]:
    """The model's stored backbone weights, by the layer table's paths."""
    with service.database.session() as session:
        blob = session.scalar(
            select(TrainedModel.backbone_weights).where(TrainedModel.id == model_id)
        )
    path = tmp_path / f"{model_id}.weights.h5"
    path.write_bytes(blob)
    backbone = getattr(keras.applications, LIGHT["name"])(
        include_top=False, weights=None, input_shape=(SIZE, SIZE, 3)
    )
    backbone.load_weights(str(path))
    return {f"{BACKBONE}/{layer.name}": layer.get_weights() for layer in backbone.layers}


def numpy_figures(before: list[np.ndarray], after: list[np.ndarray], batchnorm: bool) -> dict:
    """The figures by hand: BN's get_weights() are gamma, beta, moving mean, moving variance."""

    def relative(old: list[np.ndarray], new: list[np.ndarray]) -> float:
        flat = [
            np.concatenate([a.ravel().astype(np.float64) for a in arrays]) for arrays in (old, new)
        ]
        return float(np.linalg.norm(flat[1] - flat[0]) / np.linalg.norm(flat[0]))

    if not batchnorm:
        return {"weight_change": relative(before, after), "batchnorm_shift": None}
    return {
        "weight_change": relative(before[:2], after[:2]),
        "batchnorm_shift": {
            "moving_mean": relative(before[2:3], after[2:3]),
            "moving_variance": relative(before[3:], after[3:]),
        },
    }


def assert_figures_match(rows: list[dict[str, Any]], before: dict, after: dict) -> None:
    """Every backbone layer with weights: what the API reports is what NumPy computes."""
    checked = 0
    for row in rows:
        if row["path"] not in before or not before[row["path"]]:
            continue
        expected = numpy_figures(
            before[row["path"]], after[row["path"]], row["class_name"] == "BatchNormalization"
        )
        change = pytest.approx(expected["weight_change"], rel=1e-6, abs=0)
        assert row["weight_change"] == change, row["path"]
        shift = expected["batchnorm_shift"]
        if shift is None:
            assert row["batchnorm_shift"] is None, row["path"]
        else:
            assert row["batchnorm_shift"] == pytest.approx(shift, rel=1e-6, abs=0), row["path"]
        checked += 1
    assert checked == sum(1 for arrays in before.values() if arrays)


def layer_rows(service: Service, model_id: str) -> dict[str, dict[str, Any]]:
    response = service.client.get(f"/models/{model_id}/layers")
    assert response.status_code == 200, response.text
    return {row["path"]: row for row in response.json()["layers"]}


def has_weights(row: dict[str, Any]) -> bool:
    return row["trainable_params"] + row["non_trainable_params"] > 0


def assert_untouched(row: dict[str, Any]) -> None:
    """A layer frozen through every stage: not one weight or statistic moved."""
    assert row["weight_change"] == 0.0, row["path"]
    if row["class_name"] == "BatchNormalization":
        assert row["batchnorm_shift"] == {"moving_mean": 0.0, "moving_variance": 0.0}


def train_from_file_then_model(service: Service, tmp_path: Path) -> tuple[str, str]:
    """Job A from a weights file, backbone frozen; job B from A's stored backbone: stage 1
    trains the head, stage 2 the backbone's last layers, BatchNormalization included.
    Answers the two model ids."""
    file_path = tmp_path / "seeded.weights.h5"
    seeded_backbone_file(file_path, LIGHT["name"])
    upload = service.client.post(
        "/weights",
        files={"file": (file_path.name, file_path.read_bytes(), "application/octet-stream")},
        data={"backbone": LIGHT["name"]},
    )
    assert upload.status_code == 201, upload.text
    dataset_id = service.upload(colour_images(per_class=4))["id"]
    frozen = {"mode": "backbone"}
    from_file = {**LIGHT, "weights": f"file:{upload.json()['id']}"}
    first = service.train(job_body(dataset_id, backbone=from_file, freeze=frozen))
    stage_two = {"mode": "partial", "trainable_from": TRAINED_FROM, "batchnorm": "trainable"}
    second = service.train(
        job_body(
            dataset_id,
            backbone={**LIGHT, "weights": f"model:{first['model_id']}"},
            freeze=frozen,
            fine_tune=[{"freeze": stage_two, "epochs": 1, "learning_rate": 0.001}],
        )
    )
    return first["model_id"], second["model_id"]


@SQLITE_ONLY  # what training changed is Keras's; the database only stores it
@pytest.mark.slow
def test_staged_job_changes_only_what_trained(service: Service, tmp_path: Path) -> None:
    first, second = train_from_file_then_model(service, tmp_path)

    # Job A trained nothing of the backbone.
    rows_a = layer_rows(service, first)
    backbone_a = [row for path, row in rows_a.items() if path.startswith(f"{BACKBONE}/")]
    weighted_a = [row for row in backbone_a if has_weights(row)]
    assert weighted_a
    for row in weighted_a:
        assert_untouched(row)

    rows = layer_rows(service, second)
    backbone = [row for path, row in rows.items() if path.startswith(f"{BACKBONE}/")]
    for row in backbone[:TRAINED_FROM]:
        if has_weights(row):
            assert_untouched(row)
    for row in backbone[TRAINED_FROM:]:
        if row["trainable_params"]:
            assert row["weight_change"] > 0, row["path"]
        if row["class_name"] == "BatchNormalization":
            assert min(row["batchnorm_shift"].values()) > 0, row["path"]
    # No starting point: weightless layers, and the head (from random weights).
    for row in [*(r for r in backbone if not has_weights(r)), rows["predictions"]]:
        assert row["weight_change"] is None and row["batchnorm_shift"] is None, row["path"]

    source = stored_arrays(service, first, tmp_path)
    assert_figures_match(list(rows.values()), source, stored_arrays(service, second, tmp_path))
