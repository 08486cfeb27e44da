"""Reading an uploaded zip of class folders (the layout of `image_dataset_from_directory`).

No database and no HTTP here: it returns the images, or raises `BadArchive` saying why the
whole upload is refused. Files that are not images are skipped and listed, not fatal.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO

from service.ml.images import UndecodableImage, open_image

IGNORED_PARTS = ("__MACOSX",)
# Past this many bytes, an entry that inflates to more than MAX_RATIO × its compressed size
# is a zip bomb: real photos barely compress.
MAX_RATIO = 100
RATIO_FLOOR = 1 << 20


class BadArchive(ValueError):
    """The upload as a whole is refused (HTTP 400); the message says why."""


@dataclass(frozen=True)
class Limits:
    max_files: int
    max_image_bytes: int
    max_total_bytes: int


@dataclass
class ArchiveImage:
    label: str
    filename: str
    data: bytes


@dataclass
class Archive:
    images: list[ArchiveImage] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def class_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for image in self.images:
            counts[image.label] = counts.get(image.label, 0) + 1
        return dict(sorted(counts.items()))


def member_parts(name: str) -> tuple[str, ...]:
    """The path's parts; BadArchive for a path that could land outside the archive."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise BadArchive(f"unsafe path in zip: {name!r} is absolute")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts:
        raise BadArchive(f"unsafe path in zip: {name!r} contains '..'")
    return parts


def _files(
    archive: zipfile.ZipFile, limits: Limits
) -> list[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    infos = archive.infolist()
    if len(infos) > limits.max_files:
        raise BadArchive(f"zip has {len(infos)} entries; the limit is {limits.max_files}")
    files = []
    seen: set[str] = set()
    for info in infos:
        parts = member_parts(info.filename)
        if info.is_dir() or not parts:
            continue
        if info.filename in seen:
            raise BadArchive(f"zip holds {info.filename!r} twice")
        seen.add(info.filename)
        if any(part in IGNORED_PARTS or part.startswith(".") for part in parts):
            continue
        files.append((info, parts))
    return files


def _strip_top_folder(
    files: list[tuple[zipfile.ZipInfo, tuple[str, ...]]],
) -> list[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    """`pets/cats/1.jpg` → `cats/1.jpg` when every file sits under the one top folder `pets`."""
    tops = {parts[0] for _, parts in files}
    if len(tops) == 1 and all(len(parts) >= 3 for _, parts in files):
        return [(info, parts[1:]) for info, parts in files]
    return files


@dataclass
class _Inflated:
    """Every byte the zip has inflated to so far, kept or not, against the upload's limit."""

    limit: int
    total: int = 0

    def add(self, count: int) -> None:
        self.total += count
        if self.total > self.limit:
            raise BadArchive(f"zip unpacks to more than {self.limit} bytes")


def _read_capped(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int, inflated: _Inflated
) -> bytes | None:
    """The member's bytes, or None past `cap` — counted while reading, not from the header."""
    chunks = []
    total = 0
    with archive.open(info) as member:
        while chunk := member.read(1 << 20):
            total += len(chunk)
            inflated.add(len(chunk))
            if total > RATIO_FLOOR and total > MAX_RATIO * max(info.compress_size, 1):
                raise BadArchive(
                    f"{info.filename!r} inflates to over {MAX_RATIO}× its compressed size "
                    "(a zip bomb?)"
                )
            if total > cap:
                return None
            chunks.append(chunk)
    return b"".join(chunks)


def read_image_zip(file: IO[bytes], limits: Limits) -> Archive:
    try:
        archive = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise BadArchive("file is not a zip archive") from None
    with archive:
        files = _strip_top_folder(_files(archive, limits))
        result = Archive()
        inflated = _Inflated(limits.max_total_bytes)
        for info, parts in _images_in_order(files):
            if len(parts) < 2:
                result.skipped.append(
                    {"path": info.filename, "reason": "not inside a class folder"}
                )
                continue
            try:
                data = _read_capped(archive, info, limits.max_image_bytes, inflated)
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as error:
                result.skipped.append({"path": info.filename, "reason": f"corrupt entry: {error}"})
                continue
            if data is None:
                result.skipped.append(
                    {
                        "path": info.filename,
                        "reason": f"larger than the {limits.max_image_bytes}-byte image limit",
                    }
                )
                continue
            try:
                open_image(data)
            except UndecodableImage as error:
                result.skipped.append({"path": info.filename, "reason": str(error)})
                continue
            result.images.append(ArchiveImage(parts[0], "/".join(parts), data))
    classes = result.class_counts
    if len(classes) < 2:
        found = ", ".join(f"{name!r}" for name in classes) or "none"
        raise BadArchive(
            "a dataset needs at least 2 class folders with images "
            f"(e.g. cats/1.jpg, dogs/2.png); found {found}"
        )
    return result


def _images_in_order(
    files: list[tuple[zipfile.ZipInfo, tuple[str, ...]]],
) -> Iterator[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    return iter(sorted(files, key=lambda item: item[1]))
