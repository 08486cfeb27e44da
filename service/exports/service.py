"""Exports: a trained model converted to another format by the worker, with its parity.

`POST /models/{id}/exports` queues an export job (kind "export") on the jobs queue and an
export record beside it; the worker converts the stored SavedModel (service/ml/convert.py),
runs the file in the format's own runtime on the model's validation split, and stores the
file with the figures, or fails the job with them when it misses its bar. The record's status
is its job's. No TensorFlow here: the API answers from the database and package metadata.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

import numpy as np
from packaging.version import InvalidVersion, Version
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, undefer

from service import jobs
from service.datasets import versions
from service.datasets.service import image_data
from service.exports.kind import EXPORT
from service.exports.spec import ExportRequest, ExportSpec
from service.ml.calibrate import Temperature
from service.ml.data import ExportInputs
from service.models.service import get_model
from service.problems import Conflict, NotFound, Problem, Unsupported
from service.storage.db import Database
from service.storage.tables import Job, ModelExport, TrainedModel, new_id
from service.training.spec import JobSpec

# Top-1 agreement with the SavedModel on the validation split an export must reach. Float
# formats compute what the SavedModel does in another order; int8 rounds every activation.
PARITY_BARS: dict[str, float] = {
    "keras": 0.999,
    "tflite": 0.999,
    "tflite-fp16": 0.999,
    "onnx": 0.999,
    "tflite-int8": 0.98,
}
# Training-split images the int8 quantizer calibrates its ranges on (a stratified sample):
# TensorFlow's guide asks for "a few hundred"; more costs conversion time for little gain.
REPRESENTATIVE_IMAGES = 200

# What tf2onnx converts, newest release first: (tf2onnx from, TensorFlow below). Releases
# before 1.17 cannot read Keras 3 models, TensorFlow's default from 2.16
# (onnx/tensorflow-onnx#2348); 1.17 is checked here with TensorFlow 2.21 (tests/test_exports.py
# converts a model and runs it in ONNX Runtime), so newer TensorFlow is refused until it is.
ONNX_SUPPORT: tuple[tuple[Version, Version], ...] = (
    (Version("1.17"), Version("2.22")),
    (Version("0"), Version("2.16")),
)
TENSORFLOW_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-macos", "tf-nightly")


# -- what ONNX export needs ------------------------------------------------------------------


def installed_version(*distributions: str) -> Version | None:
    """The version of the first of `distributions` installed, from its package metadata
    (nothing is imported); None when none is."""
    for name in distributions:
        try:
            return Version(metadata.version(name))
        except (metadata.PackageNotFoundError, InvalidVersion):
            continue
    return None


def onnx_unsupported() -> str | None:
    """Why ONNX export cannot run with the packages installed here, naming the versions it
    needs; None when it can."""
    needs = (
        f"ONNX export needs tf2onnx >= {ONNX_SUPPORT[0][0]} with TensorFlow < "
        f"{ONNX_SUPPORT[0][1]} (tf2onnx before {ONNX_SUPPORT[0][0]} converts only TensorFlow "
        f"< {ONNX_SUPPORT[1][1]}) and onnxruntime for the parity check"
    )
    tf2onnx = installed_version("tf2onnx")
    if tf2onnx is None or installed_version("onnxruntime") is None:
        return f"{needs}; install them: pip install 'tf2onnx>=1.17' onnxruntime"
    tensorflow = installed_version(*TENSORFLOW_DISTRIBUTIONS)
    if tensorflow is None:
        return None  # a TensorFlow without package metadata: let the conversion say
    below = next(limit for release, limit in ONNX_SUPPORT if tf2onnx >= release)
    if tensorflow.release >= below.release:
        return f"{needs}; installed: tf2onnx {tf2onnx}, TensorFlow {tensorflow}"
    return None


# -- the records the API and the console read -------------------------------------------------


def export_status(job: Job | None) -> tuple[str, str | None]:
    """(status, error) of an export, from its job: queued, running, ready or failed."""
    if job is None:
        return "failed", "its job was removed"
    if job.status == jobs.JobStatus.SUCCEEDED:
        return "ready", None
    if job.status == jobs.JobStatus.CANCELLED:
        return "failed", "its job was cancelled"
    return job.status, job.error


def _exportable(model: TrainedModel) -> None:
    """Conflict when the worker could not check an export's parity: it rebuilds the network
    from the training job's spec and compares on the validation images of the dataset."""
    evaluation = model.evaluation or {}
    if "samples" not in evaluation:
        raise Conflict(
            f"model {model.id} has no validation images to check an export's parity on: it "
            "was trained with validation_split 0, or before per-image samples were stored"
        )
    if model.dataset_id is None:
        raise Conflict(
            f"the dataset model {model.id} was trained on has been deleted: an export's "
            "parity check needs its validation images"
        )
    if model.job_id is None:
        raise Conflict(f"model {model.id}'s training job is gone: its spec is needed to export")


def request_export(session: Session, model_id: str, request: ExportRequest) -> ModelExport:
    """Queue an export job and its record. A failed export of the format is replaced; one
    queued, running or ready is a Conflict. Unsupported when ONNX cannot run here."""
    model = get_model(session, model_id, undefer(TrainedModel.evaluation))
    if request.format == "onnx" and (reason := onnx_unsupported()) is not None:
        raise Unsupported(reason)
    _exportable(model)
    found = session.execute(
        select(ModelExport, Job)
        .outerjoin(Job, Job.id == ModelExport.job_id)
        .where(ModelExport.model_id == model.id, ModelExport.format == request.format)
    ).first()
    if found is not None:
        status, _ = export_status(found[1])
        if status != "failed":
            raise Conflict(
                f"model {model.id} already has a {request.format} export ({status}); "
                f"DELETE /models/{model.id}/exports/{request.format} to make it again"
            )
        session.delete(found[0])
        session.flush()
    spec = ExportSpec(model_id=model.id, format=request.format, webhook_url=request.webhook_url)
    # The job holds the model's dataset as a training job does: the parity check reads its
    # validation images, so the dataset cannot be deleted while the job waits.
    job = jobs.queue_job(
        session,
        kind=EXPORT.name,
        name=f"export-{model.name}-{spec.format}",
        spec=spec,
        dataset_id=model.dataset_id,
    )
    record = ModelExport(id=new_id("x"), model_id=model.id, format=request.format, job_id=job.id)
    session.add(record)
    try:
        session.flush()
    except IntegrityError:  # another request made this format's record first
        raise Conflict(f"model {model.id}'s {request.format} export was just requested") from None
    return record


def get_export(session: Session, model_id: str, format: str) -> tuple[ModelExport, Job | None]:
    """The model's export in `format` and its job."""
    row = session.execute(
        select(ModelExport, Job)
        .outerjoin(Job, Job.id == ModelExport.job_id)
        .where(ModelExport.model_id == model_id, ModelExport.format == format)
    ).first()
    if row is None:
        get_model(session, model_id)
        raise NotFound(f"model {model_id} has no {format} export")
    return row[0], row[1]


def list_exports(session: Session, model_id: str) -> list[tuple[ModelExport, Job | None]]:
    """The model's exports, oldest first (one per format at most), each with its job."""
    get_model(session, model_id)
    rows = session.execute(
        select(ModelExport, Job)
        .outerjoin(Job, Job.id == ModelExport.job_id)
        .where(ModelExport.model_id == model_id)
        .order_by(ModelExport.created_at, ModelExport.id)
    )
    return [(record, job) for record, job in rows]


def export_file(session: Session, model_id: str, format: str) -> ModelExport:
    """The ready export with its file loaded: NotFound unless it is ready (a failed one will
    never be), Conflict saying its status while it is queued or running."""
    record, job = get_export(session, model_id, format)
    status, error = export_status(job)
    if status in ("queued", "running"):
        raise Conflict(f"model {model_id}'s {format} export is {status}; no file yet")
    if status == "failed":
        raise NotFound(f"model {model_id}'s {format} export failed ({error}); no file")
    session.refresh(record, ["data"])
    return record


def delete_export(session: Session, model_id: str, format: str) -> None:
    """Delete the export; a queued or running export job is cancelled with it."""
    record, job = get_export(session, model_id, format)
    if job is not None and job.status in jobs.ACTIVE:
        jobs.cancel(session, job)
    session.delete(record)
    session.flush()


# -- what the worker reads -------------------------------------------------------------------


def load_export_inputs(db: Database, spec: ExportSpec) -> ExportInputs:
    """The model, its training spec and the images of its validation split (and, for int8,
    a sample of its training split); a Problem saying what is missing."""
    with db.session() as session:
        model = session.get(
            TrainedModel,
            spec.model_id,
            options=[undefer(TrainedModel.savedmodel), undefer(TrainedModel.evaluation)],
        )
        if model is None:
            raise NotFound(f"no model {spec.model_id!r}: it was deleted")
        _exportable(model)
        job = session.get(Job, model.job_id)
        if job is None:
            raise Conflict(f"model {model.id}'s training job is gone: its spec is needed")
        assert model.evaluation is not None and model.dataset_id is not None
        samples = model.evaluation["samples"]
        validation_ids = [sample["image_id"] for sample in samples]
        validation = _images(
            session, model.dataset_id, validation_ids, f"validation images of model {model.id}"
        )
        representative = (
            _representative(session, model, set(validation_ids))
            if spec.format == "tflite-int8"
            else []
        )
        temperature, labels = _calibration_and_truth(model)
        return ExportInputs(
            model_id=model.id,
            format=spec.format,
            spec=jobs.runnable_spec(job.spec, JobSpec),
            classes=list(model.classes),
            input_size=model.input_size,
            temperature=temperature,
            savedmodel=model.savedmodel,
            validation=validation,
            labels=labels,
            representative=representative,
            thresholds=model.thresholds,
        )


def _calibration_and_truth(model: TrainedModel) -> tuple[Temperature, list[Any]]:
    """What `serve` applies (a temperature, or one per label of a multi-label model) and the
    validation images' true answers: class indices, or 0/1 rows of a multi-label model."""
    assert model.evaluation is not None
    calibration = model.evaluation.get("calibration") or {}
    samples = model.evaluation["samples"]
    if model.thresholds is not None:
        rows = [[int(name in sample["labels"]) for name in model.classes] for sample in samples]
        return calibration["temperatures"], rows
    temperature = float(calibration["temperature"]) if calibration.get("fitted") else 1.0
    return temperature, [model.classes.index(sample["label"]) for sample in samples]


def _images(session: Session, dataset_id: str, ids: list[int], what: str) -> list[bytes]:
    """The images' bytes in `ids` order; a Problem when the dataset lost any of them."""
    data = image_data(session, dataset_id, ids)
    missing = len(set(ids) - set(data))
    if missing:
        raise Problem(
            f"{missing} of the {len(ids)} {what} are no longer in dataset {dataset_id}: "
            "the export needs them all"
        )
    return [data[image_id] for image_id in ids]


def _representative(session: Session, model: TrainedModel, validation: set[int]) -> list[bytes]:
    """A stratified sample of the training split: the images of the dataset's version the
    model learnt from that it did not hold out for validation, each class in its share."""
    from service.ml.features import stratified_sample  # NumPy only

    dataset_id = model.dataset_id
    assert dataset_id is not None
    version = versions.version_id(session, dataset_id, model.dataset_version)
    rows = session.execute(versions.version_images(version)).all()
    training = [row for row in rows if row.id not in validation]
    if not training:
        raise Problem(f"dataset {dataset_id} has no training images to calibrate int8 on")
    labels = np.unique([row.label for row in training], return_inverse=True)[1]
    chosen = [training[i].id for i in stratified_sample(labels, REPRESENTATIVE_IMAGES, seed=0)]
    return _images(session, dataset_id, chosen, "training images sampled for calibration")


def report_figures(report: dict[str, Any]) -> str:
    """The parity figures in one line, for a failed job's error."""
    parity = report["parity"]
    kind = "label-set" if report.get("thresholds") is not None else "top-1"
    return (
        f"{kind} agreement with the SavedModel {parity['agreement']:.2%} "
        f"({parity['agreeing']} of {parity['images']} validation images; the bar is "
        f"{parity['bar']:.1%}), largest probability difference "
        f"{parity['max_abs_difference']:.4f}"
    )
