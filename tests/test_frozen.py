"""Serving's frozen graph (service/ml/frozen.py): the stored model's answers from a graph with
its variables folded in, and the stored model itself whenever that cannot be had."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.ml import frozen
from service.ml.model_cache import LoadedModel, ModelCache
from service.predictions.serving import Image, decode_images, model_source


def load(small_model: dict[str, Any], directory: Path) -> tuple[LoadedModel, Any, np.ndarray]:
    """The model as the API's cache loads it, the SavedModel as stored, and the pixels of
    every image of the fixture's dataset."""
    import tensorflow as tf

    source = model_source(small_model["service"].database, small_model["job"]["model_id"])
    loaded = ModelCache(directory, capacity=1).get(source)
    (unpacked,) = directory.glob(f"{source.model_id}-*")
    images = [
        Image(f"{label}[{n}]", f"{n}.png", data)
        for label, items in small_model["images"].items()
        for n, data in enumerate(items)
    ]
    return loaded, tf.saved_model.load(str(unpacked)), decode_images(images, source.input_size)


def test_a_loaded_model_serves_its_frozen_graph_with_the_stored_models_answers(
    small_model: dict[str, Any], tmp_path: Path
) -> None:
    loaded, stored, pixels = load(small_model, tmp_path)
    assert loaded.frozen
    expected = stored.serve(pixels.astype(np.float32)).numpy()
    together = loaded.probabilities(pixels)
    np.testing.assert_allclose(together, expected, rtol=0, atol=1e-5)
    assert (together.argmax(axis=1) == expected.argmax(axis=1)).all()
    # One image at a time (how a lone request runs) gives the rows of the batch.
    alone = np.concatenate([loaded.probabilities(image[None]) for image in pixels])
    np.testing.assert_allclose(alone, together, rtol=0, atol=1e-5)


def test_a_frozen_graph_that_answers_otherwise_is_refused_and_the_model_served_as_stored(
    small_model: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # No difference passes a negative tolerance: the probe always fails.
    monkeypatch.setattr(frozen, "PROBE_TOLERANCE", -1.0)
    with caplog.at_level(logging.WARNING, logger=frozen.__name__):
        loaded, stored, pixels = load(small_model, tmp_path)
    assert not loaded.frozen
    model_id = small_model["job"]["model_id"]
    assert f"model {model_id} is served as stored: frozen, its probabilities differ" in caplog.text
    np.testing.assert_array_equal(
        loaded.probabilities(pixels), stored.serve(pixels.astype(np.float32)).numpy()
    )


def test_a_serve_function_that_cannot_be_frozen_is_left_as_it_is(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def plain(pixels: Any) -> Any:  # no concrete function to freeze
        return pixels

    with caplog.at_level(logging.WARNING, logger=frozen.__name__):
        assert frozen.frozen_serve("m_plain", plain, 32) is None
    assert "model m_plain is served as stored: it cannot be frozen" in caplog.text
