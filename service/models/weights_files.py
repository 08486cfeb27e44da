"""Uploaded backbone weights files: check and store, list, read, delete. The API and the
console both call these."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service import jobs
from service.backbones import BACKBONES
from service.problems import BadContent, Invalid, NotFound
from service.storage.pages import Page, PageOf, fetch_page
from service.storage.tables import WeightsFile, new_id


def upload_weights(
    session: Session, *, data: bytes, filename: str | None, backbone: str
) -> WeightsFile:
    """Store a weights file after loading it into the backbone (include_top=False): BadContent
    naming the first mismatched layer when it does not fit."""
    from service.ml.export import sha256
    from service.ml.weights import WeightsMismatch, check_weights

    if backbone not in BACKBONES:
        raise Invalid(
            f"unknown backbone {backbone!r}; GET /backbones lists them", field=("backbone",)
        )
    name = filename or "weights.h5"
    try:
        check_weights(backbone, data)
    except WeightsMismatch as error:
        raise BadContent(f"{name}: {error}") from None
    weights = WeightsFile(
        id=new_id("w"),
        backbone=backbone,
        filename=name[:255],
        size_bytes=len(data),
        sha256=sha256(data),
        data=data,
    )
    session.add(weights)
    session.flush()
    return weights


def list_weights(session: Session, page: Page) -> PageOf[WeightsFile]:
    return fetch_page(session, select(WeightsFile), WeightsFile, page)


def get_weights(session: Session, weights_id: str) -> WeightsFile:
    weights = session.get(WeightsFile, weights_id)
    if weights is None:
        raise NotFound(f"no weights file {weights_id!r}")
    return weights


def delete_weights(session: Session, weights_id: str) -> None:
    """Conflict while a queued or running job starts from it."""
    weights = get_weights(session, weights_id)
    jobs.ensure_unused(session, weights)
    session.delete(weights)
    session.flush()
