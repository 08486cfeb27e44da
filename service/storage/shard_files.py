"""A dataset's encoded images on local disk, read one by one: what a worker trains on when
the dataset is too large to hold in memory (see `service/storage/shard_cache.py` for where the
files live and when they are built, and `service/ml/train.py` for how training reads them).

The format is two files in one folder, written once and never changed:

- `images.bin`: every image's encoded bytes, one after the other, in the dataset's id order;
- `offsets.npy`: int64, count + 1 entries; image k is bytes offsets[k] … offsets[k+1].

Images are read with `os.pread` rather than through an mmap: a read copies just that image
and leaves no file pages mapped into the process, so the worker's resident memory says what
it holds (the kernel's page cache still keeps the file's hot parts, outside the process).

No project imports: the format is tested without TensorFlow or a database.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

DATA_FILE = "images.bin"
OFFSETS_FILE = "offsets.npy"


def write_shards(folder: Path, chunks: Iterable[Iterable[bytes]]) -> int:
    """Write the images `chunks` yields, in order, as one shard folder (created; it must not
    exist). Memory holds one chunk at a time. Returns the number of images."""
    folder.mkdir(parents=True)
    offsets = [0]
    with open(folder / DATA_FILE, "wb") as out:
        for chunk in chunks:
            for data in chunk:
                out.write(data)
                offsets.append(offsets[-1] + len(data))
        out.flush()
        os.fsync(out.fileno())
    np.save(folder / OFFSETS_FILE, np.asarray(offsets, dtype=np.int64))
    return len(offsets) - 1


class _DataFile:
    """The open images file, shared by a folder's subsets and closed with the last of them."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)

    def __del__(self) -> None:
        os.close(self.fd)


class ShardedImages:
    """The images of a shard folder, or a subset of them, by position: `images[k]` is the
    bytes of the k-th image of the subset (of `positions[k]` in the folder)."""

    def __init__(
        self,
        folder: Path,
        positions: np.ndarray | None = None,
        *,
        _shared: tuple[_DataFile, np.ndarray] | None = None,
    ) -> None:
        self.folder = folder
        if _shared is None:
            _shared = (_DataFile(folder / DATA_FILE), np.load(folder / OFFSETS_FILE))
        self._file, self._offsets = _shared
        self._positions = positions

    def __len__(self) -> int:
        if self._positions is not None:
            return len(self._positions)
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> bytes:
        position = int(self._positions[index]) if self._positions is not None else int(index)
        start, end = int(self._offsets[position]), int(self._offsets[position + 1])
        # pread: no shared file position, so tf.data's parallel calls may read at once.
        return os.pread(self._file.fd, end - start, start)

    def subset(self, positions: np.ndarray) -> ShardedImages:
        """The images at these positions of this one (in that order), sharing its file."""
        absolute = positions if self._positions is None else self._positions[positions]
        return ShardedImages(
            self.folder, np.asarray(absolute, np.int64), _shared=(self._file, self._offsets)
        )

    @property
    def total_bytes(self) -> int:
        """Encoded bytes of the images of this subset (of the folder's, without one)."""
        sizes = np.diff(self._offsets)
        return int(sizes.sum() if self._positions is None else sizes[self._positions].sum())
