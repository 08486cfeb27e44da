"""A stored model in other formats: Keras, TFLite (float32, float16, int8) and ONNX.

Every format is converted from one inference network rebuilt from the stored SavedModel:

    raw pixels 0–255 → preprocess_input as a 1×1 convolution → backbone → head
    → Dense(K, softmax) with kernel/T and bias/T

- The training job's spec builds the network as it was trained, and the SavedModel's
  variables are copied into it in order (the export keeps `model.variables` in that order).
- The backbone's `preprocess_input` is an affine map of each pixel for every
  `keras.applications` family (scale and shift, "caffe"'s RGB→BGR a permutation), measured
  here and written as a 1×1 Conv2D: a built-in layer every converter and runtime knows, so the
  `.keras` file loads in plain Keras without this service's code.
- The temperature T is folded into the last layer: softmax(log softmax(z) / T), what `serve`
  computes, is softmax(z / T). No log of a probability is left to quantize in int8.
- Augmentation and dropout are left out: they do nothing at inference.

Each converted file is then loaded in its own runtime (Keras, LiteRT, ONNX Runtime) and run on
the model's validation images; its answers are compared with the SavedModel's `serve`.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from service.backbones import get_backbone
from service.ml.build import Network, build_network
from service.ml.calibrate import Temperature
from service.ml.data import ExportInputs
from service.ml.export import unpack_archive
from service.ml.images import to_pixels
from service.training.spec import JobSpec

Runner = Callable[[np.ndarray], np.ndarray]  # float32 pixels [n, h, w, 3] → probabilities [n, K]

FILES = {
    "keras": "model.keras",
    "tflite": "model.tflite",
    "tflite-fp16": "model.tflite",
    "tflite-int8": "model.tflite",
    "onnx": "model.onnx",
}
LABELS_FILE = "labels.txt"
REPORT_FILE = "export.json"
# ONNX opsets tf2onnx tests are 14–18; 17 is read by every ONNX Runtime since 1.14.
ONNX_OPSET = 17
BATCH = 32


@dataclass(frozen=True)
class Converted:
    archive: bytes  # the zip the API serves: the model file, labels.txt, export.json
    report: dict[str, Any]
    passed: bool


# -- the inference network ---------------------------------------------------------------------


def preprocess_affine(backbone: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(A, b) with preprocess_input(x) = x·A + b for every pixel x (A 3×3, b 3), measured on
    unit pixels and checked on random ones; None where preprocess_input is the identity
    (EfficientNet, ConvNeXt, MobileNetV3 preprocess inside the backbone)."""
    preprocess = get_backbone(backbone).preprocess_input
    probe = np.zeros((4, 1, 1, 3))
    for channel in range(3):
        probe[channel + 1, 0, 0, channel] = 255.0
    answered = np.asarray(preprocess(probe.copy()), dtype=np.float64).reshape(4, 3)
    shift = answered[0]
    matrix = (answered[1:] - shift) / 255.0
    check = np.random.default_rng(0).uniform(0, 255, (8, 4, 4, 3))
    expected = np.asarray(preprocess(check.copy()), dtype=np.float64)
    scale = max(1.0, float(np.abs(expected).max()))
    if np.abs(expected - (check @ matrix + shift)).max() > 1e-6 * scale:
        raise ValueError(f"{backbone}'s preprocess_input is not an affine map of each pixel")
    if np.allclose(matrix, np.eye(3)) and np.allclose(shift, 0.0):
        return None
    return matrix, shift


def restore_network(
    loaded: Any, spec: JobSpec, num_classes: int, multi_label: bool = False
) -> Network:
    """The network the job's spec builds, holding the stored SavedModel's variables."""
    keras.backend.clear_session()
    network = build_network(spec, num_classes, None, multi_label)
    variables, stored = network.model.variables, loaded.variables
    shapes = [tuple(v.shape) for v in variables], [tuple(v.shape) for v in stored]
    if shapes[0] != shapes[1]:
        raise ValueError(
            f"the stored SavedModel's {len(stored)} variables do not match the "
            f"{len(variables)} of the network its job's spec builds"
        )
    for variable, value in zip(variables, stored, strict=True):
        variable.assign(value.numpy())
    return network


def inference_model(network: Network, spec: JobSpec, temperature: Temperature) -> keras.Model:
    """Raw pixels → calibrated probabilities, from built-in Keras layers only (see the
    module's docstring). A sigmoid head's temperatures are one per label: sigmoid(z_j / T_j)
    is folded as column j's kernel and bias divided by T_j."""
    size = spec.input_size
    inputs = keras.Input((size, size, 3), dtype="float32", name="pixels")
    x = inputs
    affine = preprocess_affine(spec.backbone.name)
    if affine is not None:
        convolution = keras.layers.Conv2D(3, 1, name="preprocess_input")
        x = convolution(x)
        matrix, shift = affine
        convolution.set_weights([matrix.reshape(1, 1, 3, 3), shift])
    x = network.backbone(x, training=False)
    *hidden, output = [
        layer for layer in network.head_layers if not isinstance(layer, keras.layers.Dropout)
    ]
    for layer in hidden:
        x = layer(x)
    kernel, bias = output.get_weights()
    activation = keras.activations.serialize(output.activation)
    last = keras.layers.Dense(
        kernel.shape[1], activation=activation, dtype="float32", name="predictions"
    )
    outputs = last(x)
    divisor = np.asarray(temperature, dtype=kernel.dtype)
    last.set_weights([kernel / divisor, bias / divisor])
    return keras.Model(inputs, outputs, name="classifier")


def pixels_of(images: list[bytes], size: int) -> np.ndarray:
    """Raw pixels as `/predict` decodes them, float32 [n, size, size, 3]."""
    return np.stack([to_pixels(data, size) for data in images]).astype(np.float32)


def in_batches(run: Runner, pixels: np.ndarray, batch: int = BATCH) -> np.ndarray:
    return np.concatenate([run(pixels[i : i + batch]) for i in range(0, len(pixels), batch)])


# -- converters -------------------------------------------------------------------------------


def to_keras(model: keras.Model, scratch: Path) -> bytes:
    path = scratch / FILES["keras"]
    model.save(path)
    return path.read_bytes()


def representative_dataset(pixels: np.ndarray) -> Callable[[], Iterator[list[np.ndarray]]]:
    """The calibration images, one at a time. The first gets one black and one white pixel so
    the input's calibrated range is exactly 0–255: uint8 input then has scale 1 and zero
    point 0, the raw pixels themselves."""
    first = pixels[:1].copy()
    first[0, 0, 0, :], first[0, 0, 1, :] = 0.0, 255.0

    def samples() -> Iterator[list[np.ndarray]]:
        yield [first]
        for index in range(1, len(pixels)):
            yield [pixels[index : index + 1]]

    return samples


def to_tflite(model: keras.Model, format: str, representative: np.ndarray | None) -> bytes:
    """The converter fed one traced forward pass with its variables already constants: the
    file it made of a SavedModel written by `model.export()` (which traces the network twice)
    and read back, with the same answers and the same `serving_default` signature (`pixels` →
    `output_0`), in a quarter of the time. Handed the unfrozen function instead, the
    converter loses the variables' values (NaN answers); the empty module it is handed with
    the frozen one is what makes it write the signature."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    spec = tf.TensorSpec(model.inputs[0].shape, tf.float32, name="pixels")
    forward = tf.function(
        lambda pixels: model(pixels, training=False), input_signature=[spec], autograph=False
    )
    frozen = convert_variables_to_constants_v2(forward.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen], tf.Module())
    if format == "tflite-fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif format == "tflite-int8":
        assert representative is not None and len(representative)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset(representative)
        # Full-integer: every op int8, uint8 at the edges (camera pixels, byte probabilities).
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    return bytes(converter.convert())


def to_onnx(model: keras.Model) -> bytes:
    import onnx
    import tf2onnx

    size = model.inputs[0].shape[1]
    signature = (tf.TensorSpec((None, size, size, 3), tf.float32, name="pixels"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=ONNX_OPSET)
    # tf2onnx logs the ops it cannot map and writes them into the graph as they were, which
    # ONNX Runtime then refuses as an "invalid graph": say which ops instead.
    unknown = sorted(
        {
            node.op_type
            for node in proto.graph.node
            if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type)
        }
    )
    if unknown:
        raise ValueError(
            f"tf2onnx {metadata.version('tf2onnx')} cannot convert this network to ONNX: it "
            f"has no mapping for the TensorFlow op(s) {', '.join(unknown)}"
        )
    return proto.SerializeToString()


# -- runtimes: each format loaded as its users load it -------------------------------------------


@dataclass(frozen=True)
class Runtime:
    run: Runner
    name: str  # the runtime and its version
    input: dict[str, Any]  # name, dtype, shape (null: any batch), quantization
    output: dict[str, Any]


def _tensor(name: str, dtype: Any, shape: Any, quantization: Any = None) -> dict[str, Any]:
    scale, zero_point = quantization or (0.0, 0)
    return {
        "name": name,
        "dtype": np.dtype(dtype).name,
        # ONNX names unknown sizes, TFLite writes -1, Keras None: all null here.
        "shape": [None if d is None or isinstance(d, str) or int(d) < 0 else int(d) for d in shape],
        "quantization": {"scale": float(scale), "zero_point": int(zero_point)} if scale else None,
    }


def keras_runtime(data: bytes, scratch: Path) -> Runtime:
    path = scratch / "check.keras"
    path.write_bytes(data)
    model = keras.saving.load_model(path)  # safe mode: built-in layers only, no Lambda
    return Runtime(
        # predict_on_batch runs a compiled function: ten times quicker than an eager call.
        run=lambda pixels: np.asarray(model.predict_on_batch(pixels)),
        name=f"keras {keras.__version__}",
        input=_tensor(model.inputs[0].name, "float32", model.inputs[0].shape),
        output=_tensor(model.outputs[0].name, "float32", model.outputs[0].shape),
    )


def tflite_interpreter(data: bytes, threads: int | None = None) -> tuple[Any, str]:
    """LiteRT's interpreter (ai-edge-litert), or TensorFlow's where that is not installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        name = f"ai-edge-litert {metadata.version('ai-edge-litert')}"
    except ImportError:
        Interpreter = tf.lite.Interpreter
        name = f"tensorflow.lite {tf.__version__}"
    return Interpreter(model_content=data, num_threads=threads), name


def quantize(pixels: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Float input as a TFLite input tensor takes it: q = round(x / scale) + zero_point."""
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    if dtype.kind == "f":
        return pixels.astype(dtype, copy=False)
    limits = np.iinfo(dtype)
    quantized = np.rint(pixels / scale) + zero_point
    return np.clip(quantized, limits.min, limits.max).astype(dtype)


def dequantize(values: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if np.dtype(detail["dtype"]).kind == "f":
        return values.astype(np.float32, copy=False)
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


def tflite_runtime(data: bytes, threads: int | None = None) -> Runtime:
    interpreter, name = tflite_interpreter(data, threads)
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    batch = [int(source["shape"][0])]

    def run(pixels: np.ndarray) -> np.ndarray:
        if pixels.shape[0] != batch[0]:  # the file is written for batch 1; any batch runs
            interpreter.resize_tensor_input(source["index"], list(pixels.shape))
            interpreter.allocate_tensors()
            batch[0] = pixels.shape[0]
        interpreter.set_tensor(source["index"], quantize(pixels, source))
        interpreter.invoke()
        return dequantize(interpreter.get_tensor(target["index"]), target)

    return Runtime(
        run=run,
        name=name,
        input=_tensor(
            source["name"], source["dtype"], source["shape_signature"], source["quantization"]
        ),
        output=_tensor(
            target["name"], target["dtype"], target["shape_signature"], target["quantization"]
        ),
    )


def onnx_runtime(data: bytes, threads: int | None = None) -> Runtime:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    source, target = session.get_inputs()[0], session.get_outputs()[0]
    return Runtime(
        run=lambda pixels: session.run([target.name], {source.name: pixels})[0],
        name=f"onnxruntime {onnxruntime.__version__}",
        input=_tensor(source.name, "float32", source.shape),
        output=_tensor(target.name, "float32", target.shape),
    )


def load_runtime(format: str, data: bytes, scratch: Path, threads: int | None = None) -> Runtime:
    """The converted file loaded in its own runtime."""
    if format == "keras":
        return keras_runtime(data, scratch)
    if format == "onnx":
        return onnx_runtime(data, threads)
    return tflite_runtime(data, threads)


# -- the export job ------------------------------------------------------------------------------


def convert(format: str, model: keras.Model, inputs: ExportInputs, scratch: Path) -> bytes:
    """The model file of `format`."""
    if format == "keras":
        return to_keras(model, scratch)
    if format == "onnx":
        return to_onnx(model)
    representative = None
    if format == "tflite-int8":
        representative = pixels_of(inputs.representative, inputs.input_size)
    return to_tflite(model, format, representative)


def compare(
    reference: Runner, candidate: Runner, images: list[bytes], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Both runners' probabilities for the images, decoded a batch at a time (a large
    validation split's pixels need not all fit in memory at once)."""
    expected, answered = [], []
    for start in range(0, len(images), BATCH):
        pixels = pixels_of(images[start : start + BATCH], size)
        expected.append(reference(pixels))
        answered.append(candidate(pixels))
    return np.concatenate(expected), np.concatenate(answered)


def parity(
    reference: np.ndarray,
    answers: np.ndarray,
    labels: list[int] | list[list[int]],
    bar: float,
    thresholds: list[float] | None = None,
) -> dict[str, Any]:
    """Top-1 agreement and probability differences against the SavedModel's answers, and
    both accuracies on the true labels (what a disagreement costs). A multi-label model's
    (`thresholds`): agreement on each image's whole label set at the thresholds, and the
    exact-match ratio as accuracy."""
    answer = _answered(thresholds)
    agreeing = int(np.sum(_same(answer(reference), answer(answers))))
    difference = np.abs(answers.astype(np.float64) - reference.astype(np.float64))
    agreement = agreeing / len(reference)
    truth = np.asarray(labels)
    return {
        "images": len(reference),
        "agreeing": agreeing,
        "agreement": agreement,
        "bar": bar,
        "passed": agreement >= bar,
        "max_abs_difference": float(difference.max()),
        "mean_abs_difference": float(difference.mean()),
        "accuracy": float(np.mean(_same(answer(answers), truth))),
        "savedmodel_accuracy": float(np.mean(_same(answer(reference), truth))),
    }


def _answered(thresholds: list[float] | None) -> Callable[[np.ndarray], np.ndarray]:
    """What a model answers from its scores: the top class, or each label past its own."""
    if thresholds is None:
        return lambda scores: scores.argmax(axis=1)
    return lambda scores: (scores >= np.asarray(thresholds)).astype(int)


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per image, whether two answers agree (every label of a label set)."""
    equal = np.asarray(a) == np.asarray(b)
    return equal.all(axis=1) if equal.ndim == 2 else equal


def _stop_if(should_stop: Callable[[], bool]) -> None:
    from service.ml.data import TrainingStopped

    if should_stop():
        raise TrainingStopped


def export_model(
    inputs: ExportInputs, *, bar: float, should_stop: Callable[[], bool] = lambda: False
) -> Converted:
    """Convert the stored model to `inputs.format`, run the file in its runtime on the
    validation images against the SavedModel's `serve`, and pack it with its labels and
    report. `passed` says whether it reached `bar`; the caller decides what failing means."""
    with tempfile.TemporaryDirectory(prefix="export-") as name:
        scratch = Path(name)
        unpack_archive(inputs.savedmodel, scratch / "savedmodel")
        loaded = tf.saved_model.load(str(scratch / "savedmodel"))
        multi_label = inputs.thresholds is not None
        network = restore_network(loaded, inputs.spec, len(inputs.classes), multi_label)
        model = inference_model(network, inputs.spec, inputs.temperature)
        _stop_if(should_stop)
        started = time.monotonic()
        data = convert(inputs.format, model, inputs, scratch)
        converted = time.monotonic()
        _stop_if(should_stop)
        runtime = load_runtime(inputs.format, data, scratch)
        expected, answered = compare(
            lambda pixels: np.asarray(loaded.serve(pixels)),
            runtime.run,
            inputs.validation,
            inputs.input_size,
        )
        seconds = {"convert": converted - started, "check": time.monotonic() - converted}
    report = {
        "format": inputs.format,
        "file": FILES[inputs.format],
        "file_bytes": len(data),
        "labels_file": LABELS_FILE,
        "classes": inputs.classes,
        "input": runtime.input,
        "output": runtime.output,
        "temperature": inputs.temperature,
        "thresholds": inputs.thresholds,
        "calibration_images": len(inputs.representative) if inputs.format == "tflite-int8" else 0,
        "parity": parity(expected, answered, inputs.labels, bar, inputs.thresholds),
        "runtime": runtime.name,
        "converter": converter_name(inputs.format),
        "seconds": {key: round(value, 3) for key, value in seconds.items()},
    }
    archive = pack(inputs.format, data, inputs.classes, report)
    return Converted(archive=archive, report=report, passed=report["parity"]["passed"])


def converter_name(format: str) -> str:
    if format == "keras":
        return f"keras {keras.__version__}"
    if format == "onnx":
        return f"tf2onnx {metadata.version('tf2onnx')} (opset {ONNX_OPSET})"
    return f"tensorflow {tf.__version__} TFLiteConverter"


def pack(format: str, data: bytes, classes: list[str], report: dict[str, Any]) -> bytes:
    """The zip the API serves: the model file, labels.txt (one class a line, in the order of
    the output's columns) and export.json (the report: dtypes, quantization, parity)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr(FILES[format], data)
        archive.writestr(LABELS_FILE, "".join(f"{name}\n" for name in classes))
        archive.writestr(REPORT_FILE, json.dumps(report, indent=2) + "\n")
    return buffer.getvalue()
