"""Measuring a dataset against a backbone for the advice (run by the worker): the frozen
backbone's pooled features of a stratified sample, the same features with the architecture's
random weights, and a k-fold linear probe on each (service/ml/labels.py).

The features are those a training job's frozen stage computes (the same network, pooled by
global average), so a job with this backbone and an average-pooling head reuses them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import keras
import numpy as np

from service.ml.build import build_network
from service.ml.data import LabelledImages, TrainingObserver, TrainingStopped
from service.ml.features import FeatureExtractor, FeatureStore, cached_or_extracted, feature_key
from service.ml.labels import Probe, chance_score, class_counts, fold_count, probe
from service.ml.pipeline import pixel_dataset
from service.training.spec import BackboneSpec, JobSpec

BATCH_SIZE = 32
POOLING = "avg"


class TooFewImages(ValueError):
    """A class has fewer than two images in the sample: no k-fold probe can score it."""


@dataclass(frozen=True)
class ProbeSettings:
    """What a measurement is asked for: the backbone, the probe's k, and the seed of the
    folds and of the random weights."""

    backbone: BackboneSpec
    folds: int
    seed: int


@dataclass
class Measurement:
    labels: np.ndarray  # the sample's labels
    pretrained: Probe
    random: Probe
    chance: float  # in the probes' metric
    features: np.ndarray  # the pretrained features of the sample
    backbone_layers: int
    key: str | None  # the pretrained features' cache key (None: random weights)
    reused: bool  # whether they came from the feature store
    seconds: dict[str, float] = field(default_factory=dict)


def _extraction_spec(settings: ProbeSettings, pretrained: bool) -> JobSpec:
    backbone = settings.backbone.model_dump()
    if not pretrained:
        backbone["weights"] = None
    return JobSpec.model_validate(
        {
            "dataset_id": "probe",  # a job spec's, never read: the network is all it builds
            "backbone": backbone,
            "head": {"pooling": POOLING, "dropout": 0.0},
            "training": {"seed": settings.seed},
        }
    )


@dataclass
class _Extraction:
    """The two passes over one sample's pixels (pretrained, then random weights), each
    reporting its batches to the observer and stopping when it asks."""

    settings: ProbeSettings
    sample: LabelledImages
    observer: TrainingObserver
    passes: int
    backbone_layers: int = 0

    def __post_init__(self) -> None:
        # One pixel dataset for both passes: decoded once, then read from its in-memory cache.
        self.pixels = pixel_dataset(
            self.sample.images,
            (),
            size=self.settings.backbone.input_size or 0,
            batch_size=BATCH_SIZE,
            padded=True,
        )
        self.steps = -(-len(self.sample.labels) // BATCH_SIZE)

    def features(self, weights: str | Path | None, phase: int) -> np.ndarray:
        """The pooled features of the sample's images with these backbone weights."""
        keras.backend.clear_session()
        keras.utils.set_random_seed(self.settings.seed)
        spec = _extraction_spec(self.settings, weights is not None)
        network = build_network(spec, len(self.sample.classes), weights)
        self.backbone_layers = len(network.backbone.layers)
        count = len(self.sample.images)
        return FeatureExtractor(network).extract(self.pixels, count, partial(self._report, phase))

    def _report(self, phase: int, step: int) -> None:
        if self.observer.should_stop():
            raise TrainingStopped()
        self.observer.on_progress(
            {
                "stage": phase,
                "stages": self.passes,
                "epoch": 1,
                "epochs": 1,
                "step": step,
                "steps": self.steps,
            }
        )


def measure(
    settings: ProbeSettings,
    sample: LabelledImages,
    observer: TrainingObserver,
    *,
    backbone_weights: str | Path | None,
    store: FeatureStore | None,
) -> Measurement:
    """Probe the sample's pretrained and random-weights features; TooFewImages when a class
    has fewer than two images in the sample."""
    labels = sample.labels
    folds = fold_count(labels, settings.folds)
    if folds == 0:
        counts = class_counts(labels, len(sample.classes))
        small = [name for i, name in enumerate(sample.classes) if counts[i] < 2]
        raise TooFewImages(f"a k-fold probe needs at least 2 images per class; {small} have fewer")
    pretrained = settings.backbone.pretrained
    extraction = _Extraction(settings, sample, observer, passes=2 if pretrained else 1)
    clock = time.perf_counter()
    key = feature_key(settings.backbone, POOLING)
    features, reused = cached_or_extracted(
        store, key, sample.ids, lambda: extraction.features(backbone_weights, 1)
    )
    # Random weights of the same architecture: what the architecture alone gives a probe.
    random_features = extraction.features(None, 2) if pretrained else features
    seconds = {"features": time.perf_counter() - clock}
    clock = time.perf_counter()
    pretrained_probe = probe(features, labels, folds=folds, seed=settings.seed)
    random_probe = (
        probe(random_features, labels, folds=folds, seed=settings.seed)
        if pretrained
        else pretrained_probe
    )
    seconds["probe"] = time.perf_counter() - clock
    return Measurement(
        labels=labels,
        pretrained=pretrained_probe,
        random=random_probe,
        chance=chance_score(labels),
        features=features,
        backbone_layers=extraction.backbone_layers,
        key=key,
        reused=reused,
        seconds=seconds,
    )
