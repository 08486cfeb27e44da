"""Strategy advice: which of the three transfer-learning strategies a dataset calls for.

The classic table has two axes. Data size: images per class (the median class decides).
Similarity to what the backbone was pretrained on: measured, not guessed, as the k-fold
accuracy of a linear probe on the frozen backbone's pooled features, set against the same
probe on the same architecture with random weights (what the architecture alone gives) and
against chance (always answering the largest class).

                     similar                          different
    little data      3: freeze the backbone,          2: freeze the bottom,
                        train the classifier             fine-tune the top
    much data        2: freeze the bottom,            1: train everything
                        fine-tune the top

The worker measures (service/ml/probe.py, an advice job on the jobs queue); this module turns
the figures into the advice and a job spec `POST /jobs` takes as it is. No TensorFlow here.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service import jobs
from service.advice.kind import ADVICE
from service.advice.spec import AdviceRequest, AdviceSpec
from service.datasets.service import get_dataset
from service.problems import NotFound
from service.storage.pages import Page, PageOf, fetch_page
from service.storage.tables import Advice, Job, new_id
from service.training.service import check_references
from service.training.spec import BackboneSpec, JobSpec

# From this similarity on, the data count as similar to the pretraining data.
SIMILAR_AT = 0.5
# The share of the backbone's layers the fine-tuning stage trains: TensorFlow's
# transfer-learning tutorial fine-tunes MobileNetV2 from layer 100 of 154, about the top third.
FINE_TUNE_SHARE = 1 / 3
# Past this largest-to-smallest class ratio the advised spec weights the classes.
IMBALANCE_RATIO = 2.0

STRATEGIES = {
    1: "train the whole network: warm up the new classifier on the frozen backbone, then "
    "train every layer at a low learning rate",
    2: "freeze the bottom of the backbone and fine-tune its top: train the classifier on the "
    "frozen backbone first, then unfreeze the top third of its layers at a low learning rate",
    3: "freeze the whole backbone and train only the classifier",
}
FROM_SCRATCH = "train the whole network from its random weights: there is nothing to freeze"


# -- the records the API and the console read -------------------------------------------------


def request_advice(session: Session, dataset_id: str, request: AdviceRequest) -> Advice:
    """Queue an advice job for the dataset; NotFound/Invalid for what the request names."""
    dataset = get_dataset(session, dataset_id)
    spec = AdviceSpec.model_validate({**request.model_dump(), "dataset_id": dataset.id})
    version = check_references(session, spec)
    request = request.model_copy(update={"dataset_version": version.number})
    spec = spec.model_copy(update={"dataset_version": version.number})
    job = jobs.queue_job(
        session,
        kind=ADVICE.name,
        name=f"advice-{dataset.name}-{spec.backbone.name}",
        spec=spec,
        dataset_id=dataset.id,
        gpus=spec.resources.gpus,
    )
    advice = Advice(
        id=new_id("a"),
        dataset_id=dataset.id,
        job_id=job.id,
        request=request.model_dump(mode="json"),
    )
    session.add(advice)
    session.flush()
    return advice


def advice_status(job: Job | None) -> tuple[str, str | None]:
    """(status, error) of an advice: its job's."""
    if job is None:
        return jobs.JobStatus.FAILED, "its job was removed"
    return job.status, job.error


def _with_jobs(query: Any) -> Any:
    return query.add_columns(Job).outerjoin(Job, Job.id == Advice.job_id)


def get_advice(session: Session, dataset_id: str, advice_id: str) -> tuple[Advice, Job | None]:
    """The advice and the job that measures it."""
    row = session.execute(
        _with_jobs(select(Advice)).where(Advice.id == advice_id, Advice.dataset_id == dataset_id)
    ).first()
    if row is None:
        get_dataset(session, dataset_id)
        raise NotFound(f"dataset {dataset_id} has no advice {advice_id!r}")
    return row[0], row[1]


def list_advice(session: Session, dataset_id: str, page: Page) -> PageOf[tuple[Advice, Job | None]]:
    """The dataset's advice, newest first, each with its job."""
    dataset = get_dataset(session, dataset_id)
    query = _with_jobs(select(Advice)).where(Advice.dataset_id == dataset.id)
    return fetch_page(session, query, Advice, page, scalars=False, key=lambda row: row[0])


# -- from the figures to the advice -----------------------------------------------------------


def similarity(pretrained: float, random: float) -> float:
    """The share of the errors the random-weights probe makes that the pretrained features
    remove, 0..1. Where random weights already make no error, the pretrained features are as
    good as needed (1) or worse (0)."""
    if random >= 1.0:
        return 1.0 if pretrained >= 1.0 else 0.0
    return min(1.0, max(0.0, (pretrained - random) / (1.0 - random)))


@dataclass(frozen=True)
class Figures:
    """What the worker measured, and the dataset's class counts."""

    counts: list[int]  # images per class (multi-label: per label), the whole dataset
    total: int  # images in the whole dataset
    sampled: int  # images the features were extracted for: all, or a stratified sample
    folds: int
    metric: str  # the probes': "accuracy"; "mean_average_precision" for a multi-label dataset
    probe_accuracy: float  # the pretrained features' probe, in `metric`
    random_accuracy: float  # the random weights' probe, in `metric`
    chance: float  # knowing nothing, in `metric`
    backbone_layers: int

    @property
    def multi_label(self) -> bool:
        return self.metric != "accuracy"

    @property
    def median(self) -> float:
        return float(statistics.median(self.counts))

    @property
    def imbalance(self) -> float:
        return max(self.counts) / min(self.counts)


def quadrant(figures: Figures, spec: AdviceSpec) -> dict[str, Any]:
    """The table's cell, and its strategy."""
    data = "much" if figures.median >= spec.much_data_per_class else "little"
    score = similarity(figures.probe_accuracy, figures.random_accuracy)
    similar = spec.backbone.pretrained and score >= SIMILAR_AT
    if not spec.backbone.pretrained:
        strategy = 1  # random weights: there is nothing to transfer
    elif similar:
        strategy = 3 if data == "little" else 2
    else:
        strategy = 2 if data == "little" else 1
    return {
        "data": data,
        "similarity": "similar" if similar else "different",
        "strategy": strategy,
        "summary": STRATEGIES[strategy] if spec.backbone.pretrained else FROM_SCRATCH,
    }


def advised_spec(figures: Figures, spec: AdviceSpec, strategy: int) -> dict[str, Any]:
    """A job spec for the strategy, as `POST /jobs` takes it."""
    training: dict[str, Any] = {
        "epochs": 10 if strategy == 3 else 5,
        "learning_rate": 1e-3,
        "validation_split": 0.2,
        "seed": spec.seed,
        "early_stopping": {"monitor": "val_loss", "patience": 3},
    }
    if figures.imbalance > IMBALANCE_RATIO:
        training["class_weight"] = "balanced"
    fine_tune: list[dict[str, Any]] = []
    if strategy == 2:
        top = max(1, round(figures.backbone_layers * FINE_TUNE_SHARE))
        fine_tune = [
            {
                "freeze": {"mode": "partial", "trainable_from": -top},
                "epochs": 5,
                "learning_rate": 1e-5,
            }
        ]
    elif strategy == 1 and spec.backbone.pretrained:
        training["epochs"] = 3
        fine_tune = [{"freeze": {"mode": "none"}, "epochs": 10, "learning_rate": 1e-4}]
    first_freeze = {"mode": "backbone"} if spec.backbone.pretrained else {"mode": "none"}
    advised = {
        "dataset_id": spec.dataset_id,
        "dataset_version": spec.dataset_version,  # the version measured
        "backbone": spec.backbone.model_dump(mode="json"),
        "head": {"pooling": "avg", "dropout": 0.2},
        "freeze": first_freeze,
        "training": training,
        "fine_tune": fine_tune,
    }
    # As a job's spec is stored: where its end is announced is the requester's to add.
    return JobSpec.model_validate(advised).model_dump(mode="json", exclude={"webhook_url"})


def reasons(figures: Figures, spec: AdviceSpec, cell: dict[str, Any]) -> list[str]:
    """The advice in plain words, with the numbers behind it."""
    backbone = _named(spec.backbone)
    score = similarity(figures.probe_accuracy, figures.random_accuracy)
    kind = "label" if figures.multi_label else "class"
    said = [
        f"The median {kind} has {figures.median:g} images (the smallest "
        f"{min(figures.counts)}); from {spec.much_data_per_class} per {kind} the data count "
        f"as much, so this is {cell['data']} data.",
        _probe_sentence(figures, backbone),
    ]
    if figures.sampled < figures.total:
        said.append(
            f"Features were extracted for a stratified sample of {figures.sampled} of the "
            f"{figures.total} images (max_images {spec.max_images}), each "
            f"{'rarest label' if figures.multi_label else 'class'} in its share."
        )
    if spec.backbone.pretrained:
        said.append(
            f"Similarity {score:.2f}: the pretrained features remove {score:.0%} of the "
            f"{'ranking errors' if figures.multi_label else 'errors'} random weights leave; "
            f"from {SIMILAR_AT} the data count as similar to what the backbone was trained on, "
            f"so they are {cell['similarity']}."
        )
    else:
        said.append("The backbone has random weights: there is nothing to transfer.")
    if figures.probe_accuracy - figures.chance < 0.1:
        said.append(
            "The probe barely beats chance: check the labels (GET /datasets/{id}/report), "
            "or the pictures may not show what tells the classes apart."
        )
    if figures.imbalance > IMBALANCE_RATIO:
        weighted = "each label's images" if figures.multi_label else "the classes"
        said.append(
            f"The largest {kind} has {figures.imbalance:.1f}× the images of the smallest: the "
            f'spec weights {weighted} ("class_weight": "balanced").'
        )
    said.append(f"Strategy {cell['strategy']}: {cell['summary']}.")
    return said


def _probe_sentence(figures: Figures, backbone: str) -> str:
    measured = f"({figures.folds}-fold cross-validation on {figures.sampled} images)"
    if figures.multi_label:
        return (
            f"A linear probe per label on {backbone}'s pooled features ranks each label's "
            f"images with a mean average precision of {figures.probe_accuracy:.1%} {measured}, "
            f"against {figures.random_accuracy:.1%} with the same architecture's random "
            f"weights and {figures.chance:.1%} for scores that know nothing (each label's "
            "share of the images)."
        )
    return (
        f"A linear probe on {backbone}'s pooled features predicts the labels with "
        f"{figures.probe_accuracy:.1%} accuracy {measured}, against "
        f"{figures.random_accuracy:.1%} with the same architecture's random weights and "
        f"{figures.chance:.1%} by always answering the largest class."
    )


def _named(backbone: BackboneSpec) -> str:
    weights = backbone.weights or "random"
    return f"{backbone.name} ({weights} weights, {backbone.input_size} px)"


def advice_result(figures: Figures, spec: AdviceSpec, features: dict[str, Any]) -> dict[str, Any]:
    """The advice record's result."""
    cell = quadrant(figures, spec)
    return {
        "images": {
            "total": figures.total,
            "sampled": figures.sampled,
            "smallest_class": min(figures.counts),
            "median_class": figures.median,
            "largest_class": max(figures.counts),
        },
        "probe": {
            "folds": figures.folds,
            "metric": figures.metric,
            "accuracy": figures.probe_accuracy,
            "random_accuracy": figures.random_accuracy,
            "chance": figures.chance,
        },
        "similarity": similarity(figures.probe_accuracy, figures.random_accuracy),
        "quadrant": cell,
        "reasons": reasons(figures, spec, cell),
        "spec": advised_spec(figures, spec, cell["strategy"]),
        "features": features,
    }
