"""Batch prediction: the request and its errors, the job the worker runs, and results that
agree with /predict image for image; bad files listed, not fatal."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import numpy as np
import pytest

from service import jobs
from service.storage.tables import BatchPrediction, Job
from service.training.service import queue_training
from service.training.spec import JobSpec
from tests.conftest import Service, colour_images, count_rows, job_body, make_zip, stored_model


def post_batch(client: Any, files: dict[str, Any] | None = None, **fields: Any) -> Any:
    return client.post("/predictions", data={k: str(v) for k, v in fields.items()}, files=files)


def zip_file(files: dict[str, bytes], name: str = "batch.zip") -> dict[str, Any]:
    return {"file": (name, make_zip(files), "application/zip")}


def run_batch(service: Service, answer: Any) -> dict[str, Any]:
    assert answer.status_code == 202, answer.text
    assert service.worker.run_until_idle() >= 1
    record = service.client.get(f"/predictions/{answer.json()['id']}").json()
    assert record["status"] == "succeeded", record
    return record


def result_lines(client: Any, prediction_id: str) -> list[dict[str, Any]]:
    answer = client.get(f"/predictions/{prediction_id}/results")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/x-ndjson"
    return [json.loads(line) for line in answer.text.splitlines()]


def predict_scores(client: Any, model_id: str, name: str, data: bytes) -> dict[str, Any]:
    """/predict's scores by label, and its `ood_score` and `unknown` under those names."""
    answer = client.post(
        "/predict", data={"model_id": model_id, "top_k": "3"}, files={"files": (name, data)}
    )
    assert answer.status_code == 200, answer.text
    (prediction,) = answer.json()["predictions"]
    scores = {score["label"]: score["score"] for score in prediction["top"]}
    return {**scores, "ood_score": prediction["ood_score"], "unknown": prediction["unknown"]}


# -- with a trained model ---------------------------------------------------------------------


def test_a_zip_is_answered_as_predict_answers_each_image(small_model: dict[str, Any]) -> None:
    service: Service = small_model["service"]
    model_id = small_model["job"]["model_id"]
    images = colour_images(per_class=2, seed=7)
    good = {
        f"holiday/{label}-{n}.png": data
        for label, row in images.items()
        for n, data in enumerate(row)
    }
    files = {
        **good,
        "holiday/notes.txt": b"not an image",
        "holiday/cut.png": good["holiday/red-0.png"][:60],  # truncated
        "__MACOSX/holiday/._red-0.png": b"resource fork",  # OS metadata: not looked at
    }
    answer = post_batch(service.client, zip_file(files), model_id=model_id, top_k=2)
    assert answer.json()["status"] == "queued" and answer.json()["source"] == "zip"
    record = run_batch(service, answer)

    assert record["images"] == len(good) + 2 and record["classified"] == len(good)
    assert {bad["file"] for bad in record["bad"]} == {"holiday/notes.txt", "holiday/cut.png"}
    assert all(bad["reason"] for bad in record["bad"])
    assert record["images_per_second"] > 0 and record["model_id"] == model_id

    lines = result_lines(service.client, record["id"])
    assert [line["file"] for line in lines] == sorted(files)[1:]  # path order, __MACOSX gone
    for line in lines:
        if line["file"] not in good:
            assert line["error"] and "top" not in line
            continue
        assert len(line["top"]) == 2 and line["top"][0]["score"] >= line["top"][1]["score"]
        expected = predict_scores(service.client, model_id, line["file"], good[line["file"]])
        for score in line["top"]:
            assert score["score"] == pytest.approx(expected[score["label"]], abs=1e-5)
        # A batch of several images rounds the backbone's sums in another order than one
        # image does; standardised distances carry that to about 1e-3.
        assert line["ood_score"] == pytest.approx(expected["ood_score"], rel=1e-3, abs=5e-3)
        assert line["unknown"] == expected["unknown"]

    table = list(
        csv.DictReader(
            io.StringIO(service.client.get(f"/predictions/{record['id']}/results?format=csv").text)
        )
    )
    assert [row["file"] for row in table] == [line["file"] for line in lines]
    for row, line in zip(table, lines, strict=True):
        if "top" in line:
            assert row["predicted_1"] == line["top"][0]["label"] and not row["error"]
            assert float(row["score_2"]) == pytest.approx(line["top"][1]["score"])
            assert float(row["ood_score"]) == pytest.approx(line["ood_score"])
            assert row["unknown"] == str(line["unknown"])
        else:
            assert row["error"] == line["error"] and not row["predicted_1"]
    job = service.client.get(f"/jobs/{record['job_id']}").json()
    assert job["kind"] == "predict" and job["progress"]["step"] == job["progress"]["steps"] == len(
        lines
    )
    # Done with it: the uploaded zip is not kept beside the results.
    with service.database.session() as session:
        row = session.get(BatchPrediction, record["id"])
        assert row is not None and row.archive is None


def test_a_dataset_is_answered_with_ids_labels_and_maps(small_model: dict[str, Any]) -> None:
    service: Service = small_model["service"]
    dataset = small_model["dataset"]
    answer = post_batch(
        service.client,
        model_id=small_model["job"]["model_id"],
        dataset_id=dataset["id"],
        top_k=1,
        explain="true",
    )
    record = run_batch(service, answer)
    assert record["source"] == "dataset" and record["bad"] == []
    assert record["images"] == record["classified"] == dataset["num_images"]
    lines = result_lines(service.client, record["id"])
    stored = service.client.get(f"/datasets/{dataset['id']}/images?limit=500").json()
    assert [(line["image_id"], line["label"], line["file"]) for line in lines] == [
        (image["id"], image["label"], image["filename"]) for image in stored
    ]
    for line in lines:
        ((label, heatmap),) = line["heatmaps"].items()
        assert label == line["top"][0]["label"] and heatmap["method"] in ("cam", "grad-cam")
        assert np.asarray(heatmap["map"]).ndim == 2


# -- the request, with placeholder models (nothing is classified) -----------------------------


def placeholder(service: Service) -> tuple[str, str]:
    """A dataset and a model row that names it: (model id, dataset id)."""
    dataset_id = service.upload(colour_images(per_class=2))["id"]
    with service.database.session(write=True) as session:
        job = queue_training(session, JobSpec.model_validate(job_body(dataset_id)))
        job.status = jobs.JobStatus.SUCCEEDED
        model = stored_model(job.id, dataset_id=dataset_id, name="colours")
        session.add(model)
    return model.id, dataset_id


def test_bad_requests_name_what_is_wrong_and_store_nothing(service: Service) -> None:
    model_id, dataset_id = placeholder(service)
    client = service.client
    one_image = zip_file({"a.png": b"x"})
    cases = [
        (post_batch(client, model_id=model_id), 422, "file"),
        (post_batch(client, one_image, model_id=model_id, dataset_id=dataset_id), 422, "one way"),
        (post_batch(client, one_image, model_id="m_nope"), 404, "m_nope"),
        (post_batch(client, one_image), 422, "model_id"),
        (post_batch(client, one_image, model_id=model_id, name="colours"), 422, "name"),
        (post_batch(client, one_image, name="colours", alias="production"), 404, "production"),
        (post_batch(client, model_id=model_id, dataset_id="d_nope"), 404, "d_nope"),
        (post_batch(client, one_image, model_id=model_id, top_k=0), 422, "top_k"),
        (post_batch(client, {"file": ("x.zip", b"not a zip")}, model_id=model_id), 400, "x.zip"),
        (post_batch(client, zip_file({}, "empty.zip"), model_id=model_id), 400, "no files"),
        (post_batch(client, zip_file({"../up.png": b"x"}), model_id=model_id), 400, "unsafe"),
    ]
    for answer, status, named in cases:
        assert answer.status_code == status, answer.text
        assert named in answer.text, answer.text
    assert count_rows(service, BatchPrediction) == 0
    assert count_rows(service, Job, Job.kind == "predict") == 0
    assert client.get("/predictions/p_nope").status_code == 404
    assert client.get("/predictions/p_nope/results").status_code == 404
    assert client.get("/predictions/p_nope/results?format=xml").status_code == 422


def test_lifecycle_the_version_is_pinned_and_what_it_needs_is_held(service: Service) -> None:
    model_id, dataset_id = placeholder(service)
    client = service.client
    assert (
        client.put("/registry/colours/aliases/production", json={"version": 1}).status_code == 200
    )
    answer = post_batch(client, name="colours", alias="production", dataset_id=dataset_id)
    assert answer.status_code == 202, answer.text
    record = answer.json()
    assert record["model_id"] == model_id
    assert record["model"] == {"name": "colours", "alias": "production"}
    job = client.get(f"/jobs/{record['job_id']}").json()
    assert job["spec"]["model_id"] == model_id and job["spec"]["dataset_id"] == dataset_id
    assert [row["id"] for row in client.get("/jobs?kind=predict").json()] == [job["id"]]
    assert [row["id"] for row in client.get("/predictions").json()] == [record["id"]]

    waiting = client.get(f"/predictions/{record['id']}/results?format=csv")
    assert waiting.status_code == 409 and "queued" in waiting.json()["detail"]
    # What the job needs cannot go from under it: the model (its alias too) and the dataset.
    assert client.delete(f"/datasets/{dataset_id}").status_code == 409
    assert client.delete("/registry/colours/aliases/production").status_code == 204
    assert client.delete(f"/models/{model_id}").status_code == 409

    assert client.delete(f"/predictions/{record['id']}").status_code == 204
    assert client.get(f"/jobs/{record['job_id']}").json()["status"] == "cancelled"
    assert client.get(f"/predictions/{record['id']}").status_code == 404
    assert client.delete(f"/models/{model_id}").status_code == 204
