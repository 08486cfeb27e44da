"""The job lifecycle through the API: the in-use rule, old rows, and paginated lists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from service.jobs import JobStatus
from service.storage.tables import Job, new_id
from tests.browser import start_live_service
from tests.conftest import Service, class_zip, colour_images, job_body, stored_model


def store_model(service: Service) -> str:
    """A model row as the worker would store it; the rule under test never loads its bytes."""
    model = stored_model(None)
    with service.database.session(write=True) as session:
        session.add(model)
    return model.id


def test_a_model_a_job_still_needs_cannot_be_deleted(service: Service) -> None:
    dataset_id = service.upload(colour_images(per_class=3))["id"]
    model_id = store_model(service)
    body = job_body(dataset_id, backbone={"weights": f"model:{model_id}"})
    first = service.client.post("/jobs", json=body).json()["id"]
    second = service.client.post("/jobs", json=body).json()["id"]

    refused = service.client.delete(f"/models/{model_id}")
    assert refused.status_code == 409
    assert first in refused.json()["detail"] and second in refused.json()["detail"]
    assert service.client.get(f"/models/{model_id}").status_code == 200

    for job_id in (first, second):
        assert service.client.post(f"/jobs/{job_id}/cancel").status_code == 200
    assert service.client.delete(f"/models/{model_id}").status_code == 204


def test_one_in_use_rule_for_datasets_weights_and_models(service: Service) -> None:
    dataset_id = service.upload(colour_images(per_class=3))["id"]
    job_id = service.client.post("/jobs", json=job_body(dataset_id)).json()["id"]
    refused = service.client.delete(f"/datasets/{dataset_id}")
    assert refused.status_code == 409
    assert refused.json() == {
        "detail": f"dataset {dataset_id} is used by queued or running job(s) {job_id}"
    }
    service.client.post(f"/jobs/{job_id}/cancel")
    assert service.client.delete(f"/datasets/{dataset_id}").status_code == 204


def old_row(service: Service, dataset_id: str, kind: str = "train") -> str:
    """A job queued by an older version: a backbone and a field this one no longer knows."""
    job_id = new_id("j")
    spec = {
        **job_body(dataset_id),
        "backbone": {"name": "AlexNet", "weights": None, "input_size": 32},
        "colour_jitter": 0.5,
    }
    with service.database.session(write=True) as session:
        session.add(
            Job(
                id=job_id,
                kind=kind,
                name="old",
                status=JobStatus.QUEUED,
                spec=spec,
                dataset_id=dataset_id,
                history=[],
                attempts=0,
                cancel_requested=False,
            )
        )
    return job_id


def test_old_rows_read_as_stored_and_fail_with_a_reason_when_run(service: Service) -> None:
    dataset_id = service.upload(colour_images(per_class=3))["id"]
    job_id = old_row(service, dataset_id)

    listed = service.client.get("/jobs")
    assert listed.status_code == 200
    assert [job["id"] for job in listed.json()] == [job_id]
    read = service.client.get(f"/jobs/{job_id}")
    assert read.status_code == 200
    assert read.json()["spec"]["backbone"]["name"] == "AlexNet"
    assert read.json()["spec"]["colour_jitter"] == 0.5

    assert service.worker.run_once()
    failed = service.client.get(f"/jobs/{job_id}").json()
    assert failed["status"] == "failed"
    assert "no longer validates" in failed["error"]
    assert "backbone.name" in failed["error"] and "AlexNet" in failed["error"]
    assert "colour_jitter" in failed["error"]


def test_a_job_of_a_kind_this_service_does_not_run_reads_and_fails_naming_it(
    service: Service,
) -> None:
    """Queued by another version of the service (a kind added later, or removed): it reads
    as stored, and the worker fails it naming the kind instead of training it."""
    dataset_id = service.upload(colour_images(per_class=3))["id"]
    job_id = old_row(service, dataset_id, kind="retrain")

    read = service.client.get(f"/jobs/{job_id}")
    assert read.status_code == 200, read.text
    assert read.json()["kind"] == "retrain"
    assert service.client.get("/jobs").status_code == 200
    assert service.client.get("/jobs", params={"kind": "retrain"}).status_code == 422

    assert service.worker.run_once()
    failed = service.client.get(f"/jobs/{job_id}").json()
    assert failed["status"] == "failed"
    assert "job kind 'retrain' is not registered" in failed["error"]
    assert "train" in failed["error"].split("(it runs:")[1]
    with service.database.session() as session:  # nothing was trained or stored for it
        assert session.get(Job, job_id).finished_at is not None  # type: ignore[union-attr]
    assert service.client.get("/models").json() == []


def follow(client: Any, url: str) -> tuple[list[list[str]], list[str]]:
    """Every page's ids and every next-page URL, from `url` to the last page."""
    pages, links = [], []
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.text
        assert isinstance(response.json(), list)
        pages.append([row["id"] for row in response.json()])
        next_page = response.links.get("next", {}).get("url", "")
        links.append(next_page)
        url = str(httpx.URL(next_page).copy_with(scheme=None, host=None)) if next_page else ""
    return pages, links


def test_lists_are_keyset_pages_linked_by_a_next_header(service: Service) -> None:
    dataset_id = service.upload(colour_images(per_class=3))["id"]
    body = job_body(dataset_id)
    created = [service.client.post("/jobs", json=body).json()["id"] for _ in range(7)]
    for job_id in created[:3]:
        service.client.post(f"/jobs/{job_id}/cancel")

    pages, links = follow(service.client, "/jobs?limit=3")
    assert [len(page) for page in pages] == [3, 3, 1]
    assert [job for page in pages for job in page] == created[::-1]  # newest first, once each
    assert links[-1] == "" and all("cursor=" in link for link in links[:-1])

    pages, links = follow(service.client, "/jobs?status=cancelled&limit=2")
    assert [job for page in pages for job in page] == created[:3][::-1]
    assert "status=cancelled" in links[0]

    for path in ("/datasets", "/models", "/weights"):
        response = service.client.get(f"{path}?limit=1")
        assert response.status_code == 200 and isinstance(response.json(), list)


def test_bad_page_parameters_are_422_naming_them(service: Service) -> None:
    for query, field in (
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=W10", "cursor"),  # valid base64 of "[]"
    ):
        response = service.client.get(f"/jobs?{query}")
        assert response.status_code == 422, query
        assert response.json()["detail"][0]["loc"] == ["query", field]


def test_text_that_is_not_unicode_is_422_not_a_database_error(service: Service) -> None:
    # A lone surrogate is legal in a JSON string escape but no database can store it.
    body = '{"dataset_id": "\\ud800", "backbone": {"name": "MobileNetV2"}}'
    response = service.client.post(
        "/jobs", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "dataset_id"]
    assert service.client.get("/jobs").status_code == 200


def test_what_an_answer_says_was_created_can_be_read_at_once(tmp_path: Path) -> None:
    # Over a real server: the request's transaction commits before its answer leaves.
    live = start_live_service(tmp_path / "data")
    try:
        with live.client() as client:
            dataset = client.post(
                "/datasets",
                files={"file": ("c.zip", class_zip(colour_images(per_class=3)), "application/zip")},
            ).json()
            assert client.get(f"/datasets/{dataset['id']}").status_code == 200
            for _ in range(60):
                job = client.post("/jobs", json=job_body(dataset["id"])).json()
                assert client.get(f"/jobs/{job['id']}").status_code == 200
    finally:
        live.stop()


def test_every_registered_kind_declares_a_spec_and_a_task_that_loads() -> None:
    """A kind's task is named by import path (the API never imports it): a typo there would
    only show when a worker ran the first job of that kind."""
    from pydantic import BaseModel

    from service.job_kinds import KINDS
    from service.jobs.kinds import JobKind, KindRegistry, UnknownKind

    assert set(KINDS.names) >= {"train", "advice", "export", "predict", "import"}
    for kind in KINDS:
        assert issubclass(kind.spec, BaseModel) and callable(kind.load_task()), kind.name
    with pytest.raises(ValueError, match="'train' registered twice"):
        KindRegistry([*KINDS, JobKind("train", BaseModel, "x:y", "again")])
    with pytest.raises(UnknownKind, match="'retrain' is not registered"):
        KINDS.get("retrain")
