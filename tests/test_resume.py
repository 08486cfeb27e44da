"""Resume, do not restart: a checkpoint after every epoch and stage, and a job whose worker
died goes on from its last epoch, ending where an uninterrupted run ends: in process (the
trainer stopped after an epoch, then started again on its checkpoint), and with real worker
processes (SIGKILL in epoch 3 of 5, another worker finishes)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.training.spec import JobSpec
from tests.conftest import LIGHT, Service, colour_images, job_body, make_settings, wait_for
from tests.test_reliability import LEASE_SECONDS, job_state, start_worker


class Observer:
    """Hears the epochs; stops training once `stop_after` of them are done."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.rows: list[dict[str, float]] = []
        self.stop_after = stop_after

    def on_progress(self, progress: dict[str, int]) -> None:
        pass

    def on_epoch(self, row: dict[str, float]) -> None:
        self.rows.append(row)

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.rows) >= self.stop_after


def labelled() -> Any:
    from service.ml.data import LabelledImages

    images = colour_images(per_class=6)
    classes = sorted(images)
    return LabelledImages(
        images=[data for name in classes for data in images[name]],
        labels=np.array([n for n, name in enumerate(classes) for _ in images[name]], np.int32),
        classes=classes,
        ids=list(range(sum(len(row) for row in images.values()))),
    )


# A frozen stage on cached features, then the whole network; dropout, early stopping.
STAGED = {
    "backbone": LIGHT,
    "head": {"pooling": "avg", "dense": [8], "dropout": 0.3},
    "freeze": {"mode": "backbone"},
    "training": {
        "epochs": 2,
        "batch_size": 6,
        "seed": 3,
        "validation_split": 0.25,
        "early_stopping": {"patience": 4},
    },
    "fine_tune": [{"epochs": 2, "freeze": {"mode": "none"}, "learning_rate": 1e-4}],
}


@pytest.mark.slow
def test_a_stopped_run_resumed_from_its_checkpoint_ends_as_an_uninterrupted_one(
    tmp_path: Path,
) -> None:
    """Stopped in the fine-tuning stage's first epoch: resumed, the frozen stage is skipped
    and the fine-tuning stage goes on with its optimizer and early stopping's counters."""
    from service.ml.checkpoint import read_state
    from service.ml.data import TrainingStopped
    from service.ml.train import train

    spec = JobSpec.model_validate(job_body("d_resume", **STAGED))
    data = labelled()
    whole = train(spec, data, Observer(), backbone_weights=None)

    folder, stop_after = tmp_path / "checkpoint", 3
    with pytest.raises(TrainingStopped):
        train(spec, data, Observer(stop_after), backbone_weights=None, checkpoint_dir=folder)
    state = read_state(folder)
    assert state is not None and state.epochs_done == stop_after
    assert [row["epoch"] for row in state.history] == list(range(1, stop_after + 1))

    again = Observer()
    resumed = train(spec, data, again, backbone_weights=None, checkpoint_dir=folder)
    assert [row["epoch"] for row in again.rows] == list(range(stop_after + 1, 5))
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3, 4]
    assert [row["loss"] for row in resumed.history] == pytest.approx(
        [row["loss"] for row in whole.history], rel=1e-6
    )
    for ours, theirs in zip(
        resumed.network.model.get_weights(), whole.network.model.get_weights(), strict=True
    ):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    assert resumed.validation_probabilities is not None
    np.testing.assert_allclose(
        resumed.validation_probabilities, whole.validation_probabilities, atol=1e-6
    )
    # Another spec, or other images, never resume from it.
    assert read_state(folder, expected="another fingerprint") is None


# Five epochs of the whole network: long enough to be killed in the third.
KILLED = {
    "backbone": LIGHT,
    "freeze": {"mode": "none"},
    "training": {"epochs": 5, "batch_size": 2, "seed": 5, "validation_split": 0.25},
}


@pytest.mark.slow
def test_a_worker_killed_in_epoch_3_of_5_is_resumed_by_another(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path, lease_seconds=LEASE_SECONDS)
    service = Service(settings)
    try:
        dataset_id = service.upload(colour_images(per_class=6))["id"]
        body = job_body(dataset_id, **KILLED)
        killed = service.client.post("/jobs", json=body).json()
        worker = start_worker(settings, tmp_path / "worker.log")

        def in_epoch_3() -> bool:
            job = job_state(service, killed["id"])
            return len(job["history"]) >= 2

        wait_for(in_epoch_3, what="two epochs done", timeout=240)
        worker.kill()
        worker.wait(timeout=30)
        seen = len(job_state(service, killed["id"])["history"])
        assert 2 <= seen < 5, seen
        folder = settings.checkpoints / killed["id"]
        assert folder.is_dir()

        time.sleep(LEASE_SECONDS + 0.5)
        with caplog.at_level(logging.INFO, logger="service.worker"):
            assert service.worker.run_once()
        resumed = job_state(service, killed["id"])
        assert resumed["status"] == "succeeded", resumed
        assert resumed["attempts"] == 2
        assert [row["epoch"] for row in resumed["history"]] == [1, 2, 3, 4, 5]
        (said,) = [r.message for r in caplog.records if "resuming from its checkpoint" in r.message]
        after = int(said.rsplit("epoch ", 1)[1].rstrip(")"))
        # Every epoch the history showed was in the checkpoint: only the one under way when
        # the worker was killed is done again.
        assert after == seen
        assert not folder.exists()  # the job ended: its checkpoint is gone

        uninterrupted = service.train(body)
        ours = service.client.get(f"/models/{resumed['model_id']}/evaluation").json()
        theirs = service.client.get(f"/models/{uninterrupted['model_id']}/evaluation").json()
        assert [row["loss"] for row in resumed["history"]] == pytest.approx(
            [row["loss"] for row in uninterrupted["history"]], rel=1e-5
        )
        assert ours["accuracy"] == theirs["accuracy"]
        assert ours["confusion_matrix"] == theirs["confusion_matrix"]
        print(f"killed after {seen} epochs; resumed after epoch {after}; redone {seen - after}")
    finally:
        service.close()
