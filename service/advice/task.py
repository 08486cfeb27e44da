"""The "advice" task: a k-fold linear probe of the dataset on the backbone's features, the
table's quadrant and the advised spec, and the dataset's label review from the same probe."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from service.advice.service import Figures, advice_result
from service.advice.spec import AdviceSpec
from service.datasets import versions
from service.datasets.label_files import label_matrix
from service.datasets.service import image_data, set_label_review
from service.jobs.context import JobContext
from service.jobs.kinds import Outcome
from service.ml.data import LabelledImages
from service.problems import Invalid
from service.storage.db import Database
from service.storage.feature_store import DatabaseFeatureStore
from service.storage.tables import Advice, Dataset
from service.training.service import check_references
from service.training.task import backbone_weights, from_ml


def advise(context: JobContext, spec: AdviceSpec) -> Outcome:
    """Measure the dataset against the backbone; what stores the advice and the review."""
    from service.ml.labels import label_review
    from service.ml.probe import ProbeSettings, TooFewImages, measure

    db, claim = context.db, context.claim
    sample, counts, total = load_sample(db, spec)
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
        total=total,
        sampled=len(sample.labels),
        folds=measured.pretrained.folds,
        metric=measured.pretrained.metric,
        probe_accuracy=measured.pretrained.score,
        random_accuracy=measured.random.score,
        chance=measured.chance,
        backbone_layers=measured.backbone_layers,
    )
    features = {"key": measured.key, "reused": measured.reused, "seconds": measured.seconds}
    assert sample.ids is not None and sample.filenames is not None
    # Random weights' features say little about the labels: keep any review made with
    # pretrained ones rather than replace it. A label set has no review (a softmax's).
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
        if measured.key is not None and not sample.multi_label
        else None
    )
    result = advice_result(figures, spec, features)

    def store(session: Session) -> None:
        session.execute(update(Advice).where(Advice.job_id == claim.job_id).values(result=result))
        if review is not None:
            set_label_review(session, spec.dataset_id, review)

    return Outcome(store, f"advice for dataset {spec.dataset_id}")


def load_sample(db: Database, spec: AdviceSpec) -> tuple[LabelledImages, list[int], int]:
    """A stratified sample of at most `spec.max_images` of the dataset's images (only theirs
    are read; multi-label, stratified by each image's rarest label), and the version's images
    per class (per label) and images in all, as the version counted them."""
    from service.ml.features import stratified_sample
    from service.ml.split import strata

    with db.session() as session:
        version = check_references(session, spec)
        multi_label = session.get_one(Dataset, version.dataset_id).multi_label
        classes = [entry["name"] for entry in version.classes]
        rows = session.execute(versions.version_images(version.id)).all()
        labels = label_matrix([row.label for row in rows], classes, multi_label)
        chosen = stratified_sample(strata(labels), spec.max_images, spec.seed)
        ids = [rows[i].id for i in chosen]
        data = image_data(session, version.dataset_id, ids)
        counts = [entry["count"] for entry in version.classes]
        total = version.num_images
    sample = LabelledImages(
        images=[data[image_id] for image_id in ids],
        labels=labels[chosen],
        classes=classes,
        ids=ids,
        filenames=[rows[i].filename for i in chosen],
    )
    return sample, counts, total
