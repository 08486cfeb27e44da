"""Measuring a dataset against a backbone for the advice (run by the worker): the frozen
backbone's pooled features of a stratified sample, the same features with the architecture's
random weights, and a k-fold linear probe on each (service/ml/labels.py).

The features are those a training job's frozen stage computes (the same network, pooled by
global average), so a job with this backbone and an average-pooling head reuses them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from service.ml.build import build_network
from service.ml.features import FeatureExtractor, FeatureStore, cached_or_extracted, feature_key
from service.ml.labels import Probe, chance_accuracy, fold_count, probe
from service.ml.train import LabelledImages, TrainingObserver, TrainingStopped, pixel_dataset
from service.problems import Invalid
from service.spec import AdviceSpec, JobSpec

BATCH_SIZE = 32
POOLING = "avg"


@dataclass
class Measurement:
    labels: np.ndarray  # the sample's labels
    pretrained: Probe
    random: Probe
    chance: float
    features: np.ndarray  # the pretrained features of the sample
    backbone_layers: int
    key: str | None  # the pretrained features' cache key (None: random weights)
    reused: bool  # whether they came from the feature store
    seconds: dict[str, float] = field(default_factory=dict)


def _extraction_spec(spec: AdviceSpec, pretrained: bool) -> JobSpec:
    backbone = spec.backbone.model_dump()
    if not pretrained:
        backbone["weights"] = None
    return JobSpec.model_validate(
        {
            "dataset_id": spec.dataset_id,
            "backbone": backbone,
            "head": {"pooling": POOLING, "dropout": 0.0},
            "training": {"seed": spec.seed},
        }
    )


def _features(
    spec: AdviceSpec,
    pixels: tf.data.Dataset,
    num_classes: int,
    weights: str | Path | None,
    on_batch: Callable[[int], None],
) -> tuple[np.ndarray, int]:
    """The pooled features of the images of `pixels`, and how many layers the backbone has."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(spec.seed)
    network = build_network(_extraction_spec(spec, weights is not None), num_classes, weights)
    return FeatureExtractor(network).extract(pixels, on_batch), len(network.backbone.layers)


def measure(
    spec: AdviceSpec,
    sample: LabelledImages,
    observer: TrainingObserver,
    *,
    backbone_weights: str | Path | None,
    store: FeatureStore | None,
) -> Measurement:
    """Probe the sample's pretrained and random-weights features; Invalid when a class has
    fewer than two images in the sample (no k-fold probe can score it)."""
    labels = sample.labels
    folds = fold_count(labels, spec.folds)
    if folds == 0:
        small = [name for i, name in enumerate(sample.classes) if np.sum(labels == i) < 2]
        raise Invalid(f"a k-fold probe needs at least 2 images per class; {small} have fewer")
    passes = 2 if spec.backbone.pretrained else 1
    steps = -(-len(labels) // BATCH_SIZE)

    def progress(phase: int) -> Callable[[int], None]:
        def report(step: int) -> None:
            if observer.should_stop():
                raise TrainingStopped()
            observer.on_progress(
                {
                    "stage": phase,
                    "stages": passes,
                    "epoch": 1,
                    "epochs": 1,
                    "step": step,
                    "steps": steps,
                }
            )

        return report

    # One pixel dataset for both passes: decoded once, then read from its in-memory cache.
    pixels = pixel_dataset(
        sample.images, (), size=spec.backbone.input_size or 0, batch_size=BATCH_SIZE
    )

    def extract(weights: str | Path | None, phase: int) -> np.ndarray:
        features, layers[0] = _features(spec, pixels, len(sample.classes), weights, progress(phase))
        return features

    layers = [0]
    clock = time.perf_counter()
    key = feature_key(spec.backbone, POOLING)
    features, reused = cached_or_extracted(
        store, key, sample.ids, lambda: extract(backbone_weights, 1)
    )
    # Random weights of the same architecture: what the architecture alone gives a probe.
    random_features = extract(None, 2) if spec.backbone.pretrained else features
    seconds = {"features": time.perf_counter() - clock}
    clock = time.perf_counter()
    pretrained_probe = probe(features, labels, folds=folds, seed=spec.seed)
    random_probe = (
        probe(random_features, labels, folds=folds, seed=spec.seed)
        if spec.backbone.pretrained
        else pretrained_probe
    )
    seconds["probe"] = time.perf_counter() - clock
    return Measurement(
        labels=labels,
        pretrained=pretrained_probe,
        random=random_probe,
        chance=chance_accuracy(labels),
        features=features,
        backbone_layers=layers[0],
        key=key,
        reused=reused,
        seconds=seconds,
    )
