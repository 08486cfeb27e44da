"""Unknown inputs: every prediction's ood_score and `unknown`, from the score fitted at save
time and stored in the SavedModel beside `serve` (service/ml/unknowns.py)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.ml.model_cache import UnknownThresholds
from service.predictions.schemas import ImagePrediction, Score
from tests.conftest import Service, colour_image, png_bytes


def strangers(count: int, seed: int = 3) -> list[bytes]:
    """Images of no class the colour models learnt: flat grey with a little noise."""
    rng = np.random.default_rng(seed)
    return [
        png_bytes(np.clip(128 + rng.normal(0, 4, (40, 40, 3)), 0, 255).astype(np.uint8))
        for _ in range(count)
    ]


def predict(service: Service, model_id: str, images: list[bytes], **fields: Any) -> list[dict]:
    files = [("files", (f"{n}.png", data, "image/png")) for n, data in enumerate(images)]
    answer = service.client.post(
        "/predict",
        data={"model_id": model_id, **{k: str(v) for k, v in fields.items()}},
        files=files,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"]


def test_fitted_thresholds_flag_the_asked_share_and_the_far_ones() -> None:
    """On two Gaussian classes, the ensemble's threshold flags about unknown_rate of new known
    points and every point far from both; the numpy score is the one the signature computes."""
    from service.ml.unknowns import fit_detector, scores_of

    rng = np.random.default_rng(0)

    def draw(count: int, shift: float = 0.0) -> tuple[list[np.ndarray], np.ndarray]:
        labels = rng.integers(0, 2, count)
        deep = rng.normal(0, 1, (count, 8)) + labels[:, None] * 4 + shift
        shallow = rng.normal(0, 1, (count, 3)) + shift
        return [shallow, deep], labels

    train, validation, new = draw(4000), draw(2000)[0], draw(4000)[0]
    detector = fit_detector(["shallow", "deep"], train, validation, classes=2, unknown_rate=0.1)
    assert detector.report["flagged_share"] == pytest.approx(0.1, abs=0.002)
    assert np.mean(scores_of(detector, new) > detector.threshold) == pytest.approx(0.1, abs=0.02)
    far = draw(200, shift=12.0)[0]
    assert np.all(scores_of(detector, far) > detector.threshold)
    # Another rate reads another quantile of the same validation scores.
    thresholds = UnknownThresholds(detector.quantiles, 0.1, 2000)
    assert thresholds.threshold(0.5) == pytest.approx(np.median(scores_of(detector, validation)))
    assert thresholds.threshold(0.01) > thresholds.threshold() > thresholds.threshold(0.5)


def test_features_that_never_vary_still_fit_a_detector() -> None:
    """Dead units (a random or frozen backbone's ReLUs that never fire) leave a depth's
    covariance singular, or zero: training must still end, with every image like the
    training ones scored alike and one unlike them flagged."""
    from service.ml.unknowns import fit_detector, scores_of

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 6)
    alive = np.zeros((12, 16))
    alive[:, :2] = rng.normal(0, 1, (12, 2)) + labels[:, None]  # 2 of 16 units ever fire
    dead = np.zeros((12, 4))  # a depth where none does
    detector = fit_detector(["alive", "dead"], ([dead, alive], labels), None, 2, 0.1)
    assert np.isfinite(detector.quantiles).all()
    strange = [np.ones((1, 4)), np.full((1, 16), 5.0)]
    assert scores_of(detector, strange)[0] > detector.threshold


def test_a_model_stored_before_answers_without_the_two_fields() -> None:
    old = ImagePrediction(filename="a.png", top=[Score(label="a", score=1.0)])
    assert set(old.model_dump()) == {"filename", "top"}
    new = old.model_copy(update={"ood_score": 1.5, "unknown": True})
    assert new.model_dump()["ood_score"] == 1.5 and new.model_dump()["unknown"] is True


def test_predictions_carry_the_stored_models_own_scores(
    small_model: dict[str, Any], tmp_path: Path
) -> None:
    import tensorflow as tf

    from service.ml.export import unpack_archive
    from service.ml.images import to_pixels

    service: Service = small_model["service"]
    model_id = small_model["job"]["model_id"]
    report = service.client.get(f"/models/{model_id}/evaluation").json()["unknowns"]
    assert report["method"] == "mahalanobis-ensemble" and report["unknown_rate"] == 0.05
    assert report["split"] == "validation" and 0 <= report["flagged_share"] <= 1
    known = [data for row in small_model["images"].values() for data in row]
    images = known + strangers(4)
    answers = predict(service, model_id, images)

    # The downloaded SavedModel's `unknowns` signature gives the same scores and flags, and
    # its probabilities are `serve`'s.
    archive = service.client.get(f"/models/{model_id}/savedmodel").content
    unpack_archive(archive, tmp_path / "savedmodel")
    loaded = tf.saved_model.load(str(tmp_path / "savedmodel"))
    pixels = np.stack([to_pixels(data, 32) for data in images]).astype(np.float32)
    signature = loaded.unknowns(pixels)
    np.testing.assert_allclose(
        [a["ood_score"] for a in answers], signature["ood_score"].numpy(), rtol=1e-4, atol=1e-4
    )
    assert [a["unknown"] for a in answers] == signature["unknown"].numpy().tolist()
    np.testing.assert_allclose(
        signature["probabilities"].numpy(), loaded.serve(pixels).numpy(), atol=1e-6
    )
    assert all(answer["unknown"] for answer in answers[len(known) :])
    threshold = report["threshold"]
    assert all((a["ood_score"] > threshold) == a["unknown"] for a in answers)

    # A request's unknown_rate moves the threshold; the labels do not move.
    wider = predict(service, model_id, images, unknown_rate=0.9)
    assert sum(a["unknown"] for a in wider) > sum(a["unknown"] for a in answers)
    assert all(w["unknown"] for w, a in zip(wider, answers, strict=True) if a["unknown"])
    assert [a["top"] for a in wider] == [a["top"] for a in answers]
    assert [a["ood_score"] for a in wider] == [a["ood_score"] for a in answers]
    bad = service.client.post(
        "/predict",
        data={"model_id": model_id, "unknown_rate": "1.5"},
        files=[("files", ("a.png", known[0]))],
    )
    assert bad.status_code == 422 and "unknown_rate" in bad.text


def test_tf_serving_answers_the_unknowns_signature(small_model: dict[str, Any]) -> None:
    service: Service = small_model["service"]
    model_id = small_model["job"]["model_id"]
    images = [png_bytes(colour_image(0, np.random.default_rng(5))), *strangers(1)]
    instances = [{"b64": base64.b64encode(data).decode()} for data in images]
    plain = service.client.post(f"/v1/models/{model_id}:predict", json={"instances": instances})
    verbose = service.client.post(
        f"/v1/models/{model_id}:predict",
        json={"instances": instances, "signature_name": "unknowns"},
    )
    assert plain.status_code == verbose.status_code == 200, verbose.text
    rows = verbose.json()["predictions"]
    assert [row["probabilities"] for row in rows] == plain.json()["predictions"]
    answers = predict(service, model_id, images)
    assert [row["unknown"] for row in rows] == [a["unknown"] for a in answers]
    assert rows[1]["unknown"]
    assert [row["ood_score"] for row in rows] == pytest.approx([a["ood_score"] for a in answers])
