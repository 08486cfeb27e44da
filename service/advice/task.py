"""The "advice" task: a k-fold linear probe of the dataset on the backbone's features, the
table's quadrant and the advised spec, and the dataset's label review from the same probe."""

from __future__ import annotations

import numpy as np
from sqlalchemy import update
from sqlalchemy.orm import Session

from service.advice.service import Figures, advice_result
from service.advice.spec import AdviceSpec
from service.datasets import versions
from service.datasets.service import image_data, set_label_review
from service.jobs.context import JobContext
from service.jobs.kinds import Outcome
from service.ml.data import LabelledImages
from service.problems import Invalid
from service.storage.db import Database
from service.storage.feature_store import DatabaseFeatureStore
from service.storage.tables import Advice
from service.training.service import check_references
from service.training.task import backbone_weights, from_ml


def advise(context: JobContext, spec: AdviceSpec) -> Outcome:
    """Measure the dataset against the backbone; what stores the advice and the review."""
    from service.ml.labels import label_review
    from service.ml.probe import ProbeSettings, TooFewImages, measure

    db, claim = context.db, context.claim
    sample, counts = load_sample(db, spec)
    store = DatabaseFeatureStore(db, spec.dataset_id)
    settings = ProbeSettings(backbone=spec.backbone, folds=spec.folds, seed=spec.seed)
    with backbone_weights(db, spec) as weights, from_ml():
        try:
            measured = measure(
                settings, sample, context.monitor, backbone_weights=weights, store=store
            )
        except TooFewImages as error:
            raise Invalid(str(error)) from None
    figures = Figures(
        counts=counts,
        sampled=len(sample.labels),
        folds=measured.pretrained.folds,
        probe_accuracy=measured.pretrained.accuracy,
        random_accuracy=measured.random.accuracy,
        chance=measured.chance,
        backbone_layers=measured.backbone_layers,
    )
    features = {"key": measured.key, "reused": measured.reused, "seconds": measured.seconds}
    assert sample.ids is not None and sample.filenames is not None
    # Random weights' features say little about the labels: keep any review made with
    # pretrained ones rather than replace it.
    review = (
        label_review(
            measured.pretrained,
            sample.labels,
            sample.ids,
            sample.filenames,
            sample.classes,
            features=measured.key,
            job_id=claim.job_id,
        )
        if measured.key is not None
        else None
    )
    result = advice_result(figures, spec, features)

    def store(session: Session) -> None:
        session.execute(update(Advice).where(Advice.job_id == claim.job_id).values(result=result))
        if review is not None:
            set_label_review(session, spec.dataset_id, review)

    return Outcome(store, f"advice for dataset {spec.dataset_id}")


def load_sample(db: Database, spec: AdviceSpec) -> tuple[LabelledImages, list[int]]:
    """A stratified sample of at most `spec.max_images` of the dataset's images (only theirs
    are read), and the whole dataset's images per class."""
    from service.ml.features import stratified_sample

    with db.session() as session:
        version = check_references(session, spec)
        classes = [entry["name"] for entry in version.classes]
        rows = session.execute(versions.version_images(version.id)).all()
        index = {name: number for number, name in enumerate(classes)}
        labels = np.array([index[row.label] for row in rows], dtype=np.int32)
        chosen = [rows[i] for i in stratified_sample(labels, spec.max_images, spec.seed)]
        data = image_data(session, version.dataset_id, [row.id for row in chosen])
    sample = LabelledImages(
        images=[data[row.id] for row in chosen],
        labels=np.array([index[row.label] for row in chosen], dtype=np.int32),
        classes=classes,
        ids=[row.id for row in chosen],
        filenames=[row.filename for row in chosen],
    )
    return sample, np.bincount(labels, minlength=len(classes)).tolist()
