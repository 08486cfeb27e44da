"""Which images of a dataset are copies of one another: exact (the same SHA-256 of the bytes)
and near (perceptual hashes of the RGB pixels within NEAR_DUPLICATE_BITS of 64), found by
comparing every pair of hashes in vectorised chunks, so 10,000 images take a fraction of a
second, and joined into groups (connected components). Numpy and SciPy, no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sqlalchemy import Row

from service.datasets.schemas import DuplicateGroup, Duplicates, ReportImage

# Of the 64 bits of a perceptual hash: within this many, two files are the same picture
# re-encoded, resized or lightly edited (imagehash's authors suggest about 10% of the bits).
NEAR_DUPLICATE_BITS = 6
# Cells of the Hamming-distance matrix computed at once (8 bytes each): bounds the memory.
PAIR_CELLS = 1 << 22

Kind = Literal["exact", "near"]


def image_ref(row: Row[Any]) -> ReportImage:
    return ReportImage(id=row.id, filename=row.filename, label=row.label)


def hamming_pairs(hashes: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair i < j of 64-bit `hashes` (uint64) at most `bits` apart: (i, j, distance).

    XOR and popcount over the upper triangle, a band of rows at a time (PAIR_CELLS cells)."""
    count = len(hashes)
    band = max(1, PAIR_CELLS // max(count, 1))
    empty = np.zeros(0, dtype=np.int64)
    first, second, distances = [empty], [empty], [empty]
    for start in range(0, count, band):
        # Rows start…start+band against columns start…: each pair once (j > i kept below).
        distance = popcount(hashes[start : start + band, None] ^ hashes[None, start:])
        i, j = np.nonzero(distance <= bits)
        keep = j > i
        i, j = i[keep], j[keep]
        first.append(i + start)
        second.append(j + start)
        distances.append(distance[i, j].astype(np.int64))
    return np.concatenate(first), np.concatenate(second), np.concatenate(distances)


_BYTE_BITS = np.array([bin(value).count("1") for value in range(256)], dtype=np.uint8)


def popcount(values: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (numpy ≥ 2 has an instruction for it; 1.26 a table)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(values)
    per_byte = _BYTE_BITS[values.view(np.uint8)].reshape(*values.shape, 8)
    return per_byte.sum(axis=-1, dtype=np.uint8)


@dataclass
class Similar:
    """The images (in id order) and which of them are copies of one another.

    `sha[i]` and `phash[i]` number image i's distinct SHA-256 and perceptual hash (-1: none,
    an image that no longer decodes); `component[i]` numbers its group of copies.
    """

    rows: Sequence[Row[Any]]
    sha: np.ndarray
    phash: np.ndarray
    hashes: np.ndarray  # the distinct perceptual hashes, uint64, numbered as in `phash`
    component: np.ndarray

    def duplicates(self) -> Duplicates:
        exact, near = [], []
        for members in copy_groups(self.component):
            if len(set(self.sha[members])) == 1:
                exact.append(self._group("exact", members))
                continue
            near.append(self._group("near", members))
            # Exact copies inside a near group are an exact group too.
            shas, counts = np.unique(self.sha[members], return_counts=True)
            exact.extend(
                self._group("exact", members[self.sha[members] == sha]) for sha in shas[counts > 1]
            )
        exact.sort(key=lambda group: group.images[0].id)
        return Duplicates(exact=exact, near=near)

    def _group(self, kind: Kind, members: np.ndarray) -> DuplicateGroup:
        labels = {self.rows[i].label for i in members}
        codes = np.unique(self.phash[members])
        codes = codes[codes >= 0]
        distance = int(popcount(self.hashes[codes][:, None] ^ self.hashes[codes]).max(initial=0))
        return DuplicateGroup(
            kind=kind,
            scope="across_classes" if len(labels) > 1 else "within_class",
            distance=distance if kind == "near" else 0,
            images=[image_ref(self.rows[i]) for i in members],
        )


def find_similar(rows: Sequence[Row[Any]]) -> Similar:
    """Number the hashes, find the near pairs, and join copies into groups."""
    _, sha = np.unique(np.array([row.sha256 for row in rows], dtype=object), return_inverse=True)
    measured = np.array([row.phash is not None for row in rows], dtype=bool)
    values = np.array([int(row.phash, 16) for row in rows if row.phash], dtype=np.uint64)
    hashes, codes = np.unique(values, return_inverse=True)
    phash = np.full(len(rows), -1, dtype=np.int64)
    phash[measured] = codes
    component = _components(len(rows), sha, phash, hamming_pairs(hashes, NEAR_DUPLICATE_BITS))
    return Similar(rows, sha.astype(np.int64), phash, hashes, component)


def _components(
    count: int, sha: np.ndarray, phash: np.ndarray, near: tuple[np.ndarray, ...]
) -> np.ndarray:
    """Each image's connected component over: same bytes, same hash, hashes near (`near`:
    pairs of hash numbers, as `hamming_pairs` gives them)."""
    first, second = [], []
    for keys, kept in ((sha, np.arange(count)), (phash[phash >= 0], np.flatnonzero(phash >= 0))):
        order = np.argsort(keys, kind="stable")
        same = keys[order][1:] == keys[order][:-1]
        first.append(kept[order][:-1][same])
        second.append(kept[order][1:][same])
    # A near pair of hashes joins one image of each (the others follow by "same hash").
    holder = np.zeros(phash.max(initial=-1) + 1, dtype=np.int64)
    holder[phash[phash >= 0]] = np.flatnonzero(phash >= 0)
    first.append(holder[near[0]])
    second.append(holder[near[1]])
    i, j = np.concatenate(first), np.concatenate(second)
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(count, count))
    return connected_components(graph, directed=False)[1]


def copy_groups(component: np.ndarray) -> list[np.ndarray]:
    """The components of two or more images, members in id order, by their first image."""
    grouped = np.flatnonzero(np.bincount(component)[component] > 1)  # most images are alone
    order = grouped[np.argsort(component[grouped], kind="stable")]  # stable: ids stay in order
    bounds = np.flatnonzero(np.diff(component[order])) + 1
    groups = np.split(order, bounds) if len(order) else []
    return sorted(groups, key=lambda members: int(members[0]))
