"""The "train" task: a worker trains a job's spec and stores the model it made.

The model, its layer table (with how far fine-tuning moved each layer) and the label review
of the dataset, when the job's frozen stage made one, are stored with the job's success in
one transaction (`store_model`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, undefer

from service import jobs
from service.config import Settings
from service.datasets import versions
from service.datasets.label_files import label_matrix
from service.datasets.service import set_label_review
from service.jobs.context import JobContext
from service.jobs.kinds import JobStopped, Outcome
from service.ml import checkpoint
from service.ml.data import LabelledImages
from service.models.registry import next_version
from service.problems import Problem
from service.storage.db import Database
from service.storage.feature_store import DatabaseFeatureStore
from service.storage.tables import (
    WEIGHTS_SOURCES,
    Dataset,
    DatasetImage,
    ModelHead,
    ModelLayer,
    ModelLineage,
    ModelThresholds,
    TrainedModel,
    new_id,
)
from service.training.service import check_references, weights_source
from service.training.spec import JobSpec

if TYPE_CHECKING:  # TensorFlow: imported by the task when it runs, not by its importers
    from service.ml.heads import HeadWeights
    from service.ml.train import TrainingResult

log = logging.getLogger("service.worker")


def train(context: JobContext, spec: JobSpec) -> Outcome:
    """Train the job; what stores its model (and the dataset's label review)."""
    import keras

    from service.ml.build import describe_layers
    from service.ml.drift import with_drift
    from service.ml.heads import head_bytes
    from service.ml.train import train as fit

    claim, db = context.claim, context.db
    data = load_dataset(db, spec, context.settings)
    keras.backend.clear_session()
    store = DatabaseFeatureStore(db, spec.dataset_id)
    saved = _resume_point(context, spec, data)
    with backbone_weights(db, spec) as weights, from_ml():
        result = fit(
            spec,
            data,
            context.monitor,
            backbone_weights=weights,
            feature_store=store,
            checkpoint_dir=saved,
            initial_head=parent_head(db, spec),
        )
    if result.replicas > 1:
        log.info("job %s trained on %d replicas", claim.job_id, result.replicas)
    if result.head_classes_carried is not None:
        log.info(
            "job %s: head started from model %s's (%d of %d classes carried over)",
            claim.job_id,
            spec.parent_model_id,
            result.head_classes_carried,
            len(data.classes),
        )
    stored = _model_row(claim, spec, data, result)
    # Compared after everything that moves weights: the stages, BN recompute, restores.
    network = result.network
    layers = with_drift(describe_layers(network.model), network.backbone, result.initial_weights)
    review = _review_of_training(claim, spec, data, result)
    save = store_model(
        stored,
        layers,
        review,
        dataset_version=spec.dataset_version,
        parent=spec.parent_model_id,
        head=head_bytes(result.network, data.classes),
        thresholds=result.thresholds,
    )
    return Outcome(save, f"model {stored.id}")


def _model_row(
    claim: jobs.Claim, spec: JobSpec, data: LabelledImages, result: TrainingResult
) -> TrainedModel:
    """The trained model's row: its SavedModel, with the temperature fitted on the validation
    split folded into the graph, its evaluation and its backbone's weights."""
    from service.ml import export
    from service.ml.build import parameter_counts

    model = result.network.model
    trainable, non_trainable = parameter_counts(model)
    savedmodel = export.export_savedmodel(
        model, temperature=result.temperature, unknowns=result.unknowns
    )
    return TrainedModel(
        id=new_id("m"),
        name=claim.name or spec.name or claim.job_id,
        job_id=claim.job_id,
        dataset_id=spec.dataset_id,
        backbone=spec.backbone.name,
        input_size=spec.input_size,
        classes=data.classes,
        metrics=result.metrics,
        evaluation=_with_samples(result, data),
        trainable_params=trainable,
        non_trainable_params=non_trainable,
        size_bytes=len(savedmodel),
        savedmodel_sha256=export.sha256(savedmodel),
        savedmodel=savedmodel,
        backbone_weights=export.weights_bytes(result.network.backbone),
    )


@contextmanager
def from_ml() -> Iterator[None]:
    """ML's signals as the engine's: a stop the observer asked for ends the task as stopped,
    and backbone weights that cannot be had fail the job with ML's reason."""
    from service.ml.build import WeightsUnavailable
    from service.ml.data import TrainingStopped

    try:
        yield
    except TrainingStopped:
        raise JobStopped() from None
    except WeightsUnavailable as error:
        raise Problem(str(error)) from None


def store_model(
    model: TrainedModel,
    layers: list[dict[str, Any]],
    label_review: dict[str, Any] | None = None,
    *,
    dataset_version: int | None = None,
    parent: str | None = None,
    head: bytes | None = None,
    thresholds: list[float] | None = None,
) -> Callable[[Session], None]:
    """What a training job's success stores: the model numbered as the next version of its
    name, its layers, the version of the dataset it learnt from and the model it retrains
    (its lineage), its head's weights (what a retrain starts from), a multi-label model's
    thresholds, and the dataset's label review if the job made one."""

    def store(session: Session) -> None:
        model.version = next_version(session, model.name)
        session.add(model)
        session.flush()
        session.add_all(ModelLayer(model_id=model.id, **row) for row in layers)
        if dataset_version is not None:
            session.add(
                ModelLineage(
                    model_id=model.id, dataset_version=dataset_version, parent_model_id=parent
                )
            )
        if head is not None:
            session.add(ModelHead(model_id=model.id, weights=head))
        if thresholds is not None:
            session.add(ModelThresholds(model_id=model.id, thresholds=thresholds))
        if model.dataset_id is not None and label_review is not None:
            set_label_review(session, model.dataset_id, label_review)

    return store


def parent_head(db: Database, spec: JobSpec) -> HeadWeights | None:
    """The head a retrain starts from: its parent's, when it starts from the parent's
    backbone too (a warm start; a head alone on another backbone would mean nothing)."""
    from service.ml.heads import read_head

    parent = spec.parent_model_id
    if parent is None or spec.backbone.weights != f"model:{parent}":
        return None
    with db.session() as session:
        blob = session.scalar(select(ModelHead.weights).where(ModelHead.model_id == parent))
    return read_head(blob) if blob is not None else None


def _resume_point(context: JobContext, spec: JobSpec, data: LabelledImages) -> Path:
    """The job's checkpoint folder; when an earlier attempt left a checkpoint there, the
    job's history is set back to its epochs (training resumes after them)."""
    claim = context.claim
    folder = context.settings.checkpoints / claim.job_id
    mark = checkpoint.fingerprint(spec.model_dump_json(), data.ids, len(data.labels))
    state = checkpoint.read_state(folder, mark)
    if state is not None:
        jobs.restore_history(context.db, claim, state.history)
        where = "its end" if state.stage_done else f"epoch {state.epochs_done}"
        log.info(
            "job %s: resuming from its checkpoint (stage %d, after %s)",
            claim.job_id,
            state.stage,
            where,
        )
    return folder


def load_dataset(db: Database, spec: JobSpec, settings: Settings | None = None) -> LabelledImages:
    """The images and labels of the job's version of its dataset, after the same reference
    checks the API made when the job was queued: what it names may have changed since.

    A version of up to TRAIN_IN_MEMORY_BYTES encoded bytes (or any, without `settings`) is
    read into memory in one query; a larger one comes as a `ShardedImages` over this host's
    shard cache (service/storage/shard_cache.py), built from the database in bounded batches the
    first time: then only ids, labels and filenames are held here."""
    with db.session() as session:
        version = check_references(session, spec)
        multi_label = session.get_one(Dataset, version.dataset_id).multi_label
        classes = [entry["name"] for entry in version.classes]
        total = versions.total_bytes(session, version.id)
        streamed = settings is not None and total > settings.train_in_memory_bytes
        column = DatasetImage.size_bytes if streamed else DatasetImage.data
        rows = session.execute(versions.version_images(version.id, column)).all()
    if streamed:
        assert settings is not None
        images: Any = _shards(db, settings, version.dataset_id, rows)
    else:
        images = [row.data for row in rows]
    return LabelledImages(
        images=images,
        labels=label_matrix([row.label for row in rows], classes, multi_label),
        classes=classes,
        ids=[row.id for row in rows],
        filenames=[row.filename for row in rows],
    )


def _shards(db: Database, settings: Settings, dataset_id: str, rows: Sequence[Any]) -> Any:
    """A large version's images, read from this host's shard cache of its dataset."""
    from service.storage import shard_cache as shards

    # Caches of deleted datasets go first: the disk they hold may be what this one needs.
    shards.prune_dataset_caches(db, settings.cache_dir)
    root = shards.dataset_cache_root(settings.cache_dir)
    ids = [row.id for row in rows]
    return shards.dataset_shards(db, root, dataset_id, ids, [row.size_bytes for row in rows])


def _with_samples(result: TrainingResult, data: LabelledImages) -> dict[str, Any] | None:
    """The evaluation with each validation image's scores, named by its dataset row, so a
    client can show the images behind each cell of the confusion matrix."""
    from service.ml.evaluate import prediction_samples

    if result.evaluation is None or result.validation_probabilities is None:
        return result.evaluation
    index = result.validation_index
    if data.multi_label:
        ids = [data.ids[i] for i in index]
        # What an export's parity check reads: each validation image and its labels.
        held = data.labels[index] > 0
        samples = [
            {"image_id": ids[k], "labels": [data.classes[j] for j in np.flatnonzero(row)]}
            for k, row in enumerate(held)
        ]
        return {**_named_errors(result.evaluation, ids), "samples": samples}
    samples = prediction_samples(
        [data.ids[i] for i in index],
        data.labels[index],
        result.validation_probabilities,
        data.classes,
    )
    return {**result.evaluation, "samples": samples}


def _named_errors(evaluation: dict[str, Any], ids: list[int]) -> dict[str, Any]:
    """A multi-label report's false positives and negatives named by their dataset rows
    (ML numbers them by their place in the validation split)."""
    per_label = [
        {
            **row,
            "false_positives": [ids[i] for i in row["false_positives"]],
            "false_negatives": [ids[i] for i in row["false_negatives"]],
        }
        for row in evaluation["per_label"]
    ]
    return {**evaluation, "per_label": per_label}


# A training job's label review probes at most this many images (a stratified sample).
REVIEW_MAX_IMAGES = 10_000


def _review_of_training(
    claim: jobs.Claim, spec: JobSpec, data: LabelledImages, result: TrainingResult
) -> dict[str, Any] | None:
    """The label review from the features a frozen stage trained on, when it had the
    untouched pretrained backbone's features of every image."""
    from service.ml.features import feature_key
    from service.ml.labels import fold_count, label_review, probe

    if result.features is None or data.ids is None or data.multi_label:
        return None  # the review's probe is a softmax over classes
    positions, features = result.features
    if len(positions) > REVIEW_MAX_IMAGES:  # the probe's cost grows with the images
        from service.ml.features import stratified_sample

        kept = stratified_sample(data.labels[positions], REVIEW_MAX_IMAGES, spec.training.seed)
        positions, features = positions[kept], features[kept]
    labels = data.labels[positions]
    folds = fold_count(labels)
    if folds == 0:
        return None
    return label_review(
        probe(features, labels, folds=folds, seed=spec.training.seed),
        labels,
        [data.ids[i] for i in positions],
        [data.filenames[i] for i in positions],
        data.classes,
        features=feature_key(spec.backbone, spec.head.pooling) or "",
        job_id=claim.job_id,
    )


@contextmanager
def backbone_weights(db: Database, spec: Any) -> Iterator[str | Path | None]:
    """What `make_backbone` takes for the spec: "imagenet" or None as they are; for
    "model:<id>" and "file:<id>" a scratch file holding those weights."""
    from service.ml.weights import weights_file

    stored = spec.backbone.stored_weights
    if stored is None:
        yield spec.backbone.weights
        return
    column = WEIGHTS_SOURCES[stored[0]].column
    with db.session() as session:
        source = weights_source(session, spec, undefer(column))
        blob = getattr(source, column.key)
    with weights_file(blob) as path:
        yield path
