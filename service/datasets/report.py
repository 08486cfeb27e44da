"""The dataset health report: what in a dataset will hurt training or flatter its score.

Read from facts measured once per image at upload (`ml.images.image_facts`): no image is
decoded for a report, except those stored before the facts existed, which the first report
measures and stores. Numpy only, no TensorFlow: it runs in the API process.

- Duplicates: exact (same SHA-256 of the bytes) and near (perceptual hashes of the RGB
  pixels within NEAR_DUPLICATE_BITS of 64), found in datasets/similar.py.
- Leakage: the pairs of copies that straddle the training/validation split the worker would
  make for a seed and validation_split (`ml.split.stratified_split` on the labels in image id
  order, classes numbered in the dataset's order — as `training.task.load_dataset` does).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict
from itertools import combinations
from typing import Any

import numpy as np
from sqlalchemy import Row, select, update
from sqlalchemy.orm import Session

from service.datasets import versions
from service.datasets.label_files import label_matrix, split_labels
from service.datasets.schemas import (
    Balance,
    ClassCount,
    DatasetReport,
    ImageFinding,
    ImageShape,
    LabelPair,
    LabelReview,
    LabelSets,
    Leakage,
    LeakedPair,
    Mislabelled,
    ReportImage,
    ReportThresholds,
    SmallClasses,
    SmallImages,
)
from service.datasets.service import get_dataset
from service.datasets.similar import (
    NEAR_DUPLICATE_BITS,
    Kind,
    Similar,
    copy_groups,
    find_similar,
    image_ref,
    popcount,
)
from service.ml.images import UndecodableImage, facts_of
from service.ml.split import stratified_split
from service.storage.tables import Dataset, DatasetImage

# Below this many images a class is too small to learn from and validate on at once.
MIN_CLASS_IMAGES = 20
# Long side ÷ short side past which squashing the image to a square distorts it badly.
MAX_ASPECT_RATIO = 2.5
# Largest class ÷ smallest past which the model favours the large ones (Azure Custom
# Vision's guidance: keep classes within 2:1).
MAX_BALANCE_RATIO = 2.0
# A report lists this many of the label pairs images hold together, the most frequent: a
# dataset of a thousand labels can hold half a million pairs.
MAX_LABEL_PAIRS = 100
# Pillow modes without colour: the model sees them as three equal channels.
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
# Old images measured per query: bounds the bytes in memory while measuring.
MEASURE_BATCH = 64
HOW_TO_REVIEW = (
    "No label review yet: run POST /datasets/{id}/advice, or train a job whose first stage "
    "freezes the whole backbone; either stores one."
)
# The review's probe answers one class per image: a label set has no one class to suggest.
NO_REVIEW_OF_SETS = "No label review: it is for single-label datasets, one class per image"
BALANCE_NOTE = (
    'training.class_weight: "balanced" weighs each class by the inverse of its count, '
    "which compensates."
)
LABEL_BALANCE_NOTE = (
    'training.class_weight: "balanced" weighs each label\'s images by the images without it '
    "÷ those with it, which compensates."
)


def dataset_report(
    session: Session,
    dataset_id: str,
    *,
    seed: int,
    validation_split: float,
    input_size: int | None,
    version: int | None = None,
) -> DatasetReport:
    """The health report of the dataset's version `version` (its latest when None);
    NotFound for an unknown dataset or version. Writes (flushes) the facts of images stored
    before they were measured at upload, so the session must be allowed to write."""
    dataset = get_dataset(session, dataset_id)
    reported = versions.get_version(session, dataset, version)
    measured = measure_missing(session, dataset.id)
    rows = _rows(session, reported.id)
    classes = [ClassCount(**entry) for entry in reported.classes]
    similar = find_similar(rows)
    review = session.scalar(select(Dataset.label_review).where(Dataset.id == dataset.id))
    report = DatasetReport(
        dataset_id=dataset.id,
        version=reported.number,
        images=len(rows),
        classes=classes,
        measured=measured,
        thresholds=ReportThresholds(
            min_class_images=MIN_CLASS_IMAGES,
            near_duplicate_bits=NEAR_DUPLICATE_BITS,
            max_aspect_ratio=MAX_ASPECT_RATIO,
            max_balance_ratio=MAX_BALANCE_RATIO,
        ),
        balance=_balance(classes, dataset.multi_label),
        small_classes=SmallClasses(
            floor=MIN_CLASS_IMAGES, classes=[c for c in classes if c.count < MIN_CLASS_IMAGES]
        ),
        duplicates=similar.duplicates(),
        leakage=_leakage(
            similar, [c.name for c in classes], seed, validation_split, dataset.multi_label
        ),
        small_images=_small_images(rows, input_size),
        extreme_aspect=_finding(rows, _extreme_aspect),
        grayscale=_finding(rows, lambda row: row.mode in GRAYSCALE_MODES),
        cmyk=_finding(rows, lambda row: row.mode == "CMYK"),
        mislabelled=(
            Mislabelled(review=None, note=NO_REVIEW_OF_SETS)
            if dataset.multi_label
            else _mislabelled(review, dataset.id)
        ),
        warnings=[],
        labels=_label_sets(rows) if dataset.multi_label else None,
    )
    report.warnings = warnings(report)
    return report


# -- facts ------------------------------------------------------------------------------


def measure_missing(session: Session, dataset_id: str) -> int:
    """Measure and store the facts of the dataset's images stored without them (before
    revision 0005), MEASURE_BATCH images' bytes at a time; how many it measured. Only
    flushes: the caller's transaction keeps them."""
    measured = 0
    after = 0
    while True:
        batch = session.execute(
            select(DatasetImage.id, DatasetImage.data)
            .where(
                DatasetImage.dataset_id == dataset_id,
                DatasetImage.sha256.is_(None),
                DatasetImage.id > after,
            )
            .order_by(DatasetImage.id)
            .limit(MEASURE_BATCH)
        ).all()
        if not batch:
            return measured
        session.execute(update(DatasetImage), [_measure(row.id, row.data) for row in batch])
        measured += len(batch)
        after = batch[-1].id


def _measure(image_id: int, data: bytes) -> dict[str, Any]:
    """The row's facts as an UPDATE by primary key. An image that no longer decodes (a limit
    tightened since upload) keeps only its SHA-256: it is measured, and still found as an
    exact copy; the checks that need pixels pass it by."""
    try:
        facts = facts_of(data)  # as at upload
    except UndecodableImage:
        blank = dict.fromkeys(("phash", "width", "height", "mode"))
        return {"id": image_id, "sha256": hashlib.sha256(data).hexdigest(), **blank}
    return {"id": image_id, **asdict(facts)}


def _rows(session: Session, version_id: int) -> Sequence[Row[Any]]:
    """Every image's facts, never its bytes, in id order: the order the worker loads them in."""
    facts = (DatasetImage.sha256, DatasetImage.phash, DatasetImage.width, DatasetImage.height)
    query = versions.version_images(version_id, *facts, DatasetImage.mode)
    return session.execute(query).all()


def _shape(row: Row[Any]) -> ImageShape:
    return ImageShape(
        id=row.id,
        filename=row.filename,
        label=row.label,
        width=row.width,
        height=row.height,
        mode=row.mode,
    )


# -- leakage ------------------------------------------------------------------------------


def split_of(
    rows: Sequence[Row[Any]], classes: list[str], seed: int, fraction: float, multi_label: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (in id order) of the training and validation images: the worker's split,
    of the labels as the training job's `load_dataset` reads them."""
    if not rows:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    labels = label_matrix([row.label for row in rows], classes, multi_label)
    return stratified_split(labels, fraction, seed)


def _leakage(
    similar: Similar, classes: list[str], seed: int, fraction: float, multi_label: bool
) -> Leakage:
    train, validation = split_of(similar.rows, classes, seed, fraction, multi_label)
    in_training = np.zeros(len(similar.rows), dtype=bool)
    in_training[train] = True
    pairs = []
    for members in copy_groups(similar.component):
        trained = members[in_training[members]]
        for image in members[~in_training[members]] if len(trained) else ():
            pair = _closest(similar, int(image), trained)
            if pair is not None:
                pairs.append(pair)
    pairs.sort(key=lambda pair: pair.validation.id)
    return Leakage(
        seed=seed,
        validation_split=fraction,
        training_images=len(train),
        validation_images=len(validation),
        count=len(pairs),
        pairs=pairs,
    )


def _closest(similar: Similar, image: int, trained: np.ndarray) -> LeakedPair | None:
    """The validation image's closest copy among the training images of its group: the same
    bytes first, else the nearest perceptual hash (a chained group may hold none close
    enough: then None)."""
    rows, sha, phash = similar.rows, similar.sha, similar.phash
    same = trained[sha[trained] == sha[image]]
    if len(same):
        return _pair("exact", 0, rows[int(same[0])], rows[image])
    measured = trained[phash[trained] >= 0]
    if phash[image] < 0 or not len(measured):
        return None
    distance = popcount(similar.hashes[phash[measured]] ^ similar.hashes[phash[image]])
    best = int(np.argmin(distance))  # the first of the nearest: the lowest id
    if distance[best] > NEAR_DUPLICATE_BITS:
        return None
    return _pair("near", int(distance[best]), rows[int(measured[best])], rows[image])


def _pair(kind: Kind, distance: int, training: Row[Any], validation: Row[Any]) -> LeakedPair:
    return LeakedPair(
        kind=kind,
        scope="within_class" if training.label == validation.label else "across_classes",
        distance=distance,
        training=image_ref(training),
        validation=image_ref(validation),
    )


# -- classes and shapes ---------------------------------------------------------------------


def _label_sets(rows: Sequence[Row[Any]]) -> LabelSets:
    """A multi-label dataset's images with no label, and how often each pair of labels is
    held by one image (most often first)."""
    pairs: dict[tuple[str, str], int] = {}
    empty = 0
    for row in rows:
        held = split_labels(row.label)
        empty += not held
        for pair in combinations(held, 2):  # sorted: a manifest's labels are
            pairs[pair] = pairs.get(pair, 0) + 1
    ranked = sorted(pairs.items(), key=lambda item: (-item[1], item[0]))[:MAX_LABEL_PAIRS]
    return LabelSets(
        no_label_images=empty,
        pairs=len(pairs),
        cooccurrence=[LabelPair(labels=list(pair), images=count) for pair, count in ranked],
    )


def _balance(classes: list[ClassCount], multi_label: bool) -> Balance:
    largest = max(classes, key=lambda entry: entry.count)
    smallest = min(classes, key=lambda entry: entry.count)
    ratio = largest.count / max(smallest.count, 1)
    imbalanced = ratio > MAX_BALANCE_RATIO
    return Balance(
        ratio=round(ratio, 2),
        largest=largest,
        smallest=smallest,
        imbalanced=imbalanced,
        note=(LABEL_BALANCE_NOTE if multi_label else BALANCE_NOTE) if imbalanced else None,
    )


def _finding(rows: Sequence[Row[Any]], test: Callable[[Row[Any]], bool]) -> ImageFinding:
    """The images passing `test`, among those with pixels measured (not undecodable ones)."""
    images = [_shape(row) for row in rows if row.mode is not None and test(row)]
    return ImageFinding(count=len(images), images=images)


def _extreme_aspect(row: Row[Any]) -> bool:
    return max(row.width, row.height) > MAX_ASPECT_RATIO * min(row.width, row.height)


def _small_images(rows: Sequence[Row[Any]], input_size: int | None) -> SmallImages:
    if input_size is None:
        return SmallImages(input_size=None, count=0, images=[])
    found = _finding(rows, lambda row: min(row.width, row.height) < input_size)
    return SmallImages(input_size=input_size, count=found.count, images=found.images)


def _mislabelled(stored: dict[str, Any] | None, dataset_id: str) -> Mislabelled:
    if stored is None:
        return Mislabelled(review=None, note=HOW_TO_REVIEW.replace("{id}", dataset_id))
    review = LabelReview.model_validate(stored)
    note = (
        f"{_count(len(review.issues), 'image')} of {review.images_checked} checked "
        f"{_verb(len(review.issues), 'looks', 'look')} mislabelled "
        f"(probe accuracy {review.probe_accuracy:.0%}, {review.features} features, "
        f"job {review.job_id}, {review.created_at:%Y-%m-%d})"
    )
    return Mislabelled(review=review, note=note)


# -- warnings -------------------------------------------------------------------------------


def _count(number: int, noun: str, plural: str | None = None) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {plural or noun + 's'}"


def _names(images: Sequence[ReportImage], most: int = 3) -> str:
    """A few of the files, so that a sentence names them; the report lists them all."""
    named = ", ".join(image.filename for image in images[:most])
    return named + (f" and {len(images) - most} more" if len(images) > most else "")


def warnings(report: DatasetReport) -> list[str]:
    """One plain sentence per problem the report found, the worst first."""
    found = [*_leakage_warnings(report), *_class_warnings(report), *_duplicate_warnings(report)]
    found.extend(_shape_warnings(report))
    if report.mislabelled.review is not None and report.mislabelled.review.issues:
        found.append(report.mislabelled.note + ", each listed with the label it more likely has")
    return found


def _leakage_warnings(report: DatasetReport) -> list[str]:
    leakage = report.leakage
    if not leakage.count:
        return []
    first = leakage.pairs[0]
    return [
        f"{_count(leakage.count, 'image')} {_verb(leakage.count, 'appears', 'appear')} in "
        f"both training and validation at seed {leakage.seed} (validation_split "
        f"{leakage.validation_split:g}): the validation score will be inflated (e.g. "
        f"{first.validation.filename} in validation is a copy of {first.training.filename} "
        "in training)"
    ]


def _class_warnings(report: DatasetReport) -> list[str]:
    found = []
    balance = report.balance
    # A multi-label dataset's classes are its labels, and are called so.
    one, many = ("label", "labels") if report.labels is not None else ("class", "classes")
    if balance.imbalanced:
        found.append(
            f"{many.capitalize()} are imbalanced {balance.ratio:g}:1 ({balance.largest.name} "
            f"{balance.largest.count}, {balance.smallest.name} {balance.smallest.count}), "
            f"past {MAX_BALANCE_RATIO:g}:1: the model will favour the larger {many}; "
            f"{balance.note}"
        )
    small = report.small_classes.classes
    if small:
        counts = ", ".join(f"{entry.name} ({entry.count})" for entry in small)
        found.append(
            f"{_count(len(small), one, many)} {_verb(len(small), 'has', 'have')} "
            f"fewer than {MIN_CLASS_IMAGES} images, too few to learn and validate on: {counts}"
        )
    return found


def _duplicate_warnings(report: DatasetReport) -> list[str]:
    found = []
    for kind, groups in (("exact", report.duplicates.exact), ("near", report.duplicates.near)):
        if not groups:
            continue
        what = "byte-identical copies" if kind == "exact" else "near-duplicates"
        images = sum(len(group.images) for group in groups)
        sentence = f"{_count(len(groups), 'group')} of {what} ({_count(images, 'image')})"
        across = [group for group in groups if group.scope == "across_classes"]
        if across:
            sentence += f", {len(across)} under different labels (one picture, two labels)"
        example = (across or groups)[0]
        found.append(f"{sentence}: e.g. {_names(example.images)}")
    return found


def _shape_warnings(report: DatasetReport) -> list[str]:
    small = report.small_images
    sentences = (
        (
            small,
            f"smaller than input_size {small.input_size} px on the shorter side and will be "
            "upscaled",
        ),
        (
            report.extreme_aspect,
            f"more than {MAX_ASPECT_RATIO:g} times as long as wide (or as tall), and the "
            "model squashes every image to a square",
        ),
        (report.grayscale, "grayscale: the model sees three equal channels"),
        (report.cmyk, "CMYK: made RGB without a colour profile, so colours may shift"),
    )
    return [
        f"{_count(finding.count, 'image')} {_verb(finding.count, 'is', 'are')} {what}: "
        f"{_names(finding.images)}"
        for finding, what in sentences
        if finding.count
    ]


def _verb(number: int, singular: str, plural: str) -> str:
    return singular if number == 1 else plural
