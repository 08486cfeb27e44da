"""Capture: policies that ask for a sample of a model's predictions, and the images kept.

A policy is set on a model version, or on a registry alias (it then follows the alias to
whichever version it points to, and ends with it). A version's own policy wins over an
alias's. What the API process does with them (drawing, storing off the request's path) is
`service.monitoring.recorder`'s; these are the reads and writes both the routes and the
recorder use.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, load_only

from service.models import registry
from service.problems import NotFound
from service.storage.pages import Page, PageOf, fetch_by, fetch_page
from service.storage.tables import (
    AliasCapturePolicy,
    Capture,
    ModelAlias,
    ModelCapturePolicy,
    TrainedModel,
    utcnow,
)

CaptureSort = Literal["recent", "uncertain", "unknown"]
# Every column of a capture but its image.
LISTED = (
    Capture.id,
    Capture.model_id,
    Capture.request_id,
    Capture.filename,
    Capture.label,
    Capture.score,
    Capture.margin,
    Capture.ood_score,
    Capture.unknown,
    Capture.scores,
    Capture.media_type,
    Capture.width,
    Capture.height,
    Capture.created_at,
)


@dataclass(frozen=True)
class Policy:
    rate: float
    max_images: int
    days: int


def _policy(row: ModelCapturePolicy | AliasCapturePolicy) -> Policy:
    return Policy(row.rate, row.max_images, row.days)


def _model(session: Session, model_id: str) -> TrainedModel:
    model = session.get(TrainedModel, model_id, options=[load_only(TrainedModel.id)])
    if model is None:
        raise NotFound(f"no model {model_id!r}")
    return model


def set_model_policy(session: Session, model_id: str, policy: Policy) -> ModelCapturePolicy:
    _model(session, model_id)
    row = session.get(ModelCapturePolicy, model_id) or ModelCapturePolicy(model_id=model_id)
    row.rate, row.max_images, row.days = policy.rate, policy.max_images, policy.days
    session.add(row)
    session.flush()
    return row


def model_policy(session: Session, model_id: str) -> ModelCapturePolicy:
    _model(session, model_id)
    row = session.get(ModelCapturePolicy, model_id)
    if row is None:
        raise NotFound(f"model {model_id!r} captures nothing: PUT a policy to start")
    return row


def clear_model_policy(session: Session, model_id: str) -> None:
    session.delete(model_policy(session, model_id))


def set_alias_policy(session: Session, name: str, alias: str, policy: Policy) -> AliasCapturePolicy:
    registry.get_alias(session, name, alias)  # NotFound naming the name or alias
    row = session.get(AliasCapturePolicy, (name, alias)) or AliasCapturePolicy(
        name=name, alias=alias
    )
    row.rate, row.max_images, row.days = policy.rate, policy.max_images, policy.days
    session.add(row)
    session.flush()
    return row


def alias_policy(session: Session, name: str, alias: str) -> AliasCapturePolicy:
    registry.get_alias(session, name, alias)
    row = session.get(AliasCapturePolicy, (name, alias))
    if row is None:
        raise NotFound(f"alias {alias!r} of {name!r} captures nothing: PUT a policy to start")
    return row


def clear_alias_policy(session: Session, name: str, alias: str) -> None:
    session.delete(alias_policy(session, name, alias))


def active_policies(session: Session) -> dict[str, Policy]:
    """Each model that captures, by id: its own policy, else that of an alias on it."""
    followed = session.execute(
        select(ModelAlias.model_id, AliasCapturePolicy).join(
            ModelAlias,
            (ModelAlias.name == AliasCapturePolicy.name)
            & (ModelAlias.alias == AliasCapturePolicy.alias),
        )
    )
    policies = {model_id: _policy(row) for model_id, row in followed}
    for row in session.scalars(select(ModelCapturePolicy)):
        policies[row.model_id] = _policy(row)
    return policies


def store(session: Session, captures: list[Capture], policy: Policy) -> None:
    """Keep the captures of one model, and delete what its policy no longer keeps: older than
    its days, or past its max_images newest."""
    session.add_all(captures)
    session.flush()
    model_id = captures[0].model_id
    delete_expired(session, {model_id: policy})
    oldest_kept = session.scalar(
        select(Capture.created_at)
        .where(Capture.model_id == model_id)
        .order_by(Capture.created_at.desc(), Capture.id.desc())
        .offset(policy.max_images - 1)
        .limit(1)
    )
    if oldest_kept is not None:
        session.execute(
            delete(Capture).where(Capture.model_id == model_id, Capture.created_at < oldest_kept)
        )


def delete_expired(session: Session, policies: dict[str, Policy]) -> None:
    """Delete each model's captures older than its policy's days."""
    now = utcnow()
    for model_id, policy in policies.items():
        session.execute(
            delete(Capture).where(
                Capture.model_id == model_id,
                Capture.created_at < now - timedelta(days=policy.days),
            )
        )


def list_captures(session: Session, model_id: str, sort: CaptureSort, page: Page) -> PageOf[Any]:
    """A model's captures: newest first, least certain first (smallest margin between the top
    two scores), or strangest first (highest ood_score; captures without one left out)."""
    _model(session, model_id)
    query = select(*LISTED).where(Capture.model_id == model_id)
    if sort == "recent":
        return fetch_page(session, query, Capture, page, scalars=False)
    if sort == "uncertain":
        return fetch_by(session, query, Capture.margin, Capture.id, page, descending=False)
    query = query.where(Capture.ood_score.is_not(None))
    return fetch_by(session, query, Capture.ood_score, Capture.id, page, descending=True)


def capture_image(session: Session, model_id: str, capture_id: str) -> tuple[bytes, str]:
    found = session.execute(
        select(Capture.image, Capture.media_type).where(
            Capture.id == capture_id, Capture.model_id == model_id
        )
    ).one_or_none()
    if found is None:
        raise NotFound(f"model {model_id!r} has no capture {capture_id!r}")
    return found[0], found[1]
