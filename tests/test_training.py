"""Training as an expert does it: stages, controls, feature caching, evaluation, live events,
uploaded weights files."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from sqlalchemy import select

from service.ml.images import to_pixels
from service.storage.tables import TrainedModel
from service.training.spec import JobSpec
from tests.conftest import LIGHT, SIZE, SQLITE_ONLY, Service, colour_images, job_body


class Recorder:
    """A TrainingObserver that keeps what it is told and never stops training."""

    def __init__(self) -> None:
        self.progress: list[dict[str, int]] = []
        self.rows: list[dict[str, float]] = []

    def on_progress(self, progress: dict[str, int]) -> None:
        self.progress.append(progress)

    def on_epoch(self, row: dict[str, float]) -> None:
        self.rows.append(row)

    def should_stop(self) -> bool:
        return False


def labelled(per_class: int, seed: int = 0) -> Any:
    from service.ml.data import LabelledImages

    images = colour_images(per_class, seed)
    classes = sorted(images)
    return LabelledImages(
        images=[data for label in classes for data in images[label]],
        labels=np.repeat(np.arange(len(classes)), per_class).astype(np.int32),
        classes=classes,
    )


def train_in_process(body: dict[str, Any], data: Any, **options: Any) -> Any:
    from service.ml.train import train

    keras.backend.clear_session()
    spec = JobSpec.model_validate({"dataset_id": "d_test", **body})
    return train(spec, data, Recorder(), backbone_weights=None, **options)


def pixels_of(data: Any) -> np.ndarray:
    return np.stack([to_pixels(image, SIZE) for image in data.images]).astype("float32")


def without_timing(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


# On the light backbone: these tests are of the training controls, not of a network.
FROZEN_HEAD = {
    "backbone": {**LIGHT, "weights": None, "input_size": SIZE},
    "head": {"pooling": "avg", "dense": [16], "dropout": 0.2},
    "freeze": {"mode": "backbone"},
    "training": {"epochs": 4, "batch_size": 8, "validation_split": 0.25, "seed": 3},
}


@pytest.mark.slow
def test_cached_features_train_the_same_model_as_plain_fit() -> None:
    # 27 images in batches of 8: the backbone pass's last batch is filled up with 5 black ones,
    # which must not reach the head.
    data = labelled(per_class=9)
    cached = train_in_process(FROZEN_HEAD, data)
    plain = train_in_process(FROZEN_HEAD, data, feature_cache=False)
    assert cached.cached_stages == [1] and plain.cached_stages == []
    for fast, slow in zip(cached.history, plain.history, strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert fast[key] == pytest.approx(slow[key], abs=1e-4), key
    pixels = pixels_of(data)
    np.testing.assert_allclose(
        cached.network.model.predict(pixels, verbose=0),
        plain.network.model.predict(pixels, verbose=0),
        atol=1e-5,
    )


@pytest.mark.slow
def test_controls_are_repeatable_and_augmentation_is_training_only(tmp_path: Path) -> None:
    import tensorflow as tf

    from service.ml.export import export_savedmodel, unpack_archive

    body = {
        **FROZEN_HEAD,
        "training": {
            "epochs": 2,
            "batch_size": 8,
            "optimizer": "sgd",
            "learning_rate": 0.01,
            "seed": 7,
            "augment": {"flip": "horizontal", "rotation": 0.1, "zoom": 0.1, "contrast": 0.1},
            "class_weight": "balanced",
            "label_smoothing": 0.1,
        },
        "fine_tune": [
            {
                "freeze": {"mode": "partial", "trainable_from": -12},
                "epochs": 1,
                "optimizer": "adamw",
            }
        ],
    }
    data = labelled(per_class=6)
    first = train_in_process(body, data)
    second = train_in_process(body, data)
    # Same seed, same machine: the same history (to float noise from threaded CPU kernels).
    assert len(first.history) == len(second.history) == 3
    once_again = zip(without_timing(first.history), without_timing(second.history), strict=True)
    for once, again in once_again:
        assert once == pytest.approx(again)
    assert [row["stage"] for row in first.history] == [1, 1, 2]
    assert first.cached_stages == []  # augmentation needs the pixels every epoch

    model = first.network.model
    augment = model.get_layer("augment")
    pixels = pixels_of(data)[:4]
    np.testing.assert_array_equal(augment(pixels, training=False), pixels)
    assert not np.allclose(augment(pixels, training=True), pixels)
    # The exported model runs inference only: no augmentation, the same answer every time.
    unpack_archive(export_savedmodel(model), tmp_path)
    loaded = tf.saved_model.load(str(tmp_path))
    served = loaded.serve
    np.testing.assert_allclose(served(pixels).numpy(), model.predict(pixels, verbose=0), atol=1e-5)
    np.testing.assert_allclose(served(pixels).numpy(), served(pixels).numpy(), atol=1e-6)


@pytest.mark.slow
def test_early_stopping_restores_the_best_epoch() -> None:
    body = {
        **FROZEN_HEAD,
        "training": {
            **FROZEN_HEAD["training"],
            "epochs": 6,
            "learning_rate": 0.05,
            # Nothing improves by 10: the stage stops after its second epoch, keeping the first.
            "early_stopping": {"monitor": "val_loss", "patience": 0, "min_delta": 10},
        },
    }
    result = train_in_process(body, labelled(per_class=8))
    assert [row["epoch"] for row in result.history] == [1, 2]
    first, second = result.history
    assert first["val_loss"] != pytest.approx(second["val_loss"], abs=1e-5)
    assert result.metrics["val_loss"] == pytest.approx(first["val_loss"], abs=1e-6)
    assert result.metrics["val_accuracy"] == pytest.approx(first["val_accuracy"])


def test_class_weights_balanced_from_counts_or_by_name() -> None:
    from service.ml.pipeline import class_weights
    from service.training.spec import TrainingSpec

    labels = np.array([0] * 6 + [1] * 2 + [2] * 4)
    balanced = class_weights(TrainingSpec(class_weight="balanced"), labels, ["a", "b", "c"])
    np.testing.assert_allclose(balanced, [12 / (3 * 6), 12 / (3 * 2), 12 / (3 * 4)])
    named = class_weights(TrainingSpec(class_weight={"b": 2.5}), labels, ["a", "b", "c"])
    np.testing.assert_allclose(named, [1.0, 2.5, 1.0])


def read_events(response: Any) -> list[tuple[str, dict[str, Any]]]:
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((name, json.loads(line.removeprefix("data: "))))
    return events


@SQLITE_ONLY  # the stream reads the job row; reads on PostgreSQL: test_jobs, test_inputs
@pytest.mark.slow
def test_staged_job_streams_events_and_keeps_the_last_stages_flags(service: Service) -> None:
    dataset = service.upload(colour_images(per_class=6))
    # On the light backbone: the events and the flags are the service's, not a network's.
    body = job_body(
        dataset["id"],
        backbone=LIGHT,
        freeze={"mode": "backbone"},
        training={"epochs": 2, "batch_size": 8},
        fine_tune=[
            {
                "freeze": {"mode": "partial", "trainable_from": "conv_dw_13"},
                "epochs": 1,
                "learning_rate": 1e-4,
            }
        ],
    )
    preview = service.client.post("/jobs/preview", json=body).json()
    assert [stage["stage"] for stage in preview["stages"]] == [1, 2]
    job_id = service.client.post("/jobs", json=body).json()["id"]
    # The stream reads the job every 0.5 s by default: longer than this tiny first stage.
    app = service.client.app
    app.state.settings = app.state.settings.model_copy(update={"events_poll_seconds": 0.05})

    worker = threading.Thread(target=service.worker.run_until_idle)
    with service.client.stream("GET", f"/jobs/{job_id}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        worker.start()
        live = read_events(response)
    worker.join()
    names = [name for name, _ in live]
    assert names[0] == "status" and live[0][1]["status"] in ("queued", "running")
    assert "progress" in names
    # Stage 1 may end between two reads even so; its epochs below are always streamed.
    stages = {event["stage"] for name, event in live if name == "progress"}
    assert 2 in stages and stages <= {1, 2}
    epochs = [event for name, event in live if name == "epoch"]
    assert [(row["epoch"], row["stage"]) for row in epochs] == [(1, 1), (2, 1), (3, 2)]
    assert live[-1] == ("status", live[-1][1]) and live[-1][1]["status"] == "succeeded"
    model_id = live[-1][1]["model_id"]

    # A late client gets the whole story at once, the final status last.
    with service.client.stream("GET", f"/jobs/{job_id}/events") as response:
        late = read_events(response)
    assert [name for name, _ in late] == ["epoch", "epoch", "epoch", "status"]
    assert [event for _, event in late[:3]] == epochs

    job = service.client.get(f"/jobs/{job_id}").json()
    assert [row["stage"] for row in job["history"]] == [1, 1, 2]
    layers = service.client.get(f"/models/{model_id}/layers").json()
    flags = [(row["path"], row["trainable"]) for row in layers["layers"]]
    assert flags == [(row["path"], row["trainable"]) for row in preview["stages"][1]["layers"]]
    assert flags != [(row["path"], row["trainable"]) for row in preview["stages"][0]["layers"]]
    backbone = [row for row in layers["layers"] if "/" in row["path"]]
    start = next(i for i, row in enumerate(backbone) if row["name"] == "conv_dw_13")
    assert not any(row["trainable"] for row in backbone[:start])
    # batchnorm defaults to trainable with random weights: every layer from the point trains.
    assert all(row["trainable"] for row in backbone[start:])
    assert layers["trainable_params"] == preview["stages"][1]["trainable_params"]


@pytest.mark.any_database
def test_events_of_an_unknown_job_are_404(service: Service) -> None:
    response = service.client.get("/jobs/j_missing/events")
    assert response.status_code == 404 and "j_missing" in response.json()["detail"]


@pytest.mark.slow
def test_evaluation_is_consistent_with_the_validation_split(trained: dict[str, Any]) -> None:
    client = trained["service"].client
    model_id = trained["job"]["model_id"]
    report = client.get(f"/models/{model_id}/evaluation").json()
    classes = client.get(f"/models/{model_id}").json()["classes"]
    matrix = np.array(report["confusion_matrix"]["matrix"])
    assert report["confusion_matrix"]["labels"] == classes
    assert [row["label"] for row in report["per_class"]] == classes
    assert matrix.sum() == sum(row["support"] for row in report["per_class"]) == 18
    assert report["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    metrics = client.get(f"/models/{model_id}").json()["metrics"]
    assert metrics["val_accuracy"] == pytest.approx(report["accuracy"])
    for i, row in enumerate(report["per_class"]):
        assert row["support"] == matrix[i].sum()
        assert row["recall"] == pytest.approx(matrix[i, i] / matrix[i].sum())
        predicted = matrix[:, i].sum()
        assert row["precision"] == pytest.approx(matrix[i, i] / predicted if predicted else 0.0)


@pytest.mark.slow
@SQLITE_ONLY
def test_evaluation_needs_a_validation_split(service: Service) -> None:
    dataset = service.upload(colour_images(per_class=3))
    body = job_body(dataset["id"], freeze={"mode": "backbone"}, training={"validation_split": 0})
    job = service.train(body)
    response = service.client.get(f"/models/{job['model_id']}/evaluation")
    assert response.status_code == 404 and "validation_split 0" in response.json()["detail"]


def save_backbone_weights(name: str, path: Path, seed: int = 11) -> keras.Model:
    from service.backbones import get_backbone

    keras.utils.set_random_seed(seed)
    backbone = get_backbone(name).constructor(
        include_top=False, weights=None, input_shape=(SIZE, SIZE, 3)
    )
    backbone.save_weights(str(path))
    return backbone


def upload_weights(service: Service, path: Path, backbone: str) -> Any:
    return service.client.post(
        "/weights",
        files={"file": (path.name, path.read_bytes(), "application/octet-stream")},
        data={"backbone": backbone},
    )


@SQLITE_ONLY  # weights files as PostgreSQL blobs: test_training's refusals, test_jobs
@pytest.mark.slow
def test_uploaded_weights_file_seeds_the_backbone(service: Service, tmp_path: Path) -> None:
    # On the light backbone: the file's round trip is the service's, not a network's.
    path = tmp_path / "mobilenet.weights.h5"
    original = save_backbone_weights(LIGHT["name"], path)
    response = upload_weights(service, path, LIGHT["name"])
    assert response.status_code == 201, response.text
    weights = response.json()
    assert weights["backbone"] == LIGHT["name"] and weights["size_bytes"] == path.stat().st_size
    assert [w["id"] for w in service.client.get("/weights").json()] == [weights["id"]]

    dataset = service.upload(colour_images(per_class=4))
    body = job_body(
        dataset["id"],
        backbone={**LIGHT, "weights": f"file:{weights['id']}"},
        freeze={"mode": "backbone"},
    )
    job = service.train(body)
    assert job["spec"]["freeze"]["batchnorm"] == "frozen"  # pretrained: BN stays frozen
    with service.database.session() as session:
        blob = session.scalar(
            select(TrainedModel.backbone_weights).where(TrainedModel.id == job["model_id"])
        )
    trained_path = tmp_path / "trained.weights.h5"
    trained_path.write_bytes(blob)
    keras.backend.clear_session()
    restored = save_backbone_weights(LIGHT["name"], tmp_path / "scratch.weights.h5", seed=99)
    restored.load_weights(str(trained_path))
    for trained_weight, file_weight in zip(
        restored.get_weights(), original.get_weights(), strict=True
    ):
        np.testing.assert_array_equal(trained_weight, file_weight)

    assert service.client.delete(f"/weights/{weights['id']}").status_code == 204
    assert service.client.get(f"/weights/{weights['id']}").status_code == 404


@SQLITE_ONLY  # the file's format; a weights file's round trip is the test above's
def test_legacy_h5_weights_file_is_accepted(service: Service, tmp_path: Path) -> None:
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    backbone = save_backbone_weights("MobileNetV2", tmp_path / "unused.weights.h5")
    path = tmp_path / "mobilenet_v2_no_top.h5"
    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, backbone)
    response = upload_weights(service, path, "MobileNetV2")
    assert response.status_code == 201, response.text


@SQLITE_ONLY  # refused before anything is stored
def test_weights_that_do_not_fit_are_refused(service: Service, tmp_path: Path) -> None:
    path = tmp_path / "mobilenet_v2.weights.h5"
    save_backbone_weights("MobileNetV2", path)
    response = upload_weights(service, path, "MobileNet")
    assert response.status_code == 400
    assert "conv_pw_1" in response.json()["detail"] and path.name in response.json()["detail"]

    noise = tmp_path / "noise.h5"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    response = upload_weights(service, noise, "MobileNetV2")
    assert response.status_code == 400 and "not an HDF5 file" in response.json()["detail"]

    response = upload_weights(service, path, "NoSuchNet")
    assert response.status_code == 422 and "NoSuchNet" in response.text
    assert service.client.get("/weights").json() == []

    dataset = service.upload(colour_images(per_class=2))
    body = job_body(dataset["id"], backbone={"weights": "file:w_missing"})
    response = service.client.post("/jobs", json=body)
    assert response.status_code == 404 and "w_missing" in response.json()["detail"]


@pytest.mark.parametrize(
    ("overrides", "location"),
    [
        (
            {"fine_tune": [{"freeze": {"mode": "partial", "trainable_from": "no_such_layer"}}]},
            ["body", "fine_tune", 0, "freeze", "trainable_from"],
        ),
        (
            {"training": {"class_weight": {"purple": 2.0}}},
            ["body", "training", "class_weight", "purple"],
        ),
        (
            {"training": {"validation_split": 0.0, "early_stopping": {"monitor": "val_loss"}}},
            ["body", "training"],
        ),
        ({"training": {"augment": {"flip": "diagonal"}}}, ["body", "training", "augment", "flip"]),
    ],
)
@pytest.mark.any_database
def test_bad_training_controls_are_422_naming_the_field(
    service: Service, overrides: dict[str, Any], location: list[Any]
) -> None:
    dataset = service.upload(colour_images(per_class=2))
    response = service.client.post("/jobs", json=job_body(dataset["id"], **overrides))
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][: len(location)] == location
