"""Calibrated scores: temperature scaling fitted on the validation split, its measures, and
the temperature carried by the stored and exported model."""

from __future__ import annotations

import io
import math
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.ml import calibrate
from tests.conftest import LIGHT, png_bytes


def random_probabilities(rng: np.random.Generator, rows: int, classes: int) -> np.ndarray:
    logits = rng.normal(0, 3, (rows, classes))
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def test_ece_nll_and_bins_match_a_direct_computation() -> None:
    rng = np.random.default_rng(0)
    probabilities = random_probabilities(rng, 200, 4)
    labels = rng.integers(0, 4, 200)
    confidence, predicted = probabilities.max(axis=1), probabilities.argmax(axis=1)
    ece = 0.0
    for number in range(15):
        lower, upper = number / 15, (number + 1) / 15
        members = [i for i in range(200) if lower < confidence[i] <= upper]
        row = calibrate.reliability_bins(probabilities, labels)[number]
        assert (row["lower"], row["upper"], row["count"]) == (lower, upper, len(members))
        if members:
            accuracy = sum(predicted[i] == labels[i] for i in members) / len(members)
            mean_confidence = sum(confidence[i] for i in members) / len(members)
            assert row["accuracy"] == pytest.approx(accuracy)
            assert row["confidence"] == pytest.approx(mean_confidence)
            ece += len(members) / 200 * abs(accuracy - mean_confidence)
        else:
            assert row["accuracy"] is None and row["confidence"] is None
    assert calibrate.expected_calibration_error(probabilities, labels) == pytest.approx(ece)
    nll = -sum(math.log(probabilities[i, labels[i]]) for i in range(200)) / 200
    assert calibrate.negative_log_likelihood(probabilities, labels) == pytest.approx(nll)


def test_temperature_minimises_the_nll_and_keeps_every_ranking() -> None:
    rng = np.random.default_rng(1)
    # Over-confident: logits three times too large for how often the top class is right.
    logits = rng.normal(0, 1, (400, 5))
    labels = np.array([rng.choice(5, p=np.exp(row) / np.exp(row).sum()) for row in logits])
    probabilities = np.exp(3 * logits) / np.exp(3 * logits).sum(axis=1, keepdims=True)
    temperature = calibrate.fit_temperature(probabilities, labels)
    grid = np.exp(np.linspace(-3, 3, 6001))
    losses = [
        calibrate.negative_log_likelihood(calibrate.scale(probabilities, t), labels) for t in grid
    ]
    assert temperature == pytest.approx(grid[int(np.argmin(losses))], rel=2e-3)
    assert temperature == pytest.approx(3.0, rel=0.25)
    scaled = calibrate.scale(probabilities, temperature)
    direct = np.exp(np.log(probabilities) / temperature)
    np.testing.assert_allclose(scaled, direct / direct.sum(axis=1, keepdims=True), rtol=1e-9)
    np.testing.assert_array_equal(np.argsort(scaled, axis=1), np.argsort(probabilities, axis=1))
    report = calibrate.calibrate(probabilities, labels).report
    assert report["fitted"] and report["temperature"] == pytest.approx(temperature)
    assert report["ece_after"] < report["ece_before"] and report["nll_after"] < report["nll_before"]
    assert sum(row["count"] for row in report["bins_after"]) == 400


def test_nothing_is_fitted_where_nothing_can_be_learnt() -> None:
    right = np.array([[0.9, 0.1], [0.2, 0.8]])
    every_right = calibrate.calibrate(right, np.array([0, 1]))
    assert every_right.temperature == 1.0 and not every_right.report["fitted"]
    assert "answered right" in every_right.report["reason"]
    np.testing.assert_array_equal(every_right.probabilities, right)
    # Equal scores: no temperature changes the likelihood, so T stays 1.
    flat = np.full((4, 2), 0.5)
    assert calibrate.fit_temperature(flat, np.array([0, 1, 0, 1])) == 1.0
    assert calibrate.scale(right, 1.0) is right


# A weak colour cue in noise: 8 training images per class are memorised, held-out ones are
# right about 70 % of the time, with confidences near 1.
SIGNAL = 28
OVERCONFIDENT = {
    "backbone": {"name": "ResNet50", "weights": None, "input_size": 32},
    "head": {"pooling": "avg", "dense": [], "dropout": 0.0},
    "freeze": {"mode": "backbone"},
    "training": {
        "epochs": 30,
        "batch_size": 8,
        "learning_rate": 0.01,
        "validation_split": 0.5,
        "seed": 0,
    },
}


def weak_colours(per_class: int, seed: int) -> Any:
    from service.ml.data import LabelledImages

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for channel in range(3):
        for _ in range(per_class):
            pixels = rng.integers(0, 200, (32, 32, 3))
            pixels[..., channel] += SIGNAL
            images.append(png_bytes(np.clip(pixels, 0, 255).astype(np.uint8)))
            labels.append(channel)
    return LabelledImages(images, np.array(labels, dtype=np.int32), ["blue", "green", "red"])


def train_overconfident(backbone: dict[str, Any] | None = None, **training: Any) -> Any:
    """ResNet50's random-weight features are of a sane scale (MobileNetV2's are ~1e-12), so
    the head alone, on cached features, memorises its 8 images per class in 30 epochs."""
    import keras

    from service.ml.train import train
    from service.training.spec import JobSpec
    from tests.test_training import Recorder

    keras.backend.clear_session()
    body = {**OVERCONFIDENT, "training": {**OVERCONFIDENT["training"], **training}}
    if backbone is not None:
        body["backbone"] = {**OVERCONFIDENT["backbone"], **backbone}
    spec = JobSpec.model_validate({"dataset_id": "d_test", **body})
    return train(spec, weak_colours(16, seed=0), Recorder(), backbone_weights=None)


def pixels(data: Any) -> np.ndarray:
    from service.ml.images import to_pixels

    return np.stack([to_pixels(image, 32) for image in data.images]).astype(np.float32)


def load_exported(model: Any, temperature: float, directory: Path) -> Any:
    import tensorflow as tf

    from service.ml.export import export_savedmodel, unpack_archive

    unpack_archive(export_savedmodel(model, temperature=temperature), directory)
    return tf.saved_model.load(str(directory))


@pytest.mark.slow
def test_overconfident_model_is_better_calibrated_on_held_out_images(tmp_path: Path) -> None:
    result = train_overconfident()
    assert result.split == {"train": 24, "validation": 24}
    assert result.history[-1]["accuracy"] == 1.0  # memorised
    report = result.calibration
    assert report["fitted"] and report["temperature"] == result.temperature > 1.5
    assert result.evaluation["calibration"] == report

    held_out = weak_colours(30, seed=1)  # never seen, by training or by the fit of T
    raw = result.network.model.predict(pixels(held_out), verbose=0)
    scaled = calibrate.scale(raw, result.temperature)
    before = calibrate.expected_calibration_error(raw, held_out.labels)
    after = calibrate.expected_calibration_error(scaled, held_out.labels)
    print(f"held-out ECE {before:.3f} → {after:.3f}, T = {result.temperature:.2f}")
    assert after < before * 0.75
    assert calibrate.negative_log_likelihood(
        scaled, held_out.labels
    ) < calibrate.negative_log_likelihood(raw, held_out.labels)
    np.testing.assert_array_equal(scaled.argmax(axis=1), raw.argmax(axis=1))

    # The exported model applies T in its graph, in `serve` and in `explain` alike.
    savedmodel = load_exported(result.network.model, result.temperature, tmp_path)
    served = savedmodel.serve(pixels(held_out)).numpy()
    np.testing.assert_allclose(served, scaled, atol=1e-5)
    classes = np.zeros((len(served), 1), dtype=np.int32)
    explained = savedmodel.explain(pixels(held_out), classes)["probabilities"].numpy()
    np.testing.assert_allclose(explained, served, atol=1e-6)


@pytest.mark.slow
def test_calibrate_false_fits_nothing_and_the_report_is_of_served_scores(tmp_path: Path) -> None:
    # On the light backbone: what is fitted, reported and served here is no network's own.
    result = train_overconfident(LIGHT, epochs=3, calibrate=False)
    assert result.temperature == 1.0
    assert result.calibration == {"fitted": False, "reason": "training.calibrate is false"}
    savedmodel = load_exported(result.network.model, result.temperature, tmp_path)
    data = weak_colours(16, seed=0)
    validation = pixels(data)[result.validation_index]
    np.testing.assert_allclose(
        savedmodel.serve(validation).numpy(), result.validation_probabilities, atol=1e-5
    )
    no_split = train_overconfident(LIGHT, epochs=1, validation_split=0.0)
    assert no_split.evaluation is None and no_split.temperature == 1.0
    assert "no validation split" in no_split.calibration["reason"]


def test_stored_evaluation_carries_the_calibration_the_download_applies(
    small_model: dict[str, Any], tmp_path: Path
) -> None:
    """The worker's path: the evaluation's scores are what the downloaded SavedModel gives."""
    import tensorflow as tf

    from service.ml.images import to_pixels

    client = small_model["service"].client
    model = client.get(f"/models/{small_model['job']['model_id']}").json()
    evaluation = client.get(f"/models/{model['id']}/evaluation")
    assert evaluation.status_code == 200, evaluation.text
    block = evaluation.json()["calibration"]
    assert block is not None and isinstance(block["fitted"], bool)
    if block["fitted"]:
        assert block["temperature"] > 0 and len(block["bins_before"]) == 15
        print(
            f"small model: T = {block['temperature']:.3f}, ECE {block['ece_before']:.3f} → "
            f"{block['ece_after']:.3f} on {block['images']} validation images"
        )
    archive = client.get(f"/models/{model['id']}/savedmodel").content
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(tmp_path, filter="data")
    savedmodel = tf.saved_model.load(str(tmp_path))
    samples = client.get(f"/models/{model['id']}/evaluation/samples").json()
    for sample in samples:
        data = client.get(f"/datasets/{model['dataset_id']}/images/{sample['image_id']}").content
        served = savedmodel.serve(to_pixels(data, model["input_size"])[None].astype("float32"))
        expected = [sample["scores"][label] for label in model["classes"]]
        np.testing.assert_allclose(served.numpy()[0], expected, atol=1e-4)
