"""Retraining a model: its own spec on a newer version of its dataset, from its weights, as
the next version of its name, its parent recorded."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from service.ml.build import build_network
from service.ml.heads import HeadWeights, head_bytes, read_head, warm_head
from service.storage.tables import ModelHead, TrainedModel
from service.training.spec import JobSpec
from tests.conftest import (
    LIGHT,
    Service,
    class_zip,
    colour_images,
    job_body,
    make_settings,
    stored_model,
)


def placeholder_of(service: Service, job_id: str | None, dataset_id: str | None) -> str:
    """A model row as if the job had trained it (its bytes are never read here)."""
    model = stored_model(job_id, dataset_id=dataset_id)
    with service.database.session(write=True) as session:
        session.add(model)
    return model.id


@pytest.mark.any_database
def test_bad_retrain_requests_say_what_is_wrong(service: Service) -> None:
    dataset_id = service.upload(colour_images(per_class=2))["id"]
    job, other = (service.client.post("/jobs", json=job_body(dataset_id)).json() for _ in "ab")
    for queued in (job, other):
        service.client.post(f"/jobs/{queued['id']}/cancel")
    model_id = placeholder_of(service, job["id"], dataset_id)

    def retrain(model: str, body: dict[str, Any]) -> tuple[int, str]:
        answer = service.client.post(f"/models/{model}/retrain", json=body)
        return answer.status_code, answer.text

    assert retrain("m_nope", {}) == (404, '{"detail":"no model \'m_nope\'"}')
    status, text = retrain(model_id, {"dataset_version": 99})
    assert status == 404 and "has no version 99" in text and "dataset_version" in text
    status, text = retrain(model_id, {"warm_start": "perhaps"})
    assert status == 422 and "warm_start" in text
    status, text = retrain(model_id, {"epochs": 3})
    assert status == 422 and "epochs" in text
    orphan = placeholder_of(service, None, dataset_id)
    status, text = retrain(orphan, {})
    assert status == 409 and "the job that trained it was deleted" in text
    status, text = retrain(placeholder_of(service, other["id"], None), {})
    assert status == 409 and "its dataset was deleted" in text
    unknown = service.client.post("/jobs", json={**job_body(dataset_id), "parent_model_id": "m_x"})
    assert unknown.status_code == 404 and "parent_model_id" in unknown.text
    assert [row["status"] for row in service.client.get("/jobs").json()] == ["cancelled"] * 2


@pytest.mark.slow
def test_a_retrained_model_starts_from_its_parents_backbone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.worker")
    service = Service(make_settings(tmp_path))
    try:
        dataset = service.upload(colour_images(per_class=4))
        body = job_body(dataset["id"], backbone=LIGHT, freeze={"mode": "backbone"})
        parent = service.client.get(f"/models/{service.train(body)['model_id']}").json()
        more = service.client.post(
            f"/datasets/{dataset['id']}/images",
            files={"file": ("more.zip", class_zip(colour_images(per_class=2, seed=9)))},
        )
        assert more.status_code == 200, more.text

        queued = service.client.post(f"/models/{parent['id']}/retrain", json={})
        assert queued.status_code == 202, queued.text
        spec = queued.json()["spec"]
        assert spec["backbone"]["weights"] == f"model:{parent['id']}"
        assert (spec["dataset_version"], spec["name"]) == (2, parent["name"])
        assert spec["parent_model_id"] == parent["id"]
        assert {key: spec[key] for key in ("head", "freeze", "training")} == {
            key: body_spec(service, parent)[key] for key in ("head", "freeze", "training")
        }
        # The parent cannot be deleted while the job that starts from it waits.
        assert service.client.delete(f"/models/{parent['id']}").status_code == 409
        assert service.worker.run_until_idle() == 1
        child_id = service.client.get(f"/jobs/{queued.json()['id']}").json()["model_id"]
        child = service.client.get(f"/models/{child_id}").json()
        assert (child["name"], child["version"]) == (parent["name"], parent["version"] + 1)
        assert (child["parent_model_id"], child["dataset_version"]) == (parent["id"], 2)
        assert parent["parent_model_id"] is None
        # The backbone was frozen: it is the parent's, to the bit.
        theirs, ours = (backbone_arrays(service, m) for m in (parent["id"], child_id))
        assert theirs.keys() == ours.keys()
        for name, values in theirs.items():
            assert np.array_equal(values, ours[name]), name
        # The head started from the parent's (its columns: test_a_warm_head_keeps_…).
        carried = f"head started from model {parent['id']}'s (3 of 3 classes carried over)"
        assert carried in caplog.text
        assert stored_head(service, child_id).classes == ["blue", "green", "red"]

        # The console: the child names its parent; the parent's page retrains (here from the
        # weights its own job began with: the box unticked), as the API does.
        shown = service.client.get(f"/console/models/{child_id}").text
        assert f'id="model-parent"><a href="/console/models/{parent["id"]}">' in shown
        form = {"dataset_version": "1"}  # a checkbox left unticked is not sent
        cold = service.client.post(
            f"/console/models/{parent['id']}/retrain", data=form, headers={"HX-Request": "true"}
        )
        assert cold.status_code == 204, cold.text
        cold_job = service.client.get(cold.headers["HX-Redirect"].replace("/console", "")).json()
        assert cold_job["spec"]["backbone"]["weights"] is None  # as the parent's job began
        assert (cold_job["spec"]["parent_model_id"], cold_job["spec"]["dataset_version"]) == (
            parent["id"],
            1,
        )
        service.client.post(f"/jobs/{cold_job['id']}/cancel")
        refused = service.client.post(
            f"/console/models/{parent['id']}/retrain",
            data={"dataset_version": "two"},
            headers={"HX-Request": "true"},
        )
        assert refused.status_code == 422 and "is not a version number" in refused.text
    finally:
        service.close()


def body_spec(service: Service, model: dict[str, Any]) -> dict[str, Any]:
    return service.client.get(f"/jobs/{model['job_id']}").json()["spec"]


def backbone_arrays(service: Service, model_id: str) -> dict[str, np.ndarray]:
    """Every array of the model's stored backbone weights file, by its path in the file."""
    with service.database.session() as session:
        data = session.get(TrainedModel, model_id).backbone_weights
    arrays: dict[str, np.ndarray] = {}
    with h5py.File(io.BytesIO(data), "r") as weights:
        weights.visititems(
            lambda name, item: (
                arrays.setdefault(name, item[()]) if isinstance(item, h5py.Dataset) else None
            )
        )
    assert arrays
    return arrays


def stored_head(service: Service, model_id: str) -> HeadWeights:
    with service.database.session() as session:
        return read_head(session.get(ModelHead, model_id).weights)


def test_a_warm_head_keeps_each_class_column_by_name() -> None:
    """A retrain's head starts from its parent's: the classes both know keep their columns
    wherever they moved, a new class starts fresh, hidden layers carry over."""
    spec = JobSpec.model_validate(job_body("d_x", backbone=LIGHT, head={"dense": [8]}))
    parent, child = build_network(spec, 3, None), build_network(spec, 4, None)
    fresh = child.head_layers[-1].get_weights()[0].copy()
    saved = read_head(head_bytes(parent, ["blue", "green", "red"]))
    assert warm_head(child, saved, ["red", "grey", "blue", "green"]) == 3
    old, new = (network.head_layers[-1].get_weights() for network in (parent, child))
    for j, i in ((0, 2), (2, 0), (3, 1)):
        assert np.array_equal(new[0][:, j], old[0][:, i]) and new[1][j] == old[1][i]
    assert np.array_equal(new[0][:, 1], fresh[:, 1])  # "grey" is new
    hidden = [network.head_layers[1].get_weights()[0] for network in (parent, child)]
    assert np.array_equal(*hidden)
    wider = build_network(
        JobSpec.model_validate({**spec.model_dump(), "head": {"dense": [16]}}), 3, None
    )
    assert warm_head(wider, saved, ["blue", "green", "red"]) == 0  # its input changed shape
