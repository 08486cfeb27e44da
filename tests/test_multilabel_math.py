"""Multi-label scoring's numbers (service/ml/multilabel.py): per-label temperatures and
thresholds fitted on a validation split, the calibration error, the evaluation report and the
positive weights. Pure NumPy on small synthetic data: no TensorFlow, no service."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import expit
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
)

from service.ml import multilabel

LABELS = ["cat", "dog", "car"]


def correlated_scores(
    rng: np.random.Generator, rows: int, labels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Multi-hot targets and sigmoid scores that lean towards them."""
    targets = (rng.random((rows, labels)) < 0.3).astype(int)
    probabilities = expit(rng.normal(0, 1.5, (rows, labels)) + 2.0 * (2 * targets - 1))
    return targets, probabilities


def test_the_report_agrees_with_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    targets, probabilities = correlated_scores(rng, 300, 5)
    thresholds = rng.uniform(0.3, 0.7, 5)
    names = [f"label{j}" for j in range(5)]
    report = multilabel.evaluate(targets, probabilities, thresholds, names)
    predicted = (probabilities >= thresholds).astype(int)
    for j, row in enumerate(report["per_label"]):
        truth, guess = targets[:, j], predicted[:, j]
        assert row["label"] == names[j] and row["threshold"] == thresholds[j]
        assert row["precision"] == pytest.approx(precision_score(truth, guess), abs=1e-9)
        assert row["recall"] == pytest.approx(recall_score(truth, guess), abs=1e-9)
        assert row["f1"] == pytest.approx(f1_score(truth, guess), abs=1e-9)
        assert row["support"] == int(truth.sum())
        expected = average_precision_score(truth, probabilities[:, j])
        assert row["average_precision"] == pytest.approx(expected, abs=1e-9)
    micro = f1_score(targets, predicted, average="micro")
    assert report["micro_f1"] == pytest.approx(micro, abs=1e-9)
    assert report["macro_f1"] == pytest.approx(f1_score(targets, predicted, average="macro"))
    mean_ap = np.mean([row["average_precision"] for row in report["per_label"]])
    assert report["mean_average_precision"] == pytest.approx(mean_ap, abs=1e-9)
    assert report["exact_match"] == pytest.approx(accuracy_score(targets, predicted), abs=1e-9)
    assert report["images"] == 300
    json.dumps(report, allow_nan=False)  # plain floats, ints, strings, lists and None


def test_exact_match_counts_whole_label_sets_and_empty_sets() -> None:
    targets = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0]])
    probabilities = np.array(
        [
            [0.9, 0.1, 0.2],  # {cat}: right
            [0.8, 0.3, 0.1],  # {cat} for {cat, dog}: one label short
            [0.1, 0.2, 0.3],  # {} for {}: right
            [0.2, 0.1, 0.7],  # {car}: right
            [0.6, 0.1, 0.1],  # {cat} for {}: one label too many
        ]
    )
    report = multilabel.evaluate(targets, probabilities, np.full(3, 0.5), LABELS)
    assert report["exact_match"] == pytest.approx(3 / 5)
    assert report["no_label_images"] == 2


def test_error_cooccurrence_counts_false_positives_against_false_negatives() -> None:
    targets = np.array([[0, 1, 0], [0, 1, 0], [0, 1, 1], [1, 0, 0], [1, 0, 0]])
    predicted = np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 0, 1], [1, 0, 0]])
    report = multilabel.evaluate(targets, predicted.astype(float), np.full(3, 0.5), LABELS)
    # Images 0-2: cat said for dog (2 alone, the third with car missed as well); image 3: car
    # said for cat; image 4 is right.
    assert report["error_cooccurrence"] == [
        {"false_positive": "cat", "false_negative": "dog", "count": 3},
        {"false_positive": "cat", "false_negative": "car", "count": 1},
        {"false_positive": "car", "false_negative": "cat", "count": 1},
    ]
    assert multilabel.error_cooccurrence(targets, targets, LABELS) == []


def test_error_lists_are_bounded_and_most_confident_first() -> None:
    rng = np.random.default_rng(1)
    targets = np.zeros((60, 1), dtype=int)
    targets[30:] = 1
    probabilities = rng.uniform(0.0, 1.0, (60, 1))
    probabilities[:30, 0] = np.linspace(0.51, 0.99, 30)  # 30 negatives, all false positives
    probabilities[30:33, 0] = [0.2, 0.01, 0.4]  # 3 false negatives
    probabilities[33:, 0] = 0.9
    names = [f"image{i}.png" for i in range(60)]
    row = multilabel.evaluate(targets, probabilities, np.array([0.5]), ["cat"])["per_label"][0]
    assert row["false_positives"] == list(range(29, 9, -1))  # the 20 highest, highest first
    assert row["false_negatives"] == [31, 30, 32]  # the lowest score first
    named = multilabel.evaluate(targets, probabilities, np.array([0.5]), ["cat"], names)
    assert named["per_label"][0]["false_negatives"] == ["image31.png", "image30.png", "image32.png"]
    with pytest.raises(ValueError, match="59 filenames for 60 images"):
        multilabel.evaluate(targets, probabilities, np.array([0.5]), ["cat"], names[:-1])


def shifted_scores(rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Label 0's positives score around 0.3 (its negatives around 0.08), label 1's around 0.9:
    ranked well, but a flat 0.5 misses most of label 0."""
    targets = (rng.random((rows, 2)) < 0.3).astype(int)
    centres = np.where(targets == 1, [0.3, 0.9], [0.08, 0.1])
    logits = np.log(centres / (1 - centres)) + rng.normal(0, 0.5, (rows, 2))
    return targets, expit(logits)


def test_fitted_thresholds_beat_a_flat_half_on_shifted_labels() -> None:
    rng = np.random.default_rng(2)
    validation, held_out = shifted_scores(rng, 400), shifted_scores(rng, 400)
    thresholds = multilabel.fit_thresholds(validation[1], validation[0])
    assert thresholds.reasons == (None, None)
    assert 0.1 < thresholds.values[0] < 0.3
    for targets, probabilities in (validation, held_out):
        fitted = multilabel.evaluate(targets, probabilities, thresholds.values, LABELS[:2])
        flat = multilabel.evaluate(targets, probabilities, np.full(2, 0.5), LABELS[:2])
        assert fitted["macro_f1"] > flat["macro_f1"] + 0.2


def f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    """2·TP / (2·TP + FP + FN), counted directly (sklearn's f1_score is slow in a loop)."""
    tp = int(np.sum(predicted & (truth == 1)))
    return 2 * tp / (int(predicted.sum()) + int(truth.sum()))


def test_the_max_f1_threshold_is_the_best_candidate_nearest_half_on_ties() -> None:
    rng = np.random.default_rng(3)
    targets, probabilities = correlated_scores(rng, 200, 3)
    values = multilabel.fit_thresholds(probabilities, targets).values
    for j in range(3):
        candidates = np.append(np.unique(probabilities[:, j]), 0.5)
        best = max(f1(targets[:, j], probabilities[:, j] >= t) for t in candidates)
        assert f1(targets[:, j], probabilities[:, j] >= values[j]) == pytest.approx(best)
    # F1 2/3 at 0.1 and at 0.95: the nearer to 0.5 wins, set in the middle of the gap below
    # it (no image sits on it, so no rounding flips one). And 0.5 itself where it ties.
    tie = multilabel.fit_thresholds(np.array([[0.1], [0.2], [0.6], [0.95]]), [[1], [0], [0], [1]])
    assert tie.values[0] == pytest.approx(0.05)
    above = multilabel.fit_thresholds(np.array([[0.3], [0.7], [0.8]]), np.array([[0], [0], [1]]))
    assert above.values[0] == pytest.approx(0.75)
    separated = multilabel.fit_thresholds(np.array([[0.2], [0.8]]), np.array([[0], [1]]))
    assert separated.values[0] == 0.5


def test_a_precision_target_is_reached_by_the_lowest_threshold_or_says_why() -> None:
    rng = np.random.default_rng(4)
    targets, probabilities = correlated_scores(rng, 300, 2)
    # Label 1's highest score is a negative: no threshold reaches precision 1 there.
    probabilities[np.flatnonzero(targets[:, 1] == 0)[0], 1] = 0.999
    thresholds = multilabel.fit_thresholds(probabilities, targets, precision=0.9)
    for j in range(2):
        value = thresholds.values[j]
        assert precision_score(targets[:, j], probabilities[:, j] >= value) >= 0.9
        lower = probabilities[:, j][probabilities[:, j] < value]
        if len(lower):  # the next lower threshold falls short
            assert precision_score(targets[:, j], probabilities[:, j] >= lower.max()) < 0.9
    assert thresholds.reasons == (None, None)
    strict = multilabel.fit_thresholds(probabilities, targets, precision=1.0)
    assert strict.reasons[1] is not None and "precision 1" in strict.reasons[1]
    assert strict.values[1] == multilabel.fit_thresholds(probabilities, targets).values[1]
    with pytest.raises(ValueError, match="precision must be in"):
        multilabel.fit_thresholds(probabilities, targets, precision=1.5)
    with pytest.raises(ValueError):
        strict.values[0] = 0.5  # read-only: a fitted threshold is not edited in place


def test_temperatures_recover_a_known_temperature_and_calibrate() -> None:
    rng = np.random.default_rng(5)
    z = rng.normal(0, 1.5, (20_000, 3))
    targets = (rng.random(z.shape) < expit(z)).astype(int)
    # Over-confident (×3), under-confident (×0.5) and calibrated (×1) logits.
    logits = z * np.array([3.0, 0.5, 1.0])
    temperatures = multilabel.fit_temperatures(logits, targets)
    np.testing.assert_allclose(temperatures, [3.0, 0.5, 1.0], rtol=0.1)
    before = multilabel.expected_calibration_error(expit(logits), targets)
    after = multilabel.expected_calibration_error(multilabel.scale(logits, temperatures), targets)
    assert before[0] > 0.05 and before[1] > 0.05
    assert np.all(after < 0.05)


def test_a_temperature_minimises_its_labels_cross_entropy() -> None:
    rng = np.random.default_rng(6)
    z = rng.normal(0, 2, (500, 1))
    targets = (rng.random(z.shape) < expit(z / 2)).astype(int)
    temperature = multilabel.fit_temperatures(z, targets)[0]
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 2001))
    p = np.clip(expit(z / grid), 1e-15, 1 - 1e-15)  # [500, 2001]
    losses = -np.mean(targets * np.log(p) + (1 - targets) * np.log(1 - p), axis=0)
    assert temperature == pytest.approx(grid[np.argmin(losses)], rel=5e-3)


def test_labels_without_an_optimum_keep_the_defaults() -> None:
    rng = np.random.default_rng(7)
    targets = (rng.random((50, 4)) < 0.5).astype(int)
    targets[:, 1] = 0  # no positive
    targets[:, 2] = 1  # no negative
    logits = rng.normal(0, 1, (50, 4))
    logits[:, 3] = np.where(targets[:, 3] == 1, 2.0, -2.0)  # every image on its right side
    temperatures = multilabel.fit_temperatures(logits, targets)
    assert temperatures[0] != 1.0 and list(temperatures[1:]) == [1.0, 1.0, 1.0]
    reasons = multilabel.temperature_reasons(logits, targets)
    assert reasons[0] is None and all(reasons[1:])
    thresholds = multilabel.fit_thresholds(expit(logits), targets)
    assert thresholds.values[1] == 0.5 and "no positive" in thresholds.reasons[1]
    report = multilabel.evaluate(targets, expit(logits), thresholds.values, ["a", "b", "c", "d"])
    absent = report["per_label"][1]
    assert absent["average_precision"] is None and absent["support"] == 0
    present = [row["average_precision"] for row in report["per_label"] if row["support"]]
    assert report["mean_average_precision"] == pytest.approx(np.mean(present))
    predicted = expit(logits) >= thresholds.values
    macro = f1_score(targets, predicted, labels=[0, 2, 3], average="macro")
    assert report["macro_f1"] == pytest.approx(macro, abs=1e-9)
    json.dumps(report, allow_nan=False)
    assert multilabel.positive_weights(targets)[1] == 1.0


def test_logits_and_scale_invert_each_other_and_stay_finite() -> None:
    z = np.array([[-8.0, 0.0, 3.5], [12.0, -0.25, 1.0]])
    np.testing.assert_allclose(multilabel.logits_of(multilabel.scale(z, np.ones(3))), z)
    saturated = multilabel.logits_of(np.array([[0.0, 1.0]], dtype=np.float32))
    assert np.all(np.isfinite(saturated))
    assert saturated[0, 0] == pytest.approx(-saturated[0, 1])
    scaled = multilabel.scale(z, np.array([2.0, 1.0, 0.5]))
    np.testing.assert_allclose(scaled, expit(z / [2.0, 1.0, 0.5]))


def test_ece_matches_a_direct_computation() -> None:
    rng = np.random.default_rng(8)
    targets, probabilities = correlated_scores(rng, 200, 2)
    probabilities[0, 0] = 0.0  # joins the first bin
    expected = []
    for j in range(2):
        ece = 0.0
        for number in range(15):
            lower, upper = number / 15, (number + 1) / 15
            members = [
                i
                for i in range(200)
                if lower < probabilities[i, j] <= upper
                or (number == 0 and probabilities[i, j] == 0.0)
            ]
            if members:
                mean = np.mean(probabilities[members, j])
                ece += len(members) / 200 * abs(mean - np.mean(targets[members, j]))
        expected.append(ece)
    ece = multilabel.expected_calibration_error(probabilities, targets)
    np.testing.assert_allclose(ece, expected, rtol=1e-12)


def test_positive_weights_balance_a_rare_label() -> None:
    targets = np.zeros((1000, 4), dtype=int)
    targets[:50, 0] = 1  # 950 / 50 = 19
    targets[:600, 1] = 1  # common: 400 / 600 < 1, clipped up to 1
    targets[:2, 2] = 1  # 998 / 2 = 499, clipped down to 100
    # label 3: no positive
    np.testing.assert_allclose(multilabel.positive_weights(targets), [19.0, 1.0, 100.0, 1.0])


def test_the_report_lists_the_most_frequent_label_pairs_and_counts_them_all() -> None:
    from types import SimpleNamespace

    from service.datasets.report import MAX_LABEL_PAIRS, _label_sets

    many = ";".join(f"l{n:02d}" for n in range(16))  # 120 pairs in one image
    rows = [SimpleNamespace(label=label) for label in (many, "l00;l01", "")]
    found = _label_sets(rows)  # type: ignore[arg-type]
    assert found.pairs == 120 and found.no_label_images == 1
    assert len(found.cooccurrence) == MAX_LABEL_PAIRS
    assert found.cooccurrence[0].labels == ["l00", "l01"] and found.cooccurrence[0].images == 2
