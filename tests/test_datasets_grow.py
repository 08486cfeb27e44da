"""Datasets that grow: a zip appended to a dataset (POST /datasets/{id}/images), uploads
stored in bounded batches that leave nothing behind when they fail half-way, and a folder on
the service's host imported by the worker (POST /datasets/import), never outside IMPORT_ROOT.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.datasets import imports
from service.datasets import service as datasets
from service.datasets.ingest import BadArchive
from service.datasets.service import upload_limits
from service.datasets.spec import ImportSpec
from service.problems import BadContent
from service.storage.tables import DatasetImage
from tests.conftest import (
    Service,
    class_zip,
    colour_images,
    count_rows,
    job_body,
    make_settings,
    post_zip,
    stored_rows,
)


def append(service: Service, dataset_id: str, content: bytes) -> Any:
    return service.client.post(
        f"/datasets/{dataset_id}/images", files={"file": ("part.zip", content, "application/zip")}
    )


def classes(dataset: dict[str, Any]) -> dict[str, int]:
    return {entry["name"]: entry["count"] for entry in dataset["classes"]}


def test_append_adds_images_and_merges_classes(service: Service) -> None:
    dataset = service.upload({"red": colour_images(2)["red"], "blue": colour_images(2)["blue"]})
    more = colour_images(per_class=3, seed=1)  # new bytes: red and blue grow, green is new
    response = append(service, dataset["id"], class_zip(more, top="part2/"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert classes(body["dataset"]) == {"blue": 5, "green": 3, "red": 5}
    assert body["dataset"]["num_images"] == 13
    assert {entry["name"]: entry["count"] for entry in body["added"]} == {
        "blue": 3,
        "green": 3,
        "red": 3,
    }
    assert body["skipped"] == []
    assert service.client.get(f"/datasets/{dataset['id']}").json() == body["dataset"]
    assert count_rows(service, DatasetImage, DatasetImage.dataset_id == dataset["id"]) == 13


def test_the_same_zip_twice_adds_nothing(service: Service) -> None:
    images = colour_images(per_class=2)
    dataset = service.upload(images)
    twice = {"red": [*images["red"], images["red"][0]], "green": [colour_images(1, 5)["green"][0]]}
    first = append(service, dataset["id"], class_zip(twice))
    assert first.status_code == 200, first.text
    added = first.json()
    # Only the new green image: the red ones are stored, and one is in this zip twice.
    assert added["added"] == [{"name": "green", "count": 1}]
    assert {entry["path"] for entry in added["skipped"]} == {
        "red/000.png",
        "red/001.png",
        "red/002.png",
    }
    assert all("already in the dataset" in entry["reason"] for entry in added["skipped"])
    again = append(service, dataset["id"], class_zip(twice)).json()
    assert again["added"] == [] and len(again["skipped"]) == 4
    assert again["dataset"]["num_images"] == 7 == stored_rows(service)[1]


@pytest.mark.any_database
def test_append_keeps_the_checks_of_creation(service: Service) -> None:
    dataset = service.upload(colour_images(per_class=2))
    refused = append(service, dataset["id"], b"not a zip")
    assert refused.status_code == 400 and "not a zip" in refused.text
    unknown = append(service, "d_missing", class_zip(colour_images(1, 3)))
    assert unknown.status_code == 404
    one_class = append(service, dataset["id"], class_zip({"red": colour_images(2, 4)["red"]}))
    assert one_class.status_code == 200, one_class.text  # a part may hold a single class


def test_append_does_not_wait_for_a_job_that_uses_the_dataset(service: Service) -> None:
    """The job trains on the version it named (tests/test_versions.py trains one); the append
    makes the next version at once."""
    dataset = service.upload(colour_images(per_class=2))
    job = service.client.post("/jobs", json=job_body(dataset["id"]))
    assert job.status_code == 202, job.text
    appended = append(service, dataset["id"], class_zip(colour_images(2, seed=1)))
    assert appended.status_code == 200, appended.text
    assert appended.json()["dataset"]["version"] == 2
    assert job.json()["spec"]["dataset_version"] == 1
    assert stored_rows(service) == (1, 12)


def failing_after(rows: int) -> Any:
    """`zip_images` that fails once `rows` images were read: after a batch was flushed."""
    real = datasets.zip_images

    def images(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for number, item in enumerate(real(*args, **kwargs)):
            if number == rows:
                raise BadArchive("the disk went away")
            yield item

    return images


def test_an_upload_that_fails_half_way_leaves_nothing(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = service.upload(colour_images(per_class=2))
    monkeypatch.setattr(datasets, "BATCH_ROWS", 2)
    monkeypatch.setattr(datasets, "zip_images", failing_after(5))
    created = post_zip(service, class_zip(colour_images(per_class=3, seed=1)))
    assert created.status_code == 400 and "the disk went away" in created.text
    appended = append(service, dataset["id"], class_zip(colour_images(per_class=3, seed=2)))
    assert appended.status_code == 400
    assert stored_rows(service) == (1, 6)
    assert service.client.get(f"/datasets/{dataset['id']}").json()["num_images"] == 6


# -- server-side import -------------------------------------------------------------------


@pytest.fixture
def importing(tmp_path: Path, database_url: str) -> Iterator[tuple[Service, Path]]:
    root = tmp_path / "imports"
    root.mkdir()
    running = Service(make_settings(tmp_path, database_url=database_url, import_root=root))
    yield running, root
    running.close()


def write_folder(folder: Path, images: dict[str, list[bytes]]) -> None:
    for label, items in images.items():
        (folder / label).mkdir(parents=True)
        for number, data in enumerate(items):
            (folder / label / f"{number:03d}.png").write_bytes(data)


def run_import(service: Service, body: dict[str, Any]) -> dict[str, Any]:
    response = service.client.post("/datasets/import", json=body)
    assert response.status_code == 202, response.text
    assert response.headers["Location"] == f"/jobs/{response.json()['id']}"
    assert service.worker.run_until_idle() == 1
    return service.client.get(f"/jobs/{response.json()['id']}").json()


def test_import_reads_a_folder_through_the_worker(
    importing: tuple[Service, Path], tmp_path: Path
) -> None:
    service, root = importing
    write_folder(root / "colours", colour_images(per_class=2))
    (root / "colours" / "README.txt").write_text("not an image")
    outside = tmp_path / "secret.png"
    outside.write_bytes(colour_images(1, seed=9)["red"][0])
    os.symlink(outside, root / "colours" / "red" / "link.png")  # a file link leading out
    os.symlink(tmp_path, root / "colours" / "green" / "away")  # a folder link: not followed
    job = run_import(service, {"path": "colours", "name": "from disk"})
    assert job["status"] == "succeeded", job
    assert job["kind"] == "import"
    assert job["progress"] == {
        "stage": 1,
        "stages": 1,
        "epoch": 1,
        "epochs": 1,
        "step": 9,
        "steps": 9,
    }
    dataset = service.client.get(f"/datasets/{job['dataset_id']}").json()
    assert dataset["name"] == "from disk"
    assert classes(dataset) == {"blue": 2, "green": 2, "red": 2}
    reasons = {entry["path"]: entry["reason"] for entry in dataset["skipped"]}
    assert "outside IMPORT_ROOT" in reasons["red/link.png"]
    assert "not followed" in reasons["green/away"]
    assert "README.txt" in reasons

    # Into the same dataset again, with one new image: only that one is added.
    write_folder(root / "more", {"blue": [colour_images(1, seed=7)["blue"][0]]})
    (root / "more" / "red").mkdir()
    (root / "more" / "red" / "copy.png").write_bytes(colour_images(2)["red"][0])
    grown = run_import(service, {"path": "more", "dataset_id": dataset["id"]})
    assert grown["status"] == "succeeded", grown
    again = service.client.get(f"/datasets/{dataset['id']}").json()
    assert classes(again) == {"blue": 3, "green": 2, "red": 2}


@pytest.mark.any_database
def test_import_skips_a_fifo_instead_of_hanging(
    importing: tuple[Service, Path],
) -> None:
    """A FIFO under the root (named like an image, or linked to from one) is skipped with a
    reason; opening it for reading would wait for a writer forever, cancel or not."""
    service, root = importing
    write_folder(root / "colours", colour_images(per_class=2))
    fifo = root / "colours" / "red" / "pipe.png"
    os.mkfifo(fifo)
    os.symlink(fifo, root / "colours" / "green" / "link.png")
    response = service.client.post("/datasets/import", json={"path": "colours"})
    assert response.status_code == 202, response.text
    worker = threading.Thread(target=service.worker.run_until_idle, daemon=True)
    worker.start()
    worker.join(timeout=20)
    if worker.is_alive():  # hung in open(): let it go (a writer appears), then fail
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(timeout=20)
        pytest.fail("the import hung on a FIFO")
    job = service.client.get(f"/jobs/{response.json()['id']}").json()
    assert job["status"] == "succeeded", job
    dataset = service.client.get(f"/datasets/{job['dataset_id']}").json()
    assert classes(dataset) == {"blue": 2, "green": 2, "red": 2}
    reasons = {entry["path"]: entry["reason"] for entry in dataset["skipped"]}
    assert "not a regular file" in reasons["red/pipe.png"]
    assert "not a regular file" in reasons["green/link.png"]


def test_a_cancel_stops_an_import_in_the_middle_of_a_long_read(
    importing: tuple[Service, Path],
) -> None:
    """should_stop is asked while a file is read, not only between files."""
    service, root = importing
    (root / "big" / "only").mkdir(parents=True)
    (root / "big" / "only" / "huge.png").write_bytes(b"\0" * (4 * 1024 * 1024))
    asked: list[bool] = []

    def should_stop() -> bool:  # the cancel arrives once the first file has begun
        asked.append(True)
        return len(asked) > 1

    try:
        plan = imports.scan_directory(
            ImportSpec(path="big", directory=str(root / "big")),
            service.settings,
            upload_limits(service.settings),
            on_progress=lambda done, total: None,
            should_stop=should_stop,
        )
    except BadContent as error:  # read to its end, then judged: the stop came too late
        pytest.fail(f"the read was not stopped: {error}")
    assert plan is None and len(asked) == 2


@pytest.mark.any_database
def test_import_refuses_paths_outside_the_root(
    importing: tuple[Service, Path], tmp_path: Path
) -> None:
    service, root = importing
    write_folder(tmp_path / "elsewhere", colour_images(per_class=2))
    os.symlink(tmp_path / "elsewhere", root / "escape")
    for path in ("../elsewhere", str(tmp_path / "elsewhere"), "escape", "missing"):
        response = service.client.post("/datasets/import", json={"path": path})
        assert response.status_code == 422, (path, response.text)
        assert "path" in response.text
    assert stored_rows(service) == (0, 0)


@pytest.mark.any_database
def test_import_is_off_without_a_root(service: Service) -> None:
    response = service.client.post("/datasets/import", json={"path": "anything"})
    assert response.status_code == 409
    assert "IMPORT_ROOT" in response.json()["detail"]


# -- the console ----------------------------------------------------------------------------


def test_the_console_adds_images_and_keeps_nothing_of_a_failed_part(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = service.upload(colour_images(per_class=2))
    page = service.client.get(f"/console/datasets/{dataset['id']}").text
    assert (
        "Add images" in page and f'data-upload="/console/datasets/{dataset["id"]}/images"' in page
    )
    assert "Import from the server" not in service.client.get("/console/datasets").text
    url = f"/console/datasets/{dataset['id']}/images"
    part = {"file": ("part.zip", class_zip(colour_images(2, seed=1)), "application/zip")}
    added = service.client.post(url, files=part)
    assert added.status_code == 201
    assert added.headers["X-Location"] == f"/console/datasets/{dataset['id']}"
    # The console answers a refused part itself and its transaction commits: the savepoint
    # must have dropped the rows flushed before the failure.
    monkeypatch.setattr(datasets, "BATCH_ROWS", 1)
    monkeypatch.setattr(datasets, "zip_images", failing_after(2))
    part = {"file": ("part.zip", class_zip(colour_images(2, seed=2)), "application/zip")}
    failed = service.client.post(url, files=part)
    assert failed.status_code == 400 and "the disk went away" in failed.text
    created = service.client.post("/console/datasets", files=part)
    assert created.status_code == 400
    assert stored_rows(service) == (1, 12)


def test_the_console_imports_from_the_server(importing: tuple[Service, Path]) -> None:
    service, root = importing
    write_folder(root / "colours", colour_images(per_class=2))
    assert "Import from the server" in service.client.get("/console/datasets").text
    outside = service.client.post("/console/datasets/import", data={"path": "../x"})
    assert outside.status_code == 422 and "contains" in outside.text
    queued = service.client.post("/console/datasets/import", data={"path": "colours"})
    assert queued.status_code == 204
    job_id = queued.headers["HX-Redirect"].removeprefix("/console/jobs/")
    assert service.worker.run_until_idle() == 1
    job = service.client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["dataset_id"]
    assert service.client.get(f"/console/jobs/{job_id}").status_code == 200


def test_an_append_takes_a_dataset_upload_s_size(tmp_path: Path) -> None:
    from service.api.app import body_limit

    settings = make_settings(tmp_path)
    for path in ("/datasets/d_1/images", "/console/datasets/d_1/images"):
        assert body_limit(settings, path) == settings.max_dataset_bytes
    assert body_limit(settings, "/datasets/d_1/images/7") < settings.max_dataset_bytes
