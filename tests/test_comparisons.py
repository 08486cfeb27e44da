"""Comparisons: two models scored on the same images, with the evidence a promotion needs."""

from __future__ import annotations

import html
import re
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
from scipy.stats import binomtest

from service.comparisons import stats
from tests.conftest import LIGHT, Service, job_body

# -- the statistics, without a model -----------------------------------------------------------


def test_mcnemar_is_the_exact_binomial_test_on_the_discordant_pairs() -> None:
    a = np.array([True] * 50 + [True] * 1 + [False] * 9 + [False] * 40)
    b = np.array([True] * 50 + [False] * 1 + [True] * 9 + [False] * 40)
    # 1 image only a gets right, 9 only b: 2 × P(X ≤ 1), X ~ Binomial(10, ½) = 2 × 11 / 1024.
    assert stats.mcnemar_exact(a, b) == pytest.approx(22 / 1024)
    assert stats.mcnemar_exact(a, b) == pytest.approx(binomtest(9, 10).pvalue)
    assert stats.mcnemar_exact(a, a) == 1.0  # nothing discordant: no evidence either way


def test_the_bootstrap_interval_is_paired_and_says_when_b_is_better() -> None:
    rng = np.random.default_rng(0)
    a = rng.random(400) < 0.80
    b = a.copy()
    b[np.flatnonzero(~a)[:12]] = True  # b also gets 12 of a's mistakes right: +3 points
    better = stats.paired_bootstrap(a, b)
    assert better.estimate == pytest.approx(0.03)
    assert 0 < better.low < better.estimate < better.high < 0.06
    assert better.b_is_better and stats.verdict(better).startswith("b is better: +3.0 points")
    # The same accuracies, unpaired (b's rights on other images), are no evidence at all:
    # the pairing is what makes a small improvement visible.
    shuffled = stats.paired_bootstrap(a, rng.permutation(b))
    assert shuffled.low < 0 < shuffled.high and not shuffled.b_is_better
    assert "not the evidence to promote b" in stats.verdict(shuffled)
    worse = stats.paired_bootstrap(b, a)
    assert worse.high < 0 and stats.verdict(worse).startswith("b is worse: -3.0 points")
    assert stats.paired_bootstrap(a, a) == stats.Difference(0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="the same images"):
        stats.paired_bootstrap(a, b[:-1])


def test_macro_f1_and_per_class_accuracy_count_every_class_of_the_images() -> None:
    truth = ["cat", "cat", "dog", "dog"]
    answers = ["cat", "cat", "cat", "cat"]  # never answers dog: dog's F1 is 0
    # cat: precision ½, recall 1, F1 ⅔.
    recalls, macro_f1 = stats.per_class(truth, answers, ["cat", "dog"])
    assert macro_f1 == pytest.approx((2 / 3 + 0) / 2) and recalls == [1.0, 0.0]


def test_label_sets_are_scored_label_by_label() -> None:
    from sklearn.metrics import f1_score

    truth = ["cat;dog", "cat", "", "dog"]
    answers = ["cat", "cat;owl", "", "cat;dog"]  # owl: no image holds it, scored nowhere
    recalls, macro_f1 = stats.per_label(truth, answers, ["cat", "dog"])
    assert recalls == [1.0, 0.5]  # cat: both its images; dog: one of its two
    held = [[1, 1], [1, 0], [0, 0], [0, 1]]
    given = [[1, 0], [1, 0], [0, 0], [1, 1]]
    assert macro_f1 == pytest.approx(f1_score(held, given, average="macro", zero_division=0))


# -- through the API ---------------------------------------------------------------------------


def test_bad_comparisons_say_what_is_wrong(small_model: dict[str, Any]) -> None:
    service: Service = small_model["service"]
    model_id, dataset_id = small_model["job"]["model_id"], small_model["dataset"]["id"]

    def refused(body: dict[str, Any]) -> tuple[int, Any]:
        answer = service.client.post("/comparisons", json=body)
        return answer.status_code, answer.json()["detail"]

    status, detail = refused({"models": [model_id, model_id], "dataset_id": dataset_id})
    assert status == 422 and "two different models" in str(detail)
    status, detail = refused({"models": [model_id, "m_nope"], "dataset_id": dataset_id})
    assert status == 404 and "m_nope" in str(detail) and "models" in str(detail)
    status, detail = refused({"models": [model_id, "m_x"], "dataset_id": "d_nope"})
    assert status == 404 and "d_nope" in str(detail)
    status, detail = refused(
        {"models": [model_id, "m_x"], "dataset_id": dataset_id, "dataset_version": 99}
    )
    assert status == 404 and "has no version 99" in str(detail)
    status, _ = refused({"models": [model_id], "dataset_id": dataset_id})
    assert status == 422
    assert service.client.get("/comparisons/c_nope").status_code == 404
    assert service.client.get("/jobs", params={"kind": "compare"}).json() == []


def test_a_model_that_knows_none_of_the_classes_is_refused(small_model: dict[str, Any]) -> None:
    service: Service = small_model["service"]
    model_id = small_model["job"]["model_id"]
    colours = small_model["images"]
    other = service.upload({"sky": colours["red"][:2], "sea": colours["blue"][:2]}, "elsewhere")
    answer = service.client.post(
        "/comparisons", json={"models": [model_id, model_id + "x"], "dataset_id": other["id"]}
    )
    assert answer.status_code == 422, answer.text
    assert "knows none of the classes" in answer.text and "sea, sky" in answer.text


@pytest.mark.slow
def test_a_comparison_scores_both_models_as_predict_does(trained: dict[str, Any]) -> None:
    service: Service = trained["service"]
    dataset_id, better = trained["dataset"]["id"], trained["job"]["model_id"]
    # A model that has barely learnt (one epoch on a frozen random backbone, a tiny rate).
    weak = service.train(
        job_body(
            dataset_id,
            backbone=LIGHT,
            freeze={"mode": "backbone"},
            training={"learning_rate": 1e-5},
        )
    )["model_id"]
    answer = service.client.post(
        "/comparisons", json={"models": [weak, better], "dataset_id": dataset_id}
    )
    assert answer.status_code == 202, answer.text
    queued = answer.json()
    assert queued["status"] == "queued" and queued["dataset_version"] == 1
    # A model a queued comparison needs cannot be deleted.
    assert service.client.delete(f"/models/{weak}").status_code == 409
    assert service.worker.run_until_idle() == 1
    done = service.client.get(f"/comparisons/{queued['id']}").json()
    assert done["status"] == "succeeded", done

    # Every figure is what /predict's answers to the same images give.
    images = [(name, data) for name, datas in trained["images"].items() for data in datas]
    truth = np.array([name for name, _ in images])
    answers = {model_id: predicted_labels(service, model_id, images) for model_id in (weak, better)}
    correct = [answers[model_id] == truth for model_id in (weak, better)]
    assert done["images"] == len(images)
    for scored, right in zip(done["models"], correct, strict=True):
        assert scored["accuracy"] == pytest.approx(right.mean(), abs=1e-12)
    expected = stats.paired_bootstrap(*correct)
    assert done["difference"] == pytest.approx(vars(expected), abs=1e-12)
    assert done["mcnemar_p"] == pytest.approx(stats.mcnemar_exact(*correct), abs=1e-12)
    differ = int(np.sum(answers[weak] != answers[better]))
    assert done["disagreements_total"] == differ == len(done["disagreements"])
    assert [row["name"] for row in done["per_class"]] == sorted(trained["images"])
    print("comparison:", done["verdict"], "p =", done["mcnemar_p"])
    assert done["b_is_better"] and done["verdict"].startswith("b is better")
    listed = service.client.get("/comparisons").json()
    assert queued["id"] in [row["id"] for row in listed]
    promote_from_the_console(service, done)


def promote_from_the_console(service: Service, done: dict[str, Any]) -> None:
    """The comparison's page shows the verdict and offers b's promotion, which moves the
    alias as PUT /registry/{name}/aliases/{alias} does."""
    b = service.client.get(f"/models/{done['model_ids'][1]}").json()
    shown = html.unescape(service.client.get(f"/console/comparisons/{done['id']}").text)
    assert done["verdict"][1:] in shown and f"{done['difference']['estimate']:+.3f}" in shown
    assert 'id="promote-form"' in shown and f"Point it at {b['name']} v{b['version']}" in shown
    moved = service.client.post(
        f"/console/registry/{quote(b['name'])}/aliases",
        data={"alias": "production", "version": str(b["version"])},
        headers={"HX-Request": "true"},
    )
    assert moved.status_code == 204, moved.text
    try:
        named = service.client.get(f"/registry/{quote(b['name'])}").json()
        assert named["aliases"]["production"] == b["version"]
        shown = html.unescape(service.client.get(f"/console/comparisons/{done['id']}").text)
        assert f"{b['name']} v{b['version']} is production now" in re.sub(r"<[^>]+>", "", shown)
    finally:  # the session's model serves other tests: leave its registry as it was
        service.client.delete(f"/registry/{quote(b['name'])}/aliases/production")


def predicted_labels(service: Service, model_id: str, images: list[tuple[str, bytes]]) -> Any:
    labels = []
    for start in range(0, len(images), 16):
        chunk = images[start : start + 16]
        answer = service.client.post(
            "/predict",
            data={"model_id": model_id, "top_k": "1"},
            files=[("files", (f"{n}.png", data, "image/png")) for n, (_, data) in enumerate(chunk)],
        )
        assert answer.status_code == 200, answer.text
        labels += [row["top"][0]["label"] for row in answer.json()["predictions"]]
    return np.array(labels)
