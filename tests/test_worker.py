"""The worker: leases, retries, cancel, failures, a real subprocess, and reuse of a backbone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import h5py
import numpy as np
import pytest
from sqlalchemy import select, update

from service import jobs
from service.storage.tables import Job, TrainedModel, utcnow
from service.training.task import store_model
from tests.conftest import (
    LIGHT,
    SQLITE_ONLY,
    Service,
    colour_images,
    job_body,
    make_settings,
    stored_model,
)


def test_expired_lease_is_reclaimed_then_failed_after_max_attempts(service: Service) -> None:
    dataset_id = service.upload(colour_images(per_class=2))["id"]
    job_id = service.client.post("/jobs", json=job_body(dataset_id)).json()["id"]
    claims = dict(worker_id="dead-worker", lease_seconds=30, max_attempts=2)
    first = jobs.claim_next_job(service.database, **claims)
    assert first is not None and first.attempt == 1
    assert jobs.claim_next_job(service.database, **claims) is None  # lease still held

    def expire() -> None:
        with service.database.session(write=True) as session:
            session.execute(update(Job).values(lease_expires_at=utcnow() - timedelta(seconds=1)))

    expire()
    second = jobs.claim_next_job(service.database, **{**claims, "worker_id": "w2"})
    assert second is not None and second.attempt == 2
    # The first holder is fenced out: it can no longer write progress or finish the job.
    assert not jobs.heartbeat(service.database, first, lease_seconds=30).lease_held
    assert not jobs.end_job(service.database, first, status=jobs.JobStatus.FAILED, error="stale")
    stale_model = stored_model(job_id, id="m_stale")
    assert not jobs.complete(service.database, first, store_model(stale_model, []))
    assert service.client.get("/models/m_stale").status_code == 404
    expire()
    assert jobs.claim_next_job(service.database, **claims) is None
    job = service.client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["attempts"] == 2
    assert "max_attempts=2" in job["error"]


@SQLITE_ONLY  # cancel's transitions on PostgreSQL: test_inputs's state conflicts
@pytest.mark.slow
def test_cancel_stops_a_running_job(service: Service) -> None:
    dataset_id = service.upload(colour_images(per_class=8))["id"]
    body = job_body(dataset_id, backbone=LIGHT, training={"epochs": 50, "batch_size": 4})
    job_id = service.client.post("/jobs", json=body).json()["id"]
    thread = threading.Thread(target=service.worker.run_once)
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = service.client.get(f"/jobs/{job_id}").json()
        if job["progress"] and job["progress"]["step"] > 0:
            break
        time.sleep(0.1)
    assert service.client.post(f"/jobs/{job_id}/cancel").status_code == 200
    thread.join(timeout=60)
    assert not thread.is_alive()
    job = service.client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "cancelled" and job["model_id"] is None
    assert job["progress"]["epoch"] < 50


@pytest.mark.slow
def test_model_predicts_its_training_images_as_well_as_training_said(trained) -> None:
    """BN layers trained with momentum 0.99x: without recomputed statistics this fails."""
    client = trained["service"].client
    model_id = trained["job"]["model_id"]
    last_accuracy = trained["job"]["history"][-1]["accuracy"]
    images = [(label, data) for label, items in trained["images"].items() for data in items]
    predictions = []
    for start in range(0, len(images), 32):
        response = client.post(
            "/predict",
            data={"model_id": model_id, "top_k": "1"},
            files=[
                ("files", (f"{label}.png", data, "image/png"))
                for label, data in images[start : start + 32]
            ],
        )
        predictions += response.json()["predictions"]
    correct = sum(
        p["top"][0]["label"] == label for (label, _), p in zip(images, predictions, strict=True)
    )
    assert last_accuracy > 0.6
    assert correct / len(images) >= last_accuracy - 0.15


def test_recomputed_statistics_are_batch_averages() -> None:
    import keras
    import tensorflow as tf

    from service.ml.batchnorm import recompute_batchnorm_statistics

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.BatchNormalization(momentum=0.999)(inputs))
    batches = [
        np.random.default_rng(n).normal(3.0 * n, 1.0 + n, (8, 4)).astype("float32")
        for n in range(3)
    ]
    dataset = tf.data.Dataset.from_tensor_slices((np.concatenate(batches), np.zeros(24))).batch(8)
    assert recompute_batchnorm_statistics(model, dataset) == 1
    layer = model.layers[-1]
    np.testing.assert_allclose(
        layer.moving_mean.numpy(), np.mean([b.mean(axis=0) for b in batches], axis=0), rtol=1e-5
    )
    np.testing.assert_allclose(
        layer.moving_variance.numpy(), np.mean([b.var(axis=0) for b in batches], axis=0), rtol=1e-4
    )
    assert layer.momentum == 0.999


@pytest.mark.slow
def test_new_job_from_a_stored_models_backbone(trained) -> None:
    service: Service = trained["service"]
    source_id = trained["job"]["model_id"]
    body = job_body(
        trained["dataset"]["id"],
        backbone={"weights": f"model:{source_id}"},
        freeze={"mode": "backbone"},
        training={"epochs": 1},
    )
    job = service.train(body)
    with service.database.session() as session:
        blobs = dict(
            session.execute(
                select(TrainedModel.id, TrainedModel.backbone_weights).where(
                    TrainedModel.id.in_([source_id, job["model_id"]])
                )
            ).all()
        )
    source_arrays = weight_arrays(blobs[source_id])
    assert source_arrays and all(
        np.array_equal(a, b)
        for a, b in zip(source_arrays, weight_arrays(blobs[job["model_id"]]), strict=True)
    )
    frozen = service.client.get(f"/models/{job['model_id']}/layers", params={"trainable": "false"})
    assert all(row["path"].startswith("mobilenetv2_1.00_32/") for row in frozen.json()["layers"])
    assert (
        service.client.get(f"/models/{job['model_id']}").json()["params"]["trainable"]
        == 1280 * 3 + 3
    )


def weight_arrays(blob: bytes) -> list[np.ndarray]:
    import io

    arrays: list[np.ndarray] = []
    with h5py.File(io.BytesIO(blob), "r") as weights:
        weights.visititems(
            lambda _, item: arrays.append(item[()]) if isinstance(item, h5py.Dataset) else None
        )
    return arrays


@pytest.mark.slow
def test_worker_subprocess_fails_bad_job_and_goes_on(tmp_path: Path) -> None:
    """`python -m service worker`: an offline imagenet job fails naming the file; the next
    job succeeds; SIGTERM ends the process cleanly."""
    service = Service(make_settings(tmp_path))
    try:
        dataset_id = service.upload(colour_images(per_class=3))["id"]
        imagenet = service.client.post(
            "/jobs", json=job_body(dataset_id, backbone={"weights": "imagenet"})
        ).json()
        plain = service.client.post("/jobs", json=job_body(dataset_id, backbone=LIGHT)).json()
        env = {
            **os.environ,
            "DATA_DIR": str(tmp_path),
            "DATABASE_URL": "",
            "KERAS_HOME": str(tmp_path / "keras"),
            "POLL_SECONDS": "0.2",
        }
        worker = subprocess.Popen(
            [sys.executable, "-m", "service", "worker"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                if service.client.get(f"/jobs/{plain['id']}").json()["status"] in jobs.FINISHED:
                    break
                time.sleep(0.1)
        finally:
            worker.send_signal(signal.SIGTERM)
            output, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0, output
        failed = service.client.get(f"/jobs/{imagenet['id']}").json()
        assert failed["status"] == "failed"
        assert "_no_top.h5" in failed["error"]
        assert str(tmp_path / "keras" / "models") in failed["error"]
        succeeded = service.client.get(f"/jobs/{plain['id']}").json()
        assert succeeded["status"] == "succeeded", succeeded
    finally:
        service.close()
