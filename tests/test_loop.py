"""The train-to-serve loop through the real API and worker."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.ml.images import to_pixels

# Keras's own summary of MobileNetV2 without its top (the same at any input size):
# 2,257,984 parameters, of which 34,112 are BatchNormalization moving statistics, never
# trainable. The head adds a Dense layer from 1280 features to 3 classes.
BACKBONE_PARAMS, BN_STATISTICS, HEAD_PARAMS = 2_257_984, 34_112, 1280 * 3 + 3


def test_small_job_is_stored_with_keras_counts(small_model: dict[str, Any]) -> None:
    job = small_model["job"]
    assert job["status"] == "succeeded" and job["attempts"] == 1
    assert [(row["stage"], row["epoch"]) for row in job["history"]] == [(1, 1)]
    model = small_model["service"].client.get(f"/models/{job['model_id']}").json()
    assert model["classes"] == ["blue", "green", "red"] and model["job_id"] == job["id"]
    # Feature extraction: the whole backbone frozen, only the head trains.
    assert model["params"] == {
        "trainable": HEAD_PARAMS,
        "non_trainable": BACKBONE_PARAMS,
        "total": BACKBONE_PARAMS + HEAD_PARAMS,
    }


@pytest.mark.slow
def test_trained_job_reports_history_progress_and_model(trained: dict[str, Any]) -> None:
    job = trained["job"]
    assert job["attempts"] == 1
    assert [row["epoch"] for row in job["history"]] == [1, 2, 3, 4, 5]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(job["history"][0])
    assert job["progress"]["epoch"] == 5
    assert job["progress"]["step"] == job["progress"]["steps"]
    assert job["finished_at"] is not None and job["model_id"]
    client = trained["service"].client
    model = client.get(f"/models/{job['model_id']}").json()
    assert model["classes"] == ["blue", "green", "red"]
    assert model["job_id"] == job["id"]
    # Mode "none" from random weights trains everything but the moving statistics.
    assert model["params"] == {
        "trainable": BACKBONE_PARAMS - BN_STATISTICS + HEAD_PARAMS,
        "non_trainable": BN_STATISTICS,
        "total": BACKBONE_PARAMS + HEAD_PARAMS,
    }


def test_predict_equals_downloaded_savedmodel(small_model: dict[str, Any], tmp_path: Path) -> None:
    import tensorflow as tf

    client = small_model["service"].client
    model_id = small_model["job"]["model_id"]
    archive = client.get(f"/models/{model_id}/savedmodel")
    assert archive.status_code == 200
    assert archive.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        tar.extractall(tmp_path, filter="data")
    savedmodel = tf.saved_model.load(str(tmp_path))

    images = [small_model["images"]["red"][0], small_model["images"]["blue"][1]]
    response = client.post(
        "/predict",
        data={"model_id": model_id, "top_k": "3"},
        files=[("files", (f"{n}.png", data, "image/png")) for n, data in enumerate(images)],
    )
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["filename"] for p in predictions] == ["0.png", "1.png"]

    pixels = np.stack([to_pixels(data, 32) for data in images]).astype(np.float32)
    expected = savedmodel.serve(pixels).numpy()
    classes = ["blue", "green", "red"]
    for prediction, row in zip(predictions, expected, strict=True):
        scores = {score["label"]: score["score"] for score in prediction["top"]}
        assert sum(scores.values()) == pytest.approx(1.0, abs=1e-5)
        for index, label in enumerate(classes):
            assert scores[label] == pytest.approx(float(row[index]), abs=1e-6)
        assert [s["score"] for s in prediction["top"]] == sorted(scores.values(), reverse=True)
