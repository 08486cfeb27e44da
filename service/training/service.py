"""Training jobs, as the API and the console ask for them: the checks a spec's references
must pass (the worker makes them again before it trains), queueing, and the layer preview."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from service import jobs
from service.datasets import versions
from service.problems import Conflict, Invalid, NotFound
from service.storage.tables import (
    WEIGHTS_SOURCES,
    Dataset,
    DatasetVersion,
    Job,
    TrainedModel,
    WeightsFile,
)
from service.training.kind import TRAIN
from service.training.spec import JobSpec, RetrainRequest

if TYPE_CHECKING:
    from service.advice.spec import AdviceSpec


def check_references(session: Session, spec: JobSpec | AdviceSpec) -> DatasetVersion:
    """The version of the dataset the job uses (its latest when the spec names none), after
    checking what the spec refers to exists and fits: the dataset and its version, the stored
    weights source, and the class names of `class_weight`."""
    dataset = session.get(Dataset, spec.dataset_id)
    if dataset is None:
        raise NotFound(f"no dataset {spec.dataset_id!r}", field=("dataset_id",))
    version = versions.get_version(session, dataset, spec.dataset_version)
    weights_source(session, spec)
    if not isinstance(spec, JobSpec):  # advice: no class weights
        return version
    if spec.training.label_precision is not None and not dataset.multi_label:
        raise Invalid(
            f"dataset {dataset.id} is single-label: label_precision sets a multi-label "
            "model's thresholds",
            field=("training", "label_precision"),
        )
    class_weight = spec.training.class_weight
    if isinstance(class_weight, dict):
        names = {entry["name"] for entry in version.classes}
        for name in class_weight:
            if name not in names:
                raise Invalid(
                    f"{name!r} is not a class of version {version.number} of dataset "
                    f"{dataset.id}: {sorted(names)}",
                    field=("training", "class_weight", name),
                )
    return version


def weights_source(
    session: Session, spec: JobSpec | AdviceSpec, *options: Any
) -> TrainedModel | WeightsFile | None:
    """The stored model or weights file of "model:<id>" / "file:<id>" weights; None for
    "imagenet" and random weights. It must exist and be for the spec's backbone."""
    stored = spec.backbone.stored_weights
    if stored is None:
        return None
    where, reference = stored
    table, _, kind = WEIGHTS_SOURCES[where]
    source = session.get(table, reference, options=options)
    if source is None:
        raise NotFound(f"no {kind} {reference!r}", field=("backbone", "weights"))
    if source.backbone != spec.backbone.name:
        raise Invalid(
            f"{kind} {reference} is for {source.backbone}, not {spec.backbone.name}",
            field=("backbone", "weights"),
        )
    return source


def check_freeze_points(spec: JobSpec) -> None:
    """Every `trainable_from` names a layer the backbone has. Builds the backbone (TensorFlow):
    the API runs it off its event loop; the worker meets the same check in `apply_freeze`."""
    partial = [stage for stage in spec.stages if stage.freeze.trainable_from is not None]
    if not partial:
        return
    from service.ml.build import backbone_layer_names, trainable_from_index

    names = backbone_layer_names(spec.backbone.name, spec.input_size)
    for stage in partial:
        where = ("freeze",) if stage.number == 1 else ("fine_tune", stage.number - 2, "freeze")
        assert stage.freeze.trainable_from is not None
        try:
            trainable_from_index(names, stage.freeze.trainable_from)
        except ValueError as error:
            raise Invalid(str(error), field=(*where, "trainable_from")) from None


def submit(session: Session, spec: JobSpec) -> Job:
    """Check what the spec refers to, then queue it, the dataset's version it trains on
    recorded in its spec. Builds the backbone when a stage names a freeze point (TensorFlow):
    call it off any event loop."""
    version = check_references(session, spec)
    parent = spec.parent_model_id
    if parent is not None and session.get(TrainedModel, parent) is None:
        raise NotFound(f"no model {parent!r}", field=("parent_model_id",))
    check_freeze_points(spec)
    return queue_training(session, spec.model_copy(update={"dataset_version": version.number}))


def retrain(session: Session, model_id: str, request: RetrainRequest) -> Job:
    """Queue the model's own spec on a version of its dataset (its latest by default), as the
    next version of its name, starting from its trained backbone unless told otherwise; the
    new model records it as its parent. NotFound for the model, Conflict when its job or its
    dataset is gone (the spec and the images went with them)."""
    model = session.get(TrainedModel, model_id)
    if model is None:
        raise NotFound(f"no model {model_id!r}")
    job = session.get(Job, model.job_id) if model.job_id is not None else None
    if job is None or model.dataset_id is None:
        gone = "the job that trained it" if job is None else "its dataset"
        raise Conflict(f"model {model_id} cannot be retrained: {gone} was deleted")
    spec = jobs.runnable_spec(job.spec, JobSpec).model_dump(mode="json")
    if request.warm_start:
        spec["backbone"]["weights"] = f"model:{model.id}"
    spec.update(
        dataset_id=model.dataset_id,
        dataset_version=request.dataset_version,
        name=model.name,
        parent_model_id=model.id,
    )
    return submit(session, JobSpec.model_validate(spec))


def preview(session: Session, spec: JobSpec) -> list[dict[str, Any]]:
    """Every stage's layer table, as the trained model's /layers would show it, with totals;
    nothing is trained or stored."""
    version = check_references(session, spec)
    check_freeze_points(spec)
    from service.ml.build import preview_layers

    return [
        {
            "stage": number,
            "trainable_params": sum(row["trainable_params"] for row in rows),
            "non_trainable_params": sum(row["non_trainable_params"] for row in rows),
            "layers": rows,
        }
        for number, rows in enumerate(preview_layers(spec, len(version.classes)), start=1)
    ]


def queue_training(session: Session, spec: JobSpec) -> Job:
    """A new queued training job for a spec whose references were checked."""
    dataset = session.get(Dataset, spec.dataset_id)
    assert dataset is not None  # checked by the caller, in this transaction
    name = spec.name or f"{dataset.name}-{spec.backbone.name}"
    return jobs.queue_job(
        session,
        kind=TRAIN.name,
        name=name,
        spec=spec,
        dataset_id=dataset.id,
        gpus=spec.resources.gpus,
    )
