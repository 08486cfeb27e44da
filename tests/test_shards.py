"""Training without holding the dataset: the shard format, the worker's shard cache (built
once, reused, rebuilt when the dataset grows, dropped when it is deleted), and the streamed
pipeline training the same model, on the same split, as the in-memory one."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.storage import shard_cache as shards
from service.storage.shard_files import ShardedImages, write_shards
from service.training.spec import JobSpec
from tests.conftest import LIGHT, Service, class_zip, colour_images, job_body, make_settings
from tests.test_training import labelled, train_in_process, without_timing


def test_shards_read_back_every_image_and_any_subset(tmp_path: Path) -> None:
    images = [bytes([n]) * (n * 7 + 1) for n in range(20)]
    assert write_shards(tmp_path / "s", [images[:8], [], images[8:]]) == 20
    stored = ShardedImages(tmp_path / "s")
    assert len(stored) == 20 and [stored[k] for k in range(20)] == images
    assert stored.total_bytes == sum(map(len, images))
    picked = stored.subset(np.array([3, 17, 5]))
    assert [picked[k] for k in range(3)] == [images[3], images[17], images[5]]
    assert picked.subset(np.array([2]))[0] == images[5]
    assert picked.total_bytes == len(images[3]) + len(images[17]) + len(images[5])
    with pytest.raises(FileExistsError):  # written once, never over
        write_shards(tmp_path / "s", [images])


def test_cache_is_fetched_in_bounded_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shards, "FETCH_ROWS", 3)
    monkeypatch.setattr(shards, "FETCH_BYTES", 100)
    ids = list(range(10))
    sizes = [10, 10, 10, 10, 60, 50, 500, 1, 1, 1]
    runs = [list(run) for run in shards.fetch_batches(ids, sizes)]
    assert runs == [[0, 1, 2], [3, 4], [5], [6], [7, 8, 9]]
    assert shards.snapshot_key([1, 2]) != shards.snapshot_key([1, 2, 3])


# The backbone frozen but no features cached (feature_cache=False): every epoch's batches of
# pixels go through the pipeline, and the step compiles quickly.
STREAMED = {
    "backbone": LIGHT,
    "head": {"pooling": "avg", "dense": [8], "dropout": 0.2},
    "freeze": {"mode": "backbone"},
    "training": {"epochs": 2, "batch_size": 4, "validation_split": 0.25, "seed": 7},
}


def sharded(data: Any, folder: Path) -> Any:
    from service.ml.data import LabelledImages

    write_shards(folder, [data.images])
    return LabelledImages(ShardedImages(folder), data.labels, data.classes, ids=data.ids)


@pytest.mark.slow  # three models, two epochs each
def test_streamed_images_train_the_same_model_on_the_same_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kept decoded, or not (then each epoch shuffles positions, then reads and decodes)."""
    from service.ml import pipeline

    data = labelled(per_class=6)
    body = job_body("d", **STREAMED)
    memory = train_in_process(body, data, feature_cache=False)
    streamed = sharded(data, tmp_path / "s")
    kept = train_in_process(body, streamed, feature_cache=False)
    monkeypatch.setattr(pipeline, "DECODED_CACHE_BYTES", 0)
    read_each_epoch = train_in_process(body, streamed, feature_cache=False)
    for result in (kept, read_each_epoch):
        np.testing.assert_array_equal(result.validation_index, memory.validation_index)
        assert result.split == memory.split
        assert without_timing(result.history) == without_timing(memory.history)
        for ours, theirs in zip(
            result.network.model.get_weights(), memory.network.model.get_weights(), strict=True
        ):
            np.testing.assert_array_equal(ours, theirs)


def spec_of(dataset_id: str) -> JobSpec:
    return JobSpec.model_validate(job_body(dataset_id))


def test_worker_caches_a_large_dataset_once_and_drops_it_with_the_dataset(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from service.training.task import load_dataset

    settings = make_settings(tmp_path, train_in_memory_bytes=1)
    service = Service(settings)
    try:
        images = colour_images(per_class=3)
        first = service.upload(images)["id"]
        second = service.upload(colour_images(per_class=2, seed=1), name="other")["id"]
        root = shards.dataset_cache_root(settings.cache_dir)
        caplog.set_level(logging.INFO, "service.shards")
        data = load_dataset(service.database, spec_of(first), settings)
        assert isinstance(data.images, ShardedImages)
        stored = [data.images[k] for k in range(len(data.images))]
        assert sorted(stored) == sorted(image for row in images.values() for image in row)
        folders = list((root / first).iterdir())
        assert len(folders) == 1
        again = load_dataset(service.database, spec_of(first), settings)
        assert again.images.folder == folders[0] and again.ids == data.ids
        assert "reusing its shard cache" in caplog.text
        # Under the bound, as before: the bytes in memory, no cache.
        small = load_dataset(service.database, spec_of(second), make_settings(tmp_path))
        assert isinstance(small.images, list) and not (root / second).exists()
        assert service.client.delete(f"/datasets/{first}").status_code == 204
        load_dataset(service.database, spec_of(second), settings)
        assert not (root / first).exists() and (root / second).is_dir()
        shards.drop_dataset_cache(settings.cache_dir, second)
        assert not (root / second).exists()
    finally:
        service.close()


def test_a_grown_dataset_gets_a_fresh_cache(tmp_path: Path) -> None:
    """Another set of image ids, another snapshot; the older one is removed."""
    from service.training.task import load_dataset

    settings = make_settings(tmp_path, train_in_memory_bytes=1)
    service = Service(settings)
    try:
        dataset_id = service.upload(colour_images(per_class=2))["id"]
        before = load_dataset(service.database, spec_of(dataset_id), settings)
        extra = {"red": colour_images(per_class=1, seed=9)["red"]}
        files = {"file": ("more.zip", class_zip(extra), "application/zip")}
        grown = service.client.post(f"/datasets/{dataset_id}/images", files=files)
        assert grown.status_code == 200, grown.text
        after = load_dataset(service.database, spec_of(dataset_id), settings)
        assert len(after.images) == len(before.images) + 1
        assert after.images.folder != before.images.folder
        assert list(after.images.folder.parent.iterdir()) == [after.images.folder]
        assert before.images[0] == after.images[0]  # an open cache reads on after removal
    finally:
        service.close()


@pytest.mark.slow
def test_a_job_streamed_by_the_worker_ends_as_one_held_in_memory(tmp_path: Path) -> None:
    images = colour_images(per_class=4)
    body = dict(STREAMED, training={**STREAMED["training"], "epochs": 1})
    histories = []
    for bound in (1, 1024**3):
        settings = make_settings(tmp_path / str(bound), train_in_memory_bytes=bound)
        service = Service(settings)
        try:
            dataset_id = service.upload(images)["id"]
            job = service.train(job_body(dataset_id, **body))
            histories.append(without_timing(job["history"]))
        finally:
            service.close()
    assert histories[0] == histories[1]


@pytest.mark.slow
def test_a_streamed_job_resumed_from_its_checkpoint_ends_as_one_held_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Positions shuffled, then read and decoded, every epoch; stopped in the fine-tuning
    stage and resumed: the losses and weights of an uninterrupted in-memory run."""
    from service.ml import pipeline
    from service.ml import train as training
    from service.ml.data import TrainingStopped
    from tests.test_resume import STAGED, Observer
    from tests.test_resume import labelled as resume_data

    spec = JobSpec.model_validate(job_body("d_resume", **STAGED))
    data = resume_data()
    whole = training.train(spec, data, Observer(), backbone_weights=None)
    monkeypatch.setattr(pipeline, "DECODED_CACHE_BYTES", 0)
    streamed, folder = sharded(data, tmp_path / "s"), tmp_path / "checkpoint"
    with pytest.raises(TrainingStopped):
        training.train(spec, streamed, Observer(3), backbone_weights=None, checkpoint_dir=folder)
    resumed = training.train(
        spec, streamed, Observer(), backbone_weights=None, checkpoint_dir=folder
    )
    assert [row["loss"] for row in resumed.history] == pytest.approx(
        [row["loss"] for row in whole.history], rel=1e-6
    )
    for ours, theirs in zip(
        resumed.network.model.get_weights(), whole.network.model.get_weights(), strict=True
    ):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
