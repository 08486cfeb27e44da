"""The train-to-serve loop through the real API and worker."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.ml.images import to_pixels


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
    assert (
        model["params"]["total"] == model["params"]["trainable"] + model["params"]["non_trainable"]
    )


def test_predict_equals_downloaded_savedmodel(trained: dict[str, Any], tmp_path: Path) -> None:
    import tensorflow as tf

    client = trained["service"].client
    model_id = trained["job"]["model_id"]
    archive = client.get(f"/models/{model_id}/savedmodel")
    assert archive.status_code == 200
    assert archive.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        tar.extractall(tmp_path, filter="data")
    savedmodel = tf.saved_model.load(str(tmp_path))

    images = [trained["images"]["red"][0], trained["images"]["blue"][1]]
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
