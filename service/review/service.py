"""A model's review queue: the images most worth a person's label, and marking unknowns.

Candidates are the model's newest captured predictions not yet labelled into its dataset and
the newest images of the dataset's unlabelled pool, MAX_CANDIDATES of each; beside them, the
newest MAX_LABELLED images of the dataset's latest version, which diversity measures distance
from (so an image like one labelled a page ago waits). The served model scores them in
chunks (features, probabilities and ood_score in one pass), so memory stays one chunk of
images whatever their size; its answers are remembered (scores.py). Those past
the model's unknown threshold, and those a person marked unknown, are listed apart; the
others are ranked by service/ml/review.py. The API and the console both call `review_queue`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import String, cast, insert, select
from sqlalchemy.orm import Session

from service.datasets import versions
from service.datasets.service import get_dataset
from service.datasets.spec import ImageRef
from service.ml import review
from service.ml.images import UndecodableImage, to_pixels
from service.ml.model_cache import LoadedModel
from service.models.service import get_model
from service.predictions.serving import Serving, top_scores
from service.problems import Conflict, Invalid
from service.review.schemas import ReviewItem, ReviewQueue
from service.review.scores import SCORES, ItemScore
from service.storage.db import Database
from service.storage.tables import (
    Capture,
    DatasetImage,
    LabelledCapture,
    PoolImage,
    ReviewMark,
    TrainedModel,
    VersionImage,
)

# Unlabelled captures looked at, and as many pool images: the newest. Each costs one pass of
# the model the first time (400 at 224 px: about 6 s on a 2-core CPU), then none
# (service/review/scores.py).
MAX_CANDIDATES = 200
# The labelled images diversity starts from: the newest, those labelled since the model
# among them. Scored once each, as candidates are.
MAX_LABELLED = 200
CHUNK = 32  # images decoded and scored at a time


@dataclass(frozen=True)
class Candidate:
    key: str  # "capture:<id>" or "image:<id>"
    filename: str
    marked: bool = False

    @property
    def ref(self) -> ImageRef:
        ref = ImageRef.from_key(self.key)
        assert ref is not None  # keys are made by ImageRef.key's rule
        return ref


@dataclass(frozen=True)
class Scored:
    candidates: list[Candidate]
    features: np.ndarray
    probabilities: np.ndarray
    ood_scores: np.ndarray | None
    from_backbone: bool


def review_queue(serving: Serving, model_id: str, limit: int) -> ReviewQueue:
    """The model's queue: up to `limit` images to label, and up to `limit` unknowns."""
    with serving.database.session() as session:
        model, dataset_id = reviewed_model(session, model_id)
        dataset = get_dataset(session, dataset_id)
        candidates = _candidates(session, model, limit)
        labelled = _labelled(session, dataset_id)
        since = 0
        if model.dataset_version is not None:
            diff = versions.diff(session, dataset, model.dataset_version, dataset.version, limit=0)
            since = diff.counts["added"]
        latest = dataset.version
    loaded = serving.model(model_id)
    scored = _score(serving.database, loaded, dataset.id, candidates)
    known = _score(serving.database, loaded, dataset.id, labelled)
    items, unknowns = _order(scored, loaded, limit, known.features)
    margin = review.MARGIN if loaded.thresholds is None else review.MULTI_LABEL_MARGIN
    return ReviewQueue(
        model_id=model.id,
        dataset_id=dataset.id,
        dataset_version=latest,
        classes=list(model.classes),
        thresholds=loaded.thresholds,
        method=review.METHOD.format(
            shortlist=review.SHORTLIST, margin=margin, labelled=MAX_LABELLED
        ),
        features="backbone" if scored.from_backbone else "scores",
        candidates={
            "captures": sum(c.key.startswith("capture:") and not c.marked for c in candidates),
            "pool": sum(c.key.startswith("image:") and not c.marked for c in candidates),
        },
        items=[_item(model.id, dataset.id, scored, loaded, i, reason) for i, reason in items],
        unknowns=[_item(model.id, dataset.id, scored, loaded, i, reason) for i, reason in unknowns],
        labelled_since_model=since,
        labelled_compared=len(known.candidates),
    )


def reviewed_model(session: Session, model_id: str) -> tuple[TrainedModel, str]:
    """The model and its dataset's id, where its review's labels go; Conflict when the
    dataset was deleted."""
    model = get_model(session, model_id)
    if model.dataset_id is None:
        raise Conflict(
            f"model {model_id}'s dataset was deleted: its review has nowhere to put labels"
        )
    return model, model.dataset_id


def _candidates(session: Session, model: TrainedModel, limit: int) -> list[Candidate]:
    """The newest unlabelled, unmarked captures and pool images; then the newest marked."""
    marks = select(ReviewMark.item).where(ReviewMark.model_id == model.id)
    labelled = select(LabelledCapture.capture_id).where(
        LabelledCapture.dataset_id == model.dataset_id
    )
    captures = session.execute(
        select(Capture.id, Capture.filename)
        .where(Capture.model_id == model.id, Capture.id.not_in(labelled))
        .where(("capture:" + Capture.id).not_in(marks))
        .order_by(Capture.created_at.desc(), Capture.id.desc())
        .limit(MAX_CANDIDATES)
    )
    found = [Candidate(f"capture:{capture_id}", name) for capture_id, name in captures]
    pool = session.execute(
        select(DatasetImage.id, DatasetImage.filename)
        .join(PoolImage, PoolImage.image_id == DatasetImage.id)
        .where(PoolImage.dataset_id == model.dataset_id)
        .where(("image:" + cast(DatasetImage.id, String)).not_in(marks))
        .order_by(DatasetImage.id.desc())
        .limit(MAX_CANDIDATES)
    )
    found += [Candidate(f"image:{image_id}", name) for image_id, name in pool]
    found += _marked(session, model, limit)
    return found


def _labelled(session: Session, dataset_id: str) -> list[Candidate]:
    """The newest MAX_LABELLED images of the dataset's latest version."""
    latest = versions.version_id(session, dataset_id, None)
    newest = versions.version_images(latest).order_by(None).order_by(VersionImage.image_id.desc())
    rows = session.execute(newest.limit(MAX_LABELLED))
    return [Candidate(f"image:{image_id}", name) for image_id, _, name in rows]


def _marked(session: Session, model: TrainedModel, limit: int) -> list[Candidate]:
    """The newest `limit` images marked unknown that are still there to label."""
    keys = session.scalars(
        select(ReviewMark.item)
        .where(ReviewMark.model_id == model.id)
        .order_by(ReviewMark.created_at.desc())
        .limit(limit)
    ).all()
    names = _filenames(session, model, keys)
    return [Candidate(key, names[key], marked=True) for key in keys if key in names]


def _filenames(session: Session, model: TrainedModel, keys: list[str]) -> dict[str, str]:
    """Of those `keys`, the ones still unlabelled: a capture of the model, a pool image."""
    capture_ids, image_ids = _ids(keys)
    labelled = select(LabelledCapture.capture_id).where(
        LabelledCapture.dataset_id == model.dataset_id
    )
    rows = session.execute(
        select(Capture.id, Capture.filename).where(
            Capture.model_id == model.id, Capture.id.in_(capture_ids), Capture.id.not_in(labelled)
        )
    )
    names = {f"capture:{capture_id}": name for capture_id, name in rows}
    rows = session.execute(
        select(DatasetImage.id, DatasetImage.filename)
        .join(PoolImage, PoolImage.image_id == DatasetImage.id)
        .where(PoolImage.dataset_id == model.dataset_id, DatasetImage.id.in_(image_ids))
    )
    names.update((f"image:{image_id}", name) for image_id, name in rows)
    return names


def _score(
    database: Database, loaded: LoadedModel, dataset_id: str, candidates: list[Candidate]
) -> Scored:
    """Every candidate that still decodes, as the model answers it: remembered answers
    (service/review/scores.py), the others through the model a chunk at a time."""
    scores: dict[str, ItemScore] = {}
    missing = []
    for candidate in candidates:
        remembered = SCORES.get(loaded.model_id, candidate.key)
        if remembered is None:
            missing.append(candidate)
        else:
            scores[candidate.key] = remembered
    for start in range(0, len(missing), CHUNK):
        scores |= _fresh_scores(database, loaded, dataset_id, missing[start : start + CHUNK])
    kept = [candidate for candidate in candidates if candidate.key in scores]
    rows = [scores[candidate.key] for candidate in kept]
    from_backbone = loaded.features is not None
    if not rows:
        empty = np.zeros((0, len(loaded.classes)))
        return Scored([], empty, empty, None, from_backbone)
    ood = [row.ood_score for row in rows]
    return Scored(
        kept,
        np.stack([row.features for row in rows]).astype(np.float32),
        np.stack([row.probabilities for row in rows]),
        None if None in ood else np.array(ood),
        from_backbone,
    )


def _fresh_scores(
    database: Database, loaded: LoadedModel, dataset_id: str, chunk: list[Candidate]
) -> dict[str, ItemScore]:
    with database.session() as session:
        data = _bytes(session, dataset_id, chunk)
    pixels, decoded = [], []
    for candidate in chunk:
        try:
            pixels.append(to_pixels(data[candidate.key], loaded.input_size))
        except (KeyError, UndecodableImage):
            continue  # labelled, expired or deleted since it was listed; or undecodable
        decoded.append(candidate)
    if not decoded:
        return {}
    answer = loaded.features_and_scores(np.stack(pixels))
    fresh = {}
    for number, candidate in enumerate(decoded):
        ood = None if answer.ood_scores is None else float(answer.ood_scores[number])
        score = ItemScore(
            answer.features[number].astype(np.float16), answer.probabilities[number], ood
        )
        SCORES.put(loaded.model_id, candidate.key, score)
        fresh[candidate.key] = score
    return fresh


def _ids(keys: list[str]) -> tuple[list[str], list[int]]:
    """The capture ids and the pool image ids that `keys` name."""
    refs = [ref for ref in map(ImageRef.from_key, keys) if ref is not None]
    captures = [ref.capture_id for ref in refs if ref.capture_id is not None]
    return captures, [ref.image_id for ref in refs if ref.image_id is not None]


def _bytes(session: Session, dataset_id: str, chunk: list[Candidate]) -> dict[str, bytes]:
    capture_ids, image_ids = _ids([candidate.key for candidate in chunk])
    rows = session.execute(select(Capture.id, Capture.image).where(Capture.id.in_(capture_ids)))
    found = {f"capture:{capture_id}": image for capture_id, image in rows}
    rows = session.execute(
        select(DatasetImage.id, DatasetImage.data).where(
            DatasetImage.dataset_id == dataset_id, DatasetImage.id.in_(image_ids)
        )
    )
    found.update((f"image:{image_id}", data) for image_id, data in rows)
    return found


def _order(
    scored: Scored, loaded: LoadedModel, limit: int, labelled: np.ndarray
) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(index, reason) of the queue's images in order, and of the unknowns, strangest first;
    `labelled`: the features of the labelled images diversity starts from."""
    threshold = loaded.unknowns.threshold() if loaded.unknowns is not None else None
    ood = scored.ood_scores
    unknown: list[tuple[int, str]] = []
    rest: list[int] = []
    for index, candidate in enumerate(scored.candidates):
        if candidate.marked:
            unknown.append((index, "marked unknown by a person"))
        elif ood is not None and threshold is not None and ood[index] > threshold:
            reason = f"ood_score {ood[index]:.2f} over the model's threshold {threshold:.2f}"
            unknown.append((index, reason))
        else:
            rest.append(index)
    strangeness = ood if ood is not None else np.zeros(len(scored.candidates))
    unknown.sort(key=lambda entry: -float(strangeness[entry[0]]))
    picks = review.rank(
        scored.probabilities[rest],
        scored.features[rest],
        limit,
        thresholds=loaded.thresholds,
        labelled=labelled,
    )
    items = [(rest[pick.index], _why(scored, loaded, rest[pick.index], pick)) for pick in picks]
    return items, unknown[:limit]


def _why(scored: Scored, loaded: LoadedModel, index: int, pick: review.Pick) -> str:
    row = scored.probabilities[index]
    classes = loaded.classes
    if loaded.thresholds is not None:
        thresholds = np.asarray(loaded.thresholds)
        closest = int(np.argmin(np.abs(row - thresholds)))
        reason = (
            f"margin {pick.margin:.2f} ({classes[closest]} {row[closest]:.2f}, its threshold "
            f"{thresholds[closest]:.2f})"
        )
    else:
        first, second = np.argsort(-row, kind="stable")[:2]
        reason = (
            f"margin {pick.margin:.2f} ({classes[first]} {row[first]:.2f}, "
            f"{classes[second]} {row[second]:.2f})"
        )
    if pick.distance is None:
        return reason + "; the least certain"
    return reason + f"; unlike those labelled or above (distance {pick.distance:.2f})"


def _item(
    model_id: str, dataset_id: str, scored: Scored, loaded: LoadedModel, index: int, reason: str
) -> ReviewItem:
    candidate = scored.candidates[index]
    ref = candidate.ref
    row = scored.probabilities[index]
    top = int(np.argmax(row))
    thresholds = loaded.thresholds
    if ref.capture_id is not None:
        url = f"/models/{model_id}/captures/{ref.capture_id}/image"
    else:
        url = f"/datasets/{dataset_id}/images/{ref.image_id}"
    return ReviewItem(
        capture_id=ref.capture_id,
        image_id=ref.image_id,
        filename=candidate.filename,
        image_url=url,
        suggestion=loaded.classes[top],
        labels=None if thresholds is None else _answered(row, loaded.classes, thresholds),
        score=float(row[top]),
        margin=float(review.margins(row[None, :], thresholds)[0]),
        ood_score=None if scored.ood_scores is None else float(scored.ood_scores[index]),
        reason=reason,
    )


def _answered(row: np.ndarray, classes: list[str], thresholds: list[float]) -> list[str]:
    """A multi-label model's labels for the row, best first: those /predict answers."""
    (scores,) = top_scores(row[None, :], classes, len(classes), thresholds)
    return [score.label for score in scores]


def mark_unknown(session: Session, model_id: str, refs: list[ImageRef]) -> int:
    """Mark images of the model's review unknown; how many were not marked before. Invalid
    naming the first that is neither an unlabelled capture of the model nor in its dataset's
    pool."""
    model, _ = reviewed_model(session, model_id)
    keys = list(dict.fromkeys(ref.key for ref in refs))
    present = _filenames(session, model, keys)
    for number, ref in enumerate(refs):
        if ref.key not in present:
            field = ("unknown", number, "capture_id" if ref.capture_id else "image_id")
            raise Invalid(
                f"{ref.key.replace(':', ' ')} is not an unlabelled capture of model {model_id} "
                f"nor in the pool of dataset {model.dataset_id}",
                field=field,
            )
    before = set(
        session.scalars(
            select(ReviewMark.item).where(
                ReviewMark.model_id == model_id, ReviewMark.item.in_(keys)
            )
        )
    )
    new = [key for key in keys if key not in before]
    if new:
        session.execute(insert(ReviewMark), [{"model_id": model_id, "item": k} for k in new])
    return len(new)
