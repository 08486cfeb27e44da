"""BatchNormalization statistics after fine-tuning: see `recompute_batchnorm_statistics`."""

from __future__ import annotations

import keras
import tensorflow as tf

# Enough batches for stable BatchNormalization statistics; more only costs time.
BN_STATISTICS_MAX_BATCHES = 200


def trainable_batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    return [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]


def recompute_batchnorm_statistics(model: keras.Model, dataset: tf.data.Dataset) -> int:
    """Set the moving statistics of BN layers that trained to their mean over `dataset`.

    Keras's backbones use BN momentum up to 0.999: after a short run the moving statistics
    are still near their initial values and the model at inference answers one class for
    everything. Running the data through in training mode with momentum (k-1)/k at batch k
    makes each moving statistic the plain average of the batch statistics.
    Returns how many layers were updated.
    """
    layers = trainable_batchnorm_layers(model)
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    try:
        for batch_number, batch in enumerate(dataset.take(BN_STATISTICS_MAX_BATCHES), start=1):
            for layer in layers:
                layer.momentum = (batch_number - 1) / batch_number
            model(batch[0], training=True)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return len(layers)
