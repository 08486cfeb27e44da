"""Multi-label datasets through the service: a labels file in the upload, a job that trains a
sigmoid head on them, /predict answering each label past its own threshold, and the review
loop labelling pool and captured images with label sets."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from service.ml.data import LabelledImages
from service.storage.tables import PoolImage
from service.training.spec import JobSpec
from tests.conftest import LIGHT, Service, job_body, make_settings, make_zip, post_zip
from tests.test_multilabel import COLOURS, halves
from tests.test_predictions import result_lines, run_batch


def label_names(row: np.ndarray) -> list[str]:
    return [name for name, held in zip(COLOURS, row, strict=True) if held]


def labelled_zip(data: LabelledImages, form: str = "csv", **extra: bytes) -> bytes:
    """The images under img/, their labels in labels.csv or labels.jsonl at the top."""
    files = {f"img/{number}.png": image for number, image in enumerate(data.images)}
    names = [label_names(row) for row in data.labels]
    if form == "csv":
        rows = [f"img/{n}.png,{';'.join(labels)}" for n, labels in enumerate(names)]
        files["labels.csv"] = "\n".join(["filename,labels", *rows]).encode()
    else:
        rows = [json.dumps({"file": f"img/{n}.png", "labels": ls}) for n, ls in enumerate(names)]
        files["labels.jsonl"] = "\n".join(rows).encode()
    return make_zip({**files, **extra})


def refused(service: Service, content: bytes) -> str:
    response = post_zip(service, content)
    assert response.status_code == 400, response.text
    return response.json()["detail"]


@pytest.mark.any_database
def test_a_labels_file_makes_a_multi_label_dataset_and_a_bad_one_is_named(
    service: Service,
) -> None:
    data = halves(12, seed=1)
    stray = halves(1, seed=2).images[0]
    response = post_zip(service, labelled_zip(data, "csv", **{"img/stray.png": stray}))
    assert response.status_code == 201, response.text
    dataset = response.json()
    counts = {entry["name"]: entry["count"] for entry in dataset["classes"]}
    expected = {name: int(data.labels[:, j].sum()) for j, name in enumerate(COLOURS)}
    assert dataset["multi_label"] is True and dataset["num_images"] == 12
    assert counts == {name: count for name, count in expected.items() if count}
    assert {"path": "img/stray.png", "reason": "not listed in labels.csv"} in dataset["skipped"]
    jsonl = post_zip(service, labelled_zip(data, "jsonl")).json()
    assert jsonl["classes"] == dataset["classes"] and jsonl["multi_label"] is True

    images = {"img/0.png": data.images[0]}
    detail = refused(service, make_zip({**images, "labels.csv": b"filename,labels\nimg/0.png\n"}))
    assert "labels.csv line 2: expected 2 fields" in detail
    line = json.dumps({"file": "img/0.png", "labels": ["red;blue"]}).encode()
    assert "labels.jsonl line 1" in refused(service, make_zip({**images, "labels.jsonl": line}))
    both = make_zip({**images, "labels.csv": b"filename,labels\n", "labels.jsonl": b""})
    assert "send one" in refused(service, both)

    # What is single-label only for now says so, and the dataset stays as it was.
    folders = make_zip({"red/1.png": data.images[0], "blue/2.png": data.images[1]})
    appended = service.client.post(
        f"/datasets/{dataset['id']}/images", files={"file": ("more.zip", folders)}
    )
    assert appended.status_code == 400 and "multi-label" in appended.json()["detail"]
    searched = {"backbone": {"name": "MobileNet"}, "budget": {"trials": 2}}
    answer = service.client.post("/searches", json={"dataset_id": dataset["id"], **searched})
    assert answer.status_code == 202 and answer.json()["metric"] == "mean_average_precision"
    single = service.upload({"red": data.images[:2], "blue": data.images[2:4]})
    body = job_body(single["id"], training={"label_precision": 0.9})
    answer = service.client.post("/jobs", json=body)
    assert answer.status_code == 422 and "single-label" in answer.text
    assert answer.json()["detail"][0]["loc"] == ["body", "training", "label_precision"]
    assert service.client.get(f"/datasets/{dataset['id']}").json()["version"] == 1
    # The health report counts each label, the images without one and the pairs held together.
    report = service.client.get(f"/datasets/{dataset['id']}/report").json()
    assert "single-label" in report["mislabelled"]["note"]  # no advice to point to here
    sets = [frozenset(label_names(row)) for row in data.labels]
    assert report["labels"]["no_label_images"] == sum(not held for held in sets)
    pairs = {tuple(pair["labels"]): pair["images"] for pair in report["labels"]["cooccurrence"]}
    assert report["labels"]["pairs"] == len(pairs)
    assert any(" labels have fewer than 20 images" in line for line in report["warnings"])
    assert pairs == {
        tuple(sorted(pair)): sum(set(pair) <= held for held in sets)
        for pair in {tuple(sorted(held)) for held in sets if len(held) == 2}
    }
    # The console shows each image's labels as tags, and no tools that would answer 409.
    page = service.client.get(f"/console/datasets/{dataset['id']}")
    assert page.status_code == 200 and 'id="multi-label"' in page.text
    assert 'class="tag"' in page.text and 'id="label-sets"' in page.text
    assert 'id="advice-form"' in page.text and 'id="search-form"' in page.text
    # An edit gives an image its whole label set (a new label makes a new class), or removes it.
    url = f"/datasets/{dataset['id']}/edits"
    relabel = {"relabel": [{"image_id": 1, "labels": ["red", "violet", "red"]}]}
    assert service.client.post(url, json=relabel).status_code == 201
    image = service.client.get(f"/datasets/{dataset['id']}/images?limit=1").json()[0]
    assert image["id"] == 1 and image["label"] == "red;violet"
    both = {"relabel": [{"image_id": 1, "label": "red", "labels": ["red"]}]}
    assert service.client.post(url, json=both).status_code == 422
    bad = service.client.post(url, json={"relabel": [{"image_id": 1, "labels": ["a;b"]}]})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "labels"
    theirs = service.client.get(f"/datasets/{single['id']}/images?limit=1").json()[0]["id"]
    answer = service.client.post(
        f"/datasets/{single['id']}/edits",
        json={"relabel": [{"image_id": theirs, "labels": ["x"]}]},
    )
    assert answer.status_code == 422 and "single-label" in answer.text
    before = service.client.get(f"/datasets/{dataset['id']}").json()["classes"]
    first = service.client.get(f"/datasets/{dataset['id']}/images?limit=1").json()[0]
    removed = service.client.post(
        f"/datasets/{dataset['id']}/edits", json={"delete": [first["id"]]}
    )
    assert removed.status_code == 201, removed.text
    counts = {entry["name"]: entry["count"] for entry in removed.json()["classes"]}
    for name in first["label"].split(";") if first["label"] else []:
        assert counts.get(name, 0) == {e["name"]: e["count"] for e in before}[name] - 1
    labelled_from_the_pool(service, dataset["id"], single["id"])


def labelled_from_the_pool(service: Service, dataset_id: str, single_id: str) -> None:
    """Unlabelled images join a multi-label dataset's pool and leave it with label sets
    (`label` meaning a set of one); `labels` on a single-label dataset's pool is a 422."""
    pool = {f"pool/{n}.png": image for n, image in enumerate(halves(3, seed=7).images)}
    for target in (dataset_id, single_id):
        added = service.client.post(
            f"/datasets/{target}/pool", files={"file": ("pool.zip", make_zip(pool))}
        )
        assert added.status_code == 200 and added.json()["added"] == 3, added.text
    ids = pool_images(service, dataset_id)
    before = counts_of(service.client.get(f"/datasets/{dataset_id}").json())
    entries = [
        {"image_id": ids[0], "labels": ["violet", "red", "violet"]},
        {"image_id": ids[1], "labels": []},
        {"image_id": ids[2], "label": "green"},
    ]
    edited = service.client.post(f"/datasets/{dataset_id}/edits", json={"label": entries})
    assert edited.status_code == 201, edited.text
    after = counts_of(edited.json())
    assert after == {**before, "violet": 1, "red": before["red"] + 1, "green": before["green"] + 1}
    assert pool_images(service, dataset_id) == []
    theirs = pool_images(service, single_id)[0]
    answer = service.client.post(
        f"/datasets/{single_id}/edits", json={"label": [{"image_id": theirs, "labels": ["red"]}]}
    )
    assert answer.status_code == 422 and "single-label" in answer.text
    assert answer.json()["detail"][0]["loc"] == ["body", "label", 0, "labels"]


def counts_of(dataset: dict[str, Any]) -> dict[str, int]:
    return {entry["name"]: entry["count"] for entry in dataset["classes"]}


def pool_images(service: Service, dataset_id: str) -> list[int]:
    """The ids of the dataset's pool (the API lists them through a model's review queue)."""
    with service.database.session() as session:
        query = select(PoolImage.image_id).where(PoolImage.dataset_id == dataset_id)
        return sorted(session.scalars(query))


@pytest.mark.slow
def test_a_multi_label_model_answers_each_label_past_its_own_threshold(tmp_path: Path) -> None:
    service = Service(make_settings(tmp_path))
    try:
        data = halves(24, seed=0)
        dataset = post_zip(service, labelled_zip(data)).json()
        job = service.train(job_body(dataset["id"], backbone=LIGHT, training={"epochs": 1}))
        model_id = job["model_id"]
        model = service.client.get(f"/models/{model_id}").json()
        thresholds = dict(zip(model["classes"], model["thresholds"], strict=True))
        assert sorted(thresholds) == sorted(COLOURS)

        report = service.client.get(f"/models/{model_id}/label-evaluation")
        assert report.status_code == 200, report.text
        assert [row["label"] for row in report.json()["per_label"]] == model["classes"]
        # The health report's split is the job's: as many images held out for validation.
        health = service.client.get(f"/datasets/{dataset['id']}/report?seed=0").json()
        assert health["leakage"]["validation_images"] == report.json()["images"]
        assert service.client.get(f"/models/{model_id}/evaluation").status_code == 409
        advised(service, dataset["id"], model_id, data)
        searched(service, dataset["id"])
        # Drift reads its reference (the validation split's ood_scores) from either report.
        drift = service.client.get(f"/models/{model_id}/drift")
        assert drift.status_code == 200 and drift.json()["reference_images"] > 0, drift.text
        export = service.client.post(f"/models/{model_id}/exports", json={"format": "onnx"})
        assert export.status_code == 202, export.text
        assert service.worker.run_until_idle() >= 1
        (record,) = service.client.get(f"/models/{model_id}/exports").json()
        assert record["status"] == "ready", record
        assert record["report"]["thresholds"] == model["thresholds"]
        assert record["report"]["parity"]["agreement"] == 1.0

        page = service.client.get(f"/console/models/{model_id}")
        assert page.status_code == 200 and 'id="per-label"' in page.text
        assert 'data-metric="mean_average_precision"' in page.text  # its history's chart
        answered = service.client.post(
            "/predict",
            data={"model_id": model_id},
            files=[("files", ("0.png", data.images[0], "image/png"))],
        ).json()["predictions"][0]
        assert isinstance(answered["ood_score"], float) and "unknown" in answered
        answers = predictions(service, model_id, data.images[:4])
        every = predictions(service, model_id, data.images[:4], threshold="0")
        for answer, scores in zip(answers, every, strict=True):
            assert len(scores) == len(COLOURS)  # threshold 0: every label, scored
            passing = {label for label, score in scores.items() if score >= thresholds[label]}
            assert set(answer) == passing
            assert all(answer[label] == scores[label] for label in answer)
        # TF Serving's path answers every label's probability; explain maps each label shown.
        b64 = base64.b64encode(data.images[0]).decode()
        served = service.client.post(
            f"/v1/models/{model_id}:predict", json={"instances": [{"b64": b64}]}
        )
        assert served.status_code == 200, served.text
        row = dict(zip(model["classes"], served.json()["predictions"][0], strict=True))
        assert row == pytest.approx(every[0], abs=1e-6)
        # A batch over the dataset answers as /predict does: the labels past their thresholds.
        batch = service.client.post(
            "/predictions", data={"model_id": model_id, "dataset_id": dataset["id"]}
        )
        record = run_batch(service, batch)
        by_file = {line["file"]: line["top"] for line in result_lines(service.client, record["id"])}
        tops = [by_file[f"img/{n}.png"] for n in range(len(answers))]
        batched = [{t["label"]: t["score"] for t in top} for top in tops]
        assert [set(scores) for scores in batched] == [set(scores) for scores in answers]
        # Other batch sizes run other oneDNN kernels: float32 sums in another order, a
        # probability's last digits apart (1.5e-6 seen).
        for scores, answer in zip(batched, answers, strict=True):
            assert scores == pytest.approx(answer, abs=1e-5)
        # A comparison of two multi-label models: right when the whole label set is.
        other = service.train(job_body(dataset["id"], backbone=LIGHT, training={"seed": 1}))
        answer = service.client.post(
            "/comparisons",
            json={"models": [model_id, other["model_id"]], "dataset_id": dataset["id"]},
        )
        assert answer.status_code == 202, answer.text
        assert service.worker.run_until_idle() == 1
        done = service.client.get(f"/comparisons/{answer.json()['id']}").json()
        assert done["status"] == "succeeded", done
        sets = {
            f"img/{n}.png": ";".join(sorted(label_names(row))) for n, row in enumerate(data.labels)
        }
        answered = {
            line["file"]: ";".join(sorted(t["label"] for t in line["top"]))
            for line in result_lines(service.client, record["id"])
        }
        exact = np.mean([answered[name] == sets[name] for name in sets])
        assert done["models"][0]["accuracy"] == pytest.approx(exact, abs=1e-12)
        assert [row["name"] for row in done["per_class"]] == sorted(COLOURS)
        explained = service.client.post(
            "/predict",
            data={"model_id": model_id, "explain": "true", "threshold": "0"},
            files=[("files", ("0.png", data.images[0], "image/png"))],
        )
        assert explained.status_code == 200, explained.text
        top = explained.json()["predictions"][0]["top"]
        assert len(top) == len(COLOURS) and all(entry["heatmap"] for entry in top)
        review_loop(service, dataset["id"], model_id, thresholds)
    finally:
        service.close()


def review_loop(
    service: Service, dataset_id: str, model_id: str, thresholds: dict[str, float]
) -> None:
    """The review queue of a multi-label model: each pool image suggested the label set
    /predict answers, its margin that of the label nearest its threshold; a capture labelled
    with a set."""
    pool = halves(3, seed=7).images
    files = {"file": ("pool.zip", make_zip({f"pool/{n}.png": d for n, d in enumerate(pool)}))}
    assert service.client.post(f"/datasets/{dataset_id}/pool", files=files).is_success
    assert service.client.put(f"/models/{model_id}/capture", json={"rate": 1.0}).is_success
    predictions(service, model_id, halves(1, seed=8).images)
    service.client.app.state.monitoring.recorder.drain()
    queue = service.client.get(f"/models/{model_id}/review").json()
    assert queue["thresholds"] == [thresholds[name] for name in queue["classes"]]
    assert queue["candidates"] == {"captures": 1, "pool": 3}, queue
    every = predictions(service, model_id, pool, threshold="0")
    listed = queue["items"] + queue["unknowns"]  # a 1-epoch model finds much unknown
    assert len(listed) == 4
    for item in listed:
        if item["image_id"] is None:
            continue  # a capture keeps a smaller JPEG of what was sent
        scores = every[int(item["filename"].removeprefix("pool/").removesuffix(".png"))]
        assert set(item["labels"]) == {n for n, score in scores.items() if score >= thresholds[n]}
        nearest = min(abs(score - thresholds[name]) for name, score in scores.items())
        assert item["margin"] == pytest.approx(nearest, abs=1e-5)
    page = service.client.get(f"/console/models/{model_id}/review")
    assert 'data-multi-label="true"' in page.text and 'id="review-multi-label"' in page.text
    capture_id = next(item["capture_id"] for item in listed if item["capture_id"])
    for captured in service.client.get(f"/models/{model_id}/captures").json():
        scores = captured["scores"].items()
        nearest = min(abs(score - thresholds[name]) for name, score in scores)
        assert captured["margin"] == pytest.approx(nearest, abs=1e-5)  # as "uncertain" sorts
    edit = {"label": [{"capture_id": capture_id, "labels": ["blue", "red"]}]}
    edited = service.client.post(f"/datasets/{dataset_id}/edits", json=edit)
    assert edited.status_code == 201, edited.text
    assert service.client.get(f"/models/{model_id}/review").json()["labelled_since_model"] == 1


def advised(service: Service, dataset_id: str, model_id: str, data: LabelledImages) -> None:
    """Advice on a multi-label dataset: a probe per label, scored by mean average precision
    against what knowing nothing scores, the images counted once, no label review."""
    backbone = {**LIGHT, "weights": f"model:{model_id}", "input_size": 32}
    asked = service.client.post(f"/datasets/{dataset_id}/advice", json={"backbone": backbone})
    assert asked.status_code == 202, asked.text
    assert service.worker.run_until_idle() == 1
    advice = service.client.get(f"/datasets/{dataset_id}/advice/{asked.json()['id']}").json()
    assert advice["status"] == "succeeded", advice
    result = advice["result"]
    assert result["probe"]["metric"] == "mean_average_precision"
    assert result["probe"]["chance"] == pytest.approx(float(data.labels.mean(axis=0).mean()))
    assert 0 <= result["probe"]["random_accuracy"] <= 1 and 0 <= result["probe"]["accuracy"] <= 1
    assert result["images"]["total"] == result["images"]["sampled"] == len(data.labels)
    assert result["images"]["smallest_class"] == int(data.labels.sum(axis=0).min())
    assert any("mean average precision" in reason for reason in result["reasons"])
    assert JobSpec.model_validate(result["spec"]).dataset_id == dataset_id  # POST /jobs takes it
    report = service.client.get(f"/datasets/{dataset_id}/report").json()
    assert report["mislabelled"]["review"] is None  # a probe per label reviews no label set


def searched(service: Service, dataset_id: str) -> None:
    """A search on a multi-label dataset: sigmoid heads, trials ranked by the labels' mean
    average precision, a best spec that trains."""
    body = {
        "dataset_id": dataset_id,
        "backbone": {**LIGHT, "weights": None, "input_size": 32},
        "budget": {"trials": 2},
        "space": {"freeze_depths": [0]},
        "head_epochs": 2,
        "finalists": 1,
    }
    asked = service.client.post("/searches", json=body)
    assert asked.status_code == 202, asked.text
    assert service.worker.run_until_idle() == 1
    search = service.client.get(f"/searches/{asked.json()['id']}").json()
    assert search["status"] == "succeeded" and search["metric"] == "mean_average_precision"
    assert [trial["phase"] for trial in search["trials"]] == ["head", "head", "fine_tune"]
    for trial in search["trials"]:
        assert len(trial["scores"]) >= 1 and all(0 <= score <= 1 for score in trial["scores"])
    events = service.client.get(f"/jobs/{search['job_id']}").json()["history"]
    assert [row["val_mean_average_precision"] for row in events] == [
        trial["value"] for trial in search["trials"]
    ]
    assert JobSpec.model_validate(search["best"]["spec"]).dataset_id == dataset_id
    # Its job page charts and tabulates each trial's score under that metric.
    page = service.client.get(f"/console/jobs/{search['job_id']}").text
    assert 'data-metric="mean_average_precision"' in page and "Val. mean average precision" in page


def predictions(
    service: Service, model_id: str, images: list[bytes], **form: Any
) -> list[dict[str, float]]:
    files = [("files", (f"{n}.png", image, "image/png")) for n, image in enumerate(images)]
    response = service.client.post("/predict", data={"model_id": model_id, **form}, files=files)
    assert response.status_code == 200, response.text
    return [
        {row["label"]: row["score"] for row in image["top"]}
        for image in response.json()["predictions"]
    ]
