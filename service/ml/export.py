"""SavedModels and weights as bytes: what the database stores and the API serves."""

from __future__ import annotations

import hashlib
import io
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # callers bring a built model; the API only unpacks archives, without keras
    import keras

    from service.ml.calibrate import Temperature
    from service.ml.unknowns import UnknownDetector


def export_savedmodel(
    model: keras.Model, temperature: Temperature = 1.0, unknowns: UnknownDetector | None = None
) -> bytes:
    """The model as a SavedModel, packed as a tar.gz, with these signatures:

    - `serve`: raw pixels (float32 0–255, [batch, h, w, 3]) → class probabilities, scaled by
      the fitted `temperature` (`service.ml.calibrate`), the model run in inference mode;
      `model.export()`'s name, input signature and output, and it stays the
      `serving_default` TF Serving calls.
    - `explain`: the same pixels and class indices (int32 [batch, n]) → `probabilities` (as
      `serve` gives them), `heatmaps` [batch, n, h, w], `maps` [batch, n, fh, fw] and
      `method` ("cam" or "grad-cam"; see `service.ml.explain`).
    - `unknowns`, with a fitted detector: the same pixels → `probabilities` (as `serve`
      gives them), `ood_score` [batch] and `unknown` [batch] (past the fitted threshold;
      see `service.ml.unknowns`), and `features` [batch, channels] (the backbone's final
      feature map averaged over its cells: what the review queue measures likeness by).
      The variable collection `unknown_thresholds` holds the validation scores at 1001
      evenly spaced quantile levels, the unknown_rate fitted for and the number of
      validation images, from which the threshold for any other rate is read.
    - `features`, without a detector: the same pixels → `features` and `probabilities`.
    """
    with tempfile.TemporaryDirectory(prefix="savedmodel-") as scratch:
        directory = Path(scratch) / "savedmodel"
        write_savedmodel(model, directory, temperature, unknowns)
        return pack_directory(directory)


def write_savedmodel(
    model: keras.Model,
    directory: Path,
    temperature: Temperature = 1.0,
    unknowns: UnknownDetector | None = None,
) -> None:
    """`export_savedmodel`'s directory, unpacked, in the layout `model.export()` writes: the
    model's variables under `variables`, `trainable_variables` and `non_trainable_variables`
    (in `model.variables`' order), each endpoint a signature, the first also
    `serving_default`.

    Saved with `tf.saved_model.save` itself, not through Keras's ExportArchive: to list the
    variables an endpoint uses, the archive traces it outside the save, and TensorFlow traces
    it again inside (another function context), so every endpoint cost two traces of the
    whole network. The variables are known here: they are the model's. Every endpoint calls
    one traced forward pass (`service.ml.unknowns.Tap`), so the network is traced once, not
    once per endpoint, and a loaded model holds one copy of its graph."""
    import tensorflow as tf

    from service.ml.explain import explain_function, input_specs, serve_function
    from service.ml.unknowns import Tap, features_function, unknowns_function

    pixels, classes = (
        tf.TensorSpec(spec.shape, dtype=spec.dtype, name=spec.name) for spec in input_specs(model)
    )
    root = tf.__internal__.tracking.AutoTrackable()
    root.variables = list(model.variables)
    root.trainable_variables = list(model.trainable_variables)
    root.non_trainable_variables = list(model.non_trainable_variables)
    tap = Tap(model, depths=unknowns is not None)
    forward = tf.function(tap.maps, input_signature=[pixels], autograph=False)
    endpoints = {
        "serve": (serve_function(forward, temperature), [pixels]),
        "explain": (explain_function(model, forward, temperature), [pixels, classes]),
    }
    # Review's features come with the unknown-input score from one signature: a second one
    # would store the detector's matrices twice (3 MB of a 14 MB model at 32 px).
    if unknowns is not None:
        function = unknowns_function(forward, temperature, unknowns, with_features=True)
        endpoints["unknowns"] = (function, [pixels])
        root.unknown_thresholds = [
            tf.Variable(unknowns.quantiles.astype("float64"), trainable=False),
            tf.Variable(unknowns.unknown_rate, dtype="float64", trainable=False),
            tf.Variable(unknowns.report["images"], dtype="int64", trainable=False),
        ]
    else:
        endpoints["features"] = (features_function(forward, temperature), [pixels])
    signatures = {}
    for name, (function, specs) in endpoints.items():
        signatures[name] = tf.function(function, input_signature=specs, autograph=False)
        setattr(root, name, signatures[name])
    signatures["serving_default"] = signatures["serve"]
    tf.saved_model.save(root, str(directory), signatures=signatures)


def pack_directory(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as archive:
        for path in sorted(directory.rglob("*")):
            archive.add(path, arcname=str(path.relative_to(directory)), recursive=False)
    return buffer.getvalue()


def unpack_archive(blob: bytes, directory: Path) -> None:
    """Unpack a tar.gz this service made; members are checked to stay inside `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as archive:
        archive.extractall(directory, filter="data")


def sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def weights_bytes(model: keras.Model) -> bytes:
    """The model's weights as a Keras `.weights.h5` file."""
    with tempfile.TemporaryDirectory(prefix="weights-") as scratch:
        path = Path(scratch) / "backbone.weights.h5"
        model.save_weights(str(path))
        return path.read_bytes()
