"""Class activation maps: where in the image the evidence for a class lies.

The exported SavedModel's `explain` signature is built here. Both methods look at the
backbone's last feature map f (shape fh × fw × C, one cell per 32 px or so of the input):

- CAM (Zhou et al. 2016), exact, when the head is GlobalAveragePooling2D or Flatten, then
  perhaps Dropout, then the softmax Dense (weights w, bias b), with no hidden Dense layer:
  the class logit is then linear in f, and the map is its spatial decomposition,

      map_c(x, y) = Σ_k w_kc · f_k(x, y)          (GAP: w is C × K)
      map_c(x, y) = Σ_k w_(x,y,k),c · f_k(x, y)   (Flatten: w is fh·fw·C × K)

  so that for GAP the map's spatial MEAN plus b_c equals the logit z_c, and for Flatten its
  spatial SUM plus b_c does. No ReLU: the negative evidence is part of the identity.
- Grad-CAM (Selvaraju et al. 2017) for any other head (hidden Dense layers, global max
  pooling): α_kc = mean_(x,y) ∂z_c/∂f_k(x, y), map_c = ReLU(Σ_k α_kc · f_k).

z is the pre-softmax score of the output layer, before the temperature: T divides every
logit alike, so it would only rescale the maps.

The heatmaps are the maps resized to the input with a Lanczos-3 kernel. A map has one cell
per 32 px of input; bilinear interpolation's maximum always lies on a cell centre, so the
peak it shows is quantised to the backbone's stride, while a smooth interpolant's can fall
between cells, towards where neighbouring cells say the evidence is. (Trained from random
weights on a small-object task, the bilinear peak fell inside the object in 76–100 % of
held-out images over seven runs, the Lanczos-3 peak in 90–100 %: tests/test_explain.py.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import keras
import tensorflow as tf

from service.ml.calibrate import Temperature, scale_tensor

if TYPE_CHECKING:
    from service.ml.unknowns import Forward

Method = Literal["cam", "grad-cam"]
# How the maps reach the input's resolution (see the module's docstring).
HEATMAP_RESIZE = "lanczos3"
_POOLING_FOR_CAM = (keras.layers.GlobalAveragePooling2D, keras.layers.Flatten)


def split_at_backbone(model: keras.Model) -> tuple[keras.Model, list[keras.layers.Layer]]:
    """The backbone (the last nested model: any augmentation model comes before it) and the
    head layers after it, in order; the last of them is the softmax Dense layer."""
    layers = list(model.layers)
    positions = [n for n, layer in enumerate(layers) if isinstance(layer, keras.Model)]
    if not positions:
        raise ValueError(f"model {model.name!r} holds no backbone model")
    position = positions[-1]
    head = layers[position + 1 :]
    if not head or not isinstance(head[-1], keras.layers.Dense):
        raise ValueError(f"model {model.name!r} does not end in a Dense layer")
    return layers[position], head


def explanation_method(head: list[keras.layers.Layer]) -> Method:
    """CAM ("cam") where the logit is linear in the feature map (see the module's docstring)."""
    pooling, *middle, _output = head
    linear = isinstance(pooling, _POOLING_FOR_CAM) and all(
        isinstance(layer, keras.layers.Dropout) for layer in middle
    )
    return "cam" if linear else "grad-cam"


def logits(features: tf.Tensor, head: list[keras.layers.Layer]) -> tf.Tensor:
    """The output layer's pre-softmax scores for these backbone features (inference mode)."""
    x = features
    for layer in head[:-1]:
        x = layer(x)
    output = head[-1]
    x = tf.cast(x, tf.float32)
    return tf.matmul(x, tf.cast(output.kernel, tf.float32)) + tf.cast(output.bias, tf.float32)


def class_activation_maps(
    features: tf.Tensor, head: list[keras.layers.Layer], classes: tf.Tensor
) -> tf.Tensor:
    """Exact CAM, [batch, n, fh, fw], for `classes` [batch, n]; GAP or Flatten heads only."""
    features = tf.cast(features, tf.float32)
    kernel = tf.cast(head[-1].kernel, tf.float32)
    if isinstance(head[0], keras.layers.Flatten):
        # Flatten orders its output (y, x, k), row-major: the kernel's rows follow that order.
        shape = tf.concat([tf.shape(features)[1:], [-1]], axis=0)
        per_cell = tf.transpose(tf.reshape(kernel, shape), [3, 0, 1, 2])  # K, fh, fw, C
        weights = tf.gather(per_cell, classes)  # batch, n, fh, fw, C
        return tf.einsum("byxk,bnyxk->bnyx", features, weights)
    weights = tf.gather(tf.transpose(kernel), classes)  # batch, n, C
    return tf.einsum("byxk,bnk->bnyx", features, weights)


def grad_cam_maps(
    features: tf.Tensor, head: list[keras.layers.Layer], classes: tf.Tensor
) -> tf.Tensor:
    """Grad-CAM, [batch, n, fh, fw], for `classes` [batch, n]."""
    features = tf.cast(features, tf.float32)
    count = tf.shape(classes)[1]
    # Image i's features repeated once per class asked of it: one backward pass gives every
    # (image, class) gradient, since the head never mixes the images of a batch.
    repeated = tf.repeat(features, count, axis=0)
    with tf.GradientTape() as tape:
        tape.watch(repeated)
        scores = tf.gather(logits(repeated, head), tf.reshape(classes, [-1]), batch_dims=1)
        total = tf.reduce_sum(scores)
    gradients = tape.gradient(total, repeated)
    alpha = tf.reduce_mean(gradients, axis=[1, 2], keepdims=True)
    maps = tf.nn.relu(tf.reduce_sum(alpha * repeated, axis=-1))
    shape = tf.concat([tf.shape(classes), tf.shape(maps)[1:]], axis=0)
    return tf.reshape(maps, shape)


def explain_function(
    model: keras.Model, forward: Forward, temperature: Temperature = 1.0
) -> Callable[[tf.Tensor, tf.Tensor], dict[str, tf.Tensor]]:
    """pixels [batch, h, w, 3] (raw 0–255), classes int32 [batch, n] → probabilities
    [batch, K] (as `serve` gives them, temperature applied), maps [batch, n, fh, fw],
    heatmaps [batch, n, h, w] (the maps resized, see HEATMAP_RESIZE) and method [batch].
    `forward` is a Tap of `model` (`service.ml.unknowns`), or the function tracing it."""
    _backbone, head = split_at_backbone(model)
    method = explanation_method(head)
    compute_maps = class_activation_maps if method == "cam" else grad_cam_maps

    def explain(pixels: tf.Tensor, classes: tf.Tensor) -> dict[str, tf.Tensor]:
        # One pass gives both: the backbone's last feature map and the probabilities.
        maps_by_depth, probabilities = forward(pixels)
        maps = compute_maps(maps_by_depth[-1], head, classes)
        batch_and_n = tf.shape(classes)
        low = tf.shape(maps)[2:]
        stacked = tf.reshape(maps, tf.concat([[-1], low, [1]], axis=0))
        resized = tf.image.resize(stacked, tf.shape(pixels)[1:3], method=HEATMAP_RESIZE)
        heatmaps = tf.reshape(resized, tf.concat([batch_and_n, tf.shape(pixels)[1:3]], axis=0))
        return {
            "probabilities": scale_tensor(probabilities, temperature),
            "heatmaps": heatmaps,
            "maps": maps,
            "method": tf.fill(batch_and_n[:1], method),
        }

    return explain


def input_specs(model: keras.Model) -> tuple[keras.InputSpec, keras.InputSpec]:
    """`serve`'s input (what `model.export()` derives: the Input's shape, dtype and name)
    and `explain`'s class indices."""
    pixels = model.inputs[0]
    shape = (None, *tuple(pixels.shape[1:]))
    return (
        keras.InputSpec(shape=shape, dtype="float32", name=pixels.name),
        keras.InputSpec(shape=(None, None), dtype="int32", name="classes"),
    )


def serve_function(forward: Forward, temperature: Temperature) -> Any:
    """What `serve` runs: the model in inference mode (`forward`, a Tap of it or the function
    tracing it), its probabilities scaled by the temperature (T == 1 adds nothing).

    Inference mode, not the bare `model.__call__` that `model.export()` registers: Keras 3's
    random augmentation layers default to training=True when a call does not say, so a model
    trained with `augment` would answer a different random flip or rotation of the image each
    time (the exports' parity check found it). The Tap leaves them out."""

    def serve(pixels: tf.Tensor) -> tf.Tensor:
        return scale_tensor(forward(pixels)[1], temperature)

    return serve
