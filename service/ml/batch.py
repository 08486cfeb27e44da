"""Classifying many images with one loaded model: decoded and resized exactly as `/predict`
does (`to_pixels`), in batches, the next batch decoded while the model runs the current one.

An image that cannot be read or decoded is answered with its reason and the rest go on:
in a batch of thousands, one bad file must not cost the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np

from service.ml.images import UndecodableImage, to_pixels
from service.ml.model_cache import LoadedModel


@dataclass(frozen=True)
class Item:
    """One image to classify: what its result row says of it (file, image id, label), its
    bytes, or why there are none."""

    about: dict[str, Any]
    data: bytes | None
    reason: str = ""


@dataclass(frozen=True)
class Answer:
    item: Item
    probabilities: np.ndarray | None = None  # [classes], as `serve` gives them
    # Explained: the class indices explained, best first, and their low-resolution maps.
    explained: tuple[np.ndarray, np.ndarray] | None = None
    method: str = ""
    error: str = ""
    ood_score: float | None = None  # where the model has an unknown-input score


@dataclass
class _Decoded:
    items: list[Item]
    pixels: np.ndarray  # the items that decoded, in order
    decoded: list[int] = field(default_factory=list)  # their positions in `items`
    errors: dict[int, str] = field(default_factory=dict)  # position → why it did not


def _decode(items: list[Item], size: int) -> _Decoded:
    pixels = np.empty((len(items), size, size, 3), dtype=np.uint8)
    batch = _Decoded(items, pixels)
    for position, item in enumerate(items):
        if item.data is None:
            batch.errors[position] = item.reason
            continue
        try:
            pixels[len(batch.decoded)] = to_pixels(item.data, size)
        except UndecodableImage as error:
            batch.errors[position] = str(error)
            continue
        batch.decoded.append(position)
    batch.pixels = pixels[: len(batch.decoded)]
    return batch


def _chunks(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def classify(
    model: LoadedModel,
    items: Iterable[Item],
    *,
    batch_size: int,
    explain_top_k: int = 0,
    should_stop: Callable[[], bool] = lambda: False,
) -> Iterator[list[Answer]]:
    """Each batch's answers, in the items' order. With `explain_top_k`, each image's best
    classes carry their class activation maps (the model's `explain` signature)."""
    chunks = _chunks(items, batch_size)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-decode") as decoder:
        upcoming = decoder.submit(_decode, next(chunks, []), model.input_size)
        while True:
            batch = upcoming.result()
            if not batch.items:
                return
            upcoming = decoder.submit(_decode, next(chunks, []), model.input_size)
            if should_stop():
                return
            yield _answers(model, batch, explain_top_k)


def _answers(model: LoadedModel, batch: _Decoded, explain_top_k: int) -> list[Answer]:
    answers = [Answer(item, error=batch.errors.get(n, "")) for n, item in enumerate(batch.items)]
    if not batch.decoded:
        return answers
    if explain_top_k:
        explanation = model.explanation(batch.pixels, explain_top_k)
        for row, position in enumerate(batch.decoded):
            answers[position] = Answer(
                batch.items[position],
                explanation.probabilities[row],
                (explanation.classes[row], explanation.maps[row]),
                explanation.method,
                ood_score=_row(explanation.ood_scores, row),
            )
        return answers
    probabilities, ood_scores = model.split(model.scores(batch.pixels))
    for row, position in enumerate(batch.decoded):
        answers[position] = Answer(
            batch.items[position], probabilities[row], ood_score=_row(ood_scores, row)
        )
    return answers


def _row(scores: np.ndarray | None, row: int) -> float | None:
    return None if scores is None else float(scores[row])
