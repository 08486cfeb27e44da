"""Multi-label training: a sigmoid per label, its loss, the split that keeps rare labels on both
sides, and the temperatures and thresholds fitted on the validation split and carried by the
stored model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.ml import multilabel
from service.ml.data import LabelledImages
from service.ml.split import strata, stratified_split
from tests.conftest import png_bytes

COLOURS = ["red", "green", "blue"]
SIZE = 32
SPEC = {
    # ResNet50's random-weight features are of a sane scale (test_calibration.py), so the
    # head alone, on cached features, learns from them in a few seconds.
    "backbone": {"name": "ResNet50", "weights": None, "input_size": SIZE},
    "head": {"pooling": "avg", "dense": [], "dropout": 0.0},
    "freeze": {"mode": "backbone"},
    "training": {
        "epochs": 20,
        "batch_size": 16,
        "learning_rate": 0.01,
        "validation_split": 0.4,
        "class_weight": "balanced",
        "seed": 0,
    },
}


def halves(count: int, seed: int) -> LabelledImages:
    """Each image two halves, each a colour or grey; its labels the colours it shows."""
    rng = np.random.default_rng(seed)
    images, labels = [], np.zeros((count, len(COLOURS)), dtype=np.float32)
    for row in range(count):
        pixels = np.full((SIZE, SIZE, 3), 90.0)
        for side in range(2):
            pick = rng.integers(0, len(COLOURS) + 1)  # the last: grey, no label
            if pick < len(COLOURS):
                block = pixels[:, side * SIZE // 2 : (side + 1) * SIZE // 2]
                block[...] = 30.0
                block[..., pick] = 220.0
                labels[row, pick] = 1.0
        noisy = pixels + rng.normal(0, 12, pixels.shape)
        images.append(png_bytes(np.clip(noisy, 0, 255).astype(np.uint8)))
    return LabelledImages(images, labels, list(COLOURS))


def test_the_split_stratifies_by_each_images_rarest_label() -> None:
    labels = np.zeros((40, 3), dtype=np.float32)
    labels[:30, 0] = 1  # common
    labels[30:34, 1] = 1  # rare, alone
    labels[34:38, [0, 2]] = 1  # rare, beside the common one
    assert list(strata(labels)[28:40]) == [0, 0, 1, 1, 1, 1, 2, 2, 2, 2, -1, -1]
    _, validation = stratified_split(labels, 0.25, seed=3)
    held = labels[validation]
    # Each rare label on both sides: a quarter of its images held out, as for a class.
    assert held[:, 1].sum() == 1 and held[:, 2].sum() == 1


def test_the_loss_weighs_each_labels_positives() -> None:
    import keras

    from service.ml.losses import LabelBinaryCrossentropy

    rng = np.random.default_rng(0)
    targets = (rng.random((8, 3)) < 0.3).astype(np.float32)
    predicted = rng.uniform(0.05, 0.95, (8, 3)).astype(np.float32)
    weights = [1.0, 4.0, 9.0]
    expected = -np.mean(
        np.asarray(weights) * targets * np.log(predicted) + (1 - targets) * np.log(1 - predicted),
        axis=1,
    ).mean()
    loss = LabelBinaryCrossentropy(weights)
    assert float(loss(targets, predicted)) == pytest.approx(expected, rel=1e-5)
    # Unweighted, it is Keras's own binary cross-entropy.
    plain = keras.losses.BinaryCrossentropy()(targets, predicted)
    assert float(LabelBinaryCrossentropy()(targets, predicted)) == pytest.approx(
        float(plain), rel=1e-5
    )


@pytest.mark.slow
def test_a_sigmoid_head_learns_label_sets_and_the_stored_model_applies_its_calibration(
    tmp_path: Path,
) -> None:
    import keras
    import tensorflow as tf

    from service.ml.convert import inference_model
    from service.ml.export import export_savedmodel, unpack_archive
    from service.ml.images import to_pixels
    from service.ml.train import train
    from service.training.spec import JobSpec
    from tests.test_training import Recorder

    keras.backend.clear_session()
    data = halves(90, seed=0)
    spec = JobSpec.model_validate({"dataset_id": "d_test", **SPEC})
    result = train(spec, data, Recorder(), backbone_weights=None)

    assert keras.activations.serialize(result.network.model.layers[-1].activation) == "sigmoid"
    evaluation = result.evaluation
    print("multi-label:", {k: evaluation[k] for k in ("micro_f1", "macro_f1", "exact_match")})
    assert evaluation["micro_f1"] >= 0.95
    assert [row["label"] for row in evaluation["per_label"]] == COLOURS
    assert result.thresholds == [row["threshold"] for row in evaluation["per_label"]]
    assert len(result.temperature) == len(COLOURS)
    assert evaluation["calibration"]["temperatures"] == result.temperature
    # Unknowns: a Gaussian per label set seen in training, thresholded on the validation split.
    assert evaluation["unknowns"]["split"] == "validation"
    assert evaluation["unknowns"]["flagged_share"] <= 0.2 and result.unknowns is not None
    assert result.metrics["val_micro_f1"] == evaluation["micro_f1"]
    # The report is of what the stored model answers: its calibrated scores.
    truth = data.labels[result.validation_index]
    again = multilabel.evaluate(
        truth, result.validation_probabilities, np.array(result.thresholds), COLOURS
    )
    assert again["micro_f1"] == evaluation["micro_f1"]

    pixels = np.stack([to_pixels(image, SIZE) for image in data.images]).astype(np.float32)
    validation = pixels[result.validation_index]
    raw = result.network.model.predict(validation, verbose=0)
    expected = multilabel.scale(multilabel.logits_of(raw), np.array(result.temperature))
    unpack_archive(export_savedmodel(result.network.model, result.temperature), tmp_path)
    savedmodel = tf.saved_model.load(str(tmp_path))
    served = savedmodel.serve(validation).numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)
    np.testing.assert_allclose(served, result.validation_probabilities, atol=1e-5)
    # An export folds each label's temperature into its column of the last layer.
    folded = inference_model(result.network, spec, result.temperature)
    np.testing.assert_allclose(folded.predict(validation, verbose=0), served, atol=1e-4)
