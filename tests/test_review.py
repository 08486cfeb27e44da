"""The review queue: captured predictions and a dataset's unlabelled pool, ranked by what a
label is worth, marked unknown, labelled into the dataset as one new version."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from service.ml import review
from service.review.scores import SCORES
from service.storage.tables import Capture, PoolImage, ReviewMark, new_id
from tests.conftest import (
    Service,
    colour_images,
    count_rows,
    make_zip,
    small_model_copy,
    stored_model,
)
from tests.test_unknowns import strangers


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A copy of the small model's service with six captured predictions."""
    service, state = small_model_copy(tmp_path_factory)
    model_id = state["job"]["model_id"]
    policy = service.client.put(f"/models/{model_id}/capture", json={"rate": 1.0})
    assert policy.status_code == 200, policy.text
    sent = [*colour_images(per_class=1, seed=5).values()]
    images = [data for row in sent for data in row] + strangers(3)
    files = [("files", (f"sent-{n}.png", data, "image/png")) for n, data in enumerate(images)]
    answer = service.client.post("/predict", data={"model_id": model_id}, files=files)
    assert answer.status_code == 200, answer.text
    service.client.app.state.monitoring.recorder.drain()
    assert service.client.delete(f"/models/{model_id}/capture").status_code == 204
    yield {"service": service, "model_id": model_id, "dataset_id": state["dataset"]["id"]}
    service.close()


def queue(service: Service, model_id: str, limit: int = 100) -> dict[str, Any]:
    answer = service.client.get(f"/models/{model_id}/review", params={"limit": limit})
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.mark.slow  # its fixture trains the small model
def test_the_queue_ranks_captures_and_the_pool_and_labels_join_one_version(
    reviewed: dict[str, Any],
) -> None:
    service, model_id, dataset_id = (reviewed[key] for key in ("service", "model_id", "dataset_id"))
    training_image = colour_images(per_class=4)["red"][0]
    pool = make_zip(
        {
            f"batch/{n}.png": data
            for n, data in enumerate(colour_images(per_class=2, seed=11)["green"])
        }
        | {"IMG_1.png": strangers(1, seed=8)[0], "dup.png": training_image, "notes.txt": b"x"}
    )
    added = service.client.post(
        f"/datasets/{dataset_id}/pool", files={"file": ("pool.zip", pool, "application/zip")}
    )
    assert added.status_code == 200, added.text
    assert (added.json()["added"], added.json()["pool"]) == (3, 3)
    assert {row["path"] for row in added.json()["skipped"]} == {"dup.png", "notes.txt"}
    before = service.client.get(f"/datasets/{dataset_id}").json()

    misses = SCORES.misses
    whole = queue(service, model_id)
    assert whole["features"] == "backbone" and whole["candidates"] == {"captures": 6, "pool": 3}
    hits = SCORES.hits
    assert queue(service, model_id) == whole  # the second time, from the model's answers kept
    # The nine candidates, and the dataset's twelve labelled images diversity starts from.
    assert whole["labelled_compared"] == 12
    assert (SCORES.hits - hits, SCORES.misses - misses) == (21, 21)
    listed = whole["items"] + whole["unknowns"]
    assert len(listed) == 9 and whole["labelled_since_model"] == 0
    captures = {
        row["id"]: row
        for row in service.client.get(f"/models/{model_id}/captures", params={"limit": 50}).json()
    }
    kept = [service.client.get(item["image_url"]).content for item in listed]
    files = [("files", (f"{n}.img", data)) for n, data in enumerate(kept)]
    served = service.client.post("/predict", data={"model_id": model_id}, files=files).json()
    for item, answer in zip(listed, served["predictions"], strict=True):
        # Scored as /predict scores the image kept (a capture keeps a smaller JPEG).
        assert item["suggestion"] == answer["top"][0]["label"]
        assert item["score"] == pytest.approx(answer["top"][0]["score"], abs=1e-5)
        # A distance in feature space, from a batch of another size (other oneDNN kernels):
        # its fifth digit can move (1.2e-4 relative seen), as in tests/test_predictions.py.
        assert item["ood_score"] == pytest.approx(answer["ood_score"], rel=1e-3)
        if item["capture_id"] is not None:
            assert item["filename"] == captures[item["capture_id"]]["filename"]
    assert whole["items"][0]["margin"] == min(item["margin"] for item in whole["items"])
    assert all(item["ood_score"] is not None for item in whole["unknowns"])

    pool_ids = [item["image_id"] for item in listed if item["image_id"] is not None]
    marks = f"/models/{model_id}/review/marks"
    marked = service.client.post(marks, json={"unknown": [{"image_id": pool_ids[0]}]})
    assert marked.json() == {"marked": 1}
    again = service.client.post(marks, json={"unknown": [{"image_id": pool_ids[0]}]})
    assert again.json() == {"marked": 0}
    after = queue(service, model_id)
    assert after["candidates"] == {"captures": 6, "pool": 2}
    flagged = [item for item in after["unknowns"] if item["image_id"] == pool_ids[0]]
    assert flagged[0]["reason"] == "marked unknown by a person"
    assert pool_ids[0] not in [item["image_id"] for item in after["items"]]

    capture_id = next(item["capture_id"] for item in listed if item["capture_id"])
    edit = {
        "label": [
            {"capture_id": capture_id, "label": "red"},
            {"image_id": pool_ids[0], "label": "grey"},
            {"image_id": pool_ids[1], "label": "green"},
        ]
    }
    version = service.client.post(f"/datasets/{dataset_id}/edits", json=edit)
    assert version.status_code == 201, version.text
    assert version.json()["message"] == "3 labelled"
    assert version.json()["num_images"] == before["num_images"] + 3
    counts = {entry["name"]: entry["count"] for entry in version.json()["classes"]}
    assert counts["grey"] == 1
    latest = queue(service, model_id)
    assert latest["candidates"] == {"captures": 5, "pool": 1}
    assert latest["labelled_since_model"] == 3
    assert latest["dataset_version"] == before["version"] + 1
    assert not [item for item in latest["unknowns"] if item["image_id"] == pool_ids[0]]
    assert count_rows(service, ReviewMark) == 0  # its mark went with the label
    images = service.client.get(f"/datasets/{dataset_id}/images", params={"label": "red"}).json()
    assert captures[capture_id]["filename"] in [image["filename"] for image in images]

    twice = service.client.post(f"/datasets/{dataset_id}/edits", json={"label": edit["label"][:1]})
    assert twice.status_code == 422 and "is already image" in twice.text
    gone = service.client.post(f"/datasets/{dataset_id}/edits", json={"label": edit["label"][1:2]})
    assert gone.status_code == 422 and "not in the unlabelled pool" in gone.text


@pytest.mark.slow  # its fixture trains the small model
def test_bad_review_requests_say_what_is_wrong(reviewed: dict[str, Any]) -> None:
    service, model_id, dataset_id = (reviewed[key] for key in ("service", "model_id", "dataset_id"))
    assert service.client.get("/models/m_nope/review").status_code == 404
    too_many = service.client.get(f"/models/{model_id}/review", params={"limit": 101})
    assert too_many.status_code == 422 and "limit" in too_many.text
    marks = f"/models/{model_id}/review/marks"
    both = service.client.post(marks, json={"unknown": [{"image_id": 1, "capture_id": "c_x"}]})
    assert both.status_code == 422 and "one of them" in both.text
    stranger = service.client.post(marks, json={"unknown": [{"capture_id": "c_nope"}]})
    assert stranger.status_code == 422 and "capture c_nope is not an unlabelled" in stranger.text
    edits = f"/datasets/{dataset_id}/edits"
    unknown = service.client.post(edits, json={"label": [{"capture_id": "c_x", "label": "red"}]})
    assert unknown.status_code == 422 and "no capture 'c_x'" in unknown.text
    labelled = service.client.post(edits, json={"label": [{"image_id": 1, "label": "red"}]})
    assert labelled.status_code == 422 and "not in the unlabelled pool" in labelled.text
    empty = service.client.post(
        f"/datasets/{dataset_id}/pool", files={"file": ("p.zip", make_zip({"a.txt": b"x"}))}
    )
    assert empty.status_code == 400 and "p.zip: the zip holds no image" in empty.text


def test_diversity_keeps_near_identical_doubtful_images_from_filling_the_page() -> None:
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet([1, 1, 1], size=60)
    features = rng.normal(size=(60, 16))
    # Ten copies of one doubtful frame, each a little less doubtful than the last.
    probabilities[:10] = [[0.35 + 0.0005 * n, 0.35, 0.30 - 0.0005 * n] for n in range(10)]
    features[:10] = features[0] + rng.normal(scale=1e-3, size=(10, 16))
    by_margin = [pick.index for pick in review.rank(probabilities, features, 8, diverse=False)]
    diverse = review.rank(probabilities, features, 8)
    assert sum(index < 10 for index in by_margin) >= 5
    assert sum(pick.index < 10 for pick in diverse) == 1
    assert diverse[0].index == by_margin[0] == 0 and diverse[0].distance is None


def test_an_image_like_one_already_labelled_waits_for_those_unlike_any() -> None:
    rng = np.random.default_rng(1)
    probabilities = rng.dirichlet([1, 1, 1], size=40)
    probabilities[0] = [0.4, 0.4, 0.2]  # the most doubtful: no margin at all
    features = rng.normal(size=(40, 16))
    labelled = features[:1] + rng.normal(scale=1e-3, size=(3, 16))  # the first, labelled
    alone = review.rank(probabilities, features, 5)
    assert alone[0].index == 0 and alone[0].distance is None
    picks = review.rank(probabilities, features, 5, labelled=labelled)
    assert 0 not in [pick.index for pick in picks]
    assert picks[0].distance is not None and picks[0].distance > 0.5  # from the labelled
    # Without labels, or with none given, the queue is margin-first as before.
    empty = review.rank(probabilities, features, 5, labelled=np.zeros((0, 16)))
    assert [pick.index for pick in empty] == [pick.index for pick in alone]
    # Everything labelled: an empty queue, whatever the labelled images' features.
    assert review.rank(np.zeros((0, 3)), np.zeros((0, 3)), 5, labelled=labelled) == []


def test_a_multi_label_models_doubt_is_its_label_nearest_a_threshold() -> None:
    """Each label decided on its own: a row sure of every label but one sits where the one
    is, whatever the others; a softmax's margin would call the first row sure."""
    thresholds = np.array([0.5, 0.3, 0.7])
    probabilities = np.array(
        [
            [0.98, 0.02, 0.72],  # blue just past its threshold
            [0.60, 0.60, 0.20],  # every label 0.1 or more from its threshold
            [0.51, 0.90, 0.05],  # red barely given
        ]
    )
    margins = review.margins(probabilities, thresholds)
    assert margins == pytest.approx([0.02, 0.1, 0.01])
    picks = review.rank(probabilities, np.eye(3), 3, diverse=False, thresholds=thresholds)
    assert [pick.index for pick in picks] == [2, 0, 1]
    assert review.margins(probabilities)[0] == pytest.approx(0.26)  # as if it were a softmax


@pytest.mark.slow  # its fixture trains the small model
def test_the_review_page_shows_the_queue_and_saves_as_the_api_does(
    reviewed: dict[str, Any],
) -> None:
    service, model_id, dataset_id = (reviewed[key] for key in ("service", "model_id", "dataset_id"))
    client = service.client
    listed = queue(service, model_id, limit=50)
    page = client.get(f"/console/models/{model_id}/review")
    assert page.status_code == 200, page.text
    keys = re.findall(r'data-key="([^"]+)"', page.text)
    expected = [
        f"capture:{item['capture_id']}" if item["capture_id"] else f"image:{item['image_id']}"
        for item in listed["items"] + listed["unknowns"]
    ]
    assert keys == expected and len(keys) >= 2
    assert f'<strong id="review-labelled">{listed["labelled_since_model"]}</strong>' in page.text
    assert f'<span id="review-compared">{listed["labelled_compared"]}</span>' in page.text

    save = f"/console/models/{model_id}/review"
    htmx = {"HX-Request": "true"}
    nothing = client.post(save, data={}, headers=htmx)
    assert nothing.status_code == 422 and "label or mark at least one image" in nothing.text
    forged = client.post(save, data={"item": "image:x", "label": "red"}, headers=htmx)
    assert forged.status_code == 422 and "names no image of the review" in forged.text
    before = client.get(f"/datasets/{dataset_id}").json()["version"]
    done = client.post(
        save, data={"item": [keys[0]], "label": ["blue"], "unknown": [keys[1]]}, headers=htmx
    )
    assert done.status_code == 204 and done.headers["HX-Redirect"] == save
    version = client.get(f"/datasets/{dataset_id}/versions/{before + 1}").json()
    assert version["message"].startswith("labelled on the review page of")
    after = queue(service, model_id, limit=50)
    marked = [i for i in after["unknowns"] if i["reason"] == "marked unknown by a person"]
    kind, _, value = keys[1].partition(":")
    assert any(str(item[f"{kind}_id"]) == value for item in marked)
    assert after["labelled_since_model"] == listed["labelled_since_model"] + 1


def test_the_pool_captures_and_marks_on_every_database(service: Service) -> None:
    """The labelling loop's writes, without a model to score them: the pool, a capture
    labelled into the dataset, marks, on SQLite and PostgreSQL alike."""
    dataset = service.upload(colour_images(per_class=2))
    pool = make_zip({f"{n}.png": d for n, d in enumerate(colour_images(1, seed=4)["red"])})
    added = service.client.post(f"/datasets/{dataset['id']}/pool", files={"file": ("p.zip", pool)})
    assert added.status_code == 200 and added.json()["pool"] == 1, added.text
    model = stored_model(None, dataset_id=dataset["id"])
    capture = Capture(
        id=new_id("c"),
        model_id=model.id,
        filename="door-cam.png",
        label="red",
        score=0.6,
        margin=0.2,
        scores=[0.6, 0.4],
        media_type="image/png",
        width=40,
        height=40,
        image=colour_images(1, seed=5)["blue"][0],
    )
    with service.database.session(write=True) as session:
        session.add(model)
        session.flush()
        session.add(capture)
    pooled = service.client.get(f"/datasets/{dataset['id']}/images").json()
    assert len(pooled) == dataset["num_images"]  # the pool is in no version
    with service.database.session() as session:
        image_id = session.scalar(select(PoolImage.image_id))
    marks = f"/models/{model.id}/review/marks"
    both = [{"image_id": image_id}, {"capture_id": capture.id}]
    assert service.client.post(marks, json={"unknown": both}).json() == {"marked": 2}
    labels = [{"image_id": image_id, "label": "red"}, {"capture_id": capture.id, "label": "blue"}]
    edit = service.client.post(f"/datasets/{dataset['id']}/edits", json={"label": labels})
    assert edit.status_code == 201, edit.text
    assert edit.json()["num_images"] == dataset["num_images"] + 2
    assert count_rows(service, ReviewMark) == count_rows(service, PoolImage) == 0
    images = service.client.get(f"/datasets/{dataset['id']}/images", params={"label": "blue"})
    assert "door-cam.png" in [image["filename"] for image in images.json()]
    again = service.client.post(f"/datasets/{dataset['id']}/edits", json={"label": labels[1:]})
    assert again.status_code == 422 and "is already image" in again.text
