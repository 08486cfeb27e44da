"""The "compare" task: both models classify the dataset version's images, as batch
prediction does (decoded and resized as `/predict` does, a batch at a time), and the paired
figures are stored with the job's success."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import tee
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import update
from sqlalchemy.orm import Session

from service.comparisons import stats
from service.comparisons.schemas import MAX_DISAGREEMENTS
from service.comparisons.spec import ComparisonSpec
from service.datasets import versions
from service.datasets.label_files import label_set, labels_of
from service.jobs.context import JobContext
from service.jobs.kinds import JobStopped, Outcome
from service.models.registry import ModelRef, resolve
from service.predictions.batch import dataset_items
from service.predictions.serving import stored_source
from service.predictions.task import worker_models
from service.problems import Invalid, NotFound
from service.storage.tables import Comparison, Dataset

if TYPE_CHECKING:
    from service.ml.batch import Answer
    from service.ml.model_cache import LoadedModel


@dataclass(frozen=True)
class Scored:
    """One model's answers (class names) to the images, in the images' order."""

    model_id: str
    name: str
    version: int
    answers: list[str]


def compare(context: JobContext, spec: ComparisonSpec) -> Outcome:
    """Score both models on the version's images; what stores the figures."""
    rows, multi_label = _images(context, spec)
    a, b = _score(context, spec, rows)
    context.monitor.flush()
    if context.monitor.should_stop():
        raise JobStopped()
    truth = [row.label for row in rows]
    ids, filenames = [row.id for row in rows], [row.filename for row in rows]
    result = figures(truth, ids, filenames, a, b, multi_label)
    return Outcome(
        store_result(spec.comparison_id, result),
        f"comparison of {a.model_id} and {b.model_id} on {len(rows)} images",
    )


def _images(context: JobContext, spec: ComparisonSpec) -> tuple[list[Any], bool]:
    """The version's images (id, label, filename) and whether the dataset is multi-label (its
    models are of its kind: `request_comparison` checked); NotFound when the record or the
    dataset went away since the job was queued, Invalid for a version without images."""
    with context.db.session() as session:
        if session.get(Comparison, spec.comparison_id) is None:
            raise NotFound(f"no comparison {spec.comparison_id!r}: it was deleted")
        dataset = session.get(Dataset, spec.dataset_id)
        if dataset is None:
            raise NotFound(f"no dataset {spec.dataset_id!r}: it was deleted")
        multi_label = dataset.multi_label
        version = versions.version_id(session, spec.dataset_id, spec.dataset_version)
        rows = session.execute(versions.version_images(version)).all()
    if not rows:
        raise Invalid(f"dataset {spec.dataset_id} version {spec.dataset_version} has no images")
    return list(rows), multi_label


def _score(context: JobContext, spec: ComparisonSpec, rows: list[Any]) -> list[Scored]:
    """Each model's answer to each image. The images' bytes are read once: both models take
    each batch in turn, so the two readers of the one stream stay a batch or two apart. An
    image a model cannot decode is the job's error: both read the same bytes, and a comparison
    on fewer images than asked would mislead."""
    from service.ml.batch import classify

    with context.db.session() as session:
        found = [resolve(session, ModelRef(model_id=model_id)) for model_id in spec.model_ids]
        sources = [stored_source(context.db, row) for row in found]
        names = [(row.id, row.name, row.version) for row in found]
    models = [worker_models(context).get(source) for source in sources]
    streams = [
        classify(
            model,
            items,
            batch_size=context.settings.batch_predict_size,
            should_stop=context.monitor.should_stop,
        )
        for model, items in zip(
            models, tee(dataset_items(context.db, spec.dataset_id, rows)), strict=True
        )
    ]
    answers: list[list[str]] = [[], []]
    for batches in zip(*streams, strict=False):  # a stop may end one stream a batch early
        for model, batch, named in zip(models, batches, answers, strict=True):
            named += [_answer(model, answer) for answer in batch]
        context.monitor.on_pass(len(answers[0]), len(rows))
    return [Scored(*name, named) for name, named in zip(names, answers, strict=True)]


def _answer(model: LoadedModel, answer: Answer) -> str:
    """The class the model answers for one image; a multi-label model's, its labels past
    their thresholds as a manifest keeps them (sorted, joined): right when the whole set is."""
    if answer.probabilities is None:
        raise Invalid(f"{answer.item.about['file']}: {answer.error}")
    if model.thresholds is not None:
        held = answer.probabilities >= np.asarray(model.thresholds)
        return label_set([name for name, on in zip(model.classes, held, strict=True) if on], "")
    return str(model.classes[int(np.argmax(answer.probabilities))])


def figures(
    truth: list[str],
    image_ids: list[int],
    filenames: list[str],
    a: Scored,
    b: Scored,
    multi_label: bool = False,
) -> dict[str, Any]:
    """What GET /comparisons/{id} answers of the two models' answers to the same images. A
    multi-label answer is right when its whole label set is (`accuracy`: the exact-match
    ratio); `macro_f1` and `per_class` are then per label."""
    sets = [labels_of(label, multi_label) for label in truth]
    classes = sorted({name for held in sets for name in held})
    correct = [np.array(scored.answers) == np.array(truth) for scored in (a, b)]
    difference = stats.paired_bootstrap(*correct)
    disagreements = [
        {
            "image_id": image_ids[n],
            "filename": filenames[n],
            "label": truth[n],
            "answers": [a.answers[n], b.answers[n]],
        }
        for n in range(len(truth))
        if a.answers[n] != b.answers[n]
    ]
    score = stats.per_label if multi_label else stats.per_class
    (recall_a, f1_a), (recall_b, f1_b) = (score(truth, s.answers, classes) for s in (a, b))
    per_class = zip(classes, recall_a, recall_b, strict=True)
    return {
        "images": len(truth),
        "models": [
            {
                "model_id": scored.model_id,
                "name": scored.name,
                "version": scored.version,
                "accuracy": float(right.mean()),
                "macro_f1": macro_f1,
            }
            for scored, right, macro_f1 in zip((a, b), correct, (f1_a, f1_b), strict=True)
        ],
        "difference": vars(difference),
        "mcnemar_p": stats.mcnemar_exact(*correct),
        "b_is_better": difference.b_is_better,
        "verdict": stats.verdict(difference),
        "per_class": [
            {
                "name": name,
                "images": sum(name in held for held in sets),
                "a": in_a,
                "b": in_b,
                "difference": in_b - in_a,
            }
            for name, in_a, in_b in per_class
        ],
        "disagreements": disagreements[:MAX_DISAGREEMENTS],
        "disagreements_total": len(disagreements),
    }


def store_result(comparison_id: str, result: dict[str, Any]) -> Callable[[Session], None]:
    def store(session: Session) -> None:
        session.execute(
            update(Comparison).where(Comparison.id == comparison_id).values(result=result)
        )

    return store
