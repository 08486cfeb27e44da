"""Each worker host's local cache of large datasets' images, in the shard format of
`service/storage/shard_files.py`: what a training job streams from when its dataset's encoded bytes
exceed TRAIN_IN_MEMORY_BYTES, so the worker's memory does not grow with the dataset.

- **Where**: `<data_dir>/cache/datasets/<dataset_id>/<snapshot>/`, where the snapshot is a
  hash of the dataset's image ids: images are never changed in place, so the same ids mean
  the same bytes, and a dataset that grew (images appended) gets a fresh folder.
- **Built once**, by the first job that needs it, from the database in bounded batches
  (`FETCH_ROWS` rows or `FETCH_BYTES` bytes a query, whichever comes first): memory holds
  one batch. It is written under a temporary name and renamed into place, so a worker killed
  half-way leaves no folder a later job would take for complete, and two workers of one
  host building the same snapshot at once both end with one complete folder.
- **Reused** by every later job on the same snapshot; an older snapshot of the dataset is
  removed when a newer one is built.
- **Dropped** when its dataset is gone: `prune_dataset_caches` (run by the worker before
  each streamed job) removes the folders of datasets the database no longer has, on every
  worker host; `drop_dataset_cache` removes one dataset's at once on the host that calls it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from sqlalchemy import select

from service.storage.db import Database
from service.storage.shard_files import OFFSETS_FILE, ShardedImages, write_shards
from service.storage.tables import Dataset, DatasetImage

log = logging.getLogger("service.shards")

# One query's rows while building a cache: bounded IN lists, bounded memory.
FETCH_ROWS = 256
FETCH_BYTES = 64 * 1024 * 1024
# A folder being built: never read, and removed by whoever finds it stale.
BUILDING_PREFIX = ".building-"


def dataset_cache_root(cache_dir: Path) -> Path:
    """Where the datasets' shard caches live under a data directory's cache folder."""
    return cache_dir / "datasets"


def snapshot_key(ids: Sequence[int]) -> str:
    """The name of the cache of a dataset holding exactly these images."""
    return hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()[:20]


def fetch_batches(ids: Sequence[int], sizes: Sequence[int]) -> Iterator[Sequence[int]]:
    """Consecutive runs of `ids` of at most FETCH_ROWS images and FETCH_BYTES bytes (an image
    larger than that alone makes a run of its own)."""
    start, total = 0, 0
    for end, size in enumerate(sizes):
        if end > start and (end - start >= FETCH_ROWS or total + size > FETCH_BYTES):
            yield ids[start:end]
            start, total = end, 0
        total += size
    if start < len(ids):
        yield ids[start:]


def dataset_shards(
    db: Database, root: Path, dataset_id: str, ids: Sequence[int], sizes: Sequence[int]
) -> ShardedImages:
    """The cache of the dataset's images `ids` (ascending; `sizes` their encoded bytes),
    built now if this host has none yet."""
    folder = root / dataset_id / snapshot_key(ids)
    if not (folder / OFFSETS_FILE).exists():
        _build(db, folder, dataset_id, ids, sizes)
    else:
        log.info("dataset %s: reusing its shard cache %s", dataset_id, folder.name)
    _remove_older(folder)
    return ShardedImages(folder)


def _build(
    db: Database, folder: Path, dataset_id: str, ids: Sequence[int], sizes: Sequence[int]
) -> None:
    temporary = folder.parent / f"{BUILDING_PREFIX}{folder.name}-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)  # this process's own, left by a crash
    log.info("dataset %s: caching %d images (%d bytes)", dataset_id, len(ids), sum(sizes))
    try:
        write_shards(temporary, _chunks(db, dataset_id, ids, sizes))
        try:
            os.rename(temporary, folder)
        except OSError:  # another process of this host finished the same snapshot first
            if not (folder / OFFSETS_FILE).exists():
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _chunks(
    db: Database, dataset_id: str, ids: Sequence[int], sizes: Sequence[int]
) -> Iterator[list[bytes]]:
    """The images' bytes, a bounded batch per query, in the order of `ids`."""
    for batch in fetch_batches(ids, sizes):
        with db.session() as session:
            query = (
                select(DatasetImage.id, DatasetImage.data)
                .where(DatasetImage.dataset_id == dataset_id, DatasetImage.id.in_(batch))
                .order_by(DatasetImage.id)
            )
            rows = session.execute(query).all()
        if [row.id for row in rows] != list(batch):
            raise RuntimeError(f"dataset {dataset_id} lost images while it was being cached")
        yield [row.data for row in rows]


def _remove_older(folder: Path) -> None:
    """The dataset's other snapshots: superseded by this one. A job still reading one keeps
    its open file (POSIX), so removing it under that job is safe."""
    for entry in folder.parent.iterdir():
        if entry != folder and not entry.name.startswith(BUILDING_PREFIX):
            shutil.rmtree(entry, ignore_errors=True)


def drop_dataset_cache(cache_dir: Path, dataset_id: str) -> None:
    """Remove this host's cache of a dataset (call it when the dataset is deleted)."""
    shutil.rmtree(dataset_cache_root(cache_dir) / dataset_id, ignore_errors=True)


def prune_dataset_caches(db: Database, cache_dir: Path) -> list[str]:
    """Remove this host's caches of datasets the database no longer has; returns their ids."""
    root = dataset_cache_root(cache_dir)
    if not root.is_dir():
        return []
    names = [entry.name for entry in root.iterdir() if entry.is_dir()]
    if not names:
        return []
    with db.session() as session:
        live = set(session.scalars(select(Dataset.id).where(Dataset.id.in_(names))))
    gone = [name for name in names if name not in live]
    for name in gone:
        shutil.rmtree(root / name, ignore_errors=True)
    return gone
