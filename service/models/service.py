"""Trained models as the service stores them: list, read, layers, evaluation and the
validation images behind it, download, delete. Everything here was computed by the worker
when it stored the model, so none of it needs TensorFlow. The API and the console both call
these."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, undefer

from service import jobs
from service.models import registry
from service.problems import Conflict, Invalid, NotFound
from service.storage.pages import Page, PageOf, fetch_page
from service.storage.tables import ModelLayer, TrainedModel


def list_models(session: Session, page: Page, *, name: str | None = None) -> PageOf[TrainedModel]:
    """Newest first; with `name`, only the versions of that named model."""
    query = select(TrainedModel)
    if name is not None:
        query = query.where(TrainedModel.name == name)
    return fetch_page(session, query, TrainedModel, page)


def get_model(session: Session, model_id: str, *options: Any) -> TrainedModel:
    model = session.get(TrainedModel, model_id, options=options)
    if model is None:
        raise NotFound(f"no model {model_id!r}")
    return model


def require_single_label(model: TrainedModel, what: str) -> None:
    """Conflict for what multi-label models do not have yet, naming it."""
    if model.thresholds is not None:
        raise Conflict(
            f"model {model.id} is multi-label: {what} is for single-label models for now"
        )


def model_layers(session: Session, model_id: str, trainable: bool | None = None) -> dict[str, Any]:
    """Every layer with its trainable status as trained (or only those with `trainable`)."""
    model = get_model(session, model_id)
    query = select(ModelLayer).where(ModelLayer.model_id == model_id).order_by(ModelLayer.index)
    if trainable is not None:
        query = query.where(ModelLayer.trainable == trainable)
    return {
        "model_id": model.id,
        "trainable_params": model.trainable_params,
        "non_trainable_params": model.non_trainable_params,
        "layers": list(session.scalars(query)),
    }


def _evaluated(session: Session, model_id: str) -> tuple[TrainedModel, dict[str, Any]]:
    model = get_model(session, model_id, undefer(TrainedModel.evaluation))
    if model.evaluation is None:
        raise NotFound(
            f"model {model_id} has no evaluation: it was trained with validation_split 0"
        )
    return model, model.evaluation


def model_report(session: Session, model_id: str) -> tuple[TrainedModel, dict[str, Any]]:
    """The model and its report on the validation split, of its kind: per class with the
    confusion matrix, or per label (without the per-image samples stored beside them:
    `evaluation_samples` reads those). Its `calibration` and `unknowns` blocks are there
    either way: drift reads its reference from them."""
    model, evaluation = _evaluated(session, model_id)
    report = {key: value for key, value in evaluation.items() if key != "samples"}
    return model, {"model_id": model.id, **report}


def model_evaluation(session: Session, model_id: str) -> dict[str, Any]:
    """A single-label model's per-class report; Conflict for a multi-label model."""
    model, report = model_report(session, model_id)
    if model.thresholds is not None:
        raise Conflict(
            f"model {model_id} is multi-label: its report is per label, at "
            f"GET /models/{model_id}/label-evaluation"
        )
    return report


def label_evaluation(session: Session, model_id: str) -> dict[str, Any]:
    """A multi-label model's per-label report; Conflict for a single-label model."""
    model, report = model_report(session, model_id)
    if model.thresholds is None:
        raise Conflict(
            f"model {model_id} is single-label: its report is per class, at "
            f"GET /models/{model_id}/evaluation"
        )
    return report


def evaluation_samples(
    session: Session, model_id: str, *, label: str | None, predicted: str | None
) -> list[dict[str, Any]]:
    """The validation images behind the evaluation, in dataset order: each image's id in the
    model's dataset, its true class (`label`), the class the model gave it (`predicted`) with
    that class's probability (`score`), and every class's probability (`scores`).

    Filtered to one true and/or one predicted class, so `label=a, predicted=b` gives exactly
    the images counted in the confusion matrix's cell (a, b). NotFound for a model without
    samples (no validation split, or trained before they were stored); Invalid for a class
    the model does not have.
    """
    model, evaluation = _evaluated(session, model_id)
    require_single_label(model, "the evaluation's samples")
    if "samples" not in evaluation:
        raise NotFound(
            f"model {model_id}'s evaluation predates per-image samples; "
            "train the job again to see the images behind it"
        )
    classes = list(model.classes)
    for field, name in (("label", label), ("predicted", predicted)):
        if name is not None and name not in classes:
            raise Invalid(
                f"{name!r} is not a class of model {model_id}: {classes}",
                field=(field,),
                part="query",
            )
    return [
        _sample(stored, classes)
        for stored in evaluation["samples"]
        if label in (None, stored["label"]) and predicted in (None, stored["predicted"])
    ]


def _sample(stored: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    scores = dict(zip(classes, stored["scores"], strict=True))
    return {
        "image_id": stored["image_id"],
        "label": stored["label"],
        "predicted": stored["predicted"],
        "score": scores[stored["predicted"]],
        "scores": scores,
    }


def savedmodel_archive(session: Session, model_id: str) -> TrainedModel:
    """The model with its packed SavedModel loaded."""
    return get_model(session, model_id, undefer(TrainedModel.savedmodel))


def delete_model(session: Session, model_id: str) -> None:
    """Conflict while a queued or running job starts from its backbone, or an alias points
    to it."""
    model = get_model(session, model_id)
    jobs.ensure_unused(session, model)
    registry.ensure_unaliased(session, model)
    session.execute(delete(ModelLayer).where(ModelLayer.model_id == model.id))
    session.delete(model)
    session.flush()
