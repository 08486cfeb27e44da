"""Searches: the best spec within a budget, on cached features then fine-tuned, resumed from
its finished trials after its worker stops."""

from __future__ import annotations

from typing import Any

import pytest

from service.searches import task as search_task
from tests.conftest import LIGHT, SQLITE_ONLY, Service, colour_images


def search_body(dataset_id: str, **overrides: Any) -> dict[str, Any]:
    """A tiny search: MobileNetV2 at 32 px from random weights, four head trials, one
    finalist fine-tuned at two depths."""
    body: dict[str, Any] = {
        "dataset_id": dataset_id,
        "backbone": {"name": "MobileNetV2", "weights": None, "input_size": 32},
        "budget": {"trials": 4},
        "space": {"freeze_depths": [0, 20], "dense": [[], [16]]},
        "head_epochs": 3,
        "fine_tune_epochs": 2,
        "finalists": 1,
        "batch_size": 8,
        "validation_split": 0.25,
    }
    return {**body, **overrides}


@pytest.mark.any_database
def test_bad_searches_say_what_is_wrong(service: Service) -> None:
    dataset = service.upload(colour_images(per_class=2))

    def refused(body: dict[str, Any]) -> tuple[int, str]:
        answer = service.client.post("/searches", json=body)
        return answer.status_code, str(answer.json()["detail"])

    body = search_body(dataset["id"])
    status, detail = refused({**body, "budget": {"trials": 3, "seconds": 60}})
    assert status == 422 and "one of them" in detail and "budget" in detail
    status, detail = refused({**body, "budget": {}})
    assert status == 422 and "one of them" in detail
    status, detail = refused({**body, "budget": {"trials": 0}})
    assert status == 422 and "trials" in detail
    status, detail = refused({**body, "space": {"dense": [[0]]}})
    assert status == 422 and "dense" in detail
    status, detail = refused({**body, "space": {"freeze_depths": [-3]}})
    assert status == 422 and "freeze_depths" in detail
    status, detail = refused({**body, "space": {"learning_rate": [0.1, 0.01]}})
    assert status == 422 and "must not be above high" in detail
    status, detail = refused({**body, "space": {"freeze_depths": [0, 500]}})
    assert status == 422 and "MobileNetV2 has 154 layers" in detail and "freeze_depths" in detail
    status, detail = refused({**body, "dataset_id": "d_nope"})
    assert status == 404 and "d_nope" in detail
    status, detail = refused({**body, "dataset_version": 9})
    assert status == 404 and "has no version 9" in detail
    status, detail = refused({**body, "backbone": {"name": "MobileNetV2", "weights": "model:m_x"}})
    assert status == 404 and "m_x" in detail
    assert service.client.get("/searches/s_nope").status_code == 404
    assert service.client.get("/searches").json() == []
    assert service.client.get("/jobs", params={"kind": "search"}).json() == []


@pytest.mark.slow
@SQLITE_ONLY
def test_a_search_resumes_from_its_finished_trials_and_its_best_spec_trains_as_it_scored(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = service.upload(colour_images(per_class=8))
    # On the light backbone: what is asserted is the search's bookkeeping (its trials kept
    # across a stop, the best spec trained to the same digits), which holds for any network.
    light = {**LIGHT, "weights": None, "input_size": 32}
    body = search_body(dataset["id"], backbone=light, train_best=True, name="searched")
    created = service.client.post("/searches", json=body)
    assert created.status_code == 202, created.text
    search_id, job_id = created.json()["id"], created.json()["job_id"]
    assert (
        created.json()["status"] == "queued" and created.json()["request"]["dataset_version"] == 1
    )

    # The worker stops after the second trial, as at a shutdown: the job goes back to the
    # queue with its range test and two trials stored.
    announce = search_task._Announcer.__call__

    def stop_after_two(self: Any, trial: Any) -> None:
        announce(self, trial)
        if trial.number == 1:
            self.context.monitor.shutdown.set()

    monkeypatch.setattr(search_task._Announcer, "__call__", stop_after_two)
    assert service.worker.run_once()
    stopped = service.client.get(f"/searches/{search_id}").json()
    assert stopped["status"] == "queued" and stopped["trials_total"] == 2
    assert stopped["range_test"]["picked"] > 0
    first_two = stopped["trials"]

    monkeypatch.setattr(search_task._Announcer, "__call__", announce)
    assert service.worker.run_once()  # the search, resumed
    done = service.client.get(f"/searches/{search_id}").json()
    assert done["status"] == "succeeded", done["error"]
    trials = done["trials"]
    assert trials[:2] == first_two  # kept, not run again
    assert done["range_test"] == stopped["range_test"]
    heads = [trial for trial in trials if trial["phase"] == "head"]
    fine = [trial for trial in trials if trial["phase"] == "fine_tune"]
    assert len(heads) == 4 and [t["number"] for t in trials] == list(range(len(trials)))
    assert all(len(t["scores"]) == 3 or t["state"] == "pruned" for t in heads)
    # The best head configuration, fine-tuned at both depths (0: the head alone).
    best_head = max(
        (t for t in heads if t["state"] == "complete"),
        key=lambda t: (t["value"], -t["val_loss"]),
    )
    assert sorted(t["params"]["freeze_depth"] for t in fine) == [0, 20]
    for trial in fine:
        assert {k: v for k, v in trial["params"].items() if k != "freeze_depth"} == (
            best_head["params"]
        )
    best = max(
        (t for t in fine if t["state"] == "complete"),
        key=lambda t: (t["value"], -t["val_loss"]),  # ties: the lower loss
    )
    assert done["best"]["trial"] == best["number"]
    spec = done["best"]["spec"]
    assert spec["head"]["dropout"] == best["params"]["dropout"]
    assert spec["training"]["learning_rate"] == best["params"]["learning_rate"]
    depth = best["params"]["freeze_depth"]
    assert spec["fine_tune"] == (
        []
        if depth == 0
        else [
            {
                "freeze": {"mode": "partial", "trainable_from": -depth, "batchnorm": "trainable"},
                "epochs": 2,
                "learning_rate": best["params"]["learning_rate"] / 10,
                "optimizer": None,
            }
        ]
    )
    # Every trial is an epoch event of the job's stream (its history), across both attempts.
    job = service.client.get(f"/jobs/{job_id}").json()
    assert [row["trial"] for row in job["history"]] == list(range(len(trials)))

    # train_best queued the best spec as POST /jobs takes it: trained, it scores what its
    # trial scored, to the digit.
    assert done["trained_job_id"] is not None
    assert service.worker.run_until_idle() == 1
    trained = service.client.get(f"/jobs/{done['trained_job_id']}").json()
    assert trained["status"] == "succeeded" and trained["spec"] == spec
    model = service.client.get(f"/models/{trained['model_id']}").json()
    assert model["name"] == "searched"
    assert model["metrics"]["val_accuracy"] == pytest.approx(best["value"], abs=1e-6)
    assert model["metrics"]["val_loss"] == pytest.approx(best["val_loss"], abs=1e-6)

    # The trials page by number; the Link header names the next page.
    page = service.client.get(f"/searches/{search_id}", params={"limit": 2})
    assert [t["number"] for t in page.json()["trials"]] == [0, 1]
    assert "after=1" in page.headers["link"]
    rest = service.client.get(f"/searches/{search_id}", params={"limit": 50, "after": 1})
    assert [t["number"] for t in rest.json()["trials"]] == list(range(2, len(trials)))
    assert "link" not in rest.headers
    listed = service.client.get("/searches").json()
    assert [s["id"] for s in listed] == [search_id]
