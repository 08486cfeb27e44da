"""The backbone registry: every `keras.applications` family, its own preprocessing and sizes.

Importing this module does not import TensorFlow: the API lists backbones without it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Backbone:
    name: str
    module: str  # the keras.applications submodule holding its preprocess_input
    default_input_size: int
    min_input_size: int = 32

    @property
    def constructor(self) -> Callable[..., Any]:
        # Not every submodule exports its constructors (mobilenet_v3 does not).
        return getattr(importlib.import_module("keras.applications"), self.name)

    @property
    def preprocess_input(self) -> Callable[[Any], Any]:
        return importlib.import_module(f"keras.applications.{self.module}").preprocess_input


def _family(module: str, sizes: dict[str, int], min_input_size: int = 32) -> list[Backbone]:
    return [Backbone(name, module, size, min_input_size) for name, size in sizes.items()]


_ALL: list[Backbone] = [
    Backbone("Xception", "xception", 299, 71),
    *_family("vgg16", {"VGG16": 224}),
    *_family("vgg19", {"VGG19": 224}),
    *_family("resnet", {"ResNet50": 224, "ResNet101": 224, "ResNet152": 224}),
    *_family("resnet_v2", {"ResNet50V2": 224, "ResNet101V2": 224, "ResNet152V2": 224}),
    Backbone("InceptionV3", "inception_v3", 299, 75),
    Backbone("InceptionResNetV2", "inception_resnet_v2", 299, 75),
    *_family("mobilenet", {"MobileNet": 224}),
    *_family("mobilenet_v2", {"MobileNetV2": 224}),
    *_family("mobilenet_v3", {"MobileNetV3Small": 224, "MobileNetV3Large": 224}),
    *_family("densenet", {"DenseNet121": 224, "DenseNet169": 224, "DenseNet201": 224}),
    *_family("nasnet", {"NASNetMobile": 224, "NASNetLarge": 331}),
    *_family(
        "efficientnet",
        {
            "EfficientNetB0": 224,
            "EfficientNetB1": 240,
            "EfficientNetB2": 260,
            "EfficientNetB3": 300,
            "EfficientNetB4": 380,
            "EfficientNetB5": 456,
            "EfficientNetB6": 528,
            "EfficientNetB7": 600,
        },
    ),
    *_family(
        "efficientnet_v2",
        {
            "EfficientNetV2B0": 224,
            "EfficientNetV2B1": 240,
            "EfficientNetV2B2": 260,
            "EfficientNetV2B3": 300,
            "EfficientNetV2S": 384,
            "EfficientNetV2M": 480,
            "EfficientNetV2L": 480,
        },
    ),
    *_family(
        "convnext",
        {
            "ConvNeXtTiny": 224,
            "ConvNeXtSmall": 224,
            "ConvNeXtBase": 224,
            "ConvNeXtLarge": 224,
            "ConvNeXtXLarge": 224,
        },
    ),
]

BACKBONES: dict[str, Backbone] = {backbone.name: backbone for backbone in _ALL}


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; choose one of GET /backbones") from None
