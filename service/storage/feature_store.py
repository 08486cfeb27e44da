"""Backbone features kept in the database between jobs (service/ml/features.py says which).

One row per (dataset, key), rewritten with the union of what was stored and what is saved,
so advice on a sample and a job on the whole dataset add up instead of replacing each other.
Rows go with their dataset (ON DELETE CASCADE); images never change, so rows never go stale.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, undefer

from service.storage.db import Database
from service.storage.tables import FeatureSet


def _pack(image_ids: np.ndarray, features: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, image_ids=image_ids, features=features.astype(np.float32))
    return buffer.getvalue()


def _unpack(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    with np.load(io.BytesIO(data)) as stored:
        return stored["image_ids"], stored["features"]


def _stored(session: Session, dataset_id: str, key: str) -> FeatureSet | None:
    return session.scalars(
        select(FeatureSet)
        .options(undefer(FeatureSet.data))
        .where(FeatureSet.dataset_id == dataset_id, FeatureSet.key == key)
        .order_by(FeatureSet.id.desc())
        .limit(1)
    ).first()


class DatabaseFeatureStore:
    """The worker's FeatureStore for one dataset."""

    def __init__(self, db: Database, dataset_id: str) -> None:
        self.db = db
        self.dataset_id = dataset_id

    def load(self, key: str, image_ids: Sequence[int]) -> np.ndarray | None:
        with self.db.session() as session:
            row = _stored(session, self.dataset_id, key)
            if row is None:
                return None
            stored_ids, features = _unpack(row.data)
        where = {int(image_id): number for number, image_id in enumerate(stored_ids)}
        try:
            return features[[where[int(image_id)] for image_id in image_ids]]
        except KeyError:  # some image was never extracted with this key
            return None

    def save(self, key: str, image_ids: Sequence[int], features: np.ndarray) -> None:
        ids = np.asarray(image_ids, dtype=np.int64)
        with self.db.session(write=True) as session:
            row = _stored(session, self.dataset_id, key)
            if row is not None:
                old_ids, old_features = _unpack(row.data)
                keep = ~np.isin(old_ids, ids)
                ids = np.concatenate([old_ids[keep], ids])
                features = np.concatenate([old_features[keep], features])
            order = np.argsort(ids, kind="stable")
            data = _pack(ids[order], features[order])
            session.execute(
                delete(FeatureSet).where(
                    FeatureSet.dataset_id == self.dataset_id, FeatureSet.key == key
                )
            )
            session.add(
                FeatureSet(
                    dataset_id=self.dataset_id,
                    key=key,
                    images=len(ids),
                    dimensions=int(np.prod(features.shape[1:])),
                    size_bytes=len(data),
                    data=data,
                )
            )
