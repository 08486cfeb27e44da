"""A stored model's `serve`, with its variables folded into the graph as constants.

A SavedModel's `serve` reads every weight from a resource variable, so TensorFlow's graph
optimiser (Grappler) can neither fold a BatchNormalization's scale and shift into the
convolution before it nor fuse that convolution with its bias and activation into one oneDNN
kernel. Once the variables are constants it does both. On 2 cores, a MobileNetV2 at 224 px
then answers one image in 7.6 ms instead of 10.4 and sixteen in 62 ms instead of 83, with
the same probabilities (bench/predict.py). The conversion is TensorFlow's own, the one its
TFLite converter starts from. A model it cannot freeze, or whose frozen answers differ from
the stored one's on a probe batch, is served as stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# How far the frozen graph's answers may stray from the stored model's on the probe before it
# is refused (absolute up to 1, relative beyond): rounding from a different order of the same
# sums, nothing more.
PROBE_TOLERANCE = 1e-5
PROBE_IMAGES = 2


def frozen_serve(
    model_id: str, serve: Callable[[Any], Any], input_size: int
) -> Callable[[Any], Any] | None:
    """`serve` as a graph of constants, checked against `serve` itself on a probe batch (which
    also runs Grappler's optimisation now rather than in the first request); None, with the
    reason logged, when it cannot be frozen or answers differently."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    spec = tf.TensorSpec([None, input_size, input_size, 3], tf.float32, name="pixels")
    try:
        concrete = serve.get_concrete_function(spec)  # type: ignore[attr-defined]
        graph = convert_variables_to_constants_v2(concrete)
        if len(graph.outputs) != 1:
            raise ValueError("`serve` has several outputs")
        # The frozen graph declares no arguments: called directly, TensorFlow would try its
        # signature, fail, format the whole input tensor as text for the error it then drops,
        # and fall back, in every call. Wrapped, the input binds to `pixels` at once.
        frozen = tf.function(lambda pixels: graph(pixels)[0], input_signature=[spec])
        bound = frozen.get_concrete_function()
    except (AttributeError, TypeError, ValueError, tf.errors.OpError) as error:
        log.warning("model %s is served as stored: it cannot be frozen (%s)", model_id, error)
        return None

    def call(pixels: Any) -> Any:
        return bound(tf.convert_to_tensor(pixels))

    probe = np.random.default_rng(0).uniform(0, 255, (PROBE_IMAGES, input_size, input_size, 3))
    probe = probe.astype(np.float32)
    expected = np.asarray(serve(probe))
    # Relative past 1: an ood_score column (service/ml/unknowns.py) can run to thousands.
    difference = float(np.max(np.abs(np.asarray(call(probe)) - expected) / (1 + np.abs(expected))))
    if difference > PROBE_TOLERANCE:
        log.warning(
            "model %s is served as stored: frozen, its probabilities differ by %.2g on the "
            "probe batch (at most %.0e allowed)",
            model_id,
            difference,
            PROBE_TOLERANCE,
        )
        return None
    return call
